#!/usr/bin/env bash
# Builds the x86_64 device-test initramfs: the same static init as the
# riscv64 one (resources/riscv64/test-init.c, `ember_test=NAME` on the
# kernel command line picks the test), compiled with the host's gcc, plus
# the modules of tools/x86-linux-guest.sh's kernel that the tests need
# (evdev, the ACPI button), which init loads first. For the ignored
# Linux tests in integration_tests/linux_boot_kvm.rs.
# Cached in ~/.cache/ember/x86_64-test/<key>, keyed by the source, this
# script and the modules.
# Usage: tools/x86-test-guest.sh   (prints the kernel and initramfs paths)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/resources/riscv64/test-init.c"
mapfile -t guest < <("$here/tools/x86-linux-guest.sh")
kernel="${guest[0]}"
mods="$(dirname "$kernel")/modules"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=(gcc libc6-dev cpio gzip)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >&2
fi

key=$(cat "$0" "$src" "$mods/evdev.ko" "$mods/button.ko" | sha256sum | cut -c1-16)
out="${EMBER_CACHE:-$HOME/.cache/ember}/x86_64-test/$key"
# Builds of one key (parallel test runs, several checkouts) take turns:
# each one empties and refills "$out.build".
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ ! -s "$out/test.cpio.gz" ]; then
    work="${out}.build"
    rm -rf "$work"
    mkdir -p "$work/root/dev" "$work/root/proc" "$work/root/sys" "$work/root/mnt" "$work/root/modules"
    gcc -static -O2 -Wall -Werror -o "$work/root/init" "$src"
    cp "$mods/evdev.ko" "$mods/button.ko" "$work/root/modules/"
    mkdir -p "$out"
    (cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/test.cpio.gz"
    rm -rf "$work"
fi
echo "$kernel"
echo "$out/test.cpio.gz"
