//! How long dropping a pool takes, on a quiet machine and with every core busy.
//!
//! Builds a 2-worker pool, runs one `apply`, then times the `drop` (which terminates the pool:
//! kills and reaps every worker and the fork server), `--reps` times, and prints the median and
//! the 90th percentile. Then the same with one spinning thread per CPU in this process, which is
//! where a lost wake-up used to show: the drop then waited out the collector's 100 ms futex
//! timeout instead of being woken by the fork server's exit.
//!
//! ```text
//! cargo run --release --example drop_latency [-- --reps 150]
//! ```

#![allow(clippy::disallowed_types)] // the spinners' stop flag is a plain std atomic

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shmpool::Pool;

fn measure(reps: usize) -> Result<Vec<Duration>, Box<dyn Error>> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let pool = Pool::new(2)?;
        assert_eq!(pool.apply(|x: u64| x + 1, 41)?, 42);
        let t = Instant::now();
        drop(pool);
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times)
}

fn report(label: &str, times: &[Duration]) {
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "{label:<24} median {:>8.2} ms   p90 {:>8.2} ms   max {:>8.2} ms   ({} drops)",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
        times.len()
    );
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut reps = 150;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().ok_or("--reps needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let quiet = measure(reps)?;
    report("quiet", &quiet);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    let busy = measure(reps);
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    report(&format!("all {cpus} cores busy"), &busy?);
    Ok(())
}
