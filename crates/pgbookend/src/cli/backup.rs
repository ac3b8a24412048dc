//! The options of `start`, `run` and `backup`, and the runs of `run` and `backup`.

use super::render::{fail, print};
use crate::notify;
use clap::Args;
use pgbookend::agent::rundir::RunDir;
use pgbookend::commands::StartOptions;
use pgbookend::config::Config;
use pgbookend::output::Output;
use pgbookend::store::s3::Settings as S3Settings;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct StartArgs {
    /// Backup ID (default: UTC time plus a random suffix). Also the server-side label.
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Where the bundle goes: a directory, file:///dir or s3://bucket/prefix. Repeat for
    /// several stores (each gets a full bundle).
    #[arg(long = "store", value_name = "URL")]
    pub(crate) stores: Vec<String>,
    /// The data directory (default: the server's data_directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) pgdata: Option<PathBuf>,
    /// libpq connection string or URI (no password: use ~/.pgpass or PGPASSFILE).
    #[arg(short = 'd', long = "dbname", value_name = "CONNINFO")]
    pub(crate) conninfo: Option<String>,
    /// Immediate checkpoint at start (the default).
    #[arg(long, conflicts_with = "spread")]
    pub(crate) fast: bool,
    /// Spread the start checkpoint (checkpoint_completion_target) instead.
    #[arg(long)]
    pub(crate) spread: bool,
    /// Abort the backup if it is not stopped within this time (default 24h).
    #[arg(long, value_name = "DUR")]
    pub(crate) timeout: Option<String>,
    /// How often the agent checks its session (default 10s).
    #[arg(long, value_name = "DUR")]
    pub(crate) heartbeat: Option<String>,
    /// How the WAL of the window is kept: collect (into the bundle; default), archive
    /// (confirm it is in --archive DIR, or without it in the pgbookend archive of the
    /// stores, pushing what the archiver has not yet), none (you keep it; restore needs an
    /// archive).
    #[arg(long, value_name = "MODE")]
    pub(crate) wal: Option<String>,
    /// The WAL archive directory (for --wal archive; without it, the stores' archive).
    #[arg(long, value_name = "DIR")]
    pub(crate) archive: Option<PathBuf>,
    /// How many stores must take the bundle for stop to succeed (default: all).
    #[arg(long, value_name = "N")]
    pub(crate) min_stores: Option<usize>,
    /// Back up only on a server of this role (primary or standby; config only_on): on the
    /// other, start (and run) exits 0 saying it skipped, and stop --id of it exits 0 too.
    #[arg(long, value_name = "ROLE", value_parser = ["primary", "standby"])]
    pub(crate) only_on: Option<String>,
}

impl StartArgs {
    pub(crate) fn options(self, s3: &S3Settings) -> StartOptions {
        StartOptions {
            id: self.id,
            stores: self.stores,
            pgdata: self.pgdata,
            conninfo: self.conninfo,
            spread: self.spread,
            timeout: self.timeout,
            heartbeat: self.heartbeat,
            wal: self.wal,
            archive: self.archive,
            min_stores: self.min_stores,
            only_on: self.only_on,
            s3: s3.clone(),
        }
    }
}

/// Options of `run`: those of start, those of stop, --then, and the command.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) start: StartArgs,
    /// Shell command run after a successful stop, with PGBOOKEND_BUNDLE set to the bundle
    /// directory: typically the same program backing up the bundle.
    #[arg(long, value_name = "CMD")]
    pub(crate) then: Option<String>,
    #[command(flatten)]
    pub(crate) archive: WaitArchiveArgs,
    /// The copy command and its arguments, after `--`. It gets PGBOOKEND_ID,
    /// PGBOOKEND_PGDATA, PGBOOKEND_TABLESPACES (one per line), PGBOOKEND_START_LSN and
    /// PGBOOKEND_STORE in its environment.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<std::ffi::OsString>,
}

/// Options of `backup`: those of start, the copy's, and those of stop.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    pub(crate) start: StartArgs,
    /// Threads that compress and store objects, and uploads at once to an S3 store
    /// (default 2).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub(crate) jobs: usize,
    /// zstd (level 3), zstd:LEVEL (1-19), lz4 (faster, larger) or none.
    #[arg(long, value_name = "HOW", default_value = "zstd")]
    pub(crate) compress: String,
    #[command(flatten)]
    pub(crate) archive: WaitArchiveArgs,
}

/// `backup`: the built-in copy, with progress on stderr.
pub(crate) fn backup_command(
    run: &RunDir,
    cfg: &Config,
    s3: &S3Settings,
    a: BackupArgs,
    json: bool,
) -> pgbookend::error::Result<Output> {
    use pgbookend::backup::take;
    let (compression, level) = take::parse_compress(&a.compress)?;
    let opts = take::BackupOptions {
        start: a.start.options(s3),
        jobs: a.jobs,
        compression,
        level,
        wait_archive: a.archive.wait(),
        archive_timeout: a.archive.archive_timeout,
    };
    let mut bar = pgbookend::backup::render::ProgressLine::new();
    let out = take::backup(run, cfg, opts, &mut |p| bar.show(p));
    bar.finish();
    Ok(match out? {
        take::Outcome::Skipped(o) => o,
        take::Outcome::Done(r) => pgbookend::backup::render::summary(&r, json),
    })
}

/// `run` exits with its own code: COMMAND's when COMMAND failed.
pub(crate) fn run_command(
    run: &RunDir,
    cfg: &Config,
    s3: &S3Settings,
    a: RunArgs,
    json: bool,
    hooks: &pgbookend::notify::Hooks,
) -> ExitCode {
    let wait_archive = a.archive.wait();
    let opts = pgbookend::run::RunOptions {
        start: a.start.options(s3),
        command: a.command,
        then: a.then,
        wait_archive,
        archive_timeout: a.archive.archive_timeout,
        json,
    };
    match pgbookend::run::run(run, cfg, opts) {
        Ok(r) => {
            print(&r.output, json);
            let code = r.code.clamp(0, 255) as u8;
            let id = r.output.json["id"].as_str();
            notify(
                hooks,
                "run",
                id,
                code,
                &r.output.json,
                r.output.error.as_ref(),
            );
            ExitCode::from(code)
        }
        Err(e) => {
            let code = fail(&e, json);
            let report = serde_json::json!({ "error": &e });
            notify(
                hooks,
                "run",
                None,
                e.class().exit_code() as u8,
                &report,
                Some(&e),
            );
            code
        }
    }
}

/// Whether and how long `stop` waits for the server to archive the stop segment: the
/// flags of `stop`, `run` and `backup`.
#[derive(Args, Debug)]
pub(crate) struct WaitArchiveArgs {
    /// Do not wait for the server to archive the stop segment (default with --wal
    /// collect and --wal archive, whose WAL is already safe).
    #[arg(long, conflicts_with = "wait_archive")]
    pub(crate) no_wait_archive: bool,
    /// Wait for the server to archive the stop segment (default with --wal none).
    #[arg(long)]
    pub(crate) wait_archive: bool,
    /// How long to wait for archiving before failing (exit 5), e.g. 10m.
    #[arg(long, value_name = "DUR")]
    pub(crate) archive_timeout: Option<String>,
}

impl WaitArchiveArgs {
    /// What the flags say: `Some(true)` wait, `Some(false)` do not, `None` the default.
    pub(crate) fn wait(&self) -> Option<bool> {
        match (self.wait_archive, self.no_wait_archive) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}
