//! Forking: the per-pool fork server, worker spawning, reaping, and the death protocol.
//!
//! # The fork server
//!
//! When a pool is built, its collector thread (which lives exactly as long as the pool) forks one
//! **fork server**. The server is single-threaded from its first instruction and forks every
//! worker of the pool, the first ones and every replacement. So:
//!
//! * workers are forks of a single-threaded process, and a replacement is forked from the same
//!   small image as the first workers, not from a parent that has grown since;
//! * every worker sees the parent's memory as it was when the pool was built (statics, the
//!   initializer and anything it captured) and the control segment at the same address;
//! * the server is the workers' parent, so it alone reaps them (`waitpid`), and it reports each
//!   death to the parent through the seat's `exited`/`exit_status` words (SYNC: seat-exit) and a
//!   wake of the collector.
//!
//! # Locks across the fork
//!
//! A fork copies only the forking thread; a lock another thread held at that instant stays held
//! in the child forever. The server is forked once per pool, so `fork_server` makes the instant
//! safe for the std locks that workers are sure to take: it waits for any panic being printed
//! (the panic hook's lock and std's panic-output lock; a task's panic in a worker takes both) and
//! holds stdout and stderr across the fork; builds of other pools wait (`FORK_LOCK`), and workers
//! never take the hook's write lock (the hook they need is installed here, before the fork:
//! `install_panic_site_hook`; workers that installed it at their first task all hung there when a
//! fork caught another thread panicking). What remains is documented in the crate docs: a lock
//! of the program's own (or a library's) held by another thread at the instant of the fork.
//! This was found, not imagined: under `cargo test`, a test whose callback panicked in the parent
//! while another test built a pool left that pool's workers deadlocked in their first panic.
//!
//! One std lock cannot be quiesced that way: the registry of thread stacks that std's
//! stack-overflow handler reads (`thread_info`), which every std thread takes as it starts and as
//! it ends. A fork that catches any thread of the parent starting or ending (the program's own,
//! or another pool's collector) leaves it held in the server for good, and then every thread
//! that starts there blocks forever: each worker's `PoolWorker-N` thread, and any thread a task
//! spawns. So the server first starts a probe thread ([`threads_can_start`]). If the probe runs,
//! the lock is free, and stays free (the server has no other thread). If it blocks, the server
//! reports `SERVER_REFORK` and exits, and the parent forks it again ([`start_server`]): the other
//! thread held the lock for microseconds. `tests/fork_hooks.rs` caught this: 1 run in 6 hung
//! with every worker's thread in `thread_info::set_current_info`.
//!
//! # Payloads of other pools
//!
//! The fork copies every fd and mapping the parent has at that instant, among them the sealed
//! segments of large payloads (`bigpayload`) that other pools of the same program have in flight:
//! an argument queued for a worker, a result being decoded. Sealed, they cannot be truncated,
//! so a copy held here (and in every worker forked from here) would keep the whole payload
//! allocated for as long as this pool lives. The server closes and unmaps them first
//! ([`drop_inherited_payloads`]), recognizing them by their memfd names ([`PAYLOAD_MEMFD`],
//! [`ARG_MEMFD`], [`RESULT_MEMFD`]: a parent keeps its mapping of each worker's reused result
//! segment between results).
//! Other fds stay: a task may rely on files the program opened before building the pool.
//!
//! # Requests (parent → server), all in shared memory
//!
//! * `spawn_req = 1` (Release, SYNC: server-request): fork a worker for this seat. The server
//!   writes `pid` and `spawn_errno`, then clears `spawn_req` (Release) and wakes the collector.
//! * `kill_req = 1`: SIGKILL this seat's worker (one that broke the protocol: see `corrupted`
//!   in `pool::dispatch::collector`; a task over its time limit is killed by its worker's own timer). The
//!   server can do this without racing a pid reuse, because only it reaps the worker.
//! * `shutdown = GRACEFUL`: workers exit once their rings are empty; the server exits when it has
//!   reaped them all. `shutdown = TERMINATE`: the server SIGKILLs every worker, reaps, exits.
//!
//! # Death
//!
//! * A worker dies: the server reaps it, publishes the wait status (seat-exit), wakes the
//!   collector. The collector fails the task the worker had taken (ring `head` says which), leaves
//!   the untaken ones in the ring, and asks for a replacement.
//! * The parent dies: the server has `PR_SET_PDEATHSIG = SIGKILL` against the collector thread,
//!   which lives as long as the pool; workers have it against the server. So the whole tree goes.
//!   Both check `getppid()` right after `prctl`, in case the parent died before it.
//! * The server dies (it should not): workers see it through the parent-death signal; the parent's
//!   collector sees `waitpid` on the server succeed and fails every outstanding task.

#![allow(clippy::disallowed_types)] // the SIGCHLD flag is a process-local std atomic

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering as StdOrdering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::exit::reap_server;
use crate::process::worker::{WorkerCtx, die_with_parent, set_process_name, worker_main};
use crate::shm::control::{
    Control, RUNNING, SERVER_REFORK, SERVER_SERVING, SERVER_STARTING, TERMINATE,
};
use crate::shm::wake::WakeWord;
use crate::sync::Ordering;
use crate::unwind::{ExitOnUnwind, exit_now};

/// Set by the server's SIGCHLD handler; cleared before each reaping pass.
static CHILD_EVENT: AtomicBool = AtomicBool::new(false);

/// The server's own wake word (in the control segment), for the SIGCHLD handler. Set once in
/// `server_main`, before the handler is installed.
static SERVER_WAKE: AtomicPtr<WakeWord> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_sigchld(_: libc::c_int) {
    // Only atomics and a futex_wake syscall: async-signal-safe.
    CHILD_EVENT.store(true, StdOrdering::SeqCst);
    // The notify bumps the word the server sleeps on, so a child that dies between the server's
    // last check of CHILD_EVENT and its futex_wait makes that wait return at once (the kernel's
    // compare fails) instead of sleeping out its 200 ms timeout: the lost wake-up that made
    // `join` wait on a timeout when the machine was busy.
    let w = SERVER_WAKE.load(StdOrdering::SeqCst);
    if !w.is_null() {
        // SAFETY: set in `server_main` to the header's `server` word, which lives in the control
        // segment, mapped for the whole life of this process.
        unsafe { (*w).notify() };
    }
}

/// Held by `fork_server` from its panic-hook quiesce until just after its fork (released in
/// both processes), so that no other pool's `fork_server` holds the panic hook's lock at the
/// instant of the fork.
static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Blocks SIGINT in the calling thread; returns the previous mask (see `fork_server`).
fn block_sigint() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset/sigaddset before use;
    // pthread_sigmask only changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

/// Restores a signal mask saved by `block_sigint`.
fn restore_sigmask(old: &libc::sigset_t) {
    // SAFETY: `old` came from pthread_sigmask; only the calling thread's mask changes.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

/// Empties the calling thread's signal mask.
fn unblock_all_signals() {
    // SAFETY: sigset_t is plain data, emptied by sigemptyset before use; pthread_sigmask only
    // changes the calling thread's mask (the server's only thread).
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// What the fork server needs, inherited through `fork` (it lives in the parent's memory).
pub(crate) struct ServerCtx<'a> {
    pub(crate) ctl: &'a Control,
    /// Each seat's worker end of its segment channel (inherited by the seat's workers).
    pub(crate) worker_channels: &'a [i32],
    /// The parent's ends, which the server closes at once.
    pub(crate) parent_channels: &'a [i32],
    pub(crate) initializer: Option<&'a (dyn Fn() + Send + Sync)>,
    pub(crate) max_tasks: Option<u64>,
}

/// How many times [`start_server`] forks a server that cannot start threads before it gives up.
const SERVER_FORKS: usize = 16;

/// How long [`threads_can_start`] waits for its probe at most; then it answers no.
const PROBE_WITHIN: Duration = Duration::from_secs(2);

/// How long [`start_server`] waits for a server's report; then it kills it and forks again. The
/// report comes within [`PROBE_WITHIN`] plus scheduling; this bound only ends a server that
/// cannot run at all (stopped).
const SERVER_REPORT_WITHIN: Duration = Duration::from_secs(10);

/// Forks the fork server ([`fork_server`]) and waits until it reports that threads can start in
/// it; forks it again when they cannot (see "Locks across the fork"). Returns the server's pid.
///
/// Must be called from the thread that lives as long as the pool, as [`fork_server`].
pub(crate) fn start_server(ctx: &ServerCtx<'_>) -> Result<i32> {
    let header = ctx.ctl.header();
    // Acquire, SYNC: server-state — pairs with the server's Release store in `server_main`.
    let state = || header.server_state.load(Ordering::Acquire);
    for _ in 0..SERVER_FORKS {
        // Relaxed: no server of this pool runs now, and the fork hands this to the child.
        header
            .server_state
            .store(SERVER_STARTING, Ordering::Relaxed);
        let pid = fork_server(ctx)?;
        let deadline = Instant::now() + SERVER_REPORT_WITHIN;
        loop {
            match state() {
                SERVER_SERVING => return Ok(pid),
                SERVER_STARTING => {}
                _ => break,
            }
            // The report wakes us; the 100 ms slices only notice a server that died before it
            // could report (killed from outside), which no futex wake announces, or one that
            // cannot report (stopped): that one is killed and forked again.
            if reap_server(pid, false).is_some() {
                return Err(Error::PoolBroken {
                    detail: "the fork server died while starting".into(),
                });
            }
            if Instant::now() > deadline {
                // SAFETY: `pid` is our own unreaped child, so the pid cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
            header
                .collector
                .wait_until(Duration::ZERO, Some(Duration::from_millis(100)), || {
                    state() != SERVER_STARTING
                });
        }
        // It exits right after its report.
        let _ = reap_server(pid, true);
    }
    Err(Error::PoolBroken {
        detail: format!(
            "no thread could start in the fork server in {SERVER_FORKS} forks: each caught \
             std's thread registry lock held by another thread of this process"
        ),
    })
}

/// Whether a std thread can start in this process (the fork server, right after its fork):
/// whether the fork caught std's thread registry lock held (see "Locks across the fork").
///
/// A probe thread either runs, or blocks in a futex wait that nothing can end: this process
/// has no other thread that could release the lock. Its state is read from
/// `/proc/self/task/<tid>/syscall`; two readings 2 ms apart in a futex call say blocked (one
/// could catch the probe waking us). A probe that has not run within [`PROBE_WITHIN`] counts as
/// blocked whatever `/proc` says (blocked otherwise, or `/proc` cannot tell): the cost of a
/// wrong answer is one more fork, never a hang.
fn threads_can_start() -> bool {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let probe = std::thread::Builder::new()
        .name("shmpool-probe".into())
        .spawn(move || {
            let _ = tx.send(());
        });
    let Ok(probe) = probe else {
        // No thread at all (RLIMIT_NPROC, memory): workers run their loop on the forked thread.
        return true;
    };
    let slice = Duration::from_millis(2);
    let mut waited = Duration::ZERO;
    let mut in_futex_before = false;
    loop {
        match rx.recv_timeout(slice) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // It ran (or, unable to send, ended): the lock was free, and is again once it ends.
            _ => {
                let _ = probe.join();
                return true;
            }
        }
        waited += slice;
        if waited > PROBE_WITHIN {
            return false;
        }
        match probe_in_futex() {
            Some(true) if in_futex_before => return false,
            Some(now) => in_futex_before = now,
            None => {}
        }
    }
}

/// Whether the other thread of this process (the probe) is in a `futex` call; `None` if
/// `/proc` cannot tell.
fn probe_in_futex() -> Option<bool> {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::syscall(libc::SYS_gettid) };
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let tid = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i64>().ok());
        let Some(tid) = tid.filter(|&t| t != me) else {
            continue;
        };
        let call = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
        let nr = call.split_whitespace().next()?.parse::<i64>().ok();
        return Some(nr == Some(libc::SYS_futex));
    }
    // The probe is gone: it ran.
    Some(false)
}

/// Forks the fork server from the calling thread; returns its pid.
///
/// Must be called from the thread that lives as long as the pool (the parent-death signal
/// follows the forking *thread*). Use [`start_server`], which checks the forked server.
pub(crate) fn fork_server(ctx: &ServerCtx<'_>) -> Result<i32> {
    // Quiesce the std locks a fork could catch held by another thread of the parent; the child
    // would inherit them locked forever (see "Locks across the fork" below).
    //
    // 1. A panic being printed holds the panic hook's read lock and std's panic-output lock for as
    //    long as it prints (milliseconds with RUST_BACKTRACE). `take_hook` and `set_hook` need
    //    the hook's write lock, so doing both waits for every panic in progress to finish, and
    //    leaves the hook as it was.
    //
    //    Builds of other pools are kept out of this instant too (`FORK_LOCK`): their `take_hook`
    //    and `set_hook` hold the hook's write lock, which a fork caught held left every worker
    //    of this pool blocked at its first panic. The hook workers need to note a panic's site is
    //    installed here, in the parent, for the same reason (`install_panic_site_hook`).
    let fork_guard = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Other pools' spare byte vectors (private heap, `bigpayload`, "Reuse of byte vectors") are
    // freed first and none is kept until after the fork: the server and its workers would
    // otherwise hold a copy-on-write share of each for this pool's whole life.
    let mut spares_guard = crate::encoding::payload::spares_dropped_for_fork();
    if !crate::encoding::task::install_panic_site_hook() {
        let hook = std::panic::take_hook();
        std::panic::set_hook(hook);
    }
    // 2. stdout and stderr: held (and flushed) across the fork, so no other thread is mid-print
    //    and the children hold no copy of buffered output to print a second time.
    let out = std::io::stdout().lock();
    let err = std::io::stderr().lock();
    let (mut out, mut err) = (out, err);
    let _ = out.flush();
    let _ = err.flush();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SIGINT stays blocked across the fork, so a Ctrl-C cannot kill the server before it has set
    // SIGINT to ignored (the mask is per thread: the parent's other threads still take it).
    let mask = block_sigint();
    // SAFETY: fork() in a possibly multi-threaded process. The child only runs `server_main`,
    // which touches no lock another thread of the parent could hold except through user code
    // (the initializer, tasks), which runs later in the workers; see the crate docs' fork-safety
    // section for what that code may rely on. The parent side continues normally.
    let pid = unsafe { libc::fork() };
    // In both processes this thread holds the guards taken above (the child's thread is a copy of this
    // one, with the same std thread identity), so both release them here.
    if pid == 0 {
        // The server's copy of the registry names the parent's pools, not its own: a pool built
        // in a worker (forked from here) must not touch their copies.
        spares_guard.clear();
    }
    drop(out);
    drop(err);
    drop(spares_guard);
    drop(fork_guard);
    if pid != 0 {
        restore_sigmask(&mask);
    }
    match pid {
        -1 => Err(Error::os(
            "fork (fork server)",
            std::io::Error::last_os_error(),
        )),
        0 => server_main(ctx, parent),
        pid => Ok(pid),
    }
}

fn server_main(ctx: &ServerCtx<'_>, parent: i32) -> ! {
    let _guard = ExitOnUnwind("the fork server");
    die_with_parent(parent);
    set_process_name("shmpool-server");
    // The parent owns Ctrl-C: the server (and every worker it forks, until the worker installs
    // its own no-op handler) ignores SIGINT. See the crate docs, "Ctrl-C".
    // SAFETY: plain signal(2) on our own process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    // Then no signal blocked at all, whatever the forking thread had blocked: the server needs
    // SIGCHLD to notice deaths at once (a blocked one left that to its 200 ms poll), and the
    // workers it forks inherit this mask, so tasks see SIGTERM, SIGCHLD, ... as any fresh
    // process does. (A thread of the parent that blocks signals is common: tokio, signal-hook.)
    unblock_all_signals();
    SERVER_WAKE.store(
        std::ptr::from_ref(&ctx.ctl.header().server).cast_mut(),
        StdOrdering::SeqCst,
    );
    // SAFETY: installs an async-signal-safe handler (an atomic store) for SIGCHLD, without
    // SA_RESTART so that a child's death interrupts our futex wait.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigchld as *const () as usize;
        sa.sa_flags = libc::SA_NOCLDSTOP;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
    }
    for &fd in ctx.parent_channels {
        // SAFETY: these are the parent's ends of the channel pairs, inherited by fork and never
        // used by this process; closing our copies leaves the parent's open.
        unsafe { libc::close(fd) };
    }
    drop_inherited_payloads();
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let ctl = ctx.ctl;
    let header = ctl.header();
    let state = if threads_can_start() {
        SERVER_SERVING
    } else {
        SERVER_REFORK
    };
    // Release, SYNC: server-state — pairs with `start_server`'s Acquire load.
    header.server_state.store(state, Ordering::Release);
    header.collector.notify();
    if state == SERVER_REFORK {
        exit_now(0, false);
    }
    let n = ctl.seats();
    let mut pids = vec![0i32; n];
    loop {
        CHILD_EVENT.store(false, StdOrdering::SeqCst);
        reap(ctl, &mut pids);
        // Acquire, SYNC: server-request.
        let shutdown = header.shutdown.load(Ordering::Acquire);
        if shutdown == TERMINATE {
            for &p in pids.iter().filter(|&&p| p != 0) {
                // SAFETY: `p` is our own unreaped child, so the pid cannot have been reused.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        if shutdown != RUNNING && pids.iter().all(|&p| p == 0) {
            // Tell the collector it can block in `waitpid` for us now: nothing is left to do
            // but `_exit`. Without this, nothing wakes it for our exit and it would notice only
            // at its futex timeout (the 100 ms drop on a busy machine).
            // Release, SYNC: server-exiting — pairs with the collector's Acquire load.
            header.server_exiting.store(1, Ordering::Release);
            header.collector.notify();
            exit_now(0, false);
        }
        for (i, &p) in pids.iter().enumerate() {
            // AcqRel, SYNC: server-request — take the request exactly once, and only when there
            // is a worker to kill (the parent clears a stale one before it asks for a
            // replacement).
            if p != 0 && ctl.seat(i).kill_req.swap(0, Ordering::AcqRel) != 0 {
                // SAFETY: as above, an unreaped child of ours.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        if shutdown == RUNNING {
            for (i, pid) in pids.iter_mut().enumerate() {
                let seat = ctl.seat(i);
                // Acquire, SYNC: server-request — the parent reset the seat before asking.
                if seat.spawn_req.load(Ordering::Acquire) == 0 || *pid != 0 {
                    continue;
                }
                // Relaxed: only this process writes `spawned`.
                let ordinal = header.spawned.fetch_add(1, Ordering::Relaxed) + 1;
                // SAFETY: this process is single-threaded (a fork that runs only this loop), so
                // fork is safe here; the child runs `worker_main`, which never returns.
                match unsafe { libc::fork() } {
                    -1 => {
                        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
                        seat.spawn_errno.store(errno as u32, Ordering::Relaxed);
                    }
                    0 => worker_main(WorkerCtx {
                        ctl,
                        seat: i,
                        ordinal,
                        server_pid: me,
                        channel: ctx.worker_channels[i],
                        initializer: ctx.initializer,
                        max_tasks: ctx.max_tasks,
                    }),
                    child => {
                        *pid = child;
                        seat.spawn_errno.store(0, Ordering::Relaxed);
                        // Relaxed: published by the Release store of `spawn_req` below.
                        seat.pid.store(child as u32, Ordering::Relaxed);
                    }
                }
                // Release, SYNC: spawn-done — pairs with the collector's Acquire load.
                seat.spawn_req.store(0, Ordering::Release);
                header.collector.notify();
            }
        }
        // Wait for an event: a child's death (the SIGCHLD handler also bumps the wake word, so
        // one that lands just before the futex_wait is not lost), a new shutdown mode, or, while
        // running, a spawn or kill request. Once shutting down, only deaths matter (workers were
        // told or killed already), so the server does not spin while they exit.
        header
            .server
            .wait_until(Duration::ZERO, Some(Duration::from_millis(200)), || {
                CHILD_EVENT.load(StdOrdering::SeqCst)
                    // Acquire, SYNC: server-request.
                    || header.shutdown.load(Ordering::Acquire) != shutdown
                    || (shutdown == RUNNING && ctl.server_has_work())
            });
    }
}

/// The name `/proc` shows for a large payload's memfd (`bigpayload::make_segment` names it
/// `shmpool-payload`; a unit test below checks the two agree).
const PAYLOAD_MEMFD: &str = "/memfd:shmpool-payload";

/// The name `/proc` shows for a large argument's memfd, which a pool keeps as a spare between
/// calls (`bigpayload`, "Reuse"; named `shmpool-arg` there, checked by the same test).
const ARG_MEMFD: &str = "/memfd:shmpool-arg";

/// The name `/proc` shows for a worker's reused result segment, which the parent keeps mapped
/// per seat (`bigpayload`, "Reused result segments"; named `shmpool-result` there, checked by
/// the same test).
const RESULT_MEMFD: &str = "/memfd:shmpool-result";

/// Whether `/proc` shows `link` for a large payload's segment (a result's or an argument's).
fn is_payload(link: &str) -> bool {
    link.starts_with(PAYLOAD_MEMFD) || link.starts_with(ARG_MEMFD) || link.starts_with(RESULT_MEMFD)
}

/// In the fork server, right after the fork: closes every inherited fd of a large payload's
/// segment and unmaps every inherited mapping of one (see "Payloads of other pools"). Another
/// pool's, or this program's, threads use them in the parent; none exists in this copy.
///
/// Reads `/proc/self`; without it (not mounted), nothing is dropped and the copies live as long as
/// this pool (memory, not correctness). Allocates, as the server does anyway (glibc resets its
/// malloc locks in the child of a fork).
fn drop_inherited_payloads() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // The directory's own fd is closed by now: its entry no longer resolves and is skipped.
    for fd in fds {
        if std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|l| is_payload(&l.to_string_lossy()))
        {
            // SAFETY: an fd this process inherited and never uses (a payload segment of the
            // parent's); closing our copy leaves the parent's open.
            unsafe { libc::close(fd) };
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(path)) = (f.next(), f.nth(4)) else {
            continue;
        };
        if !is_payload(path) {
            continue;
        }
        let Some((Ok(start), Ok(end))) = range
            .split_once('-')
            .map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)))
        else {
            continue;
        };
        // SAFETY: the range is a whole mapping of a payload segment as the kernel lists it; in
        // this process only the parent's copy of a `Sealed` (a decode in another of its threads,
        // which do not exist here) or of a `ResultMap` (the collector role's) refers to it, and that copy is never used or dropped here
        // (the server leaves only through `_exit`).
        unsafe { libc::munmap(start as *mut libc::c_void, end - start) };
    }
}

/// Reaps every exited child and reports it in its seat.
fn reap(ctl: &Control, pids: &mut [i32]) {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: plain waitpid on our own children with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let Some(i) = pids.iter().position(|&p| p == pid) else {
            continue;
        };
        pids[i] = 0;
        let seat = ctl.seat(i);
        // Relaxed: published by the Release store of `exited`.
        seat.exit_status.store(status as u32, Ordering::Relaxed);
        seat.exit_pid.store(pid as u32, Ordering::Relaxed);
        seat.pid.store(0, Ordering::Relaxed);
        // Release, SYNC: seat-exit — pairs with the collector's Acquire load of `exited`.
        seat.exited.store(1, Ordering::Release);
        ctl.header().collector.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_memfd_name_is_the_one_bigpayload_gives_its_segments() {
        use std::os::fd::AsRawFd;
        let fd = crate::encoding::bigpayload::make_segment(b"", b"x").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().starts_with(PAYLOAD_MEMFD),
            "{}",
            link.display()
        );
        // An argument's segment (a spare between calls) is recognized too.
        let spares = crate::encoding::bigpayload::SpareArgs::new(1);
        let (_, share) = crate::encoding::bigpayload::argument(b"", b"xy", &spares).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", share.fd.as_raw_fd())).unwrap();
        assert!(is_payload(&link.to_string_lossy()), "{}", link.display());
        // A worker's reused result segment too (its parent's mapping of one is what a fork
        // server of another pool would inherit).
        let fd = crate::encoding::bigpayload::write_reusable(b"", b"xy").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(is_payload(&link.to_string_lossy()), "{}", link.display());
    }
}
