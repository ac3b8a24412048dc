//! Defaults from the config file (`/etc/pgbookend.toml` or `$PGBOOKEND_CONFIG`); flags win.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The system-wide config file read when `$PGBOOKEND_CONFIG` is not set.
pub const SYSTEM_CONFIG: &str = "/etc/pgbookend.toml";

/// Settings a config file may hold. Every one is also a flag; the flag wins.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default stores (`--store`), each a directory or `file://` URL.
    #[serde(default)]
    pub store: Vec<String>,
    /// Default run directory for agents (`--run-dir`).
    pub run_dir: Option<PathBuf>,
    /// Default PGDATA (`--pgdata`).
    pub pgdata: Option<PathBuf>,
    /// Default connection string (`-d`). A password belongs in `.pgpass`, not here.
    pub conninfo: Option<String>,
    /// Default heartbeat interval (`--heartbeat`), e.g. "10s".
    pub heartbeat: Option<String>,
    /// Default agent timeout (`--timeout`), e.g. "24h".
    pub timeout: Option<String>,
    /// Default archive wait bound for `stop` (`--archive-timeout`), e.g. "10m".
    pub archive_timeout: Option<String>,
    /// Default WAL mode (`--wal`): collect, archive or none.
    pub wal: Option<String>,
    /// Default archive directory (`--archive`).
    pub archive: Option<PathBuf>,
    /// How many stores must take the bundle (`--min-stores`); default all.
    pub min_stores: Option<usize>,
    /// S3 endpoint (`--s3-endpoint`), e.g. "https://minio.example:9000".
    pub s3_endpoint: Option<String>,
    /// S3 region (`--s3-region`).
    pub s3_region: Option<String>,
    /// Path-style S3 addressing (`--s3-path-style`).
    pub s3_path_style: Option<bool>,
    /// How long a failing S3 request is retried, e.g. "2m".
    pub s3_retry_timeout: Option<String>,
    /// Command run after a successful stop or run (`--on-success`).
    pub on_success: Option<String>,
    /// Command run after a failed stop or run (`--on-failure`).
    pub on_failure: Option<String>,
    /// Bound on either command (`--notify-timeout`), e.g. "60s".
    pub notify_timeout: Option<String>,
    /// Stores of the WAL archive (`archive-push`/`archive-get` `--store`); default: `store`.
    #[serde(default)]
    pub archive_store: Vec<String>,
    /// zstd level of archived WAL (`--compress-level`), 1 to 19; default 3.
    pub archive_compress_level: Option<i32>,
    /// How many archive stores must hold a WAL file before `archive-push` succeeds
    /// (`--min-stores`); default all.
    pub archive_min_stores: Option<usize>,
    /// How many segments `archive-get` fetches ahead during recovery (`--prefetch`);
    /// default 0 (none).
    pub archive_get_prefetch: Option<u32>,
    /// How many of them it fetches at once (`--jobs`); default the number of cores.
    pub archive_get_jobs: Option<usize>,
    /// `archive-push` returns once the file is durable in a local spool and a background
    /// pusher stores it (`--async`); default false.
    pub archive_async: Option<bool>,
    /// The spool of the asynchronous mode (`--spool`); default `<state dir>/archive-spool`.
    pub archive_spool: Option<String>,
    /// Bytes the spool may hold before `archive-push --async` fails (`--spool-max`);
    /// default 1 GiB.
    pub archive_spool_max: Option<u64>,
    /// Parallel pushes of the asynchronous pusher (`--jobs`); default 2.
    pub archive_push_jobs: Option<usize>,
    /// Take backups only on a server of this role (`--only-on`): primary or standby.
    pub only_on: Option<String>,
}

impl Config {
    /// Loads `$PGBOOKEND_CONFIG` (must exist if set) or `/etc/pgbookend.toml` (optional).
    pub fn load() -> Result<Config> {
        match std::env::var_os("PGBOOKEND_CONFIG") {
            Some(p) if !p.is_empty() => Self::load_from(Path::new(&p), true),
            _ => Self::load_from(Path::new(SYSTEM_CONFIG), false),
        }
    }

    fn load_from(path: &Path, required: bool) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(Error::usage(format!(
                    "cannot read config file {}: {e}",
                    path.display()
                ))
                .hint("set PGBOOKEND_CONFIG to an existing TOML file, or unset it"))
            }
        };
        toml::from_str(&text).map_err(|e| {
            Error::usage(format!(
                "invalid config file {}: {}",
                path.display(),
                e.message()
            ))
            .hint("keys: store, run_dir, pgdata, conninfo, heartbeat, timeout, archive_timeout, wal, archive, min_stores, s3_endpoint, s3_region, s3_path_style, s3_retry_timeout, archive_store, archive_compress_level, archive_min_stores, on_success, on_failure, notify_timeout, only_on, archive_get_prefetch, archive_get_jobs, archive_async, archive_spool, archive_spool_max, archive_push_jobs")
        })
    }
}

/// Whether a conninfo string or URI carries a password (which would be visible in `ps`).
pub fn conninfo_has_password(conninfo: &str) -> bool {
    let c = conninfo.trim();
    if c.starts_with("postgres://") || c.starts_with("postgresql://") {
        let rest = c.split_once("://").map(|x| x.1).unwrap_or("");
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return true;
            }
        }
        return rest
            .split(['?', '&'])
            .any(|kv| kv.trim_start().starts_with("password="));
    }
    // key = value pairs; values may be quoted, so look at each key position.
    let bytes = c.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let key = &c[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            if key == "password" {
                return true;
            }
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'\'' {
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            } else {
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
            }
        } else if i == start {
            i += 1;
        }
    }
    false
}

/// pgbookend's persistent state directory (live records, rescue copies): on persistent
/// storage with room, unlike the run directory (often a small tmpfs under `/run`).
/// `$PGBOOKEND_STATE_DIR`, else `/var/lib/pgbookend` for root, else
/// `$XDG_STATE_HOME/pgbookend` or `~/.local/state/pgbookend`.
pub fn state_root() -> PathBuf {
    if let Some(d) = std::env::var_os("PGBOOKEND_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/pgbookend");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("pgbookend");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/pgbookend")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_passwords_in_conninfo() {
        assert!(conninfo_has_password("host=x password=secret"));
        assert!(conninfo_has_password("password = 'a b'"));
        assert!(conninfo_has_password("postgresql://u:pw@h/db"));
        assert!(conninfo_has_password(
            "postgres://u@h/db?sslmode=require&password=pw"
        ));
        assert!(!conninfo_has_password(
            "host=x user=backup application_name='password=x'"
        ));
        assert!(!conninfo_has_password("postgresql://u@h:5432/db"));
        assert!(!conninfo_has_password("host=/tmp passfile=/root/.pgpass"));
    }
}
