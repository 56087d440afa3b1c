//! Shared segments: anonymous `memfd_create` memory mapped `MAP_SHARED` with memmap2, the one
//! [`Segment`] type for every piece of shared memory the parent makes.
//!
//! A segment has no name in `/dev/shm`, so a killed process leaks nothing: the memory lives exactly
//! as long as some process maps it (or holds its fd). The pool's control segment is mapped before
//! the fork server is forked, so the server and every worker it forks see it at the same address.
//! After that fork the parent marks the mapping `MADV_DONTFORK`, so children the parent forks later
//! (another pool's workers, a `Command`) do not inherit it and cannot keep it alive.
//!
//! A segment made after the fork (a `SharedVec`, a reader's buffer: [`Segment::passed`]) reaches
//! the workers as a file descriptor instead (see `channel`): it has a process-unique id by which
//! they know it, is `MADV_DONTFORK` from the start, and is truncated when dropped.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use memmap2::{Advice, MmapOptions, MmapRaw};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::error::{Error, Result};
use crate::shm::channel::SegmentShare;
use crate::sync::{AtomicU64, Ordering};

/// Ids of segments and mapped files, unique in this process (0 is never used).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    // Relaxed: only uniqueness matters; nothing is published through the counter.
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A shared mapping of an anonymous memfd.
///
/// Made before a fork ([`Segment::new`]: the control segment, a `Queue`'s), it reaches children
/// as an inherited mapping and `id` is `None`. Made to be passed by fd ([`Segment::passed`]: a
/// `SharedVec`'s or a reader buffer's memory), it has an `id` and is truncated on drop.
#[derive(Debug)]
pub(crate) struct Segment {
    /// For a passed segment: `MADV_DONTFORK` from the start, so children forked later (another
    /// pool, a `Command`) do not inherit it.
    map: MmapRaw,
    /// The memfd, kept only while it may still have to be passed to another process (always, for
    /// a passed segment); the dispatcher holds a `Weak` to it per worker that received it.
    fd: Option<Arc<OwnedFd>>,
    /// `Some` (its process-unique id, from [`next_id`]) exactly for a passed segment.
    id: Option<u64>,
}

impl Segment {
    /// Creates a zero-filled shared segment of `len` bytes (sparse: pages cost memory only once touched).
    pub(crate) fn new(name: &str, len: usize) -> Result<Segment> {
        if len == 0 {
            return Err(Error::invalid("a shared segment cannot be empty"));
        }
        // Every pointer offset into the mapping must fit an `isize` (`ptr::add`'s contract), so no
        // mapping may be larger, whatever the caller computed.
        if len > isize::MAX as usize {
            return Err(Error::invalid(format!(
                "a shared segment of {len} bytes does not fit in the address space"
            )));
        }
        // memfd is CLOEXEC so a task that spawns a `Command` cannot leak it.
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::os("memfd_create", std::io::Error::from(e)))?;
        let file = File::from(fd);
        check_fsize(len as u64).map_err(|e| Error::os("ftruncate", e))?;
        file.set_len(len as u64)
            .map_err(|e| Error::os("ftruncate", e))?;
        let map = MmapRaw::map_raw(&file).map_err(|e| Error::os("mmap", e))?;
        Ok(Segment {
            map,
            fd: Some(Arc::new(OwnedFd::from(file))),
            id: None,
        })
    }

    /// A zero-filled segment of `bytes > 0` bytes, to be passed to workers by fd.
    pub(crate) fn passed(name: &str, bytes: usize) -> Result<Segment> {
        debug_assert!(bytes > 0, "a memfd of size 0 cannot be mapped");
        // CLOEXEC: a task that spawns a `Command` cannot leak the segment into it.
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::os("memfd_create", std::io::Error::from(e)))?;
        let map = map_passed(&fd, bytes)?;
        Ok(Segment {
            map,
            fd: Some(Arc::new(fd)),
            id: Some(next_id()),
        })
    }

    /// Resizes a passed segment's memfd to `bytes > 0` and maps it anew (contents up to the
    /// smaller size kept). Only while nobody else has the fd (construction).
    pub(crate) fn resize(&mut self, bytes: usize) -> Result<()> {
        debug_assert!(bytes > 0);
        debug_assert!(self.id.is_some(), "only a passed segment is resized");
        let fd = self.fd();
        debug_assert_eq!(Arc::strong_count(fd), 1, "resized after sharing");
        self.map = map_passed(fd, bytes)?;
        Ok(())
    }

    /// A passed segment's id.
    pub(crate) fn id(&self) -> u64 {
        self.id.expect("only a passed segment has an id")
    }

    /// A passed segment's fd (a passed segment keeps it for its whole life).
    pub(crate) fn fd(&self) -> &Arc<OwnedFd> {
        self.fd.as_ref().expect("a passed segment keeps its fd")
    }

    /// What the dispatcher needs to pass this (passed) segment to a worker.
    pub(crate) fn share(&self) -> SegmentShare {
        SegmentShare {
            id: self.id(),
            fd: Arc::clone(self.fd()),
            keep: None,
        }
    }

    /// Base address of the mapping (page aligned).
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Drops the fd: from now on only the mapping keeps the memory alive.
    pub(crate) fn close_fd(&mut self) {
        self.fd = None;
    }

    /// Keeps children forked from now on from inheriting this mapping.
    pub(crate) fn dont_fork(&self) -> Result<()> {
        // SAFETY: the range is exactly our own live mapping; MADV_DONTFORK changes only whether a
        // later fork copies it, never the contents or validity of the mapping in this process.
        let rc = unsafe {
            libc::madvise(
                self.map.as_mut_ptr().cast(),
                self.map.len(),
                libc::MADV_DONTFORK,
            )
        };
        if rc != 0 {
            return Err(Error::os(
                "madvise(MADV_DONTFORK)",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // A passed segment: free the memory now, not when the last worker closes its copy of the
        // fd or unmaps its cached mapping (see `bulk::worker`): no chunk task of this segment is
        // in flight (borrows and `Window::settle` guarantee it), and the id is never used again,
        // so no worker touches the truncated pages. Failure only delays freeing to the last close.
        if self.id.is_some()
            && let Some(fd) = &self.fd
        {
            let _ = nix::unistd::ftruncate(&**fd, 0);
        }
    }
}

/// Sets a passed segment's memfd size to `bytes` and maps all of it shared and writable.
fn map_passed(fd: &OwnedFd, bytes: usize) -> Result<MmapRaw> {
    let len = i64::try_from(bytes).map_err(|_| Error::invalid("segment too large"))?;
    check_fsize(bytes as u64).map_err(|e| Error::os("ftruncate", e))?;
    nix::unistd::ftruncate(fd, len).map_err(|e| Error::os("ftruncate", std::io::Error::from(e)))?;
    let map = MmapOptions::new()
        .len(bytes)
        .map_raw(fd.as_raw_fd())
        .map_err(|e| Error::os("mmap", e))?;
    map.advise(Advice::DontFork)
        .map_err(|e| Error::os("madvise(MADV_DONTFORK)", e))?;
    Ok(map)
}

/// `EFBIG` if a file of `end` bytes passes this process's `RLIMIT_FSIZE`. A memfd is a file:
/// sizing (`ftruncate`) or writing (`write(2)`, even inside its size) one past that limit raises
/// `SIGXFSZ`, whose default action kills the process. So every memfd the pool sizes or writes is
/// checked first (segments here, payload segments in `bigpayload`): a clear error instead of a
/// dead parent or worker. (Stores through a mapping are not limited.)
pub(crate) fn check_fsize(end: u64) -> std::io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` into `lim`, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && end > lim.rlim_cur {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "a segment of {end} bytes passes this process's RLIMIT_FSIZE ({} bytes)",
                lim.rlim_cur
            ),
        ));
    }
    Ok(())
}

/// Rounds `n` up to a multiple of `align` (a power of two); `None` if that overflows `usize`.
pub(crate) const fn align_up(n: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    match n.checked_add(align - 1) {
        Some(m) => Some(m & !(align - 1)),
        None => None,
    }
}
