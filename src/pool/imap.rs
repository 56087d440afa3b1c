//! The lazy `imap` / `imap_unordered` iterator over a bounded [`Window`] of chunks.

use crate::error::{Error, Result};
use crate::payload::Payload;

use super::auto::AutoChunk;
use super::dispatch::{Completion, Job, TaskResult, encode_items_from};
use super::window::Window;
use super::{Pool, decode_chunk_parts};

/// Chunks per worker an `imap` keeps submitted and not yet yielded. An ordered `imap` cannot
/// refill past a chunk that is late, so while the oldest chunk runs the other workers need enough
/// of their own queued not to run dry: with 4 per worker the workers sat idle ~5% of the time on
/// 2 cores (100 µs items, `perf record -a`), with 8 `imap` ran at 96% of `map_chunked` there
/// (92% before). Automatic chunks hold at most 128 KiB of arguments and results, so the window
/// stays within a few MiB.
const WINDOW_PER_WORKER: usize = 8;

struct ChunkDone<R> {
    items: usize,
    result: Result<Cursor<R>>,
    elapsed_ns: u64,
    /// Encoded arguments plus encoded results.
    bytes: usize,
}

/// Walks a finished chunk in which some items failed, putting each failure at its index. (A chunk
/// without failures goes straight to `IMap::fast`.)
struct Cursor<R> {
    values: std::vec::IntoIter<R>,
    /// `(item index, panic message)`, ascending.
    failures: std::iter::Peekable<std::vec::IntoIter<(u32, String)>>,
    next_index: u32,
    worker: usize,
}

impl<R> Cursor<R> {
    #[inline]
    fn next_item(&mut self) -> Option<Result<R>> {
        if self.failures.len() == 0 {
            // Every failure of this chunk has been yielded (a chunk without failures is walked
            // by `IMap::fast` instead).
            return self.values.next().map(Ok);
        }
        self.next_near_failures()
    }

    /// `next_item` while failures remain: counts items to put each failure at its place.
    #[cold]
    fn next_near_failures(&mut self) -> Option<Result<R>> {
        let i = self.next_index;
        self.next_index = i.wrapping_add(1);
        if let Some((_, message)) = self.failures.next_if(|(at, _)| *at == i) {
            return Some(Err(Error::TaskPanicked {
                worker: self.worker,
                message,
            }));
        }
        self.values.next().map(Ok)
    }
}

/// What `next` yields from: the chunk being walked, or one error repeated for a failed chunk.
enum Current<R> {
    Idle,
    Chunk(Cursor<R>),
    Failed(Error, usize),
}

/// Iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`].
///
/// Yields one `Result<R>` per input item. It pulls input only to keep a bounded window of chunks
/// in flight (`8 × processes`), so memory stays constant whatever the input's length. Without
/// [`chunksize`](IMap::chunksize), chunks start at one item and grow with the measured cost per
/// item until each takes about 200 µs of worker time or holds about 128 KiB of arguments and
/// results (see [the rule](crate#automatic-chunksize)).
pub struct IMap<'p, I: Iterator, R> {
    pool: &'p Pool,
    input: std::iter::Fuse<I>,
    call: usize,
    ordered: bool,
    /// Fixed chunksize, or `None` to adapt.
    fixed: Option<usize>,
    /// The automatic chunksize (see `auto`).
    auto: AutoChunk,
    /// Chunks submitted and not yet walked.
    chunks: Window<ChunkDone<R>>,
    /// The values of the chunk being walked when none of its items failed: what `next` yields
    /// from on its fast path. A chunk with failures is walked through `current` instead.
    fast: std::vec::IntoIter<R>,
    current: Current<R>,
    /// Most chunks held by `chunks`.
    limit: usize,
    /// An error to yield before anything else (bad chunksize).
    error: Option<Error>,
    finished: bool,
}

impl<I: Iterator, R> std::fmt::Debug for IMap<'_, I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("ordered", &self.ordered)
            .field("chunksize", &self.fixed)
            .field("in_flight", &self.chunks.in_flight())
            .finish_non_exhaustive()
    }
}

impl<'p, I, R> IMap<'p, I, R>
where
    I: Iterator,
    I::Item: Payload,
    R: Payload,
{
    pub(crate) fn new(pool: &'p Pool, input: I, call: usize, ordered: bool) -> Self {
        IMap {
            pool,
            input: input.fuse(),
            call,
            ordered,
            fixed: None,
            auto: AutoChunk::new(),
            chunks: Window::new(ordered),
            fast: Vec::new().into_iter(),
            current: Current::Idle,
            limit: WINDOW_PER_WORKER * pool.processes(),
            error: None,
            finished: false,
        }
    }

    /// Sends `n` items per task instead of adapting. `0` is an error, yielded as the first item.
    pub fn chunksize(mut self, n: usize) -> Self {
        if n == 0 {
            self.error = Some(Error::invalid("chunksize must be at least 1"));
        } else {
            self.fixed = Some(n);
        }
        self
    }

    fn next_chunksize(&self) -> usize {
        self.fixed
            .unwrap_or_else(|| self.auto.next(None, self.pool.processes()))
    }

    /// Submits chunks until the window is full or the input ends.
    fn fill(&mut self) -> Result<()> {
        while self.chunks.held() < self.limit {
            let size = self.next_chunksize();
            let (payload, items) =
                encode_items_from(self.input.by_ref(), size, self.pool.arena_cap())?;
            if items == 0 {
                return Ok(());
            }
            let arg_bytes = payload.len();
            let send = self.chunks.sender();
            let done: Completion = Box::new(move |r: TaskResult<'_>| {
                let (elapsed_ns, result_bytes) = r.cost();
                let result =
                    decode_chunk_parts::<R>(r).map(|((values, failures), worker)| Cursor {
                        values: values.into_iter(),
                        failures: failures.into_iter().peekable(),
                        next_index: 0,
                        worker,
                    });
                send(ChunkDone {
                    items,
                    result,
                    elapsed_ns,
                    bytes: arg_bytes + result_bytes,
                });
            });
            self.pool.submit(vec![Job::new(payload, self.call, done)])?;
            self.chunks.submitted();
        }
        Ok(())
    }

    fn learn(&mut self, c: &ChunkDone<R>) {
        if self.fixed.is_none() {
            self.auto.learn(c.items, c.elapsed_ns, c.bytes);
        }
    }

    /// Everything but the fast path of `next`: a pending error, a failed chunk's items, and
    /// moving on to the next chunk (submitting more to keep the window full).
    #[inline(never)]
    fn next_slow(&mut self) -> Option<Result<R>> {
        if let Some(e) = self.error.take() {
            self.finished = true;
            return Some(Err(e));
        }
        loop {
            if let Some(v) = self.fast.next() {
                return Some(Ok(v));
            }
            match &mut self.current {
                Current::Chunk(cursor) => {
                    if let Some(x) = cursor.next_item() {
                        return Some(x);
                    }
                }
                Current::Failed(e, left) if *left > 0 => {
                    *left -= 1;
                    return Some(Err(e.clone()));
                }
                _ => {}
            }
            self.current = Current::Idle;
            if self.finished {
                return None;
            }
            if let Err(e) = self.fill() {
                self.finished = true;
                return Some(Err(e));
            }
            match self.chunks.next(self.pool) {
                Some(c) => {
                    self.learn(&c);
                    self.accept(c);
                }
                None => {
                    self.finished = true;
                    return None;
                }
            }
        }
    }

    fn accept(&mut self, c: ChunkDone<R>) {
        self.current = match c.result {
            Ok(cursor) if cursor.failures.len() == 0 => {
                self.fast = cursor.values;
                Current::Idle
            }
            Ok(cursor) => Current::Chunk(cursor),
            Err(e) => Current::Failed(e, c.items),
        };
    }
}

impl<I, R> Iterator for IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Payload,
    R: Payload,
{
    type Item = Result<R>;

    #[inline]
    fn next(&mut self) -> Option<Result<R>> {
        // Fast path: the next value of a chunk without failures (what almost every call does): a
        // pointer compare and a load, small enough to inline into the consumer's loop. The rest
        // is `next_slow`, out of line: as one function, `next` spent most of its time saving and
        // restoring registers for a stack frame only the slow path needs (perf, `imap` over 1M
        // `u64`s with no work).
        if let Some(v) = self.fast.next() {
            return Some(Ok(v));
        }
        self.next_slow()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // At least what is left of the chunk being walked; the input's length is not known.
        let walking = self.fast.len()
            + match &self.current {
                Current::Chunk(cursor) => cursor.values.len() + cursor.failures.len(),
                Current::Failed(_, left) => *left,
                Current::Idle => 0,
            };
        (walking, None)
    }
}
