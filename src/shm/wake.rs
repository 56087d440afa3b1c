//! Sleeping and waking across processes: a futex on a word in shared memory.
//!
//! # Protocol
//!
//! A [`WakeWord`] has two shared words: `epoch`, bumped by every notification, and `sleepers`, the
//! number of waiters that may be inside (or about to enter) `futex_wait`.
//!
//! Waiter (`wait_until`):
//! 1. spin for a short, bounded time re-checking the condition (a round trip through spinning
//!    costs about a hundredth of one through the futex: BENCHMARKS.md, "Figures from the code
//!    comments");
//! 2. `sleepers += 1` (SeqCst), `s = epoch` (SeqCst), re-check the condition;
//! 3. `futex_wait(epoch, s, timeout)`; the kernel returns at once if `epoch != s`;
//! 4. `sleepers -= 1`, loop.
//!
//! Notifier (`notify`), after publishing its data with a Release store:
//! 1. `epoch += 1` (SeqCst);
//! 2. if `sleepers != 0` (SeqCst), `futex_wake(epoch)`.
//!
//! **Lost wake-up ruled out:** all four `sleepers`/`epoch` accesses are SeqCst, so they have one total
//! order. If the notifier's load of `sleepers` reads 0, it precedes the waiter's increment, so the
//! waiter's load of `epoch` (after its increment) reads the bumped value and synchronizes with it:
//! the waiter's re-check then sees the published data. If the load reads non-zero, the notifier
//! calls `futex_wake`; a waiter that has not entered the kernel yet holds a stale `s` and the
//! kernel's compare fails, so it does not sleep.
//!
//! **Checked by loom** (`tests/loom_wake.rs`, run by `ci/loom.sh`): under `--cfg loom` the futex
//! is replaced by a model of the kernel's (a value compare and an enqueue under one lock, a wake
//! that reaches only waiters already enqueued, no timeouts), so a lost wake-up is a deadlock loom
//! reports; the same file shows it reporting one for a notifier that skips the `epoch` bump.
//!
//! **Dead peers:** every wait has a timeout, so a waiter whose notifier died re-checks the world
//! (parent alive? worker alive?) at least that often. No `FUTEX_PRIVATE_FLAG`: the word is shared
//! between processes.

#![cfg_attr(not(loom), allow(unreachable_pub))]

use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU32, Ordering};

/// A cross-process wake-up word pair; lives in shared memory, `#[repr(C)]`.
#[repr(C)]
#[derive(Debug)]
pub struct WakeWord {
    /// Bumped (wrapping) by every `notify`; waiters sleep on it.
    epoch: CachePadded<AtomicU32>,
    /// Number of waiters that may be asleep; lets `notify` skip the syscall when zero.
    sleepers: CachePadded<AtomicU32>,
}

/// How long a waiter spins before going to sleep.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

impl WakeWord {
    /// A word pair nobody waits on.
    pub fn new() -> Self {
        WakeWord {
            epoch: CachePadded::new(AtomicU32::new(0)),
            sleepers: CachePadded::new(AtomicU32::new(0)),
        }
    }

    /// Wakes every waiter (cheap when nobody sleeps: no syscall).
    pub fn notify(&self) {
        // SeqCst: see "Lost wake-up ruled out" in the module docs.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        loom_sc_fence();
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            futex_wake(&self.epoch);
        }
    }

    /// Waits until `ready()` holds or `timeout` passes; returns the last value of `ready()`.
    ///
    /// Spins for at most `spin`, then sleeps on the futex in slices of at most `slice`, calling
    /// `ready` after every wake-up (spurious or not).
    pub fn wait_until(
        &self,
        spin: Duration,
        timeout: Option<Duration>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        if ready() {
            return true;
        }
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        // Phase 1: bounded spin.
        let backoff = crossbeam_utils::Backoff::new();
        while start.elapsed() < spin {
            if ready() {
                return true;
            }
            if backoff.is_completed() {
                std::thread::yield_now();
            } else {
                backoff.snooze();
            }
        }
        // Phase 2: sleep.
        loop {
            // SeqCst: see "Lost wake-up ruled out".
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            loom_sc_fence();
            let seen = self.epoch.load(Ordering::SeqCst);
            if ready() {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
            let slice = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.sleepers.fetch_sub(1, Ordering::SeqCst);
                        return false;
                    }
                    d - now
                }
                None => Duration::from_secs(3600),
            };
            futex_wait(&self.epoch, seen, slice);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            if ready() {
                return true;
            }
        }
    }
}

/// Nothing, except under loom: a SeqCst fence between each side's SeqCst write and its SeqCst read
/// of the other word. Loom models SeqCst *accesses* as AcqRel (loom's documented limitation,
/// tokio-rs/loom#180), which lets both reads see old values, a store-buffering outcome the
/// language rules out for SeqCst accesses (they have one total order); it models SeqCst *fences*
/// exactly. The fence gives the model the guarantee the real code already has, no more: without
/// it loom reports a lost wake-up that cannot happen.
#[inline(always)]
fn loom_sc_fence() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

impl Default for WakeWord {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(not(loom))]
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, 4-byte aligned atomic (in shared memory or on the heap) for the
    // whole call; FUTEX_WAIT only reads it and compares with `expected`. No FUTEX_PRIVATE_FLAG, so
    // the kernel keys the wait on the physical page, which is what makes it work across processes.
    // The return value (0, EAGAIN, EINTR, ETIMEDOUT) needs no handling: callers re-check.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(not(loom))]
fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE reads no memory, it only wakes waiters keyed on the
    // word's address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// The kernel's futex, as loom sees it: one hash bucket (a lock and a queue) for every word.
#[cfg(loom)]
mod futex_model {
    use loom::sync::{Condvar, Mutex};

    loom::lazy_static! {
        /// Wake-ups so far, and the waiters' queue. One bucket for all words: a wake on one word
        /// also wakes waiters of another, which is a spurious wake-up, and those are allowed.
        static ref BUCKET: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());
    }

    /// FUTEX_WAIT without a timeout: compares the word under the bucket's lock and, if it still
    /// holds `expected`, sleeps until a wake-up that comes *after* that compare. A wake-up
    /// before it is lost, exactly as in the kernel; only the compare can save the waiter.
    pub(super) fn wait(word: &super::AtomicU32, expected: u32) {
        let (lock, queue) = &*BUCKET;
        let mut wakes = lock.lock().unwrap();
        // SeqCst: the kernel's read of the word; the protocol's SC accesses order it.
        if word.load(super::Ordering::SeqCst) != expected {
            return;
        }
        let seen = *wakes;
        while *wakes == seen {
            wakes = queue.wait(wakes).unwrap();
        }
    }

    /// FUTEX_WAKE: wakes every waiter enqueued so far.
    pub(super) fn wake() {
        let (lock, queue) = &*BUCKET;
        *lock.lock().unwrap() += 1;
        queue.notify_all();
    }
}

#[cfg(loom)]
fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Duration) {
    // No timeout in the model: a wait that only a timeout would end is a deadlock loom reports.
    futex_model::wait(word, expected);
}

#[cfg(loom)]
fn futex_wake(_word: &AtomicU32) {
    futex_model::wake();
}

#[cfg(loom)]
impl WakeWord {
    /// A broken `notify` that wakes sleepers without bumping `epoch`, for the loom model that
    /// shows the futex model catches a lost wake-up. Never used outside `tests/loom_wake.rs`.
    #[doc(hidden)]
    pub fn notify_without_bump(&self) {
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            futex_wake(&self.epoch);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn notify_wakes_a_sleeper_across_threads() {
        let w = Arc::new((WakeWord::new(), AtomicU64::new(0)));
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            w2.0.wait_until(Duration::ZERO, Some(Duration::from_secs(30)), || {
                w2.1.load(Ordering::Acquire) == 1
            })
        });
        std::thread::sleep(Duration::from_millis(20));
        w.1.store(1, Ordering::Release);
        w.0.notify();
        assert!(t.join().unwrap());
    }

    #[test]
    fn wait_times_out_when_nothing_happens() {
        let w = WakeWord::new();
        assert!(!w.wait_until(Duration::ZERO, Some(Duration::from_millis(10)), || false));
    }
}
