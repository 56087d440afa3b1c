//! The pool's control segment: one shared mapping holding the header, one [`SeatCtl`] per worker
//! seat, and each seat's two arenas. Made before the fork server is forked, so every process of
//! the pool sees it at the same address. Everything shared is an atomic or a `Pod` descriptor.

use std::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::error::{Error, Result};
use crate::shm::ring::RingMem;
use crate::shm::segment::{Segment, align_up};
use crate::shm::wake::WakeWord;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// `PoolHeader::shutdown`: running.
pub(crate) const RUNNING: u32 = 0;
/// `PoolHeader::shutdown`: finish the queued work, then exit.
pub(crate) const GRACEFUL: u32 = 1;
/// `PoolHeader::shutdown`: kill every worker now.
pub(crate) const TERMINATE: u32 = 2;

/// Pool-wide shared words.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct PoolHeader {
    /// Wakes the parent's collector (results, deaths, spawns).
    pub(crate) collector: WakeWord,
    /// Wakes the fork server (spawn/kill requests, shutdown).
    pub(crate) server: WakeWord,
    /// `RUNNING`, `GRACEFUL` or `TERMINATE`; written by the parent only.
    pub(crate) shutdown: CachePadded<AtomicU32>,
    /// Counts worker spawns; gives workers their `PoolWorker-N` names. Written by the server only.
    pub(crate) spawned: AtomicU64,
    /// Set to 1 by the server right before it `_exit`s after a shutdown, with a wake of the
    /// collector, which then reaps it with a blocking `waitpid` (the exit itself wakes no futex).
    pub(crate) server_exiting: AtomicU32,
    /// The fork server's start: `SERVER_STARTING` until it has checked that threads can start
    /// in it, then `SERVER_SERVING` or `SERVER_REFORK` (it exits; the parent forks it again).
    /// Written by the server, reset by the parent before each fork. See `process::server`,
    /// "Locks across the fork".
    pub(crate) server_state: AtomicU32,
}

/// [`PoolHeader::server_state`]: the server has not reported yet.
pub(crate) const SERVER_STARTING: u32 = 0;
/// [`PoolHeader::server_state`]: the server serves.
pub(crate) const SERVER_SERVING: u32 = 1;
/// [`PoolHeader::server_state`]: the fork caught a std lock held; the server exits.
pub(crate) const SERVER_REFORK: u32 = 2;

/// One worker seat's shared state.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SeatCtl {
    /// Parent → worker tasks.
    pub(crate) tasks: RingMem,
    /// Worker → parent results.
    pub(crate) results: RingMem,
    /// Wakes the worker.
    pub(crate) wake: WakeWord,
    /// Result-arena position up to which the parent has consumed results; written by the parent.
    pub(crate) result_freed: CachePadded<AtomicU64>,
    /// Pid of the live worker in this seat, 0 if none. Written by the server.
    pub(crate) pid: AtomicU32,
    /// Parent sets 1 to ask for a worker; the server sets 0 when it forked (or failed).
    pub(crate) spawn_req: AtomicU32,
    /// errno of a failed spawn, 0 on success. Written by the server before clearing `spawn_req`.
    pub(crate) spawn_errno: AtomicU32,
    /// Parent sets 1 to have the server SIGKILL this seat's worker.
    pub(crate) kill_req: AtomicU32,
    /// Server sets 1 after reaping this seat's worker (then `exit_*` are valid); parent clears.
    pub(crate) exited: AtomicU32,
    /// Raw wait status of the reaped worker.
    pub(crate) exit_status: AtomicU32,
    /// Pid of the reaped worker.
    pub(crate) exit_pid: AtomicU32,
    /// Length of the initializer's panic message, stored at offset 0 of the result arena.
    pub(crate) init_error_len: AtomicU32,
    /// When the worker started its current task that has a time limit (`CLOCK_MONOTONIC`, ns).
    /// Written by the worker before it arms the limit's timer; read by the parent after the
    /// worker's death (ordered by seat-exit) to tell the timer's SIGKILL from another one.
    pub(crate) task_started_ns: AtomicU64,
    /// 1 while the parent may still copy the last large result out of this seat's worker's
    /// reused result segment (`bigpayload`, "Reused result segments"): the worker sets it when
    /// it writes a result there, the parent clears it once done (and before a replacement
    /// starts). The worker rewrites the segment only when it reads 0.
    pub(crate) result_segment_busy: AtomicU32,
}

impl SeatCtl {
    fn new() -> Self {
        SeatCtl {
            tasks: RingMem::new(),
            results: RingMem::new(),
            wake: WakeWord::new(),
            result_freed: CachePadded::new(AtomicU64::new(0)),
            pid: AtomicU32::new(0),
            spawn_req: AtomicU32::new(0),
            spawn_errno: AtomicU32::new(0),
            kill_req: AtomicU32::new(0),
            exited: AtomicU32::new(0),
            exit_status: AtomicU32::new(0),
            exit_pid: AtomicU32::new(0),
            init_error_len: AtomicU32::new(0),
            task_started_ns: AtomicU64::new(0),
            result_segment_busy: AtomicU32::new(0),
        }
    }
}

/// The mapped control segment and its layout.
#[derive(Debug)]
pub(crate) struct Control {
    seg: Segment,
    base: NonNull<u8>,
    seats: usize,
    arena_cap: usize,
    seats_off: usize,
    arenas_off: usize,
}

// SAFETY: everything reachable through `Control` is atomics, rings (SPSC, `Sync`) and arenas whose
// access is governed by the pool's protocol; the raw base pointer is just the mapping's address.
unsafe impl Send for Control {}
// SAFETY: as above.
unsafe impl Sync for Control {}

const PAGE: usize = 4096;

/// Where everything sits in the control segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Offset of seat 0's [`SeatCtl`] (after the [`PoolHeader`]).
    pub(crate) seats_off: usize,
    /// Offset of seat 0's argument arena (page aligned, after the last `SeatCtl`).
    pub(crate) arenas_off: usize,
    /// Each arena's size: the requested size rounded up to a page.
    pub(crate) arena_cap: usize,
    /// Bytes to map: `arenas_off + seats * 2 * arena_cap`.
    pub(crate) len: usize,
}

impl Layout {
    /// The layout for `seats` workers with arenas of (at least) `arena_cap` bytes.
    ///
    /// Both numbers come straight from the user's builder, so nothing here may wrap: every sum,
    /// product and rounding is checked, and the total must stay within `isize::MAX` (the most a
    /// pointer offset may span, and so the most `ptr::add` may ever be asked to cover). Unchecked,
    /// `arena_size(1 << 62)` would wrap to a small mapping that the first task then wrote past.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming both sizes if the layout does not fit.
    pub(crate) fn new(seats: usize, arena_cap: usize) -> Result<Layout> {
        let too_large = || {
            Error::invalid(format!(
                "{seats} workers with arenas of {arena_cap} bytes do not fit in the address space"
            ))
        };
        let seats_off = align_up(size_of::<PoolHeader>(), 128).ok_or_else(too_large)?;
        let seats_end = seats
            .checked_mul(size_of::<SeatCtl>())
            .and_then(|n| n.checked_add(seats_off))
            .ok_or_else(too_large)?;
        let arenas_off = align_up(seats_end, PAGE).ok_or_else(too_large)?;
        let arena_cap_rounded = align_up(arena_cap, PAGE).ok_or_else(too_large)?;
        let len = seats
            .checked_mul(2)
            .and_then(|n| n.checked_mul(arena_cap_rounded))
            .and_then(|n| n.checked_add(arenas_off))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(too_large)?;
        Ok(Layout {
            seats_off,
            arenas_off,
            arena_cap: arena_cap_rounded,
            len,
        })
    }
}

impl Control {
    /// Maps and initializes a control segment for `seats` workers with arenas of `arena_cap` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the layout does not fit in the address space (the sizes come
    /// from the user's builder, so every step is checked; see [`Layout::new`]), or the segment's
    /// own errors.
    pub(crate) fn new(seats: usize, arena_cap: usize) -> Result<Control> {
        let Layout {
            seats_off,
            arenas_off,
            arena_cap,
            len,
        } = Layout::new(seats, arena_cap)?;
        let seg = Segment::new("shmpool-control", len)?;
        let base = NonNull::new(seg.ptr()).expect("mmap never returns null");
        debug_assert!(seg.len() >= len);
        // SAFETY: the segment is `len` bytes, page aligned, and not yet shared with anyone. The
        // header at 0 and seat `i < seats` at `seats_off + i * size_of::<SeatCtl>()` lie inside
        // it: `Layout::new` computed `arenas_off >= seats_off + seats * size_of::<SeatCtl>()` and
        // `len >= arenas_off` with checked arithmetic, so no offset wrapped. They are suitably
        // aligned (128 divides every offset used; the types need at most 128).
        unsafe {
            base.as_ptr().cast::<PoolHeader>().write(PoolHeader {
                collector: WakeWord::new(),
                server: WakeWord::new(),
                shutdown: CachePadded::new(AtomicU32::new(RUNNING)),
                spawned: AtomicU64::new(0),
                server_exiting: AtomicU32::new(0),
                server_state: AtomicU32::new(SERVER_STARTING),
            });
            for i in 0..seats {
                base.as_ptr()
                    .add(seats_off + i * size_of::<SeatCtl>())
                    .cast::<SeatCtl>()
                    .write(SeatCtl::new());
            }
        }
        const _: () = assert!(align_of::<SeatCtl>() <= 128 && align_of::<PoolHeader>() <= 128);
        const _: () = assert!(size_of::<SeatCtl>().is_multiple_of(128));
        let mut c = Control {
            seg,
            base,
            seats,
            arena_cap,
            seats_off,
            arenas_off,
        };
        // The mapping is what the pool's processes share; no fd needs to stay open.
        c.seg.close_fd();
        Ok(c)
    }

    pub(crate) fn header(&self) -> &PoolHeader {
        // SAFETY: initialized in `new`, lives as long as `self.seg`.
        unsafe { &*self.base.as_ptr().cast::<PoolHeader>() }
    }

    pub(crate) fn seat(&self, i: usize) -> &SeatCtl {
        assert!(i < self.seats);
        // SAFETY: seat `i < seats` was initialized in `new` at this offset.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(self.seats_off + i * size_of::<SeatCtl>())
                .cast::<SeatCtl>()
        }
    }

    pub(crate) fn seats(&self) -> usize {
        self.seats
    }

    pub(crate) fn arena_cap(&self) -> usize {
        self.arena_cap
    }

    /// Base pointer of seat `i`'s argument arena (`arena_cap` bytes).
    pub(crate) fn arg_arena(&self, i: usize) -> *mut u8 {
        assert!(i < self.seats);
        // SAFETY: in bounds: `i < seats`, so `arenas_off + (2i+1) * arena_cap <= len`, which
        // `Layout::new` computed with checked arithmetic (no term wrapped) within `isize::MAX`.
        unsafe {
            self.base
                .as_ptr()
                .add(self.arenas_off + 2 * i * self.arena_cap)
        }
    }

    /// Base pointer of seat `i`'s result arena (`arena_cap` bytes).
    pub(crate) fn result_arena(&self, i: usize) -> *mut u8 {
        assert!(i < self.seats);
        // SAFETY: in bounds: `i < seats`, so `arenas_off + (2i+2) * arena_cap <= len`, which
        // `Layout::new` computed with checked arithmetic (no term wrapped) within `isize::MAX`.
        unsafe {
            self.base
                .as_ptr()
                .add(self.arenas_off + (2 * i + 1) * self.arena_cap)
        }
    }

    /// Keeps children the parent forks from now on from inheriting the segment.
    pub(crate) fn dont_fork(&self) -> Result<()> {
        self.seg.dont_fork()
    }

    /// Total mapped bytes.
    #[allow(dead_code)]
    pub(crate) fn mapped_len(&self) -> usize {
        self.seg.len()
    }

    /// True if any seat has a pending spawn or kill request, or shutdown was asked for.
    pub(crate) fn server_has_work(&self) -> bool {
        // Acquire, SYNC: server-request — pairs with the parent's Release stores of the requests.
        self.header().shutdown.load(Ordering::Acquire) != RUNNING
            || (0..self.seats).any(|i| {
                let s = self.seat(i);
                s.spawn_req.load(Ordering::Acquire) != 0 || s.kill_req.load(Ordering::Acquire) != 0
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_checked_and_bounded_by_isize_max() {
        let l = Layout::new(3, 5000).unwrap();
        assert_eq!(l.arena_cap, 8192);
        assert!(l.seats_off >= size_of::<PoolHeader>());
        assert!(l.arenas_off >= l.seats_off + 3 * size_of::<SeatCtl>());
        assert_eq!(l.arenas_off % PAGE, 0);
        assert_eq!(l.len, l.arenas_off + 6 * 8192);
        // Each way the arithmetic could wrap or exceed `isize::MAX` is an error.
        assert!(Layout::new(2, 1 << 62).is_err());
        assert!(Layout::new(1, usize::MAX).is_err());
        assert!(Layout::new(1, usize::MAX - PAGE + 2).is_err());
        assert!(Layout::new(usize::MAX / size_of::<SeatCtl>() + 1, PAGE).is_err());
        assert!(Layout::new(1 << 40, 1 << 22).is_err());
        // Just within: one arena pair of a quarter of the address space.
        assert!(Layout::new(1, 1 << 61).is_ok());
    }
}
