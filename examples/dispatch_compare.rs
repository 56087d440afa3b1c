//! Issue-2 dispatch comparison in one run: shmpool vs a single process vs rayon vs CPython's
//! `multiprocessing.Pool`, printed as one table with ratios.
//!
//! Measures the `apply` round trip, 10 000 pipelined `apply_async`, and `map` of 1 000 000 trivial
//! items (automatic chunksize, and chunksizes 1 000 and 100 000). Each figure is the median of
//! 5 repetitions (2 with `--quick`). The Python column comes from
//! `python3 tools/compare/pool_compare.py --reps 1`, run once per repetition, alternating with the
//! Rust repetitions so that both see the same load on a shared machine; `--no-python` skips it.
//!
//! ```text
//! cargo run --release --example dispatch_compare [-- --quick] [-- --no-python]
//! ```

use std::error::Error;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use shmpool::Pool;

#[path = "common/dispatch_work.rs"]
mod dispatch_work;
use dispatch_work::{
    CHUNKSIZES, MAP_ITEMS, PIPELINED, PROCESSES, check, inc, rayon_pipelined, triple,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/compare/pool_compare.py");

/// Seconds per operation (round trip) or per batch (pipelined, map), one contender.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    apply_s: f64,
    pipelined_s: f64,
    map_auto_s: f64,
    /// Indexed like [`CHUNKSIZES`].
    map_chunked_s: [f64; 2],
}

/// One run of `pool_compare.py --reps 1`.
#[derive(Debug)]
struct Python {
    version: String,
    figures: Figures,
    /// `map` at chunksize 10 000, the third point of Python's sweep.
    map_10000_s: f64,
}

/// Python's best `map` over its default chunksize and its sweep: `(label, seconds)`, from the
/// medians.
fn python_best_map(f: &Figures, map_10000_s: f64) -> (String, f64) {
    [
        ("default".to_string(), f.map_auto_s),
        (CHUNKSIZES[0].to_string(), f.map_chunked_s[0]),
        ("10000".to_string(), map_10000_s),
        (CHUNKSIZES[1].to_string(), f.map_chunked_s[1]),
    ]
    .into_iter()
    .min_by(|a, b| a.1.total_cmp(&b.1))
    .expect("four candidates")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The Rust contenders, built once and checked before anything is timed.
struct Rust {
    pool: Pool,
    rayon_pool: rayon::ThreadPool,
    items: Vec<u64>,
}

impl Rust {
    fn new() -> Result<Rust, Box<dyn Error>> {
        // Fork the workers before any rayon thread exists.
        let pool = Pool::new(PROCESSES)?;
        let rayon_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(PROCESSES)
            .build()?;
        let items: Vec<u64> = (0..MAP_ITEMS).collect();
        // Correctness once, before timing (this also warms up workers, arenas and threads).
        check(&pool, &rayon_pool, &items)?;
        Ok(Rust {
            pool,
            rayon_pool,
            items,
        })
    }

    /// One repetition of every measurement: `[shmpool, single, rayon]`.
    fn rep(&self, applies: u64) -> Result<[Figures; 3], Box<dyn Error>> {
        let (pool, rayon_pool, items) = (&self.pool, &self.rayon_pool, &self.items);
        let mut shm = Figures::default();
        let mut single = Figures::default();
        let mut ray = Figures::default();

        let t = Instant::now();
        for i in 0..applies {
            black_box(pool.apply(|x: u64| x + 1, black_box(i))?);
        }
        shm.apply_s = secs(t) / applies as f64;
        // A direct call takes about a nanosecond: time many, so the clock's resolution does not
        // matter.
        let direct = applies * 1_000;
        let t = Instant::now();
        for i in 0..direct {
            black_box(black_box(|x: u64| x + 1)(black_box(i)));
        }
        single.apply_s = secs(t) / direct as f64;
        let t = Instant::now();
        for i in 0..applies {
            black_box(rayon_pool.install(|| inc(black_box(i))));
        }
        ray.apply_s = secs(t) / applies as f64;

        let t = Instant::now();
        let handles = (0..PIPELINED)
            .map(|i| pool.apply_async(|x: u64| x + 1, i))
            .collect::<Result<Vec<_>, _>>()?;
        for h in handles {
            black_box(h.get()?);
        }
        shm.pipelined_s = secs(t);
        let t = Instant::now();
        let v: Vec<u64> = (0..PIPELINED)
            .map(|i| black_box(inc)(black_box(i)))
            .collect();
        black_box(v);
        single.pipelined_s = secs(t);
        let t = Instant::now();
        black_box(rayon_pipelined(rayon_pool));
        ray.pipelined_s = secs(t);

        let t = Instant::now();
        black_box(pool.map(|x: u64| x.wrapping_mul(3), items.iter().copied())?);
        shm.map_auto_s = secs(t);
        for (k, cs) in CHUNKSIZES.into_iter().enumerate() {
            let t = Instant::now();
            black_box(pool.map_chunked(|x: u64| x.wrapping_mul(3), items.iter().copied(), cs)?);
            shm.map_chunked_s[k] = secs(t);
        }
        let t = Instant::now();
        let v: Vec<u64> = black_box(items).iter().map(|&x| triple(x)).collect();
        black_box(v);
        single.map_auto_s = secs(t);
        single.map_chunked_s = [single.map_auto_s; 2];
        let t = Instant::now();
        let v: Vec<u64> =
            rayon_pool.install(|| black_box(items).par_iter().map(|&x| triple(x)).collect());
        black_box(v);
        ray.map_auto_s = secs(t);
        ray.map_chunked_s = [ray.map_auto_s; 2];
        Ok([shm, single, ray])
    }
}

/// Field-by-field median of several repetitions.
fn median_figures(reps: &[Figures]) -> Figures {
    let m = |get: fn(&Figures) -> f64| median(reps.iter().map(get).collect());
    Figures {
        apply_s: m(|f| f.apply_s),
        pipelined_s: m(|f| f.pipelined_s),
        map_auto_s: m(|f| f.map_auto_s),
        map_chunked_s: [m(|f| f.map_chunked_s[0]), m(|f| f.map_chunked_s[1])],
    }
}

/// The value after `"key":` in the flat JSON the script prints (a number or a string).
fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let rest = json[json.find(&pat)? + pat.len()..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return s.split('"').next();
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn json_f64(json: &str, key: &str) -> Result<f64, Box<dyn Error>> {
    json_field(json, key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("pool_compare.py output has no number {key:?}: {json}").into())
}

/// Whether `python3` can be run at all.
fn have_python() -> bool {
    Command::new("python3").arg("--version").output().is_ok()
}

/// One repetition of the Python script (`--reps 1`).
fn python_rep(quick: bool) -> Result<Python, Box<dyn Error>> {
    if !Path::new(SCRIPT).exists() {
        return Err(format!("{SCRIPT} not found").into());
    }
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .args(["--reps", "1", "--processes"])
        .arg(PROCESSES.to_string());
    if quick {
        cmd.arg("--quick");
    }
    // Its progress lines (stderr) are dropped; our own say which repetition is running.
    let out = cmd.stderr(std::process::Stdio::null()).output()?;
    if !out.status.success() {
        return Err(format!(
            "pool_compare.py failed ({}); run it by hand: python3 {SCRIPT}",
            out.status
        )
        .into());
    }
    let json = String::from_utf8(out.stdout)?;
    Ok(Python {
        version: json_field(&json, "python").unwrap_or("?").to_string(),
        figures: Figures {
            apply_s: json_f64(&json, "apply_round_trip_s")?,
            pipelined_s: json_f64(&json, "apply_async_pipelined_s")?,
            map_auto_s: json_f64(&json, "map_default_s")?,
            map_chunked_s: [
                json_f64(&json, &CHUNKSIZES[0].to_string())?,
                json_f64(&json, &CHUNKSIZES[1].to_string())?,
            ],
        },
        map_10000_s: json_f64(&json, "10000")?,
    })
}

/// How a row's figure is shown: a time per operation, or items per second.
#[derive(Clone, Copy)]
enum Unit {
    Micros,
    ItemsPerSec(u64),
    Millis,
}

/// A table row: its label, its unit, and which figure it shows.
type Row = (String, Unit, fn(&Figures) -> f64);

fn show(unit: Unit, s: f64) -> String {
    match unit {
        Unit::Micros => format!("{:.3} µs", s * 1e6),
        Unit::ItemsPerSec(n) => format!("{:.0}/s", n as f64 / s),
        Unit::Millis => format!("{:.2} ms", s * 1e3),
    }
}

/// Three significant digits, however small the ratio (a direct call is ~10^4 times an `apply`).
fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() || r <= 0.0 {
        return format!("{r}x");
    }
    let decimals = (2 - r.log10().floor() as i32).max(0) as usize;
    format!("{r:.decimals$}x")
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for a in &args {
        if a != "--quick" && a != "--no-python" {
            return Err(format!("unknown argument {a:?} (use --quick, --no-python)").into());
        }
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (reps, applies) = if quick { (2, 500) } else { (5, 2_000) };

    let load_before = load_average();
    let started = Instant::now();
    let rust = Rust::new()?;
    let with_python = !args.iter().any(|a| a == "--no-python") && have_python();
    // Rust and Python repetitions alternate, so both see the same (shared, noisy) machine; the
    // idle pools sleep while Python runs.
    let mut rust_reps = Vec::with_capacity(reps);
    let mut python_reps = Vec::with_capacity(reps);
    for r in 0..reps {
        eprintln!("rep {}/{reps}: rust", r + 1);
        rust_reps.push(rust.rep(applies)?);
        if with_python {
            eprintln!("rep {}/{reps}: python", r + 1);
            python_reps.push(python_rep(quick)?);
        }
    }
    rust.pool.close();
    rust.pool.join()?;
    let load_after = load_average();

    let [shm, single, ray] =
        [0, 1, 2].map(|k| median_figures(&rust_reps.iter().map(|r| r[k]).collect::<Vec<_>>()));
    let python = python_reps.first().map(|p| {
        let figures = median_figures(&python_reps.iter().map(|p| p.figures).collect::<Vec<_>>());
        let map_10000_s = median(python_reps.iter().map(|p| p.map_10000_s).collect());
        (p.version.clone(), figures, map_10000_s)
    });

    println!();
    println!(
        "dispatch comparison (issue 2): {PROCESSES} workers / threads, median of {reps} reps{}",
        if quick { " (--quick)" } else { "" }
    );
    println!(
        "load average before: {load_before}; after: {load_after}; took {:.0?}",
        Duration::from_secs(started.elapsed().as_secs())
    );
    match &python {
        Some((version, ..)) => println!(
            "python: CPython {version} multiprocessing.Pool({PROCESSES}), reps interleaved with Rust's"
        ),
        None => println!("python: python3 not found (or --no-python); Python column skipped"),
    }
    println!("ratios: the other's time / shmpool's time (> 1: shmpool is faster)");
    println!();
    println!(
        "{:<34} {:>13} {:>13} {:>13} {:>13} {:>10} {:>10} {:>10}",
        "measurement", "shmpool", "single", "rayon", "python", "vs python", "vs single", "vs rayon"
    );
    let rows: [Row; 5] = [
        ("apply round trip".into(), Unit::Micros, |f| f.apply_s),
        (
            format!("apply_async x{PIPELINED} pipelined"),
            Unit::ItemsPerSec(PIPELINED),
            |f| f.pipelined_s,
        ),
        (
            format!("map {MAP_ITEMS} auto chunksize"),
            Unit::Millis,
            |f| f.map_auto_s,
        ),
        (
            format!("map {MAP_ITEMS} chunksize {}", CHUNKSIZES[0]),
            Unit::Millis,
            |f| f.map_chunked_s[0],
        ),
        (
            format!("map {MAP_ITEMS} chunksize {}", CHUNKSIZES[1]),
            Unit::Millis,
            |f| f.map_chunked_s[1],
        ),
    ];
    let ratio = |other: f64, ours: f64| fmt_ratio(other / ours);
    for (name, unit, get) in rows {
        let ours = get(&shm);
        let (py, vs_py) = match &python {
            Some((_, p, _)) => (show(unit, get(p)), ratio(get(p), ours)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<34} {:>13} {:>13} {:>13} {:>13} {:>10} {:>10} {:>10}",
            name,
            show(unit, ours),
            show(unit, get(&single)),
            show(unit, get(&ray)),
            py,
            vs_py,
            ratio(get(&single), ours),
            ratio(get(&ray), ours),
        );
    }
    println!();
    if let Some((_, p, map_10000_s)) = &python {
        let (best_cs, best_s) = python_best_map(p, *map_10000_s);
        let apply_x = p.apply_s / shm.apply_s;
        let map_x = best_s / shm.map_auto_s;
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "target apply round trip >= 30x Python: {apply_x:.1}x ({})",
            verdict(apply_x >= 30.0)
        );
        println!(
            "target map (auto chunksize) >= 10x Python's best (chunksize {}, {}): {map_x:.1}x ({})",
            best_cs,
            show(Unit::Millis, best_s),
            verdict(map_x >= 10.0)
        );
    }
    Ok(())
}
