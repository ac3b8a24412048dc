//! Tests against files written by real PostgreSQL 13 to 18 servers (see tests/data/make-fixtures.sh).

use pgbookend_formats::control::{self, ControlError, DbState, ReadStableError};
use pgbookend_formats::label::{self, BackupLabel, LabelParams};
use pgbookend_formats::tablespace_map::TablespaceMap;
use pgbookend_formats::{crc32c::crc32c, version, wal, Lsn};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn text(name: &str) -> String {
    String::from_utf8(bytes(name)).unwrap()
}

/// A `key=value` per line fixture.
fn kv(name: &str) -> BTreeMap<String, String> {
    text(name)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn unhex(s: &str) -> String {
    let b: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(b).unwrap()
}

fn on_off(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

#[test]
fn pg_control_matches_what_each_server_reports() {
    for major in version::SUPPORTED_MAJORS {
        let raw = bytes(&format!("pg_control.{major}"));
        assert_eq!(raw.len(), control::FILE_SIZE);
        let cf = control::parse(&raw).unwrap_or_else(|e| panic!("{major}: {e}"));
        let x = kv(&format!("pg_control.{major}.expected"));
        let ctx = format!("major {major}");
        assert_eq!(cf.major, major, "{ctx}");
        assert_eq!(cf.state, DbState::Shutdowned, "{ctx}");
        assert_eq!(
            cf.pg_control_version.to_string(),
            x["system.pg_control_version"],
            "{ctx}"
        );
        assert_eq!(
            cf.catalog_version_no.to_string(),
            x["system.catalog_version_no"],
            "{ctx}"
        );
        assert_eq!(
            cf.system_identifier.to_string(),
            x["system.system_identifier"],
            "{ctx}"
        );
        assert_eq!(
            cf.checkpoint.to_string(),
            x["checkpoint.checkpoint_lsn"],
            "{ctx}"
        );
        assert_eq!(cf.redo.to_string(), x["checkpoint.redo_lsn"], "{ctx}");
        assert_eq!(
            wal::file_name(
                cf.timeline,
                wal::segno(cf.redo, cf.xlog_seg_size),
                cf.xlog_seg_size
            ),
            x["checkpoint.redo_wal_file"],
            "{ctx}"
        );
        assert_eq!(
            cf.timeline.to_string(),
            x["checkpoint.timeline_id"],
            "{ctx}"
        );
        assert_eq!(
            cf.prev_timeline.to_string(),
            x["checkpoint.prev_timeline_id"],
            "{ctx}"
        );
        assert_eq!(
            on_off(cf.full_page_writes),
            x["checkpoint.full_page_writes"],
            "{ctx}"
        );
        assert_eq!(
            format!("{}:{}", cf.next_xid >> 32, cf.next_xid as u32),
            x["checkpoint.next_xid"],
            "{ctx}"
        );
        assert_eq!(
            cf.checkpoint_time.to_string(),
            x["checkpoint.checkpoint_time_epoch"],
            "{ctx}"
        );
        assert_eq!(
            cf.min_recovery_point.to_string(),
            x["recovery.min_recovery_end_lsn"],
            "{ctx}"
        );
        assert_eq!(
            cf.min_recovery_point_tli.to_string(),
            x["recovery.min_recovery_end_timeline"],
            "{ctx}"
        );
        assert_eq!(
            cf.backup_start_point.to_string(),
            x["recovery.backup_start_lsn"],
            "{ctx}"
        );
        assert_eq!(
            cf.backup_end_point.to_string(),
            x["recovery.backup_end_lsn"],
            "{ctx}"
        );
        assert_eq!(
            on_off(cf.backup_end_required),
            x["recovery.end_of_backup_record_required"],
            "{ctx}"
        );
        assert_eq!(
            cf.blcksz.to_string(),
            x["init.database_block_size"],
            "{ctx}"
        );
        assert_eq!(
            cf.relseg_size.to_string(),
            x["init.blocks_per_segment"],
            "{ctx}"
        );
        assert_eq!(
            cf.xlog_blcksz.to_string(),
            x["init.wal_block_size"],
            "{ctx}"
        );
        assert_eq!(
            cf.xlog_seg_size.to_string(),
            x["init.bytes_per_wal_segment"],
            "{ctx}"
        );
        assert!(wal::is_valid_seg_size(cf.xlog_seg_size), "{ctx}");
        assert_eq!(
            cf.data_checksum_version.to_string(),
            x["init.data_page_checksum_version"],
            "{ctx}"
        );
        assert_eq!(
            cf.default_char_signedness.map(|b| on_off(b).to_string()),
            x.get("init.default_char_signedness").cloned(),
            "{ctx}"
        );
        assert_eq!(cf.wal_level_name(), x["setting.wal_level"], "{ctx}");
        assert_eq!(cf.checkpoint_wal_level.is_some(), major >= 17, "{ctx}");
        if let Some(l) = cf.checkpoint_wal_level {
            assert_eq!(l, cf.wal_level, "{ctx}");
        }
        assert_eq!(
            version::major_from_server_version_num(
                x["setting.server_version_num"].parse().unwrap()
            ),
            Some(major),
            "{ctx}"
        );
    }
}

#[test]
fn pg_control_15_matches_pg_controldata() {
    let cf = control::parse(&bytes("pg_control.15")).unwrap();
    let out = text("pg_controldata.15.txt");
    let field = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{name} not in pg_controldata output"))
    };
    assert_eq!(
        field("pg_control version number:"),
        cf.pg_control_version.to_string()
    );
    assert_eq!(
        field("Catalog version number:"),
        cf.catalog_version_no.to_string()
    );
    assert_eq!(
        field("Database system identifier:"),
        cf.system_identifier.to_string()
    );
    assert_eq!(field("Database cluster state:"), cf.state.to_string());
    assert_eq!(
        field("Latest checkpoint location:"),
        cf.checkpoint.to_string()
    );
    assert_eq!(
        field("Latest checkpoint's REDO location:"),
        cf.redo.to_string()
    );
    assert_eq!(
        field("Latest checkpoint's TimeLineID:"),
        cf.timeline.to_string()
    );
    assert_eq!(
        field("Latest checkpoint's PrevTimeLineID:"),
        cf.prev_timeline.to_string()
    );
    assert_eq!(
        field("Latest checkpoint's NextXID:"),
        format!("{}:{}", cf.next_xid >> 32, cf.next_xid as u32)
    );
    assert_eq!(
        field("Minimum recovery ending location:"),
        cf.min_recovery_point.to_string()
    );
    assert_eq!(
        field("Backup start location:"),
        cf.backup_start_point.to_string()
    );
    assert_eq!(
        field("Backup end location:"),
        cf.backup_end_point.to_string()
    );
    assert_eq!(field("wal_level setting:"), cf.wal_level_name());
    assert_eq!(field("Database block size:"), cf.blcksz.to_string());
    assert_eq!(
        field("Bytes per WAL segment:"),
        cf.xlog_seg_size.to_string()
    );
    assert_eq!(
        field("Data page checksum version:"),
        cf.data_checksum_version.to_string()
    );
}

#[test]
fn pg_control_crc_is_checked() {
    for major in version::SUPPORTED_MAJORS {
        let raw = bytes(&format!("pg_control.{major}"));
        let cf = control::parse(&raw).unwrap();
        let crc_at = if major >= 18 { 292 } else { 288 };
        assert_eq!(crc32c(&raw[..crc_at]), cf.crc);
        // Flip one bit in each covered region; every flip is caught.
        for at in [0usize, 20, 33, 100, 172, 228, 252, crc_at - 1, crc_at] {
            let mut bad = raw.clone();
            bad[at] ^= 0x10;
            match control::parse(&bad) {
                Err(ControlError::BadCrc { .. }) | Err(ControlError::UnknownVersion { .. }) => {}
                other => panic!("major {major}, byte {at}: expected an error, got {other:?}"),
            }
        }
        let mut bad = raw.clone();
        bad[40] ^= 1;
        let e = control::parse(&bad).unwrap_err();
        assert!(matches!(e, ControlError::BadCrc { stored, .. } if stored == cf.crc));
        assert!(e.to_string().contains("torn or corrupt"), "{e}");
        assert!(matches!(
            control::parse(&raw[..4096]),
            Err(ControlError::TooShort { len: 4096 })
        ));
    }
}

#[test]
fn invalidate_checkpoint_changes_only_the_checkpoint_and_crc() {
    for major in version::SUPPORTED_MAJORS {
        let raw = bytes(&format!("pg_control.{major}"));
        let before = control::parse(&raw).unwrap();
        let out = control::invalidate_checkpoint(&raw).unwrap();
        assert_eq!(out.len(), raw.len());
        let after = control::parse(&out).unwrap_or_else(|e| panic!("{major}: {e}"));
        assert_eq!(after.checkpoint, control::INVALIDATED_CHECKPOINT);
        assert!(after.is_checkpoint_invalidated());
        assert!(!before.is_checkpoint_invalidated());
        // XRecOffIsValid must hold (else the server refuses even with backup_label).
        assert!(after.checkpoint.0 % u64::from(after.xlog_blcksz) >= 24);
        // Nothing decoded changed except the checkpoint and the CRC.
        let mut expect = before.clone();
        expect.checkpoint = after.checkpoint;
        expect.crc = after.crc;
        assert_eq!(after, expect);
        let crc_at = if major >= 18 { 292 } else { 288 };
        for (i, (a, b)) in raw.iter().zip(&out).enumerate() {
            if a != b {
                assert!(
                    (32..40).contains(&i) || (crc_at..crc_at + 4).contains(&i),
                    "byte {i} changed"
                );
            }
        }
        // Idempotent.
        assert_eq!(control::invalidate_checkpoint(&out).unwrap(), out);
        // A damaged file is refused, not "repaired" by a new CRC.
        let mut bad = raw.clone();
        bad[100] ^= 1;
        assert!(matches!(
            control::invalidate_checkpoint(&bad),
            Err(ControlError::BadCrc { .. })
        ));
    }
}

#[test]
fn read_stable_retries_torn_reads() {
    let good = bytes("pg_control.16");
    let mut torn = good.clone();
    torn[64] ^= 0xFF;
    let reads = [torn.clone(), good.clone()];
    let mut n = 0;
    let (cf, got) = control::read_stable(
        || {
            n += 1;
            Ok(reads[n - 1].clone())
        },
        5,
    )
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(got, good);
    assert_eq!(cf.major, 16);
}

#[test]
fn read_stable_gives_up_on_the_same_bad_bytes_twice() {
    let mut bad = bytes("pg_control.17");
    bad[64] ^= 0xFF;
    let mut n = 0;
    let e = control::read_stable(
        || {
            n += 1;
            Ok(bad.clone())
        },
        10,
    )
    .unwrap_err();
    assert_eq!(n, 2);
    assert!(matches!(
        e,
        ReadStableError::Corrupt(ControlError::BadCrc { .. })
    ));
    assert!(e.to_string().contains("damaged"), "{e}");
}

#[test]
fn read_stable_gives_up_after_max_tries_of_changing_bad_bytes() {
    let good = bytes("pg_control.18");
    let mut n = 0u8;
    let e = control::read_stable(
        || {
            n += 1;
            let mut b = good.clone();
            b[64] ^= n;
            Ok(b)
        },
        4,
    )
    .unwrap_err();
    assert_eq!(n, 4);
    assert!(
        matches!(e, ReadStableError::Unstable { tries: 4, .. }),
        "{e:?}"
    );
}

#[test]
fn read_stable_passes_through_io_and_does_not_retry_other_errors() {
    let e = control::read_stable(|| Err(std::io::Error::other("boom")), 3).unwrap_err();
    assert!(matches!(e, ReadStableError::Io(_)));
    let mut n = 0;
    let e = control::read_stable(
        || {
            n += 1;
            Ok(vec![0u8; 100])
        },
        3,
    )
    .unwrap_err();
    assert_eq!(n, 1);
    assert!(matches!(
        e,
        ReadStableError::Invalid(ControlError::TooShort { len: 100 })
    ));
}

#[test]
fn backup_labels_round_trip_exactly() {
    for major in version::SUPPORTED_MAJORS {
        let t = text(&format!("backup_label.{major}"));
        let x = kv(&format!("backup.{major}.expected"));
        let seg: u32 = x["wal_segment_size"].parse().unwrap();
        let l = BackupLabel::parse(&t).unwrap_or_else(|e| panic!("{major}: {e}"));
        assert_eq!(l.as_str(), t);
        assert_eq!(l.to_string(), t);
        assert_eq!(l.start_wal_location, x["start_lsn"].parse::<Lsn>().unwrap());
        assert_eq!(
            l.start_wal_file,
            wal::file_name(1, wal::segno(l.start_wal_location, seg), seg)
        );
        l.check_wal_file(seg).unwrap();
        assert!(l.checkpoint_location >= l.start_wal_location);
        assert_eq!(l.backup_method, "streamed");
        assert_eq!(
            l.backup_from,
            if major == 13 { "master" } else { "primary" }
        );
        assert_eq!(l.label, format!("pgbookend fixture {major}"));
        assert_eq!(l.start_timeline, Some(1));
        assert!(l.start_time.ends_with(" UTC"), "{}", l.start_time);
        assert_eq!(l.incremental_from_lsn, None);
        // Building the same label from its parts gives the same bytes.
        let p = LabelParams {
            major,
            start_wal_location: l.start_wal_location,
            timeline: l.timeline(),
            seg_size: seg,
            checkpoint_location: l.checkpoint_location,
            from_standby: l.from_standby(),
            start_time: l.start_time.clone(),
            label: l.label.clone(),
            incremental_from: None,
        };
        assert_eq!(label::format(&p), t, "major {major}");
        // The WAL a backup needs, from start to stop.
        let stop: Lsn = x["stop_lsn"].parse().unwrap();
        assert_eq!(
            wal::segment_range(l.start_wal_location, stop, 1, seg),
            vec![l.start_wal_file.clone()]
        );
    }
}

#[test]
fn tablespace_maps_round_trip_exactly() {
    for major in version::SUPPORTED_MAJORS {
        let t = text(&format!("tablespace_map.{major}"));
        let x = kv(&format!("backup.{major}.expected"));
        let m =
            TablespaceMap::parse_for_major(&t, major).unwrap_or_else(|e| panic!("{major}: {e}"));
        let mut want: Vec<(u32, String)> = x
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("tablespace.")?.parse().ok()?, unhex(v))))
            .collect();
        want.sort();
        let mut got = m.entries.clone();
        got.sort();
        assert_eq!(got, want, "major {major}");
        assert!(got.iter().any(|(_, p)| p.contains(' ')));
        assert!(got.iter().any(|(_, p)| p.contains('\\')));
        assert!(got.iter().any(|(_, p)| p.contains('\n')));
        assert_eq!(m.format_for_major(major).unwrap(), t, "major {major}");
        if major >= 14 {
            assert_eq!(TablespaceMap::parse(&t).unwrap(), m);
            assert_eq!(m.format(), t);
        } else {
            // 13 does not escape backslashes: reading its map with the 14+ rules loses them.
            assert_ne!(TablespaceMap::parse(&t).unwrap(), m);
        }
    }
}
