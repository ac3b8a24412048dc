//! A real local S3 server for tests and benchmarks (moto's `moto_server`, installed by
//! `scripts/install-deps`), on 127.0.0.1 with a free port, killed by pid on Drop (also while
//! a panic unwinds); and [`Gate`], a TCP forwarder that can be cut, to make a server vanish
//! in the middle of requests while its data survives for inspection.
//!
//! ```no_run
//! use pgbookend_testkit::S3Server;
//!
//! let s3 = S3Server::start();
//! s3.create_bucket("backups");
//! // ... run pgbookend with --s3-endpoint s3.endpoint() ...
//! assert!(s3.keys("backups", "").is_empty());
//! ```
//!
//! Environment: `PGBOOKEND_MOTO_SERVER` (the `moto_server` program to run), else
//! `$PGBOOKEND_MOTO_DIR/bin/moto_server` (default `/var/cache/pgbookend/moto` as root, else
//! `~/.cache/pgbookend/moto`), else `moto_server` in `PATH`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::procfs;
use crate::tempdir::TempDir;

/// The `moto_server` program: see the module documentation.
pub fn moto_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PGBOOKEND_MOTO_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let dir = std::env::var_os("PGBOOKEND_MOTO_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if crate::is_root() {
                PathBuf::from("/var/cache/pgbookend/moto")
            } else {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/"));
                home.join(".cache/pgbookend/moto")
            }
        });
    let venv = dir.join("bin/moto_server");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("moto_server")
    }
}

/// A running `moto_server`; stopped on Drop.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    /// The server's working directory and log; removed on Drop.
    dir: TempDir,
}

impl S3Server {
    /// Starts a server on a free port of 127.0.0.1 and waits until it answers. Panics with
    /// the server's log if it cannot.
    pub fn start() -> S3Server {
        let dir = crate::temp_dir("s3");
        let bin = moto_server_bin();
        let mut last = String::new();
        for _ in 0..3 {
            let port = crate::free_port();
            let log_path = dir.path().join(format!("moto.{port}.log"));
            let log = std::fs::File::create(&log_path).expect("create moto log");
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "pgbookend-testkit: cannot run {} ({e}); run scripts/install-deps",
                        bin.display()
                    )
                });
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if http(port, "GET", "/", &[]).is_ok_and(|r| r.0 == 200) {
                    return S3Server {
                        child: Some(child),
                        port,
                        dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: plain kill of the child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            last = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("pgbookend-testkit: moto_server did not start: {last}");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("moto.{}.log", self.port)))
            .unwrap_or_default()
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Creates a bucket (panics on failure). It is public-read-write, so that the harness
    /// can read and write it with plain unsigned requests ([`S3Server::get`], [`S3Server::put`]):
    /// an independent check of what pgbookend's signed client stored.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = http_h(
            self.port,
            "PUT",
            &format!("/{name}"),
            &[("x-amz-acl", "public-read-write")],
            &[],
        )
        .unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
        assert_eq!(
            status,
            200,
            "create bucket {name}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The keys below `prefix` in `bucket`, as the server lists them (first 1000).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = http(
            self.port,
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
            &[],
        )
        .unwrap_or_else(|e| panic!("list {bucket}: {e}"));
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "list {bucket}: {text}");
        text.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(|s| s.to_string())
            .collect()
    }

    /// An object's bytes, or `None` if it does not exist.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = http(self.port, "GET", &format!("/{bucket}/{key}"), &[])
            .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e}"));
        (status == 200).then_some(body)
    }

    /// Stores an object (panics on failure).
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let (status, body) = http(self.port, "PUT", &format!("/{bucket}/{key}"), data)
            .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e}"));
        assert_eq!(
            status,
            200,
            "put {bucket}/{key}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Kills the server now (its data is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            if procfs::alive(pid) {
                // SAFETY: plain kill of the child we started and still own (not yet reaped).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port`, unsigned (moto accepts that); returns status
/// and body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    http_h(port, method, path, &[], body)
}

/// [`http`] with extra headers.
fn http_h(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let mut rest = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(eol) = rest[i..].windows(2).position(|w| w == b"\r\n") {
            let len = usize::from_str_radix(
                String::from_utf8_lossy(&rest[i..i + eol])
                    .split(';')
                    .next()
                    .unwrap_or("0")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if len == 0 {
                break;
            }
            let start = i + eol + 2;
            out.extend_from_slice(&rest[start..(start + len).min(rest.len())]);
            i = start + len + 2;
            if i >= rest.len() {
                break;
            }
        }
        rest = out;
    }
    Ok((status, rest))
}

/// A TCP forwarder from a free port of 127.0.0.1 to a target port. [`Gate::cut`] closes
/// the listener and resets every connection: clients see the server vanish (connections
/// refused and reset) while the server behind keeps its data. [`Gate::down`] does the
/// same for a while: until [`Gate::up`], new connections are accepted and dropped.
pub struct Gate {
    port: u16,
    cut: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Gate {
    /// Starts forwarding to 127.0.0.1:`target`.
    pub fn open(target: u16) -> Gate {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind gate");
        let port = listener.local_addr().expect("gate addr").port();
        listener.set_nonblocking(true).expect("nonblocking gate");
        let cut = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (c2, d2, conns2) = (cut.clone(), down.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !c2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) if d2.load(Ordering::SeqCst) => {
                        let _ = client.shutdown(Shutdown::Both);
                    }
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut list = conns2.lock().unwrap_or_else(|e| e.into_inner());
                        if c2.load(Ordering::SeqCst) {
                            break;
                        }
                        if d2.load(Ordering::SeqCst) {
                            // Went down meanwhile: `down` has reset the list already.
                            let _ = client.shutdown(Shutdown::Both);
                            let _ = server.shutdown(Shutdown::Both);
                            continue;
                        }
                        for (mut from, mut to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ]
                        .into_iter()
                        .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                        {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(Shutdown::Write);
                            });
                        }
                        list.push(client);
                        list.push(server);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Gate {
            port,
            cut,
            down,
            conns,
            accept: Some(accept),
        }
    }

    /// Resets every forwarded connection and drops new ones until [`Gate::up`].
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.reset_all();
    }

    /// Forwards new connections again after [`Gate::down`].
    pub fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn reset_all(&self) {
        let list = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in list {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// `http://127.0.0.1:<gate port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the listener and resets every forwarded connection.
    pub fn cut(&mut self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        self.reset_all();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.cut();
    }
}
