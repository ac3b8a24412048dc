//! Logging: the agent logs to its stderr, which `start` points at `<run-dir>/<id>/agent.log`.
//! Commands log only when `PGBOOKEND_LOG=debug|info` asks for it. No log line holds a secret:
//! connection strings are never logged, only host/port/user/dbname.

use tracing::Level;

fn level_from_env(default: Option<Level>) -> Option<Level> {
    match std::env::var("PGBOOKEND_LOG").ok().as_deref() {
        Some("debug") => Some(Level::DEBUG),
        Some("info") => Some(Level::INFO),
        Some("warn") => Some(Level::WARN),
        Some("off") => None,
        _ => default,
    }
}

/// The agent's log: info and above, with UTC timestamps, to stderr (the log file).
pub fn init_agent() {
    if let Some(level) = level_from_env(Some(Level::INFO)) {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_target(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Commands: silent unless `PGBOOKEND_LOG` is set.
pub fn init_command() {
    if let Some(level) = level_from_env(None) {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
}
