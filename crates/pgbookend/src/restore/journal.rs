//! The journal of a `prepare` in progress: `PGDATA/pg_backup_metadata/<id>/prepare.json`.
//!
//! Written durably before the first change to the copy and after every step (a run of WAL
//! files counts as one step), removed
//! (with the marker) only after the last one. While it exists the copy is half-prepared:
//! `guard` refuses to let a server start on it, and `prepare` run again with the same
//! remaps redoes the plan (every step can be repeated) and finishes the job.

use crate::error::{Class, Error, Result};
use crate::fsutil::Ownership;
use crate::nofollow::{Dir, Kind};
use crate::pg::datadir::MARKER_DIR;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The journal's file name inside the marker directory of the backup.
pub const FILE: &str = "prepare.json";
/// A journal is a few kilobytes; anything larger is not ours.
const MAX_BYTES: u64 = 1 << 20;

/// What a `prepare` in progress recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Journal {
    pub format: u32,
    pub id: String,
    pub started: String,
    /// The remaps of the first run: a second run must use the same ones.
    pub waldir: Option<String>,
    pub tablespaces: Vec<(u32, String)>,
    /// The steps carried out so far, in order.
    pub done: Vec<String>,
}

impl Journal {
    /// A new journal for a run with these remaps.
    pub fn new(id: &str, waldir: Option<&Path>, tablespaces: &[(u32, PathBuf)]) -> Journal {
        Journal {
            format: 1,
            id: id.to_string(),
            started: crate::timefmt::rfc3339(crate::timefmt::now_unix()),
            waldir: waldir.map(|p| p.display().to_string()),
            tablespaces: remaps(tablespaces),
            done: Vec::new(),
        }
    }

    /// Whether a run with these remaps continues the recorded one.
    pub fn same_remaps(&self, waldir: Option<&Path>, tablespaces: &[(u32, PathBuf)]) -> bool {
        self.waldir == waldir.map(|p| p.display().to_string())
            && self.tablespaces == remaps(tablespaces)
    }

    /// The command-line form of the recorded remaps, for hints.
    pub fn remap_args(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        if let Some(w) = &self.waldir {
            out.push(format!("--waldir {w}"));
        }
        for (oid, p) in &self.tablespaces {
            out.push(format!("--tablespace {oid}={p}"));
        }
        if out.is_empty() {
            "no --waldir or --tablespace".into()
        } else {
            out.join(" ")
        }
    }

    /// Writes the journal durably into the backup's marker directory (created if missing).
    pub fn save(&self, pgdata: &Path, own: &Ownership) -> Result<()> {
        crate::id::validate(&self.id)?;
        let top = Dir::open_given(pgdata)?.make_dir(MARKER_DIR, own)?;
        let dir = top.make_dir(&self.id, own)?;
        let data = serde_json::to_vec_pretty(self).map_err(|e| Error::internal(e.to_string()))?;
        dir.write(FILE, &data, own)
    }
}

fn remaps(tablespaces: &[(u32, PathBuf)]) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = tablespaces
        .iter()
        .map(|(o, p)| (*o, p.display().to_string()))
        .collect();
    v.sort();
    v
}

/// The journal of a half-prepared copy, if there is one: `Ok(None)` when the copy holds
/// none, an error when one exists but cannot be read (still a half-prepared copy).
pub fn find(pgdata: &Path) -> Result<Option<(PathBuf, Journal)>> {
    let Ok(top) = Dir::open_given(pgdata).and_then(|d| d.sub(MARKER_DIR)) else {
        return Ok(None);
    };
    for name in top.names()? {
        let Ok(dir) = top.sub(&name) else { continue };
        if dir.kind(FILE) == Kind::Missing {
            continue;
        }
        let path = dir.path().join(FILE);
        let bad = |why: String| {
            Error::new(
                Class::Unfinished,
                format!("{}: unreadable prepare journal: {why}", path.display()),
            )
            .hint("the copy is half-prepared; restore it again from the backup and run prepare on the fresh copy")
        };
        let bytes = dir.read_small(FILE, MAX_BYTES)?.unwrap_or_default();
        let j: Journal = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if Some(j.id.as_str()) != name.to_str() || crate::id::validate(&j.id).is_err() {
            return Err(bad(format!("it names backup {:?}", j.id)));
        }
        return Ok(Some((path, j)));
    }
    Ok(None)
}
