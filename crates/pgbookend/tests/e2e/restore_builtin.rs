//! End-to-end tests of `pgbookend restore` on built-in backups (`pgbookend backup`), on
//! every major: a backup taken while pgbench writes, restored with its tablespace
//! remapped, checked by `pg_verifybackup`, started and checked; then `--delta` over a
//! copy that diverged; then a flipped byte in a stored object.

use crate::common::{self, start_restored, Run, Tool};
use crate::runkit::amcheck_clean;
use pgbookend_testkit::{Cluster, TempDir};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A cluster with a tablespace, loaded by pgbench, and one built-in backup of it.
struct Fixture {
    c: Cluster,
    tool: Tool,
    ts_oid: u32,
    work: TempDir,
    id: String,
    /// The last `ticks` row whose commit was acknowledged before `backup` returned.
    last_tick: u64,
}

impl Fixture {
    fn new(major: u32) -> Fixture {
        let (c, ts_oid) = common::tablespace_cluster(major);
        c.psql("CREATE TABLE ticks (n bigint PRIMARY KEY)");
        let tool = Tool::new(&c);
        let work = pgbookend_testkit::temp_dir("rsbuiltin");
        if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
            std::os::unix::fs::chown(work.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut f = Fixture {
            c,
            tool,
            ts_oid,
            work,
            id: "b1".into(),
            last_tick: 0,
        };
        let done = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (done, acked, env) = (done.clone(), acked.clone(), f.c.env());
            std::thread::spawn(move || tick(&env, &done, &acked))
        };
        let bench = f.c.pgbench_background(2, 3);
        let store = f.store();
        f.tool
            .run(&["backup", "--id", "b1", "--store", &store, "--json"])
            .ok();
        f.last_tick = acked.load(Ordering::SeqCst);
        done.store(true, Ordering::SeqCst);
        ticker.join().unwrap();
        bench.wait().expect("pgbench");
        assert!(f.last_tick > 0, "rows were committed during the backup");
        f.archive_all();
        f
    }

    fn store(&self) -> String {
        self.tool.store_path().display().to_string()
    }

    /// Switches WAL and waits until the archive holds it (recovery replays to the end).
    fn archive_all(&self) {
        let seg = self.c.psql("SELECT pg_walfile_name(pg_switch_wal())");
        let ok = common::wait_until(Duration::from_secs(60), || {
            self.c
                .psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
                .as_str()
                >= seg.as_str()
        });
        assert!(ok, "WAL {seg} was not archived");
    }

    /// `restore` into `<work>/<name>/{data,ts}` with the tablespace remapped (of the
    /// backup by its ID, unless `extra` gives a `--target` to pick it by).
    fn restore(&self, name: &str, extra: &[&str]) -> (Run, PathBuf, PathBuf) {
        let data = self.work.path().join(name).join("data");
        let ts = self.work.path().join(name).join("ts");
        let _ = std::fs::create_dir(data.parent().unwrap());
        if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
            std::os::unix::fs::chown(data.parent().unwrap(), Some(uid), Some(gid)).unwrap();
        }
        let (d, store) = (data.display().to_string(), self.store());
        let tsa = format!("{}={}", self.ts_oid, ts.display());
        let archive = self.c.archive_dir().unwrap().display().to_string();
        let mut args = vec![
            "restore",
            "--store",
            &store,
            "--pgdata",
            &d,
            "--tablespace",
            &tsa,
            "--archive",
            &archive,
            "--json",
        ];
        if !extra.contains(&"--target") {
            args.extend_from_slice(&["--id", &self.id]);
        }
        args.extend_from_slice(extra);
        (self.tool.run(&args), data, ts)
    }

    /// A new directory for a restored server's own files (removed when it is dropped,
    /// unlike the restored directory, which later steps reuse).
    fn server_base(&self) -> PathBuf {
        let d = pgbookend_testkit::temp_dir("rsserver").keep();
        if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
        }
        d
    }

    /// The index of the backup, as stored.
    fn index(&self) -> Value {
        let p = self
            .tool
            .store_path()
            .join("data")
            .join(&self.id)
            .join("index.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    /// Where an index path is on disk for a restore into `data`/`ts`.
    fn on_disk(&self, data: &Path, ts: &Path, path: &str) -> PathBuf {
        let pfx = format!("pg_tblspc/{}/", self.ts_oid);
        match path.strip_prefix(&pfx) {
            Some(rest) => ts.join(rest),
            None => data.join(path),
        }
    }
}

/// Commits one `ticks` row after another until `done`; `acked` is the last committed.
fn tick(env: &[(String, String)], done: &AtomicBool, acked: &AtomicU64) {
    let mut n = 0u64;
    while !done.load(Ordering::SeqCst) {
        n += 1;
        let out = Command::new(pgbookend_testkit::client_bin("psql"))
            .envs(env.iter().cloned())
            .args(["-XAtq", "-c", &format!("INSERT INTO ticks VALUES ({n})")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        acked.store(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// pg_verifybackup on the restored directory: with WAL parsing (from the archive) where
/// the installed pg_verifybackup and pg_waldump are of this major (15: Debian's; 16: the
/// pgserver build), else 15's with `--no-parse-wal` (the manifest format is the same).
fn verifybackup(f: &Fixture, data: &Path) {
    let v15 = PathBuf::from("/usr/lib/postgresql/15/bin/pg_verifybackup");
    let v16 = PathBuf::from("/var/cache/pgbookend/pgserver/lib/python3.11/site-packages/pgserver/pginstall/bin/pg_verifybackup");
    let archive = f.c.archive_dir().unwrap();
    let mut cmd = match f.c.major() {
        15 if v15.exists() => Command::new(&v15),
        16 if v16.exists() => Command::new(&v16),
        _ if v15.exists() => {
            let mut c = Command::new(&v15);
            c.arg("--no-parse-wal");
            c
        }
        _ => {
            eprintln!("no pg_verifybackup installed: step skipped");
            return;
        }
    };
    let out = cmd.arg("-w").arg(&archive).arg(data).output().unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup refused {}:\n{}{}",
        data.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Turns archiving off in a restored copy (a file the delta restore then rewrites).
fn no_archiving(data: &Path) {
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(&mut conf, b"\narchive_mode = off\n").unwrap();
}

/// The data checks of a restored, recovered cluster.
fn restored_is_right(f: &Fixture, r: &Cluster) {
    assert!(r.pgbench_invariant_ok(), "pgbench's invariant must hold");
    assert_eq!(r.psql("SELECT count(*) FROM in_ts"), "5000");
    let max: u64 = r.psql("SELECT max(n) FROM ticks").parse().unwrap();
    assert!(
        max >= f.last_tick,
        "row {} was committed before backup returned; the restore has up to {max}",
        f.last_tick
    );
    amcheck_clean(r);
}

/// The files of a restored directory (tablespace files under pg_tblspc/<oid>/) with
/// their SHA-256, leaving out pg_wal's contents and what prepare and the server write.
fn tree(f: &Fixture, data: &Path, ts: &Path) -> BTreeMap<String, String> {
    const SKIP: [&str; 7] = [
        "global/pg_control",
        "backup_label",
        "tablespace_map",
        "backup_manifest",
        "postmaster.pid",
        "postmaster.opts",
        "recovery.signal",
    ];
    let mut out = BTreeMap::new();
    let pfx = format!("pg_tblspc/{}", f.ts_oid);
    for (root, prefix) in [(data.to_path_buf(), String::new()), (ts.to_path_buf(), pfx)] {
        for line in common::tree::entries(&root) {
            let (rel, rest) = line.split_once(' ').unwrap();
            // Mode, owner and content (or link target, or "/").
            let what = rest.to_string();
            let path = match (prefix.as_str(), rel) {
                (p, ".") => p.to_string(),
                ("", r) => r.to_string(),
                (p, r) => format!("{p}/{r}"),
            };
            if !SKIP.contains(&path.as_str()) && !path.starts_with("pg_wal/") && !path.is_empty() {
                out.insert(path, what);
            }
        }
    }
    out
}

/// Entries below `root` that the index does not have (top-most only), `want` relative.
fn extras(root: &Path, rel: &str, want: &BTreeSet<String>) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let md = std::fs::symlink_metadata(root.join(&r)).unwrap();
        if !want.contains(&r) {
            n += 1;
        } else if md.is_dir() {
            n += extras(root, &r, want);
        }
    }
    n
}

/// What `--delta` must do to `data`/`ts`: (kept, rewritten, removed).
fn expected_delta(f: &Fixture, data: &Path, ts: &Path) -> (u64, u64, u64) {
    let ix = f.index();
    let (mut kept, mut rewritten) = (0, 0);
    let (mut want_pg, mut want_ts) = (BTreeSet::new(), BTreeSet::new());
    want_pg.insert("global/pg_control".to_string());
    let pfx = format!("pg_tblspc/{}/", f.ts_oid);
    for e in ix["entries"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        match path.strip_prefix(&pfx) {
            Some(r) => want_ts.insert(r.to_string()),
            None => want_pg.insert(path.to_string()),
        };
        if e["kind"] != "file" || path == "global/pg_control" {
            continue;
        }
        let same = std::fs::read(f.on_disk(data, ts, path))
            .is_ok_and(|b| hex::encode(Sha256::digest(&b)) == e["sha256"].as_str().unwrap());
        if same {
            kept += 1;
        } else {
            rewritten += 1;
        }
    }
    // pg_control is removed first, then the sweep counts what is left.
    let removed = extras(data, "", &want_pg) + extras(ts, "", &want_ts);
    (kept, rewritten, removed)
}

fn builtin_restore(major: u32) {
    let f = Fixture::new(major);

    // A full restore into new directories, the tablespace remapped.
    let (r, data, ts) = f.restore("full", &[]);
    let r = r.ok();
    let j = r.json();
    assert_eq!(j["id"], "b1");
    assert!(j["objects_fetched"].as_u64().unwrap() > 0);
    let link = std::fs::read_link(data.join("pg_tblspc").join(f.ts_oid.to_string())).unwrap();
    assert_eq!(link, ts);
    assert!(data.join("backup_manifest").is_file());
    verifybackup(&f, &data);
    let full_tree = tree(&f, &data, &ts);
    // The restored server must not archive its new timeline into the origin's archive,
    // from which the delta restore below recovers to the latest timeline.
    no_archiving(&data);
    let restored = start_restored(major, &data, &f.server_base());
    restored_is_right(&f, &restored);

    // Refusals that change nothing: a live server's PGDATA (also with --delta), then
    // (stopped) a non-empty PGDATA without --delta.
    let (r, _, _) = f.restore("full", &["--delta"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("running server"), "{r:?}");

    // Diverge: rows added, a table dropped (in the tablespace), a file truncated.
    restored.psql("INSERT INTO ticks SELECT g FROM generate_series(1000000, 1010000) g");
    restored.psql("DROP TABLE in_ts");
    restored.psql("CHECKPOINT");
    let rel = restored.psql("SELECT pg_relation_filepath('pgbench_branches')");
    restored.stop();
    drop(restored);
    let (r, _, _) = f.restore("full", &[]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("is not empty"), "{r:?}");
    let victim = data.join(&rel);
    let len = std::fs::metadata(&victim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // A file whose bytes are right but whose owner and mode are not: kept, and put right.
    let pgv = data.join("PG_VERSION");
    std::os::unix::fs::chown(&pgv, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&pgv, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (kept, rewritten, removed) = expected_delta(&f, &data, &ts);
    assert!(
        kept > 0 && rewritten > 0 && removed > 0,
        "{kept} {rewritten} {removed}"
    );
    let (r, data2, ts2) = f.restore("full", &["--delta"]);
    let j = r.ok().json();
    assert_eq!(j["delta"]["kept"], kept, "{j}");
    assert_eq!(j["delta"]["rewritten"], rewritten, "{j}");
    assert_eq!(j["delta"]["removed"], removed, "{j}");
    assert_eq!((&data2, &ts2), (&data, &ts));
    assert_eq!(
        tree(&f, &data, &ts),
        full_tree,
        "delta equals a full restore"
    );
    verifybackup(&f, &data);
    let restored = start_restored(major, &data, &f.server_base());
    restored_is_right(&f, &restored);
    restored.stop();
    drop(restored);

    // Without --id, --target picks the newest built-in backup before it.
    let (r, _, _) = f.restore("picked", &["--target", "latest"]);
    assert_eq!(r.ok().json()["id"], "b1");

    // A byte flipped in the object that holds PG_VERSION: refused, naming the file;
    // what was written is removed.
    let ix = f.index();
    let pgv = ix["entries"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e["path"] == "PG_VERSION")
        .unwrap();
    let obj = ix["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| {
            o["pieces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["entry"] == pgv)
        })
        .unwrap();
    let name = obj["name"].as_str().unwrap();
    let path = f.tool.store_path().join("data").join(&f.id).join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (r, data3, ts3) = f.restore("flipped", &["--jobs", "1"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains(name) && r.stderr.contains("PG_VERSION"),
        "{r:?}"
    );
    assert!(
        !data3.exists() && !ts3.exists(),
        "what was written is removed"
    );
}
per_major!(builtin_restore_t, builtin_restore);
