//! Sends that never block: each message is posted with `MPI_Isend` and its buffer kept here
//! until `MPI_Test` says the library is done with it.
//!
//! Both sides of the cluster send only this way and receive only what a probe found, so two
//! ranks that send each other a large message at the same moment cannot deadlock (with blocking
//! sends, both would wait in the rendezvous for a receive the other never posts).

use std::os::raw::c_int;

use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;

use crate::error::{Error, Result};

/// The largest message MPI sends in one piece: its count is a C `int`.
pub(crate) const MAX_MESSAGE: usize = c_int::MAX as usize;

/// Messages posted and not yet completed.
pub(crate) struct Outbox {
    /// Each buffer with its request; the buffer's heap block does not move while it is here
    /// (moving a `Vec` moves its pointer, not its bytes), and is dropped only once complete.
    pending: Vec<(Vec<u8>, ffi::MPI_Request)>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        Outbox {
            pending: Vec::new(),
        }
    }

    /// Posts `msg` to `dest` with `tag`.
    pub(crate) fn send(
        &mut self,
        world: &SimpleCommunicator,
        dest: usize,
        tag: i32,
        msg: Vec<u8>,
    ) -> Result<()> {
        let count = c_int::try_from(msg.len()).map_err(|_| Error::Cluster {
            rank: dest,
            detail: format!(
                "a message of {} bytes is over MPI's limit of {} bytes",
                msg.len(),
                c_int::MAX
            ),
        })?;
        let dest_c = c_int::try_from(dest).map_err(|_| Error::invalid("rank out of range"))?;
        // SAFETY: plain read of an MPI constant the library initialized (MPI is initialized).
        let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: `msg` is `count` readable bytes that stay alive and unmodified until the request
        // completes (it moves into `pending` and leaves only after `MPI_Test` reports completion);
        // the datatype and communicator are valid handles; `req` is a valid out-pointer. MPI is
        // used from this thread only (the cluster's contract).
        let rc = unsafe {
            ffi::MPI_Isend(
                msg.as_ptr().cast(),
                count,
                ffi::RSMPI_UINT8_T,
                dest_c,
                tag,
                world.as_raw(),
                &mut req,
            )
        };
        if rc != ffi::MPI_SUCCESS as c_int {
            return Err(Error::Cluster {
                rank: dest,
                detail: format!("MPI_Isend failed with code {rc}"),
            });
        }
        self.pending.push((msg, req));
        Ok(())
    }

    /// Retires completed sends; true if any completed.
    pub(crate) fn poll(&mut self) -> bool {
        let before = self.pending.len();
        self.pending.retain_mut(|(_, req)| {
            let mut flag: c_int = 0;
            // SAFETY: `req` is a request returned by `MPI_Isend` and not yet completed (completed
            // ones leave `pending` right here); `MPI_STATUS_IGNORE` is the library's constant.
            let rc = unsafe { ffi::MPI_Test(req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            // An error is fatal under MPI's default handler, so `rc` is SUCCESS here; keep the
            // buffer on anything else rather than free memory the library may still read.
            !(rc == ffi::MPI_SUCCESS as c_int && flag != 0)
        });
        self.pending.len() != before
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Waits politely between polls of MPI: yields the core for the first 50 µs after the last
/// event (a reply to a short task is often that close), then sleeps a quarter of the time idle
/// so far, at most 200 µs. An idle rank thus polls 5,000 times a second (a few µs each), and a
/// busy one answers within tens of µs; MPI's own blocking calls would spin on a core instead.
/// (A sleep is never shorter than the timer slack, 50 µs by default: hence the yields.)
#[derive(Debug)]
pub(crate) struct Backoff(std::time::Instant);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(std::time::Instant::now())
    }
}

impl Backoff {
    /// Something happened: the next waits are short again.
    pub(crate) fn reset(&mut self) {
        self.0 = std::time::Instant::now();
    }

    /// How long to wait now, if at all (`None`: just yield).
    pub(crate) fn nap(&self) -> Option<std::time::Duration> {
        let idle = self.0.elapsed();
        (idle >= std::time::Duration::from_micros(50))
            .then(|| (idle / 4).min(std::time::Duration::from_micros(200)))
    }

    /// Waits a little (see the type's docs).
    pub(crate) fn snooze(&mut self) {
        match self.nap() {
            None => std::thread::yield_now(),
            Some(d) => std::thread::sleep(d),
        }
    }
}
