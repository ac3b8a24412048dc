//! WAL locations (LSNs): the 64-bit byte position in the WAL stream, written `X/Y` in hex.
//!
//! PostgreSQL prints an LSN as two 32-bit halves in uppercase hex separated by
//! a slash, `%X/%X` (`0/2000028`). Newer tools and messages also use the
//! zero-padded form `%X/%08X` (`0/02000028`). Both parse to the same value;
//! [`Lsn`]'s `Display` prints the classic form, [`Lsn::format_padded`] the
//! padded one.
//!
//! ```
//! use pgbookend_formats::Lsn;
//! let l: Lsn = "0/02000028".parse().unwrap();
//! assert_eq!(l, Lsn(0x2000028));
//! assert_eq!(l.to_string(), "0/2000028");
//! assert_eq!(l.format_padded(), "0/02000028");
//! ```

use std::fmt;
use std::str::FromStr;

/// A position in the WAL stream (PostgreSQL's `XLogRecPtr`). `Lsn(0)` is
/// `InvalidXLogRecPtr`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`: PostgreSQL's "no location".
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is a real location (not `InvalidXLogRecPtr`), as PostgreSQL's `XLogRecPtrIsInvalid` negated.
    pub fn is_valid(&self) -> bool {
        self.0 != 0
    }

    /// The zero-padded form `%X/%08X` (`0/02000028`), for places that want fixed-width output.
    pub fn format_padded(&self) -> String {
        format!("{:X}/{:08X}", self.hi(), self.lo())
    }

    /// The high 32 bits, the part before the slash.
    fn hi(&self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The low 32 bits, the part after the slash.
    fn lo(&self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's classic `%X/%X` form (`0/2000028`), as `pg_lsn` prints it in 13 to 18.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.hi(), self.lo())
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Lsn {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> u64 {
        l.0
    }
}

/// A string that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers of 1 to 8 digits separated by '/', like 0/2000028 or 0/02000028")]
pub struct LsnParseError {
    /// The text that was rejected (shortened if very long).
    pub input: String,
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parses `X/Y` with 1 to 8 hex digits on each side, in either case, with
    /// or without zero padding: the same rule as PostgreSQL's `pg_lsn_in`.
    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let err = || LsnParseError {
            input: s.chars().take(64).collect(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| -> Option<u32> {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(part, 16).ok()
        };
        let hi = half(hi).ok_or_else(err)?;
        let lo = half(lo).ok_or_else(err)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_classic_and_padded_forms() {
        assert_eq!("0/2000028".parse::<Lsn>().unwrap(), Lsn(0x2000028));
        assert_eq!("0/02000028".parse::<Lsn>().unwrap(), Lsn(0x2000028));
        assert_eq!("a9/2f000130".parse::<Lsn>().unwrap(), Lsn(0xA9_2F00_0130));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!("00000000/00000000".parse::<Lsn>().unwrap(), Lsn(0));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/1/2",
            "123456789/0",
            "0/123456789",
            " 0/1",
            "0/1 ",
            "+0/1",
            "0/-1",
            "g/1",
            "0x1/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn prints_classic_and_padded_forms() {
        let l = Lsn(0xA9_0000_0028);
        assert_eq!(l.to_string(), "A9/28");
        assert_eq!(l.format_padded(), "A9/00000028");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0).format_padded(), "0/00000000");
    }

    #[test]
    fn error_message_is_clear() {
        let e = "nope".parse::<Lsn>().unwrap_err();
        assert!(e.to_string().contains("\"nope\""));
        assert!(e.to_string().contains("0/2000028"));
    }
}
