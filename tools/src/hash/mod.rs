//! `shmpool hash`: hashing trees of files in the pool, with the output of `sha256sum`,
//! `sha512sum` and `b3sum`, and their `--check`.
//!
//! The parts: [`walk`] turns the command line into sources in a fixed order, [`engine`] sends
//! them to the workers in tasks of many files and puts the results back in order, [`digest`]
//! is what a worker runs, [`format`](mod@format) writes the lines byte for byte as the
//! reference tools do, and [`manifest`] reads them back for `--check`. This file holds the two
//! sinks (hash lines, check lines) and the entry points.
//!
//! Standard input cannot be reopened by a worker, so the parent hashes it when the walk reaches
//! it. Alone on the command line (or with no path) it runs without a pool. Either way a Ctrl-C
//! while the parent waits for standard input ends that wait (see `crate::stdfds`) and the run,
//! exit status 130.

pub(crate) mod digest;
pub(crate) mod engine;
pub(crate) mod format;
pub(crate) mod interrupt;
pub(crate) mod manifest;
#[cfg(feature = "mpi")]
pub(crate) mod mpi;
pub(crate) mod walk;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use engine::{Finish, Item, Outcome, Sink};
use format::Escape;
use interrupt::Interrupt;
use walk::{Source, Walk};

/// The hash algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub(crate) enum Algo {
    /// SHA-256, as `sha256sum` (the default).
    Sha256,
    /// SHA-512, as `sha512sum`.
    Sha512,
    /// BLAKE3, as `b3sum`; big files are split across workers.
    Blake3,
}

impl Algo {
    /// Digest length in bytes.
    pub(crate) fn digest_len(self) -> usize {
        match self {
            Algo::Sha256 | Algo::Blake3 => 32,
            Algo::Sha512 => 64,
        }
    }

    /// The name in coreutils' `--tag` lines.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Algo::Sha256 => "SHA256",
            Algo::Sha512 => "SHA512",
            Algo::Blake3 => "BLAKE3",
        }
    }

    /// Estimated worker time per byte, in picoseconds (one core here: SHA-256 ~1,550 MB/s,
    /// SHA-512 ~611 MB/s, BLAKE3 ~3.0 GB/s). Only the scheduler's cost estimates use it.
    pub(crate) fn ps_per_byte(self) -> u64 {
        match self {
            Algo::Sha256 => 650,
            Algo::Sha512 => 1_640,
            Algo::Blake3 => 333,
        }
    }
}

/// Everything a run needs from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) algo: Algo,
    /// Paths (hash mode) or manifests (check mode), raw bytes.
    pub(crate) paths: Vec<Vec<u8>>,
    pub(crate) jobs: usize,
    pub(crate) follow: bool,
    pub(crate) zero: bool,
    pub(crate) ordered: bool,
    pub(crate) check: bool,
    pub(crate) quiet: bool,
    pub(crate) status: bool,
    /// `None`: when stderr is a terminal.
    pub(crate) progress: Option<bool>,
}

/// Exit status: every file hashed (and every check passed).
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status: some file failed, or a check did not match.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit status: interrupted (128 + SIGINT, as a shell reports it).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Runs `shmpool hash` (or its `--check`); returns the exit status.
///
/// Once `interrupt` comes (it wakes the run's wait for replies) the pool is terminated (no
/// worker survives) and the status is [`EXIT_INTERRUPTED`] (on which `cmd::hash` ends the
/// process by SIGINT).
///
/// # Errors
///
/// Writing to stdout failed (a broken pipe is for the caller to treat as success), or the pool
/// could not be built.
pub(crate) fn run(cfg: &Config, interrupt: &Interrupt) -> anyhow::Result<u8> {
    run_on(cfg, interrupt, None)
}

/// [`run`] with the tasks going to `workers` (the ranks of an MPI job) instead of a pool built
/// here; `None` is [`run`].
///
/// # Errors
///
/// As [`run`].
pub(crate) fn run_on(
    cfg: &Config,
    interrupt: &Interrupt,
    workers: Option<&dyn engine::Workers>,
) -> anyhow::Result<u8> {
    let progress = cfg.progress.unwrap_or_else(|| io::stderr().is_terminal());
    let opts = engine::Options {
        algo: cfg.algo,
        ordered: cfg.ordered,
        progress: progress.then_some(Duration::from_millis(250)),
    };
    // Not `stdout().lock()`: the pool's fork server takes the stdout lock to flush it before
    // forking, and would wait forever for a lock this thread held through the run.
    let out = BufWriter::with_capacity(64 << 10, crate::stdfds::Stdout);
    if cfg.check {
        let sink = CheckSink {
            out,
            esc: Escape::for_check(cfg.algo),
            quiet: cfg.quiet,
            status: cfg.status,
            mismatched: 0,
            unreadable: 0,
            failed: false,
            progress: Progress::new(progress),
        };
        let items = Manifests::new(cfg.paths.clone(), cfg.algo);
        run_items(cfg, opts, items, sink, interrupt, workers)
    } else {
        let sink = HashSink {
            out,
            line: Vec::new(),
            esc: Escape::for_hash(cfg.algo, cfg.zero),
            zero: cfg.zero,
            failed: false,
            progress: Progress::new(progress),
        };
        let only_stdin = cfg.paths.is_empty() || cfg.paths.iter().all(|p| p == b"-");
        let items = Walk::new(cfg.paths.clone(), cfg.follow).map(|source| Item { source, tag: () });
        if only_stdin {
            // No file to share out: hash in this process, no pool.
            return stdin_only(cfg, items, sink, interrupt);
        }
        run_items(cfg, opts, items, sink, interrupt, workers)
    }
}

/// A sink that also says whether anything failed, and erases its progress line.
trait Verdict {
    fn failed(&self) -> bool;
    fn clear_progress(&mut self) -> io::Result<()>;
}

fn run_items<T, S: Sink<T> + Verdict>(
    cfg: &Config,
    opts: engine::Options,
    items: impl Iterator<Item = Item<T>>,
    mut sink: S,
    interrupt: &Interrupt,
    workers: Option<&dyn engine::Workers>,
) -> anyhow::Result<u8> {
    if let Some(workers) = workers {
        let finish = {
            let sink = SinkRef(&mut sink);
            engine::run(workers, opts, items, sink, interrupt)?
        };
        if finish == Finish::Interrupted {
            let _ = sink.clear_progress();
            return Ok(EXIT_INTERRUPTED);
        }
        sink.clear_progress()?;
        return Ok(if sink.failed() { EXIT_FAILED } else { EXIT_OK });
    }
    let pool = shmpool::Pool::builder().processes(cfg.jobs).build()?;
    let finish = {
        let sink = SinkRef(&mut sink);
        engine::run(&pool, opts, items, sink, interrupt)
    };
    match finish {
        Ok(Finish::Completed) => {
            pool.close();
            pool.join()?;
        }
        Ok(Finish::Interrupted) => {
            pool.terminate();
            let _ = sink.clear_progress();
            return Ok(EXIT_INTERRUPTED);
        }
        Err(e) => {
            pool.terminate();
            return Err(e);
        }
    }
    sink.clear_progress()?;
    Ok(if sink.failed() { EXIT_FAILED } else { EXIT_OK })
}

/// Standard input alone: hashed here.
fn stdin_only(
    cfg: &Config,
    items: impl Iterator<Item = Item<()>>,
    mut sink: HashSink,
    interrupt: &Interrupt,
) -> anyhow::Result<u8> {
    let mut buf = digest::ReadBuf::new();
    for item in items {
        let outcome = match digest::hash_reader(cfg.algo, &mut crate::stdfds::Stdin, buf.get()) {
            Ok(d) => Outcome::Digest(d),
            Err(e) => Outcome::Failed(format::reason(&e)),
        };
        // Ctrl-C while waiting for input (the read gave up): no line for it.
        if interrupt.is_set() {
            return Ok(EXIT_INTERRUPTED);
        }
        sink.done(item, outcome)?;
    }
    sink.flush()?;
    Ok(if sink.failed { EXIT_FAILED } else { EXIT_OK })
}

/// Lets the engine borrow a sink that the caller still reads afterwards.
struct SinkRef<'s, S>(&'s mut S);

impl<T, S: Sink<T>> Sink<T> for SinkRef<'_, S> {
    fn done(&mut self, item: Item<T>, outcome: Outcome) -> io::Result<()> {
        self.0.done(item, outcome)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
    fn progress(&mut self, files: u64, bytes: u64, elapsed: Duration) {
        self.0.progress(files, bytes, elapsed);
    }
}

/// The progress line on stderr (files, bytes, MB/s), overwritten in place.
#[derive(Debug)]
struct Progress {
    enabled: bool,
    shown: bool,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            shown: false,
        }
    }

    fn show(&mut self, files: u64, bytes: u64, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        let mb = bytes as f64 / 1e6;
        let rate = mb / elapsed.as_secs_f64().max(1e-9);
        let _ = write!(
            io::stderr().lock(),
            "\r\x1b[K{files} files, {mb:.1} MB, {rate:.0} MB/s"
        );
        self.shown = true;
    }

    /// Erases the line (before an error line, and at the end).
    fn clear(&mut self) -> io::Result<()> {
        if self.shown {
            self.shown = false;
            io::stderr().lock().write_all(b"\r\x1b[K")?;
        }
        Ok(())
    }
}

/// Writes an error line to stderr, after flushing `out` so a terminal shows them in order.
fn report(
    out: &mut impl Write,
    progress: &mut Progress,
    name: &[u8],
    reason: &str,
    esc: Escape,
) -> io::Result<()> {
    out.flush()?;
    progress.clear()?;
    let mut line = Vec::new();
    format::push_error_line(&mut line, name, reason, esc);
    io::stderr().lock().write_all(&line)
}

/// Hash mode: one `HEX  PATH` line per file on stdout, one error line per failure on stderr.
struct HashSink {
    out: BufWriter<crate::stdfds::Stdout>,
    /// The line being written (reused: no allocation per file).
    line: Vec<u8>,
    esc: Escape,
    zero: bool,
    failed: bool,
    progress: Progress,
}

impl Verdict for HashSink {
    fn failed(&self) -> bool {
        self.failed
    }

    fn clear_progress(&mut self) -> io::Result<()> {
        self.progress.clear()
    }
}

impl Sink<()> for HashSink {
    fn done(&mut self, item: Item<()>, outcome: Outcome) -> io::Result<()> {
        let name: &[u8] = match &item.source {
            Source::File { path, .. } | Source::Failed { path, .. } => path,
            Source::Stdin => b"-",
            Source::Marker => return Ok(()),
        };
        match outcome {
            Outcome::Digest(d) => {
                self.line.clear();
                format::push_hash_line(&mut self.line, d.as_slice(), name, self.esc, self.zero);
                self.out.write_all(&self.line)
            }
            Outcome::Failed(reason) => {
                self.failed = true;
                report(&mut self.out, &mut self.progress, name, &reason, self.esc)
            }
            Outcome::Marker => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn progress(&mut self, files: u64, bytes: u64, elapsed: Duration) {
        self.progress.show(files, bytes, elapsed);
    }
}

/// What a check item carries.
#[derive(Debug)]
enum CheckTag {
    /// A manifest line: the digest expected.
    Line(Vec<u8>),
    /// The end of one manifest, with what the parser counted.
    End {
        manifest: Vec<u8>,
        good: u64,
        bad: u64,
        /// The manifest could not be opened or read.
        error: Option<String>,
    },
}

/// Check mode: `PATH: OK|FAILED|FAILED open or read` lines, coreutils' warnings.
struct CheckSink {
    out: BufWriter<crate::stdfds::Stdout>,
    esc: Escape,
    quiet: bool,
    status: bool,
    /// Counts of the current manifest.
    mismatched: u64,
    unreadable: u64,
    failed: bool,
    progress: Progress,
}

impl Verdict for CheckSink {
    fn failed(&self) -> bool {
        self.failed
    }

    fn clear_progress(&mut self) -> io::Result<()> {
        self.progress.clear()
    }
}

impl CheckSink {
    fn line(&mut self, name: &[u8], status: &str) -> io::Result<()> {
        let mut line = Vec::new();
        format::push_check_line(&mut line, name, status, self.esc);
        self.out.write_all(&line)
    }

    fn warn(&mut self, text: &str) -> io::Result<()> {
        self.out.flush()?;
        self.progress.clear()?;
        writeln!(io::stderr().lock(), "shmpool: WARNING: {text}")
    }
}

/// `1 line is` / `2 lines are`.
fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

impl Sink<CheckTag> for CheckSink {
    fn done(&mut self, item: Item<CheckTag>, outcome: Outcome) -> io::Result<()> {
        match item.tag {
            CheckTag::Line(expected) => {
                let name: &[u8] = match &item.source {
                    Source::File { path, .. } | Source::Failed { path, .. } => path,
                    Source::Stdin | Source::Marker => b"-",
                };
                match outcome {
                    Outcome::Digest(d) if d.as_slice() == expected.as_slice() => {
                        if !self.quiet && !self.status {
                            self.line(name, "OK")?;
                        }
                    }
                    Outcome::Digest(_) => {
                        self.mismatched += 1;
                        self.failed = true;
                        if !self.status {
                            self.line(name, "FAILED")?;
                        }
                    }
                    Outcome::Failed(reason) => {
                        self.unreadable += 1;
                        self.failed = true;
                        report(&mut self.out, &mut self.progress, name, &reason, self.esc)?;
                        if !self.status {
                            self.line(name, "FAILED open or read")?;
                        }
                    }
                    Outcome::Marker => {}
                }
            }
            CheckTag::End {
                manifest,
                good,
                bad,
                error,
            } => {
                let (mismatched, unreadable) = (self.mismatched, self.unreadable);
                self.mismatched = 0;
                self.unreadable = 0;
                if let Some(reason) = error {
                    self.failed = true;
                    return report(
                        &mut self.out,
                        &mut self.progress,
                        &manifest,
                        &reason,
                        self.esc,
                    );
                }
                if good == 0 {
                    self.failed = true;
                    return report(
                        &mut self.out,
                        &mut self.progress,
                        &manifest,
                        "no properly formatted checksum lines found",
                        self.esc,
                    );
                }
                if !self.status {
                    if bad > 0 {
                        self.warn(&format!(
                            "{} improperly formatted",
                            plural(bad, "line is", "lines are")
                        ))?;
                    }
                    if unreadable > 0 {
                        self.warn(&format!(
                            "{} could not be read",
                            plural(unreadable, "listed file", "listed files")
                        ))?;
                    }
                    if mismatched > 0 {
                        self.warn(&format!(
                            "{} did NOT match",
                            plural(mismatched, "computed checksum", "computed checksums")
                        ))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn progress(&mut self, files: u64, bytes: u64, elapsed: Duration) {
        self.progress.show(files, bytes, elapsed);
    }
}

/// The lines of the manifests, read lazily, as check items; each manifest ends with an `End`.
struct Manifests {
    names: std::vec::IntoIter<Vec<u8>>,
    current: Option<Open>,
    algo: Algo,
}

/// The manifest being read.
struct Open {
    name: Vec<u8>,
    lines: Box<dyn BufRead>,
    good: u64,
    bad: u64,
}

impl Manifests {
    fn new(names: Vec<Vec<u8>>, algo: Algo) -> Manifests {
        let names = if names.is_empty() {
            vec![b"-".to_vec()]
        } else {
            names
        };
        Manifests {
            names: names.into_iter(),
            current: None,
            algo,
        }
    }
}

impl Iterator for Manifests {
    type Item = Item<CheckTag>;

    fn next(&mut self) -> Option<Item<CheckTag>> {
        loop {
            let Some(cur) = self.current.as_mut() else {
                let name = self.names.next()?;
                let lines: io::Result<Box<dyn BufRead>> = if name == b"-" {
                    Ok(Box::new(BufReader::new(crate::stdfds::Stdin)) as Box<dyn BufRead>)
                } else {
                    File::open(digest::os_path(&name)).map(|f| {
                        Box::new(BufReader::with_capacity(64 << 10, f)) as Box<dyn BufRead>
                    })
                };
                match lines {
                    Ok(lines) => {
                        self.current = Some(Open {
                            name,
                            lines,
                            good: 0,
                            bad: 0,
                        });
                        continue;
                    }
                    Err(e) => {
                        return Some(end(name, 0, 0, Some(format::reason(&e))));
                    }
                }
            };
            let mut line = Vec::new();
            match cur.lines.read_until(b'\n', &mut line) {
                Ok(0) => {
                    let cur = self.current.take()?;
                    return Some(end(cur.name, cur.good, cur.bad, None));
                }
                Ok(_) => {
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    match manifest::parse_line(line, self.algo) {
                        Some(entry) => {
                            cur.good += 1;
                            // A line for `-` checks standard input, as sha*sum and b3sum do.
                            let source = if entry.path == b"-" {
                                Source::Stdin
                            } else {
                                Source::File {
                                    path: entry.path,
                                    size: None,
                                    regular: false,
                                }
                            };
                            return Some(Item {
                                source,
                                tag: CheckTag::Line(entry.expected),
                            });
                        }
                        None => cur.bad += 1,
                    }
                }
                Err(e) => {
                    let cur = self.current.take()?;
                    return Some(end(cur.name, cur.good, cur.bad, Some(format::reason(&e))));
                }
            }
        }
    }
}

fn end(manifest: Vec<u8>, good: u64, bad: u64, error: Option<String>) -> Item<CheckTag> {
    Item {
        source: Source::Marker,
        tag: CheckTag::End {
            manifest,
            good,
            bad,
            error,
        },
    }
}
