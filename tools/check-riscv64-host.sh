#!/usr/bin/env bash
# Checks Ember as a riscv64 host program, from an x86_64 machine: builds
# `ember` for riscv64gc-unknown-linux-gnu (rustup target plus Debian's cross
# linker), then runs it under qemu-user (Debian's qemu-user-static) to boot
# the riscv64 test kernel on Ember's software CPU (the interpreter: compiled
# code is x86-64 only) to its userspace marker and power-off, and checks
# that an x86_64 guest is refused with a clear message.
#
# Not part of tools/test.sh: adding a rustup target downloads the standard
# library for it, which CI machines may not be able to do.
# Usage: tools/check-riscv64-host.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=(qemu-user-static gcc-riscv64-linux-gnu libc6-dev-riscv64-cross)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

target=riscv64gc-unknown-linux-gnu
rustup target add "$target"
CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_LINKER=riscv64-linux-gnu-gcc \
    cargo build --release --locked --target "$target" --bin ember
ember="target/$target/release/ember"

mapfile -t guest < <(tools/riscv-linux-guest.sh)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The host's default guest architecture is riscv64, and --accel auto picks
# the software CPU there.
qemu-riscv64-static -L /usr/riscv64-linux-gnu "$ember" run --memory 512M \
    --serial-input none --kernel "${guest[0]}" --initrd "${guest[1]}" \
    --cmdline "console=ttyS0 panic=-1" >"$log"
grep -q "EMBER-GUEST-USERSPACE-OK" "$log" || {
    echo "riscv64 host: the guest did not reach userspace" >&2
    cat "$log" >&2
    exit 1
}
echo "riscv64 host: Linux booted to userspace and powered off"

if out=$(qemu-riscv64-static -L /usr/riscv64-linux-gnu "$ember" run --arch x86_64 2>&1); then
    echo "riscv64 host: an x86_64 guest was not refused" >&2
    exit 1
fi
grep -q "x86_64 guests need an x86_64 host" <<<"$out" || {
    echo "riscv64 host: unexpected refusal: $out" >&2
    exit 1
}
echo "riscv64 host: x86_64 guests are refused: $out"
