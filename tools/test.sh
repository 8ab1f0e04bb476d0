#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property and integration
# tests, and a quick run of the benchmarks so they keep compiling and working.
# Run from anywhere: tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tools/setup.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked --all-targets

echo "== tools/test.sh: all checks passed"
