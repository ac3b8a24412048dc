//! `drill`: a real test restore that leaves nothing behind. The restored copy is cloned
//! into a private scratch directory beside it (the copy itself is only read), the clone is
//! prepared by the restore engine, a server of the copy's major recovers it on a private
//! socket, amcheck and a count of every table run in every database, and the server, the
//! clone and the socket are removed whatever happens (also on SIGTERM or SIGINT).
//!
//! The room of the test restore: this file (the sequence and its cleanup), `clone` (the
//! throwaway clone), `server` (finding, starting and stopping the server), `checks` (what
//! runs on the recovered clone) and `record` (`drill.json`).

pub mod checks;
pub mod clone;
pub mod record;
pub mod server;

use crate::error::{Class, Error, Result};
use crate::fsutil::Dir;
use crate::restore::PrepareOptions;
use pgbookend_formats::{label::BackupLabel, lsn::Lsn, version};
use record::{Record, WalReplayed};
use server::{Owner, Places, Server};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The name prefix of a drill's scratch directory (`.pgbookend-drill.<pid>.<random>`),
/// beside the copy: a later drill removes one whose drill is gone (killed with SIGKILL).
pub const SCRATCH_PREFIX: &str = ".pgbookend-drill.";

/// The options of `drill`.
#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    pub pgdata: PathBuf,
    pub store: Option<String>,
    pub bundle: Option<PathBuf>,
    pub id: Option<String>,
    pub pg_bin: Option<PathBuf>,
    pub no_amcheck: bool,
    /// Where the copy of each tablespace was restored (`--tablespace OID=PATH`): each is
    /// cloned too, and the clone's tablespace links point at those clones.
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// How long the server may take to recover and open (`--timeout`); `None` is
    /// [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// The settings of an S3 store (flags, then the config file).
    pub s3: crate::store::s3::Settings,
}

/// The default bound on recovery: an hour covers the replay of a large window on slow
/// disks; a recovery that takes longer is stopped and reported, never waited for forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Set by SIGTERM, SIGINT or SIGHUP: drill stops, cleans up and fails.
static STOP: AtomicBool = AtomicBool::new(false);
/// The drill server's postmaster while it runs: the signal handler asks it to shut down
/// (fast) at once, so that a running check returns.
static SERVER_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    let pid = SERVER_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our own child's, still unreaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
}

fn install_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a plain handler that only touches atomics and calls kill.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The error of a drill ended by a signal (after its cleanup).
pub fn interrupted() -> Error {
    Error::env("drill was interrupted by a signal; its server, clone and socket were removed")
        .hint("run drill again; the copy was not changed")
}

/// The private scratch directory beside the copy; removed (never following a link) on drop.
struct Scratch {
    parent: Dir,
    name: String,
    path: PathBuf,
}

impl Scratch {
    /// Creates `.pgbookend-drill.<pid>.<random>` beside `pgdata`, 0700, owned by `owner`.
    fn create(pgdata: &Path, owner: &Owner) -> Result<Scratch> {
        let parent_path = pgdata.parent().unwrap_or(Path::new("/"));
        let parent = Dir::open_follow(parent_path)
            .map_err(|e| Error::env(format!("cannot open {}: {e}", parent_path.display())))?;
        let rand = hex::encode(crate::fsutil::random_bytes::<6>());
        let name = format!("{SCRATCH_PREFIX}{}.{rand}", std::process::id());
        parent.mkdir(&name, 0o700).map_err(|e| {
            Error::env(format!(
                "cannot create {}: {e}",
                parent.display_path(&name).display()
            ))
        })?;
        let s = Scratch {
            path: parent.display_path(&name),
            parent,
            name,
        };
        s.dir()?
            .set_owner_mode(owner.uid, owner.gid, 0o700)
            .map_err(|e| {
                Error::env(format!("cannot set the owner of {}: {e}", s.path.display()))
            })?;
        Ok(s)
    }

    fn dir(&self) -> Result<Dir> {
        self.parent
            .open_dir(&self.name)
            .map_err(|e| Error::env(format!("cannot open {}: {e}", self.path.display())))
    }

    fn remove(&self) -> std::io::Result<()> {
        unmount_all(&self.path);
        self.parent.remove_tree(&self.name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::error!(
                "cannot remove the drill scratch directory {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Removes the scratch directories beside `pgdata` left by drills that are gone (a
/// SIGKILLed drill), first killing a server still running in one. Returns what it removed.
fn remove_leftovers(pgdata: &Path) -> Vec<String> {
    let Some(parent_path) = pgdata.parent() else {
        return Vec::new();
    };
    let Ok(parent) = Dir::open_follow(parent_path) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in parent.entries().unwrap_or_default() {
        let name = name.to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(SCRATCH_PREFIX) else {
            continue;
        };
        let pid: i32 = rest
            .split('.')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid > 0 && is_live_drill(pid) {
            continue;
        }
        let path = parent.display_path(&name);
        kill_server_in(&path.join(clone::DATA));
        unmount_all(&path);
        if parent.remove_tree(&name).is_ok() {
            removed.push(format!(
                "removed {} (left by an earlier drill that did not finish)",
                path.display()
            ));
        }
    }
    removed
}

/// Unmounts every overlay a drill mounted in its scratch directory (the clone and the
/// tablespace clones; entries that are no mount point are left alone).
fn unmount_all(scratch: &Path) {
    let Ok(d) = Dir::open(scratch) else {
        return;
    };
    for name in d.entries().unwrap_or_default() {
        clone::unmount(&scratch.join(name));
    }
}

fn is_live_drill(pid: i32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmd).contains("drill")
}

/// Kills (SIGKILL) a postmaster still running on a leftover clone.
fn kill_server_in(data: &Path) {
    let Some(pid) = crate::restore::running_postmaster(data) else {
        return;
    };
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmd).contains(&*data.to_string_lossy()) {
        // SAFETY: a postmaster whose command line names this leftover clone.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for _ in 0..100 {
            // SAFETY: signal 0 only checks for existence.
            if unsafe { libc::kill(pid, 0) } != 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The copy's major from its `PG_VERSION`, checked.
fn copy_major(pgdata: &Path) -> Result<u32> {
    let text = crate::bundle::read::read_capped(pgdata, "PG_VERSION", 64).map_err(|e| {
        Error::usage(format!(
            "{} is not a PostgreSQL data directory (PG_VERSION: {e})",
            pgdata.display()
        ))
        .hint("give --pgdata the directory the copy was restored to")
    })?;
    let text = String::from_utf8_lossy(&text);
    version::major_from_pg_version_file(&text).ok_or_else(|| {
        Error::new(
            Class::Check,
            format!(
                "{}/PG_VERSION names no supported major ({:?})",
                pgdata.display(),
                text.trim()
            ),
        )
        .hint(format!(
            "pgbookend supports PostgreSQL {} to {}",
            version::OLDEST_MAJOR,
            version::NEWEST_MAJOR
        ))
    })
}

/// Runs a drill: clone, prepare, recover, check, clean up, record.
pub fn drill(opts: &DrillOptions) -> Result<Record> {
    let started = crate::timefmt::rfc3339(crate::timefmt::now_unix());
    let major = copy_major(&opts.pgdata)?;
    if let Some(pid) = crate::restore::running_postmaster(&opts.pgdata) {
        return Err(Error::new(
            Class::Check,
            format!(
                "{} belongs to a running server (postmaster pid {pid})",
                opts.pgdata.display()
            ),
        )
        .hint("drill works on a restored copy with no server running on it"));
    }
    let owner = server::owner_of(&opts.pgdata)?;
    let bindir = server::find_bindir(major, opts.pg_bin.as_deref())?;
    install_signals();
    let warnings = remove_leftovers(&opts.pgdata);
    let scratch = Scratch::create(&opts.pgdata, &owner)?;
    let sdir = scratch.dir()?;
    let t0 = Instant::now();
    let method = clone_all(opts, &scratch, &sdir)?;
    let data = scratch.path.join(clone::DATA);
    let t1 = Instant::now();
    let prepared = prepare_clone(opts, &data, &scratch.path)?;
    let phase_seconds = record::Phases {
        clone: (t1 - t0).as_secs_f64(),
        prepare: t1.elapsed().as_secs_f64(),
        checks: 0.0,
    };
    let mut rec = Record {
        format: record::FORMAT,
        id: prepared.id,
        pgdata: opts.pgdata.display().to_string(),
        started,
        finished: String::new(),
        verdict: String::new(),
        clone_method: method,
        pg_major: major,
        server: bindir.join("postgres").display().to_string(),
        recovery_seconds: 0.0,
        phase_seconds,
        wal_replayed: None,
        pages_verified: prepared.pages,
        checks: checks::Checks::default(),
        stored_in: Vec::new(),
        warnings,
    };
    let ctx = Ctx {
        opts,
        scratch: &scratch,
        sdir: &sdir,
        bindir: &bindir,
        owner: &owner,
        major,
    };
    match &prepared.refused {
        // The copy was judged and refused: the drill's verdict, recorded like a check.
        Some(why) => rec.checks.prepare_refused(why),
        None => exercise(&ctx, &mut rec)?,
    }
    scratch.remove().map_err(|e| {
        Error::env(format!(
            "cannot remove the drill clone {}: {e}",
            scratch.path.display()
        ))
    })?;
    rec.finished = crate::timefmt::rfc3339(crate::timefmt::now_unix());
    rec.verdict = if rec.checks.failed == 0 {
        "passed"
    } else {
        "failed"
    }
    .into();
    let at = record::store(
        &rec,
        opts.store.as_deref(),
        opts.bundle.as_deref(),
        &opts.s3,
    )?;
    rec.stored_in.push(at);
    Ok(rec)
}

/// The scratch name of the clone of tablespace `oid`.
fn ts_name(oid: u32) -> String {
    format!("ts{oid}")
}

/// Clones the copy and each tablespace copy; the method reported is the costliest used
/// (a reflink only if every tree was reflinked).
fn clone_all(opts: &DrillOptions, scratch: &Scratch, sdir: &Dir) -> Result<clone::Method> {
    let links: Vec<String> = opts
        .tablespaces
        .iter()
        .map(|(oid, _)| format!("pg_tblspc/{oid}"))
        .collect();
    let mut method = clone::make_clone(
        &opts.pgdata,
        sdir,
        &scratch.path,
        clone::DATA,
        &links,
        &stopped,
    )?;
    for (oid, given) in &opts.tablespaces {
        // The operator's path is resolved once to the real directory (it may be reached
        // through a link of theirs); nothing below it is ever followed.
        let path = &std::fs::canonicalize(given).map_err(|e| {
            Error::usage(format!("--tablespace {oid}={}: {e}", given.display()))
                .hint("give the directory the tablespace's copy was restored to")
        })?;
        let m = clone::make_clone(path, sdir, &scratch.path, &ts_name(*oid), &[], &stopped)?;
        method = method.max(m);
    }
    Ok(method)
}

/// What preparing the clone gave: the backup ID, the pages prepare's page check judged,
/// and, when prepare refused the copy, why.
struct Prepared {
    id: String,
    pages: Option<u64>,
    refused: Option<String>,
}

/// Prepares the clone with the restore engine (the page check included; recovery to the
/// end of the backup, then promotion; each tablespace remapped to its clone). A refusal of
/// a copy whose backup is known is returned for the record; one before the backup is
/// known is an error.
fn prepare_clone(opts: &DrillOptions, data: &Path, scratch: &Path) -> Result<Prepared> {
    let popts = PrepareOptions {
        pgdata: data.to_path_buf(),
        store: opts.store.clone(),
        bundle: opts.bundle.clone(),
        id: opts.id.clone(),
        target: Some("immediate".into()),
        target_action: Some("promote".into()),
        tablespaces: opts
            .tablespaces
            .iter()
            .map(|(oid, _)| (*oid, scratch.join(ts_name(*oid))))
            .collect(),
        s3: opts.s3.clone(),
        ..PrepareOptions::default()
    };
    let report = crate::restore::exec::prepare(&popts)?;
    let pages = report.pages.as_ref().map(|p| p.pages);
    let refused = (!report.problems.is_empty()).then(|| {
        let list: Vec<&str> = report
            .problems
            .iter()
            .take(5)
            .map(|p| p.message.as_str())
            .collect();
        format!("prepare refused the copy: {}", list.join("; "))
    });
    let Some(id) = report.id else {
        return Err(match refused {
            Some(why) => Error::new(Class::Check, why).hint(
                "run `pgbookend verify --pgdata COPY` for the details; the copy was not changed",
            ),
            None => Error::internal("prepare reported no backup ID"),
        });
    };
    Ok(Prepared { id, pages, refused })
}

/// What the server steps of a drill work with.
struct Ctx<'a> {
    opts: &'a DrillOptions,
    scratch: &'a Scratch,
    sdir: &'a Dir,
    bindir: &'a Path,
    owner: &'a Owner,
    major: u32,
}

/// Starts the server on the prepared clone, waits for it to open, runs the checks, stops it.
fn exercise(ctx: &Ctx, rec: &mut Record) -> Result<()> {
    let (scratch, sdir, owner) = (ctx.scratch, ctx.sdir, ctx.owner);
    let data = &scratch.path.join(clone::DATA);
    sdir.mkdir("sock", 0o700)
        .and_then(|()| sdir.open_dir("sock"))
        .and_then(|d| d.set_owner_mode(owner.uid, owner.gid, 0o700))
        .map_err(|e| Error::env(format!("cannot create the socket directory: {e}")))?;
    let hba = scratch.path.join("pg_hba.conf");
    let own = crate::fsutil::Ownership {
        uid: owner.uid,
        gid: owner.gid,
        dir_mode: 0o700,
        file_mode: 0o600,
    };
    // Only the owner can reach the 0700 socket directory: trust is safe there.
    crate::fsutil::write_atomic(&hba, b"local all all trust\n", &own)?;
    let sock = scratch.path.join("sock");
    let log = scratch.path.join("server.log");
    let label =
        crate::bundle::read::read_capped(data, "backup_label", crate::bundle::read::MAX_TEXT_BYTES)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| BackupLabel::parse(&t).ok());
    let places = Places {
        pgdata: data,
        sock: &sock,
        log: &log,
        hba: &hba,
    };
    let mut srv = Server::start(ctx.bindir, &places, owner)?;
    SERVER_PID.store(srv.pid(), Ordering::SeqCst);
    let result = run_server(&mut srv, label, ctx, rec);
    SERVER_PID.store(0, Ordering::SeqCst);
    srv.stop();
    if stopped() {
        return Err(interrupted());
    }
    result
}

/// Waits for recovery, reads the WAL replayed, runs the checks.
fn run_server(
    srv: &mut Server,
    label: Option<BackupLabel>,
    ctx: &Ctx,
    rec: &mut Record,
) -> Result<()> {
    let limit = ctx.opts.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let took = match srv.wait_open(limit, &stopped) {
        Ok(t) => t,
        // A server that does not recover is the drill's verdict, recorded like a check.
        Err(e) if e.class() == Class::Check && !stopped() => {
            rec.checks.recovery_failed(&e.message);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    rec.recovery_seconds = took.as_secs_f64();
    test_hold();
    if let (Some(l), Ok(mut c)) = (label, srv.connect_any()) {
        let end = c
            .query("SELECT pg_last_wal_replay_lsn()::text", &[])
            .ok()
            .and_then(|r| r.scalar().and_then(|s| s.parse::<Lsn>().ok()));
        if let Some(end) = end {
            rec.wal_replayed = Some(WalReplayed {
                from_lsn: l.start_wal_location.to_string(),
                to_lsn: end.to_string(),
                bytes: end.0.saturating_sub(l.start_wal_location.0),
            });
        }
    }
    let settings = checks::Settings {
        heapam: version::has_verify_heapam(ctx.major),
        no_amcheck: ctx.opts.no_amcheck,
    };
    let t0 = Instant::now();
    rec.checks = checks::run_all(srv, &settings, &stopped)?;
    rec.phase_seconds.checks = t0.elapsed().as_secs_f64();
    Ok(())
}

/// Debug builds only: with `PGBOOKEND_TEST_DRILL_HOLD` set, waits with the server open
/// until a signal arrives, so that a test can kill drill at that point.
fn test_hold() {
    #[cfg(debug_assertions)]
    if std::env::var_os("PGBOOKEND_TEST_DRILL_HOLD").is_some() {
        while !stopped() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The human report of a drill.
pub fn render(r: &Record) -> String {
    let mut h = format!(
        "drill of backup {} on {}: {}\n",
        r.id,
        r.pgdata,
        if r.passed() { "PASSED" } else { "FAILED" }
    );
    h.push_str(&format!(
        "  clone: {}; server: {} (PostgreSQL {})\n",
        r.clone_method.describe(),
        r.server,
        r.pg_major
    ));
    h.push_str(&format!(
        "  recovery: {:.2} s until the server was consistent and open\n",
        r.recovery_seconds
    ));
    let p = &r.phase_seconds;
    h.push_str(&format!(
        "  time: clone {:.2} s, prepare {:.2} s (page check included), checks {:.2} s\n",
        p.clone, p.prepare, p.checks
    ));
    if let Some(w) = &r.wal_replayed {
        h.push_str(&format!(
            "  WAL replayed: {} to {} ({} bytes)\n",
            w.from_lsn, w.to_lsn, w.bytes
        ));
    }
    let c = &r.checks;
    h.push_str(&format!("  databases: {}\n", c.databases.join(", ")));
    h.push_str(&format!(
        "  checks: {} run, {} failed: {} B-tree indexes (amcheck, heapallindexed), {} heap relations ({}), {} tables counted\n",
        c.run,
        c.failed,
        c.btree_indexes,
        c.heap_relations,
        if c.heap_checked { "verify_heapam" } else { "verify_heapam not in this major" },
        c.table_counts
    ));
    for f in &c.failures {
        h.push_str(&format!(
            "  FAILED {} check of {} in database {}: {}\n",
            f.check, f.object, f.database, f.message
        ));
    }
    for w in &r.warnings {
        h.push_str(&format!("  note: {w}\n"));
    }
    for s in &r.stored_in {
        h.push_str(&format!("  recorded in {s}\n"));
    }
    h
}
