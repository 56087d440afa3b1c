//! Throughput of byte-vector payloads: `map` over 1 MiB `Vec<u8>` items, which cross as raw bytes
//! (one copy each way), side by side with the same bytes wrapped in a struct that serde encodes
//! one `u8` at a time (the path every `Vec<u8>` took before), and `apply` round trips of one
//! large vector: 48 MiB (inside the default 64 MiB arenas) and 300 MiB (beyond them: a segment
//! of its own each way).
//!
//! ```text
//! cargo run --release --example payload_bytes [-- --mib 256 --big-mib 48 --huge-mib 300 --no-floor]
//! ```
//!
//! `--no-floor` skips the in-process floor before each size's round trips: the floor frees
//! four vectors of that size just before the first round trip, which could make the first round
//! trip's fresh memory cheaper to touch (memory freed a moment ago, not long ago). Measured, it
//! made no difference (first 300 MiB round trip, medians 677 ms with the floor, 723 ms
//! without, six processes each: BENCHMARKS.md, "First touch of a round trip's fresh memory",
//! set 8); the flag is kept to check that again.

use std::error::Error;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shmpool::Pool;

/// The same bytes, but through serde's generic sequence path.
#[derive(Serialize, Deserialize)]
struct ViaSerde(Vec<u8>);

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut mib = 256usize;
    let mut big_mib = 48usize;
    let mut huge_mib = 300usize;
    let mut with_floor = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mib" => mib = args.next().ok_or("--mib needs a value")?.parse()?,
            "--big-mib" => big_mib = args.next().ok_or("--big-mib needs a value")?.parse()?,
            "--huge-mib" => huge_mib = args.next().ok_or("--huge-mib needs a value")?.parse()?,
            "--no-floor" => with_floor = false,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let pool = Pool::new(2)?;
    let item: Vec<u8> = (0..1usize << 20).map(|i| (i * 31) as u8).collect();
    let total = mib << 20;
    for round in 0..2 {
        // Raw path: argument in, its length and a checksum byte out.
        let items: Vec<Vec<u8>> = (0..mib).map(|_| item.clone()).collect();
        let t = Instant::now();
        let out = pool.map(|v: Vec<u8>| v.len() as u64 + u64::from(v[12345]), items)?;
        let raw_in = t.elapsed().as_secs_f64();
        assert!(out.iter().all(|&n| n == (1 << 20) + u64::from(item[12345])));
        // Raw path both ways: the vector comes back.
        let items: Vec<Vec<u8>> = (0..mib).map(|_| item.clone()).collect();
        let t = Instant::now();
        let out = pool.map(|v: Vec<u8>| v, items)?;
        let raw_rt = t.elapsed().as_secs_f64();
        assert!(out.iter().all(|v| *v == item));
        drop(out);
        // Serde's per-byte path, one way.
        let items: Vec<ViaSerde> = (0..mib).map(|_| ViaSerde(item.clone())).collect();
        let t = Instant::now();
        let out = pool.map(|v: ViaSerde| v.0.len() as u64, items)?;
        let serde_in = t.elapsed().as_secs_f64();
        assert!(out.iter().all(|&n| n == 1 << 20));
        println!(
            "round {round}: map of {mib} x 1 MiB Vec<u8>: raw in {:.2} GB/s, raw round trip {:.2} GB/s (of input), via serde in {:.2} GB/s; raw/serde {:.1}x",
            gbps(total, raw_in),
            gbps(total, raw_rt),
            gbps(total, serde_in),
            serde_in / raw_in
        );
    }
    for mib in [big_mib, huge_mib] {
        let big: Vec<u8> = (0..mib << 20).map(|i| (i * 7) as u8).collect();
        // The floor on this machine: the four copies a round trip makes (into the argument's
        // segment, the worker's vector, the result's segment, the parent's vector), here as
        // four plain copies into fresh vectors in one process.
        if with_floor {
            let t = Instant::now();
            let mut v = big.clone();
            for _ in 0..3 {
                v = std::hint::black_box(v.clone());
            }
            let floor = t.elapsed().as_secs_f64();
            drop(v);
            println!(
                "floor for {mib} MiB: four copies into fresh Vecs in one process: {:.1} ms",
                floor * 1e3
            );
        }
        for _ in 0..3 {
            let arg = big.clone();
            let t = Instant::now();
            let back = pool.apply(|v: Vec<u8>| v, arg)?;
            let secs = t.elapsed().as_secs_f64();
            assert!(back == big);
            drop(back);
            println!(
                "apply round trip of one {mib} MiB Vec<u8> (argument and result): {:.1} ms ({:.2} GB/s each way)",
                secs * 1e3,
                gbps(mib << 20, secs / 2.0)
            );
        }
    }
    Ok(())
}
