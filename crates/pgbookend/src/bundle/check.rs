//! Validation of a `bundle.json` read from a store: every field that can become a path,
//! a command or an allocation is checked against what it must be before anything uses it.
//!
//! A store is written by whoever can write to it; `prepare` and `verify` run as root. So
//! the backup ID must be a valid ID, WAL names must be WAL names
//! ([`pgbookend_formats::walname::WalName`]), file names must stay inside the bundle,
//! directories must be plain absolute paths, and counts and sizes are capped. Each refusal
//! names the field.

use crate::bundle::manifest::{Manifest, WalEntry, WalMode};
use crate::problem::Problem;
use pgbookend_formats::tablespace_map::TablespaceMap;
use pgbookend_formats::walname::{WalKind, WalName, MAX_RANGE_SEGMENTS};
use pgbookend_formats::{version, wal, Lsn};

/// The most files a bundle may list (its WAL plus a handful of its own).
pub const MAX_FILES: usize = MAX_RANGE_SEGMENTS as usize + 64;
/// The largest single file a bundle may claim (the file list of a huge cluster fits).
pub const MAX_FILE_BYTES: u64 = 16 << 30;
/// The most paths a file list may claim.
pub const MAX_LIST_COUNT: u64 = 1 << 32;
/// The most tablespaces a bundle may list.
pub const MAX_TABLESPACES: usize = 4096;
/// The longest directory path accepted (`PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// The longest text field (host, times, tool) accepted.
const MAX_TEXT: usize = 1024;

const HINT: &str = "the bundle was altered or damaged: do not use it; take the bundle from another store, or take a new backup";

fn field(name: impl Into<String>, why: impl Into<String>) -> Problem {
    Problem {
        check: "bundle_field",
        message: format!("bundle.json field {}: {}", name.into(), why.into()),
        hint: HINT.into(),
    }
}

fn shown(v: &str) -> String {
    let cut: String = v.chars().take(80).collect();
    format!("{cut:?}{}", if cut.len() < v.len() { "..." } else { "" })
}

/// The WAL locations and segment names of the manifest parse.
fn location_problems(m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    for (n, v) in [
        ("start_lsn", &m.start_lsn),
        ("stop_lsn", &m.stop_lsn),
        ("checkpoint_lsn", &m.checkpoint_lsn),
    ] {
        if v.parse::<Lsn>().is_err() {
            out.push(field(n, format!("{} is not a WAL location", shown(v))));
        }
    }
    out.extend(replay_problem(m));
    for (n, v) in [
        ("start_wal_file", &m.start_wal_file),
        ("stop_wal_file", &m.stop_wal_file),
    ] {
        match WalName::parse(v) {
            Ok(w) if w.kind() == WalKind::Segment => {}
            Ok(_) => out.push(field(n, format!("{} is not a WAL segment name", shown(v)))),
            Err(e) => out.push(field(n, e.to_string())),
        }
    }
    out
}

/// `replay_lsn`, when present: a WAL location after `stop_lsn`, in a collect-mode bundle.
fn replay_problem(m: &Manifest) -> Option<Problem> {
    let r = m.replay_lsn.as_ref()?;
    let stop = m.stop_lsn.parse::<Lsn>().ok();
    match r.parse::<Lsn>() {
        Ok(l) if stop.is_some_and(|s| l > s) && m.mode() == Some(WalMode::Collect) => None,
        _ => Some(field(
            "replay_lsn",
            format!(
                "{} is not a WAL location after stop_lsn in a collect-mode bundle",
                shown(r)
            ),
        )),
    }
}

/// Checks a path relative to the bundle directory: 1 to 4 components of letters, digits,
/// `.`, `_`, `-`, none empty, none starting with a dot (so no `.` or `..`).
pub fn check_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 255 {
        return Err(format!(
            "{} is not a file name of a bundle (1 to 255 characters)",
            shown(p)
        ));
    }
    let parts: Vec<&str> = p.split('/').collect();
    let ok = parts.len() <= 4
        && parts.iter().all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if !ok {
        return Err(format!(
            "{} is not a file name inside the bundle (letters, digits, '.', '_', '-' and '/', no leading dot, no '..')",
            shown(p)
        ));
    }
    Ok(())
}

/// Checks an absolute directory path from outside: absolute, no control character or
/// backslash (neither survives a configuration string or a log line), at most
/// [`MAX_PATH`] bytes.
pub fn check_abs_dir(p: &str) -> Result<(), String> {
    if p.len() > MAX_PATH {
        return Err(format!("{} is longer than {MAX_PATH} bytes", shown(p)));
    }
    if !p.starts_with('/') {
        return Err(format!("{} is not an absolute path", shown(p)));
    }
    if p.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!(
            "{} holds a control character or a backslash",
            shown(p)
        ));
    }
    Ok(())
}

fn check_text(out: &mut Vec<Problem>, name: &str, v: &str) {
    if v.len() > MAX_TEXT || v.chars().any(|c| c.is_control()) {
        out.push(field(
            name,
            format!("{} is too long or holds control characters", shown(v)),
        ));
    }
}

fn check_sha(out: &mut Vec<Problem>, name: &str, v: &str) {
    if v.len() != 64 || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        out.push(field(
            name,
            format!("{} is not a SHA-256 in lowercase hex", shown(v)),
        ));
    }
}

/// Every problem with the manifest's own fields; empty when it may be used.
pub fn manifest_problems(m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    if m.format != crate::bundle::manifest::FORMAT {
        out.push(field(
            "format",
            format!(
                "{} is not a format this version reads ({})",
                m.format,
                crate::bundle::manifest::FORMAT
            ),
        ));
    }
    if let Err(e) = crate::id::validate(&m.id) {
        out.push(field("id", e.message));
    }
    if !version::is_supported(m.pg_major)
        || version::major_from_server_version_num(m.pg_version_num) != Some(m.pg_major)
    {
        out.push(field(
            "pg_major",
            format!(
                "{} (pg_version_num {}) is not a supported major that matches the server version",
                m.pg_major, m.pg_version_num
            ),
        ));
    }
    if !wal::is_valid_seg_size(m.wal_segment_size) {
        out.push(field(
            "wal_segment_size",
            format!(
                "{} is not a WAL segment size (a power of two from 1 MiB to 1 GiB)",
                m.wal_segment_size
            ),
        ));
    }
    if m.timeline == 0 {
        out.push(field("timeline", "0 is not a timeline"));
    }
    if m.system_identifier.parse::<u64>().is_err() {
        out.push(field(
            "system_identifier",
            format!("{} is not a number", shown(&m.system_identifier)),
        ));
    }
    out.extend(location_problems(m));
    if m.mode().is_none() {
        out.push(field(
            "wal_mode",
            format!("{} is not collect, archive or none", shown(&m.wal_mode)),
        ));
    }
    for (n, v) in [
        ("backup_from", &m.backup_from),
        ("start_time", &m.start_time),
        ("stop_time", &m.stop_time),
        ("host", &m.host),
        ("tool", &m.tool),
        ("tool_version", &m.tool_version),
        ("wal_archive", &m.wal_archive),
    ] {
        check_text(&mut out, n, v);
    }
    if m.pgdata.len() > MAX_PATH || m.pgdata.chars().any(|c| c.is_control()) {
        out.push(field(
            "pgdata",
            format!(
                "{} is too long or holds control characters",
                shown(&m.pgdata)
            ),
        ));
    }
    if let Some(d) = &m.archive_dir {
        if let Err(e) = check_abs_dir(d) {
            out.push(field("archive_dir", e));
        }
    }
    out.extend(archive_store_problems(m));
    out.extend(tablespace_problems(m));
    out.extend(file_problems(m));
    out.extend(wal_problems(m));
    out
}

/// The most archive stores a bundle may name.
const MAX_ARCHIVE_STORES: usize = 16;

/// `archive_stores` becomes arguments of a restore_command: each must be a store URL
/// pgbookend parses (a local path is absolute), without control characters.
fn archive_store_problems(m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    if m.archive_stores.len() > MAX_ARCHIVE_STORES {
        out.push(field(
            "archive_stores",
            format!(
                "{} entries, more than the {MAX_ARCHIVE_STORES} allowed",
                m.archive_stores.len()
            ),
        ));
        return out;
    }
    for u in &m.archive_stores {
        let path = u.strip_prefix("file://").unwrap_or(u);
        let s3_ok = u.strip_prefix("s3://").is_some_and(|rest| {
            !rest.is_empty() && !rest.starts_with('/') && !rest.split('/').any(|c| c == "..")
        });
        let bad = u.chars().any(|c| c.is_control() || c == '%')
            || !(s3_ok || check_abs_dir(path).is_ok());
        if bad {
            out.push(field(
                "archive_stores",
                format!(
                    "{} is not an absolute directory, file:/// or s3:// store URL without % or control characters",
                    shown(u)
                ),
            ));
        }
    }
    if !m.archive_stores.is_empty() && m.wal_mode != "archive" {
        out.push(field(
            "archive_stores",
            format!("given with wal_mode {}", shown(&m.wal_mode)),
        ));
    }
    out
}

fn tablespace_problems(m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    if m.tablespaces.len() > MAX_TABLESPACES {
        out.push(field(
            "tablespaces",
            format!(
                "{} entries, more than the {MAX_TABLESPACES} allowed",
                m.tablespaces.len()
            ),
        ));
        return out;
    }
    for (i, t) in m.tablespaces.iter().enumerate() {
        if t.oid == 0 {
            out.push(field(format!("tablespaces[{i}].oid"), "0 is not an OID"));
        }
        if let Err(e) = check_abs_dir(&t.path) {
            out.push(field(format!("tablespaces[{i}].path"), e));
        }
    }
    out
}

fn file_problems(m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    if m.files.len() > MAX_FILES {
        out.push(field(
            "files",
            format!(
                "{} entries, more than the {MAX_FILES} allowed",
                m.files.len()
            ),
        ));
        return out;
    }
    for (name, e) in &m.files {
        if let Err(why) = check_rel_path(name) {
            out.push(field("files", why));
            continue;
        }
        if e.size > MAX_FILE_BYTES {
            out.push(field(
                format!("files[{name}].size"),
                format!("{} bytes, more than the {MAX_FILE_BYTES} allowed", e.size),
            ));
        }
        check_sha(&mut out, &format!("files[{name}].sha256"), &e.sha256);
    }
    if let Some(fl) = &m.file_list {
        if let Err(why) = check_rel_path(&fl.name) {
            out.push(field("file_list.name", why));
        } else if !m.files.contains_key(&fl.name) {
            out.push(field(
                "file_list.name",
                format!("{} is not among the bundle's files", shown(&fl.name)),
            ));
        }
        if fl.count > MAX_LIST_COUNT {
            out.push(field(
                "file_list.count",
                format!("{} paths, more than the {MAX_LIST_COUNT} allowed", fl.count),
            ));
        }
    }
    out
}

fn wal_problems(m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    if m.wal.len() as u64 > MAX_RANGE_SEGMENTS + 64 {
        out.push(field(
            "wal",
            format!(
                "{} entries, more than the {} allowed",
                m.wal.len(),
                MAX_RANGE_SEGMENTS + 64
            ),
        ));
        return out;
    }
    for (i, w) in m.wal.iter().enumerate() {
        if let Err(why) = wal_entry_problem(w, m.wal_segment_size) {
            out.push(field(format!("wal[{i}]"), why));
        } else if m.mode() == Some(WalMode::Collect) && (w.size.is_none() || w.sha256.is_none()) {
            out.push(field(
                format!("wal[{i}]"),
                "a collected WAL file needs its size and sha256",
            ));
        }
    }
    out
}

/// What is wrong with one WAL entry: its name, where it is stored, under which name it
/// was archived, its size and checksum.
fn wal_entry_problem(w: &WalEntry, seg_size: u32) -> Result<(), String> {
    let name = WalName::parse(&w.name).map_err(|e| format!("name: {e}"))?;
    if !matches!(name.kind(), WalKind::Segment | WalKind::History) {
        return Err(format!(
            "name: {name} is neither a segment nor a timeline history file"
        ));
    }
    if let Some(s) = &w.stored {
        if *s != format!("wal/{name}.zst") {
            return Err(format!("stored: {} is not wal/{name}.zst", shown(s)));
        }
    }
    if let Some(a) = &w.archived_as {
        let ok = crate::bundle::walcollect::ARCHIVE_SUFFIXES
            .iter()
            .any(|suf| *a == format!("{name}{suf}"));
        if !ok {
            return Err(format!(
                "archived_as: {} is not {name} with an archiver's suffix",
                shown(a)
            ));
        }
    }
    if let Some(size) = w.size {
        if size > u64::from(seg_size.max(wal::MIN_SEG_SIZE)) {
            return Err(format!(
                "size: {size} bytes, more than a WAL segment ({seg_size})"
            ));
        }
    }
    if let Some(sum) = &w.sha256 {
        let mut p = Vec::new();
        check_sha(&mut p, "sha256", sum);
        if let Some(p) = p.pop() {
            return Err(p.message.replace("bundle.json field ", ""));
        }
    }
    Ok(())
}

/// Whether the bundle's `tablespace_map` names exactly the tablespaces of `bundle.json`
/// (the map's paths become links in the restored copy, so both must agree).
pub fn map_problem(map_text: Option<&str>, m: &Manifest) -> Option<Problem> {
    let listed: Vec<(u32, &str)> = m
        .tablespaces
        .iter()
        .map(|t| (t.oid, t.path.as_str()))
        .collect();
    let in_map = match map_text.map(|t| TablespaceMap::parse_for_major(t, m.pg_major)) {
        None => Vec::new(),
        Some(Ok(map)) => map.entries,
        Some(Err(e)) => {
            return Some(Problem {
                check: "bundle_map",
                message: format!("the bundle's tablespace_map does not parse: {e}"),
                hint: HINT.into(),
            })
        }
    };
    let same = in_map.len() == listed.len()
        && in_map
            .iter()
            .all(|(o, p)| listed.contains(&(*o, p.as_str())));
    (!same).then(|| Problem {
        check: "bundle_map",
        message: format!(
            "the bundle's tablespace_map lists {} tablespace(s), bundle.json field tablespaces {}: they must agree",
            in_map.len(),
            listed.len()
        ),
        hint: HINT.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        for ok in [
            "backup_label",
            "wal/000000010000000000000002.zst",
            "files.zst",
        ] {
            assert!(check_rel_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "wal/../../x",
            "wal//x",
            ".hidden",
            "a b",
            "wal/.",
            "a/b/c/d/e",
        ] {
            assert!(check_rel_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn map_must_agree_with_manifest() {
        let mut m: Manifest =
            serde_json::from_str(include_str!("../../tests/data/manifest.json")).unwrap();
        assert!(
            manifest_problems(&m).is_empty(),
            "{:?}",
            manifest_problems(&m)
        );
        assert!(map_problem(Some("16400 /ts\n"), &m).is_none());
        assert!(map_problem(Some("16400 /elsewhere\n"), &m).is_some());
        assert!(map_problem(None, &m).is_some());
        m.tablespaces.clear();
        assert!(map_problem(None, &m).is_none());
        m.wal[0].name = "../../x".into();
        m.pg_major = 12;
        let p = manifest_problems(&m);
        assert!(p.iter().any(|p| p.message.contains("wal[0]")), "{p:?}");
        assert!(p.iter().any(|p| p.message.contains("pg_major")), "{p:?}");
    }

    #[test]
    fn archive_stores_are_checked() {
        let mut m: Manifest =
            serde_json::from_str(include_str!("../../tests/data/manifest.json")).unwrap();
        m.wal_mode = "archive".into();
        m.archive_stores = vec![
            "/var/lib/pgbookend".into(),
            "file:///srv/b".into(),
            "s3://bucket/pre fix".into(),
        ];
        assert!(archive_store_problems(&m).is_empty());
        for bad in [
            "rel/dir",
            "/a%fb",
            "/a\nb",
            "s3://",
            "s3:///x",
            "s3://b/../x",
            "file://rel",
            "http://x",
        ] {
            m.archive_stores = vec![bad.into()];
            assert_eq!(archive_store_problems(&m).len(), 1, "{bad:?}");
        }
        m.archive_stores = vec!["/x".into(); 17];
        assert_eq!(archive_store_problems(&m).len(), 1);
        m.archive_stores = vec!["/x".into()];
        m.wal_mode = "collect".into();
        assert_eq!(archive_store_problems(&m).len(), 1);
    }

    #[test]
    fn absolute_dirs() {
        for ok in ["/", "/var/lib/arch", "/var/it's here/", "/a b"] {
            assert!(check_abs_dir(ok).is_ok(), "{ok}");
        }
        for bad in ["rel", "/a\nb", "/a\\b", ""] {
            assert!(check_abs_dir(bad).is_err(), "{bad:?}");
        }
    }
}
