//! User code on the pool's own threads: a panic fails the call it belongs to, never the thread.
//!
//! The collector thread, and any caller that collects results while it waits (`Helper`), run
//! code of the user's: a result's `Deserialize`, and the automatic `map`'s `Serialize` of the
//! chunks it submits as earlier ones finish. Uncaught, a panic there would unwind out of the
//! collector (whose death takes the fork server and so every worker with it: `PR_SET_PDEATHSIG`
//! follows that thread) or out of an unrelated caller's `get`, leaving `outstanding` stale so
//! `join` would hang.
//! Each such call goes through [`catch`], which turns the panic into an error of that call.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{Error, Result};

/// Runs `f`, turning a panic into `Error::Codec` naming `what` and the panic message.
///
/// `AssertUnwindSafe` is sound here: on a panic, `f`'s partial work (a half-decoded value, a
/// half-encoded buffer) is dropped with it and never observed; the caller gets only the error.
pub(crate) fn catch<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::Codec {
            detail: format!("{what} panicked: {}", panic_message(&*p)),
        }),
    }
}

/// Runs a completion or other pool-internal step that contains user code, reporting a panic on
/// stderr instead of unwinding through the pool's thread. For code whose own errors are already
/// caught by [`catch`] (so only a `Drop` of the user's can still panic); returns whether `f` ran
/// to its end.
pub(crate) fn guard(what: &str, f: impl FnOnce()) -> bool {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(p) => {
            eprintln!("shmpool: {what} panicked: {}", panic_message(&*p));
            false
        }
    }
}

/// The message of a caught panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// Exit code of a worker whose initializer panicked.
pub(crate) const EXIT_INIT_FAILED: i32 = 86;
/// Exit code of a worker that found the parent broke the protocol.
pub(crate) const EXIT_PROTOCOL: i32 = 87;
/// Exit code of a worker (or server) whose parent was already gone.
pub(crate) const EXIT_ORPHAN: i32 = 88;
/// Exit code of a worker or server whose own code panicked.
pub(crate) const EXIT_INTERNAL: i32 = 89;
/// Exit code of a worker that lost a segment's fd at its fd limit (see `channel::worker_receive`).
pub(crate) const EXIT_FD_DROPPED: i32 = 90;

/// Leaves the process with `_exit(code)`, flushing what the task printed first if asked.
pub(crate) fn exit_now(code: i32, flush: bool) -> ! {
    if flush {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
    }
    // SAFETY: `_exit` is async-signal-safe and never returns; it skips atexit handlers and stdio
    // buffers on purpose (they belong to the parent's image).
    unsafe { libc::_exit(code) }
}

/// Writes `msg` to stderr with a raw `write(2)` (no lock, no allocation).
pub(crate) fn raw_stderr(msg: &str) {
    // SAFETY: writes `msg.len()` bytes from a live buffer to fd 2; the result is irrelevant.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

/// Turns any unwind through our own post-fork code into `_exit(EXIT_INTERNAL)`.
pub(crate) struct ExitOnUnwind(pub(crate) &'static str);

impl Drop for ExitOnUnwind {
    fn drop(&mut self) {
        // Only reached while unwinding: the normal paths leave through `exit_now`.
        raw_stderr("shmpool: internal panic in ");
        raw_stderr(self.0);
        raw_stderr("; exiting\n");
        exit_now(EXIT_INTERNAL, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_calls_error() {
        let r: Result<u32> = catch("decoding a result", || panic!("boom {}", 7));
        assert_eq!(
            r.unwrap_err().to_string(),
            Error::Codec {
                detail: "decoding a result panicked: boom 7".into()
            }
            .to_string()
        );
        assert_eq!(catch("x", || Ok(3)).unwrap(), 3);
        assert!(guard("x", || ()));
        assert!(!guard("a test", || panic!("ignored")));
    }
}
