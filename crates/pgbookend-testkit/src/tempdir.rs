//! Harness temporary directories: `<tmp_root>/pgbookend-test.<owner pid>.<tag>.XXXXXX`, server-accessible, removed on Drop.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{chown_to_server, tmp_root, DIR_PREFIX};

/// Creates a fresh directory `<tmp_root>/pgbookend-test.<our pid>.<tag>.XXXXXX` (mode 0755, owned by
/// the server user when root). The pid in the name tells [`crate::reap_leftovers`] whether its
/// owner still runs.
pub(crate) fn make_dir(tag: &str) -> io::Result<PathBuf> {
    make_dir_in(tmp_root(), tag)
}

/// [`make_dir`] inside `root` instead of the harness's temporary root (e.g. a mounted
/// test filesystem).
pub(crate) fn make_dir_in(root: &Path, tag: &str) -> io::Result<PathBuf> {
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    let tag = if tag.is_empty() {
        "tmp".to_string()
    } else {
        tag
    };
    let template = format!(
        "{}/{DIR_PREFIX}{}.{tag}.XXXXXX",
        root.display(),
        std::process::id()
    );
    let ctemplate = CString::new(template).map_err(io::Error::other)?;
    let mut bytes = ctemplate.into_bytes_with_nul();
    // SAFETY: bytes is a NUL-terminated, writable buffer ending in XXXXXX, as mkdtemp requires.
    let p = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    bytes.pop();
    let path = PathBuf::from(OsString::from_vec(bytes));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    chown_to_server(&path);
    Ok(path)
}

/// The pid encoded in a harness directory name, if any (template caches carry none).
pub(crate) fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(DIR_PREFIX)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Removes a directory tree, best effort: also when a test left unreadable or unwritable
/// subdirectories behind (fixes modes and retries). Never panics.
pub(crate) fn remove_tree(path: &Path) {
    if std::fs::symlink_metadata(path).is_err() {
        return;
    }
    if std::fs::remove_dir_all(path).is_ok() {
        return;
    }
    make_writable(path);
    if let Err(e) = std::fs::remove_dir_all(path) {
        if std::fs::symlink_metadata(path).is_ok() {
            eprintln!("pgbookend-testkit: cannot remove {}: {e}", path.display());
        }
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Whether `PGBOOKEND_TEST_KEEP` asks to keep directories for post-mortem debugging.
pub(crate) fn keep_dirs() -> bool {
    std::env::var_os("PGBOOKEND_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A temporary directory for tests (bundle stores, restored copies, scratch files) that the
/// server user can use too (chowned to it when root), removed with all its content on Drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

/// Creates a [`TempDir`] named `<tmp_root>/pgbookend-test.<pid>.<prefix>.XXXXXX` (see
/// [`crate::tmp_root`]); panics if that directory is unusable.
pub fn temp_dir(prefix: &str) -> TempDir {
    let path = make_dir(prefix).unwrap_or_else(|e| {
        panic!(
            "pgbookend-testkit: cannot create a temp dir in {}: {e}",
            tmp_root().display()
        )
    });
    TempDir { path }
}

impl TempDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory on disk (no removal on Drop) and returns its path.
    pub fn keep(self) -> PathBuf {
        let mut me = std::mem::ManuallyDrop::new(self);
        std::mem::take(&mut me.path)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if keep_dirs() {
            eprintln!("pgbookend-testkit: keeping {}", self.path.display());
            return;
        }
        remove_tree(&self.path);
    }
}
