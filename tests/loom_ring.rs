//! Loom models of the SPSC ring (`shmpool::ring`) over heap memory: push/pop order, wrap-around
//! of the slot index, full and empty detection, and a consumer re-attaching mid-stream (a
//! replacement worker). Run by `ci/loom.sh` (`RUSTFLAGS="--cfg loom"`); empty otherwise.
#![cfg(loom)]

mod common;

use loom::sync::Arc;
use loom::thread;

use shmpool::ring::{Consumer, Descriptor, Producer, RING_CAPACITY, RingMem};

/// A descriptor whose every field is derived from `i`, so a torn or stale slot is detected.
fn desc(i: u64) -> Descriptor {
    Descriptor {
        task_id: i,
        call: !i,
        offset: i * 3,
        len: i ^ 0x5A,
        arena_end: i + 1,
        elapsed_ns: i << 7,
        status: i as u32,
        flags: 0,
        reserved: 0,
    }
}

/// A fresh ring (must be made inside `loom::model`: it holds loom atomics) and its two halves.
fn ring() -> (Arc<RingMem>, Producer, Consumer) {
    let mem = Arc::new(RingMem::new());
    // SAFETY: `mem` is kept alive by the returned `Arc` (and the clones the models move into
    // their threads) for as long as either half is used; one producer and one consumer.
    let halves = unsafe { (Producer::attach(&*mem), Consumer::attach(&*mem)) };
    (mem, halves.0, halves.1)
}

fn push_spin(p: &mut Producer, d: Descriptor) {
    let mut d = d;
    loop {
        match p.push(d).expect("ring invariant broken") {
            Ok(()) => return,
            Err(back) => {
                d = back;
                thread::yield_now();
            }
        }
    }
}

fn pop_spin(c: &mut Consumer) -> Descriptor {
    loop {
        if let Some(d) = c.pop().expect("ring invariant broken") {
            return d;
        }
        thread::yield_now();
    }
}

/// Moves both positions to `start` in one thread (no concurrency yet), consuming as it goes.
fn advance(p: &mut Producer, c: &mut Consumer, start: u64) {
    for i in 0..start {
        p.push(desc(i)).unwrap().unwrap();
        assert_eq!(c.pop().unwrap(), Some(desc(i)));
    }
}

#[test]
fn concurrent_push_and_pop_deliver_every_item_once_in_order() {
    loom::model(|| {
        let (mem, mut p, mut c) = ring();
        let keep = Arc::clone(&mem);
        let producer = thread::spawn(move || {
            let _keep = keep;
            for i in 0..3 {
                push_spin(&mut p, desc(i));
            }
        });
        for i in 0..3 {
            assert_eq!(pop_spin(&mut c), desc(i));
        }
        producer.join().unwrap();
        assert_eq!(c.pop().unwrap(), None);
        assert_eq!((mem.produced(), mem.consumed()), (3, 3));
    });
}

#[test]
fn slot_index_wraps_around_capacity() {
    loom::model(|| {
        let (mem, mut p, mut c) = ring();
        // Positions 62 and 63 are the last slots; 64 and 65 reuse slots 0 and 1.
        let start = RING_CAPACITY - 2;
        advance(&mut p, &mut c, start);
        let keep = Arc::clone(&mem);
        let producer = thread::spawn(move || {
            let _keep = keep;
            for i in start..start + 4 {
                push_spin(&mut p, desc(i));
            }
        });
        for i in start..start + 4 {
            assert_eq!(pop_spin(&mut c), desc(i));
        }
        producer.join().unwrap();
        assert_eq!(c.pop().unwrap(), None);
        assert_eq!(mem.consumed(), start + 4);
    });
}

#[test]
fn a_full_ring_refuses_until_the_consumer_frees_a_slot() {
    loom::model(|| {
        let (mem, mut p, mut c) = ring();
        for i in 0..RING_CAPACITY {
            p.push(desc(i)).unwrap().unwrap();
        }
        // Full, and the refused descriptor comes back untouched.
        assert_eq!(p.push(desc(999)).unwrap(), Err(desc(999)));
        assert_eq!(p.free().unwrap(), 0);
        let keep = Arc::clone(&mem);
        let consumer = thread::spawn(move || {
            let _keep = keep;
            let first = pop_spin(&mut c);
            (first, c)
        });
        // Races the consumer's pop of slot 0; loom's cell tracking catches an overwrite of a
        // slot still being read.
        push_spin(&mut p, desc(RING_CAPACITY));
        let (first, mut c) = consumer.join().unwrap();
        assert_eq!(first, desc(0));
        for i in 1..=RING_CAPACITY {
            assert_eq!(c.pop().unwrap(), Some(desc(i)));
        }
        assert_eq!(c.pop().unwrap(), None);
        assert_eq!(p.free().unwrap(), RING_CAPACITY);
    });
}

#[test]
fn full_detection_holds_across_the_wrap() {
    loom::model(|| {
        let (mem, mut p, mut c) = ring();
        // Head at 60, then nearly fill: 62 queued items span slots 60..63 and 0..57.
        let start = RING_CAPACITY - 4;
        advance(&mut p, &mut c, start);
        let queued = RING_CAPACITY - 2;
        for i in start..start + queued {
            p.push(desc(i)).unwrap().unwrap();
        }
        let keep = Arc::clone(&mem);
        let end = start + queued + 3;
        let producer = thread::spawn(move || {
            let _keep = keep;
            // The third push finds the ring full until the consumer frees a slot.
            for i in start + queued..end {
                push_spin(&mut p, desc(i));
            }
        });
        for i in start..start + 3 {
            assert_eq!(pop_spin(&mut c), desc(i));
        }
        producer.join().unwrap();
        for i in start + 3..end {
            assert_eq!(c.pop().unwrap(), Some(desc(i)));
        }
        assert_eq!(c.pop().unwrap(), None);
    });
}

#[test]
fn an_empty_ring_pops_nothing_and_has_data_never_lies() {
    loom::model(|| {
        let (mem, mut p, mut c) = ring();
        assert_eq!(c.pop().unwrap(), None);
        assert!(!c.has_data());
        let keep = Arc::clone(&mem);
        let producer = thread::spawn(move || {
            let _keep = keep;
            p.push(desc(0)).unwrap().unwrap();
            p.push(desc(1)).unwrap().unwrap();
        });
        let mut next = 0;
        while next < 2 {
            // Only the producer adds, so data seen by `has_data` must still be there to pop.
            let seen = c.has_data();
            match c.pop().unwrap() {
                Some(d) => {
                    assert_eq!(d, desc(next));
                    next += 1;
                }
                None => {
                    assert!(!seen, "has_data said yes, pop found nothing");
                    thread::yield_now();
                }
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pop().unwrap(), None);
        assert!(!c.has_data());
    });
}

#[test]
fn a_reattached_consumer_resumes_where_the_last_one_stopped() {
    loom::model(|| {
        let (mem, mut p, mut c) = ring();
        let keep = Arc::clone(&mem);
        let producer = thread::spawn(move || {
            let _keep = keep;
            for i in 0..3 {
                push_spin(&mut p, desc(i));
            }
        });
        assert_eq!(pop_spin(&mut c), desc(0));
        // The consumer "dies" (is never used again); a replacement attaches from the shared
        // positions.
        // SAFETY: the previous consumer is no longer used; `mem` outlives the new one.
        let mut c = unsafe { Consumer::attach(&*mem) };
        assert_eq!(c.position(), 1);
        assert_eq!(pop_spin(&mut c), desc(1));
        assert_eq!(pop_spin(&mut c), desc(2));
        producer.join().unwrap();
        assert_eq!(c.pop().unwrap(), None);
    });
}
