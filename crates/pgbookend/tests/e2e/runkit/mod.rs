//! Helpers shared by the `run` and integration tests: the "nothing left behind" checks of a
//! failed backup, a canary writer that commits rows through the backup window, and the
//! checks of a restored cluster (pgbench invariant, pg_amcheck, the canary rows).

use crate::common::{is_our_agent, wait_until, Tool};
use pgbookend_formats::lsn::Lsn;
use pgbookend_testkit::Cluster;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A failed or aborted backup left nothing: no bundle, no marker, no agent, no session, no
/// replication slot, and the server aborted the backup.
#[track_caller]
pub fn nothing_left(c: &Cluster, tool: &Tool, id: &str) {
    assert!(
        !tool.bundle_dir(id).exists(),
        "no bundle (not even a partial one) may exist for {id}"
    );
    let marker = c.pgdata().join("pg_backup_metadata").join(id);
    assert!(!marker.exists(), "the marker of {id} must be removed");
    if let Some(pid) = tool.agent_pid(id) {
        assert!(
            wait_until(Duration::from_secs(10), || !is_our_agent(pid)),
            "the agent of {id} must be gone"
        );
    }
    let sessions =
        || c.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbookend%'");
    assert!(
        wait_until(Duration::from_secs(10), || sessions() == "0"),
        "no pgbookend session may stay open: {}",
        sessions()
    );
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_replication_slots"),
        "0",
        "no replication slot may be left"
    );
    assert!(
        c.wait_for_log(
            "aborting backup due to backend exiting",
            Duration::from_secs(20)
        ),
        "the server must have aborted the backup:\n{}",
        c.server_log()
    );
    let st = tool.status(id);
    assert_eq!(st.code, 3, "status says the backup is void: {st:?}");
    assert!(
        ["aborted", "failed"].contains(&st.json()["state"].as_str().unwrap_or("")),
        "{st:?}"
    );
}

/// Rows committed one by one through a backup window, each with a WAL position read right
/// after its commit: every row whose position is before the stop LSN must be in a
/// restore of that backup.
pub struct Canary {
    /// (row number, WAL insert position after its commit).
    pub rows: Vec<(u32, Lsn)>,
}

/// Creates the canary table (in `tablespace` if given).
pub fn canary_table(c: &Cluster, tablespace: Option<&str>) {
    let ts = tablespace
        .map(|t| format!(" TABLESPACE {t}"))
        .unwrap_or_default();
    c.psql(&format!("CREATE TABLE canary (n int PRIMARY KEY){ts}"));
}

/// Runs `f` while a thread commits canary rows, one every few milliseconds, through one
/// psql session; returns f's result and the rows.
pub fn with_canary<R>(c: &Cluster, f: impl FnOnce() -> R) -> (R, Canary) {
    use std::io::{BufRead, BufReader, Write};
    let mut cmd = Command::new(pgbookend_testkit::client_bin("psql"));
    pgbookend_testkit::run_as_server_user(&mut cmd);
    for (k, v) in c.env() {
        cmd.env(k, v);
    }
    let mut psql = cmd
        .current_dir("/")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    let mut input = psql.stdin.take().unwrap();
    let mut output = BufReader::new(psql.stdout.take().unwrap());
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut rows = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                writeln!(
                    input,
                    "INSERT INTO canary VALUES ({n}); SELECT pg_current_wal_insert_lsn();"
                )
                .expect("psql stdin");
                let mut line = String::new();
                output.read_line(&mut line).expect("psql stdout");
                rows.push((n, line.trim().parse::<Lsn>().expect("an LSN")));
                std::thread::sleep(Duration::from_millis(5));
            }
            rows
        });
        let r = f();
        stop.store(true, Ordering::SeqCst);
        let rows = writer.join().expect("canary writer");
        (r, Canary { rows })
    });
    drop(input);
    let _ = psql.wait();
    result
}

impl Canary {
    /// Every row committed before `stop_lsn` is in the restored cluster, and some of them
    /// were committed inside the window (after `start_lsn`). Returns the last such row.
    #[track_caller]
    pub fn check(&self, restored: &Cluster, start_lsn: Lsn, stop_lsn: Lsn) -> u32 {
        let before: Vec<u32> = self
            .rows
            .iter()
            .filter(|(_, l)| *l < stop_lsn)
            .map(|(n, _)| *n)
            .collect();
        let in_window = self
            .rows
            .iter()
            .filter(|(_, l)| *l > start_lsn && *l < stop_lsn)
            .count();
        assert!(
            in_window > 0,
            "no canary row was committed inside the window {start_lsn}..{stop_lsn}: {:?}",
            self.rows
        );
        let last = *before.last().expect("rows before stop");
        let present: Vec<u32> = restored
            .psql("SELECT n FROM canary ORDER BY n")
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        for n in &before {
            assert!(
                present.binary_search(n).is_ok(),
                "canary row {n}, committed before the stop LSN {stop_lsn}, is missing after the restore (present: {present:?})"
            );
        }
        last
    }
}

/// pg_amcheck (PostgreSQL 15's client) finds nothing wrong: heap and btree indexes with
/// heapallindexed; on 13, whose amcheck has no heap check, btree indexes only.
#[track_caller]
pub fn amcheck_clean(r: &Cluster) {
    let mut cmd = Command::new(pgbookend_testkit::client_bin("pg_amcheck"));
    pgbookend_testkit::run_as_server_user(&mut cmd);
    for (k, v) in r.env() {
        cmd.env(k, v);
    }
    cmd.current_dir("/")
        .args(["-d", "postgres", "--install-missing", "--heapallindexed"]);
    if r.major() < 14 {
        cmd.args(["--index", "*.*.*"]);
    }
    let out = cmd.output().expect("run pg_amcheck");
    assert!(
        out.status.success(),
        "pg_amcheck found problems ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
