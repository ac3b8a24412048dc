//! `run`: one whole backup around a copy command. `start`; COMMAND with the backup's facts
//! in its environment; `stop` if it exits 0, `abort` if it fails, is killed, or `run` is
//! interrupted; then `--then CMD` (typically the same program backing up the bundle).
//!
//! The child processes run in their own process group, so that a signal meant for them
//! reaches a whole shell pipeline, and `run` hands them the terminal when it has one (a
//! password prompt still works). SIGINT, SIGTERM and SIGHUP sent to `run` are passed on to
//! that group and end in an abort. While COMMAND runs, `run` watches the agent: if the
//! backup becomes void (session lost, aborted from elsewhere), COMMAND is terminated at
//! once instead of finishing a copy that can never be restored.
//!
//! Environment of COMMAND: `PGBOOKEND_ID`, `PGBOOKEND_PGDATA`, `PGBOOKEND_TABLESPACES`
//! (newline-separated directories), `PGBOOKEND_START_LSN`, `PGBOOKEND_STORE`
//! (newline-separated stores), `PGBOOKEND_RUN_DIR`; `--then` also gets
//! `PGBOOKEND_BUNDLE` (the bundle directory in the first local store) and
//! `PGBOOKEND_STOP_LSN`.

use crate::agent::rundir::{Entry, RunDir};
use crate::agent::serve::Ready;
use crate::agent::state::{Phase, StopReport};
use crate::commands::{self, StartOptions};
use crate::config::Config;
use crate::error::{Class, Error, Result};
use crate::output::Output;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What `run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub start: StartOptions,
    /// COMMAND and its arguments (run directly, not through a shell).
    pub command: Vec<OsString>,
    /// `--then CMD`, run with `sh -c` after a successful stop.
    pub then: Option<String>,
    /// `--wait-archive` / `--no-wait-archive` for the stop.
    pub wait_archive: Option<bool>,
    /// `--archive-timeout` for the stop.
    pub archive_timeout: Option<String>,
    /// `--json`: COMMAND's stdout goes to stderr, so that stdout holds one JSON document.
    pub json: bool,
}

/// What `run` did: the report to print and the exit code, which is COMMAND's (or
/// `--then`'s) own when that failed, and pgbookend's otherwise.
pub struct RunOutcome {
    pub output: Output,
    pub code: i32,
}

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Signals still to be passed on to the child's process group (bit n: signal n).
static PENDING: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_code }
    };
    // A terminal's ^C or hangup (sent by the kernel to the foreground process group) has
    // already reached the child, which holds the terminal; anything else is passed on.
    if code != libc::SI_KERNEL && (0..64).contains(&sig) {
        PENDING.fetch_or(1u64 << sig, Ordering::SeqCst);
    }
}

/// The signals `run` catches and passes on.
const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn install_signals() {
    for sig in FORWARDED {
        // SAFETY: a plain sigaction with a handler that only touches atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        n => format!("signal {n}"),
    }
}

/// How a child process ended.
#[derive(Debug, Clone, Copy)]
struct Ended {
    status: ExitStatus,
    /// The signal `run` received while the child ran, if any.
    interrupted: Option<i32>,
    /// The backup became void while the child ran, and the child was terminated.
    void: bool,
    seconds: f64,
}

impl Ended {
    /// The exit code a shell would report: the code, or 128 + the signal.
    fn code(&self) -> i32 {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 1,
        }
    }
    fn describe(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exited with {c}"),
            (None, Some(s)) => format!("was killed by {}", signal_name(s)),
            _ => "ended".into(),
        }
    }
    fn json(&self) -> Value {
        json!({
            "exit_code": self.status.code(),
            "signal": self.status.signal(),
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
        })
    }
}

/// The terminal, if `run` owns its foreground: then the child is given it for its run.
struct Terminal {
    file: std::fs::File,
    our_pgrp: libc::pid_t,
}

impl Terminal {
    fn foreground() -> Option<Terminal> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        // SAFETY: plain calls on a valid descriptor.
        let (fg, ours) = unsafe { (libc::tcgetpgrp(file.as_raw_fd()), libc::getpgrp()) };
        (fg == ours).then_some(Terminal {
            file,
            our_pgrp: ours,
        })
    }

    /// Makes `pgrp` the terminal's foreground process group (SIGTTOU blocked: `run` may be
    /// in the background by then).
    fn give(&self, pgrp: libc::pid_t) {
        // SAFETY: sigprocmask and tcsetpgrp on valid arguments.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTTOU);
            libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
            libc::tcsetpgrp(self.file.as_raw_fd(), pgrp);
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
    }

    fn take_back(&self) {
        self.give(self.our_pgrp);
    }
}

/// Spawns `cmd` in a process group of its own (given the terminal when `run` has it), and
/// tied to `run`: if `run` dies, the child gets SIGTERM.
fn spawn_group(cmd: &mut Command, tty: Option<&Terminal>) -> std::io::Result<Child> {
    let tty_fd = tty.map(|t| t.file.as_raw_fd()).unwrap_or(-1);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            if tty_fd >= 0 {
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(tty_fd, libc::getpid());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    // SAFETY: the same calls from the parent side, closing the race with exec.
    unsafe {
        libc::setpgid(pid, pid);
    }
    if let Some(t) = tty {
        t.give(pid);
    }
    Ok(child)
}

/// Sends `sig` to the child's process group (and to the child, should it have left it).
fn signal_group(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill with a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(-pid, sig);
        libc::kill(pid, sig);
    }
}

/// Waits for the child, passing signals on; with `watch`, terminates it when the backup
/// becomes void (its agent is gone before we stopped it).
fn wait_child(
    mut child: Child,
    tty: Option<&Terminal>,
    watch: Option<&Entry>,
    t0: Instant,
) -> Result<Ended> {
    let pid = child.id() as libc::pid_t;
    let mut interrupted = None;
    let mut void = false;
    let mut next_watch = Instant::now() + Duration::from_millis(500);
    let mut term_sent: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(Error::internal(format!("cannot wait for COMMAND: {e}"))),
        }
        let sig = RECEIVED.load(Ordering::SeqCst);
        if sig != 0 && interrupted.is_none() {
            interrupted = Some(sig);
        }
        let pending = PENDING.swap(0, Ordering::SeqCst);
        for s in FORWARDED {
            if pending & (1u64 << s) != 0 {
                signal_group(pid, s);
            }
        }
        if let Some(entry) = watch {
            if !void && Instant::now() >= next_watch {
                next_watch = Instant::now() + Duration::from_millis(500);
                if !entry.agent_alive() {
                    void = true;
                    eprintln!(
                        "pgbookend: backup {} became void while the copy ran; terminating COMMAND",
                        entry.id
                    );
                    signal_group(pid, libc::SIGTERM);
                    term_sent = Some(Instant::now());
                }
            }
        }
        if let Some(at) = term_sent {
            if at.elapsed() > Duration::from_secs(30) {
                signal_group(pid, libc::SIGKILL);
                term_sent = None;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(t) = tty {
        t.take_back();
    }
    if interrupted.is_none() {
        let sig = RECEIVED.load(Ordering::SeqCst);
        if sig != 0 {
            interrupted = Some(sig);
        }
    }
    Ok(Ended {
        status,
        interrupted,
        void,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn show_command(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The environment every child of `run` gets.
fn backup_env(cmd: &mut Command, ready: &Ready, run: &RunDir) {
    cmd.env("PGBOOKEND_ID", &ready.id)
        .env("PGBOOKEND_PGDATA", &ready.pgdata)
        .env("PGBOOKEND_TABLESPACES", ready.tablespaces.join("\n"))
        .env("PGBOOKEND_START_LSN", &ready.start_lsn)
        .env("PGBOOKEND_STORE", ready.stores.join("\n"))
        .env("PGBOOKEND_RUN_DIR", &run.root);
}

/// `run` on a node of the wrong role (`--only-on`): COMMAND never runs; exit 0.
fn skipped(skip: &crate::ha::Skip, opts: &RunOptions) -> RunOutcome {
    let start = crate::ha::output(skip, "start");
    let report = json!({
        "id": skip.id,
        "result": "skipped",
        "start": start.json,
        "command": {
            "argv": opts.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
            "ran": false, "exit_code": null, "seconds": null, "signal": null,
        },
    });
    RunOutcome {
        output: Output {
            json: report,
            human: format!("{}COMMAND not run\n", start.human),
            error: None,
        },
        code: 0,
    }
}

/// `run`: start, COMMAND, stop or abort, `--then`.
pub fn run(rd: &RunDir, cfg: &Config, opts: RunOptions) -> Result<RunOutcome> {
    if opts.command.is_empty() {
        return Err(Error::usage("run needs a COMMAND after --")
            .hint("pgbookend run [start options] -- COMMAND [ARG]..."));
    }
    install_signals();
    // Everything that can fail before COMMAND runs is done before the backup starts.
    let (cmd_stdout, then_stdout) = if opts.json {
        (Some(stderr_dup()?), Some(stderr_dup()?))
    } else {
        (None, None)
    };
    let commands::Started {
        ready,
        output: started,
    } = match commands::start_backup(rd, cfg, opts.start.clone())? {
        commands::Begun::Started(s) => *s,
        commands::Begun::Skipped(skip) => return Ok(skipped(&skip, &opts)),
    };
    let id = ready.id.clone();
    eprintln!(
        "pgbookend: backup {id} started at {} (WAL {}) for {}; running: {}",
        ready.start_lsn,
        ready.start_wal_file,
        ready.pgdata,
        show_command(&opts.command)
    );
    let mut report = json!({
        "id": id,
        "start": started.json,
        "command": { "argv": opts.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>() },
    });
    let ended = match run_command(rd, &opts, &ready, cmd_stdout, &mut report)? {
        Ok(ended) => ended,
        Err(outcome) => return Ok(outcome),
    };
    eprintln!(
        "pgbookend: COMMAND exited with 0 after {:.1}s; stopping backup {id}",
        ended.seconds
    );
    let commands::Stopped {
        report: report_stop,
        output: stopped,
    } = commands::stop_backup(
        rd,
        cfg,
        &id,
        opts.wait_archive,
        opts.archive_timeout.as_deref(),
        &opts.start.s3,
    )?;
    report["stop"] = stopped.json.clone();
    report["result"] = json!("stopped");
    let stop_error = stopped.error.clone();
    // The bundle is in every store when stop succeeded, or only the WAL is unconfirmed.
    let bundle_complete = match &stop_error {
        None => true,
        Some(e) => e.class() == Class::WalNotSafe,
    };
    let mut fin = Finish {
        human: stopped.human.clone(),
        code: stop_error
            .as_ref()
            .map(|e| e.class().exit_code())
            .unwrap_or(0),
        error: stop_error,
    };
    if let Some(then) = &opts.then {
        let late = RECEIVED.load(Ordering::SeqCst);
        if !bundle_complete {
            fin.human
                .push_str("--then not run: the bundle is not in every store\n");
        } else if late != 0 {
            fin.not_run_after_signal(late);
        } else {
            let job = Then {
                command: then,
                ready: &ready,
                rd,
                stop: report_stop.as_ref(),
            };
            run_then(&job, then_stdout, &mut report, &mut fin)?;
        }
    }
    if let Some(e) = &fin.error {
        report["error"] = serde_json::to_value(e).unwrap_or(Value::Null);
    }
    Ok(RunOutcome {
        output: Output {
            json: report,
            human: fin.human,
            error: fin.error,
        },
        code: fin.code,
    })
}

/// Runs COMMAND during the backup: `Ok(ended)` when it exited with 0 and the backup is
/// to be stopped, or the finished outcome when the backup was aborted or became void.
fn run_command(
    rd: &RunDir,
    opts: &RunOptions,
    ready: &Ready,
    cmd_stdout: Option<Stdio>,
    report: &mut Value,
) -> Result<std::result::Result<Ended, RunOutcome>> {
    let id = &ready.id;
    let entry = rd.entry(id);
    let shown = show_command(&opts.command);
    // Interrupted while starting: nothing was copied; abort at once.
    let early = RECEIVED.load(Ordering::SeqCst);
    if early != 0 {
        let why = format!("run received {} before COMMAND started", signal_name(early));
        return Ok(Err(aborted(rd, id, report.take(), why, 128 + early, None)));
    }
    let tty = Terminal::foreground();
    let mut cmd = Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..]);
    backup_env(&mut cmd, ready, rd);
    if let Some(out) = cmd_stdout {
        cmd.stdout(out);
    }
    let t0 = Instant::now();
    let child = match spawn_group(&mut cmd, tty.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            if let Some(t) = &tty {
                t.take_back();
            }
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            report["command"]["error"] = json!(e.to_string());
            let why = format!("COMMAND could not be started ({shown}: {e})");
            return Ok(Err(aborted(rd, id, report.take(), why, code, None)));
        }
    };
    let ended = match wait_child(child, tty.as_ref(), Some(&entry), t0) {
        Ok(e) => e,
        Err(e) => {
            let _ = commands::abort(rd, id);
            return Err(e);
        }
    };
    if let Value::Object(m) = &mut report["command"] {
        if let Value::Object(e) = ended.json() {
            m.extend(e);
        }
    }
    if ended.void {
        return Ok(Err(void_outcome(rd, &entry, id, report.take())));
    }
    if let Some(sig) = ended.interrupted {
        let code = if ended.code() != 0 {
            ended.code()
        } else {
            128 + sig
        };
        let why = format!(
            "run received {} while COMMAND ran, and COMMAND {}",
            signal_name(sig),
            ended.describe()
        );
        return Ok(Err(aborted(rd, id, report.take(), why, code, Some(&ended))));
    }
    if !ended.status.success() {
        let why = format!("COMMAND {} ({shown})", ended.describe());
        let code = ended.code();
        return Ok(Err(aborted(rd, id, report.take(), why, code, Some(&ended))));
    }
    Ok(Ok(ended))
}

/// The outcome when the backup became void while COMMAND ran (COMMAND was terminated).
fn void_outcome(rd: &RunDir, entry: &Entry, id: &str, mut report: Value) -> RunOutcome {
    let st = entry.read_state();
    let why = st
        .as_ref()
        .and_then(|s| s.failure.clone())
        .unwrap_or_else(|| "its agent is gone".into());
    let _ = commands::abort(rd, id);
    report["result"] = json!("void");
    let e = Error::void(format!(
        "backup {id} became void while COMMAND ran ({why}); COMMAND was terminated and no bundle was written"
    ))
    .hint("the copy is not restorable; take a new backup");
    failed(report, e, Class::Void.exit_code())
}

/// The outcome of a backup that produced no bundle: the report with its error.
fn failed(mut report: Value, e: Error, code: i32) -> RunOutcome {
    report["error"] = serde_json::to_value(&e).unwrap_or(Value::Null);
    RunOutcome {
        output: Output {
            json: report,
            human: String::new(),
            error: Some(e),
        },
        code,
    }
}

/// What `run` reports after stop: the human lines, the exit code and the error.
struct Finish {
    human: String,
    code: i32,
    error: Option<Error>,
}

impl Finish {
    /// A signal arrived during stop: `--then` is not run.
    fn not_run_after_signal(&mut self, late: i32) {
        self.human.push_str(&format!(
            "--then not run: run received {} during stop\n",
            signal_name(late)
        ));
        self.code = 128 + late;
        self.error.get_or_insert_with(|| {
            Error::internal(format!(
                "interrupted by {} after the backup was stopped; --then was not run",
                signal_name(late)
            ))
            .hint("the bundle is complete; back it up yourself")
        });
    }
}

/// The `--then` command and what its environment is made of.
struct Then<'a> {
    command: &'a str,
    ready: &'a Ready,
    rd: &'a RunDir,
    stop: Option<&'a StopReport>,
}

/// Runs `--then` after a complete stop, recording its result in `report` and `fin`.
fn run_then(
    job: &Then,
    then_stdout: Option<Stdio>,
    report: &mut Value,
    fin: &mut Finish,
) -> Result<()> {
    let then = job.command;
    let bundle = job.stop.and_then(local_bundle);
    eprintln!("pgbookend: running --then: {then}");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(then);
    backup_env(&mut cmd, job.ready, job.rd);
    if let Some(b) = &bundle {
        cmd.env("PGBOOKEND_BUNDLE", b);
    }
    if let Some(r) = job.stop {
        cmd.env("PGBOOKEND_STOP_LSN", &r.stop_lsn);
    }
    if let Some(out) = then_stdout {
        cmd.stdout(out);
    }
    let tty = Terminal::foreground();
    let t1 = Instant::now();
    let te = match spawn_group(&mut cmd, tty.as_ref()) {
        Ok(child) => wait_child(child, tty.as_ref(), None, t1)?,
        Err(e) => {
            if let Some(t) = &tty {
                t.take_back();
            }
            report["then"] = json!({ "command": then, "error": e.to_string() });
            fin.code = 126;
            fin.error = Some(Error::env(format!("--then could not be started: {e}")));
            return Ok(());
        }
    };
    let mut j = te.json();
    j["command"] = json!(then);
    report["then"] = j;
    if !te.status.success() || te.interrupted.is_some() {
        fin.code = if te.code() != 0 {
            te.code()
        } else {
            128 + te.interrupted.unwrap_or(0)
        };
        fin.error = Some(
            Error::env(format!(
                "the backup is stopped and its bundle written{}, but --then {}",
                bundle
                    .as_deref()
                    .map(|b| format!(" ({b})"))
                    .unwrap_or_default(),
                te.describe()
            ))
            .hint("the backup is restorable only with its bundle: back the bundle up yourself, then fix --then"),
        );
    } else {
        fin.human
            .push_str(&format!("--then exited with 0 after {:.1}s\n", te.seconds));
    }
    Ok(())
}

/// The bundle directory in the first local store the bundle was written to.
fn local_bundle(r: &StopReport) -> Option<String> {
    r.stores
        .iter()
        .filter(|s| s.ok)
        .filter_map(|s| s.location.clone())
        .find(|l| Path::new(l).is_dir())
}

/// Aborts the backup after COMMAND failed (or never ran) and builds the report.
fn aborted(
    rd: &RunDir,
    id: &str,
    mut report: Value,
    why: String,
    code: i32,
    ended: Option<&Ended>,
) -> RunOutcome {
    let abort = commands::abort(rd, id);
    let state = rd.entry(id).read_state().map(|s| s.state);
    let (done, detail) = match (&abort, state) {
        (Ok(_), _) | (_, Some(Phase::Aborted)) | (_, Some(Phase::Failed)) => {
            (true, "the backup was aborted".to_string())
        }
        (Err(e), _) => (false, format!("aborting the backup failed: {e}")),
    };
    report["result"] = json!("aborted");
    if let Some(e) = ended {
        report["command"]["exit_code"] = json!(e.status.code());
    }
    let mut e = Error::void(format!(
        "{why}; {detail}: no bundle was written and the copy is not a backup"
    ));
    if !done {
        e = e.hint(format!("run `pgbookend abort --id {id}`"));
    }
    failed(report, e, code)
}

/// A duplicate of our stderr, for a child's stdout under `--json`.
fn stderr_dup() -> Result<Stdio> {
    use std::os::fd::AsFd;
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .map_err(|e| Error::internal(format!("cannot duplicate stderr: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_commands_like_a_shell() {
        let argv: Vec<OsString> = ["tar", "-cf", "/x y.tar", "it's"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(show_command(&argv), "tar -cf '/x y.tar' 'it'\\''s'");
    }

    #[test]
    fn exit_codes_like_a_shell() {
        let e = |raw: i32| Ended {
            status: ExitStatus::from_raw(raw),
            interrupted: None,
            void: false,
            seconds: 0.0,
        };
        assert_eq!(e(1 << 8).code(), 1);
        assert_eq!(e(0).code(), 0);
        assert_eq!(e(libc::SIGTERM).code(), 143);
        assert_eq!(e(libc::SIGKILL).describe(), "was killed by SIGKILL");
    }
}
