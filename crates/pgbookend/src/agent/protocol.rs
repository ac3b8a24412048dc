//! The agent's control protocol: one JSON request line, one JSON response line, over
//! the agent's Unix socket. Documented in `docs/protocol.md`.

use crate::agent::state::{AgentState, StopReport};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A request to the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The agent's current state.
    Status,
    /// Stop the backup and write the bundle. `wait_archive`: wait for the server to
    /// archive the stop segment (`None`: the WAL mode's default).
    Stop {
        wait_archive: Option<bool>,
        archive_timeout_ms: u64,
    },
    /// End the session so the server aborts the backup.
    Abort,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    State {
        state: Box<AgentState>,
    },
    Stopped {
        report: Box<StopReport>,
        error: Option<Error>,
    },
    Aborted {
        state: Box<AgentState>,
    },
    Error {
        error: Error,
    },
}

/// Sends one request and reads the answer. `Err(None)`-like failures (no agent listening)
/// are returned as `Ok(None)` so the caller can fall back to the recorded state.
pub fn call(
    socket: &Path,
    req: &Request,
    read_timeout: Option<Duration>,
) -> Result<Option<Response>> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(Error::env(format!(
                "cannot reach the agent at {}: {e}",
                socket.display()
            )))
        }
    };
    stream.set_read_timeout(read_timeout).ok();
    let mut line = serde_json::to_string(req).map_err(|e| Error::internal(e.to_string()))?;
    line.push('\n');
    if stream.write_all(line.as_bytes()).is_err() {
        return Ok(None);
    }
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) => Ok(None),
        Ok(_) => serde_json::from_str(&answer)
            .map(Some)
            .map_err(|e| Error::internal(format!("the agent sent an unreadable answer: {e}"))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(Error::env(format!(
                "the agent at {} did not answer in time",
                socket.display()
            )))
        }
        Err(_) => Ok(None),
    }
}
