//! End-to-end tests of the self-contained bundle: the WAL of the window, the file list,
//! `--wal archive|none`, and backups from a standby, against real clusters of every major.

use crate::common::{self, Tool};
use pgbookend_testkit::{Cluster, ClusterOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

fn bundle_json(tool: &Tool, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(tool.bundle_dir(id).join("bundle.json")).unwrap())
        .unwrap()
}

fn unzstd(path: &Path) -> Vec<u8> {
    zstd::stream::decode_all(std::fs::File::open(path).unwrap()).unwrap()
}

/// The paths of the bundle's file list.
fn file_list(tool: &Tool, id: &str) -> Vec<String> {
    let text = String::from_utf8(unzstd(&tool.bundle_dir(id).join("files.zst"))).unwrap();
    text.lines().map(|l| l.to_string()).collect()
}

/// Under pgbench load, with six forced WAL switches and checkpoints in the window and
/// max_wal_size at its minimum, the bundle holds every segment from start to stop, each
/// identical to the one the server archived.
fn window_complete_under_load(major: u32) {
    let c = Cluster::start(
        ClusterOptions::new(major)
            .archive_dir(true)
            .conf("max_wal_size = 32MB")
            .conf("min_wal_size = 32MB")
            .conf("wal_keep_size = 0"),
    );
    c.pgbench_init(1);
    let tool = Tool::new(&c);
    tool.start("win", &[]).ok();
    let bench = c.pgbench_background(2, 8);
    for _ in 0..6 {
        c.psql("SELECT pg_switch_wal()");
        c.psql("CHECKPOINT");
        std::thread::sleep(Duration::from_millis(300));
    }
    bench.wait().expect("pgbench");
    let stop = tool.stop("win", &[]).ok().json();
    let b = bundle_json(&tool, "win");
    assert_eq!(b["wal_mode"], "collect");
    let names: Vec<String> = b["wal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names.first().unwrap(),
        b["start_wal_file"].as_str().unwrap()
    );
    assert_eq!(names.last().unwrap(), b["stop_wal_file"].as_str().unwrap());
    assert!(
        names.len() >= 7,
        "six switches make at least seven segments: {names:?}"
    );
    assert_eq!(stop["wal_segments"].as_u64().unwrap(), names.len() as u64);
    // Contiguous: each segment number follows the previous one.
    let segno = |n: &str| {
        u64::from_str_radix(&n[8..16], 16).unwrap() * 256
            + u64::from_str_radix(&n[16..24], 16).unwrap()
    };
    for w in names.windows(2) {
        assert_eq!(segno(&w[1]), segno(&w[0]) + 1, "{names:?}");
    }
    let archive = c.archive_dir().unwrap();
    for w in b["wal"].as_array().unwrap() {
        let name = w["name"].as_str().unwrap();
        let ours = unzstd(&tool.bundle_dir("win").join(w["stored"].as_str().unwrap()));
        assert_eq!(ours.len() as u64, w["size"].as_u64().unwrap());
        assert_eq!(
            hex::encode(Sha256::digest(&ours)),
            w["sha256"].as_str().unwrap()
        );
        // The server archives the stop segment shortly after the switch in pg_backup_stop.
        let archived = archive.join(name);
        assert!(
            common::wait_until(Duration::from_secs(30), || archived.exists()),
            "{name} never reached the test cluster's archive"
        );
        let theirs = std::fs::read(&archived).unwrap();
        assert!(ours == theirs, "segment {name} differs from the server's");
        let f = &b["files"][w["stored"].as_str().unwrap()];
        assert!(
            f["sha256"].is_string(),
            "every stored file is checksummed in bundle.json"
        );
    }
}
per_major!(window_complete_t, window_complete_under_load);

/// The file list of a cluster with a tablespace holds the tablespace's files and none of
/// what a base backup leaves out.
fn file_list_with_tablespace(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).tablespace(true));
    c.psql("CREATE TABLE in_ts (i int) TABLESPACE ts1; INSERT INTO in_ts SELECT generate_series(1, 1000)");
    c.psql("CREATE UNLOGGED TABLE unl (i int); INSERT INTO unl VALUES (1)");
    let ts_file = c.psql("SELECT pg_relation_filepath('in_ts')");
    let unl_file = c.psql("SELECT pg_relation_filepath('unl')");
    let tool = Tool::new(&c);
    tool.start("fl", &[]).ok();
    let stop = tool.stop("fl", &[]).ok().json();
    let list = file_list(&tool, "fl");
    assert_eq!(stop["file_list_count"].as_u64().unwrap(), list.len() as u64);
    assert_eq!(
        bundle_json(&tool, "fl")["file_list"]["count"]
            .as_u64()
            .unwrap(),
        list.len() as u64
    );
    assert!(
        list.contains(&ts_file),
        "{ts_file} (in the tablespace) must be listed"
    );
    assert!(ts_file.starts_with("pg_tblspc/"));
    assert!(list.contains(&"global/pg_control".to_string()));
    assert!(list.contains(&"PG_VERSION".to_string()));
    assert!(
        list.contains(&format!("{unl_file}_init")),
        "the init fork of an unlogged table is kept"
    );
    assert!(
        !list.contains(&unl_file),
        "the main fork of an unlogged table is left out"
    );
    for p in &list {
        for bad in [
            "pg_wal/",
            "pg_replslot/",
            "pg_stat_tmp/",
            "pg_backup_metadata",
            "pgsql_tmp",
        ] {
            assert!(
                !p.starts_with(bad) && !p.contains(&format!("/{bad}")),
                "{p} must be left out"
            );
        }
        assert!(
            !["postmaster.pid", "postmaster.opts", "backup_label"].contains(&p.as_str()),
            "{p}"
        );
        assert!(!p.contains("pg_internal.init"), "{p}");
    }
    // Sorted component-wise, as documented.
    for w in list.windows(2) {
        assert!(w[0].split('/').lt(w[1].split('/')), "{} !< {}", w[0], w[1]);
    }
}
per_major!(file_list_t, file_list_with_tablespace);

/// `--wal archive`: succeeds when archive_command copies into the directory; fails within
/// the timeout, naming the missing segment, when archive_command is `false`.
fn wal_archive_mode(major: u32) {
    let c = Cluster::start(ClusterOptions::new(major).archive_dir(true));
    let archive = c.archive_dir().unwrap().display().to_string();
    let tool = Tool::new(&c);
    tool.start("a1", &["--wal", "archive", "--archive", &archive])
        .ok();
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) i");
    let ok = tool.stop("a1", &["--archive-timeout", "60s"]).ok().json();
    assert_eq!(ok["wal_mode"], "archive");
    let b = bundle_json(&tool, "a1");
    for w in b["wal"].as_array().unwrap() {
        assert!(w["stored"].is_null());
        let found = w["archived_as"].as_str().unwrap();
        assert!(Path::new(&archive).join(found).exists());
    }
    assert!(
        !tool.bundle_dir("a1").join("wal").exists(),
        "nothing copied in archive mode"
    );

    c.append_conf("archive_command = 'false'");
    c.reload();
    tool.start("a2", &["--wal", "archive", "--archive", &archive])
        .ok();
    let t0 = std::time::Instant::now();
    let r = tool.stop("a2", &["--archive-timeout", "3s"]);
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert_eq!(r.code, 7, "the label is saved, the bundle rescuable: {r:?}");
    assert!(r.stderr.contains("did not appear in"), "{r:?}");
    assert!(r.stderr.contains("rescue --id a2"), "{r:?}");
    let missing = r
        .stderr
        .split("WAL file ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(missing.len(), 24, "names the segment: {r:?}");
    assert!(!Path::new(&archive).join(&missing).exists());
}
per_major!(wal_archive_mode_t, wal_archive_mode);

/// max_replication_slots = 0 with --wal collect: start refuses, says what to do, and leaves
/// nothing behind.
fn no_slots(major: u32) {
    let c = Cluster::start(
        ClusterOptions::new(major)
            .conf("max_replication_slots = 0")
            .conf("max_wal_senders = 0"),
    );
    let tool = Tool::new(&c);
    let r = tool.start("noslot", &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("max_replication_slots"), "{r:?}");
    assert!(
        r.stderr.contains("--wal archive") && r.stderr.contains("--wal none"),
        "{r:?}"
    );
    assert!(!tool.run_dir().join("noslot").exists());
    assert!(!c.pgdata().join("pg_backup_metadata").exists());
    // The failed agent's backend may take a moment to leave pg_stat_activity.
    let count = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbookend%'";
    assert!(
        common::wait_until(Duration::from_secs(20), || c.psql(count) == "0"),
        "{}",
        c.psql(count)
    );
    assert!(
        !c.server_log().contains("backup_start") || !c.server_log().contains("aborting backup")
    );
    // The explicit opt-out works on the same cluster and says so in bundle.json.
    tool.start("noslot", &["--wal", "none"]).ok();
    tool.stop("noslot", &["--no-wait-archive"]).ok();
    let b = bundle_json(&tool, "noslot");
    assert_eq!(b["wal_mode"], "none");
    assert!(b["wal"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["stored"].is_null()));
}
per_major!(no_slots_t, no_slots);

/// A backup taken on a hot standby: start and stop on the standby, WAL from its pg_wal.
fn standby_backup(major: u32) {
    let primary = Cluster::start(ClusterOptions::new(major));
    primary.pgbench_init(1);
    let standby = common::make_standby(&primary);
    let tool = Tool::new(&standby);
    let started = tool.start("sb", &[]).ok().json();
    assert_eq!(started["backup_from"], "standby");
    let bench = primary.pgbench_background(2, 3);
    bench.wait().expect("pgbench");
    // Let the standby replay what pgbench wrote, so the window has WAL in it.
    let target = primary.psql("SELECT pg_current_wal_lsn()");
    assert!(common::wait_until(Duration::from_secs(30), || standby
        .psql(&format!(
            "SELECT pg_last_wal_replay_lsn() >= '{target}'"
        ))
        == "t"));
    let stop = tool.stop("sb", &[]).ok().json();
    let b = bundle_json(&tool, "sb");
    assert_eq!(b["backup_from"], "standby");
    assert_eq!(stop["backup_from"], "standby");
    let label = std::fs::read_to_string(tool.bundle_dir("sb").join("backup_label")).unwrap();
    assert!(label.contains("BACKUP FROM: standby"), "{label}");
    let wal = b["wal"].as_array().unwrap();
    assert!(!wal.is_empty());
    assert_eq!(wal.first().unwrap()["name"], b["start_wal_file"]);
    // The WAL runs to the stop segment, or to the replay position's (issue 11 item 6).
    let last = match b["replay_lsn"].as_str() {
        Some(r) => {
            let seg = b["wal_segment_size"].as_u64().unwrap() as u32;
            let tli = b["timeline"].as_u64().unwrap() as u32;
            let r: pgbookend_formats::lsn::Lsn = r.parse().unwrap();
            let w = pgbookend_formats::wal::file_name(
                tli,
                pgbookend_formats::wal::prev_segno(r, seg),
                seg,
            );
            Value::from(w)
        }
        None => b["stop_wal_file"].clone(),
    };
    assert_eq!(wal.last().unwrap()["name"], last);
    for w in wal {
        assert!(tool
            .bundle_dir("sb")
            .join(w["stored"].as_str().unwrap())
            .exists());
    }
    // The stop LSN is the standby's minimum recovery point, read from pg_control after stop.
    let ctl = pgbookend_formats::control::parse(
        &std::fs::read(tool.bundle_dir("sb").join("pg_control")).unwrap(),
    )
    .unwrap();
    let stop_lsn: pgbookend_formats::lsn::Lsn = b["stop_lsn"].as_str().unwrap().parse().unwrap();
    assert!(
        ctl.min_recovery_point >= stop_lsn,
        "{} < {stop_lsn}",
        ctl.min_recovery_point
    );
}
per_major!(standby_backup_t, standby_backup);

/// Issue 11 item 6: a standby backup holds what the standby had replayed when stop
/// returned, not only up to its minimum recovery point. The standby never writes a data
/// page during the window (no bgwriter writes, no restartpoint), so its minimum recovery
/// point stays behind the rows the primary commits and the standby replays before stop.
fn standby_replay_position(major: u32) {
    let primary = Cluster::start(ClusterOptions::new(major));
    primary.psql("CREATE TABLE rows (t text)");
    let standby = common::make_standby(&primary);
    standby.stop();
    standby.append_conf("bgwriter_lru_maxpages = 0");
    standby.append_conf("checkpoint_timeout = '1h'");
    standby.start_again().expect("standby restarts");
    let tool = Tool::new(&standby);
    tool.start("rp", &[]).ok();
    let work = pgbookend_testkit::temp_dir("replay");
    let copy = work.path().join("data");
    assert!(common::cp_live(standby.pgdata(), &copy).unwrap().success());
    primary.psql("INSERT INTO rows VALUES ('replayed before stop')");
    let target = primary.psql("SELECT pg_current_wal_lsn()");
    assert!(common::wait_until(Duration::from_secs(30), || standby
        .psql(&format!(
            "SELECT pg_last_wal_replay_lsn() >= '{target}'"
        ))
        == "t"));
    tool.stop("rp", &[]).ok();
    let b = bundle_json(&tool, "rp");
    let lsn = |v: &Value| -> pgbookend_formats::lsn::Lsn { v.as_str().unwrap().parse().unwrap() };
    let replay = lsn(&b["replay_lsn"]);
    let target: pgbookend_formats::lsn::Lsn = target.parse().unwrap();
    assert!(replay >= target, "replay_lsn {replay} < {target}");
    assert!(replay > lsn(&b["stop_lsn"]), "{b}");
    let last = b["wal"].as_array().unwrap().last().unwrap()["name"].clone();
    let seg = b["wal_segment_size"].as_u64().unwrap() as u32;
    let tli = b["timeline"].as_u64().unwrap() as u32;
    let want = pgbookend_formats::wal::file_name(
        tli,
        pgbookend_formats::wal::prev_segno(replay, seg),
        seg,
    );
    assert_eq!(last, want.as_str());
    let d = copy.display().to_string();
    let store = tool.store_path().display().to_string();
    let prep = tool
        .run(&["--json", "prepare", "--pgdata", &d, "--store", &store])
        .ok();
    let recovery = prep.json()["recovery"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(recovery.contains(&replay.to_string()), "{recovery}");
    let r = common::start_restored(major, &copy, work.path());
    assert_eq!(r.psql("SELECT t FROM rows"), "replayed before stop");
}
per_major!(standby_replay_position_t, standby_replay_position);

/// A promotion during a standby backup makes stop fail clearly.
fn standby_promoted(major: u32) {
    let primary = Cluster::start(ClusterOptions::new(major));
    let standby = common::make_standby(&primary);
    let tool = Tool::new(&standby);
    tool.start("promo", &[]).ok();
    standby.psql("SELECT pg_promote()");
    assert!(common::wait_until(Duration::from_secs(30), || standby
        .psql("SELECT pg_is_in_recovery()")
        == "f"));
    let r = tool.stop("promo", &[]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("promoted"), "{r:?}");
    assert!(!tool.bundle_dir("promo").join("bundle.json").exists());
}
per_major!(standby_promoted_t, standby_promoted);
