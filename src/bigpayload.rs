//! Payloads larger than the arenas: each travels in a memfd segment of its own, passed over the
//! slot's segment channel (`SCM_RIGHTS`) and read in place by the other side.
//!
//! # Arguments (parent → worker)
//!
//! An encoded argument larger than the argument arena is written into a fresh memfd (a byte
//! vector straight from its own buffer, so the parent copies its bytes once) and sealed. The job
//! carries the segment as a [`SegmentShare`] (so `ADD id` reaches the worker before the task) and
//! its arena payload is only `[id: u64 LE][len: u64 LE]`; the descriptor has
//! [`FLAG_ARG_SEGMENT`]. The worker maps the segment read-only, decodes from the mapping, unmaps
//! it and forgets the fd after the call, so the memory is freed once the job ends in the parent.
//!
//! # Results (worker → parent)
//!
//! A result larger than the result arena is written into a fresh memfd the same way, **sealed**
//! (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL`) and sent to the parent over the
//! same socket pair as `RESULT task_id` (before the result descriptor is published, so it is
//! there when the parent looks). The descriptor has [`FLAG_RESULT_SEGMENT`] and its length in
//! `reserved`; nothing is placed in the arena. The parent takes the message without blocking,
//! checks the seals and the size, maps the segment read-only and decodes it in place: the seals
//! make the mapping immutable (no worker can change or shrink it under the decoder, so no
//! private copy is needed and no SIGBUS is possible), which is what lets a 300 MiB result skip
//! the copy-out every arena result gets. A missing message, missing seals or a short segment is
//! [`Error::WorkerCorrupted`](crate::Error::WorkerCorrupted).
//!
//! Memory: the segment's pages are the payload's only copy in flight; they are freed when the
//! last process unmaps and closes it (the worker right after sending, the parent after
//! decoding). Under a small `RLIMIT_MEMLOCK` or without `/dev/shm`, memfds still work (they are
//! not locked memory and need no file system), but the machine's RAM and swap bound the size.
//!
//! Trap: a memfd is a file, so `RLIMIT_FSIZE` applies to it. Sizing one past that limit raises
//! `SIGXFSZ`, whose default action kills the process: checked here, `prlimit --fsize=1000000`
//! kills the program in `Pool::new` (signal 25), since the control segment with its arenas is a
//! memfd too; a payload segment past the limit would kill the parent (an argument) or the worker
//! (a result, then a `WorkerDied` with signal 25).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::channel::SegmentShare;
use crate::error::{Error, Result};

/// Descriptor flag (task): the arena payload is `[segment id][len]`, the argument is in that
/// segment.
pub(crate) const FLAG_ARG_SEGMENT: u32 = 1;
/// Descriptor flag (result): the result is in a sealed segment sent over the channel, its length
/// in `reserved`.
pub(crate) const FLAG_RESULT_SEGMENT: u32 = 2;

const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Writes `head ++ bytes` into a fresh sealed memfd.
pub(crate) fn make_segment(head: &[u8], bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = memfd_create(
        "shmpool-payload",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.set_len((head.len() + bytes.len()) as u64)?;
    file.write_all(head)?;
    file.write_all(bytes)?;
    // SAFETY: fcntl(F_ADD_SEALS) on our own memfd; it has no writable mapping (we wrote with
    // write(2)), so F_SEAL_WRITE is accepted.
    let rc = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            SEALS | libc::F_SEAL_SEAL,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Maps a segment another process made, read-only, after checking it is sealed against writes
/// and shrinking and holds at least `len` bytes. The mapping is then immutable for its life.
pub(crate) fn map_sealed(fd: &OwnedFd, len: usize) -> std::result::Result<memmap2::Mmap, String> {
    // SAFETY: fcntl(F_GET_SEALS) only reads the seals of an fd we own.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & SEALS != SEALS {
        return Err(format!("payload segment not sealed (seals {seals:#x})"));
    }
    let size = nix::sys::stat::fstat(fd.as_fd())
        .map_err(|e| format!("fstat of the payload segment: {e}"))?
        .st_size;
    if usize::try_from(size).map_or(true, |s| s < len) || len == 0 {
        return Err(format!("payload segment of {size} bytes, {len} announced"));
    }
    // SAFETY: the memfd is sealed against writes, shrinking and growing (checked above, and the
    // seals can only be added, never removed), so the mapped bytes cannot change and no page
    // can disappear under us (no SIGBUS); the mapping is read-only and `len <= size`.
    // `populate`: every byte is about to be read, so the page tables are filled in one call
    // instead of one fault per 4 KiB page (76,800 for 300 MiB).
    unsafe { memmap2::MmapOptions::new().len(len).populate().map(fd) }
        .map_err(|e| format!("mapping the payload segment: {e}"))
}

/// A job argument too large for the arena: its segment, and the small payload that names it.
pub(crate) fn argument(head: &[u8], bytes: &[u8]) -> Result<(Vec<u8>, SegmentShare)> {
    let fd = make_segment(head, bytes).map_err(|e| Error::os("memfd (large argument)", e))?;
    let id = crate::bulk::next_id();
    let len = (head.len() + bytes.len()) as u64;
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(&len.to_le_bytes());
    Ok((
        payload,
        SegmentShare {
            id,
            fd: std::sync::Arc::new(fd),
        },
    ))
}

/// Worker side: maps the argument a [`FLAG_ARG_SEGMENT`] payload names. The caller drops the
/// mapping and calls [`crate::channel::forget_local`] after the call.
pub(crate) fn resolve_argument(
    payload: &[u8],
) -> std::result::Result<(u64, memmap2::Mmap), String> {
    let (Some(id), Some(len)) = (
        payload
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
        payload
            .get(8..16)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
    ) else {
        return Err("large-argument record shorter than 16 bytes".into());
    };
    let fd = crate::channel::resolve(id).map_err(|e| e.to_string())?;
    let len = usize::try_from(len).map_err(|_| "argument length out of range".to_string())?;
    Ok((id, map_sealed(&fd, len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_segments_map_and_unsealed_or_short_ones_are_refused() {
        let fd = make_segment(b"ab", b"cdef").unwrap();
        assert_eq!(&map_sealed(&fd, 6).unwrap()[..], b"abcdef");
        assert_eq!(&map_sealed(&fd, 4).unwrap()[..], b"abcd");
        assert!(map_sealed(&fd, 7).is_err(), "longer than the segment");
        assert!(map_sealed(&fd, 0).is_err());
        // Writes to a sealed segment fail: what the parent maps cannot change.
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err());
        // An unsealed memfd (a worker that skipped the seals) is refused.
        let raw = memfd_create("x", MFdFlags::MFD_CLOEXEC).unwrap();
        std::fs::File::from(raw.try_clone().unwrap())
            .write_all(b"hello")
            .unwrap();
        assert!(map_sealed(&raw, 5).unwrap_err().contains("not sealed"));
    }
}
