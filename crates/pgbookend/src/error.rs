//! Errors that reach the user: a class (which becomes the exit code), a message, and hints.
//!
//! Exit codes are part of the contract (README, "Exit codes"): a backup program's hook
//! log at 3 a.m. must say whether the backup is usable.

use std::fmt;

/// What kind of failure this is; each class has its own exit code.
/// Serialised as its stable name (`class_name`), in JSON output and in the agent
/// protocol; a name this build does not know reads as `internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Something unexpected inside pgbookend (a bug or an unforeseen system error). Exit 1.
    Internal,
    /// The command line, the backup ID or the request is wrong (unknown ID, ID in use,
    /// second stop). Nothing was changed. Exit 2.
    Usage,
    /// The backup is void: its session was lost, it was aborted or timed out, or the
    /// server refused to stop it. No bundle exists; take a new backup. Exit 3.
    Void,
    /// The environment is wrong: cannot connect, missing privileges, wrong PGDATA,
    /// unsupported server, unwritable store or run directory. Nothing was changed. Exit 4.
    Environment,
    /// The backup was stopped and its bundle written, but the WAL it needs is not
    /// confirmed safe (not archived within the timeout). Not restorable until it is. Exit 5.
    WalNotSafe,
    /// A copy or bundle fails a check: it would not recover correctly (`prepare` refused
    /// and changed nothing; `verify` found problems). Exit 6.
    Check,
    /// `pg_backup_stop` succeeded and its label is saved, but the bundle is not complete
    /// (the agent died, the WAL or an upload failed): the bundle is *rescuable* with
    /// `pgbookend rescue --id ID`, which says where it is. Exit 7.
    Rescuable,
    /// `prepare` changed the copy and then failed part-way: the copy is half-prepared
    /// (recorded in its journal; `guard` refuses it). Run the same `prepare` again to
    /// finish it. Exit 8.
    Unfinished,
}

impl Class {
    /// The process exit code for this class.
    pub fn exit_code(self) -> i32 {
        match self {
            Class::Internal => 1,
            Class::Usage => 2,
            Class::Void => 3,
            Class::Environment => 4,
            Class::WalNotSafe => 5,
            Class::Check => 6,
            Class::Rescuable => 7,
            Class::Unfinished => 8,
        }
    }

    /// The class of a stable name (unknown names are internal errors).
    pub fn from_name(name: &str) -> Class {
        match name {
            "usage" => Class::Usage,
            "void" => Class::Void,
            "environment" => Class::Environment,
            "wal_not_safe" => Class::WalNotSafe,
            "check" => Class::Check,
            "rescuable" => Class::Rescuable,
            "unfinished" => Class::Unfinished,
            _ => Class::Internal,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Class {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Class::from_name(&name))
    }
}

/// A user-facing error.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Error {
    pub class: Class,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
}

impl Error {
    /// A new error of the given class.
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        Error {
            class,
            message: message.into(),
            hints: Vec::new(),
        }
    }
    /// Adds a "hint:" line: what to do next.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
    /// The class (which decides the exit code).
    pub fn class(&self) -> Class {
        self.class
    }
    /// Shorthands for the common classes.
    pub fn usage(m: impl Into<String>) -> Self {
        Self::new(Class::Usage, m)
    }
    pub fn void(m: impl Into<String>) -> Self {
        Self::new(Class::Void, m)
    }
    pub fn env(m: impl Into<String>) -> Self {
        Self::new(Class::Environment, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(Class::Internal, m)
    }
}

/// The stable name of a class, as it appears in JSON output.
pub fn class_name(c: Class) -> &'static str {
    match c {
        Class::Internal => "internal",
        Class::Usage => "usage",
        Class::Void => "void",
        Class::Environment => "environment",
        Class::WalNotSafe => "wal_not_safe",
        Class::Check => "check",
        Class::Rescuable => "rescuable",
        Class::Unfinished => "unfinished",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        for h in &self.hints {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// I/O errors on a path become environment errors that name the path.
pub fn io_err(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
    Error::env(format!("{what} {}: {e}", path.display()))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The class keeps its string form in JSON and in the agent protocol.
    #[test]
    fn class_serialises_as_its_name() {
        for c in [
            Class::Internal,
            Class::Usage,
            Class::Void,
            Class::Environment,
            Class::WalNotSafe,
            Class::Check,
            Class::Rescuable,
            Class::Unfinished,
        ] {
            let e = Error::new(c, "m").hint("h");
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["class"], class_name(c));
            let back: Error = serde_json::from_value(v).unwrap();
            assert_eq!(back.class(), c);
        }
        let v = serde_json::json!({"class": "from_the_future", "message": "m"});
        let e: Error = serde_json::from_value(v).unwrap();
        assert_eq!(e.class(), Class::Internal);
        assert_eq!(
            serde_json::to_string(&Error::usage("x")).unwrap(),
            r#"{"class":"usage","message":"x"}"#
        );
    }
}
