//! The copy of a built-in backup: one reader thread reads the planned files in order,
//! hashing each whole file, and packs their bytes into objects of at most
//! [`CHUNK_BYTES`]; `jobs` worker threads compress each object and write it to every
//! store. A bounded channel keeps at most about `2 × jobs` objects in memory.
//!
//! CPU per byte is what limits a backup on a small machine, so nothing is done twice:
//! the reader reads straight into buffers that the workers hand back once an object is
//! compressed (no zero-filling, no fresh pages per object), each worker keeps one zstd
//! context and one output buffer for the whole copy, and an object is written to the
//! sinks from that buffer without a copy.

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
    /// A buffer of [`CHUNK_BYTES`] bytes; the object is its first `filled`.
    bytes: Vec<u8>,
    filled: usize,
    pieces: Vec<Piece>,
}

/// A new buffer of [`CHUNK_BYTES`] bytes (zeroed by the allocator, once in its life).
fn new_buffer() -> Vec<u8> {
    vec![0u8; CHUNK_BYTES as usize]
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
    // Buffers go back to the reader through `free`: the reader makes a new one only when
    // every buffer is in use (one being filled, `jobs` in the channel, one per worker
    // being compressed), so there are never more than `2 × jobs + 1`.
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let entries = std::thread::scope(|s| {
        for _ in 0..jobs {
            let free = free_tx.clone();
            s.spawn(|| worker(&shared, &rx, free));
        }
        drop(free_tx);
        let r = read_all(planned, &shared, tx, free_rx);
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

fn worker(shared: &Shared, rx: &Mutex<mpsc::Receiver<Unit>>, free: mpsc::Sender<Vec<u8>>) {
    let mut z = match shared.settings.compression {
        Compression::Zstd => match zstd::bulk::Compressor::new(shared.settings.level) {
            Ok(c) => Some(c),
            Err(e) => {
                shared.fail(Error::internal(format!("cannot compress: {e}")));
                None
            }
        },
        Compression::Lz4 | Compression::None => None,
    };
    let mut out = Vec::new();
    loop {
        let unit = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(u) => u,
            Err(_) => return,
        };
        if shared.failed.load(Ordering::SeqCst) {
            continue;
        }
        let r = store_unit(shared, unit, z.as_mut(), &mut out, &free);
        match r {
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

/// Compresses `unit` (with `z`, into `out`) and writes it to every sink; its buffer goes
/// back to the reader through `free`.
fn store_unit(
    shared: &Shared,
    unit: Unit,
    z: Option<&mut zstd::bulk::Compressor<'static>>,
    out: &mut Vec<u8>,
    free: &mpsc::Sender<Vec<u8>>,
) -> Result<(usize, Object)> {
    let Unit {
        number,
        bytes,
        filled,
        pieces,
    } = unit;
    let stored: &[u8] = match (shared.settings.compression, z) {
        (Compression::Zstd, Some(z)) => {
            out.clear();
            out.reserve(zstd::zstd_safe::compress_bound(filled));
            z.compress_to_buffer(&bytes[..filled], out)
                .map_err(|e| Error::internal(format!("cannot compress: {e}")))?;
            // The reader may be waiting for a buffer: give this one back at once.
            let _ = free.send(bytes);
            out
        }
        (Compression::Zstd, None) => return Err(Error::internal("no zstd context")),
        (Compression::Lz4, _) => {
            out.clear();
            lz4(&bytes[..filled], out)?;
            let _ = free.send(bytes);
            out
        }
        (Compression::None, _) => {
            *out = bytes;
            out.truncate(filled);
            out
        }
    };
    let name = object_name(number);
    let sha256 = hex::encode(Sha256::digest(stored));
    let stored_size = stored.len() as u64;
    for sink in shared.sinks {
        sink.send(&name, stored)?;
    }
    shared
        .counters
        .bytes_stored
        .fetch_add(stored_size, Ordering::Relaxed);
    shared.counters.objects.fetch_add(1, Ordering::Relaxed);
    Ok((
        number as usize,
        Object {
            name,
            stored_size,
            sha256,
            pieces,
        },
    ))
}

/// One LZ4 frame of `bytes`, with its content checksum, into `out`.
fn lz4(bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
    use std::io::Write;
    let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
    let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
    enc.write_all(bytes)
        .map_err(|e| Error::internal(format!("cannot compress: {e}")))?;
    enc.finish()
        .map_err(|e| Error::internal(format!("cannot compress: {e}")))?;
    Ok(())
}

/// The reader's object being filled.
struct Packer<'a> {
    shared: &'a Shared<'a>,
    tx: mpsc::SyncSender<Unit>,
    free: mpsc::Receiver<Vec<u8>>,
    current: Unit,
}

impl Packer<'_> {
    /// Sends the current object (if it holds anything) and starts the next one.
    fn flush(&mut self) -> Result<()> {
        if self.current.filled == 0 {
            return Ok(());
        }
        // The next buffer is taken after the send: while the send waits, a worker may
        // hand one back, and the reader holds only one buffer at a time.
        let next = Unit {
            number: self.current.number + 1,
            bytes: Vec::new(),
            filled: 0,
            pieces: Vec::new(),
        };
        let unit = std::mem::replace(&mut self.current, next);
        self.tx
            .send(unit)
            .map_err(|_| Error::internal("the copy's workers are gone"))?;
        self.current.bytes = self.free.try_recv().unwrap_or_else(|_| new_buffer());
        Ok(())
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
    free: mpsc::Receiver<Vec<u8>>,
) -> Result<Vec<Entry>> {
    let mut p = Packer {
        shared,
        tx,
        free,
        current: Unit {
            number: 0,
            bytes: new_buffer(),
            filled: 0,
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
        if CHUNK_BYTES as usize - p.current.filled < align {
            p.flush()?;
        }
        let mut room = CHUNK_BYTES as usize - p.current.filled;
        room -= room % align;
        let start = p.current.filled;
        let n = read_some(&mut f, &mut p.current.bytes[start..start + room])
            .map_err(|e| io_err("cannot read", &pl.abs, e))?;
        p.current.filled = start + n;
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
