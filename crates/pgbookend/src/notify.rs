//! `--on-success CMD` / `--on-failure CMD`: a notification command run after a backup
//! command (stop, run, a failed archive-push) finished, with the report as JSON on its standard input and the
//! essentials in its environment. Bounded by a timeout (the whole process group is killed
//! after it); whatever the command does, it never changes the backup command's exit code.

use serde_json::Value;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Default bound on a notification command (`--notify-timeout`, config `notify_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The commands configured for success and failure, and their time bound.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    pub timeout: Option<Duration>,
}

/// What happened to a backup command, as the notification command is told.
#[derive(Debug)]
pub struct Event<'a> {
    /// The command that finished: `stop`, `run`, `archive-push`.
    pub event: &'a str,
    pub id: Option<&'a str>,
    /// pgbookend's exit code for that command (0: success).
    pub exit_code: i32,
    pub error: Option<String>,
    /// The command's JSON report (what `--json` prints).
    pub report: &'a Value,
}

/// How the notification command ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// None configured for this result.
    NotConfigured,
    /// It ran and exited with this code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// It ran past the timeout; its process group was killed.
    TimedOut(Duration),
    /// It could not be started.
    NotStarted(String),
}

impl Hooks {
    /// Runs the command for `ev`'s result, if one is configured, and waits for it.
    pub fn fire(&self, ev: &Event) -> Outcome {
        let cmd = if ev.exit_code == 0 {
            &self.on_success
        } else {
            &self.on_failure
        };
        match cmd {
            Some(c) if !c.trim().is_empty() => run(c, ev, self.timeout.unwrap_or(DEFAULT_TIMEOUT)),
            _ => Outcome::NotConfigured,
        }
    }
}

fn command(cmd: &str, ev: &Event) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd);
    c.env("PGBOOKEND_EVENT", ev.event)
        .env(
            "PGBOOKEND_STATUS",
            if ev.exit_code != 0 {
                "failure"
            } else if ev.report["skipped"] == true || ev.report["result"] == "skipped" {
                // --only-on on a node of the other role: not a failure, not a backup.
                "skipped"
            } else {
                "success"
            },
        )
        .env("PGBOOKEND_EXIT_CODE", ev.exit_code.to_string())
        .env("PGBOOKEND_ID", ev.id.unwrap_or(""))
        .env("PGBOOKEND_ERROR", ev.error.as_deref().unwrap_or(""));
    // Its output goes to our stderr: stdout may be a JSON report someone parses.
    let out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    c.stdin(Stdio::piped()).stdout(out).stderr(Stdio::inherit());
    // Its own process group, so that a timeout kills everything it started.
    c.process_group(0);
    c
}

fn run(cmd: &str, ev: &Event, timeout: Duration) -> Outcome {
    let mut child = match command(cmd, ev).spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::NotStarted(e.to_string()),
    };
    let mut report = serde_json::to_vec_pretty(ev.report).unwrap_or_default();
    report.push(b'\n');
    if let Some(mut stdin) = child.stdin.take() {
        // A writer thread: a command that never reads its input must not block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&report);
        });
    }
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Outcome::Exited(status.code()),
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let pgid = child.id() as i32;
                // SAFETY: kill(2) on the child's own process group (pgid = its pid).
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                group_gone(pgid, Duration::from_secs(2));
                return Outcome::TimedOut(timeout);
            }
            Err(e) => return Outcome::NotStarted(e.to_string()),
        }
    }
}

/// Waits (bounded) until no process of the killed group is left to signal: SIGKILL is
/// delivered asynchronously, and what the command started must be gone when we return.
/// Orphans that are already dead but not yet reaped (zombies) can still be signalled,
/// hence the bound.
fn group_gone(pgid: i32, bound: Duration) {
    let until = Instant::now() + bound;
    // SAFETY: signal 0 only checks whether the group still has members.
    while unsafe { libc::kill(-pgid, 0) } == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: i32, report: &Value) -> Event<'_> {
        Event {
            event: "stop",
            id: Some("x1"),
            exit_code: code,
            error: None,
            report,
        }
    }

    #[test]
    fn chooses_by_result_and_reports_exit_codes() {
        let r = serde_json::json!({"id": "x1"});
        let h = Hooks {
            on_success: Some("test \"$PGBOOKEND_STATUS\" = success && grep -q x1".into()),
            on_failure: Some("exit 3".into()),
            timeout: None,
        };
        assert_eq!(h.fire(&ev(0, &r)), Outcome::Exited(Some(0)));
        assert_eq!(h.fire(&ev(5, &r)), Outcome::Exited(Some(3)));
        let none = Hooks::default();
        assert_eq!(none.fire(&ev(0, &r)), Outcome::NotConfigured);
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_with_its_group() {
        let r = Value::Null;
        let h = Hooks {
            on_success: Some("sleep 30 & wait".into()),
            on_failure: None,
            timeout: Some(Duration::from_millis(200)),
        };
        assert_eq!(
            h.fire(&ev(0, &r)),
            Outcome::TimedOut(Duration::from_millis(200))
        );
    }
}
