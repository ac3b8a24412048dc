//! Same-host safety of `prepare`: where the copy's `pg_wal`, `pg_replslot` and tablespace
//! links lead, which directories belong to a running cluster on this host, and whether a
//! remap target (`--waldir`, `--tablespace`) may be used.
//!
//! A copy restored beside the live primary still carries the primary's links (a separate
//! WAL directory, tablespace locations). Emptying or writing through them would destroy
//! the primary, so any of them that leads outside the copy is refused unless a remap
//! says where the restored server keeps that data instead (invariant 10).

use crate::problem::{problem, Problem};
use pgbookend_formats::{version, wal};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// A PostgreSQL server running on this host, and the directories it writes.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: i32,
    pub datadir: PathBuf,
    /// The data directory, where its pg_wal leads, where each pg_tblspc entry leads.
    pub areas: Vec<PathBuf>,
}

/// Every running cluster: processes whose executable is `postgres` (or `postmaster`),
/// whose working directory (the data directory) holds a `postmaster.pid`.
pub fn running_clusters() -> Vec<Running> {
    let mut out: Vec<Running> = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        let base = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(base.starts_with("postgres") || base.starts_with("postmaster")) {
            continue;
        }
        let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        if out.iter().any(|r| r.datadir == cwd) || !cwd.join("postmaster.pid").is_file() {
            continue;
        }
        let mut areas = vec![cwd.clone()];
        if let Ok(w) = fs::canonicalize(cwd.join("pg_wal")) {
            areas.push(w);
        }
        if let Ok(ts) = fs::read_dir(cwd.join("pg_tblspc")) {
            for t in ts.flatten() {
                if let Ok(p) = fs::canonicalize(t.path()) {
                    areas.push(p);
                }
            }
        }
        out.push(Running {
            pid,
            datadir: cwd,
            areas,
        });
    }
    out
}

/// `path` made absolute through its nearest existing ancestor (links resolved there);
/// the rest is appended as given (it does not exist yet).
pub fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path.to_path_buf();
    loop {
        if let Ok(c) = fs::canonicalize(&cur) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n);
                cur = p.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The (device, inode) of `p` and of each of its existing ancestors.
fn identities(p: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur = Some(p);
    while let Some(c) = cur {
        if let Ok(m) = fs::metadata(c) {
            out.push((m.dev(), m.ino()));
        }
        cur = c.parent();
    }
    out
}

fn identity(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `a` and `b` (resolved paths) are the same directory or one holds the other,
/// compared by device and inode.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    let (ia, ib) = (identities(a), identities(b));
    let a_in_b = identity(b).map(|x| ia.contains(&x)).unwrap_or(false);
    let b_in_a = identity(a).map(|x| ib.contains(&x)).unwrap_or(false);
    a_in_b || b_in_a || a.starts_with(b) || b.starts_with(a)
}

/// The running cluster whose directories `target` overlaps, if any.
pub fn owner_of<'a>(target: &Path, running: &'a [Running]) -> Option<&'a Running> {
    let t = resolve(target);
    running
        .iter()
        .find(|r| r.areas.iter().any(|a| overlaps(&t, a)))
}

/// Whether `link` (a path in the copy) resolves to somewhere inside `copy` (a resolved
/// path), not to the copy itself or outside it.
pub fn inside_copy(link: &Path, copy: &Path) -> bool {
    match fs::canonicalize(link) {
        Ok(t) => t != copy && t.starts_with(copy),
        Err(_) => false,
    }
}

/// What a remap target is for, which decides what it may already hold.
#[derive(Debug, Clone)]
pub enum TargetUse {
    /// `--waldir`: empty, or only WAL files (prepare empties it).
    Wal,
    /// `--tablespace OID=PATH`: empty, or a restored copy of that very tablespace (its
    /// version directory); `must_be_empty` when prepare moves the copy's files there.
    Tablespace {
        oid: u32,
        version_dir: Option<String>,
        must_be_empty: bool,
    },
}

/// The checks of one remap target; `None` if it may be used.
pub fn check_target(
    flag: &str,
    target: &Path,
    usage: &TargetUse,
    copy: &Path,
    running: &[Running],
) -> Option<Problem> {
    let refuse = |m: String, h: &str| Some(problem("remap_target", m, h));
    if target
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return refuse(
            format!("{flag} {}: the path contains '..'", target.display()),
            "give a plain absolute path",
        );
    }
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            return refuse(
                format!("{flag} {} is a symbolic link", target.display()),
                "give the directory itself: prepare does not follow links it did not create",
            )
        }
        Ok(m) if !m.is_dir() => {
            return refuse(
                format!("{flag} {} is not a directory", target.display()),
                "give a new or empty directory",
            )
        }
        _ => {}
    }
    let resolved = resolve(target);
    if overlaps(&resolved, copy) && !resolved.starts_with(copy) || resolved == copy {
        return refuse(
            format!("{flag} {} holds the copy itself", target.display()),
            "give a directory beside the copy, not around it",
        );
    }
    if let Some(r) = owner_of(target, running) {
        return refuse(
            format!(
                "{flag} {} belongs to the running cluster in {} (postmaster pid {}): the restored server would write its files",
                target.display(),
                r.datadir.display(),
                r.pid
            ),
            "give a new empty directory for the restored copy",
        );
    }
    contents_problem(flag, target, usage)
}

/// What the target already holds must fit its use.
fn contents_problem(flag: &str, target: &Path, usage: &TargetUse) -> Option<Problem> {
    let names: Vec<String> = match fs::read_dir(target) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return None, // missing: prepare creates it
    };
    if names.is_empty() {
        return None;
    }
    let refuse = |m: String, h: String| Some(problem("remap_target", m, h));
    match usage {
        TargetUse::Wal => {
            if let Some(odd) = names.iter().find(|n| !wal::is_wal_directory_entry(n)) {
                return refuse(
                    format!(
                        "{flag} {} is not empty and holds {odd:?}, which is not a WAL file",
                        target.display()
                    ),
                    "give a new or empty directory: prepare empties it".into(),
                );
            }
            None
        }
        TargetUse::Tablespace {
            oid,
            version_dir,
            must_be_empty,
        } => {
            let want = version_dir.clone().unwrap_or_default();
            let restored = names.iter().all(|n| version::is_tablespace_version_dir(n))
                && names.contains(&want);
            if restored && !must_be_empty {
                return None;
            }
            let why = if *must_be_empty {
                "the copy holds the tablespace's files, to be moved into an empty directory"
                    .to_string()
            } else {
                format!(
                    "it is neither empty nor a restored copy of tablespace {oid} (holding {want})"
                )
            };
            refuse(
                format!("{flag} {}: {why}", target.display()),
                format!("give a new or empty directory, or the directory where this backup's copy of tablespace {oid} was restored"),
            )
        }
    }
}

/// What the layout check needs to know about the backup and the run.
pub struct LayoutInput<'a> {
    pub pgdata: &'a Path,
    pub waldir: Option<&'a Path>,
    pub remap: &'a std::collections::BTreeMap<u32, PathBuf>,
    /// Each tablespace of the backup with its original location (from tablespace_map).
    pub tablespaces: Vec<(u32, String)>,
    /// `PG_<major>_<catversion>` of the backup, to recognise a restored tablespace.
    pub version_dir: Option<String>,
    /// The copy was restored onto the original data directory's path (so the original
    /// cluster is gone and its tablespaces' original locations hold the restored ones).
    pub in_place: bool,
    /// A half-prepared copy is being finished (a remap target may hold moved files).
    pub resuming: bool,
}

/// Every reason the copy's layout would make the restored server (or prepare) touch
/// something outside the copy, or a remap target that may not be used.
pub fn layout_problems(inp: &LayoutInput<'_>) -> Vec<Problem> {
    let mut out = Vec::new();
    let copy = match fs::canonicalize(inp.pgdata) {
        Ok(c) => c,
        Err(_) => return out,
    };
    let running = running_clusters();
    let is_link = |q: &Path| {
        fs::symlink_metadata(q)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
    };
    for name in [
        "global",
        "pg_tblspc",
        crate::pg::datadir::MARKER_DIR,
        "pg_wal",
    ] {
        let q = inp.pgdata.join(name);
        if name == "pg_wal" && inp.waldir.is_some() {
            continue;
        }
        if is_link(&q) {
            let to = fs::read_link(&q).unwrap_or_default();
            let hint = if name == "pg_wal" {
                "this copy keeps its WAL in a separate directory (initdb -X): give --waldir NEWDIR (a new or empty directory) for the restored server's WAL; prepare never empties the directory the link names, which may be the live primary's"
            } else {
                "restore the copy without this link; prepare never works through a link in a copy"
            };
            out.push(problem(
                "copy_link",
                format!(
                    "{} in the copy is a link to {}{}",
                    name,
                    to.display(),
                    if inside_copy(&q, &copy) {
                        ""
                    } else {
                        ", outside the copy"
                    }
                ),
                hint,
            ));
        }
    }
    let wal = inp.pgdata.join("pg_wal");
    let wal_kind = fs::symlink_metadata(&wal).map(|m| (m.is_dir(), m.file_type().is_symlink()));
    if inp.waldir.is_none() && !matches!(wal_kind, Ok((true, _)) | Ok((_, true))) {
        out.push(problem(
            "copy_layout",
            format!("{} is missing or not a directory", wal.display()),
            "restore the whole copy (pg_wal may be empty, but must be a directory), or give --waldir NEWDIR",
        ));
    }
    if let Some(w) = inp.waldir {
        out.extend(check_target(
            "--waldir",
            w,
            &TargetUse::Wal,
            &copy,
            &running,
        ));
    }
    out.extend(tablespace_problems(inp, &copy, &running));
    out
}

/// The tablespace part of [`layout_problems`].
fn tablespace_problems(inp: &LayoutInput<'_>, copy: &Path, running: &[Running]) -> Vec<Problem> {
    let mut out = Vec::new();
    let tbl = inp.pgdata.join("pg_tblspc");
    for (oid, orig) in &inp.tablespaces {
        let link = tbl.join(oid.to_string());
        let real_dir = fs::symlink_metadata(&link)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        let flag = format!("--tablespace {oid}=");
        if let Some(to) = inp.remap.get(oid) {
            let full = real_dir
                && fs::read_dir(&link)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false);
            let usage = TargetUse::Tablespace {
                oid: *oid,
                version_dir: inp.version_dir.clone(),
                must_be_empty: full && !inp.resuming,
            };
            out.extend(check_target(&flag, to, &usage, copy, running));
            continue;
        }
        if real_dir || inside_copy(Path::new(orig), copy) {
            continue; // inline tablespaces are refused (or moved) by prepare itself
        }
        if inp.in_place {
            // Restored onto the original paths: the original location must hold this
            // backup's copy of the tablespace, and no running cluster may use it.
            let usage = TargetUse::Tablespace {
                oid: *oid,
                version_dir: inp.version_dir.clone(),
                must_be_empty: false,
            };
            let at = format!("tablespace {oid} at its original location");
            let mut found = check_target(&at, Path::new(orig), &usage, copy, running);
            if found.is_none()
                && fs::read_dir(orig)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(true)
            {
                found = Some(problem(
                    "tablespace_outside",
                    format!("tablespace {oid} was not restored at its original location {orig}"),
                    format!("restore the tablespace there, or give --tablespace {oid}=PATH where it was restored"),
                ));
            }
            out.extend(found);
            continue;
        }
        out.push(problem(
            "tablespace_outside",
            format!(
                "tablespace {oid} would stay at {orig}, its location on the original server, outside the copy: if that server runs on this host (or starts again), the restored server would write its files"
            ),
            format!(
                "give --tablespace {oid}=PATH: a new or empty directory, or where this backup's copy of the tablespace was restored (that may be {orig} itself only if it holds such a restored copy and no cluster uses it)"
            ),
        ));
    }
    if let Ok(rd) = fs::read_dir(&tbl) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let known = inp.tablespaces.iter().any(|(o, _)| o.to_string() == name);
            if !known && is_symlink(&e.path()) && !inside_copy(&e.path(), copy) {
                out.push(problem(
                    "copy_link",
                    format!("pg_tblspc/{name} in the copy is a link outside the copy, and the backup has no such tablespace"),
                    "remove it from the copy: prepare never works through a link that leaves the copy",
                ));
            }
        }
    }
    out
}

fn is_symlink(q: &Path) -> bool {
    fs::symlink_metadata(q)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}
