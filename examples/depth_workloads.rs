//! Workloads where the dispatcher's per-worker queue depth matters: a heterogeneous stream (~1.5%
//! of tasks 20-100 ms, the rest 10-50 µs) through `map` at a few chunksizes and through
//! `imap_unordered`, uniform tasks of 5 ms and of 300 µs, and the `apply` round trip. Two
//! workers. Prints one line per workload: `name seconds` (wall time of the second of two runs in
//! the same pool, so the pool has learned its task times), and `apply_us` (median round trip).
//!
//! ```text
//! cargo run --release --example depth_workloads [-- NAME...]
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use shmpool::Pool;

/// Busy-waits `ns` nanoseconds (work that holds a core, like real computation).
fn spin(ns: u64) -> u64 {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < Duration::from_nanos(ns) {
        x = black_box(x.wrapping_add(1));
    }
    x
}

/// Task time of item `i` of the heterogeneous stream: 1.5% of 20-100 ms, the rest 10-50 µs.
fn hetero_ns(i: u64) -> u64 {
    let h = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let h = h ^ (h >> 31);
    if h % 1000 < 15 {
        20_000_000 + (h >> 20) % 80_000_000
    } else {
        10_000 + (h >> 20) % 40_000
    }
}

fn hetero(i: u64) -> u64 {
    spin(hetero_ns(i))
}

fn five_ms(_: u64) -> u64 {
    spin(5_000_000)
}

fn three_hundred_us(_: u64) -> u64 {
    spin(300_000)
}

fn inc(x: u64) -> u64 {
    x + 1
}

const HETERO_ITEMS: u64 = 1500;

fn timed(name: &str, mut run: impl FnMut(&Pool)) {
    let pool = Pool::new(2).expect("pool");
    run(&pool);
    let t = Instant::now();
    run(&pool);
    println!("{name} {:.4}", t.elapsed().as_secs_f64());
}

fn main() {
    let want: Vec<String> = std::env::args().skip(1).collect();
    let on = |n: &str| want.is_empty() || want.iter().any(|w| w == n);
    for c in [1usize, 8, 32] {
        let name = format!("hetero_map_c{c}");
        if on(&name) {
            timed(&name, |p| {
                black_box(p.map_chunked(hetero, 0..HETERO_ITEMS, c).expect("map"));
            });
        }
    }
    if on("hetero_map_auto") {
        timed("hetero_map_auto", |p| {
            black_box(p.map(hetero, 0..HETERO_ITEMS).expect("map"));
        });
    }
    if on("hetero_imap_unordered") {
        timed("hetero_imap_unordered", |p| {
            for r in p.imap_unordered(hetero, 0..HETERO_ITEMS) {
                black_box(r.expect("task"));
            }
        });
    }
    if on("uniform_5ms") {
        timed("uniform_5ms", |p| {
            black_box(p.map_chunked(five_ms, 0..200u64, 1).expect("map"));
        });
    }
    if on("uniform_300us") {
        timed("uniform_300us", |p| {
            black_box(p.map_chunked(three_hundred_us, 0..2000u64, 1).expect("map"));
        });
    }
    if on("apply_us") {
        let pool = Pool::new(2).expect("pool");
        let mut v: Vec<f64> = (0..3000u64)
            .map(|i| {
                let t = Instant::now();
                black_box(pool.apply(inc, i).expect("apply"));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        v.sort_by(f64::total_cmp);
        println!("apply_us {:.2}", v[v.len() / 2]);
    }
}
