//! Every kind of payload crosses both ways unchanged, and payloads too big for the arena are clear
//! errors that leave the pool working.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shmpool::{Error, Payload, Pool};

fn echo<T>(x: T) -> T {
    x
}

/// Sends `v` through a worker and back, both as `apply` and as one item of a `map`.
fn round_trip<T: Payload + Clone + PartialEq + Debug>(pool: &Pool, v: T) {
    assert_eq!(pool.apply(echo::<T>, v.clone()).unwrap(), v);
    assert_eq!(
        pool.map(echo::<T>, vec![v.clone(), v.clone()]).unwrap(),
        [v.clone(), v]
    );
}

#[test]
fn unsigned_and_signed_integers_cross_unchanged() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    for v in [0u8, 1, 127, 128, u8::MAX] {
        round_trip(&pool, v);
    }
    for v in [0u16, 300, u16::MAX] {
        round_trip(&pool, v);
    }
    for v in [0u32, 1 << 31, u32::MAX] {
        round_trip(&pool, v);
    }
    for v in [0u64, 1 << 63, u64::MAX] {
        round_trip(&pool, v);
    }
    for v in [0u128, 1 << 100, u128::MAX] {
        round_trip(&pool, v);
    }
    for v in [i64::MIN, -1, 0, 1, i64::MAX] {
        round_trip(&pool, v);
    }
    for v in [i8::MIN, i8::MAX] {
        round_trip(&pool, v);
    }
    for v in [i128::MIN, i128::MAX] {
        round_trip(&pool, v);
    }
    round_trip(&pool, usize::MAX);
    // Computed in the worker, not just echoed.
    assert_eq!(
        pool.apply(|x: u128| x.wrapping_mul(3), u128::MAX / 2)
            .unwrap(),
        (u128::MAX / 2).wrapping_mul(3)
    );
}

#[test]
fn floats_bools_and_chars_cross_unchanged() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    for v in [
        0.0f64,
        -0.0,
        1.5,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ] {
        let back = pool.apply(echo::<f64>, v).unwrap();
        assert_eq!(back.to_bits(), v.to_bits(), "{v}");
    }
    assert_eq!(pool.apply(|x: f32| x * 2.0, 1.25).unwrap(), 2.5);
    round_trip(&pool, true);
    round_trip(&pool, false);
    for c in ['a', 'é', '日', '🦀', '\0', char::MAX] {
        round_trip(&pool, c);
    }
    assert!(!pool.apply(|b: bool| !b, true).unwrap());
    round_trip(&pool, ());
}

#[test]
fn strings_and_paths_cross_unchanged() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    for s in ["", "plain", "héllo wörld — 日本語 🦀 \u{0}\u{10FFFF}"] {
        round_trip(&pool, s.to_string());
    }
    let long: String = "ünï".repeat(100_000);
    round_trip(&pool, long.clone());
    assert_eq!(
        pool.apply(|s: String| s.chars().count(), long).unwrap(),
        300_000
    );
    for p in ["/", "relative/dir/file.txt", "/tmp/ünïcödé 🦀/x"] {
        round_trip(&pool, PathBuf::from(p));
    }
    assert_eq!(
        pool.apply(
            |p: PathBuf| p.file_name().unwrap().to_string_lossy().into_owned(),
            PathBuf::from("/a/b/c.rs")
        )
        .unwrap(),
        "c.rs"
    );
}

#[test]
fn a_path_that_is_not_utf8_is_a_codec_error() {
    use std::os::unix::ffi::OsStrExt;
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe"));
    let e = pool.apply(echo::<PathBuf>, bad).unwrap_err();
    assert!(matches!(e, Error::Codec { .. }), "{e:?}");
    assert!(e.to_string().starts_with("payload codec error: "), "{e}");
    round_trip(&pool, PathBuf::from("/fine"));
}

#[test]
fn eight_mib_of_bytes_cross_unchanged() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let big: Vec<u8> = (0..8usize << 20).map(|i| (i * 31 % 251) as u8).collect();
    let back = pool.apply(echo::<Vec<u8>>, big.clone()).unwrap();
    assert!(back == big, "8 MiB payload changed in transit");
    // The worker sees the same bytes.
    let (len, sum) = pool
        .apply(
            |v: Vec<u8>| (v.len(), v.iter().map(|&b| u64::from(b)).sum::<u64>()),
            big.clone(),
        )
        .unwrap();
    assert_eq!(len, big.len());
    assert_eq!(sum, big.iter().map(|&b| u64::from(b)).sum::<u64>());
    // Several in flight at once share the arenas without corrupting each other.
    let handles: Vec<_> = (0..6u8)
        .map(|k| {
            pool.apply_async(|(k, n): (u8, usize)| vec![k; n], (k, 1 << 20))
                .unwrap()
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        let v = h.get().unwrap();
        assert_eq!(v.len(), 1 << 20);
        assert!(v.iter().all(|&b| b == k as u8), "result {k} corrupted");
    }
}

#[test]
fn vectors_arrays_tuples_and_options_cross_unchanged() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    round_trip(&pool, vec![0.5f64, -1e300, 3.25, f64::MAX]);
    round_trip(&pool, Vec::<f64>::new());
    let arr: [u32; 16] = std::array::from_fn(|i| (i as u32) * 0x0101_0101);
    round_trip(&pool, arr);
    round_trip(&pool, (7u8, "seven".to_string(), 7.0f64));
    round_trip(&pool, ((1u16, -2i32), vec![(true, 'x')], [Some(1u8), None]));
    round_trip(&pool, Some(42u64));
    round_trip(&pool, None::<u64>);
    round_trip(&pool, Some(Some(String::from("deep"))));
    let mut m = BTreeMap::new();
    m.insert("one".to_string(), vec![1u32]);
    m.insert("two".to_string(), vec![2, 2]);
    round_trip(&pool, m);
    assert_eq!(
        pool.apply(|v: Vec<f64>| v.iter().sum::<f64>(), vec![1.0, 2.0, 3.5])
            .unwrap(),
        6.5
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Circle { r: f64 },
    Poly(Vec<(i32, i32)>),
    Named(String, Box<Shape>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scene {
    id: u64,
    title: String,
    shapes: Vec<Shape>,
    tags: Option<Vec<String>>,
    origin: (f32, f32),
}

fn scene() -> Scene {
    Scene {
        id: u64::MAX - 1,
        title: "scène 🦀".into(),
        shapes: vec![
            Shape::Unit,
            Shape::Circle { r: 2.5 },
            Shape::Poly(vec![(0, 0), (-3, 4), (i32::MAX, i32::MIN)]),
            Shape::Named("wrapped".into(), Box::new(Shape::Circle { r: -1.0 })),
        ],
        tags: Some(vec!["a".into(), String::new()]),
        origin: (1.5, -2.5),
    }
}

#[test]
fn serde_structs_with_nested_enums_cross_unchanged() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    round_trip(&pool, scene());
    // Transformed in the worker into another serde type.
    let counts = pool
        .apply(
            |s: Scene| {
                s.shapes
                    .iter()
                    .map(|sh| match sh {
                        Shape::Unit => ("unit".to_string(), 0usize),
                        Shape::Circle { .. } => ("circle".into(), 1),
                        Shape::Poly(p) => ("poly".into(), p.len()),
                        Shape::Named(n, _) => (n.clone(), 1),
                    })
                    .collect::<Vec<_>>()
            },
            scene(),
        )
        .unwrap();
    assert_eq!(
        counts,
        [
            ("unit".to_string(), 0),
            ("circle".into(), 1),
            ("poly".into(), 3),
            ("wrapped".into(), 1)
        ]
    );
    let scenes: Vec<Scene> = (0..50).map(|i| Scene { id: i, ..scene() }).collect();
    assert_eq!(pool.map(echo::<Scene>, scenes.clone()).unwrap(), scenes);
}

const SMALL_ARENA: usize = 64 * 1024;

/// A struct holding bytes: serde's generic path (no byte-vector fast path), so a big one
/// reaches its segment through the encoded `Vec`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Blob {
    tag: u32,
    bytes: Vec<u8>,
}

/// Open fds of process `pid` that are large-payload segments.
fn payload_segments(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().contains("memfd:shmpool-payload"))
        })
        .count()
}

/// Open payload segments of process `pid` once they are closed, waiting up to 30 s: a
/// finished job's segments are closed just after its result is delivered (the parent's after
/// the completion has run, a worker's after it published the result), so a caller woken by the
/// result can look a moment before that.
fn payload_segments_after_close(pid: &str) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = payload_segments(pid);
        if n == 0 || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn arguments_and_results_bigger_than_the_arena_travel_in_segments_of_their_own() {
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(2)
        .arena_size(SMALL_ARENA)
        .build()
        .unwrap();
    let pids = pool.worker_pids();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    // Argument and result both 15x the arena, a byte vector (fast path) both ways.
    assert_eq!(pool.apply(|v: Vec<u8>| v, big.clone()).unwrap(), big);
    // Only the argument, only the result.
    assert_eq!(
        pool.apply(
            |v: Vec<u8>| v.iter().map(|&b| u64::from(b)).sum::<u64>(),
            big.clone()
        )
        .unwrap(),
        big.iter().map(|&b| u64::from(b)).sum::<u64>()
    );
    let v = pool.apply(|n: usize| vec![7u8; n], 3_000_000).unwrap();
    assert!(v.len() == 3_000_000 && v.iter().all(|&b| b == 7));
    // Serde's path (a struct), and `Box<[u8]>`.
    let blob = Blob {
        tag: 9,
        bytes: big.clone(),
    };
    let back = pool
        .apply(
            |b: Blob| Blob {
                tag: b.tag + 1,
                bytes: b.bytes,
            },
            blob,
        )
        .unwrap();
    assert_eq!((back.tag, &back.bytes), (10, &big));
    let boxed: Box<[u8]> = big.clone().into_boxed_slice();
    assert_eq!(&*pool.apply(|b: Box<[u8]>| b, boxed).unwrap(), &big[..]);
    // Many at once, mixed with small ones, in both workers; then map items and chunk results.
    let handles: Vec<_> = (0..10usize)
        .map(|i| {
            pool.apply_async(|n: usize| vec![n as u8; n], 70_000 + i * 10_000)
                .unwrap()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let v = h.get().unwrap();
        assert_eq!(v.len(), 70_000 + i * 10_000);
        assert!(v.iter().all(|&b| b == (70_000 + i * 10_000) as u8));
    }
    let lens = pool
        .map_chunked(|v: Vec<u8>| v.len(), vec![vec![0u8; 40_000]; 6], 2)
        .unwrap();
    assert_eq!(lens, [40_000; 6]);
    let vs = pool
        .map_chunked(|n: usize| vec![1u8; n], vec![40_000usize; 4], 2)
        .unwrap();
    assert!(vs.iter().all(|v| v.len() == 40_000));
    // Same workers, and no payload segment left open in the parent or in a worker: each was
    // closed after use, so its memory is gone.
    assert_eq!(pool.worker_pids(), pids);
    assert_eq!(payload_segments_after_close("self"), 0);
    for p in pids {
        assert_eq!(
            payload_segments_after_close(&p.to_string()),
            0,
            "worker {p}"
        );
    }
    pool.close();
    pool.join().unwrap();
}

#[test]
fn byte_vectors_cross_whole_at_every_size_around_the_arena_and_page_boundaries() {
    let _w = common::arm(120);
    let pool = Pool::builder()
        .processes(2)
        .arena_size(SMALL_ARENA)
        .build()
        .unwrap();
    // Just below, at and above the arena (the length's varint takes 3 bytes here, and each side
    // decides arena or segment on the encoded size), then around 4 KiB pages of a segment.
    let mut lens: Vec<usize> = (SMALL_ARENA - 16..=SMALL_ARENA + 16).collect();
    for pages in [17usize, 32, 100] {
        lens.extend([
            pages * 4096 - 4,
            pages * 4096 - 3,
            pages * 4096 - 1,
            pages * 4096,
            pages * 4096 + 1,
        ]);
    }
    for len in lens {
        let v: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        // Both ways, argument only, result only, and as a `Box<[u8]>`.
        let back = pool.apply(|v: Vec<u8>| v, v.clone()).unwrap();
        assert!(back == v, "round trip of {len} bytes");
        let sum = pool
            .apply(
                |v: Vec<u8>| v.iter().map(|&b| u64::from(b)).sum::<u64>(),
                v.clone(),
            )
            .unwrap();
        assert_eq!(
            sum,
            v.iter().map(|&b| u64::from(b)).sum::<u64>(),
            "argument of {len} bytes"
        );
        let made = pool
            .apply(
                |len: usize| (0..len).map(|i| (i * 31 + len) as u8).collect::<Vec<u8>>(),
                len,
            )
            .unwrap();
        assert!(made == v, "result of {len} bytes");
        let boxed = pool
            .apply(|b: Box<[u8]>| b, v.clone().into_boxed_slice())
            .unwrap();
        assert!(*boxed == v[..], "boxed round trip of {len} bytes");
    }
    assert_eq!(payload_segments_after_close("self"), 0);
    pool.close();
    pool.join().unwrap();
}

/// Refuses to be serialized when it holds 3, with its own message (as a user's `Serialize` impl
/// calling `Error::custom` would).
#[derive(Debug, Deserialize)]
struct Picky(u32);

impl Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 3 {
            return Err(serde::ser::Error::custom(format!(
                "{} refuses to cross",
                self.0
            )));
        }
        s.serialize_newtype_struct("Picky", &self.0)
    }
}

#[test]
fn a_failing_serialize_reports_its_own_message() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    // An argument, in the parent.
    let e = pool.apply(|p: Picky| p.0, Picky(3)).unwrap_err();
    assert!(
        matches!(&e, Error::Codec { detail } if detail == "3 refuses to cross"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "payload codec error: 3 refuses to cross");
    // A result, in the worker.
    let e = pool.apply(Picky, 3).unwrap_err();
    assert_eq!(
        e.to_string(),
        "payload codec error: cannot encode the result: 3 refuses to cross"
    );
    // A map's item, and a chunk's result.
    let e = pool.map(|p: Picky| p.0, (0..5).map(Picky)).unwrap_err();
    assert_eq!(e.to_string(), "payload codec error: 3 refuses to cross");
    let e = pool.map(Picky, 0..5).unwrap_err();
    assert_eq!(
        e.to_string(),
        "payload codec error: cannot encode the result: 3 refuses to cross"
    );
    assert_eq!(pool.apply(Picky, 4).unwrap().0, 4);
}
