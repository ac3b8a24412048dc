//! pgbookend's end-to-end tests: one test binary, one module per command or subject, each
//! driving the real `pgbookend` binary against real PostgreSQL clusters of every supported
//! major (`pgbookend-testkit`). `common` holds what the modules share (the `Tool` that runs
//! the binary and kills every agent it started, `per_major!`, schema checks of every
//! `--json` output), `runkit` the checks of a backup's window and of a restored cluster.
//!
//! Every module's tests run in this one process, several at a time (`scripts/test` uses
//! `--test-threads=6`): a test owns its clusters, directories and processes and looks only
//! at those, never at process-wide state (environment variables, fixed ports or paths,
//! every process on the machine). One module's tests: `cargo test -p pgbookend --test e2e
//! archive::`.
//!
//! The Debian package's test is not here: it installs pgbookend into the real system
//! (`/usr/bin/pgbookend`, `/etc/pgbookend.toml`, which every pgbookend run without
//! `PGBOOKEND_CONFIG` reads, `/var/lib/pgbookend`, `/run/pgbookend`), so it is a test binary
//! of its own, `tests/package.rs`, which cargo runs alone, never beside these tests.

// `per_major!` (defined in common) is visible in every module declared after it.
#[macro_use]
mod common;
mod runkit;

mod archive;
mod backup;
mod check;
mod drill;
mod ha;
mod hooks;
mod integrations;
mod metrics;
mod notify;
mod page_pg;
mod pages;
mod pitr;
mod rescue;
mod restore;
mod restore_builtin;
mod run;
mod s3;
mod same_host;
mod schemas;
mod security_bundle;
mod security_markers;
mod wal;
mod walreader_pg;
