//! The bundle: what `stop` stores beside the copy. `bundle.json`'s types (`manifest`),
//! checking one read from a store (`check`) and reading its files boundedly (`read`), the
//! WAL of the backup window (`walcollect`) and the file list (`filelist`).

pub mod check;
pub mod filelist;
pub mod manifest;
pub mod read;
pub mod walcollect;
