//! A worker's ring holds up to 16 queued tasks (`pool::dispatch`: the depth limit, and the
//! per-worker budget that can grow it to 16 ms of queued work): what a deep queue must not
//! change. A task's time limit counts from when its worker starts it, a death fails only the
//! task that was running, and the tasks queued behind it run in the replacement.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shmpool::{Error, Pool};

fn inc(x: u64) -> u64 {
    x + 1
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Kills its own worker on item 13.
fn double_but_die_on_13(x: u64) -> u64 {
    if x == 13 {
        // SAFETY: kill(2) on this very worker, whose death the test wants.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x * 2
}

/// Says it started (creates `path`), then sleeps a minute: only a kill ends it early.
fn announce_then_sleep(path: PathBuf) -> u64 {
    std::fs::write(&path, b"started").unwrap();
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// Fast tasks teach the pool a task time of microseconds: what follows is queued deep.
fn teach_fast(pool: &Pool) {
    for i in 0..200 {
        assert_eq!(pool.apply(inc, i).unwrap(), i + 1);
    }
}

#[test]
fn a_task_queued_behind_slow_ones_gets_its_whole_time_limit_from_when_it_starts() {
    let _w = common::arm(120);
    let limit = Duration::from_millis(300);
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(limit)
        .build()
        .unwrap();
    teach_fast(&pool);
    let submitted = Instant::now();
    // 400 ms of work, each task well within its limit, then a fast one behind them.
    let slow: Vec<_> = (0..4)
        .map(|_| pool.apply_async(sleep_ms, 100).unwrap())
        .collect();
    let last = pool.apply_async(inc, 7).unwrap();
    assert_eq!(last.get().unwrap(), 8);
    assert!(
        submitted.elapsed() >= limit,
        "the premise: the last task waited longer than its limit before it ran"
    );
    for s in slow {
        assert_eq!(s.get().unwrap(), 100);
    }
}

#[test]
fn a_worker_that_kills_itself_with_a_deep_queue_fails_only_its_task() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    teach_fast(&pool);
    let rs: Vec<_> = (0..64u64)
        .map(|i| pool.apply_async(double_but_die_on_13, i).unwrap())
        .collect();
    for (i, r) in (0u64..).zip(rs) {
        let got = r.get();
        if i == 13 {
            assert!(
                matches!(
                    got,
                    Err(Error::WorkerDied {
                        signal: Some(9),
                        ..
                    })
                ),
                "{got:?}"
            );
        } else {
            assert_eq!(got.unwrap(), 2 * i, "item {i}");
        }
    }
    pool.close();
    pool.join().unwrap();
}

#[test]
fn tasks_queued_behind_a_task_whose_worker_is_killed_from_outside_run_in_the_replacement() {
    let _w = common::arm(120);
    let pool = Pool::new(1).unwrap();
    teach_fast(&pool);
    let gate = common::Gate::new();
    let stuck = pool.apply_async(announce_then_sleep, gate.path()).unwrap();
    let queued: Vec<_> = (0..15u64)
        .map(|i| pool.apply_async(inc, i).unwrap())
        .collect();
    assert!(
        common::eventually(Duration::from_secs(30), || gate.path().exists()),
        "the slow task never started"
    );
    let victim = pool.worker_pids()[0];
    common::kill(victim, libc::SIGKILL);
    let e = stuck.get().unwrap_err();
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
    for (i, r) in (0u64..).zip(queued) {
        assert_eq!(r.get().unwrap(), i + 1, "item {i}");
    }
    assert_ne!(pool.worker_pids()[0], victim);
    pool.close();
    pool.join().unwrap();
}
