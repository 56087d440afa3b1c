//! The hashing itself, as run inside a worker: whole files for every algorithm, and aligned
//! BLAKE3 subtrees of one big file (`blake3::hazmat`) whose chaining values the parent merges.
//!
//! Implementations, each picked by measurement on these machines (one core, `--release`):
//! SHA-512 through OpenSSL (`openssl::sha`, 611 MB/s against 367–391 MB/s for `sha2`), SHA-256
//! through `sha2` (~1,550 MB/s with SHA-NI like the others, and the lowest cost per message),
//! BLAKE3 through `blake3` (3.0 GB/s, one thread: the parallelism is the pool's).
//!
//! ## Files are read; SHA-2 maps big ones
//!
//! A file is read into the worker's reused buffer (one `read` for most: a short read that
//! completes the size `fstat` gave is its end, so the usual extra `read` that returns 0 is
//! skipped; files that say 0 bytes, as in /proc, are read until a `read` returns 0). That one
//! read is a `preadv2(RWF_NOWAIT)`: a file whose first pages are not in the page cache is set
//! aside while the disk reads it, and hashed at the end of its task ([`NoWait`]). For SHA-2
//! a file of at least `engine::MAP_MIN` (256 KiB) — which the scheduler sends alone in its
//! task — is hashed through a mapping of its descriptor made in the worker, which saves the
//! kernel's copy into the buffer (a file that `mmap` refuses is read, as `sha256sum` reads it).
//! BLAKE3 maps nothing: files up to one piece (4 MiB) are read like small ones (see
//! `engine::Engine::maps`), the pieces of bigger ones with `pread` ([`blake3_subtree`]); with
//! the page-aligned buffer below, that took less CPU than mapping. On this (virtual) machine
//! the copy was
//! slow (~1.8 GB/s): `perf record` of a run over the toolchain tree put a quarter (SHA-256) to a
//! third (BLAKE3) of all CPU time in `_copy_to_iter`, and mapping cut the run's CPU time by
//! 15–20%. For SHA-512 the copy was still 19% of the CPU time, and mapping cut the system time
//! of a run from 2.0–2.2 s to 1.5 s (three alternating runs each, `BENCHMARKS.md`); an earlier
//! trial on a busier machine had seen no difference. Mapping from 64 or 128 KiB instead of 256
//! KiB changed nothing measurable (BLAKE3, three alternating runs each).
//!
//! Most of that slowness was the buffer, not the copy: malloc put it 16 bytes into a page, and
//! the kernel's copy into such a buffer is several times slower here than into a page-aligned
//! one ([`ReadBuf`], which the workers now use: a run's system time fell by 25–30%).
//!
//! A path the walk saw as a regular file (or a worker's `fstat`, for a big file sent again) is
//! opened with `O_NONBLOCK` and checked with `fstat` ([`open_regular`]): a FIFO or device put in
//! its place after the walk fails with [`not_regular`] instead of blocking the worker in `open`
//! for ever. Paths named on the command line or in a manifest are opened as `sha256sum` opens
//! them, FIFOs included.
//!
//! Small files are opened through an [`Opener`]: by name, relative to their directory's
//! descriptor, which the next paths of the task reuse.
//!
//! `memmap2::Mmap::map` is `unsafe`: the file must not change while it is mapped. `shmpool hash`
//! cannot promise that for files it does not own, and accepts the consequence, which is the one
//! `b3sum` (it maps files too) and any reader of a changing file has: a file written while it is
//! hashed gives a digest of some mix of its old and new bytes, and a file truncated under the
//! mapping raises `SIGBUS` in the worker, which dies; the pool replaces it and the file is
//! reported as failed (`file shrank while it was hashed (worker ... SIGBUS ...)`), and the run
//! exits with status 1. The parent never maps a file, so it is never at risk, and since a mapped
//! file is alone in its task no other file's result is lost.
//!
//! The pieces of a split BLAKE3 file are read by different tasks, each opening the path anew:
//! a file replaced during the run (renamed over, as editors, `rsync` and package managers do)
//! could give pieces of two files, merged into the digest of neither with exit status 0 (seen:
//! an 800 MB file renamed over mid-run). Each piece reports the file it read ([`FileId`]:
//! device, inode, size); the parent fails the file ("file changed while hashing") unless all
//! pieces read one file of the planned size. A file grown or shrunk since it was planned fails
//! the same way; one rewritten in place is not detected, as with any mapping or reader.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};
use sha2::Digest as _;

use super::Algo;

/// Size of the read buffer a worker reuses for every file (reads of ≥ 64 KiB; large enough for
/// BLAKE3's widest SIMD batch).
pub(crate) const READ_BUF: usize = 256 << 10;

/// Alignment of a [`ReadBuf`]: a page.
const READ_ALIGN: usize = 4096;

/// A read buffer of [`READ_BUF`] bytes that starts on a page boundary.
///
/// The kernel copies file data into it (`read`) with `rep movsb`, and on these machines (AMD EPYC,
/// KVM) that copy is several times slower into a buffer that starts 16 bytes into a page, where
/// malloc puts a large allocation (`mmap`'d chunk + its 16-byte header), than into a page-aligned
/// one. Measured (one thread, `read` of every file of the toolchain tree into the buffer, BLAKE3):
/// 2.0–2.1 CPU-s with the buffer at page offset 0, 3.45–3.57 s at offset 16, 2.2–2.5 s at 64 or
/// 2,048; inside a pool worker the same loop took 3.1–3.7 s with the old `vec![0; READ_BUF]`
/// (at offset 16) and 2.3 s with a buffer malloc happened to place elsewhere. `perf` put the
/// difference all in `_copy_to_iter`, on one instruction.
pub(crate) struct ReadBuf {
    mem: Vec<u8>,
    start: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        let mem = vec![0u8; READ_BUF + READ_ALIGN];
        let start = (READ_ALIGN - mem.as_ptr() as usize % READ_ALIGN) % READ_ALIGN;
        ReadBuf { mem, start }
    }

    /// The buffer: [`READ_BUF`] bytes, page-aligned.
    pub(crate) fn get(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + READ_BUF]
    }
}

impl std::fmt::Debug for ReadBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBuf").finish_non_exhaustive()
    }
}

/// A digest (or a BLAKE3 chaining value), held inline: no allocation per file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest {
    len: u8,
    bytes: [u8; Digest::MAX],
}

impl Digest {
    /// The longest digest (SHA-512's).
    pub(crate) const MAX: usize = 64;

    /// A digest of `bytes`; `None` if it is longer than [`Digest::MAX`].
    pub(crate) fn new(bytes: &[u8]) -> Option<Digest> {
        let mut d = Digest {
            len: u8::try_from(bytes.len()).ok()?,
            bytes: [0; Digest::MAX],
        };
        d.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(d)
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut hex = Vec::new();
        super::format::push_hex(&mut hex, self.as_slice());
        write!(f, "Digest({})", String::from_utf8_lossy(&hex))
    }
}

/// An incremental hasher of one of the algorithms (on the stack: one is made per file, and a
/// boxed BLAKE3 state, 1.9 KB, was an allocation too large for malloc's fast path).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(openssl::sha::Sha512),
    Blake3(blake3::Hasher),
}

impl Hasher {
    pub(crate) fn new(algo: Algo) -> Hasher {
        match algo {
            Algo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algo::Sha512 => Hasher::Sha512(openssl::sha::Sha512::new()),
            Algo::Blake3 => Hasher::Blake3(blake3::Hasher::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub(crate) fn finish(self) -> Digest {
        let d = match self {
            Hasher::Sha256(h) => Digest::new(&h.finalize()),
            Hasher::Sha512(h) => Digest::new(&h.finish()),
            Hasher::Blake3(h) => Digest::new(h.finalize().as_bytes()),
        };
        d.expect("digests are at most 64 bytes")
    }
}

/// Hashes everything `r` yields, reading into `buf`.
pub(crate) fn hash_reader(algo: Algo, r: &mut impl Read, buf: &mut [u8]) -> io::Result<Digest> {
    let mut h = Hasher::new(algo);
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Hashes the file at `path` (opened read-only, read to its end). `size`: its size when it is
/// a regular file, so a short read that completes that size is its end (no extra `read`
/// returning 0).
#[cfg(test)]
pub(crate) fn hash_file(
    algo: Algo,
    path: &[u8],
    size: Option<u64>,
    buf: &mut [u8],
) -> io::Result<Digest> {
    let mut f = File::open(os_path(path))?;
    hash_open(algo, &mut f, size, buf)
}

/// What [`hash_small`] found.
#[derive(Debug)]
pub(crate) enum Small {
    /// The digest, and the bytes hashed.
    Digest(Digest, u64),
    /// Not hashed: a regular file of this many bytes, at least the limit given.
    Big(u64),
    /// Not hashed yet: a regular file whose first bytes are not in the page cache. The kernel
    /// has started reading it; [`Pending::finish`] hashes it, later (see [`NoWait`]).
    Pending(Pending),
}

/// A small file whose reading from disk has started and not finished (see [`NoWait`]): its
/// open descriptor, at offset 0, and its size as `fstat` gave it.
#[derive(Debug)]
pub(crate) struct Pending {
    file: File,
    size: u64,
}

impl Pending {
    /// Hashes the file (waiting for the disk if its pages have not come yet); the digest and
    /// the bytes hashed.
    pub(crate) fn finish(mut self, algo: Algo, buf: &mut [u8]) -> io::Result<(Digest, u64)> {
        let d = hash_open(algo, &mut self.file, Some(self.size), buf)?;
        Ok((d, self.size))
    }

    /// Its size as `fstat` gave it when it was opened.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

/// Reads that do not wait for the disk, tried on the first read of each small file of a task.
///
/// "Warm" trees are not all warm: on these VMs a DAMON scheme pages out file pages left unread
/// for about a minute, and in a run over the toolchain tree a few seconds after another, the
/// two workers still spent 0.2–0.7 s of their ~2.3 s in `D` state, waiting for single pages
/// of small files while a core sat idle (`perf sched`, `sched_switch` stacks in
/// `filemap_get_pages`). So the first read of a small file is `preadv2(RWF_NOWAIT)`: a file
/// whose first pages are in the page cache (nearly all of them) is read as before, in the
/// same one system call; one whose first pages are not answers `EAGAIN` at once, having
/// started their reading (the kernel's readahead), and is set aside ([`Small::Pending`],
/// with a `POSIX_FADV_WILLNEED` for the rest of it) while the worker hashes the next files of
/// its task. The files set aside are hashed at the end of the task, or when too many files or
/// bytes are waiting (`MAX_PENDING`, `MAX_PENDING_BYTES` in `engine`: pages asked for long
/// before they are hashed may be dropped again under a memory limit, and read twice), by then
/// mostly read. On a cold tree this keeps many reads in flight per worker instead of one.
///
/// A filesystem or kernel that refuses the flag (`EOPNOTSUPP`: kernfs, some FUSE and network
/// filesystems; `EINVAL`/`ENOSYS` before Linux 4.14) is read the usual way for the rest of the
/// task. On Linux 6.18 here, procfs, sysfs, tmpfs, overlayfs, squashfs and erofs all refused
/// it; ext4 took it.
///
/// A read that does not wait may also come back with the bytes of a file that was not in the
/// page cache: the readahead it starts can finish before the call looks at the page (a fast
/// virtual disk, a preempted thread). That file is simply hashed at once.
#[derive(Debug)]
pub(crate) struct NoWait {
    on: bool,
}

impl NoWait {
    /// Tries reads that do not wait, until refused.
    pub(crate) fn new() -> NoWait {
        NoWait { on: true }
    }

    /// Never tries them (the tests' reference path).
    #[cfg(test)]
    pub(crate) fn off() -> NoWait {
        NoWait { on: false }
    }
}

/// What one read that does not wait gave.
enum Try {
    /// This many bytes (0: the end of the file).
    Read(usize),
    /// `EAGAIN`: none of the bytes asked for is in the page cache, and the kernel has started
    /// reading them; or a lock the read needs was busy (XFS's inode lock held by a writer, a
    /// locked page), and nothing started. The callers ask for the bytes either way.
    Cold,
    /// This file (or kernel) does not take `RWF_NOWAIT`.
    Refused,
    /// Any other failure (`EIO`, a seccomp filter's `EPERM`, an offset `off_t` cannot hold):
    /// the plain read that follows tells what it is, if anything, and the next file tries
    /// again.
    Failed,
}

/// One `preadv2(RWF_NOWAIT)` of `f` into `buf`: at `offset`, or at (and advancing) the file
/// position when `offset` is `None`.
///
/// Never an error: the read is only a way to learn what is cached. Whatever it cannot tell, the
/// plain read after it does, as it did before this read was tried (a file is never failed by
/// this read alone).
fn read_nowait(f: &File, buf: &mut [u8], offset: Option<u64>) -> Try {
    use std::os::fd::AsRawFd;
    let offset = match offset.map(libc::off_t::try_from) {
        Some(Ok(o)) => o,
        Some(Err(_)) => return Try::Failed,
        None => -1,
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: `iov` describes `buf`, which is valid for writes of `buf.len()` bytes and
        // outlives the call; the descriptor is open (owned by `f`, borrowed for the call).
        let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if let Ok(n) = usize::try_from(n) {
            return Try::Read(n);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => return Try::Cold,
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => return Try::Refused,
            _ => return Try::Failed,
        }
    }
}

/// `posix_fadvise(POSIX_FADV_WILLNEED)` of `len` bytes of `f` from `offset`: the kernel starts
/// reading them into the page cache and returns. Only a hint: a failure changes nothing.
///
/// The kernel reads at most `max(read_ahead_kb, max_sectors_kb)` of the device per call
/// (`force_page_cache_ra`): 8 MiB on this VM's `vda`, whose `read_ahead_kb` is 8192, so a
/// 4 MiB window or piece is asked for whole here; on a device with the default 128 KiB
/// readahead, only its first 1–4 MiB (`max_sectors_kb`). The rest then comes as the reads
/// reach it, as without the hint.
fn will_need(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: fadvise reads no memory of ours; the descriptor is open (owned by `f`).
    unsafe { libc::posix_fadvise(f.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
}

/// Hashes the file at `path` unless it is a regular file of at least `big_from` bytes (the
/// walk does not stat files: the worker learns the size from the open file, and hands a big
/// one back so the parent can send it alone, mapped or split).
///
/// `known_regular`: the walk (or a `stat`) saw a regular file at `path` (see [`open_regular`]):
/// it is opened without blocking and anything else found there now is refused
/// ([`not_regular`]). Otherwise (a path named on the command line or in a manifest) it is
/// opened and read whatever it is, as `sha256sum` does: a FIFO named there is read once a
/// writer opens it.
///
/// `nowait`: whether to try the first read without waiting for the disk; a regular file whose
/// first bytes are not in the page cache then comes back [`Small::Pending`] (see [`NoWait`]).
pub(crate) fn hash_small(
    algo: Algo,
    opener: &mut Opener,
    path: &[u8],
    big_from: u64,
    known_regular: bool,
    nowait: &mut NoWait,
    buf: &mut [u8],
) -> io::Result<Small> {
    let mut f = opener.open_with(path, known_regular)?;
    let meta = f.metadata()?;
    let regular = meta.is_file();
    if known_regular && !regular {
        return Err(not_regular());
    }
    let size = meta.len();
    if regular && size >= big_from {
        return Ok(Small::Big(size));
    }
    let mut h = Hasher::new(algo);
    let mut total = 0u64;
    // Files that say 0 bytes (empty, or in /proc) are read the usual way.
    if regular && size > 0 && nowait.on {
        match read_nowait(&f, buf, None) {
            Try::Cold => {
                will_need(&f, 0, size);
                return Ok(Small::Pending(Pending { file: f, size }));
            }
            Try::Refused => nowait.on = false,
            Try::Failed => {}
            Try::Read(n) => {
                h.update(&buf[..n]);
                total = n as u64;
                if n < buf.len() && total == size {
                    return Ok(Small::Digest(h.finish(), size));
                }
                // Its first pages were cached and a later one is not (DAMON pages files out
                // a region at a time, not whole): ask for the rest at once, and read on.
                if n < buf.len() && total < size {
                    will_need(&f, total, size - total);
                }
            }
        }
    }
    let digest = read_rest(h, total, &mut f, regular.then_some(size), buf)?;
    Ok(Small::Digest(digest, if regular { size } else { 0 }))
}

/// Opens files by name relative to their directory, kept open while the next paths share it.
///
/// A task's paths come in walk order, so runs of them share a directory. `open` of a full path
/// walks every component again (on the toolchain tree, ~10 components deep, the path walk was
/// ~30% of the cost of `open`); `openat` on the directory's descriptor looks up one name.
/// Resolution is the same: the directory is opened by its path (symlinks in it followed, as
/// `open` follows them) and the last component is looked up in it (a symlink followed too).
/// Anything unusual falls back to the plain `open` of the full path, which also gives the error
/// to report when the relative open fails, so errors read exactly as before.
///
/// The descriptor is held only as long as the paths share the directory, and one `Opener` lives
/// for one task (a few ms): a directory renamed or replaced meanwhile is seen by the next task.
#[derive(Debug, Default)]
pub(crate) struct Opener {
    /// The directory part of the last path (without its final `/`), and its descriptor (`None`
    /// when it could not be opened: paths in it go the plain way).
    dir: Option<(Vec<u8>, Option<std::os::fd::OwnedFd>)>,
}

impl Opener {
    pub(crate) fn new() -> Opener {
        Opener::default()
    }

    /// Opens `path` read-only.
    #[cfg(test)]
    pub(crate) fn open(&mut self, path: &[u8]) -> io::Result<File> {
        self.open_with(path, false)
    }

    /// Opens `path` read-only; `nonblock`: with `O_NONBLOCK`, and again without it if a lease
    /// refuses that open (see [`open_regular`]).
    pub(crate) fn open_with(&mut self, path: &[u8], nonblock: bool) -> io::Result<File> {
        let flags = if nonblock { libc::O_NONBLOCK } else { 0 };
        if let Some(f) = self.open_relative(path, flags) {
            return Ok(f);
        }
        if nonblock {
            open_nonblock(path)
        } else {
            open_path(path, flags)
        }
    }

    /// `openat` of the last component of `path` in its (cached) directory, with `flags` added
    /// to `O_RDONLY | O_CLOEXEC`; `None` when that does not apply or fails (the caller then
    /// opens the full path).
    fn open_relative(&mut self, path: &[u8], flags: libc::c_int) -> Option<File> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // A path the kernel refuses whole (PATH_MAX counts the NUL) must fail here too, with the
        // plain open's `File name too long`, though its directory and name are each short
        // enough for `openat`: else a small file at such a path would be hashed while a big one
        // (mapped by its full path), `sha256sum` and `b3sum` all fail on it.
        if path.len() >= libc::PATH_MAX as usize {
            return None;
        }
        let slash = path.iter().rposition(|&c| c == b'/')?;
        let (dir, name) = (&path[..slash], &path[slash + 1..]);
        // NAME_MAX is 255: a longer name fails anyway, the plain way, with its error.
        if name.is_empty() || name.len() > 255 || name.contains(&0) || dir.contains(&0) {
            return None;
        }
        let fresh = !matches!(&self.dir, Some((d, _)) if d.as_slice() == dir);
        if fresh {
            let dir_path = if dir.is_empty() { b"/" as &[u8] } else { dir };
            let fd = std::ffi::CString::new(dir_path).ok().and_then(|c| {
                loop {
                    // SAFETY: `c` is a NUL-terminated string that outlives the call; `open` with
                    // O_PATH creates a descriptor and touches no memory of ours.
                    let fd = unsafe {
                        libc::open(
                            c.as_ptr(),
                            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                        )
                    };
                    if fd >= 0 {
                        // SAFETY: `fd` was just returned by `open` and is owned by nobody else.
                        break Some(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                    if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        break None;
                    }
                }
            });
            self.dir = Some((dir.to_vec(), fd));
        }
        let dirfd = self.dir.as_ref()?.1.as_ref()?.as_raw_fd();
        let mut cname = [0u8; 256];
        cname[..name.len()].copy_from_slice(name);
        loop {
            // SAFETY: `cname` holds `name` (no NUL inside, checked above) followed by a NUL, and
            // outlives the call; `dirfd` is open (owned by `self.dir`).
            let fd = unsafe {
                libc::openat(
                    dirfd,
                    cname.as_ptr().cast(),
                    libc::O_RDONLY | libc::O_CLOEXEC | flags,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` was just returned by `openat` and is owned by nobody else.
                return Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return None;
            }
        }
    }
}

/// Hashes the open file `f` to its end. `size`: its size when it is a regular file; a short
/// read that brings the total to exactly that size is taken as the end. Not any short read:
/// files in /proc and /sys say 0 bytes and come in pieces, so they are read until a `read`
/// returns 0, as coreutils reads everything.
///
/// A file opened with `O_NONBLOCK` ([`open_regular`]) that answers a read with `EAGAIN` (a
/// regular file of /proc or /sys that waits for data, as `trace_pipe` does) is made blocking
/// and read again.
fn hash_open(
    algo: Algo,
    f: &mut (impl Read + std::os::fd::AsFd),
    size: Option<u64>,
    buf: &mut [u8],
) -> io::Result<Digest> {
    read_rest(Hasher::new(algo), 0, f, size, buf)
}

/// [`hash_open`] of a file of which `total` bytes are already in `h`, read from the file's
/// position.
fn read_rest(
    mut h: Hasher,
    mut total: u64,
    f: &mut (impl Read + std::os::fd::AsFd),
    size: Option<u64>,
    buf: &mut [u8],
) -> io::Result<Digest> {
    loop {
        match f.read(buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
                if n < buf.len() && Some(total) == size {
                    return Ok(h.finish());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => make_blocking(f)?,
            Err(e) => return Err(e),
        }
    }
}

/// The error for a path that the walk (or a worker's `fstat`) saw as a regular file and that is
/// something else now: a FIFO, a device, a directory put in its place.
pub(crate) fn not_regular() -> io::Error {
    io::Error::other("not a regular file any more (replaced during the run)")
}

/// Opens `path`, which the walk (or a worker's `fstat`) saw as a regular file, and checks that
/// it still is one; returns it with its size.
///
/// The open is `O_NONBLOCK`: a FIFO put in the file's place after the walk would otherwise block
/// the worker in `open` until some writer came, forever if none does (a device could too). Such
/// an open returns at once, `fstat` tells, and the path fails with [`not_regular`]. The flag
/// is left on: regular files ignore it for reads (ext4, tmpfs, NFS... read and wait for the
/// disk all the same), except some in /proc and /sys that wait for data and then answer
/// `EAGAIN`; the readers here ([`hash_open`], [`blake3_subtree`]) clear it when they meet
/// that and read again. Clearing it on every file would be one more system call per file
/// (`fcntl`), 117,772 of them over the toolchain tree.
///
/// A file under a conflicting lease (a Samba oplock, an NFS delegation, `fcntl(F_SETLEASE)`)
/// refuses an `O_NONBLOCK` open at once with `EWOULDBLOCK` (open(2)), where a plain open waits
/// for the lease break, as `sha256sum`'s does. On that error, if `stat` of the path says it is
/// a regular file, it is opened again without `O_NONBLOCK` and waits the same way
/// ([`open_nonblock`]). Residual race: a FIFO put in the file's place between that `stat` and
/// that open blocks the worker in `open` as before this module opened with `O_NONBLOCK`; it
/// takes a leased file replaced in that window of microseconds.
pub(crate) fn open_regular(path: &[u8]) -> io::Result<(File, u64)> {
    open_regular_meta(path).map(|(f, meta)| (f, meta.len()))
}

/// [`open_regular`], with the whole `fstat`.
fn open_regular_meta(path: &[u8]) -> io::Result<(File, std::fs::Metadata)> {
    let f = open_nonblock(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok((f, meta))
}

/// Which file a BLAKE3 piece was read from, as its `fstat` said when it was opened: every piece
/// of a file opens its path anew, so a file replaced during the run (renamed over, as editors,
/// `rsync` and package managers replace files) could give pieces of two files, merged into the
/// digest of neither. The parent checks that all pieces saw one file of the planned size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
}

/// `open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)`; if a lease refuses it (`EWOULDBLOCK`) and
/// the path is a regular file, a blocking open that waits for the lease break (see
/// [`open_regular`], with its residual race).
fn open_nonblock(path: &[u8]) -> io::Result<File> {
    match open_path(path, libc::O_NONBLOCK) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => match std::fs::metadata(os_path(path)) {
            Ok(m) if m.is_file() => open_path(path, 0),
            _ => Err(e),
        },
        r => r,
    }
}

/// `open(path, O_RDONLY | O_CLOEXEC | flags)`.
fn open_path(path: &[u8], flags: libc::c_int) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(os_path(path))
}

/// Clears `O_NONBLOCK` on `f` (see [`open_regular`]).
fn make_blocking(f: &impl std::os::fd::AsFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_fd().as_raw_fd();
    // SAFETY: `fd` is open (owned by `f`, borrowed for the call); F_GETFL reads its flags and
    // touches no memory of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL only changes the descriptor's status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Hashes the file at `path` through a mapping (see the module docs for why this is sound
/// enough, and what a file changing underneath costs).
///
/// The file is one a worker's `fstat` (or the walk) saw as a regular file: it is opened with
/// [`open_regular`] (a FIFO put in its place fails, it does not block), then that descriptor
/// is mapped (the same open file, not the path again); where it cannot be mapped, it is read
/// through the descriptor.
pub(crate) fn hash_mapped(algo: Algo, path: &[u8], buf: &mut [u8]) -> io::Result<Digest> {
    let (mut f, size) = open_regular(path)?;
    let map = match map(&f) {
        Some(map) => map,
        None => return hash_open(algo, &mut f, Some(size), buf),
    };
    let mut h = Hasher::new(algo);
    // A window whose first page is not in the page cache is asked for whole before it is
    // hashed (and the next one while this one is): else each page fault waits for the disk to
    // bring a readahead window of 128 KiB (see [`NoWait`]). One read of a byte that does not
    // wait tells, without waiting.
    let ask = |at: usize| {
        let mut probe = [0u8; 1];
        if at < map.len() && matches!(read_nowait(&f, &mut probe, Some(at as u64)), Try::Cold) {
            will_need(&f, at as u64, MAP_WINDOW as u64);
        }
    };
    ask(0);
    in_windows(&map, 0..map.len(), |at, window| {
        ask(at + window.len());
        h.update(window);
    });
    Ok(h.finish())
}

/// Gives `map[range]` to `f` a window at a time, with its offset in `map`, each window ending
/// at a multiple of [`MAP_WINDOW`] from the start of the mapping (or at `range.end`), and
/// releases each window's pages once `f` has read them. `map` is a whole read-only file
/// mapping; `range` lies inside it.
fn in_windows(map: &[u8], range: std::ops::Range<usize>, mut f: impl FnMut(usize, &[u8])) {
    debug_assert!(range.start <= range.end && range.end <= map.len());
    let mut at = range.start;
    while at < range.end {
        let end = (at / MAP_WINDOW + 1)
            .saturating_mul(MAP_WINDOW)
            .min(range.end);
        f(at, &map[at..end]);
        // From the window's MAP_WINDOW boundary, which is page-aligned (the mapping is): pages
        // before `at` that it drops are faulted back in if anything reads them again.
        release(&map[at / MAP_WINDOW * MAP_WINDOW..end]);
        at = end;
    }
}

/// Bytes of a mapped file hashed between two [`release`]s: a worker's resident memory stays
/// within this much of a mapped file (else hashing a 150 MB file made the worker's RSS 150 MB).
const MAP_WINDOW: usize = 4 << 20;

/// Drops the pages of `window`, a page-aligned part of a read-only file mapping, from this
/// process's page tables (they stay in the page cache). Only the resident size changes: if the
/// window is read again, the pages are faulted back in from the file.
fn release(window: &[u8]) {
    // SAFETY: `window` lies inside a live read-only MAP_SHARED file mapping and starts on a page
    // boundary (the mapping does, and windows start at multiples of MAP_WINDOW from it). On such a
    // mapping MADV_DONTNEED only unmaps the pages; the memory stays valid and reads the same
    // file bytes. A failure (it cannot fail on a valid range) would only leave pages resident.
    unsafe {
        libc::madvise(
            window.as_ptr().cast_mut().cast(),
            window.len(),
            libc::MADV_DONTNEED,
        );
    }
}

/// Maps the open regular file `f` whole; `None` when that fails or the file is empty: the caller
/// then reads it, as `sha256sum` would.
///
/// Any failure, not only "not a regular file": files that `read` serves but `mmap` refuses
/// exist (`/sys/kernel/btf/vmlinux`, 5 MB: `Permission denied`; anything past the 128 TiB of
/// address space, as a sparse file on tmpfs can be: `Cannot allocate memory`).
///
/// The descriptor itself is mapped (`memmap2`), not a path: an earlier version mapped
/// `/proc/self/fd/N` through `shmpool::MappedFile::open` (which takes a path), which cost an
/// `open`, an `fstat` and a `madvise` more per big file, and where /proc is not mounted (a
/// chroot, a minimal container) silently fell back to reading every big file.
fn map(f: &File) -> Option<memmap2::Mmap> {
    // SAFETY: the file may change while mapped; the module docs say what that costs (a wrong
    // digest, or SIGBUS killing this worker, which the pool reports) and why it is accepted.
    match unsafe { memmap2::Mmap::map(f) } {
        Ok(m) if m.is_empty() => None,
        Ok(m) => Some(m),
        Err(_) => None,
    }
}

/// The chaining value of the BLAKE3 subtree `offset .. offset + len` of the file at `path`.
///
/// `offset .. offset + len` must be one leaf of [`plan`] for the file's length; a file that
/// ends before `offset + len` is an error (it changed while it was hashed). Also returns which
/// file was read ([`FileId`]), for the parent to check.
pub(crate) fn blake3_subtree(
    path: &[u8],
    offset: u64,
    len: u64,
    buf: &mut [u8],
) -> io::Result<(ChainingValue, FileId)> {
    let changed = || io::Error::other("file changed while hashing");
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    // Read, not mapped: with the page-aligned buffer, reading the pieces took less CPU than
    // mapping them (16 alternating runs over the toolchain tree, 14 better, median 2.03 vs
    // 2.10 s): the mapping's page faults and its unmapping cost more than the copy.
    let (f, meta) = open_regular_meta(path)?;
    let id = {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
        }
    };
    let mut done = 0u64;
    // The first read does not wait for the disk: if it cannot give all it asked for, the rest
    // of the piece is asked for at once (`POSIX_FADV_WILLNEED`), so the disk reads ahead of
    // the hash instead of a readahead window at a time (see [`NoWait`]).
    let first = usize::try_from(len.min(buf.len() as u64)).unwrap_or(buf.len());
    match read_nowait(&f, &mut buf[..first], Some(offset)) {
        Try::Read(n) => {
            h.update(&buf[..n]);
            done = n as u64;
            if n < first {
                will_need(&f, offset + done, len - done);
            }
        }
        Try::Cold => will_need(&f, offset, len),
        Try::Refused | Try::Failed => {}
    }
    while done < len {
        let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        match f.read_at(&mut buf[..want], offset + done) {
            Ok(0) => return Err(changed()),
            Ok(n) => {
                h.update(&buf[..n]);
                done += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => make_blocking(&f)?,
            Err(e) => return Err(e),
        }
    }
    Ok((h.finalize_non_root(), id))
}

/// The leaves `(offset, len)`, in file order, of BLAKE3's tree over `total` bytes, split until
/// each leaf is at most `piece` bytes. Every leaf is a whole aligned subtree (the splits are
/// `hazmat::left_subtree_len`), so its chaining value can be computed on its own.
/// `piece` must be at least one BLAKE3 chunk; a file of at most `piece` bytes is one leaf (hash
/// it whole instead).
pub(crate) fn plan(total: u64, piece: u64) -> Vec<(u64, u64)> {
    debug_assert!(piece >= blake3::CHUNK_LEN as u64);
    let mut out = Vec::new();
    fn walk(offset: u64, len: u64, piece: u64, out: &mut Vec<(u64, u64)>) {
        if len <= piece {
            out.push((offset, len));
            return;
        }
        let left = hazmat::left_subtree_len(len);
        walk(offset, left, piece, out);
        walk(offset + left, len - left, piece, out);
    }
    walk(0, total, piece, &mut out);
    out
}

/// The BLAKE3 hash of `total` bytes from the chaining values of the leaves of
/// `plan(total, piece)`, in order. `None` if `cvs` does not have one value per leaf, or if the
/// plan has a single leaf (which has no chaining value to merge: hash such a file whole).
pub(crate) fn merge(total: u64, piece: u64, cvs: &[ChainingValue]) -> Option<[u8; 32]> {
    fn node(
        len: u64,
        piece: u64,
        cvs: &[ChainingValue],
        next: &mut usize,
    ) -> Option<ChainingValue> {
        if len <= piece {
            let cv = *cvs.get(*next)?;
            *next += 1;
            return Some(cv);
        }
        let left = hazmat::left_subtree_len(len);
        let l = node(left, piece, cvs, next)?;
        let r = node(len - left, piece, cvs, next)?;
        Some(hazmat::merge_subtrees_non_root(&l, &r, Mode::Hash))
    }
    if total <= piece {
        return None;
    }
    let left = hazmat::left_subtree_len(total);
    let mut next = 0;
    let l = node(left, piece, cvs, &mut next)?;
    let r = node(total - left, piece, cvs, &mut next)?;
    if next != cvs.len() {
        return None;
    }
    Some(*hazmat::merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
}

/// A path from its raw bytes.
pub(crate) fn os_path(path: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes.
    fn data(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn split_hash(input: &[u8], piece: u64) -> [u8; 32] {
        let leaves = plan(input.len() as u64, piece);
        let cvs: Vec<_> = leaves
            .iter()
            .map(|&(o, l)| {
                let mut h = blake3::Hasher::new();
                h.set_input_offset(o);
                h.update(&input[o as usize..(o + l) as usize]);
                h.finalize_non_root()
            })
            .collect();
        merge(input.len() as u64, piece, &cvs).unwrap()
    }

    /// What `hash_small` answered, comparable: a file set aside (`Small::Pending`) is hashed.
    #[derive(Debug, PartialEq)]
    pub(super) enum Got {
        Digest(Digest, u64),
        Big(u64),
    }

    pub(super) fn got(s: io::Result<Small>, algo: Algo) -> Got {
        match s.unwrap() {
            Small::Digest(d, n) => Got::Digest(d, n),
            Small::Big(n) => Got::Big(n),
            Small::Pending(p) => {
                let (d, n) = p.finish(algo, &mut vec![0u8; 4096]).unwrap();
                Got::Digest(d, n)
            }
        }
    }

    #[test]
    fn read_buffers_are_page_aligned_whatever_malloc_returns() {
        // Allocations of every size around it shift where malloc puts the next one.
        let mut keep = Vec::new();
        for n in [1usize, 17, 4000, 70_000, 300_000] {
            keep.push(vec![0u8; n]);
            let mut b = ReadBuf::new();
            let buf = b.get();
            assert_eq!(buf.len(), READ_BUF);
            assert_eq!(buf.as_ptr() as usize % READ_ALIGN, 0);
            buf[READ_BUF - 1] = 1;
        }
    }

    #[test]
    fn split_blake3_equals_the_plain_hash_at_every_awkward_length() {
        let input = data(70_000);
        for piece in [1024u64, 2048, 4096, 8192] {
            for len in [
                1025usize, 2047, 2048, 2049, 4096, 5000, 8193, 65_536, 70_000,
            ] {
                if len as u64 <= piece {
                    continue;
                }
                assert_eq!(
                    split_hash(&input[..len], piece),
                    *blake3::hash(&input[..len]).as_bytes(),
                    "len {len} piece {piece}"
                );
            }
        }
    }

    #[test]
    fn plan_leaves_cover_the_input_in_order_and_respect_the_piece() {
        let total = 70_000_000u64;
        let piece = 4 << 20;
        let leaves = plan(total, piece);
        let mut at = 0;
        for &(o, l) in &leaves {
            assert_eq!(o, at);
            assert!(l <= piece && l > 0);
            // Aligned: a subtree may start at `o` with this length.
            assert!(hazmat::max_subtree_len(o).is_none_or(|m| l <= m));
            at += l;
        }
        assert_eq!(at, total);
        assert!(leaves.len() >= 17);
    }

    #[test]
    fn merge_refuses_the_wrong_number_of_values() {
        let cv = [0u8; 32];
        assert_eq!(merge(4096, 1024, &[cv; 3]), None);
        assert_eq!(merge(4096, 1024, &[cv; 5]), None);
        assert!(merge(4096, 1024, &[cv; 4]).is_some());
        assert_eq!(merge(1000, 1024, &[cv]), None);
    }

    #[test]
    fn read_mapped_and_split_files_give_the_same_digests() {
        let path = std::env::temp_dir().join(format!("shmpool-digest-{}", std::process::id()));
        let p = path.as_os_str().as_encoded_bytes().to_vec();
        let mut buf = vec![0u8; 4096];
        for len in [0usize, 1, 4096, 4097, 3 * 4096 + 5, 100_000] {
            let input = data(len);
            std::fs::write(&path, &input).unwrap();
            for algo in [Algo::Sha256, Algo::Sha512, Algo::Blake3] {
                let want = hash_reader(algo, &mut &input[..], &mut buf).unwrap();
                assert_eq!(
                    hash_file(algo, &p, Some(len as u64), &mut buf).unwrap(),
                    want
                );
                assert_eq!(hash_file(algo, &p, None, &mut buf).unwrap(), want);
                // A size that is wrong (the file grew, or /proc says 0): read to the end.
                assert_eq!(hash_file(algo, &p, Some(0), &mut buf).unwrap(), want);
                assert_eq!(hash_mapped(algo, &p, &mut buf).unwrap(), want);
                let mut opener = Opener::new();
                let mut small = |big_from, buf: &mut [u8]| {
                    let s = hash_small(
                        algo,
                        &mut opener,
                        &p,
                        big_from,
                        true,
                        &mut NoWait::new(),
                        buf,
                    );
                    got(s, algo)
                };
                assert_eq!(
                    small(len as u64 + 1, &mut buf),
                    Got::Digest(want, len as u64)
                );
                assert_eq!(small(len as u64, &mut buf), Got::Big(len as u64));
            }
            if len as u64 > 1024 {
                let cvs: Vec<_> = plan(len as u64, 1024)
                    .into_iter()
                    .map(|(o, l)| blake3_subtree(&p, o, l, &mut buf).unwrap().0)
                    .collect();
                assert_eq!(
                    merge(len as u64, 1024, &cvs).unwrap(),
                    *blake3::hash(&input).as_bytes()
                );
            }
        }
        // Pieces bigger than a mapping window, and pieces starting between window boundaries
        // (a very big file's pieces are bigger than `BLAKE3_PIECE`, see `engine::blake3_piece`).
        let input = data((9 << 20) + 5);
        std::fs::write(&path, &input).unwrap();
        for piece in [1u64 << 20, 3 << 20, 8 << 20] {
            let cvs: Vec<_> = plan(input.len() as u64, piece)
                .into_iter()
                .map(|(o, l)| blake3_subtree(&p, o, l, &mut buf).unwrap().0)
                .collect();
            assert_eq!(
                merge(input.len() as u64, piece, &cvs).unwrap(),
                *blake3::hash(&input).as_bytes(),
                "piece {piece}"
            );
        }
        let mut opener = Opener::new();
        assert_eq!(
            got(
                hash_small(
                    Algo::Sha256,
                    &mut opener,
                    &p,
                    u64::MAX,
                    true,
                    &mut NoWait::new(),
                    &mut buf
                ),
                Algo::Sha256
            ),
            Got::Digest(
                hash_mapped(Algo::Sha256, &p, &mut buf).unwrap(),
                input.len() as u64
            )
        );
        // A piece past the end of the file: the file changed.
        std::fs::write(&path, data(2048)).unwrap();
        let e = blake3_subtree(&p, 2048, 1024, &mut buf).unwrap_err();
        assert_eq!(e.to_string(), "file changed while hashing");
        std::fs::remove_file(&path).unwrap();
        let e = hash_mapped(Algo::Sha256, &p, &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn a_file_mmap_refuses_is_read_instead() {
        // 200 TiB, sparse, on tmpfs (which takes files that big): past the 128 TiB of address
        // space, so `mmap` fails (`Cannot allocate memory`), where `read` serves it.
        let path = std::path::Path::new("/dev/shm")
            .join(format!("shmpool-digest-huge-{}", std::process::id()));
        let total = 200u64 << 40;
        File::create(&path).unwrap().set_len(total).unwrap();
        let p = path.as_os_str().as_encoded_bytes().to_vec();
        let mut buf = vec![0u8; 4096];
        // Its last BLAKE3 chunk (a whole subtree on its own), all zeros.
        let offset = total - blake3::CHUNK_LEN as u64;
        let mut h = blake3::Hasher::new();
        h.set_input_offset(offset);
        h.update(&[0; blake3::CHUNK_LEN]);
        let got = blake3_subtree(&p, offset, blake3::CHUNK_LEN as u64, &mut buf);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got.unwrap().0, h.finalize_non_root());
    }

    #[test]
    fn each_algorithm_matches_its_reference_digest() {
        let mut buf = vec![0u8; 7];
        let input = data(100);
        let mut d = |a| hash_reader(a, &mut &input[..], &mut buf).unwrap();
        assert_eq!(
            d(Algo::Sha256).as_slice(),
            &sha2::Sha256::digest(&input)[..]
        );
        assert_eq!(
            d(Algo::Sha512).as_slice(),
            &sha2::Sha512::digest(&input)[..]
        );
        assert_eq!(d(Algo::Blake3).as_slice(), blake3::hash(&input).as_bytes());
        // The empty input, against the well-known values.
        let mut empty: &[u8] = &[];
        let mut hex = Vec::new();
        super::super::format::push_hex(
            &mut hex,
            hash_reader(Algo::Sha256, &mut empty, &mut buf)
                .unwrap()
                .as_slice(),
        );
        assert_eq!(
            hex,
            b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_opener_opens_by_directory_and_reports_errors_as_open_does() {
        use std::io::Read as _;
        let root = std::env::temp_dir().join(format!("shmpool-opener-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/one"), b"1").unwrap();
        std::fs::write(root.join("a/b/two"), b"2").unwrap();
        std::fs::write(root.join("a/three"), b"3").unwrap();
        std::os::unix::fs::symlink("b", root.join("a/link")).unwrap();
        std::os::unix::fs::symlink("one", root.join("a/b/to-one")).unwrap();
        let base = root.as_os_str().as_encoded_bytes().to_vec();
        let path = |rel: &str| [&base[..], b"/", rel.as_bytes()].concat();
        let read = |o: &mut Opener, rel: &str| {
            let mut s = String::new();
            o.open(&path(rel))?.read_to_string(&mut s)?;
            io::Result::Ok(s)
        };
        let mut o = Opener::new();
        assert_eq!(read(&mut o, "a/b/one").unwrap(), "1");
        assert_eq!(read(&mut o, "a/b/two").unwrap(), "2");
        // Symlinks are followed, in the directory part and in the last name, as `open` does.
        assert_eq!(read(&mut o, "a/link/two").unwrap(), "2");
        assert_eq!(read(&mut o, "a/b/to-one").unwrap(), "1");
        assert_eq!(read(&mut o, "a//three").unwrap(), "3");
        assert_eq!(read(&mut o, "a/b//one").unwrap(), "1");
        // Errors are those of the plain open.
        let err = |o: &mut Opener, rel: &str| read(o, rel).unwrap_err().raw_os_error();
        assert_eq!(err(&mut o, "a/b/missing"), Some(libc::ENOENT));
        assert_eq!(err(&mut o, "a/missing/one"), Some(libc::ENOENT));
        assert_eq!(err(&mut o, "a/three/x"), Some(libc::ENOTDIR));
        assert_eq!(err(&mut o, "a/b/one/"), Some(libc::ENOTDIR));
        // A directory replaced under a cached descriptor: a new opener (a new task) sees the new
        // one.
        assert_eq!(read(&mut o, "a/b/one").unwrap(), "1");
        std::fs::rename(root.join("a/b"), root.join("a/old")).unwrap();
        std::fs::create_dir(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/one"), b"new").unwrap();
        assert_eq!(read(&mut Opener::new(), "a/b/one").unwrap(), "new");
        // A path longer than PATH_MAX whose directory is not: the plain open's error, not the
        // file (a big file at that path, mapped by its full path, could not be hashed either).
        let level = "d".repeat(250);
        let mut deep = root.join("a");
        while deep.as_os_str().len() + 1 + level.len() <= 3900 {
            deep.push(&level);
        }
        // The directory's path is 3,900 bytes, the file's 4,151: past PATH_MAX (4,096).
        deep.push("e".repeat(3900 - deep.as_os_str().len() - 1));
        std::fs::create_dir_all(&deep).unwrap();
        let name = "f".repeat(250);
        let dir = std::ffi::CString::new(deep.as_os_str().as_encoded_bytes()).unwrap();
        let cname = std::ffi::CString::new(name.as_str()).unwrap();
        // SAFETY: both strings are NUL-terminated and outlive the calls; the descriptors are
        // closed here and used by nothing else.
        unsafe {
            let dfd = libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
            assert!(dfd >= 0);
            let fd = libc::openat(dfd, cname.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
            assert!(fd >= 0);
            libc::close(fd);
            libc::close(dfd);
        }
        let long = [deep.as_os_str().as_encoded_bytes(), b"/", name.as_bytes()].concat();
        assert!(long.len() >= libc::PATH_MAX as usize);
        assert_eq!(
            Opener::new().open(&long).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        // An absolute path in the root directory, and a name without a directory.
        assert!(Opener::new().open(b"/").is_ok());
        assert_eq!(
            Opener::new()
                .open(b"no-such-file-here")
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn the_open_descriptor_is_mapped_not_its_path_again() {
        let path = std::env::temp_dir().join(format!("shmpool-digest-map-{}", std::process::id()));
        let p = path.as_os_str().as_encoded_bytes().to_vec();
        let first: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &first).unwrap();
        let (f, size) = open_regular(&p).unwrap();
        assert_eq!(size, first.len() as u64);
        // The path now names another file: the mapping still shows the one that was opened.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"another file").unwrap();
        let m = map(&f).expect("a regular file maps");
        assert_eq!(&m[..], &first[..]);
        std::fs::remove_file(&path).unwrap();
        // An empty file is not mapped (the caller reads it).
        std::fs::write(&path, b"").unwrap();
        let (f, _) = open_regular(&p).unwrap();
        assert!(map(&f).is_none());
        std::fs::remove_file(&path).unwrap();
    }
}

#[cfg(test)]
mod fifo_tests {
    use super::tests::{Got, got};
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A FIFO at a fresh path, removed when the guard drops, on a failed test too.
    struct Fifo(std::path::PathBuf);

    impl Drop for Fifo {
        fn drop(&mut self) {
            // A thread of a failed test may still be blocked opening or reading the FIFO: an
            // `O_RDWR` open never blocks (Linux), lets a blocked `open` of either side return,
            // and its close ends a blocked `read` (no writer left: end of file).
            use std::os::unix::fs::OpenOptionsExt;
            drop(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&self.0),
            );
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A FIFO at a fresh path (its guard); its path as bytes.
    fn fifo(name: &str) -> (Fifo, Vec<u8>) {
        let path =
            std::env::temp_dir().join(format!("shmpool-digest-fifo-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let p = path.as_os_str().as_encoded_bytes().to_vec();
        (Fifo(path), p)
    }

    /// Runs `f` on another thread and returns its result; a call still blocked after 120 s (it
    /// would block forever: nobody writes to the FIFO) fails the test instead of hanging it.
    fn unblocked<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(120))
            .expect("blocked opening or reading a FIFO")
    }

    #[test]
    fn a_fifo_where_a_regular_file_was_fails_at_once_instead_of_blocking() {
        let (fifo, p) = fifo("swapped");
        let want = not_regular().to_string();
        let q = p.clone();
        let errors = unblocked(move || {
            let mut buf = vec![0u8; 4096];
            let mut opener = Opener::new();
            [
                hash_small(
                    Algo::Sha256,
                    &mut opener,
                    &q,
                    u64::MAX,
                    true,
                    &mut NoWait::new(),
                    &mut buf,
                )
                .map(|_| ())
                .unwrap_err(),
                hash_mapped(Algo::Sha512, &q, &mut buf)
                    .map(|_| ())
                    .unwrap_err(),
                blake3_subtree(&q, 0, 8192, &mut buf)
                    .map(|_| ())
                    .unwrap_err(),
            ]
            .map(|e| e.to_string())
        });
        assert_eq!(errors, [want.clone(), want.clone(), want]);
        drop(fifo);
    }

    #[test]
    fn a_fifo_named_by_the_user_is_still_read_to_its_end() {
        let (fifo, p) = fifo("named");
        let writer = {
            let path = fifo.0.clone();
            std::thread::spawn(move || {
                // Blocks until the reader below opens the FIFO.
                let mut w = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                std::io::Write::write_all(&mut w, b"abc").unwrap();
            })
        };
        let hashed = unblocked(move || {
            let mut buf = vec![0u8; 4096];
            let s = hash_small(
                Algo::Sha256,
                &mut Opener::new(),
                &p,
                u64::MAX,
                false,
                &mut NoWait::new(),
                &mut buf,
            );
            got(s, Algo::Sha256)
        });
        writer.join().unwrap();
        let want = Digest::new(&sha2::Sha256::digest(b"abc")).unwrap();
        assert_eq!(hashed, Got::Digest(want, 0));
        drop(fifo);
    }

    /// The read end of a FIFO opened as `open_regular` opens files, and its writer, which
    /// writes its data and closes only once the reader has been made blocking: until then
    /// every read of the empty FIFO says EAGAIN (as some /proc and /sys files do).
    struct LateWriter {
        reader: File,
        writer: Option<(File, &'static [u8])>,
    }

    impl LateWriter {
        fn blocking(&self) -> bool {
            use std::os::fd::AsRawFd;
            // SAFETY: F_GETFL reads the flags of a descriptor `self.reader` owns.
            let flags = unsafe { libc::fcntl(self.reader.as_raw_fd(), libc::F_GETFL) };
            assert!(flags >= 0);
            flags & libc::O_NONBLOCK == 0
        }
    }

    impl Read for LateWriter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let blocking = self.blocking();
            if let Some((mut w, data)) = self.writer.take_if(|_| blocking) {
                std::io::Write::write_all(&mut w, data)?;
            }
            self.reader.read(buf)
        }
    }

    impl std::os::fd::AsFd for LateWriter {
        fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            self.reader.as_fd()
        }
    }

    /// Takes a write lease on a new file, runs `open` on it (on another thread: it may wait for
    /// the lease break) once the lease is held, and ends the lease when the kernel says that an
    /// open broke it (SIGIO, which the lease holder gets); returns what `open` returned.
    fn under_lease(name: &str, open: fn(&[u8]) -> io::Result<File>) -> io::Result<File> {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!(
            "shmpool-digest-lease-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, b"leased").unwrap();
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let path = Remove(path);
        let (mut broke, on_sigio) = std::os::unix::net::UnixStream::pair().unwrap();
        on_sigio.set_nonblocking(true).unwrap();
        let id = signal_hook::low_level::pipe::register(libc::SIGIO, on_sigio).unwrap();
        let holder = File::open(&path.0).unwrap();
        // SAFETY: F_SETLEASE on a descriptor `holder` owns; no memory of ours is touched.
        let r = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
        assert_eq!(r, 0, "F_SETLEASE: {}", io::Error::last_os_error());
        let p = path.0.as_os_str().as_encoded_bytes().to_vec();
        let opening = std::thread::spawn(move || open(&p));
        // A bound only so that a missing break fails instead of hanging.
        broke
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut byte = [0u8];
        io::Read::read_exact(&mut broke, &mut byte).expect("no lease break (SIGIO)");
        // SAFETY: as above; F_UNLCK ends the lease, and an open waiting for it goes on.
        let r = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        assert_eq!(r, 0, "F_SETLEASE F_UNLCK: {}", io::Error::last_os_error());
        let got = unblocked(move || opening.join().unwrap());
        signal_hook::low_level::unregister(id);
        got
    }

    #[test]
    fn a_file_under_a_lease_is_opened_once_the_lease_is_broken() {
        // An O_NONBLOCK open of a leased file fails with EWOULDBLOCK instead of waiting for the
        // lease break: the file was reported as failed. Now it waits, as sha256sum does.
        let f = under_lease("regular", |p| open_regular(p).map(|(f, _)| f)).unwrap();
        assert_eq!(std::io::read_to_string(f).unwrap(), "leased");
        let f = under_lease("opener", |p| Opener::new().open_with(p, true)).unwrap();
        assert_eq!(std::io::read_to_string(f).unwrap(), "leased");
    }

    #[test]
    fn a_non_blocking_file_that_says_eagain_is_made_blocking_and_read() {
        // No second thread and no pause: the data comes only after `make_blocking`, so the
        // digest proves that the EAGAIN branch ran (without it the EAGAIN is the error).
        let (fifo, p) = fifo("eagain");
        let reader = open_path(&p, libc::O_NONBLOCK).unwrap();
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo.0)
            .unwrap();
        let mut late = LateWriter {
            reader,
            writer: Some((writer, b"late")),
        };
        assert!(!late.blocking());
        let mut buf = vec![0u8; 4096];
        let got = hash_open(Algo::Blake3, &mut late, None, &mut buf).unwrap();
        assert!(late.writer.is_none() && late.blocking());
        assert_eq!(got.as_slice(), blake3::hash(b"late").as_bytes());
        drop(fifo);
    }
}

/// Files whose pages are not in the page cache, for the tests of the reads that do not wait.
#[cfg(test)]
pub(crate) mod cold {
    use std::path::{Path, PathBuf};

    /// A fresh directory for such files, removed when the guard drops (a failed test too).
    ///
    /// Beside the test binary, in the build directory: on the disk of the checkout, where
    /// `POSIX_FADV_DONTNEED` drops clean pages. `/tmp` may be tmpfs, whose pages it cannot drop.
    pub(crate) struct Dir(pub(crate) PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn dir(name: &str) -> Dir {
        let exe = std::env::current_exe().unwrap();
        let d = exe
            .parent()
            .unwrap()
            .join(format!("shmpool-cold-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Pages of the file at `path` in the page cache, and its pages in all: `mincore` over a
    /// fresh mapping of it, which faults nothing in and starts no reading (a read that does
    /// not wait would: the file could be back in the cache before the test reads it).
    pub(crate) fn resident(path: &Path) -> (usize, usize) {
        let f = std::fs::File::open(path).unwrap();
        // SAFETY: the test's own file, which nothing writes or truncates while it is mapped;
        // the mapping is only passed to `mincore`, never read.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        // SAFETY: sysconf with a valid name.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mut vec = vec![0u8; map.len().div_ceil(page)];
        // SAFETY: `map` is a live mapping of `map.len()` bytes starting at a page boundary, and
        // `vec` has one byte for each of its pages, as mincore writes.
        let r =
            unsafe { libc::mincore(map.as_ptr().cast_mut().cast(), map.len(), vec.as_mut_ptr()) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        (vec.iter().filter(|&&b| b & 1 == 1).count(), vec.len())
    }

    /// Drops the pages of the file at `path` from the page cache (written back first, with
    /// the bench's `--cold` eviction), and checks that they are gone.
    pub(crate) fn evict(path: &Path) {
        std::fs::File::open(path).unwrap().sync_all().unwrap();
        let skipped = crate::hash_bench::evict(&[path.as_os_str().as_encoded_bytes().to_vec()]);
        assert_eq!(skipped, 0, "{}", path.display());
        assert_eq!(
            resident(path).0,
            0,
            "{}: its pages stayed in the page cache (this test needs a filesystem whose clean \
             pages POSIX_FADV_DONTNEED drops, as ext4's and xfs's are)",
            path.display()
        );
    }
}

#[cfg(test)]
mod cold_tests {
    use super::tests::{Got, got};
    use super::*;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// Whether the filesystem of `path` takes reads that do not wait (asked of its first
    /// byte, in the page cache or not).
    fn takes_nowait(path: &std::path::Path) -> bool {
        let f = File::open(path).unwrap();
        !matches!(read_nowait(&f, &mut [0u8; 1], Some(0)), Try::Refused)
    }

    /// `hash_small` of the regular file at `p`, whatever its size.
    fn small(algo: Algo, p: &[u8], nowait: &mut NoWait, buf: &mut [u8]) -> io::Result<Small> {
        hash_small(algo, &mut Opener::new(), p, u64::MAX, true, nowait, buf)
    }

    #[test]
    fn a_small_file_not_in_the_page_cache_is_set_aside_and_hashed_later() {
        let dir = cold::dir("small");
        let path = dir.0.join("f");
        let p = path.as_os_str().as_encoded_bytes().to_vec();
        let mut buf = vec![0u8; 4096];
        // One read, and more than one, for each algorithm.
        for len in [3000usize, 100_000] {
            let input = data(len, len as u8);
            std::fs::write(&path, &input).unwrap();
            for algo in [Algo::Sha256, Algo::Sha512, Algo::Blake3] {
                let want = hash_reader(algo, &mut &input[..], &mut buf).unwrap();
                let mut nowait = NoWait::new();
                if !takes_nowait(&path) {
                    // The build directory is on a filesystem that refuses such reads (overlayfs,
                    // as in a container, and tmpfs did here, Linux 6.18): a cold file is read
                    // the usual way, and the task stops trying.
                    cold::evict(&path);
                    let s = small(algo, &p, &mut nowait, &mut buf);
                    assert!(matches!(s, Ok(Small::Digest(..))), "{s:?}");
                    assert_eq!(got(s, algo), Got::Digest(want, len as u64));
                    assert!(!nowait.on);
                    continue;
                }
                // The read that does not wait starts the disk's read itself, and on a fast
                // (virtual) disk that read can end before the call looks at the page: a
                // preempted test thread (two busy loops on the two cores) got the bytes at
                // once, in about one call of fifty. It is a read as good as any, answered
                // `Small::Digest`; evicted again and retried, such a file must come back set
                // aside at least once in ten.
                let pending = (0..10)
                    .find_map(|_| {
                        cold::evict(&path);
                        match small(algo, &p, &mut nowait, &mut buf) {
                            Ok(Small::Pending(pending)) => Some(pending),
                            s => {
                                assert_eq!(got(s, algo), Got::Digest(want, len as u64));
                                None
                            }
                        }
                    })
                    .expect("a cold file was never set aside");
                assert_eq!(pending.finish(algo, &mut buf).unwrap(), (want, len as u64));
                // A warm file is hashed at once; so is a cold one when not trying.
                let s = small(algo, &p, &mut nowait, &mut buf);
                assert!(matches!(s, Ok(Small::Digest(..))), "{s:?}");
                assert_eq!(got(s, algo), Got::Digest(want, len as u64));
                cold::evict(&path);
                let s = small(algo, &p, &mut NoWait::off(), &mut buf);
                assert!(matches!(s, Ok(Small::Digest(..))), "{s:?}");
                assert_eq!(got(s, algo), Got::Digest(want, len as u64));
            }
        }
    }

    #[test]
    fn a_read_that_does_not_wait_never_fails_a_file_itself() {
        // An offset `off_t` cannot hold (as a piece past 2 GiB on a 32-bit target): the plain
        // read after it tells, as before.
        let f = File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(matches!(
            read_nowait(&f, &mut [0u8; 1], Some(u64::MAX)),
            Try::Failed
        ));
        assert!(matches!(
            read_nowait(&f, &mut [0u8; 1], Some(0)),
            Try::Read(1) | Try::Cold | Try::Refused
        ));
    }

    #[test]
    fn a_file_cached_in_part_is_read_on_and_hashed_at_once() {
        use std::os::fd::AsRawFd;
        let dir = cold::dir("part");
        let path = dir.0.join("f");
        let p = path.as_os_str().as_encoded_bytes().to_vec();
        let input = data(100_000, 3);
        std::fs::write(&path, &input).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        for algo in [Algo::Sha256, Algo::Blake3] {
            let want = hash_reader(algo, &mut &input[..], &mut buf).unwrap();
            cold::evict(&path);
            // Its first page back in the cache, and only that one (no readahead).
            let f = File::open(&path).unwrap();
            // SAFETY: fadvise reads no memory of ours; the descriptor is open (owned by `f`).
            let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
            assert_eq!(r, 0);
            f.read_at(&mut [0u8; 4096], 0).unwrap();
            let (cached, pages) = cold::resident(&path);
            assert!(
                cached >= 1 && cached < pages,
                "{cached} of {pages} pages cached"
            );
            let mut nowait = NoWait::new();
            let s = small(algo, &p, &mut nowait, &mut buf);
            // The read that does not wait gives the cached part (or, where the filesystem
            // refuses such reads, nothing): the rest is read on, not set aside.
            assert!(matches!(s, Ok(Small::Digest(..))), "{s:?}");
            assert_eq!(got(s, algo), Got::Digest(want, input.len() as u64));
        }
    }

    #[test]
    fn cold_pieces_and_cold_mapped_files_give_the_same_digests() {
        let dir = cold::dir("big");
        let path = dir.0.join("f");
        let p = path.as_os_str().as_encoded_bytes().to_vec();
        // Over two mapping windows, so the mapped hash asks for a window ahead.
        let input = data(2 * MAP_WINDOW + 12_345, 7);
        std::fs::write(&path, &input).unwrap();
        let mut buf = vec![0u8; READ_BUF];
        for algo in [Algo::Sha256, Algo::Sha512] {
            let want = hash_reader(algo, &mut &input[..], &mut buf).unwrap();
            cold::evict(&path);
            assert_eq!(hash_mapped(algo, &p, &mut buf).unwrap(), want);
        }
        let piece = 1 << 20;
        let total = input.len() as u64;
        cold::evict(&path);
        let cvs: Vec<_> = plan(total, piece)
            .into_iter()
            .map(|(o, l)| blake3_subtree(&p, o, l, &mut buf).unwrap().0)
            .collect();
        assert_eq!(
            merge(total, piece, &cvs).unwrap(),
            *blake3::hash(&input).as_bytes()
        );
    }
}
