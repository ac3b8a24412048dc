//! `guard --pgdata DIR`: for `ExecStartPre=`. Refuses to let a server start on a restored
//! copy that was never prepared (it carries a marker and no `backup_label`: such a
//! start would "recover" from the wrong checkpoint and corrupt data silently), nor on a
//! half-prepared copy (a `prepare` journal is present: exit 8, run prepare again).

use crate::agent::live;
use crate::agent::marker::{self, Marker};
use crate::error::{Class, Error, Result};
use crate::restore::running_postmaster;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

/// Whether the agent that wrote `m` is alive: by its lock when we may read it, else by
/// its process (a guard run as the cluster's owner cannot open root's run directory).
fn agent_alive(m: &Marker) -> bool {
    if marker::agent_alive(m) {
        return true;
    }
    let cmd = fs::read(format!("/proc/{}/cmdline", m.agent_pid)).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmd);
    cmd.contains(crate::agent::serve::SUBCOMMAND) && cmd.contains(&m.id)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The verdict on one data directory: `Ok(facts)` to let the server start.
pub fn guard(pgdata: &Path) -> Result<(Value, String)> {
    if !pgdata.join("PG_VERSION").is_file() {
        return Err(Error::usage(format!(
            "{} is not a PostgreSQL data directory",
            pgdata.display()
        )));
    }
    if let Some((path, j)) = crate::restore::journal::find(pgdata)? {
        return Err(Error::new(
            Class::Unfinished,
            format!(
                "{} is half-prepared: a prepare of backup {} changed it and did not finish (journal {}); started like this, the server would recover wrongly",
                pgdata.display(),
                j.id,
                path.display()
            ),
        )
        .hint(format!(
            "run the same pgbookend prepare again to finish it: pgbookend prepare --pgdata {} --store <the store of backup {}> ({})",
            pgdata.display(),
            j.id,
            j.remap_args()
        )));
    }
    let markers = marker::list(pgdata);
    if markers.is_empty() {
        return Ok((
            json!({"verdict": "ok", "reason": "no_marker"}),
            "ok: no backup marker\n".into(),
        ));
    }
    if pgdata.join("backup_label").is_file() {
        return Ok((
            json!({"verdict": "ok", "reason": "backup_label_present"}),
            "ok: the directory holds a backup_label (a prepared copy)\n".into(),
        ));
    }
    let mut human = String::new();
    let mut removed = Vec::new();
    let mut live_ids = Vec::new();
    for m in markers {
        let m = match m {
            Ok(m) => m,
            Err((id, why)) => {
                return Err(Error::new(Class::Check, format!("{}: unreadable marker of backup {id}: {why}", pgdata.display()))
                    .hint("if this is a restored copy, run pgbookend prepare on it; if it is the live primary, run pgbookend cleanup --pgdata"));
            }
        };
        if agent_alive(&m) && same_dir(Path::new(&m.pgdata), pgdata) {
            live_ids.push(m.id.clone());
            human.push_str(&format!(
                "ok: backup {} is in progress on this cluster\n",
                m.id
            ));
            continue;
        }
        let ours = live::read(&m.id, &m.token)
            .map(|r| same_dir(Path::new(&r.pgdata), pgdata))
            .unwrap_or(false);
        if ours || running_postmaster(pgdata).is_some() {
            marker::remove(pgdata, &m.id)?;
            live::remove(&m.id, &m.token);
            removed.push(m.id.clone());
            human.push_str(&format!(
                "ok: removed the stale marker of backup {} (its agent is gone)\n",
                m.id
            ));
            continue;
        }
        return Err(Error::new(
            Class::Check,
            format!(
                "{} is a copy taken during backup {} that was never prepared: started like this, the server would recover from the wrong checkpoint and silently corrupt data",
                pgdata.display(),
                m.id
            ),
        )
        .hint(format!(
            "run: pgbookend prepare --pgdata {} --store <the store of backup {}>",
            pgdata.display(),
            m.id
        ))
        .hint("if this really is the primary and its backup agent died, run: pgbookend cleanup --pgdata DIR"));
    }
    Ok((
        json!({"verdict": "ok", "reason": "live_or_stale_markers", "live": live_ids, "removed_stale": removed}),
        human,
    ))
}
