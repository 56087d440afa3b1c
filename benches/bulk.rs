//! Bulk throughput (issue 3): `map_chunks` over a `SharedVec<u8>` and over a page-cached
//! `MappedFile`, vs a single thread and rayon `par_chunks` over the same mapping.
//!
//! Groups `bulk_sha256` and `bulk_hash64` (SHA-256 per chunk via `sha2`, and a fast 64-bit hash
//! per chunk) run every contender on the same 1 GiB input at chunk lengths 64 KiB, 1 MiB and
//! 16 MiB, with `Throughput::Bytes`. Results are checked against a single thread before anything
//! is timed. `examples/bulk_compare.rs` prints the full sweep (64 KiB to 16 MiB) with ratios and
//! Python's `multiprocessing.Pool` beside it.
//!
//! Run with `cargo bench --bench bulk`; `cargo test --benches` runs each routine once over a
//! 16 MiB input instead.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use shmpool::{BulkInput, MappedFile, Payload, Pool, SharedVec};

/// Worker processes (and rayon threads): the machines have 2 cores.
const PROCESSES: usize = 2;
const CHUNKS: [usize; 3] = [64 << 10, 1 << 20, 16 << 20];

fn sha256(chunk: &[u8]) -> [u8; 32] {
    Sha256::digest(chunk).into()
}

#[path = "../examples/common/hash64.rs"]
mod hash64;
use hash64::hash64;

/// Every contender agrees with a single thread, checked once before timing.
fn check<I, F, R>(pool: &Pool, rayon_pool: &rayon::ThreadPool, input: &I, chunk: usize, f: F)
where
    I: BulkInput<Elem = u8> + std::ops::Deref<Target = [u8]> + Sync,
    F: Fn(&[u8]) -> R + Copy + Send + Sync + 'static,
    R: Payload + PartialEq + std::fmt::Debug + Send,
{
    let want: Vec<R> = input.chunks(chunk).map(f).collect();
    assert_eq!(pool.map_chunks(input, chunk, f).expect("map_chunks"), want);
    let par: Vec<R> = rayon_pool.install(|| input.par_chunks(chunk).map(f).collect());
    assert_eq!(par, want);
}

#[allow(clippy::too_many_arguments)]
fn contenders<I, F, R>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pool: &Pool,
    rayon_pool: &rayon::ThreadPool,
    name: &str,
    input: &I,
    chunk: usize,
    f: F,
) where
    I: BulkInput<Elem = u8> + std::ops::Deref<Target = [u8]> + Sync,
    F: Fn(&[u8]) -> R + Copy + Send + Sync + 'static,
    R: Payload + PartialEq + std::fmt::Debug + Send,
{
    check(pool, rayon_pool, input, chunk, f);
    g.bench_with_input(
        BenchmarkId::new(format!("shmpool_{name}"), chunk),
        &chunk,
        |b, &c| b.iter(|| pool.map_chunks(input, c, f).expect("map_chunks")),
    );
    g.bench_with_input(
        BenchmarkId::new(format!("single_{name}"), chunk),
        &chunk,
        |b, &c| b.iter(|| black_box(&**input).chunks(c).map(f).collect::<Vec<R>>()),
    );
    g.bench_with_input(
        BenchmarkId::new(format!("rayon_{name}"), chunk),
        &chunk,
        |b, &c| {
            b.iter(|| {
                rayon_pool.install(|| black_box(&**input).par_chunks(c).map(f).collect::<Vec<R>>())
            })
        },
    );
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let bytes: usize = if bench_mode { 1 << 30 } else { 16 << 20 };
    // Fork the workers first, while this process is small and has no other thread.
    let pool = Pool::new(PROCESSES).expect("Pool::new");
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .expect("rayon pool");

    let mut v = SharedVec::<u8>::zeroed(bytes).expect("SharedVec");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for w in bytemuck::cast_slice_mut::<u8, u64>(&mut v[..]) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *w = x;
    }
    let path = std::env::temp_dir().join(format!("shmpool-bench-bulk-{}", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&v))
        .expect("write the bench file");
    // SAFETY: this bench wrote the file and nothing modifies it until it is removed below.
    let file = unsafe { MappedFile::open(&path) }.expect("MappedFile::open");
    // Page-cache it and fault it into this process's mapping (rayon and single read it there).
    assert_eq!(hash64(&file), hash64(&v));

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("bulk_sha256");
        g.throughput(Throughput::Bytes(bytes as u64));
        for chunk in CHUNKS {
            contenders(&mut g, &pool, &rayon_pool, "vec", &v, chunk, sha256);
            contenders(&mut g, &pool, &rayon_pool, "file", &file, chunk, sha256);
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("bulk_hash64");
        g.throughput(Throughput::Bytes(bytes as u64));
        for chunk in CHUNKS {
            contenders(&mut g, &pool, &rayon_pool, "vec", &v, chunk, hash64);
            contenders(&mut g, &pool, &rayon_pool, "file", &file, chunk, hash64);
        }
        g.finish();
    }
    c.final_summary();

    drop(file);
    let _ = std::fs::remove_file(&path);
    pool.close();
    pool.join().expect("join");
}
