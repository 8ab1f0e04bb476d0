#!/usr/bin/env bash
# Installs what building and testing Ember needs beyond the Rust toolchain,
# only when it is missing. Safe to run again.
set -euo pipefail

need_apt=()
# gcc links the Rust binaries and builds C parts of dependencies.
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v git >/dev/null 2>&1 || need_apt+=(git)
# GNU as and objcopy assemble the built-in guest (build.rs) and the small
# test guests.
if ! command -v as >/dev/null 2>&1 || ! command -v objcopy >/dev/null 2>&1; then
    need_apt+=(binutils)
fi

# The riscv64 instruction tests assemble their programs with the Debian
# cross binutils (the guest kernel script installs its own packages).
command -v riscv64-linux-gnu-as >/dev/null 2>&1 || need_apt+=(binutils-riscv64-linux-gnu)
command -v mkfs.ext4 >/dev/null 2>&1 && command -v debugfs >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)

if ((${#need_apt[@]})); then
    echo "== installing ${need_apt[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "== adding rustup component $component"
        rustup component add "$component"
    fi
done
