//! The same pool over MPI ranks (feature `mpi`): [`Cluster`].
//!
//! # The model
//!
//! The program is started on every rank by the MPI launcher (`mpirun -n K prog`, Slurm's
//! `srun prog`, a batch system). Each rank calls [`Cluster::start`] first thing in `main`:
//!
//! * on every rank **but 0**, `start` builds a local forked [`Pool`] (all the rank's cores by
//!   default, [`ClusterBuilder::processes_per_rank`] otherwise), then initializes MPI, then
//!   *serves*: it takes chunks of work from rank 0, runs each through its pool, and sends the
//!   results back, until rank 0 is done; then the process exits (status 0). `start` never
//!   returns there, so the rest of `main` runs on rank 0 only;
//! * on **rank 0**, `start` builds a pool too (unless [`ClusterBuilder::rank0_processes`] is
//!   0), then returns the [`Cluster`], which offers `Pool`'s shape:
//!   [`apply`](Cluster::apply), [`apply_async`](Cluster::apply_async), [`map`](Cluster::map),
//!   [`imap`](Cluster::imap), [`imap_unordered`](Cluster::imap_unordered). Dropping it (or the
//!   end of `main`) waits for the chunks still out, tells the other ranks to leave, and
//!   finalizes MPI.
//!
//! A rank is a whole machine: start one rank per host. Rank 0 drives (encodes, sends, decodes)
//! and by default works with a pool of its own as well, so K ranks give K hosts of workers;
//! with `rank0_processes(0)` it only drives (say, on a login node). While it waits it sleeps.
//!
//! **Code crosses ranks as an offset.** As locally, a task function is a `fn` item or a closure
//! that captures nothing (a capturing closure is a compile error). Locally its trampoline's
//! address crosses `fork`; between ranks the address differs (ASLR), so it crosses as its
//! offset from a symbol of this crate, and every rank must run **the same executable**: `start`
//! compares a hash of `/proc/self/exe` across ranks and refuses a mismatch with
//! [`Error::Cluster`] (`rank 2 runs a different executable than rank 0 ...`) on rank 0, and a
//! message and exit status 2 on the others. Arguments and results are encoded as locally
//! (postcard), so the same types work.
//!
//! **Work is handed out on demand.** Items go in chunks; a rank holds at most two chunks (one
//! running, one waiting), and gets the next when it answers one, so fast ranks take more. The
//! chunk size adapts like the local rule: from one item, doubling, towards about 20 ms of a
//! rank's time (the rank reports its time with every reply), capped at about 4 MiB of encoded
//! items and results, and for `map` at the remaining items over twice the ranks. Each rank's
//! pool then splits its chunk among its workers with the local rule.
//!
//! # Failures
//!
//! * A task that panics, or whose worker dies, fails exactly as locally
//!   ([`Error::TaskPanicked`], [`Error::WorkerDied`], carrying the remote worker's index and
//!   pid); the rank's pool replaces the worker and the job goes on. An argument whose
//!   `Deserialize` fails or panics on the rank fails that item alone ([`Error::Codec`]).
//! * **A rank that dies ends the job**, the way MPI ends it: a rank killed by a signal, or that
//!   exits, makes `mpirun` print `mpirun noticed that process rank N with PID ... on node ...
//!   exited on signal 9 (Killed)` (Slurm: `srun: error: ...: task N: Killed`) and kill every
//!   other rank; the launcher exits non-zero. Rank 0 sees no error value: it is killed too.
//!   Nothing hangs, and the ranks' worker processes die with them (parent-death signal). There
//!   is no recovery: re-run the job (MPI's fault-tolerance extensions are not portable).
//! * MPI sends at most 2 GiB (a C `int` of bytes) in one message. An argument whose encoding
//!   is bigger fails its own task with [`Error::Codec`] (`apply_async` returns it; an `imap`
//!   yields it for that item); a chunk whose results together are bigger fails its items with
//!   [`Error::Cluster`] (give the `imap` a smaller [`chunksize`](ClusterIMap::chunksize)).
//!   Neither ends the job.
//! * A rank that is stopped (`SIGSTOP`, a debugger) holds its chunks until it continues, as
//!   any MPI job waits for a stopped rank: rank 0 waits for them, sleeping between polls (a
//!   few % of a core), and the job goes on when the rank is continued.
//! * A serving rank whose pool cannot be built is reported to rank 0 by `start` as
//!   [`Error::Cluster`].
//!
//! # Rules
//!
//! * Call [`Cluster::start`] **before any other MPI use and before starting threads**: the
//!   serving ranks fork their pools before `MPI_Init` (OpenMPI forbids `fork()` after it), and a
//!   fork from a quiet process is the safe one (see [the crate docs](crate)).
//! * Code before `start` runs on every rank; code after it only on rank 0.
//! * A [`Cluster`] is used from the thread that started it (MPI is initialized
//!   `MPI_THREAD_FUNNELED`); it is neither `Send` nor `Sync`.
//! * Waiting never spins on a core: rank 0 and idle ranks poll MPI, yielding for 50 µs after
//!   each event and then sleeping up to 200 µs between polls, so a driver sharing a host with
//!   workers costs them next to nothing. The price is latency: one `apply` at a time across
//!   ranks costs tens of µs on an idle host and much more on a loaded one (BENCHMARKS.md);
//!   the cluster is for chunks of real work.
//!
//! # Traps (checked here with OpenMPI 4.1)
//!
//! * **Blocking sends deadlock.** Two ranks that `MPI_Send` each other a large message at once
//!   both wait in the rendezvous for a receive the other never posts. Every send here is an
//!   `MPI_Isend` kept until `MPI_Test` completes it, and every receive takes what a probe found.
//! * **`mpirun` kills the job as soon as one rank exits with a non-zero status**, possibly before
//!   rank 0 has printed anything: a rank that refuses to serve says why on its own stderr, and
//!   so does rank 0, before `MPI_Finalize` (which the refusing ranks wait for before they exit).
//! * **The launcher merges the ranks' stderr at `write` boundaries**: `eprintln!` writes a line
//!   in pieces, which come out interleaved with other ranks' pieces. Lines are written in one
//!   `write` here.
//! * **`sched_autogroup`**: `mpirun`'s daemon calls `setsid`, so under load a job it starts gets
//!   a scheduler group of its own and may get more CPU than the same work started from a shell.
//!   Compare timings with both sides started under `mpirun`.
//!
//! # Examples
//!
//! ```no_run
//! use shmpool::cluster::Cluster;
//!
//! fn main() -> Result<(), shmpool::Error> {
//!     // Ranks 1.. serve here and exit; rank 0 continues.
//!     let cluster = Cluster::start()?;
//!     let squares = cluster.map(|x: u64| x * x, 0..1_000_000u64)?;
//!     assert_eq!(squares[1000], 1_000_000);
//!     Ok(())
//! }
//! ```
//!
//! Run it with `mpirun -n 3 ./prog` (add `--allow-run-as-root --oversubscribe` as root or with
//! more ranks than cores), `mpirun --hostfile hosts --map-by ppr:1:node ./prog` for one rank
//! per host, or `srun --nodes 4 --ntasks-per-node 1 ./prog` under Slurm.

mod driver;
mod outbox;
mod serve;
mod wire;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use mpi::collective::CommunicatorCollectives;
use mpi::environment::Universe;
use mpi::topology::Communicator;

use crate::Pool;
use crate::encoding::payload::Payload;
use crate::encoding::task::assert_task_fn;
use crate::error::{Error, Result};
use crate::unwind::panic_message;
use driver::{Arrived, Driver};
use outbox::Backoff;
use wire::{RankCall, Reply};

/// Target wall time of one chunk on a rank.
const TARGET_CHUNK_NS: f64 = 20e6;
/// Cap on a chunk's encoded items plus results.
const MAX_CHUNK_BYTES: f64 = 4.0 * 1024.0 * 1024.0;
/// Cap on a chunk's items.
const MAX_CHUNK_ITEMS: usize = 1 << 20;

/// Configures and starts a [`Cluster`].
///
/// # Examples
///
/// ```no_run
/// let cluster = shmpool::cluster::Cluster::builder().processes_per_rank(4).start()?;
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct ClusterBuilder {
    processes: Option<usize>,
    rank0: Option<usize>,
}

impl ClusterBuilder {
    /// Worker processes in each serving rank's pool (default: the rank's available cores).
    pub fn processes_per_rank(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Worker processes in rank 0's own pool (default: as
    /// [`processes_per_rank`](Self::processes_per_rank)); 0 makes rank 0 drive only.
    ///
    /// Rank 0 knows it is rank 0 before `MPI_Init` from the launcher's environment (OpenMPI,
    /// PMIx, MPICH, Slurm); under a launcher that does not say, its pool has
    /// `processes_per_rank` processes whatever this is set to (0 still makes it drive only).
    pub fn rank0_processes(mut self, n: usize) -> Self {
        self.rank0 = Some(n);
        self
    }

    /// Starts the cluster: see [`Cluster::start`].
    ///
    /// # Errors
    ///
    /// As [`Cluster::start`].
    pub fn start(self) -> Result<Cluster> {
        if self.processes == Some(0) {
            return Err(Error::invalid("processes_per_rank must be at least 1"));
        }
        let build = |n: Option<usize>| {
            let mut b = Pool::builder();
            if let Some(n) = n {
                b = b.processes(n);
            }
            b.build()
        };
        // Before MPI_Init: the launcher's environment says which rank we will be, and every rank
        // forks its pool now (OpenMPI does not support fork() after MPI_Init).
        let mut pool = match (wire::launcher_rank(), self.rank0) {
            (Some(0), Some(0)) => None,
            (Some(0), n @ Some(_)) => Some(build(n)),
            _ => Some(build(self.processes)),
        };
        let fp = wire::fingerprint().unwrap_or([0, 0]);
        let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        else {
            return Err(Error::Cluster {
                rank: 0,
                detail: "MPI was already initialized: start the cluster before any other MPI use"
                    .into(),
            });
        };
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        if rank != 0 && pool.is_none() {
            // The environment promised rank 0 and lied: build the pool late rather than not.
            pool = Some(build(self.processes));
        }
        if rank == 0 && self.rank0 == Some(0) {
            pool = None;
        }
        let processes = match &pool {
            Some(Ok(p)) => p.processes() as u64,
            _ => 0,
        };
        let mine = [fp[0], fp[1], processes];
        let mut all = vec![0u64; 3 * size];
        world.all_gather_into(&mine[..], &mut all[..]);
        let problem_of = |r: usize| {
            let theirs = &all[3 * r..3 * r + 3];
            if theirs[..2] != all[..2] {
                Some(Error::Cluster {
                    rank: r,
                    detail: format!(
                        "rank {r} runs a different executable than rank 0 (length {} vs {} bytes, \
                         hash {:016x} vs {:016x}): start the same binary on every rank",
                        theirs[0], all[0], theirs[1], all[1]
                    ),
                })
            } else if theirs[2] == 0 {
                Some(Error::Cluster {
                    rank: r,
                    detail: format!("rank {r} could not build its local pool (see its stderr)"),
                })
            } else {
                None
            }
        };
        // Rank 0 reports the first problem; a serving rank its own, or else the first.
        let problem = (rank != 0)
            .then(|| problem_of(rank))
            .flatten()
            .or_else(|| (1..size).find_map(problem_of));
        if rank == 0
            && let Some(e) = &problem
        {
            // Said here too, before MPI_Finalize: the refusing ranks exit with status 2 once
            // every rank has finalized, and mpirun may then kill rank 0 before its caller gets
            // to print the error it returns.
            say(&format!("rank 0: not starting: {e}"));
        }
        if rank != 0 {
            let code = match (&problem, pool) {
                (Some(e), pool) => {
                    if let Some(Err(pe)) = &pool {
                        say(&format!("rank {rank}: {pe}"));
                    }
                    say(&format!("rank {rank}: not serving: {e}"));
                    drop(pool);
                    2
                }
                (None, Some(Ok(pool))) => {
                    let served = serve::serve(&world, &pool);
                    drop(pool);
                    match served {
                        Ok(()) => 0,
                        Err(e) => {
                            say(&format!("rank {rank}: {e}"));
                            world.abort(2)
                        }
                    }
                }
                (None, _) => unreachable!("a rank without a pool reports 0 processes"),
            };
            drop(world);
            drop(universe);
            std::process::exit(code);
        }
        if let Some(e) = problem {
            return Err(e);
        }
        let local = pool.transpose()?;
        if size < 2 && local.is_none() {
            return Err(Error::Cluster {
                rank: 0,
                detail: "no rank works: rank 0 only drives (rank0_processes(0)) and no other \
                         rank was started; start it with mpirun -n 2 or more"
                    .into(),
            });
        }
        let procs: Vec<usize> = (1..size).map(|r| all[3 * r + 2] as usize).collect();
        Ok(Cluster {
            driver: RefCell::new(Driver::new(world, &procs, local)),
            _universe: universe,
        })
    }
}

/// A pool whose workers are the forked pools of MPI ranks; see [the module docs](self).
///
/// Lives on rank 0 only. It is neither `Send` nor `Sync`: use it from the thread that started
/// it.
pub struct Cluster {
    /// Dropped before `_universe` (field order), which finalizes MPI.
    driver: RefCell<Driver>,
    _universe: Universe,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.driver.borrow();
        f.debug_struct("Cluster")
            .field("ranks", &d.ranks())
            .field("processes", &d.processes())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the cluster with default settings: on every rank but 0 this serves and then exits
    /// the process; on rank 0 it returns the cluster.
    ///
    /// # Errors
    ///
    /// On rank 0: [`Error::Cluster`] if a rank runs a different executable, a rank could not
    /// build its pool, only one rank was started, or MPI was already initialized.
    pub fn start() -> Result<Cluster> {
        ClusterBuilder::default().start()
    }

    /// A builder, to set the processes per rank.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Number of ranks that work: every rank but 0, and rank 0 if it has a pool of its own.
    pub fn ranks(&self) -> usize {
        self.driver.borrow().ranks()
    }

    /// Worker processes over all ranks.
    pub fn processes(&self) -> usize {
        self.driver.borrow().processes()
    }

    fn pump(&self) -> Result<bool> {
        self.driver.borrow_mut().pump()
    }

    /// Runs `f(arg)` on some rank without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if `arg` cannot be encoded. Failures of the task arrive through the
    /// returned [`ClusterResult`].
    pub fn apply_async<F, A, R>(&self, f: F, arg: A) -> Result<ClusterResult<'_, R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
    {
        let _ = f;
        assert_task_fn::<F>();
        let call = wire::call_offset(serve::rank_chunk::<F, A, R> as RankCall);
        let mut d = self.driver.borrow_mut();
        let id = d.next_id();
        let mut msg = wire::header(id, call as u64);
        encode_item(&arg, &mut msg)?;
        if msg.len() > outbox::MAX_MESSAGE {
            // Refused here: queued, it would fail later in whichever call sends it.
            return Err(over_limit(msg.len() - wire::HEADER));
        }
        d.send_single(id, msg)?;
        Ok(ClusterResult {
            cluster: self,
            id: Some(id),
            _r: PhantomData,
        })
    }

    /// Runs `f(arg)` on some rank and waits for the result.
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Cluster::apply_async), plus the task's own failure.
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
    {
        self.apply_async(f, arg)?.get()
    }

    /// Applies `f` to every item over the ranks and returns the results in order.
    ///
    /// # Errors
    ///
    /// The first failed item's error (in item order).
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = items.into_iter().collect();
        self.imap(f, items).collect()
    }

    /// A lazy, ordered iterator of `f(item)` results, computed over the ranks. Input is pulled
    /// only as chunks can be handed out, so memory stays bounded over any input.
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> ClusterIMap<'_, I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        assert_task_fn::<F>();
        ClusterIMap::new(
            self,
            items.into_iter(),
            wire::call_offset(serve::rank_chunk::<F, A, R> as RankCall),
            true,
        )
    }

    /// Like [`imap`](Cluster::imap), yielding each chunk's results as soon as it arrives.
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> ClusterIMap<'_, I::IntoIter, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Payload,
        R: Payload,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        assert_task_fn::<F>();
        ClusterIMap::new(
            self,
            items.into_iter(),
            wire::call_offset(serve::rank_chunk::<F, A, R> as RankCall),
            false,
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let d = self.driver.get_mut();
        d.clear_queue();
        let mut backoff = Backoff::default();
        let mut settle = |d: &mut Driver| {
            while !d.idle() {
                match d.pump() {
                    Ok(true) => backoff.reset(),
                    Ok(false) => backoff.snooze(),
                    Err(e) => {
                        // The protocol broke: finalizing could wait forever for a rank that
                        // will never answer. End the job instead, as MPI ends it on a crash.
                        say(&format!("rank 0: {e}; aborting the job"));
                        mpi::topology::SimpleCommunicator::world().abort(2);
                    }
                }
            }
        };
        settle(d);
        if let Err(e) = d.send_stop() {
            say(&format!("rank 0: {e}; aborting the job"));
            mpi::topology::SimpleCommunicator::world().abort(2);
        }
        settle(d);
        d.join_local();
    }
}

/// Writes `shmpool cluster: {line}` to stderr in one `write`, so the launcher, which merges
/// the ranks' stderr, never cuts it with another rank's output (`eprintln!` writes in pieces).
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("shmpool cluster: {line}\n").as_bytes());
}

/// An argument whose encoding (`bytes`) cannot cross MPI in one message.
fn over_limit(bytes: usize) -> Error {
    Error::codec(format!(
        "the argument's encoding is {bytes} bytes, over MPI's limit of {} bytes per message",
        outbox::MAX_MESSAGE
    ))
}

/// Encodes one item after `msg`'s current end; on failure `msg` is left as it was.
/// The item goes as its length (`u32`, little-endian) and its encoding, so a rank can decode
/// each item on its own: a `Deserialize` that panics on one fails that item only.
fn encode_item<A: Payload>(a: &A, msg: &mut Vec<u8>) -> Result<()> {
    let mark = msg.len();
    msg.extend_from_slice(&[0; 4]);
    let r = catch_unwind(AssertUnwindSafe(|| {
        postcard::to_io(a, &mut *msg).map(|_| ())
    }));
    let e = match r {
        Ok(Ok(())) => {
            let n = msg.len() - mark - 4;
            match u32::try_from(n) {
                Ok(n) => {
                    msg[mark..mark + 4].copy_from_slice(&n.to_le_bytes());
                    return Ok(());
                }
                Err(_) => over_limit(n),
            }
        }
        Ok(Err(e)) => Error::codec(format!(
            "cannot encode the argument: {}",
            crate::encoding::ser_probe::serialize_error(&e, a)
        )),
        Err(p) => Error::codec(format!(
            "cannot encode the argument: Serialize panicked: {}",
            panic_message(&*p)
        )),
    };
    msg.truncate(mark);
    Err(e)
}

/// A reply's results, one per item sent (`n`), in item order.
fn decode_reply<R: Payload>(a: &Arrived, n: usize) -> Vec<Result<R>> {
    let rank = a.rank;
    let all = |e: Error| (0..n).map(|_| Err(e.clone())).collect();
    let reply = catch_unwind(AssertUnwindSafe(|| {
        postcard::from_bytes::<Reply<R>>(&a.body)
    }));
    let (values, failures) = match reply {
        Ok(Ok(Ok(ok))) => ok,
        Ok(Ok(Err(wire))) => return all(wire.into_error(rank)),
        Ok(Err(e)) => return all(Error::codec(format!("cannot decode the result: {e}"))),
        Err(p) => {
            return all(Error::codec(format!(
                "cannot decode the result: Deserialize panicked: {}",
                panic_message(&*p)
            )));
        }
    };
    let in_order = failures.windows(2).all(|w| w[0].0 < w[1].0);
    if values.len() + failures.len() != n
        || !in_order
        || failures.last().is_some_and(|f| f.0 as usize >= n)
    {
        return all(Error::Cluster {
            rank,
            detail: format!(
                "answered {} values and {} failures for {n} items",
                values.len(),
                failures.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(n);
    let mut values = values.into_iter();
    let mut failures = failures.into_iter().peekable();
    for i in 0..n {
        match failures.next_if(|f| f.0 as usize == i) {
            Some((_, w)) => out.push(Err(w.into_error(rank))),
            None => out.push(values.next().ok_or_else(|| Error::Cluster {
                rank,
                detail: "answered too few values".into(),
            })),
        }
    }
    out
}

/// The result of [`Cluster::apply_async`].
#[derive(Debug)]
pub struct ClusterResult<'c, R> {
    cluster: &'c Cluster,
    /// `None` once taken.
    id: Option<u64>,
    _r: PhantomData<fn() -> R>,
}

impl<R: Payload> ClusterResult<'_, R> {
    /// Waits for the result.
    ///
    /// # Errors
    ///
    /// The task's failure ([`Error::TaskPanicked`], [`Error::WorkerDied`], ...).
    pub fn get(mut self) -> Result<R> {
        let Some(id) = self.id.take() else {
            return Err(Error::ResultTaken);
        };
        let mut backoff = Backoff::default();
        loop {
            if let Some(a) = self.cluster.driver.borrow_mut().take(id) {
                return decode_reply::<R>(&a, 1)
                    .pop()
                    .unwrap_or(Err(Error::ResultTaken));
            }
            match self.cluster.pump() {
                Ok(true) => backoff.reset(),
                Ok(false) => backoff.snooze(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the result has arrived (makes progress on the cluster first).
    pub fn ready(&self) -> bool {
        let _ = self.cluster.pump();
        self.id
            .is_some_and(|id| self.cluster.driver.borrow().is_done(id))
    }
}

impl<R> Drop for ClusterResult<'_, R> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.cluster.driver.borrow_mut().abandon(id);
        }
    }
}

/// Chooses chunk sizes from the measured time and bytes per item.
#[derive(Debug, Default)]
struct Sizer {
    prev: usize,
    ns_per_item: Option<f64>,
    bytes_per_item: Option<f64>,
}

impl Sizer {
    fn next(&mut self, remaining: Option<usize>, ranks: usize) -> usize {
        let mut n = match self.ns_per_item {
            None if self.prev == 0 => 1,
            None => self.prev * 2,
            Some(t) => ((TARGET_CHUNK_NS / t.max(1.0)) as usize).min(self.prev.max(1) * 4),
        };
        if let Some(b) = self.bytes_per_item {
            n = n.min((MAX_CHUNK_BYTES / b.max(1.0)) as usize);
        }
        if let Some(rem) = remaining {
            n = n.min(rem.div_ceil(2 * ranks.max(1)));
        }
        n = n.clamp(1, MAX_CHUNK_ITEMS);
        self.prev = n;
        n
    }

    fn observe(&mut self, items: usize, ns: u64, bytes: usize) {
        if items == 0 {
            return;
        }
        let t = ns as f64 / items as f64;
        let b = bytes as f64 / items as f64;
        self.ns_per_item = Some(self.ns_per_item.map_or(t, |old| 0.5 * old + 0.5 * t));
        self.bytes_per_item = Some(self.bytes_per_item.map_or(b, |old| 0.5 * old + 0.5 * b));
    }
}

/// A chunk handed out (or that failed before it could be).
#[derive(Debug)]
struct Pending {
    /// `None` if no item of the chunk could be encoded (nothing was sent).
    id: Option<u64>,
    /// Items pulled for this chunk.
    total: usize,
    /// Items that could not be encoded: (position in the chunk, error), ascending.
    local: Vec<(usize, Error)>,
    /// Encoded bytes sent.
    sent_bytes: usize,
}

/// The iterator of [`Cluster::imap`] and [`Cluster::imap_unordered`].
#[derive(Debug)]
pub struct ClusterIMap<'c, I: Iterator, R> {
    cluster: &'c Cluster,
    items: I,
    exhausted: bool,
    call: i64,
    ordered: bool,
    fixed: Option<usize>,
    window: VecDeque<Pending>,
    ready: VecDeque<Result<R>>,
    sizer: Sizer,
}

impl<'c, I, R> ClusterIMap<'c, I, R>
where
    I: Iterator,
    I::Item: Payload,
    R: Payload,
{
    fn new(cluster: &'c Cluster, items: I, call: i64, ordered: bool) -> Self {
        ClusterIMap {
            cluster,
            items,
            exhausted: false,
            call,
            ordered,
            fixed: None,
            window: VecDeque::new(),
            ready: VecDeque::new(),
            sizer: Sizer::default(),
        }
    }

    /// Fixes the number of items per chunk sent to a rank (default: adaptive, see the module
    /// docs). 0 is taken as 1.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.fixed = Some(n.max(1));
        self
    }

    /// Hands out chunks while ranks have room.
    fn refill(&mut self) -> Result<()> {
        let ranks = self.cluster.ranks();
        while !self.exhausted && self.window.len() < 2 * ranks {
            if !self.cluster.driver.borrow().has_room_for_chunk() {
                break;
            }
            let n = match self.fixed {
                Some(n) => n,
                None => {
                    let (lo, hi) = self.items.size_hint();
                    let remaining = (Some(lo) == hi).then_some(lo);
                    self.sizer.next(remaining, ranks)
                }
            };
            let id = self.cluster.driver.borrow_mut().next_id();
            // The user's iterator and Serialize run with no borrow of the driver held.
            let mut msg = wire::header(id, self.call as u64);
            let mut p = Pending {
                id: None,
                total: 0,
                local: Vec::new(),
                sent_bytes: 0,
            };
            let mut sent = 0;
            // Also stops at the byte cap: before the first reply the sizer knows no item sizes.
            while p.total < n && msg.len() < MAX_CHUNK_BYTES as usize {
                let Some(a) = self.items.next() else {
                    self.exhausted = true;
                    break;
                };
                let mark = msg.len();
                match encode_item(&a, &mut msg) {
                    Ok(()) if msg.len() > outbox::MAX_MESSAGE => {
                        // One MPI message cannot carry it (an item that big alone, or nearly
                        // that big after others): it fails alone.
                        p.local.push((p.total, over_limit(msg.len() - mark)));
                        msg.truncate(mark);
                    }
                    Ok(()) => sent += 1,
                    Err(e) => p.local.push((p.total, e)),
                }
                p.total += 1;
            }
            if p.total == 0 {
                break;
            }
            if sent > 0 {
                p.sent_bytes = msg.len();
                p.id = Some(id);
                self.cluster.driver.borrow_mut().send_chunk(id, msg)?;
            }
            self.window.push_back(p);
        }
        Ok(())
    }

    /// Position in the window of a chunk whose results can be yielded now.
    fn find_done(&self) -> Option<usize> {
        let d = self.cluster.driver.borrow();
        let done = |p: &Pending| p.id.is_none_or(|id| d.is_done(id));
        if self.ordered {
            self.window.front().filter(|p| done(p)).map(|_| 0)
        } else {
            self.window.iter().position(done)
        }
    }

    fn finish(&mut self, p: Pending) {
        let sent = p.total - p.local.len();
        let mut remote = VecDeque::new();
        if let Some(id) = p.id {
            let a = self.cluster.driver.borrow_mut().take(id);
            if let Some(a) = a {
                self.sizer
                    .observe(sent, a.elapsed_ns, p.sent_bytes + a.body.len());
                remote = decode_reply::<R>(&a, sent).into();
            }
        }
        let mut local = p.local.into_iter().peekable();
        for i in 0..p.total {
            match local.next_if(|l| l.0 == i) {
                Some((_, e)) => self.ready.push_back(Err(e)),
                None => self
                    .ready
                    .push_back(remote.pop_front().unwrap_or(Err(Error::Cluster {
                        rank: 0,
                        detail: "a chunk's reply went missing".into(),
                    }))),
            }
        }
    }

    fn abandon_all(&mut self) {
        let mut d = self.cluster.driver.borrow_mut();
        for p in self.window.drain(..) {
            if let Some(id) = p.id {
                d.abandon(id);
            }
        }
    }
}

impl<I, R> Iterator for ClusterIMap<'_, I, R>
where
    I: Iterator,
    I::Item: Payload,
    R: Payload,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        let mut backoff = Backoff::default();
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if let Err(e) = self.refill() {
                self.exhausted = true;
                self.abandon_all();
                return Some(Err(e));
            }
            if self.window.is_empty() && self.exhausted {
                return None;
            }
            if let Some(i) = self.find_done() {
                if let Some(p) = self.window.remove(i) {
                    self.finish(p);
                }
                backoff.reset();
                continue;
            }
            match self.cluster.pump() {
                Ok(true) => backoff.reset(),
                Ok(false) => backoff.snooze(),
                Err(e) => {
                    self.exhausted = true;
                    self.abandon_all();
                    return Some(Err(e));
                }
            }
        }
    }
}

impl<I: Iterator, R> Drop for ClusterIMap<'_, I, R> {
    fn drop(&mut self) {
        if let Ok(mut d) = self.cluster.driver.try_borrow_mut() {
            for p in self.window.drain(..) {
                if let Some(id) = p.id {
                    d.abandon(id);
                }
            }
        }
    }
}
