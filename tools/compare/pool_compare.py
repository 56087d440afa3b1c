#!/usr/bin/env python3
"""CPython multiprocessing.Pool side of the issue-2 dispatch comparison.

Measures, with Pool(PROCESSES) on the same work as benches/dispatch.rs and
examples/dispatch_compare.rs:

  * apply round trip: mean seconds per `pool.apply(inc, (x,))`;
  * apply_async pipelined: submit 10_000 `apply_async(inc, (i,))`, then get all (items/s);
  * map of 1_000_000 trivial items (`x * 3`) at the default chunksize
    (ceil(len / (4 * processes)), as shmpool's `map`) and at a few explicit chunksizes; the best
    of those is reported too.

Each measurement is repeated --reps times and the median is reported. Correctness is checked
once before timing. Prints one JSON object on stdout (times in seconds); progress goes to stderr.

Usage: python3 tools/compare/pool_compare.py [--quick] [--reps N] [--processes N]
"""

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import time

MAP_ITEMS = 1_000_000
PIPELINED = 10_000
CHUNKSIZES = (1_000, 10_000, 100_000)


def inc(x):
    return x + 1


def triple(x):
    # Items are < 2**21, so this equals Rust's u64 wrapping_mul(3).
    return x * 3


def median_of(reps, fn):
    return statistics.median(fn() for _ in range(reps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and applies")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (median reported)")
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    reps = args.reps or (2 if args.quick else 5)
    applies = 500 if args.quick else 2_000
    n = args.processes

    ctx = multiprocessing.get_context("fork")
    data = list(range(MAP_ITEMS))
    expected = [x * 3 for x in data]

    with ctx.Pool(n) as pool:
        # Correctness, once, before timing (also warms the workers up).
        assert pool.apply(inc, (41,)) == 42
        assert [r.get() for r in [pool.apply_async(inc, (i,)) for i in range(100)]] == list(
            range(1, 101)
        )
        assert pool.map(triple, data) == expected

        def apply_rt():
            t = time.perf_counter()
            for i in range(applies):
                pool.apply(inc, (i,))
            return (time.perf_counter() - t) / applies

        def pipelined():
            t = time.perf_counter()
            rs = [pool.apply_async(inc, (i,)) for i in range(PIPELINED)]
            for r in rs:
                r.get()
            return time.perf_counter() - t

        def map_at(cs):
            def run():
                t = time.perf_counter()
                pool.map(triple, data, chunksize=cs)
                return time.perf_counter() - t

            return run

        print(f"python: apply round trip x{applies}, {reps} reps", file=sys.stderr)
        apply_s = median_of(reps, apply_rt)
        print("python: apply_async pipelined", file=sys.stderr)
        pipe_s = median_of(reps, pipelined)
        default_cs = -(-MAP_ITEMS // (4 * n))
        print(f"python: map default chunksize {default_cs}", file=sys.stderr)
        map_default_s = median_of(reps, map_at(None))
        sweep = {str(cs): median_of(reps, map_at(cs)) for cs in CHUNKSIZES}
        print(f"python: map sweep {sweep}", file=sys.stderr)
        best_cs, best_s = min(sweep.items(), key=lambda kv: kv[1])
        if map_default_s <= best_s:
            best_cs, best_s = "default", map_default_s

    json.dump(
        {
            "python": platform.python_version(),
            "processes": n,
            "reps": reps,
            "apply_round_trip_s": apply_s,
            "applies": applies,
            "apply_async_pipelined_s": pipe_s,
            "apply_async_items_per_s": PIPELINED / pipe_s,
            "pipelined_items": PIPELINED,
            "map_items": MAP_ITEMS,
            "map_default_chunksize": default_cs,
            "map_default_s": map_default_s,
            "map_best_s": best_s,
            "map_best_chunksize": best_cs,
            "map_sweep_s": sweep,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
