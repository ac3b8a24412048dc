//! Durable file writes (temporary name, fsync, rename, fsync of the directory) and ownership.

use crate::error::{io_err, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Who should own files written into a directory, and with which modes: taken from the
/// directory itself (a data directory's owner and its 0700/0750 group mode).
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub dir_mode: u32,
    pub file_mode: u32,
}

impl Ownership {
    /// The ownership of `dir`: its uid/gid; group read (0640/0750) only if the directory
    /// grants the group access, as PostgreSQL does with `initdb --allow-group-access`.
    pub fn of_dir(dir: &Path) -> Result<Ownership> {
        let md = fs::metadata(dir).map_err(|e| io_err("cannot read", dir, e))?;
        let group = md.mode() & 0o050 != 0;
        Ok(Ownership {
            uid: md.uid(),
            gid: md.gid(),
            dir_mode: if group { 0o750 } else { 0o700 },
            file_mode: if group { 0o640 } else { 0o600 },
        })
    }

    /// The ownership of things the current user creates in its own private places.
    pub fn private() -> Ownership {
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ownership {
            uid,
            gid,
            dir_mode: 0o700,
            file_mode: 0o600,
        }
    }

    /// Applies owner and mode to an existing path (owner only changes when we may).
    pub fn apply(&self, path: &Path, is_dir: bool) -> Result<()> {
        let mode = if is_dir {
            self.dir_mode
        } else {
            self.file_mode
        };
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| io_err("cannot chmod", path, e))?;
        let md = fs::symlink_metadata(path).map_err(|e| io_err("cannot stat", path, e))?;
        if md.uid() != self.uid || md.gid() != self.gid {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
                .map_err(|e| io_err("cannot change the owner of", path, e))?;
        }
        Ok(())
    }
}

/// Creates `dir` (one level) with the given ownership if missing.
pub fn ensure_dir(dir: &Path, own: &Ownership) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {
            own.apply(dir, true)?;
            if let Some(parent) = dir.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("cannot create directory", dir, e)),
    }
}

/// Writes `path` so that a crash leaves either the old file or the whole new one: `fill`
/// writes a temporary file in the same directory, which is then fsynced, given its owner
/// and mode, renamed into place, and the directory fsynced. A failure removes the
/// temporary file.
pub fn write_with(
    path: &Path,
    own: &Ownership,
    fill: impl FnOnce(&mut File, &Path) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(own.file_mode)
            .open(&tmp)
            .map_err(|e| io_err("cannot create", &tmp, e))?;
        fill(&mut f, &tmp)?;
        own.apply(&tmp, false)?;
        f.sync_all().map_err(|e| io_err("cannot fsync", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| io_err("cannot rename into place", path, e))?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Writes `data` to `path` durably (see [`write_with`]).
pub fn write_atomic(path: &Path, data: &[u8], own: &Ownership) -> Result<()> {
    write_with(path, own, |f, tmp| {
        f.write_all(data)
            .map_err(|e| io_err("cannot write", tmp, e))
    })
}

/// Copies `src` to `dest` durably (see [`write_with`]).
pub fn copy_atomic(src: &Path, dest: &Path, own: &Ownership) -> Result<()> {
    let mut input = File::open(src).map_err(|e| io_err("cannot open", src, e))?;
    write_with(dest, own, |f, tmp| {
        std::io::copy(&mut input, f)
            .map(|_| ())
            .map_err(|e| io_err("cannot copy into", tmp, e))
    })
}

/// Size and SHA-256 (lowercase hex) of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((total, hex::encode(h.finalize())))
}

/// `n` random bytes from the kernel (for IDs and tokens), with a time-based fallback.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SAFETY: buf is valid for N bytes.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), N, 0) };
    if got != N as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8;
        }
    }
    buf
}

/// fsyncs a directory so that renames and removals in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| io_err("cannot open directory", dir, e))?;
    f.sync_all()
        .map_err(|e| io_err("cannot fsync directory", dir, e))
}

/// Removes a directory tree and makes the removal durable; a missing tree is fine.
pub fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot remove", dir, e)),
    }
    if let Some(parent) = dir.parent() {
        let _ = fsync_dir(parent);
    }
    Ok(())
}

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
