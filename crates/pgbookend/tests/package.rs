//! The Debian package (scripts/build-deb): built from the binary under test, checked with
//! lintian, installed with `dpkg -i`, used (version, man page, completion, state
//! directories) and purged. It installs into the real system, so it restores the system
//! (purge) also when it fails, and leaves a machine that has its own pgbookend package alone.
//!
//! A test binary of its own, not a module of `tests/e2e`: while the package is installed,
//! `/etc/pgbookend.toml` is the config of every pgbookend started without
//! `PGBOOKEND_CONFIG`, and `/var/lib/pgbookend` and `/run/pgbookend` are the default state
//! and run directories; cargo runs test binaries one after another, so no other test's
//! pgbookend runs while they exist.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sh(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn installed() -> bool {
    let o = sh(Command::new("dpkg-query").args(["-W", "-f=${Status}", "pgbookend"]));
    String::from_utf8_lossy(&o.stdout).contains("install ok installed")
}

/// Purges the package when the test ends, passed or not.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "pgbookend"]).output();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn debian_package_builds_installs_and_works() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: installing a package needs root");
        return;
    }
    if installed() || Path::new("/usr/bin/pgbookend").exists() {
        eprintln!("skipped: this machine has its own pgbookend installed; not replacing it");
        return;
    }
    let out = pgbookend_testkit::temp_dir("deb");
    let build = sh(Command::new(root().join("scripts/build-deb"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_pgbookend"))
        .arg("--out")
        .arg(out.path()));
    assert!(
        build.status.success(),
        "build-deb failed:\n{}",
        text(&build)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&build.stdout).trim());
    assert!(deb.is_file(), "no package at {}", deb.display());

    // lintian: nothing but the one informational tag explained in scripts/build-deb.
    let lint = sh(Command::new("lintian")
        .args(["--tag-display-limit", "0", "-I"])
        .arg(&deb));
    let tags: Vec<String> = text(&lint)
        .lines()
        .filter(|l| l.starts_with(['E', 'W', 'I']) && l.contains(": pgbookend"))
        .map(str::to_string)
        .collect();
    // A spelling tag can come from two string literals that lie side by side in the
    // binary (Rust's are not NUL-terminated and lintian drops parentheses): "(the postgres
    // user)" then "a backup ..." read as "usera". Reword the literal, do not allow the tag.
    assert!(
        tags.iter()
            .all(|t| t.contains("hardening-no-fortify-functions")),
        "lintian tags:\n{}",
        tags.join("\n")
    );

    let _purge = Purge;
    let inst = sh(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(inst.status.success(), "dpkg -i failed:\n{}", text(&inst));
    let v = sh(Command::new("/usr/bin/pgbookend").arg("--version"));
    assert!(
        v.status.success() && text(&v).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&v)
    );
    let man = sh(Command::new("man").args(["-w", "pgbookend-start"]));
    assert!(
        man.status.success() && text(&man).contains("/usr/share/man/man1/pgbookend-start.1.gz"),
        "man -w pgbookend-start: {}",
        text(&man)
    );
    let rendered = sh(Command::new("man")
        .args(["-P", "cat", "pgbookend-prepare"])
        .env("MANWIDTH", "100"));
    assert!(text(&rendered).contains("--pgdata"), "{}", text(&rendered));
    // The bash completion completes subcommands.
    let comp = sh(Command::new("bash").arg("-c").arg(
        "source /usr/share/bash-completion/completions/pgbookend && \
         COMP_WORDS=(pgbookend pre) COMP_CWORD=1 && _pgbookend pgbookend pre pgbookend && \
         printf '%s\\n' \"${COMPREPLY[@]}\"",
    ));
    assert!(
        text(&comp).lines().any(|l| l == "prepare"),
        "bash completion: {}",
        text(&comp)
    );
    for f in [
        "/usr/share/zsh/vendor-completions/_pgbookend",
        "/usr/share/fish/vendor_completions.d/pgbookend.fish",
        "/etc/pgbookend.toml",
        "/usr/share/doc/pgbookend/examples/pgbookend-guard.conf",
    ] {
        assert!(Path::new(f).is_file(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    let state = std::fs::metadata("/var/lib/pgbookend").expect("state directory");
    assert_eq!(state.permissions().mode() & 0o777, 0o700);
    // The example config parses: pgbookend reads it when no other is given.
    let st = sh(Command::new("/usr/bin/pgbookend")
        .args(["status", "--run-dir"])
        .arg(out.path().join("run"))
        .env_remove("PGBOOKEND_CONFIG"));
    assert!(
        st.status.success(),
        "with the packaged config: {}",
        text(&st)
    );

    let rm = sh(Command::new("dpkg").args(["--purge", "pgbookend"]));
    assert!(rm.status.success(), "{}", text(&rm));
    assert!(!Path::new("/usr/bin/pgbookend").exists());
    assert!(
        !Path::new("/etc/pgbookend.toml").exists(),
        "purge removes the conffile"
    );
}
