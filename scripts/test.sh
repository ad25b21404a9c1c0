#!/usr/bin/env bash
# Runs every check of the crate: formatting, clippy and tests with the
# default features (what users get) and with all features, the docs, and the
# MPI tests under mpirun with 1, 2 and 3 ranks. Installs what they need when it
# is missing (OpenMPI and libclang from Debian's packages; rustfmt, clippy).
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, default features)"
cargo clippy --all-targets -- -D warnings

step "cargo clippy (all targets, all features)"
cargo clippy --all-targets --all-features -- -D warnings

step "cargo doc (all features; broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet

step "cargo test (default features)"
cargo test

step "cargo test (all features; the MPI tests run here as one rank)"
cargo test --all-features

step "MPI tests under mpirun"
bin=$(cargo test --all-features --test mpi --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "could not find the MPI test binary" >&2; exit 1; }
for n in 1 2 3; do
    echo "-- mpirun -n $n"
    # Root is allowed (CI runs as root); 3 ranks on 2 cores need oversubscription.
    timeout 900 mpirun --allow-run-as-root --oversubscribe -n "$n" "$bin"
done

step "all checks passed"
