//! Facts read from a live PostgreSQL data directory (not from a copy): its tablespace links;
//! and the name of pgbookend's own directory in it.

use std::path::Path;

/// The directory under PGDATA that holds markers (and `prepare`'s journal); the server
/// ignores it, the file list leaves it out.
pub const MARKER_DIR: &str = "pg_backup_metadata";

/// The tablespace directories of a data directory: the targets of its `pg_tblspc` links,
/// sorted by OID. Used by the agent to report them at start, and so given to COMMAND.
pub fn tablespace_dirs(pgdata: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(pgdata.join("pg_tblspc")) else {
        return Vec::new();
    };
    let mut links: Vec<(u64, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let oid: u64 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let target = if target.is_relative() {
                pgdata.join("pg_tblspc").join(target)
            } else {
                target
            };
            Some((oid, target.display().to_string()))
        })
        .collect();
    links.sort();
    links.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_dirs_follow_links_in_oid_order() {
        let d = tempfile::tempdir().unwrap();
        let ts = d.path().join("pg_tblspc");
        std::fs::create_dir(&ts).unwrap();
        std::os::unix::fs::symlink("/srv/b", ts.join("16500")).unwrap();
        std::os::unix::fs::symlink("/srv/a", ts.join("16400")).unwrap();
        std::fs::write(ts.join("junk"), b"").unwrap();
        assert_eq!(tablespace_dirs(d.path()), vec!["/srv/a", "/srv/b"]);
        assert!(tablespace_dirs(&d.path().join("none")).is_empty());
    }
}
