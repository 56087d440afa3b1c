//! The crate's one error type.

use std::fmt;
use std::sync::Arc;

/// Result alias used across the crate.
/// # Examples
///
/// ```
/// fn total(pool: &shmpool::Pool) -> shmpool::Result<u64> {
///     Ok(pool.map(|x: u64| x, 0..4)?.iter().sum())
/// }
/// assert_eq!(total(&shmpool::Pool::new(1)?)?, 6);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a pool, with the context needed to act on it.
///
/// `Display` is a short lower-case sentence; OS errors are exposed through `source()`.
/// # Examples
///
/// ```
/// use shmpool::{Error, Pool};
/// let pool = Pool::new(1)?;
/// match pool.apply(|x: u32| if x > 1 { panic!("too big: {x}") } else { x }, 2) {
///     Err(Error::TaskPanicked { worker, message, location, .. }) => {
///         assert_eq!((worker, message.as_str()), (0, "too big: 2"));
///         assert!(location.is_some()); // file:line:column of the panic
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// An argument was out of range (0 processes, chunksize 0, ...).
    InvalidArgument {
        /// What was wrong.
        what: String,
    },
    /// The pool was closed (or terminated) and takes no new work.
    PoolClosed,
    /// `join` was called on a pool that is still open.
    PoolRunning,
    /// The pool was terminated or dropped before this task finished.
    PoolTerminated,
    /// The task panicked in a worker; the worker survived. A panic of the argument's
    /// `Deserialize` or of the result's `Serialize` there counts as the task's (for a chunk of
    /// items, decoded and encoded as a whole, it fails every item of the chunk).
    ///
    /// `Display` shows the worker and the message; the location and the backtrace (Python's
    /// remote traceback) are fields, for a caller that wants them.
    #[non_exhaustive]
    TaskPanicked {
        /// Index of the worker that ran the task.
        worker: usize,
        /// The panic message.
        message: String,
        /// Where it panicked, as `file:line:column`.
        location: Option<String>,
        /// The worker's backtrace of the panic, when `RUST_BACKTRACE` (or
        /// `RUST_LIB_BACKTRACE`) asked for backtraces in the process that built the pool.
        backtrace: Option<String>,
    },
    /// The worker running the task died (killed by a signal, or exited).
    WorkerDied {
        /// Index of the worker seat (`0..processes`, kept by a replacement).
        worker: usize,
        /// Its process id.
        pid: u32,
        /// The signal that killed it, if any.
        signal: Option<i32>,
        /// Its exit code, if it exited (90: it hit its open-file limit, as a task that leaks
        /// files makes it, and could not receive a shared segment; its replacement can).
        exit_code: Option<i32>,
    },
    /// A worker's initializer panicked, so the pool cannot run tasks.
    InitializerFailed {
        /// Index of the worker whose initializer failed.
        worker: usize,
        /// The panic message.
        message: String,
    },
    /// A wait ran out of time (for a result, a queue item, or room in a queue); what was waited
    /// for can still be waited for again.
    Timeout,
    /// The result of this `AsyncResult` was already taken by an earlier `get`.
    ResultTaken,
    /// A payload does not fit in the shared space it must cross: an `imap` item larger than the
    /// arena, or a [`Queue`](crate::Queue) item larger than its slots. (Arguments and results of
    /// `apply`, `map` and friends larger than the arena travel in a segment of their own.)
    PayloadTooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// Arena capacity in bytes.
        capacity: usize,
    },
    /// A value could not be encoded or decoded.
    Codec {
        /// What failed.
        detail: String,
    },
    /// A worker wrote something that breaks the protocol; it was killed.
    WorkerCorrupted {
        /// Index of the worker seat (`0..processes`, kept by a replacement).
        worker: usize,
        /// What was wrong.
        detail: String,
    },
    /// The pool can no longer run work (its fork server died).
    PoolBroken {
        /// What happened.
        detail: String,
    },
    /// The task ran longer than its time limit ([`PoolBuilder::task_timeout`] or a per-call
    /// limit such as [`Pool::apply_async_timeout`]); its worker was killed and replaced. For a
    /// chunk of items, every item of the chunk gets this error.
    ///
    /// [`PoolBuilder::task_timeout`]: crate::PoolBuilder::task_timeout
    /// [`Pool::apply_async_timeout`]: crate::Pool::apply_async_timeout
    TaskTimedOut {
        /// Index of the worker seat (`0..processes`, kept by a replacement) that ran the task.
        worker: usize,
        /// Pid of the worker that was killed.
        pid: u32,
        /// The limit the task exceeded.
        limit: std::time::Duration,
    },
    /// A [`Queue`](crate::Queue) is stuck behind a slot that a process claimed and never
    /// finished: the producer of the item at `position` (or the consumer of the item before it
    /// in that slot) was most likely killed in the middle of its `put` or `get`. The queue's
    /// design cannot reclaim such a slot (see the `Queue` docs); a blocking `put` or `get`
    /// returns this instead of waiting forever.
    QueueStalled {
        /// The queue position that never completed.
        position: u64,
        /// How long it had been stuck when the call gave up.
        waited: std::time::Duration,
    },
    /// Something failed on another rank of a cluster pool, or between ranks (feature `mpi`,
    /// `shmpool::cluster::Cluster`): a rank runs a different executable, or a task
    /// failed there in a way that has no variant of its own here.
    Cluster {
        /// The MPI rank concerned.
        rank: usize,
        /// What happened.
        detail: String,
    },
    /// A system call failed.
    Os {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        source: Arc<std::io::Error>,
    },
}

impl Error {
    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument { what: what.into() }
    }

    pub(crate) fn os(op: &'static str, source: impl Into<std::io::Error>) -> Self {
        Error::Os {
            op,
            source: Arc::new(source.into()),
        }
    }

    pub(crate) fn codec(detail: impl fmt::Display) -> Self {
        Error::Codec {
            detail: detail.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
            Error::PoolClosed => f.write_str("the pool is closed"),
            Error::PoolRunning => {
                f.write_str("the pool is still running; call close() or terminate() first")
            }
            Error::PoolTerminated => {
                f.write_str("the pool was terminated before the task finished")
            }
            Error::TaskPanicked {
                worker, message, ..
            } => {
                write!(f, "task panicked in worker {worker}: {message}")
            }
            Error::WorkerDied {
                worker,
                pid,
                signal,
                exit_code,
            } => match (signal, exit_code) {
                (Some(sig), _) => write!(
                    f,
                    "worker {worker} (pid {pid}) was killed by signal {sig} ({})",
                    signal_name(*sig)
                ),
                (None, Some(code)) => {
                    write!(f, "worker {worker} (pid {pid}) exited with code {code}")
                }
                (None, None) => write!(f, "worker {worker} (pid {pid}) died"),
            },
            Error::InitializerFailed { worker, message } => {
                write!(f, "initializer panicked in worker {worker}: {message}")
            }
            Error::Timeout => f.write_str("the wait timed out"),
            Error::ResultTaken => f.write_str("the result was already taken"),
            Error::PayloadTooLarge { size, capacity } => write!(
                f,
                "payload of {size} bytes does not fit the shared arena of {capacity} bytes"
            ),
            Error::Codec { detail } => write!(f, "payload codec error: {detail}"),
            Error::WorkerCorrupted { worker, detail } => {
                write!(f, "worker {worker} broke the protocol: {detail}")
            }
            Error::PoolBroken { detail } => write!(f, "the pool is broken: {detail}"),
            Error::TaskTimedOut { worker, pid, limit } => write!(
                f,
                "task ran past its time limit of {limit:?} in worker {worker} (pid {pid}), which was killed"
            ),
            Error::QueueStalled { position, waited } => write!(
                f,
                "the queue is stuck at position {position}: a process claimed that slot and did \
                 not finish within {waited:?} (killed in the middle of a put or get?)"
            ),
            Error::Cluster { rank, detail } => write!(f, "on rank {rank}: {detail}"),
            // The OS error is the `source()`, not part of this message: chains printed with
            // `{:#}` (anyhow, eyre) would show it twice.
            Error::Os { op, .. } => write!(f, "{op} failed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// A submission that failed, with the value that was not submitted: the argument of
/// [`Pool::apply_async`], the item of [`Queue::put_timeout`] (as [`std::sync::mpsc::SendError`]
/// hands back its message).
///
/// It converts into [`Error`] with `?`, dropping the value.
///
/// [`Pool::apply_async`]: crate::Pool::apply_async
/// [`Queue::put_timeout`]: crate::Queue::put_timeout
///
/// # Examples
///
/// ```
/// use shmpool::{Error, Pool};
///
/// let pool = Pool::new(1)?;
/// pool.close();
/// let refused = pool.apply_async(|s: String| s.len(), "keep me".to_string()).unwrap_err();
/// assert!(matches!(refused.error, Error::PoolClosed));
/// assert_eq!(refused.value, "keep me");
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Clone)]
pub struct SubmitError<T> {
    /// Why it was not submitted.
    pub error: Error,
    /// What was not submitted.
    pub value: T,
}

impl<T> SubmitError<T> {
    pub(crate) fn new(error: Error, value: T) -> Self {
        SubmitError { error, value }
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `T` need not be `Debug` (as for `SendError`).
        f.debug_struct("SubmitError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<T> std::error::Error for SubmitError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl<T> From<SubmitError<T>> for Error {
    fn from(e: SubmitError<T>) -> Error {
        e.error
    }
}

/// The conventional name of a signal number, e.g. `SIGKILL`.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
}
