//! What crosses `fork` as code: monomorphized trampolines that a descriptor names by address.
//!
//! A task function `F` must be zero-sized and `Copy` (a `fn` item or a closure that captures
//! nothing), checked at compile time by [`assert_task_fn`]. The worker is a fork of the parent, so
//! the address of `call_one::<F, A, R>` taken in the parent is valid in the worker; the trampoline
//! decodes the argument from the argument arena, makes its own copy of `F` (zero bytes, so a copy
//! needs no data from the parent), runs it under `catch_unwind`, and encodes the result straight
//! into the result arena. A chunk's trampoline reads primitive-number arguments in place from the
//! argument arena and encodes its results into a buffer the worker keeps between chunks, then
//! copies them into the result arena in one piece.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::encoding::payload::{ChunkOutWriter, for_each_in_list};
use crate::shm::arena::{Placement, free_region, plan};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::unwind::panic_message;

/// Where an encoded result landed in the result arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) end: u64,
}

/// What running a trampoline produced.
#[derive(Debug)]
pub(crate) enum CallOutcome {
    /// The result was encoded into the arena.
    Done(Encoded),
    /// The task panicked with this message.
    Panicked(String),
    /// The task could not be run or its result not shipped.
    Failed(String),
}

/// The type of every trampoline.
pub(crate) type CallFn = unsafe fn(arg: &[u8], sink: &mut ResultSink<'_>) -> CallOutcome;

/// A worker's writer into its result arena.
pub(crate) struct ResultSink<'a> {
    base: *mut u8,
    cap: usize,
    /// Our allocation position (worker-private; re-derived from `freed` after a respawn).
    head: &'a mut u64,
    /// Everything before this is free (we restarted the empty arena there; see `arena`).
    floor: &'a mut u64,
    /// The parent's consumption position (`SeatCtl::result_freed`).
    freed: &'a AtomicU64,
    /// Called while waiting for the parent to free space; returns false to give up.
    keep_waiting: &'a dyn Fn() -> bool,
    /// A result too large for the arena, written to a segment instead (`bigpayload`): the
    /// segment, its length and whether it is the worker's reused one, for the worker loop to
    /// send with the result.
    big: Option<(std::os::fd::OwnedFd, u64, bool)>,
    /// The seat's `result_segment_busy`, when a large byte-vector result may go to the worker's
    /// reused segment (`bigpayload`, "Reused result segments").
    segment_busy: Option<&'a AtomicU32>,
}

impl std::fmt::Debug for ResultSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultSink")
            .field("cap", &self.cap)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl<'a> ResultSink<'a> {
    /// # Safety
    ///
    /// `base..base+cap` is this worker's result arena, and only this process allocates in it.
    pub(crate) unsafe fn new(
        base: *mut u8,
        cap: usize,
        head: &'a mut u64,
        floor: &'a mut u64,
        freed: &'a AtomicU64,
        keep_waiting: &'a dyn Fn() -> bool,
    ) -> Self {
        ResultSink {
            base,
            cap,
            head,
            floor,
            freed,
            keep_waiting,
            big: None,
            segment_busy: None,
        }
    }

    /// Lets a large byte-vector result go to this worker's reused result segment when `busy`
    /// (the seat's `result_segment_busy`) says the parent is done with it.
    pub(crate) fn reuse_segments(&mut self, busy: &'a AtomicU32) {
        self.segment_busy = Some(busy);
    }

    /// Takes the large-result segment the last `put` made, if it made one: the segment, its
    /// length, and whether it is the worker's reused one.
    pub(crate) fn take_big(&mut self) -> Option<(std::os::fd::OwnedFd, u64, bool)> {
        self.big.take()
    }

    /// Like [`put_parts`](Self::put_parts) for a byte vector: one too large for the arena (and
    /// at most 16 arena sizes) goes to the worker's reused result segment if the parent has
    /// finished copying the last result out of it, otherwise to a fresh sealed one (never
    /// waits).
    pub(crate) fn put_byte_parts(&mut self, head: &[u8], bytes: &[u8]) -> Result<Encoded, String> {
        let n = head.len() + bytes.len();
        // Bounded like the spares (the parent refuses a larger announced length).
        if n > self.cap
            && n <= self.cap.saturating_mul(crate::encoding::bigpayload::REUSE_MAX_ARENAS)
            && let Some(busy) = self.segment_busy
            // Acquire, SYNC: result-segment-free — the parent's Release store of 0 after it
            // copied our last result out: its reads of the segment happen before we rewrite it.
            && busy.load(Ordering::Acquire) == 0
            && let Ok(fd) = crate::encoding::bigpayload::write_reusable(head, bytes)
        {
            // Relaxed, SYNC: result-segment-free — no partner of its own: the parent's store of
            // 0 for this result comes after it read the descriptor, which the ring's Release
            // publish orders after this store.
            busy.store(1, Ordering::Relaxed);
            self.big = Some((fd, n as u64, true));
            return Ok(Encoded {
                offset: 0,
                len: 0,
                end: *self.head,
            });
        }
        self.put_parts(head, bytes)
    }

    fn freed(&self) -> u64 {
        // Acquire, SYNC: result-free — pairs with the parent's Release store after it decoded a
        // result, so its reads of that region happen before we overwrite it.
        let f = self.freed.load(Ordering::Acquire);
        f.max(*self.floor).min(*self.head)
    }

    fn advance(&mut self, p: Placement) {
        *self.head = p.end;
        if let Some(floor) = p.restart {
            *self.floor = floor;
        }
    }

    /// Encodes `value` into the arena: straight into free space when it fits, otherwise through
    /// one temporary buffer once space frees up.
    pub(crate) fn put<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<Encoded, String> {
        let freed = self.freed();
        let (off, len) = free_region(*self.head, freed, self.cap);
        // SAFETY: `off..off+len` lies in the arena (`free_region` contract) and holds no result the
        // parent has not consumed yet, so nobody else reads or writes it while we encode.
        let region = unsafe { std::slice::from_raw_parts_mut(self.base.add(off), len) };
        match postcard::to_slice(value, region) {
            Ok(used) => {
                let n = used.len();
                // It fits the free region, so `plan` places it there; the one exception is an
                // empty payload on a full arena, which waits like any other in `put_bytes`.
                if let Some(p) = plan(*self.head, freed, self.cap, n) {
                    debug_assert_eq!(p.offset, off);
                    self.advance(p);
                    return Ok(Encoded {
                        offset: off,
                        len: n,
                        end: p.end,
                    });
                }
                debug_assert_eq!(n, 0);
                return self.put_bytes(&[]);
            }
            Err(postcard::Error::SerializeBufferFull) => {}
            Err(e) => return Err(encode_failed(&e, value)),
        }
        let bytes = postcard::to_allocvec(value).map_err(|e| encode_failed(&e, value))?;
        self.put_bytes(&bytes)
    }

    /// Copies already-encoded bytes into the arena, waiting for space if needed.
    pub(crate) fn put_bytes(&mut self, bytes: &[u8]) -> Result<Encoded, String> {
        self.put_parts(&[], bytes)
    }

    /// Like [`put_bytes`](Self::put_bytes) for the concatenation `head ++ bytes`.
    ///
    /// A result larger than the whole arena goes to a sealed segment of its own instead
    /// (`bigpayload`; see [`take_big`](Self::take_big)); nothing is placed in the arena.
    pub(crate) fn put_parts(&mut self, head: &[u8], bytes: &[u8]) -> Result<Encoded, String> {
        let n = head.len() + bytes.len();
        if n > self.cap {
            let fd = crate::encoding::bigpayload::make_segment(head, bytes)
                .map_err(|e| format!("cannot make a segment for a result of {n} bytes: {e}"))?;
            self.big = Some((fd, n as u64, false));
            return Ok(Encoded {
                offset: 0,
                len: 0,
                end: *self.head,
            });
        }
        loop {
            let freed = self.freed();
            if let Some(p) = plan(*self.head, freed, self.cap, n) {
                // SAFETY: `plan` placed `n` = `head.len() + bytes.len()` bytes inside the arena
                // over space the parent freed; the two copies fill it back to back.
                unsafe {
                    let at = self.base.add(p.offset);
                    std::ptr::copy_nonoverlapping(head.as_ptr(), at, head.len());
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), at.add(head.len()), bytes.len());
                }
                self.advance(p);
                return Ok(Encoded {
                    offset: p.offset,
                    len: n,
                    end: p.end,
                });
            }
            if !(self.keep_waiting)() {
                return Err("gave up waiting for result arena space".into());
            }
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
}

/// The message of a result that cannot be encoded (with the serializer's own words).
fn encode_failed<T: Serialize + ?Sized>(e: &postcard::Error, value: &T) -> String {
    format!(
        "cannot encode the result: {}",
        crate::encoding::ser_probe::serialize_error(e, value)
    )
}

/// Compile-time check that `F` can cross `fork` as code only.
///
/// A post-monomorphization error: the inline `const` is evaluated when a caller instantiates it,
/// which `cargo build`/`cargo test` (and doctests: see the `compile_fail` example on `Pool`) do
/// and `cargo check`/rust-analyzer do not. No stable trait bound can say "captures nothing", so
/// this is the earliest check available (see the crate docs, "What a task may rely on").
#[inline(always)]
pub(crate) const fn assert_task_fn<F>() {
    const {
        assert!(
            size_of::<F>() == 0,
            "shmpool: a task function must capture nothing (a `fn` item or a non-capturing \
             closure); pass data in the argument or set it up in the initializer"
        )
    }
}

/// Makes this process's copy of the task function.
///
/// # Safety
///
/// `F` is zero-sized and `Copy`, and a value of `F` existed in the parent (the pool took one):
/// copying zero bytes of it is exactly what this does.
pub(crate) unsafe fn conjure<F: Copy>() -> F {
    assert_task_fn::<F>();
    // SAFETY: `F` has no bytes, so the all-zero `F` is every `F`; per the contract this is a
    // bitwise copy of the parent's `F`, which `Copy` allows.
    unsafe { std::mem::zeroed::<F>() }
}

/// Where the last panic on this thread happened, and its backtrace if one was captured: written
/// by the hook `install_panic_site_hook` installs, taken by [`task_panic`].
struct PanicSite {
    location: Option<String>,
    backtrace: Option<String>,
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<PanicSite>> = const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// Whether this thread notes its panics' sites for [`task_panic`]: only a worker's task
    /// thread does ([`record_panic_sites`]); elsewhere the hook only hands over.
    static RECORD_SITES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the calling thread (a worker's task loop) note the site of each of its panics.
pub(crate) fn record_panic_sites() {
    RECORD_SITES.with(|r| r.set(true));
}

/// Installs, once per process and in the parent, a panic hook that notes each panic's location
/// (and a backtrace when `RUST_BACKTRACE`/`RUST_LIB_BACKTRACE` ask for one) on threads that
/// [`record_panic_sites`], before handing over to the hook that was there (std's prints the
/// usual message). The catch in the trampoline then ships them with the message
/// ([`task_panic`]). Returns whether it installed the hook now (which also waited for every
/// panic in progress, as `take_hook` does).
///
/// Called by `fork_server` just before it forks, never in a worker: a worker is a fork of a
/// multi-threaded parent and must not take the panic hook's write lock, which another thread of
/// the parent can hold (or hold for reading: a panic being printed, another pool's
/// `fork_server`) at the instant of the fork, leaving it locked in the worker for ever. Workers
/// installing this hook themselves, at their first task, hung that way: every worker of a pool
/// blocked in `take_hook` before its first task (reproduced by `tests/fork_hooks.rs`).
///
/// A hook the program sets after its first pool replaces this one: tasks of pools built later
/// still report their panics' messages, without the location.
pub(crate) fn install_panic_site_hook() -> bool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut installed = false;
    ONCE.call_once(|| {
        installed = true;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // `try_with`: a panic while this thread's locals are being destroyed records nothing.
            if RECORD_SITES.try_with(std::cell::Cell::get).unwrap_or(false) {
                let site = PanicSite {
                    location: info.location().map(|l| l.to_string()),
                    backtrace: {
                        let bt = std::backtrace::Backtrace::capture();
                        (bt.status() == std::backtrace::BacktraceStatus::Captured)
                            .then(|| bt.to_string())
                    },
                };
                let _ = LAST_PANIC.try_with(|p| {
                    if let Ok(mut p) = p.try_borrow_mut() {
                        *p = Some(site);
                    }
                });
            }
            previous(info);
        }));
    });
    installed
}

/// Marks the wire form of a task's panic (see [`task_panic`]).
const REPORT_TAG: char = '\u{1e}';
/// Separates its fields.
const REPORT_SEP: char = '\u{1f}';

/// The wire form of a task's panic, for the parent's [`Error::TaskPanicked`]: the payload's
/// message, with the location and backtrace the hook noted for it:
/// `TAG location SEP backtrace SEP message`. The message goes last so that cutting an
/// over-long report (the worker ships at most 64 KiB) cuts only the message.
///
/// [`Error::TaskPanicked`]: crate::Error::TaskPanicked
pub(crate) fn task_panic(p: &(dyn std::any::Any + Send)) -> String {
    let site = LAST_PANIC
        .try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.take()))
        .ok()
        .flatten();
    let (location, backtrace) = site.map_or((None, None), |s| (s.location, s.backtrace));
    let clean = |s: Option<String>| s.unwrap_or_default().replace([REPORT_TAG, REPORT_SEP], " ");
    format!(
        "{REPORT_TAG}{}{REPORT_SEP}{}{REPORT_SEP}{}",
        clean(location),
        clean(backtrace),
        panic_message(p)
    )
}

/// The parent's error for a task panic shipped by [`task_panic`] from worker `worker` (a
/// message without the tag is taken as a bare message).
pub(crate) fn panicked(worker: usize, wire: &str) -> crate::Error {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let parsed = wire.strip_prefix(REPORT_TAG).and_then(|rest| {
        let mut parts = rest.splitn(3, REPORT_SEP);
        Some((parts.next()?, parts.next()?, parts.next()?))
    });
    let (location, backtrace, message) = match parsed {
        Some((l, b, m)) => (some(l), some(b), m.to_string()),
        None => (None, None, wire.to_string()),
    };
    crate::Error::TaskPanicked {
        worker,
        message,
        location,
        backtrace,
    }
}

thread_local! {
    /// Why the last `Deserialize` of one of our own types failed (postcard keeps only a generic
    /// "Serde Deserialization Error" for custom messages).
    static DECODE_DETAIL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records why a `Deserialize` impl of this crate is about to fail, for the task's error.
pub(crate) fn note_decode_detail(detail: &str) {
    DECODE_DETAIL.with(|d| *d.borrow_mut() = Some(detail.to_owned()));
}

thread_local! {
    /// A worker's spare byte vector (`bigpayload`, "Reuse of byte vectors"): the allocation of
    /// its last large `Vec<u8>` result once shipped, into which the next large byte-vector
    /// argument is decoded. Made at the first task (sized from its arena); one per worker,
    /// freed with the worker.
    static WORKER_SPARE: std::cell::OnceCell<crate::encoding::payload::SpareBytes> =
        const { std::cell::OnceCell::new() };
}

/// Runs `f` with this worker's spare byte vector, for arenas of `cap` bytes.
fn with_spare<T>(cap: usize, f: impl FnOnce(&crate::encoding::payload::SpareBytes) -> T) -> T {
    WORKER_SPARE.with(|s| f(s.get_or_init(|| crate::encoding::payload::SpareBytes::new(cap))))
}

fn decode<A: DeserializeOwned + 'static>(arg: &[u8], cap: usize) -> Result<A, CallOutcome> {
    let fast = if crate::encoding::payload::is_byte_payload::<A>() {
        with_spare(cap, |spare| spare.read::<A>(arg))
    } else {
        None
    };
    if let Some(a) = fast {
        return a.map_err(|e| CallOutcome::Failed(format!("cannot decode the argument: {e}")));
    }
    DECODE_DETAIL.with(|d| d.borrow_mut().take());
    postcard::from_bytes(arg).map_err(|e| {
        let detail = DECODE_DETAIL.with(|d| d.borrow_mut().take());
        CallOutcome::Failed(match detail {
            Some(d) => format!("cannot decode the argument: {e}: {d}"),
            None => format!("cannot decode the argument: {e}"),
        })
    })
}

fn ship<R: Serialize + 'static>(sink: &mut ResultSink<'_>, r: &R) -> CallOutcome {
    let put = match crate::encoding::payload::byte_payload(r) {
        // A byte vector: its varint length and its bytes, copied straight into the arena (the
        // same bytes postcard would write, one `u8` at a time).
        Some(b) => {
            let mut prefix = [0u8; 10];
            let n = crate::encoding::payload::varint(b.len() as u64, &mut prefix);
            sink.put_byte_parts(&prefix[..n], b)
        }
        None => sink.put(r),
    };
    match put {
        Ok(e) => CallOutcome::Done(e),
        Err(msg) => CallOutcome::Failed(msg),
    }
}

/// Trampoline for one call `f(a)`.
///
/// # Safety
///
/// Called only in a worker, with `F` checked by `assert_task_fn` when the task was submitted and
/// `arg` encoded from an `A` by the parent.
pub(crate) unsafe fn call_one<F, A, R>(arg: &[u8], sink: &mut ResultSink<'_>) -> CallOutcome
where
    F: Fn(A) -> R + Copy,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    // SAFETY: delegated to the caller (see # Safety): the parent held an `F` when it submitted.
    let f: F = unsafe { conjure() };
    // The user's `Deserialize` and `Serialize` are task code too: a panic in either fails this
    // task, as a panic of `f` does, and never reaches the worker loop (which exits on one).
    let cap = sink.cap;
    let a: A = match catch_unwind(AssertUnwindSafe(|| decode(arg, cap))) {
        Ok(Ok(a)) => a,
        Ok(Err(o)) => return o,
        Err(p) => return CallOutcome::Panicked(task_panic(&*p)),
    };
    match catch_unwind(AssertUnwindSafe(move || f(a))) {
        // A panic part-way through `ship` leaves bytes in the free part of the arena only (the
        // sink advances once an encoding is complete), so the panic's report can go there.
        Ok(r) => {
            let outcome = catch_unwind(AssertUnwindSafe(|| ship(sink, &r)))
                .unwrap_or_else(|p| CallOutcome::Panicked(task_panic(&*p)));
            // A byte vector's bytes are in the arena or their segment now: its allocation is
            // this worker's spare for the next large argument (`bigpayload`, "Reuse of byte
            // vectors"). Any other `R` is dropped here, as before.
            if crate::encoding::payload::is_byte_payload::<R>() {
                with_spare(cap, |spare| spare.keep(r));
            }
            outcome
        }
        Err(p) => CallOutcome::Panicked(task_panic(&*p)),
    }
}

thread_local! {
    /// A worker's buffer for encoding a chunk's results, kept between chunks: allocating it
    /// afresh made every chunk of tiny items pay page faults (glibc gives a freed top of heap
    /// over 128 KiB back to the kernel, and the next chunk faults it in again).
    static CHUNK_SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest buffer a process keeps between results (a worker's chunk buffer, the parent's copy of
/// a result) when its arenas hold `arena_cap` bytes: an eighth of the arena, at least 1 MiB (8 MiB
/// with the default arenas). Below 1 MiB, `map` over 1 MiB byte vectors (a chunk of one item is
/// just over 1 MiB) allocated both buffers afresh for every item, with a page fault per 4 KiB.
pub(crate) fn kept_scratch(arena_cap: usize) -> usize {
    (arena_cap / 8).max(1 << 20)
}

/// Runs `g` over a chunk's encoded items (read in place) and ships the results.
fn run_chunk<A, R>(arg: &[u8], sink: &mut ResultSink<'_>, g: impl Fn(A) -> R) -> CallOutcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    // Taken out of the thread-local for the duration, so a task that itself runs a chunk (a pool
    // used inside a task) simply finds it empty.
    let mut out = CHUNK_SCRATCH.take();
    // A panic of the user's `Deserialize` (the items) or `Serialize` (the results) fails the
    // whole chunk, as a decode or encode error does (one is read or written for all items at
    // once), and never reaches the worker loop; `f`'s own panics are caught per item inside.
    // `out` is cleared before its next use.
    let outcome = catch_unwind(AssertUnwindSafe(|| run_chunk_into(arg, sink, g, &mut out)))
        .unwrap_or_else(|p| CallOutcome::Panicked(task_panic(&*p)));
    if out.capacity() <= kept_scratch(sink.cap) {
        CHUNK_SCRATCH.set(out);
    }
    outcome
}

fn run_chunk_into<A, R>(
    arg: &[u8],
    sink: &mut ResultSink<'_>,
    g: impl Fn(A) -> R,
    out: &mut Vec<u8>,
) -> CallOutcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let mut writer = ChunkOutWriter::new(out);
    let mut index = 0u32;
    let walked = for_each_in_list(arg, |a: A| {
        match catch_unwind(AssertUnwindSafe(|| g(a))) {
            Ok(r) => writer.value(r),
            Err(p) => writer.failure(index, task_panic(&*p)),
        }
        index = index.wrapping_add(1);
    });
    if let Err(e) = walked {
        return CallOutcome::Failed(format!("cannot decode the argument: {e}"));
    }
    if let Err(e) = writer.finish() {
        return CallOutcome::Failed(format!("cannot encode the result: {e}"));
    }
    match sink.put_bytes(out) {
        Ok(e) => CallOutcome::Done(e),
        Err(msg) => CallOutcome::Failed(msg),
    }
}

/// Trampoline for a chunk of a `map`: a sequence of `A` in, [`ChunkOut<R>`](crate::encoding::payload::ChunkOut) out.
///
/// # Safety
///
/// As for [`call_one`].
pub(crate) unsafe fn call_chunk<F, A, R>(arg: &[u8], sink: &mut ResultSink<'_>) -> CallOutcome
where
    F: Fn(A) -> R + Copy,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    // SAFETY: delegated to the caller (see # Safety).
    let f: F = unsafe { conjure() };
    run_chunk(arg, sink, f)
}

/// A function called with its arguments spread from a tuple (`starmap`): implemented for every
/// `Fn` of 1 to 6 arguments, with the tuple of those arguments.
///
/// # Examples
///
/// ```
/// use shmpool::StarFn;
/// let add3 = |a: u8, b: u8, c: u8| a + b + c;
/// assert_eq!(add3.call_star((1, 2, 3)), 6);
/// ```
pub trait StarFn<Args>: Copy {
    /// What the function returns.
    type Output;
    /// Calls the function with the tuple's fields as arguments.
    fn call_star(&self, args: Args) -> Self::Output;
}

macro_rules! star_fn {
    ($($arg:ident),+) => {
        impl<F, $($arg,)+ R> StarFn<($($arg,)+)> for F
        where
            F: Fn($($arg),+) -> R + Copy,
        {
            type Output = R;
            #[allow(non_snake_case)]
            fn call_star(&self, ($($arg,)+): ($($arg,)+)) -> R {
                self($($arg),+)
            }
        }
    };
}

star_fn!(A);
star_fn!(A, B);
star_fn!(A, B, C);
star_fn!(A, B, C, D);
star_fn!(A, B, C, D, E);
star_fn!(A, B, C, D, E, G);

/// Trampoline for a chunk of a `starmap`.
///
/// # Safety
///
/// As for [`call_one`].
pub(crate) unsafe fn call_star_chunk<F, Args, R>(
    arg: &[u8],
    sink: &mut ResultSink<'_>,
) -> CallOutcome
where
    F: StarFn<Args, Output = R>,
    Args: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    // SAFETY: delegated to the caller (see # Safety).
    let f: F = unsafe { conjure() };
    run_chunk(arg, sink, |a: Args| f.call_star(a))
}
