//! The process-global registry of the queues this process maps, and the `pthread_atfork`
//! handlers that keep it consistent across a fork (see the `queue` module docs, "Crossing into
//! tasks").

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, Weak};

use crate::error::{Error, Result};

use super::protocol::{Key, Shared};

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) shared: Weak<Shared>,
    pub(super) type_id: TypeId,
    pub(super) type_name: &'static str,
}

#[derive(Debug)]
pub(super) struct Registry {
    pub(super) next_serial: u64,
    pub(super) map: BTreeMap<Key, Entry>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_serial: 0,
    map: BTreeMap::new(),
});

pub(super) fn registry() -> MutexGuard<'static, Registry> {
    // Poison: the registry is a map updated by single calls that cannot leave it half-written.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The registry guard held by this thread between `atfork_prepare` and the end of `fork`.
    static HELD_ACROSS_FORK: RefCell<Option<MutexGuard<'static, Registry>>> =
        const { RefCell::new(None) };
}

/// Runs in the forking thread just before `fork()`: waits for any other thread to leave the
/// registry, then holds it so the child's copy is consistent.
extern "C" fn atfork_prepare() {
    let guard = registry();
    // If the thread-local is gone (the thread is exiting) the guard drops here and the fork goes
    // unprotected, as it would without this handler; nothing here may panic (extern "C").
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            *held = Some(guard);
        }
    });
}

/// Runs in the parent after `fork()` and in the child (its only thread is the forking one):
/// releases the guard taken by `atfork_prepare`.
extern "C" fn atfork_release() {
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            held.take();
        }
    });
}

pub(super) fn install_fork_handlers() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut rc = 0;
    ONCE.call_once(|| {
        // SAFETY: registers three `extern "C" fn()` that live for the whole program and never
        // unwind; glibc runs them around every `fork()` in this process.
        rc = unsafe {
            libc::pthread_atfork(
                Some(atfork_prepare),
                Some(atfork_release),
                Some(atfork_release),
            )
        };
    });
    if rc != 0 {
        return Err(Error::os(
            "pthread_atfork",
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

pub(super) fn this_pid() -> u32 {
    std::process::id()
}

/// Finds the queue `key` in this process's registry, for a handle of type `Queue<T>`.
pub(super) fn lookup<T: 'static>(key: Key) -> std::result::Result<Arc<Shared>, String> {
    let found = {
        let reg = registry();
        reg.map
            .get(&key)
            .map(|e| (e.shared.upgrade(), e.type_id, e.type_name))
    };
    match found {
        Some((Some(shared), type_id, _)) if type_id == TypeId::of::<T>() => Ok(shared),
        Some((Some(_), _, held)) => Err(format!(
            "queue {} holds `{held}`, not `{}`",
            key.serial,
            std::any::type_name::<T>()
        )),
        // Found but no longer alive, or created here and gone.
        Some((None, ..)) => Err(format!("queue {} was already dropped", key.serial)),
        None if key.pid == this_pid() => Err(format!("queue {} was already dropped", key.serial)),
        None => Err(format!(
            "queue {} was created after the pool was built; create queues before the pool",
            key.serial
        )),
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Forget the key before the segment is unmapped (when `seg` drops right after), so no
        // lookup can hand out this mapping any more. Lookups upgrade a `Weak`, which already
        // fails now that the last strong reference is gone; this just keeps the map small.
        registry().map.remove(&self.key);
    }
}
