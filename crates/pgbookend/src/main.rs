//! The `pgbookend` command line: parses arguments and prints what the engine returns.

use clap::{Parser, Subcommand};
use pgbookend::agent::rundir::RunDir;
use pgbookend::commands;
use pgbookend::config::Config;
use pgbookend::error::Error;
use pgbookend::output::Output;
use pgbookend::store::s3::Settings as S3Settings;
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;
use cli::{archive::*, backup::*, catalog::*, render::*, restore::*};

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
        #[command(flatten)]
        archive: WaitArchiveArgs,
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
        Cmd::Stop { id, archive } => {
            let wait = archive.wait();
            commands::stop(run, cfg, &id, wait, archive.archive_timeout.as_deref(), s3)
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
