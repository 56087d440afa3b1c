//! The cluster pool over real MPI ranks on this machine (feature `mpi`).
//!
//! A test harness of its own (`harness = false`): run plainly, `main` launches this same binary
//! under `mpirun --allow-run-as-root --oversubscribe -n 3` with a scenario in the environment;
//! run with the scenario, it is a rank (`Cluster::start` serves on ranks 1 and 2 and exits;
//! rank 0 runs the checks and prints `ok <check>` or `FAIL <check>: ...` lines, which the
//! launching side asserts). Missing `mpirun` is a failure, never a skip.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use shmpool::Error;
use shmpool::cluster::Cluster;

const SCENARIO: &str = "SHMPOOL_CLUSTER_SCENARIO";
const N_MAP: u64 = 1_000_000;

/// Pid of the rank's own process, set before `Cluster::start`, so a worker forked after can
/// kill its rank (a worker's parent is the fork server, not the rank).
static RANK_PID: AtomicI32 = AtomicI32::new(0);

fn mix(x: u64) -> u64 {
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(17) ^ x
}

/// An order-sensitive digest of a sequence.
fn digest(v: impl IntoIterator<Item = u64>) -> (usize, u64) {
    let mut n = 0;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for x in v {
        n += 1;
        h = (h ^ x).wrapping_mul(0x100_0000_01b3);
    }
    (n, h)
}

fn boom(x: u64) -> u64 {
    if x % 500 == 7 {
        panic!("boom {x}");
    }
    x + 1
}

fn kill_own_worker(x: u64) -> u64 {
    if x == 42 {
        common::no_core_dumps();
        // SAFETY: raise(2) has no memory-safety preconditions; this worker is meant to die.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    x * 2
}

/// The pid of the rank whose pool runs the item.
fn which_rank(_: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(2));
    RANK_PID.load(Ordering::SeqCst)
}

/// An argument whose `Deserialize` panics for 13 in a rank's own process (where a chunk is
/// decoded), not in its workers.
#[derive(Debug, serde::Serialize)]
struct PanicsOnRank(u64);

impl<'de> serde::Deserialize<'de> for PanicsOnRank {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = <u64 as serde::Deserialize>::deserialize(d)?;
        // SAFETY: getpid(2) has no preconditions.
        if v == 13 && unsafe { libc::getpid() } == RANK_PID.load(Ordering::SeqCst) {
            panic!("no 13 here");
        }
        Ok(PanicsOnRank(v))
    }
}

/// Rank 0's checks; each prints one line.
fn rank0_main(cluster: &Cluster) {
    let check = |name: &str, r: Result<(), String>| match r {
        Ok(()) => println!("ok {name}"),
        Err(e) => println!("FAIL {name}: {e}"),
    };

    check(
        "ranks",
        (cluster.ranks() == 3 && cluster.processes() == 6)
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "{} ranks, {} processes",
                    cluster.ranks(),
                    cluster.processes()
                )
            }),
    );

    // Every rank works (rank 0 too): the rank whose pool ran each item.
    let by: Result<BTreeSet<i32>, Error> = cluster.imap_unordered(which_rank, 0..300u64).collect();
    check(
        "every_rank_works",
        match by {
            Ok(pids) if pids.len() == 3 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    match cluster.map(mix, 0..N_MAP) {
        Ok(v) => {
            let (n, h) = digest(v);
            println!("map {n} {h:016x}");
        }
        Err(e) => println!("FAIL map: {e}"),
    }

    // Items whose cost falls with the index, so later chunks come back before earlier ones.
    // Item 0 alone (the first chunk holds one item) takes longer than all the rest together.
    let slow_first = |x: u64| {
        if x == 0 {
            std::thread::sleep(Duration::from_millis(500));
        } else if x < 64 {
            std::thread::sleep(Duration::from_millis(64 - x));
        }
        x * 3
    };
    let got: Result<Vec<u64>, Error> = cluster.imap(slow_first, 0..20_000u64).collect();
    check(
        "imap_order",
        match got {
            Ok(v) if v == (0..20_000u64).map(|x| x * 3).collect::<Vec<_>>() => Ok(()),
            Ok(v) => Err(format!("{} results, not in order", v.len())),
            Err(e) => Err(e.to_string()),
        },
    );

    let got: Result<Vec<u64>, Error> = cluster.imap_unordered(slow_first, 0..20_000u64).collect();
    check(
        "imap_unordered_set",
        match got {
            Ok(mut v) => {
                let arrived_sorted = v.windows(2).all(|w| w[0] <= w[1]);
                v.sort_unstable();
                if v != (0..20_000u64).map(|x| x * 3).collect::<Vec<_>>() {
                    Err("not the same set".into())
                } else if arrived_sorted {
                    Err("arrived in input order although the first items were slowest".into())
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e.to_string()),
        },
    );

    let results: Result<Vec<_>, Error> = (0..40u64)
        .map(|i| cluster.apply_async(|s: String| format!("{s}!"), i.to_string()))
        .collect();
    check(
        "apply_async",
        results.map_err(|e| e.to_string()).and_then(|rs| {
            let got: Vec<String> = rs
                .into_iter()
                .map(|r| r.get())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let want: Vec<String> = (0..40).map(|i| format!("{i}!")).collect();
            (got == want).then_some(()).ok_or("wrong values".into())
        }),
    );

    let items: Vec<Result<u64, Error>> = cluster.imap(boom, 0..2_000u64).collect();
    check(
        "imap_panics",
        (|| {
            if items.len() != 2000 {
                return Err(format!("{} results", items.len()));
            }
            for (i, r) in items.iter().enumerate() {
                let i = i as u64;
                match r {
                    Ok(v) if i % 500 != 7 && *v == i + 1 => {}
                    Err(Error::TaskPanicked { message, .. })
                        if i % 500 == 7 && *message == format!("boom {i}") => {}
                    other => return Err(format!("item {i}: {other:?}")),
                }
            }
            Ok(())
        })(),
    );
    check(
        "map_panics",
        match cluster.map(boom, 0..2_000u64) {
            Err(Error::TaskPanicked { message, .. }) if message == "boom 7" => Ok(()),
            other => Err(format!("{:?}", other.map(|v| v.len()))),
        },
    );
    check(
        "apply_panics",
        match cluster.apply(boom, 507) {
            Err(e @ Error::TaskPanicked { .. }) if e.to_string().ends_with(": boom 507") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // A Deserialize that panics fails its own item, as locally, not its chunk's neighbours.
    let items: Vec<Result<u64, Error>> = cluster
        .imap(|p: PanicsOnRank| p.0, (0..300u64).map(PanicsOnRank))
        .collect();
    check(
        "deserialize_panic_fails_one_item",
        (|| {
            for (i, r) in items.iter().enumerate() {
                match r {
                    Ok(v) if i != 13 && *v == i as u64 => {}
                    Err(Error::Codec { detail })
                        if i == 13 && detail.ends_with("Deserialize panicked: no 13 here") => {}
                    other => return Err(format!("item {i}: {other:?}")),
                }
            }
            (items.len() == 300)
                .then_some(())
                .ok_or(format!("{} results", items.len()))
        })(),
    );
    check(
        "apply_worker_killed",
        match cluster.apply(kill_own_worker, 42) {
            Err(Error::WorkerDied {
                signal: Some(9), ..
            }) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let items: Vec<Result<u64, Error>> = cluster.imap(kill_own_worker, 0..5_000u64).collect();
    check(
        "imap_worker_killed",
        (|| {
            if items.len() != 5000 {
                return Err(format!("{} results", items.len()));
            }
            if !matches!(
                items[42],
                Err(Error::WorkerDied {
                    signal: Some(9),
                    ..
                })
            ) {
                return Err(format!("item 42: {:?}", items[42]));
            }
            // Items that shared the dead worker's chunk fail with it, as locally; the rest
            // are right.
            for (i, r) in items.iter().enumerate() {
                match r {
                    Ok(v) if *v == 2 * i as u64 => {}
                    Err(Error::WorkerDied { .. }) => {}
                    other => return Err(format!("item {i}: {other:?}")),
                }
            }
            Ok(())
        })(),
    );
    check(
        "works_after_worker_deaths",
        match cluster.map(mix, 0..10_000u64) {
            Ok(v) if v == (0..10_000u64).map(mix).collect::<Vec<_>>() => Ok(()),
            other => Err(format!("{:?}", other.map(|v| v.len()))),
        },
    );
    // A dropped half-read imap leaves nothing behind that confuses what follows.
    let first: Vec<u64> = cluster
        .imap(mix, 0..1_000_000u64)
        .take(10)
        .map(|r| r.unwrap_or(0))
        .collect();
    let again = cluster.map(|x: u64| x + 5, 0..1000u64);
    check(
        "dropped_imap",
        (first == (0..10).map(mix).collect::<Vec<_>>()
            && again.as_deref().ok() == Some(&(5..1005u64).collect::<Vec<_>>()[..]))
        .then_some(())
        .ok_or_else(|| format!("{first:?} {again:?}")),
    );
}

/// Arguments and results over MPI's 2 GiB message limit fail their own tasks with an error
/// that says so; the tasks around them, queued or in flight, are not disturbed.
fn oversize(c: &Cluster) {
    let check = |name: &str, r: Result<(), String>| match r {
        Ok(()) => println!("ok {name}"),
        Err(e) => println!("FAIL {name}: {e}"),
    };
    let over = || "x".repeat((1 << 31) + 10);
    let is_limit = |e: &Error| e.to_string().contains("MPI's limit");
    // Fill every rank's room (2 ranks x 2 processes x 2), so the big one would queue.
    let slow: Vec<_> = (0..8u64)
        .map(|i| {
            c.apply_async(
                |x: u64| {
                    std::thread::sleep(Duration::from_millis(500));
                    x
                },
                i,
            )
        })
        .collect();
    let big = c.apply_async(|s: String| s.len(), over());
    check(
        "oversize_apply_async",
        match &big {
            Err(e) if is_limit(e) => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("a 2 GiB argument was accepted".into()),
        },
    );
    drop(big);
    let got: Vec<_> = slow
        .into_iter()
        .map(|r| r.and_then(|r| r.get()).map_err(|e| e.to_string()))
        .collect();
    check(
        "oversize_neighbours",
        (got == (0..8u64).map(Ok).collect::<Vec<_>>())
            .then_some(())
            .ok_or_else(|| format!("{got:?}")),
    );
    let got: Vec<_> = c
        .imap(
            |s: String| s.len(),
            ["a".to_string(), over(), "bc".to_string()],
        )
        .collect();
    check(
        "oversize_imap_item",
        match &got[..] {
            [Ok(1), Err(e), Ok(2)] if is_limit(e) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // Results: a chunk of 22 results of 100 MiB cannot go back in one message.
    let got: Vec<Result<usize, Error>> = c
        .imap(|_: u64| "y".repeat(100 << 20), 0..22u64)
        .chunksize(22)
        .map(|r| r.map(|s| s.len()))
        .collect();
    check(
        "oversize_reply",
        (got.len() == 22 && got.iter().all(|r| r.as_ref().is_err_and(is_limit)))
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "{:?}",
                    got.iter()
                        .map(|r| r.as_ref().map_err(|e| e.to_string()))
                        .collect::<Vec<_>>()
                )
            }),
    );
    check(
        "oversize_then_map",
        match c.map(|x: u64| x + 1, 0..100u64) {
            Ok(v) if v == (1..101u64).collect::<Vec<_>>() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

/// What a rank does, by scenario.
fn rank(scenario: &str) -> i32 {
    // SAFETY: getpid(2) has no preconditions.
    RANK_PID.store(unsafe { libc::getpid() }, Ordering::SeqCst);
    let mut builder = Cluster::builder().processes_per_rank(2);
    if scenario == "oversize" {
        // Every task crosses MPI, where a message holds at most 2 GiB.
        builder = builder.rank0_processes(0);
    }
    let cluster = builder.start();
    match scenario {
        "oversize" => match cluster {
            Ok(c) => {
                oversize(&c);
                drop(c);
                println!("rank0 done");
                0
            }
            Err(e) => {
                println!("FAIL start: {e}");
                1
            }
        },
        "main" => match cluster {
            Ok(c) => {
                rank0_main(&c);
                drop(c);
                println!("rank0 done");
                0
            }
            Err(e) => {
                println!("FAIL start: {e}");
                1
            }
        },
        "mismatch" => match cluster {
            Ok(_) => {
                println!("FAIL mismatch: started");
                1
            }
            Err(e) => {
                println!("refused: {e}");
                0
            }
        },
        "dead_rank" => match cluster {
            Ok(c) => {
                // The task kills the rank that runs it (its main process, not a worker).
                let r = c.map(
                    |x: u64| {
                        if x == 500 {
                            common::no_core_dumps();
                            let pid = RANK_PID.load(Ordering::SeqCst);
                            // SAFETY: kill(2) has no memory-safety preconditions.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                            std::thread::sleep(Duration::from_secs(60));
                        }
                        x
                    },
                    0..1000u64,
                );
                println!("FAIL dead_rank: map returned {:?}", r.map(|v| v.len()));
                1
            }
            Err(e) => {
                println!("FAIL start: {e}");
                1
            }
        },
        other => {
            println!("FAIL unknown scenario {other}");
            1
        }
    }
}

/// Output and status of an `mpirun` run, killed (and failed) if it outlives `limit`.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn mpirun(args: &[&str], scenario: &str, limit: Duration) -> Run {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-x", SCENARIO])
        .args(args)
        .env(SCENARIO, scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run mpirun ({e}): the `mpi` feature's tests need OpenMPI \
             (apt-get install openmpi-bin libopenmpi-dev libclang-dev)"
        ),
    };
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for mpirun") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mpirun {args:?} ({scenario}) hung for {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        code: status.code(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Processes running `exe` (other than this one).
fn running(exe: &Path) -> BTreeSet<u32> {
    let me = std::process::id();
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid != me
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
            && !common::dead(pid)
        {
            out.insert(pid);
        }
    }
    out
}

fn assert_nothing_left(exe: &Path) {
    assert!(
        common::eventually(Duration::from_secs(20), || running(exe).is_empty()),
        "processes of {} outlived the job: {:?}",
        exe.display(),
        running(exe)
    );
}

fn exe() -> PathBuf {
    std::env::current_exe().expect("current_exe")
}

fn map_equals_the_local_pools_and_every_check_passes() {
    let run = mpirun(
        &["-n", "3", exe().to_str().expect("utf-8 path")],
        "main",
        Duration::from_secs(300),
    );
    let ctx = format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_eq!(run.code, Some(0), "{ctx}");
    assert!(!run.stdout.contains("FAIL"), "{ctx}");
    for name in [
        "ranks",
        "every_rank_works",
        "imap_order",
        "imap_unordered_set",
        "apply_async",
        "imap_panics",
        "map_panics",
        "apply_panics",
        "deserialize_panic_fails_one_item",
        "apply_worker_killed",
        "imap_worker_killed",
        "works_after_worker_deaths",
        "dropped_imap",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == format!("ok {name}")),
            "{name}: {ctx}"
        );
    }
    assert!(run.stdout.lines().any(|l| l == "rank0 done"), "{ctx}");
    // The same map on the local pool, here.
    let pool = shmpool::Pool::new(2).expect("local pool");
    let (n, h) = digest(pool.map(mix, 0..N_MAP).expect("local map"));
    drop(pool);
    let want = format!("map {n} {h:016x}");
    assert!(
        run.stdout.lines().any(|l| l == want),
        "want `{want}`: {ctx}"
    );
    assert!(
        !run.stderr.contains("fork()"),
        "OpenMPI warned about fork: {ctx}"
    );
    assert_nothing_left(&exe());
}

fn a_mismatched_binary_is_refused() {
    let dir = std::env::temp_dir().join(format!("shmpool-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("other-build");
    let mut bytes = std::fs::read(exe()).expect("read own exe");
    bytes.push(0); // an ELF runs with trailing bytes; its hash differs
    std::fs::write(&copy, bytes).expect("write copy");
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let run = mpirun(
        &[
            "-n",
            "1",
            exe().to_str().expect("utf-8"),
            ":",
            "-n",
            "2",
            copy.to_str().expect("utf-8"),
        ],
        "mismatch",
        Duration::from_secs(180),
    );
    let ctx = format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    // Rank 0's own line (its caller's `refused:` may be cut short: mpirun aborts the job as
    // the refusing ranks exit with status 2).
    assert!(
        run.stderr.lines().any(|l| l.starts_with(
            "shmpool cluster: rank 0: not starting: on rank 1: rank 1 runs a different \
             executable than rank 0"
        ) && l.ends_with("start the same binary on every rank")),
        "{ctx}"
    );
    assert!(!run.stdout.contains("FAIL"), "{ctx}");
    assert!(
        run.stderr
            .contains("rank 1: not serving: on rank 1: rank 1 runs a different executable"),
        "{ctx}"
    );
    // The refusing ranks exit with status 2, so the job fails.
    assert_ne!(run.code, Some(0), "{ctx}");
    assert_nothing_left(&exe());
    assert_nothing_left(&copy);
    let _ = std::fs::remove_dir_all(&dir);
}

fn a_dead_rank_ends_the_job() {
    let run = mpirun(
        &["-n", "3", exe().to_str().expect("utf-8")],
        "dead_rank",
        Duration::from_secs(180),
    );
    let ctx = format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_ne!(run.code, Some(0), "{ctx}");
    assert!(!run.stdout.contains("FAIL"), "rank 0 went on: {ctx}");
    // OpenMPI's own words for what happened.
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("exited on signal 9 (Killed)"),
        "mpirun did not report the killed rank: {ctx}"
    );
    assert_nothing_left(&exe());
}

fn messages_over_mpis_limit_fail_their_own_tasks() {
    let run = mpirun(
        &["-n", "3", exe().to_str().expect("utf-8")],
        "oversize",
        Duration::from_secs(400),
    );
    let ctx = format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.code,
        run.stdout,
        run.stderr.chars().take(20_000).collect::<String>()
    );
    assert_eq!(run.code, Some(0), "{ctx}");
    assert!(!run.stdout.contains("FAIL"), "{ctx}");
    for name in [
        "oversize_apply_async",
        "oversize_neighbours",
        "oversize_imap_item",
        "oversize_reply",
        "oversize_then_map",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == format!("ok {name}")),
            "{name}: {ctx}"
        );
    }
    assert_nothing_left(&exe());
}

fn main() {
    if let Ok(s) = std::env::var(SCENARIO) {
        std::process::exit(rank(&s));
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 4] = [
        (
            "map_equals_the_local_pools_and_every_check_passes",
            map_equals_the_local_pools_and_every_check_passes,
        ),
        (
            "a_mismatched_binary_is_refused",
            a_mismatched_binary_is_refused,
        ),
        ("a_dead_rank_ends_the_job", a_dead_rank_ends_the_job),
        (
            "messages_over_mpis_limit_fail_their_own_tasks",
            messages_over_mpis_limit_fail_their_own_tasks,
        ),
    ];
    let mut failed = 0;
    let mut ran = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        ran += 1;
        let _dog = common::arm(600);
        let ok = std::panic::catch_unwind(f).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        ran - failed
    );
    if failed > 0 {
        std::process::exit(101);
    }
}
