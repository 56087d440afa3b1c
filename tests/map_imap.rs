//! `map`, `map_chunked`, `map_async`, `starmap`, `imap` and `imap_unordered`: order, chunking,
//! laziness over endless input, bad chunksizes and empty inputs.

mod common;

use std::collections::BTreeSet;

use shmpool::{Error, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn squares(n: u64) -> Vec<u64> {
    (0..n).map(square).collect()
}

#[test]
fn map_returns_results_in_input_order() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(square, 0..1000).unwrap(), squares(1000));
    let words = vec!["a".to_string(), "bb".into(), "ccc".into()];
    assert_eq!(pool.map(|s: String| s.len(), words).unwrap(), [1, 2, 3]);
}

#[test]
fn map_chunked_is_correct_for_every_chunksize() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    for cs in [1, 2, 3, 7, 64, 999, 1000, 1001, 50_000] {
        assert_eq!(
            pool.map_chunked(square, 0..1000, cs).unwrap(),
            squares(1000),
            "chunksize {cs}"
        );
    }
}

#[test]
fn map_async_and_map_async_chunked_resolve_to_the_whole_list() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let a = pool.map_async(square, 0..500).unwrap();
    let b = pool.map_async_chunked(square, 0..500, 3).unwrap();
    assert_eq!(b.get().unwrap(), squares(500));
    assert_eq!(a.get().unwrap(), squares(500));
}

#[test]
fn map_fails_with_the_first_failed_items_error() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let e = pool
        .map_chunked(
            |x: u32| {
                if x == 37 {
                    panic!("bad item {x}");
                }
                x
            },
            0..100,
            10,
        )
        .unwrap_err();
    match &e {
        Error::TaskPanicked { worker, message } => {
            assert!(*worker < 2);
            assert_eq!(message, "bad item 37");
            assert_eq!(
                e.to_string(),
                format!("task panicked in worker {worker}: bad item 37")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // The pool is unharmed.
    assert_eq!(pool.map(square, 0..10).unwrap(), squares(10));
}

#[test]
fn starmap_spreads_two_and_three_argument_tuples() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let pairs: Vec<(u64, u64)> = (0..300).map(|i| (i, i + 1)).collect();
    let sums = pool.starmap(|a: u64, b: u64| a + b, pairs.clone()).unwrap();
    assert_eq!(sums, pairs.iter().map(|(a, b)| a + b).collect::<Vec<_>>());

    let triples: Vec<(u64, String, bool)> =
        (0..300).map(|i| (i, format!("s{i}"), i % 2 == 0)).collect();
    let out = pool
        .starmap(
            |a: u64, s: String, flip: bool| if flip { format!("{s}:{a}") } else { s },
            triples.clone(),
        )
        .unwrap();
    let want: Vec<String> = triples
        .into_iter()
        .map(|(a, s, f)| if f { format!("{s}:{a}") } else { s })
        .collect();
    assert_eq!(out, want);

    let r = pool
        .starmap_async(|a: u64, b: u64| a * b, vec![(2, 3), (4, 5)])
        .unwrap();
    assert_eq!(r.get().unwrap(), [6, 20]);
}

#[test]
fn imap_yields_results_in_order() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let got: Vec<u64> = pool
        .imap(square, 0..5000)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, squares(5000));
    for cs in [1, 7, 10_000] {
        let got: Vec<u64> = pool
            .imap(square, 0..1000)
            .chunksize(cs)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, squares(1000), "chunksize {cs}");
    }
}

#[test]
fn imap_unordered_yields_a_permutation() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    for cs in [None, Some(1), Some(13)] {
        let it = pool.imap_unordered(square, 0..3000);
        let it = match cs {
            Some(n) => it.chunksize(n),
            None => it,
        };
        let got: Vec<u64> = it.collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 3000);
        let set: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(set.len(), 3000, "duplicates in imap_unordered output");
        assert_eq!(set, squares(3000).into_iter().collect(), "chunksize {cs:?}");
    }
}

#[test]
fn imap_over_an_endless_input_takes_what_is_asked() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let got: Vec<u64> = pool
        .imap(|x: u64| x * 2, 0u64..)
        .take(100)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..100).map(|x| x * 2).collect::<Vec<_>>());
    let got: Vec<u64> = pool
        .imap_unordered(|x: u64| x * 2, 0u64..)
        .take(100)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got.len(), 100);
    // Abandoned chunks do not break the pool.
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
    assert_eq!(pool.map(square, 0..50).unwrap(), squares(50));
}

#[test]
fn imap_over_many_items_with_a_small_window() {
    let _w = common::arm(60);
    // One worker: the window is 4 chunks.
    let pool = Pool::new(1).unwrap();
    let n = 200_000u64;
    let mut count = 0u64;
    let mut sum = 0u64;
    for (i, r) in pool.imap(|x: u64| x ^ 0x5555, 0..n).enumerate() {
        let v = r.unwrap();
        assert_eq!(v, (i as u64) ^ 0x5555);
        sum = sum.wrapping_add(v);
        count += 1;
    }
    assert_eq!(count, n);
    assert_eq!(
        sum,
        (0..n).map(|x| x ^ 0x5555).fold(0u64, u64::wrapping_add)
    );
    let count = pool
        .imap_unordered(|x: u64| x, 0..n)
        .chunksize(1000)
        .map(Result::unwrap)
        .count();
    assert_eq!(count as u64, n);
}

/// Panics for items 0, 5, 10, … and for the last item of every chunk of 7 (6, 13, 20, …), so a
/// chunk can fail at its first item, its last, in the middle and at two neighbours (20 and 21).
fn fails_here(x: u32) -> bool {
    x.is_multiple_of(5) || x % 7 == 6
}

fn fails_here_and_there(x: u32) -> u32 {
    if fails_here(x) {
        panic!("item {x}");
    }
    x * 10
}

#[test]
fn imap_puts_every_failure_of_a_chunk_at_its_place() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let expected = |x: u32| {
        if fails_here(x) {
            Err(format!("item {x}"))
        } else {
            Ok(x * 10)
        }
    };
    let message = |r: shmpool::Result<u32>| {
        r.map_err(|e| match e {
            shmpool::Error::TaskPanicked { message, .. } => message,
            other => panic!("unexpected error {other}"),
        })
    };
    let ordered: Vec<_> = pool
        .imap(fails_here_and_there, 0..45u32)
        .chunksize(7)
        .map(message)
        .collect();
    assert_eq!(ordered, (0..45).map(expected).collect::<Vec<_>>());
    // Unordered: chunks may come in any order, but within a chunk the items keep theirs.
    let mut unordered: Vec<_> = pool
        .imap_unordered(fails_here_and_there, 0..45u32)
        .chunksize(7)
        .map(message)
        .collect();
    let key = |r: &Result<u32, String>| match r {
        Ok(v) => v / 10,
        Err(m) => m.trim_start_matches("item ").parse().unwrap(),
    };
    unordered.sort_by_key(key);
    assert_eq!(unordered, (0..45).map(expected).collect::<Vec<_>>());
}

#[test]
fn imap_reports_a_failed_item_and_continues() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let got: Vec<Result<u32, String>> = pool
        .imap(
            |x: u32| {
                if x == 5 {
                    panic!("five");
                }
                x
            },
            0..10,
        )
        .chunksize(2)
        .map(|r| r.map_err(|e| e.to_string()))
        .collect();
    assert_eq!(got.len(), 10);
    for (i, r) in got.iter().enumerate() {
        if i == 5 {
            let e = r.as_ref().unwrap_err();
            assert!(
                e.starts_with("task panicked in worker ") && e.ends_with(": five"),
                "{e}"
            );
        } else {
            assert_eq!(r, &Ok(i as u32));
        }
    }
}

#[test]
fn chunksize_zero_is_an_invalid_argument() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let mut it = pool.imap(square, 0..10).chunksize(0);
    let e = it.next().unwrap().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid argument: chunksize must be at least 1"
    );
    assert!(it.next().is_none());
    let e = pool
        .imap_unordered(square, 0..10)
        .chunksize(0)
        .next()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: chunksize must be at least 1"
    );
    let e = pool.map_chunked(square, 0..10, 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: chunksize must be at least 1"
    );
    let e = pool.map_async_chunked(square, 0..10, 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: chunksize must be at least 1"
    );
    // Nothing was broken by the refusals.
    assert_eq!(pool.map(square, 0..10).unwrap(), squares(10));
}

#[test]
fn empty_inputs_give_empty_outputs() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let none: Vec<u64> = Vec::new();
    assert!(pool.map(square, none.clone()).unwrap().is_empty());
    assert!(
        pool.map_chunked(square, none.clone(), 5)
            .unwrap()
            .is_empty()
    );
    assert!(
        pool.map_async(square, none.clone())
            .unwrap()
            .get()
            .unwrap()
            .is_empty()
    );
    assert!(
        pool.starmap(|a: u64, b: u64| a + b, Vec::<(u64, u64)>::new())
            .unwrap()
            .is_empty()
    );
    assert!(pool.imap(square, none.clone()).next().is_none());
    assert!(pool.imap_unordered(square, none).next().is_none());
    pool.close();
    pool.join().unwrap();
}

/// Busy work whose cost depends on the item, so chunks finish out of order.
fn uneven(x: u64) -> u64 {
    let mut h = x;
    for _ in 0..(x % 7) * 2_000 {
        h = h.rotate_left(7) ^ 0x9e37_79b9_7f4a_7c15;
    }
    std::hint::black_box(h) ^ h ^ x
}

#[test]
fn the_automatic_map_grows_its_chunks_and_keeps_order() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    // Enough items that the chunksize ramps up from 1 through many sizes.
    assert_eq!(pool.map(square, 0..200_000).unwrap(), squares(200_000));
    let expected: Vec<u64> = (0..3_000).map(uneven).collect();
    assert_eq!(pool.map(uneven, 0..3_000).unwrap(), expected);
    let pairs: Vec<(u64, u64)> = (0..5_000).map(|i| (i, i + 1)).collect();
    let sums: Vec<u64> = pairs.iter().map(|(a, b)| a + b).collect();
    assert_eq!(pool.starmap(|a: u64, b: u64| a + b, pairs).unwrap(), sums);
}

#[test]
fn a_map_accepted_before_close_finishes_and_join_waits_for_all_of_it() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    // The automatic map submits its later chunks as earlier ones finish; close() must not cut it
    // short, and join() must not return before its last chunk.
    let r = pool.map_async(uneven, 0..20_000).unwrap();
    pool.close();
    assert!(matches!(
        pool.map_async(uneven, 0..10),
        Err(Error::PoolClosed)
    ));
    pool.join().unwrap();
    assert!(r.ready(), "join returned before the map finished");
    let expected: Vec<u64> = (0..20_000).map(uneven).collect();
    assert_eq!(r.get().unwrap(), expected);
}

#[test]
fn terminate_fails_an_unfinished_automatic_map() {
    let _w = common::arm(120);
    let pool = Pool::new(2).unwrap();
    let r = pool
        .map_async(
            |ms: u64| {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                ms
            },
            vec![200u64; 50],
        )
        .unwrap();
    pool.terminate();
    assert!(matches!(r.get(), Err(Error::PoolTerminated)));
    pool.join().unwrap();
}
