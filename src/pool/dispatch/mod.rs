//! The parent's side of the transport: the dispatcher that keeps every worker's ring fed, and the
//! collector thread that drains results, detects deaths and asks for replacements.
//!
//! # Dispatch
//!
//! Tasks wait in one `pending` queue in the parent (so an idle worker can always get the next one;
//! nothing is stranded behind a slow task in another worker's ring). `pump` moves tasks from
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
//! publishes `result_freed` so the worker can reuse that space, and then runs the task's
//! completion on the private copy (the worker can no longer change the bytes being decoded).
//! Completions run user code (`Deserialize`); see `unwind` for how its panics are contained.
//!
//! # Death
//!
//! When the fork server reports a worker's death, the collector first drains that worker's result
//! ring, then reads the task ring's `head`: in-flight tasks below it were taken by the dead worker
//! and never answered, so they fail with [`Error::WorkerDied`]; tasks above it are still in the ring
//! and are run by the replacement, which attaches at the same positions.

use std::collections::VecDeque;
use std::time::Duration;

use std::os::fd::RawFd;

use crate::error::Error;
use crate::shm::arena::LocalArena;
use crate::shm::channel::{SegmentShare, SentSegments};
use crate::shm::control::Control;
use crate::shm::ring::{Descriptor, Producer};
use crate::sync::Ordering;

mod arg;
pub(crate) mod collector;

pub(crate) use arg::{EncodedArg, encode, encode_items};
pub(crate) use collector::{CollectorRole, fail_refused, finished, poll_once, run_collector};

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
        /// Encoded bytes (empty when `shared` holds them).
        bytes: &'a [u8],
        /// The encoded bytes still in the worker's reused result segment, which it may write:
        /// only for a task that said it copies them out itself (`PendingTask::reads_shared`;
        /// `bigpayload`, "Reused result segments"). Every other completion gets `bytes`.
        shared: Option<crate::encoding::bigpayload::SharedBytes<'a>>,
        /// Worker seat that ran the task.
        worker: usize,
        /// Time the worker spent in the task.
        elapsed_ns: u64,
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

/// Runs once when a task ends, in the collector thread (or in the thread that fails it).
pub(crate) type Completion = Box<dyn FnOnce(TaskResult<'_>) + Send>;

/// A task not yet in any ring.
pub(crate) struct PendingTask {
    pub(crate) payload: Vec<u8>,
    pub(crate) call: usize,
    pub(crate) done: Completion,
    /// Shared segments the task reads or writes (sent to the worker before the task).
    pub(crate) segments: Vec<SegmentShare>,
    /// This task's time limit, overriding the pool's (`PoolBuilder::task_timeout`).
    pub(crate) timeout: Option<Duration>,
    /// Runs this task already had in workers that died (see `PoolBuilder::retries`).
    attempts: u32,
    /// The argument is in `segments[0]`; `payload` only names it (`bigpayload`).
    arg_in_segment: bool,
    /// The completion reads a result in a reused result segment through
    /// [`TaskResult::Ok`]'s `shared` (copying it out itself) instead of a private copy.
    pub(crate) reads_shared: bool,
}

impl PendingTask {
    pub(crate) fn new(arg: impl Into<EncodedArg>, call: usize, done: Completion) -> PendingTask {
        let arg = arg.into();
        PendingTask {
            payload: arg.payload,
            call,
            done,
            arg_in_segment: arg.segment.is_some(),
            segments: arg.segment.into_iter().collect(),
            timeout: None,
            attempts: 0,
            reads_shared: false,
        }
    }
}

struct InFlight {
    id: u64,
    /// Ring position of the task's descriptor.
    pos: u64,
    /// Argument-arena position to free when the task ends.
    arg_end: u64,
    done: Completion,
    /// Segments the task needs; re-sent if a replacement worker inherits the task.
    segments: Vec<SegmentShare>,
    /// The time limit the worker enforces, if any.
    timeout: Option<Duration>,
    /// The encoded argument, kept only while the task may still be retried.
    retry_payload: Option<Vec<u8>>,
    call: usize,
    attempts: u32,
    arg_in_segment: bool,
    reads_shared: bool,
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
    /// Seat can take work (has a live worker or one being spawned).
    usable: Vec<bool>,
    /// Average task time per seat (ns), 0 while unknown.
    avg_ns: Vec<f64>,
    /// Why the seat's worker is being killed for breaking the protocol, if it is.
    corrupted: Vec<Option<String>>,
    pending: VecDeque<PendingTask>,
    /// The parent's end of each seat's segment channel.
    channels: Vec<RawFd>,
    /// Which segments each seat's worker holds.
    sent: Vec<SentSegments>,
    next_id: u64,
    /// The pool's time limit for every task (`PoolBuilder::task_timeout`).
    pub(crate) task_timeout: Option<Duration>,
    /// How often a task whose worker died is run again (`PoolBuilder::retries`).
    pub(crate) retries: u32,
    /// Tasks accepted and not yet completed (pending + in flight + completing), plus one token
    /// per adaptive `map` that still has items to submit (see `map`).
    pub(crate) outstanding: usize,
    /// Tasks `pump` could not place, to be failed by the caller once the lock is released
    /// (completions may submit work, which takes this lock). Still counted in `outstanding`.
    refused: Vec<(Completion, Error)>,
    pub(crate) phase: Phase,
}

impl Dispatch {
    pub(crate) fn new(ctl: &Control, channels: Vec<RawFd>) -> Dispatch {
        let n = ctl.seats();
        Dispatch {
            // SAFETY: the control segment outlives the dispatcher (both live in `Inner`, which
            // drops the dispatcher first); the parent is the only producer of task rings.
            producers: (0..n)
                .map(|i| unsafe { Producer::attach(&ctl.seat(i).tasks) })
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

    /// Accepts a task; the caller then calls `pump`.
    pub(crate) fn enqueue(&mut self, task: PendingTask) {
        self.pending.push_back(task);
        self.outstanding += 1;
    }

    fn depth_limit(&self, seat: usize) -> usize {
        let avg = self.avg_ns[seat];
        if avg <= 0.0 {
            return 1;
        }
        (1 + (DEPTH_BUDGET_NS / avg) as usize).min(MAX_DEPTH)
    }

    /// Moves pending tasks into rings. Returns the seats that got work (each once), to be woken
    /// with [`wake`] after the lock is released.
    pub(crate) fn pump(&mut self, ctl: &Control) -> Vec<usize> {
        let mut woken = Vec::new();
        if matches!(self.phase, Phase::Stopped) {
            // Terminating (or joined): nothing new goes out.
            return woken;
        }
        // Seats whose segment channel is full right now (see below): skipped until the next pump.
        let mut channel_full = vec![false; self.producers.len()];
        while let Some(task) = self.pending.front() {
            let len = task.payload.len();
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
                    let task = self.pending.pop_front().expect("front exists");
                    self.refused.push((
                        task.done,
                        Error::PayloadTooLarge {
                            size: len,
                            capacity: ctl.arena_cap(),
                        },
                    ));
                    continue;
                }
                break;
            };
            let task = self.pending.pop_front().expect("front exists");
            if !task.segments.is_empty()
                && let Err(e) = self.sent[s].sync(self.channels[s], &task.segments)
            {
                (self.arenas[s].head, self.arenas[s].freed) = arena_before;
                // The sends never block (we hold the dispatch lock). A full channel with tasks
                // queued drains as the worker runs them (it reads the channel before every
                // chunk), and each of their results pumps again: wait for that. A full channel
                // with nothing queued would never drain: fail the task.
                if crate::shm::channel::would_block(&e) && !self.inflight[s].is_empty() {
                    self.pending.push_front(task);
                    channel_full[s] = true;
                    continue;
                }
                self.refused.push((task.done, e));
                continue;
            }
            // SAFETY: `place` is a fresh allocation of `len` bytes inside seat `s`'s argument
            // arena; the worker reads it only after the descriptor is published below.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    task.payload.as_ptr(),
                    ctl.arg_arena(s).add(place.offset),
                    len,
                );
            }
            let id = self.next_id;
            self.next_id += 1;
            let timeout = task.timeout.or(self.task_timeout);
            let d = Descriptor {
                task_id: id,
                call: task.call as u64,
                offset: place.offset as u64,
                len: len as u64,
                // A task descriptor carries its time limit here (see `Descriptor`); at least
                // 1 ns, since 0 means none.
                elapsed_ns: timeout.map_or(0, |t| t.as_nanos().clamp(1, u64::MAX as u128) as u64),
                flags: if task.arg_in_segment {
                    crate::encoding::bigpayload::FLAG_ARG_SEGMENT
                } else {
                    0
                },
                ..Descriptor::default()
            };
            let pos = self.producers[s].position();
            match self.producers[s].push(d) {
                Ok(Ok(())) => {}
                // The depth limit keeps rings far from full, and a bad `head` from a broken
                // worker is caught here: requeue and stop using the seat until it is replaced.
                Ok(Err(_)) | Err(_) => {
                    (self.arenas[s].head, self.arenas[s].freed) = arena_before;
                    self.pending.push_front(task);
                    self.usable[s] = false;
                    ctl.seat(s).kill_req.store(1, Ordering::Release);
                    ctl.header().server.notify();
                    continue;
                }
            }
            let retry_payload = (task.attempts < self.retries).then_some(task.payload);
            self.inflight[s].push_back(InFlight {
                id,
                pos,
                arg_end: place.end,
                done: task.done,
                segments: task.segments,
                timeout,
                retry_payload,
                call: task.call,
                attempts: task.attempts,
                arg_in_segment: task.arg_in_segment,
                reads_shared: task.reads_shared,
            });
            if !woken.contains(&s) {
                woken.push(s);
            }
        }
        woken
    }

    /// How long the collector may nap without starving any worker: half the queued work of the
    /// busy worker with the least queued behind its running task, if every busy worker has at
    /// least one task queued and that is worth a nap (see `run_collector`).
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

    /// Takes the tasks `pump` refused; run them with [`fail_refused`] after unlocking.
    pub(crate) fn take_refused(&mut self) -> Vec<(Completion, Error)> {
        std::mem::take(&mut self.refused)
    }

    /// Takes every task that has not completed (terminate).
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
pub(crate) fn wake(ctl: &Control, seats: &[usize]) {
    for &s in seats {
        ctl.seat(s).wake.notify();
    }
}
