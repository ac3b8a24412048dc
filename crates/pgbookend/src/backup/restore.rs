//! `pgbookend restore`: a built-in backup from a store into a data directory, then exactly
//! `prepare` on the result, then PostgreSQL's `backup_manifest` so that `pg_verifybackup`
//! accepts the directory.
//!
//! Safety: nothing is written beside a live cluster (a postmaster of PGDATA or of a
//! tablespace target refuses the restore before any change); everything is created beneath
//! directory descriptors without following a link; every object is checked against its
//! size and SHA-256 before any byte of it is written. The copy's `global/pg_control` is
//! never written from the store (prepare installs the bundle's), so a directory whose
//! restore failed part-way cannot be started. A failed full restore removes what it wrote;
//! a failed `--delta` restore leaves the directory without pg_control (run it again).

use super::fetch::{self, Roots};
use super::format::{self, Entry, Index, Kind};
use super::{delta, manifest};
use crate::error::{io_err, Class, Error, Result};
use crate::fsutil::{Dir, Ownership};
use crate::restore::{self as prep, PrepareOptions};
use crate::store::{objects::Handle, Store};
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use super::fetch::CONTROL;

/// What `restore` is asked to do.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The prepare options; `pgdata`, `store`, `id`/`target` and `tablespaces` are also
    /// the restore's own.
    pub prepare: PrepareOptions,
    pub jobs: usize,
    pub delta: bool,
}

/// What `restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub store: String,
    pub pgdata: String,
    /// Where each tablespace was restored (OID → directory).
    pub tablespaces: BTreeMap<u32, String>,
    /// Files and bytes of the backup.
    pub files: u64,
    pub bytes: u64,
    pub objects_fetched: u64,
    pub bytes_fetched: u64,
    pub bytes_written: u64,
    /// `--delta` only: what was kept, rewritten and removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<delta::Counts>,
    pub seconds: f64,
    /// The `backup_manifest` written for `pg_verifybackup`.
    pub backup_manifest: String,
    /// The report of the `prepare` run on the result.
    pub prepare: prep::Report,
}

/// Restores, prepares and writes the manifest.
pub fn restore(opts: &RestoreOptions) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let pgdata = opts.prepare.pgdata.clone();
    let url = opts
        .prepare
        .store
        .clone()
        .or_else(|| opts.prepare.configured_stores.first().cloned())
        .ok_or_else(|| Error::usage("restore needs --store URL (or a configured store)"))?;
    let store = Store::parse(&url, &opts.prepare.s3)?;
    let handle = Handle::open(&store)?;
    let id = pick_id(opts, &store, &handle)?;
    let ix = read_index(&handle, &store, &id)?;
    let scratch = tempfile::Builder::new()
        .prefix("pgbookend-restore.")
        .tempdir()
        .map_err(|e| Error::env(format!("cannot create a scratch directory: {e}")))?;
    let bundle = bundle_manifest(&store, &id, scratch.path())?;
    let targets = tablespace_targets(&ix, &opts.prepare.tablespaces)?;
    refuse_unsafe(&pgdata, &targets, opts.delta)?;
    let parent = pgdata.parent().unwrap_or(Path::new("/"));
    let own = Ownership::of_dir(parent).map_err(|e| {
        e.hint(format!(
            "restore creates the data directory itself but not its parent: create {} (owned by the cluster's user, whose owner the restored files get)",
            parent.display()
        ))
    })?;
    let (roots, created) = open_roots(&pgdata, &targets, &own)?;
    let written = match write_copy(opts, &handle, &ix, &roots, &targets, &own) {
        Ok(w) => w,
        Err(e) if !opts.delta => return Err(undo(e, &roots, &created)),
        Err(e) => {
            return Err(e.hint(format!(
                "the directory {} has no pg_control and cannot start: run the same restore --delta again",
                pgdata.display()
            )))
        }
    };
    write_marker(&pgdata, &bundle, &url)?;
    let mut p = opts.prepare.clone();
    p.store = Some(url.clone());
    p.id = Some(id.clone());
    p.tablespaces = targets.iter().map(|(o, t)| (*o, t.clone())).collect();
    p.dry_run = false;
    let report = crate::restore::exec::prepare(&p)?;
    if !report.problems.is_empty() {
        return Err(prepare_refused(&report, &pgdata));
    }
    let mf = write_manifest(&roots.pgdata, &ix, &bundle, &own)?;
    Ok(RestoreReport {
        id,
        store: url,
        pgdata: pgdata.display().to_string(),
        tablespaces: targets
            .iter()
            .map(|(o, t)| (*o, t.display().to_string()))
            .collect(),
        files: ix.entries.iter().filter(|e| e.kind == Kind::File).count() as u64,
        bytes: ix.entries.iter().map(|e| e.size).sum(),
        objects_fetched: written.0.objects,
        bytes_fetched: written.0.stored_bytes,
        bytes_written: written.0.written_bytes,
        delta: written.1,
        seconds: t0.elapsed().as_secs_f64(),
        backup_manifest: mf.display().to_string(),
        prepare: report,
    })
}

/// The restored files (and, with `--delta`, what was kept and removed).
fn write_copy(
    opts: &RestoreOptions,
    handle: &Handle,
    ix: &Index,
    roots: &Roots,
    targets: &BTreeMap<u32, PathBuf>,
    own: &Ownership,
) -> Result<(fetch::Fetched, Option<delta::Counts>)> {
    let (rewrite, counts) = if opts.delta {
        let (r, c) = delta::plan(ix, roots, targets, opts.jobs)?;
        (r, Some(c))
    } else {
        (vec![true; ix.entries.len()], None)
    };
    let mut rewrite = rewrite;
    for (r, e) in rewrite.iter_mut().zip(&ix.entries) {
        *r &= e.path != CONTROL;
    }
    lay_out(ix, roots, targets, own, &rewrite)?;
    let wanted: Vec<usize> = ix
        .objects
        .iter()
        .enumerate()
        .filter(|(_, o)| o.pieces.iter().any(|p| rewrite[p.entry as usize]))
        .map(|(n, _)| n)
        .collect();
    let write = |e: u32| rewrite[e as usize];
    let fetched = fetch::fetch_all(handle, ix, roots, &wanted, &write, opts.jobs)?;
    finish(ix, roots, own, &rewrite, opts.jobs)?;
    Ok((fetched, counts))
}

/// The backup to restore: `--id`, or the newest built-in backup before `--target`.
fn pick_id(opts: &RestoreOptions, store: &Store, handle: &Handle) -> Result<String> {
    if let Some(id) = &opts.prepare.id {
        crate::id::validate(id)?;
        return Ok(id.clone());
    }
    let place = opts
        .prepare
        .target
        .as_deref()
        .and_then(prep::pitr::place)
        .ok_or_else(|| {
            Error::usage("restore needs --id ID, or --target latest|time=…|lsn=… to pick one")
        })?;
    let list = opts.prepare.list_bundles.ok_or_else(|| {
        Error::internal("restore --target without a way to list the store's bundles")
    })?;
    let mut bundles = list(store)?;
    bundles.retain(|m| {
        let dir = format!("{}/{}", format::DATA_DIR, m.id);
        let before = match &place {
            prep::pitr::Place::Latest => true,
            prep::pitr::Place::Time(t) => {
                crate::timefmt::parse_rfc3339(&m.stop_time).is_some_and(|s| s <= *t)
            }
            prep::pitr::Place::Lsn(l) => m
                .stop_lsn
                .parse()
                .is_ok_and(|s: pgbookend_formats::lsn::Lsn| s <= *l),
            prep::pitr::Place::Unplaced => false,
        };
        before
            && handle
                .list(&dir)
                .is_ok_and(|l| l.iter().any(|o| o.name == format::INDEX))
    });
    let sysids: std::collections::BTreeSet<&str> = bundles
        .iter()
        .map(|m| m.system_identifier.as_str())
        .collect();
    if sysids.len() > 1 {
        return Err(Error::usage(
            "the store holds built-in backups of several clusters: give --id ID",
        ));
    }
    bundles
        .iter()
        .max_by_key(|m| m.stop_lsn.parse().unwrap_or(pgbookend_formats::lsn::Lsn(0)))
        .map(|m| m.id.clone())
        .ok_or_else(|| {
            Error::usage(format!(
                "store {} holds no built-in backup that stops before the target {}",
                store.url(),
                opts.prepare.target.as_deref().unwrap_or("")
            ))
            .hint("list the store's backups with pgbookend list, and give --id ID")
        })
}

/// The index of built-in backup `id`, read bounded and checked; a bundle without one
/// was copied by a backup program.
fn read_index(handle: &Handle, store: &Store, id: &str) -> Result<Index> {
    let dir = format!("{}/{id}", format::DATA_DIR);
    match fetch::read_capped(handle, &dir, format::INDEX, format::MAX_INDEX_BYTES)? {
        Some(bytes) => Index::parse(&bytes, id),
        None if store.has_bundle(id) => Err(Error::new(
            Class::Usage,
            format!("backup {id} in {} is not a built-in backup (it has no {dir}/{}): its copy was made by another program", store.url(), format::INDEX),
        )
        .hint("restore its copy with your backup program, then run pgbookend prepare")),
        None => Err(Error::usage(format!(
            "store {} holds no backup {id}",
            store.url()
        ))
        .hint("list the store's backups with pgbookend list")),
    }
}

/// The bundle's manifest (checked as prepare checks it), for the WAL range.
fn bundle_manifest(
    store: &Store,
    id: &str,
    scratch: &Path,
) -> Result<crate::bundle::manifest::Manifest> {
    let dir = store.fetch_bundle(id, scratch)?;
    prep::load_bundle(&dir, Some(id), false)
        .map(|l| l.manifest)
        .map_err(|problems| {
            let list: Vec<String> = problems.into_iter().map(|p| p.message).collect();
            Error::new(
                Class::Check,
                format!("the bundle of {id} is not usable: {}", list.join("; ")),
            )
            .hint("restore another backup, or this one from another store")
        })
}

/// Where each tablespace of the backup goes: `--tablespace OID=PATH`, else where it was.
fn tablespace_targets(ix: &Index, remap: &[(u32, PathBuf)]) -> Result<BTreeMap<u32, PathBuf>> {
    let mut out = BTreeMap::new();
    for e in ix.entries.iter().filter(|e| e.kind == Kind::Link) {
        if let Some(oid) = fetch::tablespace_oid(&e.path) {
            let to = remap
                .iter()
                .find(|(o, _)| *o == oid)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| PathBuf::from(e.target.clone().unwrap_or_default()));
            out.insert(oid, to);
        }
    }
    let orphan = ix.entries.iter().find(|e| {
        fetch::tablespace_of(&e.path).is_some_and(|(o, _)| !out.contains_key(&o))
            || (e.kind != Kind::Link && fetch::tablespace_oid(&e.path).is_some())
    });
    if let Some(e) = orphan {
        return Err(Error::new(
            Class::Check,
            format!(
                "the index of {} is not valid: {:?} is not inside a tablespace link",
                ix.id, e.path
            ),
        )
        .hint("the stored backup is damaged or was altered; restore another backup"));
    }
    if let Some((o, _)) = remap.iter().find(|(o, _)| !out.contains_key(o)) {
        return Err(Error::usage(format!(
            "--tablespace {o}=…: the backup has no tablespace {o}"
        )));
    }
    Ok(out)
}

/// Refuses a PGDATA or tablespace target where a server runs, targets inside each other,
/// and (without `--delta`) targets that are not empty.
fn refuse_unsafe(pgdata: &Path, targets: &BTreeMap<u32, PathBuf>, delta: bool) -> Result<()> {
    let running = prep::safety::running_clusters();
    let mut all = vec![("--pgdata".to_string(), pgdata.to_path_buf())];
    for (o, t) in targets {
        all.push((format!("tablespace {o} at"), t.clone()));
    }
    let refuse = |m: String, h: &str| Err(Error::new(Class::Check, m).hint(h.to_string()));
    for (n, (what, p)) in all.iter().enumerate() {
        if !p.is_absolute() {
            return refuse(
                format!("{what} {}: not an absolute path", p.display()),
                "give absolute paths",
            );
        }
        let pid = prep::running_postmaster(p)
            .or_else(|| prep::safety::owner_of(p, &running).map(|r| r.pid));
        if let Some(pid) = pid {
            return refuse(
                format!("{what} {} belongs to a running server (postmaster pid {pid}): restore never writes beside a live cluster", p.display()),
                "stop that server, or restore into a new directory (--pgdata, --tablespace OID=PATH)",
            );
        }
        let others = all.iter().enumerate().filter(|(m, _)| *m != n);
        if let Some((_, (w2, q))) = others
            .clone()
            .find(|(_, (_, q))| prep::safety::overlaps(p, q))
        {
            return refuse(
                format!("{what} {} and {w2} {} overlap", p.display(), q.display()),
                "give separate directories, side by side",
            );
        }
        if !delta && has_entries(p) {
            return refuse(
                format!("{what} {} is not empty", p.display()),
                "give a new or empty directory, or --delta to re-seed an existing copy of this cluster",
            );
        }
        if let (true, Some(odd)) = (delta, not_a_copy(p, n == 0)) {
            return refuse(
                format!("{what} {}: --delta removes what the backup does not have, and this directory does not look like a copy of a cluster ({odd})", p.display()),
                "give --delta only a data directory (or tablespace directory) of this cluster, or restore into a new directory",
            );
        }
    }
    Ok(())
}

/// Why a non-empty directory is not a copy `--delta` may sweep (`None`: it is, or it is
/// empty): PGDATA must hold `PG_VERSION`; a tablespace directory only `PG_<major>_<catalog>`
/// directories. The tablespace targets may come from the stored index: this keeps an
/// altered index from aiming the sweep at any other directory.
fn not_a_copy(p: &Path, is_pgdata: bool) -> Option<String> {
    let names: Vec<String> = std::fs::read_dir(p)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return None;
    }
    if is_pgdata {
        let version = std::fs::symlink_metadata(p.join("PG_VERSION")).is_ok_and(|m| m.is_file());
        return (!version).then(|| "it has no PG_VERSION".to_string());
    }
    names
        .iter()
        .find(|n| !pgbookend_formats::version::is_tablespace_version_dir(n))
        .map(|n| format!("it holds {n:?}, not only PG_<major>_<catalog> directories"))
}

fn has_entries(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut r| r.next().is_some())
}

/// Opens (creating one level if missing) PGDATA and each tablespace target; returns the
/// roots and the directories this run created (removed again if the restore fails).
fn open_roots(
    pgdata: &Path,
    targets: &BTreeMap<u32, PathBuf>,
    own: &Ownership,
) -> Result<(Roots, Vec<PathBuf>)> {
    let mut created = Vec::new();
    let mut open = |p: &Path| -> Result<Dir> {
        if std::fs::symlink_metadata(p).is_err() {
            crate::fsutil::ensure_dir(p, own)?;
            created.push(p.to_path_buf());
        }
        let d = Dir::open(p).map_err(|e| {
            crate::fsutil::nofollow_err("cannot open directory", p, e)
                .hint("it must be a real directory, not a link")
        })?;
        d.set_owner_mode(own.uid, own.gid, 0o700)
            .map_err(|e| io_err("cannot change the owner or mode of", p, e))?;
        Ok(d)
    };
    let pg = open(pgdata)?;
    let mut ts = BTreeMap::new();
    for (o, t) in targets {
        ts.insert(*o, open(t)?);
    }
    Ok((
        Roots {
            pgdata: pg,
            tablespaces: ts,
        },
        created,
    ))
}

/// A failed full restore: removes what it wrote (the roots were new or empty before).
fn undo(e: Error, roots: &Roots, created: &[PathBuf]) -> Error {
    let mut clean = true;
    for d in std::iter::once(&roots.pgdata).chain(roots.tablespaces.values()) {
        for name in d.entries().unwrap_or_default() {
            clean &= d.remove_tree(&name).is_ok();
        }
    }
    for p in created.iter().rev() {
        clean &= std::fs::remove_dir(p).is_ok();
    }
    if clean {
        e.hint("restore removed everything it had written")
    } else {
        e.hint("restore could not remove everything it had written: remove the directories by hand")
    }
}

/// Directories, links and empty files of the entries to (re)write.
fn lay_out(
    ix: &Index,
    roots: &Roots,
    targets: &BTreeMap<u32, PathBuf>,
    own: &Ownership,
    rewrite: &[bool],
) -> Result<()> {
    for (n, e) in ix.entries.iter().enumerate() {
        let full = fetch::display(roots, &e.path);
        let made = match (e.kind, fetch::tablespace_oid(&e.path)) {
            (Kind::Link, Some(oid)) if rewrite[n] => {
                let (parent, name) = parent_of(&roots.pgdata, &e.path)?;
                let to = targets.get(&oid).cloned().unwrap_or_default();
                parent
                    .symlink(name, &to)
                    .and_then(|()| parent.chown_entry(name, own.uid, own.gid))
            }
            (Kind::Dir, _) | (Kind::Link, None) => {
                let Some((root, rel)) = roots.locate(&e.path) else {
                    continue;
                };
                let (parent, name) = parent_of(root, rel)?;
                match parent.mkdir(name, 0o700) {
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        parent.open_dir(name).map(|_| ())
                    }
                    r => r,
                }
            }
            (Kind::File, _) if rewrite[n] && e.path != CONTROL => {
                let Some((root, rel)) = roots.locate(&e.path) else {
                    continue;
                };
                let (parent, name) = parent_of(root, rel)?;
                parent
                    .create_file(name, 0o600)
                    .and_then(|f| f.set_len(e.size))
            }
            _ => Ok(()),
        };
        made.map_err(|err| crate::fsutil::nofollow_err("cannot create", &full, err))?;
    }
    Ok(())
}

/// The parent directory of `rel` below `root`, opened without following links, and the
/// last component.
fn parent_of<'a>(root: &Dir, rel: &'a str) -> Result<(Dir, &'a str)> {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let d = root
        .open_beneath(Path::new(dir))
        .map_err(|e| crate::fsutil::nofollow_err("cannot open", &root.display_path(dir), e))?;
    Ok((d, name))
}

/// Threads that fsync the restored files at the end: an fsync waits for the disk, not
/// for a CPU, and the filesystem commits concurrent fsyncs together.
const SYNC_THREADS: usize = 8;

/// Owner, mode, modification time and fsync of every written file (and of a file
/// `--delta` kept whose owner, mode or time differ), then of every directory (deepest
/// first), then of the roots.
fn finish(ix: &Index, roots: &Roots, own: &Ownership, rewrite: &[bool], jobs: usize) -> Result<()> {
    let files: Vec<(&Entry, bool)> = ix
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::File && e.path != CONTROL)
        .map(|(n, e)| (e, rewrite[n]))
        .collect();
    fetch::par_each(files.len(), jobs.max(SYNC_THREADS), &|n| {
        let (e, written) = files[n];
        let full = fetch::display(roots, &e.path);
        let Some((root, rel)) = roots.locate(&e.path) else {
            return Ok(());
        };
        let f = fetch::open_write(root, rel).map_err(|err| io_err("cannot open", &full, err))?;
        let mode = e.mode & 0o640 | 0o600;
        if !written && settled(&f, own, mode, e.mtime) {
            return Ok(());
        }
        settle(f.as_raw_fd(), own, mode, e.mtime)
            .and_then(|()| f.sync_all())
            .map_err(|err| io_err("cannot finish", &full, err))
    })?;
    for e in ix.entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        let Some((root, rel)) = roots.locate(&e.path) else {
            continue;
        };
        let full = root.display_path(rel);
        let d = root
            .open_beneath(Path::new(rel))
            .map_err(|err| crate::fsutil::nofollow_err("cannot open", &full, err))?;
        settle(d.as_raw_fd(), own, e.mode & 0o750 | 0o700, e.mtime)
            .and_then(|()| d.sync())
            .map_err(|err| io_err("cannot finish", &full, err))?;
    }
    for d in std::iter::once(&roots.pgdata).chain(roots.tablespaces.values()) {
        d.sync()
            .map_err(|err| io_err("cannot fsync", d.path(), err))?;
    }
    Ok(())
}

/// Whether a kept file already has the owner, mode and modification time it would get.
fn settled(f: &std::fs::File, own: &Ownership, mode: u32, mtime: i64) -> bool {
    use std::os::unix::fs::MetadataExt;
    f.metadata().is_ok_and(|m| {
        m.uid() == own.uid && m.gid() == own.gid && m.mode() & 0o7777 == mode && m.mtime() == mtime
    })
}

/// Owner, mode and times through a descriptor.
fn settle(fd: i32, own: &Ownership, mode: u32, mtime: i64) -> std::io::Result<()> {
    crate::fsutil::set_owner_mode(fd, own.uid, own.gid, mode)?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: futimens on a descriptor we hold, with two valid timespecs.
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The marker of the backup in the restored PGDATA, from its bundle: every file came
/// from this backup's own stored copy, which is what the marker says of a copy (the
/// copy leaves marker directories out, as a base backup does).
fn write_marker(pgdata: &Path, m: &crate::bundle::manifest::Manifest, url: &str) -> Result<()> {
    let mk = crate::agent::marker::Marker {
        format: 1,
        id: m.id.clone(),
        system_identifier: m.system_identifier.clone(),
        pg_version_num: m.pg_version_num,
        start_lsn: m.start_lsn.clone(),
        start_wal_file: m.start_wal_file.clone(),
        timeline: m.timeline,
        start_time: m.start_time.clone(),
        host: m.host.clone(),
        pgdata: m.pgdata.clone(),
        tool: m.tool.clone(),
        tool_version: m.tool_version.clone(),
        stores: vec![url.to_string()],
        run_dir: String::new(),
        agent_pid: 0,
        token: hex::encode(crate::fsutil::random_bytes::<16>()),
    };
    crate::agent::marker::write(pgdata, &mk)
}

/// Prepare refused the restored directory: it stays without pg_control (cannot start).
fn prepare_refused(r: &prep::Report, pgdata: &Path) -> Error {
    let list: Vec<String> = r
        .problems
        .iter()
        .map(|p| format!("{} ({})", p.message, p.hint))
        .collect();
    Error::new(
        Class::Check,
        format!(
            "the files were restored into {} but prepare refused them: {}",
            pgdata.display(),
            list.join("; ")
        ),
    )
    .hint("the directory has no pg_control and cannot start; fix the cause and run the same restore with --delta")
}

/// Writes `backup_manifest` into PGDATA: the backup's files from the index, and the
/// files prepare wrote (backup_label, tablespace_map, pg_control) hashed from disk.
fn write_manifest(
    pgdata: &Dir,
    ix: &Index,
    bundle: &crate::bundle::manifest::Manifest,
    own: &Ownership,
) -> Result<PathBuf> {
    const FROM_DISK: [&str; 4] = [
        "backup_label",
        "tablespace_map",
        CONTROL,
        "postgresql.auto.conf",
    ];
    let mut files: Vec<manifest::ManifestFile> = ix
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && !FROM_DISK.contains(&e.path.as_str()))
        .map(|e| manifest::ManifestFile {
            path: e.path.clone().into_bytes(),
            size: e.size,
            mtime: e.mtime,
            sha256: e.sha256.clone().unwrap_or_default(),
        })
        .collect();
    for name in FROM_DISK {
        let path = pgdata.display_path(name);
        let f = match pgdata.open_file_beneath(Path::new(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(crate::fsutil::nofollow_err("cannot open", &path, e)),
        };
        let (size, sha256) = delta::hash_file(f).map_err(|e| io_err("cannot read", &path, e))?;
        let mtime = std::fs::symlink_metadata(&path)
            .map(|m| std::os::unix::fs::MetadataExt::mtime(&m))
            .unwrap_or(0);
        files.push(manifest::ManifestFile {
            path: name.as_bytes().to_vec(),
            size,
            mtime,
            sha256,
        });
    }
    let lsn = |s: &str| {
        s.parse::<pgbookend_formats::lsn::Lsn>()
            .map(|l| l.0)
            .map_err(|_| Error::internal(format!("bad LSN {s:?} in the bundle")))
    };
    let wal = manifest::WalRange {
        timeline: bundle.timeline,
        start: lsn(&bundle.start_lsn)?,
        end: lsn(&bundle.stop_lsn)?,
    };
    let bytes = manifest::render(&files, &[wal]);
    let path = pgdata.path().join(format::BACKUP_MANIFEST);
    crate::fsutil::write_atomic(&path, &bytes, own)?;
    Ok(path)
}
