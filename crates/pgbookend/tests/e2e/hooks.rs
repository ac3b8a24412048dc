//! End-to-end tests of the hook pair (`start`/`stop`/`status`/`abort`/`cleanup`) against
//! real clusters of every supported major, driven through the real binary.

use crate::common::{history_file, is_our_agent, newest_major, tar_pgdata, wait_until, Tool};
use pgbookend_formats::{control, label::BackupLabel, lsn::Lsn};
use pgbookend_testkit::{Cluster, ClusterOptions};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// start → pgbench writing → tar of PGDATA → stop: the bundle is the server's own.
fn start_copy_stop(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).archive_dir(true));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let id = format!("job-{major}");
    let started = tool.start(&id, &[]).ok().json();
    let start_lsn: Lsn = started["start_lsn"].as_str().unwrap().parse().unwrap();
    let agent = started["agent_pid"].as_i64().unwrap() as i32;
    assert!(is_our_agent(agent), "the agent must be running after start");

    // The marker is in PGDATA during the window, so the copy carries it.
    let marker = c
        .pgdata()
        .join("pg_backup_metadata")
        .join(&id)
        .join("backup.json");
    let m: Value = serde_json::from_slice(&std::fs::read(&marker).expect("marker")).unwrap();
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["start_lsn"], started["start_lsn"]);

    let bench = c.pgbench_background(2, 4);
    let tar = tool.store_path().join("copy.tar");
    tar_pgdata(&c, &tar);
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout)
            .contains(&format!("pg_backup_metadata/{id}/backup.json")),
        "the copy must carry the marker"
    );
    bench.wait().expect("pgbench");

    let stopped = tool.stop(&id, &[]).ok().json();
    let dir = tool.bundle_dir(&id);
    let label_bytes = std::fs::read(dir.join("backup_label")).unwrap();
    let label_text = String::from_utf8(label_bytes.clone()).unwrap();
    let label = BackupLabel::parse(&label_text).expect("label parses");
    assert_eq!(label.label, id);
    assert_eq!(label.start_wal_location, start_lsn);
    assert_eq!(label.as_str(), label_text, "exact round trip");

    // Byte for byte what the server returned: every line of it stands in the server's
    // own backup history file for this backup.
    let hist = history_file(&c, &label.start_wal_file).expect("backup history file in pg_wal");
    for line in label_text.lines() {
        assert!(
            hist.lines().any(|h| h == line),
            "label line {line:?} not in the history file:\n{hist}"
        );
    }

    let b: Value =
        serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).unwrap()).unwrap();
    let sysid = c.psql("SELECT system_identifier FROM pg_control_system()");
    assert_eq!(b["system_identifier"], sysid.as_str());
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["pg_major"], major);
    assert_eq!(b["start_lsn"], started["start_lsn"]);
    assert_eq!(b["start_wal_file"].as_str().unwrap(), label.start_wal_file);
    assert_eq!(
        b["checkpoint_lsn"].as_str().unwrap(),
        label.checkpoint_location.to_string()
    );
    assert_eq!(b["stop_lsn"], stopped["stop_lsn"]);
    assert_eq!(b["timeline"], label.start_timeline.unwrap_or(1));
    let stop_lsn: Lsn = b["stop_lsn"].as_str().unwrap().parse().unwrap();
    assert!(stop_lsn > start_lsn);
    assert_eq!(b["backup_from"], "primary");
    for (name, f) in b["files"].as_object().unwrap() {
        let data = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(f["sha256"].as_str().unwrap(), sha256_hex(&data), "{name}");
        assert_eq!(f["size"].as_u64().unwrap(), data.len() as u64);
    }
    let ctl = control::parse(&std::fs::read(dir.join("pg_control")).unwrap())
        .expect("CRC-valid pg_control");
    assert_eq!(ctl.system_identifier.to_string(), sysid);
    assert!(ctl.checkpoint >= label.checkpoint_location);

    // The marker is gone, the agent has exited, and status says stopped.
    assert!(!marker.exists(), "marker removed at stop");
    assert!(
        wait_until(Duration::from_secs(10), || !is_our_agent(agent)),
        "agent exits after stop"
    );
    let st = tool.status(&id).ok().json();
    assert_eq!(st["state"], "stopped");

    // A second stop is a clear usage error.
    let again = tool.stop(&id, &[]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("already stopped"), "{again:?}");
}
per_major!(start_copy_stop_t, start_copy_stop);

/// kill -9 of the agent: the server aborts the backup, stop says void, nothing is written.
fn agent_killed(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let id = "killed";
    let started = tool.start(id, &[]).ok().json();
    let agent = started["agent_pid"].as_i64().unwrap() as i32;
    // SAFETY: kill of the agent this test started.
    unsafe { libc::kill(agent, libc::SIGKILL) };
    assert!(
        c.wait_for_log(
            "aborting backup due to backend exiting",
            Duration::from_secs(20)
        ),
        "the server must log its abort:\n{}",
        c.server_log()
    );
    let stop = tool.stop(id, &[]);
    assert_eq!(stop.code, 3, "{stop:?}");
    assert!(stop.stderr.contains("void"), "{stop:?}");
    assert!(stop.stderr.contains("agent"), "{stop:?}");
    assert!(!tool.bundle_dir(id).join("bundle.json").exists());
    assert!(
        !c.pgdata().join("pg_backup_metadata").join(id).exists(),
        "stale marker removed"
    );
    assert_eq!(c.psql("SELECT 1"), "1", "the server keeps running");
    c.restart();
    assert_eq!(c.psql("SELECT 1"), "1", "and restarts without help");
}
per_major!(agent_killed_t, agent_killed);

/// The server restarted mid-backup: status reports the failure within the heartbeat.
fn server_restarted(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let id = "restarted";
    tool.start(id, &["--heartbeat", "1s"]).ok();
    c.restart();
    // Noticed within the heartbeat interval (1 s), plus slack for a loaded machine.
    let noticed = wait_until(Duration::from_secs(3), || {
        tool.status(id).json()["state"] == "failed"
    });
    let st = tool.status(id);
    assert!(noticed, "status did not report the failure in time: {st:?}");
    assert_eq!(st.code, 3, "{st:?}");
    let reason = st.json()["failure"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("session was lost"), "{reason}");
    let stop = tool.stop(id, &[]);
    assert_eq!(stop.code, 3, "{stop:?}");
    assert!(stop.stderr.contains("session was lost"), "{stop:?}");
}
per_major!(server_restarted_t, server_restarted);

/// idle_session_timeout = 1s in postgresql.conf: a 30-second window still succeeds.
fn idle_timeouts_do_not_end_the_session(major: u32) {
    let mut o = ClusterOptions::new(major);
    o.conf
        .push("idle_in_transaction_session_timeout = 1s".into());
    o.conf.push("statement_timeout = 1s".into());
    if major >= 14 {
        o.conf.push("idle_session_timeout = 1s".into());
    }
    let c = Cluster::start(o);
    // The setting is live: an ordinary idle session is ended.
    if major >= 14 {
        assert_eq!(c.psql("SHOW idle_session_timeout"), "1s");
    }
    let tool = Tool::new(&c);
    tool.start("idle", &["--heartbeat", "20s"]).ok();
    std::thread::sleep(Duration::from_secs(30));
    let stop = tool.stop("idle", &[]).ok().json();
    assert!(stop["stop_lsn"].is_string());
    assert!(tool.bundle_dir("idle").join("bundle.json").exists());
}
per_major!(idle_timeouts_t, idle_timeouts_do_not_end_the_session);

/// Four concurrent backups; IDs in use, unknown, malformed.
fn concurrent_and_ids(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let ids = ["c1", "c2", "c3", "c4"];
    std::thread::scope(|s| {
        for id in ids {
            let tool = &tool;
            s.spawn(move || tool.start(id, &[]).ok());
        }
    });
    let same = tool.start("c1", &[]);
    assert_eq!(same.code, 2, "the same ID twice is refused: {same:?}");
    assert!(same.stderr.contains("already in progress"), "{same:?}");
    std::thread::scope(|s| {
        for id in ids {
            let tool = &tool;
            s.spawn(move || tool.stop(id, &[]).ok());
        }
    });
    for id in ids {
        assert!(tool.bundle_dir(id).join("bundle.json").exists(), "{id}");
        let l = std::fs::read_to_string(tool.bundle_dir(id).join("backup_label")).unwrap();
        assert!(l.contains(&format!("LABEL: {id}\n")), "{l}");
    }
    let unknown = tool.stop("nope", &[]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(
        unknown.stderr.contains("no backup with ID nope"),
        "{unknown:?}"
    );
    let long = "a".repeat(65);
    for bad in ["../x", "", long.as_str(), "a/b"] {
        let r = tool.start(bad, &[]);
        assert_eq!(r.code, 2, "ID {bad:?} must be refused: {r:?}");
        assert!(r.stderr.contains("invalid backup ID"), "{r:?}");
    }
    // Nothing is left in progress after the refusals (a backend of an earlier session
    // may take a moment to leave pg_stat_activity).
    let count = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbookend%'";
    assert!(
        wait_until(Duration::from_secs(20), || c.psql(count) == "0"),
        "{}",
        c.psql(count)
    );
}
per_major!(concurrent_and_ids_t, concurrent_and_ids);

/// Run as root against a cluster owned by postgres: the marker gets the cluster's owner and modes.
fn marker_ownership(major: u32) {
    if !pgbookend_testkit::is_root() {
        eprintln!("not root: ownership is trivially ours");
        return;
    }
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    tool.start("own", &[]).ok();
    let data_md = std::fs::metadata(c.pgdata()).unwrap();
    let (uid, _, _) = pgbookend_testkit::server_user()
        .map(|(n, u, g)| (u, n, g))
        .unwrap();
    assert_eq!(data_md.uid(), uid);
    let top = c.pgdata().join("pg_backup_metadata");
    let dir = top.join("own");
    let file = dir.join("backup.json");
    for (p, mode) in [(&top, 0o700), (&dir, 0o700), (&file, 0o600)] {
        let md = std::fs::metadata(p).unwrap();
        assert_eq!(md.uid(), data_md.uid(), "{}", p.display());
        assert_eq!(md.gid(), data_md.gid(), "{}", p.display());
        assert_eq!(md.mode() & 0o777, mode, "{}", p.display());
    }
    tool.stop("own", &[]).ok();
}
per_major!(marker_ownership_t, marker_ownership);

/// The grants a non-superuser backup role needs, per major (as the README lists them).
fn grant_sql(major: u32) -> &'static str {
    if major >= 15 {
        "CREATE ROLE bk LOGIN; \
         GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO bk; \
         GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO bk;"
    } else {
        "CREATE ROLE bk LOGIN; \
         GRANT EXECUTE ON FUNCTION pg_start_backup(text, boolean, boolean) TO bk; \
         GRANT EXECUTE ON FUNCTION pg_stop_backup(boolean, boolean) TO bk;"
    }
}

/// A role with only EXECUTE on the backup functions can take a backup (with --pgdata and
/// --wal none); with the REPLICATION attribute it can also collect the WAL.
fn non_superuser(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    c.psql(grant_sql(major));
    let mut tool = Tool::new(&c);
    tool.env.retain(|(k, _)| k != "PGUSER");
    tool.env.push(("PGUSER".into(), "bk".into()));
    let pgdata = c.pgdata().display().to_string();
    // Without --pgdata the role cannot see data_directory: a clear error.
    let r = tool.start("nosuper", &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("--pgdata"), "{r:?}");
    // Collecting WAL needs a replication slot, hence REPLICATION: a clear error without it.
    let r = tool.start("nosuper", &["--pgdata", &pgdata]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("REPLICATION"), "{r:?}");
    tool.start("nosuper", &["--pgdata", &pgdata, "--wal", "none"])
        .ok();
    tool.stop("nosuper", &[]).ok();
    assert!(tool.bundle_dir("nosuper").join("bundle.json").exists());
    c.psql("ALTER ROLE bk REPLICATION");
    tool.start("nosuper2", &["--pgdata", &pgdata]).ok();
    let s = tool.stop("nosuper2", &[]).ok().json();
    assert!(s["wal_segments"].as_u64().unwrap() >= 1);
}
per_major!(non_superuser_t, non_superuser);

/// A password-authenticated role: the password appears nowhere.
fn password_never_shown(major: u32) {
    // One secret per major: the tests of other majors run at the same time, and one of
    // their steps deliberately passes its password in argv (to see it refused).
    let secret = format!("Sekr1t-pass-w0rd-{major}");
    let secret = secret.as_str();
    let mut o = ClusterOptions::new(major);
    o.tcp = true;
    o.hba.push("host all pw 127.0.0.1/32 scram-sha-256".into());
    o.conf.push("password_encryption = 'scram-sha-256'".into());
    let c = Cluster::start(o);
    c.psql(&format!(
        "CREATE ROLE pw LOGIN SUPERUSER PASSWORD '{secret}'"
    ));
    let mut tool = Tool::new(&c);
    let passfile = tool.run_dir.path().join("pgpass");
    std::fs::write(&passfile, format!("127.0.0.1:{}:*:pw:{secret}\n", c.port())).unwrap();
    std::fs::set_permissions(
        &passfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    tool.env.retain(|(k, _)| k != "PGUSER" && k != "PGHOST");
    tool.env.push(("PGUSER".into(), "pw".into()));
    tool.env.push(("PGHOST".into(), "127.0.0.1".into()));
    tool.env
        .push(("PGPASSFILE".into(), passfile.display().to_string()));

    // A password on the command line is refused before anything happens.
    let r = tool.run(&["start", "--id", "x", "-d", &format!("password={secret}")]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(".pgpass"), "{r:?}");

    let store = tool.store_path().display().to_string();
    let mut outputs = vec![tool.run(&["start", "--id", "pw", "--store", &store]).ok()];
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    outputs.push(tool.run(&["status", "--id", "pw", "--json"]).ok());
    outputs.push(tool.run(&["status"]).ok());
    let marker =
        std::fs::read_to_string(c.pgdata().join("pg_backup_metadata/pw/backup.json")).unwrap();
    outputs.push(tool.run(&["stop", "--id", "pw", "--json"]).ok());
    outputs.push(tool.run(&["status", "--id", "pw"]).ok());
    let mut texts: Vec<String> = outputs.iter().map(|o| o.all()).collect();
    // Only processes whose executable is pgbookend: other tests' psql carry SQL with
    // passwords, and their socket paths contain "pgbookend-test".
    let ps_ours: Vec<&str> = std::str::from_utf8(&ps.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            let exe = l.split_whitespace().next().unwrap_or("");
            exe.rsplit('/').next() == Some("pgbookend")
        })
        .collect();
    assert!(
        ps_ours.iter().any(|l| l.contains("__agent")),
        "the agent shows in ps"
    );
    texts.push(ps_ours.join("\n"));
    texts.push(marker);
    for entry in walk(tool.store_path())
        .into_iter()
        .chain(walk(&tool.run_dir()))
    {
        texts
            .push(String::from_utf8_lossy(&std::fs::read(&entry).unwrap_or_default()).into_owned());
    }
    for t in &texts {
        assert!(!t.contains(secret), "the password leaked: {t}");
    }
    assert!(tool.bundle_dir("pw").join("bundle.json").exists());
}
per_major!(password_never_shown_t, password_never_shown);

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// archive_command = 'false': stop fails within --archive-timeout, naming the segment.
fn archive_broken(major: u32) {
    let mut o = ClusterOptions::new(major);
    o.conf.push("archive_mode = on".into());
    o.conf.push("archive_command = 'false'".into());
    let c = Cluster::start(o);
    let tool = Tool::new(&c);
    // --wal none: the server's archive is what keeps the WAL, so stop waits for it.
    tool.start("arch", &["--wal", "none"]).ok();
    let t0 = std::time::Instant::now();
    let r = tool.stop("arch", &["--archive-timeout", "3s"]);
    let took = t0.elapsed();
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        took < Duration::from_secs(60),
        "stop must not hang: {took:?}"
    );
    let j = r.json();
    let seg = j["stop_wal_file"].as_str().unwrap().to_string();
    assert!(
        r.stderr.contains(&seg),
        "the message names the segment: {r:?}"
    );
    assert!(r.stderr.contains("archive_command"), "{r:?}");
    assert_eq!(j["wal_archive"], "not_confirmed");
    // With a working archive_command and a generous timeout, the same cluster succeeds.
    let archive = tool.store_path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
        std::os::unix::fs::chown(&archive, Some(uid), Some(gid)).unwrap();
    }
    c.append_conf(&format!(
        "archive_command = 'cp %p {}/%f'",
        archive.display()
    ));
    c.reload();
    tool.start("arch2", &["--wal", "none"]).ok();
    let ok = tool
        .stop("arch2", &["--archive-timeout", "60s"])
        .ok()
        .json();
    assert_eq!(ok["wal_archive"], "archived");
    assert!(archive.join(ok["stop_wal_file"].as_str().unwrap()).exists());
}
per_major!(archive_broken_t, archive_broken);

/// abort ends the backup; status and a later stop say so; cleanup forgets it.
fn abort_and_cleanup(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let started = tool.start("ab", &[]).ok().json();
    let agent = started["agent_pid"].as_i64().unwrap() as i32;
    let r = tool.run(&["abort", "--id", "ab"]).ok();
    assert!(r.stdout.contains("aborted"), "{r:?}");
    assert!(wait_until(Duration::from_secs(10), || !is_our_agent(agent)));
    assert!(c.wait_for_log(
        "aborting backup due to backend exiting",
        Duration::from_secs(20)
    ));
    assert!(
        !c.pgdata().join("pg_backup_metadata").exists(),
        "marker removed"
    );
    let st = tool.status("ab");
    assert_eq!(st.code, 3);
    assert_eq!(st.json()["state"], "aborted");
    let stop = tool.stop("ab", &[]);
    assert_eq!(stop.code, 3, "{stop:?}");
    let cl = tool.run(&["cleanup", "--json"]).ok().json();
    assert_eq!(cl["removed_entries"][0], "ab");
    assert_eq!(tool.status("ab").code, 2, "forgotten after cleanup");
}
per_major!(abort_and_cleanup_t, abort_and_cleanup);

/// A failure after the start call (the marker cannot be written) leaves no agent, no
/// marker and no backup in progress.
fn start_failure_leaves_nothing(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let blocker = c.pgdata().join("pg_backup_metadata");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let r = tool.start("fails", &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("pg_backup_metadata"), "{r:?}");
    assert!(
        !tool.run_dir().join("fails").exists(),
        "no agent entry is left"
    );
    assert!(
        c.wait_for_log(
            "aborting backup due to backend exiting",
            Duration::from_secs(20)
        ),
        "the started backup was aborted by the server:\n{}",
        c.server_log()
    );
    // The server logs the abort while the backend exits, before it leaves
    // pg_stat_activity: wait for it to be gone.
    let count = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbookend%'";
    assert!(
        wait_until(Duration::from_secs(20), || c.psql(count) == "0"),
        "the agent's session is still there: {}",
        c.psql(count)
    );
    std::fs::remove_file(&blocker).unwrap();
    tool.start("fails", &[]).ok();
    tool.stop("fails", &[]).ok();
}
per_major!(start_failure_t, start_failure_leaves_nothing);

/// Not beside the server: a data directory of another cluster is refused before the start call.
fn wrong_pgdata(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let empty = pgbookend_testkit::temp_dir("notpgdata");
    let r = tool.start("wrong", &["--pgdata", &empty.path().display().to_string()]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("beside the server"), "{r:?}");
    assert!(
        !c.server_log().contains("aborting backup"),
        "no backup was even started"
    );
}
per_major!(wrong_pgdata_t, wrong_pgdata);

/// --timeout: an agent whose backup is never stopped aborts it by itself; SIGTERM to the
/// agent aborts too. Both leave nothing behind and say why.
fn agent_timeout_and_sigterm(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    tool.start("short", &["--timeout", "2s", "--heartbeat", "500ms"])
        .ok();
    assert!(wait_until(Duration::from_secs(10), || tool
        .status("short")
        .json()["state"]
        == "failed"));
    let st = tool.status("short").json();
    assert!(
        st["failure"].as_str().unwrap().contains("--timeout"),
        "{st}"
    );
    assert!(!c.pgdata().join("pg_backup_metadata/short").exists());
    let started = tool.start("term", &[]).ok().json();
    // SAFETY: signal to the agent this test started.
    unsafe { libc::kill(started["agent_pid"].as_i64().unwrap() as i32, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(10), || tool
        .status("term")
        .json()["state"]
        == "aborted"));
    let stop = tool.stop("term", &[]);
    assert_eq!(stop.code, 3, "{stop:?}");
    assert!(stop.stderr.contains("signal 15"), "{stop:?}");
    assert!(c.wait_for_log(
        "aborting backup due to backend exiting",
        Duration::from_secs(10)
    ));
}
per_major!(agent_timeout_t, agent_timeout_and_sigterm);

/// The stop report's window is measured (to the millisecond), not a difference of clock
/// seconds: a copy of 0.3 s is not "a window of 0.0s". It lies between what the test
/// measured inside (start returned .. stop called) and outside (start called .. stop
/// returned), and the human line says the same number.
#[test]
fn stop_report_window_is_measured() {
    let Some(major) = newest_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let outer = std::time::Instant::now();
    tool.start("w-1", &[]).ok();
    let inner = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let inner_s = inner.elapsed().as_secs_f64();
    let human = tool.run(&["stop", "--id", "w-1"]).ok();
    let outer_s = outer.elapsed().as_secs_f64();
    let report = tool.status("w-1").ok().json();
    let w = report["stop"]["window_s"].as_f64().expect("window_s");
    assert!(
        w >= inner_s - 0.001 && w <= outer_s + 0.001,
        "window {w} s outside the measured {inner_s} .. {outer_s} s"
    );
    let said = format!("after a window of {:.1}s", w);
    assert!(human.stdout.contains(&said), "{said:?} in {}", human.stdout);
}
