//! Attacks through a hostile bundle or marker (issue 9, defects 2, 3, 10 and part of 12):
//! real backups made by `start`/`stop`, then `bundle.json`, the stored WAL or the copy's
//! marker altered the way someone who can write to a store or to PGDATA could. Each test
//! asserts that the harm did not happen and that pgbookend said why it refused. Also
//! hostile-bytes property loops for bundle.json, the file list and the marker.

use crate::common::tree::digest;
use crate::common::{self, Run, Tool};
use pgbookend::bundle::manifest::Manifest;
use pgbookend_testkit::{Cluster, ClusterOptions, TempDir};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A finished backup of an idle cluster and a `cp -a` copy of PGDATA taken in its window.
struct Setup {
    c: Cluster,
    tool: Tool,
    id: String,
    copy: PathBuf,
    /// Copies, tampered bundles, victims: removed on drop.
    work: TempDir,
}

impl Setup {
    fn new(major: u32, id: &str, start_args: &[&str]) -> Setup {
        let c = Cluster::start(ClusterOptions::new(major).archive_dir(true));
        c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
        let tool = Tool::new(&c);
        let work = pgbookend_testkit::temp_dir("secbundle");
        tool.start(id, start_args).ok();
        let copy = work.path().join("copy");
        let st = common::cp_live(c.pgdata(), &copy).unwrap();
        assert!(st.success());
        c.psql("SELECT pg_switch_wal()");
        tool.stop(id, &[]).ok();
        Setup {
            c,
            tool,
            id: id.to_string(),
            copy,
            work,
        }
    }

    /// A copy of the bundle under `work/<name>`, with `bundle.json` changed by `edit`.
    fn tamper(&self, name: &str, edit: impl FnOnce(&mut Value, &Path)) -> PathBuf {
        let dir = self.work.path().join(name);
        let st = common::cp_live(self.tool.bundle_dir(&self.id), &dir).unwrap();
        assert!(st.success());
        let mpath = dir.join("bundle.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        edit(&mut v, &dir);
        std::fs::write(&mpath, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        dir
    }

    fn verify(&self, bundle: &Path) -> Run {
        let b = bundle.display().to_string();
        self.tool.run(&["verify", "--bundle", &b, "--id", &self.id])
    }

    fn prepare(&self, bundle: &Path, extra: &[&str]) -> Run {
        let d = self.copy.display().to_string();
        let b = bundle.display().to_string();
        let mut args = vec!["prepare", "--pgdata", &d, "--bundle", &b];
        args.extend_from_slice(extra);
        self.tool.run(&args)
    }
}

/// A victim file with known bytes and mode, and what it must still be afterwards.
fn victim(path: &Path) -> (Vec<u8>, u32) {
    std::fs::write(path, b"precious\n").unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (b"precious\n".to_vec(), 0o100600)
}

fn assert_victim(path: &Path, want: &(Vec<u8>, u32)) {
    assert_eq!(
        &std::fs::read(path).unwrap(),
        &want.0,
        "{} changed",
        path.display()
    );
    assert_eq!(std::fs::metadata(path).unwrap().mode(), want.1);
}

/// Defect 2: an absolute or `../` WAL name (and ID) in bundle.json is refused by verify
/// and prepare; nothing is written outside the copy, the copy is unchanged.
fn wal_name_traversal(major: u32) {
    let s = Setup::new(major, "trav", &[]);
    let v = s.work.path().join("victim");
    let want = victim(&v);
    let vs = v.display().to_string();
    let abs = s.tamper("abs", |m, _| m["wal"][0]["name"] = Value::from(vs.clone()));
    // pg_wal/../../escaped resolves next to the copy, outside it.
    let rel = s.tamper("rel", |m, _| {
        m["wal"][0]["name"] = Value::from("../../escaped")
    });
    let id = s.tamper("id", |m, _| m["id"] = Value::from("../../escaped"));
    // A stored path and a bundle file name that leave the bundle (to read the victim).
    let stored = s.tamper("stored", |m, _| {
        m["wal"][0]["stored"] = Value::from("../victim")
    });
    let files = s.tamper(
        "files",
        |m, _| {
            m["files"]["../victim"] =
                serde_json::json!({"size": 9, "sha256": hex::encode(Sha256::digest(b"precious\n"))})
        },
    );
    let before = digest(&s.copy);
    for (b, field) in [
        (&abs, "wal[0]"),
        (&rel, "wal[0]"),
        (&id, "field id"),
        (&stored, "wal[0]: stored"),
        (&files, "field files"),
    ] {
        let r = s.verify(b);
        assert_eq!(r.code, 6, "{r:?}");
        assert!(
            r.all().contains(field),
            "the message names the field: {r:?}"
        );
        let r = s.prepare(b, &[]);
        assert_eq!(r.code, 6, "{r:?}");
        assert!(r.all().contains(field), "{r:?}");
        assert!(r.all().contains("hint:"), "{r:?}");
    }
    assert_victim(&v, &want);
    assert!(!s.work.path().join("escaped").exists());
    assert_eq!(digest(&s.copy), before, "the copy was changed");
    // The untouched bundle still prepares.
    s.prepare(&s.tool.bundle_dir("trav"), &["--dry-run"]).ok();
}
per_major!(wal_name_traversal_t, wal_name_traversal);

/// Defect 3: a shell payload in a WAL name is never run by the restore_command test-run,
/// and a user's template with its own quotes still works.
fn restore_command_injection(major: u32) {
    let s = Setup::new(major, "inj", &["--wal", "none"]);
    let pwned = s.work.path().join("pwned");
    let payload = format!("x; touch {}; #.history", pwned.display());
    let archive = s.c.archive_dir().unwrap();
    let b = s.tamper("inj", |m, _| {
        let mut entry = m["wal"][0].clone();
        entry["name"] = Value::from(payload.clone());
        m["wal"].as_array_mut().unwrap().insert(0, entry);
    });
    let cmd = format!("cp {}/%f \"%p\"", archive.display());
    let before = digest(&s.copy);
    let r = s.prepare(&b, &["--restore-command", &cmd]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.all().contains("wal[0]"), "{r:?}");
    let r = s.verify(&b);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(!pwned.exists(), "the payload ran");
    assert_eq!(digest(&s.copy), before);
    // The real bundle with the same template: every WAL file is fetched by the test-run.
    let names: Vec<String> = {
        let m: Manifest = serde_json::from_slice(
            &std::fs::read(s.tool.bundle_dir("inj").join("bundle.json")).unwrap(),
        )
        .unwrap();
        m.wal.iter().map(|w| w.name.clone()).collect()
    };
    assert!(
        common::wait_until(std::time::Duration::from_secs(60), || names
            .iter()
            .all(|n| archive.join(n).is_file())),
        "the server did not archive the window"
    );
    s.prepare(
        &s.tool.bundle_dir("inj"),
        &["--restore-command", &cmd, "--dry-run"],
    )
    .ok();
    assert!(!pwned.exists());
}
per_major!(restore_command_injection_t, restore_command_injection);

/// Defect 3: archive_dir from bundle.json goes into the generated restore_command quoted
/// for the shell and escaped for postgresql.auto.conf; running it fetches the file and
/// runs nothing else.
fn archive_dir_quoted(major: u32) {
    let s = Setup::new(major, "adir", &[]);
    let pwned = s.work.path().join("pwned");
    let hostile = PathBuf::from(format!(
        "{}/arch\"; touch {}; echo \"'",
        s.work.path().display(),
        pwned.display()
    ));
    std::fs::create_dir_all(&hostile).unwrap();
    std::fs::write(hostile.join("000000010000000000000042"), b"walbytes").unwrap();
    let hs = hostile.display().to_string();
    let b = s.tamper("adir", |m, _| m["archive_dir"] = Value::from(hs.clone()));
    s.prepare(&b, &[]).ok();
    let conf = std::fs::read_to_string(s.copy.join("postgresql.auto.conf")).unwrap();
    let line = conf
        .lines()
        .rfind(|l| l.starts_with("restore_command"))
        .expect("restore_command written");
    let quoted = line.split_once(" = ").unwrap().1;
    let value = unconf(quoted);
    let out = s.work.path().join("fetched");
    let cmd = value
        .replace("%f", "000000010000000000000042")
        .replace("%p", &out.display().to_string());
    let st = Command::new("sh").arg("-c").arg(&cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
    assert_eq!(std::fs::read(&out).unwrap(), b"walbytes");
    assert!(
        !pwned.exists(),
        "the directory name ran as a command: {cmd}"
    );
}
per_major!(archive_dir_quoted_t, archive_dir_quoted);

/// Reads a postgresql.conf quoted value back as the server does ('' and \ escapes).
fn unconf(q: &str) -> String {
    let inner = q.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap();
    let mut out = String::new();
    let mut it = inner.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\'' if it.peek() == Some(&'\'') => {
                it.next();
                out.push('\'');
            }
            '\\' => out.push(it.next().unwrap()),
            c => out.push(c),
        }
    }
    out
}

/// A zstd stream of `frames` concatenated frames of 64 MiB of zeros each (a few KiB).
fn zstd_bomb(frames: usize) -> Vec<u8> {
    let one = zstd::stream::encode_all(&vec![0u8; 64 << 20][..], 3).unwrap();
    one.repeat(frames)
}

/// The variable that turns [`measure_child_helper`] on.
const MEASURE_ENV: &str = "SECURITY_BUNDLE_MEASURE";

/// Runs pgbookend and returns its result and its peak RSS in KiB. The peak comes from
/// wait4's rusage in a fresh helper process (this test binary re-run as
/// [`measure_child_helper`]): a child spawned straight from the test process would count
/// the test process's own peak, which it shares until exec.
fn run_measured(tool: &Tool, args: &[&str], out_dir: &Path) -> (Run, i64) {
    let mut spec = vec![out_dir.display().to_string()];
    spec.extend(args.iter().map(|a| a.to_string()));
    // The helper's path in this test binary (`security_bundle::measure_child_helper`).
    let (_, module) = module_path!().split_once("::").unwrap();
    let helper = format!("{module}::measure_child_helper");
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([&helper, "--exact", "--test-threads=1", "--quiet"]);
    for (k, v) in &tool.env {
        c.env(k, v);
    }
    c.env_remove("PGBOOKEND_CONFIG");
    c.env(MEASURE_ENV, serde_json::to_string(&spec).unwrap());
    let out = c.output().unwrap();
    assert!(out.status.success(), "helper: {out:?}");
    let res = std::fs::read_to_string(out_dir.join("rusage")).unwrap();
    let (code, kib) = res.trim().split_once(' ').unwrap();
    let r = Run {
        code: code.parse().unwrap(),
        stdout: std::fs::read_to_string(out_dir.join("out")).unwrap(),
        stderr: std::fs::read_to_string(out_dir.join("err")).unwrap(),
    };
    (r, kib.parse().unwrap())
}

impl Setup {
    /// `verify --bundle BUNDLE --id ID`, with its peak RSS ([`run_measured`]).
    fn verify_measured(&self, bundle: &Path, id: &str) -> (Run, i64) {
        let b = bundle.display().to_string();
        let args = ["verify", "--bundle", &b, "--id", id];
        run_measured(&self.tool, &args, self.work.path())
    }
}

/// Not a test on its own (it returns at once): with [`MEASURE_ENV`] set, runs pgbookend
/// with the given arguments and writes its exit code and peak RSS (wait4) to a file.
#[test]
fn measure_child_helper() {
    let Ok(spec) = std::env::var(MEASURE_ENV) else {
        return;
    };
    let spec: Vec<String> = serde_json::from_str(&spec).unwrap();
    let dir = PathBuf::from(&spec[0]);
    let out = std::fs::File::create(dir.join("out")).unwrap();
    let err = std::fs::File::create(dir.join("err")).unwrap();
    let child = Command::new(common::bin())
        .args(&spec[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 on our own child fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain wait4 on our own child.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(got, pid);
    // Already reaped by wait4: the Child must not wait for it again.
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    std::fs::write(dir.join("rusage"), format!("{code} {}", ru.ru_maxrss)).unwrap();
}

/// Defect 10: 4 GiB of zeros in a few KiB of zstd in place of a stored WAL file (its
/// checksum in bundle.json updated): verify reports it with a bounded peak RSS.
fn zstd_bomb_bounded(major: u32) {
    let s = Setup::new(major, "bomb", &[]);
    let bomb = zstd_bomb(64);
    let b = s.tamper("bomb", |m, dir| {
        let stored = m["wal"][0]["stored"].as_str().unwrap().to_string();
        std::fs::write(dir.join(&stored), &bomb).unwrap();
        m["files"][&stored]["size"] = Value::from(bomb.len());
        m["files"][&stored]["sha256"] = Value::from(hex::encode(Sha256::digest(&bomb)));
    });
    let name = {
        let m: Manifest =
            serde_json::from_slice(&std::fs::read(b.join("bundle.json")).unwrap()).unwrap();
        m.wal[0].name.clone()
    };
    let (r, kib) = s.verify_measured(&b, "bomb");
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.all().contains(&name) && r.all().contains("more than"),
        "{r:?}"
    );
    eprintln!("verify peak RSS {kib} KiB");
    assert!(kib < 64 * 1024, "verify's peak RSS was {kib} KiB");
}
per_major!(zstd_bomb_bounded_t, zstd_bomb_bounded);

/// Defect 10: a stop_wal_file far after the start is a clear refusal, not an abort; a
/// file list with an endless line is cut at its cap.
fn huge_wal_range(major: u32) {
    let s = Setup::new(major, "range", &[]);
    let b = s.tamper("range", |m, _| {
        m["stop_wal_file"] = Value::from("00000001FFFFFFFF000000FF")
    });
    let before = digest(&s.copy);
    let (r, kib) = s.verify_measured(&b, "range");
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.all().contains("stop_wal_file") && r.all().contains("allowed"),
        "{r:?}"
    );
    assert!(kib < 64 * 1024, "peak RSS {kib} KiB");
    let r = s.prepare(&b, &[]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.all().contains("stop_wal_file"), "{r:?}");
    assert_eq!(digest(&s.copy), before);
    // A file list of one endless line (256 MiB, its checksum updated): cut at the line cap.
    let one = zstd::stream::encode_all(&vec![b'a'; 64 << 20][..], 3).unwrap();
    let list = one.repeat(4);
    let b = s.tamper("list", |m, dir| {
        let name = m["file_list"]["name"].as_str().unwrap().to_string();
        std::fs::write(dir.join(&name), &list).unwrap();
        m["files"][&name]["size"] = Value::from(list.len());
        m["files"][&name]["sha256"] = Value::from(hex::encode(Sha256::digest(&list)));
    });
    let (r, kib) = s.verify_measured(&b, "range");
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.all().contains("longer than"), "{r:?}");
    assert!(kib < 64 * 1024, "peak RSS {kib} KiB");
}
per_major!(huge_wal_range_t, huge_wal_range);

/// Defect 12: a marker whose id is absolute or holds `..` never becomes a path: prepare
/// refuses, naming the marker, and reads no bundle from there.
fn marker_id_not_a_path(major: u32) {
    let s = Setup::new(major, "mk", &[]);
    let evil = s.work.path().join("evil");
    let st = common::cp_live(s.tool.bundle_dir("mk"), &evil).unwrap();
    assert!(st.success());
    std::fs::create_dir_all(s.tool.store_path().join("x")).unwrap();
    let st = common::cp_live(s.tool.bundle_dir("mk"), s.tool.store_path().join("evilb")).unwrap();
    assert!(st.success());
    let marker = s.copy.join("pg_backup_metadata/mk/backup.json");
    let original = std::fs::read(&marker).unwrap();
    let store = s.tool.store_path().display().to_string();
    let d = s.copy.display().to_string();
    for bad in [evil.display().to_string(), "x/../evilb".to_string()] {
        let mut v: Value = serde_json::from_slice(&original).unwrap();
        v["id"] = Value::from(bad.clone());
        std::fs::write(&marker, serde_json::to_vec(&v).unwrap()).unwrap();
        let before = digest(&s.copy);
        for extra in [&[][..], &["--store", &store][..]] {
            let mut args = vec!["prepare", "--pgdata", &d];
            args.extend_from_slice(extra);
            let r = s.tool.run(&args);
            assert_eq!(r.code, 6, "{r:?}");
            assert!(
                r.all().contains("marker")
                    && (r.all().contains("invalid backup ID")
                        || r.all().contains("cannot be trusted")),
                "{r:?}"
            );
            assert!(
                !r.all().contains("bundle: "),
                "a bundle was read from {bad}: {r:?}"
            );
        }
        assert_eq!(digest(&s.copy), before);
    }
}
per_major!(marker_id_not_a_path_t, marker_id_not_a_path);

/// The stores a copy's marker names are never fetched from: a forged marker could point at
/// a forged bundle. Without --store, prepare uses only the config file's stores; the
/// marker's store appears in the hint only.
fn marker_stores_not_trusted(major: u32) {
    let s = Setup::new(major, "ms", &[]);
    // A trap store holding a perfectly valid copy of the bundle, named by the marker.
    let trap = s.work.path().join("trap");
    std::fs::create_dir_all(&trap).unwrap();
    let st = common::cp_live(s.tool.bundle_dir("ms"), trap.join("ms")).unwrap();
    assert!(st.success());
    let marker = s.copy.join("pg_backup_metadata/ms/backup.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    v["stores"] = Value::from(vec![trap.display().to_string()]);
    std::fs::write(&marker, serde_json::to_vec(&v).unwrap()).unwrap();
    let d = s.copy.display().to_string();
    let before = digest(&s.copy);
    let r = s.tool.run(&["prepare", "--pgdata", &d, "--dry-run"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.all().contains("no store or bundle given"), "{r:?}");
    assert!(
        r.all().contains(&trap.display().to_string()),
        "hint names it: {r:?}"
    );
    assert_eq!(digest(&s.copy), before);
    // The operator's configured store is used.
    let conf = s.work.path().join("pgbookend.toml");
    let real = s.tool.store_path().display().to_string();
    std::fs::write(&conf, format!("store = [{real:?}]\n")).unwrap();
    let conf = conf.display().to_string();
    let out = s
        .tool
        .cmd(&["prepare", "--pgdata", &d, "--dry-run"])
        .env("PGBOOKEND_CONFIG", &conf)
        .output()
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.all().contains(&real),
        "the configured store is the one used: {r:?}"
    );
    assert!(!r.all().contains(&trap.display().to_string()), "{r:?}");
}
per_major!(marker_stores_not_trusted_t, marker_stores_not_trusted);

/// A small deterministic generator for the hostile-bytes loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// `base` with a few bytes flipped, cut, or hostile strings spliced in.
    fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
        const HOSTILE: &[&str] = &[
            "../../etc/ld.so.preload",
            "/etc/passwd",
            "x; touch /tmp/pwned-prop; #",
            "00000001FFFFFFFF000000FF",
            "18446744073709551615",
            "\u{0}",
            "\\",
            "\"",
            "1e308",
            "-1",
        ];
        let mut v = base.to_vec();
        for _ in 0..1 + self.below(4) {
            match self.below(4) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.next() as u8;
                }
                1 => v.truncate(self.below(v.len() + 1)),
                2 => {
                    let i = self.below(v.len() + 1);
                    let h = HOSTILE[self.below(HOSTILE.len())].as_bytes();
                    v.splice(i..i, h.iter().copied());
                }
                _ => {
                    // Replace a quoted string value by a hostile one.
                    let text = String::from_utf8_lossy(&v).into_owned();
                    let quotes: Vec<usize> = text.match_indices('"').map(|(i, _)| i).collect();
                    if quotes.len() >= 2 {
                        let k = self.below(quotes.len() / 2) * 2;
                        let (a, b) = (quotes[k], quotes[k + 1]);
                        let h = HOSTILE[self.below(HOSTILE.len())].replace('"', "\\\"");
                        v = format!("{}\"{h}\"{}", &text[..a], &text[b + 1..]).into_bytes();
                    }
                }
            }
        }
        v
    }
}

/// A valid bundle.json (its files do not exist): the seed of the mutations.
const SAMPLE_MANIFEST: &str = include_str!("../data/manifest.json");

/// bundle.json: random and hostile bytes never panic the parser, the field checks or the
/// loader, and nothing hostile is accepted.
#[test]
fn bundle_json_hostile_bytes() {
    let dir = pgbookend_testkit::temp_dir("propbundle");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let base = SAMPLE_MANIFEST.as_bytes();
    assert!(serde_json::from_slice::<Manifest>(base).is_ok());
    for i in 0..3000 {
        let bytes = if i % 5 == 0 {
            (0..rng.below(600)).map(|_| rng.next() as u8).collect()
        } else {
            rng.mutate(base)
        };
        if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
            let problems = pgbookend::bundle::check::manifest_problems(&m);
            let hostile = m
                .wal
                .iter()
                .any(|w| w.name.contains('/') || w.name.contains(';'))
                || m.id.contains('/')
                || m.files.keys().any(|k| k.contains(".."));
            assert!(
                !hostile || !problems.is_empty(),
                "accepted {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        if i % 50 == 0 {
            std::fs::write(dir.path().join("bundle.json"), &bytes).unwrap();
            assert!(pgbookend::restore::load_bundle(dir.path(), None, true).is_err());
        }
    }
}

/// bundle.json larger than its cap is refused from its size, without reading it.
#[test]
fn oversized_manifest_refused() {
    let dir = pgbookend_testkit::temp_dir("bigmanifest");
    let f = std::fs::File::create(dir.path().join("bundle.json")).unwrap();
    f.set_len(8 << 30).unwrap(); // sparse: no disk, no memory
    let e = pgbookend::restore::load_bundle(dir.path(), Some("x"), true)
        .err()
        .expect("refused");
    assert!(e[0].message.contains("more than"), "{:?}", e[0]);
}

/// The file list: random bytes and compressed garbage end in an error, never a panic; a
/// line without end (256 MiB of one byte) is cut at the line cap, not buffered.
#[test]
fn file_list_hostile_bytes() {
    let dir = pgbookend_testkit::temp_dir("proplist");
    let p = dir.path().join("files.zst");
    let mut rng = Rng(42);
    let good =
        zstd::stream::encode_all(&b"PG_VERSION\nbase/1/1259\nglobal/pg_control\n"[..], 3).unwrap();
    for i in 0..400 {
        let bytes = if i % 2 == 0 {
            rng.mutate(&good)
        } else {
            let raw: Vec<u8> = rng.mutate(b"a\\nb\nbase/\\\\x\n\xff\xfe\n");
            zstd::stream::encode_all(&raw[..], 1).unwrap()
        };
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(it) = pgbookend::bundle::filelist::read(&p) {
            for r in it.take(100) {
                let _ = r;
            }
        }
    }
    let one = zstd::stream::encode_all(&vec![b'a'; 64 << 20][..], 3).unwrap();
    std::fs::write(&p, one.repeat(4)).unwrap();
    let first = pgbookend::bundle::filelist::read(&p)
        .unwrap()
        .next()
        .unwrap();
    assert!(first.unwrap_err().message.contains("longer than"));
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.zst")).unwrap();
    assert!(pgbookend::bundle::filelist::read(&dir.path().join("link.zst")).is_err());
}

/// The marker JSON: random and hostile bytes never panic its parser.
#[test]
fn marker_json_hostile_bytes() {
    let base = br#"{"format":1,"id":"m1","system_identifier":"1","pg_version_num":150004,"start_lsn":"0/1",
"start_wal_file":"000000010000000000000001","timeline":1,"start_time":"t","host":"h","pgdata":"/d","tool":"pgbookend",
"tool_version":"0","stores":["/s"],"run_dir":"/r","agent_pid":1,"token":"t"}"#;
    assert!(serde_json::from_slice::<pgbookend::agent::marker::Marker>(base).is_ok());
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let b = rng.mutate(base);
        if let Ok(m) = serde_json::from_slice::<pgbookend::agent::marker::Marker>(&b) {
            if m.id.contains('/') {
                assert!(pgbookend::id::validate(&m.id).is_err());
            }
        }
    }
}
