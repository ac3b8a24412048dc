//! Checked WAL file names, and bounded ranges of segments: the only form in which a WAL
//! name read from a bundle, a store listing or an archive may reach a path or a command.
//!
//! PostgreSQL writes four kinds of files into `pg_wal` and the archive:
//! - a segment: 24 uppercase hex digits (`000000010000000A0000002F`);
//! - a partial segment left by a promotion: a segment name plus `.partial`;
//! - a timeline history file: 8 uppercase hex digits plus `.history`;
//! - a backup history file: a segment name, `.`, 8 uppercase hex digits, `.backup`.
//!
//! Anything else (a `/`, `..`, a space, a quote, lowercase hex, timeline 0) is refused,
//! so a checked name can be joined to a directory and put on a shell command line as is.
//!
//! ```
//! use pgbookend_formats::walname::{WalName, WalKind};
//! let n = WalName::parse("00000002.history").unwrap();
//! assert_eq!(n.kind(), WalKind::History);
//! assert!(WalName::parse("../../etc/ld.so.preload").is_err());
//! assert!(WalName::parse("/etc/passwd").is_err());
//! ```

use crate::wal;
use std::fmt;

/// The longest WAL file name PostgreSQL writes (a backup history file, 40 bytes), with room.
pub const MAX_NAME_LEN: usize = 64;

/// The most segments a backup window (or any range pgbookend walks) may span: 2^18
/// segments, 4 TiB of WAL with 16 MiB segments. A bundle claiming more is refused before
/// anything is allocated for it.
pub const MAX_RANGE_SEGMENTS: u64 = 1 << 18;

/// What a WAL file name stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalKind {
    /// A complete segment.
    Segment,
    /// A segment cut short at a promotion (`.partial`).
    Partial,
    /// A timeline history file (`.history`).
    History,
    /// A backup history file (`<segment>.<offset>.backup`).
    BackupHistory,
}

/// A WAL file name that passed [`WalName::parse`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalName(String);

/// Why a text is not a WAL file name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a WAL file name ({why}); WAL file names look like 000000010000000000000002 or 00000002.history")]
pub struct WalNameError {
    /// The text, quoted and cut to a printable length.
    pub shown: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Why a range of segments cannot be walked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The range spans more segments than allowed.
    #[error("the range spans {count} WAL segments, more than the {cap} allowed")]
    TooLarge {
        /// How many segments the range would span.
        count: u128,
        /// The allowed maximum.
        cap: u64,
    },
    /// The last segment comes before the first.
    #[error("the range ends (segment {last}) before it starts (segment {first})")]
    Backwards {
        /// The first segment number.
        first: u64,
        /// The last segment number.
        last: u64,
    },
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

fn shown(s: &str) -> String {
    let cut: String = s.chars().take(MAX_NAME_LEN).collect();
    let more = if cut.len() < s.len() { "..." } else { "" };
    format!("{cut:?}{more}")
}

/// Whether `s` is 24 uppercase hex digits with a timeline other than 0.
fn is_segment_text(s: &str) -> bool {
    s.len() == wal::FILE_NAME_LEN && is_upper_hex(s) && &s[0..8] != "00000000"
}

impl WalName {
    /// Checks a name from outside the process (bundle, store listing, archive).
    pub fn parse(s: &str) -> Result<WalName, WalNameError> {
        let bad = |why| WalNameError {
            shown: shown(s),
            why,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(bad("it is too long"));
        }
        if !s.is_ascii() {
            return Err(bad("it has characters other than hex digits and a suffix"));
        }
        Self::classify(s)
            .ok_or_else(|| bad("it is not a segment, .partial, .history or .backup name"))?;
        Ok(WalName(s.to_string()))
    }

    fn classify(s: &str) -> Option<WalKind> {
        if is_segment_text(s) {
            return Some(WalKind::Segment);
        }
        if let Some(seg) = s.strip_suffix(".partial") {
            return is_segment_text(seg).then_some(WalKind::Partial);
        }
        if let Some(tli) = s.strip_suffix(".history") {
            return (tli.len() == 8 && is_upper_hex(tli) && tli != "00000000")
                .then_some(WalKind::History);
        }
        let rest = s.strip_suffix(".backup")?;
        let (seg, off) = rest.split_once('.')?;
        (is_segment_text(seg) && off.len() == 8 && is_upper_hex(off))
            .then_some(WalKind::BackupHistory)
    }

    /// The name as text (safe to join to a directory or to pass to a shell unquoted).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What kind of file it names.
    pub fn kind(&self) -> WalKind {
        Self::classify(&self.0).unwrap_or(WalKind::Segment)
    }

    /// The timeline in the name.
    pub fn timeline(&self) -> u32 {
        u32::from_str_radix(&self.0[0..8], 16).unwrap_or(0)
    }

    /// The segment number for a segment-like name (not `.history`) with this segment
    /// size; `None` when the low part cannot occur with it or the size is not valid.
    pub fn segno(&self, seg_size: u32) -> Option<u64> {
        if self.kind() == WalKind::History || !wal::is_valid_seg_size(seg_size) {
            return None;
        }
        wal::parse_file_name(&self.0[..wal::FILE_NAME_LEN], seg_size).map(|(_, s)| s)
    }
}

impl fmt::Display for WalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for WalName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The segment numbers `first..=last`, lazily, once the range is known to span at most
/// `cap` segments: nothing is allocated for it, whatever the bounds claim.
pub fn bounded_segnos(
    first: u64,
    last: u64,
    cap: u64,
) -> Result<std::ops::RangeInclusive<u64>, RangeError> {
    if last < first {
        return Err(RangeError::Backwards { first, last });
    }
    let count = u128::from(last - first) + 1;
    if count > u128::from(cap) {
        return Err(RangeError::TooLarge { count, cap });
    }
    Ok(first..=last)
}

/// The names of segments `first..=last` of timeline `tli`, lazily and bounded as
/// [`bounded_segnos`]. `seg_size` must be valid ([`wal::is_valid_seg_size`]).
pub fn bounded_segment_names(
    tli: u32,
    first: u64,
    last: u64,
    seg_size: u32,
    cap: u64,
) -> Result<impl Iterator<Item = String>, RangeError> {
    let seg_size = if wal::is_valid_seg_size(seg_size) {
        seg_size
    } else {
        wal::DEFAULT_SEG_SIZE
    };
    Ok(bounded_segnos(first, last, cap)?.map(move |s| wal::file_name(tli, s, seg_size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_kind() {
        for (n, k) in [
            ("000000010000000000000002", WalKind::Segment),
            ("00000001000000A90000002F.partial", WalKind::Partial),
            ("0000001A.history", WalKind::History),
            (
                "000000010000000000000002.00000028.backup",
                WalKind::BackupHistory,
            ),
        ] {
            let w = WalName::parse(n).unwrap();
            assert_eq!(w.kind(), k, "{n}");
            assert_eq!(w.as_str(), n);
        }
        let w = WalName::parse("00000003000000A90000002F").unwrap();
        assert_eq!(w.timeline(), 3);
        assert_eq!(w.segno(wal::DEFAULT_SEG_SIZE), Some(0xA9 * 256 + 0x2F));
        assert_eq!(
            WalName::parse("00000002.history").unwrap().segno(1 << 24),
            None
        );
    }

    #[test]
    fn refuses_hostile_names() {
        for n in [
            "",
            "/etc/ld.so.preload",
            "../x",
            "../../000000010000000000000002",
            "000000010000000000000002/..",
            "00000001000000000000000a",
            "000000000000000000000001",
            "00000000.history",
            "000000010000000000000002.partial.x",
            "x; touch /tmp/pwned; #",
            "000000010000000000000002 ",
            "0000000100000000000000021",
            "000000010000000000000002.0000002.backup",
            "000000010000000000000002.backup",
            "0000000１0000000000000002",
        ] {
            assert!(WalName::parse(n).is_err(), "{n:?}");
        }
        let long = "0".repeat(10_000);
        let e = WalName::parse(&long).unwrap_err();
        assert!(e.to_string().len() < 300);
    }

    #[test]
    fn ranges_are_bounded_and_lazy() {
        assert_eq!(bounded_segnos(2, 4, 10).unwrap().count(), 3);
        assert_eq!(bounded_segnos(5, 5, 1).unwrap().count(), 1);
        assert!(matches!(
            bounded_segnos(0, u64::MAX, MAX_RANGE_SEGMENTS),
            Err(RangeError::TooLarge { .. })
        ));
        assert!(matches!(
            bounded_segnos(3, 2, 10),
            Err(RangeError::Backwards { .. })
        ));
        let names: Vec<String> = bounded_segment_names(1, 0xFF, 0x100, 1 << 24, 4)
            .unwrap()
            .collect();
        assert_eq!(
            names,
            ["0000000100000000000000FF", "000000010000000100000000"]
        );
    }
}
