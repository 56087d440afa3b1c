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

use std::io::{self, Read, Write};
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
pub(crate) fn stdin() -> io::Result<io::Stdin> {
    if closed(0) {
        Err(ebadf())
    } else {
        Ok(io::stdin())
    }
}

/// Reads standard input; fails with `EBADF` on the first read if it was closed at start.
pub(crate) struct Stdin;

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        stdin()?.lock().read(buf)
    }
}

/// Writes to standard output; fails with `EBADF` on the first write if it was closed at
/// start (a run that writes nothing, as `--check --status`, succeeds, as with coreutils).
pub(crate) struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if closed(1) {
            return Err(ebadf());
        }
        io::stdout().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if closed(1) {
            return Ok(());
        }
        io::stdout().flush()
    }
}
