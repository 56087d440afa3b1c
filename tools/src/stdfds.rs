//! Which of standard input and output were closed when the program started.
//!
//! Rust's runtime, before `main`, opens `/dev/null` on any of descriptors 0, 1 and 2 that is
//! closed, and `io::stdin()` / `io::stdout()` take `EBADF` as end of input and as success.
//! Without this module `shmpool hash <&-` hashed an empty standard input and `shmpool hash
//! DIR >&-` dropped every line, both with exit status 0, where `sha256sum` reports `Bad file
//! descriptor` and fails. [`PROBE`] runs from `.init_array`, which the C runtime runs before
//! `main` (so before Rust's runtime opens anything), and records which were closed; readers of
//! standard input and the writer of the output ask [`stdin`] / [`Stdout`], which fail with
//! `EBADF` as coreutils does.
//!
//! Reads of standard input also end on Ctrl-C ([`interrupt_reads_on`]): `shmpool hash`
//! catches SIGINT to stop its pool, so the signal no longer kills a process blocked in a
//! `read` of a terminal or of an idle pipe (the handler is `SA_RESTART`: the `read` goes on),
//! and `shmpool hash` waiting for input ignored Ctrl-C. The handler also sends a byte into a
//! self-pipe (a socket pair, see `cmd::hash`), and [`Stdin`] waits in one `poll` of standard
//! input and the pipe's read end, with no timeout: whichever comes first ends the wait, and
//! once the pipe is readable the read gives up with [`interrupted`]. Nothing reads the pipe,
//! so it stays readable: every later wait gives up at once too.
//!
//! Writes to standard output end on Ctrl-C the same way, where they can block: when standard
//! output is a pipe or a socket ([`Stdout`] waits in one `poll` for room or the self-pipe, then
//! writes at most `PIPE_BUF` bytes, which a pipe with room takes without blocking). Before,
//! `shmpool hash DIR | less` with `less` not reading (it ignores SIGINT) kept `shmpool hash`, its
//! fork server and a worker alive after Ctrl-C, blocked in a `write` the handler restarts.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// Bit 0: descriptor 0 was closed at start; bit 1: descriptor 1.
static CLOSED: AtomicU8 = AtomicU8::new(0);

/// Records the closed standard descriptors; run by the C runtime before `main`.
extern "C" fn probe() {
    let mut closed = 0u8;
    for fd in 0..2 {
        // SAFETY: F_GETFD only reads the descriptor's flags; on a closed one it fails (EBADF).
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            closed |= 1 << fd;
        }
    }
    // SYNC: written once here, before `main` and before any thread exists; every load happens
    // after, ordered by the start of `main` (and by the spawn of any thread that loads it).
    CLOSED.store(closed, Ordering::Relaxed);
}

/// [`probe`] in `.init_array`: kept by `#[used]`, called by the C runtime before `main`.
#[used]
// SAFETY: `.init_array` holds `extern "C" fn()` pointers, which this is; `probe` calls only
// `fcntl` and an atomic store, both fine before Rust's runtime is set up.
#[unsafe(link_section = ".init_array")]
static PROBE: extern "C" fn() = probe;

fn closed(fd: u8) -> bool {
    // SYNC: see `probe`: the store happened before `main`.
    CLOSED.load(Ordering::Relaxed) & (1 << fd) != 0
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

/// Standard input, or `EBADF` if it was closed when the program started.
fn stdin() -> io::Result<io::Stdin> {
    if closed(0) {
        Err(ebadf())
    } else {
        Ok(io::stdin())
    }
}

/// The read end of the SIGINT self-pipe: readable once Ctrl-C came, and from then on (nothing
/// reads it).
static INTERRUPT: OnceLock<OwnedFd> = OnceLock::new();

/// From now on a [`Stdin`] read waiting for data fails with [`interrupted`] once `wake` is
/// readable: the read end of a pipe (or socket) that the SIGINT handler writes a byte into.
pub(crate) fn interrupt_reads_on(wake: OwnedFd) {
    let _ = INTERRUPT.set(wake);
}

/// The error of a read of standard input that Ctrl-C ended.
pub(crate) fn interrupted() -> io::Error {
    io::Error::other("interrupted")
}

/// Waits in one `poll`, with no timeout, until descriptor `fd` has `events` (or an error or
/// hang-up to report), or fails with [`interrupted`] once the SIGINT self-pipe `wake` is
/// readable (Ctrl-C wins over a descriptor that is ready too). A `poll` that fails is left to
/// the caller's read or write to report.
fn wait_for(fd: libc::c_int, events: libc::c_short, wake: &OwnedFd) -> io::Result<()> {
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two valid `pollfd`s that outlives the call, its length
        // is passed; poll writes only their `revents`. `wake` is open for the life of the
        // process (a static).
        match unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } {
            n if n > 0 && fds[1].revents != 0 => return Err(interrupted()),
            n if n > 0 => return Ok(()),
            _ => {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    return Ok(());
                }
            }
        }
    }
}

/// Waits until standard input has data, its end or an error to report (so a `read` will not
/// block), or fails with [`interrupted`] once the SIGINT self-pipe is readable.
fn wait_readable() -> io::Result<()> {
    match INTERRUPT.get() {
        Some(wake) => wait_for(0, libc::POLLIN, wake),
        None => Ok(()),
    }
}

/// Reads standard input; fails with `EBADF` on the first read if it was closed at start, and
/// with [`interrupted`] if Ctrl-C comes while it waits for data.
pub(crate) struct Stdin;

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stdin = stdin()?;
        wait_readable()?;
        stdin.lock().read(buf)
    }
}

/// Whether standard output is a pipe or a socket: where a `write` blocks until a reader makes
/// room (asked once).
fn stdout_blocks() -> bool {
    static BLOCKS: OnceLock<bool> = OnceLock::new();
    *BLOCKS.get_or_init(|| {
        // SAFETY: all-zero bytes are a valid `stat` (integers only).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one `stat` into `st`, which we own; on any error (descriptor 1
        // closed) we say no.
        if unsafe { libc::fstat(1, &mut st) } != 0 {
            return false;
        }
        matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFSOCK)
    })
}

/// Waits until standard output (a pipe or a socket) has room for `PIPE_BUF` bytes, or fails
/// with [`interrupted`] once the SIGINT self-pipe is readable. Returns how many bytes a write
/// may take without blocking: all of them if standard output cannot block or no Ctrl-C can
/// end a wait ([`interrupt_reads_on`] was not called). The wait ends by an event only.
fn wait_writable() -> io::Result<Option<usize>> {
    let Some(wake) = INTERRUPT.get() else {
        return Ok(None);
    };
    if !stdout_blocks() {
        return Ok(None);
    }
    wait_for(1, libc::POLLOUT, wake)?;
    Ok(Some(libc::PIPE_BUF))
}

/// Writes to standard output, unbuffered (callers buffer: a `BufWriter` of 64 KiB); fails with
/// `EBADF` on the first write if it was closed at start (a run that writes nothing, as
/// `--check --status`, succeeds, as with coreutils), and with [`interrupted`] if Ctrl-C comes
/// while it waits for a reader to make room. Not through `io::stdout()`: its line buffer would
/// make its own blocking writes of what it held.
pub(crate) struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if closed(1) {
            return Err(ebadf());
        }
        let len = match wait_writable()? {
            Some(room) => buf.len().min(room),
            None => buf.len(),
        };
        loop {
            // SAFETY: `buf[..len]` is valid for reads of `len` bytes for the call; descriptor 1
            // is open (`closed(1)` said so; Rust's runtime keeps it open).
            let n = unsafe { libc::write(1, buf.as_ptr().cast(), len) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Nothing is held here.
        Ok(())
    }
}
