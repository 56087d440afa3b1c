//! `imap_reader`: a stream read by the parent straight into a small ring of shared buffers and
//! processed in place by the workers.
//!
//! The ring has at most `2 × processes` buffers of `chunk_bytes` each, made as they are first
//! needed. A buffer is free, being filled by the parent (`read` into its shared mapping: the
//! kernel's copy, none of ours), or lent to one chunk task. It goes back to the free list only
//! when that chunk's result has been received, so the parent never writes a buffer a worker may
//! still read. Resident memory is therefore at most the ring, whatever the stream's length.

use std::io::{ErrorKind, Read};

use crate::encoding::payload::Payload;
use crate::encoding::task::{CallFn, assert_task_fn};
use crate::error::{Error, Result};
use crate::pool::Pool;

use crate::pool::window::Window;

use super::chunks::{Arrived, chunk_task, completion};
use super::worker::call_chunk;
use super::{ChunkArg, Span};
use crate::shm::segment::Segment;

/// Lazy, ordered iterator of chunk results over a stream, returned by [`Pool::imap_reader`].
///
/// Made while the pool is open, it runs to its end even if the pool is closed meanwhile (as
/// [`IMap`](crate::IMap) does).
///
/// # Examples
///
/// ```
/// let pool = shmpool::Pool::new(2)?;
/// let data = vec![b'x'; 10_000];
/// let lens: Vec<usize> = pool
///     .imap_reader(&data[..], 4096, |s: &[u8]| s.len())
///     .collect::<Result<_, _>>()?;
/// assert_eq!(lens, [4096, 4096, 1808]);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// Dropping it unused is a warning (`#[must_use]`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let pool = shmpool::Pool::new(1).unwrap();
/// pool.imap_reader(&b"abc"[..], 2, |s: &[u8]| s.len());
/// ```
#[must_use = "iterators are lazy: an `IMapReader` reads nothing until it is iterated"]
pub struct IMapReader<'p, Rd, R> {
    pool: &'p Pool,
    reader: Rd,
    chunk_bytes: usize,
    call: usize,
    /// The ring; `bufs.len() <= limit`.
    bufs: Vec<Segment>,
    /// Indices into `bufs` that no chunk task holds.
    free: Vec<usize>,
    window: Window<Arrived<R>>,
    limit: usize,
    /// The stream ended (or failed): read no more.
    eof: bool,
    /// A read error, yielded after the chunks read before it.
    read_error: Option<Error>,
    /// Yielded first (a bad chunk size), then the iterator ends.
    error: Option<Error>,
    finished: bool,
    /// Made while the pool was open: its chunks are still taken after `close`.
    accepted: bool,
}

impl<Rd, R> std::fmt::Debug for IMapReader<'_, Rd, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMapReader")
            .field("chunk_bytes", &self.chunk_bytes)
            .field("buffers", &self.bufs.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<Rd: Read, R: Payload> IMapReader<'_, Rd, R> {
    /// Reads and submits chunks until the ring is full or the stream ends.
    fn fill(&mut self) -> Result<()> {
        while !self.eof && self.window.held() < self.limit {
            let buf_ix = match self.free.pop() {
                Some(s) => s,
                None => {
                    debug_assert!(self.bufs.len() < self.limit);
                    self.bufs
                        .push(Segment::passed("shmpool-reader", self.chunk_bytes)?);
                    self.bufs.len() - 1
                }
            };
            let buf = &self.bufs[buf_ix];
            // SAFETY: the segment maps at least `chunk_bytes` bytes; buffer `buf_ix` is free, so no
            // chunk task holds it: the worker that last read it has sent its result, which we
            // received (or it died) before buffer `buf_ix` went back on the free list.
            let bytes = unsafe { std::slice::from_raw_parts_mut(buf.ptr(), self.chunk_bytes) };
            let n = match read_full(&mut self.reader, bytes) {
                Ok(n) => n,
                Err(e) => {
                    self.free.push(buf_ix);
                    self.eof = true;
                    self.read_error = Some(Error::os("read", e));
                    return Ok(());
                }
            };
            if n < self.chunk_bytes {
                self.eof = true;
            }
            if n == 0 {
                self.free.push(buf_ix);
                return Ok(());
            }
            let arg = ChunkArg {
                input: Span {
                    seg: buf.id(),
                    offset: 0,
                    len: n as u64,
                    memfd: true,
                },
                output: None,
            };
            let done = completion(&self.window, buf_ix);
            let task = match chunk_task(self.pool, &arg, self.call, vec![buf.share()], done) {
                Ok(j) => j,
                Err(e) => {
                    self.free.push(buf_ix);
                    return Err(e);
                }
            };
            if let Err(e) = self.pool.submit_more(vec![task], self.accepted) {
                self.free.push(buf_ix);
                return Err(e);
            }
            self.window.submitted();
        }
        Ok(())
    }
}

impl<Rd: Read, R: Payload> Iterator for IMapReader<'_, Rd, R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if let Some(e) = self.error.take() {
            self.finished = true;
            return Some(Err(e));
        }
        if self.finished {
            return None;
        }
        if let Err(e) = self.fill() {
            self.finished = true;
            return Some(Err(e));
        }
        match self.window.next(self.pool) {
            Some(a) => {
                self.free.push(a.tag);
                Some(a.result)
            }
            None => {
                self.finished = true;
                self.read_error.take().map(Err)
            }
        }
    }
}

impl<Rd, R> Drop for IMapReader<'_, Rd, R> {
    fn drop(&mut self) {
        // Workers may still read the buffers: wait before unmapping them.
        self.window.settle(self.pool);
    }
}

impl Pool {
    /// A lazy, ordered iterator of `f(chunk)` over a stream (`stdin`, a pipe, a socket, a file
    /// read sequentially): the parent reads `chunk_bytes` at a time straight into one of a small
    /// ring of shared buffers (at most `2 × processes`), and a worker runs `f` on the buffer in
    /// place. Memory stays bounded by the ring whatever the stream's length; the last chunk may
    /// be short. A buffer is refilled only after its chunk's result has arrived.
    ///
    /// The reader is read on the thread that calls `next`. `f` is a `fn` item or a
    /// non-capturing closure.
    ///
    /// # Errors
    ///
    /// Each item is that chunk's result ([`Error::TaskPanicked`], [`Error::WorkerDied`], ...).
    /// A read error is yielded as an [`Error::Os`] item after the chunks read before it, and
    /// ends the iterator. `chunk_bytes == 0` is yielded as an [`Error::InvalidArgument`] first
    /// item. An empty stream yields nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::{Command, Stdio};
    ///
    /// let pool = shmpool::Pool::new(2)?;
    /// let mut child = Command::new("seq").arg("100000").stdout(Stdio::piped()).spawn()?;
    /// let newlines: usize = pool
    ///     .imap_reader(child.stdout.take().unwrap(), 64 * 1024, |s: &[u8]| {
    ///         s.iter().filter(|&&b| b == b'\n').count()
    ///     })
    ///     .sum::<Result<_, _>>()?;
    /// child.wait()?;
    /// assert_eq!(newlines, 100_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn imap_reader<Rd, F, R>(
        &self,
        reader: Rd,
        chunk_bytes: usize,
        f: F,
    ) -> IMapReader<'_, Rd, R>
    where
        Rd: Read,
        F: Fn(&[u8]) -> R + Copy + Send + 'static,
        R: Payload,
    {
        let _ = f;
        assert_task_fn::<F>();
        let error = (chunk_bytes == 0).then(|| Error::invalid("chunk length must be at least 1"));
        IMapReader {
            pool: self,
            reader,
            chunk_bytes,
            call: call_chunk::<F, u8, R> as CallFn as usize,
            bufs: Vec::new(),
            free: Vec::new(),
            window: Window::new(true),
            limit: (2 * self.processes()).max(2),
            eof: false,
            read_error: None,
            error,
            finished: false,
            accepted: self.accepting(),
        }
    }
}
