//! `shmpool bench hash [DIR]`: `shmpool hash` against the tools people use for the same job, on
//! the same warm tree, paired (every command once per round, rounds repeated).
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

/// One contender: a label, the algorithm it computes, and the shell command line.
struct Contender {
    label: String,
    algo: &'static str,
    shell: String,
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

/// CPU seconds (user + system) used so far by reaped children.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `shell` with stdout to /dev/null; wall and CPU seconds.
fn time(shell: &str) -> Result<(f64, f64)> {
    let cpu0 = children_cpu();
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
    Ok((wall, children_cpu() - cpu0))
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
        });
    }
    if !a.shmpool_only && have("b3sum") {
        c.push(Contender {
            label: "xargs b3sum (its own threads)".into(),
            algo: "blake3",
            shell: format!("find {d} -type f -print0 | xargs -0 b3sum"),
        });
    }
    if !a.shmpool_only && have("rhash") {
        c.push(Contender {
            label: "rhash -r --sha512".into(),
            algo: "sha512",
            shell: format!("rhash -r --sha512 {d}"),
        });
    }
    if !a.shmpool_only && have("hashdeep") {
        c.push(Contender {
            label: format!("hashdeep -r -c sha256 -j {j}"),
            algo: "sha256",
            shell: format!("hashdeep -r -c sha256 -j {j} {d}"),
        });
    }

    eprintln!(
        "bench hash: {dir_s}: {files} files, {:.2} GB; warming the cache and checking the output",
        bytes as f64 / 1e9
    );
    check(&exe, &d)?;
    let load_start = load_average();
    let mut walls = vec![Vec::new(); c.len()];
    let mut cpus = vec![Vec::new(); c.len()];
    let mut csv = String::from("round,command,algo,seconds,cpu_seconds,files,bytes\n");
    // The j-stream floor of each algorithm, measured in every round right after the commands
    // (paired: the load of the moment weighs on both), and each round's ratio of shmpool's
    // time (and CPU) to it.
    let order = parallel_order(&sizes);
    let mut streams: Vec<Streams> = ALGOS.iter().map(|_| Streams::default()).collect();
    for round in 1..=a.runs {
        for (i, k) in c.iter().enumerate() {
            let (w, cpu) = time(&k.shell)?;
            eprintln!(
                "  round {round}: {:<45} {w:7.2} s  (cpu {cpu:.2} s)",
                k.label
            );
            walls[i].push(w);
            cpus[i].push(cpu);
            csv.push_str(&format!(
                "{round},\"{}\",{},{w:.4},{cpu:.4},{files},{bytes}\n",
                k.label, k.algo
            ));
        }
        for ((algo, name), st) in ALGOS.into_iter().zip(&mut streams) {
            let Some(i) = c.iter().position(|k| k.algo == name) else {
                continue;
            };
            let (w, cpu) = parallel_floor(&paths, &order, algo, j)?;
            let label = format!("{j}-stream floor");
            eprintln!(
                "  round {round}: {:<45} {w:7.2} s  (cpu {cpu:.2} s)",
                format!("{label} {name}")
            );
            csv.push_str(&format!(
                "{round},\"{label}\",{name},{w:.4},{cpu:.4},{files},{bytes}\n"
            ));
            st.wall.push(w);
            st.cpu.push(cpu);
            st.ratio.push(walls[i][walls[i].len() - 1] / w);
            st.cpu_ratio.push(cpus[i][cpus[i].len() - 1] / cpu);
        }
    }
    let csv_path = a.out.join("hash.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;

    let med: Vec<f64> = walls.iter_mut().map(|v| median(v)).collect();
    let cpu: Vec<f64> = cpus.iter_mut().map(|v| median(v)).collect();
    let ours = |algo: &str| c.iter().position(|k| k.algo == algo).map(|i| med[i]);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "shmpool bench hash: {dir_s}: {files} files, {:.2} GB, {} rounds (median), warm cache, -j {j}; \
         load average (1 min) {load_start} before the rounds, {} after",
        bytes as f64 / 1e9,
        a.runs,
        load_average()
    )?;
    writeln!(
        out,
        "| command | algo | seconds | MB/s | files/s | CPU s | time / shmpool's | CPU / shmpool's |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|")?;
    let ours_cpu = |algo: &str| c.iter().position(|k| k.algo == algo).map(|i| cpu[i]);
    for (i, k) in c.iter().enumerate() {
        let ratio = ours(k.algo).map_or(String::from("-"), |o| format!("{:.2}", med[i] / o));
        let cpu_ratio =
            ours_cpu(k.algo).map_or(String::from("-"), |o| format!("{:.2}", cpu[i] / o));
        writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {ratio} | {cpu_ratio} |",
            k.label,
            k.algo,
            med[i],
            bytes as f64 / 1e6 / med[i],
            files as f64 / med[i],
            cpu[i],
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "floor = bytes / ({j} x single-core rate) + files x {:.1} us / {j}; CPU floor = {j} x floor \
         (CPU time depends much less than wall time on what else runs on the machine):",
        PER_FILE_S * 1e6
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
         hashing and closing every file, no pool, / {j}:"
    )?;
    let mut ones = Vec::new();
    for (algo, name) in ALGOS {
        // Every algorithm has its `shmpool hash` contender: `ones` lines up with the list.
        let one = measured_floor(&paths, algo);
        ones.push(one);
        let Some(i) = c.iter().position(|k| k.algo == name) else {
            continue;
        };
        let floor = one / j as f64;
        writeln!(
            out,
            "  {name}: one core {one:.2} s CPU ({:.0} MB/s, {:.1} us/file all in); floor {floor:.2} s; \
             shmpool {:.2} s = {:.2} x floor; CPU {:.2} s = {:.2} x the loop's CPU",
            bytes as f64 / one / 1e6,
            one / files as f64 * 1e6,
            med[i],
            med[i] / floor,
            cpu[i],
            cpu[i] / one
        )?;
    }
    writeln!(
        out,
        "{j}-stream floor = wall time of the same loop run by {j} threads at once (files taken from one \
         shared list, those of 256 KiB or more first, biggest first), measured in every round right \
         after the commands; medians of the rounds, and of each round's ratio:"
    )?;
    for (((_, name), st), one) in ALGOS.into_iter().zip(&mut streams).zip(ones) {
        let Some(i) = c.iter().position(|k| k.algo == name) else {
            continue;
        };
        let (wall, cpu_all) = (median(&mut st.wall), median(&mut st.cpu));
        writeln!(
            out,
            "  {name}: {j}-stream floor {wall:.2} s, CPU {cpu_all:.2} s ({j} streams = {:.2} x one core, \
             CPU {:.2} x one core's); shmpool {:.2} s = {:.2} x {j}-stream floor (per round: {}); \
             CPU {:.2} s = {:.2} x the {j} streams' CPU",
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
        )?;
    }
    writeln!(out, "CSV: {}", csv_path.display())?;
    Ok(ExitCode::SUCCESS)
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

/// CPU seconds (user + system) used so far by the calling thread.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is a valid `who` on Linux.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The measured single-core floor: CPU seconds of the plainest loop on one thread of this
/// process, with no pool and no output: open each file, read it to its end through one
/// reused, page-aligned 256 KiB buffer into the hasher, close it. That is the issue's "bytes /
/// single-core rate + files x per-file cost" measured on this tree and machine, in CPU time
/// (so other load disturbs it less than wall time). Best of two passes (the first may still
/// warm the cache).
fn measured_floor(paths: &[Vec<u8>], algo: Algo) -> f64 {
    // Page-aligned, as the workers' buffer: the kernel's copy into a buffer 16 bytes into a page
    // (where malloc puts it) is much slower here, see `digest::ReadBuf`.
    let mut buf = ReadBuf::new();
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let t = thread_cpu();
        hash_each(paths, algo, &mut buf);
        best = best.min(thread_cpu() - t);
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
    /// shmpool's wall time / the floor's, in the same round.
    ratio: Vec<f64>,
    /// shmpool's CPU time / the floor's, in the same round.
    cpu_ratio: Vec<f64>,
}

/// The `j`-stream floor: the loop of [`measured_floor`] run by `j` threads at once, each taking
/// the next [`PARALLEL_GRAB`] files of one shared list (`order`, from [`parallel_order`])
/// until none is left. Returns the wall seconds from the moment all threads are ready to the
/// end of the last one, and the CPU seconds of all threads.
///
/// This is what `j` cores give this loop when they run it together: on a VM whose virtual cores
/// share physical ones, `j` streams of a hash can be much less than `j` times one stream.
///
/// # Errors
///
/// A thread could not be started (those started are let go without hashing), or one panicked
/// (a floor without its CPU time would be wrong, not smaller).
fn parallel_floor(paths: &[Vec<u8>], order: &[usize], algo: Algo, j: usize) -> Result<(f64, f64)> {
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
                    return 0.0;
                }
                let t = thread_cpu();
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
                thread_cpu() - t
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
        let mut cpu = 0.0;
        for h in threads {
            cpu += h
                .join()
                .map_err(|_| anyhow::anyhow!("a thread of the {j}-stream floor panicked"))?;
        }
        Ok((t.elapsed().as_secs_f64(), cpu))
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
