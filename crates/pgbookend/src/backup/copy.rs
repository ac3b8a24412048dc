//! The copy of a built-in backup: one reader thread reads the planned files in order,
//! hashing each whole file, and packs their bytes into objects of at most
//! [`CHUNK_BYTES`]; `jobs` worker threads compress each object and write it to every
//! store. A bounded channel keeps at most about `2 × jobs` objects in memory.

use super::format::{object_name, Compression, Entry, Kind, Object, Piece, CHUNK_BYTES};
use super::pages::{self, PageSettings, Suspect};
use super::plan::Planned;
use super::sink::Sink;
use crate::error::{io_err, Error, Result};
use pgbookend_formats::page::BLCKSZ;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

/// How objects are made.
#[derive(Debug, Clone, Copy)]
pub struct CopySettings {
    pub jobs: usize,
    pub compression: Compression,
    pub level: i32,
    /// Page checks of relation files (data checksums on).
    pub pages: Option<PageSettings>,
}

/// Counters shared with the progress reporter.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_read: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub files: AtomicU64,
    pub objects: AtomicU64,
    /// Pages whose checksum failed twice with the same bytes.
    pub suspects: Mutex<Vec<Suspect>>,
}

/// What the copy produced: the index's entries and objects.
pub struct Copied {
    pub entries: Vec<Entry>,
    pub objects: Vec<Object>,
}

/// One object on its way to the workers.
struct Unit {
    number: u64,
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
}

/// Shared state of one copy.
struct Shared<'a> {
    sinks: &'a [Sink],
    settings: CopySettings,
    counters: &'a Counters,
    stop: &'a AtomicBool,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    objects: Mutex<Vec<Option<Object>>>,
}

impl Shared<'_> {
    fn fail(&self, e: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
}

/// Copies `planned` into every sink. `interrupted` is checked between reads: when it
/// becomes true the copy stops with an error.
pub fn copy(
    planned: &[Planned],
    sinks: &[Sink],
    settings: CopySettings,
    counters: &Counters,
    interrupted: &AtomicBool,
) -> Result<Copied> {
    let jobs = settings.jobs.max(1);
    let shared = Shared {
        sinks,
        settings,
        counters,
        stop: interrupted,
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        objects: Mutex::new(Vec::new()),
    };
    let (tx, rx) = mpsc::sync_channel::<Unit>(jobs);
    let rx = Mutex::new(rx);
    let entries = std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| worker(&shared, &rx));
        }
        let r = read_all(planned, &shared, tx);
        if let Err(e) = &r {
            shared.fail(e.clone());
        }
        r
    });
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(e);
    }
    let entries = entries?;
    let objects = shared
        .objects
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::internal("an object of the copy is missing"))?;
    Ok(Copied { entries, objects })
}

fn worker(shared: &Shared, rx: &Mutex<mpsc::Receiver<Unit>>) {
    loop {
        let unit = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(u) => u,
            Err(_) => return,
        };
        if shared.failed.load(Ordering::SeqCst) {
            continue;
        }
        match store_unit(shared, unit) {
            Ok((n, o)) => {
                let mut objs = shared.objects.lock().unwrap_or_else(|p| p.into_inner());
                if objs.len() <= n {
                    objs.resize(n + 1, None);
                }
                objs[n] = Some(o);
            }
            Err(e) => shared.fail(e),
        }
    }
}

fn store_unit(shared: &Shared, unit: Unit) -> Result<(usize, Object)> {
    let stored = match shared.settings.compression {
        Compression::Zstd => zstd::bulk::compress(&unit.bytes, shared.settings.level)
            .map_err(|e| Error::internal(format!("cannot compress: {e}")))?,
        Compression::Lz4 => lz4(&unit.bytes)?,
        Compression::None => unit.bytes,
    };
    let name = object_name(unit.number);
    let sha256 = hex::encode(Sha256::digest(&stored));
    let stored_size = stored.len() as u64;
    for sink in shared.sinks {
        sink.put(&name, stored.clone())?;
    }
    shared
        .counters
        .bytes_stored
        .fetch_add(stored_size, Ordering::Relaxed);
    shared.counters.objects.fetch_add(1, Ordering::Relaxed);
    Ok((
        unit.number as usize,
        Object {
            name,
            stored_size,
            sha256,
            pieces: unit.pieces,
        },
    ))
}

/// One LZ4 frame of `bytes`, with its content checksum.
fn lz4(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
    let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(
        info,
        Vec::with_capacity(bytes.len() / 2 + 1024),
    );
    enc.write_all(bytes)
        .map_err(|e| Error::internal(format!("cannot compress: {e}")))?;
    enc.finish()
        .map_err(|e| Error::internal(format!("cannot compress: {e}")))
}

/// The reader's object being filled.
struct Packer<'a> {
    shared: &'a Shared<'a>,
    tx: mpsc::SyncSender<Unit>,
    current: Unit,
}

impl Packer<'_> {
    /// Sends the current object (if it holds anything) and starts the next one.
    fn flush(&mut self) -> Result<()> {
        if self.current.bytes.is_empty() {
            return Ok(());
        }
        let next = Unit {
            number: self.current.number + 1,
            bytes: Vec::with_capacity(CHUNK_BYTES as usize),
            pieces: Vec::new(),
        };
        let unit = std::mem::replace(&mut self.current, next);
        self.tx
            .send(unit)
            .map_err(|_| Error::internal("the copy's workers are gone"))
    }

    fn check(&self) -> Result<()> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(Error::new(
                crate::error::Class::Void,
                "the backup was interrupted by a signal",
            ));
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(Error::internal("a worker of the copy failed"));
        }
        Ok(())
    }
}

fn read_all(
    planned: &[Planned],
    shared: &Shared,
    tx: mpsc::SyncSender<Unit>,
) -> Result<Vec<Entry>> {
    let mut p = Packer {
        shared,
        tx,
        current: Unit {
            number: 0,
            bytes: Vec::with_capacity(CHUNK_BYTES as usize),
            pieces: Vec::new(),
        },
    };
    let mut entries = Vec::with_capacity(planned.len());
    for pl in planned {
        p.check()?;
        let index = entries.len() as u32;
        let entry = match pl.kind {
            Kind::File => read_file(pl, index, &mut p)?,
            _ => meta_entry(pl)?,
        };
        if let Some(e) = entry {
            entries.push(e);
        }
    }
    p.check()?;
    p.flush()?;
    Ok(entries)
}

/// A directory or link entry (`None` when it vanished).
fn meta_entry(pl: &Planned) -> Result<Option<Entry>> {
    let md = match std::fs::symlink_metadata(&pl.abs) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot stat", &pl.abs, e)),
    };
    Ok(Some(Entry {
        path: pl.path.clone(),
        kind: pl.kind,
        size: 0,
        mode: md.mode() & 0o7777,
        mtime: md.mtime(),
        sha256: None,
        target: pl.target.clone(),
    }))
}

/// Reads one file into the packer (`None` when it vanished before it was opened).
fn read_file(pl: &Planned, index: u32, p: &mut Packer) -> Result<Option<Entry>> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&pl.abs)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot open", &pl.abs, e)),
    };
    let md = f
        .metadata()
        .map_err(|e| io_err("cannot stat", &pl.abs, e))?;
    if !md.is_file() {
        return Ok(None);
    }
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let rel = p
        .shared
        .settings
        .pages
        .and_then(|ps| pages::relation_segment(&pl.path).map(|seg| (ps, seg)));
    // Relation files are read a whole number of pages at a time, so that each read
    // starts on a page boundary.
    let align = if rel.is_some() { BLCKSZ } else { 1 };
    let mut suspects = Vec::new();
    loop {
        p.check()?;
        if CHUNK_BYTES as usize - p.current.bytes.len() < align {
            p.flush()?;
        }
        let mut room = CHUNK_BYTES as usize - p.current.bytes.len();
        room -= room % align;
        let start = p.current.bytes.len();
        p.current.bytes.resize(start + room, 0);
        let n = read_some(&mut f, &mut p.current.bytes[start..]);
        p.current.bytes.truncate(start + *n.as_ref().unwrap_or(&0));
        let n = n.map_err(|e| io_err("cannot read", &pl.abs, e))?;
        if n == 0 {
            break;
        }
        if let Some((ps, seg)) = rel {
            let buf = &mut p.current.bytes[start..start + n];
            pages::check(&f, buf, size, seg, ps, &pl.path, &mut suspects);
        }
        hash.update(&p.current.bytes[start..start + n]);
        add_piece(&mut p.current.pieces, index, size, n as u64);
        size += n as u64;
        p.shared
            .counters
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    p.shared.counters.files.fetch_add(1, Ordering::Relaxed);
    if !suspects.is_empty() {
        let mut all = p
            .shared
            .counters
            .suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.extend(suspects);
    }
    Ok(Some(Entry {
        path: pl.path.clone(),
        kind: Kind::File,
        size,
        mode: md.mode() & 0o7777,
        mtime: md.mtime(),
        sha256: Some(hex::encode(hash.finalize())),
        target: None,
    }))
}

/// Reads until `buf` is full or the file ends.
fn read_some(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Extends the last piece when it is of the same file, else starts a new one.
fn add_piece(pieces: &mut Vec<Piece>, entry: u32, offset: u64, len: u64) {
    if let Some(last) = pieces.last_mut() {
        if last.entry == entry && last.offset + last.len == offset {
            last.len += len;
            return;
        }
    }
    pieces.push(Piece { entry, offset, len });
}
