//! `--on-success` / `--on-failure` after `stop`, `run` and `backup`: the report on stdin, the facts in
//! the environment, a time bound that kills the command's whole process group, and never a
//! change to pgbookend's exit code.

use crate::common::{self, newest_major, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions};
use serde_json::Value;
use std::path::Path;

fn env_of(p: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("PGBOOKEND_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn has(env: &[(String, String)], k: &str, v: &str) -> bool {
    env.iter().any(|(a, b)| a == k && b == v)
}

/// A directory where notification commands leave what they got: `TAG.json` (the report on
/// their stdin) and `TAG.env` (their environment).
struct Hooks {
    dir: pgbookend_testkit::TempDir,
}

impl Hooks {
    fn new(prefix: &str) -> Hooks {
        Hooks {
            dir: pgbookend_testkit::temp_dir(prefix),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A command that saves its stdin and environment under `tag`.
    fn cmd(&self, tag: &str) -> String {
        format!("cat > {0}.json; env > {0}.env", self.path(tag))
    }

    fn report(&self, tag: &str) -> Value {
        let text = std::fs::read_to_string(self.path(&format!("{tag}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn env(&self, tag: &str) -> Vec<(String, String)> {
        env_of(Path::new(&self.path(&format!("{tag}.env"))))
    }

    fn ran(&self, tag: &str) -> bool {
        Path::new(&self.path(&format!("{tag}.json"))).exists()
    }

    /// Runs `args --json` with an `--on-success` and an `--on-failure` command; it succeeds,
    /// the success command gets the same report as --json and the `facts` in its
    /// environment, and the failure command does not run.
    #[track_caller]
    fn succeeds(&self, tool: &Tool, args: &[&str], facts: &[(&str, &str)]) {
        let (ok, bad) = (self.cmd("ok"), self.cmd("bad"));
        let mut all = args.to_vec();
        all.extend(["--json", "--on-success", &ok, "--on-failure", &bad]);
        let r = tool.run(&all).ok();
        assert_eq!(
            self.report("ok"),
            r.json(),
            "the command gets the same report as --json"
        );
        let env = self.env("ok");
        for (k, v) in facts {
            assert!(has(&env, k, v), "{k}={v} in {env:?}");
        }
        assert!(!self.ran("bad"));
    }
}

#[test]
fn notifications_after_stop_and_run() {
    let Some(major) = newest_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let h = Hooks::new("notify");

    // A successful stop: the success command gets the report; the failure one does not run.
    tool.start("n-1", &[]).ok();
    h.succeeds(
        &tool,
        &["stop", "--id", "n-1"],
        &[
            ("PGBOOKEND_EVENT", "stop"),
            ("PGBOOKEND_STATUS", "success"),
            ("PGBOOKEND_EXIT_CODE", "0"),
            ("PGBOOKEND_ID", "n-1"),
        ],
    );

    // A failed run (the copy fails): the failure command runs; its own failure (exit 9)
    // does not change pgbookend's exit code (the copy's, 3).
    let store = tool.store_path().display().to_string();
    let failing = format!("{}; exit 9", h.cmd("runfail"));
    let r = tool.run(&[
        "run",
        "--id",
        "n-2",
        "--store",
        &store,
        "--on-failure",
        &failing,
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("--on-failure command exited with code 9"),
        "{r:?}"
    );
    let env = h.env("runfail");
    assert!(has(&env, "PGBOOKEND_EVENT", "run"), "{env:?}");
    assert!(has(&env, "PGBOOKEND_STATUS", "failure"), "{env:?}");
    assert!(has(&env, "PGBOOKEND_EXIT_CODE", "3"), "{env:?}");
    assert!(has(&env, "PGBOOKEND_ID", "n-2"), "{env:?}");

    // A command that outlives --notify-timeout is killed with what it started; the stop
    // itself succeeded and says so.
    tool.start("n-3", &[]).ok();
    let slow = format!(
        "sh -c 'echo $$ > {}; exec sleep 600' & wait",
        h.path("sleeper.pid")
    );
    let r = tool.run(&[
        "stop",
        "--id",
        "n-3",
        "--on-success",
        &slow,
        "--notify-timeout",
        "3s",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("was killed (--notify-timeout)"), "{r:?}");
    let pid: i32 = std::fs::read_to_string(h.path("sleeper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Gone, or a zombie left to whoever reaps orphans here: either way it no longer runs.
    // (SIGKILL is delivered asynchronously: wait for it, boundedly.)
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{pid}")).exists() || common::is_zombie(pid)
        }),
        "the command's child {pid} must be gone"
    );
    assert!(tool.bundle_dir("n-3").join("bundle.json").exists());
}

/// `backup` notifies as `stop` does: a built-in backup runs the success command with its
/// own report (event `backup`, its ID); one into a store that is not a directory runs the
/// failure command with the exit code the user sees.
#[test]
fn notifications_after_backup() {
    let Some(major) = newest_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let h = Hooks::new("notifybk");
    let store = tool.store_path().display().to_string();
    h.succeeds(
        &tool,
        &["backup", "--id", "nb-1", "--store", &store],
        &[
            ("PGBOOKEND_EVENT", "backup"),
            ("PGBOOKEND_STATUS", "success"),
            ("PGBOOKEND_ID", "nb-1"),
        ],
    );

    // Without --id the ID comes from the report; a file as the store fails the backup.
    let not_dir = h.dir.path().join("plain-file");
    std::fs::write(&not_dir, b"x").unwrap();
    let r = tool.run(&[
        "backup",
        "--store",
        &not_dir.display().to_string(),
        "--on-failure",
        &h.cmd("fail"),
    ]);
    assert_ne!(r.code, 0, "{r:?}");
    let env = h.env("fail");
    assert!(has(&env, "PGBOOKEND_EVENT", "backup"), "{env:?}");
    assert!(has(&env, "PGBOOKEND_STATUS", "failure"), "{env:?}");
    let code = r.code.to_string();
    assert!(has(&env, "PGBOOKEND_EXIT_CODE", &code), "{env:?}");
}

/// `archive-push` notifies on failure only: a real push into a store that is not a
/// directory fails, runs `--on-failure` with the report on stdin, and exits with the code
/// it has without any hook; a successful push notifies nobody (once per segment).
#[test]
fn archive_push_failure_notifies() {
    let Some(major) = newest_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    let h = Hooks::new("notify-push");
    let seg = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let wal = format!("pg_wal/{seg}");
    let push = |store: &str, hooks: &[&str]| -> common::Run {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["archive-push", &wal, "--store", store, "--json"])
            .args(hooks)
            .current_dir(c.pgdata())
            .env_remove("PGBOOKEND_CONFIG");
        let r: common::Run = cmd.output().unwrap().into();
        common::schema::check_output(&["archive-push", "--json"], &r.stdout);
        r
    };
    let not_a_dir = h.path("store-file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let bare = push(&not_a_dir, &[]);
    assert_ne!(bare.code, 0, "{bare:?}");
    let failing_hook = format!("{}; exit 9", h.cmd("fail"));
    let ok_hook = h.cmd("ok");
    let r = push(
        &not_a_dir,
        &["--on-failure", &failing_hook, "--on-success", &ok_hook],
    );
    assert_eq!(
        r.code, bare.code,
        "the hook never changes the exit code: {r:?}"
    );
    assert!(
        r.stderr.contains("--on-failure command exited with code 9"),
        "{r:?}"
    );
    let env = h.env("fail");
    assert!(has(&env, "PGBOOKEND_EVENT", "archive-push"), "{env:?}");
    assert!(has(&env, "PGBOOKEND_STATUS", "failure"), "{env:?}");
    let code = bare.code.to_string();
    assert!(has(&env, "PGBOOKEND_EXIT_CODE", &code), "{env:?}");
    let report = h.report("fail");
    assert_eq!(report["path"], wal.as_str());
    assert!(
        report["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("0 of 1 stores"))
            && report["error"]["hints"].to_string().contains("store-file"),
        "the store is why: {report}"
    );
    assert!(!h.ran("ok"));
    // The same push into a real store succeeds and notifies nobody.
    let store = pgbookend_testkit::temp_dir("notify-push-store");
    let store = store.path().display().to_string();
    push(
        &store,
        &["--on-failure", &failing_hook, "--on-success", &ok_hook],
    )
    .ok();
    assert!(!h.ran("ok"));
}
