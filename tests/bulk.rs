//! Bulk data without copies: `SharedVec`, `MappedFile`, `map_chunks`, `imap_chunks`,
//! `imap_chunks_unordered`, `map_chunks_into` and `imap_reader`: results equal a single-process
//! computation, workers' slices lie in shared mappings, and errors are answers.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use shmpool::{Error, MappedFile, Pool, SharedVec};

/// FNV-1a over a chunk's bytes: order-sensitive, so a wrong or shifted chunk changes it.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fnv_u64(items: &[u64]) -> u64 {
    fnv(bytemuck::cast_slice(items))
}

use common::noise;

/// A temp file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with(name: &str, bytes: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("shmpool-bulk-test-{name}-{}", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `/proc/self/maps` line of the mapping that holds `addr` (run in a worker).
fn mapping_of(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    for line in maps.lines() {
        let Some((range, _)) = line.split_once(' ') else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        if (lo..hi).contains(&addr) {
            return line.to_string();
        }
    }
    String::new()
}

const CHUNK_LENS: [usize; 9] = [1, 7, 1000, 4096, 4097, 65_536, 99_999, 100_003, 1_000_000];

#[test]
fn map_chunks_over_a_shared_vec_equals_a_single_process_for_every_chunk_length() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let v: SharedVec<u64> = (0..100_003u64)
        .map(|x| x.wrapping_mul(0x9e37_79b9))
        .collect();
    assert_eq!(v.len(), 100_003);
    for cl in CHUNK_LENS {
        // Chunk length 1 would make 100 003 tasks: use a 2 000-element prefix for it.
        let small;
        let input = if cl == 1 {
            small = SharedVec::from_slice(&v[..2000]).unwrap();
            &small
        } else {
            &v
        };
        let got = pool.map_chunks(input, cl, fnv_u64).unwrap();
        let want: Vec<u64> = input.chunks(cl).map(fnv_u64).collect();
        assert_eq!(got, want, "chunk length {cl}");
    }
}

#[test]
fn map_chunks_over_a_mapped_file_equals_a_single_process_for_every_chunk_length() {
    let _w = common::arm(120);
    let data = noise(300_001, 7);
    let tmp = TempFile::with("map", &data);
    // SAFETY: this test made the file and nothing modifies it while it is mapped.
    let file = unsafe { MappedFile::open(&tmp.0) }.unwrap();
    assert_eq!(file.len(), data.len());
    assert_eq!(file.as_bytes(), &data[..]);
    let pool = Pool::new(2).unwrap();
    for cl in [
        100, 4095, 4096, 5000, 65_536, 300_000, 300_001, 300_002, 10_000_000,
    ] {
        let got = pool.map_chunks(&file, cl, fnv).unwrap();
        let want: Vec<u64> = data.chunks(cl).map(fnv).collect();
        assert_eq!(got, want, "chunk length {cl}");
    }
}

#[test]
fn imap_chunks_is_ordered_and_imap_chunks_unordered_yields_every_chunk_once() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let data = noise(1_000_000, 3);
    let v = SharedVec::from_slice(&data).unwrap();
    let tmp = TempFile::with("imap", &data);
    // SAFETY: this test made the file and nothing modifies it while it is mapped.
    let file = unsafe { MappedFile::open(&tmp.0) }.unwrap();
    for cl in [1000, 4096, 12_345, 999_999, 1_000_000, 2_000_000] {
        let want: Vec<u64> = data.chunks(cl).map(fnv).collect();
        let ordered: Vec<u64> = pool
            .imap_chunks(&v, cl, fnv)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ordered, want, "imap_chunks, chunk length {cl}");
        let from_file: Vec<u64> = pool
            .imap_chunks(&file, cl, fnv)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            from_file, want,
            "imap_chunks over the file, chunk length {cl}"
        );
        // As multisets: a duplicate or a lost chunk shows.
        let mut unordered: Vec<u64> = pool
            .imap_chunks_unordered(&v, cl, fnv)
            .collect::<Result<_, _>>()
            .unwrap();
        let mut want_sorted = want.clone();
        unordered.sort_unstable();
        want_sorted.sort_unstable();
        assert_eq!(
            unordered, want_sorted,
            "imap_chunks_unordered, chunk length {cl}"
        );
    }
}

#[test]
fn an_abandoned_imap_chunks_waits_for_its_chunks_and_the_pool_goes_on() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let mut v: SharedVec<u64> = (0..100_000u64).collect();
    {
        let mut it = pool.imap_chunks(&v, 1000, |s: &[u64]| s.iter().sum::<u64>());
        assert_eq!(it.next().unwrap().unwrap(), (0..1000u64).sum::<u64>());
    }
    // The borrow ended with no chunk in flight: writing is allowed, and workers see it.
    v.fill(1);
    assert_eq!(
        pool.map_chunks(&v, 30_000, |s: &[u64]| s.iter().sum::<u64>())
            .unwrap(),
        [30_000, 30_000, 30_000, 10_000]
    );
}

#[test]
fn a_workers_slice_lies_in_the_shared_memfd_mapping_not_a_copy() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let v: SharedVec<u64> = (0..50_000u64).collect();
    let lines = pool
        .map_chunks(&v, 10_000, |s: &[u64]| mapping_of(s.as_ptr() as usize))
        .unwrap();
    assert_eq!(lines.len(), 5);
    for line in lines {
        let perms = line.split_whitespace().nth(1).unwrap_or("");
        assert!(perms.ends_with('s'), "not a shared mapping: {line:?}");
        assert!(
            line.contains("/memfd:shmpool-vec"),
            "not our memfd: {line:?}"
        );
    }
}

#[test]
fn a_workers_slice_of_a_mapped_file_lies_in_a_shared_mapping_of_that_file() {
    let _w = common::arm(60);
    let tmp = TempFile::with("maps", &noise(100_000, 5));
    // SAFETY: this test made the file and nothing modifies it while it is mapped.
    let file = unsafe { MappedFile::open(&tmp.0) }.unwrap();
    let pool = Pool::new(2).unwrap();
    let lines = pool
        .map_chunks(&file, 30_000, |s: &[u8]| mapping_of(s.as_ptr() as usize))
        .unwrap();
    assert_eq!(lines.len(), 4);
    let name = tmp.0.file_name().unwrap().to_string_lossy().into_owned();
    for line in lines {
        let perms = line.split_whitespace().nth(1).unwrap_or("");
        assert!(perms.starts_with("r-") && perms.ends_with('s'), "{line:?}");
        assert!(line.contains(&name), "not a mapping of the file: {line:?}");
    }
}

#[test]
fn workers_see_the_parents_writes_between_calls_without_resending() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let mut v = SharedVec::<u32>::zeroed(40_000).unwrap();
    let sum = |s: &[u32]| s.iter().map(|&x| u64::from(x)).sum::<u64>();
    assert_eq!(pool.map_chunks(&v, 10_000, sum).unwrap(), [0, 0, 0, 0]);
    v[5] = 7;
    v[39_999] = 9;
    assert_eq!(pool.map_chunks(&v, 10_000, sum).unwrap(), [7, 0, 0, 9]);
    v.fill(1);
    assert_eq!(
        pool.map_chunks(&v, 10_000, sum).unwrap(),
        [10_000, 10_000, 10_000, 10_000]
    );
}

#[test]
fn map_chunks_into_writes_every_output_element_in_place() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let input: SharedVec<u32> = (0..123_457u32).collect();
    for cl in [1000, 4096, 5001, 123_456, 123_457, 500_000] {
        let mut out = SharedVec::<u64>::zeroed(input.len()).unwrap();
        pool.map_chunks_into(&input, &mut out, cl, |src: &[u32], dst: &mut [u64]| {
            assert_eq!(src.len(), dst.len());
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = u64::from(s) * 3 + 1;
            }
        })
        .unwrap();
        for (i, (&o, &x)) in out.iter().zip(input.iter()).enumerate() {
            assert_eq!(o, u64::from(x) * 3 + 1, "element {i}, chunk length {cl}");
        }
    }
}

#[test]
fn map_chunks_into_from_a_mapped_file_into_a_narrower_type() {
    let _w = common::arm(60);
    let data = noise(70_001, 11);
    let tmp = TempFile::with("into", &data);
    // SAFETY: this test made the file and nothing modifies it while it is mapped.
    let file = unsafe { MappedFile::open(&tmp.0) }.unwrap();
    let pool = Pool::new(2).unwrap();
    let mut out = SharedVec::<u16>::zeroed(file.len()).unwrap();
    pool.map_chunks_into(&file, &mut out, 6000, |src: &[u8], dst: &mut [u16]| {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = u16::from(s) << 4;
        }
    })
    .unwrap();
    for (i, (&o, &b)) in out.iter().zip(&data).enumerate() {
        assert_eq!(o, u16::from(b) << 4, "element {i}");
    }
}

#[test]
fn imap_reader_over_an_in_memory_reader_equals_a_single_process() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let data = noise(1_000_003, 13);
    for cb in [1, 4096, 10_000, 65_536, 1_000_003, 2_000_000] {
        let input: &[u8] = if cb == 1 { &data[..3000] } else { &data };
        let got: Vec<u64> = pool
            .imap_reader(input, cb, fnv)
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<u64> = input.chunks(cb).map(fnv).collect();
        assert_eq!(got, want, "chunk bytes {cb}");
    }
}

/// A reader that returns at most 777 bytes per call (like a pipe), then an error.
struct Trickle<'a> {
    data: &'a [u8],
    fail_at_end: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.data.is_empty() && self.fail_at_end {
            return Err(std::io::Error::other("the stream broke"));
        }
        let n = buf.len().min(777).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn imap_reader_fills_whole_chunks_from_short_reads_and_yields_a_read_error_last() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let data = noise(100_000, 17);
    let got: Vec<u64> = pool
        .imap_reader(
            Trickle {
                data: &data,
                fail_at_end: false,
            },
            8192,
            fnv,
        )
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<u64> = data.chunks(8192).map(fnv).collect();
    assert_eq!(got, want);

    let items: Vec<_> = pool
        .imap_reader(
            Trickle {
                data: &data,
                fail_at_end: true,
            },
            30_000,
            |s: &[u8]| s.len(),
        )
        .collect();
    // 100 000 bytes = 3 full chunks; the 10 000 bytes before the error are lost with it.
    assert_eq!(items.len(), 4);
    for r in &items[..3] {
        assert_eq!(*r.as_ref().unwrap(), 30_000);
    }
    let e = items[3].as_ref().unwrap_err();
    assert!(matches!(e, Error::Os { op: "read", .. }), "{e:?}");
    assert_eq!(e.to_string(), "read failed");
    // The OS error is the source, printed once by a `{:#}` chain.
    let source = std::error::Error::source(&e).expect("a source");
    assert_eq!(source.to_string(), "the stream broke");
}

#[test]
fn imap_reader_over_a_child_process_pipe_equals_a_single_process() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let mut child = Command::new("seq")
        .arg("300000")
        .stdout(Stdio::piped())
        .spawn()
        .expect("run seq");
    let out = child.stdout.take().unwrap();
    let got: Vec<u64> = pool
        .imap_reader(out, 65_536, fnv)
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let text: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    let want: Vec<u64> = text.as_bytes().chunks(65_536).map(fnv).collect();
    assert!(want.len() > 10);
    assert_eq!(got, want);
}

#[test]
fn imap_reader_through_a_pipe_written_by_another_thread_counts_every_byte() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let (mut rx, mut tx) = std::io::pipe().unwrap();
    let writer = std::thread::spawn(move || {
        let block = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            tx.write_all(&block).unwrap();
        }
    });
    let mut total = 0usize;
    let mut chunks = 0usize;
    for r in pool.imap_reader(&mut rx, 1 << 20, |s: &[u8]| {
        s.iter().filter(|&&b| b == b'a').count()
    }) {
        total += r.unwrap();
        chunks += 1;
    }
    writer.join().unwrap();
    assert_eq!((total, chunks), (64 << 20, 64));
}

#[test]
fn a_chunk_length_of_zero_is_an_error_everywhere() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let v = SharedVec::from_slice(&[1u8, 2, 3]).unwrap();
    let msg = "invalid argument: chunk length must be at least 1";
    let e = pool.map_chunks(&v, 0, |s: &[u8]| s.len()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }));
    assert_eq!(e.to_string(), msg);
    let mut out = SharedVec::<u8>::zeroed(3).unwrap();
    let e = pool
        .map_chunks_into(&v, &mut out, 0, |_: &[u8], _: &mut [u8]| {})
        .unwrap_err();
    assert_eq!(e.to_string(), msg);
    let items: Vec<_> = pool.imap_chunks(&v, 0, |s: &[u8]| s.len()).collect();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err().to_string(), msg);
    let items: Vec<_> = pool
        .imap_chunks_unordered(&v, 0, |s: &[u8]| s.len())
        .collect();
    assert_eq!(items[0].as_ref().unwrap_err().to_string(), msg);
    let items: Vec<_> = pool
        .imap_reader(&b"abc"[..], 0, |s: &[u8]| s.len())
        .collect();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err().to_string(), msg);
}

#[test]
fn empty_inputs_give_empty_results() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let v = SharedVec::<u64>::zeroed(0).unwrap();
    assert!(v.is_empty());
    assert_eq!(&v[..], &[] as &[u64]);
    assert!(
        pool.map_chunks(&v, 10, |s: &[u64]| s.len())
            .unwrap()
            .is_empty()
    );
    assert_eq!(pool.imap_chunks(&v, 10, |s: &[u64]| s.len()).count(), 0);
    let mut out = SharedVec::<u8>::zeroed(0).unwrap();
    pool.map_chunks_into(&v, &mut out, 10, |_: &[u64], _: &mut [u8]| {})
        .unwrap();
    let collected: SharedVec<u8> = std::iter::empty().collect();
    assert!(collected.is_empty());
    let tmp = TempFile::with("empty", b"");
    // SAFETY: this test made the file and nothing modifies it while it is mapped.
    let file = unsafe { MappedFile::open(&tmp.0) }.unwrap();
    assert!(file.is_empty());
    assert!(pool.map_chunks(&file, 10, fnv).unwrap().is_empty());
    assert_eq!(pool.imap_reader(std::io::empty(), 10, fnv).count(), 0);
}

#[test]
fn a_missing_file_and_a_directory_are_errors() {
    let missing = std::env::temp_dir().join("shmpool-bulk-test-no-such-file");
    // SAFETY: nothing gets mapped.
    let e = unsafe { MappedFile::open(&missing) }.unwrap_err();
    assert!(matches!(e, Error::Os { op: "open", .. }), "{e:?}");
    assert_eq!(e.to_string(), "open failed");
    let source = std::error::Error::source(&e).expect("a source");
    assert_eq!(source.to_string(), "No such file or directory (os error 2)");
    // SAFETY: nothing gets mapped.
    let e = unsafe { MappedFile::open(std::env::temp_dir()) }.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
}

#[test]
fn map_chunks_into_refuses_an_output_of_another_length() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let v = SharedVec::from_slice(&[1u8; 10]).unwrap();
    let mut out = SharedVec::<u8>::zeroed(9).unwrap();
    let e = pool
        .map_chunks_into(&v, &mut out, 4, |_: &[u8], _: &mut [u8]| {})
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: output has 9 elements, input 10"
    );
}

#[test]
fn a_panicking_chunk_fails_alone_and_map_chunks_returns_the_first_error() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let v: SharedVec<u32> = (0..1000).collect();
    let f = |s: &[u32]| {
        if s[0] == 300 || s[0] == 700 {
            panic!("bad chunk at {}", s[0]);
        }
        s.len()
    };
    let e = pool.map_chunks(&v, 100, f).unwrap_err();
    assert!(matches!(e, Error::TaskPanicked { .. }), "{e:?}");
    assert!(e.to_string().ends_with(": bad chunk at 300"), "{e}");
    let items: Vec<_> = pool.imap_chunks(&v, 100, f).collect();
    assert_eq!(items.len(), 10);
    for (i, r) in items.iter().enumerate() {
        match i {
            3 | 7 => assert!(
                r.as_ref()
                    .unwrap_err()
                    .to_string()
                    .ends_with(&format!(": bad chunk at {}", i * 100)),
                "{r:?}"
            ),
            _ => assert_eq!(*r.as_ref().unwrap(), 100),
        }
    }
    // The workers survived.
    assert_eq!(
        pool.map_chunks(&v, 500, |s: &[u32]| s.len()).unwrap(),
        [500, 500]
    );
}

#[test]
fn a_worker_that_dies_mid_chunk_fails_that_chunk_and_the_pool_goes_on() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let v: SharedVec<u32> = (0..1000).collect();
    let items: Vec<_> = pool
        .imap_chunks(&v, 100, |s: &[u32]| {
            if s[0] == 500 {
                common::no_core_dumps();
                std::process::abort();
            }
            s.len()
        })
        .collect();
    assert_eq!(items.len(), 10);
    for (i, r) in items.iter().enumerate() {
        if i == 5 {
            let e = r.as_ref().unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::WorkerDied {
                        signal: Some(6),
                        ..
                    }
                ),
                "{e:?}"
            );
        } else {
            assert_eq!(*r.as_ref().unwrap(), 100, "chunk {i}");
        }
    }
    // The replacement receives the segment again.
    assert_eq!(
        pool.map_chunks(&v, 250, |s: &[u32]| s.iter().sum::<u32>())
            .unwrap(),
        (0..4u32)
            .map(|k| (k * 250..(k + 1) * 250).sum::<u32>())
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_closed_pool_refuses_chunk_maps() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let v = SharedVec::from_slice(&[1u8; 10]).unwrap();
    pool.close();
    assert!(matches!(
        pool.map_chunks(&v, 4, |s: &[u8]| s.len()),
        Err(Error::PoolClosed)
    ));
    let items: Vec<_> = pool.imap_chunks(&v, 4, |s: &[u8]| s.len()).collect();
    assert!(matches!(items[..], [Err(Error::PoolClosed)]), "{items:?}");
    let items: Vec<_> = pool
        .imap_reader(&b"abc"[..], 4, |s: &[u8]| s.len())
        .collect();
    assert!(matches!(items[..], [Err(Error::PoolClosed)]), "{items:?}");
    pool.join().unwrap();
}

#[test]
fn shared_vec_collects_grows_and_derefs_like_a_slice() {
    let v: SharedVec<u64> = (0..100_000u64).filter(|x| x % 7 != 0).collect();
    let want: Vec<u64> = (0..100_000u64).filter(|x| x % 7 != 0).collect();
    assert_eq!(&v[..], &want[..]);
    let mut w = SharedVec::from_slice(&want).unwrap();
    w.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(w[0], 99_999);
    assert!(format!("{:?}", SharedVec::<u8>::zeroed(3).unwrap()).starts_with("SharedVec"));
}

#[test]
fn segments_made_after_the_pool_reach_the_workers_and_nothing_appears_in_dev_shm() {
    let _w = common::arm(60);
    let before = common::dev_shm();
    let pool = Pool::new(2).unwrap();
    // More rounds than a worker caches mappings (32), so eviction runs too.
    for round in 0..40u64 {
        let v: SharedVec<u64> = (0..10_000u64).map(|x| x + round).collect();
        let sums = pool
            .map_chunks(&v, 2_500, |s: &[u64]| s.iter().sum::<u64>())
            .unwrap();
        let want: Vec<u64> = v.chunks(2_500).map(|c| c.iter().sum()).collect();
        assert_eq!(sums, want, "round {round}");
    }
    assert_eq!(common::dev_shm(), before);
    drop(pool);
    assert_eq!(common::dev_shm(), before);
}

#[test]
fn imap_chunks_and_imap_reader_made_before_close_run_to_their_end_after_close() {
    let _w = common::arm(120);
    // As `imap`: Python's idiom `it = pool.imap(...); pool.close(); read it; pool.join()`. The
    // chunks submitted after `close` were refused, and the rest of the input was lost.
    let pool = Pool::new(2).unwrap();
    let data: Vec<u32> = (0..10_000).collect();
    let v = SharedVec::from_slice(&data).unwrap();
    let sum = |xs: &[u32]| xs.iter().map(|&x| u64::from(x)).sum::<u64>();
    let mut it = pool.imap_chunks(&v, 10, sum);
    let mut got: Vec<u64> = it.by_ref().take(3).map(Result::unwrap).collect();
    let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let mut reader = pool.imap_reader(&bytes[..], 1000, |b: &[u8]| b.len());
    let first = reader.next().unwrap().unwrap();
    pool.close();
    got.extend(it.map(Result::unwrap));
    let want: Vec<u64> = data.chunks(10).map(sum).collect();
    assert_eq!(got, want);
    let lens: Vec<usize> = reader.map(Result::unwrap).collect();
    assert_eq!(first + lens.iter().sum::<usize>(), bytes.len());
    pool.join().unwrap();
}

#[test]
fn map_chunks_with_more_chunks_than_its_window_keeps_every_result_and_the_first_error() {
    let _w = common::arm(120);
    // A chunk of one element: 1,000 (and 5,000) chunks, far more than the ~20 per worker a
    // chunk map keeps in flight, so most are submitted by completions of earlier ones.
    let pool = Pool::new(2).unwrap();
    let v: SharedVec<u32> = (0..1000).collect();
    let got = pool.map_chunks(&v, 1, |s: &[u32]| s[0] * 3).unwrap();
    assert_eq!(got, (0..1000).map(|x| x * 3).collect::<Vec<u32>>());
    let e = pool
        .map_chunks(&v, 1, |s: &[u32]| {
            if s[0] == 300 || s[0] == 700 {
                panic!("bad chunk at {}", s[0]);
            }
            s[0]
        })
        .unwrap_err();
    assert!(e.to_string().ends_with(": bad chunk at 300"), "{e}");
    let input: SharedVec<u32> = (0..5000).collect();
    let mut out = SharedVec::<u64>::zeroed(5000).unwrap();
    pool.map_chunks_into(&input, &mut out, 1, |s: &[u32], d: &mut [u64]| {
        d[0] = u64::from(s[0]) + 1;
    })
    .unwrap();
    assert!(out.iter().enumerate().all(|(i, &x)| x == i as u64 + 1));
}

#[test]
fn after_a_failed_chunk_map_chunks_starts_no_further_chunks() {
    let _w = common::arm(120);
    // 10,000 chunks of 1 ms; the first panics at once. Queued all at once, every other chunk
    // ran anyway (5 s on two workers) and wrote its mark; now only those already submitted do.
    let pool = Pool::new(2).unwrap();
    let mut input = SharedVec::<u8>::zeroed(10_000).unwrap();
    input[0] = 1;
    let mut ran = SharedVec::<u8>::zeroed(10_000).unwrap();
    let e = pool
        .map_chunks_into(&input, &mut ran, 1, |s: &[u8], d: &mut [u8]| {
            if s[0] == 1 {
                panic!("the first chunk fails");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            d[0] = 1;
        })
        .unwrap_err();
    assert!(matches!(e, Error::TaskPanicked { .. }), "{e:?}");
    let started = ran.iter().filter(|&&x| x == 1).count();
    assert!(
        started < 5_000,
        "{started} of 9,999 chunks ran after the first one failed"
    );
    // The pool goes on.
    assert_eq!(
        pool.map_chunks(&ran, 5_000, |s: &[u8]| s.len()).unwrap(),
        [5_000, 5_000]
    );
}

/// Chunk body for the close test: the chunk that holds a path (the first) marks itself started
/// and waits for the gate at that path; every other chunk returns its length.
fn gate_in_first_chunk(s: &[u8]) -> usize {
    if s[0] != 0 {
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        let gate = PathBuf::from(std::str::from_utf8(&s[..end]).unwrap());
        std::fs::write(gate.with_extension("started"), b"").unwrap();
        common::wait_gate(&gate);
    }
    s.len()
}

#[test]
fn a_map_chunks_started_before_close_runs_to_its_end_and_join_waits_for_it() {
    let _w = common::arm(120);
    // Its later chunks are submitted after `close`, as continuations of an accepted call (as
    // `map` and `imap_chunks`); `join` meanwhile must not see the pool idle between a chunk's
    // end and its successor's submission.
    let dir = std::env::temp_dir().join(format!("shmpool-bulk-close-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gate = dir.join("gate");
    let mut bytes = vec![0u8; 256 * 2_000];
    let path = gate.to_str().unwrap().as_bytes();
    bytes[..path.len()].copy_from_slice(path);
    let v = SharedVec::from_slice(&bytes).unwrap();
    let pool = Pool::new(2).unwrap();
    let got = std::thread::scope(|scope| {
        let call = scope.spawn(|| pool.map_chunks(&v, 256, gate_in_first_chunk));
        assert!(
            common::eventually(std::time::Duration::from_secs(60), || gate
                .with_extension("started")
                .exists()),
            "the first chunk never started"
        );
        pool.close();
        std::fs::write(&gate, b"").unwrap();
        pool.join().unwrap();
        call.join().unwrap()
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got.unwrap(), vec![256; 2_000]);
}

/// Peak resident memory of this process (`VmHWM`) in KiB.
fn peak_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn map_chunks_over_200_000_chunks_holds_a_window_of_tasks_not_one_per_chunk() {
    if common::scenario().as_deref() != Some("peak") {
        // In a process of its own: other tests' allocations would raise the peak.
        let _w = common::arm(300);
        let out = common::reexec(
            "map_chunks_over_200_000_chunks_holds_a_window_of_tasks_not_one_per_chunk",
            "peak",
        )
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?}\n{stdout}", out.status);
        assert!(stdout.contains("peak RSS"), "{stdout}");
        return;
    }
    let _w = common::arm(250);
    let pool = Pool::new(2).unwrap();
    let v: SharedVec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    assert_eq!(
        pool.map_chunks(&v, 100_000, |s: &[u8]| s.len())
            .unwrap()
            .len(),
        2
    );
    // Writing 5 to clear_refs resets the peak to the current RSS (Linux 4.0).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = peak_kib();
    let got = pool.map_chunks(&v, 1, |s: &[u8]| u32::from(s[0])).unwrap();
    let peak = peak_kib();
    println!("peak RSS {base} -> {peak} KiB");
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, &x)| x == u32::from(i as u8))
    );
    // The results: 800 KB, plus a slot each while they arrive (1.6 MB), plus the result arena
    // pages the parent reads. One queued task per chunk took ~90 MB.
    assert!(
        peak < base + 24 * 1024,
        "map_chunks of 200,000 chunks raised the parent's peak RSS by {} MiB",
        (peak - base) / 1024
    );
}
