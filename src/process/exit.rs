//! How the parent sees a process leave: raw wait statuses, reaping the fork server, and waiting
//! until a worker that is no child of ours is gone. (How a process *leaves* — the exit codes,
//! `exit_now`, `ExitOnUnwind` — is in `unwind`, the failure fences, because the fd channel in `shm`
//! leaves through it too.)

use std::time::Duration;

/// Waits for the server to exit and reaps it; returns its raw wait status.
pub(crate) fn reap_server(pid: i32, block: bool) -> Option<i32> {
    let mut status: libc::c_int = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Some(status);
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// Waits until process `pid` has exited (a zombie or gone): from then on it cannot touch any
/// memory, since a process releases its mappings before it becomes a zombie.
///
/// For the workers of a fork server that died: they are no children of ours (we cannot
/// `waitpid` them) and their `PR_SET_PDEATHSIG` kill is only *sent* when the server dies. Waits
/// on a pidfd (readable once the process exits), or, on kernels without `pidfd_open` (before
/// 5.3), polls `/proc/<pid>/stat` for state `Z` or its absence.
///
/// The pid must belong to a process that is dying or gone: one caught by a reuse of its pid
/// would be waited for (the pid came from the server's `SeatCtl::pid` an instant after that
/// worker was killed; Linux hands pids out cyclically, so a reuse in that instant needs the
/// whole pid space to wrap).
pub(crate) fn wait_gone(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: pidfd_open(pid, 0) takes two integers and returns a new fd (or -1); no memory is
    // passed. The fd is owned below and closed on every path.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: `fd` is a fresh descriptor the kernel just gave us and nobody else owns.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: poll on one valid `pollfd` that lives across the call; no timeout: a pidfd
            // becomes readable when its process exits, which the kill already under way ensures.
            let r = unsafe { libc::poll(&mut p, 1, -1) };
            if r > 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        }
    }
    if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return; // gone already (and reaped by whoever adopted it)
    }
    // No pidfds here: watch /proc instead.
    loop {
        let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => s,
            Err(_) => return,
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("Z");
        if state == "Z" || state == "X" {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Describes a raw wait status as `(signal, exit code)`.
pub(crate) fn decode_status(status: i32) -> (Option<i32>, Option<i32>) {
    if libc::WIFSIGNALED(status) {
        (Some(libc::WTERMSIG(status)), None)
    } else if libc::WIFEXITED(status) {
        (None, Some(libc::WEXITSTATUS(status)))
    } else {
        (None, None)
    }
}
