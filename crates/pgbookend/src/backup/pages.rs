//! Page checks while a built-in backup reads: when pg_control says data checksums are
//! on, every page of a relation file is checked as it is read. A failing page is read
//! again once: if other bytes come back (a page being written) those are stored; if the
//! same bad bytes come back, it is reported as suspect (the backup does not fail: the
//! WAL of the window may still repair it, and the user decides).

use crate::error::{io_err, Result};
use pgbookend_formats::page::{self, Verdict, BLCKSZ};
use serde::Serialize;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What the page checks need from pg_control (`None` from [`settings`]: no checks).
#[derive(Debug, Clone, Copy)]
pub struct PageSettings {
    pub relseg_size: u32,
}

/// A page whose checksum failed twice with the same bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Suspect {
    pub path: String,
    pub block: u32,
    pub problem: String,
    /// What the WAL of the window says of it (filled after stop: see `judge`).
    pub wal: Option<String>,
}

/// Reads pg_control of `pgdata`: page checks when data checksums are on.
pub fn settings(pgdata: &Path) -> Result<Option<PageSettings>> {
    let p = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&p).map_err(|e| io_err("cannot read", &p, e))?;
    let c = pgbookend_formats::control::parse(&bytes)
        .map_err(|e| crate::error::Error::env(format!("{}: {e:?}", p.display())))?;
    Ok(
        (c.data_checksum_version != 0 && c.blcksz as usize == BLCKSZ).then_some(PageSettings {
            relseg_size: c.relseg_size,
        }),
    )
}

/// The segment number of a relation file path (`None`: not a relation file).
pub fn relation_segment(path: &str) -> Option<u32> {
    crate::verify::scan::parse_rel_path(path).map(|r| r.segno)
}

/// Checks the pages of `buf`, read from `f` at file offset `offset` (a multiple of the
/// page size). A bad page is read again: different bytes replace it in `buf`, the same
/// bytes make it suspect.
pub fn check(
    f: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
    segno: u32,
    ps: PageSettings,
    path: &str,
    suspects: &mut Vec<Suspect>,
) {
    let first = offset / BLCKSZ as u64;
    let Some(first_block) = page::block_number(segno, ps.relseg_size, first) else {
        return;
    };
    let bad: Vec<(usize, u32)> = match page::check_pages(buf, first_block, true) {
        Ok(pages) => pages
            .enumerate()
            .filter(|(_, c)| !c.verdict.is_good() && !matches!(c.verdict, Verdict::Partial(_)))
            .map(|(i, c)| (i, c.block))
            .collect(),
        Err(_) => return,
    };
    for (i, block) in bad {
        let at = i * BLCKSZ;
        let mut again = [0u8; BLCKSZ];
        let same = match f.read_exact_at(&mut again, offset + at as u64) {
            Ok(()) => again[..] == buf[at..at + BLCKSZ],
            // The file shrank meanwhile: what was read is stored, the WAL repairs it.
            Err(_) => continue,
        };
        if !same {
            buf[at..at + BLCKSZ].copy_from_slice(&again);
            let v = page::check_page(&again, block, true).verdict;
            if v.is_good() {
                continue;
            }
        }
        let v = page::check_page(
            buf[at..at + BLCKSZ].try_into().unwrap_or(&[0u8; BLCKSZ]),
            block,
            true,
        );
        suspects.push(Suspect {
            path: path.to_string(),
            block,
            problem: format!("{:?}", v.verdict),
            wal: None,
        });
    }
}
