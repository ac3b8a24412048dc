//! The WAL of the backup window: which files it is, collecting them into the bundle
//! (zstd), or confirming that an archive directory holds them.

use crate::bundle::manifest::WalEntry;
use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, Ownership};
use pgbookend_formats::{lsn::Lsn, wal};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of the temporary slot of one backup: slot names allow only `[a-z0-9_]`.
pub fn slot_name(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    let digest = hex::encode(&h.finalize()[..6]);
    format!("pgbookend_{}_{digest}", std::process::id())
}

/// The WAL files the window needs, oldest first: for each segment from the start
/// segment to the stop segment (previous-segment rule), the name on the newest timeline
/// (between start and stop) that `exists` finds, and the history files of timelines
/// after the first.
pub fn window_files(
    start: Lsn,
    stop: Lsn,
    start_tli: u32,
    stop_tli: u32,
    seg_size: u32,
    exists: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for tli in start_tli.max(2)..=stop_tli {
        out.push(wal::history_file_name(tli));
    }
    let first = wal::segno(start, seg_size);
    let last = wal::prev_segno(stop, seg_size).max(first);
    for segno in first..=last {
        let pick = (start_tli..=stop_tli)
            .rev()
            .map(|tli| wal::file_name(tli, segno, seg_size))
            .find(|n| exists(n))
            .unwrap_or_else(|| wal::file_name(stop_tli, segno, seg_size));
        out.push(pick);
    }
    out
}

/// Copies each named file from the first of `sources` that holds it (`pg_wal`, then an
/// archive directory: plain or `.zst`) into `dest/wal/<name>.zst` (temporary name, fsync,
/// rename), hashing the original bytes. Segments are compressed by up to four
/// workers (one per core): compression, not I/O, is what costs here. Memory is bounded
/// by each worker's stream buffers.
pub fn collect(
    sources: &[PathBuf],
    names: &[String],
    dest: &Path,
    own: &Ownership,
) -> Result<Vec<WalEntry>> {
    let waldir = dest.join("wal");
    fsutil::ensure_dir(&waldir, own)?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(names.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<std::sync::Mutex<Option<Result<WalEntry>>>> =
        names.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= names.len() || failed.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let r = collect_one(sources, &names[i], dest, &waldir, own);
                if r.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                } else {
                    crate::fault::fault("during-wal-collect");
                }
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(names.len());
    for (i, r) in results.into_iter().enumerate() {
        match r.into_inner().ok().flatten() {
            Some(Ok(e)) => out.push(e),
            Some(Err(e)) => return Err(e),
            None if failed.load(std::sync::atomic::Ordering::SeqCst) => continue,
            None => {
                return Err(Error::internal(format!(
                    "WAL file {} was not collected",
                    names[i]
                )))
            }
        }
    }
    if out.len() != names.len() {
        return Err(Error::internal("WAL collection stopped early"));
    }
    fsutil::fsync_dir(&waldir)?;
    Ok(out)
}

/// Where one WAL file is: the first source that holds it plainly or zstd-compressed.
fn find_source(sources: &[PathBuf], name: &str) -> Option<(PathBuf, bool)> {
    sources.iter().find_map(|d| {
        let plain = d.join(name);
        if fs::symlink_metadata(&plain).is_ok_and(|m| m.is_file()) {
            return Some((plain, false));
        }
        let zst = d.join(format!("{name}.zst"));
        fs::symlink_metadata(&zst)
            .is_ok_and(|m| m.is_file())
            .then_some((zst, true))
    })
}

/// The error for a WAL file that no source holds: it names the file and where it looked.
fn gone(sources: &[PathBuf], name: &str) -> Error {
    let places: Vec<String> = sources.iter().map(|d| d.display().to_string()).collect();
    Error::void(format!(
        "WAL file {name} of the backup window is no longer in {}",
        places.join(" nor in ")
    ))
    .hint("was the replication slot dropped, or max_slot_wal_keep_size exceeded? If an archive holds it, pass --archive DIR")
}

/// Compresses one WAL file into the bundle. A segment that the server recycles while it
/// is read (renamed away, then rewritten) is detected: the name must still lead to the
/// same file once read.
fn collect_one(
    sources: &[PathBuf],
    name: &str,
    dest: &Path,
    waldir: &Path,
    own: &Ownership,
) -> Result<WalEntry> {
    use std::os::unix::fs::MetadataExt;
    let (src, compressed) = find_source(sources, name).ok_or_else(|| gone(sources, name))?;
    let file = match fs::File::open(&src) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(gone(sources, name)),
        Err(e) => return Err(io_err("cannot read", &src, e)),
    };
    let ino = file
        .metadata()
        .map_err(|e| io_err("cannot stat", &src, e))?
        .ino();
    let mut input: Box<dyn Read> = if compressed {
        Box::new(
            zstd::stream::read::Decoder::new(file)
                .map_err(|e| io_err("cannot decompress", &src, e))?,
        )
    } else {
        Box::new(file)
    };
    let stored = format!("wal/{name}.zst");
    let final_path = dest.join(&stored);
    let tmp = waldir.join(format!(".{name}.zst.tmp"));
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err("cannot create", &tmp, e))?;
    let mut enc =
        zstd::stream::write::Encoder::new(std::io::BufWriter::with_capacity(1 << 20, f), 3)
            .map_err(|e| io_err("cannot compress into", &tmp, e))?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| io_err("cannot read", &src, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > MAX_WAL_FILE {
            return Err(Error::new(
                crate::error::Class::Check,
                format!(
                    "{} is larger than any WAL segment ({MAX_WAL_FILE} bytes)",
                    src.display()
                ),
            ));
        }
        hash.update(&buf[..n]);
        enc.write_all(&buf[..n])
            .map_err(|e| io_err("cannot write", &tmp, e))?;
    }
    if fs::symlink_metadata(&src).map(|m| m.ino()).ok() != Some(ino) {
        return Err(Error::void(format!(
            "WAL file {name} was recycled by the server while it was read from {}",
            src.display()
        ))
        .hint(
            "the WAL of the window is no longer kept; if an archive holds it, pass --archive DIR",
        ));
    }
    let bw = enc.finish().map_err(|e| io_err("cannot finish", &tmp, e))?;
    let f = bw
        .into_inner()
        .map_err(|e| io_err("cannot write", &tmp, e.into_error()))?;
    own.apply(&tmp, false)?;
    f.sync_all().map_err(|e| io_err("cannot fsync", &tmp, e))?;
    fs::rename(&tmp, &final_path)
        .map_err(|e| io_err("cannot rename into place", &final_path, e))?;
    Ok(WalEntry {
        name: name.to_string(),
        size: Some(size),
        sha256: Some(hex::encode(hash.finalize())),
        stored: Some(stored),
        archived_as: None,
    })
}

/// No WAL file (segment sizes go up to 1 GB) is larger: bounds what a decompression reads.
const MAX_WAL_FILE: u64 = 1 << 30;

/// The suffixes under which common archivers store a WAL file.
pub const ARCHIVE_SUFFIXES: &[&str] = &["", ".zst", ".gz", ".lz4", ".xz", ".bz2", ".zstd"];

/// The name under which `dir` holds `name`, if it does.
pub fn find_in_archive(dir: &Path, name: &str) -> Option<String> {
    ARCHIVE_SUFFIXES
        .iter()
        .map(|s| format!("{name}{s}"))
        .find(|n| dir.join(n).is_file())
}

/// Waits until `dir` holds every named file, up to `timeout`; on time-out names the first
/// file still missing.
pub fn wait_archive_dir(
    dir: &Path,
    names: &[String],
    timeout: Duration,
) -> std::result::Result<Vec<WalEntry>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found: Vec<Option<String>> = names.iter().map(|n| find_in_archive(dir, n)).collect();
        if let Some(i) = found.iter().position(|f| f.is_none()) {
            if Instant::now() >= deadline {
                return Err(names[i].clone());
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        return Ok(names
            .iter()
            .zip(found)
            .map(|(n, f)| WalEntry {
                name: n.clone(),
                size: None,
                sha256: None,
                stored: None,
                archived_as: f,
            })
            .collect());
    }
}

/// Absolute form of `--archive`.
pub fn archive_dir_arg(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::env(format!("cannot resolve --archive: {e}")))?
            .join(p)
    };
    if !abs.is_dir() {
        return Err(
            Error::usage(format!("--archive {}: not a directory", abs.display()))
                .hint("give the directory your archive_command copies WAL into"),
        );
    }
    Ok(abs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_uses_previous_segment_rule_and_timelines() {
        let seg = 16 * 1024 * 1024;
        let none = |_: &str| false;
        // Stop exactly on a segment boundary: the last segment is the previous one.
        let f = window_files(Lsn(0x2000028), Lsn(0x4000000), 1, 1, seg, &none);
        assert_eq!(f, ["000000010000000000000002", "000000010000000000000003"]);
        // A timeline switch inside the window: history file, old names where they exist.
        let exists = |n: &str| n == "000000010000000000000002";
        let f = window_files(Lsn(0x2000028), Lsn(0x3000100), 1, 2, seg, &exists);
        assert_eq!(
            f,
            [
                "00000002.history",
                "000000010000000000000002",
                "000000020000000000000003"
            ]
        );
    }

    #[test]
    fn finds_compressed_archive_forms() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("000000010000000000000002.zst"), b"x").unwrap();
        assert_eq!(
            find_in_archive(d.path(), "000000010000000000000002").as_deref(),
            Some("000000010000000000000002.zst")
        );
        assert_eq!(find_in_archive(d.path(), "000000010000000000000003"), None);
        let names = vec!["000000010000000000000003".to_string()];
        assert_eq!(
            wait_archive_dir(d.path(), &names, Duration::from_millis(300)).unwrap_err(),
            "000000010000000000000003"
        );
    }
}
