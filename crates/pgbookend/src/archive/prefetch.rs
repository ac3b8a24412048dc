//! Prefetch for `archive-get`: recovery asks for one segment at a time and waits for
//! each. With `archive_get_prefetch = N` (or `--prefetch N`), every `archive-get` of a
//! segment makes sure a background worker fetches the next N segments of its timeline
//! into a spool beside `%p` (`pg_wal/pgbookend-prefetch`) while the server replays, so
//! that the next `archive-get` only renames its segment into place.
//!
//! The worker is the same command line run again as [`WORKER_SUBCOMMAND`], detached in its
//! own process group; one runs per spool at a time (an advisory lock), and it exits when
//! it has caught up with the newest request. A spooled segment got its final name
//! (`NAME-SHA256`) only after it was unpacked, hashed and size-checked against the
//! archive, exactly as a direct fetch. The spool is a 0700 directory inside the data
//! directory, as private as `pg_wal` itself: taking a file from it checks its name, kind
//! and size (never following a link), not its hash again. When the archive has no next
//! segment (recovery is ending) the spool is removed; it is safe to delete at any time.
//!
//! Spooled files are not fsynced: their names end with the machine's boot ID
//! (`NAME-SHA256.BOOT`), and a file spooled before the last restart of the operating
//! system, whose bytes may not have reached the disk, is never taken. Where the boot ID
//! cannot be read, files are fsynced and named `NAME-SHA256`.

use super::{cluster_id, get, ClusterId, Settings};
use crate::fsutil::{self, Dir};
use pgbookend_formats::wal;
use pgbookend_formats::walname::{WalKind, WalName};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The spool's name in the directory of `%p`.
pub const SPOOL: &str = "pgbookend-prefetch";
/// The hidden subcommand of the worker `archive-get` starts: the same arguments, never
/// an environment flag (one leaking into the server's environment would turn every
/// `archive-get` into a worker that restores nothing and exits 0).
pub const WORKER_SUBCOMMAND: &str = "__archive-prefetch";
/// The most segments fetched ahead (1 GiB of 16 MiB segments).
pub const MAX_AHEAD: u32 = 64;
/// The most parallel fetches of the worker.
pub const MAX_JOBS: usize = 16;
/// The newest request (`want`): a segment name, or [`END`].
const WANT: &str = "want";
const LOCK: &str = "lock";
/// What `want` says once the archive had no next segment.
const END: &str = "end";

/// The spool of one `pg_wal`.
pub struct Spool {
    dir: Dir,
}

impl Spool {
    /// Opens (creating) the spool in `parent`; `None` when prefetch is off, `name` is not
    /// a whole segment, or the spool cannot be used (a link there is never followed).
    pub fn open(parent: &Dir, ahead: u32, name: &WalName) -> Option<Spool> {
        if ahead == 0 || name.kind() != WalKind::Segment {
            return None;
        }
        match parent.mkdir(SPOOL, 0o700) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        parent.open_dir(SPOOL).ok().map(|dir| Spool { dir })
    }

    /// The spool already in `parent`, if any (never created, a link never followed).
    pub fn existing(parent: &Dir) -> Option<Spool> {
        parent.open_dir(SPOOL).ok().map(|dir| Spool { dir })
    }

    /// Moves a prefetched copy of `name` to `file` in `dest` and says what it was; `None`
    /// when the spool has no complete copy of this boot.
    pub fn take(
        &self,
        name: &WalName,
        id: &ClusterId,
        dest: &Dir,
        file: &str,
    ) -> crate::error::Result<Option<get::Report>> {
        let Some((entry, sha)) = self.find(name) else {
            return Ok(None);
        };
        if !self.move_checked(&entry, id.seg_size, dest, file) {
            let _ = self.dir.unlink(&entry);
            return Ok(None);
        }
        Ok(Some(get::Report {
            name: name.to_string(),
            object: self.dir.display_path(&entry).display().to_string(),
            sha256: sha,
            size: u64::from(id.seg_size),
            skipped: Vec::new(),
            prefetched: true,
        }))
    }

    /// Renames `entry` to `file` in `dest` if it is a regular file of one segment that
    /// only the spool names (one link) and that this user owns, opened without following
    /// a link; after the rename `file` must still be that same file, else it is removed
    /// again (an entry swapped between the check and the rename is never left at `%p`).
    fn move_checked(&self, entry: &str, seg_size: u32, dest: &Dir, file: &str) -> bool {
        let Ok(f) = self.dir.open_file(entry) else {
            return false;
        };
        let Ok(st) = fsutil::fstat(f.as_raw_fd()) else {
            return false;
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let whole = fsutil::kind(&st) == libc::S_IFREG
            && st.st_size as u64 == u64::from(seg_size)
            && st.st_nlink == 1
            && st.st_uid == me;
        if !whole || self.dir.rename(entry, dest, file).is_err() {
            return false;
        }
        let same = dest.lstat(file).is_ok_and(|now| {
            fsutil::kind(&now) == libc::S_IFREG
                && now.st_dev == st.st_dev
                && now.st_ino == st.st_ino
                && now.st_nlink == 1
        });
        if !same {
            let _ = dest.unlink(file);
        }
        same
    }

    /// The spooled copy of `name` that this boot may take: its entry and SHA-256.
    fn find(&self, name: &WalName) -> Option<(String, String)> {
        let prefix = format!("{name}-");
        self.names().into_iter().find_map(|e| {
            e.strip_prefix(&prefix)?;
            let sha = entry_sha(&e)?.to_string();
            Some((e, sha))
        })
    }

    /// The entry names that are valid UTF-8 (anything else is not ours).
    fn names(&self) -> Vec<String> {
        self.dir
            .entries()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| e.into_string().ok())
            .collect()
    }

    /// Records `name` as the newest request, drops spooled segments up to it, and starts
    /// the worker unless one runs. Best effort: prefetch only ever saves time. The request
    /// is written before the worker's lock is tried, and a worker that holds the lock
    /// reads the request again after releasing it, so a request is never left without a
    /// worker; when a finishing worker removed the spool meanwhile, it is made again in
    /// `parent`.
    pub fn kick(&self, parent: &Dir, name: &WalName) {
        if !self.want(name.as_str()) {
            if let Some(again) = Spool::open(parent, 1, name) {
                if again.want(name.as_str()) && again.try_lock().is_some() {
                    let _ = super::spawn_detached("archive-get", WORKER_SUBCOMMAND);
                }
            }
            return;
        }
        for e in self.names() {
            let seg = e.get(..wal::FILE_NAME_LEN).unwrap_or("");
            if !e.starts_with('.') && e != WANT && e != LOCK && seg <= name.as_str() {
                let _ = self.dir.unlink(&e);
            }
        }
        if self.try_lock().is_some() {
            let _ = super::spawn_detached("archive-get", WORKER_SUBCOMMAND);
        }
    }

    /// Whether the spool holds the segment of `name` on another timeline. Then a missing
    /// `name` is the server probing a newer timeline for a segment that the archive has
    /// on an older one (the worker stops at the first segment the archive lacks), not the
    /// end of the archive: the spool is kept for the request that follows.
    pub fn holds_elsewhere(&self, name: &WalName, seg_size: u32) -> bool {
        let Some(segno) = name.segno(seg_size) else {
            return false;
        };
        self.names().iter().any(|e| {
            e.get(..wal::FILE_NAME_LEN)
                .filter(|_| entry_sha(e).is_some())
                .and_then(|n| wal::parse_file_name(n, seg_size))
                .is_some_and(|(tli, no)| no == segno && tli != name.timeline())
        })
    }

    /// The archive has no segment `name`: recovery is ending (or waiting for more). The
    /// spool is removed now if no worker runs, else by the worker when it sees this.
    pub fn end(&self, parent: &Dir) {
        self.want(END);
        if let Some(lock) = self.try_lock() {
            self.clear(parent);
            drop(lock);
        }
    }

    /// Writes the request `what`; false when it could not (the spool was removed).
    fn want(&self, what: &str) -> bool {
        let tmp = fsutil::temp_name(WANT.as_ref());
        let ok = self
            .dir
            .create_file(&tmp, 0o600)
            .and_then(|mut f| f.write_all(what.as_bytes()));
        if ok.is_err() || self.dir.rename(&tmp, &self.dir, WANT).is_err() {
            let _ = self.dir.unlink(&tmp);
            return false;
        }
        true
    }

    fn read_want(&self) -> Option<String> {
        let mut s = String::new();
        self.dir
            .open_file(WANT)
            .ok()?
            .take(wal::FILE_NAME_LEN as u64 + 1)
            .read_to_string(&mut s)
            .ok()?;
        Some(s)
    }

    /// The worker's lock, if nobody holds it (released when dropped).
    fn try_lock(&self) -> Option<std::fs::File> {
        super::try_flock(&self.dir, LOCK)
    }

    /// Removes the spool when it holds no segment (the archive had nothing ahead), so that
    /// the end of recovery leaves nothing behind; a later request makes it again. Returns
    /// false when a request newer than `served` arrived meanwhile (then the worker must go
    /// on): the request is moved aside and checked under the lock, a `want` written
    /// after that (or its temporary file) is never removed, and it keeps the spool's
    /// directory from being removed.
    fn remove_if_empty(&self, parent: &Dir, served: &str) -> bool {
        let idle = |s: &Spool| {
            s.names()
                .iter()
                .all(|e| e == WANT || e == LOCK || e.starts_with('.'))
        };
        if !idle(self) {
            return true;
        }
        let Some(lock) = self.try_lock() else {
            return true;
        };
        let aside = ".served";
        let moved = self.dir.rename(WANT, &self.dir, aside).is_ok();
        let mut what = String::new();
        if moved {
            let _ = self.dir.open_file(aside).map(|f| {
                f.take(wal::FILE_NAME_LEN as u64 + 1)
                    .read_to_string(&mut what)
            });
        }
        if (moved && what != served) || !idle(self) {
            // A newer request (or a segment) came in: put the request back unless an even
            // newer one exists, and go on.
            if moved && self.dir.rename_noreplace(aside, WANT).is_err() {
                let _ = self.dir.unlink(aside);
            }
            drop(lock);
            return false;
        }
        let request_pending = |e: &String| e == WANT || e.starts_with(".want.");
        for e in self.names() {
            if !request_pending(&e) {
                let _ = self.dir.unlink(&e);
            }
        }
        let removed = parent.rmdir(SPOOL).is_ok();
        drop(lock);
        removed || !self.names().iter().any(request_pending)
    }

    /// Removes everything in the spool, then the spool itself.
    fn clear(&self, parent: &Dir) {
        for e in self.dir.entries().unwrap_or_default() {
            let _ = self.dir.unlink(&e);
        }
        let _ = parent.rmdir(SPOOL);
    }
}

/// The SHA-256 of a spooled segment's entry name, if it is one that this boot may take:
/// `NAME-SHA256.BOOT` with the current boot ID, or `NAME-SHA256` (fsynced).
fn entry_sha(entry: &str) -> Option<&str> {
    let rest = entry.get(wal::FILE_NAME_LEN..)?.strip_prefix('-')?;
    let sha = match rest.split_once('.') {
        Some((sha, boot)) if Some(boot) == boot_tag() => sha,
        Some(_) => return None,
        None => rest,
    };
    is_sha(sha).then_some(sha)
}

/// The boot ID of the running system without its dashes (`None` where it cannot be read).
fn boot_tag() -> Option<&'static str> {
    static TAG: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let tag: String = id.trim().chars().filter(|c| *c != '-').collect();
        (tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tag)
    })
    .as_deref()
}

/// The spool entry of `name` with content `sha` (see [`entry_sha`]), and whether it must
/// be fsynced.
fn entry_name(name: &WalName, sha: &str) -> (String, bool) {
    match boot_tag() {
        Some(boot) => (format!("{name}-{sha}.{boot}"), false),
        None => (format!("{name}-{sha}"), true),
    }
}

fn is_sha(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The worker: while the newest request moves, fetches the segments after it into the
/// spool, `jobs` at a time, stopping at the first one the archive does not have.
pub fn work(s: &Settings, dest: &str) {
    super::bound_heap();
    let Some((parent, spool)) = open_for_worker(s, dest) else {
        return;
    };
    let Ok(id) = cluster_id(&s.pgdata) else {
        return;
    };
    let mut served = String::new();
    // Waits for a request being written, at most about a second in a row (a temporary
    // file left by a process that died while writing it is not waited for longer).
    let mut landing = 0;
    for _ in 0..100_000 {
        let Some(lock) = spool.try_lock() else {
            return;
        };
        while let Some(want) = spool.read_want().filter(|w| *w != served) {
            if want == END {
                spool.clear(&parent);
                return;
            }
            let Ok(name) = WalName::parse(&want) else {
                return;
            };
            fetch_ahead(s, &id, &spool, &name);
            served = want;
            landing = 0;
        }
        drop(lock);
        // A request written while the lock was about to be released has no other worker.
        if spool.read_want().is_none_or(|w| w == served) {
            if spool.remove_if_empty(&parent, &served) || landing >= 200 {
                return;
            }
            // A request is being written: let it land, then serve it.
            landing += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
            continue;
        }
    }
}

fn open_for_worker(s: &Settings, dest: &str) -> Option<(Dir, Spool)> {
    let (rel, _) = get::dest_in(&s.pgdata, dest).ok()?;
    let parent = Dir::open_follow(&s.pgdata.join(&rel)).ok()?;
    let dir = parent.open_dir(SPOOL).ok()?;
    Some((parent, Spool { dir }))
}

/// Fetches the `s.prefetch` segments after `name` that the spool lacks.
fn fetch_ahead(s: &Settings, id: &ClusterId, spool: &Spool, name: &WalName) {
    let Some(segno) = name.segno(id.seg_size) else {
        return;
    };
    let names: Vec<WalName> = (1..=u64::from(s.prefetch.min(MAX_AHEAD)))
        .map(|k| wal::file_name(name.timeline(), segno + k, id.seg_size))
        .filter_map(|n| WalName::parse(&n).ok())
        .filter(|n| spool.find(n).is_none())
        .collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicUsize::new(usize::MAX);
    let jobs = s.prefetch_jobs.clamp(1, MAX_JOBS).min(names.len().max(1));
    std::thread::scope(|sc| {
        for _ in 0..jobs {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= names.len() || i > stop.load(Ordering::SeqCst) {
                    return;
                }
                let n = &names[i];
                let mode = get::Mode {
                    durable: entry_name(n, "").1,
                    apart: false,
                };
                let got = get::fetch_any(s, id, n, &spool.dir, &|sha| entry_name(n, sha).0, mode);
                if !matches!(got, Ok(get::Fetched::Restored(_))) {
                    stop.fetch_min(i, Ordering::SeqCst);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spooled file of another boot is never taken; one of this boot, or an fsynced one
    /// without a boot ID, is.
    #[test]
    fn entries_of_another_boot_are_not_taken() {
        let boot = boot_tag().expect("this system has a boot ID");
        let name = WalName::parse("000000010000000000000002").unwrap();
        let sha = "ab".repeat(32);
        let (entry, durable) = entry_name(&name, &sha);
        assert!(!durable);
        assert_eq!(entry, format!("{name}-{sha}.{boot}"));
        assert_eq!(entry_sha(&entry), Some(sha.as_str()));
        assert_eq!(entry_sha(&format!("{name}-{sha}")), Some(sha.as_str()));
        let other = if boot.starts_with('0') { "1" } else { "0" }.repeat(32);
        assert_eq!(entry_sha(&format!("{name}-{sha}.{other}")), None);
        assert_eq!(entry_sha(&format!("{name}-{sha}.")), None);
        assert_eq!(entry_sha(&format!("{name}-{}.{boot}", &sha[1..])), None);
    }
}
