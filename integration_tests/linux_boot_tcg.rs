//! Boots the riscv64 test kernel (tools/riscv-linux-guest.sh builds it from
//! Debian's linux-source and caches it) on the software CPU: to the marker
//! its init prints, and through the guest's power-off to exit status 0.
//! Also the one-line accelerator message, the device-tree dump and the
//! errors for bad kernels, initrds and memory sizes.

#[path = "common/riscv_linux.rs"]
mod riscv_linux;

use std::process::Output;
use std::time::Duration;

use riscv_linux::{ember, guest};

const MARKER: &str = "EMBER-GUEST-USERSPACE-OK";

fn boot(cpus: &str) -> Output {
    let (image, initrd) = guest();
    ember(
        &[
            "run",
            "--arch",
            "riscv64",
            "--accel",
            "tcg",
            "--cpus",
            cpus,
            "--memory",
            "256M",
            "--kernel",
            image.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--serial-input",
            "none",
        ],
        Duration::from_secs(300),
    )
}

fn check_boot(cpus: &str) {
    let out = boot(cpus);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{MARKER}: {cpus} cpus");
    assert!(
        text.contains(&want),
        "no {want:?} in:\n{text}\nstderr:\n{err}"
    );
    assert!(text.contains("reboot: Power down"), "{text}");
    assert_eq!(out.status.code(), Some(0), "stderr:\n{err}");
}

#[test]
fn linux_boots_to_userspace_and_powers_off() {
    check_boot("1");
}

#[test]
fn linux_boots_with_two_harts() {
    check_boot("2");
}

#[test]
fn auto_accel_picks_the_software_cpu_and_says_so() {
    let (image, _) = guest();
    let dtb = std::env::temp_dir().join(format!("ember-auto-{}.dtb", std::process::id()));
    let out = ember(
        &[
            "run",
            "--arch",
            "riscv64",
            "--kernel",
            image.to_str().unwrap(),
            "--dump-dtb",
            dtb.to_str().unwrap(),
            "--print-mtree",
        ],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("TCG")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("software CPU"), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("riscv.virt.ram"), "{text}");
    let blob = std::fs::read(&dtb).expect("dtb written");
    let _ = std::fs::remove_file(&dtb);
    assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed], "FDT magic");
    let total = u32::from_be_bytes([blob[4], blob[5], blob[6], blob[7]]) as usize;
    assert_eq!(total, blob.len(), "totalsize matches the file");
}

#[test]
fn kvm_is_refused_for_a_foreign_architecture() {
    let (image, _) = guest();
    let out = ember(
        &[
            "run",
            "--arch",
            "riscv64",
            "--accel",
            "kvm",
            "--kernel",
            image.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("KVM cannot run riscv64 guests"), "{err}");
}

fn assert_refused(args: &[&str], needle: &str) {
    let mut full = vec!["run", "--arch", "riscv64", "--accel", "tcg"];
    full.extend_from_slice(args);
    let out = ember(&full, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not in {err}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (image, initrd) = guest();
    let image = image.to_str().unwrap();
    let initrd_s = initrd.to_str().unwrap();
    // An initramfs is not an Image.
    assert_refused(&["--kernel", initrd_s], "image");
    // Too little memory.
    assert_refused(&["--kernel", image, "--memory", "8M"], "at least 16 MiB");
    // An initrd that does not fit below the device tree.
    let big = std::env::temp_dir().join(format!("ember-big-initrd-{}", std::process::id()));
    std::fs::write(&big, vec![0u8; 40 << 20]).unwrap();
    assert_refused(
        &[
            "--kernel",
            image,
            "--memory",
            "32M",
            "--initrd",
            big.to_str().unwrap(),
        ],
        "initrd",
    );
    let _ = std::fs::remove_file(&big);
    // A missing kernel file.
    assert_refused(&["--kernel", "/nonexistent/Image"], "/nonexistent/Image");
}

/// `--timings` on the software CPU reports start-up time and the VMM's own
/// memory, as it does under KVM, besides the hart counters.
#[test]
fn timings_report_start_up_and_vmm_memory() {
    let (image, initrd) = guest();
    let out = ember(
        &[
            "run",
            "--arch",
            "riscv64",
            "--memory",
            "128M",
            "--kernel",
            image.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--serial-input",
            "none",
            "--timings",
        ],
        Duration::from_secs(300),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let value = |prefix: &str, unit: &str| -> f64 {
        let line = err
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {err}"));
        line.trim_end_matches(unit)
            .trim()
            .parse()
            .expect("a number")
    };
    let startup = value("ember: start-up to first instruction: ", " ms");
    assert!(startup > 0.0 && startup < 60_000.0, "{err}");
    let kib = value("ember: VMM resident memory excluding guest RAM: ", " KiB");
    assert!(kib > 0.0, "{err}");
    assert!(err.contains("ember: hart0: "), "{err}");
}
