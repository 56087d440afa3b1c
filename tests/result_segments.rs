//! Attacks on the reuse of large byte vectors (`bigpayload`, "Reuse of byte vectors" and
//! "Reused result segments"): sizes around every bound, refused calls, tasks that tamper with
//! their worker's reused result segment, concurrency, and memory that must stay bounded.

mod common;

use shmpool::{Error, Pool};

/// 64 KiB arenas: byte vectors from 8 KiB (an eighth) are kept, up to 1 MiB (16 arenas).
const ARENA: usize = 64 * 1024;

fn pool(processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .arena_size(ARENA)
        .build()
        .unwrap()
}

/// A kB figure of this process's `/proc/self/status`.
fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// In a worker: resizes its reused result segment to `size` (through `/proc`, as a buggy task
/// could), then returns `len` bytes of `seed`'s noise and whether the resize worked.
fn resize_then_answer(case: (u64, usize, u64)) -> (bool, Vec<u8>) {
    let (size, len, seed) = case;
    let path = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_link(p).is_ok_and(|l| l.to_string_lossy().contains("shmpool-result"))
        })
        .expect("a reused result segment");
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let resized = f.set_len(size).is_ok();
    (resized, common::noise(len, seed))
}

/// A task that grows its worker's reused result segment (sparse: no memory of its own) must
/// not make the parent allocate it: the parent maps and touches only the announced bytes. A
/// task that shrinks it fails (sealed), and the parent never takes a SIGBUS.
#[test]
fn a_task_that_resizes_its_result_segment_costs_the_parent_nothing_and_breaks_nothing() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let p = pool(1);
    // The worker makes its reused segment (100 KB), and the parent maps it.
    let first = p.apply(|n: usize| common::noise(n, 1), 100_000).unwrap();
    assert!(first == common::noise(100_000, 1));
    // Shrinking is refused by the seal; the result is right.
    let shrunk = p
        .apply(|c: (u64, usize, u64)| resize_then_answer(c).0, (4096, 0, 0))
        .unwrap();
    assert!(!shrunk, "the reused result segment could shrink");
    let back = p.apply(common::flip, common::noise(90_000, 2)).unwrap();
    assert!(back == common::flip(common::noise(90_000, 2)));
    // Grown to 256 MiB (sparse), then a result larger than the parent's mapping so far.
    let before = status_kb("RssShmem:");
    let got: Vec<u8> = p
        .apply(
            |c: (u64, usize, u64)| {
                let (resized, v) = resize_then_answer(c);
                assert!(resized);
                v
            },
            (256 << 20, 200_000, 3),
        )
        .unwrap();
    assert!(got == common::noise(200_000, 3));
    let grown = status_kb("RssShmem:").saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "the parent's shared memory grew by {grown} kB for a 200 KB result"
    );
    // Later results through the same (large) segment are right.
    for i in 0..4u64 {
        let bytes = common::noise(150_000 + i as usize * 40_000, 10 + i);
        assert!(p.apply(common::flip, bytes.clone()).unwrap() == common::flip(bytes));
    }
    drop(first);
}

/// Byte vectors of every size around the bounds, as `Vec<u8>` and `Box<[u8]>`, with spare
/// capacities around twice their length, mixed with results of other types: every byte of
/// every result is its own, and no vector comes back with more than twice its length.
#[test]
fn sizes_around_every_bound_round_trip_whole() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let p = pool(2);
    let e = ARENA / 8;
    let lens = [
        0,
        1,
        e - 1,
        e,
        e + 1,
        ARENA - 2,
        ARENA - 1,
        ARENA,
        ARENA + 1,
        16 * ARENA - 1,
        16 * ARENA,
        16 * ARENA + 1,
        e,
        8 * ARENA,
        e + 1,
        0,
        16 * ARENA,
    ];
    for (i, &len) in lens.iter().enumerate() {
        let bytes = common::noise(len, i as u64 + 1);
        for (k, cap) in [len, 2 * len, 2 * len + 1, len + 1].into_iter().enumerate() {
            let arg = common::with_capacity(&bytes, cap);
            let back = match k {
                0 => p.apply(common::flip, arg).unwrap(),
                1 => p
                    .apply(|v: Vec<u8>| common::flip(v).into_boxed_slice(), arg)
                    .unwrap()
                    .into_vec(),
                2 => {
                    let b: Box<[u8]> = p
                        .apply(
                            |b: Box<[u8]>| common::flip(b.into_vec()),
                            arg.into_boxed_slice(),
                        )
                        .unwrap()
                        .into_boxed_slice();
                    b.into_vec()
                }
                _ => p.apply_async(common::flip, arg).unwrap().get().unwrap(),
            };
            assert!(back == common::flip(bytes.clone()), "len {len}, case {k}");
            assert!(
                back.capacity() <= 2 * len,
                "len {len}, case {k}: capacity {}",
                back.capacity()
            );
            // Other types in between: strings, tuples with vectors, numbers.
            let s: String = p.apply(|n: usize| "é".repeat(n), len / 2).unwrap();
            assert_eq!(s, "é".repeat(len / 2));
            let (n, v): (u64, Vec<u8>) = p
                .apply(|v: Vec<u8>| (v.len() as u64, v), bytes.clone())
                .unwrap();
            assert!(n == len as u64 && v == bytes, "tuple, len {len}");
            let words: Vec<u32> = p
                .apply(|n: u32| (0..n).collect(), (len / 4) as u32)
                .unwrap();
            assert!(words.iter().enumerate().all(|(i, &w)| w == i as u32));
        }
    }
}

/// A refused call gives its argument back intact: the same allocation, the same bytes.
#[test]
fn a_refused_big_call_gives_its_argument_back_intact() {
    let _serial = common::serial();
    let _w = common::arm(120);
    let p = pool(1);
    // A spare in the pool first.
    let bytes = common::noise(200_000, 5);
    assert!(p.apply(common::flip, bytes.clone()).unwrap() == common::flip(bytes.clone()));
    p.close();
    for len in [20_000, 200_000, 2_000_000] {
        let bytes = common::noise(len, len as u64);
        let arg = common::with_capacity(&bytes, len + 5);
        let (ptr, cap) = (arg.as_ptr() as usize, arg.capacity());
        let check = |v: Vec<u8>, e: Error| {
            assert!(matches!(e, Error::PoolClosed), "{e}");
            assert_eq!((v.as_ptr() as usize, v.capacity()), (ptr, cap));
            assert!(v == bytes);
            v
        };
        let r = p.apply_async(common::flip, arg).unwrap_err();
        let arg = check(r.value, r.error);
        let r = p
            .apply_async_timeout(common::flip, arg, std::time::Duration::from_secs(9))
            .unwrap_err();
        let arg = check(r.value, r.error);
        let r = p
            .apply_async_with_callback(common::flip, arg, |_| panic!("refused"))
            .unwrap_err();
        let arg = check(r.value, r.error);
        let boxed = arg.into_boxed_slice();
        let bptr = boxed.as_ptr() as usize;
        let r = p.apply_async(|b: Box<[u8]>| b, boxed).unwrap_err();
        assert_eq!(r.value.as_ptr() as usize, bptr);
        assert!(*r.value == bytes[..]);
    }
    p.join().unwrap();
}

/// A task that puts another memfd in place of its worker's reused result segment: an
/// unsealed one is refused (the worker is replaced), a sealed one is copied out; the pool
/// serves on and never mixes up results.
#[test]
fn a_task_that_replaces_its_result_segment_cannot_hurt_the_parent() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let p = pool(1);
    let first = p.worker_pids()[0];
    assert!(p.apply(|n: usize| common::noise(n, 7), 100_000).unwrap() == common::noise(100_000, 7));
    // Replaced by a memfd that can shrink.
    let r = p.apply(
        |len: usize| {
            use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
            let path = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    std::fs::read_link(p)
                        .is_ok_and(|l| l.to_string_lossy().contains("shmpool-result"))
                })
                .unwrap();
            let target: i32 = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
            // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked.
            let fd = unsafe { libc::memfd_create(c"fake".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: `fd` was just made and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: dup3 of an fd we own onto the segment's number (the point of the test: the
            // worker's `File` now refers to the fake memfd).
            let rc = unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) };
            assert_eq!(rc, target);
            common::noise(len, 8)
        },
        150_000,
    );
    // The fake is refused (`WorkerCorrupted`, the worker replaced) by the first large result
    // written into it: this task's, or, if this task's result went to a fresh sealed segment
    // instead (the parent marks the reused segment free only after the completion that let
    // the caller go on, so the previous result may still have held it), a later one's. Never
    // twice: the replacement makes a segment of its own.
    let mut refused = match r {
        Err(Error::WorkerCorrupted { .. }) => true,
        Ok(v) => {
            assert!(v == common::noise(150_000, 8), "the wrong bytes");
            false
        }
        Err(e) => panic!("{e}"),
    };
    let mut calls = 0u64;
    while !refused && calls < 50 {
        let bytes = common::noise(120_000 + (calls as usize % 5) * 50_000, 20 + calls);
        match p.apply(common::flip, bytes.clone()) {
            Ok(v) => assert!(v == common::flip(bytes), "the wrong bytes"),
            Err(Error::WorkerCorrupted { detail, .. }) => {
                assert!(detail.contains("can shrink"), "{detail}");
                refused = true;
            }
            Err(e) => panic!("{e}"),
        }
        calls += 1;
    }
    assert!(
        refused,
        "the fake segment was never refused ({calls} large results after it)"
    );
    // The pool serves on, on a new worker, and is never refused again.
    for i in 0..5u64 {
        let bytes = common::noise(120_000 + i as usize * 50_000, 80 + i);
        let v = p.apply(common::flip, bytes.clone()).unwrap();
        assert!(v == common::flip(bytes), "the wrong bytes");
    }
    assert_ne!(
        p.worker_pids()[0],
        first,
        "the corrupt worker was not replaced"
    );
}

/// Many threads at once on one pool: `apply`, `apply_async` (some dropped unread),
/// callbacks, `map` and `starmap` of big byte vectors; every result is its own bytes.
#[test]
fn every_way_of_calling_at_once_gets_its_own_bytes() {
    let _serial = common::serial();
    let _w = common::arm(600);
    let p = pool(3);
    let key = |t: u64, i: u64| t << 32 | i;
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let p = &p;
            s.spawn(move || {
                for i in 0..12u64 {
                    let len = 9_000 + ((t * 7919 + i * 104_729) % 300_000) as usize;
                    let bytes = common::noise(len, key(t, i));
                    match (t + i) % 5 {
                        0 => {
                            let back = p
                                .apply(
                                    common::flip,
                                    common::with_capacity(&bytes, len + i as usize),
                                )
                                .unwrap();
                            assert!(back == common::flip(bytes), "apply {t}.{i}");
                        }
                        1 => {
                            let dropped = p.apply_async(common::flip, bytes.clone()).unwrap();
                            let kept = p.apply_async(common::flip, bytes.clone()).unwrap();
                            drop(dropped);
                            assert!(kept.get().unwrap() == common::flip(bytes), "async {t}.{i}");
                        }
                        2 => {
                            let (tx, rx) = std::sync::mpsc::channel();
                            let r = p
                                .apply_async_with_callback(common::flip, bytes.clone(), move |r| {
                                    tx.send(r.unwrap()).unwrap();
                                })
                                .unwrap();
                            let want = common::flip(bytes);
                            assert!(r.get().unwrap() == want, "get {t}.{i}");
                            assert!(rx.recv().unwrap() == want, "callback {t}.{i}");
                        }
                        3 => {
                            let items: Vec<Vec<u8>> = (0..4)
                                .map(|k| common::noise(len / (k + 1), key(t, i) + k as u64))
                                .collect();
                            let back = p.map(common::flip, items.clone()).unwrap();
                            for (a, b) in items.into_iter().zip(back) {
                                assert!(b == common::flip(a), "map {t}.{i}");
                            }
                        }
                        _ => {
                            let items: Vec<(Vec<u8>, u8)> =
                                (0..3).map(|k| (bytes.clone(), k)).collect();
                            let back = p
                                .starmap(
                                    |v: Vec<u8>, k: u8| {
                                        v.iter().map(|b| b ^ k).collect::<Vec<u8>>()
                                    },
                                    items,
                                )
                                .unwrap();
                            for (k, b) in back.into_iter().enumerate() {
                                assert!(
                                    b.iter().zip(&bytes).all(|(x, y)| *x == y ^ k as u8)
                                        && b.len() == len,
                                    "starmap {t}.{i}"
                                );
                            }
                        }
                    }
                }
            });
        }
    });
    p.close();
    p.join().unwrap();
}

/// Big results racing a per-call time limit (tasks that take about as long as the limit): a
/// call either times out or gets its own bytes, and the replacements serve on.
#[test]
fn big_results_racing_their_time_limit_are_whole_or_timed_out() {
    let _serial = common::serial();
    let _w = common::arm(600);
    let p = pool(2);
    let mut timed_out = 0;
    for i in 0..30u64 {
        let len = 100_000 + (i as usize % 7) * 90_000;
        let spin_ms = 5 + (i * 37) % 40;
        let rs: Vec<_> = (0..2u64)
            .map(|k| {
                let r = p
                    .apply_async_timeout(
                        |(n, seed, ms): (usize, u64, u64)| {
                            let v = common::noise(n, seed);
                            let until =
                                std::time::Instant::now() + std::time::Duration::from_millis(ms);
                            while std::time::Instant::now() < until {
                                std::hint::spin_loop();
                            }
                            v
                        },
                        (len, i * 2 + k, spin_ms),
                        std::time::Duration::from_millis(25),
                    )
                    .unwrap();
                (k, r)
            })
            .collect();
        for (k, r) in rs {
            match r.get() {
                Ok(v) => assert!(v == common::noise(len, i * 2 + k), "call {i}.{k}"),
                Err(Error::TaskTimedOut { .. }) => timed_out += 1,
                Err(e) => panic!("call {i}.{k}: {e}"),
            }
        }
        let bytes = common::noise(len, 1000 + i);
        assert!(
            p.apply(common::flip, bytes.clone()).unwrap() == common::flip(bytes),
            "after {i}"
        );
    }
    assert!(timed_out > 0, "no call ran into its limit");
}

/// Fifty big round trips of one size: the parent's and the worker's memory stay flat (the
/// spares and the reused segment are reused, nothing accumulates).
#[test]
fn fifty_big_round_trips_do_not_grow_memory() {
    let _serial = common::serial();
    let _w = common::arm(600);
    let p = pool(1);
    let worker = p.worker_pids()[0];
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("VmRSS:"))
            .find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap()
    };
    let len = 900_000;
    let bytes = common::noise(len, 77);
    let want = common::flip(bytes.clone());
    let mut arg = bytes.clone();
    let mut base = (0, 0);
    for i in 0..50 {
        let back = p.apply(common::flip, arg).unwrap();
        assert!(back == want, "trip {i}");
        assert!(back.capacity() <= 2 * len);
        arg = common::flip(back);
        if i == 9 {
            base = (rss(std::process::id()), rss(worker));
        }
    }
    let now = (rss(std::process::id()), rss(worker));
    // A few sizes of slack (the allocator keeps what it likes), far less than 40 trips' worth.
    let slack = 8 * len as u64 / 1024;
    assert!(
        now.0 <= base.0 + slack,
        "parent RSS {} kB -> {} kB",
        base.0,
        now.0
    );
    assert!(
        now.1 <= base.1 + slack,
        "worker RSS {} kB -> {} kB",
        base.1,
        now.1
    );
}

/// Workers that exit after every task (`max_tasks_per_child(1)`) while big results stream:
/// every result is whole, and no segment, mapping, fd or process outlives the pool.
#[test]
fn workers_that_exit_after_each_big_result_leave_nothing_behind() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let fds = common::fd_count();
    let p = Pool::builder()
        .processes(2)
        .arena_size(ARENA)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let mut pids = p.worker_pids();
    let rs: Vec<_> = (0..16u64)
        .map(|i| {
            let bytes = common::noise(100_000 + i as usize * 10_000, i);
            (bytes.clone(), p.apply_async(common::flip, bytes).unwrap())
        })
        .collect();
    for (i, (bytes, r)) in rs.into_iter().enumerate() {
        assert!(r.get().unwrap() == common::flip(bytes), "call {i}");
        pids.extend(p.worker_pids());
    }
    drop(p);
    assert!(
        common::eventually(std::time::Duration::from_secs(30), || common::fd_count()
            == fds),
        "fds: {} now, {fds} before",
        common::fd_count()
    );
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(!maps.contains("shmpool-result"), "{maps}");
    for pid in pids {
        assert!(
            common::eventually(std::time::Duration::from_secs(30), || !common::exists(pid)),
            "process {pid} outlived its pool"
        );
    }
}

/// A task that leaves a thread behind in its worker, rewriting and growing the worker's reused
/// result segment without pause (bogus length prefixes included) while the parent copies results
/// out of it: the parent never crashes, never hangs, never hands out a vector longer than the
/// segment or with more than twice its length in capacity; killing that worker ends it.
#[test]
fn a_thread_scribbling_on_the_result_segment_while_the_parent_copies_cannot_hurt_it() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let p = pool(1);
    assert!(p.apply(|n: usize| vec![1u8; n], 400_000).unwrap() == vec![1u8; 400_000]);
    p.apply(
        |_: ()| {
            let path = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    std::fs::read_link(p)
                        .is_ok_and(|l| l.to_string_lossy().contains("shmpool-result"))
                })
                .unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let mut x = 0x1234_5678_9abc_def1u64;
                let mut size = 400_000u64;
                loop {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Off the 16-byte header (a worker that breaks it is refused outright,
                    // `WorkerCorrupted`, which would end this scribbler at once).
                    let at = 16 + x % (size - 16);
                    // Length prefixes that lie (a varint of up to 2^63) where the encoding
                    // starts (`bigpayload::ENCODING_AT`), and garbage.
                    let _ = f.write_all_at(
                        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                        shmpool::ENCODING_AT as u64,
                    );
                    let _ = f.write_all_at(&x.to_le_bytes(), at);
                    if x.is_multiple_of(97) {
                        size += 4096;
                        let _ = f.set_len(size);
                    }
                    if x.is_multiple_of(89) {
                        let _ = f.set_len(4096);
                    }
                }
            });
        },
        (),
    )
    .unwrap();
    for i in 0..40u64 {
        let len = 100_000 + (i as usize % 5) * 60_000;
        match p.apply(|n: usize| vec![7u8; n], len) {
            Ok(v) => assert!(
                v.len() <= 1 << 24 && v.capacity() <= 2 * v.len().max(1),
                "{} bytes in {}",
                v.len(),
                v.capacity()
            ),
            Err(Error::Codec { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    common::kill(common::live_worker(|| p.worker_pids(), 0), libc::SIGKILL);
    assert!(common::eventually(
        std::time::Duration::from_secs(30),
        || {
            p.apply(|n: usize| vec![9u8; n], 300_000)
                .is_ok_and(|v| v == vec![9u8; 300_000])
        }
    ));
}

/// The fork servers of this process's pools.
fn fork_servers() -> Vec<u32> {
    common::children()
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "shmpool-server")
        })
        .collect()
}

/// Dirty memory (private and shared) of process `pid`, in kB.
fn dirty_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("Private_Dirty:") || l.starts_with("Shared_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// A pool's spare byte vector (a big argument the caller gave up, kept for a later result) is
/// private heap memory: a pool built while it is kept must not inherit it into its fork server,
/// which would hold it (copy-on-write) as long as that pool lives, even once the first pool is
/// gone.
#[test]
fn a_pool_built_later_does_not_inherit_another_pools_spare_vector() {
    let _serial = common::serial();
    let _w = common::arm(120);
    const BIG: usize = 12 << 20;
    let mut dirty = Vec::new();
    for keep in [false, true] {
        // 1 MiB arenas: byte vectors up to 16 MiB are kept.
        let a = Pool::builder()
            .processes(1)
            .arena_size(1 << 20)
            .build()
            .unwrap();
        let len = if keep { BIG } else { 100 };
        // The argument is not taken by the result (a number): the pool keeps it as its spare.
        assert_eq!(a.apply(|v: Vec<u8>| v.len(), vec![1u8; len]).unwrap(), len);
        let before = fork_servers();
        let b = Pool::new(1).unwrap();
        let server: Vec<u32> = fork_servers()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert_eq!(server.len(), 1, "{server:?}");
        dirty.push(dirty_kb(server[0]));
        // The first pool still works, and its next big result is right.
        let bytes = common::noise(BIG, 3);
        assert!(a.apply(common::flip, bytes.clone()).unwrap() == common::flip(bytes));
        drop(a);
        drop(b);
    }
    assert!(
        dirty[1] < dirty[0] + (BIG / 1024 / 2) as u64,
        "the new pool's fork server holds {} kB, {} kB without a spare in the other pool",
        dirty[1],
        dirty[0]
    );
}

/// In a worker: sets its `RLIMIT_FSIZE` soft limit to `limit` bytes (`None`: none).
fn set_fsize(limit: Option<u64>) {
    let lim = libc::rlimit {
        rlim_cur: limit.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit(2) reads one `rlimit`; it limits this worker process only.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) }, 0);
}

/// A memfd is a file: sizing or writing one past `RLIMIT_FSIZE` raises `SIGXFSZ`, which kills
/// the process. A task that lowers its worker's limit and returns a result too large for it
/// gets an error naming the limit (the reused segment's path and the sealed one's); its worker
/// is not killed and serves on, and large results work again once the limit is lifted.
#[test]
fn a_result_past_the_workers_file_size_limit_is_an_error_not_a_dead_worker() {
    let _serial = common::serial();
    let _w = common::arm(120);
    let p = pool(1);
    let pid = p.worker_pids()[0];
    let limited = |n: usize| {
        set_fsize(Some(4 * ARENA as u64));
        vec![5u8; n]
    };
    for n in [8 * ARENA, 8 * ARENA + 1] {
        match p.apply(limited, n) {
            Err(Error::Codec { detail }) => assert!(detail.contains("RLIMIT_FSIZE"), "{detail}"),
            other => panic!("expected a codec error, got {:?}", other.map(|v| v.len())),
        }
        // Not a byte vector: a sealed segment, refused the same way.
        let s = p.apply(
            |n: usize| {
                set_fsize(Some(4 * ARENA as u64));
                "x".repeat(n)
            },
            n,
        );
        match s {
            Err(Error::Codec { detail }) => assert!(detail.contains("RLIMIT_FSIZE"), "{detail}"),
            other => panic!("expected a codec error, got {:?}", other.map(|v| v.len())),
        }
    }
    // Under the limit, large results still travel; the same worker throughout.
    assert!(p.apply(limited, 2 * ARENA).unwrap() == vec![5u8; 2 * ARENA]);
    assert_eq!(p.worker_pids(), [pid]);
    p.apply(set_fsize, None).unwrap();
    assert!(p.apply(|n: usize| vec![6u8; n], 8 * ARENA).unwrap() == vec![6u8; 8 * ARENA]);
    assert_eq!(p.worker_pids(), [pid]);
}
