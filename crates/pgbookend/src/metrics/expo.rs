//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`]: one `# HELP` and `# TYPE`
//! per family, samples grouped under it, label values escaped.

use super::Snapshot;
use std::fmt::Write;

/// One metric family: name, help text and its samples (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }
    fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }
}

/// Escapes a label value: backslash, double quote and newline, as the format requires.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Renders the snapshot. Families without samples are left out (promtool rejects none,
/// but an empty family says nothing).
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    for f in families(s) {
        if f.samples.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        for (labels, value) in &f.samples {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = if l.is_empty() {
                writeln!(out, "{} {}", f.name, value)
            } else {
                writeln!(out, "{}{{{}}} {}", f.name, l.join(","), value)
            };
        }
    }
    out
}

fn families(s: &Snapshot) -> Vec<Family> {
    let mut v = store_families(s);
    v.extend(archive_families(s));
    v.extend(backup_families(s));
    let mut g = Family::new(
        "pgbookend_metrics_generated_timestamp_seconds",
        "When these metrics were gathered (Unix seconds).",
    );
    g.push(vec![], s.generated as f64);
    v.push(g);
    v
}

fn store_families(s: &Snapshot) -> Vec<Family> {
    let mut up = Family::new(
        "pgbookend_store_up",
        "1 if the store could be listed, 0 if not.",
    );
    let mut count = Family::new(
        "pgbookend_bundles",
        "Bundles in the store per cluster, by state (complete or partial).",
    );
    let mut time = Family::new(
        "pgbookend_last_complete_bundle_timestamp_seconds",
        "Stop time of the newest complete bundle (Unix seconds).",
    );
    let mut age = Family::new(
        "pgbookend_last_complete_bundle_age_seconds",
        "Seconds since the stop of the newest complete bundle.",
    );
    let mut size = Family::new(
        "pgbookend_last_complete_bundle_size_bytes",
        "Size of the newest complete bundle in the store (bytes).",
    );
    let mut drill_ok = Family::new(
        "pgbookend_last_drill_success",
        "1 if the most recent drill (test restore) of the cluster's bundles passed, 0 if not.",
    );
    let mut drill_time = Family::new(
        "pgbookend_last_drill_timestamp_seconds",
        "When the most recent drill of the cluster's bundles ended (Unix seconds).",
    );
    for st in &s.stores {
        let store = || ("store", st.store.clone());
        up.push(vec![store()], if st.up { 1.0 } else { 0.0 });
        for c in &st.clusters {
            let sys = || ("system_identifier", c.system_identifier.clone());
            for (state, n) in [("complete", c.complete), ("partial", c.partial)] {
                count.push(vec![store(), sys(), ("state", state.into())], n as f64);
            }
            if let Some(d) = &c.last_drill {
                let ok = if d.passed { 1.0 } else { 0.0 };
                drill_ok.push(vec![store(), sys(), ("id", d.id.clone())], ok);
                drill_time.push(vec![store(), sys()], d.finished as f64);
            }
            if let Some(n) = &c.newest {
                time.push(vec![store(), sys()], n.time as f64);
                age.push(vec![store(), sys()], (s.generated - n.time) as f64);
                size.push(vec![store(), sys()], n.bytes as f64);
            }
        }
        if st.partial_unknown > 0 {
            let labels = vec![
                store(),
                ("system_identifier", "unknown".into()),
                ("state", "partial".into()),
            ];
            count.push(labels, st.partial_unknown as f64);
        }
    }
    vec![up, count, time, age, size, drill_ok, drill_time]
}

fn archive_families(s: &Snapshot) -> Vec<Family> {
    let mut info = Family::new(
        "pgbookend_archive_last_segment_info",
        "1, labelled with the newest WAL segment archived (archive-push) per cluster and timeline.",
    );
    let mut time = Family::new(
        "pgbookend_archive_last_push_timestamp_seconds",
        "When the newest archived WAL segment was pushed (Unix seconds).",
    );
    let mut age = Family::new(
        "pgbookend_archive_last_push_age_seconds",
        "Seconds since the newest archived WAL segment was pushed (the archive's lag).",
    );
    for st in &s.stores {
        for a in &st.archive {
            let labels = || {
                vec![
                    ("store", st.store.clone()),
                    ("system_identifier", a.system_identifier.clone()),
                    ("timeline", a.timeline.to_string()),
                ]
            };
            let mut with_segment = labels();
            with_segment.push(("segment", a.last_segment.clone()));
            info.push(with_segment, 1.0);
            time.push(labels(), a.pushed as f64);
            age.push(labels(), (s.generated - a.pushed).max(0) as f64);
        }
    }
    vec![info, time, age]
}

fn backup_families(s: &Snapshot) -> Vec<Family> {
    let mut running = Family::new(
        "pgbookend_backup_running",
        "1 for each backup whose session is held (started, not yet stopped or aborted).",
    );
    let mut elapsed = Family::new(
        "pgbookend_backup_elapsed_seconds",
        "Seconds since the running backup started.",
    );
    let mut heartbeat = Family::new(
        "pgbookend_backup_heartbeat_age_seconds",
        "Seconds since the running backup's agent last confirmed its session.",
    );
    for b in &s.backups {
        let id = || ("id", b.id.clone());
        running.push(
            vec![
                id(),
                ("pgdata", b.pgdata.clone()),
                ("state", b.state.clone()),
            ],
            if b.agent_alive { 1.0 } else { 0.0 },
        );
        if let Some(e) = b.elapsed_s {
            elapsed.push(vec![id()], e as f64);
        }
        if let Some(h) = b.heartbeat_age_s {
            heartbeat.push(vec![id()], h as f64);
        }
    }
    vec![running, elapsed, heartbeat]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn empty_snapshot_has_only_the_timestamp() {
        let s = Snapshot {
            generated: 1_700_000_000,
            stores: vec![],
            backups: vec![],
        };
        let text = render(&s);
        assert_eq!(
            text,
            "# HELP pgbookend_metrics_generated_timestamp_seconds When these metrics were gathered (Unix seconds).\n\
             # TYPE pgbookend_metrics_generated_timestamp_seconds gauge\n\
             pgbookend_metrics_generated_timestamp_seconds 1700000000\n"
        );
    }
}
