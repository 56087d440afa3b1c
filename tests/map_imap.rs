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
        Error::TaskPanicked {
            worker, message, ..
        } => {
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
fn starmap_spreads_one_to_six_arguments_and_takes_a_chunksize() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let ones = pool.starmap(|a: u8| a + 1, vec![(1,), (2,)]).unwrap();
    assert_eq!(ones, [2, 3]);
    let fours = pool
        .starmap(
            |a: u8, b: u16, c: u32, d: u64| a as u64 + b as u64 + c as u64 + d,
            vec![(1, 2, 3, 4)],
        )
        .unwrap();
    assert_eq!(fours, [10]);
    let five = |a: u8, b: u8, c: u8, d: u8, e: String| format!("{a}{b}{c}{d}{e}");
    assert_eq!(
        pool.starmap(five, vec![(1, 2, 3, 4, "5".to_string())])
            .unwrap(),
        ["12345"]
    );
    let sixes: Vec<(u64, u64, u64, u64, u64, u64)> = (0..50).map(|i| (i, i, i, i, i, i)).collect();
    let six = |a: u64, b: u64, c: u64, d: u64, e: u64, f: u64| a + b + c + d + e + f;
    let want: Vec<u64> = (0..50).map(|i| 6 * i).collect();
    assert_eq!(pool.starmap(six, sixes.clone()).unwrap(), want);
    for cs in [1, 7, 50, 1000] {
        assert_eq!(
            pool.starmap_chunked(six, sixes.clone(), cs).unwrap(),
            want,
            "chunksize {cs}"
        );
    }
    let r = pool.starmap_async_chunked(six, sixes, 4).unwrap();
    assert_eq!(r.get().unwrap(), want);
    let e = pool
        .starmap_chunked(|a: u8, b: u8| a + b, vec![(1, 2)], 0)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: chunksize must be at least 1"
    );
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

/// Input that panics when it reaches item `at`, counting the items it handed out.
fn panicking_input(at: u64, pulled: &std::cell::Cell<u64>) -> impl Iterator<Item = u64> + '_ {
    (0u64..10).inspect(move |&x| {
        if x == at {
            panic!("bad input {x}");
        }
        pulled.set(pulled.get() + 1);
    })
}

/// Runs `consume`, returning what it collected before a panic and the panic's message.
fn until_panic(consume: impl FnOnce(&mut Vec<u64>)) -> (Vec<u64>, Option<String>) {
    let mut got = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| consume(&mut got)));
    let message = r.err().map(|p| match p.downcast::<String>() {
        Ok(s) => *s,
        Err(_) => "<not a string>".into(),
    });
    (got, message)
}

#[test]
fn imap_yields_the_results_before_a_panicking_input_then_its_panic() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    // Python: `imap(sq, gen)` where gen raises at item 3 yields 0, 1, 4, then raises.
    for chunksize in [None, Some(1), Some(2), Some(100)] {
        for ordered in [true, false] {
            let pulled = std::cell::Cell::new(0);
            let (mut got, message) = until_panic(|got| {
                let it = if ordered {
                    pool.imap(square, panicking_input(3, &pulled))
                } else {
                    pool.imap_unordered(square, panicking_input(3, &pulled))
                };
                let it = match chunksize {
                    Some(n) => it.chunksize(n),
                    None => it,
                };
                for r in it {
                    got.push(r.unwrap());
                }
            });
            got.sort_unstable();
            assert_eq!(got, [0, 1, 4], "chunksize {chunksize:?} ordered {ordered}");
            assert_eq!(message.as_deref(), Some("bad input 3"));
            assert_eq!(pulled.get(), 3);
        }
    }
    // The pool is unharmed.
    assert_eq!(pool.map(square, 0..10).unwrap(), squares(10));
}

#[test]
fn imap_reads_ahead_a_bounded_window() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let pulled = std::cell::Cell::new(0u64);
    let input = (0u64..).inspect(|_| pulled.set(pulled.get() + 1));
    let mut it = pool.imap(square, input).chunksize(3);
    assert_eq!(it.next().unwrap().unwrap(), 0);
    // 8 chunks per worker in flight, plus the one being walked.
    assert!(
        pulled.get() <= 3 * (8 * 2 + 1),
        "{} items read ahead",
        pulled.get()
    );
    let first: Vec<u64> = it.take(200).collect::<Result<_, _>>().unwrap();
    assert_eq!(first, (1..201).map(square).collect::<Vec<_>>());
    assert!(pulled.get() <= 201 + 3 * (8 * 2 + 1), "{}", pulled.get());
}

/// A value that refuses to be serialized when it holds 3 (as a type with a failing
/// `Serialize` impl would), with the message given to `Error::custom`.
#[derive(Debug, serde::Deserialize)]
struct Picky(u32);

impl serde::Serialize for Picky {
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

fn tenfold(p: Picky) -> u32 {
    p.0 * 10
}

#[test]
fn imap_gives_an_item_that_cannot_be_encoded_its_own_error_and_every_other_item_its_result() {
    let _w = common::arm(60);
    let pool = Pool::new(2).unwrap();
    let expected = |i: u32| {
        if i == 3 {
            Err("payload codec error: 3 refuses to cross".to_string())
        } else {
            Ok(i * 10)
        }
    };
    for chunksize in [None, Some(1), Some(2), Some(4), Some(100)] {
        let run = |ordered: bool| {
            let it = if ordered {
                pool.imap(tenfold, (0..10).map(Picky))
            } else {
                pool.imap_unordered(tenfold, (0..10).map(Picky))
            };
            let it = match chunksize {
                Some(n) => it.chunksize(n),
                None => it,
            };
            it.map(|r| r.map_err(|e| e.to_string())).collect::<Vec<_>>()
        };
        assert_eq!(
            run(true),
            (0..10).map(expected).collect::<Vec<_>>(),
            "chunksize {chunksize:?}"
        );
        let mut unordered = run(false);
        unordered.sort_by_key(|r| r.as_ref().map_or(30, |v| *v));
        assert_eq!(
            unordered,
            (0..10).map(expected).collect::<Vec<_>>(),
            "chunksize {chunksize:?}"
        );
    }
}

#[test]
fn imap_gives_an_item_too_large_for_the_arena_its_own_error() {
    let _w = common::arm(60);
    let pool = Pool::builder()
        .processes(2)
        .arena_size(4096)
        .build()
        .unwrap();
    // Item 4 alone does not fit; items of 1000 bytes fit three to a chunk, so a chunk of 10 is
    // cut short and the rest starts the next chunk.
    let items = || (0..12usize).map(|i| vec![i as u8; if i == 4 { 5000 } else { 1000 }]);
    for chunksize in [None, Some(1), Some(10)] {
        let it = pool.imap(|v: Vec<u8>| (v[0], v.len()), items());
        let it = match chunksize {
            Some(n) => it.chunksize(n),
            None => it,
        };
        let got: Vec<_> = it.collect();
        assert_eq!(got.len(), 12, "chunksize {chunksize:?}");
        for (i, r) in got.into_iter().enumerate() {
            if i == 4 {
                assert!(
                    matches!(r, Err(Error::PayloadTooLarge { capacity: 4096, .. })),
                    "{r:?}"
                );
            } else {
                assert_eq!(r.unwrap(), (i as u8, 1000), "chunksize {chunksize:?}");
            }
        }
    }
}

#[test]
fn an_imap_made_before_close_runs_to_its_end_after_close() {
    let _w = common::arm(120);
    // Python's idiom: `it = pool.imap(f, xs); pool.close(); for r in it: ...; pool.join()`. The
    // chunks an `imap` submitted after `close` were refused: the rest of the input was lost
    // (1000 items gave 27 results, the last ones `PoolClosed`).
    for ordered in [true, false] {
        let pool = Pool::new(2).unwrap();
        let mut it = if ordered {
            pool.imap(|x: u64| x * 2, 0..1000u64)
        } else {
            pool.imap_unordered(|x: u64| x * 2, 0..1000u64)
        };
        let mut got: Vec<u64> = it.by_ref().take(5).map(Result::unwrap).collect();
        pool.close();
        got.extend(it.map(Result::unwrap));
        if !ordered {
            got.sort_unstable();
        }
        assert_eq!(
            got,
            (0..1000).map(|x| x * 2).collect::<Vec<_>>(),
            "ordered: {ordered}"
        );
        // Made, then the pool closed before anything was read: still accepted.
        let it = pool.imap(|s: String| s.len(), (0..300).map(|i: u32| i.to_string()));
        drop(it);
        pool.join().unwrap();
    }
    let pool = Pool::new(1).unwrap();
    let it = pool.imap(|s: String| s.len(), (0..300).map(|i: u32| i.to_string()));
    pool.close();
    assert_eq!(it.map(Result::unwrap).count(), 300);
    // Made on a closed pool: refused, as every other call is.
    let late: Vec<_> = pool.imap(|x: u64| x, 0..10u64).collect();
    assert!(matches!(late[..], [Err(Error::PoolClosed)]), "{late:?}");
    pool.join().unwrap();
}
