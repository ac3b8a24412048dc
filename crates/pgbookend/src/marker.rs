//! The marker: `PGDATA/pg_backup_metadata/<id>/backup.json`, written right after the
//! start call so that every copy taken in the window names its own backup.
//!
//! The server ignores the directory. The marker is removed at stop/abort; markers whose
//! agent is gone are stale and are removed by the next `start` and by `cleanup`.

use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, Ownership};
use crate::rundir::RunDir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// The directory under PGDATA that holds markers.
pub const DIR: &str = "pg_backup_metadata";
/// The marker's file name inside `<DIR>/<id>/`.
pub const FILE: &str = "backup.json";

/// The contents of a marker. Never holds a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    pub id: String,
    pub system_identifier: String,
    pub pg_version_num: u32,
    pub start_lsn: String,
    pub start_wal_file: String,
    pub timeline: u32,
    pub start_time: String,
    pub host: String,
    pub pgdata: String,
    pub tool: String,
    pub tool_version: String,
    pub stores: Vec<String>,
    /// Where the agent's entry lives, so another process can tell whether it is alive.
    pub run_dir: String,
    pub agent_pid: u32,
    /// Matches the live record on the backup's host (see `live.rs`); not a secret.
    #[serde(default)]
    pub token: String,
}

/// `PGDATA/pg_backup_metadata/<id>`.
pub fn dir_of(pgdata: &Path, id: &str) -> PathBuf {
    pgdata.join(DIR).join(id)
}

/// Writes the marker durably, owned like the data directory (also when run as root).
pub fn write(pgdata: &Path, m: &Marker) -> Result<()> {
    let own = Ownership::of_dir(pgdata)?;
    let top = pgdata.join(DIR);
    fsutil::ensure_dir(&top, &own)?;
    let dir = top.join(&m.id);
    fsutil::ensure_dir(&dir, &own)?;
    let data = serde_json::to_vec_pretty(m).map_err(|e| Error::internal(e.to_string()))?;
    fsutil::write_atomic(&dir.join(FILE), &data, &own)
}

/// Removes one backup's marker (and the live record it ties to), and the marker
/// directory once it is empty.
pub fn remove(pgdata: &Path, id: &str) -> Result<()> {
    if let Ok(b) = fs::read(dir_of(pgdata, id).join(FILE)) {
        if let Ok(m) = serde_json::from_slice::<Marker>(&b) {
            crate::live::remove(&m.id, &m.token);
        }
    }
    fsutil::remove_tree(&dir_of(pgdata, id))?;
    let top = pgdata.join(DIR);
    if fs::read_dir(&top)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
    {
        let _ = fs::remove_dir(&top);
        let _ = fsutil::fsync_dir(pgdata);
    }
    Ok(())
}

/// Every marker in a data directory (or copy), with those that cannot be read reported
/// as `Err((id, why))`.
pub fn list(pgdata: &Path) -> Vec<std::result::Result<Marker, (String, String)>> {
    let top = pgdata.join(DIR);
    let Ok(rd) = fs::read_dir(&top) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let p = top.join(&name).join(FILE);
        match fs::read(&p) {
            Ok(b) => match serde_json::from_slice::<Marker>(&b) {
                Ok(m) => out.push(Ok(m)),
                Err(e) => out.push(Err((name, format!("{}: {e}", p.display())))),
            },
            Err(e) => out.push(Err((name, format!("{}: {e}", p.display())))),
        }
    }
    out
}

/// Whether the agent that wrote this marker still holds its backup.
pub fn agent_alive(m: &Marker) -> bool {
    RunDir {
        root: PathBuf::from(&m.run_dir),
    }
    .entry(&m.id)
    .agent_alive()
}

/// Removes the markers of backups whose agent is gone (and unreadable markers);
/// returns the IDs removed. `keep` is never touched.
pub fn remove_stale(pgdata: &Path, keep: Option<&str>) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for m in list(pgdata) {
        let (id, stale) = match &m {
            Ok(m) => (m.id.clone(), !agent_alive(m)),
            Err((id, _)) => (id.clone(), true),
        };
        if Some(id.as_str()) == keep || !stale {
            continue;
        }
        if let Ok(m) = &m {
            crate::live::remove(&m.id, &m.token);
        }
        fsutil::remove_tree(&dir_of(pgdata, &id)).map_err(|e| {
            Error::env(format!(
                "cannot remove the stale marker of backup {id}: {}",
                e.message
            ))
        })?;
        removed.push(id);
    }
    if !removed.is_empty() {
        let top = pgdata.join(DIR);
        if fs::read_dir(&top)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
        {
            fs::remove_dir(&top).map_err(|e| io_err("cannot remove", &top, e))?;
        }
    }
    Ok(removed)
}
