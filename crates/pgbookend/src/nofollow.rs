//! Work inside a copy through directory descriptors that never follow a link: open,
//! list, remove, write, link and chown relative to an open directory (`openat`-style).
//!
//! A restored copy is written by whoever made it (the postgres OS user, a backup
//! program); as root, `prepare` must not be led outside it by a symlink planted in it.
//! Every name handled here is one path component, looked up with `O_NOFOLLOW` /
//! `AT_SYMLINK_NOFOLLOW`, so a link is only ever removed, never followed.

use crate::error::{io_err, Error, Result};
use crate::fsutil::Ownership;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// An open directory, with the path it was reached by (for messages only).
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What one name in a directory is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Dir,
    File,
    Link,
    Other,
}

fn cstr(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// One path component: no separator, not `.` or `..`.
fn component(name: &OsStr) -> std::io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    cstr(name)
}

fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

impl Dir {
    /// Opens `path` as a directory; its last component must not be a link (earlier
    /// components are the caller's own choice, e.g. the `--pgdata` it gave).
    pub fn open(path: &Path) -> Result<Dir> {
        let c = cstr(path.as_os_str()).map_err(|e| io_err("cannot open", path, e))?;
        // SAFETY: c is a valid NUL-terminated string.
        let fd = check(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })
            .map_err(|e| io_err("cannot open directory (without following links)", path, e))?;
        Ok(Dir {
            // SAFETY: fd was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    /// Opens a directory the user named on the command line (`--pgdata`): links in that
    /// path are the user's own choice and are resolved first; below it nothing is followed.
    pub fn open_given(path: &Path) -> Result<Dir> {
        let real = std::fs::canonicalize(path).map_err(|e| io_err("cannot resolve", path, e))?;
        let mut d = Dir::open(&real)?;
        d.path = path.to_path_buf();
        Ok(d)
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the subdirectory `name`, refusing a link.
    pub fn sub(&self, name: impl AsRef<OsStr>) -> Result<Dir> {
        let name = name.as_ref();
        let p = self.path.join(name);
        let c = component(name).map_err(|e| io_err("cannot open", &p, e))?;
        // SAFETY: valid fd and NUL-terminated name.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), DIR_FLAGS) })
            .map_err(|e| io_err("cannot open directory (without following links)", &p, e))?;
        Ok(Dir {
            // SAFETY: fd was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: p,
        })
    }

    /// What `name` is, not following a link.
    pub fn kind(&self, name: impl AsRef<OsStr>) -> Kind {
        let Ok(c) = component(name.as_ref()) else {
            return Kind::Other;
        };
        // SAFETY: st is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, name and buffer.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Kind::Missing;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Link,
            _ => Kind::Other,
        }
    }

    /// The names in this directory (not `.` and `..`).
    pub fn names(&self) -> Result<Vec<OsString>> {
        // The /proc path names this very open directory: no lookup by name happens.
        let proc = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let rd = std::fs::read_dir(&proc).map_err(|e| io_err("cannot list", &self.path, e))?;
        let mut out = Vec::new();
        for e in rd {
            out.push(
                e.map_err(|e| io_err("cannot list", &self.path, e))?
                    .file_name(),
            );
        }
        out.sort();
        Ok(out)
    }

    /// Removes `name` whatever it is (a directory with everything in it; a link itself,
    /// never what it points to). A missing name is fine.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        let p = self.path.join(name);
        let c = component(name).map_err(|e| io_err("cannot remove", &p, e))?;
        match self.kind(name) {
            Kind::Missing => return Ok(()),
            Kind::Dir => {
                self.sub(name)?.clear(&[])?;
                // SAFETY: valid fd and name.
                check(unsafe {
                    libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR)
                })
                .map_err(|e| io_err("cannot remove", &p, e))?;
            }
            _ => {
                // SAFETY: valid fd and name.
                check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
                    .map_err(|e| io_err("cannot remove", &p, e))?;
            }
        }
        Ok(())
    }

    /// Empties this directory; subdirectories named in `keep` stay and are emptied.
    pub fn clear(&self, keep: &[&str]) -> Result<()> {
        for n in self.names()? {
            let kept = keep.iter().any(|k| OsStr::new(k) == n.as_os_str());
            if kept && self.kind(&n) == Kind::Dir {
                self.sub(&n)?.clear(&[])?;
            } else {
                self.remove(&n)?;
            }
        }
        Ok(())
    }

    /// Creates the subdirectory `name` (if missing) with the given ownership, and opens it.
    pub fn make_dir(&self, name: impl AsRef<OsStr>, own: &Ownership) -> Result<Dir> {
        let name = name.as_ref();
        let p = self.path.join(name);
        let c = component(name).map_err(|e| io_err("cannot create", &p, e))?;
        // SAFETY: valid fd and name.
        let r = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), own.dir_mode) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io_err("cannot create directory", &p, e));
            }
        }
        let d = self.sub(name)?;
        d.own(own, true)?;
        Ok(d)
    }

    /// Gives this directory the owner and directory mode of `own` (on the descriptor).
    pub fn own(&self, own: &Ownership, is_dir: bool) -> Result<()> {
        own_fd(self.fd.as_raw_fd(), own, is_dir).map_err(|e| io_err("cannot chown", &self.path, e))
    }

    /// Gives everything below this directory (not following links) the owner of `own`,
    /// and directories and files its modes.
    pub fn own_tree(&self, own: &Ownership) -> Result<()> {
        self.own(own, true)?;
        for n in self.names()? {
            match self.kind(&n) {
                Kind::Dir => self.sub(&n)?.own_tree(own)?,
                Kind::File => {
                    let f = self.open_file(&n)?;
                    own_fd(f.as_raw_fd(), own, false)
                        .map_err(|e| io_err("cannot chown", &self.path.join(&n), e))?;
                }
                Kind::Link => {
                    let c = component(&n).map_err(|e| io_err("cannot chown", &self.path, e))?;
                    // SAFETY: valid fd and name; AT_SYMLINK_NOFOLLOW changes the link itself.
                    check(unsafe {
                        libc::fchownat(
                            self.fd.as_raw_fd(),
                            c.as_ptr(),
                            own.uid,
                            own.gid,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    })
                    .map_err(|e| io_err("cannot chown", &self.path.join(&n), e))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Opens the regular file `name` for reading, refusing a link.
    pub fn open_file(&self, name: impl AsRef<OsStr>) -> Result<File> {
        let name = name.as_ref();
        let p = self.path.join(name);
        let c = component(name).map_err(|e| io_err("cannot open", &p, e))?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: valid fd and name.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) })
            .map_err(|e| io_err("cannot open (without following links)", &p, e))?;
        // SAFETY: fd was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Reads the regular file `name` if it exists (at most `limit` bytes), refusing a link.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        if self.kind(name) == Kind::Missing {
            return Ok(None);
        }
        let f = self.open_file(name)?;
        let p = self.path.join(name);
        let md = f.metadata().map_err(|e| io_err("cannot stat", &p, e))?;
        if !md.is_file() || md.len() > limit {
            return Err(Error::env(format!(
                "{} is not a regular file of at most {limit} bytes",
                p.display()
            )));
        }
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, limit), &mut buf)
            .map_err(|e| io_err("cannot read", &p, e))?;
        Ok(Some(buf))
    }

    /// Writes `name` durably: a new temporary file with an unpredictable name (`O_EXCL`,
    /// never a link), filled by `fill`, given its owner and mode on the descriptor, fsynced,
    /// renamed over `name` (a link there is replaced, not followed), directory fsynced.
    pub fn write_with(
        &self,
        name: &str,
        own: &Ownership,
        fill: impl FnOnce(&mut File, &Path) -> Result<()>,
    ) -> Result<()> {
        let target = self.path.join(name);
        let cname = component(OsStr::new(name)).map_err(|e| io_err("cannot write", &target, e))?;
        let rnd: [u8; 8] = crate::fsutil::random_bytes();
        let tmp_name = format!(".{name}.pgbookend-{}", hex::encode(rnd));
        let tmp = self.path.join(&tmp_name);
        let ctmp = cstr(OsStr::new(&tmp_name)).map_err(|e| io_err("cannot create", &tmp, e))?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid fd and name.
        let fd = check(unsafe {
            libc::openat(self.fd.as_raw_fd(), ctmp.as_ptr(), flags, own.file_mode)
        })
        .map_err(|e| io_err("cannot create", &tmp, e))?;
        // SAFETY: fd was just opened and is owned by nobody else.
        let mut f = unsafe { File::from_raw_fd(fd) };
        let res = (|| {
            fill(&mut f, &tmp)?;
            f.flush().map_err(|e| io_err("cannot write", &tmp, e))?;
            own_fd(f.as_raw_fd(), own, false).map_err(|e| io_err("cannot chown", &tmp, e))?;
            f.sync_all().map_err(|e| io_err("cannot fsync", &tmp, e))?;
            // SAFETY: valid fds and names.
            check(unsafe {
                libc::renameat(
                    self.fd.as_raw_fd(),
                    ctmp.as_ptr(),
                    self.fd.as_raw_fd(),
                    cname.as_ptr(),
                )
            })
            .map_err(|e| io_err("cannot rename into place", &target, e))?;
            self.fsync()
        })();
        drop(f);
        if res.is_err() {
            // SAFETY: valid fd and name; removes only our own temporary file.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), ctmp.as_ptr(), 0) };
        }
        res
    }

    /// Writes `data` to `name` durably (see [`Dir::write_with`]).
    pub fn write(&self, name: &str, data: &[u8], own: &Ownership) -> Result<()> {
        self.write_with(name, own, |f, tmp| {
            f.write_all(data)
                .map_err(|e| io_err("cannot write", tmp, e))
        })
    }

    /// Creates the symbolic link `name` -> `target` (replacing whatever `name` was),
    /// owned like the data directory.
    pub fn symlink(&self, name: &str, target: &Path, own: &Ownership) -> Result<()> {
        let p = self.path.join(name);
        self.remove(name)?;
        let c = component(OsStr::new(name)).map_err(|e| io_err("cannot link", &p, e))?;
        let t = cstr(target.as_os_str()).map_err(|e| io_err("cannot link", &p, e))?;
        // SAFETY: valid fd and strings.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.fd.as_raw_fd(), c.as_ptr()) })
            .map_err(|e| io_err("cannot link", &p, e))?;
        // SAFETY: valid fd and name; changes the link itself.
        let _ = unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                own.uid,
                own.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        self.fsync()
    }

    /// Moves `name` from this directory into `to` under the same name (same file system).
    pub fn rename_into(&self, name: &OsStr, to: &Dir) -> std::io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid fds and names.
        check(unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                to.fd.as_raw_fd(),
                c.as_ptr(),
            )
        })
        .map(|_| ())
    }

    /// fsyncs the directory.
    pub fn fsync(&self) -> Result<()> {
        // SAFETY: valid fd.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) })
            .map(|_| ())
            .map_err(|e| io_err("cannot fsync directory", &self.path, e))
    }

    /// The directory's (device, inode).
    pub fn identity(&self) -> Result<(u64, u64)> {
        // SAFETY: st is plain data filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and buffer.
        check(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })
            .map_err(|e| io_err("cannot stat", &self.path, e))?;
        Ok((st.st_dev, st.st_ino))
    }
}

/// fchown + fchmod on an open descriptor (the owner changes only when it differs).
fn own_fd(fd: libc::c_int, own: &Ownership, is_dir: bool) -> std::io::Result<()> {
    let mode = if is_dir { own.dir_mode } else { own.file_mode };
    // SAFETY: st is plain data filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    if st.st_uid != own.uid || st.st_gid != own.gid {
        // SAFETY: valid fd.
        check(unsafe { libc::fchown(fd, own.uid, own.gid) })?;
    }
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd, mode) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn clear_and_write_never_follow_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"v").unwrap();
        let copy = tempfile::tempdir().unwrap();
        let wal = copy.path().join("pg_wal");
        std::fs::create_dir(&wal).unwrap();
        std::fs::create_dir(wal.join("archive_status")).unwrap();
        std::fs::write(wal.join("archive_status/x.done"), b"").unwrap();
        std::os::unix::fs::symlink(outside.path(), wal.join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), wal.join("f")).unwrap();
        let root = Dir::open(copy.path()).unwrap();
        assert!(root.sub("nope").is_err());
        std::os::unix::fs::symlink(outside.path(), copy.path().join("link")).unwrap();
        assert!(
            root.sub("link").is_err(),
            "a link is not opened as a directory"
        );
        assert!(root.open_file("link").is_err());
        assert!(Dir::open(&copy.path().join("link")).is_err());
        assert!(
            Dir::open_given(&copy.path().join("link")).is_ok(),
            "a --pgdata link"
        );
        let d = root.sub("pg_wal").unwrap();
        d.clear(&["archive_status"]).unwrap();
        assert_eq!(tree(&wal), vec!["archive_status"]);
        assert!(tree(&wal.join("archive_status")).is_empty());
        assert_eq!(tree(outside.path()), vec!["victim"]);
        // A planted link at the target name is replaced, not written through.
        std::os::unix::fs::symlink(outside.path().join("victim"), wal.join("label")).unwrap();
        d.write("label", b"new", &Ownership::private()).unwrap();
        assert_eq!(std::fs::read(outside.path().join("victim")).unwrap(), b"v");
        assert_eq!(std::fs::read(wal.join("label")).unwrap(), b"new");
        assert!(root.sub("../x").is_err() && root.sub("..").is_err());
        root.remove("link").unwrap();
        assert_eq!(tree(outside.path()), vec!["victim"]);
    }
}
