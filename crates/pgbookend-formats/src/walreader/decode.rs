//! Decoding one assembled WAL record: the record header, block references, main data.

use super::layout::*;
use super::{
    BlockRef, Compression, Detail, ErrorKind, ImageInfo, Record, RelFileLocator, RelationFork,
};
use crate::Lsn;

/// A bounds-checked little-endian cursor over a record's bytes.
struct Cur<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ErrorKind> {
        let end = self.p.checked_add(n).ok_or(ErrorKind::ShortRecord)?;
        let s = self.b.get(self.p..end).ok_or(ErrorKind::ShortRecord)?;
        self.p = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ErrorKind> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ErrorKind> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, ErrorKind> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn rel(&mut self) -> Result<RelFileLocator, ErrorKind> {
        Ok(RelFileLocator {
            spc: self.u32()?,
            db: self.u32()?,
            rel: self.u32()?,
        })
    }
    fn left(&self) -> usize {
        self.b.len().saturating_sub(self.p)
    }
}

/// The fixed record header fields (`XLogRecord`), before the CRC is checked.
pub(super) struct Header {
    pub total_len: u32,
    pub xid: u32,
    pub prev: u64,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

/// Reads `XLogRecord` from its 24 bytes.
pub(super) fn header(h: &[u8; RECORD_HEADER]) -> Header {
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let mut prev = [0u8; 8];
    prev.copy_from_slice(&h[8..16]);
    Header {
        total_len: u32_at(0),
        xid: u32_at(4),
        prev: u64::from_le_bytes(prev),
        info: h[16],
        rmid: h[17],
        crc: u32_at(20),
    }
}

/// Decodes a record whose CRC was verified: `body` is everything after the 24-byte header.
pub(super) fn record(
    layout: &WalLayout,
    lsn: Lsn,
    end: Lsn,
    h: &Header,
    body: &[u8],
) -> Result<Record, ErrorKind> {
    let mut c = Cur { b: body, p: 0 };
    let mut rec = Record {
        lsn,
        end,
        prev: Lsn(h.prev),
        xid: h.xid,
        rmid: h.rmid,
        info: h.info,
        total_len: h.total_len,
        blocks: Vec::new(),
        main_data_len: 0,
        origin: None,
        toplevel_xid: None,
        detail: Detail::Other,
    };
    // Sum of the payload lengths announced so far; u64 so hostile lengths cannot wrap.
    let mut datatotal: u64 = 0;
    let mut last_rel: Option<RelFileLocator> = None;
    while c.left() as u64 > datatotal {
        let id = c.u8()?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                rec.main_data_len = u32::from(c.u8()?);
                datatotal += u64::from(rec.main_data_len);
                break; // the main data header is always last
            }
            XLR_BLOCK_ID_DATA_LONG => {
                rec.main_data_len = c.u32()?;
                datatotal += u64::from(rec.main_data_len);
                break;
            }
            XLR_BLOCK_ID_ORIGIN => rec.origin = Some(c.u16()?),
            XLR_BLOCK_ID_TOPLEVEL_XID if layout.toplevel_xid => rec.toplevel_xid = Some(c.u32()?),
            0..=XLR_MAX_BLOCK_ID => {
                if rec.blocks.last().is_some_and(|b| id <= b.id) {
                    return Err(ErrorKind::BadBlockRef("out-of-order block id"));
                }
                let b = block(layout, id, &mut c, &mut last_rel, &mut datatotal)?;
                rec.blocks.push(b);
            }
            _ => return Err(ErrorKind::BadBlockRef("invalid block id")),
        }
    }
    if c.left() as u64 != datatotal {
        return Err(ErrorKind::BadBlockRef(
            "record length does not match its headers",
        ));
    }
    let main_start = body.len() - rec.main_data_len as usize;
    rec.detail = detail(layout, &rec, &body[main_start..])?;
    Ok(rec)
}

/// One `XLogRecordBlockHeader` with its optional image header and relation.
fn block(
    layout: &WalLayout,
    id: u8,
    c: &mut Cur<'_>,
    last_rel: &mut Option<RelFileLocator>,
    datatotal: &mut u64,
) -> Result<BlockRef, ErrorKind> {
    let fork_flags = c.u8()?;
    let data_len = c.u16()?;
    let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
    if has_data != (data_len != 0) {
        return Err(ErrorKind::BadBlockRef(
            "BKPBLOCK_HAS_DATA disagrees with data length",
        ));
    }
    let fork = fork_flags & BKPBLOCK_FORK_MASK;
    if fork > MAX_FORKNUM {
        return Err(ErrorKind::BadBlockRef("invalid fork number"));
    }
    *datatotal += u64::from(data_len);
    let image = if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
        let img = image(layout, c)?;
        *datatotal += u64::from(img.len);
        Some(img)
    } else {
        None
    };
    let rel = if fork_flags & BKPBLOCK_SAME_REL != 0 {
        last_rel.ok_or(ErrorKind::BadBlockRef(
            "BKPBLOCK_SAME_REL without a previous relation",
        ))?
    } else {
        c.rel()?
    };
    *last_rel = Some(rel);
    Ok(BlockRef {
        id,
        rel,
        fork,
        block: c.u32()?,
        will_init: fork_flags & BKPBLOCK_WILL_INIT != 0,
        data_len,
        image,
    })
}

/// `XLogRecordBlockImageHeader` (+ `XLogRecordBlockCompressHeader`), checked as PostgreSQL does.
fn image(layout: &WalLayout, c: &mut Cur<'_>) -> Result<ImageInfo, ErrorKind> {
    let len = c.u16()?;
    let hole_offset = c.u16()?;
    let info = c.u8()?;
    let bits = &layout.image;
    let compression = if info & bits.pglz != 0 {
        Some(Compression::Pglz)
    } else if bits.lz4 != 0 && info & bits.lz4 != 0 {
        Some(Compression::Lz4)
    } else if bits.zstd != 0 && info & bits.zstd != 0 {
        Some(Compression::Zstd)
    } else {
        None
    };
    let has_hole = info & BKPIMAGE_HAS_HOLE != 0;
    let hole_length = match (has_hole, compression.is_some()) {
        (true, true) => c.u16()?,
        (true, false) => (BLCKSZ as u16).wrapping_sub(len),
        (false, _) => 0,
    };
    let bad = |m| Err(ErrorKind::BadBlockRef(m));
    if has_hole && (hole_offset == 0 || hole_length == 0 || u32::from(len) == BLCKSZ) {
        return bad("invalid image hole");
    }
    if !has_hole && (hole_offset != 0 || hole_length != 0) {
        return bad("image hole without BKPIMAGE_HAS_HOLE");
    }
    if u32::from(hole_offset) + u32::from(hole_length) > BLCKSZ {
        return bad("image hole past the end of the page");
    }
    if compression.is_some() && u32::from(len) == BLCKSZ {
        return bad("compressed image of a full page's length");
    }
    if compression.is_none() && u32::from(len) + u32::from(hole_length) != BLCKSZ {
        return bad("uncompressed image of the wrong length");
    }
    Ok(ImageInfo {
        len,
        hole_offset,
        hole_length,
        apply: info & bits.apply != 0,
        compression,
    })
}

/// Decodes the records of interest beyond block references (smgr, database, switch).
fn detail(layout: &WalLayout, rec: &Record, main: &[u8]) -> Result<Detail, ErrorKind> {
    let kind = rec.info & XLR_RMGR_INFO_MASK;
    let mut c = Cur { b: main, p: 0 };
    let short = |_| ErrorKind::BadMainData(rec.rmid, kind);
    match (rec.rmid, kind) {
        (RM_XLOG_ID, XLOG_SWITCH) => Ok(Detail::Switch),
        (RM_SMGR_ID, XLOG_SMGR_CREATE) => {
            let rel = c.rel().map_err(short)?;
            let fork = c.u32().map_err(short)?;
            let fork = u8::try_from(fork)
                .ok()
                .filter(|f| *f <= MAX_FORKNUM)
                .ok_or(ErrorKind::BadMainData(rec.rmid, kind))?;
            Ok(Detail::SmgrCreate(RelationFork { rel, fork }))
        }
        (RM_SMGR_ID, XLOG_SMGR_TRUNCATE) => Ok(Detail::SmgrTruncate {
            block: c.u32().map_err(short)?,
            rel: c.rel().map_err(short)?,
            flags: c.u32().map_err(short)?,
        }),
        (RM_DBASE_ID, k) if k == layout.dbase.create_file_copy => {
            let db = c.u32().map_err(short)?;
            let spc = c.u32().map_err(short)?;
            let src_db = c.u32().map_err(short)?;
            let src_spc = c.u32().map_err(short)?;
            Ok(Detail::DbaseCreate {
                db,
                spc,
                source: Some((src_db, src_spc)),
            })
        }
        (RM_DBASE_ID, k) if Some(k) == layout.dbase.create_wal_log => Ok(Detail::DbaseCreate {
            db: c.u32().map_err(short)?,
            spc: c.u32().map_err(short)?,
            source: None,
        }),
        (RM_DBASE_ID, k) if k == layout.dbase.drop => {
            let db = c.u32().map_err(short)?;
            let n = c.u32().map_err(short)? as usize;
            // Bounded by the bytes present, checked before allocating.
            if n > c.left() / 4 {
                return Err(ErrorKind::BadMainData(rec.rmid, kind));
            }
            let mut spcs = Vec::with_capacity(n);
            for _ in 0..n {
                spcs.push(c.u32().map_err(short)?);
            }
            Ok(Detail::DbaseDrop { db, spcs })
        }
        _ => Ok(Detail::Other),
    }
}
