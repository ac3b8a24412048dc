//! A small safe wrapper over the system's libpq: one connection, text queries, async heartbeat.
//!
//! libpq is used (rather than a Rust wire-protocol client) because users expect the
//! libpq conventions to the letter: `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`,
//! `PGPASSFILE`/`.pgpass`, `PGSERVICE`, `PGSSLMODE`, conninfo strings and URIs. Passwords
//! therefore never have to pass through pgbookend's command line.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::ptr;

#[repr(C)]
struct PGconn {
    _private: [u8; 0],
}
#[repr(C)]
struct PGresult {
    _private: [u8; 0],
}

type Oid = c_uint;

/// Declares libpq's functions as a table of pointers resolved with `dlopen` on the first
/// connection, plus a wrapper of the same name for each. libpq and the dozens of
/// libraries it pulls in (TLS, Kerberos, LDAP) are therefore loaded only by the commands
/// that connect, not by `archive-get`/`archive-push`, which PostgreSQL starts once per WAL
/// file and for which loading them was about 2.5 ms of every call.
macro_rules! libpq_api {
    ($( fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? ; )*) => {
        #[allow(non_snake_case)]
        struct Api {
            $( $name: unsafe extern "C" fn($($ty),*) $(-> $ret)?, )*
        }

        impl Api {
            /// Resolves every function in `lib`, a handle from `dlopen`.
            fn resolve(lib: *mut c_void) -> Result<Api, String> {
                Ok(Api {
                    $( $name: {
                        let sym = concat!(stringify!($name), "\0");
                        // SAFETY: `lib` is a live handle and `sym` is NUL-terminated.
                        let p = unsafe { libc::dlsym(lib, sym.as_ptr().cast()) };
                        if p.is_null() {
                            return Err(format!("it has no function {}", stringify!($name)));
                        }
                        // SAFETY: the symbol is libpq's function of this exact signature
                        // (libpq-fe.h), and the library is never unloaded.
                        unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) $(-> $ret)?>(p)
                        }
                    }, )*
                })
            }
        }

        $(
            // libpq's own signatures (PQexecParams has eight parameters).
            #[allow(non_snake_case, clippy::too_many_arguments)]
            unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                (api().$name)($($arg),*)
            }
        )*
    };
}

libpq_api! {

    fn PQconnectdbParams(
        keywords: *const *const c_char,
        values: *const *const c_char,
        expand_dbname: c_int,
    ) -> *mut PGconn;
    fn PQstatus(conn: *const PGconn) -> c_int;
    fn PQerrorMessage(conn: *const PGconn) -> *const c_char;
    fn PQfinish(conn: *mut PGconn);
    fn PQserverVersion(conn: *const PGconn) -> c_int;
    fn PQexecParams(
        conn: *mut PGconn,
        command: *const c_char,
        n_params: c_int,
        param_types: *const Oid,
        param_values: *const *const c_char,
        param_lengths: *const c_int,
        param_formats: *const c_int,
        result_format: c_int,
    ) -> *mut PGresult;
    fn PQresultStatus(res: *const PGresult) -> c_int;
    fn PQresultErrorMessage(res: *const PGresult) -> *const c_char;
    fn PQresultErrorField(res: *const PGresult, fieldcode: c_int) -> *const c_char;
    fn PQntuples(res: *const PGresult) -> c_int;
    fn PQnfields(res: *const PGresult) -> c_int;
    fn PQfname(res: *const PGresult, col: c_int) -> *const c_char;
    fn PQgetvalue(res: *const PGresult, row: c_int, col: c_int) -> *const c_char;
    fn PQgetlength(res: *const PGresult, row: c_int, col: c_int) -> c_int;
    fn PQgetisnull(res: *const PGresult, row: c_int, col: c_int) -> c_int;
    fn PQclear(res: *mut PGresult);
    fn PQsocket(conn: *const PGconn) -> c_int;
    fn PQconsumeInput(conn: *mut PGconn) -> c_int;
    fn PQisBusy(conn: *mut PGconn) -> c_int;
    fn PQsendQuery(conn: *mut PGconn, query: *const c_char) -> c_int;
    fn PQgetResult(conn: *mut PGconn) -> *mut PGresult;
    fn PQhost(conn: *const PGconn) -> *const c_char;
    fn PQport(conn: *const PGconn) -> *const c_char;
    fn PQuser(conn: *const PGconn) -> *const c_char;
    fn PQdb(conn: *const PGconn) -> *const c_char;
    fn PQsetNoticeProcessor(
        conn: *mut PGconn,
        proc_: Option<extern "C" fn(*mut c_void, *const c_char)>,
        arg: *mut c_void,
    ) -> *mut c_void;
}

/// The sonames tried, newest ABI first (libpq's soname has been 5 since PostgreSQL 8.x).
const LIBPQ_NAMES: [&str; 2] = ["libpq.so.5\0", "libpq.so\0"];

static LIBPQ: std::sync::OnceLock<Result<Api, String>> = std::sync::OnceLock::new();

/// Loads libpq once (later calls return the first outcome).
fn load() -> Result<&'static Api, PqError> {
    let loaded = LIBPQ.get_or_init(|| {
        let mut why = String::new();
        for name in LIBPQ_NAMES {
            // SAFETY: `name` is NUL-terminated; the handle is kept for the process's life.
            let lib =
                unsafe { libc::dlopen(name.as_ptr().cast(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if lib.is_null() {
                // SAFETY: dlerror returns a NUL-terminated message or NULL.
                why = cstr_lossy(unsafe { libc::dlerror() });
                continue;
            }
            return Api::resolve(lib).map_err(|e| format!("{}: {e}", name.trim_end_matches('\0')));
        }
        Err(why)
    });
    loaded.as_ref().map_err(|why| {
        PqError::new(
            format!("cannot load libpq ({why}); install it (Debian: apt-get install libpq5)"),
            None,
        )
    })
}

/// The loaded functions. Every wrapper is reached only through a [`Conn`], which exists
/// only after [`load`] succeeded.
fn api() -> &'static Api {
    match LIBPQ.get() {
        Some(Ok(api)) => api,
        _ => unreachable!("libpq is loaded before any connection exists"),
    }
}

const CONNECTION_OK: c_int = 0;
const PGRES_COMMAND_OK: c_int = 1;
const PGRES_TUPLES_OK: c_int = 2;
const PG_DIAG_SQLSTATE: c_int = b'C' as c_int;

/// A failed libpq call: the server's or libpq's message, and the SQLSTATE when there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PqError {
    pub message: String,
    pub sqlstate: Option<String>,
}

impl PqError {
    fn new(message: String, sqlstate: Option<String>) -> Self {
        PqError {
            message: message.trim_end().to_string(),
            sqlstate,
        }
    }
    /// True for "insufficient privilege" (42501): the role lacks a grant.
    pub fn is_permission_denied(&self) -> bool {
        self.sqlstate.as_deref() == Some("42501")
    }
}

fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libpq returns NUL-terminated strings that live as long as the conn/result.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

extern "C" fn log_notice(_arg: *mut c_void, message: *const c_char) {
    // Notices (e.g. "WAL archiving is enabled; you must ensure ...") go to the log.
    let text = cstr_lossy(message);
    tracing::info!(target: "server", "{}", text.trim_end());
}

/// One open connection. Closing it (drop) ends the server session.
pub struct Conn {
    raw: *mut PGconn,
}

// The agent owns its connection from a single thread; moving it across threads is fine.
unsafe impl Send for Conn {}

/// The rows of a query result, as text (NULL is `None`).
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// The value at (row, column name); `None` if absent or NULL.
    pub fn get(&self, row: usize, col: &str) -> Option<&str> {
        let c = self.columns.iter().position(|n| n == col)?;
        self.rows.get(row)?.get(c)?.as_deref()
    }
    /// The first column of the first row: for single-value queries.
    pub fn scalar(&self) -> Option<&str> {
        self.rows.first()?.first()?.as_deref()
    }
}

impl Conn {
    /// Connects with libpq's own rules for `expand_dbname`: `defaults` are passed as
    /// keywords, so they win over the `PG*` environment (which libpq uses only for what is
    /// not given); anything in `conninfo` (a conninfo string or URI; may be empty) comes
    /// after them and overrides them.
    pub fn connect(defaults: &[(&str, &str)], conninfo: Option<&str>) -> Result<Conn, PqError> {
        let mut keys: Vec<CString> = Vec::new();
        let mut vals: Vec<CString> = Vec::new();
        let to_c = |s: &str| {
            CString::new(s)
                .map_err(|_| PqError::new("connection parameter contains a NUL byte".into(), None))
        };
        for (k, v) in defaults {
            keys.push(to_c(k)?);
            vals.push(to_c(v)?);
        }
        if let Some(ci) = conninfo.filter(|c| !c.trim().is_empty()) {
            keys.push(to_c("dbname")?);
            vals.push(to_c(ci)?);
        }
        let mut kp: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let mut vp: Vec<*const c_char> = vals.iter().map(|v| v.as_ptr()).collect();
        kp.push(ptr::null());
        vp.push(ptr::null());
        load()?;
        // SAFETY: both arrays are NULL-terminated and outlive the call.
        let raw = unsafe { PQconnectdbParams(kp.as_ptr(), vp.as_ptr(), 1) };
        if raw.is_null() {
            return Err(PqError::new(
                "libpq could not allocate a connection".into(),
                None,
            ));
        }
        let conn = Conn { raw };
        // SAFETY: raw is a valid PGconn.
        if unsafe { PQstatus(raw) } != CONNECTION_OK {
            return Err(PqError::new(conn.error_message(), None));
        }
        // SAFETY: valid conn; the processor is a plain function with no state.
        unsafe { PQsetNoticeProcessor(raw, Some(log_notice), ptr::null_mut()) };
        Ok(conn)
    }

    fn error_message(&self) -> String {
        // SAFETY: valid conn.
        cstr_lossy(unsafe { PQerrorMessage(self.raw) })
    }

    /// The server's version number, e.g. 150004 or 180001.
    pub fn server_version(&self) -> u32 {
        // SAFETY: valid conn.
        unsafe { PQserverVersion(self.raw) as u32 }
    }

    /// Where we are connected, for logs and messages (never includes a password).
    pub fn describe(&self) -> String {
        // SAFETY: valid conn.
        unsafe {
            format!(
                "host={} port={} user={} dbname={}",
                cstr_lossy(PQhost(self.raw)),
                cstr_lossy(PQport(self.raw)),
                cstr_lossy(PQuser(self.raw)),
                cstr_lossy(PQdb(self.raw))
            )
        }
    }

    /// True while libpq considers the connection usable.
    pub fn is_ok(&self) -> bool {
        // SAFETY: valid conn.
        unsafe { PQstatus(self.raw) == CONNECTION_OK }
    }

    /// The socket's file descriptor, for poll(2).
    pub fn socket(&self) -> c_int {
        // SAFETY: valid conn.
        unsafe { PQsocket(self.raw) }
    }

    /// Runs one statement with text parameters and waits for its result.
    pub fn query(&mut self, sql: &str, params: &[&str]) -> Result<Rows, PqError> {
        let sql_c = CString::new(sql)
            .map_err(|_| PqError::new("query contains a NUL byte".into(), None))?;
        let pc: Vec<CString> = params
            .iter()
            .map(|p| CString::new(*p))
            .collect::<Result<_, _>>()
            .map_err(|_| PqError::new("parameter contains a NUL byte".into(), None))?;
        let pp: Vec<*const c_char> = pc.iter().map(|p| p.as_ptr()).collect();
        // SAFETY: all pointers are valid for the duration of the call.
        let res = unsafe {
            PQexecParams(
                self.raw,
                sql_c.as_ptr(),
                pp.len() as c_int,
                ptr::null(),
                if pp.is_empty() {
                    ptr::null()
                } else {
                    pp.as_ptr()
                },
                ptr::null(),
                ptr::null(),
                0,
            )
        };
        self.take_result(res)
    }

    fn take_result(&self, res: *mut PGresult) -> Result<Rows, PqError> {
        if res.is_null() {
            return Err(PqError::new(self.error_message(), None));
        }
        // SAFETY: res is a valid result until PQclear below.
        let out = unsafe {
            let status = PQresultStatus(res);
            if status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK {
                let msg = cstr_lossy(PQresultErrorMessage(res));
                let state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                let sqlstate = if state.is_null() {
                    None
                } else {
                    Some(cstr_lossy(state))
                };
                let msg = if msg.is_empty() {
                    self.error_message()
                } else {
                    msg
                };
                Err(PqError::new(msg, sqlstate))
            } else {
                let nf = PQnfields(res);
                let nt = PQntuples(res);
                let columns = (0..nf).map(|c| cstr_lossy(PQfname(res, c))).collect();
                let mut rows = Vec::with_capacity(nt as usize);
                for r in 0..nt {
                    let mut row = Vec::with_capacity(nf as usize);
                    for c in 0..nf {
                        if PQgetisnull(res, r, c) == 1 {
                            row.push(None);
                        } else {
                            let len = PQgetlength(res, r, c) as usize;
                            let p = PQgetvalue(res, r, c) as *const u8;
                            let bytes = std::slice::from_raw_parts(p, len);
                            row.push(Some(String::from_utf8_lossy(bytes).into_owned()));
                        }
                    }
                    rows.push(row);
                }
                Ok(Rows { columns, rows })
            }
        };
        // SAFETY: res came from libpq and is cleared once.
        unsafe { PQclear(res) };
        out
    }

    /// Sends a query without waiting (for the heartbeat). Finish it with [`Conn::poll_result`].
    pub fn send(&mut self, sql: &str) -> Result<(), PqError> {
        let sql_c = CString::new(sql)
            .map_err(|_| PqError::new("query contains a NUL byte".into(), None))?;
        // SAFETY: valid conn and string.
        if unsafe { PQsendQuery(self.raw, sql_c.as_ptr()) } != 1 {
            return Err(PqError::new(self.error_message(), None));
        }
        Ok(())
    }

    /// Reads what the server sent. Returns Ok(Some(rows)) when a sent query is complete,
    /// Ok(None) when more input is needed, Err when the connection or query failed.
    /// Also used when no query is pending, to notice a server that closed the session.
    pub fn poll_result(&mut self) -> Result<Option<Rows>, PqError> {
        // SAFETY: valid conn.
        if unsafe { PQconsumeInput(self.raw) } != 1 || !self.is_ok() {
            return Err(PqError::new(self.error_message(), None));
        }
        // SAFETY: valid conn.
        if unsafe { PQisBusy(self.raw) } == 1 {
            return Ok(None);
        }
        let mut last: Option<Result<Rows, PqError>> = None;
        loop {
            // SAFETY: valid conn; not busy, so this does not block.
            let res = unsafe { PQgetResult(self.raw) };
            if res.is_null() {
                break;
            }
            last = Some(self.take_result(res));
        }
        match last {
            None => Ok(None),
            Some(Ok(rows)) => Ok(Some(rows)),
            Some(Err(e)) => Err(e),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: raw came from PQconnectdbParams and is finished once.
        unsafe { PQfinish(self.raw) };
    }
}
