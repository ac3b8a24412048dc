//! The `pgbookend` command line: parses arguments and prints what the engine returns.

use clap::{Args, Parser, Subcommand};
use pgbookend::agent::rundir::RunDir;
use pgbookend::commands::{self, StartOptions};
use pgbookend::config::Config;
use pgbookend::error::{Class, Error};
use pgbookend::output::Output;
use pgbookend::restore::PrepareOptions;
use pgbookend::store::s3::Settings as S3Settings;
use pgbookend::verify::PageCheckMode;
use std::path::PathBuf;
use std::process::ExitCode;

/// Safe PostgreSQL physical backups through the non-exclusive low-level API, for any copy method.
///
/// Exit codes: 0 done and safe; 1 internal error; 2 usage error (nothing changed);
/// 3 backup void (take a new one); 4 environment problem (nothing changed);
/// 5 bundle written but WAL not confirmed safe; 6 check failed (prepare refused and changed
/// nothing; verify or guard found problems); 7 label saved but bundle incomplete (run
/// `pgbookend rescue`); 8 prepare changed the copy and did not finish (run it again).
#[derive(Parser, Debug)]
#[command(name = "pgbookend", version, about, long_about)]
struct Cli {
    /// Directory of the agents' sockets, state and logs (default: /run/pgbookend for root,
    /// $XDG_RUNTIME_DIR/pgbookend, or /tmp/pgbookend-UID; env PGBOOKEND_RUN_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Print JSON instead of human text.
    #[arg(long, global = true)]
    json: bool,
    /// S3 stores: the endpoint of an S3-compatible service, e.g. https://minio:9000 (default:
    /// AWS_ENDPOINT_URL, ~/.aws/config, else AWS). Credentials: AWS_* env or ~/.aws files.
    #[arg(long, global = true, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 stores: the region (default: AWS_REGION, ~/.aws/config, else us-east-1).
    #[arg(long, global = true, value_name = "REGION")]
    s3_region: Option<String>,
    /// S3 stores: path-style addressing (endpoint/bucket/key; the default with an endpoint).
    #[arg(long, global = true)]
    s3_path_style: bool,
    /// After stop, run or backup succeeds: run CMD (sh -c) with the JSON report on stdin and
    /// PGBOOKEND_EVENT/STATUS/EXIT_CODE/ID/ERROR in its environment (config on_success).
    #[arg(long, global = true, value_name = "CMD")]
    on_success: Option<String>,
    /// After stop, run, backup or archive-push fails: run CMD as --on-success does (config
    /// on_failure). Neither changes pgbookend's exit code.
    #[arg(long, global = true, value_name = "CMD")]
    on_failure: Option<String>,
    /// Kill a notification command (and everything it started) after DUR (default 60s).
    #[arg(long, global = true, value_name = "DUR")]
    notify_timeout: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a backup: the pre-backup hook. Returns once the backup is in progress.
    Start(StartArgs),
    /// Run one whole backup around COMMAND (the copy): start, COMMAND, then stop if it
    /// exits 0 (and --then CMD) or abort if it fails; exits with COMMAND's code on failure.
    Run(RunArgs),
    /// Take a whole backup without a backup program: start, copy PGDATA and its
    /// tablespaces into the stores (compressed, hashed, in parallel), stop.
    Backup(BackupArgs),
    /// Stop a backup and write its bundle: the post-backup hook. Run again on a rescuable
    /// backup (exit 7), it completes the bundle as `rescue` does. Of a backup that start
    /// skipped (--only-on), it exits 0 and does nothing.
    Stop {
        /// The backup ID given to (or printed by) start.
        #[arg(long)]
        id: String,
        /// Do not wait for the server to archive the stop segment (default with --wal
        /// collect and --wal archive, whose WAL is already safe).
        #[arg(long, conflicts_with = "wait_archive")]
        no_wait_archive: bool,
        /// Wait for the server to archive the stop segment (default with --wal none).
        #[arg(long)]
        wait_archive: bool,
        /// How long to wait for archiving before failing (exit 5), e.g. 10m.
        #[arg(long, value_name = "DUR")]
        archive_timeout: Option<String>,
    },
    /// Show one backup's state, or every backup this run directory knows.
    Status {
        #[arg(long)]
        id: Option<String>,
    },
    /// Abort a backup: end its session so the server aborts it.
    Abort {
        #[arg(long)]
        id: String,
    },
    /// Forget backups whose agent is gone, and remove stale markers.
    Cleanup {
        /// Also remove stale markers from this data directory.
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
    },
    /// Turn a restored copy into a data directory that recovers correctly, or refuse.
    Prepare(PrepareArgs),
    /// Restore a built-in backup (`pgbookend backup`) from a store into a data directory,
    /// then prepare it exactly as `prepare` does; `--delta` re-seeds an existing copy.
    Restore(RestoreArgs),
    /// Check a restored copy against its bundle (every check of prepare, read-only), or
    /// one bundle on its own (--store/--bundle with --id).
    Verify(PrepareArgs),
    /// A real test restore: clone the restored copy, prepare the clone, recover it with a
    /// server of its major on a private socket, run amcheck and count every table, remove
    /// everything, and record the verdict (drill.json) next to the bundle.
    Drill(DrillArgs),
    /// For ExecStartPre=: refuse to start a server on a copy that was never prepared.
    Guard {
        #[arg(long, value_name = "DIR")]
        pgdata: PathBuf,
    },
    /// List the bundles of a store (complete and partial), oldest first.
    List {
        /// A directory, file:///dir or s3://bucket/prefix.
        #[arg(long, value_name = "URL")]
        store: String,
    },
    /// Show everything about one bundle of a store.
    Show {
        #[arg(long, value_name = "URL")]
        store: String,
        #[arg(long)]
        id: String,
    },
    /// Remove old bundles from a store; the newest complete bundle of each cluster stays.
    Expire(ExpireArgs),
    /// Complete the bundle of a stopped backup whose stop did not finish (exit 7): from
    /// its saved label and the WAL still in pg_wal or the archive, bundle.json last.
    Rescue {
        /// The backup ID.
        #[arg(long)]
        id: String,
        /// Where the bundle goes (default: the stores of the backup's start). Repeatable.
        #[arg(long = "store", value_name = "URL")]
        stores: Vec<String>,
        /// A WAL archive directory to read the window's WAL from (plain or .zst), when
        /// pg_wal no longer holds it (default: the backup's --archive).
        #[arg(long, value_name = "DIR")]
        archive: Option<PathBuf>,
    },
    /// Prometheus metrics (text exposition) of the stores and the running backups, for the
    /// node_exporter textfile collector (--output FILE) or stdout.
    Metrics {
        /// A store to report on (default: the config's `store` list). Repeatable.
        #[arg(long = "store", value_name = "URL")]
        stores: Vec<String>,
        /// Write the metrics to FILE atomically (mode 0644) instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (pgbookend.1 and pgbookend-COMMAND.1) into DIR (packaging).
    #[command(name = "__manpages", hide = true)]
    Manpages { dir: PathBuf },
    /// Would a backup succeed? Checks the server's archiving (a forced WAL switch must
    /// reach the archive), the role's grants, the replication slot --wal collect needs,
    /// every store (a probe object written, read, removed), the run and state
    /// directories and the config file. Exit 0 when all is well, 6 otherwise.
    Check(CheckArgs),
    /// archive_command: archive one WAL file into every archive store, durably and
    /// verified (`archive_command = 'pgbookend archive-push %p'`). Silent on success.
    /// With --async, returns once the file is durable in a local spool and a background
    /// pusher stores it.
    ArchivePush(ArchivePushArgs),
    /// restore_command: restore one archived WAL file, checked, into %p
    /// (`restore_command = 'pgbookend archive-get %f %p'`). Exit 1 when no store has it.
    ArchiveGet(ArchiveGetArgs),
    /// The prefetch worker `archive-get --prefetch` starts (internal).
    #[command(name = "__archive-prefetch", hide = true)]
    ArchivePrefetch(ArchiveGetArgs),
    /// The pusher `archive-push --async` starts (internal).
    #[command(name = "__archive-pusher", hide = true)]
    ArchivePusher(ArchivePushArgs),
    #[command(name = "__agent", hide = true)]
    Agent { id: String },
}

/// Options of `archive-push`.
#[derive(Args, Debug)]
struct ArchivePushArgs {
    /// The WAL file (PostgreSQL's %p, relative to the data directory).
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// An archive store (repeatable; default: archive_store, else store, from the config).
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,
    /// The data directory (default: the working directory, where PostgreSQL runs it).
    #[arg(long, value_name = "DIR")]
    pgdata: Option<PathBuf>,
    /// How many stores must hold the file (default: config archive_min_stores, else all).
    #[arg(long, value_name = "N")]
    min_stores: Option<usize>,
    /// zstd level, 1 to 19 (default: config archive_compress_level, else 3).
    #[arg(long, value_name = "N")]
    compress_level: Option<i32>,
    /// Return once the file is durable in a local spool; a background pusher (started on
    /// demand, exits when idle) stores it (default: config archive_async, else off).
    #[arg(long = "async", overrides_with = "no_async")]
    async_: bool,
    /// Push synchronously even if the config says archive_async = true.
    #[arg(long = "no-async")]
    no_async: bool,
    /// The asynchronous spool (default: config archive_spool, else
    /// <state dir>/archive-spool); one subdirectory per cluster.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Fail instead of spooling when the spool would hold more than N bytes (default:
    /// config archive_spool_max, else 1 GiB).
    #[arg(long, value_name = "N")]
    spool_max: Option<u64>,
    /// Parallel pushes of the pusher (default: config archive_push_jobs, else 2).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
}

impl ArchivePushArgs {
    fn settings(
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
    fn spool(&self, cfg: &Config) -> Result<Option<pgbookend::archive::spool::Options>, Error> {
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

/// Options of `check`.
#[derive(Args, Debug)]
struct CheckArgs {
    /// libpq connection string or URI, as for start (default: the libpq environment).
    #[arg(short = 'd', long = "dbname", value_name = "CONNINFO")]
    conninfo: Option<String>,
    /// A bundle store (repeatable; default: the config's store).
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,
    /// An archive store (repeatable; default: archive_store, else store, from the config).
    #[arg(long = "archive-store", value_name = "URL")]
    archive_stores: Vec<String>,
    /// The WAL mode backups will use: collect, archive or none (default: config wal, else
    /// collect). collect needs a free replication slot and the REPLICATION attribute.
    #[arg(long, value_name = "MODE")]
    wal: Option<String>,
    /// How long the forced WAL switch may take to reach the archive (default 60s).
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
}

impl CheckArgs {
    fn run(self, run: &RunDir, cfg: &Config, s3: &S3Settings) -> Result<Output, Error> {
        use pgbookend::check;
        let wal = check::WalMode::parse(
            self.wal
                .as_deref()
                .or(cfg.wal.as_deref())
                .unwrap_or("collect"),
        )?;
        let timeout = match &self.timeout {
            Some(d) => pgbookend::timefmt::parse_duration(d)
                .map_err(|e| Error::usage(format!("--timeout: {e}")))?,
            None => std::time::Duration::from_secs(60),
        };
        let archive_stores = if !self.archive_stores.is_empty() {
            self.archive_stores
        } else if !cfg.archive_store.is_empty() {
            cfg.archive_store.clone()
        } else {
            cfg.store.clone()
        };
        let config_path = match std::env::var_os("PGBOOKEND_CONFIG").filter(|p| !p.is_empty()) {
            Some(p) => Some(PathBuf::from(p)),
            None => Some(PathBuf::from(pgbookend::config::SYSTEM_CONFIG)).filter(|p| p.exists()),
        };
        let o = check::Options {
            conninfo: self.conninfo.or(cfg.conninfo.clone()),
            wal,
            archive_stores,
            bundle_stores: if self.stores.is_empty() {
                cfg.store.clone()
            } else {
                self.stores
            },
            timeout,
            run_dir: run.root.clone(),
            state_dir: pgbookend::config::state_root(),
            config_path,
            config_has_secret: cfg
                .conninfo
                .as_deref()
                .is_some_and(pgbookend::config::conninfo_has_password),
            s3: s3.clone(),
        };
        let r = check::run(&o);
        let error = (!r.ok).then(|| {
            Error::new(Class::Check, "check failed: a backup would not succeed")
                .hint("fix the FAIL lines and run check again")
        });
        Ok(Output {
            json: serde_json::to_value(&r).map_err(|e| Error::internal(e.to_string()))?,
            human: check::render(&r),
            error,
        })
    }
}

/// Options of `archive-get`.
#[derive(Args, Debug)]
struct ArchiveGetArgs {
    /// The WAL file name (PostgreSQL's %f).
    #[arg(value_name = "NAME")]
    name: String,
    /// Where to put it (PostgreSQL's %p), inside the data directory.
    #[arg(value_name = "PATH")]
    dest: String,
    /// An archive store (repeatable; default: archive_store, else store, from the config).
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,
    /// The data directory (default: the working directory, where PostgreSQL runs it).
    #[arg(long, value_name = "DIR")]
    pgdata: Option<PathBuf>,
    /// Fetch the next N segments in the background during recovery (default: config
    /// archive_get_prefetch, else 0).
    #[arg(long, value_name = "N")]
    prefetch: Option<u32>,
    /// How many segments the prefetch fetches at once (default: config archive_get_jobs,
    /// else the number of cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
}

/// `archive-push`: silent on success (its stdout lands in the server log for every
/// segment); a store that failed while enough others took the file is a warning.
/// A failure runs the `--on-failure` command (event `archive-push`); a success notifies
/// nobody (it happens once per segment).
fn archive_push(
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
fn archive_pusher(cfg: &Config, s3: &S3Settings, a: ArchivePushArgs) -> ExitCode {
    if let (Ok(s), Ok(o)) = (
        a.settings(cfg, s3),
        pgbookend::archive::spool::Options::resolve(cfg, a.spool.as_deref(), a.spool_max, a.jobs),
    ) {
        pgbookend::archive::spool::work(&s, &o);
    }
    ExitCode::SUCCESS
}

/// The detached prefetch worker an earlier `archive-get` started (hidden): no output at all.
fn archive_prefetch(cfg: &Config, s3: &S3Settings, a: ArchiveGetArgs) -> ExitCode {
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
fn archive_get(cfg: &Config, s3: &S3Settings, a: ArchiveGetArgs, json: bool) -> ExitCode {
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

/// Options of `prepare` and `verify`.
#[derive(Args, Debug)]
struct PrepareArgs {
    /// The restored copy (prepare: required; verify: omit to check only a bundle).
    #[arg(long, value_name = "DIR")]
    pgdata: Option<PathBuf>,
    /// Where the bundle is (default: the stores named in the copy's marker).
    #[arg(long, value_name = "URL", conflicts_with = "bundle")]
    store: Option<String>,
    /// A bundle directory restored from a backup program.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// The backup ID (default: from the copy's marker).
    #[arg(long)]
    id: Option<String>,
    /// immediate | latest | time=TS | lsn=LSN | xid=XID | name=NAME (default: immediate,
    /// or latest with an archive or --standby).
    #[arg(long, value_name = "TARGET")]
    target: Option<String>,
    /// promote | pause | shutdown (default promote).
    #[arg(long, value_name = "ACTION")]
    target_action: Option<String>,
    /// A WAL archive directory for recovery (compressed forms too).
    #[arg(long, value_name = "DIR", conflicts_with = "restore_command")]
    archive: Option<PathBuf>,
    /// A restore_command for recovery (%f, %p).
    #[arg(long, value_name = "CMD")]
    restore_command: Option<String>,
    /// Start as a standby (standby.signal) instead of recovering and opening.
    #[arg(long)]
    standby: bool,
    /// primary_conninfo for --standby (no password: use the standby's ~/.pgpass).
    #[arg(long, value_name = "CONNINFO", requires = "standby")]
    primary_conninfo: Option<String>,
    /// Put tablespace OID at PATH (repeatable): a new or empty directory, or where this
    /// backup's copy of the tablespace was restored.
    #[arg(long = "tablespace", value_name = "OID=PATH")]
    tablespaces: Vec<String>,
    /// Keep the restored server's WAL in DIR (new or empty; pg_wal becomes a link to it):
    /// required when the copy's pg_wal is a link (a cluster made with initdb -X).
    #[arg(long, value_name = "DIR")]
    waldir: Option<PathBuf>,
    /// Show every check and action; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Skip the page check of the copy (checksums and headers judged by the window's WAL).
    #[arg(long, conflicts_with = "check_pages")]
    no_check_pages: bool,
    /// How much of the copy's pages to check: full (default) or sample:N% (a quick look).
    #[arg(long, value_name = "full|sample:N%")]
    check_pages: Option<String>,
}

/// The `--tablespace OID=/absolute/path` arguments of `prepare` and `drill`, checked.
fn tablespace_map(args: &[String]) -> Result<Vec<(u32, PathBuf)>, Error> {
    args.iter()
        .map(|t| {
            t.split_once('=')
                .and_then(|(o, p)| o.parse::<u32>().ok().map(|o| (o, PathBuf::from(p))))
                .filter(|(_, p)| p.is_absolute())
                .ok_or_else(|| {
                    Error::usage(format!("--tablespace {t:?}: expected OID=/absolute/path"))
                })
        })
        .collect()
}

/// A path from the command line made absolute against the current directory, so that the
/// engine never depends on where it was started.
fn abs(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

impl PrepareArgs {
    fn options(self, verb: &str, cfg: &Config, s3: &S3Settings) -> Result<PrepareOptions, Error> {
        let ts = tablespace_map(&self.tablespaces)?;
        if verb == "prepare" && self.pgdata.is_none() {
            return Err(Error::usage(
                "prepare needs --pgdata DIR: the directory the copy was restored to",
            ));
        }
        Ok(PrepareOptions {
            pgdata: self.pgdata.map(abs).unwrap_or_default(),
            store: self.store,
            configured_stores: cfg.store.clone(),
            bundle: self.bundle.map(abs),
            id: self.id,
            target: self.target,
            target_action: self.target_action,
            archive: self.archive.map(abs),
            restore_command: self.restore_command,
            standby: self.standby,
            primary_conninfo: self.primary_conninfo,
            tablespaces: ts,
            waldir: match self.waldir {
                Some(w) if w.is_absolute() => Some(w),
                Some(w) => {
                    return Err(Error::usage(format!(
                        "--waldir {}: expected an absolute path",
                        w.display()
                    )))
                }
                None => None,
            },
            resuming: false,
            dry_run: self.dry_run,
            check_pages: match (self.no_check_pages, self.check_pages.as_deref()) {
                (true, _) => PageCheckMode::Off,
                (false, Some(v)) => PageCheckMode::parse(v)?,
                (false, None) => PageCheckMode::Full,
            },
            list_bundles: Some(pgbookend::catalog::manifests),
            s3: s3.clone(),
        })
    }
}

/// Turns a prepare/verify report into output; problems are a refusal (exit 6).
fn report_output(r: pgbookend::restore::Report, verb: &str) -> Result<Output, Error> {
    let human = pgbookend::restore::render(&r, verb);
    let error = (!r.problems.is_empty()).then(|| {
        let what = if verb == "prepare" {
            "prepare refused; nothing was changed"
        } else {
            "verify found problems"
        };
        Error::new(
            Class::Check,
            format!("{what}: {} problem(s), listed above", r.problems.len()),
        )
    });
    let json = serde_json::to_value(&r).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Output { json, human, error })
}

/// Options of `restore`: prepare's, plus the copy's own.
#[derive(Args, Debug)]
struct RestoreArgs {
    #[command(flatten)]
    prepare: PrepareArgs,
    /// Objects fetched and written in parallel.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Restore into an existing copy of this cluster: keep files whose size and SHA-256
    /// match, rewrite the others, remove what the backup does not have.
    #[arg(long)]
    delta: bool,
}

impl RestoreArgs {
    fn run(self, cfg: &Config, s3: &S3Settings) -> Result<Output, Error> {
        if self.prepare.bundle.is_some() || self.prepare.dry_run {
            return Err(Error::usage(
                "restore takes no --bundle or --dry-run: it reads the bundle from --store",
            ));
        }
        if self.prepare.pgdata.is_none() {
            return Err(Error::usage("restore needs --pgdata DIR: where to restore"));
        }
        // Every byte was checked against its SHA-256 on the way: no page check by default.
        let pages_given = self.prepare.no_check_pages || self.prepare.check_pages.is_some();
        let mut prepare = self.prepare.options("prepare", cfg, s3)?;
        if !pages_given {
            prepare.check_pages = PageCheckMode::Off;
        }
        let opts = pgbookend::backup::restore::RestoreOptions {
            prepare,
            jobs: usize::from(self.jobs),
            delta: self.delta,
        };
        let r = pgbookend::backup::restore::restore(&opts)?;
        let mut human = format!(
            "restored backup {} from {} into {}: {} files, {} in {:.1} s ({} objects, {} fetched)\n",
            r.id,
            r.store,
            r.pgdata,
            r.files,
            pgbookend::output::human_bytes(r.bytes),
            r.seconds,
            r.objects_fetched,
            pgbookend::output::human_bytes(r.bytes_fetched)
        );
        for (oid, to) in &r.tablespaces {
            human.push_str(&format!("tablespace {oid} restored into {to}\n"));
        }
        if let Some(d) = &r.delta {
            human.push_str(&format!(
                "delta: {} files kept, {} rewritten, {} entries removed\n",
                d.kept, d.rewritten, d.removed
            ));
        }
        human.push_str(&pgbookend::restore::render(&r.prepare, "prepare"));
        human.push_str(&format!(
            "\nwrote {} (check the directory with pg_verifybackup)\n",
            r.backup_manifest
        ));
        let json = serde_json::to_value(&r).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Output {
            json,
            human,
            error: None,
        })
    }
}

/// Options of `drill`.
#[derive(Args, Debug)]
struct DrillArgs {
    /// The restored copy (only read: drill works on a clone beside it).
    #[arg(long, value_name = "DIR")]
    pgdata: PathBuf,
    /// Where the bundle is; drill.json is written there too.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "bundle",
        required_unless_present = "bundle"
    )]
    store: Option<String>,
    /// A bundle directory restored from a backup program; drill.json is written into it.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// The backup ID (default: from the copy's marker).
    #[arg(long)]
    id: Option<String>,
    /// The directory of the server binaries (postgres) of the copy's major (default:
    /// pg_config --bindir if it is that major, else /usr/lib/postgresql/MAJOR/bin).
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// Do not count a server without the amcheck extension as a failed check.
    #[arg(long)]
    no_amcheck: bool,
    /// Where the copy of tablespace OID was restored (repeatable; required for every
    /// tablespace of the copy): it is cloned too, never changed.
    #[arg(long = "tablespace", value_name = "OID=PATH")]
    tablespaces: Vec<String>,
    /// How long the server may take to recover and open (e.g. 30m, 2h; default 1h): on
    /// timeout it is stopped, the clone removed, and drill fails with exit 4.
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
}

impl DrillArgs {
    fn run(self, s3: &S3Settings) -> Result<Output, Error> {
        let tablespaces = tablespace_map(&self.tablespaces)?;
        let timeout = self
            .timeout
            .as_deref()
            .map(|t| {
                pgbookend::timefmt::parse_duration(t)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        Error::usage(format!(
                            "--timeout {t:?}: expected a duration such as 30m or 2h"
                        ))
                    })
            })
            .transpose()?;
        let opts = pgbookend::drill::DrillOptions {
            pgdata: abs(self.pgdata),
            store: self.store,
            bundle: self.bundle.map(abs),
            id: self.id,
            pg_bin: self.pg_bin.map(abs),
            no_amcheck: self.no_amcheck,
            tablespaces,
            timeout,
            s3: s3.clone(),
        };
        let r = pgbookend::drill::drill(&opts)?;
        let human = pgbookend::drill::render(&r);
        let error = (!r.passed()).then(|| {
            let first = r
                .checks
                .failures
                .first()
                .map(|f| {
                    format!(
                        ": first, the {} check of {} in database {}",
                        f.check, f.object, f.database
                    )
                })
                .unwrap_or_default();
            Error::new(
                Class::Check,
                format!(
                    "drill failed: {} of {} checks failed{first}",
                    r.checks.failed, r.checks.run
                ),
            )
        });
        let json = serde_json::to_value(&r).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Output { json, human, error })
    }
}

/// Options of `expire`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("policy").required(true).args(["keep_last", "keep_within"])))]
struct ExpireArgs {
    #[arg(long, value_name = "URL")]
    store: String,
    /// Keep the N newest complete bundles of each cluster.
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Keep the complete bundles stopped within this time (e.g. 14d, 72h).
    #[arg(long, value_name = "DUR")]
    keep_within: Option<String>,
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also remove partial bundles (no bundle.json) older than a day, except rescuable ones.
    #[arg(long)]
    include_partial: bool,
    /// Also remove rescuable partial bundles (they hold a label: `pgbookend rescue` could
    /// still complete them) older than a day.
    #[arg(long, requires = "include_partial")]
    include_rescuable: bool,
    /// Keep a point-in-time window: the newest bundle of each cluster stopped at least DUR
    /// ago stays, and with it the archived WAL from its start (e.g. 7d).
    #[arg(long, value_name = "DUR")]
    keep_wal_for: Option<String>,
}

impl ExpireArgs {
    fn run(self, s3: &S3Settings) -> Result<Output, Error> {
        use pgbookend::catalog::expire::{expire, Policy};
        let policy = match (self.keep_last, self.keep_within) {
            (Some(n), _) => Policy::KeepLast(n),
            (_, Some(d)) => Policy::KeepWithin(
                pgbookend::timefmt::parse_duration(&d)
                    .map_err(|e| Error::usage(format!("--keep-within: {e}")))?,
            ),
            _ => {
                return Err(Error::usage(
                    "expire needs --keep-last N or --keep-within DUR",
                ))
            }
        };
        let keep_wal_for = match &self.keep_wal_for {
            Some(d) => Some(
                pgbookend::timefmt::parse_duration(d)
                    .map_err(|e| Error::usage(format!("--keep-wal-for: {e}")))?,
            ),
            None => None,
        };
        expire(
            &self.store,
            s3,
            policy,
            self.dry_run,
            self.include_partial,
            self.include_rescuable,
            keep_wal_for,
        )
    }
}

#[derive(Args, Debug)]
struct StartArgs {
    /// Backup ID (default: UTC time plus a random suffix). Also the server-side label.
    #[arg(long)]
    id: Option<String>,
    /// Where the bundle goes: a directory, file:///dir or s3://bucket/prefix. Repeat for
    /// several stores (each gets a full bundle).
    #[arg(long = "store", value_name = "URL")]
    stores: Vec<String>,
    /// The data directory (default: the server's data_directory).
    #[arg(long, value_name = "DIR")]
    pgdata: Option<PathBuf>,
    /// libpq connection string or URI (no password: use ~/.pgpass or PGPASSFILE).
    #[arg(short = 'd', long = "dbname", value_name = "CONNINFO")]
    conninfo: Option<String>,
    /// Immediate checkpoint at start (the default).
    #[arg(long, conflicts_with = "spread")]
    fast: bool,
    /// Spread the start checkpoint (checkpoint_completion_target) instead.
    #[arg(long)]
    spread: bool,
    /// Abort the backup if it is not stopped within this time (default 24h).
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// How often the agent checks its session (default 10s).
    #[arg(long, value_name = "DUR")]
    heartbeat: Option<String>,
    /// How the WAL of the window is kept: collect (into the bundle; default), archive
    /// (confirm it is in --archive DIR, or without it in the pgbookend archive of the
    /// stores, pushing what the archiver has not yet), none (you keep it; restore needs an
    /// archive).
    #[arg(long, value_name = "MODE")]
    wal: Option<String>,
    /// The WAL archive directory (for --wal archive; without it, the stores' archive).
    #[arg(long, value_name = "DIR")]
    archive: Option<PathBuf>,
    /// How many stores must take the bundle for stop to succeed (default: all).
    #[arg(long, value_name = "N")]
    min_stores: Option<usize>,
    /// Back up only on a server of this role (primary or standby; config only_on): on the
    /// other, start (and run) exits 0 saying it skipped, and stop --id of it exits 0 too.
    #[arg(long, value_name = "ROLE", value_parser = ["primary", "standby"])]
    only_on: Option<String>,
}

impl StartArgs {
    fn options(self, s3: &S3Settings) -> StartOptions {
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
struct RunArgs {
    #[command(flatten)]
    start: StartArgs,
    /// Shell command run after a successful stop, with PGBOOKEND_BUNDLE set to the bundle
    /// directory: typically the same program backing up the bundle.
    #[arg(long, value_name = "CMD")]
    then: Option<String>,
    /// Do not wait for the server to archive the stop segment (see stop).
    #[arg(long, conflicts_with = "wait_archive")]
    no_wait_archive: bool,
    /// Wait for the server to archive the stop segment (see stop).
    #[arg(long)]
    wait_archive: bool,
    /// How long stop waits for archiving before failing (exit 5), e.g. 10m.
    #[arg(long, value_name = "DUR")]
    archive_timeout: Option<String>,
    /// The copy command and its arguments, after `--`. It gets PGBOOKEND_ID,
    /// PGBOOKEND_PGDATA, PGBOOKEND_TABLESPACES (one per line), PGBOOKEND_START_LSN and
    /// PGBOOKEND_STORE in its environment.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

/// Options of `backup`: those of start, the copy's, and those of stop.
#[derive(Args, Debug)]
struct BackupArgs {
    #[command(flatten)]
    start: StartArgs,
    /// Threads that compress and store objects, and uploads at once to an S3 store
    /// (default 2).
    #[arg(long, value_name = "N", default_value_t = 2)]
    jobs: usize,
    /// zstd (level 3), zstd:LEVEL (1-19), lz4 (faster, larger) or none.
    #[arg(long, value_name = "HOW", default_value = "zstd")]
    compress: String,
    /// Do not wait for the server to archive the stop segment (see stop).
    #[arg(long, conflicts_with = "wait_archive")]
    no_wait_archive: bool,
    /// Wait for the server to archive the stop segment (see stop).
    #[arg(long)]
    wait_archive: bool,
    /// How long stop waits for archiving before failing (exit 5), e.g. 10m.
    #[arg(long, value_name = "DUR")]
    archive_timeout: Option<String>,
}

/// `backup`: the built-in copy, with progress on stderr.
fn backup_command(
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
        wait_archive: match (a.wait_archive, a.no_wait_archive) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        archive_timeout: a.archive_timeout,
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
fn run_command(
    run: &RunDir,
    cfg: &Config,
    s3: &S3Settings,
    a: RunArgs,
    json: bool,
    hooks: &pgbookend::notify::Hooks,
) -> ExitCode {
    let wait_archive = match (a.wait_archive, a.no_wait_archive) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let opts = pgbookend::run::RunOptions {
        start: a.start.options(s3),
        command: a.command,
        then: a.then,
        wait_archive,
        archive_timeout: a.archive_timeout,
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

/// The notification commands: flags, then the config file.
fn hooks(cli: &Cli, cfg: &Config) -> Result<pgbookend::notify::Hooks, Error> {
    let timeout = match cli.notify_timeout.as_ref().or(cfg.notify_timeout.as_ref()) {
        Some(d) => Some(
            pgbookend::timefmt::parse_duration(d)
                .map_err(|e| Error::usage(format!("--notify-timeout: {e}")))?,
        ),
        None => None,
    };
    Ok(pgbookend::notify::Hooks {
        on_success: cli.on_success.clone().or_else(|| cfg.on_success.clone()),
        on_failure: cli.on_failure.clone().or_else(|| cfg.on_failure.clone()),
        timeout,
    })
}

/// Runs the notification command for a finished stop or run, and says on stderr when it
/// failed; the exit code stays the backup command's.
fn notify(
    hooks: &pgbookend::notify::Hooks,
    event: &str,
    id: Option<&str>,
    code: u8,
    out: &serde_json::Value,
    error: Option<&Error>,
) {
    use pgbookend::notify::{Event, Outcome};
    let ev = Event {
        event,
        id,
        exit_code: code as i32,
        error: error.map(|e| e.to_string()),
        report: out,
    };
    let which = if code == 0 {
        "--on-success"
    } else {
        "--on-failure"
    };
    match hooks.fire(&ev) {
        Outcome::NotConfigured | Outcome::Exited(Some(0)) => {}
        Outcome::Exited(c) => eprintln!(
            "pgbookend: warning: the {which} command exited with {}; the backup's result is unchanged",
            c.map_or("a signal".to_string(), |c| format!("code {c}"))
        ),
        Outcome::TimedOut(t) => eprintln!(
            "pgbookend: warning: the {which} command ran longer than {}s and was killed (--notify-timeout)",
            t.as_secs_f64()
        ),
        Outcome::NotStarted(e) => {
            eprintln!("pgbookend: warning: the {which} command could not be started: {e}")
        }
    }
}

fn print(out: &Output, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out.json).unwrap_or_default()
        );
    } else {
        print!("{}", out.human);
    }
    if let Some(e) = &out.error {
        eprintln!("pgbookend: error: {e}");
    }
}

fn fail(e: &Error, json: bool) -> ExitCode {
    if json {
        let v = serde_json::json!({ "error": e });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    eprintln!("pgbookend: error: {e}");
    ExitCode::from(e.class().exit_code() as u8)
}

/// S3 settings: flags, then the config file (the AWS environment and files come after, in s3.rs).
fn s3_settings(cli: &Cli, cfg: &Config) -> Result<pgbookend::store::s3::Settings, Error> {
    let retry_timeout_ms = match &cfg.s3_retry_timeout {
        Some(d) => Some(
            pgbookend::timefmt::parse_duration(d)
                .map_err(|e| Error::usage(format!("config s3_retry_timeout: {e}")))?
                .as_millis() as u64,
        ),
        None => None,
    };
    Ok(pgbookend::store::s3::Settings {
        endpoint: cli.s3_endpoint.clone(),
        region: cli.s3_region.clone(),
        path_style: cli.s3_path_style.then_some(true),
        retry_timeout_ms: None,
    }
    .or(pgbookend::store::s3::Settings {
        endpoint: cfg.s3_endpoint.clone(),
        region: cfg.s3_region.clone(),
        path_style: cfg.s3_path_style,
        retry_timeout_ms,
    }))
}

/// `metrics`: the exposition on stdout, or written atomically to `--output`; `--json`
/// prints the gathered facts instead.
fn metrics_output(
    urls: &[String],
    s3: &S3Settings,
    run: &RunDir,
    output: Option<&std::path::Path>,
    json: bool,
) -> pgbookend::error::Result<Output> {
    use pgbookend::metrics;
    let snap = metrics::gather(&metrics::stores(urls, s3)?, run);
    let text = metrics::expo::render(&snap);
    let down = snap.stores.iter().filter(|s| !s.up).count();
    let human = match output {
        Some(path) if !json => {
            let own = pgbookend::fsutil::Ownership {
                file_mode: 0o644,
                ..pgbookend::fsutil::Ownership::private()
            };
            pgbookend::fsutil::write_atomic(path, text.as_bytes(), &own)?;
            format!(
                "wrote {} metric lines to {}{}\n",
                text.lines().filter(|l| !l.starts_with('#')).count(),
                path.display(),
                if down > 0 {
                    format!(" ({down} store(s) could not be read)")
                } else {
                    String::new()
                }
            )
        }
        _ => text,
    };
    Ok(Output {
        json: serde_json::to_value(&snap).unwrap_or_default(),
        human,
        error: None,
    })
}

/// `completions SHELL`: the script on stdout (packages install it; users may source it).
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    use std::io::Write;
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pgbookend", &mut script);
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(&script);
    ExitCode::SUCCESS
}

/// `__manpages DIR`: one page for pgbookend and one per subcommand, from the CLI definition.
fn manpages(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    // No pages for the `help` pseudo-command: `man pgbookend-start` is the help.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    match clap_mangen::generate_to(cmd, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            &Error::env(format!("cannot write man pages to {}: {e}", dir.display())),
            false,
        ),
    }
}

/// Runs every command whose result is an [`Output`] (all but run, the agent and the
/// packaging helpers, handled before).
fn dispatch(
    command: Cmd,
    run: &RunDir,
    cfg: &Config,
    s3: &S3Settings,
    json: bool,
) -> pgbookend::error::Result<Output> {
    match command {
        Cmd::Start(a) => commands::start(run, cfg, a.options(s3)),
        Cmd::Run(_) | Cmd::Backup(_) | Cmd::ArchivePush(_) | Cmd::ArchiveGet(_) => {
            unreachable!("handled in main")
        }
        Cmd::Stop {
            id,
            no_wait_archive,
            wait_archive,
            archive_timeout,
        } => {
            let wait = match (wait_archive, no_wait_archive) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            commands::stop(run, cfg, &id, wait, archive_timeout.as_deref(), s3)
        }
        Cmd::Status { id } => commands::status(run, id.as_deref()),
        Cmd::Abort { id } => commands::abort(run, &id),
        Cmd::Cleanup { pgdata } => commands::cleanup(run, pgdata.as_deref()),
        Cmd::Prepare(a) => a
            .options("prepare", cfg, s3)
            .and_then(|o| pgbookend::restore::exec::prepare(&o))
            .and_then(|r| report_output(r, "prepare")),
        Cmd::Restore(a) => a.run(cfg, s3),
        Cmd::Verify(a) => {
            let copy = a.pgdata.is_some();
            a.options("verify", cfg, s3).and_then(|o| {
                let r = if copy {
                    pgbookend::restore::verify_copy(&o)
                } else {
                    match &o.id {
                        Some(id) => pgbookend::restore::verify_bundle(
                            o.store.as_deref(),
                            o.bundle.as_deref(),
                            id,
                            &o.s3,
                        ),
                        None => Err(Error::usage(
                            "verify needs --pgdata DIR, or --store URL / --bundle DIR with --id ID",
                        )),
                    }
                };
                r.and_then(|r| report_output(r, "verify"))
            })
        }
        Cmd::Drill(a) => a.run(s3),
        Cmd::Check(a) => a.run(run, cfg, s3),
        Cmd::Guard { pgdata } => {
            pgbookend::restore::guard::guard(&pgdata).map(|(json, human)| Output {
                json,
                human,
                error: None,
            })
        }
        Cmd::List { store } => pgbookend::catalog::list(&store, s3),
        Cmd::Show { store, id } => pgbookend::catalog::show(&store, &id, s3),
        Cmd::Expire(a) => a.run(s3),
        Cmd::Rescue {
            id,
            stores,
            archive,
        } => pgbookend::agent::rescue::command(run, &id, stores, archive, s3),
        Cmd::Metrics { stores, output } => {
            let urls = if stores.is_empty() {
                cfg.store.clone()
            } else {
                stores
            };
            metrics_output(&urls, s3, run, output.as_deref(), json)
        }
        Cmd::Agent { .. }
        | Cmd::Completions { .. }
        | Cmd::Manpages { .. }
        | Cmd::ArchivePrefetch(_)
        | Cmd::ArchivePusher(_) => {
            unreachable!("handled above")
        }
    }
}

fn main() -> ExitCode {
    // The agent (`pgbookend __agent ID`, spawned by start) skips clap: building the whole
    // command tree would fault in code and heap it never needs while it holds a backup.
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == pgbookend::agent::serve::SUBCOMMAND)
        && args.next().is_some()
        && args.next().is_none()
    {
        return ExitCode::from(pgbookend::agent::serve::main() as u8);
    }
    let cli = Cli::parse();
    if let Cmd::Agent { .. } = cli.command {
        return ExitCode::from(pgbookend::agent::serve::main() as u8);
    }
    pgbookend::logging::init_command();
    let json = cli.json;
    match &cli.command {
        Cmd::Completions { shell } => return completions(*shell),
        Cmd::Manpages { dir } => return manpages(dir),
        _ => {}
    }
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => return fail(&e, json),
    };
    let run = RunDir::resolve(cli.run_dir.as_deref(), cfg.run_dir.as_deref());
    let s3 = match s3_settings(&cli, &cfg) {
        Ok(s) => s,
        Err(e) => return fail(&e, json),
    };
    let hooks = match hooks(&cli, &cfg) {
        Ok(h) => h,
        Err(e) => return fail(&e, json),
    };
    // The commands whose end is notified here (run and archive-push notify themselves).
    let notified = match &cli.command {
        Cmd::Stop { id, .. } => Some(("stop", Some(id.clone()))),
        Cmd::Backup(a) => Some(("backup", a.start.id.clone())),
        _ => None,
    };
    let result = match cli.command {
        Cmd::Run(a) => return run_command(&run, &cfg, &s3, a, json, &hooks),
        Cmd::Backup(a) => backup_command(&run, &cfg, &s3, a, json),
        Cmd::ArchivePush(a) => return archive_push(&cfg, &s3, a, json, &hooks),
        Cmd::ArchiveGet(a) => return archive_get(&cfg, &s3, a, json),
        Cmd::ArchivePrefetch(a) => return archive_prefetch(&cfg, &s3, a),
        Cmd::ArchivePusher(a) => return archive_pusher(&cfg, &s3, a),
        command => dispatch(command, &run, &cfg, &s3, json),
    };
    let (code, report, error) = match result {
        Ok(out) => {
            print(&out, json);
            let code = out
                .error
                .as_ref()
                .map_or(0, |e| e.class().exit_code() as u8);
            (code, out.json, out.error)
        }
        Err(e) => {
            fail(&e, json);
            let code = e.class().exit_code() as u8;
            (code, serde_json::json!({ "error": &e }), Some(e))
        }
    };
    if let Some((event, id)) = notified {
        let id = id.or_else(|| report["id"].as_str().map(str::to_string));
        notify(&hooks, event, id.as_deref(), code, &report, error.as_ref());
    }
    ExitCode::from(code)
}
