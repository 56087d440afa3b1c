//! Twin of seed `001_df3acb46eadc29f7.txt`, "进程池中的Queue": two tasks in a pool talk through a
//! shared queue. `write` puts the letters of "python"; two seconds later `read` takes them out
//! in order.
//!
//! Python needs `multiprocessing.Manager().Queue()` here (a plain `multiprocessing.Queue` cannot
//! be passed to a pool task). [`shmpool::Queue`] lives in shared memory and is passed to a task
//! as part of its argument; it must be created before the pool, so that the workers (forks of
//! the parent) map it too.
//!
//! ```text
//! (41888) start
//! write启动(41894)，父进程为(41890)
//! read启动(41894)，父进程为(41890)
//! read从Queue获取到消息：p
//! read从Queue获取到消息：y
//! read从Queue获取到消息：t
//! read从Queue获取到消息：h
//! read从Queue获取到消息：o
//! read从Queue获取到消息：n
//! (41888) end
//! ```
//!
//! The workers are forked by the pool's fork server, so the parent they report is that server,
//! not the main program as in Python.

use std::time::Duration;

use shmpool::{Pool, Queue};

fn ppid() -> i32 {
    // SAFETY: getppid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::getppid() }
}

fn write(q: Queue<char>) {
    println!("write启动({})，父进程为({})", std::process::id(), ppid());
    for i in "python".chars() {
        q.put(i).expect("put into the queue");
    }
}

fn read(q: Queue<char>) {
    println!("read启动({})，父进程为({})", std::process::id(), ppid());
    for _ in 0..q.len() {
        println!(
            "read从Queue获取到消息：{}",
            q.get().expect("get from the queue")
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("({}) start", std::process::id());
    let q = Queue::new(16)?; // before the pool, so that its workers map it
    let po = Pool::builder().build()?;
    po.apply_async(write, q.clone())?;

    std::thread::sleep(Duration::from_secs(2));

    po.apply_async(read, q.clone())?;
    po.close();
    po.join()?;

    println!("({}) end", std::process::id());
    Ok(())
}
