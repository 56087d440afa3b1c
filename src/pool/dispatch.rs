//! The parent's side of the transport: the dispatcher that keeps every worker's ring fed, and the
//! collector thread that drains results, detects deaths and asks for replacements.
//!
//! # Dispatch
//!
//! Jobs wait in one `pending` queue in the parent (so an idle worker can always get the next one;
//! nothing is stranded behind a slow task in another worker's ring). `pump` moves jobs from
//! `pending` into the least-loaded worker's argument arena and ring, up to a per-worker depth that
//! adapts to the measured task time: `1 + DEPTH_BUDGET / average task time`, capped at
//! `MAX_DEPTH`. Long tasks therefore go out one at a time (perfect balance, like Python's shared
//! queue); tiny tasks are pipelined so a worker never waits for the collector.
//!
//! # Collection
//!
//! One collector thread per pool owns the consumer side of every result ring. For each result it
//! pops the matching in-flight record (results come back in ring order, so it is the front one;
//! anything else is a protocol breach), frees the argument space, refills the ring, checks the
//! result's place (`check_result_place`), copies the result out of the result arena and
//! publishes `result_freed` so the worker can reuse that space, and then runs the job's
//! completion on the private copy (the worker can no longer change the bytes being decoded).
//! Completions run user code (`Deserialize`); see `unwind` for how its panics are contained.
//!
//! # Death
//!
//! When the fork server reports a worker's death, the collector first drains that worker's result
//! ring, then reads the task ring's `head`: in-flight jobs below it were taken by the dead worker
//! and never answered, so they fail with [`Error::WorkerDied`]; jobs above it are still in the ring
//! and are run by the replacement, which attaches at the same positions.

use std::collections::VecDeque;
use std::time::Duration;

use std::os::fd::RawFd;

use crate::arena::LocalArena;
use crate::channel::{SegmentShare, SentSegments};
use crate::control::{Control, RUNNING};
use crate::error::{Error, Result};
use crate::process::{decode_status, reap_server};
use crate::ring::{Consumer, Descriptor, Producer, STATUS_ERROR, STATUS_OK, STATUS_PANICKED};
use crate::sync::Ordering;
use crate::worker::EXIT_INIT_FAILED;

use super::Inner;

/// Most tasks queued in one worker's ring.
pub(crate) const MAX_DEPTH: usize = 16;
/// Queued work (ns) a worker may hold beyond the task it runs. Large enough that a chunk of the
/// automatic chunksize (~200 µs) always has a successor waiting, so a worker never idles for a
/// wake-up round trip between chunks; small enough that a task waits at most ~2 ms behind
/// another worker's queue while a worker is free (tasks longer than that go out one at a time).
const DEPTH_BUDGET_NS: f64 = 2_000_000.0;
/// How long the collector thread naps while waiters collect for themselves. Waiters that find
/// their result leave without waking it (the saving), so it checks back this often.
const HELPED_NAP: Duration = Duration::from_millis(1);
/// The shortest nap worth taking instead of spinning (see `Dispatch::pace`).
const MIN_PACE_NAP: Duration = Duration::from_micros(20);
/// How long the collector thread spins for the next result when nobody helps, before it sleeps
/// on the futex (a sleeping collector costs every result a `futex_wake` and a context switch).
const COLLECTOR_SPIN: Duration = Duration::from_micros(50);

/// What a finished task hands its completion.
#[derive(Debug)]
pub(crate) enum TaskResult<'a> {
    /// The encoded result, straight from the result arena.
    Ok {
        /// Encoded bytes.
        bytes: &'a [u8],
        /// Worker slot that ran the task.
        worker: usize,
        /// Time the worker spent in the task.
        elapsed_ns: u64,
        /// The segment `bytes` maps, when the result came in one of its own (`bigpayload`): a
        /// byte vector is read from its file instead of from the mapping.
        segment: Option<&'a crate::bigpayload::Sealed>,
    },
    /// The task failed.
    Err(Error),
}

impl TaskResult<'_> {
    /// The worker time and the result's encoded size (zeros for a failed task), which the
    /// automatic chunksize learns from.
    pub(crate) fn cost(&self) -> (u64, usize) {
        match self {
            TaskResult::Ok {
                bytes, elapsed_ns, ..
            } => (*elapsed_ns, bytes.len()),
            TaskResult::Err(_) => (0, 0),
        }
    }
}

/// Runs once when a job ends, in the collector thread (or in the thread that fails it).
pub(crate) type Completion = Box<dyn FnOnce(TaskResult<'_>) + Send>;

/// A job not yet in any ring.
pub(crate) struct Job {
    pub(crate) payload: Vec<u8>,
    pub(crate) call: usize,
    pub(crate) done: Completion,
    /// Shared segments the task reads or writes (sent to the worker before the task).
    pub(crate) segments: Vec<SegmentShare>,
    /// This task's time limit, overriding the pool's (`PoolBuilder::task_timeout`).
    pub(crate) timeout: Option<Duration>,
    /// Runs this job already had in workers that died (see `PoolBuilder::retries`).
    attempts: u32,
    /// The argument is in `segments[0]`; `payload` only names it (`bigpayload`).
    arg_in_segment: bool,
}

impl Job {
    pub(crate) fn new(arg: impl Into<EncodedArg>, call: usize, done: Completion) -> Job {
        let arg = arg.into();
        Job {
            payload: arg.payload,
            call,
            done,
            arg_in_segment: arg.segment.is_some(),
            segments: arg.segment.into_iter().collect(),
            timeout: None,
            attempts: 0,
        }
    }
}

struct InFlight {
    id: u64,
    /// Ring position of the job's descriptor.
    seq: u64,
    /// Argument-arena position to free when the job ends.
    arg_end: u64,
    done: Completion,
    /// Segments the task needs; re-sent if a replacement worker inherits the task.
    segments: Vec<SegmentShare>,
    /// The time limit the worker enforces, if any.
    timeout: Option<Duration>,
    /// The encoded argument, kept only while the job may still be retried.
    retry_payload: Option<Vec<u8>>,
    call: usize,
    attempts: u32,
    arg_in_segment: bool,
}

/// Lifecycle of the pool.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    Open,
    Closed,
    /// Terminated, or being joined after close (no more work will run).
    Stopped,
    /// Unusable (an initializer failed, the fork server died); new work gets this error.
    Broken(Error),
}

/// Everything the dispatcher guards with the pool's mutex.
pub(crate) struct Dispatch {
    producers: Vec<Producer>,
    arenas: Vec<LocalArena>,
    inflight: Vec<VecDeque<InFlight>>,
    /// Slot can take work (has a live worker or one being spawned).
    usable: Vec<bool>,
    /// Average task time per slot (ns), 0 while unknown.
    avg_ns: Vec<f64>,
    /// Why the slot's worker is being killed for breaking the protocol, if it is.
    corrupted: Vec<Option<String>>,
    pending: VecDeque<Job>,
    /// The parent's end of each slot's segment channel.
    channels: Vec<RawFd>,
    /// Which segments each slot's worker holds.
    sent: Vec<SentSegments>,
    next_id: u64,
    /// The pool's time limit for every task (`PoolBuilder::task_timeout`).
    pub(crate) task_timeout: Option<Duration>,
    /// How often a task whose worker died is run again (`PoolBuilder::retries`).
    pub(crate) retries: u32,
    /// Jobs accepted and not yet completed (pending + in flight + completing), plus one token
    /// per adaptive `map` that still has items to submit (see `map`).
    pub(crate) outstanding: usize,
    /// Jobs `pump` could not place, to be failed by the caller once the lock is released
    /// (completions may submit work, which takes this lock). Still counted in `outstanding`.
    refused: Vec<(Completion, Error)>,
    pub(crate) phase: Phase,
}

impl Dispatch {
    pub(crate) fn new(ctl: &Control, channels: Vec<RawFd>) -> Dispatch {
        let n = ctl.slots();
        Dispatch {
            // SAFETY: the control segment outlives the dispatcher (both live in `Inner`, which
            // drops the dispatcher first); the parent is the only producer of task rings.
            producers: (0..n)
                .map(|i| unsafe { Producer::attach(&ctl.slot(i).tasks) })
                .collect(),
            arenas: (0..n).map(|_| LocalArena::new(ctl.arena_cap())).collect(),
            inflight: (0..n).map(|_| VecDeque::new()).collect(),
            usable: vec![true; n],
            avg_ns: vec![0.0; n],
            corrupted: vec![None; n],
            pending: VecDeque::new(),
            refused: Vec::new(),
            sent: (0..n).map(|_| SentSegments::default()).collect(),
            channels,
            next_id: 1,
            task_timeout: None,
            retries: 0,
            outstanding: 0,
            phase: Phase::Open,
        }
    }

    /// The error new work gets, if the pool takes none.
    pub(crate) fn refuse(&self) -> Option<Error> {
        match &self.phase {
            Phase::Open => None,
            Phase::Closed | Phase::Stopped => Some(Error::PoolClosed),
            Phase::Broken(e) => Some(e.clone()),
        }
    }

    /// Accepts a job; the caller then calls `pump`.
    pub(crate) fn enqueue(&mut self, job: Job) {
        self.pending.push_back(job);
        self.outstanding += 1;
    }

    fn depth_limit(&self, slot: usize) -> usize {
        let avg = self.avg_ns[slot];
        if avg <= 0.0 {
            return 1;
        }
        (1 + (DEPTH_BUDGET_NS / avg) as usize).min(MAX_DEPTH)
    }

    /// Moves pending jobs into rings. Returns the slots that got work (each once), to be woken
    /// with [`wake`] after the lock is released.
    pub(crate) fn pump(&mut self, ctl: &Control) -> Vec<usize> {
        let mut woken = Vec::new();
        if matches!(self.phase, Phase::Stopped) {
            // Terminating (or joined): nothing new goes out.
            return woken;
        }
        // Slots whose segment channel is full right now (see below): skipped until the next pump.
        let mut channel_full = vec![false; self.producers.len()];
        while let Some(job) = self.pending.front() {
            let len = job.payload.len();
            let mut best: Option<usize> = None;
            for (s, &full) in channel_full.iter().enumerate() {
                if !self.usable[s] || full || self.inflight[s].len() >= self.depth_limit(s) {
                    continue;
                }
                if best.is_none_or(|b| self.inflight[s].len() < self.inflight[b].len()) {
                    best = Some(s);
                }
            }
            let Some(s) = best else { break };
            // An allocation may also move `freed` (restarting an empty arena): undo both.
            let arena_before = (self.arenas[s].head, self.arenas[s].freed);
            let Some(place) = self.arenas[s].alloc(len) else {
                // That worker's argument arena is full; wait for it to drain.
                if self.inflight[s].is_empty() {
                    // Cannot happen: an empty arena fits any payload up to its capacity, which
                    // `submit` checked. Refuse rather than spin.
                    let job = self.pending.pop_front().expect("front exists");
                    self.refused.push((
                        job.done,
                        Error::PayloadTooLarge {
                            size: len,
                            capacity: ctl.arena_cap(),
                        },
                    ));
                    continue;
                }
                break;
            };
            let job = self.pending.pop_front().expect("front exists");
            if !job.segments.is_empty()
                && let Err(e) = self.sent[s].sync(self.channels[s], &job.segments)
            {
                (self.arenas[s].head, self.arenas[s].freed) = arena_before;
                // The sends never block (we hold the dispatch lock). A full channel with tasks
                // queued drains as the worker runs them (it reads the channel before every
                // chunk), and each of their results pumps again: wait for that. A full channel
                // with nothing queued would never drain: fail the job.
                if crate::channel::would_block(&e) && !self.inflight[s].is_empty() {
                    self.pending.push_front(job);
                    channel_full[s] = true;
                    continue;
                }
                self.refused.push((job.done, e));
                continue;
            }
            // SAFETY: `place` is a fresh allocation of `len` bytes inside slot `s`'s argument
            // arena; the worker reads it only after the descriptor is published below.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    job.payload.as_ptr(),
                    ctl.arg_arena(s).add(place.offset),
                    len,
                );
            }
            let id = self.next_id;
            self.next_id += 1;
            let timeout = job.timeout.or(self.task_timeout);
            let d = Descriptor {
                task_id: id,
                call: job.call as u64,
                offset: place.offset as u64,
                len: len as u64,
                // A task descriptor carries its time limit here (see `Descriptor`); at least
                // 1 ns, since 0 means none.
                elapsed_ns: timeout.map_or(0, |t| t.as_nanos().clamp(1, u64::MAX as u128) as u64),
                flags: if job.arg_in_segment {
                    crate::bigpayload::FLAG_ARG_SEGMENT
                } else {
                    0
                },
                ..Descriptor::default()
            };
            let seq = self.producers[s].position();
            match self.producers[s].push(d) {
                Ok(Ok(())) => {}
                // The depth limit keeps rings far from full, and a bad `head` from a broken
                // worker is caught here: requeue and stop using the slot until it is replaced.
                Ok(Err(_)) | Err(_) => {
                    (self.arenas[s].head, self.arenas[s].freed) = arena_before;
                    self.pending.push_front(job);
                    self.usable[s] = false;
                    ctl.slot(s).kill_req.store(1, Ordering::Release);
                    ctl.header().server.notify();
                    continue;
                }
            }
            let retry_payload = (job.attempts < self.retries).then_some(job.payload);
            self.inflight[s].push_back(InFlight {
                id,
                seq,
                arg_end: place.end,
                done: job.done,
                segments: job.segments,
                timeout,
                retry_payload,
                call: job.call,
                attempts: job.attempts,
                arg_in_segment: job.arg_in_segment,
            });
            if !woken.contains(&s) {
                woken.push(s);
            }
        }
        woken
    }

    /// How long the collector may nap without starving any worker: half the queued work of the
    /// busy worker with the least queued behind its running task, if every busy worker has at
    /// least one task queued and that is worth a nap (see `collect`).
    fn pace(&self) -> Option<Duration> {
        let mut slack_ns = f64::INFINITY;
        let mut busy = false;
        for s in 0..self.inflight.len() {
            let queued = self.inflight[s].len();
            if queued == 0 {
                if self.usable[s] && !self.pending.is_empty() {
                    return None; // an idle worker has work waiting for it: pump soon
                }
                continue;
            }
            if queued < 2 || self.avg_ns[s] <= 0.0 {
                return None;
            }
            busy = true;
            slack_ns = slack_ns.min((queued - 1) as f64 * self.avg_ns[s]);
        }
        let nap = Duration::from_nanos((slack_ns / 2.0).min(1e6) as u64);
        (busy && nap >= MIN_PACE_NAP).then_some(nap)
    }

    /// Takes the jobs `pump` refused; run them with [`fail_refused`] after unlocking.
    pub(crate) fn take_refused(&mut self) -> Vec<(Completion, Error)> {
        std::mem::take(&mut self.refused)
    }

    /// Takes every job that has not completed (terminate).
    pub(crate) fn drain_all(&mut self) -> Vec<Completion> {
        let mut out: Vec<Completion> = self.pending.drain(..).map(|j| j.done).collect();
        out.extend(self.refused.drain(..).map(|(done, _)| done));
        for q in &mut self.inflight {
            out.extend(q.drain(..).map(|f| f.done));
        }
        self.outstanding -= out.len();
        out
    }
}

/// Wakes the workers `pump` fed.
pub(crate) fn wake(ctl: &Control, slots: &[usize]) {
    for &s in slots {
        ctl.slot(s).wake.notify();
    }
}

/// The collector role: the consumer side of every result ring. Held by the collector thread, or
/// by a thread waiting in `AsyncResult::get` that collects for itself (see `Helper`).
pub(crate) struct Collect {
    consumers: Vec<Consumer>,
    /// Slots whose replacement worker was requested and not yet confirmed.
    respawning: Vec<bool>,
    /// Our own copy of each slot's `result_freed`: the shared word can be scribbled on by its
    /// worker, so we never read it back, and restore it from here before a replacement starts.
    freed: Vec<u64>,
}

impl Collect {
    pub(crate) fn new(ctl: &Control) -> Collect {
        Collect {
            // SAFETY: the control segment outlives the collector role (both live in `Inner`);
            // whoever holds the role's mutex is the only consumer of the result rings.
            consumers: (0..ctl.slots())
                .map(|i| unsafe { Consumer::attach(&ctl.slot(i).results) })
                .collect(),
            respawning: vec![false; ctl.slots()],
            freed: vec![0; ctl.slots()],
        }
    }

    /// Puts back what slot `s`'s dead worker could have scribbled on in the words we own, before
    /// a replacement attaches: the result ring restarts empty at our position (anything left
    /// in it was drained, or is garbage), and `result_freed` is our copy.
    fn restore(&mut self, ctl: &Control, s: usize) {
        let slot = ctl.slot(s);
        let pos = self.consumers[s].position();
        slot.results.force_consumed(pos);
        slot.results.force_produced(pos);
        // SAFETY: as in `new`; the old consumer is replaced, so there is still exactly one.
        self.consumers[s] = unsafe { Consumer::attach(&slot.results) };
        // Release, SYNC: result-free — the replacement's Acquire load at its start.
        slot.result_freed.store(self.freed[s], Ordering::Release);
    }

    /// True if a result or a death is waiting.
    pub(crate) fn has_work(&self, ctl: &Control) -> bool {
        self.consumers.iter().any(Consumer::has_data)
            // Acquire, SYNC: slot-exit.
            || (0..ctl.slots()).any(|s| ctl.slot(s).exited.load(Ordering::Acquire) != 0)
            || self.respawning.iter().any(|&r| r)
    }
}

/// Drains every result ring, handles deaths and finished respawns once. Returns whether anything
/// happened.
pub(crate) fn poll_once(inner: &Inner, c: &mut Collect) -> bool {
    let ctl = &inner.ctl;
    let n = ctl.slots();
    let mut progressed = false;
    // Deaths are noted before draining, so everything the dead worker pushed is drained first.
    let dead: Vec<usize> = (0..n)
        // Acquire, SYNC: slot-exit.
        .filter(|&s| ctl.slot(s).exited.load(Ordering::Acquire) != 0)
        .collect();
    for (s, consumer) in c.consumers.iter_mut().enumerate() {
        loop {
            match consumer.pop() {
                Ok(Some(d)) => {
                    progressed = true;
                    on_result(inner, s, d, &mut c.freed[s]);
                }
                Ok(None) => break,
                Err(e) => {
                    corrupted(inner, s, e.to_string());
                    break;
                }
            }
        }
    }
    for s in dead {
        progressed = true;
        c.restore(ctl, s);
        c.respawning[s] = on_death(inner, s);
    }
    for (s, waiting) in c.respawning.iter_mut().enumerate() {
        // Acquire, SYNC: spawn-done.
        if *waiting && ctl.slot(s).spawn_req.load(Ordering::Acquire) == 0 {
            *waiting = false;
            progressed = true;
            // Relaxed: published by the Release store of `spawn_req` just read. The pid cannot
            // tell (the replacement may already have run its tasks and been reaped); the server's
            // errno can.
            if ctl.slot(s).spawn_errno.load(Ordering::Relaxed) != 0 {
                spawn_failed(inner, s);
            }
        }
    }
    progressed
}

/// The collector thread's main loop. Returns when the fork server is gone.
///
/// While some thread is collecting for itself (`active_callers > 0`), this thread naps on
/// `callers_left` instead of the futex, so a worker that publishes a result pays no `futex_wake`
/// and this thread does not compete with the waiter for a core. A waiter that gives up spinning
/// to sleep wakes it (`Helper::leave(parking = true)`); otherwise it checks back every
/// `HELPED_NAP`. When nobody helps (results go to callbacks, `map_async` or an `AsyncResult` not
/// yet waited on) it spins `COLLECTOR_SPIN` for the next result before sleeping, and stops
/// spinning the moment a waiter starts helping.
pub(crate) fn collect(inner: &Inner, server_pid: i32) {
    let ctl = &inner.ctl;
    loop {
        let progressed = {
            let mut c = inner.collect.lock().unwrap_or_else(|e| e.into_inner());
            poll_once(inner, &mut c)
        };
        // Acquire, SYNC: server-exiting — the server is past its last use of shared memory and
        // about to `_exit`, so a blocking wait is short (and needs no timeout to notice it).
        let exiting = ctl.header().server_exiting.load(Ordering::Acquire) != 0;
        if let Some(status) = reap_server(server_pid, exiting) {
            let mut c = inner.collect.lock().unwrap_or_else(|e| e.into_inner());
            poll_once(inner, &mut c);
            drop(c);
            server_gone(inner, status);
            return;
        }
        if progressed {
            // Every worker has tasks queued behind the one it runs: nothing is urgent. Nap (a
            // plain sleep: workers see no futex sleeper, so publishing a result stays a store)
            // and drain the results in a batch, instead of spinning on a core the workers need.
            let nap = lock(inner).pace();
            if let Some(nap) = nap {
                std::thread::sleep(nap);
            }
            continue;
        }
        if inner.active_callers.load(Ordering::SeqCst) > 0 {
            let g = inner
                .callers_left
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let _ = inner.callers_left.1.wait_timeout(g, HELPED_NAP);
            continue;
        }
        ctl.header()
            .collector
            .wait_until(COLLECTOR_SPIN, Some(Duration::from_millis(100)), || {
                inner.active_callers.load(Ordering::SeqCst) > 0
                    // Acquire, SYNC: server-exiting.
                    || ctl.header().server_exiting.load(Ordering::Acquire) != 0
                    || inner
                        .collect
                        .try_lock()
                        .map(|c| c.has_work(ctl))
                        .unwrap_or(true)
            });
    }
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, Dispatch> {
    inner.dispatch.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails jobs `pump` refused (call without the dispatch lock).
pub(crate) fn fail_refused(inner: &Inner, refused: Vec<(Completion, Error)>) {
    let n = refused.len();
    for (done, e) in refused {
        done(TaskResult::Err(e));
    }
    finished(inner, n);
}

/// `count` jobs (or map tokens) ended: account for them and wake `join` if they were the last.
pub(crate) fn finished(inner: &Inner, count: usize) {
    if count == 0 {
        return;
    }
    let mut d = lock(inner);
    d.outstanding -= count;
    if d.outstanding == 0 {
        inner.idle.notify_all();
    }
}

/// Handles one result of slot `s`; `freed` is our copy of the slot's `result_freed`.
fn on_result(inner: &Inner, s: usize, d: Descriptor, freed_copy: &mut u64) {
    let ctl = &inner.ctl;
    let cap = ctl.arena_cap();
    let _arg_segments: Vec<crate::channel::SegmentShare>;
    let (done, woken, refused, sock) = {
        let mut g = lock(inner);
        if matches!(g.phase, Phase::Stopped) && g.inflight[s].is_empty() {
            // Terminated: the job was already failed. Free the space and move on.
            drop(g);
            if check_result_place(0, 0, d.arena_end, *freed_copy, cap).is_none() {
                *freed_copy = d.arena_end;
                // Release, SYNC: result-free.
                ctl.slot(s)
                    .result_freed
                    .store(d.arena_end, Ordering::Release);
            }
            return;
        }
        if g.inflight[s].front().is_none_or(|f| f.id != d.task_id) {
            drop(g);
            corrupted(inner, s, format!("result for unknown task {}", d.task_id));
            return;
        }
        let mut f = g.inflight[s].pop_front().expect("front exists");
        g.arenas[s].free_to(f.arg_end);
        // Dropped at the end of this function, after the completion: closing the last fd of a
        // large argument's segment frees its pages, which takes tens of ms for hundreds of MiB,
        // and neither the lock nor the caller waiting for this result should wait for that.
        _arg_segments = std::mem::take(&mut f.segments);
        let sample = (d.elapsed_ns as f64).max(1.0);
        let avg = g.avg_ns[s];
        g.avg_ns[s] = if avg <= 0.0 {
            sample
        } else {
            0.8 * avg + 0.2 * sample
        };
        let woken = g.pump(ctl);
        (f.done, woken, g.take_refused(), g.channels[s])
    };
    wake(ctl, &woken);
    fail_refused(inner, refused);
    let offset = d.offset as usize;
    let len = d.len as usize;
    // Our copy, not the shared word: the worker can write that one.
    let freed = *freed_copy;
    if let Some(detail) = check_result_place(offset, len, d.arena_end, freed, cap) {
        fail_corrupted(inner, s, done, detail);
        return;
    }
    // Shared memory is input from another process: copy the result out first, then decode the
    // copy. The worker (buggy, or scribbling through a stray pointer) could otherwise change bytes
    // under the decoder. The copy is also what lets us give the region back before decoding.
    let mut buf = take_scratch();
    buf.clear();
    buf.reserve(len);
    // SAFETY: `offset + len <= cap` was checked above, so the source lies in slot `s`'s result
    // arena; `buf` has room for `len` bytes and is not shared memory, so the ranges cannot
    // overlap. The worker wrote the bytes before publishing the descriptor (ring-publish); a
    // worker that breaks that promise can only make us copy garbage, which the decoder (or the
    // status check below) rejects: the copy is a plain byte copy, valid for any bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(ctl.result_arena(s).add(offset), buf.as_mut_ptr(), len);
        buf.set_len(len);
    }
    *freed_copy = d.arena_end;
    // Release, SYNC: result-free — our copy is done; the worker may reuse the region.
    ctl.slot(s)
        .result_freed
        .store(d.arena_end, Ordering::Release);
    // A result too large for the arena arrived in a sealed segment of its own (`bigpayload`):
    // decoded where it is, no private copy (the seals make it immutable). Closed at the end of
    // this function, after the completion (freeing its pages takes a while).
    let big = if d.flags & crate::bigpayload::FLAG_RESULT_SEGMENT != 0 {
        use crate::channel::NoResultSegment;
        let mapped = usize::try_from(d.reserved)
            .map_err(|_| NoResultSegment::Worker("result segment length out of range".into()))
            .and_then(|len| {
                let fd = crate::channel::receive_result(sock, d.task_id)?;
                crate::bigpayload::Sealed::open(fd, len).map_err(NoResultSegment::Worker)
            });
        match mapped {
            Ok(m) => Some(m),
            // Our own fd limit: that task fails; its worker is fine and stays.
            Err(NoResultSegment::Dropped(e)) => {
                complete(done, TaskResult::Err(e));
                put_scratch(buf);
                finished(inner, 1);
                return;
            }
            Err(NoResultSegment::Worker(detail)) => {
                put_scratch(buf);
                fail_corrupted(inner, s, done, detail);
                return;
            }
        }
    } else {
        None
    };
    let bytes = match &big {
        Some(m) => m.bytes(),
        None => &buf[..],
    };
    let r = match d.status {
        STATUS_OK => TaskResult::Ok {
            bytes,
            worker: s,
            elapsed_ns: d.elapsed_ns,
            segment: big.as_ref(),
        },
        STATUS_PANICKED => {
            TaskResult::Err(crate::task::panicked(s, &String::from_utf8_lossy(bytes)))
        }
        STATUS_ERROR => TaskResult::Err(Error::Codec {
            detail: String::from_utf8_lossy(bytes).into_owned(),
        }),
        status => {
            put_scratch(buf);
            fail_corrupted(
                inner,
                s,
                done,
                format!("result with unknown status {status}"),
            );
            return;
        }
    };
    complete(done, r);
    put_scratch(buf);
    finished(inner, 1);
}

/// Checks a result's place as its worker described it; `Some(why)` if it breaks the arena's
/// rules. Both sides of every value are checked: the region must lie in the arena, and the new
/// `arena_end` (which we publish as `result_freed`, and which every later worker of the slot then
/// adopts as its head) must neither go back (`< freed`) nor run ahead of anything a FIFO arena of
/// `cap` bytes can produce: a worker allocates at most one lap past the last position we freed,
/// plus one restart at the next lap start (see `arena`), so `arena_end <= freed + 2 * cap`.
pub(crate) fn check_result_place(
    offset: usize,
    len: usize,
    arena_end: u64,
    freed: u64,
    cap: usize,
) -> Option<String> {
    if offset.checked_add(len).is_none_or(|e| e > cap) {
        return Some(format!(
            "result at {offset}+{len} outside the arena of {cap} bytes"
        ));
    }
    let limit = freed.saturating_add(2 * cap as u64);
    if arena_end < freed || arena_end > limit {
        return Some(format!(
            "result arena position {arena_end} outside {freed}..={limit}"
        ));
    }
    None
}

/// Runs a job's completion (user code: the result's `Deserialize`, a `map`'s next chunks) so
/// that a panic in it cannot unwind through the collector or a helping caller. The decoders turn
/// their own panics into the job's error (`unwind::catch`); what is left (a `Drop` of the user's)
/// is reported and ignored, and the caller still counts the job as finished.
fn complete(done: Completion, r: TaskResult<'_>) {
    crate::unwind::guard("a task's completion", move || done(r));
}

thread_local! {
    /// A result's private copy, reused between results on the same thread.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The scratch buffer (taken out, so a nested use gets a fresh one rather than sharing it).
fn take_scratch() -> Vec<u8> {
    SCRATCH.with(std::cell::Cell::take)
}

/// Gives the scratch buffer back, unless it grew past 1 MiB (a one-off big result).
fn put_scratch(buf: Vec<u8>) {
    if buf.capacity() <= 1 << 20 {
        SCRATCH.with(|c| c.set(buf));
    }
}

/// Handles the reaped worker of slot `s`; returns whether a replacement was requested.
fn on_death(inner: &Inner, s: usize) -> bool {
    let ctl = &inner.ctl;
    let slot = ctl.slot(s);
    // Relaxed: ordered by the Acquire load of `exited` that found the death.
    let status = slot.exit_status.load(Ordering::Relaxed) as i32;
    let pid = slot.exit_pid.load(Ordering::Relaxed);
    // When the dead worker started its timed task. Read now, before a replacement is asked for:
    // the replacement writes this word for its own first timed task. Relaxed: ordered by
    // slot-exit, after the dead worker's store.
    let started = slot.task_started_ns.load(Ordering::Relaxed);
    slot.exited.store(0, Ordering::Relaxed);
    let (signal, exit_code) = decode_status(status);
    let init_failed = exit_code == Some(EXIT_INIT_FAILED);
    let mut stranded: Vec<Completion> = Vec::new();
    let mut stranded_error = None;
    let mut running: Vec<InFlight> = Vec::new();
    let mut corruption = lock(inner).corrupted[s].take();
    let (mut failed, respawn, broken_jobs) = {
        let mut guard = lock(inner);
        let g = &mut *guard;
        // The dead worker's `head` says which tasks it took; it could have written anything
        // there, so check both sides: it took at least every task whose result we received
        // (a lower one would have the replacement run delivered tasks again) and at most what
        // we pushed. The `tail` is ours: put our own copy back.
        let taken = slot.tasks.consumed();
        let pushed = g.producers[s].position();
        let answered = g.inflight[s].front().map_or(pushed, |f| f.seq);
        slot.tasks.force_produced(pushed);
        if (taken < answered || taken > pushed) && corruption.is_none() {
            corruption = Some(format!(
                "task ring position {taken} outside {answered}..={pushed}"
            ));
        }
        let ring_broken = taken < answered || taken > pushed;
        let mut failed = Vec::new();
        while g.inflight[s].front().is_some_and(|f| f.seq < taken) {
            let f = g.inflight[s].pop_front().expect("front exists");
            g.arenas[s].free_to(f.arg_end);
            // The task the worker was running when it died: judged below (time limit, retry).
            running.push(f);
        }
        let mut broken_jobs = Vec::new();
        if init_failed {
            // Acquire, SYNC: init-error.
            let n = (slot.init_error_len.load(Ordering::Acquire) as usize).min(ctl.arena_cap());
            // SAFETY: the worker wrote `n` bytes at offset 0 of its result arena before exiting.
            let msg = unsafe { std::slice::from_raw_parts(ctl.result_arena(s), n) };
            let err = Error::InitializerFailed {
                worker: s,
                message: String::from_utf8_lossy(msg).into_owned(),
            };
            g.phase = Phase::Broken(err.clone());
            g.usable[s] = false;
            broken_jobs.extend(g.pending.drain(..).map(|j| j.done));
            broken_jobs.extend(g.inflight[s].drain(..).map(|f| f.done));
            g.arenas[s].reset();
            (failed, false, Some((broken_jobs, err)))
        } else {
            let respawn = matches!(g.phase, Phase::Open | Phase::Closed)
                && ctl.header().shutdown.load(Ordering::Relaxed) == RUNNING;
            if ring_broken {
                // The dead worker scribbled on its ring: nothing in it can be trusted. Fail what
                // it held and restart the ring empty for the replacement.
                failed.extend(g.inflight[s].drain(..).map(|f| f.done));
                g.arenas[s].reset();
                slot.tasks.force_consumed(g.producers[s].position());
            }
            if !respawn {
                // No replacement will run what is still queued in this slot's ring (the pool is
                // broken or stopping): fail it now, or its waiters would wait forever.
                stranded.extend(g.inflight[s].drain(..).map(|f| f.done));
                g.arenas[s].reset();
                g.usable[s] = false;
                slot.tasks.force_consumed(g.producers[s].position());
                stranded_error = Some(match &g.phase {
                    Phase::Broken(e) => e.clone(),
                    _ => Error::PoolTerminated,
                });
            }
            if respawn {
                g.usable[s] = true;
                g.sent[s].reset();
                // The tasks still in the ring go to the replacement, which knows no segment yet
                // (its predecessor read their fds from the socket): send theirs again first.
                let needed: Vec<SegmentShare> = g.inflight[s]
                    .iter()
                    .flat_map(|f| f.segments.iter().cloned())
                    .collect();
                if !needed.is_empty() && g.sent[s].sync(g.channels[s], &needed).is_err() {
                    failed.extend(g.inflight[s].drain(..).map(|f| f.done));
                    g.arenas[s].reset();
                    slot.tasks.force_consumed(g.producers[s].position());
                }
            }
            (failed, respawn, None)
        }
    };
    if respawn {
        slot.init_error_len.store(0, Ordering::Relaxed);
        slot.kill_req.store(0, Ordering::Relaxed);
        slot.spawn_errno.store(0, Ordering::Relaxed);
        // Release, SYNC: server-request.
        slot.spawn_req.store(1, Ordering::Release);
        ctl.header().server.notify();
        // Jobs waiting in `pending` for this slot (all of them, in a one-worker pool) go into
        // the ring now, for the replacement: no result will come to pump them otherwise.
        let (woken, refused) = {
            let mut g = lock(inner);
            let woken = g.pump(ctl);
            (woken, g.take_refused())
        };
        wake(ctl, &woken);
        fail_refused(inner, refused);
    }
    // A worker killed by `terminate` is not a failure of its task.
    let terminated = matches!(lock(inner).phase, Phase::Stopped);
    let mut n_failed = 0;
    for f in running {
        if terminated || corruption.is_some() || init_failed {
            failed.push(f.done);
            continue;
        }
        // The worker's timer SIGKILLs it when the task's limit passes; a SIGKILL from anyone
        // else before that is a plain death.
        let ran = Duration::from_nanos(crate::worker::monotonic_ns().saturating_sub(started));
        if let Some(limit) = f.timeout
            && signal == Some(libc::SIGKILL)
            && ran >= limit
        {
            (f.done)(TaskResult::Err(Error::TaskTimedOut {
                worker: s,
                pid,
                limit,
            }));
            n_failed += 1;
            continue;
        }
        match f.retry_payload {
            // Run it again: back to the front of the queue, for any worker.
            Some(payload) if respawn => {
                let job = Job {
                    payload,
                    call: f.call,
                    done: f.done,
                    segments: f.segments,
                    timeout: f.timeout,
                    attempts: f.attempts + 1,
                    arg_in_segment: f.arg_in_segment,
                };
                let (woken, refused) = {
                    let mut g = lock(inner);
                    g.pending.push_front(job);
                    let woken = g.pump(ctl);
                    (woken, g.take_refused())
                };
                wake(ctl, &woken);
                fail_refused(inner, refused);
            }
            _ => failed.push(f.done),
        }
    }
    n_failed += failed.len();
    for done in failed {
        done(TaskResult::Err(if terminated {
            Error::PoolTerminated
        } else if let Some(detail) = &corruption {
            Error::WorkerCorrupted {
                worker: s,
                detail: detail.clone(),
            }
        } else {
            Error::WorkerDied {
                worker: s,
                pid,
                signal,
                exit_code,
            }
        }));
    }
    let n_stranded = stranded.len();
    if let Some(err) = stranded_error {
        for done in stranded {
            done(TaskResult::Err(err.clone()));
        }
    }
    let mut n_broken = 0;
    if let Some((jobs, err)) = broken_jobs {
        n_broken = jobs.len();
        for done in jobs {
            done(TaskResult::Err(err.clone()));
        }
    }
    finished(inner, n_failed + n_broken + n_stranded);
    respawn
}

fn spawn_failed(inner: &Inner, s: usize) {
    let ctl = &inner.ctl;
    let errno = ctl.slot(s).spawn_errno.load(Ordering::Relaxed) as i32;
    let err = Error::os(
        "fork (replacement worker)",
        std::io::Error::from_raw_os_error(errno),
    );
    let jobs = {
        let mut g = lock(inner);
        g.usable[s] = false;
        let mut jobs: Vec<Completion> = g.inflight[s].drain(..).map(|f| f.done).collect();
        g.arenas[s].reset();
        if !g.usable.iter().any(|&u| u) {
            g.phase = Phase::Broken(err.clone());
            jobs.extend(g.pending.drain(..).map(|j| j.done));
        }
        jobs
    };
    let n = jobs.len();
    for done in jobs {
        done(TaskResult::Err(err.clone()));
    }
    finished(inner, n);
}

/// A result of worker `s` broke the protocol: its task fails with `WorkerCorrupted`, counts as
/// finished, and the worker is killed and replaced (`corrupted`).
fn fail_corrupted(inner: &Inner, s: usize, done: Completion, detail: String) {
    complete(
        done,
        TaskResult::Err(Error::WorkerCorrupted {
            worker: s,
            detail: detail.clone(),
        }),
    );
    finished(inner, 1);
    corrupted(inner, s, detail);
}

fn corrupted(inner: &Inner, s: usize, detail: String) {
    let ctl = &inner.ctl;
    let mut g = lock(inner);
    if matches!(g.phase, Phase::Stopped) {
        return;
    }
    g.usable[s] = false;
    // Kept for the tasks the worker held: they fail with `WorkerCorrupted`, not a bare death.
    g.corrupted[s].get_or_insert(detail);
    drop(g);
    // The server kills it; the death path then fails what it held and replaces it.
    ctl.slot(s).kill_req.store(1, Ordering::Release);
    ctl.header().server.notify();
}

fn server_gone(inner: &Inner, status: i32) {
    let (signal, exit_code) = decode_status(status);
    // A server that exits normally has reaped every worker first (their `pid` is 0). One that
    // died leaves its workers running until their parent-death SIGKILL lands: fail nothing, and
    // so hand no buffer a worker could still write back to its caller, before each is gone.
    for s in 0..inner.ctl.slots() {
        // Relaxed: the server is dead and reaped (`waitpid` ordered its last stores before us).
        crate::process::wait_gone(inner.ctl.slot(s).pid.load(Ordering::Relaxed) as i32);
    }
    let jobs = {
        let mut g = lock(inner);
        let err = match g.phase {
            Phase::Stopped => Error::PoolTerminated,
            _ => Error::PoolBroken {
                detail: format!("the fork server exited (signal {signal:?}, code {exit_code:?})"),
            },
        };
        if !matches!(g.phase, Phase::Stopped) {
            g.phase = Phase::Broken(err.clone());
        }
        g.drain_all()
            .into_iter()
            .map(|d| (d, err.clone()))
            .collect::<Vec<_>>()
    };
    for (done, err) in jobs {
        done(TaskResult::Err(err));
    }
    let g = lock(inner);
    inner.idle.notify_all();
    drop(g);
}

/// Encodes a chunk of items for a job in the chunk wire format (`payload::encode_seq`), checking
/// it fits the arena.
pub(crate) fn encode_items<T: serde::Serialize + 'static>(
    items: &[T],
    cap: usize,
) -> Result<EncodedArg> {
    let mut bytes = Vec::with_capacity(std::mem::size_of_val(items).saturating_add(16).min(cap));
    crate::payload::encode_seq(items, &mut bytes).map_err(Error::codec)?;
    fits(bytes, cap)
}

/// An encoded job argument: its bytes for the arena, or, when they do not fit, the small record
/// that names the segment holding them (`bigpayload`).
#[derive(Debug)]
pub(crate) struct EncodedArg {
    payload: Vec<u8>,
    segment: Option<SegmentShare>,
    /// Encoded size of the argument itself (in the arena or in its segment).
    len: usize,
}

impl EncodedArg {
    /// Encoded size of the argument (what the automatic chunksize learns from).
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl From<Vec<u8>> for EncodedArg {
    fn from(payload: Vec<u8>) -> Self {
        EncodedArg {
            len: payload.len(),
            payload,
            segment: None,
        }
    }
}

/// Encoded bytes as a job argument: in the arena if they fit, in a segment of their own if not.
fn fits(bytes: Vec<u8>, cap: usize) -> Result<EncodedArg> {
    if bytes.len() > cap {
        let (payload, share) = crate::bigpayload::argument(&[], &bytes)?;
        return Ok(EncodedArg {
            payload,
            segment: Some(share),
            len: bytes.len(),
        });
    }
    Ok(bytes.into())
}

/// Encodes a payload for a job, checking it fits the arena.
pub(crate) fn encode<T: serde::Serialize + 'static>(value: &T, cap: usize) -> Result<EncodedArg> {
    // A byte vector too large for the arena goes to its segment straight from its own buffer.
    if let Some(b) = crate::payload::byte_payload(value)
        && b.len() + 10 > cap
    {
        let mut prefix = [0u8; 10];
        let n = crate::payload::varint(b.len() as u64, &mut prefix);
        let (payload, share) = crate::bigpayload::argument(&prefix[..n], b)?;
        return Ok(EncodedArg {
            payload,
            segment: Some(share),
            len: n + b.len(),
        });
    }
    // Sized for the common case (fixed-size items encode to at most their in-memory size plus a
    // few bytes), so encoding rarely reallocates.
    let hint = std::mem::size_of_val(value).saturating_add(16).min(cap);
    let bytes = crate::payload::encode_value(value, Vec::with_capacity(hint))
        .map_err(|e| Error::codec(crate::ser_probe::serialize_error(&e, value)))?;
    fits(bytes, cap)
}
