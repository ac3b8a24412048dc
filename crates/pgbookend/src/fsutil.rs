//! Durable file writes (an unpredictable temporary name created with `O_EXCL|O_NOFOLLOW`,
//! fsync, rename, fsync of the directory) and ownership set on descriptors, never by path;
//! plus the no-follow toolkit of [`dir`] for working inside directories others can write.

mod dir;

pub use dir::{component, fstat, kind, kind as file_type, set_owner_mode, Dir};

use crate::error::{io_err, Error, Result};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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

    /// Applies owner and mode to an existing path without ever following a link: the
    /// path is opened `O_NOFOLLOW|O_NONBLOCK`, must be a regular file or a directory (as
    /// `is_dir` says), and is changed through that descriptor.
    pub fn apply(&self, path: &Path, is_dir: bool) -> Result<()> {
        let flags =
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| nofollow_err("cannot open", path, e))?;
        let st = dir::fstat(f.as_raw_fd()).map_err(|e| io_err("cannot stat", path, e))?;
        let want = if is_dir { libc::S_IFDIR } else { libc::S_IFREG };
        if dir::kind(&st) != want {
            return Err(Error::env(format!(
                "refusing to change the owner of {}: it is not a {}",
                path.display(),
                if is_dir { "directory" } else { "regular file" }
            )));
        }
        self.apply_fd(&f, is_dir)
            .map_err(|e| io_err("cannot change the owner or mode of", path, e))
    }

    /// Applies owner and mode through an open descriptor.
    pub fn apply_fd(&self, fd: &impl AsRawFd, is_dir: bool) -> std::io::Result<()> {
        let mode = if is_dir {
            self.dir_mode
        } else {
            self.file_mode
        };
        dir::set_owner_mode(fd.as_raw_fd(), self.uid, self.gid, mode)
    }
}

/// An I/O error as an [`Error`], with a hint when it came from meeting a link where
/// none may be (`O_NOFOLLOW` answers `ELOOP`).
pub fn nofollow_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    let is_link = e.raw_os_error() == Some(libc::ELOOP);
    let err = io_err(what, path, e);
    if is_link {
        err.hint("pgbookend never follows a symbolic link there: remove the link (someone may have planted it)")
    } else {
        err
    }
}

/// Creates `dir` (one level) with the given ownership if missing. An existing `dir` must
/// be a real directory: a link or anything else there is refused. Ownership is set
/// through a descriptor opened `O_DIRECTORY|O_NOFOLLOW`.
pub fn ensure_dir(dir: &Path, own: &Ownership) -> Result<()> {
    let (parent, name) = split(dir)?;
    ensure_dir_at(&parent, name, own).map(|_| ())
}

/// Creates `name` in `parent` if missing, refusing a link or non-directory there, and
/// returns it opened; a directory this call created gets `own` and the parent is fsynced.
pub fn ensure_dir_at(parent: &Dir, name: &OsStr, own: &Ownership) -> Result<Dir> {
    let path = parent.display_path(name);
    let created = match parent.mkdir(name, own.dir_mode) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err("cannot create directory", &path, e)),
    };
    let d = parent.open_dir(name).map_err(|e| {
        nofollow_err("cannot open directory", &path, e)
            .hint("it must be a real directory, not a link or a file")
    })?;
    if created {
        own.apply_fd(&d, true)
            .map_err(|e| io_err("cannot change the owner or mode of", &path, e))?;
        parent
            .sync()
            .map_err(|e| io_err("cannot fsync directory", parent.path(), e))?;
    }
    Ok(d)
}

/// Why a directory that decides what pgbookend believes (the run directory, the live
/// records) cannot be trusted: only we may own and write it.
#[derive(Debug)]
pub enum NotPrivate {
    /// Its last component is a symbolic link (never followed).
    Link,
    /// It is something other than a directory.
    NotDir,
    /// It belongs to someone else or group/others may write it.
    Shared { want_uid: u32, uid: u32, mode: u32 },
    /// It could not be opened (`"open"`), given its mode (`"chmod"`) or read (`"read"`).
    Io(&'static str, std::io::Error),
}

/// Opens the directory `path` without following its last component and checks, on the
/// descriptor, that it belongs to our effective uid and is not writable by group or
/// others. `created` (this process just made it): it is first given our owner and 0700.
pub fn open_private(path: &Path, created: bool) -> std::result::Result<Dir, NotPrivate> {
    let dir = Dir::open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => NotPrivate::Link,
        Some(libc::ENOTDIR) => NotPrivate::NotDir,
        _ => NotPrivate::Io("open", e),
    })?;
    let own = Ownership::private();
    if created {
        own.apply_fd(&dir, true)
            .map_err(|e| NotPrivate::Io("chmod", e))?;
    }
    let st = dir.stat().map_err(|e| NotPrivate::Io("read", e))?;
    if st.st_uid != own.uid || st.st_mode & 0o022 != 0 {
        return Err(NotPrivate::Shared {
            want_uid: own.uid,
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
        });
    }
    Ok(dir)
}

/// The parent directory of `path`, opened (following links: the caller chose it), and
/// the last component, which must be a plain name.
fn split(path: &Path) -> Result<(Dir, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::internal(format!("{} has no file name", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let d = Dir::open_follow(parent).map_err(|e| io_err("cannot open directory", parent, e))?;
    Ok((d, name))
}

/// A temporary name nobody can guess: `.NAME.tmp-<32 hex>`.
pub fn temp_name(name: &OsStr) -> String {
    format!(
        ".{}.tmp-{}",
        name.to_string_lossy().chars().take(64).collect::<String>(),
        hex::encode(random_bytes::<16>())
    )
}

/// Writes `path` so that a crash leaves either the old file or the whole new one (see
/// [`write_at`]); the parent directory is opened as given, the file name is never followed.
pub fn write_with(
    path: &Path,
    own: &Ownership,
    fill: impl FnOnce(&mut File, &Path) -> Result<()>,
) -> Result<()> {
    let (parent, name) = split(path)?;
    write_at(&parent, name, own, fill)
}

/// Writes `name` in `dir` durably: `fill` writes a new temporary file with an
/// unpredictable name (created `O_EXCL|O_NOFOLLOW`), which is then given its owner and
/// mode through its descriptor, fsynced, renamed over `name` (a link there is replaced,
/// not followed) and the directory fsynced. A failure removes the temporary file.
pub fn write_at(
    dir: &Dir,
    name: &OsStr,
    own: &Ownership,
    fill: impl FnOnce(&mut File, &Path) -> Result<()>,
) -> Result<()> {
    component(name).map_err(|e| io_err("cannot write", &dir.display_path(name), e))?;
    let tmp = temp_name(name);
    let tmp_path = dir.display_path(&tmp);
    let mut f = dir
        .create_file(&tmp, own.file_mode)
        .map_err(|e| io_err("cannot create", &tmp_path, e))?;
    let res = (|| {
        fill(&mut f, &tmp_path)?;
        own.apply_fd(&f, false)
            .map_err(|e| io_err("cannot change the owner or mode of", &tmp_path, e))?;
        f.sync_all()
            .map_err(|e| io_err("cannot fsync", &tmp_path, e))?;
        dir.rename(&tmp, dir, name)
            .map_err(|e| io_err("cannot rename into place", &dir.display_path(name), e))?;
        dir.sync()
            .map_err(|e| io_err("cannot fsync directory", dir.path(), e))
    })();
    if res.is_err() {
        let _ = dir.unlink(&tmp);
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

/// Copies `src` to `dest` durably (see [`write_with`]); `src` itself must not be a link.
pub fn copy_atomic(src: &Path, dest: &Path, own: &Ownership) -> Result<()> {
    let (sdir, sname) = split(src)?;
    let mut input = sdir
        .open_file(sname)
        .map_err(|e| nofollow_err("cannot open", src, e))?;
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
    let d = Dir::open_follow(dir).map_err(|e| io_err("cannot open directory", dir, e))?;
    d.sync()
        .map_err(|e| io_err("cannot fsync directory", dir, e))
}

/// Removes a directory tree and makes the removal durable; a missing tree is fine. Its
/// last component and everything below it are never followed (links are removed as
/// entries), so a link planted inside cannot make this delete outside the tree.
pub fn remove_tree(dir: &Path) -> Result<()> {
    let (parent, name) = match split(dir) {
        Ok(x) => x,
        Err(_) if fs::symlink_metadata(dir).is_err() => return Ok(()),
        Err(e) => return Err(e),
    };
    parent
        .remove_tree(name)
        .map_err(|e| io_err("cannot remove", dir, e))?;
    let _ = parent.sync();
    Ok(())
}

/// SHA-256 of bytes, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn write_replaces_a_planted_link_and_never_follows_it() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        std::fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        let target = t.path().join("out");
        symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new", &Ownership::private()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
        let md = std::fs::metadata(&victim).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o644);
        let out = std::fs::symlink_metadata(&target).unwrap();
        assert!(out.is_file(), "the link itself was replaced");
        assert_eq!(out.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "no temporary file is left");
    }

    #[test]
    fn temp_names_are_unpredictable() {
        let a = temp_name(OsStr::new("backup.json"));
        let b = temp_name(OsStr::new("backup.json"));
        assert_ne!(a, b);
        assert!(a.starts_with(".backup.json.tmp-") && a.len() == ".backup.json.tmp-".len() + 32);
    }

    #[test]
    fn apply_and_ensure_dir_refuse_links() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"v").unwrap();
        std::fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        let link = t.path().join("link");
        symlink(&victim, &link).unwrap();
        let own = Ownership::private();
        let e = own.apply(&link, false).unwrap_err();
        assert!(e.message.contains("link"), "{}", e.message);
        let md = std::fs::metadata(&victim).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o644);
        let vdir = t.path().join("vdir");
        std::fs::create_dir(&vdir).unwrap();
        symlink(&vdir, t.path().join("dlink")).unwrap();
        assert!(ensure_dir(&t.path().join("dlink"), &own).is_err());
        assert!(
            ensure_dir(&victim, &own).is_err(),
            "a file is not a directory"
        );
        ensure_dir(&t.path().join("fresh"), &own).unwrap();
        ensure_dir(&t.path().join("fresh"), &own).unwrap();
        assert!(
            own.apply(&t.path().join("fresh"), false).is_err(),
            "kind must match"
        );
        own.apply(&t.path().join("fresh"), true).unwrap();
    }
}
