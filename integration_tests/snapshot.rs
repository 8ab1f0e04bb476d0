//! Snapshot and restore of a riscv64 Linux guest on the software CPU.
//!
//! * A guest printing a counter every 10 ms is paused, snapshotted and
//!   stopped; a VM restored from the snapshot continues the count exactly
//!   where it stopped (no restart, no second boot) and keeps counting.
//! * A guest that wrote a block to its disk before the snapshot reads it
//!   back after the restore, and can still write (virtio-blk queues come
//!   back active, at their saved positions).
//! * A damaged snapshot (flipped byte in memory or state, truncated memory,
//!   wrong version or format, a hart state no hart can be in) is refused
//!   with an error naming the problem.
//!
//! The snapshot create and restore times of the 256 MiB guest are printed;
//! see them with
//! `cargo test --release --test snapshot -- --nocapture`.

#[path = "common/riscv_linux.rs"]
mod riscv_linux;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ember::api::{ControlError, VmControl, VmState};
use ember::vmm::config::{DiskSpec, VmConfig};
use ember::vmm::console::{ConsoleInput, ConsoleOutput};
use ember::vmm::error::VmError;
use ember::vmm::exit::ExitReason;
use ember::vmm::riscv_vm::RiscvVm;
use ember::vmm::vm::RestoreOptions;
use ember::vmm::snapshot::{SnapshotError, MANIFEST_FILE, MEMORY_FILE, STATE_FILE};

use riscv_linux::{guest, test_initramfs};

const PATIENCE: Duration = Duration::from_secs(120);
const COUNT_PREFIX: &str = "EMBER-TEST: count=";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-snapshot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Every counter value in `text`, in order.
fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim_end().strip_prefix(COUNT_PREFIX))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Polls `f` until it is true or PATIENCE runs out (then fails).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn config(cmdline: &str, memory: u64, log: &Path) -> VmConfig {
    let (image, _) = guest();
    VmConfig {
        arch: ember::arch::GuestArch::Riscv64,
        kernel: Some(image.clone()),
        initrd: Some(test_initramfs().clone()),
        cmdline: cmdline.into(),
        memory,
        console_input: ConsoleInput::None,
        console_output: ConsoleOutput::File(log.to_path_buf()),
        rng: true,
        ..VmConfig::default()
    }
}

fn restore_options(log: &Path) -> RestoreOptions {
    RestoreOptions {
        console_input: ConsoleInput::None,
        console_output: ConsoleOutput::File(log.to_path_buf()),
        ..RestoreOptions::default()
    }
}

/// The counting guest's snapshot, made once and shared by the tests.
struct Base {
    dir: PathBuf,
    /// VM 1's console output up to the snapshot.
    before: String,
    create: Duration,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let work = scratch("base");
        let log = work.join("before.log");
        let dir = work.join("snap");
        // Two harts: both are saved (hart 1 started by SBI HSM).
        let vm = RiscvVm::new(VmConfig {
            cpus: 2,
            ..config(
                "console=ttyS0 panic=-1 quiet ember_test=count",
                256 << 20,
                &log,
            )
        })
        .expect("build the VM");
        let control = vm.control();
        let runner = std::thread::spawn(move || vm.run());
        wait_for("the counter to reach 5", || {
            counts(&read(&log)).last() >= Some(&5)
        });
        // A running VM cannot be snapshotted.
        assert!(matches!(
            control.snapshot(&dir),
            Err(ControlError::WrongState(VmState::Running, _))
        ));
        control.pause().unwrap();
        let stats = control
            .snapshot_with_stats(&dir, &Default::default())
            .expect("snapshot");
        let before = read(&log);
        assert_eq!(control.state(), VmState::Paused, "still paused");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
        for hart in state["harts"].as_array().expect("harts") {
            assert_eq!(hart["hsm"]["state"], "started", "{hart}");
            assert!(hart["state"]["pc"].as_u64().is_some(), "{hart}");
        }
        println!(
            "snapshot of a {} MiB guest: created in {:.1} ms ({} of {} pages hold data)",
            stats.memory_size >> 20,
            stats.elapsed.as_secs_f64() * 1e3,
            stats.data_pages,
            stats.memory_size / 4096,
        );
        control.stop().unwrap();
        let outcome = runner.join().unwrap().unwrap();
        assert_eq!(outcome.reason, ExitReason::UserQuit);
        // Nothing ran after the snapshot.
        assert_eq!(read(&log), before);
        Base {
            dir,
            before,
            create: stats.elapsed,
        }
    })
}

#[test]
fn a_restored_guest_continues_its_counter() {
    let base = base();
    // The last complete line: the snapshot may have cut one in two.
    let complete = &base.before[..base.before.rfind('\n').map_or(0, |i| i + 1)];
    let last = *counts(complete).last().expect("counts before");
    let work = scratch("continue");
    let log = work.join("after.log");
    let started = Instant::now();
    let vm = RiscvVm::restore(&base.dir, restore_options(&log)).expect("restore");
    let restore_time = started.elapsed();
    println!(
        "restore of the 256 MiB guest: {:.1} ms (create was {:.1} ms)",
        restore_time.as_secs_f64() * 1e3,
        base.create.as_secs_f64() * 1e3
    );
    let control = vm.control();
    assert_eq!(control.info()["config"]["memory"], 256u64 << 20);
    let runner = std::thread::spawn(move || vm.run());
    wait_for("the counter to go on", || {
        counts(&read(&log)).last() >= Some(&(last + 20))
    });
    control.stop().unwrap();
    assert_eq!(runner.join().unwrap().unwrap().reason, ExitReason::UserQuit);

    let after = read(&log);
    assert!(
        !after.contains("EMBER-TEST: start") && !after.contains("Linux version"),
        "the restored guest booted again:\n{after}"
    );
    // A line cut by the snapshot continues in the new log, so the two
    // logs together must count 0, 1, 2, ... without a gap or a restart.
    let all = counts(&format!("{}{}", base.before, after));
    assert_eq!(all.first(), Some(&0));
    for pair in all.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "the count jumped: {all:?}");
    }
    let resumed = counts(&after);
    let first = *resumed.first().expect("counts after the restore");
    assert!(
        first == last + 1 || first == last + 2,
        "the first count after the restore is {first}, the last before {last}"
    );
}

#[test]
fn a_disk_written_before_the_snapshot_reads_back_after_it() {
    let work = scratch("disk");
    let disk = work.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let data = format!("pattern-{}", std::process::id());
    let log = work.join("before.log");
    let dir = work.join("snap");
    let mut cfg = config(
        &format!("console=ttyS0 panic=-1 quiet ember_test=blksnap ember_data={data}"),
        128 << 20,
        &log,
    );
    cfg.disks = vec![DiskSpec {
        path: disk.clone(),
        readonly: false,
        id: None,
    }];
    let vm = RiscvVm::new(cfg).expect("build the VM");
    let control = vm.control();
    let runner = std::thread::spawn(move || vm.run());
    wait_for("the block to be written", || {
        read(&log).contains("EMBER-TEST: blksnap written")
    });
    control.pause().unwrap();
    let stats = control
        .snapshot_with_stats(&dir, &Default::default())
        .expect("snapshot");
    // The disk was flushed before the snapshot was reported done.
    assert_eq!(stats.disks_synced, 1);
    control.stop().unwrap();
    assert_eq!(runner.join().unwrap().unwrap().reason, ExitReason::UserQuit);
    // O_SYNC: the block is in the file already.
    let first = format!("first:{data};");
    assert!(std::fs::read(&disk).unwrap().starts_with(first.as_bytes()));

    let log2 = work.join("after.log");
    let vm = RiscvVm::restore(&dir, restore_options(&log2)).expect("restore");
    let control = vm.control();
    let runner = std::thread::spawn(move || vm.run());
    control.send_input(b"go\n");
    wait_for("the guest to finish", || {
        read(&log2).contains("EMBER-TEST-DONE")
    });
    assert_eq!(runner.join().unwrap().unwrap().reason, ExitReason::PowerOff);
    let after = read(&log2);
    assert!(after.contains("EMBER-TEST: blksnap go=go"), "{after}");
    assert!(
        after.contains(&format!("EMBER-TEST: blksnap first read={first}"))
            && after.contains("match=1"),
        "{after}"
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("EMBER-TEST: blksnap second read=second:")
                && l.ends_with("match=1")),
        "{after}"
    );
    assert!(!after.contains("match=0"), "{after}");
    assert!(after.contains("EMBER-TEST-DONE rc=0"), "{after}");
    let bytes = std::fs::read(&disk).unwrap();
    assert!(bytes[4096..].starts_with(format!("second:{data};").as_bytes()));

    // The same snapshot once more, through `ember run --restore` (the
    // guest's steps after the snapshot are repeatable: the first block is
    // unchanged, the second is written again).
    let input = work.join("go.txt");
    std::fs::write(&input, b"go\n").unwrap();
    let log3 = work.join("cli.log");
    let out = riscv_linux::ember(
        &[
            "run",
            "--restore",
            dir.to_str().unwrap(),
            "--serial-input",
            input.to_str().unwrap(),
            "--serial-output",
            log3.to_str().unwrap(),
        ],
        PATIENCE,
    );
    let cli = read(&log3);
    assert!(
        out.status.success(),
        "ember run --restore: {}\n{cli}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !cli.contains("match=0") && cli.contains("EMBER-TEST-DONE rc=0"),
        "{cli}"
    );
    assert!(
        cli.contains(&format!("EMBER-TEST: blksnap first read={first}")),
        "{cli}"
    );
}

/// A copy of the base snapshot whose files are links to the originals
/// except those named in `copy` (copied, sparse, to be damaged).
fn variant(name: &str, copy: &[&str]) -> PathBuf {
    let dir = scratch(name);
    for file in [MANIFEST_FILE, STATE_FILE, MEMORY_FILE] {
        let from = base().dir.join(file);
        let to = dir.join(file);
        if copy.contains(&file) {
            let status = std::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(&from)
                .arg(&to)
                .status()
                .unwrap();
            assert!(status.success());
        } else {
            std::os::unix::fs::symlink(&from, &to).unwrap();
        }
    }
    dir
}

fn restore_error(dir: &Path) -> SnapshotError {
    let log = dir.join("console.log");
    match RiscvVm::restore(dir, restore_options(&log)) {
        Ok(_) => panic!("{} was restored", dir.display()),
        Err(VmError::Snapshot(e)) => e,
        Err(e) => panic!("not a snapshot error: {e}"),
    }
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn damaged_snapshots_are_refused() {
    use std::os::unix::fs::FileExt;

    // A flipped byte in guest memory.
    let dir = variant("flip-memory", &[MEMORY_FILE]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(MEMORY_FILE))
        .unwrap();
    let mut byte = [0u8];
    f.read_at(&mut byte, 100 << 20).unwrap();
    f.write_all_at(&[byte[0] ^ 0x10], 100 << 20).unwrap();
    let err = restore_error(&dir);
    assert!(
        matches!(
            err,
            SnapshotError::Checksum {
                file: MEMORY_FILE,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("memory.bin checksum mismatch"));

    // Truncated memory.
    f.set_len(200 << 20).unwrap();
    let err = restore_error(&dir);
    assert!(
        matches!(err, SnapshotError::Size { file: MEMORY_FILE, expected, found }
            if expected == 256 << 20 && found == 200 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"));

    // A modified state file.
    let dir = variant("flip-state", &[STATE_FILE]);
    let path = dir.join(STATE_FILE);
    let mut state = std::fs::read(&path).unwrap();
    let at = state.len() / 2;
    state[at] ^= 0x01;
    std::fs::write(&path, &state).unwrap();
    let err = restore_error(&dir);
    assert!(
        matches!(
            err,
            SnapshotError::Checksum {
                file: STATE_FILE,
                ..
            }
        ),
        "{err}"
    );

    // Another version, another format, another architecture.
    let dir = variant("version", &[MANIFEST_FILE]);
    edit_manifest(&dir, |m| m["version"] = 99.into());
    let err = restore_error(&dir);
    assert!(matches!(err, SnapshotError::Version { found: 99 }), "{err}");
    edit_manifest(&dir, |m| m["format"] = "something-else".into());
    let err = restore_error(&dir);
    assert!(matches!(err, SnapshotError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("not an Ember snapshot"));
    let dir = variant("arch", &[MANIFEST_FILE]);
    edit_manifest(&dir, |m| m["arch"] = "x86_64".into());
    assert!(matches!(restore_error(&dir), SnapshotError::Arch { .. }));

    // A hart state no hart can be in, checksums made to match: an odd pc
    // (on the last byte of RAM, whose fetch read past the RAM mapping).
    let dir = variant("odd-pc", &[STATE_FILE, MANIFEST_FILE]);
    let path = dir.join(STATE_FILE);
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["harts"][1]["state"]["pc"] = 0x8fff_ffffu64.into();
    let bytes = serde_json::to_vec(&state).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    edit_manifest(&dir, |m| {
        m["state"]["size"] = bytes.len().into();
        m["state"]["crc32"] = crc32fast::hash(&bytes).into();
    });
    let err = restore_error(&dir);
    assert!(matches!(err, SnapshotError::Inconsistent(_)), "{err}");
    assert!(
        err.to_string().contains("hart 1: pc 0x8fffffff is odd"),
        "{err}"
    );

    // A directory without a snapshot.
    let empty = scratch("empty");
    let err = restore_error(&empty);
    assert!(err.to_string().contains("manifest.json"), "{err}");
}
