//! Helpers shared by the integration tests: a watchdog that aborts a hung test (after dumping what
//! every thread of the test process and of its pool processes is blocked in), process and fd
//! accounting through `/proc`, gates that hold a task until the test opens them, and a re-exec
//! helper that runs a scenario in a child copy of the test binary.
//!
//! Not every test file uses every helper.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Env var that selects a re-exec scenario in a child copy of the test binary.
pub(crate) const SCENARIO_VAR: &str = "SHMPOOL_TEST_SCENARIO";

/// Aborts the process if not dropped (disarmed) before its deadline.
#[derive(Debug)]
pub(crate) struct Watchdog {
    state: Arc<(Mutex<bool>, Condvar)>,
}

/// Arms a watchdog: unless the returned guard is dropped within `secs` seconds, a line naming the
/// test goes to stderr and the process aborts (a hang becomes a failure, never a stuck CI job).
pub(crate) fn arm(secs: u64) -> Watchdog {
    let state = Arc::new((Mutex::new(false), Condvar::new()));
    let for_thread = Arc::clone(&state);
    let name = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let (lock, cond) = &*for_thread;
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut disarmed = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*disarmed {
                let now = Instant::now();
                if now >= deadline {
                    let msg = format!("\nwatchdog: test `{name}` hung for {secs} s; aborting\n");
                    raw_stderr(&msg);
                    dump_blocked_threads(DUMP_CAP);
                    raw_stderr("watchdog: abort\n");
                    std::process::abort();
                }
                disarmed = cond
                    .wait_timeout(disarmed, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        })
        .expect("spawn the watchdog thread");
    Watchdog { state }
}

/// The longest the watchdog's dump of blocked threads may take before it aborts regardless.
const DUMP_CAP: Duration = Duration::from_secs(10);
/// The longest one `gdb` attach may take within [`DUMP_CAP`].
const GDB_CAP: Duration = Duration::from_secs(3);

/// Writes `s` to fd 2 with `write(2)` itself: no stderr lock, so a thread stuck holding that lock
/// (or the test harness capturing output) cannot stop or swallow the report.
pub(crate) fn raw_stderr(s: &str) {
    let mut b = s.as_bytes();
    while !b.is_empty() {
        // SAFETY: writes at most `b.len()` bytes from a live buffer to fd 2.
        let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

/// Marker lines of the dump (tests/watchdog.rs looks for them).
pub(crate) const DUMP_BEGIN: &str = "watchdog: dump of blocked threads";
pub(crate) const DUMP_END: &str = "watchdog: end of dump";

/// Writes to stderr what every thread of this process and of its descendants (the fork server
/// `shmpool-server`, the workers `PoolWorker-N`) is blocked in: per thread its `comm`, `wchan`
/// and, when readable (root), its kernel `stack`; then, if `gdb` is installed, `thread apply all
/// bt` of each process. Runs on a helper thread and gives up after `cap` (the caller aborts
/// then), each `gdb` is killed after [`GDB_CAP`]; never panics into the caller.
pub(crate) fn dump_blocked_threads(cap: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("watchdog-dump".into())
        .spawn(move || {
            let deadline = Instant::now() + cap;
            let _ = std::panic::catch_unwind(|| dump_now(deadline));
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        if rx.recv_timeout(cap + Duration::from_secs(1)).is_err() {
            raw_stderr("watchdog: the dump did not finish in time\n");
        }
    } else {
        raw_stderr("watchdog: could not start the dump thread\n");
    }
}

/// This process and its descendants, parents before children (found by `PPid` in `/proc/*/stat`,
/// which names the child of any thread of the parent).
fn process_tree(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(pp) = ppid_of(pid)
            {
                all.push((pid, pp));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() < 256 {
        let p = out[i];
        out.extend(all.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    out
}

fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

fn dump_now(deadline: Instant) {
    let me = std::process::id();
    raw_stderr(&format!("{DUMP_BEGIN} (pid {me})\n"));
    let tree = process_tree(me);
    for &pid in &tree {
        let stat = proc_stat(pid).map_or('?', |(st, _)| st);
        raw_stderr(&format!(
            "=== process {pid} `{}` state {stat}\n",
            read_proc(&format!("/proc/{pid}/comm"))
        ));
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let tid = t.file_name().to_string_lossy().into_owned();
            let base = format!("/proc/{pid}/task/{tid}");
            let mut line = format!(
                "--- thread {tid} `{}` wchan={}\n",
                read_proc(&format!("{base}/comm")),
                read_proc(&format!("{base}/wchan"))
            );
            if let Ok(stack) = std::fs::read_to_string(format!("{base}/stack")) {
                for l in stack.lines() {
                    line.push_str("    ");
                    line.push_str(l);
                    line.push('\n');
                }
            }
            raw_stderr(&line);
        }
    }
    // Workers and the server first, this process last: its many threads make its gdb the
    // slowest, and a hung pool's story is usually in the workers.
    for &pid in tree.iter().rev() {
        if Instant::now() >= deadline {
            raw_stderr("watchdog: out of time for gdb\n");
            break;
        }
        let cap = GDB_CAP.min(deadline.saturating_duration_since(Instant::now()));
        gdb_backtraces(pid, cap);
    }
    raw_stderr(&format!("{DUMP_END}\n"));
}

/// `gdb -p pid -batch -ex "thread apply all bt"` with its output on our fd 2, under `timeout -s
/// KILL`, and killed from here too after `cap`.
fn gdb_backtraces(pid: u32, cap: Duration) {
    use std::os::fd::AsFd;
    let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return;
    };
    let Ok(out) = err.try_clone() else {
        return;
    };
    raw_stderr(&format!("=== gdb backtraces of {pid}\n"));
    // `timeout` is a process gdb does not stop: when gdb hangs attached to this very process
    // (every thread of it stopped, the loop below too), it still gets killed, which detaches.
    // In fractions of a second (coreutils' `timeout` takes them): rounded up to whole seconds,
    // the last gdb of a dump could outlast the dump's own deadline, which the caller gives
    // only one second more.
    let secs = format!("{:.3}", cap.as_secs_f64().max(0.1));
    let child = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            &secs,
            "gdb",
            "-p",
            &pid.to_string(),
            "-batch",
            "-nx",
            "-q",
        ])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt 40"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn();
    let Ok(mut child) = child else {
        raw_stderr("watchdog: gdb (or timeout) not available\n");
        return;
    };
    let until = Instant::now() + cap;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                raw_stderr(&format!("watchdog: gdb on {pid} timed out; killed\n"));
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cond) = &*self.state;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cond.notify_all();
    }
}

/// Fields of `/proc/<pid>/stat` after the command name: `(state, ppid)`.
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces or ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` still has a `/proc` entry (running, sleeping, or a zombie nobody reaped).
pub(crate) fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is gone or at least dead (a zombie waiting for a reaper that is not us).
pub(crate) fn dead(pid: u32) -> bool {
    match proc_stat(pid) {
        None => true,
        Some((state, _)) => state == 'Z' || state == 'X',
    }
}

/// The parent pid of `pid`, if it exists.
pub(crate) fn ppid_of(pid: u32) -> Option<u32> {
    proc_stat(pid).map(|(_, ppid)| ppid)
}

/// Direct children of this process (any thread's), found by scanning `/proc/*/stat` for our pid
/// as ppid (`/proc/self/task/*/children` is not available on every kernel).
pub(crate) fn children() -> BTreeSet<u32> {
    let me = std::process::id();
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if ppid_of(pid) == Some(me) {
            out.insert(pid);
        }
    }
    out
}

/// Number of open fds in this process.
pub(crate) fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// `(open fds, of which spare large-argument segments)` of this process: a pool keeps up to
/// two finished argument segments for reuse (`memfd:shmpool-arg`, see `bigpayload`, "Reuse"),
/// which are not a leak; leak checks compare the other fds and bound these separately.
pub(crate) fn fd_count_and_arg_spares() -> (usize, usize) {
    let mut n = 0;
    let mut spares = 0;
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .flatten()
    {
        n += 1;
        if std::fs::read_link(e.path())
            .is_ok_and(|l| l.to_string_lossy().contains("memfd:shmpool-arg"))
        {
            spares += 1;
        }
    }
    (n, spares)
}

/// Names in `/dev/shm` (empty if it does not exist).
pub(crate) fn dev_shm() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
/// (For things that happen asynchronously, such as a replacement worker appearing or an orphan
/// being killed; never used to assert how long something took.)
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A file whose existence releases tasks waiting on it: a worker cannot see the parent's memory
/// after the fork, but it sees the file system. Removed on drop.
#[derive(Debug)]
pub(crate) struct Gate {
    path: PathBuf,
}

impl Gate {
    /// A closed gate with a path unique to this process and call.
    pub(crate) fn new() -> Gate {
        static NEXT: Mutex<u64> = Mutex::new(0);
        let n = {
            let mut g = NEXT.lock().unwrap_or_else(|e| e.into_inner());
            *g += 1;
            *g
        };
        let path = std::env::temp_dir().join(format!(
            "shmpool-test-gate-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let _ = std::fs::remove_file(&path);
        Gate { path }
    }

    /// The path a task waits on (pass it as the task's argument).
    pub(crate) fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Releases every task waiting on this gate.
    pub(crate) fn open(&self) {
        std::fs::write(&self.path, b"open").expect("create the gate file");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Task body: blocks until the gate at `path` is opened. Runs in a worker.
pub(crate) fn wait_gate(path: &Path) {
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The scenario this process was re-executed to run, if any.
pub(crate) fn scenario() -> Option<String> {
    std::env::var(SCENARIO_VAR).ok()
}

/// Builds a command that re-runs this test binary's test `test_name` alone, with `scenario` in
/// [`SCENARIO_VAR`]; the test checks [`scenario`] first and runs the scenario instead. Stdout is
/// piped, stderr inherited.
pub(crate) fn reexec(test_name: &str, scenario: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO_VAR, scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Sends `sig` to `pid`.
///
/// Refuses pid 0 and pids past `i32::MAX`: kill(2) reads 0 as "my process group" (the test
/// binary, cargo and the CI script that ran it) and -1 as "every process I may signal". A pid
/// of 0 is what `Pool::worker_pids` reports for a seat whose worker is being replaced (the
/// kill(0, SIGKILL) of chunk_feeder, c30e279, took down a whole `cargo test`): take a seat's
/// pid with [`live_worker`] instead.
pub(crate) fn kill(pid: u32, sig: i32) {
    assert!(
        pid != 0 && i32::try_from(pid).is_ok(),
        "kill({pid}, {sig}) would signal a whole process group or every process"
    );
    // SAFETY: kill(2) has no memory-safety preconditions; the test owns the target process.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The pid of the worker in `seat` of a pool, once it has one (`worker_pids` is the pool's
/// `Pool::worker_pids`): a seat whose worker died (or was recycled) reads 0 until its
/// replacement runs, which on a loaded machine can take a while.
pub(crate) fn live_worker(worker_pids: impl Fn() -> Vec<u32>, seat: usize) -> u32 {
    let mut pid = 0;
    assert!(
        eventually(Duration::from_secs(60), || {
            pid = worker_pids()[seat];
            pid != 0
        }),
        "seat {seat} never got a worker"
    );
    pid
}

/// Turns off core dumps for this process (called in a task before it crashes its worker on
/// purpose, so a crash test does not write a core file).
pub(crate) fn no_core_dumps() {
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid pointer to an initialized rlimit; lowering a limit is
    // always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) };
}

/// `n` deterministic pseudo-random bytes for `seed` (xorshift), different for every seed.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Held by every test of a file whose tests must not overlap: they count this process's fds,
/// mappings or memory, which another test's pool running at the same time would change. (One
/// lock per test binary: each compiles this module on its own.) Take it *before* arming the
/// watchdog: the wait for the lock (every other test of the file, on a loaded machine with
/// `--test-threads` above the core count) is not the test's own time.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `bytes` in a vector of capacity `cap` (a vector with a recognisable capacity).
pub(crate) fn with_capacity(bytes: &[u8], cap: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(cap);
    v.extend_from_slice(bytes);
    v
}

/// A byte vector's task that changes every byte and the order (so a result that is the
/// argument unchanged, or another call's, shows).
pub(crate) fn flip(v: Vec<u8>) -> Vec<u8> {
    v.iter().rev().map(|b| b ^ 0x5A).collect()
}
