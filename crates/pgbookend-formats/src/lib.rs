//! PostgreSQL's on-disk formats for pgbookend, PostgreSQL 13 to 18: bytes in, values out, no I/O.
//!
//! This crate is the one place in pgbookend that knows PostgreSQL version
//! numbers and file layouts. Everything here is pure: functions take bytes or
//! text and return values or errors; nothing opens a file, a socket or a
//! clock. Callers do the I/O (for `pg_control` the torn-read rule is
//! [`control::read_stable`], which takes a closure that reads the file).
//!
//! - [`lsn`]: WAL locations (`Lsn`), parsed from and printed as `X/Y`.
//! - [`wal`]: WAL segment numbers and file names (`000000010000000000000002`).
//! - [`walheader`]: the long page header at the start of a WAL segment (cluster, size).
//! - [`walname`]: checked WAL file names from outside the process, bounded segment ranges.
//! - [`walreader`]: WAL records and their block references, read from segment bytes.
//! - [`page`]: data pages of relation files: header checks, data checksum, a verdict per page.
//! - [`crc32c`]: CRC-32C as PostgreSQL computes it for `pg_control`.
//! - [`control`]: `global/pg_control` (ControlFileData) for every supported major.
//! - [`label`]: `backup_label`, parsed and built byte for byte.
//! - [`tablespace_map`]: `tablespace_map`, with each major's escaping rules.
//! - [`version`]: which majors are supported and what differs between them.
//!
//! Layouts were read from the PostgreSQL sources of each stable branch
//! (`src/include/catalog/pg_control.h`, `catversion.h`,
//! `src/backend/access/transam/xlog*.c`) and checked against files written by
//! real servers of each major (see `tests/data/README.md`).

#![warn(missing_docs)]

pub mod control;
pub mod crc32c;
pub mod label;
pub mod lsn;
pub mod page;
pub mod tablespace_map;
pub mod version;
pub mod wal;
pub mod walheader;
pub mod walname;
pub mod walreader;

pub use lsn::Lsn;
