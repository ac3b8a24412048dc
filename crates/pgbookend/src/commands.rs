//! The user-visible commands of the hook pair: `start`, `stop`, `status`, `abort`, `cleanup`.
//! Each returns a value to print (human or JSON) or an [`Error`] whose class is the exit code.

use crate::agent::marker;
use crate::agent::protocol::{self, Request, Response};
use crate::agent::rundir::{Entry, Liveness, RunDir};
use crate::agent::serve::{self, AgentConfig};
use crate::agent::state::{AgentState, Phase, StopReport};
use crate::bundle::manifest::{WalArchive, WalMode};
use crate::config::{conninfo_has_password, Config};
use crate::error::{Class, Error, Result};
use crate::output::{human_bytes, Output};
use crate::store::s3::Settings as S3Settings;
use crate::store::{default_store, Store};
use crate::timefmt::{human_duration, now_unix, parse_duration, rfc3339};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `start` (and of `run`'s start part).
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub id: Option<String>,
    pub stores: Vec<String>,
    pub pgdata: Option<PathBuf>,
    pub conninfo: Option<String>,
    pub spread: bool,
    pub timeout: Option<String>,
    pub heartbeat: Option<String>,
    /// `collect` (default), `archive` or `none`.
    pub wal: Option<String>,
    /// The archive directory of `--wal archive`.
    pub archive: Option<PathBuf>,
    /// How many stores must take the bundle for `stop` to succeed (default: all).
    pub min_stores: Option<usize>,
    /// `--only-on primary|standby`: skip (exit 0) on a server of the other role.
    pub only_on: Option<String>,
    /// The settings of S3 stores (flags, then the config file), passed to the agent.
    pub s3: S3Settings,
}

fn duration_opt(flag: &str, value: Option<&str>, default: &str) -> Result<Duration> {
    let v = value.unwrap_or(default);
    parse_duration(v).map_err(|e| Error::usage(format!("--{flag}: {e}")))
}

/// What `start` returns to `run`: the agent's answer as a value, and its rendering.
pub struct Started {
    pub ready: serve::Ready,
    pub output: Output,
}

/// What `start_backup` did: started a backup, or skipped it (`--only-on`, wrong role).
pub enum Begun {
    Started(Box<Started>),
    Skipped(crate::ha::Skip),
}

/// `start`: spawns the agent and returns once the backup is in progress (or skipped).
pub fn start(run: &RunDir, cfg: &Config, opts: StartOptions) -> Result<Output> {
    Ok(match start_backup(run, cfg, opts)? {
        Begun::Started(s) => s.output,
        Begun::Skipped(skip) => crate::ha::output(&skip, "start"),
    })
}

/// [`start`], keeping the agent's answer typed for `run`.
pub fn start_backup(run: &RunDir, cfg: &Config, opts: StartOptions) -> Result<Begun> {
    let id = match opts.id {
        Some(id) => {
            crate::id::validate(&id)?;
            // An old skip record of this ID must never answer for this start, whatever
            // makes it fail from here on.
            crate::ha::forget(&id);
            id
        }
        None => crate::id::generate(),
    };
    let conninfo = opts.conninfo.or_else(|| cfg.conninfo.clone());
    if let Some(ci) = &conninfo {
        if conninfo_has_password(ci) && opts_conninfo_from_flag(ci, cfg) {
            return Err(Error::usage("the connection string on the command line holds a password, which any user can see in ps")
                .hint("put the password in ~/.pgpass or a file named by PGPASSFILE, and drop it from -d"));
        }
    }
    let heartbeat = duration_opt(
        "heartbeat",
        opts.heartbeat.as_deref().or(cfg.heartbeat.as_deref()),
        "10s",
    )?;
    let timeout = duration_opt(
        "timeout",
        opts.timeout.as_deref().or(cfg.timeout.as_deref()),
        "24h",
    )?;
    if heartbeat < Duration::from_millis(100) {
        return Err(Error::usage("--heartbeat must be at least 100ms"));
    }
    let only_on = crate::ha::only_on(opts.only_on.as_deref(), cfg.only_on.as_deref())?;
    if let Some(skip) = crate::ha::check_role(only_on, conninfo.as_deref(), &id)? {
        return Ok(Begun::Skipped(skip));
    }
    crate::ha::forget(&id);
    let StoreCheck {
        stores,
        unreachable,
        min_stores,
    } = check_stores(&id, opts.stores, opts.min_stores, &opts.s3, cfg)?;
    let n_stores = stores.len();
    let pgdata = match opts.pgdata.or_else(|| cfg.pgdata.clone()) {
        Some(p) if p.is_relative() => Some(
            std::env::current_dir()
                .map_err(|e| Error::env(format!("cannot resolve --pgdata: {e}")))?
                .join(p),
        ),
        other => other,
    };
    let (wal_mode, archive_dir) = wal_settings(opts.wal.as_deref(), opts.archive, cfg)?;
    run.ensure()?;
    let entry = run.entry(&id);
    let lock = claim_entry(&entry, &id)?;
    let acfg = AgentConfig {
        id: id.clone(),
        run_dir: run.root.clone(),
        conninfo,
        pgdata,
        stores,
        fast: !opts.spread,
        timeout_ms: timeout.as_millis() as u64,
        heartbeat_ms: heartbeat.as_millis() as u64,
        wal_mode,
        archive_dir,
        min_stores,
        s3: opts.s3,
        only_on,
    };
    let ready = serve::spawn(&acfg, &entry, lock)?;
    let output = started_output(
        &ready,
        &unreachable,
        min_stores.unwrap_or(n_stores),
        n_stores,
    )?;
    Ok(Begun::Started(Box::new(Started { ready, output })))
}

/// The stores `start` will write to, checked before anything changes: each parsed once,
/// preflighted, the `--min-stores` bound valid, no leftovers of an earlier backup of the
/// same ID, and enough of them reachable.
struct StoreCheck {
    stores: Vec<String>,
    /// Stores that cannot be reached now (fewer than `--min-stores` allows).
    unreachable: Vec<Error>,
    min_stores: Option<usize>,
}

/// The stores of `--store` (else the config, else the default store), checked (see
/// [`StoreCheck`]).
fn check_stores(
    id: &str,
    flag_stores: Vec<String>,
    flag_min: Option<usize>,
    s3: &S3Settings,
    cfg: &Config,
) -> Result<StoreCheck> {
    let store_urls = if !flag_stores.is_empty() {
        flag_stores
    } else if !cfg.store.is_empty() {
        cfg.store.clone()
    } else {
        vec![default_store().display().to_string()]
    };
    let mut stores: Vec<String> = Vec::new();
    let mut parsed: Vec<Store> = Vec::new();
    let mut unreachable: Vec<Error> = Vec::new();
    for u in &store_urls {
        let s = Store::parse(u, s3)?;
        if stores.contains(&s.url()) {
            return Err(Error::usage(format!("store {} is given twice", s.url())));
        }
        match s.preflight(id) {
            Ok(()) => {}
            Err(e) if e.class() == Class::Environment => unreachable.push(e),
            Err(e) => return Err(e),
        }
        stores.push(s.url());
        parsed.push(s);
    }
    let min_stores = match flag_min.or(cfg.min_stores) {
        Some(n) if n == 0 || n > stores.len() => {
            return Err(Error::usage(format!(
                "--min-stores {n}: must be between 1 and the number of stores ({})",
                stores.len()
            )))
        }
        other => other,
    };
    crate::agent::rescue::refuse_leftovers(id, &parsed)?;
    let n_stores = stores.len();
    if n_stores - unreachable.len() < min_stores.unwrap_or(n_stores) {
        let mut e = unreachable.remove(0);
        e.message = format!("cannot start the backup: {}", e.message);
        return Err(e.hint("nothing was changed; fix the store, or lower --min-stores"));
    }
    Ok(StoreCheck {
        stores,
        unreachable,
        min_stores,
    })
}

/// `--wal` (default `collect`) and the archive directory it needs or allows.
fn wal_settings(
    flag_wal: Option<&str>,
    flag_archive: Option<PathBuf>,
    cfg: &Config,
) -> Result<(WalMode, Option<PathBuf>)> {
    let wal_mode = WalMode::parse(flag_wal.or(cfg.wal.as_deref()).unwrap_or("collect"))?;
    let archive_dir = match (wal_mode, flag_archive.or_else(|| cfg.archive.clone())) {
        (WalMode::Archive, Some(d)) => Some(crate::bundle::walcollect::archive_dir_arg(&d)?),
        (_, Some(d)) => Some(crate::bundle::walcollect::archive_dir_arg(&d)?),
        (_, None) => None,
    };
    Ok((wal_mode, archive_dir))
}

/// The report of `start`: the agent's answer, what must be copied, warnings about stale or
/// foreign markers and unreachable stores.
fn started_output(
    ready: &serve::Ready,
    unreachable: &[Error],
    min_stores: usize,
    n_stores: usize,
) -> Result<Output> {
    let mut human = format!(
        "backup {} started at {} (WAL {}, timeline {}) on PostgreSQL {} ({})\n\
         copy the data directory {} now, then run: pgbookend stop --id {}\n",
        ready.id,
        ready.start_lsn,
        ready.start_wal_file,
        ready.timeline,
        ready.pg_version_num / 10_000,
        ready.backup_from,
        ready.pgdata,
        ready.id
    );
    if !ready.tablespaces.is_empty() {
        human.push_str(&format!(
            "the copy must include the tablespace directories too: {}\n",
            ready.tablespaces.join(", ")
        ));
    }
    if !ready.removed_stale_markers.is_empty() {
        human.push_str(&format!(
            "removed stale markers of backups whose agent is gone: {}\n",
            ready.removed_stale_markers.join(", ")
        ));
    }
    let foreign = foreign_markers(std::path::Path::new(&ready.pgdata));
    for (name, why) in &foreign {
        human.push_str(&format!(
            "warning: ignored the foreign marker directory {name:?} in {}: {why} (never used; `pgbookend cleanup --pgdata` removes it)\n",
            crate::pg::datadir::MARKER_DIR
        ));
    }
    for e in unreachable {
        human.push_str(&format!(
            "warning: {} (continuing: --min-stores {} of {n_stores} stores)\n",
            e.message, min_stores,
        ));
    }
    let mut json = serde_json::to_value(ready).map_err(|e| Error::internal(e.to_string()))?;
    if let Value::Object(m) = &mut json {
        m.insert(
            "store_warnings".into(),
            json!(unreachable.iter().map(|e| &e.message).collect::<Vec<_>>()),
        );
        m.insert(
            "foreign_markers".into(),
            json!(foreign
                .iter()
                .map(|(name, why)| json!({"name": name, "why": why}))
                .collect::<Vec<_>>()),
        );
    }
    Ok(Output {
        json,
        human,
        error: None,
    })
}

/// The directories in `pg_backup_metadata` that are not trustworthy markers (a JSON id
/// that differs from the directory name, a bad token, too big, unreadable): reported by
/// `start`, never used to build a path.
fn foreign_markers(pgdata: &std::path::Path) -> Vec<(String, String)> {
    marker::list(pgdata)
        .into_iter()
        .filter_map(|m| m.err())
        .collect()
}

/// A password in a conninfo from the config file is the user's choice (root-only file);
/// one given with -d is visible in `ps`, so only that is refused.
fn opts_conninfo_from_flag(ci: &str, cfg: &Config) -> bool {
    cfg.conninfo.as_deref() != Some(ci)
}

fn unknown_id(run: &RunDir, id: &str) -> Error {
    Error::usage(format!(
        "no backup with ID {id} is known in {}",
        run.root.display()
    ))
    .hint(
        "`pgbookend status` lists the known backups; use the same --run-dir and user as the start",
    )
}

/// The facts of a backup whose agent is gone without a final state.
fn agent_gone(st: &AgentState) -> String {
    format!(
        "its agent (pid {}) is gone: it was killed or crashed, its database session closed, and the server aborted the backup",
        st.agent_pid
    )
}

/// Records that an agent died and removes its marker: the state a dead agent could not
/// write. An agent that died after saving the label leaves a rescuable backup.
/// Takes the run-directory entry of a new backup: creates it, takes its lock (held from
/// here on, then by the agent, which inherits it), and clears what an earlier failed
/// attempt left. A concurrent `start` of the same ID finds the lock taken and refuses,
/// instead of removing this start's entry.
fn claim_entry(entry: &Entry, id: &str) -> Result<std::fs::File> {
    entry.create()?;
    let Some(lock) = entry.try_lock()? else {
        return Err(Error::usage(format!(
            "backup {id} is already in progress (or being started)"
        ))
        .hint("choose another --id"));
    };
    if let Some(st) = entry.read_state() {
        if st.state == Phase::Stopped || st.state == Phase::Rescuable {
            return Err(
                Error::usage(format!("backup {id} was already taken and stopped")).hint(
                    "each backup needs its own ID; `pgbookend cleanup` forgets finished backups",
                ),
            );
        }
    }
    entry.clear_except_lock()?;
    Ok(lock)
}

fn settle_dead(entry: &Entry, mut st: AgentState) -> AgentState {
    if !st.state.is_final() {
        match &st.rescue {
            Some(saved) => {
                st.failure = Some(format!(
                    "its agent (pid {}) died after pg_backup_stop returned; the label is saved in {saved}, the bundle is not complete",
                    st.agent_pid
                ));
                st.state = Phase::Rescuable;
            }
            None => {
                st.failure = Some(agent_gone(&st));
                st.state = Phase::Failed;
            }
        }
        st.updated = now_unix();
        let _ = entry.write_state(&st);
    }
    if let Some(pgdata) = &st.pgdata {
        if st.state != Phase::Stopped || marker::dir_of(pgdata.as_ref(), &st.id).exists() {
            let _ = marker::remove(pgdata.as_ref(), &st.id);
        }
    }
    st
}

/// What `stop` returns to `run`: the agent's report (none when `stop` completed a
/// rescuable backup instead), and the rendering.
pub struct Stopped {
    pub report: Option<StopReport>,
    pub output: Output,
}

/// `stop`: asks the agent to stop the backup and write the bundle. `s3`: the settings of
/// S3 stores, for completing a rescuable backup.
pub fn stop(
    run: &RunDir,
    cfg: &Config,
    id: &str,
    wait_archive: Option<bool>,
    archive_timeout: Option<&str>,
    s3: &S3Settings,
) -> Result<Output> {
    stop_backup(run, cfg, id, wait_archive, archive_timeout, s3).map(|s| s.output)
}

/// [`stop`], keeping the agent's report typed for `run`.
pub fn stop_backup(
    run: &RunDir,
    cfg: &Config,
    id: &str,
    wait_archive: Option<bool>,
    archive_timeout: Option<&str>,
    s3: &S3Settings,
) -> Result<Stopped> {
    crate::id::validate(id)?;
    let timeout = duration_opt(
        "archive-timeout",
        archive_timeout.or(cfg.archive_timeout.as_deref()),
        "10m",
    )?;
    let entry = run.entry(id);
    if !entry.exists() {
        // A start skipped by --only-on left no agent, only its record: nothing to stop.
        if let Some(skip) = crate::ha::read(id) {
            return Ok(Stopped {
                report: None,
                output: crate::ha::output(&skip, "stop"),
            });
        }
        return Err(unknown_id(run, id));
    }
    // `stop` run again on a rescuable backup completes it, as `rescue` does.
    if !entry.agent_alive()
        && entry
            .read_state()
            .is_some_and(|st| st.state == Phase::Rescuable)
    {
        let output = crate::agent::rescue::command(run, id, Vec::new(), None, s3)?;
        return Ok(Stopped {
            report: None,
            output,
        });
    }
    let req = Request::Stop {
        wait_archive,
        archive_timeout_ms: timeout.as_millis() as u64,
    };
    match protocol::call(&entry.socket(), &req, None)? {
        Some(Response::Stopped { report, error }) => {
            // The agent exits right after this answer: `stop` returns once it has, so
            // that a `rescue` or `status` run next never finds it still alive.
            entry.wait_agent_gone(AGENT_EXIT);
            Ok(Stopped {
                output: stop_output(&report, error),
                report: Some(*report),
            })
        }
        Some(Response::Error { error }) => Err(error),
        Some(_) => Err(Error::internal(
            "the agent gave an unexpected answer to stop",
        )),
        None => Err(settled_error(&entry, id)),
    }
}

/// How long `stop` waits for an agent that has answered to exit.
const AGENT_EXIT: Duration = Duration::from_secs(5);

/// Why a backup without a live agent cannot be stopped (or aborted).
fn settled_error(entry: &Entry, id: &str) -> Error {
    // The agent may be exiting right now; its lock tells.
    entry.wait_agent_gone(AGENT_EXIT);
    let Some(st) = entry.read_state() else {
        return Error::void(format!(
            "backup {id} is void: its agent is gone and left no state. No bundle exists."
        ))
        .hint("take a new backup");
    };
    let st = settle_dead(entry, st);
    match st.state {
        Phase::Stopped => {
            let at = st
                .stop
                .as_ref()
                .map(|r| r.stop_time.clone())
                .unwrap_or_default();
            Error::usage(format!(
                "backup {id} was already stopped (at {at}); there is nothing left to stop"
            ))
            .hint(format!("`pgbookend status --id {id}` shows the result"))
        }
        Phase::Rescuable => rescuable_error(&st),
        _ => Error::void(format!(
            "backup {id} is void: {}. No bundle was written.",
            st.failure.as_deref().unwrap_or("its agent is gone")
        ))
        .hint("the copy taken during this backup cannot be restored; take a new backup"),
    }
}

/// The exit-7 error of a stopped backup whose bundle is not complete.
fn rescuable_error(st: &AgentState) -> Error {
    let id = &st.id;
    Error::new(
        Class::Rescuable,
        format!(
            "backup {id} is RESCUABLE: {}",
            st.failure.as_deref().unwrap_or("its bundle is not complete")
        ),
    )
    .hint(format!(
        "run `pgbookend rescue --id {id}` (or this stop again): it completes the bundle from the saved label{} and the WAL still in pg_wal or the archive",
        st.rescue
            .as_deref()
            .map(|p| format!(" in {p}"))
            .unwrap_or_default()
    ))
}

fn stop_output(r: &StopReport, error: Option<Error>) -> Output {
    let mut human = format!(
        "backup {} stopped at {} after a window of {}\n  WAL needed: {} .. {} (timeline {})\n",
        r.id,
        r.stop_lsn,
        human_duration(Duration::from_secs_f64(r.window_s.max(0.0))),
        r.start_wal_file,
        r.stop_wal_file,
        r.timeline
    );
    human.push_str(&format!(
        "  WAL archive: {}\n",
        match r.wal_archive {
            WalArchive::Archived => "confirmed archived by the server",
            WalArchive::NotWaited => "not checked (--no-wait-archive)",
            WalArchive::ArchivingOff => "archiving is off",
            WalArchive::NotConfirmed => "NOT confirmed",
        }
    ));
    match r.wal_mode {
        WalMode::Collect => human.push_str(&format!(
            "  WAL in the bundle: {} segments, {} stored (zstd)\n",
            r.wal_segments,
            human_bytes(r.wal_bytes_stored)
        )),
        WalMode::Archive => human.push_str(&format!(
            "  WAL confirmed in the archive: {} segments\n",
            r.wal_segments
        )),
        WalMode::None => human.push_str(
            "  WAL not in the bundle (--wal none): restoring needs an archive holding it\n",
        ),
    }
    if let Some(n) = r.file_list_count {
        human.push_str(&format!(
            "  file list: {n} files a complete copy must hold\n"
        ));
    }
    for s in &r.stores {
        match (&s.location, &s.error) {
            (Some(loc), _) => human.push_str(&format!("  bundle: {loc}\n")),
            (None, Some(e)) => {
                human.push_str(&format!("  bundle NOT written to {}: {e}\n", s.store))
            }
            _ => {}
        }
    }
    if let Some(p) = &r.rescue {
        human.push_str(&format!(
            "  RESCUABLE: the label is saved in {p}; complete the bundle with `pgbookend rescue --id {}`\n",
            r.id
        ));
    }
    let ok = r.stores.iter().filter(|s| s.ok).count();
    if ok < r.stores.len() && ok >= r.min_stores && ok > 0 {
        human.push_str(&format!(
            "  the bundle is in {ok} of {} stores, at least --min-stores {}: the backup is safe\n",
            r.stores.len(),
            r.min_stores
        ));
    }
    let mut json = serde_json::to_value(r).unwrap_or(Value::Null);
    if let (Some(e), Value::Object(m)) = (&error, &mut json) {
        m.insert(
            "error".into(),
            serde_json::to_value(e).unwrap_or(Value::Null),
        );
    }
    Output { json, human, error }
}

fn describe(st: &AgentState, alive: bool) -> (Value, String) {
    describe_at(st, alive, now_unix())
}

/// The JSON and human line of one backup's state, as of `now` (Unix seconds).
fn describe_at(st: &AgentState, alive: bool, now: i64) -> (Value, String) {
    let elapsed = st.start_time.map(|t| now - t);
    let hb_age = st.last_heartbeat.map(|t| now - t);
    let json = json!({
        "id": st.id,
        "state": st.state.as_str(),
        "agent_pid": st.agent_pid,
        "agent_alive": alive,
        "pgdata": st.pgdata,
        "stores": st.stores,
        "pg_version_num": st.pg_version_num,
        "backup_from": st.backup_from,
        "start_lsn": st.start_lsn,
        "start_wal_file": st.start_wal_file,
        "timeline": st.timeline,
        "start_time": st.start_time.map(rfc3339),
        "elapsed_s": elapsed,
        "last_heartbeat": st.last_heartbeat.map(rfc3339),
        "last_heartbeat_age_s": hb_age,
        "heartbeat_interval_s": st.heartbeat_interval_ms as f64 / 1000.0,
        "failure": st.failure,
        "rescue": st.rescue,
        "stop": st.stop,
    });
    let mut human = format!("{}: {}", st.id, st.state.as_str());
    if let Some(l) = &st.start_lsn {
        human.push_str(&format!(", started at {l}"));
    }
    if let Some(e) = elapsed {
        if !st.state.is_final() {
            human.push_str(&format!(
                " {} ago",
                human_duration(Duration::from_secs(e.max(0) as u64))
            ));
        }
    }
    if alive {
        human.push_str(&format!(", agent pid {}", st.agent_pid));
        if let Some(a) = hb_age {
            human.push_str(&format!(", last heartbeat {}s ago", a.max(0)));
        }
    }
    if let Some(r) = &st.stop {
        human.push_str(&format!(", stopped at {} ({})", r.stop_lsn, r.stop_time));
    }
    if let Some(f) = &st.failure {
        human.push_str(&format!("\n  reason: {f}"));
    }
    if let Some(p) = &st.rescue {
        human.push_str(&format!(
            "\n  label saved in {p}: run `pgbookend rescue --id {}`",
            st.id
        ));
    }
    human.push('\n');
    (json, human)
}

/// The current state of one entry: from the live agent, else from its record.
pub(crate) fn current_state(entry: &Entry) -> Option<(AgentState, bool)> {
    if entry.agent_alive() {
        if let Ok(Some(Response::State { state })) = protocol::call(
            &entry.socket(),
            &Request::Status,
            Some(Duration::from_secs(30)),
        ) {
            return Some((*state, true));
        }
        // Busy (stopping) or exiting: the record is the best we have.
        return entry.read_state().map(|s| (s, true));
    }
    let st = entry.read_state()?;
    Some((settle_dead(entry, st), false))
}

/// `status`: one backup (`--id`) or all known to this run directory.
pub fn status(run: &RunDir, id: Option<&str>) -> Result<Output> {
    if let Some(id) = id {
        crate::id::validate(id)?;
        let entry = run.entry(id);
        let (st, alive) = current_state(&entry).ok_or_else(|| unknown_id(run, id))?;
        let (json, human) = describe(&st, alive);
        let error = match st.state {
            Phase::Failed | Phase::Aborted => Some(Error::void(format!(
                "backup {id} is void: {}",
                st.failure.as_deref().unwrap_or("unknown reason")
            ))),
            Phase::Rescuable => Some(rescuable_error(&st)),
            _ => None,
        };
        return Ok(Output { json, human, error });
    }
    let mut list = Vec::new();
    let mut human = String::new();
    for entry in run.entries() {
        if let Some((st, alive)) = current_state(&entry) {
            let (j, h) = describe(&st, alive);
            list.push(j);
            human.push_str(&h);
        }
    }
    if list.is_empty() {
        human = format!("no backups known in {}\n", run.root.display());
    }
    Ok(Output {
        json: json!({ "backups": list }),
        human,
        error: None,
    })
}

/// `abort`: ends the session so the server aborts the backup.
pub fn abort(run: &RunDir, id: &str) -> Result<Output> {
    crate::id::validate(id)?;
    let entry = run.entry(id);
    if !entry.exists() {
        return Err(unknown_id(run, id));
    }
    let st = match protocol::call(
        &entry.socket(),
        &Request::Abort,
        Some(Duration::from_secs(120)),
    )? {
        Some(Response::Aborted { state }) => *state,
        Some(Response::Error { error }) => return Err(error),
        Some(_) => {
            return Err(Error::internal(
                "the agent gave an unexpected answer to abort",
            ))
        }
        None => {
            let e = settled_error(&entry, id);
            if e.class() == Class::Usage {
                return Err(e);
            }
            entry.read_state().ok_or(e)?
        }
    };
    let (json, _) = describe(&st, false);
    let human = format!(
        "backup {id} aborted: {}\n",
        st.failure
            .as_deref()
            .unwrap_or("the session was closed and the server aborted the backup")
    );
    Ok(Output {
        json,
        human,
        error: None,
    })
}

/// `cleanup`: forgets backups whose agent is gone (their run-directory entry and any
/// marker they left), and removes stale markers from `--pgdata`.
pub fn cleanup(run: &RunDir, pgdata: Option<&std::path::Path>) -> Result<Output> {
    let mut removed_entries = Vec::new();
    let mut kept = Vec::new();
    let mut removed_markers = Vec::new();
    for entry in run.entries() {
        // A concurrent start creates the entry before its agent takes the lock, and the
        // agent records state only once it holds it: an entry without state is being
        // started. Checked before the lock, so that a free lock then means the agent
        // has exited.
        if !entry.has_state() {
            kept.push(format!(
                "{} (being started, or its start was killed before the agent ran: `pgbookend start --id {}` again replaces it)",
                entry.id, entry.id
            ));
            continue;
        }
        if entry.liveness() != Liveness::Gone {
            continue;
        }
        if let Some(st) = entry.read_state() {
            let st = settle_dead(&entry, st);
            // The entry's name (a checked ID) names the marker, not the state file's text.
            if let Some(p) = &st.pgdata {
                if marker::dir_of(p.as_ref(), &entry.id).exists() {
                    marker::remove(p.as_ref(), &entry.id)?;
                    removed_markers.push(entry.id.clone());
                }
            }
            if st.state == Phase::Rescuable {
                kept.push(format!(
                    "{} (rescuable: run `pgbookend rescue --id {}`)",
                    entry.id, entry.id
                ));
                continue;
            }
        }
        if entry.dir.join("rescue").exists() {
            kept.push(format!(
                "{} (holds a rescued bundle in {})",
                entry.id,
                entry.dir.join("rescue").display()
            ));
            continue;
        }
        entry.remove()?;
        removed_entries.push(entry.id.clone());
    }
    let mut foreign = Vec::new();
    if let Some(p) = pgdata {
        let sweep = marker::sweep(p, None, true)?;
        for id in sweep.removed {
            if !removed_markers.contains(&id) {
                removed_markers.push(id);
            }
        }
        foreign = sweep.foreign;
    }
    let mut human = String::new();
    if removed_entries.is_empty() && removed_markers.is_empty() && foreign.is_empty() {
        human.push_str("nothing to clean up\n");
    }
    for (name, why, removed) in &foreign {
        let what = if *removed { "removed" } else { "left alone" };
        human.push_str(&format!(
            "{what} the foreign marker directory {name:?} in {} (its contents are never used): {why}\n",
            crate::pg::datadir::MARKER_DIR
        ));
    }
    for e in &removed_entries {
        human.push_str(&format!("forgot finished or dead backup {e}\n"));
    }
    for m in &removed_markers {
        human.push_str(&format!("removed stale marker of backup {m}\n"));
    }
    for k in &kept {
        human.push_str(&format!("kept {k}\n"));
    }
    Ok(Output {
        json: json!({
            "removed_entries": removed_entries,
            "removed_markers": removed_markers,
            "foreign_markers": foreign
                .iter()
                .map(|(name, why, removed)| json!({"name": name, "why": why, "removed": removed}))
                .collect::<Vec<_>>(),
            "kept": kept,
        }),
        human,
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::state::StoreOutcome;

    /// A stop report with fixed values: two stores, one of which failed.
    fn report(wal_mode: WalMode, wal_archive: WalArchive) -> StopReport {
        StopReport {
            id: "nightly-20261130".into(),
            system_identifier: "7312345678901234567".into(),
            pg_version_num: 150004,
            timeline: 2,
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/3000100".into(),
            start_wal_file: "000000020000000000000002".into(),
            stop_wal_file: "000000020000000000000003".into(),
            backup_from: "primary".into(),
            start_time: "2026-11-30 12:00:00 UTC".into(),
            stop_time: "2026-11-30 12:03:25 UTC".into(),
            window_s: 205.25,
            duration_s: 1.5,
            wal_mode,
            wal_segments: 2,
            wal_bytes_stored: 3 << 20,
            file_list_count: Some(1234),
            wal_archive,
            wal_archive_detail: None,
            stores: vec![
                StoreOutcome {
                    store: "/srv/backups".into(),
                    ok: true,
                    location: Some("/srv/backups/nightly-20261130".into()),
                    error: None,
                },
                StoreOutcome {
                    store: "s3://bucket/pg".into(),
                    ok: false,
                    location: None,
                    error: Some("connection refused".into()),
                },
            ],
            min_stores: 1,
            rescue: None,
        }
    }

    #[test]
    fn stop_report_collect_with_one_store_failed() {
        let out = stop_output(&report(WalMode::Collect, WalArchive::Archived), None);
        assert!(out.error.is_none());
        insta::assert_snapshot!("stop_collect_human", out.human);
        insta::assert_json_snapshot!("stop_collect_json", out.json);
    }

    #[test]
    fn stop_report_rescuable_with_its_error() {
        let mut r = report(WalMode::Archive, WalArchive::NotConfirmed);
        r.min_stores = 2;
        r.rescue = Some("/var/lib/pgbookend/rescue/nightly-20261130".into());
        let error = Error::new(Class::Rescuable, "backup nightly-20261130 is RESCUABLE")
            .hint("run `pgbookend rescue --id nightly-20261130`");
        let out = stop_output(&r, Some(error));
        insta::assert_snapshot!("stop_rescuable_human", out.human);
        insta::assert_json_snapshot!("stop_rescuable_json", out.json);
    }

    /// A running backup's state at fixed times.
    fn running() -> AgentState {
        AgentState {
            id: "nightly-20261130".into(),
            state: Phase::Running,
            agent_pid: 4242,
            pgdata: Some("/var/lib/postgresql/15/main".into()),
            stores: vec!["/srv/backups".into()],
            server: Some("/var/run/postgresql".into()),
            pg_version_num: Some(150004),
            system_identifier: Some("7312345678901234567".into()),
            start_lsn: Some("0/2000028".into()),
            start_wal_file: Some("000000010000000000000002".into()),
            timeline: Some(1),
            backup_from: Some("primary".into()),
            start_time: Some(1_795_000_000),
            last_heartbeat: Some(1_795_000_590),
            heartbeat_interval_ms: 10_000,
            timeout_ms: 86_400_000,
            failure: None,
            stop: None,
            rescue: None,
            updated: 1_795_000_590,
        }
    }

    #[test]
    fn status_snapshots() {
        let now = 1_795_000_600;
        let (json, human) = describe_at(&running(), true, now);
        insta::assert_snapshot!("status_running_human", human);
        insta::assert_json_snapshot!("status_running_json", json);
        let mut st = running();
        st.state = Phase::Rescuable;
        st.failure =
            Some("the bundle could not be written to: /srv/backups (No space left)".into());
        st.rescue = Some("/var/lib/pgbookend/rescue/nightly-20261130".into());
        st.stop = Some(report(WalMode::Collect, WalArchive::Archived));
        let (_, human) = describe_at(&st, false, now);
        insta::assert_snapshot!("status_rescuable_human", human);
    }

    #[test]
    fn stop_report_without_wal() {
        let mut r = report(WalMode::None, WalArchive::ArchivingOff);
        r.stores.truncate(1);
        r.file_list_count = None;
        let out = stop_output(&r, None);
        insta::assert_snapshot!("stop_wal_none_human", out.human);
    }
}
