//! End-to-end tests of the formats crate's page checks (`pgbookend_formats::page`) against the
//! relation files of real clusters with data checksums, cross-checked with `pg_checksums` (15).

use crate::common;
use pgbookend_formats::page::{self, Verdict, BLCKSZ, RELSEG_SIZE};
use pgbookend_testkit::{client_bin, Cluster, ClusterOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A relation segment file under base/: its path and segment number.
struct RelFile {
    path: PathBuf,
    segno: u32,
}

/// The segment number of a relation file name (`16384`, `16384_fsm`, `16384.1`), or `None`
/// for the other files of a database directory.
fn segno_of(name: &str) -> Option<u32> {
    let (stem, seg) = match name.split_once('.') {
        Some((stem, seg)) => (stem, seg.parse().ok()?),
        None => (name, 0),
    };
    let oid = ["_fsm", "_vm", "_init"]
        .iter()
        .find_map(|f| stem.strip_suffix(f))
        .unwrap_or(stem);
    (!oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit())).then_some(seg)
}

/// Every relation segment file of every database directory under `pgdata/base`.
fn relation_files(pgdata: &Path) -> Vec<RelFile> {
    let mut out = Vec::new();
    for db in std::fs::read_dir(pgdata.join("base")).expect("list base") {
        let db = db.expect("base entry").path();
        for f in std::fs::read_dir(&db).expect("list database dir") {
            let f = f.expect("database dir entry");
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(segno) = segno_of(&name) {
                out.push(RelFile {
                    path: f.path(),
                    segno,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Counts of what the classifier found over a set of files.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    new: u64,
    bad: Vec<(PathBuf, u32, Verdict)>,
    max_lsn: u64,
}

fn classify(files: &[RelFile], checksums: bool) -> Tally {
    let mut t = Tally::default();
    for f in files {
        let buf = std::fs::read(&f.path).expect("read relation file");
        for p in page::check_segment(&buf, f.segno, RELSEG_SIZE, checksums).expect("block range") {
            t.max_lsn = t.max_lsn.max(p.lsn.0);
            match p.verdict {
                Verdict::Ok => t.ok += 1,
                Verdict::New => t.new += 1,
                v => t.bad.push((f.path.clone(), p.block, v)),
            }
        }
    }
    t
}

/// `pg_checksums --check` (Debian's 15) on a stopped 15 data dir, as its owner.
fn pg_checksums_check(c: &Cluster) -> Output {
    let mut cmd = Command::new(client_bin("pg_checksums"));
    cmd.arg("--check").arg("-D").arg(c.pgdata());
    c.run_as_owner(&mut cmd).output().expect("run pg_checksums")
}

/// The path of pgbench_accounts' main fork, relative to the data dir.
fn accounts_path(c: &Cluster) -> String {
    c.psql("SELECT pg_relation_filepath('pgbench_accounts')")
}

/// pgbench -i, CHECKPOINT and a clean stop of a cluster with or without data checksums:
/// the cluster, pgbench_accounts' file path, every relation file, and their tally, which
/// has no bad page.
fn clean_cluster(major: u32, checksums: bool) -> (Cluster, String, Vec<RelFile>, Tally) {
    let c = Cluster::start(ClusterOptions::new(major).data_checksums(checksums));
    c.pgbench_init(1);
    let rel = accounts_path(&c);
    c.psql("CHECKPOINT");
    c.stop();
    let files = relation_files(c.pgdata());
    let t = classify(&files, checksums);
    assert!(
        t.bad.is_empty(),
        "bad pages in a clean cluster: {:?}",
        t.bad
    );
    (c, rel, files, t)
}

/// pgbench -i, CHECKPOINT, clean stop: every page of every relation file under base/ is Ok or
/// New with a matching checksum; on 15 pg_checksums agrees. Then one byte flipped in block 3 of
/// pgbench_accounts: exactly that block is BadChecksum, and on 15 pg_checksums reports the same
/// file, block and computed checksum.
fn pages_of_a_clean_cluster(major: u32) {
    let (c, rel, files, t) = clean_cluster(major, true);
    assert!(
        t.ok > 1500,
        "pgbench scale 1 has >1500 pages, saw {} Ok",
        t.ok
    );
    assert!(t.max_lsn > 0, "pages carry their LSN");
    let without = classify(&files, false);
    assert!(without.bad.is_empty() && without.ok == t.ok && without.new == t.new);
    if major == 15 {
        let out = pg_checksums_check(&c);
        assert!(
            out.status.success(),
            "pg_checksums --check must pass on the clean cluster: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let target = c.pgdata().join(&rel);
    let block = 3u32;
    let offset = u64::from(block) * BLCKSZ as u64 + 4000;
    common::flip_byte(&target, offset, 0xff);
    let t = classify(&files, true);
    assert_eq!(t.bad.len(), 1, "exactly one bad page: {:?}", t.bad);
    let (path, bad_block, verdict) = &t.bad[0];
    assert_eq!((path, *bad_block), (&target, block));
    let Verdict::BadChecksum { stored, computed } = *verdict else {
        panic!("expected BadChecksum, got {verdict:?}");
    };
    assert_ne!(stored, computed);
    if major == 15 {
        let out = pg_checksums_check(&c);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "pg_checksums must fail: {text}");
        let expect = format!(
            "{rel}\", block {block}: calculated checksum {computed:X} but block contains {stored:X}"
        );
        assert!(
            text.contains(&expect),
            "pg_checksums said {text:?}, wanted {expect:?}"
        );
        assert!(
            text.contains("Bad checksums:  1"),
            "one bad checksum: {text}"
        );
    }
}

per_major!(clean_cluster_pages, pages_of_a_clean_cluster);

/// A cluster without data checksums: every page passes the header checks (checked without
/// checksums), every non-new page fails a checksum check (pd_checksum is 0, a value the
/// checksum never takes: the caller must pass the cluster's own setting), and a header made
/// insane in one block is reported for exactly that block.
fn pages_without_checksums(major: u32) {
    let (c, rel, files, t) = clean_cluster(major, false);
    assert!(t.ok > 1500, "saw {} Ok", t.ok);
    let forced = classify(&files, true);
    assert_eq!(forced.ok, 0, "no page can match a checksum of 0");
    assert_eq!(forced.bad.len() as u64, t.ok);
    assert!(forced
        .bad
        .iter()
        .all(|(_, _, v)| matches!(v, Verdict::BadChecksum { stored: 0, .. })));

    // pd_lower (offset 12) of block 5 set above pd_upper.
    let target = c.pgdata().join(&rel);
    let block = 5u32;
    let mut buf = std::fs::read(&target).expect("read relation file");
    let at = block as usize * BLCKSZ + 12;
    buf[at..at + 2].copy_from_slice(&9000u16.to_ne_bytes());
    std::fs::write(&target, &buf).expect("write relation file");
    let t = classify(&files, false);
    assert_eq!(t.bad.len(), 1, "exactly one bad page: {:?}", t.bad);
    let (path, bad_block, verdict) = &t.bad[0];
    assert_eq!((path, *bad_block), (&target, block));
    assert!(
        matches!(
            verdict,
            Verdict::BadHeader(page::HeaderProblem::Bounds { lower: 9000, .. })
        ),
        "{verdict:?}"
    );
}

per_major!(pages_no_checksums, pages_without_checksums);
