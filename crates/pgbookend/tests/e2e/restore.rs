//! End-to-end tests of `prepare`, `verify` and `guard`: copies taken with real tools while
//! pgbench writes, restored elsewhere, prepared, and started, on every major (data
//! checksums on, a tablespace).

use crate::common::tree::digest;
use crate::common::{self, start_restored, Run, Tool};
use crate::runkit::amcheck_clean;
use pgbookend_testkit::{Cluster, ClusterOptions, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A backup of a loaded cluster with a tablespace, and copies of PGDATA and the
/// tablespace taken during its window.
struct Fixture {
    c: Cluster,
    tool: Tool,
    ts_oid: u32,
    /// Restored copies live here (removed on drop).
    work: TempDir,
}

impl Fixture {
    /// Starts a cluster (checksums, tablespace, archive), loads pgbench, starts a backup
    /// with `start_args`, runs `during` while pgbench writes, commits a row, stops.
    fn new(major: u32, id: &str, start_args: &[&str], during: impl FnOnce(&Fixture)) -> Fixture {
        let (c, ts_oid) = common::tablespace_cluster(major);
        c.psql("CREATE TABLE rows (t text)");
        let tool = Tool::new(&c);
        let work = pgbookend_testkit::temp_dir("restore");
        let f = Fixture {
            c,
            tool,
            ts_oid,
            work,
        };
        f.tool.start(id, start_args).ok();
        let bench = f.c.pgbench_background(2, 3);
        during(&f);
        bench.wait().expect("pgbench");
        f.c.psql("INSERT INTO rows VALUES ('committed before stop')");
        f.tool.stop(id, &[]).ok();
        f
    }

    /// A backup with `cp -a` copies of PGDATA and the tablespace taken in its window.
    fn with_copy(major: u32, id: &str, start_args: &[&str]) -> (Fixture, PathBuf, PathBuf) {
        let mut copy = None;
        let f = Fixture::new(major, id, start_args, |f| copy = Some(f.cp_copy("a")));
        let (data, ts) = copy.expect("copied during the window");
        (f, data, ts)
    }

    fn store(&self) -> String {
        self.tool.store_path().display().to_string()
    }

    /// Copies PGDATA and the tablespace with `cp -a` (during the window).
    fn cp_copy(&self, name: &str) -> (PathBuf, PathBuf) {
        let data = self.work.path().join(name).join("data");
        let ts = self.work.path().join(name).join("ts");
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        let ok = |s: std::process::ExitStatus| assert!(s.success());
        ok(common::cp_live(self.c.pgdata(), &data).unwrap());
        ok(common::cp_live(self.c.tablespace_dir().unwrap(), &ts).unwrap());
        (data, ts)
    }

    fn prepare(&self, data: &Path, extra: &[&str]) -> Run {
        let d = data.display().to_string();
        let store = self.store();
        let mut args = vec!["prepare", "--pgdata", &d, "--store", &store];
        args.extend_from_slice(extra);
        self.tool.run(&args)
    }

    fn ts_arg(&self, ts: &Path) -> String {
        format!("{}={}", self.ts_oid, ts.display())
    }
}

/// rsync of `src/` into `dest` (created) under load: exit 24 (files vanished during the
/// copy) is expected.
fn rsync_copy(flags: &str, src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let out = Command::new("rsync")
        .arg(flags)
        .arg(format!("{}/", src.display()))
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 24)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The data checks of a restored cluster.
fn restored_is_right(r: &Cluster) {
    assert!(r.pgbench_invariant_ok(), "pgbench's invariant must hold");
    assert_eq!(r.psql("SELECT t FROM rows"), "committed before stop");
    assert_eq!(r.psql("SELECT count(*) FROM in_ts"), "5000");
    amcheck_clean(r);
    r.psql("INSERT INTO rows VALUES ('written after restore')");
    assert_eq!(
        r.psql("SELECT count(*) FROM rows"),
        "2",
        "the server accepts writes"
    );
}

/// tar and rsync copies taken while pgbench writes, restored to new places (the
/// tablespace too), prepared, started: consistent, complete, writable.
fn tar_and_rsync_restore(major: u32) {
    let f = Fixture::new(major, "full", &[], |f| {
        let dest = f.work.path().join("tar");
        std::fs::create_dir_all(&dest).unwrap();
        for (name, dir) in [
            ("data.tar", f.c.pgdata().to_path_buf()),
            ("ts.tar", f.c.tablespace_dir().unwrap()),
        ] {
            let out = Command::new("tar")
                .arg("-cf")
                .arg(dest.join(name))
                .arg("-C")
                .arg(&dir)
                .arg(".")
                .output()
                .unwrap();
            assert!(
                out.status.code().unwrap_or(2) <= 1,
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rs = f.work.path().join("rsync");
        for (src, d) in [
            (f.c.pgdata().to_path_buf(), rs.join("data")),
            (f.c.tablespace_dir().unwrap(), rs.join("ts")),
        ] {
            rsync_copy("-a", &src, &d);
        }
    });
    // tar: restore into new directories.
    let t = f.work.path().join("tar");
    for (name, d) in [("data.tar", t.join("data")), ("ts.tar", t.join("ts"))] {
        std::fs::create_dir_all(&d).unwrap();
        assert!(Command::new("tar")
            .arg("-xf")
            .arg(t.join(name))
            .arg("-C")
            .arg(&d)
            .status()
            .unwrap()
            .success());
    }
    for (data, ts) in [
        (t.join("data"), t.join("ts")),
        (
            f.work.path().join("rsync/data"),
            f.work.path().join("rsync/ts"),
        ),
    ] {
        let r = f.prepare(&data, &["--tablespace", &f.ts_arg(&ts)]).ok();
        assert!(r.stdout.contains("start the server with"), "{r:?}");
        let link = std::fs::read_link(data.join("pg_tblspc").join(f.ts_oid.to_string())).unwrap();
        assert_eq!(link, ts);
        let map = std::fs::read_to_string(data.join("tablespace_map")).unwrap();
        assert!(map.contains(&ts.display().to_string()), "{map}");
        let restored = start_restored(major, &data, data.parent().unwrap());
        restored_is_right(&restored);
        drop(restored);
    }
}
per_major!(tar_and_rsync_restore_t, tar_and_rsync_restore);

/// Runs prepare on a copy expecting a refusal, and checks nothing changed.
fn refused(f: &Fixture, data: &Path, extra: &[&str], needle: &str) -> Run {
    let before = digest(data);
    let r = f.prepare(data, extra);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.all().contains(needle), "expected {needle:?} in {r:?}");
    assert!(r.all().contains("nothing was changed"), "{r:?}");
    assert_eq!(
        digest(data),
        before,
        "prepare must not change a refused directory"
    );
    r
}

fn refuse_other_cluster(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "same-id", &[]);
    // Another cluster's bundle with the same backup ID.
    let other = Cluster::start(ClusterOptions::new(major));
    let otool = Tool::new(&other);
    otool.start("same-id", &[]).ok();
    otool.stop("same-id", &[]).ok();
    let before = digest(&data);
    let d = data.display().to_string();
    let b = otool.bundle_dir("same-id").display().to_string();
    let ts_arg = f.ts_arg(&ts);
    let r = f.tool.run(&[
        "prepare",
        "--pgdata",
        &d,
        "--bundle",
        &b,
        "--tablespace",
        &ts_arg,
    ]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.all().contains("cluster"), "{r:?}");
    assert_eq!(digest(&data), before);
}
per_major!(refuse_other_cluster_t, refuse_other_cluster);

fn refuse_no_marker(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "nomark", &[]);
    std::fs::remove_dir_all(data.join("pg_backup_metadata")).unwrap();
    refused(
        &f,
        &data,
        &["--tablespace", &f.ts_arg(&ts)],
        "no pgbookend marker",
    );
    refused(
        &f,
        &data,
        &["--id", "nomark", "--tablespace", &f.ts_arg(&ts)],
        "no marker of backup nomark",
    );
}
per_major!(refuse_no_marker_t, refuse_no_marker);

fn refuse_copy_before_start(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "early", &[]);
    // Make the copy's pg_control look like one from before the backup started: an older
    // checkpoint, with a valid CRC.
    let mut ctl = std::fs::read(data.join("global/pg_control")).unwrap();
    let parsed = pgbookend_formats::control::parse(&ctl).unwrap();
    let old =
        pgbookend_formats::lsn::Lsn(parsed.checkpoint.0.saturating_sub(1 << 20).max(0x100_0000));
    ctl[32..40].copy_from_slice(&old.0.to_le_bytes());
    let crc_off = if major >= 18 { 292 } else { 288 };
    let crc = pgbookend_formats::crc32c::crc32c(&ctl[..crc_off]);
    ctl[crc_off..crc_off + 4].copy_from_slice(&crc.to_le_bytes());
    assert!(pgbookend_formats::control::parse(&ctl).is_ok());
    std::fs::write(data.join("global/pg_control"), &ctl).unwrap();
    refused(
        &f,
        &data,
        &["--tablespace", &f.ts_arg(&ts)],
        "taken before the backup started",
    );
}
per_major!(refuse_copy_before_start_t, refuse_copy_before_start);

fn refuse_missing_file(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "missing", &[]);
    let rel = f.c.psql("SELECT pg_relation_filepath('pgbench_accounts')");
    std::fs::remove_file(data.join(&rel)).unwrap();
    let r = refused(
        &f,
        &data,
        &["--tablespace", &f.ts_arg(&ts)],
        "lacks 1 of the",
    );
    assert!(r.all().contains(&rel), "names the file: {r:?}");
}
per_major!(refuse_missing_file_t, refuse_missing_file);

fn refuse_wal_unreachable(major: u32) {
    let mut copy = None;
    let f = Fixture::new(major, "nowal", &["--wal", "none"], |f| {
        copy = Some(f.cp_copy("a"))
    });
    let (data, ts) = copy.unwrap();
    refused(
        &f,
        &data,
        &["--tablespace", &f.ts_arg(&ts)],
        "does not hold the WAL",
    );
    let empty = pgbookend_testkit::temp_dir("emptyarchive");
    let e = empty.path().display().to_string();
    refused(
        &f,
        &data,
        &["--tablespace", &f.ts_arg(&ts), "--archive", &e],
        "is not in",
    );
    // With the real archive it is reachable, and the copy starts.
    let archive = f.c.archive_dir().unwrap().display().to_string();
    f.c.psql("SELECT pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(1));
    f.prepare(
        &data,
        &[
            "--tablespace",
            &f.ts_arg(&ts),
            "--archive",
            &archive,
            "--target",
            "immediate",
        ],
    )
    .ok();
    let r = start_restored(major, &data, data.parent().unwrap());
    restored_is_right(&r);
}
per_major!(refuse_wal_unreachable_t, refuse_wal_unreachable);

fn refuse_running(major: u32) {
    let f = Fixture::new(major, "live", &[], |_| {});
    // The live primary itself (it has no marker now; give it one to get past identification).
    let before_pid = f.c.postmaster_pid();
    let r = f.prepare(f.c.pgdata(), &["--id", "live"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.all().contains("running server"), "{r:?}");
    assert_eq!(f.c.postmaster_pid(), before_pid);
    assert_eq!(f.c.psql("SELECT 1"), "1");
}
per_major!(refuse_running_t, refuse_running);

/// A torn pg_control in the copy does not matter: the bundle's is installed.
fn torn_control(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "torn", &[]);
    let p = data.join("global/pg_control");
    let mut b = std::fs::read(&p).unwrap();
    for x in b.iter_mut().take(200).skip(20) {
        *x ^= 0x5a;
    }
    std::fs::write(&p, &b).unwrap();
    let r = f.prepare(&data, &["--tablespace", &f.ts_arg(&ts)]).ok();
    assert!(r.stdout.contains("torn or damaged"), "{r:?}");
    let restored = start_restored(major, &data, data.parent().unwrap());
    restored_is_right(&restored);
}
per_major!(torn_control_t, torn_control);

/// After prepare, removing backup_label makes the server refuse to start.
fn label_removed_refuses_start(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "nolabel", &[]);
    f.prepare(&data, &["--tablespace", &f.ts_arg(&ts)]).ok();
    std::fs::remove_file(data.join("backup_label")).unwrap();
    let r = Cluster::from_existing(major, data.clone(), data.parent().unwrap().to_path_buf());
    let res = r.start_again();
    assert!(
        res.is_err(),
        "the server must refuse to start without backup_label"
    );
    let log = r.server_log();
    assert!(
        log.contains("could not locate a valid checkpoint record"),
        "{log}"
    );
}
per_major!(label_removed_t, label_removed_refuses_start);

/// guard: refuses an unprepared copy, accepts the live primary during a backup and the
/// prepared copy.
fn guard_verdicts(major: u32) {
    let mut copy = None;
    let mut live_ok = None;
    let f = Fixture::new(major, "guarded", &[], |f| {
        copy = Some(f.cp_copy("a"));
        let p = f.c.pgdata().display().to_string();
        live_ok = Some(f.tool.run(&["guard", "--pgdata", &p]));
    });
    let live_ok = live_ok.unwrap();
    assert_eq!(
        live_ok.code, 0,
        "the live primary during a backup: {live_ok:?}"
    );
    assert!(live_ok.stdout.contains("in progress"), "{live_ok:?}");
    let (data, ts) = copy.unwrap();
    let d = data.display().to_string();
    let r = f.tool.run(&["guard", "--pgdata", &d]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains("never prepared") && r.stderr.contains("pgbookend prepare"),
        "{r:?}"
    );
    f.prepare(&data, &["--tablespace", &f.ts_arg(&ts)]).ok();
    f.tool.run(&["guard", "--pgdata", &d]).ok();
    let p = f.c.pgdata().display().to_string();
    f.tool.run(&["guard", "--pgdata", &p]).ok();
}
per_major!(guard_verdicts_t, guard_verdicts);

/// A primary whose agent was killed: guard removes the stale marker and lets it start.
fn guard_stale_primary(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let started = tool.start("dead", &[]).ok().json();
    // SAFETY: kill of the agent this test started.
    unsafe { libc::kill(started["agent_pid"].as_i64().unwrap() as i32, libc::SIGKILL) };
    assert!(common::wait_until(Duration::from_secs(10), || {
        !common::is_our_agent(started["agent_pid"].as_i64().unwrap() as i32)
    }));
    c.stop();
    assert!(c.pgdata().join("pg_backup_metadata/dead").exists());
    let p = c.pgdata().display().to_string();
    let r = tool.run(&["guard", "--pgdata", &p]).ok();
    assert!(r.stdout.contains("stale marker"), "{r:?}");
    assert!(!c.pgdata().join("pg_backup_metadata").exists());
    c.start_again().unwrap();
}
per_major!(guard_stale_primary_t, guard_stale_primary);

/// PITR from an archive to a named restore point created after the backup.
fn pitr_restore_point(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "pitr", &[]);
    f.c.psql("INSERT INTO rows VALUES ('before rp')");
    f.c.psql("SELECT pg_create_restore_point('rp')");
    f.c.psql("INSERT INTO rows VALUES ('after rp')");
    let last = f.c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    f.c.psql("SELECT pg_switch_wal()");
    let archive = f.c.archive_dir().unwrap();
    assert!(common::wait_until(Duration::from_secs(30), || archive
        .join(&last)
        .exists()));
    let a = archive.display().to_string();
    f.prepare(
        &data,
        &[
            "--tablespace",
            &f.ts_arg(&ts),
            "--archive",
            &a,
            "--target",
            "name=rp",
        ],
    )
    .ok();
    let r = start_restored(major, &data, data.parent().unwrap());
    let rows = r.psql("SELECT string_agg(t, ',' ORDER BY t) FROM rows");
    assert_eq!(rows, "before rp,committed before stop");
    assert!(r.pgbench_invariant_ok());
}
per_major!(pitr_restore_point_t, pitr_restore_point);

/// --standby: the prepared copy starts as a streaming standby of the original primary.
fn standby_restore(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "sb", &[]);
    let ci = format!(
        "host={} port={} user=postgres",
        f.c.socket_dir().display(),
        f.c.port()
    );
    f.prepare(
        &data,
        &[
            "--tablespace",
            &f.ts_arg(&ts),
            "--standby",
            "--primary-conninfo",
            &ci,
        ],
    )
    .ok();
    assert!(data.join("standby.signal").exists());
    let r = Cluster::from_existing(major, data.clone(), data.parent().unwrap().to_path_buf());
    r.start_again().unwrap_or_else(|l| panic!("{l}"));
    f.c.psql("INSERT INTO rows VALUES ('streamed')");
    assert!(
        common::wait_until(Duration::from_secs(60), || r
            .try_psql("SELECT count(*) FROM rows WHERE t = 'streamed'")
            .as_deref()
            == Ok("1")),
        "the standby does not stream:\n{}",
        r.server_log()
    );
    assert_eq!(r.psql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        r.psql("SELECT status FROM pg_stat_wal_receiver"),
        "streaming"
    );
}
per_major!(standby_restore_t, standby_restore);

/// --dry-run changes nothing and prints every action; verify reports the same copy clean.
fn dry_run_and_verify(major: u32) {
    let (f, data, ts) = Fixture::with_copy(major, "dry", &[]);
    let before = digest(&data);
    let r = f
        .prepare(
            &data,
            &["--tablespace", &f.ts_arg(&ts), "--dry-run", "--json"],
        )
        .ok();
    assert_eq!(digest(&data), before);
    let j = r.json();
    let kinds: Vec<&str> = j["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for k in [
        "remove",
        "clear_dir",
        "link_tablespace",
        "write_file",
        "write_wal",
        "set_recovery",
        "install_control",
    ] {
        assert!(kinds.contains(&k), "dry run must list {k}: {kinds:?}");
    }
    assert_eq!(
        kinds.last(),
        Some(&"install_control"),
        "pg_control goes last"
    );
    let h = f
        .prepare(&data, &["--tablespace", &f.ts_arg(&ts), "--dry-run"])
        .ok();
    assert!(h.stdout.contains("dry run: nothing was changed"), "{h:?}");
    let d = data.display().to_string();
    let s = f.store();
    let ta = f.ts_arg(&ts);
    f.tool
        .run(&["verify", "--pgdata", &d, "--store", &s, "--tablespace", &ta])
        .ok();
    f.tool.run(&["verify", "--store", &s, "--id", "dry"]).ok();
    // verify reports every problem, not only the first.
    let rel = f.c.psql("SELECT pg_relation_filepath('pgbench_branches')");
    std::fs::remove_file(data.join(&rel)).unwrap();
    let wal = f.tool.bundle_dir("dry").join("wal");
    let first = std::fs::read_dir(&wal)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut b = std::fs::read(&first).unwrap();
    let n = b.len() / 2;
    b[n] ^= 0xff;
    std::fs::write(&first, &b).unwrap();
    let v = f
        .tool
        .run(&["verify", "--store", &s, "--id", "dry", "--json"]);
    assert_eq!(v.code, 6, "{v:?}");
    assert!(v.json()["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["check"] == "bundle_checksum"));
    assert!(
        v.json()["problems"].as_array().unwrap().len() >= 2,
        "all problems: {v:?}"
    );
}
per_major!(dry_run_and_verify_t, dry_run_and_verify);

/// A copy that followed the tablespace link (rsync -L, tar -h) holds the tablespace as a
/// directory inside pg_tblspc: refused without --tablespace (the server would delete it),
/// moved out with it.
fn inline_tablespace(major: u32) {
    let mut copy = None;
    let f = Fixture::new(major, "inline", &[], |f| {
        let d = f.work.path().join("l/data");
        rsync_copy("-aL", f.c.pgdata(), &d);
        copy = Some(d);
    });
    let data = copy.unwrap();
    let inline = data.join("pg_tblspc").join(f.ts_oid.to_string());
    assert!(std::fs::symlink_metadata(&inline).unwrap().is_dir());
    refused(&f, &data, &[], "inside pg_tblspc");
    let to = f.work.path().join("l/ts-moved");
    f.prepare(&data, &["--tablespace", &f.ts_arg(&to)]).ok();
    assert_eq!(std::fs::read_link(&inline).unwrap(), to);
    assert!(
        std::fs::read_dir(&to).unwrap().next().is_some(),
        "the files moved to the new path"
    );
    let r = start_restored(major, &data, data.parent().unwrap());
    restored_is_right(&r);
}
per_major!(inline_tablespace_t, inline_tablespace);
