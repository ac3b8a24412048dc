//! `backup_label`: the text `pg_backup_stop` returns, parsed and rebuilt byte for byte.
//!
//! A restored copy recovers correctly only with the exact `backup_label` of
//! its backup, so [`BackupLabel`] keeps the original text ([`BackupLabel::as_str`])
//! next to the decoded fields, and [`format()`] builds a label in the exact
//! layout a given major writes.
//!
//! # Layout (13 to 18)
//!
//! Written by `do_pg_start_backup` (xlog.c, 13 and 14) or
//! `build_backup_content` (xlog.c in 15, xlogbackup.c from 16), one field per
//! line, each ending in `\n`, in this order:
//!
//! ```text
//! START WAL LOCATION: %X/%X (file %s)     start LSN, WAL file of (start TLI, start segment)
//! CHECKPOINT LOCATION: %X/%X
//! BACKUP METHOD: streamed                 ("pg_start_backup" for 13/14 exclusive backups)
//! BACKUP FROM: primary                    ("master" in 13; "standby" on a standby)
//! START TIME: %Y-%m-%d %H:%M:%S %Z        in the server's log_timezone
//! LABEL: %s                               the label passed to pg_backup_start
//! START TIMELINE: %u
//! INCREMENTAL FROM LSN: %X/%X             17+, incremental backups only
//! INCREMENTAL FROM TLI: %u                17+, incremental backups only
//! ```
//!
//! LSNs are printed `%X/%X`, without zero padding, in every major from 13 to
//! 18 (`LSN_FORMAT_ARGS`; 18.6's xlogbackup.c still uses `%X/%X`). The
//! parser also accepts zero-padded LSNs (`0/02000028`), as PostgreSQL's own
//! `sscanf("%X/%X")` does.
//!
//! The label text itself is not escaped by PostgreSQL; a label containing a
//! newline continues on the next lines, which the parser folds back into
//! [`BackupLabel::label`] up to the `START TIMELINE:` line.

use crate::lsn::Lsn;
use crate::wal;
use std::fmt;

const START_WAL: &str = "START WAL LOCATION: ";
const CHECKPOINT: &str = "CHECKPOINT LOCATION: ";
const METHOD: &str = "BACKUP METHOD: ";
const FROM: &str = "BACKUP FROM: ";
const START_TIME: &str = "START TIME: ";
const LABEL: &str = "LABEL: ";
const START_TLI: &str = "START TIMELINE: ";
const INCR_LSN: &str = "INCREMENTAL FROM LSN: ";
const INCR_TLI: &str = "INCREMENTAL FROM TLI: ";

/// A parsed `backup_label`, with the exact original text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    /// START WAL LOCATION: the REDO point of the backup's checkpoint; recovery starts reading WAL here.
    pub start_wal_location: Lsn,
    /// The `(file ...)` part of START WAL LOCATION: the first WAL file the backup needs.
    pub start_wal_file: String,
    /// CHECKPOINT LOCATION: the checkpoint record recovery starts from.
    pub checkpoint_location: Lsn,
    /// BACKUP METHOD (`streamed` for non-exclusive backups).
    pub backup_method: String,
    /// BACKUP FROM (`primary`, `master` in 13, or `standby`).
    pub backup_from: String,
    /// START TIME, as the server wrote it.
    pub start_time: String,
    /// LABEL: the label given to `pg_backup_start` (pgbookend's backup ID).
    pub label: String,
    /// START TIMELINE (always present since 11).
    pub start_timeline: Option<u32>,
    /// INCREMENTAL FROM LSN (17+, incremental backups).
    pub incremental_from_lsn: Option<Lsn>,
    /// INCREMENTAL FROM TLI (17+, incremental backups).
    pub incremental_from_tli: Option<u32>,
    /// The timeline in `start_wal_file`, which recovery uses.
    file_tli: u32,
    /// The text this was parsed from.
    raw: String,
}

/// Why a text is not a `backup_label` pgbookend can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A line is missing or not what PostgreSQL writes there.
    #[error("backup_label line {line}: expected {expected}, found {found:?}; this is not a backup_label written by PostgreSQL 13 to 18, or it was altered")]
    Unexpected {
        /// 1-based line number.
        line: usize,
        /// What should be there.
        expected: &'static str,
        /// What is there (`""` at end of text).
        found: String,
    },
    /// The last line has no newline: the text was cut short.
    #[error("backup_label line {line} does not end with a newline: the file is truncated")]
    NotTerminated {
        /// 1-based line number of the unterminated line.
        line: usize,
    },
    /// START TIMELINE disagrees with the timeline of the start WAL file (PostgreSQL refuses such a label).
    #[error("backup_label is inconsistent: START TIMELINE is {start_timeline} but the start WAL file {file} is on timeline {file_tli}")]
    TimelineMismatch {
        /// START TIMELINE.
        start_timeline: u32,
        /// The start WAL file name.
        file: String,
        /// Its timeline.
        file_tli: u32,
    },
    /// The start WAL file does not hold the start location with this segment size.
    #[error("backup_label is inconsistent with this cluster: WAL file {file} does not hold START WAL LOCATION {lsn} with {seg_size}-byte WAL segments")]
    WalFileMismatch {
        /// The start WAL file name.
        file: String,
        /// START WAL LOCATION.
        lsn: Lsn,
        /// The segment size checked against.
        seg_size: u32,
    },
}

/// Walks the lines of a label, keeping line numbers for errors.
struct Lines<'a> {
    lines: Vec<&'a str>,
    next: usize,
}

impl<'a> Lines<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.lines.get(self.next).copied()
    }

    /// The value after `prefix` on the next line, which must start with it.
    fn field(
        &mut self,
        prefix: &'static str,
        expected: &'static str,
    ) -> Result<&'a str, LabelError> {
        match self.peek().and_then(|l| l.strip_prefix(prefix)) {
            Some(v) => {
                self.next += 1;
                Ok(v)
            }
            None => Err(self.unexpected(expected)),
        }
    }

    fn unexpected(&self, expected: &'static str) -> LabelError {
        LabelError::Unexpected {
            line: self.next + 1,
            expected,
            found: self.peek().unwrap_or("").chars().take(200).collect(),
        }
    }
}

/// Whether `s` is a 24-character uppercase-hex WAL file name.
fn is_wal_file_name(s: &str) -> bool {
    s.len() == wal::FILE_NAME_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

impl BackupLabel {
    /// Parses the text of a `backup_label` as PostgreSQL 13 to 18 write it,
    /// checking its structure and that its timelines agree; the exact text is
    /// kept for [`BackupLabel::as_str`].
    pub fn parse(text: &str) -> Result<BackupLabel, LabelError> {
        let mut lines: Vec<&str> = text.split('\n').collect();
        // split leaves "" after a final '\n'; anything else there is an unterminated line.
        match lines.pop() {
            Some("") => {}
            _ => {
                return Err(LabelError::NotTerminated {
                    line: lines.len() + 1,
                })
            }
        }
        let mut it = Lines { lines, next: 0 };

        let expected_start = "\"START WAL LOCATION: <lsn> (file <WAL file name>)\"";
        let start = it.field(START_WAL, expected_start)?;
        let bad_start = || LabelError::Unexpected {
            line: 1,
            expected: expected_start,
            found: format!("{START_WAL}{start}"),
        };
        let (lsn, rest) = start.split_once(" (file ").ok_or_else(bad_start)?;
        let start_wal_location: Lsn = lsn.parse().map_err(|_| bad_start())?;
        let file = rest.strip_suffix(')').ok_or_else(bad_start)?;
        if !is_wal_file_name(file) {
            return Err(bad_start());
        }
        let file_tli = u32::from_str_radix(&file[..8], 16).map_err(|_| bad_start())?;

        let expected_ckpt = "\"CHECKPOINT LOCATION: <lsn>\"";
        let ckpt = it.field(CHECKPOINT, expected_ckpt)?;
        let checkpoint_location: Lsn = ckpt.parse().map_err(|_| LabelError::Unexpected {
            line: 2,
            expected: expected_ckpt,
            found: format!("{CHECKPOINT}{ckpt}"),
        })?;

        let backup_method = it.field(METHOD, "\"BACKUP METHOD: <method>\"")?.to_string();
        let backup_from = it
            .field(FROM, "\"BACKUP FROM: <primary|standby>\"")?
            .to_string();
        let start_time = it.field(START_TIME, "\"START TIME: <time>\"")?.to_string();
        let mut label = it.field(LABEL, "\"LABEL: <label>\"")?.to_string();
        while let Some(l) = it.peek() {
            if l.starts_with(START_TLI) || l.starts_with(INCR_LSN) {
                break;
            }
            label.push('\n');
            label.push_str(l);
            it.next += 1;
        }

        let mut start_timeline = None;
        if it.peek().is_some_and(|l| l.starts_with(START_TLI)) {
            let expected = "\"START TIMELINE: <decimal timeline>\"";
            let v = it.field(START_TLI, expected)?;
            let tli = parse_decimal_u32(v).ok_or_else(|| LabelError::Unexpected {
                line: it.next,
                expected,
                found: format!("{START_TLI}{v}"),
            })?;
            if tli != file_tli {
                return Err(LabelError::TimelineMismatch {
                    start_timeline: tli,
                    file: file.to_string(),
                    file_tli,
                });
            }
            start_timeline = Some(tli);
        }

        let mut incremental_from_lsn = None;
        let mut incremental_from_tli = None;
        if it.peek().is_some_and(|l| l.starts_with(INCR_LSN)) {
            let expected = "\"INCREMENTAL FROM LSN: <lsn>\"";
            let v = it.field(INCR_LSN, expected)?;
            incremental_from_lsn = Some(v.parse().map_err(|_| LabelError::Unexpected {
                line: it.next,
                expected,
                found: format!("{INCR_LSN}{v}"),
            })?);
            let expected = "\"INCREMENTAL FROM TLI: <decimal timeline>\"";
            let v = it.field(INCR_TLI, expected)?;
            incremental_from_tli =
                Some(parse_decimal_u32(v).ok_or_else(|| LabelError::Unexpected {
                    line: it.next,
                    expected,
                    found: format!("{INCR_TLI}{v}"),
                })?);
        }

        if it.peek().is_some() {
            return Err(it.unexpected("the end of the file"));
        }

        Ok(BackupLabel {
            start_wal_location,
            start_wal_file: file.to_string(),
            checkpoint_location,
            backup_method,
            backup_from,
            start_time,
            label,
            start_timeline,
            incremental_from_lsn,
            incremental_from_tli,
            file_tli,
            raw: text.to_string(),
        })
    }

    /// The exact text the label was parsed from, to write it back byte for byte.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The exact text, owned.
    pub fn into_string(self) -> String {
        self.raw
    }

    /// The timeline recovery starts on: the one in the start WAL file name
    /// (PostgreSQL's `backupLabelTLI`), present even without START TIMELINE.
    pub fn timeline(&self) -> u32 {
        self.file_tli
    }

    /// Whether the label was taken on a standby (BACKUP FROM: standby), which
    /// makes the end of the backup come from `pg_control`'s minimum recovery point.
    pub fn from_standby(&self) -> bool {
        self.backup_from == "standby"
    }

    /// Whether this is the label of an incremental backup (17+), which the
    /// server refuses to start from without `pg_combinebackup`.
    pub fn is_incremental(&self) -> bool {
        self.incremental_from_lsn.is_some()
    }

    /// Checks that the start WAL file is the one holding the start location
    /// for this cluster's segment size, to catch a label paired with the
    /// wrong cluster or a hand-edited label.
    pub fn check_wal_file(&self, seg_size: u32) -> Result<(), LabelError> {
        let ok = wal::is_valid_seg_size(seg_size)
            && wal::parse_file_name(&self.start_wal_file, seg_size)
                == Some((self.file_tli, wal::segno(self.start_wal_location, seg_size)));
        if ok {
            Ok(())
        } else {
            Err(LabelError::WalFileMismatch {
                file: self.start_wal_file.clone(),
                lsn: self.start_wal_location,
                seg_size,
            })
        }
    }
}

impl fmt::Display for BackupLabel {
    /// The exact original text (so `to_string()` round-trips).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for BackupLabel {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<BackupLabel, LabelError> {
        BackupLabel::parse(s)
    }
}

/// Parses a `backup_label` (same as [`BackupLabel::parse`]), for callers that prefer a free function.
pub fn parse(text: &str) -> Result<BackupLabel, LabelError> {
    BackupLabel::parse(text)
}

/// A decimal `%u` as PostgreSQL prints it (no sign, no padding needed).
fn parse_decimal_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What a non-exclusive backup's label is made of, to build one with [`format()`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelParams {
    /// The major whose layout to use (13 to 18).
    pub major: u32,
    /// The start LSN (REDO point of the backup checkpoint).
    pub start_wal_location: Lsn,
    /// The timeline at backup start (names the WAL file and START TIMELINE).
    pub timeline: u32,
    /// The WAL segment size, to name the start WAL file.
    pub seg_size: u32,
    /// The backup checkpoint's location.
    pub checkpoint_location: Lsn,
    /// Whether the backup ran on a standby.
    pub from_standby: bool,
    /// START TIME text (`%Y-%m-%d %H:%M:%S %Z` in PostgreSQL).
    pub start_time: String,
    /// The label.
    pub label: String,
    /// INCREMENTAL FROM LSN and TLI (only 17+ writes these, for incremental backups).
    pub incremental_from: Option<(Lsn, u32)>,
}

/// Builds a `backup_label` exactly as PostgreSQL `p.major` writes it for a
/// non-exclusive backup; used by tests and tools that need a label in the
/// server's exact layout (pgbookend never invents a label for a real backup).
///
/// # Panics
/// If `p.seg_size` is 0.
pub fn format(p: &LabelParams) -> String {
    let file = wal::file_name(
        p.timeline,
        wal::segno(p.start_wal_location, p.seg_size),
        p.seg_size,
    );
    let from = match (p.from_standby, p.major) {
        (true, _) => "standby",
        (false, 13) => "master",
        (false, _) => "primary",
    };
    let mut s = format!(
        "{START_WAL}{} (file {file})\n{CHECKPOINT}{}\n{METHOD}streamed\n{FROM}{from}\n{START_TIME}{}\n{LABEL}{}\n{START_TLI}{}\n",
        lsn_text(p.major, p.start_wal_location),
        lsn_text(p.major, p.checkpoint_location),
        p.start_time,
        p.label,
        p.timeline,
    );
    if let Some((lsn, tli)) = p.incremental_from {
        s.push_str(&format!(
            "{INCR_LSN}{}\n{INCR_TLI}{tli}\n",
            lsn_text(p.major, lsn)
        ));
    }
    s
}

/// How `major` prints an LSN in `backup_label`: `%X/%X` for 13 to 18.
fn lsn_text(_major: u32, lsn: Lsn) -> String {
    lsn.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
CHECKPOINT LOCATION: 0/2000060\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: primary\n\
START TIME: 2024-05-01 10:00:00 UTC\n\
LABEL: nightly-42\n\
START TIMELINE: 1\n";

    #[test]
    fn parses_and_keeps_text() {
        let l = BackupLabel::parse(PG15).unwrap();
        assert_eq!(l.start_wal_location, Lsn(0x2000028));
        assert_eq!(l.start_wal_file, "000000010000000000000002");
        assert_eq!(l.checkpoint_location, Lsn(0x2000060));
        assert_eq!(l.backup_method, "streamed");
        assert_eq!(l.backup_from, "primary");
        assert_eq!(l.start_time, "2024-05-01 10:00:00 UTC");
        assert_eq!(l.label, "nightly-42");
        assert_eq!(l.start_timeline, Some(1));
        assert_eq!(l.timeline(), 1);
        assert!(!l.is_incremental());
        assert_eq!(l.as_str(), PG15);
        assert_eq!(l.to_string(), PG15);
        assert!(l.check_wal_file(wal::DEFAULT_SEG_SIZE).is_ok());
        assert!(l.check_wal_file(64 << 20).is_err());
    }

    #[test]
    fn padded_lsns_and_incremental_lines() {
        let t = "START WAL LOCATION: 0/02000028 (file 000000020000000000000002)\n\
CHECKPOINT LOCATION: 0/02000060\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: standby\n\
START TIME: 2025-01-01 00:00:00 CET\n\
LABEL: a\n\
START TIMELINE: 2\n\
INCREMENTAL FROM LSN: 0/1000028\n\
INCREMENTAL FROM TLI: 1\n";
        let l = BackupLabel::parse(t).unwrap();
        assert_eq!(l.start_wal_location, Lsn(0x2000028));
        assert!(l.from_standby());
        assert_eq!(l.incremental_from_lsn, Some(Lsn(0x1000028)));
        assert_eq!(l.incremental_from_tli, Some(1));
        assert_eq!(l.as_str(), t);
    }

    #[test]
    fn multi_line_label() {
        let t = PG15.replace("LABEL: nightly-42\n", "LABEL: two\nlines: here\n");
        let l = BackupLabel::parse(&t).unwrap();
        assert_eq!(l.label, "two\nlines: here");
        assert_eq!(l.as_str(), t);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            BackupLabel::parse(""),
            Err(LabelError::Unexpected { line: 1, .. })
        ));
        assert!(matches!(
            BackupLabel::parse(&PG15[..PG15.len() - 1]),
            Err(LabelError::NotTerminated { line: 7 })
        ));
        let bad = PG15.replace("CHECKPOINT LOCATION: 0/2000060", "CHECKPOINT LOCATION: zz");
        assert!(matches!(
            BackupLabel::parse(&bad),
            Err(LabelError::Unexpected { line: 2, .. })
        ));
        let bad = PG15.replace("START TIMELINE: 1", "START TIMELINE: 2");
        assert!(matches!(
            BackupLabel::parse(&bad),
            Err(LabelError::TimelineMismatch {
                start_timeline: 2,
                file_tli: 1,
                ..
            })
        ));
        let bad = format!("{PG15}STOP TIME: x\n");
        assert!(matches!(
            BackupLabel::parse(&bad),
            Err(LabelError::Unexpected { line: 8, .. })
        ));
        let bad = PG15.replace(
            "(file 000000010000000000000002)",
            "(file 00000001000000000000002)",
        );
        let e = BackupLabel::parse(&bad).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn formats_like_each_major() {
        let mut p = LabelParams {
            major: 15,
            start_wal_location: Lsn(0x2000028),
            timeline: 1,
            seg_size: wal::DEFAULT_SEG_SIZE,
            checkpoint_location: Lsn(0x2000060),
            from_standby: false,
            start_time: "2024-05-01 10:00:00 UTC".into(),
            label: "nightly-42".into(),
            incremental_from: None,
        };
        assert_eq!(format(&p), PG15);
        p.major = 13;
        assert_eq!(format(&p), PG15.replace("primary", "master"));
        p.from_standby = true;
        assert_eq!(format(&p), PG15.replace("primary", "standby"));
    }
}
