//! Live records: `<state-dir>/live/<token>.json` (one per backup, named by a random
//! token that the marker also holds, so backups of the same ID on several clusters of a
//! host never collide), written by the agent beside the marker and
//! removed with it, outside PGDATA and on persistent storage.
//!
//! They let `guard` tell the two directories that both carry a marker and no live agent:
//! the primary whose agent died (a host crash wipes `/run`, but not this record: same
//! token, same PGDATA) and a restored copy that was never prepared (no record with the
//! marker's token on this host).

use crate::error::Result;
use crate::fsutil::{self, Ownership};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// One backup in progress on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Live {
    pub id: String,
    pub token: String,
    pub pgdata: String,
    pub system_identifier: String,
    pub agent_pid: u32,
}

/// Where the live records are: `<state>/live`.
pub fn dir() -> PathBuf {
    crate::config::state_root().join("live")
}

/// A fresh random token.
pub fn token() -> String {
    hex::encode(crate::fsutil::random_bytes::<16>())
}

/// Records a backup in progress. Readable by all (it holds no secret) so that `guard`,
/// often run as the cluster's owner, can read what a root agent wrote.
pub fn write(l: &Live) -> Result<()> {
    let d = dir();
    if !d.exists() {
        fs::create_dir_all(&d).map_err(|e| crate::error::io_err("cannot create", &d, e))?;
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o755));
    }
    check_private(&d)?;
    let own = Ownership {
        file_mode: 0o644,
        dir_mode: 0o755,
        ..Ownership::private()
    };
    let data =
        serde_json::to_vec_pretty(l).map_err(|e| crate::error::Error::internal(e.to_string()))?;
    fsutil::write_atomic(&path_of(&l.token), &data, &own)
}

/// Refuses a live-record directory that is a link, or that someone else owns or may write
/// to: records in it decide what `guard` and `start` believe about backups in progress.
fn check_private(d: &std::path::Path) -> Result<()> {
    match fsutil::open_private(d, false) {
        Ok(_) => Ok(()),
        Err(fsutil::NotPrivate::Io(_, e)) => Err(crate::error::io_err("cannot read", d, e)),
        Err(_) => {
            // SAFETY: geteuid cannot fail.
            let uid = unsafe { libc::geteuid() };
            Err(crate::error::Error::env(format!(
                "refusing the state directory {}: it must be a real directory owned by uid {uid} and writable by nobody else",
                d.display()
            ))
            .hint("fix its owner and mode, or choose another with PGBOOKEND_STATE_DIR"))
        }
    }
}

fn path_of(token: &str) -> PathBuf {
    dir().join(format!("{token}.json"))
}

/// The record of backup `id` with `token`, if this host has it.
pub fn read(id: &str, token: &str) -> Option<Live> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let l: Live = serde_json::from_slice(&fs::read(path_of(token)).ok()?).ok()?;
    (l.id == id && l.token == token).then_some(l)
}

/// Removes the record of backup `id` with `token`.
pub fn remove(id: &str, token: &str) {
    if read(id, token).is_some() {
        let _ = fs::remove_file(path_of(token));
    }
}
