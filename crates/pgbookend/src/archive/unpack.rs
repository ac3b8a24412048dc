//! Unpacking an archived object into a file on three threads, a pipeline: the caller's
//! thread decodes the zstd stream straight into pieces of [`PIECE_BYTES`], a second
//! thread hashes each piece (SHA-256) and a third writes it, then hands its buffer back,
//! so that decoding, hashing and writing (each a third of the work) overlap on two cores.
//! For a caller that waits for the file (`archive-get` as `restore_command`), the decoder
//! is kept on its CPU and the two helpers on the others ([`Cpus`]): left to itself, the
//! scheduler often wakes a helper on the decoder's CPU, where they take turns while the
//! other CPU idles (one call in two took 20-25 ms instead of 15 when started from a shell
//! loop, as PostgreSQL starts `restore_command`).
//! At most [`PIECES`] pieces exist, whatever the object claims; the zstd window is capped
//! at [`WINDOW_LOG_MAX`] and the output at `cap` bytes.

use crate::bundle::read::WINDOW_LOG_MAX;
use crate::error::Error;
use sha2::Digest;
use std::io::{self, Write};
use std::sync::mpsc;
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

/// The size of one piece of unpacked bytes (one write): zstd's largest block, so that
/// the hasher starts, and the writer ends, at most one small piece behind the decoder
/// (with 1 MiB pieces that lag was about a millisecond of every call).
pub const PIECE_BYTES: usize = 1 << 17;
/// Pieces in use at once (1.5 MiB): one being decoded, one hashed, one written, the rest
/// queued between them.
const PIECES: usize = 12;

/// What an object unpacked to.
pub struct Unpacked {
    pub file: std::fs::File,
    pub sha256: String,
    pub size: u64,
}

/// Why unpacking failed.
pub enum Failure {
    /// The object is not a valid zstd stream, or unpacks to more than `cap` bytes.
    Damaged(String),
    /// Writing the file failed.
    Write(io::Error),
    /// `feed` failed (reading the object; a decoding error it met is a check error).
    Source(Error),
}

/// Unpacks into `out` what `feed` writes: the compressed object, `feed` returning
/// whether the object was there. `Ok(None)` when it was not. `apart`: keep the threads
/// on different CPUs (for a caller that waits; not for a background worker, whose
/// decoder must stay free to move away from the server's busy CPU).
pub fn unpack(
    out: std::fs::File,
    cap: u64,
    apart: bool,
    feed: impl FnOnce(&mut dyn Write) -> Result<bool, Error>,
) -> Result<Option<Unpacked>, Failure> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(PIECES);
    let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Vec<u8>>(PIECES);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let cpus = if apart { Cpus::apart() } else { None };
    let helpers = cpus.as_ref().map(|c| c.helpers);
    std::thread::scope(|sc| {
        let hasher = sc.spawn(move || {
            bind(helpers.as_ref());
            hash(rx, hashed_tx)
        });
        let writer = sc.spawn(move || {
            bind(helpers.as_ref());
            write(out, hashed_rx, free_tx)
        });
        let mut dec = Decoding::new(tx, free_rx, cap)?;
        bind(cpus.as_ref().map(|c| &c.decoder));
        let fed = feed(&mut dec);
        let ended = match &fed {
            Ok(true) => dec.finish(),
            _ => Ok(()),
        };
        bind(cpus.as_ref().map(|c| &c.allowed));
        drop(dec);
        let sha = hasher.join();
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
        // A write error surfaces to the decoder as a closed channel: report the cause.
        let (file, size) = written.map_err(Failure::Write)?;
        let sha = sha.map_err(|_| Failure::Write(io::Error::other("the hash thread panicked")))?;
        if !fed.map_err(Failure::Source)? {
            return Ok(None);
        }
        ended?;
        Ok(Some(Unpacked {
            file,
            sha256: hex::encode(sha.finalize()),
            size,
        }))
    })
}

/// Where the threads of one call run: the decoder on the CPU it started on, the helpers
/// on the other CPUs it may use; `allowed` is restored when decoding ends.
struct Cpus {
    allowed: libc::cpu_set_t,
    decoder: libc::cpu_set_t,
    helpers: libc::cpu_set_t,
}

impl Cpus {
    /// `None` when this thread may use fewer than two CPUs (or the kernel does not say).
    fn apart() -> Option<Cpus> {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: cpu_set_t is plain data, zeroes are an empty set; the kernel writes at
        // most `size` bytes into it; sched_getcpu has no argument.
        let (allowed, me) = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut set) != 0 {
                return None;
            }
            (set, libc::sched_getcpu())
        };
        let me = usize::try_from(me).ok().filter(|&c| c < 8 * size)?;
        // SAFETY: `me` is below the set's capacity (checked above).
        unsafe {
            if !libc::CPU_ISSET(me, &allowed) || libc::CPU_COUNT(&allowed) < 2 {
                return None;
            }
            let mut decoder: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(me, &mut decoder);
            let mut helpers = allowed;
            libc::CPU_CLR(me, &mut helpers);
            Some(Cpus {
                allowed,
                decoder,
                helpers,
            })
        }
    }
}

/// Binds the calling thread to `set` (best effort: a refusal only costs speed).
fn bind(set: Option<&libc::cpu_set_t>) {
    if let Some(set) = set {
        // SAFETY: a valid set of the size given, for the calling thread (0).
        let _ = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    }
}

/// The second thread: hashes each piece and passes it on to the writer (until either
/// side closes).
fn hash(rx: mpsc::Receiver<Vec<u8>>, tx: mpsc::SyncSender<Vec<u8>>) -> sha2::Sha256 {
    let mut sha = sha2::Sha256::new();
    for piece in rx {
        sha.update(&piece);
        if tx.send(piece).is_err() {
            break;
        }
    }
    sha
}

/// The third thread: writes each piece, handing its buffer back to the decoder.
fn write(
    mut out: std::fs::File,
    rx: mpsc::Receiver<Vec<u8>>,
    free: mpsc::Sender<Vec<u8>>,
) -> io::Result<(std::fs::File, u64)> {
    let mut n = 0u64;
    for piece in rx {
        out.write_all(&piece)?;
        n += piece.len() as u64;
        let _ = free.send(piece);
    }
    Ok((out, n))
}

/// The decoding side, fed compressed bytes through [`Write`].
struct Decoding {
    dec: Decoder<'static>,
    piece: Vec<u8>,
    tx: mpsc::SyncSender<Vec<u8>>,
    free: mpsc::Receiver<Vec<u8>>,
    made: usize,
    /// Bytes unpacked so far, and the most allowed.
    n: u64,
    cap: u64,
    /// Whether the last call that made progress ended a frame.
    ended: bool,
}

impl Decoding {
    fn new(
        tx: mpsc::SyncSender<Vec<u8>>,
        free: mpsc::Receiver<Vec<u8>>,
        cap: u64,
    ) -> Result<Decoding, Failure> {
        let start = |e: io::Error| Failure::Write(io::Error::other(format!("cannot unpack: {e}")));
        let mut dec = Decoder::new().map_err(start)?;
        dec.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .map_err(start)?;
        Ok(Decoding {
            dec,
            piece: Vec::with_capacity(PIECE_BYTES),
            tx,
            free,
            made: 1,
            n: 0,
            cap,
            ended: false,
        })
    }

    /// Hands the current piece to the writer and takes an empty one.
    fn ship(&mut self) -> io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        self.n += self.piece.len() as u64;
        if self.n > self.cap {
            return Err(io::Error::other(format!(
                "it unpacks to more than {} bytes",
                self.cap
            )));
        }
        let next = match self.free.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < PIECES => {
                self.made += 1;
                Vec::with_capacity(PIECE_BYTES)
            }
            Err(_) => self
                .free
                .recv()
                .map_err(|_| io::Error::other("the writer stopped"))?,
        };
        let full = std::mem::replace(&mut self.piece, next);
        self.piece.clear();
        self.tx
            .send(full)
            .map_err(|_| io::Error::other("the writer stopped"))
    }

    /// Decodes what `input` holds (all of it), shipping full pieces.
    fn decode(&mut self, input: &[u8]) -> io::Result<()> {
        let mut inb = InBuffer::around(input);
        loop {
            let (pos, read) = (self.piece.len(), inb.pos());
            let mut out = OutBuffer::around_pos(&mut self.piece, pos);
            let hint = self.dec.run(&mut inb, &mut out)?;
            let full = out.pos() == out.capacity();
            if out.pos() > pos || inb.pos() > read {
                self.ended = hint == 0;
            }
            if full {
                self.ship()?;
            }
            if inb.pos() == input.len() && !full {
                return Ok(());
            }
        }
    }

    /// After the last input: ships the rest; a stream that ends inside a frame is damaged.
    fn finish(&mut self) -> Result<(), Failure> {
        let damaged = |e: io::Error| Failure::Damaged(e.to_string());
        self.decode(&[]).map_err(damaged)?;
        if !self.ended {
            return Err(Failure::Damaged("it ends inside a zstd frame".into()));
        }
        self.ship().map_err(damaged)?;
        // Closing the channel ends the writer.
        let (tx, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.tx, tx));
        Ok(())
    }
}

impl Write for Decoding {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.decode(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(packed: &[u8], cap: u64) -> Result<Unpacked, String> {
        let f = tempfile::tempfile().unwrap();
        let feed = |w: &mut dyn Write| {
            w.write_all(packed)
                .map_err(|e| Error::internal(e.to_string()))?;
            Ok(true)
        };
        match unpack(f, cap, true, feed) {
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err("none".into()),
            Err(Failure::Damaged(d)) => Err(format!("damaged: {d}")),
            Err(Failure::Write(e)) => Err(format!("write: {e}")),
            Err(Failure::Source(e)) => Err(format!("feed: {e}")),
        }
    }

    /// Round trip across piece boundaries, two frames, a cap, a truncated frame.
    #[test]
    fn unpacks_hashes_and_refuses() {
        let data: Vec<u8> = (0..3 * PIECE_BYTES + 12345)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        let mut packed = zstd::bulk::compress(&data, 3).unwrap();
        let mut u = run(&packed, data.len() as u64).unwrap();
        assert_eq!(u.size, data.len() as u64);
        assert_eq!(u.sha256, hex::encode(sha2::Sha256::digest(&data)));
        let mut back = Vec::new();
        use std::io::{Read, Seek};
        u.file.rewind().unwrap();
        u.file.read_to_end(&mut back).unwrap();
        assert!(back == data);
        assert!(run(&packed, data.len() as u64 - 1)
            .err()
            .unwrap()
            .contains("more than"));
        // A frame that ends exactly where a piece is full.
        let exact = zstd::bulk::compress(&data[..2 * PIECE_BYTES], 3).unwrap();
        assert_eq!(run(&exact, u64::MAX).unwrap().size, 2 * PIECE_BYTES as u64);
        let two = [packed.clone(), zstd::bulk::compress(b"tail", 1).unwrap()].concat();
        assert_eq!(run(&two, u64::MAX).unwrap().size, data.len() as u64 + 4);
        packed.truncate(packed.len() - 10);
        assert!(run(&packed, u64::MAX)
            .err()
            .unwrap()
            .contains("inside a zstd frame"));
        assert!(run(b"not zstd at all", u64::MAX).is_err());
    }

    fn affinity() -> Vec<usize> {
        // SAFETY: as in Cpus::apart.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    /// Kept apart: the decoder's set is one allowed CPU, the helpers' the others, and the
    /// calling thread gets all of its CPUs back, also when the object is damaged.
    #[test]
    fn threads_apart_and_affinity_restored() {
        let before = affinity();
        match Cpus::apart() {
            None => assert!(before.len() < 2),
            Some(c) => {
                let (mut d, mut h) = (Vec::new(), Vec::new());
                for cpu in 0..libc::CPU_SETSIZE as usize {
                    // SAFETY: below the set's capacity.
                    unsafe {
                        if libc::CPU_ISSET(cpu, &c.decoder) {
                            d.push(cpu)
                        }
                        if libc::CPU_ISSET(cpu, &c.helpers) {
                            h.push(cpu)
                        }
                    }
                }
                assert_eq!(d.len(), 1);
                assert!(before.contains(&d[0]) && !h.contains(&d[0]));
                assert_eq!(h.len() + 1, before.len());
            }
        }
        let data = vec![5u8; 2 * PIECE_BYTES + 7];
        let packed = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(run(&packed, u64::MAX).unwrap().size, data.len() as u64);
        assert_eq!(affinity(), before);
        assert!(run(&packed[..packed.len() - 3], u64::MAX).is_err());
        assert_eq!(affinity(), before);
    }
}
