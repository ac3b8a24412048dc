//! Assembling WAL records from pages fed in order: page header checks, continuations, switches.

use super::decode;
use super::layout::*;
use super::{Detail, ErrorKind, Record, WalError};
use crate::crc32c::crc32c;
use crate::Lsn;

/// `WAL_PAGE_SIZE` as a WAL distance.
const PAGE: u64 = WAL_PAGE_SIZE as u64;

/// Reads the WAL of one PostgreSQL major from a start position onwards, page by page.
///
/// Built once per stream with [`WalReader::new`], then fed whole pages in
/// order with [`WalReader::feed`] (typically one segment file at a time).
/// After a problem the reader stays failed and repeats the error.
#[derive(Debug)]
pub struct WalReader {
    layout: &'static WalLayout,
    seg_size: u64,
    /// Address of the next page the reader expects.
    next_page: u64,
    /// Where the next record starts, while no record is being assembled.
    cursor: u64,
    /// Nothing decoded yet: a continuation at the start position may be skipped.
    at_start: bool,
    /// Start and `xl_tot_len` of the record being assembled across pages.
    pending: Option<(u64, u32)>,
    /// The bytes of the record being assembled (reused; grows only with bytes fed).
    raw: Vec<u8>,
    prev_record: Option<Lsn>,
    sysid: Option<u64>,
    tli: u32,
    end: Option<Lsn>,
    failed: Option<WalError>,
    aborted: u64,
}

/// The fields of a page header the reader uses.
struct PageHeader {
    size: usize,
    info: u16,
    rem_len: u32,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
/// `MAXALIGN` on the WAL position (records start 8-byte aligned).
fn align8(x: u64) -> u64 {
    x.saturating_add(7) & !7
}

impl WalReader {
    /// A reader for WAL written by `major` with segments of `seg_size` bytes, starting at
    /// `start`: a record's start, or a page boundary (a leading continuation is skipped).
    pub fn new(major: u32, seg_size: u32, start: Lsn) -> Result<WalReader, WalError> {
        let err = |kind| WalError { lsn: start, kind };
        let layout = layout(major).ok_or(err(ErrorKind::UnsupportedMajor(major)))?;
        if !crate::wal::is_valid_seg_size(seg_size) {
            return Err(err(ErrorKind::InvalidSegmentSize(seg_size)));
        }
        let in_page = start.0 % PAGE;
        if !start.0.is_multiple_of(8) || (in_page != 0 && in_page < SHORT_PAGE_HEADER as u64) {
            return Err(err(ErrorKind::InvalidStart));
        }
        Ok(WalReader {
            layout,
            seg_size: u64::from(seg_size),
            next_page: start.0 - in_page,
            cursor: start.0,
            at_start: true,
            pending: None,
            raw: Vec::new(),
            prev_record: None,
            sysid: None,
            tli: 0,
            end: None,
            failed: None,
            aborted: 0,
        })
    }

    /// The address of the next page [`feed`](Self::feed) expects.
    pub fn next_page(&self) -> Lsn {
        Lsn(self.next_page)
    }

    /// Where valid WAL ended (a zero record length, an unwritten or recycled page), once seen.
    pub fn end_of_wal(&self) -> Option<Lsn> {
        self.end
    }

    /// The start of the next record not yet returned (one being assembled, or the next one).
    pub fn position(&self) -> Lsn {
        Lsn(self.pending.map_or(self.cursor, |p| p.0))
    }

    /// The start of the last record returned.
    pub fn last_record(&self) -> Option<Lsn> {
        self.prev_record
    }

    /// The system identifier from the long page headers seen so far.
    pub fn system_identifier(&self) -> Option<u64> {
        self.sysid
    }

    /// The highest timeline seen in a page header (0 before the first page).
    pub fn timeline(&self) -> u32 {
        self.tli
    }

    /// How many records were abandoned by a crash (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`).
    pub fn aborted_records(&self) -> u64 {
        self.aborted
    }

    /// Feeds whole pages starting at page boundary `at`, appending every record completed
    /// to `out` (also those before an error). Pages before [`next_page`](Self::next_page)
    /// are ignored; pages after the end of WAL are ignored.
    pub fn feed(&mut self, at: Lsn, bytes: &[u8], out: &mut Vec<Record>) -> Result<(), WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_pages(at, bytes, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn feed_pages(&mut self, at: Lsn, bytes: &[u8], out: &mut Vec<Record>) -> Result<(), WalError> {
        let whole = at.0.is_multiple_of(PAGE) && bytes.len().is_multiple_of(WAL_PAGE_SIZE);
        if !whole || at.0.checked_add(bytes.len() as u64).is_none() {
            return Err(WalError {
                lsn: at,
                kind: ErrorKind::NotWholePages,
            });
        }
        for (i, page) in bytes.chunks_exact(WAL_PAGE_SIZE).enumerate() {
            let addr = at.0 + i as u64 * PAGE;
            if self.end.is_some() {
                return Ok(());
            }
            if addr < self.next_page {
                continue;
            }
            if addr > self.next_page {
                return Err(WalError {
                    lsn: Lsn(addr),
                    kind: ErrorKind::Gap(Lsn(self.next_page)),
                });
            }
            self.page(addr, page, out)?;
            self.next_page = addr + PAGE;
        }
        Ok(())
    }

    /// Reads one page: the rest of a pending record, then every record starting on it.
    fn page(&mut self, addr: u64, page: &[u8], out: &mut Vec<Record>) -> Result<(), WalError> {
        let page_end = addr + PAGE;
        if self.pending.is_none() && self.cursor >= page_end {
            return Ok(()); // after XLOG_SWITCH: the rest of the segment is unused
        }
        let Some(ph) = self.page_header(addr, page)? else {
            self.end = Some(self.position());
            return Ok(());
        };
        let err = |kind| WalError {
            lsn: Lsn(addr),
            kind,
        };
        if let Some((lsn, total)) = self.pending {
            if ph.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                self.pending = None;
                self.aborted += 1;
                self.cursor = addr + ph.size as u64;
            } else {
                if ph.info & XLP_FIRST_IS_CONTRECORD == 0 {
                    return Err(err(ErrorKind::BadContinuation(
                        "the page does not continue the record",
                    )));
                }
                let want = total as usize - self.raw.len();
                if ph.rem_len as usize != want {
                    return Err(err(ErrorKind::BadContinuation(
                        "xlp_rem_len differs from what the record lacks",
                    )));
                }
                let n = want.min(WAL_PAGE_SIZE - ph.size);
                self.raw.extend_from_slice(&page[ph.size..ph.size + n]);
                if n < want {
                    return Ok(());
                }
                self.pending = None;
                self.finish(Lsn(lsn), Lsn(addr + (ph.size + n) as u64), out)?;
            }
        } else if self.cursor == addr {
            let mut off = ph.size as u64;
            if ph.info & XLP_FIRST_IS_CONTRECORD != 0 {
                if !self.at_start {
                    return Err(err(ErrorKind::BadContinuation(
                        "a record was expected to start here",
                    )));
                }
                if u64::from(ph.rem_len) >= PAGE - off {
                    self.cursor = page_end;
                    return Ok(());
                }
                off = align8(off + u64::from(ph.rem_len));
            }
            self.cursor = addr + off;
        }
        self.records(addr, &ph, page, out)
    }

    /// Reads the records that start on this page from the cursor on.
    fn records(
        &mut self,
        addr: u64,
        ph: &PageHeader,
        page: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<(), WalError> {
        while self.pending.is_none() && self.cursor < addr + PAGE {
            self.at_start = false;
            let off = self.cursor.saturating_sub(addr) as usize;
            let err = |kind| WalError {
                lsn: Lsn(self.cursor),
                kind,
            };
            if self.cursor < addr || off < ph.size {
                return Err(err(ErrorKind::InvalidStart));
            }
            let total = u32_at(page, off);
            if total == 0 {
                self.end = Some(Lsn(self.cursor));
                return Ok(());
            }
            if (total as usize) < RECORD_HEADER || total > MAX_RECORD_LEN {
                return Err(err(ErrorKind::BadRecordLength(total)));
            }
            let n = (total as usize).min(WAL_PAGE_SIZE - off);
            self.raw.clear();
            self.raw.extend_from_slice(&page[off..off + n]);
            if n < total as usize {
                self.pending = Some((self.cursor, total));
                return Ok(());
            }
            let lsn = Lsn(self.cursor);
            self.finish(lsn, Lsn(lsn.0 + u64::from(total)), out)?;
        }
        Ok(())
    }

    /// Checks the CRC and prev-link of the assembled record, decodes it, moves the cursor.
    fn finish(&mut self, lsn: Lsn, end: Lsn, out: &mut Vec<Record>) -> Result<(), WalError> {
        let err = |kind| WalError { lsn, kind };
        let total = self.raw.len();
        let mut hdr = [0u8; RECORD_HEADER];
        hdr.copy_from_slice(&self.raw[..RECORD_HEADER]);
        let h = decode::header(&hdr);
        // PostgreSQL's CRC covers the data after the header, then the header up to xl_crc.
        self.raw.copy_within(RECORD_HEADER.., 0);
        self.raw.truncate(total - RECORD_HEADER);
        self.raw.extend_from_slice(&hdr[..RECORD_CRC_OFFSET]);
        let computed = crc32c(&self.raw);
        self.raw.truncate(total - RECORD_HEADER);
        if computed != h.crc {
            return Err(err(ErrorKind::BadCrc {
                stored: h.crc,
                computed,
            }));
        }
        if let Some(expected) = self.prev_record {
            if h.prev != expected.0 {
                return Err(err(ErrorKind::BadPrevLink {
                    found: Lsn(h.prev),
                    expected,
                }));
            }
        }
        let rec = decode::record(self.layout, lsn, end, &h, &self.raw).map_err(err)?;
        self.prev_record = Some(lsn);
        self.cursor = if rec.detail == Detail::Switch {
            // The switch pads to the end of the segment its record ends in.
            end.0.div_ceil(self.seg_size).saturating_mul(self.seg_size)
        } else {
            align8(end.0)
        };
        out.push(rec);
        Ok(())
    }

    /// Validates a page header; `None` for an unwritten (zero) or recycled (older) page.
    fn page_header(&mut self, addr: u64, page: &[u8]) -> Result<Option<PageHeader>, WalError> {
        let err = |kind| WalError {
            lsn: Lsn(addr),
            kind,
        };
        if page[..SHORT_PAGE_HEADER].iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let magic = u16_at(page, 0);
        if magic != self.layout.page_magic {
            return Err(err(ErrorKind::BadMagic {
                found: magic,
                expected: self.layout.page_magic,
                expected_major: self.layout.major,
                found_major: major_from_page_magic(magic),
            }));
        }
        let info = u16_at(page, 2);
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(err(ErrorKind::BadPageInfo(info)));
        }
        let pageaddr = u64_at(page, 8);
        if pageaddr < addr && pageaddr % self.seg_size == addr % self.seg_size {
            return Ok(None); // a recycled segment's old page: the WAL ends here
        }
        if pageaddr != addr {
            return Err(err(ErrorKind::BadPageAddr(Lsn(pageaddr))));
        }
        let tli = u32_at(page, 4);
        if tli < self.tli {
            return Err(err(ErrorKind::TimelineBackwards {
                found: tli,
                previous: self.tli,
            }));
        }
        self.tli = tli;
        let first = addr.is_multiple_of(self.seg_size);
        let long = info & XLP_LONG_HEADER != 0;
        if first && !long {
            return Err(err(ErrorKind::MissingLongHeader));
        }
        if long && !first {
            return Err(err(ErrorKind::BadPageInfo(info)));
        }
        if first {
            self.long_header(page).map_err(err)?;
        }
        Ok(Some(PageHeader {
            size: if first {
                LONG_PAGE_HEADER
            } else {
                SHORT_PAGE_HEADER
            },
            info,
            rem_len: u32_at(page, 16),
        }))
    }

    /// Checks the long header's segment size, page size and system identifier.
    fn long_header(&mut self, page: &[u8]) -> Result<(), ErrorKind> {
        let sysid = u64_at(page, 24);
        let seg_size = u32_at(page, 32);
        let page_size = u32_at(page, 36);
        if u64::from(seg_size) != self.seg_size || page_size as usize != WAL_PAGE_SIZE {
            return Err(ErrorKind::SizeMismatch {
                seg_size,
                page_size,
                expected_seg_size: self.seg_size as u32,
            });
        }
        match self.sysid {
            Some(expected) if expected != sysid => Err(ErrorKind::SystemIdMismatch {
                found: sysid,
                expected,
            }),
            _ => {
                self.sysid = Some(sysid);
                Ok(())
            }
        }
    }
}
