//! A guest that floods its console while `ember run`'s stdout is a pipe
//! nobody reads: the control plane still answers, `ember ctl stop` and
//! SIGTERM still end the process promptly, and the output that could not
//! be written is counted (API `counters`, and a line on stderr at exit).
//! One x86_64 guest under KVM (the UART on a vCPU thread) and one riscv64
//! guest on the software CPU (the UART and the SBI console on a hart
//! thread).

#[path = "common/mod.rs"]
mod common;
#[path = "common/riscv.rs"]
mod riscv;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{firmware_file, kvm_available, scratch_dir};

/// How long the tests wait for the VM to get going (a loaded 2-core
/// machine runs the whole suite at once).
const PATIENCE: Duration = Duration::from_secs(60);
/// The bound on ending the process that the tests assert: generous, to
/// stay clear of scheduling noise; the promise is one second and the
/// measured time is printed.
const EXIT_BOUND: Duration = Duration::from_secs(10);
/// The bound on a control call answering (the API client itself gives up
/// after its own timeout).
const ANSWER_BOUND: Duration = Duration::from_secs(4);
/// More than a default pipe holds (64 KiB): once the guest has sent this
/// much, the pipe is full and writing to it would block.
const PIPE_FULL: u64 = 64 << 10;

/// An `ember run` whose stdout is a pipe nobody reads.
struct Flooding {
    child: Child,
    socket: PathBuf,
    /// Held open and never read, so the pipe fills up.
    _stdout: ChildStdout,
    /// Console input, when the VM reads it from stdin.
    stdin: Option<ChildStdin>,
    /// Everything on stderr, sent once the process has closed it (exited).
    stderr: Receiver<String>,
    dir: PathBuf,
}

impl Flooding {
    fn start(tag: &str, args: &[&str]) -> Flooding {
        Self::start_with_input(tag, args, false)
    }

    /// With `stdin`, console input comes from a pipe the test writes to
    /// (`--serial-input stdin`, where `Ctrl-a x` quits); otherwise none.
    fn start_with_input(tag: &str, args: &[&str], stdin: bool) -> Flooding {
        let dir = scratch_dir(tag);
        let socket = dir.join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .arg("run")
            .args(args)
            .arg("--serial-input")
            .arg(if stdin { "stdin" } else { "none" })
            .arg("--api-socket")
            .arg(&socket)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ember");
        let stdout = child.stdout.take().expect("stdout pipe");
        let input = child.stdin.take();
        let mut err = child.stderr.take().expect("stderr pipe");
        let (tx, stderr) = channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        let vm = Flooding {
            child,
            socket,
            _stdout: stdout,
            stdin: input,
            stderr,
            dir,
        };
        vm.wait_until("the API socket", || vm.socket.exists());
        vm
    }

    /// Polls `ready` until it holds; panics with what stderr said if the
    /// process ends first or `PATIENCE` runs out.
    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ready() {
            if let Ok(text) = self.stderr.try_recv() {
                panic!("ember ended while waiting for {what}: {text}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `ember ctl OP`; asserts it succeeded within [`ANSWER_BOUND`].
    fn ctl(&self, args: &[&str]) -> String {
        let started = Instant::now();
        let (ok, out, err) = ctl(&self.socket, args);
        let took = started.elapsed();
        assert!(ok, "ctl {args:?} failed after {took:?}: {err}");
        assert!(took < ANSWER_BOUND, "ctl {args:?} took {took:?}");
        out
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl(&["counters", "--json"])).expect("counters JSON")
    }

    /// Waits until the guest has sent what the pipe holds through the UART.
    fn wait_for_full_pipe(&self) {
        self.wait_for_output(|c| c["serial"]["tx_bytes"].as_u64());
    }

    /// Waits until the guest has sent what the pipe holds, as `sent`
    /// reads it from the counters.
    fn wait_for_output(&self, sent: impl Fn(&serde_json::Value) -> Option<u64>) {
        self.wait_until("the guest to fill the pipe", || {
            let (ok, out, _) = ctl(&self.socket, &["counters", "--json"]);
            ok && serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|c| sent(&c))
                .is_some_and(|n| n >= PIPE_FULL)
        });
    }

    /// Waits for the process to end (its stderr closes), at most
    /// [`EXIT_BOUND`] after `since`; returns how long it took and stderr.
    fn wait_for_exit(mut self, since: Instant, how: &str) -> (Duration, String) {
        let Ok(text) = self.stderr.recv_timeout(EXIT_BOUND) else {
            panic!("ember did not exit within {EXIT_BOUND:?} of {how}");
        };
        let took = since.elapsed();
        let status = self.child.wait().expect("wait for ember");
        eprintln!("ember exited {took:?} after {how}");
        assert!(status.success(), "{how}: {status:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        let _ = std::fs::remove_dir_all(&self.dir);
        (took, text)
    }
}

impl Drop for Flooding {
    /// A failed test must not leave a flooding VM behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ctl(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ember ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Real-mode firmware writing 'A' to COM1 forever, a page per `rep outsb`
/// (one exit each, so the flood is fast even on a loaded host).
fn x86_flood() -> PathBuf {
    firmware_file(
        "console-flood",
        r#"
        cld
        movw $0x3f8, %dx
    1:  movw $text, %si
        movw $4096, %cx
        rep outsb
        jmp 1b
    text:
        .fill 4096, 1, 0x41
    "#,
    )
}

fn x86_args(fw: &Path) -> Vec<String> {
    vec![
        "--memory".into(),
        "32M".into(),
        "--firmware".into(),
        fw.to_str().expect("UTF-8 path").into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The lost-output notice `ember run` prints at exit; returns how many
/// bytes it says were dropped.
fn drop_notice(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("console output:"))
        .unwrap_or_else(|| panic!("no lost-output notice: {stderr}"));
    line.split("console output: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

#[test]
fn x86_flood_control_plane_answers_and_stop_ends_the_process() {
    if !kvm_available() {
        return;
    }
    let fw = x86_flood();
    let vm = Flooding::start("flood-x86-stop", &strs(&x86_args(&fw)));
    // Filling the 1 MiB buffer behind the pipe as well takes a
    // byte-per-exit x86 guest half a minute on a nested, loaded host, so
    // the riscv64 test below checks the dropping; here the pipe is full
    // and the writer thread is stuck in write(2).
    vm.wait_for_full_pipe();
    assert_eq!(vm.ctl(&["pause"]).trim(), "paused");
    let info: serde_json::Value =
        serde_json::from_str(&vm.ctl(&["info", "--json"])).expect("info JSON");
    assert_eq!(info["state"], "paused");
    let paused = vm.counters()["serial"]["tx_bytes"].as_u64();
    assert_eq!(
        vm.counters()["serial"]["tx_bytes"].as_u64(),
        paused,
        "the guest sent output while paused"
    );
    assert_eq!(vm.ctl(&["resume"]).trim(), "running");
    let out = vm.counters()["console_output"].clone();
    let pending = out["pending_bytes"].as_u64().expect("pending_bytes");
    assert!(
        pending > 0 && pending <= ember::vmm::console_writer::CONSOLE_BUFFER_BYTES as u64,
        "{out}"
    );
    let stopped = Instant::now();
    vm.ctl(&["stop"]);
    let (_, stderr) = vm.wait_for_exit(stopped, "ctl stop");
    // Nothing dropped yet, but the stuck write and what waited behind it
    // never arrived, and the notice says so.
    drop_notice(&stderr);
    assert!(stderr.contains("not written at exit"), "{stderr}");
}

#[test]
fn x86_flood_sigterm_ends_the_process() {
    if !kvm_available() {
        return;
    }
    let fw = x86_flood();
    let vm = Flooding::start("flood-x86-term", &strs(&x86_args(&fw)));
    vm.wait_for_full_pipe();
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid, which it still is (not yet
    // waited for).
    let rc = unsafe { libc::kill(vm.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    vm.wait_for_exit(signalled, "SIGTERM");
}

#[test]
fn x86_flood_ctrl_a_x_ends_the_process() {
    if !kvm_available() {
        return;
    }
    let fw = x86_flood();
    let mut vm = Flooding::start_with_input("flood-x86-quit", &strs(&x86_args(&fw)), true);
    vm.wait_for_full_pipe();
    let quit = Instant::now();
    let mut input = vm.stdin.take().expect("stdin pipe");
    input.write_all(b"\x01x").expect("type Ctrl-a x");
    vm.wait_for_exit(quit, "Ctrl-a x");
}

/// A 64-bit kernel driving virtio-console (the only virtio device, so at
/// 0xd000_0000) by hand: 64 KiB of 'C' on transmitq, published again as
/// soon as the device has used it, forever. The device writes on the event
/// loop under its transport's lock.
fn x86_virtio_console_flood() -> PathBuf {
    common::elf64_from_asm(
        "hvc-flood",
        r#"
        .set BASE, 0xd0000000
        .set DESC, 0x200000
        .set AVAIL, 0x201000
        .set USED, 0x202000
        .set RXQ, 0x203000
        .set DATA, 0x210000
        mov $DATA, %rdi
        mov $0x43, %al
        mov $0x10000, %rcx
        rep stosb
        mov $BASE, %rbx
        cmpl $3, 0x08(%rbx)          # device id: console
        jne fail
        movl $0, 0x70(%rbx)
        movl $1, 0x70(%rbx)
        movl $3, 0x70(%rbx)
        movl $1, 0x24(%rbx)
        movl $1, 0x20(%rbx)          # VIRTIO_F_VERSION_1 (bit 32)
        movl $0, 0x24(%rbx)
        movl $0, 0x20(%rbx)
        movl $11, 0x70(%rbx)         # FEATURES_OK
        movl $0, 0x30(%rbx)          # queue 0: receiveq, no buffers
        movl $8, 0x38(%rbx)
        movl $RXQ, 0x80(%rbx)
        movl $0, 0x84(%rbx)
        movl $RXQ + 0x1000, 0x90(%rbx)
        movl $0, 0x94(%rbx)
        movl $RXQ + 0x2000, 0xa0(%rbx)
        movl $0, 0xa4(%rbx)
        movl $1, 0x44(%rbx)
        movl $1, 0x30(%rbx)          # queue 1: transmitq
        movl $8, 0x38(%rbx)
        movl $DESC, 0x80(%rbx)
        movl $0, 0x84(%rbx)
        movl $AVAIL, 0x90(%rbx)
        movl $0, 0x94(%rbx)
        movl $USED, 0xa0(%rbx)
        movl $0, 0xa4(%rbx)
        movl $1, 0x44(%rbx)
        movl $15, 0x70(%rbx)         # DRIVER_OK
        movq $DATA, DESC             # descriptor 0: DATA, 64 KiB, read-only
        movl $0x10000, DESC + 8
        movl $0, DESC + 12
        xor %eax, %eax               # every ring entry is head 0 (zeroed RAM)
    1:  inc %eax
        mfence
        movw %ax, AVAIL + 2
        mfence
        movl $1, 0x50(%rbx)          # QueueNotify (ioeventfd)
    2:  pause
        cmpw %ax, USED + 2
        jne 2b
        jmp 1b
    fail:
        hlt
        jmp fail
    "#,
    )
}

#[test]
fn x86_virtio_console_flood_pause_answers_and_stop_ends_the_process() {
    if !kvm_available() {
        return;
    }
    let kernel = x86_virtio_console_flood();
    let vm = Flooding::start(
        "flood-hvc",
        &[
            "--memory",
            "64M",
            "--console",
            "virtio",
            "--kernel",
            kernel.to_str().expect("UTF-8 path"),
        ],
    );
    vm.wait_for_output(|c| c["virtio"][0]["device_counters"]["tx_bytes"].as_u64());
    // Pausing takes the transport's lock, which the device held while it
    // wrote to stdout before output went through the buffer.
    assert_eq!(vm.ctl(&["pause"]).trim(), "paused");
    assert_eq!(vm.ctl(&["resume"]).trim(), "running");
    vm.wait_until("output to be dropped", || {
        vm.counters()["console_output"]["dropped_bytes"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    let stopped = Instant::now();
    vm.ctl(&["stop"]);
    let (_, stderr) = vm.wait_for_exit(stopped, "ctl stop");
    assert!(drop_notice(&stderr) > 0, "{stderr}");
}

/// A riscv64 `Image` whose code writes 'B' to the UART forever, with an
/// SBI debug-console write (from the hart thread, under the UART's lock)
/// every 256 bytes.
fn riscv_flood() -> PathBuf {
    let program = riscv::assemble(
        r#"
        .option norvc
        .globl _start
    _start:
        j main
        .word 0
        .dword 0                 # text_offset
        .dword image_end - _start
        .dword 0                 # flags
        .word 2                  # version
        .word 0
        .dword 0
        .byte 0x52, 0x49, 0x53, 0x43, 0x56, 0, 0, 0   # "RISCV"
        .byte 0x52, 0x53, 0x43, 0x05                  # "RSC\x05"
        .word 0
    main:
        li t0, 0x10000000        # UART0
        li t1, 0x42
    outer:
        li t2, 256
    1:  sb t1, 0(t0)
        addi t2, t2, -1
        bnez t2, 1b
        li a7, 0x4442434E        # SBI DBCN
        li a6, 2                 # write_byte
        li a0, 0x43
        ecall
        j outer
    image_end:
    "#,
    );
    let path = scratch_dir("rv-flood").join("Image");
    std::fs::write(&path, &program.image).expect("write Image");
    path
}

#[test]
fn riscv64_flood_pause_answers_and_sigint_ends_the_process() {
    let image = riscv_flood();
    let vm = Flooding::start(
        "flood-rv",
        &[
            "--arch",
            "riscv64",
            "--memory",
            "64M",
            "--kernel",
            image.to_str().expect("UTF-8 path"),
        ],
    );
    vm.wait_for_full_pipe();
    assert_eq!(vm.ctl(&["pause"]).trim(), "paused");
    let info: serde_json::Value =
        serde_json::from_str(&vm.ctl(&["info", "--json"])).expect("info JSON");
    assert_eq!(info["state"], "paused");
    assert_eq!(vm.ctl(&["resume"]).trim(), "running");
    vm.wait_until("output to be dropped", || {
        vm.counters()["console_output"]["dropped_bytes"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid, which it still is (not yet
    // waited for).
    let rc = unsafe { libc::kill(vm.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let (_, stderr) = vm.wait_for_exit(signalled, "SIGINT");
    assert!(drop_notice(&stderr) > 0, "{stderr}");
}
