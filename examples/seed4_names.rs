//! Twin of seed `004_46bb1298552e9fab.txt`: a pool of four, ten tasks, and each worker's name
//! (`multiprocessing.current_process().name`, here [`shmpool::current_worker`]`().name()`).
//!
//! Part 1 ("多个子进程"): each task prints `PoolWorker-N-hello i`; the lines come in the
//! order the tasks run, not the order they were submitted. (The seed shows them after
//! `Sub-process(es) done.` because Python 2 buffered the children's output until they exited;
//! here a worker's line is written when printed, and `join` waits for all of them.)
//!
//! Part 2 ("多个子进程并返回值"): each task returns the string; after `close` and `join` the
//! parent prints `Sub-process(es) done.` and then the results in submission order:
//!
//! ```text
//! Sub-process(es) done.
//! PoolWorker-1-hello 0
//! PoolWorker-2-hello 1
//! PoolWorker-3-hello 2
//! PoolWorker-4-hello 3
//! PoolWorker-1-hello 4
//! ...
//! ```
//!
//! Python numbers workers across the whole program (`PoolWorker-37`); shmpool numbers them per
//! pool from 1, so each pool's workers are `PoolWorker-1` to `PoolWorker-4`.

use shmpool::{Pool, current_worker};

fn worker_name() -> String {
    current_worker().map_or_else(|| "MainProcess".to_string(), |w| w.name())
}

fn func_print(msg: String) {
    println!("{}-{msg}", worker_name());
}

fn func(msg: String) -> String {
    format!("{}-{msg}", worker_name())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Part 1: print in the worker.
    let pool = Pool::new(4)?; // four processes
    for i in 0..10 {
        let msg = format!("hello {i}");
        pool.apply_async(func_print, msg)?;
    }
    pool.close(); // no more tasks
    pool.join()?; // wait for every task; must follow close()
    println!("Sub-process(es) done.");
    println!();

    // Part 2: return the value; `get` it after join.
    let pool = Pool::new(4)?;
    let mut results = Vec::new();
    for i in 0..10 {
        let msg = format!("hello {i}");
        results.push(pool.apply_async(func, msg)?);
    }
    pool.close();
    pool.join()?;
    println!("Sub-process(es) done.");

    for res in results {
        println!("{}", res.get()?);
    }
    Ok(())
}
