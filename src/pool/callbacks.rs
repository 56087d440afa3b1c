//! The thread that runs `apply_async_with_callback` callbacks, one at a time, off the collector.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::task::panic_message;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Callbacks promised (task submitted) and not yet run.
    expected: usize,
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
    pub(crate) fn push(self: &Arc<Self>, job: Job) {
        let mut st = self.lock();
        st.queue.push_back(job);
        if st.thread.is_none() {
            let me = Arc::clone(self);
            match std::thread::Builder::new()
                .name("shmpool-callbacks".into())
                .spawn(move || me.run())
            {
                Ok(h) => st.thread = Some(h),
                Err(e) => {
                    // No thread: run it here rather than lose it.
                    let job = st.queue.pop_back().expect("just pushed");
                    drop(st);
                    eprintln!("shmpool: cannot start the callback thread ({e}); running inline");
                    self.run_one(job);
                    return;
                }
            }
        }
        self.cond.notify_all();
    }

    fn run_one(&self, job: Job) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(job)) {
            eprintln!("shmpool: a callback panicked: {}", panic_message(&*p));
        }
        let mut st = self.lock();
        st.expected -= 1;
        self.cond.notify_all();
    }

    fn run(&self) {
        loop {
            let job = {
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
            self.run_one(job);
        }
    }

    /// Waits until every expected callback has run.
    pub(crate) fn wait_idle(&self) {
        let mut st = self.lock();
        while st.expected > 0 {
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
