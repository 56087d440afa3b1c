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

/// Workers that exit after every 3 tasks while up to 16 are queued in their rings, fed by many
/// threads at once while the pool goes idle (every budget starts over) and busy again: every
/// result is its own item's, in order, and imap dropped half-way or read lazily loses nothing
/// for the others.
#[test]
fn many_callers_over_short_lived_workers_with_deep_queues_get_every_result_in_order() {
    let _w = common::arm(300);
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(3)
        .build()
        .unwrap();
    teach_fast(&pool);
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let pool = &pool;
            s.spawn(move || {
                for round in 0..8u64 {
                    let base = t * 1_000_000 + round * 1000;
                    let items: Vec<u64> = (base..base + 150).collect();
                    let want: Vec<u64> = items.iter().map(|x| x + 1).collect();
                    match (t + round) % 3 {
                        0 => assert_eq!(pool.map(inc, items).unwrap(), want),
                        1 => {
                            let got: Vec<u64> = pool.imap(inc, items).map(|r| r.unwrap()).collect();
                            assert_eq!(got, want);
                        }
                        _ => {
                            // Half read, the rest dropped.
                            let mut it = pool.imap(inc, items);
                            for w in &want[..75] {
                                assert_eq!(it.next().unwrap().unwrap(), *w);
                            }
                        }
                    }
                    // Now and then everyone is idle for a moment: outstanding hits 0.
                    if round % 3 == 2 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
        }
    });
    assert_eq!(pool.apply(inc, 41).unwrap(), 42);
    pool.close();
    pool.join().unwrap();
}

/// `terminate` from another thread while a map with deep queues is in flight: the map ends with
/// an answer (all results or an error), never a hang, and the pool's processes are gone.
#[test]
fn terminate_during_a_deep_queued_map_answers_the_map() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    teach_fast(&pool);
    let pids = pool.worker_pids();
    std::thread::scope(|s| {
        let pool = &pool;
        let h = s.spawn(move || pool.map(sleep_ms, vec![1u64; 2000]));
        std::thread::sleep(Duration::from_millis(100));
        pool.terminate();
        match h.join().unwrap() {
            Ok(v) => assert_eq!(v.len(), 2000),
            Err(e) => assert!(!matches!(e, Error::InvalidArgument { .. }), "{e:?}"),
        }
    });
    pool.join().unwrap();
    for pid in pids {
        // SAFETY: kill(2) with signal 0 only checks whether the process exists.
        let r = unsafe { libc::kill(pid as i32, 0) };
        assert_eq!(r, -1, "worker {pid} still exists after join");
    }
}
