//! Ctrl-C as a run sees it: a flag to look at, and a wake-up for whoever waits.
//!
//! The engine blocks on its reply channel with no timeout; what ends that wait on Ctrl-C is an
//! event, not a poll. The SIGINT handler (signal-hook's, async-signal-safe) sets the flag and
//! writes a byte to a socket pair; a watcher thread blocked reading the other end then runs
//! every subscribed waker (the engine's sends a message into its own channel). Dropping a
//! [`Subscription`] removes its waker.
//!
//! The watcher thread lives as long as the process (the handler stays installed too). It takes
//! the wakers' lock only to run them; a fork while it holds the lock leaves the child a locked
//! copy, which no child touches (the pool's fork server ignores SIGINT and its workers replace
//! the disposition with a handler that does nothing; the parent ends them).
//!
//! A waker runs under that lock, on the watcher thread: it must be quick, must not block, and
//! must not subscribe or drop a subscription. One that panics is caught (the watcher goes on
//! for the next Ctrl-C; the flag is set whatever wakers do).

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
// The flag is set by a signal handler in this process and read by this process: there is no
// cross-process protocol for loom to model, so the facade rule (clippy.toml) does not apply.
#[allow(clippy::disallowed_types)]
use std::sync::atomic::{AtomicBool, Ordering};

/// Something to run when the interrupt comes (from the watcher thread).
type Waker = Box<dyn Fn() + Send>;

#[derive(Default)]
struct Wakers {
    next_id: u64,
    list: Vec<(u64, Waker)>,
}

/// Ctrl-C, or no interrupt at all ([`Interrupt::never`]).
pub(crate) struct Interrupt {
    #[allow(clippy::disallowed_types)]
    flag: Arc<AtomicBool>,
    wakers: Arc<Mutex<Wakers>>,
}

impl Interrupt {
    /// An interrupt that never comes (unless a test [`Interrupt::fire`]s it).
    pub(crate) fn never() -> Interrupt {
        Interrupt {
            #[allow(clippy::disallowed_types)]
            flag: Arc::new(AtomicBool::new(false)),
            wakers: Arc::default(),
        }
    }

    /// SIGINT: installs the handler (the flag, then the byte that wakes the watcher, in that
    /// order: signal-hook runs a signal's actions in their order of registration) and starts
    /// the watcher thread. `stdin_wake` is one more socket the handler writes a byte to (see
    /// `crate::stdfds`: a read of standard input gives up once it is readable).
    ///
    /// # Errors
    ///
    /// The handler, the socket pair or the thread could not be set up.
    pub(crate) fn on_sigint(stdin_wake: UnixStream) -> io::Result<Interrupt> {
        let interrupt = Interrupt::never();
        // Started with SIGINT ignored (`cmd &` in a script, `nohup`): Ctrl-C is meant for
        // another program, as for any program that leaves SIGINT alone. Catching it would stop
        // a background run whenever the user stops the foreground one.
        if sigint_ignored()? {
            // Its write end stays open for the life of the process, as it does once
            // registered below: closed, the read end would be readable (end of file), and
            // every read of standard input would give up as if Ctrl-C had come.
            std::mem::forget(stdin_wake);
            return Ok(interrupt);
        }
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupt.flag))?;
        // Both writers non-blocking (signal-hook sends with MSG_DONTWAIT on a socket anyway):
        // once a buffer is full, a further Ctrl-C drops its byte instead of blocking in the
        // handler; the reader has a byte to read already.
        stdin_wake.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, stdin_wake)?;
        let (mut watch_read, watch_write) = UnixStream::pair()?;
        watch_write.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, watch_write)?;
        let wakers = Arc::clone(&interrupt.wakers);
        std::thread::Builder::new()
            .name("shmpool-sigint".into())
            .spawn(move || {
                let mut byte = [0u8; 64];
                loop {
                    match watch_read.read(&mut byte) {
                        Ok(0) => return,
                        Ok(_) => run_wakers(&wakers),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })?;
        Ok(interrupt)
    }

    /// The interrupt came.
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Runs `wake` (from another thread) when the interrupt comes, until the subscription is
    /// dropped; runs it at once, here, if the interrupt came already. It may run more than once.
    pub(crate) fn subscribe(&self, wake: impl Fn() + Send + 'static) -> Subscription<'_> {
        let id = {
            let mut w = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
            let id = w.next_id;
            w.next_id += 1;
            w.list.push((id, Box::new(wake)));
            id
        };
        // After the waker is in the list: an interrupt that set the flag before this line has
        // its waker run here, one after it finds the waker in the list.
        if self.is_set() {
            let w = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, wake)) = w.list.iter().find(|(i, _)| *i == id) {
                wake();
            }
        }
        Subscription {
            interrupt: self,
            id,
        }
    }

    /// Sets the flag and runs the wakers, as Ctrl-C does (for tests).
    #[cfg(test)]
    pub(crate) fn fire(&self) {
        self.flag.store(true, Ordering::SeqCst);
        run_wakers(&self.wakers);
    }
}

/// Whether SIGINT is ignored (its disposition is `SIG_IGN`, inherited across `exec`).
fn sigint_ignored() -> io::Result<bool> {
    // SAFETY: sigaction(2) with a null new action only reads the current one into `old`, a
    // zeroed `sigaction` that lives across the call.
    let old = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        old
    };
    Ok(old.sa_sigaction == libc::SIG_IGN)
}

/// Runs every waker (see the module docs).
fn run_wakers(wakers: &Mutex<Wakers>) {
    let w = wakers.lock().unwrap_or_else(PoisonError::into_inner);
    for (_, wake) in &w.list {
        // A panicking waker must not end the watcher thread: every later Ctrl-C would wake
        // nobody. Its message went to stderr through the panic hook.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(wake));
    }
}

/// A waker subscribed with [`Interrupt::subscribe`]; dropping it removes the waker.
pub(crate) struct Subscription<'a> {
    interrupt: &'a Interrupt,
    id: u64,
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut w = self
            .interrupt
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        w.list.retain(|(i, _)| *i != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn wakers_run_when_it_fires_and_not_after_their_subscription_is_dropped() {
        let i = Interrupt::never();
        let (tx, rx) = mpsc::channel();
        let kept = i.subscribe({
            let tx = tx.clone();
            move || tx.send("kept").unwrap()
        });
        let dropped = i.subscribe(move || tx.send("dropped").unwrap());
        drop(dropped);
        assert!(!i.is_set());
        assert!(rx.try_recv().is_err());
        i.fire();
        assert!(i.is_set());
        assert_eq!(rx.try_recv(), Ok("kept"));
        assert!(rx.try_recv().is_err());
        drop(kept);
    }

    #[test]
    fn a_subscription_after_the_interrupt_wakes_at_once() {
        let i = Interrupt::never();
        i.fire();
        let (tx, rx) = mpsc::channel();
        let _s = i.subscribe(move || tx.send(()).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(()));
    }

    #[test]
    fn a_panicking_waker_does_not_stop_the_others() {
        let i = Interrupt::never();
        let (tx, rx) = mpsc::channel();
        let _a = i.subscribe(|| panic!("a waker that panics"));
        let _b = i.subscribe(move || tx.send(()).unwrap());
        i.fire();
        assert_eq!(rx.try_recv(), Ok(()));
        // And again, on a second Ctrl-C.
        i.fire();
        assert_eq!(rx.try_recv(), Ok(()));
    }
}
