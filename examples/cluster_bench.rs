//! Measures the cluster pool (feature `mpi`) against the local pool; BENCHMARKS.md has the
//! commands and figures.
//!
//! * `cluster_bench local-rtt N`: N `apply`s one after another on a local `Pool` of 1 worker.
//! * `mpirun -n 2 cluster_bench rtt N`: N `apply`s from rank 0 (driving only) to rank 1 (one
//!   worker): the round trip rank 0 → rank 1 → rank 0.
//! * `cluster_bench local-map WORKERS ITEMS SPIN`: `map` over ITEMS items of SPIN rounds of
//!   integer mixing each (about 1 ns a round), on a local pool of WORKERS.
//! * `mpirun -n K cluster_bench map WORKERS ITEMS SPIN`: the same map over K ranks of WORKERS
//!   each (rank 0 works too).
//!
//! Each prints one line: the time per task or the items per second, best of 5 runs.

use std::time::Instant;

use shmpool::Pool;
use shmpool::cluster::Cluster;

fn work(x: (u64, u32)) -> u64 {
    let (mut v, spin) = x;
    for _ in 0..spin {
        v = (v ^ (v >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    v
}

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    (best, last.expect("runs > 0"))
}

fn arg(args: &[String], i: usize, default: u64) -> u64 {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("rtt", String::as_str);
    match mode {
        "local-rtt" => {
            let n = arg(&args, 2, 20_000);
            let pool = Pool::new(1)?;
            pool.apply(|x: u64| x + 1, 0)?;
            let (s, _) = best(5, || {
                for i in 0..n {
                    assert_eq!(pool.apply(|x: u64| x + 1, i).expect("apply"), i + 1);
                }
            });
            println!("local apply round trip: {:.2} us", s * 1e6 / n as f64);
        }
        "rtt" => {
            let n = arg(&args, 2, 20_000);
            let cluster = Cluster::builder()
                .processes_per_rank(1)
                .rank0_processes(0)
                .start()?;
            cluster.apply(|x: u64| x + 1, 0)?;
            let (s, _) = best(5, || {
                for i in 0..n {
                    assert_eq!(cluster.apply(|x: u64| x + 1, i).expect("apply"), i + 1);
                }
            });
            println!(
                "cluster apply round trip rank 0 -> rank 1: {:.2} us",
                s * 1e6 / n as f64
            );
        }
        "local-map" | "map" => {
            let workers = arg(&args, 2, 1) as usize;
            let items = arg(&args, 3, 200_000);
            let spin = arg(&args, 4, 10_000) as u32;
            let input = || (0..items).map(move |i| (i, spin));
            let want: u64 = input().map(work).fold(0, u64::wrapping_add);
            let (s, label) = if mode == "map" {
                let cluster = Cluster::builder().processes_per_rank(workers).start()?;
                let label = format!("cluster {} ranks x {workers}", cluster.ranks());
                let (s, got) = best(5, || cluster.map(work, input()).expect("map"));
                assert_eq!(got.into_iter().fold(0, u64::wrapping_add), want);
                (s, label)
            } else {
                let pool = Pool::new(workers)?;
                let (s, got) = best(5, || pool.map(work, input()).expect("map"));
                assert_eq!(got.into_iter().fold(0, u64::wrapping_add), want);
                (s, format!("local pool x {workers}"))
            };
            println!(
                "{label}: map of {items} items x {spin} rounds: {:.3} s, {:.0} items/s",
                s,
                items as f64 / s
            );
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    Ok(())
}
