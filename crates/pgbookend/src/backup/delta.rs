//! `restore --delta`: which files of an existing copy already hold the backup's bytes
//! (same size and SHA-256: kept), which must be rewritten, and what the backup does not
//! have (removed). Never follows a link, and only touches PGDATA and the tablespace
//! targets. The copy's pg_control is removed first, so that a delta restore that fails
//! part-way leaves a directory that cannot start.

use super::fetch::{self, Roots, CONTROL};
use super::format::{Index, Kind};
use crate::error::{io_err, Result};
use crate::fsutil::Dir;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What `--delta` did to the existing copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Files whose size and SHA-256 matched the backup's.
    pub kept: u64,
    /// Files of the backup rewritten (changed or missing).
    pub rewritten: u64,
    /// Files, links and directories the backup does not have, removed.
    pub removed: u64,
}

/// Size and SHA-256 (lowercase hex) of what a reader holds.
pub fn hash_file(mut f: impl Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

/// Decides, for every entry, whether it is (re)written; removes what is in the way and
/// what the backup does not have.
pub fn plan(
    ix: &Index,
    roots: &Roots,
    targets: &BTreeMap<u32, PathBuf>,
    jobs: usize,
) -> Result<(Vec<bool>, Counts)> {
    let pg = &roots.pgdata;
    remove(pg, CONTROL)?;
    let kept = AtomicU64::new(0);
    let keep: Vec<AtomicU64> = ix.entries.iter().map(|_| AtomicU64::new(0)).collect();
    fetch::par_each(ix.entries.len(), jobs, &|n| {
        let e = &ix.entries[n];
        let same = match e.kind {
            Kind::File if e.path == CONTROL => true,
            Kind::File => same_file(roots, &e.path, e.size, e.sha256.as_deref())?,
            Kind::Link => match fetch::tablespace_oid(&e.path) {
                Some(oid) => {
                    let link = pg.display_path(&e.path);
                    std::fs::read_link(&link).ok() == targets.get(&oid).cloned()
                        && std::fs::symlink_metadata(&link).is_ok_and(|m| m.is_symlink())
                }
                None => is_dir(roots, &e.path),
            },
            Kind::Dir => is_dir(roots, &e.path),
        };
        if same {
            keep[n].store(1, Ordering::Relaxed);
            if e.kind == Kind::File && e.path != CONTROL {
                kept.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    })?;
    let rewrite: Vec<bool> = keep
        .iter()
        .map(|k| k.load(Ordering::Relaxed) == 0)
        .collect();
    let mut counts = Counts {
        kept: kept.into_inner(),
        ..Counts::default()
    };
    // What is in the way of an entry to rewrite goes first (a file where a directory
    // belongs, a stale link, a changed file).
    for (e, _) in ix.entries.iter().zip(&rewrite).filter(|(_, r)| **r) {
        if let Some((root, rel)) = located(roots, &e.path) {
            remove(root, rel)?;
        }
        if e.kind == Kind::File {
            counts.rewritten += 1;
        }
    }
    counts.removed = remove_extras(ix, roots)?;
    Ok((rewrite, counts))
}

/// The root and relative path of an entry, the link `pg_tblspc/<oid>` included.
fn located<'a>(roots: &'a Roots, path: &'a str) -> Option<(&'a Dir, &'a str)> {
    roots.locate(path).or(Some((&roots.pgdata, path)))
}

fn is_dir(roots: &Roots, path: &str) -> bool {
    located(roots, path).is_some_and(|(r, rel)| r.open_beneath(Path::new(rel)).is_ok())
}

/// Whether the regular file at `path` has this size and SHA-256 (links never followed).
fn same_file(roots: &Roots, path: &str, size: u64, sha: Option<&str>) -> Result<bool> {
    let Some((root, rel)) = roots.locate(path) else {
        return Ok(false);
    };
    let f = match root.open_file_beneath(Path::new(rel)) {
        Ok(f) => f,
        Err(_) => return Ok(false),
    };
    let full = root.display_path(rel);
    let len = f
        .metadata()
        .map_err(|e| io_err("cannot stat", &full, e))?
        .len();
    if len != size {
        return Ok(false);
    }
    let (_, got) = hash_file(f).map_err(|e| io_err("cannot read", &full, e))?;
    Ok(Some(got.as_str()) == sha)
}

/// Removes `rel` below `root` (whatever it is; a link is removed, never followed).
fn remove(root: &Dir, rel: &str) -> Result<()> {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let parent = match root.open_beneath(Path::new(dir)) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(crate::fsutil::nofollow_err(
                "cannot open",
                &root.display_path(dir),
                e,
            ))
        }
    };
    parent
        .remove_tree(name)
        .map_err(|e| io_err("cannot remove", &root.display_path(rel), e))
}

/// Removes every entry below the roots that the backup does not have; returns how many.
fn remove_extras(ix: &Index, roots: &Roots) -> Result<u64> {
    let mut want: BTreeMap<Option<u32>, HashSet<&str>> = BTreeMap::new();
    want.insert(None, HashSet::new());
    for oid in roots.tablespaces.keys() {
        want.insert(Some(*oid), HashSet::new());
    }
    for e in &ix.entries {
        match fetch::tablespace_of(&e.path) {
            Some((oid, rest)) => want.entry(Some(oid)).or_default().insert(rest),
            None => want.entry(None).or_default().insert(e.path.as_str()),
        };
    }
    // The control file is installed by prepare: never an extra.
    want.entry(None).or_default().insert(CONTROL);
    let mut removed = 0;
    let empty = HashSet::new();
    removed += sweep(&roots.pgdata, "", want.get(&None).unwrap_or(&empty))?;
    for (oid, d) in &roots.tablespaces {
        removed += sweep(d, "", want.get(&Some(*oid)).unwrap_or(&empty))?;
    }
    Ok(removed)
}

/// One directory of the sweep: extras removed, wanted directories walked into.
fn sweep(dir: &Dir, prefix: &str, want: &HashSet<&str>) -> Result<u64> {
    let names = dir
        .entries()
        .map_err(|e| io_err("cannot list", dir.path(), e))?;
    let mut removed = 0;
    for name in names {
        let Some(n) = name.to_str() else {
            dir.remove_tree(&name)
                .map_err(|e| io_err("cannot remove", &dir.display_path(&name), e))?;
            removed += 1;
            continue;
        };
        let rel = if prefix.is_empty() {
            n.to_string()
        } else {
            format!("{prefix}/{n}")
        };
        if !want.contains(rel.as_str()) {
            dir.remove_tree(&name)
                .map_err(|e| io_err("cannot remove", &dir.display_path(&name), e))?;
            removed += 1;
            continue;
        }
        let is_dir = dir
            .lstat(&name)
            .is_ok_and(|st| crate::fsutil::kind(&st) == libc::S_IFDIR);
        if is_dir {
            let sub = dir.open_dir(&name).map_err(|e| {
                crate::fsutil::nofollow_err("cannot open", &dir.display_path(&name), e)
            })?;
            removed += sweep(&sub, &rel, want)?;
        }
    }
    Ok(removed)
}
