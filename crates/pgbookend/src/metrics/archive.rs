//! The WAL archive's progress for `metrics`: per cluster and timeline, the newest segment
//! `archive-push` stored (name and push time) in a store's `archive/` tree. Object and
//! directory names are hostile input: only names the archive layout itself writes are
//! parsed (system identifier digits, 16-hex directories, `<WAL name>-<sha256>.zst`); anything
//! else is ignored. Local stores read only the newest directory of each timeline; S3
//! stores list the archive once.

use crate::archive::layout;
use crate::error::{io_err, Result};
use crate::store::Store;
use pgbookend_formats::walname::{WalKind, WalName};
use std::collections::BTreeMap;
use std::path::Path;

/// The newest archived segment of one timeline of one cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiveTimeline {
    pub system_identifier: String,
    pub timeline: u32,
    /// The WAL file name of the newest segment.
    pub last_segment: String,
    /// When it was pushed (the object's modification time, Unix seconds).
    pub pushed: i64,
}

/// Whether `s` is a system identifier as the layout writes it (decimal digits of a u64).
fn is_sysid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.parse::<u64>().is_ok()
}

/// Whether `s` is a segment directory of the layout (16 uppercase hex digits).
fn is_seg_dir(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// The complete segment an object name holds, if it is one.
fn segment_of(object: &str) -> Option<WalName> {
    let (name, _) = layout::parse_object(object)?;
    (name.kind() == WalKind::Segment).then_some(name)
}

/// Keeps the newest segment per (cluster, timeline).
fn keep(
    map: &mut BTreeMap<(String, u32), ArchiveTimeline>,
    sysid: &str,
    seg: WalName,
    pushed: i64,
) {
    let key = (sysid.to_string(), seg.timeline());
    let newer = map
        .get(&key)
        .is_none_or(|t| seg.as_str() > t.last_segment.as_str());
    if newer {
        map.insert(
            key,
            ArchiveTimeline {
                system_identifier: sysid.to_string(),
                timeline: seg.timeline(),
                last_segment: seg.as_str().to_string(),
                pushed,
            },
        );
    }
}

/// The archive's newest segments in `store` (empty when it has no archive).
pub fn scan(store: &Store) -> Result<Vec<ArchiveTimeline>> {
    let mut map = BTreeMap::new();
    match store {
        Store::Local(p) => scan_local(p, &mut map)?,
        Store::S3(u) => {
            let c = crate::store::s3::Client::open(u)?;
            for o in c.list_below(layout::ROOT)? {
                let mut parts = o.key.split('/');
                let (Some(_), Some(sysid), Some(dir), Some(obj), None) = (
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next(),
                ) else {
                    continue;
                };
                if let (true, true, Some(seg)) = (is_sysid(sysid), is_seg_dir(dir), segment_of(obj))
                {
                    keep(&mut map, sysid, seg, o.modified);
                }
            }
        }
    }
    Ok(map.into_values().collect())
}

/// Local stores: `archive/<sysid>/`, then only the newest directory of each timeline
/// (directory names sort by timeline, then position), without following links.
fn scan_local(root: &Path, map: &mut BTreeMap<(String, u32), ArchiveTimeline>) -> Result<()> {
    let top = root.join(layout::ROOT);
    let archive = match crate::fsutil::Dir::open_follow(root)
        .and_then(|d| d.open_beneath(Path::new(layout::ROOT)))
    {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot open", &top, e)),
    };
    let names = archive
        .entries()
        .map_err(|e| io_err("cannot list", &top, e))?;
    for sysid in names
        .iter()
        .filter_map(|n| n.to_str())
        .filter(|n| is_sysid(n))
    {
        let Ok(cluster) = archive.open_dir(sysid) else {
            continue;
        };
        let mut newest: BTreeMap<&str, String> = BTreeMap::new();
        let dirs = cluster.entries().unwrap_or_default();
        for d in dirs
            .iter()
            .filter_map(|n| n.to_str())
            .filter(|n| is_seg_dir(n))
        {
            let e = newest.entry(&d[..8]).or_default();
            if d > e.as_str() {
                *e = d.to_string();
            }
        }
        for dir in newest.values() {
            let Ok(d) = cluster.open_dir(dir) else {
                continue;
            };
            let objects = d.entries().unwrap_or_default();
            let best = objects
                .iter()
                .filter_map(|n| n.to_str())
                .filter_map(|n| segment_of(n).map(|s| (s, n)))
                .max_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            let Some((seg, name)) = best else { continue };
            let Ok(st) = d.lstat(name) else { continue };
            if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                keep(map, sysid, seg, st.st_mtime);
            }
        }
    }
    Ok(())
}
