//! Property tests: every decoder of shared state, fed arbitrary bytes and positions, answers
//! (a value or an error) and never panics, reads out of bounds or loops.
//!
//! Shared memory is input from another process (`ring`'s docs, "Never trust the other
//! process"): the tests in `tests/soundness.rs` drive a real worker to scribble, these cover the
//! decoders' whole input space. The worker side's own checks (a task descriptor's `call`, offset and
//! length) are covered through the ring and place checks they use.

use proptest::prelude::*;

use crate::pool::dispatch::collector::check_result_place;
use crate::shm::ring::{Consumer, Descriptor, Producer, RING_CAPACITY, RingMem};

fn descriptor(words: [u64; 6], status: u32) -> Descriptor {
    Descriptor {
        task_id: words[0],
        call: words[1],
        offset: words[2],
        len: words[3],
        arena_end: words[4],
        elapsed_ns: words[5],
        status,
        ..Descriptor::default()
    }
}

/// Positions near the interesting edges (0, capacity, `u64::MAX`) as well as anywhere.
fn position() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..3 * RING_CAPACITY,
        (u64::MAX - 3 * RING_CAPACITY)..=u64::MAX,
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A consumer attached to a ring whose positions and slots a peer wrote arbitrarily pops
    /// only positions inside `head..=head + CAPACITY` and otherwise reports a `RingError`.
    #[test]
    fn a_consumer_survives_any_ring(
        head in position(),
        tail in position(),
        later_tail in position(),
        slots in proptest::collection::vec((any::<[u64; 6]>(), any::<u32>()), 0..8),
    ) {
        let ring = Box::new(RingMem::new());
        for (i, (w, st)) in slots.iter().enumerate() {
            // SAFETY: a heap ring no one else uses; slot pointers are in bounds.
            unsafe { ring.slot_ptr(head.wrapping_add(i as u64)).write(descriptor(*w, *st)) };
        }
        ring.force_consumed(head);
        ring.force_produced(tail);
        // SAFETY: the ring outlives the consumer; one consumer.
        let mut c = unsafe { Consumer::attach(&*ring) };
        let mut popped = 0u64;
        for round in 0..(RING_CAPACITY + 2) {
            if round == 3 {
                ring.force_produced(later_tail);
            }
            match c.pop() {
                Ok(Some(_)) => popped += 1,
                Ok(None) | Err(_) => break,
            }
        }
        prop_assert_eq!(c.position(), head.wrapping_add(popped));
    }

    /// A producer whose consumer's `head` was written arbitrarily never claims more than
    /// `CAPACITY` slots beyond it.
    #[test]
    fn a_producer_survives_any_consumer_position(
        // Our own position never nears `u64::MAX` (no wrap in 584 years; see `ring`); the
        // peer's can be anything.
        tail in 0..(u64::MAX / 2),
        head in position(),
    ) {
        let ring = Box::new(RingMem::new());
        ring.force_produced(tail);
        // SAFETY: the ring outlives the producer; one producer.
        let mut p = unsafe { Producer::attach(&*ring) };
        ring.force_consumed(head);
        for _ in 0..(RING_CAPACITY + 2) {
            match p.push(Descriptor::default()) {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        prop_assert!(p.position().wrapping_sub(tail) <= RING_CAPACITY);
    }

    /// A result's place is accepted only inside the arena, with an `arena_end` between what
    /// was freed and two laps beyond it.
    #[test]
    fn a_result_place_is_accepted_only_in_bounds(
        offset in any::<usize>(),
        len in any::<usize>(),
        end in any::<u64>(),
        freed in any::<u64>(),
        cap in 1usize..(1 << 40),
    ) {
        if check_result_place(offset, len, end, freed, cap).is_none() {
            prop_assert!(offset.checked_add(len).is_some_and(|e| e <= cap));
            prop_assert!(end >= freed);
            prop_assert!(end - freed <= 2 * cap as u64);
        }
    }

    /// Chunk results (the wire format a worker writes into the result arena) decode or fail.
    #[test]
    fn chunk_results_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = crate::encoding::payload::decode_chunk_out::<u64>(&bytes);
        let _ = crate::encoding::payload::decode_chunk_out::<String>(&bytes);
        let _ = crate::encoding::payload::decode_chunk_out::<(u8, Vec<u16>)>(&bytes);
        let _ = crate::encoding::payload::decode_list::<u32>(&bytes);
        let _ = crate::encoding::payload::decode_list::<Option<String>>(&bytes);
    }

    /// A message on the segment channel of any length and content is a message or an error.
    #[test]
    fn channel_messages_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
        use std::os::fd::AsRawFd;
        let (parent, worker) = crate::shm::channel::pair().unwrap();
        nix::sys::socket::send(parent.as_raw_fd(), &bytes, nix::sys::socket::MsgFlags::empty())
            .unwrap();
        match crate::shm::channel::receive(worker.as_raw_fd(), false) {
            Ok(Some((_, _, fd))) => {
                prop_assert_eq!(bytes.len(), 16);
                prop_assert!(fd.is_none());
            }
            Ok(None) => prop_assert!(false, "a message was waiting"),
            Err(_) => prop_assert_ne!(bytes.len(), 16),
        }
    }

    /// Any wait status the server reports decodes to at most a signal or an exit code.
    #[test]
    fn wait_statuses_decode(status in any::<i32>()) {
        let (signal, code) = crate::process::exit::decode_status(status);
        prop_assert!(signal.is_none() || code.is_none());
    }
}
