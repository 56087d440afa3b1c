//! Large byte vectors are decoded into allocations the pool already owns (`bigpayload`, "Reuse
//! of byte vectors"): in the parent, a large `Vec<u8>` argument's allocation receives the next
//! large byte-vector result; in a worker, its last large `Vec<u8>` result's allocation receives
//! its next large byte-vector argument. What a caller can see of that is a vector's capacity:
//! a fresh one is exactly as long as the bytes, a reused one keeps the capacity it had, which
//! must never be more than twice the length.

mod common;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmpool::{Error, Pool};

/// 64 KiB arenas: vectors from 8 KiB (an eighth) are reused, up to 1 MiB (16 arenas).
const ARENA: usize = 64 * 1024;

fn pool(processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .arena_size(ARENA)
        .build()
        .unwrap()
}

fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

#[test]
fn the_parent_decodes_a_big_result_into_the_arguments_allocation() {
    let _serial = common::serial();
    let _w = common::arm(120);
    let p = pool(1);
    // In the arena (40 KiB) and in a segment of its own (300 KiB).
    for len in [40 * 1024, 300 * 1024] {
        let bytes = common::noise(len, len as u64);
        let back = p
            .apply(common::flip, common::with_capacity(&bytes, len + 999))
            .unwrap();
        assert_eq!(back, common::flip(bytes.clone()));
        assert_eq!(
            back.capacity(),
            len + 999,
            "the argument's allocation, reused (a fresh one would hold exactly {len})"
        );
        // A spare more than twice the result's length is not handed out: the result is fresh.
        let back = p
            .apply(common::flip, common::with_capacity(&bytes, 2 * len + 1))
            .unwrap();
        assert_eq!(back, common::flip(bytes.clone()));
        assert_eq!(back.capacity(), len);
        // Nor for a small result (under an eighth of the arena).
        let small = p
            .apply(
                |v: Vec<u8>| v[..100].to_vec(),
                common::with_capacity(&bytes, len + 1),
            )
            .unwrap();
        assert_eq!((small.len(), small.capacity()), (100, 100));
        assert_eq!(small, bytes[..100]);
    }
    // `apply_async_with_callback`: the callback's value gets the spare, `get`'s a fresh one.
    let bytes = common::noise(100_000, 7);
    let (tx, rx) = std::sync::mpsc::channel();
    let r = p
        .apply_async_with_callback(echo, common::with_capacity(&bytes, 100_123), move |r| {
            tx.send(r.unwrap()).unwrap();
        })
        .unwrap();
    let got = r.get().unwrap();
    let called = rx.recv().unwrap();
    assert_eq!((got == bytes, called == bytes), (true, true));
    assert_eq!((called.capacity(), got.capacity()), (100_123, 100_000));
}

#[test]
fn a_worker_decodes_a_big_argument_into_its_last_results_allocation() {
    let _serial = common::serial();
    let _w = common::arm(120);
    let p = pool(1);
    for len in [20 * 1024, 200 * 1024] {
        let first = common::noise(len, 1);
        // The worker's result has a recognisable capacity; its allocation stays in the worker.
        let out = p
            .apply(
                |v: Vec<u8>| {
                    let mut w = Vec::with_capacity(v.len() + 777);
                    w.extend_from_slice(&v);
                    w
                },
                first,
            )
            .unwrap();
        drop(out);
        // The next argument of that size is decoded into it: same capacity, the new bytes.
        let second = common::noise(len, 2);
        let sum = |v: &[u8]| v.iter().map(|&b| u64::from(b)).sum::<u64>();
        let (cap, got) = p
            .apply(
                |v: Vec<u8>| (v.capacity(), v.iter().map(|&b| u64::from(b)).sum::<u64>()),
                second.clone(),
            )
            .unwrap();
        assert_eq!(got, sum(&second));
        assert_eq!(cap, len + 777, "len {len}");
        // Only once: that argument was not a result, so the next one is fresh.
        let (cap, _) = p
            .apply(|v: Vec<u8>| (v.capacity(), 0u64), second.clone())
            .unwrap();
        assert_eq!(cap, len);
    }
}

/// Many round trips of differing sizes and contents through one pool: every result holds its
/// own bytes and no capacity over twice its length, whichever spare it was decoded into.
#[test]
fn reuse_never_mixes_up_bytes_across_sizes() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let p = pool(2);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..120u64 {
        // 1 byte to 1.2 MiB: under the threshold, in the arena, in segments, over the bound.
        let len = match next() % 4 {
            0 => (next() % 9000) as usize,
            1 => 8 * 1024 + (next() % 60_000) as usize,
            2 => 64 * 1024 + (next() % 400_000) as usize,
            _ => 600 * 1024 + (next() % 650_000) as usize,
        };
        let bytes = common::noise(len, i);
        let extra = (next() % (len as u64 + 2)) as usize;
        let arg = common::with_capacity(&bytes, len + extra);
        let back = if i % 3 == 0 {
            let b: Box<[u8]> = p
                .apply(|v: Vec<u8>| common::flip(v).into_boxed_slice(), arg)
                .unwrap();
            b.into_vec()
        } else {
            p.apply(common::flip, arg).unwrap()
        };
        assert!(back == common::flip(bytes.clone()), "call {i}, {len} bytes");
        assert!(
            back.capacity() <= (2 * len).max(len),
            "call {i}: {} bytes in a capacity of {}",
            len,
            back.capacity()
        );
    }
}

#[test]
fn threads_submitting_big_vectors_at_once_each_get_their_own_bytes() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let p = pool(2);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let p = &p;
            s.spawn(move || {
                for i in 0..25u64 {
                    let len = 100_000 + ((t * 31 + i * 17) % 7) as usize * 50_000;
                    let bytes = common::noise(len, t << 32 | i);
                    let results: Vec<_> = (0..3)
                        .map(|k| {
                            let arg = common::with_capacity(&bytes, len + k * 1000);
                            (k, p.apply_async(common::flip, arg).unwrap())
                        })
                        .collect();
                    for (k, r) in results {
                        let back = r.get().unwrap();
                        assert!(
                            back == common::flip(bytes.clone()),
                            "thread {t} call {i}.{k}"
                        );
                        // Each call's result lands in that call's own argument allocation,
                        // whatever the other threads' calls do with the pool's spare.
                        assert_eq!(back.capacity(), len + k * 1000, "thread {t} call {i}.{k}");
                    }
                }
            });
        }
    });
}

/// A type whose decoding panics when asked to (its first byte is 1).
#[derive(Debug, Serialize)]
struct Touchy(u8);

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = u8::deserialize(d)?;
        assert!(b != 1, "touchy decode");
        Ok(Touchy(b))
    }
}

#[test]
fn panics_between_big_round_trips_leave_the_spares_sound() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let p = pool(1);
    for i in 0..6u64 {
        let len = 150_000 + i as usize * 10_000;
        let bytes = common::noise(len, i);
        assert!(p.apply(common::flip, bytes.clone()).unwrap() == common::flip(bytes.clone()));
        // The task panics after decoding a big argument (into the worker's spare).
        let e = p
            .apply(
                |v: Vec<u8>| -> Vec<u8> { panic!("after {} bytes", v.len()) },
                bytes.clone(),
            )
            .unwrap_err();
        assert!(matches!(e, Error::TaskPanicked { .. }), "{e}");
        // A `Deserialize` that panics, in the worker and in the parent.
        let e = p.apply(|t: Touchy| t.0, Touchy(1)).unwrap_err();
        assert!(e.to_string().contains("touchy decode"), "{e}");
        let e = p.apply(|_: u8| Touchy(1), 0).unwrap_err();
        assert!(e.to_string().contains("touchy decode"), "{e}");
        // A task that returns a big vector whose bytes were never written by the argument.
        let back = p.apply(|n: usize| vec![0xEEu8; n], len).unwrap();
        assert!(back.len() == len && back.iter().all(|&b| b == 0xEE));
        assert!(p.apply(echo, bytes.clone()).unwrap() == bytes);
    }
    // A worker that dies with a spare is replaced; the next big round trip is right.
    let bytes = common::noise(300_000, 99);
    let e = p
        .apply(
            |v: Vec<u8>| -> Vec<u8> {
                if v.len() > 1 {
                    std::process::abort();
                }
                v
            },
            bytes.clone(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e}");
    let back = p.apply(common::flip, bytes.clone()).unwrap();
    assert!(back == common::flip(bytes));
    drop(p);
    std::thread::sleep(Duration::from_millis(1));
}

/// `(inode, size)` of every reused result segment (`memfd:shmpool-result`) process `pid` has
/// open, and the inodes of those it has mapped.
fn result_segments(pid: u32) -> (Vec<u64>, Vec<u64>) {
    use std::os::unix::fs::MetadataExt;
    let mut open = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(e.path())
            .is_ok_and(|l| l.to_string_lossy().contains("memfd:shmpool-result"))
            && let Ok(m) = std::fs::metadata(e.path())
        {
            open.push(m.ino());
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mapped = maps
        .lines()
        .filter(|l| l.contains("memfd:shmpool-result"))
        .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
        .collect();
    (open, mapped)
}

#[test]
fn a_worker_writes_its_big_results_into_one_segment_the_parent_keeps_mapped() {
    let _serial = common::serial();
    let _w = common::arm(120);
    let p = pool(1);
    let worker = p.worker_pids()[0];
    let me = std::process::id();
    let mut seen = None;
    // Sizes that grow and shrink: the segment grows once and is never made anew.
    for (i, len) in [300_000usize, 200_000, 500_000, 100_000, 500_000]
        .into_iter()
        .enumerate()
    {
        let bytes = common::noise(len, i as u64 + 40);
        let back = p.apply(common::flip, bytes.clone()).unwrap();
        assert!(back == common::flip(bytes), "round trip {i}");
        let (open, _) = result_segments(worker);
        assert_eq!(
            open.len(),
            1,
            "one reused result segment in the worker: {open:?}"
        );
        assert_eq!(
            *seen.get_or_insert(open[0]),
            open[0],
            "the same one every time"
        );
        // The parent keeps it mapped (no fd), and only it.
        let (fds, mapped) = result_segments(me);
        assert!(fds.is_empty(), "{fds:?}");
        assert_eq!(mapped, [open[0]]);
    }
    // A result over 16 arena sizes goes to a fresh sealed segment: the kept one does not grow.
    let size = |ino: u64| {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(format!("/proc/{worker}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .find(|m| m.ino() == ino)
            .map(|m| m.len())
    };
    let before = size(seen.unwrap());
    let huge = common::noise(16 * ARENA + 100, 9);
    assert!(p.apply(common::flip, huge.clone()).unwrap() == common::flip(huge));
    assert_eq!(size(seen.unwrap()), before);
    assert!(before.is_some_and(|b| b < 16 * ARENA as u64));
    // A worker that dies with the segment mapped in the parent: the mapping goes with it, the
    // replacement makes its own, and results stay right.
    let e = p
        .apply(
            |v: Vec<u8>| -> Vec<u8> {
                if v.len() > 1 {
                    std::process::abort();
                }
                v
            },
            common::noise(200_000, 1),
        )
        .unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e}");
    let bytes = common::noise(250_000, 2);
    assert!(p.apply(common::flip, bytes.clone()).unwrap() == common::flip(bytes));
    let (_, mapped) = result_segments(me);
    assert_eq!(mapped.len(), 1, "only the replacement's: {mapped:?}");
    assert_ne!(Some(mapped[0]), seen);
    drop(p);
    let (fds, mapped) = result_segments(me);
    assert!(fds.is_empty() && mapped.is_empty(), "{fds:?} {mapped:?}");
}

/// Workers killed while big results stream through their reused segments (one being copied
/// out by the parent, the next being written, or one in a fresh segment because the last is
/// still busy): every other result is whole and nothing is left behind.
#[test]
fn workers_killed_around_their_reused_result_segments_lose_only_their_task() {
    let _serial = common::serial();
    let _w = common::arm(300);
    let fds = common::fd_count();
    let p = pool(2);
    let mut pids = p.worker_pids();
    for round in 0..6u64 {
        let inputs: Vec<Vec<u8>> = (0..8)
            .map(|k| common::noise(150_000 + k * 20_000, round * 100 + k as u64))
            .collect();
        let results: Vec<_> = inputs
            .iter()
            .map(|v| p.apply_async(common::flip, v.clone()).unwrap())
            .collect();
        // Kill one worker mid-stream.
        common::kill(
            common::live_worker(|| p.worker_pids(), (round % 2) as usize),
            libc::SIGKILL,
        );
        let mut ok = 0;
        for (v, r) in inputs.iter().zip(results) {
            match r.get() {
                Ok(back) => {
                    assert!(back == common::flip(v.clone()), "round {round}");
                    ok += 1;
                }
                Err(Error::WorkerDied { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert!(ok >= 1, "round {round}: the other worker answered");
        pids.extend(p.worker_pids());
    }
    drop(p);
    assert!(
        common::eventually(Duration::from_secs(30), || common::fd_count() == fds),
        "fds: {} now, {fds} before",
        common::fd_count()
    );
    let (open, mapped) = result_segments(std::process::id());
    assert!(open.is_empty() && mapped.is_empty(), "{open:?} {mapped:?}");
    for pid in pids {
        assert!(
            common::eventually(Duration::from_secs(30), || !common::exists(pid)),
            "process {pid} outlived its pool"
        );
    }
}
