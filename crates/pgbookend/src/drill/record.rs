//! `drill.json`: the record of a drill, written durably next to the bundle in its store
//! (or in the `--bundle` directory), and read back for `list` and `show`.

use super::checks::Checks;
use super::clone::Method;
use crate::error::{Error, Result};
use crate::fsutil::{self, Ownership};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The file name of the record inside a bundle.
pub const RECORD: &str = "drill.json";
/// The version of the record's layout.
pub const FORMAT: u32 = 1;
/// The most bytes of a record read back (a store is hostile).
const MAX_RECORD_BYTES: u64 = 4 << 20;

/// The WAL a drill replayed: from the backup's start (its redo point) to the last record
/// the server applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalReplayed {
    pub from_lsn: String,
    pub to_lsn: String,
    pub bytes: u64,
}

/// Seconds each part of a drill took: the clone, prepare (its page check included), and
/// the checks on the recovered server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phases {
    pub clone: f64,
    pub prepare: f64,
    pub checks: f64,
}

/// Everything a drill found: printed with `--json` and stored as `drill.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub id: String,
    pub pgdata: String,
    pub started: String,
    pub finished: String,
    /// `passed` (every check passed) or `failed`.
    pub verdict: String,
    pub clone_method: Method,
    pub pg_major: u32,
    pub server: String,
    /// Seconds from the server's start until recovery ended and it accepted connections.
    pub recovery_seconds: f64,
    /// Where the drill's time went (the parts beside recovery), for judging its cost.
    #[serde(default)]
    pub phase_seconds: Phases,
    pub wal_replayed: Option<WalReplayed>,
    /// Pages whose checksums were verified by prepare (not measured by this version).
    pub pages_verified: Option<u64>,
    pub checks: Checks,
    /// Where the record was written.
    pub stored_in: Vec<String>,
    pub warnings: Vec<String>,
}

impl Record {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.verdict == "passed"
    }
}

/// Writes the record next to the bundle: into `bundle_dir` (`--bundle`), or into the
/// bundle's directory or prefix in `store` (reached with `s3`, for an S3 store). Returns
/// where it went.
pub fn store(
    rec: &Record,
    store: Option<&str>,
    bundle_dir: Option<&Path>,
    s3: &crate::store::s3::Settings,
) -> Result<String> {
    let bytes = serde_json::to_vec_pretty(rec).map_err(|e| Error::internal(e.to_string()))?;
    if let Some(dir) = bundle_dir {
        return write_local(dir, &bytes);
    }
    let Some(url) = store else {
        return Err(Error::usage("drill needs --store URL or --bundle DIR"));
    };
    Store::parse(url, s3)?.write_bundle_file(&rec.id, RECORD, &bytes)
}

fn write_local(dir: &Path, bytes: &[u8]) -> Result<String> {
    let md = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::env(format!("cannot stat {}: {e}", dir.display())))?;
    if !md.is_dir() {
        return Err(Error::env(format!(
            "{} is not a directory (a link?): the drill record is not written there",
            dir.display()
        )));
    }
    let path = dir.join(RECORD);
    fsutil::write_atomic(&path, bytes, &Ownership::of_dir(dir)?)?;
    Ok(path.display().to_string())
}

/// The verdict and finish time of a bundle's last drill, for `list` and `show`; `None`
/// when the bundle has no (readable) record.
pub fn last(store: &Store, id: &str) -> Option<(String, String)> {
    let bytes = store
        .read_bundle_file(id, RECORD, MAX_RECORD_BYTES)
        .ok()??;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic()))
            .map(str::to_string)
    };
    Some((field("verdict")?, field("finished")?))
}
