//! `shmpool bench [chunksize]`: where do processes beat one process?

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{BenchArgs, BenchCommand, ChunksizeArgs};
use crate::measure::{self, Plan};
use crate::{plot, python, report};

/// Runs `shmpool bench`: the chunksize sweep unless another benchmark is named.
pub(crate) fn run(args: BenchArgs) -> Result<ExitCode> {
    let args = match args.which {
        Some(BenchCommand::Chunksize(a)) => a,
        Some(BenchCommand::Hash(a)) => return crate::hash_bench::run(&a),
        None => args.chunksize,
    };
    chunksize(&args)
}

/// The sweep's settings: what the user gave, else the `--quick` value, else the default.
fn plan(a: &ChunksizeArgs) -> Plan {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let q = a.quick;
    let mut chunksizes = a.chunksizes.clone().unwrap_or_else(|| {
        let step = if q { 16 } else { 4 };
        std::iter::successors(Some(1usize), |c| Some(c * step))
            .take_while(|&c| c <= 65536)
            .collect()
    });
    chunksizes.sort_unstable();
    chunksizes.dedup();
    let work = a.work.clone().unwrap_or_else(|| {
        if q {
            vec![0, 1_000, 100_000]
        } else {
            vec![0, 100, 1_000, 10_000, 100_000]
        }
    });
    let mut workers = a.workers.clone().unwrap_or_else(|| (1..=cpus).collect());
    workers.sort_unstable();
    workers.dedup();
    Plan {
        chunksizes,
        work,
        workers,
        reps: a.reps.unwrap_or(3),
        target: Duration::from_millis(a.target_ms.unwrap_or(if q { 40 } else { 100 })),
        max_items: a
            .max_items
            .map_or(if q { 1 << 18 } else { 1 << 20 }, |n| n as usize),
    }
}

fn list<T: ToString>(v: &[T]) -> String {
    v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

fn chunksize(a: &ChunksizeArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let load_before = load_average();
    let plan = plan(a);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;

    let python = if a.no_python {
        Err("skipped (--no-python)".to_string())
    } else {
        python::probe(&a.python).map_err(|why| format!("skipped: {why}"))
    };
    if let Err(why) = &python {
        eprintln!("shmpool: Python comparison {why}; going on without it");
    }

    let total = plan.shmpool_steps()
        + if python.is_ok() {
            plan.python_steps()
        } else {
            0
        };
    // indicatif draws on stderr; on anything but a terminal, stay quiet.
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    pb.set_message("shmpool");
    let shm = measure::sweep_shmpool(&plan, &|| pb.inc(1))?;
    let mut rows = shm.measurements;
    let mut python_note = None;
    let mut python_error = None;
    match &python {
        Ok(_) => {
            pb.set_message("python multiprocessing.Pool");
            match python::sweep_python(&a.python, &plan, &a.out, &|| pb.inc(1)) {
                Ok(py) => {
                    python_note = Some(format!(
                        "Python {} busy loop {:.2} ns/round",
                        py.python, py.ns_per_iteration
                    ));
                    rows.extend(py.measurements);
                }
                Err(e) => python_error = Some(e),
            }
        }
        Err(why) => python_note = Some(format!("Python comparison {why}")),
    }
    pb.finish_and_clear();

    let summaries = report::summarize(&rows);
    let csv_path = a.out.join("chunksize.csv");
    let svg_path = a.out.join("chunksize.svg");
    write_csv(&csv_path, &rows)?;
    plot::write_svg(&svg_path, &rows, &summaries)?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(
        out,
        "shmpool bench chunksize: workers {}, chunksizes {}, {} rep(s) per point (median), ~{} ms per run",
        list(&plan.workers),
        list(&plan.chunksizes),
        plan.reps,
        plan.target.as_millis()
    )?;
    writeln!(
        out,
        "busy loop: Rust {:.2} ns/round; {}",
        shm.ns_per_iteration,
        python_note.as_deref().unwrap_or("Python failed")
    )?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let (Some(before), Some(after)) = (load_before, load_average()) {
        let busy = if before.max(after) > 0.5 * cpus as f64 {
            ": other processes competed for the CPUs, expect noise"
        } else {
            ""
        };
        writeln!(
            out,
            "load average {before:.2} before, {after:.2} after, on {cpus} CPUs{busy}"
        )?;
    }
    writeln!(
        out,
        "crossover = smallest chunksize whose median beats the single process's fastest run; \
         speedup = best / single process;\nmap/imap auto = automatic chunksize as % of the best \
         swept chunksize, run again alongside (runs interleaved); swept = largest chunksize within \
         the item budget\n"
    )?;
    report::write_table(&mut out, &summaries)?;
    writeln!(
        out,
        "\nwrote {} and {} in {:.1} s",
        csv_path.display(),
        svg_path.display(),
        started.elapsed().as_secs_f64()
    )?;
    out.flush()?;
    match python_error {
        Some(e) => Err(e.context("the Python comparison failed (shmpool results were written)")),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn write_csv(path: &Path, rows: &[measure::Measurement]) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    report::write_csv(&mut f, rows)
        .and_then(|()| f.flush())
        .with_context(|| format!("writing {}", path.display()))
}

/// The 1-minute load average, when `/proc/loadavg` can be read.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
