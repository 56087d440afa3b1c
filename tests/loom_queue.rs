//! Loom models of the MPMC queue's turn protocol (`shmpool::mpmc`, the code `Queue` runs over its
//! shared segment) over heap memory: every item is taken exactly once, with the bytes its
//! producer wrote (the payloads are loom `UnsafeCell`s, so a claim that did not hand a slot over
//! exclusively is a data race loom reports), and full and empty are detected. Run by
//! `ci/loom.sh` (`RUSTFLAGS="--cfg loom"`); empty otherwise.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use shmpool::mpmc::{self, Claim, SlotHead};
use shmpool::sync::AtomicU64;

/// A queue of `CAP` slots of one `u64` each, on the heap.
struct Q {
    enqueue: AtomicU64,
    dequeue: AtomicU64,
    heads: Vec<SlotHead>,
    data: Vec<UnsafeCell<u64>>,
}

impl Q {
    fn new(cap: u64) -> Arc<Q> {
        Arc::new(Q {
            enqueue: AtomicU64::new(0),
            dequeue: AtomicU64::new(0),
            heads: (0..cap).map(SlotHead::new).collect(),
            data: (0..cap).map(|_| UnsafeCell::new(0)).collect(),
        })
    }

    fn cap(&self) -> u64 {
        self.heads.len() as u64
    }

    fn head(&self, pos: u64) -> &SlotHead {
        &self.heads[(pos % self.cap()) as usize]
    }

    fn try_put(&self, v: u64) -> bool {
        match mpmc::claim_put(&self.enqueue, |p| self.head(p)) {
            Claim::Claimed(pos) => {
                self.data[(pos % self.cap()) as usize].with_mut(|p| {
                    // SAFETY: we own `pos` until `publish` (what loom checks).
                    unsafe { *p = v }
                });
                mpmc::publish(self.head(pos), pos, 8);
                true
            }
            Claim::NotNow => false,
            Claim::Corrupted { pos, seq } => panic!("corrupted at {pos}: {seq}"),
        }
    }

    fn try_take(&self) -> Option<u64> {
        match mpmc::claim_take(&self.dequeue, |p| self.head(p)) {
            Claim::Claimed(pos) => {
                assert_eq!(mpmc::published_len(self.head(pos)), 8);
                let v = self.data[(pos % self.cap()) as usize].with(|p| {
                    // SAFETY: we own `pos` until `release` (what loom checks).
                    unsafe { *p }
                });
                mpmc::release(self.head(pos), pos, self.cap());
                Some(v)
            }
            Claim::NotNow => None,
            Claim::Corrupted { pos, seq } => panic!("corrupted at {pos}: {seq}"),
        }
    }

    fn put(&self, v: u64) {
        while !self.try_put(v) {
            thread::yield_now();
        }
    }

    fn take(&self) -> u64 {
        loop {
            if let Some(v) = self.try_take() {
                return v;
            }
            thread::yield_now();
        }
    }
}

/// Two producers race for positions while a consumer takes: each item arrives exactly once.
#[test]
fn two_producers_each_item_taken_exactly_once() {
    loom::model(|| {
        let q = Q::new(2);
        let producers: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|v| {
                let q = Arc::clone(&q);
                thread::spawn(move || assert!(q.try_put(v)))
            })
            .collect();
        let mut got = [q.take(), q.take()];
        for p in producers {
            p.join().unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert_eq!(q.try_take(), None);
    });
}

/// Two consumers race for the published items of a one-slot queue while a producer tries to
/// reuse the slot for the next lap: nothing is taken twice or lost, and the producer writes only
/// once the slot was handed back.
#[test]
fn two_consumers_and_a_producer_on_one_slot() {
    loom::model(|| {
        let q = Q::new(1);
        assert!(q.try_put(1));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = Arc::clone(&q);
                thread::spawn(move || q.try_take())
            })
            .collect();
        let put_second = q.try_put(2);
        let mut got: Vec<u64> = consumers
            .into_iter()
            .filter_map(|c| c.join().unwrap())
            .collect();
        got.extend(q.try_take());
        got.sort_unstable();
        assert_eq!(got, if put_second { vec![1, 2] } else { vec![1] });
        assert_eq!(q.try_take(), None);
    });
}

/// One producer, one consumer, two slots and three items: order is kept, full and empty are
/// reported, and the wrap to the second lap hands the slot back correctly.
#[test]
fn fifo_across_laps_with_full_and_empty() {
    loom::model(|| {
        let q = Q::new(2);
        let producer = {
            let q = Arc::clone(&q);
            thread::spawn(move || {
                for v in 1..=3 {
                    q.put(v);
                }
            })
        };
        let got: Vec<u64> = (0..3).map(|_| q.take()).collect();
        producer.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(q.try_take(), None);
        assert!(q.try_put(4) && q.try_put(5) && !q.try_put(6));
    });
}
