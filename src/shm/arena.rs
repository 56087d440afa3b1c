//! FIFO arenas for variable-size payloads.
//!
//! Each worker seat has two arenas in the pool's shared segment: the *argument* arena, written by
//! the parent and read by the worker, and the *result* arena, written by the worker and read by the
//! parent. Payloads are freed in the order they were allocated (a worker runs its tasks in ring
//! order), so an arena is a ring of bytes described by two monotonically increasing positions:
//! `head` (next allocation) and `freed` (everything before it is free). Position `p` lives at byte
//! offset `p % capacity`. An allocation never wraps: if it does not fit before the end of the
//! arena, the gap is skipped and counted as used until it is freed. When the arena is empty the
//! next allocation restarts at offset 0 of the next lap, so small payloads keep touching the same
//! few pages; the allocating side then knows everything before that lap start is free (its
//! *floor*) and passes `max(freed, floor)` as `freed`, so the skipped gap is not counted as used
//! (counted, it would leave an arena that restarted near its start holding one result at a time).

/// The placement of one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Byte offset of the allocation inside the arena.
    pub(crate) offset: usize,
    /// The arena's `head` after this allocation: freeing up to here frees this allocation.
    pub(crate) end: u64,
    /// Set when the allocation restarted an empty arena at this lap start: everything before it
    /// is free, and the caller should raise its floor to it.
    pub(crate) restart: Option<u64>,
}

/// Plans an allocation of `n` bytes given `head` and `freed` (`freed <= head`).
///
/// Returns `None` when there is not enough free space now (the caller waits for frees); `n` must
/// be at most `cap`.
pub(crate) fn plan(head: u64, freed: u64, cap: usize, n: usize) -> Option<Placement> {
    debug_assert!(freed <= head, "freed {freed} > head {head}");
    debug_assert!(n <= cap);
    let cap64 = cap as u64;
    // A 0-byte payload still advances the position by 1 (so every allocation has a distinct
    // end); the fit is checked with what is advanced, or a full arena would overflow by one.
    let n64 = (n as u64).max(1);
    let pos = head % cap64;
    if head == freed {
        // Empty: restart at offset 0 of the next lap (nothing unfreed can be overwritten).
        let start = if pos == 0 { head } else { head - pos + cap64 };
        return Some(Placement {
            offset: 0,
            end: start + n64,
            restart: Some(start),
        });
    }
    let start = if pos + n64 <= cap64 {
        head
    } else {
        head - pos + cap64
    };
    if start + n64 - freed <= cap64 {
        Some(Placement {
            offset: (start % cap64) as usize,
            end: start + n64,
            restart: None,
        })
    } else {
        None
    }
}

/// The largest region that is free right now and where an allocation would start, as
/// `(offset, len)`: lets an encoder write straight into the arena when the size is not known yet.
pub(crate) fn free_region(head: u64, freed: u64, cap: usize) -> (usize, usize) {
    debug_assert!(freed <= head);
    let cap64 = cap as u64;
    if head == freed {
        return (0, cap);
    }
    let pos = head % cap64;
    let used = head - freed;
    if used >= cap64 {
        return (pos as usize, 0);
    }
    let to_end = cap64 - pos;
    (pos as usize, to_end.min(cap64 - used) as usize)
}

/// A FIFO arena whose two positions are both owned by one process (the parent's argument arenas).
#[derive(Debug)]
pub(crate) struct LocalArena {
    pub(crate) cap: usize,
    pub(crate) head: u64,
    pub(crate) freed: u64,
}

impl LocalArena {
    pub(crate) fn new(cap: usize) -> Self {
        LocalArena {
            cap,
            head: 0,
            freed: 0,
        }
    }

    /// Allocates `n` bytes, or `None` if they do not fit now.
    pub(crate) fn alloc(&mut self, n: usize) -> Option<Placement> {
        let p = plan(self.head, self.freed, self.cap, n)?;
        self.head = p.end;
        if let Some(floor) = p.restart {
            // Empty: both positions are ours, so just move `freed` up to the new lap.
            self.freed = floor;
        }
        Some(p)
    }

    /// Frees every allocation up to `end` (a `Placement::end`, in allocation order).
    pub(crate) fn free_to(&mut self, end: u64) {
        debug_assert!(end >= self.freed && end <= self.head);
        self.freed = end;
    }

    /// Frees everything (the reader died, nothing it held is needed any more).
    pub(crate) fn reset(&mut self) {
        self.freed = self.head;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_allocations_never_overlap_unfreed_data() {
        // Model every live allocation and check none overlaps, over a long pseudo-random run.
        let cap = 1000;
        let mut a = LocalArena::new(cap);
        let mut live: std::collections::VecDeque<(usize, usize, u64)> = Default::default();
        let mut x: u64 = 12345;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 400) as usize;
            let placed = if x.is_multiple_of(3) {
                None
            } else {
                a.alloc(n)
            };
            let Some(p) = placed else {
                if let Some((_, _, end)) = live.pop_front() {
                    a.free_to(end);
                }
                continue;
            };
            let (off, len, end) = (p.offset, n, p.end);
            assert!(off + len <= cap, "allocation runs past the arena");
            for &(o, l, _) in &live {
                assert!(
                    off + len <= o || o + l <= off,
                    "overlap {off}+{len} with {o}+{l}"
                );
            }
            live.push_back((off, len, end));
        }
    }

    #[test]
    fn empty_arena_restarts_at_offset_zero() {
        let mut a = LocalArena::new(100);
        let p = a.alloc(30).unwrap();
        assert_eq!(p.offset, 0);
        a.free_to(p.end);
        let q = a.alloc(90).unwrap();
        assert_eq!(q.offset, 0);
        assert!(a.alloc(20).is_none());
        a.free_to(q.end);
        assert_eq!(a.alloc(100).unwrap().offset, 0);
    }

    #[test]
    fn an_arena_restarted_near_its_start_still_holds_many_allocations() {
        let mut a = LocalArena::new(1000);
        let p = a.alloc(10).unwrap();
        a.free_to(p.end);
        // Empty at offset 10: the next allocation restarts the lap at 0.
        let first = a.alloc(10).unwrap();
        assert_eq!((first.offset, first.restart.is_some()), (0, true));
        // ... and the gap it skipped does not count as used: 90 more fit.
        for i in 1..100 {
            assert_eq!(
                a.alloc(10).map(|p| p.offset),
                Some(i * 10),
                "allocation {i}"
            );
        }
        assert!(a.alloc(10).is_none());
    }

    #[test]
    fn empty_payloads_on_a_full_arena_wait_instead_of_overflowing() {
        let mut a = LocalArena::new(100);
        let full = a.alloc(100).unwrap();
        assert_eq!(full.offset, 0);
        assert!(
            a.alloc(0).is_none(),
            "a 0-byte payload does not fit a full arena"
        );
        a.free_to(full.end);
        assert!(a.alloc(0).is_some());
    }

    #[test]
    fn free_region_matches_plan() {
        let (off, len) = free_region(130, 100, 100);
        assert_eq!((off, len), (30, 70));
        let p = plan(130, 100, 100, len).unwrap();
        assert_eq!(p.offset, off);
        assert_eq!(free_region(150, 50, 100).1, 0);
    }
}
