//! `archive-get %f %p`: find `%f` in the stores (the first that has it), unpack it into a
//! temporary file beside `%p`, check its SHA-256 (and a segment's size) against what was
//! archived, and rename it into place. `%p` must lie inside the data directory.
//!
//! `%p` is not fsynced, as PostgreSQL expects of a restore_command: the server removes
//! `%p` before each call, makes a file it keeps durable itself, and after a crash fetches
//! again what it had not made durable. The prefetch spool's files, which a later call
//! trusts without unpacking them again, are fsynced.
//! A file in no store is [`Fetched::Missing`] (exit 1, as PostgreSQL expects at the end
//! of the archive); a damaged object is a check error naming it, never a short file.

use super::unpack::{self, Failure};
use super::{cluster_id, layout, prefetch, ClusterId, Settings};
use crate::error::{io_err, Class, Error, Result};
use crate::fsutil::{self, Dir};
use crate::store::objects::Handle;
use pgbookend_formats::walname::{WalKind, WalName};
use serde::Serialize;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// What `archive-get` restored.
#[derive(Debug, Serialize)]
pub struct Report {
    pub name: String,
    /// The object it came from.
    pub object: String,
    pub sha256: String,
    pub size: u64,
    /// Damaged copies met (and skipped) in earlier stores.
    pub skipped: Vec<Error>,
    /// It came from the prefetch spool (fetched, hashed and checked there earlier).
    pub prefetched: bool,
}

/// The result of a fetch.
#[derive(Debug)]
pub enum Fetched {
    Restored(Report),
    /// No store has the file.
    Missing,
}

/// Restores the WAL file `name` to `dest` (`%f` and `%p`): from the prefetch spool when
/// it holds it, else from the first store that has it.
pub fn get(s: &Settings, name: &str, dest: &str) -> Result<Fetched> {
    let name = WalName::parse(name).map_err(|e| {
        Error::usage(format!("archive-get: {e}"))
            .hint("restore_command = 'pgbookend archive-get %f %p'")
    })?;
    let (parent, file) = dest_in(&s.pgdata, dest)?;
    let id = cluster_id(&s.pgdata)?;
    let dir = Dir::open_follow(&s.pgdata.join(&parent))
        .map_err(|e| io_err("cannot open", &s.pgdata.join(&parent), e))?;
    let spool = prefetch::Spool::open(&dir, s.prefetch, &name);
    if let Some(sp) = &spool {
        if let Some(r) = sp.take(&name, &id, &dir, &file)? {
            sp.kick(&dir, &name);
            return Ok(Fetched::Restored(r));
        }
    }
    let mode = Mode {
        durable: false,
        apart: true,
    };
    let got = fetch_any(s, &id, &name, &dir, &|_| file.clone(), mode)?;
    match (&spool, &got) {
        (Some(sp), Fetched::Restored(_)) => sp.kick(&dir, &name),
        (Some(sp), Fetched::Missing) if !sp.holds_elsewhere(&name, id.seg_size) => sp.end(&dir),
        (Some(_), Fetched::Missing) => {}
        // A missing history file: the server probes for a free timeline when recovery
        // ends at a target (or at its start), so segments spooled ahead are not wanted.
        (None, Fetched::Missing) if name.kind() == WalKind::History => {
            if let Some(sp) = prefetch::Spool::existing(&dir) {
                sp.end(&dir);
            }
        }
        (None, _) => {}
    }
    Ok(got)
}

/// How a fetched file is written.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mode {
    /// fsync the file and its directory.
    pub durable: bool,
    /// Keep the unpacking threads on different CPUs (a caller waits; see [`unpack`]).
    pub apart: bool,
}

/// Restores `name` from the first store that has it as `final_name(sha256)` in `dir`,
/// fsynced when `mode.durable`. A damaged copy in one store is skipped (and reported) when
/// another has a good one.
pub(super) fn fetch_any(
    s: &Settings,
    id: &ClusterId,
    name: &WalName,
    dir: &Dir,
    final_name: &dyn Fn(&str) -> String,
    mode: Mode,
) -> Result<Fetched> {
    let mut damaged = Vec::new();
    let mut failed = Vec::new();
    for store in &s.stores {
        match fetch_from(store, id, name, dir, final_name, mode) {
            Ok(Some(mut r)) => {
                r.skipped = damaged;
                return Ok(Fetched::Restored(r));
            }
            Ok(None) => {}
            Err(e) if e.class() == Class::Check => damaged.push(e),
            Err(e) => failed.push(e),
        }
    }
    if let Some(first) = damaged.first() {
        let mut e = first.clone();
        for other in damaged.iter().skip(1).chain(failed.iter()) {
            e = e.hint(other.to_string());
        }
        return Err(e);
    }
    if let Some(first) = failed.first() {
        let mut e = first.clone();
        for other in failed.iter().skip(1) {
            e = e.hint(other.to_string());
        }
        return Err(e.hint(format!(
            "{name} may be in a store that could not be read: recovery must not end here"
        )));
    }
    Ok(Fetched::Missing)
}

/// Checks `%p`: a relative path inside the data directory, or an absolute one below it,
/// without `..`; returns its directory (relative to the data directory) and file name.
pub(super) fn dest_in(pgdata: &Path, dest: &str) -> Result<(PathBuf, String)> {
    let refuse = |why: &str| {
        Error::usage(format!("archive-get: destination {dest:?} {why}"))
            .hint("PostgreSQL passes %p as pg_wal/RECOVERYXLOG, relative to the data directory")
    };
    let p = Path::new(dest);
    let rel = if p.is_absolute() {
        p.strip_prefix(pgdata).map_err(|_| {
            refuse(&format!(
                "is outside the data directory {}",
                pgdata.display()
            ))
        })?
    } else {
        p
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            _ => return Err(refuse("leaves the data directory")),
        }
    }
    let file = parts
        .pop()
        .and_then(|f| f.to_str())
        .filter(|f| fsutil::component(f.as_ref()).is_ok())
        .ok_or_else(|| refuse("names no file"))?
        .to_string();
    Ok((parts.iter().collect(), file))
}

/// Looks for `name` in one store and, when there, restores it as `file` in `dir`.
fn fetch_from(
    store: &crate::store::Store,
    id: &ClusterId,
    name: &WalName,
    dir: &Dir,
    final_name: &dyn Fn(&str) -> String,
    mode: Mode,
) -> Result<Option<Report>> {
    let h = Handle::open(store)?;
    let sub = layout::dir_of(id.system_identifier, name);
    let objects = h.list(&sub)?;
    let versions = layout::versions_of(name, objects.iter().map(|o| o.name.as_str()));
    let sha = match versions.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        many => {
            return Err(Error::new(
                Class::Check,
                format!(
                    "{} holds {} different versions of {name} (SHA-256 {})",
                    store.url(),
                    many.len(),
                    many.join(", ")
                ),
            )
            .hint("the archive was written by two clusters with one system identifier: remove the wrong version"))
        }
    };
    let object = layout::object_name(name, &sha);
    let location = h.location(&sub, &object);
    let file = final_name(&sha);
    let file = file.as_str();
    let tmp = fsutil::temp_name(file.as_ref());
    let tmp_path = dir.display_path(&tmp);
    let out = dir
        .create_file(&tmp, 0o600)
        .map_err(|e| io_err("cannot create", &tmp_path, e))?;
    let target = Target {
        h: &h,
        sub: &sub,
        object: &object,
        location: &location,
        mode,
    };
    let res = unpack(&target, out, id, name, &sha).and_then(|r| {
        let Some(n) = r else { return Ok(None) };
        dir.rename(&tmp, dir, file)
            .map_err(|e| io_err("cannot rename into place", &dir.display_path(file), e))?;
        if mode.durable {
            dir.sync()
                .map_err(|e| io_err("cannot fsync directory", dir.path(), e))?;
        }
        Ok(Some(n))
    });
    if !matches!(res, Ok(Some(_))) {
        let _ = dir.unlink(&tmp);
    }
    Ok(res?.map(|size| Report {
        name: name.to_string(),
        object: location,
        sha256: sha,
        size,
        skipped: Vec::new(),
        prefetched: false,
    }))
}

/// The object to unpack, where it is, and how what it unpacks to is written.
struct Target<'a> {
    h: &'a Handle,
    sub: &'a str,
    object: &'a str,
    location: &'a str,
    mode: Mode,
}

/// Streams the object through the decoder into `out`, then checks size and hash and
/// fsyncs when asked. `Ok(None)` when the object vanished between listing and reading.
fn unpack(
    t: &Target,
    out: std::fs::File,
    id: &ClusterId,
    name: &WalName,
    sha: &str,
) -> Result<Option<u64>> {
    let location = t.location;
    let damaged = |why: String| {
        Error::new(Class::Check, format!("archived {name} at {location} is damaged: {why}"))
            .hint("remove or replace that object (another store may hold a good copy); recovery cannot use it")
    };
    let feed = |w: &mut dyn Write| t.h.get_into(t.sub, t.object, w);
    let segment_like = matches!(name.kind(), WalKind::Segment | WalKind::Partial);
    if segment_like {
        preallocate(&out, id.seg_size);
    }
    let u = match unpack::unpack(out, u64::from(id.seg_size), t.mode.apart, feed) {
        Ok(Some(u)) => u,
        Ok(None) => return Ok(None),
        Err(Failure::Damaged(why)) => return Err(damaged(why)),
        Err(Failure::Source(e)) if e.class() == Class::Check => return Err(damaged(e.message)),
        Err(Failure::Source(e)) => return Err(e),
        Err(Failure::Write(e)) => {
            return Err(Error::env(format!("cannot write the restored {name}: {e}")))
        }
    };
    if u.sha256 != sha {
        return Err(damaged(format!(
            "it unpacks to {} bytes with SHA-256 {}, its name says {sha}",
            u.size, u.sha256
        )));
    }
    if segment_like && u.size != u64::from(id.seg_size) {
        return Err(damaged(format!(
            "it unpacks to {} bytes, a segment has {}",
            u.size, id.seg_size
        )));
    }
    if t.mode.durable {
        u.file
            .sync_all()
            .map_err(|e| Error::env(format!("cannot fsync the restored {name}: {e}")))?;
    }
    Ok(Some(u.size))
}

/// Reserves the blocks of a segment before writing it, without changing its size: the
/// file system then maps each page written to a reserved extent instead of delaying the
/// allocation page by page, which halves the kernel's share of the writes on ext4. Best
/// effort: a file system that cannot (EOPNOTSUPP) is written as usual.
fn preallocate(out: &std::fs::File, len: u32) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; FALLOC_FL_KEEP_SIZE only reserves blocks.
    let _ = unsafe {
        libc::fallocate(
            out.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            libc::off_t::from(len),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_must_stay_in_the_data_directory() {
        let pg = Path::new("/srv/pg/data");
        let ok = |d: &str| dest_in(pg, d).unwrap();
        assert_eq!(
            ok("pg_wal/RECOVERYXLOG"),
            (PathBuf::from("pg_wal"), "RECOVERYXLOG".into())
        );
        assert_eq!(
            ok("/srv/pg/data/pg_wal/x"),
            (PathBuf::from("pg_wal"), "x".into())
        );
        assert_eq!(
            ok("./RECOVERYXLOG"),
            (PathBuf::new(), "RECOVERYXLOG".into())
        );
        for bad in [
            "../x",
            "pg_wal/../../x",
            "/tmp/x",
            "/srv/pg/data2/x",
            "/srv/pg/data",
            "",
            "pg_wal/..",
        ] {
            let e = dest_in(pg, bad).unwrap_err();
            assert_eq!(e.class(), Class::Usage, "{bad:?}");
        }
    }
}
