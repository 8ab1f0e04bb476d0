//! Boots a real Linux kernel to userspace under KVM. Ignored by default:
//! on the nested, software-assisted KVM of the CI machines a full boot takes
//! minutes and can stop on instructions the nested emulator lacks. On a host
//! with hardware KVM run:
//!
//!     tools/x86-linux-guest.sh
//!     cargo test --release --test linux_boot_kvm -- --ignored
//!
//! The tests:
//! * `linux_boots_to_userspace`, `linux_boots_with_two_cpus`: the busybox
//!   initramfs of `tools/x86-linux-guest.sh` prints a marker and reboots.
//! * `the_acpi_power_button_powers_a_linux_guest_off`: the device-test
//!   initramfs of `tools/x86-test-guest.sh` (the riscv64 test init compiled
//!   for x86_64, loading evdev and the ACPI button driver) waits for
//!   KEY_POWER; the control API's `power_button` raises the GED interrupt,
//!   whose `_EVT` notifies the PNP0C0C button; the guest powers off and
//!   `ember run` ends with status 0.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "EMBER-GUEST-USERSPACE-OK";

fn guest() -> (String, String) {
    prepared("tools/x86-linux-guest.sh")
}

/// Runs a guest-preparing script; returns the kernel and initramfs paths
/// it prints.
fn prepared(script: &str) -> (String, String) {
    let out = Command::new(script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run tools/x86-linux-guest.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    (
        lines.next().unwrap().to_string(),
        lines.next().unwrap().to_string(),
    )
}

fn boot(cpus: &str) {
    let (kernel, initrd) = guest();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "run",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--memory",
            "512M",
            "--cpus",
            cpus,
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ember");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        console.contains(&format!("{MARKER}: {cpus} cpus")),
        "{console}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "guest reboot should end ember with status 0"
    );
}

#[test]
#[ignore = "needs hardware KVM: a full Linux boot is too slow on nested KVM"]
fn linux_boots_to_userspace() {
    boot("1");
}

#[test]
#[ignore = "needs hardware KVM: a full Linux boot is too slow on nested KVM"]
fn linux_boots_with_two_cpus() {
    boot("2");
}

/// The console log so far.
fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Polls the console log until it contains `marker` (a boot on nested KVM
/// takes minutes, hence the patience); fails early if Ember has ended.
fn wait_for_log(child: &mut std::process::Child, log: &Path, marker: &str, patience: Duration) {
    let deadline = Instant::now() + patience;
    while !read(log).contains(marker) {
        if let Some(status) = child.try_wait().expect("poll ember") {
            panic!("ember ended ({status}) before {marker:?}:\n{}", read(log));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no {marker:?} within {patience:?}:\n{}", read(log));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs hardware KVM: a full Linux boot is too slow on nested KVM"]
fn the_acpi_power_button_powers_a_linux_guest_off() {
    let (kernel, initrd) = prepared("tools/x86-test-guest.sh");
    let work = std::env::temp_dir().join(format!("ember-powerbutton-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let log = work.join("console.log");
    let socket = work.join("api.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["run", "--kernel", &kernel, "--initrd", &initrd])
        .args(["--memory", "512M", "--serial-input", "none"])
        .arg("--serial-output")
        .arg(&log)
        .arg("--api-socket")
        .arg(&socket)
        .args([
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd ember_test=powerkey",
        ])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log.with_extension("stderr")).unwrap())
        .spawn()
        .expect("run ember");
    wait_for_log(
        &mut child,
        &log,
        "EMBER-TEST: waiting for the power key",
        Duration::from_secs(900),
    );
    // The watched devices must include the ACPI button (the AT keyboard
    // can report KEY_POWER too, but nobody presses it here).
    let console = read(&log);
    assert!(console.contains("(Power Button)"), "{console}");
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("power-button")
        .output()
        .expect("run ember ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll ember") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the guest did not power off:\n{}", read(&log));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = read(&log.with_extension("stderr"));
    let console = read(&log);
    assert!(
        console.contains("EMBER-TEST: power key pressed")
            && console.contains("EMBER-TEST-DONE rc=0"),
        "{console}"
    );
    // A power-off, not a panic and the reset that panic=-1 would bring
    // (which also ends Ember with status 0).
    assert!(
        console.contains("reboot: Power down") && !console.contains("Kernel panic"),
        "{console}"
    );
    assert!(status.success(), "ember: {status}\n{stderr}\n{console}");
    let _ = std::fs::remove_dir_all(&work);
}
