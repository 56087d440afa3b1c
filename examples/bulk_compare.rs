//! Issue-3 bulk comparison in one run: a CPU-bound reduction per chunk over 1 GiB, with
//! shmpool `map_chunks` vs a single thread vs rayon `par_chunks` over the same mapping, for a
//! `SharedVec<u8>` and for a page-cached `MappedFile`, at chunk lengths from 64 KiB to 16 MiB;
//! then CPython's `multiprocessing.Pool` shipping the same chunks as bytes
//! (`tools/compare/bulk_compare.py`). Prints GiB/s and the ratios shmpool/single and
//! shmpool/rayon (targets: ≥ 1.85 and ≥ 0.95 on 2 cores).
//!
//! Reductions: SHA-256 of each chunk (the `sha2` crate) and a 64-bit multiply-rotate hash of
//! each chunk (memory-bound: about 4× faster per byte). Each figure is the median of 3 runs
//! (1 with `--quick`). The Python column runs after the Rust pools are gone.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bulk cargo run --release --example bulk_compare [-- --quick] [-- --no-python] [-- --mib 1024]
//! ```

use std::error::Error;
use std::io::Write;
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use shmpool::{MappedFile, Pool, SharedVec};

const PROCESSES: usize = 2;
const CHUNKS: [usize; 5] = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/compare/bulk_compare.py");

fn sha256(chunk: &[u8]) -> [u8; 32] {
    Sha256::digest(chunk).into()
}

#[path = "common/hash64.rs"]
mod hash64;
use hash64::hash64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `reps` runs of `f`.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Seconds for (single, shmpool, rayon) of one reduction over one input at one chunk length.
fn measure<I, F, R>(
    reps: usize,
    pool: &Pool,
    rayon_pool: &rayon::ThreadPool,
    input: &I,
    chunk: usize,
    f: F,
) -> Result<[f64; 3], Box<dyn Error>>
where
    I: shmpool::BulkInput<Elem = u8> + std::ops::Deref<Target = [u8]> + Sync,
    F: Fn(&[u8]) -> R + Copy + Send + Sync + 'static,
    R: shmpool::Payload + PartialEq + std::fmt::Debug + Send,
{
    // Correctness once, before timing.
    let want: Vec<R> = input.chunks(chunk).map(f).collect();
    let got = pool.map_chunks(input, chunk, f)?;
    assert!(got == want, "shmpool differs from a single thread");
    let par: Vec<R> = rayon_pool.install(|| input.par_chunks(chunk).map(f).collect());
    assert!(par == want, "rayon differs from a single thread");
    drop((want, got, par));

    let single = time(reps, || {
        std::hint::black_box(input.chunks(chunk).map(f).collect::<Vec<R>>());
    });
    let mut err = None;
    let shm = time(reps, || match pool.map_chunks(input, chunk, f) {
        Ok(v) => {
            std::hint::black_box(v);
        }
        Err(e) => err = Some(e),
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    let ray = time(reps, || {
        std::hint::black_box(
            rayon_pool.install(|| input.par_chunks(chunk).map(f).collect::<Vec<R>>()),
        );
    });
    Ok([single, shm, ray])
}

fn kib(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

fn row(what: &str, input: &str, chunk: usize, bytes: usize, t: [f64; 3]) {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    println!(
        "{what:<8} {input:<10} {:>7} | {:>7.2} {:>7.2} {:>7.2} | {:>6.2}x {:>6.2}x",
        kib(chunk),
        gib / t[0],
        gib / t[1],
        gib / t[2],
        t[0] / t[1],
        t[2] / t[1],
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The comparison file, removed on drop (even on an early return).
struct TempPath(std::path::PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let no_python = args.iter().any(|a| a == "--no-python");
    let mib: usize = match args.iter().position(|a| a == "--mib") {
        Some(i) => args.get(i + 1).ok_or("--mib needs a value")?.parse()?,
        None => 1024,
    };
    let reps = if quick { 1 } else { 3 };
    let bytes = mib << 20;

    // Fork the workers while the process is small; rayon's threads come after the fork.
    let pool = Pool::new(PROCESSES)?;
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()?;

    let mut v = SharedVec::<u8>::zeroed(bytes)?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for w in bytemuck::cast_slice_mut::<u8, u64>(&mut v[..]) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *w = x;
    }
    let tmp =
        TempPath(std::env::temp_dir().join(format!("shmpool-bulk-compare-{}", std::process::id())));
    let path = tmp.0.clone();
    std::fs::File::create(&path)?.write_all(&v)?;
    // SAFETY: this program wrote the file and nothing modifies it until it is removed at the end.
    let file = unsafe { MappedFile::open(&path)? };
    // Page-cache it (and fault it into the parent's mapping, as rayon and the single thread use).
    assert_eq!(hash64(&file), hash64(&v));

    println!(
        "bulk_compare: {mib} MiB, {PROCESSES} processes/threads, median of {reps}, load average {}",
        load_average()
    );
    println!(
        "{:<8} {:<10} {:>7} | {:>7} {:>7} {:>7} | {:>7} {:>7}",
        "reduce", "input", "chunk", "single", "shmpool", "rayon", "vs 1", "vs ray"
    );
    println!("{:<27} | {:^23} |", "", "GiB/s");
    let mut shm_sha_file = Vec::new();
    for (what, is_sha) in [("sha256", true), ("hash64", false)] {
        for chunk in CHUNKS {
            for (name, input) in [("SharedVec", None), ("MappedFile", Some(&file))] {
                let t = match (is_sha, input) {
                    (true, None) => measure(reps, &pool, &rayon_pool, &v, chunk, sha256)?,
                    (true, Some(f)) => measure(reps, &pool, &rayon_pool, f, chunk, sha256)?,
                    (false, None) => measure(reps, &pool, &rayon_pool, &v, chunk, hash64)?,
                    (false, Some(f)) => measure(reps, &pool, &rayon_pool, f, chunk, hash64)?,
                };
                if is_sha && input.is_some() {
                    shm_sha_file.push(t[1]);
                }
                row(what, name, chunk, bytes, t);
            }
        }
    }
    drop(rayon_pool);
    drop(pool);

    if !no_python {
        println!();
        match Command::new("python3")
            .arg(SCRIPT)
            .args(["--path", &path.to_string_lossy(), "--processes", "2"])
            .args(["--reps", &reps.to_string()])
            .output()
        {
            Err(e) => println!("python3 not run: {e}"),
            Ok(out) if !out.status.success() => {
                println!(
                    "python3 failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(out) => {
                // One line per chunk length: "<chunk bytes> <single s> <pool s>".
                let gib = bytes as f64 / f64::from(1u32 << 30);
                println!(
                    "{:<19} {:>7} | {:>7} {:>7} | {:>13}",
                    "python sha256 file", "chunk", "single", "Pool", "shmpool/Pool"
                );
                for (line, shm) in String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .zip(&shm_sha_file)
                {
                    let f: Vec<f64> = line
                        .split_whitespace()
                        .filter_map(|s| s.parse().ok())
                        .collect();
                    if let [c, single, pooled] = f[..] {
                        println!(
                            "{:<19} {:>7} | {:>7.2} {:>7.2} | {:>12.2}x",
                            "",
                            kib(c as usize),
                            gib / single,
                            gib / pooled,
                            pooled / shm
                        );
                    }
                }
            }
        }
    }
    drop(file);
    drop(tmp);
    Ok(())
}
