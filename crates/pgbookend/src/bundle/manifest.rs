//! The bundle: what `stop` stores beside the copy, under `<store>/<id>/`.
//! `bundle.json` is written last: a bundle without it does not exist.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The name of the bundle's manifest.
pub const MANIFEST: &str = "bundle.json";
/// The manifest format written by this version.
pub const FORMAT: u32 = 1;

/// How `stop` makes the WAL of the window safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalMode {
    /// Copy the segments into the bundle (default). A temporary replication slot keeps
    /// the server from recycling them during the window.
    Collect,
    /// Do not copy; confirm that every segment is in an archive directory.
    Archive,
    /// Explicit opt-out: the user keeps the WAL; restoring will need an archive.
    None,
}

impl WalMode {
    /// Parses `--wal`.
    pub fn parse(s: &str) -> Result<WalMode> {
        match s {
            "collect" => Ok(WalMode::Collect),
            "archive" => Ok(WalMode::Archive),
            "none" => Ok(WalMode::None),
            _ => Err(Error::usage(format!(
                "--wal {s:?}: expected collect, archive or none"
            ))),
        }
    }
    /// The stable name, as in `bundle.json` and `--wal`.
    pub fn as_str(self) -> &'static str {
        match self {
            WalMode::Collect => "collect",
            WalMode::Archive => "archive",
            WalMode::None => "none",
        }
    }
}

/// Whether the server's own archiving of the stop segment was confirmed (the stop
/// report's and `bundle.json`'s `wal_archive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalArchive {
    /// The server archived the stop segment (and the backup history file on a primary).
    Archived,
    /// `stop` did not wait (`--no-wait-archive`, or the default outside `--wal none`).
    NotWaited,
    /// The server does not archive (`archive_mode` off, or `on` on a standby).
    ArchivingOff,
    /// Not archived within `--archive-timeout` (exit 5 once the bundle is written).
    NotConfirmed,
}

impl WalArchive {
    /// The stable name, as in `bundle.json` and the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            WalArchive::Archived => "archived",
            WalArchive::NotWaited => "not_waited",
            WalArchive::ArchivingOff => "archiving_off",
            WalArchive::NotConfirmed => "not_confirmed",
        }
    }
}

/// One file of the bundle, as listed in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: String,
}

/// A tablespace of the backup (from `tablespace_map`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    pub path: String,
}

/// `bundle.json`: every fact about the backup. One read from a store is untrusted until
/// `bundle_check::manifest_problems` found nothing (`restore::load_bundle` does
/// that before any field becomes a path, a command or an allocation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// A string: 64-bit identifiers do not survive JSON readers that use doubles.
    pub system_identifier: String,
    pub pg_version_num: u32,
    pub pg_major: u32,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub checkpoint_lsn: String,
    pub start_wal_file: String,
    pub stop_wal_file: String,
    /// A standby backup in `collect` mode: what the standby had replayed when stop
    /// returned (beyond `stop_lsn`, its minimum recovery point). The bundle's WAL reaches
    /// it, and a restore recovers to the end of that WAL instead of stopping at
    /// `stop_lsn`, so rows the standby had when stop returned come back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<String>,
    pub wal_segment_size: u32,
    pub backup_from: String,
    pub start_time: String,
    pub stop_time: String,
    pub host: String,
    pub pgdata: String,
    pub tablespaces: Vec<Tablespace>,
    pub data_checksums: bool,
    pub tool: String,
    pub tool_version: String,
    /// How the WAL of the window is made safe: `collect` (the segments are in `wal/`),
    /// `archive` (confirmed present in `archive_dir`), `none` (the user keeps it; restore
    /// needs an archive). Kept as text here: a manifest read from a store is untrusted and
    /// `bundle_check` names a bad value; read it through [`Manifest::mode`].
    pub wal_mode: String,
    /// Whether the server's own archiving of the stop segment was confirmed:
    /// `archived`, `not_waited`, `archiving_off`, `not_confirmed` ([`WalArchive`]; text
    /// for the same reason as `wal_mode`).
    pub wal_archive: String,
    /// With `wal_mode = archive`: the directory in which every segment was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_dir: Option<String>,
    /// With `wal_mode = archive` and no `archive_dir`: the stores whose pgbookend WAL
    /// archive (`archive-push`) holds the window's WAL; prepare recovers through
    /// `pgbookend archive-get` from them. Untrusted when read: `bundle_check` validates it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archive_stores: Vec<String>,
    /// The WAL segments (and timeline history files) of the window, oldest first. In
    /// `collect` mode each is stored as `wal/<name>.zst`; otherwise `stored` is null.
    #[serde(default)]
    pub wal: Vec<WalEntry>,
    /// The list of files present in PGDATA and every tablespace both at start and at
    /// stop: a copy that lacks one of them is incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_list: Option<FileList>,
    /// Size and SHA-256 of every file of the bundle other than `bundle.json`, by path
    /// relative to the bundle directory.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// The WAL mode, when `wal_mode` is one this version knows (always, once
    /// `bundle_check::manifest_problems` passed).
    pub fn mode(&self) -> Option<WalMode> {
        WalMode::parse(&self.wal_mode).ok()
    }

    /// The last WAL segment of the bundle's window: the segment of `replay_lsn` when it
    /// is set (checked by `bundle_check`), else `stop_wal_file`.
    pub fn last_wal_file(&self) -> String {
        use pgbookend_formats::{lsn::Lsn, wal};
        let replay = self
            .replay_lsn
            .as_deref()
            .and_then(|r| r.parse::<Lsn>().ok());
        match replay {
            Some(r) if self.wal_segment_size > 0 => wal::file_name(
                self.timeline,
                wal::prev_segno(r, self.wal_segment_size),
                self.wal_segment_size,
            ),
            _ => self.stop_wal_file.clone(),
        }
    }
}

/// One WAL file of the window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalEntry {
    /// The server's file name (`000000010000000000000003`, `00000002.history`).
    pub name: String,
    /// Size and SHA-256 of the file's own bytes (after decompression), when pgbookend
    /// read it (`collect`).
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// Path inside the bundle (`wal/<name>.zst`) when the bundle holds it.
    pub stored: Option<String>,
    /// With `wal_mode = archive`: the name under which it was found in the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_as: Option<String>,
}

/// The bundle's file list: `name` is a zstd-compressed text file, one path per line,
/// relative to PGDATA (tablespace files under `pg_tblspc/<oid>/`), sorted component-wise,
/// with a backslash written as `\\` and a newline as `\n`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileList {
    pub name: String,
    pub count: u64,
}

/// Size and SHA-256 of every file below `dir` except `bundle.json` and temporary files,
/// by path relative to `dir` (read back from disk, so what is listed is what was written).
pub fn hash_files(dir: &std::path::Path) -> crate::error::Result<BTreeMap<String, FileEntry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| crate::error::io_err("cannot list", &d, e))?;
        for e in rd {
            let e = e.map_err(|e| crate::error::io_err("cannot list", &d, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || (rel.is_empty() && name == MANIFEST) {
                continue;
            }
            let relp = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push((p, relp));
                continue;
            }
            let (size, sha256) = crate::fsutil::sha256_file(&p)
                .map_err(|e| crate::error::io_err("cannot read", &p, e))?;
            out.insert(relp, FileEntry { size, sha256 });
        }
    }
    Ok(out)
}
