//! Where archived WAL lives in a store:
//! `archive/<system identifier>/<dir>/<WAL name>-<SHA-256 of the original>.zst`, where
//! `<dir>` is the first 16 hex digits of a segment-like name (timeline and log number:
//! at most 256 segments of 16 MiB per directory) and `history` for timeline history files.
//!
//! The hash of the original bytes is in the name, so one listing of a directory tells
//! whether a file is archived and with which content, and an object is never rewritten:
//! different bytes would have a different name.

use crate::error::Result;
use crate::store::objects::Handle;
use pgbookend_formats::walname::{WalKind, WalName};
use std::collections::{BTreeMap, BTreeSet};

/// The top directory of the archive in every store.
pub const ROOT: &str = crate::id::ARCHIVE_DIR;
/// The directory of timeline history files.
pub const HISTORY_DIR: &str = "history";
/// The suffix of every archived object (a zstd frame).
pub const SUFFIX: &str = ".zst";

/// The directory of the WAL file `name` of cluster `sysid`.
pub fn dir_of(sysid: u64, name: &WalName) -> String {
    let sub = match name.kind() {
        WalKind::History => HISTORY_DIR,
        _ => &name.as_str()[..16],
    };
    format!("{ROOT}/{sysid}/{sub}")
}

/// The object name of `name` with the SHA-256 (lowercase hex) of its original bytes.
pub fn object_name(name: &WalName, sha256: &str) -> String {
    format!("{name}-{sha256}{SUFFIX}")
}

/// The WAL name and hash of an object name from a listing; `None` for anything else
/// (temporary files, foreign objects), which is ignored.
pub fn parse_object(object: &str) -> Option<(WalName, String)> {
    let stem = object.strip_suffix(SUFFIX)?;
    let (name, sha) = stem.rsplit_once('-')?;
    let hex_ok = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex_ok {
        return None;
    }
    Some((WalName::parse(name).ok()?, sha.to_string()))
}

/// The hashes of every stored version of `name` among a directory's object names.
pub fn versions_of<'a>(name: &WalName, objects: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = objects
        .filter_map(parse_object)
        .filter(|(n, _)| n == name)
        .map(|(_, h)| h)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What one cluster's archive in one store holds, from one listing: every archived
/// segment by timeline and segment number, and the timelines with a history file.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// (timeline, segment number) of every archived full segment.
    pub segments: BTreeSet<(u32, u64)>,
    /// Timelines whose `.history` file is archived.
    pub histories: BTreeSet<u32>,
    /// Every object: (directory below the cluster, object name, WAL name).
    pub objects: Vec<(String, String, WalName)>,
}

/// The end of the archive's contiguous run of segments on one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The last segment of the run (`None`: not even the first is archived).
    pub last: Option<u64>,
    /// The first segment missing after the run.
    pub first_missing: u64,
    /// Whether later segments of the timeline are archived: the run ends at a gap.
    pub gap: bool,
}

impl Index {
    /// Lists `archive/<sysid>` of a store (names not of the layout are ignored; a
    /// segment name whose low part cannot occur with `seg_size` too).
    pub fn read(handle: &Handle, sysid: u64, seg_size: u32) -> Result<Index> {
        let mut ix = Index::default();
        for (sub, o) in handle.list_tree(&format!("{ROOT}/{sysid}"))? {
            let Some((name, _)) = parse_object(&o.name) else {
                continue;
            };
            if dir_of(sysid, &name) != format!("{ROOT}/{sysid}/{sub}") {
                continue;
            }
            match name.kind() {
                WalKind::Segment => {
                    if let Some(n) = name.segno(seg_size) {
                        ix.segments.insert((name.timeline(), n));
                    }
                }
                WalKind::History => {
                    ix.histories.insert(name.timeline());
                }
                _ => {}
            }
            ix.objects.push((sub, o.name, name));
        }
        Ok(ix)
    }

    /// How far the archive reaches on `tli` from segment `first` on.
    pub fn reach(&self, tli: u32, first: u64) -> Reach {
        let mut n = first;
        while self.segments.contains(&(tli, n)) {
            n += 1;
        }
        Reach {
            last: (n > first).then(|| n - 1),
            first_missing: n,
            gap: self
                .segments
                .range((tli, n)..(tli, u64::MAX))
                .next()
                .is_some(),
        }
    }

    /// The first and last archived segment of each timeline.
    pub fn extents(&self) -> BTreeMap<u32, (u64, u64)> {
        let mut out: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for &(t, n) in &self.segments {
            let e = out.entry(t).or_insert((n, n));
            e.0 = e.0.min(n);
            e.1 = e.1.max(n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let h = "ab".repeat(32);
        let seg = WalName::parse("00000002000000A90000002F").unwrap();
        assert_eq!(dir_of(42, &seg), "archive/42/00000002000000A9");
        let o = object_name(&seg, &h);
        assert_eq!(parse_object(&o), Some((seg.clone(), h.clone())));
        let hist = WalName::parse("00000002.history").unwrap();
        assert_eq!(dir_of(42, &hist), "archive/42/history");
        let b = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!(parse_object(&object_name(&b, &h)).unwrap().0, b);
        assert_eq!(parse_object("x-y.zst"), None);
        assert_eq!(parse_object(&format!(".{o}.tmp-00")), None);
        assert_eq!(parse_object(&format!("../{o}")), None);
        let names = [o.clone(), object_name(&hist, &h), "junk".into()];
        assert_eq!(versions_of(&seg, names.iter().map(|s| s.as_str())), vec![h]);
    }

    #[test]
    fn reach_finds_the_first_gap() {
        let mut ix = Index::default();
        for n in [3u64, 4, 5, 7] {
            ix.segments.insert((1, n));
        }
        ix.segments.insert((2, 6));
        let r = ix.reach(1, 3);
        assert_eq!((r.last, r.first_missing, r.gap), (Some(5), 6, true));
        let r = ix.reach(1, 7);
        assert_eq!((r.last, r.first_missing, r.gap), (Some(7), 8, false));
        let r = ix.reach(2, 5);
        assert_eq!((r.last, r.first_missing, r.gap), (None, 5, true));
        assert_eq!(ix.extents()[&1], (3, 7));
    }
}
