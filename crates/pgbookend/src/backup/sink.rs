//! Where a built-in backup's objects go: `data/<id>/` of one store, local or S3.
//! Local objects are written durably (temporary file `O_EXCL`, write, fsync, rename
//! without replacing, fsync of the directory), beneath directory descriptors. S3 objects
//! are queued to the store's uploader ([`Uploads`]) so that the copy's workers keep
//! compressing while objects travel; [`Sink::flush`] makes them durable.

use super::format::DATA_DIR;
use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, Dir, Ownership};
use crate::store::uploads::Uploads;
use crate::store::{s3, Store};
use std::io::Write;
use std::sync::Arc;

/// One store's `data/<id>/`, open for writing.
pub enum Sink {
    Local {
        /// `<store>/data/`.
        data: Dir,
        /// `<store>/data/<id>/`.
        dir: Dir,
        own: Ownership,
        id: String,
    },
    S3 {
        client: Arc<s3::Client>,
        uploads: Uploads,
        id: String,
    },
}

impl Sink {
    /// Opens (creating) `data/<id>/` in `store`; refuses one that already exists. An S3
    /// store gets up to `in_flight` uploads at once.
    pub fn open(store: &Store, id: &str, in_flight: usize) -> Result<Sink> {
        match store {
            Store::Local(p) => {
                let root = Dir::open_follow(p).map_err(|e| {
                    io_err("cannot open store directory", p, e)
                        .hint("the store directory must exist: create it")
                })?;
                let own = owner_of(&root, p)?;
                let data = fsutil::ensure_dir_at(&root, DATA_DIR.as_ref(), &own)?;
                match data.mkdir(id, own.dir_mode) {
                    Ok(()) => {}
                    Err(e) => {
                        return Err(io_err("cannot create", &data.display_path(id), e)
                            .hint("a backup of this ID exists in the store: choose another --id"))
                    }
                }
                let dir = data
                    .open_dir(id)
                    .map_err(|e| fsutil::nofollow_err("cannot open", &data.display_path(id), e))?;
                own.apply_fd(&dir, true)
                    .map_err(|e| io_err("cannot change the owner of", dir.path(), e))?;
                Ok(Sink::Local {
                    data,
                    dir,
                    own,
                    id: id.to_string(),
                })
            }
            Store::S3(u) => {
                let client = Arc::new(s3::Client::open(u)?);
                Ok(Sink::S3 {
                    uploads: Uploads::start(client.clone(), in_flight)?,
                    client,
                    id: id.to_string(),
                })
            }
        }
    }

    /// Stores `bytes` as `data/<id>/<name>`: durably at once in a local store, queued in
    /// an S3 store (durable after [`Sink::flush`]). An error may be an earlier object's.
    pub fn send(&self, name: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Sink::Local { dir, own, .. } => put_local(dir, name, bytes, own),
            Sink::S3 { uploads, id, .. } => uploads.send(&format!("{DATA_DIR}/{id}/{name}"), bytes),
        }
    }

    /// Waits until every object sent is durable; the first failure, if any.
    pub fn flush(&self) -> Result<()> {
        match self {
            Sink::Local { .. } => Ok(()),
            Sink::S3 { uploads, .. } => uploads.flush(),
        }
    }

    /// Stores `bytes` as `data/<id>/<name>`, durably, once everything sent before is.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.flush()?;
        self.send(name, bytes)?;
        self.flush()
    }

    /// Removes `data/<id>/` and everything in it (after a failed backup).
    pub fn remove_all(&self) -> Result<()> {
        match self {
            Sink::Local { data, id, .. } => match data.remove_tree(id) {
                Ok(()) => data
                    .sync()
                    .map_err(|e| io_err("cannot fsync directory", data.path(), e)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("cannot remove", &data.display_path(id), e)),
            },
            Sink::S3 {
                client,
                uploads,
                id,
            } => {
                // Nothing may land after the listing: the uploads end first.
                uploads.shutdown();
                let keys: Vec<String> = client
                    .list_below(&format!("{DATA_DIR}/{id}"))?
                    .into_iter()
                    .map(|o| o.key)
                    .collect();
                client.delete(&keys)
            }
        }
    }
}

/// As root, what is written takes the owner of the store directory.
fn owner_of(root: &Dir, p: &std::path::Path) -> Result<Ownership> {
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

fn put_local(d: &Dir, name: &str, bytes: &[u8], own: &Ownership) -> Result<()> {
    let tmp = fsutil::temp_name(name.as_ref());
    let tmp_path = d.display_path(&tmp);
    let mut f = d
        .create_file(&tmp, 0o600)
        .map_err(|e| io_err("cannot create", &tmp_path, e))?;
    let res = (|| {
        f.write_all(bytes)
            .map_err(|e| io_err("cannot write", &tmp_path, e))?;
        own.apply_fd(&f, false)
            .map_err(|e| io_err("cannot change the owner of", &tmp_path, e))?;
        f.sync_all()
            .map_err(|e| io_err("cannot fsync", &tmp_path, e))?;
        d.rename_noreplace(&tmp, name)
            .map_err(|e| io_err("cannot rename into place", &d.display_path(name), e))?;
        d.sync()
            .map_err(|e| io_err("cannot fsync directory", d.path(), e))
    })();
    if res.is_err() {
        let _ = d.unlink(&tmp);
    }
    res.map_err(|e: Error| e)
}
