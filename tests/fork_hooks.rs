//! Pools built while other threads of the program panic and build pools of their own: a fork
//! that caught the panic hook's lock held (a panic being printed, another pool's build) must not
//! leave the workers blocked on it. Workers used to install their panic-site hook at their first
//! task (`take_hook`, the hook's write lock): every worker of such a pool hung there, and the
//! call waited for ever. The same builds start and end collector threads all the time, so a
//! fork also catches std's thread registry lock held (taken as any thread starts or ends): every
//! thread that starts in such a server hung, each worker's `PoolWorker-N` among them, in about
//! 1 run in 6, until the server checked that a thread can start and was forked again when not
//! (`process::server`, "Locks across the fork"). In a file of its own: it sets the process's
//! panic hook.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmpool::{Error, Pool};

#[test]
fn pools_built_while_other_threads_panic_and_build_pools_serve_their_tasks() {
    let _w = common::arm(120);
    // A slow hook keeps each panic's read lock on the hook held for a while.
    std::panic::set_hook(Box::new(|_| std::thread::sleep(Duration::from_micros(300))));
    let stop = Arc::new(Mutex::new(false));
    let panicker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !*stop.lock().unwrap() {
                let _ = std::panic::catch_unwind(|| panic!("a panic in the parent"));
            }
        })
    };
    let builders: Vec<_> = (0..6u32)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..40u32 {
                    let pool = Pool::new(1).unwrap();
                    assert_eq!(pool.apply(|x: u32| x + 1, i).unwrap(), i + 1, "thread {t}");
                }
                // A panicking task still reports its site (the hook installed in the parent
                // before the fork does it for the workers).
                let pool = Pool::new(1).unwrap();
                match pool.apply(|_: u32| -> u32 { panic!("boom in a task") }, 0) {
                    Err(Error::TaskPanicked {
                        message, location, ..
                    }) => {
                        assert!(message.contains("boom in a task"), "{message}");
                        assert!(
                            location
                                .as_deref()
                                .is_some_and(|l| l.contains("fork_hooks.rs")),
                            "{location:?}"
                        );
                    }
                    other => panic!("expected TaskPanicked, got {other:?}"),
                }
            })
        })
        .collect();
    let mut failed = None;
    for b in builders {
        if let Err(p) = b.join() {
            failed = Some(p);
        }
    }
    *stop.lock().unwrap() = true;
    panicker.join().unwrap();
    if let Some(p) = failed {
        std::panic::resume_unwind(p);
    }
}
