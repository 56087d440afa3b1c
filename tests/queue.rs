//! `Queue`: FIFO order, bounds, timeouts, many threads at once, and tasks in different workers
//! (and the parent) talking through one queue, as in the seed tutorial's
//! `multiprocessing.Manager().Queue()` program.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde::Deserialize;
use serde::de::value::{Error as ValueError, SeqDeserializer};
use shmpool::{Error, Pool, Queue};

/// Aborts the test binary if the guard is not dropped within 60 s: a hang becomes a failure.
struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

fn watchdog() -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let name = thread::current().name().unwrap_or("<unnamed>").to_string();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(60)) {
            let msg = format!("\nwatchdog: test `{name}` hung for 60 s; aborting\n");
            // SAFETY: writes `msg.len()` bytes from a live buffer to fd 2, bypassing the stderr
            // lock a hung thread might hold.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            std::process::abort();
        }
    });
    Watchdog(tx)
}

#[test]
fn items_come_out_in_the_order_they_went_in() {
    let _w = watchdog();
    let q = Queue::new(8).unwrap();
    for s in ["a", "bb", "ccc"] {
        q.put(s.to_string()).unwrap();
    }
    assert_eq!(q.len(), 3);
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.get().unwrap(), "bb");
    assert_eq!(q.try_get().unwrap().as_deref(), Some("ccc"));
    assert_eq!(q.try_get().unwrap(), None);
    assert!(q.is_empty());
}

#[test]
fn a_full_queue_refuses_try_put_and_hands_the_item_back() {
    let _w = watchdog();
    let q = Queue::new(3).unwrap();
    assert_eq!(q.capacity(), 3);
    for i in 0..3u32 {
        assert_eq!(q.try_put(i).unwrap(), Ok(()));
    }
    assert_eq!(q.len(), 3);
    assert_eq!(q.try_put(99).unwrap(), Err(99));
    let full = q.put_timeout(99, Duration::from_millis(5)).unwrap_err();
    assert!(matches!(full.error, Error::Timeout), "{full:?}");
    // The item comes back, as from `try_put`.
    assert_eq!(full.value, 99);
    assert_eq!(full.to_string(), "the wait timed out");
    assert_eq!(q.get().unwrap(), 0);
    assert_eq!(q.try_put(3).unwrap(), Ok(()));
    let rest: Vec<u32> = (0..3).map(|_| q.get().unwrap()).collect();
    assert_eq!(rest, [1, 2, 3]);
}

#[test]
fn capacity_zero_is_an_invalid_argument() {
    match Queue::<u8>::new(0) {
        Err(Error::InvalidArgument { what }) => assert!(what.contains("capacity"), "{what}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn get_timeout_on_an_empty_queue_is_a_timeout() {
    let _w = watchdog();
    let q = Queue::<u64>::new(2).unwrap();
    let e = q.get_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    assert_eq!(e.to_string(), "the wait timed out");
    assert!(matches!(q.get_timeout(Duration::ZERO), Err(Error::Timeout)));
}

#[test]
fn a_blocked_get_wakes_when_another_thread_puts() {
    let _w = watchdog();
    let q = Queue::<u64>::new(1).unwrap();
    let q2 = q.clone();
    let getter = thread::spawn(move || q2.get());
    thread::sleep(Duration::from_millis(20));
    q.put(5).unwrap();
    assert_eq!(getter.join().unwrap().unwrap(), 5);
}

#[test]
fn an_item_larger_than_a_slot_is_payload_too_large() {
    let _w = watchdog();
    let q = Queue::<String>::with_slot_size(4, 16).unwrap();
    let e = q.put("x".repeat(100)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::PayloadTooLarge {
                size: 101,
                capacity: 16
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        q.try_put("y".repeat(16)),
        Err(Error::PayloadTooLarge { .. })
    ));
    assert!(q.is_empty(), "nothing was stored");
    q.put("fits".to_string()).unwrap();
    assert_eq!(q.get().unwrap(), "fits");
}

#[test]
fn four_producers_and_four_consumers_move_every_item_exactly_once() {
    let _w = watchdog();
    const PER_THREAD: u64 = 10_000;
    const THREADS: u64 = 4;
    let q = Queue::<u64>::new(64).unwrap();
    let producers: Vec<_> = (0..THREADS)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    q.put(p * PER_THREAD + i).unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..THREADS)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|_| q.get().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut all = BTreeSet::new();
    for c in consumers {
        let got = c.join().unwrap();
        // FIFO per producer: one consumer sees each producer's items in increasing order.
        for p in 0..THREADS {
            let mine: Vec<u64> = got
                .iter()
                .copied()
                .filter(|v| v / PER_THREAD == p)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "producer {p} reordered"
            );
        }
        for v in got {
            assert!(all.insert(v), "item {v} came out twice");
        }
    }
    assert_eq!(all.len() as u64, THREADS * PER_THREAD);
    assert_eq!(all.last(), Some(&(THREADS * PER_THREAD - 1)));
    assert!(q.is_empty());
}

#[test]
fn a_queue_of_one_slot_hands_items_over_one_at_a_time() {
    let _w = watchdog();
    const N: u64 = 2_000;
    let q = Queue::<u64>::new(1).unwrap();
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || (0..N).for_each(|i| q.put(p * N + i).unwrap()))
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || (0..N).map(|_| q.get().unwrap()).collect::<Vec<_>>())
        })
        .collect();
    producers.into_iter().for_each(|p| p.join().unwrap());
    let mut all: Vec<u64> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..2 * N).collect::<Vec<_>>());
}

fn write(q: Queue<char>) -> u32 {
    for c in "python".chars() {
        q.put(c).unwrap();
    }
    std::process::id()
}

fn read(q: Queue<char>) -> (String, u32) {
    let s = (0..q.len()).map(|_| q.get().unwrap()).collect();
    (s, std::process::id())
}

#[test]
fn the_seed_program_one_task_writes_python_another_reads_it() {
    let _w = watchdog();
    let q = Queue::new(16).unwrap();
    let pool = Pool::new(2).unwrap();
    let writer = pool.apply_async(write, q.clone()).unwrap().get().unwrap();
    let (text, reader) = pool.apply_async(read, q.clone()).unwrap().get().unwrap();
    assert_eq!(text, "python");
    assert_ne!(writer, std::process::id(), "the writer ran in a worker");
    assert_ne!(reader, std::process::id(), "the reader ran in a worker");
    assert!(q.is_empty());
    pool.close();
    pool.join().unwrap();
}

fn put_range(arg: (Queue<u32>, u32, u32)) -> u32 {
    let (q, lo, hi) = arg;
    for i in lo..=hi {
        q.put(i).unwrap();
    }
    hi - lo + 1
}

#[test]
fn workers_put_from_several_tasks_and_the_parent_gets_each_item_once() {
    let _w = watchdog();
    // Smaller than the item count: workers block on a full queue until the parent drains it.
    let q = Queue::<u32>::new(32).unwrap();
    let pool = Pool::new(2).unwrap();
    let tasks: Vec<_> = (0..4u32)
        .map(|t| {
            pool.apply_async(put_range, (q.clone(), t * 250 + 1, t * 250 + 250))
                .unwrap()
        })
        .collect();
    let mut seen = BTreeSet::new();
    for _ in 0..1000 {
        let v = q.get().unwrap();
        assert!(seen.insert(v), "{v} came out twice");
    }
    assert_eq!(seen, (1..=1000).collect::<BTreeSet<u32>>());
    let counts: u32 = tasks.into_iter().map(|t| t.get().unwrap()).sum();
    assert_eq!(counts, 1000);
    assert_eq!(q.try_get().unwrap(), None);
}

/// Tries, in a worker, to open the queue `(pid, serial)` through a serde format that keeps error
/// messages (postcard drops them).
fn open_in_worker(key: (u32, u64)) -> String {
    let de = SeqDeserializer::<_, ValueError>::new([u64::from(key.0), key.1].into_iter());
    match Queue::<u32>::deserialize(de) {
        Ok(q) => format!("opened, capacity {}", q.capacity()),
        Err(e) => e.to_string(),
    }
}

fn queue_len(q: Queue<u32>) -> u64 {
    q.len() as u64
}

#[test]
fn a_queue_created_after_the_pool_is_a_clear_error_in_the_task() {
    let _w = watchdog();
    let early = Queue::<u32>::new(4).unwrap();
    let pool = Pool::new(1).unwrap();
    let late = Queue::<u32>::new(4).unwrap();
    late.put(1).unwrap();

    // Through the pool, the task cannot decode its argument: an error, not a crash or a hang.
    match pool.apply(queue_len, late.clone()) {
        Err(Error::Codec { detail }) => {
            let (_, serial) =
                postcard::from_bytes::<(u32, u64)>(&postcard::to_allocvec(&late).unwrap()).unwrap();
            assert!(detail.starts_with("cannot decode the argument"), "{detail}");
            assert!(
                detail.ends_with(&format!(
                    ": queue {serial} was created after the pool was built; create queues before the pool"
                )),
                "{detail}"
            );
        }
        other => panic!("expected a codec error, got {other:?}"),
    }

    // What the worker's registry says, with the message intact.
    let key = |q: &Queue<u32>| -> (u32, u64) {
        postcard::from_bytes(&postcard::to_allocvec(q).unwrap()).unwrap()
    };
    let (pid, serial) = key(&late);
    assert_eq!(pid, std::process::id());
    assert_eq!(
        pool.apply(open_in_worker, (pid, serial)).unwrap(),
        format!(
            "queue {serial} was created after the pool was built; create queues before the pool"
        )
    );
    assert_eq!(
        pool.apply(open_in_worker, key(&early)).unwrap(),
        "opened, capacity 4"
    );

    // The same worker goes on serving, and the early queue works across the fork.
    early.put(7).unwrap();
    assert_eq!(pool.apply(queue_len, early.clone()).unwrap(), 1);
}
