//! Example: a tiny `pg_controldata`, plus writing a copy with the checkpoint invalidated.
//!
//! ```text
//! cargo run -p pgbookend-formats --example controldata -- PGDATA/global/pg_control
//! cargo run -p pgbookend-formats --example controldata -- pg_control --invalidate OUT
//! ```
//!
//! The library does no I/O; this example shows the caller's side: read the
//! file with the torn-read rule, print the decoded values, and write the
//! bytes `control::invalidate_checkpoint` returns.

use pgbookend_formats::control;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, out) = match args.as_slice() {
        [p] => (p.clone(), None),
        [p, flag, o] if flag == "--invalidate" => (p.clone(), Some(o.clone())),
        _ => {
            eprintln!("usage: controldata PG_CONTROL [--invalidate OUT]");
            return ExitCode::from(2);
        }
    };
    let (cf, bytes) = match control::read_stable(|| std::fs::read(&path), 10) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("major: {}", cf.major);
    println!("pg_control version number: {}", cf.pg_control_version);
    println!("Catalog version number: {}", cf.catalog_version_no);
    println!("Database system identifier: {}", cf.system_identifier);
    println!("Database cluster state: {}", cf.state);
    println!("Latest checkpoint location: {}", cf.checkpoint);
    println!("Latest checkpoint's REDO location: {}", cf.redo);
    println!("Latest checkpoint's TimeLineID: {}", cf.timeline);
    println!("Latest checkpoint's PrevTimeLineID: {}", cf.prev_timeline);
    println!(
        "Latest checkpoint's full_page_writes: {}",
        if cf.full_page_writes { "on" } else { "off" }
    );
    println!(
        "Latest checkpoint's NextXID: {}:{}",
        cf.next_xid >> 32,
        cf.next_xid as u32
    );
    println!(
        "Minimum recovery ending location: {}",
        cf.min_recovery_point
    );
    println!(
        "Min recovery ending loc's timeline: {}",
        cf.min_recovery_point_tli
    );
    println!("Backup start location: {}", cf.backup_start_point);
    println!("Backup end location: {}", cf.backup_end_point);
    println!(
        "End-of-backup record required: {}",
        if cf.backup_end_required { "yes" } else { "no" }
    );
    println!("wal_level setting: {}", cf.wal_level_name());
    println!("Bytes per WAL segment: {}", cf.xlog_seg_size);
    println!("Data page checksum version: {}", cf.data_checksum_version);
    if let Some(out) = out {
        let inv = match control::invalidate_checkpoint(&bytes) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(&out, inv) {
            eprintln!("{out}: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "wrote {out} with checkpoint location {}",
            control::INVALIDATED_CHECKPOINT
        );
    }
    ExitCode::SUCCESS
}
