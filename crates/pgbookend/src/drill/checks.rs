//! The checks a drill runs on the recovered clone, in every database that accepts
//! connections: amcheck's B-tree check with `heapallindexed` on every valid B-tree index,
//! `verify_heapam` where the major has it, and a `SELECT count(*)` of every ordinary table.

use super::server::Server;
use crate::error::Result;
use crate::pg::pq::Conn;
use serde::{Deserialize, Serialize};

/// At most this many failures are kept (and counted beyond): memory stays bounded however
/// damaged the clone is.
const MAX_FAILURES: usize = 1000;
/// At most this many corruption rows of `verify_heapam` are read per relation.
const HEAP_ROWS: u32 = 5;

/// One failed check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub database: String,
    /// `amcheck`, `btree`, `heap`, `count`, `connect`, `recovery`, or `prepare`.
    pub check: String,
    /// The index or table (schema-qualified), or the extension.
    pub object: String,
    pub message: String,
}

/// How many checks of each kind ran, and what failed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checks {
    pub databases: Vec<String>,
    pub btree_indexes: u64,
    pub heap_relations: u64,
    pub table_counts: u64,
    /// Whether heap verification ran (the major has `verify_heapam`).
    pub heap_checked: bool,
    pub run: u64,
    pub failed: u64,
    pub failures: Vec<Failure>,
}

impl Checks {
    /// Records that the server did not recover: the one check that ran, failed.
    pub fn recovery_failed(&mut self, message: &str) {
        self.run += 1;
        self.fail("", "recovery", "server", message);
    }

    /// Records that prepare refused the copy (its page check, its bundle checks): the one
    /// check that ran, failed.
    pub fn prepare_refused(&mut self, message: &str) {
        self.run += 1;
        self.fail("", "prepare", "copy", message);
    }

    fn fail(&mut self, database: &str, check: &str, object: &str, message: &str) {
        self.failed += 1;
        if self.failures.len() < MAX_FAILURES {
            self.failures.push(Failure {
                database: database.into(),
                check: check.into(),
                object: object.into(),
                message: message.trim().into(),
            });
        }
    }
}

/// What the checks may use.
pub struct Settings {
    pub heapam: bool,
    /// `--no-amcheck`: a server without amcheck is not a failure (counts still run).
    pub no_amcheck: bool,
}

/// Runs every check in every connectable database.
pub fn run_all(server: &Server, s: &Settings, stop: &dyn Fn() -> bool) -> Result<Checks> {
    let mut out = Checks {
        heap_checked: s.heapam,
        ..Checks::default()
    };
    let mut c = server.connect_any().map_err(|e| {
        crate::error::Error::env(format!("cannot connect to the drill server: {e}"))
    })?;
    let dbs = c
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .map_err(|e| crate::error::Error::env(format!("cannot list the databases: {e}")))?;
    drop(c);
    for row in &dbs.rows {
        let Some(Some(db)) = row.first() else {
            continue;
        };
        if stop() {
            return Err(super::interrupted());
        }
        out.databases.push(db.clone());
        out.run += 1;
        match server.connect(db) {
            Ok(mut conn) => check_database(&mut conn, db, s, &mut out, stop)?,
            Err(e) => out.fail(db, "connect", db, &e),
        }
    }
    Ok(out)
}

/// The checks of one database.
fn check_database(
    c: &mut Conn,
    db: &str,
    s: &Settings,
    out: &mut Checks,
    stop: &dyn Fn() -> bool,
) -> Result<()> {
    let amcheck = match c.query("CREATE EXTENSION IF NOT EXISTS amcheck", &[]) {
        Ok(_) => true,
        Err(e) => {
            if !s.no_amcheck {
                out.run += 1;
                out.fail(
                    db,
                    "amcheck",
                    "amcheck",
                    &format!("amcheck unavailable: {e}"),
                );
            }
            false
        }
    };
    if amcheck {
        check_indexes(c, db, out, stop)?;
        if s.heapam {
            check_heaps(c, db, out, stop)?;
        }
    }
    count_tables(c, db, out, stop)
}

/// `(oid, quoted name)` of the relations a catalog query selects.
fn relations(c: &mut Conn, sql: &str) -> Vec<(String, String)> {
    c.query(sql, &[])
        .map(|r| {
            r.rows
                .into_iter()
                .filter_map(|row| {
                    let mut it = row.into_iter();
                    Some((it.next()??, it.next()??))
                })
                .collect()
        })
        .unwrap_or_default()
}

const NAME: &str = "c.oid::text, format('%I.%I', n.nspname, c.relname)";

fn check_indexes(c: &mut Conn, db: &str, out: &mut Checks, stop: &dyn Fn() -> bool) -> Result<()> {
    let sql = format!(
        "SELECT {NAME} FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam \
         WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't' \
         ORDER BY c.oid"
    );
    for (oid, name) in relations(c, &sql) {
        if stop() {
            return Err(super::interrupted());
        }
        out.run += 1;
        out.btree_indexes += 1;
        if let Err(e) = c.query("SELECT bt_index_check($1::oid::regclass, true)", &[&oid]) {
            out.fail(db, "btree", &name, &e.to_string());
        }
    }
    Ok(())
}

fn check_heaps(c: &mut Conn, db: &str, out: &mut Checks, stop: &dyn Fn() -> bool) -> Result<()> {
    let sql = format!(
        "SELECT {NAME} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't' ORDER BY c.oid"
    );
    let q = format!(
        "SELECT format('block %s, offset %s: %s', blkno, offnum, msg) FROM verify_heapam($1::oid::regclass) LIMIT {HEAP_ROWS}"
    );
    for (oid, name) in relations(c, &sql) {
        if stop() {
            return Err(super::interrupted());
        }
        out.run += 1;
        out.heap_relations += 1;
        match c.query(&q, &[&oid]) {
            Ok(r) => {
                for row in r.rows {
                    let msg = row.into_iter().next().flatten().unwrap_or_default();
                    out.fail(db, "heap", &name, &msg);
                }
            }
            Err(e) => out.fail(db, "heap", &name, &e.to_string()),
        }
    }
    Ok(())
}

fn count_tables(c: &mut Conn, db: &str, out: &mut Checks, stop: &dyn Fn() -> bool) -> Result<()> {
    let sql = format!(
        "SELECT {NAME} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND c.relpersistence <> 't' ORDER BY c.oid"
    );
    for (_, name) in relations(c, &sql) {
        if stop() {
            return Err(super::interrupted());
        }
        out.run += 1;
        out.table_counts += 1;
        // `name` is the server's own quoting of a catalog name (format %I): a safe identifier.
        if let Err(e) = c.query(&format!("SELECT count(*) FROM {name}"), &[]) {
            out.fail(db, "count", &name, &e.to_string());
        }
    }
    Ok(())
}
