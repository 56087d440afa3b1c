//! `shmpool hash`: the command line to a [`hash::Config`], Ctrl-C to a
//! flag, the run to an exit status. The engine is `crate::hash`.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
// The flag is set by a signal handler in this process and read by this process: there is no
// cross-process protocol for loom to model, so the facade rule (clippy.toml) does not apply.
#[allow(clippy::disallowed_types)]
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::cli::HashArgs;
use crate::hash::{self, Config};

/// Runs `shmpool hash` with `args`.
///
/// # Errors
///
/// Writing to stdout failed (the caller counts a broken pipe as success), the SIGINT handler
/// or its self-pipe could not be set up, or the pool could not be built.
pub(crate) fn run(args: HashArgs) -> anyhow::Result<ExitCode> {
    // First, before any fork or thread: on every rank but 0 this serves, then exits.
    #[cfg(feature = "mpi")]
    let cluster = if args.mpi {
        let mut b = shmpool::cluster::Cluster::builder();
        if let Some(jobs) = args.jobs {
            b = b.processes_per_rank(jobs);
        }
        Some(b.start().context("cannot start the MPI job")?)
    } else {
        None
    };
    let cfg = Config {
        algo: args.algo,
        paths: args
            .paths
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect(),
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        follow: args.follow,
        zero: args.zero,
        ordered: !args.unordered,
        check: args.check,
        quiet: args.quiet,
        status: args.status,
        progress: if args.progress {
            Some(true)
        } else if args.no_progress {
            Some(false)
        } else {
            None
        },
    };
    // Ctrl-C sets the flag; the engine polls it, terminates the pool and we exit 130. The
    // handler is installed before the pool is built, so forked workers inherit it too, and do
    // not die from the terminal's SIGINT: the parent ends them (and the engine copes if a
    // library change makes them die or ignore it instead).
    #[allow(clippy::disallowed_types)]
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&flag))
        .context("cannot install the SIGINT handler")?;
    // The self-pipe that ends a wait for standard input (see crate::stdfds): a socket pair,
    // created close-on-exec by std, so no program a task runs inherits it. The handler sends
    // one byte with `send(MSG_DONTWAIT)` (signal-hook's choice for a socket), and the writer is
    // non-blocking as well: nothing reads the pipe, and once its buffer is full a further
    // Ctrl-C drops its byte instead of blocking in the handler (the pipe is readable already).
    // Registered after the flag: signal-hook runs a signal's actions in the order of their
    // registration, so the flag is set before the byte is sent, and a caller that sees the
    // read given up finds the flag set.
    let (wake_read, wake_write) =
        UnixStream::pair().context("cannot create the SIGINT self-pipe")?;
    wake_write
        .set_nonblocking(true)
        .context("cannot create the SIGINT self-pipe")?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, wake_write)
        .context("cannot install the SIGINT handler")?;
    crate::stdfds::interrupt_reads_on(wake_read.into());
    let interrupted = move || flag.load(Ordering::SeqCst);
    #[cfg(feature = "mpi")]
    let code = match &cluster {
        Some(c) => {
            let workers = hash::mpi::ClusterWorkers::new(c);
            hash::run_on(&cfg, &interrupted, Some(&workers))?
        }
        None => hash::run(&cfg, &interrupted)?,
    };
    #[cfg(not(feature = "mpi"))]
    let code = hash::run(&cfg, &interrupted)?;
    Ok(ExitCode::from(code))
}
