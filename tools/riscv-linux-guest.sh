#!/usr/bin/env bash
# Builds the riscv64 test guest for the software CPU: a small Linux Image
# from Debian's linux-source with the Debian cross compiler (config fragment
# resources/riscv64/guest.config on top of tinyconfig), and an initramfs
# whose static init prints a marker and powers off.
#
# The build takes 15-25 minutes on two cores, so the result is cached in
# ~/.cache/ember/riscv64/<key>/, keyed by the fragment, this script and the
# kernel source version.
# Usage: tools/riscv-linux-guest.sh   (prints the Image and initramfs paths)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
fragment="$here/resources/riscv64/guest.config"
marker="EMBER-GUEST-USERSPACE-OK"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=(linux-source-6.1 gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu libc6-dev-riscv64-cross
      make bc flex bison cpio xz-utils gzip)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >&2
fi

src_tar=$(ls /usr/src/linux-source-6.1.tar.xz)
version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (cat "$fragment" "$0"; echo "$version") | sha256sum | cut -c1-16)
out="${EMBER_CACHE:-$HOME/.cache/ember}/riscv64/$key"
# Builds of one key (parallel test runs, several checkouts) take turns:
# each one empties and refills "$out.build".
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -s "$out/Image" ] && [ -s "$out/initramfs.cpio.gz" ]; then
    echo "$out/Image"
    echo "$out/initramfs.cpio.gz"
    exit 0
fi

work="${out}.build"
rm -rf "$work"
mkdir -p "$work"
tar -xf "$src_tar" -C "$work"
cd "$work/linux-source-6.1"
export ARCH=riscv CROSS_COMPILE=riscv64-linux-gnu-
make -s tinyconfig >&2
scripts/kconfig/merge_config.sh -m .config "$fragment" >&2
make -s olddefconfig >&2
make -s -j"$(nproc)" Image >&2

# The initramfs: one static init.
mkdir -p "$work/root/dev" "$work/root/proc"
cat > "$work/init.c" <<INIT
#include <stdio.h>
#include <termios.h>
#include <unistd.h>
#include <sys/reboot.h>
int main(void) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    printf("$marker: %ld cpus\n", cpus);
    fflush(stdout);
    /* The marker must leave the UART before the power goes: the console
     * driver sends it from interrupts, after write() has returned. */
    tcdrain(1);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
INIT
riscv64-linux-gnu-gcc -static -Os -o "$work/root/init" "$work/init.c"
mkdir -p "$out"
cp arch/riscv/boot/Image "$out/Image"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initramfs.cpio.gz"
cp .config "$out/config"
rm -rf "$work"
echo "$out/Image"
echo "$out/initramfs.cpio.gz"
