//! Loom models of the cross-process wake protocol (`shmpool::wake`) with a futex model that does
//! lose a wake-up sent before the waiter's compare (see `wake`'s module docs). Run by
//! `ci/loom.sh` (`RUSTFLAGS="--cfg loom"`); empty otherwise.
#![cfg(loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;

use shmpool::wake::WakeWord;

/// Publishes with a Release store, then notifies (how every notifier in the pool does it).
fn publish_then(w: &WakeWord, flag: &AtomicU32, notify: impl Fn(&WakeWord)) {
    flag.store(1, Ordering::Release);
    notify(w);
}

/// A waiter that sleeps (no spin phase, no timeout) until the flag is up.
fn wait_for(w: &WakeWord, flag: &AtomicU32) -> bool {
    w.wait_until(Duration::ZERO, None, || flag.load(Ordering::Acquire) == 1)
}

#[test]
fn a_notify_after_publishing_always_wakes_the_waiter() {
    loom::model(|| {
        let shared = Arc::new((WakeWord::new(), AtomicU32::new(0)));
        let s2 = Arc::clone(&shared);
        let notifier = thread::spawn(move || publish_then(&s2.0, &s2.1, WakeWord::notify));
        assert!(wait_for(&shared.0, &shared.1));
        notifier.join().unwrap();
    });
}

#[test]
fn two_waiters_and_two_notifications_all_wake() {
    loom::model(|| {
        let shared = Arc::new((WakeWord::new(), AtomicU32::new(0)));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&shared);
                thread::spawn(move || {
                    s.0.wait_until(Duration::ZERO, None, || s.1.load(Ordering::Acquire) == 2)
                })
            })
            .collect();
        for _ in 0..2 {
            shared.1.fetch_add(1, Ordering::Release);
            shared.0.notify();
        }
        for w in waiters {
            assert!(w.join().unwrap());
        }
    });
}

/// The futex model is strict enough to matter: a notifier that skips the `epoch` bump loses the
/// wake-up of a waiter between its last check and its sleep, and loom reports the deadlock.
#[test]
fn the_futex_model_catches_a_lost_wake_up() {
    let broken = std::panic::catch_unwind(|| {
        loom::model(|| {
            let shared = Arc::new((WakeWord::new(), AtomicU32::new(0)));
            let s2 = Arc::clone(&shared);
            let notifier =
                thread::spawn(move || publish_then(&s2.0, &s2.1, WakeWord::notify_without_bump));
            assert!(wait_for(&shared.0, &shared.1));
            notifier.join().unwrap();
        });
    });
    assert!(
        broken.is_err(),
        "loom found no lost wake-up in the broken notifier"
    );
}
