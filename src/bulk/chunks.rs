//! The chunk maps on [`Pool`]: `map_chunks`, `map_chunks_into`, `imap_chunks`,
//! `imap_chunks_unordered` (their window of chunks in flight is `pool::window::Window`).

use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex};

use bytemuck::Pod;

use crate::encoding::payload::Payload;
use crate::encoding::task::{CallFn, assert_task_fn};
use crate::error::{Error, Result};
use crate::pool::dispatch::{Completion, PendingTask, encode};
use crate::pool::window::Window;
use crate::pool::{Pool, decode_result};
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

/// Results of a whole `map_chunks`, filled by completions in any order.
struct Gather<R> {
    state: Mutex<GatherState<R>>,
    all_done: Condvar,
}

struct GatherState<R> {
    results: Vec<Option<Result<R>>>,
    left: usize,
}

impl<R: Payload> Gather<R> {
    fn new(n: usize) -> Arc<Gather<R>> {
        Arc::new(Gather {
            state: Mutex::new(GatherState {
                results: (0..n).map(|_| None).collect(),
                left: n,
            }),
            all_done: Condvar::new(),
        })
    }

    fn completion(self: &Arc<Self>, i: usize) -> Completion {
        let g = Arc::clone(self);
        Box::new(move |r| {
            let value = decode_result::<R>(r);
            let mut s = g.state.lock().unwrap_or_else(|e| e.into_inner());
            debug_assert!(s.results[i].is_none(), "chunk {i} completed twice");
            s.results[i] = Some(value);
            s.left -= 1;
            if s.left == 0 {
                g.all_done.notify_all();
            }
        })
    }

    /// Waits for every chunk (even after a failure: workers may still be reading the input the
    /// caller is about to get back), then returns the results in order or the first chunk's
    /// error. Completions always run (a dead worker or a terminated pool fails them).
    fn wait(&self) -> Result<Vec<R>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.left > 0 {
            s = self.all_done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.results
            .drain(..)
            .map(|r| r.expect("every chunk completed"))
            .collect()
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
    /// All chunks are queued at once (like [`map`](Pool::map)); use
    /// [`imap_chunks`](Pool::imap_chunks) to keep only a bounded window in flight. `input` stays
    /// borrowed until every chunk has finished, even when one fails, so it cannot change while a
    /// worker reads it. `f` is a `fn` item or a non-capturing closure.
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
        let gather = Gather::<R>::new(plan.chunks());
        let tasks = (0..plan.chunks())
            .map(|i| {
                let arg = ChunkArg {
                    input: plan.span::<I::Elem>(share.id, input.is_memfd(), i),
                    output: None,
                };
                chunk_task(self, &arg, call, vec![share.clone()], gather.completion(i))
            })
            .collect::<Result<Vec<PendingTask>>>()?;
        self.submit(tasks)?;
        gather.wait()
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
    /// partly written.
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
        let gather = Gather::<()>::new(plan.chunks());
        let tasks = (0..plan.chunks())
            .map(|i| {
                let arg = ChunkArg {
                    input: plan.span::<I::Elem>(share.id, input.is_memfd(), i),
                    output: Some(plan.span::<U>(out_share.id, true, i)),
                };
                let segments = vec![share.clone(), out_share.clone()];
                chunk_task(self, &arg, call, segments, gather.completion(i))
            })
            .collect::<Result<Vec<PendingTask>>>()?;
        self.submit(tasks)?;
        gather.wait().map(|_| ())
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
