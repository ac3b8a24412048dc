//! The WAL archive in the bundle stores: `archive-push` (PostgreSQL's `archive_command`)
//! and `archive-get` (its `restore_command`).
//!
//! One room, one step per file: [`layout`] names objects (cluster, timeline, content
//! hash), [`push`] checks, compresses and stores a file in every store, [`get`] finds,
//! unpacks (through [`unpack`], decoding and hashing on two threads) and checks one. Both run with the data directory as their working directory
//! and learn the cluster (system identifier, segment size) from its `global/pg_control`.
//! [`spool`] is the asynchronous mode of `archive-push`: a durable local spool and a
//! detached pusher that stores its files through [`push`]. Later steps of issue 11
//! (point-in-time selection, retention, `check`) build on [`layout`] and [`Settings`].

pub mod confirm;
pub mod get;
pub mod layout;
pub mod prefetch;
pub mod push;
pub mod retain;
pub mod spool;
pub mod unpack;

use crate::config::Config;
use crate::error::{Class, Error, Result};
use crate::store::Store;
use pgbookend_formats::control::{self, ControlFile};
use std::path::{Path, PathBuf};

/// The zstd level used unless `archive_compress_level` or `--compress-level` says otherwise.
pub const DEFAULT_LEVEL: i32 = 3;

/// Archive settings resolved once at the edge: flags win over the config file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the archive lives: every one gets every file.
    pub stores: Vec<Store>,
    /// zstd level (1 to 19).
    pub level: i32,
    /// How many stores must hold a file before `archive-push` succeeds.
    pub min_stores: usize,
    /// The data directory (`--pgdata`, else the working directory PostgreSQL gives).
    pub pgdata: PathBuf,
    /// `archive-get`: how many segments to fetch ahead (0: none; see [`prefetch`]).
    pub prefetch: u32,
    /// `archive-get`: how many of them to fetch at once.
    pub prefetch_jobs: usize,
}

impl Settings {
    /// Stores: `--store` flags, else the config's `archive_store`, else its `store`; none
    /// at all is a usage error (an archive must be chosen, never guessed). `s3`: the
    /// settings of S3 stores.
    pub fn resolve(
        cfg: &Config,
        stores: &[String],
        s3: &crate::store::s3::Settings,
        level: Option<i32>,
        min_stores: Option<usize>,
        pgdata: Option<&Path>,
    ) -> Result<Settings> {
        let urls: &[String] = if !stores.is_empty() {
            stores
        } else if !cfg.archive_store.is_empty() {
            &cfg.archive_store
        } else {
            &cfg.store
        };
        if urls.is_empty() {
            return Err(Error::usage("no archive store: give --store URL, or set archive_store (or store) in the config file")
                .hint("e.g. archive_store = [\"/var/lib/pgbookend/archive\"] in /etc/pgbookend.toml (or $PGBOOKEND_CONFIG)"));
        }
        let stores = urls
            .iter()
            .map(|u| Store::parse(u, s3))
            .collect::<Result<Vec<_>>>()?;
        let level = level
            .or(cfg.archive_compress_level)
            .unwrap_or(DEFAULT_LEVEL);
        if !(1..=19).contains(&level) {
            return Err(Error::usage(format!(
                "compression level {level}: expected 1 to 19"
            )));
        }
        let min_stores = min_stores
            .or(cfg.archive_min_stores)
            .unwrap_or(stores.len());
        if min_stores == 0 || min_stores > stores.len() {
            return Err(Error::usage(format!(
                "min stores {min_stores}: expected 1 to {} (the number of stores)",
                stores.len()
            )));
        }
        let pgdata = match pgdata {
            Some(p) => p.to_path_buf(),
            None => std::env::current_dir()
                .map_err(|e| Error::env(format!("cannot read the working directory: {e}")))?,
        };
        Ok(Settings {
            stores,
            level,
            min_stores,
            pgdata,
            prefetch: 0,
            prefetch_jobs: 1,
        })
    }
}

/// Sets `archive-get`'s prefetch: the flag, else `archive_get_prefetch` from the config,
/// else none; fetched `jobs` at a time (default: the number of cores).
pub fn with_prefetch(
    mut s: Settings,
    cfg: &Config,
    ahead: Option<u32>,
    jobs: Option<usize>,
) -> Result<Settings> {
    let ahead = ahead.or(cfg.archive_get_prefetch).unwrap_or(0);
    if ahead > prefetch::MAX_AHEAD {
        return Err(Error::usage(format!(
            "prefetch {ahead}: expected 0 to {} segments",
            prefetch::MAX_AHEAD
        )));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let jobs = jobs.or(cfg.archive_get_jobs).unwrap_or(cores);
    if !(1..=prefetch::MAX_JOBS).contains(&jobs) {
        return Err(Error::usage(format!(
            "prefetch jobs {jobs}: expected 1 to {}",
            prefetch::MAX_JOBS
        )));
    }
    s.prefetch = ahead;
    s.prefetch_jobs = jobs;
    Ok(s)
}

/// The identity of the cluster whose WAL is archived or restored, from `pg_control`.
#[derive(Debug, Clone)]
pub struct ClusterId {
    pub system_identifier: u64,
    pub major: u32,
    pub seg_size: u32,
}

/// Reads `global/pg_control` of `pgdata` (torn reads retried, as the server may be
/// rewriting it) into the cluster's identity.
pub fn cluster_id(pgdata: &Path) -> Result<ClusterId> {
    let path = pgdata.join("global/pg_control");
    let mut first = true;
    let (cf, _): (ControlFile, _) = control::read_stable(
        || {
            if !first {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            first = false;
            read_capped(&path, control::FILE_SIZE as u64 * 2)
        },
        50,
    )
    .map_err(|e| {
        Error::env(format!("cannot read {}: {e}", path.display())).hint(
            "run from the data directory (PostgreSQL does for archive_command and restore_command) or give --pgdata DIR",
        )
    })?;
    if !pgbookend_formats::wal::is_valid_seg_size(cf.xlog_seg_size) {
        return Err(Error::new(
            Class::Check,
            format!(
                "{}: WAL segment size {} is not valid",
                path.display(),
                cf.xlog_seg_size
            ),
        ));
    }
    Ok(ClusterId {
        system_identifier: cf.system_identifier,
        major: cf.major,
        seg_size: cf.xlog_seg_size,
    })
}

/// Reads at most `cap` bytes of a file.
fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(cap).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Takes the exclusive advisory lock on `name` in `dir` (created 0600 if missing, never
/// through a link) if nobody holds it; released when the file is dropped.
pub(crate) fn try_flock(dir: &crate::fsutil::Dir, name: &str) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let _ = dir.create_file(name, 0o600);
    let f = dir.open_file(name).ok()?;
    // SAFETY: flock on an fd we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then_some(f)
}

/// Starts this command line again with the subcommand `from` replaced by the hidden
/// `to`, detached: its own process group, no standard streams (its output must not land
/// in the server log), inherited descriptors closed at exec. The worker gets the same
/// arguments, never an environment flag (one leaking into the server's environment
/// would turn every call into a worker).
pub(crate) fn spawn_detached(from: &str, to: &str) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    let mut swapped = false;
    let args = std::env::args_os().skip(1).map(|a| {
        if !swapped && a == from {
            swapped = true;
            to.into()
        } else {
            a
        }
    });
    cmd.args(args.collect::<Vec<std::ffi::OsString>>());
    if !swapped {
        return Err(std::io::Error::other(format!(
            "{from} is not on the command line"
        )));
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    // SAFETY: only an async-signal-safe syscall between fork and exec. CLOSE_RANGE_CLOEXEC
    // (4) marks every inherited descriptor above 2 close-on-exec; failure is harmless.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32);
            Ok(())
        });
    }
    cmd.spawn().map(|_| ())
}

/// For the long-lived workers (the pusher, the prefetch worker), which allocate buffers of
/// megabytes on threads that come and go: with glibc's defaults such buffers end up in
/// per-thread arenas and a moving mmap threshold, and the process keeps growing (the
/// pusher reached 77 MB in a long burst). Buffers above 256 KiB are mapped and unmapped
/// each time, and at most two arenas are used, so memory follows what is in use.
pub fn bound_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator settings; called before the worker's threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
