//! End-to-end tests of `drill`: a real test restore of a copy taken while pgbench writes,
//! on every major; a copy whose index the WAL does not touch is corrupted; drill is killed
//! with SIGTERM. Each time nothing of the clone, its server or its socket is left behind.

use crate::common::{self, newest_major, Run, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions, TempDir};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// A digest of a whole tree: paths, modes, owners, link targets and contents.
fn tree_digest(root: &Path) -> String {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if md.file_type().is_symlink() {
                let to = std::fs::read_link(&p).unwrap();
                out.push(format!("{rel} -> {}", to.display()));
            } else if md.is_dir() {
                out.push(format!("{rel}/ {:o} {}", md.mode(), md.uid()));
                walk(root, &p, out);
            } else {
                let data = std::fs::read(&p).unwrap();
                let sum = hex::encode(Sha256::digest(&data));
                out.push(format!("{rel} {:o} {} {sum}", md.mode(), md.uid()));
            }
        }
    }
    let mut entries = Vec::new();
    walk(root, root, &mut entries);
    hex::encode(Sha256::digest(entries.join("\n").as_bytes()))
}

/// A cluster, its backup `id` and a `cp -a` copy of PGDATA taken in the backup's window
/// (while pgbench writes), in `work/data`.
struct Fixture {
    c: Cluster,
    tool: Tool,
    work: TempDir,
    id: &'static str,
}

impl Fixture {
    fn new(major: u32, checksums: bool, before: &str) -> Fixture {
        Fixture::with(ClusterOptions::new(major).data_checksums(checksums), before)
    }

    /// A fixture with tablespace `ts1` holding table `in_ts` (1000 rows), and the
    /// tablespace's OID.
    fn with_tablespace(major: u32) -> (Fixture, String) {
        let f = Fixture::with(
            ClusterOptions::new(major).tablespace(true),
            "CREATE TABLE in_ts (i int PRIMARY KEY) TABLESPACE ts1; \
             INSERT INTO in_ts SELECT generate_series(1, 1000)",
        );
        let oid =
            f.c.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
        (f, oid)
    }

    /// A fixture of a cluster made with `opts`; a tablespace is copied to `work/ts`.
    fn with(opts: ClusterOptions, before: &str) -> Fixture {
        let c = Cluster::start(opts);
        c.pgbench_init(1);
        if !before.is_empty() {
            c.psql(before);
        }
        let tool = Tool::new(&c);
        let work = pgbookend_testkit::temp_dir("drill");
        let f = Fixture {
            c,
            tool,
            work,
            id: "drill1",
        };
        f.tool.start(f.id, &[]).ok();
        let bench = f.c.pgbench_background(2, 2);
        let ok = common::cp_live(f.c.pgdata(), f.copy()).unwrap();
        assert!(ok.success());
        if let Some(ts) = f.c.tablespace_dir() {
            let ok = common::cp_live(ts, f.work.path().join("ts")).unwrap();
            assert!(ok.success());
        }
        bench.wait().expect("pgbench");
        f.tool.stop(f.id, &[]).ok();
        f
    }

    fn copy(&self) -> PathBuf {
        self.work.path().join("data")
    }

    fn drill_cmd(&self) -> Command {
        let copy = self.copy().display().to_string();
        let store = self.tool.store_path().display().to_string();
        let bindir = self.pg_bin();
        self.tool.cmd(&[
            "drill", "--pgdata", &copy, "--store", &store, "--pg-bin", &bindir, "--json",
        ])
    }

    /// The directory of the server binaries of the cluster's major.
    fn pg_bin(&self) -> String {
        let bin = pgbookend_testkit::server_bin(self.c.major(), "postgres");
        bin.parent().unwrap().display().to_string()
    }

    fn drill(&self) -> Run {
        self.drill_cmd().output().expect("run drill").into()
    }

    /// Nothing of a drill is left beside the fixture's copy.
    fn assert_nothing_left(&self) {
        assert_nothing_left_in(self.work.path());
    }

    fn store(&self) -> String {
        self.tool.store_path().display().to_string()
    }
}

/// Nothing of a drill is left in `dir`: no scratch directory, no process whose command
/// line names one (its server), no socket, no mount.
fn assert_nothing_left_in(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pgbookend-drill."))
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    let work = dir.display().to_string();
    assert!(
        common::wait_until(Duration::from_secs(10), || drill_processes(&work)
            .is_empty()),
        "processes left behind: {:?}",
        drill_processes(&work)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let scratch = format!("{work}/.pgbookend-drill.");
    assert!(!mounts.contains(&scratch), "a mount left behind:\n{mounts}");
}

/// Live processes whose command line names a drill scratch directory below `work`.
fn drill_processes(work: &str) -> Vec<i32> {
    common::processes(|cmdline, _| {
        let cmd = String::from_utf8_lossy(cmdline);
        cmd.contains(work) && cmd.contains(".pgbookend-drill.")
    })
}

/// Whether a drill's server below `work` has said it is ready (its postmaster.pid).
fn server_ready(work: &Path) -> bool {
    std::fs::read_dir(work)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".pgbookend-drill.")
        })
        .any(|e| {
            std::fs::read_to_string(e.path().join("data/postmaster.pid"))
                .is_ok_and(|p| p.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
        })
}

/// A good copy: exit 0, every check reported, the record stored and shown, the copy
/// unchanged, nothing left behind.
fn drill_good_copy(major: u32) {
    let f = Fixture::new(major, true, "");
    let before = tree_digest(&f.copy());
    let t0 = std::time::Instant::now();
    let r = f.drill();
    eprintln!("{}\ndrill took {:?}", r.stdout, t0.elapsed());
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["verdict"], "passed", "{j}");
    assert!(j["recovery_seconds"].as_f64().unwrap() > 0.0);
    for part in ["clone", "prepare", "checks"] {
        assert!(j["phase_seconds"][part].as_f64().unwrap() > 0.0, "{j}");
    }
    assert!(r.stdout.contains("\"phase_seconds\""), "{r:?}");
    assert!(j["wal_replayed"]["bytes"].as_u64().unwrap() > 0, "{j}");
    // prepare's page check ran on the clone: every page of pgbench's tables at least.
    assert!(j["pages_verified"].as_u64().unwrap() > 100, "{j}");
    let c = &j["checks"];
    assert!(c["btree_indexes"].as_u64().unwrap() >= 3, "{c}");
    assert!(c["table_counts"].as_u64().unwrap() >= 4, "{c}");
    assert_eq!(c["heap_checked"], major >= 14);
    if major >= 14 {
        assert!(c["heap_relations"].as_u64().unwrap() >= 4, "{c}");
    }
    assert_eq!(c["failed"], 0);
    assert!(c["databases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d == "postgres"));
    assert!(f.tool.bundle_dir(f.id).join("drill.json").is_file());
    let store = f.tool.store_path().display().to_string();
    let show = f.tool.run(&["show", "--store", &store, "--id", f.id]).ok();
    assert!(show.stdout.contains("last drill: passed"), "{show:?}");
    let list = f.tool.run(&["list", "--store", &store, "--json"]).ok();
    assert_eq!(list.json()["bundles"][0]["last_drill"]["verdict"], "passed");
    let metrics = f.tool.run(&["metrics", "--store", &store]).ok();
    let line = format!("pgbookend_last_drill_success{{store=\"{store}\"");
    assert!(
        metrics.stdout.lines().any(|l| l.starts_with(&line)
            && l.contains(&format!("id=\"{}\"", f.id))
            && l.ends_with(" 1")),
        "{}",
        metrics.stdout
    );
    assert_eq!(tree_digest(&f.copy()), before, "drill changed the copy");
    f.assert_nothing_left();
    hostile_records(&f);
}
per_major!(drill_good_copy_t, drill_good_copy);

/// A hostile `drill.json` in the bundle's directory of a store: too large, malformed, of
/// the wrong types, too deep, with a terminal escape, a link to a valid record elsewhere,
/// a FIFO, a directory. `list`, `show` and `metrics` still answer and show no drill.
fn hostile_records(f: &Fixture) {
    let store = f.store();
    let path = f.tool.bundle_dir(f.id).join("drill.json");
    let elsewhere = f.work.path().join("elsewhere.json");
    std::fs::copy(&path, &elsewhere).unwrap();
    let huge = {
        let mut v = br#"{"verdict":"passed","finished":"2026-01-01T00:00:00Z","x":""#.to_vec();
        v.resize(6 << 20, b'a');
        v.extend_from_slice(b"\"}");
        v
    };
    let write = |b: &[u8]| std::fs::write(&path, b).unwrap();
    for case in [
        "huge",
        "malformed",
        "types",
        "deep",
        "escape",
        "link",
        "fifo",
        "dir",
    ] {
        match case {
            "huge" => write(&huge),
            "malformed" => write(br#"{"verdict":"passed","finished":"#),
            "types" => write(br#"{"verdict":1,"finished":["2026"],"checks":"x"}"#),
            "deep" => write("[".repeat(200_000).as_bytes()),
            "escape" => write(b"{\"verdict\":\"passed\\u001b[2J\",\"finished\":\"now\"}"),
            "link" => std::os::unix::fs::symlink(&elsewhere, &path).unwrap(),
            "fifo" => {
                let c = std::ffi::CString::new(path.display().to_string()).unwrap();
                // SAFETY: a valid path string.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            }
            _ => std::fs::create_dir(&path).unwrap(),
        }
        let list = f.tool.run(&["list", "--store", &store, "--json"]);
        assert_eq!(list.code, 0, "{case}: {list:?}");
        assert!(
            list.json()["bundles"][0]["last_drill"].is_null(),
            "{case}: {list:?}"
        );
        let show = f.tool.run(&["show", "--store", &store, "--id", f.id]);
        assert_eq!(show.code, 0, "{case}: {show:?}");
        assert!(!show.stdout.contains("last drill"), "{case}: {show:?}");
        assert!(!show.stdout.contains('\x1b'), "{case}: {show:?}");
        let m = f.tool.run(&["metrics", "--store", &store]);
        assert_eq!(m.code, 0, "{case}: {m:?}");
        assert!(
            !m.stdout
                .lines()
                .any(|l| l.starts_with("pgbookend_last_drill_success{")),
            "{case}: {}",
            m.stdout
        );
        if case == "dir" {
            std::fs::remove_dir(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

/// A copy with a tablespace, restored to its own directory: drill clones both (neither
/// changes), remaps the tablespace to its clone, and reads the table in it.
fn drill_tablespace(major: u32) {
    let (f, oid) = Fixture::with_tablespace(major);
    let ts = f.work.path().join("ts");
    let (before, ts_before) = (tree_digest(&f.copy()), tree_digest(&ts));
    let r = f.drill();
    assert_eq!(r.code, 6, "without --tablespace: {r:?}");
    assert!(r.stderr.contains("--tablespace"), "{r:?}");
    // The copy path of the clone (no reflink, no overlay), and a --bundle directory that
    // receives the record.
    let bundle = f.tool.bundle_dir(f.id).display().to_string();
    let (copy, bindir) = (f.copy().display().to_string(), f.pg_bin());
    let arg = format!("{oid}={}", ts.display());
    let r: Run = f
        .tool
        .cmd(&[
            "drill", "--pgdata", &copy, "--bundle", &bundle, "--pg-bin", &bindir,
        ])
        .args(["--tablespace", &arg, "--json"])
        .env("PGBOOKEND_TEST_DRILL_COPY", "1")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["clone_method"], "full_copy");
    assert!(Path::new(&bundle).join("drill.json").is_file());
    assert!(r.json()["checks"]["table_counts"].as_u64().unwrap() >= 5);
    assert_eq!(tree_digest(&f.copy()), before, "drill changed the copy");
    assert_eq!(
        tree_digest(&ts),
        ts_before,
        "drill changed the tablespace copy"
    );
    f.assert_nothing_left();
}
per_major!(drill_tablespace_t, drill_tablespace);

/// Makes the B-tree leaf page `block` of `file` out of order: the key of its middle item
/// becomes the largest int4. The cluster has no data checksums, so only amcheck can see it.
fn corrupt_index_order(file: &Path, block: u64) {
    let mut data = std::fs::read(file).unwrap();
    let page = &mut data[(block * 8192) as usize..((block + 1) * 8192) as usize];
    let lower = u16::from_le_bytes([page[12], page[13]]) as usize;
    let items = (lower - 24) / 4;
    assert!(items > 10, "the leaf page holds {items} items");
    let k = items / 2;
    let lp = u32::from_le_bytes(page[24 + 4 * k..28 + 4 * k].try_into().unwrap());
    let off = (lp & 0x7fff) as usize;
    page[off + 8..off + 12].copy_from_slice(&i32::MAX.to_le_bytes());
    std::fs::write(file, &data).unwrap();
}

/// An index page corrupted in the copy, which the window's WAL does not touch: drill
/// fails (exit 6) naming the index, and leaves nothing behind.
fn drill_corrupt_index(major: u32) {
    let f = Fixture::new(
        major,
        false,
        "CREATE TABLE drill_t (i int); INSERT INTO drill_t SELECT generate_series(1, 200); \
         CREATE INDEX drill_idx ON drill_t (i); CHECKPOINT",
    );
    let rel = f.c.psql("SELECT pg_relation_filepath('drill_idx')");
    corrupt_index_order(&f.copy().join(rel), 1);
    let r = f.drill();
    eprintln!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, 6, "{r:?}");
    let j = r.json();
    assert_eq!(j["verdict"], "failed");
    let failures = j["checks"]["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|x| x["object"] == "public.drill_idx" && x["check"] == "btree"),
        "{j}"
    );
    assert!(r.stderr.contains("drill_idx"), "{r:?}");
    f.assert_nothing_left();

    // A link in the copy (here a tablespace) is refused, never followed.
    let link = f.copy().join("pg_tblspc").join("99999");
    std::os::unix::fs::symlink("/nonexistent-drill-target", &link).unwrap();
    let r = f.drill();
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("tablespace"), "{r:?}");
    f.assert_nothing_left();
    std::fs::remove_file(&link).unwrap();

    // A pg_wal that is a link (to a directory beside the copy): refused, never followed.
    let (wal, moved) = (f.copy().join("pg_wal"), f.work.path().join("wal-elsewhere"));
    std::fs::rename(&wal, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &wal).unwrap();
    let r = f.drill();
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains("pg_wal is a symbolic link") && r.stderr.contains("drill does not"),
        "{r:?}"
    );
    f.assert_nothing_left();
    std::fs::remove_file(&wal).unwrap();
    std::fs::rename(&moved, &wal).unwrap();

    // A page of a table the window's WAL does not touch, its header broken: prepare's
    // page check refuses the clone; the drill fails (exit 6), recorded with the reason.
    let table = f
        .copy()
        .join(f.c.psql("SELECT pg_relation_filepath('drill_t')"));
    let saved = std::fs::read(&table).unwrap();
    let mut broken = saved.clone();
    broken[12..16].fill(0);
    std::fs::write(&table, &broken).unwrap();
    let r = f.drill();
    assert_eq!(r.code, 6, "{r:?}");
    let j = r.json();
    assert_eq!(j["verdict"], "failed", "{j}");
    let first = &j["checks"]["failures"][0];
    assert_eq!(first["check"], "prepare", "{j}");
    let rel = f.c.psql("SELECT pg_relation_filepath('drill_t')");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{rel} block 0")),
        "{j}"
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.tool.bundle_dir(f.id).join("drill.json")).unwrap())
            .unwrap();
    assert_eq!(stored["verdict"], "failed");
    assert_eq!(stored["checks"]["failures"][0]["check"], "prepare");
    f.assert_nothing_left();
    std::fs::write(&table, &saved).unwrap();

    // A copy whose server cannot come up: a failed drill, recorded, nothing left.
    let conf = f.copy().join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("shared_preload_libraries = 'pgbookend_no_such_library'\n");
    std::fs::write(&conf, text).unwrap();
    let r = f.drill();
    assert_eq!(r.code, 6, "{r:?}");
    let j = r.json();
    assert_eq!(j["checks"]["failures"][0]["check"], "recovery", "{j}");
    assert!(j["checks"]["failures"][0]["message"]
        .as_str()
        .unwrap()
        .contains("pgbookend_no_such_library"));
    let store = f.tool.store_path().display().to_string();
    let show = f.tool.run(&["show", "--store", &store, "--id", f.id]).ok();
    assert!(show.stdout.contains("last drill: failed"), "{show:?}");
    f.assert_nothing_left();
}
per_major!(drill_corrupt_index_t, drill_corrupt_index);

/// Kills the drill it holds on drop (a failed test leaves no drill running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// drill killed with SIGTERM while its server runs: it exits non-zero and leaves nothing.
/// A recovery that does not end within `--timeout` (here 1 ms: no server recovers and
/// opens that soon): exit 4 with a hint, no record, nothing left.
fn drill_sigterm(major: u32) {
    let f = Fixture::new(major, true, "");
    let r: Run = f
        .drill_cmd()
        .args(["--timeout", "1ms"])
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("did not finish recovery within") && r.stderr.contains("--timeout"),
        "{r:?}"
    );
    assert!(!f.tool.bundle_dir(f.id).join("drill.json").exists());
    f.assert_nothing_left();
    let mut cmd = f.drill_cmd();
    cmd.env("PGBOOKEND_TEST_DRILL_HOLD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut d = Running(cmd.spawn().unwrap());
    let work = f.work.path().display().to_string();
    assert!(
        common::wait_until(Duration::from_secs(60), || !drill_processes(&work)
            .is_empty()),
        "the drill server never started"
    );
    // SAFETY: a signal to the drill we started.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let mut code = None;
    assert!(common::wait_until(Duration::from_secs(60), || {
        code = d.0.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    }));
    let out = std::mem::replace(&mut d.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let r: Run = out.into();
    eprintln!("{r:?}");
    assert_ne!(code.flatten(), Some(0), "{r:?}");
    assert!(r.stderr.contains("interrupted"), "{r:?}");
    f.assert_nothing_left();

    // Killed with SIGKILL once its server is open (held there): the server follows
    // (parent-death signal), the scratch directory stays, and the next drill removes it,
    // says so, and passes.
    let mut d = Running(cmd.spawn().unwrap());
    assert!(
        common::wait_until(Duration::from_secs(60), || server_ready(f.work.path())),
        "the drill server never opened"
    );
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    // The server gets SIGQUIT when drill dies (parent-death signal) and shuts down at
    // once; a machine busy with other tests may take a while to run it.
    let gone = common::wait_until(Duration::from_secs(90), || {
        drill_processes(&work).is_empty()
    });
    let left: Vec<String> = drill_processes(&work)
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!(
                "{stat} | {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect();
    assert!(gone, "the server outlived its drill: {left:#?}");
    let r = f.drill();
    assert_eq!(r.code, 0, "{r:?}");
    let warnings = r.json()["warnings"].to_string();
    assert!(warnings.contains(".pgbookend-drill."), "{r:?}");
    f.assert_nothing_left();
}
per_major!(drill_sigterm_t, drill_sigterm);

/// A backup whose only store is S3: drill fetches the bundle from it, writes drill.json
/// under the bundle's prefix, and `show` reads it back from there.
#[test]
fn drill_s3_store() {
    let Some(major) = newest_major() else { return };
    let s3 = pgbookend_testkit::S3Server::start();
    s3.create_bucket("pgbookend-drill");
    let c = Cluster::start(ClusterOptions::new(major));
    c.pgbench_init(1);
    let mut tool = Tool::new(&c);
    let cfg = pgbookend_testkit::temp_dir("s3cfg");
    std::fs::create_dir(cfg.path().join("tmp")).unwrap();
    for (k, v) in [
        ("TMPDIR", cfg.path().join("tmp").display().to_string()),
        ("AWS_ACCESS_KEY_ID", "AKIADRILLTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", "drill-test-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        (
            "AWS_CONFIG_FILE",
            cfg.path().join("c").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            cfg.path().join("k").display().to_string(),
        ),
    ] {
        tool.env.push((k.into(), v));
    }
    let url = "s3://pgbookend-drill/p";
    let work = pgbookend_testkit::temp_dir("drill");
    let copy = work.path().join("data");
    tool.run(&["start", "--id", "s3d", "--store", url]).ok();
    let ok = common::cp_live(c.pgdata(), &copy).unwrap();
    assert!(ok.success());
    tool.stop("s3d", &[]).ok();
    let bin = pgbookend_testkit::server_bin(major, "postgres");
    let bindir = bin.parent().unwrap().display().to_string();
    let d = copy.display().to_string();
    let r = tool.run(&[
        "drill", "--pgdata", &d, "--store", url, "--pg-bin", &bindir, "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["stored_in"][0],
        "s3://pgbookend-drill/p/s3d/drill.json"
    );
    assert!(s3.get("pgbookend-drill", "p/s3d/drill.json").is_some());
    let show = tool.run(&["show", "--store", url, "--id", "s3d"]).ok();
    assert!(show.stdout.contains("last drill: passed"), "{show:?}");
}

/// A copy and its tablespace on XFS (a loop device): drill clones both by reflink (the
/// tablespace given through a link of the operator's, cloned from its real path), passes,
/// changes neither, and leaves nothing on the filesystem.
#[test]
fn drill_reflink_xfs() {
    let Some(major) = newest_major() else { return };
    let fs = match pgbookend_testkit::LoopFs::new("xfs", 1024) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("skipped: no XFS loop filesystem here: {e}");
            return;
        }
    };
    let (f, oid) = Fixture::with_tablespace(major);
    let root = fs.path().join("restore");
    std::fs::create_dir(&root).unwrap();
    let (data, ts) = (root.join("data"), root.join("ts"));
    for (from, to) in [(f.copy(), &data), (f.work.path().join("ts"), &ts)] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(&from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let ts_link = f.work.path().join("ts-link");
    std::os::unix::fs::symlink(&ts, &ts_link).unwrap();
    let (before, ts_before) = (tree_digest(&data), tree_digest(&ts));
    let (d, store, bindir) = (data.display().to_string(), f.store(), f.pg_bin());
    let arg = format!("{oid}={}", ts_link.display());
    let r: Run = f
        .tool
        .cmd(&[
            "drill", "--pgdata", &d, "--store", &store, "--pg-bin", &bindir, "--json",
        ])
        .args(["--tablespace", &arg])
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["clone_method"], "reflink", "{r:?}");
    assert!(r.json()["checks"]["table_counts"].as_u64().unwrap() >= 5);
    let human = f.tool.run(&[
        "drill",
        "--pgdata",
        &d,
        "--store",
        &store,
        "--pg-bin",
        &bindir,
        "--tablespace",
        &arg,
    ]);
    assert_eq!(human.code, 0, "{human:?}");
    assert!(human.stdout.contains("clone: reflink clone"), "{human:?}");
    assert_eq!(tree_digest(&data), before, "drill changed the copy");
    assert_eq!(
        tree_digest(&ts),
        ts_before,
        "drill changed the tablespace copy"
    );
    assert_nothing_left_in(&root);
}
