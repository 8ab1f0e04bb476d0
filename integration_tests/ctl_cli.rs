//! `ember run --api-socket` with `ember ctl`, end to end with the binaries:
//! a riscv64 Linux guest printing a counter is paused, inspected, resumed
//! and stopped from the command line.

#[path = "common/riscv_linux.rs"]
mod riscv_linux;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use riscv_linux::{guest, test_initramfs};

const PATIENCE: Duration = Duration::from_secs(60);

fn ctl(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run ember ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ctl_pauses_inspects_resumes_and_stops_a_vm() {
    let (image, _) = guest();
    let dir = std::env::temp_dir().join(format!("ember-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let log = dir.join("console.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["run", "--arch", "riscv64", "--memory", "128M", "--rng"])
        .arg("--kernel")
        .arg(image)
        .arg("--initrd")
        .arg(test_initramfs())
        .args(["--cmdline", "console=ttyS0 panic=-1 quiet ember_test=count"])
        .args(["--serial-input", "none", "--serial-output"])
        .arg(&log)
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember");
    wait_for("the API socket", || socket.exists());
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let count = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("EMBER-TEST: count=")
            .count()
    };
    wait_for("the guest to count", || count() >= 3);

    assert_eq!(ctl(&socket, &["ping"]).1.trim(), "pong");
    assert_eq!(ctl(&socket, &["state"]).1.trim(), "running");
    assert_eq!(ctl(&socket, &["pause"]).1.trim(), "paused");
    let frozen = count();
    let (ok, info, _) = ctl(&socket, &["info", "--json"]);
    assert!(ok);
    let info: serde_json::Value = serde_json::from_str(&info).expect("JSON");
    assert_eq!(info["state"], "paused");
    assert_eq!(info["config"]["arch"], "riscv64");
    let (_, mtree, _) = ctl(&socket, &["mtree", "-f"]);
    assert!(mtree.contains("(prio 0, i/o): virtio-mmio"), "{mtree}");
    let (_, accel, _) = ctl(&socket, &["accel-info"]);
    assert!(accel.contains("harts.0.tlb.fills"), "{accel}");
    let (_, counters, _) = ctl(&socket, &["counters"]);
    assert!(counters.contains("virtio.0.device: rng"), "{counters}");
    assert_eq!(count(), frozen, "the guest ran while paused");
    let snap = dir.join("snap");
    let (ok, _, err) = ctl(
        &socket,
        &["snapshot", "create", "--path", snap.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(snap.join("manifest.json").exists());
    assert!(snap.join("memory.bin").exists());
    let (ok, _, err) = ctl(&socket, &["no-such-op"]);
    assert!(!ok && err.contains("no-such-op"), "{err}");

    assert_eq!(ctl(&socket, &["resume"]).1.trim(), "running");
    wait_for("the guest to go on", || count() > frozen);
    // A snapshot needs a paused VM.
    let (ok, _, err) = ctl(&socket, &["snapshot", dir.join("snap2").to_str().unwrap()]);
    assert!(!ok && err.contains("wrong_state"), "{err}");
    assert!(ctl(&socket, &["stop"]).0);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "ember did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket file was left behind");
    let _ = std::fs::remove_dir_all(&dir);
}
