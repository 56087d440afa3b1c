//! The turn protocol of the MPMC [`Queue`](crate::Queue): Vyukov's bounded queue with doubled
//! turn counters (see "Protocol" in the `queue` module docs), over positions and slot heads only.
//!
//! `queue` runs it over a shared segment; `tests/loom_queue.rs` runs the very same functions over
//! heap memory under loom (which cannot follow a `fork`). A producer `claim_put`s a position,
//! writes the slot's bytes, and `publish`es; a consumer `claim_take`s, reads, and `release`s.
//! Between claim and publish/release the claimer owns the slot's bytes exclusively.

#![cfg_attr(not(loom), allow(unreachable_pub))]

use crate::sync::{AtomicU64, Ordering};

/// The head of each slot; the payload bytes follow it in the queue's segment.
#[repr(C)]
#[derive(Debug)]
pub struct SlotHead {
    /// Turn counter. Slot `i` starts at `2 i` ([`free_seq`]`(i)`).
    pub seq: AtomicU64,
    /// Encoded length of the item; written by the producer that owns the slot before its
    /// slot-publish Release, read by the consumer after the matching Acquire. Untrusted: the
    /// reader checks it against the slot size before use.
    pub len: AtomicU64,
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<SlotHead>() == 16);

impl SlotHead {
    /// The head of slot `i` of a fresh queue: free for the producer of position `i`.
    pub fn new(i: u64) -> SlotHead {
        SlotHead {
            seq: AtomicU64::new(free_seq(i)),
            len: AtomicU64::new(0),
        }
    }
}

/// `SlotHead::seq` of a slot that is free for the producer of position `pos`.
pub const fn free_seq(pos: u64) -> u64 {
    pos.wrapping_mul(2)
}

/// `SlotHead::seq` of a slot holding the published item of position `pos`.
pub const fn full_seq(pos: u64) -> u64 {
    pos.wrapping_mul(2).wrapping_add(1)
}

/// The outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns position `pos` (its slot's bytes) until it publishes or releases it.
    Claimed(u64),
    /// Full (for a producer) or empty (for a consumer) right now.
    NotNow,
    /// The slot of `pos` holds a turn counter `seq` that no position a claimer has moved past can
    /// explain: only a process writing over the queue's memory causes that.
    Corrupted {
        /// The position.
        pos: u64,
        /// The counter found.
        seq: u64,
    },
}

/// Claims a position whose slot holds `want(pos)`; shared by both sides.
fn claim<'a>(next: &AtomicU64, slot: impl Fn(u64) -> &'a SlotHead, want: fn(u64) -> u64) -> Claim {
    // Relaxed: only a guess of where to claim; the seq Acquire and the CAS below decide.
    let mut pos = next.load(Ordering::Relaxed);
    loop {
        // Acquire, SYNC: slot-free (producers: pairs with the consumer's Release in `release`,
        // so its copy of the previous lap's bytes happens before we overwrite them) and
        // SYNC: slot-publish (consumers: pairs with the producer's Release in `publish`, so its
        // bytes and `len` are visible once we see `2 pos + 1`).
        let seq = slot(pos).seq.load(Ordering::Acquire);
        let diff = seq.wrapping_sub(want(pos)) as i64;
        if diff == 0 {
            // Relaxed (both): the CAS only arbitrates between claimers of one side; the slot's
            // bytes are handed over by `seq` (the Acquire above, the Releases below).
            match next.compare_exchange_weak(
                pos,
                pos.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Claim::Claimed(pos),
                Err(now) => pos = now,
            }
        } else if diff < 0 {
            // A producer: the slot still holds the previous lap's item. A consumer: nothing
            // published at `pos` yet.
            return Claim::NotNow;
        } else {
            // Another claimer took `pos`. Relaxed: a new guess, as above.
            let now = next.load(Ordering::Relaxed);
            if now == pos {
                return Claim::Corrupted { pos, seq };
            }
            pos = now;
        }
    }
}

/// A producer claims the next position (`enqueue_pos`), or finds the queue full.
pub fn claim_put<'a>(enqueue_pos: &AtomicU64, slot: impl Fn(u64) -> &'a SlotHead) -> Claim {
    claim(enqueue_pos, slot, free_seq)
}

/// A producer publishes the item it wrote into the slot of its claimed `pos`.
pub fn publish(slot: &SlotHead, pos: u64, len: u64) {
    // Relaxed: published by the seq Release right after.
    slot.len.store(len, Ordering::Relaxed);
    // Release, SYNC: slot-publish — pairs with the consumer's Acquire in `claim_take`: our
    // bytes and `len` are visible to whoever claims `pos`.
    slot.seq.store(full_seq(pos), Ordering::Release);
}

/// A consumer claims the oldest published position (`dequeue_pos`), or finds the queue empty.
pub fn claim_take<'a>(dequeue_pos: &AtomicU64, slot: impl Fn(u64) -> &'a SlotHead) -> Claim {
    claim(dequeue_pos, slot, full_seq)
}

/// The encoded length a producer published at the consumer's claimed position (untrusted).
pub fn published_len(slot: &SlotHead) -> u64 {
    // Relaxed: made visible by the slot-publish Acquire in `claim_take`.
    slot.len.load(Ordering::Relaxed)
}

/// A consumer hands the slot of its claimed `pos` back, free for the producer one lap later.
pub fn release(slot: &SlotHead, pos: u64, capacity: u64) {
    // Release, SYNC: slot-free — pairs with the producer's Acquire in `claim_put` one lap later:
    // our copy happens before it overwrites.
    slot.seq
        .store(free_seq(pos.wrapping_add(capacity)), Ordering::Release);
}

/// Whether a producer could claim now (a check only: `claim_put` re-reads before claiming).
pub fn can_put<'a>(enqueue_pos: &AtomicU64, slot: impl Fn(u64) -> &'a SlotHead) -> bool {
    // Relaxed: a guess; the Acquire on seq below is what waiters rely on.
    let pos = enqueue_pos.load(Ordering::Relaxed);
    // Acquire, SYNC: slot-free.
    let seq = slot(pos).seq.load(Ordering::Acquire);
    seq.wrapping_sub(free_seq(pos)) as i64 >= 0
}

/// Whether a consumer could claim now (a check only: `claim_take` re-reads before claiming).
pub fn can_take<'a>(dequeue_pos: &AtomicU64, slot: impl Fn(u64) -> &'a SlotHead) -> bool {
    // Relaxed: a guess, as in `can_put`.
    let pos = dequeue_pos.load(Ordering::Relaxed);
    // Acquire, SYNC: slot-publish.
    let seq = slot(pos).seq.load(Ordering::Acquire);
    seq.wrapping_sub(full_seq(pos)) as i64 >= 0
}
