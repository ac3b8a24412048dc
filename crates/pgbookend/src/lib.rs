//! pgbookend: the two bookends around someone else's copy of a PostgreSQL data directory.
//!
//! `start` runs the non-exclusive backup start in a session held by a detached agent;
//! `stop` ends it in that same session and stores what the server returns (the bundle)
//! beside the copy. The README and `docs/` describe the commands and their contract; this
//! library is the engine and never prints: `main.rs` and `cli/` (the binary) parse the
//! command line and render what the engine returns.

pub mod agent;
pub mod archive;
pub mod backup;
pub mod bundle;
pub mod catalog;
pub mod check;
pub mod commands;
pub mod config;
pub mod drill;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod ha;
pub mod id;
pub mod logging;
pub mod memtrim;
pub mod metrics;
pub mod nofollow;
pub mod notify;
pub mod output;
pub mod pg;
pub mod problem;
pub mod restore;
pub mod run;
pub mod shellword;
pub mod store;
pub mod timefmt;
pub mod verify;

/// The tool's name, as recorded in markers and bundles.
pub const TOOL: &str = "pgbookend";
/// The tool's version, as recorded in markers and bundles.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
