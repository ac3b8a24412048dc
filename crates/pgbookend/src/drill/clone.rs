//! The throwaway clone of a restored copy: every file cloned by reflink (`FICLONE`) where
//! the filesystem shares blocks (XFS, btrfs); else, as root, an overlay mount (the copy is
//! the read-only lower layer, every change lands in the scratch directory); else a full
//! copy. A link in the copy is never followed: a copy with one is refused. The copy
//! itself is only read.

use crate::error::{Error, Result};
use crate::fsutil::{fstat, kind, set_owner_mode, Dir};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `FICLONE` from `linux/fs.h`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// How the clone was made, for the report; ordered from the cheapest to the costliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every file shares its blocks with the copy (nothing was copied).
    Reflink,
    /// An overlay mount: the copy read-only below, changes in the scratch directory.
    Overlay,
    /// At least one file was copied byte for byte (the filesystem cannot reflink).
    FullCopy,
}

impl Method {
    /// The word used in the human report.
    pub fn describe(self) -> &'static str {
        match self {
            Method::Reflink => "reflink clone",
            Method::Overlay => {
                "overlay mount (the copy read-only below, changes in the scratch directory)"
            }
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

/// The name of the clone (or of the overlay's mount point) in the scratch directory.
pub const DATA: &str = "data";

/// Makes the clone `scratch/data` of `src` the cheapest way the system allows (see the
/// module's comment). `scratch_path` is the path `scratch` was opened as.
/// `allowed` names the links of the copy (relative paths) that are left out of the clone
/// instead of refused: the tablespace links `prepare` replaces.
pub fn make_clone(
    src: &Path,
    scratch: &Dir,
    scratch_path: &Path,
    name: &str,
    allowed: &[String],
    stop: &dyn Fn() -> bool,
) -> Result<Method> {
    let mut walk = Walk {
        tally: Tally::default(),
        stop,
        allowed,
    };
    if can_reflink(src, scratch) || forced_copy() {
        return clone_tree(src, scratch, name, &mut walk);
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let plain = |p: &Path| !p.to_string_lossy().contains([',', ':', '\\']);
    if root && plain(src) && plain(scratch_path) {
        let from = Dir::open(src).map_err(|e| io(src, "cannot open the copy", e))?;
        refuse_links(&from, "", &walk)?;
        if overlay(src, scratch, scratch_path, name).is_ok() {
            return Ok(Method::Overlay);
        }
        // No overlay support here: fall back to a copy (of what is left of a failed try too).
        let _ = scratch.remove_tree(format!("{name}.upper"));
        let _ = scratch.remove_tree(format!("{name}.work"));
        let _ = scratch.remove_tree(name);
    }
    clone_tree(src, scratch, name, &mut walk)
}

/// The state of one walk over a copy.
struct Walk<'a> {
    tally: Tally,
    stop: &'a dyn Fn() -> bool,
    allowed: &'a [String],
}

/// Debug builds only: `PGBOOKEND_TEST_DRILL_COPY` makes the tests take the copy path
/// where they would get an overlay.
fn forced_copy() -> bool {
    cfg!(debug_assertions) && std::env::var_os("PGBOOKEND_TEST_DRILL_COPY").is_some()
}

/// True if a file of `src` can be reflinked into `scratch` (same filesystem, and one that
/// shares blocks). The probe is the first regular file found in `src` (a data directory's
/// `PG_VERSION`, a tablespace's first relation file), never through a link; a tree with no
/// file at all has nothing to copy and counts as reflinked.
fn can_reflink(src: &Path, scratch: &Dir) -> bool {
    let Ok(from) = Dir::open(src) else {
        return false;
    };
    let Some(f) = first_file(&from, 0) else {
        return true;
    };
    let probe = ".reflink-probe";
    let Ok(t) = scratch.create_file(probe, 0o600) else {
        return false;
    };
    // SAFETY: both descriptors are open for the duration of the call.
    let ok = unsafe { libc::ioctl(t.as_raw_fd(), FICLONE as _, f.as_raw_fd()) } == 0;
    let _ = scratch.unlink(probe);
    ok
}

/// The first regular file below `dir` (`PG_VERSION` first), at most a few levels deep and
/// never through a link.
fn first_file(dir: &Dir, depth: u32) -> Option<std::fs::File> {
    if let Ok(f) = dir.open_file("PG_VERSION") {
        return Some(f);
    }
    let mut names = dir.entries().ok()?;
    names.sort();
    for n in names.iter().take(10_000) {
        match dir.lstat(n).map(|st| kind(&st)) {
            Ok(libc::S_IFREG) => return dir.open_file(n).ok(),
            Ok(libc::S_IFDIR) if depth < 4 => {
                if let Some(f) = dir.open_dir(n).ok().and_then(|d| first_file(&d, depth + 1)) {
                    return Some(f);
                }
            }
            _ => {}
        }
    }
    None
}

/// Refuses a copy holding a link anywhere (an overlay would expose it to the server).
fn refuse_links(dir: &Dir, rel: &str, walk: &Walk) -> Result<()> {
    for n in dir
        .entries()
        .map_err(|e| io(dir.path(), "cannot list", e))?
    {
        if (walk.stop)() {
            return Err(super::interrupted());
        }
        let (sub, k) = entry(dir, rel, &n)?;
        match k {
            libc::S_IFLNK if walk.allowed.contains(&sub) => {}
            libc::S_IFLNK => return Err(link_refused(&sub, &dir.display_path(&n))),
            libc::S_IFDIR => {
                let d = dir
                    .open_dir(&n)
                    .map_err(|e| io(&dir.display_path(&n), "cannot open", e))?;
                refuse_links(&d, &sub, walk)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Mounts an overlay at `scratch/data`: lower `src` (read-only), upper and work dirs in
/// the scratch directory, the upper root with the owner and mode of `src`.
fn overlay(src: &Path, scratch: &Dir, scratch_path: &Path, name: &str) -> std::io::Result<()> {
    let st = Dir::open(src)?.stat()?;
    let (upper, work) = (format!("{name}.upper"), format!("{name}.work"));
    for d in [upper.as_str(), work.as_str(), name] {
        scratch.mkdir(d, 0o700)?;
    }
    scratch
        .open_dir(&upper)?
        .set_owner_mode(st.st_uid, st.st_gid, st.st_mode & 0o7777)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        src.display(),
        scratch_path.join(&upper).display(),
        scratch_path.join(&work).display()
    );
    let c = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let target = c(&scratch_path.join(name).display().to_string())?;
    let (fstype, data) = (c("overlay")?, c(&opts)?);
    // SAFETY: every argument is a valid NUL-terminated string for the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts an overlay at `data` if there is one (never following a link); a busy mount
/// is detached.
pub fn unmount(data: &Path) {
    let Ok(c) = std::ffi::CString::new(data.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid path string; failures (not a mount point) are ignored.
    unsafe {
        if libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY)
        {
            libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW | libc::MNT_DETACH);
        }
    }
}

/// Clones the directory `src` into `dest/name` (created with the owner and mode of
/// `src`). Refuses links in the copy (tablespaces, a separate pg_wal) except the allowed
/// ones, which are left out. The stop flag is polled between files.
fn clone_tree(src: &Path, dest: &Dir, name: &str, walk: &mut Walk) -> Result<Method> {
    let from = Dir::open(src).map_err(|e| io(src, "cannot open the copy", e))?;
    clone_dir(&from, dest, OsStr::new(name), "", walk)?;
    Ok(if walk.tally.copied == 0 {
        Method::Reflink
    } else {
        Method::FullCopy
    })
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::env(format!("{what} {}: {e}", path.display()))
}

/// Creates `name` in `parent` like `from` and clones everything below it.
fn clone_dir(from: &Dir, parent: &Dir, name: &OsStr, rel: &str, walk: &mut Walk) -> Result<()> {
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
        if (walk.stop)() {
            return Err(super::interrupted());
        }
        let (sub, k) = entry(from, rel, &n)?;
        match k {
            libc::S_IFDIR => {
                let d = from
                    .open_dir(&n)
                    .map_err(|e| io(&from.display_path(&n), "cannot open", e))?;
                clone_dir(&d, &to, &n, &sub, walk)?;
            }
            libc::S_IFREG => clone_file(from, &to, &n, &mut walk.tally)?,
            libc::S_IFLNK if walk.allowed.contains(&sub) => {}
            libc::S_IFLNK => return Err(link_refused(&sub, &from.display_path(&n))),
            _ => {} // sockets, FIFOs: nothing a server needs from a copy
        }
    }
    Ok(())
}

/// The path of entry `name` of `dir` relative to the copy (`rel` is the directory's), and
/// its file type from `lstat` (a link is never followed).
fn entry(dir: &Dir, rel: &str, name: &OsStr) -> Result<(String, libc::mode_t)> {
    let sub = if rel.is_empty() {
        name.to_string_lossy().into_owned()
    } else {
        format!("{rel}/{}", name.to_string_lossy())
    };
    let st = dir
        .lstat(name)
        .map_err(|e| io(&dir.display_path(name), "cannot stat", e))?;
    Ok((sub, kind(&st)))
}

/// The refusal for a link inside the copy.
fn link_refused(rel: &str, path: &Path) -> Error {
    let why = if rel.starts_with("pg_tblspc/") {
        "the copy has a tablespace: pass --tablespace OID=PATH, the directory its copy was restored to"
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
