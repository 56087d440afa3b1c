//! User code on the pool's own threads: a panic fails the call it belongs to, never the thread.
//!
//! The collector thread, and any caller that collects results while it waits (`Helper`), run
//! code of the user's: a result's `Deserialize`, and the automatic `map`'s `Serialize` of the
//! chunks it submits as earlier ones finish. Uncaught, a panic there would unwind out of the
//! collector (whose death takes the fork server and so every worker with it: `PR_SET_PDEATHSIG`
//! follows that thread) or out of an unrelated caller's `get`, leaving `outstanding` stale so
//! `join` would hang.
//! Each such call goes through [`catch`], which turns the panic into an error of that call.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{Error, Result};
use crate::task::panic_message;

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
