//! The verify room: proves the bytes of a restored copy, not just its file names.
//!
//! Every data page of every relation file the bundle's file list names is read and judged
//! (header, and the data checksum when the cluster has them), and judged again against
//! the WAL of the backup's window: while a backup runs PostgreSQL writes a full-page image
//! of every block changed after the backup's checkpoint, so a bad page that this WAL
//! touches was torn by the copy and is repaired by replay, and a bad page that it does not
//! touch is corruption in the copy. A page whose LSN is past the backup's stop LSN shows a
//! copy read after `stop`. `blockset` reads the WAL, `scan` reads the pages, `report`
//! holds the typed result; [`check_copy`] is the one entry `prepare` and `verify` call.

pub mod blockset;
pub mod report;
pub mod scan;

use crate::bundle::manifest::Manifest;
use crate::error::{Error, Result};
use crate::problem::{problem, Problem};
use pgbookend_formats::control::ControlFile;
use pgbookend_formats::page::BLCKSZ;
use pgbookend_formats::Lsn;
use report::PageReport;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How much of the copy's pages `prepare` and `verify --pgdata` read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PageCheckMode {
    /// Every page of every relation file (the default).
    #[default]
    Full,
    /// A deterministic share (1..=100 percent) of each file's pages, for a quick look.
    Sample(u8),
    /// No page check (`--no-check-pages`).
    Off,
}

impl PageCheckMode {
    /// Parses the value of `--check-pages`: `full`, `off` or `sample:N%` (N from 1 to 100).
    pub fn parse(s: &str) -> Result<PageCheckMode> {
        let bad = || {
            Error::usage(format!(
                "--check-pages {s:?}: expected full, off or sample:N% (N from 1 to 100)"
            ))
        };
        match s {
            "full" => return Ok(PageCheckMode::Full),
            "off" => return Ok(PageCheckMode::Off),
            _ => {}
        }
        let n = s
            .strip_prefix("sample:")
            .and_then(|r| r.strip_suffix('%'))
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(bad)?;
        Ok(PageCheckMode::Sample(n))
    }

    /// The percentage of pages read.
    pub fn percent(self) -> u8 {
        match self {
            PageCheckMode::Full => 100,
            PageCheckMode::Sample(n) => n,
            PageCheckMode::Off => 0,
        }
    }
}

/// A copy and its bundle, as `prepare` checked them, for the page check.
pub struct CopyToCheck<'a> {
    /// The restored copy.
    pub pgdata: &'a Path,
    /// `--tablespace OID=PATH` remaps.
    pub remap: &'a [(u32, PathBuf)],
    /// `--archive DIR`, where the window's WAL is when the bundle does not hold it.
    pub archive: Option<&'a Path>,
    /// How much to read.
    pub mode: PageCheckMode,
    /// The bundle directory (checked) and its manifest.
    pub bundle_dir: &'a Path,
    pub manifest: &'a Manifest,
    /// The backup's start LSN, from its label.
    pub start: Option<Lsn>,
    /// The bundle's `pg_control` (checksums on or off, block and segment sizes).
    pub control: Option<&'a ControlFile>,
}

/// The page check of a copy, for `prepare` (before it changes anything) and `verify
/// --pgdata`: fills `pages`, and adds a problem for every refusal (corruption, a copy read
/// after stop, a window WAL that cannot be read) and a warning for what was not checked.
pub fn check_copy(
    copy: &CopyToCheck,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) -> Option<PageReport> {
    if copy.mode == PageCheckMode::Off {
        return None;
    }
    let control = copy.control?;
    if control.blcksz as usize != BLCKSZ {
        warnings.push(format!(
            "pages not checked: the cluster's block size is {}, only {BLCKSZ} is supported",
            control.blcksz
        ));
        return None;
    }
    let Some(list) = &copy.manifest.file_list else {
        warnings.push("pages not checked: the bundle has no file list".into());
        return None;
    };
    let t0 = Instant::now();
    let window = match blockset::read_window(copy) {
        Ok(Some(w)) => w,
        Ok(None) => {
            warnings.push(
                "pages not checked: the WAL of the window is not readable here (keep it in the bundle with --wal collect, or give --archive DIR holding it plain or .zst)".into(),
            );
            return None;
        }
        Err(e) => {
            problems.push(problem(
                "pages_wal",
                format!("the WAL of the backup's window cannot be read to judge the copy's pages: {}", e.message),
                "the bundle's WAL is damaged; use another copy of the bundle, or skip the page check with --no-check-pages",
            ));
            return None;
        }
    };
    let input = scan::ScanInput {
        pgdata: copy.pgdata,
        remap: copy.remap,
        checksums: control.data_checksum_version != 0,
        relseg_size: control.relseg_size,
        stop: window.stop,
        percent: copy.mode.percent(),
    };
    let list_path = copy.bundle_dir.join(&list.name);
    let t1 = Instant::now();
    let outcome = match scan::scan(&input, &list_path, &window) {
        Ok(o) => o,
        Err(e) => {
            problems.push(problem(
                "pages_read",
                format!("the copy's pages cannot be read: {}", e.message),
                "check that the copy is readable, or skip the page check with --no-check-pages",
            ));
            return None;
        }
    };
    let mut report = PageReport::build(outcome, &window, &input, t0.elapsed(), t1.elapsed());
    report.control_after_stop = control_after_stop(copy.pgdata, window.stop);
    warnings.extend(report.skipped.iter().cloned());
    problems.extend(report.problems(pgdata_label(copy.pgdata)));
    Some(report)
}

/// The checkpoint of the copy's own `pg_control` when it is past the backup's stop LSN
/// (the file was copied after stop); read without following a link, at most 64 KiB.
fn control_after_stop(pgdata: &Path, stop: Lsn) -> Option<String> {
    use std::io::Read;
    let dir = crate::fsutil::Dir::open_follow(pgdata).ok()?;
    let f = dir.open_file_beneath(Path::new("global/pg_control")).ok()?;
    let mut bytes = Vec::new();
    f.take(64 << 10).read_to_end(&mut bytes).ok()?;
    let c = pgbookend_formats::control::parse(&bytes).ok()?;
    (!c.is_checkpoint_invalidated() && c.checkpoint > stop).then(|| c.checkpoint.to_string())
}

/// The copy's directory as shown in messages.
fn pgdata_label(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(PageCheckMode::parse("full").unwrap(), PageCheckMode::Full);
        assert_eq!(PageCheckMode::parse("off").unwrap(), PageCheckMode::Off);
        assert_eq!(
            PageCheckMode::parse("sample:5%").unwrap(),
            PageCheckMode::Sample(5)
        );
        for bad in ["sample:0%", "sample:101%", "sample:5", "half", "sample:x%"] {
            assert!(PageCheckMode::parse(bad).is_err(), "{bad}");
        }
    }
}
