//! VM start-to-ready rate with the built-in x86 demo guest under KVM, as a
//! test suite starting many short-lived VMs sees it: `VmBuilder::start`,
//! wait for the guest's last console line ("ready"), wait for its
//! power-off, drop. Reports VMs per second of wall time and per second of
//! CPU time (user + system of this process, all threads), the latter being
//! the "per core" rate.
//!
//! `cargo bench --bench vm_lifecycle` runs 200 VMs; without `--bench` (as
//! `cargo test --all-targets` runs it) 5. Skipped without /dev/kvm.

use std::time::{Duration, Instant};

use ember::vmm::exit::ExitReason;
use ember::{GuestArch, VmBuilder};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("vm_lifecycle: /dev/kvm is not usable here; skipped");
        return;
    }
    let n = if full { 200 } else { 5 };
    let mut ready = Vec::with_capacity(n);
    let wall = Instant::now();
    let cpu = cpu_seconds();
    for _ in 0..n {
        let t = Instant::now();
        let vm = VmBuilder::new(GuestArch::X86_64)
            .memory_mib(64)
            .start()
            .expect("start");
        vm.wait_for_output("ROM: ok", Duration::from_secs(30))
            .expect("the demo guest reports");
        ready.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            vm.wait(Duration::from_secs(30)).expect("ends"),
            ExitReason::PowerOff
        );
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    ready.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{n} VMs (built-in x86 guest, KVM): {:.1} VMs/s wall, {:.1} VMs per CPU-second; \
         start-to-ready median {:.2} ms, p90 {:.2} ms",
        n as f64 / wall,
        n as f64 / cpu,
        ready[n / 2],
        ready[n * 9 / 10]
    );
}
