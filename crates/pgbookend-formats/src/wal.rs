//! WAL segment numbers and file names, as PostgreSQL's `xlog_internal.h` computes them.
//!
//! The WAL stream is cut into segments of `seg_size` bytes (16 MiB unless
//! `initdb --wal-segsize` chose otherwise; the value is in `pg_control`).
//! Segment `n` of timeline `t` is stored in a file named by 24 uppercase hex
//! digits: the timeline, then `n / segments_per_xlogid`, then
//! `n % segments_per_xlogid`, 8 digits each, where `segments_per_xlogid` is
//! `2^32 / seg_size`.
//!
//! The functions taking `seg_size` expect a valid size (see
//! [`is_valid_seg_size`]); the size comes from `pg_control`, which
//! [`crate::control::parse`] has already read.
//!
//! ```
//! use pgbookend_formats::{wal, Lsn};
//! let seg = wal::DEFAULT_SEG_SIZE;
//! let start = Lsn(0xA9_2F00_0028);
//! assert_eq!(wal::file_name(1, wal::segno(start, seg), seg), "00000001000000A90000002F");
//! assert_eq!(wal::parse_file_name("00000001000000A90000002F", seg), Some((1, wal::segno(start, seg))));
//! // A backup that stopped exactly at a segment boundary does not need the segment starting there.
//! assert_eq!(
//!     wal::segment_range(start, Lsn(0xA9_3100_0000), 1, seg),
//!     ["00000001000000A90000002F", "00000001000000A900000030"]
//! );
//! ```

use crate::lsn::Lsn;

/// The WAL segment size when `initdb --wal-segsize` was not used: 16 MiB.
pub const DEFAULT_SEG_SIZE: u32 = 16 * 1024 * 1024;

/// The smallest segment size PostgreSQL accepts (`WalSegMinSize`, 1 MiB).
pub const MIN_SEG_SIZE: u32 = 1024 * 1024;

/// The largest segment size PostgreSQL accepts (`WalSegMaxSize`, 1 GiB).
pub const MAX_SEG_SIZE: u32 = 1024 * 1024 * 1024;

/// Length of a WAL segment file name (`XLOG_FNAME_LEN`).
pub const FILE_NAME_LEN: usize = 24;

/// Whether `seg_size` is a size PostgreSQL accepts (`IsValidWalSegSize`): a
/// power of two from 1 MiB to 1 GiB. Check this before trusting a size read
/// from elsewhere.
pub fn is_valid_seg_size(seg_size: u32) -> bool {
    seg_size.is_power_of_two() && (MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&seg_size)
}

/// How many segments share one "xlogid" (the middle 8 hex digits of a file name).
fn segments_per_xlogid(seg_size: u32) -> u64 {
    (1u64 << 32) / u64::from(seg_size)
}

/// The segment that holds the byte at `lsn` (`XLByteToSeg`): the first segment a backup starting at `lsn` needs.
///
/// # Panics
/// If `seg_size` is 0.
pub fn segno(lsn: Lsn, seg_size: u32) -> u64 {
    lsn.0 / u64::from(seg_size)
}

/// The segment that holds the byte just before `lsn` (`XLByteToPrevSeg`): the
/// last segment a backup that stopped at `lsn` needs. A stop LSN on a segment
/// boundary needs nothing of the segment that starts there. For `lsn` 0 it
/// returns 0.
///
/// # Panics
/// If `seg_size` is 0.
pub fn prev_segno(lsn: Lsn, seg_size: u32) -> u64 {
    lsn.0.saturating_sub(1) / u64::from(seg_size)
}

/// The first LSN of segment `segno` (`XLogSegNoOffsetToRecPtr` with offset 0),
/// to say where a segment begins. Saturates at the largest LSN.
pub fn segment_start(segno: u64, seg_size: u32) -> Lsn {
    Lsn(segno.saturating_mul(u64::from(seg_size)))
}

/// The file name of segment `segno` on timeline `tli` (`XLogFileName`), as
/// found in `pg_wal` and in the archive.
///
/// # Panics
/// If `seg_size` is 0.
pub fn file_name(tli: u32, segno: u64, seg_size: u32) -> String {
    let per = segments_per_xlogid(seg_size);
    format!("{:08X}{:08X}{:08X}", tli, segno / per, segno % per)
}

/// Reads a WAL segment file name back into `(timeline, segno)`
/// (`IsXLogFileName` + `XLogFromFileName`), to tell which segment a file in
/// `pg_wal` or an archive holds. Returns `None` for anything that is not a
/// canonical segment name for this `seg_size`: not 24 uppercase hex digits
/// (partial, backup-history and `.history` names included), timeline 0, or a
/// low part that cannot occur with this segment size.
pub fn parse_file_name(name: &str, seg_size: u32) -> Option<(u32, u64)> {
    if name.len() != FILE_NAME_LEN || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    {
        return None;
    }
    if seg_size == 0 {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from(u32::from_str_radix(&name[8..16], 16).ok()?);
    let seg = u64::from(u32::from_str_radix(&name[16..24], 16).ok()?);
    let per = segments_per_xlogid(seg_size);
    if tli == 0 || seg >= per {
        return None;
    }
    Some((tli, log * per + seg))
}

/// Whether `name` is something a server keeps in its WAL directory: a segment
/// (also `.partial`), a timeline `.history`, a backup history file (24 hex digits
/// first), or one of its subdirectories (`archive_status`; `summaries` from 17).
/// How `prepare` tells a restored WAL directory from a directory with other data.
pub fn is_wal_directory_entry(name: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    match name {
        "archive_status" | "summaries" => true,
        _ if name.len() >= FILE_NAME_LEN => {
            name.is_char_boundary(FILE_NAME_LEN) && hex(&name[..FILE_NAME_LEN])
        }
        _ => name.len() == 16 && name.ends_with(".history") && hex(&name[..8]),
    }
}

/// The name of timeline `tli`'s history file (`TLHistoryFileName`,
/// `00000002.history`), which recovery needs to follow a timeline switch.
pub fn history_file_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

/// The names of the WAL files a backup from `start` to `stop` needs, in
/// order: from the segment holding `start` to the segment holding the byte
/// before `stop`, on timeline `tli`. Always at least the start segment (also
/// when `stop <= start`).
///
/// A backup taken on a standby whose timeline changed during the copy needs
/// files of two timelines; the caller builds those lists per timeline.
///
/// # Panics
/// If `seg_size` is 0.
pub fn segment_range(start: Lsn, stop: Lsn, tli: u32, seg_size: u32) -> Vec<String> {
    let first = segno(start, seg_size);
    let last = prev_segno(stop, seg_size).max(first);
    (first..=last)
        .map(|s| file_name(tli, s, seg_size))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_directory_entries() {
        for ok in [
            "000000010000000000000003",
            "000000010000000000000003.partial",
            "000000010000000000000003.00000028.backup",
            "00000002.history",
            "archive_status",
            "summaries",
        ] {
            assert!(is_wal_directory_entry(ok), "{ok}");
        }
        for bad in [
            "passwd",
            "0000000100000000000000é3",
            "base",
            "00000002.historyx",
            "",
        ] {
            assert!(!is_wal_directory_entry(bad), "{bad}");
        }
    }

    const MB16: u32 = DEFAULT_SEG_SIZE;

    #[test]
    fn seg_sizes() {
        assert!(is_valid_seg_size(MB16));
        assert!(is_valid_seg_size(1 << 20));
        assert!(is_valid_seg_size(1 << 30));
        assert!(!is_valid_seg_size(0));
        assert!(!is_valid_seg_size(1 << 19));
        assert!(!is_valid_seg_size(1 << 31));
        assert!(!is_valid_seg_size(3 << 20));
    }

    #[test]
    fn names_like_postgresql() {
        // 0/2000028 with 16 MiB segments is segment 2 of timeline 1.
        assert_eq!(
            file_name(1, segno(Lsn(0x2000028), MB16), MB16),
            "000000010000000000000002"
        );
        // A9/2F000028: log A9, seg 2F.
        assert_eq!(
            file_name(1, segno(Lsn(0xA9_2F00_0028), MB16), MB16),
            "00000001000000A90000002F"
        );
        // 1 GiB segments: 4 per xlogid.
        let gb = 1 << 30;
        assert_eq!(
            file_name(3, segno(Lsn(0x5_C000_0000), gb), gb),
            "000000030000000500000003"
        );
        assert_eq!(history_file_name(0x1A), "0000001A.history");
    }

    #[test]
    fn prev_segment_rule() {
        assert_eq!(prev_segno(Lsn(0x3000000), MB16), 2);
        assert_eq!(prev_segno(Lsn(0x3000001), MB16), 3);
        assert_eq!(prev_segno(Lsn(0), MB16), 0);
        assert_eq!(segment_start(3, MB16), Lsn(0x3000000));
    }

    #[test]
    fn parses_names() {
        assert_eq!(
            parse_file_name("00000001000000A90000002F", MB16),
            Some((1, 0xA9 * 256 + 0x2F))
        );
        assert_eq!(parse_file_name("00000001000000a90000002f", MB16), None);
        assert_eq!(
            parse_file_name("00000001000000A90000002F.partial", MB16),
            None
        );
        assert_eq!(parse_file_name("00000002.history", MB16), None);
        assert_eq!(parse_file_name("000000000000000000000001", MB16), None);
        // Low part 0x100 cannot occur with 16 MiB segments (256 per xlogid).
        assert_eq!(parse_file_name("000000010000000000000100", MB16), None);
    }

    #[test]
    fn ranges() {
        let r = segment_range(Lsn(0x2000028), Lsn(0x4000000), 1, MB16);
        assert_eq!(
            r,
            vec!["000000010000000000000002", "000000010000000000000003"]
        );
        let r = segment_range(Lsn(0x2000028), Lsn(0x2000100), 1, MB16);
        assert_eq!(r, vec!["000000010000000000000002"]);
        let r = segment_range(Lsn(0x2000000), Lsn(0x2000000), 1, MB16);
        assert_eq!(r, vec!["000000010000000000000002"]);
        let r = segment_range(Lsn(0x2000000), Lsn(0x1000000), 1, MB16);
        assert_eq!(r, vec!["000000010000000000000002"]);
        let r = segment_range(Lsn(0xFF_FF00_0000), Lsn(0x100_0100_0000), 1, MB16);
        assert_eq!(
            r,
            vec!["00000001000000FF000000FF", "000000010000010000000000"]
        );
    }
}
