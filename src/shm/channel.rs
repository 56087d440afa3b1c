//! Passing segment file descriptors to workers (`SCM_RIGHTS` over a per-seat socket pair).
//!
//! Segments made after the pool forked (a `SharedVec`, a mapped file, a reader's buffers) reach a
//! worker as file descriptors. Every seat has a `SOCK_SEQPACKET` socket pair made before the fork
//! server is forked: the parent keeps one end, every worker of the seat inherits the other.
//!
//! # Protocol
//!
//! Messages are 16 bytes, `[op: u64, id: u64]`, little-endian:
//!
//! * `ADD id` carries one fd (`SCM_RIGHTS`): segment `id` is this file.
//! * `FORGET id` carries none: segment `id` is gone in the parent; close your copy.
//!
//! The parent sends `ADD` for a segment the first time it dispatches a task that needs it to that
//! seat, *before* pushing the task's descriptor; so when the worker meets an id it does not know,
//! the message is already in its socket and a blocking receive cannot wait forever. The parent
//! sends `FORGET` for segments that were dropped, piggybacked on the next dispatch to that seat,
//! and the worker drains its socket (non-blocking) before each bulk task, so it holds at most the
//! segments still alive plus those dropped since its last bulk task. A replacement worker inherits
//! whatever its predecessor left unread, which is harmless: `ADD` of a known id replaces it,
//! `FORGET` of an unknown id is ignored, and the parent re-sends everything after a respawn.

#![allow(clippy::disallowed_types)] // the worker's channel fd is a process-local std atomic

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering as StdOrdering};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};

use crate::error::{Error, Result};

const OP_ADD: u64 = 1;
const OP_FORGET: u64 = 2;
/// Worker → parent: the fd is the sealed segment holding task `id`'s result (`bigpayload`).
const OP_RESULT: u64 = 3;

/// Makes the socket pair of one seat: `(parent end, worker end)`, both `CLOEXEC`.
pub(crate) fn pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        nix::sys::socket::AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::os("socketpair", std::io::Error::from(e)))
}

fn message(op: u64, id: u64) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&op.to_le_bytes());
    m[8..].copy_from_slice(&id.to_le_bytes());
    m
}

/// The parent sends from under the dispatch lock, so a send never blocks: a full socket (the
/// worker reads it only when it runs a chunk) is an `EAGAIN` the caller handles
/// ([`would_block`]), not a wait that could stall the pool or deadlock against an idle worker.
const SEND_FLAGS: MsgFlags = MsgFlags::MSG_NOSIGNAL.union(MsgFlags::MSG_DONTWAIT);

/// Most `FORGET`s sent with one dispatch: a worker that was given hundreds of segments, all
/// dropped at once, is told a few at a time (one batch per chunk task it gets), so its socket
/// never fills with them.
const FORGETS_PER_SYNC: usize = 4;

/// Whether `e` is a send that would have blocked (the worker's socket is full).
pub(crate) fn would_block(e: &Error) -> bool {
    matches!(e, Error::Os { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock)
}

/// Parent side: tells the worker at `sock` that segment `id` is `fd`.
pub(crate) fn send_add(sock: RawFd, id: u64, fd: RawFd) -> Result<()> {
    let m = message(OP_ADD, id);
    let iov = [IoSlice::new(&m)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &iov, &cmsg, SEND_FLAGS, None)
        .map_err(|e| Error::os("sendmsg(SCM_RIGHTS)", std::io::Error::from(e)))?;
    Ok(())
}

/// Parent side: tells the worker at `sock` to close its copy of segment `id`.
pub(crate) fn send_forget(sock: RawFd, id: u64) -> Result<()> {
    let m = message(OP_FORGET, id);
    let iov = [IoSlice::new(&m)];
    sendmsg::<()>(sock, &iov, &[], SEND_FLAGS, None)
        .map_err(|e| Error::os("sendmsg", std::io::Error::from(e)))?;
    Ok(())
}

/// The worker's end of its seat's socket, set once right after fork.
static CHANNEL: AtomicI32 = AtomicI32::new(-1);

/// The worker's segments by id.
static SEGMENTS: Mutex<Option<HashMap<u64, OwnedFd>>> = Mutex::new(None);

/// Worker side: records the channel fd (called in `worker_main`).
pub(crate) fn set_worker_channel(fd: RawFd) {
    // Relaxed: written once before any task runs in this single-threaded process.
    CHANNEL.store(fd, StdOrdering::Relaxed);
    // A fork inherits the parent's map (only a worker's own fork could have one): start empty.
    *SEGMENTS.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
}

/// The `op` of the error [`receive`] returns when the kernel dropped a message's fd.
const FD_DROPPED: &str = "recvmsg (fd dropped: MSG_CTRUNC)";

/// Worker side: [`receive`], except that a dropped fd ends the worker.
///
/// The kernel drops an `ADD`'s fd when the worker is at its fd limit (a task that leaks files),
/// but the parent has recorded the segment as sent and never sends it again: the next task over
/// that segment would block in `recvmsg` for ever, waiting for it. Only a replacement (a fresh fd
/// table, which the parent assumes holds nothing) agrees with the parent again, so the worker
/// exits with [`EXIT_FD_DROPPED`](crate::unwind::EXIT_FD_DROPPED): the running task fails with
/// `WorkerDied`, and the next one is served.
fn worker_receive(sock: RawFd, block: bool) -> Result<Option<(u64, u64, Option<OwnedFd>)>> {
    match receive(sock, block) {
        Err(Error::Os { op, .. }) if op == FD_DROPPED => {
            crate::unwind::exit_now(crate::unwind::EXIT_FD_DROPPED, true)
        }
        other => other,
    }
}

/// Receives one message; `Ok(None)` when none is waiting and `block` is false.
pub(crate) fn receive(sock: RawFd, block: bool) -> Result<Option<(u64, u64, Option<OwnedFd>)>> {
    let mut m = [0u8; 16];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let flags = if block {
        MsgFlags::MSG_CMSG_CLOEXEC
    } else {
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT
    };
    let (bytes, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut m)];
        match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), flags) {
            Ok(msg) => {
                let mut fds = Vec::new();
                // At the fd limit the kernel drops an `ADD`'s fd and sets MSG_CTRUNC; nix's
                // `cmsgs` then fails (ENOBUFS), so the task fails instead of a later blocking
                // receive waiting for an fd that will never come.
                for c in msg
                    .cmsgs()
                    .map_err(|e| Error::os(FD_DROPPED, std::io::Error::from(e)))?
                {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        fds.extend(v);
                    }
                }
                // A longer message is cut to our 16 bytes and flagged MSG_TRUNC: not ours.
                let bytes = if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                    usize::MAX
                } else {
                    msg.bytes
                };
                break (bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) if !block => return Ok(None),
            Err(e) => return Err(Error::os("recvmsg", std::io::Error::from(e))),
        }
    };
    // SAFETY: the kernel just installed these fds in our table for us (SCM_RIGHTS); we own them.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if bytes != 16 {
        return Err(Error::PoolBroken {
            detail: if bytes == usize::MAX {
                "segment channel message of more than 16 bytes".into()
            } else {
                format!("segment channel message of {bytes} bytes")
            },
        });
    }
    let op = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
    let id = u64::from_le_bytes(m[8..].try_into().expect("8 bytes"));
    Ok(Some((op, id, owned.pop())))
}

fn apply(map: &mut HashMap<u64, OwnedFd>, op: u64, id: u64, fd: Option<OwnedFd>) {
    match (op, fd) {
        (OP_ADD, Some(fd)) => {
            map.insert(id, fd);
        }
        (OP_FORGET, _) => {
            map.remove(&id);
        }
        _ => {}
    }
}

/// Worker side: processes every message already waiting, closing the fds of forgotten
/// segments; returns the ids forgotten (so the caller can drop its mappings of them too).
pub(crate) fn drain() -> Result<Vec<u64>> {
    let sock = CHANNEL.load(StdOrdering::Relaxed);
    if sock < 0 {
        return Ok(Vec::new());
    }
    let mut guard = SEGMENTS.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let mut forgotten = Vec::new();
    while let Some((op, id, fd)) = worker_receive(sock, false)? {
        if op == OP_FORGET {
            forgotten.push(id);
        }
        apply(map, op, id, fd);
    }
    Ok(forgotten)
}

/// Worker side: a duplicate of segment `id`'s fd, receiving it first if needed.
pub(crate) fn resolve(id: u64) -> Result<OwnedFd> {
    let sock = CHANNEL.load(StdOrdering::Relaxed);
    if sock < 0 {
        return Err(Error::invalid(
            "shared segments can only be resolved in a pool worker",
        ));
    }
    let mut guard = SEGMENTS.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    while let Some((op, rid, fd)) = worker_receive(sock, false)? {
        apply(map, op, rid, fd);
    }
    while !map.contains_key(&id) {
        // The parent sent `ADD id` before the task that needs it (see the protocol).
        match worker_receive(sock, true)? {
            Some((op, rid, fd)) => apply(map, op, rid, fd),
            None => unreachable!("a blocking receive returns a message or an error"),
        }
    }
    map[&id]
        .try_clone()
        .map_err(|e| Error::os("dup segment fd", e))
}

/// Worker side: closes our copy of segment `id` now (a large argument, used once), instead of
/// at the parent's `FORGET`, which may come much later.
pub(crate) fn forget_local(id: u64) {
    let mut guard = SEGMENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(map) = guard.as_mut() {
        map.remove(&id);
    }
}

/// Worker side: sends the parent the sealed segment holding task `task_id`'s result.
pub(crate) fn send_result(task_id: u64, fd: &OwnedFd) -> Result<()> {
    let sock = CHANNEL.load(StdOrdering::Relaxed);
    let m = message(OP_RESULT, task_id);
    let iov = [IoSlice::new(&m)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|e| Error::os("sendmsg(SCM_RIGHTS)", std::io::Error::from(e)))?;
    Ok(())
}

/// Why the parent has no segment for a result.
#[derive(Debug)]
pub(crate) enum NoResultSegment {
    /// The worker broke the protocol (no message for the task, or a malformed one).
    Worker(String),
    /// The kernel dropped the fd on our side (MSG_CTRUNC): this process is at its open-file
    /// limit. The worker did nothing wrong; only the result is lost.
    Dropped(Error),
}

/// Parent side: takes the segment of task `task_id`'s result from the worker's end, without
/// blocking (the worker sent it before publishing the result). Messages for other tasks are left
/// over from a worker that died between sending and publishing: their fds are closed.
pub(crate) fn receive_result(
    sock: RawFd,
    task_id: u64,
) -> std::result::Result<OwnedFd, NoResultSegment> {
    loop {
        match receive(sock, false) {
            Ok(Some((OP_RESULT, id, Some(fd)))) if id == task_id => return Ok(fd),
            Ok(Some(_)) => continue,
            Ok(None) => {
                return Err(NoResultSegment::Worker(format!(
                    "no result segment for task {task_id}"
                )));
            }
            Err(e @ Error::Os { op: FD_DROPPED, .. }) => {
                return Err(NoResultSegment::Dropped(e));
            }
            Err(e) => return Err(NoResultSegment::Worker(e.to_string())),
        }
    }
}

/// A segment as a task hands it to the dispatcher: its id and its (shared) fd.
#[derive(Debug, Clone)]
pub(crate) struct SegmentShare {
    pub(crate) id: u64,
    pub(crate) fd: std::sync::Arc<OwnedFd>,
    /// Whatever must live exactly as long as the share's clones do: a large argument's
    /// writable segment, whose `Drop` gives it back to the pool for reuse once no task holds it
    /// (`bigpayload::SpareArgs`). `None` for every other segment.
    #[allow(dead_code)] // held for its `Drop`, never read
    pub(crate) keep: Option<std::sync::Arc<dyn std::fmt::Debug + Send + Sync>>,
}

/// Parent side: which segments each seat's worker holds.
#[derive(Debug, Default)]
pub(crate) struct SentSegments {
    held: HashMap<u64, std::sync::Weak<OwnedFd>>,
}

impl SentSegments {
    /// Sends `FORGET` for (at most `FORGETS_PER_SYNC`) dropped segments and `ADD` for `needed`
    /// ones the worker lacks. Never blocks: a full socket is an error for which [`would_block`]
    /// holds (after the `ADD`s that did go out, which are remembered).
    pub(crate) fn sync(&mut self, sock: RawFd, needed: &[SegmentShare]) -> Result<()> {
        let dead: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, w)| w.strong_count() == 0)
            .map(|(&id, _)| id)
            .take(FORGETS_PER_SYNC)
            .collect();
        for id in dead {
            match send_forget(sock, id) {
                Ok(()) => {
                    self.held.remove(&id);
                }
                // Told later: the next dispatch to this worker tries again.
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        for s in needed {
            if let std::collections::hash_map::Entry::Vacant(vacant) = self.held.entry(s.id) {
                send_add(sock, s.id, s.fd.as_raw_fd())?;
                vacant.insert(std::sync::Arc::downgrade(&s.fd));
            }
        }
        Ok(())
    }

    /// The worker was replaced: assume it holds nothing.
    pub(crate) fn reset(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_whose_fds_were_dropped_is_an_error_not_a_wait() {
        // More fds than the receive buffer has room for: the kernel sets MSG_CTRUNC, as it does
        // when the receiver is at its fd limit.
        let (parent, worker) = pair().unwrap();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fds = [file.as_raw_fd(); 16];
        let m = message(OP_ADD, 3);
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            parent.as_raw_fd(),
            &[IoSlice::new(&m)],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let e = receive(worker.as_raw_fd(), false).unwrap_err();
        assert!(e.to_string().contains("MSG_CTRUNC"), "{e}");
    }

    #[test]
    fn add_and_forget_cross_a_socket_pair_with_the_fd() {
        let (parent, worker) = pair().unwrap();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        send_add(parent.as_raw_fd(), 7, file.as_raw_fd()).unwrap();
        send_forget(parent.as_raw_fd(), 9).unwrap();
        let (op, id, fd) = receive(worker.as_raw_fd(), false).unwrap().unwrap();
        assert_eq!((op, id), (OP_ADD, 7));
        let fd = fd.expect("an fd came with ADD");
        let a = nix::sys::stat::fstat(&fd).unwrap();
        let b = nix::sys::stat::fstat(&file).unwrap();
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
        let (op, id, fd) = receive(worker.as_raw_fd(), false).unwrap().unwrap();
        assert_eq!((op, id, fd.is_none()), (OP_FORGET, 9, true));
        assert!(receive(worker.as_raw_fd(), false).unwrap().is_none());
    }
}
