//! Backup IDs: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, given by the caller or generated.

use crate::error::{Error, Result};

/// The longest accepted backup ID.
pub const MAX_LEN: usize = 64;

/// Names a store uses for itself, beside the bundles: the WAL archive (`archive/`) and
/// `check`'s probes and the data of built-in backups (`data/`). No backup may take them, and `list`/`expire` never see them as
/// bundles (so `expire --include-partial` can never remove the archive).
pub const RESERVED: &[&str] = &[ARCHIVE_DIR, CHECK_DIR, DATA_DIR];
/// The WAL archive's directory in a store.
pub const ARCHIVE_DIR: &str = "archive";
/// The directory of the built-in backups' data (`pgbookend backup`) in a store.
pub const DATA_DIR: &str = "data";
/// The directory of `check`'s probe objects in a store.
pub const CHECK_DIR: &str = "pgbookend-check";

/// Checks a caller-supplied backup ID. It names directories and is the server-side
/// label, so anything that could escape a directory or confuse a shell is refused.
pub fn validate(id: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::usage(format!("invalid backup ID {id:?}: {why}"))
            .hint("a backup ID is 1 to 64 characters: a letter or digit, then letters, digits, '.', '_' or '-'")
    };
    if id.is_empty() {
        return Err(bad("it is empty"));
    }
    if id.len() > MAX_LEN {
        return Err(bad(&format!(
            "it has {} characters, at most {MAX_LEN} are allowed",
            id.len()
        )));
    }
    if RESERVED.contains(&id) {
        return Err(bad(&format!(
            "{id:?} is the name of pgbookend's own directory in a store"
        )));
    }
    let first = id.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(bad("it must start with a letter or digit"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(&format!("it contains {c:?}")));
    }
    Ok(())
}

/// A backup ID that passed [`validate`]: safe as one path component, a label and an
/// argument. Build it from untrusted text once and pass this type downstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId(String);

impl BackupId {
    /// Checks `id` (see [`validate`]).
    pub fn parse(id: &str) -> Result<BackupId> {
        validate(id)?;
        Ok(BackupId(id.to_string()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<std::path::Path> for BackupId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

/// A new ID: UTC time plus a random suffix, e.g. `20261121T010203Z-3f9a1c`.
pub fn generate() -> String {
    let buf: [u8; 3] = crate::fsutil::random_bytes();
    format!(
        "{}-{}",
        crate::timefmt::compact(crate::timefmt::now_unix()),
        hex::encode(buf)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(validate("job-42.full_1").is_ok());
        assert!(validate(&"a".repeat(64)).is_ok());
        assert!(validate(&"a".repeat(65)).is_err());
        assert!(validate("").is_err());
        assert!(validate("../x").is_err());
        assert!(validate(".hidden").is_err());
        assert!(validate("a/b").is_err());
        assert!(validate("a b").is_err());
        assert!(validate("-rf").is_err());
        assert!(validate("archive").is_err());
        assert!(validate("pgbookend-check").is_err());
        assert!(validate("archive-1").is_ok());
    }

    #[test]
    fn checked_ids() {
        assert_eq!(BackupId::parse("job-1").unwrap().as_str(), "job-1");
        for bad in ["..", "../x", "/abs", "a\0b", "a\nb", ".tmp-1"] {
            assert!(BackupId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let a = generate();
        let b = generate();
        assert!(validate(&a).is_ok(), "{a}");
        assert_ne!(a, b);
    }
}
