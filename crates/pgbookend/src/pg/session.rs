//! The database session that holds a backup: every SQL statement it sends, with the
//! variant each PostgreSQL major needs chosen by `pgbookend_formats::version`
//! (`pg_start_backup`/`pg_stop_backup` or `pg_backup_start`/`pg_backup_stop`).

use crate::error::{Error, Result};
use crate::pg::pq::{Conn, PqError};
use pgbookend_formats::lsn::Lsn;
use pgbookend_formats::version;
use std::path::PathBuf;
use std::time::Duration;

/// What the stop function returns: exactly the server's bytes.
#[derive(Debug, Clone)]
pub struct StopResult {
    pub lsn: Lsn,
    /// On a standby: its replay position right after the stop call returned.
    pub replay_lsn: Option<Lsn>,
    pub labelfile: String,
    pub spcmapfile: String,
}

/// The session of one backup.
pub struct Session {
    conn: Conn,
    pub version_num: u32,
    pub major: u32,
}

fn sql_err(what: &str, e: PqError) -> Error {
    let mut err = Error::env(format!("{what}: {}", e.message));
    if e.is_permission_denied() {
        err = err.hint("the role needs the grants listed in the README (\"Database role\")");
    }
    err
}

impl Session {
    /// Connects (libpq conventions) with TCP keepalives tuned to the heartbeat, and sets
    /// the session so the server never ends it on its own: the timeouts that could
    /// (`idle_session_timeout`, `idle_in_transaction_session_timeout`,
    /// `statement_timeout`, `lock_timeout`) are set to 0 for this session only.
    pub fn connect(conninfo: Option<&str>, id: &str, heartbeat: Duration) -> Result<Session> {
        let hb = heartbeat.as_secs().max(1);
        let idle = hb.to_string();
        let interval = (hb / 3).max(1).to_string();
        let user_timeout = (hb * 3 * 1000).max(30_000).to_string();
        let app = format!("pgbookend {id}");
        let defaults = [
            ("application_name", app.as_str()),
            ("connect_timeout", "30"),
            ("keepalives", "1"),
            ("keepalives_idle", idle.as_str()),
            ("keepalives_interval", interval.as_str()),
            ("keepalives_count", "3"),
            ("tcp_user_timeout", user_timeout.as_str()),
        ];
        let conn = Conn::connect(&defaults, conninfo).map_err(|e| {
            Error::env(format!("cannot connect to PostgreSQL: {}", e.message))
                .hint("connection settings follow libpq: PGHOST, PGPORT, PGUSER, PGDATABASE, -d CONNINFO; passwords go in ~/.pgpass or PGPASSFILE")
        })?;
        let version_num = conn.server_version();
        let Some(major) = version::major_from_server_version_num(version_num) else {
            let major = version::server_major(version_num);
            let (oldest, newest) = (version::OLDEST_MAJOR, version::NEWEST_MAJOR);
            return Err(Error::env(format!(
                "PostgreSQL {major} (server_version_num {version_num}) is not supported; pgbookend supports {oldest} to {newest}"
            )));
        };
        let mut s = Session {
            conn,
            version_num,
            major,
        };
        // One round trip: the timeouts that could end the session go to 0 for this session
        // (idle_session_timeout where the major has it), and server-side keepalives (effective on
        // TCP only) follow the heartbeat so the server also notices a dead peer.
        let idle_session = if version::has_idle_session_timeout(major) {
            ", set_config('idle_session_timeout', '0', false)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT set_config('idle_in_transaction_session_timeout', '0', false), \
                    set_config('statement_timeout', '0', false), \
                    set_config('lock_timeout', '0', false), \
                    set_config('tcp_keepalives_idle', $1, false), \
                    set_config('tcp_keepalives_interval', $1, false){idle_session}"
        );
        s.conn
            .query(&sql, &[&idle])
            .map_err(|e| sql_err("cannot configure the session", e))?;
        Ok(s)
    }

    /// Where we are connected (no password), for logs.
    pub fn describe(&self) -> String {
        self.conn.describe()
    }

    /// The socket, for poll(2).
    pub fn socket(&self) -> i32 {
        self.conn.socket()
    }

    /// The server's system identifier (`pg_control_system()`).
    pub fn system_identifier(&mut self) -> Result<u64> {
        let rows = self
            .conn
            .query("SELECT system_identifier FROM pg_control_system()", &[])
            .map_err(|e| sql_err("cannot read pg_control_system()", e))?;
        rows.scalar()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::internal("pg_control_system() returned no system identifier"))
    }

    /// `SHOW data_directory`, or `None` if the role may not see it (then `--pgdata` is needed).
    pub fn data_directory(&mut self) -> Result<Option<PathBuf>> {
        match self.conn.query("SHOW data_directory", &[]) {
            Ok(r) => Ok(r.scalar().map(PathBuf::from)),
            Err(e) if e.is_permission_denied() => Ok(None),
            Err(e) => Err(sql_err("cannot read data_directory", e)),
        }
    }

    /// True on a standby.
    pub fn in_recovery(&mut self) -> Result<bool> {
        let r = self
            .conn
            .query("SELECT pg_is_in_recovery()", &[])
            .map_err(|e| sql_err("cannot call pg_is_in_recovery()", e))?;
        Ok(r.scalar() == Some("t"))
    }

    /// The value of a setting visible to every role (`archive_mode`, ...).
    pub fn setting(&mut self, name: &str) -> Result<Option<String>> {
        let r = self
            .conn
            .query("SELECT current_setting($1, true)", &[name])
            .map_err(|e| sql_err("cannot read a setting", e))?;
        Ok(r.scalar().map(|s| s.to_string()))
    }

    /// Starts the non-exclusive backup in this session; returns the start LSN.
    pub fn start_backup(&mut self, label: &str, fast: bool) -> Result<Lsn> {
        let fast = if fast { "true" } else { "false" };
        let sql = if version::uses_pg_backup_start(self.major) {
            "SELECT pg_backup_start($1, $2::boolean)::text"
        } else {
            "SELECT pg_start_backup($1, $2::boolean, false)::text"
        };
        let r = self.conn.query(sql, &[label, fast]).map_err(|e| {
            let mut err = Error::env(format!("the server refused to start the backup: {}", e.message));
            if e.is_permission_denied() {
                err = err.hint("grant EXECUTE on the backup functions to this role (README, \"Database role\")");
            }
            err
        })?;
        let text = r
            .scalar()
            .ok_or_else(|| Error::internal("the start function returned no LSN"))?;
        text.parse::<Lsn>()
            .map_err(|e| Error::internal(format!("the start function returned {text:?}: {e}")))
    }

    /// Stops the backup in this session without waiting for archiving (pgbookend waits
    /// itself, bounded by `--archive-timeout`, because the server's own wait cannot be
    /// interrupted without losing the label).
    pub fn stop_backup(&mut self) -> Result<StopResult> {
        let sql = if version::uses_pg_backup_start(self.major) {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        };
        let r = self.conn.query(sql, &[]).map_err(|e| {
            Error::void(format!(
                "the server refused to stop the backup: {}",
                e.message
            ))
        })?;
        let lsn_text = r
            .get(0, "lsn")
            .ok_or_else(|| Error::internal("the stop function returned no LSN"))?;
        let lsn = lsn_text.parse::<Lsn>().map_err(|e| {
            Error::internal(format!("the stop function returned {lsn_text:?}: {e}"))
        })?;
        Ok(StopResult {
            lsn,
            replay_lsn: None,
            labelfile: r.get(0, "labelfile").unwrap_or_default().to_string(),
            spcmapfile: r.get(0, "spcmapfile").unwrap_or_default().to_string(),
        })
    }

    /// A standby's replay position (`pg_last_wal_replay_lsn()`); `None` on a primary.
    pub fn replay_lsn(&mut self) -> Result<Option<Lsn>> {
        let r = self
            .conn
            .query("SELECT pg_last_wal_replay_lsn()::text", &[])
            .map_err(|e| sql_err("cannot call pg_last_wal_replay_lsn()", e))?;
        Ok(r.scalar().and_then(|t| t.parse::<Lsn>().ok()))
    }

    /// `pg_stat_archiver`'s last failure, to explain a stuck archive.
    pub fn archiver_failure(&mut self) -> Option<String> {
        let r = self
            .conn
            .query(
                "SELECT last_failed_wal, last_failed_time::text, last_archived_wal FROM pg_stat_archiver",
                &[],
            )
            .ok()?;
        let failed = r.get(0, "last_failed_wal")?;
        Some(format!(
            "pg_stat_archiver: last failed {} at {}, last archived {}",
            failed,
            r.get(0, "last_failed_time").unwrap_or("?"),
            r.get(0, "last_archived_wal").unwrap_or("none")
        ))
    }

    /// Creates the temporary physical replication slot that keeps the server from
    /// recycling the WAL of the window; it reserves WAL at once and goes away with the
    /// session.
    pub fn create_slot(&mut self, name: &str) -> Result<()> {
        self.conn
            .query("SELECT pg_create_physical_replication_slot($1, true, true)", &[name])
            .map(|_| ())
            .map_err(|e| {
                let base = Error::env(format!(
                    "cannot create the temporary replication slot that keeps the WAL of the backup window: {}",
                    e.message
                ));
                if e.is_permission_denied() || e.message.contains("permission") {
                    base.hint("the role needs the REPLICATION attribute (ALTER ROLE ... REPLICATION) for --wal collect")
                } else {
                    base.hint("raise max_replication_slots (needs a restart), or choose --wal archive --archive DIR (confirm the WAL in your archive) or --wal none (you keep the WAL yourself)")
                }
            })
    }

    /// The `wal_status` of a replication slot (`reserved`, `extended`, `unreserved`,
    /// `lost`), or `missing` when it does not exist.
    pub fn slot_status(&mut self, name: &str) -> Result<String> {
        let r = self
            .conn
            .query(
                "SELECT coalesce((SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1), 'missing')",
                &[name],
            )
            .map_err(|e| sql_err("cannot read the replication slot's state", e))?;
        Ok(r.scalar().unwrap_or("missing").to_string())
    }

    /// Sends the heartbeat query without waiting for it. With a slot, the answer is the
    /// slot's `wal_status`, so a slot invalidated by `max_slot_wal_keep_size` is noticed.
    pub fn send_heartbeat(&mut self, slot: Option<&str>) -> std::result::Result<(), PqError> {
        match slot {
            Some(name) => self.conn.send(&format!(
                "SELECT coalesce((SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{name}'), 'missing')"
            )),
            None => self.conn.send("SELECT 'ok'"),
        }
    }

    /// Reads whatever the server sent: `Ok(Some(answer))` when a heartbeat completed,
    /// `Ok(None)` when nothing is complete yet, `Err` when the session is lost.
    pub fn poll(&mut self) -> std::result::Result<Option<String>, PqError> {
        self.conn
            .poll_result()
            .map(|r| r.map(|rows| rows.scalar().unwrap_or_default().to_string()))
    }
}
