//! The chunk maps on [`Pool`]: `map_chunks`, `map_chunks_into`, `imap_chunks`,
//! `imap_chunks_unordered` (their window of chunks in flight is `pool::window::Window`).

use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, Weak};

use bytemuck::Pod;

use crate::encoding::bigpayload::SpareArgs;
use crate::encoding::payload::Payload;
use crate::encoding::task::{CallFn, assert_task_fn};
use crate::error::{Error, Result};
use crate::pool::dispatch::{Completion, MAX_DEPTH, PendingTask, encode};
use crate::pool::window::Window;
use crate::pool::{Inner, Pool, decode_result};
use crate::shm::channel::SegmentShare;

use super::worker::{call_chunk, call_chunk_into};
use super::{BulkInput, ChunkArg, Plan, SharedVec, Span, share_of};

/// One chunk's task: its argument, the segments it needs, and where its result goes.
pub(super) fn chunk_task(
    pool: &Pool,
    arg: &ChunkArg,
    call: usize,
    segments: Vec<SegmentShare>,
    done: Completion,
) -> Result<PendingTask> {
    let mut task = PendingTask::new(
        encode(arg, pool.arena_cap(), pool.spare_args())?,
        call,
        done,
    );
    task.segments = segments;
    Ok(task)
}

/// Chunks a whole `map_chunks` or `map_chunks_into` keeps submitted and not yet finished, per
/// worker: a full ring ([`MAX_DEPTH`]) and a few more waiting in the dispatcher, so workers find
/// as much work queued as if every chunk had been submitted at once, while the parent holds a
/// few dozen tasks instead of one per chunk (a task costs ~450 bytes at its peak: a million
/// chunks took 470 MB of the parent's memory when they were all queued at the call).
const WINDOW_PER_WORKER: usize = MAX_DEPTH + 4;

/// Where chunk `i`'s task reads (and writes, for `map_chunks_into`).
#[derive(Debug, Clone, Copy)]
struct Spans {
    plan: Plan,
    input: Side,
    output: Option<Side>,
}

/// One segment of a chunk map: its id, whether it is one of our memfds, its element size.
#[derive(Debug, Clone, Copy)]
struct Side {
    seg: u64,
    memfd: bool,
    elem_size: usize,
}

impl Side {
    /// The input of a chunk map, shared as `share`.
    fn input<I: BulkInput + ?Sized>(input: &I, share: &SegmentShare) -> Side {
        Side {
            seg: share.id,
            memfd: input.is_memfd(),
            elem_size: size_of::<I::Elem>(),
        }
    }

    fn span(self, plan: &Plan, i: usize) -> Span {
        let (start, len) = plan.range(i);
        Span {
            seg: self.seg,
            offset: (start * self.elem_size) as u64,
            len: (len * self.elem_size) as u64,
            memfd: self.memfd,
        }
    }
}

impl Spans {
    fn arg(&self, i: usize) -> ChunkArg {
        ChunkArg {
            input: self.input.span(&self.plan, i),
            output: self.output.map(|o| o.span(&self.plan, i)),
        }
    }
}

/// A whole `map_chunks` (or `map_chunks_into`): submits the chunks in input order, each as an
/// earlier one finishes, keeping at most a window of them in flight; keeps each chunk's result;
/// submits nothing more once a chunk failed.
///
/// The caller submits the first window (all or none: a closed pool refuses the call before any
/// chunk runs); each completion then submits the next chunk before it returns, which is before
/// the pool counts its own task finished, so `join` never sees the pool idle mid-call. Later
/// chunks are continuations of an accepted call: they are taken after `close` too.
struct Feeder<R> {
    pool: Weak<Inner>,
    call: usize,
    state: Mutex<FeedState<R>>,
    all_done: Condvar,
}

struct FeedState<R> {
    /// Chunks before this one were submitted.
    next: usize,
    /// Submitted and not yet completed.
    in_flight: usize,
    results: Vec<Option<R>>,
    /// The first failed chunk in input order, and its error.
    error: Option<(usize, Error)>,
    /// What the chunks still to submit need, until none will be: then dropped, so the pool
    /// holds no share of the input (or output) once the call returns.
    source: Option<(Spans, Vec<SegmentShare>)>,
}

impl<R: Payload> Feeder<R> {
    /// Runs every chunk of `spans` as a task of `call` over `segments`; the results in order,
    /// or the error of the first failed chunk in input order.
    fn run(pool: &Pool, call: usize, spans: Spans, segments: Vec<SegmentShare>) -> Result<Vec<R>> {
        let chunks = spans.plan.chunks();
        let first = chunks.min(WINDOW_PER_WORKER * pool.processes());
        let feeder = Arc::new(Feeder {
            pool: Arc::downgrade(pool.inner()),
            call,
            state: Mutex::new(FeedState {
                next: first,
                in_flight: first,
                results: (0..chunks).map(|_| None).collect(),
                error: None,
                source: (first < chunks).then(|| (spans, segments.clone())),
            }),
            all_done: Condvar::new(),
        });
        let tasks = (0..first)
            .map(|i| feeder.task(pool.arena_cap(), pool.spare_args(), &spans, &segments, i))
            .collect::<Result<Vec<PendingTask>>>()?;
        drop(segments);
        // Refused: the tasks (and their completions) are dropped unrun, nothing waits.
        pool.submit(tasks)?;
        feeder.wait()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn task(
        self: &Arc<Self>,
        cap: usize,
        spares: &Arc<SpareArgs>,
        spans: &Spans,
        segments: &[SegmentShare],
        i: usize,
    ) -> Result<PendingTask> {
        let mut task = PendingTask::new(
            encode(&spans.arg(i), cap, spares)?,
            self.call,
            self.completion(i),
        );
        task.segments = segments.to_vec();
        Ok(task)
    }

    fn completion(self: &Arc<Self>, i: usize) -> Completion {
        let feeder = Arc::clone(self);
        Box::new(move |r| {
            // The user's `Deserialize` runs here; a panic in it fails this chunk only.
            let value = decode_result::<R>(r);
            let mut s = feeder.lock();
            s.in_flight -= 1;
            match value {
                Ok(v) => s.results[i] = Some(v),
                Err(e) => feeder.fail(&mut s, i, e),
            }
            feeder.feed(s);
        })
    }

    /// Records chunk `i`'s error (if it is the first in input order) and stops submitting.
    fn fail(&self, s: &mut FeedState<R>, i: usize, e: Error) {
        if s.error.as_ref().is_none_or(|&(j, _)| i < j) {
            s.error = Some((i, e));
        }
        s.source = None;
    }

    /// Submits the next chunk, if any is left and nothing failed; wakes the caller when the
    /// last chunk has finished. Takes the lock to release it before submitting: a submission
    /// can complete a task at once (a refused one fails on the spot), which locks it again.
    fn feed(self: &Arc<Self>, mut s: std::sync::MutexGuard<'_, FeedState<R>>) {
        let Some((spans, segments)) = &s.source else {
            if s.in_flight == 0 {
                self.all_done.notify_all();
            }
            return;
        };
        let i = s.next;
        let made = match self.pool.upgrade() {
            Some(inner) => self
                .task(inner.ctl.arena_cap(), &inner.spare_args, spans, segments, i)
                .map(|t| (inner, t)),
            None => Err(Error::PoolTerminated),
        };
        let last = i + 1 == spans.plan.chunks();
        s.next += 1;
        s.in_flight += 1;
        if last {
            s.source = None;
        }
        drop(s);
        let submitted = made.and_then(|(inner, task)| inner.submit(vec![task], true));
        if let Err(e) = submitted {
            let mut s = self.lock();
            s.in_flight -= 1;
            self.fail(&mut s, i, e);
            if s.in_flight == 0 {
                self.all_done.notify_all();
            }
        }
    }

    /// Waits for every chunk submitted (even after a failure: workers may still be reading the
    /// input the caller is about to get back), then returns the results in order or the first
    /// failed chunk's error. Completions always run (a dead worker or a terminated pool fails
    /// them).
    fn wait(&self) -> Result<Vec<R>> {
        let mut s = self.lock();
        while s.in_flight > 0 || s.source.is_some() {
            s = self.all_done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if let Some((_, e)) = s.error.take() {
            // The results of the chunks that did succeed go here, on the caller's thread, as
            // they would have in the caller's hands: left in the feeder, they went with its
            // last reference, most often the completion that woke us, on a pool thread, where
            // a panic in the user's `Drop` unwinds through the pool.
            let kept = std::mem::take(&mut s.results);
            drop(s);
            drop(kept);
            return Err(e);
        }
        Ok(s.results
            .drain(..)
            .map(|r| r.expect("every chunk completed"))
            .collect())
    }
}

/// What arrives from a chunk of a bulk iterator.
pub(super) struct Arrived<R> {
    /// The submitter's own tag (the reader's buffer index).
    pub(super) tag: usize,
    pub(super) result: Result<R>,
}

/// The completion of the next chunk of `window`; call `window.submitted()` once its task is
/// accepted.
pub(super) fn completion<R: Payload>(window: &Window<Arrived<R>>, tag: usize) -> Completion {
    let send = window.sender();
    Box::new(move |r| {
        send(Arrived {
            tag,
            result: decode_result::<R>(r),
        })
    })
}

/// Lazy iterator of chunk results returned by [`Pool::imap_chunks`] and
/// [`Pool::imap_chunks_unordered`].
///
/// It keeps at most `4 × processes` chunks submitted and not yet yielded, so the parent holds a
/// bounded number of results and the input is never touched by the parent at all. It borrows the
/// input: dropping it early waits for the chunks still in flight, so the input cannot change (or
/// be dropped) while a worker reads it.
///
/// Made while the pool is open, it runs to its end even if the pool is closed meanwhile (as
/// [`IMap`](crate::IMap) does).
///
/// # Examples
///
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let v = shmpool::SharedVec::from_slice(&[1u64; 100])?;
/// let mut it = pool.imap_chunks(&v, 30, |s: &[u64]| s.len());
/// assert_eq!(it.next().transpose()?, Some(30));
/// let rest: Vec<usize> = it.collect::<Result<_, _>>()?;
/// assert_eq!(rest, [30, 30, 10]);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// Dropping it unused is a warning (`#[must_use]`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let pool = shmpool::Pool::new(1).unwrap();
/// let v = shmpool::SharedVec::from_slice(&[1u8; 10]).unwrap();
/// pool.imap_chunks(&v, 5, |s: &[u8]| s.len());
/// ```
#[must_use = "iterators are lazy: an `IMapChunks` submits nothing until it is iterated"]
pub struct IMapChunks<'a, R> {
    pool: &'a Pool,
    plan: Plan,
    share: Option<SegmentShare>,
    /// The input is one of our memfds (see `Span::memfd`).
    memfd: bool,
    elem_size: usize,
    call: usize,
    next_chunk: usize,
    window: Window<Arrived<R>>,
    limit: usize,
    /// Yielded first (a bad chunk length), then the iterator ends.
    error: Option<Error>,
    finished: bool,
    /// The input stays borrowed while chunks may be in flight.
    _input: PhantomData<&'a ()>,
    /// Made while the pool was open: its chunks are still taken after `close`.
    accepted: bool,
}

impl<R> std::fmt::Debug for IMapChunks<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMapChunks")
            .field("chunks", &self.plan.chunks())
            .field("next_chunk", &self.next_chunk)
            .field("in_flight", &self.window.in_flight())
            .finish_non_exhaustive()
    }
}

impl<R: Payload> IMapChunks<'_, R> {
    /// Submits chunks until the window is full or the input is exhausted.
    fn fill(&mut self) -> Result<()> {
        let Some(share) = &self.share else {
            return Ok(());
        };
        while self.window.held() < self.limit && self.next_chunk < self.plan.chunks() {
            let (start, len) = self.plan.range(self.next_chunk);
            let arg = ChunkArg {
                input: Span {
                    seg: share.id,
                    offset: (start * self.elem_size) as u64,
                    len: (len * self.elem_size) as u64,
                    memfd: self.memfd,
                },
                output: None,
            };
            let done = completion(&self.window, 0);
            let task = chunk_task(self.pool, &arg, self.call, vec![share.clone()], done)?;
            self.pool.submit_more(vec![task], self.accepted)?;
            self.window.submitted();
            self.next_chunk += 1;
        }
        Ok(())
    }
}

impl<R: Payload> Iterator for IMapChunks<'_, R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if let Some(e) = self.error.take() {
            self.finished = true;
            return Some(Err(e));
        }
        if self.finished {
            return None;
        }
        if let Err(e) = self.fill() {
            self.finished = true;
            return Some(Err(e));
        }
        match self.window.next(self.pool) {
            Some(a) => Some(a.result),
            None => {
                self.finished = true;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.finished {
            return (0, Some(0));
        }
        let left = self.plan.chunks() - self.next_chunk + self.window.held();
        (left, Some(left + usize::from(self.error.is_some())))
    }
}

impl<R> Drop for IMapChunks<'_, R> {
    fn drop(&mut self) {
        // The borrow of the input ends here: no worker may still read it afterwards.
        self.window.settle(self.pool);
    }
}

impl Pool {
    /// Splits `input` into chunks of `chunk_len` elements (the last may be shorter) and returns
    /// `f(chunk)` for each, in order. Each worker receives a slice that points straight into the
    /// shared mapping of a [`SharedVec`] or the page cache of a [`MappedFile`](crate::MappedFile): only
    /// `(segment, offset, length)` crosses, never the data.
    ///
    /// Chunks are submitted in order, each as an earlier one finishes, about 20 per worker at a
    /// time: enough that no worker waits for one, and the parent's memory does not grow with the
    /// number of chunks (only the results do; [`imap_chunks`](Pool::imap_chunks) does not keep
    /// those either). Once a chunk fails, no further chunk is submitted; those already submitted
    /// (at most that window) still run, so a failure early in a long input ends the call soon. `input` stays borrowed until
    /// every started chunk has finished, even when one fails, so it cannot change while a worker
    /// reads it. `f` is a `fn` item or a non-capturing closure.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `chunk_len == 0`; [`Error::PoolClosed`] (and other
    /// submission errors) if the pool takes no work; otherwise the error of the first failed
    /// chunk in input order: [`Error::TaskPanicked`] if `f` panicked, [`Error::WorkerDied`] if
    /// its worker died mid-chunk. An empty input gives an empty vector.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmpool::{Pool, SharedVec};
    ///
    /// let pool = Pool::new(2)?;
    /// let v: SharedVec<u64> = (0..10).collect();
    /// let sums = pool.map_chunks(&v, 4, |s: &[u64]| s.iter().sum::<u64>())?;
    /// assert_eq!(sums, [6, 22, 17]);
    /// assert!(pool.map_chunks(&v, 0, |s: &[u64]| s.len()).is_err());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn map_chunks<I, F, R>(&self, input: &I, chunk_len: usize, f: F) -> Result<Vec<R>>
    where
        I: BulkInput + ?Sized,
        F: Fn(&[I::Elem]) -> R + Copy + Send + 'static,
        R: Payload,
    {
        let _ = f;
        assert_task_fn::<F>();
        let plan = Plan::new(input.elems(), chunk_len)?;
        let call = call_chunk::<F, I::Elem, R> as CallFn as usize;
        let Some(share) = share_of(input) else {
            self.submit(Vec::new())?;
            return Ok(Vec::new());
        };
        let spans = Spans {
            plan,
            input: Side::input(input, &share),
            output: None,
        };
        Feeder::run(self, call, spans, vec![share])
    }

    /// Like [`map_chunks`](Pool::map_chunks), but `f` writes its results in place: chunk `i` of
    /// `input` and the same element range of `output` (a [`SharedVec<U>`] of the same length) go
    /// to one task as `(&[T], &mut [U])`. Workers write straight into `output`'s shared memory;
    /// chunks get disjoint ranges, and `output` is borrowed `&mut` until every chunk finished.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `chunk_len == 0` or lengths that differ; otherwise as
    /// [`map_chunks`](Pool::map_chunks). After an error, ranges of chunks that failed may be
    /// partly written, and those of chunks never submitted (see `map_chunks`) are untouched.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmpool::{Pool, SharedVec};
    ///
    /// let pool = Pool::new(2)?;
    /// let input: SharedVec<u32> = (0..1000).collect();
    /// let mut squares = SharedVec::<u64>::zeroed(1000)?;
    /// pool.map_chunks_into(&input, &mut squares, 128, |src: &[u32], dst: &mut [u64]| {
    ///     for (d, &s) in dst.iter_mut().zip(src) {
    ///         *d = u64::from(s) * u64::from(s);
    ///     }
    /// })?;
    /// assert_eq!(squares[999], 998_001);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn map_chunks_into<I, U, F>(
        &self,
        input: &I,
        output: &mut SharedVec<U>,
        chunk_len: usize,
        f: F,
    ) -> Result<()>
    where
        I: BulkInput + ?Sized,
        U: Pod,
        F: Fn(&[I::Elem], &mut [U]) + Copy + Send + 'static,
    {
        let _ = f;
        assert_task_fn::<F>();
        let plan = Plan::new(input.elems(), chunk_len)?;
        if output.len() != input.elems() {
            return Err(Error::invalid(format!(
                "output has {} elements, input {}",
                output.len(),
                input.elems()
            )));
        }
        let call = call_chunk_into::<F, I::Elem, U> as CallFn as usize;
        let (Some(share), Some(out_share)) = (share_of(input), share_of(&*output)) else {
            self.submit(Vec::new())?;
            return Ok(());
        };
        let spans = Spans {
            plan,
            input: Side::input(input, &share),
            output: Some(Side {
                seg: out_share.id,
                memfd: true,
                elem_size: size_of::<U>(),
            }),
        };
        Feeder::<()>::run(self, call, spans, vec![share, out_share]).map(|_| ())
    }

    /// A lazy, ordered iterator of `f(chunk)` over chunks of `chunk_len` elements of `input`,
    /// with at most `4 × processes` chunks in flight or waiting to be yielded.
    ///
    /// Memory stays bounded by that window, not by the input: the parent never reads the input,
    /// and each worker maps only the chunk it is working on, so an 8 GiB [`MappedFile`](crate::MappedFile) can be
    /// crunched with a few chunks' worth of resident memory per process (`examples/crunch.rs`).
    ///
    /// A chunk length of 0 is yielded as an [`Error::InvalidArgument`] first item; a failed
    /// chunk yields its error and the iterator goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let v: shmpool::SharedVec<u8> = (0..=255).collect();
    /// let maxima: Vec<u8> = pool
    ///     .imap_chunks(&v, 100, |s: &[u8]| *s.iter().max().unwrap())
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(maxima, [99, 199, 255]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn imap_chunks<'a, I, F, R>(
        &'a self,
        input: &'a I,
        chunk_len: usize,
        f: F,
    ) -> IMapChunks<'a, R>
    where
        I: BulkInput + ?Sized,
        F: Fn(&[I::Elem]) -> R + Copy + Send + 'static,
        R: Payload,
    {
        self.imap_chunks_impl(input, chunk_len, f, true)
    }

    /// Like [`imap_chunks`](Pool::imap_chunks), yielding each chunk's result as soon as it is
    /// ready, in any order.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let v = shmpool::SharedVec::from_slice(&[1u32; 1000])?;
    /// let mut lens: Vec<usize> = pool
    ///     .imap_chunks_unordered(&v, 300, |s: &[u32]| s.len())
    ///     .collect::<Result<_, _>>()?;
    /// lens.sort();
    /// assert_eq!(lens, [100, 300, 300, 300]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn imap_chunks_unordered<'a, I, F, R>(
        &'a self,
        input: &'a I,
        chunk_len: usize,
        f: F,
    ) -> IMapChunks<'a, R>
    where
        I: BulkInput + ?Sized,
        F: Fn(&[I::Elem]) -> R + Copy + Send + 'static,
        R: Payload,
    {
        self.imap_chunks_impl(input, chunk_len, f, false)
    }

    fn imap_chunks_impl<'a, I, F, R>(
        &'a self,
        input: &'a I,
        chunk_len: usize,
        f: F,
        ordered: bool,
    ) -> IMapChunks<'a, R>
    where
        I: BulkInput + ?Sized,
        F: Fn(&[I::Elem]) -> R + Copy + Send + 'static,
        R: Payload,
    {
        let _ = f;
        assert_task_fn::<F>();
        let (plan, error) = match Plan::new(input.elems(), chunk_len) {
            Ok(p) => (p, None),
            Err(e) => (Plan::new(0, 1).expect("valid"), Some(e)),
        };
        IMapChunks {
            pool: self,
            plan,
            share: share_of(input),
            memfd: input.is_memfd(),
            elem_size: size_of::<I::Elem>(),
            call: call_chunk::<F, I::Elem, R> as CallFn as usize,
            next_chunk: 0,
            window: Window::new(ordered),
            limit: 4 * self.processes(),
            error,
            finished: false,
            _input: PhantomData,
            accepted: self.accepting(),
        }
    }
}
