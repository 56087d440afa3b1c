//! `map_chunks` over a `SharedVec<u8>` cut into many chunks: median wall time of `reps` calls
//! and how far the parent's peak RSS rose over them, to compare builds (one task per chunk
//! queued at the call, before d2ab8a5; a window of ~20 per worker since).
//!
//! ```text
//! cargo run --release --example chunk_feed -- CHUNK_LEN INPUT_BYTES REPS
//! cargo run --release --example chunk_feed -- 256 67108864 5   # 262,144 chunks
//! ```
//!
//! Every call's results are checked against a single-thread computation.

use shmpool::{Pool, SharedVec};

/// The process's peak resident set (`VmHWM`) in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sum(s: &[u8]) -> u64 {
    s.iter().map(|&b| u64::from(b)).sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut next = |what: &str| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args
            .next()
            .ok_or(format!(
                "usage: chunk_feed CHUNK_LEN INPUT_BYTES REPS (no {what})"
            ))?
            .parse()?)
    };
    let (chunk, bytes, reps) = (
        next("CHUNK_LEN")?,
        next("INPUT_BYTES")?,
        next("REPS")?.max(1),
    );
    let pool = Pool::new(2)?;
    let v: SharedVec<u8> = (0..bytes).map(|i| i as u8).collect();
    let want: Vec<u64> = v.chunks(chunk.max(1)).map(sum).collect();
    let before = peak_kib();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let got = pool.map_chunks(&v, chunk, sum)?;
        times.push(t.elapsed().as_secs_f64());
        if got != want {
            return Err("map_chunks gave wrong sums".into());
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "chunk {chunk} x {}: median {:.1} ms, min {:.1} ms, peak RSS +{} KiB",
        want.len(),
        times[reps / 2] * 1e3,
        times[0] * 1e3,
        peak_kib() - before
    );
    Ok(())
}
