//! The synthetic task of the benchmarks: a busy loop of real arithmetic, calibrated in ns.

use std::hint::black_box;
use std::time::Instant;

/// Packs an iteration count and a seed into the single `u64` argument of [`busy`].
///
/// `iterations` must fit in 32 bits (the work-level parser caps it well below that).
pub(crate) fn pack(iterations: u32, seed: u32) -> u64 {
    (u64::from(iterations) << 32) | u64::from(seed)
}

/// The task: `arg >> 32` rounds of xorshift + multiply on a state seeded from the low 32 bits.
///
/// Each round depends on the previous one, so the compiler can neither vectorize nor skip it,
/// and the cost per round is stable (a few cycles). It is a `fn` item so the pool can send it.
pub(crate) fn busy(arg: u64) -> u64 {
    let iterations = arg >> 32;
    // `| 1` keeps the state nonzero: xorshift and multiplication by an odd number both map
    // nonzero to nonzero, so the loop never collapses to a constant.
    let mut x = (arg & 0xffff_ffff) | 1;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

/// Measures this machine's cost of one round of [`busy`], in ns (the fastest of a few runs).
pub(crate) fn calibrate_ns_per_iteration() -> f64 {
    // The fastest of many short runs (~1 ms each): a run shorter than a scheduler time slice is
    // rarely preempted, so a busy machine does not inflate the estimate (and shrink the work).
    const ROUNDS: u32 = 1 << 18;
    let mut best = f64::INFINITY;
    for seed in 0..25 {
        let t = Instant::now();
        black_box(busy(black_box(pack(ROUNDS, seed))));
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(ROUNDS));
    }
    best.max(1e-3)
}

/// The number of rounds of [`busy`] that take `work_ns` at `ns_per_iteration`.
pub(crate) fn iterations_for(work_ns: u64, ns_per_iteration: f64) -> u32 {
    let n = (work_ns as f64 / ns_per_iteration).round();
    n.clamp(0.0, f64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_depends_on_iterations_and_seed() {
        assert_eq!(busy(pack(0, 6)), 7);
        assert_ne!(busy(pack(10, 6)), busy(pack(11, 6)));
        assert_ne!(busy(pack(10, 6)), busy(pack(10, 8)));
        assert_eq!(busy(pack(10, 6)), busy(pack(10, 6)));
    }

    #[test]
    fn iterations_round_and_saturate() {
        assert_eq!(iterations_for(0, 1.5), 0);
        assert_eq!(iterations_for(100, 2.0), 50);
        assert_eq!(iterations_for(u64::MAX, 1e-3), u32::MAX);
    }
}
