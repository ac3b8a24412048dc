//! The options of `expire` and `check`, and the rendering of `metrics`.

use clap::Args;
use pgbookend::agent::rundir::RunDir;
use pgbookend::config::Config;
use pgbookend::error::{Class, Error};
use pgbookend::output::Output;
use pgbookend::store::s3::Settings as S3Settings;
use std::path::PathBuf;

/// Options of `check`.
#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// libpq connection string or URI, as for start (default: the libpq environment).
    #[arg(short = 'd', long = "dbname", value_name = "CONNINFO")]
    pub(crate) conninfo: Option<String>,
    /// A bundle store (repeatable; default: the config's store).
    #[arg(long = "store", value_name = "URL")]
    pub(crate) stores: Vec<String>,
    /// An archive store (repeatable; default: archive_store, else store, from the config).
    #[arg(long = "archive-store", value_name = "URL")]
    pub(crate) archive_stores: Vec<String>,
    /// The WAL mode backups will use: collect, archive or none (default: config wal, else
    /// collect). collect needs a free replication slot and the REPLICATION attribute.
    #[arg(long, value_name = "MODE")]
    pub(crate) wal: Option<String>,
    /// How long the forced WAL switch may take to reach the archive (default 60s).
    #[arg(long, value_name = "DUR")]
    pub(crate) timeout: Option<String>,
}

impl CheckArgs {
    pub(crate) fn run(self, run: &RunDir, cfg: &Config, s3: &S3Settings) -> Result<Output, Error> {
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

/// Options of `expire`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("policy").required(true).args(["keep_last", "keep_within"])))]
pub(crate) struct ExpireArgs {
    #[arg(long, value_name = "URL")]
    pub(crate) store: String,
    /// Keep the N newest complete bundles of each cluster.
    #[arg(long, value_name = "N")]
    pub(crate) keep_last: Option<usize>,
    /// Keep the complete bundles stopped within this time (e.g. 14d, 72h).
    #[arg(long, value_name = "DUR")]
    pub(crate) keep_within: Option<String>,
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Also remove partial bundles (no bundle.json) older than a day, except rescuable ones.
    #[arg(long)]
    pub(crate) include_partial: bool,
    /// Also remove rescuable partial bundles (they hold a label: `pgbookend rescue` could
    /// still complete them) older than a day.
    #[arg(long, requires = "include_partial")]
    pub(crate) include_rescuable: bool,
    /// Keep a point-in-time window: the newest bundle of each cluster stopped at least DUR
    /// ago stays, and with it the archived WAL from its start (e.g. 7d).
    #[arg(long, value_name = "DUR")]
    pub(crate) keep_wal_for: Option<String>,
}

impl ExpireArgs {
    pub(crate) fn run(self, s3: &S3Settings) -> Result<Output, Error> {
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

/// `metrics`: the exposition on stdout, or written atomically to `--output`; `--json`
/// prints the gathered facts instead.
pub(crate) fn metrics_output(
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
