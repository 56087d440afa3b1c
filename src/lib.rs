//! A `multiprocessing.Pool` for Rust: a fixed set of forked worker processes that run tasks
//! (`apply`, `apply_async`, `map`, `imap`, `imap_unordered`, `starmap`, ...), with the transport in
//! shared memory.
//!
//! # The model
//!
//! [`Pool::new`] forks a small *fork server*, which forks the workers. Each worker has a
//! single-producer single-consumer ring of 64-byte descriptors from the parent and one back, plus
//! an argument arena and a result arena, all in one anonymous shared mapping (`memfd_create`,
//! never a name in `/dev/shm`). A task is the address of a monomorphized trampoline for your
//! function plus its argument encoded into the arena: **code crosses `fork`, data crosses shared
//! memory**. Workers sleep on a futex when idle and spin briefly when busy, so an idle pool uses
//! no CPU and a busy one answers in microseconds.
//!
//! # Quick start
//!
//! ```
//! use shmpool::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = Pool::new(2)?;
//! assert_eq!(pool.apply(square, 12)?, 144);
//! let r = pool.apply_async(|s: String| s.to_uppercase(), "hi".to_string())?;
//! assert_eq!(r.get()?, "HI");
//! assert_eq!(pool.map(square, 1..=4)?, [1, 4, 9, 16]);
//! let total: u64 = pool.imap(square, 0..1000).map(Result::unwrap).sum();
//! assert_eq!(total, 332_833_500);
//! pool.close();
//! pool.join()?;
//! # Ok::<(), shmpool::Error>(())
//! ```
//!
//! # Why processes, not threads
//!
//! Threads (rayon) are faster to start and share memory freely. Processes buy isolation:
//!
//! * a task that segfaults, aborts, or is OOM-killed kills one worker, not your program: its task
//!   resolves to [`Error::WorkerDied`] and the worker is replaced;
//! * a task that panics resolves to [`Error::TaskPanicked`] and the worker lives on;
//! * libraries with global state, or that are not thread-safe, run safely side by side;
//! * [`PoolBuilder::max_tasks_per_child`] returns leaked memory to the OS;
//! * per-worker state comes from [`PoolBuilder::initializer`].
//!
//! Bulk data does not go through the arenas at all: [`SharedVec`] and [`MappedFile`] are split
//! by [`Pool::map_chunks`] and friends, and workers read them in place (see [`SharedVec`]).
//!
//! # Automatic chunksize
//!
//! Items travel to workers in chunks: one task per item would spend microseconds of dispatch on
//! every item. Python guesses the chunk size (`map`: `len / (4 × processes)`; `imap`: 1); without
//! an explicit chunksize, [`Pool::map`], [`Pool::map_async`], [`Pool::starmap`], [`Pool::imap`]
//! and [`Pool::imap_unordered`] measure instead. Each chunk's result reports the worker time it
//! took and the bytes its arguments and results encoded to, and the next chunk is sized from the
//! averages of recent chunks (time over items, bytes over items):
//!
//! * the first chunk holds 1 item;
//! * then as many items as take about **200 µs** of worker time, which makes the per-chunk cost
//!   (a few µs) a few percent, and keeps chunks short enough that every worker stays busy;
//! * but no more than about **128 KiB** of encoded arguments plus results (8192 `u64` → `u64`
//!   items), so a chunk of tiny items stays in the CPU cache while the parent encodes and
//!   decodes it;
//! * and never more than **twice** the previous chunk (an outlier cannot make a huge chunk), nor
//!   more than 65,536 items;
//! * `map` and `starmap`, which know how many items remain, never send more than
//!   `remaining / (2 × processes)` in one chunk, so the workers finish together.
//!
//! So items of 100 µs go two by two, items of 1 µs 200 at a time, and bare numbers in chunks of
//! thousands. `shmpool bench` (the `shmpool-tools` crate) measures the rule against every fixed
//! chunksize; `.chunksize(n)` or [`Pool::map_chunked`] fix the size yourself.
//!
//! # What a task may rely on after `fork`
//!
//! A task function is a `fn` item or a closure that captures nothing. A capturing closure is a
//! compile error, but one that only a full build reports (`cargo build`, `cargo test`): the check
//! is a `const` assertion on the closure's size, evaluated when the call is monomorphized, so
//! `cargo check` and rust-analyzer accept it. Stable Rust has no trait for "captures nothing"
//! (a non-capturing closure coerces to a `fn` pointer, but no bound can ask for that coercion),
//! so a type-level check is not possible today. A task runs in a worker, a fork of the parent
//! taken when the pool was built, so:
//!
//! * **It sees memory as it was when the pool was built**: statics, globals and anything the
//!   initializer captured. Later changes in the parent are invisible; pass data as the argument.
//! * **Only the forking thread exists in a worker**, and the initializer and tasks run on one
//!   thread of the worker's own, named `PoolWorker-N` (so panics and stack overflows name the
//!   worker), with std's default stack size (2 MiB, or `RUST_MIN_STACK`). Do not use a rayon
//!   pool or a tokio runtime created in the parent (its threads are gone); build your own in the
//!   initializer.
//! * **Locks held by other parent threads at the moment of the fork stay locked in the worker.**
//!   The pool takes care of std's: it forks only once no thread is printing a panic, and holds
//!   stdout and stderr across the fork; std's registry of thread stacks, taken by every thread
//!   as it starts and ends, cannot be held that way, so the fork server first checks that a
//!   thread can start in it and is forked again when not. (Building a pool also drops the
//!   other pools' spare byte vectors, so that its fork server does not keep a copy of them.) A lock of your program's own (or a library's) that
//!   another thread holds at that instant would stay held in every worker: build pools early,
//!   or from a quiet moment, in heavily threaded programs.
//! * **The forked side allocates** (the fork server and the workers build their names, threads
//!   and buffers with the global allocator) although the pool's first fork is taken from a
//!   multi-threaded parent. That is safe with glibc's `malloc`, which resets its arena locks in
//!   the child of a `fork`, and with allocators that register `pthread_atfork` handlers to do the
//!   same (jemalloc and mimalloc do). A custom `#[global_allocator]` with a lock of its own and
//!   no such handler can leave that lock held in the fork server (if another thread of the parent
//!   held it at the instant of the fork), and every worker then hangs in its first allocation:
//!   give such an allocator atfork handlers, or build pools before the program starts threads.
//! * **Workers exit with `_exit`**: atexit handlers and destructors of statics never run twice,
//!   and output a task left in a buffer without a newline is flushed only on a graceful exit.
//! * The pool's memory and fds are `CLOEXEC`/`MADV_DONTFORK` where possible: a task may spawn
//!   `Command`s freely, and a pool built later does not inherit another pool's segments.
//! * If the parent dies, every worker dies with it (`PR_SET_PDEATHSIG`).
//! * Workers ignore `SIGINT` (next section); other signals keep their default action.
//!
//! # Ctrl-C
//!
//! A terminal's Ctrl-C sends `SIGINT` to the whole foreground process group: your program, the
//! pool's fork server and every worker. **The parent owns Ctrl-C**: the server ignores `SIGINT`
//! and workers catch it with a handler that does nothing (a program a task `exec`s gets the
//! default action back), so the tasks in flight are not lost and no respawn starts. What happens
//! next is the parent's choice:
//!
//! * **It does nothing** (no handler): the default action kills the parent, and the workers and
//!   server die with it (parent-death signal). Nothing is left behind.
//! * **It handles `SIGINT`** to stop cleanly: the handler only sets a flag; the code that drives
//!   the pool checks it between results, stops submitting, and drops the pool (or calls
//!   [`Pool::terminate`]), which kills and reaps every worker at once and resolves every
//!   pending result to [`Error::PoolTerminated`]. A CLI then exits with status 130 (128 +
//!   `SIGINT`), as shells expect. The `shmpool` commands (`shmpool-tools`) do exactly this.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//!
//! static INTERRUPTED: AtomicBool = AtomicBool::new(false);
//!
//! extern "C" fn on_sigint(_: libc::c_int) {
//!     INTERRUPTED.store(true, Ordering::SeqCst); // async-signal-safe: an atomic store only
//! }
//!
//! fn main() -> Result<std::process::ExitCode, shmpool::Error> {
//!     // SAFETY: installs an async-signal-safe handler (or use the `ctrlc`/`signal-hook` crates).
//!     unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
//!     let pool = shmpool::Pool::new(2)?;
//!     let mut total = 0u64;
//!     for r in pool.imap(|x: u64| x * x, 0..10_000) {
//!         if INTERRUPTED.load(Ordering::SeqCst) {
//!             break;
//!         }
//!         total += r?;
//!     }
//!     if INTERRUPTED.load(Ordering::SeqCst) {
//!         drop(pool); // kills and reaps every worker now; nothing in flight survives
//!         eprintln!("interrupted");
//!         return Ok(std::process::ExitCode::from(130));
//!     }
//!     println!("{total}");
//!     Ok(std::process::ExitCode::SUCCESS)
//! }
//! ```
//!
//! # Beyond one machine
//!
//! With the cargo feature `mpi`, `shmpool::cluster::Cluster` offers the same shape (`map`,
//! `imap`, `imap_unordered`, `apply_async`, same task rule, same encoding) over MPI ranks: the
//! program is started on every host by `mpirun` or Slurm's `srun`, every rank but 0 runs a local
//! forked `Pool` and serves chunks handed out on demand, and rank 0 drives. A task function
//! crosses ranks as its offset in the executable, so every rank must run the same binary (checked
//! at start-up). See the `cluster` module's docs (built with `--features mpi`) and the README's
//! "Beyond one machine".
//!
//! Linux only.

#![cfg_attr(loom, allow(dead_code, unused_imports))]

// Under `--cfg loom` only the lock-free algorithms are built (loom models them in one process;
// the rest forks, which loom cannot follow), and `ring`, `sync`, `mpmc` and `wake` are public so
// that `tests/loom_ring.rs`, `loom_wake.rs` and `loom_queue.rs` reach them. See `ci/loom.sh`. In
// every other build they are private: not part of the API.
mod shm;
#[cfg(loom)]
pub mod sync;
#[cfg(not(loom))]
mod sync;
#[cfg(loom)]
pub use shm::{mpmc, ring, wake};

// The layers, each using only those listed before it: `error`, `sync` and `unwind` at the base;
// `shm`; `encoding`; `process`; `pool` (with `pool::dispatch`); then `queue`, `bulk` and
// `cluster`. `src/README.md` ("Layout and vocabulary") says what each owns and what the words
// `task`, `seat`, `slot`, `seq`, `collect` and `job` mean here.
#[cfg(not(loom))]
mod bulk;
#[cfg(all(feature = "mpi", not(loom)))]
pub mod cluster;
#[cfg(not(loom))]
mod encoding;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod pool;
#[cfg(not(loom))]
mod process;
#[cfg(not(loom))]
mod queue;
#[cfg(not(loom))]
mod unwind;

// Test hooks that corrupt a worker's shared state, and the tests that use them: unit tests, so the
// unsafe hooks never reach the public API (as `ring` stays private outside loom).
#[cfg(all(test, not(loom)))]
mod corrupt;
#[cfg(all(test, not(loom)))]
mod decoder_props;

#[cfg(not(loom))]
pub use bulk::{BulkInput, IMapChunks, IMapReader, MappedFile, SharedVec};
/// Where a payload segment's encoding starts (`bigpayload`, "Layout"): exported only for the
/// tests that forge or scribble on segments, so they follow the constant. Not part of the API.
#[cfg(not(loom))]
#[doc(hidden)]
pub use encoding::bigpayload::ENCODING_AT;
#[cfg(not(loom))]
pub use encoding::payload::Payload;
#[cfg(not(loom))]
pub use encoding::task::StarFn;
#[cfg(not(loom))]
pub use error::{Error, Result, SubmitError};
#[cfg(not(loom))]
pub use pool::result::AsyncResult;
#[cfg(not(loom))]
pub use pool::{DEFAULT_ARENA_SIZE, IMap, Pool, PoolBuilder};
#[cfg(not(loom))]
pub use process::worker::{WorkerInfo, current_worker};
#[cfg(not(loom))]
pub use queue::Queue;
