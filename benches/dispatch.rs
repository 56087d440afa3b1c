//! Dispatch overhead (issue 2): shmpool vs a direct call (single process) vs rayon threads.
//!
//! Groups, each running every contender on the same input in one run:
//!
//! * `apply_round_trip`: one `apply(|x: u64| x + 1, x)`, vs calling the closure directly, vs a
//!   rayon `ThreadPool::install` round trip;
//! * `apply_async_pipelined`: submit 10 000 `apply_async`, then get all (vs a loop of direct
//!   calls, vs 10 000 `rayon::Scope::spawn`);
//! * `map_trivial`: `map` of 1 000 000 `u64` with `|x| x.wrapping_mul(3)` at the automatic
//!   chunksize and at chunksizes 1 000 and 100 000, vs a single-process iterator and rayon
//!   `par_iter`.
//!
//! Python's `multiprocessing.Pool` figures for the same work come from
//! `tools/compare/pool_compare.py`; `cargo run --release --example dispatch_compare` prints all
//! four side by side with ratios. Run with `cargo bench --bench dispatch`; `cargo test --benches`
//! runs each routine once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use shmpool::Pool;

#[path = "../examples/common/dispatch_work.rs"]
mod dispatch_work;
use dispatch_work::{
    CHUNKSIZES, MAP_ITEMS, PIPELINED, PROCESSES, check, inc, rayon_pipelined, triple,
};

fn apply_round_trip(c: &mut Criterion, pool: &Pool, rayon_pool: &rayon::ThreadPool) {
    let mut g = c.benchmark_group("apply_round_trip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("shmpool_apply", |b| {
        b.iter(|| pool.apply(|x: u64| x + 1, black_box(7u64)).expect("apply"));
    });
    g.bench_function("single_direct_call", |b| {
        b.iter(|| black_box(|x: u64| x + 1)(black_box(7u64)));
    });
    g.bench_function("rayon_install", |b| {
        b.iter(|| rayon_pool.install(|| inc(black_box(7u64))));
    });
    g.finish();
}

fn apply_async_pipelined(c: &mut Criterion, pool: &Pool, rayon_pool: &rayon::ThreadPool) {
    let mut g = c.benchmark_group("apply_async_pipelined");
    g.throughput(Throughput::Elements(PIPELINED));
    g.bench_function("shmpool_apply_async", |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..PIPELINED)
                .map(|i| pool.apply_async(|x: u64| x + 1, i).expect("apply_async"))
                .collect();
            handles
                .into_iter()
                .map(|h| h.get().expect("get"))
                .fold(0u64, u64::wrapping_add)
        });
    });
    g.bench_function("single_loop", |b| {
        b.iter(|| {
            (0..PIPELINED)
                .map(|i| black_box(inc)(black_box(i)))
                .collect::<Vec<u64>>()
        });
    });
    g.bench_function("rayon_scope_spawn", |b| {
        b.iter(|| rayon_pipelined(rayon_pool));
    });
    g.finish();
}

fn map_trivial(c: &mut Criterion, pool: &Pool, rayon_pool: &rayon::ThreadPool, items: &[u64]) {
    let mut g = c.benchmark_group("map_trivial");
    g.throughput(Throughput::Elements(MAP_ITEMS));
    g.bench_function("shmpool_map_auto", |b| {
        b.iter(|| {
            pool.map(|x: u64| x.wrapping_mul(3), items.iter().copied())
                .expect("map")
        });
    });
    for cs in CHUNKSIZES {
        g.bench_with_input(
            BenchmarkId::new("shmpool_map_chunked", cs),
            &cs,
            |b, &cs| {
                b.iter(|| {
                    pool.map_chunked(|x: u64| x.wrapping_mul(3), items.iter().copied(), cs)
                        .expect("map_chunked")
                });
            },
        );
    }
    g.bench_function("single_iter", |b| {
        b.iter(|| {
            black_box(items)
                .iter()
                .map(|&x| triple(x))
                .collect::<Vec<u64>>()
        });
    });
    g.bench_function("rayon_par_iter", |b| {
        b.iter(|| {
            rayon_pool.install(|| {
                black_box(items)
                    .par_iter()
                    .map(|&x| triple(x))
                    .collect::<Vec<u64>>()
            })
        });
    });
    g.finish();
}

fn main() {
    // Fork the workers first, while this process has no other thread (no rayon pool yet).
    let pool = Pool::new(PROCESSES).expect("Pool::new");
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .expect("rayon pool");
    let items: Vec<u64> = (0..MAP_ITEMS).collect();
    check(&pool, &rayon_pool, &items).expect("a contender gave a wrong answer");

    // Small samples keep the whole run under ~2 minutes on a shared 2-core machine; command-line
    // flags (`--sample-size`, `--measurement-time`, a name filter, ...) still override these.
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    apply_round_trip(&mut c, &pool, &rayon_pool);
    apply_async_pipelined(&mut c, &pool, &rayon_pool);
    map_trivial(&mut c, &pool, &rayon_pool, &items);
    c.final_summary();

    pool.close();
    pool.join().expect("join");
}
