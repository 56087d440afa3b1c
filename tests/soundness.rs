//! Safe calls cannot corrupt memory or hang the pool (issue 8): absurd sizes are errors, user code
//! that panics on a pool thread fails only its own call, and results are answers even when the
//! process that wrote them misbehaves. (The tests where a worker corrupts its own shared state on
//! purpose need crate internals: they are unit tests, in `src/corrupt.rs`.)

mod common;

use shmpool::{Error, Pool};

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn absurd_builder_sizes_are_errors_not_mappings_too_small() {
    let _w = common::arm(120);
    // 2 workers x 2 arenas x 2^62 bytes wraps to 0 in usize: it used to build a pool whose
    // first `apply` wrote past the mapping.
    let e = Pool::builder()
        .processes(2)
        .arena_size(1 << 62)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid argument: 2 workers with arenas of 4611686018427387904 bytes do not fit in the \
         address space"
    );
    // Rounding the arena up to a page overflows.
    let e = Pool::builder()
        .processes(1)
        .arena_size(usize::MAX)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    // The per-seat words alone overflow (this one segfaulted inside `build` in release).
    let e = Pool::builder().processes(1 << 57).build().unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: processes must be at most 4194304 (Linux's largest pid_max)"
    );
    // Fits usize, not the address space: an error from the kernel or from us, never a pool.
    assert!(
        Pool::builder()
            .processes(2)
            .arena_size(1 << 61)
            .build()
            .is_err()
    );
    // And nothing was left behind that stops a sane pool.
    let pool = Pool::builder()
        .processes(1)
        .arena_size(1 << 16)
        .build()
        .unwrap();
    assert_eq!(pool.apply(double, 21).unwrap(), 42);
}

fn fail(_: ()) -> u64 {
    panic!("no value here")
}

#[test]
fn successful_after_an_err_was_taken_stays_false() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let mut r = pool.apply_async(fail, ()).unwrap();
    let e = r
        .get_timeout(std::time::Duration::from_secs(50))
        .unwrap_err();
    assert!(matches!(e, Error::TaskPanicked { .. }), "{e:?}");
    // Taking the error does not turn it into a success.
    assert_eq!(r.successful(), Some(false));
    assert!(matches!(
        r.get_timeout(std::time::Duration::from_secs(1)),
        Err(Error::ResultTaken)
    ));
    assert_eq!(r.successful(), Some(false));
    // And a taken success stays a success.
    let mut r = pool.apply_async(double, 1).unwrap();
    assert_eq!(
        r.get_timeout(std::time::Duration::from_secs(50)).unwrap(),
        2
    );
    assert_eq!(r.successful(), Some(true));
}

/// A value whose `Deserialize` panics in the parent (never in a worker) when it holds 13, and
/// whose `Serialize` panics in the parent when it holds 666.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Touchy(u64);

impl serde::Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 666 && shmpool::current_worker().is_none() {
            panic!("Touchy refuses to encode 666");
        }
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == 13 && shmpool::current_worker().is_none() {
            panic!("Touchy refuses to decode 13");
        }
        Ok(Touchy(v))
    }
}

fn touchy(x: u64) -> Touchy {
    Touchy(x)
}

fn untouchy(t: Touchy) -> u64 {
    t.0
}

/// A panicking `Deserialize` of a result fails that call with an error (whichever thread
/// decodes it: the collector thread or a caller collecting for itself), and the pool serves on:
/// counters stay right, so `join` returns.
#[test]
fn a_panicking_result_decode_fails_that_call_and_the_pool_serves_on() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    // Decoded by whoever collects first; nobody waits on most of them.
    let pending: Vec<_> = (0..40u64)
        .map(|i| {
            pool.apply_async(touchy, if i % 4 == 0 { 13 } else { 100 + i })
                .unwrap()
        })
        .collect();
    // Decoded by this very thread (it collects while it waits).
    let e = pool.apply(touchy, 13).unwrap_err();
    assert!(matches!(e, Error::Codec { .. }), "{e:?}");
    assert!(e.to_string().contains("Touchy refuses to decode 13"), "{e}");
    for (i, r) in pending.into_iter().enumerate() {
        match r.get() {
            Ok(t) => assert_eq!(t, Touchy(100 + i as u64)),
            Err(e) => {
                assert_eq!(i % 4, 0, "{e}");
                assert!(matches!(e, Error::Codec { .. }), "{e:?}");
            }
        }
    }
    // Chunked and automatic maps decode chunks of them: the map fails, nothing else.
    assert!(matches!(
        pool.map_chunked(touchy, 0..100u64, 7),
        Err(Error::Codec { .. })
    ));
    assert!(matches!(
        pool.map(touchy, 0..100u64),
        Err(Error::Codec { .. })
    ));
    let imap: Vec<_> = pool.imap(touchy, 10..20u64).collect();
    assert!(imap.iter().any(|r| matches!(r, Err(Error::Codec { .. }))));
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
    assert_eq!(pool.map(double, 0..1000u64).unwrap().len(), 1000);
    pool.close();
    pool.join().unwrap();
}

/// The automatic `map` encodes its later chunks on a pool thread (a chunk's completion submits
/// the next): a panicking `Serialize` there fails the `map`, and `join` still returns.
#[test]
fn a_panicking_encode_of_a_later_map_chunk_fails_the_map_and_the_pool_serves_on() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let items: Vec<Touchy> = (0..2000u64).map(Touchy).collect();
    let e = pool.map(untouchy, items).unwrap_err();
    assert!(
        e.to_string().contains("Touchy refuses to encode 666"),
        "{e}"
    );
    assert_eq!(
        pool.map(untouchy, (0..600u64).map(Touchy)).unwrap().len(),
        600
    );
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
    pool.close();
    pool.join().unwrap();
}

/// Writes through the input slice a worker was given (which safe code cannot do).
fn scribble_on_input(items: &[u64]) -> u64 {
    common::no_core_dumps();
    // SAFETY: deliberately not: the test shows the write cannot reach the caller's data.
    unsafe { items.as_ptr().cast_mut().write_volatile(0xdead) };
    items[0]
}

/// Map inputs are mapped read-only in the workers, so "no process writes the input while a task
/// reads it" holds by construction: a stray write faults in the worker (which is replaced),
/// instead of changing the caller's data.
#[test]
fn a_worker_cannot_write_a_map_input() {
    let _w = common::arm(120);
    let pool = Pool::new(1).unwrap();
    let v = shmpool::SharedVec::from_slice(&[1u64, 2, 3, 4]).unwrap();
    let e = pool.map_chunks(&v, 2, scribble_on_input).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WorkerDied {
                signal: Some(libc::SIGSEGV),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(&v[..], &[1, 2, 3, 4]);
    // The output of `map_chunks_into` is still writable, and the pool serves on.
    let mut out = shmpool::SharedVec::<u64>::zeroed(4).unwrap();
    pool.map_chunks_into(&v, &mut out, 2, |i: &[u64], o: &mut [u64]| {
        for (o, i) in o.iter_mut().zip(i) {
            *o = i * 10;
        }
    })
    .unwrap();
    assert_eq!(&out[..], &[10, 20, 30, 40]);
}

fn segfault(_: ()) -> u64 {
    common::no_core_dumps();
    // SAFETY: deliberately not: restores the default action and raises SIGSEGV in the worker.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    unreachable!()
}

/// With one worker, jobs wait in the parent's queue behind the running one; when that worker
/// dies, they go to its replacement (nothing else would move them: no result comes).
#[test]
fn work_queued_behind_a_dying_worker_runs_on_its_replacement() {
    let _w = common::arm(120);
    let pool = Pool::new(1).unwrap();
    let dying = pool.apply_async(segfault, ()).unwrap();
    let queued: Vec<_> = (0..5u64)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    assert!(matches!(dying.get(), Err(Error::WorkerDied { .. })));
    for (i, r) in queued.into_iter().enumerate() {
        assert_eq!(r.get().unwrap(), 2 * i as u64);
    }
}

/// Increments every output element for ever (until its worker is killed).
fn count_forever(_: &[u64], out: &mut [u64]) {
    loop {
        for x in out.iter_mut() {
            // SAFETY: `x` is a valid, exclusive `&mut u64`; volatile so the loop is not folded.
            unsafe { std::ptr::write_volatile(x, std::ptr::read_volatile(x).wrapping_add(1)) };
        }
    }
}

/// Two threads terminate at once while a worker writes a `map_chunks_into` output, with the fork
/// server held stopped (as on a loaded host): neither returns, and the caller does not get the
/// output back, until every worker that could write it is reaped; after that it never changes.
#[test]
fn concurrent_terminates_hand_no_buffer_back_before_the_workers_are_reaped() {
    use std::time::Duration;
    let _w = common::arm(120);
    let pool = Pool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    let server = common::proc_stat(worker).unwrap().1 as i32;
    let input = shmpool::SharedVec::from_slice(&[0u64; 512]).unwrap();
    let mut out = shmpool::SharedVec::<u64>::zeroed(512).unwrap();
    std::thread::scope(|scope| {
        let caller = scope.spawn(|| pool.map_chunks_into(&input, &mut out, 512, count_forever));
        // Let the task start (it need not have: the worker runs it whenever it gets it).
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: stops (then resumes, below) the pool's own fork server, a child of this process.
        unsafe { libc::kill(server, libc::SIGSTOP) };
        let first = scope.spawn(|| pool.terminate());
        std::thread::sleep(Duration::from_millis(100));
        let second = scope.spawn(|| pool.terminate());
        // While the server cannot kill the worker, nothing may return: the worker is alive.
        std::thread::sleep(Duration::from_millis(300));
        let early = (
            caller.is_finished(),
            first.is_finished(),
            second.is_finished(),
        );
        // SAFETY: as above.
        unsafe { libc::kill(server, libc::SIGCONT) };
        let r = caller.join().unwrap();
        first.join().unwrap();
        second.join().unwrap();
        assert_eq!(
            early,
            (false, false, false),
            "(caller, first, second) returned early"
        );
        assert!(matches!(r, Err(Error::PoolTerminated)), "{r:?}");
    });
    // Handed back: no process writes it any more.
    let snapshot = out.to_vec();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(out.to_vec(), snapshot);
    assert!(!common::exists(worker) || common::proc_stat(worker).is_none_or(|s| s.0 == 'Z'));
}

/// The fork server dies (killed from outside) while workers write a `map_chunks_into` output:
/// the call fails with `PoolBroken`, and only once no worker can write the output any more (their
/// parent-death kill is merely *sent* when the server dies; the collector waits on their pidfds).
#[test]
fn a_dead_fork_server_fails_the_work_only_after_its_workers_are_gone() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let workers = pool.worker_pids();
    let server = common::proc_stat(workers[0]).unwrap().1;
    let input = shmpool::SharedVec::from_slice(&[0u64; 1024]).unwrap();
    let mut out = shmpool::SharedVec::<u64>::zeroed(1024).unwrap();
    let r = std::thread::scope(|scope| {
        let caller = scope.spawn(|| pool.map_chunks_into(&input, &mut out, 512, count_forever));
        std::thread::sleep(std::time::Duration::from_millis(200));
        common::kill(server, libc::SIGKILL);
        caller.join().unwrap()
    });
    assert!(matches!(r, Err(Error::PoolBroken { .. })), "{r:?}");
    for &w in &workers {
        assert!(
            common::proc_stat(w).is_none_or(|s| s.0 == 'Z'),
            "worker {w} still runs"
        );
    }
    let snapshot = out.to_vec();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(out.to_vec(), snapshot);
    assert!(matches!(
        pool.apply(double, 1),
        Err(Error::PoolBroken { .. })
    ));
}

/// `SigBlk` of `/proc/<pid>/status`: the process's blocked-signal mask.
fn blocked_signals(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .unwrap();
    u64::from_str_radix(line.trim(), 16).unwrap()
}

fn my_blocked_signals(_: ()) -> u64 {
    blocked_signals("thread-self")
}

/// A pool built on a thread that blocks signals (tokio and signal-hook threads do) gives its
/// fork server and workers an empty signal mask: deaths are noticed through SIGCHLD at once and
/// a task's SIGTERM is not held back.
#[test]
fn workers_and_the_server_start_with_no_signal_blocked() {
    let _w = common::arm(60);
    let pool = std::thread::spawn(|| {
        // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset; pthread_sigmask
        // changes only this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        Pool::new(2).unwrap()
    })
    .join()
    .unwrap();
    let worker = pool.worker_pids()[0];
    let server = common::proc_stat(worker).unwrap().1;
    assert_eq!(
        blocked_signals(&server.to_string()),
        0,
        "the fork server blocks signals"
    );
    assert_eq!(
        pool.apply(my_blocked_signals, ()).unwrap(),
        0,
        "a task runs with signals blocked"
    );
}

fn sum(v: &[u8]) -> u64 {
    v.iter().map(|&b| u64::from(b)).sum()
}

/// Whether process `pid` holds an fd of a file whose path contains `name`.
fn holds_file(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target.to_string_lossy().contains(name))
}

/// A worker closes its copy of a dropped `MappedFile`'s fd at its next chunk task, even one
/// whose input it has mapped already (a cache hit used to skip reading the channel, so the fd,
/// and a deleted file's blocks, stayed for the worker's whole life).
#[test]
fn workers_release_the_fds_of_dropped_mapped_files() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let v = shmpool::SharedVec::from_slice(&[1u8; 8192]).unwrap();
    assert_eq!(pool.map_chunks(&v, 4096, sum).unwrap(), [4096, 4096]);
    let name = format!("shmpool-fd-test-{}", std::process::id());
    let path = std::env::temp_dir().join(&name);
    std::fs::write(&path, [2u8; 8192]).unwrap();
    // SAFETY: the test's own temporary file; nothing modifies it while it is mapped.
    let file = unsafe { shmpool::MappedFile::open(&path) }.unwrap();
    assert_eq!(pool.map_chunks(&file, 4096, sum).unwrap(), [8192, 8192]);
    let worker = pool.worker_pids()[0];
    assert!(holds_file(worker, &name));
    drop(file);
    std::fs::remove_file(&path).unwrap();
    // The next chunk task reads `v` from the worker's cache.
    assert_eq!(pool.map_chunks(&v, 4096, sum).unwrap(), [4096, 4096]);
    assert!(
        !holds_file(worker, &name),
        "the worker still holds the dropped file"
    );
}

fn first(v: &[u8]) -> u8 {
    v[0]
}

/// Hundreds of segments a worker knew are dropped at once, then a chunk task goes to it: the
/// parent tells the worker to forget them a few at a time, never blocking on a full socket
/// while it holds the dispatch lock (the worker reads its socket only when it runs a chunk, so
/// a blocking send of them all waited for ever).
#[test]
fn dropping_many_segments_at_once_does_not_block_the_dispatcher() {
    let _w = common::arm(120);
    let pool = Pool::new(1).unwrap();
    let vecs: Vec<_> = (0..1000u32)
        .map(|i| shmpool::SharedVec::from_slice(&[i as u8; 16]).unwrap())
        .collect();
    for (i, v) in vecs.iter().enumerate() {
        assert_eq!(pool.map_chunks(v, 16, first).unwrap(), [i as u8]);
    }
    drop(vecs);
    let v = shmpool::SharedVec::from_slice(&[7u8; 16]).unwrap();
    for _ in 0..300 {
        assert_eq!(pool.map_chunks(&v, 16, first).unwrap(), [7]);
    }
    assert_eq!(pool.apply(double, 2).unwrap(), 4);
}

/// Leaks fds until the worker is at its limit (as a task that forgets to close files does): the
/// limit is lowered to what is open, then one more /dev/null fills the gap if there was one.
fn exhaust_worker_fds(_: ()) -> u64 {
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
    let lim = libc::rlimit {
        rlim_cur: open,
        rlim_max: open,
    };
    // SAFETY: setrlimit with a valid pointer to an initialized rlimit; lowering is allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let mut leaked = 0;
    while let Ok(f) = std::fs::File::open("/dev/null") {
        std::mem::forget(f);
        leaked += 1;
    }
    leaked
}

fn sum64(v: &[u64]) -> u64 {
    v.iter().sum()
}

/// A worker at its fd limit cannot receive a segment's fd (the kernel drops it: MSG_CTRUNC),
/// while the parent records it as sent. The worker used to fail that task, then block for ever
/// in `recvmsg` on the next task over the same segment, waiting for an fd that never comes; now
/// it exits, and its replacement (a fresh fd table) gets the segment again.
#[test]
fn a_worker_at_its_fd_limit_is_replaced_not_left_waiting_for_a_segment() {
    let _w = common::arm(120);
    let pool = Pool::new(1).unwrap();
    pool.apply(exhaust_worker_fds, ()).unwrap();
    let input = shmpool::SharedVec::from_slice(&[1u64; 1000]).unwrap();
    // The first call may fail (the fd was dropped), with an answer.
    match pool.map_chunks(&input, 100, sum64) {
        Ok(v) => assert_eq!(v, vec![100; 10]),
        Err(Error::WorkerDied { .. }) => {}
        Err(e) => panic!("{e:?}"),
    }
    // The segment again: served, by a worker that holds it.
    assert_eq!(pool.map_chunks(&input, 100, sum64).unwrap(), vec![100; 10]);
    // A stream of fresh segments as well.
    fn n(x: &[u8]) -> usize {
        x.len()
    }
    let total: usize = pool
        .imap_reader(std::io::Cursor::new(vec![1u8; 1 << 20]), 64 << 10, n)
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(total, 1 << 20);
    pool.close();
    pool.join().unwrap();
}

fn big_result(n: usize) -> Vec<u8> {
    vec![3; n]
}

/// At the parent's own fd limit, a large result's segment fd is dropped by the kernel on our side
/// (MSG_CTRUNC): that call fails with an OS error, not `WorkerCorrupted` (which blamed and killed
/// a worker that did nothing wrong), and once fds are free again large results flow. Run in a
/// child copy of this test binary: exhausting the fd table would break the tests running beside
/// it.
#[test]
fn at_the_parents_fd_limit_a_large_result_fails_without_blaming_the_worker() {
    let _w = common::arm(120);
    if common::scenario().as_deref() != Some("parent-fd-limit") {
        let status = common::reexec(
            "at_the_parents_fd_limit_a_large_result_fails_without_blaming_the_worker",
            "parent-fd-limit",
        )
        .status()
        .unwrap();
        assert!(status.success(), "the scenario failed: {status:?}");
        return;
    }
    let pool = Pool::new(1).unwrap();
    let worker = pool.worker_pids()[0];
    // A small limit first, so filling the table is quick even where the default is 2^20.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let lim = libc::rlimit {
        rlim_cur: open + 64,
        rlim_max: open + 64,
    };
    // SAFETY: setrlimit with a valid pointer to an initialized rlimit; lowering is allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let mut leaked = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        leaked.push(f);
    }
    let e = pool.apply(big_result, 64 << 20).unwrap_err();
    assert!(
        matches!(e, Error::Os { .. }) && e.to_string().contains("MSG_CTRUNC"),
        "{e:?}"
    );
    drop(leaked);
    assert_eq!(pool.apply(big_result, 64 << 20).unwrap().len(), 64 << 20);
    assert_eq!(pool.worker_pids(), vec![worker], "the worker was replaced");
    pool.close();
    pool.join().unwrap();
}

/// Descriptors open in this process (the directory's own one included, the same every time).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Shared-memory mappings of this process (memfd segments).
fn memfd_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:"))
        .count()
}

/// This process has no child, live or zombie.
fn no_children() -> bool {
    // SAFETY: waitpid(2) with a null status pointer; WNOHANG so it never blocks.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
}

fn set_soft_fd_limit(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit; only the soft limit moves,
    // below the hard one, so it can go back up.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// `build` meeting the open-file limit at every step it opens a descriptor (channels, control
/// segment, collector, fork server, workers) fails with an error and leaves nothing behind: no
/// descriptor, no mapping, no process. In a child copy of this test binary: its limit is lowered.
#[test]
fn a_build_that_runs_out_of_descriptors_anywhere_leaves_nothing_behind() {
    let _w = common::arm(300);
    if common::scenario().as_deref() != Some("build-fd-limit") {
        let out = common::reexec(
            "a_build_that_runs_out_of_descriptors_anywhere_leaves_nothing_behind",
            "build-fd-limit",
        )
        .output()
        .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success(),
            "the scenario failed: {:?}",
            out.status
        );
        return;
    }
    let build = || Pool::builder().processes(3).build();
    // Once at full limit: whatever a first pool opens for good (lazily) is open from now on.
    let p = build().unwrap();
    p.close();
    p.join().unwrap();
    drop(p);
    let (fds, maps) = (open_fds(), memfd_maps());
    assert!(no_children());
    let mut built = 0;
    for extra in 0..64 {
        set_soft_fd_limit((fds + extra) as u64);
        let r = build();
        set_soft_fd_limit(u64::MAX);
        match r {
            Ok(p) => {
                built += 1;
                p.close();
                p.join().unwrap();
            }
            // Whichever descriptor it was (a channel, the control segment's memfd), the
            // error names the limit.
            Err(e) => assert!(
                matches!(e, Error::InvalidArgument { .. })
                    && e.to_string().contains("the open-file limit ("),
                "limit open+{extra}: {e:?}"
            ),
        }
        assert_eq!(open_fds(), fds, "descriptors left after limit open+{extra}");
        assert_eq!(memfd_maps(), maps, "mappings left after limit open+{extra}");
        assert!(no_children(), "a process left after limit open+{extra}");
        if built == 3 {
            break;
        }
    }
    assert_eq!(
        built, 3,
        "no pool built even 63 descriptors above what was open"
    );
    // Many pools built at once from threads, at a limit that holds only some of them: each
    // build is a pool or the error naming the limit, and once all are dropped nothing is left.
    set_soft_fd_limit((fds + 20) as u64);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8).map(|_| s.spawn(build)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    set_soft_fd_limit(u64::MAX);
    let mut ok = 0;
    for r in results {
        match r {
            Ok(p) => {
                ok += 1;
                assert_eq!(p.apply(|x: u32| x + 1, 1).unwrap(), 2);
                p.close();
                p.join().unwrap();
            }
            Err(e) => assert!(
                matches!(e, Error::InvalidArgument { .. })
                    && e.to_string().contains("the open-file limit ("),
                "{e:?}"
            ),
        }
    }
    println!("{ok} of 8 pools built at once at open+20");
    assert_eq!(
        open_fds(),
        fds,
        "descriptors left after the concurrent builds"
    );
    assert_eq!(
        memfd_maps(),
        maps,
        "mappings left after the concurrent builds"
    );
    assert!(no_children(), "a process left after the concurrent builds");
}
