//! Unpacking an archived object into a file on three threads, a pipeline: the caller's
//! thread decodes the zstd stream straight into pieces of [`PIECE_BYTES`], a second
//! thread hashes each piece (SHA-256) and a third writes it, then hands its buffer back,
//! so that decoding, hashing and writing (each a third of the work) overlap on two cores.
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
/// whether the object was there. `Ok(None)` when it was not.
pub fn unpack(
    out: std::fs::File,
    cap: u64,
    feed: impl FnOnce(&mut dyn Write) -> Result<bool, Error>,
) -> Result<Option<Unpacked>, Failure> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(PIECES);
    let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Vec<u8>>(PIECES);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|sc| {
        let hasher = sc.spawn(move || hash(rx, hashed_tx));
        let writer = sc.spawn(move || write(out, hashed_rx, free_tx));
        let mut dec = Decoding::new(tx, free_rx, cap)?;
        let fed = feed(&mut dec);
        let ended = match &fed {
            Ok(true) => dec.finish(),
            _ => Ok(()),
        };
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
        match unpack(f, cap, feed) {
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
}
