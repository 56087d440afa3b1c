//! The scheduler: sources in, tasks out to the pool, results back in order.
//!
//! ## How a run goes
//!
//! The parent alone walks (the walk is cheap: ~1 µs an entry) and keeps a **window** of the next
//! sources in output order (at most [`WINDOW_ITEMS`] items and [`WINDOW_PATH_BYTES`] of paths;
//! whatever the tree's size, memory stays bounded). Each source gets a slot there. The parent
//! fills the window a batch at a time between handling results, so the walk overlaps hashing.
//!
//! Work goes to the workers as **tasks of many files** (one `apply_async_with_callback` each,
//! about [`CHUNK_COST_NS`] of estimated work: per-file cost plus bytes at the algorithm's rate),
//! at most [`TASKS_PER_WORKER`] per worker in flight. Two kinds of work jump the queue, taken
//! first as soon as they enter the window, each alone in its task:
//! - a **big file** (estimated above one chunk's cost, or from [`MAP_MIN`] bytes, which are
//!   hashed through a mapping) for SHA-2, which cannot be split: started early, it runs beside
//!   the small files instead of ending the run alone;
//! - the **pieces of a big BLAKE3 file**: its tree is cut into aligned subtrees of at most
//!   [`BLAKE3_PIECE`] bytes (`digest::plan`), each hashed in whichever worker is free; the parent
//!   merges the 32-byte chaining values (`digest::merge`), giving b3sum's digest. A file of more
//!   than [`MAX_PIECES`] such pieces (4 GiB) gets bigger pieces ([`blake3_piece`]): the parent
//!   holds a few dozen bytes per piece, and a sparse file of some TiB (or PiB, on tmpfs) must not
//!   make it hold millions of them.
//!
//! Results come back on the pool's callback thread, through a channel, to the parent, which
//! marks the slots done and emits the finished prefix of the window in order (or each result as
//! it lands, with `--unordered`). Before it blocks on the channel it flushes the output. The wait
//! has no timeout (only the progress line's next tick, when there is one): Ctrl-C ends it with a
//! message of its own ([`Msg::Interrupt`], sent by the waker the run subscribes to
//! [`Interrupt`]).
//!
//! ## Failure
//!
//! A file that cannot be opened or read is an answer (`Outcome::Failed` with the reason); the
//! run goes on. A task the pool fails (a worker died) fails each of its files with the pool's
//! error, unless the run was interrupted (then nothing more is reported). The pool's workers
//! never die from a terminal's Ctrl-C (the library gives them a handler that does nothing), so
//! a worker's death is reported as soon as it is known, with no grace to wait out.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blake3::hazmat::ChainingValue;
use serde::{Deserialize, Serialize};
use shmpool::Pool;

use super::Algo;
use super::digest::{self, Digest, NoWait, Opener, ReadBuf, Small, os_path};
use super::interrupt::Interrupt;
use super::walk::Source;

/// Most sources held in the window (waiting, in flight, or done and not yet printed).
pub(crate) const WINDOW_ITEMS: usize = 16 << 10;
/// Most bytes of paths held in the window.
pub(crate) const WINDOW_PATH_BYTES: usize = 8 << 20;
/// Estimated worker time of one task of small files.
pub(crate) const CHUNK_COST_NS: u64 = 2_000_000;
/// Most files in one task.
const CHUNK_FILES: usize = 1024;
/// Tasks in flight per worker (submitted to the pool, not yet answered).
///
/// More than the pool usually queues in a worker's ring (~9 tasks of [`CHUNK_COST_NS`] when its
/// queue budget has grown to 16 ms; see the pool's `DepthBudget`), so that the pool's pending
/// queue, not this engine, refills the rings: a refill from here waits for two thread hops
/// (the callback thread, then this thread), each a time slice away when the workers have every
/// core. With 4, the workers of a BLAKE3 run over the toolchain tree slept 15-28 ms waiting
/// for a task; with 12, 13-21 ms (`perf sched timehist`, three runs each).
const TASKS_PER_WORKER: usize = 12;
/// Largest BLAKE3 subtree hashed as one task; files above it are split.
pub(crate) const BLAKE3_PIECE: u64 = 4 << 20;
/// Most pieces of [`BLAKE3_PIECE`] bytes a file is cut into; past that the pieces grow.
pub(crate) const MAX_PIECES: u64 = 1024;
/// Smallest file hashed through a mapping, alone in its task (SHA-2 only: see `Engine::maps`).
pub(crate) const MAP_MIN: u64 = 256 << 10;
/// Most small files a task sets aside while the disk reads them (each holds a descriptor open
/// until it is hashed; see [`run_task`]).
const MAX_PENDING: usize = 64;
/// Most bytes of small files a task sets aside at once (their sizes as `fstat` gave them).
///
/// Each file set aside has been asked for whole (`POSIX_FADV_WILLNEED`), and the pages come
/// into the page cache before they are hashed: without a bound on bytes, 64 BLAKE3 "small"
/// files (up to [`BLAKE3_PIECE`] each) asked for 256 MiB per worker at once. Under a memory
/// limit those pages were dropped before the worker came to them and read from disk again:
/// 120 cold files of 4 MiB - 1 in a 96 MiB memory cgroup, `-a blake3`, read 1.0 GB from disk
/// for 0.5 GB of files, in 1.02-1.12 s, against 0.5 GB in 0.54-0.75 s with 16 files or fewer
/// set aside (`/usr/bin/time -f %I`, `-j 1` and `-j 2`). 16 MiB is four such files, and the
/// 64 files of a tree of small ones (the toolchain tree's average is 22 KB).
const MAX_PENDING_BYTES: u64 = 16 << 20;
/// Sources taken from the walk per turn of the loop.
const INTAKE_BATCH: usize = 256;
/// Estimated cost of opening, reading and closing one file (7.7 µs measured here).
const FILE_COST_NS: u64 = 8_000;

/// One input with what the caller wants back with its result.
#[derive(Debug)]
pub(crate) struct Item<T> {
    pub(crate) source: Source,
    pub(crate) tag: T,
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The digest of the file.
    Digest(Digest),
    /// Why the file could not be hashed (`No such file or directory`, ...).
    Failed(String),
    /// The answer to a `Source::Marker`.
    Marker,
}

/// Receives each finished item (in order unless unordered).
pub(crate) trait Sink<T> {
    /// One finished item. An error (a closed stdout) stops the run.
    fn done(&mut self, item: Item<T>, outcome: Outcome) -> io::Result<()>;
    /// Called before the engine waits: push out what is buffered.
    fn flush(&mut self) -> io::Result<()>;
    /// Called every so often with files and bytes done so far, for a progress line.
    fn progress(&mut self, _files: u64, _bytes: u64, _elapsed: Duration) {}
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Completed,
    Interrupted,
}

/// The task a worker runs.
///
/// The paths of its jobs travel in one byte string (`paths`, job after job, each `path_len`
/// bytes), and the digests of the reply in another: one copy each way instead of serde's
/// per-byte path of a `Vec<u8>` field and one allocation per file on both sides.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Task {
    algo: Algo,
    /// `Whole` jobs not mapped hand back regular files of this many bytes or more unhashed.
    big_from: u64,
    jobs: Vec<Job>,
    #[serde(with = "bytes")]
    paths: Vec<u8>,
}

/// One piece of work in a task; its path is the next `path_len` bytes of the task's `paths`.
#[derive(Debug, Serialize, Deserialize)]
enum Job {
    /// Hash the whole file; `map`: through a mapping (a file of at least `MAP_MIN` bytes,
    /// alone in its task); `regular`: the walk or a stat saw a regular file there (see
    /// `Source::File`).
    Whole {
        path_len: u32,
        map: bool,
        regular: bool,
    },
    /// The chaining value of the BLAKE3 subtree `offset .. offset + len` of the file.
    Part {
        path_len: u32,
        offset: u64,
        len: u64,
    },
}

/// What a worker says about one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// Hashed: the digest (or chaining value, 32 bytes) is the next one in the reply's
    /// `digests`; the bytes hashed.
    Done(u64),
    /// Why the file could not be hashed.
    Failed(String),
    /// Not hashed: a regular file of this many bytes, at least the task's `big_from`.
    Big(u64),
    /// A BLAKE3 piece hashed: its chaining value is the next 32 bytes of the reply's
    /// `digests`; the bytes hashed, and the file they were read from.
    Piece(u64, digest::FileId),
}

/// One answer per job, and the digests of the `Done` ones, one after the other.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Reply {
    answers: Vec<Answer>,
    #[serde(with = "bytes")]
    digests: Vec<u8>,
}

/// `Vec<u8>` fields as one byte string (postcard: a varint length, then the bytes, the same
/// bytes its per-element path writes), read back with one copy.
mod bytes {
    use serde::{Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

/// Runs in a worker: hashes every job of the task, with one read buffer per worker process.
///
/// A small file whose first pages are not in the page cache is set aside while the kernel
/// reads it (`digest::NoWait`), and hashed once the task's other jobs are done, or when
/// [`MAX_PENDING`] files or [`MAX_PENDING_BYTES`] wait (the oldest first, see [`SetAside`]);
/// the answers keep the jobs' order.
pub(crate) fn run_task(task: Task) -> Reply {
    thread_local! {
        static BUF: std::cell::RefCell<ReadBuf> = std::cell::RefCell::new(ReadBuf::new());
    }
    type Done = io::Result<(Option<Digest>, Answer)>;
    let mut done: Vec<Option<Done>> = Vec::with_capacity(task.jobs.len());
    let mut pending = SetAside::new(max_pending(), MAX_PENDING_BYTES);
    let mut opener = Opener::new();
    let mut nowait = NoWait::new();
    let mut paths = &task.paths[..];
    let finish =
        |(at, p): (usize, digest::Pending), done: &mut Vec<Option<Done>>, buf: &mut [u8]| {
            done[at] = Some(
                p.finish(task.algo, buf)
                    .map(|(d, n)| (Some(d), Answer::Done(n))),
            );
        };
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let buf = buf.get();
        for job in &task.jobs {
            let path_len = match *job {
                Job::Whole { path_len, .. } | Job::Part { path_len, .. } => path_len as usize,
            };
            let Some(path) = paths.get(..path_len) else {
                done.push(Some(Err(io::Error::other("internal error: bad task"))));
                continue;
            };
            paths = &paths[path_len..];
            let r = match *job {
                Job::Whole { map: true, .. } => {
                    digest::hash_mapped(task.algo, path, buf).map(|d| {
                        let n = std::fs::metadata(digest::os_path(path)).map_or(0, |m| m.len());
                        (Some(d), Answer::Done(n))
                    })
                }
                Job::Whole {
                    map: false,
                    regular,
                    ..
                } => {
                    let small = digest::hash_small(
                        task.algo,
                        &mut opener,
                        path,
                        task.big_from,
                        regular,
                        &mut nowait,
                        buf,
                    );
                    match small {
                        Ok(Small::Pending(p)) => {
                            let size = p.size();
                            pending.push(done.len(), p, size);
                            done.push(None);
                            while let Some(oldest) = pending.pop_over() {
                                finish(oldest, &mut done, buf);
                            }
                            continue;
                        }
                        Ok(Small::Digest(d, n)) => Ok((Some(d), Answer::Done(n))),
                        Ok(Small::Big(n)) => Ok((None, Answer::Big(n))),
                        Err(e) => Err(e),
                    }
                }
                Job::Part { offset, len, .. } => digest::blake3_subtree(path, offset, len, buf)
                    .map(|(cv, id)| {
                        let cv = Digest::new(&cv).expect("a chaining value is 32 bytes");
                        (Some(cv), Answer::Piece(len, id))
                    }),
            };
            done.push(Some(r));
        }
        while let Some(p) = pending.pop() {
            finish(p, &mut done, buf);
        }
    });
    let mut reply = Reply {
        answers: Vec::with_capacity(done.len()),
        digests: Vec::with_capacity(done.len() * task.algo.digest_len()),
    };
    for r in done {
        match r.expect("every pending file was finished") {
            Ok((d, answer)) => {
                if let Some(d) = d {
                    reply.digests.extend_from_slice(d.as_slice());
                }
                reply.answers.push(answer);
            }
            Err(e) => reply
                .answers
                .push(Answer::Failed(super::format::reason(&e))),
        }
    }
    reply
}

/// The files a task has set aside while the disk reads them (see [`run_task`]), oldest first,
/// each with the index of its job and its size.
#[derive(Debug)]
struct SetAside<T> {
    files: VecDeque<(usize, T, u64)>,
    bytes: u64,
    max_files: usize,
    max_bytes: u64,
}

impl<T> SetAside<T> {
    fn new(max_files: usize, max_bytes: u64) -> SetAside<T> {
        SetAside {
            files: VecDeque::new(),
            bytes: 0,
            max_files,
            max_bytes,
        }
    }

    /// Sets aside `file`, of `size` bytes, the answer to job `at`.
    fn push(&mut self, at: usize, file: T, size: u64) {
        self.bytes = self.bytes.saturating_add(size);
        self.files.push_back((at, file, size));
    }

    /// The oldest file, while more than `max_files` files or `max_bytes` bytes are set aside
    /// (a single file larger than `max_bytes` comes back at once): hash it now.
    fn pop_over(&mut self) -> Option<(usize, T)> {
        if self.files.len() > self.max_files || self.bytes > self.max_bytes {
            self.pop()
        } else {
            None
        }
    }

    /// The oldest file.
    fn pop(&mut self) -> Option<(usize, T)> {
        let (at, file, size) = self.files.pop_front()?;
        self.bytes -= size;
        Some((at, file))
    }
}

/// How many small files a task may set aside, under this process's soft limit on open
/// descriptors ([`pending_limit`]).
fn max_pending() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into `lim`, which we own; RLIMIT_NOFILE is a valid
    // resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    pending_limit(lim.rlim_cur)
}

/// How many small files a task may set aside when a process may hold `soft` descriptors:
/// [`MAX_PENDING`], or, under a low `ulimit -n`, a quarter of those above the first 48 (each
/// file set aside holds one open; the worker's own, and its jobs' other opens, keep the rest,
/// so a limit that let a run through before still does).
fn pending_limit(soft: libc::rlim_t) -> usize {
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    MAX_PENDING.min(soft.saturating_sub(48) / 4)
}

/// The largest piece a BLAKE3 file of `size` bytes is cut into: [`BLAKE3_PIECE`], or for a file
/// of more than [`MAX_PIECES`] of those, the power of two that keeps it to about that many
/// (`digest::plan` then makes at most `MAX_PIECES` full pieces and a few smaller ones at the end).
pub(crate) fn blake3_piece(size: u64) -> u64 {
    BLAKE3_PIECE.max(size.div_ceil(MAX_PIECES).next_power_of_two())
}

/// What a slot is waiting for.
#[derive(Debug)]
enum State {
    /// A small file not yet sent.
    Waiting,
    /// Sent (or queued to be sent first, for a big file).
    Sent,
    /// A big BLAKE3 file in pieces: one chaining value per leaf of `digest::plan(total, piece)`.
    Split {
        total: u64,
        piece: u64,
        cvs: Vec<Option<ChainingValue>>,
        left: usize,
        error: Option<String>,
        /// The file the first piece answered was read from; every other piece must say the
        /// same, with `size == total` (see `digest::FileId`).
        file: Option<digest::FileId>,
    },
    Done(Outcome),
    /// Already given to the sink (unordered mode); popped when it reaches the front.
    Emitted,
}

#[derive(Debug)]
struct Slot<T> {
    /// Taken when given to the sink.
    item: Option<Item<T>>,
    state: State,
    /// Bytes of the path counted in `Engine::path_bytes`.
    path_len: usize,
}

/// One job of a task in flight, pointing back at its slot.
#[derive(Debug, Clone, Copy)]
enum Work {
    Whole(u64),
    /// A big file, alone in its task.
    Big(u64),
    Part {
        seq: u64,
        leaf: usize,
        offset: u64,
        len: u64,
    },
}

/// What the engine's channel carries.
#[derive(Debug)]
pub(crate) enum Msg {
    /// The reply to task `id`, from the pool's callback thread.
    Reply(u64, shmpool::Result<Reply>),
    /// Ctrl-C came (sent by the run's [`Interrupt`] waker).
    Interrupt,
}

/// Where the tasks run: the local pool, or (`shmpool hash --mpi`) the ranks of an MPI job.
pub(crate) trait Workers {
    /// Worker processes in all.
    fn processes(&self) -> usize;
    /// Starts `task`; its reply goes to `reply` as [`Msg::Reply`].
    fn start(&self, id: u64, task: Task, reply: mpsc::Sender<Msg>) -> anyhow::Result<()>;
    /// Waits for the next message (a reply, or one sent to `rx`), for at most `timeout` if
    /// there is one; `None` if the time ran out.
    fn wait(&self, rx: &mpsc::Receiver<Msg>, timeout: Option<Duration>) -> Option<Msg>;
}

impl Workers for Pool {
    fn processes(&self) -> usize {
        Pool::processes(self)
    }

    fn start(&self, id: u64, task: Task, reply: mpsc::Sender<Msg>) -> anyhow::Result<()> {
        self.apply_async_with_callback(run_task, task, move |r| {
            // The receiver is gone only when the run has ended (interrupt, closed stdout):
            // nobody wants this reply any more.
            let _ = reply.send(Msg::Reply(id, r));
        })?;
        Ok(())
    }

    fn wait(&self, rx: &mpsc::Receiver<Msg>, timeout: Option<Duration>) -> Option<Msg> {
        // Replies arrive from the pool's callback thread on their own. The engine holds a
        // sender, so the channel is never disconnected.
        match timeout {
            None => rx.recv().ok(),
            Some(t) => rx.recv_timeout(t).ok(),
        }
    }
}

/// Options of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) algo: Algo,
    /// Results in input order (else as they finish).
    pub(crate) ordered: bool,
    /// Call `Sink::progress` every this often.
    pub(crate) progress: Option<Duration>,
}

/// The scheduler's state for one run.
struct Engine<'a, T, S: Sink<T>> {
    pool: &'a dyn Workers,
    opts: Options,
    interrupt: &'a Interrupt,
    sink: S,
    /// Slot of seq `base + i` is `slots[i]`.
    slots: VecDeque<Slot<T>>,
    base: u64,
    path_bytes: usize,
    /// Next seq to look at for small files to send, in order.
    next_small: u64,
    /// Work sent before the small files (big files, BLAKE3 pieces).
    urgent: VecDeque<Work>,
    /// Tasks in flight: their jobs, by task id.
    in_flight: HashMap<u64, Vec<Work>>,
    next_task: u64,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    files_done: u64,
    bytes_done: u64,
    stdin_buf: Option<ReadBuf>,
}

/// Hashes every source of `items` in `pool`, giving each result to `sink`.
///
/// # Errors
///
/// The sink's error (a closed stdout: the caller treats a broken pipe as success), or the pool's
/// refusal of a task (the pool broke down).
pub(crate) fn run<T, S: Sink<T>>(
    pool: &dyn Workers,
    opts: Options,
    items: impl Iterator<Item = Item<T>>,
    sink: S,
    interrupt: &Interrupt,
) -> anyhow::Result<Finish> {
    let (tx, rx) = mpsc::channel();
    // Ctrl-C wakes the wait for replies. Dropped after the engine (declared before it): a
    // waker that runs after the receiver is gone sends into nothing, which it ignores.
    let _wake = interrupt.subscribe({
        let tx = tx.clone();
        move || {
            let _ = tx.send(Msg::Interrupt);
        }
    });
    let mut e = Engine {
        pool,
        opts,
        interrupt,
        sink,
        slots: VecDeque::new(),
        base: 0,
        path_bytes: 0,
        next_small: 0,
        urgent: VecDeque::new(),
        in_flight: HashMap::new(),
        next_task: 0,
        tx,
        rx,
        files_done: 0,
        bytes_done: 0,
        stdin_buf: None,
    };
    e.run(items)
}

impl<T, S: Sink<T>> Engine<'_, T, S> {
    fn run(&mut self, items: impl Iterator<Item = Item<T>>) -> anyhow::Result<Finish> {
        let mut items = items.fuse();
        let mut source_done = false;
        let start = Instant::now();
        let mut last_progress = start;
        loop {
            if self.interrupt.is_set() {
                return Ok(Finish::Interrupted);
            }
            let mut taken = 0;
            while !source_done && self.has_room() && taken < INTAKE_BATCH {
                match items.next() {
                    Some(item) => self.admit(item)?,
                    None => source_done = true,
                }
                // Standard input (hashed in `admit`) and a manifest read from it give up
                // waiting on Ctrl-C: stop before their failure is reported.
                if self.interrupt.is_set() {
                    return Ok(Finish::Interrupted);
                }
                taken += 1;
            }
            self.submit()?;
            let mut got = false;
            // A wait of zero: a cluster makes progress here too, while the walk goes on.
            while let Some(msg) = self.pool.wait(&self.rx, Some(Duration::ZERO)) {
                got = true;
                if self.complete(msg)? == Finish::Interrupted {
                    return Ok(Finish::Interrupted);
                }
            }
            self.emit()?;
            if let Some(every) = self.opts.progress
                && last_progress.elapsed() >= every
            {
                last_progress = Instant::now();
                self.sink
                    .progress(self.files_done, self.bytes_done, start.elapsed());
            }
            if source_done && self.slots.is_empty() && self.in_flight.is_empty() {
                self.sink.flush()?;
                return Ok(Finish::Completed);
            }
            let can_take = !source_done && self.has_room();
            if !got && !can_take {
                self.sink.flush()?;
                // Until a reply or Ctrl-C comes, or the progress line is due. `None`: it is due.
                let due = self
                    .opts
                    .progress
                    .map(|every| every.saturating_sub(last_progress.elapsed()));
                if let Some(msg) = self.pool.wait(&self.rx, due)
                    && self.complete(msg)? == Finish::Interrupted
                {
                    return Ok(Finish::Interrupted);
                }
            }
        }
    }

    fn has_room(&self) -> bool {
        self.slots.len() < WINDOW_ITEMS && self.path_bytes < WINDOW_PATH_BYTES
    }

    /// Estimated worker time to hash `size` bytes as one file.
    fn cost(&self, size: u64) -> u64 {
        FILE_COST_NS + size.saturating_mul(self.opts.algo.ps_per_byte()) / 1000
    }

    /// Whether a whole file of `size` bytes is hashed through a mapping (alone in its task):
    /// from [`MAP_MIN`] bytes for SHA-2; never for BLAKE3, whose files up to [`BLAKE3_PIECE`]
    /// are read like small ones (bigger ones are split, each piece read: `digest::blake3_subtree`).
    /// Measured with the page-aligned read buffer (`digest::ReadBuf`), CPU of a run over the
    /// toolchain tree, four alternating runs each: BLAKE3 2.43 s reading files up to 4 MiB
    /// against 2.60 s mapping them from 256 KiB; SHA-256 and SHA-512 the same either way
    /// (3.07 / 3.11 s, 5.7 / 5.8 s).
    fn maps(&self, size: u64) -> bool {
        self.opts.algo != Algo::Blake3 && size >= MAP_MIN
    }

    /// Smallest file sent alone in its task (or, for BLAKE3, split): above one chunk's cost, or
    /// mapped (SHA-2), or above one piece (BLAKE3).
    fn big_from(&self) -> u64 {
        let by_cost = (CHUNK_COST_NS - FILE_COST_NS) * 1000 / self.opts.algo.ps_per_byte() + 1;
        match self.opts.algo {
            Algo::Blake3 => by_cost.min(BLAKE3_PIECE + 1),
            Algo::Sha256 | Algo::Sha512 => by_cost.min(MAP_MIN),
        }
    }

    /// Queues a big file of `size` bytes (at least `big_from`) in slot `seq` first: alone in a
    /// task, or, for BLAKE3 above one piece, as its pieces. Returns the slot's new state.
    fn place_big(&mut self, seq: u64, size: u64) -> State {
        if self.opts.algo == Algo::Blake3 && size > BLAKE3_PIECE {
            let piece = blake3_piece(size);
            let leaves = digest::plan(size, piece);
            for (leaf, &(offset, len)) in leaves.iter().enumerate() {
                self.urgent.push_back(Work::Part {
                    seq,
                    leaf,
                    offset,
                    len,
                });
            }
            State::Split {
                total: size,
                piece,
                cvs: vec![None; leaves.len()],
                left: leaves.len(),
                error: None,
                file: None,
            }
        } else {
            self.urgent.push_back(Work::Big(seq));
            State::Sent
        }
    }

    /// Puts a new source at the end of the window.
    fn admit(&mut self, item: Item<T>) -> anyhow::Result<()> {
        let seq = self.base + self.slots.len() as u64;
        let mut path_len = 0;
        let state = match &item.source {
            Source::Failed { reason, .. } => State::Done(Outcome::Failed(reason.clone())),
            Source::Stdin => State::Done(self.hash_stdin()),
            Source::Marker => State::Done(Outcome::Marker),
            Source::File { path, size, .. } => {
                path_len = path.len();
                self.path_bytes += path_len;
                match *size {
                    Some(size) if size >= self.big_from() => self.place_big(seq, size),
                    _ => State::Waiting,
                }
            }
        };
        let done = matches!(state, State::Done(_));
        self.slots.push_back(Slot {
            item: Some(item),
            state,
            path_len,
        });
        // Not when interrupted: standard input's read gave up (the caller stops next).
        if done && !self.opts.ordered && !self.interrupt.is_set() {
            self.emit_unordered(seq)?;
        }
        Ok(())
    }

    /// Hashes standard input here in the parent (it cannot be reopened by a worker).
    fn hash_stdin(&mut self) -> Outcome {
        let buf = self.stdin_buf.get_or_insert_with(ReadBuf::new).get();
        match digest::hash_reader(self.opts.algo, &mut crate::stdfds::Stdin, buf) {
            Ok(d) => Outcome::Digest(d),
            Err(e) => Outcome::Failed(super::format::reason(&e)),
        }
    }

    fn slot(&mut self, seq: u64) -> &mut Slot<T> {
        debug_assert!(seq >= self.base && seq < self.base + self.slots.len() as u64);
        &mut self.slots[(seq - self.base) as usize]
    }

    /// Why the files of `works`, a task the pool failed with `e`, were not hashed.
    ///
    /// A mapped file (a big SHA-2 file, alone in its task) raises `SIGBUS` in the worker that
    /// reads a page of the mapping the file cannot give: past its end, if it was truncated
    /// while hashed (see `digest`), or a page the disk could not read (an I/O error, a network
    /// file system gone). The file's size now tells which. Nothing else a worker does for us
    /// raises `SIGBUS` (small files and BLAKE3 pieces are read; the pool never truncates its own
    /// segments), and other deaths are the pool's message alone.
    fn died(&self, e: &shmpool::Error, works: &[Work]) -> String {
        let sigbus = matches!(
            e,
            shmpool::Error::WorkerDied {
                signal: Some(libc::SIGBUS),
                ..
            }
        );
        let &[Work::Big(seq)] = works else {
            return e.to_string();
        };
        let (path, size, _) = self.file(seq);
        let Some(size) = size.filter(|&n| sigbus && self.maps(n)) else {
            return e.to_string();
        };
        match std::fs::metadata(os_path(path)) {
            Ok(m) if m.len() < size => format!(
                "file shrank while it was hashed, from {size} to {} bytes ({e}, reading past the \
                 file's new end)",
                m.len()
            ),
            _ => format!("could not read the file through its mapping ({e}; an I/O error?)"),
        }
    }

    /// Path, size and `regular` of the file in slot `seq`.
    fn file(&self, seq: u64) -> (&[u8], Option<u64>, bool) {
        match self.slots[(seq - self.base) as usize]
            .item
            .as_ref()
            .map(|i| &i.source)
        {
            Some(Source::File {
                path,
                size,
                regular,
            }) => (path, *size, *regular),
            _ => unreachable!("only files are sent"),
        }
    }

    /// Sends tasks while fewer than `TASKS_PER_WORKER` per worker are in flight.
    fn submit(&mut self) -> anyhow::Result<()> {
        let max = TASKS_PER_WORKER * self.pool.processes();
        while self.in_flight.len() < max {
            let mut works = Vec::new();
            if let Some(w) = self.urgent.pop_front() {
                works.push(w);
            } else {
                let mut cost = 0;
                let end = self.base + self.slots.len() as u64;
                while self.next_small < end && cost < CHUNK_COST_NS && works.len() < CHUNK_FILES {
                    let seq = self.next_small;
                    self.next_small += 1;
                    let slot = self.slot(seq);
                    if matches!(slot.state, State::Waiting) {
                        slot.state = State::Sent;
                        let size = match slot.item.as_ref().map(|i| &i.source) {
                            Some(Source::File { size, .. }) => size.unwrap_or(0),
                            _ => 0,
                        };
                        cost += self.cost(size);
                        works.push(Work::Whole(seq));
                    }
                }
            }
            if works.is_empty() {
                return Ok(());
            }
            let mut paths = Vec::new();
            let jobs = works
                .iter()
                .map(|w| {
                    let seq = match *w {
                        Work::Whole(seq) | Work::Big(seq) | Work::Part { seq, .. } => seq,
                    };
                    let (path, size, regular) = self.file(seq);
                    // No path is 4 GiB long (the window holds 8 MiB of them); one cut to that
                    // would fail to open like any over-long path.
                    let path_len = u32::try_from(path.len()).unwrap_or(u32::MAX);
                    paths.extend_from_slice(&path[..path_len as usize]);
                    match *w {
                        Work::Whole(_) | Work::Big(_) => Job::Whole {
                            path_len,
                            map: matches!(w, Work::Big(_)) && self.maps(size.unwrap_or(0)),
                            // A big file's size came from a stat of a regular file.
                            regular: regular || matches!(w, Work::Big(_)),
                        },
                        Work::Part { offset, len, .. } => Job::Part {
                            path_len,
                            offset,
                            len,
                        },
                    }
                })
                .collect();
            // A file sent alone is hashed whatever its size; small files hand big ones back.
            let big_from = if matches!(works[..], [Work::Big(_)]) {
                u64::MAX
            } else {
                self.big_from()
            };
            let id = self.next_task;
            self.next_task += 1;
            self.pool.start(
                id,
                Task {
                    algo: self.opts.algo,
                    big_from,
                    jobs,
                    paths,
                },
                self.tx.clone(),
            )?;
            self.in_flight.insert(id, works);
        }
        Ok(())
    }

    /// Files one task's reply into its slots.
    fn complete(&mut self, msg: Msg) -> anyhow::Result<Finish> {
        let (id, reply) = match msg {
            Msg::Reply(id, reply) => (id, reply),
            Msg::Interrupt => return Ok(Finish::Interrupted),
        };
        let Some(works) = self.in_flight.remove(&id) else {
            return Ok(Finish::Completed);
        };
        let digest_len = |w: &Work| match w {
            Work::Part { .. } => blake3::OUT_LEN,
            Work::Whole(_) | Work::Big(_) => self.opts.algo.digest_len(),
        };
        let (results, digests): (Vec<Answer>, Vec<u8>) = match reply {
            Ok(r) => {
                let want: usize = works
                    .iter()
                    .zip(&r.answers)
                    .filter(|(_, a)| matches!(a, Answer::Done(_) | Answer::Piece(..)))
                    .map(|(w, _)| digest_len(w))
                    .sum();
                if r.answers.len() == works.len() && r.digests.len() == want {
                    (r.answers, r.digests)
                } else {
                    let e = format!(
                        "internal error: {} results and {} digest bytes for {} files",
                        r.answers.len(),
                        r.digests.len(),
                        works.len()
                    );
                    (vec![Answer::Failed(e); works.len()], Vec::new())
                }
            }
            Err(e) => {
                // Interrupted: the pool is being terminated, and no more lines are wanted.
                if self.interrupt.is_set() {
                    return Ok(Finish::Interrupted);
                }
                let reason = self.died(&e, &works);
                (vec![Answer::Failed(reason); works.len()], Vec::new())
            }
        };
        let mut digests = &digests[..];
        // The next digest of the reply (their total length was checked above).
        let mut next_digest = |len: usize| {
            let (d, rest) = digests.split_at(len);
            digests = rest;
            d
        };
        for (work, result) in works.into_iter().zip(results) {
            match work {
                Work::Whole(seq) | Work::Big(seq) => match result {
                    Answer::Done(bytes) => {
                        // Only counted (for the progress line): a lying reply must not overflow.
                        self.bytes_done = self.bytes_done.saturating_add(bytes);
                        let d = next_digest(self.opts.algo.digest_len());
                        let outcome = match Digest::new(d) {
                            Some(d) => Outcome::Digest(d),
                            None => Outcome::Failed("internal error: bad digest".into()),
                        };
                        self.finish(seq, outcome)?;
                    }
                    Answer::Failed(e) => self.finish(seq, Outcome::Failed(e))?,
                    Answer::Piece(..) => {
                        next_digest(self.opts.algo.digest_len());
                        self.finish(
                            seq,
                            Outcome::Failed("internal error: a piece for a whole file".into()),
                        )?;
                    }
                    // A file sent alone is hashed whatever its size (the task says so): handing it
                    // back is a broken reply, and sending it again would never end.
                    Answer::Big(_) if matches!(work, Work::Big(_)) => self.finish(
                        seq,
                        Outcome::Failed("internal error: a file sent alone handed back".into()),
                    )?,
                    Answer::Big(size) => {
                        // Handed back unhashed: now its size is known, send it alone.
                        let state = self.place_big(seq, size);
                        let slot = self.slot(seq);
                        if let Some(Item {
                            source: Source::File { size: s, .. },
                            ..
                        }) = slot.item.as_mut()
                        {
                            *s = Some(size);
                        }
                        slot.state = state;
                    }
                },
                Work::Part { seq, leaf, len, .. } => {
                    self.bytes_done += len;
                    let result = match result {
                        Answer::Piece(_, id) => Ok((next_digest(blake3::OUT_LEN), id)),
                        Answer::Failed(e) => Err(e),
                        Answer::Done(_) | Answer::Big(_) => {
                            Err("internal error: a piece without its file".to_string())
                        }
                    };
                    let slot = self.slot(seq);
                    let State::Split {
                        total,
                        piece,
                        cvs,
                        left,
                        error,
                        file,
                    } = &mut slot.state
                    else {
                        unreachable!("pieces belong to split slots")
                    };
                    match result {
                        // Pieces of another file, or of this one grown or shrunk since it was
                        // planned: merged, they would be the digest of no file.
                        Ok((_, id)) if id.size != *total || *file.get_or_insert(id) != id => {
                            error.get_or_insert_with(|| "file changed while hashing".into());
                        }
                        Ok((cv, _)) => match <[u8; 32]>::try_from(cv) {
                            Ok(cv) => cvs[leaf] = Some(cv),
                            Err(_) => {
                                error.get_or_insert_with(|| "internal error: bad value".into());
                            }
                        },
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                    *left -= 1;
                    if *left == 0 {
                        let outcome = match error.take() {
                            Some(e) => Outcome::Failed(e),
                            None => {
                                let cvs: Vec<_> = cvs.iter().flatten().copied().collect();
                                match digest::merge(*total, *piece, &cvs) {
                                    Some(h) => Outcome::Digest(
                                        Digest::new(&h).expect("BLAKE3 digests are 32 bytes"),
                                    ),
                                    None => Outcome::Failed("internal error: bad tree".into()),
                                }
                            }
                        };
                        self.finish(seq, outcome)?;
                    }
                }
            }
        }
        Ok(Finish::Completed)
    }

    /// Marks a file's slot done (and emits it at once when unordered).
    fn finish(&mut self, seq: u64, outcome: Outcome) -> io::Result<()> {
        self.slot(seq).state = State::Done(outcome);
        self.files_done += 1;
        if !self.opts.ordered {
            self.emit_unordered(seq)?;
        }
        Ok(())
    }

    /// Gives a done slot's item to the sink now (unordered mode).
    fn emit_unordered(&mut self, seq: u64) -> io::Result<()> {
        let slot = self.slot(seq);
        debug_assert!(matches!(slot.state, State::Done(_)));
        if let State::Done(outcome) = std::mem::replace(&mut slot.state, State::Emitted)
            && let Some(item) = slot.item.take()
        {
            self.sink.done(item, outcome)?;
        }
        Ok(())
    }

    /// Gives the finished front of the window to the sink and drops it.
    fn emit(&mut self) -> io::Result<()> {
        while let Some(front) = self.slots.front_mut() {
            match std::mem::replace(&mut front.state, State::Emitted) {
                State::Done(outcome) => {
                    let item = front.item.take();
                    self.pop_front();
                    if let Some(item) = item {
                        self.sink.done(item, outcome)?;
                    }
                }
                State::Emitted => self.pop_front(),
                other => {
                    front.state = other;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn pop_front(&mut self) {
        if let Some(slot) = self.slots.pop_front() {
            self.path_bytes -= slot.path_len;
        }
        self.base += 1;
        self.next_small = self.next_small.max(self.base);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    /// Runs each task at once in this process (`run_task`), after `tamper` has had a look at
    /// the task and may have rewritten its reply; counts the tasks.
    struct Inline {
        tamper: fn(&Task, Reply) -> Reply,
        tasks: Cell<usize>,
        /// Jobs of the tasks started, by kind: whole files, BLAKE3 pieces.
        wholes: Cell<usize>,
        parts: Cell<usize>,
        replies: RefCell<VecDeque<Msg>>,
    }

    impl Inline {
        fn new(tamper: fn(&Task, Reply) -> Reply) -> Inline {
            Inline {
                tamper,
                tasks: Cell::new(0),
                wholes: Cell::new(0),
                parts: Cell::new(0),
                replies: RefCell::new(VecDeque::new()),
            }
        }
    }

    impl Workers for Inline {
        fn processes(&self) -> usize {
            2
        }

        fn start(&self, id: u64, task: Task, _reply: mpsc::Sender<Msg>) -> anyhow::Result<()> {
            self.tasks.set(self.tasks.get() + 1);
            // A run that sends without end (or far too many pieces) fails here, not by hanging.
            assert!(
                self.tasks.get() < 10_000,
                "more tasks than any test here needs"
            );
            for job in &task.jobs {
                let n = match job {
                    Job::Whole { .. } => &self.wholes,
                    Job::Part { .. } => &self.parts,
                };
                n.set(n.get() + 1);
            }
            // Pieces are not hashed (the test's big file is sparse, and huge): answered as a
            // worker answers for a file that shrank.
            let reply = if task.jobs.iter().all(|j| matches!(j, Job::Part { .. })) {
                Reply {
                    answers: vec![Answer::Failed("not hashed".into()); task.jobs.len()],
                    digests: Vec::new(),
                }
            } else {
                let tamper = self.tamper;
                let copy = Task {
                    algo: task.algo,
                    big_from: task.big_from,
                    jobs: Vec::new(),
                    paths: Vec::new(),
                };
                let reply = run_task(task);
                tamper(&copy, reply)
            };
            self.replies
                .borrow_mut()
                .push_back(Msg::Reply(id, Ok(reply)));
            Ok(())
        }

        fn wait(&self, _rx: &mpsc::Receiver<Msg>, _timeout: Option<Duration>) -> Option<Msg> {
            self.replies.borrow_mut().pop_front()
        }
    }

    /// Collects the outcomes, in order.
    #[derive(Default)]
    struct Collect(Vec<(Vec<u8>, Outcome)>);

    impl Sink<()> for &mut Collect {
        fn done(&mut self, item: Item<()>, outcome: Outcome) -> io::Result<()> {
            let path = match item.source {
                Source::File { path, .. } | Source::Failed { path, .. } => path,
                Source::Stdin | Source::Marker => b"-".to_vec(),
            };
            self.0.push((path, outcome));
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn hash(workers: &Inline, algo: Algo, paths: &[&std::path::Path]) -> Vec<(Vec<u8>, Outcome)> {
        hash_with(workers, algo, paths)
    }

    fn hash_with(
        workers: &dyn Workers,
        algo: Algo,
        paths: &[&std::path::Path],
    ) -> Vec<(Vec<u8>, Outcome)> {
        let mut out = Collect::default();
        let items = paths.iter().map(|p| Item {
            source: Source::File {
                path: p.as_os_str().as_encoded_bytes().to_vec(),
                size: None,
                regular: true,
            },
            tag: (),
        });
        let opts = Options {
            algo,
            ordered: true,
            progress: None,
        };
        let finish = run(workers, opts, items, &mut out, &Interrupt::never()).unwrap();
        assert_eq!(finish, Finish::Completed);
        out.0
    }

    /// A fresh directory of a test, removed when the guard drops, when the test fails too.
    struct TmpDir(std::path::PathBuf);

    impl std::ops::Deref for TmpDir {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
            // A thread of a failed test may still be blocked opening or reading a FIFO in here:
            // an `O_RDWR` open never blocks (Linux), lets a blocked `open` return, and its
            // close ends a blocked `read` (no writer left: end of file).
            for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_fifo()) {
                    drop(
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .custom_flags(libc::O_NONBLOCK)
                            .open(e.path()),
                    );
                }
            }
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(name: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!("shmpool-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }

    /// Runs every task at once in this process; after the first task of BLAKE3 pieces, renames
    /// `replacement` over the file the pieces are read from (as an editor or `rsync` replaces
    /// a file), so the other pieces read the new file.
    struct Replacing {
        replacement: std::path::PathBuf,
        replaced: Cell<bool>,
        replies: RefCell<VecDeque<Msg>>,
    }

    impl Workers for Replacing {
        fn processes(&self) -> usize {
            2
        }

        fn start(&self, id: u64, task: Task, _reply: mpsc::Sender<Msg>) -> anyhow::Result<()> {
            let piece = matches!(task.jobs[..], [Job::Part { .. }]);
            let path = task.paths.clone();
            let reply = run_task(task);
            if piece && !self.replaced.replace(true) {
                std::fs::rename(
                    &self.replacement,
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&path),
                )
                .unwrap();
            }
            self.replies
                .borrow_mut()
                .push_back(Msg::Reply(id, Ok(reply)));
            Ok(())
        }

        fn wait(&self, _rx: &mpsc::Receiver<Msg>, _timeout: Option<Duration>) -> Option<Msg> {
            self.replies.borrow_mut().pop_front()
        }
    }

    #[test]
    fn a_low_descriptor_limit_sets_fewer_files_aside() {
        assert_eq!(pending_limit(libc::RLIM_INFINITY), MAX_PENDING);
        assert_eq!(pending_limit(1024), MAX_PENDING);
        assert_eq!(pending_limit(112), 16);
        assert_eq!(pending_limit(50), 0);
        assert_eq!(pending_limit(0), 0);
    }

    #[test]
    fn files_set_aside_stay_within_their_count_and_their_bytes_oldest_out_first() {
        let mut s = SetAside::new(MAX_PENDING, MAX_PENDING_BYTES);
        let mut out = Vec::new();
        // Tiny files: the count bounds them; BLAKE3's biggest small files: the bytes do; a file
        // bigger than the bound alone comes out at once.
        let sizes = (0..100)
            .map(|_| 100)
            .chain((0..20).map(|_| BLAKE3_PIECE - 1))
            .chain([MAX_PENDING_BYTES + 1])
            .chain((0..3).map(|_| 1));
        for (at, size) in sizes.enumerate() {
            s.push(at, at, size);
            while let Some((at, file)) = s.pop_over() {
                assert_eq!(at, file);
                out.push(at);
            }
            assert!(s.files.len() <= MAX_PENDING, "{} files", s.files.len());
            assert!(s.bytes <= MAX_PENDING_BYTES, "{} bytes", s.bytes);
            assert_eq!(s.bytes, s.files.iter().map(|f| f.2).sum::<u64>());
        }
        while let Some((at, _)) = s.pop() {
            out.push(at);
        }
        assert_eq!(out, (0..124).collect::<Vec<_>>());
        assert_eq!(s.bytes, 0);
    }

    #[test]
    fn files_set_aside_for_the_disk_keep_their_place_in_the_answers() {
        // More cold files in one task than it sets aside at once, between warm ones and
        // missing ones (whose failures must keep their places too).
        let dir = digest::cold::dir("engine");
        let missing = |i: usize| i % 10 == 5;
        let n = 3 * MAX_PENDING;
        let inputs: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                (0..(i * 37 % 5000 + 1))
                    .map(|j| (i * 7 + j) as u8)
                    .collect()
            })
            .collect();
        let paths: Vec<_> = (0..n).map(|i| dir.0.join(format!("f{i:04}"))).collect();
        for (i, (p, input)) in paths.iter().zip(&inputs).enumerate() {
            if !missing(i) {
                std::fs::write(p, input).unwrap();
            }
        }
        let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
        for algo in [Algo::Sha256, Algo::Blake3] {
            for (i, p) in paths.iter().enumerate() {
                if i % 4 != 0 && !missing(i) {
                    digest::cold::evict(p);
                }
            }
            let mut buf = vec![0u8; 4096];
            let want: Vec<_> = paths
                .iter()
                .zip(&inputs)
                .enumerate()
                .map(|(i, (p, input))| {
                    let outcome = if missing(i) {
                        Outcome::Failed("No such file or directory".into())
                    } else {
                        let d = digest::hash_reader(algo, &mut &input[..], &mut buf).unwrap();
                        Outcome::Digest(d)
                    };
                    (p.as_os_str().as_encoded_bytes().to_vec(), outcome)
                })
                .collect();
            let workers = Inline::new(|_, r| r);
            assert_eq!(hash(&workers, algo, &refs), want);
            assert_eq!(workers.tasks.get(), 1, "all the files in one task");
        }
    }

    #[test]
    fn a_blake3_file_replaced_between_its_pieces_fails_instead_of_mixing_two_files() {
        let d = tmp("replaced");
        let len = 2 * BLAKE3_PIECE as usize + 1000;
        let old: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let new: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
        let (file, replacement) = (d.join("file"), d.join("replacement"));
        // The same size, and a shorter one (whose missing tail reads would also catch) and a
        // longer one (whose pieces would all read fine).
        for new_len in [len, len - 10, len + 10] {
            std::fs::write(&file, &old).unwrap();
            std::fs::write(&replacement, &new[..new_len.min(len)]).unwrap();
            if new_len > len {
                let f = std::fs::OpenOptions::new().append(true).open(&replacement);
                std::io::Write::write_all(&mut f.unwrap(), &[9u8; 10]).unwrap();
            }
            let w = Replacing {
                replacement: replacement.clone(),
                replaced: Cell::new(false),
                replies: RefCell::new(VecDeque::new()),
            };
            let got = hash_with(&w, Algo::Blake3, &[&file]);
            assert!(w.replaced.get(), "the file was not split");
            assert_eq!(
                got[0].1,
                Outcome::Failed("file changed while hashing".into()),
                "replaced by {new_len} bytes"
            );
        }
        // Not replaced: the pieces merge into b3sum's digest.
        std::fs::write(&file, &old).unwrap();
        std::fs::write(&replacement, &old).unwrap();
        let w = Replacing {
            replacement: d.join("absent"),
            replaced: Cell::new(true),
            replies: RefCell::new(VecDeque::new()),
        };
        let got = hash_with(&w, Algo::Blake3, &[&file]);
        assert_eq!(
            got[0].1,
            Outcome::Digest(Digest::new(blake3::hash(&old).as_bytes()).unwrap())
        );
        drop(d);
    }

    #[test]
    fn a_huge_blake3_file_is_cut_into_a_bounded_number_of_pieces() {
        let d = tmp("huge");
        let big = d.join("sparse");
        // 1 TiB, sparse: 262,144 pieces of 4 MiB; the parent would hold ~20 MB for them (and for
        // a PiB on tmpfs, more than the machine has).
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let small = d.join("small");
        std::fs::write(&small, b"abc").unwrap();
        let w = Inline::new(|_, r| r);
        let got = hash(&w, Algo::Blake3, &[&big, &small]);
        let pieces = w.parts.get() as u64;
        assert!(
            pieces > MAX_PIECES / 2 && pieces <= MAX_PIECES + 64,
            "{pieces} pieces"
        );
        assert_eq!(got[0].1, Outcome::Failed("not hashed".into()));
        assert_eq!(
            got[1].1,
            Outcome::Digest(Digest::new(blake3::hash(b"abc").as_bytes()).unwrap())
        );
        // Every size gets a power-of-two piece, BLAKE3_PIECE up to MAX_PIECES of them, and
        // never more than about MAX_PIECES pieces.
        for size in [
            BLAKE3_PIECE + 1,
            MAX_PIECES * BLAKE3_PIECE,
            MAX_PIECES * BLAKE3_PIECE + 1,
            1 << 50,
            u64::MAX / 2,
        ] {
            let piece = blake3_piece(size);
            assert!(piece.is_power_of_two() && piece >= BLAKE3_PIECE && piece < size);
            assert!(size.div_ceil(piece) <= MAX_PIECES, "size {size}");
        }
        assert_eq!(blake3_piece(MAX_PIECES * BLAKE3_PIECE), BLAKE3_PIECE);
        assert_eq!(
            blake3_piece(MAX_PIECES * BLAKE3_PIECE + 1),
            2 * BLAKE3_PIECE
        );
        drop(d);
    }

    #[test]
    fn blake3_reads_files_up_to_a_piece_with_the_small_ones_and_sha2_maps_them_alone() {
        let d = tmp("mid");
        let mid = d.join("mid");
        let bytes: Vec<u8> = (0..MAP_MIN as usize + 4097)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&mid, &bytes).unwrap();
        let small = d.join("small");
        std::fs::write(&small, b"abc").unwrap();
        let w = Inline::new(|_, r| r);
        let got = hash(&w, Algo::Blake3, &[&mid, &small]);
        assert_eq!(
            got[0].1,
            Outcome::Digest(Digest::new(blake3::hash(&bytes).as_bytes()).unwrap())
        );
        // One task: the mid-size file was hashed where it stood, not handed back.
        assert_eq!((w.tasks.get(), w.wholes.get(), w.parts.get()), (1, 2, 0));
        let w = Inline::new(|_, r| r);
        let got = hash(&w, Algo::Sha256, &[&mid, &small]);
        assert!(matches!(got[0].1, Outcome::Digest(_)), "{:?}", got[0]);
        // Handed back from the first task, then sent alone (mapped).
        assert_eq!((w.tasks.get(), w.wholes.get()), (2, 3));
        drop(d);
    }

    #[test]
    fn a_fifo_put_where_the_walk_saw_a_file_fails_and_the_run_goes_on() {
        let d = tmp("fifo");
        let fifo = d.join("was-a-file");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let small = d.join("small");
        std::fs::write(&small, b"abc").unwrap();
        // The items say `regular` (as the walk says of what `getdents` calls a regular file):
        // the worker must not block opening the FIFO (nobody will ever write to it).
        let (tx, rx) = mpsc::channel();
        let (f, s) = (fifo.clone(), small.clone());
        std::thread::spawn(move || {
            let w = Inline::new(|_, r| r);
            let _ = tx.send(hash(&w, Algo::Sha256, &[&f, &s]));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("a worker blocked opening a FIFO");
        assert_eq!(got[0].1, Outcome::Failed(digest::not_regular().to_string()));
        assert_eq!(
            got[1].1,
            Outcome::Digest(Digest::new(&<sha2::Sha256 as sha2::Digest>::digest(b"abc")).unwrap())
        );
        drop(d);
    }

    #[test]
    fn a_file_sent_alone_and_handed_back_fails_instead_of_being_sent_again() {
        let d = tmp("handback");
        let big = d.join("big");
        std::fs::write(&big, vec![7u8; (MAP_MIN + 1) as usize]).unwrap();
        let small = d.join("small");
        std::fs::write(&small, b"abc").unwrap();
        // A broken worker: a file sent alone (the task says hash it whatever its size) comes
        // back unhashed as big, with a byte count that would overflow the progress total.
        let w = Inline::new(|task, reply| {
            if task.big_from == u64::MAX {
                Reply {
                    answers: vec![Answer::Big(u64::MAX)],
                    digests: Vec::new(),
                }
            } else {
                Reply {
                    answers: reply
                        .answers
                        .into_iter()
                        .map(|a| match a {
                            Answer::Done(_) => Answer::Done(u64::MAX),
                            a => a,
                        })
                        .collect(),
                    digests: reply.digests,
                }
            }
        });
        // BLAKE3 sends no file alone: it reads files up to a piece and splits bigger ones.
        for algo in [Algo::Sha256, Algo::Sha512] {
            let got = hash(&w, algo, &[&big, &small, &small]);
            assert_eq!(
                got[0].1,
                Outcome::Failed("internal error: a file sent alone handed back".into())
            );
            assert!(matches!(got[1].1, Outcome::Digest(_)), "{:?}", got[1]);
            assert_eq!(got[2].1, got[1].1);
        }
        drop(d);
    }

    /// Never answers a task; waits on the channel as the pool does, saying each time how long
    /// it was asked to wait.
    struct Silent {
        waits: mpsc::Sender<Option<Duration>>,
    }

    impl Workers for Silent {
        fn processes(&self) -> usize {
            1
        }

        fn start(&self, _id: u64, _task: Task, _reply: mpsc::Sender<Msg>) -> anyhow::Result<()> {
            Ok(())
        }

        fn wait(&self, rx: &mpsc::Receiver<Msg>, timeout: Option<Duration>) -> Option<Msg> {
            let _ = self.waits.send(timeout);
            match timeout {
                None => rx.recv().ok(),
                Some(t) => rx.recv_timeout(t).ok(),
            }
        }
    }

    /// Counts the progress ticks it is given.
    struct Ticks(std::sync::Arc<std::sync::Mutex<u32>>);

    impl Sink<()> for Ticks {
        fn done(&mut self, _item: Item<()>, _outcome: Outcome) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn progress(&mut self, _files: u64, _bytes: u64, _elapsed: Duration) {
            *self.0.lock().unwrap() += 1;
        }
    }

    /// Runs one file through `Silent` workers in a thread, with a progress tick every
    /// `progress`; returns the interrupt, the waits the run began, the ticks, and its end.
    #[allow(clippy::type_complexity)]
    fn silent_run(
        progress: Option<Duration>,
    ) -> (
        std::sync::Arc<Interrupt>,
        mpsc::Receiver<Option<Duration>>,
        std::sync::Arc<std::sync::Mutex<u32>>,
        mpsc::Receiver<Finish>,
    ) {
        let interrupt = std::sync::Arc::new(Interrupt::never());
        let (waits_tx, waits) = mpsc::channel();
        let ticks = std::sync::Arc::new(std::sync::Mutex::new(0));
        let (end_tx, end) = mpsc::channel();
        let (i, t) = (
            std::sync::Arc::clone(&interrupt),
            std::sync::Arc::clone(&ticks),
        );
        std::thread::spawn(move || {
            let items = std::iter::once(Item {
                source: Source::File {
                    path: b"never-read".to_vec(),
                    size: Some(3),
                    regular: true,
                },
                tag: (),
            });
            let opts = Options {
                algo: Algo::Sha256,
                ordered: true,
                progress,
            };
            let w = Silent { waits: waits_tx };
            let _ = end_tx.send(run(&w, opts, items, Ticks(t), &i).unwrap());
        });
        (interrupt, waits, ticks, end)
    }

    #[test]
    fn ctrl_c_ends_a_wait_for_a_reply_that_has_no_timeout() {
        let (interrupt, waits, _ticks, end) = silent_run(None);
        // The run's task is out and it waits for the reply, with no timeout: only an event
        // can end that wait.
        loop {
            let w = waits
                .recv_timeout(Duration::from_secs(60))
                .expect("no wait");
            if w.is_none() {
                break;
            }
        }
        assert!(end.try_recv().is_err());
        interrupt.fire();
        let finish = end
            .recv_timeout(Duration::from_secs(60))
            .expect("Ctrl-C did not end the wait");
        assert_eq!(finish, Finish::Interrupted);
    }

    #[test]
    fn a_run_with_a_progress_line_wakes_for_its_ticks_while_no_reply_comes() {
        let (interrupt, waits, ticks, end) = silent_run(Some(Duration::from_millis(5)));
        // Every wait has a bound (the next tick), and the ticks come while nothing else does.
        for _ in 0..20 {
            let w = waits
                .recv_timeout(Duration::from_secs(60))
                .expect("no wait");
            assert!(w.is_some_and(|t| t <= Duration::from_millis(5)), "{w:?}");
        }
        assert!(*ticks.lock().unwrap() >= 2, "{}", ticks.lock().unwrap());
        interrupt.fire();
        let finish = end
            .recv_timeout(Duration::from_secs(60))
            .expect("Ctrl-C did not end the wait");
        assert_eq!(finish, Finish::Interrupted);
    }

    /// Answers every task as if its worker had been killed by `SIGBUS`.
    struct Bus {
        replies: RefCell<VecDeque<Msg>>,
    }

    impl Workers for Bus {
        fn processes(&self) -> usize {
            2
        }

        fn start(&self, id: u64, _task: Task, _reply: mpsc::Sender<Msg>) -> anyhow::Result<()> {
            let e = shmpool::Error::WorkerDied {
                worker: 0,
                pid: 1,
                signal: Some(libc::SIGBUS),
                exit_code: None,
            };
            self.replies.borrow_mut().push_back(Msg::Reply(id, Err(e)));
            Ok(())
        }

        fn wait(&self, _rx: &mpsc::Receiver<Msg>, _timeout: Option<Duration>) -> Option<Msg> {
            self.replies.borrow_mut().pop_front()
        }
    }

    #[test]
    fn a_mapped_file_whose_worker_got_sigbus_is_reported_as_shrunk_or_unreadable() {
        let d = tmp("sigbus");
        let shrunk = d.join("shrunk");
        let whole = d.join("whole");
        let small = d.join("small");
        // Planned at 64 MiB; 1 MiB when the worker dies.
        std::fs::write(&shrunk, vec![0u8; 1 << 20]).unwrap();
        std::fs::write(&whole, vec![0u8; 1 << 20]).unwrap();
        std::fs::write(&small, b"abc").unwrap();
        let mut out = Collect::default();
        let file = |path: &std::path::Path, size: u64| Item {
            source: Source::File {
                path: path.as_os_str().as_encoded_bytes().to_vec(),
                size: Some(size),
                regular: true,
            },
            tag: (),
        };
        let items = [
            file(&shrunk, 64 << 20),
            file(&whole, 1 << 20),
            file(&small, 3),
        ]
        .into_iter();
        let opts = Options {
            algo: Algo::Sha512,
            ordered: true,
            progress: None,
        };
        let w = Bus {
            replies: RefCell::new(VecDeque::new()),
        };
        let finish = run(&w, opts, items, &mut out, &Interrupt::never()).unwrap();
        assert_eq!(finish, Finish::Completed);
        let reason = |i: usize| match &out.0[i].1 {
            Outcome::Failed(r) => r.clone(),
            o => panic!("{o:?}"),
        };
        let want = "file shrank while it was hashed, from 67108864 to 1048576 bytes (worker 0";
        assert!(reason(0).starts_with(want), "{}", reason(0));
        assert!(reason(0).contains("SIGBUS"), "{}", reason(0));
        // As big as planned: the mapping could not be read.
        let want = "could not read the file through its mapping (worker 0";
        assert!(reason(1).starts_with(want), "{}", reason(1));
        // A small file is read, never mapped: its worker's SIGBUS is only that.
        let want = "worker 0 (pid 1) was killed by signal 7";
        assert!(reason(2).starts_with(want), "{}", reason(2));
        drop(d);
    }
}
