#!/usr/bin/env bash
# The riscv64 KVM test rig: runs Ember's riscv64-host KVM path for real on
# an x86_64 machine. qemu-system-riscv64 emulates a riscv64 host with the
# hypervisor extension (-cpu rv64,h=true); that host runs a small Linux 6.1
# with KVM (resources/riscv64/kvm-host.config), and its /init
# (resources/riscv64/rig-init.c) runs the integration tests
# integration_tests/riscv_kvm.rs against /dev/kvm, each starting a static
# riscv64 `ember` that boots the riscv64 test guests under KVM.
#
# Steps: install what is missing; build the host kernel Image (cached in
# ~/.cache/ember/riscv64-kvm-host/<key>; 3.5-4 minutes cold on two cores);
# cross-build `ember` and the test binary (static, release; about a minute
# from scratch, 40 s after a change in src/); get the guest kernel and
# initramfs (tools/riscv-linux-guest.sh, cached; its first build is long)
# and the test initramfs (tools/riscv-test-guest.sh); make an ext4 image
# for the blk test; pack everything into the host's initramfs; boot it
# under a timeout and check the verdict on its console. With everything
# cached and built, a run takes a few seconds plus the tests.
#
# Usage: tools/riscv-kvm-rig.sh [test-name-filter] [test harness args...]
#   e.g. tools/riscv-kvm-rig.sh kvm_device_is_present_and_ember_runs
#        tools/riscv-kvm-rig.sh --bench   (the riscv64 KVM figures: MMIO
#        exit round trip against a bare kvm-ioctls loop, Linux boot on KVM
#        against the software CPU, start-up and VMM memory; benches/
#        kvm_exits_riscv.rs; not part of tools/test.sh)
#        tools/riscv-kvm-rig.sh boots --skip two_vcpus
#        tools/riscv-kvm-rig.sh --aia [filter...]   (in-kernel AIA, below)
# The arguments go to the test binary as given (one word each: they travel
# on the host kernel's command line). The console log is kept in
# target/riscv-kvm-rig/console.log.
# Exits 0 only when the test binary reported "test result: ok" with at
# least one test passed and the host's init printed "EMBER-RIG-EXIT 0".
# Environment: EMBER_RIG_TIMEOUT (seconds for the whole qemu run, default
# 1200), EMBER_CACHE (cache root, default ~/.cache/ember).
#
# --aia: the same tests on a host whose KVM has the AIA device
# (KVM_DEV_TYPE_RISCV_AIA), for `ember run --irqchip aia`. Linux 6.1 has
# none, so this host is Linux 6.12 (linux-source-6.12; tinyconfig +
# kvm-host.config + kvm-host-aia.config, cached in
# ~/.cache/ember/riscv64-kvm-host-6.12/<key>, about 5 minutes cold), under
#   qemu-system-riscv64 -M virt,aia=aplic-imsic,aia-guests=N
#                       -cpu rv64,h=true,x-ssaia=true,x-smaia=true
# (harts with Smaia/Ssaia, an APLIC in MSI mode, per-hart IMSICs with N
# guest interrupt files each; N = EMBER_RIG_AIA_GUESTS, 0..7, default 1).
# The host's console is the SBI console (hvc0): see kvm-host-aia.config
# for qemu 7.2's APLIC bug that rules out ttyS0. The tests get
# EMBER_RIG_AIA=1 (rig-init.c, from `ember_rig_aia=1` on the host's
# command line), and EMBER_RIG_KERNEL is the 6.12 guest Image of
# tools/riscv-linux-guest-6.12.sh, which has the AIA guest drivers as well
# as the PLIC; the initramfs images are the usual ones. Its files are in
# target/riscv-kvm-rig-aia/. Before the tests, the host's init prints its
# kernel's lines about KVM and the AIA irqchips, KVM's irqchip
# capabilities and the default config of a freshly created AIA device;
# the run fails unless the host's KVM reported "AIA available".
#
# Everything runs from main, called on the last line together with exit,
# so bash has read the whole script before any of it runs: editing it while
# a rig is running cannot change what that run does.
set -euo pipefail
# Errors inside $(...) end the script too (bash does not pass -e on).
shopt -s inherit_errexit

here=$(cd "$(dirname "$0")/.." && pwd)
target=riscv64gc-unknown-linux-gnu
fragment="$here/resources/riscv64/kvm-host.config"
aia_fragment="$here/resources/riscv64/kvm-host-aia.config"
cache="${EMBER_CACHE:-$HOME/.cache/ember}"
timeout_s="${EMBER_RIG_TIMEOUT:-1200}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
# mkfs.ext4 lives in sbin, which a user's PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

say() { echo "riscv-kvm-rig: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

# Seconds since `since` (an earlier $SECONDS), for the phase timings.
took() { echo "$((SECONDS - $1)) s"; }

# Installs what is missing: the packages every rig needs, and those named
# as arguments.
install_missing() {
    local pkgs=(qemu-system-misc linux-source-6.1 gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
        binutils-riscv64-linux-gnu make bc flex bison cpio xz-utils gzip e2fsprogs "$@")
    local missing=() p
    for p in "${pkgs[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        $SUDO apt-get update -q >&2
        # `qemu-utils-`: qemu-system-misc would pull Debian's qemu-utils 7.2,
        # which conflicts with the newer qemu-utils some machines have.
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" qemu-utils- >&2
    fi
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target" >&2
    fi
}

# Fails loudly unless every setting of fragment $2 survived in config $1:
# a dependency missing from the fragment turns =y into "is not set"
# without a word from kconfig.
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
        say "the host kernel config lost settings of $fragment:"
        printf '    %s\n' "${bad[@]}" >&2
        die "fix the fragment (add the missing dependencies) and run again"
    fi
}

# Builds the host kernel into $1 (working in $1.build). The cache key
# hashes this function's and check_fragment's text (not the whole script,
# so that editing the rest of the rig does not rebuild the kernel), the
# fragment and the linux-source package version.
build_host_kernel() {
    local out=$1 work=$1.build
    rm -rf "$work" "$out"
    mkdir -p "$work"
    tar -xf /usr/src/linux-source-6.1.tar.xz -C "$work"
    (
        cd "$work/linux-source-6.1"
        export ARCH=riscv CROSS_COMPILE=riscv64-linux-gnu-
        make -s tinyconfig >&2
        scripts/kconfig/merge_config.sh -m .config "$fragment" >&2
        make -s olddefconfig >&2
        check_fragment .config "$fragment"
        make -s -j"$(nproc)" Image >&2
        mkdir -p "$out.new"
        cp arch/riscv/boot/Image "$out.new/Image"
        cp .config "$out.new/config"
    )
    # Only a complete build becomes the cached result.
    mv "$out.new" "$out"
    rm -rf "$work"
}

# Writes to $3 the settings of fragment $1 overridden by fragment $2: the
# lines of $1 whose option $2 also sets are dropped (merge_config.sh would
# let the later one win anyway; dropping them lets check_fragment check
# the result as one list).
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

# Builds the --aia host kernel (6.12, kvm-host.config overridden by
# kvm-host-aia.config) into $1, like build_host_kernel. A function of its
# own so that build_host_kernel's text, which the 6.1 host's cache key
# hashes, stays as it was.
build_host_kernel_aia() {
    local out=$1 work=$1.build
    rm -rf "$work" "$out" "$out.new"
    mkdir -p "$work"
    tar -xf /usr/src/linux-source-6.12.tar.xz -C "$work"
    merge_fragments "$fragment" "$aia_fragment" "$work/fragment.config"
    (
        cd "$work/linux-source-6.12"
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
}

# Prints the host kernel Image's path, building it once per key: the 6.1
# host, or with $1 = 1 the 6.12 one for --aia. Keys hash the fragments,
# the text of the functions that build (not the whole script, so that
# editing the rest of the rig does not rebuild the kernel) and the
# linux-source package version.
host_kernel() {
    local aia=$1 src=linux-source-6.1 dir=riscv64-kvm-host
    local build=build_host_kernel fragments=("$fragment") functions=(build_host_kernel check_fragment)
    if ((aia)); then
        src=linux-source-6.12
        dir=riscv64-kvm-host-6.12
        build=build_host_kernel_aia
        fragments+=("$aia_fragment")
        functions=(build_host_kernel_aia merge_fragments check_fragment)
    fi
    local version key out
    version=$(dpkg-query -W -f='${Version}' "$src")
    key=$( (
        cat "${fragments[@]}"
        declare -f "${functions[@]}"
        echo "$version"
    ) | sha256sum | cut -c1-16)
    out="$cache/$dir/$key"
    mkdir -p "$(dirname "$out")"
    # Builds of one key (parallel runs, several checkouts) take turns.
    exec 8>"$out.lock"
    flock 8
    if [ ! -s "$out/Image" ]; then
        local t=$SECONDS
        say "building the host kernel ($src $version) in $out.build"
        "$build" "$out"
        say "host kernel built in $(took "$t")"
    fi
    exec 8>&-
    echo "$out/Image"
}

# Cross-builds ember and the riscv_kvm test binary (static, release) and
# prints their paths, one a line.
build_ember() {
    grep -q 'path = "integration_tests/riscv_kvm.rs"' "$here/Cargo.toml" ||
        die "Cargo.toml has no test target for integration_tests/riscv_kvm.rs (autotests = false); add:
[[test]]
name = \"riscv_kvm\"
path = \"integration_tests/riscv_kvm.rs\""
    # Static binaries: the rig's host has no libc. The flags go in the
    # per-target variable, which leaves the x86_64 build (and its cache)
    # alone; RUSTFLAGS would override it, so it is unset here.
    local env=(env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS
        CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_LINKER=riscv64-linux-gnu-gcc
        CARGO_TARGET_RISCV64GC_UNKNOWN_LINUX_GNU_RUSTFLAGS=-Ctarget-feature=+crt-static)
    (cd "$here" && "${env[@]}" cargo build --release --locked --target "$target" --bin ember >&2)
    local json test_bin
    json=$(cd "$here" && "${env[@]}" cargo test --release --locked --no-run --target "$target" \
        --test riscv_kvm --message-format=json)
    test_bin=$(grep '"name":"riscv_kvm"' <<<"$json" | grep -o '"executable":"[^"]*"' |
        tail -n 1 | cut -d'"' -f4)
    [ -n "$test_bin" ] && [ -x "$test_bin" ] || die "cargo did not report the riscv_kvm test binary"
    local bin
    for bin in "$here/target/$target/release/ember" "$test_bin"; do
        # A dynamic binary would die in the rig with a confusing "not found".
        if riscv64-linux-gnu-readelf -l "$bin" | grep -q 'program interpreter'; then
            die "$bin is not static"
        fi
    done
    echo "$here/target/$target/release/ember"
    echo "$test_bin"
    if ((bench)); then
        json=$(cd "$here" && "${env[@]}" cargo bench --locked --no-run --target "$target" \
            --bench kvm_exits --message-format=json)
        grep '"name":"kvm_exits"' <<<"$json" | grep -o '"executable":"[^"]*"' |
            tail -n 1 | cut -d'"' -f4
    fi
}

main() {
    local started=$SECONDS t bench=0 aia=0
    while (($#)); do
        case "$1" in
        --bench) bench=1 ;;
        --aia) aia=1 ;;
        *) break ;;
        esac
        shift
    done
    local aia_guests="${EMBER_RIG_AIA_GUESTS:-1}"
    if ((aia)); then
        [[ "$aia_guests" =~ ^[0-7]$ ]] ||
            die "EMBER_RIG_AIA_GUESTS must be 0..7 (qemu's aia-guests), not '$aia_guests'"
        install_missing linux-source-6.12
    else
        install_missing
    fi

    t=$SECONDS
    local kernel
    kernel=$(host_kernel "$aia")
    say "host kernel: $kernel ($(took "$t"))"

    t=$SECONDS
    local bins
    mapfile -t bins < <(build_ember)
    ((${#bins[@]} == 2 + bench)) || die "building ember failed"
    say "ember: ${bins[0]}"
    say "tests: ${bins[1]} ($(took "$t"))"

    t=$SECONDS
    local guest test_initrd
    mapfile -t guest < <("$here/tools/riscv-linux-guest.sh")
    ((${#guest[@]} == 2)) || die "tools/riscv-linux-guest.sh failed"
    if ((aia)); then
        # The 6.12 Image (AIA guest drivers) replaces the 6.1 one; the
        # initramfs stays.
        guest[0]=$("$here/tools/riscv-linux-guest-6.12.sh")
        [ -s "${guest[0]}" ] || die "tools/riscv-linux-guest-6.12.sh failed"
    fi
    test_initrd=$("$here/tools/riscv-test-guest.sh")
    say "guest: ${guest[*]} $test_initrd ($(took "$t"))"

    # The rig's files live in target/riscv-kvm-rig/ (-aia/ for --aia) of
    # this checkout; runs in one checkout take turns.
    local dir="$here/target/riscv-kvm-rig"
    ((aia == 0)) || dir+=-aia
    mkdir -p "$dir"
    exec 9>"$dir/lock"
    flock 9
    local root="$dir/root" log="$dir/console.log"
    rm -rf "$root" "$dir/disk" "$dir/rig.cpio.gz"
    mkdir -p "$root/rig/guest" "$root/dev" "$root/proc" "$root/sys" "$root/tmp" "$dir/disk"

    t=$SECONDS
    riscv64-linux-gnu-gcc -static -O2 -Wall -Werror -o "$root/init" \
        "$here/resources/riscv64/rig-init.c"
    cp "${bins[0]}" "$root/rig/ember"
    cp "${bins[1]}" "$root/rig/riscv_kvm"
    ((bench == 0)) || cp "${bins[2]}" "$root/rig/kvm_exits"
    cp "${guest[0]}" "$root/rig/guest/Image"
    cp "${guest[1]}" "$root/rig/guest/initramfs.cpio.gz"
    cp "$test_initrd" "$root/rig/guest/test.cpio.gz"
    # The blk test's disk: ext4 with in.txt, whose content is new each run
    # so that a stale image cannot pass; the test reads the expected text
    # from /rig/in.txt.
    echo "rig-in-$(date +%s)-$RANDOM$RANDOM" >"$dir/disk/in.txt"
    cp "$dir/disk/in.txt" "$root/rig/in.txt"
    truncate -s 16M "$root/rig/disk.ext4"
    mkfs.ext4 -q -F -d "$dir/disk" "$root/rig/disk.ext4" >&2
    # gzip -1: the host kernel unpacks this under emulation at every run;
    # better compression saves little there.
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir/rig.cpio.gz"
    say "rig initramfs: $dir/rig.cpio.gz, $(du -h "$dir/rig.cpio.gz" | cut -f1) ($(took "$t"))"

    local machine=virt cpu=rv64,h=true append="console=ttyS0"
    if ((aia)); then
        # aia=aplic-imsic gives the harts Smaia/Ssaia in qemu 7.2 by
        # itself; the CPU properties say so explicitly. console=hvc0: see
        # kvm-host-aia.config. panic=-1: a host panic ends the run at once
        # (-no-reboot) instead of at the timeout.
        machine+=",aia=aplic-imsic,aia-guests=$aia_guests"
        cpu+=",x-ssaia=true,x-smaia=true"
        append="console=hvc0 panic=-1 ember_rig_aia=1"
    fi
    ((bench == 0)) || append+=" ember_rig_bench=1"
    append+=" --"
    (($# == 0)) || append+=" $*"
    say "booting the riscv64 KVM host (timeout ${timeout_s} s): console in $log"
    t=$SECONDS
    local status
    # stdin from /dev/null: qemu must not take over a terminal (or a
    # test runner's stdin); -no-reboot turns a host kernel panic into an
    # exit instead of a boot loop.
    set +e
    timeout -k 10 "$timeout_s" qemu-system-riscv64 -M "$machine" -cpu "$cpu" -smp 2 -m 2G \
        -nographic -no-reboot -kernel "$kernel" -initrd "$dir/rig.cpio.gz" \
        -append "$append" </dev/null 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    say "qemu ran $(took "$t") (status $status); the whole rig $(took "$started")"
    if ((status == 124 || status == 137)); then
        die "TIMEOUT: the rig did not finish within ${timeout_s} s (EMBER_RIG_TIMEOUT); console: $log"
    fi
    ((status == 0)) || die "qemu-system-riscv64 failed with status $status; console: $log"
    if ((aia)); then
        local aia_line
        aia_line=$(tr -d '\r' <"$log" | grep -aoE 'kvm \[[0-9]+\]: AIA available with [0-9]+ guest external interrupts' |
            tail -n 1 || true)
        [ -n "$aia_line" ] ||
            die "the host's KVM did not report \"AIA available\" (no AIA device; check the qemu options and kvm-host-aia.config); console: $log"
        say "host: $aia_line (qemu -M $machine -cpu $cpu)"
    fi
    # Matched anywhere in a line, not anchored: a kernel message printed at
    # the same moment can share a console line with them.
    local result exit_line
    result=$(tr -d '\r' <"$log" | grep -aoE 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' |
        tail -n 1 || true)
    exit_line=$(tr -d '\r' <"$log" | grep -aoE 'EMBER-RIG-EXIT -?[0-9]+' | tail -n 1 || true)
    if ((bench)); then
        [ "$exit_line" = "EMBER-RIG-EXIT 0" ] ||
            die "the benchmark failed (${exit_line:-no EMBER-RIG-EXIT line}); console: $log"
        say "benchmark done:"
        tr -d '\r' <"$log" | grep -a '^riscv64 ' >&2 || true
        return 0
    fi
    if [ "$exit_line" != "EMBER-RIG-EXIT 0" ]; then
        die "the tests did not pass (${result:-no test result}; ${exit_line:-no EMBER-RIG-EXIT line}); console: $log"
    fi
    if ! grep -qE '^test result: ok\. [1-9][0-9]* passed' <<<"$result"; then
        die "no test ran and passed (${result:-no test result}); check the filter; console: $log"
    fi
    say "PASS: $result"
}

main "$@"; exit $?
