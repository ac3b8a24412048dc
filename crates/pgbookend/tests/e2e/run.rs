//! End-to-end tests of `run` (start, COMMAND, stop or abort, `--then`) and of the hook pair
//! across process boundaries, against real clusters of every supported major.

use crate::common::{self, bin, is_our_agent, run_for, wait_until, Run, Tool};
use crate::runkit::nothing_left;
use pgbookend_testkit::{Cluster, ClusterOptions, TempDir};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `pgbookend run --id ID --store STORE [extra] -- COMMAND...`.
fn run_cmd(tool: &Tool, id: &str, extra: &[&str], command: &[&str]) -> Command {
    let store = tool.store_path().display().to_string();
    let mut args = vec!["run", "--id", id, "--store", &store];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    tool.cmd(&args)
}

/// Starts a prepared `pgbookend run` command in the background with `$OUT` set and its
/// output captured; the guard kills it if the test fails while it runs.
fn spawn(cmd: &mut Command, out: &TempDir) -> (Child, KillOnPanic) {
    let child = cmd
        .env("OUT", out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbookend run");
    let guard = KillOnPanic(child.id() as i32);
    (child, guard)
}

/// Runs a prepared `pgbookend run` command to its end.
fn finish(cmd: &mut Command) -> Run {
    cmd.output().expect("run pgbookend run").into()
}

/// Kills a spawned `pgbookend run` (and so, through its parent-death signal, COMMAND) if
/// the test fails while it runs, so that a failing test leaves no process behind.
struct KillOnPanic(i32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: a signal to a process this test spawned.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A COMMAND that saves its PGBOOKEND_* variables to files in $OUT, proves the marker is
/// in PGDATA while it runs, copies PGDATA with tar, and prints to stdout.
const DUMP_AND_COPY: &str = r#"
for v in ID PGDATA TABLESPACES START_LSN STORE RUN_DIR BUNDLE; do
  eval "printf '%s' \"\${PGBOOKEND_$v-unset}\"" > "$OUT/cmd.$v"
done
test -f "$PGBOOKEND_PGDATA/pg_backup_metadata/$PGBOOKEND_ID/backup.json"
tar -cf "$OUT/copy.tar" -C "$PGBOOKEND_PGDATA" . 2>/dev/null || [ $? -eq 1 ]
echo "copy done on stdout"
"#;

/// The --then command: saves its variables, checks the bundle is complete.
const DUMP_THEN: &str = r#"for v in ID BUNDLE STOP_LSN; do eval "printf '%s' \"\${PGBOOKEND_$v-unset}\"" > "$OUT/then.$v"; done; test -f "$PGBOOKEND_BUNDLE/bundle.json" && echo then-ran"#;

/// run with a COMMAND that exits 0: stopped, bundle written, the documented environment
/// given to COMMAND and to --then, and --json's stdout is one JSON document.
fn run_success(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).tablespace(true));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let out = pgbookend_testkit::temp_dir("out");
    let id = format!("run-{major}");
    let bench = c.pgbench_background(2, 3);
    let r = finish(
        run_cmd(
            &tool,
            &id,
            &["--json", "--then", DUMP_THEN],
            &["sh", "-c", DUMP_AND_COPY],
        )
        .env("OUT", out.path()),
    );
    bench.wait().expect("pgbench");
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["result"], "stopped");
    assert_eq!(j["command"]["exit_code"], 0);
    assert_eq!(j["then"]["exit_code"], 0);
    assert!(r.stderr.contains("copy done on stdout"), "{r:?}");
    assert!(r.stderr.contains("then-ran"), "{r:?}");
    let o = |name: &str| read(&out.path().join(name));
    assert_eq!(o("cmd.ID"), id);
    assert_eq!(o("cmd.PGDATA"), c.pgdata().display().to_string());
    assert_eq!(
        o("cmd.TABLESPACES"),
        c.tablespace_dir().unwrap().display().to_string()
    );
    assert_eq!(
        o("cmd.START_LSN"),
        j["start"]["start_lsn"].as_str().unwrap()
    );
    assert_eq!(o("cmd.STORE"), tool.store_path().display().to_string());
    assert_eq!(o("cmd.RUN_DIR"), tool.run_dir().display().to_string());
    assert_eq!(
        o("cmd.BUNDLE"),
        "unset",
        "COMMAND runs before the bundle exists"
    );
    assert_eq!(o("then.ID"), id);
    assert_eq!(o("then.BUNDLE"), tool.bundle_dir(&id).display().to_string());
    assert_eq!(o("then.STOP_LSN"), j["stop"]["stop_lsn"].as_str().unwrap());
    assert!(tool.bundle_dir(&id).join("bundle.json").exists());
    assert!(!c.pgdata().join("pg_backup_metadata").join(&id).exists());
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(out.path().join("copy.tar"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout)
            .contains(&format!("pg_backup_metadata/{id}/backup.json")),
        "the copy made by COMMAND carries the marker"
    );
    assert_eq!(tool.status(&id).json()["state"], "stopped");

    // start reports the tablespace directories too (JSON and human), for hook users.
    let ts = c.tablespace_dir().unwrap().display().to_string();
    assert_eq!(j["start"]["tablespaces"][0], ts.as_str());
    let store = tool.store_path().display().to_string();
    let r = tool
        .run(&["start", "--id", "ts-human", "--store", &store])
        .ok();
    assert!(
        r.stdout
            .contains(&format!("the tablespace directories too: {ts}")),
        "{r:?}"
    );
    tool.run(&["abort", "--id", "ts-human"]).ok();

    // The human form: progress on stderr, the stop report on stdout.
    let r = finish(&mut run_cmd(&tool, "human", &[], &["true"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("backup human started"), "{r:?}");
    assert!(r.stdout.contains("backup human stopped"), "{r:?}");

    // A failing --then: the backup is stopped and its bundle written, run says so and
    // exits with --then's code.
    let r = finish(&mut run_cmd(
        &tool,
        "then-fails",
        &["--then", "exit 7"],
        &["true"],
    ));
    assert_eq!(r.code, 7, "{r:?}");
    assert!(tool.bundle_dir("then-fails").join("bundle.json").exists());
    assert!(r.stderr.contains("--then exited with 7"), "{r:?}");
}
per_major!(run_success_t, run_success);

/// A COMMAND that exits 1 (after copying part of PGDATA): run exits 1, and nothing is left
/// behind. Likewise a COMMAND killed by a signal (128+signal) and one that does not exist.
fn run_command_fails(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let out = pgbookend_testkit::temp_dir("out");
    let part = "tar -cf \"$OUT/part.tar\" -C \"$PGBOOKEND_PGDATA\" base 2>/dev/null; exit 1";
    let r = finish(run_cmd(&tool, "fails", &[], &["sh", "-c", part]).env("OUT", out.path()));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(out.path().join("part.tar").exists(), "COMMAND did run");
    assert!(r.stderr.contains("COMMAND exited with 1"), "{r:?}");
    assert!(r.stderr.contains("aborted"), "{r:?}");
    nothing_left(&c, &tool, "fails");

    let r = finish(&mut run_cmd(
        &tool,
        "killed",
        &["--json"],
        &["sh", "-c", "kill -KILL $$"],
    ));
    assert_eq!(r.code, 128 + 9, "{r:?}");
    assert_eq!(r.json()["result"], "aborted");
    assert!(r.stderr.contains("killed by SIGKILL"), "{r:?}");
    nothing_left(&c, &tool, "killed");

    let r = finish(&mut run_cmd(
        &tool,
        "missing",
        &[],
        &["/nonexistent/copy-program"],
    ));
    assert_eq!(r.code, 127, "{r:?}");
    nothing_left(&c, &tool, "missing");
    // The IDs of aborted runs are free again.
    let r = finish(&mut run_cmd(&tool, "fails", &[], &["true"]));
    assert_eq!(r.code, 0, "{r:?}");
}
per_major!(run_command_fails_t, run_command_fails);

/// SIGTERM to run while COMMAND copies (a throttled rsync under a shell): the whole
/// process group of COMMAND gets it, run aborts the backup and exits 128+15; nothing is
/// left. On one major, SIGINT too.
fn run_signalled(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let mut signals = vec![libc::SIGTERM];
    if major == 16 {
        signals.push(libc::SIGINT);
    }
    for sig in signals {
        let out = pgbookend_testkit::temp_dir("out");
        let id = format!("sig{sig}");
        let script = "echo $$ > \"$OUT/pgid\"; \
             rsync -a --bwlimit=50 \"$PGBOOKEND_PGDATA/\" \"$OUT/copy/\"; \
             echo after > \"$OUT/after\"";
        let (mut child, _guard) = spawn(&mut run_cmd(&tool, &id, &[], &["sh", "-c", script]), &out);
        // Mid-copy: rsync has started writing the copy.
        assert!(
            wait_until(Duration::from_secs(30), || out.path().join("copy").exists()),
            "the copy never started"
        );
        std::thread::sleep(Duration::from_millis(300));
        let pgid: i32 = read(&out.path().join("pgid")).trim().parse().unwrap();
        // SAFETY: signals to processes this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = wait_child(
            &mut child,
            Duration::from_secs(30),
            "run did not end after the signal",
        );
        let r: Run = child.wait_with_output().unwrap().into();
        assert_eq!(status.code(), Some(128 + sig), "{r:?}");
        assert!(r.stderr.contains("aborted"), "{r:?}");
        assert!(
            !out.path().join("after").exists(),
            "the shell was signalled too"
        );
        // The whole group of COMMAND is gone (rsync included).
        assert!(
            wait_until(Duration::from_secs(10), || {
                // SAFETY: signal 0 only checks existence.
                unsafe { libc::kill(-pgid, 0) != 0 }
            }),
            "COMMAND's process group survived"
        );
        nothing_left(&c, &tool, &id);
    }
}
per_major!(run_signalled_t, run_signalled);

/// The backup becomes void while COMMAND runs (its session is terminated): run stops
/// COMMAND at once and exits 3 instead of letting a worthless copy finish.
fn run_void_mid_copy(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let tool = Tool::new(&c);
    let out = pgbookend_testkit::temp_dir("out");
    let command = ["sh", "-c", "touch \"$OUT/running\"; sleep 120"];
    let (mut child, _guard) = spawn(
        &mut run_cmd(&tool, "void", &["--heartbeat", "200ms"], &command),
        &out,
    );
    assert!(wait_until(Duration::from_secs(30), || out
        .path()
        .join("running")
        .exists()));
    c.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'pgbookend%'");
    let status = wait_child(
        &mut child,
        Duration::from_secs(20),
        "run did not notice the lost session",
    );
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(status.code(), Some(3), "{r:?}");
    assert!(r.stderr.contains("became void"), "{r:?}");
    assert!(r.stderr.contains("session was lost"), "{r:?}");
    assert!(!tool.bundle_dir("void").exists());
    assert!(!c.pgdata().join("pg_backup_metadata/void").exists());
}
per_major!(run_void_t, run_void_mid_copy);

/// run without a COMMAND, or when start fails: COMMAND never runs, start's exit code.
#[test]
fn run_usage_and_start_failure() {
    let run_dir = pgbookend_testkit::temp_dir("run");
    let out = pgbookend_testkit::temp_dir("out");
    let base = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args)
            .env("PGBOOKEND_RUN_DIR", run_dir.path().join("r"))
            .env("PGHOST", out.path().join("no-server"))
            .env("PGPORT", "1")
            .env_remove("PGBOOKEND_CONFIG");
        let r: Run = c.output().unwrap().into();
        r
    };
    let r = base(&["run", "--id", "x"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = base(&["run", "--id", "x", "true"]);
    assert_eq!(r.code, 2, "COMMAND must come after --: {r:?}");
    let flag = out.path().join("ran");
    let store = out.path().join("store").display().to_string();
    let r = base(&[
        "run",
        "--id",
        "x",
        "--store",
        &store,
        "--",
        "touch",
        &flag.display().to_string(),
    ]);
    assert_eq!(r.code, 4, "cannot connect: an environment error: {r:?}");
    assert!(!flag.exists(), "COMMAND must not run when start fails");
}

fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: out-pointers are valid; name/termios/winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// The agent's session ID and controlling terminal number, from /proc.
fn session_and_tty(pid: i32) -> (i32, i64) {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state ppid pgrp session tty_nr ...
    (f[3].parse().unwrap(), f[4].parse().unwrap())
}

/// The hook pair across process boundaries, as backup daemons and Kubernetes exec hooks
/// run it: `start` from a shell that is a session leader with a terminal; that shell
/// exits, its terminal is closed and its process group gets SIGHUP; later, `stop` from an
/// unrelated process with an empty environment succeeds.
fn hooks_across_processes(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    let out = pgbookend_testkit::temp_dir("out");
    let (master, slave) = openpty();
    let script = r#"
        sleep 300 &
        echo $! > "$OUT/sleeper"
        echo $$ > "$OUT/leader"
        pgbookend start --id boundary --store "$STORE" --heartbeat 300ms --json > "$OUT/start.json" 2> "$OUT/start.err"
        echo $? > "$OUT/start.rc"
    "#;
    let bin_dir = bin().parent().unwrap().to_path_buf();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .env("OUT", out.path())
        .env("STORE", tool.store_path())
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    for (k, v) in &tool.env {
        cmd.env(k, v);
    }
    // SAFETY: signal, setsid and ioctl between fork and exec: a new session whose
    // controlling terminal is the pty, as a login shell or a container exec would have,
    // with SIGHUP at its default whatever the test runner inherited (a suite started under
    // `nohup` ignores it, and the sleeper would then survive the hang-up).
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    assert!(status.success());
    drop(slave);
    assert_eq!(
        read(&out.path().join("start.rc")).trim(),
        "0",
        "{}",
        read(&out.path().join("start.err"))
    );
    let leader: i32 = read(&out.path().join("leader")).trim().parse().unwrap();
    let sleeper: i32 = read(&out.path().join("sleeper")).trim().parse().unwrap();
    // The terminal goes away, and the group gets SIGHUP (again, if the kernel already sent it).
    drop(master);
    // SAFETY: a signal to the process group this test created.
    unsafe { libc::kill(-leader, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(5), || {
            // SAFETY: existence check only.
            let gone = unsafe { libc::kill(sleeper, 0) != 0 };
            gone || common::is_zombie(sleeper)
        }),
        "the hook's process group must have been hung up"
    );
    let started: serde_json::Value =
        serde_json::from_str(&read(&out.path().join("start.json"))).unwrap();
    let agent = started["agent_pid"].as_i64().unwrap() as i32;
    let (sid, tty) = session_and_tty(agent);
    assert_ne!(sid, leader, "the agent is in its own session");
    assert_eq!(tty, 0, "the agent has no controlling terminal");

    // The copy happens meanwhile, in yet another process; heartbeats go on.
    let bench = c.pgbench_background(2, 2);
    common::tar_pgdata(&c, &out.path().join("copy.tar"));
    bench.wait().expect("pgbench");
    assert!(is_our_agent(agent), "the agent survived the hangup");
    let st = tool.status("boundary").ok().json();
    assert_eq!(st["state"], "running");
    assert!(st["last_heartbeat_age_s"].as_i64().unwrap() <= 2, "{st}");

    // stop from an unrelated process: no connection settings, another directory.
    let r: Run = Command::new(bin())
        .args(["stop", "--id", "boundary", "--json"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGBOOKEND_RUN_DIR", tool.run_dir())
        .current_dir(out.path())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(tool.bundle_dir("boundary").join("bundle.json").exists());
    assert!(r.json()["wal_segments"].as_u64().unwrap() >= 1);
    assert!(wait_until(Duration::from_secs(10), || !is_our_agent(agent)));
}
per_major!(hooks_across_processes_t, hooks_across_processes);

/// run in the foreground of a terminal hands the terminal to COMMAND while it runs, so a
/// program that prompts (a repository password) can read its answer; then takes it back.
#[test]
fn run_gives_command_the_terminal() {
    run_for(15, |major| {
        use std::io::{Read, Write};
        let c = Cluster::start(ClusterOptions::new(major));
        let tool = Tool::new(&c);
        let out = pgbookend_testkit::temp_dir("out");
        let (master, slave) = openpty();
        let script = "printf 'password: ' > /dev/tty; read -r answer < /dev/tty; \
                      printf '%s' \"$answer\" > \"$OUT/answer\"";
        let mut cmd = run_cmd(&tool, "tty", &[], &["sh", "-c", script]);
        cmd.env("OUT", out.path())
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: setsid and ioctl between fork and exec: run is the session leader of a
        // terminal, in its foreground, as in an interactive login.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let _guard = KillOnPanic(child.id() as i32);
        drop(slave);
        let mut m = std::fs::File::from(master);
        // Answer once the prompt is on the terminal.
        let mut seen = Vec::new();
        let t0 = Instant::now();
        while !String::from_utf8_lossy(&seen).contains("password: ") {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no prompt: {seen:?}"
            );
            let mut buf = [0u8; 4096];
            let n = m.read(&mut buf).unwrap_or(0);
            seen.extend_from_slice(&buf[..n]);
        }
        m.write_all(b"typed-answer\n").unwrap();
        let reader = std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = m.read_to_end(&mut rest);
        });
        let status = wait_child(
            &mut child,
            Duration::from_secs(30),
            "run hung: COMMAND could not read the terminal",
        );
        assert!(status.success(), "{status:?}");
        assert_eq!(read(&out.path().join("answer")), "typed-answer");
        assert!(tool.bundle_dir("tty").join("bundle.json").exists());
        drop(reader);
    });
}

/// Waits for `child` to exit, failing the test with `what` after `limit`.
fn wait_child(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t0.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
