//! The issue-2 dispatch workload shared by `dispatch_compare` and `benches/dispatch.rs`, so their
//! figures measure the same work, and its correctness check. Included with `#[path]` (each is its
//! own crate).

use std::hint::black_box;

use rayon::prelude::*;
use shmpool::Pool;

/// Worker processes (and rayon threads): the machines have 2 cores.
pub(crate) const PROCESSES: usize = 2;
/// Tasks submitted before the first `get` in the pipelined `apply_async` measurement.
pub(crate) const PIPELINED: u64 = 10_000;
/// Items in the `map` measurements.
pub(crate) const MAP_ITEMS: u64 = 1_000_000;
/// The explicit chunksizes `map_chunked` is measured at.
pub(crate) const CHUNKSIZES: [usize; 2] = [1_000, 100_000];

/// The `apply` task.
pub(crate) fn inc(x: u64) -> u64 {
    x + 1
}

/// The `map` task.
pub(crate) fn triple(x: u64) -> u64 {
    x.wrapping_mul(3)
}

/// One `Scope::spawn` per task, each writing its own slot: rayon's nearest to `apply_async`.
pub(crate) fn rayon_pipelined(rayon_pool: &rayon::ThreadPool) -> Vec<u64> {
    let mut out = vec![0u64; PIPELINED as usize];
    rayon_pool.scope(|s| {
        for (i, slot) in out.iter_mut().enumerate() {
            s.spawn(move |_| *slot = inc(black_box(i as u64)));
        }
    });
    out
}

/// Every contender gives the right answer, checked once before anything is timed (this also warms
/// up workers, arenas and threads). `items` are the `map` input.
pub(crate) fn check(
    pool: &Pool,
    rayon_pool: &rayon::ThreadPool,
    items: &[u64],
) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{what} gave a wrong answer"));
    if pool.apply(inc, 41).map_err(|e| e.to_string())? != 42 || rayon_pool.install(|| inc(41)) != 42
    {
        return fail("apply");
    }
    let expected_inc: Vec<u64> = (0..PIPELINED).map(inc).collect();
    let handles = (0..PIPELINED)
        .map(|i| pool.apply_async(inc, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let got = handles
        .into_iter()
        .map(|h| h.get())
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|e| e.to_string())?;
    if got != expected_inc || rayon_pipelined(rayon_pool) != expected_inc {
        return fail("apply_async");
    }
    let expected: Vec<u64> = items.iter().map(|&x| triple(x)).collect();
    if pool
        .map(triple, items.iter().copied())
        .map_err(|e| e.to_string())?
        != expected
    {
        return fail("map");
    }
    for cs in CHUNKSIZES {
        let got = pool
            .map_chunked(triple, items.iter().copied(), cs)
            .map_err(|e| e.to_string())?;
        if got != expected {
            return fail(&format!("map_chunked({cs})"));
        }
    }
    let par: Vec<u64> = rayon_pool.install(|| items.par_iter().map(|&x| triple(x)).collect());
    if par != expected {
        return fail("rayon par_iter");
    }
    Ok(())
}
