//! Throughput of byte-vector payloads: `map` over 1 MiB `Vec<u8>` items, which cross as raw bytes
//! (one copy each way), side by side with the same bytes wrapped in a struct that serde encodes
//! one `u8` at a time (the path every `Vec<u8>` took before), and an `apply` round trip of one
//! large vector.
//!
//! ```text
//! cargo run --release --example payload_bytes [-- --mib 256 --big-mib 48]
//! ```

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
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mib" => mib = args.next().ok_or("--mib needs a value")?.parse()?,
            "--big-mib" => big_mib = args.next().ok_or("--big-mib needs a value")?.parse()?,
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
    let big: Vec<u8> = (0..big_mib << 20).map(|i| (i * 7) as u8).collect();
    for _ in 0..2 {
        let t = Instant::now();
        let back = pool.apply(|v: Vec<u8>| v, big.clone())?;
        let secs = t.elapsed().as_secs_f64();
        assert!(back == big);
        println!(
            "apply round trip of one {big_mib} MiB Vec<u8> (argument and result): {:.1} ms",
            secs * 1e3
        );
    }
    Ok(())
}
