//! The VM lifecycle through the control interface every front end uses
//! (`VmControl`: API socket, `ember ctl`, library): a riscv64 Linux guest on
//! the software CPU that prints a counter every 10 ms is paused (the counter
//! and the harts' instruction counts stop), resumed (they move again),
//! queried (info, mtree, accelerator statistics, counters) and stopped.

#[path = "common/riscv_linux.rs"]
mod riscv_linux;

use std::path::Path;
use std::time::{Duration, Instant};

use ember::api::{VmControl, VmState};
use ember::vmm::config::VmConfig;
use ember::vmm::console::{ConsoleInput, ConsoleOutput};
use ember::vmm::exit::ExitReason;
use ember::vmm::riscv_vm::RiscvVm;

use riscv_linux::{guest, start_test_guest, test_initramfs};

const PATIENCE: Duration = Duration::from_secs(60);

/// The last `count=N` the guest printed.
fn last_count(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| l.trim_end().strip_prefix("EMBER-TEST: count="))
        .find_map(|n| n.parse().ok())
}

/// Polls `f` until it is true or PATIENCE runs out (then fails).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn instructions(control: &dyn VmControl) -> u64 {
    control.accel_info()["harts"]
        .as_array()
        .expect("harts")
        .iter()
        .map(|h| h["instructions"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let (image, _) = guest();
    let dir = std::env::temp_dir().join(format!("ember-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("console.log");
    let config = VmConfig {
        arch: ember::arch::GuestArch::Riscv64,
        kernel: Some(image.clone()),
        initrd: Some(test_initramfs().clone()),
        cmdline: "console=ttyS0 panic=-1 quiet ember_test=count".into(),
        memory: 128 << 20,
        console_input: ConsoleInput::None,
        console_output: ConsoleOutput::File(log.clone()),
        rng: true,
        ..VmConfig::default()
    };
    let vm = RiscvVm::new(config).expect("build the VM");
    let control = vm.control();
    assert_eq!(control.state(), VmState::Created);
    assert_eq!(control.info()["config"]["arch"], "riscv64");
    let runner = std::thread::spawn(move || vm.run());

    wait_for("the counter to reach 5", || last_count(&log) >= Some(5));
    assert_eq!(control.state(), VmState::Running);
    assert_eq!(control.pause().unwrap(), VmState::Paused);
    assert_eq!(control.pause().unwrap(), VmState::Paused, "idempotent");
    let frozen = last_count(&log);
    let insns = instructions(&*control);
    let serial = control.counters()["serial"]["tx_bytes"].as_u64().unwrap();
    // Nothing may move while paused: watch for a while (the guest prints
    // every 10 ms, so 300 ms would show ~30 lines).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(last_count(&log), frozen, "the guest ran while paused");
    assert_eq!(instructions(&*control), insns);
    assert_eq!(
        control.counters()["serial"]["tx_bytes"].as_u64().unwrap(),
        serial
    );
    // Introspection works on a paused VM.
    assert!(control.mtree(false).contains("virtio-mmio"));
    assert!(control.mtree(true).contains("FlatView #0"));
    assert_eq!(control.info()["state"], "paused");

    assert_eq!(control.resume().unwrap(), VmState::Running);
    assert_eq!(control.resume().unwrap(), VmState::Running, "idempotent");
    let after = frozen.unwrap() + 5;
    wait_for("the counter to go on", || last_count(&log) >= Some(after));
    assert!(instructions(&*control) > insns);
    let counters = control.counters();
    assert!(counters["serial"]["tx_bytes"].as_u64().unwrap() > serial);
    assert_eq!(counters["virtio"][0]["device"], "rng");
    // Accesses by device: the UART and the PLIC were used, the rng's
    // transport registers were probed.
    for device in ["serial", "riscv.sifive.plic", "virtio-mmio"] {
        assert!(
            counters["device_accesses"][device].as_u64().unwrap_or(0) > 0,
            "{device}: {counters}"
        );
    }

    control.stop().unwrap();
    let outcome = runner.join().unwrap().unwrap();
    assert_eq!(outcome.reason, ExitReason::UserQuit);
    assert_eq!(control.state(), VmState::ShutDown);
    assert!(control.pause().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The power button of the riscv64 machine is a virtio-input power key:
/// the guest sees KEY_POWER on /dev/input/event0 and powers off cleanly.
#[test]
fn the_power_button_shuts_a_riscv_guest_down() {
    let vm = start_test_guest("powerkey");
    vm.wait_for_output("waiting for the power key", PATIENCE)
        .expect("the guest waits for the key");
    vm.control().power_button().expect("press the power button");
    let out = vm
        .wait_for_output("EMBER-TEST-DONE", PATIENCE)
        .expect("the guest reacts");
    assert!(out.contains("EMBER-TEST: power key pressed"), "{out}");
    assert_eq!(vm.wait(PATIENCE).unwrap(), ExitReason::PowerOff);
}
