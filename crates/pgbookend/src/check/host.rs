//! The host side of `check`: stores written, read back and cleaned with a probe object;
//! the run and state directories; the config file's mode.

use super::Line;
use crate::bundle::manifest::FileEntry;
use crate::fsutil::{self, Dir, NotPrivate};
use crate::store::objects::Handle;
use crate::store::Store;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The directory of probe objects in a store (removed again when empty).
use super::PROBE_DIR;

/// Writes a small random object to `url`, reads it back, compares and deletes it.
pub fn probe_store(url: &str, s3: &crate::store::s3::Settings) -> Line {
    let fix = "the user that runs pgbookend (and archive_command) must be able to write, read and delete in the store: for a directory, its owner and mode; for S3, the bucket, endpoint and credentials";
    match probe(url, s3) {
        Ok(()) => Line::ok("store", format!("{url}: written, read back and removed")),
        Err(e) => {
            let fix = e
                .hints
                .first()
                .map_or(fix.to_string(), |h| format!("{h} ({fix})"));
            Line::fail("store", format!("{url}: {}", e.message), fix)
        }
    }
}

fn probe(url: &str, s3: &crate::store::s3::Settings) -> crate::error::Result<()> {
    let store = Store::parse(url, s3)?;
    let h = Handle::open(&store)?;
    let data = fsutil::random_bytes::<32>();
    let mut tmp = tempfile::NamedTempFile::new()
        .map_err(|e| crate::error::Error::env(format!("cannot create a temporary file: {e}")))?;
    tmp.write_all(&data)
        .map_err(|e| crate::error::Error::env(format!("cannot write a temporary file: {e}")))?;
    let expect = FileEntry {
        size: data.len() as u64,
        sha256: fsutil::sha256_hex(&data),
    };
    let name = format!("probe-{}", hex::encode(fsutil::random_bytes::<8>()));
    h.put_file(PROBE_DIR, &name, tmp.path(), &expect)?;
    let mut back = Vec::new();
    let found = h.get_into(PROBE_DIR, &name, &mut back);
    let removed = remove(&h, &name);
    if !found? || back != data {
        return Err(crate::error::Error::env(format!(
            "{} read back differs from what was written",
            h.location(PROBE_DIR, &name)
        )));
    }
    removed
}

/// Deletes the probe object (and its directory when empty, for local stores).
fn remove(h: &Handle, name: &str) -> crate::error::Result<()> {
    match h {
        Handle::Local(root) => {
            let d = Dir::open_follow(root)
                .and_then(|r| r.open_dir(PROBE_DIR).map(|d| (r, d)))
                .map_err(|e| crate::error::io_err("cannot open", &root.join(PROBE_DIR), e))?;
            d.1.unlink(name)
                .map_err(|e| crate::error::io_err("cannot remove", &root.join(PROBE_DIR), e))?;
            let _ = d.0.rmdir(PROBE_DIR);
            Ok(())
        }
        Handle::S3(c) => c.delete(&[format!("{PROBE_DIR}/{name}")]),
    }
}

/// A run or state directory: absent is fine (created private on first use); present, it
/// must be a real directory of ours that nobody else may write.
pub fn check_dir(check: &'static str, path: &Path) -> Line {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Line::ok(
                check,
                format!("{shown}: absent, created (mode 0700) on first use"),
            )
        }
        Err(e) => {
            return Line::fail(
                check,
                format!("{shown}: {e}"),
                "fix the path or its parent's permissions",
            )
        }
        Ok(_) => {}
    }
    let fix = "make it a directory owned by the user that runs pgbookend, not writable by group or others (chown, chmod 0700), or choose another";
    match fsutil::open_private(path, false) {
        Ok(_) => Line::ok(check, format!("{shown}: private directory")),
        Err(NotPrivate::Link) => Line::fail(check, format!("{shown}: a symbolic link"), fix),
        Err(NotPrivate::NotDir) => Line::fail(check, format!("{shown}: not a directory"), fix),
        Err(NotPrivate::Shared {
            want_uid,
            uid,
            mode,
        }) => Line::fail(
            check,
            format!(
                "{shown}: uid {uid}, mode {mode:o} (want uid {want_uid}, not group/other writable)"
            ),
            fix,
        ),
        Err(NotPrivate::Io(what, e)) => {
            Line::fail(check, format!("{shown}: cannot {what}: {e}"), fix)
        }
    }
}

/// The config file: it parsed (or `check` would not run), nobody else may write it (its
/// notification commands run as the user of pgbookend), and a file holding a password is
/// not readable by others.
pub fn check_config(path: Option<&Path>, has_secret: bool) -> Line {
    let Some(path) = path else {
        return Line::ok("config", "no config file (flags and the environment only)");
    };
    let shown = path.display();
    let md = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Line::fail("config", format!("{shown}: {e}"), "fix PGBOOKEND_CONFIG"),
    };
    let mode = md.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Line::fail(
            "config",
            format!("{shown}: mode {mode:o}, writable by group or others"),
            format!("chmod go-w {shown}: whoever may write it chooses the stores and the commands pgbookend runs"),
        );
    }
    if has_secret && mode & 0o004 != 0 {
        return Line::fail(
            "config",
            format!("{shown}: holds a password and is readable by everyone (mode {mode:o})"),
            format!("chmod o-r {shown}, or move the password to ~/.pgpass"),
        );
    }
    Line::ok("config", format!("{shown}: parsed, mode {mode:o}"))
}
