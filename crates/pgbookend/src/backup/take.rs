//! `pgbookend backup`: start the backup, copy PGDATA and its tablespaces into the stores
//! (`copy`), write the index, stop the backup (the bundle), then write PostgreSQL's
//! `backup_manifest`. Any failure or signal aborts the backup and removes `data/<id>/`
//! from every store: nothing is left that looks complete.

use super::copy::{self, Copied, CopySettings, Counters};
use super::format::{Compression, Index, FORMAT, INDEX};
use super::plan;
use super::sink::Sink;
use crate::agent::rundir::RunDir;
use crate::commands::{self, Begun, StartOptions};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT, SIGTERM or SIGHUP while a backup runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Options of `backup`.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub start: StartOptions,
    pub jobs: usize,
    pub compression: Compression,
    pub level: i32,
    pub wait_archive: Option<bool>,
    pub archive_timeout: Option<String>,
}

/// Where the copy is, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub files: u64,
    pub files_total: u64,
    pub elapsed: Duration,
}

/// What a finished backup did.
pub struct BackupReport {
    pub id: String,
    pub stores: Vec<String>,
    pub files: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub objects: u64,
    pub seconds: f64,
    /// Pages whose checksum failed twice with the same bytes.
    pub suspect_pages: Vec<super::pages::Suspect>,
    /// The stop's rendering (its JSON is the stop report).
    pub stop: Output,
}

/// What `backup` did: a backup, or a skip (`--only-on`).
pub enum Outcome {
    Done(Box<BackupReport>),
    Skipped(Output),
}

/// Parses `--compress`: `zstd`, `zstd:LEVEL` (1-19), `lz4` or `none`.
pub fn parse_compress(s: &str) -> Result<(Compression, i32)> {
    let bad = || {
        Error::usage(format!(
            "--compress {s:?}: expected zstd, zstd:LEVEL (1-19), lz4 or none"
        ))
    };
    match s.split_once(':') {
        None if s == "zstd" => Ok((Compression::Zstd, 3)),
        None if s == "none" => Ok((Compression::None, 0)),
        None if s == "lz4" => Ok((Compression::Lz4, 0)),
        Some(("zstd", l)) => match l.parse::<i32>() {
            Ok(l) if (1..=19).contains(&l) => Ok((Compression::Zstd, l)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a plain signal handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// `backup`: the whole built-in backup. `progress` is called about once a second.
pub fn backup(
    rd: &RunDir,
    cfg: &Config,
    opts: BackupOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome> {
    if opts.jobs == 0 || opts.jobs > 64 {
        return Err(Error::usage("--jobs must be between 1 and 64"));
    }
    install_signals();
    let started = match commands::start_backup(rd, cfg, opts.start.clone())? {
        Begun::Started(s) => *s,
        Begun::Skipped(skip) => return Ok(Outcome::Skipped(crate::ha::output(&skip, "backup"))),
    };
    let id = started.ready.id.clone();
    let stores: Vec<Store> = started
        .ready
        .stores
        .iter()
        .map(|u| Store::parse(u, &opts.start.s3))
        .collect::<Result<_>>()
        .inspect_err(|_| abort_quietly(rd, &id))?;
    let mut sinks = Vec::new();
    for s in &stores {
        match Sink::open(s, &id, opts.jobs) {
            Ok(sink) => sinks.push(sink),
            Err(e) => return Err(fail(rd, &id, &sinks, e)),
        }
    }
    let t0 = Instant::now();
    let counters = Counters::default();
    let copied = match copy_with_progress(&started.ready.pgdata, &sinks, &opts, &counters, progress)
    {
        Ok(c) => c,
        Err(e) => return Err(fail(rd, &id, &sinks, e)),
    };
    let index = match write_index(&sinks, &id, opts.compression, copied) {
        Ok(ix) => ix,
        Err(e) => return Err(fail(rd, &id, &sinks, e)),
    };
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(fail(rd, &id, &sinks, interrupted()));
    }
    let stopped = match commands::stop_backup(
        rd,
        cfg,
        &id,
        opts.wait_archive,
        opts.archive_timeout.as_deref(),
        &opts.start.s3,
    ) {
        Ok(s) => s,
        Err(e) => return Err(fail(rd, &id, &sinks, e)),
    };
    let mut stop = stopped.output;
    if let Some(report) = &stopped.report {
        let written = super::stored_manifest::write(&stores, &sinks, &id, &index.entries, report);
        if let (Err(e), None) = (written, &stop.error) {
            stop.error = Some(e.hint(format!(
                "backup {id} is complete, but its backup_manifest was not stored: a restore writes one from the index"
            )));
        }
    }
    let mut suspect_pages = counters
        .suspects
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    super::judge::judge(&stores, &id, &mut suspect_pages);
    Ok(Outcome::Done(Box::new(BackupReport {
        id,
        stores: stores.iter().map(Store::url).collect(),
        files: counters.files.load(Ordering::Relaxed),
        bytes_read: counters.bytes_read.load(Ordering::Relaxed),
        bytes_stored: counters.bytes_stored.load(Ordering::Relaxed),
        objects: counters.objects.load(Ordering::Relaxed),
        seconds: t0.elapsed().as_secs_f64(),
        suspect_pages,
        stop,
    })))
}

fn interrupted() -> Error {
    Error::void("the backup was interrupted by a signal: it was aborted and its data removed")
        .hint("take a new backup")
}

/// Plans and copies, calling `progress` from this thread while the copy runs.
fn copy_with_progress(
    pgdata: &str,
    sinks: &[Sink],
    opts: &BackupOptions,
    counters: &Counters,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Copied> {
    let pages = super::pages::settings(std::path::Path::new(pgdata))?;
    let planned = plan::plan(std::path::Path::new(pgdata))?;
    let files_total = planned
        .iter()
        .filter(|p| p.kind == super::format::Kind::File)
        .count() as u64;
    let bytes_total: u64 = planned.iter().map(|p| p.size).sum();
    let settings = CopySettings {
        jobs: opts.jobs,
        compression: opts.compression,
        level: opts.level,
        pages,
    };
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let h = s.spawn(|| copy::copy(&planned, sinks, settings, counters, &INTERRUPTED));
        let mut last = Instant::now();
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress(&Progress {
                    bytes_read: counters.bytes_read.load(Ordering::Relaxed),
                    bytes_total,
                    files: counters.files.load(Ordering::Relaxed),
                    files_total,
                    elapsed: t0.elapsed(),
                });
            }
        }
        h.join()
            .unwrap_or_else(|_| Err(Error::internal("the copy thread panicked")))
    })
    .map_err(|e| {
        if INTERRUPTED.load(Ordering::SeqCst) {
            interrupted()
        } else {
            e
        }
    })
}

fn write_index(sinks: &[Sink], id: &str, compression: Compression, c: Copied) -> Result<Index> {
    let ix = Index {
        format: FORMAT,
        id: id.to_string(),
        compression,
        entries: c.entries,
        objects: c.objects,
    };
    let bytes = ix.to_bytes()?;
    // What is written must read back as a valid index.
    Index::parse(&bytes, id)?;
    for s in sinks {
        s.put(INDEX, &bytes)?;
    }
    Ok(ix)
}

/// Aborts the backup and removes its data from every store; returns `e` with what
/// could not be cleaned up added as hints.
fn fail(rd: &RunDir, id: &str, sinks: &[Sink], e: Error) -> Error {
    let mut e = e;
    if let Err(a) = commands::abort(rd, id) {
        e = e.hint(format!("aborting backup {id} failed too: {}", a.message));
    }
    for s in sinks {
        if let Err(r) = s.remove_all() {
            e = e.hint(format!("its data could not be removed: {}", r.message));
        }
    }
    e.hint(format!("backup {id} was aborted; nothing of it is kept"))
}

fn abort_quietly(rd: &RunDir, id: &str) {
    let _ = commands::abort(rd, id);
}
