//! The run directory: one private entry per backup holding the agent's socket, lock,
//! state and log. `<run-dir>/<id>/{agent.sock, lock, state.json, agent.log}`.
//!
//! An agent is alive exactly while it holds the exclusive lock on `<id>/lock`; this
//! survives PID reuse and needs no cooperation from a dead process.

use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, Ownership};
use crate::state::AgentState;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory that holds every agent's entry.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// `--run-dir`, else `$PGBOOKEND_RUN_DIR`, else the config, else `/run/pgbookend`
    /// for root, `$XDG_RUNTIME_DIR/pgbookend`, or `/tmp/pgbookend-<uid>`.
    pub fn resolve(flag: Option<&Path>, config: Option<&Path>) -> RunDir {
        if let Some(p) = flag.or(config) {
            return RunDir {
                root: p.to_path_buf(),
            };
        }
        if let Some(p) = std::env::var_os("PGBOOKEND_RUN_DIR").filter(|p| !p.is_empty()) {
            return RunDir {
                root: PathBuf::from(p),
            };
        }
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid == 0 {
            return RunDir {
                root: PathBuf::from("/run/pgbookend"),
            };
        }
        if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
            return RunDir {
                root: PathBuf::from(x).join("pgbookend"),
            };
        }
        RunDir {
            root: PathBuf::from(format!("/tmp/pgbookend-{uid}")),
        }
    }

    /// Creates the directory (0700) if needed and refuses one that others could tamper
    /// with: it must belong to us and not be writable by group or others.
    pub fn ensure(&self) -> Result<()> {
        if !self.root.exists() {
            fs::create_dir_all(&self.root).map_err(|e| {
                io_err("cannot create the run directory", &self.root, e)
                    .hint("choose another with --run-dir")
            })?;
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err("cannot chmod", &self.root, e))?;
        }
        let md = fs::metadata(&self.root).map_err(|e| io_err("cannot read", &self.root, e))?;
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        if md.uid() != uid || md.mode() & 0o022 != 0 {
            return Err(Error::env(format!(
                "the run directory {} must belong to uid {uid} and not be writable by others (it is uid {}, mode {:o})",
                self.root.display(),
                md.uid(),
                md.mode() & 0o7777
            ))
            .hint("fix its owner and mode, or choose another with --run-dir"));
        }
        Ok(())
    }

    /// The entry of one backup (which may not exist).
    pub fn entry(&self, id: &str) -> Entry {
        Entry {
            id: id.to_string(),
            dir: self.root.join(id),
        }
    }

    /// Every entry present, sorted by ID.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = match fs::read_dir(&self.root) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .filter_map(|e| e.file_name().to_str().map(|s| s.to_string()))
                .filter(|id| crate::id::validate(id).is_ok())
                .map(|id| self.entry(&id))
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// One backup's place in the run directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub dir: PathBuf,
}

impl Entry {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Creates the entry directory (0700).
    pub fn create(&self) -> Result<()> {
        fsutil::ensure_dir(&self.dir, &Ownership::private())
    }

    /// Takes the agent lock; `Ok(None)` if another live agent holds it.
    pub fn try_lock(&self) -> Result<Option<File>> {
        let path = self.lock_path();
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("cannot open", &path, e))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err("cannot lock", &path, e)),
        }
    }

    /// True while an agent holds this entry's lock.
    pub fn agent_alive(&self) -> bool {
        let path = self.lock_path();
        let Ok(f) = OpenOptions::new().read(true).open(&path) else {
            return false;
        };
        matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock))
    }

    /// The last state the agent recorded, if any.
    pub fn read_state(&self) -> Option<AgentState> {
        let text = fs::read(self.state_path()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records the agent's state durably.
    /// Runtime state, not a durable record (the run directory is often tmpfs): written to
    /// a temporary name and renamed, so readers never see half a file, but not fsynced —
    /// the agent saves it at every heartbeat.
    pub fn write_state(&self, st: &AgentState) -> Result<()> {
        let data = serde_json::to_vec_pretty(st).map_err(|e| Error::internal(e.to_string()))?;
        let path = self.state_path();
        let tmp = self
            .dir
            .join(format!(".state.json.tmp.{}", std::process::id()));
        fs::write(&tmp, &data).map_err(|e| io_err("cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err("cannot rename into place", &path, e))
    }

    /// Removes the whole entry.
    pub fn remove(&self) -> Result<()> {
        fsutil::remove_tree(&self.dir)
    }
}
