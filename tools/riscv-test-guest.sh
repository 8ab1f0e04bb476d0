#!/usr/bin/env bash
# Builds the riscv64 device-test initramfs: a static init
# (resources/riscv64/test-init.c) that exercises virtio block, net, rng and
# console from inside the guest, picked with `ember_test=NAME` on the kernel
# command line. Used with the kernel from tools/riscv-linux-guest.sh.
# Cached in ~/.cache/ember/riscv64-test/<key>, keyed by the source and this
# script.
# Usage: tools/riscv-test-guest.sh   (prints the initramfs path)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/resources/riscv64/test-init.c"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=(gcc-riscv64-linux-gnu libc6-dev-riscv64-cross cpio gzip)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >&2
fi

key=$(cat "$0" "$src" | sha256sum | cut -c1-16)
out="${EMBER_CACHE:-$HOME/.cache/ember}/riscv64-test/$key"
# Builds of one key (parallel test runs, several checkouts) take turns:
# each one empties and refills "$out.build".
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -s "$out/test.cpio.gz" ]; then
    echo "$out/test.cpio.gz"
    exit 0
fi
work="${out}.build"
rm -rf "$work"
mkdir -p "$work/root/dev" "$work/root/proc" "$work/root/sys" "$work/root/mnt"
riscv64-linux-gnu-gcc -static -O2 -Wall -Werror -o "$work/root/init" "$src"
mkdir -p "$out"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/test.cpio.gz"
rm -rf "$work"
echo "$out/test.cpio.gz"
