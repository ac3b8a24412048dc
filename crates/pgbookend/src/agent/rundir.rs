//! The run directory: one private entry per backup holding the agent's socket, lock,
//! state and log. `<run-dir>/<id>/{agent.sock, lock, state.json, agent.log}`.
//!
//! An agent is alive exactly while it holds the exclusive lock on `<id>/lock`; this
//! survives PID reuse and needs no cooperation from a dead process.

use crate::agent::state::AgentState;
use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, Dir, NotPrivate, Ownership};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest `state.json` read.
const MAX_STATE_BYTES: u64 = 1 << 20;

/// Whether an agent holds an entry's lock: only `Gone` allows treating its backup as dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Gone,
    Unknown,
}

/// The directory that holds every agent's entry.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// `--run-dir`, else `$PGBOOKEND_RUN_DIR`, else the config, else `/run/pgbookend`
    /// for root, `$XDG_RUNTIME_DIR/pgbookend`, or `/tmp/pgbookend-<uid>`.
    pub fn resolve(flag: Option<&Path>, config: Option<&Path>) -> RunDir {
        // Absolute, because markers record it for other processes to find the lock.
        let absolute = |p: PathBuf| match std::env::current_dir() {
            Ok(cwd) if p.is_relative() => cwd.join(p),
            _ => p,
        };
        if let Some(p) = flag.or(config) {
            return RunDir {
                root: absolute(p.to_path_buf()),
            };
        }
        if let Some(p) = std::env::var_os("PGBOOKEND_RUN_DIR").filter(|p| !p.is_empty()) {
            return RunDir {
                root: absolute(PathBuf::from(p)),
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
    /// with: it must be a real directory (a link is refused, never followed), belong to us
    /// and not be writable by group or others. Checked again after creating it, through
    /// a descriptor opened without following links.
    pub fn ensure(&self) -> Result<()> {
        let root = &self.root;
        let created = match fs::symlink_metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(|e| {
                        io_err("cannot create the run directory", root, e)
                            .hint("choose another with --run-dir")
                    })?;
                }
                match fs::DirBuilder::new().mode(0o700).create(root) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                    Err(e) => {
                        return Err(io_err("cannot create the run directory", root, e)
                            .hint("choose another with --run-dir"))
                    }
                }
            }
            Err(e) => return Err(io_err("cannot read", root, e)),
            Ok(_) => false,
        };
        let refuse = |why: String| {
            Error::env(format!(
                "refusing the run directory {}: {why}",
                root.display()
            ))
            .hint("remove it or fix its owner and mode, or choose another with --run-dir")
        };
        match fsutil::open_private(root, created) {
            Ok(_) => Ok(()),
            Err(NotPrivate::Link) => {
                Err(refuse("it is a symbolic link (someone may have planted it)".into()))
            }
            Err(NotPrivate::NotDir) => Err(refuse("it is not a directory".into())),
            Err(NotPrivate::Shared { want_uid, uid, mode }) => Err(refuse(format!(
                "it must belong to uid {want_uid} and not be writable by group or others (it is uid {uid}, mode {mode:o})"
            ))),
            Err(NotPrivate::Io("open", e)) => Err(io_err("cannot open the run directory", root, e)),
            Err(NotPrivate::Io(what, e)) => Err(io_err(&format!("cannot {what}"), root, e)),
        }
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
        fs::symlink_metadata(&self.dir)
            .map(|m| m.is_dir())
            .unwrap_or(false)
    }

    /// Whether the agent has recorded any state: it does so first thing after taking its
    /// lock, so an entry without state is still being started (or its start was killed
    /// before the agent ran) and is not a dead backup.
    pub fn has_state(&self) -> bool {
        fs::symlink_metadata(self.state_path())
            .map(|m| m.is_file())
            .unwrap_or(false)
    }

    /// The entry directory, opened without following a link.
    fn open(&self) -> std::io::Result<Dir> {
        let name = self.dir.file_name().unwrap_or_default();
        let root = self.dir.parent().unwrap_or(Path::new("/"));
        Dir::open_follow(root)?.open_dir(name)
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
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| fsutil::nofollow_err("cannot open", &path, e))?;
        if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Err(Error::env(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err("cannot lock", &path, e)),
        }
    }

    /// True while an agent holds this entry's lock.
    pub fn agent_alive(&self) -> bool {
        self.liveness() == Liveness::Alive
    }

    /// Waits (at most `timeout`) for the agent to release its lock, as it does right after
    /// its last answer; true once no agent holds it.
    pub fn wait_agent_gone(&self, timeout: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        loop {
            if !self.agent_alive() {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether an agent holds this entry's lock, provably does not (no lock file, or the
    /// lock is free), or cannot be told (no permission, a link or a non-file where the
    /// lock should be). Never follows a link in the entry and never blocks on a FIFO.
    pub fn liveness(&self) -> Liveness {
        let dir = match self.open() {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Liveness::Gone,
            Err(_) => return Liveness::Unknown,
        };
        let f = match dir.open_file("lock") {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Liveness::Gone,
            Err(_) => return Liveness::Unknown,
        };
        match f.try_lock_shared() {
            Err(fs::TryLockError::WouldBlock) => Liveness::Alive,
            Ok(()) => Liveness::Gone,
            Err(fs::TryLockError::Error(_)) => Liveness::Unknown,
        }
    }

    /// The last state the agent recorded, if any (read capped, never through a link).
    pub fn read_state(&self) -> Option<AgentState> {
        let f = self.open().ok()?.open_file("state.json").ok()?;
        let mut text = Vec::new();
        f.take(MAX_STATE_BYTES).read_to_end(&mut text).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records the agent's state.
    /// Runtime state, not a durable record (the run directory is often tmpfs): written to
    /// an unpredictable temporary name (created `O_EXCL|O_NOFOLLOW`) and renamed, so
    /// readers never see half a file, but not fsynced — the agent saves it at every
    /// heartbeat.
    pub fn write_state(&self, st: &AgentState) -> Result<()> {
        let data = serde_json::to_vec_pretty(st).map_err(|e| Error::internal(e.to_string()))?;
        let dir = self
            .open()
            .map_err(|e| fsutil::nofollow_err("cannot open", &self.dir, e))?;
        let tmp = fsutil::temp_name(std::ffi::OsStr::new("state.json"));
        let tmp_path = self.dir.join(&tmp);
        let res = dir
            .create_file(&tmp, 0o600)
            .and_then(|mut f| f.write_all(&data))
            .map_err(|e| io_err("cannot write", &tmp_path, e))
            .and_then(|()| {
                dir.rename(&tmp, &dir, "state.json")
                    .map_err(|e| io_err("cannot rename into place", &self.state_path(), e))
            });
        if res.is_err() {
            let _ = dir.unlink(&tmp);
        }
        res
    }

    /// Empties the entry of everything but its lock file (whose lock the caller holds), so
    /// that a new backup with this ID starts clean without ever giving up the lock: a
    /// concurrent `start` of the same ID then finds the lock taken instead of a fresh entry.
    pub fn clear_except_lock(&self) -> Result<()> {
        let dir = fsutil::Dir::open(&self.dir)
            .map_err(|e| fsutil::nofollow_err("cannot open", &self.dir, e))?;
        let names = dir
            .entries()
            .map_err(|e| io_err("cannot list", &self.dir, e))?;
        for name in names.iter().filter(|n| n.as_os_str() != "lock") {
            dir.remove_tree(name)
                .map_err(|e| io_err("cannot remove", &self.dir.join(name), e))?;
        }
        Ok(())
    }

    /// Removes the whole entry.
    pub fn remove(&self) -> Result<()> {
        fsutil::remove_tree(&self.dir)
    }
}
