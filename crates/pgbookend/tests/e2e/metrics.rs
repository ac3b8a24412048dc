//! End-to-end test of `pgbookend metrics`: a store with a complete and a partial bundle,
//! a running backup and an unreadable store, checked with Prometheus' own `promtool`.

use crate::common::{self, newest_major, Tool};
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
    let Some(major) = newest_major() else { return };
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
    // The WAL archive in the bundle store (archive_store defaults to store): it must not
    // count as a bundle.
    let (segs, pushed_between) = push_two(&c, &tool.store_path().display().to_string(), &[]);

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

    // The WAL archive: the newest of the two segments pushed, when it was pushed, its age.
    let arch = [
        ("store", store.as_str()),
        ("system_identifier", sys.as_str()),
        ("timeline", "1"),
    ];
    let mut info = arch.to_vec();
    info.push(("segment", segs[1].as_str()));
    assert_eq!(
        sample(&text, "pgbookend_archive_last_segment_info", &info),
        Some(1.0),
        "{text}"
    );
    let mut older = arch.to_vec();
    older.push(("segment", segs[0].as_str()));
    assert_eq!(
        sample(&text, "pgbookend_archive_last_segment_info", &older),
        None
    );
    let pushed = sample(
        &text,
        "pgbookend_archive_last_push_timestamp_seconds",
        &arch,
    )
    .expect("push time");
    assert!(
        pushed_between.0 - 1 <= pushed as i64 && pushed as i64 <= pushed_between.1 + 1,
        "{pushed} {pushed_between:?}"
    );
    let generated = sample(&text, "pgbookend_metrics_generated_timestamp_seconds", &[]).unwrap();
    assert_eq!(
        sample(&text, "pgbookend_archive_last_push_age_seconds", &arch),
        Some(generated - pushed),
        "{text}"
    );
    // A store without an archive has no archive series.
    assert_eq!(
        sample(
            &text,
            "pgbookend_archive_last_push_timestamp_seconds",
            &[("store", &missing)]
        ),
        None
    );

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

/// Two real `archive-push` calls (as the server runs them, from the data directory, with
/// `env`) of two consecutive segments into `store`: the segment names, and the Unix
/// seconds before and after the pushes.
fn push_two(c: &Cluster, store: &str, env: &[(&str, String)]) -> (Vec<String>, (i64, i64)) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = now();
    let mut segs = Vec::new();
    for _ in 0..2 {
        // The segment the insert went to, named by the switch's own position: right after
        // a switch pg_current_wal_lsn() can sit on the segment boundary, which
        // pg_walfile_name() names as the segment before (the same name twice).
        c.psql("CREATE TABLE IF NOT EXISTS m(i int); INSERT INTO m VALUES (1)");
        let seg = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
        let wal = format!("pg_wal/{seg}");
        let r: common::Run = Command::new(common::bin())
            .args(["archive-push", &wal, "--store", store])
            .current_dir(c.pgdata())
            .env_remove("PGBOOKEND_CONFIG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 0, "{r:?}");
        segs.push(seg);
    }
    assert!(segs[0] < segs[1], "{segs:?}");
    (segs, (before, now()))
}

/// The archive's metrics of an S3 store (moto): the same series after real pushes.
#[test]
fn archive_metrics_of_an_s3_store() {
    let Some(major) = newest_major() else { return };
    let s3 = pgbookend_testkit::S3Server::start();
    s3.create_bucket("metrics");
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
    ];
    let c = Cluster::start(ClusterOptions::new(major));
    let url = "s3://metrics/pg";
    let (segs, between) = push_two(&c, url, &env);
    let out = Command::new(common::bin())
        .args(["metrics", "--store", url])
        .env_remove("PGBOOKEND_CONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = pgbookend_testkit::temp_dir("metrics-s3");
    let file = dir.path().join("m.prom");
    std::fs::write(&file, &text).unwrap();
    promtool_check(&file);
    let sys = c.system_identifier().to_string();
    let arch = [
        ("store", url),
        ("system_identifier", &sys),
        ("timeline", "1"),
    ];
    let mut info = arch.to_vec();
    info.push(("segment", &segs[1]));
    assert_eq!(
        sample(&text, "pgbookend_archive_last_segment_info", &info),
        Some(1.0),
        "{text}"
    );
    let pushed = sample(
        &text,
        "pgbookend_archive_last_push_timestamp_seconds",
        &arch,
    )
    .expect("push time") as i64;
    assert!(
        between.0 - 1 <= pushed && pushed <= between.1 + 1,
        "{pushed} {between:?}"
    );
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
