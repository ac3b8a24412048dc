//! The marker: `PGDATA/pg_backup_metadata/<id>/backup.json`, written right after the
//! start call so that every copy taken in the window names its own backup.
//!
//! The server ignores the directory. The marker is removed at stop/abort; markers whose
//! agent is gone are stale and are removed by the next `start` and by `cleanup`.
//!
//! The postgres OS user (and any database superuser) can write `pg_backup_metadata`, so
//! nothing in it is trusted: the directory name is the only source of a marker's ID (it
//! must be a valid ID and equal the JSON `id`), the token must be 32 lowercase hex digits,
//! the file is read capped, without following a link, and every operation is relative to
//! directory descriptors. A marker is written whole into `.tmp-<random>/` and renamed to
//! `<id>/`, so no reader ever sees a half-written marker under a backup's name.

use crate::agent::rundir::{Liveness, RunDir};
use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, Dir, Ownership};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

// The directory under PGDATA that holds markers (named in `crate::pg::datadir`).
use crate::pg::datadir::MARKER_DIR as DIR;
/// The marker's file name inside `<DIR>/<id>/`.
pub const FILE: &str = "backup.json";
/// The largest marker file read; a bigger one is foreign.
pub const MAX_BYTES: u64 = 64 * 1024;
/// Prefix of the directories in which markers are being written; never a backup's marker.
pub const TMP_PREFIX: &str = ".tmp-";
/// How often creating inside `DIR` is retried when a concurrent removal of the (empty)
/// directory got in between.
const CREATE_ATTEMPTS: usize = 20;

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

/// Whether a token may be handed to `live::*`: 32 lowercase hex digits.
pub fn token_ok(token: &str) -> bool {
    token.len() == 32
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A hostile string shortened and escaped for a message.
fn shown(s: &str) -> String {
    let short: String = s.chars().take(80).collect();
    format!("{short:?}")
}

/// Opens the data directory (as given) and its `pg_backup_metadata`, refusing a link
/// there; `Ok(None)` if there is none.
fn open_top(pgdata: &Path) -> Result<(Dir, Option<Dir>)> {
    let pg = Dir::open_follow(pgdata).map_err(|e| io_err("cannot open", pgdata, e))?;
    match pg.open_dir(DIR) {
        Ok(top) => Ok((pg, Some(top))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((pg, None)),
        Err(e) => Err(fsutil::nofollow_err(
            "cannot open the marker directory",
            &pgdata.join(DIR),
            e,
        )),
    }
}

/// Writes the marker durably, owned like the data directory (also when run as root):
/// whole into a fresh `.tmp-<random>` directory, then renamed to `<id>` (never replacing
/// anything there), all relative to directory descriptors.
pub fn write(pgdata: &Path, m: &Marker) -> Result<()> {
    crate::id::validate(&m.id)?;
    let own = Ownership::of_dir(pgdata)?;
    let data = serde_json::to_vec_pretty(m).map_err(|e| Error::internal(e.to_string()))?;
    let pg = Dir::open_follow(pgdata).map_err(|e| io_err("cannot open", pgdata, e))?;
    let (top, tmp) = make_temp_dir(&pg, &own)?;
    let tmp_path = top.display_path(&tmp);
    let res = (|| {
        let td = top
            .open_dir(&tmp)
            .map_err(|e| fsutil::nofollow_err("cannot open", &tmp_path, e))?;
        fsutil::write_at(&td, OsStr::new(FILE), &own, |f, p| {
            std::io::Write::write_all(f, &data).map_err(|e| io_err("cannot write", p, e))
        })?;
        // Handed to the data directory's owner only once complete.
        own.apply_fd(&td, true)
            .map_err(|e| io_err("cannot change the owner or mode of", &tmp_path, e))?;
        top.rename_noreplace(&tmp, &m.id).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::usage(format!(
                    "a backup with ID {} is already marked in {}",
                    m.id,
                    pgdata.display()
                ))
                .hint("choose another --id")
            } else {
                io_err("cannot rename into place", &dir_of(pgdata, &m.id), e)
            }
        })?;
        top.sync()
            .map_err(|e| io_err("cannot fsync directory", top.path(), e))
    })();
    if res.is_err() {
        let _ = top.remove_tree(&tmp);
    }
    res
}

/// Creates `pg_backup_metadata` if needed (refusing a link there) and a fresh temporary
/// directory in it, retrying when a concurrent removal of the empty top directory got
/// in between.
fn make_temp_dir(pg: &Dir, own: &Ownership) -> Result<(Dir, String)> {
    let top_path = pg.display_path(DIR);
    for _ in 0..CREATE_ATTEMPTS {
        let created = match pg.mkdir(DIR, own.dir_mode) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err("cannot create directory", &top_path, e)),
        };
        let top = match pg.open_dir(DIR) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(
                    fsutil::nofollow_err("cannot open the marker directory", &top_path, e)
                        .hint("it must be a real directory, not a link or a file"),
                )
            }
        };
        if created {
            own.apply_fd(&top, true)
                .map_err(|e| io_err("cannot change the owner or mode of", &top_path, e))?;
            let _ = pg.sync();
        }
        let tmp = format!("{TMP_PREFIX}{}", hex::encode(fsutil::random_bytes::<16>()));
        match top.mkdir(&tmp, own.dir_mode) {
            Ok(()) => return Ok((top, tmp)),
            // The top directory was removed after we opened it: create it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("cannot create", &top.display_path(&tmp), e)),
        }
    }
    Err(Error::env(format!(
        "cannot create a directory in {}: it keeps disappearing",
        top_path.display()
    )))
}

/// Removes one backup's marker (and the live record it ties to), and the marker
/// directory once it is empty. A marker whose agent is alive is removed only by that
/// agent itself: a concurrent start of the same ID that failed must not remove the
/// marker of the one that succeeded.
pub fn remove(pgdata: &Path, id: &str) -> Result<()> {
    crate::id::validate(id)?;
    let (pg, Some(top)) = open_top(pgdata)? else {
        return Ok(());
    };
    if let Ok(m) = read_one(&top, id) {
        if m.agent_pid != std::process::id() && liveness(&m) == Liveness::Alive {
            tracing::warn!(
                "kept the marker of backup {id}: its agent (pid {}) is alive",
                m.agent_pid
            );
            return Ok(());
        }
        if token_ok(&m.token) {
            crate::agent::live::remove(&m.id, &m.token);
        }
    }
    top.remove_tree(id)
        .map_err(|e| io_err("cannot remove", &dir_of(pgdata, id), e))?;
    let _ = top.sync();
    drop(top);
    remove_top_if_empty(&pg);
    Ok(())
}

/// Removes `pg_backup_metadata` only if it is empty: `rmdir` refuses atomically while a
/// concurrent `start` has anything in it, and such a start retries its creation.
fn remove_top_if_empty(pg: &Dir) {
    if pg.rmdir(DIR).is_ok() {
        let _ = pg.sync();
    }
}

/// Why a directory in `pg_backup_metadata` is not a marker pgbookend can use.
struct Foreign {
    why: String,
    /// Reading it was refused for lack of permission: it may well be a good marker.
    denied: bool,
}

impl From<String> for Foreign {
    fn from(why: String) -> Foreign {
        Foreign { why, denied: false }
    }
}

fn io_foreign(path: &Path, e: io::Error) -> Foreign {
    Foreign {
        denied: e.kind() == io::ErrorKind::PermissionDenied,
        why: format!("{}: {e}", path.display()),
    }
}

/// Reads and checks the marker in `<top>/<name>/backup.json`: `Err` if it is not a
/// marker pgbookend can trust (see the module comment).
fn read_one(top: &Dir, name: &str) -> std::result::Result<Marker, Foreign> {
    crate::id::validate(name).map_err(|_| "its directory name is not a backup ID".to_string())?;
    let d = top
        .open_dir(name)
        .map_err(|e| io_foreign(&top.display_path(name), e))?;
    let path = d.display_path(FILE);
    let f = d.open_file(FILE).map_err(|e| io_foreign(&path, e))?;
    let mut buf = Vec::new();
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_foreign(&path, e))?;
    if buf.len() as u64 > MAX_BYTES {
        return Err(format!("{} is larger than {} KiB", path.display(), MAX_BYTES / 1024).into());
    }
    let m: Marker = serde_json::from_slice(&buf).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.id != name {
        return Err(format!(
            "its id {} differs from its directory name {name:?}",
            shown(&m.id)
        )
        .into());
    }
    if !m.token.is_empty() && !token_ok(&m.token) {
        return Err(format!(
            "its token {} is not 32 lowercase hex digits",
            shown(&m.token)
        )
        .into());
    }
    Ok(m)
}

/// Every marker in a data directory (or copy), with those that cannot be read or
/// trusted reported as `Err((directory name, why))`. Directories in which a marker is
/// being written (`.tmp-*`) are not markers and are left out.
pub fn list(pgdata: &Path) -> Vec<std::result::Result<Marker, (String, String)>> {
    let top = match open_top(pgdata) {
        Ok((_, Some(top))) => top,
        Ok((_, None)) => return Vec::new(),
        Err(e) => return vec![Err((DIR.to_string(), e.message))],
    };
    list_in(&top)
        .into_iter()
        .map(|(name, r)| r.map_err(|f| (name, f.why)))
        .collect()
}

/// The entries of an open `pg_backup_metadata`, sorted by name, each read and checked.
fn list_in(top: &Dir) -> Vec<(String, std::result::Result<Marker, Foreign>)> {
    let names = match top.entries() {
        Ok(n) => n,
        Err(e) => return vec![(DIR.to_string(), Err(io_foreign(top.path(), e)))],
    };
    let mut names: Vec<String> = names
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(TMP_PREFIX))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let r = read_one(top, &name);
            (name, r)
        })
        .collect()
}

/// Whether the agent that wrote this marker still holds its backup.
pub fn agent_alive(m: &Marker) -> bool {
    liveness(m) == Liveness::Alive
}

/// Whether the marker's agent holds its lock, is gone, or cannot be told (a relative or
/// unreadable run directory): only a marker whose agent is provably gone is stale.
pub fn liveness(m: &Marker) -> Liveness {
    let root = PathBuf::from(&m.run_dir);
    if !root.is_absolute() || crate::id::validate(&m.id).is_err() {
        return Liveness::Unknown;
    }
    RunDir { root }.entry(&m.id).liveness()
}

/// What a sweep of stale markers did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// IDs of stale markers removed.
    pub removed: Vec<String>,
    /// Directories that are not trustworthy markers: name, why, and whether removed.
    pub foreign: Vec<(String, String, bool)>,
}

/// Removes the markers of backups whose agent is gone; returns the IDs removed. `keep`
/// is never touched; foreign directories are left alone (see [`sweep`]).
pub fn remove_stale(pgdata: &Path, keep: Option<&str>) -> Result<Vec<String>> {
    let s = sweep(pgdata, keep, false)?;
    for (name, why, _) in &s.foreign {
        tracing::warn!("ignored a foreign marker directory {name:?} in {DIR}: {why}");
    }
    Ok(s.removed)
}

/// Removes stale markers (agent provably gone) and, with `remove_foreign`, the
/// directories that are not trustworthy markers (never one being written, never one
/// that could not be read for lack of permission). Every removal stays inside
/// `pg_backup_metadata`, by directory name, without following links.
pub fn sweep(pgdata: &Path, keep: Option<&str>, remove_foreign: bool) -> Result<Sweep> {
    let mut out = Sweep::default();
    // A link or a file in place of the marker directory is reported, never followed;
    // writing a marker there is refused later.
    let (pg, top) = match open_top(pgdata) {
        Ok((pg, Some(top))) => (pg, top),
        Ok((_, None)) => return Ok(out),
        Err(e) => {
            out.foreign.push((DIR.to_string(), e.message, false));
            return Ok(out);
        }
    };
    for (name, m) in list_in(&top) {
        match &m {
            Ok(m) if liveness(m) == Liveness::Gone => {}
            Ok(_) => continue,
            Err(f) => {
                let removable = remove_foreign && !f.denied && name != DIR;
                out.foreign.push((name.clone(), f.why.clone(), removable));
                if !removable {
                    continue;
                }
            }
        }
        if Some(name.as_str()) == keep {
            continue;
        }
        if let Ok(m) = &m {
            if token_ok(&m.token) {
                crate::agent::live::remove(&m.id, &m.token);
            }
        }
        // A marker that cannot be removed is reported, not a reason to fail a backup.
        match top.remove_tree(&name) {
            Ok(()) if m.is_ok() => out.removed.push(name),
            Ok(()) => {}
            Err(e) => {
                let why = format!("cannot remove {}: {e}", dir_of(pgdata, &name).display());
                tracing::warn!("{why}");
                if m.is_ok() {
                    out.foreign.push((name, why, false));
                } else if let Some(f) = out.foreign.last_mut() {
                    f.1 = format!("{}; {why}", f.1);
                    f.2 = false;
                }
            }
        }
    }
    let _ = top.sync();
    drop(top);
    remove_top_if_empty(&pg);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, run_dir: &Path) -> Marker {
        Marker {
            format: 1,
            id: id.into(),
            system_identifier: "1".into(),
            pg_version_num: 150000,
            start_lsn: "0/2000028".into(),
            start_wal_file: "000000010000000000000002".into(),
            timeline: 1,
            start_time: "2026-01-01T00:00:00Z".into(),
            host: "h".into(),
            pgdata: "/x".into(),
            tool: "pgbookend".into(),
            tool_version: "0".into(),
            stores: vec![],
            run_dir: run_dir.display().to_string(),
            agent_pid: 1,
            token: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    fn plant(pgdata: &Path, name: &str, json: &[u8]) {
        let d = pgdata.join(DIR).join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(FILE), json).unwrap();
    }

    #[test]
    fn only_the_directory_name_is_the_id() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let mut m = sample("good", &run);
        write(t.path(), &m).unwrap();
        m.id = "../../victim".into();
        plant(t.path(), "evil", &serde_json::to_vec(&m).unwrap());
        m.id = victim.display().to_string();
        plant(t.path(), "abs", &serde_json::to_vec(&m).unwrap());
        m.id = "tok".into();
        m.token = "../../etc/x".into();
        plant(t.path(), "tok", &serde_json::to_vec(&m).unwrap());
        plant(t.path(), "big", &vec![b' '; MAX_BYTES as usize + 1]);
        let l = list(t.path());
        let ok: Vec<_> = l.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].id, "good");
        let bad: Vec<_> = l.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert!(bad
            .iter()
            .any(|(n, why)| n == "evil" && why.contains("differs")));
        assert!(bad
            .iter()
            .any(|(n, why)| n == "tok" && why.contains("token")));
        assert!(bad.iter().any(|(n, why)| n == "big" && why.contains("KiB")));
        // The agent of "good" is gone (no run directory): removed; foreign ones kept.
        assert_eq!(remove_stale(t.path(), None).unwrap(), ["good"]);
        assert!(victim.is_dir());
        let s = sweep(t.path(), None, true).unwrap();
        assert_eq!(s.foreign.len(), 4);
        assert!(victim.is_dir());
        assert!(!t.path().join(DIR).exists(), "the empty top directory goes");
    }

    #[test]
    fn temp_dirs_are_not_markers_and_no_link_is_followed() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        std::fs::create_dir_all(t.path().join(DIR).join(".tmp-0123")).unwrap();
        assert!(list(t.path()).is_empty());
        assert!(sweep(t.path(), None, true).unwrap().foreign.is_empty());
        assert!(t.path().join(DIR).join(".tmp-0123").is_dir());
        // A link planted at a marker's name: the write is refused, nothing follows it.
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join(DIR).join("l1")).unwrap();
        assert!(write(t.path(), &sample("l1", &run)).is_err());
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
        // A link in place of the top directory: never followed.
        std::fs::remove_dir_all(t.path().join(DIR)).unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join(DIR)).unwrap();
        assert!(write(t.path(), &sample("l2", &run)).is_err());
        assert_eq!(list(t.path()).len(), 1, "reported");
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
        let e = remove(t.path(), "l2").unwrap_err();
        assert!(e.message.contains("symbolic link"), "{}", e.message);
        assert!(victim.is_dir());
    }

    #[test]
    fn liveness_never_follows_a_link_nor_blocks_on_a_fifo() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        std::fs::create_dir_all(run.join("f")).unwrap();
        let fifo = std::ffi::CString::new(run.join("f/lock").into_os_string().into_encoded_bytes())
            .unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(liveness(&sample("f", &run)), Liveness::Unknown);
        std::fs::create_dir_all(run.join("l")).unwrap();
        std::fs::write(t.path().join("target"), b"").unwrap();
        std::os::unix::fs::symlink(t.path().join("target"), run.join("l/lock")).unwrap();
        assert_eq!(liveness(&sample("l", &run)), Liveness::Unknown);
        assert_eq!(liveness(&sample("gone", &run)), Liveness::Gone);
        assert_eq!(liveness(&sample("x", Path::new("rel"))), Liveness::Unknown);
        // Unknown is never stale: the marker stays.
        write(t.path(), &sample("f", &run)).unwrap();
        assert!(remove_stale(t.path(), None).unwrap().is_empty());
        assert!(dir_of(t.path(), "f").join(FILE).is_file());
    }

    #[test]
    fn a_live_agents_marker_is_removed_only_by_that_agent() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        std::fs::create_dir_all(run.join("a")).unwrap();
        let lock = std::fs::File::create(run.join("a/lock")).unwrap();
        lock.try_lock().unwrap();
        let mut m = sample("a", &run);
        m.agent_pid = std::process::id() + 1;
        write(t.path(), &m).unwrap();
        remove(t.path(), "a").unwrap();
        assert!(
            dir_of(t.path(), "a").join(FILE).is_file(),
            "another agent's: kept"
        );
        m.agent_pid = std::process::id();
        std::fs::remove_dir_all(dir_of(t.path(), "a")).unwrap();
        write(t.path(), &m).unwrap();
        remove(t.path(), "a").unwrap();
        assert!(!dir_of(t.path(), "a").exists(), "its own: removed");
        drop(lock);
    }

    #[test]
    fn writers_survive_a_concurrent_removal_of_the_top_directory() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        std::thread::scope(|s| {
            for i in 0..8 {
                let (pg, run) = (t.path(), &run);
                s.spawn(move || {
                    for j in 0..40 {
                        let id = format!("m{i}-{j}");
                        write(pg, &sample(&id, run)).unwrap();
                        assert!(dir_of(pg, &id).join(FILE).is_file());
                        remove(pg, &id).unwrap();
                    }
                });
            }
        });
        assert!(!t.path().join(DIR).exists());
    }
}
