//! The bundle: what `stop` stores beside the copy, under `<store>/<id>/`.
//! `bundle.json` is written last: a bundle without it does not exist.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The name of the bundle's manifest.
pub const MANIFEST: &str = "bundle.json";
/// The manifest format written by this version.
pub const FORMAT: u32 = 1;

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

/// `bundle.json`: every fact about the backup.
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
    /// How the WAL of the window is made safe: "server_archive" (the server's
    /// archive_command), with `wal_archive` saying whether it was confirmed.
    pub wal_mode: String,
    pub wal_archive: String,
    pub files: BTreeMap<String, FileEntry>,
}
