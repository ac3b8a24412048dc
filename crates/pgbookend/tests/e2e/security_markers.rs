//! Attacks on the marker directory and the run directory (issue 9, defects 1, 5, 12, 13),
//! run as root against clusters owned by the unprivileged server user: planted markers
//! and links must never make pgbookend delete, write or chmod anything outside, and
//! concurrent starts must never delete each other's markers.

use crate::common::{bin, tree, Tool};
use pgbookend_testkit::{run_as_server_user, temp_dir, Cluster, ClusterOptions};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Barrier, Mutex};

/// A root-owned victim directory (0755) holding one file (0644) with known content.
fn make_victim(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = dir.join("precious");
    std::fs::write(&f, b"do not touch\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    tree::entries(dir)
}

/// Runs a shell script as the server user (the postgres OS user plants things).
fn as_server_user(script: &str, env: &[(&str, &str)]) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_as_server_user(&mut cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A marker as pgbookend writes it, with the given id and token, whose agent is gone.
fn marker_json(id: &str, token: &str, run_dir: &Path) -> String {
    json!({
        "format": 1, "id": id, "system_identifier": "1", "pg_version_num": 150000,
        "start_lsn": "0/2000028", "start_wal_file": "000000010000000000000002",
        "timeline": 1, "start_time": "2026-01-01T00:00:00Z", "host": "h",
        "pgdata": "/nowhere", "tool": "pgbookend", "tool_version": "0", "stores": [],
        "run_dir": run_dir.display().to_string(), "agent_pid": 1, "token": token
    })
    .to_string()
}

/// Plants `pg_backup_metadata/<name>/backup.json` with `json`, as the server user.
fn plant_marker(pgdata: &Path, name: &str, json: &str) {
    let d = pgdata.join("pg_backup_metadata").join(name);
    as_server_user(
        "mkdir -p \"$D\" && printf '%s' \"$J\" > \"$D/backup.json\"",
        &[("D", &d.display().to_string()), ("J", json)],
    );
}

/// Defect 1: markers whose JSON id climbs out (`../../victim`), is absolute, or whose
/// token is a path are reported and never used by start, guard or cleanup.
fn foreign_marker_ids(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let pgdata = c.pgdata().to_path_buf();
    // pg_backup_metadata/../../victim is <cluster base>/victim: outside PGDATA.
    let rel_victim = pgdata.parent().unwrap().join("victim");
    let abs_victim = c.base().join("abs-victim");
    let before_rel = make_victim(&rel_victim);
    let before_abs = make_victim(&abs_victim);
    let gone = tool.run_dir().join("no-such-entry");
    plant_marker(&pgdata, "evil", &marker_json("../../victim", "", &gone));
    plant_marker(
        &pgdata,
        "abs",
        &marker_json(&abs_victim.display().to_string(), "", &gone),
    );
    plant_marker(&pgdata, "tok", &marker_json("tok", "../../../x", &gone));

    let started = tool.start("s1", &["--wal", "none"]);
    tool.stop("s1", &[]).ok();
    assert_eq!(tree::entries(&rel_victim), before_rel);
    assert_eq!(tree::entries(&abs_victim), before_abs);
    let started = started.ok().json();
    let foreign: Vec<&str> = started["foreign_markers"]
        .as_array()
        .expect("start reports foreign markers")
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(foreign, ["abs", "evil", "tok"], "{started}");
    let why = started["foreign_markers"].to_string();
    assert!(why.contains("differs from its directory name"), "{why}");
    assert!(why.contains("token"), "{why}");

    let g = tool.run(&["guard", "--pgdata", &pgdata.display().to_string()]);
    assert_eq!(g.code, 6, "guard refuses a foreign marker: {g:?}");
    assert!(g.all().contains("differs from its directory name"), "{g:?}");
    assert_eq!(tree::entries(&rel_victim), before_rel);
    assert_eq!(tree::entries(&abs_victim), before_abs);

    let cl = tool
        .run(&[
            "cleanup",
            "--json",
            "--pgdata",
            &pgdata.display().to_string(),
        ])
        .ok()
        .json();
    let removed: Vec<(&str, bool)> = cl["foreign_markers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["removed"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        removed,
        [("abs", true), ("evil", true), ("tok", true)],
        "{cl}"
    );
    assert_eq!(tree::entries(&rel_victim), before_rel);
    assert_eq!(tree::entries(&abs_victim), before_abs);
    assert!(!pgdata.join("pg_backup_metadata").exists());
    let g = tool.run(&["guard", "--pgdata", &pgdata.display().to_string()]);
    assert_eq!(g.code, 0, "{g:?}");
}
per_major!(foreign_marker_ids_t, foreign_marker_ids);

/// Defect 5: links planted where pgbookend writes or removes markers (the marker
/// directory itself, a backup's directory, its backup.json, the old predictable temp
/// name) point at a root-owned victim; start and stop never write, chmod or delete it.
fn planted_links(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let pgdata = c.pgdata().to_path_buf();
    let top = pgdata.join("pg_backup_metadata");
    let victim = c.base().join("victim");
    let before = make_victim(&victim);
    let vfile = victim.join("precious").display().to_string();
    let vdir = victim.display().to_string();
    let top_s = top.display().to_string();

    // The whole marker directory is a link: refused before anything is written.
    as_server_user("ln -s \"$V\" \"$T\"", &[("V", &vdir), ("T", &top_s)]);
    let r = tool.start("l0", &["--wal", "none"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("symbolic link"), "{r:?}");
    assert_eq!(tree::entries(&victim), before);
    std::fs::remove_file(&top).unwrap();

    // A backup's directory name is taken by a link: refused.
    as_server_user(
        "mkdir \"$T\" && ln -s \"$V\" \"$T/l1\"",
        &[("V", &vdir), ("T", &top_s)],
    );
    let r = tool.start("l1", &["--wal", "none"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("already marked"), "{r:?}");
    assert_eq!(tree::entries(&victim), before);
    std::fs::remove_file(top.join("l1")).unwrap();

    // During the window the server user swaps a marker for links; stop removes only them.
    let a = tool.start("l2", &["--wal", "none"]).ok().json();
    tool.start("l3", &["--wal", "none"]).ok();
    let pid = a["agent_pid"].as_i64().unwrap().to_string();
    as_server_user(
        "rm \"$T/l2/backup.json\" && ln -s \"$F\" \"$T/l2/backup.json\" \
         && ln -s \"$F\" \"$T/l2/.backup.json.tmp.$P\" \
         && rm -r \"$T/l3\" && ln -s \"$V\" \"$T/l3\"",
        &[("V", &vdir), ("F", &vfile), ("T", &top_s), ("P", &pid)],
    );
    tool.stop("l2", &[]).ok();
    tool.stop("l3", &[]).ok();
    assert_eq!(tree::entries(&victim), before);
    assert!(!top.join("l2").exists() && !top.join("l3").exists());
    assert!(std::fs::symlink_metadata(top.join("l3")).is_err());
}
per_major!(planted_links_t, planted_links);

/// Defect 12: a run directory that is a link, belongs to another user or is writable by
/// others is refused with a clear message, and nothing is written through it.
#[test]
fn run_dir_must_be_ours() {
    let t = temp_dir("rundir");
    let victim = t.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cases: Vec<(PathBuf, &str)> = vec![
        (link, "symbolic link"),
        (open.clone(), "not be writable by group or others"),
    ];
    if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
        let other = t.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::chown(&other, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
        cases.push((other, "must belong to uid 0"));
    }
    let store = t.path().join("store");
    std::fs::create_dir(&store).unwrap();
    for (dir, why) in cases {
        let out = Command::new(bin())
            .args(["start", "--id", "rd", "--wal", "none", "--store"])
            .arg(&store)
            .arg("--pgdata")
            .arg(t.path())
            .env("PGBOOKEND_RUN_DIR", &dir)
            .env("PGBOOKEND_STATE_DIR", t.path().join("state"))
            .env_remove("PGBOOKEND_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{}: {err}", dir.display());
        assert!(err.contains("refusing the run directory"), "{err}");
        assert!(err.contains(why), "{err}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing written through {}",
            dir.display()
        );
    }
    let md = std::fs::metadata(&open).unwrap();
    assert_eq!(md.mode() & 0o777, 0o777, "not silently re-moded");
}

/// Defect 13: 8 concurrent starts on one cluster, 25 times: every marker is there until
/// its own stop (other starts, and a `cleanup --pgdata` run in a loop, sweep stale
/// markers meanwhile), every stop exits 0.
fn concurrent_starts(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let top = c.pgdata().join("pg_backup_metadata");
    const N: usize = 8;
    const ROUNDS: usize = 25;
    let barrier = Barrier::new(N);
    let failures = Mutex::new(Vec::<String>::new());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let pgdata = c.pgdata().display().to_string();
    std::thread::scope(|s| {
        let (tool, done, failures, pgdata) = (&tool, &done, &failures, &pgdata);
        s.spawn(move || {
            while done.load(std::sync::atomic::Ordering::SeqCst) < N {
                let r = tool.run(&["cleanup", "--pgdata", pgdata]);
                if r.code != 0 {
                    failures.lock().unwrap().push(format!("cleanup: {r:?}"));
                }
            }
        });
        for i in 0..N {
            let (top, barrier) = (&top, &barrier);
            s.spawn(move || {
                let fail = |m: String| failures.lock().unwrap().push(m);
                for r in 0..ROUNDS {
                    let id = format!("k{i}-{r}");
                    let st = tool.start(&id, &["--wal", "none"]);
                    if st.code != 0 {
                        fail(format!("start {id}: {st:?}"));
                    }
                    // Every start of this round has swept stale markers by now.
                    barrier.wait();
                    let m = std::fs::read(top.join(&id).join("backup.json"));
                    let ok = m
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .map(|v| v["id"] == id.as_str())
                        .unwrap_or(false);
                    if st.code == 0 && !ok {
                        fail(format!("the marker of {id} vanished before its stop"));
                    }
                    let sp = tool.stop(&id, &[]);
                    if st.code == 0 && sp.code != 0 {
                        fail(format!("stop {id}: {sp:?}"));
                    }
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(!top.exists(), "every marker removed at its stop");
}
per_major!(concurrent_starts_t, concurrent_starts);

/// Concurrent `start`s of the same ID: exactly one holds the backup, the others are refused
/// as "already in progress" (exit 2) without disturbing it — its entry, lock and marker
/// survive, and its `stop` succeeds. Repeated, since the window is between the start
/// process creating the entry and its agent taking over the lock.
fn same_id_starts(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    const N: usize = 4;
    const ROUNDS: usize = 10;
    for r in 0..ROUNDS {
        let id = format!("same-{r}");
        let barrier = Barrier::new(N);
        let runs: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..N)
                .map(|_| {
                    let (tool, barrier, id) = (&tool, &barrier, &id);
                    s.spawn(move || {
                        barrier.wait();
                        tool.start(id, &["--wal", "none"])
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<_> = runs.iter().filter(|r| r.code == 0).collect();
        assert_eq!(won.len(), 1, "round {r}: exactly one start wins: {runs:#?}");
        for lost in runs.iter().filter(|r| r.code != 0) {
            assert_eq!(lost.code, 2, "round {r}: refused as usage: {lost:?}");
            assert!(lost.stderr.contains("already"), "{lost:?}");
        }
        let marker = c
            .pgdata()
            .join("pg_backup_metadata")
            .join(&id)
            .join("backup.json");
        assert!(marker.is_file(), "round {r}: the winner's marker survives");
        let st = tool.run(&["status", "--id", &id]);
        assert_eq!(st.code, 0, "round {r}: the winner's agent answers: {st:?}");
        tool.stop(&id, &[]).ok();
    }
}
per_major!(same_id_starts_t, same_id_starts);
