//! Rank 0's side: which rank holds what, sending tasks there, and collecting replies.
//!
//! Balance is on demand: each serving rank may hold work of weight up to twice its process
//! count, where a chunk weighs the rank's process count (so two chunks, one running and one
//! waiting) and a single `apply` task weighs 1 (so a rank of eight processes runs eight
//! `apply`s at once). A rank gets more only when a reply frees its room, so a fast rank takes
//! more chunks than a slow one; nothing is split up front.

use std::collections::{HashMap, HashSet, VecDeque};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::outbox::Outbox;
use super::wire::{self, TAG_REPLY, TAG_TASK};
use crate::error::{Error, Result};

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

#[derive(Debug)]
struct RankSlot {
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

/// Rank 0's bookkeeping.
pub(crate) struct Driver {
    world: SimpleCommunicator,
    /// Index `r - 1` describes rank `r`.
    ranks: Vec<RankSlot>,
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
    /// `processes[i]` is the pool size of rank `i + 1`.
    pub(crate) fn new(world: SimpleCommunicator, processes: &[usize]) -> Driver {
        Driver {
            world,
            ranks: processes
                .iter()
                .map(|&p| RankSlot {
                    processes: p.max(1),
                    load: 0,
                })
                .collect(),
            next_id: 1,
            outbox: Outbox::new(),
            inflight: HashMap::new(),
            done: HashMap::new(),
            abandoned: HashSet::new(),
            queued: VecDeque::new(),
        }
    }

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

    fn weight(&self, slot: usize, w: Weight) -> usize {
        match w {
            Weight::Chunk => self.ranks[slot].processes,
            Weight::Single => 1,
        }
    }

    /// The least loaded rank (relative to its size) with room for `w`, as a slot index.
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
        let slot = self
            .room(Weight::Chunk)
            .ok_or_else(|| Error::invalid("no rank has room for a chunk"))?;
        self.dispatch(slot, id, Weight::Chunk, msg)
    }

    /// Sends a single task, now if a rank has room, otherwise as soon as one has.
    pub(crate) fn send_single(&mut self, id: u64, msg: Vec<u8>) -> Result<()> {
        if self.queued.is_empty()
            && let Some(slot) = self.room(Weight::Single)
        {
            return self.dispatch(slot, id, Weight::Single, msg);
        }
        self.queued.push_back(Queued { id, msg });
        Ok(())
    }

    fn dispatch(&mut self, slot: usize, id: u64, w: Weight, msg: Vec<u8>) -> Result<()> {
        let weight = self.weight(slot, w);
        self.outbox.send(&self.world, slot + 1, TAG_TASK, msg)?;
        self.ranks[slot].load += weight;
        self.inflight.insert(id, (slot, weight));
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
            let Some((slot, weight)) = self.inflight.remove(&id) else {
                return Err(Error::Cluster {
                    rank,
                    detail: format!("answered task {id}, which it does not hold"),
                });
            };
            self.ranks[slot].load -= weight;
            if self.abandoned.remove(&id) {
                continue;
            }
            buf.drain(..wire::HEADER);
            self.done.insert(
                id,
                Arrived {
                    rank,
                    elapsed_ns,
                    body: buf,
                },
            );
        }
        while !self.queued.is_empty() {
            let Some(slot) = self.room(Weight::Single) else {
                break;
            };
            if let Some(q) = self.queued.pop_front() {
                self.dispatch(slot, q.id, Weight::Single, q.msg)?;
                progressed = true;
            }
        }
        Ok(progressed)
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
