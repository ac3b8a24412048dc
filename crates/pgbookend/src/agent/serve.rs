//! The agent: one detached process per backup that owns the database session from start
//! to stop, keeps it alive, watches it, and answers on a Unix socket.
//!
//! `start` spawns it (`pgbookend __agent`) in its own session (setsid), hands it its
//! settings on stdin (so a connection string never appears in argv), and waits for one
//! line on its stdout: ready, or why not. From then on the agent lives alone: its log is
//! `<run-dir>/<id>/agent.log`, its state `<run-dir>/<id>/state.json`.

use crate::agent::marker::{self, Marker};
use crate::agent::protocol::{Request, Response};
use crate::agent::rescue;
use crate::agent::rundir::{Entry, RunDir};
use crate::agent::state::{AgentState, Phase, StopReport};
use crate::agent::verdict;
use crate::bundle::filelist::{self, FILE_LIST};
use crate::bundle::manifest;
use crate::bundle::manifest::{WalArchive, WalMode};
use crate::bundle::walcollect;
use crate::error::{class_name, io_err, Class, Error, Result};
use crate::pg::session::Session;
use crate::timefmt::{now_unix, rfc3339};
use crate::{TOOL, VERSION};
use pgbookend_formats::{control, label, lsn::Lsn, tablespace_map, wal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The start walk's list, in the agent's run-directory entry.
const START_LIST: &str = "files.start.zst";

/// The hidden subcommand that runs an agent.
pub const SUBCOMMAND: &str = "__agent";

/// Everything the agent needs, sent on its stdin as one JSON document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    pub id: String,
    pub run_dir: PathBuf,
    /// May hold a password if the user put one in the config file; never logged.
    pub conninfo: Option<String>,
    pub pgdata: Option<PathBuf>,
    pub stores: Vec<String>,
    pub fast: bool,
    pub timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub wal_mode: WalMode,
    pub archive_dir: Option<PathBuf>,
    /// How many stores must take the bundle for `stop` to succeed (default: all).
    #[serde(default)]
    pub min_stores: Option<usize>,
    /// Non-secret S3 settings from flags and the config file; credentials reach the agent
    /// only through the environment it inherits.
    #[serde(default)]
    pub s3: crate::store::s3::Settings,
    /// `--only-on`: start checked the role; the agent checks it again on its own session
    /// and refuses if the server changed role in between (a failover).
    #[serde(default)]
    pub only_on: Option<crate::ha::Role>,
}

/// What the agent reports once the backup is in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub id: String,
    pub agent_pid: u32,
    pub start_lsn: String,
    pub start_wal_file: String,
    pub timeline: u32,
    pub pg_version_num: u32,
    pub system_identifier: String,
    pub pgdata: String,
    /// The tablespace directories (targets of `pg_tblspc` links): a copy needs them too.
    #[serde(default)]
    pub tablespaces: Vec<String>,
    pub backup_from: String,
    pub stores: Vec<String>,
    pub removed_stale_markers: Vec<String>,
    pub log: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "hello", rename_all = "snake_case")]
enum Hello {
    Ready(Box<Ready>),
    Failed { error: Error },
}

/// The descriptor number at which the agent inherits its entry's lock from `start`.
const LOCK_FD: libc::c_int = 3;

/// Starts an agent for `cfg` and waits until it reports that the backup is in progress.
/// `lock` is the entry's lock, taken by the caller: the agent inherits it (same open file
/// description, so the lock is never released between `start` and the agent).
/// On failure the agent has exited and left nothing behind; the entry is removed.
pub fn spawn(cfg: &AgentConfig, entry: &Entry, lock: std::fs::File) -> Result<Ready> {
    let log_path = entry.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| io_err("cannot open the agent log", &log_path, e))?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::internal(format!("cannot find my own executable: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg(SUBCOMMAND)
        .arg(&cfg.id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe; it detaches the agent from the hook's process
    // group and terminal so that their end does not end the backup.
    let lock_fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // SAFETY: setsid, dup2 and fcntl are async-signal-safe. setsid detaches the agent from the
    // hook's process group and terminal so that their end does not end the backup; dup2
    // hands it the lock at LOCK_FD (dup2 clears close-on-exec on the copy).
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it by hand then.
            let handed = if lock_fd == LOCK_FD {
                libc::fcntl(LOCK_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(lock_fd, LOCK_FD)
            };
            if libc::setsid() < 0 || handed < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::internal(format!("cannot start the agent: {e}")))?;
    let cfg_json = serde_json::to_vec(cfg).map_err(|e| Error::internal(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&cfg_json);
    }
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let hello: Option<Hello> = serde_json::from_str(line.trim()).ok();
    match hello {
        Some(Hello::Ready(r)) => Ok(*r),
        other => {
            let _ = child.wait();
            let err = match other {
                Some(Hello::Failed { error }) => error,
                _ => {
                    let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    Error::internal(format!(
                        "the agent exited during start: {}",
                        tail.join(" | ")
                    ))
                }
            };
            let _ = entry.remove();
            Err(err)
        }
    }
}

/// The entry's lock as inherited from `start` at [`LOCK_FD`]; it must be this entry's lock
/// file (same device and inode), and is taken again on the shared open file description
/// (which succeeds: `start` holds it for us). Without it, the lock is taken anew.
fn inherited_lock(entry: &Entry) -> Result<Option<std::fs::File>> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: F_GETFD only asks whether LOCK_FD is open.
    if unsafe { libc::fcntl(LOCK_FD, libc::F_GETFD) } < 0 {
        return entry.try_lock();
    }
    // SAFETY: LOCK_FD is open and nothing else in this process owns it.
    let f = unsafe { std::fs::File::from_raw_fd(LOCK_FD) };
    // SAFETY: sets close-on-exec on a descriptor we own.
    unsafe { libc::fcntl(LOCK_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let path = entry.lock_path();
    let same = match (f.metadata(), std::fs::symlink_metadata(&path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino() && b.is_file(),
        _ => false,
    };
    if !same {
        return Err(Error::internal(format!(
            "the lock handed over by start is not {}",
            path.display()
        )));
    }
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("cannot lock", &path, e)),
    }
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

fn install_signals() {
    // SAFETY: plain sigaction calls with a handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Reads `pg_control` with the torn-read rule (retry until CRC-valid or the same bad bytes twice).
pub fn read_control(pgdata: &Path) -> Result<(control::ControlFile, Vec<u8>)> {
    let path = pgdata.join("global/pg_control");
    let mut first = true;
    control::read_stable(
        || {
            if !first {
                std::thread::sleep(Duration::from_millis(20));
            }
            first = false;
            std::fs::read(&path)
        },
        50,
    )
    .map_err(|e| Error::env(format!("cannot read {}: {e}", path.display())))
}

/// The entry point of `pgbookend __agent ID`. Returns the process exit code.
pub fn main() -> i32 {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        return 1;
    }
    let cfg: AgentConfig = match serde_json::from_slice(&input) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgbookend agent: unreadable settings on stdin: {e}");
            return 1;
        }
    };
    drop(input);
    // SAFETY: process-wide settings of a fresh, single-threaded process.
    unsafe {
        libc::umask(0o077);
    }
    let _ = std::env::set_current_dir("/");
    install_signals();
    crate::logging::init_agent();
    let entry = RunDir {
        root: cfg.run_dir.clone(),
    }
    .entry(&cfg.id);
    tracing::info!(id = %cfg.id, pid = std::process::id(), "agent starting");

    let lock = match inherited_lock(&entry) {
        Ok(Some(l)) => l,
        Ok(None) => {
            hello(&Hello::Failed {
                error: Error::usage(format!(
                    "backup {} is already in progress (another agent holds it)",
                    cfg.id
                ))
                .hint("choose another --id, or stop/abort the running one"),
            });
            return Class::Usage.exit_code();
        }
        Err(e) => {
            hello(&Hello::Failed { error: e });
            return Class::Environment.exit_code();
        }
    };
    let mut agent = Agent::new(cfg, entry);
    let code = match agent.begin() {
        Ok(ready) => {
            hello(&Hello::Ready(Box::new(ready)));
            detach_stdio();
            crate::memtrim::drop_clean_file_pages();
            agent.serve()
        }
        Err(e) => {
            tracing::error!("start failed: {e}");
            agent.session = None;
            if let Some(pgdata) = &agent.pgdata {
                if agent.marker_written {
                    let _ = marker::remove(pgdata, &agent.cfg.id);
                    crate::agent::live::remove(&agent.cfg.id, &agent.token);
                }
            }
            let code = e.class().exit_code();
            hello(&Hello::Failed { error: e });
            code
        }
    };
    drop(lock);
    code
}

fn hello(h: &Hello) {
    let mut out = std::io::stdout();
    if let Ok(s) = serde_json::to_string(h) {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
}

/// Points stdin/stdout at /dev/null once `start` has its answer, so that nothing the agent
/// does later can block on or break the (gone) hook process.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        // SAFETY: dup2 onto the standard descriptors.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

enum Next {
    Continue,
    Exit(i32),
}

struct Agent {
    cfg: AgentConfig,
    entry: Entry,
    session: Option<Session>,
    pgdata: Option<PathBuf>,
    marker_written: bool,
    state: AgentState,
    started: Instant,
    /// When the server's backup started (pg_backup_start returned) and how long the
    /// window lasted until pg_backup_stop returned: measured, not from clock seconds.
    window_started: Option<Instant>,
    window: Option<Duration>,
    start_lsn: Lsn,
    seg_size: u32,
    listener: Option<UnixListener>,
    heartbeat_pending: Option<Instant>,
    /// The temporary replication slot of `--wal collect`.
    slot: Option<String>,
    /// Ties the marker to this host's live record (see `live.rs`).
    token: String,
}

impl Agent {
    fn new(cfg: AgentConfig, entry: Entry) -> Agent {
        let state = AgentState {
            id: cfg.id.clone(),
            state: Phase::Starting,
            agent_pid: std::process::id(),
            pgdata: None,
            stores: cfg.stores.clone(),
            server: None,
            pg_version_num: None,
            system_identifier: None,
            start_lsn: None,
            start_wal_file: None,
            timeline: None,
            backup_from: None,
            start_time: None,
            last_heartbeat: None,
            heartbeat_interval_ms: cfg.heartbeat_ms,
            timeout_ms: cfg.timeout_ms,
            failure: None,
            stop: None,
            rescue: None,
            updated: now_unix(),
        };
        Agent {
            cfg,
            entry,
            session: None,
            pgdata: None,
            marker_written: false,
            state,
            started: Instant::now(),
            window_started: None,
            window: None,
            start_lsn: Lsn(0),
            seg_size: wal::DEFAULT_SEG_SIZE,
            listener: None,
            heartbeat_pending: None,
            slot: None,
            token: crate::agent::live::token(),
        }
    }

    fn save(&mut self) {
        self.state.updated = now_unix();
        if let Err(e) = self.entry.write_state(&self.state) {
            tracing::error!("cannot record state: {e}");
        }
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_ms.max(100))
    }

    /// Connects, checks that we run beside the server, starts the backup, writes the
    /// marker and opens the socket. Any error leaves the session closed by the caller,
    /// which makes the server abort the backup.
    fn begin(&mut self) -> Result<Ready> {
        self.save();
        let mut s = Session::connect(self.cfg.conninfo.as_deref(), &self.cfg.id, self.heartbeat())?;
        tracing::info!(
            "connected: {} (server_version_num {})",
            s.describe(),
            s.version_num
        );
        self.state.server = Some(s.describe());
        self.state.pg_version_num = Some(s.version_num);
        let sysid = s.system_identifier()?;
        let pgdata = self.locate_pgdata(&mut s, sysid)?;
        let standby = s.in_recovery()?;
        crate::ha::recheck(self.cfg.only_on, standby)?;
        let removed = marker::remove_stale(&pgdata, Some(&self.cfg.id))?;
        if !removed.is_empty() {
            tracing::info!(
                "removed stale markers of backups with no live agent: {}",
                removed.join(", ")
            );
        }
        if marker::dir_of(&pgdata, &self.cfg.id).exists() {
            return Err(Error::usage(format!(
                "a backup with ID {} is already marked in {}",
                self.cfg.id,
                pgdata.display()
            ))
            .hint("choose another --id"));
        }

        if self.cfg.wal_mode == WalMode::Collect {
            let name = walcollect::slot_name(&self.cfg.id);
            s.create_slot(&name)?;
            tracing::info!("temporary replication slot {name} reserves the WAL of the window");
            self.slot = Some(name);
        }
        let start_lsn = s.start_backup(&self.cfg.id, self.cfg.fast)?;
        self.session = Some(s);
        tracing::info!("backup started at {start_lsn}");
        let (ctl, _) = read_control(&pgdata)?;
        if ctl.checkpoint < start_lsn {
            return Err(Error::env(format!(
                "after the start call, pg_control's checkpoint {} is older than the backup start {start_lsn}: {} is not the data directory this server writes",
                ctl.checkpoint,
                pgdata.display()
            )));
        }
        self.start_lsn = start_lsn;
        self.seg_size = ctl.xlog_seg_size;
        let timeline = ctl.timeline;
        let start_wal_file = wal::file_name(
            timeline,
            wal::segno(start_lsn, ctl.xlog_seg_size),
            ctl.xlog_seg_size,
        );
        let start_time = now_unix();
        self.window_started = Some(Instant::now());
        self.write_marker(
            &pgdata,
            sysid,
            start_lsn,
            &start_wal_file,
            timeline,
            start_time,
        )?;
        let files = filelist::walk_to(&pgdata, &self.entry.dir.join(START_LIST))?;
        tracing::info!("start walk: {files} files");

        self.listen()?;

        let backup_from = if standby { "standby" } else { "primary" }.to_string();
        self.state.state = Phase::Running;
        self.state.start_lsn = Some(start_lsn.to_string());
        self.state.start_wal_file = Some(start_wal_file.clone());
        self.state.timeline = Some(timeline);
        self.state.backup_from = Some(backup_from.clone());
        self.state.start_time = Some(start_time);
        self.state.last_heartbeat = Some(start_time);
        self.save();
        Ok(Ready {
            id: self.cfg.id.clone(),
            agent_pid: std::process::id(),
            start_lsn: start_lsn.to_string(),
            start_wal_file,
            timeline,
            pg_version_num: self.state.pg_version_num.unwrap_or(0),
            system_identifier: sysid.to_string(),
            pgdata: pgdata.display().to_string(),
            tablespaces: crate::pg::datadir::tablespace_dirs(&pgdata),
            backup_from,
            stores: self.cfg.stores.clone(),
            removed_stale_markers: removed,
            log: self.entry.log_path().display().to_string(),
        })
    }

    /// The data directory of the server `s` is connected to (`--pgdata`, else the
    /// server's `data_directory`), checked to be readable here and of the same cluster.
    fn locate_pgdata(&mut self, s: &mut Session, sysid: u64) -> Result<PathBuf> {
        let pgdata = match &self.cfg.pgdata {
            Some(p) => p.clone(),
            None => s.data_directory()?.ok_or_else(|| {
                Error::env("this role may not read data_directory, so pgbookend cannot find PGDATA")
                    .hint("pass --pgdata DIR (or set pgdata in the config file)")
            })?,
        };
        let (ctl, _) = read_control(&pgdata).map_err(|e| {
            Error::env(format!(
                "pgbookend must run beside the server it backs up, with read access to its data directory: {}",
                e.message
            ))
            .hint("run pgbookend on the database host as root or as the cluster's owner, and check --pgdata")
        })?;
        if ctl.system_identifier != sysid {
            return Err(Error::env(format!(
                "{} belongs to another cluster: its system identifier is {}, the server's is {sysid}",
                pgdata.display(),
                ctl.system_identifier
            ))
            .hint("pass the --pgdata of the server you connect to, or connect to the server of this data directory"));
        }
        self.pgdata = Some(pgdata.clone());
        self.state.pgdata = Some(pgdata.display().to_string());
        self.state.system_identifier = Some(sysid.to_string());
        Ok(pgdata)
    }

    /// Writes the backup's marker into the data directory and its live record.
    fn write_marker(
        &mut self,
        pgdata: &Path,
        sysid: u64,
        start_lsn: Lsn,
        start_wal_file: &str,
        timeline: u32,
        start_time: i64,
    ) -> Result<()> {
        let m = Marker {
            format: 1,
            id: self.cfg.id.clone(),
            system_identifier: sysid.to_string(),
            pg_version_num: self.state.pg_version_num.unwrap_or(0),
            start_lsn: start_lsn.to_string(),
            start_wal_file: start_wal_file.to_string(),
            timeline,
            start_time: rfc3339(start_time),
            host: host_name(),
            pgdata: pgdata.display().to_string(),
            tool: TOOL.into(),
            tool_version: VERSION.into(),
            stores: self.cfg.stores.clone(),
            run_dir: self.cfg.run_dir.display().to_string(),
            agent_pid: std::process::id(),
            token: self.token.clone(),
        };
        self.marker_written = true;
        marker::write(pgdata, &m)?;
        crate::agent::live::write(&crate::agent::live::Live {
            id: self.cfg.id.clone(),
            token: self.token.clone(),
            pgdata: pgdata.display().to_string(),
            system_identifier: sysid.to_string(),
            agent_pid: std::process::id(),
        })?;
        Ok(())
    }

    /// Opens the agent's socket (0600) for `stop`, `status` and `abort`.
    fn listen(&mut self) -> Result<()> {
        let sock = self.entry.socket();
        let _ = std::fs::remove_file(&sock);
        let listener =
            UnixListener::bind(&sock).map_err(|e| io_err("cannot listen on", &sock, e))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("cannot chmod", &sock, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("cannot configure", &sock, e))?;
        self.listener = Some(listener);
        Ok(())
    }

    /// Ends the backup as void: closes the session (the server aborts the backup),
    /// removes the marker and records why.
    fn void(&mut self, phase: Phase, why: String) -> i32 {
        tracing::error!("backup void: {why}");
        self.session = None;
        if let Some(pgdata) = self.pgdata.clone() {
            if let Err(e) = marker::remove(&pgdata, &self.cfg.id) {
                tracing::error!("cannot remove the marker: {e}");
            }
        }
        crate::agent::live::remove(&self.cfg.id, &self.token);
        self.state.state = phase;
        self.state.failure = Some(why);
        self.save();
        if let Some(l) = self.listener.take() {
            drop(l);
            let _ = std::fs::remove_file(self.entry.socket());
        }
        Class::Void.exit_code()
    }

    /// The agent's loop: heartbeat, watch the session, answer requests, time out.
    fn serve(&mut self) -> i32 {
        let hb = self.heartbeat();
        let deadline = self.started + Duration::from_millis(self.cfg.timeout_ms);
        let mut next_hb = Instant::now() + hb;
        loop {
            let sig = SIGNALLED.load(Ordering::SeqCst);
            if sig != 0 {
                return self.void(
                    Phase::Aborted,
                    format!("the agent received signal {sig}; the backup was aborted"),
                );
            }
            let now = Instant::now();
            if now >= deadline {
                return self.void(
                    Phase::Failed,
                    format!(
                        "the backup was not stopped within --timeout ({}); the agent aborted it",
                        crate::timefmt::human_duration(Duration::from_millis(self.cfg.timeout_ms))
                    ),
                );
            }
            if now >= next_hb {
                if let Some(sent) = self.heartbeat_pending {
                    let limit = (hb * 3).max(Duration::from_secs(30));
                    if now.duration_since(sent) > limit {
                        return self.void(
                            Phase::Failed,
                            format!(
                                "the database session did not answer a heartbeat for {}; it is considered lost and the backup was aborted",
                                crate::timefmt::human_duration(now.duration_since(sent))
                            ),
                        );
                    }
                } else if let Some(s) = self.session.as_mut() {
                    if let Err(e) = s.send_heartbeat(self.slot.as_deref()) {
                        return self.void(Phase::Failed, lost_message(&e.message));
                    }
                    self.heartbeat_pending = Some(now);
                }
                next_hb = now + hb;
            }
            let wait = next_hb
                .min(deadline)
                .saturating_duration_since(Instant::now());
            let pq_fd = self.session.as_ref().map(|s| s.socket()).unwrap_or(-1);
            let l_fd = self.listener.as_ref().map(|l| l.as_raw_fd()).unwrap_or(-1);
            let mut fds = [
                libc::pollfd {
                    fd: pq_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: l_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = wait.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: fds is a valid array of two pollfd.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms.max(1)) };
            if n < 0 {
                continue; // EINTR: the signal check above runs next
            }
            if fds[0].revents != 0 {
                if let Some(s) = self.session.as_mut() {
                    match s.poll() {
                        Ok(Some(answer)) => {
                            self.heartbeat_pending = None;
                            if answer == "lost" || answer == "missing" || answer == "unreserved" {
                                return self.void(
                                    Phase::Failed,
                                    format!(
                                        "the replication slot that keeps the WAL of the window is {answer} (max_slot_wal_keep_size exceeded, or dropped): the server may remove WAL this backup needs"
                                    ),
                                );
                            }
                            self.state.last_heartbeat = Some(now_unix());
                            self.save();
                        }
                        Ok(None) => {}
                        Err(e) => return self.void(Phase::Failed, lost_message(&e.message)),
                    }
                }
            }
            if fds[1].revents != 0 {
                let accepted = self.listener.as_ref().map(|l| l.accept());
                if let Some(Ok((stream, _))) = accepted {
                    if let Next::Exit(code) = self.handle(stream) {
                        return code;
                    }
                }
            }
        }
    }

    /// Answers one client.
    fn handle(&mut self, stream: UnixStream) -> Next {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut stream = stream;
        if let Err(why) = check_peer(&stream) {
            tracing::warn!("refused a client: {why}");
            reply(
                &mut stream,
                &Response::Error {
                    error: Error::env(why),
                },
            );
            return Next::Continue;
        }
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            return Next::Continue;
        }
        let req: Request = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(e) => {
                reply(
                    &mut stream,
                    &Response::Error {
                        error: Error::usage(format!("bad request: {e}")),
                    },
                );
                return Next::Continue;
            }
        };
        tracing::info!("request: {req:?}");
        match req {
            Request::Status => {
                reply(
                    &mut stream,
                    &Response::State {
                        state: Box::new(self.state.clone()),
                    },
                );
                Next::Continue
            }
            Request::Abort => {
                let code = self.void(
                    Phase::Aborted,
                    "aborted by request (pgbookend abort)".into(),
                );
                reply(
                    &mut stream,
                    &Response::Aborted {
                        state: Box::new(self.state.clone()),
                    },
                );
                Next::Exit(code)
            }
            Request::Stop {
                wait_archive,
                archive_timeout_ms,
            } => {
                let resp = self.stop(wait_archive, Duration::from_millis(archive_timeout_ms));
                let code = match &resp {
                    Response::Stopped { error: None, .. } => 0,
                    Response::Stopped { error: Some(e), .. } => e.class().exit_code(),
                    Response::Error { error } => error.class().exit_code(),
                    _ => 1,
                };
                reply(&mut stream, &resp);
                Next::Exit(code)
            }
        }
    }

    /// Waits for a heartbeat still in flight so the session is free for the stop call.
    fn drain_heartbeat(&mut self) -> Result<()> {
        while self.heartbeat_pending.is_some() {
            let s = self
                .session
                .as_mut()
                .ok_or_else(|| Error::void("the session is closed"))?;
            let mut fds = [libc::pollfd {
                fd: s.socket(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: valid pollfd array.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
            match s.poll() {
                Ok(Some(_)) => self.heartbeat_pending = None,
                Ok(None) => {}
                Err(e) => return Err(Error::void(lost_message(&e.message))),
            }
        }
        Ok(())
    }

    /// Stops the backup in the session that started it and writes the bundle.
    fn stop(&mut self, wait_archive: Option<bool>, archive_timeout: Duration) -> Response {
        self.state.state = Phase::Stopping;
        self.save();
        let t0 = Instant::now();
        let from_standby = self.state.backup_from.as_deref() == Some("standby");
        let stopped = self.drain_heartbeat().and_then(|_| {
            let s = self
                .session
                .as_mut()
                .ok_or_else(|| Error::void("the session is closed"))?;
            let mut r = s.stop_backup()?;
            if from_standby {
                // Best effort: without it the backup ends at the minimum recovery point.
                r.replay_lsn = s.replay_lsn().unwrap_or_else(|e| {
                    tracing::warn!("{e}");
                    None
                });
            }
            Ok(r)
        });
        let res = match stopped {
            Ok(r) => r,
            Err(e) => {
                let why = e.message.clone();
                self.void(Phase::Failed, why);
                let mut err = Error::void(format!(
                    "backup {} is void: {}. No bundle was written.",
                    self.cfg.id, e.message
                ));
                err.hints.push("take a new backup".into());
                return Response::Error { error: err };
            }
        };
        let stop_unix = now_unix();
        self.window = self.window_started.map(|t| t.elapsed());
        tracing::info!("backup stopped at {}", res.lsn);
        match self.finish(&res, stop_unix, wait_archive, archive_timeout, t0) {
            Ok(resp) => resp,
            Err(e) => match self.state.rescue.clone() {
                Some(saved) => {
                    let why = format!(
                        "backup {} stopped and its label is saved in {saved}, but its bundle is not complete: {}",
                        self.cfg.id, e.message
                    );
                    Response::Error {
                        error: self.rescuable(why, e.hints),
                    }
                }
                None => {
                    // Not even the label could be saved: say so plainly.
                    let why = format!(
                        "the backup stopped but neither its label nor its bundle could be written: {}",
                        e.message
                    );
                    self.void(Phase::Failed, why.clone());
                    Response::Error {
                        error: Error::new(e.class(), why)
                            .hint("take a new backup once the cause is fixed"),
                    }
                }
            },
        }
    }

    /// Ends a stopped backup whose bundle is not complete: its label is saved, the backup
    /// is rescuable. Returns the error `stop` reports (exit 7).
    fn rescuable(&mut self, why: String, hints: Vec<String>) -> Error {
        tracing::error!("{why}");
        self.session = None;
        if let Some(pgdata) = self.pgdata.clone() {
            if let Err(e) = marker::remove(&pgdata, &self.cfg.id) {
                tracing::error!("cannot remove the marker: {e}");
            }
        }
        crate::agent::live::remove(&self.cfg.id, &self.token);
        self.state.state = Phase::Rescuable;
        self.state.failure = Some(why.clone());
        self.save();
        if let Some(l) = self.listener.take() {
            drop(l);
            let _ = std::fs::remove_file(self.entry.socket());
        }
        let mut e = Error::new(Class::Rescuable, why);
        for h in hints {
            e = e.hint(h);
        }
        e.hint(format!(
            "once the cause is fixed, run `pgbookend rescue --id {}`: it completes the bundle from the saved label and the WAL still in pg_wal or the archive",
            self.cfg.id
        ))
    }

    /// The facts of the stopped backup (the manifest without WAL and files) and the
    /// server's files, from the stop call's answer and `pg_control`.
    fn facts_of(
        &mut self,
        res: &crate::pg::session::StopResult,
        stop_unix: i64,
        pgdata: &Path,
    ) -> Result<(rescue::Facts, rescue::Saved)> {
        let lbl = label::BackupLabel::parse(&res.labelfile).map_err(|e| {
            Error::internal(format!("the server's backup_label does not parse: {e}"))
        })?;
        if lbl.label != self.cfg.id || lbl.start_wal_location != self.start_lsn {
            tracing::warn!(
                "the label names {} at {}, the agent started {} at {}",
                lbl.label,
                lbl.start_wal_location,
                self.cfg.id,
                self.start_lsn
            );
        }
        let (ctl, ctl_bytes) = read_control(pgdata)?;
        let standby = lbl.from_standby();
        if standby != (self.state.backup_from.as_deref() == Some("standby")) {
            return Err(Error::void(
                "the server changed role (standby promoted) during the backup",
            ));
        }
        let start_tli = lbl.start_timeline.unwrap_or(ctl.timeline);
        let stop_tli = if standby && ctl.min_recovery_point_tli != 0 {
            ctl.min_recovery_point_tli
        } else {
            ctl.timeline
        };
        let seg = ctl.xlog_seg_size;
        let tablespaces = tablespaces_of(res, ctl.major)?;
        let manifest = manifest::Manifest {
            format: manifest::FORMAT,
            id: self.cfg.id.clone(),
            system_identifier: ctl.system_identifier.to_string(),
            pg_version_num: self.state.pg_version_num.unwrap_or(0),
            pg_major: ctl.major,
            timeline: stop_tli,
            start_lsn: self.start_lsn.to_string(),
            stop_lsn: res.lsn.to_string(),
            checkpoint_lsn: lbl.checkpoint_location.to_string(),
            start_wal_file: wal::file_name(start_tli, wal::segno(self.start_lsn, seg), seg),
            stop_wal_file: wal::file_name(stop_tli, wal::prev_segno(res.lsn, seg), seg),
            replay_lsn: self.replay_beyond(res, stop_tli, seg, pgdata),
            wal_segment_size: seg,
            // Normalised: the oldest majors write "master" where later ones write "primary".
            backup_from: if standby { "standby" } else { "primary" }.into(),
            start_time: rfc3339(self.state.start_time.unwrap_or(stop_unix)),
            stop_time: rfc3339(stop_unix),
            host: host_name(),
            pgdata: pgdata.display().to_string(),
            tablespaces,
            data_checksums: ctl.data_checksum_version != 0,
            tool: TOOL.into(),
            tool_version: VERSION.into(),
            wal_mode: self.cfg.wal_mode.as_str().into(),
            wal_archive: WalArchive::NotWaited.as_str().into(),
            archive_dir: self
                .cfg
                .archive_dir
                .as_ref()
                .map(|d| d.display().to_string()),
            archive_stores: self.store_archive(),
            wal: Vec::new(),
            file_list: None,
            files: BTreeMap::new(),
        };
        let mut small = vec![(
            "backup_label".to_string(),
            res.labelfile.clone().into_bytes(),
        )];
        if !res.spcmapfile.is_empty() {
            small.push(("tablespace_map".into(), res.spcmapfile.clone().into_bytes()));
        }
        small.push(("pg_control".into(), ctl_bytes));
        let facts = rescue::Facts {
            format: 1,
            id: self.cfg.id.clone(),
            stores: self.cfg.stores.clone(),
            min_stores: self.cfg.min_stores,
            wal_mode: self.cfg.wal_mode,
            archive_dir: self.cfg.archive_dir.clone(),
            start_tli,
            manifest,
            token: self.token.clone(),
        };
        Ok((facts, small))
    }

    /// A standby backup in `collect` mode keeps the WAL up to what the standby had
    /// replayed when stop returned, when that is beyond the stop point and its segment is
    /// in pg_wal on the stop timeline (a timeline switch since then keeps the stop point).
    fn replay_beyond(
        &self,
        res: &crate::pg::session::StopResult,
        stop_tli: u32,
        seg: u32,
        pgdata: &Path,
    ) -> Option<String> {
        let r = res.replay_lsn.filter(|r| *r > res.lsn)?;
        if self.cfg.wal_mode != WalMode::Collect {
            return None;
        }
        let last = wal::file_name(stop_tli, wal::prev_segno(r, seg), seg);
        if !pgdata.join("pg_wal").join(&last).is_file() {
            tracing::warn!(
                "replay position {r}: {last} is not in pg_wal; the backup ends at {}",
                res.lsn
            );
            return None;
        }
        Some(r.to_string())
    }

    /// Saves the label durably before anything that can wait or fail: into the state
    /// directory (else the run directory), and into each local store. Records where.
    fn save_label(
        &mut self,
        res: &crate::pg::session::StopResult,
        stop_unix: i64,
        pgdata: &Path,
    ) -> Result<(rescue::Facts, PathBuf)> {
        let roots = [rescue::root(), self.entry.dir.join("rescue")];
        let (facts, small) = match self.facts_of(res, stop_unix, pgdata) {
            Ok(x) => x,
            Err(e) => {
                // Keep the server's answer anyway, for a human to look at.
                let mut small = vec![(
                    "backup_label".to_string(),
                    res.labelfile.clone().into_bytes(),
                )];
                if !res.spcmapfile.is_empty() {
                    small.push(("tablespace_map".into(), res.spcmapfile.clone().into_bytes()));
                }
                if let Ok(p) = rescue::save(&roots, &self.cfg.id, None, &small) {
                    self.state.rescue = Some(p.display().to_string());
                    self.save();
                }
                return Err(e);
            }
        };
        let saved = rescue::save(&roots, &self.cfg.id, Some(&facts), &small)?;
        tracing::info!("label saved in {}", saved.display());
        self.state.rescue = Some(saved.display().to_string());
        self.save();
        rescue::seed_stores(&saved, &facts, &self.cfg.s3);
        crate::fault::fault("after-stop-call");
        Ok((facts, saved))
    }

    /// The file list (files present at start and at stop) into the rescue copy.
    fn file_list(&self, pgdata: &Path, saved: &Path, facts: &mut rescue::Facts) -> Result<()> {
        let start_list = self.entry.dir.join(START_LIST);
        if !start_list.exists() {
            return Ok(());
        }
        let tmp = saved.join(format!(".{FILE_LIST}.tmp"));
        let count = filelist::intersect_walk(pgdata, &start_list, &tmp)?;
        let dest = saved.join(FILE_LIST);
        std::fs::rename(&tmp, &dest).map_err(|e| io_err("cannot rename", &tmp, e))?;
        crate::fsutil::fsync_dir(saved)?;
        facts.manifest.file_list = Some(manifest::FileList {
            name: FILE_LIST.into(),
            count,
        });
        rescue::write_facts(saved, facts)
    }

    /// With `--wal archive` and no `--archive DIR`: the backup's stores, whose pgbookend
    /// archive must hold the window's WAL.
    fn store_archive(&self) -> Vec<String> {
        if self.cfg.wal_mode == WalMode::Archive && self.cfg.archive_dir.is_none() {
            self.cfg.stores.clone()
        } else {
            Vec::new()
        }
    }

    fn finish(
        &mut self,
        res: &crate::pg::session::StopResult,
        stop_unix: i64,
        wait_archive: Option<bool>,
        archive_timeout: Duration,
        t0: Instant,
    ) -> Result<Response> {
        let pgdata = self
            .pgdata
            .clone()
            .ok_or_else(|| Error::internal("no PGDATA"))?;
        let (mut facts, saved) = self.save_label(res, stop_unix, &pgdata)?;
        self.file_list(&pgdata, &saved, &mut facts)?;
        let mode = self.cfg.wal_mode;
        let standby = facts.manifest.backup_from == "standby";
        let stop_wal_file = facts.manifest.stop_wal_file.clone();
        // With the WAL in the bundle (collect) or confirmed in an archive directory
        // (archive), the server's own archiving is not what makes this backup restorable,
        // so `stop` waits for it only in `none` mode unless asked.
        let wait = wait_archive.unwrap_or(mode == WalMode::None);
        let (wal_archive, wal_detail) = if !wait {
            (WalArchive::NotWaited, None)
        } else {
            self.wait_archive(&pgdata, standby, &stop_wal_file, archive_timeout)
        };
        facts.manifest.wal_archive = wal_archive.as_str().into();
        let archive = self.cfg.archive_dir.clone();
        let window = rescue::window(&facts, archive.as_deref())?;
        let archived = match (mode, archive.as_deref()) {
            (WalMode::Archive, Some(dir)) => Some(
                walcollect::wait_archive_dir(dir, &window, archive_timeout).map_err(|missing| {
                    Error::new(
                        Class::Rescuable,
                        format!(
                            "WAL file {missing} of the backup window did not appear in {} within --archive-timeout ({})",
                            dir.display(),
                            crate::timefmt::human_duration(archive_timeout)
                        ),
                    )
                    .hint("check archive_command and pg_stat_archiver; or take backups with --wal collect")
                })?,
            ),
            (WalMode::Archive, None) => {
                let pg_wal = pgdata.join("pg_wal");
                Some(rescue::store_archive_entries(&facts, &self.cfg.s3, &window, (!standby).then_some(pg_wal.as_path()), archive_timeout)?)
            }
            _ => None,
        };
        let slot = self.slot.clone();
        check_slot(&mut self.session, slot.as_deref())?;
        let plan = rescue::Plan {
            facts: &facts,
            saved: &saved,
            window: &window,
            archived,
            archive: archive.as_deref(),
        };
        let stores = self.cfg.stores.clone();
        let session = &mut self.session;
        let s3 = self.cfg.s3.clone();
        let w = rescue::write_stores(&plan, &stores, &s3, &mut || {
            check_slot(session, slot.as_deref())
        });
        let manifest = w.manifest.clone().unwrap_or_else(|| facts.manifest.clone());
        let error = self.store_error(
            &w,
            &saved,
            &stop_wal_file,
            wal_archive,
            &wal_detail,
            archive_timeout,
        );
        let archive_wait = (wal_archive, wal_detail);
        Ok(self.conclude(&pgdata, manifest, w, error, archive_wait, t0, stop_unix))
    }

    /// The error `stop` reports after writing the stores, if any; removes the rescue copy
    /// once the bundle is in enough stores.
    fn store_error(
        &mut self,
        w: &rescue::Written,
        saved: &Path,
        stop_wal_file: &str,
        wal_archive: WalArchive,
        wal_detail: &Option<String>,
        archive_timeout: Duration,
    ) -> Option<Error> {
        let facts = verdict::StopFacts {
            id: &self.cfg.id,
            min_stores: self.cfg.min_stores,
            saved,
            stop_wal_file,
            wal_archive,
            wal_detail: wal_detail.as_deref(),
            archive_timeout,
        };
        let v = verdict::stop(&facts, w);
        if v.in_enough_stores {
            let outcomes = &w.outcomes;
            if outcomes.iter().any(|o| !o.ok) {
                tracing::warn!(
                    "the bundle is in {} of {} stores (--min-stores {})",
                    outcomes.iter().filter(|o| o.ok).count(),
                    outcomes.len(),
                    crate::store::fanout::required_stores(self.cfg.min_stores, outcomes.len())
                );
            }
            if let Err(e) = crate::fsutil::remove_tree(saved) {
                tracing::warn!("cannot remove the rescue copy: {e}");
            }
            self.state.rescue = None;
        }
        v.error
    }

    /// Removes the marker, records the final state and builds `stop`'s answer.
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &mut self,
        pgdata: &Path,
        manifest: manifest::Manifest,
        w: rescue::Written,
        error: Option<Error>,
        (wal_archive, wal_detail): (WalArchive, Option<String>),
        t0: Instant,
        stop_unix: i64,
    ) -> Response {
        if let Err(e) = marker::remove(pgdata, &self.cfg.id) {
            tracing::error!("cannot remove the marker: {e}");
        }
        crate::agent::live::remove(&self.cfg.id, &self.token);
        let _ = std::fs::remove_file(self.entry.dir.join(START_LIST));
        let wal_bytes: u64 = manifest
            .wal
            .iter()
            .filter_map(|w| w.stored.as_ref())
            .filter_map(|s| manifest.files.get(s))
            .map(|f| f.size)
            .sum();
        let outcomes = w.outcomes;
        let required = crate::store::fanout::required_stores(self.cfg.min_stores, outcomes.len());
        let report = StopReport {
            id: self.cfg.id.clone(),
            system_identifier: manifest.system_identifier.clone(),
            pg_version_num: manifest.pg_version_num,
            timeline: manifest.timeline,
            start_lsn: manifest.start_lsn.clone(),
            stop_lsn: manifest.stop_lsn.clone(),
            start_wal_file: manifest.start_wal_file.clone(),
            stop_wal_file: manifest.stop_wal_file.clone(),
            backup_from: manifest.backup_from.clone(),
            start_time: manifest.start_time.clone(),
            stop_time: manifest.stop_time.clone(),
            window_s: match self.window {
                Some(d) => (d.as_secs_f64() * 1000.0).round() / 1000.0,
                None => (stop_unix - self.state.start_time.unwrap_or(stop_unix)) as f64,
            },
            duration_s: t0.elapsed().as_secs_f64(),
            wal_mode: self.cfg.wal_mode,
            wal_segments: manifest
                .wal
                .iter()
                .filter(|w| !w.name.ends_with(".history"))
                .count() as u64,
            wal_bytes_stored: wal_bytes,
            file_list_count: manifest.file_list.as_ref().map(|f| f.count),
            wal_archive,
            wal_archive_detail: wal_detail,
            stores: outcomes,
            min_stores: required,
            rescue: self.state.rescue.clone(),
        };
        self.session = None;
        let rescuable = error
            .as_ref()
            .is_some_and(|e| e.class() == Class::Rescuable);
        self.state.state = if rescuable {
            Phase::Rescuable
        } else {
            Phase::Stopped
        };
        self.state.stop = Some(report.clone());
        self.state.failure = error
            .as_ref()
            .map(|e| format!("{}: {}", class_name(e.class()), e.message));
        self.save();
        if let Some(l) = self.listener.take() {
            drop(l);
            let _ = std::fs::remove_file(self.entry.socket());
        }
        Response::Stopped {
            report: Box::new(report),
            error,
        }
    }

    /// Waits until the server has archived the stop segment (and, on a primary, the
    /// backup history file), bounded by `timeout`. Mirrors the server's own test: a
    /// `.done` status file, or the segment already removed from `pg_wal`.
    fn wait_archive(
        &mut self,
        pgdata: &Path,
        standby: bool,
        stop_wal_file: &str,
        timeout: Duration,
    ) -> (WalArchive, Option<String>) {
        let mode = self
            .session
            .as_mut()
            .and_then(|s| s.setting("archive_mode").ok().flatten())
            .unwrap_or_else(|| "off".into());
        let archiving = match mode.as_str() {
            "always" => true,
            "on" => !standby,
            _ => false,
        };
        if !archiving {
            return (
                WalArchive::ArchivingOff,
                Some(format!(
                    "archive_mode is {mode}: the WAL of the window must be kept by other means"
                )),
            );
        }
        let mut needed = vec![stop_wal_file.to_string()];
        if !standby {
            let seg = self.seg_size as u64;
            let start_seg = wal::segno(self.start_lsn, self.seg_size);
            let tli = stop_wal_file
                .get(0..8)
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .unwrap_or(1);
            needed.push(format!(
                "{}.{:08X}.backup",
                wal::file_name(tli, start_seg, self.seg_size),
                self.start_lsn.0 % seg
            ));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let busy: Vec<&String> = needed.iter().filter(|f| archive_busy(pgdata, f)).collect();
            if busy.is_empty() {
                return (WalArchive::Archived, None);
            }
            if Instant::now() >= deadline {
                let detail = self.session.as_mut().and_then(|s| s.archiver_failure());
                let first = busy[0].clone();
                let msg = match detail {
                    Some(d) => format!("waiting for {first} to be archived; {d}"),
                    None => format!("waiting for {first} to be archived"),
                };
                return (WalArchive::NotConfirmed, Some(msg));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Checks, with the session still open, that the temporary slot still reserves the WAL
/// of the window (`reserved` or `extended`); `unreserved`, `lost` or a missing slot means
/// the server may have removed or recycled WAL this backup needs.
fn check_slot(session: &mut Option<Session>, slot: Option<&str>) -> Result<()> {
    let (Some(s), Some(name)) = (session.as_mut(), slot) else {
        return Ok(());
    };
    let status = s.slot_status(name)?;
    if status == "reserved" || status == "extended" {
        return Ok(());
    }
    Err(Error::new(
        Class::Rescuable,
        format!(
            "the replication slot that keeps the WAL of the window is {status} (max_slot_wal_keep_size exceeded, or dropped): the server may have removed WAL this backup needs"
        ),
    )
    .hint("raise max_slot_wal_keep_size; `pgbookend rescue --archive DIR` can complete the bundle from a WAL archive"))
}

/// The server's XLogArchiveIsBusy test, read from the outside.
fn archive_busy(pgdata: &Path, file: &str) -> bool {
    let status = pgdata.join("pg_wal/archive_status");
    if status.join(format!("{file}.done")).exists() {
        return false;
    }
    if status.join(format!("{file}.ready")).exists() {
        return true;
    }
    if status.join(format!("{file}.done")).exists() {
        return false;
    }
    pgdata.join("pg_wal").join(file).exists()
}

fn lost_message(detail: &str) -> String {
    let d = detail.trim();
    let d = if d.is_empty() {
        "the connection closed"
    } else {
        d
    };
    format!("the database session was lost ({d}); the server aborted the backup")
}

fn reply(stream: &mut UnixStream, resp: &Response) {
    if let Ok(mut s) = serde_json::to_string(resp) {
        s.push('\n');
        let _ = stream.write_all(s.as_bytes());
    }
}

/// Only the agent's own user (or root) may talk to it.
fn check_peer(stream: &UnixStream) -> std::result::Result<(), String> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot read peer credentials: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid == me || cred.uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not control this agent (uid {me})",
            cred.uid
        ))
    }
}

/// The tablespaces of the server's tablespace_map (none when it is empty).
fn tablespaces_of(
    res: &crate::pg::session::StopResult,
    major: u32,
) -> Result<Vec<manifest::Tablespace>> {
    if res.spcmapfile.is_empty() {
        return Ok(Vec::new());
    }
    Ok(
        tablespace_map::TablespaceMap::parse_for_major(&res.spcmapfile, major)
            .map_err(|e| {
                Error::internal(format!("the server's tablespace_map does not parse: {e}"))
            })?
            .entries
            .into_iter()
            .map(|(oid, path)| manifest::Tablespace { oid, path })
            .collect(),
    )
}
