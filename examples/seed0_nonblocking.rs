//! Twin of seed `000_1128ff01c44539a9.txt`, "简单使用（非阻塞）": `apply_async` of four messages
//! over a pool of three workers.
//!
//! `apply_async` only queues the task and returns, so the parent prints the `Mark~` line while
//! the workers are still running; `close` stops new work and `join` waits for the four tasks.
//! The fourth message runs only once one of the first three workers is free.
//!
//! ```text
//! Mark~ Mark~ Mark~~~~~~~~~~~~~~~~~~~~~~
//! msg: hello 2
//! msg: hello 1
//! msg: hello 0
//! end
//! end
//! msg: hello 3
//! end
//! end
//! Sub-process(es) done.
//! ```
//!
//! (The `Mark~` line comes first because the workers need far longer to wake and print than the
//! parent needs to queue four tasks; as in Python, that is likely rather than promised.)

use std::time::Duration;

use shmpool::Pool;

fn func(msg: String) {
    println!("msg: {msg}");
    std::thread::sleep(Duration::from_millis(300));
    println!("end");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::new(3)?;
    for i in 0..4 {
        let msg = format!("hello {i}");
        // Keeps `processes` tasks running; when one ends the next queued one starts.
        pool.apply_async(func, msg)?;
    }

    println!("Mark~ Mark~ Mark~~~~~~~~~~~~~~~~~~~~~~");
    pool.close();

    // `join` must follow `close` (or `terminate`); it waits for every queued task.
    pool.join()?;
    println!("Sub-process(es) done.");
    Ok(())
}
