//! The command line's edge: clap's options of each command, turned into the engine's typed
//! options, and the rendering of what the engine returns (human text or JSON) with the exit
//! code. The engine (the library) never prints; `main.rs` holds the top-level parser and
//! the dispatch.

pub mod archive;
pub mod backup;
pub mod catalog;
pub mod render;
pub mod restore;
