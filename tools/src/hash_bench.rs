//! `shmpool bench hash [DIR]`: `shmpool hash` against the tools people use for the same job, on
//! the same warm tree (or, with `--cold`, a tree evicted from the page cache before every
//! command), paired (every command once per round, rounds repeated).
//!
//! Contenders: `shmpool hash -a sha512|sha256|blake3 -j N`, the Python seed program
//! (`compare/hash_seed.py`: `multiprocessing.Pool(2)`, `imap_unordered(mark, files, 20)`),
//! `find DIR -type f -print0 | xargs -0 -P2 -n64 sha512sum` (and `sha256sum`),
//! `find … | xargs -0 b3sum` (its own threads), and `rhash`/`hashdeep` when installed. Every
//! command writes to `/dev/null`. Times are wall-clock seconds (median of the rounds); CPU is
//! the user + system time of the command and all its children (`getrusage(RUSAGE_CHILDREN)`).
//! Before timing, the tree is read once (warm cache) and `shmpool hash`'s SHA-256 lines are
//! checked against `sha256sum`'s.
//!
//! **Disk reads.** Every timed command and every floor measurement also records the bytes it
//! caused to be read from storage ("disk MB"): `ru_inblock` of `getrusage` (`RUSAGE_CHILDREN`
//! around a command, `RUSAGE_THREAD` summed over the threads of a floor loop). On Linux that
//! is the task IO accounting's `read_bytes` / 512: bytes of every read the task submitted to
//! the block layer (page-cache misses, readahead and mmap faults included, file-system
//! metadata too); a page-cache hit counts 0, and so does a read that another task brought in.
//! Checked on these VMs (ext4 on /dev/vda, kernel 6.18, 2026-11-30): a 64 MB file dropped with
//! `POSIX_FADV_DONTNEED` then read by `cat` counted 64.0 MB, the same read again 0; `shmpool
//! hash` over a 64.6 MB tree, dropped first, counted 64.8-65.2 MB against 64.9-65.4 MB of
//! `pgpgin` in /proc/vmstat (its workers included: the fork server reaps them and shmpool
//! reaps the fork server, and `RUSAGE_CHILDREN` sums every reaped descendant), warm 0. A
//! descendant that is never reaped would go uncounted, which is why this is not a system-wide
//! `pgpgin` delta, which would count other users' reads instead. After the table the bench
//! says which round of `shmpool hash` (or of a `j`-stream floor) was not warm: one that read
//! more than 1% of the tree's bytes from disk.
//!
//! **`--cold`** drops the tree's pages from the page cache ([`evict`]: `posix_fadvise(fd, 0, 0,
//! POSIX_FADV_DONTNEED)` on every file) before every timed command and before every floor
//! measurement (each pass of the one-core floor, each round's `j`-stream floor), outside every
//! timing; the bench prints the evictions' times (about 1 s for 117,772 files). The check
//! against `sha256sum` still runs first (it no longer counts as a warm-up). The one-core
//! measured floor, CPU time only, then leaves out the disk waits: the bench calls it a CPU
//! floor; the `j`-stream floor's wall time includes them, as the commands' do. Only clean,
//! unmapped pages are dropped, so no data is lost, but the cache is the machine's: every other
//! reader of those files (a build reading the toolchain, say) reads them from disk again. On
//! tmpfs the advice does nothing; the bench then says that the rounds were not cold ("NOT
//! COLD"). It says so too when another process reads the same tree during the run: the pages
//! it brings in are charged to it, and the bench's commands find them cached. Alone, a cold
//! `shmpool hash ~/.rustup` read 3.03 GB (the 2.66 GB of bytes rounded up to pages) four times
//! in four; during a run of 2026-11-30 17:07 UTC, with other work on the machine, cold rounds
//! read 0.14-2.7 GB.
//!
//! "Warm" does not last on these VMs: a DAMON scheme (`/sys/kernel/mm/damon/admin/kdamonds/0`:
//! action `pageout`, page-cache pages not accessed for 12 aggregation intervals of 5 s, up to
//! 128 MiB/s) drops file pages idle for about a minute. A `shmpool hash -a blake3 ~/.rustup`
//! five minutes after the last one read 160 MB from disk and took 3.99 s; the next, 1.43 s
//! (`pgpgin` in /proc/vmstat: 160 MB, then 2 MB). Within the bench every file is read every few
//! seconds; a hand-timed run must follow another within the minute.
//!
//! Three floors are printed: issue 9's (its single-core rates and per-file cost, constants; the
//! target's definition), one measured here on this tree: the CPU time of the plainest
//! single-threaded loop (open, read, hash, close every file) divided by the workers, and the
//! **`j`-stream floor** (the two-stream floor with the default `-j 2`): the same loop run by `j`
//! threads at once, each taking the next files of one shared list, wall time, measured in every
//! round right after the commands, so each round's ratio compares runs made under the same
//! load. The second assumes that `j` streams run `j` times as fast as one; on this VM two
//! SHA-512 streams reach only 1.6–1.9x one stream (`openssl speed -evp sha512 -multi 2`), and
//! the third floor measures what the cores give.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cli::HashBenchArgs;
use crate::hash::Algo;
use crate::hash::digest::ReadBuf;
use crate::hash::walk::{Source, Walk};

/// The Python seed program, built into the binary and written to the output directory.
const SEED: &str = include_str!("../compare/hash_seed.py");

/// One contender: a label, the algorithm it computes, the shell command line, and whether it
/// is `shmpool hash`.
struct Contender {
    label: String,
    algo: &'static str,
    shell: String,
    ours: bool,
}

/// Single-quotes `s` for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// What a command or a floor loop used: CPU seconds (user + system) and bytes read from
/// storage (see the module doc: `ru_inblock` x 512).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Usage {
    cpu: f64,
    disk: u64,
}

impl Usage {
    /// `getrusage(who)`: `RUSAGE_CHILDREN` (reaped descendants) or `RUSAGE_THREAD` (the
    /// calling thread), so far.
    fn of(who: libc::c_int) -> Usage {
        // SAFETY: getrusage writes one `rusage` into the zeroed value we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the callers pass RUSAGE_CHILDREN or RUSAGE_THREAD, valid `who`s on
        // Linux, so the call cannot fail.
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Usage {
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            disk: u64::try_from(ru.ru_inblock).unwrap_or(0) * 512,
        }
    }

    /// What was used between `before` and `self`.
    fn since(self, before: Usage) -> Usage {
        Usage {
            cpu: self.cpu - before.cpu,
            disk: self.disk.saturating_sub(before.disk),
        }
    }
}

/// Runs `shell` with stdout to /dev/null; wall seconds, and the CPU and disk reads of it and
/// all its children.
fn time(shell: &str) -> Result<(f64, Usage)> {
    let u0 = Usage::of(libc::RUSAGE_CHILDREN);
    let t = Instant::now();
    let status = Command::new("sh")
        .args(["-c", shell])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {shell}"))?;
    let wall = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("`{shell}` failed: {status}");
    }
    Ok((wall, Usage::of(libc::RUSAGE_CHILDREN).since(u0)))
}

/// Megabytes (10^6 bytes), for the reports.
fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Drops the page-cache pages of every file of `paths`: opens each one `O_RDONLY | O_NONBLOCK
/// | O_CLOEXEC` (no FIFO or lease holder can make it wait) and calls `posix_fadvise(fd, 0, 0,
/// POSIX_FADV_DONTNEED)`. Returns how many files could not be opened or advised (skipped).
///
/// The kernel drops only clean pages that no process maps: dirty ones are written back first
/// (asynchronously, so a file written just before may keep some pages; the caller syncs it if
/// that matters) and stay, so no data is ever lost. The cache is shared: every other reader
/// of those files reads them from disk again afterwards. tmpfs ignores the advice.
pub(crate) fn evict(paths: &[Vec<u8>]) -> usize {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mut skipped = 0;
    for p in paths {
        // std opens with O_CLOEXEC always.
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(crate::hash::digest::os_path(p))
        else {
            skipped += 1;
            continue;
        };
        // SAFETY: advice on a descriptor we own, open for the whole call; it touches no memory
        // of ours, and DONTNEED drops only clean, unmapped pages (it cannot lose data).
        if unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } != 0 {
            skipped += 1;
        }
    }
    skipped
}

/// `--cold`: the tree's files, and each eviction's seconds and skipped files.
struct Cold<'p> {
    paths: &'p [Vec<u8>],
    seconds: Vec<f64>,
    skipped: usize,
}

impl Cold<'_> {
    /// Evicts the tree ([`evict`]), timing it; call it before a measurement starts its clock.
    fn evict(&mut self) {
        let t = Instant::now();
        self.skipped = self.skipped.max(evict(self.paths));
        self.seconds.push(t.elapsed().as_secs_f64());
    }
}

/// Evicts when `cold` is on; nothing otherwise.
fn evict_if(cold: &mut Option<Cold<'_>>) {
    if let Some(c) = cold {
        c.evict();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The default tree: `$RUSTUP_HOME`, else `~/.rustup`.
fn default_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("RUSTUP_HOME") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("neither RUSTUP_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".rustup"))
}

/// Single-core rates measured on these machines (issue 9), bytes per second, for the floor.
fn single_core_rate(algo: &str) -> f64 {
    match algo {
        "sha512" => 611e6,
        "sha256" => 1_550e6,
        _ => 3_000e6,
    }
}

/// Open + read + close of one file on one core (issue 9), seconds.
const PER_FILE_S: f64 = 7.7e-6;

/// The algorithms the bench runs, each with its `-a` name, in the order of its report.
const ALGOS: [(Algo, &str); 3] = [
    (Algo::Sha512, "sha512"),
    (Algo::Sha256, "sha256"),
    (Algo::Blake3, "blake3"),
];

/// Runs the benchmark.
pub(crate) fn run(a: &HashBenchArgs) -> Result<ExitCode> {
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    let dir_s = dir
        .to_str()
        .context("the directory's path must be UTF-8 (it goes into shell commands)")?
        .to_string();
    if !dir.is_dir() {
        bail!("{dir_s} is not a directory");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (paths, sizes, bytes) = count(&dir);
    let files = paths.len() as u64;
    let exe = std::env::current_exe().context("locating the shmpool binary")?;
    let exe = quote(&exe.to_string_lossy());
    let d = quote(&dir_s);
    let j = a.jobs;
    let mut c: Vec<Contender> = Vec::new();
    for (_, algo) in ALGOS {
        c.push(Contender {
            label: format!("shmpool hash -a {algo} -j {j}"),
            algo,
            shell: format!("{exe} hash --no-progress -a {algo} -j {j} {d}"),
            ours: true,
        });
    }
    if !a.no_python && !a.shmpool_only {
        let script = a.out.join("hash_seed.py");
        std::fs::write(&script, SEED).with_context(|| format!("writing {}", script.display()))?;
        c.push(Contender {
            label: "python seed (Pool(2), imap_unordered, 20)".into(),
            algo: "sha512",
            shell: format!(
                "{} {} {d}",
                quote(&a.python.to_string_lossy()),
                quote(&script.to_string_lossy())
            ),
            ours: false,
        });
    }
    for (tool, algo) in [("sha512sum", "sha512"), ("sha256sum", "sha256")] {
        if a.shmpool_only {
            break;
        }
        c.push(Contender {
            label: format!("xargs -P{j} -n64 {tool}"),
            algo,
            shell: format!("find {d} -type f -print0 | xargs -0 -P{j} -n64 {tool}"),
            ours: false,
        });
    }
    if !a.shmpool_only && have("b3sum") {
        c.push(Contender {
            label: "xargs b3sum (its own threads)".into(),
            algo: "blake3",
            shell: format!("find {d} -type f -print0 | xargs -0 b3sum"),
            ours: false,
        });
    }
    if !a.shmpool_only && have("rhash") {
        c.push(Contender {
            label: "rhash -r --sha512".into(),
            algo: "sha512",
            shell: format!("rhash -r --sha512 {d}"),
            ours: false,
        });
    }
    if !a.shmpool_only && have("hashdeep") {
        c.push(Contender {
            label: format!("hashdeep -r -c sha256 -j {j}"),
            algo: "sha256",
            shell: format!("hashdeep -r -c sha256 -j {j} {d}"),
            ours: false,
        });
    }

    if a.cold {
        eprintln!(
            "bench hash: {dir_s}: {files} files, {:.2} GB; checking the output (--cold: then the \
             tree leaves the page cache before every command and floor)",
            bytes as f64 / 1e9
        );
    } else {
        eprintln!(
            "bench hash: {dir_s}: {files} files, {:.2} GB; warming the cache and checking the output",
            bytes as f64 / 1e9
        );
    }
    check(&exe, &d)?;
    let load_start = load_average();
    let mut cold = a.cold.then(|| Cold {
        paths: &paths,
        seconds: Vec::new(),
        skipped: 0,
    });
    let mut walls = vec![Vec::new(); c.len()];
    let mut cpus = vec![Vec::new(); c.len()];
    let mut disks: Vec<Vec<u64>> = vec![Vec::new(); c.len()];
    let mut csv = String::from("round,command,algo,seconds,cpu_seconds,files,bytes,disk_bytes\n");
    // The j-stream floor of each algorithm, measured in every round right after the commands
    // (paired: the load of the moment weighs on both), and each round's ratio of shmpool's
    // time (and CPU) to it.
    let order = parallel_order(&sizes);
    let mut streams: Vec<Streams> = ALGOS.iter().map(|_| Streams::default()).collect();
    // Rounds of `shmpool hash` and of the j-stream floors and what they read from disk, for the
    // warm (or cold) check after the table.
    let mut checked: Vec<(u32, String, u64)> = Vec::new();
    for round in 1..=a.runs {
        for (i, k) in c.iter().enumerate() {
            evict_if(&mut cold);
            let (w, u) = time(&k.shell)?;
            eprintln!(
                "  round {round}: {:<45} {w:7.2} s  (cpu {:.2} s, disk {:.1} MB)",
                k.label,
                u.cpu,
                mb(u.disk)
            );
            walls[i].push(w);
            cpus[i].push(u.cpu);
            disks[i].push(u.disk);
            if k.ours {
                checked.push((round, k.label.clone(), u.disk));
            }
            csv.push_str(&format!(
                "{round},\"{}\",{},{w:.4},{:.4},{files},{bytes},{}\n",
                k.label, k.algo, u.cpu, u.disk
            ));
        }
        for ((algo, name), st) in ALGOS.into_iter().zip(&mut streams) {
            let Some(i) = c.iter().position(|k| k.algo == name) else {
                continue;
            };
            evict_if(&mut cold);
            let (w, u) = parallel_floor(&paths, &order, algo, j)?;
            let label = format!("{j}-stream floor");
            eprintln!(
                "  round {round}: {:<45} {w:7.2} s  (cpu {:.2} s, disk {:.1} MB)",
                format!("{label} {name}"),
                u.cpu,
                mb(u.disk)
            );
            csv.push_str(&format!(
                "{round},\"{label}\",{name},{w:.4},{:.4},{files},{bytes},{}\n",
                u.cpu, u.disk
            ));
            checked.push((round, format!("{label} {name}"), u.disk));
            st.wall.push(w);
            st.cpu.push(u.cpu);
            st.disk.push(u.disk);
            st.ratio.push(walls[i][walls[i].len() - 1] / w);
            st.cpu_ratio.push(cpus[i][cpus[i].len() - 1] / u.cpu);
        }
    }
    let csv_path = a.out.join("hash.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;

    let med: Vec<f64> = walls.iter_mut().map(|v| median(v)).collect();
    let cpu: Vec<f64> = cpus.iter_mut().map(|v| median(v)).collect();
    let disk: Vec<f64> = disks
        .iter()
        .map(|v| median(&mut v.iter().map(|&b| b as f64).collect::<Vec<_>>()))
        .collect();
    let ours = |algo: &str| c.iter().position(|k| k.algo == algo).map(|i| med[i]);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "shmpool bench hash: {dir_s}: {files} files, {:.2} GB, {} rounds (median), {}, -j {j}; \
         load average (1 min) {load_start} before the rounds, {} after",
        bytes as f64 / 1e9,
        a.runs,
        if a.cold {
            "cold cache (the tree evicted before every command and floor)"
        } else {
            "warm cache"
        },
        load_average()
    )?;
    writeln!(
        out,
        "| command | algo | seconds | MB/s | files/s | CPU s | time / shmpool's | CPU / shmpool's | disk MB |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let ours_cpu = |algo: &str| c.iter().position(|k| k.algo == algo).map(|i| cpu[i]);
    for (i, k) in c.iter().enumerate() {
        let ratio = ours(k.algo).map_or(String::from("-"), |o| format!("{:.2}", med[i] / o));
        let cpu_ratio =
            ours_cpu(k.algo).map_or(String::from("-"), |o| format!("{:.2}", cpu[i] / o));
        writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {ratio} | {cpu_ratio} | {:.1} |",
            k.label,
            k.algo,
            med[i],
            bytes as f64 / 1e6 / med[i],
            files as f64 / med[i],
            cpu[i],
            disk[i] / 1e6,
        )?;
    }
    writeln!(out)?;
    // The most any command read in one round (the median hides a single disturbed round).
    let most = c
        .iter()
        .zip(&disks)
        .flat_map(|(k, v)| {
            v.iter()
                .enumerate()
                .map(move |(r, &b)| (b, r + 1, &k.label))
        })
        // The first of equals.
        .rev()
        .max_by_key(|&(b, ..)| b);
    let most = match most {
        Some((b, r, label)) if b > 0 => {
            format!("most in one round: {:.1} MB ({label}, round {r})", mb(b))
        }
        _ => "no round of any command read from disk".to_string(),
    };
    writeln!(
        out,
        "disk MB = bytes read from storage by the command and its children (getrusage \
         ru_inblock x 512: page-cache misses, readahead included; hits count 0), median of \
         the rounds; {most}"
    )?;
    for line in not_warm_or_cold(a.cold, bytes, &checked) {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "floor = bytes / ({j} x single-core rate) + files x {:.1} us / {j}; CPU floor = {j} x floor \
         (CPU time depends much less than wall time on what else runs on the machine){}:",
        PER_FILE_S * 1e6,
        if a.cold {
            "; warm-cache arithmetic: a cold run's wall time adds the waits for the disk"
        } else {
            ""
        }
    )?;
    for (_, algo) in ALGOS {
        let floor = bytes as f64 / (j as f64 * single_core_rate(algo))
            + files as f64 * PER_FILE_S / j as f64;
        if let Some(i) = c.iter().position(|k| k.algo == algo) {
            writeln!(
                out,
                "  {algo}: floor {floor:.2} s ({:.0} MB/s single core); shmpool {:.2} s = {:.2} x floor; \
                 CPU {:.2} s = {:.2} x CPU floor",
                single_core_rate(algo) / 1e6,
                med[i],
                med[i] / floor,
                cpu[i],
                cpu[i] / (floor * j as f64)
            )?;
        }
    }
    writeln!(
        out,
        "measured floor = CPU of one thread of this process opening, reading (page-aligned 256 KiB buffer), \
         hashing and closing every file, no pool, / {j}{}:",
        if a.cold {
            " (--cold: each of its two passes starts cold, and it counts CPU time only, so it is a \
             CPU floor: it leaves out the waits for the disk that the cold commands' wall times include)"
        } else {
            ""
        }
    )?;
    let mut ones = Vec::new();
    for (algo, name) in ALGOS {
        // Every algorithm has its `shmpool hash` contender: `ones` lines up with the list.
        let one = measured_floor(&paths, algo, || evict_if(&mut cold));
        ones.push(one.cpu);
        let Some(i) = c.iter().position(|k| k.algo == name) else {
            continue;
        };
        let floor = one.cpu / j as f64;
        writeln!(
            out,
            "  {name}: one core {:.2} s CPU ({:.0} MB/s, {:.1} us/file all in, disk {:.1} MB); {}floor \
             {floor:.2} s{}; shmpool {:.2} s = {:.2} x floor; CPU {:.2} s = {:.2} x the loop's CPU",
            one.cpu,
            bytes as f64 / one.cpu / 1e6,
            one.cpu / files as f64 * 1e6,
            mb(one.disk),
            if a.cold { "CPU " } else { "" },
            if a.cold { " (excludes disk waits)" } else { "" },
            med[i],
            med[i] / floor,
            cpu[i],
            cpu[i] / one.cpu
        )?;
    }
    writeln!(
        out,
        "{j}-stream floor = wall time of the same loop run by {j} threads at once (files taken from one \
         shared list, those of 256 KiB or more first, biggest first), measured in every round right \
         after the commands{}; medians of the rounds, and of each round's ratio:",
        if a.cold { ", starting cold" } else { "" }
    )?;
    for (((_, name), st), one) in ALGOS.into_iter().zip(&mut streams).zip(ones) {
        let Some(i) = c.iter().position(|k| k.algo == name) else {
            continue;
        };
        let (wall, cpu_all) = (median(&mut st.wall), median(&mut st.cpu));
        let disk_most = st.disk.iter().copied().max().unwrap_or(0);
        let disk_med = median(&mut st.disk.iter().map(|&b| b as f64).collect::<Vec<_>>());
        writeln!(
            out,
            "  {name}: {j}-stream floor {wall:.2} s, CPU {cpu_all:.2} s ({j} streams = {:.2} x one core, \
             CPU {:.2} x one core's); shmpool {:.2} s = {:.2} x {j}-stream floor (per round: {}); \
             CPU {:.2} s = {:.2} x the {j} streams' CPU; disk {:.1} MB (max {:.1} MB)",
            one / wall,
            cpu_all / one,
            med[i],
            median(&mut st.ratio.clone()),
            st.ratio
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            cpu[i],
            median(&mut st.cpu_ratio),
            disk_med / 1e6,
            mb(disk_most),
        )?;
    }
    if let Some(cold) = &mut cold {
        let n = cold.seconds.len();
        let most = cold.seconds.iter().copied().fold(0.0, f64::max);
        writeln!(
            out,
            "cold: before every command and floor measurement the tree left the page cache \
             (posix_fadvise DONTNEED on {files} files, {} skipped): {n} evictions, median {:.2} s, \
             max {most:.2} s, outside every timing",
            cold.skipped,
            median(&mut cold.seconds)
        )?;
    }
    writeln!(out, "CSV: {}", csv_path.display())?;
    Ok(ExitCode::SUCCESS)
}

/// The warnings printed after the table: each round in `checked` (round, label, bytes read
/// from disk) that read more than 1% of the tree's `bytes` from disk when warm ("NOT WARM":
/// its wall time includes disk waits), or less than half of them when `cold` ("NOT COLD": the
/// eviction did not take, or another process brought the pages back first: a cold run of the
/// toolchain tree alone reads 3.03 GB, the tree's 2.66 GB rounded up to pages, every time).
fn not_warm_or_cold(cold: bool, bytes: u64, checked: &[(u32, String, u64)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (round, label, read) in checked {
        let share = *read as f64 / bytes.max(1) as f64 * 100.0;
        if !cold && read * 100 > bytes {
            lines.push(format!(
                "NOT WARM: round {round}: {label} read {:.1} MB from disk ({share:.1}% of the \
                 tree's {:.1} MB): its files had left the page cache, on these VMs usually through \
                 DAMON's pageout of file pages idle for about a minute (or another process \
                 evicted them); this round's wall time and the ratios made with it include waits \
                 for the disk",
                mb(*read),
                mb(bytes)
            ));
        }
        if cold && read * 2 < bytes {
            lines.push(format!(
                "NOT COLD: round {round}: {label} read only {:.1} MB from disk ({share:.1}% of \
                 the tree's {:.1} MB): most of its pages were in the page cache, so this round was \
                 not cold: the eviction did not take (tmpfs ignores it; dirty or mapped pages \
                 stay), or another process read the same files meanwhile (its reads are counted \
                 for it, not here)",
                mb(*read),
                mb(bytes)
            ));
        }
    }
    lines
}

/// The 1-minute load average (`/proc/loadavg`), as text; `?` where there is none. On 2 cores
/// anything above ~2 means other work competed with the bench.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Regular files under `dir` as `shmpool hash` walks it, their sizes, and their bytes in all.
fn count(dir: &Path) -> (Vec<Vec<u8>>, Vec<u64>, u64) {
    use std::os::unix::ffi::OsStrExt;
    let mut paths = Vec::new();
    let mut sizes = Vec::new();
    for s in Walk::new(vec![dir.as_os_str().as_bytes().to_vec()], false) {
        if let Source::File { path, size, .. } = s {
            // The walk does not stat what it meets (the workers do): stat here.
            sizes.push(size.unwrap_or_else(|| {
                std::fs::metadata(crate::hash::digest::os_path(&path)).map_or(0, |m| m.len())
            }));
            paths.push(path);
        }
    }
    let bytes = sizes.iter().sum();
    (paths, sizes, bytes)
}

/// The measured single-core floor: CPU seconds of the plainest loop on one thread of this
/// process, with no pool and no output: open each file, read it to its end through one
/// reused, page-aligned 256 KiB buffer into the hasher, close it. That is the issue's "bytes /
/// single-core rate + files x per-file cost" measured on this tree and machine, in CPU time
/// (so other load disturbs it less than wall time). Best of two passes (the first may still
/// warm the cache); `before_pass` runs before each pass starts its clock (`--cold` evicts
/// there). Returns the best pass's CPU seconds and the most bytes a pass read from disk.
fn measured_floor(paths: &[Vec<u8>], algo: Algo, mut before_pass: impl FnMut()) -> Usage {
    // Page-aligned, as the workers' buffer: the kernel's copy into a buffer 16 bytes into a page
    // (where malloc puts it) is much slower here, see `digest::ReadBuf`.
    let mut buf = ReadBuf::new();
    let mut best = Usage {
        cpu: f64::INFINITY,
        disk: 0,
    };
    for _ in 0..2 {
        before_pass();
        let u0 = Usage::of(libc::RUSAGE_THREAD);
        hash_each(paths, algo, &mut buf);
        let u = Usage::of(libc::RUSAGE_THREAD).since(u0);
        best.cpu = best.cpu.min(u.cpu);
        best.disk = best.disk.max(u.disk);
    }
    best
}

/// The loop of the measured floors: opens each file, reads it to its end into the hasher
/// through `buf`, closes it; a file that cannot be opened or read is skipped.
fn hash_each<'p>(paths: impl IntoIterator<Item = &'p Vec<u8>>, algo: Algo, buf: &mut ReadBuf) {
    for p in paths {
        if let Ok(mut f) = std::fs::File::open(crate::hash::digest::os_path(p)) {
            let _ = crate::hash::digest::hash_reader(algo, &mut f, buf.get());
        }
    }
}

/// The order the `j`-stream floor takes the files in: those of [`PARALLEL_BIG`] bytes or more
/// first, biggest first, then the others in walk order, so no big file ends the loop with one
/// thread alone. `shmpool hash` comes close to this without matching it: its engine takes a
/// big file ahead of the small ones only once the file has entered its window of walked files
/// (in walk order, not biggest first over the whole tree).
fn parallel_order(sizes: &[u64]) -> Vec<usize> {
    let mut big: Vec<usize> = (0..sizes.len())
        .filter(|&i| sizes[i] >= PARALLEL_BIG)
        .collect();
    big.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]));
    big.extend((0..sizes.len()).filter(|&i| sizes[i] < PARALLEL_BIG));
    big
}

/// Files of this many bytes or more go first in the `j`-stream floor: those the engine sends
/// alone in their task.
const PARALLEL_BIG: u64 = crate::hash::engine::MAP_MIN;

/// Files a thread of the `j`-stream floor takes from the shared list at a time.
const PARALLEL_GRAB: usize = 16;

/// One algorithm's `j`-stream floor, round by round.
#[derive(Default)]
struct Streams {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    /// Bytes read from disk by all threads.
    disk: Vec<u64>,
    /// shmpool's wall time / the floor's, in the same round.
    ratio: Vec<f64>,
    /// shmpool's CPU time / the floor's, in the same round.
    cpu_ratio: Vec<f64>,
}

/// The `j`-stream floor: the loop of [`measured_floor`] run by `j` threads at once, each taking
/// the next [`PARALLEL_GRAB`] files of one shared list (`order`, from [`parallel_order`])
/// until none is left. Returns the wall seconds from the moment all threads are ready to the
/// end of the last one, and the CPU seconds and disk reads of all threads (each thread's own
/// `getrusage(RUSAGE_THREAD)`, summed).
///
/// This is what `j` cores give this loop when they run it together: on a VM whose virtual cores
/// share physical ones, `j` streams of a hash can be much less than `j` times one stream.
///
/// # Errors
///
/// A thread could not be started (those started are let go without hashing), or one panicked
/// (a floor without its CPU time would be wrong, not smaller).
fn parallel_floor(
    paths: &[Vec<u8>],
    order: &[usize],
    algo: Algo,
    j: usize,
) -> Result<(f64, Usage)> {
    let next = std::sync::Mutex::new(0usize);
    // The start line: held for writing until every thread is spawned, then released with
    // `true`, or with `false` if a spawn failed (the threads spawned so far then return at once;
    // a barrier of `j + 1` would keep them waiting for ever).
    let gate = std::sync::RwLock::new(false);
    std::thread::scope(|s| {
        let mut go = gate.write().unwrap_or_else(|e| e.into_inner());
        let mut threads = Vec::with_capacity(j);
        for n in 0..j {
            let spawned = std::thread::Builder::new().spawn_scoped(s, || {
                let mut buf = ReadBuf::new();
                if !*gate.read().unwrap_or_else(|e| e.into_inner()) {
                    return Usage::default();
                }
                let u0 = Usage::of(libc::RUSAGE_THREAD);
                loop {
                    let from = {
                        let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                        let from = *n;
                        *n += PARALLEL_GRAB;
                        from
                    };
                    let Some(mine) = order.get(from..(from + PARALLEL_GRAB).min(order.len()))
                    else {
                        break;
                    };
                    hash_each(mine.iter().map(|&i| &paths[i]), algo, &mut buf);
                }
                Usage::of(libc::RUSAGE_THREAD).since(u0)
            });
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    drop(go);
                    return Err(e).with_context(|| format!("starting thread {n} of the floor"));
                }
            }
        }
        *go = true;
        drop(go);
        let t = Instant::now();
        let mut all = Usage::default();
        for h in threads {
            let u = h
                .join()
                .map_err(|_| anyhow::anyhow!("a thread of the {j}-stream floor panicked"))?;
            all.cpu += u.cpu;
            all.disk += u.disk;
        }
        Ok((t.elapsed().as_secs_f64(), all))
    })
}

/// Reads the whole tree once (warming the cache) and compares `shmpool hash`'s SHA-256 lines
/// with `sha256sum`'s (as sorted sets: the two walk in different orders).
fn check(exe: &str, d: &str) -> Result<()> {
    let lines = |shell: String| -> Result<Vec<String>> {
        let o = Command::new("sh")
            .args(["-c", &shell])
            .stderr(Stdio::inherit())
            .output()?;
        if !o.status.success() {
            bail!("`{shell}` failed: {}", o.status);
        }
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        Ok(v)
    };
    let ours = lines(format!("{exe} hash --no-progress -a sha256 {d}"))?;
    let theirs = lines(format!(
        "find {d} -type f -print0 | xargs -0 -P2 -n64 sha256sum"
    ))?;
    if ours != theirs {
        bail!(
            "shmpool hash and sha256sum disagree ({} and {} lines)",
            ours.len(),
            theirs.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evict_drops_a_files_pages_and_the_next_read_counts_them_as_disk_reads() {
        use crate::hash::digest::cold::{dir, resident};
        use std::os::unix::ffi::OsStrExt;
        // Next to the test binary, in the target directory of the checkout (ext4 here and in
        // CI): /tmp may be tmpfs, which keeps its pages whatever the advice.
        let dir = dir("evict");
        let path = dir.0.join("file");
        let len = 8 << 20;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // Clean pages only are dropped: write the file back first.
        std::fs::File::open(&path).unwrap().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), len);
        let (cached, pages) = resident(&path);
        assert_eq!(
            (cached, pages),
            (len / 4096, len / 4096),
            "not all in the cache"
        );

        assert_eq!(evict(&[path.as_os_str().as_bytes().to_vec()]), 0);
        assert_eq!(resident(&path), (0, pages), "pages left in the cache");

        // The next read comes from the disk, and `Usage` counts it; the one after, from the
        // cache: 0.
        let u0 = Usage::of(libc::RUSAGE_THREAD);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let cold = Usage::of(libc::RUSAGE_THREAD).since(u0);
        assert!(cold.disk >= len as u64, "{cold:?}");
        let u0 = Usage::of(libc::RUSAGE_THREAD);
        assert_eq!(std::fs::read(&path).unwrap().len(), len);
        assert_eq!(Usage::of(libc::RUSAGE_THREAD).since(u0).disk, 0);

        // What cannot be opened is skipped.
        assert_eq!(
            evict(&[dir.0.join("missing").as_os_str().as_bytes().to_vec()]),
            1
        );
    }

    #[test]
    fn a_round_that_read_over_1_percent_of_the_tree_from_disk_is_not_warm() {
        let checked = [
            (1, "shmpool hash -a sha512 -j 2".to_string(), 10_000_000),
            (2, "shmpool hash -a sha512 -j 2".to_string(), 30_000_000),
            (2, "2-stream floor blake3".to_string(), 160_000_000),
        ];
        let lines = not_warm_or_cold(false, 2_000_000_000, &checked);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "NOT WARM: round 2: shmpool hash -a sha512 -j 2 read 30.0 MB from disk (1.5% of \
                 the tree's 2000.0 MB)"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("DAMON"), "{}", lines[0]);
        assert!(lines[1].starts_with("NOT WARM: round 2: 2-stream floor blake3 read 160.0 MB"));
        // Cold, the same rounds read too little: the eviction did not take.
        let lines = not_warm_or_cold(true, 2_000_000_000, &checked);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines.iter().all(|l| l.starts_with("NOT COLD: ")),
            "{lines:?}"
        );
        assert!(not_warm_or_cold(true, 100_000_000, &checked[2..]).is_empty());
    }

    #[test]
    fn the_parallel_floor_takes_big_files_first_biggest_first_then_the_rest_in_order() {
        let k = 1 << 10;
        let sizes = [10, 300 * k, 5, 4 << 20, 256 * k, 0, 255 * k];
        assert_eq!(parallel_order(&sizes), [3, 1, 4, 0, 2, 5, 6]);
    }

    #[test]
    fn a_panicked_thread_of_the_parallel_floor_fails_it_instead_of_counting_zero() {
        // An index past `paths` makes the thread that takes it panic: the floor used to count
        // that thread's CPU time as 0 and report a figure.
        let paths = [b"/nonexistent".to_vec()];
        let err = parallel_floor(&paths, &[0, 1], Algo::Sha256, 2).unwrap_err();
        assert_eq!(err.to_string(), "a thread of the 2-stream floor panicked");
        // The same floor over valid indices measures.
        assert!(parallel_floor(&paths, &[0, 0], Algo::Sha256, 2).is_ok());
    }
}
