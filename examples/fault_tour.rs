//! Tries each fault a task or the system can throw at a pool and prints what the caller sees
//! and how long the pool takes to answer and to serve again (the figures in RELIABILITY.md).
//!
//! ```text
//! cargo run --release --example fault_tour
//! ```
//!
//! For each fault: a fresh 2-worker pool, warmed up; then the faulty task. "answer" is the time
//! until the faulty task's `get` returns (its error); "serving" the time from the fault until a
//! new task on the replaced worker's seat has returned.

use std::error::Error;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmpool::Pool;

fn raise(sig: i32) -> u64 {
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: no core file, default action for `sig`, then raise it: this worker dies of it.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &lim);
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    unreachable!()
}

fn recurse(n: u64) -> u64 {
    let buf = [n; 512];
    std::hint::black_box(&buf);
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1).wrapping_add(std::hint::black_box(buf[3]))
}

fn oom(_: ()) -> u64 {
    // Address space limited to what the worker has plus 64 MiB, then 1 GiB asked for.
    let vm_kib: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmSize:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let lim = libc::rlimit {
        rlim_cur: (vm_kib + 64 * 1024) * 1024,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: lowering our own soft limits (address space; no core file).
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &lim);
        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &core);
    }
    let v = std::hint::black_box(vec![1u8; std::hint::black_box(1 << 30)]);
    v.iter().map(|&b| u64::from(b)).sum()
}

fn report(name: &str, what: String, answer: Duration, serving: Option<Duration>) {
    println!(
        "| {name} | {what} | {:.1} ms | {} |",
        answer.as_secs_f64() * 1e3,
        serving.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
    );
}

/// Runs `fault` on a fresh pool; reports its error and the time to serve again.
fn task_fault(name: &str, builder: shmpool::PoolBuilder, fault: impl Fn(&Pool) -> String) {
    let pool = builder.processes(2).build().expect("pool");
    for i in 0..100u64 {
        assert_eq!(pool.apply(|x: u64| x + 1, i).expect("warm-up"), i + 1);
    }
    let before = pool.worker_pids();
    let t = Instant::now();
    let what = fault(&pool);
    let answer = t.elapsed();
    // Serving again: the replaced seat (if any) has a new worker that answered a task.
    let serving = loop {
        let pids = pool.worker_pids();
        if pids.iter().all(|&p| p != 0) && pool.map_chunked(|x: u64| x, 0..2u64, 1).is_ok() {
            let replaced = pids != before;
            break replaced.then(|| t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(30) {
            break None;
        }
    };
    report(name, what, answer, serving.or(Some(t.elapsed())));
}

fn describe<T: std::fmt::Debug>(r: Result<T, shmpool::Error>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("`{e}`"),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    if std::env::args().nth(1).as_deref() == Some("--victim") {
        // The parent-death case: a program with a pool, killed by the tour.
        let pool = Pool::new(2)?;
        let _busy = pool.apply_async(|_: ()| std::thread::sleep(Duration::from_secs(1000)), ());
        let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
        println!("{}", pids.join(" "));
        std::thread::sleep(Duration::from_secs(1000));
        return Ok(());
    }
    std::panic::set_hook(Box::new(|_| {})); // the faults' own panics print nothing
    println!("| fault | what the caller gets | answer | serving again |");
    println!("|---|---|---|---|");
    let b = Pool::builder;
    task_fault("SIGKILL (task kills its worker)", b(), |p| {
        describe(p.apply(|_: ()| raise(libc::SIGKILL), ()))
    });
    task_fault("segfault", b(), |p| {
        describe(p.apply(|_: ()| raise(libc::SIGSEGV), ()))
    });
    task_fault("abort", b(), |p| {
        describe(p.apply(|_: ()| raise(libc::SIGABRT), ()))
    });
    task_fault("exit(3)", b(), |p| {
        describe(p.apply(|_: ()| -> u64 { std::process::exit(3) }, ()))
    });
    task_fault("stack overflow", b(), |p| {
        describe(p.apply(|_: ()| recurse(0), ()))
    });
    task_fault("out of memory (RLIMIT_AS)", b(), |p| {
        describe(p.apply(oom, ()))
    });
    task_fault("panic", b(), |p| {
        describe(p.apply(|_: ()| -> u64 { panic!("boom") }, ()))
    });
    task_fault(
        "runs past task_timeout(100 ms)",
        b().task_timeout(Duration::from_millis(100)),
        |p| {
            describe(p.apply(
                |_: ()| -> u64 {
                    loop {
                        std::hint::spin_loop()
                    }
                },
                (),
            ))
        },
    );
    task_fault("idle worker SIGKILLed from outside", b(), |p| {
        let pid = p.worker_pids()[0];
        // SAFETY: kill(2) on one of our pool's workers.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        while p.worker_pids()[0] == pid {
            std::thread::yield_now();
        }
        "nothing (no task was running); the seat is refilled".into()
    });
    task_fault("SIGINT (Ctrl-C) to a busy worker", b(), |p| {
        let r = p.apply_async(
            |_: ()| {
                std::thread::sleep(Duration::from_millis(100));
                7u64
            },
            (),
        );
        std::thread::sleep(Duration::from_millis(20));
        for pid in p.worker_pids() {
            // SAFETY: kill(2) on our pool's workers.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        describe(r.map_err(|e| e.error).and_then(|r| r.get()))
    });
    // Parent death: a program with a pool is SIGKILLed; how long until its workers are gone.
    let exe = std::env::current_exe()?;
    let mut victim = Command::new(exe)
        .arg("--victim")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(victim.stdout.take().ok_or("no stdout")?),
        &mut line,
    )?;
    let pids: Vec<u32> = line
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let t = Instant::now();
    victim.kill()?;
    victim.wait()?;
    let alive = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    while pids.iter().any(alive) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_micros(200));
    }
    report(
        "parent SIGKILLed (workers busy and idle)",
        format!(
            "{} of {} workers left",
            pids.iter().filter(|p| alive(p)).count(),
            pids.len()
        ),
        t.elapsed(),
        None,
    );
    Ok(())
}
