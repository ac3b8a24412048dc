//! The file list: which files of PGDATA and its tablespaces a complete copy must hold.
//!
//! `start` walks the cluster right after the start call, `stop` walks it again; the files
//! present both times are stored in the bundle (`files.zst`). The walk leaves out what a
//! base backup leaves out (PostgreSQL's `basebackup.c` exclusion lists): the contents of
//! `pg_wal`, `pg_replslot`, `pg_stat_tmp`, `pg_dynshmem`, `pg_notify`, `pg_serial`,
//! `pg_snapshots`, `pg_subtrans`; `postmaster.pid`/`.opts`, `backup_label`,
//! `tablespace_map`, `backup_manifest`, `pg_internal.init*`, `*.tmp` config leftovers;
//! `pgsql_tmp*`; temporary relation files; every fork but `_init` of unlogged relations;
//! and pgbookend's own `pg_backup_metadata`.
//!
//! Memory stays bounded by the largest single directory: the walk is depth-first with
//! each directory's entries sorted, so both walks come out in the same (component-wise)
//! order and are intersected by a streaming merge.

use crate::error::{io_err, Error, Result};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The file list's name in the bundle.
pub const FILE_LIST: &str = "files.zst";

/// Directories whose contents a base backup leaves out (the directory itself is kept).
pub(crate) const EXCLUDE_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_xlog",
    "pg_replslot",
    "pg_stat_tmp",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    crate::pg::datadir::MARKER_DIR,
];

/// Top-level files a base backup leaves out.
pub(crate) const EXCLUDE_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// Escapes a path for one line of the list.
pub fn escape(path: &str) -> String {
    path.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Reverses [`escape`].
pub fn unescape(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The order of both walks and of the stored list: component by component, bytewise.
pub fn cmp_paths(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// `t<digits>_<digits>` with an optional fork/segment suffix: a temporary relation.
pub(crate) fn is_temp_rel(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'_') {
        return false;
    }
    let tail = &rest[digits + 1..];
    let d2 = tail.bytes().take_while(|b| b.is_ascii_digit()).count();
    d2 > 0 && (d2 == tail.len() || matches!(tail.as_bytes()[d2], b'_' | b'.'))
}

/// The relfilenode of a relation file name (`16384`, `16384_fsm`, `16384.2`), if it is one.
pub(crate) fn relfilenode(name: &str) -> Option<&str> {
    let d = name.bytes().take_while(|b| b.is_ascii_digit()).count();
    if d == 0 {
        return None;
    }
    match name.as_bytes().get(d) {
        None | Some(b'_') | Some(b'.') => Some(&name[..d]),
        _ => None,
    }
}

/// Walks PGDATA (following the `pg_tblspc` links) and calls `emit` with each file's
/// path relative to PGDATA, in [`cmp_paths`] order. Returns the number of files.
pub fn walk(pgdata: &Path, emit: &mut dyn FnMut(&str) -> Result<()>) -> Result<u64> {
    let mut count = 0;
    walk_dir(pgdata, "", 0, &mut |p| {
        count += 1;
        emit(p)
    })?;
    Ok(count)
}

fn walk_dir(
    dir: &Path,
    rel: &str,
    depth: usize,
    emit: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        // A directory dropped during the walk (DROP DATABASE) simply has no files.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth > 0 => return Ok(()),
        Err(e) => return Err(io_err("cannot list", dir, e)),
    };
    // The file type comes with the directory entry (d_type), so regular files and
    // directories cost no stat; only links (and file systems without d_type) need one.
    let mut names: Vec<(String, Option<fs::FileType>)> = Vec::new();
    for e in rd {
        let e = e.map_err(|e| io_err("cannot list", dir, e))?;
        let ft = e.file_type().ok();
        match e.file_name().into_string() {
            Ok(n) => names.push((n, ft)),
            Err(n) => {
                return Err(Error::env(format!(
                    "{} holds a file name that is not UTF-8: {:?}",
                    dir.display(),
                    n
                )))
            }
        }
    }
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Unlogged relations: only their init fork is copied by a base backup.
    let unlogged: HashSet<String> = names
        .iter()
        .filter_map(|(n, _)| {
            n.strip_suffix("_init")
                .filter(|r| r.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|s| s.to_string())
        .collect();
    for (name, ft) in &names {
        if name.starts_with("pgsql_tmp") || is_temp_rel(name) {
            continue;
        }
        if depth == 0 && (EXCLUDE_FILES.contains(&name.as_str())) {
            continue;
        }
        if name.starts_with("pg_internal.init") {
            continue;
        }
        if !unlogged.is_empty() {
            if let Some(r) = relfilenode(name) {
                if unlogged.contains(r) && !name.contains("_init") {
                    continue;
                }
            }
        }
        let path = dir.join(name);
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = match ft {
            Some(ft) => *ft,
            None => match fs::symlink_metadata(&path) {
                Ok(m) => m.file_type(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("cannot stat", &path, e)),
            },
        };
        let is_dir = if ft.is_symlink() {
            // Tablespace links (and a linked pg_wal): follow them.
            fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false)
        } else {
            ft.is_dir()
        };
        if is_dir {
            if depth == 0 && EXCLUDE_CONTENTS.contains(&name.as_str()) {
                continue;
            }
            walk_dir(&path, &rel_path, depth + 1, emit)?;
        } else if ft.is_file() {
            emit(&rel_path)?;
        }
    }
    Ok(())
}

/// Writes a list to `path` (zstd), one escaped path per line.
pub struct Writer {
    enc: zstd::stream::write::Encoder<'static, BufWriter<fs::File>>,
    path: PathBuf,
    pub count: u64,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer> {
        let f = fs::File::create(path).map_err(|e| io_err("cannot create", path, e))?;
        let enc = zstd::stream::write::Encoder::new(BufWriter::new(f), 3)
            .map_err(|e| io_err("cannot compress into", path, e))?;
        Ok(Writer {
            enc,
            path: path.to_path_buf(),
            count: 0,
        })
    }
    pub fn push(&mut self, p: &str) -> Result<()> {
        self.count += 1;
        self.enc
            .write_all(escape(p).as_bytes())
            .and_then(|_| self.enc.write_all(b"\n"))
            .map_err(|e| io_err("cannot write", &self.path, e))
    }
    /// Ends the stream and fsyncs the file.
    pub fn finish(self) -> Result<u64> {
        let path = self.path;
        let buf = self
            .enc
            .finish()
            .map_err(|e| io_err("cannot finish", &path, e))?;
        let f = buf
            .into_inner()
            .map_err(|e| io_err("cannot write", &path, e.into_error()))?;
        f.sync_all().map_err(|e| io_err("cannot fsync", &path, e))?;
        Ok(self.count)
    }
}

/// The longest line of a list accepted: a path of `PATH_MAX` bytes, each escaped.
pub const MAX_LINE: u64 = 2 * 4096 + 1;

/// Reads a list written by [`Writer`], path by path. The list may come from a hostile
/// store: the decoder's window is capped, a line longer than [`MAX_LINE`] or not UTF-8
/// ends the reading with an error, and memory stays bounded by one line.
pub fn read(path: &Path) -> Result<impl Iterator<Item = Result<String>>> {
    let f = open_list(path)?;
    let dec = crate::bundle::read::bounded_decoder(f)
        .map_err(|e| io_err("cannot decompress", path, e))?;
    let p = path.to_path_buf();
    let mut r = BufReader::new(dec);
    let mut done = false;
    let mut buf = Vec::new();
    Ok(std::iter::from_fn(move || {
        if done {
            return None;
        }
        buf.clear();
        let res = (&mut r).take(MAX_LINE + 1).read_until(b'\n', &mut buf);
        let bad = |why: String| {
            Error::new(
                crate::error::Class::Check,
                format!("file list {}: {why}", p.display()),
            )
        };
        let out = match res {
            Err(e) => Err(io_err("cannot read", &p, e)),
            Ok(0) => {
                done = true;
                return None;
            }
            Ok(_) if buf.last() != Some(&b'\n') && buf.len() as u64 > MAX_LINE => {
                Err(bad(format!("a line is longer than {MAX_LINE} bytes")))
            }
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                std::str::from_utf8(&buf)
                    .map(unescape)
                    .map_err(|_| bad("a line is not UTF-8".into()))
            }
        };
        done = out.is_err();
        Some(out)
    }))
}

/// Opens a list file without following a link (it may lie in a hostile store).
fn open_list(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io_err("cannot open", path, e))?;
    let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !regular {
        return Err(Error::new(
            crate::error::Class::Check,
            format!("file list {} is not a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// Walks PGDATA into a new list file (the start walk).
pub fn walk_to(pgdata: &Path, out: &Path) -> Result<u64> {
    let mut w = Writer::create(out)?;
    walk(pgdata, &mut |p| w.push(p))?;
    w.finish()
}

/// Walks PGDATA again and writes to `out` the files that are also in `start_list`.
pub fn intersect_walk(pgdata: &Path, start_list: &Path, out: &Path) -> Result<u64> {
    let mut w = Writer::create(out)?;
    let mut start = read(start_list)?.peekable();
    walk(pgdata, &mut |p| loop {
        let ord = match start.peek() {
            None => return Ok(()),
            Some(Err(_)) => {
                return Err(start
                    .next()
                    .and_then(|r| r.err())
                    .unwrap_or_else(|| Error::internal("list")))
            }
            Some(Ok(s)) => cmp_paths(s, p),
        };
        match ord {
            Ordering::Less => {
                start.next();
            }
            Ordering::Equal => {
                start.next();
                return w.push(p);
            }
            Ordering::Greater => return Ok(()),
        }
    })?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        for p in ["base/1/2", "a\\b", "new\nline", "\\n", "trail\\"] {
            assert_eq!(unescape(&escape(p)), p);
            assert!(!escape(p).contains('\n'));
        }
    }

    #[test]
    fn recognises_relation_names() {
        assert!(is_temp_rel("t3_16384"));
        assert!(is_temp_rel("t3_16384_fsm"));
        assert!(is_temp_rel("t3_16384.1"));
        assert!(!is_temp_rel("t3"));
        assert!(!is_temp_rel("tablespace"));
        assert_eq!(relfilenode("16384_vm"), Some("16384"));
        assert_eq!(relfilenode("16384.12"), Some("16384"));
        assert_eq!(relfilenode("PG_VERSION"), None);
    }

    #[test]
    fn walk_excludes_and_intersects() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "base/1/1259",
            "base/1/1259_fsm",
            "base/1/16400",
            "base/1/16400_init",
            "base/1/16400_fsm",
            "base/1/t3_99",
            "base/1/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/x.done",
            "pg_replslot/s/state",
            "pg_backup_metadata/x/backup.json",
            "global/pg_control",
        ] {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, b"x").unwrap();
        }
        let ts = tempfile::tempdir().unwrap();
        fs::create_dir_all(ts.path().join("PG_16_1/5")).unwrap();
        fs::write(ts.path().join("PG_16_1/5/16500"), b"x").unwrap();
        fs::create_dir_all(root.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(ts.path(), root.join("pg_tblspc/16499")).unwrap();
        let mut got = Vec::new();
        walk(root, &mut |p| {
            got.push(p.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got,
            [
                "PG_VERSION",
                "base/1/1259",
                "base/1/1259_fsm",
                "base/1/16400_init",
                "global/pg_control",
                "pg_tblspc/16499/PG_16_1/5/16500"
            ]
        );
        let lists = tempfile::tempdir().unwrap();
        let start = lists.path().join("start.zst");
        let out = lists.path().join("both.zst");
        assert_eq!(walk_to(root, &start).unwrap(), 6);
        fs::remove_file(root.join("base/1/1259_fsm")).unwrap();
        fs::write(root.join("base/1/1300"), b"new").unwrap();
        assert_eq!(intersect_walk(root, &start, &out).unwrap(), 5);
        let both: Vec<String> = read(&out).unwrap().map(|r| r.unwrap()).collect();
        assert!(!both.contains(&"base/1/1259_fsm".to_string()));
        assert!(!both.contains(&"base/1/1300".to_string()));
        assert!(both.contains(&"pg_tblspc/16499/PG_16_1/5/16500".to_string()));
    }
}
