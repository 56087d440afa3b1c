//! [`Pool`], its builder, and the public API (`apply`, `map`, `imap`, ...).

mod auto;
mod callbacks;
pub(crate) mod dispatch;
mod imap;
mod map;
pub(crate) mod result;
pub(crate) mod window;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::encoding::payload::{CallSpare, ChunkOut, Payload, SpareBytes, decode_chunk_out};
use crate::encoding::task::{
    CallFn, StarFn, assert_task_fn, call_chunk, call_one, call_star_chunk,
};
use crate::error::{Error, Result, SubmitError};
use crate::pool::result::{AsyncResult, Helper, ResultCell};
use crate::process::exit::reap_server;
use crate::process::server::{ServerCtx, start_server};
use crate::shm::channel;
use crate::shm::control::{Control, GRACEFUL, TERMINATE};
use crate::sync::{AtomicU32, Ordering};

use callbacks::{Callbacks, Promise, Publish, callback_hook};
use dispatch::{
    CollectorRole, Completion, Dispatch, PendingTask, Phase, TaskResult, encode, encode_items,
};
pub use imap::IMap;

/// Default size of each worker's argument arena and result arena.
/// # Examples
///
/// ```
/// let pool = shmpool::Pool::builder()
///     .processes(1)
///     .arena_size(shmpool::DEFAULT_ARENA_SIZE / 4)
///     .build()?;
/// assert_eq!(pool.apply(|x: u8| x, 1)?, 1);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub const DEFAULT_ARENA_SIZE: usize = 64 << 20;

/// The most workers a pool may have: `PID_MAX_LIMIT`, the most processes Linux can run at once.
const MAX_PROCESSES: usize = 1 << 22;

/// State shared by the pool handle and its collector thread.
pub(crate) struct Inner {
    pub(crate) ctl: Control,
    pub(crate) dispatch: Mutex<Dispatch>,
    /// Notified when `outstanding` drops to 0 (or the pool breaks).
    pub(crate) idle: Condvar,
    callbacks: Arc<Callbacks>,
    /// The parent's end of each seat's segment channel (see `channel`).
    channels: Vec<OwnedFd>,
    collector: Mutex<Option<JoinHandle<()>>>,
    /// The collector role (consumer side of the result rings).
    pub(crate) collector_role: Mutex<CollectorRole>,
    /// Threads currently collecting for themselves while they wait for a result.
    pub(crate) active_callers: AtomicU32,
    /// Wakes the collector thread when the last such caller leaves.
    pub(crate) callers_left: (Mutex<()>, Condvar),
    initializer: Option<Arc<dyn Fn() + Send + Sync>>,
    max_tasks: Option<u64>,
    processes: usize,
    /// Finished large-argument segments kept for reuse (`bigpayload`, "Reuse").
    pub(crate) spare_args: Arc<crate::encoding::bigpayload::SpareArgs>,
    /// A large byte-vector argument's allocation, kept to decode the next large byte-vector
    /// result into (`bigpayload`, "Reuse of byte vectors").
    spare_bytes: Arc<SpareBytes>,
}

/// A pool of forked worker processes (Python's `multiprocessing.Pool`).
///
/// Tasks travel to the workers through lock-free rings in shared memory and run there in
/// parallel. A task function is a `fn` item or a closure that captures nothing (checked at
/// compile time); its argument and result cross as bytes (see [`Payload`]).
///
/// Dropping the pool terminates it: workers are killed and reaped, every pending
/// [`AsyncResult`] resolves to [`Error::PoolTerminated`], and no process or shared memory is
/// left behind. Call [`close`](Pool::close) then [`join`](Pool::join) to finish queued work first.
///
/// **`drop` blocks** until every worker and the fork server have been killed *and reaped*, and
/// until queued callbacks have run (as [`terminate`](Pool::terminate) does): usually well under
/// a millisecond per worker, but a worker stuck in uninterruptible sleep (`D` state, e.g. on a
/// hung network file system) holds the drop until the kernel lets it die, and a slow callback
/// holds it until it returns. Do not drop a pool where blocking is not allowed (an async
/// executor's thread: use `spawn_blocking`).
///
/// `Pool` is `Send + Sync`: any number of threads may submit to one pool.
///
/// # Examples
///
/// ```
/// use shmpool::Pool;
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.apply(|x: u64| x * x, 7)?, 49);
/// let squares = pool.map(|x: u64| x * x, 0..10)?;
/// assert_eq!(squares[9], 81);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// A capturing closure does not compile:
///
/// ```compile_fail
/// let pool = shmpool::Pool::new(1).unwrap();
/// let offset = 5u64;
/// pool.apply(move |x: u64| x + offset, 1).unwrap();
/// ```
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.inner.processes)
            .finish_non_exhaustive()
    }
}

/// Configures and builds a [`Pool`].
///
/// # Examples
///
/// ```
/// let pool = shmpool::Pool::builder()
///     .processes(2)
///     .initializer(|| println!("worker ready"))
///     .max_tasks_per_child(1000)
///     .build()?;
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<Arc<dyn Fn() + Send + Sync>>,
    max_tasks: Option<u64>,
    arena_size: usize,
    task_timeout: Option<Duration>,
    retries: u32,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("initializer", &self.initializer.is_some())
            .field("max_tasks_per_child", &self.max_tasks)
            .field("arena_size", &self.arena_size)
            .field("task_timeout", &self.task_timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            processes: None,
            initializer: None,
            max_tasks: None,
            arena_size: DEFAULT_ARENA_SIZE,
            task_timeout: None,
            retries: 0,
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes (default: the number of CPUs available to this process).
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(3).build()?;
    /// assert_eq!(pool.processes(), 3);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Runs `f` once in each worker right after it is forked (never in the parent), before it
    /// takes any task. `f` may capture: it is in memory when the pool forks. Use it for
    /// per-worker state (a thread-local, a connection, a rayon or tokio runtime of its own).
    /// If it panics, the pool reports [`Error::InitializerFailed`] for all queued and new work.
    /// # Examples
    ///
    /// ```
    /// use std::cell::Cell;
    /// thread_local!(static READY: Cell<bool> = const { Cell::new(false) });
    /// let pool = shmpool::Pool::builder()
    ///     .processes(1)
    ///     .initializer(|| READY.with(|r| r.set(true)))
    ///     .build()?;
    /// // The initializer ran in the worker, not here.
    /// assert!(pool.apply(|_: ()| READY.with(Cell::get), ())?);
    /// assert!(!READY.with(Cell::get));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn initializer(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.initializer = Some(Arc::new(f));
        self
    }

    /// Replaces each worker after it has run `n` tasks (Python's `maxtasksperchild`), which
    /// returns any memory a task leaked.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(1).max_tasks_per_child(1).build()?;
    /// let first = pool.apply(|_: ()| std::process::id(), ())?;
    /// let second = pool.apply(|_: ()| std::process::id(), ())?;
    /// assert_ne!(first, second); // a fresh worker for each task
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// Size in bytes of each worker's argument arena and of its result arena (default
    /// [`DEFAULT_ARENA_SIZE`]). The memory is reserved, not touched: pages cost RAM only once a
    /// payload that large is used.
    ///
    /// An argument or result larger than the arena still crosses: it travels in a shared segment
    /// of its own (a sealed memfd passed over the worker's socket, read where it is by the
    /// other side), which costs a `memfd_create`, an `mmap` and a few system calls more than the
    /// arena. The pool keeps up to two finished argument segments, together at most 16 times
    /// this size, and reuses them for later large arguments (filling fresh shared memory is
    /// what a large payload costs most): after a large call, the pool holds that much memory
    /// until the next one or until it is dropped. The same holds for a chunk of `map` items or
    /// results. Likewise a byte vector (`Vec<u8>`, `Box<[u8]>`) of at least an eighth of this
    /// size, passed to an `apply` call or returned by a task, is kept (one in the pool, one in
    /// each worker, each at most 16 times this size) and the next large byte vector that
    /// crosses is decoded into it instead of into fresh memory; a vector handed to you never has
    /// more than twice its length in capacity. And each worker writes its large byte-vector
    /// results into one shared segment it keeps (as large as its largest such result, at most
    /// 16 times this size), which the pool keeps mapped until that worker exits. Only [`Pool::imap`] and
    /// [`Pool::imap_unordered`] items must fit the arena one by one
    /// ([`Error::PayloadTooLarge`] at that item's place).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(1).arena_size(1 << 16).build()?;
    /// assert_eq!(pool.apply(|v: Vec<u8>| v.len(), vec![0u8; 1000])?, 1000);
    /// // Twice the 64 KiB arena, both ways: in a segment of its own.
    /// let back = pool.apply(|v: Vec<u8>| v, vec![3u8; 1 << 17])?;
    /// assert_eq!(back, vec![3u8; 1 << 17]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn arena_size(mut self, bytes: usize) -> Self {
        self.arena_size = bytes;
        self
    }

    /// A time limit for every task (Python's `Pool` has none). A task still running after
    /// `limit` is killed with its worker, which is replaced; the task resolves to
    /// [`Error::TaskTimedOut`] naming the worker and the limit, and every other task goes on
    /// untouched (those queued behind it run in the replacement).
    ///
    /// The limit counts from the moment a worker starts the task (not from submission) and
    /// includes writing its result. It is enforced by the worker's own timer, which sends it
    /// `SIGKILL`: nothing the task does can delay it, and the parent needs no polling. A chunk of
    /// items (`map`, `imap`, `starmap`, `map_chunks`, ...) is one task: the limit applies to the
    /// whole chunk, and when it passes every item of the chunk fails with the error, so give
    /// chunked calls a limit for a chunk (or an explicit chunksize). A per-call limit
    /// ([`Pool::apply_async_timeout`]) overrides this one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::builder()
    ///     .processes(1)
    ///     .task_timeout(Duration::from_millis(200))
    ///     .build()?;
    /// let stuck = pool.apply(|_: ()| -> u64 { loop { std::hint::spin_loop() } }, ());
    /// assert!(matches!(stuck, Err(shmpool::Error::TaskTimedOut { .. })));
    /// assert_eq!(pool.apply(|x: u64| x + 1, 1)?, 2); // the replacement serves on
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Runs a task again, up to `n` more times, when the worker running it dies (a signal, an
    /// `exit`, the OOM killer): useful when deaths come from outside the task. Off (0) by
    /// default, like Python's `Pool`, because a task that kills its worker would kill `n + 1`.
    /// A task that panics or runs past its time limit is never retried. Each retry goes to the
    /// front of the queue; after the last, the task resolves to [`Error::WorkerDied`].
    ///
    /// While a task may still be retried, the pool keeps a copy of its encoded argument.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(2).retries(2).build()?;
    /// assert_eq!(pool.apply(|x: u64| x * 3, 5)?, 15);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Forks the workers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for 0 processes, more than 2^22 (Linux's `PID_MAX_LIMIT`),
    /// more than the open-file limit leaves room for (two descriptors a worker while it starts,
    /// see `ulimit -n`), `max_tasks_per_child(0)`, an arena smaller than 4 KiB, or sizes whose
    /// total does not fit in the address space (`arena_size(1 << 62)`); [`Error::Os`] if a
    /// segment cannot be mapped, the process runs out of file descriptors later, or a process
    /// cannot be forked.
    /// Construction is all-or-nothing: on error, no process or segment is left.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.worker_pids().len(), 2);
    /// assert!(shmpool::Pool::builder().processes(0).build().is_err());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn build(self) -> Result<Pool> {
        let processes = match self.processes {
            Some(0) => return Err(Error::invalid("processes must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.max_tasks == Some(0) {
            return Err(Error::invalid("max_tasks_per_child must be at least 1"));
        }
        if self.arena_size < 4096 {
            return Err(Error::invalid("arena_size must be at least 4096 bytes"));
        }
        if processes > MAX_PROCESSES {
            return Err(Error::invalid(format!(
                "processes must be at most {MAX_PROCESSES} (Linux's largest pid_max)"
            )));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid("task_timeout must be more than zero"));
        }
        // The channels first: they are cheap, and an absurd worker count meets the fd limit here
        // before the control segment's per-seat words are written.
        // EMFILE, from the channels or from the control segment's memfd right after them, is
        // the open-file limit: the error says so.
        let emfile = |made: usize, e: Error| match e {
            Error::Os { source, .. } if source.raw_os_error() == Some(libc::EMFILE) => out_of_fds(
                processes,
                made,
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok(),
            ),
            e => e,
        };
        let mut pairs = Vec::with_capacity(processes.min(1 << 16));
        for made in 0..processes {
            pairs.push(channel::pair().map_err(|e| emfile(made, e))?);
        }
        let (channels, worker_channels): (Vec<OwnedFd>, Vec<OwnedFd>) = pairs.into_iter().unzip();
        let ctl = Control::new(processes, self.arena_size).map_err(|e| emfile(processes, e))?;
        let mut dispatch = Dispatch::new(&ctl, channels.iter().map(AsRawFd::as_raw_fd).collect());
        dispatch.task_timeout = self.task_timeout;
        dispatch.retries = self.retries;
        let inner = Arc::new(Inner {
            spare_args: crate::encoding::bigpayload::SpareArgs::new(ctl.arena_cap()),
            spare_bytes: {
                let spare = Arc::new(SpareBytes::new(ctl.arena_cap()));
                crate::encoding::payload::register_pool_spare(&spare);
                spare
            },
            dispatch: Mutex::new(dispatch),
            channels,
            collector_role: Mutex::new(CollectorRole::new(&ctl)),
            active_callers: AtomicU32::new(0),
            callers_left: (Mutex::new(()), Condvar::new()),
            ctl,
            idle: Condvar::new(),
            callbacks: Arc::new(Callbacks::new()),
            collector: Mutex::new(None),
            initializer: self.initializer,
            max_tasks: self.max_tasks,
            processes,
        });
        let (tx, rx) = mpsc::channel();
        let for_thread = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("shmpool-collector".into())
            .spawn(move || collector_thread(for_thread, worker_channels, tx))
            .map_err(|e| Error::os("spawn collector thread", e))?;
        match rx.recv() {
            Ok(Ok(())) => {
                *inner.collector.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
                Ok(Pool { inner })
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(Error::PoolBroken {
                    detail: "the collector thread died while starting the pool".into(),
                })
            }
        }
    }
}

/// The error for a pool that ran out of file descriptors (in its channels or in its control
/// segment's memfd) after the channels of `made` of `processes` workers, with the open-file limit
/// `(soft, hard)` when known. Without it an absurd `processes(100000)` failed in its 500th
/// `socketpair` with a bare `Too many open files`, and a limit met at the memfd with a bare
/// `memfd_create failed`.
fn out_of_fds(processes: usize, made: usize, limit: Option<(u64, u64)>) -> Error {
    let show = |n: u64| {
        if n == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    let limit = limit.map_or(String::new(), |(soft, hard)| {
        format!(
            " ({}; `ulimit -n`, which can go up to {})",
            show(soft),
            show(hard)
        )
    });
    Error::invalid(format!(
        "processes({processes}): this process ran out of file descriptors after {made} workers \
         (each takes 2 while the pool starts, 1 after); the open-file limit{limit} is too low \
         for that many: raise it or use fewer processes"
    ))
}

/// The collector thread: forks the server (so the parent-death signal follows a thread that
/// lives exactly as long as the pool), starts the workers, reports to `build`, then collects.
fn collector_thread(
    inner: Arc<Inner>,
    worker_channels: Vec<OwnedFd>,
    ready: mpsc::Sender<Result<()>>,
) {
    let worker_fds: Vec<i32> = worker_channels.iter().map(AsRawFd::as_raw_fd).collect();
    let parent_fds: Vec<i32> = inner.channels.iter().map(AsRawFd::as_raw_fd).collect();
    let ctx = ServerCtx {
        ctl: &inner.ctl,
        worker_channels: &worker_fds,
        parent_channels: &parent_fds,
        initializer: inner.initializer.as_deref(),
        max_tasks: inner.max_tasks,
    };
    let server = match start_server(&ctx) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The server (and through it every worker) holds the worker ends now.
    drop(worker_channels);
    let ctl = &inner.ctl;
    let started = ctl.dont_fork().and_then(|()| start_workers(ctl));
    if let Err(e) = started {
        ctl.header().shutdown.store(TERMINATE, Ordering::Release);
        ctl.header().server.notify();
        let _ = reap_server(server, true);
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok(()));
    dispatch::run_collector(&inner, server);
}

/// Asks the server for every worker and waits until it forked them all.
fn start_workers(ctl: &Control) -> Result<()> {
    for s in 0..ctl.seats() {
        // Release, SYNC: server-request.
        ctl.seat(s).spawn_req.store(1, Ordering::Release);
    }
    ctl.header().server.notify();
    let all_done = || {
        // Acquire, SYNC: spawn-done.
        (0..ctl.seats()).all(|s| ctl.seat(s).spawn_req.load(Ordering::Acquire) == 0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_done() {
        if Instant::now() > deadline {
            return Err(Error::PoolBroken {
                detail: "the fork server did not start the workers within 60 s".into(),
            });
        }
        ctl.header().collector.wait_until(
            Duration::ZERO,
            Some(Duration::from_millis(100)),
            all_done,
        );
    }
    for s in 0..ctl.seats() {
        let errno = ctl.seat(s).spawn_errno.load(Ordering::Relaxed);
        if errno != 0 {
            return Err(Error::os(
                "fork (worker)",
                std::io::Error::from_raw_os_error(errno as i32),
            ));
        }
    }
    Ok(())
}

impl Pool {
    /// A pool of `processes` workers.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(3)?;
    /// assert_eq!(pool.processes(), 3);
    /// assert!(shmpool::Pool::new(0).is_err());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for a pool with non-default settings.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::builder().processes(1).max_tasks_per_child(100).build()?;
    /// assert_eq!(pool.processes(), 1);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of worker processes.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn processes(&self) -> usize {
        self.inner.processes
    }

    /// The pids of the live workers, by seat (0 while a seat's worker is being replaced).
    ///
    /// Skip the zeros before signalling a pid: `kill(0, sig)` signals the caller's whole
    /// process group (a test that did so killed itself and the shell running it). A pid read
    /// here can also be stale by the time it is used, if that worker died and was replaced
    /// meanwhile; `examples/soak.rs` opens a pidfd at once and signals through it.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let pids = pool.worker_pids();
    /// assert_eq!(pids.len(), 2);
    /// let pid = pool.apply(|_: ()| std::process::id(), ())?;
    /// assert!(pids.contains(&pid));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn worker_pids(&self) -> Vec<u32> {
        (0..self.inner.processes)
            .map(|s| self.inner.ctl.seat(s).pid.load(Ordering::Relaxed))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dispatch> {
        self.inner
            .dispatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn helper(&self) -> std::sync::Weak<dyn Helper> {
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&self.inner);
        weak
    }

    /// The pool's shared state, for a call that submits more tasks from its completions (a
    /// `Weak` of it, so that pending tasks do not keep the pool alive).
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub(crate) fn arena_cap(&self) -> usize {
        self.inner.ctl.arena_cap()
    }

    /// What the result of a call with argument `arg` (already encoded) is decoded into, if `R`
    /// is a byte vector (`bigpayload`, "Reuse of byte vectors"): `arg`'s own allocation if it
    /// is a large byte vector (lent: [`Pool::arg_back`] returns it if the call is refused),
    /// otherwise the pool's spare. `arg` comes back unless it was lent. A call whose result is
    /// no byte vector captures nothing more.
    fn lend_arg<A: 'static, R: 'static>(&self, arg: A) -> (Option<Arc<CallSpare>>, Option<A>) {
        if !crate::encoding::payload::is_byte_payload::<R>() {
            return (None, Some(arg));
        }
        let (spare, arg) = CallSpare::lend(&self.inner.spare_bytes, arg);
        (Some(spare), arg)
    }

    /// After a call with argument `arg` was accepted: a large byte-vector argument not lent to
    /// the call goes to the pool's spare (otherwise `arg` is dropped as before).
    fn spend_arg<A: 'static>(&self, arg: Option<A>) {
        if let Some(arg) = arg {
            self.inner.spare_bytes.keep(arg);
        }
    }

    /// A refused call's argument, given back whether or not it was lent.
    fn arg_back<A: 'static>(arg: Option<A>, spare: Option<&CallSpare>) -> A {
        arg.or_else(|| spare.and_then(CallSpare::take_back))
            .expect("an argument not left with the caller was lent to the call")
    }

    /// The pool's spare large-argument segments (`bigpayload`, "Reuse").
    pub(crate) fn spare_args(&self) -> &Arc<crate::encoding::bigpayload::SpareArgs> {
        &self.inner.spare_args
    }

    /// Accepts tasks (all or none) and feeds the workers.
    pub(crate) fn submit(&self, tasks: Vec<PendingTask>) -> Result<()> {
        self.inner.submit(tasks, false)
    }

    /// Whether the pool takes new calls now. A lazy iterator (`imap`, `imap_chunks`, ...) made
    /// while it does was accepted as a whole, as Python's `imap` queues its whole input at the
    /// call: its later chunks go through [`submit_more`](Pool::submit_more).
    pub(crate) fn accepting(&self) -> bool {
        self.lock().refuse().is_none()
    }

    /// Like [`submit`](Pool::submit) for more chunks of a call: if the call was `accepted`
    /// (see [`accepting`](Pool::accepting)), they are taken after `close` too, until the pool
    /// stops.
    pub(crate) fn submit_more(&self, tasks: Vec<PendingTask>, accepted: bool) -> Result<()> {
        self.inner.submit(tasks, accepted)
    }

    /// Runs `f(arg)` in a worker without waiting (Python's `apply_async`).
    ///
    /// # Errors
    ///
    /// [`Error::PoolClosed`] after `close`/`terminate`, [`Error::Codec`] if `arg` cannot be
    /// encoded, [`Error::Os`] if an argument larger than the arena cannot get its own segment
    /// (see [`PoolBuilder::arena_size`]), each in a [`SubmitError`] that hands `arg` back (`?`
    /// turns it into the plain [`Error`]). Failures of the task itself arrive through the
    /// returned [`AsyncResult`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let results: Vec<_> = (0..4u64)
    ///     .map(|i| pool.apply_async(|x: u64| x + 1, i))
    ///     .collect::<Result<_, _>>()?;
    /// let values: Vec<u64> = results.into_iter().map(|r| r.get()).collect::<Result<_, _>>()?;
    /// assert_eq!(values, [1, 2, 3, 4]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn apply_async<F, A, R>(&self, f: F, arg: A) -> Result<AsyncResult<R>, SubmitError<A>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
    {
        let _ = f;
        assert_task_fn::<F>();
        let cell = ResultCell::new(Some(self.helper()));
        let out = Arc::clone(&cell);
        self.submit_one::<F, A, R>(arg, None, move |spare| {
            Box::new(move |r| out.set(decode_result_into::<R>(r, spare.as_deref())))
        })?;
        Ok(AsyncResult::from_cell(cell))
    }

    /// Submits one task `f(arg)` (`call_one`), the common part of the `apply_async` forms: the
    /// argument is encoded, a byte-vector argument is lent to a byte-vector result
    /// (`bigpayload`, "Reuse of byte vectors"), and `done` makes the completion from that loan.
    /// A refused call gets its argument back whole.
    fn submit_one<F, A, R>(
        &self,
        arg: A,
        timeout: Option<Duration>,
        done: impl FnOnce(Option<Arc<CallSpare>>) -> Completion,
    ) -> Result<(), SubmitError<A>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
    {
        let payload = match encode_arg(&arg, self.arena_cap(), &self.inner.spare_args) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::new(e, arg)),
        };
        let (spare, arg) = self.lend_arg::<A, R>(arg);
        let done = done(spare.clone());
        let mut task = PendingTask::new(payload, call_one::<F, A, R> as CallFn as usize, done);
        task.timeout = timeout;
        // The completion reads a big byte-vector result from its shared segment itself.
        task.reads_shared = crate::encoding::payload::is_byte_payload::<R>();
        match self.submit(vec![task]) {
            Ok(()) => {
                self.spend_arg(arg);
                Ok(())
            }
            Err(e) => Err(SubmitError::new(e, Self::arg_back(arg, spare.as_deref()))),
        }
    }

    /// Like [`apply_async`](Pool::apply_async) with a time limit for this task alone (it
    /// overrides [`PoolBuilder::task_timeout`]): if the task runs longer than `limit` once a
    /// worker has started it, the worker is killed and replaced and the result is
    /// [`Error::TaskTimedOut`]. Other tasks are not affected.
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Pool::apply_async), and [`Error::InvalidArgument`] for a zero limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::new(2)?;
    /// let slow = |ms: u64| std::thread::sleep(Duration::from_millis(ms));
    /// let r = pool.apply_async_timeout(slow, 10_000, Duration::from_millis(100))?;
    /// assert!(matches!(r.get(), Err(shmpool::Error::TaskTimedOut { .. })));
    /// let r = pool.apply_async_timeout(slow, 1, Duration::from_secs(30))?;
    /// assert!(r.get().is_ok());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn apply_async_timeout<F, A, R>(
        &self,
        f: F,
        arg: A,
        limit: Duration,
    ) -> Result<AsyncResult<R>, SubmitError<A>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
    {
        let _ = f;
        assert_task_fn::<F>();
        if limit.is_zero() {
            return Err(SubmitError::new(
                Error::invalid("a task's time limit must be more than zero"),
                arg,
            ));
        }
        let cell = ResultCell::new(Some(self.helper()));
        let out = Arc::clone(&cell);
        self.submit_one::<F, A, R>(arg, Some(limit), move |spare| {
            Box::new(move |r| out.set(decode_result_into::<R>(r, spare.as_deref())))
        })?;
        Ok(AsyncResult::from_cell(cell))
    }

    /// Runs `f(arg)` in a worker and waits for the result (Python's `apply`).
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Pool::apply_async), plus the task's own failure
    /// ([`Error::TaskPanicked`], [`Error::WorkerDied`], ...).
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// assert_eq!(pool.apply(|s: String| s.len(), "four".to_string())?, 4);
    /// let e = pool.apply(|_: ()| -> u8 { panic!("no") }, ()).unwrap_err();
    /// assert_eq!(e.to_string(), "task panicked in worker 0: no");
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
    {
        self.apply_async(f, arg).map_err(Error::from)?.get()
    }

    /// Like [`apply_async`](Pool::apply_async), and `callback` runs in the parent with the
    /// outcome when the task ends (Python's `callback` and `error_callback` in one).
    ///
    /// Callbacks run one at a time on a thread of the pool, never on the thread that collects
    /// results, so a slow callback delays other callbacks but no other result. As in Python, the
    /// callback has returned before [`get`](AsyncResult::get), [`wait`](AsyncResult::wait) or
    /// [`ready`](AsyncResult::ready) of *this* result see it, so what the callback wrote is
    /// visible after `get`. A callback must therefore not wait for another result that has a
    /// callback (it would wait for itself). [`join`](Pool::join) waits for every callback (called
    /// from a callback, for every other one: it runs those still queued itself). A panicking
    /// callback is reported on stderr and ignored (its result is still delivered).
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Pool::apply_async), `arg` handed back in the [`SubmitError`]; the
    /// callback then never runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// static SUM: AtomicU64 = AtomicU64::new(0);
    /// let pool = shmpool::Pool::new(2)?;
    /// for i in 0..10u64 {
    ///     pool.apply_async_with_callback(|x: u64| x + 1, i, |r| {
    ///         SUM.fetch_add(r.unwrap(), Ordering::SeqCst);
    ///     })?;
    /// }
    /// pool.close();
    /// pool.join()?;
    /// assert_eq!(SUM.load(Ordering::SeqCst), 55);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn apply_async_with_callback<F, A, R, C>(
        &self,
        f: F,
        arg: A,
        callback: C,
    ) -> Result<AsyncResult<R>, SubmitError<A>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        C: FnOnce(Result<R>) + Send + 'static,
    {
        let _ = f;
        assert_task_fn::<F>();
        let cell = ResultCell::new(Some(self.helper()));
        let out = Arc::downgrade(&cell);
        let callbacks = &self.inner.callbacks;
        self.submit_one::<F, A, R>(arg, None, move |spare| {
            // Counted now, so `join` cannot miss a callback that is about to be queued; a
            // refused submission drops the completion and the promise with it.
            let promise = Promise::new(callbacks);
            Box::new(move |r| {
                // Decoded twice: one value for the callback, one for `get`.
                let for_callback = match &r {
                    TaskResult::Ok { .. } => {
                        decode_result_into::<R>(clone_ok(&r), spare.as_deref())
                    }
                    TaskResult::Err(e) => Err(e.clone()),
                };
                let publish = Publish::new(out, decode_result::<R>(r));
                promise.run(Box::new(move || {
                    // Published when this returns (or unwinds): `get` sees the callback done.
                    let _publish = publish;
                    callback(for_callback);
                }));
            })
        })?;
        Ok(AsyncResult::from_cell(cell))
    }

    /// Applies `f` to every item, in parallel, and returns the results in order (Python's
    /// `map`). Without a chunksize, chunks start at one item and grow with the measured cost per
    /// item until each takes about 200 µs of worker time (or holds about 128 KiB), and shrink
    /// again for the last items so every worker finishes together (Python instead guesses
    /// `len / (4 × processes)`); see [the rule](crate#automatic-chunksize).
    ///
    /// # Errors
    ///
    /// The first failed item's error ([`Error::TaskPanicked`], ...), or a submission error.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// assert_eq!(pool.map(|x: u64| x * x, 1..=4)?, [1, 4, 9, 16]);
    /// let words = vec!["a".to_string(), "bcd".to_string()];
    /// assert_eq!(pool.map(|w: String| w.len(), words)?, [1, 3]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        self.map_async(f, items)?.get()
    }

    /// [`map`](Pool::map) with an explicit chunksize (items per task).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for chunksize 0; otherwise as `map`.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let squares = pool.map_chunked(|x: u32| x * x, 0..100, 10)?; // 10 tasks of 10 items
    /// assert_eq!(squares[99], 9801);
    /// assert!(pool.map_chunked(|x: u32| x, 0..10, 0).is_err());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn map_chunked<F, A, R, I>(&self, f: F, items: I, chunksize: usize) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        self.map_async_chunked(f, items, chunksize)?.get()
    }

    /// [`map`](Pool::map) without waiting: one [`AsyncResult`] for the whole list.
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Pool::apply_async).
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let r = pool.map_async(|x: u64| x + 1, 0..5)?;
    /// // ... other work here ...
    /// assert_eq!(r.get()?, [1, 2, 3, 4, 5]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn map_async<F, A, R, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        assert_task_fn::<F>();
        map::start(
            self,
            call_chunk::<F, A, R> as CallFn as usize,
            items.into_iter().collect(),
            self.cell(),
        )
    }

    /// Like [`map_async`](Pool::map_async), and `callback` runs in the parent with the outcome
    /// when the whole map ends (Python's `callback` and `error_callback` in one): the results in
    /// order, or the first failure. It runs as [`apply_async_with_callback`]'s do, and
    /// [`get`](AsyncResult::get) returns only after it has returned.
    ///
    /// [`apply_async_with_callback`]: Pool::apply_async_with_callback
    ///
    /// # Errors
    ///
    /// As `map_async` (then the callback never runs).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// static SUM: AtomicU64 = AtomicU64::new(0);
    /// let pool = shmpool::Pool::new(2)?;
    /// let r = pool.map_async_with_callback(|x: u64| x * x, 0..4, |r| {
    ///     SUM.store(r.unwrap().iter().sum(), Ordering::SeqCst);
    /// })?;
    /// assert_eq!(r.get()?, [0, 1, 4, 9]);
    /// // The callback has returned before `get` did.
    /// assert_eq!(SUM.load(Ordering::SeqCst), 14);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn map_async_with_callback<F, A, R, I, C>(
        &self,
        f: F,
        items: I,
        callback: C,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
        C: FnOnce(Result<&[R], &Error>) + Send + 'static,
    {
        let _ = f;
        assert_task_fn::<F>();
        map::start(
            self,
            call_chunk::<F, A, R> as CallFn as usize,
            items.into_iter().collect(),
            self.callback_cell(move |r: &Result<Vec<R>>| callback(r.as_deref())),
        )
    }

    /// A result cell for this pool.
    fn cell<R>(&self) -> Arc<ResultCell<R>> {
        ResultCell::new(Some(self.helper()))
    }

    /// A result cell whose outcome goes through `callback` (on the callback thread) before any
    /// waiter sees it.
    fn callback_cell<R: Send + 'static>(
        &self,
        callback: impl FnOnce(&Result<R>) + Send + 'static,
    ) -> Arc<ResultCell<R>> {
        ResultCell::with_hook(Some(self.helper()), |cell| {
            callback_hook(&self.inner.callbacks, cell, callback)
        })
    }

    /// [`map_async`](Pool::map_async) with an explicit chunksize.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for chunksize 0; otherwise as `map_async`.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let r = pool.map_async_chunked(|x: u64| x + 1, 0..50, 25)?; // two tasks
    /// assert_eq!(r.get()?.len(), 50);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn map_async_chunked<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        assert_task_fn::<F>();
        let items: Vec<A> = items.into_iter().collect();
        self.submit_chunks(call_chunk::<F, A, R> as CallFn as usize, &items, chunksize)
    }

    /// Like [`map`](Pool::map) for a function of one to six arguments, each item a tuple of
    /// them (Python's `starmap`; see [`StarFn`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let sums = pool.starmap(|a: u64, b: u64| a + b, vec![(1, 2), (3, 4)])?;
    /// assert_eq!(sums, [3, 7]);
    /// let prods = pool.starmap(|a: u64, b: u64, c: u64| a * b * c, vec![(1, 2, 3)])?;
    /// assert_eq!(prods, [6]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As `map`.
    pub fn starmap<F, Args, R, I>(&self, f: F, items: I) -> Result<Vec<R>>
    where
        F: StarFn<Args, Output = R> + Send + 'static,
        Args: Payload,
        R: Payload,
        I: IntoIterator<Item = Args>,
    {
        self.starmap_async(f, items)?.get()
    }

    /// [`starmap`](Pool::starmap) without waiting.
    ///
    /// # Errors
    ///
    /// As `map_async`.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let r = pool.starmap_async(|a: u64, b: u64| a.pow(b as u32), vec![(2, 3), (3, 2)])?;
    /// assert_eq!(r.get()?, [8, 9]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn starmap_async<F, Args, R, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<Args, Output = R> + Send + 'static,
        Args: Payload,
        R: Payload,
        I: IntoIterator<Item = Args>,
    {
        let _ = f;
        assert_task_fn::<F>();
        map::start(
            self,
            call_star_chunk::<F, Args, R> as CallFn as usize,
            items.into_iter().collect(),
            self.cell(),
        )
    }

    /// [`starmap_async`](Pool::starmap_async) with a callback, as
    /// [`map_async_with_callback`](Pool::map_async_with_callback).
    ///
    /// # Errors
    ///
    /// As `map_async` (then the callback never runs).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let r = pool.starmap_async_with_callback(|a: u32, b: u32| a * b, vec![(2, 3), (4, 5)], move |r| {
    ///     tx.send(r.map(<[u32]>::to_vec).ok()).unwrap();
    /// })?;
    /// assert_eq!(r.get()?, [6, 20]);
    /// assert_eq!(rx.recv().unwrap(), Some(vec![6, 20]));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn starmap_async_with_callback<F, Args, R, I, C>(
        &self,
        f: F,
        items: I,
        callback: C,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<Args, Output = R> + Send + 'static,
        Args: Payload,
        R: Payload,
        I: IntoIterator<Item = Args>,
        C: FnOnce(Result<&[R], &Error>) + Send + 'static,
    {
        let _ = f;
        assert_task_fn::<F>();
        map::start(
            self,
            call_star_chunk::<F, Args, R> as CallFn as usize,
            items.into_iter().collect(),
            self.callback_cell(move |r: &Result<Vec<R>>| callback(r.as_deref())),
        )
    }

    /// [`starmap`](Pool::starmap) with an explicit chunksize (items per task).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for chunksize 0; otherwise as `map`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let pairs: Vec<(u64, u64)> = (0..10).map(|i| (i, i + 1)).collect();
    /// let sums = pool.starmap_chunked(|a: u64, b: u64| a + b, pairs, 3)?;
    /// assert_eq!(sums[9], 19);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn starmap_chunked<F, Args, R, I>(&self, f: F, items: I, chunksize: usize) -> Result<Vec<R>>
    where
        F: StarFn<Args, Output = R> + Send + 'static,
        Args: Payload,
        R: Payload,
        I: IntoIterator<Item = Args>,
    {
        self.starmap_async_chunked(f, items, chunksize)?.get()
    }

    /// [`starmap_async`](Pool::starmap_async) with an explicit chunksize.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for chunksize 0; otherwise as `map_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let r = pool.starmap_async_chunked(|a: u8, b: u8| a.max(b), vec![(1, 2), (4, 3)], 1)?;
    /// assert_eq!(r.get()?, [2, 4]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn starmap_async_chunked<F, Args, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<Args, Output = R> + Send + 'static,
        Args: Payload,
        R: Payload,
        I: IntoIterator<Item = Args>,
    {
        let _ = f;
        assert_task_fn::<F>();
        let items: Vec<Args> = items.into_iter().collect();
        self.submit_chunks(
            call_star_chunk::<F, Args, R> as CallFn as usize,
            &items,
            chunksize,
        )
    }

    fn submit_chunks<A: Serialize + 'static, R: Payload>(
        &self,
        call: usize,
        items: &[A],
        chunksize: usize,
    ) -> Result<AsyncResult<Vec<R>>> {
        if chunksize == 0 {
            return Err(Error::invalid("chunksize must be at least 1"));
        }
        let cell = ResultCell::new(Some(self.helper()));
        if items.is_empty() {
            cell.set(Ok(Vec::new()));
            if let Some(e) = self.lock().refuse() {
                return Err(e);
            }
            return Ok(AsyncResult::from_cell(cell));
        }
        let n_chunks = items.len().div_ceil(chunksize);
        let agg = Arc::new(Mutex::new(MapAgg::<R> {
            parts: (0..n_chunks).map(|_| None).collect(),
            left: n_chunks,
            failed: false,
        }));
        let mut tasks = Vec::with_capacity(n_chunks);
        for (i, chunk) in items.chunks(chunksize).enumerate() {
            let agg = Arc::clone(&agg);
            let cell = Arc::clone(&cell);
            let done: Completion = Box::new(move |r| {
                let part = decode_chunk_values::<R>(r);
                let mut a = agg.lock().unwrap_or_else(|e| e.into_inner());
                if a.failed {
                    return;
                }
                match part {
                    Err(e) => {
                        a.failed = true;
                        cell.set(Err(e));
                    }
                    Ok(v) => {
                        a.parts[i] = Some(v);
                        a.left -= 1;
                        if a.left == 0 {
                            let total = a.parts.iter().flatten().map(Vec::len).sum();
                            let mut all = Vec::with_capacity(total);
                            for part in a.parts.drain(..).flatten() {
                                all.extend(part);
                            }
                            cell.set(Ok(all));
                        }
                    }
                }
            });
            // The user's `Serialize` may panic: this call fails, as `map`'s does.
            let payload = crate::unwind::catch("encoding the items", || {
                encode_items(chunk, self.arena_cap(), &self.inner.spare_args)
            })?;
            tasks.push(PendingTask::new(payload, call, done));
        }
        self.submit(tasks)?;
        Ok(AsyncResult::from_cell(cell))
    }

    /// A lazy, ordered iterator of `f(item)` results (Python's `imap`).
    ///
    /// Input is pulled only as results are consumed, with a bounded number of chunks in flight,
    /// so it runs in constant memory over any input, even an endless one. Without
    /// [`IMap::chunksize`] the chunksize adapts to the measured cost per item.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let first: Vec<u64> = pool
    ///     .imap(|x: u64| x * 2, 0u64..)
    ///     .take(5)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(first, [0, 2, 4, 6, 8]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> IMap<'_, I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        assert_task_fn::<F>();
        IMap::new(
            self,
            items.into_iter(),
            call_chunk::<F, A, R> as CallFn as usize,
            true,
        )
    }

    /// Like [`imap`](Pool::imap), yielding results in the order they finish.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let mut got: Vec<u64> = pool
    ///     .imap_unordered(|x: u64| x * 10, 0..5)
    ///     .collect::<Result<_, _>>()?;
    /// got.sort_unstable(); // in the order they finished
    /// assert_eq!(got, [0, 10, 20, 30, 40]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> IMap<'_, I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        assert_task_fn::<F>();
        IMap::new(
            self,
            items.into_iter(),
            call_chunk::<F, A, R> as CallFn as usize,
            false,
        )
    }

    /// Stops accepting work; queued work still runs (Python's `close`).
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let r = pool.apply_async(|x: u64| x * 2, 21)?;
    /// pool.close();
    /// assert!(matches!(pool.apply(|x: u64| x, 1), Err(shmpool::Error::PoolClosed)));
    /// assert_eq!(r.get()?, 42); // work queued before `close` still runs
    /// pool.join()?;
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn close(&self) {
        let mut g = self.lock();
        if matches!(g.phase, Phase::Open) {
            g.phase = Phase::Closed;
        }
    }

    /// Waits for all queued work and callbacks, then stops the workers and reaps every process.
    ///
    /// A callback may close and join its own pool: `join` then waits for every callback but the
    /// one calling it, and runs the callbacks still queued behind it on the spot.
    ///
    /// # Errors
    ///
    /// [`Error::PoolRunning`] if the pool was neither closed nor terminated (as Python raises).
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let results: Vec<_> = (0..4u64)
    ///     .map(|i| pool.apply_async(|x: u64| x * x, i))
    ///     .collect::<Result<_, _>>()?;
    /// assert!(matches!(pool.join(), Err(shmpool::Error::PoolRunning))); // close first
    /// pool.close();
    /// pool.join()?; // every task has finished, every worker is reaped
    /// assert!(results.iter().all(|r| r.ready()));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn join(&self) -> Result<()> {
        {
            let mut g = self.lock();
            if matches!(g.phase, Phase::Open) {
                return Err(Error::PoolRunning);
            }
            while g.outstanding > 0 {
                g = self.inner.idle.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.inner.callbacks.wait_idle();
        {
            let mut g = self.lock();
            g.phase = Phase::Stopped;
        }
        let ctl = &self.inner.ctl;
        // Release, SYNC: server-request (workers read it with Acquire too).
        let _ = ctl.header().shutdown.compare_exchange(
            crate::shm::control::RUNNING,
            GRACEFUL,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        self.stop_threads();
        Ok(())
    }

    /// Stops now: kills the workers, fails every unfinished task with
    /// [`Error::PoolTerminated`], and reaps every process (Python's `terminate`).
    ///
    /// Unfinished tasks fail only after every worker has been killed and reaped, so no worker can
    /// still be writing into memory (a `map_chunks_into` output) that the caller gets back.
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::new(1)?;
    /// let slow = pool.apply_async(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 60_000)?;
    /// pool.terminate(); // kills the worker at once
    /// assert!(matches!(slow.get(), Err(shmpool::Error::PoolTerminated)));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn terminate(&self) {
        self.lock().phase = Phase::Stopped;
        // Release, SYNC: server-request.
        self.inner
            .ctl
            .header()
            .shutdown
            .store(TERMINATE, Ordering::Release);
        // Returns once the server, and so every worker, is reaped; the collector fails what it
        // still held on its way out (`server_gone`).
        self.stop_collector();
        // Whatever is left (the collector was gone already) has no process to touch it either.
        let tasks = self.lock().drain_all();
        for done in tasks {
            done(TaskResult::Err(Error::PoolTerminated));
        }
        {
            let g = self.lock();
            self.inner.idle.notify_all();
            drop(g);
        }
        self.inner.callbacks.shutdown();
    }

    /// Joins the collector and the callback thread (see `stop_collector`).
    fn stop_threads(&self) {
        self.stop_collector();
        self.inner.callbacks.shutdown();
    }

    /// Wakes everyone who must notice a shutdown and joins the collector, which returns once the
    /// server has been reaped (and so every worker).
    ///
    /// The handle's mutex stays locked across the join: a second thread stopping the pool at the
    /// same time (two `terminate`s, or `terminate` racing `drop`) waits here until the collector
    /// is really gone; finding the handle taken and returning at once would fail the tasks while
    /// workers still wrote a `map_chunks_into` output that its caller then held.
    fn stop_collector(&self) {
        let ctl = &self.inner.ctl;
        ctl.header().server.notify();
        for s in 0..ctl.seats() {
            ctl.seat(s).wake.notify();
        }
        let mut handle = self
            .inner
            .collector
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // On the collector thread itself (a `Drop` of the user's run there dropped the last
        // handle) there is nothing to wait for: it stops once this returns.
        if let Some(h) = handle.take_if(|h| h.thread().id() != std::thread::current().id()) {
            let _ = h.join();
        }
    }
}

impl Inner {
    /// Accepts tasks (all or none) and feeds the workers. A `continuation` (more chunks of a `map`
    /// accepted before `close`) is still taken after `close`, until the pool stops.
    pub(crate) fn submit(&self, tasks: Vec<PendingTask>, continuation: bool) -> Result<()> {
        let (woken, refused) = {
            let mut g = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
            let refusal = match (&g.phase, continuation) {
                (Phase::Closed, true) => None,
                _ => g.refuse(),
            };
            if let Some(e) = refusal {
                return Err(e);
            }
            for task in tasks {
                g.enqueue(task);
            }
            let woken = g.pump(&self.ctl);
            (woken, g.take_refused())
        };
        dispatch::wake(&self.ctl, &woken);
        dispatch::fail_refused(self, refused);
        // A thread submitting a burst drains finished results on its way (if no one else is),
        // which frees ring slots for its next submissions without waking the collector thread.
        if let Ok(mut c) = self.collector_role.try_lock() {
            dispatch::poll_once(self, &mut c);
        }
        Ok(())
    }
}

impl Helper for Inner {
    fn enter(&self) {
        // SeqCst: the collector thread reads it to decide whether to sleep on the futex or on
        // `callers_left`; see `dispatch::run_collector`.
        self.active_callers.fetch_add(1, Ordering::SeqCst);
    }

    fn help(&self) {
        if let Ok(mut c) = self.collector_role.try_lock() {
            dispatch::poll_once(self, &mut c);
        }
    }

    fn leave(&self, parking: bool) {
        // SeqCst: as in `enter`.
        self.active_callers.fetch_sub(1, Ordering::SeqCst);
        if parking {
            // We stop collecting but still wait: the collector thread must take over now, not at
            // its next nap's end. A caller that got its result wakes no one (that is the point).
            let _g = self
                .callers_left
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.callers_left.1.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

struct MapAgg<R> {
    parts: Vec<Option<Vec<R>>>,
    left: usize,
    failed: bool,
}

/// Re-borrows an `Ok` result (for decoding it twice).
fn clone_ok<'a>(r: &TaskResult<'a>) -> TaskResult<'a> {
    match r {
        TaskResult::Ok {
            bytes,
            shared,
            worker,
            elapsed_ns,
        } => TaskResult::Ok {
            bytes,
            shared: *shared,
            worker: *worker,
            elapsed_ns: *elapsed_ns,
        },
        TaskResult::Err(e) => TaskResult::Err(e.clone()),
    }
}

/// Encodes a task's argument; a panic of its `Serialize` is an error like the ones it returns
/// (the caller gets its argument back in the `SubmitError`), as it is for `map` and `imap`.
fn encode_arg<A: serde::Serialize + 'static>(
    arg: &A,
    cap: usize,
    spares: &Arc<crate::encoding::bigpayload::SpareArgs>,
) -> Result<dispatch::EncodedArg> {
    crate::unwind::catch("encoding the argument", || encode(arg, cap, spares))
}

pub(crate) fn decode_result<R: DeserializeOwned + 'static>(r: TaskResult<'_>) -> Result<R> {
    decode_result_into(r, None)
}

/// Like [`decode_result`]; a byte vector is decoded into `spare`'s vector when it suits
/// (`bigpayload`, "Reuse of byte vectors").
fn decode_result_into<R: DeserializeOwned + 'static>(
    r: TaskResult<'_>,
    spare: Option<&CallSpare>,
) -> Result<R> {
    match r {
        // The user's `Deserialize` runs here, on a pool thread: a panic fails this result only.
        TaskResult::Ok {
            bytes,
            shared: Some(shared),
            ..
        } => crate::unwind::catch("decoding the result", || {
            // In the worker's reused result segment: copied out, never read in place.
            match CallSpare::read_shared::<R>(spare, &shared) {
                Some(r) => r.map_err(Error::codec),
                None => {
                    debug_assert!(bytes.is_empty());
                    postcard::from_bytes(&shared.copy_all()).map_err(Error::codec)
                }
            }
        }),
        TaskResult::Ok { bytes, .. } => crate::unwind::catch("decoding the result", || {
            let fast = match spare {
                Some(spare) => spare.read::<R>(bytes),
                None => crate::encoding::payload::read_byte_payload::<R>(bytes),
            };
            match fast {
                Some(r) => r.map_err(Error::codec),
                None => postcard::from_bytes(bytes).map_err(Error::codec),
            }
        }),
        TaskResult::Err(e) => Err(e),
    }
}

/// Decodes a chunk's [`ChunkOut`]: `Ok(values)` if every item returned, otherwise the first
/// panicked item's error.
pub(crate) fn decode_chunk_values<R: DeserializeOwned + 'static>(
    r: TaskResult<'_>,
) -> Result<Vec<R>> {
    match r {
        TaskResult::Ok { bytes, worker, .. } => {
            let (values, mut failures): ChunkOut<R> =
                crate::unwind::catch("decoding the results", || {
                    decode_chunk_out(bytes).map_err(Error::codec)
                })?;
            if failures.is_empty() {
                Ok(values)
            } else {
                Err(crate::encoding::task::panicked(
                    worker,
                    &failures.swap_remove(0).1,
                ))
            }
        }
        TaskResult::Err(e) => Err(e),
    }
}

/// Decodes a chunk's [`ChunkOut`], with the worker that ran it.
pub(crate) fn decode_chunk_parts<R: DeserializeOwned + 'static>(
    r: TaskResult<'_>,
) -> Result<(ChunkOut<R>, usize)> {
    match r {
        TaskResult::Ok { bytes, worker, .. } => {
            let out: ChunkOut<R> = crate::unwind::catch("decoding the results", || {
                decode_chunk_out(bytes).map_err(Error::codec)
            })?;
            Ok((out, worker))
        }
        TaskResult::Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_an_error_that_names_the_limit() {
        let e = out_of_fds(100_000, 506, Some((1024, 524_288)));
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("processes(100000)"), "{msg}");
        assert!(msg.contains("after 506 workers"), "{msg}");
        assert!(
            msg.contains("(1024; `ulimit -n`, which can go up to 524288)"),
            "{msg}"
        );
        let msg = out_of_fds(10, 3, Some((1024, libc::RLIM_INFINITY))).to_string();
        assert!(msg.contains("up to unlimited"), "{msg}");
        let msg = out_of_fds(10, 3, None).to_string();
        assert!(msg.contains("the open-file limit is too low"), "{msg}");
    }
}
