//! PostgreSQL data pages of relation files: the page header, the data checksum, and a verdict per page.
//!
//! A relation segment file is a run of 8 KB pages. Each page starts with
//! `PageHeaderData` (`src/include/storage/bufpage.h`, 24 bytes, in the byte
//! order of the server that wrote it, which is this host's: pgbookend runs on
//! the database host):
//!
//! | offset | field                 | size |
//! |--------|-----------------------|------|
//! | 0      | `pd_lsn` (hi, lo u32) | 8    |
//! | 8      | `pd_checksum`         | 2    |
//! | 10     | `pd_flags`            | 2    |
//! | 12     | `pd_lower`            | 2    |
//! | 14     | `pd_upper`            | 2    |
//! | 16     | `pd_special`          | 2    |
//! | 18     | `pd_pagesize_version` | 2    |
//! | 20     | `pd_prune_xid`        | 4    |
//!
//! [`check_page`] judges a page as the server's `PageIsVerified` does when it
//! reads a block (`src/backend/storage/page/bufpage.c`): a page whose
//! `pd_upper` is 0 must be all zero (a "new" page, never checksummed);
//! any other page must have no flag bits outside `PD_VALID_FLAG_BITS`,
//! `pd_lower <= pd_upper <= pd_special <= BLCKSZ` and a MAXALIGNed
//! `pd_special`, and, when the cluster has data checksums, a `pd_checksum`
//! equal to [`checksum`] of the page and its block number. On top of the
//! server's checks it also requires the page size and layout version byte
//! (`8192 | 4`), which every page the server initialises carries.
//!
//! Per major: nothing here differs between PostgreSQL 13 and 18. The checksum
//! algorithm (`src/include/storage/checksum_impl.h`) is unchanged since 9.3,
//! `PD_VALID_FLAG_BITS` (0x0007) since 8.4, `PG_PAGE_LAYOUT_VERSION` (4)
//! since 8.3, and `PageIsVerified`'s checks are the same in every supported
//! branch (13 calls it `PageIsVerified`, 14 to 17 `PageIsVerifiedExtended`,
//! 18 `PageIsVerified` again with flags; only the reporting differs). Only
//! 8 KB pages (the default `BLCKSZ`) are handled; a cluster built with
//! another block size says so in `pg_control` ([`crate::control`]) and the
//! caller must refuse it before using this module.

use crate::Lsn;

/// `BLCKSZ`: the page size this module handles (PostgreSQL's default, and the only one supported).
pub const BLCKSZ: usize = 8192;

/// `RELSEG_SIZE` of a default build: blocks per relation segment file (1 GB of 8 KB pages).
/// The cluster's own value is in `pg_control` (`relseg_size`); pass that one when you have it.
pub const RELSEG_SIZE: u32 = 131_072;

/// `MaxBlockNumber`: the largest valid block number (`InvalidBlockNumber` is `0xFFFFFFFF`).
pub const MAX_BLOCK_NUMBER: u32 = 0xFFFF_FFFE;

/// `SizeOfPageHeaderData`: bytes of the page header.
pub const PAGE_HEADER_SIZE: usize = 24;

/// `PG_PAGE_LAYOUT_VERSION`: the layout version byte of every page written by 8.3 and later.
pub const PAGE_LAYOUT_VERSION: u8 = 4;

/// `PD_VALID_FLAG_BITS`: `PD_HAS_FREE_LINES | PD_PAGE_FULL | PD_ALL_VISIBLE`.
pub const PD_VALID_FLAG_BITS: u16 = 0x0007;

/// `MAXIMUM_ALIGNOF` on the 64-bit platforms PostgreSQL supports here.
const MAXIMUM_ALIGNOF: u16 = 8;

/// `N_SUMS`: the checksum runs this many FNV-1a-like hashes in parallel, one per column.
const N_SUMS: usize = 32;

/// `FNV_PRIME`: the 32-bit FNV prime.
const FNV_PRIME: u32 = 16_777_619;

/// `checksumBaseOffsets`: the fixed starting value of each parallel hash.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// One mixing step (`CHECKSUM_COMP`): FNV-1a with the high bits folded back in.
#[inline(always)]
fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// `pg_checksum_page`: the 16-bit data checksum PostgreSQL stores in `pd_checksum`, computed
/// over the page with `pd_checksum` taken as zero and the block number mixed in. Never 0.
///
/// It is [`checksum_unfolded`] xor the block number, reduced modulo 65535 (plus 1). The
/// reduction is where detection is lost: any single flipped bit changes the unfolded sum, but
/// about one flip in 65535 leaves the 16-bit checksum unchanged (see the tests).
pub fn checksum(page: &[u8; BLCKSZ], block: u32) -> u16 {
    let folded = checksum_unfolded(page) ^ block;
    // Reduce to 1..=65535: 0 never appears, so a zeroed pd_checksum is never "right".
    ((folded % 65_535) + 1) as u16
}

/// `pg_checksum_block` of the page with `pd_checksum` zeroed: the 32-bit sum before the block
/// number and the reduction to 16 bits, for callers (and tests) that want to know why two
/// pages share a checksum.
pub fn checksum_unfolded(page: &[u8; BLCKSZ]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { checksum_unfolded_avx2(page) };
        }
    }
    checksum_unfolded_portable(page)
}

/// [`checksum_unfolded`] compiled for AVX2 (eight 32-bit multiplies at once): the same
/// arithmetic, about twice as fast as the baseline x86-64 build, which lacks a vector
/// 32-bit multiply.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn checksum_unfolded_avx2(page: &[u8; BLCKSZ]) -> u32 {
    checksum_body(page)
}

/// [`checksum_unfolded`] for any CPU.
fn checksum_unfolded_portable(page: &[u8; BLCKSZ]) -> u32 {
    checksum_body(page)
}

/// The checksum arithmetic (`pg_checksum_block`), inlined into each CPU variant.
#[inline(always)]
fn checksum_body(page: &[u8; BLCKSZ]) -> u32 {
    let mut sums = BASE_OFFSETS;
    for (row_no, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        let mut words = [0u32; N_SUMS];
        for (w, b) in words.iter_mut().zip(row.chunks_exact(4)) {
            *w = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        }
        if row_no == 0 {
            // Bytes 8..10 are pd_checksum: the sum is over the page with it zeroed.
            let b = &row[8..12];
            words[2] = u32::from_ne_bytes([0, 0, b[2], b[3]]);
        }
        for (s, w) in sums.iter_mut().zip(words) {
            *s = mix(*s, w);
        }
    }
    // Two rounds of zeros so that every input bit reaches every output bit.
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = mix(*s, 0);
        }
    }
    sums.iter().fold(0u32, |acc, s| acc ^ s)
}

/// The fields of `PageHeaderData`, read as they are: nothing here is checked yet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageHeader {
    /// `pd_lsn`: the end of the last WAL record that changed this page.
    pub lsn: Lsn,
    /// `pd_checksum`: the stored checksum (meaningless when the cluster has none).
    pub checksum: u16,
    /// `pd_flags`.
    pub flags: u16,
    /// `pd_lower`: end of the line pointer array.
    pub lower: u16,
    /// `pd_upper`: start of tuple space; 0 marks a new (never initialised) page.
    pub upper: u16,
    /// `pd_special`: start of the access method's special space.
    pub special: u16,
    /// `pd_pagesize_version`: page size (high byte bits) or'ed with the layout version.
    pub pagesize_version: u16,
    /// `pd_prune_xid`: oldest prunable XID, or 0.
    pub prune_xid: u32,
}

fn u16_at(page: &[u8; BLCKSZ], off: usize) -> u16 {
    u16::from_ne_bytes([page[off], page[off + 1]])
}

fn u32_at(page: &[u8; BLCKSZ], off: usize) -> u32 {
    u32::from_ne_bytes([page[off], page[off + 1], page[off + 2], page[off + 3]])
}

impl PageHeader {
    /// Reads the header of a page (any bytes: no field is trusted yet).
    pub fn parse(page: &[u8; BLCKSZ]) -> PageHeader {
        let hi = u64::from(u32_at(page, 0));
        let lo = u64::from(u32_at(page, 4));
        PageHeader {
            lsn: Lsn(hi << 32 | lo),
            checksum: u16_at(page, 8),
            flags: u16_at(page, 10),
            lower: u16_at(page, 12),
            upper: u16_at(page, 14),
            special: u16_at(page, 16),
            pagesize_version: u16_at(page, 18),
            prune_xid: u32_at(page, 20),
        }
    }

    /// `PageGetPageSize`: the page size the header claims.
    pub fn page_size(&self) -> u32 {
        u32::from(self.pagesize_version & 0xFF00)
    }

    /// `PageGetPageLayoutVersion`: the layout version byte.
    pub fn layout_version(&self) -> u8 {
        (self.pagesize_version & 0x00FF) as u8
    }

    /// What is wrong with the header of a page that is not new, as `PageIsVerified` judges it
    /// plus the size/version byte; `None` when it is sane.
    pub fn problem(&self) -> Option<HeaderProblem> {
        let invalid = self.flags & !PD_VALID_FLAG_BITS;
        if invalid != 0 {
            return Some(HeaderProblem::UnknownFlags(invalid));
        }
        if self.lower > self.upper || self.upper > self.special {
            return Some(HeaderProblem::Bounds {
                lower: self.lower,
                upper: self.upper,
                special: self.special,
            });
        }
        if usize::from(self.special) > BLCKSZ || !self.special.is_multiple_of(MAXIMUM_ALIGNOF) {
            return Some(HeaderProblem::Special(self.special));
        }
        if self.page_size() != BLCKSZ as u32 || self.layout_version() != PAGE_LAYOUT_VERSION {
            return Some(HeaderProblem::SizeVersion(self.pagesize_version));
        }
        None
    }
}

/// Why a page header is not sane.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeaderProblem {
    /// `pd_upper` is 0 (a new page) but the page is not all zero.
    NewNotZero,
    /// `pd_flags` has bits outside `PD_VALID_FLAG_BITS` (the unknown bits given).
    UnknownFlags(u16),
    /// Not `pd_lower <= pd_upper <= pd_special`.
    Bounds {
        /// `pd_lower`.
        lower: u16,
        /// `pd_upper`.
        upper: u16,
        /// `pd_special`.
        special: u16,
    },
    /// `pd_special` beyond the page or not MAXALIGNed.
    Special(u16),
    /// `pd_pagesize_version` is not 8192 with layout version 4.
    SizeVersion(u16),
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::NewNotZero => write!(f, "pd_upper is 0 but the page is not all zero"),
            HeaderProblem::UnknownFlags(b) => write!(f, "unknown pd_flags bits 0x{b:04X}"),
            HeaderProblem::Bounds {
                lower,
                upper,
                special,
            } => write!(
                f,
                "pd_lower {lower}, pd_upper {upper}, pd_special {special} out of order"
            ),
            HeaderProblem::Special(s) => write!(f, "pd_special {s} beyond the page or unaligned"),
            HeaderProblem::SizeVersion(v) => {
                write!(f, "pd_pagesize_version 0x{v:04X} is not 8192 version 4")
            }
        }
    }
}

/// What was found on one page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Header sane and, when checked, the checksum matches.
    Ok,
    /// All zero: a page the server allocated but never wrote (valid).
    New,
    /// The header is not sane (its checksum, when checked, matched or was not the problem).
    BadHeader(HeaderProblem),
    /// The stored checksum differs from the one computed for this block number.
    BadChecksum {
        /// `pd_checksum` as found.
        stored: u16,
        /// [`checksum`] of the page and its block number.
        computed: u16,
    },
    /// The file ends with a partial page of this many bytes (1..8191).
    Partial(usize),
}

impl Verdict {
    /// Whether the server would read this page without complaint.
    pub fn is_good(&self) -> bool {
        matches!(self, Verdict::Ok | Verdict::New)
    }
}

/// One page judged: its block number in the relation fork, its `pd_lsn`, and the verdict.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageCheck {
    /// Block number within the relation fork (what the checksum and WAL block references use).
    pub block: u32,
    /// `pd_lsn` as found (0 for new and partial pages; untrusted when the verdict is bad), for
    /// the caller's "page newer than the backup's stop" rule.
    pub lsn: Lsn,
    /// What was found.
    pub verdict: Verdict,
}

/// Judges one page as `PageIsVerified` does: checksum (when `checksums`), then header.
/// When both are bad the checksum is reported: it proves the bytes changed.
pub fn check_page(page: &[u8; BLCKSZ], block: u32, checksums: bool) -> PageCheck {
    let header = PageHeader::parse(page);
    if header.upper == 0 {
        let verdict = if page.iter().all(|b| *b == 0) {
            Verdict::New
        } else {
            Verdict::BadHeader(HeaderProblem::NewNotZero)
        };
        let lsn = if verdict == Verdict::New {
            Lsn(0)
        } else {
            header.lsn
        };
        return PageCheck {
            block,
            lsn,
            verdict,
        };
    }
    let mut verdict = match header.problem() {
        Some(p) => Verdict::BadHeader(p),
        None => Verdict::Ok,
    };
    if checksums {
        let computed = checksum(page, block);
        if computed != header.checksum {
            verdict = Verdict::BadChecksum {
                stored: header.checksum,
                computed,
            };
        }
    }
    PageCheck {
        block,
        lsn: header.lsn,
        verdict,
    }
}

/// The block number of page `index` of segment file `segno` (`rel`, `rel.1`, ...):
/// `segno * relseg_size + index`; `None` when that is not a valid block number or
/// `relseg_size` is 0 or `index` is not inside one segment.
pub fn block_number(segno: u32, relseg_size: u32, index: u64) -> Option<u32> {
    if relseg_size == 0 || index >= u64::from(relseg_size) {
        return None;
    }
    let b = u64::from(segno) * u64::from(relseg_size) + index;
    u32::try_from(b).ok().filter(|b| *b <= MAX_BLOCK_NUMBER)
}

/// Block numbers that do not fit: the buffer would run past `MaxBlockNumber`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{pages} pages from block {first} run past the largest block number")]
pub struct BlockRangeError {
    /// The first block asked for.
    pub first: u64,
    /// The pages (full and partial) in the buffer.
    pub pages: u64,
}

/// The pages of a buffer, judged one by one (see [`check_pages`]).
#[derive(Clone, Debug)]
pub struct Pages<'a> {
    rest: &'a [u8],
    next_block: u32,
    checksums: bool,
}

impl Iterator for Pages<'_> {
    type Item = PageCheck;

    fn next(&mut self) -> Option<PageCheck> {
        if self.rest.is_empty() {
            return None;
        }
        let block = self.next_block;
        self.next_block = self.next_block.saturating_add(1);
        match self.rest.split_first_chunk::<BLCKSZ>() {
            Some((page, rest)) => {
                self.rest = rest;
                Some(check_page(page, block, self.checksums))
            }
            None => {
                let len = self.rest.len();
                self.rest = &[];
                Some(PageCheck {
                    block,
                    lsn: Lsn(0),
                    verdict: Verdict::Partial(len),
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len().div_ceil(BLCKSZ);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Pages<'_> {}

/// Judges every page of `buf`, consecutive blocks of one relation fork starting at block
/// `first_block` (a chunk of a segment file read at a page boundary; see [`block_number`]).
/// A trailing partial page is reported as [`Verdict::Partial`]. Refused when the blocks would
/// run past `MaxBlockNumber`. Allocates nothing.
pub fn check_pages(
    buf: &[u8],
    first_block: u32,
    checksums: bool,
) -> Result<Pages<'_>, BlockRangeError> {
    let pages = buf.len().div_ceil(BLCKSZ) as u64;
    let first = u64::from(first_block);
    if pages > 0 && first + pages - 1 > u64::from(MAX_BLOCK_NUMBER) {
        return Err(BlockRangeError { first, pages });
    }
    Ok(Pages {
        rest: buf,
        next_block: first_block,
        checksums,
    })
}

/// Judges a whole segment file `segno` of a relation fork held in `buf` (block number of
/// page `i` = `segno * relseg_size + i`). Refused when the file is longer than a segment or
/// its blocks would run past `MaxBlockNumber`.
pub fn check_segment(
    buf: &[u8],
    segno: u32,
    relseg_size: u32,
    checksums: bool,
) -> Result<Pages<'_>, BlockRangeError> {
    let pages = buf.len().div_ceil(BLCKSZ) as u64;
    let first = u64::from(segno) * u64::from(relseg_size);
    let err = BlockRangeError { first, pages };
    if pages == 0 {
        return check_pages(buf, 0, checksums);
    }
    let first_block = block_number(segno, relseg_size, 0).ok_or(err)?;
    block_number(segno, relseg_size, pages - 1).ok_or(err)?;
    check_pages(buf, first_block, checksums)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(lower: u16, upper: u16, special: u16) -> Box<[u8; BLCKSZ]> {
        let mut p = Box::new([0u8; BLCKSZ]);
        p[12..14].copy_from_slice(&lower.to_ne_bytes());
        p[14..16].copy_from_slice(&upper.to_ne_bytes());
        p[16..18].copy_from_slice(&special.to_ne_bytes());
        p[18..20].copy_from_slice(&(8192u16 | 4).to_ne_bytes());
        p
    }

    #[test]
    fn checksum_ignores_its_own_field_and_mixes_the_block() {
        let mut p = page_with(28, 8000, 8192);
        let c = checksum(&p, 7);
        p[8..10].copy_from_slice(&c.to_ne_bytes());
        assert_eq!(checksum(&p, 7), c);
        assert_ne!(checksum(&p, 8), c);
        assert_eq!(check_page(&p, 7, true).verdict, Verdict::Ok);
    }

    #[test]
    fn cpu_variants_agree() {
        let mut p = Box::new([0u8; BLCKSZ]);
        let mut x: u32 = 12345;
        for _ in 0..50 {
            for b in p.iter_mut() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (x >> 16) as u8;
            }
            assert_eq!(checksum_unfolded(&p), checksum_unfolded_portable(&p));
        }
    }

    #[test]
    fn header_bounds_are_checked() {
        let p = page_with(9000, 8000, 8192);
        assert!(matches!(
            check_page(&p, 0, false).verdict,
            Verdict::BadHeader(HeaderProblem::Bounds { .. })
        ));
        let p = page_with(28, 100, 8190);
        assert_eq!(
            check_page(&p, 0, false).verdict,
            Verdict::BadHeader(HeaderProblem::Special(8190))
        );
    }

    #[test]
    fn segment_block_numbers() {
        assert_eq!(block_number(1, RELSEG_SIZE, 5), Some(RELSEG_SIZE + 5));
        assert_eq!(block_number(0, RELSEG_SIZE, u64::from(RELSEG_SIZE)), None);
        assert_eq!(block_number(32768, RELSEG_SIZE, 0), None);
        assert_eq!(block_number(32767, RELSEG_SIZE, 131_071), None);
        assert_eq!(
            block_number(32767, RELSEG_SIZE, 131_070),
            Some(MAX_BLOCK_NUMBER)
        );
    }
}
