//! The worker's side of a chunk task: mapping the chunk, the trampolines, and the mapping cache.
//!
//! # Mappings
//!
//! * **Our memfds** (a `SharedVec`, a reader buffer, an output vector): the worker maps the whole
//!   segment once, shared, and keeps the mapping in a small per-process cache keyed by segment id
//!   and access (`CACHE_SEGMENTS` entries, least recently used evicted). An input is mapped
//!   read-only, so "no worker writes the caller's input" holds by construction (a stray write
//!   faults in the task's worker); only a `map_chunks_into` output is mapped read-write. Building page
//!   tables is not free: with a fresh mapping per chunk every pass pays for them again, and
//!   `MAP_POPULATE` makes each mapping dearer still (figures in BENCHMARKS.md, "Figures from the
//!   code comments"). With the cache
//!   a worker faults each page once in its life; later passes over the same vector, and the
//!   reader's reused ring buffers, pay nothing and no `mmap`/`munmap` per chunk. The pages are the
//!   parent's memory, already resident there: a worker's RSS counts them, but they cost no
//!   extra RAM. When the parent drops the segment it truncates the memfd to 0, which frees the
//!   pages at once; the cached mappings stay (truncation unmaps nothing: touching them now would
//!   raise SIGBUS), but the id is never used again, so a stale entry is only address space until
//!   it is evicted.
//! * **A user's file** (`MappedFile`): the worker maps only the chunk's page-aligned range and
//!   unmaps it after `f` returns. A file can be far larger than RAM (the 8 GiB `crunch`), and
//!   caching its mapping would hold every page read in the worker's RSS and keep a deleted file's
//!   blocks alive; per chunk, a worker holds one chunk at most. Each pass then pays the page-table
//!   cost again.

use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use bytemuck::Pod;
use memmap2::{Mmap, MmapOptions, MmapRaw};
use serde::Serialize;

use crate::encoding::task::{CallOutcome, ResultSink, conjure, task_panic};
use crate::shm::channel;

use super::{ChunkArg, Span};

/// Whole-segment mappings a worker keeps (enough for the reader's ring of `2 × processes`
/// buffers plus an input and an output vector at 14 processes).
const CACHE_SEGMENTS: usize = 32;

/// A cached whole-segment mapping.
struct Cached {
    id: u64,
    /// Mapped read-write (an output), or read-only (an input: no worker can write the caller's
    /// input, by construction; a stray write faults in the task instead of changing the data).
    writable: bool,
    map: MmapRaw,
}

/// The worker's cached mappings, most recently used last. Empty in the parent (only
/// trampolines, which run in workers, fill it), so a fork inherits nothing.
static CACHE: Mutex<Vec<Cached>> = Mutex::new(Vec::new());

/// A chunk's bytes in this worker.
enum ChunkMap {
    /// A zero-length span (maps nothing).
    Empty,
    /// A range of a cached whole-segment mapping. Valid until this worker's next lookup, which
    /// happens only after the task that holds it is done (tasks run one at a time).
    Cached { ptr: *mut u8, len: usize },
    /// A private per-chunk read-only mapping of a file range (unmapped on drop).
    File(Mmap),
}

/// Returns the cached mapping of `span`'s segment (mapping it first, read-write only if
/// `writable`), or an error message.
fn cached(span: Span, writable: bool) -> Result<(*mut u8, usize), String> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let end = span
        .offset
        .checked_add(span.len)
        .ok_or_else(|| "chunk range overflows".to_string())?;
    let hit = cache
        .iter()
        .position(|c| c.id == span.seg && c.writable == writable);
    let entry = match hit {
        Some(i) if (cache[i].map.len() as u64) >= end => cache.remove(i),
        _ => {
            if let Some(i) = hit {
                cache.remove(i);
            }
            let fd = channel::resolve(span.seg).map_err(|e| e.to_string())?;
            let size = nix::sys::stat::fstat(&fd)
                .map_err(|e| format!("cannot stat the segment: {e}"))?
                .st_size as u64;
            if size < end {
                return Err(format!(
                    "chunk {}..{end} outside the segment of {size} bytes",
                    span.offset
                ));
            }
            let mut options = MmapOptions::new();
            options.len(size as usize);
            let map = if writable {
                options.map_raw(fd.as_raw_fd())
            } else {
                options.map_raw_read_only(fd.as_raw_fd())
            }
            .map_err(|e| format!("cannot map the segment: {e}"))?;
            if cache.len() >= CACHE_SEGMENTS {
                // Least recently used: never the entry of a span of the running task, since that
                // one was just moved to the back.
                cache.remove(0);
            }
            Cached {
                id: span.seg,
                writable,
                map,
            }
        }
    };
    // SAFETY: `offset + len <= map.len()` (checked above or when the entry was made).
    let ptr = unsafe { entry.map.as_mut_ptr().add(span.offset as usize) };
    cache.push(entry);
    Ok((ptr, span.len as usize))
}

/// Applies the messages waiting on the segment channel: a `FORGET` closes that segment's fd and
/// drops our cached mapping of it. Run before every chunk: a task that hits the cache never
/// reads the channel otherwise, and the fd of a dropped `MappedFile` kept its (possibly deleted)
/// file's blocks allocated for as long as the worker lived. One non-blocking `recvmsg` when
/// nothing waits.
fn forget_dropped() -> Result<(), String> {
    let gone = channel::drain().map_err(|e| e.to_string())?;
    if !gone.is_empty() {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|c| !gone.contains(&c.id));
    }
    Ok(())
}

impl ChunkMap {
    fn open(span: Span, writable: bool) -> Result<ChunkMap, String> {
        forget_dropped()?;
        if span.len == 0 {
            return Ok(ChunkMap::Empty);
        }
        if span.memfd {
            let (ptr, len) = cached(span, writable)?;
            return Ok(ChunkMap::Cached { ptr, len });
        }
        let len = usize::try_from(span.len).map_err(|_| "chunk too large".to_string())?;
        let fd = channel::resolve(span.seg).map_err(|e| e.to_string())?;
        // SAFETY: memmap2's contract (no one modifies the range while it is mapped) is the one
        // the caller of `MappedFile::open` accepted for the file.
        unsafe {
            MmapOptions::new()
                .offset(span.offset)
                .len(len)
                .map(fd.as_raw_fd())
        }
        .map(ChunkMap::File)
        .map_err(|e| format!("cannot map the chunk: {e}"))
    }

    /// The chunk's bytes.
    ///
    /// # Safety
    ///
    /// For a `Cached` chunk, nobody writes the range while the slice lives: the parent holds
    /// `&` of the input for as long as the task runs, and never refills a reader buffer before
    /// its result arrived.
    unsafe fn bytes(&self) -> &[u8] {
        match self {
            ChunkMap::Empty => &[],
            // SAFETY: `ptr..ptr+len` lies in a live cached mapping (`cached`); no one writes it
            // (delegated to the caller, see # Safety).
            ChunkMap::Cached { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
            ChunkMap::File(m) => m,
        }
    }

    /// The chunk's bytes, writable.
    ///
    /// # Safety
    ///
    /// The chunk was opened `writable`.
    ///
    /// Nobody else reads or writes the range while the slice lives: an output chunk's range is
    /// given to this task alone, and the parent holds `&mut` of the output vector.
    unsafe fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: as for `bytes`, exclusive by the caller's contract.
            ChunkMap::Cached { ptr, len } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
            ChunkMap::Empty | ChunkMap::File(_) => &mut [],
        }
    }
}

fn decode_arg(arg: &[u8]) -> Result<ChunkArg, CallOutcome> {
    postcard::from_bytes(arg)
        .map_err(|e| CallOutcome::Failed(format!("cannot decode the chunk task: {e}")))
}

fn ship<R: Serialize>(sink: &mut ResultSink<'_>, r: &R) -> CallOutcome {
    // The user's `Serialize` may panic: that fails the task, never the worker (the sink advances
    // only once an encoding is complete, so the panic's report can go where it was writing).
    match catch_unwind(AssertUnwindSafe(|| sink.put(r))) {
        Ok(Ok(e)) => CallOutcome::Done(e),
        Ok(Err(msg)) => CallOutcome::Failed(msg),
        Err(p) => CallOutcome::Panicked(task_panic(&*p)),
    }
}

/// Opens an input chunk (mapped read-only).
fn open(span: Span) -> Result<ChunkMap, CallOutcome> {
    ChunkMap::open(span, false).map_err(CallOutcome::Failed)
}

/// Opens an output chunk (mapped read-write).
fn open_mut(span: Span) -> Result<ChunkMap, CallOutcome> {
    ChunkMap::open(span, true).map_err(CallOutcome::Failed)
}

fn cast<T: Pod>(bytes: &[u8]) -> Result<&[T], CallOutcome> {
    bytemuck::try_cast_slice(bytes).map_err(|e| {
        CallOutcome::Failed(format!(
            "chunk is not a slice of {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// Trampoline of a chunk map: `f(&[T]) -> R` on the chunk, in place; ships `R`.
///
/// # Safety
///
/// Called only in a worker, with `F` checked by `assert_task_fn` when the task was submitted and
/// `arg` an encoded [`ChunkArg`] whose input span lies inside a segment of `T`s the parent sent
/// and does not write while the task runs.
pub(super) unsafe fn call_chunk<F, T, R>(arg: &[u8], sink: &mut ResultSink<'_>) -> CallOutcome
where
    F: Fn(&[T]) -> R + Copy,
    T: Pod,
    R: Serialize,
{
    let mut run = || -> Result<CallOutcome, CallOutcome> {
        let a = decode_arg(arg)?;
        let input = open(a.input)?;
        // SAFETY: the parent does not write the input while the task runs (# Safety).
        let items: &[T] = cast(unsafe { input.bytes() })?;
        // SAFETY: delegated to the caller (see # Safety): the parent held an `F` when it
        // submitted.
        let f: F = unsafe { conjure() };
        let r = catch_unwind(AssertUnwindSafe(|| f(items)));
        drop(input);
        Ok(match r {
            Ok(v) => ship(sink, &v),
            Err(p) => CallOutcome::Panicked(task_panic(&*p)),
        })
    };
    run().unwrap_or_else(|o| o)
}

/// Trampoline of `map_chunks_into`: `f(&[T], &mut [U])` on the input chunk and the output chunk
/// of the same element range, both in place; ships `()`.
///
/// # Safety
///
/// As [`call_chunk`], and the output span lies inside a segment of `U`s that nothing but this
/// task reads or writes while it runs.
pub(super) unsafe fn call_chunk_into<F, T, U>(arg: &[u8], sink: &mut ResultSink<'_>) -> CallOutcome
where
    F: Fn(&[T], &mut [U]) + Copy,
    T: Pod,
    U: Pod,
{
    let mut run = || -> Result<CallOutcome, CallOutcome> {
        let a = decode_arg(arg)?;
        let out_span = a
            .output
            .ok_or_else(|| CallOutcome::Failed("chunk task without an output range".into()))?;
        let input = open(a.input)?;
        let mut output = open_mut(out_span)?;
        // SAFETY: the parent does not write the input while the task runs (# Safety).
        let items: &[T] = cast(unsafe { input.bytes() })?;
        // SAFETY: the output range is this task's alone (# Safety); it is a different segment
        // from the input (the parent borrows the input `&` and the output `&mut`).
        let out: &mut [U] =
            bytemuck::try_cast_slice_mut(unsafe { output.bytes_mut() }).map_err(|e| {
                CallOutcome::Failed(format!(
                    "output chunk is not a slice of {}: {e}",
                    std::any::type_name::<U>()
                ))
            })?;
        // SAFETY: delegated to the caller (see # Safety): the parent held an `F` when it
        // submitted.
        let f: F = unsafe { conjure() };
        let r = catch_unwind(AssertUnwindSafe(|| f(items, out)));
        Ok(match r {
            Ok(()) => ship(sink, &()),
            Err(p) => CallOutcome::Panicked(task_panic(&*p)),
        })
    };
    run().unwrap_or_else(|o| o)
}
