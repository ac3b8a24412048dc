//! Removes the shared memory a SIGKILLed server leaves behind (its SysV header segment and its /dev/shm DSM control segment).
//!
//! A server that is shut down (even `immediate`) removes them itself, and one that is started
//! again in the same data dir removes its predecessor's; only a killed server whose data dir is
//! then deleted leaks them, which is exactly what tests that crash servers do.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::procfs;

/// `PGShmemMagic` from `pg_shmem.h`, the same in 13–18.
const PG_SHMEM_MAGIC: i32 = 679_834_894;
/// sizeof(PGShmemHeader) on 64-bit Linux: magic, creatorPID, totalsize, freeoffset,
/// dsm_control (+pad), index, device, inode.
const HEADER_SIZE: usize = 56;
const DSM_CONTROL_OFFSET: usize = 24;
const DEVICE_OFFSET: usize = 40;
const INODE_OFFSET: usize = 48;

/// If `pgdata` has a stale postmaster.pid (no live postmaster), removes the SysV segment it
/// names, once verified to be that data dir's unattached PostgreSQL segment, and the DSM control
/// segment that header points to. Best effort, never panics.
pub(crate) fn cleanup_stale(pgdata: &Path) {
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    if let Some(pid) = lines.first().and_then(|l| l.trim().parse::<i32>().ok()) {
        if procfs::is_postmaster_of(pid, pgdata) {
            return;
        }
    }
    // Line 7: "<key> <shmid>".
    let Some(shmid) = lines
        .get(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<libc::c_int>().ok())
    else {
        return;
    };
    let Ok(meta) = std::fs::metadata(pgdata) else {
        return;
    };
    // SAFETY: shmid_ds is plain old data, filled by IPC_STAT.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } != 0
        || ds.shm_nattch != 0
        || ds.shm_segsz < HEADER_SIZE
    {
        return;
    }
    // SAFETY: read-only attach of an existing segment of at least HEADER_SIZE bytes.
    let addr = unsafe { libc::shmat(shmid, std::ptr::null(), libc::SHM_RDONLY) };
    if addr as isize == -1 {
        return;
    }
    let mut header = [0u8; HEADER_SIZE];
    // SAFETY: the segment is at least HEADER_SIZE bytes long and attached at addr.
    unsafe {
        std::ptr::copy_nonoverlapping(addr.cast::<u8>(), header.as_mut_ptr(), HEADER_SIZE);
        libc::shmdt(addr);
    }
    let word = |at: usize| u64::from_ne_bytes(header[at..at + 8].try_into().unwrap_or_default());
    let magic = i32::from_ne_bytes(header[0..4].try_into().unwrap_or_default());
    let dsm_control = u32::from_ne_bytes(
        header[DSM_CONTROL_OFFSET..DSM_CONTROL_OFFSET + 4]
            .try_into()
            .unwrap_or_default(),
    );
    if magic != PG_SHMEM_MAGIC
        || word(DEVICE_OFFSET) != meta.dev()
        || word(INODE_OFFSET) != meta.ino()
    {
        return;
    }
    // SAFETY: removing a segment we verified belongs to this dead server.
    unsafe {
        libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
    }
    if dsm_control != 0 {
        let _ = std::fs::remove_file(format!("/dev/shm/PostgreSQL.{dsm_control}"));
    }
}
