//! The SPSC ring across a real `fork`: one process produces a known sequence of a million
//! descriptors into a `MAP_SHARED` mapping, the other consumes it, and every item must arrive
//! exactly once, in order, uncorrupted. Both directions.
//!
//! A unit test (not in `tests/`) because `ring` is private: it is public only in the loom build.

use super::{Consumer, Descriptor, Producer, RING_CAPACITY, RingMem};

/// Aborts the test process unless dropped within `secs` seconds (a hang becomes a failure).
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

fn arm(secs: u64) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(std::time::Duration::from_secs(secs))
        {
            eprintln!("watchdog: a cross-process ring test hung for {secs} s; aborting");
            std::process::abort();
        }
    });
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Dropping the sender disconnects the channel: the watchdog thread returns.
        self.0.take();
    }
}

const N: u64 = 1_000_000;

/// A descriptor whose every field is derived from `i`, so a torn or stale slot is detected.
fn desc(i: u64) -> Descriptor {
    Descriptor {
        task_id: i,
        call: !i,
        offset: i.wrapping_mul(3),
        len: i ^ 0xA5A5,
        arena_end: i + 1,
        elapsed_ns: i.rotate_left(17),
        status: i as u32,
        flags: 0,
        reserved: 0,
    }
}

/// An initialized `RingMem` in anonymous shared memory made before the fork.
struct SharedRing {
    ptr: *mut RingMem,
    len: usize,
}

impl SharedRing {
    fn new() -> SharedRing {
        let len = size_of::<RingMem>();
        // SAFETY: a fresh anonymous shared mapping; no address hint, no fd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let ptr = p.cast::<RingMem>();
        assert!(ptr.is_aligned());
        // SAFETY: the mapping is `size_of::<RingMem>()` writable bytes, page aligned (enough for
        // `RingMem`), and nobody else sees it yet.
        unsafe { ptr.write(RingMem::new()) };
        SharedRing { ptr, len }
    }
}

impl Drop for SharedRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`; no `Producer`/`Consumer` of this process
        // outlives the `SharedRing` (they are dropped in the test bodies first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Forks; the child runs `child` (which must only touch the ring, atomics and raw syscalls) and
/// `_exit`s with its return value. Returns the child's pid.
fn fork_child(child: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork in a multi-threaded test process: the child only runs `child`, which touches
    // the shared ring (atomics and plain stores), calls `sched_yield`/`prctl`/`getppid`, and
    // leaves through `_exit`; it takes no lock and allocates nothing.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: the child dies with the test process, so a failed test leaves no spinner;
            // the getppid check covers a parent that died before the prctl.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(90);
                }
            }
            let code = child();
            // SAFETY: `_exit` ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => pid,
    }
}

/// Waits for `pid`; `Some(status)` once it exited.
fn try_wait(pid: libc::pid_t, block: bool) -> Option<libc::c_int> {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, if block { 0 } else { libc::WNOHANG }) };
    assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
    (r == pid).then_some(status)
}

fn yield_now() {
    // SAFETY: sched_yield has no preconditions (used in the child instead of std, which is fine
    // too but this keeps the child to raw syscalls).
    unsafe { libc::sched_yield() };
}

#[test]
fn a_child_produces_a_million_descriptors_and_the_parent_gets_each_once_in_order() {
    let _w = arm(60);
    let ring = SharedRing::new();
    let mem = ring.ptr as *const RingMem;
    let pid = fork_child(|| {
        // SAFETY: the mapping is shared and stays mapped in the child until `_exit`; the child is
        // the only producer.
        let mut p = unsafe { Producer::attach(mem) };
        let mut i = 0;
        while i < N {
            match p.push(desc(i)) {
                Ok(Ok(())) => i += 1,
                Ok(Err(_)) => yield_now(),
                Err(_) => return 2,
            }
        }
        0
    });
    // SAFETY: the mapping outlives the consumer (dropped before `ring`); the parent is the only
    // consumer.
    let mut c = unsafe { Consumer::attach(mem) };
    let mut next = 0u64;
    let mut exited = None;
    while next < N {
        match c.pop().expect("the producer broke the ring invariant") {
            Some(d) => {
                assert_eq!(
                    d,
                    desc(next),
                    "item {next} missing, duplicated or corrupted"
                );
                next += 1;
            }
            None => {
                // Once the producer has exited, one more pop sees all it published: an empty
                // ring after that means items were lost.
                if let Some(st) = exited {
                    panic!("producer exited (status {st}) after {next} of {N} items");
                }
                exited = try_wait(pid, false);
                std::thread::yield_now();
            }
        }
    }
    assert_eq!(c.pop().unwrap(), None, "more than N items arrived");
    assert_eq!(c.position(), N);
    let status = exited.unwrap_or_else(|| try_wait(pid, true).unwrap());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );
    // SAFETY: the producer process is gone; reading the published positions is plain atomics.
    let r = unsafe { &*mem };
    assert_eq!((r.produced(), r.consumed()), (N, N));
}

#[test]
fn the_parent_produces_a_million_descriptors_and_a_child_checks_each_once_in_order() {
    let _w = arm(60);
    let ring = SharedRing::new();
    let mem = ring.ptr as *const RingMem;
    let pid = fork_child(|| {
        // SAFETY: as above; the child is the only consumer.
        let mut c = unsafe { Consumer::attach(mem) };
        let mut next = 0;
        while next < N {
            match c.pop() {
                Ok(Some(d)) if d == desc(next) => next += 1,
                Ok(Some(_)) => return 3,
                Ok(None) => yield_now(),
                Err(_) => return 2,
            }
        }
        match c.pop() {
            Ok(None) => 0,
            _ => 4,
        }
    });
    // SAFETY: the parent is the only producer; the mapping outlives it.
    let mut p = unsafe { Producer::attach(mem) };
    let mut i = 0;
    while i < N {
        match p
            .push(desc(i))
            .expect("the consumer broke the ring invariant")
        {
            Ok(()) => i += 1,
            Err(_) => {
                if let Some(st) = try_wait(pid, false) {
                    panic!("consumer exited early with status {st} after {i} pushes");
                }
                std::thread::yield_now();
            }
        }
    }
    let status = try_wait(pid, true).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "consumer reported a missing, duplicated or corrupted item: status {status}"
    );
    assert_eq!(p.free().unwrap(), RING_CAPACITY);
}
