//! One pool used from many threads at once, and pools built from a busy multi-threaded parent.

mod common;

use shmpool::{Error, Pool, SubmitError};

fn assert_send_sync<T: Send + Sync>() {}

fn mix(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (x >> 7)
}

#[test]
fn pool_and_async_result_are_send_and_sync_where_promised() {
    assert_send_sync::<Pool>();
    fn assert_send<T: Send>() {}
    assert_send::<shmpool::AsyncResult<u64>>();
    assert_send_sync::<Error>();
}

#[test]
fn eight_threads_share_one_pool_and_every_result_is_right() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let pool = &pool;
            s.spawn(move || {
                let base = t * 1_000_000;
                for i in 0..100 {
                    assert_eq!(pool.apply(mix, base + i).unwrap(), mix(base + i));
                }
                let handles: Vec<_> = (0..300)
                    .map(|i| pool.apply_async(mix, base + i).unwrap())
                    .collect();
                for (i, h) in handles.into_iter().enumerate() {
                    assert_eq!(h.get().unwrap(), mix(base + i as u64));
                }
                let want: Vec<u64> = (base..base + 2000).map(mix).collect();
                assert_eq!(pool.map(mix, base..base + 2000).unwrap(), want);
                assert_eq!(
                    pool.map_chunked(mix, base..base + 500, 7).unwrap(),
                    want[..500]
                );
                let got: Vec<u64> = pool
                    .imap(mix, base..base + 1000)
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert_eq!(got, want[..1000]);
                let sums = pool
                    .starmap(|a: u64, b: u64| a + b, vec![(t, 1), (t, 2)])
                    .unwrap();
                assert_eq!(sums, [t + 1, t + 2]);
            });
        }
    });
    pool.close();
    pool.join().unwrap();
}

#[test]
fn closing_while_threads_submit_loses_no_accepted_task() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let accepted = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = &pool;
                let tx = tx.clone();
                s.spawn(move || {
                    let mut accepted = Vec::new();
                    for i in 0.. {
                        let x = t << 32 | i;
                        match pool.apply_async(mix, x) {
                            Ok(h) => accepted.push((x, h)),
                            Err(SubmitError {
                                error: Error::PoolClosed,
                                value,
                            }) => {
                                // The refused argument comes back.
                                assert_eq!(value, x);
                                break;
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                        if i == 50 {
                            let _ = tx.send(());
                        }
                    }
                    accepted
                })
            })
            .collect();
        // Close once every thread has had some tasks accepted.
        for _ in 0..4 {
            rx.recv().unwrap();
        }
        pool.close();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    pool.join().unwrap();
    assert!(accepted.len() >= 4 * 51);
    for (x, h) in accepted {
        assert_eq!(h.get().unwrap(), mix(x));
    }
}

#[test]
fn pools_built_concurrently_from_many_threads_all_work() {
    let _w = common::arm(60);
    std::thread::scope(|s| {
        for t in 0..6u64 {
            s.spawn(move || {
                for round in 0..3u64 {
                    let pool = Pool::new(2).unwrap();
                    let x = t * 100 + round;
                    assert_eq!(pool.apply(mix, x).unwrap(), mix(x));
                    assert_eq!(
                        pool.map(mix, 0..200).unwrap(),
                        (0..200).map(mix).collect::<Vec<_>>()
                    );
                    if round % 2 == 0 {
                        pool.close();
                        pool.join().unwrap();
                    }
                }
            });
        }
    });
}

#[test]
fn a_pool_moved_to_another_thread_works_and_drops_there() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let pids = pool.worker_pids();
    let r = pool.apply_async(mix, 5).unwrap();
    let out = std::thread::spawn(move || {
        let v = pool.map(mix, 0..10).unwrap();
        // Drop terminates: the `apply_async` above may still be running on the other worker
        // when `map` returns, so let it finish first (a terminated task is `PoolTerminated`).
        pool.close();
        pool.join().unwrap();
        drop(pool);
        v
    })
    .join()
    .unwrap();
    assert_eq!(out, (0..10).map(mix).collect::<Vec<_>>());
    assert_eq!(r.get().unwrap(), mix(5));
    for p in pids {
        assert!(!common::exists(p), "worker {p} outlived its pool");
    }
}
