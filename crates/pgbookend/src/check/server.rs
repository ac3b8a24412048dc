//! The cluster side of `check`: archiving settings, the role's grants, the replication
//! slot `--wal collect` needs, a forced WAL switch whose segment must reach the archive
//! in time, and `pg_stat_archiver` failures while the check ran.
//!
//! What a backup needs from the server: one ordinary connection (the agent's session);
//! EXECUTE on the low-level backup functions of its major; with `--wal collect`, a free
//! entry in `max_replication_slots` and the REPLICATION attribute, for the temporary
//! physical slot that keeps the window's WAL (created by SQL: no WAL sender and no
//! replication connection is used, so `max_wal_senders` does not matter).

use super::{Line, Options, WalMode};
use crate::archive::layout;
use crate::pg::pq::Conn;
use crate::store::objects::Handle;
use crate::store::Store;
use pgbookend_formats::version;
use pgbookend_formats::walname::WalName;
use std::time::{Duration, Instant};

/// What `pg_stat_archiver` says at one moment.
struct Archiver {
    failed_count: u64,
    last_failed: Option<String>,
    last_failed_time: Option<String>,
    last_archived: Option<String>,
}

fn archiver(c: &mut Conn) -> Option<Archiver> {
    let r = c
        .query(
            "SELECT failed_count, last_failed_wal, last_failed_time::text AS t, last_archived_wal FROM pg_stat_archiver",
            &[],
        )
        .ok()?;
    Some(Archiver {
        failed_count: r.get(0, "failed_count")?.parse().ok()?,
        last_failed: r.get(0, "last_failed_wal").map(str::to_string),
        last_failed_time: r.get(0, "t").map(str::to_string),
        last_archived: r.get(0, "last_archived_wal").map(str::to_string),
    })
}

/// Every server line; a connection failure is one failed line.
pub fn check(o: &Options) -> Vec<Line> {
    let defaults = [
        ("application_name", "pgbookend check"),
        ("connect_timeout", "30"),
    ];
    let mut c = match Conn::connect(&defaults, o.conninfo.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            return vec![Line::fail(
                "connection",
                format!("cannot connect: {}", e.message),
                "connection settings follow libpq (PGHOST, PGPORT, PGUSER, PGDATABASE, -d CONNINFO; passwords in ~/.pgpass)",
            )]
        }
    };
    let Some(major) = version::major_from_server_version_num(c.server_version()) else {
        return vec![Line::fail(
            "connection",
            format!("server_version_num {} is not supported", c.server_version()),
            format!(
                "pgbookend supports PostgreSQL {} to {}",
                version::OLDEST_MAJOR,
                version::NEWEST_MAJOR
            ),
        )];
    };
    let mut lines = vec![Line::ok(
        "connection",
        format!("PostgreSQL {major}, {}", c.describe()),
    )];
    let before = archiver(&mut c);
    let setup = archive_settings(&mut c, &mut lines);
    lines.extend(grants(&mut c, major, o.wal));
    if let Some(pgbookend) = setup {
        lines.push(switch_arrives(&mut c, o, pgbookend, before.as_ref()));
    }
    lines.push(failures_since(&mut c, before.as_ref()));
    lines
}

fn setting(c: &mut Conn, name: &str) -> Option<String> {
    c.query("SELECT current_setting($1, true)", &[name])
        .ok()?
        .scalar()
        .map(str::to_string)
}

/// Whether `cmd` runs `pgbookend archive-push` (any path to the binary, any environment
/// assignments before it).
pub fn is_pgbookend_push(cmd: &str) -> bool {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    words.windows(2).any(|w| {
        let prog = w[0].rsplit('/').next().unwrap_or(w[0]);
        prog == "pgbookend" && w[1] == "archive-push"
    })
}

/// archive_mode and archive_command (or archive_library). `Some(is pgbookend's)` when the
/// server archives at all, so the switch test makes sense.
fn archive_settings(c: &mut Conn, lines: &mut Vec<Line>) -> Option<bool> {
    let mode = setting(c, "archive_mode").unwrap_or_default();
    let mode_ok = mode == "on" || mode == "always";
    if mode_ok {
        lines.push(Line::ok("archive_mode", format!("archive_mode = {mode}")));
    } else {
        lines.push(Line::fail(
            "archive_mode",
            format!("archive_mode = {mode}: the server archives no WAL"),
            "set archive_mode = on in postgresql.conf and restart the server",
        ));
    }
    let cmd = setting(c, "archive_command").unwrap_or_default();
    let library = setting(c, "archive_library").unwrap_or_default();
    let want = "archive_command = 'pgbookend archive-push %p' in postgresql.conf, then SELECT pg_reload_conf()";
    let pgbookend = if !library.is_empty() {
        lines.push(Line::warn(
            "archive_command",
            format!("archive_library = {library}: another tool archives the WAL"),
            format!("for the pgbookend archive: archive_library = '' and {want}"),
        ));
        false
    } else if cmd.trim().is_empty() || cmd == "(disabled)" {
        lines.push(Line::fail(
            "archive_command",
            "archive_command is not set: WAL is not archived",
            format!("set {want}"),
        ));
        return None;
    } else if is_pgbookend_push(&cmd) {
        lines.push(Line::ok(
            "archive_command",
            format!("archive_command = '{cmd}'"),
        ));
        true
    } else {
        lines.push(Line::warn(
            "archive_command",
            format!("archive_command = '{cmd}' is not pgbookend's archive-push"),
            format!("for the pgbookend archive in the stores: {want}"),
        ));
        false
    };
    mode_ok.then_some(pgbookend)
}

/// EXECUTE on the backup functions; with `--wal collect`, REPLICATION and a free slot.
fn grants(c: &mut Conn, major: u32, wal: WalMode) -> Vec<Line> {
    let mut lines = Vec::new();
    let role = c
        .query(
            "SELECT current_user AS u, rolsuper::text AS s, rolreplication::text AS r FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .ok();
    let get = |col: &str| {
        role.as_ref()
            .and_then(|r| r.get(0, col))
            .unwrap_or("")
            .to_string()
    };
    let (user, superuser, replication) = (get("u"), get("s") == "true", get("r") == "true");
    let mut missing = Vec::new();
    for f in version::backup_function_signatures(major) {
        let ok = c
            .query("SELECT has_function_privilege($1, 'EXECUTE')::text", &[f])
            .ok()
            .is_some_and(|r| r.scalar() == Some("true"));
        if !ok {
            missing.push(f);
        }
    }
    if missing.is_empty() {
        lines.push(Line::ok(
            "grants",
            format!("role {user} may run the backup functions"),
        ));
    } else {
        let fix: Vec<String> = missing
            .iter()
            .map(|f| format!("GRANT EXECUTE ON FUNCTION {f} TO {user};"))
            .collect();
        lines.push(Line::fail(
            "grants",
            format!("role {user} may not run {}", missing.join(", ")),
            fix.join(" "),
        ));
    }
    if wal != WalMode::Collect {
        lines.push(Line::ok(
            "replication_slot",
            "not needed: --wal archive and --wal none use no replication slot (and no backup uses a WAL sender)",
        ));
        return lines;
    }
    if !superuser && !replication {
        lines.push(Line::fail(
            "replication",
            format!("role {user} lacks the REPLICATION attribute that --wal collect needs for its temporary slot"),
            format!("ALTER ROLE {user} REPLICATION; (or use --wal archive)"),
        ));
    }
    lines.push(free_slot(c));
    lines
}

/// `--wal collect` creates one temporary physical slot (by SQL: no WAL sender needed).
fn free_slot(c: &mut Conn) -> Line {
    let r = c.query(
        "SELECT current_setting('max_replication_slots')::int AS m, (SELECT count(*) FROM pg_replication_slots) AS n",
        &[],
    );
    let (max, used): (i64, i64) = match &r {
        Ok(r) => (
            r.get(0, "m").and_then(|v| v.parse().ok()).unwrap_or(0),
            r.get(0, "n").and_then(|v| v.parse().ok()).unwrap_or(0),
        ),
        Err(e) => {
            return Line::fail(
                "replication_slot",
                format!("cannot read pg_replication_slots: {}", e.message),
                "grant the role SELECT on pg_replication_slots",
            )
        }
    };
    if used >= max {
        return Line::fail(
            "replication_slot",
            format!("no free replication slot ({used} of max_replication_slots = {max} in use); --wal collect needs one"),
            "raise max_replication_slots (restart), drop an unused slot (pg_drop_replication_slot), or use --wal archive",
        );
    }
    Line::ok(
        "replication_slot",
        format!(
            "{} of {max} replication slots free (--wal collect needs one; no WAL sender)",
            max - used
        ),
    )
}

/// Forces a WAL switch and waits until its segment is in every archive store (for
/// pgbookend's archive-push) or reported archived by the server (another tool).
fn switch_arrives(c: &mut Conn, o: &Options, pgbookend: bool, before: Option<&Archiver>) -> Line {
    const NAME: &str = "wal_switch";
    if c.query("SELECT pg_is_in_recovery()::text", &[])
        .ok()
        .and_then(|r| r.scalar().map(str::to_string))
        .as_deref()
        == Some("true")
    {
        return Line::warn(
            NAME,
            "a standby: no WAL switch can be forced here",
            "run check against the primary too",
        );
    }
    // Write something first: on an idle server pg_switch_wal() switches nothing.
    let _ = c.query("SELECT txid_current()", &[]);
    let r = c.query(
        "SELECT pg_walfile_name(pg_switch_wal()) AS seg, (SELECT system_identifier FROM pg_control_system())::text AS sysid",
        &[],
    );
    let (seg, sysid) = match &r {
        Ok(r) => (
            r.get(0, "seg").unwrap_or("").to_string(),
            r.get(0, "sysid").and_then(|v| v.parse::<u64>().ok()),
        ),
        Err(e) => return Line::fail(
            NAME,
            format!("cannot force a WAL switch: {}", e.message),
            "run check as a superuser, or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO the role",
        ),
    };
    let (Ok(name), Some(sysid)) = (WalName::parse(&seg), sysid) else {
        return Line::fail(
            NAME,
            format!("the server named an invalid segment {seg:?}"),
            "report this as a bug",
        );
    };
    let handles: Vec<(String, crate::error::Result<Handle>)> = if pgbookend {
        o.archive_stores
            .iter()
            .map(|u| {
                (
                    u.clone(),
                    Store::parse(u, &o.s3).and_then(|s| Handle::open(&s)),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    if pgbookend && o.archive_stores.is_empty() {
        return Line::fail(NAME, format!("forced segment {seg}: no archive store to look in"),
            "set archive_store (or store) in the config file archive_command uses, or give --archive-store URL");
    }
    let deadline = Instant::now() + o.timeout;
    loop {
        let arrived = if pgbookend {
            !handles.is_empty() && handles.iter().all(|(_, h)| in_store(h, sysid, &name))
        } else {
            archiver(c)
                .and_then(|a| a.last_archived)
                .is_some_and(|l| l >= seg)
        };
        if arrived {
            let where_ = if pgbookend {
                "in every archive store"
            } else {
                "archived (pg_stat_archiver)"
            };
            let took = o
                .timeout
                .saturating_sub(deadline.saturating_duration_since(Instant::now()));
            return Line::ok(
                NAME,
                format!(
                    "forced segment {seg} {where_} after {:.1}s",
                    took.as_secs_f64()
                ),
            );
        }
        let now = archiver(c);
        if let (Some(b), Some(a)) = (before, &now) {
            // PostgreSQL tries a file three times in a row before it sleeps.
            let failed = a.failed_count.saturating_sub(b.failed_count);
            if failed >= 3 || (failed > 0 && a.last_failed.as_deref() == Some(seg.as_str())) {
                return Line::fail(NAME, format!("archiving failed while waiting for {seg}: {} at {} (pg_stat_archiver)", a.last_failed.as_deref().unwrap_or("?"), a.last_failed_time.as_deref().unwrap_or("?")),
                    "the server log has the archive_command's error: fix it, PostgreSQL retries by itself");
            }
        }
        if Instant::now() >= deadline {
            return not_arrived(&seg, o, pgbookend, now.as_ref());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn in_store(h: &crate::error::Result<Handle>, sysid: u64, name: &WalName) -> bool {
    let Ok(h) = h else { return false };
    let dir = layout::dir_of(sysid, name);
    h.list(&dir).is_ok_and(|objs| {
        !layout::versions_of(name, objs.iter().map(|o| o.name.as_str())).is_empty()
    })
}

fn not_arrived(seg: &str, o: &Options, pgbookend: bool, now: Option<&Archiver>) -> Line {
    let archived = now
        .and_then(|a| a.last_archived.as_deref())
        .is_some_and(|l| l >= seg);
    let detail = format!(
        "forced segment {seg} did not reach the archive within {}s",
        o.timeout.as_secs()
    );
    if pgbookend && archived {
        return Line::fail("wal_switch", format!("{detail}: the server archived it, but not into the stores checked ({})", o.archive_stores.join(", ")),
            "give check the stores archive_command uses (the same config file, PGBOOKEND_CONFIG, or --archive-store)");
    }
    Line::fail("wal_switch", detail,
        "see pg_stat_archiver and the server log: the archiver is failing or far behind (a larger --timeout waits longer)")
}

/// Archiving failures counted by `pg_stat_archiver` while the check ran.
fn failures_since(c: &mut Conn, before: Option<&Archiver>) -> Line {
    let (Some(b), Some(a)) = (before, archiver(c)) else {
        return Line::warn(
            "archiver",
            "cannot read pg_stat_archiver",
            "grant the role access to pg_stat_archiver",
        );
    };
    let n = a.failed_count.saturating_sub(b.failed_count);
    if n == 0 {
        return Line::ok(
            "archiver",
            format!(
                "no archiving failure during the check (last archived {})",
                a.last_archived.as_deref().unwrap_or("none")
            ),
        );
    }
    Line::fail(
        "archiver",
        format!(
            "{n} archiving failure(s) during the check, last {} at {}",
            a.last_failed.as_deref().unwrap_or("?"),
            a.last_failed_time.as_deref().unwrap_or("?")
        ),
        "the server log has the archive_command's error: fix it, PostgreSQL retries by itself",
    )
}

#[cfg(test)]
mod tests {
    use super::is_pgbookend_push;

    #[test]
    fn recognises_pgbookend_push() {
        for ok in [
            "pgbookend archive-push %p",
            "/usr/bin/pgbookend archive-push %p",
            "PGBOOKEND_CONFIG=/etc/x.toml /opt/pgbookend archive-push %p --min-stores 1",
        ] {
            assert!(is_pgbookend_push(ok), "{ok}");
        }
        for other in [
            "cp %p /mnt/archive/%f",
            "pgbackrest --stanza=main archive-push %p",
            "pgbookend archive-get %f %p",
            "mypgbookend archive-push %p",
            "",
        ] {
            assert!(!is_pgbookend_push(other), "{other}");
        }
    }
}
