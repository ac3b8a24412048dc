//! Fault injection for the crash tests: a named point where a debug build can be killed.

/// Kills the process with SIGKILL when `PGBOOKEND_FAULT` names `point`. Only debug builds
/// (the test binary) honour it; release builds compile it to nothing.
pub fn fault(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("PGBOOKEND_FAULT").is_ok_and(|p| p == point) {
        tracing::error!("fault injection: killed at {point}");
        // SAFETY: plain kill of our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
