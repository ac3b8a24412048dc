//! The built-in copy: `pgbookend backup` (take a backup here) and `pgbookend restore`
//! (restore a backup there), for users without a backup program. The copy is parallel,
//! compressed and verified, and lands in the same stores as the bundles, beside them.
//!
//! `format` is the stored form both sides share.

pub mod delta;
pub mod fetch;
pub mod format;
pub mod manifest;
pub mod restore;
