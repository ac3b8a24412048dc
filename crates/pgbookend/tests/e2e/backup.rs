//! End-to-end tests of `pgbookend backup` (the built-in copy): a backup under pgbench
//! load with a tablespace lands in the store as objects, an index and a bundle, appears
//! in `list` as built-in and is removed whole by `expire`; a restore from an S3 store
//! writes the same files as one from a local store; a full store, an S3 store that
//! vanishes mid-copy and a signal abort it and leave nothing behind.

use crate::common::{self, newest_major, wait_until, Run, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn cluster(major: u32) -> Cluster {
    let c = Cluster::start(
        ClusterOptions::new(major)
            .data_checksums(true)
            .tablespace(true),
    );
    c.pgbench_init(1);
    c.psql("CREATE TABLE in_ts (i int PRIMARY KEY) TABLESPACE ts1; INSERT INTO in_ts SELECT generate_series(1, 5000)");
    c
}

fn read_index(store: &Path, id: &str) -> Value {
    let p = store.join("data").join(id).join("index.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// Nothing of backup `id` is left: no marker in PGDATA, no bundle, no data, no agent.
#[track_caller]
fn assert_nothing_left(c: &Cluster, tool: &Tool, id: &str) {
    let store = tool.store_path();
    assert!(!store.join("data").join(id).exists(), "data/{id} left");
    assert!(
        !store.join(id).join("bundle.json").exists(),
        "a complete bundle of {id} was written"
    );
    assert!(
        !c.pgdata().join("pg_backup_metadata").join(id).exists()
            && !c.pgdata().join("backup_label").exists(),
        "a marker was left in PGDATA"
    );
    let gone = wait_until(Duration::from_secs(30), || {
        tool.agent_pid(id).is_none_or(|p| !common::is_our_agent(p))
    });
    assert!(gone, "the agent of {id} is still running");
}

fn backup_to_local_store(major: u32) {
    let c = cluster(major);
    let tool = Tool::new(&c);
    let store = tool.store_path().display().to_string();
    // A page damaged on disk (clean in shared buffers after the checkpoint): the backup
    // reads it twice, reports it as suspect (corrupt: no WAL of the window rewrites it)
    // and does not fail.
    c.psql("CREATE TABLE victim AS SELECT generate_series(1, 1000) i; CHECKPOINT");
    let victim = c.psql("SELECT pg_relation_filepath('victim')");
    common::flip_byte(&c.pgdata().join(&victim), 4000, 0xff);
    let bench = c.pgbench_background(2, 3);
    let r = tool
        .run(&[
            "backup", "--id", "b1", "--store", &store, "--jobs", "2", "--json",
        ])
        .ok();
    bench.wait().expect("pgbench");
    let out = r.json();
    assert_eq!(out["id"], "b1");
    assert!(out["files"].as_u64().unwrap() > 500, "{out}");
    assert!(out["bytes_stored"].as_u64().unwrap() < out["bytes_read"].as_u64().unwrap());
    let suspects = out["suspect_pages"].as_array().unwrap();
    assert_eq!(suspects.len(), 1, "{out}");
    assert_eq!(suspects[0]["path"], victim.as_str());
    assert_eq!(suspects[0]["block"], 0);
    // Nothing in the window wrote to that table: the WAL does not repair it.
    assert!(
        suspects[0]["wal"].as_str().unwrap().starts_with("corrupt"),
        "{out}"
    );
    // The index covers PGDATA and the tablespace (through its link), and every object is there.
    let ix = read_index(tool.store_path(), "b1");
    let entries = ix["entries"].as_array().unwrap();
    let has = |p: &dyn Fn(&Value) -> bool| entries.iter().any(p);
    assert!(has(
        &|e| e["path"] == "global/pg_control" && e["kind"] == "file"
    ));
    assert!(has(&|e| e["path"] == "pg_wal" && e["kind"] != "file"));
    assert!(has(
        &|e| e["kind"] == "link" && e["path"].as_str().unwrap().starts_with("pg_tblspc/")
    ));
    assert!(has(&|e| e["path"]
        .as_str()
        .unwrap()
        .starts_with("pg_tblspc/")
        && e["kind"] == "file"));
    assert!(!has(
        &|e| e["path"] == "postmaster.pid" || e["path"] == "backup_label"
    ));
    let objects = ix["objects"].as_array().unwrap();
    assert_eq!(objects.len() as u64, out["objects"].as_u64().unwrap());
    for o in objects {
        let p = tool
            .store_path()
            .join("data/b1")
            .join(o["name"].as_str().unwrap());
        let len = std::fs::metadata(&p).unwrap().len();
        assert_eq!(len, o["stored_size"].as_u64().unwrap(), "{}", p.display());
    }
    let manifest =
        std::fs::read_to_string(tool.store_path().join("data/b1/backup_manifest")).unwrap();
    assert!(manifest.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 1,"));
    assert!(manifest.contains("\"Path\": \"backup_label\"") && manifest.contains("\"WAL-Ranges\""));
    assert!(tool.bundle_dir("b1").join("bundle.json").is_file());
    assert!(tool.bundle_dir("b1").join("backup_label").is_file());
    // list shows it as built-in; expire removes its data with the bundle.
    let list = tool.run(&["list", "--store", &store, "--json"]).ok().json();
    let b = list["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "b1")
        .cloned();
    assert_eq!(b.expect("b1 listed")["copy"], "built-in", "{list}");
    tool.run(&["backup", "--id", "b2", "--store", &store, "--json"])
        .ok();
    tool.run(&["expire", "--store", &store, "--keep-last", "1", "--json"])
        .ok();
    assert!(!tool.bundle_dir("b1").exists());
    assert!(
        !tool.store_path().join("data/b1").exists(),
        "expire left data/b1"
    );
    assert!(tool.store_path().join("data/b2/index.json").is_file());
}
per_major!(backup_to_local_store, backup_to_local_store);

/// Waits until the copy of `id` has begun (its `data/<id>/` exists: the sink opens it
/// just before the first file is read), with the backup still running. The slow
/// compression level keeps the copy going long after that.
#[track_caller]
fn wait_copy_begun(tool: &Tool, id: &str, child: &mut std::process::Child) {
    let dir = tool.store_path().join("data").join(id);
    let seen = wait_until(Duration::from_secs(120), || {
        dir.exists() || child.try_wait().ok().flatten().is_some()
    });
    let running = child.try_wait().ok().flatten().is_none();
    assert!(
        seen && dir.exists() && running,
        "the copy never began (backup still running: {running})"
    );
}

fn sigterm_mid_copy_aborts(major: u32) {
    let c = cluster(major);
    let tool = Tool::new(&c);
    let store = tool.store_path().display().to_string();
    let mut child = tool
        .cmd(&["backup", "--id", "s1", "--store", &store, "--jobs", "1"])
        .args(["--compress", "zstd:19"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_copy_begun(&tool, "s1", &mut child);
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("interrupted by a signal"), "{stderr}");
    assert_nothing_left(&c, &tool, "s1");
    // The cluster takes the next backup at once: no backup is left in progress.
    tool.run(&["backup", "--id", "s2", "--store", &store]).ok();
}
per_major!(sigterm_mid_copy_aborts, sigterm_mid_copy_aborts);

/// The store fills up mid-copy (a 20 MB file system, objects stored uncompressed):
/// `backup` fails naming the store, aborts the backup and removes what it wrote.
fn store_full_mid_copy_aborts(major: u32) {
    let c = cluster(major);
    let tool = Tool::new(&c);
    let fs = common::Tmpfs::mount("20m");
    let store = fs.path().display().to_string();
    let r = tool.run(&[
        "backup",
        "--id",
        "f1",
        "--store",
        &store,
        "--compress",
        "none",
        "--jobs",
        "2",
    ]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains(&store) && r.stderr.contains("aborted"),
        "{r:?}"
    );
    assert!(!fs.path().join("data/f1").exists(), "data/f1 left");
    assert!(!fs.path().join("f1/bundle.json").exists());
    let status = tool.status("f1");
    assert!(status.all().contains("abort"), "{status:?}");
    assert_nothing_left(&c, &tool, "f1");
}
per_major!(store_full_mid_copy_aborts, store_full_mid_copy_aborts);

/// A tool whose S3 client talks to `endpoint` (the local S3 server, or a gate to it).
fn s3_tool(c: &Cluster, endpoint: &str, aws: &Path) -> Tool {
    let mut tool = Tool::new(c);
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "AKIABACKUPTEST".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "secret".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("TMPDIR", aws.display().to_string()),
        ("AWS_CONFIG_FILE", aws.join("c").display().to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            aws.join("k").display().to_string(),
        ),
    ] {
        tool.env.push((k.into(), v));
    }
    tool
}

/// Every regular file below `root` (relative path → bytes), links as `-> target`.
fn tree_of(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("-> {}", t.display()).into_bytes());
            } else if md.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `restore` of `id` from `store` into `<base>/data` with the tablespace in `<base>/ts`.
fn restore_into(tool: &Tool, store: &str, id: &str, base: &Path, ts_oid: &str) -> Run {
    let (data, ts) = (base.join("data"), base.join("ts"));
    let (d, tsa) = (
        data.display().to_string(),
        format!("{ts_oid}={}", ts.display()),
    );
    tool.run(&[
        "restore",
        "--store",
        store,
        "--id",
        id,
        "--pgdata",
        &d,
        "--tablespace",
        &tsa,
        "--json",
    ])
}

/// The files two restores wrote, compared: the same paths and the same bytes, except
/// the recovery settings (they name the store the restore came from), what names each
/// restore's own tablespace directory (the link, `tablespace_map`), and `backup_manifest`
/// (it records those files' sizes and times).
#[track_caller]
fn assert_same_restore(a: &Path, b: &Path) {
    let own = |k: &str| {
        k.ends_with("postgresql.auto.conf")
            || k.starts_with("data/pg_tblspc/")
            || k == "data/tablespace_map"
            || k == "data/backup_manifest"
    };
    let (ta, tb) = (tree_of(a), tree_of(b));
    let ka: Vec<_> = ta.keys().collect();
    let kb: Vec<_> = tb.keys().collect();
    assert_eq!(ka, kb, "the two restores hold different files");
    let differ: Vec<_> = ta
        .iter()
        .filter(|(k, v)| tb[*k] != **v)
        .map(|(k, _)| k.clone())
        .filter(|k| !own(k))
        .collect();
    assert!(differ.is_empty(), "files differ: {differ:?}");
    assert!(ta.len() > 500, "only {} files restored", ta.len());
}

/// A backup into an S3 store (the local S3 server) and a local one at once: both get
/// the same objects and index; `list` on S3 shows it as built-in; `restore` of an
/// LZ4-compressed backup from S3 writes the same files as `restore` from the local store; `expire` removes its data
/// from S3 with the bundle.
#[test]
fn backup_to_s3() {
    let Some(major) = newest_major() else { return };
    let s3 = pgbookend_testkit::S3Server::start();
    s3.create_bucket("bk-test");
    let c = Cluster::start(ClusterOptions::new(major).tablespace(true));
    c.pgbench_init(1);
    let aws = pgbookend_testkit::temp_dir("aws");
    let tool = s3_tool(&c, &s3.endpoint(), aws.path());
    let url = "s3://bk-test/pg";
    let local = tool.store_path().display().to_string();
    // s2 is compressed with LZ4 (s1 with zstd, the default); both restore the same way.
    for (id, how) in [("s1", "zstd"), ("s2", "lz4")] {
        tool.run(&[
            "backup",
            "--id",
            id,
            "--store",
            url,
            "--store",
            &local,
            "--compress",
            how,
            "--json",
        ])
        .ok();
        assert_eq!(read_index(tool.store_path(), id)["compression"], how);
    }
    let keys = s3.keys("bk-test", "pg/data/s1/");
    let local_objs = std::fs::read_dir(tool.store_path().join("data/s1"))
        .unwrap()
        .count();
    assert_eq!(keys.len(), local_objs, "{keys:?}");
    let ix = s3.get("bk-test", "pg/data/s1/index.json").unwrap();
    assert_eq!(
        ix,
        std::fs::read(tool.store_path().join("data/s1/index.json")).unwrap()
    );
    let list = tool.run(&["list", "--store", url, "--json"]).ok().json();
    let b = list["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "s1")
        .cloned();
    assert_eq!(b.expect("s1 listed")["copy"], "built-in", "{list}");
    let show = tool
        .run(&["show", "--store", url, "--id", "s1", "--json"])
        .ok()
        .json();
    assert_eq!(show["copy"], "built-in", "{show}");
    let ts_oid = c.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let work = pgbookend_testkit::temp_dir("bkrs");
    if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
        std::os::unix::fs::chown(work.path(), Some(uid), Some(gid)).unwrap();
    }
    let (from_s3, from_local) = (work.path().join("s3"), work.path().join("local"));
    for (base, store) in [(&from_s3, url), (&from_local, local.as_str())] {
        std::fs::create_dir(base).unwrap();
        if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
            std::os::unix::fs::chown(base, Some(uid), Some(gid)).unwrap();
        }
        let r = restore_into(&tool, store, "s2", base, ts_oid.trim());
        assert_eq!(r.code, 0, "restore from {store}: {r:?}");
    }
    assert_same_restore(&from_s3, &from_local);
    // Without --id, --target picks the newest built-in backup that ends before it.
    let s1_stop = std::fs::read_to_string(tool.bundle_dir("s1").join("bundle.json")).unwrap();
    let s1_stop: Value = serde_json::from_str(&s1_stop).unwrap();
    let lsn = format!("lsn={}", s1_stop["stop_lsn"].as_str().unwrap());
    let picked = work.path().join("picked");
    let (p, tsa) = (
        picked.join("data").display().to_string(),
        format!("{}={}", ts_oid.trim(), picked.join("ts").display()),
    );
    // The parent of --pgdata must exist: the error says so.
    let r = tool.run(&[
        "restore",
        "--store",
        &local,
        "--id",
        "s1",
        "--pgdata",
        &p,
        "--tablespace",
        &tsa,
    ]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("not its parent"), "{r:?}");
    assert!(!picked.exists());
    std::fs::create_dir(&picked).unwrap();
    if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
        std::os::unix::fs::chown(&picked, Some(uid), Some(gid)).unwrap();
    }
    let (p, tsa) = (
        picked.join("data").display().to_string(),
        format!("{}={}", ts_oid.trim(), picked.join("ts").display()),
    );
    for (target, want) in [
        (lsn.as_str(), Some("s1")),
        ("time=2001-01-01T00:00:00Z", None),
    ] {
        let r = tool.run(&[
            "restore",
            "--store",
            &local,
            "--target",
            target,
            "--pgdata",
            &p,
            "--tablespace",
            &tsa,
            "--json",
        ]);
        match want {
            Some(id) => assert_eq!(r.ok().json()["id"], id),
            None => {
                assert_ne!(r.code, 0, "{r:?}");
                assert!(r.stderr.contains("2001-01-01"), "{r:?}");
            }
        }
    }
    let map = std::fs::read_to_string(from_s3.join("data/tablespace_map")).unwrap();
    assert!(
        map.contains(&from_s3.join("ts").display().to_string()),
        "{map}"
    );
    tool.run(&["expire", "--store", url, "--keep-last", "1", "--json"])
        .ok();
    assert!(
        s3.keys("bk-test", "pg/data/s1/").is_empty(),
        "expire left data/s1 in S3"
    );
    assert!(s3.keys("bk-test", "pg/s1/").is_empty());
    assert!(!s3.keys("bk-test", "pg/data/s2/").is_empty());
}

/// The S3 store becomes unreachable mid-copy (a gate in front of the S3 server is cut
/// once the first object is there): `backup` fails naming the store, the backup is
/// aborted (no marker, no agent), and the store shows no complete bundle: no
/// bundle.json, no index, and `list` does not show it as complete.
#[test]
fn s3_unreachable_mid_copy_aborts() {
    let Some(major) = newest_major() else { return };
    let s3 = pgbookend_testkit::S3Server::start();
    s3.create_bucket("bk-cut");
    let c = cluster(major);
    let aws = pgbookend_testkit::temp_dir("aws");
    let mut gate = pgbookend_testkit::Gate::open(s3.port());
    let tool = s3_tool(&c, &gate.endpoint(), aws.path());
    let url = "s3://bk-cut/pg";
    let child = tool
        .cmd(&["backup", "--id", "u1", "--store", url, "--jobs", "1"])
        .args(["--compress", "zstd:19"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = wait_until(Duration::from_secs(180), || {
        !s3.keys("bk-cut", "pg/data/u1/").is_empty()
    });
    assert!(first, "no object of u1 reached the S3 server");
    gate.cut();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains(url) && r.stderr.contains("aborted"),
        "{r:?}"
    );
    let keys = s3.keys("bk-cut", "pg/");
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with("bundle.json") || k.ends_with("index.json")),
        "{keys:?}"
    );
    assert_nothing_left(&c, &tool, "u1");
    let direct = s3_tool(&c, &s3.endpoint(), aws.path());
    let l = direct.run(&["list", "--store", url, "--json"]).ok().json();
    let complete = l["bundles"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|b| b["id"] == "u1" && b["complete"] == true);
    assert!(!complete, "{l}");
}

/// An index altered in the store cannot aim `restore` outside its targets: a tablespace
/// link retargeted at another directory is refused (not empty; and `--delta` refuses a
/// directory that is not a tablespace copy, instead of sweeping it), and an entry that
/// climbs out of PGDATA makes the index invalid. Nothing is written or removed.
#[test]
fn altered_index_is_refused() {
    let Some(major) = newest_major() else { return };
    let c = cluster(major);
    let tool = Tool::new(&c);
    let store = tool.store_path().display().to_string();
    tool.run(&["backup", "--id", "h1", "--store", &store]).ok();
    let ix_path = tool.store_path().join("data/h1/index.json");
    let original = std::fs::read_to_string(&ix_path).unwrap();
    let work = pgbookend_testkit::temp_dir("hostile");
    let victim = work.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"keep me").unwrap();
    let pgdata = work.path().join("data");
    let d = pgdata.display().to_string();

    // The tablespace link now points at the victim directory.
    let mut ix: Value = serde_json::from_str(&original).unwrap();
    for e in ix["entries"].as_array_mut().unwrap() {
        if e["kind"] == "link" && e["path"].as_str().unwrap().starts_with("pg_tblspc/") {
            e["target"] = Value::String(victim.display().to_string());
        }
    }
    std::fs::write(&ix_path, serde_json::to_vec(&ix).unwrap()).unwrap();
    let plain = tool.run(&["restore", "--store", &store, "--id", "h1", "--pgdata", &d]);
    assert_eq!(plain.code, 6, "{plain:?}");
    assert!(plain.stderr.contains("is not empty"), "{plain:?}");
    let delta = tool.run(&[
        "restore", "--store", &store, "--id", "h1", "--pgdata", &d, "--delta",
    ]);
    assert_eq!(delta.code, 6, "{delta:?}");
    assert!(
        delta.stderr.contains("does not look like a copy") && delta.stderr.contains("precious"),
        "{delta:?}"
    );
    assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
    assert!(!pgdata.exists(), "nothing was created");

    // An entry that climbs out of PGDATA: the index is refused as a whole.
    let escaped = original.replacen("\"path\":\"PG_VERSION\"", "\"path\":\"../PG_VERSION\"", 1);
    assert_ne!(escaped, original, "the index names PG_VERSION");
    std::fs::write(&ix_path, escaped).unwrap();
    let r = tool.run(&["restore", "--store", &store, "--id", "h1", "--pgdata", &d]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains("is not valid") && r.stderr.contains("../PG_VERSION"),
        "{r:?}"
    );
    assert!(!pgdata.exists() && !work.path().join("PG_VERSION").exists());
}
