//! Snapshot and restore of an x86_64 guest under KVM.
//!
//! The guest (long mode, 256 MiB) keeps one counter in three places: a
//! general register (r15), guest RAM (at 2 MiB) and an SSE register
//! (xmm0, one step behind), checks on every step that the three agree and that one word of
//! a 1 MiB pattern it wrote at 192 MiB is intact, and prints the counter
//! on COM1 (`n=` and 16 hex digits); a failed check prints `BAD`.
//!
//! * Library: the VM is paused, snapshotted (a running VM is refused) and
//!   stopped; `VmBuilder::restore` continues the count from the saved
//!   value, not from zero, with the saved r15 matching the output.
//! * Command line, new processes: `ember ctl pause` / `snapshot` / `stop`
//!   against `ember run --api-socket`, then `ember run --restore`.
//! * Damaged snapshots are refused with a message naming the problem.
//! * With a virtio-blk disk: a sector the guest wrote through its
//!   hand-driven queue before the snapshot reads back after the restore
//!   through the same queue (used index and element checked), while the
//!   counter goes on.
//!
//! Snapshot create and restore times are printed:
//! `cargo test --release --test snapshot_kvm -- --nocapture`.

// x86_64 guests under KVM: only x86_64 hosts build the x86_64 machine.
#![cfg(target_arch = "x86_64")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember::api::{ControlError, VmControl, VmState};
use ember::vmm::error::VmError;
use ember::vmm::exit::ExitReason;
use ember::vmm::snapshot::{SnapshotError, MANIFEST_FILE, MEMORY_FILE, STATE_FILE};
use ember::{GuestArch, VmBuilder};

use common::{ctl, elf64_from_asm, kvm_available, scratch_dir, wait_for};

const PATIENCE: Duration = Duration::from_secs(60);
const MEMORY_MIB: u64 = 256;

/// The counting guest described in the module documentation.
const COUNTER_GUEST: &str = r#"
        # SSE on (CR4.OSFXSR | OSXMMEXCPT, CR0.EM clear, CR0.MP set), so
        # xmm0 can carry a counter.
        mov %cr4, %rax
        or $0x600, %rax
        mov %rax, %cr4
        mov %cr0, %rax
        and $~0x4, %rax
        or $0x2, %rax
        mov %rax, %cr0
        # 1 MiB pattern at 192 MiB: qword i holds i * K.
        mov $0xc000000, %r12
        mov $0x9e3779b97f4a7c15, %r14
        xor %rdx, %rdx
fill:
        mov %rdx, %rbx
        imul %r14, %rbx
        mov %rbx, (%r12,%rdx,8)
        inc %rdx
        cmp $0x20000, %rdx
        jne fill
        xor %r15, %r15
        mov $0x200000, %r13
        movq $0, (%r13)
        # xmm0 carries the previous count across the print and the
        # delay (where a snapshot most likely lands). Only moves: KVM may
        # emulate guest instructions (nested, software-assisted KVM
        # does), and its emulator knows SSE moves but no SSE arithmetic.
        mov $0x201000, %r10
        movq $0, (%r10)
        movdqu (%r10), %xmm0
        mov $0x3f8, %dx
        mov $'B', %al
        out %al, (%dx)
        mov $'\n', %al
        out %al, (%dx)
step:
        movdqu %xmm0, 16(%r10)
        cmp 16(%r10), %r15
        jne bad
        inc %r15
        incq (%r13)
        cmp (%r13), %r15
        jne bad
        mov %r15, (%r10)
        movdqu (%r10), %xmm0
        mov %r15, %rdx
        and $0x1ffff, %rdx
        mov %rdx, %rbx
        imul %r14, %rbx
        cmp (%r12,%rdx,8), %rbx
        jne bad
        mov $0x3f8, %dx
        mov $'n', %al
        out %al, (%dx)
        mov $'=', %al
        out %al, (%dx)
        mov $60, %cl
hex:
        mov %r15, %rax
        shr %cl, %rax
        and $0xf, %al
        cmp $10, %al
        jb digit
        add $39, %al
digit:
        add $'0', %al
        out %al, (%dx)
        sub $4, %cl
        jns hex
        mov $'\n', %al
        out %al, (%dx)
        mov $100000, %ecx
delay:
        dec %ecx
        jnz delay
        jmp step
bad:
        mov $0x3f8, %dx
        mov $'B', %al
        out %al, (%dx)
        mov $'A', %al
        out %al, (%dx)
        mov $'D', %al
        out %al, (%dx)
        mov $'\n', %al
        out %al, (%dx)
hang:
        jmp hang
"#;

/// Assembled once: the tests run in parallel and would share the files.
fn guest() -> PathBuf {
    static GUEST: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    GUEST
        .get_or_init(|| elf64_from_asm("snapshot-counter", COUNTER_GUEST))
        .clone()
}

/// Every complete counter line in `text`, in order.
fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("n="))
        .filter(|n| n.len() == 16)
        .filter_map(|n| u64::from_str_radix(n, 16).ok())
        .collect()
}

/// The text up to and including its last newline (a snapshot may cut a
/// line in two).
fn complete_lines(text: &str) -> &str {
    &text[..text.rfind('\n').map_or(0, |i| i + 1)]
}

/// The checks shared by the restore tests: the guest did not boot again,
/// never saw a mismatch, and the two logs together count 1, 2, 3, ...
/// without a gap or a restart.
fn check_continuation(before: &str, after: &str) {
    assert!(!after.contains("BAD") && !before.contains("BAD"), "{after}");
    assert!(
        !after.starts_with("B\n"),
        "the restored guest booted again:\n{after}"
    );
    let all = counts(&format!("{before}{after}"));
    assert_eq!(all.first(), Some(&1), "{before}");
    for pair in all.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "the count jumped: {:?}", pair);
    }
    let last = *counts(complete_lines(before))
        .last()
        .expect("counts before");
    let first_after = *counts(after).first().expect("counts after");
    assert!(
        first_after > last && first_after <= last + 2,
        "the first count after the restore is {first_after}, the last before {last}"
    );
}

/// r15 (the guest's register counter) in a saved `state.json`: kvm_regs
/// is rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15, rip, rflags.
fn saved_r15(dir: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
    let hex = state["vcpus"][0]["regs"].as_str().expect("regs");
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    u64::from_le_bytes(bytes[120..128].try_into().unwrap())
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn count_line(n: u64) -> String {
    format!("n={n:016x}\n")
}

/// Takes a snapshot of the counting guest through the library; returns
/// the directory and the output before it.
fn snapshot_through_the_library(tag: &str) -> (PathBuf, String) {
    let dir = scratch_dir(tag).join("snap");
    let vm = VmBuilder::new(GuestArch::X86_64)
        .kernel(guest())
        .memory_mib(MEMORY_MIB)
        .start()
        .expect("start");
    vm.wait_for_output(&count_line(5), PATIENCE)
        .expect("the guest counts");
    assert!(
        matches!(
            vm.control().snapshot(&dir),
            Err(ControlError::WrongState(VmState::Running, _))
        ),
        "a running VM must not be saved"
    );
    vm.pause().unwrap();
    let stats = vm
        .control()
        .snapshot_with_stats(&dir, &Default::default())
        .expect("snapshot");
    assert_eq!(vm.state(), VmState::Paused, "still paused");
    let before = vm.output();
    println!(
        "x86_64 KVM snapshot of a {} MiB guest: created in {:.1} ms ({} of {} pages hold data)",
        stats.memory_size >> 20,
        stats.elapsed.as_secs_f64() * 1e3,
        stats.data_pages,
        stats.memory_size / 4096,
    );
    assert_eq!(vm.stop().unwrap(), ExitReason::UserQuit);
    (dir, before)
}

#[test]
fn a_restored_guest_continues_its_counter_through_the_library() {
    if !kvm_available() {
        return;
    }
    let (dir, before) = snapshot_through_the_library("kvm-snap-lib");
    let last = *counts(complete_lines(&before)).last().unwrap();
    // The register state is the one the output shows: the counter printed
    // last, or already incremented for the next line.
    let r15 = saved_r15(&dir);
    assert!(
        r15 == last || r15 == last + 1,
        "r15 {r15}, last count {last}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
    assert!(state["kvm"]["irqchip"].is_array(), "irqchip saved");
    assert!(state["vcpus"][0]["lapic"].is_string(), "LAPIC saved");
    assert!(
        state["vcpus"][0]["msrs"].as_array().unwrap().len() >= 5,
        "MSRs saved: {}",
        state["vcpus"][0]["msrs"]
    );

    let started = Instant::now();
    let vm = VmBuilder::restore(&dir).expect("restore");
    println!(
        "x86_64 KVM restore of the {MEMORY_MIB} MiB guest: {:.1} ms to a running VM",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(vm.control().info()["config"]["memory"], MEMORY_MIB << 20);
    let after = vm
        .wait_for_output(&count_line(last + 20), PATIENCE)
        .expect("the restored guest counts on");
    assert_eq!(vm.stop().unwrap(), ExitReason::UserQuit);
    check_continuation(&before, &after);
}

fn ember() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
    c.stdin(Stdio::null());
    c
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "ember did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ctl_snapshot_and_run_restore_in_new_processes() {
    if !kvm_available() {
        return;
    }
    let work = scratch_dir("kvm-snap-cli");
    let socket = work.join("api.sock");
    let log = work.join("before.log");
    let snap = work.join("snap");
    let _ = std::fs::remove_file(&socket);
    // The first VM runs in its own directory with a disk named relative
    // to it; the restores run elsewhere.
    let first_cwd = work.join("first");
    let other_cwd = work.join("other");
    for d in [&first_cwd, &other_cwd] {
        std::fs::create_dir_all(d).unwrap();
    }
    let disk = first_cwd.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut first = ember()
        .current_dir(&first_cwd)
        .args(["run", "--memory", &format!("{MEMORY_MIB}M"), "--kernel"])
        .arg(guest())
        .args(["--disk", "path=disk.img"])
        .args(["--serial-input", "none", "--serial-output"])
        .arg(&log)
        .arg("--api-socket")
        .arg(&socket)
        .spawn()
        .expect("start ember");
    wait_for("the guest to count", || read(&log).contains(&count_line(5)));
    assert_eq!(ctl(&socket, &["pause"]).1.trim(), "paused");
    let (ok, out) = ctl(&socket, &["snapshot", snap.to_str().unwrap()]);
    assert!(ok, "{out}");
    // Snapshot files hold guest memory: owner-only.
    for f in [MANIFEST_FILE, STATE_FILE, MEMORY_FILE] {
        let mode = std::fs::metadata(snap.join(f)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "{f}"
        );
    }
    // Writing over it needs --force.
    let (ok, out) = ctl(&socket, &["snapshot", snap.to_str().unwrap()]);
    assert!(!ok && out.contains("is not empty"), "{out}");
    let (ok, out) = ctl(&socket, &["snapshot", "--force", snap.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = ctl(&socket, &["stop"]);
    assert!(ok, "{out}");
    assert!(wait_exit(&mut first).success());
    let before = read(&log);

    let after_log = work.join("after.log");
    let socket2 = work.join("api2.sock");
    let _ = std::fs::remove_file(&socket2);
    // From another directory: the relative disk path was saved absolute.
    let mut restored = ember()
        .current_dir(&other_cwd)
        .arg("run")
        .arg("--restore")
        .arg(&snap)
        .args(["--serial-input", "none", "--timings", "--serial-output"])
        .arg(&after_log)
        .arg("--api-socket")
        .arg(&socket2)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the restore");
    let last = *counts(complete_lines(&before)).last().unwrap();
    let target = count_line(last + 20);
    let deadline = Instant::now() + PATIENCE;
    while !read(&after_log).contains(&target) {
        if let Some(status) = restored.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = restored.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the restored VM ended ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "the restored guest did not count"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ok, info) = ctl(&socket2, &["info", "--json"]);
    assert!(ok, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).expect("info JSON");
    assert_eq!(
        info["config"]["disks"][0]["path"],
        serde_json::json!(disk.to_str().unwrap()),
        "{info}"
    );
    restored.kill().unwrap();
    let out = restored.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("snapshot restored in"), "{stderr}");
    println!("{}", stderr.trim());
    check_continuation(&before, &read(&after_log));

    // --disk at restore replaces where the saved disk lives.
    let moved = other_cwd.join("moved.img");
    std::fs::copy(&disk, &moved).unwrap();
    let socket3 = work.join("api3.sock");
    let _ = std::fs::remove_file(&socket3);
    let mut overridden = ember()
        .current_dir(&other_cwd)
        .arg("run")
        .arg("--restore")
        .arg(&snap)
        .args(["--disk", "path=moved.img"])
        .args(["--serial-input", "none", "--serial-output", "/dev/null"])
        .arg("--api-socket")
        .arg(&socket3)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the restore with --disk");
    wait_for("the API socket", || socket3.exists());
    let (ok, info) = ctl(&socket3, &["info", "--json"]);
    assert!(ok, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).expect("info JSON");
    assert_eq!(
        info["config"]["disks"][0]["path"],
        serde_json::json!(moved.to_str().unwrap()),
        "{info}"
    );
    overridden.kill().unwrap();
    let _ = overridden.wait();
    // A disk the snapshot does not have is refused.
    let out = ember()
        .arg("run")
        .arg("--restore")
        .arg(&snap)
        .args(["--disk", "path=/dev/null,id=nosuch"])
        .args(["--serial-input", "none", "--serial-output", "/dev/null"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no disk with that id"),
        "{err}"
    );
}

/// Copies a snapshot directory (sparse-aware enough for a test: the copy
/// may be dense).
fn copy_snapshot(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for f in [MANIFEST_FILE, STATE_FILE, MEMORY_FILE] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn restore_error(dir: &Path) -> String {
    let out = ember()
        .arg("run")
        .arg("--restore")
        .arg(dir)
        .args(["--serial-input", "none", "--serial-output", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a damaged snapshot was restored");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn damaged_snapshots_are_refused_with_a_clear_message() {
    if !kvm_available() {
        return;
    }
    let (good, _) = snapshot_through_the_library("kvm-snap-bad");
    let work = good.parent().unwrap().to_path_buf();

    // A flipped byte in guest memory (inside the guest's pattern).
    let dir = work.join("flip-memory");
    copy_snapshot(&good, &dir);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(MEMORY_FILE))
            .unwrap();
        let mut byte = [0u8];
        f.read_at(&mut byte, (192 << 20) + 8).unwrap();
        f.write_all_at(&[byte[0] ^ 0x10], (192 << 20) + 8).unwrap();
    }
    let err = restore_error(&dir);
    assert!(err.contains("memory.bin checksum mismatch"), "{err}");
    match VmBuilder::restore(&dir) {
        Err(ember::InstanceError::Vm(VmError::Snapshot(SnapshotError::Checksum {
            file: MEMORY_FILE,
            ..
        }))) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("restored"),
    }

    // A state file that is a link to a device: refused at once, by name,
    // not read forever.
    let dir = work.join("state-dev-zero");
    copy_snapshot(&good, &dir);
    std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join(STATE_FILE)).unwrap();
    let started = Instant::now();
    let err = restore_error(&dir);
    assert!(
        err.contains(dir.join(STATE_FILE).to_str().unwrap()) && err.contains("character device"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A manifest that is not JSON.
    let dir = work.join("bad-manifest");
    copy_snapshot(&good, &dir);
    std::fs::write(dir.join(MANIFEST_FILE), b"{ not json").unwrap();
    let err = restore_error(&dir);
    assert!(err.contains("is not an Ember snapshot manifest"), "{err}");

    // A state file whose checksum still matches but whose saved registers
    // have the wrong size (a snapshot from other KVM bindings).
    let dir = work.join("short-regs");
    copy_snapshot(&good, &dir);
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
    let regs = state["vcpus"][0]["regs"].as_str().unwrap().to_string();
    state["vcpus"][0]["regs"] = regs[..regs.len() - 16].into();
    let bytes = serde_json::to_vec(&state).unwrap();
    std::fs::write(dir.join(STATE_FILE), &bytes).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    manifest["state"]["size"] = bytes.len().into();
    manifest["state"]["crc32"] = crc32fast::hash(&bytes).into();
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_string()).unwrap();
    let err = restore_error(&dir);
    assert!(
        err.contains("state.json does not parse") && err.contains("kvm_regs"),
        "{err}"
    );

    // The wrong architecture, asked for explicitly or through the riscv64
    // restore.
    let out = ember()
        .args(["run", "--arch", "riscv64", "--restore"])
        .arg(&good)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("holds a x86_64 snapshot, not riscv64"),
        "{err}"
    );
    let err = ember::vmm::riscv_vm::RiscvVm::restore(&good, Default::default())
        .err()
        .expect("refused");
    assert!(
        matches!(
            &err,
            VmError::Snapshot(SnapshotError::Arch { found, expected: "riscv64" }) if found == "x86_64"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// A port whose first read pauses the VM from inside the vCPU's exit (so
/// the vCPU parks with the `IN` not yet completed by KVM) and answers
/// 0x42.
struct PausingPort {
    live: std::sync::Mutex<Option<std::sync::Arc<ember::vmm::live::LiveVm>>>,
    paused: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
}

impl ember::memory::RegionOps for PausingPort {
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        if let Some(live) = self.live.lock().unwrap().take() {
            live.pause().expect("pause from the exit");
            let _ = self.paused.lock().unwrap().send(());
        }
        0x42
    }

    fn write(&self, _offset: u64, _size: u32, _value: u64) {}
}

/// The vCPU stopped in an `IN` exit whose data KVM stores into RAX only on
/// the next `KVM_RUN`; the snapshot must hold RAX = 0x42 and RIP past the
/// `IN`. Restored without the port (which now reads 0xff), the guest
/// prints the byte it got: 'B'.
#[test]
fn an_io_exit_cut_by_the_pause_is_completed_before_the_snapshot() {
    use ember::vmm::console::{ConsoleInput, ConsoleOutput, OutputCapture};
    use ember::vmm::vm::RestoreOptions;
    use ember::vmm::x86_vm::X86Vm;

    if !kvm_available() {
        return;
    }
    let elf = elf64_from_asm(
        "snapshot-in",
        r#"
        mov $0x3f8, %dx
        mov $'<', %al
        out %al, (%dx)
        mov $0x510, %dx
        in (%dx), %al
        mov $0x3f8, %dx
        out %al, (%dx)
        mov $'>', %al
        out %al, (%dx)
        mov $'\n', %al
        out %al, (%dx)
    1:  jmp 1b
        "#,
    );
    let dir = scratch_dir("kvm-snap-in").join("snap");
    let output = OutputCapture::new();
    let vm = X86Vm::new(ember::VmConfig {
        kernel: Some(elf),
        memory: 64 << 20,
        console_input: ConsoleInput::None,
        console_output: ConsoleOutput::Capture(output.clone()),
        ..ember::VmConfig::default()
    })
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let port = std::sync::Arc::new(PausingPort {
        live: std::sync::Mutex::new(Some(vm.control())),
        paused: std::sync::Mutex::new(tx),
    });
    {
        let tree = vm.tree();
        let mut t = tree.lock().unwrap();
        let id = t.new_io("pausing-port", 1, Some(port)).unwrap();
        t.add_subregion(vm.layout().io, 0x510, id).unwrap();
    }
    let live = vm.control();
    let runner = std::thread::spawn(move || vm.run());
    rx.recv_timeout(PATIENCE).expect("the guest reads the port");
    live.snapshot_with_stats(&dir, &Default::default())
        .expect("snapshot");
    assert_eq!(output.text(), "<");
    live.stop().unwrap();
    assert_eq!(runner.join().unwrap().unwrap().reason, ExitReason::UserQuit);

    let after = OutputCapture::new();
    let vm = X86Vm::restore(
        &dir,
        RestoreOptions {
            console_input: ConsoleInput::None,
            console_output: ConsoleOutput::Capture(after.clone()),
            ..RestoreOptions::default()
        },
    )
    .expect("restore");
    let live = vm.control();
    let runner = std::thread::spawn(move || vm.run());
    let (seen, text) = after.wait_for(">\n", PATIENCE);
    live.stop().unwrap();
    runner.join().unwrap().unwrap();
    assert!(seen, "no output after the restore: {text:?}");
    assert_eq!(text, "B>\n", "the IN was lost or replayed");
}

/// A guest with a virtio-blk disk it drives by hand through one queue (as
/// in `virtio_kvm.rs`): it writes a 512-byte pattern to sector 5, prints
/// `written` with the request's status and the used ring's index, then
/// counts like [`COUNTER_GUEST`] (r15 and RAM, `n=` lines). Between two
/// counts it polls COM1's receiver: an `r` makes it clear its buffer, read
/// sector 5 back through the same queue (descriptor 0, the next available
/// ring slot) and print the status, the used index, the used element's
/// length and whether every byte matches the pattern. A failed probe
/// prints `FAIL` and a step number.
const BLK_COUNTER_GUEST: &str = r#"
        .set BASE, 0xd0000000
        .set DESC, 0x200000
        .set AVAIL, 0x201000
        .set USED, 0x202000
        .set HDR, 0x203000
        .set DATA, 0x204000
        .set STATUS, 0x205000
        .set IDT, 0x206000
        .set FLAG, 0x207000
        .set IDTR, 0x207100
        .set COUNT, 0x208000
        .set VECTOR, 0x30
        .set SECTOR, 5

        mov $0x3f8, %dx
        mov $'B', %al
        out %al, (%dx)
        mov $'\n', %al
        out %al, (%dx)
        VIRTIO_BLK_SETUP

        # (common::virtio_blk_guest fills in the placeholder lines)
        ROUTE_IRQ

        # The pattern, then the write request.
        call pattern
        movl $1, HDR                 # VIRTIO_BLK_T_OUT
        movl $0, HDR + 4
        movq $SECTOR, HDR + 8
        call submit
        mov $msg_written, %rsi
        call report

        xor %r15, %r15
        movq $0, COUNT
step:
        inc %r15
        incq COUNT
        cmp COUNT, %r15
        jne bad
        mov $0x3f8, %dx
        mov $'n', %al
        out %al, (%dx)
        mov $'=', %al
        out %al, (%dx)
        mov %r15, %rax
        mov $16, %ecx
        call hex
        mov $'\n', %al
        out %al, (%dx)
        mov $0x3fd, %dx              # LSR: data ready?
        in (%dx), %al
        test $1, %al
        jz 2f
        mov $0x3f8, %dx
        in (%dx), %al
        cmp $'r', %al
        jne 2f
        call readback
2:      mov $100000, %ecx
delay:
        dec %ecx
        jnz delay
        jmp step

# Reads sector SECTOR into a cleared DATA and reports it.
readback:
        mov $DATA, %rdi
        xor %eax, %eax
        mov $128, %ecx
        rep stosl
        movl $0, HDR                 # VIRTIO_BLK_T_IN
        movl $0, HDR + 4
        movq $SECTOR, HDR + 8
        call submit
        mov $msg_read, %rsi
        call report
        # Compare with the pattern: dword i = i * 0x9e3779b1 + 0x5eed.
        xor %ecx, %ecx
3:      mov %ecx, %eax
        imul $0x9e3779b1, %eax
        add $0x5eed, %eax
        cmp DATA(,%rcx,4), %eax
        jne 4f
        inc %ecx
        cmp $128, %ecx
        jne 3b
        mov $msg_ok, %rsi
        jmp 5f
4:      mov $msg_mismatch, %rsi
5:      call puts
        ret

# Fills DATA with the pattern.
pattern:
        xor %ecx, %ecx
1:      mov %ecx, %eax
        imul $0x9e3779b1, %eax
        add $0x5eed, %eax
        mov %eax, DATA(,%rcx,4)
        inc %ecx
        cmp $128, %ecx
        jne 1b
        ret

# Prints the string at %rsi, then " s=" status, " u=" used.idx and
# " len=" the length of the used element just returned, and a newline.
report:
        call puts
        mov $msg_s, %rsi
        call puts
        movzbl STATUS, %eax
        mov $2, %ecx
        call hex
        mov $msg_u, %rsi
        call puts
        movzwl USED + 2, %eax
        mov $4, %ecx
        call hex
        mov $msg_len, %rsi
        call puts
        movzwl USED + 2, %eax
        dec %eax
        and $7, %eax
        mov USED + 8(,%rax,8), %eax  # used.ring[idx - 1].len
        mov $8, %ecx
        call hex
        mov $'\n', %al
        out %al, (%dx)
        ret

# Prints the NUL-terminated string at %rsi on COM1; leaves %dx = 0x3f8.
puts:
        mov $0x3f8, %dx
1:      lodsb
        test %al, %al
        jz 2f
        out %al, (%dx)
        jmp 1b
2:      ret

# Prints the low %ecx hex digits of %rax on COM1; leaves %dx = 0x3f8.
hex:
        mov $0x3f8, %dx
        mov %rax, %r8
1:      dec %ecx
        mov %r8, %rax
        shl $2, %ecx
        shr %cl, %rax
        shr $2, %ecx
        and $0xf, %al
        cmp $10, %al
        jb 2f
        add $39, %al
2:      add $'0', %al
        out %al, (%dx)
        test %ecx, %ecx
        jnz 1b
        ret

        VIRTIO_BLK_SUBMIT

fail:
        mov $0x3f8, %dx
        mov $'F', %al
        out %al, (%dx)
        mov $'A', %al
        out %al, (%dx)
        mov $'I', %al
        out %al, (%dx)
        mov $'L', %al
        out %al, (%dx)
        mov %cl, %al
        add $'0', %al
        out %al, (%dx)
        mov $'\n', %al
        out %al, (%dx)
        jmp hang
bad:
        mov $msg_bad, %rsi
        call puts
hang:
        cli
        hlt
        jmp hang

msg_written:  .asciz "written"
msg_read:     .asciz "read"
msg_s:        .asciz " s="
msg_u:        .asciz " u="
msg_len:      .asciz " len="
msg_ok:       .asciz "data ok\n"
msg_mismatch: .asciz "data MISMATCH\n"
msg_bad:      .asciz "BAD\n"
"#;

/// The sector pattern of [`BLK_COUNTER_GUEST`].
fn blk_pattern() -> Vec<u8> {
    (0u32..128)
        .flat_map(|i| {
            i.wrapping_mul(0x9e37_79b1)
                .wrapping_add(0x5eed)
                .to_le_bytes()
        })
        .collect()
}

/// The block device's request counters in `counters()`.
fn blk_counters(vm: &ember::RunningVm) -> (u64, u64) {
    let c = vm.counters();
    let d = &c["virtio"][0]["device_counters"];
    (
        d["reads"].as_u64().expect("reads"),
        d["writes"].as_u64().expect("writes"),
    )
}

/// The issue's acceptance test for x86_64 under KVM: a disk written
/// before the snapshot reads back after the restore, through the queue
/// the guest set up before it (so the restored queue positions must be
/// right: a device that forgot them would return the element in the wrong
/// used slot or process the old request again), and the guest's counter
/// keeps counting across the restore.
#[test]
fn a_restored_guest_reads_back_what_it_wrote_to_its_disk_before_the_snapshot() {
    use ember::vmm::config::DiskSpec;

    if !kvm_available() {
        return;
    }
    let work = scratch_dir("kvm-snap-blk");
    let disk = work.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
    let dir = work.join("snap");
    let elf = elf64_from_asm(
        "snapshot-blk",
        &common::virtio_blk_guest(BLK_COUNTER_GUEST, 5),
    );
    let vm = VmBuilder::new(GuestArch::X86_64)
        .kernel(elf)
        .memory_mib(64)
        .disk(DiskSpec {
            path: disk.clone(),
            readonly: false,
            id: None,
        })
        .start()
        .expect("start");
    // Status 0 (OK), one used element, which reports 1 byte written by
    // the device (the status byte of a write request).
    let out = vm
        .wait_for_output("written ", PATIENCE)
        .and_then(|_| vm.wait_for_output(&count_line(5), PATIENCE))
        .unwrap_or_else(|e| panic!("{e}: {}", vm.output()));
    assert!(
        out.contains("written s=00 u=0001 len=00000001\n"),
        "the write before the snapshot failed:\n{out}"
    );
    assert_eq!(blk_counters(&vm), (0, 1));
    vm.pause().unwrap();
    vm.snapshot(&dir).expect("snapshot");
    let before = vm.output();
    assert_eq!(vm.stop().unwrap(), ExitReason::UserQuit);
    // The write reached the file; the snapshot does not hold the disk.
    let image = std::fs::read(&disk).unwrap();
    assert_eq!(&image[5 * 512..6 * 512], &blk_pattern()[..]);
    assert!(!before.contains("read "), "{before}");

    let vm = VmBuilder::restore(&dir).expect("restore");
    let last = *counts(complete_lines(&before)).last().unwrap();
    vm.wait_for_output(&count_line(last + 3), PATIENCE)
        .unwrap_or_else(|e| panic!("{e}: {}", vm.output()));
    vm.send_input(b"r");
    // The guest answers within one count; the target count comes well
    // after its answer.
    let after = vm
        .wait_for_output("data ", PATIENCE)
        .and_then(|_| vm.wait_for_output(&count_line(last + 20), PATIENCE))
        .unwrap_or_else(|e| panic!("{e}: {}", vm.output()));
    // The read is the queue's second request: used index 2, and its used
    // element reports the 512 data bytes and the status byte.
    assert!(
        after.contains("read s=00 u=0002 len=00000201\ndata ok\n"),
        "the read after the restore:\n{after}"
    );
    // Exactly one request reached the restored device: the read.
    assert_eq!(blk_counters(&vm), (1, 0));
    assert_eq!(vm.stop().unwrap(), ExitReason::UserQuit);
    check_continuation(&before, &after);
    let _ = std::fs::remove_dir_all(&work);
}
