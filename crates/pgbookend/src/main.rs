//! The `pgbookend` command line: parses arguments and prints what the engine returns.

use clap::{Args, Parser, Subcommand};
use pgbookend::commands::{self, Output, StartOptions};
use pgbookend::config::Config;
use pgbookend::error::Error;
use pgbookend::rundir::RunDir;
use std::path::PathBuf;
use std::process::ExitCode;

/// Safe PostgreSQL physical backups through the non-exclusive low-level API, for any copy method.
///
/// Exit codes: 0 done and safe; 1 internal error; 2 usage error (nothing changed);
/// 3 backup void (take a new one); 4 environment problem (nothing changed);
/// 5 bundle written but WAL not confirmed safe.
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
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a backup: the pre-backup hook. Returns once the backup is in progress.
    Start(StartArgs),
    /// Stop a backup and write its bundle: the post-backup hook.
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
    #[command(name = "__agent", hide = true)]
    Agent { id: String },
}

#[derive(Args, Debug)]
struct StartArgs {
    /// Backup ID (default: UTC time plus a random suffix). Also the server-side label.
    #[arg(long)]
    id: Option<String>,
    /// Where the bundle goes: a directory or file:///dir. Repeat for several stores.
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

fn main() -> ExitCode {
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
    let result = match cli.command {
        Cmd::Start(a) => commands::start(
            &run,
            &cfg,
            StartOptions {
                id: a.id,
                stores: a.stores,
                pgdata: a.pgdata,
                conninfo: a.conninfo,
                spread: a.spread,
                timeout: a.timeout,
                heartbeat: a.heartbeat,
                wal: a.wal,
                archive: a.archive,
            },
        ),
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
