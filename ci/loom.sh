#!/usr/bin/env bash
# Model-checks the SPSC ring (tests/loom_ring.rs), the futex wake protocol (tests/loom_wake.rs)
# and the MPMC queue's turn protocol (tests/loom_queue.rs) with loom. Reproducible by hand: `bash ci/loom.sh`.
# Loom cannot follow a fork, so this checks the ring algorithm over heap memory in one process;
# src/shm/ring/cross_process.rs (a unit test: `ring` is public only under --cfg loom) checks it across a real fork.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
# Its own target dir: `--cfg loom` rebuilds every crate, and must not thrash the shared one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
echo "== loom: RUSTFLAGS=\"$RUSTFLAGS\" LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS" \
  "LOOM_MAX_BRANCHES=${LOOM_MAX_BRANCHES:-default} CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
echo "== loom: $(rustc --version)"
start=$(date +%s)
cargo test --release --test loom_ring --test loom_wake --test loom_queue --no-run
built=$(date +%s)
cargo test --release --test loom_ring -- --test-threads=1
cargo test --release --test loom_wake -- --test-threads=1
cargo test --release --test loom_queue -- --test-threads=1
end=$(date +%s)
echo "== loom: build $((built - start)) s, models $((end - built)) s"
