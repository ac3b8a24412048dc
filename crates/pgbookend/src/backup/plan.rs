//! What a built-in backup copies: the entries of PGDATA and its tablespaces in index
//! order, with the base-backup exclusions of the file list (`filelist`).
//!
//! Directories are kept (also those whose contents are excluded, such as `pg_wal`),
//! `pg_tblspc/<oid>` links are recorded and followed, a linked `pg_wal` is recorded and
//! not followed. Nothing else that is a link is followed or stored.

use super::format::Kind;
use crate::bundle::filelist::{
    cmp_paths, is_temp_rel, relfilenode, EXCLUDE_CONTENTS, EXCLUDE_FILES,
};
use crate::error::{io_err, Error, Result};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// One entry to copy.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Relative to PGDATA (tablespace files through their link).
    pub path: String,
    pub kind: Kind,
    /// Where to read it (files) or stat it.
    pub abs: PathBuf,
    /// Links: where the link points.
    pub target: Option<String>,
    /// Files: the size seen by the walk (for progress only).
    pub size: u64,
}

/// Walks `pgdata` and returns every entry to copy, sorted by [`cmp_paths`].
pub fn plan(pgdata: &Path) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    walk(pgdata, "", 0, &mut out)?;
    out.sort_by(|a, b| cmp_paths(&a.path, &b.path));
    Ok(out)
}

/// Whether a name of a directory listing is left out of a base backup.
fn excluded(name: &str, depth: usize, unlogged: &HashSet<String>) -> bool {
    if name.starts_with("pgsql_tmp") || is_temp_rel(name) || name.starts_with("pg_internal.init") {
        return true;
    }
    if depth == 0 && EXCLUDE_FILES.contains(&name) {
        return true;
    }
    relfilenode(name).is_some_and(|r| unlogged.contains(r) && !name.contains("_init"))
}

fn walk(dir: &Path, rel: &str, depth: usize, out: &mut Vec<Planned>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth > 0 => return Ok(()),
        Err(e) => return Err(io_err("cannot list", dir, e)),
    };
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| io_err("cannot list", dir, e))?;
        match e.file_name().into_string() {
            Ok(n) => names.push(n),
            Err(n) => {
                return Err(Error::env(format!(
                    "{} holds a file name that is not UTF-8: {n:?}",
                    dir.display()
                )))
            }
        }
    }
    let unlogged: HashSet<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix("_init"))
        .filter(|r| r.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .collect();
    for name in names {
        if excluded(&name, depth, &unlogged) {
            continue;
        }
        let abs = dir.join(&name);
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let md = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("cannot stat", &abs, e)),
        };
        let ft = md.file_type();
        if ft.is_symlink() {
            link(&abs, path, rel, &name, depth, out)?;
        } else if ft.is_dir() {
            let skip_contents = depth == 0 && EXCLUDE_CONTENTS.contains(&name.as_str());
            out.push(planned(path.clone(), Kind::Dir, abs.clone(), None));
            if !skip_contents {
                walk(&abs, &path, depth + 1, out)?;
            }
        } else if ft.is_file() {
            let mut f = planned(path, Kind::File, abs, None);
            f.size = md.len();
            out.push(f);
        }
    }
    Ok(())
}

/// A link: a tablespace (recorded and followed) or `pg_wal` (recorded); others skipped.
fn link(
    abs: &Path,
    path: String,
    rel: &str,
    name: &str,
    depth: usize,
    out: &mut Vec<Planned>,
) -> Result<()> {
    let is_tblspc = depth == 1 && rel == "pg_tblspc" && name.bytes().all(|b| b.is_ascii_digit());
    let is_wal = depth == 0 && name == "pg_wal";
    if !is_tblspc && !is_wal {
        return Ok(());
    }
    let target = fs::read_link(abs).map_err(|e| io_err("cannot read link", abs, e))?;
    let target = target
        .to_str()
        .filter(|t| t.starts_with('/'))
        .ok_or_else(|| {
            Error::env(format!(
                "{} points to {}, not an absolute UTF-8 path",
                abs.display(),
                target.display()
            ))
        })?;
    out.push(planned(
        path.clone(),
        Kind::Link,
        abs.to_path_buf(),
        Some(target.to_string()),
    ));
    if is_tblspc {
        walk(abs, &path, depth + 1, out)?;
    }
    Ok(())
}

fn planned(path: String, kind: Kind, abs: PathBuf, target: Option<String>) -> Planned {
    Planned {
        path,
        kind,
        abs,
        target,
        size: 0,
    }
}
