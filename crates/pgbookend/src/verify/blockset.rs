//! The WAL of a backup's window turned into the set of blocks and relations it touches.
//!
//! Read from the bundle (`--wal collect`) or from an archive directory holding the
//! segments plain or zstd-compressed, segment by segment (one segment buffer, capped at
//! the segment size), from the backup's start LSN (the redo point of its checkpoint) up
//! to its stop LSN. Every block reference of every record before stop goes into a hash
//! set; a relation created or truncated, and a database created or dropped, in the
//! window counts as touched in every block.

use crate::bundle::manifest::WalMode;
use crate::bundle::read;
use crate::bundle::walcollect;
use crate::error::{Class, Error, Result};
use crate::verify::CopyToCheck;
use pgbookend_formats::walreader::{Detail, Record, RelFileLocator, WalReader};
use pgbookend_formats::{wal, Lsn};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What the WAL of the window touches.
#[derive(Debug, Default)]
pub struct Window {
    /// The backup's start LSN (where reading began).
    pub start: Lsn,
    /// The backup's stop LSN: records from here on are not part of the window.
    pub stop: Lsn,
    /// Records read before stop.
    pub records: u64,
    /// Segments read.
    pub segments: u64,
    blocks: HashSet<(RelFileLocator, u8, u32)>,
    rels: HashSet<RelFileLocator>,
    dbs: HashSet<(u32, u32)>,
}

impl Window {
    /// An empty window from `start` to `stop` (tests, and the base of [`read_window`]).
    pub fn new(start: Lsn, stop: Lsn) -> Window {
        Window {
            start,
            stop,
            ..Window::default()
        }
    }

    /// Whether replay of the window rewrites block `block` of fork `fork` of `rel`.
    pub fn touches(&self, rel: &RelFileLocator, fork: u8, block: u32) -> bool {
        self.touches_rel(rel) || self.blocks.contains(&(*rel, fork, block))
    }

    /// Whether the window created, truncated or (through its database) recreated `rel`.
    pub fn touches_rel(&self, rel: &RelFileLocator) -> bool {
        self.rels.contains(rel) || self.dbs.contains(&(rel.spc, rel.db))
    }

    /// Block references collected (distinct blocks).
    pub fn block_count(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Relations and databases touched as a whole.
    pub fn whole_count(&self) -> u64 {
        (self.rels.len() + self.dbs.len()) as u64
    }

    /// Bytes the sets hold, roughly (hash set slots with their keys).
    pub fn approx_bytes(&self) -> u64 {
        let slot = std::mem::size_of::<(RelFileLocator, u8, u32)>() as u64 + 1;
        self.blocks.capacity() as u64 * slot
            + (self.rels.capacity() + self.dbs.capacity()) as u64 * 13
    }

    /// Takes in one record: ignored from stop on.
    pub fn add(&mut self, r: &Record) {
        if r.lsn >= self.stop {
            return;
        }
        self.records += 1;
        for b in &r.blocks {
            self.blocks.insert((b.rel, b.fork, b.block));
        }
        match &r.detail {
            Detail::SmgrCreate(f) => {
                self.rels.insert(f.rel);
            }
            Detail::SmgrTruncate { rel, .. } => {
                self.rels.insert(*rel);
            }
            Detail::DbaseCreate { db, spc, .. } => {
                self.dbs.insert((*spc, *db));
            }
            Detail::DbaseDrop { db, spcs } => {
                for s in spcs {
                    self.dbs.insert((*s, *db));
                }
            }
            Detail::Other | Detail::Switch => {}
        }
    }
}

/// Where the segments of the window are read from.
enum Source {
    Bundle,
    Archive(PathBuf),
}

/// Reads the WAL of the window of `copy`'s backup; `None` when it is not readable here
/// (no WAL in the bundle and no archive directory, or an archive compressed with a method
/// pgbookend does not read).
pub fn read_window(copy: &CopyToCheck) -> Result<Option<Window>> {
    let m = copy.manifest;
    let archive = copy.archive;
    let bad = |what: String| Error::new(Class::Check, what);
    let start = copy
        .start
        .ok_or_else(|| bad("the bundle has no backup_label".into()))?;
    let stop: Lsn = m
        .stop_lsn
        .parse()
        .map_err(|_| bad(format!("stop_lsn {:?} is not an LSN", m.stop_lsn)))?;
    let source = if m.mode() == Some(WalMode::Collect) {
        Source::Bundle
    } else {
        let dir = archive
            .map(Path::to_path_buf)
            .or_else(|| m.archive_dir.as_ref().map(PathBuf::from));
        match dir.filter(|d| d.is_dir()) {
            Some(d) => Source::Archive(d),
            None => return Ok(None),
        }
    };
    let seg_size = m.wal_segment_size;
    // One file per segment number: after a timeline switch, the newer timeline's.
    let mut segs: BTreeMap<u64, (u32, &crate::bundle::manifest::WalEntry)> = BTreeMap::new();
    for w in &m.wal {
        if let Some((tli, segno)) = wal::parse_file_name(&w.name, seg_size) {
            if segs.get(&segno).is_none_or(|(t, _)| *t < tli) {
                segs.insert(segno, (tli, w));
            }
        }
    }
    let mut reader = WalReader::new(m.pg_major, seg_size, start)
        .map_err(|e| bad(format!("cannot read the WAL: {e}")))?;
    let mut window = Window::new(start, stop);
    let mut buf: Vec<u8> = Vec::new();
    let mut records = Vec::new();
    let first = wal::segno(start, seg_size);
    for (segno, (_, entry)) in segs.range(first..) {
        let at = wal::segment_start(*segno, seg_size);
        if at >= stop || reader.position() >= stop {
            break;
        }
        buf.clear();
        if !read_segment(
            &source,
            copy.bundle_dir,
            entry,
            u64::from(seg_size),
            &mut buf,
        )? {
            return Ok(None);
        }
        window.segments += 1;
        let fed = reader.feed(at, &buf, &mut records);
        for r in records.drain(..) {
            window.add(&r);
        }
        if let Err(e) = fed {
            if e.lsn < stop {
                return Err(bad(format!("WAL file {}: {e}", entry.name)));
            }
            break;
        }
        if let Some(end) = reader.end_of_wal() {
            if end < stop {
                return Err(bad(format!(
                    "the WAL ends at {end}, before the backup's stop {stop}"
                )));
            }
            break;
        }
    }
    if reader.position() < stop {
        return Err(bad(format!(
            "the WAL of the window stops at {}, before the backup's stop {stop}: a segment is missing",
            reader.position()
        )));
    }
    Ok(Some(window))
}

/// Reads one segment into `buf` (never more than `limit` bytes); false when the archive
/// holds it in a form pgbookend does not decompress.
fn read_segment(
    source: &Source,
    bundle_dir: &Path,
    entry: &crate::bundle::manifest::WalEntry,
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<bool> {
    let io = |e: std::io::Error| Error::new(Class::Check, format!("WAL file {}: {e}", entry.name));
    match source {
        Source::Bundle => {
            let stored = entry.stored.as_deref().ok_or_else(|| {
                Error::new(
                    Class::Check,
                    format!("WAL file {} is not stored in the bundle", entry.name),
                )
            })?;
            read::copy_wal(bundle_dir, stored, limit, buf).map_err(io)?;
        }
        Source::Archive(dir) => {
            let Some(name) = walcollect::find_in_archive(dir, &entry.name) else {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("not in {}", dir.display()),
                )));
            };
            let f = read::open_in(dir, &name).map_err(io)?;
            if name == entry.name {
                f.take(limit + 1).read_to_end(buf).map_err(io)?;
            } else if name.ends_with(".zst") || name.ends_with(".zstd") {
                let dec = read::bounded_decoder(f).map_err(io)?;
                let mut w = CappedWriter { out: buf, limit };
                std::io::copy(&mut dec.take(limit + 1), &mut w).map_err(io)?;
            } else {
                return Ok(false);
            }
            if buf.len() as u64 > limit {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("larger than a segment of {limit} bytes"),
                )));
            }
        }
    }
    Ok(true)
}

/// A writer into a vector that refuses to grow past `limit` (+1 to detect overlong input).
struct CappedWriter<'a> {
    out: &'a mut Vec<u8>,
    limit: u64,
}

impl Write for CappedWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.out.len() as u64 + b.len() as u64 > self.limit + 1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "larger than a WAL segment",
            ));
        }
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbookend_formats::walreader::{BlockRef, RelationFork};

    fn rel(r: u32) -> RelFileLocator {
        RelFileLocator {
            spc: 1663,
            db: 5,
            rel: r,
        }
    }

    fn record(lsn: u64, blocks: Vec<BlockRef>, detail: Detail) -> Record {
        Record {
            lsn: Lsn(lsn),
            end: Lsn(lsn + 50),
            prev: Lsn(0),
            xid: 0,
            rmid: 0,
            info: 0,
            total_len: 50,
            blocks,
            main_data_len: 0,
            origin: None,
            toplevel_xid: None,
            detail,
        }
    }

    #[test]
    fn blocks_relations_and_databases_before_stop() {
        let mut w = Window::new(Lsn(100), Lsn(1000));
        let b = BlockRef {
            id: 0,
            rel: rel(10),
            fork: 0,
            block: 7,
            will_init: false,
            data_len: 0,
            image: None,
        };
        w.add(&record(200, vec![b], Detail::Other));
        w.add(&record(
            300,
            vec![],
            Detail::SmgrCreate(RelationFork {
                rel: rel(11),
                fork: 0,
            }),
        ));
        w.add(&record(
            400,
            vec![],
            Detail::DbaseCreate {
                db: 9,
                spc: 1663,
                source: None,
            },
        ));
        // From stop on, nothing counts.
        w.add(&record(
            1000,
            vec![BlockRef { block: 8, ..b }],
            Detail::Other,
        ));
        assert!(w.touches(&rel(10), 0, 7));
        assert!(!w.touches(&rel(10), 0, 8));
        assert!(!w.touches(&rel(10), 1, 7));
        assert!(w.touches(&rel(11), 2, 12345));
        let in_new_db = RelFileLocator {
            spc: 1663,
            db: 9,
            rel: 1,
        };
        assert!(w.touches(&in_new_db, 0, 3));
        assert_eq!((w.records, w.block_count(), w.whole_count()), (3, 1, 2));
    }
}
