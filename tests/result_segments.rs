//! Attacks on the reuse of large byte vectors (`bigpayload`, "Reuse of byte vectors" and
//! "Reused result segments"): sizes around every bound, refused calls, tasks that tamper with
//! their worker's reused result segment, concurrency, and memory that must stay bounded.

mod common;

use shmpool::{Error, Pool};

/// 64 KiB arenas: byte vectors from 8 KiB (an eighth) are kept, up to 1 MiB (16 arenas).
const ARENA: usize = 64 * 1024;

/// Held by every test of this file: some measure this process's memory, which another test's
/// pool running at the same time would change.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool(processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .arena_size(ARENA)
        .build()
        .unwrap()
}

fn with_capacity(bytes: &[u8], cap: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(cap);
    v.extend_from_slice(bytes);
    v
}

fn flip(v: Vec<u8>) -> Vec<u8> {
    v.iter().rev().map(|b| b ^ 0x5A).collect()
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
    let _serial = serial();
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
    let back = p.apply(flip, common::noise(90_000, 2)).unwrap();
    assert!(back == flip(common::noise(90_000, 2)));
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
        assert!(p.apply(flip, bytes.clone()).unwrap() == flip(bytes));
    }
    drop(first);
}

/// Byte vectors of every size around the bounds, as `Vec<u8>` and `Box<[u8]>`, with spare
/// capacities around twice their length, mixed with results of other types: every byte of
/// every result is its own, and no vector comes back with more than twice its length.
#[test]
fn sizes_around_every_bound_round_trip_whole() {
    let _serial = serial();
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
            let arg = with_capacity(&bytes, cap);
            let back = match k {
                0 => p.apply(flip, arg).unwrap(),
                1 => p
                    .apply(|v: Vec<u8>| flip(v).into_boxed_slice(), arg)
                    .unwrap()
                    .into_vec(),
                2 => {
                    let b: Box<[u8]> = p
                        .apply(|b: Box<[u8]>| flip(b.into_vec()), arg.into_boxed_slice())
                        .unwrap()
                        .into_boxed_slice();
                    b.into_vec()
                }
                _ => p.apply_async(flip, arg).unwrap().get().unwrap(),
            };
            assert!(back == flip(bytes.clone()), "len {len}, case {k}");
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
    let _serial = serial();
    let _w = common::arm(120);
    let p = pool(1);
    // A spare in the pool first.
    let bytes = common::noise(200_000, 5);
    assert!(p.apply(flip, bytes.clone()).unwrap() == flip(bytes.clone()));
    p.close();
    for len in [20_000, 200_000, 2_000_000] {
        let bytes = common::noise(len, len as u64);
        let arg = with_capacity(&bytes, len + 5);
        let (ptr, cap) = (arg.as_ptr() as usize, arg.capacity());
        let check = |v: Vec<u8>, e: Error| {
            assert!(matches!(e, Error::PoolClosed), "{e}");
            assert_eq!((v.as_ptr() as usize, v.capacity()), (ptr, cap));
            assert!(v == bytes);
            v
        };
        let r = p.apply_async(flip, arg).unwrap_err();
        let arg = check(r.value, r.error);
        let r = p
            .apply_async_timeout(flip, arg, std::time::Duration::from_secs(9))
            .unwrap_err();
        let arg = check(r.value, r.error);
        let r = p
            .apply_async_with_callback(flip, arg, |_| panic!("refused"))
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
    let _serial = serial();
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
    match r {
        Err(Error::WorkerCorrupted { .. }) => {}
        Ok(v) => assert!(v == common::noise(150_000, 8), "the wrong bytes"),
        Err(e) => panic!("{e}"),
    }
    for i in 0..5u64 {
        let bytes = common::noise(120_000 + i as usize * 50_000, 20 + i);
        assert!(p.apply(flip, bytes.clone()).unwrap() == flip(bytes));
    }
    let _ = first;
}
