//! The agent: the detached process that holds a backup's session from start to stop
//! (`serve`: spawn, handshake, serve loop, finish), its control protocol, what it records
//! (`state`, the run directory, the marker in PGDATA, the host's live records), and the
//! rescue copy it keeps when stores fail, and the verdict of a stop (`verdict`).

pub mod live;
pub mod marker;
pub mod protocol;
pub mod rescue;
pub mod rundir;
pub mod serve;
pub mod state;
pub mod verdict;
