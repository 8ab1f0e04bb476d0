//! Test suites start hundreds of short-lived VMs: 50 one after another and
//! then 8 at once, each booting the built-in x86 guest under KVM to its
//! power-off, through the library API; afterwards this process has exactly
//! the threads and file descriptors it had before. (One test in its own
//! binary, so no other test's threads or descriptors come and go meanwhile.)

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use ember::vmm::exit::ExitReason;
use ember::{GuestArch, VmBuilder};

const PATIENCE: Duration = Duration::from_secs(60);

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn boot_one() {
    let vm = VmBuilder::new(GuestArch::X86_64)
        .memory_mib(64)
        .start()
        .expect("start");
    let out = vm
        .wait_for_output("ROM: ok", PATIENCE)
        .expect("the built-in guest reports");
    assert!(!out.contains("FAILED"), "{out}");
    assert_eq!(vm.wait(PATIENCE).unwrap(), ExitReason::PowerOff);
}

#[test]
fn fifty_in_a_row_then_eight_at_once_leak_nothing() {
    if !common::kvm_available() {
        return;
    }
    // Warm up once: lazily created process-wide state (the vCPU kick
    // signal handler, std's stdout lock) is not a leak.
    boot_one();
    let fds = count("/proc/self/fd");
    let threads = count("/proc/self/task");
    for _ in 0..50 {
        boot_one();
    }
    let handles: Vec<_> = (0..8).map(|_| std::thread::spawn(boot_one)).collect();
    for h in handles {
        h.join().expect("a concurrent VM failed");
    }
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert_eq!(count("/proc/self/task"), threads, "threads leaked");
}
