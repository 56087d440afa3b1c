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
//! [`Shared`], never in shared memory, so no other process can make us index outside the mapping.
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
//! Blocking uses two [`WakeWord`]s (see `wake.rs`): a producer that published calls
//! `not_empty.notify()`, a consumer that handed a slot back calls `not_full.notify()`, and waiters
//! sleep with `wait_until` re-checking [`Shared::can_put`] / [`Shared::can_get`]. Those checks may
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
//! `memcpy`), the call fails with [`Error::QueueStalled`] naming the position, instead of
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

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, Weak};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};

use crate::error::{Error, Result, SubmitError};
use crate::mpmc::{self, Claim, SlotHead};
use crate::payload::Payload;
use crate::ser_probe::serialize_error;
use crate::shm::{Segment, align_up};
use crate::sync::{AtomicU64, Ordering};
use crate::wake::{DEFAULT_SPIN, WakeWord};

/// Items up to this many encoded bytes move through a stack buffer (no allocation).
const INLINE: usize = 256;

/// The shared words of a queue, at offset 0 of its segment.
#[repr(C)]
#[derive(Debug)]
struct QueueHeader {
    /// Next position a producer will claim. `dequeue_pos <= enqueue_pos <= dequeue_pos + capacity`
    /// (modulo in-flight claims).
    enqueue_pos: CachePadded<AtomicU64>,
    /// Next position a consumer will claim.
    dequeue_pos: CachePadded<AtomicU64>,
    /// Notified after an item is published.
    not_empty: WakeWord,
    /// Notified after a slot is handed back.
    not_full: WakeWord,
}

const _: () = assert!(size_of::<SlotHead>() == 16);
const _: () = assert!(align_of::<SlotHead>() <= 64 && align_of::<QueueHeader>() <= 128);

/// The error for a slot whose `seq` is ahead of a position nobody has moved past: only a process
/// writing over the queue's memory can cause it (see `try_put_bytes`).
fn corrupted(side: &str, pos: u64, seq: u64) -> Error {
    Error::codec(format!(
        "queue {side} position {pos} meets a slot sequence of {seq}, which no queue operation \
         writes: the queue's shared memory was corrupted"
    ))
}

/// One mapped queue segment and its layout, shared by every `Queue` handle of this process.
struct Shared {
    seg: Segment,
    base: NonNull<u8>,
    /// Number of slots, `>= 1`.
    capacity: u64,
    /// Most encoded bytes per item.
    slot_size: usize,
    /// Bytes per slot: `align_up(16 + slot_size, 64)`.
    stride: usize,
    /// Offset of slot 0: `align_up(size_of::<QueueHeader>(), 128)`.
    slots_off: usize,
    /// Registry key: `(pid of the creating process, serial)`.
    key: Key,
}

// SAFETY: the mapping is shared memory that every process of the queue accesses only through
// atomics (`QueueHeader`, `SlotHead`) and through payload bytes whose ownership the slot protocol
// hands over (module docs, "Protocol"); `base` is just the mapping's address.
unsafe impl Send for Shared {}
// SAFETY: as above: `&Shared` gives no unsynchronized access to anything.
unsafe impl Sync for Shared {}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("key", &self.key)
            .field("capacity", &self.capacity)
            .field("slot_size", &self.slot_size)
            .field("mapped", &self.seg.len())
            .finish()
    }
}

impl Shared {
    fn map(capacity: usize, slot_size: usize) -> Result<Shared> {
        if capacity == 0 {
            return Err(Error::invalid("a queue needs a capacity of at least 1"));
        }
        if slot_size == 0 {
            return Err(Error::invalid("a queue slot needs at least 1 byte"));
        }
        let too_large = || {
            Error::invalid(format!(
                "a queue of {capacity} slots of {slot_size} bytes does not fit in memory"
            ))
        };
        let slots_off = align_up(size_of::<QueueHeader>(), 128).ok_or_else(too_large)?;
        let stride = slot_size
            .checked_add(size_of::<SlotHead>() + 63)
            .ok_or_else(too_large)?
            & !63;
        let len = capacity
            .checked_mul(stride)
            .and_then(|n| n.checked_add(slots_off))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(too_large)?;
        let mut seg = Segment::new("shmpool-queue", len)?;
        // Only the mapping is shared (inherited by `fork`); no fd needs to stay open.
        seg.close_fd();
        let base = NonNull::new(seg.ptr()).expect("mmap never returns null");
        // SAFETY: the segment is `len` bytes, page aligned, zero-filled and not yet visible to any
        // other process or thread. The header at offset 0 and every `SlotHead` at
        // `slots_off + i * stride` (`i < capacity`) lie inside it by the computation of `len`,
        // and are aligned: the base is page aligned, `slots_off` is a multiple of 128 and
        // `stride` of 64, more than the types need (asserted above).
        unsafe {
            base.as_ptr().cast::<QueueHeader>().write(QueueHeader {
                enqueue_pos: CachePadded::new(AtomicU64::new(0)),
                dequeue_pos: CachePadded::new(AtomicU64::new(0)),
                not_empty: WakeWord::new(),
                not_full: WakeWord::new(),
            });
            for i in 0..capacity {
                base.as_ptr()
                    .add(slots_off + i * stride)
                    .cast::<SlotHead>()
                    .write(SlotHead::new(i as u64));
            }
        }
        Ok(Shared {
            seg,
            base,
            capacity: capacity as u64,
            slot_size,
            stride,
            slots_off,
            key: Key { pid: 0, serial: 0 },
        })
    }

    fn header(&self) -> &QueueHeader {
        // SAFETY: written in `map`, lives as long as `self.seg`; only atomics inside.
        unsafe { &*self.base.as_ptr().cast::<QueueHeader>() }
    }

    /// The slot of position `pos`: its head and a pointer to its `slot_size` payload bytes.
    fn slot(&self, pos: u64) -> (&SlotHead, *mut u8) {
        let index = (pos % self.capacity) as usize;
        debug_assert!((index as u64) < self.capacity);
        let off = self.slots_off + index * self.stride;
        debug_assert!(off + size_of::<SlotHead>() + self.slot_size <= self.seg.len());
        // SAFETY: `index < capacity`, so the slot lies inside the mapping (see `map`), and its
        // head was initialized there; the payload follows the 16-byte head within `stride`.
        unsafe {
            let head = self.base.as_ptr().add(off);
            (&*head.cast::<SlotHead>(), head.add(size_of::<SlotHead>()))
        }
    }

    /// Claims the next position, copies `bytes` into its slot and publishes it. Returns
    /// `Ok(false)` if the queue is full. Never blocks.
    fn try_put_bytes(&self, bytes: &[u8]) -> Result<bool> {
        debug_assert!(bytes.len() <= self.slot_size);
        match mpmc::claim_put(&self.header().enqueue_pos, |p| self.slot(p).0) {
            Claim::Claimed(pos) => {
                let (slot, data) = self.slot(pos);
                // SAFETY: we own position `pos` (`claim_put`), so no other process reads or
                // writes this slot's bytes until we publish; `bytes.len() <= slot_size`, the
                // payload area of the slot.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
                mpmc::publish(slot, pos, bytes.len() as u64);
                Ok(true)
            }
            Claim::NotNow => Ok(false),
            Claim::Corrupted { pos, seq } => Err(corrupted("enqueue", pos, seq)),
        }
    }

    /// Claims the oldest published item, copies its bytes out (into `stack` when they fit,
    /// else into `heap`) and hands the slot back. `Ok(None)` when the queue is empty; otherwise
    /// the encoded length.
    fn try_take(&self, stack: &mut [u8; INLINE], heap: &mut Vec<u8>) -> Result<Option<usize>> {
        let pos = match mpmc::claim_take(&self.header().dequeue_pos, |p| self.slot(p).0) {
            Claim::Claimed(pos) => pos,
            Claim::NotNow => return Ok(None),
            Claim::Corrupted { pos, seq } => return Err(corrupted("dequeue", pos, seq)),
        };
        let (slot, data) = self.slot(pos);
        let len = mpmc::published_len(slot);
        let out = if len > self.slot_size as u64 {
            Err(Error::codec(format!(
                "queue slot claims {len} bytes, more than the slot size of {} bytes: the queue's \
                 shared memory was corrupted",
                self.slot_size
            )))
        } else {
            let len = len as usize;
            let dst = if len <= INLINE {
                stack.as_mut_ptr()
            } else {
                heap.clear();
                heap.reserve_exact(len);
                heap.as_mut_ptr()
            };
            // SAFETY: we own position `pos` (`claim_take`), so no process writes the slot's bytes
            // until we hand it back; `len <= slot_size` was checked above, and `dst` has room for
            // `len` bytes (the stack buffer holds INLINE, `heap` was reserved).
            unsafe { std::ptr::copy_nonoverlapping(data, dst, len) };
            if len > INLINE {
                // SAFETY: the first `len` bytes were just initialized.
                unsafe { heap.set_len(len) };
            }
            Ok(Some(len))
        };
        mpmc::release(slot, pos, self.capacity);
        out
    }

    /// True unless the slot at the current enqueue position is still occupied (a stale position
    /// answers true: see the module docs).
    fn can_put(&self) -> bool {
        mpmc::can_put(&self.header().enqueue_pos, |p| self.slot(p).0)
    }

    /// True if the slot at the current dequeue position is published (or the position is stale).
    fn can_get(&self) -> bool {
        mpmc::can_take(&self.header().dequeue_pos, |p| self.slot(p).0)
    }

    /// The position a consumer is stuck at, if a producer claimed it (`enqueue_pos` moved past
    /// it) but its slot is not published: that producer is still copying, or was killed.
    fn stuck_get(&self) -> Option<u64> {
        let h = self.header();
        // Relaxed (all three): a diagnosis, not a claim; a stale value only delays it or clears
        // it, and it must hold unchanged for `STALL_LIMIT` before anyone acts on it.
        let deq = h.dequeue_pos.load(Ordering::Relaxed);
        let enq = h.enqueue_pos.load(Ordering::Relaxed);
        let seq = self.slot(deq).0.seq.load(Ordering::Relaxed);
        (enq > deq && seq == mpmc::free_seq(deq)).then_some(deq)
    }

    /// The position a producer is stuck at, if the previous lap's item in its slot was claimed
    /// by a consumer (`dequeue_pos` moved past it) but never handed back.
    fn stuck_put(&self) -> Option<u64> {
        let h = self.header();
        // Relaxed (all three): as in `stuck_get`.
        let enq = h.enqueue_pos.load(Ordering::Relaxed);
        let deq = h.dequeue_pos.load(Ordering::Relaxed);
        let prev = enq.checked_sub(self.capacity)?;
        let seq = self.slot(enq).0.seq.load(Ordering::Relaxed);
        (deq > prev && seq == mpmc::full_seq(prev)).then_some(prev)
    }

    fn len(&self) -> usize {
        let h = self.header();
        // Relaxed (both): a snapshot that guards no data. `dequeue_pos` first: it never passes
        // `enqueue_pos`, so reading it first keeps the difference from going negative in
        // practice; it is clamped anyway.
        let deq = h.dequeue_pos.load(Ordering::Relaxed);
        let enq = h.enqueue_pos.load(Ordering::Relaxed);
        enq.saturating_sub(deq).min(self.capacity) as usize
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Forget the key before the segment is unmapped (when `seg` drops right after), so no
        // lookup can hand out this mapping any more. Lookups upgrade a `Weak`, which already
        // fails now that the last strong reference is gone; this just keeps the map small.
        registry().map.remove(&self.key);
    }
}

// ---------------------------------------------------------------------------------------------
// The process-global registry.

/// Identifies a queue across processes: the pid of the process that created it and a serial
/// unique within that process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    pid: u32,
    serial: u64,
}

#[derive(Debug)]
struct Entry {
    shared: Weak<Shared>,
    type_id: TypeId,
    type_name: &'static str,
}

#[derive(Debug)]
struct Registry {
    next_serial: u64,
    map: BTreeMap<Key, Entry>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_serial: 0,
    map: BTreeMap::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // Poison: the registry is a map updated by single calls that cannot leave it half-written.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The registry guard held by this thread between `atfork_prepare` and the end of `fork`.
    static HELD_ACROSS_FORK: RefCell<Option<MutexGuard<'static, Registry>>> =
        const { RefCell::new(None) };
}

/// Runs in the forking thread just before `fork()`: waits for any other thread to leave the
/// registry, then holds it so the child's copy is consistent.
extern "C" fn atfork_prepare() {
    let guard = registry();
    // If the thread-local is gone (the thread is exiting) the guard drops here and the fork goes
    // unprotected, as it would without this handler; nothing here may panic (extern "C").
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            *held = Some(guard);
        }
    });
}

/// Runs in the parent after `fork()` and in the child (its only thread is the forking one):
/// releases the guard taken by `atfork_prepare`.
extern "C" fn atfork_release() {
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            held.take();
        }
    });
}

fn install_fork_handlers() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut rc = 0;
    ONCE.call_once(|| {
        // SAFETY: registers three `extern "C" fn()` that live for the whole program and never
        // unwind; glibc runs them around every `fork()` in this process.
        rc = unsafe {
            libc::pthread_atfork(
                Some(atfork_prepare),
                Some(atfork_release),
                Some(atfork_release),
            )
        };
    });
    if rc != 0 {
        return Err(Error::os(
            "pthread_atfork",
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

fn this_pid() -> u32 {
    std::process::id()
}

/// Finds the queue `key` in this process's registry, for a handle of type `Queue<T>`.
fn lookup<T: 'static>(key: Key) -> std::result::Result<Arc<Shared>, String> {
    let found = {
        let reg = registry();
        reg.map
            .get(&key)
            .map(|e| (e.shared.upgrade(), e.type_id, e.type_name))
    };
    match found {
        Some((Some(shared), type_id, _)) if type_id == TypeId::of::<T>() => Ok(shared),
        Some((Some(_), _, held)) => Err(format!(
            "queue {} holds `{held}`, not `{}`",
            key.serial,
            std::any::type_name::<T>()
        )),
        // Found but no longer alive, or created here and gone.
        Some((None, ..)) => Err(format!("queue {} was already dropped", key.serial)),
        None if key.pid == this_pid() => Err(format!("queue {} was already dropped", key.serial)),
        None => Err(format!(
            "queue {} was created after the pool was built; create queues before the pool",
            key.serial
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The public handle.

/// A bounded FIFO queue in shared memory for tasks (and the parent) to talk through — Python's
/// `multiprocessing.Manager().Queue()`, without a manager process.
///
/// Any number of threads and processes may put and get at once (multi-producer,
/// multi-consumer). Items are any [`Payload`], encoded with postcard into fixed-size slots
/// ([`DEFAULT_SLOT_SIZE`](Queue::DEFAULT_SLOT_SIZE) bytes unless you pick
/// [`with_slot_size`](Queue::with_slot_size)). A `Queue` is a cheap handle: `clone` it to give
/// it away; the memory is freed when the last handle in the last process that maps it is gone.
///
/// **Create queues before the pool.** Workers are forks of the parent taken when the pool was
/// built, so they map every queue that existed then, at the same address. Pass a queue to a task
/// as (part of) its argument: it crosses as a small id that the worker looks up. A queue created
/// after the pool is unknown to its workers, and the task fails to decode its argument
/// ([`Error::Codec`]) instead of running.
///
/// **Limitation:** a process killed in the middle of a `put` or `get` (a window of one `memcpy`)
/// leaves one slot claimed forever, and the queue stalls at that slot: there is no lock to
/// recover (the module docs say why). A blocked `put` or `get` that finds the slot it waits for
/// claimed and unfinished for 2 s fails with [`Error::QueueStalled`] rather than hanging. The
/// pool's own transport uses per-worker SPSC rings for that reason.
///
/// # Examples
///
/// The program of the seed tutorial: one task writes the letters of "python", a later task reads
/// them back in order.
///
/// ```
/// use shmpool::{Pool, Queue};
///
/// fn write(q: Queue<char>) {
///     for c in "python".chars() {
///         q.put(c).unwrap();
///     }
/// }
///
/// fn read(q: Queue<char>) -> String {
///     (0..q.len()).map(|_| q.get().unwrap()).collect()
/// }
///
/// let q = Queue::new(16)?; // before the pool, so that its workers map it
/// let pool = Pool::new(2)?;
/// pool.apply_async(write, q.clone())?.get()?;
/// assert_eq!(pool.apply_async(read, q.clone())?.get()?, "python");
/// # Ok::<(), shmpool::Error>(())
/// ```
pub struct Queue<T> {
    shared: Arc<Shared>,
    /// Items are stored encoded, so the queue is `Send + Sync` whatever `T` is.
    _item: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shared: Arc::clone(&self.shared),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("id", &self.shared.key.serial)
            .field("capacity", &self.shared.capacity)
            .field("slot_size", &self.shared.slot_size)
            .field("len", &self.shared.len())
            .finish()
    }
}

impl<T: Payload> Queue<T> {
    /// The slot size [`Queue::new`] uses: the most bytes one encoded item may take.
    /// # Examples
    ///
    /// ```
    /// let q = shmpool::Queue::<Vec<u8>>::new(2)?;
    /// assert_eq!(q.slot_size(), shmpool::Queue::<Vec<u8>>::DEFAULT_SLOT_SIZE);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub const DEFAULT_SLOT_SIZE: usize = 1024;

    /// Creates a queue holding at most `capacity` items of at most
    /// [`DEFAULT_SLOT_SIZE`](Queue::DEFAULT_SLOT_SIZE) encoded bytes each.
    ///
    /// The queue takes about `capacity * (slot size + 16)` bytes of shared memory, all of it
    /// touched at creation.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `capacity` is 0 or too large to map; [`Error::Os`] if the
    /// shared segment cannot be created.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = shmpool::Queue::<u32>::new(8)?;
    /// assert_eq!(q.capacity(), 8);
    /// assert!(shmpool::Queue::<u32>::new(0).is_err());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn new(capacity: usize) -> Result<Queue<T>> {
        Self::with_slot_size(capacity, Self::DEFAULT_SLOT_SIZE)
    }

    /// Creates a queue holding at most `capacity` items of at most `slot_size` encoded bytes
    /// each (postcard: a `u32` takes 1–5 bytes, a `String` its length plus 1–5).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `capacity` or `slot_size` is 0, or the queue is too large
    /// to map; [`Error::Os`] if the shared segment cannot be created.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmpool::{Error, Queue};
    ///
    /// let q = Queue::<String>::with_slot_size(4, 64)?;
    /// q.put("short".to_string())?;
    /// let e = q.put("x".repeat(100)).unwrap_err();
    /// assert!(matches!(e, Error::PayloadTooLarge { size: 101, capacity: 64 }));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn with_slot_size(capacity: usize, slot_size: usize) -> Result<Queue<T>> {
        install_fork_handlers()?;
        let mut shared = Shared::map(capacity, slot_size)?;
        let mut reg = registry();
        shared.key = Key {
            pid: this_pid(),
            serial: reg.next_serial,
        };
        reg.next_serial += 1;
        let shared = Arc::new(shared);
        reg.map.insert(
            shared.key,
            Entry {
                shared: Arc::downgrade(&shared),
                type_id: TypeId::of::<T>(),
                type_name: std::any::type_name::<T>(),
            },
        );
        drop(reg);
        Ok(Queue {
            shared,
            _item: PhantomData,
        })
    }

    /// Puts `item` at the back, waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// [`Error::PayloadTooLarge`] if the encoded item exceeds the slot size, [`Error::Codec`]
    /// if it cannot be encoded. Nothing is stored then.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = shmpool::Queue::new(2)?;
    /// q.put((1u8, "one".to_string()))?;
    /// assert_eq!(q.get()?, (1, "one".to_string()));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn put(&self, item: T) -> Result<()> {
        self.put_until(&item, None)
    }

    /// Like [`put`](Queue::put), but gives up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the queue stayed full, otherwise as for `put`; either way in a
    /// [`SubmitError`] that hands the item back (`?` turns it into the plain [`Error`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmpool::{Error, Queue};
    ///
    /// let q = Queue::new(1)?;
    /// q.put_timeout('a', Duration::from_millis(10))?;
    /// let full = q.put_timeout('b', Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(full.error, Error::Timeout));
    /// assert_eq!(full.value, 'b');
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SubmitError<T>> {
        self.put_until(&item, Some(Instant::now() + timeout))
            .map_err(|e| SubmitError::new(e, item))
    }

    /// Puts `item` at the back if there is room, without waiting. Returns `Ok(Err(item))`,
    /// handing the item back, when the queue is full (Python's `put_nowait` raising `Full`).
    ///
    /// # Errors
    ///
    /// [`Error::PayloadTooLarge`] if the encoded item exceeds the slot size, [`Error::Codec`]
    /// if it cannot be encoded.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = shmpool::Queue::new(1)?;
    /// assert_eq!(q.try_put(1u64)?, Ok(()));
    /// assert_eq!(q.try_put(2u64)?, Err(2)); // full: the item comes back
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn try_put(&self, item: T) -> Result<std::result::Result<(), T>> {
        if !self.shared.can_put() {
            return Ok(Err(item));
        }
        let stored = with_encoded(&item, self.shared.slot_size, |bytes| {
            self.shared.try_put_bytes(bytes)
        })??;
        if stored {
            self.shared.header().not_empty.notify();
            Ok(Ok(()))
        } else {
            Ok(Err(item))
        }
    }

    fn put_until(&self, item: &T, deadline: Option<Instant>) -> Result<()> {
        let shared = &*self.shared;
        with_encoded(item, shared.slot_size, |bytes| {
            let mut stall = Stall::default();
            loop {
                if shared.try_put_bytes(bytes)? {
                    shared.header().not_empty.notify();
                    return Ok(());
                }
                let timeout = stall.check(shared.stuck_put(), remaining(deadline)?)?;
                let spin = timeout.map_or(DEFAULT_SPIN, |t| t.min(DEFAULT_SPIN));
                shared
                    .header()
                    .not_full
                    .wait_until(spin, timeout, || shared.can_put());
            }
        })?
    }

    /// Takes the item at the front, waiting while the queue is empty.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the item cannot be decoded as a `T` (it is consumed all the same).
    ///
    /// # Examples
    ///
    /// ```
    /// let q = shmpool::Queue::new(4)?;
    /// let producer = {
    ///     let q = q.clone();
    ///     std::thread::spawn(move || q.put(7i64))
    /// };
    /// assert_eq!(q.get()?, 7);
    /// producer.join().unwrap()?;
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn get(&self) -> Result<T> {
        self.get_until(None)
    }

    /// Like [`get`](Queue::get), but gives up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the queue stayed empty; otherwise as for `get`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmpool::{Error, Queue};
    ///
    /// let q = Queue::<u8>::new(1)?;
    /// let e = q.get_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(e, Error::Timeout));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(Some(Instant::now() + timeout))
    }

    /// Takes the item at the front if there is one, without waiting (Python's `get_nowait`).
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the item cannot be decoded as a `T` (it is consumed all the same).
    ///
    /// # Examples
    ///
    /// ```
    /// let q = shmpool::Queue::new(2)?;
    /// assert_eq!(q.try_get()?, None);
    /// q.put(vec![1u8, 2])?;
    /// assert_eq!(q.try_get()?, Some(vec![1, 2]));
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn try_get(&self) -> Result<Option<T>> {
        let mut stack = [0u8; INLINE];
        let mut heap = Vec::new();
        let taken = self.shared.try_take(&mut stack, &mut heap);
        if !matches!(taken, Ok(None)) {
            // A slot was handed back (even when its contents were bad).
            self.shared.header().not_full.notify();
        }
        match taken? {
            None => Ok(None),
            Some(len) => {
                let bytes = if len <= INLINE {
                    &stack[..len]
                } else {
                    &heap[..]
                };
                postcard::from_bytes(bytes).map(Some).map_err(Error::codec)
            }
        }
    }

    fn get_until(&self, deadline: Option<Instant>) -> Result<T> {
        let shared = &*self.shared;
        let mut stall = Stall::default();
        loop {
            if let Some(item) = self.try_get()? {
                return Ok(item);
            }
            let timeout = stall.check(shared.stuck_get(), remaining(deadline)?)?;
            let spin = timeout.map_or(DEFAULT_SPIN, |t| t.min(DEFAULT_SPIN));
            shared
                .header()
                .not_empty
                .wait_until(spin, timeout, || shared.can_get());
        }
    }
}

impl<T> Queue<T> {
    /// Number of items in the queue: exact when nobody is putting or getting, a snapshot
    /// otherwise (like Python's `qsize`). Items whose `put` is still copying count already.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = shmpool::Queue::new(4)?;
    /// q.put(1u8)?;
    /// q.put(2u8)?;
    /// assert_eq!(q.len(), 2);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// True if [`len`](Queue::len) is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let q = shmpool::Queue::<String>::new(4)?;
    /// assert!(q.is_empty());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the queue holds.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(shmpool::Queue::<u8>::new(3)?.capacity(), 3);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.capacity as usize
    }

    /// The most encoded bytes one item may take.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(shmpool::Queue::<u8>::with_slot_size(3, 8)?.slot_size(), 8);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn slot_size(&self) -> usize {
        self.shared.slot_size
    }
}

/// Time left until `deadline`: `Ok(None)` for no deadline, [`Error::Timeout`] once it passed.
/// How long a claimed slot may stay unfinished before a blocked `put`/`get` calls the queue
/// stalled. A live claimer finishes within one `memcpy` of at most `slot_size` bytes, so only a
/// stopped (`SIGSTOP`, a debugger) or killed process takes this long.
const STALL_LIMIT: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(2)
};

/// How often a blocked `put`/`get` looks for a stuck slot while nothing wakes it: a claimer
/// killed mid-operation wakes nobody, so this is the one wait that a timeout must end.
const STALL_POLL: Duration = Duration::from_millis(500);

/// A blocked call's view of a stuck slot: the position and since when it has been stuck.
#[derive(Debug, Default)]
struct Stall(Option<(u64, Instant)>);

impl Stall {
    /// Notes what `stuck` found; fails with [`Error::QueueStalled`] once the same position has
    /// been stuck for `STALL_LIMIT`. Returns how long the caller may sleep: its own `timeout`,
    /// cut so it looks again in time.
    fn check(&mut self, stuck: Option<u64>, timeout: Option<Duration>) -> Result<Option<Duration>> {
        let now = Instant::now();
        let until_verdict = match (stuck, self.0) {
            (Some(p), Some((q, since))) if p == q => {
                let waited = now - since;
                if waited >= STALL_LIMIT {
                    return Err(Error::QueueStalled {
                        position: p,
                        waited,
                    });
                }
                STALL_LIMIT - waited
            }
            (Some(p), _) => {
                self.0 = Some((p, now));
                STALL_LIMIT
            }
            (None, _) => {
                self.0 = None;
                STALL_POLL
            }
        };
        Ok(Some(
            timeout.map_or(until_verdict, |t| t.min(until_verdict)),
        ))
    }
}

fn remaining(deadline: Option<Instant>) -> Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                Err(Error::Timeout)
            } else {
                Ok(Some(d - now))
            }
        }
    }
}

/// Encodes `item` (through a stack buffer when small) and runs `f` on the bytes.
///
/// # Errors
///
/// [`Error::PayloadTooLarge`] above `slot_size` bytes, [`Error::Codec`] if encoding fails.
fn with_encoded<T: serde::Serialize, R>(
    item: &T,
    slot_size: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R> {
    let mut stack = [0u8; INLINE];
    let limit = slot_size.min(INLINE);
    match postcard::to_slice(item, &mut stack[..limit]) {
        Ok(bytes) => return Ok(f(bytes)),
        Err(postcard::Error::SerializeBufferFull) => {}
        Err(e) => return Err(Error::codec(serialize_error(&e, item))),
    }
    let size = postcard::serialize_with_flavor::<T, _, usize>(
        item,
        postcard::ser_flavors::Size::default(),
    )
    .map_err(|e| Error::codec(serialize_error(&e, item)))?;
    if size > slot_size {
        return Err(Error::PayloadTooLarge {
            size,
            capacity: slot_size,
        });
    }
    let mut heap = vec![0u8; size];
    let bytes =
        postcard::to_slice(item, &mut heap).map_err(|e| Error::codec(serialize_error(&e, item)))?;
    Ok(f(bytes))
}

// ---------------------------------------------------------------------------------------------
// Crossing processes: a queue serializes as its registry key.

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.shared.key.pid)?;
        t.serialize_element(&self.shared.key.serial)?;
        t.end()
    }
}

impl<'de, T: Payload> Deserialize<'de> for Queue<T> {
    /// Looks the queue up in this process's registry. Fails with a serde error naming the
    /// problem when this process does not map the queue (it was created after the pool was
    /// built, or dropped) or it holds another item type.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a shmpool queue id (pid, serial)")
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Key, A::Error> {
                let pid = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let serial = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                Ok(Key { pid, serial })
            }
        }

        let key = deserializer.deserialize_tuple(2, KeyVisitor)?;
        match lookup::<T>(key) {
            Ok(shared) => Ok(Queue {
                shared,
                _item: PhantomData,
            }),
            Err(msg) => {
                // postcard drops custom messages; keep this one for the task's error.
                crate::task::note_decode_detail(&msg.to_string());
                Err(de::Error::custom(msg))
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// What a process killed right after claiming leaves: a claimed position, never finished.
    fn claim_and_die(q: &Queue<u64>, put: bool) -> u64 {
        let sh = &*q.shared;
        let claim = if put {
            mpmc::claim_put(&sh.header().enqueue_pos, |p| sh.slot(p).0)
        } else {
            mpmc::claim_take(&sh.header().dequeue_pos, |p| sh.slot(p).0)
        };
        match claim {
            mpmc::Claim::Claimed(pos) => pos,
            other => panic!("no claim: {other:?}"),
        }
    }

    #[test]
    fn a_producer_killed_mid_put_makes_get_fail_with_queue_stalled_not_hang() {
        let q = Queue::<u64>::new(4).unwrap();
        q.put(1).unwrap();
        let torn = claim_and_die(&q, true);
        q.put(3).unwrap(); // behind the torn slot: unreachable
        assert_eq!(q.get().unwrap(), 1);
        let t = Instant::now();
        match q.get() {
            Err(e @ Error::QueueStalled { position, waited }) => {
                assert_eq!(position, torn);
                assert!(waited >= STALL_LIMIT, "{waited:?}");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "the queue is stuck at position {torn}: a process claimed that slot and \
                         did not finish within {waited:?} (killed in the middle of a put or get?)"
                    )
                );
            }
            other => panic!("expected QueueStalled, got {other:?}"),
        }
        assert!(t.elapsed() >= STALL_LIMIT);
        // A `get_timeout` shorter than the limit still times out as before.
        assert!(matches!(
            q.get_timeout(Duration::from_millis(10)),
            Err(Error::Timeout)
        ));
    }

    #[test]
    fn a_consumer_killed_mid_get_makes_put_fail_with_queue_stalled_not_hang() {
        let q = Queue::<u64>::new(2).unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        let torn = claim_and_die(&q, false);
        assert_eq!(q.get().unwrap(), 2);
        // Position 2 reuses the torn slot (position 1's slot was handed back, but producers go
        // in order).
        match q.put(5) {
            Err(Error::QueueStalled { position, .. }) => assert_eq!(position, torn),
            other => panic!("expected QueueStalled, got {other:?}"),
        }
    }

    #[test]
    fn a_slow_producer_is_not_a_stall() {
        let q = Queue::<u64>::new(2).unwrap();
        let pos = claim_and_die(&q, true);
        let q2 = q.clone();
        let publisher = std::thread::spawn(move || {
            std::thread::sleep(STALL_LIMIT / 3);
            let sh = &*q2.shared;
            let bytes = postcard::to_allocvec(&9u64).unwrap();
            let (slot, data) = sh.slot(pos);
            // SAFETY: this test claimed `pos` above and nobody else touches the slot until it
            // is published; the payload fits the slot.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) };
            mpmc::publish(slot, pos, bytes.len() as u64);
            sh.header().not_empty.notify();
        });
        assert_eq!(q.get().unwrap(), 9);
        publisher.join().unwrap();
    }

    #[test]
    fn an_item_of_exactly_the_slot_size_fits_and_one_byte_more_does_not() {
        // A `Vec<u8>` of n < 128 bytes encodes as 1 length byte + n.
        let q = Queue::<Vec<u8>>::with_slot_size(2, 10).unwrap();
        q.put(vec![7; 9]).unwrap();
        match q.put(vec![7; 10]) {
            Err(Error::PayloadTooLarge { size, capacity }) => {
                assert_eq!((size, capacity), (11, 10))
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        assert_eq!(q.len(), 1, "a rejected item takes no slot");
        assert_eq!(q.get().unwrap(), vec![7; 9]);
    }

    #[test]
    fn items_around_the_inline_buffer_size_round_trip() {
        let q = Queue::<Vec<u8>>::with_slot_size(8, 4096).unwrap();
        // 1-byte length prefix up to 127, 2 bytes from 128: straddle INLINE on both sides.
        for n in [
            0,
            1,
            127,
            128,
            INLINE - 3,
            INLINE - 2,
            INLINE - 1,
            INLINE,
            1000,
            4093,
        ] {
            let v: Vec<u8> = (0..n).map(|i| i as u8).collect();
            q.put(v.clone()).unwrap();
            assert_eq!(q.get().unwrap(), v, "length {n}");
        }
        assert!(matches!(
            q.put(vec![0; 4095]),
            Err(Error::PayloadTooLarge {
                size: 4097,
                capacity: 4096
            })
        ));
    }

    #[test]
    fn zero_sized_items_take_slots() {
        let q = Queue::<()>::with_slot_size(2, 1).unwrap();
        q.put(()).unwrap();
        q.put(()).unwrap();
        assert_eq!(q.try_put(()).unwrap(), Err(()));
        q.get().unwrap();
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn positions_wrap_around_many_laps_in_order() {
        for cap in [1, 2, 3, 7] {
            let q = Queue::<u64>::new(cap).unwrap();
            let mut next_out = 0;
            for i in 0..1000u64 {
                if q.try_put(i).unwrap().is_err() {
                    while let Some(v) = q.try_get().unwrap() {
                        assert_eq!(v, next_out);
                        next_out += 1;
                    }
                    q.try_put(i).unwrap().unwrap();
                }
                assert!(q.len() <= cap);
            }
            while let Some(v) = q.try_get().unwrap() {
                assert_eq!(v, next_out);
                next_out += 1;
            }
            assert_eq!(next_out, 1000);
        }
    }

    #[test]
    fn a_corrupted_length_is_an_error_and_the_slot_is_released() {
        let q = Queue::<u32>::with_slot_size(2, 8).unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        // Another process scribbles a length larger than the slot over item 1.
        q.shared.slot(0).0.len.store(1 << 40, Ordering::Relaxed);
        match q.get() {
            Err(Error::Codec { detail }) => assert!(detail.contains("corrupted"), "{detail}"),
            other => panic!("expected a codec error, got {other:?}"),
        }
        // The bad slot was consumed and handed back: the queue goes on.
        assert_eq!(q.get().unwrap(), 2);
        q.put(3).unwrap();
        q.put(4).unwrap();
        assert_eq!((q.get().unwrap(), q.get().unwrap()), (3, 4));
    }

    #[test]
    fn a_sequence_number_nobody_wrote_is_an_error_not_an_endless_retry() {
        let q = Queue::<u32>::new(2).unwrap();
        // Another process scribbles a far-future sequence over slot 0.
        q.shared.slot(0).0.seq.store(1000, Ordering::Relaxed);
        for r in [q.try_put(1).map(|_| ()), q.try_get().map(|_| ())] {
            match r {
                Err(Error::Codec { detail }) => assert!(detail.contains("corrupted"), "{detail}"),
                other => panic!("expected a corruption error, got {other:?}"),
            }
        }
    }

    #[test]
    fn undecodable_bytes_are_a_codec_error_and_consume_the_item() {
        let q = Queue::<bool>::new(2).unwrap();
        // A process that disagrees on the type put a byte that is no postcard `bool`.
        assert!(q.shared.try_put_bytes(&[2]).unwrap());
        assert!(matches!(q.get(), Err(Error::Codec { .. })));
        assert!(q.is_empty());
        q.put(true).unwrap();
        assert!(q.get().unwrap());
    }

    #[test]
    fn lookup_explains_what_is_wrong() {
        let q = Queue::<u16>::new(1).unwrap();
        let key = q.shared.key;
        assert!(lookup::<u16>(key).is_ok());
        assert_eq!(
            lookup::<String>(key).unwrap_err(),
            format!(
                "queue {} holds `u16`, not `alloc::string::String`",
                key.serial
            )
        );
        let foreign = Key {
            pid: this_pid().wrapping_add(1),
            serial: u64::MAX,
        };
        assert_eq!(
            lookup::<u16>(foreign).unwrap_err(),
            format!(
                "queue {} was created after the pool was built; create queues before the pool",
                u64::MAX
            )
        );
        drop(q);
        assert_eq!(
            lookup::<u16>(key).unwrap_err(),
            format!("queue {} was already dropped", key.serial)
        );
    }

    #[test]
    fn a_queue_round_trips_through_postcard_in_one_process() {
        let q = Queue::<u8>::new(2).unwrap();
        let bytes = postcard::to_allocvec(&q).unwrap();
        let q2: Queue<u8> = postcard::from_bytes(&bytes).unwrap();
        q2.put(9).unwrap();
        assert_eq!(q.get().unwrap(), 9);
    }

    #[test]
    fn bad_sizes_are_invalid_arguments() {
        assert!(matches!(
            Queue::<u8>::new(0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Queue::<u8>::with_slot_size(1, 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Queue::<u8>::with_slot_size(usize::MAX / 2, 1024),
            Err(Error::InvalidArgument { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever another process wrote over the queue's positions, sequence numbers, lengths
        /// and bytes, every call answers (an item, "empty/full", or an error) without panicking.
        #[test]
        fn any_scribbled_queue_answers(
            enqueue in proptest::prelude::any::<u64>(),
            dequeue in proptest::prelude::any::<u64>(),
            heads in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), 0u64..64),
                4,
            ),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 32),
        ) {
            let q = Queue::<String>::with_slot_size(4, 8).unwrap();
            let h = q.shared.header();
            h.enqueue_pos.store(enqueue, Ordering::Relaxed);
            h.dequeue_pos.store(dequeue, Ordering::Relaxed);
            for (i, (seq, len)) in heads.iter().enumerate() {
                let (slot, data) = q.shared.slot(i as u64);
                slot.seq.store(*seq, Ordering::Relaxed);
                slot.len.store(*len, Ordering::Relaxed);
                // SAFETY: the slot's 8 payload bytes; no other thread uses this queue.
                unsafe { std::ptr::copy_nonoverlapping(bytes[i * 8..].as_ptr(), data, 8) };
            }
            for _ in 0..6 {
                let _ = q.try_get();
                let _ = q.try_put("ab".to_string());
            }
            let _ = q.len();
        }
    }
}
