//! Quoting for the two places where a value meets a shell or a configuration string: a
//! user's `restore_command` template that pgbookend test-runs, and the `restore_command`
//! it writes into `postgresql.auto.conf`.

/// Whether `s` can stand on a `sh` command line unquoted (and inside a template's own
/// quotes) without changing meaning.
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b'+' | b',')
        })
}

/// `s` as one `sh` word: as is when it holds only plain characters, else in single
/// quotes (a quote inside written `'"'"'`, so the result holds no backslash and survives
/// the configuration-file escaping unchanged).
pub fn quote(s: &str) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// A `restore_command` template with `%f`, `%p`, `%r` and `%%` replaced in one pass, as
/// the server does, by values quoted with [`quote`]: a name that came from a bundle can
/// never become shell syntax.
pub fn substitute(template: &str, f: &str, p: &str, r: &str) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut it = template.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.peek() {
            Some('f') => out.push_str(&quote(f)),
            Some('p') => out.push_str(&quote(p)),
            Some('r') => out.push_str(&quote(r)),
            Some('%') => out.push('%'),
            _ => {
                out.push('%');
                continue;
            }
        }
        it.next();
    }
    out
}

/// `v` as a single-quoted string of `postgresql.conf`: quotes doubled and backslashes
/// escaped (the server's parser reads `\` as an escape inside quoted values).
pub fn conf_string(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn quoted_values_stay_one_word() {
        for v in [
            "plain/x",
            "a b",
            "x; touch /tmp/nope; #",
            "it's",
            "$(id)",
            "`id`",
            "\"q\"",
            "a\\b",
        ] {
            assert_eq!(sh(&format!("printf %s {}", quote(v))), v, "{v}");
        }
        assert!(!quote("it's").contains('\\'));
    }

    #[test]
    fn substitutes_in_one_pass() {
        assert_eq!(
            substitute("cp /a/%f %p # %% %r %x", "00000001.history", "/t/x y", "R"),
            "cp /a/00000001.history '/t/x y' # % R %x"
        );
        // A value holding %p is not substituted again.
        assert_eq!(substitute("%f", "%p", "P", "R"), "'%p'");
        assert_eq!(substitute("x%", "F", "P", "R"), "x%");
    }

    #[test]
    fn conf_strings_escape_backslashes() {
        assert_eq!(conf_string(r"a'b\c"), r"'a''b\\c'");
    }
}
