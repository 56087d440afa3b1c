//! Edge cases of time limits, retries and payloads past the arena (found holding in the issue 10
//! review): limits of 1 ns and `Duration::MAX`, a timed-out chunk never retried, a task that
//! always kills its worker under `retries`, retries racing `terminate`, big payloads at the
//! arena's size +-1, from many workers, through killed workers and one-task workers (no fd left in
//! the parent), a panicking `Deserialize` of a big payload, a stopped worker past its limit,
//! `SIGINT` to the workers while timed tasks run.

mod common;

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use shmpool::{Error, Pool};

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_one_nanosecond_limit_times_out_and_the_pool_serves_on() {
    let _s = common::serial();
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    for _ in 0..20 {
        let r = pool
            .apply_async_timeout(sleep_ms, 50, Duration::from_nanos(1))
            .unwrap();
        let got = r.get();
        assert!(matches!(got, Err(Error::TaskTimedOut { .. })), "{got:?}");
    }
    assert_eq!(pool.apply(sleep_ms, 1).unwrap(), 1);
}

#[test]
fn duration_max_limits_do_not_overflow_and_tasks_finish() {
    let _s = common::serial();
    let _w = common::arm(60);
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(pool.apply(sleep_ms, 10).unwrap(), 10);
    assert_eq!(pool.map(sleep_ms, vec![1u64; 10]).unwrap(), vec![1u64; 10]);
    let r = pool
        .apply_async_timeout(sleep_ms, 10, Duration::MAX)
        .unwrap();
    assert_eq!(r.get().unwrap(), 10);
    let r = pool
        .apply_async_timeout(
            sleep_ms,
            10,
            Duration::from_secs(u64::MAX / 1_000_000_000 + 1),
        )
        .unwrap();
    assert_eq!(r.get().unwrap(), 10);
    let r = pool
        .apply_async_timeout(sleep_ms, 10, Duration::from_secs(i64::MAX as u64))
        .unwrap();
    assert_eq!(r.get().unwrap(), 10);
}

#[test]
fn a_zero_limit_is_refused() {
    let _s = common::serial();
    let _w = common::arm(60);
    assert!(
        Pool::builder()
            .task_timeout(Duration::ZERO)
            .build()
            .is_err()
    );
    let pool = Pool::new(1).unwrap();
    assert!(
        pool.apply_async_timeout(sleep_ms, 1, Duration::ZERO)
            .is_err()
    );
}

#[test]
fn a_timed_out_chunk_fails_the_map_and_is_not_retried() {
    let _s = common::serial();
    let _w = common::arm(90);
    let dir = std::env::temp_dir().join(format!("b10-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .retries(3)
        .task_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    fn item(x: (u64, String)) -> u64 {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&x.1)
            .unwrap();
        // One `write` per line: `writeln!` makes two ("7", then "\n"), and the two workers'
        // appends interleaved into lines such as "27" (no line "7": the test failed).
        f.write_all(format!("{}\n", x.0).as_bytes()).unwrap();
        if x.0 == 7 {
            std::thread::sleep(Duration::from_secs(30));
        }
        x.0
    }
    let log = dir.join("log").to_string_lossy().into_owned();
    let items: Vec<(u64, String)> = (0..20).map(|i| (i, log.clone())).collect();
    let r = pool.map_chunked(item, items, 4);
    assert!(matches!(r, Err(Error::TaskTimedOut { .. })), "{r:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let sevens = text.lines().filter(|l| *l == "7").count();
    assert_eq!(sevens, 1, "timed-out chunk was retried: {text}");
    assert_eq!(pool.apply(sleep_ms, 1).unwrap(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retries_of_a_task_that_always_kills_its_worker_end_in_worker_died() {
    let _s = common::serial();
    let _w = common::arm(90);
    let pool = Pool::builder().processes(2).retries(5).build().unwrap();
    fn die(_: ()) -> u8 {
        std::process::abort()
    }
    let r = pool.apply(die, ());
    assert!(matches!(r, Err(Error::WorkerDied { .. })), "{r:?}");
    let r = pool.map(die, vec![(); 10]);
    assert!(matches!(r, Err(Error::WorkerDied { .. })), "{r:?}");
    assert_eq!(pool.apply(sleep_ms, 1).unwrap(), 1);
}

#[test]
fn terminate_during_retries_resolves_every_result() {
    let _s = common::serial();
    let _w = common::arm(90);
    for _ in 0..5 {
        let pool = Pool::builder().processes(2).retries(1000).build().unwrap();
        fn die(_: ()) -> u8 {
            std::thread::sleep(Duration::from_millis(5));
            std::process::abort()
        }
        let rs: Vec<_> = (0..10)
            .map(|_| pool.apply_async(die, ()).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        pool.terminate();
        for r in rs {
            assert!(r.get().is_err());
        }
    }
}

#[test]
fn timed_tasks_from_many_threads_each_get_their_own_answer() {
    let _s = common::serial();
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..10u64 {
                    let slow = (t + i) % 5 == 0;
                    let r = pool
                        .apply_async_timeout(
                            sleep_ms,
                            if slow { 60_000 } else { 1 },
                            Duration::from_secs(1),
                        )
                        .unwrap();
                    let got = r.get();
                    if slow {
                        assert!(matches!(got, Err(Error::TaskTimedOut { .. })), "{got:?}");
                    } else {
                        // Queued behind slow ones: the limit counts from its start.
                        assert_eq!(got.unwrap(), 1);
                    }
                }
            });
        }
    });
}

#[test]
fn payloads_at_the_arena_size_plus_minus_one_cross_unchanged() {
    let _s = common::serial();
    let _w = common::arm(120);
    let cap = 1 << 16;
    let pool = Pool::builder()
        .processes(2)
        .arena_size(cap)
        .build()
        .unwrap();
    fn echo(v: Vec<u8>) -> Vec<u8> {
        v
    }
    fn echo_s(v: String) -> String {
        v
    }
    for n in [
        0,
        1,
        cap - 64,
        cap - 9,
        cap - 8,
        cap - 1,
        cap,
        cap + 1,
        2 * cap,
        10 * cap + 3,
    ] {
        let v: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        assert_eq!(pool.apply(echo, v.clone()).unwrap(), v, "n={n}");
        let s: String = "é".repeat(n / 2);
        assert_eq!(pool.apply(echo_s, s.clone()).unwrap(), s, "n={n}");
        let m = pool.map(echo, vec![v.clone(), v.clone(), v.clone()]);
        match m {
            Ok(m) => assert_eq!(m, vec![v.clone(), v.clone(), v.clone()]),
            Err(e) => panic!("map n={n}: {e:?}"),
        }
    }
}

#[test]
fn big_results_from_many_workers_at_once() {
    let _s = common::serial();
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(4)
        .arena_size(1 << 16)
        .build()
        .unwrap();
    fn make(n: usize) -> Vec<u8> {
        vec![(n % 251) as u8; n]
    }
    let sizes: Vec<usize> = (0..40).map(|i| (1 << 18) + i * 1000).collect();
    let got = pool.map_chunked(make, sizes.clone(), 1).unwrap();
    for (g, n) in got.iter().zip(&sizes) {
        assert_eq!(g.len(), *n);
        assert!(g.iter().all(|b| *b == (n % 251) as u8));
    }
}

#[test]
fn big_payloads_through_killed_workers_leave_no_fd() {
    let _s = common::serial();
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(2)
        .arena_size(1 << 16)
        .build()
        .unwrap();
    fn boom(v: Vec<u8>) -> Vec<u8> {
        if v[0] == 1 {
            std::process::abort();
        }
        v
    }
    fn big_then_die(v: Vec<u8>) -> Vec<u8> {
        // Outlives its limit while the big argument is mapped.
        std::thread::sleep(Duration::from_millis(v[0] as u64));
        v
    }
    // The first big payload makes what the pool keeps for good.
    let _ = pool.apply(boom, vec![0u8; 1 << 18]);
    let (before, spares_before) = common::fd_count_and_arg_spares();
    for i in 0..30u8 {
        let r = pool.apply(boom, vec![i % 2; 1 << 18]);
        assert_eq!(r.is_err(), i % 2 == 1);
    }
    for _ in 0..5 {
        let r = pool
            .apply_async_timeout(
                big_then_die,
                vec![200u8; 1 << 18],
                Duration::from_millis(50),
            )
            .unwrap();
        assert!(r.get().is_err());
    }
    let _ = pool.apply(boom, vec![0u8; 1 << 18]);
    // The spare argument segments the pool keeps for reuse (at most two) are not counted; the
    // last call's segment (a writable and a read-only fd) goes back to them just after its
    // completion ran, a moment after the caller may look.
    let mut counts = common::fd_count_and_arg_spares();
    common::eventually(Duration::from_secs(30), || {
        counts = common::fd_count_and_arg_spares();
        counts.1 <= 2
    });
    let (after, spares) = counts;
    assert!(spares <= 2, "{spares} spare argument segments");
    assert!(
        after - spares <= before - spares_before + 2,
        "fds {before} -> {after}, spares {spares_before} -> {spares}"
    );
}

#[test]
fn big_payloads_with_one_task_per_worker_leave_no_fd() {
    let _s = common::serial();
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(2)
        .arena_size(1 << 16)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    fn echo(v: Vec<u8>) -> Vec<u8> {
        v
    }
    let (before, spares_before) = common::fd_count_and_arg_spares();
    for i in 0..30u8 {
        let v = vec![i; (1 << 17) + i as usize];
        assert_eq!(pool.apply(echo, v.clone()).unwrap(), v);
    }
    let vs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 << 17]).collect();
    assert_eq!(pool.map_chunked(echo, vs.clone(), 1).unwrap(), vs);
    // The spare argument segments the pool keeps for reuse (at most two) are not counted; the
    // last call's segment (a writable and a read-only fd) goes back to them just after its
    // completion ran, a moment after the caller may look.
    let mut counts = common::fd_count_and_arg_spares();
    common::eventually(Duration::from_secs(30), || {
        counts = common::fd_count_and_arg_spares();
        counts.1 <= 2
    });
    let (after, spares) = counts;
    assert!(spares <= 2, "{spares} spare argument segments");
    assert!(
        after - spares <= before - spares_before + 4,
        "fds {before} -> {after}, spares {spares_before} -> {spares}"
    );
}

#[derive(Serialize, Debug)]
struct Grumpy(Vec<u8>);
impl<'de> Deserialize<'de> for Grumpy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        if v.len() > 1000 {
            panic!("too big for me");
        }
        Ok(Grumpy(v))
    }
}

#[test]
fn a_deserialize_panicking_on_a_big_payload_is_an_error_not_a_leak() {
    let _s = common::serial();
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(2)
        .arena_size(1 << 16)
        .build()
        .unwrap();
    fn take(g: Grumpy) -> usize {
        g.0.len()
    }
    fn make(n: usize) -> Grumpy {
        Grumpy(vec![1; n])
    }
    let before = common::fd_count();
    for _ in 0..5 {
        let r = pool.apply(take, Grumpy(vec![0; 1 << 18]));
        assert!(matches!(r, Err(Error::TaskPanicked { .. })), "{r:?}");
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.apply(make, 1 << 18)));
        assert!(!matches!(r, Ok(Ok(_))), "{r:?}");
    }
    assert_eq!(pool.apply(take, Grumpy(vec![0; 10])).unwrap(), 10);
    assert_eq!(pool.apply(make, 10).unwrap().0.len(), 10);
    let after = common::fd_count();
    assert!(after <= before + 2, "fds {before} -> {after}");
}

#[test]
fn a_stopped_worker_is_still_killed_at_its_limit() {
    let _s = common::serial();
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let pid = pool.worker_pids()[0];
    let gate = std::env::temp_dir().join(format!("shmpool-edges-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    fn started_then_sleep(gate: String) -> u64 {
        std::fs::write(&gate, b"started").unwrap();
        sleep_ms(60_000)
    }
    let r = pool
        .apply_async_timeout(
            started_then_sleep,
            gate.to_string_lossy().into_owned(),
            Duration::from_millis(500),
        )
        .unwrap();
    // Stopped once its timer runs (a worker stopped before it takes the task never starts it).
    assert!(common::eventually(Duration::from_secs(30), || gate.exists()));
    common::kill(pid, libc::SIGSTOP);
    let got = r.get();
    assert!(matches!(got, Err(Error::TaskTimedOut { .. })), "{got:?}");
    assert_eq!(pool.apply(sleep_ms, 1).unwrap(), 1);
    let _ = std::fs::remove_file(&gate);
}

#[test]
fn sigint_to_workers_running_timed_tasks_loses_nothing() {
    let _s = common::serial();
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let rs: Vec<_> = (0..6)
        .map(|i| {
            pool.apply_async_timeout(sleep_ms, 200 + i, Duration::from_secs(10))
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    for pid in pool.worker_pids() {
        common::kill(pid, libc::SIGINT);
    }
    for (i, r) in rs.into_iter().enumerate() {
        assert_eq!(r.get().unwrap(), 200 + i as u64);
    }
}

#[test]
fn a_retried_task_gets_its_big_argument_again() {
    let _s = common::serial();
    let _w = common::arm(120);
    let dir = std::env::temp_dir().join(format!("b10r-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .arena_size(1 << 16)
        .retries(2)
        .build()
        .unwrap();
    fn once_die(x: (String, Vec<u8>)) -> Vec<u8> {
        let marker = std::path::Path::new(&x.0);
        if !marker.exists() {
            std::fs::write(marker, b"x").unwrap();
            std::process::abort();
        }
        x.1
    }
    for i in 0..6 {
        let m = dir.join(format!("m{i}")).to_string_lossy().into_owned();
        let v: Vec<u8> = (0..(1usize << 18) + i).map(|j| j as u8).collect();
        let got = pool.apply(once_die, (m, v.clone())).unwrap();
        assert_eq!(got, v);
    }
    let items: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            (
                dir.join(format!("n{i}")).to_string_lossy().into_owned(),
                vec![i as u8; 1 << 17],
            )
        })
        .collect();
    let got = pool.map_chunked(once_die, items.clone(), 1).unwrap();
    assert_eq!(got, items.into_iter().map(|x| x.1).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn limits_that_end_while_a_big_result_is_sent_leave_no_fd() {
    let _s = common::serial();
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(2)
        .arena_size(1 << 16)
        .build()
        .unwrap();
    fn big(n: usize) -> Vec<u8> {
        vec![1u8; n]
    }
    let _ = pool.apply(big, 1 << 20);
    let before = common::fd_count();
    for i in 0..40u64 {
        // Limits around the time it takes to make and send a 64 MiB result.
        let r = pool
            .apply_async_timeout(big, 64 << 20, Duration::from_millis(5 + i * 3))
            .unwrap();
        match r.get() {
            Ok(v) => assert_eq!(v.len(), 64 << 20),
            Err(Error::TaskTimedOut { .. }) => {}
            Err(e) => panic!("{i}: {e:?}"),
        }
    }
    assert_eq!(pool.apply(big, 1 << 20).unwrap().len(), 1 << 20);
    assert_eq!(pool.map_chunked(big, vec![1 << 18; 8], 1).unwrap().len(), 8);
    let after = common::fd_count();
    assert!(after <= before + 2, "fds {before} -> {after}");
}
