#!/usr/bin/env bash
# The checks CI runs, in order. Reproducible by hand: `bash ci/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add clippy rustfmt >/dev/null 2>&1 || true
# System packages: libssl-dev (the `openssl` crate, SHA-512 of `shmpool hash`) and b3sum (the
# reference `shmpool hash -a blake3` is tested against), and gdb (a test that hangs has its
# watchdog print every thread's backtrace before it aborts; without gdb only /proc's view).
# Installed only when missing; gdb is optional (a failed install does not stop the run).
missing=()
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v b3sum >/dev/null 2>&1 || missing+=(b3sum)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v gdb >/dev/null 2>&1; then
    echo "== apt-get install gdb"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdb >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdb >/dev/null; } ||
        echo "gdb not installed: a hung test's watchdog will show /proc's view only"
fi
# The `mpi` feature (issue 11) builds rsmpi over Debian's OpenMPI (bindgen needs libclang).
if ! command -v mpirun >/dev/null 2>&1 || ! dpkg -s libopenmpi-dev libclang-dev >/dev/null 2>&1; then
    echo "== apt-get install openmpi-bin libopenmpi-dev libclang-dev"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test --workspace (the README's test command)"
cargo test --workspace
echo "== the cluster pool over MPI ranks and shmpool hash --mpi (--features mpi): lints, tests under mpirun -n 3"
cargo clippy -p shmpool -p shmpool-tools --all-targets --features shmpool/mpi,shmpool-tools/mpi -- -D warnings
cargo test -p shmpool --features mpi --lib cluster::
cargo test -p shmpool --features mpi --doc cluster
cargo test -p shmpool --features mpi --test cluster
cargo test -p shmpool-tools --features mpi --test hash_mpi
echo "== benches compile and run once in test mode"
cargo test --workspace --benches
echo "== loom models of the ring"
bash ci/loom.sh
echo "== soak: 30 s of apply/map/imap/bulk/queue with kills, panics and timeouts; RSS and fds must not grow"
cargo run --release --example soak -- --seconds 30
