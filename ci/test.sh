#!/usr/bin/env bash
# The checks CI runs, in order. Reproducible by hand: `bash ci/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add clippy rustfmt >/dev/null 2>&1 || true
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test --workspace (the README's test command)"
cargo test --workspace
echo "== benches compile and run once in test mode"
cargo test --workspace --benches
echo "== loom models of the ring"
bash ci/loom.sh
