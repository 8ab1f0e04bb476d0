#!/usr/bin/env bash
# Prepares an x86_64 Linux guest for the ignored full-boot test and for
# trying `ember run` by hand: Debian's cloud kernel (a bzImage) and a tiny
# busybox initramfs whose init prints a marker and reboots (reboot=k ends
# the VM through the i8042 reset line).
#
# Output (cached; delete the directory to rebuild):
#   ~/.cache/ember/x86_64/vmlinuz
#   ~/.cache/ember/x86_64/initramfs.cpio.gz
#   ~/.cache/ember/x86_64/modules/{evdev,button}.ko   (the kernel builds
#       them as modules; tools/x86-test-guest.sh puts them in its initramfs)
# Usage: tools/x86-linux-guest.sh   (prints the two paths)
set -euo pipefail

cache="${EMBER_CACHE:-$HOME/.cache/ember}/x86_64"
marker="EMBER-GUEST-USERSPACE-OK"
if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initramfs.cpio.gz" ] &&
    [ -s "$cache/modules/evdev.ko" ] && [ -s "$cache/modules/button.ko" ]; then
    echo "$cache/vmlinuz"
    echo "$cache/initramfs.cpio.gz"
    exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
need=()
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
if ((${#need[@]})); then
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download -q linux-image-cloud-amd64 busybox-static >&2 || {
    $SUDO apt-get update -q >&2
    apt-get download -q linux-image-cloud-amd64 busybox-static >&2
}
# The meta package depends on the versioned image package.
image_pkg=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*-cloud-amd64' | head -1)
apt-get download -q "$image_pkg" >&2
mkdir -p kernel bb
dpkg-deb -x "${image_pkg}"_*.deb kernel
dpkg-deb -x busybox-static_*.deb bb

mkdir -p root/bin root/proc root/sys root/dev
cp bb/bin/busybox root/bin/busybox
for app in sh mount echo cat reboot poweroff sleep; do ln -s busybox "root/bin/$app"; done
cat > root/init <<INIT
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "$marker: \$(cat /proc/cpuinfo | grep -c ^processor) cpus"
reboot -f
INIT
chmod +x root/init

mkdir -p "$cache/modules"
cp kernel/boot/vmlinuz-* "$cache/vmlinuz"
# The power-button test needs evdev and the ACPI button driver, which this
# kernel has as modules (CONFIG_INPUT_EVDEV=m, CONFIG_ACPI_BUTTON=m).
for m in drivers/input/evdev.ko drivers/acpi/button.ko; do
    cp kernel/lib/modules/*/kernel/"$m" "$cache/modules/"
done
(cd root && find . | cpio -o -H newc --quiet | gzip -9) > "$cache/initramfs.cpio.gz"
echo "$cache/vmlinuz"
echo "$cache/initramfs.cpio.gz"
