//! `shmpool hash`: the command line to a [`hash::Config`], Ctrl-C to an
//! [`Interrupt`], the run to an exit status. The engine is `crate::hash`.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::HashArgs;
use crate::hash::interrupt::Interrupt;
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
    // Ctrl-C sets the flag and wakes the engine, which terminates the pool, and we die of
    // SIGINT once it is gone (`die_of_sigint`: status 130 in a shell).
    // The pool's processes do not die from a terminal's SIGINT (the library ignores it in the
    // fork server and gives workers a handler that does nothing): the parent ends them.
    //
    // The self-pipe that ends a wait for standard input (see crate::stdfds): a socket pair,
    // created close-on-exec by std, so no program a task runs inherits it. Nothing reads it;
    // once it is readable a read of standard input gives up, and the flag is set by then (see
    // `Interrupt::on_sigint`).
    let (stdin_wake_read, stdin_wake_write) =
        UnixStream::pair().context("cannot create the SIGINT self-pipe")?;
    let interrupt =
        Interrupt::on_sigint(stdin_wake_write).context("cannot install the SIGINT handler")?;
    crate::stdfds::interrupt_reads_on(stdin_wake_read.into());
    #[cfg(feature = "mpi")]
    let run = match &cluster {
        Some(c) => {
            let workers = hash::mpi::ClusterWorkers::new(c);
            hash::run_on(&cfg, &interrupt, Some(&workers))
        }
        None => hash::run(&cfg, &interrupt),
    };
    #[cfg(not(feature = "mpi"))]
    let run = hash::run(&cfg, &interrupt);
    // A run that failed after Ctrl-C (a write to a full stdout pipe that Ctrl-C ended, see
    // `crate::stdfds`) was interrupted: its pool is gone, and the error is not one to report.
    let code = match run {
        Ok(code) => code,
        Err(_) if interrupt.is_set() => hash::EXIT_INTERRUPTED,
        Err(e) => return Err(e),
    };
    #[cfg(feature = "mpi")]
    drop(cluster);
    if ends_by_sigint(code, &interrupt) {
        die_of_sigint();
    }
    Ok(ExitCode::from(code))
}

/// Whether the run ends by SIGINT: it was interrupted, or Ctrl-C came after its last line,
/// while the pool was being dropped (the run said 0 or 1, but the user asked it to stop before
/// it did, and `sha256sum` would have died of that Ctrl-C too).
fn ends_by_sigint(code: u8, interrupt: &Interrupt) -> bool {
    code == hash::EXIT_INTERRUPTED || interrupt.is_set()
}

/// Ends the process by SIGINT, its default action, now that the pool is gone: a shell then
/// sees a program killed by Ctrl-C (status 130, as for `sha256sum`) and stops too. Exiting
/// with 130 instead tells a shell the program caught Ctrl-C and handled it: bash (which waits
/// for a foreground program to end before it acts on a SIGINT it got itself) then goes on,
/// and `for f in *; do shmpool hash "$f"; done` ran the next iteration after every Ctrl-C.
/// If the process is somehow still alive afterwards, the caller exits with 130.
fn die_of_sigint() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: signal(2) with the default disposition and sigprocmask(2)/raise(3) with a set
    // built by sigemptyset/sigaddset on a local: no memory is shared with anything else. The
    // handler that signal-hook installed is replaced, which nothing needs any more (the run is
    // over; the watcher thread only ever reads its socket).
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGINT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ctrl_c_after_the_last_line_still_ends_the_process_by_sigint() {
        let i = Interrupt::never();
        assert!(!ends_by_sigint(0, &i));
        assert!(!ends_by_sigint(hash::EXIT_FAILED, &i));
        assert!(ends_by_sigint(hash::EXIT_INTERRUPTED, &i));
        // Ctrl-C while the finished run's pool was dropped.
        i.fire();
        assert!(ends_by_sigint(0, &i));
        assert!(ends_by_sigint(hash::EXIT_FAILED, &i));
    }
}
