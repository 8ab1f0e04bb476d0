//! Boots a real Linux kernel to userspace under KVM. Ignored by default:
//! on the nested, software-assisted KVM of the CI machines a full boot takes
//! minutes and can stop on instructions the nested emulator lacks. On a host
//! with hardware KVM run:
//!
//!     tools/x86-linux-guest.sh
//!     cargo test --release --test linux_boot_kvm -- --ignored

use std::process::{Command, Stdio};

const MARKER: &str = "EMBER-GUEST-USERSPACE-OK";

fn guest() -> (String, String) {
    let out = Command::new("tools/x86-linux-guest.sh")
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
