//! HA-symmetric hooks: `start --only-on primary|standby` lets one identical backup job run
//! on every node of a cluster (Patroni and the like). On a node of the other role `start`
//! skips, and records the skip in the state directory (`<state>/skipped/<id>.json`) so
//! that the job's `stop --id ID` knows it and exits 0 without doing anything.

use crate::error::{io_err, Error, Result};
use crate::fsutil::{self, NotPrivate, Ownership};
use crate::nofollow::Dir;
use crate::output::Output;
use crate::timefmt::{now_unix, rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;

/// The largest skip record read back (they are a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 4096;

/// How long a skip record is kept: far longer than any backup window (the agent's
/// timeout defaults to 24 h), short enough that they never pile up.
pub const KEEP_SECONDS: i64 = 7 * 24 * 3600;

/// A server's role, as `pg_is_in_recovery()` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Standby,
}

impl Role {
    /// Parses the value of `--only-on` (or the config key `only_on`).
    pub fn parse(s: &str) -> Result<Role> {
        match s.trim() {
            "primary" => Ok(Role::Primary),
            "standby" => Ok(Role::Standby),
            other => Err(Error::usage(format!(
                "--only-on {other:?}: expected primary or standby"
            ))),
        }
    }

    /// The role of a server in recovery (`true`) or not.
    pub fn of_recovery(in_recovery: bool) -> Role {
        if in_recovery {
            Role::Standby
        } else {
            Role::Primary
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// The durable record of a skipped start, read back by `stop --id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skip {
    pub format: u32,
    pub id: String,
    /// The role `--only-on` asked for.
    pub only_on: Role,
    /// The role the server had.
    pub role: Role,
    /// Unix seconds of the skip.
    pub time: i64,
}

impl Skip {
    /// Why nothing was done, in one sentence.
    pub fn reason(&self) -> String {
        format!(
            "this server is a {} and the backup is to be taken only on a {} (--only-on {})",
            self.role.as_str(),
            self.only_on.as_str(),
            self.only_on.as_str()
        )
    }
}

/// `<state>/skipped`.
pub fn dir() -> PathBuf {
    crate::config::state_root().join("skipped")
}

/// The skip directory, created private (0700) if needed and refused if someone else
/// could plant records in it.
fn open_dir(create: bool) -> Result<Option<Dir>> {
    let d = dir();
    let mut created = false;
    if create && std::fs::symlink_metadata(&d).is_err() {
        let root = crate::config::state_root();
        if let Some(parent) = root.parent().filter(|p| !p.exists()) {
            std::fs::create_dir_all(parent).map_err(|e| io_err("cannot create", parent, e))?;
        }
        fsutil::ensure_dir(&root, &Ownership::private())?;
        match std::fs::create_dir(&d) {
            Ok(()) => created = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("cannot create", &d, e)),
        }
    }
    match fsutil::open_private(&d, created) {
        Ok(_) => Dir::open(&d).map(Some),
        Err(NotPrivate::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound && !create => {
            Ok(None)
        }
        Err(NotPrivate::Io(what, e)) => Err(io_err(&format!("cannot {what}"), &d, e)),
        Err(_) => Err(Error::env(format!(
            "refusing the skip-record directory {}: it must be a real directory of ours, writable by nobody else",
            d.display()
        ))
        .hint("fix its owner and mode, or choose another state directory with PGBOOKEND_STATE_DIR")),
    }
}

/// Records a skip durably, and removes skip records older than [`KEEP_SECONDS`].
pub fn record(skip: &Skip) -> Result<()> {
    let Some(d) = open_dir(true)? else {
        return Err(Error::internal("the skip-record directory vanished"));
    };
    prune(&d, skip.time);
    let data = serde_json::to_vec_pretty(skip).map_err(|e| Error::internal(e.to_string()))?;
    d.write(&format!("{}.json", skip.id), &data, &Ownership::private())
}

/// Removes the records that are older than [`KEEP_SECONDS`] (or unreadable and old).
fn prune(d: &Dir, now: i64) {
    let Ok(names) = d.names() else { return };
    for name in names {
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let old = match read_in(d, id) {
            Some(s) => now - s.time > KEEP_SECONDS,
            None => std::fs::symlink_metadata(d.path().join(&name))
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() as i64 > KEEP_SECONDS),
        };
        if old {
            let _ = d.remove(&name);
        }
    }
}

/// The skip record of backup `id`, if this host has a valid one: a link, an oversized or
/// malformed file, or one naming another ID is ignored (it is hostile input).
pub fn read(id: &str) -> Option<Skip> {
    crate::id::validate(id).ok()?;
    let d = open_dir(false).ok()??;
    read_in(&d, id)
}

fn read_in(d: &Dir, id: &str) -> Option<Skip> {
    crate::id::validate(id).ok()?;
    let data = d
        .read_small(&format!("{id}.json"), MAX_RECORD_BYTES)
        .ok()??;
    let s: Skip = serde_json::from_slice(&data).ok()?;
    (s.format == 1 && s.id == id && s.time > 0).then_some(s)
}

/// The report of a skipped `start` (or `stop` of a skipped backup, `verb`).
pub fn output(skip: &Skip, verb: &str) -> Output {
    let human = match verb {
        "start" => format!(
            "skipped backup {}: {}; nothing was started (`pgbookend stop --id {}` will exit 0 too)\n",
            skip.id,
            skip.reason(),
            skip.id
        ),
        _ => format!(
            "backup {} was skipped at its start ({}): nothing to stop\n",
            skip.id,
            skip.reason()
        ),
    };
    Output {
        json: json!({
            "id": skip.id,
            "skipped": true,
            "role": skip.role.as_str(),
            "only_on": skip.only_on.as_str(),
            "reason": skip.reason(),
            "skipped_at": rfc3339(skip.time),
        }),
        human,
        error: None,
    }
}

/// A fresh skip of `id` now.
pub fn new_skip(id: &str, only_on: Role, role: Role) -> Skip {
    Skip {
        format: 1,
        id: id.to_string(),
        only_on,
        role,
        time: now_unix(),
    }
}

/// The role of the server `conninfo` reaches, from `pg_is_in_recovery()` on a short
/// session of its own (closed before any backup starts).
pub fn role_now(conninfo: Option<&str>, id: &str) -> Result<Role> {
    let mut s =
        crate::pg::session::Session::connect(conninfo, id, std::time::Duration::from_secs(10))?;
    Ok(Role::of_recovery(s.in_recovery()?))
}

/// `--only-on`, else the config key `only_on`, parsed.
pub fn only_on(flag: Option<&str>, config: Option<&str>) -> Result<Option<Role>> {
    flag.or(config).map(Role::parse).transpose()
}

/// Checks the role before a start: `Some(skip)` (recorded) when this node is not the
/// one `only_on` asks for.
pub fn check_role(only_on: Option<Role>, conninfo: Option<&str>, id: &str) -> Result<Option<Skip>> {
    let Some(want) = only_on else {
        return Ok(None);
    };
    // An old skip of this ID must not outlive a start that fails here (the server
    // unreachable): its `stop --id` would pass for a skip.
    forget(id);
    let role = role_now(conninfo, id)?;
    if role == want {
        return Ok(None);
    }
    let skip = new_skip(id, want, role);
    record(&skip)?;
    Ok(Some(skip))
}

/// The agent's check on its own session: the role `start` saw must still hold, else the
/// server changed role in between (a failover) and no backup starts.
pub fn recheck(only_on: Option<Role>, in_recovery: bool) -> Result<()> {
    match only_on {
        Some(want) if Role::of_recovery(in_recovery) != want => Err(Error::env(format!(
            "the server changed role during start (a failover?): it is no longer a {}; no backup was started",
            want.as_str()
        ))
        .hint("run the job again: it backs up or skips according to the new role")),
        _ => Ok(()),
    }
}

/// Removes the skip record of `id`, if any: a backup that really starts under an ID
/// skipped before (a fixed `--id`, a failover since) must never be taken for a skip by
/// its `stop`, whatever happens to it.
pub fn forget(id: &str) {
    if crate::id::validate(id).is_err() {
        return;
    }
    if let Ok(Some(d)) = open_dir(false) {
        let name = format!("{id}.json");
        if d.kind(&name) != crate::nofollow::Kind::Missing {
            let _ = d.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_recheck() {
        assert_eq!(Role::parse("primary").unwrap(), Role::Primary);
        assert_eq!(Role::parse(" standby").unwrap(), Role::Standby);
        assert!(Role::parse("replica").is_err());
        assert_eq!(only_on(None, Some("standby")).unwrap(), Some(Role::Standby));
        assert_eq!(
            only_on(Some("primary"), Some("standby")).unwrap(),
            Some(Role::Primary)
        );
        assert!(recheck(Some(Role::Primary), false).is_ok());
        assert!(recheck(Some(Role::Primary), true).is_err());
        assert!(recheck(None, true).is_ok());
    }

    #[test]
    fn a_record_must_parse_whole() {
        let s = new_skip("job-1", Role::Primary, Role::Standby);
        let text = serde_json::to_string(&s).unwrap();
        let back: Skip = serde_json::from_str(&text).unwrap();
        assert_eq!(back.id, "job-1");
        let extra = text.replacen('{', "{\"run\":\"rm -rf /\",", 1);
        assert!(serde_json::from_str::<Skip>(&extra).is_err());
        assert!(s.reason().contains("standby") && s.reason().contains("--only-on primary"));
    }
}
