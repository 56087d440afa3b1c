//! The queue's segment and the MPMC turn protocol over it ([`Shared`]): layout, claim, publish,
//! release, and the stall checks (see the `queue` module docs, "Layout" and "Protocol").

use std::fmt;
use std::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::error::{Error, Result};
use crate::shm::mpmc::{self, Claim, SlotHead};
use crate::shm::segment::{Segment, align_up};
use crate::shm::wake::WakeWord;
use crate::sync::{AtomicU64, Ordering};

/// Items up to this many encoded bytes move through a stack buffer (no allocation).
pub(super) const INLINE: usize = 256;

/// The shared words of a queue, at offset 0 of its segment.
#[repr(C)]
#[derive(Debug)]
pub(super) struct QueueHeader {
    /// Next position a producer will claim. `dequeue_pos <= enqueue_pos <= dequeue_pos + capacity`
    /// (modulo in-flight claims).
    pub(super) enqueue_pos: CachePadded<AtomicU64>,
    /// Next position a consumer will claim.
    pub(super) dequeue_pos: CachePadded<AtomicU64>,
    /// Notified after an item is published.
    pub(super) not_empty: WakeWord,
    /// Notified after a slot is handed back.
    pub(super) not_full: WakeWord,
}

const _: () = assert!(size_of::<SlotHead>() == 16);
const _: () = assert!(align_of::<SlotHead>() <= 64 && align_of::<QueueHeader>() <= 128);

/// The error for a slot whose `seq` is ahead of a position nobody has moved past: only a process
/// writing over the queue's memory can cause it (see `try_put_bytes`).
pub(super) fn corrupted(side: &str, pos: u64, seq: u64) -> Error {
    Error::codec(format!(
        "queue {side} position {pos} meets a slot sequence of {seq}, which no queue operation \
         writes: the queue's shared memory was corrupted"
    ))
}

/// Identifies a queue across processes: the pid of the process that created it and a serial
/// unique within that process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) pid: u32,
    pub(super) serial: u64,
}

/// One mapped queue segment and its layout, shared by every `Queue` handle of this process.
pub(super) struct Shared {
    seg: Segment,
    base: NonNull<u8>,
    /// Number of slots, `>= 1`.
    pub(super) capacity: u64,
    /// Most encoded bytes per item.
    pub(super) slot_size: usize,
    /// Bytes per slot: `align_up(16 + slot_size, 64)`.
    stride: usize,
    /// Offset of slot 0: `align_up(size_of::<QueueHeader>(), 128)`.
    slots_off: usize,
    /// Registry key: `(pid of the creating process, serial)`.
    pub(super) key: Key,
}

// SAFETY: the mapping is shared memory that every process of the queue accesses only through
// atomics (`QueueHeader`, `SlotHead`) and through payload bytes whose ownership the slot protocol
// hands over (module docs, "Protocol"); `base` is just the mapping's address.
unsafe impl Send for Shared {}
// SAFETY: as above: `&Shared` gives no unsynchronized access to anything.
unsafe impl Sync for Shared {}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("key", &self.key)
            .field("capacity", &self.capacity)
            .field("slot_size", &self.slot_size)
            .field("mapped", &self.seg.len())
            .finish()
    }
}

impl Shared {
    pub(super) fn map(capacity: usize, slot_size: usize) -> Result<Shared> {
        if capacity == 0 {
            return Err(Error::invalid("a queue needs a capacity of at least 1"));
        }
        if slot_size == 0 {
            return Err(Error::invalid("a queue slot needs at least 1 byte"));
        }
        let too_large = || {
            Error::invalid(format!(
                "a queue of {capacity} slots of {slot_size} bytes does not fit in memory"
            ))
        };
        let slots_off = align_up(size_of::<QueueHeader>(), 128).ok_or_else(too_large)?;
        let stride = slot_size
            .checked_add(size_of::<SlotHead>() + 63)
            .ok_or_else(too_large)?
            & !63;
        let len = capacity
            .checked_mul(stride)
            .and_then(|n| n.checked_add(slots_off))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(too_large)?;
        let mut seg = Segment::new("shmpool-queue", len)?;
        // Only the mapping is shared (inherited by `fork`); no fd needs to stay open.
        seg.close_fd();
        let base = NonNull::new(seg.ptr()).expect("mmap never returns null");
        // SAFETY: the segment is `len` bytes, page aligned, zero-filled and not yet visible to any
        // other process or thread. The header at offset 0 and every `SlotHead` at
        // `slots_off + i * stride` (`i < capacity`) lie inside it by the computation of `len`,
        // and are aligned: the base is page aligned, `slots_off` is a multiple of 128 and
        // `stride` of 64, more than the types need (asserted above).
        unsafe {
            base.as_ptr().cast::<QueueHeader>().write(QueueHeader {
                enqueue_pos: CachePadded::new(AtomicU64::new(0)),
                dequeue_pos: CachePadded::new(AtomicU64::new(0)),
                not_empty: WakeWord::new(),
                not_full: WakeWord::new(),
            });
            for i in 0..capacity {
                base.as_ptr()
                    .add(slots_off + i * stride)
                    .cast::<SlotHead>()
                    .write(SlotHead::new(i as u64));
            }
        }
        Ok(Shared {
            seg,
            base,
            capacity: capacity as u64,
            slot_size,
            stride,
            slots_off,
            key: Key { pid: 0, serial: 0 },
        })
    }

    pub(super) fn header(&self) -> &QueueHeader {
        // SAFETY: written in `map`, lives as long as `self.seg`; only atomics inside.
        unsafe { &*self.base.as_ptr().cast::<QueueHeader>() }
    }

    /// The slot of position `pos`: its head and a pointer to its `slot_size` payload bytes.
    pub(super) fn slot(&self, pos: u64) -> (&SlotHead, *mut u8) {
        let index = (pos % self.capacity) as usize;
        debug_assert!((index as u64) < self.capacity);
        let off = self.slots_off + index * self.stride;
        debug_assert!(off + size_of::<SlotHead>() + self.slot_size <= self.seg.len());
        // SAFETY: `index < capacity`, so the slot lies inside the mapping (see `map`), and its
        // head was initialized there; the payload follows the 16-byte head within `stride`.
        unsafe {
            let head = self.base.as_ptr().add(off);
            (&*head.cast::<SlotHead>(), head.add(size_of::<SlotHead>()))
        }
    }

    /// Claims the next position, copies `bytes` into its slot and publishes it. Returns
    /// `Ok(false)` if the queue is full. Never blocks.
    pub(super) fn try_put_bytes(&self, bytes: &[u8]) -> Result<bool> {
        debug_assert!(bytes.len() <= self.slot_size);
        match mpmc::claim_put(&self.header().enqueue_pos, |p| self.slot(p).0) {
            Claim::Claimed(pos) => {
                let (slot, data) = self.slot(pos);
                // SAFETY: we own position `pos` (`claim_put`), so no other process reads or
                // writes this slot's bytes until we publish; `bytes.len() <= slot_size`, the
                // payload area of the slot.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
                mpmc::publish(slot, pos, bytes.len() as u64);
                Ok(true)
            }
            Claim::NotNow => Ok(false),
            Claim::Corrupted { pos, seq } => Err(corrupted("enqueue", pos, seq)),
        }
    }

    /// Claims the oldest published item, copies its bytes out (into `stack` when they fit,
    /// else into `heap`) and hands the slot back. `Ok(None)` when the queue is empty; otherwise
    /// the encoded length.
    pub(super) fn try_take(
        &self,
        stack: &mut [u8; INLINE],
        heap: &mut Vec<u8>,
    ) -> Result<Option<usize>> {
        let pos = match mpmc::claim_take(&self.header().dequeue_pos, |p| self.slot(p).0) {
            Claim::Claimed(pos) => pos,
            Claim::NotNow => return Ok(None),
            Claim::Corrupted { pos, seq } => return Err(corrupted("dequeue", pos, seq)),
        };
        let (slot, data) = self.slot(pos);
        let len = mpmc::published_len(slot);
        let out = if len > self.slot_size as u64 {
            Err(Error::codec(format!(
                "queue slot claims {len} bytes, more than the slot size of {} bytes: the queue's \
                 shared memory was corrupted",
                self.slot_size
            )))
        } else {
            let len = len as usize;
            let dst = if len <= INLINE {
                stack.as_mut_ptr()
            } else {
                heap.clear();
                heap.reserve_exact(len);
                heap.as_mut_ptr()
            };
            // SAFETY: we own position `pos` (`claim_take`), so no process writes the slot's bytes
            // until we hand it back; `len <= slot_size` was checked above, and `dst` has room for
            // `len` bytes (the stack buffer holds INLINE, `heap` was reserved).
            unsafe { std::ptr::copy_nonoverlapping(data, dst, len) };
            if len > INLINE {
                // SAFETY: the first `len` bytes were just initialized.
                unsafe { heap.set_len(len) };
            }
            Ok(Some(len))
        };
        mpmc::release(slot, pos, self.capacity);
        out
    }

    /// True unless the slot at the current enqueue position is still occupied (a stale position
    /// answers true: see the module docs).
    pub(super) fn can_put(&self) -> bool {
        mpmc::can_put(&self.header().enqueue_pos, |p| self.slot(p).0)
    }

    /// True if the slot at the current dequeue position is published (or the position is stale).
    pub(super) fn can_get(&self) -> bool {
        mpmc::can_take(&self.header().dequeue_pos, |p| self.slot(p).0)
    }

    /// The position a consumer is stuck at, if a producer claimed it (`enqueue_pos` moved past
    /// it) but its slot is not published: that producer is still copying, or was killed.
    pub(super) fn stuck_get(&self) -> Option<u64> {
        let h = self.header();
        // Relaxed (all three): a diagnosis, not a claim; a stale value only delays it or clears
        // it, and it must hold unchanged for `STALL_LIMIT` before anyone acts on it.
        let deq = h.dequeue_pos.load(Ordering::Relaxed);
        let enq = h.enqueue_pos.load(Ordering::Relaxed);
        let seq = self.slot(deq).0.seq.load(Ordering::Relaxed);
        (enq > deq && seq == mpmc::free_seq(deq)).then_some(deq)
    }

    /// The position a producer is stuck at, if the previous lap's item in its slot was claimed
    /// by a consumer (`dequeue_pos` moved past it) but never handed back.
    pub(super) fn stuck_put(&self) -> Option<u64> {
        let h = self.header();
        // Relaxed (all three): as in `stuck_get`.
        let enq = h.enqueue_pos.load(Ordering::Relaxed);
        let deq = h.dequeue_pos.load(Ordering::Relaxed);
        let prev = enq.checked_sub(self.capacity)?;
        let seq = self.slot(enq).0.seq.load(Ordering::Relaxed);
        (deq > prev && seq == mpmc::full_seq(prev)).then_some(prev)
    }

    pub(super) fn len(&self) -> usize {
        let h = self.header();
        // Relaxed (both): a snapshot that guards no data. `dequeue_pos` first: it never passes
        // `enqueue_pos`, so reading it first keeps the difference from going negative in
        // practice; it is clamped anyway.
        let deq = h.dequeue_pos.load(Ordering::Relaxed);
        let enq = h.enqueue_pos.load(Ordering::Relaxed);
        enq.saturating_sub(deq).min(self.capacity) as usize
    }
}
