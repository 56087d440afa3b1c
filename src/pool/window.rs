//! The bounded window of a lazy iterator (`imap`, `imap_chunks`, `imap_reader`): chunks submitted
//! and not yet yielded, their completions' channel, and the reorder buffer of an ordered one.
//!
//! A waiting iterator collects results itself while it spins (see `result::Helper`), so a chunk
//! that finishes while the consumer waits needs no wake-up of the collector thread.

use std::collections::BTreeMap;
use std::sync::mpsc;

use crate::pool::result::help_while_waiting;

use super::Pool;

/// Chunks in flight for a lazy iterator, each arriving as one `T`.
pub(crate) struct Window<T> {
    tx: mpsc::Sender<(u64, T)>,
    rx: mpsc::Receiver<(u64, T)>,
    ordered: bool,
    /// Submitted and not yet received.
    live: usize,
    /// Submission index of the next chunk.
    next_index: u64,
    /// Submission index of the next chunk to yield (ordered only).
    yield_index: u64,
    /// Received ahead of `yield_index` (ordered only).
    reorder: BTreeMap<u64, T>,
}

impl<T> Window<T> {
    pub(crate) fn new(ordered: bool) -> Window<T> {
        let (tx, rx) = mpsc::channel();
        Window {
            tx,
            rx,
            ordered,
            live: 0,
            next_index: 0,
            yield_index: 0,
            reorder: BTreeMap::new(),
        }
    }

    /// Chunks submitted and not yet yielded: what the window bounds.
    pub(crate) fn held(&self) -> usize {
        self.live + self.reorder.len()
    }

    /// Chunks submitted and not yet received.
    pub(crate) fn in_flight(&self) -> usize {
        self.live
    }

    /// The chunk made by the last [`sender`](Window::sender) was accepted by the pool.
    pub(crate) fn submitted(&mut self) {
        self.next_index += 1;
        self.live += 1;
    }

    /// The next chunk to yield (submission order if ordered, arrival order otherwise), waiting
    /// for it; `None` when nothing is held.
    pub(crate) fn next(&mut self, pool: &Pool) -> Option<T> {
        loop {
            if self.ordered
                && let Some(t) = self.reorder.remove(&self.yield_index)
            {
                self.yield_index += 1;
                return Some(t);
            }
            if self.live == 0 {
                debug_assert!(self.reorder.is_empty(), "a gap in the reorder buffer");
                return None;
            }
            let (index, t) = self.receive(pool);
            if !self.ordered {
                return Some(t);
            }
            self.reorder.insert(index, t);
        }
    }

    /// Waits until no chunk is in flight (so no worker still reads or writes what they refer to).
    pub(crate) fn settle(&mut self, pool: &Pool) {
        while self.live > 0 {
            self.receive(pool);
        }
    }

    /// Receives one arrival: spinning while collecting results itself, then sleeping.
    fn receive(&mut self, pool: &Pool) -> (u64, T) {
        debug_assert!(self.live > 0);
        let helper = pool.helper().upgrade();
        let mut got = None;
        help_while_waiting(helper.as_deref(), None, || {
            got = self.rx.try_recv().ok();
            got.is_some()
        });
        // This returns because every accepted task's completion runs exactly once and sends (a
        // dead worker or a terminated pool fails it; a panicking decode is caught, see
        // `unwind`). `recv` itself cannot fail: `self.tx` keeps the channel connected, which
        // also means a completion dropped without running would leave us waiting here.
        let arrived = got.unwrap_or_else(|| self.rx.recv().expect("the window holds a sender"));
        self.live -= 1;
        arrived
    }
}

impl<T: Send + 'static> Window<T> {
    /// Where the next chunk's completion delivers its outcome. Call
    /// [`submitted`](Window::submitted) once that chunk's task is accepted.
    pub(crate) fn sender(&self) -> impl FnOnce(T) + Send + 'static {
        let tx = self.tx.clone();
        let index = self.next_index;
        // A send after the window is gone is dropped: nobody waits for it any more (the bulk
        // iterators settle their window before dropping it; `imap` just abandons it).
        move |t| {
            let _ = tx.send((index, t));
        }
    }
}
