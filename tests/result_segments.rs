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
