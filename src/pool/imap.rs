//! The lazy `imap` / `imap_unordered` iterator over a bounded [`Window`] of chunks.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use serde::Serialize;

use crate::encoding::payload::{Payload, encode_list, encode_list_from, is_plain_number};
use crate::encoding::ser_probe::serialize_error;
use crate::error::{Error, Result};
use crate::unwind::panic_message;

use super::auto::AutoChunk;
use super::dispatch::{Completion, PendingTask, TaskResult};
use super::window::Window;
use super::{Pool, decode_chunk_parts};

/// Chunks per worker an `imap` keeps submitted and not yet yielded. An ordered `imap` cannot
/// refill past a chunk that is late, so while the oldest chunk runs the other workers need enough
/// of their own queued not to run dry; 8 per worker keeps them busy where 4 did not
/// (BENCHMARKS.md, "Figures from the code comments"). Automatic chunks hold at most 128 KiB of
/// arguments and results, so the window stays within a few MiB.
const WINDOW_PER_WORKER: usize = 8;

/// `(index, error)` pairs of the items of a chunk that failed, ascending.
type Failures = Vec<(u32, Error)>;

/// What the window delivers for one chunk.
struct ChunkDone<R> {
    /// Items sent to the worker.
    sent: usize,
    /// The worker's values, and `(sent index, error)` for each item that panicked, ascending; or
    /// the failure of the whole call (a dead worker, a terminated pool).
    outcome: Result<(Vec<R>, Failures)>,
    /// `(position in the chunk, error)` for each item that could not be encoded (never sent),
    /// ascending.
    local: Failures,
    elapsed_ns: u64,
    /// Encoded arguments plus encoded results.
    bytes: usize,
}

/// Walks a finished chunk in which some items failed, putting each failure at its position. (A
/// chunk without failures goes straight to `IMap::fast`.)
struct Cursor<R> {
    values: std::vec::IntoIter<R>,
    /// Failures reported by the worker, by sent index.
    remote: std::iter::Peekable<std::vec::IntoIter<(u32, Error)>>,
    /// Items that were never sent, by position.
    local: std::iter::Peekable<std::vec::IntoIter<(u32, Error)>>,
    /// The whole call failed: every sent item yields this.
    failed: Option<Error>,
    /// Next position, and how many there are (items sent plus items never sent).
    pos: u32,
    positions: u32,
    /// Sent items walked so far.
    sent: u32,
}

impl<R> Cursor<R> {
    fn new(c: ChunkDone<R>) -> Self {
        let positions = (c.sent + c.local.len()) as u32;
        let (values, remote, failed) = match c.outcome {
            Ok((values, remote)) => (values, remote, None),
            Err(e) => (Vec::new(), Vec::new(), Some(e)),
        };
        Cursor {
            values: values.into_iter(),
            remote: remote.into_iter().peekable(),
            local: c.local.into_iter().peekable(),
            failed,
            pos: 0,
            positions,
            sent: 0,
        }
    }

    fn remaining(&self) -> usize {
        (self.positions - self.pos) as usize
    }

    #[cold]
    fn next_item(&mut self) -> Option<Result<R>> {
        if self.pos == self.positions {
            return None;
        }
        let p = self.pos;
        self.pos += 1;
        if let Some((_, e)) = self.local.next_if(|(at, _)| *at == p) {
            return Some(Err(e));
        }
        let s = self.sent;
        self.sent += 1;
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        if let Some((_, e)) = self.remote.next_if(|(at, _)| *at == s) {
            return Some(Err(e));
        }
        // The completion checked that values and failures add up to the items sent, so this
        // runs short only if the worker numbered its failures wrongly.
        Some(
            self.values.next().ok_or_else(|| {
                Error::codec("a chunk result numbers its failed items out of range")
            }),
        )
    }
}

/// Why the input stopped early: surfaced after every result before it.
enum End {
    /// The input iterator panicked: the panic resumes in the consumer's `next`.
    Panic(Box<dyn std::any::Any + Send>),
}

/// A chunk ready to submit.
struct Built {
    payload: Vec<u8>,
    /// Items in `payload`.
    sent: usize,
    /// Items of this chunk that could not be encoded, by position.
    local: Failures,
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Appends `n` as postcard writes a sequence's length (unsigned LEB128).
fn write_varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Encodes `items` one by one into the chunk wire format (`payload::encode_list`): an item that
/// cannot be encoded, or that alone does not fit `cap`, becomes a failure at its position; once
/// the chunk is full, the items that did not fit go back to the front of `pending`.
fn encode_each<A: Serialize + 'static>(
    items: Vec<A>,
    cap: usize,
    pending: &mut VecDeque<A>,
) -> Built {
    let mut body = Vec::new();
    let mut local = Vec::new();
    let mut sent = 0usize;
    let mut items = items.into_iter().enumerate();
    while let Some((i, item)) = items.next() {
        let start = body.len();
        let encoded = catch_unwind(AssertUnwindSafe(|| {
            postcard::to_io(&item, &mut body).map(drop)
        }));
        let failure = match encoded {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(Error::codec(serialize_error(&e, &item))),
            Err(p) => Some(Error::codec(format!(
                "Serialize panicked: {}",
                panic_message(&*p)
            ))),
        };
        if let Some(e) = failure {
            body.truncate(start);
            local.push((i as u32, e));
            continue;
        }
        let size = body.len() - start;
        if size + varint_len(1) > cap {
            body.truncate(start);
            local.push((
                i as u32,
                Error::PayloadTooLarge {
                    size,
                    capacity: cap,
                },
            ));
        } else if body.len() + varint_len(sent + 1) > cap {
            // Full: this item and the rest start the next chunk.
            body.truncate(start);
            let rest: Vec<A> = std::iter::once(item).chain(items.map(|(_, a)| a)).collect();
            for a in rest.into_iter().rev() {
                pending.push_front(a);
            }
            break;
        } else {
            sent += 1;
        }
    }
    let mut payload = Vec::with_capacity(body.len() + varint_len(sent));
    write_varint(sent, &mut payload);
    payload.extend_from_slice(&body);
    Built {
        payload,
        sent,
        local,
    }
}

/// Iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`].
///
/// Yields one `Result<R>` per input item. It pulls input only to keep a bounded window of chunks
/// in flight (`8 × processes`), so memory stays constant whatever the input's length. Without
/// [`chunksize`](IMap::chunksize), chunks start at one item and grow with the measured cost per
/// item until each takes about 200 µs of worker time or holds about 128 KiB of arguments and
/// results (see [the rule](crate#automatic-chunksize)).
///
/// # Failures
///
/// Like Python's `imap`, a failure belongs to its item, and everything else still arrives:
///
/// * an item whose task panicked yields [`Error::TaskPanicked`] at its place;
/// * an item that cannot be encoded ([`Error::Codec`], with the serializer's message) or does not
///   fit the arena on its own ([`Error::PayloadTooLarge`]) yields that error at its place, and is
///   never sent;
/// * a chunk whose worker died yields [`Error::WorkerDied`] for each of its items;
/// * if the input iterator itself panics, the results of every item before it are yielded first,
///   then the panic resumes out of `next` (Python raises the generator's exception at its
///   position), and the iterator ends.
///
/// An `imap` made while the pool is open runs to its end even if the pool is
/// [closed](Pool::close) meanwhile: as in Python, `close` and then reading the results is fine.
/// Made on a closed pool, it yields [`Error::PoolClosed`] once and ends; once the pool has been
/// joined or terminated, the chunk it then tries to submit yields that error for each of its
/// items, and the iterator ends.
///
/// # Examples
///
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let results: Vec<_> = pool
///     .imap(|x: u32| if x == 2 { panic!("two") } else { x }, 0..4)
///     .collect();
/// assert_eq!(results[1].as_ref().ok(), Some(&1));
/// assert!(matches!(results[2], Err(shmpool::Error::TaskPanicked { .. })));
/// assert_eq!(results[3].as_ref().ok(), Some(&3));
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// Dropping it unused is a warning (`#[must_use]`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let pool = shmpool::Pool::new(1).unwrap();
/// pool.imap(|x: u8| x, 0..3);
/// ```
#[must_use = "iterators are lazy: an `IMap` submits nothing until it is iterated"]
pub struct IMap<'p, I: Iterator, R> {
    pool: &'p Pool,
    feed: Feed<I>,
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
    current: Option<Cursor<R>>,
    /// Most chunks held by `chunks`.
    limit: usize,
    /// An error to yield before anything else (bad chunksize).
    error: Option<Error>,
    finished: bool,
    /// The pool was open when the `imap` was made: like the rest of a `map`, its chunks are
    /// accepted after `close` (Python's `imap` queues its whole input at the call; `close` before
    /// the results are read is the usual pattern).
    accepted: bool,
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
            feed: Feed::new(input),
            call,
            ordered,
            fixed: None,
            auto: AutoChunk::new(),
            chunks: Window::new(ordered),
            fast: Vec::new().into_iter(),
            current: None,
            limit: WINDOW_PER_WORKER * pool.processes(),
            error: None,
            finished: false,
            accepted: pool.accepting(),
        }
    }

    /// Sends `n` items per task instead of adapting. `0` is an error, yielded as the first item.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = shmpool::Pool::new(2)?;
    /// let doubled: Vec<u32> = pool
    ///     .imap(|x: u32| x * 2, 0..100)
    ///     .chunksize(10)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(doubled[99], 198);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
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
    fn fill(&mut self) {
        while self.chunks.held() < self.limit && self.feed.end.is_none() && !self.feed.exhausted() {
            let size = self.next_chunksize();
            let Built {
                payload,
                sent,
                local,
            } = self.feed.build(size, self.pool.arena_cap());
            let send = self.chunks.sender();
            if sent == 0 {
                if local.is_empty() {
                    return;
                }
                // Nothing of this chunk could be encoded: its errors are its outcome.
                send(ChunkDone {
                    sent,
                    outcome: Ok((Vec::new(), Vec::new())),
                    local,
                    elapsed_ns: 0,
                    bytes: 0,
                });
                self.chunks.submitted();
                continue;
            }
            let arg_bytes = payload.len();
            // A second sender for the same chunk, in case the pool refuses the task (then the
            // completion never runs).
            let refused = self.chunks.sender();
            let done: Completion = {
                let local = local.clone();
                Box::new(move |r: TaskResult<'_>| {
                    let (elapsed_ns, result_bytes) = r.cost();
                    let outcome = decode_chunk_parts::<R>(r).and_then(|((values, failed), w)| {
                        if values.len() + failed.len() != sent {
                            return Err(Error::codec(format!(
                                "a chunk result holds {} values and {} failures for {sent} items",
                                values.len(),
                                failed.len()
                            )));
                        }
                        let failed = failed
                            .into_iter()
                            .map(|(i, wire)| (i, crate::encoding::task::panicked(w, &wire)))
                            .collect();
                        Ok((values, failed))
                    });
                    send(ChunkDone {
                        sent,
                        outcome,
                        local,
                        elapsed_ns,
                        bytes: arg_bytes + result_bytes,
                    });
                })
            };
            let task = vec![PendingTask::new(payload, self.call, done)];
            if let Err(e) = self.pool.submit_more(task, self.accepted) {
                // Refused (the pool was closed before the `imap` was made, or it was joined or
                // terminated since): every item of this chunk reports it, and no more input is
                // taken.
                refused(ChunkDone {
                    sent,
                    outcome: Err(e),
                    local,
                    elapsed_ns: 0,
                    bytes: 0,
                });
                self.feed.done = true;
                self.feed.pending.clear();
            }
            self.chunks.submitted();
        }
    }

    fn learn(&mut self, c: &ChunkDone<R>) {
        if self.fixed.is_none() && c.sent > 0 {
            self.auto.learn(c.sent, c.elapsed_ns, c.bytes);
        }
    }

    /// Everything but the fast path of `next`: a pending error, a chunk with failures, and
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
            if let Some(cursor) = &mut self.current {
                if let Some(x) = cursor.next_item() {
                    return Some(x);
                }
                self.current = None;
            }
            if self.finished {
                return None;
            }
            self.fill();
            match self.chunks.next(self.pool) {
                Some(c) => {
                    self.learn(&c);
                    self.accept(c);
                }
                None => {
                    // Everything before the input's end has been yielded: now its panic.
                    self.finished = true;
                    match self.feed.end.take() {
                        Some(End::Panic(p)) => resume_unwind(p),
                        None => return None,
                    }
                }
            }
        }
    }

    fn accept(&mut self, c: ChunkDone<R>) {
        match c.outcome {
            Ok((values, remote)) if remote.is_empty() && c.local.is_empty() => {
                self.fast = values.into_iter();
            }
            _ => self.current = Some(Cursor::new(c)),
        }
    }
}

/// The input side of an `imap`: cuts the input into chunks and encodes them.
struct Feed<I: Iterator> {
    input: I,
    /// The input returned `None` or panicked: it is not called again.
    done: bool,
    /// Items taken from the input that did not fit the last chunk; they start the next one.
    pending: VecDeque<I::Item>,
    /// How the input stopped early, to surface once everything before it has been yielded.
    end: Option<End>,
}

impl<I> Feed<I>
where
    I: Iterator,
    I::Item: Serialize + 'static,
{
    fn new(input: I) -> Self {
        Feed {
            input,
            done: false,
            pending: VecDeque::new(),
            end: None,
        }
    }

    /// Whether no item is left to take.
    fn exhausted(&self) -> bool {
        self.done && self.pending.is_empty()
    }

    /// Hands `consume` an iterator over at most `max` items of the input and returns how many
    /// it took. A panic of the input ends the input: it is kept in `end`, and the items taken
    /// before it stay taken.
    fn pull(&mut self, max: usize, consume: impl for<'a> FnOnce(Counted<'a, I>)) -> usize {
        if self.done || max == 0 {
            return 0;
        }
        let mut got = 0;
        let counted = Counted {
            inner: self.input.by_ref().take(max),
            n: &mut got,
        };
        // One `catch_unwind` per chunk, not per item: the loop inside stays a plain loop.
        let pulled = catch_unwind(AssertUnwindSafe(|| consume(counted)));
        match pulled {
            Ok(()) => self.done = got < max,
            Err(p) => {
                self.done = true;
                self.end = Some(End::Panic(p));
            }
        }
        got
    }

    /// The next chunk of at most `size` items (empty once the input is exhausted).
    fn build(&mut self, size: usize, cap: usize) -> Built {
        if is_plain_number::<I::Item>() {
            // Numbers always encode, to their raw bytes: stream them straight into the payload.
            // (`pending` stays empty for them: only `encode_each` puts items back.)
            debug_assert!(self.pending.is_empty());
            let max = size.min(cap / size_of::<I::Item>()).max(1);
            // Sized for the items the input promises (exact for ranges and slices), not for
            // `max`: a huge explicit chunksize over a short input must not reserve the arena.
            let mut bytes = Vec::with_capacity(
                self.input
                    .size_hint()
                    .0
                    .min(max)
                    .saturating_mul(size_of::<I::Item>()),
            );
            let sent = self.pull(max, |items| {
                encode_list_from(items, &mut bytes).expect("numbers always encode");
            });
            return Built {
                payload: bytes,
                sent,
                local: Vec::new(),
            };
        }
        // Every item but a zero-sized one encodes to at least a byte, so a chunk never holds
        // more than `cap` of them: an absurd chunksize (`1 << 40`) over an endless input must not
        // pull (or reserve room for) more items than that.
        let size = size.min(cap.max(1));
        let from_pending = size.min(self.pending.len());
        let mut items: Vec<I::Item> = self.pending.drain(..from_pending).collect();
        items.reserve(
            self.input
                .size_hint()
                .0
                .min(size - from_pending)
                .min(PULL_BATCH),
        );
        if size - from_pending <= PULL_BATCH {
            self.pull(size - from_pending, |more| {
                for a in more {
                    items.push(a);
                }
            });
        } else {
            // A big chunk takes only about an arena's worth of encoded bytes (what does not fit
            // goes back to `pending`): a million small items fill a chunk, a million strings of a
            // kilobyte would not. One batch is pulled and measured, and the rest pulled by its
            // size per item (half again, for items that vary), so only that batch is encoded twice.
            let mut push = |items: &mut Vec<I::Item>, max: usize| {
                self.pull(max, |more| {
                    for a in more {
                        items.push(a);
                    }
                })
            };
            let want = (size - items.len()).min(PULL_BATCH);
            if push(&mut items, want) == want {
                let per_item = (encoded_len(&items) / items.len()).max(1);
                let target = (cap / per_item).saturating_mul(3) / 2;
                let more = target.min(size).saturating_sub(items.len());
                push(&mut items, more);
            }
        }
        // The common case: the whole chunk encodes at once and fits.
        let mut bytes = Vec::new();
        let whole = catch_unwind(AssertUnwindSafe(|| encode_list(&items, &mut bytes)));
        if matches!(whole, Ok(Ok(()))) && bytes.len() <= cap {
            return Built {
                payload: bytes,
                sent: items.len(),
                local: Vec::new(),
            };
        }
        encode_each(items, cap, &mut self.pending)
    }
}

/// Items a big chunk is pulled by (see `Feed::build`).
const PULL_BATCH: usize = 4096;

/// The encoded size of `items` (`0` if they do not encode: `encode_each` reports them one by
/// one later).
fn encoded_len<T: Serialize>(items: &[T]) -> usize {
    catch_unwind(AssertUnwindSafe(|| {
        postcard::to_allocvec(items).map(|v| v.len())
    }))
    .ok()
    .and_then(Result::ok)
    .unwrap_or(0)
}

/// The input, limited to one chunk's items, counting what it yields.
struct Counted<'a, I> {
    inner: std::iter::Take<&'a mut I>,
    n: &'a mut usize,
}

impl<I: Iterator> Iterator for Counted<'_, I> {
    type Item = I::Item;

    #[inline]
    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        *self.n += 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
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
        let walking = self.fast.len() + self.current.as_ref().map_or(0, Cursor::remaining);
        (walking, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_chunks_reserve_for_the_items_not_the_chunksize() {
        // A huge explicit chunksize over ten items: ten items' worth, not the arena.
        let mut feed = Feed::new(0..10u64);
        let built = feed.build(1 << 30, 64 << 20);
        assert_eq!((built.sent, built.payload.len()), (10, 80));
        assert!(
            built.payload.capacity() < 1024,
            "{}",
            built.payload.capacity()
        );
        assert!(feed.exhausted());
        // An iterator that promises nothing still encodes everything (the buffer grows).
        let mut feed = Feed::new((0..1000u64).filter(|_| true));
        let built = feed.build(600, 64 << 20);
        assert_eq!((built.sent, built.payload.len()), (600, 4800));
        assert!(!feed.exhausted());
        // More numbers than the arena holds: the chunk stops at the arena's size.
        let built = Feed::new(0..100u64).build(100, 64);
        assert_eq!((built.sent, built.payload.len()), (8, 64));
    }

    #[test]
    fn a_huge_chunksize_over_an_endless_input_takes_at_most_an_arena_of_items() {
        // It reserved room for 2^40 `String`s (an allocation failure aborts the process) and
        // would have pulled that many.
        let mut feed = Feed::new((0..u64::MAX).map(|i| i.to_string()));
        let built = feed.build(1 << 40, 1024);
        assert!(
            built.sent > 0 && built.payload.len() <= 1024,
            "{}",
            built.sent
        );
        assert!(built.sent + feed.pending.len() <= 1024);
        assert!(!feed.exhausted());
        // Long items: pulled only until an arena's worth is reached, not `cap` of them.
        let mut feed = Feed::new(std::iter::repeat("x".repeat(1000)));
        let built = feed.build(1 << 40, 1 << 20);
        assert!(built.sent > 0 && built.payload.len() <= 1 << 20);
        assert!(
            built.sent + feed.pending.len() <= (1 << 20) / 1000 + PULL_BATCH,
            "{} + {}",
            built.sent,
            feed.pending.len()
        );
        // Small items: the chunk still fills the arena, past the first batch.
        let mut feed = Feed::new((0..u64::MAX).map(|i| i.to_string()));
        let built = feed.build(1 << 40, 1 << 20);
        assert!(built.sent > PULL_BATCH && built.payload.len() <= 1 << 20);
        assert!(
            built.payload.len() > (1 << 20) * 9 / 10,
            "{}",
            built.payload.len()
        );
        assert!(built.sent + feed.pending.len() <= 1 << 20);
        // Then the next chunk starts from what did not fit.
        let mut feed = Feed::new(std::iter::repeat("x".repeat(1000)));
        feed.build(1 << 40, 1 << 20);
        assert!(!feed.pending.is_empty());
        let next = feed.build(3, 1 << 20);
        assert_eq!(next.sent, 3);
    }

    #[test]
    fn the_length_prefix_is_postcards() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, usize::MAX] {
            let mut ours = Vec::new();
            write_varint(n, &mut ours);
            assert_eq!(ours, postcard::to_allocvec(&n).unwrap(), "{n}");
            assert_eq!(ours.len(), varint_len(n));
        }
    }

    #[test]
    fn a_full_chunk_leaves_the_rest_for_the_next_and_the_wire_format_holds() {
        let items: Vec<String> = (0..10)
            .map(|i| "x".repeat(if i == 2 { 100 } else { 20 }))
            .collect();
        let mut feed = Feed::new(items.clone().into_iter());
        // 64 bytes: 1 of length prefix, then 21-byte strings fit three at a time, and the
        // 101-byte item alone never fits.
        let mut chunks = Vec::new();
        loop {
            let built = feed.build(10, 64);
            if built.sent == 0 && built.local.is_empty() {
                break;
            }
            assert!(built.payload.len() <= 64);
            let decoded: Vec<String> = postcard::from_bytes(&built.payload).unwrap();
            assert_eq!(decoded.len(), built.sent);
            let local: Vec<u32> = built.local.iter().map(|(i, _)| *i).collect();
            chunks.push((decoded, local));
        }
        let sizes: Vec<(usize, Vec<u32>)> =
            chunks.iter().map(|(d, l)| (d.len(), l.clone())).collect();
        // First chunk: items 0, 1 sent, item 2 too large (position 2), item 3 sent, item 4 full.
        assert_eq!(sizes[0], (3, vec![2]));
        let all: Vec<String> = chunks.into_iter().flat_map(|(d, _)| d).collect();
        let expected: Vec<String> = items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(all, expected);
    }
}
