//! Fast data directories: initdb once per (major, checksums) into a cached template, then copy it and give the copy its own system identifier.
//!
//! initdb costs ~1 s of CPU per cluster; a copy of the template costs a few tens of ms. A copy
//! would share the template's system identifier, which would make distinct test clusters look
//! like the same database system to pgbookend, so every copy gets a new one: rewritten in
//! `global/pg_control` (with its CRC-32C recomputed) and in the long page header of the WAL
//! segment(s) initdb left, which is everything that carries it in a fresh cluster. If anything
//! about that layout looks unexpected, the copy is discarded and initdb runs for real.
//! `PGBOOKEND_TEST_NO_TEMPLATE=1` always runs initdb.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::tempdir::{make_dir, remove_tree};
use crate::{
    is_root, run_as_server_user, scrub_pg_env, server_account, server_bin, tmp_root, DIR_PREFIX,
};

/// The initdb arguments for a data directory (PG 18 turns checksums on by default, so the
/// choice is explicit both ways there; `--no-data-checksums` exists only from 18).
fn initdb_args(major: u32, checksums: bool) -> Vec<&'static str> {
    let mut args = vec![
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ];
    if checksums {
        args.push("--data-checksums");
    } else if pgbookend_formats::version::initdb_checksums_by_default(major) {
        args.push("--no-data-checksums");
    }
    args
}

/// Runs initdb for `major` into `pgdata` (which must not exist), as the server user.
pub(crate) fn initdb(major: u32, checksums: bool, pgdata: &Path) -> Result<(), String> {
    let bin = server_bin(major, "initdb");
    if !bin.exists() {
        return Err(format!(
            "{} does not exist: run scripts/install-deps (or set PGBOOKEND_PG_DIR)",
            bin.display()
        ));
    }
    let mut cmd = Command::new(&bin);
    cmd.arg("-D")
        .arg(pgdata)
        .args(initdb_args(major, checksums))
        .current_dir("/")
        .stdin(Stdio::null());
    scrub_pg_env(&mut cmd);
    run_as_server_user(&mut cmd);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "initdb (PostgreSQL {major}) failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn no_template() -> bool {
    std::env::var_os("PGBOOKEND_TEST_NO_TEMPLATE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Creates the data directory `pgdata` (must not exist) for `major`: a copy of the cached
/// template with a fresh system identifier, or a real initdb when that is not possible.
pub(crate) fn make_pgdata(major: u32, checksums: bool, pgdata: &Path) -> Result<(), String> {
    if !no_template() {
        match template(major, checksums) {
            Ok(tpl) => match copy_and_patch(&tpl, pgdata) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    eprintln!(
                        "pgbookend-testkit: template copy failed, running initdb instead: {e}"
                    );
                    remove_tree(pgdata);
                }
            },
            Err(e) => return Err(e),
        }
    }
    initdb(major, checksums, pgdata)
}

fn copy_and_patch(tpl: &Path, pgdata: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let inode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .ok()
    };
    let before = inode(tpl).ok_or_else(|| format!("{} vanished", tpl.display()))?;
    // As root, cp -a keeps the server user as owner; otherwise everything is ours anyway.
    let out = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(tpl)
        .arg(pgdata)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cp -a {} {} failed: {}",
            tpl.display(),
            pgdata.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The sweep renames a template away before deleting it: if the template is still at its
    // place after the copy, nothing was deleted under cp's feet.
    if inode(tpl) != Some(before) {
        return Err(format!("{} was removed during the copy", tpl.display()));
    }
    patch_system_identifier(pgdata, new_system_identifier())
}

type Slot = Arc<Mutex<Option<PathBuf>>>;

/// The template data directory for (major, checksums), created on first use, shared by all
/// threads and test processes (created in a private dir, then renamed into place atomically);
/// re-created if the sweep removed it meanwhile.
fn template(major: u32, checksums: bool) -> Result<PathBuf, String> {
    static SLOTS: Mutex<Option<HashMap<(u32, bool), Slot>>> = Mutex::new(None);
    let slot: Slot = {
        let mut map = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        map.get_or_insert_with(HashMap::new)
            .entry((major, checksums))
            .or_default()
            .clone()
    };
    let mut known = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(data) = known.as_ref() {
        if data.join("global/pg_control").is_file() {
            return Ok(data.clone());
        }
    }
    let data = build_template(major, checksums)?;
    *known = Some(data.clone());
    Ok(data)
}

fn build_template(major: u32, checksums: bool) -> Result<PathBuf, String> {
    let dir = tmp_root().join(format!(
        "{DIR_PREFIX}tpl-{major}-{}-u{}-{:016x}",
        if checksums { "ck" } else { "nock" },
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        fingerprint(major, checksums)
    ));
    let data = dir.join("data");
    if data.join("PG_VERSION").is_file() && data.join("global/pg_control").is_file() {
        // /tmp is world-writable: only trust a template we (or the server user) made.
        use std::os::unix::fs::MetadataExt;
        let expected = server_account().map(|a| a.uid).ok().filter(|_| is_root());
        // SAFETY: geteuid has no preconditions.
        let expected = expected.unwrap_or_else(|| unsafe { libc::geteuid() });
        let owner_ok = |p: &Path| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == expected)
        };
        if owner_ok(&dir) && owner_ok(&data) {
            return Ok(data);
        }
        return Err(format!(
            "{} exists but is not owned by uid {expected}; remove it",
            dir.display()
        ));
    }
    let work = make_dir(&format!("tplwork{major}"))
        .map_err(|e| format!("cannot create a temp dir in {}: {e}", tmp_root().display()))?;
    if let Err(e) = initdb(major, checksums, &work.join("data")) {
        remove_tree(&work);
        return Err(e);
    }
    match std::fs::rename(&work, &dir) {
        Ok(()) => Ok(data),
        Err(_) if data.join("global/pg_control").is_file() => {
            // Another process won the race; its template is as good as ours.
            remove_tree(&work);
            Ok(data)
        }
        Err(e) => {
            remove_tree(&work);
            Err(format!("cannot move template into {}: {e}", dir.display()))
        }
    }
}

/// Identifies the server build and the initdb options, so a rebuilt or reinstalled major (or a
/// harness change) never reuses a stale template.
fn fingerprint(major: u32, checksums: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(b"pgbookend-testkit template v1");
    eat(&major.to_le_bytes());
    eat(initdb_args(major, checksums).join(" ").as_bytes());
    for name in ["initdb", "postgres"] {
        let bin = server_bin(major, name);
        eat(bin.as_os_str().as_encoded_bytes());
        if let Ok(meta) = std::fs::metadata(&bin) {
            use std::os::unix::fs::MetadataExt;
            eat(&meta.len().to_le_bytes());
            eat(&meta.mtime().to_le_bytes());
            eat(&meta.ino().to_le_bytes());
        }
    }
    h
}

/// A system identifier built like initdb builds one (seconds << 32 | usec << 12 | pid & 0xFFF),
/// strictly increasing within this process so no two clusters ever share one.
pub(crate) fn new_system_identifier() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let candidate = (now.as_secs() << 32)
        | (u64::from(now.subsec_micros()) << 12)
        | u64::from(std::process::id() & 0xFFF);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = candidate.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// XLP_LONG_HEADER in `xlp_info` of a WAL page header.
const XLP_LONG_HEADER: u16 = 0x0002;
/// Offset of `xlp_sysid` in XLogLongPageHeaderData (after the 20-byte short header, aligned).
const XLP_SYSID_OFFSET: u64 = 24;

/// Gives the never-started data directory `pgdata` the system identifier `sysid`.
pub(crate) fn patch_system_identifier(pgdata: &Path, sysid: u64) -> Result<(), String> {
    let ctl_path = pgdata.join("global/pg_control");
    let mut ctl = std::fs::read(&ctl_path).map_err(|e| format!("{}: {e}", ctl_path.display()))?;
    let old = u64::from_le_bytes(
        ctl.get(0..8)
            .ok_or("pg_control too short")?
            .try_into()
            .map_err(|_| "pg_control too short")?,
    );
    let crc_at = find_crc_offset(&ctl).ok_or("no valid CRC found in pg_control")?;

    // Every WAL segment whose first page is a long header naming the old system identifier.
    let wal_dir = pgdata.join("pg_wal");
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(&wal_dir).map_err(|e| format!("{}: {e}", wal_dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let file = std::fs::File::open(entry.path()).map_err(|e| e.to_string())?;
        let mut head = [0u8; 32];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let info = u16::from_le_bytes([head[2], head[3]]);
        let wal_sysid = u64::from_le_bytes(head[24..32].try_into().unwrap_or_default());
        if info & XLP_LONG_HEADER == 0 || wal_sysid != old {
            return Err(format!(
                "{}: unexpected first page header (info {info:#x}, sysid {wal_sysid} vs {old})",
                entry.path().display()
            ));
        }
        segments.push(entry.path());
    }
    if segments.is_empty() {
        return Err(format!("no WAL segment in {}", wal_dir.display()));
    }

    ctl[0..8].copy_from_slice(&sysid.to_le_bytes());
    let crc = crc32c(&ctl[..crc_at]);
    ctl[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    write_at(&ctl_path, 0, &ctl)?;
    for seg in &segments {
        write_at(seg, XLP_SYSID_OFFSET, &sysid.to_le_bytes())?;
    }
    Ok(())
}

/// Overwrites bytes in place (keeps the file's owner and mode).
fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all_at(bytes, offset)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The offset of the CRC in pg_control: the first 4-aligned position whose stored value is the
/// CRC-32C of everything before it (the struct layout differs between majors).
fn find_crc_offset(ctl: &[u8]) -> Option<usize> {
    let table = crc_table();
    let mut crc = !0u32;
    for (i, &b) in ctl.iter().enumerate().take(2048) {
        if i >= 64 && i % 4 == 0 && i + 4 <= ctl.len() {
            let stored = u32::from_le_bytes(ctl[i..i + 4].try_into().ok()?);
            if !crc == stored {
                return Some(i);
            }
        }
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    None
}

/// CRC-32C (Castagnoli), as PostgreSQL computes it for pg_control.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    let table = crc_table();
    let mut crc = !0u32;
    for &b in bytes {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn crc_table() -> &'static [u32; 256] {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn system_identifiers_are_unique() {
        let a = new_system_identifier();
        let b = new_system_identifier();
        assert!(b > a);
    }

    /// pg_controldata (15) must accept the rewritten pg_control: CRC right, new identifier.
    #[test]
    fn patched_copy_is_valid_for_pg_controldata() {
        if !crate::majors().contains(&15) {
            return;
        }
        let dir = crate::temp_dir("patch");
        let pgdata = dir.join("data");
        make_pgdata(15, true, &pgdata).unwrap();
        let sysid = u64::from_le_bytes(
            std::fs::read(pgdata.join("global/pg_control")).unwrap()[..8]
                .try_into()
                .unwrap(),
        );
        let out = Command::new(crate::client_bin("pg_controldata"))
            .arg(&pgdata)
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("CRC"), "{text}");
        assert!(
            text.contains(&format!("Database system identifier:           {sysid}")),
            "{text}"
        );
        assert!(
            text.contains("Data page checksum version:           1"),
            "{text}"
        );
    }

    #[test]
    fn initdb_args_explicit_checksums() {
        assert!(initdb_args(18, false).contains(&"--no-data-checksums"));
        assert!(!initdb_args(17, false).contains(&"--no-data-checksums"));
        assert!(initdb_args(13, true).contains(&"--data-checksums"));
    }
}
