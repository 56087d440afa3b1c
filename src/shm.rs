//! Shared segments: anonymous `memfd_create` memory mapped `MAP_SHARED` with memmap2.
//!
//! A segment has no name in `/dev/shm`, so a killed process leaks nothing: the memory lives exactly
//! as long as some process maps it (or holds its fd). The pool's control segment is mapped before
//! the fork server is forked, so the server and every worker it forks see it at the same address.
//! After that fork the parent marks the mapping `MADV_DONTFORK`, so children the parent forks later
//! (another pool's workers, a `Command`) do not inherit it and cannot keep it alive.

use std::fs::File;
use std::os::fd::OwnedFd;

use memmap2::MmapRaw;
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::error::{Error, Result};

/// A shared mapping of an anonymous memfd.
#[derive(Debug)]
pub(crate) struct Segment {
    map: MmapRaw,
    /// The memfd, kept only while it may still have to be passed to another process.
    fd: Option<OwnedFd>,
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
        file.set_len(len as u64)
            .map_err(|e| Error::os("ftruncate", e))?;
        let map = MmapRaw::map_raw(&file).map_err(|e| Error::os("mmap", e))?;
        Ok(Segment {
            map,
            fd: Some(OwnedFd::from(file)),
        })
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

/// Rounds `n` up to a multiple of `align` (a power of two); `None` if that overflows `usize`.
pub(crate) const fn align_up(n: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    match n.checked_add(align - 1) {
        Some(m) => Some(m & !(align - 1)),
        None => None,
    }
}
