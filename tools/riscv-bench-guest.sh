#!/usr/bin/env bash
# Builds the riscv64 benchmark initramfs: a static init that counts the
# primes below N (N from the kernel command line, `primes=N`, default
# 200000) by trial division, prints
#   EMBER-PRIMES: count=C n=N ms=T
# with T the guest-measured compute time (CLOCK_MONOTONIC), then powers off.
# Used with the kernel from tools/riscv-linux-guest.sh to time a CPU-bound
# guest on Ember and on qemu-system-riscv64. Cached like that script, keyed
# by this script's contents.
# Usage: tools/riscv-bench-guest.sh   (prints the initramfs path)
set -euo pipefail

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

key=$(sha256sum "$0" | cut -c1-16)
out="${EMBER_CACHE:-$HOME/.cache/ember}/riscv64-bench/$key"
# Builds of one key (parallel test runs, several checkouts) take turns:
# each one empties and refills "$out.build".
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -s "$out/primes.cpio.gz" ]; then
    echo "$out/primes.cpio.gz"
    exit 0
fi
work="${out}.build"
rm -rf "$work"
mkdir -p "$work/root/dev" "$work/root/proc"
cat > "$work/init.c" <<'INIT'
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/reboot.h>

static int is_prime(unsigned long n) {
    if (n < 2) return 0;
    for (unsigned long d = 2; d * d <= n; d++)
        if (n % d == 0) return 0;
    return 1;
}

int main(void) {
    const char *arg = getenv("primes");
    unsigned long n = arg ? strtoul(arg, NULL, 10) : 200000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    unsigned long count = 0;
    for (unsigned long i = 0; i < n; i++)
        count += is_prime(i);
    clock_gettime(CLOCK_MONOTONIC, &b);
    long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
    printf("EMBER-PRIMES: count=%lu n=%lu ms=%ld\n", count, n, ms);
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
INIT
riscv64-linux-gnu-gcc -static -O2 -o "$work/root/init" "$work/init.c"
mkdir -p "$out"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/primes.cpio.gz"
rm -rf "$work"
echo "$out/primes.cpio.gz"
