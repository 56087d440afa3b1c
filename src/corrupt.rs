//! Test hooks: a task corrupts its own worker's shared state, as a buggy or hostile worker would.
//!
//! Built only for the crate's unit tests (`cfg(test)`), so these unsafe hooks are never part of
//! the public API; the tests below show that the parent treats everything a worker writes as
//! untrusted input (see `pool::dispatch`): a corrupted worker's tasks fail with
//! [`Error::WorkerCorrupted`](crate::Error::WorkerCorrupted), it is replaced, and the pool serves
//! on.

#![allow(clippy::disallowed_types)] // a process-local pointer to the control segment

use std::sync::atomic::{AtomicPtr, Ordering as StdOrdering};

use crate::shm::control::Control;
use crate::shm::ring::{Descriptor, RingMem};

/// The control segment, in a worker (null elsewhere).
static CONTROL: AtomicPtr<Control> = AtomicPtr::new(std::ptr::null_mut());

/// Records the control segment (called in `worker_main`, once, before any task runs).
pub(crate) fn attach(ctl: &Control) {
    // Relaxed: written once before any task of this single-threaded process reads it.
    CONTROL.store(std::ptr::from_ref(ctl).cast_mut(), StdOrdering::Relaxed);
}

/// What to overwrite in the calling worker's seat.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scribble {
    /// The task ring's consumer position (`head`), which tells the parent what a dead worker took.
    TaskHead(u64),
    /// The result ring's producer position (`tail`).
    ResultTail(u64),
    /// `result_freed` (the parent's word; a replacement adopts it as its arena head).
    ResultFreed(u64),
    /// Publishes a result for the running task with this place and status.
    ForgedResult {
        /// Offset in the result arena.
        offset: u64,
        /// Length.
        len: u64,
        /// The arena position the parent should free up to, as an offset (wrapping) from
        /// the current `result_freed`.
        arena_end: u64,
        /// `STATUS_*`.
        status: u32,
    },
    /// Publishes a result for the running task that is in a segment of its own (`bigpayload`):
    /// `vec![7u8; bytes]` as a byte vector, in a memfd sealed as a worker should seal it or not
    /// sealed at all, announced as `announced` bytes long.
    SegmentResult {
        /// Length of the byte vector in the segment.
        bytes: usize,
        /// The length the descriptor announces (the true encoded length is `bytes` plus its
        /// varint).
        announced: u64,
        /// Whether to seal the memfd (fully, or only against shrinking when `reused`).
        sealed: bool,
        /// Announce it as the worker's reused result segment (`FLAG_RESULT_REUSED`).
        reused: bool,
        /// Write the encoding at offset 0, with no header, instead of where it belongs
        /// (`bigpayload`, "Layout").
        at_zero: bool,
        /// Write only the header and the byte vector's length prefix, leaving its bytes (zeros,
        /// not sevens) a hole of the sparse memfd (`bigpayload`, "Holes").
        sparse: bool,
    },
    /// Writes `count` pseudo-random 8-byte values (from `seed`) at pseudo-random places of the
    /// seat's two rings and its result arena.
    Random {
        /// Seed of the generator (splitmix64).
        seed: u64,
        /// How many words to write.
        count: usize,
    },
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `what` into the calling worker's seat; `false` outside a pool worker.
///
/// # Safety
///
/// Only for tests: it breaks the pool's protocol on purpose. Call it only from a task, and expect
/// its worker to be killed.
pub(crate) unsafe fn scribble(what: Scribble) -> bool {
    let Some(me) = crate::current_worker() else {
        return false;
    };
    // Relaxed: set before any task ran in this process.
    let ctl = CONTROL.load(StdOrdering::Relaxed);
    if ctl.is_null() {
        return false;
    }
    // SAFETY: set from the live control segment in `worker_main`; it stays mapped for the
    // worker's life.
    let ctl = unsafe { &*ctl };
    let seat = ctl.seat(me.index());
    match what {
        Scribble::TaskHead(v) => seat.tasks.force_consumed(v),
        Scribble::ResultTail(v) => seat.results.force_produced(v),
        Scribble::ResultFreed(v) => seat.result_freed.store(v, crate::sync::Ordering::Release),
        Scribble::ForgedResult {
            offset,
            len,
            arena_end,
            status,
        } => {
            // The running task is the last one this worker popped.
            let running = seat.tasks.consumed().wrapping_sub(1);
            // SAFETY: a slot of our own task ring, which we (its consumer) read after the
            // parent published it.
            let task_id = unsafe { seat.tasks.slot_ptr(running).read() }.task_id;
            let tail = seat.results.produced();
            let arena_end = seat
                .result_freed
                .load(crate::sync::Ordering::Acquire)
                .wrapping_add(arena_end);
            let d = Descriptor {
                task_id,
                offset,
                len,
                arena_end,
                status,
                ..Descriptor::default()
            };
            // SAFETY: slot `tail` of our own result ring is the next one we would publish.
            unsafe { seat.results.slot_ptr(tail).write(d) };
            seat.results.force_produced(tail + 1);
            ctl.header().collector.notify();
        }
        Scribble::SegmentResult {
            bytes,
            announced,
            sealed,
            reused,
            at_zero,
            sparse,
        } => {
            let mut encoded = Vec::new();
            crate::encoding::payload::write_bytes(&vec![7u8; bytes], &mut encoded);
            // Only the length prefix: the zeros after it are the hole.
            let written = if sparse {
                crate::encoding::payload::varint(bytes as u64, &mut [0; 10])
            } else {
                encoded.len()
            };
            let fd = nix::sys::memfd::memfd_create(
                if reused {
                    "shmpool-result"
                } else {
                    "shmpool-payload"
                },
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC
                    | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
            )
            .expect("memfd");
            let file = std::fs::File::from(fd);
            let at = crate::encoding::bigpayload::ENCODING_AT;
            file.set_len((at + encoded.len()) as u64).expect("size");
            if at_zero {
                // The encoding where it was before segments had a header, in a segment as
                // large as the right layout needs.
                std::os::unix::fs::FileExt::write_all_at(&file, &encoded, 0).expect("write");
            } else {
                crate::encoding::bigpayload::write_layout(&file, &[], &encoded[..written])
                    .expect("write");
                // The header agrees with the descriptor, as a worker that lies would make it:
                // what is tested is the announced length.
                std::os::unix::fs::FileExt::write_all_at(&file, &announced.to_le_bytes(), 8)
                    .expect("write");
            }
            if sealed {
                let seals = if reused {
                    libc::F_SEAL_SHRINK
                } else {
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL
                };
                // SAFETY: fcntl(F_ADD_SEALS) on the memfd just made, which nothing maps.
                let rc = unsafe {
                    libc::fcntl(
                        std::os::fd::AsRawFd::as_raw_fd(&file),
                        libc::F_ADD_SEALS,
                        seals,
                    )
                };
                assert_eq!(rc, 0);
            }
            let fd = std::os::fd::OwnedFd::from(file);
            let running = seat.tasks.consumed().wrapping_sub(1);
            // SAFETY: a slot of our own task ring, which we (its consumer) read after the
            // parent published it.
            let task_id = unsafe { seat.tasks.slot_ptr(running).read() }.task_id;
            crate::shm::channel::send_result(task_id, &fd).expect("send the segment");
            let tail = seat.results.produced();
            let d = Descriptor {
                task_id,
                arena_end: seat.result_freed.load(crate::sync::Ordering::Acquire),
                flags: if reused {
                    crate::encoding::bigpayload::FLAG_RESULT_SEGMENT
                        | crate::encoding::bigpayload::FLAG_RESULT_REUSED
                } else {
                    crate::encoding::bigpayload::FLAG_RESULT_SEGMENT
                },
                reserved: announced,
                ..Descriptor::default()
            };
            // SAFETY: slot `tail` of our own result ring is the next one we would publish.
            unsafe { seat.results.slot_ptr(tail).write(d) };
            seat.results.force_produced(tail + 1);
            ctl.header().collector.notify();
        }
        Scribble::Random { seed, count } => {
            let mut state = seed;
            let rings = [
                std::ptr::from_ref(&seat.tasks),
                std::ptr::from_ref(&seat.results),
            ];
            let ring_words = size_of::<RingMem>() / 8;
            let arena_words = ctl.arena_cap() / 8;
            for _ in 0..count {
                let value = match splitmix(&mut state) % 4 {
                    // Small and edge values hit the checks more often than uniform ones.
                    0 => splitmix(&mut state) % 256,
                    1 => u64::MAX - splitmix(&mut state) % 256,
                    _ => splitmix(&mut state),
                };
                let pick = splitmix(&mut state);
                let target: *mut u64 = match pick % 3 {
                    0 | 1 => {
                        let ring = rings[(pick % 2) as usize].cast::<u64>().cast_mut();
                        // SAFETY: a word inside the ring (`ring_words` whole words of it).
                        unsafe { ring.add((splitmix(&mut state) as usize) % ring_words) }
                    }
                    _ => {
                        let base = ctl.result_arena(me.index()).cast::<u64>();
                        // SAFETY: a word inside our result arena (`arena_cap` is page aligned).
                        unsafe { base.add((splitmix(&mut state) as usize) % arena_words) }
                    }
                };
                // SAFETY: `target` is an aligned word of our own seat's shared memory; writing
                // garbage there is the point (the parent must survive it).
                unsafe { target.write_volatile(value) };
            }
            ctl.header().collector.notify();
        }
    }
    true
}

// The integration tests' helpers (the watchdog, `no_core_dumps`).
#[path = "../tests/common/mod.rs"]
mod common;

mod tests {
    //! A real worker corrupts its own rings and arena through [`scribble`]: the parent fails
    //! that worker's tasks with `WorkerCorrupted`, replaces it, and serves on.

    use super::{Scribble, scribble};
    use crate::{Error, Pool};

    use super::common;

    fn double(x: u64) -> u64 {
        x * 2
    }

    fn park() -> ! {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    /// Each targeted case: what the task writes, then how it goes on.
    fn targeted(case: u32) -> u64 {
        common::no_core_dumps();
        let forged = |offset, len, arena_end, status| Scribble::ForgedResult {
            offset,
            len,
            arena_end,
            status,
        };
        // SAFETY: the point of the test: this worker breaks the protocol and is killed.
        unsafe {
            match case {
                // A result outside the arena.
                0 => assert!(scribble(forged(u64::MAX - 3, 8, 0, 0))),
                // An arena position far ahead (every replacement would adopt it as its head).
                1 => assert!(scribble(forged(0, 0, 1 << 40, 0))),
                // A status no worker writes (in a valid place).
                2 => assert!(scribble(forged(0, 0, 1, 77))),
                // An arena position that goes back.
                6 => assert!(scribble(forged(0, 0, u64::MAX, 0))),
                // A result ring position out of range.
                3 => assert!(scribble(Scribble::ResultTail(u64::MAX))),
                // The task ring's position moved back, then death: the replacement must not
                // run delivered tasks again.
                4 => {
                    assert!(scribble(Scribble::TaskHead(0)));
                    std::process::abort();
                }
                // `result_freed` scribbled: the parent ignores it (it keeps its own copy) and
                // restores it before a replacement starts.
                5 => {
                    assert!(scribble(Scribble::ResultFreed(u64::MAX - 5)));
                    return 5;
                }
                _ => std::process::abort(),
            }
        }
        park()
    }

    fn corrupted_detail(r: Result<u64, Error>) -> String {
        match r {
            Err(Error::WorkerCorrupted { worker: 0, detail }) => detail,
            other => panic!("expected WorkerCorrupted, got {other:?}"),
        }
    }

    #[test]
    fn targeted_corruption_fails_the_workers_tasks_and_the_pool_serves_on() {
        let _w = common::arm(120);
        let pool = Pool::new(1).unwrap();
        let mut pids = vec![pool.worker_pids()[0]];
        let mut expect_new_worker = |pool: &Pool| {
            // The replacement serves the next task (its pid is known once it answered).
            assert_eq!(pool.apply(double, 21).unwrap(), 42);
            let pid = pool.worker_pids()[0];
            assert!(!pids.contains(&pid), "worker {pid} was not replaced");
            pids.push(pid);
        };
        // Some results first, so positions are not at 0.
        for i in 0..10 {
            assert_eq!(pool.apply(double, i).unwrap(), 2 * i);
        }
        let d = corrupted_detail(pool.apply(targeted, 0));
        assert!(d.contains("outside the arena"), "{d}");
        expect_new_worker(&pool);
        let d = corrupted_detail(pool.apply(targeted, 1));
        assert!(d.contains("arena position"), "{d}");
        expect_new_worker(&pool);
        let d = corrupted_detail(pool.apply(targeted, 6));
        assert!(d.contains("arena position"), "{d}");
        expect_new_worker(&pool);
        let d = corrupted_detail(pool.apply(targeted, 2));
        assert!(d.contains("unknown status 77"), "{d}");
        expect_new_worker(&pool);
        let d = corrupted_detail(pool.apply(targeted, 3));
        assert!(d.contains("ring position"), "{d}");
        expect_new_worker(&pool);
        // Tasks queued behind the one that rewinds the ring run once each, on the replacement.
        let rewinding = pool.apply_async(targeted, 4).unwrap();
        let behind: Vec<_> = (0..8u64)
            .map(|i| pool.apply_async(double, i).unwrap())
            .collect();
        let d = corrupted_detail(rewinding.get());
        assert!(d.contains("task ring position"), "{d}");
        for (i, r) in behind.into_iter().enumerate() {
            match r.get() {
                Ok(v) => assert_eq!(v, 2 * i as u64),
                // Those already in the broken ring fail with it; none runs twice.
                Err(e) => assert!(matches!(e, Error::WorkerCorrupted { .. }), "{e:?}"),
            }
        }
        expect_new_worker(&pool);
        // A scribbled `result_freed` changes nothing, not even for the next worker.
        assert_eq!(pool.apply(targeted, 5).unwrap(), 5);
        assert!(matches!(
            pool.apply(targeted, 99),
            Err(Error::WorkerDied { .. })
        ));
        expect_new_worker(&pool);
        assert_eq!(pool.map(double, 0..5000u64).unwrap().len(), 5000);
        pool.close();
        pool.join().unwrap();
    }

    /// Forges a result in a segment: `(bytes, announced extra, sealed)`, which answers the task;
    /// then the worker exits (as one at its `max_tasks` does), so the next task goes to its
    /// replacement whether or not the parent took the result.
    fn segment_result(case: (usize, i64, bool)) -> Vec<u8> {
        forged_segment_result((case.0, case.1, case.2, false))
    }

    /// As [`segment_result`], `(bytes, announced extra, sealed, reused)`.
    fn forged_segment_result(case: (usize, i64, bool, bool)) -> Vec<u8> {
        forge(case, false, false)
    }

    /// As [`forged_segment_result`] for 5000 bytes, sealed as it should be, announced right,
    /// but with the encoding at offset 0 and no header (`bigpayload`, "Layout").
    fn misplaced_segment_result(reused: bool) -> Vec<u8> {
        forge((5000, 0, true, reused), true, false)
    }

    /// As [`forged_segment_result`] for 4 MiB of zeros, sealed as it should be, announced
    /// right, but sparse: only the header and the length prefix written (`bigpayload`,
    /// "Holes"), so reading it would make the parent allocate pages its worker never did.
    fn sparse_segment_result(reused: bool) -> Vec<u8> {
        forge((4 << 20, 0, true, reused), false, true)
    }

    fn forge(case: (usize, i64, bool, bool), at_zero: bool, sparse: bool) -> Vec<u8> {
        common::no_core_dumps();
        let (bytes, extra, sealed, reused) = case;
        let encoded = bytes + crate::encoding::payload::varint(bytes as u64, &mut [0; 10]);
        // SAFETY: the point of the test: this worker publishes a result of its own making.
        unsafe {
            assert!(scribble(Scribble::SegmentResult {
                bytes,
                announced: (encoded as i64 + extra) as u64,
                sealed,
                reused,
                at_zero,
                sparse,
            }));
            // SAFETY: _exit ends this worker process at once; nothing of it is needed again.
            libc::_exit(0)
        }
    }

    #[test]
    fn a_result_segment_that_is_not_sealed_or_shorter_than_announced_is_refused() {
        let _w = common::arm(120);
        let pool = Pool::new(1).unwrap();
        let first = pool.worker_pids()[0];
        // Sealed and as long as announced: accepted (the worker is parked, so it is this forged
        // result that answers), and read whole.
        let v = pool.apply(segment_result, (5000, 0, true)).unwrap();
        assert!(v.len() == 5000 && v.iter().all(|&b| b == 7));
        // Not sealed: the worker could still write it while we read, so it is refused.
        let e = pool.apply(segment_result, (5000, 0, false)).unwrap_err();
        match e {
            Error::WorkerCorrupted { worker: 0, detail } => {
                assert!(detail.contains("not sealed"), "{detail}")
            }
            other => panic!("expected WorkerCorrupted, got {other:?}"),
        }
        // Sealed and long enough, but the encoding at offset 0 with no header: refused.
        let e = pool.apply(misplaced_segment_result, false).unwrap_err();
        match e {
            Error::WorkerCorrupted { worker: 0, detail } => {
                assert!(detail.contains("no payload header"), "{detail}")
            }
            other => panic!("expected WorkerCorrupted, got {other:?}"),
        }
        // Sealed and announced right, but sparse: refused before it is mapped.
        match pool.apply(sparse_segment_result, false) {
            Err(Error::WorkerCorrupted { worker: 0, detail }) => {
                assert!(detail.contains("holes"), "{detail}")
            }
            other => panic!("expected WorkerCorrupted, got {:?}", other.map(|v| v.len())),
        }
        // Sealed but announced longer than it is.
        let e = pool.apply(segment_result, (5000, 1, true)).unwrap_err();
        match e {
            Error::WorkerCorrupted { worker: 0, detail } => {
                assert!(detail.contains("announced"), "{detail}")
            }
            other => panic!("expected WorkerCorrupted, got {other:?}"),
        }
        // Announced lengths whose segment size (`ENCODING_AT + len`) overflows or passes any
        // file: u64::MAX, 2^64 - 1024 (the sum wraps to 0), 2^64 - 1025 (the sum is
        // usize::MAX). The 5000 bytes encode in 5002.
        for extra in [-5003, -5002 - 1024, -5002 - 1025] {
            let e = pool.apply(segment_result, (5000, extra, true)).unwrap_err();
            match e {
                Error::WorkerCorrupted { worker: 0, detail } => {
                    assert!(detail.contains("announced"), "{extra}: {detail}")
                }
                other => panic!("{extra}: expected WorkerCorrupted, got {other:?}"),
            }
        }
        // Sealed, announced shorter than the byte string in it: the string runs past the
        // announced end, a codec error for that task only.
        assert!(matches!(
            pool.apply(segment_result, (5000, -1, true)),
            Err(Error::Codec { .. })
        ));
        // The refused ones cost their workers; the pool serves on.
        assert_eq!(pool.apply(double, 4).unwrap(), 8);
        assert!(!pool.worker_pids().contains(&first));
        pool.close();
        pool.join().unwrap();
    }

    #[test]
    fn a_reused_result_segment_that_can_shrink_or_lies_about_lengths_is_refused() {
        let _w = common::arm(120);
        let pool = Pool::new(1).unwrap();
        let first = pool.worker_pids()[0];
        let corrupted = |e: Error, what: &str| match e {
            Error::WorkerCorrupted { worker: 0, detail } => {
                assert!(detail.contains(what), "{detail}")
            }
            other => panic!("expected WorkerCorrupted, got {other:?}"),
        };
        // Sealed against shrinking and as long as announced: copied out whole, twice (the
        // second from a segment of another inode: mapped anew).
        for _ in 0..2 {
            let v = pool
                .apply(forged_segment_result, (5000, 0, true, true))
                .unwrap();
            assert!(v.len() == 5000 && v.iter().all(|&b| b == 7));
        }
        // A result type that is not a byte vector (the same bytes are a `String`'s encoding)
        // gets a private copy, decoded as usual.
        let u: String = pool
            .apply(
                |c: (usize, i64, bool, bool)| -> String {
                    forged_segment_result(c);
                    unreachable!("the forger exits")
                },
                (300, 0, true, true),
            )
            .unwrap();
        assert_eq!(u, "\u{7}".repeat(300));
        // Not sealed against shrinking: the worker could take pages away under our copy.
        corrupted(
            pool.apply(forged_segment_result, (5000, 0, false, true))
                .unwrap_err(),
            "can shrink",
        );
        // Announced longer than the segment.
        corrupted(
            pool.apply(forged_segment_result, (5000, 1, true, true))
                .unwrap_err(),
            "announced",
        );
        // The encoding at offset 0 with no header.
        corrupted(
            pool.apply(misplaced_segment_result, true).unwrap_err(),
            "no payload header",
        );
        // Sparse: refused before it is mapped.
        match pool.apply(sparse_segment_result, true) {
            Err(e) => corrupted(e, "holes"),
            Ok(v) => panic!("a sparse segment of {} bytes was read", v.len()),
        }
        // Lengths whose segment size overflows (see the sealed test): refused by the bound.
        for extra in [-5003, -5002 - 1024, -5002 - 1025] {
            corrupted(
                pool.apply(forged_segment_result, (5000, extra, true, true))
                    .unwrap_err(),
                "at most",
            );
        }
        // Announced shorter than the byte string's own length: a codec error, no read past
        // the announced end.
        match pool.apply(forged_segment_result, (5000, -1, true, true)) {
            Err(Error::Codec { detail }) => assert!(detail.contains("only"), "{detail}"),
            other => panic!("expected a codec error, got {other:?}"),
        }
        assert_eq!(pool.apply(double, 4).unwrap(), 8);
        assert!(!pool.worker_pids().contains(&first));
        pool.close();
        pool.join().unwrap();
        // Longer than a worker ever writes to its reused segment (16 arenas): refused before
        // the parent maps it, whatever the segment was grown to.
        let pool = Pool::builder()
            .processes(1)
            .arena_size(1 << 16)
            .build()
            .unwrap();
        corrupted(
            pool.apply(forged_segment_result, (17 << 16, 0, true, true))
                .unwrap_err(),
            "at most",
        );
        assert_eq!(pool.apply(double, 4).unwrap(), 8);
    }

    fn random(seed: u64) -> u64 {
        common::no_core_dumps();
        // SAFETY: the point of the test: this worker breaks the protocol.
        unsafe { assert!(scribble(Scribble::Random { seed, count: 4 })) };
        seed
    }

    #[test]
    fn random_corruption_never_hangs_the_pool_or_reaches_other_workers() {
        let _w = common::arm(300);
        let pool = Pool::new(2).unwrap();
        for seed in 0..40u64 {
            let bad = pool.apply_async(random, seed).unwrap();
            let rest: Vec<_> = (0..6u64)
                .map(|i| pool.apply_async(double, i).unwrap())
                .collect();
            // The scribbler's result, and those of the tasks queued behind it: any answer (the
            // damage may go unnoticed, be caught as corruption, or kill the worker), never a
            // hang, and never a wrong value passed off as right.
            for r in std::iter::once(bad).chain(rest) {
                match r.get() {
                    Ok(_) => {}
                    Err(
                        Error::WorkerCorrupted { .. }
                        | Error::WorkerDied { .. }
                        | Error::Codec { .. }
                        | Error::TaskPanicked { .. },
                    ) => {}
                    Err(e) => panic!("seed {seed}: {e:?}"),
                }
            }
            // Whatever broke, the pool serves on.
            assert_eq!(pool.apply(double, seed).unwrap(), 2 * seed, "seed {seed}");
        }
        assert_eq!(pool.map(double, 0..5000u64).unwrap().len(), 5000);
        pool.close();
        pool.join().unwrap();
    }
}
