//! End-to-end test of `pgbookend metrics`: a store with a complete and a partial bundle,
//! a running backup and an unreadable store, checked with Prometheus' own `promtool`.

mod common;

use common::Tool;
use pgbookend_testkit::{Cluster, ClusterOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn promtool() -> PathBuf {
    let dir = std::env::var_os("PGBOOKEND_PROMETHEUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // scripts/install-deps unpacks it beside the server builds.
            let pg = pgbookend_testkit::pg_dir();
            pg.parent().unwrap_or(&pg).join("prometheus")
        });
    dir.join("usr/bin/promtool")
}

/// The value of the one sample of `name` whose labels contain every `want` pair.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                tree_bytes(&e.path())
            } else {
                md.len()
            }
        })
        .sum()
}

fn promtool_check(file: &Path) {
    let out = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .expect("run promtool (scripts/install-deps unpacks it)");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_of_stores_and_running_backups() {
    let major = *pgbookend_testkit::majors().last().expect("a major");
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    tool.start("done-1", &[]).ok();
    let stopped = tool.stop("done-1", &[]).ok().json();
    // A partial bundle: a copy of the complete one without its bundle.json.
    let partial = tool.store_path().join("partial-2");
    std::fs::create_dir(&partial).unwrap();
    std::fs::copy(
        tool.bundle_dir("done-1").join("backup_label"),
        partial.join("backup_label"),
    )
    .unwrap();
    tool.start("running-3", &[]).ok();

    let out_dir = pgbookend_testkit::temp_dir("metrics");
    let file = out_dir.path().join("pgbookend.prom");
    let store = tool.store_path().display().to_string();
    let missing = out_dir.path().join("no-such-store").display().to_string();
    let run = tool.run(&[
        "metrics",
        "--store",
        &store,
        "--store",
        &missing,
        "--output",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("pgbookend.prom"), "{run:?}");
    promtool_check(&file);
    let text = std::fs::read_to_string(&file).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o644,
        "the textfile collector must be able to read it"
    );

    let sys = stopped["system_identifier"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            let b: serde_json::Value = serde_json::from_slice(
                &std::fs::read(tool.bundle_dir("done-1").join("bundle.json")).unwrap(),
            )
            .unwrap();
            b["system_identifier"].as_str().unwrap().to_string()
        });
    let st = [
        ("store", store.as_str()),
        ("system_identifier", sys.as_str()),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut v = st.to_vec();
        v.push(extra);
        v
    };
    assert_eq!(
        sample(&text, "pgbookend_bundles", &with(("state", "complete"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "pgbookend_bundles",
            &[
                ("store", &store),
                ("system_identifier", "unknown"),
                ("state", "partial")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    let bundle: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tool.bundle_dir("done-1").join("bundle.json")).unwrap(),
    )
    .unwrap();
    let stop_time =
        pgbookend::catalog::parse_rfc3339(bundle["stop_time"].as_str().unwrap()).unwrap();
    assert_eq!(
        sample(
            &text,
            "pgbookend_last_complete_bundle_timestamp_seconds",
            &st
        ),
        Some(stop_time as f64),
        "{text}"
    );
    let size = sample(&text, "pgbookend_last_complete_bundle_size_bytes", &st).unwrap();
    let on_disk = tree_bytes(&tool.bundle_dir("done-1"));
    assert_eq!(size, on_disk as f64, "{text}");
    assert_eq!(
        sample(&text, "pgbookend_store_up", &[("store", &store)]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pgbookend_store_up", &[("store", &missing)]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pgbookend_backup_running", &[("id", "running-3")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pgbookend_backup_running", &[("id", "done-1")]),
        None,
        "{text}"
    );
    let hb = sample(
        &text,
        "pgbookend_backup_heartbeat_age_seconds",
        &[("id", "running-3")],
    );
    assert!(hb.is_some_and(|h| (0.0..60.0).contains(&h)), "{text}");

    // stdout form is the same exposition; --json gives the facts.
    let plain = tool.run(&["metrics", "--store", &store]);
    assert!(
        plain.stdout.contains("# TYPE pgbookend_bundles gauge"),
        "{plain:?}"
    );
    let j = tool
        .run(&["metrics", "--store", &store, "--json"])
        .ok()
        .json();
    assert_eq!(j["backups"][0]["id"], "running-3");
    tool.stop("running-3", &[]).ok();
}

/// The alert rules the README shows are valid Prometheus rules.
#[test]
fn readme_alert_rules_are_valid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = readme
        .split("### Monitoring: `metrics`")
        .nth(1)
        .expect("README has the Monitoring section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a yaml block in the Monitoring section");
    let dir = pgbookend_testkit::temp_dir("rules");
    let file = dir.path().join("pgbookend.rules.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(promtool())
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
