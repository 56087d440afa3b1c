#!/usr/bin/env python3
"""Seed 002 ("实例2：利用进程池遍历目录"), the Python program `shmpool bench hash` compares with.

Walks a tree with os.walk, SHA-512s every file in multiprocessing.Pool(2) through
imap_unordered(mark, files, 20) with 8196-byte reads, and prints every path and digest, as the
seed does. Two changes only: the directory comes from the command line, and a file that cannot be
opened (mark returns None) is left out instead of making dict() fail.

Usage: python3 hash_seed.py DIR > /dev/null
"""
import hashlib
import multiprocessing
import os
import sys

POOLSIZE = 2
BUFSIZE = 8196


def mark(filename):
    try:
        f = open(filename, "rb")
    except IOError:
        return None
    digest = hashlib.sha512()
    while True:
        chunk = f.read(BUFSIZE)
        if not chunk:
            break
        digest.update(chunk)
    f.close()
    return filename, digest.digest()


def build_map(dir):
    pool = multiprocessing.Pool(POOLSIZE)
    all_files = (os.path.join(root, name)
                 for root, dirs, files in os.walk(dir)
                 for name in files)
    map = dict(r for r in pool.imap_unordered(mark, all_files, 20) if r is not None)
    pool.close()
    return map


if __name__ == "__main__":
    digest_map = build_map(sys.argv[1])
    for item in digest_map:
        print("文件目录：", item)
        print("SHA512摘要值：", digest_map[item])
    print(len(digest_map))
