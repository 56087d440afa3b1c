//! End-to-end tests of the `shmpool` binary: help, bad options (exit code 2), a tiny sweep.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Once;
use std::time::Duration;

/// Aborts the whole test process if it is still running after 120 s (a hung pool or Python).
fn watchdog() {
    static ARM: Once = Once::new();
    ARM.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(120));
            eprintln!("tools/tests/cli.rs: watchdog: still running after 120 s, aborting");
            std::process::abort();
        });
    });
}

fn shmpool(args: &[&str]) -> Output {
    watchdog();
    Command::new(env!("CARGO_BIN_EXE_shmpool"))
        .args(args)
        .output()
        .expect("run the shmpool binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A fresh directory under the target directory for one test's output.
fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn help_describes_the_bench_chunksize_options() {
    let o = shmpool(&["--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("bench"), "{}", stdout(&o));
    let o = shmpool(&["bench", "chunksize", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for flag in [
        "--chunksizes",
        "--work",
        "--workers",
        "--reps",
        "--quick",
        "--no-python",
        "--out",
    ] {
        assert!(
            stdout(&o).contains(flag),
            "help lacks {flag}: {}",
            stdout(&o)
        );
    }
}

#[test]
fn zero_chunksize_is_an_error_with_exit_code_2() {
    let o = shmpool(&["bench", "chunksize", "--chunksizes", "1,0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("chunksize must be at least 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unknown_work_level_is_an_error_with_exit_code_2() {
    let o = shmpool(&["bench", "chunksize", "--work", "5parsecs"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown work level `5parsecs`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn zero_workers_is_an_error_with_exit_code_2() {
    let o = shmpool(&["bench", "chunksize", "--workers", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("workers must be at least 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn zero_reps_and_unknown_subcommand_are_errors_with_exit_code_2() {
    let o = shmpool(&["bench", "chunksize", "--reps", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = shmpool(&["bench", "nonsense"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn unwritable_output_directory_is_an_error_with_exit_code_2() {
    let file = out_dir("not-a-dir");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "a file, not a directory").unwrap();
    let o = shmpool(&[
        "bench",
        "chunksize",
        "--no-python",
        "--work",
        "0",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.starts_with("shmpool: creating "), "{err}");
}

/// Runs a sweep small enough for a test and checks the CSV and the SVG it writes.
fn tiny_sweep(name: &str, python: bool) -> (String, String) {
    let dir = out_dir(name);
    let mut args = vec![
        "bench",
        "chunksize",
        "--work",
        "0,1us",
        "--chunksizes",
        "1,64",
        "--workers",
        "1,2",
        "--reps",
        "1",
        "--target-ms",
        "5",
        "--max-items",
        "2000",
    ];
    if !python {
        args.push("--no-python");
    }
    args.extend(["--out", dir.to_str().unwrap()]);
    let o = shmpool(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let csv = std::fs::read_to_string(dir.join("chunksize.csv")).expect("the CSV");
    let svg = std::fs::read_to_string(dir.join("chunksize.svg")).expect("the SVG");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("chunksize (items per task)"),
        "axis label missing"
    );
    (csv, stdout(&o))
}

/// A CSV row: (mode, workers, work_ns, chunksize, items, reps, median items/s).
type Row = (String, String, String, String, usize, String, f64);

/// The CSV rows of one implementation.
fn rows_of(csv: &str, implementation: &str) -> Vec<Row> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[0] == implementation)
        .map(|f| {
            assert_eq!(f.len(), 11, "{f:?}");
            let median: f64 = f[7].parse().unwrap();
            let min: f64 = f[8].parse().unwrap();
            let max: f64 = f[9].parse().unwrap();
            assert!(min > 0.0 && min <= median && median <= max, "{f:?}");
            (
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[5].to_string(),
                f[6].parse().unwrap(),
                f[10].to_string(),
                median,
            )
        })
        .collect()
}

const HEADER: &str = "implementation,mode,workers,work_ns,work_ns_actual,chunksize,items,\
median_items_per_s,min_items_per_s,max_items_per_s,reps";

#[test]
fn tiny_sweep_writes_every_measurement_to_csv_and_a_plot() {
    let (csv, out) = tiny_sweep("tiny", false);
    assert_eq!(csv.lines().next(), Some(HEADER));
    let rows = rows_of(&csv, "shmpool");
    // Per work level: single + per worker count (2 chunksizes, the best of them again, map auto,
    // imap auto).
    assert_eq!(rows.len(), 2 * (1 + 2 * 5), "{csv}");
    assert_eq!(
        csv.lines().count(),
        1 + rows.len(),
        "only shmpool rows: {csv}"
    );
    for work in ["0", "1000"] {
        let here: Vec<_> = rows.iter().filter(|r| r.2 == work).collect();
        let modes: Vec<(&str, &str, &str)> = here
            .iter()
            .map(|r| (r.0.as_str(), r.1.as_str(), r.3.as_str()))
            .filter(|m| m.0 != "map_auto" && m.0 != "map_chunked_best")
            .collect();
        assert_eq!(
            modes,
            [
                ("single", "", ""),
                ("map_chunked", "1", "1"),
                ("map_chunked", "1", "64"),
                ("imap_auto", "1", ""),
                ("map_chunked", "2", "1"),
                ("map_chunked", "2", "64"),
                ("imap_auto", "2", ""),
            ]
        );
        // One repetition asked for; short runs repeat to fill the target, at most 5 times.
        assert!(here.iter().all(|r| {
            let runs: u32 = r.5.parse().unwrap();
            (1..=5).contains(&runs) && (r.4 >= 1 && r.4 <= 2000 || r.0 == "single")
        }));
    }
    // The best chunksize run again is the swept one with the highest median.
    for w in ["1", "2"] {
        for work in ["0", "1000"] {
            let here = |mode: &'static str| {
                rows.iter()
                    .filter(move |r| r.0 == mode && r.1 == w && r.2 == work)
            };
            // (The CSV rounds medians to 0.1, so a near tie may show another chunksize on top.)
            let top = here("map_chunked").map(|r| r.6).fold(f64::MIN, f64::max);
            let again: Vec<_> = here("map_chunked_best").collect();
            assert_eq!(again.len(), 1);
            let swept = here("map_chunked")
                .find(|r| r.3 == again[0].3)
                .expect("the best chunksize was swept");
            assert_eq!(swept.4, again[0].4, "same items");
            assert!(swept.6 >= top - 0.1, "{swept:?} is not the best ({top})");
        }
    }
    // shmpool's automatic map adapts chunk by chunk: no single chunksize to record.
    assert!(
        rows.iter()
            .filter(|r| r.0 == "map_auto")
            .all(|r| r.3.is_empty())
    );
    assert!(out.contains("crossover"), "{out}");
    assert!(
        out.contains("Python comparison skipped (--no-python)"),
        "{out}"
    );
}

#[test]
fn tiny_sweep_with_python_adds_its_rows_or_says_why_not() {
    let (csv, out) = tiny_sweep("tiny-python", true);
    let python_here = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let rows = rows_of(&csv, "python");
    if python_here {
        // Per work level: single + per worker count (2 chunksizes, the best again, map auto).
        assert_eq!(rows.len(), 2 * (1 + 2 * 4), "{csv}");
        assert!(rows.iter().any(|r| r.0 == "map_auto" && r.1 == "2"));
        assert!(rows.iter().any(|r| r.0 == "map_chunked_best" && r.1 == "2"));
        assert!(out.contains("python"), "{out}");
    } else {
        assert!(rows.is_empty());
        assert!(out.contains("Python comparison skipped"), "{out}");
    }
}
