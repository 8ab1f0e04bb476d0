//! Confinement of a running `ember run` process (docs/security.md): every
//! thread has a seccomp filter (`Seccomp: 2` in its status) while the VM
//! runs, is paused through the API, snapshotted and resumed with filters
//! on, and Landlock keeps snapshots inside the directories allowed.

#[path = "common/mod.rs"]
mod common;
#[path = "common/riscv_linux.rs"]
mod riscv_linux;

use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ctl, scratch_dir, wait_for};
use riscv_linux::{guest, test_initramfs};

const PATIENCE: Duration = Duration::from_secs(60);

/// Name and `Seccomp:` value of every thread of `pid`.
fn thread_seccomp(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task list") {
        let Ok(task) = task else { continue };
        let task = task.path();
        // A thread that ends while we look (an API connection closing) is
        // skipped, not counted as unfiltered.
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue;
        };
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        out.push((name.trim().to_string(), mode));
    }
    out.sort();
    out
}

/// The VM process, killed if the test fails before it ends (so a failed
/// test leaves no VM behind holding its output pipes).
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits for `vm` to end (bounded), returning its stderr.
fn finish(mut vm: Vm) -> (std::process::ExitStatus, String) {
    let child = &mut vm.0;
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ember did not end after stop");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status, err)
}

/// Checks every thread is filtered and the expected ones exist.
fn assert_all_filtered(pid: u32, expected: &[&str]) {
    let threads = thread_seccomp(pid);
    for (name, mode) in &threads {
        assert_eq!(mode, "2", "thread {name} is not filtered: {threads:?}");
    }
    for want in expected {
        assert!(
            threads.iter().any(|(name, _)| name == want),
            "no thread {want}: {threads:?}"
        );
    }
}

#[test]
fn every_thread_of_a_riscv64_vm_is_filtered_and_snapshots_stay_in_their_directory() {
    let (image, _) = guest();
    let dir = scratch_dir("confine-rv");
    let socket = dir.join("api.sock");
    let log = dir.join("console.log");
    let snaps = dir.join("snaps");
    std::fs::create_dir_all(&snaps).expect("mkdir");
    let _ = std::fs::remove_file(&socket);
    let child = Vm(Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "run", "--arch", "riscv64", "--memory", "128M", "--cpus", "2",
        ])
        .arg("--kernel")
        .arg(image)
        .arg("--initrd")
        .arg(test_initramfs())
        .args(["--cmdline", "console=ttyS0 panic=-1 quiet ember_test=count"])
        .args(["--serial-input", "none", "--serial-output"])
        .arg(&log)
        .arg("--api-socket")
        .arg(&socket)
        .arg("--snapshot-dir")
        .arg(&snaps)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember"));
    let count = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("EMBER-TEST: count=")
            .count()
    };
    wait_for("the guest to count", || count() >= 3);
    // A connection held open, so a client thread exists while we look.
    let _client = UnixStream::connect(&socket).expect("connect");
    assert_eq!(ctl(&socket, &["pause"]).1.trim(), "paused");
    let (ok, out) = ctl(&socket, &["snapshot", snaps.join("one").to_str().unwrap()]);
    assert!(ok, "a snapshot inside --snapshot-dir: {out}");
    assert!(snaps.join("one").join("state.json").exists());
    let outside = dir.join("outside");
    let (ok, out) = ctl(&socket, &["snapshot", outside.to_str().unwrap()]);
    assert!(!ok, "a snapshot outside --snapshot-dir was written: {out}");
    assert!(out.contains("--snapshot-dir"), "the error says why: {out}");
    assert!(!outside.join("state.json").exists());
    assert_eq!(ctl(&socket, &["resume"]).1.trim(), "running");
    wait_for("the client thread", || {
        thread_seccomp(child.0.id())
            .iter()
            .any(|(n, _)| n == "ember-api-clien")
    });
    assert_all_filtered(
        child.0.id(),
        &[
            "ember",
            "ember-hart0",
            "ember-hart1",
            "ember-api-accep",
            "ember-api-clien",
        ],
    );
    let counted = count();
    wait_for("the guest to count on", || count() > counted);
    assert!(ctl(&socket, &["stop"]).0);
    let (status, err) = finish(child);
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("seccomp"), "{err}");
}

/// A long-mode guest that prints a line and halts forever.
#[cfg(target_arch = "x86_64")]
const HALT_GUEST: &str = r#"
        mov $0x3f8, %dx
        mov $'u', %al
        out %al, (%dx)
        mov $'p', %al
        out %al, (%dx)
        mov $'\n', %al
        out %al, (%dx)
        cli
1:      hlt
        jmp 1b
"#;

#[cfg(target_arch = "x86_64")]
#[test]
fn every_thread_of_a_kvm_vm_is_filtered() {
    if !std::path::Path::new("/dev/kvm").exists() {
        return;
    }
    let kernel = common::elf64_from_asm("confine-halt", HALT_GUEST);
    let dir = scratch_dir("confine-kvm");
    let socket = dir.join("api.sock");
    let log = dir.join("console.log");
    let _ = std::fs::remove_file(&socket);
    let child = Vm(Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["run", "--memory", "64M", "--cpus", "2", "--kernel"])
        .arg(&kernel)
        .args(["--serial-input", "none", "--serial-output"])
        .arg(&log)
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember"));
    wait_for("the guest", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("up")
    });
    assert_eq!(ctl(&socket, &["pause"]).1.trim(), "paused");
    let snap = dir.join("snap");
    let (ok, out) = ctl(&socket, &["snapshot", snap.to_str().unwrap()]);
    assert!(ok, "snapshot with filters on: {out}");
    assert_eq!(ctl(&socket, &["resume"]).1.trim(), "running");
    assert_all_filtered(
        child.0.id(),
        &["ember", "ember-vcpu0", "ember-vcpu1", "ember-api-accep"],
    );
    assert!(ctl(&socket, &["stop"]).0);
    let (status, err) = finish(child);
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("seccomp"), "{err}");
}
