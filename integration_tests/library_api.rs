//! The Rust library API (`ember::VmBuilder` / `ember::RunningVm`) as a test
//! suite uses it: wait for console output, type into the console, stop;
//! and many short-lived VMs, one after another and concurrently, without
//! leaking threads or file descriptors.

#[path = "common/riscv_linux.rs"]
mod riscv_linux;

use std::time::Duration;

use ember::vmm::exit::ExitReason;
use ember::{VmBuilder, VmControl, VmState};

use riscv_linux::start_test_guest;

const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn a_riscv_guest_reads_what_the_test_types() {
    let vm = start_test_guest("echo");
    assert_eq!(vm.state(), VmState::Running);
    vm.wait_for_output("EMBER-TEST: ready for input", PATIENCE)
        .expect("the guest is ready");
    vm.send_input(b"typed by the library\n");
    let out = vm
        .wait_for_output("EMBER-TEST-DONE", PATIENCE)
        .expect("the guest finishes");
    assert!(
        out.contains("EMBER-TEST: echo-got=typed by the library"),
        "{out}"
    );
    assert_eq!(vm.wait(PATIENCE).unwrap(), ExitReason::PowerOff);
}

#[test]
fn waiting_for_output_that_never_comes_times_out_and_drop_cleans_up() {
    let vm = start_test_guest("count");
    let err = vm
        .wait_for_output("never printed", Duration::from_millis(200))
        .unwrap_err();
    assert!(err.to_string().contains("never printed"), "{err}");
    let control = vm.control().clone();
    drop(vm);
    assert_eq!(control.state(), VmState::ShutDown);
}

/// The last `count=N` in `text`.
fn last_count(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .filter_map(|l| l.trim_end().strip_prefix("EMBER-TEST: count="))
        .find_map(|n| n.parse().ok())
}

#[test]
fn snapshot_and_restore_through_the_library() {
    let dir = std::env::temp_dir().join(format!("ember-lib-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let vm = start_test_guest("count");
    vm.wait_for_output("count=5\r\n", PATIENCE)
        .expect("counting");
    assert!(vm.snapshot(&dir).is_err(), "a running VM cannot be saved");
    vm.pause().unwrap();
    vm.snapshot(&dir).expect("snapshot");
    let before = last_count(&vm.output()).expect("a count");
    assert_eq!(vm.stop().unwrap(), ExitReason::UserQuit);

    let restored = VmBuilder::restore(&dir).expect("restore");
    let next = format!("count={}\r\n", before + 1);
    let out = restored
        .wait_for_output(&next, PATIENCE)
        .expect("the counter goes on from where it was");
    assert!(!out.contains("count=0\r\n"), "the guest restarted:\n{out}");
    assert!(
        !out.contains("Linux version"),
        "the kernel booted again:\n{out}"
    );
    drop(restored);
    let _ = std::fs::remove_dir_all(&dir);
}
