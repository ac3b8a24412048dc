//! The label is never lost: the rescue copy a stopping agent writes the moment
//! `pg_backup_stop` returns, building a bundle from it into the stores, and completing
//! a partial bundle later (`pgbookend rescue --id ID`).
//!
//! The rescue copy is `<state>/rescue/<id>/` (state: see [`crate::config::state_root`]):
//! `backup_label`, `tablespace_map`, `pg_control`, the file list once made, and
//! `rescue.json` (every fact needed to finish). It holds no WAL: that is read from
//! `pg_wal` or the archive when the bundle is built. A bundle written for remote stores
//! only is staged in `<state>/rescue/<id>/stage/<id>/`, on storage with room.

use crate::agent::state::StoreOutcome;
use crate::bundle::manifest::WalMode;
use crate::bundle::manifest::{self, Manifest, WalEntry};
use crate::bundle::walcollect;
use crate::error::{io_err, Class, Error, Result};
use crate::fault::fault;
use crate::fsutil::{self, Ownership};
use crate::store::s3::Settings as S3Settings;
use crate::store::Store;
use pgbookend_formats::lsn::Lsn;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The facts file of a rescue copy.
pub const FACTS: &str = "rescue.json";
/// The files a rescue copy may hold besides its facts, copied into every bundle.
pub const SAVED: &[&str] = &[
    "backup_label",
    "tablespace_map",
    "pg_control",
    crate::bundle::filelist::FILE_LIST,
];

/// The server's small files of a stopped backup, by name, as saved.
pub type Saved = Vec<(String, Vec<u8>)>;

/// Everything needed to finish a stopped backup's bundle without its agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Facts {
    pub format: u32,
    pub id: String,
    pub stores: Vec<String>,
    #[serde(default)]
    pub min_stores: Option<usize>,
    pub wal_mode: WalMode,
    #[serde(default)]
    pub archive_dir: Option<PathBuf>,
    /// The timeline of the start (the manifest's `timeline` is the stop's).
    pub start_tli: u32,
    /// The bundle's manifest without `wal` and `files` (those are made when it is built).
    pub manifest: Manifest,
    /// The token of the backup's live record (see `live.rs`), removed once rescued.
    #[serde(default)]
    pub token: String,
}

/// `<state>/rescue`.
pub fn root() -> PathBuf {
    crate::config::state_root().join("rescue")
}

/// Creates `dir` and its parents, the last one private (0700).
fn private_dir_all(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_err("cannot create", parent, e))?;
    }
    fsutil::ensure_dir(dir, &Ownership::private())
}

/// True if `p` exists, without following a link.
fn present(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Writes the rescue copy durably into the first of `roots` that takes it, as
/// `<root>/<id>/`: built under a temporary name, then renamed whole. Returns its path.
/// Without facts (the server's answer did not parse) only the files are kept.
pub fn save(
    roots: &[PathBuf],
    id: &str,
    facts: Option<&Facts>,
    small: &[(String, Vec<u8>)],
) -> Result<PathBuf> {
    let mut why = Vec::new();
    for root in roots {
        match save_in(root, id, facts, small) {
            Ok(p) => return Ok(p),
            Err(e) => why.push(e.message),
        }
    }
    Err(Error::env(format!(
        "cannot save the label of backup {id}: {}",
        why.join("; ")
    )))
}

fn save_in(
    root: &Path,
    id: &str,
    facts: Option<&Facts>,
    small: &[(String, Vec<u8>)],
) -> Result<PathBuf> {
    private_dir_all(root)?;
    let own = Ownership::private();
    let suffix = hex::encode(fsutil::random_bytes::<6>());
    let tmp = root.join(format!(".{id}.{suffix}"));
    std::fs::create_dir(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
    let res = (|| {
        own.apply(&tmp, true)?;
        for (name, data) in small {
            fsutil::write_atomic(&tmp.join(name), data, &own)?;
        }
        if let Some(f) = facts {
            write_facts(&tmp, f)?;
        }
        let dest = root.join(id);
        if present(&dest) {
            // Start refuses an ID with a rescue copy; never mix two backups' files.
            let aside = root.join(format!("{id}.{suffix}"));
            std::fs::rename(&tmp, &aside).map_err(|e| io_err("cannot rename", &aside, e))?;
            fsutil::fsync_dir(root)?;
            return Ok(aside);
        }
        std::fs::rename(&tmp, &dest).map_err(|e| io_err("cannot rename", &dest, e))?;
        fsutil::fsync_dir(root)?;
        Ok(dest)
    })();
    if res.is_err() {
        let _ = fsutil::remove_tree(&tmp);
    }
    res
}

/// (Re)writes `rescue.json` durably.
pub fn write_facts(dir: &Path, facts: &Facts) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(facts).map_err(|e| Error::internal(e.to_string()))?;
    fsutil::write_atomic(&dir.join(FACTS), &bytes, &Ownership::private())
}

/// Reads and checks a rescue copy's facts: they must name backup `id`.
pub fn load(dir: &Path, id: &str) -> Result<Facts> {
    let p = dir.join(FACTS);
    let md = std::fs::symlink_metadata(&p).map_err(|e| io_err("cannot read", &p, e))?;
    if !md.is_file() || md.len() > 1 << 20 {
        return Err(Error::env(format!(
            "{} is not a rescue record",
            p.display()
        )));
    }
    let bytes = std::fs::read(&p).map_err(|e| io_err("cannot read", &p, e))?;
    let f: Facts = serde_json::from_slice(&bytes)
        .map_err(|e| Error::env(format!("{} does not parse: {e}", p.display())))?;
    if f.id != id || f.manifest.id != id {
        return Err(Error::env(format!(
            "{} names backup {}, not {id}",
            p.display(),
            f.id
        )));
    }
    crate::id::validate(&f.id)?;
    Ok(f)
}

/// The WAL files of the window (see [`walcollect::window_files`]), named as `pg_wal` or
/// the archive hold them.
pub fn window(f: &Facts, archive: Option<&Path>) -> Result<Vec<String>> {
    let m = &f.manifest;
    let lsn = |s: &str| {
        s.parse::<Lsn>()
            .map_err(|e| Error::env(format!("rescue record: bad LSN {s:?}: {e}")))
    };
    let start = lsn(&m.start_lsn)?;
    // A standby backup's window runs to what the standby had replayed at stop.
    let stop = match &m.replay_lsn {
        Some(r) => lsn(r)?,
        None => lsn(&m.stop_lsn)?,
    };
    let pg_wal = Path::new(&m.pgdata).join("pg_wal");
    let in_archive = |n: &str| archive.is_some_and(|d| walcollect::find_in_archive(d, n).is_some());
    let exists = |n: &str| match f.wal_mode {
        WalMode::Archive => in_archive(n),
        _ => pg_wal.join(n).is_file() || in_archive(n),
    };
    let seg = m.wal_segment_size;
    Ok(walcollect::window_files(
        start,
        stop,
        f.start_tli,
        m.timeline,
        seg,
        &exists,
    ))
}

/// [`store_archive_entries`] now, pushing from the backup's `pg_wal`.
fn store_archive_now(f: &Facts, s3: &S3Settings, window: &[String]) -> Result<Vec<WalEntry>> {
    let pg_wal = Path::new(&f.manifest.pgdata).join("pg_wal");
    store_archive_entries(f, s3, window, Some(&pg_wal), std::time::Duration::ZERO)
}

/// Confirms that the store archive of the backup (`archive_stores`) holds every WAL file
/// of the window, pushing from `pg_wal` what the server finished but did not archive yet.
/// `s3`: the settings of its S3 stores.
pub fn store_archive_entries(
    f: &Facts,
    s3: &S3Settings,
    window: &[String],
    pg_wal: Option<&Path>,
    timeout: std::time::Duration,
) -> Result<Vec<WalEntry>> {
    let m = &f.manifest;
    let stores = m
        .archive_stores
        .iter()
        .map(|u| Store::parse(u, s3))
        .collect::<Result<Vec<_>>>()?;
    let sysid: u64 = m
        .system_identifier
        .parse()
        .map_err(|_| Error::internal("bad system identifier in the backup's facts"))?;
    let s = crate::archive::Settings {
        min_stores: f
            .min_stores
            .unwrap_or(stores.len())
            .clamp(1, stores.len().max(1)),
        stores,
        level: crate::archive::DEFAULT_LEVEL,
        pgdata: std::path::PathBuf::from(&m.pgdata),
        prefetch: 0,
        prefetch_jobs: 1,
    };
    let entries = crate::archive::confirm::confirm_window(&s, sysid, window, pg_wal, timeout)?;
    // The backup history file is not needed to recover, but belongs in a complete archive:
    // confirmed (and pushed) too when the server wrote and finished it (a primary).
    if let (Some(dir), Some(name)) = (pg_wal, backup_history_name(m)) {
        if crate::archive::confirm::finished(dir, &name) {
            crate::archive::confirm::confirm_window(&s, sysid, &[name], Some(dir), timeout)?;
        }
    }
    Ok(entries)
}

/// `<stop timeline><start segment>.<offset>.backup`, as the server names the backup
/// history file of a backup from a primary.
fn backup_history_name(m: &Manifest) -> Option<String> {
    let start: Lsn = m.start_lsn.parse().ok()?;
    let seg = m.wal_segment_size;
    let tli = u32::from_str_radix(m.stop_wal_file.get(0..8)?, 16).ok()?;
    let first =
        pgbookend_formats::wal::file_name(tli, pgbookend_formats::wal::segno(start, seg), seg);
    Some(format!("{first}.{:08X}.backup", start.0 % seg as u64))
}

/// Confirms that `dir` holds every WAL file of the window now; names the first missing.
pub fn archive_entries(dir: &Path, window: &[String]) -> Result<Vec<WalEntry>> {
    walcollect::wait_archive_dir(dir, window, std::time::Duration::ZERO).map_err(|missing| {
        Error::new(
            Class::Rescuable,
            format!(
                "WAL file {missing} of the backup window is not in {}",
                dir.display()
            ),
        )
        .hint("run rescue again once the archiver has delivered it (check archive_command and pg_stat_archiver)")
    })
}

/// What building a bundle needs besides the rescue copy.
pub struct Plan<'a> {
    pub facts: &'a Facts,
    /// The rescue copy (source of the saved files).
    pub saved: &'a Path,
    pub window: &'a [String],
    /// With `--wal archive`: the entries already confirmed in the archive.
    pub archived: Option<Vec<WalEntry>>,
    /// An archive directory to read collected WAL from when `pg_wal` lacks it.
    pub archive: Option<&'a Path>,
}

/// Writes the whole bundle into `dest`: the saved files, the WAL (collect mode), then
/// `bundle.json` with every file's size and SHA-256. `check` runs after the WAL is
/// read and before `bundle.json` is written: an error there leaves a partial bundle.
pub fn build(dest: &Path, plan: &Plan, check: &mut dyn FnMut() -> Result<()>) -> Result<Manifest> {
    let own = Ownership::private();
    if let Some(parent) = dest.parent() {
        if !parent.exists() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_err("cannot create store directory", parent, e))?;
        }
    }
    let md = std::fs::symlink_metadata(dest);
    if md.as_ref().is_ok_and(|m| !m.is_dir()) {
        return Err(Error::env(format!(
            "{} is not a directory (a link?): refusing to write a bundle through it",
            dest.display()
        )));
    }
    fsutil::ensure_dir(dest, &own)?;
    remove_temporaries(dest)?;
    remove_temporaries(&dest.join("wal"))?;
    copy_saved(plan.saved, dest, &own)?;
    let f = plan.facts;
    let mut m = f.manifest.clone();
    m.wal = match f.wal_mode {
        WalMode::Collect => {
            let mut sources = vec![Path::new(&m.pgdata).join("pg_wal")];
            sources.extend(plan.archive.map(Path::to_path_buf));
            walcollect::collect(&sources, plan.window, dest, &own)?
        }
        WalMode::Archive => plan.archived.clone().unwrap_or_default(),
        WalMode::None => plan
            .window
            .iter()
            .map(|n| WalEntry {
                name: n.clone(),
                size: None,
                sha256: None,
                stored: None,
                archived_as: None,
            })
            .collect(),
    };
    check()?;
    fault("during-upload");
    fsutil::fsync_dir(dest)?;
    m.files = manifest::hash_files(dest)?;
    let bytes = serde_json::to_vec_pretty(&m).map_err(|e| Error::internal(e.to_string()))?;
    fsutil::write_atomic(&dest.join(manifest::MANIFEST), &bytes, &own)?;
    Ok(m)
}

/// Removes the temporary files (`.NAME.tmp...`) an interrupted build left in `dir`, so a
/// completed bundle holds only its own files. Links and directories are left alone.
fn remove_temporaries(dir: &Path) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot list", dir, e)),
    };
    for e in rd {
        let e = e.map_err(|e| io_err("cannot list", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file && name.starts_with('.') && name.contains(".tmp") {
            std::fs::remove_file(e.path())
                .map_err(|err| io_err("cannot remove", &e.path(), err))?;
        }
    }
    Ok(())
}

/// Copies the saved files of a rescue copy into a bundle directory.
pub fn copy_saved(saved: &Path, dest: &Path, own: &Ownership) -> Result<()> {
    if saved == dest {
        return Ok(());
    }
    for name in SAVED {
        let src = saved.join(name);
        if std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
            fsutil::copy_atomic(&src, &dest.join(name), own)?;
        }
    }
    Ok(())
}

/// Best effort: puts the saved files into each local store's `<store>/<id>/` at once, so
/// that the store itself shows a rescuable partial bundle if everything after fails.
pub fn seed_stores(saved: &Path, facts: &Facts, s3: &S3Settings) {
    let own = Ownership::private();
    for url in &facts.stores {
        let Some(dest) = Store::parse(url, s3)
            .ok()
            .and_then(|s| s.local_bundle_dir(&facts.id))
        else {
            continue;
        };
        let root = dest.parent().unwrap_or(Path::new("/"));
        let res = std::fs::create_dir_all(root)
            .map_err(|e| io_err("cannot create", root, e))
            .and_then(|()| {
                if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    return Err(Error::env(format!("{} is not a directory", dest.display())));
                }
                fsutil::ensure_dir(&dest, &own)
            })
            .and_then(|()| copy_saved(saved, &dest, &own));
        if let Err(e) = res {
            tracing::warn!("cannot put the label into {}: {e}", dest.display());
        }
    }
}

/// What writing a bundle to the stores did.
pub struct Written {
    pub outcomes: Vec<StoreOutcome>,
    pub hints: Vec<String>,
    /// The manifest as written (from the first build that succeeded).
    pub manifest: Option<Manifest>,
}

/// Writes the bundle into every store (see [`crate::store::fanout::write`]): built once
/// into the first local store that takes it (or, with remote stores only, into
/// `<rescue>/stage/<id>`), then copied or uploaded to the others, `bundle.json` last
/// everywhere. `s3`: the settings of the S3 stores.
pub fn write_stores(
    plan: &Plan,
    stores: &[String],
    s3: &S3Settings,
    check: &mut dyn FnMut() -> Result<()>,
) -> Written {
    let written = crate::store::fanout::write(
        &plan.facts.id,
        stores,
        s3,
        &plan.saved.join("stage"),
        &mut |dir| build(dir, plan, check),
    );
    let mut hints = Vec::new();
    let mut outcomes = Vec::new();
    for (url, r) in written.results {
        match r {
            Ok(loc) => outcomes.push(StoreOutcome {
                store: url,
                ok: true,
                location: Some(loc),
                error: None,
            }),
            Err(e) => {
                tracing::error!("store {url} failed: {e}");
                for h in &e.hints {
                    if !hints.contains(h) {
                        hints.push(h.clone());
                    }
                }
                outcomes.push(StoreOutcome {
                    store: url,
                    ok: false,
                    location: None,
                    error: Some(e.message),
                });
            }
        }
    }
    Written {
        outcomes,
        hints,
        manifest: written.manifest,
    }
}

/// Refuses a new backup whose ID still has leftovers of an earlier one: a rescue copy or
/// a partial bundle in a local store. Their files must never be mixed with a new
/// backup's (the new bundle would adopt the old label or WAL).
pub fn refuse_leftovers(id: &str, stores: &[Store]) -> Result<()> {
    let mine = root().join(id);
    if present(&mine) {
        return Err(Error::usage(format!(
            "backup {id} stopped earlier and its bundle is not complete: its label is saved in {}",
            mine.display()
        ))
        .hint(format!(
            "complete it with `pgbookend rescue --id {id}`, or choose another --id"
        )));
    }
    for dir in stores.iter().filter_map(|s| s.local_bundle_dir(id)) {
        if present(&dir) && !dir.join(manifest::MANIFEST).exists() {
            return Err(Error::usage(format!(
                "{} holds a partial bundle of an earlier backup with ID {id}",
                dir.display()
            ))
            .hint(format!("complete it with `pgbookend rescue --id {id}` if it holds a label, or remove that directory, or choose another --id")));
        }
    }
    Ok(())
}

/// Where the rescue copy of `id` is: the state directory, else the run-directory entry
/// (where an agent saves it when the state directory cannot be written).
pub fn locate(run: &crate::agent::rundir::RunDir, id: &str) -> Option<PathBuf> {
    [root().join(id), run.entry(id).dir.join("rescue").join(id)]
        .into_iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
}

/// `rescue --id ID [--store URL]... [--archive DIR]`: completes a stopped backup's bundle
/// from its rescue copy and the WAL that still exists, `bundle.json` last, then removes
/// the rescue copy; or says exactly why it cannot. `s3`: the settings of the S3 stores.
pub fn command(
    run: &crate::agent::rundir::RunDir,
    id: &str,
    stores: Vec<String>,
    archive: Option<PathBuf>,
    s3: &S3Settings,
) -> Result<crate::output::Output> {
    let saved = rescue_copy(run, id)?;
    let facts = load(&saved, id)?;
    let stores = if stores.is_empty() {
        facts.stores.clone()
    } else {
        stores
            .iter()
            .map(|u| Store::parse(u, s3).map(|s| s.url()))
            .collect::<Result<Vec<_>>>()?
    };
    let archive = match archive {
        Some(a) => Some(walcollect::archive_dir_arg(&a)?),
        None => facts.archive_dir.clone(),
    };
    let window = window(&facts, archive.as_deref())?;
    let archived = archived_now(&facts, s3, archive.as_deref(), &window)?;
    let plan = Plan {
        facts: &facts,
        saved: &saved,
        window: &window,
        archived,
        archive: archive.as_deref(),
    };
    let w = write_stores(&plan, &stores, s3, &mut || Ok(()));
    let out = report(id, &facts, &saved, window.len(), &w);
    if out.error.is_some() {
        return Ok(out);
    }
    fsutil::remove_tree(&saved)?;
    crate::agent::live::remove(id, &facts.token);
    let entry = run.entry(id);
    if let Some(mut st) = entry.read_state() {
        st.state = crate::agent::state::Phase::Stopped;
        st.rescue = None;
        st.failure = None;
        st.updated = crate::timefmt::now_unix();
        let _ = entry.write_state(&st);
    }
    Ok(out)
}

/// The report of `rescue` (JSON, human, and the error when too few stores took the
/// bundle) from what writing the stores did with the `wal_files` WAL files of the window.
fn report(
    id: &str,
    facts: &Facts,
    saved: &Path,
    wal_files: usize,
    w: &Written,
) -> crate::output::Output {
    let json = serde_json::json!({
        "id": id,
        "rescue_copy": saved.display().to_string(),
        "wal_files": wal_files,
        "stores": w.outcomes,
        "min_stores": required_stores(facts, w),
    });
    let human = outcome_lines(w);
    if let Some(e) = not_rescued(id, facts, w, saved) {
        return crate::output::Output {
            json,
            human: format!("backup {id} NOT rescued\n{human}"),
            error: Some(e),
        };
    }
    crate::output::Output {
        json,
        human: format!(
            "backup {id} rescued: its bundle is complete ({wal_files} WAL file{})\n{human}",
            if wal_files == 1 { "" } else { "s" }
        ),
        error: None,
    }
}

/// The rescue copy of backup `id`, once no agent can still be writing its bundle.
fn rescue_copy(run: &crate::agent::rundir::RunDir, id: &str) -> Result<PathBuf> {
    crate::id::validate(id)?;
    let entry = run.entry(id);
    // An agent that has just answered `stop` exits within moments.
    if !entry.wait_agent_gone(std::time::Duration::from_secs(5)) {
        return Err(Error::usage(format!(
            "backup {id} still has a live agent: its stop may still be writing the bundle"
        ))
        .hint(format!(
            "wait for it; `pgbookend status --id {id}` shows its state"
        )));
    }
    locate(run, id).ok_or_else(|| {
        Error::usage(format!(
            "no rescue copy of backup {id} in {} (nor in the run directory)",
            root().display()
        ))
        .hint("a backup is rescuable only once pg_backup_stop has returned; `pgbookend status` and `pgbookend list` show which are")
    })
}

/// The archived segments of the window, for a backup that keeps its WAL in an archive.
fn archived_now(
    facts: &Facts,
    s3: &S3Settings,
    archive: Option<&Path>,
    window: &[String],
) -> Result<Option<Vec<WalEntry>>> {
    Ok(match (facts.wal_mode, archive) {
        (WalMode::Archive, Some(d)) => Some(archive_entries(d, window)?),
        (WalMode::Archive, None) if !facts.manifest.archive_stores.is_empty() => {
            Some(store_archive_now(facts, s3, window)?)
        }
        (WalMode::Archive, None) => {
            return Err(Error::usage(
                "this backup keeps its WAL in an archive: pass --archive DIR",
            ))
        }
        _ => None,
    })
}

/// How many stores must take the bundle.
fn required_stores(facts: &Facts, w: &Written) -> usize {
    crate::store::fanout::required_stores(facts.min_stores, w.outcomes.len())
}

/// One line per store: where the bundle is, or why it is not there.
fn outcome_lines(w: &Written) -> String {
    let mut human = String::new();
    for o in &w.outcomes {
        match (&o.location, &o.error) {
            (Some(l), _) => human.push_str(&format!("  bundle: {l}\n")),
            (None, e) => human.push_str(&format!(
                "  bundle NOT written to {}: {}\n",
                o.store,
                e.as_deref().unwrap_or("?")
            )),
        }
    }
    human
}

/// The error when too few stores took the bundle.
fn not_rescued(id: &str, facts: &Facts, w: &Written, saved: &Path) -> Option<Error> {
    let written = w.outcomes.iter().filter(|o| o.ok).count();
    if written >= required_stores(facts, w) {
        return None;
    }
    let why: Vec<String> = w
        .outcomes
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| format!("{} ({e})", o.store)))
        .collect();
    let mut e = Error::new(
        Class::Rescuable,
        format!(
            "backup {id} is still not complete: {}; its label stays saved in {}",
            why.join("; "),
            saved.display()
        ),
    );
    for h in &w.hints {
        e = e.hint(h.clone());
    }
    Some(e.hint(format!(
        "fix the cause and run `pgbookend rescue --id {id}` again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(min_stores: Option<usize>) -> Facts {
        Facts {
            format: 1,
            id: "b1".into(),
            stores: vec!["/srv/a".into(), "/srv/full".into()],
            min_stores,
            wal_mode: WalMode::Collect,
            archive_dir: None,
            start_tli: 1,
            manifest: serde_json::from_str(include_str!("../../tests/data/manifest.json")).unwrap(),
            token: "t".into(),
        }
    }

    fn written() -> Written {
        Written {
            outcomes: vec![
                StoreOutcome {
                    store: "/srv/a".into(),
                    ok: true,
                    location: Some("/srv/a/b1".into()),
                    error: None,
                },
                StoreOutcome {
                    store: "/srv/full".into(),
                    ok: false,
                    location: None,
                    error: Some("No space left on device".into()),
                },
            ],
            hints: vec!["free space in /srv/full".into()],
            manifest: None,
        }
    }

    #[test]
    fn report_snapshots() {
        let saved = Path::new("/var/lib/pgbookend/rescue/b1");
        let out = report("b1", &facts(None), saved, 3, &written());
        let e = out
            .error
            .expect("one of two stores is not enough by default");
        insta::assert_snapshot!("rescue_not_rescued_human", out.human);
        insta::assert_json_snapshot!("rescue_not_rescued_json", out.json);
        insta::assert_json_snapshot!("rescue_not_rescued_error", e);
        let out = report("b1", &facts(Some(1)), saved, 1, &written());
        assert!(out.error.is_none());
        insta::assert_snapshot!("rescue_rescued_human", out.human);
    }
}
