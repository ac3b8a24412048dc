//! The options of `prepare`, `restore` and `drill`, turned into the engine's options, and
//! the rendering of a restore report.

use clap::Args;
use pgbookend::config::Config;
use pgbookend::error::{Class, Error};
use pgbookend::output::Output;
use pgbookend::restore::PrepareOptions;
use pgbookend::store::s3::Settings as S3Settings;
use pgbookend::verify::PageCheckMode;
use std::path::PathBuf;

/// Options of `prepare` and `verify`.
#[derive(Args, Debug)]
pub(crate) struct PrepareArgs {
    /// The restored copy (prepare: required; verify: omit to check only a bundle).
    #[arg(long, value_name = "DIR")]
    pub(crate) pgdata: Option<PathBuf>,
    /// Where the bundle is (default: the stores named in the copy's marker).
    #[arg(long, value_name = "URL", conflicts_with = "bundle")]
    pub(crate) store: Option<String>,
    /// A bundle directory restored from a backup program.
    #[arg(long, value_name = "DIR")]
    pub(crate) bundle: Option<PathBuf>,
    /// The backup ID (default: from the copy's marker).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// immediate | latest | time=TS | lsn=LSN | xid=XID | name=NAME (default: immediate,
    /// or latest with an archive or --standby).
    #[arg(long, value_name = "TARGET")]
    pub(crate) target: Option<String>,
    /// promote | pause | shutdown (default promote).
    #[arg(long, value_name = "ACTION")]
    pub(crate) target_action: Option<String>,
    /// A WAL archive directory for recovery (compressed forms too).
    #[arg(long, value_name = "DIR", conflicts_with = "restore_command")]
    pub(crate) archive: Option<PathBuf>,
    /// A restore_command for recovery (%f, %p).
    #[arg(long, value_name = "CMD")]
    pub(crate) restore_command: Option<String>,
    /// Start as a standby (standby.signal) instead of recovering and opening.
    #[arg(long)]
    pub(crate) standby: bool,
    /// primary_conninfo for --standby (no password: use the standby's ~/.pgpass).
    #[arg(long, value_name = "CONNINFO", requires = "standby")]
    pub(crate) primary_conninfo: Option<String>,
    /// Put tablespace OID at PATH (repeatable): a new or empty directory, or where this
    /// backup's copy of the tablespace was restored.
    #[arg(long = "tablespace", value_name = "OID=PATH")]
    pub(crate) tablespaces: Vec<String>,
    /// Keep the restored server's WAL in DIR (new or empty; pg_wal becomes a link to it):
    /// required when the copy's pg_wal is a link (a cluster made with initdb -X).
    #[arg(long, value_name = "DIR")]
    pub(crate) waldir: Option<PathBuf>,
    /// Show every check and action; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Skip the page check of the copy (checksums and headers judged by the window's WAL).
    #[arg(long, conflicts_with = "check_pages")]
    pub(crate) no_check_pages: bool,
    /// How much of the copy's pages to check: full (default) or sample:N% (a quick look).
    #[arg(long, value_name = "full|sample:N%")]
    pub(crate) check_pages: Option<String>,
}

/// The `--tablespace OID=/absolute/path` arguments of `prepare` and `drill`, checked.
pub(crate) fn tablespace_map(args: &[String]) -> Result<Vec<(u32, PathBuf)>, Error> {
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
pub(crate) fn abs(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

impl PrepareArgs {
    pub(crate) fn options(
        self,
        verb: &str,
        cfg: &Config,
        s3: &S3Settings,
    ) -> Result<PrepareOptions, Error> {
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
pub(crate) fn report_output(r: pgbookend::restore::Report, verb: &str) -> Result<Output, Error> {
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
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) prepare: PrepareArgs,
    /// Objects fetched and written in parallel.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) jobs: u16,
    /// Restore into an existing copy of this cluster: keep files whose size and SHA-256
    /// match, rewrite the others, remove what the backup does not have.
    #[arg(long)]
    pub(crate) delta: bool,
}

impl RestoreArgs {
    pub(crate) fn run(self, cfg: &Config, s3: &S3Settings) -> Result<Output, Error> {
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
pub(crate) struct DrillArgs {
    /// The restored copy (only read: drill works on a clone beside it).
    #[arg(long, value_name = "DIR")]
    pub(crate) pgdata: PathBuf,
    /// Where the bundle is; drill.json is written there too.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "bundle",
        required_unless_present = "bundle"
    )]
    pub(crate) store: Option<String>,
    /// A bundle directory restored from a backup program; drill.json is written into it.
    #[arg(long, value_name = "DIR")]
    pub(crate) bundle: Option<PathBuf>,
    /// The backup ID (default: from the copy's marker).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// The directory of the server binaries (postgres) of the copy's major (default:
    /// pg_config --bindir if it is that major, else /usr/lib/postgresql/MAJOR/bin).
    #[arg(long, value_name = "DIR")]
    pub(crate) pg_bin: Option<PathBuf>,
    /// Do not count a server without the amcheck extension as a failed check.
    #[arg(long)]
    pub(crate) no_amcheck: bool,
    /// Where the copy of tablespace OID was restored (repeatable; required for every
    /// tablespace of the copy): it is cloned too, never changed.
    #[arg(long = "tablespace", value_name = "OID=PATH")]
    pub(crate) tablespaces: Vec<String>,
    /// How long the server may take to recover and open (e.g. 30m, 2h; default 1h): on
    /// timeout it is stopped, the clone removed, and drill fails with exit 4.
    #[arg(long, value_name = "DUR")]
    pub(crate) timeout: Option<String>,
}

impl DrillArgs {
    pub(crate) fn run(self, s3: &S3Settings) -> Result<Output, Error> {
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
