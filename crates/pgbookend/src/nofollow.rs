//! Prepare's view of a copy: the no-follow toolkit of [`crate::fsutil::Dir`] with the
//! engine's errors, plus the few whole-tree operations prepare needs (empty a directory
//! but keep some, give a tree the data directory's owner, read a small file capped).
//!
//! A restored copy is written by whoever made it (the postgres OS user, a backup
//! program); as root, `prepare` must not be led outside it by a symlink planted in it.
//! Every name handled here is one path component, looked up with `O_NOFOLLOW` /
//! `AT_SYMLINK_NOFOLLOW` by `fsutil::Dir`, so a link is only ever removed, never followed.

use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, Ownership};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// An open directory of the copy (a [`fsutil::Dir`] whose operations answer [`Error`]s).
pub struct Dir(fsutil::Dir);

/// What one name in a directory is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Dir,
    File,
    Link,
    Other,
}

const OPEN_DIR: &str = "cannot open directory (without following links)";

impl Dir {
    /// Opens `path` as a directory; its last component must not be a link (earlier
    /// components are the caller's own choice, e.g. the `--pgdata` it gave).
    pub fn open(path: &Path) -> Result<Dir> {
        fsutil::Dir::open(path)
            .map(Dir)
            .map_err(|e| io_err(OPEN_DIR, path, e))
    }

    /// Opens a directory the user named on the command line (`--pgdata`): links in that
    /// path are the user's own choice and are resolved first; below it nothing is followed.
    pub fn open_given(path: &Path) -> Result<Dir> {
        let real = std::fs::canonicalize(path).map_err(|e| io_err("cannot resolve", path, e))?;
        fsutil::Dir::open(&real)
            .map(|d| Dir(d.with_path(path)))
            .map_err(|e| io_err(OPEN_DIR, &real, e))
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    fn at(&self, name: impl AsRef<OsStr>) -> std::path::PathBuf {
        self.0.display_path(name)
    }

    /// Opens the subdirectory `name`, refusing a link.
    pub fn sub(&self, name: impl AsRef<OsStr>) -> Result<Dir> {
        let name = name.as_ref();
        self.0
            .open_dir(name)
            .map(Dir)
            .map_err(|e| io_err(OPEN_DIR, &self.at(name), e))
    }

    /// What `name` is, not following a link.
    pub fn kind(&self, name: impl AsRef<OsStr>) -> Kind {
        let name = name.as_ref();
        if fsutil::component(name).is_err() {
            return Kind::Other;
        }
        match self.0.lstat(name).map(|st| fsutil::file_type(&st)) {
            Err(_) => Kind::Missing,
            Ok(libc::S_IFDIR) => Kind::Dir,
            Ok(libc::S_IFREG) => Kind::File,
            Ok(libc::S_IFLNK) => Kind::Link,
            Ok(_) => Kind::Other,
        }
    }

    /// The names in this directory (not `.` and `..`), sorted.
    pub fn names(&self) -> Result<Vec<OsString>> {
        let mut out = self
            .0
            .entries()
            .map_err(|e| io_err("cannot list", self.path(), e))?;
        out.sort();
        Ok(out)
    }

    /// Removes `name` whatever it is (a directory with everything in it; a link itself,
    /// never what it points to). A missing name is fine.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = name.as_ref();
        self.0
            .remove_tree(name)
            .map_err(|e| io_err("cannot remove", &self.at(name), e))
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
        match self.0.mkdir(name, own.dir_mode) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io_err("cannot create directory", &self.at(name), e))
            }
            _ => {}
        }
        let d = self.sub(name)?;
        d.own(own, true)?;
        Ok(d)
    }

    /// Gives this directory the owner and directory mode of `own` (on the descriptor).
    pub fn own(&self, own: &Ownership, is_dir: bool) -> Result<()> {
        own.apply_fd(&self.0, is_dir)
            .map_err(|e| io_err("cannot chown", self.path(), e))
    }

    /// Gives everything below this directory (not following links) the owner of `own`,
    /// and directories and files its modes.
    pub fn own_tree(&self, own: &Ownership) -> Result<()> {
        self.own(own, true)?;
        for n in self.names()? {
            let chown = |e| io_err("cannot chown", &self.at(&n), e);
            match self.kind(&n) {
                Kind::Dir => self.sub(&n)?.own_tree(own)?,
                Kind::File => own.apply_fd(&self.open_file(&n)?, false).map_err(chown)?,
                Kind::Link => self.0.chown_entry(&n, own.uid, own.gid).map_err(chown)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Opens the regular file `name` for reading, refusing a link.
    pub fn open_file(&self, name: impl AsRef<OsStr>) -> Result<File> {
        let name = name.as_ref();
        self.0
            .open_file(name)
            .map_err(|e| io_err("cannot open (without following links)", &self.at(name), e))
    }

    /// Reads the regular file `name` if it exists (at most `limit` bytes), refusing a link.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        if self.kind(name) == Kind::Missing {
            return Ok(None);
        }
        let f = self.open_file(name)?;
        let p = self.at(name);
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

    /// Writes `name` durably through [`fsutil::write_at`]: a fresh temporary file with an
    /// unpredictable name filled by `fill`, owned and fsynced, renamed over `name` (a link
    /// there is replaced, not followed), the directory fsynced.
    pub fn write_with(
        &self,
        name: &str,
        own: &Ownership,
        fill: impl FnOnce(&mut File, &Path) -> Result<()>,
    ) -> Result<()> {
        fsutil::write_at(&self.0, OsStr::new(name), own, fill)
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
        self.remove(name)?;
        self.0
            .symlink(name, target)
            .map_err(|e| io_err("cannot link", &self.at(name), e))?;
        let _ = self.0.chown_entry(name, own.uid, own.gid);
        self.fsync()
    }

    /// Moves `name` from this directory into `to` under the same name (same file system).
    pub fn rename_into(&self, name: &OsStr, to: &Dir) -> std::io::Result<()> {
        self.0.rename(name, &to.0, name)
    }

    /// fsyncs the directory.
    pub fn fsync(&self) -> Result<()> {
        self.0
            .sync()
            .map_err(|e| io_err("cannot fsync directory", self.path(), e))
    }
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
