//! End-to-end tests of point-in-time restore from a store: a cluster archiving with
//! `pgbookend archive-push` into the same store as its bundles, `prepare --target` with
//! no `--id` naming the bundle the target picks and setting `archive-get` as its
//! `restore_command`, and a refusal that names a segment missing from the archive.

use crate::common::{self, newest_major, wait_until, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A cluster whose archive_command pushes into the tool's store (the bundles' store).
fn archived_cluster(major: u32) -> (Cluster, Tool) {
    let c = Cluster::start(ClusterOptions::new(major).conf("archive_mode = on"));
    let tool = Tool::new(&c);
    let cmd = format!(
        "{} archive-push --store {} %p",
        common::bin().display(),
        tool.store_path().display()
    );
    c.psql(&format!("ALTER SYSTEM SET archive_command = '{cmd}'"));
    c.psql("SELECT pg_reload_conf()");
    (c, tool)
}

/// Switches to a new segment and waits until the server has archived the old one.
fn switch_and_wait(c: &Cluster) -> String {
    // Some WAL first: a switch at the very start of a segment (just after stop's own
    // switch) is a no-op that leaves the named segment current, never archived.
    c.psql("SELECT pg_logical_emit_message(false, 'pgbookend-test', 'switch')");
    let seg = c.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let done = wait_until(Duration::from_secs(60), || {
        c.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            .as_str()
            >= seg.as_str()
    });
    assert!(
        done,
        "{seg} not archived ({}):\n{}",
        c.psql("SELECT row(a.*)::text FROM pg_stat_archiver a"),
        c.server_log()
    );
    seg
}

/// The archived object of WAL file `name` in `store`.
fn object_of(store: &Path, name: &str) -> PathBuf {
    let dir = std::fs::read_dir(store.join("archive"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join(&name[..16]);
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
        })
        .unwrap_or_else(|| panic!("{name} is not archived in {}", dir.display()))
}

/// The server's clock now, as a recovery_target_time with an explicit zone.
fn now_utc(c: &Cluster) -> String {
    c.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
}

/// A backup, then three batches of rows separated by recorded times: `prepare --target
/// time=T2` with no --id names the bundle the target picks, refuses while a segment after
/// the backup is missing from the archive (naming it, changing nothing), and once it is
/// back the restored server has batches 1 and 2 and not 3.
fn pitr_to_time(major: u32) {
    let (c, tool) = archived_cluster(major);
    c.psql("CREATE TABLE rows (batch int)");
    tool.start("base", &[]).ok();
    let work = pgbookend_testkit::temp_dir("copy");
    let data = work.path().join("data");
    assert!(common::cp_live(c.pgdata(), &data).unwrap().success());
    tool.stop("base", &[]).ok();
    c.psql("INSERT INTO rows SELECT 1 FROM generate_series(1, 10)");
    let seg1 = switch_and_wait(&c);
    c.psql("INSERT INTO rows SELECT 2 FROM generate_series(1, 10)");
    let t2 = now_utc(&c);
    c.psql("INSERT INTO rows SELECT 3 FROM generate_series(1, 10)");
    switch_and_wait(&c);

    let d = data.display().to_string();
    let s = tool.store_path().display().to_string();
    let target = format!("time={t2}");
    let prepare = |extra: &[&str]| {
        let mut args = vec![
            "prepare", "--pgdata", &d, "--store", &s, "--target", &target,
        ];
        args.extend_from_slice(extra);
        tool.run(&args)
    };

    // A target before the backup's stop: this copy cannot reach it, and no bundle can.
    let early = tool.run(&[
        "prepare", "--pgdata", &d, "--store", &s, "--target", "lsn=0/10",
    ]);
    assert_eq!(early.code, 6, "{early:?}");
    assert!(early.all().contains("stops before the target"), "{early:?}");

    let obj = object_of(tool.store_path(), &seg1);
    let aside = work.path().join("aside");
    std::fs::rename(&obj, &aside).unwrap();
    let r = prepare(&[]);
    assert_eq!(r.code, 6, "a gap in the archive must be refused: {r:?}");
    assert!(
        r.all().contains(&seg1),
        "the missing {seg1} is named: {r:?}"
    );
    assert!(!data.join("recovery.signal").exists());
    let list = tool.run(&["list", "--store", &s, "--json"]).ok().json();
    assert_eq!(
        list["archives"][0]["timelines"][0]["first_missing"],
        seg1.as_str(),
        "{list}"
    );
    std::fs::rename(&aside, &obj).unwrap();
    let list = tool.run(&["list", "--store", &s, "--json"]).ok().json();
    assert!(
        list["archives"][0]["timelines"][0]["first_missing"].is_null(),
        "{list}"
    );
    assert!(
        list["bundles"][0]["recoverable_to"].as_str().unwrap() > seg1.as_str(),
        "{list}"
    );

    let dry = prepare(&["--dry-run", "--json"]).ok().json();
    assert_eq!(dry["pitr"]["picked"], "base", "{dry}");
    let r = prepare(&[]).ok();
    assert!(r.all().contains("picks backup base"), "{r:?}");
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("archive-get %f %p --store"), "{auto}");

    let restored = common::start_restored(major, &data, work.path());
    assert_eq!(
        restored
            .psql("SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) FROM rows"),
        "1,2"
    );
    assert!(
        restored.server_log().contains("restored log file"),
        "{}",
        restored.server_log()
    );
}
per_major!(pitr_to_time_t, pitr_to_time);

/// The archived segment names of the store (every cluster, every timeline), sorted.
fn archived_segments(store: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for sys in std::fs::read_dir(store.join("archive")).unwrap() {
        for dir in std::fs::read_dir(sys.unwrap().path()).unwrap() {
            for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                let n = f.unwrap().file_name().to_string_lossy().into_owned();
                if n.len() > 25 && n.as_bytes()[24] == b'-' {
                    v.push(n[..24].to_string());
                }
            }
        }
    }
    v.sort();
    v
}

/// Five bundles with WAL archived throughout: `expire --keep-last 2` removes the three
/// oldest and every archived segment before the start of the oldest kept one (which
/// existed before), and both kept bundles still restore to `latest` through the archive.
fn expire_keeps_wal_of_kept(major: u32) {
    let (c, tool) = archived_cluster(major);
    c.psql("CREATE TABLE rows (t text)");
    let work = pgbookend_testkit::temp_dir("copies");
    for i in 1..=5 {
        let id = format!("b{i}");
        tool.start(&id, &[]).ok();
        if i >= 4 {
            let data = work.path().join(&id);
            assert!(common::cp_live(c.pgdata(), &data).unwrap().success());
        }
        tool.stop(&id, &[]).ok();
        c.psql(&format!("INSERT INTO rows VALUES ('{id}')"));
        switch_and_wait(&c);
    }
    c.psql("INSERT INTO rows VALUES ('last')");
    switch_and_wait(&c);

    let b4: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tool.bundle_dir("b4").join("bundle.json")).unwrap())
            .unwrap();
    let keep_from = b4["start_wal_file"].as_str().unwrap().to_string();
    let before = archived_segments(tool.store_path());
    assert!(before.iter().any(|s| *s < keep_from), "{before:?}");
    let s = tool.store_path().display().to_string();
    let dry = tool
        .run(&[
            "expire",
            "--store",
            &s,
            "--keep-last",
            "2",
            "--dry-run",
            "--json",
        ])
        .ok()
        .json();
    assert!(
        dry["wal_removed"][0]["count"].as_u64().unwrap() > 0,
        "{dry}"
    );
    assert_eq!(
        archived_segments(tool.store_path()),
        before,
        "dry run removes nothing"
    );
    let out = tool
        .run(&["expire", "--store", &s, "--keep-last", "2", "--json"])
        .ok()
        .json();
    assert_eq!(out["removed"].as_array().unwrap().len(), 3, "{out}");
    assert_eq!(
        out["wal_removed"][0]["kept_from"],
        keep_from.as_str(),
        "{out}"
    );
    let after = archived_segments(tool.store_path());
    assert!(after.iter().all(|s| *s >= keep_from), "{after:?}");
    assert!(after.contains(&keep_from), "{after:?}");
    let list = tool.run(&["list", "--store", &s, "--json"]).ok().json();
    assert_eq!(
        list["archives"][0]["timelines"][0]["first"],
        keep_from.as_str(),
        "{list}"
    );
    let bundles = list["bundles"].as_array().unwrap().len();
    assert_eq!(bundles, 2, "the archive is no bundle: {list}");

    for id in ["b4", "b5"] {
        let data = work.path().join(id);
        let d = data.display().to_string();
        tool.run(&[
            "prepare", "--pgdata", &d, "--store", &s, "--target", "latest",
        ])
        .ok();
        let r = common::start_restored(major, &data, &work.path().join(format!("{id}-run")));
        assert_eq!(
            r.psql("SELECT count(*) FROM rows WHERE t = 'last'"),
            "1",
            "{id} restored to latest:\n{}",
            r.server_log()
        );
    }
}
per_major!(expire_keeps_wal_of_kept_t, expire_keeps_wal_of_kept);

/// `expire --keep-last 1 --keep-wal-for DUR`: the newest bundle that stopped at least DUR
/// ago is kept as the base of the window, with the WAL from its start; the older bundle
/// and the WAL before that base go. DUR is chosen at run time so that the window's edge
/// falls in the middle of a 20-second gap between the stop times the second and third
/// bundles record, so the test does not depend on how fast the machine is.
#[test]
fn keep_wal_for_keeps_the_window() {
    let Some(major) = newest_major() else { return };
    let (c, tool) = archived_cluster(major);
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    for (i, id) in ["w1", "w2", "w3"].into_iter().enumerate() {
        if i == 2 {
            std::thread::sleep(Duration::from_secs(20));
        }
        tool.start(id, &[]).ok();
        tool.stop(id, &[]).ok();
        switch_and_wait(&c);
    }
    let read = |id: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(tool.bundle_dir(id).join("bundle.json")).unwrap())
            .unwrap()
    };
    let base_from = read("w2")["start_wal_file"].as_str().unwrap().to_string();
    let before = archived_segments(tool.store_path());
    assert!(before.iter().any(|s| *s < base_from), "{before:?}");
    // The window's edge (now - DUR) lands in the middle of the gap between the stop
    // times the bundles record (those expire compares).
    let stopped = |id: &str| {
        let t = read(id)["stop_time"].as_str().unwrap().to_string();
        pgbookend::timefmt::parse_rfc3339(&t).unwrap_or_else(|| panic!("{t}"))
    };
    let (t2, t3) = (stopped("w2"), stopped("w3"));
    assert!(t3 - t2 >= 19, "w2 stopped at {t2}, w3 at {t3}");
    let now = unix() as i64;
    let dur = format!("{}s", now - (t2 + t3) / 2);
    let s = tool.store_path().display().to_string();
    let run = tool
        .run(&[
            "expire",
            "--store",
            &s,
            "--keep-last",
            "1",
            "--keep-wal-for",
            &dur,
            "--json",
        ])
        .ok();
    let out = run.json();
    let ids = |k: &str| -> Vec<String> {
        out[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                b.get("id")
                    .unwrap_or(b)
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        ids("kept"),
        ["w2", "w3"],
        "w2 stopped at {t2}, w3 at {t3}, now {now}, --keep-wal-for {dur}: {out}\n{}",
        run.stderr
    );
    let w2 = &out["kept"][0]["reason"];
    assert!(w2.as_str().unwrap().contains("--keep-wal-for"), "{out}");
    assert_eq!(
        out["wal_removed"][0]["kept_from"],
        base_from.as_str(),
        "{out}"
    );
    assert!(!tool.bundle_dir("w1").exists());
    let after = archived_segments(tool.store_path());
    assert!(after.iter().all(|s| *s >= base_from), "{after:?}");
    assert!(after.contains(&base_from), "{after:?}");
}

/// A timeline switch: one copy of a backup restored to `latest` opens on timeline 2 and
/// archives into the same store (its `.history` file too); a second copy of the same
/// backup (taken on timeline 1) restored to `latest` follows the archived history onto
/// timeline 2 and has the row written there.
fn pitr_across_timeline(major: u32) {
    let (c, tool) = archived_cluster(major);
    c.psql("CREATE TABLE rows (t text)");
    tool.start("old", &[]).ok();
    let work = pgbookend_testkit::temp_dir("copies");
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    assert!(common::cp_live(c.pgdata(), &a).unwrap().success());
    assert!(common::cp_live(c.pgdata(), &b).unwrap().success());
    tool.stop("old", &[]).ok();
    c.psql("INSERT INTO rows VALUES ('tl1')");
    switch_and_wait(&c);

    let s = tool.store_path().display().to_string();
    let prepare = |data: &Path| {
        let d = data.display().to_string();
        tool.run(&[
            "prepare", "--pgdata", &d, "--store", &s, "--target", "latest",
        ])
        .ok()
    };
    prepare(&a);
    let r = common::start_restored(major, &a, &work.path().join("a-run"));
    assert!(
        r.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
            .starts_with("00000002"),
        "the restored copy opens on timeline 2"
    );
    r.psql("INSERT INTO rows VALUES ('tl2')");
    switch_and_wait(&r);
    let sysid = c.system_identifier();
    let history = tool.store_path().join(format!("archive/{sysid}/history"));
    assert!(
        std::fs::read_dir(&history).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("00000002.history-")),
        "timeline 2's history file is archived"
    );

    prepare(&b);
    let r2 = common::start_restored(major, &b, &work.path().join("b-run"));
    assert_eq!(
        r2.psql("SELECT string_agg(t, ',' ORDER BY t) FROM rows"),
        "tl1,tl2",
        "{}",
        r2.server_log()
    );
}
per_major!(pitr_across_timeline_t, pitr_across_timeline);

/// Retention and listing in S3 (one major: the store path does not depend on it): two
/// bundles and their WAL archived into one bucket prefix; `expire --keep-last 1` removes
/// the older bundle and every segment before the kept one's start, and `list` reports the
/// archive from there.
#[test]
fn expire_wal_in_s3() {
    let Some(major) = newest_major() else { return };
    let s3 = pgbookend_testkit::S3Server::start();
    s3.create_bucket("pitr");
    let url = "s3://pitr/st";
    let env = [
        ("AWS_ACCESS_KEY_ID", "pitrkey".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "pitr/Secret+0123456789".to_string(),
        ),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
    ];
    let c = Cluster::start(ClusterOptions::new(major).conf("archive_mode = on"));
    let mut tool = Tool::new(&c);
    let prefix: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tool.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    c.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{} {} archive-push --store {url} %p'",
        prefix.join(" "),
        common::bin().display()
    ));
    c.psql("SELECT pg_reload_conf()");
    for id in ["s1", "s2"] {
        tool.run(&["start", "--id", id, "--store", url, "--json"])
            .ok();
        tool.stop(id, &[]).ok();
        switch_and_wait(&c);
    }
    c.psql("CREATE TABLE after_s2 ()");
    switch_and_wait(&c);
    let keys = s3.keys("pitr", "st/archive/");
    let s2: serde_json::Value =
        serde_json::from_slice(&s3.get("pitr", "st/s2/bundle.json").unwrap()).unwrap();
    let keep_from = s2["start_wal_file"].as_str().unwrap().to_string();
    let seg_of = |k: &String| k.rsplit('/').next().unwrap()[..24].to_string();
    let segments = |keys: &[String]| -> Vec<String> {
        keys.iter()
            .filter(|k| !k.contains("/history/"))
            .map(seg_of)
            .collect()
    };
    assert!(segments(&keys).iter().any(|s| *s < keep_from), "{keys:?}");
    let out = tool
        .run(&["expire", "--store", url, "--keep-last", "1", "--json"])
        .ok()
        .json();
    assert_eq!(out["removed"][0]["id"], "s1", "{out}");
    let after = s3.keys("pitr", "st/archive/");
    assert!(
        segments(&after).iter().all(|s| *s >= keep_from),
        "{after:?}"
    );
    assert!(segments(&after).contains(&keep_from), "{after:?}");
    let list = tool.run(&["list", "--store", url, "--json"]).ok().json();
    assert_eq!(
        list["archives"][0]["timelines"][0]["first"],
        keep_from.as_str(),
        "{list}"
    );
    assert!(list["bundles"][0]["recoverable_to"].is_string(), "{list}");
    assert_eq!(
        list["bundles"].as_array().unwrap().len(),
        1,
        "the archive is no bundle: {list}"
    );
}

/// Point-in-time restore from an S3 store (one major: the S3 path does not depend on
/// it): WAL archived into S3 by `archive-push`, a backup whose bundle is in S3 (copy by
/// `cp` while it runs), three batches of rows; `prepare --store s3://… --target time=T2`
/// with no `--id` picks the bundle itself and sets `archive-get` from S3 as the
/// restore_command, and the restored server (S3 settings in its environment only) has
/// batches 1 and 2 and not 3.
#[test]
fn pitr_from_s3() {
    let Some(major) = newest_major() else { return };
    let s3 = pgbookend_testkit::S3Server::start();
    s3.create_bucket("pitrs3");
    let url = "s3://pitrs3/pg";
    let env = [
        ("AWS_ACCESS_KEY_ID", "pitrs3key".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "pitrs3secret".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
    ];
    let c = Cluster::start(ClusterOptions::new(major).conf("archive_mode = on"));
    let mut tool = Tool::new(&c);
    tool.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let prefix: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    c.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{} {} archive-push --store {url} %p'",
        prefix.join(" "),
        common::bin().display()
    ));
    c.psql("SELECT pg_reload_conf()");
    c.psql("CREATE TABLE rows (batch int)");
    tool.run(&["start", "--id", "base", "--store", url, "--json"])
        .ok();
    let work = pgbookend_testkit::temp_dir("s3copy");
    let data = work.path().join("data");
    assert!(common::cp_live(c.pgdata(), &data).unwrap().success());
    tool.stop("base", &[]).ok();
    c.psql("INSERT INTO rows SELECT 1 FROM generate_series(1, 10)");
    switch_and_wait(&c);
    c.psql("INSERT INTO rows SELECT 2 FROM generate_series(1, 10)");
    let t2 = now_utc(&c);
    c.psql("INSERT INTO rows SELECT 3 FROM generate_series(1, 10)");
    switch_and_wait(&c);
    assert!(!s3.keys("pitrs3", "pg/archive/").is_empty());

    let d = data.display().to_string();
    let target = format!("time={t2}");
    // The endpoint given as a flag reaches the restore_command too.
    let endpoint = s3.endpoint();
    let r = tool
        .run(&[
            "prepare",
            "--pgdata",
            &d,
            "--store",
            url,
            "--target",
            &target,
            "--s3-endpoint",
            &endpoint,
        ])
        .ok();
    assert!(r.all().contains("picks backup base"), "{r:?}");
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("archive-get") && auto.contains(url), "{auto}");
    assert!(
        auto.contains(&format!("--s3-endpoint ''{endpoint}''")),
        "{auto}"
    );
    let mut restored =
        pgbookend_testkit::Cluster::from_existing(major, data.clone(), work.path().join("run"));
    for (k, v) in &env {
        restored = restored.with_server_env(k, v);
    }
    restored
        .start_again()
        .unwrap_or_else(|log| panic!("the prepared copy did not start:\n{log}"));
    common::wait_recovered(&restored);
    assert_eq!(
        restored
            .psql("SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) FROM rows"),
        "1,2",
        "{}",
        restored.server_log()
    );
    assert!(
        restored.server_log().contains("restored log file"),
        "{}",
        restored.server_log()
    );
}
