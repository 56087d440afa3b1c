#!/usr/bin/env python3
"""CPython multiprocessing.Pool side of the issue-3 bulk comparison.

SHA-256 of every chunk of a (page-cached) file, at the chunk lengths of
examples/bulk_compare.rs, two ways:

  * single: one process reads the file chunk by chunk and hashes each (hashlib);
  * Pool: Pool(PROCESSES).imap(sha256, chunks, chunksize=1) where the parent reads each chunk
    and the pool pickles the bytes to a worker through a pipe (Python's only way to ship data to
    a pool; the result is the 32-byte digest).

Correctness (Pool == single) is checked once per chunk length before timing. Each figure is the
median of --reps runs. Prints one line per chunk length on stdout:
"<chunk bytes> <single seconds> <pool seconds>"; progress goes to stderr.

Usage: python3 tools/compare/bulk_compare.py --path FILE [--processes 2] [--reps 3]
"""

import argparse
import hashlib
import multiprocessing
import statistics
import sys
import time

CHUNKS = (64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)


def sha256(chunk):
    return hashlib.sha256(chunk).digest()


def read_chunks(path, size):
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(size)
            if not b:
                return
            yield b


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", required=True)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.processes) as pool:
        for size in CHUNKS:
            want = [sha256(c) for c in read_chunks(args.path, size)]
            got = list(pool.imap(sha256, read_chunks(args.path, size), chunksize=1))
            assert got == want, f"Pool differs from a single process at {size}"

            def single():
                t = time.perf_counter()
                for c in read_chunks(args.path, size):
                    sha256(c)
                return time.perf_counter() - t

            def pooled():
                t = time.perf_counter()
                for _ in pool.imap(sha256, read_chunks(args.path, size), chunksize=1):
                    pass
                return time.perf_counter() - t

            s = statistics.median(single() for _ in range(args.reps))
            p = statistics.median(pooled() for _ in range(args.reps))
            print(f"python: chunk {size}: single {s:.3f} s, Pool {p:.3f} s", file=sys.stderr)
            print(f"{size} {s} {p}", flush=True)


if __name__ == "__main__":
    main()
