//! `map` without a chunksize: a driver that submits chunks as earlier ones finish, so each chunk's
//! size can follow the measured cost per item (the rule is in `auto`).
//!
//! The driver keeps 2 to 4 chunks per worker in flight (see [`chunks_per_worker`]). Each chunk's
//! completion stores its values, teaches the [`AutoChunk`] the chunk's cost, and submits the next
//! chunks (`feed`). Until every item has been submitted the driver holds one *token* in the
//! dispatcher's `outstanding` count, so `join` cannot see the pool idle between a chunk's end and
//! its successor's submission; and its follow-up chunks are accepted after `close` (the `map`
//! itself was accepted before).

use std::sync::{Arc, Mutex, Weak};

use crate::encoding::payload::Payload;
use crate::error::{Error, Result};
use crate::pool::result::{AsyncResult, ResultCell};

use super::auto::AutoChunk;
use super::dispatch::{self, Completion, PendingTask, TaskResult, encode_items};
use super::{Inner, Pool, decode_chunk_values};

struct Driver<A, R> {
    items: Vec<A>,
    /// Items before this index have been submitted.
    next: usize,
    in_flight: usize,
    auto: AutoChunk,
    /// Finished chunks as `(first item index, values)`.
    parts: Vec<(usize, Vec<R>)>,
    /// Items whose values are in `parts`.
    done: usize,
    failed: bool,
    /// Holds a token in `Dispatch::outstanding`.
    token: bool,
    call: usize,
    cell: Arc<ResultCell<Vec<R>>>,
}

type Shared<A, R> = Arc<Mutex<Driver<A, R>>>;

fn lock<A, R>(d: &Shared<A, R>) -> std::sync::MutexGuard<'_, Driver<A, R>> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts an adaptive map of `call` over `items`, to deliver into `cell`.
pub(crate) fn start<A: Payload, R: Payload>(
    pool: &Pool,
    call: usize,
    items: Vec<A>,
    cell: Arc<ResultCell<Vec<R>>>,
) -> Result<AsyncResult<Vec<R>>> {
    {
        let mut g = pool.lock();
        if let Some(e) = g.refuse() {
            return Err(e);
        }
        if items.is_empty() {
            cell.set(Ok(Vec::new()));
            return Ok(AsyncResult::from_cell(cell));
        }
        g.outstanding += 1;
    }
    let driver = Arc::new(Mutex::new(Driver {
        items,
        next: 0,
        in_flight: 0,
        auto: AutoChunk::new(),
        parts: Vec::new(),
        done: 0,
        failed: false,
        token: true,
        call,
        cell: Arc::clone(&cell),
    }));
    feed(&pool.inner, &driver);
    Ok(AsyncResult::from_cell(cell))
}

/// Submits chunks until the window is full; gives the token back once everything is submitted
/// (or the map failed).
fn feed<A: Payload, R: Payload>(inner: &Arc<Inner>, driver: &Shared<A, R>) {
    let processes = inner.processes;
    let cap = inner.ctl.arena_cap();
    let mut tasks = Vec::new();
    let mut error = None;
    {
        let mut d = lock(driver);
        let window = processes * chunks_per_worker(d.auto.chunk_ns());
        while !d.failed && d.in_flight < window && d.next < d.items.len() {
            let n = d.auto.next(Some(d.items.len() - d.next), processes);
            let (first, end) = (d.next, d.next + n);
            // The user's `Serialize` runs here, often on a pool thread (a chunk's completion
            // feeds the next): a panic fails this `map` only.
            let chunk = &d.items[first..end];
            match crate::unwind::catch("encoding the items", || {
                encode_items(chunk, cap, &inner.spare_args)
            }) {
                Ok(payload) => {
                    let done = completion(
                        Arc::downgrade(inner),
                        Arc::clone(driver),
                        first,
                        n,
                        payload.len(),
                    );
                    tasks.push(PendingTask::new(payload, d.call, done));
                    d.in_flight += 1;
                    d.next = end;
                }
                Err(e) => error = Some(e),
            }
            if let Some(e) = error.take() {
                fail(&mut d, e);
            }
        }
    }
    if !tasks.is_empty()
        && let Err(e) = inner.submit(tasks, true)
    {
        fail(&mut lock(driver), e);
    }
    let release = {
        let mut d = lock(driver);
        let release = d.token && (d.failed || d.next == d.items.len());
        if release {
            d.token = false;
        }
        release
    };
    if release {
        dispatch::finished(inner, 1);
    }
}

/// Work (ns) the driver keeps in flight per worker, in chunks of the automatic size.
const QUEUED_NS: f64 = 1_000_000.0;

/// Chunks in flight per worker: about [`QUEUED_NS`] of measured work, between 2 (one running, one
/// queued, so a worker never waits for a refill) and 4. With only two, the collector thread has
/// to refill after every chunk and its naps shrink to half a chunk, and its wake-ups cost the
/// workers a measurable share of the machine (BENCHMARKS.md, "Figures from the code comments").
fn chunks_per_worker(chunk_ns: f64) -> usize {
    if chunk_ns <= 0.0 {
        return 2;
    }
    ((QUEUED_NS / chunk_ns).ceil() as usize).clamp(2, 4)
}

fn fail<A, R>(d: &mut Driver<A, R>, e: Error) {
    if !d.failed {
        d.failed = true;
        d.cell.set(Err(e));
    }
}

fn completion<A: Payload, R: Payload>(
    inner: Weak<Inner>,
    driver: Shared<A, R>,
    first: usize,
    n: usize,
    arg_bytes: usize,
) -> Completion {
    Box::new(move |r: TaskResult<'_>| {
        let (elapsed_ns, result_bytes) = r.cost();
        let part = decode_chunk_values::<R>(r);
        {
            let mut d = lock(&driver);
            d.in_flight -= 1;
            match part {
                Err(e) => fail(&mut d, e),
                Ok(values) if !d.failed => {
                    d.auto.learn(n, elapsed_ns, arg_bytes + result_bytes);
                    d.done += n;
                    d.parts.push((first, values));
                    if d.done == d.items.len() {
                        let mut parts = std::mem::take(&mut d.parts);
                        parts.sort_unstable_by_key(|(first, _)| *first);
                        let mut all = Vec::with_capacity(d.done);
                        for (_, values) in parts {
                            all.extend(values);
                        }
                        d.cell.set(Ok(all));
                    }
                }
                Ok(_) => {}
            }
        }
        match inner.upgrade() {
            Some(inner) => feed(&inner, &driver),
            None => fail(&mut lock(&driver), Error::PoolTerminated),
        }
    })
}
