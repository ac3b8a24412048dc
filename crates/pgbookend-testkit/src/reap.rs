//! Final sweep: kills servers and removes harness directories left behind by test processes that died without running Drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::procfs::{self, all_processes, signal};
use crate::tempdir::{owner_pid, remove_tree};
use crate::{tmp_roots, DIR_PREFIX};

/// The hidden subcommands of pgbookend's detached workers (`archive::prefetch` and
/// `archive::spool`): such a process whose working directory is in a harness directory
/// is reaped with it.
const WORKERS: [&str; 2] = ["__archive-prefetch", "__archive-pusher"];

/// What [`reap_leftovers`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Postgres processes that were SIGKILLed.
    pub killed: Vec<i32>,
    /// Harness directories that were removed.
    pub removed: Vec<PathBuf>,
}

/// Cleans up after test processes that were killed (timeouts, SIGKILL, abort) and so could not
/// run their Drops: kills postgres processes (and pgbookend's detached archive workers) whose data dir (`-D` argument or working dir) is
/// in a `pgbookend-test.*` directory (in /tmp, /dev/shm or [`crate::tmp_root`]) whose owning test process no longer runs, then removes
/// those directories (and the template cache, unless a test process is active). Directories
/// of live test processes are left alone, so it is safe while other suites run; meant for CI's
/// final sweep.
pub fn reap_leftovers() -> Reaped {
    // The template cache is removed only when no test process is active, so that no copy of a
    // template is under way; it is rebuilt on demand anyway.
    let mut active = false;
    reap_where(|_, owner| {
        if owner.is_some_and(procfs::alive) {
            active = true;
        }
        false
    });
    reap_where(|dir, owner| match owner {
        Some(pid) => !procfs::alive(pid),
        None => !active || !is_template(dir),
    })
}

fn is_template(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{DIR_PREFIX}tpl-")))
}

/// Reaps the harness directories for which `pick(dir, owner pid)` is true.
pub(crate) fn reap_where(mut pick: impl FnMut(&Path, Option<i32>) -> bool) -> Reaped {
    let mut dirs = Vec::new();
    for root in tmp_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(DIR_PREFIX) {
                continue;
            }
            let path = e.path();
            let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if is_dir && pick(&path, owner_pid(name)) {
                dirs.push(path);
            }
        }
    }
    let mut reaped = Reaped::default();
    if dirs.is_empty() {
        return reaped;
    }
    let inside = |p: &Path| dirs.iter().any(|d| p.starts_with(d));
    let mut victims = Vec::new();
    for p in all_processes() {
        // postgres servers, the S3 servers of tests (moto_server, run from a harness dir),
        // and pgbookend's detached workers (the archive-get prefetch worker and the
        // archive-push --async pusher, which run in the data directory they serve).
        let comm = procfs::comm(p.pid);
        let worker = comm.as_deref() == Some("pgbookend")
            && procfs::cmdline(p.pid)
                .iter()
                .any(|a| WORKERS.contains(&a.as_str()));
        if p.state == 'Z'
            || p.state == 'X'
            || !(worker || matches!(comm.as_deref(), Some("postgres") | Some("moto_server")))
        {
            continue;
        }
        let by_arg = procfs::dash_d(&procfs::cmdline(p.pid)).is_some_and(|d| inside(&d));
        let by_cwd = procfs::cwd(p.pid).is_some_and(|d| inside(&d));
        if by_arg || by_cwd {
            victims.push(p);
        }
    }
    for v in &victims {
        if procfs::alive_same(v.pid, v.start) && signal(v.pid, libc::SIGKILL) {
            reaped.killed.push(v.pid);
        }
    }
    for v in &victims {
        procfs::wait_gone(v.pid, Duration::from_secs(5));
    }
    for d in dirs {
        for pgdata in data_dirs_in(&d, 3) {
            crate::shmem::cleanup_stale(&pgdata);
        }
        unmount_below(&d);
        // Rename first (atomic), so a concurrent copy of a template notices it lost its source;
        // the new name still carries the prefix (and no live owner) if we die half-way.
        let trash = d.with_file_name(format!(
            "{DIR_PREFIX}reaping.{}.{}",
            std::process::id(),
            first_name(
                &d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        ));
        let doomed = if std::fs::rename(&d, &trash).is_ok() {
            trash
        } else {
            d.clone()
        };
        remove_tree(&doomed);
        if std::fs::symlink_metadata(&d).is_err() && std::fs::symlink_metadata(&doomed).is_err() {
            reaped.removed.push(d);
        }
    }
    reaped
}

/// The name a harness directory had before earlier sweeps renamed it (each prepends
/// `reaping.<pid>.`): a directory that cannot be removed keeps one such prefix, not one
/// per sweep.
fn first_name(name: &str) -> &str {
    let again = format!("{DIR_PREFIX}reaping.");
    let mut n = name;
    while let Some((_, rest)) = n
        .strip_prefix(again.as_str())
        .and_then(|r| r.split_once('.'))
    {
        n = rest;
    }
    n
}

/// Detaches every mount at or below `dir`, deepest first: a test killed while a mount was
/// up (`drill`'s overlay of a data directory, a loop file system) leaves it behind, and
/// removing the directory through it would delete what it shows, or fail. Best effort
/// (it takes root, as making the mount did).
fn unmount_below(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: a NUL-terminated path; MNT_DETACH only detaches that mount.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A mount point as `/proc/self/mountinfo` writes it (space, tab, newline and backslash
/// as three octal digits after a backslash).
fn unescape_mount_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Directories up to `depth` levels below `dir` (itself included) holding a postmaster.pid.
fn data_dirs_in(dir: &Path, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if dir.join("postmaster.pid").is_file() {
        out.push(dir.to_path_buf());
    }
    if depth > 0 {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.extend(data_dirs_in(&e.path(), depth - 1));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{majors, Cluster, ClusterOptions};

    /// A mount left under a dead test's directory is detached before the directory goes
    /// (what the mount shows is not deleted), and a name keeps one `reaping.` prefix.
    #[test]
    fn unmounts_what_a_dead_test_left() {
        assert_eq!(
            first_name("pgbookend-test.reaping.12.pgbookend-test.reaping.3.pgbookend-test.9.x.Ab"),
            "pgbookend-test.9.x.Ab"
        );
        assert_eq!(first_name("pgbookend-test.9.x.Ab"), "pgbookend-test.9.x.Ab");
        assert_eq!(
            unescape_mount_path("/a\\040b\\134c"),
            PathBuf::from("/a b\\c")
        );
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let base = crate::tempdir::make_dir("mnt").unwrap();
        let kept = crate::tempdir::make_dir("kept").unwrap();
        std::fs::write(kept.join("precious"), b"x").unwrap();
        let at = base.join("deep/mnt");
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["--bind"])
            .arg(&kept)
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            remove_tree(&base);
            remove_tree(&kept);
            return;
        }
        let mounted = |p: &Path| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .any(|l| {
                    l.split(' ')
                        .nth(4)
                        .map(unescape_mount_path)
                        .is_some_and(|m| m.starts_with(p))
                })
        };
        assert!(mounted(&base));
        let reaped = reap_where(|d, _| d == base);
        assert_eq!(reaped.removed, vec![base.clone()], "{reaped:?}");
        assert!(!base.exists());
        assert!(!mounted(&base));
        assert!(
            kept.join("precious").exists(),
            "what the mount showed was deleted"
        );
        remove_tree(&kept);
    }

    #[test]
    fn reaps_a_forgotten_cluster() {
        let Some(&major) = majors().first() else {
            return;
        };
        let c = Cluster::start(ClusterOptions::new(major));
        let base = c.base().to_path_buf();
        let pid = c.postmaster_pid().expect("running");
        let kids = procfs::descendants(pid);
        assert!(!kids.is_empty());
        let pidfile = std::fs::read_to_string(c.pgdata().join("postmaster.pid")).unwrap();
        let shmid: libc::c_int = pidfile
            .lines()
            .nth(6)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        // As if the test process had been killed: no Drop runs.
        std::mem::forget(c);
        let reaped = reap_where(|d, _| d == base);
        assert!(reaped.killed.contains(&pid), "{reaped:?}");
        assert_eq!(reaped.removed, vec![base.clone()]);
        assert!(!procfs::alive(pid));
        for k in kids {
            assert!(
                !procfs::alive_same(k.pid, k.start),
                "child {} survived",
                k.pid
            );
        }
        assert!(!base.exists());
        // SAFETY: shmid_ds is plain old data; IPC_STAT fills it.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer.
        let exists = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } == 0;
        assert!(!exists, "shared memory of the reaped server leaked");
    }

    /// A process named pgbookend running a worker subcommand in a harness directory is
    /// killed with it (a shell run through a link named `pgbookend`, blocked in `read`, stands in for a
    /// pusher); its siblings of other names are not the reaper's business.
    #[test]
    fn reaps_a_forgotten_worker() {
        let dir = crate::temp_dir("worker");
        let base = dir.path().to_path_buf();
        let exe = base.join("pgbookend");
        // A link, not a copy: exec'ing a file this process just wrote can fail with
        // ETXTBSY while another test thread forks (the write descriptor is briefly shared).
        std::os::unix::fs::symlink("/bin/sh", &exe).unwrap();
        let mut child = std::process::Command::new(&exe)
            .args(["-c", "read x", "__archive-pusher"])
            .current_dir(&base)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // As if the test process had been killed: no Drop runs.
        std::mem::forget(dir);
        // spawn returns once the exec has replaced the memory, a moment before the
        // kernel sets the new name: wait for it.
        for _ in 0..500 {
            if procfs::comm(pid).as_deref() == Some("pgbookend") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let reaped = reap_where(|d, _| d == base);
        assert!(reaped.killed.contains(&pid), "{reaped:?}");
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(!base.exists());
    }

    #[test]
    fn owner_pid_parsing() {
        assert_eq!(owner_pid("pgbookend-test.123.c13.AbCdEf"), Some(123));
        assert_eq!(owner_pid("pgbookend-test.tpl-13-ck-u0-0123"), None);
        assert_eq!(owner_pid("pgbookend-test.Ab12Cd"), None);
    }
}
