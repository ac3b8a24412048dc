//! WAL layout facts per PostgreSQL major (13 to 18): page magic, image flags, record ids.
//!
//! VERSION KNOWLEDGE for the WAL reader, kept here (not in `version.rs`) so
//! the reader's facts stay in one table keyed by major. Read from
//! `src/include/access/xlog_internal.h` (`XLOG_PAGE_MAGIC`, page header
//! flags), `xlogrecord.h` (record and block headers, `BKPIMAGE_*`),
//! `commands/dbcommands_xlog.h` and `catalog/storage_xlog.h` of each
//! `REL_N_STABLE` branch, and checked against real WAL of each major (see
//! `crates/pgbookend/tests/walreader_pg.rs`).
//!
//! Layouts that did not change between 13 and 18 are plain constants below:
//! the short page header (24 bytes), the long page header (40 bytes), the
//! record header (24 bytes), the block header (4 bytes), the image header
//! (5 bytes), `RelFileNode` (13-15) / `RelFileLocator` (16+, same three
//! OIDs in the same order).

/// Size of `XLogPageHeaderData` after alignment (`SizeOfXLogShortPHD`).
pub const SHORT_PAGE_HEADER: usize = 24;
/// Size of `XLogLongPageHeaderData` (`SizeOfXLogLongPHD`), on each segment's first page.
pub const LONG_PAGE_HEADER: usize = 40;
/// Size of `XLogRecord` (`SizeOfXLogRecord`): the fixed record header.
pub const RECORD_HEADER: usize = 24;
/// Offset of `xl_crc` in `XLogRecord`; the CRC covers the header bytes before it.
pub const RECORD_CRC_OFFSET: usize = 20;
/// `XLOG_BLCKSZ`: the WAL page size this reader accepts (PostgreSQL's default and the only
/// one the long page header of a supported cluster carries here).
pub const WAL_PAGE_SIZE: usize = 8192;
/// `BLCKSZ`: the data page size full-page images are judged against.
pub const BLCKSZ: u32 = 8192;
/// Largest record this reader accepts, checked before any byte of it is stored:
/// PostgreSQL 16+'s `XLogRecordMaxSize` (1020 MB); older majors could not write larger
/// ones either (their reader allocates at most `MaxAllocSize`).
pub const MAX_RECORD_LEN: u32 = 1020 * 1024 * 1024;

/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`: the page carries the long header (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: the record continued from the previous page
/// was abandoned (crash) and is overwritten here. Back-patched to every supported major
/// in 2021 minor releases, so accepted on all of them.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`: any other bit in `xlp_info` is invalid.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLR_MAX_BLOCK_ID`: block reference ids are 0..=32.
pub const XLR_MAX_BLOCK_ID: u8 = 32;
/// `XLR_BLOCK_ID_DATA_SHORT`: main data with a 1-byte length.
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// `XLR_BLOCK_ID_DATA_LONG`: main data with a 4-byte length.
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
/// `XLR_BLOCK_ID_ORIGIN`: a 2-byte replication origin follows.
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
/// `XLR_BLOCK_ID_TOPLEVEL_XID`: a 4-byte top-level xid follows (14+).
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// `BKPBLOCK_FORK_MASK` of `fork_flags`.
pub const BKPBLOCK_FORK_MASK: u8 = 0x0F;
/// `BKPBLOCK_HAS_IMAGE`: a full-page image follows the block header.
pub const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
/// `BKPBLOCK_HAS_DATA`: the block carries record-specific data.
pub const BKPBLOCK_HAS_DATA: u8 = 0x20;
/// `BKPBLOCK_WILL_INIT`: redo re-initialises the page.
pub const BKPBLOCK_WILL_INIT: u8 = 0x40;
/// `BKPBLOCK_SAME_REL`: the relation is the previous block's, not repeated.
pub const BKPBLOCK_SAME_REL: u8 = 0x80;
/// `MAX_FORKNUM`: main, fsm, vm, init.
pub const MAX_FORKNUM: u8 = 3;
/// `BKPIMAGE_HAS_HOLE`, the same bit on every major.
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;

/// Resource manager ids used by the reader (`rmgrlist.h`, identical 13-18).
pub const RM_XLOG_ID: u8 = 0;
/// `RM_SMGR_ID`: relation file create/truncate.
pub const RM_SMGR_ID: u8 = 2;
/// `RM_DBASE_ID`: database create/drop.
pub const RM_DBASE_ID: u8 = 4;
/// `XLOG_SWITCH` (`RM_XLOG_ID`): the rest of the segment is unused.
pub const XLOG_SWITCH: u8 = 0x40;
/// `XLOG_SMGR_CREATE`.
pub const XLOG_SMGR_CREATE: u8 = 0x10;
/// `XLOG_SMGR_TRUNCATE`.
pub const XLOG_SMGR_TRUNCATE: u8 = 0x20;
/// `XLR_RMGR_INFO_MASK`: the rmgr-specific bits of `xl_info`.
pub const XLR_RMGR_INFO_MASK: u8 = 0xF0;

/// How a major encodes full-page image flags (`bimg_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageBits {
    /// `BKPIMAGE_APPLY` (13-14: 0x04, 15+: 0x02).
    pub apply: u8,
    /// pglz compression (13-14 `BKPIMAGE_IS_COMPRESSED` 0x02; 15+ `BKPIMAGE_COMPRESS_PGLZ` 0x04).
    pub pglz: u8,
    /// `BKPIMAGE_COMPRESS_LZ4` (15+), 0 where the major has none.
    pub lz4: u8,
    /// `BKPIMAGE_COMPRESS_ZSTD` (15+), 0 where the major has none.
    pub zstd: u8,
}

/// The `RM_DBASE_ID` record types of a major (`dbcommands_xlog.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbaseInfo {
    /// Create by copying a template directory (13-14 `XLOG_DBASE_CREATE`, 15+ `..._FILE_COPY`).
    pub create_file_copy: u8,
    /// Create with the WAL_LOG strategy (15+), `None` before.
    pub create_wal_log: Option<u8>,
    /// `XLOG_DBASE_DROP`.
    pub drop: u8,
}

/// What the WAL reader needs to know about one major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalLayout {
    /// The PostgreSQL major.
    pub major: u32,
    /// `XLOG_PAGE_MAGIC`: every page header starts with it.
    pub page_magic: u16,
    /// Full-page image flag bits.
    pub image: ImageBits,
    /// Database record types.
    pub dbase: DbaseInfo,
    /// Whether `XLR_BLOCK_ID_TOPLEVEL_XID` exists (14+).
    pub toplevel_xid: bool,
}

const IMAGE_13: ImageBits = ImageBits {
    apply: 0x04,
    pglz: 0x02,
    lz4: 0,
    zstd: 0,
};
const IMAGE_15: ImageBits = ImageBits {
    apply: 0x02,
    pglz: 0x04,
    lz4: 0x08,
    zstd: 0x10,
};
const DBASE_13: DbaseInfo = DbaseInfo {
    create_file_copy: 0x00,
    create_wal_log: None,
    drop: 0x10,
};
const DBASE_15: DbaseInfo = DbaseInfo {
    create_file_copy: 0x00,
    create_wal_log: Some(0x10),
    drop: 0x20,
};

/// The table, one row per supported major.
const LAYOUTS: [WalLayout; 6] = [
    WalLayout {
        major: 13,
        page_magic: 0xD106,
        image: IMAGE_13,
        dbase: DBASE_13,
        toplevel_xid: false,
    },
    WalLayout {
        major: 14,
        page_magic: 0xD10D,
        image: IMAGE_13,
        dbase: DBASE_13,
        toplevel_xid: true,
    },
    WalLayout {
        major: 15,
        page_magic: 0xD110,
        image: IMAGE_15,
        dbase: DBASE_15,
        toplevel_xid: true,
    },
    WalLayout {
        major: 16,
        page_magic: 0xD113,
        image: IMAGE_15,
        dbase: DBASE_15,
        toplevel_xid: true,
    },
    WalLayout {
        major: 17,
        page_magic: 0xD116,
        image: IMAGE_15,
        dbase: DBASE_15,
        toplevel_xid: true,
    },
    WalLayout {
        major: 18,
        page_magic: 0xD118,
        image: IMAGE_15,
        dbase: DBASE_15,
        toplevel_xid: true,
    },
];

/// The WAL layout of `major`, or `None` if pgbookend does not support it.
pub fn layout(major: u32) -> Option<&'static WalLayout> {
    LAYOUTS.iter().find(|l| l.major == major)
}

/// The major whose pages start with `magic`, to name what a foreign segment is.
pub fn major_from_page_magic(magic: u16) -> Option<u32> {
    LAYOUTS
        .iter()
        .find(|l| l.page_magic == magic)
        .map(|l| l.major)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_supported_major_and_distinct_magics() {
        for m in crate::version::SUPPORTED_MAJORS {
            let l = layout(m).expect("row");
            assert_eq!(major_from_page_magic(l.page_magic), Some(m));
        }
        assert!(layout(12).is_none());
        assert!(layout(19).is_none());
    }
}
