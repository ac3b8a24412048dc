//! The stored form of a built-in backup (`pgbookend backup`): where its objects live in a
//! store, and its index, the one document that says which bytes make which file.
//!
//! Layout, beside the bundle `<store>/<id>/` that `stop` writes as for every backup:
//! - `<store>/data/<id>/obj-NNNNNN`: one object per unit of work. An object is one
//!   compressed stream (see [`Compression`]) of the concatenation of its pieces, in order.
//!   A piece is a whole small file (small files are packed together, so that an S3 store
//!   does not pay one request per 8 KB file) or one chunk of a large file.
//! - `<store>/data/<id>/index.json`: the [`Index`], written after every object and
//!   before the backup is stopped. A built-in backup is complete only when its bundle is
//!   complete and its index is present and valid.
//! - `<store>/data/<id>/backup_manifest`: PostgreSQL's manifest of the backup, written
//!   after the stop.
//!
//! The index is hostile input when read back: [`Index::parse`] bounds its size, checks
//! every path, every reference from a piece to a file, and that the pieces of each file
//! cover it exactly once, in order, before anything else uses it.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The directory of the built-in backups' data in a store (reserved: no backup ID).
pub const DATA_DIR: &str = crate::id::DATA_DIR;
/// The name of the index object in `data/<id>/`.
pub const INDEX: &str = "index.json";
/// The name of PostgreSQL's manifest in `data/<id>/`.
pub const BACKUP_MANIFEST: &str = "backup_manifest";
/// The index format written by this version.
pub const FORMAT: u32 = 1;
/// The largest index accepted when read back (about two million files).
pub const MAX_INDEX_BYTES: u64 = 512 << 20;
/// The uncompressed size of one object: large files are cut into chunks of this size,
/// small files are packed into objects up to this size.
pub const CHUNK_BYTES: u64 = 8 << 20;
/// The longest path accepted in an index.
pub const MAX_PATH_BYTES: usize = 1024;

/// How objects are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// One zstd frame, with its content checksum.
    Zstd,
    /// One LZ4 frame, with its content checksum (faster, larger).
    Lz4,
    /// Stored as they are.
    None,
}

/// What an entry of the data directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    /// A symbolic link: only `pg_tblspc/<oid>` (a tablespace) and `pg_wal` are stored.
    Link,
}

/// One entry of the backed-up data directory. Paths are relative to PGDATA; the files
/// of a tablespace are stored under `pg_tblspc/<oid>/…`, as seen through its link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    /// Files: the size that was stored (what was read; PostgreSQL's WAL repairs a file
    /// that changed while it was read). Others: 0.
    #[serde(default)]
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch (for the backup_manifest).
    #[serde(default)]
    pub mtime: i64,
    /// Files: SHA-256 of the stored content, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Links: where the link pointed (an absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One piece of an object: `len` bytes of entry `entry` starting at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piece {
    pub entry: u32,
    pub offset: u64,
    pub len: u64,
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Object {
    /// `obj-NNNNNN` (six or more digits).
    pub name: String,
    /// Size of the stored (compressed) bytes.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes, lowercase hex: checked before anything is written
    /// from the object.
    pub sha256: String,
    /// The pieces, in the order their bytes follow each other in the object.
    pub pieces: Vec<Piece>,
}

/// The index of a built-in backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub id: String,
    pub compression: Compression,
    /// Entries sorted by path (parents before children).
    pub entries: Vec<Entry>,
    pub objects: Vec<Object>,
}

/// The name of the object with number `n`.
pub fn object_name(n: u64) -> String {
    format!("obj-{n:06}")
}

impl Index {
    /// Serializes the index (compact JSON).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::internal(format!("cannot encode index: {e}")))
    }

    /// Parses and checks an index read from a store for backup `id`.
    pub fn parse(bytes: &[u8], id: &str) -> Result<Index> {
        let bad = |why: String| {
            Error::new(
                crate::error::Class::Check,
                format!("the built-in backup's index of {id} is not valid: {why}"),
            )
            .hint("the stored backup is damaged or was altered; restore another backup")
        };
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(bad(format!("it has more than {MAX_INDEX_BYTES} bytes")));
        }
        let ix: Index = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        ix.check(id).map_err(bad)?;
        Ok(ix)
    }

    /// Every rule of the index, as an explanation of the first one broken.
    fn check(&self, id: &str) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} (this pgbookend reads {FORMAT})",
                self.format
            ));
        }
        if self.id != id {
            return Err(format!("it names backup {:?}", self.id));
        }
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            check_path(&e.path)?;
            if let Some(p) = prev {
                if crate::bundle::filelist::cmp_paths(p, &e.path) != std::cmp::Ordering::Less {
                    return Err(format!("entries not sorted or repeated at {:?}", e.path));
                }
            }
            prev = Some(&e.path);
            check_entry(e)?;
        }
        self.check_pieces()
    }

    /// Every piece names a file, and each file is covered exactly, in order.
    fn check_pieces(&self) -> std::result::Result<(), String> {
        let mut next: Vec<u64> = vec![0; self.entries.len()];
        for (n, o) in self.objects.iter().enumerate() {
            if o.name != object_name(n as u64) || !is_hex64(&o.sha256) {
                return Err(format!("object {n} has a bad name or hash ({:?})", o.name));
            }
            for p in &o.pieces {
                let e = self
                    .entries
                    .get(p.entry as usize)
                    .filter(|e| e.kind == Kind::File)
                    .ok_or_else(|| format!("object {} names no file ({})", o.name, p.entry))?;
                let at = &mut next[p.entry as usize];
                if p.offset != *at || p.len == 0 || p.len > CHUNK_BYTES {
                    return Err(format!("object {} has a bad piece of {:?}", o.name, e.path));
                }
                *at = p.offset.saturating_add(p.len);
            }
        }
        for (e, got) in self.entries.iter().zip(&next) {
            if e.kind == Kind::File && *got != e.size {
                return Err(format!("{:?} is not covered by its pieces", e.path));
            }
        }
        Ok(())
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A path is relative, of plain components, and of bounded length.
fn check_path(p: &str) -> std::result::Result<(), String> {
    let ok = !p.is_empty()
        && p.len() <= MAX_PATH_BYTES
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(format!("bad path {p:?}"))
    }
}

fn check_entry(e: &Entry) -> std::result::Result<(), String> {
    if e.mode > 0o7777 {
        return Err(format!("{:?} has mode {:o}", e.path, e.mode));
    }
    match e.kind {
        Kind::File if !e.sha256.as_deref().is_some_and(is_hex64) => {
            Err(format!("{:?} has no SHA-256", e.path))
        }
        Kind::Link => {
            let is_tblspc = e
                .path
                .strip_prefix("pg_tblspc/")
                .is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()));
            let t = e.target.as_deref().unwrap_or("");
            if !(is_tblspc || e.path == "pg_wal") || !t.starts_with('/') || t.contains('\0') {
                return Err(format!("link {:?} is not a tablespace or pg_wal", e.path));
            }
            Ok(())
        }
        _ if e.size != 0 && e.kind != Kind::File => Err(format!("{:?} has a size", e.path)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File,
            size,
            mode: 0o600,
            mtime: 0,
            sha256: Some("a".repeat(64)),
            target: None,
        }
    }

    fn index(entries: Vec<Entry>, pieces: Vec<Piece>) -> Index {
        Index {
            format: FORMAT,
            id: "b1".into(),
            compression: Compression::Zstd,
            entries,
            objects: vec![Object {
                name: object_name(0),
                stored_size: 1,
                sha256: "b".repeat(64),
                pieces,
            }],
        }
    }

    #[test]
    fn a_good_index_round_trips() {
        let ix = index(
            vec![file("PG_VERSION", 3), file("base/1/1259", 10)],
            vec![
                Piece {
                    entry: 0,
                    offset: 0,
                    len: 3,
                },
                Piece {
                    entry: 1,
                    offset: 0,
                    len: 10,
                },
            ],
        );
        let back = Index::parse(&ix.to_bytes().unwrap(), "b1").unwrap();
        assert_eq!(back, ix);
        assert!(Index::parse(&ix.to_bytes().unwrap(), "b2").is_err());
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let p = |entry, offset, len| Piece { entry, offset, len };
        let cases = vec![
            index(vec![file("../etc/passwd", 1)], vec![p(0, 0, 1)]),
            index(vec![file("/abs", 1)], vec![p(0, 0, 1)]),
            index(vec![file("a//b", 1)], vec![p(0, 0, 1)]),
            index(vec![file("a", 2)], vec![p(0, 0, 1)]),
            index(vec![file("a", 2)], vec![p(0, 0, 1), p(0, 0, 1)]),
            index(vec![file("a", 1)], vec![p(1, 0, 1)]),
            index(
                vec![file("b", 1), file("a", 1)],
                vec![p(0, 0, 1), p(1, 0, 1)],
            ),
            index(
                vec![file("a", 1), file("a", 1)],
                vec![p(0, 0, 1), p(1, 0, 1)],
            ),
        ];
        for ix in cases {
            assert!(
                Index::parse(&ix.to_bytes().unwrap(), "b1").is_err(),
                "{ix:?}"
            );
        }
        let mut link = file("base", 0);
        link.kind = Kind::Link;
        link.sha256 = None;
        link.target = Some("/x".into());
        assert!(Index::parse(&index(vec![link], vec![]).to_bytes().unwrap(), "b1").is_err());
    }
}
