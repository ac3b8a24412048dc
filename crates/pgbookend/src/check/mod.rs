//! `pgbookend check`: would a backup succeed on this host, for this cluster, now?
//!
//! One room, one concern per file: [`server`] asks the cluster (archiving settings, a
//! forced WAL switch arriving in the archive, `pg_stat_archiver`, the role's grants and
//! the replication slot `--wal collect` needs), [`host`] looks at this host (every store
//! written, read and cleaned with a probe object, the run and state directories, the
//! config file). The engine returns a typed [`Report`]; the CLI renders it.

pub mod host;
pub mod server;

use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// The directory of `check`'s probe objects in a store (reserved: no backup ID).
pub const PROBE_DIR: &str = crate::id::CHECK_DIR;

/// The verdict of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Worth fixing, but a backup would still succeed.
    Warn,
    /// A backup would fail (or its WAL would not be safe).
    Fail,
}

/// One checked fact, with what to do when it is not ok.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// A stable short name (`archive_mode`, `store`, ...), for scripts.
    pub check: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (absent when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Line {
    /// A line that is fine.
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Line {
        Line {
            check,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    /// A line worth fixing that does not stop a backup.
    pub fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            check,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    /// A line that stops a backup.
    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            check,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every line of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when no line failed: a backup would succeed.
    pub ok: bool,
    pub lines: Vec<Line>,
}

/// How the WAL of a backup window would be kept (`--wal`), which decides what the
/// server must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalMode {
    Collect,
    Archive,
    None,
}

impl WalMode {
    /// Parses `--wal` / the config's `wal`.
    pub fn parse(s: &str) -> crate::error::Result<WalMode> {
        match s {
            "collect" => Ok(WalMode::Collect),
            "archive" => Ok(WalMode::Archive),
            "none" => Ok(WalMode::None),
            _ => Err(crate::error::Error::usage(format!(
                "--wal {s:?}: expected collect, archive or none"
            ))),
        }
    }
}

/// What `check` looks at, resolved at the CLI edge.
#[derive(Debug, Clone)]
pub struct Options {
    /// libpq connection string or URI (as `start -d`); `None`: the libpq environment.
    pub conninfo: Option<String>,
    pub wal: WalMode,
    /// The archive stores (as `archive-push` resolves them); empty when none is configured.
    pub archive_stores: Vec<String>,
    /// The bundle stores (`--store` of start, or the config's `store`).
    pub bundle_stores: Vec<String>,
    /// How long the forced WAL switch may take to reach the archive.
    pub timeout: Duration,
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The config file read, or `None` when none exists.
    pub config_path: Option<PathBuf>,
    /// Whether the config holds a secret (a password in its conninfo).
    pub config_has_secret: bool,
    /// The settings of S3 stores (flags, then the config file).
    pub s3: crate::store::s3::Settings,
}

/// Runs every check; never stops at the first failure, so one run lists everything.
pub fn run(o: &Options) -> Report {
    let mut lines = Vec::new();
    let mut stores: Vec<String> = o.archive_stores.clone();
    for s in &o.bundle_stores {
        if !stores.contains(s) {
            stores.push(s.clone());
        }
    }
    if stores.is_empty() {
        lines.push(Line::fail(
            "store",
            "no store configured",
            "set store (and archive_store) in the config file, or give --store URL",
        ));
    }
    for s in &stores {
        lines.push(host::probe_store(s, &o.s3));
    }
    lines.extend(server::check(o));
    lines.push(host::check_dir("run_dir", &o.run_dir));
    lines.push(host::check_dir("state_dir", &o.state_dir));
    lines.push(host::check_config(
        o.config_path.as_deref(),
        o.config_has_secret,
    ));
    Report {
        ok: lines.iter().all(|l| l.status != Status::Fail),
        lines,
    }
}

/// The human rendering: one line per check, the fix indented below.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for l in &r.lines {
        let tag = match l.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        s.push_str(&format!("{tag}  {:<18} {}\n", l.check, l.detail));
        if let Some(f) = &l.fix {
            s.push_str(&format!("      {:<18} fix: {f}\n", ""));
        }
    }
    s.push_str(if r.ok {
        "check passed: a backup would succeed\n"
    } else {
        "check failed: fix the FAIL lines above\n"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lines: Vec<Line>) -> Report {
        Report {
            ok: lines.iter().all(|l| l.status != Status::Fail),
            lines,
        }
    }

    #[test]
    fn render_snapshots() {
        let passed = report(vec![
            Line::ok("connection", "PostgreSQL 15.4 on /var/run/postgresql"),
            Line::warn(
                "archive_timeout",
                "0 (off)",
                "set archive_timeout so that a quiet server still archives",
            ),
        ]);
        insta::assert_snapshot!("check_passed_human", render(&passed));
        insta::assert_json_snapshot!("check_passed_json", passed);
        let failed = report(vec![
            Line::ok("connection", "PostgreSQL 15.4 on /var/run/postgresql"),
            Line::fail(
                "archive_mode",
                "off",
                "set archive_mode = on and restart, or use --wal collect",
            ),
            Line::fail(
                "store",
                "/srv/backups is not writable",
                "chown it to postgres",
            ),
        ]);
        insta::assert_snapshot!("check_failed_human", render(&failed));
    }
}
