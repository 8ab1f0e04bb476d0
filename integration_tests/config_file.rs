//! `ember run --config FILE`: the file describes the VM, flags override it,
//! and mistakes in it are reported with the file and the key. Everything
//! here uses `--print-mtree`, which builds the machine without KVM.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::scratch_dir;

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        // Run from elsewhere, so that paths in the file resolve against the
        // file's directory and not the current one.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run ember")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `vm.toml` with `text` and a 4 KiB `disk.img` into a scratch
/// directory; returns the config file's path.
fn vm_dir(tag: &str, text: &str) -> String {
    let dir = scratch_dir(tag);
    std::fs::write(dir.join("disk.img"), vec![0u8; 4096]).expect("write disk");
    let config = dir.join("vm.toml");
    std::fs::write(&config, text).expect("write config");
    config.to_str().expect("utf-8 temp dir").to_string()
}

const MTREE: [&str; 4] = ["--print-mtree", "--kvm-device", "/nonexistent", "--config"];

fn mtree(tag: &str, text: &str, extra: &[&str]) -> (Output, String) {
    let config = vm_dir(tag, text);
    let mut args = vec!["run"];
    args.extend(MTREE);
    args.push(&config);
    args.extend(extra);
    (ember(&args), config)
}

const VIRTIO_SLOT0: &str = "00000000d0000000-00000000d00001ff (prio 0, i/o): virtio-mmio";
const VIRTIO_SLOT1: &str = "00000000d0001000-00000000d00011ff (prio 0, i/o): virtio-mmio";

#[test]
fn the_file_sets_memory_and_disks() {
    let (out, _) = mtree(
        "cfg-file",
        "memory = \"1G\"\n\n[[disk]]\npath = \"disk.img\"\nreadonly = true\n",
        &[],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    // 1 GiB of RAM, all below 4 GiB.
    assert!(
        text.contains(
            "0000000000000000-000000003fffffff (prio 0, ram): alias ram-below-4g @pc.ram"
        ),
        "{text}"
    );
    assert!(!text.contains("ram-above-4g"), "{text}");
    // The relative disk path was found next to the file.
    assert!(text.contains(VIRTIO_SLOT0), "{text}");
    assert!(!text.contains(VIRTIO_SLOT1), "{text}");
}

#[test]
fn flags_override_the_file() {
    let file = "memory = \"1G\"\nrng = true\n[[disk]]\npath = \"disk.img\"\n";
    // Without flags: a disk and an rng, two transports.
    let (out, config) = mtree("cfg-flags", file, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains(VIRTIO_SLOT1), "{text}");

    let dir = Path::new(&config).parent().unwrap().to_path_buf();
    let other = dir.join("other.img");
    std::fs::write(&other, vec![0u8; 4096]).unwrap();
    let disk = format!("path={}", other.display());
    let mut args = vec!["run"];
    args.extend(MTREE);
    args.extend([config.as_str(), "--memory", "5G", "--disk", &disk]);
    let out = ember(&args);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    // --memory 5G beats the file's 1G: RAM now reaches above 4 GiB.
    assert!(text.contains("alias ram-above-4g @pc.ram"), "{text}");
    // --disk replaced the file's one disk (still one disk plus the file's
    // rng: two transports, not three).
    assert!(text.contains(VIRTIO_SLOT0), "{text}");
    assert!(text.contains(VIRTIO_SLOT1), "{text}");
    assert!(!text.contains("00000000d0002000"), "{text}");

    // --rng=off removes the file's rng: the disk alone, one transport.
    let mut args = vec!["run"];
    args.extend(MTREE);
    args.extend([config.as_str(), "--rng=off"]);
    let out = ember(&args);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains(VIRTIO_SLOT0), "{text}");
    assert!(!text.contains(VIRTIO_SLOT1), "{text}");
    // A bad value names the flag.
    let mut args = vec!["run"];
    args.extend(MTREE);
    args.extend([config.as_str(), "--rng=maybe"]);
    let out = ember(&args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--rng"), "{}", stderr(&out));
}

fn assert_refused(tag: &str, text: &str, needles: &[&str]) {
    let (out, config) = mtree(tag, text, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{text:?} was accepted");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&format!("{config}:")), "file not named: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

#[test]
fn mistakes_name_the_file_and_the_key() {
    assert_refused(
        "cfg-unknown",
        "memroy = \"1G\"\n",
        &["unknown key `memroy`"],
    );
    assert_refused(
        "cfg-unknown-disk",
        "[[disk]]\npath = \"disk.img\"\nreadnly = true\n",
        &[":3:1:", "unknown key `readnly`"],
    );
    assert_refused(
        "cfg-readonly",
        "[[disk]]\npath = \"disk.img\"\n[[disk]]\npath = \"disk.img\"\nreadonly = \"maybe\"\n",
        &[":5: disk[1].readonly: expected on/off or a boolean"],
    );
    assert_refused(
        "cfg-memory",
        "memory = \"12Q\"\n",
        &["memory: '12Q' is not a memory size"],
    );
    assert_refused("cfg-cpus", "cpus = \"two\"\n", &["cpus: expected a number"]);
    assert_refused("cfg-print", "print_mtree = true\n", &["--print-mtree"]);
    // A missing disk file is reported by the VMM with its resolved path.
    let (out, config) = mtree("cfg-missing-disk", "[[disk]]\npath = \"nope.img\"\n", &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    let expected = Path::new(&config).parent().unwrap().join("nope.img");
    assert!(err.contains(&expected.display().to_string()), "{err}");
    // A file that is not there.
    let dir = scratch_dir("cfg-none");
    let missing = dir.join("absent.toml");
    let out = ember(&["run", "--config", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("absent.toml"), "{}", stderr(&out));
}
