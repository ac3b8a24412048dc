//! `pgbookend metrics`: the facts monitoring needs (newest complete bundle per cluster and
//! store, bundle counts, the WAL archive's newest segment, running backups and their
//! heartbeats), gathered as typed values;
//! [`expo`] renders them in Prometheus' text exposition format.

pub mod archive;
pub mod expo;

use crate::agent::rundir::RunDir;
use crate::catalog::{self, BundleInfo};
use crate::error::Result;
use crate::store::Store;
use crate::timefmt::now_unix;
use std::collections::BTreeMap;

/// Everything one `metrics` run found, at one instant.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// Unix seconds when the facts were gathered (ages are relative to it).
    pub generated: i64,
    pub stores: Vec<StoreFacts>,
    pub backups: Vec<RunningBackup>,
}

/// One store: whether it could be read, and its bundles per cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreFacts {
    pub store: String,
    /// The listing succeeded (a store that cannot be read is a monitoring alert of its own).
    pub up: bool,
    pub error: Option<String>,
    pub clusters: Vec<ClusterFacts>,
    /// Partial bundles whose cluster is unknown (no readable bundle.json).
    pub partial_unknown: u64,
    /// The WAL archive in this store (`archive-push`): the newest segment per cluster and
    /// timeline; empty without an archive.
    pub archive: Vec<archive::ArchiveTimeline>,
    /// Why the archive could not be read (the bundles may still have been).
    pub archive_error: Option<String>,
}

/// The bundles of one cluster (system identifier) in one store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterFacts {
    pub system_identifier: String,
    pub complete: u64,
    pub partial: u64,
    /// The newest complete bundle: its ID, stop time (Unix seconds) and size in bytes.
    pub newest: Option<Newest>,
    /// The most recent `drill` of any of the cluster's bundles in this store.
    pub last_drill: Option<Drill>,
}

/// A bundle's last drill (`drill.json`): which bundle, whether it passed, when it ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Drill {
    pub id: String,
    pub passed: bool,
    pub finished: i64,
}

/// The newest complete bundle of a cluster in a store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Newest {
    pub id: String,
    pub time: i64,
    pub bytes: u64,
}

/// A backup this run directory knows whose agent is still holding it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunningBackup {
    pub id: String,
    pub state: String,
    pub pgdata: String,
    pub agent_alive: bool,
    pub elapsed_s: Option<i64>,
    pub heartbeat_age_s: Option<i64>,
}

/// Reads every store and the run directory. A store that cannot be read is reported
/// (`up = false`), not an error: the other stores' metrics still matter.
pub fn gather(stores: &[Store], run: &RunDir) -> Snapshot {
    let generated = now_unix();
    Snapshot {
        generated,
        stores: stores.iter().map(store_facts).collect(),
        backups: running(run, generated),
    }
}

fn store_facts(store: &Store) -> StoreFacts {
    match catalog::scan(store) {
        Ok(mut bundles) => {
            // The WAL archive's top directory is not a bundle (archive_store defaults to
            // store, so the two often share a store).
            bundles.retain(|b| b.id != crate::archive::layout::ROOT);
            let (mut clusters, partial_unknown) = by_cluster(&bundles);
            add_drills(store, &bundles, &mut clusters);
            let (archive, archive_error) = match archive::scan(store) {
                Ok(a) => (a, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            StoreFacts {
                store: store.url(),
                up: true,
                error: None,
                clusters,
                partial_unknown,
                archive,
                archive_error,
            }
        }
        Err(e) => StoreFacts {
            store: store.url(),
            up: false,
            error: Some(e.to_string()),
            clusters: Vec::new(),
            partial_unknown: 0,
            archive: Vec::new(),
            archive_error: None,
        },
    }
}

/// Groups bundles by cluster; partial bundles without a manifest are counted apart.
pub fn by_cluster(bundles: &[BundleInfo]) -> (Vec<ClusterFacts>, u64) {
    let mut map: BTreeMap<String, ClusterFacts> = BTreeMap::new();
    let mut unknown = 0;
    for b in bundles {
        let Some(m) = &b.manifest else {
            unknown += 1;
            continue;
        };
        let c = map
            .entry(m.system_identifier.clone())
            .or_insert_with(|| ClusterFacts {
                system_identifier: m.system_identifier.clone(),
                complete: 0,
                partial: 0,
                newest: None,
                last_drill: None,
            });
        if !b.complete {
            c.partial += 1;
            continue;
        }
        c.complete += 1;
        if c.newest.as_ref().is_none_or(|n| b.time() >= n.time) {
            c.newest = Some(Newest {
                id: b.id.clone(),
                time: b.time(),
                bytes: b.size(),
            });
        }
    }
    (map.into_values().collect(), unknown)
}

/// Reads `drill.json` of the bundles that have one; keeps each cluster's most recent.
fn add_drills(store: &Store, bundles: &[BundleInfo], clusters: &mut [ClusterFacts]) {
    for b in bundles {
        let Some(m) = &b.manifest else { continue };
        if !b
            .objects
            .iter()
            .any(|o| o.0 == crate::drill::record::RECORD)
        {
            continue;
        }
        let Some((verdict, finished)) = crate::drill::record::last(store, &b.id) else {
            continue;
        };
        let Some(finished) = catalog::parse_rfc3339(&finished) else {
            continue;
        };
        let Some(c) = clusters
            .iter_mut()
            .find(|c| c.system_identifier == m.system_identifier)
        else {
            continue;
        };
        if c.last_drill.as_ref().is_none_or(|d| finished >= d.finished) {
            c.last_drill = Some(Drill {
                id: b.id.clone(),
                passed: verdict == "passed",
                finished,
            });
        }
    }
}

fn running(run: &RunDir, now: i64) -> Vec<RunningBackup> {
    let mut out = Vec::new();
    for entry in run.entries() {
        let Some((st, alive)) = crate::commands::current_state(&entry) else {
            continue;
        };
        if st.state.is_final() {
            continue;
        }
        out.push(RunningBackup {
            id: st.id.clone(),
            state: st.state.as_str().to_string(),
            pgdata: st.pgdata.clone().unwrap_or_default(),
            agent_alive: alive,
            elapsed_s: st.start_time.map(|t| now - t),
            heartbeat_age_s: st.last_heartbeat.map(|t| now - t),
        });
    }
    out
}

/// Parses the store URLs given (flags, else the config's `store` list), S3 ones with `s3`.
pub fn stores(urls: &[String], s3: &crate::store::s3::Settings) -> Result<Vec<Store>> {
    urls.iter().map(|u| Store::parse(u, s3)).collect()
}
