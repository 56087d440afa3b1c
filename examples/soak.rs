//! A long run with faults: `apply`, `map`, `imap`, bulk `map_chunks` and a `Queue`, mixed with
//! tasks that kill their worker, panic or run past their time limit, and workers killed from
//! outside. Every result is checked; at the end the parent's RSS and open fds must be where they
//! were after the first round, and the pool must hold exactly its server and workers.
//!
//! ```text
//! cargo run --release --example soak -- --seconds 30 [--processes 2] [--seed 1]
//! ```
//!
//! Exits 1 (with the reason) on any wrong result, unexpected error, or growth.

use std::error::Error;
use std::time::{Duration, Instant};

use shmpool::{Pool, Queue, SharedVec};

fn f(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

fn kill_self(_: u64) -> u64 {
    // SAFETY: kill(2) on this worker, whose death the soak wants.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!()
}

fn panic_task(x: u64) -> u64 {
    panic!("soak panic {x}")
}

fn hang(_: u64) -> u64 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `f(x)`, except that every 97th item panics (an imap item fails alone).
fn f_or_panic(x: u64) -> u64 {
    if x % 97 == 96 {
        panic!("item {x}");
    }
    f(x)
}

fn fill(args: (Queue<u64>, u64, u64)) -> u64 {
    let (q, start, n) = args;
    for i in start..start + n {
        q.put(i).expect("put");
    }
    n
}

fn chunk_sum(c: &[u64]) -> u64 {
    c.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

/// A small xorshift generator: reproducible runs from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A worker to kill from outside, by pidfd.
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    /// `None` if the process is gone already. Panics if the kernel has no pidfds (before
    /// Linux 5.3): the soak would otherwise skip every outside kill without a word.
    fn open(pid: u32) -> Option<Pidfd> {
        // SAFETY: pidfd_open(pid, 0) takes two integers and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ESRCH),
                "pidfd_open({pid}): {e}"
            );
            return None;
        }
        // SAFETY: a fresh descriptor that nobody else owns.
        Some(Pidfd(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(fd as i32)
        }))
    }

    fn kill(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on our pidfd, no siginfo; a process that already exited
        // gets nothing (ESRCH).
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Waits until the process has exited (a pidfd turns readable then).
    fn wait_exit(&self) {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd that lives across the call; EINTR retries.
        while unsafe { libc::poll(&mut p, 1, -1) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// Live (non-zombie) descendants of this process: the fork server and the workers.
fn descendants() -> usize {
    tree().iter().filter(|p| p.state != "Z").count()
}

/// A descendant of this process, as `/proc` shows it.
struct Proc {
    pid: u32,
    parent: u32,
    state: String,
    name: String,
}

/// Every descendant of this process, zombies included.
fn tree() -> Vec<Proc> {
    fn children(pid: u32) -> Vec<Proc> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let mut it = stat[close + 1..].split_whitespace();
            let state = it.next().unwrap_or("");
            if it.next().and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
                out.push(Proc {
                    pid: p,
                    parent: pid,
                    state: state.to_owned(),
                    name: stat[open + 1..close].to_owned(),
                });
            }
        }
        out
    }
    let mut all = Vec::new();
    let mut todo = vec![std::process::id()];
    while let Some(p) = todo.pop() {
        let c = children(p);
        todo.extend(c.iter().map(|c| c.pid));
        all.extend(c);
    }
    all
}

/// The pool's processes and what the pool says of them, for a failed process count.
fn describe_tree(pool: &Pool) -> String {
    let procs: Vec<String> = tree()
        .iter()
        .map(|p| {
            format!(
                "{} ({}, child of {}, state {})",
                p.pid, p.name, p.parent, p.state
            )
        })
        .collect();
    format!(
        "descendants: [{}]; the pool's worker pids: {:?}",
        procs.join(", "),
        pool.worker_pids()
    )
}

#[derive(Default)]
struct Counts {
    ok: u64,
    /// Tasks that killed their own worker.
    killed: u64,
    /// imap items failed with `WorkerDied` because a worker was killed from outside.
    lost_to_outside_kills: u64,
    panicked: u64,
    timed_out: u64,
    outside_kills: u64,
    rounds: u64,
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Box<dyn Error>> {
    if cond { Ok(()) } else { Err(what().into()) }
}

/// How many kinds of round there are (`round`'s `kind`).
const KINDS: u64 = 6;

/// A size in `lo..=hi`: random, or `hi` for the warm-up round of a kind (`largest`).
fn size(rng: &mut Rng, lo: u64, hi: u64, largest: bool) -> u64 {
    if largest {
        hi
    } else {
        lo + rng.below(hi - lo + 1)
    }
}

/// One round of `kind` (below [`KINDS`]); `largest` makes it the largest round of that kind.
fn round(
    pool: &Pool,
    q: &Queue<u64>,
    data: &SharedVec<u64>,
    rng: &mut Rng,
    c: &mut Counts,
    kind: u64,
    largest: bool,
) -> Result<(), Box<dyn Error>> {
    use shmpool::Error as E;
    c.rounds += 1;
    match kind {
        // apply with one faulty task among many good ones: only the faulty one fails.
        0 | 1 => {
            let n = size(rng, 20, 79, largest);
            let bad_at = rng.below(n);
            let kind = rng.below(3);
            let mut handles = Vec::new();
            for i in 0..n {
                let x = rng.next() >> 8;
                let h = if i == bad_at {
                    match kind {
                        0 => pool.apply_async(kill_self, x),
                        1 => pool.apply_async(panic_task, x),
                        _ => pool.apply_async_timeout(hang, x, Duration::from_millis(50)),
                    }
                } else {
                    pool.apply_async(f, x)
                }
                .map_err(|e| e.error)?;
                handles.push((i, x, h));
            }
            for (i, x, h) in handles {
                let r = h.get();
                if i != bad_at {
                    check(r.as_ref().ok() == Some(&f(x)), || {
                        format!("apply {i}: {r:?}")
                    })?;
                    c.ok += 1;
                    continue;
                }
                match (kind, r) {
                    (
                        0,
                        Err(E::WorkerDied {
                            signal: Some(9), ..
                        }),
                    ) => c.killed += 1,
                    (1, Err(E::TaskPanicked { .. })) => c.panicked += 1,
                    (2, Err(E::TaskTimedOut { .. })) => c.timed_out += 1,
                    (k, r) => return Err(format!("faulty task of kind {k}: {r:?}").into()),
                }
            }
        }
        // map over numbers.
        2 => {
            let n = size(rng, 1, 20_000, largest);
            let out = pool.map(f, 0..n)?;
            check(out.len() as u64 == n, || format!("map gave {}", out.len()))?;
            for (i, &y) in out.iter().enumerate() {
                check(y == f(i as u64), || format!("map item {i}: {y}"))?;
            }
            c.ok += n;
        }
        // imap with panicking items, and a worker killed from outside meanwhile: an item may
        // then fail with WorkerDied, any other outcome is wrong.
        3 => {
            let n = size(rng, 1, 5_000, largest);
            let kill = rng.below(3) == 0;
            let victim = pool.worker_pids()[rng.below(pool.processes() as u64) as usize];
            // Held from before the kill to the victim's end: it names that process, never a
            // later one that reuses its pid.
            let victim = (kill && victim != 0).then(|| Pidfd::open(victim)).flatten();
            let mut died = 0;
            for (i, r) in pool.imap(f_or_panic, 0..n).enumerate() {
                if i as u64 == n / 2
                    && let Some(v) = &victim
                {
                    v.kill();
                    c.outside_kills += 1;
                }
                let x = i as u64;
                match r {
                    Ok(y) if y == f(x) && x % 97 != 96 => c.ok += 1,
                    Err(E::TaskPanicked { .. }) if x % 97 == 96 => c.panicked += 1,
                    Err(E::WorkerDied { .. }) if kill => died += 1,
                    r => return Err(format!("imap item {i}: {r:?}").into()),
                }
            }
            c.lost_to_outside_kills += died;
            // The imap can end before the victim does (it may have had no item left): wait for
            // it, or the pool's process count could drop after the soak's final check.
            if let Some(v) = victim {
                v.wait_exit();
            }
        }
        // bulk: sums of chunks of a shared vector.
        4 => {
            // At least 64 elements: at most 15,625 chunks. The largest round has the most.
            let chunk = if largest {
                64
            } else {
                size(rng, 64, 50_000, false) as usize
            };
            let sums = pool.map_chunks(data, chunk, chunk_sum)?;
            let want: Vec<u64> = data.chunks(chunk).map(chunk_sum).collect();
            check(sums == want, || {
                format!("map_chunks with chunks of {chunk}")
            })?;
            c.ok += sums.len() as u64;
        }
        // queue: a task fills it, the parent drains it in order.
        _ => {
            let n = size(rng, 1, 200, largest);
            let start = rng.next() >> 16;
            let h = pool
                .apply_async(fill, (q.clone(), start, n))
                .map_err(|e| e.error)?;
            for i in start..start + n {
                let got = q.get_timeout(Duration::from_secs(60))?;
                check(got == i, || format!("queue gave {got}, expected {i}"))?;
            }
            check(h.get()? == n, || "fill".into())?;
            c.ok += n;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut seconds = 30u64;
    let mut processes = 2usize;
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => seconds = value()?.parse()?,
            "--processes" => processes = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    // The soak's own panics (thousands) print nothing; any other panic prints as usual. Set
    // before the pool, so the workers inherit it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map_or("", String::as_str);
        if !(msg.starts_with("soak panic ") || msg.starts_with("item ")) {
            default_hook(info);
        }
    }));
    let q: Queue<u64> = Queue::new(64)?; // before the pool: its workers map it
    let pool = Pool::builder().processes(processes).build()?;
    let data = SharedVec::try_from_iter((0..1_000_000u64).map(|i| i.wrapping_mul(0x9e37)))?;
    let mut rng = Rng(seed.max(1) * 0x2545_f491_4f6c_dd1d);
    let mut c = Counts::default();
    // The largest round of each kind first, twice, so the baseline includes the allocator's
    // high-water mark: what a big round frees, malloc may keep (a step of 15 MB after a
    // `map_chunks` of 50,000 chunks, never given back), and later rounds reuse it.
    for kind in (0..KINDS).chain(0..KINDS) {
        round(&pool, &q, &data, &mut rng, &mut c, kind, true)?;
    }
    let (rss0, fds0) = (rss_kib(), fds());
    println!(
        "start: RSS {rss0} KiB, {fds0} fds, {} pool processes",
        descendants()
    );
    let t = Instant::now();
    let ok0 = c.ok;
    let mut halfway = None;
    while t.elapsed() < Duration::from_secs(seconds) {
        let kind = rng.below(KINDS);
        round(&pool, &q, &data, &mut rng, &mut c, kind, false)?;
        if halfway.is_none() && t.elapsed() >= Duration::from_secs(seconds) / 2 {
            halfway = Some((rss_kib(), fds()));
            println!("half:  RSS {} KiB, {} fds", rss_kib(), fds());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    // Replacements settle (a worker killed in the last round is being respawned).
    let settle = Instant::now();
    while descendants() != processes + 1 && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let procs = descendants();
    let (rss1, fds1) = (rss_kib(), fds());
    println!(
        "end:   RSS {rss1} KiB, {fds1} fds, {procs} pool processes; {} rounds in {secs:.1} s, {:.0} tasks/s checked; \
         faults: {} tasks killed their worker, {} workers killed from outside ({} imap items failed with them), \
         {} panics, {} timeouts",
        c.rounds,
        (c.ok - ok0) as f64 / secs,
        c.killed,
        c.outside_kills,
        c.lost_to_outside_kills,
        c.panicked,
        c.timed_out
    );
    check(fds1 == fds0, || format!("fds grew: {fds0} -> {fds1}"))?;
    check(procs == processes + 1, || {
        format!(
            "{procs} pool processes, expected {}; {}",
            processes + 1,
            describe_tree(&pool)
        )
    })?;
    // Allocator slack allowed, growth not: a leak of even 1 KiB per round would exceed this.
    check(rss1 <= rss0 + rss0 / 4 + 8 * 1024, || {
        format!("RSS grew: {rss0} KiB -> {rss1} KiB")
    })?;
    drop(pool);
    check(descendants() == 0, || "processes left after drop".into())?;
    println!("soak ok");
    Ok(())
}
