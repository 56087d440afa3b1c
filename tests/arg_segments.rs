//! Large arguments' segments are reused (`bigpayload`, "Reuse"): never rewritten while a worker
//! still reads one, read-only in the worker, bounded in what the pool keeps, and closed with it.
//!
//! The tests count the `memfd:shmpool-arg` fds of this process, so they run one at a time.

mod common;

use std::time::Duration;

use shmpool::{Error, Pool};

const SMALL_ARENA: usize = 64 * 1024;

/// A pool of `processes` workers with [`SMALL_ARENA`]s.
fn small_pool(processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .arena_size(SMALL_ARENA)
        .build()
        .unwrap()
}

/// Once a pool is dropped, this process holds none of its argument segments.
fn assert_no_arg_segments_left() {
    assert_eq!(
        arg_segments("self").0,
        0,
        "argument segments outlived the pool"
    );
}
/// What a pool with `SMALL_ARENA` keeps at most: 16 arenas, in at most two segments.
const SPARE_BYTES: u64 = 16 * SMALL_ARENA as u64;

/// `(count, total bytes)` of the argument segments process `pid` holds open.
fn arg_segments(pid: &str) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(e.path())
            .is_ok_and(|l| l.to_string_lossy().contains("memfd:shmpool-arg"))
        {
            n += 1;
            bytes += std::fs::metadata(e.path()).map_or(0, |m| m.len());
        }
    }
    (n, bytes)
}

/// `arg_segments("self")` once it satisfies `ok`, waiting up to 30 s: a task's segment goes back
/// to the spares just after its completion ran, a moment after the caller may look.
fn arg_segments_once(ok: impl Fn((usize, u64)) -> bool) -> (usize, u64) {
    let mut last = arg_segments("self");
    common::eventually(Duration::from_secs(30), || {
        last = arg_segments("self");
        ok(last)
    });
    last
}

/// `len` bytes that differ with `seed` in every position.
fn bytes(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 7 + seed * 13 + i / 251) as u8)
        .collect()
}

#[test]
fn concurrent_large_arguments_each_arrive_intact() {
    let _s = common::serial();
    let _w = common::arm(180);
    let pool = small_pool(2);
    // Rounds of many calls in flight at once, with distinct contents and sizes from larger to
    // smaller (a reused segment is then larger than the argument written into it) and back up
    // (grown). Every segment is reused many times while the other worker reads another one.
    for round in 0..4 {
        let lens: Vec<usize> = (0..24)
            .map(|i| {
                let k = if round % 2 == 0 { 24 - i } else { i + 1 };
                SMALL_ARENA + k * 9_001
            })
            .collect();
        let handles: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let v = bytes(round * 100 + i, len);
                // Slow down the reader a little so tasks overlap with later submissions.
                pool.apply_async(
                    |v: Vec<u8>| {
                        std::thread::sleep(Duration::from_millis(1));
                        v
                    },
                    v,
                )
                .unwrap()
            })
            .collect();
        for (i, (h, &len)) in handles.into_iter().zip(&lens).enumerate() {
            let back = h.get().unwrap();
            assert!(
                back == bytes(round * 100 + i, len),
                "round {round} call {i}"
            );
        }
    }
    // The spares stay within their bound throughout.
    let (n, b) = arg_segments_once(|(n, b)| n <= 2 && b <= SPARE_BYTES);
    assert!(n <= 2 && b <= SPARE_BYTES, "{n} segments, {b} bytes");
    assert!(n >= 1, "finished segments are kept for reuse");
}

#[test]
fn a_worker_holds_its_argument_segment_read_only() {
    let _s = common::serial();
    let _w = common::arm(120);
    let pool = small_pool(1);
    // Run in the worker while it holds the argument's segment: every `shmpool-arg` fd it has
    // must be read-only, and writing through it must fail.
    let probe = |v: Vec<u8>| -> (usize, usize, usize) {
        let mut found = 0;
        let mut writable = 0;
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if !std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().contains("memfd:shmpool-arg"))
            {
                continue;
            }
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            found += 1;
            // SAFETY: fcntl(F_GETFL) only reads the flags of an fd of this process.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            // SAFETY: pwrite of one byte from a live local into an fd of this process.
            let wrote = unsafe { libc::pwrite(fd, [0xAAu8].as_ptr().cast(), 1, 0) };
            if fl & libc::O_ACCMODE != libc::O_RDONLY || wrote == 1 {
                writable += 1;
            }
        }
        (found, writable, v.len())
    };
    let len = SMALL_ARENA * 3;
    for seed in 0..3 {
        let v = bytes(seed, len);
        let (found, writable, got) = pool.apply(probe, v).unwrap();
        assert!(found >= 1, "the worker holds its argument's segment");
        assert_eq!(writable, 0, "a worker could write its argument's segment");
        assert_eq!(got, len);
        // And what the next task reads is exactly what the parent wrote.
        let v = bytes(seed + 10, len);
        assert!(pool.apply(|v: Vec<u8>| v, v.clone()).unwrap() == v);
    }
}

#[test]
fn the_spares_are_bounded_and_closed_with_the_pool() {
    let _s = common::serial();
    let _w = common::arm(120);
    let before = arg_segments("self");
    assert_eq!(before.0, 0, "another pool's segments are open");
    let pool = small_pool(2);
    let pids = pool.worker_pids();
    // One large call, then small ones: one spare, of that call's size, is kept.
    let big = bytes(1, 300_000);
    assert!(pool.apply(|v: Vec<u8>| v, big.clone()).unwrap() == big);
    for i in 0..100u64 {
        assert_eq!(pool.apply(|x: u64| x + 1, i).unwrap(), i + 1);
    }
    let (n, b) = arg_segments_once(|(n, _)| n == 1);
    assert_eq!(n, 1);
    assert!((300_000..=SPARE_BYTES).contains(&b), "{b} bytes kept");
    // An argument larger than the whole bound is not kept after use.
    let huge = bytes(2, SPARE_BYTES as usize + 4096);
    assert!(pool.apply(|v: Vec<u8>| v, huge.clone()).unwrap() == huge);
    let (n, b) = arg_segments_once(|(n, b)| n <= 2 && b <= SPARE_BYTES);
    assert!(n <= 2 && b <= SPARE_BYTES, "{n} segments, {b} bytes");
    // Many large ones at once: still at most two spares within the bound once they are done.
    let handles: Vec<_> = (0..12)
        .map(|i| {
            pool.apply_async(|v: Vec<u8>| v.len(), bytes(i, 400_000))
                .unwrap()
        })
        .collect();
    for h in handles {
        assert_eq!(h.get().unwrap(), 400_000);
    }
    let (n, b) = arg_segments_once(|(n, b)| n <= 2 && b <= SPARE_BYTES);
    assert!(n <= 2 && b <= SPARE_BYTES, "{n} segments, {b} bytes");
    // The workers closed theirs after each task.
    for p in &pids {
        let mut last = arg_segments(&p.to_string());
        common::eventually(Duration::from_secs(30), || {
            last = arg_segments(&p.to_string());
            last.0 == 0
        });
        assert_eq!(last.0, 0, "worker {p} holds argument segments");
    }
    // Dropped with the pool: nothing left open.
    drop(pool);
    assert_no_arg_segments_left();
}

#[test]
fn a_worker_killed_while_reading_a_reused_segment_harms_no_other_call() {
    let _s = common::serial();
    let _w = common::arm(180);
    let pool = small_pool(2);
    let len = SMALL_ARENA * 4;
    // A spare exists before the deaths.
    let v = bytes(0, len);
    assert!(pool.apply(|v: Vec<u8>| v, v.clone()).unwrap() == v);
    // Calls that kill their worker (holding the argument's segment) between intact ones.
    for round in 0..3 {
        let dying = pool
            .apply_async(
                |v: Vec<u8>| {
                    if !v.is_empty() {
                        // SAFETY: raise(SIGKILL) ends this worker; nothing to clean up.
                        unsafe { libc::raise(libc::SIGKILL) };
                    }
                    v.len()
                },
                bytes(round + 50, len + 1000),
            )
            .unwrap();
        let others: Vec<_> = (0..4)
            .map(|i| {
                pool.apply_async(|v: Vec<u8>| v, bytes(round * 10 + i, len + i * 777))
                    .unwrap()
            })
            .collect();
        assert!(
            matches!(dying.get(), Err(Error::WorkerDied { .. })),
            "round {round}"
        );
        for (i, h) in others.into_iter().enumerate() {
            let back = h.get().unwrap();
            assert!(
                back == bytes(round * 10 + i, len + i * 777),
                "round {round} call {i}"
            );
        }
    }
    let (n, b) = arg_segments_once(|(n, b)| n <= 2 && b <= SPARE_BYTES);
    assert!(n <= 2 && b <= SPARE_BYTES, "{n} segments, {b} bytes");
    drop(pool);
    assert_no_arg_segments_left();
}

#[test]
fn a_pool_built_while_another_keeps_a_spare_does_not_hold_it() {
    let _s = common::serial();
    let _w = common::arm(120);
    let first = small_pool(1);
    let v = bytes(3, SMALL_ARENA * 5);
    assert!(first.apply(|v: Vec<u8>| v, v.clone()).unwrap() == v);
    let (n, _) = arg_segments_once(|(n, _)| n == 1);
    assert_eq!(n, 1, "the first pool keeps a spare");
    // The second pool's fork server (and so its workers) came from a fork of this process
    // while it held the spare's fd: they must not keep that memory alive.
    let second = Pool::builder().processes(2).build().unwrap();
    assert_eq!(second.apply(|x: u64| x * 2, 21).unwrap(), 42);
    for p in second.worker_pids() {
        assert_eq!(arg_segments(&p.to_string()).0, 0, "worker {p}");
    }
    drop(first);
    assert_eq!(arg_segments("self").0, 0);
    drop(second);
}
