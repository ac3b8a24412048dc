//! Asynchronous `archive-push` (`--async`, `archive_async = true`): the call PostgreSQL
//! makes returns as soon as the file is durable in a local spool, and a background
//! pusher stores the spool's files in the stores through [`push::push`], the very code
//! of a synchronous push.
//!
//! The spool (`archive_spool`, default `<state dir>/archive-spool`) holds one 0700
//! directory per system identifier with `ready/` (files copied by `archive-push`, each
//! written to a temporary name, fsynced, renamed, the directory fsynced: nothing is
//! acknowledged before it is durable), `ok/` (markers of files the pusher archived
//! straight from `pg_wal` ahead of PostgreSQL's call, each holding the file's SHA-256),
//! `busy/` (an empty marker per file the pusher is pushing from `pg_wal` right now, so
//! that the call for it waits for that push instead of copying the file into `ready/`
//! and having it pushed twice), `error` (the pusher's last failure, removed at its next
//! success), `lock` and `pid`.
//!
//! The pusher is the same command line run again as [`WORKER_SUBCOMMAND`], detached in
//! its own process group (as [`super::prefetch`]'s worker); one runs per spool directory
//! (an advisory lock on `lock`; `pid` holds its process id). It pushes `ready/` oldest name
//! first, `jobs` at a time, then reads ahead what `pg_wal/archive_status/*.ready` lists;
//! on a failure it records `error`, keeps the file and retries after a back-off; it exits
//! after [`IDLE`] without work.

use super::{cluster_id, push, Settings};
use crate::config::Config;
use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, Dir, Ownership};
use pgbookend_formats::walname::WalName;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The hidden subcommand of the pusher (`archive-push` replaced on the command line).
pub const WORKER_SUBCOMMAND: &str = "__archive-pusher";
/// The spool size above which `archive-push` refuses a file (1 GiB).
pub const DEFAULT_MAX: u64 = 1 << 30;
/// Parallel pushes of the pusher unless `--jobs` or `archive_push_jobs` says otherwise.
pub const DEFAULT_JOBS: usize = 2;
/// The most parallel pushes.
pub const MAX_JOBS: usize = 16;
/// How long the pusher waits without work before it exits.
pub const IDLE: Duration = Duration::from_secs(10);
/// The advisory lock of the pusher, in the spool directory.
pub const LOCK: &str = "lock";
/// The pid of the newest pusher, in the spool directory (check its command line: the
/// pusher may have exited and the pid been reused).
pub const PID: &str = "pid";
const READY: &str = "ready";
const OK: &str = "ok";
const BUSY: &str = "busy";
const ERROR: &str = "error";
/// How long after its start a push under way is waited for: a call whose file the pusher
/// has been pushing for less than this waits until the push ends or reaches this age, then
/// spools the file anyway. A push to a healthy store takes a fraction of it; a slow or
/// failing store must not hold PostgreSQL's archiver.
pub const FLIGHT_WAIT: Duration = Duration::from_secs(1);
/// How long `archive-push --async` waits for room in a full spool before it fails.
pub const FULL_WAIT: Duration = Duration::from_secs(60);

/// What waiting for room in a full spool ended with.
enum Room {
    Made,
    PushedAhead,
    None,
}

/// Markers older than this are removed by the pusher.
const STALE: Duration = Duration::from_secs(3600);

/// Where and how the asynchronous mode spools.
#[derive(Debug, Clone)]
pub struct Options {
    /// The spool root (a directory per system identifier inside).
    pub root: PathBuf,
    /// `archive-push` fails when the spool would hold more than this many bytes.
    pub max: u64,
    /// The pusher's parallel pushes.
    pub jobs: usize,
}

impl Options {
    /// Flags win over the config file (`archive_spool`, `archive_spool_max`,
    /// `archive_push_jobs`), which wins over the defaults.
    pub fn resolve(
        cfg: &Config,
        root: Option<&Path>,
        max: Option<u64>,
        jobs: Option<usize>,
    ) -> Result<Options> {
        let root = root
            .map(Path::to_path_buf)
            .or_else(|| cfg.archive_spool.as_ref().map(PathBuf::from))
            .unwrap_or_else(|| crate::config::state_root().join("archive-spool"));
        let jobs = jobs.or(cfg.archive_push_jobs).unwrap_or(DEFAULT_JOBS);
        if !(1..=MAX_JOBS).contains(&jobs) {
            return Err(Error::usage(format!(
                "push jobs {jobs}: expected 1 to {MAX_JOBS}"
            )));
        }
        Ok(Options {
            root,
            max: max.or(cfg.archive_spool_max).unwrap_or(DEFAULT_MAX),
            jobs,
        })
    }
}

/// What the foreground `archive-push --async` did.
#[derive(Debug, serde::Serialize)]
pub struct Queued {
    /// The WAL file name.
    pub name: String,
    /// `true`: the pusher had already archived it from `pg_wal`; `false`: it is now
    /// durable in the spool and the pusher stores it.
    pub already_pushed: bool,
    /// The spool directory.
    pub spool: String,
}

/// One cluster's spool directory, opened (never through a link).
struct Spool {
    dir: Dir,
    ready: Dir,
    ok: Dir,
    busy: Dir,
}

impl Spool {
    /// Opens (creating, 0700) `root/<system identifier>` with `ready/`, `ok/` and `busy/`.
    fn open(root: &Path, sysid: u64) -> Result<Spool> {
        let own = Ownership::private();
        if !root.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|e| io_err("cannot create the spool directory", root, e))?;
        }
        let base = Dir::open_follow(root).map_err(|e| io_err("cannot open", root, e))?;
        let dir = fsutil::ensure_dir_at(&base, sysid.to_string().as_ref(), &own)?;
        let ready = fsutil::ensure_dir_at(&dir, READY.as_ref(), &own)?;
        let ok = fsutil::ensure_dir_at(&dir, OK.as_ref(), &own)?;
        let busy = fsutil::ensure_dir_at(&dir, BUSY.as_ref(), &own)?;
        Ok(Spool {
            dir,
            ready,
            ok,
            busy,
        })
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The SHA-256 an `ok/` marker of `name` holds.
    fn marker(&self, name: &str) -> Option<String> {
        read_small(&self.ok, name)
    }

    fn error(&self) -> Option<String> {
        read_small(&self.dir, ERROR)
    }

    fn set_error(&self, msg: &str) {
        let _ = fsutil::write_at(&self.dir, ERROR.as_ref(), &Ownership::private(), |f, p| {
            f.write_all(msg.as_bytes())
                .map_err(|e| io_err("cannot write", p, e))
        });
    }

    fn clear_error(&self) {
        if self.dir.unlink(ERROR).is_ok() {
            let _ = self.dir.sync();
        }
    }

    /// The WAL files waiting in `ready/`, oldest name first, and their total size.
    fn ready(&self) -> (Vec<String>, u64) {
        let mut names: Vec<String> = names_in(&self.ready)
            .into_iter()
            .filter(|n| WalName::parse(n).is_ok())
            .collect();
        names.sort();
        let bytes = names
            .iter()
            .filter_map(|n| self.ready.lstat(n).ok())
            .map(|st| st.st_size as u64)
            .sum();
        (names, bytes)
    }

    /// Whether the pusher archived `name` from `pg_wal` ahead of this call: an `ok/`
    /// marker of the file at `path` (then the marker is removed). The marker names the
    /// file it was made from (device, inode, size, modification and change times): the
    /// same file unchanged is accepted from its metadata; otherwise the file's SHA-256
    /// must be the marker's (a marker without that line, or another file under the name).
    fn pushed_ahead(&self, name: &str, path: &Path) -> Result<bool> {
        let Some(marker) = self.marker(name) else {
            return Ok(false);
        };
        let mut lines = marker.lines();
        let want = lines.next().unwrap_or_default().trim();
        let mut src = push::open_source(path)?;
        let same = src
            .metadata()
            .ok()
            .is_some_and(|m| lines.next() == Some(identity(&m).as_str()));
        if !same {
            let got = sha256_of(&mut src).map_err(|e| io_err("cannot read", path, e))?;
            if got != want {
                return Ok(false);
            }
        }
        let _ = self.ok.unlink(name);
        let _ = self.ok.sync();
        Ok(true)
    }

    /// Whether the pusher is pushing `name` from `pg_wal` now and began less than
    /// [`FLIGHT_WAIT`] ago: its `busy/` marker, by the marker's age.
    fn in_flight(&self, name: &str) -> bool {
        self.busy
            .lstat(name)
            .ok()
            .and_then(|st| age(&st))
            .is_some_and(|a| a < FLIGHT_WAIT)
    }

    /// Waits while the push of `name` is under way and younger than [`FLIGHT_WAIT`], then
    /// whether it archived the file at `path` (see [`Spool::pushed_ahead`]).
    fn wait_in_flight(&self, name: &str, path: &Path) -> Result<bool> {
        while self.in_flight(name) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.pushed_ahead(name, path)
    }

    /// Waits (up to [`FULL_WAIT`]) until `size` more bytes fit in the spool, the pusher
    /// archived `name` ahead, or the pusher records a failure.
    fn wait_for_room(&self, name: &str, path: &Path, size: u64, max: u64) -> Result<Room> {
        let until = Instant::now() + FULL_WAIT;
        while Instant::now() < until && self.error().is_none() {
            std::thread::sleep(Duration::from_millis(50));
            if self.pushed_ahead(name, path)? {
                return Ok(Room::PushedAhead);
            }
            if self.ready().1 + size <= max {
                return Ok(Room::Made);
            }
            self.kick();
        }
        Ok(Room::None)
    }

    /// Starts the pusher unless one holds the lock. Best effort: a pusher that cannot
    /// start leaves the files in `ready/` for the next call.
    fn kick(&self) {
        if let Some(lock) = super::try_flock(&self.dir, LOCK) {
            drop(lock);
            let _ = super::spawn_detached("archive-push", WORKER_SUBCOMMAND);
        }
    }
}

/// How long ago an entry was last modified; `None` for a time in the future.
fn age(st: &libc::stat) -> Option<Duration> {
    let at = SystemTime::UNIX_EPOCH
        + Duration::new(
            st.st_mtime.max(0) as u64,
            st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        );
    SystemTime::now().duration_since(at).ok()
}

/// The text of an `ok/` marker: the file's SHA-256, then, when known, its identity
/// (read back by [`Spool::pushed_ahead`]).
fn ok_marker(sha256: &str, identity: Option<&str>) -> String {
    match identity {
        Some(id) => format!("{sha256}\n{id}\n"),
        None => format!("{sha256}\n"),
    }
}

/// The file `name` of `pg_wal`, which the pusher reads ahead.
fn in_pg_wal(s: &Settings, name: &str) -> PathBuf {
    s.pgdata.join("pg_wal").join(name)
}

/// What tells a file from any other and from itself changed: device, inode, size,
/// modification and change times to the nanosecond (the change time cannot be set back).
fn identity(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{} {} {} {}.{} {}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// Reads a small file (at most 4 KiB) of `dir` as text, never through a link.
fn read_small(dir: &Dir, name: &str) -> Option<String> {
    let mut s = String::new();
    dir.open_file(name)
        .ok()?
        .take(4096)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// The entry names of `dir` that are valid UTF-8 and not temporary (`.`-prefixed).
fn names_in(dir: &Dir) -> Vec<String> {
    dir.entries()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// The foreground `archive-push --async %p`: acknowledges a file the pusher already
/// archived, reports the pusher's recorded failure, waits briefly for a push of the file
/// under way, or copies the file durably into the spool; in every case makes sure the pusher runs. When the spool is full it waits up
/// to [`FULL_WAIT`] for the pusher to make room (or to archive this file from `pg_wal`),
/// so that a backlog paces PostgreSQL's archiver instead of failing its calls; a file
/// larger than the limit, a pusher that records a failure, or no room by then fails.
pub fn submit(s: &Settings, o: &Options, path: &Path) -> Result<Queued> {
    let name = push::wal_name_of(path)?;
    let id = cluster_id(&s.pgdata)?;
    let spool = Spool::open(&o.root, id.system_identifier)?;
    let n = name.to_string();
    let done = |already_pushed| Queued {
        name: n.clone(),
        already_pushed,
        spool: spool.path(),
    };
    if spool.pushed_ahead(&n, path)? {
        return Ok(done(true));
    }
    if let Some(msg) = spool.error() {
        spool.kick();
        return Err(Error::env(format!(
            "{n} is not archived: the asynchronous pusher cannot store files: {msg}"
        ))
        .hint("PostgreSQL retries archive_command; fix the store and the spool drains by itself"));
    }
    // A push of this file under way and young: wait for it; if it does not end archived
    // within FLIGHT_WAIT of its start (a slow or failing store), spool the file as if it
    // had not been under way.
    if spool.in_flight(&n) && spool.wait_in_flight(&n, path)? {
        return Ok(done(true));
    }
    let mut src = push::open_source(path)?;
    let size = src
        .metadata()
        .map_err(|e| io_err("cannot read", path, e))?
        .len();
    check_before_spooling(&src, path, &name, &id, size)?;
    let (_, used) = spool.ready();
    if used + size > o.max {
        spool.kick();
        if size <= o.max {
            if let Room::PushedAhead = spool.wait_for_room(&n, path, size, o.max)? {
                return Ok(done(true));
            }
        }
    }
    let (_, used) = spool.ready();
    if used + size > o.max {
        return Err(Error::env(format!(
            "{n} is not archived: spool full ({used} bytes in {}, limit {})",
            spool.path(),
            o.max
        ))
        .hint(
            "the pusher is behind its stores: check them, or raise archive_spool_max (--spool-max)",
        ));
    }
    fsutil::write_at(&spool.ready, n.as_ref(), &Ownership::private(), |f, tmp| {
        std::io::copy(&mut src, f)
            .map(|_| ())
            .map_err(|e| io_err("cannot copy into", tmp, e))
    })?;
    spool.kick();
    Ok(done(false))
}

/// The checks of a synchronous push that need no compression, done before the file is
/// acknowledged: a segment (or `.partial`) is exactly one segment long and its header
/// names this cluster; any other file is at most a segment long. A file the pusher would
/// refuse is never acknowledged.
fn check_before_spooling(
    src: &std::fs::File,
    path: &Path,
    name: &WalName,
    id: &super::ClusterId,
    size: u64,
) -> Result<()> {
    use pgbookend_formats::walname::WalKind;
    use std::os::unix::fs::FileExt;
    let seg = u64::from(id.seg_size);
    let segment_like = matches!(name.kind(), WalKind::Segment | WalKind::Partial);
    if (segment_like && size != seg) || size > seg {
        return Err(Error::new(
            crate::error::Class::Check,
            format!(
                "{} has {size} bytes; a WAL segment of this cluster has {seg}",
                path.display()
            ),
        )
        .hint("a short segment is damaged or still being written: it is not archived"));
    }
    if segment_like {
        let mut first = vec![0u8; 8192.min(size as usize)];
        src.read_exact_at(&mut first, 0)
            .map_err(|e| io_err("cannot read", path, e))?;
        push::check_header(&first, path, id)?;
    }
    Ok(())
}

fn sha256_of(r: &mut dyn Read) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// One file for the pusher: from the spool, or read ahead from `pg_wal`.
enum Job {
    Spooled(String),
    Ahead(String),
}

/// The pusher: pushes until idle for [`IDLE`], then exits. Returns silently on any
/// setup failure (the next `archive-push` tries again).
pub fn work(s: &Settings, o: &Options) {
    super::bound_heap();
    let Ok(id) = cluster_id(&s.pgdata) else {
        return;
    };
    let Ok(spool) = Spool::open(&o.root, id.system_identifier) else {
        return;
    };
    for _ in 0..100_000 {
        let Some(lock) = super::try_flock(&spool.dir, LOCK) else {
            return;
        };
        let _ = fsutil::write_at(&spool.dir, PID.as_ref(), &Ownership::private(), |f, p| {
            writeln!(f, "{}", std::process::id()).map_err(|e| io_err("cannot write", p, e))
        });
        // What a pusher that died left under way is under way no more.
        for e in spool.busy.entries().unwrap_or_default() {
            let _ = spool.busy.unlink(&e);
        }
        run(s, o, &spool);
        drop(lock);
        // A file spooled while the lock was about to be released has no other pusher.
        if spool.ready().0.is_empty() {
            return;
        }
    }
}

/// The pusher's loop while it holds the lock.
fn run(s: &Settings, o: &Options, spool: &Spool) {
    let mut idle_since = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        let jobs = pending(s, spool);
        if jobs.is_empty() {
            spool.clear_error();
            remove_stale(spool);
            if idle_since.elapsed() >= IDLE {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        match push_all(s, o, spool, &jobs) {
            None => {
                spool.clear_error();
                backoff = Duration::from_secs(1);
            }
            Some(msg) => {
                spool.set_error(&msg);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        idle_since = Instant::now();
    }
}

/// What there is to push: `ready/` oldest first, then the files `archive_status` marks
/// `.ready` that are neither spooled nor already marked.
fn pending(s: &Settings, spool: &Spool) -> Vec<Job> {
    let (ready, _) = spool.ready();
    let status = s.pgdata.join("pg_wal/archive_status");
    let mut ahead: Vec<String> = std::fs::read_dir(status)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".ready").map(String::from))
                .filter(|n| WalName::parse(n).is_ok())
                .filter(|n| !ready.contains(n) && spool.marker(n).is_none())
                .collect()
        })
        .unwrap_or_default();
    ahead.sort();
    ready
        .into_iter()
        .map(Job::Spooled)
        .chain(ahead.into_iter().map(Job::Ahead))
        .collect()
}

/// Pushes `jobs`: `o.jobs` files compressed at once, each then stored by one of `o.jobs`
/// storing threads while its compressing thread goes on with the next file, so that the
/// stores' writes, fsyncs and read-backs overlap the compression instead of leaving the
/// CPUs idle. The first failure's message, if any.
fn push_all(s: &Settings, o: &Options, spool: &Spool, jobs: &[Job]) -> Option<String> {
    let next = AtomicUsize::new(0);
    let failure = Mutex::new(None::<String>);
    let fail = |e: Error| {
        let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(|| e.to_string());
    };
    let threads = o.jobs.min(jobs.len());
    // The pushes share the CPUs: more compressing threads than CPUs only thrash their
    // caches (a drain cost 108 ms of CPU per segment with two threads per push on two
    // CPUs, 78 ms with one).
    let per_job = (push::workers() / o.jobs).max(1);
    let (tx, rx) = mpsc::sync_channel::<(&Job, push::Prepared, Option<String>)>(threads);
    let rx = Mutex::new(rx);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            let (tx, next, fail) = (tx.clone(), &next, &fail);
            sc.spawn(move || loop {
                let Some(job) = jobs.get(next.fetch_add(1, Ordering::SeqCst)) else {
                    return;
                };
                match prepare(s, spool, job, per_job) {
                    Ok((p, before)) => {
                        if tx.send((job, p, before)).is_err() {
                            return;
                        }
                    }
                    Err(e) => fail(e),
                }
            });
        }
        drop(tx);
        for _ in 0..threads {
            let (rx, fail) = (&rx, &fail);
            sc.spawn(move || loop {
                let got = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((job, p, before)) = got else {
                    return;
                };
                if let Err(e) = store(s, spool, job, &p, before) {
                    fail(e);
                }
            });
        }
    });
    failure.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// The first half of one file's push ([`push::prepare`], compressing `threads` pieces at
/// once); a file read ahead from `pg_wal` gets its `busy/` marker first (advisory, no
/// fsync: the call for it waits for this push instead of spooling the file) and its
/// metadata as it was before.
fn prepare(
    s: &Settings,
    spool: &Spool,
    job: &Job,
    threads: usize,
) -> Result<(push::Prepared, Option<String>)> {
    match job {
        Job::Spooled(n) => Ok((
            push::prepare(s, &spool.ready.display_path(n), threads)?,
            None,
        )),
        Job::Ahead(n) => {
            let _ = spool.busy.unlink(n);
            let _ = spool.busy.create_file(n, 0o600);
            let path = in_pg_wal(s, n);
            let before = std::fs::symlink_metadata(&path).ok().map(|m| identity(&m));
            push::prepare(s, &path, threads)
                .map(|p| (p, before))
                .inspect_err(|_| {
                    let _ = spool.busy.unlink(n);
                })
        }
    }
}

/// The second half ([`push::store`]): a spooled file is removed (durably) after, a file
/// read ahead gets its `ok/` marker (durably), with the file's metadata when the same
/// before and after the push (then the call for it need not hash it again), before its
/// `busy/` marker goes.
fn store(
    s: &Settings,
    spool: &Spool,
    job: &Job,
    p: &push::Prepared,
    before: Option<String>,
) -> Result<()> {
    match job {
        Job::Spooled(n) => {
            push::store(s, p)?;
            spool
                .ready
                .unlink(n)
                .map_err(|e| io_err("cannot remove", &spool.ready.display_path(n), e))?;
            spool
                .ready
                .sync()
                .map_err(|e| io_err("cannot fsync directory", spool.ready.path(), e))
        }
        Job::Ahead(n) => {
            let res = push::store(s, p).and_then(|r| {
                let after = std::fs::symlink_metadata(in_pg_wal(s, n))
                    .ok()
                    .map(|m| identity(&m));
                let same = before.filter(|b| after.as_ref() == Some(b));
                fsutil::write_at(&spool.ok, n.as_ref(), &Ownership::private(), |f, p| {
                    f.write_all(ok_marker(&r.sha256, same.as_deref()).as_bytes())
                        .map_err(|e| io_err("cannot write", p, e))
                })
            });
            let _ = spool.busy.unlink(n);
            res
        }
    }
}

/// Removes `ok/` markers older than [`STALE`] (PostgreSQL never asked for them: the
/// server archived the file some other way, or was reset), and temporary files of
/// `ready/` and `ok/` as old (left by a call or a pusher that died while writing).
fn remove_stale(spool: &Spool) {
    for (dir, all) in [(&spool.ok, true), (&spool.ready, false)] {
        for e in dir.entries().unwrap_or_default() {
            let temp = e.to_str().is_some_and(|n| n.starts_with('.'));
            let old = dir
                .lstat(&e)
                .ok()
                .and_then(|st| age(&st))
                .is_some_and(|a| a > STALE);
            if old && (all || temp) {
                let _ = dir.unlink(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The spool is made 0700 with its subdirectories; only WAL names count as ready
    /// (temporary and foreign entries neither count nor get pushed), oldest first; fresh
    /// markers and temporary files survive the stale sweep.
    #[test]
    fn spool_layout_and_ready_list() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("a/spool");
        let sp = Spool::open(&root, 42).unwrap();
        for d in ["", "ready", "ok", "busy"] {
            let m = std::fs::metadata(root.join("42").join(d)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{d}");
        }
        let ready = root.join("42/ready");
        std::fs::write(ready.join("000000010000000000000002"), [0u8; 10]).unwrap();
        std::fs::write(ready.join("000000010000000000000001"), [0u8; 5]).unwrap();
        std::fs::write(ready.join(".000000010000000000000003.tmp-x"), [0u8; 7]).unwrap();
        std::fs::write(ready.join("notes.txt"), [0u8; 7]).unwrap();
        let (names, bytes) = sp.ready();
        assert_eq!(
            names,
            ["000000010000000000000001", "000000010000000000000002"]
        );
        assert_eq!(bytes, 15);
        std::fs::write(root.join("42/ok/000000010000000000000009"), "abc").unwrap();
        assert_eq!(
            sp.marker("000000010000000000000009").as_deref(),
            Some("abc")
        );
        remove_stale(&sp);
        assert!(sp.marker("000000010000000000000009").is_some());
        assert!(ready.join(".000000010000000000000003.tmp-x").exists());
        assert!(sp.error().is_none());
        sp.set_error("store down");
        assert_eq!(sp.error().as_deref(), Some("store down"));
        sp.clear_error();
        assert!(sp.error().is_none());
    }

    /// A call whose file the pusher is pushing waits for that push: archived (`ok/`
    /// written before `busy/` goes) is success without spooling; a push that ends without
    /// a marker is not; a `busy/` marker as old as [`FLIGHT_WAIT`] is no push under way.
    #[test]
    fn waits_for_a_push_under_way() {
        use sha2::Digest;
        let t = tempfile::tempdir().unwrap();
        let sp = Spool::open(&t.path().join("spool"), 7).unwrap();
        let n = "000000010000000000000005";
        let file = t.path().join(n);
        std::fs::write(&file, b"segment bytes").unwrap();
        let sha = hex::encode(sha2::Sha256::digest(b"segment bytes"));
        let ok = t.path().join("spool/7/ok").join(n);
        assert!(!sp.in_flight(n));
        sp.busy.create_file(n, 0o600).unwrap();
        assert!(sp.in_flight(n));
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                std::fs::write(&ok, &sha).unwrap();
                sp.busy.unlink(n).unwrap();
            });
            assert!(sp.wait_in_flight(n, &file).unwrap());
        });
        assert!(sp.marker(n).is_none(), "the marker is consumed");
        // A push that failed: `busy/` goes, no marker.
        sp.busy.create_file(n, 0o600).unwrap();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                sp.busy.unlink(n).unwrap();
            });
            assert!(!sp.wait_in_flight(n, &file).unwrap());
        });
        // Left by a pusher that died.
        let f = sp.busy.create_file(n, 0o600).unwrap();
        f.set_modified(SystemTime::now() - FLIGHT_WAIT * 2).unwrap();
        assert!(!sp.in_flight(n));
    }

    /// An `ok/` marker that names the file as it is is accepted from the metadata (here
    /// with a hash that would not match); once the file is written again it is not, and
    /// the hash decides.
    #[test]
    fn marker_names_the_file_it_was_made_from() {
        use sha2::Digest;
        let t = tempfile::tempdir().unwrap();
        let sp = Spool::open(&t.path().join("spool"), 7).unwrap();
        let n = "000000010000000000000006";
        let file = t.path().join(n);
        std::fs::write(&file, b"segment bytes").unwrap();
        let ok = t.path().join("spool/7/ok").join(n);
        let id = identity(&std::fs::metadata(&file).unwrap());
        std::fs::write(&ok, ok_marker(&"0".repeat(64), Some(&id))).unwrap();
        assert!(sp.pushed_ahead(n, &file).unwrap());
        assert!(sp.marker(n).is_none(), "the marker is consumed");
        std::fs::write(&ok, ok_marker(&"0".repeat(64), Some(&id))).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, b"segment BYTES").unwrap();
        assert!(!sp.pushed_ahead(n, &file).unwrap());
        let sha = hex::encode(sha2::Sha256::digest(b"segment BYTES"));
        std::fs::write(&ok, ok_marker(&sha, Some(&id))).unwrap();
        assert!(sp.pushed_ahead(n, &file).unwrap());
    }
}
