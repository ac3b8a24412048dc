//! Point-in-time restore from a store: where a recovery target lies among the store's
//! bundles (which bundle it picks), whether the store's WAL archive reaches from the
//! copy's bundle to the target, and the `restore_command` (`pgbookend archive-get`)
//! that replays it.
//!
//! The copy decides the bundle (its marker, as for every prepare); the target only picks
//! which bundle's copy is best to restore. A copy whose bundle stops after the target is
//! refused with the bundle that fits named.

use super::PrepareOptions;
use crate::archive::layout::Index;
use crate::bundle::manifest::{Manifest, WalMode};
use crate::problem::{problem, Problem};
use crate::store::objects::Handle;
use crate::store::Store;
use crate::timefmt::parse_rfc3339;
use pgbookend_formats::lsn::Lsn;
use pgbookend_formats::wal;
use serde::Serialize;

/// Where a recovery target lies, when it can be placed among bundles at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The end of the archive: the newest bundle.
    Latest,
    /// A time with a zone, in seconds since the epoch (fractions dropped).
    Time(i64),
    Lsn(Lsn),
    /// `xid=`, `name=` or a time without a zone: no bundle can be judged by it.
    Unplaced,
}

/// Places `--target` (already checked by `parse_target`); `None` for `immediate`.
pub fn place(target: &str) -> Option<Place> {
    match target.split_once('=') {
        None if target == "latest" => Some(Place::Latest),
        None => None,
        Some(("time", v)) => Some(parse_time(v).map_or(Place::Unplaced, Place::Time)),
        Some(("lsn", v)) => Some(v.parse().map_or(Place::Unplaced, Place::Lsn)),
        Some(_) => Some(Place::Unplaced),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.frac]` (or with `T`) followed by `Z`, `UTC`, `+HH`, `+HH:MM`
/// or `+HHMM` (or `-`), as seconds since the epoch; `None` without a zone (the server
/// would read it in its own `TimeZone`, which prepare does not know).
pub fn parse_time(v: &str) -> Option<i64> {
    let head = v.get(..19)?;
    let base = parse_rfc3339(&format!("{}Z", head.replacen(' ', "T", 1)))?;
    let mut rest = v.get(19..)?;
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let rest = rest.trim_start();
    if matches!(rest, "Z" | "z" | "UTC" | "+00" | "GMT") {
        return Some(base);
    }
    let sign = match rest.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = rest[1..].chars().filter(|c| *c != ':').collect();
    if !(digits.len() == 2 || digits.len() == 4) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i64 = digits[..2].parse().ok()?;
    let m: i64 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    Some(base - sign * (h * 3600 + m * 60))
}

/// Lists the complete bundles of a store (the catalog's, given by the CLI).
pub type BundleLister = fn(&Store) -> crate::error::Result<Vec<Manifest>>;

/// What prepare found for a point-in-time restore from a store (`prepare --json`: `pitr`).
#[derive(Debug, Clone, Serialize)]
pub struct PitrReport {
    /// The store whose bundles and archive were read.
    pub store: String,
    /// The bundle the target picks: the newest complete bundle of this cluster that stops
    /// before it (`None` for xid=, name= and zone-less times, which cannot be placed).
    pub picked: Option<String>,
    /// The picked bundle's stop time.
    pub picked_stop_time: Option<String>,
    /// The first archived segment recovery needs from the archive.
    pub archive_from: String,
    /// The last segment of the archive's contiguous run from there (`None`: none).
    pub archive_to: Option<String>,
    /// What prepare sets as `restore_command`.
    pub restore_command: String,
}

/// Whether prepare takes WAL from the store's archive: a target other than `immediate`,
/// no `--archive`/`--restore-command`/`--bundle`, and a store to read.
pub fn store_url(opts: &PrepareOptions) -> Option<String> {
    let target = opts.target.as_deref()?;
    if place(target).is_none()
        || opts.archive.is_some()
        || opts.restore_command.is_some()
        || opts.bundle.is_some()
    {
        return None;
    }
    opts.store
        .clone()
        .or_else(|| opts.configured_stores.first().cloned())
}

/// The `restore_command` that fetches from `url` with this very program, with this run's
/// S3 endpoint settings (as for a bundle whose WAL is in the store archive).
fn restore_command(url: &str, s3: &crate::store::s3::Settings) -> String {
    super::archive_get_command(&[url.to_string()], s3).unwrap_or_else(|| {
        format!(
            "pgbookend archive-get %f %p --store {}",
            crate::shellword::quote(url)
        )
    })
}

/// Reads the store's bundles and archive for the copy's bundle `m` and `--target`;
/// `Ok(None)` when the store holds no archived WAL of this cluster (prepare then goes on
/// as without a store archive). `s3`: the settings of an S3 store.
pub fn examine(
    url: &str,
    s3: &crate::store::s3::Settings,
    target: &str,
    m: &Manifest,
    list: Option<BundleLister>,
    warnings: &mut Vec<String>,
) -> std::result::Result<Option<PitrReport>, Problem> {
    let place = place(target).unwrap_or(Place::Unplaced);
    let store_problem =
        |e: crate::error::Error| problem("pitr_store", e.message, "check --store URL");
    let store = Store::parse(url, s3).map_err(store_problem)?;
    let sysid: u64 = m.system_identifier.parse().unwrap_or(0);
    let index = Handle::open(&store)
        .and_then(|h| Index::read(&h, sysid, m.wal_segment_size))
        .map_err(store_problem)?;
    if index.segments.is_empty() {
        return Ok(None);
    }
    let bundles = match list {
        Some(f) => f(&store).map_err(store_problem)?,
        None => Vec::new(),
    };
    let picked = pick(&bundles, &m.system_identifier, &place);
    check_copy_bundle(m, &place, picked)?;
    if let Some(p) = picked.filter(|p| p.id != m.id && lsn_of(&p.stop_lsn) > lsn_of(&m.stop_lsn)) {
        warnings.push(format!(
            "backup {} (stopped {}) also lies before the target and is newer: restoring its copy replays less WAL",
            p.id, p.stop_time
        ));
    }
    let tli = m.timeline;
    let seg = m.wal_segment_size;
    let first = first_needed(m);
    let reach = index.reach(tli, first);
    let missing = wal::file_name(tli, reach.first_missing, seg);
    let stop_seg = wal::segno(lsn_of(&m.stop_lsn), seg);
    let short = match &place {
        Place::Lsn(t) => reach.first_missing <= wal::segno(*t, seg),
        _ => reach.gap,
    } || (m.mode() != Some(WalMode::Collect) && reach.first_missing <= stop_seg);
    if short {
        return Err(problem(
            "wal_missing",
            format!(
                "the archive in {url} lacks WAL segment {missing}, which recovery from backup {} to {target} needs (archived from {} on: {})",
                m.id,
                wal::file_name(tli, first, seg),
                reach.last.map_or("nothing".into(), |l| format!("up to {}", wal::file_name(tli, l, seg)))
            ),
            format!("find {missing} (the server's pg_wal, another store) and archive it with pgbookend archive-push, or choose a target before it"),
        ));
    }
    Ok(Some(PitrReport {
        store: url.to_string(),
        picked: picked.map(|p| p.id.clone()),
        picked_stop_time: picked.map(|p| p.stop_time.clone()),
        archive_from: wal::file_name(tli, first, seg),
        archive_to: reach.last.map(|l| wal::file_name(tli, l, seg)),
        restore_command: restore_command(url, s3),
    }))
}

fn lsn_of(s: &str) -> Lsn {
    s.parse().unwrap_or(Lsn::INVALID)
}

/// The first segment recovery reads from the archive: after the bundle's own WAL in
/// `collect` mode, else the backup's start segment.
pub fn first_needed(m: &Manifest) -> u64 {
    let seg = m.wal_segment_size;
    let start = wal::segno(lsn_of(&m.start_lsn), seg);
    if m.mode() != Some(WalMode::Collect) {
        return start;
    }
    m.wal
        .iter()
        .filter_map(|w| wal::parse_file_name(w.name.get(..24)?, seg))
        .filter(|(t, _)| *t == m.timeline)
        .map(|(_, n)| n + 1)
        .max()
        .unwrap_or(start)
}

/// The newest complete bundle of cluster `sysid` whose stop lies before `place`.
fn pick<'a>(bundles: &'a [Manifest], sysid: &str, place: &Place) -> Option<&'a Manifest> {
    bundles
        .iter()
        .filter(|m| m.system_identifier == sysid && before(m, place) != Some(false))
        .filter(|_| *place != Place::Unplaced)
        .max_by_key(|m| lsn_of(&m.stop_lsn))
}

/// Whether bundle `m` stops at or before `place` (`None`: cannot tell).
fn before(m: &Manifest, place: &Place) -> Option<bool> {
    match place {
        Place::Latest => Some(true),
        Place::Time(t) => parse_rfc3339(&m.stop_time).map(|s| s <= *t),
        Place::Lsn(l) => Some(lsn_of(&m.stop_lsn) <= *l),
        Place::Unplaced => None,
    }
}

/// The copy's own bundle must stop before the target: recovery cannot go back.
fn check_copy_bundle(
    m: &Manifest,
    place: &Place,
    picked: Option<&Manifest>,
) -> std::result::Result<(), Problem> {
    if before(m, place) != Some(false) {
        return Ok(());
    }
    let hint = match picked {
        Some(p) => format!(
            "restore the copy of backup {} (stopped {}) and prepare that copy",
            p.id, p.stop_time
        ),
        None => "no backup of this cluster in the store stops before the target: a point before the oldest backup cannot be restored".into(),
    };
    Err(problem(
        "target_before_backup",
        format!(
            "the copy is of backup {}, which stopped at {} ({}), after the target",
            m.id, m.stop_time, m.stop_lsn
        ),
        hint,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_zones() {
        let t = parse_rfc3339("2026-11-30T19:40:01Z").unwrap();
        assert_eq!(parse_time("2026-11-30 19:40:01.123456+00"), Some(t));
        assert_eq!(parse_time("2026-11-30T19:40:01Z"), Some(t));
        assert_eq!(parse_time("2026-11-30 20:40:01+01:00"), Some(t));
        assert_eq!(parse_time("2026-11-30 18:10:01-0130"), Some(t));
        assert_eq!(parse_time("2026-11-30 19:40:01"), None);
        assert_eq!(parse_time("2026-11-30 19:40:01+1"), None);
        assert_eq!(place("xid=5"), Some(Place::Unplaced));
        assert_eq!(place("immediate"), None);
    }
}
