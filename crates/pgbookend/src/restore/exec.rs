//! Carrying out `prepare`'s plan: every step through directory descriptors that never
//! follow a link in the copy, recorded in a journal so that a failure part-way leaves a
//! copy that `guard` refuses and that the same `prepare` run again finishes.
//!
//! Exit classes: a refusal before any change is `check` (6, nothing changed); a failure
//! after the journal was written is `unfinished` (8, run prepare again).

use crate::error::{io_err, Class, Error, Result};
use crate::fsutil::Ownership;
use crate::nofollow::{Dir, Kind};
use crate::pg::datadir::MARKER_DIR;
use crate::restore::journal::{self as prepare_journal, Journal};
use crate::restore::{examine, Action, Loaded, PlanExtra, PrepareOptions, Report};
use pgbookend_formats::control;
use std::collections::BTreeMap;
use std::path::Path;

/// `prepare`: check, then (unless `--dry-run`) carry out the plan under a journal.
pub fn prepare(opts: &PrepareOptions) -> Result<Report> {
    let prior = prepare_journal::find(&opts.pgdata)?;
    let scratch = tempfile::Builder::new()
        .prefix("pgbookend-prepare.")
        .tempdir()
        .map_err(|e| Error::env(format!("cannot create a scratch directory: {e}")))?;
    let mut checked = opts.clone();
    checked.resuming = prior.is_some();
    let (mut report, plan) = examine(&checked, scratch.path(), false);
    if let Some((path, j)) = &prior {
        if let Some(e) = cannot_continue(opts, &report, path, j) {
            return Err(e);
        }
    }
    if !report.problems.is_empty() || opts.dry_run {
        return Ok(report);
    }
    let Some((loaded, extra)) = plan else {
        return Ok(report);
    };
    let own = Ownership::of_dir(&opts.pgdata)?;
    let id = report.id.clone().unwrap_or_default();
    let resumed = prior.is_some();
    let mut journal = match prior {
        Some((_, j)) => j,
        None => Journal::new(&id, opts.waldir.as_deref(), &opts.tablespaces),
    };
    if let Err(e) = journal.save(&opts.pgdata, &own) {
        return Err(if resumed {
            unfinished(e, opts, &journal)
        } else {
            e
        });
    }
    execute(opts, &report, &loaded, &extra, &own, &mut journal)
        .and_then(|()| finish(&opts.pgdata))
        .map_err(|e| unfinished(e, opts, &journal))?;
    report.done = true;
    Ok(report)
}

/// Why a half-prepared copy cannot be continued by this run, if it cannot.
fn cannot_continue(
    opts: &PrepareOptions,
    report: &Report,
    path: &Path,
    j: &Journal,
) -> Option<Error> {
    let base = |m: String| {
        Error::new(Class::Unfinished, m)
            .hint(format!(
                "the copy is half-prepared (journal {}): guard refuses to start it",
                path.display()
            ))
            .hint(format!(
                "run the same prepare again, with {}, to finish it",
                j.remap_args()
            ))
    };
    if !report.problems.is_empty() {
        let list: Vec<String> = report
            .problems
            .iter()
            .map(|p| format!("{} ({})", p.message, p.hint))
            .collect();
        return Some(base(format!(
            "prepare cannot finish the half-prepared copy in {}: {}",
            opts.pgdata.display(),
            list.join("; ")
        )));
    }
    if report.id.as_deref() != Some(j.id.as_str()) {
        return Some(base(format!(
            "the copy in {} is half-prepared for backup {}, not {}",
            opts.pgdata.display(),
            j.id,
            report.id.clone().unwrap_or_default()
        )));
    }
    if !j.same_remaps(opts.waldir.as_deref(), &opts.tablespaces) {
        return Some(base(format!(
            "the copy in {} was half-prepared with {}; this run gives other remaps",
            opts.pgdata.display(),
            j.remap_args()
        )));
    }
    None
}

/// A failure after the first change: the copy is half-prepared.
fn unfinished(e: Error, opts: &PrepareOptions, j: &Journal) -> Error {
    let mut out = Error::new(
        Class::Unfinished,
        format!(
            "prepare changed the copy in {} and then failed: {}",
            opts.pgdata.display(),
            e.message
        ),
    );
    for h in e.hints {
        out = out.hint(h);
    }
    out.hint(format!(
        "the copy is half-prepared (journal {}/{}/{}/{}): guard refuses to start it",
        opts.pgdata.display(),
        MARKER_DIR,
        j.id,
        prepare_journal::FILE
    ))
    .hint(format!(
        "fix the cause, then run the same prepare again ({}) to finish it",
        j.remap_args()
    ))
}

/// The last step: the markers and the journal go, so the copy counts as prepared.
fn finish(pgdata: &Path) -> Result<()> {
    let root = Dir::open_given(pgdata)?;
    root.remove(MARKER_DIR)?;
    root.fsync()
}

/// Carries out the plan, recording each step in the journal.
fn execute(
    opts: &PrepareOptions,
    report: &Report,
    loaded: &Loaded,
    extra: &PlanExtra,
    own: &Ownership,
    journal: &mut Journal,
) -> Result<()> {
    let root = Dir::open_given(&opts.pgdata)?;
    let id = report.id.clone().unwrap_or_default();
    let actions = &report.actions;
    for (i, a) in actions.iter().enumerate() {
        step(&root, opts, loaded, extra, own, &id, a)?;
        journal.done.push(a.describe());
        // A run of WAL files is recorded once, after its last file: every step can be
        // repeated, so the list is a record of progress, and a durable rewrite per
        // segment would cost an fsync pair each (measured in bench/hardening.sh).
        let wal = |a: Option<&Action>| matches!(a, Some(Action::WriteWal { .. }));
        if !(wal(Some(a)) && wal(actions.get(i + 1))) {
            journal.save(&opts.pgdata, own)?;
        }
    }
    wal_dir(&root, opts)?.fsync()?;
    root.fsync()
}

/// The last component of an action's path.
fn name_of(path: &str) -> Result<String> {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::internal(format!("no file name in {path}")))
}

/// The directory the WAL goes to: `--waldir`, else the copy's own pg_wal.
fn wal_dir(root: &Dir, opts: &PrepareOptions) -> Result<Dir> {
    match &opts.waldir {
        Some(w) => Dir::open(w),
        None => root.sub("pg_wal"),
    }
}

/// Opens a remap target (created if missing), owned like the data directory; its last
/// component must not be a link.
fn open_target(to: &Path, own: &Ownership) -> Result<Dir> {
    if std::fs::symlink_metadata(to).is_err() {
        std::fs::create_dir_all(to).map_err(|e| io_err("cannot create", to, e))?;
    }
    let d = Dir::open(to)?;
    d.own(own, true)?;
    Ok(d)
}

/// One step of the plan. Every step can be carried out again after a failure.
fn step(
    root: &Dir,
    opts: &PrepareOptions,
    loaded: &Loaded,
    extra: &PlanExtra,
    own: &Ownership,
    id: &str,
    a: &Action,
) -> Result<()> {
    match a {
        Action::Remove { path, .. } => root.remove(name_of(path)?),
        Action::ClearDir { path, .. } => {
            if opts
                .waldir
                .as_ref()
                .map(|w| w.display().to_string())
                .as_deref()
                == Some(path)
            {
                wal_dir(root, opts)?.clear(&["archive_status"])
            } else {
                let name = name_of(path)?;
                let keep: &[&str] = if name == "pg_wal" {
                    &["archive_status"]
                } else {
                    &[]
                };
                root.sub(&name)?.clear(keep)
            }
        }
        Action::ReplaceLink { path, .. } => {
            let name = name_of(path)?;
            if root.kind(&name) == Kind::Link {
                root.remove(&name)?;
            }
            root.make_dir(&name, own).map(|_| ())
        }
        Action::MoveTablespace { oid, to, .. } => {
            let src = root.sub("pg_tblspc")?.sub(oid.to_string())?;
            move_contents(&src, &open_target(Path::new(to), own)?, own)
        }
        Action::LinkTablespace { oid, to } => {
            open_target(Path::new(to), own)?;
            let tbl = root.sub("pg_tblspc")?;
            let name = oid.to_string();
            if tbl.kind(&name) == Kind::Dir && !tbl.sub(&name)?.names()?.is_empty() {
                return Err(Error::internal(format!(
                    "pg_tblspc/{name} still holds files; not replacing it by a link"
                )));
            }
            tbl.symlink(&name, Path::new(to), own)
        }
        Action::LinkWal { to } => {
            open_target(Path::new(to), own)?;
            root.symlink("pg_wal", Path::new(to), own)
        }
        Action::WriteFile { path, .. } => {
            let name = name_of(path)?;
            let data = file_data(&name, opts, loaded, extra)?;
            root.write(&name, &data, own)
        }
        Action::WriteWal { path, .. } => {
            write_wal(&wal_dir(root, opts)?, &name_of(path)?, loaded, own)
        }
        Action::SetRecovery { settings } => write_auto_conf(root, settings, id, own),
        Action::InstallControl { .. } => {
            let bytes = control::invalidate_checkpoint(&loaded.control_bytes)
                .map_err(|e| Error::internal(format!("cannot prepare pg_control: {e}")))?;
            root.sub("global")?.write("pg_control", &bytes, own)
        }
    }
}

/// The bytes of a file `prepare` writes into the copy.
fn file_data(
    name: &str,
    opts: &PrepareOptions,
    loaded: &Loaded,
    extra: &PlanExtra,
) -> Result<Vec<u8>> {
    Ok(match name {
        "backup_label" => loaded.label_text.clone().into_bytes(),
        "tablespace_map" => match (&extra.new_map, opts.tablespaces.is_empty()) {
            (_, true) => loaded.map_text.clone().unwrap_or_default().into_bytes(),
            (Some(mp), false) => mp
                .format_for_major(loaded.manifest.pg_major)
                .map_err(|e| {
                    Error::usage(format!("cannot write the remapped tablespace_map: {e}"))
                })?
                .into_bytes(),
            (None, false) => Vec::new(),
        },
        _ => Vec::new(),
    })
}

/// Decompresses one WAL file of the bundle into `dir`, streamed and hashed; a damaged
/// or incomplete file never reaches its final name.
fn write_wal(dir: &Dir, name: &str, loaded: &Loaded, own: &Ownership) -> Result<()> {
    let w = loaded
        .manifest
        .wal
        .iter()
        .find(|w| w.name == name)
        .ok_or_else(|| Error::internal(format!("{name} not in the bundle")))?;
    let rel = w.stored.as_deref().unwrap_or("");
    let stored = loaded.dir.join(rel);
    // Bounded: no WAL file is larger than a segment, whatever its compressed form claims.
    let limit = u64::from(loaded.manifest.wal_segment_size);
    dir.write_with(name, own, |out, tmp| {
        let (_, sha) = crate::bundle::read::copy_wal(&loaded.dir, rel, limit, out)
            .map_err(|e| wal_copy_error(name, &stored, tmp, e))?;
        if Some(sha) != w.sha256 {
            return Err(Error::new(
                Class::Check,
                format!("WAL file {name} in the bundle is damaged"),
            ));
        }
        Ok(())
    })
}

/// Why a WAL file could not be written into the copy: the target's fault (no space, an
/// I/O error; free space and run prepare again) or the bundle's (damaged, over-long).
fn wal_copy_error(name: &str, stored: &Path, tmp: &Path, e: std::io::Error) -> Error {
    let target = matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EIO) | Some(libc::EROFS)
    );
    if target {
        return io_err("cannot write", tmp, e)
            .hint("free space (or fix the file system) and run the same prepare again");
    }
    Error::new(
        Class::Check,
        format!(
            "WAL file {name} in the bundle cannot be restored ({}): {e}",
            stored.display()
        ),
    )
    .hint("the bundle is damaged; use another copy of it")
}

/// Moves the copy's inline tablespace files into the remap target (rename, or copy then
/// delete across file systems), giving them the data directory's owner without
/// following any link.
fn move_contents(src: &Dir, dst: &Dir, own: &Ownership) -> Result<()> {
    for name in src.names()? {
        if src.rename_into(&name, dst).is_err() {
            let from = src.path().join(&name);
            let to = dst.path().join(&name);
            dst.remove(&name)?; // a partial copy of an earlier run
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg("--no-dereference")
                .arg(&from)
                .arg(&to)
                .status()
                .map_err(|e| io_err("cannot copy", &from, e))?;
            if !st.success() {
                return Err(Error::env(format!(
                    "cannot copy {} to {}",
                    from.display(),
                    to.display()
                )));
            }
            src.remove(&name)?;
        }
        if dst.kind(&name) == Kind::Dir {
            dst.sub(&name)?.own_tree(own)?;
        }
    }
    src.fsync()?;
    dst.fsync()
}

/// The keys `prepare` manages in postgresql.auto.conf.
const MANAGED: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_timeline",
    "recovery_target_action",
    "recovery_target_inclusive",
    "primary_conninfo",
];

/// Rewrites postgresql.auto.conf: earlier values of the managed keys go, ours are
/// appended. Read without following a link (a link there would leak what it names).
fn write_auto_conf(
    root: &Dir,
    settings: &BTreeMap<String, String>,
    id: &str,
    own: &Ownership,
) -> Result<()> {
    let old = root
        .read_small("postgresql.auto.conf", 16 << 20)?
        .unwrap_or_default();
    let old = String::from_utf8_lossy(&old);
    let mut out = String::new();
    for line in old.lines() {
        let key = line.split(['=', ' ', '\t']).next().unwrap_or("").trim();
        if MANAGED.contains(&key) || line.starts_with("# pgbookend prepare") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("# pgbookend prepare: recovery of backup {id}\n"));
    for (k, v) in settings {
        out.push_str(&format!("{k} = {}\n", crate::shellword::conf_string(v)));
    }
    root.write("postgresql.auto.conf", out.as_bytes(), own)
}
