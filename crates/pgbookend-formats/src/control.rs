//! `global/pg_control` (PostgreSQL's `ControlFileData`) for majors 13 to 18 on x86_64.
//!
//! `pg_control` is an 8192-byte file (`PG_CONTROL_FILE_SIZE`) whose first
//! bytes are the C struct `ControlFileData`, written with the machine's
//! alignment and byte order, ending with a CRC-32C of everything before it.
//! The server rewrites it in place, so a reader racing a write can see a mix
//! of old and new bytes ("torn read"); the CRC tells. [`read_stable`] is the
//! retry rule for that.
//!
//! # Layouts (x86_64, little-endian, 8-byte alignment)
//!
//! Offsets, read from `src/include/catalog/pg_control.h` of each branch and
//! checked with `offsetof` on a mirror of the structs and against files
//! written by real servers:
//!
//! | field                              | 13–16 | 17  | 18  |
//! |------------------------------------|-------|-----|-----|
//! | system_identifier (u64)            | 0     | 0   | 0   |
//! | pg_control_version (u32)           | 8     | 8   | 8   |
//! | catalog_version_no (u32)           | 12    | 12  | 12  |
//! | state (enum, 4 bytes)              | 16    | 16  | 16  |
//! | time (pg_time_t, i64)              | 24    | 24  | 24  |
//! | checkPoint (XLogRecPtr)            | 32    | 32  | 32  |
//! | checkPointCopy.redo                | 40    | 40  | 40  |
//! | checkPointCopy.ThisTimeLineID      | 48    | 48  | 48  |
//! | checkPointCopy.PrevTimeLineID      | 52    | 52  | 52  |
//! | checkPointCopy.fullPageWrites      | 56    | 56  | 56  |
//! | checkPointCopy.wal_level (int)     | —     | 60  | 60  |
//! | checkPointCopy.nextXid (u64)       | 64    | 64  | 64  |
//! | checkPointCopy.time (i64)          | 104   | 104 | 104 |
//! | minRecoveryPoint                   | 136   | 136 | 136 |
//! | minRecoveryPointTLI                | 144   | 144 | 144 |
//! | backupStartPoint                   | 152   | 152 | 152 |
//! | backupEndPoint                     | 160   | 160 | 160 |
//! | backupEndRequired (bool)           | 168   | 168 | 168 |
//! | wal_level (int)                    | 172   | 172 | 172 |
//! | blcksz                             | 216   | 216 | 216 |
//! | relseg_size                        | 220   | 220 | 220 |
//! | xlog_blcksz                        | 224   | 224 | 224 |
//! | xlog_seg_size                      | 228   | 228 | 228 |
//! | data_checksum_version              | 252   | 252 | 252 |
//! | default_char_signedness (bool)     | —     | —   | 256 |
//! | mock_authentication_nonce (32 B)   | 256   | 256 | 257 |
//! | crc (u32)                          | 288   | 288 | 292 |
//! | sizeof(ControlFileData)            | 296   | 296 | 296 |
//!
//! 17 added `wal_level` to `CheckPoint`, in what was padding after
//! `fullPageWrites`, so no later offset moved; `PG_CONTROL_VERSION` became
//! 1700. 18 added `default_char_signedness` after `data_checksum_version`,
//! which moves the nonce and the CRC; `PG_CONTROL_VERSION` became 1800.
//! 14 renamed `CheckPoint.nextFullXid` to `nextXid` (same place, same type).
//! 13 to 16 are byte-identical in layout and share 1300; the catalog
//! version tells them apart (see [`crate::version`]).

use crate::crc32c::crc32c;
use crate::lsn::Lsn;
use crate::version;
use std::fmt;

/// Size of the `pg_control` file on disk (`PG_CONTROL_FILE_SIZE`).
pub const FILE_SIZE: usize = 8192;

/// The checkpoint location [`invalidate_checkpoint`] writes: `0/18`.
///
/// Why not 0 (`InvalidXLogRecPtr`): in 13 to 18, `StartupXLOG` begins with
/// `if (!XRecOffIsValid(ControlFile->checkPoint)) ereport(FATAL, "control
/// file contains invalid checkpoint location")`, before it looks for
/// `backup_label`. `XRecOffIsValid(p)` is `p % XLOG_BLCKSZ >=
/// SizeOfXLogShortPHD` (24), so 0 would stop the server *with* a
/// `backup_label` too. 24 passes that test for every WAL block size.
///
/// With `backup_label` present, recovery takes the checkpoint from the label
/// and never reads `ControlFile->checkPoint`; it overwrites it with the
/// label's checkpoint (and fsyncs `pg_control`) before renaming
/// `backup_label` away, so a crash during recovery is safe.
///
/// Without `backup_label`, recovery reads the checkpoint record at
/// `ControlFile->checkPoint` (xlog.c `StartupXLOG` in 13/14,
/// xlogrecovery.c `InitWalRecovery` in 15 to 18). `0/18` is byte 24 of WAL
/// segment 0 of the timeline: segment 0 is never written (`initdb` starts
/// WAL in segment 1), and even if it existed, byte 24 lies inside the
/// 40-byte long page header of a segment's first page, where no record can
/// start ("invalid record offset"). So the read fails and the server stops
/// with `PANIC: could not locate a valid checkpoint record` instead of
/// replaying from the wrong place. (In standby mode, with `standby.signal`
/// and a `pg_control` that demands archive recovery, the startup process
/// retries forever instead of panicking; it still never becomes consistent
/// or accepts connections.)
pub const INVALIDATED_CHECKPOINT: Lsn = Lsn(24);

/// `DBState`: what the server was doing when it last wrote `pg_control`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbState {
    /// `DB_STARTUP` (0).
    Startup,
    /// `DB_SHUTDOWNED` (1): clean shutdown of a primary.
    Shutdowned,
    /// `DB_SHUTDOWNED_IN_RECOVERY` (2): clean shutdown of a standby.
    ShutdownedInRecovery,
    /// `DB_SHUTDOWNING` (3).
    Shutdowning,
    /// `DB_IN_CRASH_RECOVERY` (4).
    InCrashRecovery,
    /// `DB_IN_ARCHIVE_RECOVERY` (5): also a running standby.
    InArchiveRecovery,
    /// `DB_IN_PRODUCTION` (6): a running primary.
    InProduction,
    /// A value PostgreSQL 13 to 18 never writes.
    Unknown(u32),
}

impl From<u32> for DbState {
    fn from(v: u32) -> DbState {
        match v {
            0 => DbState::Startup,
            1 => DbState::Shutdowned,
            2 => DbState::ShutdownedInRecovery,
            3 => DbState::Shutdowning,
            4 => DbState::InCrashRecovery,
            5 => DbState::InArchiveRecovery,
            6 => DbState::InProduction,
            other => DbState::Unknown(other),
        }
    }
}

impl fmt::Display for DbState {
    /// The words `pg_controldata` prints for "Database cluster state".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DbState::Startup => "starting up",
            DbState::Shutdowned => "shut down",
            DbState::ShutdownedInRecovery => "shut down in recovery",
            DbState::Shutdowning => "shutting down",
            DbState::InCrashRecovery => "in crash recovery",
            DbState::InArchiveRecovery => "in archive recovery",
            DbState::InProduction => "in production",
            DbState::Unknown(v) => return write!(f, "unrecognized status code {v}"),
        };
        f.write_str(s)
    }
}

/// The fields of `pg_control` that pgbookend uses, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFile {
    /// The PostgreSQL major that wrote the file (13 to 18).
    pub major: u32,
    /// `system_identifier`: the cluster's identity; a copy and its bundle must agree.
    pub system_identifier: u64,
    /// `pg_control_version` (1300 for 13–16, 1700 for 17, 1800 for 18).
    pub pg_control_version: u32,
    /// `catalog_version_no`.
    pub catalog_version_no: u32,
    /// `state`.
    pub state: DbState,
    /// `time`: when `pg_control` was last updated (Unix seconds).
    pub time: i64,
    /// `checkPoint`: where the latest checkpoint record is; where recovery starts without `backup_label`.
    pub checkpoint: Lsn,
    /// `checkPointCopy.redo`: the latest checkpoint's REDO location.
    pub redo: Lsn,
    /// `checkPointCopy.ThisTimeLineID`: the latest checkpoint's timeline.
    pub timeline: u32,
    /// `checkPointCopy.PrevTimeLineID`.
    pub prev_timeline: u32,
    /// `checkPointCopy.fullPageWrites`.
    pub full_page_writes: bool,
    /// `checkPointCopy.nextXid`: epoch in the high 32 bits, xid in the low.
    pub next_xid: u64,
    /// `checkPointCopy.time`: when the latest checkpoint was made (Unix seconds).
    pub checkpoint_time: i64,
    /// `checkPointCopy.wal_level` (17 and later; `None` before).
    pub checkpoint_wal_level: Option<i32>,
    /// `minRecoveryPoint`: on a standby, the backup's end point for a backup taken there.
    pub min_recovery_point: Lsn,
    /// `minRecoveryPointTLI`.
    pub min_recovery_point_tli: u32,
    /// `backupStartPoint`.
    pub backup_start_point: Lsn,
    /// `backupEndPoint`.
    pub backup_end_point: Lsn,
    /// `backupEndRequired`.
    pub backup_end_required: bool,
    /// `wal_level` setting (0 minimal, 1 replica, 2 logical).
    pub wal_level: i32,
    /// `blcksz`: data block size.
    pub blcksz: u32,
    /// `relseg_size`: blocks per relation segment file.
    pub relseg_size: u32,
    /// `xlog_blcksz`: WAL block size.
    pub xlog_blcksz: u32,
    /// `xlog_seg_size`: WAL segment size in bytes.
    pub xlog_seg_size: u32,
    /// `data_checksum_version` (0 = data checksums off).
    pub data_checksum_version: u32,
    /// `default_char_signedness` (18 and later; `None` before).
    pub default_char_signedness: Option<bool>,
    /// The stored CRC-32C (verified by [`parse`]).
    pub crc: u32,
}

impl ControlFile {
    /// Whether the checkpoint location is the one [`invalidate_checkpoint`]
    /// writes, i.e. this `pg_control` was prepared to need a `backup_label`.
    pub fn is_checkpoint_invalidated(&self) -> bool {
        self.checkpoint == INVALIDATED_CHECKPOINT
    }

    /// `wal_level` as PostgreSQL names it ("minimal", "replica", "logical"), for messages.
    pub fn wal_level_name(&self) -> &'static str {
        match self.wal_level {
            0 => "minimal",
            1 => "replica",
            2 => "logical",
            _ => "unrecognized wal_level",
        }
    }
}

/// Why bytes are not a usable `pg_control`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Fewer bytes than a `pg_control` file holds.
    #[error(
        "pg_control is too short: {len} bytes, expected {FILE_SIZE}; the file is truncated, was copied incompletely, or is not a pg_control file"
    )]
    TooShort {
        /// How many bytes were given.
        len: usize,
    },
    /// The version numbers are not those of a supported major.
    #[error("{}", unknown_version_message(*.pg_control_version, *.catalog))]
    UnknownVersion {
        /// The `pg_control_version` found.
        pg_control_version: u32,
        /// The `catalog_version_no` found.
        catalog: u32,
    },
    /// The CRC does not match the contents.
    #[error(
        "pg_control is torn or corrupt: its CRC is {stored:08X} but its contents give {computed:08X}. A read that raced a write by the server (torn read) succeeds when repeated; if the same bytes keep failing, the file is damaged and must not be used"
    )]
    BadCrc {
        /// The CRC stored in the file.
        stored: u32,
        /// The CRC of the contents.
        computed: u32,
    },
}

/// The message for [`ControlError::UnknownVersion`], with a hint when the
/// numbers look byte-swapped (a file from a big-endian machine).
fn unknown_version_message(pg_control_version: u32, catalog: u32) -> String {
    let mut m = format!(
        "pg_control has pg_control_version {pg_control_version} and catalog_version_no {catalog}, which is not PostgreSQL {} to {}: an unsupported major, a development build, or not a pg_control file",
        version::SUPPORTED_MAJORS[0],
        version::SUPPORTED_MAJORS[version::SUPPORTED_MAJORS.len() - 1],
    );
    if version::major_from_control(pg_control_version.swap_bytes(), catalog.swap_bytes()).is_some()
    {
        m.push_str(" (hint: the numbers are byte-swapped; the file was written by a machine of the other byte order)");
    }
    m
}

/// Where the fields that differ between majors are (all others are shared).
struct Layout {
    /// Offset of `checkPointCopy.wal_level`, if the major has it.
    checkpoint_wal_level: Option<usize>,
    /// Offset of `default_char_signedness`, if the major has it.
    default_char_signedness: Option<usize>,
    /// Offset of `crc` = number of bytes the CRC covers.
    crc: usize,
}

/// The layout of `major`'s `ControlFileData` on x86_64 (see the module table).
fn layout(major: u32) -> Layout {
    match major {
        13..=16 => Layout {
            checkpoint_wal_level: None,
            default_char_signedness: None,
            crc: 288,
        },
        17 => Layout {
            checkpoint_wal_level: Some(60),
            default_char_signedness: None,
            crc: 288,
        },
        _ => Layout {
            checkpoint_wal_level: Some(60),
            default_char_signedness: Some(256),
            crc: 292,
        },
    }
}

/// Offsets shared by every supported major.
mod off {
    pub const SYSTEM_IDENTIFIER: usize = 0;
    pub const PG_CONTROL_VERSION: usize = 8;
    pub const CATALOG_VERSION_NO: usize = 12;
    pub const STATE: usize = 16;
    pub const TIME: usize = 24;
    pub const CHECKPOINT: usize = 32;
    pub const REDO: usize = 40;
    pub const TIMELINE: usize = 48;
    pub const PREV_TIMELINE: usize = 52;
    pub const FULL_PAGE_WRITES: usize = 56;
    pub const NEXT_XID: usize = 64;
    pub const CHECKPOINT_TIME: usize = 104;
    pub const MIN_RECOVERY_POINT: usize = 136;
    pub const MIN_RECOVERY_POINT_TLI: usize = 144;
    pub const BACKUP_START_POINT: usize = 152;
    pub const BACKUP_END_POINT: usize = 160;
    pub const BACKUP_END_REQUIRED: usize = 168;
    pub const WAL_LEVEL: usize = 172;
    pub const BLCKSZ: usize = 216;
    pub const RELSEG_SIZE: usize = 220;
    pub const XLOG_BLCKSZ: usize = 224;
    pub const XLOG_SEG_SIZE: usize = 228;
    pub const DATA_CHECKSUM_VERSION: usize = 252;
}

/// Little-endian readers over a slice already checked to be [`FILE_SIZE`] long.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }
    fn i32(&self, at: usize) -> i32 {
        self.u32(at) as i32
    }
    fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }
    fn i64(&self, at: usize) -> i64 {
        self.u64(at) as i64
    }
    fn lsn(&self, at: usize) -> Lsn {
        Lsn(self.u64(at))
    }
    fn bool(&self, at: usize) -> bool {
        self.0[at] != 0
    }
}

/// Checks length, version and CRC; returns the major and its layout.
fn check(bytes: &[u8]) -> Result<(u32, Layout), ControlError> {
    if bytes.len() < FILE_SIZE {
        return Err(ControlError::TooShort { len: bytes.len() });
    }
    let r = Reader(bytes);
    let pg_control_version = r.u32(off::PG_CONTROL_VERSION);
    let catalog = r.u32(off::CATALOG_VERSION_NO);
    let major = version::major_from_control(pg_control_version, catalog).ok_or(
        ControlError::UnknownVersion {
            pg_control_version,
            catalog,
        },
    )?;
    let l = layout(major);
    let stored = r.u32(l.crc);
    let computed = crc32c(&bytes[..l.crc]);
    if stored != computed {
        return Err(ControlError::BadCrc { stored, computed });
    }
    Ok((major, l))
}

/// Decodes a `pg_control` file (all [`FILE_SIZE`] bytes of it), after checking
/// that it is complete, from a supported major, and intact (CRC). This is the
/// only way pgbookend reads `pg_control`; bytes beyond [`FILE_SIZE`] are ignored.
pub fn parse(bytes: &[u8]) -> Result<ControlFile, ControlError> {
    let (major, l) = check(bytes)?;
    let r = Reader(bytes);
    Ok(ControlFile {
        major,
        system_identifier: r.u64(off::SYSTEM_IDENTIFIER),
        pg_control_version: r.u32(off::PG_CONTROL_VERSION),
        catalog_version_no: r.u32(off::CATALOG_VERSION_NO),
        state: DbState::from(r.u32(off::STATE)),
        time: r.i64(off::TIME),
        checkpoint: r.lsn(off::CHECKPOINT),
        redo: r.lsn(off::REDO),
        timeline: r.u32(off::TIMELINE),
        prev_timeline: r.u32(off::PREV_TIMELINE),
        full_page_writes: r.bool(off::FULL_PAGE_WRITES),
        next_xid: r.u64(off::NEXT_XID),
        checkpoint_time: r.i64(off::CHECKPOINT_TIME),
        checkpoint_wal_level: l.checkpoint_wal_level.map(|o| r.i32(o)),
        min_recovery_point: r.lsn(off::MIN_RECOVERY_POINT),
        min_recovery_point_tli: r.u32(off::MIN_RECOVERY_POINT_TLI),
        backup_start_point: r.lsn(off::BACKUP_START_POINT),
        backup_end_point: r.lsn(off::BACKUP_END_POINT),
        backup_end_required: r.bool(off::BACKUP_END_REQUIRED),
        wal_level: r.i32(off::WAL_LEVEL),
        blcksz: r.u32(off::BLCKSZ),
        relseg_size: r.u32(off::RELSEG_SIZE),
        xlog_blcksz: r.u32(off::XLOG_BLCKSZ),
        xlog_seg_size: r.u32(off::XLOG_SEG_SIZE),
        data_checksum_version: r.u32(off::DATA_CHECKSUM_VERSION),
        default_char_signedness: l.default_char_signedness.map(|o| r.bool(o)),
        crc: r.u32(l.crc),
    })
}

/// Returns a copy of a valid `pg_control` whose checkpoint location is
/// [`INVALIDATED_CHECKPOINT`] (`0/18`), with the CRC recomputed; every other
/// byte is unchanged.
///
/// `prepare` installs this so that a restored copy started *without* its
/// `backup_label` stops with "could not locate a valid checkpoint record"
/// instead of recovering silently from the wrong checkpoint, while *with*
/// `backup_label` it recovers normally from the label's checkpoint. See
/// [`INVALIDATED_CHECKPOINT`] for why the value is `0/18` and not 0.
pub fn invalidate_checkpoint(bytes: &[u8]) -> Result<Vec<u8>, ControlError> {
    let (_, l) = check(bytes)?;
    let mut out = bytes.to_vec();
    out[off::CHECKPOINT..off::CHECKPOINT + 8]
        .copy_from_slice(&INVALIDATED_CHECKPOINT.0.to_le_bytes());
    let crc = crc32c(&out[..l.crc]);
    out[l.crc..l.crc + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Why [`read_stable`] could not return a valid `pg_control`.
#[derive(Debug, thiserror::Error)]
pub enum ReadStableError {
    /// Reading failed; passed through from the closure.
    #[error("cannot read pg_control: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a usable `pg_control` for a reason a re-read cannot fix (size or version).
    #[error("{0}")]
    Invalid(ControlError),
    /// The same bytes failed the CRC check on two reads in a row: the file itself is damaged.
    #[error("{0} (the same bytes were read twice in a row, so this is not a torn read: the file is damaged)")]
    Corrupt(ControlError),
    /// Every read failed the CRC check with different bytes each time: the file kept changing.
    #[error("{last} (gave up after {tries} reads that all failed the CRC check with different bytes: the file kept changing while being read)")]
    Unstable {
        /// How many reads were made.
        tries: usize,
        /// The error of the last read.
        last: ControlError,
    },
}

/// Reads `pg_control` with the torn-read rule, because a copy of a file the
/// server is rewriting can be torn: call `read`; a valid result is returned
/// with its bytes; a CRC failure is retried; the same failing bytes twice in
/// a row mean real damage ([`ReadStableError::Corrupt`]); after `max_tries`
/// reads (at least one) it gives up ([`ReadStableError::Unstable`]). Size and
/// version errors are not retried. I/O errors are passed through. The
/// closure may sleep between reads; this function never does.
pub fn read_stable<F: FnMut() -> std::io::Result<Vec<u8>>>(
    mut read: F,
    max_tries: usize,
) -> Result<(ControlFile, Vec<u8>), ReadStableError> {
    let tries = max_tries.max(1);
    let mut previous_bad: Option<Vec<u8>> = None;
    let mut done = 0;
    loop {
        let bytes = read()?;
        done += 1;
        match parse(&bytes) {
            Ok(cf) => return Ok((cf, bytes)),
            Err(e @ ControlError::BadCrc { .. }) => {
                if previous_bad.as_deref() == Some(&bytes[..]) {
                    return Err(ReadStableError::Corrupt(e));
                }
                if done >= tries {
                    return Err(ReadStableError::Unstable {
                        tries: done,
                        last: e,
                    });
                }
                previous_bad = Some(bytes);
            }
            Err(e) => return Err(ReadStableError::Invalid(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic, CRC-valid pg_control of `major` with recognisable values.
    pub(crate) fn synthetic(major: u32) -> Vec<u8> {
        let mut b = vec![0u8; FILE_SIZE];
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put64(&mut b, off::SYSTEM_IDENTIFIER, 7_300_000_000_000_000_001);
        put32(
            &mut b,
            off::PG_CONTROL_VERSION,
            version::pg_control_version(major).unwrap(),
        );
        put32(
            &mut b,
            off::CATALOG_VERSION_NO,
            version::catalog_version_no(major).unwrap(),
        );
        put32(&mut b, off::STATE, 1);
        put64(&mut b, off::TIME, 1_700_000_000);
        put64(&mut b, off::CHECKPOINT, 0x1_0300_0060);
        put64(&mut b, off::REDO, 0x1_0300_0028);
        put32(&mut b, off::TIMELINE, 3);
        put32(&mut b, off::PREV_TIMELINE, 2);
        b[off::FULL_PAGE_WRITES] = 1;
        put64(&mut b, off::NEXT_XID, (1u64 << 32) | 777);
        put32(&mut b, off::WAL_LEVEL, 1);
        put32(&mut b, off::BLCKSZ, 8192);
        put32(&mut b, off::RELSEG_SIZE, 131_072);
        put32(&mut b, off::XLOG_BLCKSZ, 8192);
        put32(&mut b, off::XLOG_SEG_SIZE, 16 << 20);
        put32(&mut b, off::DATA_CHECKSUM_VERSION, 1);
        let l = layout(major);
        if let Some(o) = l.checkpoint_wal_level {
            put32(&mut b, o, 1);
        }
        if let Some(o) = l.default_char_signedness {
            b[o] = 1;
        }
        let crc = crc32c(&b[..l.crc]);
        put32(&mut b, l.crc, crc);
        b
    }

    #[test]
    fn parses_synthetic_files_of_every_major() {
        for major in version::SUPPORTED_MAJORS {
            let cf = parse(&synthetic(major)).unwrap();
            assert_eq!(cf.major, major);
            assert_eq!(cf.state, DbState::Shutdowned);
            assert_eq!(cf.checkpoint, Lsn(0x1_0300_0060));
            assert_eq!(cf.redo, Lsn(0x1_0300_0028));
            assert_eq!((cf.timeline, cf.prev_timeline), (3, 2));
            assert_eq!(cf.next_xid, (1u64 << 32) | 777);
            assert_eq!(cf.xlog_seg_size, 16 << 20);
            assert_eq!(cf.checkpoint_wal_level.is_some(), major >= 17);
            assert_eq!(cf.default_char_signedness, (major >= 18).then_some(true));
        }
    }

    #[test]
    fn too_short_and_unknown_version() {
        let b = synthetic(15);
        assert_eq!(parse(&b[..296]), Err(ControlError::TooShort { len: 296 }));
        let mut u = b.clone();
        u[8..12].copy_from_slice(&1201u32.to_le_bytes());
        let e = parse(&u).unwrap_err();
        assert!(matches!(
            e,
            ControlError::UnknownVersion {
                pg_control_version: 1201,
                ..
            }
        ));
        assert!(e.to_string().contains("1201"));
        // Byte-swapped numbers get a hint.
        let mut s = b.clone();
        s[8..12].copy_from_slice(&1300u32.to_be_bytes());
        s[12..16].copy_from_slice(&202_209_061u32.to_be_bytes());
        assert!(parse(&s).unwrap_err().to_string().contains("byte-swapped"));
    }

    #[test]
    fn bad_crc_is_reported() {
        for major in version::SUPPORTED_MAJORS {
            let mut b = synthetic(major);
            b[off::NEXT_XID] ^= 1;
            match parse(&b) {
                Err(ControlError::BadCrc { stored, computed }) => assert_ne!(stored, computed),
                other => panic!("expected BadCrc, got {other:?}"),
            }
        }
        // Bytes after the CRC are not covered.
        let mut b = synthetic(18);
        b[4000] = 0xAA;
        assert!(parse(&b).is_ok());
    }

    #[test]
    fn state_words() {
        assert_eq!(DbState::Shutdowned.to_string(), "shut down");
        assert_eq!(DbState::InProduction.to_string(), "in production");
        assert_eq!(
            DbState::ShutdownedInRecovery.to_string(),
            "shut down in recovery"
        );
        assert_eq!(DbState::from(9), DbState::Unknown(9));
    }
}
