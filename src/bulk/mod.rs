//! Bulk data without copies: [`SharedVec`], [`MappedFile`], and chunked maps over them
//! ([`Pool::map_chunks`](crate::Pool::map_chunks), [`Pool::imap_chunks`](crate::Pool::imap_chunks),
//! [`Pool::map_chunks_into`](crate::Pool::map_chunks_into),
//! [`Pool::imap_reader`](crate::Pool::imap_reader)).
//!
//! # How a chunk travels
//!
//! A [`SharedVec`] is an anonymous memfd mapped `MAP_SHARED` in the parent; a [`MappedFile`] is
//! a read-only mapping of a file. Each has a process-unique id and keeps its fd. A chunk task's
//! argument is only `(id, byte offset, byte length)` (plus the same for an output range): no
//! element is encoded or copied. The dispatcher sends the fd to the worker over its seat's
//! `SCM_RIGHTS` socket before the first task that needs it (see `channel`), so segments made after
//! the pool forked reach the workers too.
//!
//! # Mappings in the worker
//!
//! A worker keeps a mapping of a whole `SharedVec` (or reader buffer) in a small cache, so
//! repeated maps over the same data build its page tables once; the parent truncates the memfd
//! when it drops the vector, which frees the memory at once in every process. A `MappedFile` is
//! mapped **per chunk** (only the chunk's page-aligned range, unmapped when `f` returns), which
//! bounds a worker's resident memory by one chunk whatever the file's size. The trade-off is
//! written down and measured in the `bulk::worker` module's docs.
//!
//! # Who may write while workers read
//!
//! The parent's borrow is the lock: [`Pool::map_chunks`](crate::Pool::map_chunks) borrows the
//! input for the whole call and an [`IMapChunks`] borrows it for its whole life (its `Drop` waits
//! for chunks still in flight), so the parent cannot write to a `SharedVec` while a worker reads
//! it. [`Pool::map_chunks_into`](crate::Pool::map_chunks_into) borrows the output `&mut`, and its
//! chunks write disjoint ranges. A file's contents are the caller's promise (see
//! [`MappedFile::open`]).

mod chunks;
mod reader;
mod worker;

use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use bytemuck::Pod;
use memmap2::{Advice, Mmap, MmapOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shm::channel::SegmentShare;
use crate::shm::segment::Segment;

pub use chunks::IMapChunks;
pub use reader::IMapReader;

/// Largest element alignment a segment can honour: mappings start on a page boundary.
const PAGE: usize = 4096;

/// Byte size of `len` elements of `T`, or an error on overflow.
fn bytes_of<T>(len: usize) -> Result<usize> {
    len.checked_mul(size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| Error::invalid(format!("{len} elements do not fit in memory")))
}

/// Compile-time checks on a `SharedVec` element type.
const fn assert_elem<T>() {
    const {
        assert!(
            size_of::<T>() > 0,
            "shmpool: SharedVec of a zero-sized type"
        );
        assert!(
            align_of::<T>() <= PAGE,
            "shmpool: SharedVec element aligned beyond a page"
        );
    }
}

/// A vector of plain-old-data values living in shared memory, which pool workers read (and, with
/// [`Pool::map_chunks_into`](crate::Pool::map_chunks_into), write) in place: a chunk task sends
/// only `(segment, offset, length)`, never the elements.
///
/// The memory is an anonymous `memfd` (nothing in `/dev/shm`, no name another user can open),
/// mapped `MAP_SHARED` in this process and marked `MADV_DONTFORK`. It can be made before or after
/// the pool: workers receive its file descriptor when their first chunk of it is dispatched. Its
/// length is fixed once made. It derefs to `[T]` and `mut [T]`, so every slice method works.
///
/// When dropped, the parent's mapping goes at once; a worker closes its copy of the fd at its
/// next chunk task (or when the pool ends), so nothing of it survives the pool.
///
/// # Examples
///
/// ```
/// use shmpool::{Pool, SharedVec};
///
/// let pool = Pool::new(2)?;
/// let mut v: SharedVec<u32> = (1..=1000).collect();
/// v[0] = 0;
/// let sums = pool.map_chunks(&v, 250, |s: &[u32]| s.iter().map(|&x| u64::from(x)).sum::<u64>())?;
/// assert_eq!(sums.iter().sum::<u64>(), 500_500 - 1);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// Only [`bytemuck::Pod`] element types are allowed (any bit pattern is a valid value, no
/// pointers), so a `String` does not compile:
///
/// ```compile_fail
/// let v = shmpool::SharedVec::<String>::zeroed(3);
/// ```
pub struct SharedVec<T: Pod> {
    /// `None` exactly when `len == 0` (a memfd of size 0 cannot be mapped).
    segment: Option<Segment>,
    /// Elements; the segment's mapping holds at least `len * size_of::<T>()` bytes.
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: Pod> SharedVec<T> {
    /// A shared vector of `len` zeroed elements. The pages are reserved, not touched: memory is
    /// used as elements are written.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `len` elements overflow the address space, [`Error::Os`] if
    /// the memfd cannot be made or mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut v = shmpool::SharedVec::<f64>::zeroed(4)?;
    /// v[3] = 1.5;
    /// assert_eq!(&v[..], &[0.0, 0.0, 0.0, 1.5]);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn zeroed(len: usize) -> Result<SharedVec<T>> {
        assert_elem::<T>();
        let bytes = bytes_of::<T>(len)?;
        let segment = if bytes == 0 {
            None
        } else {
            Some(Segment::passed("shmpool-vec", bytes)?)
        };
        Ok(SharedVec {
            segment,
            len,
            _elem: PhantomData,
        })
    }

    /// A shared vector holding a copy of `items`.
    ///
    /// # Errors
    ///
    /// As [`zeroed`](SharedVec::zeroed).
    ///
    /// # Examples
    ///
    /// ```
    /// let v = shmpool::SharedVec::from_slice(&[1u8, 2, 3])?;
    /// assert_eq!(v.len(), 3);
    /// assert_eq!(v[1], 2);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn from_slice(items: &[T]) -> Result<SharedVec<T>> {
        let mut v = SharedVec::zeroed(items.len())?;
        v.copy_from_slice(items);
        Ok(v)
    }

    /// Collects an iterator into a shared vector, growing the memfd as needed (no intermediate
    /// `Vec`). `collect()` does the same and panics on an OS error.
    ///
    /// # Errors
    ///
    /// As [`zeroed`](SharedVec::zeroed).
    ///
    /// # Examples
    ///
    /// ```
    /// let v = shmpool::SharedVec::try_from_iter((0..10_000u64).filter(|x| x % 3 == 0))?;
    /// assert_eq!(v.len(), 3334);
    /// assert_eq!(v[3333], 9999);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn try_from_iter<I: IntoIterator<Item = T>>(items: I) -> Result<SharedVec<T>> {
        assert_elem::<T>();
        let mut items = items.into_iter();
        let Some(first) = items.next() else {
            return SharedVec::zeroed(0);
        };
        let mut cap = items
            .size_hint()
            .0
            .saturating_add(1)
            .max(PAGE / size_of::<T>())
            .max(1);
        let mut segment = Segment::passed("shmpool-vec", bytes_of::<T>(cap)?)?;
        let mut len = 0;
        for x in std::iter::once(first).chain(items) {
            if len == cap {
                cap = cap
                    .checked_mul(2)
                    .ok_or_else(|| Error::invalid("SharedVec too large"))?;
                segment.resize(bytes_of::<T>(cap)?)?;
            }
            debug_assert!(len < cap);
            // SAFETY: the mapping holds `cap * size_of::<T>()` bytes, is page aligned (so aligned
            // for `T`, `assert_elem`) and nobody else has it yet; `len < cap`.
            unsafe { segment.ptr().cast::<T>().add(len).write(x) };
            len += 1;
        }
        if len < cap {
            segment.resize(bytes_of::<T>(len)?)?;
        }
        Ok(SharedVec {
            segment: Some(segment),
            len,
            _elem: PhantomData,
        })
    }

    /// The number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(shmpool::SharedVec::<u16>::zeroed(7)?.len(), 7);
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(shmpool::SharedVec::<u16>::zeroed(0)?.is_empty());
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Pod> Deref for SharedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.segment {
            None => &[],
            // SAFETY: the mapping holds `len` elements of `T` (invariant of `segment`), is page
            // aligned (so aligned for `T`, `assert_elem`) and initialized (zero-filled memfd; every
            // bit pattern is a valid `T: Pod`). No process writes it while this borrow lives:
            // workers write only through `map_chunks_into`, which holds `&mut` of the vector.
            Some(r) => unsafe {
                std::slice::from_raw_parts(r.ptr().cast_const().cast::<T>(), self.len)
            },
        }
    }
}

impl<T: Pod> DerefMut for SharedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &self.segment {
            None => &mut [],
            // SAFETY: as in `deref`; `&mut self` means no other borrow in this process, and no
            // chunk task of ours is in flight (they borrow the vector until they finish).
            Some(r) => unsafe { std::slice::from_raw_parts_mut(r.ptr().cast::<T>(), self.len) },
        }
    }
}

impl<T: Pod> FromIterator<T> for SharedVec<T> {
    /// # Panics
    ///
    /// If the memfd cannot be made or grown (use [`SharedVec::try_from_iter`] to get the error).
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> SharedVec<T> {
        match SharedVec::try_from_iter(iter) {
            Ok(v) => v,
            Err(e) => panic!("cannot collect into a SharedVec: {e}"),
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedVec")
            .field("id", &self.segment.as_ref().map(|r| r.id()))
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A read-only memory mapping of a file, which pool workers map too, so they read the page cache
/// directly: nothing is read into the parent and nothing is copied to the workers.
///
/// Use it with [`Pool::map_chunks`](crate::Pool::map_chunks) and
/// [`Pool::imap_chunks`](crate::Pool::imap_chunks) (chunks are `&[u8]`), or read it in the parent
/// through [`as_bytes`](MappedFile::as_bytes) / `Deref<Target = [u8]>`.
///
/// # Examples
///
/// ```
/// let path = std::env::temp_dir().join(format!("shmpool-doc-mf-{}", std::process::id()));
/// std::fs::write(&path, b"hello, mapped world")?;
/// // SAFETY: this program made the file and nobody changes it while it is mapped.
/// let file = unsafe { shmpool::MappedFile::open(&path)? };
/// let pool = shmpool::Pool::new(2)?;
/// let spaces = pool.map_chunks(&file, 8, |s: &[u8]| s.iter().filter(|&&b| b == b' ').count())?;
/// assert_eq!(spaces.iter().sum::<usize>(), 2);
/// std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MappedFile {
    id: u64,
    /// The open file (read-only); passed to workers as is.
    fd: Arc<OwnedFd>,
    /// The parent's view (`MADV_DONTFORK`); empty for an empty file.
    map: Mmap,
}

impl MappedFile {
    /// Opens `path` read-only and maps the whole file.
    ///
    /// The mapping is virtual: opening an 8 GiB file costs no memory, and pages come from the
    /// page cache only as the parent or a worker reads them.
    ///
    /// # Safety
    ///
    /// memmap2's contract, which this type keeps: **the file must not be modified or truncated
    /// while it is mapped** — by this process, another process, or another program — until the
    /// `MappedFile` is dropped and no chunk task of it is running. A slice of a mapped file is
    /// `&[u8]`, which Rust assumes cannot change: if the file is written underneath, readers (the
    /// parent, or `f` in a worker) may see the bytes change while they look at them, torn data,
    /// or results that differ between runs; if it is truncated, a read past the new end raises
    /// `SIGBUS`, which kills the parent, or the worker (that chunk then fails with
    /// [`Error::WorkerDied`]).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] if the file cannot be opened (for example it does not exist) or mapped;
    /// [`Error::InvalidArgument`] if it is not a regular file (use
    /// [`Pool::imap_reader`](crate::Pool::imap_reader) for pipes and devices).
    ///
    /// # Examples
    ///
    /// ```
    /// let missing = std::env::temp_dir().join("shmpool-doc-no-such-file");
    /// // SAFETY: nothing is mapped when opening fails.
    /// assert!(unsafe { shmpool::MappedFile::open(&missing) }.is_err());
    /// ```
    pub unsafe fn open(path: impl AsRef<Path>) -> Result<MappedFile> {
        let file = File::open(path.as_ref()).map_err(|e| Error::os("open", e))?;
        let meta = file.metadata().map_err(|e| Error::os("fstat", e))?;
        if !meta.is_file() {
            return Err(Error::invalid(format!(
                "{} is not a regular file",
                path.as_ref().display()
            )));
        }
        let len = usize::try_from(meta.len()).map_err(|_| Error::invalid("file too large"))?;
        // SAFETY: delegated to the caller (see # Safety): the file is not modified or truncated
        // while this mapping (or a worker's) exists.
        let map =
            unsafe { MmapOptions::new().len(len).map(&file) }.map_err(|e| Error::os("mmap", e))?;
        if len > 0 {
            map.advise(Advice::DontFork)
                .map_err(|e| Error::os("madvise(MADV_DONTFORK)", e))?;
        }
        Ok(MappedFile {
            id: crate::shm::segment::next_id(),
            fd: Arc::new(OwnedFd::from(file)),
            map,
        })
    }

    /// The file's length in bytes (when it was opened).
    ///
    /// # Examples
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("shmpool-doc-len-{}", std::process::id()));
    /// std::fs::write(&path, [7u8; 5000])?;
    /// // SAFETY: nobody changes the file while it is mapped.
    /// let file = unsafe { shmpool::MappedFile::open(&path)? };
    /// assert_eq!(file.len(), 5000);
    /// assert!(!file.is_empty());
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("shmpool-doc-empty-{}", std::process::id()));
    /// std::fs::write(&path, b"")?;
    /// // SAFETY: nobody changes the file while it is mapped.
    /// let file = unsafe { shmpool::MappedFile::open(&path)? };
    /// assert!(file.is_empty());
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The file's bytes, read through the parent's mapping.
    ///
    /// # Examples
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("shmpool-doc-bytes-{}", std::process::id()));
    /// std::fs::write(&path, b"abc")?;
    /// // SAFETY: nobody changes the file while it is mapped.
    /// let file = unsafe { shmpool::MappedFile::open(&path)? };
    /// assert_eq!(file.as_bytes(), b"abc");
    /// assert_eq!(&file[1..], b"bc");
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        &self.map
    }
}

impl Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedFile")
            .field("id", &self.id)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// An input that chunk maps can split without copying: a [`SharedVec<T>`] (chunks are `&[T]`)
/// or a [`MappedFile`] (chunks are `&[u8]`). Sealed: no other type implements it.
///
/// # Examples
///
/// ```
/// use shmpool::{BulkInput, Pool, SharedVec};
///
/// fn total<I: BulkInput<Elem = u8>>(pool: &Pool, input: &I) -> shmpool::Result<u64> {
///     let parts = pool.map_chunks(input, 4096, |s: &[u8]| s.iter().map(|&b| u64::from(b)).sum::<u64>())?;
///     Ok(parts.iter().sum())
/// }
/// let pool = Pool::new(2)?;
/// assert_eq!(total(&pool, &SharedVec::from_slice(&[1u8; 10_000])?)?, 10_000);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub trait BulkInput: sealed::Sealed {
    /// The element type of the slices a chunk function receives.
    type Elem: Pod;
}

mod sealed {
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    /// What the chunk maps need of an input.
    pub trait Sealed {
        /// Number of elements.
        fn elems(&self) -> usize;
        /// The segment's id and fd, `None` when empty.
        fn segment(&self) -> Option<(u64, &Arc<OwnedFd>)>;
        /// Whether the segment is one of our memfds (not a user's file).
        fn is_memfd(&self) -> bool;
    }
}

impl<T: Pod> sealed::Sealed for SharedVec<T> {
    fn elems(&self) -> usize {
        self.len
    }
    fn segment(&self) -> Option<(u64, &Arc<OwnedFd>)> {
        self.segment.as_ref().map(|r| (r.id(), r.fd()))
    }
    fn is_memfd(&self) -> bool {
        true
    }
}

impl<T: Pod> BulkInput for SharedVec<T> {
    type Elem = T;
}

impl sealed::Sealed for MappedFile {
    fn elems(&self) -> usize {
        self.len()
    }
    fn segment(&self) -> Option<(u64, &Arc<OwnedFd>)> {
        (!self.is_empty()).then_some((self.id, &self.fd))
    }
    fn is_memfd(&self) -> bool {
        false
    }
}

impl BulkInput for MappedFile {
    type Elem = u8;
}

/// The share of an input's segment for a task, `None` when it is empty.
fn share_of<I: BulkInput + ?Sized>(input: &I) -> Option<SegmentShare> {
    input.segment().map(|(id, fd)| SegmentShare {
        id,
        fd: Arc::clone(fd),
        keep: None,
    })
}

/// A byte range of a segment, as a chunk task names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Span {
    seg: u64,
    offset: u64,
    len: u64,
    /// The segment is one of our memfds (a `SharedVec` or a reader buffer), not a user's file:
    /// the worker may keep a mapping of all of it (see `bulk::worker`).
    memfd: bool,
}

/// A chunk task's whole argument: a few bytes, whatever the chunk's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ChunkArg {
    input: Span,
    output: Option<Span>,
}

/// How an input of `elems` elements splits into chunks of `chunk_len`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    elems: usize,
    /// At least 1.
    chunk_len: usize,
}

impl Plan {
    fn new(elems: usize, chunk_len: usize) -> Result<Plan> {
        if chunk_len == 0 {
            return Err(Error::invalid("chunk length must be at least 1"));
        }
        Ok(Plan { elems, chunk_len })
    }

    fn chunks(&self) -> usize {
        self.elems.div_ceil(self.chunk_len)
    }

    /// Element range `(start, len)` of chunk `i < chunks()`.
    fn range(&self, i: usize) -> (usize, usize) {
        debug_assert!(i < self.chunks());
        let start = i * self.chunk_len;
        (start, self.chunk_len.min(self.elems - start))
    }
}
