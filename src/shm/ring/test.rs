use super::*;
use std::sync::Arc;

fn desc(i: u64) -> Descriptor {
    Descriptor {
        task_id: i,
        len: i * 3,
        ..Descriptor::default()
    }
}

#[test]
fn push_pop_in_order_and_full_when_capacity_reached() {
    let mem = Box::new(RingMem::new());
    // SAFETY: `mem` outlives both halves; one producer and one consumer.
    let (mut p, mut c) = unsafe { (Producer::attach(&*mem), Consumer::attach(&*mem)) };
    for i in 0..RING_CAPACITY {
        assert_eq!(p.push(desc(i)).unwrap(), Ok(()));
    }
    assert_eq!(p.push(desc(99)).unwrap(), Err(desc(99)));
    for i in 0..RING_CAPACITY {
        assert_eq!(c.pop().unwrap(), Some(desc(i)));
    }
    assert_eq!(c.pop().unwrap(), None);
    assert_eq!(p.free().unwrap(), RING_CAPACITY);
}

#[test]
fn reattach_resumes_from_shared_positions() {
    let mem = Box::new(RingMem::new());
    // SAFETY: as above; the first consumer is dropped before the second attaches.
    let mut p = unsafe { Producer::attach(&*mem) };
    for i in 0..10 {
        p.push(desc(i)).unwrap().unwrap();
    }
    {
        // SAFETY: single consumer at a time.
        let mut c = unsafe { Consumer::attach(&*mem) };
        for i in 0..4 {
            assert_eq!(c.pop().unwrap(), Some(desc(i)));
        }
    }
    assert_eq!(mem.consumed(), 4);
    // SAFETY: the previous consumer is gone.
    let mut c = unsafe { Consumer::attach(&*mem) };
    for i in 4..10 {
        assert_eq!(c.pop().unwrap(), Some(desc(i)));
    }
    assert_eq!(c.pop().unwrap(), None);
}

#[test]
fn corrupted_peer_position_is_an_error_not_ub() {
    let mem = Box::new(RingMem::new());
    // SAFETY: single producer and consumer; we scribble on `tail` to play a broken peer.
    let mut c = unsafe { Consumer::attach(&*mem) };
    mem.tail.store(RING_CAPACITY + 5, Ordering::Release);
    assert!(c.pop().is_err());
    let mem2 = Box::new(RingMem::new());
    // SAFETY: as above.
    let mut p = unsafe { Producer::attach(&*mem2) };
    for i in 0..RING_CAPACITY {
        p.push(desc(i)).unwrap().unwrap();
    }
    mem2.head.store(RING_CAPACITY * 3, Ordering::Release);
    assert!(p.push(desc(1)).is_err());
}

#[test]
fn threads_transfer_every_item_exactly_once_in_order() {
    const N: u64 = 200_000;
    let mem = Arc::new(RingMem::new());
    // SAFETY: `mem` is kept alive by the Arcs moved into both threads; one producer, one consumer.
    let mut p = unsafe { Producer::attach(&*mem) };
    // SAFETY: as above.
    let mut c = unsafe { Consumer::attach(&*mem) };
    let keep = Arc::clone(&mem);
    let t = std::thread::spawn(move || {
        let _keep = keep;
        for i in 0..N {
            let mut d = desc(i);
            loop {
                match p.push(d).unwrap() {
                    Ok(()) => break,
                    Err(back) => {
                        d = back;
                        std::thread::yield_now();
                    }
                }
            }
        }
    });
    let mut next = 0;
    while next < N {
        match c.pop().unwrap() {
            Some(d) => {
                assert_eq!(d, desc(next));
                next += 1;
            }
            None => std::thread::yield_now(),
        }
    }
    t.join().unwrap();
    assert_eq!(c.pop().unwrap(), None);
}
