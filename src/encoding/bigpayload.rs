//! Payloads larger than the arenas: each travels in a memfd segment of its own, passed over the
//! seat's segment channel (`SCM_RIGHTS`) and read in place by the other side.
//!
//! # Arguments (parent → worker)
//!
//! An encoded argument larger than the argument arena is written into a memfd of its own (a
//! byte vector straight from its own buffer, so the parent copies its bytes once) with
//! `pwrite(2)`. The task carries the segment as a [`SegmentShare`] (so `ADD id` reaches the
//! worker before the task) and its arena payload is only `[id: u64 LE][len: u64 LE]`; the
//! descriptor has [`FLAG_ARG_SEGMENT`]. The worker maps the segment read-only ([`ArgumentMap`];
//! the encoding sits at [`ENCODING_AT`], see "Layout") and decodes from the mapping. It unmaps
//! and closes it once its result is published (off the result's path).
//!
//! ## Reuse
//!
//! Filling a fresh shmem segment allocates it one 4 KiB page at a time and closing it frees them
//! one by one; for 300 MiB that is most of a round trip's time (see "Cost"). So argument segments
//! are not sealed and not freed after use: each pool keeps its finished ones as spares
//! ([`SpareArgs`]) and writes the next large argument into one, whose pages already exist.
//!
//! * **When a segment is free again.** A task's segment goes back to the spares when the last
//!   [`SegmentShare`] naming it is dropped (its [`Lent`] guard's `Drop`): the parent drops it when
//!   the task's result has arrived, or when the task failed because its worker is dead (a
//!   death is reported after the worker was reaped, so its mapping is gone), or when the task
//!   was never dispatched. A task that is retried keeps its share. The worker decodes the whole
//!   argument inside the task's trampoline, *before* it publishes the result, and never reads the
//!   mapping again: so once the result has arrived no worker reads the segment, even though the
//!   worker unmaps it a little later. (A process the task itself forked inherits the mapping;
//!   it must not read it after the task returned — it would see a later argument.)
//! * **Read-only in the worker.** The worker is sent a read-only descriptor (the memfd
//!   reopened through `/proc/self/fd` with `O_RDONLY`), so a task cannot `write(2)` to the segment
//!   nor map it writable, and cannot seal it (the memfd is made without `MFD_ALLOW_SEALING`), so
//!   it cannot change what a later task receives by accident. This is not a security boundary:
//!   a worker can reopen its own `/proc/self/fd/N` read-write (the memfd's inode is the pool
//!   owner's, mode 0777) — but a worker can also write the pool's shared arenas, so nothing is
//!   lost. Without `/proc` the worker gets a duplicate of the writable descriptor instead.
//!   (Sealing with `F_SEAL_FUTURE_WRITE` is no use here: it forbids the parent's own later
//!   writes too, and seals are permanent.)
//! * **Bounded.** At most [`MAX_SPARES`] spares, together at most 16 arena sizes (1 GiB with the
//!   default 64 MiB arenas); a finished segment that does not fit is closed. Spares are kept
//!   until reused or until the pool is dropped, so after one 300 MiB call a pool holds 300 MiB of
//!   shmem until it is dropped. They are anonymous memfds (`memfd:shmpool-arg`): nothing
//!   outlives the last process that holds them. The fork server of a pool built while another
//!   holds spares inherits their fds (fork keeps `CLOEXEC` fds) and closes them by that name
//!   (`process::server`, "Payloads of other pools"): keep the two names in step.
//! * A spare is never shrunk (a reused one may be larger than the argument: the worker reads
//!   only the `len` the payload announces; the bytes past it are an earlier argument's) and is
//!   grown when the argument is larger (`ftruncate`, then one `fallocate(2)` over the new
//!   part, see "Fresh pages").
//!
//! ## Reuse of byte vectors
//!
//! A round trip of a large `Vec<u8>` also fills two fresh vectors: the worker's decoded
//! argument and the parent's decoded result (a few hundred ms for 300 MiB in a VM whose freed
//! memory goes back to the host). So the decode of a byte vector (`Vec<u8>`, `Box<[u8]>`) goes
//! into an allocation that process already owns and has finished with, when one suits
//! ([`crate::encoding::payload::SpareBytes`]):
//!
//! * **Parent.** A call whose result is a byte vector lends its own argument's allocation to its
//!   result, when the argument is a byte vector (it was written to the arena or its segment
//!   before submission, so the pool owns it and nothing reads it any more;
//!   [`crate::encoding::payload::CallSpare`]). What a result does not take becomes the pool's
//!   spare, for a later result. A refused call gets its argument back unchanged.
//! * **Worker.** A large byte-vector result, once written into the arena or its segment, is the
//!   worker's spare; the worker decodes its next large byte-vector argument into it.
//! * **Bounds.** One spare per pool and one per worker. Kept only with a capacity from an eighth
//!   of the arena to 16 arena sizes (8 MiB to 1 GiB with the default 64 MiB arenas), reused only
//!   for a vector of at least an eighth of the arena whose length is at least half the capacity:
//!   a caller never receives a vector with more than twice its length in capacity (a fresh one
//!   has exactly its length). So after a large byte-vector call the parent holds up to one such
//!   allocation (the argument's, or the one its result did not take) and each worker up to one
//!   (its last large result's) until reused or until the pool (the worker) is gone: with the
//!   default arenas at most 1 GiB each. They are private heap memory, never shared.
//! * **Forks.** Being private heap, a pool's spare would be inherited (copy-on-write) by the
//!   fork server of any pool built later, and held there for that pool's whole life, even after
//!   its own pool was dropped (and every page copied when its pool reused it). So forking a fork
//!   server first drops every pool's spare, pages given back to the kernel (the allocator would
//!   keep them dirty), and no spare is kept until the fork is done
//!   ([`crate::encoding::payload::spares_dropped_for_fork`]). Building a pool costs the others
//!   their spare; a call's argument lent to its own result is the caller's data in flight and
//!   stays.
//!
//! # Results (worker → parent)
//!
//! A result larger than the result arena (other than a byte vector, see "Reused result segments"
//! below) is written into a fresh memfd the same way, **sealed**
//! (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL`) and sent to the parent over the
//! same socket pair as `RESULT task_id` (before the result descriptor is published, so it is
//! there when the parent looks). The descriptor has [`FLAG_RESULT_SEGMENT`] and its length in
//! `reserved`; nothing is placed in the arena. The parent takes the message without blocking,
//! checks the seals and the size, maps the segment read-only and decodes it in place. The seals
//! make the segment immutable (no worker can change or shrink it under the decoder, so no
//! private copy is needed and no SIGBUS is possible), which is what lets a 300 MiB result skip
//! the copy-out every arena result gets. A missing message, missing seals, a short segment or
//! one with holes (see "Holes") is [`Error::WorkerCorrupted`].
//!
//! ## Reused result segments
//!
//! A fresh sealed segment per result means filling 300 MiB of new shmem pages for every large
//! result (and freeing them after). So a large **byte-vector** result of `apply`-style calls
//! (written by `call_one`'s `ship`) goes instead to a segment each worker keeps and rewrites
//! ([`write_reusable`], named `memfd:shmpool-result`):
//!
//! * **Sealed `F_SEAL_SHRINK` only.** The worker must write it again, so it cannot be sealed
//!   against writes; it can grow (`ftruncate`, `fallocate`) but never shrink, so the parent's
//!   mapping of its first `ENCODING_AT + len` bytes (never more than the segment's size when
//!   mapped) stays backed: no SIGBUS whatever the worker does. The parent checks the
//!   seal on every result ([`ResultMap::open`]), and that the segment is a shmem memfd: a
//!   hugetlbfs one takes the same seal, but a hole punched in it (which the seal allows) would
//!   fault back only while huge pages are free, else `SIGBUS` (`check_shmem`; sealed result
//!   segments are checked the same way).
//! * **Copied out, never decoded in place.** The worker may write the bytes while the parent
//!   reads them (a bug, or a task that scribbles). The parent reads the segment only through
//!   [`SharedBytes::copy_to`] (a raw mapping, no `&[u8]` over it): for a byte vector, the length
//!   prefix is copied out and read once, checked against the announced length (itself checked
//!   against the segment's size), and the bytes are copied straight into the result's `Vec` —
//!   that copy is the decode. A result of any other type (only a lying worker sends one) is
//!   copied into a private buffer first and decoded from there; so is a status message.
//! * **Handshake.** `SeatCtl::result_segment_busy`: the worker writes a result into its segment
//!   only when the word is 0 (Acquire), and sets it to 1 before publishing the result; the
//!   parent stores 0 (Release, SYNC: result-segment-free) once the task's completion, which
//!   copies the result out, has returned. If it is still 1, the worker never waits: that result
//!   goes to a fresh sealed segment as before. A worker that scribbles on the word only loses
//!   its own results' integrity (it can write its segment anyway); the parent never reads it.
//! * **The parent's mapping** of each seat's segment covers the header and the announced result
//!   (`ENCODING_AT + len` bytes, "Layout"), never the segment's whole size (a worker can grow it
//!   at will, and mapping a hole with `populate` allocates it: `tests/result_segments.rs`; a
//!   hole inside that range is refused, see "Holes"). It is kept between results (re-made when the
//!   worker sends a different segment, by inode, or a result larger than the mapping), held by the
//!   collector role; its fd is closed right after mapping. It is dropped when the seat's worker
//!   dies (before a replacement starts, which makes its own segment and finds the word 0) and
//!   with the pool. The fork server drops inherited mappings of it by name, like the others
//!   (`process::server`, "Payloads of other pools").
//! * **Memory.** Each worker keeps one segment as large as its largest byte-vector result so far,
//!   at most 16 arena sizes (1 GiB with the default arenas: a larger result takes a fresh
//!   sealed segment), mapped in the parent, until the worker exits or the pool is dropped.
//!
//! # Layout
//!
//! Every payload segment (argument, sealed result, reused result) holds a 16-byte header at
//! offset 0 (`shmpool\x01`, then the encoding's length as a `u64` LE), zeros (no writer ever
//! writes bytes `16 .. ENCODING_AT`, not even in a reused segment, and no reader looks at
//! them), and the encoding from [`ENCODING_AT`] (1024) on. The length announced elsewhere (the argument's record, the
//! result's descriptor) is the encoding's; the segment must hold `ENCODING_AT + len` bytes, and
//! every reader checks the header against the announced length before decoding, so a segment
//! laid out any other way (its encoding at offset 0, say) is refused
//! ([`Error::WorkerCorrupted`] for a result, a failed task for an argument).
//!
//! Why not offset 0: where a large copy's bytes sit in their pages decides its speed here. A
//! big `memcpy` (glibc, past its non-temporal threshold, on this AMD EPYC guest) is ~3x slower
//! when the destination sits 5 to ~400 bytes *ahead* of the source within a page
//! (BENCHMARKS.md, "Where a copy's bytes sit in their pages"). The `Vec` a large byte vector is
//! decoded into comes from glibc's `mmap` path and starts 16 bytes into a page (the chunk
//! header); with the encoding at offset 0 its bytes (after a 4–5 byte varint length) started at
//! 5, so both decodes of a round trip (the worker's argument, the parent's result) ran in the
//! slow case. From 1024 the bytes start at 1025–1034 and every destination from 0 to ~1000
//! bytes into a page (glibc's 16, a page-aligned buffer's 0) lies *behind* them: the fast case.
//! The kernel's copies into the segment (`pwrite(2)` from the caller's buffer) measured the same
//! at either offset. Encodings that are not byte vectors are decoded in place; the offset is
//! irrelevant to them.
//!
//! ## Holes
//!
//! A worker could announce a sparse memfd (sized with `ftruncate`, next to nothing written) of
//! any size: reading a hole of shmem through a shared mapping allocates its page, so the parent
//! (`populate`, then the decode) would pay memory the worker never did. Every honest writer
//! allocates the whole of `0 .. ENCODING_AT + len` (`fallocate(2)` when it sizes the segment,
//! and `pwrite(2)` of the header and every byte of the encoding, page 0 holding the header and
//! the zeros after it), so the parent refuses a result segment whose allocated blocks
//! (`st_blocks * 512`) are fewer than `ENCODING_AT + len` bytes (`check_allocated`), before it
//! maps it: a sealed one for good (`F_SEAL_WRITE` also forbids punching a hole later); a reused
//! one at each result (its worker can still punch a hole after the check, but then it pays
//! with its own results' integrity, and the read is bounded by the reused segment's bound).
//!
//! # Cost
//!
//! A round trip of a byte vector copies it four times: into the argument's segment (`pwrite(2)`
//! from the caller's buffer; a spare's pages already exist, see "Reuse"), into the worker's
//! `Vec`, into the result's segment, into the parent's `Vec` (both `Vec`s reuse a spare when one
//! suits, see "Reuse of byte vectors", and so does the result's segment, see "Reused result
//! segments"). The copying itself is cheap; what costs is memory that is new to a process.
//! Shmem gets no huge pages unless `shmem_enabled` allows them (it is `never` on most machines),
//! so filling a segment allocates one 4 KiB page at a time, and freeing it returns them one by
//! one. Closing a segment is therefore kept off the result's path.
//!
//! ## Fresh pages
//!
//! A pool's first large call still fills fresh memory: the argument's segment, the worker's
//! `Vec`, the result's segment (the parent's `Vec` is the caller's argument). Each is allocated
//! in bulk before it is written: a fresh or grown segment with one `fallocate(2)` over its new
//! part (allocation without zeroing; the `pwrite(2)` that follows then copies into pages that
//! exist instead of allocating one per 4 KiB), a fresh large `Vec` with one
//! `MADV_POPULATE_WRITE` ([`crate::encoding::payload::bytes_with_capacity`], which says why not
//! huge pages). Both are optimizations only: a failure is ignored and the write allocates as
//! before, reporting its own error. Neither makes a first large call reliably fast in a VM:
//! pages the guest allocates may still be missing on the host, and the first write to them
//! faults there (seen here: a `pwrite(2)` of 300 MiB into a freshly `fallocate`d segment taking
//! 621 ms instead of ~50). Only touching fewer fresh pages would help. Figures: BENCHMARKS.md, "Payloads larger than the arena" and
//! "First touch of a round trip's fresh memory".
//!
//! Memory: a sealed result segment's pages are the payload's only copy in flight; they are
//! freed when the last process unmaps and closes it (the worker right after sending, the parent
//! after decoding and running the completion). A reused one lives as long as its worker. Argument segments are kept as spares (see "Reuse"). Under a small `RLIMIT_MEMLOCK` or without `/dev/shm`, memfds still work (they are
//! not locked memory and need no file system), but the machine's RAM and swap bound the size.
//!
//! Trap: a memfd is a file, so `RLIMIT_FSIZE` applies to it. Sizing one past that limit, or
//! writing past it (even inside the file's size), raises `SIGXFSZ`, whose default action kills
//! the process: before this was checked, `prlimit --fsize=1000000` killed the program in
//! `Pool::new` (signal 25), since the control segment with its arenas is a memfd too, and a
//! payload segment past the limit killed the parent (an argument) or the worker (a result). So
//! every memfd is checked against the limit before it is sized or written
//! (`shm::segment::check_fsize`): `Pool::new` and a large argument past it fail with
//! [`Error::Os`] (`EFBIG`), a result past it (a task may lower its worker's limit) fails its
//! task with [`Error::Codec`] naming the limit, and no process is killed
//! (`tests/result_segments.rs`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, Weak};

use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::error::{Error, Result};
use crate::shm::channel::SegmentShare;

/// Descriptor flag (task): the arena payload is `[segment id][len]`, the argument is in that
/// segment.
pub(crate) const FLAG_ARG_SEGMENT: u32 = 1;
/// Descriptor flag (result): the result is in a sealed segment sent over the channel, its length
/// in `reserved`.
pub(crate) const FLAG_RESULT_SEGMENT: u32 = 2;

/// Descriptor flag (result, with [`FLAG_RESULT_SEGMENT`]): the segment is the worker's reusable
/// one ("Reused result segments"), sealed against shrinking only: the parent copies out of it.
pub(crate) const FLAG_RESULT_REUSED: u32 = 4;

const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

thread_local! {
    /// A worker's reusable result segment ("Reused result segments"), made at its first large
    /// byte-vector result and closed with the worker.
    static RESULT_SEGMENT: std::cell::RefCell<Option<std::fs::File>> =
        const { std::cell::RefCell::new(None) };
}

/// What the pool keeps for reuse is bounded in arena sizes: the spare argument segments
/// together, each spare byte vector, and each worker's reused result segment hold at most this
/// many arena sizes (1 GiB with the default 64 MiB arenas).
pub(crate) const REUSE_MAX_ARENAS: usize = 16;

/// Where the encoding starts in every payload segment (argument, sealed result, reused
/// result): bytes `0..16` are the [`HEADER_MAGIC`] and the encoding's length (`u64` LE), the
/// rest up to here is zeros (never written, never read), and the encoding fills `ENCODING_AT .. ENCODING_AT + len`. Readers
/// check the header against the length they were told ("Layout").
pub const ENCODING_AT: usize = 1024;

/// The first 8 bytes of every payload segment ("Layout").
const HEADER_MAGIC: [u8; 8] = *b"shmpool\x01";

/// A payload segment's header for an encoding of `len` bytes ("Layout").
fn header(len: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&HEADER_MAGIC);
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Checks a segment's header (its first 16 bytes, copied out) against the announced `len`.
fn check_header(h: &[u8], len: usize) -> std::result::Result<(), String> {
    if h.len() < 16 || h[..8] != HEADER_MAGIC {
        return Err(format!(
            "segment has no payload header (the encoding belongs at offset {ENCODING_AT})"
        ));
    }
    let said = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if said != len as u64 {
        return Err(format!("segment header says {said} bytes, {len} announced"));
    }
    Ok(())
}

/// Refuses a segment that is not a plain shmem memfd (`TMPFS_MAGIC`, what `memfd_create` without
/// `MFD_HUGETLB` makes). A worker could send a hugetlbfs memfd instead: it takes the same seals,
/// but a hole punched in it (allowed under `F_SEAL_SHRINK`) faults back only while huge pages
/// are free, and otherwise raises `SIGBUS` in the parent reading it.
fn check_shmem(fd: &OwnedFd) -> std::result::Result<(), String> {
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs(2) on an fd we own, writing one `statfs` into `st`.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(format!(
            "fstatfs of the segment: {}",
            std::io::Error::last_os_error()
        ));
    }
    if st.f_type != libc::TMPFS_MAGIC {
        return Err(format!(
            "segment is not a shmem memfd (file system {:#x}, hugetlbfs is 0x958458f6)",
            st.f_type
        ));
    }
    Ok(())
}

/// Refuses a segment (its `fstat`) whose first `need` bytes are not all allocated ("Holes"):
/// every honest writer allocates them (`fallocate(2)` when it sizes the segment, or `pwrite(2)`
/// of every byte), but a worker could announce a sparse memfd of any size, and the parent's
/// read faults on a shmem hole allocate the page, charged to the parent.
fn check_allocated(st: &libc::stat, need: usize) -> std::result::Result<(), String> {
    let allocated = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
    if allocated < need as u64 {
        return Err(format!(
            "segment has holes: {allocated} of its first {need} bytes allocated"
        ));
    }
    Ok(())
}

/// How many bytes a segment holding an encoding of `len` bytes needs (`None`: too large).
pub(crate) fn segment_size(len: usize) -> Option<usize> {
    len.checked_add(ENCODING_AT)
}

/// The encoding's length (`head ++ bytes`) and its segment's [`segment_size`], both as file
/// offsets; an `EFBIG` error if they do not fit.
fn sizes(head: &[u8], bytes: &[u8]) -> std::io::Result<(u64, u64)> {
    head.len()
        .checked_add(bytes.len())
        .and_then(|len| {
            Some((
                u64::try_from(len).ok()?,
                u64::try_from(segment_size(len)?).ok()?,
            ))
        })
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFBIG))
}

/// Sizes the memfd `file` from `old` to `new` bytes (`new > old`) and allocates the pages of the
/// new part in one `fallocate(2)` call ("Fresh pages").
fn grow(file: &std::fs::File, old: u64, new: u64) -> std::io::Result<()> {
    crate::shm::segment::check_fsize(new)?;
    file.set_len(new)?;
    let (Ok(at), Ok(n)) = (libc::off_t::try_from(old), libc::off_t::try_from(new - old)) else {
        return Ok(());
    };
    // SAFETY: fallocate(2) with mode 0 on a memfd we own, inside its size (set just above): it
    // allocates the range's pages and changes no byte anyone reads (an allocated page reads as
    // zeros, like the hole it replaces). A failure (memory short, a kernel without shmem
    // fallocate) is ignored: the write that follows allocates page by page as before and
    // reports its own error.
    let _ = unsafe { libc::fallocate(file.as_raw_fd(), 0, at, n) };
    Ok(())
}

/// Writes the header and `head ++ bytes` into `file` at their places ("Layout"); the file must
/// already be at least [`segment_size`] long. The bytes between header and encoding are never
/// written, by this or any writer, so they stay the zeros of the fresh file even in a reused
/// one ("Layout").
pub(crate) fn write_layout(file: &std::fs::File, head: &[u8], bytes: &[u8]) -> std::io::Result<()> {
    let (len, need) = sizes(head, bytes)?;
    crate::shm::segment::check_fsize(need)?;
    file.write_all_at(&header(len), 0)?;
    file.write_all_at(head, ENCODING_AT as u64)?;
    file.write_all_at(bytes, (ENCODING_AT + head.len()) as u64)
}

/// Worker side: writes `head ++ bytes` into this worker's reusable result segment (made, and
/// sealed against shrinking, on first use; grown when too small) and returns a descriptor of it
/// to send. Call only when the parent has marked the segment free (`result_segment_busy`). A
/// failure closes the segment (a fresh one is made next time).
pub(crate) fn write_reusable(head: &[u8], bytes: &[u8]) -> std::io::Result<OwnedFd> {
    RESULT_SEGMENT.with(|slot| {
        let mut slot = slot.borrow_mut();
        let file = match slot.take() {
            Some(f) => f,
            None => {
                let fd = memfd_create(
                    "shmpool-result",
                    MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
                )?;
                // SAFETY: fcntl(F_ADD_SEALS) on the memfd just made. Only F_SEAL_SHRINK: we
                // write it again for later results, and may grow it.
                let rc =
                    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                std::fs::File::from(fd)
            }
        };
        let (_, n) = sizes(head, bytes)?;
        let size = file.metadata()?.len();
        if size < n {
            grow(&file, size, n)?;
        }
        write_layout(&file, head, bytes)?;
        let send = OwnedFd::from(file.try_clone()?);
        *slot = Some(file);
        Ok(send)
    })
}

/// Bytes in a mapping another process may write while we read them (a reused result segment):
/// never handed out as a `&[u8]`, only copied out ("Reused result segments").
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedBytes<'a> {
    ptr: *const u8,
    len: usize,
    _map: std::marker::PhantomData<&'a [u8]>,
}

// SAFETY: a read-only view of shared memory, only read through `copy_to`; the mapping it points
// into outlives `'a` and may be read from any thread.
unsafe impl Send for SharedBytes<'_> {}
// SAFETY: as above; `copy_to` takes `&self` and only reads.
unsafe impl Sync for SharedBytes<'_> {}

impl SharedBytes<'_> {
    /// How many bytes there are.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`; `None` if they are not all there.
    pub(crate) fn copy_to(
        &self,
        offset: usize,
        dst: &mut [std::mem::MaybeUninit<u8>],
    ) -> Option<()> {
        if offset
            .checked_add(dst.len())
            .is_none_or(|end| end > self.len)
        {
            return None;
        }
        // SAFETY: `offset + dst.len() <= len` (checked above), so the source lies in the mapping
        // (`ResultMap::open` made `ptr..ptr+len` inside it, and the segment cannot shrink under
        // it: F_SEAL_SHRINK, checked when mapped, so no SIGBUS). A worker writing those bytes at
        // the same time can only make us copy garbage, which the decoder then validates: a
        // byte copy is valid for any bytes. `dst` is private memory, so the ranges cannot
        // overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add(offset),
                dst.as_mut_ptr().cast::<u8>(),
                dst.len(),
            );
        }
        Some(())
    }

    /// The first up to `N` bytes from `offset` (fewer where the bytes end), copied into an
    /// array, and how many there were; the rest of the array is zeros.
    pub(crate) fn copy_head<const N: usize>(&self, offset: usize) -> ([u8; N], usize) {
        let mut out = [0u8; N];
        let n = self.len.saturating_sub(offset).min(N);
        if n > 0 {
            // SAFETY: `n > 0` means `offset < len` and `offset + n <= len`, so the source lies
            // in the mapping (see `copy_to`: backed, no SIGBUS; a concurrent writer only makes
            // us copy garbage, valid for `u8`); `out` is a private array of `N >= n` bytes.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), n) };
        }
        (out, n)
    }

    /// All the bytes, copied into a fresh private vector.
    pub(crate) fn copy_all(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        self.copy_to(0, &mut v.spare_capacity_mut()[..self.len])
            .expect("the whole range is there");
        // SAFETY: `copy_to` initialized the first `len` bytes.
        unsafe { v.set_len(self.len) };
        v
    }
}

/// The parent's mapping of one seat's reused result segment, kept between results (re-made when
/// the worker sends another segment or a larger one). Dropped when the seat's worker dies.
#[derive(Debug)]
pub(crate) struct ResultMap {
    dev: u64,
    ino: u64,
    map: memmap2::MmapRaw,
}

impl ResultMap {
    /// Takes the segment `fd` a worker sent with a [`FLAG_RESULT_REUSED`] result of `len`
    /// bytes: checks it cannot shrink, is a shmem memfd and holds `ENCODING_AT + len` bytes,
    /// all allocated ("Holes"), and maps them (or reuses `kept`, the seat's mapping of the same
    /// segment if it covers them); then checks the header ("Layout") and returns the encoding's
    /// `len` bytes. The fd is closed either way.
    pub(crate) fn open<'m>(
        kept: &'m mut Option<ResultMap>,
        fd: OwnedFd,
        len: usize,
    ) -> std::result::Result<SharedBytes<'m>, String> {
        // SAFETY: fcntl(F_GET_SEALS) only reads the seals of an fd we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(format!("result segment can shrink (seals {seals:#x})"));
        }
        check_shmem(&fd)?;
        let st = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| format!("fstat of the result segment: {e}"))?;
        let size = usize::try_from(st.st_size).unwrap_or(0);
        let need = segment_size(len).filter(|&n| n <= size && len > 0);
        let Some(need) = need else {
            return Err(format!(
                "result segment of {} bytes, {len} announced",
                st.st_size
            ));
        };
        // Checked at each open, before a new mapping is populated ("Holes"); the worker can
        // still punch a hole afterwards (the segment is not sealed against writes), but what
        // that makes the parent allocate is bounded by the reused segment's own bound.
        check_allocated(&st, need)?;
        let (dev, ino) = (st.st_dev as u64, st.st_ino as u64);
        if !kept
            .as_ref()
            .is_some_and(|k| (k.dev, k.ino) == (dev, ino) && k.map.len() >= need)
        {
            // The old mapping first: its memory can go before the new one is filled in.
            *kept = None;
            // A raw read-only shared mapping (no `&[u8]` over it: its worker may write the
            // bytes while we read, so it is only read through `SharedBytes::copy_to`) of the
            // first `need <= size` bytes of a memfd sealed against shrinking (checked above;
            // seals are never removed), so every mapped page stays backed (no SIGBUS).
            // `populate`: the worker wrote those pages, so their page tables are filled in one
            // call. Only `need`, never `size`: the worker can grow the segment as it likes
            // (`ftruncate` leaves a hole), and populating a hole of shmem allocates its pages.
            let map = memmap2::MmapOptions::new()
                .len(need)
                .populate()
                .map_raw_read_only(&fd)
                .map_err(|e| format!("mapping the result segment: {e}"))?;
            *kept = Some(ResultMap { dev, ino, map });
        }
        let k = kept.as_ref().expect("set above");
        let whole = SharedBytes {
            ptr: k.map.as_ptr(),
            len: need,
            _map: std::marker::PhantomData,
        };
        // The header, copied out (the worker may be rewriting it), then checked.
        let (h, n) = whole.copy_head::<16>(0);
        check_header(&h[..n], len)?;
        // SAFETY: `ENCODING_AT + len == need <= k.map.len()`: the result lies in the mapping.
        let ptr = unsafe { k.map.as_ptr().add(ENCODING_AT) };
        Ok(SharedBytes {
            ptr,
            len,
            _map: std::marker::PhantomData,
        })
    }
}

/// Writes `head ++ bytes` into a fresh sealed memfd (a result's segment).
pub(crate) fn make_segment(head: &[u8], bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = memfd_create(
        "shmpool-payload",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let file = std::fs::File::from(fd);
    grow(&file, 0, sizes(head, bytes)?.1)?;
    write_layout(&file, head, bytes)?;
    seal(&file)?;
    Ok(OwnedFd::from(file))
}

/// How many times [`seal`] asks again when the kernel answers `EBUSY`.
const SEAL_TRIES: u32 = 20;

/// Seals a result segment against writes, shrinking, growing and further seals.
///
/// `F_SEAL_WRITE` is refused with `EBUSY` while any of the file's pages has a reference beyond
/// its mappings: the kernel waits for those up to ~150 ms, then gives up. Such references are
/// transient (a page being reclaimed or migrated, a pipe still holding a spliced page): seen
/// here once in a few hundred large results on a loaded machine, where a task then failed with
/// "Device or resource busy". So `EBUSY` is asked again, up to [`SEAL_TRIES`] times (a few
/// seconds at most), before the error is reported.
fn seal(file: &std::fs::File) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        // SAFETY: fcntl(F_ADD_SEALS) on our own memfd; it has no writable mapping (we wrote
        // with pwrite(2)), so F_SEAL_WRITE is accepted once no page is held elsewhere.
        let rc = unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                SEALS | libc::F_SEAL_SEAL,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        tries += 1;
        if e.raw_os_error() != Some(libc::EBUSY) || tries >= SEAL_TRIES {
            return Err(e);
        }
    }
}

/// A sealed payload segment a worker made, checked and mapped: a task's result, in the parent.
///
/// Read through [`bytes`](Self::bytes), a read-only mapping decoded in place. (Reading a byte
/// vector with `pread(2)` instead, which needs no page tables for the segment, was measured as no
/// faster: BENCHMARKS.md, "Payloads larger than the arena".) The fd is closed with the mapping.
#[derive(Debug)]
pub(crate) struct Sealed {
    _fd: OwnedFd,
    map: memmap2::Mmap,
}

impl Sealed {
    /// Checks that `fd` is a shmem memfd sealed against writes and shrinking whose first
    /// `ENCODING_AT + len` bytes exist and are all allocated ("Holes"), then maps those bytes
    /// read-only and checks the header ("Layout"). What [`bytes`](Self::bytes) reads can then never change.
    pub(crate) fn open(fd: OwnedFd, len: usize) -> std::result::Result<Sealed, String> {
        // SAFETY: fcntl(F_GET_SEALS) only reads the seals of an fd we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & SEALS != SEALS {
            return Err(format!("payload segment not sealed (seals {seals:#x})"));
        }
        check_shmem(&fd)?;
        let st = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| format!("fstat of the payload segment: {e}"))?;
        let size = st.st_size;
        let need = segment_size(len).filter(|&n| usize::try_from(size).is_ok_and(|s| n <= s));
        let (Some(need), true) = (need, len > 0) else {
            return Err(format!("payload segment of {size} bytes, {len} announced"));
        };
        // Sealed against writes, so no hole can be punched after this check.
        check_allocated(&st, need)?;
        // SAFETY: the memfd is sealed against writes, shrinking and growing (checked above, and
        // the seals can only be added, never removed), so the mapped bytes cannot change and no
        // page can disappear under us (no SIGBUS); the mapping is read-only and `need <= size`.
        // `populate`: every byte is about to be read, so the page tables are filled in one call
        // instead of one fault per 16 pages (shmem's fault-around).
        let map = unsafe { memmap2::MmapOptions::new().len(need).populate().map(&fd) }
            .map_err(|e| format!("mapping the payload segment: {e}"))?;
        check_header(&map[..16], len)?;
        Ok(Sealed { _fd: fd, map })
    }

    /// The payload (its encoding), mapped.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map[ENCODING_AT..]
    }
}

/// Most spare argument segments a pool keeps (see "Reuse").
pub(crate) const MAX_SPARES: usize = 2;

/// A pool's spare argument segments (see "Reuse"): writable memfds no task uses any more.
#[derive(Debug)]
pub(crate) struct SpareArgs {
    /// Most bytes the spares may hold together: 16 arena sizes.
    max_bytes: u64,
    /// `(segment, its size)`; at most [`MAX_SPARES`], sizes summing to at most `max_bytes`.
    spares: Mutex<Vec<(std::fs::File, u64)>>,
}

impl SpareArgs {
    /// Spares for a pool whose arenas hold `arena_cap` bytes.
    pub(crate) fn new(arena_cap: usize) -> Arc<SpareArgs> {
        Arc::new(SpareArgs {
            max_bytes: (arena_cap as u64).saturating_mul(REUSE_MAX_ARENAS as u64),
            spares: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(std::fs::File, u64)>> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The smallest spare that holds `len` bytes, or else the largest one (to be grown).
    fn take(&self, len: u64) -> Option<(std::fs::File, u64)> {
        let mut spares = self.lock();
        let pick = spares
            .iter()
            .enumerate()
            .filter(|(_, (_, size))| *size >= len)
            .min_by_key(|(_, (_, size))| *size)
            .or_else(|| spares.iter().enumerate().max_by_key(|(_, (_, size))| *size))
            .map(|(i, _)| i)?;
        Some(spares.swap_remove(pick))
    }

    /// Keeps a finished segment if the bounds allow; otherwise it is closed (after the lock).
    fn give_back(&self, file: std::fs::File, size: u64) {
        let mut spares = self.lock();
        let held: u64 = spares.iter().map(|(_, s)| s).sum();
        if spares.len() < MAX_SPARES && held.saturating_add(size) <= self.max_bytes {
            spares.push((file, size));
            return;
        }
        drop(spares);
        drop(file);
    }

    /// How many spares are kept and their bytes (tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, u64) {
        let spares = self.lock();
        (spares.len(), spares.iter().map(|(_, s)| s).sum())
    }
}

/// The writable side of an argument segment lent to a task; dropped with the last
/// [`SegmentShare`] of the task (its `keep`), it gives the segment back to the pool's spares.
#[derive(Debug)]
struct Lent {
    file: Option<std::fs::File>,
    size: u64,
    spares: Weak<SpareArgs>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        // The pool is gone (`upgrade` fails): the segment is simply closed.
        if let (Some(file), Some(spares)) = (self.file.take(), self.spares.upgrade()) {
            spares.give_back(file, self.size);
        }
    }
}

/// A read-only descriptor of the memfd `file` (see "Reuse"); a duplicate of `file` itself if
/// `/proc` cannot reopen it.
fn read_only(file: &std::fs::File) -> std::io::Result<OwnedFd> {
    match std::fs::File::open(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(ro) => Ok(OwnedFd::from(ro)),
        Err(_) => Ok(OwnedFd::from(file.try_clone()?)),
    }
}

/// A task argument too large for the arena: its segment (a spare of `spares` when one is left,
/// see "Reuse"), and the small payload that names it.
pub(crate) fn argument(
    head: &[u8],
    bytes: &[u8],
    spares: &Arc<SpareArgs>,
) -> Result<(Vec<u8>, SegmentShare)> {
    let os = |e| Error::os("memfd (large argument)", e);
    // The segment holds the header and the encoding after it ("Layout").
    let (len, need) = sizes(head, bytes).map_err(os)?;
    let (file, size) = match spares.take(need) {
        Some((file, size)) if size >= need => (file, size),
        Some((file, size)) => {
            grow(&file, size, need).map_err(os)?;
            (file, need)
        }
        None => {
            // No MFD_ALLOW_SEALING: nobody (a worker least of all) can seal it against the
            // parent's next write.
            let fd =
                memfd_create("shmpool-arg", MFdFlags::MFD_CLOEXEC).map_err(|e| os(e.into()))?;
            let file = std::fs::File::from(fd);
            grow(&file, 0, need).map_err(os)?;
            (file, need)
        }
    };
    // A failed write drops `file`: a segment in an unknown state is closed, not kept.
    write_layout(&file, head, bytes).map_err(os)?;
    let ro = read_only(&file).map_err(os)?;
    let id = crate::shm::segment::next_id();
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(&len.to_le_bytes());
    let lent = Lent {
        file: Some(file),
        size,
        spares: Arc::downgrade(spares),
    };
    Ok((
        payload,
        SegmentShare {
            id,
            fd: Arc::new(ro),
            keep: Some(Arc::new(lent)),
        },
    ))
}

/// A task's argument segment, mapped read-only in the worker.
#[derive(Debug)]
pub(crate) struct ArgumentMap {
    _fd: OwnedFd,
    map: memmap2::Mmap,
}

impl ArgumentMap {
    /// Checks that `fd` holds an encoding of `len` bytes ("Layout") and maps it read-only.
    fn open(fd: OwnedFd, len: usize) -> std::result::Result<ArgumentMap, String> {
        let size = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| format!("fstat of the argument segment: {e}"))?
            .st_size;
        let need = segment_size(len).filter(|&n| usize::try_from(size).is_ok_and(|s| n <= s));
        let (Some(need), true) = (need, len > 0) else {
            return Err(format!("argument segment of {size} bytes, {len} announced"));
        };
        // SAFETY: the parent made this memfd and is the only process holding it writable (ours
        // is read-only, see "Reuse"); it neither writes nor shrinks it until this task's result
        // has arrived, and this worker reads the mapping only before publishing that result. So
        // the mapped bytes do not change while we read them, and `need <= size` (checked
        // above) means no page under the mapping can be missing (no SIGBUS). Read-only mapping.
        // `populate`: every byte is about to be read, so the page tables are filled in one call.
        let map = unsafe { memmap2::MmapOptions::new().len(need).populate().map(&fd) }
            .map_err(|e| format!("mapping the argument segment: {e}"))?;
        check_header(&map[..16], len)?;
        Ok(ArgumentMap { _fd: fd, map })
    }

    /// The argument (its encoding), mapped.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map[ENCODING_AT..]
    }
}

/// Worker side: opens the argument a [`FLAG_ARG_SEGMENT`] payload names. The caller drops it
/// and calls [`crate::shm::channel::forget_local`] once the result is out.
pub(crate) fn resolve_argument(payload: &[u8]) -> std::result::Result<(u64, ArgumentMap), String> {
    let (Some(id), Some(len)) = (
        payload
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
        payload
            .get(8..16)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
    ) else {
        return Err("large-argument record shorter than 16 bytes".into());
    };
    let fd = crate::shm::channel::resolve(id).map_err(|e| e.to_string())?;
    let len = usize::try_from(len).map_err(|_| "argument length out of range".to_string())?;
    Ok((id, ArgumentMap::open(fd, len)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sealed_segments_open_and_unsealed_or_short_ones_are_refused() {
        let fd = make_segment(b"ab", b"cdef").unwrap();
        let seg = Sealed::open(fd.try_clone().unwrap(), 6).unwrap();
        assert_eq!(seg.bytes(), b"abcdef");
        // Shorter than written: the header says otherwise.
        assert!(Sealed::open(fd.try_clone().unwrap(), 4).is_err());
        assert!(
            Sealed::open(fd.try_clone().unwrap(), 7).is_err(),
            "longer than the segment"
        );
        assert!(Sealed::open(fd.try_clone().unwrap(), 0).is_err());
        // Writes to a sealed segment fail: what the parent reads cannot change.
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err());
        // An unsealed memfd (a worker that skipped the seals) is refused, whichever way it
        // would be read.
        let raw = memfd_create("x", MFdFlags::MFD_CLOEXEC).unwrap();
        std::fs::File::from(raw.try_clone().unwrap())
            .write_all(&[4, 1, 2, 3, 4])
            .unwrap();
        assert!(Sealed::open(raw, 5).unwrap_err().contains("not sealed"));
    }

    /// A sealed segment as [`make_segment`] makes it, but with `encoding` written at `at` and
    /// `header` (if any) at 0.
    fn laid_out(encoding: &[u8], at: usize, header: Option<[u8; 16]>) -> OwnedFd {
        let fd = memfd_create("x", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        let f = std::fs::File::from(fd);
        f.set_len((ENCODING_AT + encoding.len()) as u64).unwrap();
        if let Some(h) = header {
            f.write_all_at(&h, 0).unwrap();
        }
        f.write_all_at(encoding, at as u64).unwrap();
        // SAFETY: fcntl(F_ADD_SEALS) on the memfd just made, which nothing maps.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, SEALS) };
        assert_eq!(rc, 0);
        OwnedFd::from(f)
    }

    #[test]
    fn the_encoding_sits_at_its_offset_behind_a_header_that_is_checked() {
        let enc = [3u8, 1, 2, 3];
        // As written by every writer: header at 0, encoding at `ENCODING_AT`.
        let fd = make_segment(&enc[..1], &enc[1..]).unwrap();
        let mut raw = vec![0u8; ENCODING_AT + 4];
        std::fs::File::from(fd.try_clone().unwrap())
            .read_exact_at(&mut raw, 0)
            .unwrap();
        assert_eq!(raw[..16], header(4));
        assert!(raw[16..ENCODING_AT].iter().all(|&b| b == 0));
        assert_eq!(raw[ENCODING_AT..], enc);
        assert_eq!(Sealed::open(fd, 4).unwrap().bytes(), enc);
        // The right layout, read back.
        let ok = laid_out(&enc, ENCODING_AT, Some(header(4)));
        assert_eq!(Sealed::open(ok, 4).unwrap().bytes(), enc);
        // The encoding at offset 0 (no header), in a segment large enough: refused.
        let e = Sealed::open(laid_out(&enc, 0, None), 4).unwrap_err();
        assert!(e.contains("no payload header"), "{e}");
        // The worker's side checks the same (an argument laid out the old way fails its task).
        let e = ArgumentMap::open(laid_out(&enc, 0, None), 4).unwrap_err();
        assert!(e.contains("no payload header"), "{e}");
        let arg = ArgumentMap::open(laid_out(&enc, ENCODING_AT, Some(header(4))), 4).unwrap();
        assert_eq!(arg.bytes(), enc);
        // A header whose length disagrees with the announced one: refused.
        let e = Sealed::open(laid_out(&enc, ENCODING_AT, Some(header(3))), 4).unwrap_err();
        assert!(e.contains("header says 3 bytes, 4 announced"), "{e}");
        // A segment holding the encoding but not the room before it: refused.
        let short = make_segment(b"", &[0u8; 100]).unwrap();
        let e = Sealed::open(short, ENCODING_AT + 100).unwrap_err();
        assert!(e.contains("announced"), "{e}");
    }

    #[test]
    fn a_segment_past_rlimit_fsize_is_an_error_not_a_sigxfsz() {
        // In a child: lowering RLIMIT_FSIZE here would apply to the whole test process.
        // SAFETY: fork(2); the child only makes memfds, allocates and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let lim = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: setrlimit(2) reads one `rlimit`; this child alone is limited.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) }, 0);
            let big = vec![1u8; 64 << 10];
            let too_large = |e: &std::io::Error| {
                e.kind() == std::io::ErrorKind::FileTooLarge
                    && e.to_string().contains("RLIMIT_FSIZE")
            };
            let ok = [
                make_segment(b"", &big).map(drop),
                write_reusable(b"", &big).map(drop),
                // A segment already large enough: writing past the limit is refused too.
                {
                    let f = std::fs::File::from(memfd_create("x", MFdFlags::MFD_CLOEXEC).unwrap());
                    write_layout(&f, b"", &big)
                },
            ]
            .iter()
            .all(|r| r.as_ref().is_err_and(too_large));
            let spares = SpareArgs::new(1024);
            let arg = match argument(b"", &big, &spares) {
                Err(Error::Os { source, .. }) => too_large(&source),
                _ => false,
            };
            // Nor does a pool whose arenas pass the limit kill its caller.
            let pool = matches!(
                crate::Pool::new(1),
                Err(Error::Os { source, .. }) if too_large(&source)
            );
            // Within the limit, all is as usual.
            let small = make_segment(b"", &big[..1000])
                .is_ok_and(|fd| Sealed::open(fd, 1000).is_ok_and(|s| s.bytes() == &big[..1000]));
            // SAFETY: _exit ends the forked child at once.
            unsafe { libc::_exit(if ok && arg && pool && small { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child, writing its status into `status`.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x} (signal 25: killed by SIGXFSZ)"
        );
    }

    #[test]
    fn sealing_waits_out_a_page_held_elsewhere() {
        // A pipe holding one of the segment's pages (spliced) makes F_SEAL_WRITE fail with
        // EBUSY after the kernel's own short wait; the pipe is drained a while later, as a
        // transient reference goes away.
        let f = std::fs::File::from(
            memfd_create("x", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap(),
        );
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut off: libc::loff_t = 0;
        // SAFETY: splice(2) from our memfd into our pipe; `off` lives for the call.
        let n = unsafe {
            libc::splice(
                f.as_raw_fd(),
                &mut off,
                w.as_raw_fd(),
                std::ptr::null_mut(),
                4096,
                0,
            )
        };
        assert_eq!(n, 4096);
        // SAFETY: fcntl(F_ADD_SEALS) on the memfd just made.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, SEALS) };
        let busy = std::io::Error::last_os_error().raw_os_error();
        assert!(rc != 0 && busy == Some(libc::EBUSY), "held: refused");
        let drain = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(400));
            let mut buf = [0u8; 4096];
            std::io::Read::read_exact(&mut std::fs::File::from(r), &mut buf).unwrap();
        });
        seal(&f).unwrap();
        drain.join().unwrap();
        assert!(f.write_all_at(b"x", 0).is_err(), "sealed");
    }

    /// A reused result segment as [`write_reusable`] makes it (sealed against shrinking), with
    /// `header` at 0 and `encoding` at [`ENCODING_AT`].
    fn reusable(encoding: &[u8], header: [u8; 16]) -> std::fs::File {
        let fd = memfd_create("x", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        let f = std::fs::File::from(fd);
        f.set_len((ENCODING_AT + encoding.len()) as u64).unwrap();
        f.write_all_at(&header, 0).unwrap();
        f.write_all_at(encoding, ENCODING_AT as u64).unwrap();
        // SAFETY: fcntl(F_ADD_SEALS) on the memfd just made.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(rc, 0);
        f
    }

    /// What `ResultMap::open` gives for `f` announced as `len` bytes, copied out.
    fn open_reused(
        kept: &mut Option<ResultMap>,
        f: &std::fs::File,
        len: usize,
    ) -> std::result::Result<Vec<u8>, String> {
        ResultMap::open(kept, OwnedFd::from(f.try_clone().unwrap()), len).map(|b| b.copy_all())
    }

    #[test]
    fn copy_head_copies_what_is_there_and_zeros_the_rest() {
        let bytes: Vec<u8> = (1..=20).collect();
        let shared = SharedBytes {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            _map: std::marker::PhantomData,
        };
        let (h, n) = shared.copy_head::<16>(0);
        assert_eq!((&h[..], n), (&bytes[..16], 16));
        let (h, n) = shared.copy_head::<10>(15);
        assert_eq!((h, n), ([16, 17, 18, 19, 20, 0, 0, 0, 0, 0], 5));
        for offset in [20, 21, usize::MAX] {
            assert_eq!(shared.copy_head::<4>(offset), ([0; 4], 0), "{offset}");
        }
    }

    #[test]
    fn a_reused_result_segment_is_read_only_behind_a_header_that_agrees() {
        let enc = vec![9u8; 3000];
        let f = reusable(&enc, header(3000));
        let mut kept = None;
        assert_eq!(open_reused(&mut kept, &f, 3000).unwrap(), enc);
        // The header names another length, or is missing, or the announced length is 0 or
        // makes `ENCODING_AT + len` overflow or pass the segment: refused, nothing read.
        let e = open_reused(&mut kept, &f, 2999).unwrap_err();
        assert!(e.contains("header says 3000 bytes, 2999 announced"), "{e}");
        for len in [0, 3001, usize::MAX, usize::MAX - ENCODING_AT + 1] {
            let e = open_reused(&mut kept, &f, len).unwrap_err();
            assert!(e.contains("announced"), "{len}: {e}");
        }
        // A hugetlbfs memfd, sealed like a reused segment: refused before it is mapped (a
        // hole punched in it could SIGBUS the parent once huge pages run out).
        let huge = memfd_create(
            "x",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_HUGETLB,
        )
        .unwrap();
        nix::unistd::ftruncate(&huge, 2 << 20).unwrap();
        // SAFETY: fcntl(F_ADD_SEALS) on the memfd just made.
        let rc = unsafe { libc::fcntl(huge.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(rc, 0);
        let e = ResultMap::open(&mut None, huge.try_clone().unwrap(), 3000).unwrap_err();
        assert!(e.contains("not a shmem memfd"), "{e}");
        // Sealed as a fresh result segment is (its seals can be added to): refused too.
        // SAFETY: fcntl(F_ADD_SEALS) on the memfd just made, which nothing maps.
        let rc = unsafe { libc::fcntl(huge.as_raw_fd(), libc::F_ADD_SEALS, SEALS) };
        assert_eq!(rc, 0);
        let e = Sealed::open(huge, 3000).unwrap_err();
        assert!(e.contains("not a shmem memfd"), "{e}");
        let bad = reusable(&enc, [0; 16]);
        let e = open_reused(&mut kept, &bad, 3000).unwrap_err();
        assert!(e.contains("no payload header"), "{e}");
        // A worker rewriting the header while the parent opens: each open either reads the
        // result or refuses it, never anything else; the kept mapping serves both.
        let stop = crate::sync::AtomicU32::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0u64;
                // Relaxed: a stop flag only; it orders no other memory.
                while stop.load(crate::sync::Ordering::Relaxed) == 0 {
                    i += 1;
                    let h = if i.is_multiple_of(2) {
                        header(3000)
                    } else {
                        header(i)
                    };
                    f.write_all_at(&h, 0).unwrap();
                }
            });
            // Checked after the scribbler is stopped (a failed assertion must not leave it
            // running, which would keep the scope from ending).
            let seen: Vec<std::result::Result<bool, String>> = (0..20_000)
                .map(|_| open_reused(&mut kept, &f, 3000).map(|v| v == enc))
                .collect();
            // Relaxed: the stop flag (see its load).
            stop.store(1, crate::sync::Ordering::Relaxed);
            for r in seen {
                match r {
                    Ok(same) => assert!(same, "a result read whole or not at all"),
                    Err(e) => assert!(e.contains("header says"), "{e}"),
                }
            }
        });
    }

    /// What a spare argument segment holds, read back through its read-only fd.
    fn contents(share: &SegmentShare, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let f = std::fs::File::from(share.fd.try_clone().unwrap());
        f.read_exact_at(&mut out, ENCODING_AT as u64).unwrap();
        out
    }

    #[test]
    fn argument_segments_are_reused_within_their_bounds() {
        use std::os::unix::fs::FileExt;
        // Arena of 1 KiB: the spares hold at most 16 KiB, in at most two segments. Each
        // segment is `ENCODING_AT` (1 KiB) larger than its encoding ("Layout").
        let spares = SpareArgs::new(1024);
        let (_, a) = argument(b"h", &[1u8; 9999], &spares).unwrap();
        let a_ino = nix::sys::stat::fstat(a.fd.as_fd()).unwrap().st_ino;
        // The worker's fd is read-only.
        let ro = std::fs::File::from(a.fd.try_clone().unwrap());
        assert!(ro.write_at(b"x", 0).is_err());
        assert_eq!(spares.held(), (0, 0), "in use, not spare");
        drop(a);
        assert_eq!(
            spares.held(),
            (1, 11_024),
            "given back when no task holds it"
        );
        // Reused (same memfd), larger than the new argument, which is all that changes.
        let (payload, b) = argument(b"", &[2u8; 100], &spares).unwrap();
        assert_eq!(nix::sys::stat::fstat(b.fd.as_fd()).unwrap().st_ino, a_ino);
        assert_eq!(payload[8..16], 100u64.to_le_bytes());
        assert_eq!(contents(&b, 101), [&[2u8; 100][..], &[1]].concat());
        assert_eq!(spares.held(), (0, 0));
        // A second one while the first is in use is fresh; grown when reused for more.
        let (_, c) = argument(b"", &[3u8; 4000], &spares).unwrap();
        drop((b, c));
        assert_eq!(spares.held(), (2, 16_048));
        let (_, d) = argument(b"", &[4u8; 12_000], &spares).unwrap();
        let (_, e) = argument(b"", &[5u8; 10], &spares).unwrap();
        assert_eq!(contents(&d, 12_000), vec![4u8; 12_000]);
        assert_eq!(spares.held(), (0, 0));
        // Over the bound: 13 024 + 5 024 > 16 KiB, so only the first back stays.
        drop(d);
        drop(e);
        assert_eq!(spares.held(), (1, 13_024));
        // A third finished segment is closed: at most two.
        let (_, f) = argument(b"", &[6u8; 100], &spares).unwrap();
        let (_, g) = argument(b"", &[6u8; 100], &spares).unwrap();
        let (_, h) = argument(b"", &[6u8; 100], &spares).unwrap();
        drop((f, g, h));
        assert_eq!(spares.held().0, 2);
        // The pool (its `SpareArgs`) gone first: a segment in use is closed when its task ends.
        let (_, i) = argument(b"", &[7u8; 100], &spares).unwrap();
        drop(spares);
        drop(i);
    }

    #[test]
    fn a_segment_grown_for_a_payload_has_its_pages_allocated() {
        use std::os::unix::fs::MetadataExt;
        // Allocated bytes of a memfd: its 512-byte blocks.
        let allocated = |f: &std::fs::File| f.metadata().unwrap().blocks() * 512;
        let f = std::fs::File::from(memfd_create("x", MFdFlags::MFD_CLOEXEC).unwrap());
        grow(&f, 0, 1 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
        assert_eq!(
            allocated(&f),
            1 << 20,
            "allocated in one call, before any write"
        );
        // Grown again: the new part too, and what was there is left alone.
        f.write_all_at(b"kept", 100).unwrap();
        grow(&f, 1 << 20, 3 << 20).unwrap();
        assert_eq!(allocated(&f), 3 << 20);
        let mut back = [0u8; 4];
        f.read_exact_at(&mut back, 100).unwrap();
        assert_eq!(&back, b"kept");
    }

    /// A byte vector as `write_bytes` encodes it, in a sealed segment.
    fn byte_segment(v: &[u8], trailing: &[u8]) -> (Sealed, usize) {
        let mut prefix = [0u8; 10];
        let n = crate::encoding::payload::varint(v.len() as u64, &mut prefix);
        let mut body = v.to_vec();
        body.extend_from_slice(trailing);
        let len = n + body.len();
        (
            Sealed::open(make_segment(&prefix[..n], &body).unwrap(), len).unwrap(),
            len,
        )
    }

    /// A byte vector decoded from a segment's mapping.
    fn read<T: 'static>(seg: &Sealed) -> std::result::Result<T, String> {
        crate::encoding::payload::read_byte_payload::<T>(seg.bytes()).expect("a byte vector")
    }

    #[test]
    fn byte_vectors_are_read_whole_at_every_size() {
        // Around page boundaries (the prefix shifts the bytes off page alignment), the size
        // from which a fresh vector is populated (`payload::PREFAULT_MIN`, 8 MiB) and a varint
        // length that takes three bytes.
        for len in [
            1usize,
            127,
            128,
            4095,
            4096,
            4097,
            8190,
            65_536 * 2 + 3,
            (8 << 20) - 1,
            (8 << 20) + 4097,
        ] {
            let v: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
            let (seg, _) = byte_segment(&v, &[]);
            let back: Vec<u8> = read(&seg).unwrap();
            assert!(back == v, "len {len}");
            let boxed: Box<[u8]> = read(&seg).unwrap();
            assert!(*boxed == v[..], "len {len}");
        }
        // An empty vector is one byte (its length).
        let (seg, _) = byte_segment(&[], &[]);
        assert_eq!(read::<Vec<u8>>(&seg).unwrap(), b"");
        // Bytes after the string are ignored, as postcard ignores them.
        let (seg, _) = byte_segment(b"abc", b"zz");
        assert_eq!(read::<Vec<u8>>(&seg).unwrap(), b"abc");
    }

    #[test]
    fn a_length_that_lies_is_an_error_not_a_read_past_the_end() {
        // Claims 10 bytes, holds 3.
        let seg = Sealed::open(make_segment(&[10], b"abc").unwrap(), 4).unwrap();
        let e = read::<Vec<u8>>(&seg).unwrap_err();
        assert!(e.contains("only 3 remain"), "{e}");
        // The announced length, not the file's, bounds the read: a segment longer than announced
        // does not let the string run past it.
        // (Its header agrees with the announced length, as a lying worker would make it.)
        let seg = Sealed::open(laid_out(b"\x05abcde", ENCODING_AT, Some(header(4))), 4).unwrap();
        assert!(read::<Vec<u8>>(&seg).is_err());
        // A length varint that never ends, or overflows.
        let seg = Sealed::open(make_segment(&[0x80; 3], b"").unwrap(), 3).unwrap();
        assert!(read::<Vec<u8>>(&seg).is_err());
        let seg = Sealed::open(make_segment(&[0xff; 12], b"").unwrap(), 12).unwrap();
        assert!(read::<Vec<u8>>(&seg).is_err());
        // A huge claimed length is refused before anything is allocated for it.
        let mut prefix = [0u8; 10];
        let n = crate::encoding::payload::varint(u64::MAX >> 1, &mut prefix);
        let seg = Sealed::open(make_segment(&prefix[..n], b"x").unwrap(), n + 1).unwrap();
        assert!(read::<Vec<u8>>(&seg).is_err());
    }
}
