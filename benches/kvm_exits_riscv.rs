//! riscv64 KVM exit benchmark: `cargo bench --bench kvm_exits` on a
//! riscv64 host with KVM (here: inside the rig, `tools/riscv-kvm-rig.sh
//! --bench`).
//!
//! A bare-metal guest (an `Image` header and a dozen instructions) stores a
//! byte N times to the UART's scratch register, which has no memory slot,
//! so each store is one `KVM_EXIT_MMIO`, then powers off through the SBI
//! SRST call KVM handles itself. The same guest runs under a bare loop on
//! kvm-ioctls and under Ember (vCPU thread, dispatch through `memory`, the
//! UART), interleaved; the figure is the time per exit, from the difference
//! between N exits and none (which cancels boot and tear-down), and the
//! ratio Ember / bare.
//!
//! With the rig's guest (`EMBER_BIN`, `EMBER_RIG_KERNEL`,
//! `EMBER_RIG_INITRD` set, as the rig's init does), also: boot of the
//! riscv64 test kernel to its userspace marker and power-off under
//! `ember run --accel kvm` and `--accel tcg` (the whole process, median of
//! three each, interleaved), and `ember run --timings` under KVM: start-up
//! to the first `KVM_RUN` and the VMM's resident memory excluding guest
//! RAM.

use std::process::Command;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{Kvm, VcpuExit};

use ember::accel::kvm::riscv64::regs;
use ember::accel::AccelChoice;
use ember::arch::GuestArch;
use ember::vmm::config::VmConfig;
use ember::vmm::console::{ConsoleInput, ConsoleOutput};
use ember::vmm::riscv_vm::RiscvVm;

const RAM_BASE: u64 = 0x8000_0000;
const RAM_SIZE: usize = 64 << 20;
/// Where an `Image` with text offset 0x200000 is loaded.
const ENTRY: u64 = RAM_BASE + 0x20_0000;

/// The guest: a riscv `Image` header (jump over it; text offset 0x200000;
/// image size 64 KiB; magic), the store count N at offset 0x28, then:
/// ```text
/// 40: lui   t0, 0x10000          # the UART
/// 44: auipc t2, 0
/// 48: ld    t1, -0x1c(t2)        # N, from offset 0x28
/// 4c: beqz  t1, 5c
/// 50: sb    zero, 7(t0)          # scratch register: one MMIO exit
/// 54: addi  t1, t1, -1
/// 58: bnez  t1, 50
/// 5c: li a7, SRST; li a6, 0; li a0, 0 (shutdown); li a1, 0; ecall
/// 74: j 74
/// ```
/// (assembled with riscv64-linux-gnu-as; the words are its output).
fn guest(n: u64) -> Vec<u8> {
    let words: [u32; 30] = [
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
        0, // header
        0x1000_02b7,
        0x0000_0397,
        0xfe43_b303,
        0x0003_0863,
        0x0002_83a3,
        0xfff3_0313,
        0xfe03_1ce3,
        0x5352_58b7,
        0x3548_889b,
        0x0000_0813,
        0x0000_0513,
        0x0000_0593,
        0x0000_0073,
        0x0000_006f,
    ];
    let mut image: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    image[0x28..0x30].copy_from_slice(&n.to_le_bytes());
    image.resize(0x1_0000, 0);
    image
}

/// The guest under a loop written directly on kvm-ioctls: from the first
/// `KVM_RUN` to the power-off.
fn bare(kvm: &Kvm, image: &[u8]) -> Duration {
    let vm = kvm.create_vm().expect("create VM");
    // KVM wants page-aligned guest memory: an anonymous mapping.
    // SAFETY: a fresh private anonymous mapping; nothing else refers to
    // the range it returns.
    let ram = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RAM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(ram, libc::MAP_FAILED, "mmap guest RAM");
    let offset = (ENTRY - RAM_BASE) as usize;
    // SAFETY: the mapping is RAM_SIZE bytes, writable, and the image ends
    // well inside it (64 KiB at 2 MiB).
    unsafe {
        std::ptr::copy_nonoverlapping(image.as_ptr(), (ram as *mut u8).add(offset), image.len())
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: RAM_BASE,
        memory_size: RAM_SIZE as u64,
        userspace_addr: ram as u64,
        flags: 0,
    };
    // SAFETY: the mapping stays until after the VM is dropped below.
    unsafe { vm.set_user_memory_region(region) }.expect("memory region");
    let mut vcpu = vm.create_vcpu(0).expect("vCPU");
    vcpu.set_one_reg(regs::PC, &ENTRY.to_le_bytes())
        .expect("pc");
    let start = Instant::now();
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::MmioWrite(..) | VcpuExit::MmioRead(..) => {}
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    let took = start.elapsed();
    drop(vcpu);
    drop(vm);
    // SAFETY: the VM that used the mapping is gone; nothing else uses it.
    unsafe { libc::munmap(ram, RAM_SIZE) };
    took
}

/// The guest under Ember: from the start of the vCPU thread to the end.
fn ember(path: &std::path::Path) -> Duration {
    let config = VmConfig {
        arch: GuestArch::Riscv64,
        accel: AccelChoice::Kvm,
        kernel: Some(path.to_path_buf()),
        memory: RAM_SIZE as u64,
        console_input: ConsoleInput::None,
        console_output: ConsoleOutput::File("/dev/null".into()),
        ..VmConfig::default()
    };
    let vm = RiscvVm::new(config).expect("build VM");
    // On its own thread: `run` confines the thread that calls it.
    let outcome = std::thread::spawn(move || vm.run())
        .join()
        .expect("VM thread")
        .expect("run");
    outcome.run_time
}

/// One `ember run` of the rig's guest on `accel`: wall time of the whole
/// process, and its stderr.
fn boot(ember: &str, kernel: &str, initrd: &str, accel: &str, timings: bool) -> (f64, String) {
    let mut cmd = Command::new(ember);
    cmd.args([
        "run",
        "--accel",
        accel,
        "--memory",
        "256M",
        "--serial-input",
        "none",
    ])
    .args(["--kernel", kernel, "--initrd", initrd])
    .args(["--cmdline", "console=ttyS0 panic=-1"]);
    if timings {
        cmd.arg("--timings");
    }
    let start = Instant::now();
    let out = cmd.output().expect("run ember");
    let secs = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("EMBER-GUEST-USERSPACE-OK"),
        "ember --accel {accel} did not boot the guest: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The figures with the rig's Linux guest, when it is there.
fn linux_figures() {
    let (Ok(ember), Ok(kernel), Ok(initrd)) = (
        std::env::var("EMBER_BIN"),
        std::env::var("EMBER_RIG_KERNEL"),
        std::env::var("EMBER_RIG_INITRD"),
    ) else {
        println!("(EMBER_BIN, EMBER_RIG_KERNEL, EMBER_RIG_INITRD unset: no Linux boot figures)");
        return;
    };
    let (mut kvm, mut tcg) = (vec![], vec![]);
    for _ in 0..3 {
        kvm.push(boot(&ember, &kernel, &initrd, "kvm", false).0);
        tcg.push(boot(&ember, &kernel, &initrd, "tcg", false).0);
    }
    let (k, t) = (median(kvm), median(tcg));
    println!(
        "riscv64 Linux boot to the userspace marker and power-off (whole ember process, median \
         of 3): KVM {k:.2} s, software CPU {t:.2} s, ratio software/KVM {:.1}",
        t / k
    );
    let (_, stderr) = boot(&ember, &kernel, &initrd, "kvm", true);
    for line in stderr
        .lines()
        .filter(|l| l.contains("start-up to first KVM_RUN") || l.contains("VMM resident memory"))
    {
        println!("riscv64 KVM {}", line.trim_start_matches("ember: "));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn main() {
    let n: u64 = std::env::var("EMBER_BENCH_EXITS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let rounds = 5;
    let kvm = Kvm::new().expect("/dev/kvm");
    let dir = std::env::temp_dir();
    let none = dir.join("ember-bench-riscv-0.img");
    let many = dir.join("ember-bench-riscv-n.img");
    std::fs::write(&none, guest(0)).expect("write guest");
    std::fs::write(&many, guest(n)).expect("write guest");
    // Warm-up: the first KVM_RUN of a process is slow.
    bare(&kvm, &guest(0));
    ember(&none);
    let (mut b0, mut bn, mut e0, mut en) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        b0.push(bare(&kvm, &guest(0)).as_secs_f64());
        bn.push(bare(&kvm, &guest(n)).as_secs_f64());
        e0.push(ember(&none).as_secs_f64());
        en.push(ember(&many).as_secs_f64());
    }
    let per = |zero: Vec<f64>, full: Vec<f64>| (median(full) - median(zero)) / n as f64 * 1e6;
    let bare_us = per(b0, bn);
    let ember_us = per(e0, en);
    println!(
        "riscv64 MMIO exit round trip ({n} exits, median of {rounds}): bare kvm-ioctls loop \
         {bare_us:.2} us, Ember {ember_us:.2} us, ratio {:.2}",
        ember_us / bare_us
    );
    linux_figures();
}
