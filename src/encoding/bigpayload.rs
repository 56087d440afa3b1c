//! Payloads larger than the arenas: each travels in a memfd segment of its own, passed over the
//! seat's segment channel (`SCM_RIGHTS`) and read in place by the other side.
//!
//! # Arguments (parent → worker)
//!
//! An encoded argument larger than the argument arena is written into a fresh memfd (a byte
//! vector straight from its own buffer, so the parent copies its bytes once) and sealed. The task
//! carries the segment as a [`SegmentShare`] (so `ADD id` reaches the worker before the task) and
//! its arena payload is only `[id: u64 LE][len: u64 LE]`; the descriptor has
//! [`FLAG_ARG_SEGMENT`]. The worker checks the seals, maps the segment read-only ([`Sealed`]) and
//! decodes from the mapping. It unmaps and closes it once its result is published (off the
//! result's path), and the parent closes its own fd after the task's completion has run (outside
//! the dispatch lock), so the memory is freed then, without the caller or other submissions
//! waiting for it.
//!
//! # Results (worker → parent)
//!
//! A result larger than the result arena is written into a fresh memfd the same way, **sealed**
//! (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL`) and sent to the parent over the
//! same socket pair as `RESULT task_id` (before the result descriptor is published, so it is
//! there when the parent looks). The descriptor has [`FLAG_RESULT_SEGMENT`] and its length in
//! `reserved`; nothing is placed in the arena. The parent takes the message without blocking,
//! checks the seals and the size, maps the segment read-only and decodes it in place. The seals
//! make the segment immutable (no worker can change or shrink it under the decoder, so no
//! private copy is needed and no SIGBUS is possible), which is what lets a 300 MiB result skip
//! the copy-out every arena result gets. A missing message, missing seals or a short segment is
//! [`Error::WorkerCorrupted`].
//!
//! # Cost
//!
//! A round trip of a byte vector copies it four times: into the argument's segment (`write(2)`
//! from the caller's buffer), into the worker's `Vec`, into the result's segment, into the
//! parent's `Vec`. The copying itself is cheap; what costs is memory that is new to a process.
//! Shmem gets no huge pages unless `shmem_enabled` allows them (it is `never` on most machines),
//! so filling a segment allocates one 4 KiB page at a time, and freeing it returns them one by
//! one; the decoded `Vec`s ask for huge pages ([`crate::encoding::payload::bytes_with_capacity`]).
//! Closing a segment is therefore kept off the result's path. Figures: BENCHMARKS.md, "Payloads
//! larger than the arena".
//!
//! Memory: the segment's pages are the payload's only copy in flight; they are freed when the
//! last process unmaps and closes it (the worker right after sending, the parent after
//! decoding and running the completion). Under a small `RLIMIT_MEMLOCK` or without `/dev/shm`, memfds still work (they are
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

use crate::error::{Error, Result};
use crate::shm::channel::SegmentShare;

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

/// A sealed payload segment another process made, checked and mapped: the argument of a task
/// (in the worker) or its result (in the parent).
///
/// Read through [`bytes`](Self::bytes), a read-only mapping decoded in place. (Reading a byte
/// vector with `pread(2)` instead, which needs no page tables for the segment, was measured as no
/// faster: BENCHMARKS.md, "Payloads larger than the arena".) The fd is closed with the mapping.
#[derive(Debug)]
pub(crate) struct Sealed {
    _fd: OwnedFd,
    map: memmap2::Mmap,
}

impl Sealed {
    /// Checks that `fd` is sealed against writes and shrinking and holds at least `len` bytes,
    /// then maps its first `len` bytes read-only. What [`bytes`](Self::bytes) reads can then
    /// never change.
    pub(crate) fn open(fd: OwnedFd, len: usize) -> std::result::Result<Sealed, String> {
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
        // SAFETY: the memfd is sealed against writes, shrinking and growing (checked above, and
        // the seals can only be added, never removed), so the mapped bytes cannot change and no
        // page can disappear under us (no SIGBUS); the mapping is read-only and `len <= size`.
        // `populate`: every byte is about to be read, so the page tables are filled in one call
        // instead of one fault per 16 pages (shmem's fault-around).
        let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(&fd) }
            .map_err(|e| format!("mapping the payload segment: {e}"))?;
        Ok(Sealed { _fd: fd, map })
    }

    /// The payload, mapped.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// A task argument too large for the arena: its segment, and the small payload that names it.
pub(crate) fn argument(head: &[u8], bytes: &[u8]) -> Result<(Vec<u8>, SegmentShare)> {
    let fd = make_segment(head, bytes).map_err(|e| Error::os("memfd (large argument)", e))?;
    let id = crate::shm::segment::next_id();
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

/// Worker side: opens the argument a [`FLAG_ARG_SEGMENT`] payload names. The caller drops it
/// and calls [`crate::shm::channel::forget_local`] once the result is out.
pub(crate) fn resolve_argument(payload: &[u8]) -> std::result::Result<(u64, Sealed), String> {
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
    let fd = crate::shm::channel::resolve(id).map_err(|e| e.to_string())?;
    let len = usize::try_from(len).map_err(|_| "argument length out of range".to_string())?;
    Ok((id, Sealed::open(fd, len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_segments_open_and_unsealed_or_short_ones_are_refused() {
        let fd = make_segment(b"ab", b"cdef").unwrap();
        let seg = Sealed::open(fd.try_clone().unwrap(), 6).unwrap();
        assert_eq!(seg.bytes(), b"abcdef");
        assert_eq!(
            Sealed::open(fd.try_clone().unwrap(), 4).unwrap().bytes(),
            b"abcd"
        );
        assert!(
            Sealed::open(fd.try_clone().unwrap(), 7).is_err(),
            "longer than the segment"
        );
        assert!(Sealed::open(fd.try_clone().unwrap(), 0).is_err());
        // Writes to a sealed segment fail: what the parent reads cannot change.
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err());
        // An unsealed memfd (a worker that skipped the seals) is refused, whichever way it
        // would be read.
        let raw = memfd_create("x", MFdFlags::MFD_CLOEXEC).unwrap();
        std::fs::File::from(raw.try_clone().unwrap())
            .write_all(&[4, 1, 2, 3, 4])
            .unwrap();
        assert!(Sealed::open(raw, 5).unwrap_err().contains("not sealed"));
    }

    /// A byte vector as `write_bytes` encodes it, in a sealed segment.
    fn byte_segment(v: &[u8], trailing: &[u8]) -> (Sealed, usize) {
        let mut prefix = [0u8; 10];
        let n = crate::encoding::payload::varint(v.len() as u64, &mut prefix);
        let mut body = v.to_vec();
        body.extend_from_slice(trailing);
        let len = n + body.len();
        (
            Sealed::open(make_segment(&prefix[..n], &body).unwrap(), len).unwrap(),
            len,
        )
    }

    /// A byte vector decoded from a segment's mapping.
    fn read<T: 'static>(seg: &Sealed) -> std::result::Result<T, String> {
        crate::encoding::payload::read_byte_payload::<T>(seg.bytes()).expect("a byte vector")
    }

    #[test]
    fn byte_vectors_are_read_whole_at_every_size() {
        // Around page boundaries (the prefix shifts the bytes off page alignment), the huge-page
        // threshold and a varint length that takes three bytes.
        for len in [
            1usize,
            127,
            128,
            4095,
            4096,
            4097,
            8190,
            65_536 * 2 + 3,
            (8 << 20) - 1,
            (8 << 20) + 4097,
        ] {
            let v: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
            let (seg, _) = byte_segment(&v, &[]);
            let back: Vec<u8> = read(&seg).unwrap();
            assert!(back == v, "len {len}");
            let boxed: Box<[u8]> = read(&seg).unwrap();
            assert!(*boxed == v[..], "len {len}");
        }
        // An empty vector is one byte (its length).
        let (seg, _) = byte_segment(&[], &[]);
        assert_eq!(read::<Vec<u8>>(&seg).unwrap(), b"");
        // Bytes after the string are ignored, as postcard ignores them.
        let (seg, _) = byte_segment(b"abc", b"zz");
        assert_eq!(read::<Vec<u8>>(&seg).unwrap(), b"abc");
    }

    #[test]
    fn a_length_that_lies_is_an_error_not_a_read_past_the_end() {
        // Claims 10 bytes, holds 3.
        let seg = Sealed::open(make_segment(&[10], b"abc").unwrap(), 4).unwrap();
        let e = read::<Vec<u8>>(&seg).unwrap_err();
        assert!(e.contains("only 3 remain"), "{e}");
        // The announced length, not the file's, bounds the read: a segment longer than announced
        // does not let the string run past it.
        let seg = Sealed::open(make_segment(&[5], b"abcde").unwrap(), 4).unwrap();
        assert!(read::<Vec<u8>>(&seg).is_err());
        // A length varint that never ends, or overflows.
        let seg = Sealed::open(make_segment(&[0x80; 3], b"").unwrap(), 3).unwrap();
        assert!(read::<Vec<u8>>(&seg).is_err());
        let seg = Sealed::open(make_segment(&[0xff; 12], b"").unwrap(), 12).unwrap();
        assert!(read::<Vec<u8>>(&seg).is_err());
        // A huge claimed length is refused before anything is allocated for it.
        let mut prefix = [0u8; 10];
        let n = crate::encoding::payload::varint(u64::MAX >> 1, &mut prefix);
        let seg = Sealed::open(make_segment(&prefix[..n], b"x").unwrap(), n + 1).unwrap();
        assert!(read::<Vec<u8>>(&seg).is_err());
    }
}
