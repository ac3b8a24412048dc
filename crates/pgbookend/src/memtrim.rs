//! Gives back the clean file pages an agent faulted in while starting, once the backup is
//! in progress.
//!
//! An agent idles for hours holding a backup and must stay small (≤ 10 MB resident). Its
//! executable carries the whole CLI and the S3 client (tokio, hyper, rustls, ring,
//! object_store), libpq brings Kerberos, LDAP and TLS libraries, and the kernel maps file
//! pages in batches around every page fault, so start-up alone leaves megabytes of code
//! resident that the idle loop never runs again. Dropping them is safe: they are clean,
//! read-only, private file pages without copy-on-write copies, exactly what the kernel
//! itself reclaims under memory pressure; any page the agent needs later (at `stop`, say)
//! is read back from the page cache or the file.

/// `madvise(MADV_DONTNEED)` on every file mapping that is not writable and holds no
/// private (copy-on-write) page: the code and read-only data of the executable and its
/// shared libraries. Best effort: a failure leaves the mappings as they were.
pub fn drop_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut candidate: Option<(usize, usize)> = None;
    let mut ranges = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // A mapping header: "start-end perms offset dev inode path".
            candidate = None;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            let perms = fields.get(1).copied().unwrap_or("");
            let path = fields.get(5..).map(|p| p.join(" ")).unwrap_or_default();
            if path.starts_with('/') && !perms.contains('w') && !path.ends_with(" (deleted)") {
                candidate = Some((start, end));
            }
        } else if let Some(rest) = line.strip_prefix("Anonymous:") {
            if let Some(r) = candidate.take() {
                if rest.trim().trim_end_matches("kB").trim() == "0" {
                    ranges.push(r);
                }
            }
        }
    }
    for (start, end) in ranges {
        // SAFETY: the range is a whole, read-only, private file mapping without
        // copy-on-write pages; MADV_DONTNEED only drops its page-table entries, and later
        // accesses read the same bytes back from the file.
        // MADV_RANDOM first: later faults map just the page they need, not a batch around
        // it.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_still_runs_after_dropping_pages() {
        let before = crate::fsutil::sha256_hex(b"pgbookend");
        drop_clean_file_pages();
        // Code and read-only data come back from the files on demand.
        assert_eq!(crate::fsutil::sha256_hex(b"pgbookend"), before);
        assert_eq!(format!("{:>4}", 7), "   7");
        assert!(crate::timefmt::parse_duration("1h30m").is_ok());
    }
}
