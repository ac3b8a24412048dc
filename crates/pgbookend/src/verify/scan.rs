//! Reading the copy's relation files on all cores and judging every page.
//!
//! The file list names the files; each is opened with `O_NOFOLLOW` through a directory
//! descriptor opened without following links (a tablespace is read where `prepare` finds
//! it: the copy's own directory, or the `--tablespace` remap; a link in the copy is never
//! followed). Files are cut into jobs of at most [`JOB_BYTES`], taken from a shared queue
//! by one thread per core, and read in [`CHUNK`] pieces with `pread`: memory is one chunk
//! per thread plus the findings, whatever the files claim.

use crate::error::{Error, Result};
use crate::fsutil::Dir;
use crate::verify::blockset::Window;
use pgbookend_formats::page::{self, Verdict, BLCKSZ};
use pgbookend_formats::walreader::RelFileLocator;
use pgbookend_formats::Lsn;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes read at once.
pub const CHUNK: usize = 1 << 20;
/// Bytes of one job (a piece of one file).
const JOB_BYTES: u64 = 32 << 20;
/// Corrupt pages named in the report (the rest are counted).
pub const MAX_NAMED: usize = 100;
/// `pg_default` and `pg_global`.
const DEFAULTTABLESPACE_OID: u32 = 1663;
const GLOBALTABLESPACE_OID: u32 = 1664;

/// What the scan needs to know about the copy and the cluster.
pub struct ScanInput<'a> {
    pub pgdata: &'a Path,
    /// `--tablespace OID=PATH` remaps.
    pub remap: &'a [(u32, PathBuf)],
    pub checksums: bool,
    pub relseg_size: u32,
    pub stop: Lsn,
    /// Percentage of each file's chunks read (100: all).
    pub percent: u8,
}

/// One relation segment file named by the file list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    /// The tablespace whose directory holds it (`None`: PGDATA).
    pub tablespace: Option<u32>,
    /// Its path below that directory.
    pub below: String,
    pub rel: RelFileLocator,
    pub fork: u8,
    pub segno: u32,
}

/// Parses a file-list path into a relation segment file, or `None` for any other file.
pub fn parse_rel_path(p: &str) -> Option<RelPath> {
    let parts: Vec<&str> = p.split('/').collect();
    let (tablespace, spc, db, name, below) = match parts.as_slice() {
        ["global", n] => (None, GLOBALTABLESPACE_OID, 0, *n, p.to_string()),
        ["base", d, n] => (None, DEFAULTTABLESPACE_OID, oid(d)?, *n, p.to_string()),
        ["pg_tblspc", t, v, d, n] if v.starts_with("PG_") => {
            let t = oid(t)?;
            (Some(t), t, oid(d)?, *n, format!("{v}/{d}/{n}"))
        }
        _ => return None,
    };
    let (stem, segno) = match name.split_once('.') {
        Some((s, g)) => (s, oid(g)?),
        None => (name, 0),
    };
    let (relno, fork) = match stem.split_once('_') {
        Some((r, "fsm")) => (r, 1),
        Some((r, "vm")) => (r, 2),
        Some((r, "init")) => (r, 3),
        Some(_) => return None,
        None => (stem, 0),
    };
    Some(RelPath {
        tablespace,
        below,
        rel: RelFileLocator {
            spc,
            db,
            rel: oid(relno).filter(|r| *r != 0)?,
        },
        fork,
        segno,
    })
}

/// A decimal OID written as PostgreSQL writes it (digits, no sign, no leading zero).
fn oid(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// A file to read: its directory (index into the scan's directories), name and size.
struct Target {
    path: String,
    dir: usize,
    name: OsString,
    rel: RelPath,
    size: u64,
}

/// A piece of a file: pages `first..first + count` of target `file`.
struct Job {
    file: usize,
    first: u64,
    count: u64,
}

/// A page that is bad and that the window's WAL does not touch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Corrupt {
    /// The file, as the file list names it.
    pub file: String,
    /// Page number within the file.
    pub page: u64,
    /// Block number within the relation fork.
    pub block: u32,
    /// What was found.
    pub found: String,
}

/// A good page written after the backup's stop.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Late {
    pub file: String,
    pub page: u64,
    pub block: u32,
    pub lsn: String,
}

/// What the scan found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub files: u64,
    pub pages: u64,
    pub bytes: u64,
    pub new_pages: u64,
    pub torn_covered: u64,
    pub corrupt_count: u64,
    pub corrupt: Vec<(usize, Corrupt)>,
    pub late_count: u64,
    pub late_first: Option<(usize, Late)>,
    pub unlogged_files: u64,
    pub threads: usize,
    /// What was not read, and why.
    pub skipped: Vec<String>,
}

impl Outcome {
    fn merge(&mut self, o: Outcome) {
        self.pages += o.pages;
        self.bytes += o.bytes;
        self.new_pages += o.new_pages;
        self.torn_covered += o.torn_covered;
        self.corrupt_count += o.corrupt_count;
        self.corrupt.extend(o.corrupt);
        self.late_count += o.late_count;
        if let Some(l) = o.late_first {
            if self
                .late_first
                .as_ref()
                .is_none_or(|f| (l.0, l.1.page) < (f.0, f.1.page))
            {
                self.late_first = Some(l);
            }
        }
        self.skipped.extend(o.skipped);
    }
}

/// Reads and judges every page of every relation file `list` names.
pub fn scan(input: &ScanInput, list: &Path, window: &Window) -> Result<Outcome> {
    let (dirs, targets, mut out) = targets(input, list)?;
    let jobs = jobs(&targets, input.percent);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 64)
        .min(jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let work = Work {
        input,
        window,
        dirs: &dirs,
        targets: &targets,
        jobs: &jobs,
        next: &next,
    };
    let results: Vec<Option<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| work.run())).collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    // A reader that died took its findings with it: no verdict rather than a false "ok".
    let results: Vec<Outcome> = results
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| Error::internal("a page reader thread failed"))?;
    for r in results {
        out.merge(r);
    }
    out.corrupt.sort_by_key(|(f, c)| (*f, c.page));
    out.corrupt.truncate(MAX_NAMED);
    out.files = targets.len() as u64;
    out.threads = threads;
    Ok(out)
}

/// The directories to read from, the files with their sizes, and what was left out.
fn targets(input: &ScanInput, list: &Path) -> Result<(Vec<Dir>, Vec<Target>, Outcome)> {
    let root = Dir::open_follow(input.pgdata)
        .map_err(|e| crate::error::io_err("open", input.pgdata, e))?;
    let mut out = Outcome::default();
    let mut rels = Vec::new();
    let mut unlogged: HashSet<RelFileLocator> = HashSet::new();
    for p in crate::bundle::filelist::read(list)? {
        let p = p?;
        if let Some(r) = parse_rel_path(&p) {
            if r.fork == 3 {
                unlogged.insert(r.rel);
            }
            rels.push((p, r));
        }
    }
    let mut roots: HashMap<Option<u32>, Option<Dir>> = HashMap::new();
    let mut dirs: Vec<Dir> = Vec::new();
    let mut dir_index: HashMap<(Option<u32>, String), usize> = HashMap::new();
    let mut targets = Vec::new();
    for (path, r) in rels {
        if r.fork != 3 && unlogged.contains(&r.rel) {
            out.unlogged_files += 1; // reset from its init fork by recovery
            continue;
        }
        let base = roots
            .entry(r.tablespace)
            .or_insert_with(|| tablespace_root(input, &root, r.tablespace, &mut out.skipped));
        let Some(base) = base else { continue };
        let (parent, name) = r.below.rsplit_once('/').unwrap_or(("", &r.below));
        let key = (r.tablespace, parent.to_string());
        let di = match dir_index.get(&key) {
            Some(i) => *i,
            None => match base.open_beneath(Path::new(parent)) {
                Ok(d) => {
                    dirs.push(d);
                    dir_index.insert(key, dirs.len() - 1);
                    dirs.len() - 1
                }
                Err(_) => continue, // missing: the file-list check names it
            },
        };
        let size = match dirs[di].open_file(name).and_then(|f| f.metadata()) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.skipped
                    .push(format!("pages of {path} not checked: {e}"));
                continue;
            }
        };
        targets.push(Target {
            path,
            dir: di,
            name: name.into(),
            rel: r,
            size,
        });
    }
    Ok((dirs, targets, out))
}

/// Where tablespace `ts`'s files are, as `prepare` finds them; `None` (with a note) when
/// only a link in the copy leads there.
fn tablespace_root(
    input: &ScanInput,
    root: &Dir,
    ts: Option<u32>,
    skipped: &mut Vec<String>,
) -> Option<Dir> {
    let Some(oid) = ts else {
        return root.open_beneath(Path::new(".")).ok();
    };
    let remap = input.remap.iter().find(|(o, _)| *o == oid).map(|x| &x.1);
    let own = root
        .open_dir("pg_tblspc")
        .and_then(|d| d.open_dir(oid.to_string()));
    match (own, remap) {
        (Ok(d), Some(to)) if d.entries().map(|e| e.is_empty()).unwrap_or(true) => {
            Dir::open_follow(to).ok()
        }
        (Ok(d), _) => Some(d),
        (Err(_), Some(to)) => Dir::open_follow(to).ok(),
        (Err(_), None) => {
            skipped.push(format!("pages of tablespace {oid} not checked: pg_tblspc/{oid} of the copy is a link (never followed); give --tablespace {oid}=PATH to check them"));
            None
        }
    }
}

/// Cuts the files into jobs; with sampling, keeps a deterministic share of the chunks.
fn jobs(targets: &[Target], percent: u8) -> Vec<Job> {
    let per_chunk = (CHUNK / BLCKSZ) as u64;
    let per_job = JOB_BYTES / BLCKSZ as u64;
    let mut jobs = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let pages = t.size.div_ceil(BLCKSZ as u64);
        if percent >= 100 {
            let mut first = 0;
            while first < pages {
                let count = per_job.min(pages - first);
                jobs.push(Job {
                    file: i,
                    first,
                    count,
                });
                first += count;
            }
            continue;
        }
        let chunks = pages.div_ceil(per_chunk);
        for c in 0..chunks {
            if sampled(&t.rel, c, percent) {
                let first = c * per_chunk;
                jobs.push(Job {
                    file: i,
                    first,
                    count: per_chunk.min(pages - first),
                });
            }
        }
    }
    jobs
}

/// Whether chunk `c` of a file is in the sample: a hash of the relation, fork, segment
/// and chunk, so that the same copy gives the same sample.
fn sampled(r: &RelPath, c: u64, percent: u8) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in [
        u64::from(r.rel.spc),
        u64::from(r.rel.db),
        u64::from(r.rel.rel),
        u64::from(r.fork),
        u64::from(r.segno),
        c,
    ] {
        h = (h ^ v).wrapping_mul(0x0100_0000_01b3);
        h ^= h >> 29;
    }
    h % 100 < u64::from(percent)
}

/// What every worker shares.
struct Work<'a> {
    input: &'a ScanInput<'a>,
    window: &'a Window,
    dirs: &'a [Dir],
    targets: &'a [Target],
    jobs: &'a [Job],
    next: &'a AtomicUsize,
}

impl Work<'_> {
    /// One worker: takes jobs from the queue until none is left.
    fn run(&self) -> Outcome {
        let mut out = Outcome::default();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = self.jobs.get(i) else { break };
            if let Err(e) = self.job(job, &mut buf, &mut out) {
                let t = &self.targets[job.file];
                out.skipped
                    .push(format!("pages of {} not checked: {}", t.path, e.message));
            }
        }
        out
    }

    fn job(&self, job: &Job, buf: &mut [u8], out: &mut Outcome) -> Result<()> {
        let t = &self.targets[job.file];
        let f = self.dirs[t.dir]
            .open_file(&t.name)
            .map_err(|e| Error::env(e.to_string()))?;
        let per_chunk = (CHUNK / BLCKSZ) as u64;
        let mut page = job.first;
        let end = job.first + job.count;
        while page < end {
            let want = (per_chunk.min(end - page) as usize) * BLCKSZ;
            let n = read_full(&f, &mut buf[..want], page * BLCKSZ as u64)
                .map_err(|e| Error::env(e.to_string()))?;
            if n == 0 {
                break; // the file shrank since it was sized
            }
            self.judge(job, page, &buf[..n], out)?;
            out.bytes += n as u64;
            page += n.div_ceil(BLCKSZ) as u64;
            if n < want {
                break;
            }
        }
        Ok(())
    }

    /// Judges the pages of `data`, which starts at page `first` of the file.
    fn judge(&self, job: &Job, first: u64, data: &[u8], out: &mut Outcome) -> Result<()> {
        let input = self.input;
        let t = &self.targets[job.file];
        let start = page::block_number(t.rel.segno, input.relseg_size, first)
            .ok_or_else(|| Error::env(format!("{} is longer than a relation segment", t.path)))?;
        let pages = page::check_pages(data, start, input.checksums)
            .map_err(|e| Error::env(format!("{}: {e}", t.path)))?;
        for (k, pc) in pages.enumerate() {
            out.pages += 1;
            let at = first + k as u64;
            match pc.verdict {
                Verdict::New => out.new_pages += 1,
                Verdict::Ok => {
                    if pc.lsn > input.stop {
                        out.late_count += 1;
                        if out.late_first.is_none() {
                            out.late_first = Some((
                                job.file,
                                Late {
                                    file: t.path.clone(),
                                    page: at,
                                    block: pc.block,
                                    lsn: pc.lsn.to_string(),
                                },
                            ));
                        }
                    }
                }
                bad => {
                    if self.window.touches(&t.rel.rel, t.rel.fork, pc.block) {
                        out.torn_covered += 1;
                    } else {
                        out.corrupt_count += 1;
                        if out.corrupt.len() < MAX_NAMED {
                            out.corrupt.push((
                                job.file,
                                Corrupt {
                                    file: t.path.clone(),
                                    page: at,
                                    block: pc.block,
                                    found: describe(bad),
                                },
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a bad page's verdict says, for the report.
fn describe(v: Verdict) -> String {
    match v {
        Verdict::BadChecksum { stored, computed } => {
            format!("checksum {stored:#06X} stored, {computed:#06X} computed")
        }
        Verdict::BadHeader(p) => format!("bad page header: {p}"),
        Verdict::Partial(n) => format!("the file ends with a partial page of {n} bytes"),
        Verdict::Ok | Verdict::New => "good".into(),
    }
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_paths() {
        let r = parse_rel_path("base/5/16384_vm.2").unwrap();
        assert_eq!(
            (r.rel.spc, r.rel.db, r.rel.rel, r.fork, r.segno),
            (1663, 5, 16384, 2, 2)
        );
        let r = parse_rel_path("global/1262").unwrap();
        assert_eq!((r.rel.spc, r.rel.db, r.fork, r.segno), (1664, 0, 0, 0));
        let r = parse_rel_path("pg_tblspc/16390/PG_15_202209061/5/16391_fsm").unwrap();
        assert_eq!(r.tablespace, Some(16390));
        assert_eq!(r.below, "PG_15_202209061/5/16391_fsm");
        assert_eq!((r.rel.spc, r.fork), (16390, 1));
        for other in [
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "base/5/t3_16384",
            "global/pg_control",
            "base/5/16384_x",
            "base/5/016384",
            "base/pgsql_tmp/1",
            "pg_wal/000000010000000000000001",
        ] {
            assert_eq!(parse_rel_path(other), None, "{other}");
        }
    }

    #[test]
    fn sample_is_deterministic_and_near_its_share() {
        let r = parse_rel_path("base/5/16384").unwrap();
        let n = (0..10_000).filter(|c| sampled(&r, *c, 10)).count();
        assert!((800..1200).contains(&n), "{n}");
        assert_eq!(sampled(&r, 7, 10), sampled(&r, 7, 10));
    }
}
