//! Stores: where bundles live. A local directory (`/path` or `file:///path`) or
//! S3-compatible object storage (`s3://bucket/prefix`, see `s3.rs`). Every store holds a
//! bundle under `<store>/<id>/`, `bundle.json` last.
//!
//! The room of the store backends: this file (the `Store` kinds and the local
//! directory), `s3` (the S3 client, URLs, settings and credentials), `uploads` (queued,
//! concurrent uploads into one S3 store, for the built-in backup), `objects` (single
//! objects of either kind, for the WAL archive) and `fanout` (one bundle written once and
//! copied to every store, and the `--min-stores` count).
//!
//! An S3 store carries its own settings ([`s3::S3Store`]): whoever parses a store URL
//! passes the settings resolved for this run (flags, then the config file; in the agent,
//! its settings on stdin), so no store operation reads process-wide state.
//!
//! Why a closed enum and not a trait: there are exactly two kinds, and both are
//! synchronous values that are cloned, compared and recorded by URL; a `dyn` trait would
//! add boxing and a vtable to every caller for no third kind in sight, while a missing
//! arm in a `match` here is a compile error when a kind is added. The enum is only the
//! interface if callers ask it, not look into it: what depends on the kind (bundle
//! presence, fetch, copy, small files, removal) is a `Store` method. The places that
//! still match on the kind do so for a per-kind strategy of their own: the catalog's
//! scan (a link-free directory walk that skips the WAL archive, versus one S3 listing
//! read through one client), the metrics' archive scan (only the newest directory of a
//! timeline, versus one listing), and the built-in backup's `Sink` (a writer per kind,
//! like [`objects::Handle`]).

pub mod fanout;
pub mod objects;
pub mod s3;
pub mod uploads;

use crate::error::{Error, Result};
use crate::fsutil::{self, Ownership};
use std::path::{Path, PathBuf};

/// A parsed store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    Local(PathBuf),
    S3(s3::S3Store),
}

impl Store {
    /// Parses a store URL; relative paths are made absolute against the current directory
    /// (the agent runs from `/`). An S3 store keeps `s3`, the settings to reach it.
    pub fn parse(url: &str, s3: &s3::Settings) -> Result<Store> {
        let url = url.trim();
        if url.is_empty() {
            return Err(Error::usage("empty --store")
                .hint("give a directory, file:///dir or s3://bucket/prefix"));
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(Error::usage(format!(
                    "invalid store {url:?}: a file:// URL needs an absolute path (file:///dir)"
                )));
            }
            return Ok(Store::Local(PathBuf::from(rest)));
        }
        if url.starts_with("s3://") {
            return Ok(Store::S3(s3::S3Store::parse(url, s3)?));
        }
        if url.contains("://") {
            return Err(Error::usage(format!("store {url:?}: unknown scheme"))
                .hint("give a directory, file:///dir or s3://bucket/prefix"));
        }
        let p = PathBuf::from(url);
        let abs = if p.is_absolute() {
            p
        } else {
            std::env::current_dir()
                .map_err(|e| Error::env(format!("cannot resolve {url}: {e}")))?
                .join(p)
        };
        Ok(Store::Local(abs))
    }

    /// The canonical text form, as recorded in markers and state.
    pub fn url(&self) -> String {
        match self {
            Store::Local(p) => p.display().to_string(),
            Store::S3(s) => s.url.url(),
        }
    }

    /// Where the bundle of `id` lives in this store.
    pub fn bundle_location(&self, id: &str) -> String {
        match self {
            Store::Local(p) => p.join(id).display().to_string(),
            Store::S3(s) => s.url.bundle_location(id),
        }
    }

    /// True if a complete bundle (one with `bundle.json`) of `id` is in this store (false
    /// also when an S3 store cannot be reached: see [`Store::preflight`]).
    pub fn has_bundle(&self, id: &str) -> bool {
        match self {
            Store::Local(p) => p.join(id).join(crate::bundle::manifest::MANIFEST).exists(),
            Store::S3(u) => s3::Client::open(u)
                .and_then(|c| c.head(&format!("{id}/{}", crate::bundle::manifest::MANIFEST)))
                .map(|h| h.is_some())
                .unwrap_or(false),
        }
    }

    /// Checks, before a backup starts, that `id` is new in this store and (for S3) that the
    /// bucket exists and answers to these credentials (by listing `<prefix>/<id>/`, whose
    /// errors, unlike those of a HEAD, say why). A usage error if the bundle exists; an
    /// environment error if the store cannot be used.
    pub fn preflight(&self, id: &str) -> Result<()> {
        let exists = match self {
            Store::Local(p) => p.join(id).join(crate::bundle::manifest::MANIFEST).exists(),
            Store::S3(u) => s3::Client::open(u)?
                .list_below(id)?
                .iter()
                .any(|o| o.key == format!("{id}/{}", crate::bundle::manifest::MANIFEST)),
        };
        if exists {
            return Err(Error::usage(format!(
                "a bundle with ID {id} already exists in {}",
                self.bundle_location(id)
            ))
            .hint("each backup needs its own ID"));
        }
        Ok(())
    }

    /// True for stores that are not a local directory.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Store::Local(_))
    }

    /// Makes `id`'s bundle readable as a local directory: a local store's own directory,
    /// or (for remote stores) a download into `scratch/<id>`. The caller checks it
    /// (`bundle.json` present, checksums) before trusting it.
    /// The ID must be a valid backup ID (it may come from a copy's marker), and a local
    /// bundle directory must be a directory, not a link to somewhere else.
    pub fn fetch_bundle(&self, id: &str, scratch: &Path) -> Result<PathBuf> {
        crate::id::validate(id)?;
        match self {
            Store::Local(root) => {
                let dir = root.join(id);
                if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
                    return Err(Error::new(
                        crate::error::Class::Check,
                        format!("{} is not a directory (a link?): a store holds each bundle in a directory named by its ID", dir.display()),
                    )
                    .hint("someone altered the store: check it, and use another store's copy of the bundle"));
                }
                if !dir.join(crate::bundle::manifest::MANIFEST).is_file() {
                    return Err(Error::usage(format!(
                        "store {} holds no complete bundle of backup {id} (no {})",
                        root.display(),
                        dir.join(crate::bundle::manifest::MANIFEST).display()
                    ))
                    .hint("check the backup ID and the store; a bundle without bundle.json is partial and unusable"));
                }
                Ok(dir)
            }
            Store::S3(u) => s3::fetch_bundle(u, id, scratch),
        }
    }

    /// A small file of `id`'s bundle (`None` when the bundle has no such file), refused
    /// when larger than `cap` bytes: a store's files are hostile and must not decide how
    /// much memory is used. A local store's files are read without following links.
    pub fn read_bundle_file(&self, id: &str, name: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Local(root) => {
                let dir = root.join(id);
                match crate::bundle::read::read_capped(&dir, name, cap) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(crate::error::io_err("cannot read", &dir.join(name), e)),
                }
            }
            Store::S3(s) => s3::Client::open(s)?.get_small(&format!("{id}/{name}"), cap),
        }
    }

    /// Stores `bytes` as the file `name` of `id`'s bundle, durably (a local store's bundle
    /// directory must be a real directory, not a link); returns where it went.
    pub fn write_bundle_file(&self, id: &str, name: &str, bytes: &[u8]) -> Result<String> {
        crate::id::validate(id)?;
        match self {
            Store::Local(root) => {
                let dir = root.join(id);
                let md = std::fs::symlink_metadata(&dir)
                    .map_err(|e| Error::env(format!("cannot stat {}: {e}", dir.display())))?;
                if !md.is_dir() {
                    return Err(Error::env(format!(
                        "{} is not a directory (a link?): {name} is not written there",
                        dir.display()
                    )));
                }
                let path = dir.join(name);
                fsutil::write_atomic(&path, bytes, &Ownership::of_dir(&dir)?)?;
                Ok(path.display().to_string())
            }
            Store::S3(s) => {
                s3::Client::open(s)?.put_bytes(&format!("{id}/{name}"), bytes.to_vec())?;
                Ok(format!("{}{name}", s.url.bundle_location(id)))
            }
        }
    }

    /// Removes one bundle: `bundle.json` first (so that it stops being complete at once),
    /// then the built-in backup's data (`data/<id>/`, if any), then `others` (its other
    /// files, as listed, relative to the bundle). A local bundle directory that is not a
    /// real directory (a link) is refused, never followed.
    pub fn remove_bundle(&self, id: &str, others: &[String]) -> Result<()> {
        crate::id::validate(id)?;
        let manifest = crate::bundle::manifest::MANIFEST;
        match self {
            Store::Local(root) => {
                let dir = root.join(id);
                let md = std::fs::symlink_metadata(&dir)
                    .map_err(|e| crate::error::io_err("cannot stat", &dir, e))?;
                if !md.is_dir() {
                    return Err(Error::env(format!(
                        "{} is not a directory (a symbolic link?): not removed, not followed",
                        dir.display()
                    )));
                }
                let m = dir.join(manifest);
                match std::fs::remove_file(&m) {
                    Ok(()) => fsutil::fsync_dir(&dir)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(crate::error::io_err("cannot remove", &m, e)),
                }
                if let Some(d) = local_data_dir(root, id) {
                    fsutil::remove_tree(&d)?;
                }
                fsutil::remove_tree(&dir)
            }
            Store::S3(s) => {
                let c = s3::Client::open(s)?;
                c.delete(&[format!("{id}/{manifest}")])?;
                let data: Vec<String> = c
                    .list_below(&format!("{}/{id}", crate::id::DATA_DIR))?
                    .into_iter()
                    .map(|o| o.key)
                    .collect();
                c.delete(&data)?;
                let rest: Vec<String> = others
                    .iter()
                    .filter(|o| o.as_str() != manifest)
                    .map(|o| format!("{id}/{o}"))
                    .collect();
                c.delete(&rest)
            }
        }
    }

    /// The directory of `id`'s bundle in a local store; `None` for remote stores.
    pub fn local_bundle_dir(&self, id: &str) -> Option<PathBuf> {
        match self {
            Store::Local(root) => Some(root.join(id)),
            Store::S3(_) => None,
        }
    }

    /// Copies a complete bundle from a local directory into this store: every file of
    /// the manifest (temporary name, fsync, rename), then `bundle.json` last.
    pub fn copy_bundle_from(
        &self,
        id: &str,
        from: &Path,
        manifest: &crate::bundle::manifest::Manifest,
    ) -> Result<String> {
        crate::id::validate(id)?;
        if manifest.id != id {
            return Err(Error::internal(format!(
                "bundle.json of {} copied as backup {id}",
                manifest.id
            )));
        }
        if let Some(bad) = manifest
            .files
            .keys()
            .find_map(|n| crate::bundle::check::check_rel_path(n).err())
        {
            return Err(Error::new(
                crate::error::Class::Check,
                format!("bundle.json field files: {bad}"),
            ));
        }
        match self {
            Store::Local(root) => {
                let own = Ownership::private();
                if !root.exists() {
                    std::fs::create_dir_all(root).map_err(|e| {
                        Error::env(format!(
                            "cannot create store directory {}: {e}",
                            root.display()
                        ))
                    })?;
                }
                let dir = root.join(id);
                fsutil::ensure_dir(&dir, &own)?;
                for name in manifest.files.keys() {
                    let dest = dir.join(name);
                    if let Some(parent) = dest.parent() {
                        fsutil::ensure_dir(parent, &own)?;
                    }
                    fsutil::copy_atomic(&from.join(name), &dest, &own)?;
                }
                for sub in manifest
                    .files
                    .keys()
                    .filter_map(|n| n.rsplit_once('/').map(|x| x.0.to_string()))
                {
                    fsutil::fsync_dir(&dir.join(sub))?;
                }
                let bytes = serde_json::to_vec_pretty(manifest)
                    .map_err(|e| Error::internal(e.to_string()))?;
                fsutil::write_atomic(&dir.join(crate::bundle::manifest::MANIFEST), &bytes, &own)?;
                Ok(dir.display().to_string())
            }
            Store::S3(u) => s3::upload_bundle(u, id, from, manifest),
        }
    }
}

/// `<root>/data/<id>`, a built-in backup's data in a local store, when it is a real
/// directory (a link is never followed).
pub fn local_data_dir(root: &Path, id: &str) -> Option<PathBuf> {
    let data = root.join(crate::id::DATA_DIR);
    let d = data.join(id);
    let data_ok = std::fs::symlink_metadata(&data).is_ok_and(|m| m.is_dir());
    (data_ok && std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir())).then_some(d)
}

/// The store used when neither `--store` nor the config names one.
pub fn default_store() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/pgbookend/bundles");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&d).join("pgbookend/bundles");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".local/share/pgbookend/bundles")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        let none = s3::Settings::default();
        assert_eq!(
            Store::parse("/b", &none).unwrap(),
            Store::Local("/b".into())
        );
        assert_eq!(
            Store::parse("file:///b/c", &none).unwrap(),
            Store::Local("/b/c".into())
        );
        assert!(Store::parse("file://b", &none).is_err());
        assert!(
            matches!(Store::parse("s3://bucket/p", &none).unwrap(), Store::S3(s) if s.url.url() == "s3://bucket/p")
        );
        assert!(Store::parse("s3://user:secret@bucket/p", &none).is_err());
        assert!(Store::parse("ftp://x", &none).is_err());
        assert!(Store::parse("", &none).is_err());
        assert!(matches!(Store::parse("rel", &none).unwrap(), Store::Local(p) if p.is_absolute()));
    }

    #[test]
    fn local_bundle_files_and_removal() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::parse(&d.path().display().to_string(), &Default::default()).unwrap();
        let id = "20260101T000000Z-abcd";
        std::fs::create_dir(d.path().join(id)).unwrap();
        assert_eq!(store.read_bundle_file(id, "x.json", 100).unwrap(), None);
        let at = store.write_bundle_file(id, "x.json", b"{}").unwrap();
        assert_eq!(at, d.path().join(id).join("x.json").display().to_string());
        assert_eq!(
            store
                .read_bundle_file(id, "x.json", 100)
                .unwrap()
                .as_deref(),
            Some(&b"{}"[..])
        );
        assert!(store.read_bundle_file(id, "x.json", 1).is_err(), "cap");
        // A bundle directory that is a link is neither written into nor removed.
        let other = tempfile::tempdir().unwrap();
        let link = "20260101T000000Z-link";
        std::os::unix::fs::symlink(other.path(), d.path().join(link)).unwrap();
        assert!(store.write_bundle_file(link, "x.json", b"{}").is_err());
        assert!(store.remove_bundle(link, &[]).is_err());
        assert!(d.path().join(link).exists());
        // Removal takes the bundle and its built-in data.
        std::fs::write(
            d.path().join(id).join(crate::bundle::manifest::MANIFEST),
            b"{}",
        )
        .unwrap();
        let data = d.path().join(crate::id::DATA_DIR).join(id);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("index"), b"i").unwrap();
        store.remove_bundle(id, &["x.json".into()]).unwrap();
        assert!(!d.path().join(id).exists() && !data.exists());
    }

    #[test]
    fn s3_settings_travel_with_the_store() {
        let a = s3::Settings {
            endpoint: Some("http://127.0.0.1:9000".into()),
            path_style: Some(true),
            ..Default::default()
        };
        let b = s3::Settings {
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        let (sa, sb) = (
            Store::parse("s3://bucket/p", &a).unwrap(),
            Store::parse("s3://bucket/p", &b).unwrap(),
        );
        assert!(matches!(&sa, Store::S3(s) if s.settings == a));
        assert!(matches!(&sb, Store::S3(s) if s.settings == b));
        // The same place, reached two ways: the recorded URL does not show the settings.
        assert_eq!(sa.url(), sb.url());
    }
}
