#!/usr/bin/env bash
# Runs the software-CPU benchmarks against Debian's qemu-system-riscv64
# (installed here if missing, with OpenSBI, which QEMU's virt machine needs
# as its M-mode firmware).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=()
for p in qemu-system-misc opensbi; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
cargo bench --bench tcg_boot
cargo bench --bench virtio_io
