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

/// `bytes` in a vector of capacity `cap` (a vector with a recognisable capacity).
fn with_capacity(bytes: &[u8], cap: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(cap);
    v.extend_from_slice(bytes);
    v
}

fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

fn flip(v: Vec<u8>) -> Vec<u8> {
    v.iter().rev().map(|b| b ^ 0x5A).collect()
}

#[test]
fn the_parent_decodes_a_big_result_into_the_arguments_allocation() {
    let _w = common::arm(120);
    let p = pool(1);
    // In the arena (40 KiB) and in a segment of its own (300 KiB).
    for len in [40 * 1024, 300 * 1024] {
        let bytes = common::noise(len, len as u64);
        let back = p.apply(flip, with_capacity(&bytes, len + 999)).unwrap();
        assert_eq!(back, flip(bytes.clone()));
        assert_eq!(
            back.capacity(),
            len + 999,
            "the argument's allocation, reused (a fresh one would hold exactly {len})"
        );
        // A spare more than twice the result's length is not handed out: the result is fresh.
        let back = p.apply(flip, with_capacity(&bytes, 2 * len + 1)).unwrap();
        assert_eq!(back, flip(bytes.clone()));
        assert_eq!(back.capacity(), len);
        // Nor for a small result (under an eighth of the arena).
        let small = p
            .apply(
                |v: Vec<u8>| v[..100].to_vec(),
                with_capacity(&bytes, len + 1),
            )
            .unwrap();
        assert_eq!((small.len(), small.capacity()), (100, 100));
        assert_eq!(small, bytes[..100]);
    }
    // `apply_async_with_callback`: the callback's value gets the spare, `get`'s a fresh one.
    let bytes = common::noise(100_000, 7);
    let (tx, rx) = std::sync::mpsc::channel();
    let r = p
        .apply_async_with_callback(echo, with_capacity(&bytes, 100_123), move |r| {
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
        let arg = with_capacity(&bytes, len + extra);
        let back = if i % 3 == 0 {
            let b: Box<[u8]> = p
                .apply(|v: Vec<u8>| flip(v).into_boxed_slice(), arg)
                .unwrap();
            b.into_vec()
        } else {
            p.apply(flip, arg).unwrap()
        };
        assert!(back == flip(bytes.clone()), "call {i}, {len} bytes");
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
                            let arg = with_capacity(&bytes, len + k * 1000);
                            (k, p.apply_async(flip, arg).unwrap())
                        })
                        .collect();
                    for (k, r) in results {
                        let back = r.get().unwrap();
                        assert!(back == flip(bytes.clone()), "thread {t} call {i}.{k}");
                        assert!(back.capacity() <= 2 * len);
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
    let _w = common::arm(300);
    let p = pool(1);
    for i in 0..6u64 {
        let len = 150_000 + i as usize * 10_000;
        let bytes = common::noise(len, i);
        assert!(p.apply(flip, bytes.clone()).unwrap() == flip(bytes.clone()));
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
    let back = p.apply(flip, bytes.clone()).unwrap();
    assert!(back == flip(bytes));
    drop(p);
    std::thread::sleep(Duration::from_millis(1));
}
