//! Same-host restores and a restartable `prepare`, as root against postgres-owned
//! clusters: a copy restored beside its live primary (separate WAL directory, tablespace)
//! is refused without remaps and the primary's files stay byte for byte the same; with
//! `--waldir` / `--tablespace` both servers run and the primary survives an immediate
//! restart; planted links never lead prepare outside the copy; ENOSPC part-way through
//! prepare exits 8, guard refuses the copy, and the same prepare finishes it later.

use crate::common::tree::digest;
use crate::common::{self, start_restored, Run, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `cp -a src dest` (links copied as links, owners kept).
fn cp_a(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let st = common::cp_live(src, dest).unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dest.display());
}

fn prepare(tool: &Tool, data: &Path, extra: &[&str]) -> Run {
    let d = data.display().to_string();
    let store = tool.store_path().display().to_string();
    let mut args = vec!["prepare", "--pgdata", &d, "--store", &store];
    args.extend_from_slice(extra);
    tool.run(&args)
}

/// prepare must refuse with exit 6, say `needle` and that nothing changed, and leave the
/// copy as it was.
#[track_caller]
fn refused(tool: &Tool, data: &Path, extra: &[&str], needle: &str) -> Run {
    let before = digest(data);
    let r = prepare(tool, data, extra);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.all().contains(needle), "expected {needle:?} in {r:?}");
    assert!(r.all().contains("nothing was changed"), "{r:?}");
    assert_eq!(digest(data), before, "a refused copy must stay as it was");
    r
}

/// The live primary still works after an immediate restart (crash recovery from its own
/// WAL), with its data intact.
fn primary_survives(c: &Cluster) {
    assert_eq!(c.psql("SELECT 1"), "1");
    c.stop_mode("immediate");
    c.start_again()
        .unwrap_or_else(|log| panic!("the live primary did not come back:\n{log}"));
    assert!(c.pgbench_invariant_ok(), "the primary's pgbench invariant");
}

/// A backup under pgbench load, with `copy` run in its window.
fn backup_with(c: &Cluster, tool: &Tool, id: &str, copy: impl FnOnce()) {
    tool.start(id, &[]).ok();
    let bench = c.pgbench_background(2, 2);
    copy();
    bench.wait().expect("pgbench");
    tool.stop(id, &[]).ok();
}

/// A cluster made like `initdb -X`: the copy's pg_wal links to the live WAL directory.
fn separate_waldir(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).separate_waldir(true));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let work = pgbookend_testkit::temp_dir("xwal");
    let data = work.path().join("r/data");
    backup_with(&c, &tool, "xwal", || cp_a(c.pgdata(), &data));
    let live_wal = c.waldir().unwrap();
    assert_eq!(std::fs::read_link(data.join("pg_wal")).unwrap(), live_wal);

    // Without --waldir: refused, and the primary's WAL directory is untouched (compared
    // with the primary stopped, so that it does not write meanwhile).
    c.stop();
    let (wal_before, data_before) = (digest(&live_wal), digest(c.pgdata()));
    refused(&tool, &data, &[], "--waldir");
    assert_eq!(digest(&live_wal), wal_before, "the live WAL directory");
    assert_eq!(digest(c.pgdata()), data_before, "the live data directory");
    c.start_again().unwrap();

    // The running primary's own WAL directory (or its data directory) is no target.
    let lw = live_wal.display().to_string();
    refused(&tool, &data, &["--waldir", &lw], "running cluster");
    let lp = c.pgdata().join("newwal").display().to_string();
    refused(&tool, &data, &["--waldir", &lp], "running cluster");

    let new_wal = work.path().join("r/wal");
    let nw = new_wal.display().to_string();
    prepare(&tool, &data, &["--waldir", &nw]).ok();
    assert_eq!(std::fs::read_link(data.join("pg_wal")).unwrap(), new_wal);
    let restored = start_restored(major, &data, &work.path().join("r"));
    assert!(restored.pgbench_invariant_ok(), "the restored invariant");
    restored.psql("CREATE TABLE after_restore AS SELECT 1 AS x");
    primary_survives(&c);
    assert!(restored.pgbench_invariant_ok());
}
per_major!(separate_waldir_t, separate_waldir);

/// A tablespace left at its original path: refused; remapped to a restored copy of it,
/// both servers run and the primary's tablespace keeps its data.
fn tablespace_same_host(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).tablespace(true));
    c.pgbench_init(1);
    c.psql("CREATE TABLE in_ts (i int) TABLESPACE ts1; INSERT INTO in_ts SELECT generate_series(1, 2000)");
    let oid = c.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let live_ts = c.tablespace_dir().unwrap();
    let tool = Tool::new(&c);
    let work = pgbookend_testkit::temp_dir("samets");
    let data = work.path().join("r/data");
    let ts_copy = work.path().join("r/ts");
    backup_with(&c, &tool, "samets", || {
        cp_a(c.pgdata(), &data);
        cp_a(&live_ts, &ts_copy);
    });

    c.stop();
    let ts_before = digest(&live_ts);
    let r = refused(&tool, &data, &[], &format!("--tablespace {oid}="));
    assert!(r.all().contains(&live_ts.display().to_string()), "{r:?}");
    assert_eq!(digest(&live_ts), ts_before, "the live tablespace");
    c.start_again().unwrap();

    let to = |p: &Path| format!("{oid}={}", p.display());
    refused(
        &tool,
        &data,
        &["--tablespace", &to(&live_ts)],
        "running cluster",
    );
    let junk = work.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("precious"), b"keep me").unwrap();
    refused(&tool, &data, &["--tablespace", &to(&junk)], "neither empty");
    assert_eq!(std::fs::read(junk.join("precious")).unwrap(), b"keep me");

    prepare(&tool, &data, &["--tablespace", &to(&ts_copy)]).ok();
    let restored = start_restored(major, &data, &work.path().join("r"));
    assert!(restored.pgbench_invariant_ok());
    restored.psql("INSERT INTO in_ts SELECT generate_series(1, 500)");
    restored.psql("CHECKPOINT");
    assert_eq!(restored.psql("SELECT count(*) FROM in_ts"), "2500");
    primary_survives(&c);
    assert_eq!(
        c.psql("SELECT count(*) FROM in_ts"),
        "2000",
        "the primary's tablespace"
    );
}
per_major!(tablespace_same_host_t, tablespace_same_host);

/// Links planted in a copy (pg_wal, pg_replslot) and remap targets that are links,
/// files or someone's directory: never followed, never emptied.
fn planted_links(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let work = pgbookend_testkit::temp_dir("planted");
    let data = work.path().join("r/data");
    backup_with(&c, &tool, "planted", || cp_a(c.pgdata(), &data));
    let victim = pgbookend_testkit::temp_dir("victim");
    std::fs::create_dir(victim.path().join("sub")).unwrap();
    std::fs::write(victim.path().join("passwd"), b"root:x:0:0").unwrap();
    std::fs::write(victim.path().join("sub/000000010000000000000001"), b"x").unwrap();
    let set_mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    set_mode(&victim.path().join("passwd"), 0o644);
    let before = digest(victim.path());
    let owner = std::fs::metadata(&data).unwrap();

    // pg_wal -> the victim: refused.
    std::fs::remove_dir_all(data.join("pg_wal")).unwrap();
    std::os::unix::fs::symlink(victim.path(), data.join("pg_wal")).unwrap();
    refused(&tool, &data, &[], "pg_wal in the copy is a link");
    assert_eq!(digest(victim.path()), before);

    // Remap targets: a link, a file, a directory with other files.
    let v = victim.path().display().to_string();
    let link = work.path().join("wal-link");
    std::os::unix::fs::symlink(victim.path(), &link).unwrap();
    let l = link.display().to_string();
    refused(&tool, &data, &["--waldir", &l], "symbolic link");
    let f = victim.path().join("passwd").display().to_string();
    refused(&tool, &data, &["--waldir", &f], "not a directory");
    refused(&tool, &data, &["--waldir", &v], "not a WAL file");
    assert_eq!(digest(victim.path()), before);

    // pg_replslot -> the victim: the link is replaced by an empty directory.
    std::fs::remove_file(data.join("pg_wal")).unwrap();
    std::fs::create_dir(data.join("pg_wal")).unwrap();
    std::os::unix::fs::chown(data.join("pg_wal"), Some(owner.uid()), Some(owner.gid())).unwrap();
    set_mode(&data.join("pg_wal"), 0o700);
    std::fs::remove_dir_all(data.join("pg_replslot")).unwrap();
    std::os::unix::fs::symlink(victim.path(), data.join("pg_replslot")).unwrap();
    let r = prepare(&tool, &data, &[]).ok();
    assert!(r.stdout.contains("replace the link"), "{r:?}");
    assert_eq!(digest(victim.path()), before, "the victim after prepare");
    let slots = std::fs::symlink_metadata(data.join("pg_replslot")).unwrap();
    assert!(
        slots.is_dir() && slots.uid() == owner.uid(),
        "a real, owned pg_replslot"
    );
    let restored = start_restored(major, &data, &work.path().join("r"));
    assert!(restored.pgbench_invariant_ok());
    assert_eq!(digest(victim.path()), before, "the victim after recovery");
}
per_major!(planted_links_t, planted_links);

/// ENOSPC while prepare decompresses the bundle's WAL: exit 8, guard refuses the copy;
/// with more room the same prepare finishes it and the server recovers.
fn enospc_during_prepare(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let fs = common::Tmpfs::mount("1g");
    let base = fs.path().join("r");
    let data = base.join("data");
    backup_with(&c, &tool, "nospc", || cp_a(c.pgdata(), &data));
    // Room for the copy and a little more, not for one WAL segment of the bundle.
    for e in std::fs::read_dir(data.join("pg_wal")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::remove_file(p).unwrap();
        }
    }
    fs.resize(&format!("{}", fs.used() + (4 << 20)));
    let r = prepare(&tool, &data, &[]);
    assert_eq!(r.code, 8, "{r:?}");
    assert!(r.stderr.contains("No space left"), "{r:?}");
    assert!(r.stderr.contains("run the same prepare again"), "{r:?}");
    assert!(data.join("pg_backup_metadata/nospc/prepare.json").is_file());
    let d = data.display().to_string();
    let g = tool.run(&["guard", "--pgdata", &d]);
    assert_eq!(g.code, 8, "guard must refuse a half-prepared copy: {g:?}");
    assert!(g.stderr.contains("half-prepared"), "{g:?}");
    // Continuing with other remaps than the first run is refused, changing nothing.
    let before = digest(&data);
    let other = fs.path().join("otherwal").display().to_string();
    let r = prepare(&tool, &data, &["--waldir", &other]);
    assert_eq!(r.code, 8, "{r:?}");
    assert!(r.stderr.contains("other remaps"), "{r:?}");
    assert_eq!(digest(&data), before);

    fs.resize("1g");
    prepare(&tool, &data, &[]).ok();
    assert!(
        !data.join("pg_backup_metadata").exists(),
        "marker and journal are gone"
    );
    tool.run(&["guard", "--pgdata", &d]).ok();
    let restored = start_restored(major, &data, &base);
    assert!(restored.pgbench_invariant_ok());
    drop(restored);
}
per_major!(enospc_during_prepare_t, enospc_during_prepare);
