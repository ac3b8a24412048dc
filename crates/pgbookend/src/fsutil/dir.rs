//! A no-follow toolkit: a directory handle ([`Dir`]) and operations relative to it that
//! never follow a symbolic link, for working as root inside directories that another user
//! (the postgres OS user, whoever wrote a copy) may fill with planted links.
//!
//! Every name given to a `Dir` method is one path component (no `/`, not `.` or `..`);
//! [`Dir::open_beneath`] walks a relative path component by component. Links are refused
//! (`ELOOP`/`ENOTDIR` from `O_NOFOLLOW`), never followed.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// Flags of every directory open: a directory, not through a link, not inherited.
const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

/// An open directory. Operations through it act on that directory even if its path is
/// renamed or replaced meanwhile, and never follow a link in the names they are given.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// One path component as a C string, refusing anything that could leave the directory.
pub fn component(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a single file name", name),
        ));
    }
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat(dirfd, name, flags, mode)` returning an owned descriptor.
fn openat(dirfd: RawFd, name: &CString, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: name is a valid C string; the returned fd is fresh and owned by us.
    let fd = check(unsafe { libc::openat(dirfd, name.as_ptr(), flags, mode as libc::c_uint) })?;
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat` of an open descriptor.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid, writable stat buffer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// The file type bits of a stat.
pub fn kind(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// `fchmod` then `fchown` (owner only when it differs) on an open descriptor.
pub fn set_owner_mode(fd: RawFd, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on a descriptor we hold.
    check(unsafe { libc::fchmod(fd, mode as libc::mode_t) })?;
    let st = fstat(fd)?;
    if st.st_uid != uid || st.st_gid != gid {
        // SAFETY: as above.
        check(unsafe { libc::fchown(fd, uid, gid) })?;
    }
    Ok(())
}

impl Dir {
    /// Opens the directory at `path`, refusing it if its last component is a link. Earlier
    /// components are resolved as usual: they are the caller's, not an untrusted input.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cpath(path)?;
        let fd = openat(libc::AT_FDCWD, &c, DIR_FLAGS | libc::O_NOFOLLOW, 0).map_err(|e| {
            let link = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            if link {
                io::Error::from_raw_os_error(libc::ELOOP)
            } else {
                e
            }
        })?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens the directory at `path`, following links (for a path the user gave).
    pub fn open_follow(path: &Path) -> io::Result<Dir> {
        let c = cpath(path)?;
        let fd = openat(libc::AT_FDCWD, &c, DIR_FLAGS, 0)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The same directory, named `path` in messages (e.g. the path the user gave rather
    /// than the resolved one that was opened).
    pub fn with_path(mut self, path: &Path) -> Dir {
        self.path = path.to_path_buf();
        self
    }

    /// The path this handle was opened as (for messages only: never reopened).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside this directory (for messages only).
    pub fn display_path(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// Opens the subdirectory `name`, refusing a link (`ELOOP`, also where the kernel
    /// answers `ENOTDIR` for a link to a directory).
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> io::Result<Dir> {
        let c = component(name.as_ref())?;
        let fd = match openat(self.raw(), &c, DIR_FLAGS | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                let link = self
                    .lstat(name.as_ref())
                    .map(|st| kind(&st) == libc::S_IFLNK)
                    .unwrap_or(false);
                return Err(if link {
                    io::Error::from_raw_os_error(libc::ELOOP)
                } else {
                    e
                });
            }
            Err(e) => return Err(e),
        };
        Ok(Dir {
            fd,
            path: self.display_path(name),
        })
    }

    /// Opens the directory `rel` below this one, one component at a time, refusing an
    /// absolute path, `..` and every link on the way.
    pub fn open_beneath(&self, rel: &Path) -> io::Result<Dir> {
        let mut cur = self.open_dir_self()?;
        for c in rel.components() {
            match c {
                Component::Normal(n) => cur = cur.open_dir(n)?,
                Component::CurDir => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} leaves the directory", rel.display()),
                    ))
                }
            }
        }
        Ok(cur)
    }

    /// Opens the regular file `rel` below this directory for reading: every directory on
    /// the way and the file itself must not be a link, and anything but a regular file
    /// (a FIFO, a device) is refused without blocking.
    pub fn open_file_beneath(&self, rel: &Path) -> io::Result<File> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        self.open_beneath(parent)?.open_file(name)
    }

    fn open_dir_self(&self) -> io::Result<Dir> {
        let fd = openat(self.raw(), &CString::from(c"."), DIR_FLAGS, 0)?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// Opens the regular file `name` read-only, refusing a link, a FIFO or a device.
    pub fn open_file(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        let c = component(name.as_ref())?;
        let flags =
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        let fd = openat(self.raw(), &c, flags, 0)?;
        if kind(&fstat(fd.as_raw_fd())?) != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a regular file",
                    self.display_path(name).display()
                ),
            ));
        }
        Ok(File::from(fd))
    }

    /// Creates the file `name`, which must not exist (no link is followed), for writing.
    pub fn create_file(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let c = component(name.as_ref())?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        Ok(File::from(openat(self.raw(), &c, flags, mode)?))
    }

    /// Creates the subdirectory `name` (it must not exist).
    pub fn mkdir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<()> {
        let c = component(name.as_ref())?;
        // SAFETY: c is a valid C string.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) })?;
        Ok(())
    }

    /// Renames `from` in this directory to `to` in `dest` (the target is replaced, a link
    /// there is replaced too, never followed).
    pub fn rename(
        &self,
        from: impl AsRef<OsStr>,
        dest: &Dir,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        let f = component(from.as_ref())?;
        let t = component(to.as_ref())?;
        // SAFETY: both names are valid C strings; both fds are open directories.
        check(unsafe { libc::renameat(self.raw(), f.as_ptr(), dest.raw(), t.as_ptr()) })?;
        Ok(())
    }

    /// Renames `from` to `to` in this directory only if `to` does not exist yet
    /// (`EEXIST` otherwise), so that nothing already there is ever replaced.
    pub fn rename_noreplace(
        &self,
        from: impl AsRef<OsStr>,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        let f = component(from.as_ref())?;
        let t = component(to.as_ref())?;
        // SAFETY: both names are valid C strings; the fd is an open directory.
        let r = check(unsafe {
            libc::renameat2(
                self.raw(),
                f.as_ptr(),
                self.raw(),
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        });
        match r {
            Ok(_) => Ok(()),
            // A filesystem without RENAME_NOREPLACE (NFS): check, then a plain rename,
            // which still never replaces a non-empty directory.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                match self.lstat(to.as_ref()) {
                    Ok(_) => return Err(io::Error::from_raw_os_error(libc::EEXIST)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                self.rename(from, self, to)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the non-directory `name` (a link is removed, not followed).
    pub fn unlink(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let c = component(name.as_ref())?;
        // SAFETY: c is a valid C string.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) })?;
        Ok(())
    }

    /// Removes the empty directory `name`.
    pub fn rmdir(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let c = component(name.as_ref())?;
        // SAFETY: c is a valid C string.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) })?;
        Ok(())
    }

    /// Creates the symbolic link `name` -> `target` (`name` must not exist).
    pub fn symlink(&self, name: impl AsRef<OsStr>, target: &Path) -> io::Result<()> {
        let c = component(name.as_ref())?;
        let t = cpath(target)?;
        // SAFETY: both are valid C strings; the fd is an open directory.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) })?;
        Ok(())
    }

    /// Gives the entry `name` the owner `uid:gid` without following it (a link itself
    /// changes owner, never what it points to).
    pub fn chown_entry(&self, name: impl AsRef<OsStr>, uid: u32, gid: u32) -> io::Result<()> {
        let c = component(name.as_ref())?;
        // SAFETY: c is a valid C string; AT_SYMLINK_NOFOLLOW acts on the entry itself.
        check(unsafe {
            libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
        })?;
        Ok(())
    }

    /// `lstat` of `name` (a link is described, not followed).
    pub fn lstat(&self, name: impl AsRef<OsStr>) -> io::Result<libc::stat> {
        let c = component(name.as_ref())?;
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid C string, st a writable buffer.
        check(unsafe {
            libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
        })?;
        Ok(st)
    }

    /// `fstat` of the directory itself.
    pub fn stat(&self) -> io::Result<libc::stat> {
        fstat(self.raw())
    }

    /// The names in this directory (without `.` and `..`), unsorted.
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        // SAFETY: dup of an fd we hold; fdopendir takes ownership of the duplicate.
        let dup = check(unsafe { libc::fcntl(self.raw(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: dup is a fresh directory fd; on failure we close it ourselves.
        let dirp = unsafe { libc::fdopendir(dup) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: dup is ours and was not taken by fdopendir.
            unsafe { libc::close(dup) };
            return Err(e);
        }
        // SAFETY: rewind a stream we own (the duplicate shares the offset).
        unsafe { libc::rewinddir(dirp) };
        let mut out = Vec::new();
        loop {
            // SAFETY: dirp is a valid stream until closedir below.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name is a NUL-terminated name inside the entry readdir returned.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                out.push(OsString::from_vec(b.to_vec()));
            }
        }
        // SAFETY: closes the stream (and the duplicate fd) exactly once.
        unsafe { libc::closedir(dirp) };
        Ok(out)
    }

    /// Removes `name` and, if it is a directory, everything below it, never following a
    /// link (links are removed as entries). A missing `name` is fine.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name.as_ref();
        let st = match self.lstat(name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if kind(&st) != libc::S_IFDIR {
            return ignore_missing(self.unlink(name));
        }
        let sub = match self.open_dir(name) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in sub.entries()? {
            sub.remove_tree(&entry)?;
        }
        ignore_missing(self.rmdir(name))
    }

    /// fsyncs the directory, making creations, renames and removals in it durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync of a descriptor we hold.
        check(unsafe { libc::fsync(self.raw()) })?;
        Ok(())
    }

    /// Sets owner and mode of the directory itself, through its descriptor.
    pub fn set_owner_mode(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        set_owner_mode(self.raw(), uid, gid, mode)
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn names_must_be_single_components() {
        for bad in ["", ".", "..", "a/b", "/abs", "../x"] {
            assert!(component(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        assert!(component(OsStr::new(".hidden")).is_ok());
    }

    #[test]
    fn links_are_refused_not_followed() {
        let t = scratch();
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("f"), b"keep").unwrap();
        let work = t.path().join("work");
        std::fs::create_dir(&work).unwrap();
        symlink(&victim, work.join("ld")).unwrap();
        symlink(victim.join("f"), work.join("lf")).unwrap();
        let d = Dir::open(&work).unwrap();
        assert!(d.open_dir("ld").is_err());
        assert!(d.open_file("lf").is_err());
        assert!(d.create_file("lf", 0o600).is_err(), "O_EXCL refuses a link");
        assert!(d.open_beneath(Path::new("ld")).is_err());
        assert!(d.open_beneath(Path::new("../work")).is_err());
        assert!(d.open_beneath(Path::new("/tmp")).is_err());
        assert!(Dir::open(&work.join("ld")).is_err());
        d.remove_tree("ld").unwrap();
        d.remove_tree("lf").unwrap();
        assert_eq!(std::fs::read(victim.join("f")).unwrap(), b"keep");
    }

    #[test]
    fn remove_tree_stays_inside() {
        let t = scratch();
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("f"), b"keep").unwrap();
        let tree = t.path().join("tree/a/b");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("x"), b"x").unwrap();
        symlink(&victim, tree.join("escape")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        d.remove_tree("tree").unwrap();
        d.remove_tree("tree").unwrap();
        assert!(!t.path().join("tree").exists());
        assert_eq!(std::fs::read(victim.join("f")).unwrap(), b"keep");
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let t = scratch();
        let p = t.path().join("fifo");
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let d = Dir::open(t.path()).unwrap();
        let e = d.open_file("fifo").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn create_rename_entries_beneath() {
        let t = scratch();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        let b = d.open_beneath(Path::new("a/./b")).unwrap();
        b.create_file("new", 0o640)
            .unwrap()
            .write_all(b"hi")
            .unwrap();
        assert!(b.create_file("new", 0o640).is_err(), "never reopens");
        b.rename("new", &b, "done").unwrap();
        b.mkdir("sub", 0o700).unwrap();
        b.create_file("x", 0o600).unwrap();
        assert!(b.rename_noreplace("x", "done").is_err());
        let mut names = b.entries().unwrap();
        names.sort();
        assert_eq!(names, ["done", "sub", "x"]);
        let mut s = String::new();
        d.open_file_beneath(Path::new("a/b/done"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hi");
        let mode = std::fs::metadata(t.path().join("a/b/done"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640 & !umask());
    }

    fn umask() -> u32 {
        // SAFETY: reading the umask means setting it; it is restored at once.
        unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        }
    }
}
