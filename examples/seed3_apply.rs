//! Twin of seed `003_7caf099faab2905e.txt`: the three main methods of a pool.
//!
//! 1. `apply` (同步): 10000 increments, one task at a time even though the pool has five
//!    workers; prints each result, then the elapsed seconds.
//! 2. `apply_async` with a callback: the callback runs in the parent (主进程) with each task's
//!    result and prints `p1 + 1`.
//! 3. `apply_async` (异步) collecting 10000 handles, `close` + `join`, then `get` on each, then
//!    the elapsed seconds.
//! 4. `map` of `func` over `0..100`: the workers print each `num + 1`, then the parent prints
//!    `主进程中map的返回值 [1, 2, ..., 100]`. `map` blocks until every result is in, so unlike
//!    `apply_async` no `close`/`join` is needed before using its result.

use std::time::Instant;

use shmpool::Pool;

fn func(num: u64) -> u64 {
    num + 1
}

fn call_back(p1: u64) {
    println!("{}", p1 + 1);
}

fn func_print(num: u64) -> u64 {
    let num = num + 1;
    println!("{num}");
    num
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. apply: synchronous, the pool's processes take the tasks one by one.
    let p = Pool::new(5)?;
    let start = Instant::now();
    for i in 0..10000u64 {
        let res = p.apply(func, i)?;
        println!("{res}");
    }
    println!("{}", start.elapsed().as_secs_f64());
    p.close();
    p.join()?;

    // 2. apply_async with a callback, which the parent runs with each result.
    let p = Pool::builder().build()?; // Pool(): one worker per CPU
    for i in 0..10u64 {
        p.apply_async_with_callback(func, i, |r| match r {
            Ok(p1) => call_back(p1),
            Err(e) => eprintln!("task failed: {e}"),
        })?;
    }
    p.close();
    p.join()?;

    // 3. apply_async: all five workers take tasks at once; `get` afterwards.
    let p = Pool::new(5)?;
    let start = Instant::now();
    let mut l = Vec::with_capacity(10000);
    for i in 0..10000u64 {
        let res = p.apply_async(func, i)?;
        l.push(res);
        // Calling `res.get()` here would work too, but would make it synchronous again.
    }
    p.close();
    p.join()?;
    for res in l {
        println!("{}", res.get()?);
    }
    println!("{}", start.elapsed().as_secs_f64());

    // 4. map: waits for all results itself.
    let p = Pool::new(5)?;
    let res = p.map(func_print, 0..100u64)?;
    println!("主进程中map的返回值 {res:?}");
    Ok(())
}
