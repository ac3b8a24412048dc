//! Fetching a built-in backup's objects for `restore`: `jobs` threads each take the next
//! object, read it whole (bounded by its stored size), check its size and SHA-256 BEFORE
//! any byte of it is written, then decompress it as a stream and write each piece at its
//! offset into its file, opened beneath its root without following a link.

use super::format::{Compression, Index, Object};
use crate::error::{io_err, Class, Error, Result};
use crate::fsutil::Dir;
use crate::store::objects::Handle;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The copy's own pg_control: never restored from the store (prepare installs the
/// bundle's, taken after stop).
pub const CONTROL: &str = "global/pg_control";

/// The largest stored object accepted: an object holds at most `CHUNK_BYTES`, and zstd
/// adds far less than an eighth to incompressible data. Bounds the memory of each job.
pub const MAX_STORED_BYTES: u64 = super::format::CHUNK_BYTES + super::format::CHUNK_BYTES / 8;

/// Where the entries of the index go: PGDATA, and each tablespace's directory (entries
/// `pg_tblspc/<oid>/…` are written beneath it).
pub struct Roots {
    pub pgdata: Dir,
    pub tablespaces: BTreeMap<u32, Dir>,
}

impl Roots {
    /// The root an index path is written beneath, and the path below that root; `None`
    /// for `pg_tblspc/<oid>` itself (the link) or a tablespace without a root.
    pub fn locate<'a>(&'a self, path: &'a str) -> Option<(&'a Dir, &'a str)> {
        match tablespace_of(path) {
            Some((oid, rest)) => self.tablespaces.get(&oid).map(|d| (d, rest)),
            None if path.starts_with("pg_tblspc/") && tablespace_oid(path).is_some() => None,
            None => Some((&self.pgdata, path)),
        }
    }
}

/// `pg_tblspc/<oid>/rest` as `(oid, rest)`.
pub fn tablespace_of(path: &str) -> Option<(u32, &str)> {
    let r = path.strip_prefix("pg_tblspc/")?;
    let (oid, rest) = r.split_once('/')?;
    Some((oid.parse().ok()?, rest))
}

/// The OID of the link entry `pg_tblspc/<oid>`.
pub fn tablespace_oid(path: &str) -> Option<u32> {
    path.strip_prefix("pg_tblspc/")
        .filter(|o| o.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// Opens the regular file `rel` below `root` for writing: no link is followed on the way
/// or at the end, and anything but a regular file is refused.
pub fn open_write(root: &Dir, rel: &str) -> io::Result<File> {
    let rel = Path::new(rel);
    let parent = root.open_beneath(rel.parent().unwrap_or(Path::new("")))?;
    let name = rel.file_name().unwrap_or(OsStr::new(""));
    let c = crate::fsutil::component(name)?;
    let flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: openat on a descriptor we hold with a valid C string.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    if crate::fsutil::kind(&crate::fsutil::fstat(f.as_raw_fd())?) != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// Runs `f(0..n)` on `jobs` threads; the first failure stops the others and is returned.
pub fn par_each(n: usize, jobs: usize, f: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if failed.load(Ordering::Relaxed) || i >= n {
                    break;
                }
                if let Err(e) = f(i) {
                    failed.store(true, Ordering::Relaxed);
                    let mut g = first_err.lock().unwrap_or_else(|p| p.into_inner());
                    g.get_or_insert(e);
                    break;
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What the fetch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fetched {
    pub objects: u64,
    pub stored_bytes: u64,
    pub written_bytes: u64,
}

/// Fetches the objects `wanted` (indexes into `ix.objects`) with `jobs` threads and writes
/// the pieces of the files `write` says yes to. The first failure stops every thread.
pub fn fetch_all(
    handle: &Handle,
    ix: &Index,
    roots: &Roots,
    wanted: &[usize],
    write: &(dyn Fn(u32) -> bool + Sync),
    jobs: usize,
) -> Result<Fetched> {
    let (objects, stored, written) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let dir = format!("{}/{}", super::format::DATA_DIR, ix.id);
    par_each(wanted.len(), jobs, &|n| {
        let o = &ix.objects[wanted[n]];
        let w = fetch_one(handle, &dir, ix, o, roots, write)?;
        objects.fetch_add(1, Ordering::Relaxed);
        stored.fetch_add(o.stored_size, Ordering::Relaxed);
        written.fetch_add(w, Ordering::Relaxed);
        Ok(())
    })?;
    Ok(Fetched {
        objects: objects.into_inner(),
        stored_bytes: stored.into_inner(),
        written_bytes: written.into_inner(),
    })
}

/// A writer that refuses to grow past `cap` bytes.
struct Capped {
    buf: Vec<u8>,
    cap: u64,
}

impl Write for Capped {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.buf.len() as u64 + b.len() as u64 > self.cap {
            return Err(io::Error::other("the object is larger than the index says"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads an object whole into memory, at most `cap` bytes (`None`: it does not exist).
pub fn read_capped(handle: &Handle, dir: &str, name: &str, cap: u64) -> Result<Option<Vec<u8>>> {
    // Room for a whole object at once (no regrowth copies), never more than one object's.
    let mut w = Capped {
        buf: Vec::with_capacity(cap.min(MAX_STORED_BYTES) as usize),
        cap,
    };
    if handle.get_into(dir, name, &mut w)? {
        Ok(Some(w.buf))
    } else {
        Ok(None)
    }
}

/// The files an object holds, for messages.
fn files_of(ix: &Index, o: &Object) -> String {
    let mut names: Vec<&str> = o
        .pieces
        .iter()
        .map(|p| ix.entries[p.entry as usize].path.as_str())
        .collect();
    names.dedup();
    let more = names.len().saturating_sub(5);
    names.truncate(5);
    let mut s = names.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// One object: fetched, checked, then written piece by piece. Returns the bytes written.
fn fetch_one(
    handle: &Handle,
    dir: &str,
    ix: &Index,
    o: &Object,
    roots: &Roots,
    write: &(dyn Fn(u32) -> bool + Sync),
) -> Result<u64> {
    let loc = handle.location(dir, &o.name);
    let damaged = |why: String| {
        Error::new(
            Class::Check,
            format!("stored object {loc} {why}; it holds {}", files_of(ix, o)),
        )
        .hint(
            "the stored backup is damaged: restore another backup, or this one from another store",
        )
    };
    if o.stored_size > MAX_STORED_BYTES {
        return Err(damaged(format!(
            "claims {} stored bytes, more than any object can hold",
            o.stored_size
        )));
    }
    let bytes = read_capped(handle, dir, &o.name, o.stored_size)
        .map_err(|e| damaged(format!("cannot be read ({})", e.message)))?
        .ok_or_else(|| damaged("is missing".into()))?;
    if bytes.len() as u64 != o.stored_size {
        return Err(damaged(format!(
            "has {} bytes, not {} as the index says",
            bytes.len(),
            o.stored_size
        )));
    }
    if hex::encode(Sha256::digest(&bytes)) != o.sha256 {
        return Err(damaged("does not match its SHA-256 in the index".into()));
    }
    let mut src: Box<dyn Read> = match ix.compression {
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(&bytes[..])
                .map_err(|e| damaged(format!("cannot be decompressed ({e})")))?,
        ),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(&bytes[..])),
        Compression::None => Box::new(&bytes[..]),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    for p in &o.pieces {
        let e = &ix.entries[p.entry as usize];
        let target = if write(p.entry) {
            let (root, rel) = roots
                .locate(&e.path)
                .ok_or_else(|| Error::internal(format!("no place for {:?}", e.path)))?;
            let full = root.display_path(rel);
            Some((
                open_write(root, rel).map_err(|e| io_err("cannot open", &full, e))?,
                full,
            ))
        } else {
            None
        };
        let mut at = p.offset;
        let mut left = p.len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            src.read_exact(&mut buf[..n])
                .map_err(|err| damaged(format!("ends before {:?} ({err})", e.path)))?;
            if let Some((f, full)) = &target {
                f.write_all_at(&buf[..n], at)
                    .map_err(|err| io_err("cannot write", full, err))?;
                written += n as u64;
            }
            at += n as u64;
            left -= n as u64;
        }
    }
    let mut extra = [0u8; 1];
    match src.read(&mut extra) {
        Ok(0) => Ok(written),
        Ok(_) => Err(damaged("holds more bytes than its pieces".into())),
        Err(err) => Err(damaged(format!("cannot be decompressed ({err})"))),
    }
}

/// The path of an index entry on disk, for messages.
pub fn display(roots: &Roots, path: &str) -> PathBuf {
    match roots.locate(path) {
        Some((root, rel)) => root.display_path(rel),
        None => roots.pgdata.display_path(path),
    }
}
