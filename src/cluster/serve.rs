//! A serving rank: receives chunks from rank 0, runs each on the rank's local pool, sends the
//! results back; leaves when rank 0 says stop.
//!
//! The main thread alone calls MPI (`MPI_THREAD_FUNNELED`). Each chunk runs on a thread of its
//! own (the local pool is `Sync`), so the next chunk starts while the last one's stragglers
//! finish and replies go out as soon as they are ready; the number of chunks a rank holds is
//! bounded by rank 0 (see `driver`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Instant;

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::outbox::{Backoff, MAX_MESSAGE, Outbox};
use super::wire::{self, Reply, TAG_REPLY, TAG_STOP, TAG_TASK, WireError};
use crate::Pool;
use crate::encoding::payload::Payload;
use crate::encoding::task::conjure;
use crate::error::Result;
use crate::unwind::panic_message;

/// The rank call for `F`: decodes the chunk's items, runs them through the pool's `imap` (so
/// each item fails or succeeds on its own, exactly as locally), and encodes a [`Reply`].
///
/// # Safety
///
/// `F` passed `assert_task_fn` on rank 0, which held an `F`, and this is the same executable.
pub(crate) unsafe fn rank_chunk<F, A, R>(pool: &Pool, body: &[u8]) -> Vec<u8>
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: Payload,
    R: Payload,
{
    // SAFETY: delegated to the caller (see # Safety).
    let f: F = unsafe { conjure() };
    let reply: Reply<R> = run_chunk(pool, f, body);
    match catch_unwind(AssertUnwindSafe(|| postcard::to_allocvec(&reply))) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => encode_failure(format!("cannot encode the results: {e}")),
        Err(p) => encode_failure(format!(
            "cannot encode the results: Serialize panicked: {}",
            panic_message(&*p)
        )),
    }
}

pub(super) fn encode_failure(detail: String) -> Vec<u8> {
    let reply: Reply<()> = Err(WireError::Codec(detail));
    // An `Err` of a string always encodes; an empty reply would read as a codec error anyway.
    postcard::to_allocvec(&reply).unwrap_or_default()
}

fn run_chunk<F, A, R>(pool: &Pool, f: F, body: &[u8]) -> Reply<R>
where
    F: Fn(A) -> R + Copy + Send + 'static,
    A: Payload,
    R: Payload,
{
    // The body is each item's length (u32) and encoding (see `wire`); each item is decoded on
    // its own, so a `Deserialize` of the user's that fails or panics fails that item only, as
    // locally.
    let mut items = Vec::new();
    let mut positions = Vec::new();
    let mut failures = Vec::new();
    let mut rest = body;
    let mut i = 0u32;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(WireError::Codec("a chunk cut short".into()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(WireError::Codec("a chunk cut short".into()));
        }
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        match catch_unwind(AssertUnwindSafe(|| postcard::from_bytes::<A>(bytes))) {
            Ok(Ok(a)) => {
                items.push(a);
                positions.push(i);
            }
            Ok(Err(e)) => failures.push((
                i,
                WireError::Codec(format!("cannot decode the argument: {e}")),
            )),
            Err(p) => failures.push((
                i,
                WireError::Codec(format!(
                    "cannot decode the argument: Deserialize panicked: {}",
                    panic_message(&*p)
                )),
            )),
        }
        i += 1;
    }
    let mut values = Vec::with_capacity(items.len());
    for (r, &at) in pool.imap(f, items).zip(&positions) {
        match r {
            Ok(v) => values.push(v),
            Err(e) => failures.push((at, WireError::from_error(&e))),
        }
    }
    failures.sort_by_key(|f| f.0);
    Ok((values, failures))
}

/// Serves rank 0 until it sends [`TAG_STOP`] and every chunk taken has been answered.
pub(crate) fn serve(world: &SimpleCommunicator, pool: &Pool) -> Result<()> {
    let root = world.process_at_rank(0);
    let (done_tx, done_rx) = mpsc::channel::<(u64, u64, Vec<u8>)>();
    let mut outbox = Outbox::new();
    let mut running = 0usize;
    let mut stop = false;
    let mut backoff = Backoff::default();
    std::thread::scope(|s| -> Result<()> {
        loop {
            let mut progressed = false;
            while let Some(found) = root.immediate_matched_probe() {
                progressed = true;
                let tag = found.1.tag();
                let (buf, _) = found.matched_receive_vec::<u8>();
                match tag {
                    TAG_TASK => {
                        let Some((id, call, _)) = wire::split(&buf) else {
                            // Rank 0 runs this same code: a short task cannot come from it.
                            return Err(crate::Error::Cluster {
                                rank: 0,
                                detail: "sent a task without a header".into(),
                            });
                        };
                        // SAFETY: the offset comes from rank 0 running the same executable
                        // (fingerprints compared at start-up), which took it from a `RankCall`.
                        let call = unsafe { wire::call_at(call as i64) };
                        let tx = done_tx.clone();
                        running += 1;
                        s.spawn(move || {
                            let t = Instant::now();
                            let body = &buf[wire::HEADER..];
                            // SAFETY: `call` is `rank_chunk::<F, A, R>` for the `F` rank 0
                            // checked, and `body` is what rank 0 encoded for it.
                            let out =
                                catch_unwind(AssertUnwindSafe(|| unsafe { call(pool, body) }))
                                    .unwrap_or_else(|p| {
                                        encode_failure(format!(
                                            "the rank failed running the chunk: {}",
                                            panic_message(&*p)
                                        ))
                                    });
                            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            // The receiver lives until every chunk is answered.
                            let _ = tx.send((id, ns, out));
                        });
                    }
                    TAG_STOP => stop = true,
                    tag => {
                        return Err(crate::Error::Cluster {
                            rank: 0,
                            detail: format!("sent a message with unknown tag {tag}"),
                        });
                    }
                }
            }
            while let Ok(done) = done_rx.try_recv() {
                progressed = true;
                running -= 1;
                reply(world, &mut outbox, done)?;
            }
            progressed |= outbox.poll();
            if stop && running == 0 && outbox.is_empty() {
                return Ok(());
            }
            if progressed {
                backoff.reset();
            } else if running > 0
                && let Some(nap) = backoff.nap()
            {
                // A chunk is running: its end wakes us at once (rank 0's next message waits
                // at most the nap).
                if let Ok(done) = done_rx.recv_timeout(nap) {
                    running -= 1;
                    reply(world, &mut outbox, done)?;
                    backoff.reset();
                }
            } else {
                backoff.snooze();
            }
        }
    })
}

/// Sends a chunk's reply to rank 0.
fn reply(
    world: &SimpleCommunicator,
    outbox: &mut Outbox,
    (id, ns, mut out): (u64, u64, Vec<u8>),
) -> Result<()> {
    if out.len() + wire::HEADER > MAX_MESSAGE {
        // Fails the chunk's items, not the job (a failed send would abort every rank).
        let reply: Reply<()> = Err(WireError::Other(format!(
            "the chunk's results are {} bytes, over MPI's limit of {MAX_MESSAGE} bytes per \
             message: give the imap a smaller chunksize",
            out.len()
        )));
        out = postcard::to_allocvec(&reply).unwrap_or_default();
    }
    let mut msg = wire::header(id, ns);
    msg.extend_from_slice(&out);
    outbox.send(world, 0, TAG_REPLY, msg)
}

/// Sends `STOP` to every serving rank (rank 0's side of the shutdown).
pub(crate) fn send_stop(world: &SimpleCommunicator, outbox: &mut Outbox) -> Result<()> {
    for r in 1..world.size() as usize {
        outbox.send(world, r, TAG_STOP, Vec::new())?;
    }
    Ok(())
}
