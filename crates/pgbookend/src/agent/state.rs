//! What an agent records about its backup (`state.json`) and what `stop` reports.

use crate::bundle::manifest::{WalArchive, WalMode};
use serde::{Deserialize, Serialize};

/// Where a backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The agent is connecting and calling the start function.
    Starting,
    /// The backup is in progress; the copy may be taken.
    Running,
    /// `stop` is under way.
    Stopping,
    /// Stopped; the bundle is written (see `stop` for whether the WAL is safe).
    Stopped,
    /// Void: the session was lost, the agent died, or it timed out.
    Failed,
    /// Void by request (`abort`).
    Aborted,
    /// Stopped on the server and its label saved, but the bundle is not complete (the
    /// agent died, or WAL or a store failed): `pgbookend rescue --id ID` completes it.
    Rescuable,
}

impl Phase {
    /// True for phases after which nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Stopped | Phase::Failed | Phase::Aborted | Phase::Rescuable
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
            Phase::Rescuable => "rescuable",
        }
    }
}

/// The agent's record of one backup. Never holds a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    pub id: String,
    pub state: Phase,
    pub agent_pid: u32,
    pub pgdata: Option<String>,
    pub stores: Vec<String>,
    pub server: Option<String>,
    pub pg_version_num: Option<u32>,
    pub system_identifier: Option<String>,
    pub start_lsn: Option<String>,
    pub start_wal_file: Option<String>,
    pub timeline: Option<u32>,
    pub backup_from: Option<String>,
    /// Unix seconds.
    pub start_time: Option<i64>,
    /// Unix seconds of the last successful heartbeat.
    pub last_heartbeat: Option<i64>,
    pub heartbeat_interval_ms: u64,
    pub timeout_ms: u64,
    /// Why the backup is void (failed/aborted).
    pub failure: Option<String>,
    /// The result of `stop`, once stopped.
    pub stop: Option<StopReport>,
    /// Where the label was saved once the stop call returned (the rescue copy), until
    /// the bundle is complete in the stores.
    #[serde(default)]
    pub rescue: Option<String>,
    /// Unix seconds of this record.
    pub updated: i64,
}

/// One store's outcome at `stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreOutcome {
    pub store: String,
    pub ok: bool,
    pub location: Option<String>,
    pub error: Option<String>,
}

/// What `stop` did, as printed by `stop --json` and kept in the agent's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopReport {
    pub id: String,
    pub system_identifier: String,
    pub pg_version_num: u32,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_wal_file: String,
    pub stop_wal_file: String,
    pub backup_from: String,
    pub start_time: String,
    pub stop_time: String,
    /// Seconds from start to stop (the backup window), measured to the millisecond from
    /// pg_backup_start's return to pg_backup_stop's.
    pub window_s: f64,
    /// Seconds the stop itself took.
    pub duration_s: f64,
    /// `collect`, `archive` or `none`.
    pub wal_mode: WalMode,
    /// WAL segments of the window (in the bundle with `collect`).
    pub wal_segments: u64,
    /// Bytes of WAL stored in the bundle (compressed).
    pub wal_bytes_stored: u64,
    /// Files in the bundle's file list.
    pub file_list_count: Option<u64>,
    /// "archived" (confirmed), "not_waited" (--no-wait-archive), "archiving_off",
    /// or "not_confirmed" (timed out: exit 5).
    pub wal_archive: WalArchive,
    pub wal_archive_detail: Option<String>,
    pub stores: Vec<StoreOutcome>,
    /// How many stores had to take the bundle (`--min-stores`; all by default).
    #[serde(default)]
    pub min_stores: usize,
    /// Where the label is saved while the bundle is not complete (exit 7).
    #[serde(default)]
    pub rescue: Option<String>,
}
