//! End-to-end tests of the WAL archive: `archive-push` as a real server's
//! `archive_command` under pgbench (local stores, and S3 on the test server), refusals
//! (same name with other bytes, another cluster's segment, hostile names and paths),
//! a store that vanishes under load, `archive-get` of missing and damaged objects, and a
//! restored backup recovering through `archive-get` as its `restore_command`.

use crate::common::{self, newest_major, wait_until, Run, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions, S3Server, TempDir};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A cluster whose archive_command is `pgbookend archive-push %p`, with the archive
/// settings in a config file given through PGBOOKEND_CONFIG (set on the command line,
/// since the server's environment is the harness's).
struct Archived {
    c: Cluster,
    store: TempDir,
    _cfg: TempDir,
    /// Extra environment for the archive_command (S3 credentials).
    prefix: String,
}

impl Archived {
    fn start(major: u32, config: impl FnOnce(&Path) -> String, env: &str) -> Archived {
        Self::start_with(major, config, env, "")
    }

    /// As [`Archived::start`], with `flags` given to archive-push before `%p`.
    fn start_with(
        major: u32,
        config: impl FnOnce(&Path) -> String,
        env: &str,
        flags: &str,
    ) -> Archived {
        let store = pgbookend_testkit::temp_dir("arch");
        let cfg = pgbookend_testkit::temp_dir("archcfg");
        let file = cfg.path().join("pgbookend.toml");
        std::fs::write(&file, config(store.path())).unwrap();
        let prefix = format!("{env} PGBOOKEND_CONFIG={}", file.display());
        let c = Cluster::start(
            ClusterOptions::new(major)
                .conf("archive_mode = on")
                .conf(format!(
                    "archive_command = '{prefix} {} archive-push {flags} %p'",
                    common::bin().display()
                ))
                // No checkpoint during the test: the segments marked .done stay in pg_wal.
                .conf("max_wal_size = 4GB")
                .conf("checkpoint_timeout = 1h"),
        );
        Archived {
            c,
            store,
            _cfg: cfg,
            prefix,
        }
    }

    fn local(major: u32) -> Archived {
        Self::start(
            major,
            |s| format!("archive_store = [\"{}\"]\n", s.display()),
            "",
        )
    }

    fn store(&self) -> String {
        self.store.path().display().to_string()
    }

    /// Switches to a new segment and waits until the server has archived the old one.
    fn switch_and_wait(&self) -> String {
        let seg = self.c.psql("SELECT pg_walfile_name(pg_switch_wal())");
        let done = wait_until(Duration::from_secs(60), || {
            self.c
                .psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
                .as_str()
                >= seg.as_str()
        });
        assert!(done, "{seg} not archived:\n{}", self.c.server_log());
        seg
    }

    fn failed_count(&self) -> u64 {
        self.c
            .psql("SELECT failed_count FROM pg_stat_archiver")
            .parse()
            .unwrap()
    }

    /// The segments PostgreSQL marked archived (`.done`), sorted.
    fn done(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.c.pgdata().join("pg_wal/archive_status"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".done").map(String::from))
            .filter(|n| n.len() == 24)
            .collect();
        v.sort();
        v
    }
}

/// A scratch "data directory" for archive-get: a copy of the cluster's pg_control, so
/// that the fetch knows the cluster, and a pg_wal to fetch into.
fn scratch_pgdata(c: &Cluster) -> TempDir {
    let d = pgbookend_testkit::temp_dir("get");
    std::fs::create_dir_all(d.path().join("global")).unwrap();
    std::fs::create_dir_all(d.path().join("pg_wal")).unwrap();
    std::fs::copy(
        c.pgdata().join("global/pg_control"),
        d.path().join("global/pg_control"),
    )
    .unwrap();
    d
}

/// Runs pgbookend with `cwd` as its working directory (as the server does).
fn run_in(cwd: &Path, args: &[&str]) -> Run {
    let r: Run = Command::new(common::bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("PGBOOKEND_CONFIG")
        .output()
        .unwrap()
        .into();
    common::schema::check_output(args, &r.stdout);
    r
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every archived object of the store, by file name.
fn objects(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![store.join("archive")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn object_of(store: &Path, name: &str) -> PathBuf {
    let prefix = format!("{name}-");
    objects(store)
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .unwrap_or_else(|| panic!("{name} is not in the store"))
}

/// Fetches every `.done` segment back and compares it with pg_wal.
fn all_done_restore_identically(a: &Archived, store: &str) {
    let scratch = scratch_pgdata(&a.c);
    let done = a.done();
    assert!(done.len() >= 2, "too few archived segments: {done:?}");
    for seg in &done {
        let r = run_in(
            scratch.path(),
            &["archive-get", seg, "pg_wal/RECOVERYXLOG", "--store", store],
        );
        assert_eq!(r.code, 0, "{seg}: {r:?}");
        let got = std::fs::read(scratch.path().join("pg_wal/RECOVERYXLOG")).unwrap();
        let orig = std::fs::read(a.c.pgdata().join("pg_wal").join(seg)).unwrap();
        assert!(got == orig, "{seg} differs after archive-get");
    }
}

/// pgbench with archive-push as archive_command: every `.done` segment is in the store
/// and byte-identical after archive-get; no failed attempt. Then the refusals on the
/// same cluster: the same segment again (success), other bytes under its name and
/// another cluster's segment (exit 6, store unchanged), hostile names and paths (exit
/// 2), a missing name (exit 1, no file) and a damaged object (exit 6, named).
fn push_under_load(major: u32) {
    let a = Archived::local(major);
    a.c.pgbench_init(1);
    a.c.pgbench_background(2, 10).wait().expect("pgbench");
    a.switch_and_wait();
    assert_eq!(a.failed_count(), 0, "{}", a.c.server_log());
    let store = a.store();
    all_done_restore_identically(&a, &store);

    let pgdata = a.c.pgdata();
    let seg = a.done()[0].clone();
    let rel = format!("pg_wal/{seg}");
    let obj = object_of(a.store.path(), &seg);
    let before = sha(&std::fs::read(&obj).unwrap());
    run_in(pgdata, &["archive-push", &rel, "--store", &store]).ok();
    // A second store that cannot be used: a failure, unless --min-stores 1 allows it.
    let broken_dir = pgbookend_testkit::temp_dir("broken");
    let broken = broken_dir.path().join("file");
    std::fs::write(&broken, b"not a store").unwrap();
    let b = broken.display().to_string();
    let two = ["archive-push", &rel, "--store", &store, "--store", &b];
    let r = run_in(pgdata, &two);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains(&b), "{r:?}");
    let r = run_in(
        pgdata,
        &[&two[..], &["--min-stores", "1", "--json"]].concat(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["already"][0].as_str(),
        Some(store.as_str()),
        "{r:?}"
    );
    assert!(r.stderr.contains("warning"), "{r:?}");

    // Other bytes under the same name: refused, naming both hashes.
    let orig = std::fs::read(pgdata.join(&rel)).unwrap();
    let fake = pgbookend_testkit::temp_dir("fake");
    std::fs::create_dir(fake.path().join("pg_wal")).unwrap();
    let mut other = orig.clone();
    other[20000] ^= 0xFF;
    std::fs::write(fake.path().join(&rel), &other).unwrap();
    let p = fake.path().join(&rel).display().to_string();
    let pd = pgdata.display().to_string();
    let r = run_in(
        pgdata,
        &["archive-push", &p, "--store", &store, "--pgdata", &pd],
    );
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains(&sha(&orig)) && r.stderr.contains(&sha(&other)),
        "{r:?}"
    );
    // Another cluster's segment (its header names another system identifier).
    let mut foreign = orig.clone();
    foreign[24] ^= 0x01;
    std::fs::write(fake.path().join(&rel), &foreign).unwrap();
    let r = run_in(
        pgdata,
        &["archive-push", &p, "--store", &store, "--pgdata", &pd],
    );
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("system identifier"), "{r:?}");
    assert_eq!(
        sha(&std::fs::read(&obj).unwrap()),
        before,
        "the object must not change"
    );
    assert_eq!(
        objects(a.store.path())
            .iter()
            .filter(|o| o.to_string_lossy().contains(&seg))
            .count(),
        1
    );

    // A history file pushed by hand as root: its new directory and object belong to the
    // store's owner (the server's archiver must still be able to write there).
    let hist = fake.path().join("pg_wal/0000000A.history");
    std::fs::write(&hist, b"1\t0/3000000\tno recovery target specified\n").unwrap();
    let h = hist.display().to_string();
    run_in(
        pgdata,
        &["archive-push", &h, "--store", &store, "--pgdata", &pd],
    )
    .ok();
    let obj_h = object_of(a.store.path(), "0000000A.history");
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(a.store.path()).unwrap().uid();
    assert_eq!(std::fs::metadata(&obj_h).unwrap().uid(), owner);
    assert_eq!(
        std::fs::metadata(obj_h.parent().unwrap()).unwrap().uid(),
        owner
    );

    // Hostile names and destinations.
    let scratch = scratch_pgdata(&a.c);
    let sp = scratch.path();
    // An absolute destination outside the data directory (this test's own, never /tmp's).
    let elsewhere = pgbookend_testkit::temp_dir("outside");
    let abs_outside = elsewhere.path().join("outside").display().to_string();
    for args in [
        vec!["archive-push", "../../etc/passwd"],
        vec!["archive-get", "../x", "pg_wal/RECOVERYXLOG"],
        vec!["archive-get", &seg, "../outside"],
        vec!["archive-get", &seg, "pg_wal/../../outside"],
        vec!["archive-get", &seg, &abs_outside],
    ] {
        let mut args = args.clone();
        args.extend(["--store", &store]);
        let r = run_in(sp, &args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
    }
    assert!(!Path::new(&abs_outside).exists());
    assert!(!sp.parent().unwrap().join("outside").exists());

    let r = run_in(
        sp,
        &[
            "archive-get",
            "0000000A.history",
            "pg_wal/RECOVERYHISTORY",
            "--store",
            &store,
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read(sp.join("pg_wal/RECOVERYHISTORY")).unwrap(),
        std::fs::read(&hist).unwrap()
    );
    std::fs::remove_file(sp.join("pg_wal/RECOVERYHISTORY")).unwrap();

    // Missing: exit 1, one line, nothing at %p.
    let r = run_in(
        sp,
        &[
            "archive-get",
            "0000000100000000000000FF",
            "pg_wal/RECOVERYXLOG",
            "--store",
            &store,
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.lines().count() <= 1, "{r:?}");
    assert!(!sp.join("pg_wal/RECOVERYXLOG").exists());

    // Damaged object: exit 6 naming it, nothing at %p.
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&obj, &bytes).unwrap();
    let r = run_in(
        sp,
        &[
            "archive-get",
            &seg,
            "pg_wal/RECOVERYXLOG",
            "--store",
            &store,
        ],
    );
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains(&obj.display().to_string()), "{r:?}");
    assert!(!sp.join("pg_wal/RECOVERYXLOG").exists());
    assert_eq!(
        std::fs::read_dir(sp.join("pg_wal")).unwrap().count(),
        0,
        "no temporary file left"
    );
}
per_major!(push_under_load_t, push_under_load);

/// Puts the store directory back on Drop (the test replaced it by a file).
struct Restore {
    dir: PathBuf,
    away: PathBuf,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.away.exists() {
            let _ = std::fs::remove_file(&self.dir);
            let _ = std::fs::rename(&self.away, &self.dir);
        }
    }
}

/// The store vanishes under load (its directory replaced by a file): archiving fails and
/// PostgreSQL retries; once it is back, the backlog drains and nothing is lost.
fn store_outage(major: u32) {
    let a = Archived::local(major);
    a.c.pgbench_init(1);
    a.switch_and_wait();
    let dir = a.store.path().to_path_buf();
    let away = PathBuf::from(format!("{}.away", dir.display()));
    let guard = Restore {
        dir: dir.clone(),
        away: away.clone(),
    };
    std::fs::rename(&dir, &away).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let bench = a.c.pgbench_background(2, 5);
    a.c.psql("CREATE TABLE outage AS SELECT 1 AS i; SELECT pg_switch_wal()");
    assert!(
        wait_until(Duration::from_secs(60), || a.failed_count() > 0),
        "archiving must fail while the store is gone"
    );
    bench.wait().expect("pgbench");
    drop(guard);
    assert!(dir.is_dir());
    let last = a.switch_and_wait();
    assert!(a.failed_count() > 0);
    let done = a.done();
    assert!(done.contains(&last), "{last} not marked archived: {done:?}");
    for seg in &done {
        object_of(&dir, seg);
    }
    assert!(a.c.server_log().contains("archive command failed"));
}
per_major!(store_outage_t, store_outage);

/// The asynchronous pusher of one spool directory: its pid from the pid file, and on
/// Drop (also when a test fails) it is killed if it still runs.
struct Pusher {
    spool: PathBuf,
}

impl Pusher {
    /// The spool of cluster `c` under the spool root `root`.
    fn of(root: &Path, c: &Cluster) -> Pusher {
        Pusher {
            spool: root.join(c.system_identifier().to_string()),
        }
    }

    /// The pid of a running (not zombie) pusher of this spool.
    fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.spool.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        cmdline
            .split(|b| *b == 0)
            .any(|a| a == b"__archive-pusher")
            .then_some(pid)
    }

    fn ready(&self) -> Vec<String> {
        std::fs::read_dir(self.spool.join("ready"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the spool is empty and the pusher has exited by itself.
    fn wait_drained(&self) {
        assert!(
            wait_until(Duration::from_secs(120), || self.ready().is_empty()),
            "the spool never drained: {:?}",
            self.ready()
        );
        assert!(
            wait_until(Duration::from_secs(60), || self.pid().is_none()),
            "the pusher did not exit when idle"
        );
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill of a pusher this test's server started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A cluster archiving with `archive-push --async --store <local>` into a spool root.
fn archived_async(major: u32, spool: &Path) -> Archived {
    let sp = spool.display().to_string();
    Archived::start_with(
        major,
        move |s| {
            format!(
                "archive_store = [\"{}\"]\narchive_spool = \"{sp}\"\n",
                s.display()
            )
        },
        "",
        "--async",
    )
}

/// pgbench (20 s: shorter than the 60 s, to keep the suite quick) with
/// `archive-push --async`: once the spool has drained, every `.done` segment is in the
/// store and byte-identical after archive-get, no attempt failed, and the pusher exits
/// by itself. Then a spool that would exceed --spool-max: refused, nothing written.
fn async_push_under_load(major: u32) {
    let root = pgbookend_testkit::temp_dir("spool");
    let a = archived_async(major, root.path());
    let pusher = Pusher::of(root.path(), &a.c);
    a.c.pgbench_init(1);
    a.c.pgbench_background(2, 20).wait().expect("pgbench");
    a.switch_and_wait();
    pusher.wait_drained();
    assert_eq!(a.failed_count(), 0, "{}", a.c.server_log());
    all_done_restore_identically(&a, &a.store());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&pusher.spool)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    // Spool full: a limit below one segment refuses the file and writes nothing.
    let scratch = scratch_pgdata(&a.c);
    let seg = a.done()[0].clone();
    let rel = format!("pg_wal/{seg}");
    std::fs::copy(a.c.pgdata().join(&rel), scratch.path().join(&rel)).unwrap();
    let tiny = pgbookend_testkit::temp_dir("tinyspool");
    let tiny_pusher = Pusher::of(tiny.path(), &a.c);
    let t = tiny.path().display().to_string();
    let store = a.store();
    let args = [
        "archive-push",
        "--async",
        "--spool",
        &t,
        "--spool-max",
        "1000",
        "--store",
        &store,
        &rel,
    ];
    let r = run_in(scratch.path(), &args);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("spool full"), "{r:?}");
    assert!(tiny_pusher.ready().is_empty());
    // Another cluster's segment is refused before it is acknowledged (exit 6), as in sync.
    let mut foreign = std::fs::read(scratch.path().join(&rel)).unwrap();
    foreign[24] ^= 0x01;
    let frel = "pg_wal/0000000100000000000000F0";
    std::fs::write(scratch.path().join(frel), &foreign).unwrap();
    let r = run_in(scratch.path(), &[&args[..4], &args[6..8], &[frel]].concat());
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("system identifier"), "{r:?}");
    assert!(tiny_pusher.ready().is_empty());
    // Within the limit: spooled (--json, checked against the schema), then pushed.
    let r = run_in(
        scratch.path(),
        &[&args[..4], &args[6..], &["--json"]].concat(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["already_pushed"], false, "{r:?}");
    tiny_pusher.wait_drained();
}
per_major!(async_push_under_load_t, async_push_under_load);

/// Sets every directory of a tree to `mode` (the store made read-only and back).
fn chmod_dirs(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            chmod_dirs(&e.path(), mode);
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Makes a store writable again on Drop.
struct Writable(PathBuf);

impl Drop for Writable {
    fn drop(&mut self) {
        chmod_dirs(&self.0, 0o755);
    }
}

/// The store made read-only (every directory 0555; the server runs as its own user, so
/// the mode binds archive-push and its pusher) under load with `--async`: archive-push
/// starts failing, and after the mode is restored the spool drains and every `.done`
/// segment is in the store, byte-identical.
fn async_store_outage(major: u32) {
    let root = pgbookend_testkit::temp_dir("spool");
    let a = archived_async(major, root.path());
    let pusher = Pusher::of(root.path(), &a.c);
    a.c.pgbench_init(1);
    a.switch_and_wait();
    let dir = a.store.path().to_path_buf();
    chmod_dirs(&dir, 0o555);
    let guard = Writable(dir.clone());
    let bench = a.c.pgbench_background(2, 5);
    // Segments are acknowledged from the spool until the pusher has met the read-only
    // store and recorded it; a segment after that fails. Switch until one does.
    a.c.psql("CREATE TABLE outage AS SELECT 1 AS i; SELECT pg_switch_wal()");
    assert!(
        wait_until(Duration::from_secs(60), || {
            a.c.psql("INSERT INTO outage VALUES (2); SELECT pg_switch_wal()");
            std::thread::sleep(Duration::from_millis(500));
            a.failed_count() > 0
        }),
        "archiving must fail while the store is read-only: spool {:?}, error {:?}\n{}",
        pusher.ready(),
        std::fs::read_to_string(pusher.spool.join("error")),
        a.c.server_log()
    );
    bench.wait().expect("pgbench");
    assert!(pusher.spool.join("error").exists());
    drop(guard);
    // The pusher retries with a back-off; once it has stored the spool, the server's next
    // attempt (woken by the switch) succeeds.
    assert!(
        wait_until(Duration::from_secs(60), || !pusher
            .spool
            .join("error")
            .exists()),
        "the pusher did not recover: {:?}",
        std::fs::read_to_string(pusher.spool.join("error"))
    );
    let last = a.switch_and_wait();
    pusher.wait_drained();
    assert!(!pusher.spool.join("error").exists());
    let done = a.done();
    assert!(done.contains(&last), "{last} not marked archived: {done:?}");
    all_done_restore_identically(&a, &a.store());
    assert!(a.c.server_log().contains("archive command failed"));
}
per_major!(async_store_outage_t, async_store_outage);

/// A backup restored with prepare and `restore_command = pgbookend archive-get %f %p`
/// replays the archive to its end: rows written after the backup come back.
fn recovery_through_archive_get(major: u32) {
    let a = Archived::local(major);
    a.c.psql("CREATE TABLE rows (t text)");
    let tool = Tool::new(&a.c);
    // --wal none: the bundle holds no WAL, so prepare must reach the window's WAL through
    // archive-get itself (its test run works as the server will run it: in a data
    // directory, %p relative).
    tool.start("arch", &["--wal", "none"]).ok();
    let work = pgbookend_testkit::temp_dir("copy");
    let data = work.path().join("data");
    let ok = common::cp_live(a.c.pgdata(), &data).unwrap();
    assert!(ok.success());
    a.c.psql("INSERT INTO rows VALUES ('during')");
    tool.stop("arch", &[]).ok();
    a.c.psql("INSERT INTO rows VALUES ('after')");
    a.c.pgbench_init(1);
    a.switch_and_wait();
    // With prefetch: the first segment comes straight from the store, the next ones from
    // the spool the background worker fills; the spool is gone once recovery has ended.
    let cmd = format!(
        "{} {} archive-get %f %p --prefetch 4",
        a.prefix,
        common::bin().display()
    );
    let d = data.display().to_string();
    let s = tool.store_path().display().to_string();
    tool.run(&[
        "prepare",
        "--pgdata",
        &d,
        "--store",
        &s,
        "--restore-command",
        &cmd,
        "--target",
        "latest",
    ])
    .ok();
    let r = common::start_restored(major, &data, work.path());
    assert_eq!(
        r.psql("SELECT string_agg(t, ',' ORDER BY t) FROM rows"),
        "after,during"
    );
    assert!(r.pgbench_invariant_ok());
    assert!(
        r.server_log().contains("restored log file"),
        "{}",
        r.server_log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || !data
            .join("pg_wal/pgbookend-prefetch")
            .exists()
            && workers_of(&data).is_empty()),
        "the prefetch spool or its worker outlived recovery: {:?} {:?}\n{}",
        std::fs::read_dir(data.join("pg_wal/pgbookend-prefetch"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
        workers_of(&data),
        r.server_log()
    );
}
per_major!(recovery_through_archive_get_t, recovery_through_archive_get);

/// What a failed prefetch wait shows: the spool's entries and each worker's threads
/// (state and kernel wait channel).
fn spool_state(spool: &Path, pgdata: &Path) -> String {
    let mut out = format!(
        "spool {:?}",
        std::fs::read_dir(spool)
            .map(|d| d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>())
            .unwrap_or_default()
    );
    for pid in workers_of(pgdata) {
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            out.push_str(&format!("\nworker {pid}: {} wchan {wchan}", stat.trim()));
        }
    }
    out
}

/// The pids of prefetch workers that run in `pgdata` (their working directory).
fn workers_of(pgdata: &Path) -> Vec<i32> {
    common::processes(|cmdline, cwd| {
        cmdline
            .split(|b| *b == 0)
            .any(|a| a == b"__archive-prefetch")
            && cwd.starts_with(pgdata)
    })
}

/// archive-get with --prefetch: the segments after the one asked for are fetched into
/// pg_wal/pgbookend-prefetch in the background and the next call takes its segment from
/// there (byte-identical); hostile spool entries (a link to a file outside, a short file,
/// a hard link to a whole segment's worth of wrong bytes) are never followed or used, the
/// segment comes from the store instead; a history file or a segment the archive lacks
/// ends the prefetch and removes the spool and its worker.
fn prefetch_spool(major: u32) {
    let a = Archived::local(major);
    a.c.psql("CREATE TABLE t (i int)");
    for i in 0..6 {
        a.c.psql(&format!(
            "INSERT INTO t SELECT generate_series(1, 1000 * {i})"
        ));
        a.switch_and_wait();
    }
    let done = a.done();
    assert!(done.len() >= 6, "{done:?}");
    let scratch = scratch_pgdata(&a.c);
    let spool = scratch.path().join("pg_wal/pgbookend-prefetch");
    std::fs::create_dir(&spool).unwrap();
    let victim = pgbookend_testkit::temp_dir("victim");
    let target = victim.path().join("precious");
    std::fs::write(&target, "keep me").unwrap();
    let fake = "0".repeat(64);
    std::os::unix::fs::symlink(&target, spool.join(format!("{}-{fake}", done[2]))).unwrap();
    std::fs::write(spool.join(format!("{}-{fake}", done[3])), "short").unwrap();
    // A hard link to a file outside the spool with a whole segment's size and wrong bytes.
    let seg_len = std::fs::metadata(a.c.pgdata().join("pg_wal").join(&done[5]))
        .unwrap()
        .len();
    let decoy = scratch.path().join("decoy");
    std::fs::write(&decoy, vec![0x5a; seg_len as usize]).unwrap();
    std::fs::hard_link(&decoy, spool.join(format!("{}-{fake}", done[5]))).unwrap();
    let store = a.store();
    let get = |seg: &str| {
        let r = run_in(
            scratch.path(),
            &[
                "--json",
                "archive-get",
                seg,
                "pg_wal/RECOVERYXLOG",
                "--store",
                &store,
                "--prefetch",
                "3",
                "--jobs",
                "2",
            ],
        );
        assert_eq!(r.code, 0, "{seg}: {r:?}");
        let got = std::fs::read(scratch.path().join("pg_wal/RECOVERYXLOG")).unwrap();
        let orig = std::fs::read(a.c.pgdata().join("pg_wal").join(seg)).unwrap();
        assert!(got == orig, "{seg} differs after archive-get");
        r.json()["prefetched"].as_bool().unwrap()
    };
    let spooled = |seg: &str| {
        std::fs::read_dir(&spool)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.starts_with(&format!("{seg}-")) && !n.ends_with(&fake)
            })
    };
    // archive-get of a name the archive does not have (exit 1).
    let miss = |name: &str, dest: &str| {
        let args = [
            "archive-get",
            name,
            dest,
            "--store",
            &store,
            "--prefetch",
            "3",
        ];
        let r = run_in(scratch.path(), &args);
        assert_eq!(r.code, 1, "{name}: {r:?}");
    };
    let spool_gone = || {
        wait_until(Duration::from_secs(30), || {
            !spool.exists() && workers_of(scratch.path()).is_empty()
        })
    };
    assert!(!get(&done[0]), "nothing was spooled yet");
    assert!(
        wait_until(Duration::from_secs(30), || spooled(&done[1])),
        "the worker did not fetch {}",
        done[1]
    );
    assert!(get(&done[1]), "{} should come from the spool", done[1]);
    assert!(
        wait_until(Duration::from_secs(30), || spooled(&done[4])),
        "the worker did not fetch {}",
        done[4]
    );
    assert!(!get(&done[2]), "a link in the spool must not be used");
    assert!(!get(&done[3]), "a short file in the spool must not be used");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(get(&done[4]), "{} should come from the spool", done[4]);
    assert!(!get(&done[5]), "a hard link in the spool must not be used");
    assert_eq!(std::fs::read(&decoy).unwrap(), vec![0x5a; seg_len as usize]);
    // Recovery that ends at a target asks for no missing segment, only for a free
    // timeline's history file: that removes a spool still holding segments.
    assert!(!get(&done[0]));
    assert!(
        wait_until(Duration::from_secs(30), || spooled(&done[3])
            && workers_of(scratch.path()).is_empty()),
        "the worker did not fetch {} and exit: {}",
        done[3],
        spool_state(&spool, scratch.path())
    );
    // The server probes a newer timeline first for each segment (a history names one):
    // that miss is not the end of the archive and keeps the spool.
    let newer = format!("0000000E{}", &done[1][8..]);
    miss(&newer, "pg_wal/RECOVERYXLOG");
    assert!(get(&done[1]), "a newer timeline's miss emptied the spool");
    assert!(
        wait_until(Duration::from_secs(30), || spooled(&done[2])),
        "the worker did not fetch {}",
        done[2]
    );
    miss("0000000F.history", "pg_wal/RECOVERYHISTORY");
    assert!(
        spool_gone(),
        "the spool or its worker is left after a missing history file"
    );
    miss("00000001000000FF000000FE", "pg_wal/RECOVERYXLOG");
    assert!(
        spool_gone(),
        "the spool or its worker is left after the end of the archive"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
}
per_major!(prefetch_spool_t, prefetch_spool);

const KEY_ID: &str = "AKIAPGBOOKENDARCHIVE1";
const SECRET: &str = "pgbookend/Archive+Secret/0123456789";
const BUCKET: &str = "pgbookend-archive";

/// The archive_command's environment for the test S3 server at `endpoint`.
fn aws_env(endpoint: &str) -> String {
    format!("AWS_ACCESS_KEY_ID={KEY_ID} AWS_SECRET_ACCESS_KEY={SECRET} AWS_REGION=us-east-1 AWS_ENDPOINT_URL={endpoint} AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent")
}

/// `archive-get SEG pg_wal/RECOVERYXLOG` from S3 alone, run in `scratch`, with the test
/// credentials in the environment and no config file.
fn get_from_s3(scratch: &Path, seg: &str, url: &str, endpoint: &str) -> Run {
    Command::new(common::bin())
        .args(["archive-get", seg, "pg_wal/RECOVERYXLOG", "--store", url])
        .current_dir(scratch)
        .env_remove("PGBOOKEND_CONFIG")
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .output()
        .unwrap()
        .into()
}

/// archive_command with a local and an S3 store: every `.done` segment comes back
/// byte-identical from the S3 store alone. One major (the S3 path does not depend on it).
#[test]
fn push_to_s3() {
    let Some(major) = newest_major() else { return };
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let env = aws_env(&s3.endpoint());
    let url = format!("s3://{BUCKET}/wal");
    let a = Archived::start(
        major,
        |s| format!("archive_store = [\"{}\", \"{url}\"]\n", s.display()),
        &env,
    );
    a.c.pgbench_init(1);
    a.c.pgbench_background(2, 5).wait().expect("pgbench");
    a.switch_and_wait();
    assert_eq!(a.failed_count(), 0, "{}", a.c.server_log());
    let keys = s3.keys(BUCKET, "wal/archive/");
    for seg in a.done() {
        assert!(
            keys.iter().any(|k| k.contains(&format!("{seg}-"))),
            "{seg} not in S3: {keys:?}"
        );
    }
    // archive-get from S3 only, with the credentials in the environment.
    let scratch = scratch_pgdata(&a.c);
    let done = a.done();
    for seg in done.iter().take(3) {
        let r = get_from_s3(scratch.path(), seg, &url, &s3.endpoint());
        assert_eq!(r.code, 0, "{r:?}");
        let got = std::fs::read(scratch.path().join("pg_wal/RECOVERYXLOG")).unwrap();
        let orig = std::fs::read(a.c.pgdata().join("pg_wal").join(seg)).unwrap();
        assert!(got == orig, "{seg} differs after archive-get from S3");
        assert!(!r.all().contains(SECRET));
    }
}

/// `archive-push --async` into an S3 store that goes away for about 7 s under pgbench: the
/// server is never told of a failure (the spool acknowledges), segments wait in the spool
/// while the store is down, and once it is back the pusher catches up: every `.done`
/// segment is in S3 and comes back byte-identical from it. One major (the S3 path does
/// not depend on it).
#[test]
fn async_push_to_s3_with_outage() {
    let Some(major) = newest_major() else { return };
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let gate = pgbookend_testkit::Gate::open(s3.port());
    let env = aws_env(&gate.endpoint());
    let url = format!("s3://{BUCKET}/async");
    let root = pgbookend_testkit::temp_dir("s3spool");
    let sp = root.path().display().to_string();
    let a = Archived::start_with(
        major,
        |_| format!("archive_store = [\"{url}\"]\narchive_spool = \"{sp}\"\n"),
        &env,
        "--async",
    );
    let pusher = Pusher::of(root.path(), &a.c);
    a.c.pgbench_init(1);
    let load = a.c.pgbench_background(2, 15);
    std::thread::sleep(Duration::from_secs(3));
    let down_at = a.c.psql("SELECT now()");
    gate.down();
    // While the store is down a switched segment is acknowledged and stays in the spool.
    let seg = a.switch_and_wait();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        pusher.ready().iter().any(|r| r.starts_with(&seg)),
        "{seg} left the spool while the store was down: {:?}",
        pusher.ready()
    );
    assert!(!s3
        .keys(BUCKET, "async/archive/")
        .iter()
        .any(|k| k.contains(&format!("{seg}-"))));
    std::thread::sleep(Duration::from_secs(4));
    gate.up();
    load.wait().expect("pgbench");
    a.switch_and_wait();
    pusher.wait_drained();
    // Once the pusher has recorded the outage, calls fail and PostgreSQL retries (the
    // issue allows failures while a store is down): none before the outage, and the
    // last success after the last failure.
    let verdict = a.c.psql(&format!(
        "SELECT coalesce(last_failed_time >= '{down_at}', true) \
                AND coalesce(last_archived_time > last_failed_time, true) FROM pg_stat_archiver"
    ));
    assert_eq!(verdict, "t", "{}", a.c.server_log());
    let keys = s3.keys(BUCKET, "async/archive/");
    let scratch = scratch_pgdata(&a.c);
    for seg in a.done() {
        assert!(
            keys.iter().any(|k| k.contains(&format!("{seg}-"))),
            "{seg} not in S3: {keys:?}"
        );
        let r = get_from_s3(scratch.path(), &seg, &url, &s3.endpoint());
        assert_eq!(r.code, 0, "{r:?}");
        let got = std::fs::read(scratch.path().join("pg_wal/RECOVERYXLOG")).unwrap();
        let orig = std::fs::read(a.c.pgdata().join("pg_wal").join(&seg)).unwrap();
        assert!(got == orig, "{seg} differs after archive-get from S3");
    }
}

/// `--wal archive` without `--archive DIR`: the window's WAL goes to the pgbookend archive
/// in the backup's own store. The server's archiver is stuck (`archive_command = false`),
/// so `stop` pushes the window's segments itself; `bundle.json` names the store archive;
/// prepare (no --archive, no --restore-command) sets `restore_command` to archive-get and
/// the copy recovers through it.
fn wal_archive_in_store(major: u32) {
    let c = Cluster::start(
        ClusterOptions::new(major)
            .conf("archive_mode = on")
            .conf("archive_command = 'false'"),
    );
    c.psql("CREATE TABLE rows (t text)");
    let tool = Tool::new(&c);
    let store = tool.store_path().display().to_string();
    tool.run(&[
        "start", "--id", "sa", "--store", &store, "--wal", "archive", "--json",
    ])
    .ok();
    let work = pgbookend_testkit::temp_dir("copy");
    let data = work.path().join("data");
    assert!(common::cp_live(c.pgdata(), &data).unwrap().success());
    c.psql("INSERT INTO rows VALUES ('during')");
    tool.run(&["stop", "--id", "sa", "--json", "--archive-timeout", "60s"])
        .ok();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tool.bundle_dir("sa").join("bundle.json")).unwrap())
            .unwrap();
    assert_eq!(m["archive_stores"], serde_json::json!([store]), "{m}");
    // The archive beside the bundles is not a bundle: list shows only "sa", and expire of
    // partial bundles can never take the archive (nor can a backup be called "archive").
    let list = tool.run(&["list", "--store", &store, "--json"]).ok().json();
    let ids: Vec<&str> = list["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sa"], "{list}");
    let named = tool.run(&["start", "--id", "archive", "--store", &store]);
    assert_eq!(named.code, 2, "{named:?}");
    let wal = m["wal"].as_array().unwrap();
    assert!(!wal.is_empty());
    let sysid = c.system_identifier();
    for w in wal {
        let name = w["name"].as_str().unwrap();
        let sha = w["sha256"].as_str().unwrap();
        let obj = format!("archive/{sysid}/{}/{name}-{sha}.zst", &name[..16]);
        assert!(
            tool.store_path().join(&obj).is_file(),
            "{obj} not in the store"
        );
    }
    // The backup history file was pushed too (the server wrote it, never archived it).
    let hist = std::fs::read_dir(tool.store_path().join(format!(
        "archive/{sysid}/{}",
        &wal[0]["name"].as_str().unwrap()[..16]
    )))
    .unwrap()
    .filter_map(|e| e.ok())
    .any(|e| e.file_name().to_string_lossy().contains(".backup-"));
    assert!(hist, "no backup history file in the store archive");
    // The server never archived anything itself.
    assert_eq!(c.psql("SELECT archived_count FROM pg_stat_archiver"), "0");
    // Once the archiver works, its own push of the files stop pushed is no conflict.
    let cfg = pgbookend_testkit::temp_dir("sacfg");
    let file = cfg.path().join("pgbookend.toml");
    std::fs::write(&file, format!("store = [\"{store}\"]\n")).unwrap();
    let cmd = format!(
        "PGBOOKEND_CONFIG={} {} archive-push %p",
        file.display(),
        common::bin().display()
    );
    c.psql(&format!("ALTER SYSTEM SET archive_command = '{cmd}'"));
    c.psql("SELECT pg_reload_conf()");
    let stop_seg = m["stop_wal_file"].as_str().unwrap().to_string();
    let caught_up = wait_until(Duration::from_secs(60), || {
        c.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            .as_str()
            >= stop_seg.as_str()
    });
    assert!(caught_up, "{}", c.server_log());
    assert!(
        !c.server_log().contains("different content"),
        "{}",
        c.server_log()
    );
    c.stop();
    let d = data.display().to_string();
    // No --target: the restore_command comes from the bundle's archive_stores (with a
    // target, tests/pitr.rs covers the store's archive picked by the target).
    tool.run(&["prepare", "--pgdata", &d, "--store", &store])
        .ok();
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("archive-get %f %p --store"), "{auto}");
    let r = common::start_restored(major, &data, work.path());
    assert_eq!(r.psql("SELECT string_agg(t, ',') FROM rows"), "during");
    assert!(
        r.server_log().contains("restored log file"),
        "{}",
        r.server_log()
    );
}
per_major!(wal_archive_in_store_t, wal_archive_in_store);
