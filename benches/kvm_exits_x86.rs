//! KVM exit benchmarks: `cargo bench --bench kvm_exits`.
//!
//! - Port-I/O exit round trip: a real-mode guest does N `out 0x80` between a
//!   start marker (port 0x81) and a stop marker (port 0x82). The same guest
//!   runs under a bare loop written directly on kvm-ioctls and under Ember
//!   (vCPU thread, dispatch through the I/O address space, the port-80
//!   device), interleaved in one run; the figure is µs per exit and the
//!   ratio Ember / bare.
//! - The same for MMIO exits (`mov %al, %es:0` to an address with no slot).
//! - Start-up: `ember run --timings` on the built-in guest, time from the
//!   start of `main` to the first KVM_RUN, the whole process run, and the VMM's
//!   resident memory excluding guest RAM.
//! - Both Ember figures with seccomp filters on (the default) and off, in
//!   the same run, and the ratio on/off.

#[path = "../integration_tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

use ember::memory::RegionOps;
use ember::vmm::config::{Confinement, VmConfig};
use ember::vmm::console::{ConsoleInput, ConsoleOutput};
use ember::vmm::seccomp::SeccompMode;
use ember::vmm::x86_vm::X86Vm;

const MARK_START: u16 = 0x81;
const MARK_STOP: u16 = 0x82;

fn pio_loop(n: u32) -> String {
    format!(
        r#"
        outb %al, $0x81
        movl ${n}, %ecx
    1:  outb %al, $0x80
        decl %ecx
        jnz 1b
        outb %al, $0x82
    2:  hlt
        jmp 2b
    "#
    )
}

fn mmio_loop(n: u32) -> String {
    format!(
        r#"
        movw $0xd500, %ax
        movw %ax, %es
        outb %al, $0x81
        movl ${n}, %ecx
    1:  movb %al, %es:0
        decl %ecx
        jnz 1b
        outb %al, $0x82
    2:  hlt
        jmp 2b
    "#
    )
}

/// Runs the firmware image on a bare kvm-ioctls loop: one slot of RAM at 0
/// (unused), the image as a read-only slot ending at 4 GiB and at 0xf0000.
fn bare(image: &[u8], n: u32) -> Duration {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    // KVM needs page-aligned host memory: copy the image into a mapping.
    let map = vm_memory::mmap::MmapRegion::<()>::new(image.len()).expect("map");
    // SAFETY: `map` is a fresh private mapping of image.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), map.as_ptr(), image.len()) };
    for (slot, gpa) in [(0u32, 0x1_0000_0000u64 - image.len() as u64), (1, 0xf0000)] {
        let region = kvm_userspace_memory_region {
            slot,
            flags: kvm_bindings::KVM_MEM_READONLY,
            guest_phys_addr: gpa,
            memory_size: image.len() as u64,
            userspace_addr: map.as_ptr() as u64,
        };
        // SAFETY: the mapping outlives the VM (both live to the end of this
        // function, the VM is dropped first).
        unsafe { vm.set_user_memory_region(region) }.expect("set slot");
    }
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    let mut t0 = None;
    let mut count = 0u32;
    let t1 = loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(MARK_START, _) => t0 = Some(Instant::now()),
            VcpuExit::IoOut(MARK_STOP, _) => break Instant::now(),
            VcpuExit::IoOut(_, _) | VcpuExit::MmioWrite(_, _) => count += 1,
            other => panic!("unexpected exit {other:?}"),
        }
    };
    assert_eq!(count, n);
    t1 - t0.expect("start marker")
}

/// Stamps the start and stop markers and ends the VM at the stop.
struct Marks {
    times: Mutex<(Option<Instant>, Option<Instant>)>,
    exit: Arc<ember::vmm::exit::ExitSignal>,
}

impl RegionOps for Marks {
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        0
    }
    fn write(&self, offset: u64, _size: u32, _value: u64) {
        let now = Instant::now();
        let mut t = self.times.lock().unwrap();
        if offset == 0 {
            t.0 = Some(now);
        } else {
            t.1 = Some(now);
            self.exit.request(ember::vmm::exit::ExitReason::PowerOff);
        }
    }
}

struct Sink;
impl RegionOps for Sink {
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        0
    }
    fn write(&self, _offset: u64, _size: u32, _value: u64) {}
}

fn ember_run(image_path: &std::path::Path, seccomp: SeccompMode) -> Duration {
    let cfg = VmConfig {
        confinement: Confinement {
            seccomp,
            ..Confinement::default()
        },
        firmware: Some(image_path.to_path_buf()),
        memory: 64 << 20,
        console_input: ConsoleInput::None,
        console_output: ConsoleOutput::File("/dev/null".into()),
        irqchip: false,
        ..VmConfig::default()
    };
    let vm = X86Vm::new(cfg).expect("build VM");
    let marks = Arc::new(Marks {
        times: Mutex::new((None, None)),
        exit: vm.exit_signal(),
    });
    {
        let tree = vm.tree();
        let mut t = tree.lock().unwrap();
        let id = t.new_io("marks", 2, Some(marks.clone())).unwrap();
        t.add_subregion(vm.layout().io, MARK_START as u64, id)
            .unwrap();
        let sink = t.new_io("sink", 0x1000, Some(Arc::new(Sink))).unwrap();
        t.add_subregion(vm.layout().system, 0xd5000, sink).unwrap();
    }
    // On its own thread: `X86Vm::run` confines the thread that calls it.
    std::thread::spawn(move || vm.run().map(|_| ()))
        .join()
        .expect("VM thread")
        .expect("run");
    let t = marks.times.lock().unwrap();
    t.1.unwrap() - t.0.unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn compare(name: &str, body: &str, n: u32, rounds: usize) {
    let image = common::firmware(name, body);
    let path = common::scratch_dir("bench").join(format!("{name}.rom"));
    std::fs::write(&path, &image).unwrap();
    let (mut b, mut e, mut off) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        b.push(bare(&image, n).as_secs_f64() * 1e6 / n as f64);
        e.push(ember_run(&path, SeccompMode::On).as_secs_f64() * 1e6 / n as f64);
        off.push(ember_run(&path, SeccompMode::Off).as_secs_f64() * 1e6 / n as f64);
    }
    let (b, e, off) = (median(b), median(e), median(off));
    println!(
        "{name}: bare kvm-ioctls loop {b:.3} us/exit, Ember {e:.3} us/exit, ratio {:.3}; \
         Ember with --seccomp off {off:.3} us/exit, seccomp on/off {:.3} ({n} exits, median of {rounds})",
        e / b,
        e / off
    );
}

/// One `ember run --timings` of the built-in guest: (main() to first
/// KVM_RUN in ms, whole run in ms, VMM RSS excluding guest RAM in KiB).
fn startup_once(seccomp: &str) -> (f64, f64, f64) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "run",
            "--seccomp",
            seccomp,
            "--timings",
            "--memory",
            "512M",
            "--serial-input",
            "none",
            "--serial-output",
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ember");
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let err = String::from_utf8_lossy(&out.stderr);
    let (mut first, mut rss) = (None, None);
    for line in err.lines() {
        if let Some(v) = line.strip_prefix("ember: start-up to first KVM_RUN: ") {
            first = v.trim_end_matches(" ms").parse::<f64>().ok();
        }
        if let Some(v) = line.strip_prefix("ember: VMM resident memory excluding guest RAM: ") {
            rss = v.trim_end_matches(" KiB").parse::<f64>().ok();
        }
    }
    match (first, rss) {
        (Some(first), Some(rss)) => (first, wall, rss),
        _ => panic!("ember run --seccomp {seccomp} --timings printed no figures: {err}"),
    }
}

/// Start-up with filters on and off, interleaved so that both see the
/// same machine load.
fn startup(rounds: usize) {
    let mut runs: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
    for _ in 0..rounds {
        for (i, mode) in ["on", "off"].into_iter().enumerate() {
            let (first, wall, rss) = startup_once(mode);
            runs[i].0.push(first);
            runs[i].1.push(wall);
            runs[i].2.push(rss);
        }
    }
    let mut firsts = [0.0; 2];
    for (i, mode) in ["on", "off"].into_iter().enumerate() {
        let (first, wall, rss) = std::mem::take(&mut runs[i]);
        firsts[i] = median(first);
        println!(
            "start-up, --seccomp {mode}: main() to first KVM_RUN {:.3} ms; whole `ember run` of the built-in guest {:.1} ms; VMM RSS excluding guest RAM {:.0} KiB (median of {rounds})",
            firsts[i],
            median(wall),
            median(rss)
        );
    }
    println!(
        "start-up to first KVM_RUN, seccomp on/off: {:.3}",
        firsts[0] / firsts[1]
    );
}

pub fn main() {
    if !common::kvm_available() {
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n, rounds) = if quick { (200, 1) } else { (20_000, 7) };
    compare("pio-exits", &pio_loop(n), n, rounds);
    compare("mmio-exits", &mmio_loop(n), n, rounds);
    startup(if quick { 1 } else { 25 });
}
