//! `tablespace_map`: which tablespace OID lives at which path, with each major's escaping.
//!
//! `pg_backup_stop` returns one line per tablespace, `"<oid> <path>\n"`, where
//! path is the target of the `pg_tblspc/<oid>` symlink. Recovery recreates
//! the symlinks from it. Paths may contain any byte but NUL, so the server
//! escapes line breaks, and the rules changed in 14:
//!
//! * **14 to 18** (`do_pg_backup_start`): a backslash is written before every
//!   `\n`, `\r` and `\`. `read_tablespace_map` treats a backslash as "take
//!   the next character literally", ends a line at an unescaped `\n` or `\r`,
//!   skips empty lines, splits each line at its first space (the path may
//!   start with spaces), and rejects an unterminated last line or an empty
//!   path. 18 also requires the OID to be a valid number.
//! * **13** (`do_pg_start_backup`): a backslash is written before `\n` and
//!   `\r` only; other backslashes are written as they are. `read_tablespace_map`
//!   turns a backslash followed by `\n` or `\r` into that character, keeps
//!   every other backslash, ends a line at a `\n` or `\r` not preceded by a
//!   backslash, and splits the line with `sscanf("%s %n")`, which also eats
//!   any whitespace at the start of the path. So a 13 map cannot carry a
//!   path that ends with a backslash or starts with whitespace.
//!
//! [`TablespaceMap::parse`] and [`TablespaceMap::format`] use the 14+ rules;
//! the `_for_major` variants pick the rules of a given major. Both parse
//! what the server wrote back into the exact same text.

use std::fmt;

/// The parsed content of a `tablespace_map`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablespaceMap {
    /// (tablespace OID, symlink target), in file order.
    pub entries: Vec<(u32, String)>,
}

/// Why a text is not a usable `tablespace_map`, or a map cannot be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A line is not `<oid> <path>`.
    #[error("tablespace_map line {line}: expected \"<oid> <path>\", found {found:?}; PostgreSQL would refuse this file")]
    BadLine {
        /// 1-based line number (counting the lines of the file).
        line: usize,
        /// The de-escaped line.
        found: String,
    },
    /// The text does not end with an unescaped line break: it was cut short.
    #[error("tablespace_map does not end with a line break: the file is truncated")]
    NotTerminated,
    /// A path that this major's format cannot carry.
    #[error("tablespace {oid}: path {path:?} cannot be written to a PostgreSQL {major} tablespace_map ({why})")]
    Unrepresentable {
        /// The tablespace OID.
        oid: u32,
        /// The path.
        path: String,
        /// The major asked for.
        major: u32,
        /// The reason.
        why: &'static str,
    },
}

impl TablespaceMap {
    /// Parses a `tablespace_map` with the 14 to 18 rules (see the module
    /// docs); for a map from a 13 server use [`TablespaceMap::parse_for_major`].
    pub fn parse(text: &str) -> Result<TablespaceMap, MapError> {
        parse_modern(text)
    }

    /// Parses a `tablespace_map` written by PostgreSQL `major`, with that
    /// major's de-escaping, so paths come out exactly as the server had them.
    pub fn parse_for_major(text: &str, major: u32) -> Result<TablespaceMap, MapError> {
        if major <= 13 {
            parse_13(text)
        } else {
            parse_modern(text)
        }
    }

    /// Writes the map with the 14 to 18 escaping, byte-identical to what
    /// those servers write; used to rewrite a map (e.g. remapped paths).
    /// Paths should be non-empty and free of NUL (as real symlink targets
    /// are); [`TablespaceMap::format_for_major`] checks that.
    pub fn format(&self) -> String {
        let mut s = String::new();
        for (oid, path) in &self.entries {
            s.push_str(&oid.to_string());
            s.push(' ');
            for c in path.chars() {
                if matches!(c, '\n' | '\r' | '\\') {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('\n');
        }
        s
    }

    /// Writes the map exactly as PostgreSQL `major` would, after checking
    /// that that major's reader will get every path back unchanged.
    pub fn format_for_major(&self, major: u32) -> Result<String, MapError> {
        for (oid, path) in &self.entries {
            let why = if path.is_empty() {
                Some("it is empty")
            } else if path.contains('\0') {
                Some("it contains a NUL byte")
            } else if major <= 13 && path.ends_with('\\') {
                Some("13 reads a backslash before the line break as an escape")
            } else if major <= 13 && path.starts_with(is_c_space) {
                Some("13 drops whitespace at the start of a path")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(MapError::Unrepresentable {
                    oid: *oid,
                    path: path.clone(),
                    major,
                    why,
                });
            }
        }
        if major > 13 {
            return Ok(self.format());
        }
        let mut s = String::new();
        for (oid, path) in &self.entries {
            s.push_str(&oid.to_string());
            s.push(' ');
            for c in path.chars() {
                if matches!(c, '\n' | '\r') {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('\n');
        }
        Ok(s)
    }

    /// Whether there are no tablespaces (the server then returns an empty map).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The path of tablespace `oid`, if listed.
    pub fn path(&self, oid: u32) -> Option<&str> {
        self.entries
            .iter()
            .find(|(o, _)| *o == oid)
            .map(|(_, p)| p.as_str())
    }
}

impl fmt::Display for TablespaceMap {
    /// The 14 to 18 text form, as [`TablespaceMap::format`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format())
    }
}

/// Parses a `tablespace_map` with the 14 to 18 rules (same as [`TablespaceMap::parse`]).
pub fn parse(text: &str) -> Result<TablespaceMap, MapError> {
    TablespaceMap::parse(text)
}

/// C's `isspace` in the "C" locale, which `sscanf` uses to skip whitespace.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r')
}

/// An OID as the file spells it: decimal digits that fit in 32 bits.
fn parse_oid(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The 14 to 18 reader (`read_tablespace_map` with `was_backslash`).
fn parse_modern(text: &str) -> Result<TablespaceMap, MapError> {
    let mut entries = Vec::new();
    let mut line = String::new();
    let mut line_no = 1;
    let mut was_backslash = false;
    for c in text.chars() {
        if !was_backslash && (c == '\n' || c == '\r') {
            if !line.is_empty() {
                // Split at the first space: the path may itself start with spaces.
                let parsed = line
                    .split_once(' ')
                    .filter(|(_, path)| !path.is_empty())
                    .and_then(|(oid, path)| Some((parse_oid(oid)?, path.to_string())));
                match parsed {
                    Some(e) => entries.push(e),
                    None => {
                        return Err(MapError::BadLine {
                            line: line_no,
                            found: line,
                        })
                    }
                }
                line.clear();
            }
            if c == '\n' {
                line_no += 1;
            }
        } else if !was_backslash && c == '\\' {
            was_backslash = true;
        } else {
            line.push(c);
            was_backslash = false;
        }
    }
    if !line.is_empty() || was_backslash {
        return Err(MapError::NotTerminated);
    }
    Ok(TablespaceMap { entries })
}

/// The 13 reader (`read_tablespace_map` with `prev_ch`).
fn parse_13(text: &str) -> Result<TablespaceMap, MapError> {
    let mut entries = Vec::new();
    let mut line = String::new();
    let mut line_no = 1;
    let mut prev: Option<char> = None;
    for c in text.chars() {
        let is_break = c == '\n' || c == '\r';
        if is_break && prev != Some('\\') {
            // sscanf("%s %n"): skip leading whitespace, take a word, skip whitespace.
            let rest = line.trim_start_matches(is_c_space);
            let (oid, path) = rest.split_once(is_c_space).unwrap_or((rest, ""));
            let path = path.trim_start_matches(is_c_space);
            match (parse_oid(oid), path.is_empty()) {
                (Some(oid), false) => entries.push((oid, path.to_string())),
                _ => {
                    return Err(MapError::BadLine {
                        line: line_no,
                        found: line,
                    })
                }
            }
            line.clear();
            if c == '\n' {
                line_no += 1;
            }
        } else if is_break {
            // An escaped line break replaces the backslash before it.
            line.pop();
            line.push(c);
        } else {
            line.push(c);
        }
        prev = Some(c);
    }
    if !line.is_empty() {
        return Err(MapError::NotTerminated);
    }
    Ok(TablespaceMap { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(u32, &str)]) -> TablespaceMap {
        TablespaceMap {
            entries: entries.iter().map(|(o, p)| (*o, p.to_string())).collect(),
        }
    }

    #[test]
    fn modern_escaping() {
        let m = map(&[(16384, "/srv/ts one"), (16385, "/srv/a\\b\nc\rd")]);
        let text = m.format();
        assert_eq!(text, "16384 /srv/ts one\n16385 /srv/a\\\\b\\\nc\\\rd\n");
        assert_eq!(TablespaceMap::parse(&text).unwrap(), m);
        assert_eq!(TablespaceMap::parse("").unwrap(), TablespaceMap::default());
        // Paths may start with spaces; CRLF endings are tolerated like the server does.
        assert_eq!(
            TablespaceMap::parse("1  /x\r\n2 /y\n").unwrap(),
            map(&[(1, " /x"), (2, "/y")])
        );
    }

    #[test]
    fn pg13_escaping() {
        let m = map(&[(16384, "/srv/a\\b\nc")]);
        let text = m.format_for_major(13).unwrap();
        assert_eq!(text, "16384 /srv/a\\b\\\nc\n");
        assert_eq!(TablespaceMap::parse_for_major(&text, 13).unwrap(), m);
        // The same text read with the 14+ rules loses the lone backslash.
        assert_eq!(
            TablespaceMap::parse(&text).unwrap(),
            map(&[(16384, "/srv/ab\nc")])
        );
        // Backslash then newline inside a path survives in 13's format.
        let m = map(&[(1, "/a\\\nb")]);
        let t = m.format_for_major(13).unwrap();
        assert_eq!(TablespaceMap::parse_for_major(&t, 13).unwrap(), m);
        assert!(map(&[(1, "/a\\")]).format_for_major(13).is_err());
        assert!(map(&[(1, " /a")]).format_for_major(13).is_err());
        assert!(map(&[(1, "/a\\")]).format_for_major(14).is_ok());
    }

    #[test]
    fn errors() {
        assert_eq!(
            TablespaceMap::parse("16384 /x"),
            Err(MapError::NotTerminated)
        );
        assert_eq!(
            TablespaceMap::parse("16384 /x\\"),
            Err(MapError::NotTerminated)
        );
        assert!(matches!(
            TablespaceMap::parse("1 /a\n16384\n"),
            Err(MapError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            TablespaceMap::parse("x /a\n"),
            Err(MapError::BadLine { .. })
        ));
        assert!(matches!(
            TablespaceMap::parse("1 \n"),
            Err(MapError::BadLine { .. })
        ));
        assert!(matches!(
            TablespaceMap::parse_for_major("1\n", 13),
            Err(MapError::BadLine { line: 1, .. })
        ));
        assert_eq!(
            TablespaceMap::parse_for_major("1 /x", 13),
            Err(MapError::NotTerminated)
        );
        assert!(map(&[(1, "")]).format_for_major(15).is_err());
        assert!(map(&[(1, "/a\0")]).format_for_major(15).is_err());
    }
}
