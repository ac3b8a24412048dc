//! PostgreSQL itself: the libpq binding (`pq`), the SQL session that holds a backup
//! (`session`, every statement pgbookend sends), and facts read from a live data
//! directory (`datadir`).

pub mod datadir;
pub mod pq;
pub mod session;
