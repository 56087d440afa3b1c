//! What crosses between ranks: message tags and headers, a task function as an offset in the
//! executable, errors in a wire form, and the executable's fingerprint.
//!
//! Every message is a byte vector. A task (rank 0 → rank r, [`TAG_TASK`]) is a 16-byte header,
//! `id: u64` and `call: i64` (little-endian), then each of the chunk's items as its length
//! (`u32`, little-endian) and its postcard encoding. A reply (rank r → rank 0, [`TAG_REPLY`])
//! is `id: u64` and `elapsed_ns: u64`, then the postcard encoding of [`Reply<R>`].
//! [`TAG_STOP`] is empty.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Rank 0 → serving rank: run a chunk.
pub(crate) const TAG_TASK: i32 = 1;
/// Serving rank → rank 0: a chunk's results.
pub(crate) const TAG_REPLY: i32 = 2;
/// Rank 0 → serving rank: no more work; leave when idle.
pub(crate) const TAG_STOP: i32 = 3;

/// Length of a task's and a reply's header.
pub(crate) const HEADER: usize = 16;

/// What a serving rank runs for a task: decodes the chunk, runs it on the rank's pool, and
/// returns the encoded [`Reply`].
pub(crate) type RankCall = unsafe fn(pool: &crate::Pool, body: &[u8]) -> Vec<u8>;

/// The symbol every function offset is measured from.
///
/// `inline(never)` and a body of its own so it keeps an address; any function of this crate
/// would do, since the whole crate is linked into the one executable every rank runs.
#[inline(never)]
fn anchor() -> usize {
    std::hint::black_box(0x5348_4d50)
}

/// A rank call as its offset from [`anchor`]: the same on every rank running the same
/// executable, whatever address ASLR loaded it at.
pub(crate) fn call_offset(call: RankCall) -> i64 {
    (call as usize).wrapping_sub(anchor as fn() -> usize as usize) as i64
}

/// The rank call at `offset` from [`anchor`] in this process.
///
/// # Safety
///
/// `offset` came from [`call_offset`] in a process running the same executable (checked at
/// start-up by [`fingerprint`]), so it names a [`RankCall`] of this executable too.
pub(crate) unsafe fn call_at(offset: i64) -> RankCall {
    let addr = (anchor as fn() -> usize as usize).wrapping_add(offset as usize);
    // SAFETY: per the contract, `addr` is the address of a function of type `RankCall` in this
    // executable, relocated by the same load bias as `anchor`.
    unsafe { std::mem::transmute::<usize, RankCall>(addr) }
}

/// Writes a 16-byte header of two words.
pub(crate) fn header(a: u64, b: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(4096);
    v.extend_from_slice(&a.to_le_bytes());
    v.extend_from_slice(&b.to_le_bytes());
    v
}

/// Splits a message into its header's two words and its body.
pub(crate) fn split(msg: &[u8]) -> Option<(u64, u64, &[u8])> {
    if msg.len() < HEADER {
        return None;
    }
    let a = u64::from_le_bytes(msg[0..8].try_into().ok()?);
    let b = u64::from_le_bytes(msg[8..16].try_into().ok()?);
    Some((a, b, &msg[HEADER..]))
}

/// A task's failure on its way back to rank 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WireError {
    /// [`Error::TaskPanicked`].
    Panicked {
        worker: usize,
        message: String,
        location: Option<String>,
        backtrace: Option<String>,
    },
    /// [`Error::WorkerDied`].
    Died {
        worker: usize,
        pid: u32,
        signal: Option<i32>,
        exit_code: Option<i32>,
    },
    /// [`Error::TaskTimedOut`].
    TimedOut {
        worker: usize,
        pid: u32,
        limit_ns: u64,
    },
    /// [`Error::Codec`].
    Codec(String),
    /// Anything else, as its message.
    Other(String),
}

impl WireError {
    pub(crate) fn from_error(e: &Error) -> WireError {
        match e {
            Error::TaskPanicked {
                worker,
                message,
                location,
                backtrace,
                ..
            } => WireError::Panicked {
                worker: *worker,
                message: message.clone(),
                location: location.clone(),
                backtrace: backtrace.clone(),
            },
            Error::WorkerDied {
                worker,
                pid,
                signal,
                exit_code,
            } => WireError::Died {
                worker: *worker,
                pid: *pid,
                signal: *signal,
                exit_code: *exit_code,
            },
            Error::TaskTimedOut { worker, pid, limit } => WireError::TimedOut {
                worker: *worker,
                pid: *pid,
                limit_ns: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
            },
            Error::Codec { detail } => WireError::Codec(detail.clone()),
            other => WireError::Other(other.to_string()),
        }
    }

    /// The error as rank 0 reports it: the same variant as on the rank, where there is one.
    pub(crate) fn into_error(self, rank: usize) -> Error {
        match self {
            WireError::Panicked {
                worker,
                message,
                location,
                backtrace,
            } => Error::TaskPanicked {
                worker,
                message,
                location,
                backtrace,
            },
            WireError::Died {
                worker,
                pid,
                signal,
                exit_code,
            } => Error::WorkerDied {
                worker,
                pid,
                signal,
                exit_code,
            },
            WireError::TimedOut {
                worker,
                pid,
                limit_ns,
            } => Error::TaskTimedOut {
                worker,
                pid,
                limit: std::time::Duration::from_nanos(limit_ns),
            },
            WireError::Codec(detail) => Error::Codec { detail },
            WireError::Other(detail) => Error::Cluster { rank, detail },
        }
    }
}

/// A chunk's outcome: the values of the items that succeeded, in item order, and
/// `(index, error)` for each item that failed (flat, so an all-good chunk is a bare `Vec<R>`);
/// or one error for the whole chunk (its items could not be decoded, its results not encoded).
pub(crate) type Reply<R> = Result<(Vec<R>, Vec<(u32, WireError)>), WireError>;

/// This executable's fingerprint: its length and a hash of its bytes (`/proc/self/exe`).
///
/// A hash of the whole file, not the ELF build-id note: a copy of the binary with one byte
/// changed or appended is a different program to us (and the test that proves the check works
/// makes exactly such a copy). Reading a 50 MB debug binary costs tens of milliseconds, once.
pub(crate) fn fingerprint() -> std::io::Result<[u64; 2]> {
    use std::hash::Hasher;
    let mut f = std::fs::File::open("/proc/self/exe")?;
    // SipHash with fixed keys: the same bytes give the same value in every process of the same
    // executable (a different Rust release may hash differently, but then the bytes differ too).
    let mut h = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
        len += n as u64;
    }
    Ok([len, h.finish()])
}

/// The rank the launcher will give this process, read from its environment before `MPI_Init`
/// (OpenMPI, PMIx, MPICH/Hydra, Slurm), if it says.
pub(crate) fn launcher_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_short_messages_are_refused() {
        let mut m = header(7, u64::MAX);
        m.extend_from_slice(b"body");
        assert_eq!(split(&m), Some((7, u64::MAX, &b"body"[..])));
        assert_eq!(split(&m[..15]), None);
    }

    #[test]
    fn errors_keep_their_variant_across_the_wire() {
        let e = Error::WorkerDied {
            worker: 1,
            pid: 42,
            signal: Some(9),
            exit_code: None,
        };
        let back = WireError::from_error(&e).into_error(3);
        assert_eq!(back.to_string(), e.to_string());
        let other = WireError::from_error(&Error::PoolClosed).into_error(3);
        assert_eq!(other.to_string(), "on rank 3: the pool is closed");
    }
}
