//! The long page header at the start of every WAL segment (`XLogLongPageHeaderData`):
//! which cluster, which major and which segment size wrote it. The archiver reads it
//! to refuse a segment of another cluster before storing it under this one's name.
//!
//! ```
//! use pgbookend_formats::walheader;
//! assert!(walheader::parse(&[0u8; 8]).is_err());
//! ```

use crate::lsn::Lsn;
use crate::walreader::layout::{self, LONG_PAGE_HEADER, XLP_LONG_HEADER};

/// The fields of a segment's first page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `xlp_magic`.
    pub magic: u16,
    /// The major whose page magic this is, if a supported one.
    pub major: Option<u32>,
    /// `xlp_info` flag bits.
    pub info: u16,
    /// `xlp_tli`: the timeline of the page.
    pub timeline: u32,
    /// `xlp_pageaddr`: the WAL location of the page.
    pub pageaddr: Lsn,
    /// `xlp_sysid`: the system identifier of the cluster that wrote it.
    pub system_identifier: u64,
    /// `xlp_seg_size`.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`.
    pub page_size: u32,
}

/// Why bytes are not the start of a WAL segment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than a long page header.
    #[error("too short for a WAL segment header ({len} bytes)")]
    TooShort {
        /// How many bytes were given.
        len: usize,
    },
    /// The first page has no long header flag: not the first page of a segment.
    #[error(
        "the first page has no long header (xlp_info {info:#06x}): not the start of a WAL segment"
    )]
    NotLong {
        /// The flag bits found.
        info: u16,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes the long page header from the first bytes of a segment (layout unchanged
/// from 13 to 18: magic u16, info u16, tli u32, pageaddr u64, rem_len u32, padding,
/// sysid u64, seg_size u32, xlog_blcksz u32).
pub fn parse(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    if bytes.len() < LONG_PAGE_HEADER {
        return Err(HeaderError::TooShort { len: bytes.len() });
    }
    let magic = u16_at(bytes, 0);
    let info = u16_at(bytes, 2);
    if info & XLP_LONG_HEADER == 0 {
        return Err(HeaderError::NotLong { info });
    }
    Ok(SegmentHeader {
        magic,
        major: layout::major_from_page_magic(magic),
        info,
        timeline: u32_at(bytes, 4),
        pageaddr: Lsn(u64_at(bytes, 8)),
        system_identifier: u64_at(bytes, 24),
        seg_size: u32_at(bytes, 32),
        page_size: u32_at(bytes, 36),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_long_header() {
        let mut b = vec![0u8; 8192];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        b[4..8].copy_from_slice(&3u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x0200_0000u64.to_le_bytes());
        b[24..32].copy_from_slice(&7_000_000_000_000_000_001u64.to_le_bytes());
        b[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let h = parse(&b).unwrap();
        assert_eq!(h.major, Some(15));
        assert_eq!(h.timeline, 3);
        assert_eq!(h.pageaddr, Lsn(0x0200_0000));
        assert_eq!(h.system_identifier, 7_000_000_000_000_000_001);
        assert_eq!(h.seg_size, 16 << 20);
        assert_eq!(h.page_size, 8192);
        b[2] = 0;
        assert!(matches!(parse(&b), Err(HeaderError::NotLong { .. })));
        assert!(matches!(
            parse(&b[..10]),
            Err(HeaderError::TooShort { len: 10 })
        ));
    }
}
