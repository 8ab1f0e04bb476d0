//! Helpers shared by the KVM integration tests: assembling small real-mode
//! guests from readable source with GNU as, and recording devices.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use ember::memory::{AccessRules, RegionOps};

/// A scratch directory for this test process.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Assembles `body` (16-bit AT&T syntax, starting in real mode with
/// CS = 0xf000 after a far jump from the reset vector) into a 64 KiB
/// firmware image for `--firmware`. `body` may use the label `start` only
/// through this wrapper; DS is set to 0xf000 so data labels in the body are
/// addressable.
pub fn firmware(name: &str, body: &str) -> Vec<u8> {
    let source = format!(
        "        .code16\n        .text\n        .org 0\nstart:\n        cli\n        movw $0xf000, %ax\n        movw %ax, %ds\n{body}\n        .org 0xfff0\n        ljmp $0xf000, $start\n        .org 0x10000\n"
    );
    let dir = scratch_dir("asm");
    let src = dir.join(format!("{name}.s"));
    let obj = dir.join(format!("{name}.o"));
    let bin = dir.join(format!("{name}.bin"));
    std::fs::write(&src, source).expect("write guest source");
    let status = Command::new("as")
        .args(["--32", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .expect("run as (binutils)");
    assert!(status.success(), "assembling {name} failed");
    let status = Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&obj)
        .arg(&bin)
        .status()
        .expect("run objcopy");
    assert!(status.success(), "objcopy {name} failed");
    let image = std::fs::read(&bin).expect("read assembled guest");
    assert_eq!(image.len(), 0x10000);
    image
}

/// Writes a firmware image to a file and returns its path.
pub fn firmware_file(name: &str, body: &str) -> PathBuf {
    let path = scratch_dir("fw").join(format!("{name}.rom"));
    std::fs::write(&path, firmware(name, body)).expect("write firmware");
    path
}

/// Whether /dev/kvm can be used here; tests that need it say so and pass
/// trivially otherwise.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("/dev/kvm is not usable here: skipping a KVM test");
    }
    ok
}

/// A device that records every write (offset, size, value) and answers
/// reads with `base + offset`.
pub struct Recorder {
    pub base: u64,
    writes: Mutex<Vec<(u64, u32, u64)>>,
    notify: Mutex<Option<Sender<(u64, u64)>>>,
}

impl Recorder {
    pub fn new(base: u64) -> Arc<Self> {
        Arc::new(Recorder {
            base,
            writes: Mutex::new(Vec::new()),
            notify: Mutex::new(None),
        })
    }

    /// Every write is also sent on the returned channel as (offset, value).
    pub fn subscribe(&self) -> Receiver<(u64, u64)> {
        let (tx, rx) = channel();
        *self.notify.lock().unwrap() = Some(tx);
        rx
    }

    pub fn writes(&self) -> Vec<(u64, u32, u64)> {
        self.writes.lock().unwrap().clone()
    }

    pub fn values(&self) -> Vec<u64> {
        self.writes().iter().map(|w| w.2).collect()
    }
}

impl RegionOps for Recorder {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        self.base + offset
    }

    fn write(&self, offset: u64, size: u32, value: u64) {
        self.writes.lock().unwrap().push((offset, size, value));
        if let Some(tx) = self.notify.lock().unwrap().as_ref() {
            let _ = tx.send((offset, value));
        }
    }

    fn rules(&self) -> AccessRules {
        AccessRules {
            valid_unaligned: true,
            ..AccessRules::default()
        }
    }
}
