//! Rank 0's side: which rank holds what, sending tasks there, and collecting replies.
//!
//! Balance is on demand: each serving rank may hold work of weight up to twice its process
//! count, where a chunk weighs the rank's process count (so two chunks, one running and one
//! waiting) and a single `apply` task weighs 1 (so a rank of eight processes runs eight
//! `apply`s at once). A rank gets more only when a reply frees its room, so a fast rank takes
//! more chunks than a slow one; nothing is split up front.
//!
//! Rank 0 may work too (its own pool, [`ClusterBuilder::rank0_processes`]): it is then one more
//! member, whose chunks run on a thread of rank 0 each instead of crossing MPI, and whose replies
//! land in the same table as the others'.
//!
//! [`ClusterBuilder::rank0_processes`]: super::ClusterBuilder::rank0_processes

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::outbox::Outbox;
use super::wire::{self, TAG_REPLY, TAG_TASK};
use crate::Pool;
use crate::error::{Error, Result};
use crate::unwind::panic_message;

/// A reply from a serving rank.
#[derive(Debug)]
pub(crate) struct Arrived {
    /// The rank that ran the task.
    pub(crate) rank: usize,
    /// Wall time the rank spent on it.
    pub(crate) elapsed_ns: u64,
    /// The encoded `Reply` (after the header).
    pub(crate) body: Vec<u8>,
}

/// One member of the cluster that takes work: an MPI rank, or rank 0's own pool.
#[derive(Debug)]
struct Member {
    /// Its MPI rank (0: this process, through `Local`).
    rank: usize,
    /// The rank's local pool size.
    processes: usize,
    /// Weight of the work it holds now.
    load: usize,
}

/// How much room a message takes on a rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weight {
    /// A chunk of a map: the rank's whole pool.
    Chunk,
    /// One task: one process.
    Single,
}

#[derive(Debug)]
struct Queued {
    id: u64,
    msg: Vec<u8>,
}

/// Rank 0's own pool, when it works too.
struct Local {
    pool: Arc<Pool>,
    /// Replies of chunks run here: (id, elapsed ns, encoded reply).
    tx: mpsc::Sender<(u64, u64, Vec<u8>)>,
    rx: mpsc::Receiver<(u64, u64, Vec<u8>)>,
    /// Threads running local chunks, joined once finished (and all at the end).
    threads: Vec<JoinHandle<()>>,
}

/// Rank 0's bookkeeping.
pub(crate) struct Driver {
    world: SimpleCommunicator,
    /// The ranks that work (rank 0 first, if it does).
    ranks: Vec<Member>,
    local: Option<Local>,
    next_id: u64,
    outbox: Outbox,
    /// Sent and not answered: id → (rank, weight taken).
    inflight: HashMap<u64, (usize, usize)>,
    /// Answered and not yet taken by whoever waits for them.
    done: HashMap<u64, Arrived>,
    /// Ids nobody waits for any more: their replies are dropped on arrival.
    abandoned: HashSet<u64>,
    /// Single tasks waiting for room (`apply_async` never blocks).
    queued: VecDeque<Queued>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("ranks", &self.ranks)
            .field("inflight", &self.inflight.len())
            .field("queued", &self.queued.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// `processes[i]` is the pool size of rank `i + 1`; `local` is rank 0's own pool, if any.
    pub(crate) fn new(
        world: SimpleCommunicator,
        processes: &[usize],
        local: Option<Pool>,
    ) -> Driver {
        let local = local.map(|pool| {
            let (tx, rx) = mpsc::channel();
            Local {
                pool: Arc::new(pool),
                tx,
                rx,
                threads: Vec::new(),
            }
        });
        let mut ranks: Vec<Member> = local
            .iter()
            .map(|l| Member {
                rank: 0,
                processes: l.pool.processes(),
                load: 0,
            })
            .collect();
        ranks.extend(processes.iter().enumerate().map(|(i, &p)| Member {
            rank: i + 1,
            processes: p.max(1),
            load: 0,
        }));
        Driver {
            world,
            ranks,
            local,
            next_id: 1,
            outbox: Outbox::new(),
            inflight: HashMap::new(),
            done: HashMap::new(),
            abandoned: HashSet::new(),
            queued: VecDeque::new(),
        }
    }

    /// Ranks that work (rank 0 counts if it has a pool).
    pub(crate) fn ranks(&self) -> usize {
        self.ranks.len()
    }

    pub(crate) fn processes(&self) -> usize {
        self.ranks.iter().map(|r| r.processes).sum()
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn weight(&self, member: usize, w: Weight) -> usize {
        match w {
            Weight::Chunk => self.ranks[member].processes,
            Weight::Single => 1,
        }
    }

    /// The least loaded rank (relative to its size) with room for `w`, as a member index.
    fn room(&self, w: Weight) -> Option<usize> {
        (0..self.ranks.len())
            .filter(|&i| {
                let r = &self.ranks[i];
                r.load + self.weight(i, w) <= 2 * r.processes
            })
            .min_by_key(|&i| {
                let r = &self.ranks[i];
                // load / processes, compared without division.
                (r.load * 1_000_000) / r.processes
            })
    }

    /// Whether a chunk could be sent now.
    pub(crate) fn has_room_for_chunk(&self) -> bool {
        self.queued.is_empty() && self.room(Weight::Chunk).is_some()
    }

    /// Sends a chunk now; the caller checked [`has_room_for_chunk`](Self::has_room_for_chunk).
    /// `msg` is the header (`id`, call) and the encoded items.
    pub(crate) fn send_chunk(&mut self, id: u64, msg: Vec<u8>) -> Result<()> {
        let member = self
            .room(Weight::Chunk)
            .ok_or_else(|| Error::invalid("no rank has room for a chunk"))?;
        self.dispatch(member, id, Weight::Chunk, msg)
    }

    /// Sends a single task, now if a rank has room, otherwise as soon as one has.
    pub(crate) fn send_single(&mut self, id: u64, msg: Vec<u8>) -> Result<()> {
        if self.queued.is_empty()
            && let Some(member) = self.room(Weight::Single)
        {
            return self.dispatch(member, id, Weight::Single, msg);
        }
        self.queued.push_back(Queued { id, msg });
        Ok(())
    }

    fn dispatch(&mut self, member: usize, id: u64, w: Weight, msg: Vec<u8>) -> Result<()> {
        let weight = self.weight(member, w);
        match (self.ranks[member].rank, &mut self.local) {
            (0, Some(local)) => local.run(id, msg),
            (rank, _) => self.outbox.send(&self.world, rank, TAG_TASK, msg)?,
        }
        self.ranks[member].load += weight;
        self.inflight.insert(id, (member, weight));
        Ok(())
    }

    /// One round of progress: retire sends, take in replies, send queued tasks. True if
    /// anything happened.
    pub(crate) fn pump(&mut self) -> Result<bool> {
        let mut progressed = self.outbox.poll();
        while let Some(found) = self.world.any_process().immediate_matched_probe() {
            progressed = true;
            let (tag, source) = (found.1.tag(), found.1.source_rank());
            let (mut buf, _) = found.matched_receive_vec::<u8>();
            let rank = usize::try_from(source).unwrap_or(0);
            let (id, elapsed_ns) = match (tag, wire::split(&buf)) {
                (TAG_REPLY, Some((id, ns, _))) => (id, ns),
                (tag, _) => {
                    return Err(Error::Cluster {
                        rank,
                        detail: format!(
                            "sent a message of {} bytes with tag {tag} rank 0 cannot read",
                            buf.len()
                        ),
                    });
                }
            };
            buf.drain(..wire::HEADER);
            self.arrive(rank, id, elapsed_ns, buf)?;
        }
        let local: Vec<_> = match &mut self.local {
            Some(l) => {
                l.threads.retain(|t| !t.is_finished());
                l.rx.try_iter().collect()
            }
            None => Vec::new(),
        };
        for (id, ns, body) in local {
            progressed = true;
            self.arrive(0, id, ns, body)?;
        }
        while !self.queued.is_empty() {
            let Some(member) = self.room(Weight::Single) else {
                break;
            };
            if let Some(q) = self.queued.pop_front() {
                self.dispatch(member, q.id, Weight::Single, q.msg)?;
                progressed = true;
            }
        }
        Ok(progressed)
    }

    fn arrive(&mut self, rank: usize, id: u64, elapsed_ns: u64, body: Vec<u8>) -> Result<()> {
        let Some((member, weight)) = self.inflight.remove(&id) else {
            return Err(Error::Cluster {
                rank,
                detail: format!("answered task {id}, which it does not hold"),
            });
        };
        self.ranks[member].load -= weight;
        if !self.abandoned.remove(&id) {
            self.done.insert(
                id,
                Arrived {
                    rank,
                    elapsed_ns,
                    body,
                },
            );
        }
        Ok(())
    }

    /// Waits for the threads of local chunks (all answered: called when idle).
    pub(crate) fn join_local(&mut self) {
        if let Some(l) = &mut self.local {
            for t in l.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// The reply to `id`, if it arrived.
    pub(crate) fn take(&mut self, id: u64) -> Option<Arrived> {
        self.done.remove(&id)
    }

    /// Whether the reply to `id` arrived.
    pub(crate) fn is_done(&self, id: u64) -> bool {
        self.done.contains_key(&id)
    }

    /// Nobody will take `id`'s reply: forget it (now, or when it arrives).
    pub(crate) fn abandon(&mut self, id: u64) {
        if self.done.remove(&id).is_some() {
            return;
        }
        if self.inflight.contains_key(&id) {
            self.abandoned.insert(id);
            return;
        }
        self.queued.retain(|q| q.id != id);
    }

    /// True once nothing is in flight or queued and every send completed.
    pub(crate) fn idle(&self) -> bool {
        self.inflight.is_empty() && self.queued.is_empty() && self.outbox.is_empty()
    }

    /// Drops the queue (tasks nobody can wait for any more).
    pub(crate) fn clear_queue(&mut self) {
        self.queued.clear();
    }

    /// Tells every serving rank to leave once idle.
    pub(crate) fn send_stop(&mut self) -> Result<()> {
        super::serve::send_stop(&self.world, &mut self.outbox)
    }
}

impl Local {
    /// Runs a chunk on rank 0's own pool, on a thread of its own; the reply comes back through
    /// the channel, as a remote one comes through MPI.
    fn run(&mut self, id: u64, msg: Vec<u8>) {
        let pool = Arc::clone(&self.pool);
        let tx = self.tx.clone();
        let t = std::thread::spawn(move || {
            let t = Instant::now();
            let out = match wire::split(&msg) {
                Some((_, call, body)) => {
                    // SAFETY: the offset was made by `call_offset` in this very process.
                    let call = unsafe { wire::call_at(call as i64) };
                    // SAFETY: `call` is `rank_chunk::<F, A, R>` for an `F` checked when the task
                    // was made, and `body` is what was encoded for it.
                    catch_unwind(AssertUnwindSafe(|| unsafe { call(&pool, body) })).unwrap_or_else(
                        |p| {
                            super::serve::encode_failure(format!(
                                "rank 0 failed running the chunk: {}",
                                panic_message(&*p)
                            ))
                        },
                    )
                }
                None => super::serve::encode_failure("a task without a header".into()),
            };
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            // The receiver lives in the driver, which outlives every chunk it sent.
            let _ = tx.send((id, ns, out));
        });
        self.threads.push(t);
    }
}
