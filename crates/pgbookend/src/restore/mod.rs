//! `prepare` and `verify`: from a restored copy plus its bundle to a data directory that
//! recovers correctly, or a refusal that says why and changes nothing.
//!
//! Both run the same checks (invariant 5); `prepare` then carries out a plan of actions
//! that it can also print (`--dry-run`). Every file written into the data directory gets
//! the directory's owner and modes (invariant 7), and the bundle's `pg_control` goes in
//! last, with its checkpoint made invalid so that a later deletion of `backup_label`
//! makes the server refuse to start instead of recovering wrongly (invariant 6).
//!
//! The room of everything that turns a copy plus a bundle into a data directory: the
//! checks (here and `safety`), the plan's execution (`exec`) and its journal (`journal`),
//! and `guard`, which refuses a server start on a copy that is not prepared.

pub mod exec;
pub mod guard;
pub mod journal;
pub mod pitr;
pub mod safety;

use crate::agent::marker;
use crate::bundle::manifest::{self, Manifest, WalMode};
use crate::bundle::read;
use crate::bundle::walcollect;
use crate::error::{Error, Result};
use crate::fsutil::Ownership;
use crate::problem::{problem, Problem};
use crate::store::Store;
use pgbookend_formats::walname::{self, WalName};
use pgbookend_formats::{
    control, label::BackupLabel, lsn::Lsn, tablespace_map::TablespaceMap, wal,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The options of `prepare` (and of `verify --pgdata`).
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    pub pgdata: PathBuf,
    pub store: Option<String>,
    /// The configured stores (resolved at the CLI edge), tried when `store` is not given.
    pub configured_stores: Vec<String>,
    pub bundle: Option<PathBuf>,
    pub id: Option<String>,
    pub target: Option<String>,
    pub target_action: Option<String>,
    pub archive: Option<PathBuf>,
    pub restore_command: Option<String>,
    pub standby: bool,
    pub primary_conninfo: Option<String>,
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// Where the restored server keeps its WAL when the copy's pg_wal is a link
    /// (`--waldir`): pg_wal becomes a link to it.
    pub waldir: Option<PathBuf>,
    /// Set by `prepare` when the copy holds its journal: an earlier run began moving
    /// tablespace files, so a remap target may already hold some of them.
    pub resuming: bool,
    pub dry_run: bool,
    /// How much of the copy's pages to judge before anything changes (`--no-check-pages`,
    /// `--check-pages=sample:N%`; default: every page).
    pub check_pages: crate::verify::PageCheckMode,
    /// How `--target` finds the store's bundles to pick among (`None`: it picks none).
    pub list_bundles: Option<pitr::BundleLister>,
    /// The settings of S3 stores (flags, then the config file).
    pub s3: crate::store::s3::Settings,
}

/// A bundle read from disk, checked against its own manifest.
pub struct Loaded {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub label: Option<BackupLabel>,
    pub label_text: String,
    pub map_text: Option<String>,
    pub control_bytes: Vec<u8>,
    pub control: Option<control::ControlFile>,
}

/// Reads a bundle directory and checks it on its own: every field of `bundle.json` that
/// becomes a path, a command or an allocation is validated first (nothing else is read
/// before), then every file's size and SHA-256, the label parses and agrees with
/// `bundle.json`, `pg_control` is CRC-valid and of the same cluster, and the WAL range is
/// contiguous and (in `collect` mode) complete and intact. `deep` also decompresses every
/// WAL file, in pieces and capped at its segment size, to check its own checksum.
pub fn load_bundle(
    dir: &Path,
    id: Option<&str>,
    deep: bool,
) -> std::result::Result<Loaded, Vec<Problem>> {
    let manifest = read_manifest(dir)?;
    let mut problems = crate::bundle::check::manifest_problems(&manifest);
    if let Some(id) = id {
        if manifest.id != id {
            problems.push(problem(
                "bundle_id",
                format!(
                    "the bundle in {} is of backup {:?} (bundle.json field id), not {id}",
                    dir.display(),
                    manifest.id
                ),
                "give the bundle of the backup the copy was taken in",
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    for (name, entry) in &manifest.files {
        match read::matches(dir, name, entry.size, &entry.sha256) {
            Ok(true) => {}
            Ok(false) => problems.push(problem(
                "bundle_checksum",
                format!("bundle file {name} does not match its size and SHA-256 in bundle.json"),
                "the bundle is damaged; use another copy of it (another store)",
            )),
            Err(e) => problems.push(problem(
                "bundle_file",
                format!("bundle file {name} cannot be read: {e}"),
                "the bundle is incomplete; restore all of it",
            )),
        }
    }
    let read_text = |name: &str| {
        read::read_capped(dir, name, read::MAX_TEXT_BYTES)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let label_text = read_text("backup_label").unwrap_or_default();
    let label = check_label(&label_text, &manifest, &mut problems);
    let map_text = read_text("tablespace_map");
    problems.extend(crate::bundle::check::map_problem(
        map_text.as_deref(),
        &manifest,
    ));
    let control_bytes =
        read::read_capped(dir, "pg_control", read::MAX_CONTROL_BYTES).unwrap_or_default();
    let control = check_control(&control_bytes, &manifest, &mut problems);
    problems.extend(wal_range_problems(&manifest));
    if deep {
        problems.extend(bundle_wal_problems(dir, &manifest));
    }
    if problems.is_empty() {
        Ok(Loaded {
            dir: dir.to_path_buf(),
            manifest,
            label,
            label_text,
            map_text,
            control_bytes,
            control,
        })
    } else {
        Err(problems)
    }
}

/// `bundle.json`, read without following a link and only up to its size cap.
fn read_manifest(dir: &Path) -> std::result::Result<Manifest, Vec<Problem>> {
    let mpath = dir.join(manifest::MANIFEST);
    let bytes =
        read::read_capped(dir, manifest::MANIFEST, read::MAX_MANIFEST_BYTES)
            .map_err(|e| {
                vec![problem(
                "bundle_manifest",
                format!("cannot read {}: {e}", mpath.display()),
                "a bundle without bundle.json is partial: its stop did not finish; use another backup",
            )]
            })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        vec![problem(
            "bundle_manifest",
            format!("{} is not a valid bundle manifest: {e}", mpath.display()),
            "the bundle is damaged; use another copy of it (another store)",
        )]
    })
}

/// The bundle's `backup_label`, parsed and compared with `bundle.json`.
fn check_label(text: &str, m: &Manifest, problems: &mut Vec<Problem>) -> Option<BackupLabel> {
    match BackupLabel::parse(text) {
        Ok(l) => {
            if l.label != m.id {
                problems.push(problem(
                    "bundle_label",
                    format!(
                        "backup_label names backup {:?}, bundle.json {}",
                        l.label, m.id
                    ),
                    "the bundle mixes files of two backups; use another copy of it",
                ));
            }
            if l.start_wal_location.to_string() != m.start_lsn
                || l.checkpoint_location.to_string() != m.checkpoint_lsn
            {
                problems.push(problem(
                    "bundle_label",
                    "backup_label and bundle.json disagree on the start or checkpoint LSN",
                    "the bundle is damaged; use another copy of it",
                ));
            }
            Some(l)
        }
        Err(e) => {
            problems.push(problem(
                "bundle_label",
                format!("the bundle's backup_label does not parse: {e}"),
                "the bundle is damaged; use another copy of it",
            ));
            None
        }
    }
}

/// The bundle's `pg_control`, parsed and compared with `bundle.json`.
fn check_control(
    bytes: &[u8],
    m: &Manifest,
    problems: &mut Vec<Problem>,
) -> Option<control::ControlFile> {
    match control::parse(bytes) {
        Ok(c) => {
            if c.system_identifier.to_string() != m.system_identifier {
                problems.push(problem(
                    "bundle_control",
                    "the bundle's pg_control is of another cluster than bundle.json says",
                    "the bundle is damaged; use another copy of it",
                ));
            }
            Some(c)
        }
        Err(e) => {
            problems.push(problem(
                "bundle_control",
                format!("the bundle's pg_control is not valid: {e}"),
                "the bundle is damaged; use another copy of it",
            ));
            None
        }
    }
}

/// Decompresses every stored WAL file in pieces (never beyond a segment's size, nor 1
/// GiB) and compares its size and SHA-256 with `bundle.json`.
fn bundle_wal_problems(dir: &Path, m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    let limit = u64::from(m.wal_segment_size).min(wal::MAX_SEG_SIZE.into());
    for w in &m.wal {
        let (Some(stored), Some(sum)) = (&w.stored, &w.sha256) else {
            continue;
        };
        let why = match read::wal_digest(dir, stored, limit) {
            Ok((n, s)) if w.size.is_none_or(|z| z == n) && s == *sum => continue,
            Ok(_) => "does not decompress to its recorded size and SHA-256".to_string(),
            Err(e) => format!("cannot be decompressed: {e}"),
        };
        out.push(problem(
            "bundle_wal",
            format!("WAL file {} in the bundle {why}", w.name),
            "the bundle is damaged; use another copy of it",
        ));
    }
    out
}

/// The WAL list must run without gaps from `start_wal_file` to `stop_wal_file` (a range
/// of at most `MAX_RANGE_SEGMENTS`, walked lazily); in `collect` mode every file must be
/// stored in the bundle. Names were validated by `bundle_check`.
fn wal_range_problems(m: &Manifest) -> Vec<Problem> {
    let mut out = Vec::new();
    let seg = m.wal_segment_size;
    let parse = |n: &str| WalName::parse(n).ok().and_then(|w| w.segno(seg));
    let last_file = m.last_wal_file();
    let range = match (parse(&m.start_wal_file), parse(&last_file)) {
        (Some(first), Some(last)) => walname::bounded_segnos(first, last, walname::MAX_RANGE_SEGMENTS)
            .map_err(|e| format!("bundle.json fields start_wal_file {} .. stop_wal_file {}: {e}", m.start_wal_file, last_file)),
        _ => Err("bundle.json's start_wal_file or stop_wal_file is not a WAL segment name for its wal_segment_size".to_string()),
    };
    match range {
        Ok(want) => {
            let count = want.end() - want.start() + 1;
            let have = m
                .wal
                .iter()
                .filter(|w| !w.name.ends_with(".history"))
                .map(|w| parse(&w.name));
            let tli = |n: &str| WalName::parse(n).ok().map(|w| w.timeline());
            let (first_tli, last_tli) = (tli(&m.start_wal_file), tli(&last_file));
            // Timelines only go up along the window, from the start file's to the last's.
            let mut at = first_tli;
            let timelines_ok = m
                .wal
                .iter()
                .filter(|w| !w.name.ends_with(".history"))
                .all(|w| {
                    let t = tli(&w.name);
                    let ok = t >= at && t <= last_tli;
                    at = t;
                    ok
                });
            if !timelines_ok {
                out.push(problem(
                    "bundle_wal_range",
                    format!(
                        "bundle.json lists WAL segments on timelines outside {} .. {}",
                        m.start_wal_file, last_file
                    ),
                    "the bundle is damaged or altered; use another copy of it",
                ));
            }
            if !have.eq(want.map(Some)) {
                out.push(problem(
                    "bundle_wal_range",
                    format!(
                        "bundle.json lists WAL segments that are not the {count} contiguous ones {} .. {} needs",
                        m.start_wal_file, last_file
                    ),
                    "the bundle is damaged; use another copy of it",
                ));
            }
        }
        Err(msg) => out.push(problem(
            "bundle_wal_range",
            msg,
            "the bundle is damaged or altered; use another copy of it",
        )),
    }
    if m.mode() == Some(WalMode::Collect) {
        for w in &m.wal {
            match &w.stored {
                Some(s) if m.files.contains_key(s) => {}
                _ => out.push(problem(
                    "bundle_wal",
                    format!("WAL file {} is not stored in the bundle", w.name),
                    "the bundle is incomplete; restore all of it",
                )),
            }
        }
    }
    out
}

/// Which backup a copy belongs to: `--id`, else its only marker, else (for a copy that
/// was prepared before) the label it holds.
fn identify(
    pgdata: &Path,
    id: Option<&str>,
) -> std::result::Result<(String, Option<marker::Marker>), Problem> {
    let (markers, foreign): (Vec<_>, Vec<_>) =
        marker::list(pgdata).into_iter().partition(|m| m.is_ok());
    let markers: Vec<marker::Marker> = markers.into_iter().filter_map(|m| m.ok()).collect();
    let foreign: Vec<(String, String)> = foreign.into_iter().filter_map(|m| m.err()).collect();
    let wanted = |m: &&marker::Marker| id.is_none_or(|id| m.id == id);
    if !foreign.is_empty() && !markers.iter().any(|m| wanted(&m)) {
        return Err(foreign_marker_problem(&foreign));
    }
    if let Some(id) = id {
        if let Some(m) = markers.iter().find(|m| m.id == id) {
            return Ok((id.to_string(), Some(m.clone())));
        }
        if prepared_label(pgdata).as_deref() == Some(id) {
            return Ok((id.to_string(), None));
        }
        let found: Vec<&str> = markers.iter().map(|m| m.id.as_str()).collect();
        return Err(problem(
            "copy_marker",
            format!(
                "the copy in {} has no marker of backup {id} (markers found: {})",
                pgdata.display(),
                if found.is_empty() { "none".to_string() } else { found.join(", ") }
            ),
            "this copy was not taken during that backup: pair it with the bundle of the backup it names",
        ));
    }
    match markers.len() {
        1 => Ok((markers[0].id.clone(), Some(markers[0].clone()))),
        0 => match prepared_label(pgdata) {
            Some(id) => Ok((id, None)),
            None => Err(problem(
                "copy_marker",
                format!("the copy in {} carries no pgbookend marker (pg_backup_metadata/)", pgdata.display()),
                "it was not taken between pgbookend start and stop, or the copy left the marker out; such a copy cannot be restored safely",
            )),
        },
        _ => Err(problem(
            "copy_marker",
            format!(
                "the copy carries markers of several backups: {}",
                markers.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
            "pass --id with the backup whose bundle you have",
        )),
    }
}

/// A copy whose only markers cannot be trusted (an `id` that is not its directory's
/// name, a bad token, an oversized or unreadable file): refused, naming each.
fn foreign_marker_problem(foreign: &[(String, String)]) -> Problem {
    let list: Vec<String> = foreign
        .iter()
        .map(|(name, why)| format!("pg_backup_metadata/{name}: {why}"))
        .collect();
    problem(
        "copy_marker",
        format!("the copy's marker cannot be trusted: {}", list.join("; ")),
        "the copy's marker was altered or damaged: do not trust this copy; if you know which backup it is, pass --id ID with --bundle DIR or --store URL",
    )
}

/// The label of a directory that `prepare` already prepared (re-running is allowed).
fn prepared_label(pgdata: &Path) -> Option<String> {
    let text = fs::read_to_string(pgdata.join("backup_label")).ok()?;
    let l = BackupLabel::parse(&text).ok()?;
    let ctl = control::parse(&fs::read(pgdata.join("global/pg_control")).ok()?).ok()?;
    ctl.is_checkpoint_invalidated().then_some(l.label)
}

/// True if `postmaster.pid` names a live postmaster of this very directory.
pub fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let dir = lines.next()?.trim().to_string();
    // SAFETY: signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !alive {
        return None;
    }
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmd);
    let same_dir = fs::canonicalize(&dir).ok() == fs::canonicalize(pgdata).ok();
    (same_dir && (cmd.contains("postgres") || cmd.contains("postmaster"))).then_some(pid)
}

/// Where the bundle of `id` is: `--bundle`, `--store`, or the stores the marker names.
/// The ID (which may come from the copy's marker) must be a valid backup ID before it
/// becomes part of a path or a key.
fn locate_bundle(
    opts: &PrepareOptions,
    id: &str,
    m: Option<&marker::Marker>,
    scratch: &Path,
) -> std::result::Result<PathBuf, Problem> {
    if let Err(e) = crate::id::validate(id) {
        let from = if opts.id.is_some() {
            "--id"
        } else {
            "the copy's marker (field id)"
        };
        return Err(problem(
            "copy_marker",
            format!("{from}: {}", e.message),
            "the copy's marker was altered: do not trust this copy; pass --id with the backup ID you expect and --bundle DIR",
        ));
    }
    if let Some(b) = &opts.bundle {
        return Ok(b.clone());
    }
    // The copy's marker is hostile: the stores it names are never fetched from (a forged
    // marker could point at a forged bundle). Only the operator's --store or configured
    // stores are; the marker's stores only appear in the hint.
    let candidates: Vec<String> = match &opts.store {
        Some(s) => vec![s.clone()],
        None => opts.configured_stores.clone(),
    };
    if candidates.is_empty() {
        let named = m.map(|m| m.stores.join(", ")).unwrap_or_default();
        let hint = if named.is_empty() {
            "pass --store URL (where stop wrote the bundle) or --bundle DIR (a restored bundle directory)".to_string()
        } else {
            format!("pass --store URL (the copy's marker says the bundle was written to: {named}; pass it if you trust it) or --bundle DIR")
        };
        return Err(problem(
            "bundle_location",
            format!("no store or bundle given for backup {id}"),
            hint,
        ));
    }
    let mut last = String::new();
    for c in candidates.iter().take(16) {
        match Store::parse(c, &opts.s3).and_then(|s| s.fetch_bundle(id, scratch)) {
            Ok(dir) => return Ok(dir),
            Err(e) => last = e.message,
        }
    }
    Err(problem(
        "bundle_location",
        last,
        "pass --store URL or --bundle DIR where the bundle of this backup is",
    ))
}

/// How the WAL from start to stop will be found at recovery, and whether it is there.
#[derive(Debug, Clone)]
enum WalSource {
    /// Decompressed from the bundle into pg_wal.
    Bundle,
    /// From an archive directory through a generated restore_command.
    Archive(PathBuf),
    /// Through the user's restore_command.
    Command(String),
    /// From the store's WAL archive through `pgbookend archive-get` (checked by listing).
    Store(String),
}

/// The point-in-time restore from the store's archive, when `--target` asks for one and
/// the store holds this cluster's WAL; its problems go into the report.
fn store_pitr(
    opts: &PrepareOptions,
    m: &Manifest,
    report: &mut Report,
) -> Option<pitr::PitrReport> {
    let url = pitr::store_url(opts)?;
    let target = opts.target.as_deref().unwrap_or_default();
    match pitr::examine(
        &url,
        &opts.s3,
        target,
        m,
        opts.list_bundles,
        &mut report.warnings,
    ) {
        Ok(p) => {
            report.pitr = p.clone();
            p
        }
        Err(p) => {
            report.problems.push(p);
            None
        }
    }
}

/// A restore_command that copies from `dir`, also the compressed forms archivers write.
/// The directory is quoted for the shell; `%f` and `%p` are filled in by the server.
fn archive_restore_command(dir: &Path) -> String {
    let d = crate::shellword::quote(&dir.display().to_string());
    format!(
        "f={d}/%f; if [ -f \"$f\" ]; then cp \"$f\" \"%p\"; elif [ -f \"$f.zst\" ]; then zstd -dqf \"$f.zst\" -o \"%p\"; elif [ -f \"$f.gz\" ]; then gzip -dc \"$f.gz\" > \"%p\"; elif [ -f \"$f.lz4\" ]; then lz4 -dqf \"$f.lz4\" \"%p\"; else exit 1; fi"
    )
}

/// The restore_command of a bundle whose WAL is in pgbookend's store archive:
/// `pgbookend archive-get %f %p --store URL...` (this binary, every value quoted; the
/// URLs were checked by `bundle_check`), with this run's S3 endpoint settings `s3`.
fn archive_get_command(stores: &[String], s3: &crate::store::s3::Settings) -> Option<String> {
    let q = |s: &str| crate::shellword::quote(s);
    let exe = std::env::current_exe().ok()?;
    let mut cmd = format!("{} archive-get %f %p", q(&exe.display().to_string()));
    for u in stores {
        cmd.push_str(&format!(" --store {}", q(u)));
    }
    if stores.iter().any(|u| u.starts_with("s3://")) {
        if let Some(e) = &s3.endpoint {
            cmd.push_str(&format!(" --s3-endpoint {}", q(e)));
        }
        if let Some(r) = &s3.region {
            cmd.push_str(&format!(" --s3-region {}", q(r)));
        }
        if s3.path_style == Some(true) {
            cmd.push_str(" --s3-path-style");
        }
    }
    Some(cmd)
}

/// Runs a restore_command for one file the way the server will: with its working
/// directory a data directory (here a scratch one that holds only the bundle's
/// `pg_control`, which commands such as `pgbookend archive-get` read) and `%p` the relative
/// `pg_wal/RECOVERYXLOG`. The only honest test that recovery will be able to fetch it.
/// Only a checked WAL name is substituted, and every substituted value is quoted.
fn try_restore_command(cmd: &str, name: &str, scratch: &Path, control: &[u8]) -> bool {
    let Ok(name) = WalName::parse(name) else {
        return false;
    };
    let dir = scratch.join("try-pgdata");
    let made = fs::create_dir_all(dir.join("pg_wal"))
        .and_then(|_| fs::create_dir_all(dir.join("global")))
        .and_then(|_| fs::write(dir.join("global/pg_control"), control));
    if made.is_err() {
        return false;
    }
    let rel = "pg_wal/RECOVERYXLOG";
    let dest = dir.join(rel);
    let c = crate::shellword::substitute(cmd, name.as_str(), rel, "000000010000000000000001");
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(&c)
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && fs::symlink_metadata(&dest).is_ok_and(|m| m.is_file());
    let _ = fs::remove_dir_all(&dir);
    ok
}

/// One step of the plan.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Remove {
        path: String,
        why: String,
    },
    ClearDir {
        path: String,
        why: String,
    },
    MoveTablespace {
        oid: u32,
        from: String,
        to: String,
    },
    LinkTablespace {
        oid: u32,
        to: String,
    },
    /// Replaces the copy's pg_wal by a link to `--waldir`.
    LinkWal {
        to: String,
    },
    /// Replaces a link in the copy by an empty directory (never following it).
    ReplaceLink {
        path: String,
        why: String,
    },
    WriteFile {
        path: String,
        what: String,
    },
    WriteWal {
        path: String,
        from: String,
    },
    SetRecovery {
        settings: BTreeMap<String, String>,
    },
    InstallControl {
        path: String,
        what: String,
    },
}

impl Action {
    pub(crate) fn describe(&self) -> String {
        match self {
            Action::Remove { path, why } => format!("remove {path} ({why})"),
            Action::ClearDir { path, why } => format!("empty {path} ({why})"),
            Action::MoveTablespace { oid, from, to } => {
                format!("move tablespace {oid} from {from} to {to}")
            }
            Action::LinkTablespace { oid, to } => format!("link pg_tblspc/{oid} to {to}"),
            Action::LinkWal { to } => format!("link pg_wal to {to}"),
            Action::ReplaceLink { path, why } => {
                format!("replace the link {path} by an empty directory ({why})")
            }
            Action::WriteFile { path, what } => format!("write {path} ({what})"),
            Action::WriteWal { path, from } => format!("write {path} (from {from})"),
            Action::SetRecovery { settings } => format!(
                "set in postgresql.auto.conf: {}",
                settings
                    .iter()
                    .map(|(k, v)| format!("{k} = '{v}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::InstallControl { path, what } => format!("install {path} ({what})"),
        }
    }
}

/// Everything `prepare` found and would do.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub id: Option<String>,
    pub pgdata: String,
    pub bundle: Option<String>,
    pub problems: Vec<Problem>,
    /// Things that are not wrong but deserve a look (e.g. a tablespace left at its
    /// original location).
    pub warnings: Vec<String>,
    pub actions: Vec<Action>,
    pub start_command: Option<String>,
    pub recovery: Option<String>,
    pub dry_run: bool,
    pub done: bool,
    /// The page check of the copy (`None`: not run).
    pub pages: Option<crate::verify::report::PageReport>,
    /// A point-in-time restore from the store's archive (`None`: not one).
    pub pitr: Option<pitr::PitrReport>,
}

impl Report {
    fn new(id: Option<String>, pgdata: &Path, dry_run: bool) -> Report {
        Report {
            id,
            pgdata: pgdata.display().to_string(),
            bundle: None,
            problems: Vec::new(),
            warnings: Vec::new(),
            actions: Vec::new(),
            start_command: None,
            recovery: None,
            dry_run,
            done: false,
            pages: None,
            pitr: None,
        }
    }
}

/// The tablespace location of `oid` after the remaps: where its files are expected.
fn tablespace_location(pgdata: &Path, oid: u32, remap: &BTreeMap<u32, PathBuf>) -> PathBuf {
    remap
        .get(&oid)
        .cloned()
        .unwrap_or_else(|| pgdata.join("pg_tblspc").join(oid.to_string()))
}

/// Files of the bundle's list that the copy lacks (at most `limit` named) and their count.
fn missing_files(
    pgdata: &Path,
    list: &Path,
    remap: &BTreeMap<u32, PathBuf>,
    limit: usize,
) -> Result<(u64, Vec<String>)> {
    let mut count = 0u64;
    let mut named = Vec::new();
    for p in crate::bundle::filelist::read(list)? {
        let p = p?;
        if p == "global/pg_control" {
            continue; // replaced by the bundle's
        }
        let full = match p.strip_prefix("pg_tblspc/").and_then(|r| r.split_once('/')) {
            Some((oid, rest)) => match oid.parse::<u32>() {
                Ok(o) => tablespace_location(pgdata, o, remap).join(rest),
                Err(_) => pgdata.join(&p),
            },
            None => pgdata.join(&p),
        };
        if fs::symlink_metadata(&full).is_err() {
            count += 1;
            if named.len() < limit {
                named.push(p);
            }
        }
    }
    Ok((count, named))
}

/// Runs every check of `prepare` and builds its plan; changes nothing.
pub fn examine(
    opts: &PrepareOptions,
    scratch: &Path,
    deep: bool,
) -> (Report, Option<(Loaded, PlanExtra)>) {
    let pgdata = &opts.pgdata;
    let mut report = Report::new(None, pgdata, opts.dry_run);
    let Some((mk, loaded)) = open_pair(opts, scratch, deep, &mut report) else {
        return (report, None);
    };
    let m = &loaded.manifest;
    let label = loaded.label.clone().expect("checked by load_bundle");
    let copy_control_note = check_copy_control(pgdata, mk.as_ref(), m, &label, &mut report);

    // Tablespaces: the map, remaps, and where the files are.
    let remap: BTreeMap<u32, PathBuf> = opts.tablespaces.iter().cloned().collect();
    let map = read_map(&loaded, &mut report);
    let known: Vec<u32> = map
        .as_ref()
        .map(|mp| mp.entries.iter().map(|e| e.0).collect())
        .unwrap_or_default();
    check_remaps(&remap, &known, &mut report);
    check_file_list(pgdata, &loaded, &known, &remap, &mut report);

    // The WAL from start to stop must be reachable.
    let pitr = store_pitr(opts, m, &mut report);
    let archive = opts.archive.clone().or_else(|| {
        m.archive_dir
            .as_ref()
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
    });
    let source = wal_source(opts, m, pitr.as_ref(), archive.as_ref());
    check_wal_source(source.as_ref(), &loaded, scratch, &mut report);
    let pitr_cmd = pitr.as_ref().map(|p| p.restore_command.clone());
    let target = match parse_target(opts, source.as_ref(), archive.as_deref(), pitr_cmd, m) {
        Ok(t) => t,
        Err(p) => {
            report.problems.push(p);
            BTreeMap::new()
        }
    };
    let layout = crate::restore::safety::LayoutInput {
        pgdata,
        waldir: opts.waldir.as_deref(),
        remap: &remap,
        tablespaces: map
            .as_ref()
            .map(|mp| mp.entries.iter().map(|e| (e.0, e.1.clone())).collect())
            .unwrap_or_default(),
        version_dir: loaded.control.as_ref().map(|c| {
            pgbookend_formats::version::tablespace_version_dir(c.major, c.catalog_version_no)
        }),
        in_place: mk
            .as_ref()
            .is_some_and(|mk| same_path(Path::new(&mk.pgdata), pgdata)),
        resuming: opts.resuming,
    };
    report
        .problems
        .extend(crate::restore::safety::layout_problems(&layout));
    if report.problems.is_empty() && !opts.resuming {
        check_pages(opts, &loaded, archive.as_deref(), &mut report);
    }
    if !report.problems.is_empty() {
        return (report, None);
    }

    // The plan.
    let mut actions = removals(pgdata);
    plan_wal_and_slots(pgdata, opts.waldir.as_deref(), &mut actions);
    let tablespaces = Tablespaces {
        pgdata,
        known: &known,
        remap: &remap,
        map: map.as_ref(),
    };
    let new_map = plan_tablespaces(&tablespaces, &mut actions, &mut report);
    if !report.problems.is_empty() {
        return (report, None);
    }
    let finish = Finish {
        pgdata,
        m,
        remapped: !remap.is_empty(),
        has_map: new_map.is_some(),
        wal_from_bundle: matches!(source, Some(WalSource::Bundle)),
        standby: opts.standby,
        copy_control_note,
    };
    plan_finish(&finish, &target, &mut actions);
    report.actions = actions;
    report.recovery = Some(describe_recovery(m, &label, &target, opts.standby));
    report.start_command = Some(start_command(pgdata));
    (report, Some((loaded, PlanExtra { new_map })))
}

/// The first checks: the copy is a data directory with no server on it, which backup it
/// belongs to, and that backup's bundle, loaded and checked. `None` once a problem is
/// recorded (nothing else can be judged without them).
fn open_pair(
    opts: &PrepareOptions,
    scratch: &Path,
    deep: bool,
    report: &mut Report,
) -> Option<(Option<marker::Marker>, Loaded)> {
    let pgdata = &opts.pgdata;
    if !pgdata.join("PG_VERSION").is_file() {
        report.problems.push(problem(
            "copy_pgdata",
            format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION)",
                pgdata.display()
            ),
            "give --pgdata the directory the copy was restored to",
        ));
        return None;
    }
    if let Some(pid) = running_postmaster(pgdata) {
        report.problems.push(problem(
            "copy_running",
            format!(
                "{} belongs to a running server (postmaster pid {pid})",
                pgdata.display()
            ),
            "prepare works on a restored copy with no server running on it; stop the server first",
        ));
        return None;
    }
    let (id, mk) = identify(pgdata, opts.id.as_deref())
        .map_err(|p| report.problems.push(p))
        .ok()?;
    report.id = Some(id.clone());
    let bdir = locate_bundle(opts, &id, mk.as_ref(), scratch)
        .map_err(|p| report.problems.push(p))
        .ok()?;
    report.bundle = Some(bdir.display().to_string());
    let loaded = load_bundle(&bdir, Some(&id), deep)
        .map_err(|ps| report.problems.extend(ps))
        .ok()?;
    Some((mk, loaded))
}

/// The copy must be of the bundle's cluster and taken after start; returns what the plan
/// says about the copy's own pg_control.
fn check_copy_control(
    pgdata: &Path,
    mk: Option<&marker::Marker>,
    m: &Manifest,
    label: &BackupLabel,
    report: &mut Report,
) -> String {
    if let Some(mk) = mk {
        if mk.system_identifier != m.system_identifier {
            report.problems.push(problem(
                "copy_system_identifier",
                format!(
                    "the copy's marker names cluster {}, the bundle is of cluster {}",
                    mk.system_identifier, m.system_identifier
                ),
                "pair the copy with the bundle of the backup it was taken in",
            ));
        }
    }
    match fs::read(pgdata.join("global/pg_control")).map(|b| control::parse(&b)) {
        Ok(Ok(c)) => {
            if c.system_identifier.to_string() != m.system_identifier {
                report.problems.push(problem(
                    "copy_system_identifier",
                    format!(
                        "the copy's pg_control is of cluster {}, the bundle is of cluster {}",
                        c.system_identifier, m.system_identifier
                    ),
                    "pair the copy with a bundle of its own cluster",
                ));
            } else if !c.is_checkpoint_invalidated() && c.checkpoint < label.checkpoint_location {
                report.problems.push(problem(
                    "copy_too_old",
                    format!(
                        "the copy's pg_control has checkpoint {}, older than the backup's {}: the copy was taken before the backup started",
                        c.checkpoint, label.checkpoint_location
                    ),
                    "take the copy between pgbookend start and stop, or pair it with the bundle of the backup it belongs to",
                ));
            }
            "the copy's pg_control is replaced".into()
        }
        Ok(Err(_)) => {
            "the copy's pg_control is torn or damaged and is replaced by the bundle's".into()
        }
        Err(_) => "the copy has no pg_control".into(),
    }
}

/// The bundle's tablespace_map, parsed (a damaged one is a problem).
fn read_map(loaded: &Loaded, report: &mut Report) -> Option<TablespaceMap> {
    let text = loaded.map_text.as_deref()?;
    match TablespaceMap::parse_for_major(text, loaded.manifest.pg_major) {
        Ok(mp) => Some(mp),
        Err(e) => {
            report.problems.push(problem(
                "bundle_map",
                format!("the bundle's tablespace_map does not parse: {e}"),
                "the bundle is damaged",
            ));
            None
        }
    }
}

/// Every `--tablespace OID=PATH` names a tablespace of the backup.
fn check_remaps(remap: &BTreeMap<u32, PathBuf>, known: &[u32], report: &mut Report) {
    for oid in remap.keys() {
        if !known.contains(oid) {
            report.problems.push(problem(
                "tablespace_remap",
                format!("--tablespace {oid}=...: the backup has no tablespace {oid} (it has: {known:?})"),
                "use the OIDs listed in the bundle's tablespace_map",
            ));
        }
    }
}

/// Every file that existed throughout the backup is in the copy (when the bundle has a
/// file list).
fn check_file_list(
    pgdata: &Path,
    loaded: &Loaded,
    known: &[u32],
    remap: &BTreeMap<u32, PathBuf>,
    report: &mut Report,
) {
    let Some(fl) = &loaded.manifest.file_list else {
        return;
    };
    let remap_files: BTreeMap<u32, PathBuf> = known
        .iter()
        .map(|oid| (*oid, effective_tablespace_files(pgdata, *oid, remap)))
        .collect();
    match missing_files(pgdata, &loaded.dir.join(&fl.name), &remap_files, 10) {
        Ok((0, _)) => {}
        Ok((n, named)) => report.problems.push(problem(
            "copy_incomplete",
            format!(
                "the copy lacks {n} of the {} files that existed throughout the backup, e.g. {}",
                fl.count,
                named.join(", ")
            ),
            "the copy is incomplete (excluded paths, a failed or partial restore, tablespaces not restored): restore the whole copy, and give --tablespace OID=PATH where tablespaces were restored",
        )),
        Err(e) => report.problems.push(problem("bundle_file_list", e.message, "the bundle is damaged")),
    }
}

/// Where recovery gets the WAL of the window from, in order of preference.
fn wal_source(
    opts: &PrepareOptions,
    m: &Manifest,
    pitr: Option<&pitr::PitrReport>,
    archive: Option<&PathBuf>,
) -> Option<WalSource> {
    if m.mode() == Some(WalMode::Collect) {
        Some(WalSource::Bundle)
    } else if let Some(cmd) = &opts.restore_command {
        Some(WalSource::Command(cmd.clone()))
    } else if let Some(p) = pitr {
        Some(WalSource::Store(p.restore_command.clone()))
    } else if opts.archive.is_none() && !m.archive_stores.is_empty() {
        archive_get_command(&m.archive_stores, &opts.s3).map(WalSource::Command)
    } else {
        archive.cloned().map(WalSource::Archive)
    }
}

/// The WAL source reaches every segment of the window (tried, for a command).
fn check_wal_source(
    source: Option<&WalSource>,
    loaded: &Loaded,
    scratch: &Path,
    report: &mut Report,
) {
    let m = &loaded.manifest;
    match source {
        None => report.problems.push(problem(
            "wal_unreachable",
            format!(
                "the bundle does not hold the WAL of the backup (wal_mode {}) and no archive was given",
                m.wal_mode
            ),
            "pass --archive DIR or --restore-command CMD that reaches WAL files {} .. {}",
        )),
        Some(WalSource::Archive(dir)) => {
            if let Some(w) = m
                .wal
                .iter()
                .find(|w| walcollect::find_in_archive(dir, &w.name).is_none())
            {
                report.problems.push(problem(
                    "wal_unreachable",
                    format!("WAL file {} of the backup is not in {}", w.name, dir.display()),
                    "restore the archive, or point --archive at the directory that holds the WAL",
                ));
            }
        }
        Some(WalSource::Command(cmd)) => {
            if let Some(w) = m
                .wal
                .iter()
                .find(|w| !try_restore_command(cmd, &w.name, scratch, &loaded.control_bytes))
            {
                report.problems.push(problem(
                    "wal_unreachable",
                    format!("--restore-command could not fetch WAL file {} of the backup", w.name),
                    "check the command by hand with %f and %p replaced",
                ));
            }
        }
        Some(WalSource::Bundle) | Some(WalSource::Store(_)) => {}
    }
}

/// Files that must not be in a base backup, removed first.
fn removals(pgdata: &Path) -> Vec<Action> {
    [
        "postmaster.pid",
        "postmaster.opts",
        "backup_label.old",
        "tablespace_map.old",
        "recovery.signal",
        "standby.signal",
    ]
    .into_iter()
    .filter(|f| pgdata.join(f).exists())
    .map(|f| Action::Remove {
        path: pgdata.join(f).display().to_string(),
        why: "must not be in a base backup".into(),
    })
    .collect()
}

/// The backup's tablespaces and where the user wants them.
struct Tablespaces<'a> {
    pgdata: &'a Path,
    known: &'a [u32],
    remap: &'a BTreeMap<u32, PathBuf>,
    map: Option<&'a TablespaceMap>,
}

/// Moves and links for remapped tablespaces; returns the tablespace_map to write.
fn plan_tablespaces(
    t: &Tablespaces,
    actions: &mut Vec<Action>,
    report: &mut Report,
) -> Option<TablespaceMap> {
    let mut new_map = t.map.cloned();
    for oid in t.known {
        let link = t.pgdata.join("pg_tblspc").join(oid.to_string());
        let lmeta = fs::symlink_metadata(&link);
        let is_real_dir = lmeta.as_ref().map(|m| m.is_dir()).unwrap_or(false);
        if let Some(to) = t.remap.get(oid) {
            // Only files inside the copy are ever moved: a link in the copy may point at
            // the original cluster's live tablespace, which prepare must never touch.
            if is_real_dir && dir_has_entries(&link) {
                actions.push(Action::MoveTablespace {
                    oid: *oid,
                    from: link.display().to_string(),
                    to: to.display().to_string(),
                });
            }
            actions.push(Action::LinkTablespace {
                oid: *oid,
                to: to.display().to_string(),
            });
            if let Some(mp) = new_map.as_mut() {
                for e in mp.entries.iter_mut().filter(|e| e.0 == *oid) {
                    e.1 = to.display().to_string();
                }
            }
        } else if is_real_dir && dir_has_entries(&link) {
            let orig = t
                .map
                .and_then(|mp| mp.path(*oid).map(|s| s.to_string()))
                .unwrap_or_default();
            report.problems.push(problem(
                "tablespace_inline",
                format!("the copy holds tablespace {oid} as a directory inside pg_tblspc; at startup the server would delete it and link {orig} instead"),
                format!("pass --tablespace {oid}=PATH to move it to PATH (for example --tablespace {oid}={orig})"),
            ));
        }
    }
    new_map
}

/// What the last steps of the plan depend on.
struct Finish<'a> {
    pgdata: &'a Path,
    m: &'a Manifest,
    remapped: bool,
    has_map: bool,
    wal_from_bundle: bool,
    standby: bool,
    copy_control_note: String,
}

/// The last steps: label and map, the bundle's WAL, recovery settings and signal, and
/// the bundle's pg_control.
fn plan_finish(f: &Finish, target: &BTreeMap<String, String>, actions: &mut Vec<Action>) {
    let pgdata = f.pgdata;
    actions.push(Action::WriteFile {
        path: pgdata.join("backup_label").display().to_string(),
        what: "byte for byte from the bundle".into(),
    });
    if f.has_map {
        let what = if f.remapped {
            "from the bundle, with the tablespace remaps"
        } else {
            "byte for byte from the bundle"
        };
        actions.push(Action::WriteFile {
            path: pgdata.join("tablespace_map").display().to_string(),
            what: what.into(),
        });
    }
    if f.wal_from_bundle {
        for w in &f.m.wal {
            actions.push(Action::WriteWal {
                path: pgdata.join("pg_wal").join(&w.name).display().to_string(),
                from: format!("bundle {}", w.stored.clone().unwrap_or_default()),
            });
        }
    }
    actions.push(Action::SetRecovery {
        settings: target.clone(),
    });
    let signal = if f.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    actions.push(Action::WriteFile {
        path: pgdata.join(signal).display().to_string(),
        what: "starts recovery".into(),
    });
    actions.push(Action::InstallControl {
        path: pgdata.join("global/pg_control").display().to_string(),
        what: format!(
            "the bundle's, read after stop, with its checkpoint made invalid so the server cannot start without backup_label; {}",
            f.copy_control_note
        ),
    });
}

/// The pages of the copy, judged by the WAL of the window, before anything changes (a
/// resumed prepare checked them in its first run).
fn check_pages(
    opts: &PrepareOptions,
    loaded: &Loaded,
    archive: Option<&Path>,
    report: &mut Report,
) {
    report.pages = crate::verify::check_copy(
        &crate::verify::CopyToCheck {
            pgdata: &opts.pgdata,
            remap: &opts.tablespaces,
            archive,
            mode: opts.check_pages,
            bundle_dir: &loaded.dir,
            manifest: &loaded.manifest,
            start: loaded.label.as_ref().map(|l| l.start_wal_location),
            control: loaded.control.as_ref(),
        },
        &mut report.problems,
        &mut report.warnings,
    );
}

/// What the plan needs beyond the report: the tablespace map with the remaps applied.
pub struct PlanExtra {
    pub(crate) new_map: Option<TablespaceMap>,
}

/// Where tablespace `oid`'s files are for the file-list check: the copy's own
/// pg_tblspc directory if it holds them as a real directory (prepare moves them), else
/// the remap target, else wherever the copy's link points.
fn effective_tablespace_files(pgdata: &Path, oid: u32, remap: &BTreeMap<u32, PathBuf>) -> PathBuf {
    let own = pgdata.join("pg_tblspc").join(oid.to_string());
    let own_is_dir = fs::symlink_metadata(&own)
        .map(|m| m.is_dir())
        .unwrap_or(false);
    match remap.get(&oid) {
        Some(_) if own_is_dir && dir_has_entries(&own) => own,
        Some(to) => to.clone(),
        None => own,
    }
}

/// Whether two paths name the same directory (after resolving links).
fn same_path(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The plan's steps for pg_replslot and pg_wal. A link there is never followed: a
/// pg_replslot link becomes an empty directory (its contents go anyway), a pg_wal link
/// is only accepted with `--waldir` (checked before) and replaced by a link to it.
fn plan_wal_and_slots(pgdata: &Path, waldir: Option<&Path>, actions: &mut Vec<Action>) {
    let slots = pgdata.join("pg_replslot");
    let is_link = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
    };
    if is_link(&slots) {
        actions.push(Action::ReplaceLink {
            path: slots.display().to_string(),
            why: "replication slots of the original server; the link is not followed".into(),
        });
    } else if dir_has_entries(&slots) {
        actions.push(Action::ClearDir {
            path: slots.display().to_string(),
            why: "replication slots of the original server".into(),
        });
    }
    let why = "WAL copied during the window may be torn; recovery must use the backup's WAL";
    match waldir {
        Some(w) => {
            actions.push(Action::LinkWal {
                to: w.display().to_string(),
            });
            if dir_has_entries(w) {
                actions.push(Action::ClearDir {
                    path: w.display().to_string(),
                    why: why.into(),
                });
            }
        }
        None if dir_has_entries(&pgdata.join("pg_wal")) => actions.push(Action::ClearDir {
            path: pgdata.join("pg_wal").display().to_string(),
            why: why.into(),
        }),
        None => {}
    }
}

fn dir_has_entries(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// The recovery settings for the target and the WAL source.
/// The target without `--target`: the end of the backup (`immediate`), or all WAL there
/// is (`latest`) for a standby, with an archive, or for a standby backup that recorded
/// its replay position (its own WAL reaches that position).
fn default_target(
    opts: &PrepareOptions,
    m: &Manifest,
    source: Option<&WalSource>,
    has_archive: bool,
) -> &'static str {
    let replay_to_end = m.replay_lsn.is_some() && matches!(source, Some(WalSource::Bundle));
    if opts.standby || has_archive || replay_to_end {
        "latest"
    } else {
        "immediate"
    }
}

fn parse_target(
    opts: &PrepareOptions,
    source: Option<&WalSource>,
    archive: Option<&Path>,
    store_cmd: Option<String>,
    m: &Manifest,
) -> std::result::Result<BTreeMap<String, String>, Problem> {
    let mut s = BTreeMap::new();
    let restore = match source {
        Some(WalSource::Command(c)) | Some(WalSource::Store(c)) => Some(c.clone()),
        _ => opts
            .restore_command
            .clone()
            .or_else(|| archive.map(archive_restore_command))
            .or(store_cmd),
    };
    let has_archive = restore.is_some();
    // With the WAL only in pg_wal there is nothing to fetch, but PostgreSQL requires a
    // restore_command outside standby mode: one that always fails makes it read pg_wal.
    s.insert(
        "restore_command".to_string(),
        restore.unwrap_or_else(|| "false".into()),
    );
    let bad = |m: String| {
        problem(
            "target",
            m,
            "--target immediate|latest|time=TS|lsn=LSN|xid=XID|name=NAME",
        )
    };
    let target = opts
        .target
        .clone()
        .unwrap_or_else(|| default_target(opts, m, source, has_archive).into());
    match target.split_once('=') {
        None if target == "immediate" => {
            s.insert("recovery_target".into(), "immediate".into());
        }
        None if target == "latest" => {}
        Some(("time", v)) if !v.is_empty() => {
            s.insert("recovery_target_time".into(), v.into());
        }
        Some(("lsn", v)) => {
            v.parse::<Lsn>()
                .map_err(|e| bad(format!("--target lsn={v}: {e}")))?;
            s.insert("recovery_target_lsn".into(), v.into());
        }
        Some(("xid", v)) if v.parse::<u64>().is_ok() => {
            s.insert("recovery_target_xid".into(), v.into());
        }
        Some(("name", v)) if !v.is_empty() => {
            s.insert("recovery_target_name".into(), v.into());
        }
        _ => return Err(bad(format!("--target {target:?} is not understood"))),
    }
    if target == "latest" {
        s.insert("recovery_target_timeline".into(), "latest".into());
    }
    if !opts.standby && target != "latest" {
        let action = opts
            .target_action
            .clone()
            .unwrap_or_else(|| "promote".into());
        if !["promote", "pause", "shutdown"].contains(&action.as_str()) {
            return Err(problem(
                "target",
                format!("--target-action {action:?}"),
                "use promote, pause or shutdown",
            ));
        }
        s.insert("recovery_target_action".into(), action);
    }
    if opts.standby {
        if let Some(ci) = &opts.primary_conninfo {
            s.insert("primary_conninfo".into(), ci.clone());
        }
    } else if opts.primary_conninfo.is_some() {
        return Err(problem(
            "target",
            "--primary-conninfo needs --standby",
            "add --standby",
        ));
    }
    for v in s.values() {
        if v.contains('\n') {
            return Err(problem(
                "target",
                "a recovery setting contains a newline",
                "remove it",
            ));
        }
    }
    Ok(s)
}

fn describe_recovery(
    m: &Manifest,
    label: &BackupLabel,
    s: &BTreeMap<String, String>,
    standby: bool,
) -> String {
    let mut out = format!(
        "recovery replays WAL from checkpoint {} (redo {}) to the end of the backup at {}, where the data becomes consistent",
        label.checkpoint_location, label.start_wal_location, m.stop_lsn
    );
    let to_end = !s
        .keys()
        .any(|k| k.starts_with("recovery_target") && k != "recovery_target_timeline");
    if let (Some(r), false, true) = (&m.replay_lsn, standby, to_end) {
        out.push_str(&format!(
            "; it then replays the rest of the bundle's WAL, which reaches {r} (what the standby had replayed when stop returned), and opens on a new timeline"
        ));
    } else if standby {
        out.push_str(
            "; then the server stays a standby, following its primary_conninfo / restore_command",
        );
    } else if s
        .get("recovery_target")
        .map(|t| t == "immediate")
        .unwrap_or(false)
    {
        out.push_str(&format!(
            "; it stops there and {} on a new timeline",
            match s.get("recovery_target_action").map(|a| a.as_str()) {
                Some("pause") => "pauses (call pg_wal_replay_resume() to open it)",
                Some("shutdown") => "shuts down",
                _ => "opens for reads and writes",
            }
        ));
    } else if s.contains_key("recovery_target_timeline")
        && !s.keys().any(|k| {
            k.starts_with("recovery_target_")
                && k != "recovery_target_timeline"
                && k != "recovery_target_action"
        })
    {
        out.push_str(
            "; it then replays all WAL the restore_command finds and opens on a new timeline",
        );
    } else {
        out.push_str(
            "; it then replays WAL up to the target and acts as recovery_target_action says",
        );
    }
    out
}

/// The command that starts the prepared server, as the data directory's owner.
fn start_command(pgdata: &Path) -> String {
    let own = Ownership::of_dir(pgdata).ok();
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let base = format!(
        "pg_ctl -D {} -l {}/../postgresql-restore.log start",
        pgdata.display(),
        pgdata.display()
    );
    match own {
        Some(o) if o.uid != me => match user_name(o.uid) {
            Some(u) => format!("runuser -u {u} -- {base}"),
            None => format!("(as uid {}) {base}", o.uid),
        },
        _ => base,
    }
}

fn user_name(uid: u32) -> Option<String> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
}

/// Human rendering of a report.
pub fn render(report: &Report, verb: &str) -> String {
    let mut out = String::new();
    if let Some(id) = &report.id {
        out.push_str(&format!("backup {id}, copy in {}\n", report.pgdata));
    }
    if let Some(b) = &report.bundle {
        out.push_str(&format!("bundle: {b}\n"));
    }
    if let Some(p) = &report.pages {
        out.push_str(&crate::verify::report::human(p));
    }
    if let Some(p) = &report.pitr {
        out.push_str(&pitr_line(p));
    }
    if !report.problems.is_empty() {
        out.push_str(&format!("{verb}: {} problem(s):\n", report.problems.len()));
        for p in &report.problems {
            out.push_str(&format!("  - {}\n    hint: {}\n", p.message, p.hint));
        }
        return out;
    }
    for w in &report.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if report.dry_run {
        out.push_str("dry run: nothing was changed; prepare would:\n");
    } else if report.done {
        out.push_str("done:\n");
    } else {
        out.push_str("every check passed; prepare would:\n");
    }
    for a in &report.actions {
        out.push_str(&format!("  - {}\n", a.describe()));
    }
    if !report.actions.is_empty() {
        out.push_str(&format!(
            "  - finally remove {}/{} (the copy's markers and prepare's journal)\n",
            report.pgdata,
            crate::pg::datadir::MARKER_DIR
        ));
    }
    if let Some(r) = &report.recovery {
        out.push_str(&format!("what recovery will do: {r}\n"));
    }
    if let Some(c) = &report.start_command {
        out.push_str(&format!("start the server with:\n  {c}\n"));
    }
    out
}

/// The human lines of a point-in-time restore: which bundle the target picks and how far
/// the archive reaches.
fn pitr_line(p: &pitr::PitrReport) -> String {
    let picked = match (&p.picked, &p.picked_stop_time) {
        (Some(id), Some(t)) => format!("the target picks backup {id} (stopped {t})"),
        _ => "the target cannot be placed among the backups (xid, name or a time without zone)"
            .into(),
    };
    format!(
        "point in time: {picked}; WAL from the archive in {}: {} .. {}\n",
        p.store,
        p.archive_from,
        p.archive_to.as_deref().unwrap_or("(none archived yet)")
    )
}

/// `verify --pgdata DIR`: every check of `prepare`, read-only, with the bundle's WAL
/// decompressed and checked too; all problems are reported.
pub fn verify_copy(opts: &PrepareOptions) -> Result<Report> {
    let scratch = tempfile::Builder::new()
        .prefix("pgbookend-verify.")
        .tempdir()
        .map_err(|e| Error::env(format!("cannot create a scratch directory: {e}")))?;
    let mut o = opts.clone();
    o.dry_run = true;
    let (report, _) = examine(&o, scratch.path(), true);
    Ok(report)
}

/// The number of paths in a bundle's file list, read as a stream; the first unreadable
/// or over-long line is the answer.
fn count_list(path: &Path) -> Result<u64> {
    let mut n = 0u64;
    for p in crate::bundle::filelist::read(path)? {
        p?;
        n += 1;
    }
    Ok(n)
}

/// `verify --store URL --id ID` (or `--bundle DIR`): one bundle on its own. `s3`: the
/// settings of an S3 store.
pub fn verify_bundle(
    store: Option<&str>,
    bundle_dir: Option<&Path>,
    id: &str,
    s3: &crate::store::s3::Settings,
) -> Result<Report> {
    crate::id::validate(id)?;
    let scratch = tempfile::Builder::new()
        .prefix("pgbookend-verify.")
        .tempdir()
        .map_err(|e| Error::env(format!("cannot create a scratch directory: {e}")))?;
    let mut report = Report::new(Some(id.to_string()), Path::new(""), true);
    let dir = match (bundle_dir, store) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(s)) => Store::parse(s, s3)?.fetch_bundle(id, scratch.path())?,
        (None, None) => {
            return Err(Error::usage(
                "verify needs --pgdata DIR, or --store URL / --bundle DIR with --id ID",
            ))
        }
    };
    report.bundle = Some(dir.display().to_string());
    match load_bundle(&dir, Some(id), true) {
        Ok(l) => {
            if l.control.is_none() || l.label.is_none() {
                report
                    .problems
                    .push(problem("bundle", "incomplete bundle", "use another copy"));
            }
            if let Some(fl) = &l.manifest.file_list {
                match count_list(&dir.join(&fl.name)) {
                    Ok(n) if n == fl.count => {}
                    Ok(n) => report.problems.push(problem(
                        "bundle_file_list",
                        format!(
                            "the file list holds {n} paths, bundle.json says {}",
                            fl.count
                        ),
                        "the bundle is damaged; use another copy of it",
                    )),
                    Err(e) => report.problems.push(problem(
                        "bundle_file_list",
                        e.message,
                        "the bundle is damaged",
                    )),
                }
            }
        }
        Err(ps) => report.problems.extend(ps),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::WalEntry;

    fn manifest() -> Manifest {
        serde_json::from_str(include_str!("../../tests/data/manifest.json")).unwrap()
    }

    /// A WAL entry as `collect` records it, stored in the bundle.
    fn stored(name: &str) -> WalEntry {
        WalEntry {
            name: name.into(),
            size: Some(16 << 20),
            sha256: Some("5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef".into()),
            stored: Some(format!("wal/{name}.zst")),
            archived_as: None,
        }
    }

    /// A collect-mode manifest whose window is `start` .. `stop` and whose WAL list is
    /// `names`, each stored in the bundle.
    fn window(start: &str, stop: &str, names: &[&str]) -> Manifest {
        let mut m = manifest();
        m.start_wal_file = start.into();
        m.stop_wal_file = stop.into();
        m.wal = names.iter().map(|n| stored(n)).collect();
        for w in &m.wal {
            let entry = m.files["backup_label"].clone();
            m.files.insert(w.stored.clone().unwrap(), entry);
        }
        m
    }

    fn lines(problems: &[Problem]) -> String {
        if problems.is_empty() {
            return "(no problems)\n".into();
        }
        problems
            .iter()
            .map(|p| format!("{}: {}\n  hint: {}\n", p.check, p.message, p.hint))
            .collect()
    }

    #[test]
    fn wal_range_problems_snapshots() {
        let (a, b, c, d) = (
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
        );
        let mut out = String::new();
        let mut case = |name: &str, m: &Manifest| {
            out.push_str(&format!("== {name}\n{}", lines(&wal_range_problems(m))));
        };
        case("contiguous", &window(a, d, &[a, b, c, d]));
        case("a gap", &window(a, d, &[a, b, d]));
        case("one more than the window", &window(a, c, &[a, b, c, d]));
        case("stop before start", &window(c, a, &[a]));
        case("not a segment name", &window("00000001.history", a, &[a]));
        // A promotion in the window: the last segment is on the new timeline, with its
        // history file.
        let switched = "000000020000000000000003";
        case(
            "timeline switch",
            &window(a, switched, &[a, "00000002.history", switched]),
        );
        // The right numbers on the wrong timeline.
        case(
            "segments on another timeline",
            &window(a, c, &[a, "000000030000000000000003", c]),
        );
        let mut m = window(a, b, &[a, b]);
        m.files.remove("wal/000000010000000000000003.zst");
        m.wal[0].stored = None;
        case("collect mode, files not stored", &m);
        let mut m = window(a, b, &[a, b]);
        m.wal_mode = "archive".into();
        m.wal[1].stored = None;
        case("archive mode, not stored", &m);
        insta::assert_snapshot!("wal_range_problems", out);
    }

    /// The last steps of a plan, for a remapped copy restored as a standby from the
    /// bundle's WAL.
    fn finish_actions() -> Vec<Action> {
        let m = window(
            "000000010000000000000002",
            "000000010000000000000003",
            &["000000010000000000000002", "000000010000000000000003"],
        );
        let f = Finish {
            pgdata: Path::new("/srv/restore/15/main"),
            m: &m,
            remapped: true,
            has_map: true,
            wal_from_bundle: true,
            standby: true,
            copy_control_note: "the copy's own pg_control is older than the backup's stop".into(),
        };
        let target = BTreeMap::from([
            ("recovery_target_timeline".to_string(), "latest".to_string()),
            ("restore_command".to_string(), "false".to_string()),
        ]);
        let mut actions = Vec::new();
        plan_finish(&f, &target, &mut actions);
        actions
    }

    #[test]
    fn plan_finish_snapshot() {
        let f = finish_actions();
        insta::assert_snapshot!(
            "plan_finish",
            f.iter().map(|a| a.describe() + "\n").collect::<String>()
        );
        insta::assert_json_snapshot!("plan_finish_json", f);
    }

    /// A dry run of prepare with every kind of action, a warning and a recovery.
    fn dry_run() -> Report {
        let mut r = Report::new(
            Some("b-20261130".into()),
            Path::new("/srv/restore/15/main"),
            true,
        );
        r.bundle = Some("/srv/backups/b-20261130".into());
        r.warnings
            .push("tablespace 16400 stays at /ts, its original location".into());
        r.actions = vec![
            Action::Remove {
                path: "/srv/restore/15/main/postmaster.pid".into(),
                why: "left by the copied server".into(),
            },
            Action::ClearDir {
                path: "/srv/restore/15/main/pg_replslot".into(),
                why: "replication slots of the source".into(),
            },
            Action::ReplaceLink {
                path: "/srv/restore/15/main/pg_stat_tmp".into(),
                why: "a link in the copy".into(),
            },
            Action::MoveTablespace {
                oid: 16400,
                from: "/srv/restore/15/main/pg_tblspc/16400".into(),
                to: "/srv/ts".into(),
            },
            Action::LinkTablespace {
                oid: 16400,
                to: "/srv/ts".into(),
            },
            Action::LinkWal {
                to: "/srv/wal".into(),
            },
        ];
        r.actions.extend(finish_actions());
        r.recovery = Some("recovery replays WAL to the end of the backup".into());
        r.start_command = Some("pg_ctlcluster 15 main start".into());
        r
    }

    #[test]
    fn prepare_report_snapshots() {
        let r = dry_run();
        insta::assert_snapshot!("prepare_dry_run_human", render(&r, "prepare"));
        insta::assert_json_snapshot!("prepare_dry_run_json", r);
        let mut done = dry_run();
        done.dry_run = false;
        done.done = true;
        done.pitr = Some(pitr::PitrReport {
            store: "s3://bucket/pg".into(),
            picked: Some("b-20261130".into()),
            picked_stop_time: Some("2026-11-30 12:01:00 UTC".into()),
            archive_from: "000000010000000000000002".into(),
            archive_to: None,
            restore_command: "pgbookend archive-get --store s3://bucket/pg %f %p".into(),
        });
        insta::assert_snapshot!("prepare_done_human", render(&done, "prepare"));
        let mut refused = dry_run();
        refused.problems = wal_range_problems(&window(
            "000000010000000000000002",
            "000000010000000000000004",
            &["000000010000000000000002", "000000010000000000000004"],
        ));
        insta::assert_snapshot!("verify_refused_human", render(&refused, "verify"));
        insta::assert_json_snapshot!("verify_refused_json", refused);
    }
}
