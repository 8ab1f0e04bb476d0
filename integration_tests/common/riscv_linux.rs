//! Running Ember on the riscv64 test kernel from the integration tests:
//! the cached guest builds (tools/riscv-linux-guest.sh and
//! tools/riscv-test-guest.sh) and a deadline-bounded `ember` run.

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// The kernel and initramfs, built once per test process.
pub fn guest() -> &'static (PathBuf, PathBuf) {
    static GUEST: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    GUEST.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/riscv-linux-guest.sh");
        let out = Command::new("bash")
            .arg(script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tools/riscv-linux-guest.sh");
        assert!(out.status.success(), "building the riscv64 guest failed");
        let text = String::from_utf8(out.stdout).expect("paths are UTF-8");
        let mut lines = text.lines().map(PathBuf::from);
        let image = lines.next().expect("Image path");
        let initrd = lines.next().expect("initramfs path");
        (image, initrd)
    })
}

/// Runs ember with a deadline: a hung guest fails the test instead of
/// hanging it (the deadline is a limit, not a synchronisation).
pub fn ember(args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(deadline).is_err() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            return true;
        }
        false
    });
    let status = child.wait().expect("wait for ember");
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    assert!(
        !killed,
        "ember did not finish within {deadline:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The device-test initramfs (resources/riscv64/test-init.c).
pub fn test_initramfs() -> &'static PathBuf {
    static INITRD: OnceLock<PathBuf> = OnceLock::new();
    INITRD.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/riscv-test-guest.sh");
        let out = Command::new("bash")
            .arg(script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tools/riscv-test-guest.sh");
        assert!(
            out.status.success(),
            "building the riscv64 test initramfs failed"
        );
        let text = String::from_utf8(out.stdout).expect("path is UTF-8");
        PathBuf::from(text.trim())
    })
}

/// Starts the device-test guest in mode `ember_test=mode` through the
/// library API (128 MiB, one hart, console captured).
pub fn start_test_guest(mode: &str) -> ember::RunningVm {
    ember::VmBuilder::new(ember::GuestArch::Riscv64)
        .kernel(&guest().0)
        .initrd(test_initramfs())
        .cmdline(format!("console=ttyS0 panic=-1 quiet ember_test={mode}"))
        .memory_mib(128)
        .start()
        .expect("start the VM")
}
