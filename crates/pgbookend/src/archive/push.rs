//! `archive-push %p`: check that the file is this cluster's WAL, compress it once into a
//! spool, then store it in every store (each write durable and read back) and succeed
//! only when enough stores hold it. A file already archived with the same bytes is a
//! success; the same name with other bytes is refused, and nothing is overwritten.

use super::{cluster_id, layout, ClusterId, Settings};
use crate::bundle::manifest::FileEntry;
use crate::error::{io_err, Class, Error, Result};
use crate::fsutil::Dir;
use crate::store::objects::Handle;
use pgbookend_formats::walheader;
use pgbookend_formats::walname::{WalKind, WalName};
use serde::Serialize;
use sha2::Digest;
use std::io::{Read, Write};
use std::path::Path;

/// What `archive-push` did.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The WAL file name.
    pub name: String,
    /// SHA-256 of its original bytes.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// The size of the compressed object.
    pub compressed: u64,
    /// Stores that now hold it (written by this call).
    pub stored: Vec<String>,
    /// Stores that already held it with the same bytes.
    pub already: Vec<String>,
    /// Stores that failed (fewer than `min_stores` failures leave the push successful).
    pub failed: Vec<(String, Error)>,
}

/// The file, compressed into a spool file that every store copies from.
struct Packed {
    name: WalName,
    sha256: String,
    size: u64,
    spool: tempfile::NamedTempFile,
    object: FileEntry,
}

/// Archives the WAL file at `path` (relative to the working directory, as PostgreSQL
/// gives `%p`).
pub fn push(s: &Settings, path: &Path) -> Result<Report> {
    store(s, &prepare(s, path, workers())?)
}

/// A file checked and compressed, ready for [`store`]: the first half of a push, the
/// CPU's part (the pusher compresses the next files while this one is stored).
pub(super) struct Prepared {
    id: ClusterId,
    packed: Packed,
}

/// Checks the file at `path` and compresses it into a spool file, `threads` pieces at
/// once.
pub(super) fn prepare(s: &Settings, path: &Path, threads: usize) -> Result<Prepared> {
    let name = wal_name_of(path)?;
    let id = cluster_id(&s.pgdata)?;
    let mut src = open_source(path)?;
    let packed = pack(&mut src, path, name, &id, s.level, threads.max(1))?;
    Ok(Prepared { id, packed })
}

/// Stores a prepared file in every store: the second half of a push, the I/O's part.
pub(super) fn store(s: &Settings, p: &Prepared) -> Result<Report> {
    let (id, packed) = (&p.id, &p.packed);
    let mut r = Report {
        name: packed.name.to_string(),
        sha256: packed.sha256.clone(),
        size: packed.size,
        compressed: packed.object.size,
        stored: Vec::new(),
        already: Vec::new(),
        failed: Vec::new(),
    };
    for store in &s.stores {
        match push_one(store, id, packed) {
            Ok(true) => r.stored.push(store.url()),
            Ok(false) => r.already.push(store.url()),
            Err(e) if e.class() == Class::Check => return Err(e),
            Err(e) => r.failed.push((store.url(), e)),
        }
    }
    let ok = r.stored.len() + r.already.len();
    if ok < s.min_stores {
        let mut e = Error::env(format!(
            "{} is not archived: {ok} of {} stores hold it, {} required",
            r.name,
            s.stores.len(),
            s.min_stores
        ));
        for (url, err) in &r.failed {
            e = e.hint(format!("{url}: {err}"));
        }
        return Err(e.hint(
            "PostgreSQL retries archive_command: fix the store and the backlog drains by itself",
        ));
    }
    Ok(r)
}

/// The checked WAL name of `%p`'s last component.
pub(super) fn wal_name_of(path: &Path) -> Result<WalName> {
    let last = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    WalName::parse(last).map_err(|e| {
        Error::usage(format!("archive-push {}: {e}", path.display()))
            .hint("archive_command = 'pgbookend archive-push %p' (PostgreSQL passes pg_wal/<file>)")
    })
}

/// Opens `%p` for reading: its directory as given, the file itself never through a link.
pub(super) fn open_source(path: &Path) -> Result<std::fs::File> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = Dir::open_follow(parent).map_err(|e| io_err("cannot open", parent, e))?;
    let name = path.file_name().unwrap_or_default();
    dir.open_file(name)
        .map_err(|e| crate::fsutil::nofollow_err("cannot open", path, e))
}

/// Reads as much as fits in `buf` (fewer bytes only at the end of the file).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The size of the pieces compressed in parallel, each into its own zstd frame (a
/// decoder reads concatenated frames as one stream). With [`workers`] pieces in flight,
/// memory stays near `2 * workers * CHUNK` whatever the file size.
const CHUNK: usize = 4 << 20;

/// How many pieces one push compresses at once: the CPUs, at most 4.
pub(super) fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Compresses one piece into a frame with a content checksum.
fn compress(piece: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    c.compress(piece)
}

/// Checks, hashes and compresses the file into a spool: `threads` pieces of [`CHUNK`]
/// bytes at a time are compressed on worker threads while this thread hashes them. Segments must be exactly
/// one segment long and start with this cluster's long page header; other files may not
/// be longer than a segment (what is read is bounded whatever the file is).
fn pack(
    src: &mut dyn Read,
    path: &Path,
    name: WalName,
    id: &ClusterId,
    level: i32,
    threads: usize,
) -> Result<Packed> {
    let segment_like = matches!(name.kind(), WalKind::Segment | WalKind::Partial);
    let spool = tempfile::NamedTempFile::new().map_err(|e| {
        Error::env(format!(
            "cannot create a spool file in {}: {e}",
            std::env::temp_dir().display()
        ))
    })?;
    let werr = |e: std::io::Error| io_err("cannot write", spool.path(), e);
    let mut out = std::io::BufWriter::new(spool.reopen().map_err(werr)?);
    let (mut sha, mut zsha) = (sha2::Sha256::new(), sha2::Sha256::new());
    let (mut total, mut packed) = (0u64, 0u64);
    let mut pieces: Vec<Vec<u8>> = (0..threads).map(|_| vec![0u8; CHUNK]).collect();
    loop {
        let mut lens = Vec::new();
        for buf in pieces.iter_mut() {
            let n = read_full(src, buf).map_err(|e| io_err("cannot read", path, e))?;
            if total == 0 && lens.is_empty() && segment_like {
                check_header(&buf[..n], path, id)?;
            }
            total += n as u64;
            if total > u64::from(id.seg_size) {
                return Err(Error::new(Class::Check, format!("{} is larger than a WAL segment ({} bytes): not a WAL file of this cluster", path.display(), id.seg_size)));
            }
            if n == 0 {
                break;
            }
            lens.push(n);
            if n < CHUNK {
                break;
            }
        }
        if lens.is_empty() {
            break;
        }
        let frames = std::thread::scope(|scope| {
            let jobs: Vec<_> = pieces
                .iter()
                .zip(&lens)
                .map(|(b, &n)| scope.spawn(move || compress(&b[..n], level)))
                .collect();
            for (b, &n) in pieces.iter().zip(&lens) {
                sha.update(&b[..n]);
            }
            jobs.into_iter()
                .map(|j| {
                    j.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("compression thread panicked"))
                    })
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .map_err(werr)?;
        for f in &frames {
            zsha.update(f);
            packed += f.len() as u64;
            out.write_all(f).map_err(werr)?;
        }
        if lens.len() < pieces.len() || lens.last() != Some(&CHUNK) {
            break;
        }
    }
    if segment_like && total != u64::from(id.seg_size) {
        return Err(Error::new(
            Class::Check,
            format!(
                "{} has {total} bytes; a WAL segment of this cluster has {}",
                path.display(),
                id.seg_size
            ),
        )
        .hint("a short segment is damaged or still being written: it is not archived"));
    }
    out.flush().map_err(werr)?;
    Ok(Packed {
        name,
        sha256: hex::encode(sha.finalize()),
        size: total,
        object: FileEntry {
            size: packed,
            sha256: hex::encode(zsha.finalize()),
        },
        spool,
    })
}

/// Refuses a segment that another cluster, another major or another segment size wrote.
pub(super) fn check_header(first: &[u8], path: &Path, id: &ClusterId) -> Result<()> {
    let bad = |why: String| {
        Error::new(Class::Check, format!("{}: {why}", path.display()))
            .hint("only this cluster's WAL is archived under its system identifier; check archive_command and the data directory")
    };
    let h = walheader::parse(first).map_err(|e| bad(e.to_string()))?;
    if h.system_identifier != id.system_identifier {
        return Err(bad(format!(
            "the segment belongs to the cluster with system identifier {}, not this one ({})",
            h.system_identifier, id.system_identifier
        )));
    }
    if h.major != Some(id.major) || h.seg_size != id.seg_size {
        return Err(bad(format!(
            "the segment's header (page magic {:#06x}, segment size {}) does not match this PostgreSQL {} cluster (segment size {})",
            h.magic, h.seg_size, id.major, id.seg_size
        )));
    }
    Ok(())
}

/// Puts the packed file into one store. `Ok(true)` when written, `Ok(false)` when the
/// store already had the same bytes; a store holding other bytes under the name is a
/// check error naming both hashes.
fn push_one(store: &crate::store::Store, id: &ClusterId, p: &Packed) -> Result<bool> {
    let h = Handle::open(store)?;
    let dir = layout::dir_of(id.system_identifier, &p.name);
    let objects = h.list(&dir)?;
    let versions = layout::versions_of(&p.name, objects.iter().map(|o| o.name.as_str()));
    if versions.contains(&p.sha256) {
        return Ok(false);
    }
    if let Some(other) = versions.first() {
        return Err(Error::new(
            Class::Check,
            format!(
                "{} is already archived in {} with different content (SHA-256 {other}); this file has SHA-256 {}: refusing to overwrite",
                p.name,
                store.url(),
                p.sha256
            ),
        )
        .hint("two clusters with the same system identifier, or a damaged pg_wal: find out which copy is right before archiving anything else under this name"));
    }
    let object = layout::object_name(&p.name, &p.sha256);
    h.put_file(&dir, &object, p.spool.path(), &p.object)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of several pieces becomes several frames that unpack, through the same
    /// streaming decoder `archive-get` uses, to the original bytes.
    #[test]
    fn pieces_unpack_as_one_stream() {
        let data: Vec<u8> = (0..(2 * CHUNK + 12345) as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x0F)
            .collect();
        let id = ClusterId {
            system_identifier: 1,
            major: 16,
            seg_size: 16 << 20,
        };
        let name = WalName::parse("00000002.history").unwrap();
        let p = pack(&mut &data[..], Path::new("x"), name, &id, 3, 2).unwrap();
        assert_eq!(p.size, data.len() as u64);
        assert_eq!(p.sha256, hex::encode(sha2::Sha256::digest(&data)));
        let packed = std::fs::read(p.spool.path()).unwrap();
        assert_eq!(packed.len() as u64, p.object.size);
        assert_eq!(p.object.sha256, hex::encode(sha2::Sha256::digest(&packed)));
        let mut dec = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
        dec.write_all(&packed).unwrap();
        dec.flush().unwrap();
        assert!(dec.into_inner() == data);
        // A file longer than a segment is refused; a short segment too.
        let small = ClusterId {
            seg_size: 1 << 20,
            ..id
        };
        let name = WalName::parse("00000002.history").unwrap();
        assert!(pack(&mut &data[..], Path::new("x"), name, &small, 3, 1).is_err());
        let seg = WalName::parse("000000010000000000000001").unwrap();
        let r = pack(&mut &data[..100], Path::new("x"), seg, &id, 3, 2);
        assert!(matches!(r, Err(e) if e.class() == Class::Check));
    }
}
