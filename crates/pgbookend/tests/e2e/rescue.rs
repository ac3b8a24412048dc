//! End-to-end tests of "the label is never lost": the agent killed at each point of
//! `stop`, a full store during `stop`, an archiver that has not delivered yet, and
//! `expire` faced with rescuable bundles and symlinked bundle directories.

use crate::common::{self, Run, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where a tool's agents save rescue copies (`$PGBOOKEND_STATE_DIR/rescue`).
fn rescue_root(tool: &Tool) -> PathBuf {
    tool.run_dir.path().join("state").join("rescue")
}

/// `start` with extra environment (the fault point) and arguments.
fn start_with(tool: &Tool, id: &str, store: &str, env: &[(&str, &str)], extra: &[&str]) -> Run {
    let mut args = vec!["start", "--id", id, "--store", store, "--json"];
    args.extend_from_slice(extra);
    let mut c = tool.cmd(&args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run pgbookend").into()
}

/// A data directory copied with `cp -a` during the window.
fn cp_copy(c: &Cluster, work: &Path, name: &str) -> PathBuf {
    let dest = work.join(name).join("data");
    std::fs::create_dir_all(work.join(name)).unwrap();
    let st = common::cp_live(c.pgdata(), &dest).unwrap();
    assert!(st.success(), "cp -a failed");
    dest
}

/// Prepares a copy from the store, starts it, and checks the data: the pgbench
/// invariant and the row committed before stop.
fn restores(major: u32, tool: &Tool, store: &str, copy: &Path) {
    let d = copy.display().to_string();
    tool.run(&["prepare", "--pgdata", &d, "--store", store])
        .ok();
    let r = common::start_restored(major, copy, copy.parent().unwrap());
    assert!(r.pgbench_invariant_ok(), "pgbench's invariant must hold");
    assert_eq!(r.psql("SELECT t FROM rows"), "committed before stop");
}

/// Every file below `dir` whose name starts with a dot (temporary files).
fn dot_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(dot_files(&p));
        } else if p.file_name().unwrap().to_string_lossy().starts_with('.') {
            out.push(p);
        }
    }
    out
}

/// The agent is killed at each point of `stop` after the stop call: the label is saved,
/// `stop`, `status` and `list` report a rescuable bundle with its path (exit 7), an ID
/// with leftovers cannot be reused, `rescue` completes the bundle, and it restores.
fn killed_agent(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).data_checksums(true));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let store = tool.store_path().display().to_string();
    let work = pgbookend_testkit::temp_dir("rescue");
    for point in ["after-stop-call", "during-wal-collect", "during-upload"] {
        let id = format!("k-{point}");
        c.psql("DROP TABLE IF EXISTS rows; CREATE TABLE rows (t text)");
        start_with(&tool, &id, &store, &[("PGBOOKEND_FAULT", point)], &[]).ok();
        let bench = c.pgbench_background(2, 2);
        let copy = cp_copy(&c, work.path(), &id);
        bench.wait().expect("pgbench");
        c.psql("INSERT INTO rows VALUES ('committed before stop')");

        let saved = rescue_root(&tool).join(&id);
        let stop = tool.stop(&id, &[]);
        assert_eq!(
            stop.code, 7,
            "{point}: stop must exit 7 (rescuable): {stop:?}"
        );
        assert!(
            stop.stderr.contains(&saved.display().to_string())
                && stop.stderr.contains(&format!("pgbookend rescue --id {id}")),
            "{point}: stop names the saved label and the rescue command: {stop:?}"
        );
        for f in ["backup_label", "pg_control", "rescue.json"] {
            assert!(saved.join(f).is_file(), "{point}: {f} saved in {saved:?}");
        }
        let label = std::fs::read_to_string(saved.join("backup_label")).unwrap();
        assert!(label.contains(&format!("LABEL: {id}")), "{label}");

        let st = tool.status(&id);
        assert_eq!(st.code, 7, "{point}: status exits 7: {st:?}");
        assert_eq!(st.json()["state"], "rescuable", "{st:?}");
        assert_eq!(st.json()["rescue"], saved.display().to_string());

        let list = tool.run(&["list", "--store", &store, "--json"]).ok();
        let entry = list.json()["bundles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{point}: list shows the bundle: {list:?}"));
        assert_eq!(entry["complete"], false);
        assert_eq!(entry["rescuable"], true, "{point}: {entry}");

        let show = tool.run(&["show", "--store", &store, "--id", &id]).ok();
        assert!(show.stdout.contains("RESCUABLE"), "{point}: {show:?}");

        // The ID cannot be reused while its leftovers exist.
        let again = tool.start(&id, &[]);
        assert_eq!(
            again.code, 2,
            "{point}: an ID with leftovers is refused: {again:?}"
        );
        assert!(again.stderr.contains("rescue --id"), "{again:?}");

        // `rescue` completes it; so does `stop` run again.
        let r = if point == "during-upload" {
            tool.stop(&id, &[]).ok()
        } else {
            tool.run(&["rescue", "--id", &id, "--json"]).ok()
        };
        assert!(r.json()["stores"][0]["ok"].as_bool().unwrap(), "{r:?}");
        assert!(tool.bundle_dir(&id).join("bundle.json").is_file());
        assert!(
            !saved.exists(),
            "{point}: the rescue copy is removed once complete"
        );
        let leftovers = dot_files(&tool.bundle_dir(&id));
        assert!(
            leftovers.is_empty(),
            "{point}: temporary files left: {leftovers:?}"
        );
        assert_eq!(tool.status(&id).code, 0, "{point}: status after rescue");
        tool.run(&["verify", "--store", &store, "--id", &id]).ok();
        restores(major, &tool, &store, &copy);
    }
}
per_major!(killed_agent_t, killed_agent);

/// The store fills up while `stop` writes the WAL: exit 7 with the cause, nothing lost;
/// once there is room, `rescue` completes the bundle and it verifies.
fn store_full(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let fs = common::Tmpfs::mount("64k");
    let store = fs.path().display().to_string();
    let id = "full";
    start_with(&tool, id, &store, &[], &[]).ok();
    let bench = c.pgbench_background(2, 3);
    bench.wait().expect("pgbench");
    let stop = tool.stop(id, &[]);
    assert_eq!(
        stop.code, 7,
        "a full store leaves a rescuable bundle: {stop:?}"
    );
    assert!(
        stop.stderr.contains("No space left on device"),
        "the message says why: {stop:?}"
    );
    let saved = rescue_root(&tool).join(id);
    assert!(saved.join("backup_label").is_file(), "the label is saved");
    assert!(
        stop.stderr.contains(&saved.display().to_string()),
        "{stop:?}"
    );
    assert!(!fs.path().join(id).join("bundle.json").exists());
    assert_eq!(tool.status(id).code, 7);

    fs.resize("256m");
    let r = tool.run(&["rescue", "--id", id]);
    assert_eq!(r.code, 0, "rescue succeeds once there is room: {r:?}");
    assert!(fs.path().join(id).join("bundle.json").is_file());
    assert!(!saved.exists());
    tool.run(&["verify", "--store", &store, "--id", id]).ok();
}
per_major!(store_full_t, store_full);

/// Defect 7: `--wal archive` with an archiver that has not delivered within
/// --archive-timeout. The label is saved (exit 7, path reported); `rescue` says which
/// segment is missing, and completes the bundle once the WAL has arrived.
fn slow_archiver(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).archive_dir(true));
    let tool = Tool::new(&c);
    let store = tool.store_path().display().to_string();
    let late = pgbookend_testkit::temp_dir("late-archive");
    let late_s = late.path().display().to_string();
    let id = "slow";
    start_with(
        &tool,
        id,
        &store,
        &[],
        &["--wal", "archive", "--archive", &late_s],
    )
    .ok();
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let stop = tool.stop(id, &["--archive-timeout", "1s"]);
    assert_eq!(
        stop.code, 7,
        "the archive wait timed out: rescuable: {stop:?}"
    );
    let saved = rescue_root(&tool).join(id);
    assert!(saved.join("backup_label").is_file(), "the label is saved");
    assert!(
        stop.stderr.contains(&saved.display().to_string()),
        "{stop:?}"
    );
    assert!(stop.stderr.contains(&late_s), "names the archive: {stop:?}");

    let early = tool.run(&["rescue", "--id", id]);
    assert_eq!(early.code, 7, "WAL still missing: {early:?}");
    assert!(
        early.stderr.contains("WAL file 0000000"),
        "names it: {early:?}"
    );
    assert!(saved.exists(), "the label stays saved");

    // The archiver delivers: the server's archive gets the stop segment, then it is
    // copied to the directory the backup named.
    let facts: Value =
        serde_json::from_slice(&std::fs::read(saved.join("rescue.json")).unwrap()).unwrap();
    let stop_file = facts["manifest"]["stop_wal_file"]
        .as_str()
        .unwrap()
        .to_string();
    let archive = c.archive_dir().unwrap();
    assert!(
        common::wait_until(Duration::from_secs(60), || archive
            .join(&stop_file)
            .is_file()),
        "the server archives {stop_file}"
    );
    for e in std::fs::read_dir(&archive).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), late.path().join(e.file_name())).unwrap();
    }
    let r = tool.run(&["rescue", "--id", id, "--json"]);
    assert_eq!(r.code, 0, "rescued once the WAL arrived: {r:?}");
    let m: Value =
        serde_json::from_slice(&std::fs::read(tool.bundle_dir(id).join("bundle.json")).unwrap())
            .unwrap();
    assert_eq!(m["wal_mode"], "archive");
    assert_eq!(m["stop_wal_file"], stop_file.as_str());
    assert!(!saved.exists());
}
per_major!(slow_archiver_t, slow_archiver);

/// A complete bundle's `bundle.json` for the expire tests.
fn complete_bundle(store: &Path, id: &str, stop_time: &str) {
    let d = store.join(id);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("backup_label"), b"label").unwrap();
    let m = serde_json::json!({
        "format": 1, "id": id, "system_identifier": "7000000000000000001",
        "pg_version_num": 160000, "pg_major": 16, "timeline": 1, "start_lsn": "0/1",
        "stop_lsn": "0/2", "checkpoint_lsn": "0/1",
        "start_wal_file": "000000010000000000000001",
        "stop_wal_file": "000000010000000000000001", "wal_segment_size": 16777216,
        "backup_from": "primary", "start_time": stop_time, "stop_time": stop_time,
        "host": "h", "pgdata": "/d", "tablespaces": [], "data_checksums": false,
        "tool": "pgbookend", "tool_version": "0", "wal_mode": "collect",
        "wal_archive": "not_waited", "wal": [], "files": {}
    });
    std::fs::write(d.join("bundle.json"), serde_json::to_vec(&m).unwrap()).unwrap();
}

/// Sets the modification time of every file of a bundle to three days ago.
fn age(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let st = Command::new("touch")
            .args(["-d", "3 days ago"])
            .arg(e.unwrap().path())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// A tool without a cluster (only `expire`/`list` run).
fn bare(cmd_args: &[&str], state: &Path) -> Run {
    Command::new(common::bin())
        .args(cmd_args)
        .env("PGBOOKEND_STATE_DIR", state)
        .env_remove("PGBOOKEND_CONFIG")
        .output()
        .unwrap()
        .into()
}

/// `expire --store STORE --keep-last 1 --include-partial` plus `extra`, which succeeds.
fn expire_all_but_one(store: &str, state: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "expire",
        "--store",
        store,
        "--keep-last",
        "1",
        "--include-partial",
    ];
    args.extend_from_slice(extra);
    bare(&args, state).ok()
}

/// Defect 11: `<store>/<id>` symlinked to another store's bundle: `expire` and `list`
/// skip it and say so; the other store's bundle is untouched.
#[test]
fn expire_does_not_follow_a_symlinked_bundle() {
    let t = pgbookend_testkit::temp_dir("expire-link");
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    complete_bundle(&a, "victim", "2020-01-01T00:00:00Z");
    complete_bundle(&b, "old", "2021-01-01T00:00:00Z");
    complete_bundle(&b, "new", "2022-01-01T00:00:00Z");
    std::os::unix::fs::symlink(a.join("victim"), b.join("linked")).unwrap();
    let bs = b.display().to_string();
    let r = expire_all_but_one(&bs, t.path(), &["--json"]);
    assert!(
        a.join("victim/bundle.json").is_file(),
        "the other store's bundle survives"
    );
    assert!(a.join("victim/backup_label").is_file());
    assert!(
        b.join("linked").symlink_metadata().is_ok(),
        "the link itself stays"
    );
    assert!(
        !b.join("old").exists(),
        "expire still removes what it should"
    );
    let skipped = r.json()["skipped"].to_string();
    assert!(
        skipped.contains("linked") && skipped.contains("symbolic link"),
        "{r:?}"
    );
    let list = bare(&["list", "--store", &bs], t.path()).ok();
    assert!(
        list.stdout.contains("skipped") && list.stdout.contains("linked"),
        "{list:?}"
    );
}

/// `expire --include-partial` over a rescuable bundle (a label, no bundle.json): reported
/// and kept; removed only with --include-rescuable. A plain partial bundle goes.
#[test]
fn expire_keeps_rescuable_bundles_unless_told() {
    let t = pgbookend_testkit::temp_dir("expire-rescuable");
    let s = t.path().join("s");
    complete_bundle(&s, "done", "2022-01-01T00:00:00Z");
    let r1 = s.join("r1");
    std::fs::create_dir_all(&r1).unwrap();
    std::fs::write(r1.join("backup_label"), b"START WAL LOCATION: 0/2\n").unwrap();
    std::fs::write(r1.join("pg_control"), [0u8; 64]).unwrap();
    age(&r1);
    let p1 = s.join("p1");
    std::fs::create_dir_all(&p1).unwrap();
    std::fs::write(p1.join("junk"), b"x").unwrap();
    age(&p1);
    let ss = s.display().to_string();
    let out = expire_all_but_one(&ss, t.path(), &[]);
    assert!(
        r1.join("backup_label").is_file(),
        "the rescuable bundle is kept: {out:?}"
    );
    assert!(!p1.exists(), "a plain partial bundle is removed: {out:?}");
    assert!(
        out.stdout.contains("r1") && out.stdout.contains("rescue --id r1"),
        "reported, not silent: {out:?}"
    );
    let out = expire_all_but_one(&ss, t.path(), &["--include-rescuable"]);
    assert!(!r1.exists(), "removed on explicit request: {out:?}");
    assert!(s.join("done/bundle.json").is_file());
}
