//! Twin of seed `001_df3acb46eadc29f7.txt`, the first program: ten tasks on a pool of three.
//!
//! Each task prints its number and pid, sleeps a random time (up to 0.5 s here; 2 s in the seed)
//! and prints how long it took. Only three run at once, and a worker that finishes takes the next
//! task, so only three pids appear. `-----start-----` is printed as soon as the ten
//! `apply_async` calls have returned, without waiting for any task; `-----end-----` comes last
//! because `join` waits for all ten.
//!
//! In the seed `-----start-----` is the first line because Python's pool takes milliseconds to
//! hand out the first task. shmpool hands it out in microseconds, so the first workers may print
//! their `开始执行` lines just before it: the two run concurrently and neither order is promised.
//!
//! ```text
//! -----start-----
//! 0开始执行，进程号为40291
//! 1开始执行，进程号为40292
//! 2开始执行，进程号为40293
//! 2执行完成，耗时0.15
//! 3开始执行，进程号为40293
//! ...
//! -----end-----
//! ```

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shmpool::Pool;

/// A number in `[0, 1)`, different in every worker and every call (the workers are forks, so
/// anything seeded before the fork would repeat in each of them).
fn random() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = DefaultHasher::new();
    (now.as_nanos(), std::process::id()).hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn test1(msg: u32) {
    let t_start = Instant::now();
    println!("{msg}开始执行，进程号为{}", std::process::id());
    std::thread::sleep(Duration::from_secs_f64(random() * 0.5));
    println!("{msg}执行完成，耗时{:.2}", t_start.elapsed().as_secs_f64());
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let po = Pool::new(3)?;
    for i in 0..10 {
        // Each time round, a free worker takes the next task.
        po.apply_async(test1, i)?;
    }

    println!("-----start-----");

    po.close(); // no new work after this
    po.join()?; // waits for every task; must follow `close`

    println!("-----end-----");
    Ok(())
}
