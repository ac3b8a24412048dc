//! The built-in copy: `pgbookend backup` (take a backup here) and `pgbookend restore`
//! (restore a backup there), for users without a backup program. The copy is parallel,
//! compressed and verified, and lands in the same stores as the bundles, beside them.
//!
//! `format` is the stored form both sides share.

pub mod copy;
pub mod delta;
pub mod fetch;
pub mod format;
pub mod judge;
pub mod manifest;
pub mod pages;
pub mod plan;
pub mod render;
pub mod restore;
pub mod sink;
pub mod stored_manifest;
pub mod take;
