//! Nothing is left behind: after drop, join or terminate the fork server and every worker are
//! gone and reaped, the fd count is back where it was, `/dev/shm` is untouched, and a parent
//! that dies takes its workers with it.
//!
//! The tests count process-wide resources, so they run one at a time (`common::serial`).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use shmpool::{Error, Pool};

/// What a pool may leak, taken before it is built.
struct Snapshot {
    fds: usize,
    shm: BTreeSet<String>,
    children: BTreeSet<u32>,
}

impl Snapshot {
    fn take() -> Snapshot {
        Snapshot {
            fds: common::fd_count(),
            shm: common::dev_shm(),
            children: common::children(),
        }
    }

    /// Asserts every process in `pids` is gone (reaped: no `/proc` entry, not even a zombie) and
    /// the process-wide counts are back to the snapshot.
    fn assert_clean(&self, pids: &BTreeSet<u32>) {
        for &p in pids {
            assert!(
                !common::exists(p),
                "process {p} still exists after shutdown: {:?}",
                common::proc_stat(p)
            );
        }
        assert_eq!(common::children(), self.children, "child processes left");
        assert_eq!(common::fd_count(), self.fds, "fds leaked");
        let shm = common::dev_shm();
        let new: Vec<_> = shm.difference(&self.shm).collect();
        assert!(new.is_empty(), "new entries in /dev/shm: {new:?}");
    }
}

/// The fork server's pid and the workers' pids, checked to be a tree under this process.
fn pool_processes(pool: &Pool) -> BTreeSet<u32> {
    let workers = pool.worker_pids();
    let server = common::ppid_of(workers[0]).expect("worker has a /proc entry");
    assert_eq!(common::ppid_of(server), Some(std::process::id()));
    let mut all: BTreeSet<u32> = workers.iter().copied().collect();
    for &w in &workers {
        assert_eq!(
            common::ppid_of(w),
            Some(server),
            "worker {w} not a child of the server"
        );
    }
    all.insert(server);
    all
}

fn pid(_: u32) -> u32 {
    std::process::id()
}

fn blocked(p: PathBuf) -> u32 {
    common::wait_gate(&p);
    0
}

#[test]
fn drop_reaps_the_server_and_every_worker_and_closes_every_fd() {
    let _s = common::serial();
    let _w = common::arm(60);
    let snap = Snapshot::take();
    let pool = Pool::new(3).unwrap();
    let pids = pool_processes(&pool);
    assert_eq!(pids.len(), 4);
    assert_eq!(pool.map(|x: u64| x + 1, 0..1000).unwrap().len(), 1000);
    drop(pool);
    snap.assert_clean(&pids);
}

#[test]
fn close_and_join_reap_everything() {
    let _s = common::serial();
    let _w = common::arm(60);
    let snap = Snapshot::take();
    let pool = Pool::new(2).unwrap();
    let pids = pool_processes(&pool);
    let pending: Vec<_> = (0..100u32)
        .map(|i| pool.apply_async(|x: u32| x * 3, i).unwrap())
        .collect();
    pool.close();
    pool.join().unwrap();
    // Joined, not yet dropped: the processes are already gone.
    for &p in &pids {
        assert!(!common::exists(p), "process {p} outlived join");
    }
    for (i, r) in pending.into_iter().enumerate() {
        assert_eq!(r.get().unwrap(), 3 * i as u32);
    }
    drop(pool);
    snap.assert_clean(&pids);
}

#[test]
fn terminate_with_running_tasks_reaps_everything() {
    let _s = common::serial();
    let _w = common::arm(60);
    let snap = Snapshot::take();
    let gate = common::Gate::new(); // never opened
    let pool = Pool::new(2).unwrap();
    let pids = pool_processes(&pool);
    let pending: Vec<_> = (0..6)
        .map(|_| pool.apply_async(blocked, gate.path()).unwrap())
        .collect();
    pool.terminate();
    for &p in &pids {
        assert!(!common::exists(p), "process {p} outlived terminate");
    }
    for r in pending {
        assert!(matches!(r.get(), Err(Error::PoolTerminated)));
    }
    drop(pool);
    drop(gate);
    snap.assert_clean(&pids);
}

#[test]
fn replaced_workers_are_reaped_too() {
    let _s = common::serial();
    let _w = common::arm(60);
    let snap = Snapshot::take();
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(3)
        .build()
        .unwrap();
    let mut pids = pool_processes(&pool);
    // Recycled by max_tasks_per_child.
    pids.extend(pool.map_chunked(pid, 0..30, 1).unwrap());
    // Killed from outside and replaced.
    let victim = pool.worker_pids()[1];
    if victim != 0 {
        pids.insert(victim);
        common::kill(victim, libc::SIGKILL);
    }
    // Killed by its own task.
    let e = pool
        .apply(
            |_: u32| -> u32 {
                // SAFETY: raise(3) on this worker, which the test wants dead.
                unsafe { libc::raise(libc::SIGKILL) };
                0
            },
            0,
        )
        .unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e:?}");
    pids.extend(pool.map_chunked(pid, 0..10, 1).unwrap());
    pids.extend(pool.worker_pids().into_iter().filter(|&p| p != 0));
    assert!(
        pids.len() >= 12,
        "expected many distinct processes: {pids:?}"
    );
    drop(pool);
    snap.assert_clean(&pids);
}

#[test]
fn a_pool_whose_initializer_failed_leaves_nothing() {
    let _s = common::serial();
    let _w = common::arm(60);
    let snap = Snapshot::take();
    let pool = Pool::builder()
        .processes(2)
        .initializer(|| panic!("no init"))
        .build()
        .unwrap();
    let mut pids: BTreeSet<u32> = common::children()
        .difference(&snap.children)
        .copied()
        .collect();
    assert_eq!(pids.len(), 1, "expected exactly one fork server: {pids:?}");
    pids.extend(pool.worker_pids().into_iter().filter(|&p| p != 0));
    assert!(pool.apply(|x: u32| x, 1).is_err());
    drop(pool);
    snap.assert_clean(&pids);
}

#[test]
fn many_pools_in_a_row_leave_nothing() {
    let _s = common::serial();
    let _w = common::arm(60);
    let snap = Snapshot::take();
    let mut all = BTreeSet::new();
    for i in 0..20u32 {
        let pool = Pool::new(2).unwrap();
        all.extend(pool_processes(&pool));
        assert_eq!(pool.apply(|x: u32| x + 1, i).unwrap(), i + 1);
        if i % 2 == 0 {
            pool.close();
            pool.join().unwrap();
        }
    }
    snap.assert_clean(&all);
}

#[test]
fn bad_arguments_leave_nothing() {
    let _s = common::serial();
    let _w = common::arm(60);
    let snap = Snapshot::take();
    assert!(Pool::new(0).is_err());
    assert!(Pool::builder().processes(1).arena_size(1).build().is_err());
    assert!(
        Pool::builder()
            .processes(1)
            .max_tasks_per_child(0)
            .build()
            .is_err()
    );
    snap.assert_clean(&BTreeSet::new());
}

/// Child side of the parent-death scenarios: builds a pool, optionally makes every worker busy
/// in an endless task, prints `PIDS <server> <workers...>`, then waits to be killed.
fn parent_death_child(busy: bool) -> ! {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let pids = pool_processes(&pool);
    if busy {
        let dir = std::env::temp_dir().join(format!("shmpool-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..2 {
            std::mem::forget(
                pool.apply_async(
                    |dir: PathBuf| -> u32 {
                        std::fs::write(dir.join(std::process::id().to_string()), b"").unwrap();
                        loop {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    },
                    dir.clone(),
                )
                .unwrap(),
            );
        }
        let workers = pool.worker_pids();
        assert!(common::eventually(Duration::from_secs(60), || {
            workers.iter().all(|w| dir.join(w.to_string()).exists())
        }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let line: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nPIDS {}", line.join(" ")).unwrap();
    out.flush().unwrap();
    drop(out);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs the scenario in a child copy of this binary, SIGKILLs the child once its pool is up,
/// and checks that the fork server and every worker die too.
fn parent_death(test_name: &str, scenario: &str) {
    let _w = common::arm(90);
    let mut child = common::reexec(test_name, scenario).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut pids: Vec<u32> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // The harness prints `test <name> ... ` without a newline before running the test.
        if let Some(at) = line.find("PIDS ") {
            let rest = &line[at + "PIDS ".len()..];
            pids = rest.split(' ').map(|p| p.parse().unwrap()).collect();
            break;
        }
    }
    assert_eq!(pids.len(), 3, "the child did not report its pool");
    for &p in &pids {
        assert!(
            !common::dead(p),
            "process {p} not alive before the parent died"
        );
    }
    common::kill(child.id(), libc::SIGKILL);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let all_dead = common::eventually(Duration::from_secs(30), || {
        pids.iter().all(|&p| common::dead(p))
    });
    let alive: Vec<_> = pids.iter().filter(|&&p| !common::dead(p)).collect();
    assert!(
        all_dead,
        "orphans still alive after the parent died: {alive:?}"
    );
}

#[test]
fn parent_death_kills_the_server_and_idle_workers() {
    if common::scenario().as_deref() == Some("parent-death-idle") {
        parent_death_child(false);
    }
    let _s = common::serial();
    parent_death(
        "parent_death_kills_the_server_and_idle_workers",
        "parent-death-idle",
    );
}

#[test]
fn parent_death_kills_busy_workers() {
    if common::scenario().as_deref() == Some("parent-death-busy") {
        parent_death_child(true);
    }
    let _s = common::serial();
    parent_death("parent_death_kills_busy_workers", "parent-death-busy");
}
