//! How `backup` shows itself, for the CLI edge: the progress line on stderr (one
//! updating line on a terminal, a plain line every ten seconds otherwise) and the
//! summary (human and `--json`).

use super::take::{BackupReport, Progress};
use crate::output::{human_bytes, Output};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// The progress display of one backup.
pub struct ProgressLine {
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Default for ProgressLine {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressLine {
    /// A display for stderr, updating in place when stderr is a terminal.
    pub fn new() -> ProgressLine {
        ProgressLine {
            tty: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    /// Shows `p` (on a terminal every call, otherwise at most every ten seconds).
    pub fn show(&mut self, p: &Progress) {
        let every = if self.tty { 0 } else { 10 };
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(every))
        {
            return;
        }
        self.last = Some(Instant::now());
        let secs = p.elapsed.as_secs_f64().max(0.001);
        let rate = p.bytes_read as f64 / secs;
        let left = p.bytes_total.saturating_sub(p.bytes_read) as f64;
        let eta = if rate > 0.0 { left / rate } else { 0.0 };
        let line = format!(
            "pgbookend: backup {} of {} read, {}/{} files, {}/s, about {:.0}s left",
            human_bytes(p.bytes_read),
            human_bytes(p.bytes_total),
            p.files,
            p.files_total,
            human_bytes(rate as u64),
            eta
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// Ends the updating line.
    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// The summary of a finished backup; its error is the stop's.
pub fn summary(r: &BackupReport, _json: bool) -> Output {
    let secs = r.seconds.max(0.001);
    let json = json!({
        "id": r.id,
        "stores": r.stores,
        "files": r.files,
        "bytes_read": r.bytes_read,
        "bytes_stored": r.bytes_stored,
        "objects": r.objects,
        "seconds": r.seconds,
        "suspect_pages": r.suspect_pages,
        "stop": r.stop.json,
    });
    let mut suspects = String::new();
    for s in &r.suspect_pages {
        suspects.push_str(&format!(
            "suspect page: {} block {} ({}): the same bad bytes were read twice; {}\n",
            s.path,
            s.block,
            s.problem,
            s.wal.as_deref().unwrap_or("not judged")
        ));
    }
    let human = format!(
        "backup {}: {} files, {} read, {} stored in {} objects, {:.1}s ({}/s)\n{suspects}{}",
        r.id,
        r.files,
        human_bytes(r.bytes_read),
        human_bytes(r.bytes_stored),
        r.objects,
        r.seconds,
        human_bytes((r.bytes_read as f64 / secs) as u64),
        r.stop.human
    );
    Output {
        json,
        human,
        error: r.stop.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::pages::Suspect;
    use crate::error::Error;

    /// A finished backup with fixed numbers, one suspect page, and a stop that failed.
    fn report() -> BackupReport {
        BackupReport {
            id: "b-20261130".into(),
            stores: vec!["/srv/backups".into(), "s3://bucket/pg".into()],
            files: 1532,
            bytes_read: 5 << 30,
            bytes_stored: 1536 << 20,
            objects: 48,
            seconds: 64.0,
            suspect_pages: vec![
                Suspect {
                    path: "base/5/16384".into(),
                    block: 7,
                    problem: "checksum 0x1234, expected 0xabcd".into(),
                    wal: Some("corrupt: the window's WAL does not rewrite it".into()),
                },
                Suspect {
                    path: "base/5/16390.1".into(),
                    block: 131071,
                    problem: "bad page header".into(),
                    wal: None,
                },
            ],
            stop: Output {
                json: json!({"id": "b-20261130", "stop_lsn": "0/9000100"}),
                human: "backup b-20261130 stopped at 0/9000100\n".into(),
                error: Some(Error::env("bundle NOT written to s3://bucket/pg")),
            },
        }
    }

    #[test]
    fn summary_human_and_json() {
        let out = summary(&report(), false);
        assert_eq!(
            out.error.map(|e| e.message).as_deref(),
            Some("bundle NOT written to s3://bucket/pg")
        );
        insta::assert_snapshot!("summary_human", out.human);
        insta::assert_json_snapshot!("summary_json", out.json);
    }
}
