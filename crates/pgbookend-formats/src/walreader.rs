//! A pure reader of PostgreSQL WAL (13 to 18): segment bytes in, records with their block references out.
//!
//! pgbookend reads the WAL of a backup's window to know which data blocks
//! were rewritten while the copy ran (a full-page image or a block reference
//! in that WAL means replay repairs the page) and which relation files were
//! created, truncated or dropped. This module decodes exactly that: page
//! headers (short and long), records crossing page and segment boundaries,
//! the record header and its CRC-32C, block references (tablespace,
//! database, relation, fork, block, image flags, `BKPBLOCK_SAME_REL`), main
//! data lengths, and the smgr create/truncate and database create/drop
//! records. Every other record is returned with its resource manager, info
//! and block references only.
//!
//! Input is hostile: nothing here panics, and memory grows only with the
//! bytes actually fed (a record's claimed length is checked against
//! [`layout::MAX_RECORD_LEN`] and never pre-allocated).
//!
//! ```
//! use pgbookend_formats::walreader::WalReader;
//! use pgbookend_formats::Lsn;
//! let mut r = WalReader::new(15, 16 * 1024 * 1024, Lsn(0x0100_0028)).unwrap();
//! // Feed whole pages starting at a page boundary, e.g. one segment file:
//! // let records = r.feed(Lsn(0x0100_0000), &segment_bytes)?;
//! assert_eq!(r.next_page(), Lsn(0x0100_0000));
//! ```

mod decode;
pub mod layout;
mod stream;

pub use stream::WalReader;

use crate::Lsn;

/// A relation file's identity (`RelFileNode` before 16, `RelFileLocator` from 16): the
/// tablespace, database and relfilenode OIDs that name its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFileLocator {
    /// Tablespace OID (`spcOid`; 1663 is `pg_default`, 1664 `pg_global`).
    pub spc: u32,
    /// Database OID (0 for shared relations).
    pub db: u32,
    /// The relfilenode (`relNumber`).
    pub rel: u32,
}

/// A relation fork: the file set a block or smgr record names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelationFork {
    /// The relation.
    pub rel: RelFileLocator,
    /// Fork number: 0 main, 1 fsm, 2 vm, 3 init.
    pub fork: u8,
}

/// How a full-page image is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// PostgreSQL's pglz (the only method before 15).
    Pglz,
    /// LZ4 (15+).
    Lz4,
    /// Zstandard (15+).
    Zstd,
}

/// A full-page image attached to a block reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Bytes of the stored image (after hole removal and compression).
    pub len: u16,
    /// Where the hole (unused middle of the page) starts.
    pub hole_offset: u16,
    /// Length of the hole.
    pub hole_length: u16,
    /// `BKPIMAGE_APPLY`: redo restores the page from this image.
    pub apply: bool,
    /// Compression method, if any.
    pub compression: Option<Compression>,
}

/// One block reference of a record: which data page the record changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// Block reference id within the record (0..=32).
    pub id: u8,
    /// The relation.
    pub rel: RelFileLocator,
    /// Fork number: 0 main, 1 fsm, 2 vm, 3 init.
    pub fork: u8,
    /// Block number in the fork.
    pub block: u32,
    /// `BKPBLOCK_WILL_INIT`: redo rebuilds the page from scratch.
    pub will_init: bool,
    /// Length of the record-specific block data.
    pub data_len: u16,
    /// The full-page image, if the record carries one.
    pub image: Option<ImageInfo>,
}

/// What a record means beyond its block references, for the records pgbookend cares about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Any other record.
    Other,
    /// `XLOG_SWITCH`: the rest of the segment holds no records.
    Switch,
    /// `XLOG_SMGR_CREATE`: a relation fork file was created.
    SmgrCreate(RelationFork),
    /// `XLOG_SMGR_TRUNCATE`: a relation was truncated to `block` blocks.
    SmgrTruncate {
        /// The relation.
        rel: RelFileLocator,
        /// New length in blocks.
        block: u32,
        /// `SMGR_TRUNCATE_HEAP` 1, `_VM` 2, `_FSM` 4.
        flags: u32,
    },
    /// A database directory was created.
    DbaseCreate {
        /// The new database's OID.
        db: u32,
        /// Its tablespace.
        spc: u32,
        /// The template (database, tablespace) copied, for a file-copy create.
        source: Option<(u32, u32)>,
    },
    /// A database was dropped from these tablespaces.
    DbaseDrop {
        /// The database OID.
        db: u32,
        /// The tablespaces its directories were removed from.
        spcs: Vec<u32>,
    },
}

/// One decoded WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts.
    pub lsn: Lsn,
    /// The first byte after the record (not aligned).
    pub end: Lsn,
    /// `xl_prev`: the previous record's start.
    pub prev: Lsn,
    /// `xl_xid`.
    pub xid: u32,
    /// `xl_rmid`: the resource manager.
    pub rmid: u8,
    /// `xl_info`.
    pub info: u8,
    /// `xl_tot_len`.
    pub total_len: u32,
    /// Block references, in id order.
    pub blocks: Vec<BlockRef>,
    /// Length of the main data.
    pub main_data_len: u32,
    /// Replication origin, if recorded.
    pub origin: Option<u16>,
    /// Top-level transaction id of a subtransaction's record (14+), if recorded.
    pub toplevel_xid: Option<u32>,
    /// Decoded meaning for smgr/database/switch records.
    pub detail: Detail,
}

/// What was wrong with the WAL, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("WAL at {lsn}: {kind}")]
pub struct WalError {
    /// The page or record where the problem was found.
    pub lsn: Lsn,
    /// What was found.
    pub kind: ErrorKind,
}

/// The kinds of WAL problems the reader reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The major is not one pgbookend supports.
    #[error("PostgreSQL {0} is not supported")]
    UnsupportedMajor(u32),
    /// The segment size is not a power of two between 1 MB and 1 GB.
    #[error("invalid WAL segment size {0}")]
    InvalidSegmentSize(u32),
    /// The start position cannot begin a record (not 8-byte aligned or inside a page header).
    #[error("invalid start position")]
    InvalidStart,
    /// Bytes were fed that do not start on a page boundary or are not whole pages.
    #[error("input is not whole WAL pages starting on a page boundary")]
    NotWholePages,
    /// Pages were skipped: the bytes fed start after the next expected page.
    #[error("missing WAL: expected the page at {0}")]
    Gap(Lsn),
    /// The page does not start with this major's `XLOG_PAGE_MAGIC`.
    #[error("invalid page magic {found:#06X} (PostgreSQL {expected_major} writes {expected:#06X}{})",
        .found_major.map(|m| format!("; {found:#06X} is PostgreSQL {m}")).unwrap_or_default())]
    BadMagic {
        /// Magic found.
        found: u16,
        /// Magic expected.
        expected: u16,
        /// Major expected.
        expected_major: u32,
        /// The major the found magic belongs to, if any.
        found_major: Option<u32>,
    },
    /// `xlp_info` has bits no PostgreSQL sets, or a long header where none belongs.
    #[error("invalid page info bits {0:#06X}")]
    BadPageInfo(u16),
    /// The first page of a segment lacks the long header.
    #[error("first page of a segment without the long header")]
    MissingLongHeader,
    /// The long header names another segment size or page size.
    #[error("long page header says segment size {seg_size} and page size {page_size}, expected {expected_seg_size} and 8192")]
    SizeMismatch {
        /// `xlp_seg_size` found.
        seg_size: u32,
        /// `xlp_xlog_blcksz` found.
        page_size: u32,
        /// The segment size the reader was built for.
        expected_seg_size: u32,
    },
    /// The long header names another system identifier than earlier segments.
    #[error("system identifier {found} differs from {expected} of earlier segments")]
    SystemIdMismatch {
        /// Found.
        found: u64,
        /// Seen first.
        expected: u64,
    },
    /// `xlp_pageaddr` is not where the page was read from.
    #[error("page claims address {0}")]
    BadPageAddr(Lsn),
    /// The timeline went backwards between pages.
    #[error("timeline {found} after {previous}")]
    TimelineBackwards {
        /// Found.
        found: u32,
        /// Seen before.
        previous: u32,
    },
    /// A record continues, but the page does not say it holds its rest (or the wrong length).
    #[error("bad continuation: {0}")]
    BadContinuation(&'static str),
    /// `xl_tot_len` is smaller than a record header or larger than the cap.
    #[error("invalid record length {0}")]
    BadRecordLength(u32),
    /// The record's CRC-32C does not match.
    #[error("record CRC {stored:#010X} stored, {computed:#010X} computed")]
    BadCrc {
        /// `xl_crc`.
        stored: u32,
        /// Computed over the record.
        computed: u32,
    },
    /// `xl_prev` does not point at the previous record.
    #[error("record's prev-link {found} is not the previous record {expected}")]
    BadPrevLink {
        /// `xl_prev`.
        found: Lsn,
        /// The previous record's start.
        expected: Lsn,
    },
    /// The headers of the record overrun it.
    #[error("record too short for its headers")]
    ShortRecord,
    /// A block reference or the data lengths are inconsistent.
    #[error("invalid block reference: {0}")]
    BadBlockRef(&'static str),
    /// The main data of a record of interest is too short or out of range.
    #[error("invalid main data for rmgr {0} info {1:#04X}")]
    BadMainData(u8, u8),
}
