//! riscv64 hosts under KVM, end to end: `ember run --accel kvm` boots the
//! riscv64 test guests on a riscv64 Linux host's /dev/kvm.
//!
//! These tests run inside the test rig (`tools/riscv-kvm-rig.sh`): an
//! emulated riscv64 host with the hypervisor extension whose init runs this
//! binary. The rig tells the tests where things are:
//!
//! * `EMBER_BIN`: the static riscv64 `ember` (else the one cargo built).
//! * `EMBER_RIG_KERNEL`, `EMBER_RIG_INITRD`: the guest kernel and the
//!   initramfs that prints `EMBER-GUEST-USERSPACE-OK: N cpus` and powers off
//!   (tools/riscv-linux-guest.sh).
//! * `EMBER_RIG_TEST_INITRD`: the device-test initramfs
//!   (resources/riscv64/test-init.c, run as `ember_test=NAME`).
//! * `EMBER_RIG_DISK`: an ext4 image holding `in.txt`, whose text is in the
//!   file `EMBER_RIG_DISK_IN`.
//!
//! A missing /dev/kvm fails every test (the rig always has one): nothing
//! here is skipped. Each test runs `ember` as a child process, waits for its
//! output with a deadline (never a sleep standing in for an event), and
//! kills it if the test fails. Each prints how long it took.
//!
//! On other architectures this file compiles to nothing.

#![cfg(target_arch = "riscv64")]

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one wait may take before the test fails: a deadline, not a
/// synchronisation. Generous, because the rig's host is itself emulated
/// (a Linux guest under KVM there reaches userspace in 1-4 s).
const PATIENCE: Duration = Duration::from_secs(180);

const COUNT_PREFIX: &str = "EMBER-TEST: count=";

// ---------------------------------------------------------------------------
// The rig's files and the KVM device.

fn ember_bin() -> PathBuf {
    std::env::var_os("EMBER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ember")))
}

/// A file the rig provides through environment variable `var`.
fn rig_file(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: these tests run inside the rig (tools/riscv-kvm-rig.sh)")
    });
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    path
}

fn kernel() -> String {
    rig_file("EMBER_RIG_KERNEL").display().to_string()
}

/// KVM must be usable: the rig's host always offers it, so its absence is
/// a failure of the rig, never a reason to skip.
fn require_kvm() {
    let meta = std::fs::metadata("/dev/kvm")
        .unwrap_or_else(|e| panic!("/dev/kvm: {e} (the rig's host kernel must have CONFIG_KVM)"));
    assert!(
        meta.file_type().is_char_device(),
        "/dev/kvm is not a character device"
    );
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .unwrap_or_else(|e| panic!("open /dev/kvm read-write: {e}"));
}

/// Says how long a test took when it ends, passed or failed.
struct Timer {
    name: &'static str,
    started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!(
            "riscv_kvm: {} {} after {:.1} s",
            self.name,
            if std::thread::panicking() {
                "FAILED"
            } else {
                "passed"
            },
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The start of every test: KVM is there, and the clock runs.
fn begin(name: &'static str) -> Timer {
    eprintln!("riscv_kvm: {name} starts");
    let timer = Timer {
        name,
        started: Instant::now(),
    };
    require_kvm();
    timer
}

/// A directory of its own for one test.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-rig-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's scratch directory");
    dir
}

/// A token no earlier run can have left behind.
fn token(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{tag}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------
// A running `ember`, its output collected as it comes.

#[derive(Default)]
struct Streams {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Streams not at their end yet.
    open: usize,
}

#[derive(Default)]
struct Shared {
    streams: Mutex<Streams>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `ember` as a child process; killed when dropped, so a failing test
/// leaves no VM running behind it.
struct Ember {
    child: Child,
    stdin: Option<ChildStdin>,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// The end of `text`, for failure messages (a counting guest prints a lot).
fn tail(text: &str) -> &str {
    const KEEP: usize = 6000;
    if text.len() <= KEEP {
        return text;
    }
    let mut start = text.len() - KEEP;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

impl Ember {
    /// Starts `ember ARGS`; with `input`, its stdin is a pipe the test
    /// writes to, else /dev/null.
    fn start(args: &[&str], input: bool) -> Ember {
        eprintln!("riscv_kvm: ember {}", args.join(" "));
        let mut child = Command::new(ember_bin())
            .args(args)
            .stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", ember_bin().display()));
        let shared = Arc::new(Shared::default());
        shared.lock().open = 2;
        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("ember's stdout is a pipe");
        let stderr = child.stderr.take().expect("ember's stderr is a pipe");
        readers.push(Self::reader(stdout, shared.clone(), false));
        readers.push(Self::reader(stderr, shared.clone(), true));
        Ember {
            stdin: child.stdin.take(),
            child,
            shared,
            readers,
            status: None,
        }
    }

    fn reader(
        mut from: impl Read + Send + 'static,
        shared: Arc<Shared>,
        err: bool,
    ) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = from.read(&mut buf).unwrap_or(0);
                let mut s = shared.lock();
                if n == 0 {
                    s.open -= 1;
                    shared.changed.notify_all();
                    return;
                }
                if err {
                    s.stderr.extend_from_slice(&buf[..n]);
                } else {
                    s.stdout.extend_from_slice(&buf[..n]);
                }
                shared.changed.notify_all();
            }
        })
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().stderr).into_owned()
    }

    /// What a failure message shows about this VM.
    fn describe(&self) -> String {
        format!(
            "ember's stdout (end):\n{}\nember's stderr:\n{}",
            tail(&self.stdout()),
            tail(&self.stderr())
        )
    }

    /// Waits until `f(stdout)` holds and returns stdout then. Fails at the
    /// deadline, or at once when ember ends without it holding.
    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut s = self.shared.lock();
        loop {
            let text = String::from_utf8_lossy(&s.stdout).into_owned();
            if f(&text) {
                return text;
            }
            let ended = s.open == 0;
            let now = Instant::now();
            if ended || now >= deadline {
                drop(s);
                panic!(
                    "{} waiting for {what}\n{}",
                    if ended { "ember ended" } else { "timed out" },
                    self.describe()
                );
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for ember to end (both its output streams closed, then the
    /// process) and returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + PATIENCE;
        {
            let mut s = self.shared.lock();
            while s.open > 0 {
                let now = Instant::now();
                if now >= deadline {
                    drop(s);
                    panic!("ember did not end within {PATIENCE:?}\n{}", self.describe());
                }
                s = self
                    .shared
                    .changed
                    .wait_timeout(s, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        let status = self.child.wait().expect("wait for ember");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.status = Some(status);
        status
    }

    /// Waits for ember to end and fails unless it ended with status 0.
    fn wait_success(&mut self) -> String {
        let status = self.wait_exit();
        assert!(
            status.success(),
            "ember ended with {status}\n{}",
            self.describe()
        );
        self.stdout()
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("ember was started with input");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to ember's stdin");
    }
}

impl Drop for Ember {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The guests' output.

/// The values of `EMBER-TEST: key=value` lines, in order.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("EMBER-TEST: {key}=");
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .collect()
}

/// Every counter value of the `count` guest, from complete lines.
fn counts(text: &str) -> Vec<u64> {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix(COUNT_PREFIX))
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn last_count(text: &str) -> Option<u64> {
    counts(text).last().copied()
}

/// The guest finished its test without complaint.
fn guest_succeeded(text: &str) {
    let errors: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("EMBER-TEST: error"))
        .collect();
    assert!(
        errors.is_empty(),
        "guest errors: {errors:?}\n{}",
        tail(text)
    );
    assert!(text.contains("EMBER-TEST-DONE rc=0"), "{}", tail(text));
}

/// The counts go up by one from line to line: no restart, no gap.
fn assert_contiguous(all: &[u64]) {
    for pair in all.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "the count jumped: {all:?}");
    }
}

// ---------------------------------------------------------------------------
// `ember ctl`.

/// `ember ctl --socket SOCKET ARGS...`: whether it succeeded, and its
/// stdout and stderr together.
fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(ember_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ember ctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `ember ctl ARGS`, which must succeed; its output, trimmed.
fn ctl_ok(vm: &Ember, socket: &Path, args: &[&str]) -> String {
    let (ok, out) = ctl(socket, args);
    assert!(ok, "ember ctl {args:?} failed: {out}\n{}", vm.describe());
    out.trim().to_owned()
}

/// `ember ctl --json OP`, parsed.
fn ctl_json(vm: &Ember, socket: &Path, op: &str) -> Value {
    let out = ctl_ok(vm, socket, &["--json", op]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ember ctl {op}: not JSON ({e}): {out}"))
}

/// Polls until the API socket exists (ember binds it before the guest
/// runs, so this is normally true at once).
fn wait_for_socket(vm: &Ember, socket: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "no API socket at {}\n{}",
            socket.display(),
            vm.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guest's console output that ember has taken in so far (counters).
fn console_bytes(vm: &Ember, socket: &Path) -> u64 {
    let counters = ctl_json(vm, socket, "counters");
    counters["console_output"]["accepted_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no console_output.accepted_bytes in {counters}"))
}

/// Starts the counting guest under KVM with an API socket.
/// `irqchip`: `--irqchip` (snapshots need the PLIC; `auto` picks the AIA
/// in the --aia rig).
fn counting_vm(socket: &Path, cpus: &str, irqchip: &str) -> Ember {
    let kernel = kernel();
    let initrd = rig_file("EMBER_RIG_TEST_INITRD").display().to_string();
    Ember::start(
        &[
            "run",
            "--accel",
            "kvm",
            "--memory",
            "256M",
            "--cpus",
            cpus,
            "--irqchip",
            irqchip,
            "--serial-input",
            "none",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            "console=ttyS0 panic=-1 quiet ember_test=count",
            "--api-socket",
            socket.to_str().expect("UTF-8 scratch path"),
        ],
        false,
    )
}

/// The VM behind `socket` runs under KVM, not the software CPU.
fn assert_kvm(vm: &Ember, socket: &Path) {
    let info = ctl_json(vm, socket, "info");
    assert_eq!(info["config"]["accel"], "kvm", "{info}");
    assert_eq!(info["config"]["arch"], "riscv64", "{info}");
}

// ---------------------------------------------------------------------------
// The tests.

/// The rig itself works: KVM is there and answers, and ember runs.
#[test]
fn kvm_device_is_present_and_ember_runs() {
    let _t = begin("kvm_device_is_present_and_ember_runs");
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .expect("open /dev/kvm");
    // KVM_GET_API_VERSION = _IO(KVMIO, 0x00); every KVM answers 12.
    // SAFETY: an ioctl without arguments on a descriptor we own.
    let version = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&kvm), 0xae00, 0) };
    assert_eq!(version, 12, "KVM_GET_API_VERSION");
    let out = Command::new(ember_bin())
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", ember_bin().display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ember --version: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ember "), "{text}");
}

/// The rig's host kernel runs guests, and forwards a guest's legacy SBI
/// console call to userspace (it needs CONFIG_RISCV_SBI_V01 for that): a
/// few instructions under raw KVM ioctls, without ember, so that a failure
/// here points at the rig and not at ember.
#[test]
fn kvm_runs_a_guest_and_forwards_its_sbi_console_call() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let _t = begin("kvm_runs_a_guest_and_forwards_its_sbi_console_call");
    // _IO/_IOW(KVMIO = 0xae, nr[, size]).
    const KVM_CREATE_VM: u64 = 0xae01;
    const KVM_GET_VCPU_MMAP_SIZE: u64 = 0xae04;
    const KVM_CREATE_VCPU: u64 = 0xae41;
    const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;
    const KVM_SET_ONE_REG: u64 = 0x4010_aeac;
    const KVM_RUN: u64 = 0xae80;
    const KVM_EXIT_RISCV_SBI: u32 = 35;
    // KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_CORE | pc (index 0).
    const REG_PC: u64 = 0x8000_0000_0000_0000 | 0x0030_0000_0000_0000 | (2 << 24);
    const RAM: u64 = 0x8000_0000;
    const RAM_SIZE: usize = 0x1_0000;

    fn ioctl(fd: &OwnedFd, request: u64, arg: u64, what: &str) -> i32 {
        // SAFETY: KVM ioctls on a descriptor we own; every pointer argument
        // points to a live value of the size the request encodes.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
        assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
        r
    }
    let kvm: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .expect("open /dev/kvm")
        .into();
    // SAFETY: the ioctls return new descriptors that nothing else owns.
    let vm = unsafe { OwnedFd::from_raw_fd(ioctl(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM")) };

    // Guest RAM with the program at its start: SBI legacy console putchar
    // (a7 = EID 1, a0 = 'K'), which should end KVM_RUN. A kernel that does
    // not forward it returns to the guest, which then shuts down through
    // SBI SRST (handled in the kernel: KVM_EXIT_SYSTEM_EVENT), so that case
    // fails here at once instead of spinning until the rig's timeout.
    // SAFETY: a fresh anonymous mapping, unmapped at the end.
    let ram = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RAM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(ram, libc::MAP_FAILED, "mmap guest RAM");
    let program: [u32; 10] = [
        0x0010_0893, // addi a7, zero, 1       legacy console putchar
        0x04b0_0513, // addi a0, zero, 'K'
        0x0000_0073, // ecall
        0x5352_58b7, // lui a7, 0x53525
        0x3548_8893, // addi a7, a7, 0x354      a7 = 0x53525354, SRST
        0x0000_0813, // addi a6, zero, 0        system_reset
        0x0000_0513, // addi a0, zero, 0        shutdown
        0x0000_0593, // addi a1, zero, 0        no reason
        0x0000_0073, // ecall
        0x0000_006f, // j .
    ];
    // SAFETY: the mapping is RAM_SIZE bytes, page-aligned, and ours.
    unsafe { std::ptr::copy_nonoverlapping(program.as_ptr(), ram.cast::<u32>(), program.len()) };
    #[repr(C)]
    struct Region {
        slot: u32,
        flags: u32,
        guest_phys_addr: u64,
        memory_size: u64,
        userspace_addr: u64,
    }
    let region = Region {
        slot: 0,
        flags: 0,
        guest_phys_addr: RAM,
        memory_size: RAM_SIZE as u64,
        userspace_addr: ram as u64,
    };
    ioctl(
        &vm,
        KVM_SET_USER_MEMORY_REGION,
        &region as *const Region as u64,
        "KVM_SET_USER_MEMORY_REGION",
    );
    // SAFETY: as for the VM descriptor.
    let vcpu = unsafe { OwnedFd::from_raw_fd(ioctl(&vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU")) };
    // A vCPU starts in S-mode with the MMU off: only the pc needs setting.
    let pc = RAM;
    let one_reg = [REG_PC, &pc as *const u64 as u64];
    ioctl(
        &vcpu,
        KVM_SET_ONE_REG,
        one_reg.as_ptr() as u64,
        "KVM_SET_ONE_REG pc",
    );
    let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE") as usize;
    // SAFETY: the vCPU's shared kvm_run area, as KVM documents it.
    let run = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            run_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu.as_raw_fd(),
            0,
        )
    };
    assert_ne!(run, libc::MAP_FAILED, "mmap kvm_run");
    ioctl(&vcpu, KVM_RUN, 0, "KVM_RUN");
    // struct kvm_run: exit_reason at 8; the exit union at 32, whose
    // riscv_sbi member starts with extension_id, function_id, args[6].
    // SAFETY: reads inside the kvm_run mapping, after KVM_RUN returned.
    let (reason, eid, arg0) = unsafe {
        let base = run.cast::<u8>();
        (
            base.add(8).cast::<u32>().read(),
            base.add(32).cast::<u64>().read(),
            base.add(48).cast::<u64>().read(),
        )
    };
    // SAFETY: both mappings are ours and no longer used.
    unsafe {
        libc::munmap(run, run_size);
        libc::munmap(ram, RAM_SIZE);
    }
    assert_eq!(
        reason, KVM_EXIT_RISCV_SBI,
        "exit reason (35 = KVM_EXIT_RISCV_SBI; 24 = KVM_EXIT_SYSTEM_EVENT: the putchar was not forwarded)"
    );
    assert_eq!(eid, 1, "SBI extension (1 = legacy console putchar)");
    assert_eq!(arg0, u64::from(b'K'), "the character the guest put");
}

fn boot(name: &'static str, cpus: &str) {
    let _t = begin(name);
    let kernel = kernel();
    let initrd = rig_file("EMBER_RIG_INITRD").display().to_string();
    let mut vm = Ember::start(
        &[
            "run",
            "--accel",
            "kvm",
            "--memory",
            "256M",
            "--cpus",
            cpus,
            "--serial-input",
            "none",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            "console=ttyS0 panic=-1",
        ],
        false,
    );
    let text = vm.wait_success();
    // The guest's init prints how many CPUs it sees, then powers off.
    let want = format!("EMBER-GUEST-USERSPACE-OK: {cpus} cpus");
    assert!(text.contains(&want), "no {want:?}\n{}", vm.describe());
    assert!(text.contains("reboot: Power down"), "{}", vm.describe());
}

#[test]
fn boots_to_userspace_with_one_vcpu() {
    boot("boots_to_userspace_with_one_vcpu", "1");
}

#[test]
fn boots_to_userspace_with_two_vcpus() {
    boot("boots_to_userspace_with_two_vcpus", "2");
}

/// The TCG test `block_ext4_written_by_the_guest_reads_back_on_the_host`
/// under KVM: the guest mounts the ext4 disk, reads in.txt, writes out.txt
/// and reads it back; a read-only second disk stays unchanged. There is no
/// debugfs in the rig, so the host side looks for the written text in the
/// image's bytes instead.
#[test]
fn virtio_blk_round_trip_on_ext4() {
    let _t = begin("virtio_blk_round_trip_on_ext4");
    let dir = scratch("blk");
    let disk = dir.join("disk.ext4");
    std::fs::copy(rig_file("EMBER_RIG_DISK"), &disk).expect("copy the rig's ext4 image");
    let host_text = std::fs::read_to_string(rig_file("EMBER_RIG_DISK_IN"))
        .expect("read the expected in.txt")
        .trim_end()
        .to_owned();
    let ro = dir.join("ro.img");
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&ro, &pattern).expect("write the read-only disk");

    let guest_text = token("guest");
    let kernel = kernel();
    let initrd = rig_file("EMBER_RIG_TEST_INITRD").display().to_string();
    let cmdline = format!("console=ttyS0 panic=-1 ember_test=blk ember_data={guest_text}");
    let disk_arg = format!("path={},id=test-disk", disk.display());
    let ro_arg = format!("path={},readonly=on", ro.display());
    let mut vm = Ember::start(
        &[
            "run",
            "--accel",
            "kvm",
            "--memory",
            "256M",
            "--serial-input",
            "none",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            &cmdline,
            "--disk",
            &disk_arg,
            "--disk",
            &ro_arg,
        ],
        false,
    );
    let text = vm.wait_success();
    guest_succeeded(&text);
    assert_eq!(
        values(&text, "in"),
        vec![host_text.as_str()],
        "{}",
        tail(&text)
    );
    // out.txt holds the text and a newline.
    let readback = (guest_text.len() + 1).to_string();
    assert_eq!(
        values(&text, "readback"),
        vec![readback.as_str()],
        "{}",
        tail(&text)
    );
    assert!(text.contains("EMBER-TEST: blk ok"), "{}", tail(&text));
    // The guest fsynced and unmounted: the new file's data is in the image.
    let image = std::fs::read(&disk).expect("read the disk image back");
    let needle = format!("{guest_text}\n");
    assert!(
        image.windows(needle.len()).any(|w| w == needle.as_bytes()),
        "{guest_text:?} is not in the disk image"
    );
    // The guest read the read-only disk but could not change it.
    assert_eq!(values(&text, "vdb read"), vec!["512"], "{}", tail(&text));
    assert!(
        std::fs::read(&ro).expect("read the read-only disk back") == pattern,
        "the read-only disk changed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A line written to ember's stdin reaches the guest's ttyS0.
#[test]
fn console_input_reaches_the_guest() {
    let _t = begin("console_input_reaches_the_guest");
    let kernel = kernel();
    let initrd = rig_file("EMBER_RIG_TEST_INITRD").display().to_string();
    let mut vm = Ember::start(
        &[
            "run",
            "--accel",
            "kvm",
            "--memory",
            "256M",
            "--serial-input",
            "stdin",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            "console=ttyS0 panic=-1 ember_test=echo",
        ],
        true,
    );
    // The guest has opened ttyS0 when it says so: typed earlier, the line
    // could be lost.
    vm.wait_for("the guest to wait for input", |t| {
        t.contains("EMBER-TEST: ready for input")
    });
    let line = token("typed");
    vm.type_line(&line);
    let text = vm.wait_success();
    guest_succeeded(&text);
    assert_eq!(
        values(&text, "echo-got"),
        vec![line.as_str()],
        "{}",
        tail(&text)
    );
}

/// Pause stops both vCPUs (no console output while paused), resume goes
/// on counting where the guest was, stop ends ember with status 0.
#[test]
fn pause_resume_and_stop_through_ctl() {
    let _t = begin("pause_resume_and_stop_through_ctl");
    let dir = scratch("ctl");
    let socket = dir.join("api.sock");
    let mut vm = counting_vm(&socket, "2", "auto");
    vm.wait_for("the guest to count", |t| last_count(t) >= Some(3));
    wait_for_socket(&vm, &socket);
    assert_kvm(&vm, &socket);
    assert_eq!(ctl_ok(&vm, &socket, &["ping"]), "pong");
    assert_eq!(ctl_ok(&vm, &socket, &["state"]), "running");

    assert_eq!(ctl_ok(&vm, &socket, &["pause"]), "paused");
    let info = ctl_json(&vm, &socket, "info");
    assert_eq!(info["state"], "paused", "{info}");
    // Nothing runs while paused: the console output ember has taken in
    // stays the same across further requests (each one a process start
    // and a round trip, time in which a running guest prints lines).
    let before = console_bytes(&vm, &socket);
    for _ in 0..3 {
        assert_eq!(ctl_ok(&vm, &socket, &["state"]), "paused");
    }
    let after = console_bytes(&vm, &socket);
    assert_eq!(before, after, "the guest printed while paused");
    let frozen = last_count(&vm.stdout()).expect("counts before the pause");

    assert_eq!(ctl_ok(&vm, &socket, &["resume"]), "running");
    let text = vm.wait_for("the count to go on after resume", |t| {
        last_count(t) >= Some(frozen + 5)
    });
    // It went on from where it was: no restart, no gap.
    assert_contiguous(&counts(&text));
    assert_eq!(counts(&text).first(), Some(&0), "{}", tail(&text));

    assert_eq!(ctl_ok(&vm, &socket, &["stop"]), "");
    vm.wait_success();
    assert!(!socket.exists(), "the API socket was left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A paused 2-vCPU guest saved with `ember ctl snapshot` and restored with
/// `ember run --restore` counts on from where it was, without booting
/// again, still under KVM.
#[test]
fn snapshot_and_restore() {
    let _t = begin("snapshot_and_restore");
    let dir = scratch("snap");
    let socket = dir.join("api.sock");
    let snap = dir.join("snap");
    let snap_s = snap.to_str().expect("UTF-8 scratch path").to_owned();
    let mut vm = counting_vm(&socket, "2", "plic");
    vm.wait_for("the guest to count", |t| last_count(t) >= Some(5));
    wait_for_socket(&vm, &socket);
    assert_kvm(&vm, &socket);
    assert_eq!(ctl_ok(&vm, &socket, &["pause"]), "paused");
    ctl_ok(&vm, &socket, &["snapshot", &snap_s]);
    for file in ["manifest.json", "state.json", "memory.bin"] {
        assert!(snap.join(file).is_file(), "the snapshot has no {file}");
    }
    assert_eq!(ctl_ok(&vm, &socket, &["stop"]), "");
    // All of the first VM's output, up to a line the pause may have cut.
    let before = vm.wait_success();
    let last = last_count(&before).expect("counts before the snapshot");

    let mut restored = Ember::start(
        &[
            "run",
            "--restore",
            &snap_s,
            "--accel",
            "kvm",
            "--serial-input",
            "none",
            "--api-socket",
            socket.to_str().expect("UTF-8 scratch path"),
        ],
        false,
    );
    let after = restored.wait_for("the restored guest to count on", |t| counts(t).len() >= 20);
    wait_for_socket(&restored, &socket);
    assert_kvm(&restored, &socket);
    assert!(
        !after.contains("EMBER-TEST: start"),
        "the restored guest booted again:\n{}",
        tail(&after)
    );
    let first = *counts(&after).first().expect("counts after the restore");
    assert!(
        first == last + 1 || first == last + 2,
        "the first count after the restore is {first}, the last before {last}"
    );
    // A line cut by the snapshot continues in the new output, so both
    // together count 0, 1, 2, ... without a gap or a restart.
    let all = counts(&format!("{before}{after}"));
    assert_eq!(all.first(), Some(&0));
    assert_contiguous(&all);
    assert_eq!(ctl_ok(&restored, &socket, &["stop"]), "");
    restored.wait_success();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request the KVM path cannot serve gives one clear line and a nonzero
/// status, never a panic or a hang.
#[test]
fn unsupported_guest_action_is_a_clean_error() {
    let _t = begin("unsupported_guest_action_is_a_clean_error");
    let refused = |args: &[&str], needle: &str| {
        let mut full = vec!["run", "--accel", "kvm", "--serial-input", "none"];
        full.extend_from_slice(args);
        let mut vm = Ember::start(&full, false);
        let status = vm.wait_exit();
        let err = vm.stderr();
        assert!(
            !status.success(),
            "{args:?} was accepted\n{}",
            vm.describe()
        );
        assert!(!err.contains("panicked"), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "not one line: {err}");
        eprintln!("riscv_kvm: refused as it should be: {}", lines[0]);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{needle:?} not in: {err}"
        );
    };
    // An initramfs is not a riscv64 Image.
    let initrd = rig_file("EMBER_RIG_INITRD").display().to_string();
    refused(&["--kernel", &initrd], "image");
    // A kernel that is not there: the message names it.
    refused(&["--kernel", "/nonexistent/Image"], "/nonexistent/Image");
}

/// A bare-metal guest under `ember run --accel kvm` makes an SBI call
/// KVM forwards to Ember but Ember does not implement (the first vendor
/// extension, 0x0900_0000): it gets SBI_ERR_NOT_SUPPORTED (-2) back, as
/// the SBI specification asks, prints `'0' + 2 + a0` with the legacy
/// console putchar (also forwarded: Ember writes it to the console) and
/// powers off through SRST (in the kernel). Output "0\n" and status 0 mean
/// every step went through Ember's SBI exit path.
#[test]
fn an_unsupported_sbi_call_gets_not_supported_and_the_vm_goes_on() {
    let _t = begin("an_unsupported_sbi_call_gets_not_supported_and_the_vm_goes_on");
    // riscv `Image` header (text offset 0x200000, 64 KiB, magic), then
    //   lui a7, 0x9000; li a6, 0; ecall          # vendor extension
    //   addi s0, a0, 50; mv a0, s0; li a7, 1; ecall   # putchar('0' + 2 + a0)
    //   li a0, 10; li a7, 1; ecall               # putchar('\n')
    //   li a7, SRST; li a6, 0; li a0, 0; li a1, 0; ecall
    //   j .
    // (riscv64-linux-gnu-as output).
    let words: [u32; 33] = [
        0x0400_006f,
        0,
        0x0020_0000,
        0,
        0x0001_0000,
        0,
        0,
        0,
        2,
        0,
        0,
        0,
        0x4353_4952,
        0x0000_0056,
        0x0543_5352,
        0,
        0x0900_08b7,
        0x0000_0813,
        0x0000_0073,
        0x0325_0413,
        0x0004_0513,
        0x0010_0893,
        0x0000_0073,
        0x00a0_0513,
        0x0010_0893,
        0x0000_0073,
        0x5352_58b7,
        0x3548_889b,
        0x0000_0813,
        0x0000_0513,
        0x0000_0593,
        0x0000_0073,
        0x0000_006f,
    ];
    let mut image: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    image.resize(0x1_0000, 0);
    let dir = scratch("sbi");
    let path = dir.join("sbi.img");
    std::fs::write(&path, &image).expect("write the guest");
    let out = Command::new(ember_bin())
        .args([
            "run",
            "--accel",
            "kvm",
            "--memory",
            "64M",
            "--serial-input",
            "none",
        ])
        .arg("--kernel")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run ember");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert_eq!(stdout, "0\n", "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Whether this rig's host offers KVM's in-kernel AIA (`tools/riscv-kvm-rig.sh
/// --aia`: a 6.12 host under QEMU's aia=aplic-imsic, with a 6.12 guest).
fn rig_has_aia() -> bool {
    std::env::var_os("EMBER_RIG_AIA").is_some_and(|v| v == "1")
}

/// `--irqchip aia`: on a host with KVM's in-kernel AIA, a two-vCPU guest
/// boots with the APLIC and IMSICs in its device tree, and its virtio-blk
/// disk (interrupts through the APLIC) works; on a host without it
/// (Linux 6.1), the choice is refused with a message that says why, and
/// `auto` falls back to the PLIC.
#[test]
fn irqchip_aia_is_used_where_kvm_has_it_and_refused_where_not() {
    let _t = begin("irqchip_aia_is_used_where_kvm_has_it_and_refused_where_not");
    let dir = scratch("aia");
    let dtb = dir.join("guest.dtb");
    let run = |irqchip: &str, extra: &[&str]| {
        Command::new(ember_bin())
            .args(["run", "--accel", "kvm", "--memory", "256M", "--cpus", "2"])
            .args(["--serial-input", "none", "--irqchip", irqchip])
            .arg("--dump-dtb")
            .arg(&dtb)
            .args(["--kernel", &kernel()])
            .arg("--initrd")
            .arg(rig_file("EMBER_RIG_TEST_INITRD"))
            // The guest counts to 20, 10 ms apart, then powers off: a
            // middle count is on the console whole, whereas the last line
            // of a guest that powers off at once can be cut short.
            .args([
                "--cmdline",
                "console=ttyS0 panic=-1 ember_test=count ember_count_max=20",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run ember")
    };
    let dtb_has = |what: &str| {
        let blob = std::fs::read(&dtb).expect("the dumped device tree");
        blob.windows(what.len()).any(|w| w == what.as_bytes())
    };
    if rig_has_aia() {
        // The PLIC still works on such a host.
        let plic = run("plic", &[]);
        assert!(
            plic.status.success()
                && String::from_utf8_lossy(&plic.stdout).contains("EMBER-TEST: count=11"),
            "--irqchip plic: {:?}\n{}",
            plic.status,
            String::from_utf8_lossy(&plic.stderr)
        );
        assert!(dtb_has("riscv,plic0") && !dtb_has("riscv,aplic"));
        let out = run("aia", &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("EMBER-TEST: count=11"),
            "{:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dtb_has("riscv,aplic") && dtb_has("riscv,imsics"));
        assert!(!dtb_has("riscv,plic0"));
        // auto picks the AIA here too.
        let out = run("auto", &[]);
        assert!(out.status.success());
        assert!(dtb_has("riscv,aplic"));
    } else {
        let out = run("aia", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "--irqchip aia ran on a host without AIA"
        );
        assert!(
            stderr.contains("no in-kernel AIA") && stderr.contains("--irqchip plic"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let out = run("auto", &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains("EMBER-TEST: count=11"));
        assert!(dtb_has("riscv,plic0") && !dtb_has("riscv,aplic"));
    }
}
