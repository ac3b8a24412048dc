//! End-to-end tests of S3 stores against a real local S3 server (moto), and of `list`,
//! `show`, `expire` on S3 and local stores: backups through the hooks into both kinds at
//! once, the S3 server vanishing during `stop` (with and without `--min-stores`), bundles
//! fetched back byte for byte and checked, multipart uploads, expiry, and no credential in
//! any output.

use crate::common::{self, newest_major, Run, Tool};
use pgbookend::bundle::manifest::FileEntry;
use pgbookend::store::s3::{Client, Credentials, S3Url, Settings};
use pgbookend_testkit::{Cluster, ClusterOptions, Gate, S3Server, TempDir};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Distinctive credentials: none of them may appear in any output.
const KEY_ID: &str = "AKIAPGBOOKENDTEST0042";
const SECRET: &str = "pgbookend/Secret+Access+Key/0123456789abcdefXYZ";
const TOKEN: &str = "pgbookend-Session-Token-7f3e9d1c5b2a";
const BUCKET: &str = "pgbookend-test";

/// A tool whose commands see S3 credentials in their environment, an S3 endpoint, and a
/// config file with a short retry bound (so that a vanished server fails `stop` quickly).
struct S3Tool {
    tool: Tool,
    config: PathBuf,
    _config_dir: TempDir,
    /// `s3://BUCKET/<prefix>`.
    url: String,
}

impl S3Tool {
    fn new(c: &Cluster, endpoint: &str, prefix: &str) -> S3Tool {
        let mut tool = Tool::new(c);
        let dir = pgbookend_testkit::temp_dir("s3cfg");
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        for (k, v) in [
            // Where an agent stages bundles for S3-only backups: removed with the test.
            ("TMPDIR", dir.path().join("tmp").display().to_string()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_SESSION_TOKEN", TOKEN.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
            // Keep the developer's ~/.aws out of the tests.
            (
                "AWS_CONFIG_FILE",
                dir.path().join("aws-config").display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("aws-credentials").display().to_string(),
            ),
        ] {
            tool.env.push((k.into(), v));
        }
        let config = dir.path().join("pgbookend.toml");
        std::fs::write(&config, "s3_retry_timeout = \"3s\"\n").unwrap();
        S3Tool {
            tool,
            config,
            _config_dir: dir,
            url: format!("s3://{BUCKET}/{prefix}"),
        }
    }

    /// The agents' $TMPDIR.
    fn tmpdir(&self) -> PathBuf {
        self._config_dir.path().join("tmp")
    }

    fn local(&self) -> String {
        self.tool.store_path().display().to_string()
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.tool.cmd(args);
        c.env("PGBOOKEND_CONFIG", &self.config);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run pgbookend").into()
    }

    /// `start` into the local store and the S3 store.
    fn start_both(&self, id: &str, extra: &[&str]) -> Run {
        let (local, s3) = (self.local(), self.url.clone());
        let mut args = vec![
            "start", "--id", id, "--store", &local, "--store", &s3, "--json",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

/// The S3 client of the test process itself (library API, explicit settings).
fn client(s3: &S3Server, url: &str) -> Client {
    Client::open_with(
        &S3Url::parse(url).unwrap(),
        &Settings {
            endpoint: Some(s3.endpoint()),
            retry_timeout_ms: Some(3000),
            ..Default::default()
        },
        Some(&Credentials {
            access_key_id: KEY_ID.into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        }),
    )
    .unwrap()
}

/// Every file below `dir`, relative path to bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(d: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &r, out);
            } else {
                out.insert(r, std::fs::read(e.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

/// Writes about `mb` MB of incompressible data, so the window's WAL is large and its
/// segments do not shrink under zstd (multipart uploads, long uploads).
fn random_load(c: &Cluster, mb: u32) {
    c.psql("CREATE TABLE IF NOT EXISTS rnd (i int, b bytea); ALTER TABLE rnd ALTER COLUMN b SET STORAGE EXTERNAL");
    c.psql(&format!(
        "INSERT INTO rnd SELECT i, (SELECT string_agg(decode(md5(random()::text || i || '/' || j), 'hex'), ''::bytea) FROM generate_series(1, 256) j) FROM generate_series(1, {}) i",
        mb * 256
    ));
}

/// Backups through the hooks into a local and an S3 store at once: both hold the same
/// complete bundle (every object byte for byte), `list` and `show` agree on both, and the
/// bundle fetched back from S3 (checksums checked) equals the local store's copy.
fn hooks_local_and_s3(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major));
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let t = S3Tool::new(&c, &s3.endpoint(), "cluster/a");
    let id = format!("both{major}");
    let r = t.start_both(&id, &[]).ok().json();
    assert_eq!(
        r["stores"],
        serde_json::json!([t.local(), format!("s3://{BUCKET}/cluster/a")])
    );
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) i");
    if major == 18 || pgbookend_testkit::majors().len() == 1 {
        // One big random WAL segment: its zstd form exceeds the part size (multipart).
        random_load(&c, 20);
    }
    let stop = t.tool.stop(&id, &[]).ok().json();
    let stores = stop["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 2);
    assert!(stores.iter().all(|s| s["ok"] == true), "{stop}");
    assert_eq!(
        stores[1]["location"],
        format!("s3://{BUCKET}/cluster/a/{id}/")
    );
    assert_eq!(stop["min_stores"], 2);

    // The S3 objects are exactly the local bundle's files, byte for byte.
    let local = files(&t.tool.bundle_dir(&id));
    let keys: BTreeSet<String> = s3
        .keys(BUCKET, &format!("cluster/a/{id}/"))
        .into_iter()
        .collect();
    let want: BTreeSet<String> = local
        .keys()
        .map(|k| format!("cluster/a/{id}/{k}"))
        .collect();
    assert_eq!(keys, want);
    for (name, bytes) in &local {
        let got = s3.get(BUCKET, &format!("cluster/a/{id}/{name}")).unwrap();
        assert!(&got == bytes, "{name} differs in S3");
    }

    // list and show agree on both stores.
    let ll = t
        .run(&["list", "--store", &t.local(), "--json"])
        .ok()
        .json();
    let ls = t.run(&["list", "--store", &t.url, "--json"]).ok().json();
    let strip = |v: &Value| {
        let mut b = v["bundles"].as_array().unwrap().clone();
        for x in &mut b {
            x.as_object_mut().unwrap().remove("location");
            x.as_object_mut().unwrap().remove("modified");
        }
        b
    };
    assert_eq!(strip(&ll), strip(&ls));
    let b = &ls["bundles"][0];
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["complete"], true);
    assert_eq!(b["system_identifier"], c.system_identifier().to_string());
    assert_eq!(b["pg_major"], major);
    assert_eq!(b["start_wal_file"], stop["start_wal_file"]);
    assert_eq!(b["stop_wal_file"], stop["stop_wal_file"]);
    assert_eq!(
        b["size_bytes"].as_u64().unwrap(),
        local.values().map(|v| v.len() as u64).sum::<u64>()
    );
    let human = t.run(&["list", "--store", &t.url]).ok();
    assert!(
        human.stdout.contains(&id) && human.stdout.contains("complete"),
        "{human:?}"
    );
    let show = t
        .run(&["show", "--store", &t.url, "--id", &id, "--json"])
        .ok()
        .json();
    let on_disk: Value = serde_json::from_slice(&local["bundle.json"]).unwrap();
    assert_eq!(show["bundle"], on_disk);
    assert_eq!(show["complete"], true);
    let show_h = t.run(&["show", "--store", &t.url, "--id", &id]).ok();
    assert!(show_h.stdout.contains("(complete)"), "{show_h:?}");
    assert!(show_h.stdout.contains(&c.system_identifier().to_string()));

    // fetch_bundle from S3 gives the local store's bundle, byte for byte.
    let scratch = pgbookend_testkit::temp_dir("fetch");
    let dir = pgbookend::store::s3::fetch_bundle_with(
        &client(&s3, &format!("s3://{BUCKET}/cluster/a")),
        &id,
        scratch.path(),
    )
    .unwrap();
    assert_eq!(dir, scratch.path().join(&id));
    assert!(
        files(&dir) == local,
        "fetched bundle differs from the local copy"
    );
}
per_major!(hooks_local_and_s3_t, hooks_local_and_s3);

/// Multipart upload of a file larger than the part size, verified; an upload whose file
/// does not match its checksum is refused and leaves no object; a bundle damaged in the
/// store is refused at fetch (exit class "check").
#[test]
fn multipart_verify_and_damaged_fetch() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let c = client(&s3, &format!("s3://{BUCKET}/mp"));
    let dir = pgbookend_testkit::temp_dir("mp");
    let big = dir.path().join("big");
    let mut data = vec![0u8; 2 * pgbookend::store::s3::PART_SIZE + 12345];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&big, &data).unwrap();
    let entry = FileEntry {
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(&data)),
    };
    c.upload_file("b1/big", &big, &entry).unwrap();
    let (size, etag) = c.head("b1/big").unwrap().unwrap();
    assert_eq!(size, data.len() as u64);
    assert!(
        etag.unwrap_or_default().trim_matches('"').ends_with("-3"),
        "three parts"
    );
    assert!(s3.get(BUCKET, "mp/b1/big").unwrap() == data);

    let wrong = FileEntry {
        size: entry.size,
        sha256: "0".repeat(64),
    };
    let e = c.upload_file("b1/bad", &big, &wrong).unwrap_err();
    assert!(e.message.contains("changed"), "{e}");
    assert!(!s3.keys(BUCKET, "mp/").iter().any(|k| k.ends_with("/bad")));

    // A whole bundle put by hand, then one object damaged in the store.
    let small = b"backup label bytes".to_vec();
    let manifest = serde_json::json!({
        "format": 1, "id": "dmg", "system_identifier": "1", "pg_version_num": 160000,
        "pg_major": 16, "timeline": 1, "start_lsn": "0/1", "stop_lsn": "0/2",
        "checkpoint_lsn": "0/1", "start_wal_file": "000000010000000000000001",
        "stop_wal_file": "000000010000000000000001", "wal_segment_size": 16777216,
        "backup_from": "primary", "start_time": "2026-01-01T00:00:00Z",
        "stop_time": "2026-01-01T00:00:01Z", "host": "h", "pgdata": "/d", "tablespaces": [],
        "data_checksums": false, "tool": "pgbookend", "tool_version": "0",
        "wal_mode": "none", "wal_archive": "not_waited", "wal": [],
        "files": { "backup_label": { "size": small.len(), "sha256": hex::encode(Sha256::digest(&small)) } }
    });
    s3.put(BUCKET, "mp/dmg/backup_label", &small);
    s3.put(
        BUCKET,
        "mp/dmg/bundle.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let scratch = pgbookend_testkit::temp_dir("fetch");
    let ok = pgbookend::store::s3::fetch_bundle_with(&c, "dmg", scratch.path()).unwrap();
    assert_eq!(std::fs::read(ok.join("backup_label")).unwrap(), small);
    s3.put(BUCKET, "mp/dmg/backup_label", b"backup label bytez");
    let e = pgbookend::store::s3::fetch_bundle_with(&c, "dmg", scratch.path()).unwrap_err();
    assert_eq!(e.class().exit_code(), 6, "{e}");
    assert!(e.message.contains("backup_label"), "{e}");
    let e = pgbookend::store::s3::fetch_bundle_with(&c, "nope", scratch.path()).unwrap_err();
    assert_eq!(e.class().exit_code(), 2, "{e}");
}

/// Waits until the S3 server holds at least one object below `prefix`.
fn wait_first_object(s3: &S3Server, prefix: &str) {
    let t0 = Instant::now();
    while s3.keys(BUCKET, prefix).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no upload to {prefix} started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The S3 server vanishes while `stop` uploads: without --min-stores `stop` fails (exit 4)
/// naming the S3 store, the local store has the complete bundle, and the S3 store holds no
/// bundle.json (only a partial bundle, listed as such). With --min-stores 1, the S3 server
/// killed mid-upload: `stop` exits 0 and says which store failed and why.
#[test]
fn s3_server_stopped_during_stop() {
    let Some(major) = newest_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    let mut s3 = S3Server::start();
    s3.create_bucket(BUCKET);

    // 1. Through a gate that is cut mid-upload (the data behind it survives to be checked).
    let mut gate = Gate::open(s3.port());
    let t = S3Tool::new(&c, &gate.endpoint(), "cut");
    t.start_both("cut1", &[]).ok();
    random_load(&c, 48);
    let stop = {
        let mut cmd = t.tool.cmd(&["stop", "--id", "cut1", "--json"]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    wait_first_object(&s3, "cut/cut1/");
    gate.cut();
    let r: Run = stop.wait_with_output().unwrap().into();
    assert_eq!(r.code, 7, "fewer stores than required: rescuable: {r:?}");
    assert!(
        r.stderr.contains("could not be written to")
            && r.stderr.contains("s3://pgbookend-test/cut"),
        "{r:?}"
    );
    assert!(r.stderr.contains("the bundle is complete in"), "{r:?}");
    let j = r.json();
    assert_eq!(j["stores"][0]["ok"], true);
    assert_eq!(j["stores"][1]["ok"], false);
    assert!(!j["stores"][1]["error"].as_str().unwrap().is_empty());
    assert!(t.tool.bundle_dir("cut1").join("bundle.json").is_file());
    let keys = s3.keys(BUCKET, "cut/cut1/");
    assert!(!keys.is_empty());
    assert!(
        !keys.iter().any(|k| k.ends_with("bundle.json")),
        "no complete-looking bundle on the failed store: {keys:?}"
    );
    let direct = S3Tool::new(&c, &s3.endpoint(), "cut");
    let l = direct
        .run(&["list", "--store", &direct.url, "--json"])
        .ok()
        .json();
    assert_eq!(l["bundles"][0]["id"], "cut1");
    assert_eq!(l["bundles"][0]["complete"], false);
    let sh = direct
        .run(&["show", "--store", &direct.url, "--id", "cut1"])
        .ok();
    assert!(
        sh.stdout.contains("PARTIAL") || sh.stdout.contains("RESCUABLE"),
        "{sh:?}"
    );
    let fetch = direct.run(&["verify", "--store", &direct.url, "--id", "cut1"]);
    assert_ne!(fetch.code, 0, "a partial bundle does not verify: {fetch:?}");

    // 2. --min-stores 1, and the S3 server itself killed mid-upload.
    direct.start_both("cut2", &["--min-stores", "1"]).ok();
    random_load(&c, 48);
    let stop = {
        let mut cmd = direct.tool.cmd(&["stop", "--id", "cut2"]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    wait_first_object(&s3, "cut/cut2/");
    s3.kill();
    let r: Run = stop.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("bundle NOT written to s3://pgbookend-test/cut"),
        "{r:?}"
    );
    assert!(r.stdout.contains("1 of 2 stores"), "{r:?}");
    let st = direct.tool.status("cut2").ok().json();
    let stores = &st["stop"]["stores"];
    assert_eq!(stores[0]["ok"], true);
    assert_eq!(stores[1]["ok"], false);
    assert!(!stores[1]["error"].as_str().unwrap().is_empty(), "{st}");
    assert_eq!(st["stop"]["min_stores"], 1);
    assert!(direct.tool.bundle_dir("cut2").join("bundle.json").is_file());

    // 3. Only an S3 store: the bundle is staged in the state directory (not $TMPDIR, not
    // the run directory) and uploaded, and the staging is removed; when the server is gone
    // at stop, the label and the staged bundle stay in the rescue copy (exit 7); a store
    // unreachable at start is refused.
    let s3b = S3Server::start();
    s3b.create_bucket(BUCKET);
    let only = S3Tool::new(&c, &s3b.endpoint(), "only");
    let staged = |id: &str| {
        std::fs::read_dir(only.tmpdir())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("pgbookend-stage.{id}."))
            })
    };
    only.run(&["start", "--id", "so", "--store", &only.url])
        .ok();
    let r = only.tool.stop("so", &[]).ok().json();
    assert_eq!(
        r["stores"][0]["location"],
        format!("s3://{BUCKET}/only/so/")
    );
    assert!(s3b.get(BUCKET, "only/so/bundle.json").is_some());
    assert!(
        !staged("so") && !only.tool.run_dir.path().join("state/rescue/so").exists(),
        "the staging directory is removed after the upload"
    );
    let r = only.run(&[
        "start",
        "--id",
        "dn3",
        "--store",
        "s3://no-such-bucket-here/x",
    ]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    only.run(&["start", "--id", "dn", "--store", &only.url])
        .ok();
    drop(s3b);
    let r = only.tool.stop("dn", &[]);
    assert_eq!(r.code, 7, "{r:?}");
    let rescue = only.tool.run_dir.path().join("state/rescue/dn");
    assert!(
        r.stderr
            .contains(&format!("the label is saved in {}", rescue.display())),
        "{r:?}"
    );
    assert!(rescue.join("stage/dn/bundle.json").is_file(), "{r:?}");
    assert!(rescue.join("backup_label").is_file());
    assert!(
        !only.tool.run_dir().join("dn/rescue").exists(),
        "nothing in /run"
    );
    let cl = only.run(&["cleanup"]).ok();
    assert!(cl.stdout.contains("rescuable"), "{cl:?}");

    let down = S3Tool::new(&c, "http://127.0.0.1:1", "down");
    let r = down.run(&["start", "--id", "dn2", "--store", &down.url, "--json"]);
    assert_eq!(r.code, 4, "start refuses a store it cannot reach: {r:?}");
    assert!(r.stderr.contains("hint:"), "{r:?}");
    assert!(!c.pgdata().join("pg_backup_metadata/dn2").exists());
}

/// `expire --keep-last 2` over five bundles removes the three oldest and nothing else, on
/// S3 and local stores; `--dry-run` removes nothing; partial bundles are left alone unless
/// older than a day and `--include-partial` is given.
#[test]
fn expire_keep_last() {
    let Some(major) = newest_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let t = S3Tool::new(&c, &s3.endpoint(), "exp");
    for i in 1..=5 {
        let id = format!("b{i}");
        t.start_both(&id, &["--wal", "none"]).ok();
        t.tool.stop(&id, &["--no-wait-archive"]).ok();
    }
    // Things expire must not touch: a young partial bundle and an object outside bundles.
    s3.put(BUCKET, "exp/partial1/backup_label", b"x");
    s3.put(BUCKET, "exp/notes.txt", b"mine");
    let local = t.tool.store_path().to_path_buf();
    std::fs::create_dir_all(local.join("partial1")).unwrap();
    std::fs::write(local.join("partial1/backup_label"), b"x").unwrap();
    std::fs::create_dir_all(local.join("oldpart/wal")).unwrap();
    std::fs::write(local.join("oldpart/wal/x.zst"), b"x").unwrap();
    let touched = std::process::Command::new("touch")
        .args(["-d", "3 days ago"])
        .arg(local.join("oldpart/wal/x.zst"))
        .status()
        .unwrap();
    assert!(touched.success());

    let before: BTreeSet<String> = s3.keys(BUCKET, "exp/").into_iter().collect();
    let dry = t
        .run(&[
            "expire",
            "--store",
            &t.url,
            "--keep-last",
            "2",
            "--dry-run",
            "--json",
        ])
        .ok()
        .json();
    let ids = |v: &Value, k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&dry, "removed"), ["b1", "b2", "b3"]);
    assert_eq!(dry["dry_run"], true);
    let after_dry: BTreeSet<String> = s3.keys(BUCKET, "exp/").into_iter().collect();
    assert_eq!(before, after_dry, "--dry-run removes nothing");
    let h = t
        .run(&["expire", "--store", &t.url, "--keep-last", "2", "--dry-run"])
        .ok();
    assert!(h.stdout.contains("would remove b1"), "{h:?}");

    let real = t
        .run(&["expire", "--store", &t.url, "--keep-last", "2", "--json"])
        .ok()
        .json();
    assert_eq!(ids(&real, "removed"), ["b1", "b2", "b3"]);
    assert_eq!(ids(&real, "kept"), ["b4", "b5"]);
    let after: BTreeSet<String> = s3.keys(BUCKET, "exp/").into_iter().collect();
    let expected: BTreeSet<String> = before
        .iter()
        .filter(|k| {
            !["exp/b1/", "exp/b2/", "exp/b3/"]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .cloned()
        .collect();
    assert_eq!(after, expected, "the three oldest and nothing else");
    assert!(after.contains("exp/partial1/backup_label") && after.contains("exp/notes.txt"));
    assert_eq!(real["partial"][0]["id"], "partial1");
    assert_eq!(real["partial"][0]["removed"], false);

    // Local store, with --include-partial: the day-old partial goes, the young one stays.
    let lr = t
        .run(&[
            "expire",
            "--store",
            &t.local(),
            "--keep-last",
            "2",
            "--include-partial",
            "--json",
        ])
        .ok()
        .json();
    let mut removed = ids(&lr, "removed");
    removed.sort();
    assert_eq!(removed, ["b1", "b2", "b3", "oldpart"]);
    for id in ["b4", "b5", "partial1"] {
        assert!(local.join(id).exists(), "{id} kept");
    }
    for id in ["b1", "b2", "b3", "oldpart"] {
        assert!(!local.join(id).exists(), "{id} removed");
    }
    let l = t
        .run(&["list", "--store", &t.local(), "--json"])
        .ok()
        .json();
    let listed: Vec<(String, bool)> = l["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["complete"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(listed.contains(&("b4".into(), true)) && listed.contains(&("b5".into(), true)));
    assert!(listed.contains(&("partial1".into(), false)));
    assert_eq!(listed.len(), 3);

    // Everything is recent: keep-within 1h removes nothing; keep-last 0 is refused.
    let kw = t
        .run(&["expire", "--store", &t.url, "--keep-within", "1h"])
        .ok();
    assert!(kw.stdout.contains("nothing to remove"), "{kw:?}");
    let bad = t.run(&["expire", "--store", &t.url, "--keep-last", "0"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    let none = t.run(&["expire", "--store", &t.url]);
    assert_eq!(none.code, 2, "a policy is required: {none:?}");
}

/// With credentials in the environment, their values appear in no output of any command
/// (human and JSON, successes and failures, with debug logging), nor in the agent's log,
/// state, marker, or any bundle file in either store.
#[test]
fn no_credentials_in_any_output() {
    let Some(major) = newest_major() else { return };
    let c = Cluster::start(ClusterOptions::new(major));
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let t = S3Tool::new(&c, &s3.endpoint(), "leak");
    let (local, url) = (t.local(), t.url.clone());
    let mut outputs: Vec<(String, Run)> = Vec::new();
    let mut run = |label: &str, args: &[&str]| -> Run {
        let r = t.run(args);
        let copy = Run {
            code: r.code,
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
        };
        outputs.push((label.to_string(), r));
        copy
    };
    let both = ["--store", local.as_str(), "--store", url.as_str()];
    let mut start_h = vec!["start", "--id", "l1"];
    start_h.extend_from_slice(&both);
    run("start human", &start_h).ok();
    let marker = std::fs::read_to_string(c.pgdata().join("pg_backup_metadata/l1/backup.json"))
        .expect("marker");
    let mut start_j = vec!["start", "--id", "l2", "--json"];
    start_j.extend_from_slice(&both);
    run("start json", &start_j).ok();
    let agent = t.tool.agent_pid("l2").unwrap();
    let argv = std::fs::read(format!("/proc/{agent}/cmdline")).unwrap();
    let environ_has_key = std::fs::read(format!("/proc/{agent}/environ"))
        .map(|e| String::from_utf8_lossy(&e).contains(KEY_ID))
        .unwrap_or(true);
    assert!(
        environ_has_key,
        "the agent inherits the credentials from the environment"
    );
    run("status human", &["status"]).ok();
    run("status json", &["status", "--json"]).ok();
    run("stop human", &["stop", "--id", "l1"]).ok();
    run("stop json", &["stop", "--id", "l2", "--json"]).ok();
    for (fmt, j) in [("human", None), ("json", Some("--json"))] {
        for (kind, store) in [("s3", url.as_str()), ("local", local.as_str())] {
            let mut a = vec!["list", "--store", store];
            a.extend(j);
            run(&format!("list {kind} {fmt}"), &a).ok();
            let mut a = vec!["show", "--store", store, "--id", "l1"];
            a.extend(j);
            run(&format!("show {kind} {fmt}"), &a).ok();
            let mut a = vec!["expire", "--store", store, "--keep-last", "1", "--dry-run"];
            a.extend(j);
            run(&format!("expire {kind} {fmt}"), &a).ok();
            let mut a = vec!["verify", "--store", store, "--id", "l1"];
            a.extend(j);
            run(&format!("verify {kind} {fmt}"), &a);
        }
        // Failures: a bucket that does not exist, an unreachable endpoint, an unknown ID.
        let mut a = vec!["list", "--store", "s3://no-such-bucket-here/x"];
        a.extend(j);
        let r = run(&format!("list missing bucket {fmt}"), &a);
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("hint:"), "{r:?}");
        let mut a = vec![
            "list",
            "--store",
            url.as_str(),
            "--s3-endpoint",
            "http://127.0.0.1:1",
        ];
        a.extend(j);
        let r = run(&format!("list unreachable {fmt}"), &a);
        assert_eq!(r.code, 4, "{r:?}");
        let mut a = vec!["show", "--store", url.as_str(), "--id", "nope"];
        a.extend(j);
        assert_eq!(run(&format!("show unknown {fmt}"), &a).code, 2);
        let id = format!("l3{fmt}");
        let mut a = vec!["start", "--id", id.as_str(), "--store", url.as_str()];
        a.extend(j);
        run(&format!("start s3 only {fmt}"), &a).ok();
        let mut a = vec!["abort", "--id", id.as_str()];
        a.extend(j);
        run(&format!("abort {fmt}"), &a).ok();
        let mut a = vec!["cleanup"];
        a.extend(j);
        run(&format!("cleanup {fmt}"), &a).ok();
    }
    // Debug logging of a command that talks to S3.
    let mut dbg = t.cmd(&["list", "--store", &url]);
    dbg.env("PGBOOKEND_LOG", "debug");
    let dbg: Run = dbg.output().unwrap().into();
    assert_eq!(dbg.code, 0, "{dbg:?}");
    outputs.push(("list with PGBOOKEND_LOG=debug".into(), dbg));

    let secrets = [KEY_ID, SECRET, TOKEN];
    let check = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} holds a credential: {text}");
        }
    };
    for (label, r) in &outputs {
        check(label, &r.all());
    }
    check("the marker", &marker);
    check("the agent's argv", &String::from_utf8_lossy(&argv));
    for (name, bytes) in files(&t.tool.run_dir()) {
        check(&format!("run dir {name}"), &String::from_utf8_lossy(&bytes));
    }
    for (name, bytes) in files(t.tool.store_path()) {
        check(
            &format!("local store {name}"),
            &String::from_utf8_lossy(&bytes),
        );
    }
    for key in s3.keys(BUCKET, "leak/") {
        let bytes = s3.get(BUCKET, &key).unwrap();
        check(
            &format!("S3 object {key}"),
            &String::from_utf8_lossy(&bytes),
        );
    }
}

/// Settings and credentials from the AWS shared files alone (no AWS_* variables but
/// AWS_PROFILE): the profile's endpoint and keys are used, and the keys appear nowhere.
#[test]
fn aws_profile_files() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let dir = pgbookend_testkit::temp_dir("awsfiles");
    std::fs::write(
        dir.path().join("config"),
        format!(
            "[default]\nregion = eu-west-1\n[profile bk]\nregion = eu-central-1\ns3 =\n  endpoint_url = {}\n  addressing_style = path\n",
            s3.endpoint()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("credentials"),
        format!("[bk]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    s3.put(BUCKET, "prof/x1/backup_label", b"label");
    let run = |args: &[&str]| -> Run {
        let mut c = std::process::Command::new(common::bin());
        c.args(args)
            .env("PGBOOKEND_CONFIG", dir.path().join("none.toml"))
            .env("AWS_PROFILE", "bk")
            .env("AWS_CONFIG_FILE", dir.path().join("config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("credentials"),
            );
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
        ] {
            c.env_remove(k);
        }
        c.output().unwrap().into()
    };
    std::fs::write(dir.path().join("none.toml"), "").unwrap();
    let url = format!("s3://{BUCKET}/prof");
    let l = run(&["list", "--store", &url, "--json"]).ok();
    assert_eq!(l.json()["bundles"][0]["id"], "x1");
    assert_eq!(l.json()["bundles"][0]["complete"], false);
    for s in [KEY_ID, SECRET] {
        assert!(!l.all().contains(s));
    }
    // A profile that does not exist is an error that says so.
    let mut bad = std::process::Command::new(common::bin());
    bad.args(["list", "--store", &url])
        .env("PGBOOKEND_CONFIG", dir.path().join("none.toml"))
        .env("AWS_PROFILE", "nope")
        .env("AWS_CONFIG_FILE", dir.path().join("config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("credentials"),
        );
    let r: Run = bad.output().unwrap().into();
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("AWS_PROFILE"), "{r:?}");
}

/// A backup into an S3 store only, restored with `prepare --store s3://...`: the server
/// starts, recovery completes, and the data is whole (pgbench invariant, the row
/// committed just before stop, amcheck clean).
fn prepare_from_s3(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).data_checksums(true));
    c.pgbench_init(1);
    c.psql("CREATE TABLE rows (t text)");
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let t = S3Tool::new(&c, &s3.endpoint(), "restore");
    let url = t.url.clone();
    t.run(&["start", "--id", "s3r", "--store", &url]).ok();
    let bench = c.pgbench_background(2, 2);
    let copy = t.tool.run_dir.path().join("copy");
    assert!(common::cp_live(c.pgdata(), &copy).unwrap().success());
    bench.wait().expect("pgbench");
    c.psql("INSERT INTO rows VALUES ('committed before stop')");
    t.run(&["stop", "--id", "s3r"]).ok();
    assert!(
        !t.tool.bundle_dir("s3r").exists(),
        "the bundle went to S3 only"
    );
    let d = copy.display().to_string();
    let r = t.run(&["prepare", "--pgdata", &d, "--store", &url]).ok();
    assert!(r.stdout.contains("start the server with"), "{r:?}");
    let restored = common::start_restored(major, &copy, t.tool.run_dir.path());
    assert!(restored.pgbench_invariant_ok());
    assert_eq!(restored.psql("SELECT t FROM rows"), "committed before stop");
    crate::runkit::amcheck_clean(&restored);
}
per_major!(prepare_from_s3_t, prepare_from_s3);
