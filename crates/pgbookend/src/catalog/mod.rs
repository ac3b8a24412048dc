//! What a store holds, and pruning it: `list`, `show` and `expire`, for local and S3
//! stores alike.
//!
//! A bundle is *complete* when its `bundle.json` exists and parses; anything else under
//! `<store>/<id>/` is *partial* (a `stop` still writing, or one that failed). `expire` works
//! per cluster (system identifier), never removes the newest complete bundle of a cluster,
//! and leaves partial bundles alone unless they are older than a day and
//! `--include-partial` is given. A partial bundle that holds a `backup_label` is
//! *rescuable* (`pgbookend rescue` can complete it): it is reported, and removed only with
//! `--include-rescuable` too. Removing a bundle removes its `bundle.json` first, so an
//! interrupted removal leaves a partial bundle, never a complete-looking incomplete one.
//! A `<store>/<id>` that is a symbolic link is never followed: skipped and reported.

use crate::bundle::manifest::{Manifest, MANIFEST};
use crate::bundle::read::MAX_MANIFEST_BYTES;
use crate::error::{io_err, Error, Result};
use crate::output::{human_bytes, Output};
use crate::store::Store;
use crate::timefmt::{human_duration, now_unix, rfc3339};
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
                i.built_in = local_data_dir(root, &i.id).is_some_and(|d| {
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

/// `<root>/data/<id>` when it is a real directory (a link is never followed).
fn local_data_dir(root: &Path, id: &str) -> Option<std::path::PathBuf> {
    let d = root.join(crate::id::DATA_DIR).join(id);
    let data_ok =
        std::fs::symlink_metadata(root.join(crate::id::DATA_DIR)).is_ok_and(|m| m.is_dir());
    (data_ok && std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir())).then_some(d)
}

/// Removes a built-in backup's data, `data/<id>/` (absent: nothing to do).
fn remove_data(store: &Store, id: &str) -> Result<()> {
    match store {
        Store::Local(root) => match local_data_dir(root, id) {
            Some(d) => crate::fsutil::remove_tree(&d),
            None => Ok(()),
        },
        Store::S3(u) => {
            let c = crate::store::s3::Client::open(u)?;
            let keys: Vec<String> = c
                .list_below(&format!("{}/{id}", crate::id::DATA_DIR))?
                .into_iter()
                .map(|o| o.key)
                .collect();
            c.delete(&keys)
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
/// everything else.
pub fn remove(store: &Store, b: &BundleInfo) -> Result<()> {
    match store {
        Store::Local(root) => {
            let dir = root.join(&b.id);
            let md = std::fs::symlink_metadata(&dir).map_err(|e| io_err("cannot stat", &dir, e))?;
            if !md.is_dir() {
                return Err(Error::env(format!(
                    "{} is not a directory (a symbolic link?): not removed, not followed",
                    dir.display()
                )));
            }
            let m = dir.join(MANIFEST);
            match std::fs::remove_file(&m) {
                Ok(()) => crate::fsutil::fsync_dir(&dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cannot remove", &m, e)),
            }
            remove_data(store, &b.id)?;
            crate::fsutil::remove_tree(&dir)
        }
        Store::S3(u) => {
            let c = crate::store::s3::Client::open(u)?;
            c.delete(&[format!("{}/{MANIFEST}", b.id)])?;
            remove_data(store, &b.id)?;
            let rest: Vec<String> = b
                .objects
                .iter()
                .filter(|o| o.0 != MANIFEST)
                .map(|o| format!("{}/{}", b.id, o.0))
                .collect();
            c.delete(&rest)
        }
    }
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

fn parse_store(url: &str) -> Result<Store> {
    Store::parse(url)
}

/// `list --store URL`: every bundle of the store, oldest first.
pub fn list(url: &str) -> Result<Output> {
    let store = parse_store(url)?;
    let (bundles, skipped) = scan_store(&store)?;
    let archives = read_archives(&store, &bundles);
    let complete = bundles.iter().filter(|b| b.complete).count();
    let mut human = format!(
        "{}: {} bundle{} ({complete} complete, {} partial)\n",
        store.url(),
        bundles.len(),
        if bundles.len() == 1 { "" } else { "s" },
        bundles.len() - complete
    );
    if !bundles.is_empty() {
        let w = bundles.iter().map(|b| b.id.len()).max().unwrap_or(2).max(2);
        human.push_str(&format!(
            "{:<w$}  {:<9}  {:<20}  {:>2}  {:<20}  {:>10}  WAL\n",
            "ID", "STATE", "STOPPED", "PG", "SYSTEM IDENTIFIER", "SIZE"
        ));
        for b in &bundles {
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
            let wal = match recoverable(&archives, b) {
                Some(r) => format!("{wal}; WAL archived to {r}"),
                None => wal,
            };
            let wal = match last_drill(&store, b) {
                Some((verdict, at)) => format!("{wal}; last drill {verdict} {at}"),
                None => wal,
            };
            human.push_str(&format!(
                "{:<w$}  {state:<9}  {stopped:<20}  {pg:>2}  {sysid:<20}  {:>10}  {wal}\n",
                b.id,
                human_bytes(b.size())
            ));
        }
    }
    for sk in &skipped {
        human.push_str(&format!("skipped {sk}\n"));
    }
    human.push_str(&archives_human(&archives));
    let json = json!({
        "store": store.url(),
        "bundles": bundles.iter().map(|b| {
            let mut v = summary(b);
            v["last_drill"] = drill_json(last_drill(&store, b));
            v["recoverable_to"] = json!(recoverable(&archives, b));
            v
        }).collect::<Vec<_>>(),
        "skipped": skipped,
        "archives": archives.iter().map(archive_json).collect::<Vec<_>>(),
    });
    Ok(Output {
        json,
        human,
        error: None,
    })
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

/// `show --store URL --id ID`: everything about one bundle.
pub fn show(url: &str, id: &str) -> Result<Output> {
    crate::id::validate(id)?;
    let store = parse_store(url)?;
    let b = scan_one(&store, id)?;
    let json = json!({
        "store": store.url(),
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
        "last_drill": drill_json(last_drill(&store, &b)),
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
    if let Some((verdict, at)) = last_drill(&store, &b) {
        h.push_str(&format!("  last drill: {verdict} at {at}\n"));
    }
    h.push_str(&format!(
        "  {} in {} file{}\n",
        human_bytes(b.size()),
        b.objects.len(),
        if b.objects.len() == 1 { "" } else { "s" }
    ));
    Ok(Output {
        json,
        human: h,
        error: None,
    })
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
            assemble(store, entries, |id| {
                c.get_small(&format!("{id}/{MANIFEST}"), MAX_MANIFEST_BYTES)
            })?
            .into_iter()
            .next()
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

/// What `expire` keeps.
#[derive(Debug, Clone, Copy)]
pub enum Policy {
    /// The N newest complete bundles of each cluster.
    KeepLast(usize),
    /// Complete bundles stopped within this long of now.
    KeepWithin(Duration),
}

/// What `expire` decided, before anything is removed: a pure value computed from the
/// bundles a store holds, the policy and the current time.
#[derive(Debug)]
pub struct ExpirePlan<'a> {
    /// Complete bundles to remove, oldest first, each with why.
    pub remove: Vec<(&'a BundleInfo, String)>,
    /// Complete bundles kept, oldest first, each with why.
    pub keep: Vec<(&'a BundleInfo, String)>,
    /// Partial bundles: removed (true) or kept, with why.
    pub partial: Vec<(&'a BundleInfo, bool, String)>,
}

impl ExpirePlan<'_> {
    /// Every bundle to remove (complete ones first, then partial ones), with why.
    pub fn targets(&self) -> Vec<(&BundleInfo, String)> {
        self.remove
            .iter()
            .map(|(b, r)| (*b, r.clone()))
            .chain(
                self.partial
                    .iter()
                    .filter(|p| p.1)
                    .map(|(b, _, r)| (*b, format!("partial: {r}"))),
            )
            .collect()
    }
}

/// Decides what `expire` removes: the newest complete bundle of each cluster always
/// stays, the others per `policy`; partial bundles only when asked, never younger than
/// [`PARTIAL_GRACE`], and rescuable ones only with `include_rescuable`.
pub fn plan_expire(
    bundles: &[BundleInfo],
    policy: Policy,
    now: i64,
    include_partial: bool,
    include_rescuable: bool,
) -> ExpirePlan<'_> {
    let (remove, keep) = plan_complete(bundles, policy, now);
    let partial = bundles
        .iter()
        .filter(|b| !b.complete)
        .map(|b| plan_partial(b, now, include_partial, include_rescuable))
        .collect();
    ExpirePlan {
        remove,
        keep,
        partial,
    }
}

type Decided<'a> = Vec<(&'a BundleInfo, String)>;

/// The complete bundles to remove and to keep, each list oldest first.
fn plan_complete(bundles: &[BundleInfo], policy: Policy, now: i64) -> (Decided<'_>, Decided<'_>) {
    // Complete bundles per cluster, newest first.
    let mut clusters: BTreeMap<String, Vec<&BundleInfo>> = BTreeMap::new();
    for b in bundles.iter().filter(|b| b.complete) {
        let sysid = b
            .manifest
            .as_ref()
            .map(|m| m.system_identifier.clone())
            .unwrap_or_default();
        clusters.entry(sysid).or_default().push(b);
    }
    let mut remove_list = Vec::new();
    let mut keep_list = Vec::new();
    for (sysid, mut list) in clusters {
        list.sort_by(|a, b| (b.time(), &b.id).cmp(&(a.time(), &a.id)));
        for (i, b) in list.into_iter().enumerate() {
            if i == 0 {
                keep_list.push((b, format!("the newest complete bundle of system {sysid}")));
                continue;
            }
            match policy {
                Policy::KeepLast(n) if i < n => {
                    keep_list.push((b, format!("one of the {n} newest of system {sysid}")))
                }
                Policy::KeepLast(n) => {
                    remove_list.push((b, format!("older than the {n} newest of system {sysid}")))
                }
                Policy::KeepWithin(d) if now - b.time() <= d.as_secs() as i64 => {
                    keep_list.push((b, format!("stopped within {}", human_duration(d))))
                }
                Policy::KeepWithin(d) => {
                    remove_list.push((b, format!("stopped more than {} ago", human_duration(d))))
                }
            }
        }
    }
    remove_list.sort_by_key(|(b, _)| (b.time(), b.id.clone()));
    keep_list.sort_by_key(|(b, _)| (b.time(), b.id.clone()));
    (remove_list, keep_list)
}

/// Whether one partial bundle is removed, and why.
fn plan_partial(
    b: &BundleInfo,
    now: i64,
    include_partial: bool,
    include_rescuable: bool,
) -> (&BundleInfo, bool, String) {
    let age = now - b.modified;
    let what = match &b.problem {
        _ if b.rescuable() => format!(
            "rescuable (holds a label; `pgbookend rescue --id {}` completes it)",
            b.id
        ),
        Some(p) => p.clone(),
        None => "no bundle.json".into(),
    };
    if age < PARTIAL_GRACE.as_secs() as i64 {
        return (
            b,
            false,
            format!("{what}, last written {} ago: younger than a day (a stop may still be writing it), kept", human_duration(Duration::from_secs(age.max(0) as u64))),
        );
    }
    let ago = human_duration(Duration::from_secs(age as u64));
    if b.rescuable() && !include_rescuable {
        (
            b,
            false,
            format!("{what}, last written {ago} ago: kept; pass --include-rescuable to remove it"),
        )
    } else if include_partial {
        (b, true, format!("{what}, last written {ago} ago"))
    } else {
        (
            b,
            false,
            format!("{what}, last written {ago} ago: kept; pass --include-partial to remove it"),
        )
    }
}

/// `expire --store URL (--keep-last N | --keep-within DUR) [--dry-run] [--include-partial
/// [--include-rescuable]]`.
pub fn expire(
    url: &str,
    policy: Policy,
    dry_run: bool,
    include_partial: bool,
    include_rescuable: bool,
    keep_wal_for: Option<Duration>,
) -> Result<Output> {
    if let Policy::KeepLast(0) = policy {
        return Err(Error::usage("--keep-last must be at least 1")
            .hint("the newest complete bundle of each cluster is always kept"));
    }
    let store = parse_store(url)?;
    let (bundles, skipped) = scan_store(&store)?;
    let mut plan = plan_expire(
        &bundles,
        policy,
        now_unix(),
        include_partial,
        include_rescuable,
    );
    if let Some(d) = keep_wal_for {
        keep_wal_window(&mut plan, d, now_unix());
    }
    let targets = plan.targets();
    let (removed, mut human, mut error) = apply_expire(&store, &targets, dry_run);
    let mut wal_removed = Vec::new();
    if error.is_none() {
        match expire_wal(&store, &plan.keep, dry_run, &mut human) {
            Ok(w) => wal_removed = w,
            Err(e) => error = Some(e),
        }
    }
    for (b, reason) in &plan.keep {
        human.push_str(&format!("kept {}: {reason}\n", b.id));
    }
    for (b, rm, reason) in &plan.partial {
        if !rm {
            human.push_str(&format!("partial bundle {}: {reason}\n", b.id));
        }
    }
    for sk in &skipped {
        human.push_str(&format!("skipped {sk}\n"));
    }
    if targets.is_empty() {
        human.push_str("nothing to remove\n");
    }
    let json = json!({
        "store": store.url(),
        "dry_run": dry_run,
        "policy": match policy {
            Policy::KeepLast(n) => json!({"keep_last": n}),
            Policy::KeepWithin(d) => json!({"keep_within_s": d.as_secs()}),
        },
        "removed": removed,
        "wal_removed": wal_removed,
        "kept": plan.keep.iter().map(|(b, r)| json!({"id": b.id, "reason": r})).collect::<Vec<_>>(),
        "skipped": skipped,
        "partial": plan.partial.iter().map(|(b, rm, r)| json!({
            "id": b.id,
            "rescuable": b.rescuable(),
            "modified": rfc3339(b.modified),
            "size_bytes": b.size(),
            "removed": *rm && !dry_run,
            "reason": r,
        })).collect::<Vec<_>>(),
    });
    Ok(Output { json, human, error })
}

/// `--keep-wal-for DUR`: the newest complete bundle of each cluster that stopped at least
/// DUR ago is kept (the base from which every point of the window can be reached), so
/// that its WAL stays too.
fn keep_wal_window(plan: &mut ExpirePlan<'_>, d: Duration, now: i64) {
    let edge = now - d.as_secs() as i64;
    let sysid = |b: &BundleInfo| b.manifest.as_ref().map(|m| m.system_identifier.clone());
    let mut bases: BTreeMap<Option<String>, &BundleInfo> = BTreeMap::new();
    for (b, _) in plan.keep.iter().chain(plan.remove.iter()) {
        if b.time() <= edge && bases.get(&sysid(b)).is_none_or(|o| o.time() < b.time()) {
            bases.insert(sysid(b), b);
        }
    }
    for base in bases.into_values() {
        if let Some(i) = plan.remove.iter().position(|(b, _)| b.id == base.id) {
            plan.remove.remove(i);
            let why = format!(
                "the base of the --keep-wal-for {} window",
                human_duration(d)
            );
            plan.keep.push((base, why));
        }
    }
    plan.keep.sort_by_key(|(b, _)| (b.time(), b.id.clone()));
}

/// Removes (unless `dry_run`) the archived WAL no kept bundle needs: per cluster with a
/// kept bundle, every file numbered before the oldest kept bundle's start segment.
fn expire_wal(
    store: &Store,
    keep: &[(&BundleInfo, String)],
    dry_run: bool,
    human: &mut String,
) -> Result<Vec<Value>> {
    let mut oldest: BTreeMap<&str, &Manifest> = BTreeMap::new();
    for m in keep.iter().filter_map(|(b, _)| b.manifest.as_ref()) {
        let older = |o: &&Manifest| lsn_of(&m.start_lsn) < lsn_of(&o.start_lsn);
        if oldest.get(m.system_identifier.as_str()).is_none_or(older) {
            oldest.insert(&m.system_identifier, m);
        }
    }
    let handle = crate::store::objects::Handle::open(store)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = Vec::new();
    for (sysid, m) in oldest {
        let (Ok(id), true) = (
            sysid.parse::<u64>(),
            pgbookend_formats::wal::is_valid_seg_size(m.wal_segment_size),
        ) else {
            continue;
        };
        let seg = m.wal_segment_size;
        let cutoff = pgbookend_formats::wal::segno(lsn_of(&m.start_lsn), seg);
        let files = crate::archive::retain::expired(&handle, id, seg, cutoff)?;
        if files.is_empty() {
            continue;
        }
        if !dry_run {
            crate::archive::retain::remove(&handle, &files)?;
        }
        let keep_from = pgbookend_formats::wal::file_name(m.timeline, cutoff, seg);
        human.push_str(&format!(
            "{verb} {} archived WAL files of system {sysid} ({} .. {}): before {keep_from}, the start of the oldest kept bundle {}\n",
            files.len(), files[0].name, files[files.len() - 1].name, m.id
        ));
        out.push(json!({
            "system_identifier": sysid,
            "count": files.len(),
            "first": files[0].name,
            "last": files[files.len() - 1].name,
            "kept_from": keep_from,
            "oldest_kept_bundle": m.id,
        }));
    }
    Ok(out)
}

fn lsn_of(s: &str) -> pgbookend_formats::lsn::Lsn {
    s.parse().unwrap_or(pgbookend_formats::lsn::Lsn::INVALID)
}

/// Removes the plan's targets in order (unless `dry_run`), stopping at the first failure:
/// the JSON records and human lines of what was (or would be) removed, and the error.
fn apply_expire(
    store: &Store,
    targets: &[(&BundleInfo, String)],
    dry_run: bool,
) -> (Vec<Value>, String, Option<Error>) {
    let mut removed: Vec<Value> = Vec::new();
    let mut error = None;
    let mut human = String::new();
    let verb = if dry_run { "would remove" } else { "removed" };
    for (b, reason) in targets {
        if !dry_run {
            if let Err(e) = remove(store, b) {
                error = Some(Error::env(format!(
                    "cannot remove bundle {} from {}: {}",
                    b.id,
                    store.url(),
                    e.message
                ))
                .hint("run expire again; a bundle whose bundle.json is gone is partial and can be removed with --include-partial"));
                break;
            }
        }
        human.push_str(&format!(
            "{verb} {} ({}, {}): {reason}\n",
            b.id,
            b.manifest
                .as_ref()
                .map(|m| format!("stopped {}", m.stop_time))
                .unwrap_or_else(|| "partial".into()),
            human_bytes(b.size())
        ));
        removed.push(json!({
            "id": b.id,
            "complete": b.complete,
            "stop_time": b.manifest.as_ref().map(|m| &m.stop_time),
            "size_bytes": b.size(),
            "reason": reason,
        }));
    }
    (removed, human, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for t in [0i64, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    fn bundle(dir: &Path, id: &str, sysid: &str, stop: i64, complete: bool) {
        let d = dir.join(id);
        std::fs::create_dir_all(d.join("wal")).unwrap();
        std::fs::write(d.join("backup_label"), b"label").unwrap();
        std::fs::write(d.join("wal/x.zst"), b"wal").unwrap();
        if complete {
            let m = manifest(id, sysid, stop);
            std::fs::write(d.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        }
    }

    fn manifest(id: &str, sysid: &str, stop: i64) -> Manifest {
        serde_json::from_value(json!({
            "format": 1, "id": id, "system_identifier": sysid, "pg_version_num": 160000,
            "pg_major": 16, "timeline": 1, "start_lsn": "0/1", "stop_lsn": "0/2",
            "checkpoint_lsn": "0/1", "start_wal_file": "000000010000000000000001",
            "stop_wal_file": "000000010000000000000001", "wal_segment_size": 16777216,
            "backup_from": "primary", "start_time": rfc3339(stop - 10),
            "stop_time": rfc3339(stop), "host": "h", "pgdata": "/d", "tablespaces": [],
            "data_checksums": false, "tool": "pgbookend", "tool_version": "0",
            "wal_mode": "collect", "wal_archive": "not_waited", "wal": [], "files": {}
        }))
        .unwrap()
    }

    /// A bundle as a scan finds it: complete (stopped at `t`) or partial (last written at
    /// `t`, with or without a label).
    fn info(id: &str, sysid: &str, t: i64, complete: bool, label: bool) -> BundleInfo {
        let mut objects = vec![("wal/x.zst".to_string(), 3)];
        if label {
            objects.push(("backup_label".to_string(), 5));
        }
        BundleInfo {
            id: id.into(),
            complete,
            manifest: complete.then(|| manifest(id, sysid, t)),
            raw: None,
            problem: None,
            objects,
            modified: t,
            location: String::new(),
            built_in: false,
        }
    }

    fn ids<'a>(list: impl IntoIterator<Item = &'a BundleInfo>) -> Vec<&'a str> {
        list.into_iter().map(|b| b.id.as_str()).collect()
    }

    #[test]
    fn plan_keep_last_keeps_the_n_newest_of_each_cluster() {
        let now = 1_800_000_000;
        let mut all: Vec<BundleInfo> = (0..4)
            .map(|i| info(&format!("a{i}"), "111", now - 1000 + i * 10, true, false))
            .collect();
        all.push(info("b0", "222", now - 9000, true, false));
        let plan = plan_expire(&all, Policy::KeepLast(2), now, true, true);
        assert_eq!(ids(plan.remove.iter().map(|r| r.0)), ["a0", "a1"]);
        assert_eq!(ids(plan.keep.iter().map(|r| r.0)), ["b0", "a2", "a3"]);
        assert_eq!(plan.remove[0].1, "older than the 2 newest of system 111");
        assert_eq!(plan.keep[0].1, "the newest complete bundle of system 222");
        assert!(plan.partial.is_empty());
    }

    #[test]
    fn plan_keep_within_never_removes_the_newest() {
        let now = 1_800_000_000;
        let all = vec![
            info("old", "1", now - 7200, true, false),
            info("recent", "1", now - 60, true, false),
            info("lonely", "2", now - 99_999, true, false),
        ];
        let hour = Duration::from_secs(3600);
        let plan = plan_expire(&all, Policy::KeepWithin(hour), now, false, false);
        assert_eq!(ids(plan.remove.iter().map(|r| r.0)), ["old"]);
        assert_eq!(ids(plan.keep.iter().map(|r| r.0)), ["lonely", "recent"]);
        let plan = plan_expire(&all, Policy::KeepWithin(Duration::ZERO), now, false, false);
        assert_eq!(ids(plan.remove.iter().map(|r| r.0)), ["old"]);
        // Exactly at the limit is still within.
        let plan = plan_expire(
            &all,
            Policy::KeepWithin(Duration::from_secs(7200)),
            now,
            false,
            false,
        );
        assert!(plan.remove.is_empty());
    }

    #[test]
    fn plan_partials_need_age_and_permission() {
        let now = 1_800_000_000;
        let day = PARTIAL_GRACE.as_secs() as i64;
        let all = vec![
            info("c", "1", now, true, false),
            info("young", "", now - day + 1, false, false),
            info("old", "", now - day - 1, false, false),
            info("oldlabel", "", now - 2 * day, false, true),
        ];
        let removed = |p: &ExpirePlan| -> Vec<String> {
            p.partial
                .iter()
                .filter(|x| x.1)
                .map(|x| x.0.id.clone())
                .collect()
        };
        let plan = plan_expire(&all, Policy::KeepLast(1), now, false, false);
        assert!(removed(&plan).is_empty());
        assert!(plan.partial[1]
            .2
            .ends_with("pass --include-partial to remove it"));
        let plan = plan_expire(&all, Policy::KeepLast(1), now, true, false);
        assert_eq!(removed(&plan), ["old"]);
        assert!(plan.partial[0].2.contains("younger than a day"));
        assert!(plan.partial[2]
            .2
            .ends_with("pass --include-rescuable to remove it"));
        let plan = plan_expire(&all, Policy::KeepLast(1), now, true, true);
        assert_eq!(removed(&plan), ["old", "oldlabel"]);
        assert_eq!(
            ids(plan.targets().into_iter().map(|t| t.0)),
            ["old", "oldlabel"]
        );
        assert!(plan.targets()[0].1.starts_with("partial: no bundle.json"));
        assert_eq!(ids(plan.keep.iter().map(|r| r.0)), ["c"]);
    }

    #[test]
    fn expire_keeps_newest_per_cluster_and_leaves_partials() {
        let d = tempfile::tempdir().unwrap();
        let now = now_unix();
        for i in 0..5 {
            bundle(d.path(), &format!("a{i}"), "111", now - 1000 + i * 10, true);
        }
        bundle(d.path(), "b0", "222", now - 5000, true);
        bundle(d.path(), "p0", "", 0, false);
        let url = d.path().display().to_string();
        let dry = expire(&url, Policy::KeepLast(2), true, false, false, None).unwrap();
        assert_eq!(dry.json["removed"].as_array().unwrap().len(), 3);
        assert!(
            d.path().join("a0/bundle.json").exists(),
            "dry run removes nothing"
        );
        let out = expire(&url, Policy::KeepLast(2), false, false, false, None).unwrap();
        let removed: Vec<&str> = out.json["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(removed, ["a0", "a1", "a2"]);
        for id in ["a3", "a4", "b0", "p0"] {
            assert!(d.path().join(id).exists(), "{id} kept");
        }
        // The newest bundle of each cluster survives any policy.
        let out = expire(
            &url,
            Policy::KeepWithin(Duration::ZERO),
            false,
            false,
            false,
            None,
        )
        .unwrap();
        assert_eq!(out.json["removed"][0]["id"], "a3");
        assert!(d.path().join("a4").exists() && d.path().join("b0").exists());
        assert!(expire(&url, Policy::KeepLast(0), true, false, false, None).is_err());
    }
}
