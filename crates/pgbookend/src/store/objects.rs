//! Single objects in a store, for the WAL archive: list one directory, put a file without
//! ever replacing an object, read one back as a stream. Local directories and S3 alike;
//! the caller names objects by content (the hash is in the name), so an object that
//! exists under a name already holds those bytes.

use super::{s3, Store};
use crate::bundle::manifest::FileEntry;
use crate::error::{io_err, Class, Error, Result};
use crate::fsutil::{self, Dir, Ownership};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::Path;

/// One object of a store directory: its last name component and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub size: u64,
}

/// An open connection to one store (S3 clients are reused for every call).
pub enum Handle {
    Local(std::path::PathBuf),
    S3(Box<s3::Client>),
}

impl Handle {
    /// Opens `store` (for S3: resolves settings and credentials; no request yet).
    pub fn open(store: &Store) -> Result<Handle> {
        Ok(match store {
            Store::Local(p) => Handle::Local(p.clone()),
            Store::S3(u) => Handle::S3(Box::new(s3::Client::open(u)?)),
        })
    }

    /// Opens the local store's root: it must exist (a missing mount point must not be
    /// silently replaced by a directory on the root file system).
    fn root(p: &Path) -> Result<Dir> {
        Dir::open_follow(p).map_err(|e| {
            io_err("cannot open store directory", p, e)
                .hint("the store directory must exist and be a directory the archiver may write: create it, or fix archive_store")
        })
    }

    /// The open directory `dir` of a local store and its entry names, without following
    /// links; `None` when it does not exist yet.
    fn local_entries(p: &Path, dir: &str) -> Result<Option<(Dir, Vec<std::ffi::OsString>)>> {
        let root = Self::root(p)?;
        let d = match root.open_beneath(Path::new(dir)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fsutil::nofollow_err("cannot open", &p.join(dir), e)),
        };
        let names = d
            .entries()
            .map_err(|e| io_err("cannot list", &p.join(dir), e))?;
        Ok(Some((d, names)))
    }

    /// The objects directly in `dir` (a relative path of plain components); an empty list
    /// when the directory does not exist yet.
    pub fn list(&self, dir: &str) -> Result<Vec<Object>> {
        match self {
            Handle::Local(p) => {
                let Some((d, names)) = Self::local_entries(p, dir)? else {
                    return Ok(Vec::new());
                };
                Ok(names
                    .into_iter()
                    .filter_map(|n| n.into_string().ok())
                    .filter_map(|name| {
                        let st = d.lstat(&name).ok()?;
                        (st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(Object {
                            name,
                            size: st.st_size as u64,
                        })
                    })
                    .collect())
            }
            Handle::S3(c) => {
                let strip = format!("{dir}/");
                Ok(c.list_below(dir)?
                    .into_iter()
                    .filter_map(|o| {
                        let name = o.key.strip_prefix(&strip)?;
                        (!name.contains('/')).then(|| Object {
                            name: name.to_string(),
                            size: o.size,
                        })
                    })
                    .collect())
            }
        }
    }

    /// The objects one level below `dir`: `(subdirectory, object)` for every object of
    /// every subdirectory (links and deeper levels ignored); empty when `dir` is absent.
    /// One listing for a whole cluster's archive, for coverage checks and retention.
    pub fn list_tree(&self, dir: &str) -> Result<Vec<(String, Object)>> {
        match self {
            Handle::Local(p) => {
                let Some((d, names)) = Self::local_entries(p, dir)? else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::new();
                for sub in names.into_iter().filter_map(|n| n.into_string().ok()) {
                    let is_dir = d
                        .lstat(&sub)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
                    if is_dir {
                        for o in self.list(&format!("{dir}/{sub}"))? {
                            out.push((sub.clone(), o));
                        }
                    }
                }
                Ok(out)
            }
            Handle::S3(c) => {
                let strip = format!("{dir}/");
                Ok(c.list_below(dir)?
                    .into_iter()
                    .filter_map(|o| {
                        let rest = o.key.strip_prefix(&strip)?;
                        let (sub, name) = rest.split_once('/')?;
                        (!name.contains('/')).then(|| {
                            (
                                sub.to_string(),
                                Object {
                                    name: name.to_string(),
                                    size: o.size,
                                },
                            )
                        })
                    })
                    .collect())
            }
        }
    }

    /// Removes the objects `dir/name` (missing ones are fine): for WAL retention only.
    pub fn remove(&self, dir: &str, names: &[String]) -> Result<()> {
        match self {
            Handle::Local(p) => {
                let root = Self::root(p)?;
                let d = match root.open_beneath(Path::new(dir)) {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(fsutil::nofollow_err("cannot open", &p.join(dir), e)),
                };
                for n in names {
                    match d.unlink(n) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err("cannot remove", &p.join(dir).join(n), e)),
                    }
                }
                Ok(())
            }
            Handle::S3(c) => {
                let keys: Vec<String> = names.iter().map(|n| format!("{dir}/{n}")).collect();
                c.delete(&keys)
            }
        }
    }

    /// Stores the local file `src` as `dir/name`, durably and verified: local stores write
    /// a temporary file (`O_EXCL`), fsync it, rename it into place without replacing
    /// anything (an object already there is left as it is: it has the same name, so the
    /// same content), fsync the directory, then read the object back and compare its
    /// size and SHA-256 with `expect`. S3 uploads and checks the stored object.
    pub fn put_file(&self, dir: &str, name: &str, src: &Path, expect: &FileEntry) -> Result<()> {
        match self {
            Handle::Local(p) => {
                let root = Self::root(p)?;
                let own = owner_for(&root, p)?;
                let mut d = root;
                for c in dir.split('/') {
                    d = fsutil::ensure_dir_at(&d, c.as_ref(), &own)?;
                }
                put_local(&d, name, src, expect, &own)?;
                verify_local(&d, name, expect)
            }
            Handle::S3(c) => c.upload_file(&format!("{dir}/{name}"), src, expect),
        }
    }

    /// Streams the object `dir/name` into `w`; `Ok(false)` when it does not exist.
    pub fn get_into(&self, dir: &str, name: &str, w: &mut dyn Write) -> Result<bool> {
        match self {
            Handle::Local(p) => {
                let root = Self::root(p)?;
                let rel = Path::new(dir).join(name);
                let mut f = match root.open_file_beneath(&rel) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(fsutil::nofollow_err("cannot open", &p.join(&rel), e)),
                };
                copy_stream(&mut f, w).map_err(|e| match e {
                    CopyError::Read(e) => io_err("cannot read", &p.join(&rel), e),
                    CopyError::Write(e) => e,
                })?;
                Ok(true)
            }
            Handle::S3(c) => c.get_into(&format!("{dir}/{name}"), w),
        }
    }

    /// Where `dir/name` is, for messages.
    pub fn location(&self, dir: &str, name: &str) -> String {
        match self {
            Handle::Local(p) => p.join(dir).join(name).display().to_string(),
            Handle::S3(c) => format!("{}/{dir}/{name}", c.url.url()),
        }
    }
}

/// Who owns what is written into a local store: the current user's own, except as root,
/// where new directories and objects take the owner of the store directory, so that an
/// `archive-push` run by hand as root leaves nothing the server's archiver cannot use.
fn owner_for(root: &Dir, p: &Path) -> Result<Ownership> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Ownership::private());
    }
    let st = root.stat().map_err(|e| io_err("cannot stat", p, e))?;
    Ok(Ownership {
        uid: st.st_uid,
        gid: st.st_gid,
        ..Ownership::private()
    })
}

/// A failed stream copy: reading the source or writing the sink (whose error is already
/// an [`Error`], e.g. a corrupt compressed stream).
enum CopyError {
    Read(std::io::Error),
    Write(Error),
}

/// Copies `r` into `w` in 256 KiB pieces.
fn copy_stream(r: &mut dyn Read, w: &mut dyn Write) -> std::result::Result<(), CopyError> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(|e| {
            CopyError::Write(Error::new(Class::Check, format!("cannot unpack: {e}")))
        })?;
    }
}

/// Writes `src` as `name` in `d` through a temporary file, never replacing `name`.
fn put_local(d: &Dir, name: &str, src: &Path, expect: &FileEntry, own: &Ownership) -> Result<()> {
    let tmp = fsutil::temp_name(name.as_ref());
    let tmp_path = d.display_path(&tmp);
    let mut out = d
        .create_file(&tmp, 0o600)
        .map_err(|e| io_err("cannot create", &tmp_path, e))?;
    let res = (|| {
        let mut input = std::fs::File::open(src).map_err(|e| io_err("cannot open", src, e))?;
        let n = std::io::copy(&mut input, &mut out)
            .map_err(|e| io_err("cannot write", &tmp_path, e))?;
        if n != expect.size {
            return Err(Error::internal(format!(
                "{} changed while it was stored ({n} bytes, expected {})",
                src.display(),
                expect.size
            )));
        }
        own.apply_fd(&out, false)
            .map_err(|e| io_err("cannot change the owner or mode of", &tmp_path, e))?;
        out.sync_all()
            .map_err(|e| io_err("cannot fsync", &tmp_path, e))?;
        match d.rename_noreplace(&tmp, name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let _ = d.unlink(&tmp);
            }
            Err(e) => return Err(io_err("cannot rename into place", &d.display_path(name), e)),
        }
        d.sync()
            .map_err(|e| io_err("cannot fsync directory", d.path(), e))
    })();
    if res.is_err() {
        let _ = d.unlink(&tmp);
    }
    res
}

/// Reads a stored local object back and compares it with what was meant to be stored.
fn verify_local(d: &Dir, name: &str, expect: &FileEntry) -> Result<()> {
    let path = d.display_path(name);
    let mut f = d
        .open_file(name)
        .map_err(|e| fsutil::nofollow_err("cannot open", &path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| io_err("cannot read", &path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    let sha = hex::encode(h.finalize());
    if total != expect.size || sha != expect.sha256 {
        return Err(Error::new(
            Class::Check,
            format!(
                "{} reads back as {total} bytes with SHA-256 {sha}, expected {} bytes with {}",
                path.display(),
                expect.size,
                expect.sha256
            ),
        )
        .hint("the store changed or damaged the object: check the store's file system"));
    }
    Ok(())
}
