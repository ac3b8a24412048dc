//! The `pgbookend` command line: parses arguments and prints what the engine returns.

use clap::{Args, Parser, Subcommand};
use pgbookend::commands::{self, StartOptions};
use pgbookend::config::Config;
use pgbookend::error::{Class, Error};
use pgbookend::output::Output;
use pgbookend::restore::PrepareOptions;
use pgbookend::rundir::RunDir;
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
    /// Stop a backup and write its bundle: the post-backup hook. Run again on a rescuable
    /// backup (exit 7), it completes the bundle as `rescue` does.
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
    /// Check a restored copy against its bundle (every check of prepare, read-only), or
    /// one bundle on its own (--store/--bundle with --id).
    Verify(PrepareArgs),
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
    #[command(name = "__agent", hide = true)]
    Agent { id: String },
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
}

impl PrepareArgs {
    fn options(self, verb: &str, cfg: &Config) -> Result<PrepareOptions, Error> {
        let mut ts = Vec::new();
        for t in &self.tablespaces {
            let (oid, path) = t
                .split_once('=')
                .and_then(|(o, p)| o.parse::<u32>().ok().map(|o| (o, PathBuf::from(p))))
                .filter(|(_, p)| p.is_absolute())
                .ok_or_else(|| {
                    Error::usage(format!("--tablespace {t:?}: expected OID=/absolute/path"))
                })?;
            ts.push((oid, path));
        }
        let abs = |p: PathBuf| {
            if p.is_absolute() {
                p
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            }
        };
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
}

impl ExpireArgs {
    fn run(self) -> Result<Output, Error> {
        use pgbookend::catalog::{expire, Policy};
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
        expire(
            &self.store,
            policy,
            self.dry_run,
            self.include_partial,
            self.include_rescuable,
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
    /// (confirm it is in --archive DIR), none (you keep it; restore needs an archive).
    #[arg(long, value_name = "MODE")]
    wal: Option<String>,
    /// The WAL archive directory (for --wal archive).
    #[arg(long, value_name = "DIR")]
    archive: Option<PathBuf>,
    /// How many stores must take the bundle for stop to succeed (default: all).
    #[arg(long, value_name = "N")]
    min_stores: Option<usize>,
}

impl StartArgs {
    fn options(self) -> StartOptions {
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

/// `run` exits with its own code: COMMAND's when COMMAND failed.
fn run_command(run: &RunDir, cfg: &Config, a: RunArgs, json: bool) -> ExitCode {
    let wait_archive = match (a.wait_archive, a.no_wait_archive) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let opts = pgbookend::run::RunOptions {
        start: a.start.options(),
        command: a.command,
        then: a.then,
        wait_archive,
        archive_timeout: a.archive_timeout,
        json,
    };
    match pgbookend::run::run(run, cfg, opts) {
        Ok(r) => {
            print(&r.output, json);
            ExitCode::from(r.code.clamp(0, 255) as u8)
        }
        Err(e) => fail(&e, json),
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

fn main() -> ExitCode {
    // The agent (`pgbookend __agent ID`, spawned by start) skips clap: building the whole
    // command tree would fault in code and heap it never needs while it holds a backup.
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == pgbookend::agent::SUBCOMMAND)
        && args.next().is_some()
        && args.next().is_none()
    {
        return ExitCode::from(pgbookend::agent::main() as u8);
    }
    let cli = Cli::parse();
    if let Cmd::Agent { .. } = cli.command {
        return ExitCode::from(pgbookend::agent::main() as u8);
    }
    pgbookend::logging::init_command();
    let json = cli.json;
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => return fail(&e, json),
    };
    let run = RunDir::resolve(cli.run_dir.as_deref(), cfg.run_dir.as_deref());
    match s3_settings(&cli, &cfg) {
        Ok(s) => pgbookend::store::s3::configure(s),
        Err(e) => return fail(&e, json),
    }
    let result = match cli.command {
        Cmd::Start(a) => commands::start(&run, &cfg, a.options()),
        Cmd::Run(a) => return run_command(&run, &cfg, a, json),
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
            commands::stop(&run, &cfg, &id, wait, archive_timeout.as_deref())
        }
        Cmd::Status { id } => commands::status(&run, id.as_deref()),
        Cmd::Abort { id } => commands::abort(&run, &id),
        Cmd::Cleanup { pgdata } => commands::cleanup(&run, pgdata.as_deref()),
        Cmd::Prepare(a) => a
            .options("prepare", &cfg)
            .and_then(|o| pgbookend::restore::exec::prepare(&o))
            .and_then(|r| report_output(r, "prepare")),
        Cmd::Verify(a) => {
            let copy = a.pgdata.is_some();
            a.options("verify", &cfg).and_then(|o| {
                let r = if copy {
                    pgbookend::restore::verify_copy(&o)
                } else {
                    match &o.id {
                        Some(id) => pgbookend::restore::verify_bundle(
                            o.store.as_deref(),
                            o.bundle.as_deref(),
                            id,
                        ),
                        None => Err(Error::usage(
                            "verify needs --pgdata DIR, or --store URL / --bundle DIR with --id ID",
                        )),
                    }
                };
                r.and_then(|r| report_output(r, "verify"))
            })
        }
        Cmd::Guard { pgdata } => {
            pgbookend::restore::guard::guard(&pgdata).map(|(json, human)| Output {
                json,
                human,
                error: None,
            })
        }
        Cmd::List { store } => pgbookend::catalog::list(&store),
        Cmd::Show { store, id } => pgbookend::catalog::show(&store, &id),
        Cmd::Expire(a) => a.run(),
        Cmd::Rescue {
            id,
            stores,
            archive,
        } => pgbookend::rescue::command(&run, &id, stores, archive),
        Cmd::Agent { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(out) => {
            print(&out, json);
            match &out.error {
                Some(e) => ExitCode::from(e.class().exit_code() as u8),
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => fail(&e, json),
    }
}
