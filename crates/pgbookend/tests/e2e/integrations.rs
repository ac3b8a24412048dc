//! The integration guides (`docs/integrations/*.md`), exercised.
//!
//! Every fenced block of a guide carries a marker comment just above it:
//! `<!-- test: NAME -->` (run here, word for word), `<!-- check: CHECKER -->` (checked by a
//! syntax checker of its own format), or `<!-- untested: REASON -->`. For restic, borg,
//! tar and rsync, the guide's settings block is replaced by test paths and its setup,
//! backup and restore blocks are run against a real cluster under pgbench load, once
//! through `pgbookend run` and once through the hook form; the local bundle store is
//! deleted before the restore, so the bundle comes back through the program itself; the
//! restored cluster is started and checked (pgbench invariant, pg_amcheck, every canary row
//! committed before the stop LSN). Each program runs on two majors, one per form, so that
//! the four programs cover all six majors: restic 13 and 16, borg 14 and 17, tar 15 and 18,
//! rsync 17 and 14. The btrfs snapshot guide (13, 16, 18) and the reflink guide (XFS: 13, 16,
//! 18; btrfs: 18) run on real filesystems on loop devices (testkit `LoopFs`), restored
//! beside the still running original with the tablespace remapped.

use crate::common::{bin, run_for, start_restored, wait_recovered, Tool};
use crate::runkit::{amcheck_clean, canary_table, with_canary};
use pgbookend_formats::lsn::Lsn;
use pgbookend_testkit::{Cluster, ClusterOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn guides_dir() -> PathBuf {
    repo_root().join("docs/integrations")
}

/// What the comment above a fenced block says about it.
#[derive(Debug, Clone, PartialEq)]
enum Marker {
    Test(String),
    Check(String),
    Untested(String),
    Missing,
}

#[derive(Debug, Clone)]
struct Block {
    marker: Marker,
    lang: String,
    body: String,
    line: usize,
}

/// The fenced blocks of a Markdown file, each with the marker comment right above it.
fn blocks_of(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut pending: Option<Marker> = None;
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let t = line.trim();
        if let Some(fence) = t.strip_prefix("```") {
            let marker = pending.take().unwrap_or(Marker::Missing);
            let mut body = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            out.push(Block {
                marker,
                lang: fence.trim().to_string(),
                body,
                line: i + 1,
            });
            continue;
        }
        if let Some(c) = t.strip_prefix("<!--").and_then(|c| c.strip_suffix("-->")) {
            let c = c.trim();
            for (kind, f) in [
                ("test:", Marker::Test as fn(String) -> Marker),
                ("check:", Marker::Check),
                ("untested:", Marker::Untested),
            ] {
                if let Some(v) = c.strip_prefix(kind) {
                    pending = Some(f(v.trim().to_string()));
                }
            }
            continue;
        }
        if !t.is_empty() {
            pending = None;
        }
    }
    out
}

fn guide(name: &str) -> Vec<Block> {
    let path = guides_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    blocks_of(&text)
}

/// The one block of `guide` marked `marker`.
fn block(guide_name: &str, marker: Marker) -> String {
    let found: Vec<Block> = guide(guide_name)
        .into_iter()
        .filter(|b| b.marker == marker)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{guide_name} must have exactly one block marked {marker:?}"
    );
    found[0].body.clone()
}

fn guide_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(guides_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md") && n != "README.md")
        .collect();
    v.sort();
    v
}

/// The two grant blocks of the README's "Database role" section.
fn readme_grants() -> (String, String) {
    let text = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = text
        .split("### Database role")
        .nth(1)
        .expect("README has a Database role section");
    let sql: Vec<String> = section
        .split("```sql\n")
        .skip(1)
        .take(2)
        .map(|s| s.split("```").next().unwrap().to_string())
        .collect();
    assert_eq!(sql.len(), 2, "README: two grant blocks (15+, 13-14)");
    (sql[0].clone(), sql[1].clone())
}

const TEST_NAMES: [&str; 5] = ["settings", "setup", "backup-run", "backup-hooks", "restore"];
const CHECKS: [&str; 6] = [
    "grants-15",
    "grants-13",
    "shellcheck",
    "bacula-dir",
    "velero",
    "kubernetes",
];

/// Every block of every guide is marked with a known marker; the grant blocks are the
/// README's; the index and the README link every guide.
#[test]
fn guides_are_marked_and_linked() {
    let (g15, g13) = readme_grants();
    let index = std::fs::read_to_string(guides_dir().join("README.md")).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let files = guide_files();
    assert!(files.len() >= 12, "{files:?}");
    for f in &files {
        assert!(
            index.contains(&format!("]({f})")),
            "docs/integrations/README.md must link {f}"
        );
        assert!(
            readme.contains(&format!("](docs/integrations/{f})")),
            "README.md must link docs/integrations/{f}"
        );
        let blocks = guide(f);
        let mut grants = 0;
        for b in &blocks {
            match &b.marker {
                Marker::Test(n) => assert!(
                    TEST_NAMES.contains(&n.as_str()),
                    "{f}:{}: unknown test block {n:?}",
                    b.line
                ),
                Marker::Check(n) => assert!(
                    CHECKS.contains(&n.as_str()),
                    "{f}:{}: unknown checker {n:?}",
                    b.line
                ),
                Marker::Untested(why) => {
                    assert!(why.len() > 10, "{f}:{}: say why it is untested", b.line)
                }
                Marker::Missing => panic!(
                    "{f}:{}: this block has no <!-- test: / check: / untested: --> marker",
                    b.line
                ),
            }
            if b.marker == Marker::Check("grants-15".into()) {
                assert_eq!(b.body, g15, "{f}:{}: the README's grants", b.line);
                grants += 1;
            }
            if b.marker == Marker::Check("grants-13".into()) {
                assert_eq!(b.body, g13, "{f}:{}: the README's grants", b.line);
                grants += 1;
            }
        }
        assert_eq!(
            grants, 2,
            "{f}: each guide gives the role's grants for 15+ and for 13-14"
        );
        let text = std::fs::read_to_string(guides_dir().join(f)).unwrap();
        assert!(
            text.contains("## Restore") && text.contains("pgbookend prepare"),
            "{f}: a restore part that ends in prepare"
        );
    }
}

/// Every shell block of every guide passes shellcheck (warnings and errors). A block that
/// starts with `#!` is a script of its own; the other blocks of a guide read as one script
/// (later blocks use variables of earlier ones).
#[test]
fn guides_shell_passes_shellcheck() {
    for f in guide_files() {
        let mut scripts: Vec<String> = vec![String::new()];
        for b in guide(&f) {
            if b.lang != "sh" || matches!(b.marker, Marker::Untested(_)) {
                continue;
            }
            if b.body.starts_with("#!") {
                scripts.push(b.body.clone());
            } else {
                scripts[0].push_str(&b.body);
                scripts[0].push('\n');
            }
        }
        for script in scripts.iter().filter(|s| !s.is_empty()) {
            let shell = if script.starts_with("#!/bin/sh") {
                "sh"
            } else {
                "bash"
            };
            let out = pipe("shellcheck", &["-s", shell, "-S", "warning", "-"], script);
            assert!(
                out.status.success(),
                "{f}: shellcheck:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn pipe(program: &str, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/install-deps installs it)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The parts of a director configuration the guides' Job and FileSet resources refer to.
const BACULA_SKELETON: &str = r#"
Director {
  Name = backup-dir
  Password = "x"
  QueryFile = "/dev/null"
  WorkingDirectory = "/tmp"
  PidDirectory = "/tmp"
  Messages = Standard
}
Catalog { Name = MyCatalog; dbname = "bacula"; dbuser = ""; dbpassword = "" }
Messages { Name = Standard; console = all }
Storage { Name = File1; Address = backup; Password = "x"; Device = FileChgr1; Media Type = File1 }
Pool { Name = Full; Pool Type = Backup }
Client { Name = db1-fd; Address = db1; Password = "x"; Catalog = MyCatalog }
"#;

/// The Bacula and Bareos guides' director resources, parsed by Bacula's own parser
/// (bdirjson), with the pgbookend hooks where the guide says.
#[test]
fn bacula_and_bareos_configuration_parses() {
    let root = pgbookend_testkit::pg_dir().parent().unwrap().join("bacula");
    let bdirjson = root.join("usr/sbin/bdirjson");
    assert!(
        bdirjson.exists(),
        "{} is missing: run scripts/install-deps",
        bdirjson.display()
    );
    let work = pgbookend_testkit::temp_dir("bacula");
    for (f, prefix) in [("bacula.md", "bacula-%i"), ("bareos.md", "bareos-%i")] {
        let resources: Vec<String> = guide(f)
            .into_iter()
            .filter(|b| b.marker == Marker::Check("bacula-dir".into()))
            .map(|b| b.body)
            .collect();
        assert!(resources.len() >= 2, "{f}: the Job and FileSet resources");
        let conf = work.path().join(format!("{f}.conf"));
        std::fs::write(
            &conf,
            format!("{BACULA_SKELETON}\n{}", resources.join("\n")),
        )
        .unwrap();
        let out = Command::new(&bdirjson)
            .arg("-c")
            .arg(&conf)
            .env(
                "LD_LIBRARY_PATH",
                format!(
                    "{}:{}",
                    root.join("usr/lib/bacula").display(),
                    root.join("usr/lib/x86_64-linux-gnu").display()
                ),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: Bacula's parser refuses the configuration:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let jobs: Vec<&Value> = parsed
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.get("Job"))
            .collect();
        let scripts: Vec<(String, String, bool, bool)> = jobs
            .iter()
            .flat_map(|j| j["Runscript"].as_array().cloned().unwrap_or_default())
            .map(|s| {
                (
                    s["RunsWhen"].as_str().unwrap_or("").to_string(),
                    s["Command"].as_str().unwrap_or("").to_string(),
                    s["RunsOnSuccess"].as_bool().unwrap_or(true),
                    s["RunsOnFailure"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let has = |when: &str, cmd: &str, ok: bool, fail: bool| {
            scripts.iter().any(|(w, c, s, f)| {
                w == when && c.contains(cmd) && c.contains(prefix) && *s == ok && *f == fail
            })
        };
        assert!(
            has("Before", "pgbookend start --id", true, false),
            "{f}: {scripts:?}"
        );
        assert!(
            has("After", "pgbookend stop --id", true, false),
            "{f}: {scripts:?}"
        );
        assert!(
            has("After", "pgbookend abort --id", false, true),
            "{f}: {scripts:?}"
        );
        let filesets: Vec<&Value> = parsed
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.get("Fileset"))
            .collect();
        assert!(
            filesets.len() >= 2,
            "{f}: a FileSet for the data and one for the bundle store"
        );
    }
}

/// A small check of Kubernetes manifests against the parts of the schemas the guide
/// uses: Velero's Backup/Schedule hooks (velero.io/v1) and pod templates.
const MANIFEST_CHECK: &str = r#"
import sys, yaml, re, json
kind_wanted = sys.argv[1]
docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
assert docs, "no YAML document"
dur = re.compile(r'^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$')
def hooks(spec, where):
    rs = spec["hooks"]["resources"]
    assert isinstance(rs, list) and rs, where + ": hooks.resources"
    for r in rs:
        assert set(r) <= {"name", "includedNamespaces", "excludedNamespaces", "includedResources",
                          "excludedResources", "labelSelector", "pre", "post"}, r.keys()
        assert isinstance(r["name"], str)
        for phase in ("pre", "post"):
            for h in r.get(phase, []):
                e = h["exec"]
                assert set(e) <= {"container", "command", "onError", "timeout"}, e.keys()
                assert isinstance(e["command"], list) and all(isinstance(c, str) for c in e["command"])
                assert e.get("onError", "Fail") in ("Fail", "Continue")
                assert dur.match(str(e.get("timeout", "30s"))), e.get("timeout")
                print(json.dumps([phase] + e["command"]))
def pod_spec(p, where):
    for c in p.get("initContainers", []) + p["containers"]:
        assert isinstance(c["name"], str) and isinstance(c["image"], str), where
        for k in ("command", "args"):
            if k in c:
                assert all(isinstance(x, str) for x in c[k]), where
        if "command" in c:
            print(json.dumps(["container"] + c["command"]))
for d in docs:
    assert isinstance(d.get("apiVersion"), str) and isinstance(d.get("kind"), str), d
    k = d["kind"]
    if kind_wanted == "velero":
        assert d["apiVersion"] == "velero.io/v1", d["apiVersion"]
        assert k in ("Backup", "Schedule"), k
        spec = d["spec"]["template"] if k == "Schedule" else d["spec"]
        if k == "Schedule":
            assert len(d["spec"]["schedule"].split()) == 5
        if "hooks" in spec:
            hooks(spec, k)
    else:
        if k == "Pod":
            pod_spec(d["spec"], k)
        elif k in ("StatefulSet", "Deployment", "Job"):
            pod_spec(d["spec"]["template"]["spec"], k)
        elif k not in ("PersistentVolumeClaim", "Secret", "ConfigMap"):
            raise AssertionError("unexpected kind " + k)
"#;

/// The Velero guide's manifests: valid YAML (yamllint), the hook fields Velero documents,
/// and the commands inside them pass shellcheck.
#[test]
fn velero_manifests_check() {
    let mut commands: Vec<(String, String)> = Vec::new();
    for b in guide("velero.md") {
        let Marker::Check(kind) = &b.marker else {
            continue;
        };
        if kind != "velero" && kind != "kubernetes" {
            continue;
        }
        let lint = pipe(
            "yamllint",
            &[
                "-d",
                "{extends: relaxed, rules: {line-length: disable}}",
                "-",
            ],
            &b.body,
        );
        assert!(
            lint.status.success(),
            "velero.md:{}: yamllint:\n{}",
            b.line,
            String::from_utf8_lossy(&lint.stdout)
        );
        let out = pipe("/usr/bin/python3", &["-c", MANIFEST_CHECK, kind], &b.body);
        assert!(
            out.status.success(),
            "velero.md:{}: manifest check:\n{}",
            b.line,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let cmd: Vec<String> = serde_json::from_str(line).unwrap();
            if cmd.len() == 4 && cmd[1] == "/bin/sh" && cmd[2] == "-c" {
                let sc = pipe("shellcheck", &["-s", "sh", "-S", "warning", "-"], &cmd[3]);
                assert!(
                    sc.status.success(),
                    "velero.md:{}: shellcheck of {:?}:\n{}",
                    b.line,
                    cmd[3],
                    String::from_utf8_lossy(&sc.stdout)
                );
                commands.push((cmd[0].clone(), cmd[3].clone()));
            }
        }
    }
    let has =
        |phase: &str, what: &str| commands.iter().any(|(p, c)| p == phase && c.contains(what));
    assert!(has("pre", "pgbookend start --id"), "{commands:?}");
    assert!(has("post", "pgbookend stop --id"), "{commands:?}");
    assert!(has("container", "pgbookend prepare"), "{commands:?}");
}

/// The settings every tested guide may use, with the test's values.
fn settings_env(c: &Cluster, tool: &Tool, work: &Path) -> BTreeMap<String, String> {
    let w = |p: &str| work.join(p).display().to_string();
    for d in [
        "bundles",
        "archives",
        "dest",
        "home",
        "tmp",
        "cache",
        "borg-base",
    ] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    std::fs::write(work.join("restic-password"), "test-only restic password\n").unwrap();
    std::fs::write(work.join("borg-passphrase"), "test-only borg passphrase\n").unwrap();
    let bin_dir = bin().parent().unwrap().display().to_string();
    let mut m = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    set("PGDATA", c.pgdata().display().to_string());
    set("PGHOST", c.socket_dir().display().to_string());
    set("PGPORT", c.port().to_string());
    set("PGUSER", "backup".into());
    set("PGDATABASE", "postgres".into());
    set("BUNDLES", w("bundles"));
    set("RESTIC_REPOSITORY", w("restic"));
    set("RESTIC_PASSWORD_FILE", w("restic-password"));
    set("BORG_REPO", w("borg"));
    set("BORG_PASSCOMMAND", format!("cat {}", w("borg-passphrase")));
    set("ARCHIVES", w("archives"));
    set("DEST", w("dest"));
    // Not settings of the guides: where the tools keep their state in this test.
    set("PATH", format!("{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"));
    set("HOME", w("home"));
    set("TMPDIR", w("tmp"));
    set("XDG_CACHE_HOME", w("cache"));
    set("RESTIC_CACHE_DIR", w("cache"));
    set("BORG_BASE_DIR", w("borg-base"));
    set("LANG", "C.UTF-8".into());
    set("PGPASSFILE", "/nonexistent".into());
    set("PGBOOKEND_RUN_DIR", tool.run_dir().display().to_string());
    set(
        "PGBOOKEND_STATE_DIR",
        tool.run_dir.path().join("state").display().to_string(),
    );
    m
}

/// Runs one guide block with bash, as a script of its own.
fn run_block(name: &str, body: &str, env: &BTreeMap<String, String>, cwd: &Path) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", body])
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "block {name} failed ({}):\n{body}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Run,
    Hooks,
}

/// One guide, end to end: the role's grants, setup, a backup under load, the local
/// bundle store deleted, the cluster's data directory and tablespace deleted, the guide's
/// restore (the program's own restore commands and prepare), then the server started and
/// checked.
/// What every guide run starts with: pgbench tables, the canary table in ts1, the guide's
/// grants, a Tool, a work directory and the settings (the test's values for every setting
/// the guide's settings block exports, plus `extra`).
fn guide_setup(
    file: &str,
    c: &Cluster,
    major: u32,
    extra: &[(&'static str, PathBuf)],
) -> (Tool, pgbookend_testkit::TempDir, BTreeMap<String, String>) {
    c.pgbench_init(1);
    canary_table(c, Some("ts1"));
    let grants = if major >= 15 {
        "grants-15"
    } else {
        "grants-13"
    };
    c.psql(&block(file, Marker::Check(grants.into())));
    let tool = Tool::new(c);
    let work = pgbookend_testkit::temp_dir("guide");
    let mut env = settings_env(c, &tool, work.path());
    for (k, v) in extra {
        env.insert(k.to_string(), v.display().to_string());
    }
    for line in block(file, Marker::Test("settings".into())).lines() {
        if let Some(rest) = line.trim().strip_prefix("export ") {
            let name = rest.split('=').next().unwrap();
            assert!(
                env.contains_key(name),
                "{file}: the test has no value for setting {name}"
            );
        }
    }
    (tool, work, env)
}

fn guide_end_to_end(file: &str, form: Form, major: u32) {
    let c = Cluster::start(
        ClusterOptions::new(major)
            .data_checksums(true)
            .tablespace(true),
    );
    let (_tool, work, env) = guide_setup(file, &c, major, &[]);
    let has = |name: &str| {
        guide(file)
            .iter()
            .any(|b| b.marker == Marker::Test(name.into()))
    };
    if has("setup") {
        run_block(
            "setup",
            &block(file, Marker::Test("setup".into())),
            &env,
            work.path(),
        );
    }
    let backup = match form {
        Form::Run => "backup-run",
        Form::Hooks => "backup-hooks",
    };
    let body = block(file, Marker::Test(backup.into()));
    let ((), canary) = with_canary(&c, || {
        let bench = c.pgbench_background(2, 3);
        run_block(backup, &body, &env, work.path());
        bench.wait().expect("pgbench");
    });

    // The one bundle of this backup, as stop wrote it.
    let bundles = work.path().join("bundles");
    let ids: Vec<String> = std::fs::read_dir(&bundles)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1, "one bundle: {ids:?}");
    let id = ids[0].clone();
    let b: Value =
        serde_json::from_slice(&std::fs::read(bundles.join(&id).join("bundle.json")).unwrap())
            .unwrap();
    let start_lsn: Lsn = b["start_lsn"].as_str().unwrap().parse().unwrap();
    let stop_lsn: Lsn = b["stop_lsn"].as_str().unwrap().parse().unwrap();
    assert!(
        !c.pgdata().join("pg_backup_metadata").join(&id).exists(),
        "the marker is gone from the live data directory"
    );

    // Disaster: the server, its data directory, its tablespace and the local bundle
    // store are gone; only the backup program's repository is left.
    c.stop();
    let ts = c.tablespace_dir().unwrap();
    std::fs::remove_dir_all(c.pgdata()).unwrap();
    std::fs::remove_dir_all(&ts).unwrap();
    std::fs::remove_dir_all(&bundles).unwrap();
    run_block(
        "restore",
        &block(file, Marker::Test("restore".into())),
        &env,
        work.path(),
    );
    assert!(
        c.pgdata().join("backup_label").exists(),
        "prepare put the label back"
    );
    c.start_again()
        .unwrap_or_else(|log| panic!("the restored cluster did not start:\n{log}"));
    wait_recovered(&c);
    assert!(c.pgbench_invariant_ok(), "pgbench's invariant must hold");
    amcheck_clean(&c);
    let last = canary.check(&c, start_lsn, stop_lsn);
    eprintln!(
        "{file} ({form:?}, PostgreSQL {major}): backup {id}, window {start_lsn}..{stop_lsn}, last canary row before stop: {last}"
    );
    c.psql("INSERT INTO canary VALUES (1000000)");
}

macro_rules! guide_test {
    ($name:ident, $file:expr, $form:expr, $major:expr) => {
        #[test]
        fn $name() {
            run_for($major, |m| guide_end_to_end($file, $form, m));
        }
    };
}

guide_test!(restic_run_pg13, "restic.md", Form::Run, 13);
guide_test!(restic_hooks_pg16, "restic.md", Form::Hooks, 16);
guide_test!(borg_run_pg14, "borg.md", Form::Run, 14);
guide_test!(borg_hooks_pg17, "borg.md", Form::Hooks, 17);
guide_test!(tar_run_pg15, "tar-cron.md", Form::Run, 15);
guide_test!(tar_hooks_pg18, "tar-cron.md", Form::Hooks, 18);
guide_test!(rsync_run_pg17, "rsync.md", Form::Run, 17);
guide_test!(rsync_hooks_pg14, "rsync.md", Form::Hooks, 14);

#[test]
fn markers_parse() {
    let md = "text\n<!-- test: restore -->\n```sh\necho hi\n```\n\n```sql\nx\n```\n<!-- untested: because it is long enough -->\n\n```text\ny\n```\n";
    let b = blocks_of(md);
    assert_eq!(b.len(), 3);
    assert_eq!(b[0].marker, Marker::Test("restore".into()));
    assert_eq!(b[0].body, "echo hi\n");
    assert_eq!(b[1].marker, Marker::Missing);
    assert_eq!(
        b[2].marker,
        Marker::Untested("because it is long enough".into())
    );
}

/// The filesystem layout a snapshot or reflink guide runs on: its mounts and the settings
/// the guide names beyond [`settings_env`]'s.
struct FsLayout {
    _mounts: Vec<pgbookend_testkit::LoopFs>,
    /// Where the cluster's directory is created (inside a subvolume for btrfs.md).
    cluster_in: PathBuf,
    /// The tablespace directory (in its own subvolume for btrfs.md).
    tablespace: PathBuf,
    extra: Vec<(&'static str, PathBuf)>,
    /// Where the guide's restore puts the data directory, given the original one.
    restored: fn(&FsLayout, &Path) -> PathBuf,
}

fn mkdir_owned_by_server(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    let (_, uid, gid) = pgbookend_testkit::server_user().expect("a server user");
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn btrfs(args: &[&str]) {
    let out = Command::new("btrfs").args(args).output().expect("btrfs");
    assert!(
        out.status.success(),
        "btrfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// btrfs.md: two btrfs filesystems; the data directory and the tablespace in their own
/// subvolumes of the first; BACKUP and RESTORE on the second.
fn btrfs_layout() -> Result<FsLayout, String> {
    let src = pgbookend_testkit::LoopFs::new("btrfs", 1024)?;
    let dst = pgbookend_testkit::LoopFs::new("btrfs", 1024)?;
    let (s, d) = (src.path(), dst.path());
    btrfs(&["subvolume", "create", &s.join("pg").display().to_string()]);
    btrfs(&["subvolume", "create", &s.join("pgts").display().to_string()]);
    mkdir_owned_by_server(&s.join("pgts/ts1"));
    std::fs::create_dir(s.join(".snapshots")).unwrap();
    std::fs::create_dir(d.join("pg")).unwrap();
    let subvolumes = format!("{} {}", s.join("pg").display(), s.join("pgts").display());
    Ok(FsLayout {
        cluster_in: s.join("pg"),
        tablespace: s.join("pgts/ts1"),
        extra: vec![
            ("SUBVOLUMES", PathBuf::from(subvolumes)),
            ("SNAPSHOTS", s.join(".snapshots")),
            ("BACKUP", d.join("pg")),
            ("RESTORE", d.join("restored")),
        ],
        restored: |l, pgdata| {
            let rel = pgdata.strip_prefix(&l.cluster_in).unwrap();
            l.extra[3].1.join("pg").join(rel)
        },
        _mounts: vec![src, dst],
    })
}

/// reflink.md: one XFS or btrfs filesystem holding everything.
fn reflink_layout(fstype: &str) -> Result<FsLayout, String> {
    let fs = pgbookend_testkit::LoopFs::new(fstype, 1024)?;
    let m = fs.path();
    std::fs::create_dir(m.join("pg")).unwrap();
    mkdir_owned_by_server(&m.join("pgts/ts1"));
    std::fs::create_dir(m.join("copies")).unwrap();
    Ok(FsLayout {
        cluster_in: m.join("pg"),
        tablespace: m.join("pgts/ts1"),
        extra: vec![
            ("COPIES", m.join("copies")),
            ("RESTORE", m.join("restored")),
        ],
        restored: |l, _| l.extra[1].1.clone(),
        _mounts: vec![fs],
    })
}

/// A snapshot or reflink guide, word for word, on real loop-mounted filesystems: backup
/// through its hook form under pgbench load, restore beside the running original with the
/// tablespace remapped, the restored server started and checked.
fn fs_guide_end_to_end(file: &str, layout: Result<FsLayout, String>, major: u32) {
    let layout = match layout {
        Ok(l) => l,
        Err(why) => {
            eprintln!("skipped {file} on PostgreSQL {major}: {why}");
            return;
        }
    };
    let c = Cluster::start(
        ClusterOptions::new(major)
            .data_checksums(true)
            .base_in(&layout.cluster_in),
    );
    c.psql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        layout.tablespace.display()
    ));
    let (_tool, work, env) = guide_setup(file, &c, major, &layout.extra);
    let body = block(file, Marker::Test("backup-hooks".into()));
    let ((), canary) = with_canary(&c, || {
        let bench = c.pgbench_background(2, 3);
        run_block("backup-hooks", &body, &env, work.path());
        bench.wait().expect("pgbench");
    });
    let bundles = work.path().join("bundles");
    let id = std::fs::read_dir(&bundles)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .next()
        .expect("a bundle");
    let b: Value =
        serde_json::from_slice(&std::fs::read(bundles.join(&id).join("bundle.json")).unwrap())
            .unwrap();
    let start_lsn: Lsn = b["start_lsn"].as_str().unwrap().parse().unwrap();
    let stop_lsn: Lsn = b["stop_lsn"].as_str().unwrap().parse().unwrap();

    // The original keeps running: the restore happens beside it.
    run_block(
        "restore",
        &block(file, Marker::Test("restore".into())),
        &env,
        work.path(),
    );
    let pgdata = (layout.restored)(&layout, c.pgdata());
    let links: Vec<PathBuf> = std::fs::read_dir(pgdata.join("pg_tblspc"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_ne!(links[0], layout.tablespace, "the tablespace was remapped");
    let rbase = pgbookend_testkit::temp_dir("restored");
    let r = start_restored(major, &pgdata, rbase.path());
    assert!(r.pgbench_invariant_ok(), "pgbench's invariant must hold");
    amcheck_clean(&r);
    let last = canary.check(&r, start_lsn, stop_lsn);
    r.psql("INSERT INTO canary VALUES (1000000)");
    assert!(
        c.pgbench_invariant_ok(),
        "the original still runs, untouched"
    );
    eprintln!(
        "{file} (PostgreSQL {major}): backup {id}, window {start_lsn}..{stop_lsn}, last canary row before stop: {last}"
    );
    drop(r);
    drop(c);
}

macro_rules! fs_guide_test {
    ($name:ident, $file:expr, $layout:expr, $major:expr) => {
        #[test]
        fn $name() {
            run_for($major, |m| fs_guide_end_to_end($file, $layout, m));
        }
    };
}

fs_guide_test!(btrfs_snapshots_pg13, "btrfs.md", btrfs_layout(), 13);
fs_guide_test!(btrfs_snapshots_pg16, "btrfs.md", btrfs_layout(), 16);
fs_guide_test!(btrfs_snapshots_pg18, "btrfs.md", btrfs_layout(), 18);
fs_guide_test!(reflink_xfs_pg13, "reflink.md", reflink_layout("xfs"), 13);
fs_guide_test!(reflink_xfs_pg16, "reflink.md", reflink_layout("xfs"), 16);
fs_guide_test!(reflink_xfs_pg18, "reflink.md", reflink_layout("xfs"), 18);
fs_guide_test!(
    reflink_btrfs_pg18,
    "reflink.md",
    reflink_layout("btrfs"),
    18
);
