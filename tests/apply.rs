//! `apply`, `apply_async` and `AsyncResult` (`get`, `get_timeout`, `wait`, `wait_timeout`,
//! `ready`, `successful`), callbacks, and what a task sees of its worker.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use shmpool::{Error, Pool, current_worker};

fn square(x: u64) -> u64 {
    x * x
}

/// Waits for the gate, then returns `x + 1`.
fn gated(arg: (PathBuf, u64)) -> u64 {
    common::wait_gate(&arg.0);
    arg.1 + 1
}

#[test]
fn apply_returns_the_task_result() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    assert_eq!(
        pool.apply(|s: String| s.to_uppercase(), "héllo".to_string())
            .unwrap(),
        "HÉLLO"
    );
    assert_eq!(pool.apply(|(a, b): (u32, u32)| a * b, (6, 7)).unwrap(), 42);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn processes_and_worker_pids_describe_live_distinct_workers() {
    let _w = common::arm(60);
    let pool = Pool::new(3).unwrap();
    assert_eq!(pool.processes(), 3);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 3);
    let me = std::process::id();
    for &p in &pids {
        assert_ne!(p, 0);
        assert_ne!(p, me);
        assert!(common::exists(p), "worker {p} has no /proc entry");
    }
    let mut sorted = pids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "worker pids are not distinct: {pids:?}");
}

#[test]
fn current_worker_is_none_in_the_parent_and_names_the_worker_in_a_task() {
    let _w = common::arm(60);
    assert!(current_worker().is_none());
    let pool = Pool::new(2).unwrap();
    let pids = pool.worker_pids();
    let infos = pool
        .map_chunked(
            |_: u32| {
                let w = current_worker().expect("a task runs in a worker");
                (w.index(), w.pid(), w.name(), std::process::id())
            },
            0..50,
            1,
        )
        .unwrap();
    for (index, pid, name, real_pid) in infos {
        assert!(index < 2, "index {index}");
        assert_eq!(pid, real_pid);
        assert_eq!(
            pids[index], pid,
            "seat {index} runs pid {pid}, pool says {pids:?}"
        );
        assert!(
            name.starts_with("PoolWorker-") && name["PoolWorker-".len()..].parse::<u64>().is_ok(),
            "bad worker name {name:?}"
        );
    }
    assert!(current_worker().is_none());
}

#[test]
fn apply_async_many_results_resolve_correctly() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let handles: Vec<_> = (0..10_000u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), (i as u64) * (i as u64));
    }
}

#[test]
fn ready_successful_wait_and_wait_timeout_follow_the_task() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let gate = common::Gate::new();
    let r = pool.apply_async(gated, (gate.path(), 41)).unwrap();
    assert!(!r.ready());
    assert_eq!(r.successful(), None);
    assert!(!r.wait_timeout(Duration::from_millis(20)));
    assert!(!r.ready());
    gate.open();
    r.wait();
    assert!(r.ready());
    assert!(r.wait_timeout(Duration::from_millis(1)));
    assert_eq!(r.successful(), Some(true));
    assert_eq!(r.get().unwrap(), 42);

    let bad = pool
        .apply_async(|_: ()| -> u8 { panic!("no luck") }, ())
        .unwrap();
    assert!(bad.wait_timeout(Duration::from_secs(50)));
    assert!(bad.ready());
    assert_eq!(bad.successful(), Some(false));
    let e = bad.get().unwrap_err();
    assert!(matches!(e, Error::TaskPanicked { .. }), "{e:?}");
}

#[test]
fn get_timeout_times_out_then_a_second_wait_succeeds_then_the_result_is_taken() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let gate = common::Gate::new();
    let mut r = pool.apply_async(gated, (gate.path(), 6)).unwrap();
    let e = r.get_timeout(Duration::from_millis(10)).unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    assert_eq!(e.to_string(), "the wait timed out");
    // The handle is still usable after a timeout.
    let e = r.get_timeout(Duration::ZERO).unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    gate.open();
    assert_eq!(r.get_timeout(Duration::from_secs(50)).unwrap(), 7);
    let e = r.get_timeout(Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, Error::ResultTaken), "{e:?}");
    assert_eq!(e.to_string(), "the result was already taken");
    // `successful` still says the task succeeded.
    assert_eq!(r.successful(), Some(true));
}

#[test]
fn callback_runs_in_the_parent_process_not_in_a_worker() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let test_thread = std::thread::current().id();
    let r = pool
        .apply_async_with_callback(
            |x: u64| (x * 3, std::process::id()),
            5,
            move |res| {
                let _ = tx.send((
                    res,
                    current_worker(),
                    std::process::id(),
                    std::thread::current().id(),
                ));
            },
        )
        .unwrap();
    let (res, worker, pid, thread) = rx.recv().unwrap();
    let (value, task_pid) = res.unwrap();
    assert_eq!(value, 15);
    assert!(worker.is_none(), "callback saw a worker: {worker:?}");
    assert_eq!(pid, std::process::id());
    assert_ne!(task_pid, std::process::id());
    assert!(pool.worker_pids().contains(&task_pid));
    assert_ne!(thread, test_thread);
    assert_eq!(r.get().unwrap(), (15, task_pid));
}

#[test]
fn callback_receives_task_errors_too() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = mpsc::channel();
    let r = pool
        .apply_async_with_callback(
            |_: ()| -> u32 { panic!("boom") },
            (),
            move |res: shmpool::Result<u32>| {
                let _ = tx.send(res.map_err(|e| e.to_string()));
            },
        )
        .unwrap();
    assert_eq!(
        rx.recv().unwrap(),
        Err("task panicked in worker 0: boom".into())
    );
    assert_eq!(
        r.get().unwrap_err().to_string(),
        "task panicked in worker 0: boom"
    );
}

#[test]
fn every_callback_runs_before_join_returns() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..200u64 {
        let seen = Arc::clone(&seen);
        pool.apply_async_with_callback(square, i, move |r| {
            // Slow callbacks: join must still wait for all of them.
            std::thread::sleep(Duration::from_micros(200));
            seen.lock().unwrap().push(r.unwrap());
        })
        .unwrap();
    }
    pool.close();
    pool.join().unwrap();
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    let want: Vec<u64> = (0..200).map(square).collect();
    assert_eq!(got, want);
}

#[test]
fn a_blocked_callback_does_not_stall_other_results() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    pool.apply_async_with_callback(square, 3, move |r| {
        started_tx.send(r.unwrap()).unwrap();
        // Blocks the callback thread until the test has finished its other work.
        release_rx.recv().unwrap();
        done_tx.send(()).unwrap();
    })
    .unwrap();
    assert_eq!(started_rx.recv().unwrap(), 9);
    // The callback is now blocked; results must still flow.
    let handles: Vec<_> = (0..500u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), (i * i) as u64);
    }
    assert_eq!(pool.map(square, 0..100).unwrap()[99], 99 * 99);
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    assert!(done_rx.try_recv().is_err(), "the callback was not blocked");
    release_tx.send(()).unwrap();
    done_rx.recv().unwrap();
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_panicking_callback_is_ignored_and_the_pool_goes_on() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let r = pool
        .apply_async_with_callback(square, 2, |_| panic!("callback boom"))
        .unwrap();
    assert_eq!(r.get().unwrap(), 4);
    let (tx, rx) = mpsc::channel();
    pool.apply_async_with_callback(square, 5, move |r| tx.send(r.unwrap()).unwrap())
        .unwrap();
    assert_eq!(rx.recv().unwrap(), 25);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_callback_may_close_and_join_its_own_pool() {
    let _w = common::arm(60);
    let pool = Arc::new(Pool::new(2).unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Callbacks queued behind the joining one: `join` must run them, not wait for them (the
    // thread that would run them is the one waiting).
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let slow: Vec<_> = (0..4u64)
        .map(|i| {
            let seen = Arc::clone(&seen);
            pool.apply_async_with_callback(
                |(ms, i): (u64, u64)| {
                    std::thread::sleep(Duration::from_millis(ms));
                    i
                },
                (100, i),
                move |r| seen.lock().unwrap().push(r.unwrap()),
            )
            .unwrap()
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    let p = Arc::clone(&pool);
    let s = Arc::clone(&seen);
    let r = pool
        .apply_async_with_callback(square, 3, move |_| {
            // Let the slow tasks finish first, so their callbacks queue behind this one.
            release_rx.recv().unwrap();
            p.close();
            let joined = p.join();
            let after = s.lock().unwrap().len();
            tx.send((joined.map_err(|e| e.to_string()), after)).unwrap();
        })
        .unwrap();
    // Their results cannot be waited for (they are published after their callbacks, which
    // queue behind the blocked one): give the tasks time to end. If they end later, `join`
    // waits for their callbacks instead; the assertions hold either way.
    std::thread::sleep(Duration::from_millis(300));
    release_tx.send(()).unwrap();
    let (joined, after) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("join inside a callback never returned");
    assert_eq!(joined, Ok(()));
    assert_eq!(
        after, 4,
        "join returned before the callbacks queued behind it ran"
    );
    assert_eq!(r.get().unwrap(), 9);
    for h in slow {
        assert!(h.get().unwrap() < 4);
    }
}

#[test]
fn workers_and_the_fork_server_carry_their_names_in_proc() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let (name, comm) = pool
        .apply(
            |_: ()| {
                (
                    shmpool::current_worker().unwrap().name(),
                    std::fs::read_to_string("/proc/self/comm").unwrap(),
                )
            },
            (),
        )
        .unwrap();
    assert_eq!(comm.trim_end(), name);
    let server = common::ppid_of(pool.worker_pids()[0]).unwrap();
    let server_comm = std::fs::read_to_string(format!("/proc/{server}/comm")).unwrap();
    assert_eq!(server_comm.trim_end(), "shmpool-server");
}

#[test]
fn a_callback_has_returned_before_get_or_wait_of_its_result_return() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    // Python runs `callback` before `get()` returns; code that reads what the callback wrote
    // right after `get()` must see it. A slow callback makes a wrong order certain to show.
    for round in 0..5 {
        let written = Arc::new(Mutex::new(false));
        let w = Arc::clone(&written);
        let r = pool
            .apply_async_with_callback(square, round, move |_| {
                std::thread::sleep(Duration::from_millis(20));
                *w.lock().unwrap() = true;
            })
            .unwrap();
        if round % 2 == 0 {
            assert_eq!(r.get().unwrap(), round * round);
        } else {
            r.wait();
            assert!(r.ready());
        }
        assert!(*written.lock().unwrap(), "round {round}");
    }
    // The same for a whole map, its failure, and a starmap.
    let written = Arc::new(Mutex::new(None));
    let w = Arc::clone(&written);
    let r = pool
        .map_async_with_callback(square, 0..100, move |r| {
            std::thread::sleep(Duration::from_millis(20));
            *w.lock().unwrap() = Some(r.map(|v| v.len()).map_err(|e| e.to_string()));
        })
        .unwrap();
    assert_eq!(r.get().unwrap().len(), 100);
    assert_eq!(*written.lock().unwrap(), Some(Ok(100)));
    let w = Arc::clone(&written);
    let r = pool
        .map_async_with_callback(
            |x: u64| if x == 7 { panic!("seven") } else { x },
            0..10,
            move |r| {
                std::thread::sleep(Duration::from_millis(20));
                *w.lock().unwrap() = Some(r.map(|v| v.len()).map_err(|e| e.to_string()));
            },
        )
        .unwrap();
    let e = r.get().unwrap_err().to_string();
    assert!(e.ends_with(": seven"), "{e}");
    assert_eq!(*written.lock().unwrap(), Some(Err(e)));
    let w = Arc::clone(&written);
    let r = pool
        .starmap_async_with_callback(
            |a: u64, b: u64| a + b,
            vec![(1, 2); 5],
            move |r| {
                std::thread::sleep(Duration::from_millis(20));
                *w.lock().unwrap() = Some(r.map(|v| v.len()).map_err(|e| e.to_string()));
            },
        )
        .unwrap();
    r.wait();
    assert_eq!(*written.lock().unwrap(), Some(Ok(5)));
    assert_eq!(r.get().unwrap(), [3; 5]);
    // A refused submission runs no callback and leaves nothing for `join` to wait for.
    pool.close();
    assert!(matches!(
        pool.map_async_with_callback(square, 0..3, |_| panic!("never")),
        Err(Error::PoolClosed)
    ));
    assert!(matches!(
        pool.apply_async_with_callback(square, 3, |_| panic!("never")),
        Err(shmpool::SubmitError {
            error: Error::PoolClosed,
            value: 3
        })
    ));
    pool.join().unwrap();
}
