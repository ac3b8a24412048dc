//! pgbookend-testkit: starts real PostgreSQL clusters (13–18) in private temporary directories for tests and benchmarks.
//!
//! Every cluster gets its own base directory `pgbookend-test.*` in [`tmp_root`] (data dir, socket
//! dir, server log), its own port and its own system identifier, so tests of any major can run
//! in parallel threads and in several test binaries at once. Everything a test starts is
//! stopped and removed on `Drop`, also while a panic unwinds; [`reap_leftovers`] sweeps what a
//! killed test process could not clean.
//!
//! When the test process is root, the servers and the client tools run as the `postgres` user
//! (initdb and postgres refuse root); otherwise they run as the current user.
//!
//! ```no_run
//! use pgbookend_testkit::{majors, Cluster, ClusterOptions};
//!
//! for major in majors() {
//!     let c = Cluster::start(ClusterOptions::new(major).archive_dir(true));
//!     c.pgbench_init(1);
//!     let load = c.pgbench_background(2, 3);
//!     // ... run pgbookend with c.env() ...
//!     load.wait().unwrap();
//!     assert!(c.pgbench_invariant_ok());
//! } // stopped and removed here, also when the test panics
//! ```
//!
//! Speed: initdb runs once per (major, checksums) into a template cache
//! (`<tmp_root>/pgbookend-test.tpl-*`, shared by all test processes); each cluster is a copy of
//! it with a fresh system identifier, so a start takes ~70 ms instead of ~1 s.
//!
//! Environment:
//! - `PGBOOKEND_PG_DIR`: server builds root (see [`pg_dir`]); `PGBOOKEND_PG_CLIENT_BIN`: client
//!   tools directory (see [`client_bin`]).
//! - `PGBOOKEND_TEST_MAJORS=13,18`: restrict [`majors`].
//! - `PGBOOKEND_TEST_TMPDIR`: where harness directories go (see [`tmp_root`]).
//! - `PGBOOKEND_TEST_SERVER_USER`: the account servers run as when root (default `postgres`).
//! - `PGBOOKEND_TEST_NO_TEMPLATE=1`: run initdb for every cluster.
//! - `PGBOOKEND_TEST_KEEP=1`: keep directories after Drop (servers are still stopped).
//! - `PGBOOKEND_TEST_START_TIMEOUT`: seconds to wait for a server to be ready (default 120).

mod cluster;
mod loopfs;
mod procfs;
mod reap;
mod s3server;
mod shmem;
mod tempdir;
mod template;

use std::ffi::{CStr, CString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use cluster::{Cluster, ClusterOptions, Pgbench};
pub use loopfs::LoopFs;
pub use procfs::PidGuard;
pub use reap::{reap_leftovers, Reaped};
pub use s3server::{moto_server_bin, Gate, S3Server};
pub use tempdir::{temp_dir, TempDir};

/// The PostgreSQL majors pgbookend supports; tests iterate over them (see [`majors`]).
/// The one list lives in `pgbookend_formats::version`.
pub const MAJORS: [u32; pgbookend_formats::version::SUPPORTED_MAJORS.len()] =
    pgbookend_formats::version::SUPPORTED_MAJORS;

/// Name prefix of every harness directory in [`tmp_root`]; [`reap_leftovers`] looks for it.
pub(crate) const DIR_PREFIX: &str = "pgbookend-test.";

/// RAM-backed directory preferred for harness dirs, when it exists with enough room.
const SHM_DIR: &str = "/dev/shm";
/// Free space /dev/shm must have to be used (CI containers often give it only 64 MB).
const SHM_MIN_FREE: u64 = 4 << 30;

/// Where cluster base dirs, [`TempDir`]s and the template cache live:
/// `$PGBOOKEND_TEST_TMPDIR` if set; else `/dev/shm` when it has at least 4 GiB free (creating
/// a data dir's ~1000 files there is ~20x faster than on this VM's ext4 /tmp); else `/tmp`.
/// Keep it short: socket paths must stay below 108 bytes.
pub fn tmp_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PGBOOKEND_TEST_TMPDIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if free_bytes(Path::new(SHM_DIR)).is_some_and(|free| free >= SHM_MIN_FREE) {
            PathBuf::from(SHM_DIR)
        } else {
            PathBuf::from("/tmp")
        }
    })
}

/// Every directory harness dirs may be in (for the sweep).
pub(crate) fn tmp_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/tmp"), PathBuf::from(SHM_DIR)];
    let chosen = tmp_root().to_path_buf();
    if !roots.contains(&chosen) {
        roots.push(chosen);
    }
    roots
}

/// Free bytes for unprivileged users in the filesystem of `dir`, if it is a writable directory.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data, filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st is a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The majors to test: [`MAJORS`], restricted by `PGBOOKEND_TEST_MAJORS="13,18"` when set, so a
/// developer or a CI job can run a subset.
pub fn majors() -> Vec<u32> {
    majors_from(&std::env::var("PGBOOKEND_TEST_MAJORS").unwrap_or_default())
}

/// [`MAJORS`] filtered by a list like "13,18" (empty: all).
fn majors_from(spec: &str) -> Vec<u32> {
    let wanted: Vec<u32> = spec
        .split([',', ' '])
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    MAJORS
        .iter()
        .copied()
        .filter(|m| wanted.is_empty() || wanted.contains(m))
        .collect()
}

/// Root of the server builds installed by `scripts/install-deps` (`<dir>/<major>/bin`):
/// `$PGBOOKEND_PG_DIR`, else `/var/cache/pgbookend/pg` as root, else `~/.cache/pgbookend/pg`.
pub fn pg_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGBOOKEND_PG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if is_root() {
        PathBuf::from("/var/cache/pgbookend/pg")
    } else {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".cache/pgbookend/pg")
    }
}

/// A server-side program (`initdb`, `pg_ctl`, `postgres`) of one major; only these three exist
/// for every major, so anything else must come from [`client_bin`].
pub fn server_bin(major: u32, name: &str) -> PathBuf {
    pg_dir().join(major.to_string()).join("bin").join(name)
}

/// A client program (`psql`, `pgbench`, `pg_controldata`, `pg_waldump`, ...): the PostgreSQL 15
/// tools, which work against servers 13–18; the directory is overridable with
/// `PGBOOKEND_PG_CLIENT_BIN`.
pub fn client_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PGBOOKEND_PG_CLIENT_BIN")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    dir.join(name)
}

/// Whether the test process is root, in which case servers and tools run as [`server_user`].
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The unprivileged user servers run as when the tests run as root: `(name, uid, gid)` of
/// `postgres` (or `$PGBOOKEND_TEST_SERVER_USER`); `None` when not root (servers run as us).
/// Panics when root and that user does not exist, since no server could start.
pub fn server_user() -> Option<(String, u32, u32)> {
    if !is_root() {
        return None;
    }
    let user = server_account().unwrap_or_else(|e| panic!("{e}"));
    Some((user.name.clone(), user.uid, user.gid))
}

/// The account the servers run as, with its home directory.
pub(crate) struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks the server account up once per process.
pub(crate) fn server_account() -> Result<&'static Account, String> {
    static ACCOUNT: OnceLock<Result<Account, String>> = OnceLock::new();
    ACCOUNT
        .get_or_init(|| {
            let name = std::env::var("PGBOOKEND_TEST_SERVER_USER")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "postgres".to_string());
            lookup_user(&name).ok_or_else(|| {
                format!(
                    "pgbookend-testkit: running as root, but user {name:?} does not exist; \
                     PostgreSQL refuses to run as root (install Debian's postgresql package or set \
                     PGBOOKEND_TEST_SERVER_USER)"
                )
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn lookup_user(name: &str) -> Option<Account> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: passwd is plain old data; getpwnam_r fills it with pointers into buf.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the given lengths.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: pw_dir points into buf, NUL-terminated, when getpwnam_r succeeded.
    let home = unsafe { CStr::from_ptr(pwd.pw_dir) };
    Some(Account {
        name: name.to_string(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: PathBuf::from(home.to_string_lossy().into_owned()),
    })
}

/// Makes `cmd` run as [`server_user`] when we are root (no-op otherwise), with that user's
/// `HOME`/`USER`/`LOGNAME`, for any command that must own or read server files.
pub fn run_as_server_user(cmd: &mut Command) -> &mut Command {
    if is_root() {
        let acct = server_account().unwrap_or_else(|e| panic!("{e}"));
        cmd.uid(acct.uid)
            .gid(acct.gid)
            .env("HOME", &acct.home)
            .env("USER", &acct.name)
            .env("LOGNAME", &acct.name);
    }
    cmd
}

/// Removes libpq/server environment variables inherited from the test environment, so a
/// developer's `PGHOST`, `PGPASSWORD` or `PGOPTIONS` cannot leak into harness commands.
pub(crate) fn scrub_pg_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str() {
            if k.starts_with("PG") && !k.starts_with("PGBOOKEND_") {
                cmd.env_remove(k);
            }
        }
    }
    cmd
}

/// Hands `path` to the server user when root (no-op otherwise); errors are ignored because a
/// later step reports a clearer one.
pub(crate) fn chown_to_server(path: &std::path::Path) {
    if !is_root() {
        return;
    }
    if let Ok(acct) = server_account() {
        let _ = std::os::unix::fs::chown(path, Some(acct.uid), Some(acct.gid));
    }
}

/// Finds a TCP port on 127.0.0.1 that is free right now and not handed out before by this
/// process, for servers (or test listeners) that must not collide.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("pgbookend-testkit: cannot bind 127.0.0.1:0: {e}"));
        if given.insert(port) {
            return port;
        }
    }
    panic!("pgbookend-testkit: no free TCP port found");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_filter() {
        assert_eq!(majors_from(""), MAJORS.to_vec());
        assert_eq!(majors_from("13,18"), vec![13, 18]);
        assert_eq!(majors_from(" 18, 13 ,99"), vec![13, 18]);
    }

    #[test]
    fn paths() {
        assert!(server_bin(17, "postgres").ends_with("17/bin/postgres"));
        assert!(client_bin("psql").ends_with("psql"));
        assert_eq!(server_user().is_some(), is_root());
    }

    #[test]
    fn free_ports_differ() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
    }
}
