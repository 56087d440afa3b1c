//! The watchdog of tests/common: a hung test's process dumps what every thread of it and of its
//! pool's processes is blocked in, then aborts.

mod common;

use std::time::Duration;

use shmpool::Pool;

/// In a child copy of this binary: a pool whose only worker sleeps in a task for longer than a
/// 1 s watchdog. The child must abort after the dump, naming the server and the worker.
#[test]
fn a_hung_test_dumps_every_thread_of_its_processes_then_aborts() {
    if common::scenario().as_deref() == Some("hang") {
        let pool = Pool::new(1).unwrap();
        let _w = common::arm(1);
        // Never returns: the watchdog aborts the process first.
        let _ = pool.apply(
            |x: u32| {
                std::thread::sleep(Duration::from_secs(60));
                x
            },
            1,
        );
        unreachable!("the watchdog did not fire");
    }
    let _w = common::arm(120);
    let out = common::reexec(
        "a_hung_test_dumps_every_thread_of_its_processes_then_aborts",
        "hang",
    )
    .stderr(std::process::Stdio::piped())
    .output()
    .expect("run the child");
    let err = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "stderr:\n{err}");
    for marker in [
        "hung for 1 s; aborting",
        common::DUMP_BEGIN,
        "`shmpool-server`",
        "`PoolWorker-",
        "`watchdog`",
        "wchan=",
        common::DUMP_END,
        "watchdog: abort",
    ] {
        assert!(
            err.contains(marker),
            "no `{marker}` in the child's stderr:\n{err}"
        );
    }
    // The dump comes before the abort, and the watchdog thread is named in it.
    assert!(err.find(common::DUMP_BEGIN) < err.find("watchdog: abort"));
}
