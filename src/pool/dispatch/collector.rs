//! Collection: the collector role (the consumer side of every result ring), results, deaths,
//! respawns and a fork server that is gone (see the `dispatch` module docs, "Collection" and
//! "Death").

use std::time::Duration;

use crate::error::Error;
use crate::pool::Inner;
use crate::process::exit::{decode_status, reap_server};
use crate::shm::channel::SegmentShare;
use crate::shm::control::{Control, RUNNING};
use crate::shm::ring::{
    Consumer, Descriptor, FLAG_WAITED, STATUS_ERROR, STATUS_OK, STATUS_PANICKED,
};
use crate::sync::Ordering;
use crate::unwind::EXIT_INIT_FAILED;

use super::{
    COLLECTOR_SPIN, Completion, Dispatch, HELPED_NAP, InFlight, PendingTask, Phase, TaskResult,
    wake,
};

/// The collector role: the consumer side of every result ring. Held by the collector thread, or
/// by a thread waiting in `AsyncResult::get` that collects for itself (see `Helper`).
pub(crate) struct CollectorRole {
    consumers: Vec<Consumer>,
    /// Seats whose replacement worker was requested and not yet confirmed.
    respawning: Vec<bool>,
    /// Our own copy of each seat's `result_freed`: the shared word can be scribbled on by its
    /// worker, so we never read it back, and restore it from here before a replacement starts.
    freed: Vec<u64>,
    /// A result's private copy, reused between results (kept up to `task::kept_scratch`): one
    /// per pool, not per thread, so a caller that helped collect keeps no memory of it. The
    /// role's mutex is held while a completion runs, so no nested use can share it.
    scratch: Vec<u8>,
    /// Each seat's mapping of its worker's reused result segment (`bigpayload`, "Reused result
    /// segments"), kept between results; dropped when the seat's worker dies.
    result_maps: Vec<Option<crate::encoding::bigpayload::ResultMap>>,
}

impl CollectorRole {
    pub(crate) fn new(ctl: &Control) -> CollectorRole {
        CollectorRole {
            // SAFETY: the control segment outlives the collector role (both live in `Inner`);
            // whoever holds the role's mutex is the only consumer of the result rings.
            consumers: (0..ctl.seats())
                .map(|i| unsafe { Consumer::attach(&ctl.seat(i).results) })
                .collect(),
            respawning: vec![false; ctl.seats()],
            freed: vec![0; ctl.seats()],
            scratch: Vec::new(),
            result_maps: (0..ctl.seats()).map(|_| None).collect(),
        }
    }

    /// Puts back what seat `s`'s dead worker could have scribbled on in the words we own, before
    /// a replacement attaches: the result ring restarts empty at our position (anything left
    /// in it was drained, or is garbage), and `result_freed` is our copy.
    fn restore(&mut self, ctl: &Control, s: usize) {
        let seat = ctl.seat(s);
        let pos = self.consumers[s].position();
        seat.results.force_consumed(pos);
        seat.results.force_produced(pos);
        // SAFETY: as in `new`; the old consumer is replaced, so there is still exactly one.
        self.consumers[s] = unsafe { Consumer::attach(&seat.results) };
        // Release, SYNC: result-free — the replacement's Acquire load at its start.
        seat.result_freed.store(self.freed[s], Ordering::Release);
        // The dead worker's reused result segment: our mapping goes (its last reference), and
        // the replacement, which makes its own, starts with the word clear. Relaxed: the
        // replacement is forked after this (the spawn request's Release store orders it).
        self.result_maps[s] = None;
        seat.result_segment_busy.store(0, Ordering::Relaxed);
    }

    /// True if a result or a death is waiting.
    pub(crate) fn has_work(&self, ctl: &Control) -> bool {
        self.consumers.iter().any(Consumer::has_data)
            // Acquire, SYNC: seat-exit.
            || (0..ctl.seats()).any(|s| ctl.seat(s).exited.load(Ordering::Acquire) != 0)
            || self.respawning.iter().any(|&r| r)
    }
}

/// Drains every result ring, handles deaths and finished respawns once. Returns whether anything
/// happened.
pub(crate) fn poll_once(inner: &Inner, c: &mut CollectorRole) -> bool {
    let ctl = &inner.ctl;
    let n = ctl.seats();
    let mut progressed = false;
    // Deaths are noted before draining, so everything the dead worker pushed is drained first.
    let dead: Vec<usize> = (0..n)
        // Acquire, SYNC: seat-exit.
        .filter(|&s| ctl.seat(s).exited.load(Ordering::Acquire) != 0)
        .collect();
    for (s, consumer) in c.consumers.iter_mut().enumerate() {
        loop {
            match consumer.pop() {
                Ok(Some(d)) => {
                    progressed = true;
                    let seat = SeatState {
                        freed: &mut c.freed[s],
                        result_map: &mut c.result_maps[s],
                    };
                    on_result(inner, s, d, seat, &mut c.scratch);
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
        if *waiting && ctl.seat(s).spawn_req.load(Ordering::Acquire) == 0 {
            *waiting = false;
            progressed = true;
            // Relaxed: published by the Release store of `spawn_req` just read. The pid cannot
            // tell (the replacement may already have run its tasks and been reaped); the server's
            // errno can.
            if ctl.seat(s).spawn_errno.load(Ordering::Relaxed) != 0 {
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
pub(crate) fn run_collector(inner: &Inner, server_pid: i32) {
    let ctl = &inner.ctl;
    loop {
        let progressed = {
            let mut c = inner
                .collector_role
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            poll_once(inner, &mut c)
        };
        // Acquire, SYNC: server-exiting — the server is past its last use of shared memory and
        // about to `_exit`, so a blocking wait is short (and needs no timeout to notice it).
        let exiting = ctl.header().server_exiting.load(Ordering::Acquire) != 0;
        if let Some(status) = reap_server(server_pid, exiting) {
            let mut c = inner
                .collector_role
                .lock()
                .unwrap_or_else(|e| e.into_inner());
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
                        .collector_role
                        .try_lock()
                        .map(|c| c.has_work(ctl))
                        .unwrap_or(true)
            });
    }
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, Dispatch> {
    inner.dispatch.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails tasks `pump` refused (call without the dispatch lock).
pub(crate) fn fail_refused(inner: &Inner, refused: Vec<(Completion, Error)>) {
    let n = refused.len();
    for (done, e) in refused {
        done(TaskResult::Err(e));
    }
    finished(inner, n);
}

/// `count` tasks (or map tokens) ended: account for them and wake `join` if they were the last.
pub(crate) fn finished(inner: &Inner, count: usize) {
    if count == 0 {
        return;
    }
    let mut d = lock(inner);
    d.outstanding -= count;
    if d.outstanding == 0 {
        d.rest();
        inner.idle.notify_all();
    }
}

/// What the collector role keeps of one seat, for [`on_result`].
struct SeatState<'a> {
    /// Our copy of the seat's `result_freed`.
    freed: &'a mut u64,
    /// Our mapping of the seat's reused result segment.
    result_map: &'a mut Option<crate::encoding::bigpayload::ResultMap>,
}

/// Handles one result of seat `s`.
fn on_result(inner: &Inner, s: usize, d: Descriptor, seat: SeatState<'_>, scratch: &mut Vec<u8>) {
    let ctl = &inner.ctl;
    let cap = ctl.arena_cap();
    let SeatState {
        freed: freed_copy,
        result_map,
    } = seat;
    let (done, woken, refused, sock, arg_segments, reads_shared) = {
        let mut g = lock(inner);
        if matches!(g.phase, Phase::Stopped) && g.inflight[s].is_empty() {
            // Terminated: the task was already failed. Free the space and move on.
            drop(g);
            if check_result_place(0, 0, d.arena_end, *freed_copy, cap).is_none() {
                *freed_copy = d.arena_end;
                // Release, SYNC: result-free.
                ctl.seat(s)
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
        g.learn(s, d.elapsed_ns, f.queued(), d.flags & FLAG_WAITED != 0);
        let woken = g.pump(ctl);
        let segments = std::mem::take(&mut f.segments);
        (
            f.done,
            woken,
            g.take_refused(),
            g.channels[s],
            segments,
            f.reads_shared,
        )
    };
    wake(ctl, &woken);
    fail_refused(inner, refused);
    // The task's shares of its segments go outside the lock (closing the last fd of a large
    // argument's segment frees its pages, tens of ms for hundreds of MiB; a reused one only goes
    // back to the pool's spares) but before the completion: once a call has returned, the pool
    // holds no share of its inputs, so a `MappedFile` the caller drops next is seen dropped at
    // the next dispatch, whose `FORGET` makes the worker close its fd (a share still held here
    // when the caller dropped it left the worker holding the file until a later dispatch).
    drop(arg_segments);
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
    let mut buf = std::mem::take(scratch);
    buf.clear();
    buf.reserve(len);
    // SAFETY: `offset + len <= cap` was checked above, so the source lies in seat `s`'s result
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
    ctl.seat(s)
        .result_freed
        .store(d.arena_end, Ordering::Release);
    // A result too large for the arena arrived in a segment of its own (`bigpayload`). A sealed
    // one is decoded where it is, no private copy (the seals make it immutable); it is closed
    // at the end of this function, after the completion (freeing its pages takes a while). The
    // worker's reused one ("Reused result segments") can still be written by the worker: it is
    // only copied out of, by the completion itself if the task said it does (a byte vector:
    // the copy into its `Vec` is the decode), else here into a private copy.
    let flags = d.flags;
    let big = if flags & crate::encoding::bigpayload::FLAG_RESULT_SEGMENT != 0 {
        use crate::shm::channel::NoResultSegment;
        let reused = flags & crate::encoding::bigpayload::FLAG_RESULT_REUSED != 0;
        let mapped = usize::try_from(d.reserved)
            .map_err(|_| NoResultSegment::Worker("result segment length out of range".into()))
            .and_then(|len| {
                let fd = crate::shm::channel::receive_result(sock, d.task_id)?;
                // A worker writes no more than this into its reused segment; a larger length
                // would have us map (and populate) whatever the segment was grown to.
                let bound = cap.saturating_mul(crate::encoding::bigpayload::REUSE_MAX_ARENAS);
                if reused && len > bound {
                    return Err(NoResultSegment::Worker(format!(
                        "reused result segment: {len} bytes announced, at most {bound} written"
                    )));
                }
                if reused {
                    crate::encoding::bigpayload::ResultMap::open(result_map, fd, len)
                        .map(BigResult::Shared)
                        .map_err(NoResultSegment::Worker)
                } else {
                    crate::encoding::bigpayload::Sealed::open(fd, len)
                        .map(BigResult::Sealed)
                        .map_err(NoResultSegment::Worker)
                }
            });
        match mapped {
            Ok(m) => Some(m),
            // Our own fd limit: that task fails; its worker is fine and stays (and may rewrite
            // its reused segment: we read nothing of it).
            Err(NoResultSegment::Dropped(e)) => {
                if flags & crate::encoding::bigpayload::FLAG_RESULT_REUSED != 0 {
                    // Release, SYNC: result-segment-free.
                    ctl.seat(s).result_segment_busy.store(0, Ordering::Release);
                }
                complete(done, TaskResult::Err(e));
                put_scratch(scratch, buf, cap);
                finished(inner, 1);
                return;
            }
            Err(NoResultSegment::Worker(detail)) => {
                put_scratch(scratch, buf, cap);
                fail_corrupted(inner, s, done, detail);
                return;
            }
        }
    } else {
        None
    };
    // Only an `Ok` result of a task that reads shared bytes itself gets them; every other one
    // a private copy (a lying worker's status messages included).
    let mut shared = None;
    let mut private = None;
    if let Some(BigResult::Shared(b)) = &big {
        if reads_shared && d.status == STATUS_OK {
            shared = Some(*b);
        } else {
            private = Some(b.copy_all());
        }
    }
    let bytes = match (&big, &private) {
        (_, Some(p)) => &p[..],
        (Some(BigResult::Sealed(m)), _) => m.bytes(),
        (Some(BigResult::Shared(_)), None) => &[][..],
        (None, _) => &buf[..],
    };
    let r = match d.status {
        STATUS_OK => TaskResult::Ok {
            bytes,
            shared,
            worker: s,
            elapsed_ns: d.elapsed_ns,
        },
        STATUS_PANICKED => TaskResult::Err(crate::encoding::task::panicked(
            s,
            &String::from_utf8_lossy(bytes),
        )),
        STATUS_ERROR => TaskResult::Err(Error::Codec {
            detail: String::from_utf8_lossy(bytes).into_owned(),
        }),
        status => {
            put_scratch(scratch, buf, cap);
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
    if matches!(big, Some(BigResult::Shared(_))) {
        // Release, SYNC: result-segment-free — the completion has copied the result out; the
        // worker's Acquire load before it rewrites the segment.
        ctl.seat(s).result_segment_busy.store(0, Ordering::Release);
    }
    put_scratch(scratch, buf, cap);
    finished(inner, 1);
}

/// A result that came in a segment of its own.
enum BigResult<'m> {
    /// Sealed: immutable, decoded in place.
    Sealed(crate::encoding::bigpayload::Sealed),
    /// The worker's reused segment: only copied out of.
    Shared(crate::encoding::bigpayload::SharedBytes<'m>),
}

/// Checks a result's place as its worker described it; `Some(why)` if it breaks the arena's
/// rules. Both sides of every value are checked: the region must lie in the arena, and the new
/// `arena_end` (which we publish as `result_freed`, and which every later worker of the seat then
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

/// Runs a task's completion (user code: the result's `Deserialize`, a `map`'s next chunks) so
/// that a panic in it cannot unwind through the collector or a helping caller. The decoders turn
/// their own panics into the task's error (`unwind::catch`); what is left (a `Drop` of the user's)
/// is reported and ignored, and the caller still counts the task as finished.
fn complete(done: Completion, r: TaskResult<'_>) {
    crate::unwind::guard("a task's completion", move || done(r));
}

/// Gives the scratch buffer back, unless it grew past what we keep (a one-off big result).
fn put_scratch(scratch: &mut Vec<u8>, buf: Vec<u8>, arena_cap: usize) {
    if buf.capacity() <= crate::encoding::task::kept_scratch(arena_cap) {
        *scratch = buf;
    }
}

/// Handles the reaped worker of seat `s`; returns whether a replacement was requested.
fn on_death(inner: &Inner, s: usize) -> bool {
    let ctl = &inner.ctl;
    let seat = ctl.seat(s);
    // Relaxed: ordered by the Acquire load of `exited` that found the death.
    let status = seat.exit_status.load(Ordering::Relaxed) as i32;
    let pid = seat.exit_pid.load(Ordering::Relaxed);
    // When the dead worker started its timed task. Read now, before a replacement is asked for:
    // the replacement writes this word for its own first timed task. Relaxed: ordered by
    // seat-exit, after the dead worker's store.
    let started = seat.task_started_ns.load(Ordering::Relaxed);
    seat.exited.store(0, Ordering::Relaxed);
    let (signal, exit_code) = decode_status(status);
    let init_failed = exit_code == Some(EXIT_INIT_FAILED);
    let mut stranded: Vec<Completion> = Vec::new();
    let mut stranded_error = None;
    let mut running: Vec<InFlight> = Vec::new();
    let mut corruption = lock(inner).corrupted[s].take();
    let (mut failed, respawn, broken_tasks) = {
        let mut guard = lock(inner);
        let g = &mut *guard;
        // The dead worker's `head` says which tasks it took; it could have written anything
        // there, so check both sides: it took at least every task whose result we received
        // (a lower one would have the replacement run delivered tasks again) and at most what
        // we pushed. The `tail` is ours: put our own copy back.
        let taken = seat.tasks.consumed();
        let pushed = g.producers[s].position();
        let answered = g.inflight[s].front().map_or(pushed, |f| f.pos);
        seat.tasks.force_produced(pushed);
        if (taken < answered || taken > pushed) && corruption.is_none() {
            corruption = Some(format!(
                "task ring position {taken} outside {answered}..={pushed}"
            ));
        }
        let ring_broken = taken < answered || taken > pushed;
        let mut failed = Vec::new();
        while g.inflight[s].front().is_some_and(|f| f.pos < taken) {
            let f = g.inflight[s].pop_front().expect("front exists");
            g.arenas[s].free_to(f.arg_end);
            // The task the worker was running when it died: judged below (time limit, retry).
            running.push(f);
        }
        let mut broken_tasks = Vec::new();
        if init_failed {
            // Acquire, SYNC: init-error.
            let n = (seat.init_error_len.load(Ordering::Acquire) as usize).min(ctl.arena_cap());
            // SAFETY: the worker wrote `n` bytes at offset 0 of its result arena before exiting.
            let msg = unsafe { std::slice::from_raw_parts(ctl.result_arena(s), n) };
            let err = Error::InitializerFailed {
                worker: s,
                message: String::from_utf8_lossy(msg).into_owned(),
            };
            g.phase = Phase::Broken(err.clone());
            g.usable[s] = false;
            broken_tasks.extend(g.pending.drain(..).map(|j| j.done));
            broken_tasks.extend(g.inflight[s].drain(..).map(|f| f.done));
            g.arenas[s].reset();
            (failed, false, Some((broken_tasks, err)))
        } else {
            let respawn = matches!(g.phase, Phase::Open | Phase::Closed)
                && ctl.header().shutdown.load(Ordering::Relaxed) == RUNNING;
            if ring_broken {
                // The dead worker scribbled on its ring: nothing in it can be trusted. Fail what
                // it held and restart the ring empty for the replacement.
                failed.extend(g.inflight[s].drain(..).map(|f| f.done));
                g.arenas[s].reset();
                seat.tasks.force_consumed(g.producers[s].position());
            }
            if !respawn {
                // No replacement will run what is still queued in this seat's ring (the pool is
                // broken or stopping): fail it now, or its waiters would wait forever.
                stranded.extend(g.inflight[s].drain(..).map(|f| f.done));
                g.arenas[s].reset();
                g.usable[s] = false;
                seat.tasks.force_consumed(g.producers[s].position());
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
                    seat.tasks.force_consumed(g.producers[s].position());
                }
            }
            (failed, respawn, None)
        }
    };
    if respawn {
        seat.init_error_len.store(0, Ordering::Relaxed);
        seat.kill_req.store(0, Ordering::Relaxed);
        seat.spawn_errno.store(0, Ordering::Relaxed);
        // Release, SYNC: server-request.
        seat.spawn_req.store(1, Ordering::Release);
        ctl.header().server.notify();
        // Tasks waiting in `pending` for this seat (all of them, in a one-worker pool) go into
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
        let ran =
            Duration::from_nanos(crate::process::worker::monotonic_ns().saturating_sub(started));
        if let Some(limit) = f.timeout
            && signal == Some(libc::SIGKILL)
            && ran >= limit
        {
            // Its shares of its segments go before the completion, as on every other path: once
            // the call has returned, the pool holds no share of its inputs (see `on_result`).
            let InFlight { done, segments, .. } = f;
            drop(segments);
            done(TaskResult::Err(Error::TaskTimedOut {
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
                let task = PendingTask {
                    payload,
                    call: f.call,
                    done: f.done,
                    segments: f.segments,
                    timeout: f.timeout,
                    attempts: f.attempts + 1,
                    // Not from `enqueue`: lower than any `pumped_through`, it waited.
                    seq: 0,
                    arg_in_segment: f.arg_in_segment,
                    reads_shared: f.reads_shared,
                };
                let (woken, refused) = {
                    let mut g = lock(inner);
                    g.pending.push_front(task);
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
    if let Some((tasks, err)) = broken_tasks {
        n_broken = tasks.len();
        for done in tasks {
            done(TaskResult::Err(err.clone()));
        }
    }
    finished(inner, n_failed + n_broken + n_stranded);
    respawn
}

fn spawn_failed(inner: &Inner, s: usize) {
    let ctl = &inner.ctl;
    let errno = ctl.seat(s).spawn_errno.load(Ordering::Relaxed) as i32;
    let err = Error::os(
        "fork (replacement worker)",
        std::io::Error::from_raw_os_error(errno),
    );
    let tasks = {
        let mut g = lock(inner);
        g.usable[s] = false;
        let mut tasks: Vec<Completion> = g.inflight[s].drain(..).map(|f| f.done).collect();
        g.arenas[s].reset();
        if !g.usable.iter().any(|&u| u) {
            g.phase = Phase::Broken(err.clone());
            tasks.extend(g.pending.drain(..).map(|j| j.done));
        }
        tasks
    };
    let n = tasks.len();
    for done in tasks {
        done(TaskResult::Err(err.clone()));
    }
    finished(inner, n);
}

/// A result of worker `s` broke the protocol: its task fails with `WorkerCorrupted`, counts as
/// finished, and the worker is killed and replaced (`corrupted`).
fn fail_corrupted(inner: &Inner, s: usize, done: Completion, detail: String) {
    // The seat is taken out of use *before* the caller hears of it: a caller that submits its
    // next task as soon as it sees `WorkerCorrupted` must not have it sent to the same corrupt
    // worker (it was, now and then: `result_segments::a_task_that_replaces_its_result_segment_
    // cannot_hurt_the_parent` saw the fake segment refused twice).
    corrupted(inner, s, detail.clone());
    complete(
        done,
        TaskResult::Err(Error::WorkerCorrupted { worker: s, detail }),
    );
    finished(inner, 1);
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
    ctl.seat(s).kill_req.store(1, Ordering::Release);
    ctl.header().server.notify();
}

fn server_gone(inner: &Inner, status: i32) {
    let (signal, exit_code) = decode_status(status);
    // A server that exits normally has reaped every worker first (their `pid` is 0). One that
    // died leaves its workers running until their parent-death SIGKILL lands: fail nothing, and
    // so hand no buffer a worker could still write back to its caller, before each is gone.
    for s in 0..inner.ctl.seats() {
        // Relaxed: the server is dead and reaped (`waitpid` ordered its last stores before us).
        crate::process::exit::wait_gone(inner.ctl.seat(s).pid.load(Ordering::Relaxed) as i32);
    }
    let tasks = {
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
    for (done, err) in tasks {
        done(TaskResult::Err(err));
    }
    let g = lock(inner);
    inner.idle.notify_all();
    drop(g);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_copy_of_a_one_mib_item_is_kept_and_a_one_off_big_one_is_not() {
        let cap = crate::DEFAULT_ARENA_SIZE;
        let mut scratch = Vec::new();
        // A chunk of one 1 MiB byte vector: 1 MiB plus its lengths and header. Kept, so the next
        // such result is copied into warm memory instead of freshly faulted pages.
        put_scratch(&mut scratch, Vec::with_capacity((1 << 20) + 16), cap);
        assert!(scratch.capacity() > 1 << 20);
        // A result bigger than an eighth of the arena is a one-off: its memory goes back.
        put_scratch(&mut scratch, Vec::with_capacity(cap / 8 + 1), cap);
        assert!(scratch.capacity() <= cap / 8);
        // Small arenas keep at least 1 MiB.
        let mut small = Vec::new();
        put_scratch(&mut small, Vec::with_capacity(1 << 20), 1 << 16);
        assert_eq!(small.capacity(), 1 << 20);
    }
}
