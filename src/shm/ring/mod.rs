//! A single-producer single-consumer ring of [`Descriptor`]s that can live in shared memory.
//!
//! # Design
//!
//! Two monotonically increasing `u64` positions, each in its own cache line, and a power-of-two
//! array of slots. Only the producer writes `tail`, only the consumer writes `head`; each side
//! caches the other's position and re-reads it only when the ring looks full (producer) or empty
//! (consumer), so an uncontended push or pop touches one shared cache line.
//!
//! * `push`: if `tail - cached_head == CAP`, reload `head` (Acquire, `SYNC: ring-free`); if still
//!   full, fail. Write the slot, then `tail = tail + 1` (Release, `SYNC: ring-publish`).
//! * `pop`: if `head == cached_tail`, reload `tail` (Acquire, `SYNC: ring-publish`); if still
//!   empty, return `None`. Read the slot, then `head = head + 1` (Release, `SYNC: ring-free`).
//!
//! **Never trust the other process:** a position loaded from the peer is checked
//! (`head <= tail <= head + CAP`) before it is used; a bad one is a [`RingError`], never an
//! out-of-bounds slot access.
//!
//! **Why positions survive a dead peer:** a side that attaches later starts from the positions in
//! shared memory ([`Producer::attach`], [`Consumer::attach`]), so the descriptors a dead worker had
//! not popped stay queued for its replacement, and `head` tells the parent exactly how many tasks
//! the dead worker took.
//!
//! Positions are `u64`: at one push per nanosecond they wrap after 584 years, so wrap-around is
//! not handled.

// `pub` items here are the API of the loom build only (where `ring` is public); in every other
// build the module is private to the crate.
#![cfg_attr(not(loom), allow(unreachable_pub))]

mod descriptor;

pub use descriptor::*;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering, UnsafeCell};

/// Slots per ring (a power of two).
pub const RING_CAPACITY: u64 = 64;
const _: () = assert!(RING_CAPACITY.is_power_of_two());

/// The shared part of a ring: positions and slots. `#[repr(C)]`, no pointers inside.
#[repr(C)]
#[derive(Debug)]
pub struct RingMem {
    /// Consumer position: descriptors popped so far. Written only by the consumer.
    /// Invariant: `head <= tail <= head + RING_CAPACITY`.
    head: CachePadded<AtomicU64>,
    /// Producer position: descriptors pushed so far. Written only by the producer.
    tail: CachePadded<AtomicU64>,
    /// Slot `p % RING_CAPACITY` holds descriptor `p` for `head <= p < tail`.
    slots: [UnsafeCell<Descriptor>; RING_CAPACITY as usize],
}

// SAFETY: the slots are only accessed through `Producer`/`Consumer`, whose protocol (module docs)
// gives each slot to exactly one side at a time; the positions are atomics.
unsafe impl Sync for RingMem {}
// SAFETY: `RingMem` holds no thread-bound data: atomics and plain `Pod` descriptors.
unsafe impl Send for RingMem {}

impl RingMem {
    /// An empty ring.
    pub fn new() -> Self {
        RingMem {
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            slots: std::array::from_fn(|_| UnsafeCell::new(Descriptor::default())),
        }
    }

    /// Number of descriptors popped so far (the consumer's position), as last published.
    pub fn consumed(&self) -> u64 {
        // Acquire, SYNC: ring-free (pairs with the consumer's Release store in `pop`).
        self.head.load(Ordering::Acquire)
    }

    /// Number of descriptors pushed so far (the producer's position), as last published.
    #[cfg(any(test, loom))]
    pub fn produced(&self) -> u64 {
        // Acquire, SYNC: ring-publish (pairs with the producer's Release store in `push`).
        self.tail.load(Ordering::Acquire)
    }
}

impl RingMem {
    /// Sets the consumer position while no consumer is attached (the parent restarting a ring
    /// after its dead consumer scribbled on it).
    pub fn force_consumed(&self, pos: u64) {
        // Release, SYNC: ring-free (the producer's next Acquire load of `head` sees it).
        self.head.store(pos, Ordering::Release);
    }

    /// Sets the producer position while no producer is attached (the parent restoring a
    /// position it owns, or emptying a ring, after a dead peer may have scribbled on it).
    pub fn force_produced(&self, pos: u64) {
        // Release, SYNC: ring-publish (the consumer's next Acquire load of `tail` sees it).
        self.tail.store(pos, Ordering::Release);
    }

    /// Address of slot `i % RING_CAPACITY` (for the `corrupt` hooks that forge a peer's writes).
    #[cfg(test)]
    pub fn slot_ptr(&self, i: u64) -> *mut Descriptor {
        self.slots[(i % RING_CAPACITY) as usize].with_mut(|p| p)
    }
}

impl Default for RingMem {
    fn default() -> Self {
        Self::new()
    }
}

/// The peer published a position that breaks the ring's invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingError {
    /// Our own position.
    pub own: u64,
    /// The peer's position as read.
    pub peer: u64,
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ring position out of range (own {}, peer {}, capacity {RING_CAPACITY})",
            self.own, self.peer
        )
    }
}

/// The writing half. Exactly one may exist per ring at a time.
#[derive(Debug)]
pub struct Producer {
    mem: *const RingMem,
    /// Our position; equals `mem.tail`.
    tail: u64,
    /// Last `head` we read; `cached_head <= head`.
    cached_head: u64,
}

// SAFETY: the producer only dereferences `mem`, which the `attach` contract keeps alive, and it is
// the only writer of `tail`; moving it to another thread moves that role with it.
unsafe impl Send for Producer {}

impl Producer {
    /// Attaches the producer role to a ring, starting from the positions stored in it.
    ///
    /// # Safety
    ///
    /// * `mem` points to an initialized `RingMem` that stays mapped while this `Producer` lives.
    /// * No other `Producer` for this ring is used while this one lives (in any process).
    pub unsafe fn attach(mem: *const RingMem) -> Producer {
        // SAFETY: `mem` is valid (caller).
        let ring = unsafe { &*mem };
        // Relaxed: we are the only writer of `tail`, so our own last store is what we read.
        let tail = ring.tail.load(Ordering::Relaxed);
        Producer {
            mem,
            tail,
            cached_head: tail.saturating_sub(RING_CAPACITY),
        }
    }

    fn ring(&self) -> &RingMem {
        // SAFETY: `attach` contract: `mem` stays valid while `self` lives.
        unsafe { &*self.mem }
    }

    /// Our position: descriptors pushed so far.
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// Free slots, reloading the consumer's position.
    #[cfg(any(test, loom))] // used by the tests and the loom models only
    pub fn free(&mut self) -> Result<u64, RingError> {
        self.refresh_head()?;
        Ok(RING_CAPACITY - (self.tail - self.cached_head))
    }

    fn refresh_head(&mut self) -> Result<(), RingError> {
        // Acquire, SYNC: ring-free — the consumer is done reading every slot before `head`.
        let head = self.ring().head.load(Ordering::Acquire);
        if head > self.tail || self.tail - head > RING_CAPACITY || head < self.cached_head {
            return Err(RingError {
                own: self.tail,
                peer: head,
            });
        }
        self.cached_head = head;
        Ok(())
    }

    /// Pushes `d`; `Ok(Err(d))` when the ring is full.
    pub fn push(&mut self, d: Descriptor) -> Result<Result<(), Descriptor>, RingError> {
        debug_assert!(self.tail - self.cached_head <= RING_CAPACITY);
        if self.tail - self.cached_head == RING_CAPACITY {
            self.refresh_head()?;
            if self.tail - self.cached_head == RING_CAPACITY {
                return Ok(Err(d));
            }
        }
        let slot = &self.ring().slots[(self.tail % RING_CAPACITY) as usize];
        // SAFETY: slot `tail` is outside `head..tail`, so the consumer does not read it until we
        // publish the new `tail` below (ring-publish); we are the only producer.
        slot.with_mut(|p| unsafe { p.write(d) });
        self.tail += 1;
        // Release, SYNC: ring-publish — makes the slot write visible before the new position.
        self.ring().tail.store(self.tail, Ordering::Release);
        Ok(Ok(()))
    }
}

/// The reading half. Exactly one may exist per ring at a time.
#[derive(Debug)]
pub struct Consumer {
    mem: *const RingMem,
    /// Our position; equals `mem.head`.
    head: u64,
    /// Last `tail` we read; `head <= cached_tail`.
    cached_tail: u64,
}

// SAFETY: as for `Producer`: the consumer role moves with the value.
unsafe impl Send for Consumer {}

impl Consumer {
    /// Attaches the consumer role to a ring, starting from the positions stored in it.
    ///
    /// # Safety
    ///
    /// * `mem` points to an initialized `RingMem` that stays mapped while this `Consumer` lives.
    /// * No other `Consumer` for this ring is used while this one lives (in any process).
    pub unsafe fn attach(mem: *const RingMem) -> Consumer {
        // SAFETY: `mem` is valid (caller).
        let ring = unsafe { &*mem };
        // Relaxed: we are the only writer of `head`.
        let head = ring.head.load(Ordering::Relaxed);
        Consumer {
            mem,
            head,
            cached_tail: head,
        }
    }

    fn ring(&self) -> &RingMem {
        // SAFETY: `attach` contract: `mem` stays valid while `self` lives.
        unsafe { &*self.mem }
    }

    /// Our position: descriptors popped so far.
    pub fn position(&self) -> u64 {
        self.head
    }

    /// Pops the oldest descriptor, if any.
    pub fn pop(&mut self) -> Result<Option<Descriptor>, RingError> {
        debug_assert!(self.head <= self.cached_tail);
        if self.head == self.cached_tail {
            // Acquire, SYNC: ring-publish — the slot writes before `tail` are visible to us.
            let tail = self.ring().tail.load(Ordering::Acquire);
            if tail < self.cached_tail || tail - self.head > RING_CAPACITY {
                return Err(RingError {
                    own: self.head,
                    peer: tail,
                });
            }
            self.cached_tail = tail;
            if self.head == tail {
                return Ok(None);
            }
        }
        let slot = &self.ring().slots[(self.head % RING_CAPACITY) as usize];
        // SAFETY: `head < tail`, so the producer published this slot (ring-publish) and will not
        // overwrite it until we publish a `head` past it below.
        let d = slot.with(|p| unsafe { p.read() });
        self.head += 1;
        // Release, SYNC: ring-free — our read of the slot happens before the producer reuses it.
        self.ring().head.store(self.head, Ordering::Release);
        Ok(Some(d))
    }

    /// True when a `pop` now would return a descriptor (reloads the producer's position).
    pub fn has_data(&self) -> bool {
        // Acquire, SYNC: ring-publish.
        self.head != self.ring().tail.load(Ordering::Acquire)
    }
}

#[cfg(all(test, not(loom)))]
mod test;

#[cfg(all(test, not(loom)))]
mod cross_process;
