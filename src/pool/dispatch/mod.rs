//! The parent's side of the transport: the dispatcher that keeps every worker's ring fed, and the
//! collector thread that drains results, detects deaths and asks for replacements.
//!
//! # Dispatch
//!
//! Tasks wait in one `pending` queue in the parent (so an idle worker can always get the next one;
//! nothing is stranded behind a slow task in another worker's ring). `pump` moves tasks from
//! `pending` into the least-loaded worker's argument arena and ring, up to a per-worker depth that
//! adapts to the measured task time: `1 + budget / average task time`, capped at `MAX_DEPTH`.
//! Long tasks therefore go out one at a time (perfect balance, like Python's shared queue); tiny
//! tasks are pipelined so a worker never waits for the collector.
//!
//! The budget (queued work per worker) starts at `DEPTH_BUDGET_NS` and adapts to how fast the
//! collector comes back ([`DepthBudget`]): a worker that had to wait for a task that was meant to
//! be queued before it needed it (the task waited here, in `pending`, for room) doubles it, up
//! to `MAX_DEPTH_BUDGET_NS`; each result that finds work still queued lets it shrink back a
//! little, and every budget starts over when the pool has nothing left to do. On a machine with
//! a core to spare the collector answers in microseconds and the budget stays at its start;
//! where the workers have every core, the collector waits for a time slice (milliseconds) and
//! the budget grows to cover that.
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
#[cfg(doc)]
use crate::shm::ring::FLAG_WAITED;
use crate::shm::ring::{Descriptor, Producer};
use crate::sync::Ordering;

mod arg;
pub(crate) mod collector;

pub(crate) use arg::{EncodedArg, encode, encode_items};
pub(crate) use collector::{CollectorRole, fail_refused, finished, poll_once, run_collector};

/// Most tasks queued in one worker's ring.
pub(crate) const MAX_DEPTH: usize = 16;
/// Queued work (ns) a worker may hold beyond the task it runs, at first. Large enough that a
/// chunk of the automatic chunksize (~200 µs) always has a successor waiting, so a worker never
/// idles for a wake-up round trip between chunks; small enough that a task waits behind ~2 ms
/// of another worker's queue while a worker is free (tasks longer than that go out one at a
/// time). Grown per worker when the collector proves slower than that ([`DepthBudget`]), so
/// the wait is up to [`MAX_DEPTH_BUDGET_NS`] then. Both are estimates from the average task
/// time: a task queued behind one much slower than the average waits as long as that one runs.
const DEPTH_BUDGET_NS: f64 = 2_000_000.0;
/// The most [`DepthBudget`] grows to: the most queued work (as estimated from the average task
/// time) a task waits behind in another worker's ring while a worker is free.
///
/// Why it grows at all: with two workers busy on a two-core machine, the collector (a third
/// thread) gets a core only when the scheduler preempts a worker, which takes up to a time slice
/// (milliseconds). At a fixed 2 ms budget, `shmpool hash -a blake3` over the toolchain tree
/// (~1,000 tasks of ~2 ms) left its workers asleep with an empty ring for 110-160 ms of a
/// 1.1-1.3 s run (`perf sched timehist`: time in state S, waiting for a task); with 8 ms, 20 ms,
/// and the run 6% faster.
const MAX_DEPTH_BUDGET_NS: f64 = 16_000_000.0;
/// How fast a grown [`DepthBudget`] shrinks back: each result that found the worker's queue
/// not yet empty takes off this fraction of the excess (half of it in ~180 such results).
const DEPTH_BUDGET_DECAY: f64 = 1.0 / 256.0;
/// How long the collector thread naps while waiters collect for themselves. Waiters that find
/// their result leave without waking it (the saving), so it checks back this often.
const HELPED_NAP: Duration = Duration::from_millis(1);
/// The shortest nap worth taking instead of spinning (see `Dispatch::pace`).
const MIN_PACE_NAP: Duration = Duration::from_micros(20);
/// One worker's queue budget: the queued work (ns) it may hold beyond the task it runs (see the
/// module docs).
///
/// It grows only on proof that the collector came back too late: the worker found its ring
/// empty and waited for a task ([`FLAG_WAITED`] on the result) that the dispatcher had pushed
/// behind another task (so, as far as the dispatcher knew, before the worker needed it) and
/// that had waited in `pending` for room in a ring (so the work was there, held back by the
/// depth limit). A worker whose tasks go out one at a time (each longer than the budget) waits
/// for every task, and a task a caller submits to an idle pool was not there to be queued
/// earlier; that is the design, not a late collector, and does not count.
///
/// Why not "a queued task came back to an empty queue while tasks were pending" (the first
/// version of this signal): the collector refills a worker's ring after each of its results,
/// so its queue empties only when the depth limit has shrunk below it, which one slow task
/// among fast ones does (the average jumps, the limit drops to 1, the queue drains by design).
/// That fired on every such task with a core to spare and grew the budget to its cap for any
/// workload with uneven task times, whatever the collector did.
///
/// A replacement worker inherits its seat's budget (and average task time): both describe the
/// parent's collector and the task mix, not the worker process that died.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DepthBudget(f64);

impl Default for DepthBudget {
    fn default() -> Self {
        DepthBudget(DEPTH_BUDGET_NS)
    }
}

impl DepthBudget {
    /// The budget, in ns.
    pub(crate) fn ns(self) -> f64 {
        self.0
    }

    /// The worker waited for a task it should already have had: double.
    pub(crate) fn ran_dry(&mut self) {
        self.0 = (self.0 * 2.0).min(MAX_DEPTH_BUDGET_NS);
    }

    /// A queued task came back and found work still queued: shrink towards the start.
    pub(crate) fn kept_up(&mut self) {
        self.0 = (self.0 - (self.0 - DEPTH_BUDGET_NS) * DEPTH_BUDGET_DECAY).max(DEPTH_BUDGET_NS);
    }
}

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
    /// Order of acceptance (`Dispatch::enqueue`); tells a task that waited in `pending` for room
    /// from one placed by the pump right after it arrived (see `Dispatch::pumped_through`).
    pub(crate) seq: u64,
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
            seq: 0,
            reads_shared: false,
        }
    }
}

/// How a task was queued, for [`DepthBudget`] (from its [`InFlight`] record).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queued {
    /// Pushed behind another task of the same worker.
    behind: bool,
    /// Waited in `pending` for room in a ring.
    held_back: bool,
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
    /// Another task was in the worker's queue when this one was pushed (see [`DepthBudget`]).
    queued_behind: bool,
    /// This task waited in `pending` for room in a ring before it was pushed.
    held_back: bool,
}

impl InFlight {
    fn queued(&self) -> Queued {
        Queued {
            behind: self.queued_behind,
            held_back: self.held_back,
        }
    }
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
    /// Queued work each seat may hold beyond the task it runs.
    budget: Vec<DepthBudget>,
    /// Why the seat's worker is being killed for breaking the protocol, if it is.
    corrupted: Vec<Option<String>>,
    pending: VecDeque<PendingTask>,
    /// Tasks accepted so far (the next `PendingTask::seq`).
    enqueued: u64,
    /// `enqueued` when the last `pump` ended: a task with a lower `seq` still in `pending` was
    /// there when a pump gave up for lack of room (it waited).
    pumped_through: u64,
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
            budget: vec![DepthBudget::default(); n],
            corrupted: vec![None; n],
            pending: VecDeque::new(),
            enqueued: 0,
            pumped_through: 0,
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
    pub(crate) fn enqueue(&mut self, mut task: PendingTask) {
        task.seq = self.enqueued;
        self.enqueued += 1;
        self.pending.push_back(task);
        self.outstanding += 1;
    }

    fn depth_limit(&self, seat: usize) -> usize {
        let avg = self.avg_ns[seat];
        if avg <= 0.0 {
            return 1;
        }
        (1 + (self.budget[seat].ns() / avg) as usize).min(MAX_DEPTH)
    }

    /// Learns from a task of seat `seat` that just left its in-flight queue (`queued` from its
    /// record: it was pushed behind another task, and it had waited in `pending`), having run
    /// `elapsed_ns`, the worker having waited for it (`waited`, [`FLAG_WAITED`]) or not: the
    /// average task time, and the budget.
    fn learn(&mut self, seat: usize, elapsed_ns: u64, queued: Queued, waited: bool) {
        let sample = (elapsed_ns as f64).max(1.0);
        let avg = self.avg_ns[seat];
        self.avg_ns[seat] = if avg <= 0.0 {
            sample
        } else {
            0.8 * avg + 0.2 * sample
        };
        if queued.behind && queued.held_back && waited {
            self.budget[seat].ran_dry();
        } else if queued.behind && !self.inflight[seat].is_empty() {
            self.budget[seat].kept_up();
        }
    }

    /// The pool has nothing left to do: every budget starts over, so that what one busy stretch
    /// taught does not queue later, unrelated work deeper than it needs (a long-lived pool that
    /// once grew its budgets to 16 ms would otherwise keep them through idle time, since only
    /// results of queued tasks shrink them).
    pub(crate) fn rest(&mut self) {
        self.budget.fill(DepthBudget::default());
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
            let queued_behind = !self.inflight[s].is_empty();
            let held_back = task.seq < self.pumped_through;
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
                queued_behind,
                held_back,
            });
            if !woken.contains(&s) {
                woken.push(s);
            }
        }
        self.pumped_through = self.enqueued;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A dispatcher of one seat given `n` tasks of 8 bytes, pumped once.
    fn dispatch_with(ctl: &Control, n: usize) -> Dispatch {
        let mut d = Dispatch::new(ctl, vec![-1]);
        for _ in 0..n {
            d.enqueue(PendingTask::new(vec![0u8; 8], 0, Box::new(|_| {})));
        }
        d.pump(ctl);
        d
    }

    /// The worker's end of seat 0's task ring.
    fn worker(ctl: &Control) -> crate::shm::ring::Consumer {
        // SAFETY: the control segment outlives the consumer (each test drops it first), and
        // nothing else consumes this ring: there is no worker.
        unsafe { crate::shm::ring::Consumer::attach(&ctl.seat(0).tasks) }
    }

    /// The worker takes seat 0's next task and answers it after `elapsed_ns`, having waited
    /// for it or not (`waited`, [`FLAG_WAITED`]); the collector does its bookkeeping and pumps
    /// (as `on_result` does).
    fn complete(
        d: &mut Dispatch,
        ctl: &Control,
        w: &mut crate::shm::ring::Consumer,
        elapsed_ns: u64,
        waited: bool,
    ) {
        let task = w.pop().unwrap().expect("a task in the ring");
        let f = d.inflight[0].pop_front().expect("a task in flight");
        assert_eq!(task.task_id, f.id);
        d.arenas[0].free_to(f.arg_end);
        d.learn(0, elapsed_ns, f.queued(), waited);
        d.outstanding -= 1;
        d.pump(ctl);
    }

    #[test]
    fn a_depth_budget_doubles_up_to_its_cap_and_shrinks_back_to_its_start() {
        let mut b = DepthBudget::default();
        assert_eq!(b.ns(), DEPTH_BUDGET_NS);
        b.kept_up();
        assert_eq!(b.ns(), DEPTH_BUDGET_NS, "never below the start");
        b.ran_dry();
        assert_eq!(b.ns(), 2.0 * DEPTH_BUDGET_NS);
        for _ in 0..10 {
            b.ran_dry();
        }
        assert_eq!(b.ns(), MAX_DEPTH_BUDGET_NS);
        b.kept_up();
        assert!(b.ns() < MAX_DEPTH_BUDGET_NS);
        for _ in 0..10_000 {
            b.kept_up();
        }
        assert!(b.ns() - DEPTH_BUDGET_NS < 1.0, "{}", b.ns());
    }

    #[test]
    fn a_worker_that_waited_for_a_task_held_back_in_pending_gets_a_deeper_queue() {
        let ctl = Control::new(1, 1 << 20).unwrap();
        let mut w = worker(&ctl);
        let mut d = dispatch_with(&ctl, 1000);
        // Nothing known yet: one task goes out, and the worker waited for it (it had none).
        assert_eq!(d.inflight[0].len(), 1);
        complete(&mut d, &ctl, &mut w, 1_000_000, true);
        assert_eq!(
            d.budget[0],
            DepthBudget::default(),
            "a lone task teaches nothing"
        );
        // Tasks of 1 ms: two queued behind the running one fill the 2 ms budget.
        assert_eq!(d.inflight[0].len(), 3);
        // The collector keeps up: the worker never waits.
        for _ in 0..3 {
            complete(&mut d, &ctl, &mut w, 1_000_000, false);
            assert_eq!(d.inflight[0].len(), 3);
        }
        assert_eq!(d.budget[0], DepthBudget::default());
        // The collector comes back late: the worker answered its three tasks and waited; the
        // tasks pushed behind them (held back in `pending`) came too late. The budget doubles,
        // and the worker gets a deeper queue.
        complete(&mut d, &ctl, &mut w, 1_000_000, false);
        complete(&mut d, &ctl, &mut w, 1_000_000, false);
        complete(&mut d, &ctl, &mut w, 1_000_000, false);
        complete(&mut d, &ctl, &mut w, 1_000_000, true);
        assert_eq!(d.budget[0].ns(), 2.0 * DEPTH_BUDGET_NS);
        assert_eq!(d.inflight[0].len(), 5);
        // Late every time: it stops at the cap.
        for _ in 0..10 {
            complete(&mut d, &ctl, &mut w, 1_000_000, true);
        }
        assert_eq!(d.budget[0].ns(), MAX_DEPTH_BUDGET_NS);
        assert_eq!(d.inflight[0].len(), MAX_DEPTH);
        // On time again: it shrinks back.
        for _ in 0..100 {
            complete(&mut d, &ctl, &mut w, 1_000_000, false);
        }
        assert!(d.budget[0].ns() < MAX_DEPTH_BUDGET_NS);
        assert!(d.budget[0].ns() > DEPTH_BUDGET_NS);
        // The pool runs out of work (`finished`): it starts over.
        d.rest();
        assert_eq!(d.budget[0], DepthBudget::default());
    }

    #[test]
    fn a_queue_drained_by_one_slow_task_among_fast_ones_leaves_the_budget_alone() {
        // The first signal ("a queued task came back to an empty queue while tasks were
        // pending") fired here, with the collector on time: it grew the budget to its cap for
        // any workload with uneven task times (chunks of a heterogeneous `map`).
        let ctl = Control::new(1, 1 << 20).unwrap();
        let mut w = worker(&ctl);
        let mut d = dispatch_with(&ctl, 1000);
        complete(&mut d, &ctl, &mut w, 1_000_000, true);
        for _ in 0..20 {
            complete(&mut d, &ctl, &mut w, 1_000_000, false);
        }
        assert_eq!(d.inflight[0].len(), 3);
        // One task of 100 ms: the average jumps, the limit drops to 1, the two queued behind it
        // run and the queue empties, by design, with hundreds of tasks pending. The worker
        // waits for each task that now goes out alone.
        complete(&mut d, &ctl, &mut w, 100_000_000, false);
        assert_eq!(d.inflight[0].len(), 2);
        complete(&mut d, &ctl, &mut w, 1_000_000, false);
        complete(&mut d, &ctl, &mut w, 1_000_000, false);
        assert_eq!(d.inflight[0].len(), 1);
        assert!(d.pending.len() > 900);
        for _ in 0..5 {
            complete(&mut d, &ctl, &mut w, 1_000_000, true);
        }
        assert_eq!(d.budget[0], DepthBudget::default());
    }

    #[test]
    fn tasks_that_go_out_one_at_a_time_or_arrive_at_an_idle_worker_leave_the_budget_alone() {
        let ctl = Control::new(1, 1 << 20).unwrap();
        let mut w = worker(&ctl);
        let mut d = dispatch_with(&ctl, 10);
        // Tasks of 10 ms: one at a time, and the worker waits for each, by design.
        for _ in 0..10 {
            assert_eq!(d.inflight[0].len(), 1);
            complete(&mut d, &ctl, &mut w, 10_000_000, true);
            assert_eq!(d.budget[0], DepthBudget::default());
        }
        assert!(d.inflight[0].is_empty());
        // Short tasks submitted one by one as a caller gets to them: each goes out at once
        // (never held back), behind the last one whose result the collector has not seen;
        // the worker, done with that one, waits. No queue would have helped.
        let mut d = dispatch_with(&ctl, 0);
        d.enqueue(PendingTask::new(vec![0u8; 8], 0, Box::new(|_| {})));
        d.pump(&ctl);
        complete(&mut d, &ctl, &mut w, 100_000, true);
        for _ in 0..20 {
            d.enqueue(PendingTask::new(vec![0u8; 8], 0, Box::new(|_| {})));
            d.pump(&ctl);
            d.enqueue(PendingTask::new(vec![0u8; 8], 0, Box::new(|_| {})));
            d.pump(&ctl);
            assert_eq!(d.inflight[0].len(), 2);
            complete(&mut d, &ctl, &mut w, 100_000, true);
            complete(&mut d, &ctl, &mut w, 100_000, true);
        }
        assert_eq!(d.budget[0], DepthBudget::default());
    }
}
