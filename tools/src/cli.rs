//! Command-line definitions (clap derive) and the parsers for their values; nothing runs here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The `shmpool` tool: benchmarks for the `shmpool` process pool.
#[derive(Debug, Parser)]
#[command(name = "shmpool", version, about, long_about = None)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
// Parsed once per run: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Benchmarks. Without a subcommand, runs `bench chunksize` with its default workload.
    Bench(BenchArgs),
    /// Hashes files and trees in the pool: the output of sha256sum, sha512sum and b3sum.
    Hash(HashArgs),
}

/// `shmpool hash [OPTIONS] [PATH]...`
///
/// Prints `HEX  PATH` for every file, as `sha256sum`, `sha512sum` or `b3sum` print it (names
/// with `\` or a newline escaped by their leading-backslash rule, other bytes raw). Directories
/// are walked recursively (hidden files included, entries sorted by name; symlinks, FIFOs,
/// sockets and devices met while walking are skipped); a symlink named on the command line is
/// followed; no PATH, or `-`, reads standard input. A file that cannot be hashed is reported
/// on stderr as `shmpool: PATH: REASON`, its name escaped as in the output lines. Exit status:
/// 0 if every file was hashed (and, with --check, matched), 1 if any failed, 2 on a usage
/// error, 130 on Ctrl-C (the process ends by SIGINT once its workers are gone, as `sha256sum`
/// does, so a shell script running it stops too).
#[derive(Debug, Args)]
pub(crate) struct HashArgs {
    /// Files or directories to hash (with --check: manifests to read)
    #[arg(value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,

    /// Hash algorithm
    #[arg(short, long, value_enum, default_value = "sha256")]
    pub(crate) algo: crate::hash::Algo,

    /// Worker processes [default: the number of CPUs]
    #[arg(short, long, value_name = "N", value_parser = parse_workers)]
    pub(crate) jobs: Option<usize>,

    /// Follow symlinks met while walking (a link back into the walk is reported as a loop)
    #[arg(short = 'L', long)]
    pub(crate) follow: bool,

    /// End each line with NUL instead of newline, and escape no names (not with --check)
    #[arg(short, long)]
    pub(crate) zero: bool,

    /// Print results as they finish instead of in walk order
    #[arg(long)]
    pub(crate) unordered: bool,

    /// Read checksums from the PATHs (sha*sum or b3sum manifests) and check them
    // Manifests are read by lines: NUL-terminated ones are not supported, and coreutils 9
    // refuses `--check --zero` as a usage error too.
    #[arg(short, long, conflicts_with = "zero")]
    pub(crate) check: bool,

    /// With --check: do not print OK for each file that matches
    #[arg(long, requires = "check")]
    pub(crate) quiet: bool,

    /// With --check: print nothing on stdout; the exit status tells
    #[arg(long, requires = "check")]
    pub(crate) status: bool,

    /// Show a progress line on stderr [default: when stderr is a terminal]
    #[arg(long, overrides_with = "no_progress")]
    pub(crate) progress: bool,

    /// Never show a progress line
    #[arg(long, overrides_with = "progress")]
    pub(crate) no_progress: bool,

    /// Run as an MPI job: `mpirun -n K shmpool hash --mpi PATH...`. Rank 0 walks and prints
    /// (the same output as without --mpi); every rank hashes with --jobs processes. Every rank
    /// must see the paths (shared file system, same working directory)
    #[cfg(feature = "mpi")]
    #[arg(long)]
    pub(crate) mpi: bool,
}

/// `shmpool bench [SUBCOMMAND]`; without one, takes the options of `bench chunksize`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    /// Which benchmark (default: `chunksize`).
    #[command(subcommand)]
    pub(crate) which: Option<BenchCommand>,

    /// Options of the default benchmark, `chunksize`.
    #[command(flatten)]
    pub(crate) chunksize: ChunksizeArgs,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Sweeps chunksize × work per item × workers: where do processes beat one process?
    ///
    /// For each amount of work per item it measures items/s of a single-process loop, of
    /// `pool.map_chunked` at every chunksize, and of the automatic chunksize (`pool.map`,
    /// `pool.imap`), then the same with Python's `multiprocessing.Pool` when python3 is present.
    /// It prints the crossover (smallest chunksize where the pool beats one process), the best
    /// chunksize and how close the automatic chunksize gets, and writes a CSV and an SVG plot.
    Chunksize(ChunksizeArgs),
    /// `shmpool hash` against the Python seed, `xargs -P2 sha512sum`/`sha256sum` and `b3sum`.
    ///
    /// Warms the cache, checks `shmpool hash` against `sha256sum`, then runs every command once
    /// per round (paired), several rounds; prints seconds (median), MB/s, files/s, CPU time and
    /// ratios, and each algorithm's floor; writes a CSV.
    Hash(HashBenchArgs),
}

/// Options of `shmpool bench hash`.
#[derive(Debug, Clone, Args)]
pub(crate) struct HashBenchArgs {
    /// Tree to hash [default: $RUSTUP_HOME or ~/.rustup]
    #[arg(value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,

    /// Rounds; every command runs once per round
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,

    /// Workers for shmpool hash, and -P for xargs
    #[arg(short, long, value_name = "N", default_value_t = 2, value_parser = parse_workers)]
    pub(crate) jobs: usize,

    /// Skip the Python seed program
    #[arg(long)]
    pub(crate) no_python: bool,

    /// Run only `shmpool hash` (no other tool): its times against the floors
    #[arg(long)]
    pub(crate) shmpool_only: bool,

    /// Cold cache: before every timed command and every floor measurement, drop the tree's
    /// pages from the page cache (posix_fadvise DONTNEED on each file; only clean, unmapped
    /// pages go, so nothing is lost, but every other reader of those files reads them from
    /// disk again). The eviction is not timed
    #[arg(long)]
    pub(crate) cold: bool,

    /// Python interpreter for the seed program
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub(crate) python: PathBuf,

    /// Directory for the CSV and a copy of the Python program
    #[arg(long, value_name = "DIR", default_value = "target/shmpool-bench")]
    pub(crate) out: PathBuf,
}

/// Options of `shmpool bench chunksize`. Unset options take the default (or the `--quick` value).
#[derive(Debug, Clone, Args)]
pub(crate) struct ChunksizeArgs {
    /// Chunksizes to sweep, comma-separated
    /// [default: 1,4,16,...,65536; --quick: 1,16,256,4096,65536]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_chunksize)]
    pub(crate) chunksizes: Option<Vec<usize>>,

    /// Work per item, comma-separated durations of busy arithmetic (0, 100ns, 1us, 2.5ms, ...)
    /// [default: 0,100ns,1us,10us,100us; --quick: 0,1us,100us]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_work)]
    pub(crate) work: Option<Vec<u64>>,

    /// Worker counts, comma-separated [default: 1 up to the number of CPUs]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_workers)]
    pub(crate) workers: Option<Vec<usize>>,

    /// Repetitions of each measurement, at least; the median is reported. Runs shorter than the
    /// target repeat until they fill it, up to 5 × N [default: 3]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) reps: Option<u32>,

    /// Aimed-for duration of one measurement, in ms [default: 100; --quick: 40]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) target_ms: Option<u64>,

    /// Most items in one measurement [default: 1048576; --quick: 262144]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_items: Option<u64>,

    /// A smaller, faster sweep (under 30 s)
    #[arg(long)]
    pub(crate) quick: bool,

    /// Skip the Python `multiprocessing.Pool` comparison
    #[arg(long)]
    pub(crate) no_python: bool,

    /// Python interpreter for the comparison
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub(crate) python: PathBuf,

    /// Directory for the CSV, the SVG plot and a copy of the Python script
    #[arg(long, value_name = "DIR", default_value = "target/shmpool-bench")]
    pub(crate) out: PathBuf,
}

/// A chunksize: a positive number of items.
fn parse_chunksize(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("chunksize must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "`{s}` is not a chunksize (a positive whole number)"
        )),
    }
}

/// A worker count: a positive number.
fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("workers must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "`{s}` is not a worker count (a positive whole number)"
        )),
    }
}

/// Longest work per item accepted (10 s): the busy loop's iteration count must fit in 32 bits.
const MAX_WORK_NS: f64 = 10e9;

/// A work level: `0` or a number with a unit (`ns`, `us`/`µs`, `ms`, `s`), in nanoseconds.
pub(crate) fn parse_work(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!("unknown work level `{s}`: expected 0 or a duration like 100ns, 1us, 10us, 2.5ms")
    };
    if t == "0" {
        return Ok(0);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let ns = value * scale;
    if !(0.0..=MAX_WORK_NS).contains(&ns) {
        return Err(format!("work level `{s}` is out of range (0 to 10s)"));
    }
    Ok(ns.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_levels_parse_to_nanoseconds() {
        assert_eq!(parse_work("0"), Ok(0));
        assert_eq!(parse_work("100ns"), Ok(100));
        assert_eq!(parse_work("1us"), Ok(1_000));
        assert_eq!(parse_work("2.5µs"), Ok(2_500));
        assert_eq!(parse_work("10ms"), Ok(10_000_000));
        assert_eq!(parse_work("1s"), Ok(1_000_000_000));
        assert!(
            parse_work("5parsecs")
                .unwrap_err()
                .contains("unknown work level")
        );
        assert!(parse_work("ns").is_err());
        assert!(parse_work("100").is_err());
        assert!(parse_work("11s").unwrap_err().contains("out of range"));
    }

    #[test]
    fn zero_chunksize_and_zero_workers_are_refused() {
        assert_eq!(
            parse_chunksize("0"),
            Err("chunksize must be at least 1".into())
        );
        assert_eq!(parse_chunksize("64"), Ok(64));
        assert_eq!(parse_workers("0"), Err("workers must be at least 1".into()));
        assert!(parse_workers("x").is_err());
    }

    #[test]
    fn bench_without_subcommand_parses() {
        let bench = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Bench(b) => b,
            other => panic!("expected bench, got {other:?}"),
        };
        let b = bench(&["shmpool", "bench"]);
        assert!(b.which.is_none());
        assert!(!b.chunksize.quick);
        let b = bench(&["shmpool", "bench", "--quick"]);
        assert!(b.which.is_none() && b.chunksize.quick);
        let b = bench(&["shmpool", "bench", "chunksize", "--chunksizes", "1,64"]);
        let Some(BenchCommand::Chunksize(c)) = b.which else {
            panic!("expected chunksize")
        };
        assert_eq!(c.chunksizes, Some(vec![1, 64]));
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
