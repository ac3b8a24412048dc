//! The typed result of a page check, its refusals, and its human rendering.

use crate::problem::{problem, Problem};
use crate::verify::blockset::Window;
use crate::verify::scan::{Corrupt, Late, Outcome, ScanInput};
use serde::Serialize;
use std::time::Duration;

/// What the page check of a copy found (`pages` in the JSON of `prepare` and `verify`).
#[derive(Debug, Clone, Serialize)]
pub struct PageReport {
    /// `full` or `sample:N%`.
    pub mode: String,
    /// Whether the cluster has data checksums (off: only headers and LSNs are judged).
    pub checksums: bool,
    /// Relation files read.
    pub files: u64,
    /// Pages judged.
    pub pages: u64,
    /// Bytes read.
    pub bytes: u64,
    /// All-zero pages (allocated, never written: valid).
    pub new_pages: u64,
    /// Bad pages the window's WAL rewrites: torn by the copy, repaired by replay.
    pub torn_covered: u64,
    /// Bad pages the window's WAL does not touch: corruption in the copy.
    pub corrupt_count: u64,
    /// The first of them (at most 100), by file.
    pub corrupt: Vec<Corrupt>,
    /// Good pages whose LSN is past the backup's stop: the copy was read after stop.
    pub late_count: u64,
    /// The first such page.
    pub late_first: Option<Late>,
    /// The checkpoint LSN of the copy's own `pg_control` when it is past stop.
    pub control_after_stop: Option<String>,
    /// Files of unlogged relations (recovery resets them from their init fork): not read.
    pub unlogged_files: u64,
    /// WAL records of the window (start to stop).
    pub wal_records: u64,
    /// Distinct blocks the window's WAL references.
    pub wal_blocks: u64,
    /// Relations and databases the window created, truncated or dropped (touched whole).
    pub wal_whole: u64,
    /// Approximate memory of the block set.
    pub block_set_bytes: u64,
    /// Threads that read pages.
    pub threads: usize,
    /// Wall time of the whole check (WAL and pages).
    pub seconds: f64,
    /// Wall time of reading and judging the pages (without the WAL).
    pub scan_seconds: f64,
    /// Page reading rate, MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// What was not read, and why (also in the report's warnings).
    pub skipped: Vec<String>,
    #[serde(skip)]
    stop: String,
}

impl PageReport {
    /// Assembles the report of a scan.
    pub fn build(
        o: Outcome,
        w: &Window,
        input: &ScanInput,
        took: Duration,
        scan: Duration,
    ) -> PageReport {
        let seconds = took.as_secs_f64();
        let scan_seconds = scan.as_secs_f64();
        PageReport {
            mode: if input.percent >= 100 {
                "full".into()
            } else {
                format!("sample:{}%", input.percent)
            },
            checksums: input.checksums,
            files: o.files,
            pages: o.pages,
            bytes: o.bytes,
            new_pages: o.new_pages,
            torn_covered: o.torn_covered,
            corrupt_count: o.corrupt_count,
            corrupt: o.corrupt.into_iter().map(|(_, c)| c).collect(),
            late_count: o.late_count,
            late_first: o.late_first.map(|(_, l)| l),
            control_after_stop: None,
            unlogged_files: o.unlogged_files,
            wal_records: w.records,
            wal_blocks: w.block_count(),
            wal_whole: w.whole_count(),
            block_set_bytes: w.approx_bytes(),
            threads: o.threads,
            seconds,
            scan_seconds,
            mb_per_s: if scan_seconds > 0.0 {
                o.bytes as f64 / 1e6 / scan_seconds
            } else {
                0.0
            },
            skipped: o.skipped,
            stop: w.stop.to_string(),
        }
    }

    /// The refusals: corruption in the copy, and a copy read after stop.
    pub fn problems(&self, pgdata: String) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.corrupt_count > 0 {
            let named: Vec<String> = self
                .corrupt
                .iter()
                .take(10)
                .map(|c| {
                    format!(
                        "{} block {} (page {} of the file): {}",
                        c.file, c.block, c.page, c.found
                    )
                })
                .collect();
            out.push(problem(
                "page_corrupt",
                format!(
                    "{} page(s) of the copy in {pgdata} are damaged and the WAL of the backup's window does not rewrite them (corruption in the copy, not a torn read): {}",
                    self.corrupt_count,
                    named.join("; ")
                ),
                "restore these files again from the backup program (or another backup); if the copy is right, the disk or the backup program changed them",
            ));
        }
        if let Some(l) = &self.late_first {
            out.push(problem(
                "copy_after_stop",
                format!(
                    "the copy was read after stop: {} page(s) are newer than the backup's stop LSN {}, first {} block {} with LSN {}",
                    self.late_count, self.stop, l.file, l.block, l.lsn
                ),
                "the copier ran past the post-backup hook, or the snapshot was taken late: make the backup program run pgbookend stop only after its copy finished, and take a new backup",
            ));
        }
        if let Some(c) = &self.control_after_stop {
            out.push(problem(
                "copy_after_stop",
                format!(
                    "the copy was read after stop: its global/pg_control names checkpoint {c}, past the backup's stop LSN {}",
                    self.stop
                ),
                "the copier ran past the post-backup hook, or the snapshot was taken late: take a new backup whose copy ends before pgbookend stop",
            ));
        }
        out
    }
}

/// The human lines of a page report.
pub fn human(r: &PageReport) -> String {
    let mut s = format!(
        "pages ({}, checksums {}): {} read in {} files ({:.1} MB, {:.2} s, {:.0} MB/s on {} threads), {} new, {} torn and covered by the WAL, {} corrupt, {} after stop\n",
        r.mode,
        if r.checksums { "on" } else { "off: headers and LSNs only" },
        r.pages,
        r.files,
        r.bytes as f64 / 1e6,
        r.seconds,
        r.mb_per_s,
        r.threads,
        r.new_pages,
        r.torn_covered,
        r.corrupt_count,
        r.late_count,
    );
    s.push_str(&format!(
        "  window WAL: {} records, {} blocks, {} relations/databases touched whole (block set ~{:.1} MB)\n",
        r.wal_records,
        r.wal_blocks,
        r.wal_whole,
        r.block_set_bytes as f64 / 1e6
    ));
    if r.unlogged_files > 0 {
        s.push_str(&format!(
            "  {} files of unlogged relations not read (recovery resets them)\n",
            r.unlogged_files
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sampled page check with fixed numbers: two corrupt pages, one page read after
    /// stop, a pg_control past stop, unlogged files skipped.
    fn report() -> PageReport {
        PageReport {
            mode: "sample:25%".into(),
            checksums: true,
            files: 812,
            pages: 104_857,
            bytes: 104_857 * 8192,
            new_pages: 311,
            torn_covered: 4,
            corrupt_count: 2,
            corrupt: vec![
                Corrupt {
                    file: "base/5/16384".into(),
                    page: 7,
                    block: 7,
                    found: "checksum 0x1234, expected 0xabcd".into(),
                },
                Corrupt {
                    file: "base/5/16390.1".into(),
                    page: 3,
                    block: 131_075,
                    found: "bad page header".into(),
                },
            ],
            late_count: 1,
            late_first: Some(Late {
                file: "base/5/16402".into(),
                page: 0,
                block: 0,
                lsn: "0/9000200".into(),
            }),
            control_after_stop: Some("0/9000300".into()),
            unlogged_files: 3,
            wal_records: 5120,
            wal_blocks: 777,
            wal_whole: 2,
            block_set_bytes: 65_536,
            threads: 2,
            seconds: 3.25,
            scan_seconds: 2.5,
            mb_per_s: 343.6,
            skipped: vec!["pg_tblspc/16400: not in the copy".into()],
            stop: "0/9000100".into(),
        }
    }

    #[test]
    fn human_json_and_problems() {
        let r = report();
        insta::assert_snapshot!("page_report_human", human(&r));
        insta::assert_json_snapshot!("page_report_json", r);
        let problems: String = r
            .problems("/srv/restore".into())
            .iter()
            .map(|p| format!("{}: {}\n  hint: {}\n", p.check, p.message, p.hint))
            .collect();
        insta::assert_snapshot!("page_report_problems", problems);
        let mut clean = report();
        clean.checksums = false;
        clean.mode = "full".into();
        clean.unlogged_files = 0;
        insta::assert_snapshot!("page_report_human_no_checksums", human(&clean));
    }
}
