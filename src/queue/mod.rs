//! [`Queue`]: a bounded multi-producer multi-consumer queue in shared memory, through which tasks
//! in different workers (and the parent) talk — the twin of Python's
//! `multiprocessing.Manager().Queue()`.
//!
//! # Layout
//!
//! One anonymous memfd segment per queue, `#[repr(C)]`, holding offsets and never pointers:
//!
//! ```text
//! 0                      QueueHeader { enqueue_pos, dequeue_pos, not_empty, not_full }
//! slots_off              slot 0: SlotHead { seq, len }, then `slot_size` payload bytes,
//!                        padded to `stride` (a multiple of 64, so slots share no cache line)
//! slots_off + stride     slot 1
//! ...                    slot capacity - 1
//! ```
//!
//! The layout numbers (`capacity`, `slot_size`, `stride`, `slots_off`) live in each process's own
//! [`Shared`](protocol::Shared), never in shared memory, so no other process can make us index outside the mapping.
//! The fd is closed right after mapping: the memory lives exactly as long as some process maps it,
//! so a process that dies leaks nothing, and nothing is ever created in `/dev/shm`.
//!
//! # Protocol: Vyukov's bounded MPMC queue
//!
//! `enqueue_pos` and `dequeue_pos` are `u64` positions that only grow (2^63 operations do not
//! happen); position `p` lives in slot `p % capacity`. Each slot's `seq` says whose turn it is:
//!
//! * `seq == 2p` (`free_seq`): the slot is free for the producer of position `p`;
//! * `seq == 2p + 1` (`full_seq`): it holds the item of position `p`, ready for its consumer;
//! * the consumer hands it back with `seq = 2(p + capacity)`: free for the producer one lap later.
//!
//! (Vyukov's original stores `p`, `p + 1` and `p + capacity`, which requires a capacity of at
//! least 2: with one slot, "holds the item of `p`" and "free for `p + 1`" would be the same
//! number. Doubling keeps the two states apart for every capacity.)
//!
//! The protocol's code is in the `mpmc` module, which loom checks over heap memory
//! (`tests/loom_queue.rs`); this module runs it over the shared segment.
//!
//! Producer (`mpmc::claim_put` and `publish`, from `try_put_bytes`): read `p = enqueue_pos`, read the slot's `seq` (Acquire,
//! SYNC: slot-free). If `seq == 2p`, claim `p` with a CAS `p → p + 1` on `enqueue_pos`, write
//! `len` and the bytes, then store `seq = 2p + 1` (Release, SYNC: slot-publish). If `seq < 2p`
//! the slot still holds the item of the previous lap: the queue is full. If `seq > 2p` another
//! producer took `p` first: reload `p` and retry. (Whoever moved `seq` past `2p` moved
//! `enqueue_pos` past `p` before, and we acquired that: a reload that still reads `p` means the
//! shared memory was overwritten, and is reported as an error instead of spinning forever.)
//!
//! Consumer (`mpmc::claim_take` and `release`, from `try_take`): read `p = dequeue_pos`, read `seq` (Acquire, SYNC: slot-publish). If
//! `seq == 2p + 1`, claim `p` with a CAS on `dequeue_pos`, copy `len` bytes out, then store
//! `seq = 2(p + capacity)` (Release, SYNC: slot-free). If `seq < 2p + 1` nothing is published
//! there: empty. Otherwise reload and retry, as for producers.
//!
//! The CASes are `Relaxed`: they only decide *which* process owns a position. Ownership of the
//! slot's bytes is handed over by the `seq` Release/Acquire pairs named above.
//!
//! Blocking uses two [`WakeWord`](crate::shm::wake::WakeWord)s: a producer that published calls
//! `not_empty.notify()`, a consumer that handed a slot back calls `not_full.notify()`, and waiters
//! sleep with `wait_until` re-checking [`Shared::can_put`](protocol::Shared::can_put) / [`Shared::can_get`](protocol::Shared::can_get). Those checks may
//! read stale positions; a stale position always makes them answer "ready" (its slot has moved
//! on), never "not ready", so a stale read costs one retry and never a lost wake-up.
//!
//! # Encoding
//!
//! Items are encoded with postcard *before* a slot is claimed and decoded *after* it is handed
//! back, so user `Serialize`/`Deserialize` code (which may panic or fail) never runs while this
//! process owns a slot: a claimed slot is always published or released by our own code.
//!
//! # Known limitation: a process killed mid-operation
//!
//! There is no lock to recover. A process killed between claiming a position and publishing it
//! (a producer) or handing it back (a consumer) — a window of one `memcpy` — leaves that slot
//! claimed forever: consumers (or, a lap later, producers) stall at that position while the
//! items behind it stay unreachable. That is why the pool's own transport uses one SPSC ring per
//! worker instead of a shared MPMC queue (see the `ring` module).
//!
//! **Why it cannot be reclaimed with this design.** A claim is one CAS on a shared position;
//! nothing records who made it, and a claimed-but-unfinished slot looks exactly like one whose
//! claimer is merely slow. Skipping it would need the claimer's identity written atomically
//! with the claim (a 128-bit CAS of position and pid, or a per-slot owner word set before the
//! CAS and a way to tell a dead owner from a recycled pid), and a consumer skipping a slot would
//! race with a producer that is only descheduled and publishes a moment later, over a slot the
//! next lap already reuses. Python's `Manager().Queue()` avoids all this by living in a server
//! process behind a lock, at the price of a round trip to that server per item.
//!
//! **What happens instead.** A blocked `put` or `get` watches the slot it waits for
//! (`Shared::stuck_get`, `Shared::stuck_put`): when that slot was claimed (the other position
//! moved past it) and stays unfinished for `STALL_LIMIT` (2 s; a live claimer needs one
//! `memcpy`), the call fails with [`Error::QueueStalled`](crate::Error::QueueStalled) naming the position, instead of
//! hanging. Nothing wakes a waiter when a claimer dies, so a blocked call also looks on its own
//! every `STALL_POLL` (500 ms). Every blocking call also has a `_timeout` variant.
//!
//! # Crossing into tasks
//!
//! A `Queue` serializes as `(creator pid, serial)`. Deserializing looks that key up in a
//! process-global registry of the queues this process maps. Workers are forks taken when their
//! pool was built, so they inherit the registry *and* the mappings (at the same addresses) of
//! every queue that existed then. A queue created after the pool is missing from the workers'
//! registry and deserializing it there fails with a clear serde error.
//!
//! The registry is a `Mutex`, and a fork while another thread holds it would leave the child's
//! copy locked forever. A `pthread_atfork` handler (registered with the first queue) takes the
//! lock before every `fork()` and releases it in both the parent and the child, so a forked child
//! always starts with a consistent, unlocked registry.

mod handle;
mod protocol;
mod registry;
mod serde;
#[cfg(all(test, not(loom)))]
mod tests;

pub use handle::Queue;
