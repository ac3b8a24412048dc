//! The throwaway clone of a restored copy: every file cloned by reflink (`FICLONE`) where
//! the filesystem shares blocks (XFS, btrfs), else copied, never following a link of the
//! copy. The copy itself is only read.

use crate::error::{Error, Result};
use crate::fsutil::{fstat, kind, set_owner_mode, Dir};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `FICLONE` from `linux/fs.h`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// How the clone was made, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every file shares its blocks with the copy (nothing was copied).
    Reflink,
    /// At least one file was copied byte for byte (the filesystem cannot reflink).
    FullCopy,
}

impl Method {
    /// The word used in the human report.
    pub fn describe(self) -> &'static str {
        match self {
            Method::Reflink => "reflink clone",
            Method::FullCopy => "full copy (the filesystem cannot reflink)",
        }
    }
}

/// Files and bytes of a clone.
#[derive(Debug, Default)]
struct Tally {
    files: u64,
    copied: u64,
}

/// Clones the data directory `src` into `dest/name` (created with the owner and mode of
/// `src`). Refuses links in the copy (tablespaces, a separate pg_wal): they are not
/// cloned. `stop` is polled between files (a signal asked drill to end).
pub fn clone_tree(src: &Path, dest: &Dir, name: &str, stop: &dyn Fn() -> bool) -> Result<Method> {
    let from = Dir::open(src).map_err(|e| io(src, "cannot open the copy", e))?;
    let mut tally = Tally::default();
    clone_dir(&from, dest, OsStr::new(name), "", &mut tally, stop)?;
    Ok(if tally.copied == 0 {
        Method::Reflink
    } else {
        Method::FullCopy
    })
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::env(format!("{what} {}: {e}", path.display()))
}

/// Creates `name` in `parent` like `from` and clones everything below it.
fn clone_dir(
    from: &Dir,
    parent: &Dir,
    name: &OsStr,
    rel: &str,
    tally: &mut Tally,
    stop: &dyn Fn() -> bool,
) -> Result<()> {
    let st = from.stat().map_err(|e| io(from.path(), "cannot stat", e))?;
    parent
        .mkdir(name, 0o700)
        .map_err(|e| io(&parent.display_path(name), "cannot create", e))?;
    let to = parent
        .open_dir(name)
        .map_err(|e| io(&parent.display_path(name), "cannot open", e))?;
    to.set_owner_mode(st.st_uid, st.st_gid, st.st_mode & 0o7777)
        .map_err(|e| io(to.path(), "cannot set the owner of", e))?;
    let mut names = from
        .entries()
        .map_err(|e| io(from.path(), "cannot list", e))?;
    names.sort();
    for n in names {
        if stop() {
            return Err(super::interrupted());
        }
        let sub = if rel.is_empty() {
            n.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", n.to_string_lossy())
        };
        let st = from
            .lstat(&n)
            .map_err(|e| io(&from.display_path(&n), "cannot stat", e))?;
        match kind(&st) {
            libc::S_IFDIR => {
                let d = from
                    .open_dir(&n)
                    .map_err(|e| io(&from.display_path(&n), "cannot open", e))?;
                clone_dir(&d, &to, &n, &sub, tally, stop)?;
            }
            libc::S_IFREG => clone_file(from, &to, &n, tally)?,
            libc::S_IFLNK => return Err(link_refused(&sub, &from.display_path(&n))),
            _ => {} // sockets, FIFOs: nothing a server needs from a copy
        }
    }
    Ok(())
}

/// The refusal for a link inside the copy.
fn link_refused(rel: &str, path: &Path) -> Error {
    let why = if rel.starts_with("pg_tblspc/") {
        "the copy has a tablespace; drill does not clone tablespaces yet"
    } else if rel == "pg_wal" {
        "the copy's pg_wal is a link (initdb -X); drill does not clone a separate WAL directory yet"
    } else {
        "drill never follows a link of a copy"
    };
    Error::new(
        crate::error::Class::Check,
        format!("{} is a symbolic link: {why}", path.display()),
    )
    .hint("run prepare on a second restored copy and start it yourself to test this backup")
}

/// Clones one regular file: reflink if the filesystem can, else a plain copy.
fn clone_file(from: &Dir, to: &Dir, name: &OsStr, tally: &mut Tally) -> Result<()> {
    let mut src = from
        .open_file(name)
        .map_err(|e| io(&from.display_path(name), "cannot open", e))?;
    let st = fstat(src.as_raw_fd()).map_err(|e| io(&from.display_path(name), "cannot stat", e))?;
    let mut dst = to
        .create_file(name, 0o600)
        .map_err(|e| io(&to.display_path(name), "cannot create", e))?;
    // SAFETY: both descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc != 0 {
        std::io::copy(&mut src, &mut dst)
            .map_err(|e| io(&from.display_path(name), "cannot copy", e))?;
        tally.copied += 1;
    }
    tally.files += 1;
    set_owner_mode(dst.as_raw_fd(), st.st_uid, st.st_gid, st.st_mode & 0o7777)
        .map_err(|e| io(&to.display_path(name), "cannot set the owner of", e))
}
