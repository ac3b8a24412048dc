//! The WAL reader on hand-made WAL (every major, several segment sizes) and on hostile bytes:
//! exact decoding, every refusal, no panic and memory bounded by the bytes fed.

use pgbookend_formats::crc32c::crc32c;
use pgbookend_formats::walreader::{
    Compression, Detail, ErrorKind, Record, RelFileLocator, RelationFork, WalError, WalReader,
};
use pgbookend_formats::Lsn;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

// ---- a per-thread allocation meter, to prove memory is bounded by the input ----

struct Meter;
thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}
// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|v| {
            v.set(v.get() + l.size());
            let _ = PEAK.try_with(|p| p.set(p.get().max(v.get())));
        });
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|v| v.set(v.get().saturating_sub(l.size())));
        // SAFETY: p was allocated by System with l.
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static METER: Meter = Meter;

/// Runs `f` and returns its result with the peak of bytes it held allocated on this thread.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(|v| v.get());
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, PEAK.with(|p| p.get()) - base)
}

// ---- a WAL writer for hand-made cases (PostgreSQL's layout, written from the headers) ----

const PAGE: usize = 8192;
const SYSID: u64 = 7_300_000_000_000_000_001;

fn magic(major: u32) -> u16 {
    match major {
        13 => 0xD106,
        14 => 0xD10D,
        15 => 0xD110,
        16 => 0xD113,
        17 => 0xD116,
        _ => 0xD118,
    }
}

/// A block reference to write. `rel: None` writes `BKPBLOCK_SAME_REL`.
#[derive(Clone)]
struct Blk {
    id: u8,
    rel: Option<[u32; 3]>,
    fork: u8,
    block: u32,
    /// (stored length, hole offset, bimg_info, hole length written for compressed images)
    image: Option<(u16, u16, u8, Option<u16>)>,
    data_len: u16,
    will_init: bool,
}

fn blk(id: u8, rel: Option<[u32; 3]>, block: u32) -> Blk {
    Blk {
        id,
        rel,
        fork: 0,
        block,
        image: None,
        data_len: 0,
        will_init: false,
    }
}

/// The bytes after the 24-byte header: block headers, main data header, payloads.
fn body(blocks: &[Blk], extra_headers: &[u8], main: &[u8]) -> Vec<u8> {
    let mut h = extra_headers.to_vec();
    let mut payload = Vec::new();
    for b in blocks {
        let mut ff = b.fork;
        if b.image.is_some() {
            ff |= 0x10;
        }
        if b.data_len > 0 {
            ff |= 0x20;
        }
        if b.will_init {
            ff |= 0x40;
        }
        if b.rel.is_none() {
            ff |= 0x80;
        }
        h.extend([b.id, ff]);
        h.extend(b.data_len.to_le_bytes());
        if let Some((len, hole, info, hole_len)) = b.image {
            h.extend(len.to_le_bytes());
            h.extend(hole.to_le_bytes());
            h.push(info);
            if let Some(hl) = hole_len {
                h.extend(hl.to_le_bytes());
            }
            payload.extend(std::iter::repeat_n(0xAB, len as usize));
        }
        if let Some(r) = b.rel {
            for o in r {
                h.extend(o.to_le_bytes());
            }
        }
        h.extend(b.block.to_le_bytes());
        payload.extend(std::iter::repeat_n(0xCD, b.data_len as usize));
    }
    if main.len() < 256 {
        h.extend([255, main.len() as u8]);
    } else if !main.is_empty() {
        h.push(254);
        h.extend((main.len() as u32).to_le_bytes());
    }
    h.extend(payload);
    h.extend(main);
    h
}

/// A whole record: header with length and CRC computed.
fn record(xid: u32, prev: u64, rmid: u8, info: u8, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend(((24 + body.len()) as u32).to_le_bytes());
    r.extend(xid.to_le_bytes());
    r.extend(prev.to_le_bytes());
    r.extend([info, rmid, 0, 0]);
    let mut c = body.to_vec();
    c.extend(&r[..20]);
    r.extend(crc32c(&c).to_le_bytes());
    r.extend(body);
    r
}

/// Writes records into pages the way PostgreSQL lays them out, from a segment start.
struct Writer {
    major: u32,
    seg: u64,
    base: u64,
    pos: u64,
    buf: Vec<u8>,
    prev: u64,
}

impl Writer {
    fn new(major: u32, seg: u32, base: u64) -> Writer {
        Writer {
            major,
            seg: u64::from(seg),
            base,
            pos: base,
            buf: Vec::new(),
            prev: 0,
        }
    }
    fn write(&mut self, bytes: &[u8]) {
        let at = (self.pos - self.base) as usize;
        if self.buf.len() < at + bytes.len() {
            self.buf.resize(at + bytes.len(), 0);
        }
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len() as u64;
    }
    fn page_header(&mut self, info: u16, rem: u32) {
        let long = self.pos.is_multiple_of(self.seg);
        let mut h = Vec::new();
        h.extend(magic(self.major).to_le_bytes());
        h.extend((info | if long { 2 } else { 0 }).to_le_bytes());
        h.extend(1u32.to_le_bytes());
        h.extend(self.pos.to_le_bytes());
        h.extend(rem.to_le_bytes());
        h.extend([0; 4]);
        if long {
            h.extend(SYSID.to_le_bytes());
            h.extend((self.seg as u32).to_le_bytes());
            h.extend((PAGE as u32).to_le_bytes());
        }
        self.write(&h);
    }
    /// Appends a record (prev-link filled in); returns its LSN.
    fn put(&mut self, xid: u32, rmid: u8, info: u8, body: &[u8]) -> u64 {
        let rec = record(xid, self.prev, rmid, info, body);
        self.put_raw(&rec)
    }
    fn put_raw(&mut self, rec: &[u8]) -> u64 {
        if self.pos.is_multiple_of(PAGE as u64) {
            self.page_header(0, 0);
        }
        let lsn = self.pos;
        let mut i = 0;
        while i < rec.len() {
            if self.pos.is_multiple_of(PAGE as u64) {
                self.page_header(1, (rec.len() - i) as u32);
            }
            let room = PAGE - (self.pos % PAGE as u64) as usize;
            let n = room.min(rec.len() - i);
            self.write(&rec[i..i + n]);
            i += n;
        }
        self.pos = (self.pos + 7) & !7;
        self.prev = lsn;
        lsn
    }
    /// Moves to the next segment start (after a switch record).
    fn next_segment(&mut self) {
        self.pos = (self.pos / self.seg + 1) * self.seg;
    }
    /// The bytes from `base`, padded with zeros to whole pages.
    fn pages(&self) -> Vec<u8> {
        let mut b = self.buf.clone();
        b.resize(b.len().div_ceil(PAGE) * PAGE, 0);
        b
    }
}

fn read(
    major: u32,
    seg: u32,
    start: u64,
    at: u64,
    bytes: &[u8],
) -> (Vec<Record>, Result<(), WalError>, WalReader) {
    let mut r = WalReader::new(major, seg, Lsn(start)).expect("reader");
    let mut out = Vec::new();
    let res = r.feed(Lsn(at), bytes, &mut out);
    (out, res, r)
}

const MB: u32 = 1024 * 1024;
const REL: [u32; 3] = [1663, 5, 16384];
const LOC: RelFileLocator = RelFileLocator {
    spc: 1663,
    db: 5,
    rel: 16384,
};

/// `bimg_info` bits per major: (apply, pglz).
fn image_bits(major: u32) -> (u8, u8) {
    if major >= 15 {
        (0x02, 0x04)
    } else {
        (0x04, 0x02)
    }
}

// ---- hand-made cases ----

/// Writes one record of every kind the reader decodes; returns the WAL and the LSNs.
fn every_kind(major: u32, seg: u32, base: u64) -> (Vec<u8>, Vec<u64>) {
    let (apply, pglz) = image_bits(major);
    let mut w = Writer::new(major, seg, base);
    let mut lsns = Vec::new();
    let mut b0 = blk(0, Some(REL), 7);
    b0.data_len = 10;
    b0.will_init = true;
    lsns.push(w.put(700, 10, 0x00, &body(&[b0], &[], b"abc")));
    let mut img = blk(0, Some(REL), 1);
    img.image = Some((8192 - 100, 200, 0x01 | apply, None));
    let mut same = blk(1, None, 3);
    same.fork = 2;
    lsns.push(w.put(701, 10, 0x10, &body(&[img, same], &[], &[7u8; 300])));
    let mut comp = blk(0, Some([1663, 5, 16385]), 9);
    comp.image = Some((500, 300, 0x01 | pglz, Some(1000)));
    lsns.push(w.put(0, 0, 0x00, &body(&[comp], &[], &[])));
    let mut create = REL
        .iter()
        .flat_map(|o| o.to_le_bytes())
        .collect::<Vec<u8>>();
    create.extend(1u32.to_le_bytes());
    lsns.push(w.put(702, 2, 0x10, &body(&[], &[], &create)));
    let mut trunc = 42u32.to_le_bytes().to_vec();
    trunc.extend(REL.iter().flat_map(|o| o.to_le_bytes()));
    trunc.extend(7u32.to_le_bytes());
    lsns.push(w.put(703, 2, 0x20, &body(&[], &[], &trunc)));
    let oids = |v: &[u32]| v.iter().flat_map(|o| o.to_le_bytes()).collect::<Vec<u8>>();
    lsns.push(w.put(
        704,
        4,
        0x00,
        &body(&[], &[], &oids(&[16400, 1663, 1, 1663])),
    ));
    let drop_info = if major >= 15 { 0x20 } else { 0x10 };
    lsns.push(w.put(
        705,
        4,
        drop_info,
        &body(&[], &[], &oids(&[16400, 2, 1663, 16500])),
    ));
    let mut headers = vec![253];
    headers.extend(9u16.to_le_bytes());
    if major >= 14 {
        headers.push(252);
        headers.extend(77u32.to_le_bytes());
    }
    lsns.push(w.put(
        706,
        1,
        0x00,
        &body(&[blk(3, Some(REL), 5)], &headers, &[1; 30000]),
    ));
    lsns.push(w.put(707, 10, 0x00, &body(&[blk(0, Some(REL), 8)], &[], &[2; 4])));
    (w.pages(), lsns)
}

fn check_every_kind(major: u32, recs: &[Record], lsns: &[u64]) {
    assert_eq!(
        recs.iter().map(|r| r.lsn.0).collect::<Vec<_>>(),
        lsns,
        "PostgreSQL {major}"
    );
    let b = &recs[0].blocks[0];
    assert_eq!(
        (b.id, b.rel, b.fork, b.block, b.will_init, b.data_len),
        (0, LOC, 0, 7, true, 10)
    );
    assert_eq!(
        (recs[0].xid, recs[0].rmid, recs[0].main_data_len),
        (700, 10, 3)
    );
    let (i, s) = (&recs[1].blocks[0], &recs[1].blocks[1]);
    let img = i.image.expect("image");
    assert_eq!(
        (
            img.len,
            img.hole_offset,
            img.hole_length,
            img.apply,
            img.compression
        ),
        (8092, 200, 100, true, None)
    );
    assert_eq!(
        (s.id, s.rel, s.fork, s.block, s.image),
        (1, LOC, 2, 3, None),
        "SAME_REL"
    );
    assert_eq!(recs[1].main_data_len, 300);
    let c = recs[2].blocks[0].image.expect("image");
    assert_eq!(
        (c.len, c.hole_offset, c.hole_length, c.apply, c.compression),
        (500, 300, 1000, false, Some(Compression::Pglz))
    );
    assert_eq!(recs[2].blocks[0].rel.rel, 16385);
    assert_eq!(
        recs[3].detail,
        Detail::SmgrCreate(RelationFork { rel: LOC, fork: 1 })
    );
    assert_eq!(
        recs[4].detail,
        Detail::SmgrTruncate {
            rel: LOC,
            block: 42,
            flags: 7
        }
    );
    assert_eq!(
        recs[5].detail,
        Detail::DbaseCreate {
            db: 16400,
            spc: 1663,
            source: Some((1, 1663))
        }
    );
    assert_eq!(
        recs[6].detail,
        Detail::DbaseDrop {
            db: 16400,
            spcs: vec![1663, 16500]
        }
    );
    assert_eq!(recs[7].origin, Some(9));
    assert_eq!(recs[7].toplevel_xid, (major >= 14).then_some(77));
    assert_eq!((recs[7].main_data_len, recs[7].blocks[0].id), (30000, 3));
    for w in recs.windows(2) {
        assert_eq!(w[1].prev, w[0].lsn);
    }
}

#[test]
fn decodes_every_kind_on_every_major_and_segment_size() {
    for major in 13..=18 {
        for seg in [MB, 16 * MB, 1024 * MB] {
            let base = 3 * u64::from(seg);
            let (wal, lsns) = every_kind(major, seg, base);
            assert!(wal.len() > 4 * PAGE, "the big record spans pages");
            let (recs, res, r) = read(major, seg, base, base, &wal);
            res.unwrap_or_else(|e| panic!("PostgreSQL {major}, segment {seg}: {e}"));
            check_every_kind(major, &recs, &lsns);
            assert_eq!(
                r.end_of_wal(),
                Some(r.position()),
                "zeros after the last record end the WAL"
            );
            assert_eq!(r.system_identifier(), Some(SYSID));
            // Page by page: the same records.
            let mut r2 = WalReader::new(major, seg, Lsn(base)).expect("reader");
            let mut out = Vec::new();
            for (i, p) in wal.chunks(PAGE).enumerate() {
                r2.feed(Lsn(base + (i * PAGE) as u64), p, &mut out)
                    .expect("page by page");
            }
            assert_eq!(out, recs);
            // Starting at a record in the middle of a page.
            let (tail, res, _) = read(major, seg, lsns[3], base, &wal);
            res.expect("start mid-page");
            assert_eq!(tail.first().map(|r| r.lsn.0), Some(lsns[3]));
            assert_eq!(tail.len(), recs.len() - 3);
        }
    }
}

#[test]
fn per_major_layouts_differ_where_postgresql_changed_them() {
    for major in [13, 15] {
        // 15's dbase create with the WAL_LOG strategy is 13's drop: decoded per major.
        let mut w = Writer::new(major, MB, u64::from(MB));
        let main: Vec<u8> = [16401u32, 1663]
            .iter()
            .flat_map(|o| o.to_le_bytes())
            .collect();
        w.put(1, 4, 0x10, &body(&[], &[], &main));
        let (recs, res, _) = read(major, MB, u64::from(MB), u64::from(MB), &w.pages());
        if major == 15 {
            res.expect("15");
            assert_eq!(
                recs[0].detail,
                Detail::DbaseCreate {
                    db: 16401,
                    spc: 1663,
                    source: None
                }
            );
        } else {
            let e = res.expect_err("13: a drop record needs its tablespace count");
            assert!(matches!(e.kind, ErrorKind::BadMainData(4, 0x10)), "{e}");
        }
        // bimg_info 0x02 is "compressed" on 13-14 and "apply" on 15+.
        let mut w = Writer::new(major, MB, u64::from(MB));
        let mut b = blk(0, Some(REL), 1);
        b.image = Some((8192, 0, 0x02, None));
        w.put(1, 10, 0, &body(&[b], &[], &[]));
        let (recs, res, _) = read(major, MB, u64::from(MB), u64::from(MB), &w.pages());
        if major == 15 {
            res.expect("15");
            assert!(recs[0].blocks[0]
                .image
                .is_some_and(|i| i.apply && i.compression.is_none()));
        } else {
            let e = res.expect_err("13: a compressed image cannot be a full page");
            assert!(matches!(e.kind, ErrorKind::BadBlockRef(_)), "{e}");
        }
    }
    // XLR_BLOCK_ID_TOPLEVEL_XID exists from 14 on.
    let mut w = Writer::new(13, MB, u64::from(MB));
    let mut h = vec![252];
    h.extend(5u32.to_le_bytes());
    w.put(1, 10, 0, &body(&[], &h, &[]));
    let (_, res, _) = read(13, MB, u64::from(MB), u64::from(MB), &w.pages());
    assert!(matches!(
        res.expect_err("13").kind,
        ErrorKind::BadBlockRef("invalid block id")
    ));
    // The 15+ compression methods.
    for (bit, method) in [(0x08, Compression::Lz4), (0x10, Compression::Zstd)] {
        let mut w = Writer::new(16, MB, u64::from(MB));
        let mut b = blk(0, Some(REL), 1);
        b.image = Some((4000, 0, bit | 0x02, None));
        w.put(1, 10, 0, &body(&[b], &[], &[]));
        let (recs, res, _) = read(16, MB, u64::from(MB), u64::from(MB), &w.pages());
        res.expect("16");
        assert_eq!(
            recs[0].blocks[0].image.and_then(|i| i.compression),
            Some(method)
        );
    }
}

/// Fills a 1 MB segment so a 20000-byte record crosses into the next one.
fn crossing(major: u32) -> (Vec<u8>, u64, u64) {
    let seg = u64::from(MB);
    let mut w = Writer::new(major, MB, seg);
    while w.pos < 2 * seg - 5000 {
        w.put(9, 10, 0, &body(&[blk(0, Some(REL), 1)], &[], &[3; 3000]));
    }
    let big = w.put(10, 10, 0, &body(&[blk(0, Some(REL), 2)], &[], &[4; 20000]));
    let after = w.put(11, 10, 0, &body(&[blk(0, Some(REL), 3)], &[], &[5; 8]));
    (w.pages(), big, after)
}

#[test]
fn records_cross_segments_and_a_start_inside_one_skips_it() {
    let seg = u64::from(MB);
    for major in 13..=18 {
        let (wal, big, after) = crossing(major);
        let (recs, res, _) = read(major, MB, seg, seg, &wal);
        res.expect("crossing");
        let b = recs
            .iter()
            .find(|r| r.lsn.0 == big)
            .expect("the big record");
        assert!(
            b.lsn.0 < 2 * seg && b.end.0 > 2 * seg + 8192,
            "crosses the segment"
        );
        assert_eq!((b.main_data_len, b.blocks[0].block), (20000, 2));
        // Segment by segment gives the same records.
        let mut r = WalReader::new(major, MB, Lsn(seg)).expect("reader");
        let mut out = Vec::new();
        for (i, s) in wal.chunks(MB as usize).enumerate() {
            r.feed(Lsn(seg * (i as u64 + 1)), s, &mut out)
                .expect("segment");
        }
        assert_eq!(out, recs);
        // Starting at the second segment's start: the continuation is skipped.
        let (tail, res, _) = read(major, MB, 2 * seg, seg, &wal);
        res.expect("from the segment start");
        assert_eq!(tail.first().map(|r| r.lsn.0), Some(after));
    }
}

#[test]
fn a_switch_skips_the_rest_of_its_segment() {
    let seg = u64::from(MB);
    let mut w = Writer::new(16, MB, seg);
    w.put(1, 10, 0, &body(&[blk(0, Some(REL), 1)], &[], &[1; 10]));
    let sw = w.put(0, 0, 0x40, &[]);
    let garbage_from = (w.pos - seg) as usize;
    w.next_segment();
    let next = w.put(2, 10, 0, &body(&[blk(0, Some(REL), 2)], &[], &[1; 10]));
    let mut wal = w.pages();
    for b in &mut wal[garbage_from..MB as usize] {
        *b = 0x5A;
    }
    let (recs, res, r) = read(16, MB, seg, seg, &wal);
    res.expect("switch");
    assert_eq!(
        recs.iter().map(|r| r.lsn.0).collect::<Vec<_>>()[1..],
        [sw, next]
    );
    assert_eq!(recs[1].detail, Detail::Switch);
    assert_eq!(r.end_of_wal(), Some(r.position()));
}

#[test]
fn end_of_wal_at_zeros_or_a_recycled_page() {
    let seg = u64::from(MB);
    let (wal, _) = every_kind(17, MB, seg);
    let (recs, res, r) = read(17, MB, seg, seg, &wal);
    res.expect("clean");
    let end = r.end_of_wal().expect("zeros end the WAL");
    assert_eq!(end.0, (recs.last().expect("records").end.0 + 7) & !7);
    // Feeding more after the end changes nothing.
    let mut r = r;
    let mut more = Vec::new();
    r.feed(Lsn(seg + wal.len() as u64), &[0x11; PAGE], &mut more)
        .expect("ignored");
    assert!(more.is_empty());

    // A record running into a page of an older (recycled) segment: the WAL ends at it.
    let mut w = Writer::new(17, MB, 2 * seg);
    let first = w.put(1, 10, 0, &body(&[], &[], &[1; 100]));
    let torn = w.put(1, 10, 0, &body(&[], &[], &[2; 9000]));
    let mut wal = w.pages();
    let stale = PAGE as u64; // the same offset, one segment earlier
    wal[PAGE + 8..PAGE + 16].copy_from_slice(&stale.to_le_bytes());
    let (recs, res, r) = read(17, MB, 2 * seg, 2 * seg, &wal);
    res.expect("a recycled page is the end of WAL, not an error");
    assert_eq!(recs.iter().map(|r| r.lsn.0).collect::<Vec<_>>(), [first]);
    assert_eq!(r.end_of_wal(), Some(Lsn(torn)));
}

/// Reads `wal` (written from 1 MB) with a PostgreSQL 16 reader and returns the error.
fn error_of(wal: &[u8]) -> WalError {
    let seg = u64::from(MB);
    let (_, res, _) = read(16, MB, seg, seg, wal);
    res.expect_err("must be refused")
}

/// Two records (one spanning pages 0-1), 1 MB segments from 1 MB; their LSNs.
fn two_records() -> (Vec<u8>, u64, u64) {
    let mut w = Writer::new(16, MB, u64::from(MB));
    let a = w.put(1, 10, 0, &body(&[blk(0, Some(REL), 1)], &[], &[1; 100]));
    let b = w.put(2, 10, 0, &body(&[blk(0, Some(REL), 2)], &[], &[2; 9000]));
    (w.pages(), a, b)
}

#[test]
fn refuses_damaged_pages_and_records_naming_where() {
    let seg = u64::from(MB);
    let (good, a, b) = two_records();
    let kind = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut w = good.clone();
        f(&mut w);
        error_of(&w)
    };
    // A flipped byte in the spanning record: CRC, at that record.
    let e = kind(&|w| w[PAGE + 100] ^= 0x01);
    assert!(
        matches!(e.kind, ErrorKind::BadCrc { .. }) && e.lsn == Lsn(b),
        "{e}"
    );
    // Another major's magic, named.
    let e = kind(&|w| w[PAGE..PAGE + 2].copy_from_slice(&0xD106u16.to_le_bytes()));
    assert!(
        matches!(
            e.kind,
            ErrorKind::BadMagic {
                found_major: Some(13),
                expected_major: 16,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("PostgreSQL 13"), "{e}");
    // A page claiming another (not older-same-offset) address.
    let e =
        kind(&|w| w[PAGE + 8..PAGE + 16].copy_from_slice(&(seg + 5 * PAGE as u64).to_le_bytes()));
    assert_eq!(
        (e.kind, e.lsn),
        (
            ErrorKind::BadPageAddr(Lsn(seg + 5 * PAGE as u64)),
            Lsn(seg + PAGE as u64)
        )
    );
    // The continuation flag cleared, or the wrong remaining length.
    let e = kind(&|w| w[PAGE + 2] = 0);
    assert!(matches!(e.kind, ErrorKind::BadContinuation(_)), "{e}");
    let e = kind(&|w| w[PAGE + 16] ^= 0x08);
    assert!(matches!(e.kind, ErrorKind::BadContinuation(_)), "{e}");
    // Unknown page info bits; a long header on a page that is not a segment's first.
    let e = kind(&|w| w[PAGE + 2] |= 0x10);
    assert!(matches!(e.kind, ErrorKind::BadPageInfo(_)), "{e}");
    let e = kind(&|w| w[PAGE + 2] |= 0x02);
    assert!(matches!(e.kind, ErrorKind::BadPageInfo(_)), "{e}");
    // The first page without its long header.
    let e = kind(&|w| w[2] &= !0x02);
    assert_eq!(e.kind, ErrorKind::MissingLongHeader);
    // A timeline going backwards.
    let e = kind(&|w| w[4..8].copy_from_slice(&5u32.to_le_bytes()));
    assert!(
        matches!(
            e.kind,
            ErrorKind::TimelineBackwards {
                found: 1,
                previous: 5
            }
        ),
        "{e}"
    );
    // Record lengths below a header or above the cap.
    let off = (a - seg) as usize;
    for bad in [0x17u32, 1020 * MB + 1, u32::MAX] {
        let e = kind(&|w| w[off..off + 4].copy_from_slice(&bad.to_le_bytes()));
        assert_eq!((e.kind, e.lsn), (ErrorKind::BadRecordLength(bad), Lsn(a)));
    }
    // A wrong prev-link (CRC recomputed, so only the link is wrong).
    let mut w = Writer::new(16, MB, seg);
    w.put(1, 10, 0, &body(&[], &[], &[1; 10]));
    let bad = w.put_raw(&record(2, 0x1234_5678, 10, 0, &body(&[], &[], &[1; 10])));
    let e = error_of(&w.pages());
    assert_eq!(e.lsn, Lsn(bad));
    assert!(
        matches!(
            e.kind,
            ErrorKind::BadPrevLink {
                found: Lsn(0x1234_5678),
                ..
            }
        ),
        "{e}"
    );
    // Segment size and system identifier from the long header.
    let (_, res, _) = read(16, 16 * MB, seg, seg, &[]);
    res.expect("nothing fed");
    let mut r = WalReader::new(16, 2 * MB, Lsn(2 * seg)).expect("reader");
    let e = r
        .feed(Lsn(2 * seg), &good, &mut Vec::new())
        .expect_err("1 MB WAL for a 2 MB reader");
    assert!(
        matches!(
            e.kind,
            ErrorKind::BadPageAddr(_) | ErrorKind::SizeMismatch { .. }
        ),
        "{e}"
    );
    let e = kind(&|w| w[32..36].copy_from_slice(&(2 * MB).to_le_bytes()));
    assert!(
        matches!(e.kind, ErrorKind::SizeMismatch { seg_size, .. } if seg_size == 2 * MB),
        "{e}"
    );
    let e = kind(&|w| w[36..40].copy_from_slice(&4096u32.to_le_bytes()));
    assert!(
        matches!(
            e.kind,
            ErrorKind::SizeMismatch {
                page_size: 4096,
                ..
            }
        ),
        "{e}"
    );
    let (wal, _, _) = crossing(16);
    let mut other = wal.clone();
    other[MB as usize + 24] ^= 1;
    let (_, res, _) = read(16, MB, seg, seg, &other);
    assert!(matches!(
        res.expect_err("sysid").kind,
        ErrorKind::SystemIdMismatch { .. }
    ));
}

#[test]
fn refuses_bad_block_references_and_main_data() {
    let bad_body = |b: Vec<u8>| {
        let mut w = Writer::new(16, MB, u64::from(MB));
        w.put(1, 10, 0, &b);
        error_of(&w.pages()).kind
    };
    let is_block = |k: ErrorKind| matches!(k, ErrorKind::BadBlockRef(_) | ErrorKind::ShortRecord);
    // Block ids out of order, SAME_REL with no relation before, a fork past init.
    assert!(is_block(bad_body(body(
        &[blk(1, Some(REL), 1), blk(0, Some(REL), 1)],
        &[],
        &[]
    ))));
    assert!(is_block(bad_body(body(&[blk(0, None, 1)], &[], &[]))));
    let mut f = blk(0, Some(REL), 1);
    f.fork = 4;
    assert!(is_block(bad_body(body(&[f], &[], &[]))));
    // HAS_DATA with length 0, and data length without HAS_DATA.
    let mut b = body(&[blk(0, Some(REL), 1)], &[], &[]);
    b[1] |= 0x20;
    assert!(is_block(bad_body(b)));
    let mut b = body(&[blk(0, Some(REL), 1)], &[], &[]);
    b[2] = 1;
    assert!(is_block(bad_body(b)));
    // Image headers PostgreSQL refuses: hole at 0, a hole flag with a full page, an
    // uncompressed short image, a compressed full page, a hole past the page.
    for (len, hole, info, hl) in [
        (8000u16, 0u16, 0x01u8, None),
        (8192, 100, 0x01, None),
        (8000, 0, 0x00, None),
        (8192, 0, 0x04, None),
        (100, 8000, 0x05, Some(1000)),
        (9000, 0, 0x00, None),
    ] {
        let mut i = blk(0, Some(REL), 1);
        i.image = Some((len, hole, info, hl));
        assert!(
            is_block(bad_body(body(&[i], &[], &[]))),
            "{len} {hole} {info:#x}"
        );
    }
    // Unknown block id, headers overrunning the record, lengths not adding up.
    assert!(is_block(bad_body(vec![100, 0, 0, 0])));
    assert!(is_block(bad_body(vec![0, 0, 0])));
    let mut b = body(&[], &[], &[1, 2, 3]);
    b.push(0);
    assert!(is_block(bad_body(b)));
    let mut b = body(&[], &[], &[]);
    b.extend([254, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert!(is_block(bad_body(b)));
    // smgr/database records too short for what they say, and a drop claiming 2^30 tablespaces.
    let mut w = Writer::new(16, MB, u64::from(MB));
    w.put(1, 2, 0x10, &body(&[], &[], &[0; 12]));
    assert_eq!(error_of(&w.pages()).kind, ErrorKind::BadMainData(2, 0x10));
    let mut w = Writer::new(16, MB, u64::from(MB));
    let main: Vec<u8> = [16400u32, 1 << 30, 1663]
        .iter()
        .flat_map(|o| o.to_le_bytes())
        .collect();
    w.put(1, 4, 0x20, &body(&[], &[], &main));
    let (e, peak) = peak_during(|| error_of(&w.pages()));
    assert_eq!(e.kind, ErrorKind::BadMainData(4, 0x20));
    assert!(
        peak < 4 * MB as usize,
        "allocated {peak} bytes for a lying count"
    );
}

#[test]
fn refuses_bad_arguments_and_feeds() {
    let e = |r: Result<WalReader, WalError>| r.expect_err("refused").kind;
    assert_eq!(
        e(WalReader::new(12, MB, Lsn(0))),
        ErrorKind::UnsupportedMajor(12)
    );
    assert_eq!(
        e(WalReader::new(19, MB, Lsn(0))),
        ErrorKind::UnsupportedMajor(19)
    );
    assert_eq!(
        e(WalReader::new(16, 3 * MB, Lsn(0))),
        ErrorKind::InvalidSegmentSize(3 * MB)
    );
    assert_eq!(
        e(WalReader::new(16, 2048 * MB, Lsn(0))),
        ErrorKind::InvalidSegmentSize(2048 * MB)
    );
    assert_eq!(
        e(WalReader::new(16, MB, Lsn(0x100_0031))),
        ErrorKind::InvalidStart
    );
    assert_eq!(
        e(WalReader::new(16, MB, Lsn(0x100_2010))),
        ErrorKind::InvalidStart
    );
    // A start inside a long header is found when the page is read.
    let (good, _, _) = two_records();
    let seg = u64::from(MB);
    let (_, res, _) = read(16, MB, seg + 32, seg, &good);
    assert_eq!(
        res.expect_err("inside the long header").kind,
        ErrorKind::InvalidStart
    );
    let mut r = WalReader::new(16, MB, Lsn(seg)).expect("reader");
    let mut out = Vec::new();
    let k = r
        .feed(Lsn(seg + 1), &good, &mut out)
        .expect_err("unaligned")
        .kind;
    assert_eq!(k, ErrorKind::NotWholePages);
    let mut r = WalReader::new(16, MB, Lsn(seg)).expect("reader");
    let k = r
        .feed(Lsn(seg), &good[..PAGE + 1], &mut out)
        .expect_err("partial")
        .kind;
    assert_eq!(k, ErrorKind::NotWholePages);
    let mut r = WalReader::new(16, MB, Lsn(seg)).expect("reader");
    let k = r
        .feed(Lsn(seg + PAGE as u64), &good[PAGE..], &mut out)
        .expect_err("gap")
        .kind;
    assert_eq!(k, ErrorKind::Gap(Lsn(seg)));
    // A failed reader stays failed with the same error.
    let again = r
        .feed(Lsn(seg), &good, &mut out)
        .expect_err("still failed")
        .kind;
    assert_eq!(again, ErrorKind::Gap(Lsn(seg)));
    assert!(out.is_empty());
}

#[test]
fn an_overwritten_continuation_abandons_the_torn_record() {
    let seg = u64::from(MB);
    let (mut wal, a, b) = two_records();
    // Page 1 now says the record from page 0 was abandoned and starts a new record.
    let p = PAGE;
    wal[p + 2..p + 4].copy_from_slice(&0x0008u16.to_le_bytes());
    wal[p + 16..p + 20].copy_from_slice(&0u32.to_le_bytes());
    let rec = record(3, a, 0, 0xD0, &body(&[], &[], &[0; 16]));
    wal[p + 24..p + 24 + rec.len()].copy_from_slice(&rec);
    for x in &mut wal[p + 24 + rec.len()..p + 24 + rec.len() + 8] {
        *x = 0;
    }
    let (recs, res, r) = read(16, MB, seg, seg, &wal);
    res.expect("overwrite contrecord");
    let lsns: Vec<u64> = recs.iter().map(|r| r.lsn.0).collect();
    assert_eq!(lsns, [a, seg + p as u64 + 24]);
    assert!(!lsns.contains(&b));
    assert_eq!(r.aborted_records(), 1);
}

#[test]
fn a_huge_claimed_length_allocates_only_what_arrives() {
    // A record at the end of a page claiming 1020 MB: pending, never pre-allocated.
    let seg = u64::from(MB);
    let mut w = Writer::new(16, MB, seg);
    while w.pos < seg + PAGE as u64 - 64 {
        w.put(1, 10, 0, &body(&[], &[], &[1; 8]));
    }
    let at = w.pos;
    let mut rec = record(1, w.prev, 10, 0, &[]);
    rec[..4].copy_from_slice(&(1020 * MB).to_le_bytes());
    w.put_raw(&rec[..24]);
    let wal = w.pages();
    let ((recs, res, r), peak) = peak_during(|| read(16, MB, seg, seg, &wal[..PAGE]));
    res.expect("pending, not an error");
    assert!(!recs.is_empty());
    assert_eq!(r.position(), Lsn(at));
    assert!(peak < 256 * 1024, "allocated {peak} bytes");
}

#[test]
fn addresses_at_the_top_of_the_lsn_space_do_not_overflow() {
    let seg = u64::from(MB);
    let top = (u64::MAX / seg) * seg; // the last segment start
    let mut w = Writer::new(18, MB, top);
    w.put(1, 10, 0, &body(&[], &[], &[1; 100]));
    let mut rec = record(1, w.prev, 10, 0, &[]);
    rec[..4].copy_from_slice(&(1020 * MB).to_le_bytes());
    w.put_raw(&rec);
    let wal = w.pages();
    let last_page = u64::MAX - (u64::MAX % PAGE as u64) - PAGE as u64;
    for (start, at, bytes) in [
        (top, top, &wal[..]),
        (last_page, last_page, &[0x7Fu8; PAGE][..]),
        (last_page + 64, last_page, &[0u8; PAGE][..]),
    ] {
        let mut r = WalReader::new(18, MB, Lsn(start)).expect("reader");
        let _ = r.feed(Lsn(at), bytes, &mut Vec::new());
        let _ = r.feed(Lsn(at + PAGE as u64), &[0x11; PAGE], &mut Vec::new());
    }
    let (recs, res, _) = read(18, MB, top, top, &wal);
    res.expect("a pending record at the top");
    assert_eq!(recs.len(), 1);
}

// ---- hostile input: random and mutated bytes ----

/// Valid WAL of random records for a property test: (major, bytes from 1 MB, clean records).
fn random_wal(major: u32, sizes: &[(u16, u8)]) -> (Vec<u8>, Vec<Record>) {
    let mut w = Writer::new(major, MB, u64::from(MB));
    for (i, (len, nblk)) in sizes.iter().enumerate() {
        let blocks: Vec<Blk> = (0..*nblk)
            .map(|k| {
                let mut b = blk(
                    k,
                    if k % 2 == 0 { Some(REL) } else { None },
                    u32::from(*len) + u32::from(k),
                );
                b.data_len = *len % 50;
                b
            })
            .collect();
        w.put(
            i as u32,
            10,
            0,
            &body(&blocks, &[], &vec![i as u8; *len as usize]),
        );
    }
    let wal = w.pages();
    let (recs, res, _) = read(major, MB, u64::from(MB), u64::from(MB), &wal);
    res.expect("clean WAL");
    assert_eq!(recs.len(), sizes.len());
    (wal, recs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Random pages never panic and never make the reader hold much more than they are.
    #[test]
    fn random_bytes_never_panic(
        major in 13u32..=18,
        bits in 20u32..=30,
        pages in 1usize..4,
        seed in proptest::collection::vec(any::<u8>(), 64),
        start_page in 0u64..2,
        start_off in 0u64..1024,
    ) {
        let seg = 1u64 << bits;
        let mut bytes = vec![0u8; pages * PAGE];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed[i % 64].wrapping_mul(i as u8 | 1);
        }
        // Often give it a plausible page header so the reader gets past the magic.
        if seed[0] % 2 == 0 {
            bytes[..2].copy_from_slice(&magic(major).to_le_bytes());
            bytes[8..16].copy_from_slice(&seg.to_le_bytes());
        }
        let start = seg + start_page * PAGE as u64 + start_off * 8;
        if let Ok(mut r) = WalReader::new(major, seg as u32, Lsn(start)) {
            let (_, peak) = peak_during(|| r.feed(Lsn(seg), &bytes, &mut Vec::new()));
            prop_assert!(peak <= 2 * bytes.len() + 65536, "peak {peak}");
        }
    }

    /// Mutated valid WAL: no panic, bounded memory, and every record returned is the clean one.
    #[test]
    fn mutated_wal_never_returns_a_wrong_record(
        major in 13u32..=18,
        sizes in proptest::collection::vec((0u16..12000, 0u8..4), 1..12),
        flips in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..4),
        chunk in 1usize..5,
    ) {
        let (mut wal, clean) = random_wal(major, &sizes);
        let n = wal.len();
        for (at, x) in &flips {
            wal[*at as usize % n] ^= x | 1;
        }
        let seg = u64::from(MB);
        let mut r = WalReader::new(major, MB, Lsn(seg)).expect("reader");
        let mut out = Vec::new();
        let (_, peak) = peak_during(|| {
            for (i, c) in wal.chunks(chunk * PAGE).enumerate() {
                if r.feed(Lsn(seg + (i * chunk * PAGE) as u64), c, &mut out).is_err() {
                    break;
                }
            }
        });
        prop_assert!(peak <= 3 * n + 65536, "peak {peak}");
        for rec in &out {
            prop_assert!(clean.contains(rec), "a record not in the clean WAL: {rec:?}");
        }
    }

    /// Clean WAL fed in any chunking gives the same records.
    #[test]
    fn chunking_does_not_matter(
        major in 13u32..=18,
        sizes in proptest::collection::vec((0u16..20000, 0u8..5), 1..10),
        chunk in 1usize..6,
    ) {
        let (wal, clean) = random_wal(major, &sizes);
        let seg = u64::from(MB);
        let mut r = WalReader::new(major, MB, Lsn(seg)).expect("reader");
        let mut out = Vec::new();
        for (i, c) in wal.chunks(chunk * PAGE).enumerate() {
            r.feed(Lsn(seg + (i * chunk * PAGE) as u64), c, &mut out).expect("clean");
        }
        prop_assert_eq!(out, clean);
    }
}
