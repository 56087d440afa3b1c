//! The chunksize sweep over `shmpool`: what is measured, how many items, and the results' shape.
//!
//! # Sizing a measurement
//!
//! Each work level gets an item budget `n_max`: as many items as the single-process loop runs in
//! the target time (clamped to `[4 × most workers, max_items]`). A pool measurement uses all
//! `n_max` items when that is affordable at the throughput seen so far in its series (chunksizes
//! are swept in ascending order), and otherwise about `target` worth of items (at least two
//! chunks per worker). The first chunksize of a series has no throughput to go by, so a short
//! probe (growing ×4 from a few chunks) finds one. Chunksizes above `n_max` are skipped: they
//! would all be the same single chunk. The automatic modes use the item count of the series'
//! best chunksize, so "automatic as % of best" compares runs over the same items.
//! `tools/compare/chunksize_sweep.py` follows the same rules.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use shmpool::Pool;

use crate::work::{busy, calibrate_ns_per_iteration, iterations_for, pack};

/// What one measurement ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    /// A plain loop in one process.
    Single,
    /// `map` with an explicit chunksize.
    MapChunked,
    /// `map` with the automatic chunksize.
    MapAuto,
    /// `imap` with the automatic chunksize (`shmpool` only: Python's `imap` defaults to 1).
    ImapAuto,
    /// The best swept chunksize again, its runs interleaved with those of the automatic modes so
    /// that "automatic as % of best" compares runs that saw the same machine.
    #[serde(rename = "map_chunked_best")]
    BestAgain,
}

impl Mode {
    /// The name used in the CSV and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::MapChunked => "map_chunked",
            Mode::MapAuto => "map_auto",
            Mode::ImapAuto => "imap_auto",
            Mode::BestAgain => "map_chunked_best",
        }
    }
}

/// One measurement: `reps` timed runs of one configuration (also the Python script's JSON rows).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Measurement {
    /// `shmpool` or `python`.
    pub(crate) implementation: String,
    /// What ran.
    pub(crate) mode: Mode,
    /// Pool size (`None` for the single-process loop).
    pub(crate) workers: Option<usize>,
    /// Work per item asked for, in ns.
    pub(crate) work_ns: u64,
    /// Work per item the calibrated busy loop actually does, in ns.
    pub(crate) work_ns_actual: f64,
    /// Items per task (`None` where the pool chooses adaptively or there is no pool).
    pub(crate) chunksize: Option<usize>,
    /// Items in one run.
    pub(crate) items: usize,
    /// Median throughput over the runs, items/s.
    pub(crate) median: f64,
    /// Slowest run, items/s.
    pub(crate) min: f64,
    /// Fastest run, items/s.
    pub(crate) max: f64,
    /// Number of runs (at least the asked-for repetitions; more for short runs, see `repeat`).
    pub(crate) reps: u32,
}

/// What to sweep (already validated: every list non-empty, every number positive).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Chunksizes, ascending, no duplicates.
    pub(crate) chunksizes: Vec<usize>,
    /// Work per item, ns.
    pub(crate) work: Vec<u64>,
    /// Worker counts.
    pub(crate) workers: Vec<usize>,
    /// Runs per measurement.
    pub(crate) reps: u32,
    /// Aimed-for duration of one run.
    pub(crate) target: Duration,
    /// Most items in one run.
    pub(crate) max_items: usize,
}

impl Plan {
    /// Progress steps of the `shmpool` side: per work level, the single loop, then per worker
    /// count every chunksize and the two automatic modes. (Skipped chunksizes count as done.)
    pub(crate) fn shmpool_steps(&self) -> u64 {
        (self.work.len() * (1 + self.workers.len() * (self.chunksizes.len() + 2))) as u64
    }

    /// Progress steps of the Python side (no `imap_auto`).
    pub(crate) fn python_steps(&self) -> u64 {
        (self.work.len() * (1 + self.workers.len() * (self.chunksizes.len() + 1))) as u64
    }

    /// The item budget of a work level whose single-process throughput is `single_rate`.
    pub(crate) fn item_budget(&self, single_rate: f64) -> usize {
        let most_workers = self.workers.iter().copied().max().unwrap_or(1);
        let floor = (4 * most_workers).min(self.max_items);
        ((single_rate * self.target.as_secs_f64()) as usize).clamp(floor, self.max_items)
    }
}

/// Items for one pool run of `chunksize` on `workers`, given the budget and the throughput last
/// seen in this series (see the module docs).
pub(crate) fn items_for_run(
    n_max: usize,
    chunksize: usize,
    workers: usize,
    rate_hint: f64,
    target: Duration,
) -> usize {
    let t = target.as_secs_f64();
    if n_max as f64 / rate_hint <= 3.0 * t {
        return n_max;
    }
    let at_least = (2 * chunksize * workers).min(n_max);
    ((rate_hint * t) as usize).clamp(at_least, n_max)
}

/// Most runs of one measurement, as a multiple of the asked-for repetitions.
const MAX_REPS_FACTOR: u32 = 5;

/// Throughput statistics of at least `reps` runs of `run`, which returns the items it processed
/// and how long that took. Runs much shorter than `target` are noisy (one scheduler hiccup is a
/// large share of a 5 ms run), so while the runs so far add up to less than `target`, it runs
/// more, up to `MAX_REPS_FACTOR × reps`: the median of many short runs is as steady as that of a
/// few long ones, at the same cost in time.
fn repeat(
    reps: u32,
    target: Duration,
    mut run: impl FnMut() -> Result<(usize, Duration)>,
) -> Result<Stats> {
    let [s] = interleave(reps, target, [&mut run])?;
    Ok(s)
}

/// [`repeat`] for several contenders at once, their runs taken in turn (A B C A B C …) so that a
/// noisy stretch of the machine hits them all alike; the comparison between them is what counts.
fn interleave<const N: usize>(
    reps: u32,
    target: Duration,
    mut runs: [&mut dyn FnMut() -> Result<(usize, Duration)>; N],
) -> Result<[Stats; N]> {
    let mut rates: [Vec<f64>; N] =
        std::array::from_fn(|_| Vec::with_capacity(reps.min(64) as usize));
    let mut items = [0; N];
    let mut total = [Duration::ZERO; N];
    let mut rounds = 0;
    while rounds < reps
        || (total.iter().any(|&t| t < target) && rounds < MAX_REPS_FACTOR.saturating_mul(reps))
    {
        for (i, run) in runs.iter_mut().enumerate() {
            let (n, d) = run()?;
            items[i] = n;
            total[i] += d;
            rates[i].push(n as f64 / d.as_secs_f64().max(1e-9));
        }
        rounds += 1;
    }
    Ok(std::array::from_fn(|i| {
        let r = &mut rates[i];
        r.sort_by(f64::total_cmp);
        Stats {
            items: items[i],
            median: r[r.len() / 2],
            min: r[0],
            max: r[r.len() - 1],
            runs: rounds,
        }
    }))
}

/// Throughput of some runs.
#[derive(Debug, Clone, Copy)]
struct Stats {
    items: usize,
    /// How many runs the statistics are of.
    runs: u32,
    median: f64,
    min: f64,
    max: f64,
}

/// The single-process loop: maps [`busy`] over `buf` (cycled) into a `Vec` for at least
/// `target`, timing in growing passes so the clock is read rarely.
fn single_run(buf: &[u64], target: Duration) -> (usize, Duration) {
    let start = Instant::now();
    let mut done = 0;
    let mut step = 1;
    loop {
        // The sequential equivalent of `pool.map`: a Vec of results.
        let out: Vec<u64> = buf[..step].iter().map(|&x| busy(black_box(x))).collect();
        black_box(out);
        done += step;
        let elapsed = start.elapsed();
        if elapsed >= target {
            return (done, elapsed);
        }
        step = (step * 2).min(buf.len());
    }
}

/// Checks a pool's answers to `items` at three places (the full check is the correctness test
/// run before the sweep; this catches a run that returned the wrong thing or too little).
fn spot_check(items: &[u64], out: &[u64]) -> Result<()> {
    ensure!(
        out.len() == items.len(),
        "the pool returned {} results for {} items",
        out.len(),
        items.len()
    );
    for i in [0, items.len() / 2, items.len() - 1] {
        ensure!(
            out[i] == busy(items[i]),
            "the pool returned a wrong result for item {i}"
        );
    }
    Ok(())
}

/// One timed `map_chunked` run over `items`.
fn run_chunked(pool: &Pool, items: &[u64], chunksize: usize) -> Result<(usize, Duration)> {
    let t = Instant::now();
    let out = pool.map_chunked(busy, items.iter().copied(), chunksize)?;
    let d = t.elapsed();
    spot_check(items, &out)?;
    Ok((items.len(), d))
}

/// One timed `map` (automatic chunksize) run.
fn run_map_auto(pool: &Pool, items: &[u64]) -> Result<(usize, Duration)> {
    let t = Instant::now();
    let out = pool.map(busy, items.iter().copied())?;
    let d = t.elapsed();
    spot_check(items, &out)?;
    Ok((items.len(), d))
}

/// One timed `imap` (automatic chunksize) run, consumed in order.
fn run_imap_auto(pool: &Pool, items: &[u64]) -> Result<(usize, Duration)> {
    let t = Instant::now();
    let out = pool
        .imap(busy, items.iter().copied())
        .collect::<shmpool::Result<Vec<u64>>>()?;
    let d = t.elapsed();
    spot_check(items, &out)?;
    Ok((items.len(), d))
}

/// Finds a throughput for the first chunksize of a series: runs a few chunks, ×4 until a run
/// takes an eighth of the target or uses the whole budget.
fn probe(pool: &Pool, items: &[u64], chunksize: usize, target: Duration) -> Result<f64> {
    let mut n = (4 * chunksize * pool.processes()).max(64);
    loop {
        let n_now = n.min(items.len());
        let (done, d) = run_chunked(pool, &items[..n_now], chunksize)?;
        if d >= target / 8 || n_now == items.len() {
            return Ok(done as f64 / d.as_secs_f64().max(1e-9));
        }
        n = n_now * 4;
    }
}

/// The `shmpool` half of the sweep.
#[derive(Debug)]
pub(crate) struct ShmpoolSweep {
    /// The calibrated cost of one busy-loop round, ns.
    pub(crate) ns_per_iteration: f64,
    /// Every measurement, in the order taken.
    pub(crate) measurements: Vec<Measurement>,
}

/// Runs the `shmpool` half of the sweep; `step` is called once per progress step.
pub(crate) fn sweep_shmpool(plan: &Plan, step: &dyn Fn()) -> Result<ShmpoolSweep> {
    let ns_per_iteration = calibrate_ns_per_iteration();
    let mut pools = Vec::with_capacity(plan.workers.len());
    for &w in &plan.workers {
        let pool = Pool::new(w).with_context(|| format!("starting a pool of {w} workers"))?;
        // Correctness before timing: every answer of a small map matches the plain loop.
        let items: Vec<u64> = (0..1000).map(|i| pack(i % 17, i)).collect();
        let want: Vec<u64> = items.iter().map(|&x| busy(x)).collect();
        ensure!(
            pool.map_chunked(busy, items.iter().copied(), 7)? == want,
            "a pool of {w} workers computed wrong results"
        );
        pools.push(pool);
    }

    let mut out = Vec::new();
    for &work_ns in &plan.work {
        let iterations = iterations_for(work_ns, ns_per_iteration);
        let actual = f64::from(iterations) * ns_per_iteration;
        let row = |mode, workers, chunksize, s: Stats| Measurement {
            implementation: "shmpool".into(),
            mode,
            workers,
            work_ns,
            work_ns_actual: actual,
            chunksize,
            items: s.items,
            median: s.median,
            min: s.min,
            max: s.max,
            reps: s.runs,
        };

        let buf: Vec<u64> = (0..4096).map(|i| pack(iterations, i)).collect();
        let single = repeat(plan.reps, plan.target, || Ok(single_run(&buf, plan.target)))?;
        out.push(row(Mode::Single, None, None, single));
        step();

        let n_max = plan.item_budget(single.median);
        let items: Vec<u64> = (0..n_max).map(|i| pack(iterations, i as u32)).collect();
        for pool in &pools {
            let w = pool.processes();
            let mut hint = None;
            let mut best: Option<(Stats, usize)> = None;
            for &cs in &plan.chunksizes {
                if cs > n_max {
                    step();
                    continue;
                }
                let rate = match hint {
                    Some(r) => r,
                    None => probe(pool, &items, cs, plan.target)?,
                };
                let n = items_for_run(n_max, cs, w, rate, plan.target);
                let s = repeat(plan.reps, plan.target, || {
                    run_chunked(pool, &items[..n], cs)
                })
                .with_context(|| format!("map_chunked, {w} workers, chunksize {cs}"))?;
                hint = Some(s.median);
                if best.is_none_or(|(b, _)| s.median > b.median) {
                    best = Some((s, cs));
                }
                out.push(row(Mode::MapChunked, Some(w), Some(cs), s));
                step();
            }
            // The automatic modes run over the items of the best chunksize, their runs
            // interleaved with that chunksize's again.
            let (n, best_cs) = best.map_or((n_max, None), |(s, cs)| (s.items, Some(cs)));
            let mut best_again = || run_chunked(pool, &items[..n], best_cs.unwrap_or(1));
            let mut map_auto = || run_map_auto(pool, &items[..n]);
            let mut imap_auto = || run_imap_auto(pool, &items[..n]);
            let [b, m, i] = if best_cs.is_some() {
                interleave(
                    plan.reps,
                    plan.target,
                    [&mut best_again, &mut map_auto, &mut imap_auto],
                )
            } else {
                let [m, i] = interleave(plan.reps, plan.target, [&mut map_auto, &mut imap_auto])?;
                Ok([m, m, i])
            }
            .with_context(|| format!("automatic chunksize, {w} workers"))?;
            if best_cs.is_some() {
                out.push(row(Mode::BestAgain, Some(w), best_cs, b));
            }
            // No chunksize recorded: the automatic one changes from chunk to chunk.
            out.push(row(Mode::MapAuto, Some(w), None, m));
            step();
            out.push(row(Mode::ImapAuto, Some(w), None, i));
            step();
        }
    }
    for pool in pools {
        pool.close();
        pool.join()?;
    }
    Ok(ShmpoolSweep {
        ns_per_iteration,
        measurements: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_size_uses_the_budget_when_affordable() {
        let t = Duration::from_millis(100);
        // 1000 items at 1e6 items/s take 1 ms: use them all.
        assert_eq!(items_for_run(1000, 1, 2, 1e6, t), 1000);
        // 1e6 items at 1e5 items/s take 10 s: aim for 100 ms = 10_000 items.
        assert_eq!(items_for_run(1_000_000, 1, 2, 1e5, t), 10_000);
        // ...but never fewer than two chunks per worker.
        assert_eq!(items_for_run(1_000_000, 65536, 2, 1e5, t), 262_144);
        assert_eq!(items_for_run(100_000, 65536, 2, 1e3, t), 100_000);
    }

    #[test]
    fn item_budget_is_clamped() {
        let plan = Plan {
            chunksizes: vec![1],
            work: vec![0],
            workers: vec![1, 2],
            reps: 1,
            target: Duration::from_millis(100),
            max_items: 1 << 20,
        };
        assert_eq!(plan.item_budget(1e9), 1 << 20);
        assert_eq!(plan.item_budget(10_000.0), 1000);
        assert_eq!(plan.item_budget(1.0), 8);
        assert_eq!(plan.shmpool_steps(), 1 + 2 * 3);
        assert_eq!(plan.python_steps(), 1 + 2 * 2);
    }

    #[test]
    fn stats_take_median_min_and_max() {
        let mut runs = [3u64, 1, 2].into_iter();
        let s = repeat(3, Duration::from_millis(100), || {
            Ok((100, Duration::from_millis(runs.next().unwrap() * 100)))
        })
        .unwrap();
        assert_eq!(s.items, 100);
        assert_eq!(s.runs, 3);
        assert!((s.median - 500.0).abs() < 1e-6);
        assert!((s.min - 1000.0 / 3.0).abs() < 1e-6);
        assert!((s.max - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn short_runs_repeat_until_they_fill_the_target() {
        let ms = Duration::from_millis;
        // 10 ms runs against a 45 ms target: 5 runs (50 ms), not the 2 asked for.
        let mut calls = 0;
        let s = repeat(2, ms(45), || {
            calls += 1;
            Ok((10, ms(10)))
        })
        .unwrap();
        assert_eq!((s.runs, calls), (5, 5));
        // Never more than `MAX_REPS_FACTOR` times the repetitions asked for.
        let s = repeat(2, ms(1000), || Ok((10, ms(1)))).unwrap();
        assert_eq!(s.runs, 2 * MAX_REPS_FACTOR);
        // Long runs: exactly the repetitions asked for.
        let s = repeat(3, ms(10), || Ok((10, ms(50)))).unwrap();
        assert_eq!(s.runs, 3);
    }

    #[test]
    fn spot_check_catches_wrong_and_short_results() {
        let items: Vec<u64> = (0..10).map(|i| pack(3, i)).collect();
        let good: Vec<u64> = items.iter().map(|&x| busy(x)).collect();
        assert!(spot_check(&items, &good).is_ok());
        assert!(spot_check(&items, &good[..9]).is_err());
        let mut bad = good.clone();
        bad[5] ^= 1;
        assert!(spot_check(&items, &bad).is_err());
    }
}
