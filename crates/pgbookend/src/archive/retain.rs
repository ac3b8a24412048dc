//! WAL retention for `expire`: which archived files of a cluster no retained bundle
//! needs. Recovery from a bundle reads WAL from its start segment on, so every segment,
//! `.partial` and `.backup` file numbered before the start segment of the oldest bundle
//! kept (or of the base of the `--keep-wal-for` window) goes, on every timeline. Timeline
//! `.history` files always stay: they are tiny and every later timeline needs them.

use super::layout::{self, Index};
use crate::error::Result;
use crate::store::objects::Handle;
use pgbookend_formats::walname::WalKind;
use std::collections::BTreeMap;

/// One archived file to remove: its directory below the store and its object name.
#[derive(Debug, Clone)]
pub struct Expired {
    pub dir: String,
    pub object: String,
    pub name: String,
}

/// The archived files of cluster `sysid` numbered before segment `cutoff` (history
/// files never), oldest first.
pub fn expired(handle: &Handle, sysid: u64, seg_size: u32, cutoff: u64) -> Result<Vec<Expired>> {
    let index = Index::read(handle, sysid, seg_size)?;
    let mut out: Vec<Expired> = index
        .objects
        .into_iter()
        .filter(|(_, _, n)| n.kind() != WalKind::History)
        .filter(|(_, _, n)| n.segno(seg_size).is_some_and(|s| s < cutoff))
        .map(|(sub, object, n)| Expired {
            dir: format!("{}/{sysid}/{sub}", layout::ROOT),
            object,
            name: n.to_string(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes `files` from the store, one directory at a time.
pub fn remove(handle: &Handle, files: &[Expired]) -> Result<()> {
    let mut by_dir: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for f in files {
        by_dir.entry(&f.dir).or_default().push(f.object.clone());
    }
    for (dir, names) in by_dir {
        handle.remove(dir, &names)?;
    }
    Ok(())
}
