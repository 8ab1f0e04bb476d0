//! `ember run` from the command line: the built-in guest, firmware with
//! debug-exit codes, triple faults, and every error path.

#[path = "common/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};

use common::{firmware_file, kvm_available, scratch_dir};

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ember")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_error(args: &[&str], needles: &[&str]) {
    let out = ember(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in {err}");
    }
}

#[test]
fn builtin_guest_runs_from_the_command_line() {
    if !kvm_available() {
        return;
    }
    let out = ember(&["run", "--memory", "64M"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("Ember built-in guest"), "{text}");
    assert!(text.contains("Powering off."), "{text}");
}

#[test]
fn debug_exit_sets_the_exit_status() {
    if !kvm_available() {
        return;
    }
    let fw = firmware_file(
        "debug-exit",
        r#"
        movw $0x501, %dx
        movb $0x31, %al
        outb %al, %dx
    1:  hlt
        jmp 1b
    "#,
    );
    let out = ember(&[
        "run",
        "--firmware",
        fw.to_str().unwrap(),
        "--debug-exit",
        "0x501",
    ]);
    assert_eq!(out.status.code(), Some(0x63), "{}", stderr(&out));
    let fw = firmware_file(
        "debug-exit-0",
        r#"
        movw $0x501, %dx
        movb $0, %al
        outb %al, %dx
    1:  hlt
        jmp 1b
    "#,
    );
    let out = ember(&[
        "run",
        "--firmware",
        fw.to_str().unwrap(),
        "--debug-exit",
        "1281",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn triple_fault_is_reported() {
    if !kvm_available() {
        return;
    }
    let kernel = common::tiny_elf_file("triple-cli", &common::UD2, true);
    let out = ember(&["run", "--kernel", kernel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("triple fault"), "{}", stderr(&out));
}

#[test]
fn kernel_debug_exit_code_reaches_the_shell() {
    if !kvm_available() {
        return;
    }
    let kernel = common::tiny_elf_file("exit-cli", &common::debug_exit(0x21), false);
    let out = ember(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--debug-exit",
        "0x501",
    ]);
    assert_eq!(out.status.code(), Some(0x43), "{}", stderr(&out));
}

#[test]
fn print_mtree_shows_the_pc_layout_without_kvm() {
    let out = ember(&[
        "run",
        "--memory",
        "5G",
        "--print-mtree",
        "--kvm-device",
        "/nonexistent",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("alias ram-below-4g @pc.ram"), "{text}");
    assert!(text.contains("alias ram-above-4g @pc.ram"), "{text}");
    assert!(text.contains("(prio 0, i/o): serial"), "{text}");
    assert!(text.contains("FlatView #0"), "{text}");
}

#[test]
fn print_mtree_shows_virtio_transports_in_slot_order() {
    let dir = scratch_dir("mtree-virtio");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let disk_arg = format!("path={}", disk.display());
    let out = ember(&[
        "run",
        "--disk",
        &disk_arg,
        "--rng",
        "--print-mtree",
        "--kvm-device",
        "/nonexistent",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    for base in [
        "00000000d0000000-00000000d00001ff",
        "00000000d0001000-00000000d00011ff",
    ] {
        assert!(
            text.contains(&format!("{base} (prio 0, i/o): virtio-mmio")),
            "{text}"
        );
    }
    assert!(!text.contains("00000000d0002000"), "{text}");
}

#[test]
fn virtio_option_errors_are_clear() {
    assert_error(
        &["run", "--disk", "readonly=on"],
        &["--disk needs path=FILE"],
    );
    assert_error(
        &[
            "run",
            "--disk",
            "path=/nonexistent/disk.img",
            "--print-mtree",
        ],
        &["/nonexistent/disk.img"],
    );
    assert_error(&["run", "--net", "tap=a,mac=zz"], &["MAC"]);
    assert_error(&["run", "--console", "tty"], &["serial or virtio"]);
    // riscv64's virt machine has 8 virtio-mmio slots.
    let dir = scratch_dir("many-disks");
    let specs: Vec<String> = (0..9)
        .map(|i| {
            let disk = dir.join(format!("disk{i}.img"));
            std::fs::write(&disk, vec![0u8; 4096]).unwrap();
            format!("path={},readonly=on", disk.display())
        })
        .collect();
    let mut args = vec!["run", "--arch", "riscv64", "--print-mtree"];
    for spec in &specs {
        args.extend(["--disk", spec.as_str()]);
    }
    assert_error(&args, &["9 virtio devices", "8 virtio-mmio slots"]);
}

/// One file behind two drives is refused, naming both, also when the
/// second path is a symlink to it and both are read-only.
#[test]
fn the_same_disk_file_twice_is_refused() {
    let dir = scratch_dir("same-disk");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let link = dir.join("link.img");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    let first = format!("path={},readonly=on", disk.display());
    let second = format!("path={},readonly=on", link.display());
    assert_error(
        &[
            "run",
            "--arch",
            "riscv64",
            "--print-mtree",
            "--disk",
            &first,
            "--disk",
            &second,
        ],
        &[
            &link.display().to_string(),
            "already disk vda",
            &disk.display().to_string(),
        ],
    );
    // Two different files are fine.
    let other = dir.join("other.img");
    std::fs::write(&other, vec![0u8; 4096]).unwrap();
    let out = ember(&[
        "run",
        "--arch",
        "riscv64",
        "--print-mtree",
        "--disk",
        &first,
        "--disk",
        &format!("path={},readonly=on", other.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_errors_are_clear() {
    let dir = scratch_dir("errors");
    let fw = dir.join("empty.rom");
    std::fs::write(&fw, b"").unwrap();
    assert_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        &["kernel", "/nonexistent/vmlinux"],
    );
    assert_error(&["run", "--kernel", dir.to_str().unwrap()], &["kernel"]);
    assert_error(&["run", "--memory", "12Q"], &["not a memory size"]);
    assert_error(
        &["run", "--memory", "512K"],
        &["guest RAM", "at least 1 MiB"],
    );
    assert_error(&["run", "--cpus", "0"], &["--cpus"]);
    assert_error(
        &["run", "--firmware", "/nonexistent/bios.bin"],
        &["firmware", "/nonexistent/bios.bin"],
    );
    assert_error(&["run", "--firmware", fw.to_str().unwrap()], &["firmware"]);
    assert_error(&["run", "--accel", "hvf"], &["unknown accelerator 'hvf'"]);
    assert_error(
        &["run", "--accel", "tcg"],
        &["software CPU", "not available yet"],
    );
    assert_error(
        &["run", "--kvm-device", "/nonexistent/kvm"],
        &["/nonexistent/kvm is not present"],
    );
    assert_error(&["run", "--debug-exit", "0x10000"], &["not a port number"]);
    if kvm_available() {
        let kernel = dir.join("garbage");
        std::fs::write(&kernel, vec![0x42u8; 4096]).unwrap();
        assert_error(&["run", "--kernel", kernel.to_str().unwrap()], &["kernel"]);
        let long = "x".repeat(4096);
        let elf = dir.join("garbage2");
        std::fs::write(&elf, vec![0x42u8; 4096]).unwrap();
        assert_error(
            &["run", "--kernel", elf.to_str().unwrap(), "--cmdline", &long],
            &[],
        );
    }
}

/// SIGTERM ends a running VM cleanly through the event loop.
#[test]
fn sigterm_ends_a_running_vm() {
    if !kvm_available() {
        return;
    }
    use std::io::Read;
    let fw = firmware_file(
        "spin",
        r#"
        movw $0x3f8, %dx
        movb $0x52, %al
        outb %al, %dx              # "R": running
    1:  jmp 1b
    "#,
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "run",
            "--firmware",
            fw.to_str().unwrap(),
            "--serial-input",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ember");
    let mut first = [0u8; 1];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"R");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
}

/// Runs ember with `args`, killing it if it has not ended within `limit`
/// (a start-up that blocks on a FIFO or reads a device forever fails the
/// test instead of hanging it or eating the machine's memory).
fn ember_within(args: &[std::ffi::OsString], limit: std::time::Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ember");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap");
            panic!("{args:?} still running after {limit:?}: {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn mkfifo(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

/// A riscv64 `Image` header that parses (magic, non-zero image size) and
/// nothing else: enough to get to the initrd.
fn fake_riscv_image() -> std::path::PathBuf {
    let mut h = vec![0u8; 64];
    h[16..24].copy_from_slice(&(1u64 << 20).to_le_bytes());
    h[56..60].copy_from_slice(b"RSC\x05");
    let path = scratch_dir("files").join("Image");
    std::fs::write(&path, h).unwrap();
    path
}

/// Asserts that `args` fail within a few seconds naming `path` and saying
/// what it is instead of a regular file.
fn refused_quickly(args: &[&std::ffi::OsStr], path: &std::path::Path, kind: &str) {
    let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.to_os_string()).collect();
    let out = ember_within(&args, std::time::Duration::from_secs(20));
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains(kind),
        "{args:?}: {path:?} and {kind:?} not in {err}"
    );
}

#[test]
fn riscv64_kernel_and_initrd_must_be_regular_files() {
    let dir = scratch_dir("files-riscv");
    let fifo = dir.join("initrd.fifo");
    mkfifo(&fifo);
    let image = fake_riscv_image();
    let base = ["run", "--arch", "riscv64", "--memory", "64M", "--kernel"];
    let os = |s: &[&str]| -> Vec<std::ffi::OsString> { s.iter().map(Into::into).collect() };
    let with = |kernel: &std::path::Path, extra: &[&std::ffi::OsStr]| {
        let mut v = os(&base);
        v.push(kernel.into());
        v.extend(extra.iter().map(|a| a.to_os_string()));
        v
    };
    let zero = std::path::Path::new("/dev/zero");
    for (args, path, kind) in [
        (with(zero, &[]), zero, "character device"),
        (with(&dir, &[]), dir.as_path(), "directory"),
        (
            with(&image, &["--initrd".as_ref(), fifo.as_os_str()]),
            fifo.as_path(),
            "FIFO",
        ),
    ] {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        refused_quickly(&refs, path, kind);
    }
    // A kernel larger than the guest's RAM is refused before it is read.
    let big = dir.join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let args = with(&big, &[]);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    refused_quickly(&refs, &big, "larger than");
}

#[test]
fn x86_64_kernel_initrd_and_firmware_must_be_regular_files() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("files-x86");
    let fifo = dir.join("initrd.fifo");
    mkfifo(&fifo);
    let kernel = common::tiny_elf_file("files-x86", &common::debug_exit(0), false);
    let zero = std::path::Path::new("/dev/zero");
    let run = ["run", "--memory", "64M"];
    let mk = |extra: &[&std::ffi::OsStr]| -> Vec<std::ffi::OsString> {
        run.iter()
            .map(Into::into)
            .chain(extra.iter().map(|a| a.to_os_string()))
            .collect()
    };
    for (args, path, kind) in [
        (
            mk(&["--kernel".as_ref(), zero.as_os_str()]),
            zero,
            "character device",
        ),
        (
            mk(&["--kernel".as_ref(), dir.as_os_str()]),
            dir.as_path(),
            "directory",
        ),
        (
            mk(&[
                "--kernel".as_ref(),
                kernel.as_os_str(),
                "--initrd".as_ref(),
                fifo.as_os_str(),
            ]),
            fifo.as_path(),
            "FIFO",
        ),
        (
            mk(&["--firmware".as_ref(), zero.as_os_str()]),
            zero,
            "character device",
        ),
    ] {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        refused_quickly(&refs, path, kind);
    }
}

#[test]
fn config_and_map_files_must_be_regular_files() {
    let dir = scratch_dir("files-config");
    let fifo = dir.join("vm.toml");
    mkfifo(&fifo);
    let args: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), "--config".as_ref(), fifo.as_os_str()];
    refused_quickly(&args, &fifo, "FIFO");
    let args: Vec<&std::ffi::OsStr> = vec!["mtree".as_ref(), "--map".as_ref(), fifo.as_os_str()];
    refused_quickly(&args, &fifo, "FIFO");
}

/// The OS error of a missing file is shown once, after the path.
#[test]
fn a_missing_file_is_reported_once_with_its_path() {
    let missing = scratch_dir("missing").join("nothing-here");
    let m = missing.to_str().expect("utf-8 path");
    let cases: [&[&str]; 4] = [
        &["run", "--kernel", m],
        &["run", "--arch", "riscv64", "--kernel", m],
        &["run", "--config", m],
        &["run", "--restore", m],
    ];
    for args in cases {
        let out = ember(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(m), "{args:?}: the path is not named: {err}");
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "{args:?}: {err}"
        );
    }
}

/// Help texts show real values and every `ctl` operation.
#[test]
fn help_shows_the_default_command_lines_and_snapshot() {
    let help = String::from_utf8_lossy(&ember(&["run", "--help"]).stdout).into_owned();
    assert!(!help.contains('{'), "a placeholder in --help: {help}");
    assert!(
        help.contains(ember::vmm::config::DEFAULT_CMDLINE)
            && help.contains(ember::vmm::config::DEFAULT_CMDLINE_RISCV64),
        "{help}"
    );
    for args in [&["--help"][..], &["ctl", "--help"][..]] {
        let text = String::from_utf8_lossy(&ember(args).stdout).into_owned();
        assert!(text.contains("snapshot"), "{args:?}: {text}");
    }
}

/// Limits are stated the same way whichever side is crossed, sizes in
/// binary units, and console files by flag and path.
#[test]
fn limits_and_console_paths_read_as_people_write_them() {
    for cpus in ["0", "255", "300"] {
        assert_error(
            &["run", "--cpus", cpus],
            &[&format!("must be between 1 and 254, not {cpus}")],
        );
    }
    if cfg!(target_arch = "x86_64") {
        assert_error(
            &[
                "run",
                "--arch",
                "x86_64",
                "--memory",
                "100T",
                "--print-mtree",
            ],
            &["guest RAM of 100 TiB is more than the 64 TiB this machine supports"],
        );
    }
    // riscv64 has no limit below what the host can map: the host says no.
    assert_error(
        &[
            "run",
            "--arch",
            "riscv64",
            "--memory",
            "100T",
            "--print-mtree",
        ],
        &["100 TiB"],
    );
    let dir = scratch_dir("console-paths");
    let out_path = dir.join("no-such-dir").join("console.log");
    let out = out_path.to_str().expect("utf-8");
    assert_error(
        &["run", "--serial-output", out],
        &[&format!("--serial-output {out}: No such file or directory")],
    );
    let in_path = dir.join("no-such-input");
    let input = in_path.to_str().expect("utf-8");
    assert_error(
        &["run", "--serial-input", input],
        &[&format!(
            "--serial-input {input}: No such file or directory"
        )],
    );
}

/// A disk that cannot be opened for writing says how to use it anyway.
#[test]
fn an_unwritable_disk_suggests_readonly() {
    // A sysfs attribute refuses writing even to root.
    let attr = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size";
    if !std::path::Path::new(attr).exists() {
        return;
    }
    let disk = format!("path={attr}");
    assert_error(
        &["run", "--arch", "riscv64", "--print-mtree", "--disk", &disk],
        &[
            &format!("cannot open {attr} for writing"),
            "add readonly=on",
        ],
    );
}

/// `ember run ... &` from an interactive shell: the VM leaves the terminal
/// to the shell (no raw mode, no reading) instead of being stopped by it
/// (SIGTTOU, "Stopped (tty output)"), runs and exits by itself. The shell
/// runs on a pseudo-terminal that python's pty module provides.
#[test]
fn a_vm_started_in_the_background_is_not_stopped_by_the_terminal() {
    if !kvm_available() {
        return;
    }
    const DRIVER: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i", "-c",
        sys.argv[1] + " run --serial-output /dev/null & wait $!; echo EMBER-EXIT=$?"])
out = b""
deadline = time.time() + 20
while time.time() < deadline and b"EMBER-EXIT=" not in out:
    ready, _, _ = select.select([fd], [], [], 0.2)
    if ready:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
sys.stdout.write(out.decode(errors="replace"))
os.kill(pid, 9)
"#;
    let Ok(out) = Command::new("python3")
        .args(["-c", DRIVER, env!("CARGO_BIN_EXE_ember")])
        .stdin(Stdio::null())
        .output()
    else {
        eprintln!("python3 is not installed: skipped");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("EMBER-EXIT=0"), "{text}");
    assert!(text.contains("console input is off"), "{text}");
    assert!(!text.contains("Stopped"), "{text}");
}
