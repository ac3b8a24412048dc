//! A fingerprint of a directory tree for "nothing changed" checks: every entry below a
//! root (never following links) with its type, mode, owner, link target or content hash.

use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Every entry of the tree at `root` (the root included, as `.`), one line each, sorted:
/// path relative to `root`, mode, uid:gid, then the link target or the content's SHA-256.
pub fn entries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = std::fs::symlink_metadata(&p).expect("an entry of the tree");
        let rel = match p.strip_prefix(root) {
            Ok(r) if !r.as_os_str().is_empty() => r.display().to_string(),
            _ => ".".to_string(),
        };
        let what = if md.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
            "/".to_string()
        } else if md.is_file() {
            hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))
        } else {
            "other".to_string()
        };
        out.push(format!(
            "{rel} {:o} {}:{} {what}",
            md.mode(),
            md.uid(),
            md.gid()
        ));
    }
    out.sort();
    out
}

/// One hash of [`entries`]: equal digests mean nothing in the tree changed.
pub fn digest(root: &Path) -> String {
    hex::encode(Sha256::digest(entries(root).join("\n").as_bytes()))
}
