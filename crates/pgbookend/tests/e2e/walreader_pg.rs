//! The WAL reader (`pgbookend_formats::walreader`) on real WAL of every major: every record and
//! every block reference compared with `pg_waldump` where a matching one exists here (15 from
//! Debian, 16 from the pgserver wheel installed by scripts/install-deps), and on every major the
//! structural facts that can fail: CRCs and prev-links (checked by the reader), block
//! references and smgr/database records naming the relations and databases the test created.

use pgbookend_formats::walreader::{Detail, Record, RelFileLocator, WalReader};
use pgbookend_formats::{wal, Lsn};
use pgbookend_testkit::{Cluster, ClusterOptions, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the workload did, to look for in the WAL.
struct Facts {
    seg_size: u32,
    /// First and last (complete) segment numbers written by the workload.
    segs: (u64, u64),
    /// Copies of those segment files.
    dir: TempDir,
    /// The table `t` before TRUNCATE, the same after, the vacuum-truncated `v`.
    t_before: RelFileLocator,
    t_after: RelFileLocator,
    v: RelFileLocator,
    /// The database created and dropped.
    db: u32,
}

fn rel_of(c: &Cluster, table: &str) -> RelFileLocator {
    let out = c.psql(&format!(
        "SELECT CASE WHEN reltablespace = 0 THEN (SELECT dattablespace FROM pg_database \
         WHERE datname = current_database()) ELSE reltablespace END, \
         (SELECT oid FROM pg_database WHERE datname = current_database()), \
         pg_relation_filenode('{table}') FROM pg_class WHERE oid = '{table}'::regclass"
    ));
    let v: Vec<u32> = out.split('|').map(|s| s.parse().expect("oid")).collect();
    RelFileLocator {
        spc: v[0],
        db: v[1],
        rel: v[2],
    }
}

fn lsn(c: &Cluster, sql: &str) -> Lsn {
    c.psql(sql).parse().expect("an LSN")
}

/// Creates, fills, updates (after a checkpoint: full-page images, plain and compressed),
/// runs pgbench, creates and drops a database, vacuum-truncates and truncates tables, and
/// switches segments several times; copies the segments written.
fn workload(c: &Cluster) -> Facts {
    let seg_size: u32 = c
        .psql("SELECT setting::int * (CASE unit WHEN '8kB' THEN 8192 WHEN 'MB' THEN 1048576 ELSE 1 END) FROM pg_settings WHERE name = 'wal_segment_size'")
        .parse()
        .expect("segment size");
    let start = lsn(c, "SELECT pg_current_wal_lsn()");
    c.psql(
        "CREATE TABLE t (a int PRIMARY KEY, b text);
         INSERT INTO t SELECT g, repeat(g::text, 30) FROM generate_series(1, 20000) g;
         CREATE TABLE v (a int, b text);
         INSERT INTO v SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g;
         CHECKPOINT;
         UPDATE t SET b = b || 'u' WHERE a % 50 = 0;
         SELECT pg_switch_wal();",
    );
    let t_before = rel_of(c, "t");
    let v = rel_of(c, "v");
    c.psql(
        "ALTER SYSTEM SET wal_compression = on; SELECT pg_reload_conf();
         CHECKPOINT;
         UPDATE t SET b = b || 'c' WHERE a % 70 = 0;",
    );
    c.pgbench_init(1);
    c.pgbench_background(2, 2).wait().expect("pgbench");
    c.psql("CREATE DATABASE walreader_db;");
    let db: u32 = c
        .psql("SELECT oid FROM pg_database WHERE datname = 'walreader_db'")
        .parse()
        .expect("oid");
    c.psql(
        "DROP DATABASE walreader_db;
         SELECT pg_switch_wal();
         DELETE FROM v WHERE a > 100;
         VACUUM v;
         TRUNCATE t;
         INSERT INTO t VALUES (1, 'again');",
    );
    let t_after = rel_of(c, "t");
    let end = lsn(c, "SELECT pg_switch_wal()");
    let segs = (
        wal::segno(start, seg_size),
        wal::segno(Lsn(end.0 - 1), seg_size),
    );
    let dir = pgbookend_testkit::temp_dir("walreader");
    for segno in segs.0..=segs.1 {
        let name = wal::file_name(1, segno, seg_size);
        std::fs::copy(
            c.pgdata().join("pg_wal").join(&name),
            dir.path().join(&name),
        )
        .unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
    Facts {
        seg_size,
        segs,
        dir,
        t_before,
        t_after,
        v,
        db,
    }
}

/// Reads the copied segments from the first segment's start with the reader under test.
fn read_all(major: u32, f: &Facts) -> Vec<Record> {
    let first = wal::segment_start(f.segs.0, f.seg_size);
    let mut r = WalReader::new(major, f.seg_size, first).expect("reader");
    let mut out = Vec::new();
    for segno in f.segs.0..=f.segs.1 {
        let bytes = std::fs::read(f.dir.path().join(wal::file_name(1, segno, f.seg_size)))
            .expect("segment");
        r.feed(wal::segment_start(segno, f.seg_size), &bytes, &mut out)
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
    }
    assert_eq!(r.end_of_wal(), None, "the segments end with a switch");
    assert_eq!(
        r.position(),
        wal::segment_start(f.segs.1 + 1, f.seg_size),
        "after the last switch the reader waits for the next segment"
    );
    out
}

/// Structural facts every major must show.
fn check_structure(major: u32, f: &Facts, recs: &[Record]) {
    assert!(
        recs.len() > 1000,
        "PostgreSQL {major}: only {} records",
        recs.len()
    );
    for w in recs.windows(2) {
        assert_eq!(w[1].prev, w[0].lsn, "prev-link chain at {}", w[1].lsn);
        assert!(w[1].lsn.0 >= w[0].end.0, "records overlap at {}", w[1].lsn);
    }
    let blocks = || recs.iter().flat_map(|r| r.blocks.iter());
    for rel in [f.t_before, f.t_after, f.v] {
        assert!(
            blocks().any(|b| b.rel == rel && b.fork == 0),
            "PostgreSQL {major}: no block reference to {rel:?}"
        );
        assert!(
            recs.iter().any(|r| r.detail
                == Detail::SmgrCreate(pgbookend_formats::walreader::RelationFork { rel, fork: 0 })),
            "PostgreSQL {major}: no smgr create of {rel:?}"
        );
    }
    assert!(blocks().any(
        |b| b.rel == f.t_before && b.image.is_some_and(|i| i.apply && i.compression.is_none())
    ));
    assert!(
        blocks().any(|b| b.image.is_some_and(|i| i.compression.is_some())),
        "PostgreSQL {major}: no compressed full-page image after wal_compression = on"
    );
    assert!(
        recs.iter().any(|r| matches!(&r.detail, Detail::SmgrTruncate { rel, block, .. } if *rel == f.v && *block > 0)),
        "PostgreSQL {major}: no vacuum truncation of v"
    );
    assert!(recs
        .iter()
        .any(|r| matches!(&r.detail, Detail::DbaseCreate { db, .. } if *db == f.db)));
    assert!(recs.iter().any(
        |r| matches!(&r.detail, Detail::DbaseDrop { db, spcs } if *db == f.db && !spcs.is_empty())
    ));
    assert!(recs.iter().filter(|r| r.detail == Detail::Switch).count() >= 2);
    let page = |l: Lsn| l.0 / 8192;
    assert!(
        recs.iter().any(|r| page(r.lsn) != page(Lsn(r.end.0 - 1))),
        "PostgreSQL {major}: no record crossed a page"
    );
    let crossing = recs
        .iter()
        .filter(|r| wal::segno(r.lsn, f.seg_size) != wal::segno(Lsn(r.end.0 - 1), f.seg_size))
        .count();
    eprintln!("PostgreSQL {major}: {crossing} records cross a segment boundary");
    // With 1 MB segments dozens of boundaries fall inside records; never none.
    if f.seg_size < 16 << 20 {
        assert!(
            crossing > 0,
            "PostgreSQL {major}: no record crossed a segment"
        );
    }
}

/// The `pg_waldump` of `major`, if this machine has one.
fn waldump(major: u32) -> Option<PathBuf> {
    let path = match major {
        15 => pgbookend_testkit::client_bin("pg_waldump"),
        16 => std::env::var_os("PGBOOKEND_PG_WALDUMP_16")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                pgbookend_testkit::pg_dir()
                    .with_file_name("pgserver")
                    .join("pg_waldump")
            }),
        _ => return None,
    };
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-deps)", path.display()));
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.contains(&format!(" {major}.")),
        "{} is not {major}'s: {v}",
        path.display()
    );
    Some(path)
}

/// One record as pg_waldump -b prints it: header fields and block reference lines.
#[derive(Debug, PartialEq)]
struct Dumped {
    rmgr: String,
    total_len: u32,
    xid: u32,
    lsn: Lsn,
    prev: Lsn,
    desc: String,
    blocks: Vec<DumpedBlock>,
}

/// One block reference as pg_waldump -b prints it.
#[derive(Debug, PartialEq)]
struct DumpedBlock {
    id: u8,
    rel: RelFileLocator,
    fork: String,
    block: u32,
    /// (applied, hole offset, hole length, compressed) when a full-page image is attached.
    image: Option<(bool, u16, u16, bool)>,
}

/// The number after `key` in `line` (`"hole: offset: 100, ..."`).
fn number_after(line: &str, key: &str) -> u16 {
    field(line, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {line}"))
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {line}"))
        + key.len();
    line[at..]
        .trim_start()
        .split([',', ' '])
        .next()
        .unwrap_or("")
}

fn parse_blkref(line: &str) -> DumpedBlock {
    // "blkref #0: rel 1663/5/16389 fork main blk 26 (FPW); hole: offset: 100, length: 212"
    // (+ ", compression saved: N, method: pglz" for a compressed image).
    let t: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((t[2], t[4], t[6]), ("rel", "fork", "blk"), "{line}");
    let r: Vec<u32> = t[3].split('/').map(|s| s.parse().expect("oid")).collect();
    let image = line.contains("FPW").then(|| {
        (
            !line.contains("for WAL verification"),
            number_after(line, "hole: offset:"),
            number_after(line, "length:"),
            line.contains("compression saved"),
        )
    });
    DumpedBlock {
        id: t[1]
            .trim_start_matches('#')
            .trim_end_matches(':')
            .parse()
            .expect("id"),
        rel: RelFileLocator {
            spc: r[0],
            db: r[1],
            rel: r[2],
        },
        fork: t[5].to_string(),
        block: t[7].trim_end_matches([';', ',']).parse().expect("blk"),
        image,
    }
}

/// `tot` of `len (rec/tot):     54/    54,`.
fn total_len(line: &str) -> u32 {
    let after = line.split("len (rec/tot):").nth(1).expect("len");
    let tot = after.split(',').next().and_then(|l| l.split('/').nth(1));
    tot.expect("tot").trim().parse().expect("tot")
}

fn run_waldump(bin: &Path, f: &Facts) -> Vec<Dumped> {
    let name = |s| wal::file_name(1, s, f.seg_size);
    let out = Command::new(bin)
        .arg("-b")
        .arg("-p")
        .arg(f.dir.path())
        .arg(name(f.segs.0))
        .arg(name(f.segs.1))
        .output()
        .expect("pg_waldump runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_waldump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut recs: Vec<Dumped> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("rmgr: ") {
            recs.push(Dumped {
                rmgr: rest.split_whitespace().next().unwrap_or("").to_string(),
                total_len: total_len(line),
                xid: field(line, "tx:").parse().expect("tx"),
                lsn: field(line, "lsn:").parse().expect("lsn"),
                prev: field(line, "prev").parse().expect("prev"),
                desc: line.split("desc: ").nth(1).unwrap_or("").to_string(),
                blocks: Vec::new(),
            });
        } else if line.trim_start().starts_with("blkref #") {
            let b = parse_blkref(line.trim());
            recs.last_mut()
                .expect("blkref after a record")
                .blocks
                .push(b);
        }
    }
    recs
}

/// pg_waldump's rmgr names by id (`rmgrlist.h`).
const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];
const FORKS: [&str; 4] = ["main", "fsm", "vm", "init"];

fn rel_path(rel: &RelFileLocator, fork: u8) -> String {
    let dir = match rel.spc {
        1663 => format!("base/{}", rel.db),
        1664 => "global".to_string(),
        _ => return String::new(),
    };
    let suffix = if fork == 0 {
        String::new()
    } else {
        format!("_{}", FORKS[fork as usize])
    };
    format!("{dir}/{}{suffix}", rel.rel)
}

/// Every record, every block reference: the reader and pg_waldump agree.
fn compare(major: u32, ours: &[Record], theirs: &[Dumped]) {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "PostgreSQL {major}: record counts differ"
    );
    let mut images = 0;
    for (o, t) in ours.iter().zip(theirs) {
        let at = format!("PostgreSQL {major}, record at {}", o.lsn);
        assert_eq!(
            (o.lsn, o.prev, o.xid, o.total_len),
            (t.lsn, t.prev, t.xid, t.total_len),
            "{at}"
        );
        assert_eq!(
            RMGR_NAMES.get(o.rmid as usize).copied(),
            Some(t.rmgr.as_str()),
            "{at}"
        );
        let mine: Vec<DumpedBlock> = o
            .blocks
            .iter()
            .map(|b| DumpedBlock {
                id: b.id,
                rel: b.rel,
                fork: FORKS[b.fork as usize].to_string(),
                block: b.block,
                image: b.image.map(|i| {
                    (
                        i.apply,
                        i.hole_offset,
                        i.hole_length,
                        i.compression.is_some(),
                    )
                }),
            })
            .collect();
        assert_eq!(mine, t.blocks, "{at}");
        images += mine.iter().filter(|b| b.image.is_some()).count();
        match &o.detail {
            Detail::SmgrCreate(rf) => {
                assert_eq!(
                    t.desc.trim(),
                    format!("CREATE {}", rel_path(&rf.rel, rf.fork)),
                    "{at}"
                )
            }
            Detail::SmgrTruncate { rel, block, .. } => assert!(
                t.desc
                    .starts_with(&format!("TRUNCATE {} to {block} blocks", rel_path(rel, 0))),
                "{at}: {}",
                t.desc
            ),
            Detail::DbaseCreate { db, spc, .. } => {
                assert!(t.desc.contains(&format!("{spc}/{db}")), "{at}: {}", t.desc)
            }
            Detail::DbaseDrop { db, spcs } => {
                for spc in spcs {
                    assert!(t.desc.contains(&format!("{spc}/{db}")), "{at}: {}", t.desc)
                }
            }
            Detail::Switch => assert!(t.desc.starts_with("SWITCH"), "{at}"),
            Detail::Other => {}
        }
    }
    assert!(
        images > 0,
        "PostgreSQL {major}: no full-page image compared"
    );
}

/// The workload on `c`, read with the reader, checked, and compared with pg_waldump.
fn check_cluster(major: u32, c: &Cluster) {
    let facts = workload(c);
    let recs = read_all(major, &facts);
    check_structure(major, &facts, &recs);
    let seg_mb = facts.seg_size >> 20;
    if let Some(bin) = waldump(major) {
        let dumped = run_waldump(&bin, &facts);
        compare(major, &recs, &dumped);
        eprintln!(
            "PostgreSQL {major} ({seg_mb} MB segments): {} records match pg_waldump",
            recs.len()
        );
    } else {
        eprintln!(
            "PostgreSQL {major} ({seg_mb} MB segments): {} records, structure checked (no pg_waldump {major} here)",
            recs.len()
        );
    }
}

/// Default 16 MB segments, data checksums on.
fn reader_matches_real_wal(major: u32) {
    let c = Cluster::start(
        ClusterOptions::new(major)
            .data_checksums(true)
            .conf("wal_keep_size = '2GB'")
            // No autovacuum/autoanalyze snapshot may keep VACUUM v from truncating it.
            .conf("autovacuum = off"),
    );
    check_cluster(major, &c);
}

/// 1 MB segments (initdb --wal-segsize=1), data checksums off: many segment crossings.
fn reader_matches_real_wal_1mb_segments(major: u32) {
    let base = pgbookend_testkit::temp_dir("walreader1mb");
    let pgdata = base.path().join("data");
    let mut initdb = Command::new(pgbookend_testkit::server_bin(major, "initdb"));
    initdb
        .arg("-D")
        .arg(&pgdata)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
        .args(["--no-sync", "--wal-segsize=1"])
        .current_dir("/");
    if major >= 18 {
        initdb.arg("--no-data-checksums");
    }
    pgbookend_testkit::run_as_server_user(&mut initdb);
    let out = initdb.output().expect("initdb runs");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // From here the cluster owns the directory: its Drop stops the server and removes it.
    let c = Cluster::from_existing(major, pgdata, base.keep());
    c.append_conf("wal_keep_size = '2GB'");
    c.append_conf("autovacuum = off");
    c.start_again().expect("the 1 MB-segment cluster starts");
    check_cluster(major, &c);
}

per_major!(reader_on_real_wal, reader_matches_real_wal);
per_major!(
    reader_on_real_wal_1mb_segments,
    reader_matches_real_wal_1mb_segments
);
