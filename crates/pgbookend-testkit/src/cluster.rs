//! One real PostgreSQL server in a private temporary directory: options, lifecycle, SQL and pgbench helpers, cleanup on Drop.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::procfs::{self, alive, alive_same, descendants, signal};
use crate::tempdir::{keep_dirs, make_dir, make_dir_in, remove_tree};
use crate::{
    chown_to_server, client_bin, free_port, is_root, run_as_server_user, scrub_pg_env,
    server_account, server_bin, template, tmp_root,
};

/// How to set up a [`Cluster`]; `ClusterOptions::new(major)` gives a plain primary listening
/// on its Unix socket only, without checksums, archiving or tablespaces.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// PostgreSQL major version (one of [`crate::MAJORS`]).
    pub major: u32,
    /// initdb `--data-checksums` when true; when false, explicitly none (`--no-data-checksums`
    /// on 18, where checksums became the default).
    pub data_checksums: bool,
    /// Also listen on 127.0.0.1:[`Cluster::port`] (otherwise `listen_addresses = ''`).
    pub tcp: bool,
    /// Extra `postgresql.conf` lines, appended after the harness's own (so they win).
    pub conf: Vec<String>,
    /// Lines put in front of `pg_hba.conf` (which otherwise trusts everything), e.g.
    /// `local all alice scram-sha-256` for password tests.
    pub hba: Vec<String>,
    /// `archive_mode = on` with an `archive_command` copying into `<base>/archive`, refusing to
    /// overwrite (`test ! -f`).
    pub archive_dir: bool,
    /// Create `<base>/ts1` outside the data dir and `CREATE TABLESPACE ts1` there after start.
    pub tablespace: bool,
    /// Keep the WAL in `<base>/wal` with `pg_wal` a link to it, as `initdb -X` makes it.
    pub separate_waldir: bool,
    /// Create the cluster's directory (data, socket, log) inside this directory instead of
    /// the harness's temporary root: e.g. on a loop-mounted btrfs or XFS.
    pub base_in: Option<PathBuf>,
}

impl ClusterOptions {
    /// Defaults for `major`: no checksums, socket only, no extra conf, no archive, no tablespace.
    pub fn new(major: u32) -> Self {
        ClusterOptions {
            major,
            data_checksums: false,
            tcp: false,
            conf: Vec::new(),
            hba: Vec::new(),
            archive_dir: false,
            tablespace: false,
            separate_waldir: false,
            base_in: None,
        }
    }

    /// Sets [`ClusterOptions::base_in`].
    pub fn base_in(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_in = Some(dir.into());
        self
    }

    /// Sets [`ClusterOptions::data_checksums`].
    pub fn data_checksums(mut self, on: bool) -> Self {
        self.data_checksums = on;
        self
    }

    /// Sets [`ClusterOptions::tcp`].
    pub fn tcp(mut self, on: bool) -> Self {
        self.tcp = on;
        self
    }

    /// Adds one `postgresql.conf` line (see [`ClusterOptions::conf`]).
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }

    /// Adds one line in front of `pg_hba.conf` (see [`ClusterOptions::hba`]).
    pub fn hba(mut self, line: impl Into<String>) -> Self {
        self.hba.push(line.into());
        self
    }

    /// Sets [`ClusterOptions::archive_dir`].
    pub fn archive_dir(mut self, on: bool) -> Self {
        self.archive_dir = on;
        self
    }

    /// Sets [`ClusterOptions::separate_waldir`].
    pub fn separate_waldir(mut self, on: bool) -> Self {
        self.separate_waldir = on;
        self
    }

    /// Sets [`ClusterOptions::tablespace`].
    pub fn tablespace(mut self, on: bool) -> Self {
        self.tablespace = on;
        self
    }
}

/// A running (or stopped) PostgreSQL server owned by a test: its data dir, socket dir and log
/// live in a private base directory; Drop stops every process and removes the directory.
#[derive(Debug)]
pub struct Cluster {
    major: u32,
    base: PathBuf,
    pgdata: PathBuf,
    sock: PathBuf,
    port: u16,
    log: PathBuf,
    /// Harness dir holding the socket dir and log of an adopted data dir.
    aux: Option<PathBuf>,
    archive: Option<PathBuf>,
    tablespace: Option<PathBuf>,
    waldir: Option<PathBuf>,
    /// `-c` options given to postgres at every start (adopted data dirs).
    extra_args: Vec<String>,
    /// Environment given to postgres at every start (and so to its restore_command),
    /// e.g. the S3 settings an `archive-get` from a test's S3 server needs.
    server_env: Vec<(String, String)>,
    /// The postmaster when we started it (so we reap it: no zombies).
    child: Mutex<Option<Child>>,
    child_pid: AtomicI32,
}

fn start_timeout() -> Duration {
    let secs = std::env::var("PGBOOKEND_TEST_START_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

fn mkdir_for_server(path: &Path, mode: u32) {
    std::fs::create_dir(path)
        .unwrap_or_else(|e| panic!("pgbookend-testkit: mkdir {}: {e}", path.display()));
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    chown_to_server(path);
}

/// Moves `pgdata/pg_wal` to `waldir` and links it there, as `initdb -X waldir` does.
fn separate_wal(pgdata: &Path, waldir: &Path) {
    let wal = pgdata.join("pg_wal");
    mkdir_for_server(waldir, 0o700);
    let entries = std::fs::read_dir(&wal)
        .unwrap_or_else(|e| panic!("pgbookend-testkit: list {}: {e}", wal.display()));
    for e in entries.flatten() {
        std::fs::rename(e.path(), waldir.join(e.file_name()))
            .unwrap_or_else(|x| panic!("pgbookend-testkit: move {}: {x}", e.path().display()));
    }
    std::fs::remove_dir(&wal)
        .unwrap_or_else(|e| panic!("pgbookend-testkit: rmdir {}: {e}", wal.display()));
    std::os::unix::fs::symlink(waldir, &wal)
        .unwrap_or_else(|e| panic!("pgbookend-testkit: link {}: {e}", wal.display()));
    if is_root() {
        if let Ok(acct) = crate::server_account() {
            let _ = std::os::unix::fs::lchown(&wal, Some(acct.uid), Some(acct.gid));
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Cluster {
    /// initdb (from a cached template) + configure + start a server per `opts`; panics with the
    /// server log when anything fails (the partial cluster is still cleaned up).
    pub fn start(opts: ClusterOptions) -> Cluster {
        let major = opts.major;
        let root = opts.base_in.as_deref().unwrap_or(tmp_root());
        let base = make_dir_in(root, &format!("c{major}")).unwrap_or_else(|e| {
            panic!(
                "pgbookend-testkit: cannot create a dir in {}: {e}",
                root.display()
            )
        });
        let mut c = Cluster {
            major,
            pgdata: base.join("data"),
            sock: base.join("sock"),
            port: free_port(),
            log: base.join("server.log"),
            aux: None,
            archive: opts.archive_dir.then(|| base.join("archive")),
            tablespace: opts.tablespace.then(|| base.join("ts1")),
            waldir: opts.separate_waldir.then(|| base.join("wal")),
            extra_args: Vec::new(),
            server_env: Vec::new(),
            child: Mutex::new(None),
            child_pid: AtomicI32::new(0),
            base,
        };
        // sun_path holds 108 bytes: "<sock>/.s.PGSQL.<port>" must fit.
        if c.sock.as_os_str().len() + ".s.PGSQL.65535".len() + 2 > 107 {
            panic!(
                "pgbookend-testkit: socket dir {} too long; use a shorter PGBOOKEND_TEST_TMPDIR",
                c.sock.display()
            );
        }
        if let Err(e) = template::make_pgdata(major, opts.data_checksums, &c.pgdata) {
            panic!("pgbookend-testkit: PostgreSQL {major}: {e}");
        }
        mkdir_for_server(&c.sock, 0o755);
        if let Some(a) = &c.archive {
            mkdir_for_server(a, 0o755);
        }
        if let Some(t) = &c.tablespace {
            mkdir_for_server(t, 0o700);
        }
        if let Some(w) = &c.waldir {
            separate_wal(&c.pgdata, w);
        }
        c.write_config(&opts);

        let mut attempts = 0;
        loop {
            attempts += 1;
            match c.spawn() {
                Ok(()) => break,
                Err(e)
                    if opts.tcp
                        && attempts < 5
                        && (e.contains("could not bind") || e.contains("already in use")) =>
                {
                    // Someone took the port between our probe and the server's bind.
                    c.port = free_port();
                    c.append_conf(&format!("port = {}", c.port));
                }
                Err(e) => panic!(
                    "pgbookend-testkit: PostgreSQL {major} failed to start in {}:\n{e}",
                    c.base.display()
                ),
            }
        }
        if let Some(t) = &c.tablespace {
            c.psql(&format!("CREATE TABLESPACE ts1 LOCATION '{}'", t.display()));
        }
        c
    }

    /// Adopts an existing data directory (e.g. a restored copy) without writing anything or
    /// starting it; [`Cluster::start_again`] starts it on a new socket dir and port given as
    /// `-c` options. Drop stops it and removes `base` (and the harness's socket/log dir).
    pub fn from_existing(major: u32, pgdata: PathBuf, base: PathBuf) -> Cluster {
        let aux = make_dir(&format!("x{major}")).unwrap_or_else(|e| {
            panic!(
                "pgbookend-testkit: cannot create a dir in {}: {e}",
                tmp_root().display()
            )
        });
        let sock = aux.join("sock");
        let port = free_port();
        let extra_args = vec![
            "-c".to_string(),
            format!("port={port}"),
            "-c".to_string(),
            format!("unix_socket_directories={}", sock.display()),
            "-c".to_string(),
            "listen_addresses=".to_string(),
        ];
        let c = Cluster {
            major,
            base,
            pgdata,
            sock,
            port,
            log: aux.join("server.log"),
            aux: Some(aux),
            archive: None,
            tablespace: None,
            waldir: None,
            extra_args,
            server_env: Vec::new(),
            child: Mutex::new(None),
            child_pid: AtomicI32::new(0),
        };
        mkdir_for_server(&c.sock, 0o755);
        c
    }

    fn write_config(&self, opts: &ClusterOptions) {
        let listen = if opts.tcp { "127.0.0.1" } else { "" };
        let mut lines = vec![
            String::new(),
            "# added by pgbookend-testkit".to_string(),
            format!("port = {}", self.port),
            format!("listen_addresses = '{listen}'"),
            format!("unix_socket_directories = '{}'", self.sock.display()),
            "fsync = off".to_string(),
            "shared_buffers = 16MB".to_string(),
            "huge_pages = off".to_string(),
            "wal_level = replica".to_string(),
            "max_wal_senders = 10".to_string(),
            "max_replication_slots = 10".to_string(),
            "logging_collector = off".to_string(),
            "log_destination = 'stderr'".to_string(),
            "log_line_prefix = '%m [%p] '".to_string(),
        ];
        if let Some(a) = &self.archive {
            let a = a.display();
            lines.push("archive_mode = on".to_string());
            lines.push(format!(
                "archive_command = 'test ! -f {a}/%f && cp %p {a}/%f'"
            ));
        }
        lines.extend(opts.conf.iter().cloned());
        for line in lines {
            self.append_conf(&line);
        }
        if !opts.hba.is_empty() {
            let hba = self.pgdata.join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba).unwrap_or_default();
            let new = format!("{}\n{old}", opts.hba.join("\n"));
            std::fs::write(&hba, new)
                .unwrap_or_else(|e| panic!("pgbookend-testkit: {}: {e}", hba.display()));
        }
    }

    /// Starts postgres as our child (logging to the server log, as `pg_ctl -l` would) and waits
    /// until postmaster.pid says ready/standby, like `pg_ctl start -w` but polling faster.
    fn spawn(&self) -> Result<(), String> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = guard.as_mut() {
            if let Ok(None) = child.try_wait() {
                return Err(format!("server already running (pid {})", child.id()));
            }
            *guard = None;
            self.child_pid.store(0, Ordering::SeqCst);
        }
        if let Some(pid) = self.postmaster_pid() {
            return Err(format!(
                "a postmaster (pid {pid}) already runs in {}",
                self.pgdata.display()
            ));
        }
        let bin = server_bin(self.major, "postgres");
        if !bin.exists() {
            return Err(format!(
                "{} does not exist: run scripts/install-deps (or set PGBOOKEND_PG_DIR)",
                bin.display()
            ));
        }
        let existed = self.log.exists();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        if !existed {
            chown_to_server(&self.log);
        }
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-D")
            .arg(&self.pgdata)
            .args(&self.extra_args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        scrub_pg_env(&mut cmd);
        cmd.envs(self.server_env.iter().map(|(k, v)| (k, v)));
        run_as_server_user(&mut cmd);
        let child =
            spawn_tied_to_process(cmd).map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let pid = child.id() as i32;
        self.child_pid.store(pid, Ordering::SeqCst);
        let child = guard.insert(child);

        let deadline = Instant::now() + start_timeout();
        let mut pause = Duration::from_millis(2);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    *guard = None;
                    self.child_pid.store(0, Ordering::SeqCst);
                    return Err(format!(
                        "postgres exited during startup ({status}); server log:\n{}",
                        self.log_since(offset)
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for postgres: {e}")),
            }
            if let Some((p, status)) = self.pidfile() {
                if p == pid && (status == "ready" || status == "standby") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "postgres (pid {pid}) not ready after {:?} (left running); server log:\n{}",
                    start_timeout(),
                    self.log_since(offset)
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// (pid, status) from postmaster.pid.
    fn pidfile(&self) -> Option<(i32, String)> {
        let text = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let status = lines.nth(6).unwrap_or("").trim().to_string();
        Some((pid, status))
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.seek(SeekFrom::Start(offset));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        tail(&text, 100)
    }

    /// The PostgreSQL major this cluster runs.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The private base directory (removed on Drop).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The data directory (PGDATA).
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The Unix socket directory (PGHOST).
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    /// The port (PGPORT; also the TCP port on 127.0.0.1 when the options asked for TCP).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log (stderr of every start of this server).
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Where `archive_command` copies WAL, when the options asked for archiving.
    pub fn archive_dir(&self) -> Option<PathBuf> {
        self.archive.clone()
    }

    /// The separate WAL directory `pg_wal` links to, when the options asked for one.
    pub fn waldir(&self) -> Option<PathBuf> {
        self.waldir.clone()
    }

    /// The location of tablespace `ts1`, when the options asked for a tablespace.
    pub fn tablespace_dir(&self) -> Option<PathBuf> {
        self.tablespace.clone()
    }

    /// What a libpq client needs to reach this server: PGHOST (socket dir), PGPORT, PGUSER,
    /// PGDATABASE.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.sock.display().to_string()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
        ]
    }

    /// A libpq connection string for this server (over the Unix socket).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.sock.display(),
            self.port
        )
    }

    fn client(&self, name: &str) -> Command {
        let mut cmd = Command::new(client_bin(name));
        scrub_pg_env(&mut cmd);
        run_as_server_user(&mut cmd);
        cmd.current_dir("/")
            .env("PGHOST", &self.sock)
            .env("PGPORT", self.port.to_string())
            .env("PGCONNECT_TIMEOUT", "30")
            .env("PGPASSFILE", "/nonexistent/pgbookend-testkit/pgpass");
        cmd
    }

    fn psql_command(&self, user: &str) -> Command {
        let mut cmd = self.client("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
            .args(["-U", user, "-d", "postgres", "-f", "-"]);
        cmd
    }

    /// Runs `sql` (any number of statements and psql meta-commands) with
    /// `psql -X -v ON_ERROR_STOP=1 -At` as `postgres`; returns the trimmed output; panics with
    /// psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "psql failed on PostgreSQL {} ({}): {e}\nSQL: {sql}",
                self.major,
                self.base.display()
            )
        })
    }

    /// Like [`Cluster::psql`], but returns psql's stderr as the error instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        run_with_stdin(self.psql_command("postgres"), sql)
    }

    /// Runs `sql` as `user`, with `password` given only through `PGPASSWORD` (never argv, never
    /// a prompt: `-w`), for authentication and privilege tests.
    pub fn psql_as(&self, user: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
        let mut cmd = self.psql_command(user);
        if let Some(pw) = password {
            cmd.env("PGPASSWORD", pw);
        }
        run_with_stdin(cmd, sql)
    }

    /// `pgbench -i -s scale` into the `postgres` database; panics on failure.
    pub fn pgbench_init(&self, scale: u32) {
        let out = self
            .client("pgbench")
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run pgbench: {e}"));
        if !out.status.success() {
            panic!(
                "pgbench -i failed on PostgreSQL {} ({}): {}{}",
                self.major,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts `pgbench -n -T seconds -c clients` in the background (load during a backup); the
    /// returned [`Pgbench`] kills it when dropped.
    pub fn pgbench_background(&self, clients: u32, seconds: u32) -> Pgbench {
        let child = self
            .client("pgbench")
            .args(["-n", "-T", &seconds.to_string(), "-c", &clients.to_string()])
            .args(["-U", "postgres", "postgres"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run pgbench: {e}"));
        Pgbench {
            pid: child.id() as i32,
            child: Some(child),
        }
    }

    /// Whether the pgbench tables are consistent: sum(abalance) over accounts = sum(bbalance)
    /// over branches = sum(tbalance) over tellers = sum(delta) over history (in one snapshot).
    /// Every pgbench transaction keeps this, so a restore that lost or tore data breaks it.
    pub fn pgbench_invariant_ok(&self) -> bool {
        self.psql(
            "SELECT a = b AND b = t AND t = h FROM \
               (SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) AS a, \
                       (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) AS b, \
                       (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers) AS t, \
                       (SELECT coalesce(sum(delta), 0) FROM pgbench_history) AS h) s",
        ) == "t"
    }

    /// Stops (fast) and starts the server again, like `pg_ctl restart -m fast`; panics with the
    /// log if it does not come back.
    pub fn restart(&self) {
        self.stop_mode("fast");
        if let Err(e) = self.start_again() {
            panic!(
                "pgbookend-testkit: PostgreSQL {} did not restart in {}:\n{e}",
                self.major,
                self.base.display()
            );
        }
    }

    /// Stops the server with a fast shutdown and waits; does nothing when it is not running.
    pub fn stop(&self) {
        self.stop_mode("fast");
    }

    /// Stops the server like `pg_ctl stop -m mode` (`smart`, `fast` or `immediate`) and waits
    /// up to 60 s; does nothing when not running; panics with the log if it does not stop.
    pub fn stop_mode(&self, mode: &str) {
        let sig = match mode {
            "smart" | "s" => libc::SIGTERM,
            "fast" | "f" => libc::SIGINT,
            "immediate" | "i" => libc::SIGQUIT,
            other => panic!("pgbookend-testkit: unknown shutdown mode {other:?}"),
        };
        let Some(pid) = self.postmaster_pid() else {
            self.reap_child();
            return;
        };
        signal(pid, sig);
        if !self.wait_postmaster_exit(pid, Duration::from_secs(60)) {
            panic!(
                "pgbookend-testkit: PostgreSQL {} (pid {pid}) did not stop ({mode}) within 60 s:\n{}",
                self.major,
                tail(&self.server_log(), 60)
            );
        }
    }

    /// Adds `key=value` to the server's environment from its next start on.
    pub fn with_server_env(mut self, key: &str, value: &str) -> Self {
        self.server_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts an already initialised data dir (after [`Cluster::stop`], [`Cluster::kill9`], or
    /// for [`Cluster::from_existing`]) and waits until it accepts connections (or is a hot
    /// standby); `Err(log tail)` when the server refuses to start.
    pub fn start_again(&self) -> Result<(), String> {
        self.spawn()
    }

    /// Whether a postmaster runs for this data dir.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Simulates a crash: SIGKILL to the postmaster; then waits until its children have noticed
    /// and exited (SIGKILLing stragglers), so that [`Cluster::start_again`] can run crash
    /// recovery. Panics when the server is not running.
    pub fn kill9(&self) {
        let pid = self
            .postmaster_pid()
            .unwrap_or_else(|| panic!("pgbookend-testkit: kill9: server not running"));
        let kids = descendants(pid);
        signal(pid, libc::SIGKILL);
        self.wait_postmaster_exit(pid, Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(5);
        for k in &kids {
            let left = deadline.saturating_duration_since(Instant::now());
            if !procfs::wait_gone(k.pid, left) && alive_same(k.pid, k.start) {
                signal(k.pid, libc::SIGKILL);
            }
        }
        for k in &kids {
            procfs::wait_gone(k.pid, Duration::from_secs(2));
        }
    }

    /// The live postmaster's pid: from postmaster.pid when that process really is a postmaster
    /// of this data dir, else the server we started if it still runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        if let Some((pid, _)) = self.pidfile() {
            if procfs::is_postmaster_of(pid, &self.pgdata) {
                return Some(pid);
            }
        }
        let pid = self.child_pid.load(Ordering::SeqCst);
        (pid > 0 && alive(pid)).then_some(pid)
    }

    /// The whole server log so far.
    pub fn server_log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Polls the server log until it contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.server_log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Appends one line to `postgresql.conf` (takes effect at [`Cluster::reload`] or restart).
    pub fn append_conf(&self, line: &str) {
        let path = self.pgdata.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("pgbookend-testkit: {}: {e}", path.display()));
        writeln!(f, "{line}")
            .unwrap_or_else(|e| panic!("pgbookend-testkit: {}: {e}", path.display()));
    }

    /// Reloads the configuration (SIGHUP) and, when the server accepts connections, waits until
    /// the postmaster has re-read it (`pg_conf_load_time()` changed), up to 10 s.
    pub fn reload(&self) {
        let q = "SELECT pg_conf_load_time()";
        let before = self.try_psql(q).ok();
        let pid = self
            .postmaster_pid()
            .unwrap_or_else(|| panic!("pgbookend-testkit: reload: server not running"));
        signal(pid, libc::SIGHUP);
        if let Some(before) = before {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(self.try_psql(q), Ok(now) if now != before) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The database system identifier, read from `global/pg_control` (its first field in every
    /// major); unique per cluster started by [`Cluster::start`].
    pub fn system_identifier(&self) -> u64 {
        let path = self.pgdata.join("global/pg_control");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("pgbookend-testkit: {}: {e}", path.display()));
        let first: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_else(|| panic!("pgbookend-testkit: {} too short", path.display()));
        u64::from_le_bytes(first)
    }

    /// Makes `cmd` run as the owner of the data dir when we are root (no-op otherwise), for
    /// commands that must read or write it (tar, cp, rsync of a live data dir).
    pub fn run_as_owner<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if !is_root() {
            return cmd;
        }
        let owner = std::fs::metadata(&self.pgdata)
            .ok()
            .map(|m| (m.uid(), m.gid()));
        match (owner, server_account()) {
            (Some((uid, _)), Ok(acct)) if uid == acct.uid => run_as_server_user(cmd),
            (Some((0, _)), _) => cmd,
            (Some((uid, gid)), _) => {
                use std::os::unix::process::CommandExt;
                cmd.uid(uid).gid(gid)
            }
            (None, _) => run_as_server_user(cmd),
        }
    }

    /// Waits until `pid` exited (reaping it when it is our child).
    fn wait_postmaster_exit(&self, pid: i32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut ours_running = false;
            if self.child_pid.load(Ordering::SeqCst) == pid {
                let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(child) = guard.as_mut() {
                    if matches!(child.try_wait(), Ok(None)) {
                        ours_running = true;
                    } else {
                        *guard = None;
                        self.child_pid.store(0, Ordering::SeqCst);
                    }
                }
            }
            if !ours_running && !alive(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Reaps our child if it has exited.
    fn reap_child(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = guard.as_mut() {
            if !matches!(child.try_wait(), Ok(None)) {
                *guard = None;
                self.child_pid.store(0, Ordering::SeqCst);
            }
        }
    }

    /// Immediate shutdown of everything, escalating to SIGKILL; never panics.
    fn shut_down_hard(&self) {
        let mut pms = Vec::new();
        if let Some(pid) = self.postmaster_pid() {
            pms.push(pid);
        }
        let own = self.child_pid.load(Ordering::SeqCst);
        if own > 0 && alive(own) && !pms.contains(&own) {
            pms.push(own);
        }
        for pm in pms {
            let kids = descendants(pm);
            signal(pm, libc::SIGQUIT); // what pg_ctl stop -m immediate sends
            if !self.wait_postmaster_exit(pm, Duration::from_secs(5)) {
                signal(pm, libc::SIGKILL);
                self.wait_postmaster_exit(pm, Duration::from_secs(5));
            }
            for k in &kids {
                if alive_same(k.pid, k.start) {
                    signal(k.pid, libc::SIGKILL);
                }
            }
            for k in &kids {
                procfs::wait_gone(k.pid, Duration::from_secs(2));
            }
        }
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.child_pid.store(0, Ordering::SeqCst);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shut_down_hard();
        crate::shmem::cleanup_stale(&self.pgdata);
        if keep_dirs() {
            eprintln!("pgbookend-testkit: keeping {}", self.base.display());
            return;
        }
        remove_tree(&self.base);
        if let Some(aux) = &self.aux {
            remove_tree(aux);
        }
    }
}

/// Spawns a server that shuts down (SIGQUIT, an immediate shutdown) when the test process
/// dies, even by SIGKILL or abort, so a killed test never leaves a server running.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, and test threads end
/// all the time (a cluster may outlive the test thread that started it, e.g. in a static), so
/// every server is forked by one spawner thread that lives as long as the process.
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    use std::sync::OnceLock;
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();

    // SAFETY: the closure only calls async-signal-safe prctl between fork and exec. It runs
    // after std switched uid/gid, which would otherwise clear the setting.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("pgbookend-testkit-spawner".into())
            .spawn(move || {
                // The sender lives in a static: this loop ends only with the process.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(spawner) = spawner else {
        return cmd.spawn(); // no thread: still works, without the tie
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}

/// Runs `cmd` with `input` on stdin; Ok(trimmed stdout) on success, Err(stderr) otherwise.
fn run_with_stdin(mut cmd: Command, input: &str) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let input = input.to_string();
    // A separate writer: large input and large output must not deadlock on full pipes.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if err.is_empty() {
            format!(
                "{} exited with {}",
                cmd.get_program().to_string_lossy(),
                out.status
            )
        } else {
            err
        })
    }
}

/// A pgbench run in the background (see [`Cluster::pgbench_background`]); killed on Drop so a
/// failing test never leaves load running.
#[derive(Debug)]
pub struct Pgbench {
    pid: i32,
    child: Option<Child>,
}

impl Pgbench {
    /// The pgbench process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for pgbench to finish; Ok(its stdout, the summary) on success, Err(stdout +
    /// stderr) when it failed (e.g. clients aborted because the server went away).
    pub fn wait(mut self) -> Result<String, String> {
        let child = self.child.take().ok_or("pgbench already reaped")?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "pgbench failed ({}):\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
