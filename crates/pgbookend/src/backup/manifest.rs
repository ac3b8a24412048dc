//! PostgreSQL's `backup_manifest` (version 1, as `pg_basebackup` writes it), so that
//! `pg_verifybackup` accepts a directory restored from a built-in backup.
//!
//! The format: one JSON object whose lines are laid out exactly as the server writes
//! them, because the last line, `"Manifest-Checksum"`, is the SHA-256 of every byte
//! before it and `pg_verifybackup` finds that line by counting newlines from the end.

use sha2::{Digest, Sha256};

/// One file of the manifest (a path relative to PGDATA, as `pg_verifybackup` walks it:
/// tablespace files under `pg_tblspc/<oid>/…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// The path's bytes; written as `Path` when UTF-8 without NUL, else `Encoded-Path`.
    pub path: Vec<u8>,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// SHA-256 of the whole file, lowercase hex (64 digits).
    pub sha256: String,
}

/// One range of WAL the backup needs: on timeline `timeline`, from `start` to `end`
/// (LSNs as 64-bit positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: u64,
    pub end: u64,
}

/// The whole manifest, bytes ready to write as `backup_manifest`.
pub fn render(files: &[ManifestFile], wal: &[WalRange]) -> Vec<u8> {
    let mut out = String::with_capacity(64 + files.len() * 160);
    out.push_str("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    for (n, f) in files.iter().enumerate() {
        out.push_str(if n == 0 { "\n" } else { ",\n" });
        push_file(&mut out, f);
    }
    out.push_str("\n],\n\"WAL-Ranges\": [\n");
    for (n, w) in wal.iter().enumerate() {
        if n > 0 {
            out.push_str(",\n");
        }
        out.push_str(&format!(
            "{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
            w.timeline,
            lsn(w.start),
            lsn(w.end)
        ));
    }
    out.push_str("\n],\n");
    let sum = hex::encode(Sha256::digest(out.as_bytes()));
    out.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
    out.into_bytes()
}

/// One `{ "Path": …, "Size": …, "Last-Modified": …, "Checksum-Algorithm": …, … }` line.
fn push_file(out: &mut String, f: &ManifestFile) {
    match std::str::from_utf8(&f.path) {
        Ok(p) if !p.contains('\0') => {
            out.push_str("{ \"Path\": ");
            push_json_string(out, p);
            out.push_str(", ");
        }
        _ => {
            out.push_str("{ \"Encoded-Path\": \"");
            out.push_str(&hex::encode(&f.path));
            out.push_str("\", ");
        }
    }
    out.push_str(&format!(
        "\"Size\": {}, \"Last-Modified\": \"{}\", \"Checksum-Algorithm\": \"SHA256\", \
         \"Checksum\": \"{}\" }}",
        f.size,
        gmt(f.mtime),
        f.sha256
    ));
}

/// A JSON string with the escapes PostgreSQL's `escape_json` uses.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-30 23:40:01 GMT`, the server's `%Y-%m-%d %H:%M:%S %Z` in GMT.
fn gmt(unix: i64) -> String {
    let t = crate::timefmt::rfc3339(unix);
    format!("{} GMT", t.trim_end_matches('Z').replacen('T', " ", 1))
}

/// An LSN as `X/X` (upper-case hex halves).
fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &[u8], size: u64) -> ManifestFile {
        ManifestFile {
            path: path.to_vec(),
            size,
            mtime: 1_700_000_000,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn the_layout_is_the_servers_and_the_checksum_covers_all_before_its_line() {
        let wal = [WalRange {
            timeline: 1,
            start: 0x2_0000_0028,
            end: 0x2_0000_0100,
        }];
        let bytes = render(&[file(b"PG_VERSION", 3), file(b"a\"b\\c\n", 0)], &wal);
        let text = String::from_utf8(bytes.clone()).unwrap();
        let expect_head = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n\
            { \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2023-11-14 22:13:20 GMT\", \
            \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"";
        assert!(text.starts_with(expect_head), "{text}");
        assert!(text.contains(",\n{ \"Path\": \"a\\\"b\\\\c\\n\", \"Size\": 0, "));
        assert!(text.contains(
            "\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"2/28\", \
             \"End-LSN\": \"2/100\" }\n],\n\"Manifest-Checksum\": \""
        ));
        // The checksum line is the last line; it covers every byte before it.
        let at = text.rfind("\"Manifest-Checksum\"").unwrap();
        assert_eq!(text[..at].rfind('\n'), Some(at - 1));
        let sum = hex::encode(Sha256::digest(&bytes[..at]));
        assert!(text.ends_with(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n")));
        // It is JSON.
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["Files"][1]["Path"], "a\"b\\c\n");
        assert_eq!(v["WAL-Ranges"][0]["End-LSN"], "2/100");
    }

    #[test]
    fn non_utf8_paths_are_hex_encoded_and_empty_lists_are_valid() {
        let bytes = render(&[file(b"base/\xff", 1)], &[]);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["Files"][0]["Encoded-Path"], "626173652fff");
        assert!(v["Files"][0].get("Path").is_none());
        let empty = render(&[], &[]);
        let v: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["Files"].as_array().unwrap().len(), 0);
    }
}
