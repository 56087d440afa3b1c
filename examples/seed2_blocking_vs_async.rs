//! Twin of seed `002_c4d35fbb90cb6e3c.txt`, "实例1：阻塞与非阻塞对比", plus its "常用方法" list.
//!
//! Part 1 sends seven tasks to a pool of five with `apply_async`: `--start1--` prints at once,
//! five tasks run side by side and the last two wait for a free worker. Part 2 sends the same
//! seven with `apply`, which blocks until each task is done, so they run one after another and
//! `--start2--` prints only after all seven. Random sleeps are up to 0.3 s here (3 s in the seed).
//!
//! The seed builds each task's name as `"mark"+str(id)`, which concatenates Python's built-in
//! function `id`, not the loop variable; its output therefore reads `mark<built-in function id>`,
//! and this twin prints the same text.
//!
//! (Which worker runs each blocking `apply` is up to the pool: shmpool hands a task to the
//! least-loaded worker, so with one task at a time it is often the same pid every time, where
//! Python's shared queue spreads them.)
//!
//! Part 3 walks through the methods the seed lists: `Pool(numprocess, initializer, initargs)`
//! (a builder with an initializer), `map`, `map_async` with a callback, `imap`,
//! `imap_unordered`, `get(timeout)`, `ready`, `successful`, `wait` and `terminate`.
//!
//! Note: the workers are forked by the pool's fork server, so the "父进程" (parent) a worker
//! reports is that server's pid, not the main program's as in Python.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shmpool::{Error, Pool};

/// A number in `[0, 1)`, different in every worker and every call.
fn random() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = DefaultHasher::new();
    (now.as_nanos(), std::process::id()).hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn ppid() -> i32 {
    // SAFETY: getppid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::getppid() }
}

fn test1(name: String) {
    println!(
        "{name}运行中，pid={}，父进程：{}",
        std::process::id(),
        ppid()
    );
    let t_start = Instant::now();
    // random() gives a float in [0, 1).
    std::thread::sleep(Duration::from_secs_f64(random() * 0.3));
    println!("{name}执行时间：{:.2}秒", t_start.elapsed().as_secs_f64());
}

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn fails(_: ()) -> u64 {
    panic!("boom")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The task that fails on purpose below would print a panic report from its worker; keep the
    // output to what the parent reports (as Python prints nothing until `get`).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if shmpool::current_worker().is_none() {
            default_hook(info);
        }
    }));

    // The seed's name: "mark" + str(id), where `id` is the built-in function.
    let name = || "mark<built-in function id>".to_string();
    println!("(main pid={})", std::process::id());

    // ---- 实例1, part 1: non-blocking.
    let pool = Pool::new(5)?; // at most 5 worker processes
    for _xx in 0..7 {
        pool.apply_async(test1, name())?;
    }
    println!("--start1--");
    pool.close(); // no new requests after this
    pool.join()?; // wait until every task has run
    println!("--end1--");
    println!("{}", "*".repeat(30));

    // ---- 实例1, part 2: blocking.
    let pool = Pool::new(5)?;
    for _xx in 0..7 {
        pool.apply(test1, name())?;
    }
    println!("--start2--");
    pool.close();
    pool.join()?;
    println!("--end2--");

    // ---- 语法 / 常用方法.
    println!("{}", "*".repeat(30));
    // Pool(numprocess, initializer, initargs): the initializer runs once in each worker.
    let pool = Pool::builder()
        .processes(2)
        .initializer(|| println!("initializer: worker {} ready", std::process::id()))
        .build()?;

    println!("map: {:?}", pool.map(square, 0..10u64)?);
    println!(
        "map chunksize=3: {:?}",
        pool.map_chunked(square, 0..10u64, 3)?
    );

    let r = pool.map_async(square, 0..5u64)?;
    r.wait();
    println!("map_async: ready={} -> {:?}", r.ready(), r.get()?);

    let imap: Vec<u64> = pool.imap(square, 0..8u64).collect::<Result<_, _>>()?;
    println!("imap: {imap:?}");
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..8u64)
        .collect::<Result<_, _>>()?;
    println!("imap_unordered (arrival order): {unordered:?}");
    unordered.sort_unstable();
    println!("imap_unordered sorted: {unordered:?}");

    // get(timeout): a TimeoutError if the result is late; the handle can be waited on again.
    let mut late = pool.apply_async(sleep_ms, 300)?;
    println!(
        "ready()={} successful()={:?}",
        late.ready(),
        late.successful()
    );
    match late.get_timeout(Duration::from_millis(10)) {
        Err(Error::Timeout) => println!("get(timeout=0.01): TimeoutError"),
        other => println!("get(timeout=0.01): {other:?}"),
    }
    // wait(timeout): wait for the result to be ready, at most `timeout`.
    let ready = late.wait_timeout(Duration::from_secs(30));
    println!(
        "wait(30) -> {ready}; ready()={} successful()={:?}",
        late.ready(),
        late.successful()
    );
    println!("get(): {}", late.get_timeout(Duration::from_secs(30))?);

    // successful(): false when the task raised.
    let bad = pool.apply_async(fails, ())?;
    bad.wait();
    println!("failed task: successful()={:?}", bad.successful());
    println!("failed task: get() -> {}", bad.get().unwrap_err());

    // terminate(): stop now, whatever is unfinished.
    let pending = pool.apply_async(sleep_ms, 10_000)?;
    pool.terminate();
    println!("after terminate: {}", pending.get().unwrap_err());
    Ok(())
}
