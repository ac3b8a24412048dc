//! The WAL archive commands' options and their runs: `archive-push` (and its hidden
//! pusher), `archive-get` (and its hidden prefetch worker).

use super::render::fail;
use crate::notify;
use clap::Args;
use pgbookend::config::Config;
use pgbookend::error::Error;
use pgbookend::store::s3::Settings as S3Settings;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `archive-push`.
#[derive(Args, Debug)]
pub(crate) struct ArchivePushArgs {
    /// The WAL file (PostgreSQL's %p, relative to the data directory).
    #[arg(value_name = "PATH")]
    pub(crate) path: PathBuf,
    /// An archive store (repeatable; default: archive_store, else store, from the config).
    #[arg(long = "store", value_name = "URL")]
    pub(crate) stores: Vec<String>,
    /// The data directory (default: the working directory, where PostgreSQL runs it).
    #[arg(long, value_name = "DIR")]
    pub(crate) pgdata: Option<PathBuf>,
    /// How many stores must hold the file (default: config archive_min_stores, else all).
    #[arg(long, value_name = "N")]
    pub(crate) min_stores: Option<usize>,
    /// zstd level, 1 to 19 (default: config archive_compress_level, else 3).
    #[arg(long, value_name = "N")]
    pub(crate) compress_level: Option<i32>,
    /// Return once the file is durable in a local spool; a background pusher (started on
    /// demand, exits when idle) stores it (default: config archive_async, else off).
    #[arg(long = "async", overrides_with = "no_async")]
    pub(crate) async_: bool,
    /// Push synchronously even if the config says archive_async = true.
    #[arg(long = "no-async")]
    pub(crate) no_async: bool,
    /// The asynchronous spool (default: config archive_spool, else
    /// <state dir>/archive-spool); one subdirectory per cluster.
    #[arg(long, value_name = "DIR")]
    pub(crate) spool: Option<PathBuf>,
    /// Fail instead of spooling when the spool would hold more than N bytes (default:
    /// config archive_spool_max, else 1 GiB).
    #[arg(long, value_name = "N")]
    pub(crate) spool_max: Option<u64>,
    /// Parallel pushes of the pusher (default: config archive_push_jobs, else 2).
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
}

impl ArchivePushArgs {
    pub(crate) fn settings(
        &self,
        cfg: &Config,
        s3: &S3Settings,
    ) -> Result<pgbookend::archive::Settings, Error> {
        pgbookend::archive::Settings::resolve(
            cfg,
            &self.stores,
            s3,
            self.compress_level,
            self.min_stores,
            self.pgdata.as_deref(),
        )
    }

    /// The asynchronous mode's options, when it is on.
    pub(crate) fn spool(
        &self,
        cfg: &Config,
    ) -> Result<Option<pgbookend::archive::spool::Options>, Error> {
        let on = !self.no_async && (self.async_ || cfg.archive_async.unwrap_or(false));
        if !on {
            return Ok(None);
        }
        pgbookend::archive::spool::Options::resolve(
            cfg,
            self.spool.as_deref(),
            self.spool_max,
            self.jobs,
        )
        .map(Some)
    }
}

/// Options of `archive-get`.
#[derive(Args, Debug)]
pub(crate) struct ArchiveGetArgs {
    /// The WAL file name (PostgreSQL's %f).
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// Where to put it (PostgreSQL's %p), inside the data directory.
    #[arg(value_name = "PATH")]
    pub(crate) dest: String,
    /// An archive store (repeatable; default: archive_store, else store, from the config).
    #[arg(long = "store", value_name = "URL")]
    pub(crate) stores: Vec<String>,
    /// The data directory (default: the working directory, where PostgreSQL runs it).
    #[arg(long, value_name = "DIR")]
    pub(crate) pgdata: Option<PathBuf>,
    /// Fetch the next N segments in the background during recovery (default: config
    /// archive_get_prefetch, else 0).
    #[arg(long, value_name = "N")]
    pub(crate) prefetch: Option<u32>,
    /// How many segments the prefetch fetches at once (default: config archive_get_jobs,
    /// else the number of cores).
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
}

/// `archive-push`: silent on success (its stdout lands in the server log for every
/// segment); a store that failed while enough others took the file is a warning.
/// A failure runs the `--on-failure` command (event `archive-push`); a success notifies
/// nobody (it happens once per segment).
pub(crate) fn archive_push(
    cfg: &Config,
    s3: &S3Settings,
    a: ArchivePushArgs,
    json: bool,
    hooks: &pgbookend::notify::Hooks,
) -> ExitCode {
    use pgbookend::archive::{push, spool};
    let queued = a.settings(cfg, s3).and_then(|s| match a.spool(cfg)? {
        Some(o) => spool::submit(&s, &o, &a.path).map(Err),
        None => push::push(&s, &a.path).map(Ok),
    });
    let r = match queued {
        Ok(Err(q)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&q).unwrap_or_default());
            }
            return ExitCode::SUCCESS;
        }
        Ok(Ok(r)) => Ok(r),
        Err(e) => Err(e),
    };
    match r {
        Ok(r) => {
            for (url, e) in &r.failed {
                eprintln!("pgbookend: warning: {} not archived in {url}: {e}", r.name);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = fail(&e, json);
            let report = serde_json::json!({
                "error": &e,
                "path": a.path.display().to_string(),
            });
            let exit = e.class().exit_code() as u8;
            notify(hooks, "archive-push", None, exit, &report, Some(&e));
            code
        }
    }
}

/// The detached pusher an earlier `archive-push --async` started (hidden): no output.
pub(crate) fn archive_pusher(cfg: &Config, s3: &S3Settings, a: ArchivePushArgs) -> ExitCode {
    if let (Ok(s), Ok(o)) = (
        a.settings(cfg, s3),
        pgbookend::archive::spool::Options::resolve(cfg, a.spool.as_deref(), a.spool_max, a.jobs),
    ) {
        pgbookend::archive::spool::work(&s, &o);
    }
    ExitCode::SUCCESS
}

/// The detached prefetch worker an earlier `archive-get` started (hidden): no output at all.
pub(crate) fn archive_prefetch(cfg: &Config, s3: &S3Settings, a: ArchiveGetArgs) -> ExitCode {
    let s = pgbookend::archive::Settings::resolve(
        cfg,
        &a.stores,
        s3,
        None,
        Some(1),
        a.pgdata.as_deref(),
    )
    .and_then(|s| pgbookend::archive::with_prefetch(s, cfg, a.prefetch, a.jobs));
    if let Ok(s) = &s {
        pgbookend::archive::prefetch::work(s, &a.dest);
    }
    ExitCode::SUCCESS
}

/// `archive-get`: exit 1 with one short line when no store has the file, so that
/// recovery ends cleanly at the end of the archive.
pub(crate) fn archive_get(
    cfg: &Config,
    s3: &S3Settings,
    a: ArchiveGetArgs,
    json: bool,
) -> ExitCode {
    use pgbookend::archive::{get, Settings};
    // One store with the file is enough to read it: archive_min_stores is for writing.
    let s = Settings::resolve(cfg, &a.stores, s3, None, Some(1), a.pgdata.as_deref())
        .and_then(|s| pgbookend::archive::with_prefetch(s, cfg, a.prefetch, a.jobs));
    let r = s.and_then(|s| get::get(&s, &a.name, &a.dest));
    match r {
        Ok(get::Fetched::Restored(r)) => {
            for e in &r.skipped {
                eprintln!("pgbookend: warning: {e}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Ok(get::Fetched::Missing) => {
            if json {
                println!("{}", serde_json::json!({ "name": a.name, "found": false }));
            }
            eprintln!("pgbookend: {} is not in the archive", a.name);
            ExitCode::from(1)
        }
        Err(e) => fail(&e, json),
    }
}
