//! Bounded, link-refusing reads of a bundle's files: what a hostile store cannot turn
//! into a read elsewhere, an endless read or an allocation beyond a cap.
//!
//! Every file is opened by a path relative to the bundle directory that was checked
//! before ([`crate::bundle::check::check_rel_path`]), one component at a time with
//! `O_NOFOLLOW`, and must be a regular file; sizes are taken from the open descriptor
//! before anything is read, and WAL is decompressed in pieces with a cap on the output
//! and on the decoder's window.

use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The largest `bundle.json` read (a window of [`pgbookend_formats::walname::MAX_RANGE_SEGMENTS`]
/// WAL files fits with room).
pub const MAX_MANIFEST_BYTES: u64 = 96 << 20;
/// The largest `backup_label` or `tablespace_map` read.
pub const MAX_TEXT_BYTES: u64 = 1 << 20;
/// The largest `pg_control` read (the file is 8 KiB).
pub const MAX_CONTROL_BYTES: u64 = 64 << 10;
/// The zstd window the decoder accepts: 2^24 bytes (pgbookend compresses with 2 MiB).
pub const WINDOW_LOG_MAX: u32 = 24;
/// Read size for hashing and decompressing.
const CHUNK: usize = 256 << 10;

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn openat(dirfd: i32, name: &str, flags: i32) -> io::Result<OwnedFd> {
    let c = c_name(name)?;
    // SAFETY: c is a valid NUL-terminated string; the flags never create a file.
    let fd = unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` (a checked relative path) below `dir` without following any link inside
/// the bundle; refuses anything that is not a regular file (a FIFO would block forever).
pub fn open_in(dir: &Path, rel: &str) -> io::Result<File> {
    let top = File::open(dir)?;
    let mut cur: OwnedFd = top.into();
    let parts: Vec<&str> = rel.split('/').collect();
    let (last, dirs) = parts
        .split_last()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))?;
    for d in dirs {
        cur = openat(cur.as_raw_fd(), d, libc::O_RDONLY | libc::O_DIRECTORY)?;
    }
    let fd = openat(cur.as_raw_fd(), last, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let f = File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file (a link, a directory or a device)",
        ));
    }
    Ok(f)
}

/// Reads a whole file of the bundle, refusing one larger than `cap` bytes.
pub fn read_capped(dir: &Path, rel: &str, cap: u64) -> io::Result<Vec<u8>> {
    let f = open_in(dir, rel)?;
    let len = f.metadata()?.len();
    if len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it has {len} bytes, more than the {cap} allowed"),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it grew while read",
        ));
    }
    Ok(out)
}

/// Whether a file of the bundle has exactly `size` bytes and this SHA-256: the size is
/// compared first, so a file that claims little but holds much is never read.
pub fn matches(dir: &Path, rel: &str, size: u64, sha256: &str) -> io::Result<bool> {
    let f = open_in(dir, rel)?;
    if f.metadata()?.len() != size {
        return Ok(false);
    }
    let (n, sum) = hash_stream(f.take(size + 1), None)?;
    Ok(n == size && sum == sha256)
}

/// Size and SHA-256 of everything `r` yields, in pieces; stops with an error once more
/// than `limit` bytes came out.
fn hash_stream(r: impl Read, limit: Option<u64>) -> io::Result<(u64, String)> {
    copy_hashed(r, limit, &mut io::sink())
}

/// Copies `r` into `out` in pieces, hashing on the way; stops with an error once more
/// than `limit` bytes came out (nothing beyond the limit is written).
fn copy_hashed(
    mut r: impl Read,
    limit: Option<u64>,
    out: &mut impl io::Write,
) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if let Some(l) = limit.filter(|l| total > *l) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it decompresses to more than {l} bytes"),
            ));
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    Ok((total, hex::encode(h.finalize())))
}

/// A zstd decoder over `f` whose window is capped at [`WINDOW_LOG_MAX`]: a frame that
/// asks for more memory is refused instead of allocated.
pub fn bounded_decoder(f: File) -> io::Result<impl Read> {
    let mut dec = zstd::stream::read::Decoder::new(f)?;
    dec.window_log_max(WINDOW_LOG_MAX)?;
    Ok(dec)
}

/// Decompresses a stored WAL file in pieces and returns its size and SHA-256, or why not:
/// output beyond `limit` bytes (a WAL file never exceeds its segment size) stops it.
pub fn wal_digest(dir: &Path, rel: &str, limit: u64) -> io::Result<(u64, String)> {
    let f = open_in(dir, rel)?;
    hash_stream(bounded_decoder(f)?, Some(limit))
}

/// Decompresses a stored WAL file into `out` (as `prepare` writes it into `pg_wal`), in
/// pieces and never beyond `limit` bytes; returns its size and SHA-256 for the caller to
/// compare with `bundle.json` before the file gets its final name.
pub fn copy_wal(
    dir: &Path,
    rel: &str,
    limit: u64,
    out: &mut impl io::Write,
) -> io::Result<(u64, String)> {
    let f = open_in(dir, rel)?;
    copy_hashed(bounded_decoder(f)?, Some(limit), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_links_and_caps() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("wal")).unwrap();
        std::fs::write(d.path().join("wal/a"), b"hello").unwrap();
        std::fs::write(d.path().join("big"), vec![0u8; 100]).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(d.path().join("wal"), d.path().join("wl")).unwrap();
        assert_eq!(read_capped(d.path(), "wal/a", 10).unwrap(), b"hello");
        assert!(read_capped(d.path(), "big", 10).is_err());
        assert!(open_in(d.path(), "link").is_err());
        assert!(open_in(d.path(), "wl/a").is_err());
        assert!(open_in(d.path(), "wal").is_err());
        let sum = crate::fsutil::sha256_hex(b"hello");
        assert!(matches(d.path(), "wal/a", 5, &sum).unwrap());
        assert!(!matches(d.path(), "wal/a", 4, &sum).unwrap());
    }

    #[test]
    fn decompression_is_capped() {
        let d = tempfile::tempdir().unwrap();
        let z = zstd::stream::encode_all(&vec![0u8; 3 << 20][..], 3).unwrap();
        std::fs::write(d.path().join("w.zst"), z).unwrap();
        let (n, _) = wal_digest(d.path(), "w.zst", 4 << 20).unwrap();
        assert_eq!(n, 3 << 20);
        let e = wal_digest(d.path(), "w.zst", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let mut out = Vec::new();
        assert!(copy_wal(d.path(), "w.zst", 1 << 20, &mut out).is_err());
        assert!(out.len() <= 1 << 20);
    }
}
