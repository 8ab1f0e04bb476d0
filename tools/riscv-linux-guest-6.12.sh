#!/usr/bin/env bash
# Builds the riscv64 test guest kernel on Linux 6.12: the Image for Ember's
# in-kernel AIA (APLIC, APLIC MSI and IMSIC drivers, which Linux has since
# 6.10) that still has the PLIC and everything the 6.1 guest of
# tools/riscv-linux-guest.sh has, so the same initramfs images run on it.
# Debian's linux-source-6.12 with the Debian cross compiler: `make
# tinyconfig`, then resources/riscv64/guest.config, then
# resources/riscv64/guest-aia.config (whose settings replace the same ones
# of guest.config); every line of that merged list is checked after
# `make olddefconfig`.
#
# A separate script rather than a variant of tools/riscv-linux-guest.sh:
# that script's cache key hashes the script itself, and the 6.1 guest
# should not be rebuilt because a 6.12 one was added.
#
# About 3 minutes on two cores (5 with extraction), so the result is cached
# in ~/.cache/ember/riscv64-6.12/<key>/ (EMBER_CACHE overrides the root),
# keyed by both fragments, this script and the kernel source version.
# Usage: tools/riscv-linux-guest-6.12.sh   (prints the Image's path)
#   The initramfs images: tools/riscv-linux-guest.sh (second line),
#   tools/riscv-test-guest.sh.
#
# Everything runs from main, called on the last line together with exit,
# so bash has read the whole script before any of it runs.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "$0")/.." && pwd)
base="$here/resources/riscv64/guest.config"
fragment="$here/resources/riscv64/guest-aia.config"
src=linux-source-6.12

say() { echo "riscv-linux-guest-6.12: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

install_missing() {
    local SUDO="" pkgs=("$src" gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu make bc flex bison
        xz-utils) missing=() p
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    for p in "${pkgs[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        $SUDO apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >&2
    fi
}

# Writes to $3 the settings of fragment $1 overridden by fragment $2: the
# lines of $1 whose option $2 also sets are dropped (merge_config.sh would
# let the later one win anyway; dropping them lets the result be checked
# as one list).
merge_fragments() {
    local keys
    keys=$(grep -oE '^CONFIG_[A-Za-z0-9_]+=' "$2" | paste -sd'|')
    [ -n "$keys" ] || die "$2 sets nothing"
    {
        echo "# $1, without the options that $2 sets"
        grep -vE "^($keys)" "$1"
        echo "# $2"
        cat "$2"
    } >"$3"
}

# Fails loudly unless every setting of fragment $2 survived in config $1:
# a dependency missing from the fragment turns =y into "is not set"
# without a word from kconfig. (The same check as tools/riscv-kvm-rig.sh.)
check_fragment() {
    local config=$1 fragment=$2 line key value have bad=()
    while IFS= read -r line; do
        case "$line" in '' | '#'*) continue ;; esac
        key=${line%%=*}
        value=${line#*=}
        have=$(grep -E "^($key=|# $key is not set)" "$config" || true)
        if [ "$value" = n ]; then
            [ -z "$have" ] || [ "$have" = "# $key is not set" ] || bad+=("$line (got: $have)")
        else
            [ "$have" = "$line" ] || bad+=("$line (got: ${have:-nothing})")
        fi
    done <"$fragment"
    if ((${#bad[@]})); then
        say "the guest kernel config lost settings of $fragment:"
        printf '    %s\n' "${bad[@]}" >&2
        die "fix resources/riscv64/guest-aia.config (add the missing dependencies) and run again"
    fi
}

main() {
    install_missing
    local version key out work t=$SECONDS
    version=$(dpkg-query -W -f='${Version}' "$src")
    key=$( (
        cat "$base" "$fragment" "$0"
        echo "$version"
    ) | sha256sum | cut -c1-16)
    out="${EMBER_CACHE:-$HOME/.cache/ember}/riscv64-6.12/$key"
    # Builds of one key (parallel test runs, several checkouts) take turns:
    # each one empties and refills "$out.build".
    mkdir -p "$(dirname "$out")"
    exec 9>"$out.lock"
    flock 9
    if [ -s "$out/Image" ]; then
        echo "$out/Image"
        return 0
    fi

    work="$out.build"
    rm -rf "$work" "$out" "$out.new"
    mkdir -p "$work"
    say "building the 6.12 guest kernel ($src $version) in $work"
    tar -xf "/usr/src/$src.tar.xz" -C "$work"
    merge_fragments "$base" "$fragment" "$work/fragment.config"
    (
        cd "$work/$src"
        export ARCH=riscv CROSS_COMPILE=riscv64-linux-gnu-
        make -s tinyconfig >&2
        scripts/kconfig/merge_config.sh -m .config "$work/fragment.config" >&2
        make -s olddefconfig >&2
        check_fragment .config "$work/fragment.config"
        make -s -j"$(nproc)" Image >&2
        mkdir -p "$out.new"
        cp arch/riscv/boot/Image "$out.new/Image"
        cp .config "$out.new/config"
        cp "$work/fragment.config" "$out.new/fragment.config"
    )
    # Only a complete build becomes the cached result.
    mv "$out.new" "$out"
    rm -rf "$work"
    say "built in $((SECONDS - t)) s"
    echo "$out/Image"
}

main "$@"; exit $?
