//! Shared helpers for the end-to-end tests: run the real `pgbookend` binary against real
//! clusters the way a backup program's hooks would, and clean up every agent started.

pub mod schema;
pub mod tree;

use pgbookend_testkit::{Cluster, ClusterOptions, TempDir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgbookend"))
}

/// What one invocation of pgbookend did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "pgbookend failed: {self:?}");
        self
    }
    /// stdout and stderr together, for "appears nowhere" checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(128 + 9),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A pgbookend "installation" for one test: its own run directory and store, the
/// cluster's connection environment, and the duty to kill every agent it started.
pub struct Tool {
    pub run_dir: TempDir,
    pub store: TempDir,
    pub env: Vec<(String, String)>,
}

impl Tool {
    pub fn new(cluster: &Cluster) -> Tool {
        let run_dir = pgbookend_testkit::temp_dir("run");
        let store = pgbookend_testkit::temp_dir("store");
        let mut env = cluster.env();
        env.push((
            "PGBOOKEND_RUN_DIR".into(),
            run_dir.path().join("r").display().to_string(),
        ));
        // Live records (see live.rs) go to this test's own state directory, not the host's.
        env.push((
            "PGBOOKEND_STATE_DIR".into(),
            run_dir.path().join("state").display().to_string(),
        ));
        Tool {
            run_dir,
            store,
            env,
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.run_dir.path().join("r")
    }

    pub fn store_path(&self) -> &Path {
        self.store.path()
    }

    /// A command for pgbookend with this tool's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.env_remove("PGBOOKEND_CONFIG");
        c
    }

    /// Runs pgbookend; a `--json` output is checked against its published schema.
    pub fn run(&self, args: &[&str]) -> Run {
        let r: Run = self.cmd(args).output().expect("run pgbookend").into();
        schema::check_output(args, &r.stdout);
        r
    }

    /// `start --id ID --store STORE --json` plus extra args.
    pub fn start(&self, id: &str, extra: &[&str]) -> Run {
        let store = self.store.path().display().to_string();
        let mut args = vec!["start", "--id", id, "--store", &store, "--json"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    pub fn stop(&self, id: &str, extra: &[&str]) -> Run {
        let mut args = vec!["stop", "--id", id, "--json"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    pub fn status(&self, id: &str) -> Run {
        self.run(&["status", "--id", id, "--json"])
    }

    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.store.path().join(id)
    }

    /// The agent pid recorded for a backup.
    pub fn agent_pid(&self, id: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.run_dir().join(id).join("state.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["agent_pid"].as_i64().map(|p| p as i32)
    }

    /// Every agent pid this tool's run directory knows.
    fn all_agent_pids(&self) -> Vec<i32> {
        let Ok(rd) = std::fs::read_dir(self.run_dir()) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|id| self.agent_pid(&id))
            .collect()
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        for pid in self.all_agent_pids() {
            if is_our_agent(pid) {
                // SAFETY: plain kill of a process we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// True if `pid` is alive and is a pgbookend agent (guards against pid reuse).
pub fn is_our_agent(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("__agent"))
        .unwrap_or(false)
        && !is_zombie(pid)
}

pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(true)
}

/// The live (not zombie) processes for which `keep(cmdline, cwd)` is true. This scans
/// every process of the machine, and the tests run side by side in one process, so `keep`
/// must match only what its own test started (a path of that test's own in the command
/// line or working directory), never a program name alone.
pub fn processes(mut keep: impl FnMut(&[u8], &Path) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if keep(&cmdline, &cwd) && !is_zombie(pid) {
            out.push(pid);
        }
    }
    out
}

/// Waits until `f` is true or the timeout passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// tar of the data directory as the cluster owner, the way a backup program copies it.
pub fn tar_pgdata(cluster: &Cluster, dest: &Path) {
    let mut cmd = Command::new("tar");
    cmd.arg("-cf")
        .arg(dest)
        .arg("-C")
        .arg(cluster.pgdata())
        .arg(".");
    let out = cmd.output().expect("tar");
    // tar exits 1 when files change while read: expected under load.
    assert!(
        out.status.code().unwrap_or(2) <= 1,
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The text of the server's backup history file for a start WAL file, from the cluster's
/// WAL archive (with archiving off the server deletes it from pg_wal at once).
pub fn history_file(cluster: &Cluster, start_wal_file: &str) -> Option<String> {
    let archive = cluster.archive_dir()?;
    for _ in 0..100 {
        let found = std::fs::read_dir(&archive)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(start_wal_file) && n.ends_with(".backup"));
        if let Some(n) = found {
            return std::fs::read_to_string(archive.join(n)).ok();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// `cp -a SRC DEST` of a directory a running server may be changing. The server removes
/// and renames files while cp walks (`archive_status/*.ready` becoming `.done`, temporary
/// and dropped files), so a file cp listed can be gone when it opens it: expected of a copy
/// taken during a backup (the bundle's file list judges it at restore time). Such "No such
/// file or directory" errors are tolerated; any other error is cp's failure.
pub fn cp_live(
    src: impl AsRef<Path>,
    dest: impl AsRef<Path>,
) -> std::io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let out = Command::new("cp")
        .arg("-a")
        .arg(src.as_ref())
        .arg(dest.as_ref())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let only_vanished = stderr
        .lines()
        .all(|l| l.ends_with("No such file or directory"));
    if !out.status.success() && only_vanished && !stderr.trim().is_empty() {
        eprintln!("cp -a: files vanished during the copy (tolerated):\n{stderr}");
        return Ok(std::process::ExitStatus::from_raw(0));
    }
    if !out.status.success() {
        eprintln!("cp -a failed:\n{stderr}");
    }
    Ok(out.status)
}

/// Generates one `#[test]` per supported major (the list of
/// `pgbookend_formats::for_each_supported_major!`) that calls `$body(major)`.
macro_rules! per_major {
    ($name:ident, $body:ident) => {
        pgbookend_formats::for_each_supported_major!(per_major_tests, $name, $body);
    };
}

/// The body of [`per_major!`]: a module `$name` with a test `pgNN` per major.
macro_rules! per_major_tests {
    ($name:ident, $body:ident ; $(($n:literal $pg:ident))*) => {
        mod $name {
            $(
                #[test]
                fn $pg() {
                    $crate::common::run_for($n, super::$body)
                }
            )*
        }
    };
}

/// Runs a per-major body unless PGBOOKEND_TEST_MAJORS leaves that major out.
pub fn run_for(major: u32, body: fn(u32)) {
    if !pgbookend_testkit::majors().contains(&major) {
        eprintln!("PostgreSQL {major} left out by PGBOOKEND_TEST_MAJORS");
        return;
    }
    body(major)
}

/// The major of a test that runs on one major only: the newest that PGBOOKEND_TEST_MAJORS
/// leaves in, or None (the test is then skipped) when it leaves none.
pub fn newest_major() -> Option<u32> {
    let major = pgbookend_testkit::majors().last().copied();
    if major.is_none() {
        eprintln!("every PostgreSQL major left out by PGBOOKEND_TEST_MAJORS");
    }
    major
}

/// Starts a prepared (or rescued) copy and waits until its recovery has finished.
pub fn start_restored(major: u32, data: &Path, work: &Path) -> Cluster {
    let r = Cluster::from_existing(major, data.to_path_buf(), work.to_path_buf());
    r.start_again()
        .unwrap_or_else(|log| panic!("the prepared copy did not start:\n{log}"));
    wait_recovered(&r);
    r
}

/// Waits until a started restore has finished recovery (or failed to).
#[track_caller]
pub fn wait_recovered(r: &Cluster) {
    assert!(
        wait_until(Duration::from_secs(60), || r
            .try_psql("SELECT pg_is_in_recovery()")
            .as_deref()
            == Ok("f")),
        "recovery did not finish:\n{}",
        r.server_log()
    );
}

/// A streaming standby of `primary`: a copy of its cleanly stopped data directory with
/// standby.signal and primary_conninfo, started by the harness.
pub fn make_standby(primary: &Cluster) -> Cluster {
    primary.stop();
    let base = pgbookend_testkit::temp_dir("standby").keep();
    let data = base.join("data");
    let st = cp_live(primary.pgdata(), &data).unwrap();
    assert!(st.success());
    primary.start_again().expect("primary restarts");
    let conninfo = format!(
        "host={} port={} user=postgres application_name=standby",
        primary.socket_dir().display(),
        primary.port()
    );
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut conf,
        format!("\nprimary_conninfo = '{conninfo}'\nhot_standby = on\n").as_bytes(),
    )
    .unwrap();
    std::fs::write(data.join("standby.signal"), b"").unwrap();
    if let Some((_, uid, gid)) = pgbookend_testkit::server_user() {
        std::os::unix::fs::chown(data.join("standby.signal"), Some(uid), Some(gid)).unwrap();
    }
    let standby = Cluster::from_existing(primary.major(), data, base);
    standby.start_again().expect("standby starts");
    assert!(
        wait_until(Duration::from_secs(30), || standby
            .try_psql("SELECT pg_is_in_recovery()")
            .as_deref()
            == Ok("t")),
        "standby in recovery"
    );
    standby
}

/// XORs the byte at `at` of `path` with `mask` in place (fsynced); returns its old value.
pub fn flip_byte(path: &Path, at: u64, mask: u8) -> u8 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ mask], at).unwrap();
    f.sync_all().unwrap();
    b[0]
}

/// A cluster with data checksums, an archive directory and a tablespace `ts1` holding
/// table `in_ts` (5000 rows), loaded with pgbench scale 1; and the tablespace's OID.
pub fn tablespace_cluster(major: u32) -> (Cluster, u32) {
    let c = Cluster::start(
        ClusterOptions::new(major)
            .data_checksums(true)
            .tablespace(true)
            .archive_dir(true),
    );
    c.pgbench_init(1);
    c.psql("CREATE TABLE in_ts (i int PRIMARY KEY, t text) TABLESPACE ts1; INSERT INTO in_ts SELECT g, 'x' FROM generate_series(1, 5000) g");
    let ts_oid: u32 = c
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")
        .parse()
        .unwrap();
    (c, ts_oid)
}

/// A size-limited tmpfs mounted on a temporary directory for one test (a store or a
/// restore target that fills up); unmounted on drop, also when the test fails. Needs root.
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax: `64k`, `20m`, bytes).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = pgbookend_testkit::temp_dir("tmpfs");
        let t = Tmpfs { dir };
        t.mount_cmd(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
        ]);
        t
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the file system another size (room comes back, or runs out).
    pub fn resize(&self, size: &str) {
        self.mount_cmd(&["-o", &format!("remount,size={size}")]);
    }

    fn mount_cmd(&self, args: &[&str]) {
        let st = Command::new("mount")
            .args(args)
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount {args:?} (the tests run as root)");
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        let c = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: plain data filled by the kernel.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and buffer.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(ok, Ok(s) if s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
