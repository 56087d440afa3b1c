//! Faults users meet: Ctrl-C, which thread a crash message names, task timeouts, retries.

#![allow(clippy::disallowed_types)] // the parent's SIGINT flag is a plain std atomic (no loom here)

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shmpool::{Error, Pool};

fn double(x: u64) -> u64 {
    x * 2
}

fn sleep_then(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Says it started (creates `started`), then runs until the test opens `gate`.
fn started_then_gated((started, gate): (std::path::PathBuf, std::path::PathBuf)) -> u64 {
    std::fs::write(&started, b"").unwrap();
    common::wait_gate(&gate);
    300
}

static PARENT_GOT_SIGINT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    PARENT_GOT_SIGINT.store(true, Ordering::SeqCst);
}

/// Runs in a child in its own process group: Ctrl-C (SIGINT to the group) reaches the parent's
/// handler, and the workers, the server and the task in flight all carry on.
fn ctrl_c_scenario() {
    // SAFETY: setpgid on ourselves; SIGINT back to its default action (a shell running us in
    // the background may have set it to ignored, which a fork would hand down to the workers).
    unsafe {
        assert_eq!(libc::setpgid(0, 0), 0);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    let pool = Pool::new(2).unwrap();
    // The handler comes after the fork, as in a program that builds its pool first: the workers
    // do not inherit it.
    // SAFETY: an async-signal-safe handler (an atomic store).
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let pids = pool.worker_pids();
    // A task surely in flight when Ctrl-C comes: started, and held until the gate opens. (A
    // 300 ms sleep and a 50 ms pause were not: on a loaded machine the pause outlasted the
    // task, and the check of the handler below then came at once.)
    let (started, gate) = (common::Gate::new(), common::Gate::new());
    let busy = pool
        .apply_async(started_then_gated, (started.path(), gate.path()))
        .unwrap();
    assert!(common::eventually(Duration::from_secs(60), || {
        started.path().exists()
    }));
    // SAFETY: kill(2) on our own process group (this child and the pool's processes).
    assert_eq!(unsafe { libc::kill(0, libc::SIGINT) }, 0);
    // A second Ctrl-C straight at each worker, idle or busy.
    for &p in &pids {
        common::kill(p, libc::SIGINT);
    }
    // The kernel hands a process-directed signal to a thread of its choice, often not this one
    // (the main thread, parked in the test harness), which runs the handler whenever it is
    // next scheduled: wait for that, never assume it has happened by now.
    assert!(
        common::eventually(Duration::from_secs(60), || PARENT_GOT_SIGINT
            .load(Ordering::SeqCst)),
        "the parent's SIGINT handler never ran"
    );
    gate.open();
    assert_eq!(busy.get().unwrap(), 300, "the task in flight is not lost");
    // A killed server would take the workers with it (parent-death signal); give it time.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pool.map(double, 0..100u64).unwrap()[99], 198);
    assert_eq!(pool.worker_pids(), pids, "no worker died or was replaced");
    pool.close();
    pool.join().unwrap();
    println!("ctrl-c ok");
}

#[test]
fn ctrl_c_to_the_process_group_leaves_workers_and_tasks_alone() {
    if common::scenario().as_deref() == Some("ctrl-c") {
        ctrl_c_scenario();
        return;
    }
    let _w = common::arm(120);
    let out = common::reexec(
        "ctrl_c_to_the_process_group_leaves_workers_and_tasks_alone",
        "ctrl-c",
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}", out.status);
    assert!(stdout.contains("ctrl-c ok"), "{stdout}");
}

fn recurse(n: u64) -> u64 {
    let buf = [n; 512];
    std::hint::black_box(&buf);
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1).wrapping_add(std::hint::black_box(buf[7]))
}

fn overflow_stack(_: ()) -> u64 {
    common::no_core_dumps();
    recurse(0)
}

fn my_name(_: ()) -> String {
    std::thread::current().name().unwrap_or("").to_string()
}

fn crash_names_scenario() {
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(my_name, ()).unwrap(), "PoolWorker-1");
    let e = pool
        .apply(|_: ()| -> u64 { panic!("boom in a task") }, ())
        .unwrap_err();
    assert!(matches!(e, Error::TaskPanicked { .. }), "{e:?}");
    let e = pool.apply(overflow_stack, ()).unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e:?}");
    // The replacement is PoolWorker-2.
    assert_eq!(pool.apply(my_name, ()).unwrap(), "PoolWorker-2");
    println!("crash names ok");
}

#[test]
fn panic_and_stack_overflow_messages_name_the_worker_not_a_parent_thread() {
    if common::scenario().as_deref() == Some("crash-names") {
        crash_names_scenario();
        return;
    }
    let _w = common::arm(120);
    let out = common::reexec(
        "panic_and_stack_overflow_messages_name_the_worker_not_a_parent_thread",
        "crash-names",
    )
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("crash names ok"), "{stdout}");
    // std prints `thread '<name>' (<tid>) panicked at ...` (the tid since Rust 1.90).
    let line_with = |what: &str| {
        stderr
            .lines()
            .any(|l| l.starts_with("thread 'PoolWorker-1'") && l.contains(what))
    };
    assert!(line_with("panicked"), "{stderr}");
    assert!(line_with("has overflowed its stack"), "{stderr}");
    assert!(!stderr.contains("shmpool-collector"), "{stderr}");
}

fn stuck(_: ()) -> u64 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `x`, except that 13 never finishes.
fn hang_on_13(x: u64) -> u64 {
    if x == 13 {
        stuck(());
    }
    x
}

#[test]
fn a_task_past_the_pool_time_limit_fails_with_task_timed_out_and_nothing_else_does() {
    let _w = common::arm(120);
    let limit = Duration::from_millis(300);
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(limit)
        .build()
        .unwrap();
    let before = pool.worker_pids();
    let early: Vec<_> = (0..50u64)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let t = std::time::Instant::now();
    let r = pool.apply_async(stuck, ()).unwrap();
    let late: Vec<_> = (50..100u64)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let slow = pool.apply_async(sleep_then, 100).unwrap();
    let e = r.get().unwrap_err();
    // Never before the limit (the generous upper bound lives in the benchmark's figures).
    assert!(t.elapsed() >= limit, "{:?}", t.elapsed());
    let Error::TaskTimedOut {
        worker,
        pid,
        limit: l,
    } = e
    else {
        panic!("unexpected {e:?}")
    };
    assert_eq!(l, limit);
    assert_eq!(before[worker], pid);
    assert_eq!(
        e.to_string(),
        format!(
            "task ran past its time limit of 300ms in worker {worker} (pid {pid}), which was killed"
        )
    );
    for (i, h) in early.into_iter().chain(late).enumerate() {
        assert_eq!(h.get().unwrap(), 2 * i as u64, "task {i}");
    }
    assert_eq!(
        slow.get().unwrap(),
        100,
        "a task under the limit is untouched"
    );
    assert!(common::eventually(Duration::from_secs(30), || {
        let p = pool.worker_pids()[worker];
        p != 0 && p != pid
    }));
    assert!(common::eventually(Duration::from_secs(30), || {
        !common::exists(pid)
    }));
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_per_call_time_limit_applies_to_that_task_only() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let r = pool
        .apply_async_timeout(stuck, (), Duration::from_millis(200))
        .unwrap();
    let ok = pool
        .apply_async_timeout(sleep_then, 50, Duration::from_secs(60))
        .unwrap();
    let plain = pool.apply_async(sleep_then, 400).unwrap();
    assert!(matches!(
        r.get(),
        Err(Error::TaskTimedOut { limit, .. }) if limit == Duration::from_millis(200)
    ));
    assert_eq!(ok.get().unwrap(), 50);
    assert_eq!(plain.get().unwrap(), 400, "untimed tasks have no limit");
    assert!(matches!(
        pool.apply_async_timeout(double, 1, Duration::ZERO),
        Err(shmpool::SubmitError {
            error: Error::InvalidArgument { .. },
            value: 1
        })
    ));
    assert!(matches!(
        Pool::builder().task_timeout(Duration::ZERO).build(),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn a_time_limit_fails_the_whole_chunk_and_only_that_chunk() {
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let e = pool.map_chunked(hang_on_13, 0..40u64, 4).unwrap_err();
    assert!(matches!(e, Error::TaskTimedOut { .. }), "{e:?}");
    let out: Vec<_> = pool.imap(hang_on_13, 0..40u64).chunksize(4).collect();
    for (i, r) in out.iter().enumerate() {
        if (12..16).contains(&i) {
            assert!(matches!(r, Err(Error::TaskTimedOut { .. })), "{i}: {r:?}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
}

/// Kills its own worker with SIGKILL (not the timer's).
fn sigkill_self(_: ()) -> u64 {
    // SAFETY: kill(2) on this very worker, whose death the test wants.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!()
}

#[test]
fn a_sigkill_before_the_limit_is_a_worker_death_not_a_timeout() {
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let e = pool.apply(sigkill_self, ()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WorkerDied {
                signal: Some(9),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
}

/// Counts its runs in the file `path` (workers share the file system, not memory) and kills its
/// worker on the first `deaths` runs; returns the number of runs.
fn die_then_succeed((path, deaths): (std::path::PathBuf, u64)) -> u64 {
    let runs = std::fs::read_to_string(&path)
        .map(|s| s.len() as u64)
        .unwrap_or(0)
        + 1;
    std::fs::write(&path, "x".repeat(runs as usize)).unwrap();
    if runs <= deaths {
        // SAFETY: kill(2) on this very worker, whose death the test wants.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    runs
}

fn runs_file() -> (common::Gate, std::path::PathBuf) {
    let g = common::Gate::new();
    let p = g.path();
    (g, p)
}

#[test]
fn retries_run_a_task_again_after_its_worker_dies() {
    let _w = common::arm(120);
    let pool = Pool::builder().processes(2).retries(2).build().unwrap();
    let (_g, path) = runs_file();
    assert_eq!(pool.apply(die_then_succeed, (path.clone(), 2)).unwrap(), 3);
    // Two deaths and a third run: the third death is final.
    let (_g2, path2) = runs_file();
    let e = pool
        .apply(die_then_succeed, (path2.clone(), 3))
        .unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e:?}");
    assert_eq!(std::fs::read_to_string(&path2).unwrap().len(), 3);
    // Other tasks were never disturbed.
    assert_eq!(pool.map(double, 0..100u64).unwrap()[99], 198);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn without_retries_a_death_is_final_and_panics_and_timeouts_are_never_retried() {
    let _w = common::arm(120);
    let pool = Pool::new(1).unwrap();
    let (_g, path) = runs_file();
    let e = pool.apply(die_then_succeed, (path.clone(), 1)).unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 1);

    // No time limit here: printing a panic with RUST_BACKTRACE set can take longer than one.
    let pool = Pool::builder().processes(1).retries(3).build().unwrap();
    let (_g, path) = runs_file();
    let e = pool
        .apply(
            |p: std::path::PathBuf| -> u64 {
                std::fs::write(&p, "x").unwrap();
                panic!("no retry for me")
            },
            path.clone(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::TaskPanicked { .. }), "{e:?}");
    let pool = Pool::builder()
        .processes(1)
        .retries(3)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (_g3, path3) = runs_file();
    let e = pool
        .apply(
            |p: std::path::PathBuf| -> u64 {
                let n = std::fs::read_to_string(&p).map_or(0, |s| s.len());
                std::fs::write(&p, "x".repeat(n + 1)).unwrap();
                stuck(())
            },
            path3.clone(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::TaskTimedOut { .. }), "{e:?}");
    assert_eq!(std::fs::read_to_string(&path3).unwrap().len(), 1);
}
