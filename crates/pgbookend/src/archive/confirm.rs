//! `stop --wal archive` with the store archive: confirm that every WAL file of a backup
//! window is in enough archive stores, pushing (through [`super::push`], idempotent, so
//! it never conflicts with the server's own `archive-push`) the files the server has
//! finished but not archived yet, within a time bound.

use super::{layout, push, Settings};
use crate::bundle::manifest::WalEntry;
use crate::error::{Class, Error, Result};
use crate::store::objects::Handle;
use pgbookend_formats::walname::WalName;
use std::path::Path;
use std::time::{Duration, Instant};

/// One file found in `need` stores: its SHA-256 (the object's name follows from it and
/// the layout, so `archived_as`, a name in an archive directory, stays empty).
fn found_in(handles: &[Handle], sysid: u64, name: &WalName, need: usize) -> Option<WalEntry> {
    let dir = layout::dir_of(sysid, name);
    let mut first: Option<String> = None;
    let mut n = 0;
    for h in handles {
        let Ok(objs) = h.list(&dir) else { continue };
        let v = layout::versions_of(name, objs.iter().map(|o| o.name.as_str()));
        if let Some(sha) = v.first() {
            n += 1;
            first.get_or_insert_with(|| sha.clone());
        }
    }
    let sha = first.filter(|_| n >= need)?;
    Some(WalEntry {
        name: name.to_string(),
        size: None,
        archived_as: None,
        sha256: Some(sha),
        stored: None,
    })
}

/// Whether the server has finished `name` (it is marked `.ready` or `.done`): only such a
/// file is pushed, never a segment still being written.
pub fn finished(pg_wal: &Path, name: &str) -> bool {
    let st = pg_wal.join("archive_status");
    st.join(format!("{name}.ready")).is_file() || st.join(format!("{name}.done")).is_file()
}

/// Confirms every file of `names` in `s.min_stores` stores of the archive of cluster
/// `sysid`. With `pg_wal` (a primary after its stop: every file of the window is
/// finished), a file not yet archived is pushed from there. Waits at most `timeout`;
/// the error names the first missing file and the last push failure.
pub fn confirm_window(
    s: &Settings,
    sysid: u64,
    names: &[String],
    pg_wal: Option<&Path>,
    timeout: Duration,
) -> Result<Vec<WalEntry>> {
    let handles = s
        .stores
        .iter()
        .map(Handle::open)
        .collect::<Result<Vec<_>>>()?;
    let names = names
        .iter()
        .map(|n| WalName::parse(n).map_err(|e| Error::internal(format!("window file {n}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let deadline = Instant::now() + timeout;
    let mut out: Vec<Option<WalEntry>> = vec![None; names.len()];
    let mut last_err: Option<Error> = None;
    loop {
        for (i, name) in names.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            out[i] = found_in(&handles, sysid, name, s.min_stores);
            let Some(dir) = pg_wal.filter(|d| out[i].is_none() && finished(d, name.as_str()))
            else {
                continue;
            };
            match push::push(s, &dir.join(name.as_str())) {
                Ok(_) => out[i] = found_in(&handles, sysid, name, s.min_stores),
                Err(e) if e.class() == Class::Check => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        let missing = out.iter().position(Option::is_none);
        let Some(i) = missing else {
            return Ok(out.into_iter().flatten().collect());
        };
        if Instant::now() >= deadline {
            let mut e =
                Error::new(
                    Class::Rescuable,
                    format!(
                    "WAL file {} of the backup window is not in the store archive ({}) after {}",
                    names[i],
                    s.stores.iter().map(|x| x.url()).collect::<Vec<_>>().join(", "),
                    crate::timefmt::human_duration(timeout)
                ),
                );
            if let Some(le) = &last_err {
                e = e.hint(format!("pushing it failed: {}", le.message));
            }
            return Err(e.hint("check archive_command (pgbookend archive-push) and pg_stat_archiver; then `pgbookend rescue --id ID`"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
