#!/usr/bin/env python3
"""Chunksize sweep of CPython's multiprocessing.Pool: the Python half of `shmpool bench chunksize`.

Mirrors tools/src/measure.rs: the same work levels (ns of busy arithmetic per item, calibrated here
to this interpreter's own speed), chunksizes and worker counts; the same item budget per work level
(what the single-process loop does in the target time), the same probe and run sizing, the median of
at least `--reps` runs (more for short runs, as there). Prints one JSON object on stdout:

    {"python": "3.11.2", "ns_per_iteration": 41.7, "measurements": [{...}, ...]}

where each measurement has the fields of the CSV that `shmpool bench chunksize` writes. With
`--progress`, prints a line "progress" on stderr per step. Run it by hand, e.g.:

    python3 tools/compare/chunksize_sweep.py --work-ns 0,1000 --chunksizes 1,16,256 --workers 1,2
"""

import argparse
import json
import multiprocessing
import sys
import time

MASK = (1 << 64) - 1
MUL = 0x2545F4914F6CDD1D


def pack(iterations, seed):
    return (iterations << 32) | (seed & 0xFFFFFFFF)


def busy(arg):
    """`arg >> 32` rounds of a multiply-add on a state seeded from the low 32 bits.

    A cheaper round than the Rust xorshift so that 100 ns of work is still a few rounds here.
    """
    x = (arg & 0xFFFFFFFF) | 1
    for _ in range(arg >> 32):
        x = (x * MUL + 1) & MASK
    return x


def calibrate_ns_per_iteration():
    # The fastest of many short runs: a run shorter than a scheduler time slice is rarely
    # preempted, so a busy machine does not inflate the estimate (and shrink the work).
    rounds = 20_000
    best = float("inf")
    for seed in range(25):
        t = time.perf_counter_ns()
        busy(pack(rounds, seed))
        best = min(best, (time.perf_counter_ns() - t) / rounds)
    return max(best, 1e-3)


def iterations_for(work_ns, ns_per_iteration):
    return max(0, min(int(round(work_ns / ns_per_iteration)), 0xFFFFFFFF))


MAX_REPS_FACTOR = 5


def repeat(reps, target_s, run):
    """At least `reps` runs; more (up to MAX_REPS_FACTOR x reps) while they add up to less than
    `target_s` (see `repeat` in tools/src/measure.rs)."""
    return interleave(reps, target_s, [run])[0]


def interleave(reps, target_s, runs):
    """`repeat` for several contenders, their runs taken in turn (A B A B ...)."""
    rates = [[] for _ in runs]
    items = [0 for _ in runs]
    total = [0.0 for _ in runs]
    rounds = 0
    while rounds < reps or (min(total) < target_s and rounds < MAX_REPS_FACTOR * reps):
        for i, run in enumerate(runs):
            items[i], secs = run()
            total[i] += secs
            rates[i].append(items[i] / max(secs, 1e-9))
        rounds += 1
    out = []
    for i, r in enumerate(rates):
        r.sort()
        out.append(
            {"items": items[i], "median": r[len(r) // 2], "min": r[0], "max": r[-1], "runs": rounds}
        )
    return out


def single_run(buf, target_s):
    start = time.perf_counter()
    done = 0
    step = 1
    while True:
        list(map(busy, buf[:step]))  # what Pool.map's workers run on a chunk
        done += step
        elapsed = time.perf_counter() - start
        if elapsed >= target_s:
            return done, elapsed
        step = min(step * 2, len(buf))


def spot_check(items, out):
    if len(out) != len(items):
        raise RuntimeError(f"the pool returned {len(out)} results for {len(items)} items")
    for i in (0, len(items) // 2, len(items) - 1):
        if out[i] != busy(items[i]):
            raise RuntimeError(f"the pool returned a wrong result for item {i}")


def run_chunked(pool, items, chunksize):
    t = time.perf_counter()
    out = pool.map(busy, items, chunksize)
    d = time.perf_counter() - t
    spot_check(items, out)
    return len(items), d


def run_map_auto(pool, items):
    t = time.perf_counter()
    out = pool.map(busy, items)
    d = time.perf_counter() - t
    spot_check(items, out)
    return len(items), d


def item_budget(single_rate, target_s, max_items, most_workers):
    floor = min(4 * most_workers, max_items)
    return max(floor, min(int(single_rate * target_s), max_items))


def items_for_run(n_max, chunksize, workers, rate_hint, target_s):
    if n_max / rate_hint <= 3.0 * target_s:
        return n_max
    at_least = min(2 * chunksize * workers, n_max)
    return max(at_least, min(int(rate_hint * target_s), n_max))


def probe(pool, workers, items, chunksize, target_s):
    n = max(64, min(4 * chunksize * workers, max(len(items), 1)))
    while True:
        n_now = min(n, len(items))
        done, d = run_chunked(pool, items[:n_now], chunksize)
        if d >= target_s / 8 or n_now == len(items):
            return done / max(d, 1e-9)
        n = n_now * 4


def int_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-ns", type=int_list, default=[0, 100, 1000, 10000, 100000])
    ap.add_argument("--chunksizes", type=int_list, default=[4**i for i in range(9)])
    ap.add_argument("--workers", type=int_list, default=list(range(1, multiprocessing.cpu_count() + 1)))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--target-ms", type=float, default=100.0)
    ap.add_argument("--max-items", type=int, default=1 << 20)
    ap.add_argument("--progress", action="store_true", help='print "progress" on stderr per step')
    a = ap.parse_args()
    if min(a.chunksizes + a.workers + [a.reps, a.max_items]) < 1 or min(a.work_ns) < 0:
        ap.error("chunksizes, workers, reps and max-items must be at least 1, work at least 0")
    chunksizes = sorted(set(a.chunksizes))
    target_s = a.target_ms / 1000.0

    def step():
        if a.progress:
            print("progress", file=sys.stderr, flush=True)

    ns_per_iteration = calibrate_ns_per_iteration()
    ctx = multiprocessing.get_context("fork")
    pools = []
    for w in a.workers:
        pool = ctx.Pool(w)
        items = [pack(i % 17, i) for i in range(1000)]
        if pool.map(busy, items, 7) != [busy(x) for x in items]:
            raise RuntimeError(f"a pool of {w} workers computed wrong results")
        pools.append((w, pool))

    out = []
    for work_ns in a.work_ns:
        iterations = iterations_for(work_ns, ns_per_iteration)
        actual = iterations * ns_per_iteration

        def row(mode, workers, chunksize, s):
            return {
                "implementation": "python",
                "mode": mode,
                "workers": workers,
                "work_ns": work_ns,
                "work_ns_actual": actual,
                "chunksize": chunksize,
                "items": s["items"],
                "median": s["median"],
                "min": s["min"],
                "max": s["max"],
                "reps": s["runs"],
            }

        buf = [pack(iterations, i) for i in range(4096)]
        single = repeat(a.reps, target_s, lambda: single_run(buf, target_s))
        out.append(row("single", None, None, single))
        step()

        n_max = item_budget(single["median"], target_s, a.max_items, max(a.workers))
        items = [pack(iterations, i) for i in range(n_max)]
        for w, pool in pools:
            hint = None
            best = None
            for cs in chunksizes:
                if cs > n_max:
                    step()
                    continue
                rate = hint if hint is not None else probe(pool, w, items, cs, target_s)
                n = items_for_run(n_max, cs, w, rate, target_s)
                s = repeat(a.reps, target_s, lambda: run_chunked(pool, items[:n], cs))
                hint = s["median"]
                if best is None or s["median"] > best["median"]:
                    best, best_cs = s, cs
                out.append(row("map_chunked", w, cs, s))
                step()
            # Python's automatic map over the items of the best chunksize, its runs interleaved
            # with that chunksize's again (as in tools/src/measure.rs).
            n = best["items"] if best is not None else n_max
            auto = lambda: run_map_auto(pool, items[:n])
            if best is not None:
                again = lambda: run_chunked(pool, items[:n], best_cs)
                b, s = interleave(a.reps, target_s, [again, auto])
                out.append(row("map_chunked_best", w, best_cs, b))
            else:
                s = repeat(a.reps, target_s, auto)
            auto_cs = -(-n // (4 * w))
            out.append(row("map_auto", w, auto_cs, s))
            step()

    for _, pool in pools:
        pool.close()
        pool.join()
    json.dump(
        {
            "python": sys.version.split()[0],
            "ns_per_iteration": ns_per_iteration,
            "measurements": out,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
