//! PostgreSQL's `backup_manifest` of a built-in backup, stored as
//! `data/<id>/backup_manifest` after a good stop: the files of the index, the
//! `backup_label` and `tablespace_map` the stop returned (from the bundle), and the WAL
//! range of the window.

use super::format::{Entry, Kind, BACKUP_MANIFEST};
use super::manifest::{self, ManifestFile, WalRange};
use super::sink::Sink;
use crate::agent::state::StopReport;
use crate::bundle::read::MAX_TEXT_BYTES;
use crate::error::{Error, Result};
use crate::store::Store;

/// Reads a small file of the bundle of `id` (`None` when it has none).
fn bundle_file(store: &Store, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
    store.read_bundle_file(id, name, MAX_TEXT_BYTES)
}

/// Renders the manifest of the backup and stores it in every sink.
pub fn write(
    stores: &[Store],
    sinks: &[Sink],
    id: &str,
    entries: &[Entry],
    stop: &StopReport,
) -> Result<()> {
    let Some(first) = stores.first() else {
        return Ok(());
    };
    let mut files: Vec<ManifestFile> = entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| ManifestFile {
            path: e.path.clone().into_bytes(),
            size: e.size,
            mtime: e.mtime,
            sha256: e.sha256.clone().unwrap_or_default(),
        })
        .collect();
    let now = crate::timefmt::now_unix();
    for name in ["backup_label", "tablespace_map"] {
        if let Some(bytes) = bundle_file(first, id, name)? {
            files.push(ManifestFile {
                path: name.as_bytes().to_vec(),
                size: bytes.len() as u64,
                mtime: now,
                sha256: crate::fsutil::sha256_hex(&bytes),
            });
        }
    }
    let lsn = |s: &str| {
        s.parse::<pgbookend_formats::lsn::Lsn>()
            .map(|l| l.0)
            .map_err(|_| Error::internal(format!("bad LSN {s:?} in the stop report")))
    };
    let wal = WalRange {
        timeline: stop.timeline,
        start: lsn(&stop.start_lsn)?,
        end: lsn(&stop.stop_lsn)?,
    };
    let bytes = manifest::render(&files, &[wal]);
    for s in sinks {
        s.put(BACKUP_MANIFEST, &bytes)?;
    }
    Ok(())
}
