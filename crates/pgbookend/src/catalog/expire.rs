//! `expire`: pruning a store, as a pure plan (`plan_expire`, a value computed from the
//! bundles, the policy and the time) and its application.
//!
//! `expire` works per cluster (system identifier), never removes the newest complete bundle
//! of a cluster, and leaves partial bundles alone unless they are older than a day and
//! `--include-partial` is given. A rescuable partial bundle is reported, and removed only
//! with `--include-rescuable` too.

use super::{remove, scan_store, BundleInfo, PARTIAL_GRACE};
use crate::bundle::manifest::Manifest;
use crate::error::{Error, Result};
use crate::output::{human_bytes, Output};
use crate::store::Store;
use crate::timefmt::{human_duration, now_unix, rfc3339};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

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
/// [--include-rescuable]]`. `s3`: the settings of an S3 store.
pub fn expire(
    url: &str,
    s3: &crate::store::s3::Settings,
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
    let store = Store::parse(url, s3)?;
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
    let done = Applied {
        removed,
        wal_removed,
        human,
    };
    let (json, human) = report(&store.url(), policy, dry_run, &plan, &skipped, done);
    Ok(Output { json, human, error })
}

/// What applying a plan did: the removed bundles and WAL (JSON records), and the human
/// lines written so far.
struct Applied {
    removed: Vec<Value>,
    wal_removed: Vec<Value>,
    human: String,
}

/// The report of `expire` (JSON and human), from the plan and what applying it did.
fn report(
    store: &str,
    policy: Policy,
    dry_run: bool,
    plan: &ExpirePlan<'_>,
    skipped: &[String],
    done: Applied,
) -> (Value, String) {
    let mut human = done.human;
    for (b, reason) in &plan.keep {
        human.push_str(&format!("kept {}: {reason}\n", b.id));
    }
    for (b, rm, reason) in &plan.partial {
        if !rm {
            human.push_str(&format!("partial bundle {}: {reason}\n", b.id));
        }
    }
    for sk in skipped {
        human.push_str(&format!("skipped {sk}\n"));
    }
    if plan.targets().is_empty() {
        human.push_str("nothing to remove\n");
    }
    let json = json!({
        "store": store,
        "dry_run": dry_run,
        "policy": match policy {
            Policy::KeepLast(n) => json!({"keep_last": n}),
            Policy::KeepWithin(d) => json!({"keep_within_s": d.as_secs()}),
        },
        "removed": done.removed,
        "wal_removed": done.wal_removed,
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
    (json, human)
}

/// `--keep-wal-for DUR`: the newest complete bundle of each cluster that stopped at least
/// DUR ago is kept (the base from which every point of the window can be reached), so
/// that its WAL stays too.
fn keep_wal_window(plan: &mut ExpirePlan<'_>, d: Duration, now: i64) {
    let edge = now - d.as_secs() as i64;
    let sysid = |b: &BundleInfo| b.manifest.as_ref().map(|m| m.system_identifier.clone());
    // Newer: a later stop time, or the same second and a later stop LSN.
    let order = |b: &BundleInfo| {
        let lsn = b.manifest.as_ref().and_then(|m| {
            m.stop_lsn
                .parse::<pgbookend_formats::Lsn>()
                .ok()
                .map(|l| l.0)
        });
        (b.time(), lsn.unwrap_or(0))
    };
    let mut bases: BTreeMap<Option<String>, &BundleInfo> = BTreeMap::new();
    for (b, _) in plan.keep.iter().chain(plan.remove.iter()) {
        if b.time() <= edge && bases.get(&sysid(b)).is_none_or(|o| order(o) < order(b)) {
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
    use crate::bundle::manifest::MANIFEST;
    use std::path::Path;

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

    /// Two bundles that stopped in the same second: the base of the `--keep-wal-for`
    /// window is the later one (by stop LSN), whatever the order of their IDs.
    #[test]
    fn keep_wal_window_breaks_a_tie_by_stop_lsn() {
        let now = 1_800_000_000;
        let mut all = vec![
            info("aa-early", "111", now - 100, true, false),
            info("zz-late", "111", now - 100, true, false),
            info("newest", "111", now, true, false),
        ];
        for (b, lsn) in all.iter_mut().zip(["0/3000100", "0/5000100", "0/7000100"]) {
            if let Some(m) = b.manifest.as_mut() {
                m.stop_lsn = lsn.into();
            }
        }
        let mut plan = plan_expire(&all, Policy::KeepLast(1), now, false, false);
        keep_wal_window(&mut plan, Duration::from_secs(50), now);
        assert_eq!(ids(plan.keep.iter().map(|r| r.0)), ["zz-late", "newest"]);
        assert_eq!(ids(plan.remove.iter().map(|r| r.0)), ["aa-early"]);
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

    /// Two clusters of complete bundles, a young and an old partial bundle and an old
    /// rescuable one, at fixed times.
    fn store_of_bundles(now: i64) -> Vec<BundleInfo> {
        let day = PARTIAL_GRACE.as_secs() as i64;
        let mut all: Vec<BundleInfo> = (0..5)
            .map(|i| info(&format!("a{i}"), "111", now - (5 - i) * day, true, false))
            .collect();
        all.push(info("b0", "222", now - 40 * day, true, false));
        all.push(info("b1", "222", now - 30 * day, true, false));
        all.push(info("young", "", now - 3600, false, false));
        all.push(info("old", "", now - 2 * day, false, false));
        all.push(info("rescuable", "", now - 3 * day, false, true));
        all
    }

    /// The plan as lines: each decision and its reason, in the plan's order.
    fn plan_lines(plan: &ExpirePlan<'_>) -> String {
        let mut s = String::new();
        for (b, why) in &plan.remove {
            s.push_str(&format!("remove {}: {why}\n", b.id));
        }
        for (b, why) in &plan.keep {
            s.push_str(&format!("keep {}: {why}\n", b.id));
        }
        for (b, rm, why) in &plan.partial {
            let what = if *rm { "remove" } else { "keep" };
            s.push_str(&format!("partial {what} {}: {why}\n", b.id));
        }
        for (b, why) in plan.targets() {
            s.push_str(&format!("target {}: {why}\n", b.id));
        }
        s
    }

    #[test]
    fn plan_snapshots() {
        let now = 1_800_000_000;
        let all = store_of_bundles(now);
        let plan = plan_expire(&all, Policy::KeepLast(2), now, false, false);
        insta::assert_snapshot!("plan_keep_last_2", plan_lines(&plan));
        let plan = plan_expire(&all, Policy::KeepLast(3), now, true, false);
        insta::assert_snapshot!("plan_keep_last_3_partial", plan_lines(&plan));
        let week = Duration::from_secs(7 * 24 * 3600);
        let plan = plan_expire(&all, Policy::KeepWithin(week), now, true, true);
        insta::assert_snapshot!("plan_keep_within_week_all", plan_lines(&plan));
        let mut plan = plan_expire(&all, Policy::KeepLast(1), now, false, false);
        keep_wal_window(&mut plan, Duration::from_secs(2 * 24 * 3600 + 60), now);
        insta::assert_snapshot!("plan_keep_wal_for", plan_lines(&plan));
    }

    #[test]
    fn report_of_a_dry_run() {
        let now = 1_800_000_000;
        let all = store_of_bundles(now);
        let store = Store::Local("/srv/backups".into());
        let policy = Policy::KeepLast(2);
        let plan = plan_expire(&all, policy, now, true, false);
        let (removed, human, error) = apply_expire(&store, &plan.targets(), true);
        assert!(error.is_none());
        let done = Applied {
            removed,
            wal_removed: Vec::new(),
            human,
        };
        let skipped = ["not-a-bundle (not a backup ID)".to_string()];
        let (json, human) = report(&store.url(), policy, true, &plan, &skipped, done);
        insta::assert_snapshot!("report_dry_run_human", human);
        insta::assert_json_snapshot!("report_dry_run_json", json);
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
        let s3 = crate::store::s3::Settings::default();
        let dry = expire(&url, &s3, Policy::KeepLast(2), true, false, false, None).unwrap();
        assert_eq!(dry.json["removed"].as_array().unwrap().len(), 3);
        assert!(
            d.path().join("a0/bundle.json").exists(),
            "dry run removes nothing"
        );
        let out = expire(&url, &s3, Policy::KeepLast(2), false, false, false, None).unwrap();
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
            &s3,
            Policy::KeepWithin(Duration::ZERO),
            false,
            false,
            false,
            None,
        )
        .unwrap();
        assert_eq!(out.json["removed"][0]["id"], "a3");
        assert!(d.path().join("a4").exists() && d.path().join("b0").exists());
        assert!(expire(&url, &s3, Policy::KeepLast(0), true, false, false, None).is_err());
    }
}
