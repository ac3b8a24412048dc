//! What a command hands to the CLI edge: its JSON and its human rendering, and the
//! small formatting helpers those renderings share.

use crate::error::Error;
use serde_json::Value;

/// What a command produced: JSON for `--json`, and the human rendering of the same facts.
pub struct Output {
    pub json: Value,
    pub human: String,
    /// Non-zero when the command finished but the result is not "done and safe".
    pub error: Option<Error>,
}

/// `1.5 MiB`: sizes as people read them.
pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}
