//! End-to-end tests of the page check of `verify --pgdata` and `prepare`: copies taken
//! with real tools while the cluster writes, judged page by page against the WAL of the
//! backup's window, on every major (data checksums on, and one cluster without).

use crate::common::{self, start_restored, Run, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions, TempDir};
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PAGE: u64 = 8192;

/// A cluster with pgbench data, a table written before the backup and left alone
/// (`cold`), one that the window rewrites (`hot`), and a place for copies.
struct Setup {
    c: Cluster,
    tool: Tool,
    work: TempDir,
}

impl Setup {
    fn new(major: u32, checksums: bool) -> Setup {
        let c = Cluster::start(ClusterOptions::new(major).data_checksums(checksums));
        c.pgbench_init(1);
        c.psql("CREATE TABLE cold (i int, t text); INSERT INTO cold SELECT g, repeat('c', 60) FROM generate_series(1, 2000) g");
        c.psql("CREATE TABLE hot (i int, t text); INSERT INTO hot SELECT g, repeat('h', 60) FROM generate_series(1, 2000) g");
        c.psql("CHECKPOINT");
        let tool = Tool::new(&c);
        let work = pgbookend_testkit::temp_dir("pages");
        Setup { c, tool, work }
    }

    fn store(&self) -> String {
        self.tool.store_path().display().to_string()
    }

    /// `tar` of PGDATA (while the cluster writes) unpacked to `work/<name>`.
    fn tar_copy(&self, name: &str) -> PathBuf {
        let tar = self.work.path().join(format!("{name}.tar"));
        common::tar_pgdata(&self.c, &tar);
        let dest = self.work.path().join(name);
        std::fs::create_dir_all(&dest).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
        dest
    }

    /// `rsync -a` of PGDATA (while the cluster writes) to `work/<name>`; files that
    /// vanish mid-copy (exit 24) are what rsync of a live directory reports.
    fn rsync_copy(&self, name: &str) -> PathBuf {
        let dest = self.work.path().join(name);
        let st = Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", self.c.pgdata().display()))
            .arg(&dest)
            .status()
            .unwrap();
        assert!(matches!(st.code(), Some(0 | 24)), "rsync: {st:?}");
        dest
    }

    /// `cp -a` of PGDATA to `work/<name>`.
    fn cp_copy(&self, name: &str) -> PathBuf {
        let dest = self.work.path().join(name);
        let st = common::cp_live(self.c.pgdata(), &dest).unwrap();
        assert!(st.success());
        dest
    }

    fn verify(&self, data: &Path, extra: &[&str]) -> Run {
        let d = data.display().to_string();
        let s = self.store();
        let mut args = vec!["verify", "--pgdata", &d, "--store", &s, "--json"];
        args.extend_from_slice(extra);
        self.tool.run(&args)
    }

    fn prepare(&self, data: &Path, extra: &[&str]) -> Run {
        let d = data.display().to_string();
        let s = self.store();
        let mut args = vec!["prepare", "--pgdata", &d, "--store", &s];
        args.extend_from_slice(extra);
        self.tool.run(&args)
    }

    /// The file of a table's main fork, relative to PGDATA.
    fn rel_file(&self, table: &str) -> String {
        self.c
            .psql(&format!("SELECT pg_relation_filepath('{table}')"))
    }
}

/// The `pages` object of a JSON report.
fn pages(r: &Run) -> serde_json::Value {
    r.json()["pages"].clone()
}

/// A digest of every regular file below `root` (paths and contents).
fn digest(root: &Path) -> String {
    let mut h = Sha256::new();
    let mut stack = vec![root.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        h.update(f.display().to_string().as_bytes());
        if let Ok(b) = std::fs::read(&f) {
            h.update(&b);
        }
    }
    hex::encode(h.finalize())
}

/// XORs one byte of a file.
/// tar, rsync and cp copies taken while pgbench writes: no page is corrupt, none is late.
fn good_copies(major: u32) {
    let s = Setup::new(major, true);
    s.tool.start("good", &[]).ok();
    let bench = s.c.pgbench_background(2, 3);
    let untar = s.tar_copy("tar");
    let rsync = s.rsync_copy("rsync");
    let cp = s.cp_copy("cp");
    bench.wait().expect("pgbench");
    s.tool.stop("good", &[]).ok();
    for data in [&untar, &rsync, &cp] {
        let r = s.verify(data, &[]).ok();
        let p = pages(&r);
        assert_eq!(p["corrupt_count"], 0, "{r:?}");
        assert_eq!(p["late_count"], 0, "{r:?}");
        assert_eq!(p["checksums"], true);
        assert!(p["pages"].as_u64().unwrap() > 1000, "{p}");
        assert!(p["wal_blocks"].as_u64().unwrap() > 0, "{p}");
    }
    // A quick look reads fewer pages, and skipping reads none.
    let full = pages(&s.verify(&cp, &[]).ok())["pages"].as_u64().unwrap();
    let sample = pages(&s.verify(&cp, &["--check-pages=sample:10%"]).ok());
    assert!(sample["pages"].as_u64().unwrap() < full, "{sample}");
    assert_eq!(sample["mode"], "sample:10%");
    let none = s.verify(&cp, &["--no-check-pages"]).ok();
    assert!(pages(&none).is_null(), "{none:?}");
}
per_major!(good_copies_t, good_copies);

/// A copier that reads each page of a table in two halves around a write burst: the
/// pages are torn, the window's WAL covers them, and the restored cluster is consistent.
fn torn_pages_covered(major: u32) {
    let s = Setup::new(major, true);
    let rel = s.rel_file("pgbench_accounts");
    s.tool.start("torn", &[]).ok();
    let data = s.cp_copy("torn");
    // The burst: every page of pgbench_accounts changes (balances untouched), on disk.
    s.c.psql("UPDATE pgbench_accounts SET filler = filler");
    s.c.psql("CHECKPOINT");
    // Second halves of every page from after the burst.
    let live = std::fs::File::open(s.c.pgdata().join(&rel)).unwrap();
    let copy = std::fs::OpenOptions::new()
        .write(true)
        .open(data.join(&rel))
        .unwrap();
    let copied_pages = std::fs::metadata(data.join(&rel)).unwrap().len() / PAGE;
    let mut half = vec![0u8; (PAGE / 2) as usize];
    for p in 0..copied_pages {
        live.read_exact_at(&mut half, p * PAGE + PAGE / 2).unwrap();
        copy.write_all_at(&half, p * PAGE + PAGE / 2).unwrap();
    }
    drop(copy);
    s.c.psql("INSERT INTO hot VALUES (0, 'before stop')");
    s.tool.stop("torn", &[]).ok();
    let r = s.verify(&data, &[]).ok();
    let p = pages(&r);
    assert!(p["torn_covered"].as_u64().unwrap() >= 1, "{p}");
    assert_eq!(p["corrupt_count"], 0, "{p}");
    s.prepare(&data, &[]).ok();
    let restored = start_restored(major, &data, s.work.path());
    assert!(restored.pgbench_invariant_ok());
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );
    assert_eq!(
        restored.psql("SELECT t FROM hot WHERE i = 0"),
        "before stop"
    );
}
per_major!(torn_pages_covered_t, torn_pages_covered);

/// One byte flipped in a page the window's WAL does not touch: verify and prepare refuse,
/// naming file and block, and prepare changes nothing. The same flip in a page the WAL
/// rewrote: accepted, and the restored cluster is consistent.
fn flipped_byte(major: u32) {
    let s = Setup::new(major, true);
    let cold = s.rel_file("cold");
    let hot = s.rel_file("hot");
    s.tool.start("flip", &[]).ok();
    s.c.psql("UPDATE hot SET t = repeat('w', 60)");
    let data = s.cp_copy("flip");
    s.tool.stop("flip", &[]).ok();
    common::flip_byte(&data.join(&cold), PAGE + 5000, 0x5A);
    let r = s.verify(&data, &[]);
    assert_eq!(r.code, 6, "{r:?}");
    let p = pages(&r);
    assert_eq!(p["corrupt_count"], 1, "{p}");
    assert_eq!(p["corrupt"][0]["file"], cold.as_str(), "{p}");
    assert_eq!(p["corrupt"][0]["block"], 1, "{p}");
    assert!(
        p["corrupt"][0]["found"]
            .as_str()
            .unwrap()
            .contains("stored"),
        "{p}"
    );
    let before = digest(&data);
    let refused = s.prepare(&data, &[]);
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(
        refused.all().contains(&format!("{cold} block 1")),
        "{refused:?}"
    );
    assert_eq!(digest(&data), before, "a refused prepare changes nothing");
    // Undo it; the same flip in a page of `hot`, which the window rewrote.
    common::flip_byte(&data.join(&cold), PAGE + 5000, 0x5A);
    common::flip_byte(&data.join(&hot), PAGE + 5000, 0x5A);
    let r = s.verify(&data, &[]).ok();
    let p = pages(&r);
    assert_eq!(p["corrupt_count"], 0, "{p}");
    assert!(p["torn_covered"].as_u64().unwrap() >= 1, "{p}");
    s.prepare(&data, &[]).ok();
    let restored = start_restored(major, &data, s.work.path());
    assert_eq!(
        restored.psql("SELECT count(*) FROM hot WHERE t = repeat('w', 60)"),
        "2000"
    );
    assert_eq!(restored.psql("SELECT count(*) FROM cold"), "2000");
    assert!(restored.pgbench_invariant_ok());
}
per_major!(flipped_byte_t, flipped_byte);

/// A copier that keeps running after `stop` while pgbench writes: refused as read after
/// stop.
fn copy_after_stop(major: u32) {
    let s = Setup::new(major, true);
    s.tool.start("late", &[]).ok();
    let bench = s.c.pgbench_background(2, 4);
    let data = s.cp_copy("late");
    s.tool.stop("late", &[]).ok();
    // pgbench keeps writing; the checkpoint puts its pages on disk, and the copier, still
    // running, reads base/ (again) after stop.
    std::thread::sleep(Duration::from_millis(1000));
    s.c.psql("CHECKPOINT");
    let st = common::cp_live(s.c.pgdata().join("base/."), data.join("base")).unwrap();
    assert!(st.success());
    bench.wait().expect("pgbench");
    let r = s.verify(&data, &[]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(pages(&r)["late_count"].as_u64().unwrap_or(0) >= 1, "{r:?}");
    let problems = r.json()["problems"].to_string();
    assert!(problems.contains("after stop"), "{problems}");
    let refused = s.prepare(&data, &[]);
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(refused.all().contains("after stop"), "{refused:?}");
}
per_major!(copy_after_stop_t, copy_after_stop);

/// Without data checksums: tar and cp copies taken while pgbench writes are good (no
/// page corrupt, none late, every page read, the report says checksums are off); the
/// header checks still run: a page whose pd_lower and pd_upper were zeroed is corrupt.
fn checksums_off_headers(major: u32) {
    let s = Setup::new(major, false);
    let cold = s.rel_file("cold");
    s.tool.start("nosum", &[]).ok();
    let bench = s.c.pgbench_background(2, 2);
    let untar = s.tar_copy("nosum-tar");
    let data = s.cp_copy("nosum");
    bench.wait().expect("pgbench");
    s.tool.stop("nosum", &[]).ok();
    for copy in [&untar, &data] {
        let r = s.verify(copy, &[]).ok();
        let p = pages(&r);
        assert_eq!(p["checksums"], false, "{r:?}");
        assert_eq!(p["corrupt_count"], 0, "{r:?}");
        assert_eq!(p["late_count"], 0, "{r:?}");
        assert!(p["pages"].as_u64().unwrap() > 1000, "{p}");
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(data.join(&cold))
        .unwrap();
    f.write_all_at(&[0u8; 4], 12).unwrap();
    drop(f);
    let r = s.verify(&data, &[]);
    assert_eq!(r.code, 6, "{r:?}");
    let p = pages(&r);
    assert_eq!(p["corrupt"][0]["file"], cold.as_str(), "{p}");
    assert_eq!(p["corrupt"][0]["block"], 0, "{p}");
    assert!(
        p["corrupt"][0]["found"]
            .as_str()
            .unwrap()
            .contains("header"),
        "{p}"
    );
    let h = s.tool.run(&[
        "verify",
        "--pgdata",
        &data.display().to_string(),
        "--store",
        &s.store(),
    ]);
    assert_eq!(h.code, 6, "{h:?}");
    assert!(h.stdout.contains("checksums off"), "{h:?}");
}
per_major!(checksums_off_headers_t, checksums_off_headers);
