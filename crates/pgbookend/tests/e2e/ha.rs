//! HA-symmetric hooks: the same `start`/`stop` pair with `--only-on` run on a primary and
//! on its streaming standby takes one backup on the node of the asked role and skips
//! cleanly (exit 0, no agent, no backup session, `stop --id` exits 0) on the other; `run
//! --only-on` never runs the copy command on the wrong node.

use crate::common::{self, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions};
use std::time::Duration;

/// Whether `c` has no session of backup `id` (a backup in progress holds one). The short
/// session that read the role ends with `start`, but its backend may take a moment to go.
fn no_session_of(c: &Cluster, id: &str) -> bool {
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbookend {id}'");
    common::wait_until(Duration::from_secs(10), || c.psql(&sql) == "0")
}

/// `start --only-on ROLE` then `stop` on the node that must skip: exit 0 twice, nothing
/// started, nothing stored, the skip said in JSON and to the notification command.
fn assert_skips(tool: &Tool, c: &Cluster, id: &str, only_on: &str, role: &str) {
    let r = tool.start(id, &["--only-on", only_on]).ok();
    let j = r.json();
    assert_eq!(j["skipped"], true, "{r:?}");
    assert_eq!(j["role"], role);
    assert_eq!(j["only_on"], only_on);
    assert_eq!(j["id"], id);
    assert!(!tool.run_dir().join(id).exists(), "no agent entry: {r:?}");
    assert!(tool.agent_pid(id).is_none());
    assert!(no_session_of(c, id), "a session of {id} stays open");
    assert!(!c.pgdata().join("pg_backup_metadata").join(id).exists());
    let human = tool
        .run(&["start", "--id", id, "--only-on", only_on])
        .ok()
        .stdout;
    assert!(
        human.contains("skipped backup") && human.contains(role),
        "{human}"
    );
    let status_file = tool.run_dir.path().join(format!("{id}.status"));
    let notify = format!("echo \"$PGBOOKEND_STATUS\" > {}", status_file.display());
    let stop = tool.stop(id, &["--on-success", &notify]).ok();
    assert_eq!(stop.json()["skipped"], true, "{stop:?}");
    assert_eq!(
        std::fs::read_to_string(&status_file).unwrap().trim(),
        "skipped"
    );
    assert!(!tool.bundle_dir(id).exists());
}

/// The real backup on the node of the asked role.
fn assert_backs_up(tool: &Tool, id: &str, only_on: &str, primary: &Cluster) {
    let started = tool.start(id, &["--only-on", only_on]).ok().json();
    assert_eq!(started["backup_from"], only_on);
    assert!(started.get("skipped").is_none());
    // Some WAL in the window, replayed on the standby too.
    primary.psql("CREATE TABLE IF NOT EXISTS ha_t(x int); INSERT INTO ha_t VALUES (1)");
    primary.psql("SELECT pg_switch_wal()");
    tool.stop(id, &[]).ok();
    assert!(tool.bundle_dir(id).join("bundle.json").exists());
}

/// `only_on` in the config file skips on the standby; `--only-on` overrides it.
fn config_key(on_standby: &Tool) {
    let cfg = on_standby.run_dir.path().join("pgbookend.toml");
    let start = |key: &str, extra: &[&str]| {
        std::fs::write(&cfg, format!("only_on = \"{key}\"\n")).unwrap();
        let mut args = vec!["start", "--id", "job-c", "--json"];
        args.extend_from_slice(extra);
        let r: common::Run = on_standby
            .cmd(&args)
            .env("PGBOOKEND_CONFIG", &cfg)
            .output()
            .unwrap()
            .into();
        common::schema::check_output(&args, &r.stdout);
        r.ok().json()
    };
    assert_eq!(start("primary", &[])["skipped"], true);
    let flag_wins = start("standby", &["--only-on", "primary"]);
    assert_eq!(flag_wins["only_on"], "primary", "{flag_wins}");
}

fn only_on(major: u32) {
    let primary = Cluster::start(ClusterOptions::new(major));
    let standby = common::make_standby(&primary);
    let on_primary = Tool::new(&primary);
    let on_standby = Tool::new(&standby);
    // The job "back up the primary", run on both nodes.
    assert_backs_up(&on_primary, "job-p", "primary", &primary);
    assert_skips(&on_standby, &standby, "job-p", "primary", "standby");
    // The job "back up the standby", run on both nodes.
    assert_skips(&on_primary, &primary, "job-s", "standby", "primary");
    assert_backs_up(&on_standby, "job-s", "standby", &primary);
    // run --only-on on the wrong node: the copy command never runs.
    let witness = on_standby.run_dir.path().join("copied");
    let store = on_standby.store_path().display().to_string();
    let witness_s = witness.display().to_string();
    let r = on_standby
        .run(&[
            "run",
            "--id",
            "job-r",
            "--store",
            &store,
            "--only-on",
            "primary",
            "--json",
            "--",
            "touch",
            &witness_s,
        ])
        .ok();
    assert_eq!(r.json()["result"], "skipped", "{r:?}");
    assert!(!witness.exists(), "the copy command ran: {r:?}");
    assert!(!on_standby.bundle_dir("job-r").exists());
    // A skip record is hostile input when read back: one naming another ID is ignored.
    let rec = on_standby.run_dir.path().join("state/skipped/job-x.json");
    let text = std::fs::read_to_string(on_standby.run_dir.path().join("state/skipped/job-r.json"))
        .unwrap();
    std::fs::write(&rec, text).unwrap();
    let forged = on_standby.stop("job-x", &[]);
    assert_eq!(forged.code, 2, "{forged:?}");
    // ... and so is a link, even to a valid record of the same ID.
    let link = on_standby.run_dir.path().join("state/skipped/job-r2.json");
    std::os::unix::fs::symlink(
        on_standby.run_dir.path().join("state/skipped/job-r.json"),
        &link,
    )
    .unwrap();
    assert_eq!(on_standby.stop("job-r2", &[]).code, 2);
    // The config key does what the flag does, and the flag wins over it.
    config_key(&on_standby);
    // The same ID really started later on this node (a fixed --id, a failover since) and
    // failing before its agent: its stop must fail, not pass for the old skip.
    let failed = on_standby.run(&["start", "--id", "job-p", "--wal", "bogus"]);
    assert_eq!(failed.code, 2, "{failed:?}");
    let stop = on_standby.stop("job-p", &[]);
    assert_eq!(
        stop.code, 2,
        "the old skip record must not hide it: {stop:?}"
    );
    // ... nor a start whose role check fails (the server unreachable).
    let skipped = on_standby.start("job-q", &["--only-on", "primary"]).ok();
    assert_eq!(skipped.json()["skipped"], true, "{skipped:?}");
    let down = "host=/nonexistent-pgbookend-socket-dir port=1";
    let failed = on_standby.start("job-q", &["--only-on", "primary", "-d", down]);
    assert_ne!(failed.code, 0, "{failed:?}");
    let stop = on_standby.stop("job-q", &[]);
    assert_eq!(
        stop.code, 2,
        "a skip record survived a failed role check: {stop:?}"
    );
}
per_major!(only_on_t, only_on);
