//! Process helpers over /proc: liveness (zombies count as dead), children, signals, PidGuard.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What /proc/<pid>/stat says about one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    /// Start time in clock ticks since boot: with the pid, identifies a process across reuse.
    pub start: u64,
}

/// Reads /proc/<pid>/stat; `None` when the process does not exist.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..." — comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] = state (field 3), fields[1] = ppid (4), fields[19] = starttime (22).
    Some(ProcStat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` runs (a zombie or dead process does not: it holds nothing but its pid).
pub(crate) fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// Whether the process `pid` started at `start` still runs (guards against pid reuse).
pub(crate) fn alive_same(pid: i32, start: u64) -> bool {
    matches!(stat(pid), Some(s) if s.start == start && s.state != 'Z' && s.state != 'X')
}

/// Every process visible in /proc.
pub(crate) fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// Live descendants of `pid` (children first level first), excluding `pid` itself.
pub(crate) fn descendants(pid: i32) -> Vec<ProcStat> {
    let all = all_processes();
    let mut out: Vec<ProcStat> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in all.iter().filter(|p| p.ppid == parent && p.pid != pid) {
            if p.state != 'Z' && p.state != 'X' && !out.iter().any(|o| o.pid == p.pid) {
                out.push(*p);
                frontier.push(p.pid);
            }
        }
    }
    out
}

/// Sends `sig` to `pid`; refuses pids that would address a group or ourselves.
pub(crate) fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: getpid has no preconditions.
    if pid <= 1 || pid == unsafe { libc::getpid() } {
        return false;
    }
    // SAFETY: kill with a positive pid signals exactly that process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Polls until `pid` is gone (or a zombie); true if it went within `timeout`.
pub(crate) fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The command line of `pid`, split at NULs.
pub(crate) fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The working directory of `pid` (a postmaster and its children run in their data dir).
pub(crate) fn cwd(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The executable name (`comm`) of `pid`.
pub(crate) fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The data directory a postgres process was started with (`-D dir` or `-Ddir`).
pub(crate) fn dash_d(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-D" {
            return it.next().map(PathBuf::from);
        }
        if let Some(d) = a.strip_prefix("-D") {
            return Some(PathBuf::from(d));
        }
    }
    None
}

/// Whether `pid` is a postmaster of `pgdata` (by its `-D` argument or its working directory).
pub(crate) fn is_postmaster_of(pid: i32, pgdata: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let canon = std::fs::canonicalize(pgdata).ok();
    let same = |p: &Path| p == pgdata || canon.as_deref() == Some(p);
    if let Some(d) = dash_d(&cmdline(pid)) {
        if same(&d) {
            return true;
        }
    }
    cwd(pid).is_some_and(|c| same(&c))
}

/// SIGKILLs `pid` and all its descendants when dropped, for agents and other background
/// processes a test starts: a failing test must not leave them running. A pid of 0 or less
/// (set `.0 = 0` to disarm) does nothing.
#[derive(Debug)]
pub struct PidGuard(pub i32);

impl PidGuard {
    /// Kills the tree now (same as dropping), for tests that want to kill mid-way.
    pub fn kill(&mut self) {
        let pid = std::mem::replace(&mut self.0, 0);
        kill_tree(pid);
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILLs `pid` and its descendants and waits (bounded) until they are gone.
pub(crate) fn kill_tree(pid: i32) {
    let Some(root) = stat(pid).filter(|_| alive(pid)) else {
        return;
    };
    let tree = descendants(pid);
    // Stop the root first so it cannot fork more while we kill its children.
    signal(root.pid, libc::SIGSTOP);
    for p in std::iter::once(&root).chain(tree.iter()) {
        if alive_same(p.pid, p.start) {
            signal(p.pid, libc::SIGKILL);
        }
    }
    for p in std::iter::once(&root).chain(tree.iter()) {
        wait_gone(p.pid, Duration::from_secs(2));
    }
}
