//! Property tests: every format this crate writes reads back to the same values and the same
//! bytes, and every parser takes random and hostile bytes without panicking or allocating
//! beyond a bound.

use pgbookend_formats::label::{self, BackupLabel, LabelParams};
use pgbookend_formats::tablespace_map::TablespaceMap;
use pgbookend_formats::walname::{self, WalKind, WalName};
use pgbookend_formats::{control, wal, Lsn};
use proptest::prelude::*;

fn seg_size() -> impl Strategy<Value = u32> {
    (20u32..=30).prop_map(|bits| 1u32 << bits)
}

/// A label text as a user might pass to pg_backup_start: printable, no newline.
fn label_text() -> impl Strategy<Value = String> {
    "[ -~]{0,80}"
}

/// Time text as `%Y-%m-%d %H:%M:%S %Z` prints it.
fn start_time() -> impl Strategy<Value = String> {
    (
        2000u32..2100,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        "[A-Z]{3,5}|[+-][0-9]{2}",
    )
        .prop_map(|(y, mo, d, h, mi, s, tz)| {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} {tz}")
        })
}

/// A tablespace path: anything without NUL, non-empty, including the characters that need escaping.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just('\n'),
            Just('\r'),
            Just('\\'),
            Just(' '),
            Just('/'),
            any::<char>().prop_filter("no NUL", |c| *c != '\0'),
        ],
        1..40,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    #[test]
    fn lsn_round_trips_in_both_forms(v in any::<u64>()) {
        let l = Lsn(v);
        prop_assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        prop_assert_eq!(l.format_padded().parse::<Lsn>().unwrap(), l);
        prop_assert_eq!(l.to_string().to_lowercase().parse::<Lsn>().unwrap(), l);
        let (hi, lo) = l.format_padded().split_once('/').map(|(a, b)| (a.len(), b.len())).unwrap();
        prop_assert!((1..=8).contains(&hi));
        prop_assert_eq!(lo, 8);
    }

    #[test]
    fn wal_names_round_trip(tli in 1u32.., lsn in any::<u64>(), seg in seg_size()) {
        prop_assert!(wal::is_valid_seg_size(seg));
        let n = wal::segno(Lsn(lsn), seg);
        let name = wal::file_name(tli, n, seg);
        prop_assert_eq!(name.len(), 24);
        prop_assert_eq!(wal::parse_file_name(&name, seg), Some((tli, n)));
        let start = wal::segment_start(n, seg);
        prop_assert!(start.0 <= lsn && lsn - start.0 < u64::from(seg));
        prop_assert_eq!(wal::prev_segno(Lsn(lsn).max(Lsn(1)), seg), (lsn.max(1) - 1) / u64::from(seg));
    }

    #[test]
    fn segment_ranges_are_contiguous(start in 0u64..(1 << 40), len in 0u64..(1 << 28), seg in seg_size()) {
        let stop = start + len;
        let names = wal::segment_range(Lsn(start), Lsn(stop), 1, seg);
        prop_assert!(!names.is_empty());
        let nums: Vec<u64> = names.iter().map(|n| wal::parse_file_name(n, seg).unwrap().1).collect();
        prop_assert_eq!(nums[0], wal::segno(Lsn(start), seg));
        prop_assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        if stop > start {
            prop_assert_eq!(*nums.last().unwrap(), wal::prev_segno(Lsn(stop), seg).max(nums[0]));
        }
    }

    #[test]
    fn labels_format_parse_format(
        major in 13u32..=18,
        start in 1u64..(1 << 48),
        ckpt_off in 0u64..(1 << 20),
        tli in 1u32..1000,
        seg in seg_size(),
        from_standby in any::<bool>(),
        time in start_time(),
        text in label_text(),
        incr in proptest::option::of((1u64..(1 << 40), 1u32..1000)),
    ) {
        let p = LabelParams {
            major,
            start_wal_location: Lsn(start),
            timeline: tli,
            seg_size: seg,
            checkpoint_location: Lsn(start + ckpt_off),
            from_standby,
            start_time: time,
            label: text,
            incremental_from: if major >= 17 { incr.map(|(l, t)| (Lsn(l), t)) } else { None },
        };
        let s1 = label::format(&p);
        let l = BackupLabel::parse(&s1).map_err(|e| TestCaseError::fail(format!("{e}\n{s1}")))?;
        prop_assert_eq!(l.as_str(), s1.as_str());
        prop_assert_eq!(l.start_wal_location, p.start_wal_location);
        prop_assert_eq!(l.checkpoint_location, p.checkpoint_location);
        prop_assert_eq!(l.timeline(), tli);
        prop_assert_eq!(l.start_timeline, Some(tli));
        prop_assert_eq!(&l.label, &p.label);
        prop_assert_eq!(l.from_standby(), from_standby);
        l.check_wal_file(seg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again = LabelParams {
            major,
            start_wal_location: l.start_wal_location,
            timeline: l.timeline(),
            seg_size: seg,
            checkpoint_location: l.checkpoint_location,
            from_standby: l.from_standby(),
            start_time: l.start_time.clone(),
            label: l.label.clone(),
            incremental_from: l.incremental_from_lsn.zip(l.incremental_from_tli),
        };
        prop_assert_eq!(label::format(&again), s1);
    }

    #[test]
    fn tablespace_maps_format_parse_format(entries in prop::collection::vec((any::<u32>(), path()), 0..5)) {
        let m = TablespaceMap { entries };
        let s1 = m.format();
        let back = TablespaceMap::parse(&s1).map_err(|e| TestCaseError::fail(format!("{e}\n{s1:?}")))?;
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.format(), s1.clone());
        for major in 14..=18 {
            prop_assert_eq!(m.format_for_major(major).unwrap(), s1.clone());
            prop_assert_eq!(TablespaceMap::parse_for_major(&s1, major).unwrap(), m.clone());
        }
        // 13: whatever it can represent round-trips; the rest is refused, never garbled.
        if let Ok(s13) = m.format_for_major(13) {
            let back = TablespaceMap::parse_for_major(&s13, 13).map_err(|e| TestCaseError::fail(format!("{e}\n{s13:?}")))?;
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(back.format_for_major(13).unwrap(), s13);
        } else {
            let c_space = |c: char| c.is_ascii_whitespace() || c == '\x0b';
            let unrepresentable = m.entries.iter().any(|(_, p)| p.ends_with('\\') || p.starts_with(c_space));
            prop_assert!(unrepresentable);
        }
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,300}", b in prop::collection::vec(any::<u8>(), 0..9000)) {
        let _ = BackupLabel::parse(&s);
        let _ = TablespaceMap::parse(&s);
        let _ = TablespaceMap::parse_for_major(&s, 13);
        let _ = s.parse::<Lsn>();
        let _ = wal::parse_file_name(&s, wal::DEFAULT_SEG_SIZE);
        let _ = control::parse(&b);
    }

    #[test]
    fn wal_names_accept_only_safe_text(s in "\\PC{0,80}", b in prop::collection::vec(any::<u8>(), 0..100)) {
        for text in [s.clone(), String::from_utf8_lossy(&b).into_owned()] {
            if let Ok(w) = WalName::parse(&text) {
                prop_assert_eq!(w.as_str(), text.as_str());
                prop_assert!(text.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.'));
                prop_assert!(!text.contains("..") && !text.starts_with('.'));
                let _ = w.segno(wal::DEFAULT_SEG_SIZE);
            }
        }
    }

    #[test]
    fn wal_names_hostile_variants(tli in 1u32.., n in any::<u64>(), seg in seg_size(), cut in 0usize..40, junk in "[/. ;'\"a-z\\\\]{1,4}") {
        let name = wal::file_name(tli, wal::segno(Lsn(n), seg), seg);
        let w = WalName::parse(&name).unwrap();
        prop_assert_eq!(w.kind(), WalKind::Segment);
        prop_assert_eq!(w.timeline(), tli);
        for bad in [
            format!("{junk}{name}"),
            format!("{name}{junk}"),
            format!("../{name}"),
            format!("/{name}"),
            name[..cut.min(23)].to_string(),
        ] {
            if let Ok(w) = WalName::parse(&bad) {
                // Only the legitimate suffixes may be added.
                prop_assert!(matches!(w.kind(), WalKind::Partial | WalKind::BackupHistory), "{}", bad);
            }
        }
    }

    #[test]
    fn segment_ranges_never_exceed_their_cap(first in any::<u64>(), last in any::<u64>(), cap in 0u64..(1 << 20)) {
        match walname::bounded_segnos(first, last, cap) {
            Ok(r) => {
                prop_assert!(last >= first);
                prop_assert!(last - first < cap);
                prop_assert_eq!(r.size_hint().1, Some((last - first + 1) as usize));
            }
            Err(walname::RangeError::TooLarge { count, .. }) => prop_assert!(count > u128::from(cap)),
            Err(walname::RangeError::Backwards { .. }) => prop_assert!(last < first),
        }
    }

    #[test]
    fn mutated_labels_and_controls_never_panic(
        major in 13u32..=18,
        start in 1u64..(1 << 48),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let p = LabelParams {
            major,
            start_wal_location: Lsn(start),
            timeline: 1,
            seg_size: wal::DEFAULT_SEG_SIZE,
            checkpoint_location: Lsn(start + 40),
            from_standby: false,
            start_time: "2026-01-01 00:00:00 UTC".into(),
            label: "b1".into(),
            incremental_from: None,
        };
        let mut bytes = label::format(&p).into_bytes();
        for (i, v) in &flips {
            let len = bytes.len();
            bytes[i % len] = *v;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(l) = BackupLabel::parse(&text) {
            let _ = l.check_wal_file(wal::DEFAULT_SEG_SIZE);
        }
        let _ = TablespaceMap::parse_for_major(&text, major);
        let mut ctl = vec![0u8; 8192];
        for (i, v) in &flips {
            ctl[i % 8192] = *v;
        }
        let _ = control::parse(&ctl);
        let _ = control::parse(&ctl[..cut % 8193]);
    }
}
