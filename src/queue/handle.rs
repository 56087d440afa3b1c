//! The public handle, [`Queue`]: blocking, timed and non-blocking put and get.

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::encoding::payload::Payload;
use crate::encoding::ser_probe::serialize_error;
use crate::error::{Error, Result, SubmitError};
use crate::shm::wake::DEFAULT_SPIN;

use super::protocol::{INLINE, Key, Shared};
use super::registry::{Entry, install_fork_handlers, registry, this_pid};

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
    pub(super) shared: Arc<Shared>,
    /// Items are stored encoded, so the queue is `Send + Sync` whatever `T` is.
    pub(super) _item: PhantomData<fn(T) -> T>,
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
pub(super) const STALL_LIMIT: Duration = if cfg!(test) {
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
