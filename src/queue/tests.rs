use std::time::{Duration, Instant};

use crate::error::Error;
use crate::shm::mpmc;
use crate::sync::Ordering;

use super::handle::{Queue, STALL_LIMIT};
use super::protocol::{INLINE, Key};
use super::registry::{lookup, this_pid};

/// What a process killed right after claiming leaves: a claimed position, never finished.
fn claim_and_die(q: &Queue<u64>, put: bool) -> u64 {
    let sh = &*q.shared;
    let claim = if put {
        mpmc::claim_put(&sh.header().enqueue_pos, |p| sh.slot(p).0)
    } else {
        mpmc::claim_take(&sh.header().dequeue_pos, |p| sh.slot(p).0)
    };
    match claim {
        mpmc::Claim::Claimed(pos) => pos,
        other => panic!("no claim: {other:?}"),
    }
}

#[test]
fn a_producer_killed_mid_put_makes_get_fail_with_queue_stalled_not_hang() {
    let q = Queue::<u64>::new(4).unwrap();
    q.put(1).unwrap();
    let torn = claim_and_die(&q, true);
    q.put(3).unwrap(); // behind the torn slot: unreachable
    assert_eq!(q.get().unwrap(), 1);
    let t = Instant::now();
    match q.get() {
        Err(e @ Error::QueueStalled { position, waited }) => {
            assert_eq!(position, torn);
            assert!(waited >= STALL_LIMIT, "{waited:?}");
            assert_eq!(
                e.to_string(),
                format!(
                    "the queue is stuck at position {torn}: a process claimed that slot and \
                     did not finish within {waited:?} (killed in the middle of a put or get?)"
                )
            );
        }
        other => panic!("expected QueueStalled, got {other:?}"),
    }
    assert!(t.elapsed() >= STALL_LIMIT);
    // A `get_timeout` shorter than the limit still times out as before.
    assert!(matches!(
        q.get_timeout(Duration::from_millis(10)),
        Err(Error::Timeout)
    ));
}

#[test]
fn a_consumer_killed_mid_get_makes_put_fail_with_queue_stalled_not_hang() {
    let q = Queue::<u64>::new(2).unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    let torn = claim_and_die(&q, false);
    assert_eq!(q.get().unwrap(), 2);
    // Position 2 reuses the torn slot (position 1's slot was handed back, but producers go
    // in order).
    match q.put(5) {
        Err(Error::QueueStalled { position, .. }) => assert_eq!(position, torn),
        other => panic!("expected QueueStalled, got {other:?}"),
    }
}

#[test]
fn a_slow_producer_is_not_a_stall() {
    let q = Queue::<u64>::new(2).unwrap();
    let pos = claim_and_die(&q, true);
    let q2 = q.clone();
    let publisher = std::thread::spawn(move || {
        std::thread::sleep(STALL_LIMIT / 3);
        let sh = &*q2.shared;
        let bytes = postcard::to_allocvec(&9u64).unwrap();
        let (slot, data) = sh.slot(pos);
        // SAFETY: this test claimed `pos` above and nobody else touches the slot until it
        // is published; the payload fits the slot.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
        mpmc::publish(slot, pos, bytes.len() as u64);
        sh.header().not_empty.notify();
    });
    assert_eq!(q.get().unwrap(), 9);
    publisher.join().unwrap();
}

#[test]
fn an_item_of_exactly_the_slot_size_fits_and_one_byte_more_does_not() {
    // A `Vec<u8>` of n < 128 bytes encodes as 1 length byte + n.
    let q = Queue::<Vec<u8>>::with_slot_size(2, 10).unwrap();
    q.put(vec![7; 9]).unwrap();
    match q.put(vec![7; 10]) {
        Err(Error::PayloadTooLarge { size, capacity }) => {
            assert_eq!((size, capacity), (11, 10))
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(q.len(), 1, "a rejected item takes no slot");
    assert_eq!(q.get().unwrap(), vec![7; 9]);
}

#[test]
fn items_around_the_inline_buffer_size_round_trip() {
    let q = Queue::<Vec<u8>>::with_slot_size(8, 4096).unwrap();
    // 1-byte length prefix up to 127, 2 bytes from 128: straddle INLINE on both sides.
    for n in [
        0,
        1,
        127,
        128,
        INLINE - 3,
        INLINE - 2,
        INLINE - 1,
        INLINE,
        1000,
        4093,
    ] {
        let v: Vec<u8> = (0..n).map(|i| i as u8).collect();
        q.put(v.clone()).unwrap();
        assert_eq!(q.get().unwrap(), v, "length {n}");
    }
    assert!(matches!(
        q.put(vec![0; 4095]),
        Err(Error::PayloadTooLarge {
            size: 4097,
            capacity: 4096
        })
    ));
}

#[test]
fn zero_sized_items_take_slots() {
    let q = Queue::<()>::with_slot_size(2, 1).unwrap();
    q.put(()).unwrap();
    q.put(()).unwrap();
    assert_eq!(q.try_put(()).unwrap(), Err(()));
    q.get().unwrap();
    assert_eq!(q.len(), 1);
}

#[test]
fn positions_wrap_around_many_laps_in_order() {
    for cap in [1, 2, 3, 7] {
        let q = Queue::<u64>::new(cap).unwrap();
        let mut next_out = 0;
        for i in 0..1000u64 {
            if q.try_put(i).unwrap().is_err() {
                while let Some(v) = q.try_get().unwrap() {
                    assert_eq!(v, next_out);
                    next_out += 1;
                }
                q.try_put(i).unwrap().unwrap();
            }
            assert!(q.len() <= cap);
        }
        while let Some(v) = q.try_get().unwrap() {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, 1000);
    }
}

#[test]
fn a_corrupted_length_is_an_error_and_the_slot_is_released() {
    let q = Queue::<u32>::with_slot_size(2, 8).unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    // Another process scribbles a length larger than the slot over item 1.
    q.shared.slot(0).0.len.store(1 << 40, Ordering::Relaxed);
    match q.get() {
        Err(Error::Codec { detail }) => assert!(detail.contains("corrupted"), "{detail}"),
        other => panic!("expected a codec error, got {other:?}"),
    }
    // The bad slot was consumed and handed back: the queue goes on.
    assert_eq!(q.get().unwrap(), 2);
    q.put(3).unwrap();
    q.put(4).unwrap();
    assert_eq!((q.get().unwrap(), q.get().unwrap()), (3, 4));
}

#[test]
fn a_sequence_number_nobody_wrote_is_an_error_not_an_endless_retry() {
    let q = Queue::<u32>::new(2).unwrap();
    // Another process scribbles a far-future sequence over slot 0.
    q.shared.slot(0).0.seq.store(1000, Ordering::Relaxed);
    for r in [q.try_put(1).map(|_| ()), q.try_get().map(|_| ())] {
        match r {
            Err(Error::Codec { detail }) => assert!(detail.contains("corrupted"), "{detail}"),
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }
}

#[test]
fn undecodable_bytes_are_a_codec_error_and_consume_the_item() {
    let q = Queue::<bool>::new(2).unwrap();
    // A process that disagrees on the type put a byte that is no postcard `bool`.
    assert!(q.shared.try_put_bytes(&[2]).unwrap());
    assert!(matches!(q.get(), Err(Error::Codec { .. })));
    assert!(q.is_empty());
    q.put(true).unwrap();
    assert!(q.get().unwrap());
}

#[test]
fn lookup_explains_what_is_wrong() {
    let q = Queue::<u16>::new(1).unwrap();
    let key = q.shared.key;
    assert!(lookup::<u16>(key).is_ok());
    assert_eq!(
        lookup::<String>(key).unwrap_err(),
        format!(
            "queue {} holds `u16`, not `alloc::string::String`",
            key.serial
        )
    );
    let foreign = Key {
        pid: this_pid().wrapping_add(1),
        serial: u64::MAX,
    };
    assert_eq!(
        lookup::<u16>(foreign).unwrap_err(),
        format!(
            "queue {} was created after the pool was built; create queues before the pool",
            u64::MAX
        )
    );
    drop(q);
    assert_eq!(
        lookup::<u16>(key).unwrap_err(),
        format!("queue {} was already dropped", key.serial)
    );
}

#[test]
fn a_queue_round_trips_through_postcard_in_one_process() {
    let q = Queue::<u8>::new(2).unwrap();
    let bytes = postcard::to_allocvec(&q).unwrap();
    let q2: Queue<u8> = postcard::from_bytes(&bytes).unwrap();
    q2.put(9).unwrap();
    assert_eq!(q.get().unwrap(), 9);
}

#[test]
fn bad_sizes_are_invalid_arguments() {
    assert!(matches!(
        Queue::<u8>::new(0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Queue::<u8>::with_slot_size(1, 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Queue::<u8>::with_slot_size(usize::MAX / 2, 1024),
        Err(Error::InvalidArgument { .. })
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever another process wrote over the queue's positions, sequence numbers, lengths
    /// and bytes, every call answers (an item, "empty/full", or an error) without panicking.
    #[test]
    fn any_scribbled_queue_answers(
        enqueue in proptest::prelude::any::<u64>(),
        dequeue in proptest::prelude::any::<u64>(),
        heads in proptest::collection::vec(
            (proptest::prelude::any::<u64>(), 0u64..64),
            4,
        ),
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 32),
    ) {
        let q = Queue::<String>::with_slot_size(4, 8).unwrap();
        let h = q.shared.header();
        h.enqueue_pos.store(enqueue, Ordering::Relaxed);
        h.dequeue_pos.store(dequeue, Ordering::Relaxed);
        for (i, (seq, len)) in heads.iter().enumerate() {
            let (slot, data) = q.shared.slot(i as u64);
            slot.seq.store(*seq, Ordering::Relaxed);
            slot.len.store(*len, Ordering::Relaxed);
            // SAFETY: the slot's 8 payload bytes; no other thread uses this queue.
            unsafe { std::ptr::copy_nonoverlapping(bytes[i * 8..].as_ptr(), data, 8) };
        }
        for _ in 0..6 {
            let _ = q.try_get();
            let _ = q.try_put("ab".to_string());
        }
        let _ = q.len();
    }
}
