//! Twin of seed `000_1128ff01c44539a9.txt`, "imap和imap_unordered": `imap` yields results in
//! input order, `imap_unordered` in the order they finish.
//!
//! The seed's point 2 says the task function cannot be a local object: Python fails with
//! `AttributeError: Can't pickle local object 'fn_outer.<locals>.fn'`. Here a task crosses as
//! code, not as a pickle (workers are forks, so the function's address is valid in them), and a
//! `fn` defined inside another function, or a closure that captures nothing, works.
//!
//! Point 4, "the pool must be closed", is `close` + `join` (写法一), or simply letting the pool
//! go out of scope, which terminates it like Python's `with Pool() as pool:` (写法二).

use std::time::Duration;

use shmpool::Pool;

/// The seed's `fn_outer`: the task function is local to it.
fn fn_outer() -> Result<Vec<u64>, shmpool::Error> {
    fn add((a, b): (u64, u64)) -> u64 {
        a + b
    }
    let pool = Pool::new(2)?;
    let sums = pool
        .imap(add, vec![(1, 2)])
        .collect::<Result<Vec<_>, _>>()?;
    pool.close();
    pool.join()?;
    Ok(sums)
}

/// Sleeps longer for smaller inputs, so later items finish first.
fn slow_for_small(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(40 * (5 - x)));
    x * 10
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("fn_outer() -> {:?}", fn_outer()?);

    let data: Vec<u64> = (0..5).collect();

    // 写法一: close and join explicitly.
    let pool = Pool::new(5)?;
    let ordered: Vec<u64> = pool
        .imap(slow_for_small, data.clone())
        .chunksize(1)
        .collect::<Result<_, _>>()?;
    println!("imap:           {ordered:?}");
    let unordered: Vec<u64> = pool
        .imap_unordered(slow_for_small, data.clone())
        .chunksize(1)
        .collect::<Result<_, _>>()?;
    println!("imap_unordered: {unordered:?}");
    pool.close();
    pool.join()?;

    // 写法二: the pool lives in a scope, like `with Pool() as pool:`; a local closure as task.
    {
        let pool = Pool::new(2)?;
        for a in pool.imap_unordered(|a: u64| a, data) {
            print!("{} ", a?);
        }
        println!();
    }
    Ok(())
}
