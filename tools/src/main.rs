//! The `shmpool` command-line tool: `shmpool hash` (file hashing in the pool) and benchmarks
//! for the `shmpool` process pool.
//!
//! Exit codes: 0 on success (a closed stdout, as in `shmpool bench | head`, counts as success),
//! 2 on any error, printed to stderr as `shmpool: <error>: <cause>...`. Usage errors come from
//! clap, also with exit code 2. `shmpool hash` adds 1 (a file could not be hashed, or did not
//! match with `--check`; each reported on stderr) and 130 (interrupted by Ctrl-C: it ends by
//! SIGINT once its pool is gone, which a shell reports as 130, so a script running it stops
//! too).

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;
mod hash;
mod hash_bench;
mod measure;
mod plot;
mod python;
mod report;
mod stdfds;
mod work;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmpool: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Bench(args) => cmd::bench::run(args),
        cli::Command::Hash(args) => cmd::hash::run(args),
    }
}

/// Whether the error is a write to a closed pipe (the reader went away: not our failure).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
