#!/usr/bin/env bash
# Runs every check of the crate: formatting, clippy and tests with the
# default features (what users get) and with all features, the docs (also as
# docs.rs builds them), the oldest Rust declared, `cargo package`, and the
# MPI tests under mpirun with 1 to 4 ranks, and a rank killed in the middle
# of a product. Installs what they need when it is missing (OpenMPI and
# libclang from Debian's packages; rustfmt, clippy).
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

step "cargo doc, default features and feature mpi (warnings and broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --features mpi --quiet
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    # As docs.rs builds it (Cargo.toml's [package.metadata.docs.rs]): nightly, --cfg docsrs.
    RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo +nightly doc --no-deps --features mpi --quiet \
        --target-dir target/docsrs
fi

step "rust-version: cargo check on the oldest Rust that Cargo.toml declares"
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if command -v rustup >/dev/null; then
    rustup toolchain install "$msrv" --profile minimal
    cargo "+$msrv" check --all-targets --all-features --quiet --target-dir target/msrv
else
    echo "rustup not found: rust-version $msrv not checked" >&2
fi

step "cargo package (builds the crate from the packaged files alone)"
cargo package --quiet
# Every file the tests and benchmarks read (fixtures included) is in the package.
missing=$(comm -23 <(git ls-files tests benches examples src | sort) <(cargo package --list | sort))
[ -z "$missing" ] || { echo "not packaged: $missing" >&2; exit 1; }

step "cargo test (default features)"
cargo test

step "cargo test (all features; the MPI tests run here as one rank)"
cargo test --all-features

step "MPI tests and examples under mpirun"
# Root is allowed (CI runs as root); 3 ranks on 2 cores need oversubscription.
mpirun_n() { local n=$1; shift; timeout -k 30 900 mpirun --allow-run-as-root --oversubscribe -n "$n" "$@"; }
bin=$(cargo test --all-features --test mpi --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "could not find the MPI test binary" >&2; exit 1; }
# The examples, built with the test profile (optimized dependencies, shared with the tests).
cargo build --profile test --features mpi --example pmatmat_mpi --example mpilop --example bm_mpilop \
    --example dist_product --example dist_cg
examples=target/debug/examples
for n in 1 2 3 4; do
    # The main suite (Threading::Single), products from two threads (Threading::Multiple),
    # operators used and dropped after MPI_Finalize: one job each.
    for scenario in "" multiple finalized; do
        echo "-- mpirun -n $n tests/mpi.rs ${scenario:-(main suite)}"
        mpirun_n "$n" "$bin" $scenario
    done
    echo "-- mpirun -n $n examples (small sizes)"
    mpirun_n "$n" "$examples/pmatmat_mpi" 300 40
    mpirun_n "$n" "$examples/pmatmat_mpi" tests/data/sparse/csc_float64_int64_stored.npz 40
    mpirun_n "$n" "$examples/mpilop" 300 200
    mpirun_n "$n" "$examples/mpilop" tests/data/sparse/csr_float64_int32_aligned.npz
    mpirun_n "$n" "$examples/bm_mpilop" 300 32 2
    mpirun_n "$n" "$examples/bm_mpilop" sparse 3000 16 2 20
    mpirun_n "$n" "$examples/dist_product" laplace 12 2
    mpirun_n "$n" "$examples/dist_cg" laplace 10 5
done

echo "-- mpirun -n 3 tests/mpi.rs sigkill (rank 1 killed in a distributed product: the job must end, with an error)"
start=$(date +%s)
set +e
out=$(timeout -k 10 120 mpirun --allow-run-as-root --oversubscribe -n 3 "$bin" sigkill 2>&1)
rc=$?
set -e
elapsed=$(( $(date +%s) - start ))
echo "$out" | tail -n 5
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$elapsed" -gt 60 ] \
    || ! grep -q "killing itself" <<<"$out" || grep -q "the product returned\|did not finish" <<<"$out"; then
    echo "sigkill scenario: mpirun exited $rc after ${elapsed}s: the other ranks did not end promptly" >&2
    exit 1
fi
echo "   ended after ${elapsed}s (exit $rc)"

step "all checks passed"
