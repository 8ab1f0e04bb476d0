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

# The software CPU's instruction tests once more with each other compile
# policy (the run above uses the default, compiling hot blocks): every
# block interpreted, and every block compiled to host code before it runs.
for policy in off eager; do
    echo "== instruction tests with EMBER_TEST_TCG_JIT=$policy"
    EMBER_TEST_TCG_JIT=$policy cargo test --locked --test tcg_instructions
done

# Ember on a riscv64 host under KVM: an emulated riscv64 host with the
# hypervisor extension runs integration_tests/riscv_kvm.rs (builds a host
# kernel once, about 3.5 minutes, then a run takes seconds plus the cross
# build).
echo "== riscv64 KVM rig"
tools/riscv-kvm-rig.sh

# The same tests on a Linux 6.12 host whose KVM has the in-kernel AIA
# (QEMU's aia=aplic-imsic), with a 6.12 guest: `--irqchip auto` picks the
# AIA there. Builds two more kernels once (about 3 and 4-5 minutes).
echo "== riscv64 KVM rig with the in-kernel AIA"
tools/riscv-kvm-rig.sh --aia

echo "== tools/test.sh: all checks passed"
