//! The drill's server: found for the copy's major, started as the data directory's owner
//! on a private socket with no TCP, no archiving and no replication, watched until it has
//! recovered and opened, and always stopped (fast, then immediate, then killed).

use crate::error::{Class, Error, Result};
use crate::pg::pq::Conn;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port number that names the socket file (no TCP is ever opened).
const PORT: &str = "5432";

/// Finds the `postgres` binary of `major`: `--pg-bin`, else `pg_config --bindir`, else the
/// Debian layout. Every candidate must report that major; an environment error lists what
/// was tried.
pub fn find_bindir(major: u32, given: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let mut candidates: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(g) = given {
        candidates.push((g.to_path_buf(), "--pg-bin"));
    } else {
        if let Some(d) = pg_config_bindir() {
            candidates.push((d, "pg_config --bindir"));
        }
        candidates.push((
            PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
            "the Debian layout",
        ));
    }
    for (dir, from) in candidates {
        match binary_major(&dir) {
            Some(m) if m == major => return Ok(dir),
            Some(m) => tried.push(format!(
                "{} ({from}): PostgreSQL {m}",
                dir.join("postgres").display()
            )),
            None => tried.push(format!(
                "{} ({from}): missing or not runnable",
                dir.join("postgres").display()
            )),
        }
    }
    Err(Error::env(format!(
        "no PostgreSQL {major} server found for the copy; tried {}",
        tried.join("; ")
    ))
    .hint(format!(
        "install the PostgreSQL {major} server, or pass --pg-bin DIR (the directory holding its postgres binary)"
    )))
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let dir = PathBuf::from(text.trim());
    (out.status.success() && dir.is_absolute()).then_some(dir)
}

/// The major of `dir/postgres`, from `postgres --version` ("postgres (PostgreSQL) 15.4 ...").
fn binary_major(dir: &Path) -> Option<u32> {
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split_once("(PostgreSQL)")?.1.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Who the server runs as: the owner of the data directory, never root.
#[derive(Debug, Clone)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The owner's login name: the usual name of the bootstrap superuser.
    pub name: Option<String>,
}

/// The owner of `pgdata`; refuses root (PostgreSQL itself refuses to run as root).
pub fn owner_of(pgdata: &Path) -> Result<Owner> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(pgdata)
        .map_err(|e| Error::env(format!("cannot stat {}: {e}", pgdata.display())))?;
    if md.uid() == 0 {
        return Err(Error::new(
            Class::Check,
            format!("{} is owned by root: drill never runs a server as root", pgdata.display()),
        )
        .hint("restore the copy with the ownership of the original data directory, that of the postgres user"));
    }
    Ok(Owner {
        uid: md.uid(),
        gid: md.gid(),
        name: user_name(md.uid()),
    })
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of pw's strings.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// A running drill server. Dropping it stops it.
pub struct Server {
    child: Child,
    pid: i32,
    sock: PathBuf,
    log: PathBuf,
    user: Option<String>,
}

/// Where a drill server lives: its data directory, socket directory, log and HBA file.
pub struct Places<'a> {
    pub pgdata: &'a Path,
    pub sock: &'a Path,
    pub log: &'a Path,
    pub hba: &'a Path,
}

impl Server {
    /// Starts `bindir/postgres` on `places` as `owner`, with every network and archiving
    /// feature off given as `-c` options (the clone's configuration files are not edited).
    pub fn start(bindir: &Path, places: &Places, owner: &Owner) -> Result<Server> {
        // sun_path holds 108 bytes, the socket file's name included.
        let socket_len = places.sock.as_os_str().len() + "/.s.PGSQL.".len() + PORT.len();
        if socket_len > 107 {
            return Err(Error::env(format!(
                "the drill's socket path {}/.s.PGSQL.{PORT} would be longer than a Unix socket allows (107 bytes)",
                places.sock.display()
            ))
            .hint("restore the copy under a shorter path (the scratch directory is created beside it)"));
        }
        let log = std::fs::File::create(places.log)
            .map_err(|e| Error::env(format!("cannot create {}: {e}", places.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::env(format!("cannot open the server log: {e}")))?;
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D").arg(places.pgdata);
        let opt = |k: &str, v: &str| format!("{k}={v}");
        let settings = [
            opt("listen_addresses", ""),
            opt(
                "unix_socket_directories",
                &places.sock.display().to_string(),
            ),
            opt("unix_socket_permissions", "0700"),
            opt("port", PORT),
            opt("hba_file", &places.hba.display().to_string()),
            opt("archive_mode", "off"),
            opt("max_wal_senders", "0"),
            opt("hot_standby", "off"),
            opt("primary_conninfo", ""),
            opt("synchronous_standby_names", ""),
            opt("ssl", "off"),
            opt("logging_collector", "off"),
            opt("log_destination", "stderr"),
            // Nothing of the copy's configuration may run a command or write outside the
            // clone on the drill's behalf.
            opt("external_pid_file", ""),
            opt("recovery_end_command", ""),
            opt("archive_cleanup_command", ""),
        ];
        for s in &settings {
            cmd.arg("-c").arg(s);
        }
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .current_dir("/")
            .uid(owner.uid)
            .gid(owner.gid)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it runs in the child after the uid change,
        // so the server gets SIGQUIT (immediate shutdown) if drill itself is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Error::env(format!(
                "cannot start {}: {e}",
                bindir.join("postgres").display()
            ))
        })?;
        Ok(Server {
            pid: child.id() as i32,
            child,
            sock: places.sock.to_path_buf(),
            log: places.log.to_path_buf(),
            user: owner.name.clone(),
        })
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// Connects to `db` over the private socket as the bootstrap superuser (the owner's
    /// name, else `postgres`).
    pub fn connect(&self, db: &str) -> std::result::Result<Conn, String> {
        let sock = self.sock.display().to_string();
        let mut last = String::new();
        let users: Vec<&str> = self
            .user
            .iter()
            .map(|s| s.as_str())
            .chain(["postgres"])
            .collect();
        for u in users {
            let params = [
                ("host", sock.as_str()),
                ("port", PORT),
                ("user", u),
                ("dbname", db),
                ("connect_timeout", "10"),
                ("application_name", "pgbookend drill"),
            ];
            match Conn::connect(&params, None) {
                Ok(c) => return Ok(c),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Connects to the `postgres` database, else to `template1` (someone may have dropped
    /// `postgres`).
    pub fn connect_any(&self) -> std::result::Result<Conn, String> {
        self.connect("postgres").or_else(|e| {
            if e.contains("does not exist") {
                self.connect("template1")
            } else {
                Err(e)
            }
        })
    }

    /// Waits until recovery has ended and the server accepts connections as a primary.
    /// Fails if the server exits, after `limit`, or when `stop` says a signal asked drill
    /// to end.
    pub fn wait_open(&mut self, limit: Duration, stop: &dyn Fn() -> bool) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            if stop() {
                return Err(super::interrupted());
            }
            if t0.elapsed() > limit {
                return Err(self.timed_out(limit));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::new(
                    Class::Check,
                    format!(
                        "the drill server exited ({status}) before it finished recovery; its log ends with:\n{}",
                        self.log_tail()
                    ),
                )
                .hint("the copy does not recover: do not rely on this backup; see the log lines above"));
            }
            match self.connect_any() {
                Ok(mut c) => {
                    if let Ok(r) = c.query("SELECT pg_is_in_recovery()", &[]) {
                        if r.scalar() == Some("f") {
                            return Ok(t0.elapsed());
                        }
                    }
                }
                // The server is open but will not let drill in: waiting would never end.
                Err(e)
                    if ["does not exist", "authentication", "pg_hba.conf"]
                        .iter()
                        .any(|w| e.contains(w)) =>
                {
                    return Err(Error::env(format!(
                        "the drill server is up but drill cannot log in: {e}"
                    ))
                    .hint("drill logs in as the copy owner's name or postgres (the usual bootstrap superuser) to the postgres or template1 database"));
                }
                Err(_) => {} // still starting up or recovering
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The error of a recovery that did not end within `limit` (the server is stopped by
    /// the caller).
    fn timed_out(&self, limit: Duration) -> Error {
        Error::env(format!(
            "the drill server did not finish recovery within {} (--timeout); it was stopped and the clone removed; its log ends with:\n{}",
            crate::timefmt::human_duration(limit),
            self.log_tail()
        ))
        .hint("if recovery was progressing, run drill again with a longer --timeout (e.g. --timeout 4h); the backup was not judged")
    }

    /// Stops the server: fast shutdown, then immediate, then SIGKILL of its process group;
    /// returns once the postmaster has exited.
    pub fn stop(&mut self) {
        for (sig, wait) in [(libc::SIGINT, 60), (libc::SIGQUIT, 10)] {
            if self.signal_and_wait(sig, Duration::from_secs(wait)) {
                return;
            }
        }
        // SAFETY: the process group we created for the postmaster (process_group(0)).
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Sends `sig` and waits up to `wait` for the postmaster to exit.
    fn signal_and_wait(&mut self, sig: libc::c_int, wait: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        // SAFETY: a signal to the child we started (not yet reaped, so the pid is ours).
        unsafe { libc::kill(self.pid, sig) };
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The postmaster's pid (for the signal watcher).
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
