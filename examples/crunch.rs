//! Crunches a file far larger than the memory budget with `imap_chunks`, and prints the peak
//! resident memory (`getrusage`) of the parent and of every worker.
//!
//! It makes a sparse file (8 GiB by default) in a temporary directory with `File::set_len`,
//! writes a marker byte at a few offsets, maps it with [`MappedFile`], hashes it in chunks in a
//! pool, checks that every marker was seen exactly once, and deletes the file. The parent never
//! reads the file; each worker maps only the chunk it is hashing, so both stay far below the
//! file's size.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bulk cargo run --release --example crunch [-- --gib 8 --chunk-mib 4 --processes 2]
//! ```

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::time::Instant;

use shmpool::{MappedFile, Pool};

/// Offsets (in MiB) that get a marker byte, within any size of at least 1 GiB.
const MARKERS_MIB: [u64; 5] = [0, 1, 333, 777, 1023];

/// One chunk's answer: a 64-bit hash, how many non-zero bytes it held, and the worker's index
/// and peak RSS (KiB) right after hashing it.
type ChunkReport = (u64, u64, usize, i64);

#[path = "common/hash64.rs"]
mod hash64;
use hash64::hash64;

/// Peak resident set size in KiB (`ru_maxrss`) of `who`.
fn max_rss_kib(who: libc::c_int) -> i64 {
    // SAFETY: getrusage only writes the zeroed struct we pass; RUSAGE_SELF/CHILDREN are valid.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut u);
        u.ru_maxrss
    }
}

fn crunch(chunk: &[u8]) -> ChunkReport {
    let nonzero = chunk.iter().filter(|&&b| b != 0).count() as u64;
    let worker = shmpool::current_worker().map_or(usize::MAX, |w| w.index());
    (
        hash64(chunk),
        nonzero,
        worker,
        max_rss_kib(libc::RUSAGE_SELF),
    )
}

fn arg(args: &[String], name: &str, default: u64) -> Result<u64, Box<dyn Error>> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args
            .get(i + 1)
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()?),
        None => Ok(default),
    }
}

/// A temporary directory removed (with its contents) on drop, even on an early return.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gib = arg(&args, "--gib", 8)?.max(1);
    let chunk_mib = arg(&args, "--chunk-mib", 4)?.max(1);
    let processes = arg(&args, "--processes", 2)?.max(1) as usize;
    let size = gib << 30;
    let chunk = (chunk_mib << 20) as usize;

    // The pool first, while the process is small (fork cost grows with the parent's memory).
    let pool = Pool::new(processes)?;

    let dir = TempDir(std::env::temp_dir().join(format!("shmpool-crunch-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let path = dir.0.join("sparse.bin");
    {
        let mut f: File = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        f.set_len(size)?;
        for mib in MARKERS_MIB {
            f.seek(SeekFrom::Start(mib << 20))?;
            f.write_all(&[1])?;
        }
    }
    // SAFETY: this program made the file in its own temporary directory and neither it nor
    // anyone else writes or truncates it until the mapping is dropped below.
    let file = unsafe { MappedFile::open(&path)? };
    println!(
        "crunch: {} GiB sparse file, chunks of {chunk_mib} MiB, {processes} workers",
        file.len() >> 30
    );
    let start = Instant::now();
    let mut chunks = 0u64;
    let mut nonzero = 0u64;
    let mut digest = 0u64;
    let mut worker_peak = vec![0i64; processes];
    for r in pool.imap_chunks(&file, chunk, crunch) {
        let (h, nz, worker, rss) = r?;
        digest = digest.rotate_left(7) ^ h;
        nonzero += nz;
        chunks += 1;
        if let Some(p) = worker_peak.get_mut(worker) {
            *p = (*p).max(rss);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    pool.close();
    pool.join()?;
    drop(dir);

    let parent = max_rss_kib(libc::RUSAGE_SELF);
    let children = max_rss_kib(libc::RUSAGE_CHILDREN);
    println!(
        "crunch: {chunks} chunks in {secs:.2} s ({:.2} GiB/s), digest {digest:016x}, {nonzero} marker bytes",
        gib as f64 / secs
    );
    println!("peak RSS parent:           {:>8} KiB", parent);
    for (i, kib) in worker_peak.iter().enumerate() {
        println!("peak RSS worker {i}:         {kib:>8} KiB");
    }
    println!("peak RSS largest child:    {children:>8} KiB (RUSAGE_CHILDREN, after join)");
    if nonzero != MARKERS_MIB.len() as u64 {
        return Err(format!("saw {nonzero} marker bytes, wrote {}", MARKERS_MIB.len()).into());
    }
    let limit_kib = 512 * 1024;
    let worst = worker_peak
        .iter()
        .copied()
        .chain([parent, children])
        .max()
        .unwrap_or(0);
    println!(
        "budget 512 MiB: {} (worst {:.1} MiB)",
        if worst < limit_kib { "ok" } else { "EXCEEDED" },
        worst as f64 / 1024.0
    );
    if worst >= limit_kib {
        return Err("peak RSS over 512 MiB".into());
    }
    Ok(())
}
