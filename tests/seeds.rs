//! The seed programs' behaviour, asserted in-process (never by timing): one test per program in
//! `examples/seed*.rs`, each checking what its seed tutorial claims about `multiprocessing.Pool`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha512};
use shmpool::{AsyncResult, Error, Pool, Queue, current_worker};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Aborts the whole test process if the test holding it has not finished within 120 s, so a
/// hang becomes a failure with a message. Dropping the guard disarms it.
struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

fn watchdog(test: &'static str) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(120)) {
            eprintln!("watchdog: test `{test}` still running after 120 s; aborting");
            std::process::abort();
        }
    });
    Watchdog { _disarm: tx }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("shmpool-seeds-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Blocks (in a worker) until `path` exists. The test's watchdog bounds the wait.
fn wait_for(path: &Path) {
    while !path.exists() {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Number of entries in `dir`.
fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

/// Drops an empty marker file named after this process into `dir` (a worker saying "I started").
fn mark_started(dir: &Path, what: &str) {
    File::create(dir.join(format!("{what}-{}", std::process::id()))).expect("create marker");
}

/// Task: record a start marker, wait for the gate, return `("msg: …", pid)`.
fn gated_msg((started, gate, msg): (PathBuf, PathBuf, String)) -> (String, u32) {
    mark_started(&started, &msg);
    wait_for(&gate);
    (format!("msg: {msg}"), std::process::id())
}

fn ppid() -> u32 {
    // SAFETY: getppid takes no arguments, touches no memory and cannot fail.
    let p = unsafe { libc::getppid() };
    p as u32
}

/// Seed 000, "简单使用（非阻塞）": `apply_async` returns before the tasks finish (the
/// `Mark~` line prints first), at most three run at once, and `close` + `join` waits for all four.
#[test]
fn seed0_apply_async_returns_before_tasks_finish() -> TestResult {
    let _wd = watchdog("seed0_apply_async_returns_before_tasks_finish");
    let dir = TempDir::new("seed0-nonblocking");
    let started = dir.path().join("started");
    fs::create_dir(&started)?;
    let gate = dir.path().join("gate");

    let pool = Pool::new(3)?;
    let pids_before = pool.worker_pids();
    let results: Vec<AsyncResult<(String, u32)>> = (0..4)
        .map(|i| {
            // The refused argument (in `SubmitError`) is not needed here.
            pool.apply_async(
                gated_msg,
                (started.clone(), gate.clone(), format!("hello {i}")),
            )
            .map_err(shmpool::Error::from)
        })
        .collect::<Result<_, _>>()?;
    // Every apply_async has returned, and no task can have finished: all wait for the gate.
    assert!(results.iter().all(|r| !r.ready()));
    assert!(results.iter().all(|r| r.successful().is_none()));

    // Three workers, so exactly three tasks start; the fourth waits for a free worker.
    while count_entries(&started) < 3 {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(count_entries(&started), 3);
    assert!(results.iter().all(|r| !r.ready()));

    File::create(&gate)?;
    pool.close();
    pool.join()?;
    assert_eq!(count_entries(&started), 4);
    let mut pids = BTreeSet::new();
    for (i, r) in results.into_iter().enumerate() {
        assert!(r.ready());
        let (msg, pid) = r.get()?;
        assert_eq!(msg, format!("msg: hello {i}"));
        assert!(pids_before.contains(&pid), "{pid} not in {pids_before:?}");
        pids.insert(pid);
    }
    assert!(pids.len() <= 3);
    assert!(!pids.contains(&std::process::id()));
    Ok(())
}

/// Item 0 waits until item 1 has run (item 1 opens the gate), so item 0 always finishes last.
fn gate_pair((i, gate): (u64, PathBuf)) -> u64 {
    match i {
        0 => wait_for(&gate),
        1 => {
            File::create(&gate).expect("create gate");
        }
        _ => {}
    }
    i * 10
}

/// Item 0 waits for the gate, which the parent opens; the others return at once.
fn gated_zero((i, gate): (u64, PathBuf)) -> u64 {
    if i == 0 {
        wait_for(&gate);
    }
    i * 10
}

/// Seed 000, "imap和imap_unordered": a function local to another function works as a task
/// (Python cannot pickle it); `imap` keeps input order even when a later item finishes first;
/// `imap_unordered` yields a permutation in finishing order.
#[test]
fn seed0_imap_order_and_local_functions() -> TestResult {
    let _wd = watchdog("seed0_imap_order_and_local_functions");

    // The seed's `fn_outer`: `fn` inside a function, and a local non-capturing closure.
    fn add((a, b): (u64, u64)) -> u64 {
        a + b
    }
    let pool = Pool::new(2)?;
    let sums: Vec<u64> = pool.imap(add, vec![(1, 2)]).collect::<Result<_, _>>()?;
    assert_eq!(sums, [3]);
    let pairs: Vec<(u64, u64)> = (0..300).map(|i| (i, 2 * i)).collect();
    let sequential: Vec<u64> = pairs.iter().map(|&p| add(p)).collect();
    let ordered: Vec<u64> = pool
        .imap(add, pairs.clone())
        .chunksize(7)
        .collect::<Result<_, _>>()?;
    assert_eq!(ordered, sequential);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(|(a, b): (u64, u64)| a + b, pairs)
        .chunksize(7)
        .collect::<Result<_, _>>()?;
    unordered.sort_unstable();
    let mut sorted = sequential.clone();
    sorted.sort_unstable();
    assert_eq!(unordered, sorted);
    pool.close();
    pool.join()?;

    let dir = TempDir::new("seed0-imap");
    let items = |gate: &Path| {
        (0..6u64)
            .map(|i| (i, gate.to_path_buf()))
            .collect::<Vec<_>>()
    };

    // imap: item 0 finishes after item 1, yet comes out first.
    let gate = dir.path().join("gate-ordered");
    let pool = Pool::new(2)?;
    let ordered: Vec<u64> = pool
        .imap(gate_pair, items(&gate))
        .chunksize(1)
        .collect::<Result<_, _>>()?;
    assert_eq!(ordered, [0, 10, 20, 30, 40, 50]);
    drop(pool);

    // imap_unordered: item 0 cannot finish until the parent has received another result, so
    // the first result out is not item 0's; all six still come out, as a permutation.
    let gate = dir.path().join("gate-unordered");
    let pool = Pool::new(2)?;
    let mut it = pool.imap_unordered(gated_zero, items(&gate)).chunksize(1);
    let first = it.next().expect("six items")?;
    assert_ne!(first, 0);
    File::create(&gate)?;
    let mut unordered = vec![first];
    for r in it {
        unordered.push(r?);
    }
    let mut sorted = unordered.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [0, 10, 20, 30, 40, 50]);
    Ok(())
}

/// Task: report `(n, pid, ppid)` after a short sleep (so several workers get work).
fn pid_task(n: u32) -> (u32, u32, u32) {
    thread::sleep(Duration::from_millis(20));
    (n, std::process::id(), ppid())
}

/// Seed 001, first program: ten tasks on a pool of three run in at most three processes, all
/// of them the pool's workers (a worker is reused for the next task), never the parent.
#[test]
fn seed1_ten_tasks_reuse_three_workers() -> TestResult {
    let _wd = watchdog("seed1_ten_tasks_reuse_three_workers");
    let po = Pool::new(3)?;
    let workers = po.worker_pids();
    assert_eq!(workers.len(), 3);
    let results: Vec<_> = (0..10)
        .map(|i| po.apply_async(pid_task, i))
        .collect::<Result<_, _>>()?;
    po.close();
    po.join()?;
    let mut pids = BTreeSet::new();
    let mut ppids = BTreeSet::new();
    for (i, r) in results.into_iter().enumerate() {
        let (n, pid, ppid) = r.get()?;
        assert_eq!(n as usize, i);
        assert!(workers.contains(&pid), "{pid} not in {workers:?}");
        pids.insert(pid);
        ppids.insert(ppid);
    }
    assert!(pids.len() <= 3, "{pids:?}");
    assert!(!pids.contains(&std::process::id()));
    // All workers are children of the same process (shmpool's fork server, not the caller).
    assert_eq!(ppids.len(), 1, "{ppids:?}");
    Ok(())
}

/// Task: append `s{i}`, pause, append `e{i}` to a shared log opened with `O_APPEND`.
fn logged((i, log): (u32, PathBuf)) -> u32 {
    let mut f = OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open log");
    f.write_all(format!("s{i}\n").as_bytes())
        .expect("write log");
    thread::sleep(Duration::from_millis(10));
    f.write_all(format!("e{i}\n").as_bytes())
        .expect("write log");
    i
}

fn sleep_then((ms, v): (u64, u64)) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    v
}

fn gated_value((gate, v): (PathBuf, u64)) -> u64 {
    wait_for(&gate);
    v
}

fn square(x: u64) -> u64 {
    x * x
}

fn fails(_: ()) -> u64 {
    panic!("boom")
}

/// Seed 002, 实例1 and 常用方法: `apply_async` returns at once and runs up to five at a time;
/// `apply` blocks, so seven blocking tasks never overlap and come back in order; and the listed
/// methods (`map`, `map_async`, `imap`, `get(timeout)`, `ready`, `successful`, `wait`) behave as
/// described.
#[test]
fn seed2_blocking_vs_async_and_methods() -> TestResult {
    let _wd = watchdog("seed2_blocking_vs_async_and_methods");
    let dir = TempDir::new("seed2-blocking");

    // Non-blocking: seven tasks, five workers.
    let started = dir.path().join("started");
    fs::create_dir(&started)?;
    let gate = dir.path().join("gate");
    let pool = Pool::new(5)?;
    let workers = pool.worker_pids();
    let results: Vec<_> = (0..7)
        .map(|i| {
            // The refused argument (in `SubmitError`) is not needed here.
            pool.apply_async(
                gated_msg,
                (started.clone(), gate.clone(), format!("mark{i}")),
            )
            .map_err(shmpool::Error::from)
        })
        .collect::<Result<_, _>>()?;
    assert!(results.iter().all(|r| !r.ready()));
    while count_entries(&started) < 5 {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(count_entries(&started), 5);
    File::create(&gate)?;
    pool.close();
    pool.join()?;
    let mut pids = BTreeSet::new();
    for (i, r) in results.into_iter().enumerate() {
        let (msg, pid) = r.get()?;
        assert_eq!(msg, format!("msg: mark{i}"));
        assert!(workers.contains(&pid));
        pids.insert(pid);
    }
    assert!(pids.len() <= 5);

    // Blocking: each apply returns its own result, and no two tasks overlap.
    let log = dir.path().join("log");
    File::create(&log)?;
    let pool = Pool::new(5)?;
    for i in 0..7 {
        assert_eq!(pool.apply(logged, (i, log.clone()))?, i);
    }
    pool.close();
    pool.join()?;
    let expected: String = (0..7).map(|i| format!("s{i}\ne{i}\n")).collect();
    assert_eq!(fs::read_to_string(&log)?, expected);

    // 常用方法.
    let pool = Pool::builder().processes(2).build()?;
    let sequential: Vec<u64> = (0..50).map(square).collect();
    assert_eq!(pool.map(square, 0..50u64)?, sequential);
    assert_eq!(pool.map_chunked(square, 0..50u64, 3)?, sequential);
    let r = pool.map_async(square, 0..50u64)?;
    r.wait();
    assert!(r.ready());
    assert_eq!(r.successful(), Some(true));
    assert_eq!(r.get()?, sequential);
    let imap: Vec<u64> = pool.imap(square, 0..50u64).collect::<Result<_, _>>()?;
    assert_eq!(imap, sequential);

    // get(timeout) times out while the task cannot finish, and the handle stays usable.
    let gate = dir.path().join("gate-methods");
    let mut late = pool.apply_async(gated_value, (gate.clone(), 7))?;
    assert!(!late.ready());
    assert_eq!(late.successful(), None);
    assert!(matches!(
        late.get_timeout(Duration::from_millis(20)),
        Err(Error::Timeout)
    ));
    assert!(!late.wait_timeout(Duration::from_millis(20)));
    File::create(&gate)?;
    late.wait();
    assert!(late.ready());
    assert_eq!(late.successful(), Some(true));
    assert_eq!(late.get_timeout(Duration::from_secs(60))?, 7);
    assert!(matches!(
        late.get_timeout(Duration::from_secs(1)),
        Err(Error::ResultTaken)
    ));

    // successful() is false for a task that raised.
    let bad = pool.apply_async(fails, ())?;
    bad.wait();
    assert_eq!(bad.successful(), Some(false));
    assert!(matches!(bad.get(), Err(Error::TaskPanicked { .. })));

    // terminate(): unfinished work ends with an error, not a hang.
    let pending = pool.apply_async(sleep_then, (60_000, 1))?;
    pool.terminate();
    assert!(matches!(pending.get(), Err(Error::PoolTerminated)));
    Ok(())
}

/// The seed's `mark`: SHA-512 of a file read in 8196-byte pieces; `None` if it cannot be read.
fn mark(filename: PathBuf) -> Option<(PathBuf, Vec<u8>)> {
    let mut f = File::open(&filename).ok()?;
    let mut digest = Sha512::new();
    let mut buf = vec![0u8; 8196];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Some((filename, digest.finalize().to_vec()))
}

/// Every file under `dir`, collected by recursion.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Seed 002, 实例2: hashing a directory tree in a pool of two with `imap_unordered` and
/// chunksize 20 gives the same map as hashing it in one process.
#[test]
fn seed2_sha512_walk_matches_single_process() -> TestResult {
    let _wd = watchdog("seed2_sha512_walk_matches_single_process");
    let dir = TempDir::new("seed2-sha512");
    let root = dir.path();
    fs::create_dir_all(root.join("sub/deeper"))?;
    fs::create_dir_all(root.join("empty-dir"))?;
    let sizes = [
        0usize,
        1,
        100,
        8195,
        8196,
        8197,
        65_536,
        (1 << 20) + 12_345,
        3 << 20,
    ];
    let mut expected_files = 0;
    for n in 0..45usize {
        let size = sizes[n % sizes.len()];
        let sub = match n % 3 {
            0 => root.to_path_buf(),
            1 => root.join("sub"),
            _ => root.join("sub/deeper"),
        };
        let name = if n % 5 == 0 {
            format!("{n}、进程.py")
        } else {
            format!("file{n}.bin")
        };
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + n * 7) as u8).collect();
        fs::write(sub.join(name), data)?;
        expected_files += 1;
    }

    let mut files = Vec::new();
    walk(root, &mut files)?;
    assert_eq!(files.len(), expected_files);
    let single: BTreeMap<PathBuf, Vec<u8>> = files
        .iter()
        .map(|p| {
            let bytes = fs::read(p).expect("read file");
            (p.clone(), Sha512::digest(&bytes).to_vec())
        })
        .collect();

    let pool = Pool::new(2)?;
    let mut parallel = BTreeMap::new();
    for item in pool.imap_unordered(mark, files).chunksize(20) {
        let (path, digest) = item?.expect("every file is readable");
        assert!(parallel.insert(path, digest).is_none(), "a file came twice");
    }
    pool.close();
    pool.join()?;
    assert_eq!(parallel.len(), expected_files);
    assert_eq!(parallel, single);
    // A file that cannot be opened is `None`, as the seed's `except IOError`.
    let pool = Pool::new(1)?;
    assert_eq!(pool.apply(mark, root.join("missing"))?, None);
    Ok(())
}

fn func(num: u64) -> u64 {
    num + 1
}

/// Seed 003: `apply` returns each result in turn; `apply_async` callbacks run in the parent
/// process; collected `apply_async` handles give every result after `join`; `map` equals the
/// sequential result.
#[test]
fn seed3_apply_callbacks_and_map() -> TestResult {
    let _wd = watchdog("seed3_apply_callbacks_and_map");
    let p = Pool::new(5)?;
    for i in 0..10_000u64 {
        assert_eq!(p.apply(func, i)?, i + 1);
    }
    p.close();
    p.join()?;

    // Callbacks run in the parent (主进程), not in a worker.
    let (tx, rx) = mpsc::channel();
    let p = Pool::builder().build()?;
    for i in 0..10u64 {
        let tx = tx.clone();
        p.apply_async_with_callback(func, i, move |r| {
            let p1 = r.expect("task succeeded");
            let _ = tx.send((p1 + 1, current_worker().is_none(), std::process::id()));
        })?;
    }
    drop(tx);
    p.close();
    p.join()?;
    let mut printed = Vec::new();
    for (value, in_parent, pid) in rx.iter() {
        assert!(in_parent);
        assert_eq!(pid, std::process::id());
        printed.push(value);
    }
    printed.sort_unstable();
    assert_eq!(printed, (2..=11).collect::<Vec<u64>>());

    let p = Pool::new(5)?;
    let l: Vec<_> = (0..10_000u64)
        .map(|i| p.apply_async(func, i))
        .collect::<Result<_, _>>()?;
    p.close();
    p.join()?;
    for (i, res) in l.into_iter().enumerate() {
        assert!(res.ready());
        assert_eq!(res.get()?, i as u64 + 1);
    }

    let p = Pool::new(5)?;
    let res = p.map(func, 0..100u64)?;
    assert_eq!(res, (0..100u64).map(func).collect::<Vec<_>>());
    Ok(())
}

/// Task: start marker, wait until `want` workers have started, return this worker's name.
fn name_after_barrier((dir, want): (PathBuf, usize)) -> String {
    mark_started(&dir, "w");
    while count_entries(&dir) < want {
        thread::sleep(Duration::from_millis(1));
    }
    current_worker().expect("in a worker").name()
}

fn named(msg: String) -> String {
    current_worker().expect("in a worker").name() + "-" + &msg
}

/// Seed 004: a fresh pool of four has workers `PoolWorker-1` to `PoolWorker-4`; each of ten
/// results starts with the name of one of them, and `get` after `join` gives them in order.
#[test]
fn seed4_worker_names() -> TestResult {
    let _wd = watchdog("seed4_worker_names");
    assert!(current_worker().is_none());
    let dir = TempDir::new("seed4-names");
    let pool = Pool::new(4)?;
    // All four tasks wait until all four have started, so each runs in a different worker.
    let barrier: Vec<_> = (0..4)
        .map(|_| pool.apply_async(name_after_barrier, (dir.path().to_path_buf(), 4)))
        .collect::<Result<_, _>>()?;
    let names: BTreeSet<String> = barrier
        .into_iter()
        .map(AsyncResult::get)
        .collect::<Result<_, _>>()?;
    let expected: BTreeSet<String> = (1..=4).map(|n| format!("PoolWorker-{n}")).collect();
    assert_eq!(names, expected);

    let results: Vec<_> = (0..10)
        .map(|i| pool.apply_async(named, format!("hello {i}")))
        .collect::<Result<_, _>>()?;
    pool.close();
    pool.join()?;
    for (i, res) in results.into_iter().enumerate() {
        let s = res.get()?;
        let (name, msg) = s.rsplit_once('-').expect("name-msg");
        assert_eq!(msg, format!("hello {i}"));
        assert!(names.contains(name), "{s}");
    }
    Ok(())
}

/// The seed's `write`: put the letters of "python"; returns the worker's pid.
fn queue_write(q: Queue<char>) -> u32 {
    for c in "python".chars() {
        q.put(c).expect("put");
    }
    std::process::id()
}

/// The seed's `read`: take as many items as the queue holds now; returns them and the pid.
fn queue_read(q: Queue<char>) -> (String, u32) {
    let n = q.len();
    let s = (0..n).map(|_| q.get().expect("get")).collect();
    (s, std::process::id())
}

/// Takes exactly six items, blocking until each arrives.
fn queue_read6(q: Queue<char>) -> String {
    (0..6).map(|_| q.get().expect("get")).collect()
}

/// Seed 001, "进程池中的Queue": a queue created before the pool and passed to two tasks
/// carries p, y, t, h, o, n in order from one worker to another.
#[test]
fn seed1_queue_carries_python_between_tasks() -> TestResult {
    let _wd = watchdog("seed1_queue_carries_python_between_tasks");
    let q = Queue::new(16)?;
    let pool = Pool::new(2)?;
    let workers = pool.worker_pids();

    // As the seed: write, wait until written, then read what is there.
    let writer = pool.apply_async(queue_write, q.clone())?.get()?;
    assert_eq!(q.len(), 6);
    let (read, reader) = pool.apply(queue_read, q.clone())?;
    assert_eq!(read, "python");
    assert_eq!(q.len(), 0);
    assert!(workers.contains(&writer) && workers.contains(&reader));
    assert_eq!(q.try_get()?, None);

    // The reader may also start first and block in `get` until the writer, in another
    // worker, puts each letter.
    let reader = pool.apply_async(queue_read6, q.clone())?;
    pool.apply_async(queue_write, q.clone())?;
    assert_eq!(reader.get()?, "python");
    pool.close();
    pool.join()?;
    assert_eq!(q.len(), 0);
    Ok(())
}
