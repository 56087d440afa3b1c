//! Attacks on the window of chunks `map_chunks` and `map_chunks_into` keep in flight (each
//! chunk's completion submits the next one): concurrent callers, panicking decoders, dead and
//! replaced workers, `terminate` and `close` from other threads, window boundaries, odd chunk
//! lengths, and the shares of a dropped `MappedFile`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmpool::{Error, MappedFile, Pool, SharedVec};

/// Chunks a chunk map keeps in flight per worker (`WINDOW_PER_WORKER` in src/bulk/chunks.rs).
const WINDOW_PER_WORKER: usize = 20;

fn triple_plus_one(s: &[u32]) -> u64 {
    s.iter().map(|&x| u64::from(x) * 3 + 1).sum()
}

fn square_into(s: &[u32], d: &mut [u64]) {
    for (d, &x) in d.iter_mut().zip(s) {
        *d = u64::from(x) * u64::from(x);
    }
}

#[test]
fn many_threads_running_chunk_maps_with_thousands_of_chunks_on_one_pool_get_exact_results() {
    let _w = common::arm(400);
    let pool = Pool::new(3).unwrap();
    std::thread::scope(|scope| {
        for t in 0..6u32 {
            let pool = &pool;
            scope.spawn(move || {
                for round in 0..3u32 {
                    let n = 2_000 + 131 * t + round;
                    let base = t * 100_000 + round * 10_000;
                    let v: SharedVec<u32> = (base..base + n).collect();
                    // Chunks of 1 and of 3 (a short last chunk).
                    for len in [1usize, 3] {
                        let got = pool.map_chunks(&v, len, triple_plus_one).unwrap();
                        let want: Vec<u64> = v.chunks(len).map(triple_plus_one).collect();
                        assert_eq!(got, want, "thread {t} round {round} chunk_len {len}");
                    }
                    let mut out = SharedVec::<u64>::zeroed(n as usize).unwrap();
                    pool.map_chunks_into(&v, &mut out, 2, square_into).unwrap();
                    assert!(
                        out.iter()
                            .zip(v.iter())
                            .all(|(&o, &x)| o == u64::from(x) * u64::from(x)),
                        "thread {t} round {round}: map_chunks_into"
                    );
                }
            });
        }
    });
    assert_eq!(
        pool.map_chunks(&SharedVec::from_slice(&[5u32]).unwrap(), 1, triple_plus_one)
            .unwrap(),
        [16]
    );
}

/// A result whose `Deserialize` (run in the parent) panics for values that are multiples of
/// 1,000 plus 999.
#[derive(Debug, PartialEq, Serialize)]
struct Picky(u32);

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let x = u32::deserialize(d)?;
        if x % 1_000 == 999 {
            panic!("picky about {x}");
        }
        Ok(Picky(x))
    }
}

fn picky(s: &[u32]) -> Picky {
    Picky(s[0])
}

/// Chunk 5 (value 5) fails late, in the worker, after chunks up to the window's end failed in
/// the parent's decoder: chunk 5's error is still the one returned.
fn slow_panic_at_5(s: &[u32]) -> Picky {
    if s[0] == 5 {
        std::thread::sleep(Duration::from_millis(300));
        panic!("chunk 5 fails late");
    }
    Picky(s[0])
}

#[test]
fn a_panicking_result_decoder_fails_its_chunk_and_the_first_failure_in_input_order_wins() {
    let _w = common::arm(300);
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let pool = &pool;
            scope.spawn(move || {
                let v: SharedVec<u32> = (0..5_000).collect();
                let e = pool.map_chunks(&v, 1, picky).unwrap_err();
                let msg = e.to_string();
                assert!(matches!(e, Error::Codec { .. }), "thread {t}: {e:?}");
                assert!(msg.contains("picky about 999"), "thread {t}: {msg}");
                // Values 0..998 decode fine.
                let ok: SharedVec<u32> = (0..999).collect();
                let got = pool.map_chunks(&ok, 1, picky).unwrap();
                assert!(got.iter().enumerate().all(|(i, p)| p.0 == i as u32));
            });
        }
    });
    // Chunk 5 fails after every value 999 (chunk 30) decoded: input order, not time, decides.
    let mut vals: Vec<u32> = (0..2 * WINDOW_PER_WORKER as u32).collect();
    vals[30] = 1_999;
    let v = SharedVec::from_slice(&vals).unwrap();
    let e = pool.map_chunks(&v, 1, slow_panic_at_5).unwrap_err();
    assert!(e.to_string().contains("chunk 5 fails late"), "{e}");
    // The pool and its threads go on.
    assert_eq!(pool.map_chunks(&v, 40, |s: &[u32]| s.len()).unwrap(), [40]);
}

fn panic_with_first(s: &[u32]) -> u32 {
    panic!("chunk of {} fails", s[0]);
}

#[test]
fn a_chunk_map_whose_every_chunk_fails_returns_the_first_chunks_error() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let v: SharedVec<u32> = (0..5_000).collect();
    for _ in 0..3 {
        let e = pool.map_chunks(&v, 1, panic_with_first).unwrap_err();
        assert!(matches!(e, Error::TaskPanicked { .. }), "{e:?}");
        assert!(e.to_string().ends_with("chunk of 0 fails"), "{e}");
        let mut out = SharedVec::<u64>::zeroed(5_000).unwrap();
        let e = pool
            .map_chunks_into(&v, &mut out, 7, |s: &[u32], _: &mut [u64]| {
                panic!("into {} fails", s[0]);
            })
            .unwrap_err();
        assert!(e.to_string().ends_with("into 0 fails"), "{e}");
    }
    assert_eq!(
        pool.map_chunks(&v, 2_500, |s: &[u32]| s.len()).unwrap(),
        [2_500; 2]
    );
}

fn first_or_panic_at_marker(s: &[u32]) -> u32 {
    if s[0] == u32::MAX {
        panic!("the marked chunk");
    }
    s[0]
}

#[test]
fn inputs_of_exactly_a_window_and_one_more_chunk_keep_every_result_and_the_last_chunks_error() {
    let _w = common::arm(120);
    for processes in [1usize, 2, 3] {
        let pool = Pool::new(processes).unwrap();
        let window = WINDOW_PER_WORKER * processes;
        for n in [
            1,
            window - 1,
            window,
            window + 1,
            2 * window,
            2 * window + 1,
        ] {
            let v: SharedVec<u32> = (0..n as u32).collect();
            let got = pool.map_chunks(&v, 1, first_or_panic_at_marker).unwrap();
            assert_eq!(
                got,
                (0..n as u32).collect::<Vec<_>>(),
                "{processes} workers, {n} chunks"
            );
            // The last chunk fails: the first submitted by a completion when n > window.
            let mut vals: Vec<u32> = (0..n as u32).collect();
            vals[n - 1] = u32::MAX;
            let v = SharedVec::from_slice(&vals).unwrap();
            let e = pool
                .map_chunks(&v, 1, first_or_panic_at_marker)
                .unwrap_err();
            assert!(
                e.to_string().ends_with("the marked chunk"),
                "{processes}/{n}: {e}"
            );
            let mut out = SharedVec::<u64>::zeroed(n).unwrap();
            pool.map_chunks_into(&v, &mut out, 1, |s: &[u32], d: &mut [u64]| {
                d[0] = u64::from(s[0]) + 1;
            })
            .unwrap();
            assert!(out.iter().zip(&vals).all(|(&o, &x)| o == u64::from(x) + 1));
        }
    }
}

#[test]
fn odd_chunk_lengths_and_empty_inputs_on_a_closed_pool() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let v: SharedVec<u32> = (0..1_000).collect();
    let total: u64 = v.iter().map(|&x| u64::from(x) * 3 + 1).sum();
    assert_eq!(
        pool.map_chunks(&v, usize::MAX, triple_plus_one).unwrap(),
        [total]
    );
    assert_eq!(
        pool.map_chunks(&v, 1_001, triple_plus_one).unwrap(),
        [total]
    );
    assert_eq!(
        pool.map_chunks(&v, 999, |s: &[u32]| s.len()).unwrap(),
        [999, 1]
    );
    let mut out = SharedVec::<u64>::zeroed(1_000).unwrap();
    pool.map_chunks_into(&v, &mut out, usize::MAX, square_into)
        .unwrap();
    assert_eq!(out[999], 999 * 999);
    assert!(matches!(
        pool.map_chunks(&v, 0, |s: &[u32]| s.len()),
        Err(Error::InvalidArgument { .. })
    ));
    let empty = SharedVec::<u32>::zeroed(0).unwrap();
    assert_eq!(
        pool.map_chunks(&empty, usize::MAX, |s: &[u32]| s.len())
            .unwrap(),
        Vec::<usize>::new()
    );
    pool.close();
    assert!(matches!(
        pool.map_chunks(&empty, 1, |s: &[u32]| s.len()),
        Err(Error::PoolClosed)
    ));
    let mut none = SharedVec::<u64>::zeroed(0).unwrap();
    assert!(matches!(
        pool.map_chunks_into(&empty, &mut none, 1, square_into),
        Err(Error::PoolClosed)
    ));
    // A closed pool refuses the call before any chunk runs.
    let mut out = SharedVec::<u64>::zeroed(1_000).unwrap();
    assert!(matches!(
        pool.map_chunks_into(&v, &mut out, 1, square_into),
        Err(Error::PoolClosed)
    ));
    assert!(out.iter().all(|&x| x == 0), "a chunk ran on a closed pool");
    pool.join().unwrap();
}

/// Sleeps a little; kills its own worker at the chunk holding `u32::MAX`, the first time only
/// (the marker file, named by the chunk's second element, says whether it did already).
fn die_once_at_marker(s: &[u32]) -> u32 {
    if s[0] == u32::MAX {
        let marker = std::env::temp_dir().join(format!("shmpool-feeder-die-{}", s[1]));
        if !marker.exists() {
            std::fs::write(&marker, b"").unwrap();
            common::no_core_dumps();
            // SAFETY: kills this worker process on purpose.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        return 0;
    }
    std::thread::sleep(Duration::from_micros(50));
    s[0]
}

fn marked_input(n: usize, at: usize, tag: u32) -> Vec<u32> {
    let mut vals: Vec<u32> = (0..n as u32).collect();
    vals[at] = u32::MAX;
    vals[at + 1] = tag;
    vals
}

#[test]
fn a_worker_killing_itself_mid_call_fails_that_chunk_and_retries_or_replacements_finish_it() {
    let _w = common::arm(300);
    let tag = std::process::id();
    let marker = std::env::temp_dir().join(format!("shmpool-feeder-die-{tag}"));
    let _ = std::fs::remove_file(&marker);
    // No retries: the dying chunk's error (and nothing hangs, the pool goes on).
    let pool = Pool::new(2).unwrap();
    let vals = marked_input(6_000, 3_000, tag);
    let v = SharedVec::from_slice(&vals).unwrap();
    let e = pool.map_chunks(&v, 2, die_once_at_marker).unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e:?}");
    assert_eq!(
        pool.map_chunks(&v, 3_000, |s: &[u32]| s.len()).unwrap(),
        [3_000, 3_000]
    );
    std::fs::remove_file(&marker).unwrap();
    drop(pool);
    // One retry, and workers replaced every 7 tasks: every chunk's result, exactly.
    let pool = Pool::builder()
        .processes(2)
        .retries(1)
        .max_tasks_per_child(7)
        .build()
        .unwrap();
    let got = pool.map_chunks(&v, 2, die_once_at_marker).unwrap();
    let want: Vec<u32> = vals
        .chunks(2)
        .map(|c| if c[0] == u32::MAX { 0 } else { c[0] })
        .collect();
    assert_eq!(got, want);
    let mut out = SharedVec::<u64>::zeroed(vals.len()).unwrap();
    pool.map_chunks_into(&v, &mut out, 3, square_into).unwrap();
    assert!(
        out.iter()
            .zip(&vals)
            .all(|(&o, &x)| o == u64::from(x) * u64::from(x))
    );
    let _ = std::fs::remove_file(&marker);
}

/// The marker chunk 100 of [`sleepy`] writes for test `tag`.
fn running_marker(tag: u32) -> PathBuf {
    std::env::temp_dir().join(format!("shmpool-feeder-running-{tag}"))
}

/// `n` chunks of `[i, tag]` for [`sleepy`]; `k` tells the tests of one process apart.
fn sleepy_input(n: u32, k: u32) -> (SharedVec<u32>, u32) {
    let tag = std::process::id() + (k << 23);
    let _ = std::fs::remove_file(running_marker(tag));
    let vals: Vec<u32> = (0..n).flat_map(|i| [i, tag]).collect();
    (SharedVec::from_slice(&vals).unwrap(), tag)
}

/// Chunks of `[i, tag]`: each sleeps 200 µs and returns `i`; chunk 100 first writes its test's
/// marker (the call is under way, with chunks coming from completions).
fn sleepy(s: &[u32]) -> u32 {
    if s[0] == 100 {
        std::fs::write(running_marker(s[1]), b"").unwrap();
    }
    std::thread::sleep(Duration::from_micros(200));
    s[0]
}

/// Waits until chunk 100 of test `tag` ran.
fn wait_running(tag: u32) {
    assert!(
        common::eventually(Duration::from_secs(60), || running_marker(tag).exists()),
        "chunk 100 never ran"
    );
    let _ = std::fs::remove_file(running_marker(tag));
}

#[test]
fn workers_killed_from_outside_mid_call_give_worker_died_or_with_retries_every_result() {
    let _w = common::arm(300);
    for retries in [0u32, 3] {
        let pool = Pool::builder()
            .processes(2)
            .retries(retries)
            .build()
            .unwrap();
        let (v, tag) = sleepy_input(20_000, 5 + retries);
        let got = std::thread::scope(|scope| {
            let call = scope.spawn(|| pool.map_chunks(&v, 2, sleepy));
            wait_running(tag);
            for _ in 0..3 {
                // 0 for a seat whose worker is being replaced: kill(0) would hit this
                // process group (the test binary and whatever started it).
                for pid in pool.worker_pids().into_iter().filter(|&p| p != 0) {
                    // It may be gone already (replaced); a dead pid is harmless to try.
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            call.join().unwrap()
        });
        match (retries, got) {
            (0, Err(Error::WorkerDied { signal, .. })) => assert_eq!(signal, Some(libc::SIGKILL)),
            (0, other) => panic!("no retries: {:?}", other.map(|v| v.len())),
            (_, Ok(got)) => assert_eq!(got, (0..20_000).collect::<Vec<u32>>()),
            (_, Err(e)) => panic!("with retries: {e:?}"),
        }
        assert_eq!(
            pool.map_chunks(&v, 20_000, |s: &[u32]| s.len()).unwrap(),
            [20_000; 2]
        );
    }
}

fn spin_at_marker(s: &[u32]) -> u32 {
    if s[0] == u32::MAX {
        loop {
            std::hint::spin_loop();
        }
    }
    s[0]
}

#[test]
fn a_chunk_past_the_pools_time_limit_fails_the_call_with_task_timed_out() {
    let _w = common::arm(200);
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let vals = marked_input(4_000, 2_500, 0);
    let v = SharedVec::from_slice(&vals).unwrap();
    let e = pool.map_chunks(&v, 1, spin_at_marker).unwrap_err();
    assert!(matches!(e, Error::TaskTimedOut { .. }), "{e:?}");
    assert_eq!(
        pool.map_chunks(&v, 2_000, |s: &[u32]| s.len()).unwrap(),
        [2_000; 2]
    );
}

/// The marker a chunk stuck by [`stuck_from_200`] writes for test `tag`.
fn stuck_marker(tag: u32) -> PathBuf {
    std::env::temp_dir().join(format!("shmpool-feeder-stuck-{tag}"))
}

/// Chunks of `[i, tag]`: from `i = 200` on, each writes its test's marker and never ends (until
/// `terminate` kills its worker).
fn stuck_from_200(s: &[u32]) -> u32 {
    if s[0] >= 200 {
        std::fs::write(stuck_marker(s[1]), b"").unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    s[0]
}

/// `n` chunks of `[i, tag]` for [`stuck_from_200`]; `k` tells the tests of one process apart.
fn stuck_input(n: u32, k: u32) -> (SharedVec<u32>, u32) {
    let tag = std::process::id() + (k << 23);
    let _ = std::fs::remove_file(stuck_marker(tag));
    let vals: Vec<u32> = (0..n).flat_map(|i| [i, tag]).collect();
    (SharedVec::from_slice(&vals).unwrap(), tag)
}

/// Waits until a chunk of test `tag` is stuck: the call is well under way, its first window
/// accepted and later chunks submitted by completions.
fn wait_stuck(tag: u32) {
    assert!(
        common::eventually(Duration::from_secs(60), || stuck_marker(tag).exists()),
        "no chunk got stuck"
    );
}

#[test]
fn terminate_from_another_thread_ends_a_long_chunk_map_with_an_error_and_leaves_no_process() {
    let _w = common::arm(200);
    // Once with map_chunks, once with map_chunks_into, each on a pool of its own (two calls on
    // one pool: the first one's stuck chunks can hold every worker before the second starts).
    for into in [false, true] {
        let pool = Pool::new(2).unwrap();
        let pids = pool.worker_pids();
        let server = common::ppid_of(pids[0]).unwrap();
        let (v, tag) = stuck_input(25_000, if into { 4 } else { 1 });
        let r = std::thread::scope(|scope| {
            let call = scope.spawn(|| {
                if into {
                    let mut out = SharedVec::<u64>::zeroed(v.len()).unwrap();
                    pool.map_chunks_into(&v, &mut out, 2, |s: &[u32], d: &mut [u64]| {
                        d[0] = u64::from(stuck_from_200(s));
                    })
                } else {
                    pool.map_chunks(&v, 2, stuck_from_200).map(|_| ())
                }
            });
            wait_stuck(tag);
            pool.terminate();
            call.join().unwrap()
        });
        let _ = std::fs::remove_file(stuck_marker(tag));
        assert!(
            matches!(r, Err(Error::PoolTerminated)),
            "into: {into}: {r:?}"
        );
        drop(pool);
        for pid in pids.into_iter().chain([server]) {
            assert!(common::dead(pid), "process {pid} outlived the pool");
        }
    }
}

#[test]
fn two_terminates_racing_a_long_chunk_map_end_it_with_pool_terminated() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let (v, tag) = stuck_input(10_000, 2);
    let r = std::thread::scope(|scope| {
        let a = scope.spawn(|| pool.map_chunks(&v, 2, stuck_from_200));
        wait_stuck(tag);
        let t = scope.spawn(|| pool.terminate());
        pool.terminate();
        t.join().unwrap();
        a.join().unwrap()
    });
    let _ = std::fs::remove_file(stuck_marker(tag));
    assert!(
        matches!(r, Err(Error::PoolTerminated)),
        "{:?}",
        r.map(|v| v.len())
    );
    assert!(matches!(
        pool.map_chunks(&v, 1, |s: &[u32]| s[0]),
        Err(Error::PoolClosed)
    ));
}

/// Appends one byte to the file named in the chunk's environment-free input: the file is
/// `shmpool-feeder-count-<second element>` in the temp dir; each chunk sleeps 100 µs first.
fn count_chunk(s: &[u32]) -> usize {
    use std::io::Write;
    std::thread::sleep(Duration::from_micros(100));
    let path = std::env::temp_dir().join(format!("shmpool-feeder-count-{}", s[1]));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(b"x").unwrap();
    s.len()
}

#[test]
fn close_and_join_from_another_thread_mid_call_let_every_chunk_run_before_join_returns() {
    let _w = common::arm(300);
    let tag = std::process::id();
    let path = std::env::temp_dir().join(format!("shmpool-feeder-count-{tag}"));
    let _ = std::fs::remove_file(&path);
    let pool = Pool::new(2).unwrap();
    // Chunks of 2 elements, each [i, tag]: 3,000 per call, two calls.
    let vals: Vec<u32> = (0..3_000u32).flat_map(|i| [i, tag]).collect();
    let v = SharedVec::from_slice(&vals).unwrap();
    let (r1, r2, counted) = std::thread::scope(|scope| {
        let a = scope.spawn(|| pool.map_chunks(&v, 2, count_chunk));
        let b = scope.spawn(|| {
            let mut out = SharedVec::<u64>::zeroed(vals.len()).unwrap();
            pool.map_chunks_into(&v, &mut out, 2, |s: &[u32], d: &mut [u64]| {
                d[0] = count_chunk(s) as u64;
            })
            .map(|()| out.iter().step_by(2).all(|&x| x == 2))
        });
        assert!(
            common::eventually(Duration::from_secs(60), || std::fs::metadata(&path)
                .is_ok_and(|m| m.len() >= 100)),
            "no chunk ran"
        );
        pool.close();
        pool.join().unwrap();
        // Join returned: every chunk of both calls has run.
        let counted = std::fs::metadata(&path).unwrap().len();
        (a.join().unwrap(), b.join().unwrap(), counted)
    });
    let _ = std::fs::remove_file(&path);
    assert_eq!(counted, 6_000, "join returned before every chunk ran");
    assert_eq!(r1.unwrap(), vec![2; 3_000]);
    assert!(r2.unwrap());
}

/// Whether process `pid` holds an fd of a file whose path contains `name`.
fn holds_file(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .any(|target| target.to_string_lossy().contains(name))
        })
        .unwrap_or(false)
}

fn byte_sum(s: &[u8]) -> u64 {
    std::thread::sleep(Duration::from_micros(20));
    s.iter().map(|&b| u64::from(b)).sum()
}

fn byte_sum_or_panic(s: &[u8]) -> u64 {
    if s[0] == 9 {
        panic!("a 9");
    }
    byte_sum(s)
}

#[test]
fn a_mapped_file_dropped_right_after_a_chunk_map_is_held_by_no_worker_after_the_next_call() {
    let _w = common::arm(300);
    let pool = Pool::new(2).unwrap();
    let v = SharedVec::from_slice(&[1u8; 4096]).unwrap();
    let dir = std::env::temp_dir();
    // (file bytes, whether the map over the file fails)
    let cases: [(Vec<u8>, bool); 3] = [
        (vec![2u8; 100_000], false),
        (
            {
                let mut b = vec![2u8; 100_000];
                b[50_000] = 9;
                b
            },
            true,
        ),
        (
            {
                let mut b = vec![2u8; 100_000];
                b[0] = 9;
                b
            },
            true,
        ),
    ];
    for (k, (bytes, fails)) in cases.into_iter().enumerate() {
        let name = format!("shmpool-feeder-file-{}-{k}", std::process::id());
        let path: PathBuf = dir.join(&name);
        std::fs::write(&path, &bytes).unwrap();
        // SAFETY: the test's own temporary file; nothing modifies it while it is mapped.
        let file = unsafe { MappedFile::open(&path) }.unwrap();
        // 100 bytes a chunk: 1,000 chunks, far more than the window.
        let r = pool.map_chunks(&file, 100, byte_sum_or_panic);
        assert_eq!(r.is_err(), fails, "case {k}");
        if let Ok(sums) = r {
            assert_eq!(sums, vec![200; 1_000]);
        }
        drop(file);
        std::fs::remove_file(&path).unwrap();
        // The next call reaches every worker (many chunks of 20 µs each): their dispatches
        // carry the FORGET of the file's segment.
        assert_eq!(pool.map_chunks(&v, 16, byte_sum).unwrap(), vec![16; 256]);
        for pid in pool.worker_pids() {
            assert!(
                !holds_file(pid, &name),
                "case {k}: worker {pid} still holds the dropped file"
            );
        }
    }
}

thread_local! {
    static IS_CALLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Values of `Tracked` dropped on a thread other than a test's calling thread.
static DROPPED_ELSEWHERE: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// A result that counts where it is dropped (its `Drop` is user code, which may panic: on a
/// pool thread, that would unwind through the pool).
#[derive(Debug, Serialize, Deserialize)]
struct Tracked(u32);

impl Drop for Tracked {
    fn drop(&mut self) {
        if !IS_CALLER.with(|c| c.get()) {
            *DROPPED_ELSEWHERE.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
    }
}

fn tracked_or_panic_at_marker(s: &[u32]) -> Tracked {
    if s[0] == u32::MAX {
        panic!("the marked chunk");
    }
    Tracked(s[0])
}

#[test]
fn the_results_of_a_failed_chunk_map_are_dropped_on_the_callers_thread() {
    let _w = common::arm(300);
    IS_CALLER.with(|c| c.set(true));
    let pool = Pool::new(1).unwrap();
    // The last chunk fails: every other chunk's result is kept until the call returns.
    let v = SharedVec::from_slice(&marked_input(41, 39, 0)).unwrap();
    for _ in 0..300 {
        let e = pool
            .map_chunks(&v, 1, tracked_or_panic_at_marker)
            .unwrap_err();
        assert!(e.to_string().ends_with("the marked chunk"), "{e}");
    }
    assert_eq!(
        *DROPPED_ELSEWHERE.lock().unwrap(),
        0,
        "results of a failed map_chunks were dropped on a pool thread"
    );
}

#[test]
fn a_fork_server_killed_mid_call_fails_a_long_chunk_map_with_pool_broken() {
    let _w = common::arm(200);
    let pool = Pool::new(2).unwrap();
    let workers = pool.worker_pids();
    let server = common::ppid_of(workers[0]).unwrap();
    let (v, tag) = sleepy_input(20_000, 10);
    let (w, tag_w) = sleepy_input(20_000, 11);
    let (r1, r2) = std::thread::scope(|scope| {
        let a = scope.spawn(|| pool.map_chunks(&v, 2, sleepy));
        let b = scope.spawn(|| {
            let mut out = SharedVec::<u64>::zeroed(w.len()).unwrap();
            pool.map_chunks_into(&w, &mut out, 2, |s: &[u32], d: &mut [u64]| {
                d[0] = u64::from(sleepy(s));
            })
        });
        // Both calls are under way, far from their end.
        wait_running(tag);
        wait_running(tag_w);
        common::kill(server, libc::SIGKILL);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        matches!(r1, Err(Error::PoolBroken { .. })),
        "{:?}",
        r1.map(|v| v.len())
    );
    assert!(matches!(r2, Err(Error::PoolBroken { .. })), "{r2:?}");
    assert!(matches!(
        pool.map_chunks(&v, 2, sleepy),
        Err(Error::PoolBroken { .. })
    ));
    for w in workers {
        assert!(common::dead(w), "worker {w} outlived its fork server");
    }
}

#[test]
fn a_fresh_worker_for_every_chunk_still_gives_every_result() {
    let _w = common::arm(300);
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let v: SharedVec<u32> = (0..300).collect();
    let got = pool.map_chunks(&v, 1, triple_plus_one).unwrap();
    assert_eq!(got, (0..300u64).map(|x| x * 3 + 1).collect::<Vec<_>>());
    let mut out = SharedVec::<u64>::zeroed(300).unwrap();
    pool.map_chunks_into(&v, &mut out, 1, square_into).unwrap();
    assert!(out.iter().enumerate().all(|(i, &o)| o == (i * i) as u64));
}

#[test]
fn terminate_amid_many_callers_ends_every_call_and_none_hangs() {
    let _w = common::arm(300);
    let pool = Pool::new(3).unwrap();
    let (stuck, tag) = stuck_input(5_000, 3);
    std::thread::scope(|scope| {
        let mut calls = Vec::new();
        for _ in 0..3 {
            calls.push(scope.spawn(|| pool.map_chunks(&stuck, 2, stuck_from_200).map(|_| ())));
        }
        for t in 0..3u32 {
            let pool = &pool;
            calls.push(scope.spawn(move || {
                let v: SharedVec<u32> = (t..t + 3_000).collect();
                // Until terminate refuses or fails one.
                loop {
                    let got = pool.map_chunks(&v, 1, triple_plus_one)?;
                    assert_eq!(
                        got,
                        v.iter().map(|&x| u64::from(x) * 3 + 1).collect::<Vec<_>>()
                    );
                }
            }));
        }
        wait_stuck(tag);
        std::thread::sleep(Duration::from_millis(200));
        pool.terminate();
        for (k, c) in calls.into_iter().enumerate() {
            let r: Result<(), Error> = c.join().unwrap();
            assert!(
                matches!(r, Err(Error::PoolTerminated | Error::PoolClosed)),
                "call {k}: {r:?}"
            );
        }
    });
    let _ = std::fs::remove_file(stuck_marker(tag));
}

fn mark_unless_first(s: &[u8], d: &mut [u8]) {
    if s[0] == 1 {
        panic!("the first chunk fails");
    }
    d[0] = 1;
}

#[test]
fn when_the_first_chunk_fails_only_the_first_window_runs_and_later_chunks_stay_untouched() {
    let _w = common::arm(120);
    // One worker: the first window (20 chunks) is submitted at the call, before chunk 0 fails;
    // its other 19 chunks still run after the failure, and no chunk after it is submitted.
    let pool = Pool::new(1).unwrap();
    let mut input = SharedVec::<u8>::zeroed(3_000).unwrap();
    input[0] = 1;
    for _ in 0..3 {
        let mut ran = SharedVec::<u8>::zeroed(3_000).unwrap();
        let e = pool
            .map_chunks_into(&input, &mut ran, 1, mark_unless_first)
            .unwrap_err();
        assert!(e.to_string().ends_with("the first chunk fails"), "{e}");
        let late: Vec<usize> = (WINDOW_PER_WORKER..3_000)
            .filter(|&i| ran[i] != 0)
            .collect();
        assert!(
            late.is_empty(),
            "chunks past the first window ran: {late:?}"
        );
    }
}

/// 100,000 bytes derived from the chunk: larger than a 64 KiB arena, so each result crosses in
/// a segment of its own.
fn big_result(s: &[u32]) -> Vec<u8> {
    let seed = s[0];
    (0..100_000u32).map(|i| (i ^ seed) as u8).collect()
}

#[test]
fn results_larger_than_the_arena_from_hundreds_of_chunks_arrive_whole_and_in_order() {
    let _w = common::arm(300);
    let pool = Pool::builder()
        .processes(2)
        .arena_size(1 << 16)
        .build()
        .unwrap();
    let v: SharedVec<u32> = (0..400).collect();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let got = pool.map_chunks(&v, 1, big_result).unwrap();
                assert_eq!(got.len(), 400);
                for (k, r) in got.iter().enumerate() {
                    assert!(
                        r.len() == 100_000
                            && r.iter()
                                .enumerate()
                                .all(|(i, &b)| b == (i as u32 ^ k as u32) as u8),
                        "chunk {k}"
                    );
                }
            });
        }
    });
}

#[test]
fn dozens_of_callers_each_with_segments_of_their_own_share_two_workers() {
    let _w = common::arm(300);
    // Every call sends its own two segments to each worker while the others' are in use.
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|scope| {
        for t in 0..48u32 {
            let pool = &pool;
            scope.spawn(move || {
                for round in 0..2u32 {
                    let v: SharedVec<u32> = (0..500).map(|i| i + t * 1_000 + round).collect();
                    let mut out = SharedVec::<u64>::zeroed(500).unwrap();
                    pool.map_chunks_into(&v, &mut out, 1, square_into).unwrap();
                    assert!(
                        out.iter()
                            .zip(v.iter())
                            .all(|(&o, &x)| o == u64::from(x) * u64::from(x)),
                        "thread {t} round {round}"
                    );
                }
            });
        }
    });
}
