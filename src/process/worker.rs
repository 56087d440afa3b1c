//! The loop a worker runs after `fork`, and [`current_worker`].
//!
//! A worker never returns and never unwinds into its copy of the parent's stack: user code runs
//! under `catch_unwind`, our own code under [`ExitOnUnwind`], and the process leaves only through
//! `_exit`, so the parent's atexit handlers and buffered output never run twice.

#![allow(clippy::disallowed_types)] // process-wide identity flags below are plain std atomics

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering as StdOrdering};
use std::time::{Duration, Instant};

use crate::encoding::bigpayload::{
    FLAG_ARG_SEGMENT, FLAG_RESULT_REUSED, FLAG_RESULT_SEGMENT, resolve_argument,
};
use crate::encoding::task::{CallFn, CallOutcome, ResultSink};
use crate::shm::control::{Control, RUNNING};
use crate::shm::ring::{
    Consumer, Descriptor, FLAG_WAITED, Producer, STATUS_ERROR, STATUS_OK, STATUS_PANICKED,
};
use crate::shm::wake::DEFAULT_SPIN;
use crate::sync::Ordering;
use crate::unwind::{
    EXIT_INIT_FAILED, EXIT_INTERNAL, EXIT_ORPHAN, EXIT_PROTOCOL, ExitOnUnwind, exit_now,
    panic_message,
};

/// Most bytes of a panic message shipped back to the parent.
const MAX_MESSAGE: usize = 64 * 1024;

static WORKER_INDEX: AtomicU64 = AtomicU64::new(u64::MAX);
static WORKER_ORDINAL: AtomicU64 = AtomicU64::new(0);
static WORKER_PID: AtomicI32 = AtomicI32::new(0);

/// Who the current process is, when it is a pool worker.
/// # Examples
///
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let info = pool.apply(|_: ()| {
///     let w = shmpool::current_worker().expect("in a worker");
///     (w.index(), w.pid(), w.name())
/// }, ())?;
/// assert!(info.0 < 2);
/// assert!(pool.worker_pids().contains(&info.1));
/// assert!(info.2.starts_with("PoolWorker-"));
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    index: usize,
    pid: u32,
    ordinal: u64,
}

impl WorkerInfo {
    /// The worker's seat, `0..processes`. A replacement for a dead worker takes over its seat.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let seat = pool.apply(|_: ()| shmpool::current_worker().unwrap().index(), ())?;
    /// assert!(seat < 2);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn index(&self) -> usize {
        self.index
    }

    /// The worker's process id.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let pid = pool.apply(|_: ()| shmpool::current_worker().unwrap().pid(), ())?;
    /// assert_eq!(pool.worker_pids(), [pid]);
    /// assert_ne!(pid, std::process::id());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The worker's name, `PoolWorker-N`, where `N` counts the workers this pool has started
    /// (from 1; a replacement gets a new number), like Python's `current_process().name`.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let name = pool.apply(|_: ()| shmpool::current_worker().unwrap().name(), ())?;
    /// assert_eq!(name, "PoolWorker-1");
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn name(&self) -> String {
        format!("PoolWorker-{}", self.ordinal)
    }
}

/// The worker running the calling code, or `None` in a process that is not a pool worker.
///
/// # Examples
///
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// assert!(shmpool::current_worker().is_none());
/// let name = pool.apply(|_: ()| shmpool::current_worker().unwrap().name(), ())?;
/// assert!(name.starts_with("PoolWorker-"));
/// # Ok::<(), shmpool::Error>(())
/// ```
pub fn current_worker() -> Option<WorkerInfo> {
    let index = WORKER_INDEX.load(StdOrdering::Relaxed);
    // Relaxed: written once, right after fork, before any task runs in this process.
    if index == u64::MAX || WORKER_PID.load(StdOrdering::Relaxed) != std::process::id() as i32 {
        return None;
    }
    Some(WorkerInfo {
        index: index as usize,
        pid: std::process::id(),
        ordinal: WORKER_ORDINAL.load(StdOrdering::Relaxed),
    })
}

/// Names this process in `ps`, `top` and `/proc/<pid>/comm` (at most 15 bytes are kept). The
/// forked process otherwise shows the name of the thread that forked it.
pub(crate) fn set_process_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from a live buffer;
    // `buf` is 16 bytes and its last byte is always 0.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Sets the parent-death signal and checks the parent is still the one we were forked from.
pub(crate) fn die_with_parent(expected_parent: i32) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this process's own attribute.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // The parent may have died before prctl took effect: then we were re-parented already.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != expected_parent {
        exit_now(EXIT_ORPHAN, false);
    }
}

/// Everything a freshly forked worker needs.
pub(crate) struct WorkerCtx<'a> {
    pub(crate) ctl: &'a Control,
    pub(crate) seat: usize,
    pub(crate) ordinal: u64,
    pub(crate) server_pid: i32,
    /// This seat's end of the segment channel.
    pub(crate) channel: i32,
    pub(crate) initializer: Option<&'a (dyn Fn() + Send + Sync)>,
    pub(crate) max_tasks: Option<u64>,
}

/// SIGINT handler of a worker: does nothing (see `worker_main`).
extern "C" fn ignore_signal(_: libc::c_int) {}

/// The worker's life. Never returns.
///
/// The loop (initializer, then tasks) runs on a thread of its own named `PoolWorker-N`, so that
/// std's messages name the worker: a task's panic prints `thread 'PoolWorker-3' panicked`, a
/// stack overflow `thread 'PoolWorker-3' has overflowed its stack`, and
/// `std::thread::current().name()` in a task is the worker's name. The forked thread itself is a
/// copy of the thread that forked the server (the pool's `shmpool-collector`), whose name std
/// would print instead, and which users read as the parent failing. If the thread cannot be
/// spawned (`RLIMIT_NPROC`, no memory), the loop runs on the forked thread as before.
pub(crate) fn worker_main(ctx: WorkerCtx<'_>) -> ! {
    let _guard = ExitOnUnwind("a pool worker");
    die_with_parent(ctx.server_pid);
    // SAFETY: restoring the default disposition of SIGCHLD (the server installed a handler) is a
    // plain sigaction on our own process; tasks that spawn children then see normal behaviour.
    // SIGINT gets a handler that does nothing (the server ignored it, and that stayed so until
    // here): the parent owns Ctrl-C (crate docs, "Ctrl-C"), so a terminal's Ctrl-C, which hits
    // the whole process group, does not kill the worker. A handler rather than SIG_IGN because
    // an `exec` resets handlers but keeps SIG_IGN: a program a task runs gets the usual Ctrl-C.
    // SA_RESTART: a task's blocking reads and writes are resumed, not failed with EINTR.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    WORKER_INDEX.store(ctx.seat as u64, StdOrdering::Relaxed);
    WORKER_ORDINAL.store(ctx.ordinal, StdOrdering::Relaxed);
    WORKER_PID.store(std::process::id() as i32, StdOrdering::Relaxed);
    let name = format!("PoolWorker-{}", ctx.ordinal);
    set_process_name(&name);
    crate::shm::channel::set_worker_channel(ctx.channel);
    #[cfg(test)]
    crate::corrupt::attach(ctx.ctl);
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn_scoped(scope, || worker_loop(&ctx));
        match spawned {
            // The loop leaves only through `_exit`; a join that returns means it unwound, which
            // its own guard already turned into an exit.
            Ok(handle) => {
                let _ = handle.join();
                exit_now(EXIT_INTERNAL, false)
            }
            Err(_) => worker_loop(&ctx),
        }
    })
}

/// Initializer, then the task loop. Never returns.
fn worker_loop(ctx: &WorkerCtx<'_>) -> ! {
    let _guard = ExitOnUnwind("a pool worker");
    // The hook that notes a panic's site was installed in the parent before the fork (never
    // here: see `install_panic_site_hook`); this thread runs the tasks, so it records.
    crate::encoding::task::record_panic_sites();

    let ctl = ctx.ctl;
    let seat = ctl.seat(ctx.seat);
    let header = ctl.header();
    let cap = ctl.arena_cap();
    let result_base = ctl.result_arena(ctx.seat);
    let arg_base = ctl.arg_arena(ctx.seat);

    if let Some(init) = ctx.initializer
        && let Err(p) = catch_unwind(AssertUnwindSafe(init))
    {
        {
            let msg = panic_message(&*p);
            let n = msg.len().min(MAX_MESSAGE).min(cap);
            // SAFETY: offset 0..n of our result arena; no task ran, so the parent reads nothing
            // there until it sees `init_error_len` (published below with Release).
            unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), result_base, n) };
            // Release, SYNC: init-error — pairs with the collector's Acquire load.
            seat.init_error_len.store(n as u32, Ordering::Release);
            exit_now(EXIT_INIT_FAILED, true);
        }
    }

    // SAFETY: the control segment stays mapped for our whole life; this worker is the only
    // consumer of its task ring and the only producer of its result ring (a predecessor in this
    // seat is dead and reaped before the parent asks for us).
    let (mut tasks, mut results) = unsafe {
        (
            Consumer::attach(&seat.tasks),
            Producer::attach(&seat.results),
        )
    };
    // Acquire, SYNC: result-free — everything the parent consumed is free for us.
    let mut head = seat.result_freed.load(Ordering::Acquire);
    let mut floor = head;
    let server_pid = ctx.server_pid;
    let parent_alive = move || {
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() == server_pid }
    };
    let mut done: u64 = 0;
    let mut timer = TaskTimer(None);
    // Found the ring empty since the last result: the next result says so (`FLAG_WAITED`).
    let mut waited = false;

    loop {
        let d = match tasks.pop() {
            Ok(Some(d)) => d,
            Ok(None) => {
                waited = true;
                // Acquire, SYNC: server-request (shutdown flag written with Release by the parent).
                if header.shutdown.load(Ordering::Acquire) != RUNNING && !tasks.has_data() {
                    exit_now(0, true);
                }
                let woke =
                    seat.wake
                        .wait_until(DEFAULT_SPIN, Some(Duration::from_millis(500)), || {
                            tasks.has_data() || header.shutdown.load(Ordering::Acquire) != RUNNING
                        });
                if !woke && !parent_alive() {
                    exit_now(EXIT_ORPHAN, false);
                }
                continue;
            }
            Err(_) => exit_now(EXIT_PROTOCOL, false),
        };
        let offset = d.offset as usize;
        let len = d.len as usize;
        if d.call == 0 || offset.checked_add(len).is_none_or(|end| end > cap) {
            exit_now(EXIT_PROTOCOL, false);
        }
        // SAFETY: bounds checked above; the parent wrote this argument before publishing the
        // descriptor (ring-publish) and does not touch it until it has our result.
        let arg = unsafe { std::slice::from_raw_parts(arg_base.add(offset), len) };
        // SAFETY: the parent only ever sends addresses of `CallFn` trampolines of this very
        // binary image (we are its fork), so the address is a valid `CallFn`.
        let call: CallFn = unsafe { std::mem::transmute::<usize, CallFn>(d.call as usize) };
        let keep_waiting = || parent_alive();
        let started = Instant::now();
        let limit = (d.elapsed_ns != 0).then(|| Duration::from_nanos(d.elapsed_ns));
        if let Some(limit) = limit {
            // Relaxed: read by the parent only after our death (seat-exit orders it).
            seat.task_started_ns
                .store(monotonic_ns(), Ordering::Relaxed);
            if let Err(e) = timer.arm(limit) {
                let msg = format!("could not arm the task's time limit: {e}");
                // SAFETY: `result_base..+cap` is our result arena and only we allocate in it.
                let mut sink = unsafe {
                    ResultSink::new(
                        result_base,
                        cap,
                        &mut head,
                        &mut floor,
                        &seat.result_freed,
                        &keep_waiting,
                    )
                };
                let Ok((status, enc)) = message(&mut sink, STATUS_ERROR, &msg) else {
                    exit_now(EXIT_ORPHAN, false)
                };
                push_result(
                    &mut results,
                    d.task_id,
                    (status, enc, None),
                    0,
                    std::mem::take(&mut waited),
                    &parent_alive,
                );
                header.collector.notify();
                continue;
            }
        }
        // An argument too large for the arena is in a segment of its own (`bigpayload`).
        let big_arg = (d.flags & FLAG_ARG_SEGMENT != 0).then(|| resolve_argument(arg));
        let mut big_result = None;
        let outcome = {
            // SAFETY: `result_base..+cap` is our result arena and only we allocate in it.
            let mut sink = unsafe {
                ResultSink::new(
                    result_base,
                    cap,
                    &mut head,
                    &mut floor,
                    &seat.result_freed,
                    &keep_waiting,
                )
            };
            sink.reuse_segments(&seat.result_segment_busy);
            let outcome = match &big_arg {
                None => {
                    // SAFETY: the argument was encoded by the parent for this very trampoline.
                    unsafe { call(arg, &mut sink) }
                }
                Some(Ok((_, seg))) => {
                    // SAFETY: as above; the segment holds the argument the parent encoded.
                    unsafe { call(seg.bytes(), &mut sink) }
                }
                Some(Err(e)) => CallOutcome::Failed(format!("cannot read the argument: {e}")),
            };
            let mut r = match outcome {
                CallOutcome::Done(e) => Ok((STATUS_OK, e)),
                CallOutcome::Panicked(m) => message(&mut sink, STATUS_PANICKED, &m),
                CallOutcome::Failed(m) => message(&mut sink, STATUS_ERROR, &m),
            };
            // A result too large for the arena: its segment goes to the parent before the
            // descriptor that announces it (see `bigpayload`).
            if let Some((fd, n, reused)) = sink.take_big() {
                match crate::shm::channel::send_result(d.task_id, &fd) {
                    Ok(()) => big_result = Some((n, reused)),
                    Err(e) => {
                        if reused {
                            // Relaxed, SYNC: result-segment-free — no partner: the parent never
                            // learns of this result, so it will not clear the flag; we do,
                            // and our own next write follows in program order.
                            seat.result_segment_busy.store(0, Ordering::Relaxed);
                        }
                        let m = format!("cannot send the result's segment: {e}");
                        r = message(&mut sink, STATUS_ERROR, &m);
                    }
                }
            }
            r
        };
        if limit.is_some() {
            // Disarmed before the result is published: a timer that fires from here on kills
            // a worker that finished in time only if the task took its whole limit anyway.
            timer.disarm();
        }
        let elapsed_ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let (status, enc) = match outcome {
            Ok(x) => x,
            Err(()) => exit_now(EXIT_ORPHAN, false),
        };
        push_result(
            &mut results,
            d.task_id,
            (status, enc, big_result),
            elapsed_ns,
            std::mem::take(&mut waited),
            &parent_alive,
        );
        header.collector.notify();
        // Closed only now, off the path of the result: unmapping and closing a large argument
        // takes a while, and the parent frees or keeps its memory anyway (it holds the other fd).
        // Never read `seg` from here on: once the result is published the parent may write
        // another task's argument into the same segment (`bigpayload`, "Reuse").
        if let Some(Ok((id, seg))) = big_arg {
            drop(seg);
            crate::shm::channel::forget_local(id);
        }
        done += 1;
        if ctx.max_tasks.is_some_and(|m| done >= m) {
            exit_now(0, true);
        }
    }
}

/// Publishes a task's result descriptor, waiting for ring space while the parent lives.
/// `result` is the status, the arena placement, and the length of a result sent in a segment of
/// its own instead (`bigpayload`), if it was.
fn push_result(
    results: &mut Producer,
    task_id: u64,
    result: (u32, crate::encoding::task::Encoded, Option<(u64, bool)>),
    elapsed_ns: u64,
    waited: bool,
    parent_alive: &dyn Fn() -> bool,
) {
    let (status, enc, big) = result;
    let mut rd = Descriptor {
        task_id,
        call: 0,
        offset: enc.offset as u64,
        len: enc.len as u64,
        arena_end: enc.end,
        elapsed_ns,
        status,
        flags: match big {
            Some((_, true)) => FLAG_RESULT_SEGMENT | FLAG_RESULT_REUSED,
            Some((_, false)) => FLAG_RESULT_SEGMENT,
            None => 0,
        } | if waited { FLAG_WAITED } else { 0 },
        reserved: big.map_or(0, |(n, _)| n),
    };
    loop {
        match results.push(rd) {
            Ok(Ok(())) => return,
            Ok(Err(back)) => {
                rd = back;
                if !parent_alive() {
                    exit_now(EXIT_ORPHAN, false);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(_) => exit_now(EXIT_PROTOCOL, false),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine, so a time
/// taken in a worker can be compared with one taken in the parent.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A task's time limit: a POSIX timer on `CLOCK_MONOTONIC` that sends this worker `SIGKILL`
/// when it expires. `SIGKILL` because nothing a task does (blocking signals, a handler of its
/// own, a tight loop, an uninterruptible-looking syscall) can delay it; the fork server reaps
/// the worker and the parent sees a death whose time (`task_started_ns`) says it was the limit.
/// Made on first use, so workers of pools without limits never make one.
struct TaskTimer(Option<libc::timer_t>);

impl TaskTimer {
    fn arm(&mut self, limit: Duration) -> std::io::Result<()> {
        let timer = match self.0 {
            Some(t) => t,
            None => {
                // SAFETY: a zeroed sigevent is a valid value (plain C struct); the fields set
                // ask for SIGKILL to this process.
                let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
                ev.sigev_notify = libc::SIGEV_SIGNAL;
                ev.sigev_signo = libc::SIGKILL;
                let mut t: libc::timer_t = std::ptr::null_mut();
                // SAFETY: valid pointers to an initialized sigevent and an out timer id.
                if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut t) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                self.0 = Some(t);
                t
            }
        };
        // A limit below 1 ns would disarm the timer instead: round up.
        let limit = limit.max(Duration::from_nanos(1));
        let its = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: limit.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: limit.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `timer` is a live timer of this process; `its` is a valid itimerspec.
        if unsafe { libc::timer_settime(timer, 0, &its, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn disarm(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: a zeroed itimerspec disarms the live timer `t`.
            unsafe {
                let its: libc::itimerspec = std::mem::zeroed();
                libc::timer_settime(t, 0, &its, std::ptr::null_mut());
            }
        }
    }
}

/// Ships a panic or error message as the task's result payload.
fn message(
    sink: &mut ResultSink<'_>,
    status: u32,
    msg: &str,
) -> Result<(u32, crate::encoding::task::Encoded), ()> {
    let mut end = msg.len().min(MAX_MESSAGE);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    match sink.put_bytes(&msg.as_bytes()[..end]) {
        Ok(e) => Ok((status, e)),
        Err(_) => Err(()),
    }
}
