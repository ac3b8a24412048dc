//! Tests of the harness itself: every major starts, serves SQL and pgbench, restarts, survives kill -9, and nothing outlives Drop.

use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgbookend_testkit::{
    client_bin, is_root, majors, run_as_server_user, server_user, temp_dir, Cluster,
    ClusterOptions, PidGuard,
};

/// Whether `pid` is a running process (zombies are not).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 1..].split_whitespace().next();
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Running direct children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 1..].split_whitespace().collect();
        if f[1] == pid.to_string() && f[0] != "Z" {
            out.push(p);
        }
    }
    out
}

fn assert_gone(pids: &[i32], base: &Path) {
    for p in pids {
        assert!(!running(*p), "process {p} survived");
    }
    assert!(!base.exists(), "{} not removed", base.display());
}

fn a_major() -> Option<u32> {
    majors().last().copied()
}

/// Start, SQL, pgbench under load, invariant, restart, options (checksums both ways, TCP,
/// archive, tablespace, hba, conf, reload), crash + recovery, cleanup: for one major.
fn lifecycle(major: u32) {
    if !majors().contains(&major) {
        return;
    }
    let checksums = major % 2 == 1; // off on 18, where initdb's default is on
    let c = Cluster::start(
        ClusterOptions::new(major)
            .data_checksums(checksums)
            .tcp(true)
            .archive_dir(true)
            .tablespace(true)
            .hba("local all alice md5")
            .conf("work_mem = '7MB'"),
    );
    let num: u32 = c.psql("SHOW server_version_num").parse().unwrap();
    assert_eq!(num / 10000, major);
    assert_eq!(
        c.psql("SHOW data_checksums"),
        if checksums { "on" } else { "off" }
    );
    assert_eq!(c.psql("SHOW work_mem"), "7MB");
    assert_eq!(c.psql("SHOW wal_level"), "replica");
    assert_eq!(c.psql("SHOW fsync"), "off");
    assert_eq!(
        c.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);\nSELECT sum(x) FROM t"),
        "3"
    );
    assert!(c
        .try_psql("SELECT * FROM nope")
        .unwrap_err()
        .contains("nope"));
    assert_eq!(
        c.psql("SELECT system_identifier FROM pg_control_system()"),
        c.system_identifier().to_string()
    );
    assert!(c.socket_dir().as_os_str().len() + 16 < 100);
    assert!(std::net::TcpStream::connect(("127.0.0.1", c.port())).is_ok());

    // The connection facts work for a plain libpq client (as whoever we are).
    let out = Command::new(client_bin("psql"))
        .args(["-XAtc", "SELECT 42", "-d", &c.conninfo()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{out:?}");
    let out = Command::new(client_bin("psql"))
        .args(["-XAtc", "SELECT current_user"])
        .envs(c.env())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");

    // Password authentication, password through the environment only.
    c.psql("CREATE ROLE alice LOGIN PASSWORD 'secret'");
    assert_eq!(
        c.psql_as("alice", Some("secret"), "SELECT current_user"),
        Ok("alice".to_string())
    );
    assert!(c.psql_as("alice", Some("wrong"), "SELECT 1").is_err());
    assert!(c.psql_as("alice", None, "SELECT 1").is_err());

    // Tablespace outside the data dir.
    let ts = c.tablespace_dir().unwrap();
    assert!(!ts.starts_with(c.pgdata()));
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_tablespace WHERE spcname = 'ts1'"),
        "1"
    );
    c.psql("CREATE TABLE in_ts (x int) TABLESPACE ts1; INSERT INTO in_ts VALUES (5)");
    let has_version_dir = std::fs::read_dir(&ts).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with(&format!("PG_{major}_"))
    });
    assert!(has_version_dir);

    // pgbench: load in the background, consistent afterwards.
    c.pgbench_init(1);
    assert!(c.pgbench_invariant_ok());
    let bench = c.pgbench_background(2, 3);
    assert!(bench.pid() > 0);
    let summary = bench.wait().unwrap();
    assert!(
        summary.contains("transactions actually processed"),
        "{summary}"
    );
    assert!(c.pgbench_invariant_ok());

    // Archiving.
    let archive = c.archive_dir().unwrap();
    c.psql("SELECT pg_switch_wal()");
    let archived = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_dir(&archive)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().len() == 24)
    });
    assert!(archived, "nothing archived:\n{}", c.server_log());

    // Configuration changes.
    c.append_conf("work_mem = '9MB'");
    c.reload();
    assert_eq!(c.psql("SHOW work_mem"), "9MB");
    assert!(c.wait_for_log("ready to accept connections", Duration::from_secs(1)));
    assert!(!c.wait_for_log("no such text in any log", Duration::from_millis(100)));

    // Restart.
    let pid1 = c.postmaster_pid().unwrap();
    c.restart();
    let pid2 = c.postmaster_pid().unwrap();
    assert_ne!(pid1, pid2);
    assert!(!running(pid1));
    assert_eq!(c.psql("SELECT x FROM in_ts"), "5");

    // Crash and recovery.
    let kids = children(pid2);
    assert!(!kids.is_empty());
    c.kill9();
    assert!(!running(pid2));
    for k in &kids {
        assert!(!running(*k), "child {k} outlived kill9");
    }
    assert_eq!(c.postmaster_pid(), None);
    c.start_again().unwrap();
    assert!(c.server_log().contains("not properly shut down"));
    assert!(c.pgbench_invariant_ok());
    assert_eq!(c.psql("SELECT sum(x) FROM t"), "3");

    let pid3 = c.postmaster_pid().unwrap();
    let mut pids = children(pid3);
    pids.push(pid3);
    let base = c.base().to_path_buf();
    drop(c);
    assert_gone(&pids, &base);
}

#[test]
fn lifecycle_13() {
    lifecycle(13);
}
#[test]
fn lifecycle_14() {
    lifecycle(14);
}
#[test]
fn lifecycle_15() {
    lifecycle(15);
}
#[test]
fn lifecycle_16() {
    lifecycle(16);
}
#[test]
fn lifecycle_17() {
    lifecycle(17);
}
#[test]
fn lifecycle_18() {
    lifecycle(18);
}

#[test]
fn kill9_then_drop_leaves_no_process() {
    let Some(major) = a_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    let pid = c.postmaster_pid().unwrap();
    let mut pids = children(pid);
    pids.push(pid);
    let base = c.base().to_path_buf();
    c.kill9();
    // The dead server's SysV header segment, named in its stale postmaster.pid.
    let pidfile = std::fs::read_to_string(c.pgdata().join("postmaster.pid")).unwrap();
    let shmid: i32 = pidfile
        .lines()
        .nth(6)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(shm_exists(shmid));
    drop(c);
    assert_gone(&pids, &base);
    assert!(
        !shm_exists(shmid),
        "shared memory of the killed server leaked"
    );
}

fn shm_exists(shmid: i32) -> bool {
    // SAFETY: shmid_ds is plain old data; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) == 0 }
}

#[test]
fn drop_of_a_running_server_leaves_nothing() {
    let Some(major) = majors().first().copied() else {
        return;
    };
    let c = Cluster::start(ClusterOptions::new(major).archive_dir(true));
    let pid = c.postmaster_pid().unwrap();
    let mut pids = children(pid);
    pids.push(pid);
    let base = c.base().to_path_buf();
    drop(c);
    assert_gone(&pids, &base);
}

#[test]
fn same_major_twice_and_another_major_at_once() {
    let Some(major) = a_major() else { return };
    let other = majors().first().copied().unwrap();
    let a = Cluster::start(ClusterOptions::new(major).tcp(true));
    let b = Cluster::start(ClusterOptions::new(major).tcp(true));
    let o = Cluster::start(ClusterOptions::new(other).tcp(true));
    let all = [&a, &b, &o];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(x.port(), y.port());
            assert_ne!(x.base(), y.base());
            assert_ne!(x.socket_dir(), y.socket_dir());
            assert_ne!(x.system_identifier(), y.system_identifier());
        }
    }
    a.psql("CREATE TABLE only_in_a (x int)");
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'"),
        "0"
    );
    assert_eq!(
        a.psql("SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'"),
        "1"
    );
    // Concurrent use from several threads (Cluster is Sync).
    std::thread::scope(|s| {
        for c in all {
            s.spawn(move || {
                for i in 0..5 {
                    assert_eq!(c.psql(&format!("SELECT {i}")), i.to_string());
                }
            });
        }
    });
}

#[test]
fn panicking_test_still_cleans_up() {
    let Some(major) = a_major() else { return };
    let mut seen: Option<(PathBuf, Vec<i32>, PathBuf)> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let c = Cluster::start(ClusterOptions::new(major));
        let tmp = temp_dir("panicking");
        let pid = c.postmaster_pid().unwrap();
        let mut pids = children(pid);
        pids.push(pid);
        seen = Some((c.base().to_path_buf(), pids, tmp.path().to_path_buf()));
        let _bench_guard = {
            c.pgbench_init(1);
            c.pgbench_background(1, 60)
        };
        panic!("deliberate test panic");
    }));
    assert!(result.is_err());
    let (base, pids, tmp) = seen.unwrap();
    assert_gone(&pids, &base);
    assert!(!tmp.exists());
}

#[test]
fn failed_start_panics_with_the_log_and_cleans_up() {
    let Some(major) = a_major() else { return };
    let err = catch_unwind(|| {
        Cluster::start(ClusterOptions::new(major).conf("shared_buffers = 'bogus'"));
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("shared_buffers"), "{msg}");
    // "... failed to start in <base>:\n<log>"
    let base = msg
        .split(" failed to start in ")
        .nth(1)
        .and_then(|rest| rest.split(":\n").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no base dir in {msg}"));
    assert!(base.starts_with(pgbookend_testkit::tmp_root()));
    assert!(!base.exists(), "{} left behind", base.display());
}

#[test]
fn copy_started_from_existing_and_stop_modes() {
    let Some(major) = a_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    c.psql("CREATE TABLE keep AS SELECT 42 AS x");
    c.stop_mode("smart");
    assert!(!c.is_running());
    c.stop(); // idempotent

    let dest = temp_dir("restore");
    let status = c
        .run_as_owner(
            Command::new("cp")
                .arg("-a")
                .arg(c.pgdata())
                .arg(dest.join("data")),
        )
        .status()
        .unwrap();
    assert!(status.success());
    c.start_again().unwrap();

    let r = Cluster::from_existing(major, dest.join("data"), dest.path().to_path_buf());
    assert!(!r.is_running());
    assert_ne!(r.port(), c.port());
    assert_ne!(r.socket_dir(), c.socket_dir());
    r.start_again().unwrap();
    assert_eq!(r.psql("SELECT x FROM keep"), "42");
    assert_eq!(r.system_identifier(), c.system_identifier());
    assert!(r.start_again().is_err(), "second start must fail");
    r.stop_mode("immediate");
    r.start_again().unwrap();
    r.restart();
    assert_eq!(r.psql("SELECT x FROM keep"), "42");
    assert_eq!(c.psql("SELECT x FROM keep"), "42");

    // A data dir the server refuses: Err with the log.
    r.stop();
    r.append_conf("shared_buffers = 'bogus'");
    let err = r.start_again().unwrap_err();
    assert!(err.contains("shared_buffers"), "{err}");

    let base = r.base().to_path_buf();
    drop(r);
    assert!(!base.exists());
    drop(dest); // already gone: must not panic
}

#[test]
fn temp_dir_and_pid_guard() {
    let t = temp_dir("store/with odd:chars");
    let path = t.path().to_path_buf();
    assert!(path.is_dir());
    assert!(path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("pgbookend-test."));
    if let Some((_, uid, _)) = server_user() {
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), uid);
        // The server user can write there.
        let ok = run_as_server_user(Command::new("touch").arg(path.join("by-server-user")))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    std::fs::create_dir_all(t.join("a/b")).unwrap();
    std::fs::write(t.join("a/b/f"), "x").unwrap();
    drop(t);
    assert!(!path.exists());

    let mut child = Command::new("sh")
        .args(["-c", "sleep 100 & sleep 100; wait"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut grandchildren = Vec::new();
    for _ in 0..200 {
        grandchildren = children(pid);
        if grandchildren.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(grandchildren.len(), 2);
    drop(PidGuard(pid));
    let status = child.wait().unwrap();
    assert!(!status.success());
    for g in grandchildren {
        assert!(!running(g));
    }
    drop(PidGuard(0)); // disarmed: nothing happens
    drop(PidGuard(-1));
}

#[test]
fn cluster_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Cluster>();
    check::<pgbookend_testkit::TempDir>();
    let _ = is_root();
}

/// Helper run as a child process by `server_dies_with_the_test_process`: starts a cluster,
/// reports it, and dies without running any Drop.
#[test]
fn helper_abandons_its_cluster() {
    if std::env::var_os("PGBOOKEND_TESTKIT_HELPER").is_none() {
        return;
    }
    let major: u32 = std::env::var("PGBOOKEND_TESTKIT_HELPER")
        .unwrap()
        .parse()
        .unwrap();
    // Started from a short-lived thread: the tie must not depend on the starting thread.
    let c = std::thread::spawn(move || Cluster::start(ClusterOptions::new(major)))
        .join()
        .unwrap();
    println!(
        "HELPER pid={} base={}",
        c.postmaster_pid().unwrap(),
        c.base().display()
    );
    std::process::abort();
}

#[test]
fn server_dies_with_the_test_process() {
    let Some(major) = a_major() else { return };
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_abandons_its_cluster", "--nocapture"])
        .env("PGBOOKEND_TESTKIT_HELPER", major.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HELPER "))
        .unwrap_or_else(|| {
            panic!(
                "helper said: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut pid = 0;
    let mut base = PathBuf::new();
    for kv in line.split(' ') {
        if let Some(v) = kv.strip_prefix("pid=") {
            pid = v.parse().unwrap();
        } else if let Some(v) = kv.strip_prefix("base=") {
            base = PathBuf::from(v);
        }
    }
    assert!(!out.status.success(), "helper must have aborted");
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !running(pid)
    });
    // The abandoned directory is what reap_leftovers is for; here we know it.
    let _ = std::fs::remove_dir_all(&base);
    assert!(gone, "postmaster {pid} outlived its test process");
}
