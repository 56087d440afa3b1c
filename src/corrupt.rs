//! Test hooks: a task corrupts its own worker's shared state, as a buggy or hostile worker would.
//!
//! Not part of the API (hidden, `unsafe`): the tests use it to show that the parent treats
//! everything a worker writes as untrusted input (see `pool::dispatch`): a corrupted worker's
//! tasks fail with [`Error::WorkerCorrupted`](crate::Error::WorkerCorrupted), it is replaced,
//! and the pool serves on.

#![allow(clippy::disallowed_types)] // a process-local pointer to the control segment

use std::sync::atomic::{AtomicPtr, Ordering as StdOrdering};

use crate::control::Control;
use crate::ring::{Descriptor, RingMem};

/// The control segment, in a worker (null elsewhere).
static CONTROL: AtomicPtr<Control> = AtomicPtr::new(std::ptr::null_mut());

/// Records the control segment (called in `worker_main`, once, before any task runs).
pub(crate) fn attach(ctl: &Control) {
    // Relaxed: written once before any task of this single-threaded process reads it.
    CONTROL.store(std::ptr::from_ref(ctl).cast_mut(), StdOrdering::Relaxed);
}

/// What to overwrite in the calling worker's slot.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Scribble {
    /// The task ring's consumer position (`head`), which tells the parent what a dead worker took.
    TaskHead(u64),
    /// The result ring's producer position (`tail`).
    ResultTail(u64),
    /// `result_freed` (the parent's word; a replacement adopts it as its arena head).
    ResultFreed(u64),
    /// Publishes a result for the running task with this place and status.
    ForgedResult {
        /// Offset in the result arena.
        offset: u64,
        /// Length.
        len: u64,
        /// The arena position the parent should free up to, as an offset (wrapping) from
        /// the current `result_freed`.
        arena_end: u64,
        /// `STATUS_*`.
        status: u32,
    },
    /// Writes `count` pseudo-random 8-byte values (from `seed`) at pseudo-random places of the
    /// slot's two rings and its result arena.
    Random {
        /// Seed of the generator (splitmix64).
        seed: u64,
        /// How many words to write.
        count: usize,
    },
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `what` into the calling worker's slot; `false` outside a pool worker.
///
/// # Safety
///
/// Only for tests: it breaks the pool's protocol on purpose. Call it only from a task, and expect
/// its worker to be killed.
pub unsafe fn scribble(what: Scribble) -> bool {
    let Some(me) = crate::current_worker() else {
        return false;
    };
    // Relaxed: set before any task ran in this process.
    let ctl = CONTROL.load(StdOrdering::Relaxed);
    if ctl.is_null() {
        return false;
    }
    // SAFETY: set from the live control segment in `worker_main`; it stays mapped for the
    // worker's life.
    let ctl = unsafe { &*ctl };
    let slot = ctl.slot(me.index());
    match what {
        Scribble::TaskHead(v) => slot.tasks.force_consumed(v),
        Scribble::ResultTail(v) => slot.results.force_produced(v),
        Scribble::ResultFreed(v) => slot.result_freed.store(v, crate::sync::Ordering::Release),
        Scribble::ForgedResult {
            offset,
            len,
            arena_end,
            status,
        } => {
            // The running task is the last one this worker popped.
            let running = slot.tasks.consumed().wrapping_sub(1);
            // SAFETY: a slot of our own task ring, which we (its consumer) read after the
            // parent published it.
            let task_id = unsafe { slot.tasks.slot_ptr(running).read() }.task_id;
            let tail = slot.results.produced();
            let arena_end = slot
                .result_freed
                .load(crate::sync::Ordering::Acquire)
                .wrapping_add(arena_end);
            let d = Descriptor {
                task_id,
                offset,
                len,
                arena_end,
                status,
                ..Descriptor::default()
            };
            // SAFETY: slot `tail` of our own result ring is the next one we would publish.
            unsafe { slot.results.slot_ptr(tail).write(d) };
            slot.results.force_produced(tail + 1);
            ctl.header().collector.notify();
        }
        Scribble::Random { seed, count } => {
            let mut state = seed;
            let rings = [
                std::ptr::from_ref(&slot.tasks),
                std::ptr::from_ref(&slot.results),
            ];
            let ring_words = size_of::<RingMem>() / 8;
            let arena_words = ctl.arena_cap() / 8;
            for _ in 0..count {
                let value = match splitmix(&mut state) % 4 {
                    // Small and edge values hit the checks more often than uniform ones.
                    0 => splitmix(&mut state) % 256,
                    1 => u64::MAX - splitmix(&mut state) % 256,
                    _ => splitmix(&mut state),
                };
                let pick = splitmix(&mut state);
                let target: *mut u64 = match pick % 3 {
                    0 | 1 => {
                        let ring = rings[(pick % 2) as usize].cast::<u64>().cast_mut();
                        // SAFETY: a word inside the ring (`ring_words` whole words of it).
                        unsafe { ring.add((splitmix(&mut state) as usize) % ring_words) }
                    }
                    _ => {
                        let base = ctl.result_arena(me.index()).cast::<u64>();
                        // SAFETY: a word inside our result arena (`arena_cap` is page aligned).
                        unsafe { base.add((splitmix(&mut state) as usize) % arena_words) }
                    }
                };
                // SAFETY: `target` is an aligned word of our own slot's shared memory; writing
                // garbage there is the point (the parent must survive it).
                unsafe { target.write_volatile(value) };
            }
            ctl.header().collector.notify();
        }
    }
    true
}
