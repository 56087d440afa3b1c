//! The thread that runs callbacks (`apply_async_with_callback`, `map_async_with_callback`, ...),
//! one at a time, off the collector.
//!
//! As in Python, a result's callback has returned before `get()` or `wait()` of that result
//! return: the completion does not publish the result, it queues a [`CallbackRun`] that calls the callback and
//! then publishes it ([`Publish`], on drop, so a panicking callback publishes too). The collector
//! thread runs no user code.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;

use crate::error::Result;
use crate::pool::result::{Hook, ResultCell};
use crate::unwind::panic_message;

/// One callback ready to run (the user's callback on its result, then the publish).
type CallbackRun = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    queue: VecDeque<CallbackRun>,
    /// Callbacks promised (task submitted) and not yet run.
    expected: usize,
    /// Callbacks running right now (more than one only when a callback's `join` runs the
    /// queued ones itself; see `wait_idle`).
    running: usize,
    thread: Option<JoinHandle<()>>,
    stop: bool,
}

/// A lazily started callback thread with a count `join` can wait on.
#[derive(Default)]
pub(crate) struct Callbacks {
    st: Mutex<State>,
    cond: Condvar,
}

impl Callbacks {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more callback will be pushed.
    pub(crate) fn expect(&self) {
        self.lock().expected += 1;
    }

    /// A callback promised by `expect` will not come after all.
    pub(crate) fn cancel_expected(&self) {
        let mut st = self.lock();
        st.expected -= 1;
        self.cond.notify_all();
    }

    /// Queues a callback, starting the thread on first use.
    pub(crate) fn push(self: &Arc<Self>, run: CallbackRun) {
        let mut st = self.lock();
        st.queue.push_back(run);
        if st.thread.is_none() {
            let me = Arc::clone(self);
            match std::thread::Builder::new()
                .name("shmpool-callbacks".into())
                .spawn(move || me.run())
            {
                Ok(h) => st.thread = Some(h),
                Err(e) => {
                    // No thread: run it here rather than lose it.
                    let run = st.queue.pop_back().expect("just pushed");
                    drop(st);
                    eprintln!("shmpool: cannot start the callback thread ({e}); running inline");
                    self.run_one(run);
                    return;
                }
            }
        }
        self.cond.notify_all();
    }

    fn run_one(&self, run: CallbackRun) {
        self.lock().running += 1;
        if let Err(p) = catch_unwind(AssertUnwindSafe(run)) {
            eprintln!("shmpool: a callback panicked: {}", panic_message(&*p));
        }
        let mut st = self.lock();
        st.expected -= 1;
        st.running -= 1;
        self.cond.notify_all();
    }

    fn run(&self) {
        loop {
            let run = {
                let mut st = self.lock();
                loop {
                    if let Some(j) = st.queue.pop_front() {
                        break j;
                    }
                    if st.stop {
                        return;
                    }
                    st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            self.run_one(run);
        }
    }

    /// Waits until every expected callback has run.
    ///
    /// Called from a callback (a callback that joins its pool), it waits for every callback but
    /// the ones running on this thread, and runs the queued ones itself: nothing else can, and
    /// waiting for them, or for itself, would never end (Python raises "cannot join current
    /// thread" there).
    pub(crate) fn wait_idle(&self) {
        let me = std::thread::current().id();
        let mut st = self.lock();
        loop {
            let on_callback_thread = st.thread.as_ref().is_some_and(|h| h.thread().id() == me);
            let own = if on_callback_thread { st.running } else { 0 };
            if st.expected <= own {
                return;
            }
            if on_callback_thread && let Some(run) = st.queue.pop_front() {
                drop(st);
                self.run_one(run);
                st = self.lock();
                continue;
            }
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs what is queued, then stops and joins the thread.
    pub(crate) fn shutdown(&self) {
        let handle = {
            let mut st = self.lock();
            st.stop = true;
            self.cond.notify_all();
            st.thread.take()
        };
        // A callback that drops the last handle to its pool runs on this very thread.
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

/// One callback that `join` waits for: counted when made, uncounted if dropped without running
/// (a refused submission drops its completion, and the promise in it).
pub(crate) struct Promise {
    callbacks: Option<Arc<Callbacks>>,
}

impl Promise {
    pub(crate) fn new(callbacks: &Arc<Callbacks>) -> Self {
        callbacks.expect();
        Promise {
            callbacks: Some(Arc::clone(callbacks)),
        }
    }

    /// Queues the callback; running it settles the count.
    pub(crate) fn run(mut self, run: CallbackRun) {
        if let Some(c) = self.callbacks.take() {
            c.push(run);
        }
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        if let Some(c) = self.callbacks.take() {
            c.cancel_expected();
        }
    }
}

/// Publishes a result into its cell when dropped: after the callback holding it returned, or
/// while it unwinds.
pub(crate) struct Publish<R> {
    cell: Weak<ResultCell<R>>,
    value: Option<Result<R>>,
}

impl<R> Publish<R> {
    pub(crate) fn new(cell: Weak<ResultCell<R>>, value: Result<R>) -> Self {
        Publish {
            cell,
            value: Some(value),
        }
    }

    fn value(&self) -> &Result<R> {
        self.value.as_ref().expect("taken only on drop")
    }
}

impl<R> Drop for Publish<R> {
    fn drop(&mut self) {
        // Nobody holds the result any more if the cell is gone.
        if let (Some(cell), Some(v)) = (self.cell.upgrade(), self.value.take()) {
            cell.publish(v);
        }
    }
}

/// The hook of a result cell whose callback sees the outcome by reference: the callback runs on
/// the callback thread, then the outcome is published.
pub(crate) fn callback_hook<R: Send + 'static>(
    callbacks: &Arc<Callbacks>,
    cell: &Weak<ResultCell<R>>,
    callback: impl FnOnce(&Result<R>) + Send + 'static,
) -> Hook<R> {
    let promise = Promise::new(callbacks);
    let cell = cell.clone();
    Box::new(move |r| {
        let publish = Publish::new(cell, r);
        promise.run(Box::new(move || {
            let publish = publish;
            callback(publish.value());
        }));
    })
}
