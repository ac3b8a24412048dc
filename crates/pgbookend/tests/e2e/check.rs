//! End-to-end tests of `pgbookend check` on a real cluster: each way a backup would fail
//! is a FAIL line naming it (archive_command not set, archive_command failing, no free
//! replication slot, an unwritable store) with exit 6, and a correct setup passes
//! (archive_command = pgbookend archive-push into a local store) with exit 0.

use crate::common::{self, Run, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions, TempDir};
use serde_json::Value;
use std::path::PathBuf;

/// A cluster with archiving on (no archive_command yet) and room for one replication
/// slot, plus a config file naming a local archive store.
struct Setup {
    c: Cluster,
    tool: Tool,
    store: TempDir,
    cfg_dir: TempDir,
    cfg: PathBuf,
}

impl Setup {
    fn new(major: u32) -> Setup {
        let store = pgbookend_testkit::temp_dir("chkstore");
        let cfg_dir = pgbookend_testkit::temp_dir("chkcfg");
        let cfg = cfg_dir.path().join("pgbookend.toml");
        std::fs::write(&cfg, format!("store = [\"{}\"]\n", store.path().display())).unwrap();
        let c = Cluster::start(
            ClusterOptions::new(major)
                .conf("archive_mode = on")
                .conf("max_replication_slots = 1"),
        );
        let tool = Tool::new(&c);
        Setup {
            c,
            tool,
            store,
            cfg_dir,
            cfg,
        }
    }

    fn set_archive_command(&self, cmd: &str) {
        let quoted = cmd.replace('\'', "''");
        self.c
            .psql(&format!("ALTER SYSTEM SET archive_command = '{quoted}'"));
        self.c.psql("SELECT pg_reload_conf()");
    }

    fn pgbookend_push(&self) -> String {
        format!(
            "PGBOOKEND_CONFIG={} {} archive-push %p",
            self.cfg.display(),
            common::bin().display()
        )
    }

    /// `check --json` with the config file and `extra` arguments.
    fn check(&self, extra: &[&str]) -> Run {
        let mut args = vec!["check", "--json", "--timeout", "60s"];
        args.extend_from_slice(extra);
        let mut cmd = self.tool.cmd(&args);
        cmd.env("PGBOOKEND_CONFIG", &self.cfg);
        let r: Run = cmd.output().expect("run pgbookend check").into();
        common::schema::check_output(&args, &r.stdout);
        r
    }
}

/// The status of every line named `check` (several for stores).
fn statuses(r: &Run, check: &str) -> Vec<String> {
    r.json()["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| l["check"] == check)
        .map(|l| l["status"].as_str().unwrap_or("").to_string())
        .collect()
}

#[track_caller]
fn assert_line(r: &Run, check: &str, status: &str) {
    let s = statuses(r, check);
    assert!(
        s.iter().any(|x| x == status),
        "expected a {status} line {check:?}: {}",
        r.stdout
    );
}

fn failing(r: &Run) -> Vec<String> {
    let v: Value = r.json();
    v["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| l["status"] == "fail")
        .map(|l| l["check"].as_str().unwrap_or("").to_string())
        .collect()
}

fn check_reports_each_failure_then_passes(major: u32) {
    let s = Setup::new(major);

    // archive_command not set: WAL is not archived.
    let r = s.check(&[]);
    assert_eq!(r.code, 6, "{r:?}");
    assert_line(&r, "archive_command", "fail");
    assert_eq!(r.json()["ok"], false);

    // archive_command failing: the server counts failures, the forced segment never lands.
    s.set_archive_command("false");
    let r = s.check(&[]);
    assert_eq!(r.code, 6, "{r:?}");
    assert_line(&r, "archive_command", "warn");
    assert_line(&r, "wal_switch", "fail");
    assert_line(&r, "archiver", "fail");

    // pgbookend's archive-push, but the only slot taken and a store under a file.
    s.set_archive_command(&s.pgbookend_push());
    s.c.psql("SELECT pg_create_physical_replication_slot('hog')");
    let file = s.cfg_dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("store").display().to_string();
    let good = s.store.path().display().to_string();
    let r = s.check(&["--store", &good, "--store", &bad, "--wal", "collect"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert_line(&r, "replication_slot", "fail");
    assert_line(&r, "store", "fail");
    assert_line(&r, "store", "ok");
    assert_line(&r, "wal_switch", "ok");
    assert!(r.stdout.contains(&bad), "{}", r.stdout);
    // The human rendering names the failure and its fix.
    let mut cmd = s.tool.cmd(&[
        "check",
        "--store",
        &bad,
        "--wal",
        "archive",
        "--timeout",
        "60s",
    ]);
    let h: Run = cmd.env("PGBOOKEND_CONFIG", &s.cfg).output().unwrap().into();
    assert_eq!(h.code, 6, "{h:?}");
    assert!(
        h.stdout.contains("FAIL  store") && h.stdout.contains("fix:"),
        "{h:?}"
    );

    // A correct setup passes; the probe objects are gone from the store.
    s.c.psql("SELECT pg_drop_replication_slot('hog')");
    let r = s.check(&[]);
    assert_eq!(r.code, 0, "{r:?}\n{}", s.c.server_log());
    assert!(failing(&r).is_empty(), "{}", r.stdout);
    assert_line(&r, "archive_command", "ok");
    assert_line(&r, "wal_switch", "ok");
    assert_line(&r, "replication_slot", "ok");
    assert!(!s.store.path().join("pgbookend-check").exists());
    assert!(s.store.path().join("archive").is_dir());
}

per_major!(
    check_reports_each_failure_then_passes,
    check_reports_each_failure_then_passes
);

/// S3 stores against the local S3 test server: a bucket that exists passes the probe (and
/// keeps no probe object), a missing bucket is a FAIL line naming it. No cluster: the
/// connection line fails too (nothing listens), the store lines are what is checked.
#[test]
fn check_s3_store_probe() {
    let s3 = pgbookend_testkit::S3Server::start();
    s3.create_bucket("chk-ok");
    let dir = pgbookend_testkit::temp_dir("chks3");
    let cfg = dir.path().join("pgbookend.toml");
    std::fs::write(
        &cfg,
        "store = [\"s3://chk-ok/p\", \"s3://chk-missing/p\"]\ns3_retry_timeout = \"2s\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let args = ["check", "--json", "--timeout", "1s"];
    let out = std::process::Command::new(common::bin())
        .args(args)
        .env("PGBOOKEND_CONFIG", &cfg)
        .env("PGBOOKEND_RUN_DIR", dir.path().join("run"))
        .env("PGBOOKEND_STATE_DIR", dir.path().join("state"))
        .env("PGHOST", dir.path().join("no-server"))
        .env("PGCONNECT_TIMEOUT", "2")
        .env("AWS_ACCESS_KEY_ID", "check-key")
        .env("AWS_SECRET_ACCESS_KEY", "check/Secret+0123456789")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", s3.endpoint())
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .output()
        .unwrap();
    let r: Run = out.into();
    common::schema::check_output(&args, &r.stdout);
    assert_eq!(r.code, 6, "{r:?}");
    let lines = r.json()["lines"].as_array().unwrap().clone();
    let store = |url: &str| {
        lines
            .iter()
            .find(|l| l["check"] == "store" && l["detail"].as_str().unwrap_or("").starts_with(url))
            .unwrap_or_else(|| panic!("no store line for {url}: {}", r.stdout))["status"]
            .clone()
    };
    assert_eq!(store("s3://chk-ok/p"), "ok", "{}", r.stdout);
    assert_eq!(store("s3://chk-missing/p"), "fail", "{}", r.stdout);
    assert!(s3.keys("chk-ok", "p/").is_empty(), "probe left behind");
    assert_line(&r, "config", "ok");
}
