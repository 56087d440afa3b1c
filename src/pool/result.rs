//! [`AsyncResult`]: a handle to a result that a worker will produce.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sync::{AtomicU32, Ordering};

/// How long a waiter spins on the ready flag before parking (keeps `apply` round trips short).
const SPIN: Duration = Duration::from_micros(50);

enum State<R> {
    Pending,
    Ready(Result<R>),
    /// The result was handed out; `true` if it was an `Ok` (what `successful` reports).
    Taken(bool),
}

/// Something a waiter can do while it spins, instead of waiting for another thread to do it:
/// the pool lets a thread blocked in `get` collect results itself, which saves a thread hop (and
/// a futex wake) per `apply`.
pub(crate) trait Helper: Send + Sync {
    /// A waiter starts helping.
    fn enter(&self);
    /// Does one round of work, if no one else is doing it right now.
    fn help(&self);
    /// The waiter stops helping: it found its result (`parking == false`), or it is going to
    /// sleep and someone else must collect for it (`parking == true`).
    fn leave(&self, parking: bool);
}

/// Spins for at most `SPIN` (or until `deadline`) until `done()`, collecting results through
/// `helper` meanwhile; returns whether `done()` became true. On `false` the caller is about to
/// sleep, and the helper has been told so (`leave(parking = true)`).
pub(crate) fn help_while_waiting(
    helper: Option<&dyn Helper>,
    deadline: Option<Instant>,
    mut done: impl FnMut() -> bool,
) -> bool {
    let start = Instant::now();
    let backoff = crossbeam_utils::Backoff::new();
    if let Some(h) = helper {
        h.enter();
    }
    let mut finished = false;
    while start.elapsed() < SPIN && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(h) = helper {
            h.help();
        }
        if done() {
            finished = true;
            break;
        }
        backoff.snooze();
    }
    if let Some(h) = helper {
        h.leave(!finished);
    }
    finished
}

/// What runs with a result before it is published (a callback); it publishes it when done.
pub(crate) type Hook<R> = Box<dyn FnOnce(Result<R>) + Send>;

/// Whether a cell's outcome goes through a hook first.
enum Before<R> {
    /// No hook: `set` publishes at once.
    Nothing,
    /// `set` hands the outcome to this hook (once).
    Hook(Hook<R>),
    /// The hook has the outcome; later `set`s are ignored.
    Claimed,
}

/// The shared cell a completion fills and an [`AsyncResult`] reads.
pub(crate) struct ResultCell<R> {
    state: Mutex<State<R>>,
    cond: Condvar,
    /// 1 once `state` is `Ready`; lets waiters spin without the lock.
    ready: AtomicU32,
    helper: Option<Weak<dyn Helper>>,
    before: Mutex<Before<R>>,
}

impl<R> ResultCell<R> {
    pub(crate) fn new(helper: Option<Weak<dyn Helper>>) -> Arc<Self> {
        Arc::new(ResultCell {
            state: Mutex::new(State::Pending),
            cond: Condvar::new(),
            ready: AtomicU32::new(0),
            helper,
            before: Mutex::new(Before::Nothing),
        })
    }

    /// A cell whose outcome goes to `hook` first; the hook publishes it (see
    /// [`publish`](ResultCell::publish)) when it is done, so a callback has returned before any
    /// waiter sees the result.
    pub(crate) fn with_hook(
        helper: Option<Weak<dyn Helper>>,
        hook: impl FnOnce(&Weak<Self>) -> Hook<R>,
    ) -> Arc<Self> {
        let cell = Self::new(helper);
        let h = hook(&Arc::downgrade(&cell));
        *cell.before.lock().unwrap_or_else(|e| e.into_inner()) = Before::Hook(h);
        cell
    }

    /// Delivers the outcome (only the first one counts): to the hook if there is one, otherwise
    /// straight to the waiters.
    pub(crate) fn set(&self, r: Result<R>) {
        let hook = {
            let mut before = self.before.lock().unwrap_or_else(|e| e.into_inner());
            match std::mem::replace(&mut *before, Before::Claimed) {
                Before::Hook(h) => Some(h),
                Before::Claimed => return,
                Before::Nothing => {
                    *before = Before::Nothing;
                    None
                }
            }
        };
        match hook {
            Some(h) => h(r),
            None => self.publish(r),
        }
    }

    /// Stores the outcome (only the first one counts) and wakes every waiter.
    pub(crate) fn publish(&self, r: Result<R>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*st, State::Pending) {
            *st = State::Ready(r);
            // Release, SYNC: result-ready — pairs with the Acquire in `is_ready`; the value itself
            // is read under the mutex anyway.
            self.ready.store(1, Ordering::Release);
            self.cond.notify_all();
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        // Acquire, SYNC: result-ready.
        self.ready.load(Ordering::Acquire) != 0
    }

    fn wait_deadline(&self, deadline: Option<Instant>) -> bool {
        if self.is_ready() {
            return true;
        }
        let helper = self.helper.as_ref().and_then(Weak::upgrade);
        help_while_waiting(helper.as_deref(), deadline, || self.is_ready());
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !matches!(*st, State::Pending) {
                return true;
            }
            match deadline {
                None => st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    st = self
                        .cond
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    fn take(&self) -> Result<R> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *st, State::Taken(false)) {
            State::Ready(r) => {
                *st = State::Taken(r.is_ok());
                r
            }
            State::Taken(ok) => {
                *st = State::Taken(ok);
                Err(Error::ResultTaken)
            }
            State::Pending => {
                *st = State::Pending;
                Err(Error::Timeout)
            }
        }
    }

    fn successful(&self) -> Option<bool> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &*st {
            State::Pending => None,
            State::Ready(r) => Some(r.is_ok()),
            State::Taken(ok) => Some(*ok),
        }
    }
}

/// A result that a pool worker is computing (Python's `AsyncResult`).
///
/// It never blocks forever: if the pool is terminated or dropped first, it resolves to
/// [`Error::PoolTerminated`]; if the worker dies, to [`Error::WorkerDied`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let pool = shmpool::Pool::new(2)?;
/// let r = pool.apply_async(|x: u64| x * 2, 21)?;
/// assert!(r.wait_timeout(Duration::from_secs(10)));
/// assert_eq!(r.successful(), Some(true));
/// assert_eq!(r.get()?, 42);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct AsyncResult<R> {
    cell: Arc<ResultCell<R>>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn from_cell(cell: Arc<ResultCell<R>>) -> Self {
        AsyncResult { cell }
    }

    /// Waits for the result and returns it.
    ///
    /// # Errors
    ///
    /// The task's failure: [`Error::TaskPanicked`], [`Error::WorkerDied`],
    /// [`Error::PoolTerminated`], [`Error::Codec`], ...
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u64| x * 3, 5)?;
    /// assert_eq!(r.get()?, 15);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn get(self) -> Result<R> {
        self.cell.wait_deadline(None);
        self.cell.take()
    }

    /// Waits at most `timeout` for the result.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if it is not ready in time (the handle stays usable: wait again);
    /// [`Error::ResultTaken`] if an earlier call already returned the result; otherwise as `get`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::new(1)?;
    /// let mut r = pool.apply_async(|ms: u64| { std::thread::sleep(Duration::from_millis(ms)); ms }, 1000)?;
    /// assert!(matches!(r.get_timeout(Duration::from_millis(1)), Err(shmpool::Error::Timeout)));
    /// assert_eq!(r.get_timeout(Duration::from_secs(30))?, 1000);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R> {
        if !self.cell.wait_deadline(Some(Instant::now() + timeout)) {
            return Err(Error::Timeout);
        }
        self.cell.take()
    }

    /// Blocks until the result is ready.
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u64| x * 3, 5)?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn wait(&self) {
        self.cell.wait_deadline(None);
    }

    /// Blocks until the result is ready or `timeout` passes; returns whether it is ready.
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u64| x * 3, 5)?;
    /// assert!(r.wait_timeout(Duration::from_secs(30)));
    /// assert_eq!(r.get()?, 15);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.cell.wait_deadline(Some(Instant::now() + timeout))
    }

    /// Whether the result is ready (never blocks).
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let r = pool.apply_async(|x: u64| x * 3, 5)?;
    /// while !r.ready() {
    ///     std::thread::yield_now(); // do something useful meanwhile
    /// }
    /// assert_eq!(r.get()?, 15);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn ready(&self) -> bool {
        self.cell.is_ready()
    }

    /// `None` while running; then whether the task succeeded (Python raises instead of `None`).
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(1)?;
    /// let bad = pool.apply_async(|_: ()| -> u8 { panic!("no") }, ())?;
    /// bad.wait();
    /// assert_eq!(bad.successful(), Some(false));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn successful(&self) -> Option<bool> {
        self.cell.successful()
    }
}
