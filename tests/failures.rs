//! Failure is an answer, never a hang: panics, worker deaths by signal or exit, recycling,
//! initializers, bad arguments, closed and terminated pools, results that outlive their pool.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use shmpool::{Error, Pool, current_worker};

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn double(x: u64) -> u64 {
    x * 2
}

/// Task that kills its own worker with `sig` (no core file).
fn die_by(sig: i32) -> u32 {
    common::no_core_dumps();
    // std handles SIGSEGV itself (stack-overflow detection) and returns from a raised one:
    // restore the default action so the signal kills, as a real fault would.
    // SAFETY: signal(2) and raise(3) act on this very process, a worker whose death the test wants.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    unreachable!("the signal kills the worker")
}

/// Submits `killer` plus many ordinary tasks, checks the killer's error and that every other task
/// succeeds and the seat gets a new worker.
fn death_is_reported_and_survived<F>(killer: F, signal: i32, name: &str)
where
    F: Fn(()) -> u32 + Copy + Send + 'static,
{
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let before = pool.worker_pids();
    let early: Vec<_> = (0..50u64)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let r = pool.apply_async(killer, ()).unwrap();
    let late: Vec<_> = (50..100u64)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let e = r.get().unwrap_err();
    let (worker, dead_pid) = match e {
        Error::WorkerDied {
            worker,
            pid,
            signal: s,
            exit_code,
        } => {
            assert_eq!(s, Some(signal));
            assert_eq!(exit_code, None);
            (worker, pid)
        }
        ref other => panic!("unexpected {other:?}"),
    };
    assert!(worker < 2);
    assert_eq!(before[worker], dead_pid);
    assert_eq!(
        e.to_string(),
        format!("worker {worker} (pid {dead_pid}) was killed by signal {signal} ({name})")
    );
    for (i, h) in early.into_iter().chain(late).enumerate() {
        assert_eq!(h.get().unwrap(), 2 * i as u64, "task {i}");
    }
    // The seat gets a replacement and the pool keeps serving.
    assert!(
        common::eventually(Duration::from_secs(30), || {
            let p = pool.worker_pids()[worker];
            p != 0 && p != dead_pid
        }),
        "seat {worker} was not replaced: {:?}",
        pool.worker_pids()
    );
    assert_eq!(pool.worker_pids()[1 - worker], before[1 - worker]);
    assert!(
        !common::exists(dead_pid),
        "dead worker {dead_pid} not reaped"
    );
    assert_eq!(pool.map(double, 0..100).unwrap()[99], 198);
    let pids: Vec<u32> = pool.map_chunked(pid, vec![(); 40], 1).unwrap();
    assert!(!pids.contains(&(dead_pid)));
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_task_that_sigkills_its_worker_fails_with_worker_died_signal_9() {
    death_is_reported_and_survived(|_| die_by(libc::SIGKILL), 9, "SIGKILL");
}

#[test]
fn a_task_that_aborts_fails_with_worker_died_signal_6() {
    death_is_reported_and_survived(
        |_| {
            common::no_core_dumps();
            std::process::abort()
        },
        6,
        "SIGABRT",
    );
}

#[test]
fn a_task_that_segfaults_fails_with_worker_died_signal_11() {
    death_is_reported_and_survived(|_| die_by(libc::SIGSEGV), 11, "SIGSEGV");
}

#[test]
fn a_task_that_exits_fails_with_worker_died_and_its_exit_code() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let old = pool.worker_pids()[0];
    let e = pool
        .apply(
            |code: i32| -> u8 {
                // SAFETY: `_exit` ends this worker at once, which is what the test wants.
                unsafe { libc::_exit(code) }
            },
            3,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::WorkerDied {
                worker: 0,
                signal: None,
                exit_code: Some(3),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("worker 0 (pid {old}) exited with code 3")
    );
    assert_eq!(pool.apply(double, 21).unwrap(), 42);
}

#[test]
fn a_worker_killed_from_outside_while_idle_is_replaced() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let before = pool.worker_pids();
    common::kill(before[0], libc::SIGKILL);
    assert!(
        common::eventually(Duration::from_secs(30), || {
            let p = pool.worker_pids()[0];
            p != 0 && p != before[0]
        }),
        "seat 0 was not replaced"
    );
    assert_eq!(pool.map(double, 0..1000).unwrap()[999], 1998);
    let pids: Vec<u32> = pool.map_chunked(pid, vec![(); 20], 1).unwrap();
    assert!(!pids.contains(&before[0]));
}

#[test]
fn a_panic_fails_only_its_task_and_the_same_worker_goes_on() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let before = pool.worker_pids();
    let e = pool
        .apply(|_: ()| -> u32 { panic!("boom") }, ())
        .unwrap_err();
    match &e {
        Error::TaskPanicked {
            worker, message, ..
        } => {
            assert_eq!(*worker, 0);
            assert_eq!(message, "boom");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(e.to_string(), "task panicked in worker 0: boom");
    let e = pool
        .apply(|x: u32| -> u32 { panic!("formatted {x}") }, 17)
        .unwrap_err();
    assert_eq!(e.to_string(), "task panicked in worker 0: formatted 17");
    assert_eq!(pool.worker_pids(), before);
    assert_eq!(pool.apply(pid, ()).unwrap(), before[0]);
}

#[test]
fn max_tasks_per_child_recycles_workers_and_keeps_results_right() {
    let _w = common::arm(60);
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for i in 0..10u64 {
        let (v, p, name) = pool
            .apply(
                |x: u64| (x * 2, std::process::id(), current_worker().unwrap().name()),
                i,
            )
            .unwrap();
        assert_eq!(v, 2 * i);
        pids.push((p, name));
    }
    for pair in pids.chunks(2) {
        assert_eq!(pair[0], pair[1], "a worker should serve exactly 2 tasks");
    }
    let distinct: std::collections::BTreeSet<u32> = pids.iter().map(|x| x.0).collect();
    assert_eq!(distinct.len(), 5, "{pids:?}");
    let names: std::collections::BTreeSet<&String> = pids.iter().map(|x| &x.1).collect();
    assert_eq!(names.len(), 5, "each replacement gets a new name: {pids:?}");

    // Many tasks queued at once: recycling happens with tasks still in the ring.
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let out = pool
        .map_chunked(|x: u64| (x * 2, std::process::id()), 0..40, 1)
        .unwrap();
    let mut per_pid = std::collections::BTreeMap::new();
    for (i, (v, p)) in out.iter().enumerate() {
        assert_eq!(*v, 2 * i as u64);
        *per_pid.entry(*p).or_insert(0) += 1;
    }
    assert!(per_pid.values().all(|&n| n <= 2), "{per_pid:?}");
    assert!(per_pid.len() >= 20, "{per_pid:?}");
}

#[allow(clippy::disallowed_types)] // a process-local flag, nothing to model-check
static INITIALIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static INIT_VALUE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[test]
fn the_initializer_runs_in_each_worker_and_never_in_the_parent() {
    use std::sync::atomic::Ordering;
    let _w = common::arm(60);
    let captured = String::from("per-worker state");
    let pool = Pool::builder()
        .processes(2)
        .initializer(move || {
            INITIALIZED.store(true, Ordering::SeqCst);
            INIT_VALUE.set(captured.clone()).unwrap();
        })
        .build()
        .unwrap();
    let seen = pool
        .map_chunked(
            |_: ()| {
                (
                    INITIALIZED.load(Ordering::SeqCst),
                    INIT_VALUE.get().cloned(),
                    std::process::id(),
                )
            },
            vec![(); 40],
            1,
        )
        .unwrap();
    for (flag, value, _) in &seen {
        assert!(*flag);
        assert_eq!(value.as_deref(), Some("per-worker state"));
    }
    assert!(
        !INITIALIZED.load(Ordering::SeqCst),
        "initializer ran in the parent"
    );
    assert!(INIT_VALUE.get().is_none());
    // Replacements run it too.
    let victim = common::live_worker(|| pool.worker_pids(), 0);
    common::kill(victim, libc::SIGKILL);
    assert!(common::eventually(Duration::from_secs(30), || {
        let p = pool.worker_pids()[0];
        p != 0 && p != victim
    }));
    let seen = pool
        .map_chunked(|_: ()| INITIALIZED.load(Ordering::SeqCst), vec![(); 40], 1)
        .unwrap();
    assert!(seen.iter().all(|&f| f));
    assert!(!INITIALIZED.load(Ordering::SeqCst));
}

#[test]
fn an_initializer_that_panics_fails_work_with_initializer_failed() {
    let _w = common::arm(60);
    let pool = Pool::builder()
        .processes(2)
        .initializer(|| panic!("init boom"))
        .build()
        .unwrap();
    let e = pool.apply(double, 1).unwrap_err();
    let worker = match &e {
        Error::InitializerFailed { worker, message } => {
            assert_eq!(message, "init boom");
            *worker
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!(worker < 2);
    assert_eq!(
        e.to_string(),
        format!("initializer panicked in worker {worker}: init boom")
    );
    // New work is refused with the same kind of error, never hangs.
    let e = pool.map(double, 0..10).unwrap_err();
    assert!(matches!(e, Error::InitializerFailed { .. }), "{e:?}");
    let e = pool.apply_async(double, 1).unwrap_err();
    assert!(matches!(e.error, Error::InitializerFailed { .. }), "{e:?}");
    drop(pool);
}

#[test]
fn bad_builder_arguments_are_invalid_argument_errors() {
    let _w = common::arm(60);
    let e = Pool::new(0).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid argument: processes must be at least 1"
    );
    let e = Pool::builder()
        .processes(1)
        .max_tasks_per_child(0)
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: max_tasks_per_child must be at least 1"
    );
    let e = Pool::builder()
        .processes(1)
        .arena_size(100)
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: arena_size must be at least 4096 bytes"
    );
    let pool = Pool::new(1).unwrap();
    let e = pool.map_chunked(double, 0..10, 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: chunksize must be at least 1"
    );
    assert_eq!(pool.apply(double, 2).unwrap(), 4);
}

#[test]
fn submitting_after_close_is_pool_closed_and_queued_work_still_finishes() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let queued: Vec<_> = (0..200u64)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let mapped = pool.map_async(double, 0..500).unwrap();
    pool.close();
    let e = pool.apply(double, 1).unwrap_err();
    assert!(matches!(e, Error::PoolClosed), "{e:?}");
    assert_eq!(e.to_string(), "the pool is closed");
    let refused = pool.apply_async(double, 41).unwrap_err();
    assert!(matches!(refused.error, Error::PoolClosed), "{refused:?}");
    // The argument comes back, as from `mpsc::SendError`.
    assert_eq!(refused.value, 41);
    assert_eq!(refused.to_string(), "the pool is closed");
    assert!(matches!(pool.map(double, 0..3), Err(Error::PoolClosed)));
    assert!(matches!(
        pool.map(double, Vec::new()),
        Err(Error::PoolClosed)
    ));
    assert!(matches!(
        pool.starmap(|a: u64, b: u64| a + b, vec![(1, 2)]),
        Err(Error::PoolClosed)
    ));
    assert!(matches!(
        pool.apply_async_with_callback(double, 1, |_| {}),
        Err(shmpool::SubmitError {
            error: Error::PoolClosed,
            value: 1
        })
    ));
    let first = pool.imap(double, 0..3).next().unwrap();
    assert!(matches!(first, Err(Error::PoolClosed)), "{first:?}");
    pool.join().unwrap();
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(h.get().unwrap(), 2 * i as u64);
    }
    assert_eq!(mapped.get().unwrap().len(), 500);
    let after = pool.apply(double, 1);
    assert!(matches!(after, Err(Error::PoolClosed)), "{after:?}");
}

#[test]
fn join_without_close_is_pool_running() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let e = pool.join().unwrap_err();
    assert!(matches!(e, Error::PoolRunning), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the pool is still running; call close() or terminate() first"
    );
    // Still usable afterwards.
    assert_eq!(pool.apply(double, 5).unwrap(), 10);
    pool.close();
    pool.join().unwrap();
}

fn blocked(p: PathBuf) -> u32 {
    common::wait_gate(&p);
    1
}

#[test]
fn terminate_fails_pending_and_running_tasks_with_pool_terminated() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let gate = common::Gate::new(); // never opened
    let handles: Vec<_> = (0..10)
        .map(|_| pool.apply_async(blocked, gate.path()).unwrap())
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    pool.apply_async_with_callback(blocked, gate.path(), move |r| {
        tx.send(r.map_err(|e| e.to_string())).unwrap();
    })
    .unwrap();
    let mapped = pool.map_async(blocked, vec![gate.path(); 4]).unwrap();
    pool.terminate();
    for h in handles {
        let e = h.get().unwrap_err();
        assert!(matches!(e, Error::PoolTerminated), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the pool was terminated before the task finished"
        );
    }
    assert!(matches!(mapped.get(), Err(Error::PoolTerminated)));
    assert_eq!(
        rx.recv().unwrap(),
        Err("the pool was terminated before the task finished".into())
    );
    let after = pool.apply(double, 1);
    assert!(matches!(after, Err(Error::PoolClosed)), "{after:?}");
    // join after terminate is allowed and returns at once.
    pool.join().unwrap();
}

#[test]
fn an_async_result_outliving_its_pool_resolves_to_an_error() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let gate = common::Gate::new(); // never opened
    let done = pool.apply_async(double, 4).unwrap();
    done.wait();
    let pending = pool.apply_async(blocked, gate.path()).unwrap();
    let queued = pool.apply_async(double, 5).unwrap();
    let mut timed = pool.apply_async(blocked, gate.path()).unwrap();
    drop(pool);
    let e = pending.get().unwrap_err();
    assert!(matches!(e, Error::PoolTerminated), "{e:?}");
    assert!(matches!(queued.get(), Err(Error::PoolTerminated)));
    assert!(matches!(
        timed.get_timeout(Duration::from_secs(30)),
        Err(Error::PoolTerminated)
    ));
    // A result that was ready before the drop is still there.
    assert_eq!(done.get().unwrap(), 8);
}

#[test]
fn an_imap_broken_by_a_worker_death_reports_it_per_item() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let out: Vec<Result<u64, Error>> = pool
        .imap(
            |x: u64| {
                if x == 13 {
                    die_by(libc::SIGKILL);
                }
                x
            },
            0..40,
        )
        .chunksize(4)
        .collect();
    assert_eq!(out.len(), 40);
    for (i, r) in out.iter().enumerate() {
        if (12..16).contains(&i) {
            assert!(
                matches!(
                    r,
                    Err(Error::WorkerDied {
                        signal: Some(9),
                        ..
                    })
                ),
                "item {i}: {r:?}"
            );
        } else {
            assert_eq!(r.as_ref().unwrap(), &(i as u64));
        }
    }
    assert_eq!(pool.apply(double, 8).unwrap(), 16);
}

#[test]
fn terminate_resolves_a_running_task_only_after_its_worker_is_gone() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let gate = common::Gate::new();
    let pid_file = |i: u8| gate.path().with_extension(format!("pid{i}"));
    // Each task writes its worker's pid, then blocks until terminate kills it (the gate never
    // opens).
    let running: Vec<_> = (0..2u8)
        .map(|i| {
            pool.apply_async(
                |(gate, pid_file): (PathBuf, PathBuf)| {
                    std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
                    common::wait_gate(&gate);
                    0u8
                },
                (gate.path(), pid_file(i)),
            )
            .unwrap()
        })
        .collect();
    let pids: Vec<u32> = (0..2u8)
        .map(|i| {
            // Whole, not just created: `fs::write` creates the file, then writes it.
            let whole = || {
                std::fs::read_to_string(pid_file(i))
                    .ok()
                    .and_then(|t| t.parse::<u32>().ok())
            };
            assert!(common::eventually(Duration::from_secs(30), || whole().is_some()));
            whole().unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| pool.terminate());
        for (r, pid) in running.into_iter().zip(pids) {
            assert!(matches!(r.get(), Err(Error::PoolTerminated)));
            // Its worker is gone before the task resolves: memory handed back to the caller
            // (a map_chunks_into output) is never written again.
            assert!(
                !common::exists(pid),
                "worker {pid} still exists after its task resolved"
            );
        }
    });
}

#[test]
fn empty_results_after_a_result_that_fills_the_arena_exactly_do_not_kill_the_worker() {
    let _w = common::arm(60);
    let pool = Pool::builder()
        .processes(1)
        .arena_size(4096)
        .build()
        .unwrap();
    for round in 0..20 {
        // 4094 bytes + a 2-byte length prefix: exactly the 4096-byte result arena.
        let full = pool.apply_async(|_: ()| vec![7u8; 4094], ()).unwrap();
        let empty1 = pool.apply_async(|_: ()| (), ()).unwrap();
        let empty2 = pool.apply_async(|_: ()| (), ()).unwrap();
        assert_eq!(full.get().unwrap().len(), 4094, "round {round}");
        empty1.get().unwrap();
        empty2.get().unwrap();
    }
}

#[test]
fn a_pool_that_breaks_while_a_recycling_worker_holds_queued_tasks_fails_them_all() {
    let _w = common::arm(120);
    // Worker 1's initializer fails late, while worker 0 (replaced after every task) has tasks
    // queued in its ring: once the pool is broken nobody replaces worker 0, and every task must
    // still resolve.
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .initializer(|| {
            if current_worker().unwrap().index() == 1 {
                std::thread::sleep(Duration::from_millis(200));
                panic!("late failure");
            }
        })
        .build()
        .unwrap();
    let mut results: Vec<_> = (0..2000u64)
        .map(|i| {
            pool.apply_async(
                |x: u64| {
                    std::thread::sleep(Duration::from_micros(100));
                    x
                },
                i,
            )
            .unwrap()
        })
        .collect();
    let mut errors = 0;
    for r in &mut results {
        match r.get_timeout(Duration::from_secs(30)) {
            Ok(_) => {}
            Err(Error::Timeout) => panic!("a task was stranded"),
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0, "the initializer failure reached no task");
}

/// Panics on a line of its own, so the test can name it: `PANIC_LINE`.
const PANIC_LINE: u32 = line!() + 3;
fn panics_here(x: u32) -> u32 {
    if x == 3 {
        panic!("three is right out");
    }
    x
}

/// `(file:line:column, backtrace)` of a `TaskPanicked`.
fn site(e: &Error) -> (Option<String>, Option<String>) {
    match e {
        Error::TaskPanicked {
            location,
            backtrace,
            ..
        } => (location.clone(), backtrace.clone()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_task_panic_carries_its_file_and_line_and_a_backtrace_when_asked() {
    let _w = common::arm(90);
    let at = format!("{}:{PANIC_LINE}:", file!());
    let asked = common::scenario().as_deref() == Some("backtrace");
    let pool = Pool::new(1).unwrap();
    for e in [
        pool.apply(panics_here, 3).unwrap_err(),
        pool.map_chunked(panics_here, 0..5, 2).unwrap_err(),
        pool.imap(panics_here, 0..5).nth(3).unwrap().unwrap_err(),
    ] {
        // Display stays one short sentence.
        assert_eq!(
            e.to_string(),
            "task panicked in worker 0: three is right out"
        );
        let (location, backtrace) = site(&e);
        let location = location.expect("a location");
        assert!(location.starts_with(&at), "{location} is not at {at}");
        if asked {
            let bt = backtrace.expect("a backtrace under RUST_BACKTRACE=1");
            assert!(bt.contains("panics_here"), "{bt}");
        } else if std::env::var_os("RUST_BACKTRACE").is_none()
            && std::env::var_os("RUST_LIB_BACKTRACE").is_none()
        {
            assert_eq!(backtrace, None);
        }
    }
    if common::scenario().is_none() {
        // Again in a child copy of this test with RUST_BACKTRACE=1: now with a backtrace.
        let status = common::reexec(
            "a_task_panic_carries_its_file_and_line_and_a_backtrace_when_asked",
            "backtrace",
        )
        .env("RUST_BACKTRACE", "1")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
        assert!(
            status.success(),
            "the RUST_BACKTRACE=1 run failed: {status:?}"
        );
    }
}

/// Its `Deserialize` panics on 4 (in the worker, as an argument), its `Serialize` on 5 (in the
/// worker, as a result).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Touchy(u32);

impl serde::Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 5 {
            panic!("Serialize refuses 5");
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = <u32 as serde::Deserialize>::deserialize(d)?;
        if v == 4 {
            panic!("Deserialize refuses 4");
        }
        Ok(Touchy(v))
    }
}

fn touchy_message(e: &Error) -> &str {
    match e {
        Error::TaskPanicked {
            message, location, ..
        } => {
            assert!(
                location.as_deref().is_some_and(|l| l.starts_with(file!())),
                "{e:?}"
            );
            message
        }
        other => panic!("not a task panic: {other:?}"),
    }
}

#[test]
fn a_panicking_serialize_or_deserialize_in_a_worker_fails_its_task_not_the_worker() {
    let _w = common::arm(90);
    let pool = Pool::new(1).unwrap();
    let before = pool.worker_pids();
    // The argument's `Deserialize` and the result's `Serialize` run in the worker: user code,
    // like the task itself. They used to unwind into the worker loop, which exits on any panic:
    // the task got `WorkerDied` without the message, and the worker was replaced.
    let e = pool.apply(|t: Touchy| t.0, Touchy(4)).unwrap_err();
    assert_eq!(touchy_message(&e), "Deserialize refuses 4");
    let e = pool.apply(Touchy, 5).unwrap_err();
    assert_eq!(touchy_message(&e), "Serialize refuses 5");
    // A chunk is decoded and encoded as a whole: the panic fails the chunk's items only.
    // (5 is left out: the parent could not encode it.)
    let items = [0, 1, 2, 3, 4, 6, 7, 8, 9].map(Touchy);
    let out: Vec<_> = pool.imap(|t: Touchy| t.0, items).chunksize(3).collect();
    assert_eq!(out.len(), 9);
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => assert!(!(3..6).contains(&i) && *v == items[i].0, "{i}: {r:?}"),
            Err(e) => {
                assert!((3..6).contains(&i), "{i}: {e:?}");
                assert_eq!(touchy_message(e), "Deserialize refuses 4");
            }
        }
    }
    let out: Vec<_> = pool.imap(Touchy, 0..9u32).chunksize(3).collect();
    assert_eq!(out.len(), 9);
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => assert!(!(3..6).contains(&i) && v.0 == i as u32, "{i}: {r:?}"),
            Err(e) => assert_eq!(touchy_message(e), "Serialize refuses 5", "{i}"),
        }
    }
    // A bulk chunk's result.
    let v = shmpool::SharedVec::from_slice(&[5u32; 8]).unwrap();
    let e = pool
        .map_chunks(&v, 4, |xs: &[u32]| Touchy(xs[0]))
        .unwrap_err();
    assert_eq!(touchy_message(&e), "Serialize refuses 5");
    assert_eq!(pool.worker_pids(), before, "the worker was replaced");
    assert_eq!(pool.apply(pid, ()).unwrap(), before[0]);
}

#[test]
fn a_panicking_serialize_in_the_parent_is_an_error_and_apply_async_gives_the_argument_back() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    // `Touchy(5)` panics in `Serialize`, on the caller's thread. `map` and `imap` turned that into
    // an error already; `apply_async` let it unwind into the caller, losing the argument.
    let refused = pool.apply_async(|t: Touchy| t.0, Touchy(5)).unwrap_err();
    assert_eq!(refused.value, Touchy(5));
    let Error::Codec { detail } = &refused.error else {
        panic!("{:?}", refused.error)
    };
    assert!(detail.ends_with("Serialize refuses 5"), "{detail}");
    let refused = pool
        .apply_async_with_callback(|t: Touchy| t.0, Touchy(5), |_| unreachable!())
        .unwrap_err();
    assert_eq!(refused.value, Touchy(5));
    assert!(pool.apply(|t: Touchy| t.0, Touchy(5)).is_err());
    let e = pool
        .map_async_chunked(|t: Touchy| t.0, (3..8).map(Touchy), 2)
        .unwrap_err();
    assert!(matches!(e, Error::Codec { .. }), "{e:?}");
    assert_eq!(pool.apply(|t: Touchy| t.0, Touchy(6)).unwrap(), 6);
}
