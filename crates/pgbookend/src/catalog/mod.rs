//! What a store holds: `list` and `show`, for local and S3 stores alike; pruning it is
//! `expire` (`catalog/expire.rs`).
//!
//! A bundle is *complete* when its `bundle.json` exists and parses; anything else under
//! `<store>/<id>/` is *partial* (a `stop` still writing, or one that failed). A partial
//! bundle that holds a `backup_label` is *rescuable* (`pgbookend rescue` can complete it).
//! Removing a bundle removes its `bundle.json` first, so an interrupted removal leaves a
//! partial bundle, never a complete-looking incomplete one.
//! A `<store>/<id>` that is a symbolic link is never followed: skipped and reported.

pub mod expire;

use crate::bundle::manifest::{Manifest, MANIFEST};
use crate::bundle::read::MAX_MANIFEST_BYTES;
use crate::error::{io_err, Error, Result};
use crate::output::{human_bytes, Output};
use crate::store::Store;
use crate::timefmt::rfc3339;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Partial bundles younger than this may belong to a `stop` still writing: never removed.
pub const PARTIAL_GRACE: Duration = Duration::from_secs(24 * 3600);

/// One bundle directory (complete or partial) of a store.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    pub id: String,
    /// `bundle.json` exists and parses.
    pub complete: bool,
    pub manifest: Option<Manifest>,
    /// `bundle.json` as stored, for `show`.
    pub raw: Option<Value>,
    /// Why a bundle with a `bundle.json` is still not complete.
    pub problem: Option<String>,
    /// Every file or object of the bundle: path relative to the bundle, size.
    pub objects: Vec<(String, u64)>,
    /// Unix seconds of the newest file or object.
    pub modified: i64,
    pub location: String,
    /// A built-in backup (`pgbookend backup`): `data/<id>/index.json` exists beside it.
    pub built_in: bool,
}

impl BundleInfo {
    /// A partial bundle that holds the label: `pgbookend rescue` can complete it.
    pub fn rescuable(&self) -> bool {
        !self.complete && self.objects.iter().any(|o| o.0 == "backup_label")
    }
    pub fn size(&self) -> u64 {
        self.objects.iter().map(|o| o.1).sum()
    }
    /// The time the bundle is ordered by: its stop time, or for a partial bundle the last
    /// write.
    pub fn time(&self) -> i64 {
        self.manifest
            .as_ref()
            .and_then(|m| parse_rfc3339(&m.stop_time))
            .unwrap_or(self.modified)
    }
}

pub use crate::timefmt::parse_rfc3339;

/// The manifests of the complete bundles of a store: what `prepare --target` places a
/// target among (handed to the restore room by the CLI, which keeps restore free of
/// the catalog).
pub fn manifests(store: &Store) -> Result<Vec<Manifest>> {
    Ok(scan(store)?
        .into_iter()
        .filter(|b| b.complete)
        .filter_map(|b| b.manifest)
        .collect())
}

/// Groups `(id/rel, size, mtime)` entries into bundles and reads each `bundle.json`.
fn assemble(
    store: &Store,
    entries: Vec<(String, String, u64, i64)>,
    mut read_manifest: impl FnMut(&str) -> Result<Option<Vec<u8>>>,
) -> Result<Vec<BundleInfo>> {
    let mut by_id: BTreeMap<String, Vec<(String, u64, i64)>> = BTreeMap::new();
    for (id, rel, size, mtime) in entries {
        by_id.entry(id).or_default().push((rel, size, mtime));
    }
    let mut out = Vec::new();
    for (id, objs) in by_id {
        let modified = objs.iter().map(|o| o.2).max().unwrap_or(0);
        let has_manifest = objs.iter().any(|o| o.0 == MANIFEST);
        let (mut manifest, mut raw, mut problem) = (None, None, None);
        if has_manifest {
            match read_manifest(&id)? {
                Some(bytes) => match (
                    serde_json::from_slice::<Manifest>(&bytes),
                    serde_json::from_slice::<Value>(&bytes),
                ) {
                    (Ok(m), Ok(v)) if m.id == id => {
                        match crate::bundle::check::manifest_problems(&m).first() {
                            None => {
                                manifest = Some(m);
                                raw = Some(v);
                            }
                            Some(p) => problem = Some(p.message.clone()),
                        }
                    }
                    (Ok(m), _) => problem = Some(format!("{MANIFEST} names backup {}", m.id)),
                    (Err(e), _) => problem = Some(format!("{MANIFEST} does not parse: {e}")),
                },
                None => problem = Some(format!("{MANIFEST} vanished while listing")),
            }
        }
        let mut objects: Vec<(String, u64)> = objs.into_iter().map(|o| (o.0, o.1)).collect();
        objects.sort();
        out.push(BundleInfo {
            location: store.bundle_location(&id),
            complete: manifest.is_some(),
            id,
            manifest,
            raw,
            problem,
            objects,
            modified,
            built_in: false,
        });
    }
    out.sort_by(|a, b| (a.time(), &a.id).cmp(&(b.time(), &b.id)));
    Ok(out)
}

/// Every bundle of a store, oldest first.
pub fn scan(store: &Store) -> Result<Vec<BundleInfo>> {
    scan_store(store).map(|s| s.0)
}

/// Whether a top-level name of a store can be a bundle: a valid backup ID, and not the
/// WAL archive's directory (which `list` must not show, nor `expire` remove, as a
/// partial bundle).
fn is_bundle_name(id: &str) -> bool {
    id != crate::archive::layout::ROOT && crate::id::validate(id).is_ok()
}

/// Every bundle of a store, oldest first, and the entries skipped because they are not
/// a real directory (a symbolic link is never followed: it could lead to another store).
pub fn scan_store(store: &Store) -> Result<(Vec<BundleInfo>, Vec<String>)> {
    match store {
        Store::Local(root) => {
            let rd = std::fs::read_dir(root).map_err(|e| {
                io_err("cannot list the store", root, e)
                    .hint("check the --store path; a store directory is created by the first stop that writes to it")
            })?;
            let mut entries = Vec::new();
            let mut skipped = Vec::new();
            for e in rd {
                let e = e.map_err(|e| io_err("cannot list the store", root, e))?;
                let id = e.file_name().to_string_lossy().into_owned();
                if !is_bundle_name(&id) {
                    continue;
                }
                let ft = e
                    .file_type()
                    .map_err(|err| io_err("cannot stat", &e.path(), err))?;
                if ft.is_symlink() {
                    skipped.push(format!(
                        "{}: a symbolic link, not a bundle directory; not followed",
                        e.path().display()
                    ));
                    continue;
                }
                if !ft.is_dir() {
                    continue;
                }
                let before = entries.len();
                walk_files(&e.path(), "", &mut |rel, size, mtime| {
                    entries.push((id.clone(), rel, size, mtime))
                })?;
                // An empty directory is a partial bundle too.
                if entries.len() == before {
                    let mtime = e.metadata().map(|m| m.mtime()).unwrap_or(0);
                    entries.push((id.clone(), String::new(), 0, mtime));
                }
            }
            let mut infos = assemble(store, entries, |id| {
                // No link followed, and no more read than a bundle.json may hold.
                let dir = root.join(id);
                match crate::bundle::read::read_capped(&dir, MANIFEST, MAX_MANIFEST_BYTES) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err("cannot read", &dir.join(MANIFEST), e)),
                }
            })?;
            for i in &mut infos {
                i.objects.retain(|o| !o.0.is_empty());
                i.built_in = crate::store::local_data_dir(root, &i.id).is_some_and(|d| {
                    std::fs::symlink_metadata(d.join(crate::backup::format::INDEX))
                        .is_ok_and(|m| m.is_file())
                });
            }
            Ok((infos, skipped))
        }
        Store::S3(u) => {
            let c = crate::store::s3::Client::open(u)?;
            let listed = c.list()?;
            let built_in: std::collections::HashSet<String> = listed
                .iter()
                .filter_map(|o| {
                    let rest = o.key.strip_prefix(crate::id::DATA_DIR)?.strip_prefix('/')?;
                    let id = rest.strip_suffix(crate::backup::format::INDEX)?;
                    id.strip_suffix('/').map(str::to_string)
                })
                .collect();
            let entries = listed
                .into_iter()
                .filter_map(|o| {
                    let (id, rel) = o.key.split_once('/')?;
                    is_bundle_name(id).then_some(())?;
                    Some((id.to_string(), rel.to_string(), o.size, o.modified))
                })
                .collect();
            let mut infos = assemble(store, entries, |id| {
                c.get_small(&format!("{id}/{MANIFEST}"), MAX_MANIFEST_BYTES)
            })?;
            for i in &mut infos {
                i.built_in = built_in.contains(&i.id);
            }
            Ok((infos, Vec::new()))
        }
    }
}

/// Calls `f(relative path, size, mtime)` for every file below `dir`.
fn walk_files(dir: &Path, rel: &str, f: &mut dyn FnMut(String, u64, i64)) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))?;
    for e in rd {
        let e = e.map_err(|e| io_err("cannot list", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let relp = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let md = std::fs::symlink_metadata(e.path())
            .map_err(|err| io_err("cannot stat", &e.path(), err))?;
        if md.is_dir() {
            walk_files(&e.path(), &relp, f)?;
        } else if md.is_file() {
            f(relp, md.len(), md.mtime());
        }
    }
    Ok(())
}

/// Removes one bundle: `bundle.json` first (so it stops being complete at once), then
/// everything else (see [`Store::remove_bundle`]).
pub fn remove(store: &Store, b: &BundleInfo) -> Result<()> {
    let others: Vec<String> = b.objects.iter().map(|o| o.0.clone()).collect();
    store.remove_bundle(&b.id, &others)
}

fn wal_range(m: &Manifest) -> String {
    format!("{} .. {}", m.start_wal_file, m.stop_wal_file)
}

/// The JSON summary of one bundle, as `list` prints it.
fn summary(b: &BundleInfo) -> Value {
    let m = b.manifest.as_ref();
    json!({
        "id": b.id,
        "complete": b.complete,
        "rescuable": b.rescuable(),
        "copy": if b.built_in { "built-in" } else { "external" },
        "location": b.location,
        "size_bytes": b.size(),
        "objects": b.objects.len(),
        "modified": rfc3339(b.modified),
        "start_time": m.map(|m| &m.start_time),
        "stop_time": m.map(|m| &m.stop_time),
        "pg_version_num": m.map(|m| m.pg_version_num),
        "pg_major": m.map(|m| m.pg_major),
        "system_identifier": m.map(|m| &m.system_identifier),
        "timeline": m.map(|m| m.timeline),
        "start_lsn": m.map(|m| &m.start_lsn),
        "stop_lsn": m.map(|m| &m.stop_lsn),
        "start_wal_file": m.map(|m| &m.start_wal_file),
        "stop_wal_file": m.map(|m| &m.stop_wal_file),
        "wal_mode": m.map(|m| &m.wal_mode),
        "backup_from": m.map(|m| &m.backup_from),
        "problem": b.problem,
    })
}

/// The verdict and time of the bundle's last drill (`drill.json`, read by the drill room).
fn last_drill(store: &Store, b: &BundleInfo) -> Option<(String, String)> {
    let has = b
        .objects
        .iter()
        .any(|o| o.0 == crate::drill::record::RECORD);
    has.then(|| crate::drill::record::last(store, &b.id))
        .flatten()
}

fn drill_json(d: Option<(String, String)>) -> Value {
    d.map(|(verdict, finished)| json!({"verdict": verdict, "finished": finished}))
        .unwrap_or(Value::Null)
}

/// `list --store URL`: every bundle of the store, oldest first. `s3`: the settings of an
/// S3 store.
pub fn list(url: &str, s3: &crate::store::s3::Settings) -> Result<Output> {
    let store = Store::parse(url, s3)?;
    let (bundles, skipped) = scan_store(&store)?;
    let archives = read_archives(&store, &bundles);
    let drills: Vec<_> = bundles.iter().map(|b| last_drill(&store, b)).collect();
    let (json, human) = list_report(&store.url(), &bundles, &skipped, &archives, &drills);
    Ok(Output {
        json,
        human,
        error: None,
    })
}

/// The report of `list` (JSON and human): the bundles with their last drills (in the
/// same order), the skipped names and the archives read.
fn list_report(
    store: &str,
    bundles: &[BundleInfo],
    skipped: &[String],
    archives: &[ArchiveView],
    drills: &[Option<(String, String)>],
) -> (Value, String) {
    let complete = bundles.iter().filter(|b| b.complete).count();
    let mut human = format!(
        "{}: {} bundle{} ({complete} complete, {} partial)\n",
        store,
        bundles.len(),
        if bundles.len() == 1 { "" } else { "s" },
        bundles.len() - complete
    );
    if !bundles.is_empty() {
        let w = bundles.iter().map(|b| b.id.len()).max().unwrap_or(2).max(2);
        let mut rows = Vec::with_capacity(bundles.len());
        for (i, b) in bundles.iter().enumerate() {
            let (state, stopped, pg, sysid, wal) = match &b.manifest {
                Some(m) => (
                    "complete",
                    m.stop_time.clone(),
                    m.pg_major.to_string(),
                    m.system_identifier.clone(),
                    wal_range(m),
                ),
                None if b.rescuable() => (
                    "rescuable",
                    format!("(written {})", rfc3339(b.modified)),
                    "-".into(),
                    "-".into(),
                    format!(
                        "label saved in {}, bundle incomplete: run `pgbookend rescue --id {}`",
                        b.location, b.id
                    ),
                ),
                None => (
                    "partial",
                    format!("(written {})", rfc3339(b.modified)),
                    "-".into(),
                    "-".into(),
                    b.problem.clone().unwrap_or_else(|| "no bundle.json".into()),
                ),
            };
            let wal = match recoverable(archives, b) {
                Some(r) => format!("{wal}; WAL archived to {r}"),
                None => wal,
            };
            let wal = match &drills[i] {
                Some((verdict, at)) => format!("{wal}; last drill {verdict} {at}"),
                None => wal,
            };
            rows.push((b, state, stopped, pg, sysid, wal));
        }
        let t = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(7);
        human.push_str(&format!(
            "{:<w$}  {:<9}  {:<t$}  {:>2}  {:<20}  {:>10}  WAL\n",
            "ID", "STATE", "STOPPED", "PG", "SYSTEM IDENTIFIER", "SIZE"
        ));
        for (b, state, stopped, pg, sysid, wal) in rows {
            human.push_str(&format!(
                "{:<w$}  {state:<9}  {stopped:<t$}  {pg:>2}  {sysid:<20}  {:>10}  {wal}\n",
                b.id,
                human_bytes(b.size())
            ));
        }
    }
    for sk in skipped {
        human.push_str(&format!("skipped {sk}\n"));
    }
    human.push_str(&archives_human(archives));
    let json = json!({
        "store": store,
        "bundles": bundles.iter().zip(drills).map(|(b, d)| {
            let mut v = summary(b);
            v["last_drill"] = drill_json(d.clone());
            v["recoverable_to"] = json!(recoverable(archives, b));
            v
        }).collect::<Vec<_>>(),
        "skipped": skipped,
        "archives": archives.iter().map(archive_json).collect::<Vec<_>>(),
    });
    (json, human)
}

/// One cluster's WAL archive in a store, read for `list`.
struct ArchiveView {
    sysid: String,
    seg_size: u32,
    index: crate::archive::layout::Index,
}

/// The archives of the clusters that have complete bundles in the store (unreadable ones
/// are left out: `list` still lists the bundles).
fn read_archives(store: &Store, bundles: &[BundleInfo]) -> Vec<ArchiveView> {
    let Ok(handle) = crate::store::objects::Handle::open(store) else {
        return Vec::new();
    };
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for m in bundles.iter().filter_map(|b| b.manifest.as_ref()) {
        seen.insert(m.system_identifier.clone(), m.wal_segment_size);
    }
    seen.into_iter()
        .filter(|(_, seg)| pgbookend_formats::wal::is_valid_seg_size(*seg))
        .filter_map(|(sysid, seg_size)| {
            let index =
                crate::archive::layout::Index::read(&handle, sysid.parse().ok()?, seg_size).ok()?;
            (!index.objects.is_empty()).then_some(ArchiveView {
                sysid,
                seg_size,
                index,
            })
        })
        .collect()
}

/// The last archived segment of the contiguous run a bundle recovers through (from the
/// first segment it needs beyond its own WAL); `None` without an archive or a run.
fn recoverable(archives: &[ArchiveView], b: &BundleInfo) -> Option<String> {
    let m = b.manifest.as_ref()?;
    let a = archives.iter().find(|a| a.sysid == m.system_identifier)?;
    let first = crate::restore::pitr::first_needed(m);
    let last = a.index.reach(m.timeline, first).last?;
    Some(pgbookend_formats::wal::file_name(
        m.timeline, last, a.seg_size,
    ))
}

/// Per timeline: first and last archived segment, and the first gap inside.
fn timelines(a: &ArchiveView) -> Vec<(u32, String, String, Option<String>)> {
    let name = |t, n| pgbookend_formats::wal::file_name(t, n, a.seg_size);
    a.index
        .extents()
        .into_iter()
        .map(|(t, (first, last))| {
            let r = a.index.reach(t, first);
            let gap = r.gap.then(|| name(t, r.first_missing));
            (t, name(t, first), name(t, last), gap)
        })
        .collect()
}

fn archive_json(a: &ArchiveView) -> Value {
    json!({
        "system_identifier": a.sysid,
        "files": a.index.objects.len(),
        "history": a.index.histories.iter().collect::<Vec<_>>(),
        "timelines": timelines(a).into_iter().map(|(t, first, last, gap)| json!({
            "timeline": t, "first": first, "last": last, "first_missing": gap,
        })).collect::<Vec<_>>(),
    })
}

fn archives_human(archives: &[ArchiveView]) -> String {
    let mut out = String::new();
    for a in archives {
        for (t, first, last, gap) in timelines(a) {
            let gap = gap.map_or(String::new(), |g| format!(", GAP: {g} is missing"));
            out.push_str(&format!(
                "WAL archive of system {}, timeline {t}: {first} .. {last}{gap}\n",
                a.sysid
            ));
        }
    }
    out
}

/// `show --store URL --id ID`: everything about one bundle. `s3`: the settings of an S3
/// store.
pub fn show(url: &str, id: &str, s3: &crate::store::s3::Settings) -> Result<Output> {
    crate::id::validate(id)?;
    let store = Store::parse(url, s3)?;
    let b = scan_one(&store, id)?;
    let drill = last_drill(&store, &b);
    let (json, human) = show_report(&store.url(), &b, &drill);
    Ok(Output {
        json,
        human,
        error: None,
    })
}

/// The report of `show` (JSON and human): one bundle and its last drill.
fn show_report(store: &str, b: &BundleInfo, drill: &Option<(String, String)>) -> (Value, String) {
    let json = json!({
        "store": store,
        "id": b.id,
        "copy": if b.built_in { "built-in" } else { "external" },
        "location": b.location,
        "complete": b.complete,
        "rescuable": b.rescuable(),
        "size_bytes": b.size(),
        "modified": rfc3339(b.modified),
        "problem": b.problem,
        "objects": b.objects.iter().map(|(n, s)| json!({"name": n, "size": s})).collect::<Vec<_>>(),
        "bundle": b.raw,
        "last_drill": drill_json(drill.clone()),
    });
    let mut h = String::new();
    match &b.manifest {
        Some(m) => {
            h.push_str(&format!("bundle {} in {} (complete)\n", m.id, b.location));
            h.push_str(&format!(
                "  cluster: system identifier {}, PostgreSQL {} ({}), backup from the {}, timeline {}\n",
                m.system_identifier, m.pg_major, m.pg_version_num, m.backup_from, m.timeline
            ));
            h.push_str(&format!(
                "  start: {} at LSN {} (WAL {})\n",
                m.start_time, m.start_lsn, m.start_wal_file
            ));
            h.push_str(&format!(
                "  stop: {} at LSN {} (WAL {}); checkpoint at {}\n",
                m.stop_time, m.stop_lsn, m.stop_wal_file, m.checkpoint_lsn
            ));
            let stored = m.wal.iter().filter(|w| w.stored.is_some()).count();
            h.push_str(&format!(
                "  WAL: mode {}, {} file{} of the window, {stored} in the bundle; server archiving: {}\n",
                m.wal_mode,
                m.wal.len(),
                if m.wal.len() == 1 { "" } else { "s" },
                m.wal_archive
            ));
            if let Some(d) = &m.archive_dir {
                h.push_str(&format!("  archive directory: {d}\n"));
            }
            if let Some(fl) = &m.file_list {
                h.push_str(&format!(
                    "  file list: {} files a complete copy must hold\n",
                    fl.count
                ));
            }
            for t in &m.tablespaces {
                h.push_str(&format!("  tablespace {}: {}\n", t.oid, t.path));
            }
            h.push_str(&format!("  host {}, PGDATA {}\n", m.host, m.pgdata));
            h.push_str(&format!(
                "  data checksums: {}; written by {} {}\n",
                if m.data_checksums { "on" } else { "off" },
                m.tool,
                m.tool_version
            ));
        }
        None if b.rescuable() => {
            h.push_str(&format!(
                "bundle {} in {} is RESCUABLE: its label is saved but the bundle is not complete; run `pgbookend rescue --id {}` to complete it\n",
                b.id, b.location, b.id
            ));
            h.push_str(&format!("  last written {}\n", rfc3339(b.modified)));
        }
        None => {
            h.push_str(&format!(
                "bundle {} in {} is PARTIAL: {}; it cannot be restored\n",
                b.id,
                b.location,
                b.problem.as_deref().unwrap_or("it has no bundle.json")
            ));
            h.push_str(&format!("  last written {}\n", rfc3339(b.modified)));
        }
    }
    if let Some((verdict, at)) = drill {
        h.push_str(&format!("  last drill: {verdict} at {at}\n"));
    }
    h.push_str(&format!(
        "  {} in {} file{}\n",
        human_bytes(b.size()),
        b.objects.len(),
        if b.objects.len() == 1 { "" } else { "s" }
    ));
    (json, h)
}

/// One bundle of a store (complete or partial), or a usage error naming the ID.
fn scan_one(store: &Store, id: &str) -> Result<BundleInfo> {
    let found = match store {
        Store::Local(root) => {
            if !std::fs::symlink_metadata(root.join(id)).is_ok_and(|m| m.is_dir()) {
                None
            } else {
                scan(store)?.into_iter().find(|b| b.id == id)
            }
        }
        Store::S3(u) => {
            // Only this bundle's objects, not the whole store.
            let c = crate::store::s3::Client::open(u)?;
            let entries = c
                .list_below(id)?
                .into_iter()
                .filter_map(|o| {
                    let rel = o.key.strip_prefix(&format!("{id}/"))?.to_string();
                    Some((id.to_string(), rel, o.size, o.modified))
                })
                .collect();
            let mut found = assemble(store, entries, |id| {
                c.get_small(&format!("{id}/{MANIFEST}"), MAX_MANIFEST_BYTES)
            })?
            .into_iter()
            .next();
            if let Some(b) = &mut found {
                let index = format!(
                    "{}/{id}/{}",
                    crate::id::DATA_DIR,
                    crate::backup::format::INDEX
                );
                b.built_in = c.head(&index)?.is_some();
            }
            found
        }
    };
    found.ok_or_else(|| {
        Error::usage(format!(
            "store {} holds no bundle with ID {id}",
            store.url()
        ))
        .hint(format!(
            "`pgbookend list --store {}` lists its bundles",
            store.url()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str) -> Manifest {
        let mut m: Manifest =
            serde_json::from_str(include_str!("../../tests/data/manifest.json")).unwrap();
        m.id = id.into();
        m
    }

    /// A complete bundle, a rescuable one and a partial one, with fixed sizes and times.
    fn bundles() -> Vec<BundleInfo> {
        let m = manifest("nightly-1");
        let complete = BundleInfo {
            id: "nightly-1".into(),
            complete: true,
            raw: Some(serde_json::to_value(&m).unwrap()),
            manifest: Some(m),
            problem: None,
            objects: vec![
                ("backup_label".into(), 230),
                ("bundle.json".into(), 2048),
                ("files.zst".into(), 40_960),
                ("wal/000000010000000000000002.zst".into(), 1_048_576),
            ],
            modified: 1_795_000_000,
            location: "/srv/backups/nightly-1".into(),
            built_in: false,
        };
        let rescuable = BundleInfo {
            id: "nightly-2".into(),
            complete: false,
            manifest: None,
            raw: None,
            problem: None,
            objects: vec![("backup_label".into(), 230)],
            modified: 1_795_086_400,
            location: "/srv/backups/nightly-2".into(),
            built_in: false,
        };
        let partial = BundleInfo {
            id: "nightly-3".into(),
            complete: false,
            manifest: None,
            raw: None,
            problem: Some("bundle.json does not parse: expected value at line 1".into()),
            objects: vec![("bundle.json".into(), 7)],
            modified: 1_795_172_800,
            location: "/srv/backups/nightly-3".into(),
            built_in: true,
        };
        vec![complete, rescuable, partial]
    }

    /// The archive of the complete bundle's cluster: timeline 1 from segment 2 with 5
    /// missing, and timeline 2 (with its history file) from segment 8.
    fn archive() -> ArchiveView {
        let mut index = crate::archive::layout::Index::default();
        for (tli, seg) in [(1, 2), (1, 3), (1, 4), (1, 6), (2, 8), (2, 9)] {
            index.segments.insert((tli, seg));
            let name = pgbookend_formats::wal::file_name(tli, seg, 16 << 20);
            let w = pgbookend_formats::walname::WalName::parse(&name).unwrap();
            index.objects.push(("d".into(), name, w));
        }
        index.histories.insert(2);
        ArchiveView {
            sysid: "7312345678901234567".into(),
            seg_size: 16 << 20,
            index,
        }
    }

    #[test]
    fn list_snapshots() {
        let all = bundles();
        let skipped = ["not a bundle: lost+found".to_string()];
        let drills = [
            Some(("passed".to_string(), "2026-12-01T03:00:00Z".to_string())),
            None,
            None,
        ];
        let (json, human) = list_report("/srv/backups", &all, &skipped, &[archive()], &drills);
        insta::assert_snapshot!("list_human", human);
        insta::assert_json_snapshot!("list_json", json);
        let (_, empty) = list_report("s3://bucket/pg", &[], &[], &[], &[]);
        insta::assert_snapshot!("list_empty_human", empty);
    }

    #[test]
    fn show_snapshots() {
        let all = bundles();
        let drill = Some(("failed".to_string(), "2026-12-01T03:00:00Z".to_string()));
        let (json, human) = show_report("/srv/backups", &all[0], &drill);
        insta::assert_snapshot!("show_complete_human", human);
        insta::assert_json_snapshot!("show_complete_json", json);
        let (_, human) = show_report("/srv/backups", &all[1], &None);
        insta::assert_snapshot!("show_rescuable_human", human);
        let (_, human) = show_report("/srv/backups", &all[2], &None);
        insta::assert_snapshot!("show_partial_human", human);
    }

    #[test]
    fn rfc3339_round_trips() {
        for t in [0i64, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
