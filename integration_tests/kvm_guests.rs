//! Small purpose-built guests under KVM: port I/O and MMIO through the
//! dispatch tree, ROM, romd and alias changes while the guest runs, dirty
//! logging, two vCPUs, the built-in guest and triple faults.
//!
//! Each guest is readable 16-bit assembly in this file, assembled with GNU
//! as at test time and booted as firmware through the reset vector.

// x86_64 guests under KVM: only x86_64 hosts build the x86_64 machine.
#![cfg(target_arch = "x86_64")]

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{firmware_file, kvm_available, scratch_dir, Recorder};
use ember::memory::MemoryTree;
use ember::vmm::config::VmConfig;
use ember::vmm::console::{ConsoleInput, ConsoleOutput};
use ember::vmm::exit::ExitReason;
use ember::vmm::x86_vm::X86Vm;

/// How long a test waits for a guest event before failing (a bound, not a
/// synchronisation: every wait is for a specific event).
const PATIENCE: Duration = Duration::from_secs(60);

fn config(name: &str, body: Option<&str>) -> VmConfig {
    VmConfig {
        firmware: body.map(|b| firmware_file(name, b)),
        memory: 64 << 20,
        console_input: ConsoleInput::None,
        console_output: ConsoleOutput::File(scratch_dir("console").join(format!("{name}.log"))),
        ..VmConfig::default()
    }
}

fn console_text(cfg: &VmConfig) -> String {
    match &cfg.console_output {
        ConsoleOutput::File(p) => std::fs::read_to_string(p).unwrap_or_default(),
        ConsoleOutput::Capture(c) => c.text(),
        ConsoleOutput::Stdout => String::new(),
    }
}

fn add_io(
    tree: &mut MemoryTree,
    parent: ember::memory::RegionId,
    name: &str,
    addr: u64,
    size: u128,
    prio: i32,
    dev: Arc<Recorder>,
) {
    let id = tree.new_io(name, size, Some(dev)).unwrap();
    tree.add_subregion_overlap(parent, addr, id, prio).unwrap();
}

/// A recorder on port 0x500, where the test guests report their results.
fn results_port(vm: &X86Vm) -> Arc<Recorder> {
    let results = Recorder::new(0);
    let tree = vm.tree();
    let mut t = tree.lock().unwrap();
    add_io(
        &mut t,
        vm.layout().io,
        "results",
        0x500,
        1,
        0,
        results.clone(),
    );
    results
}

#[test]
fn builtin_guest_prints_its_checks_and_powers_off() {
    if !kvm_available() {
        return;
    }
    let cfg = config("builtin", None);
    let vm = X86Vm::new(cfg.clone()).unwrap();
    let outcome = vm.run().unwrap();
    assert_eq!(outcome.reason, ExitReason::PowerOff);
    let text = console_text(&cfg);
    assert!(text.contains("hello from the reset vector"), "{text}");
    for check in ["port I/O: ok", "MMIO: ok", "ROM: ok"] {
        assert!(text.contains(check), "missing {check:?} in {text}");
    }
    assert!(!text.contains("FAILED"), "{text}");
    assert!(outcome.vcpus[0].pio_exits > 10);
    assert!(
        outcome.vcpus[0].mmio_exits >= 3,
        "ROM write and ember-info accesses exit"
    );
}

/// Port I/O and MMIO go through overlapping, prioritised regions and
/// aliases exactly as the FlatView says.
#[test]
fn pio_and_mmio_follow_priorities_and_aliases() {
    if !kvm_available() {
        return;
    }
    let guest = r#"
        # MMIO: segment 0xd100 = 0xd1000.
        movw $0xd100, %ax
        movw %ax, %es
        movl %es:0x10, %eax        # low device (prio 0) at 0xd1000: 0x1000_0010
        movw $0x500, %dx; outl %eax, %dx
        movl %es:0x84, %eax        # high device (prio 1) covers 0xd1080..: 0x2000_0004
        movw $0x500, %dx; outl %eax, %dx
        movl %es:0x204, %eax       # alias at 0xd1200 -> far device offset 0x40: 0x3000_0044
        movw $0x500, %dx; outl %eax, %dx
        movl $0xdeadbeef, %es:0x88 # write reaches the high device at offset 8
        # Port I/O: 0x510..0x51f low (prio 0), 0x514..0x517 high (prio 1).
        movw $0x518, %dx
        inl %dx, %eax              # low: 0x4000_0008
        movw $0x500, %dx; outl %eax, %dx
        movw $0x514, %dx
        inl %dx, %eax              # high: 0x5000_0000
        movw $0x500, %dx; outl %eax, %dx
        movw $0x7f0, %dx
        inl %dx, %eax              # nothing there: all ones
        movw $0x500, %dx; outl %eax, %dx
        movw $0x501, %dx
        movb $0, %al
        outb %al, %dx              # debug-exit
    1:  hlt
        jmp 1b
    "#;
    let mut cfg = config("priorities", Some(guest));
    cfg.debug_exit = Some(0x501);
    let vm = X86Vm::new(cfg).unwrap();
    let results = results_port(&vm);
    let low = Recorder::new(0x1000_0000);
    let high = Recorder::new(0x2000_0000);
    let far = Recorder::new(0x3000_0000);
    let plow = Recorder::new(0x4000_0000);
    let phigh = Recorder::new(0x5000_0000);
    {
        let tree = vm.tree();
        let mut tree = tree.lock().unwrap();
        let (system, io) = (vm.layout().system, vm.layout().io);
        add_io(&mut tree, system, "low", 0xd1000, 0x1000, 0, low.clone());
        add_io(&mut tree, system, "high", 0xd1080, 0x80, 1, high.clone());
        let far_id = tree.new_io("far", 0x1000, Some(far.clone())).unwrap();
        let alias = tree.new_alias("far-window", far_id, 0x40, 0x100).unwrap();
        tree.add_subregion_overlap(system, 0xd1200, alias, 2)
            .unwrap();
        add_io(&mut tree, io, "plow", 0x510, 0x10, 0, plow.clone());
        add_io(&mut tree, io, "phigh", 0x514, 4, 1, phigh.clone());
    }
    let outcome = vm.run().unwrap();
    assert_eq!(outcome.reason, ExitReason::DebugExit(0));
    assert_eq!(
        results.values(),
        vec![
            0x1000_0010,
            0x2000_0004,
            0x3000_0044,
            0x4000_0008,
            0x5000_0000,
            0xffff_ffff
        ]
    );
    assert_eq!(high.writes(), vec![(8, 4, 0xdead_beef)]);
    assert!(low.writes().is_empty());
}

/// A ROM keeps its contents whatever the guest writes, under KVM (a
/// read-only slot whose writes exit and are dropped by dispatch).
#[test]
fn rom_cannot_be_changed_by_the_guest() {
    if !kvm_available() {
        return;
    }
    let guest = r#"
        movw $0xd200, %ax
        movw %ax, %es
        movl $0x11223344, %es:0x10
        movb $0x55, %es:0x800
        movl %es:0x10, %eax
        movw $0x500, %dx; outl %eax, %dx
        movb %es:0x800, %al
        movw $0x500, %dx
        outb %al, %dx
        movw $0x501, %dx
        outb %al, %dx
    1:  hlt
        jmp 1b
    "#;
    let mut cfg = config("rom", Some(guest));
    cfg.debug_exit = Some(0x501);
    let vm = X86Vm::new(cfg).unwrap();
    let results = results_port(&vm);
    let rom_block;
    {
        let tree = vm.tree();
        let mut tree = tree.lock().unwrap();
        let rom = tree.new_rom("test-rom", 0x1000).unwrap();
        rom_block = tree.ram_block(rom).unwrap();
        rom_block
            .write(0x10, &0xa5a5_a5a5u32.to_le_bytes())
            .unwrap();
        rom_block.write(0x800, &[0x77]).unwrap();
        tree.add_subregion(vm.layout().system, 0xd2000, rom)
            .unwrap();
    }
    let outcome = vm.run().unwrap();
    assert!(matches!(outcome.reason, ExitReason::DebugExit(_)));
    assert_eq!(results.values(), vec![0xa5a5_a5a5, 0x77]);
    let mut b = [0u8; 4];
    rom_block.read(0x10, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xa5a5_a5a5);
}

/// The guest reads through an alias and a ROM device in a tight loop while
/// the host remaps the alias and toggles romd mode thousands of times. Every
/// read must hit one of the expected backings: never a hole.
#[test]
fn remaps_and_romd_toggles_never_show_a_hole() {
    if !kvm_available() {
        return;
    }
    let guest = r#"
        movw $0xd300, %ax
        movw %ax, %es              # alias window over RAM A / RAM B
        movw $0xd400, %ax
        movw %ax, %fs              # romd device
        movw $0xd000, %ax
        movw %ax, %gs              # ember-info: scratch at 8 is the stop flag
        xorl %ecx, %ecx            # holes seen
    loop:
        movb %es:0x123, %al
        cmpb $0x11, %al
        je 1f
        cmpb $0x22, %al
        je 1f
        incl %ecx
    1:  movb %fs:0x10, %al
        cmpb $0x33, %al            # romd mode: memory
        je 2f
        cmpb $0x44, %al            # device mode: callbacks
        je 2f
        incl %ecx
    2:  movl %gs:8, %eax
        cmpl $1, %eax
        jne loop
        movl %ecx, %eax
        movw $0x501, %dx
        outb %al, %dx              # exit code carries the hole count
    3:  hlt
        jmp 3b
    "#;
    let mut cfg = config("remap", Some(guest));
    cfg.debug_exit = Some(0x501);
    let mut vm = X86Vm::new(cfg).unwrap();
    let tree = vm.tree();
    let (alias, romd);
    {
        let mut t = tree.lock().unwrap();
        let ram = t.new_ram("ab", 0x2000).unwrap();
        let block = t.ram_block(ram).unwrap();
        block.write(0, &[0x11; 0x1000]).unwrap();
        block.write(0x1000, &[0x22; 0x1000]).unwrap();
        alias = t.new_alias("window", ram, 0, 0x1000).unwrap();
        t.add_subregion(vm.layout().system, 0xd3000, alias).unwrap();
        romd = t
            .new_romd("flash", 0x1000, Some(Recorder::new(0x44 - 0x10)))
            .unwrap();
        t.ram_block(romd)
            .unwrap()
            .write(0, &[0x33; 0x1000])
            .unwrap();
        t.add_subregion(vm.layout().system, 0xd4000, romd).unwrap();
    }
    vm.prepare().unwrap();
    let slots = vm.kvm_memory().unwrap();
    let memory = vm.memory().clone();
    let runner = std::thread::spawn(move || vm.run());
    let ioctls_before = slots.ioctl_count();
    let pauses_before = slots.pause_count();
    for i in 0..2000u64 {
        let mut t = tree.lock().unwrap();
        t.set_alias_offset(alias, (i % 2 + 1) % 2 * 0x1000).unwrap();
        t.set_romd_mode(romd, i % 2 == 1).unwrap();
    }
    // Tell the guest to stop (through the same dispatch the guest uses).
    memory.write(0xd0008, 4, 1);
    let outcome = runner.join().unwrap().unwrap();
    assert_eq!(
        outcome.reason,
        ExitReason::DebugExit(0),
        "the guest saw holes"
    );
    assert_eq!(slots.take_error(), None);
    // Every remap deleted and re-added an overlapping slot (2 ioctls and a
    // pause); every romd toggle added or removed one slot (1 ioctl).
    assert_eq!(slots.ioctl_count() - ioctls_before, 2000 * 2 + 2000);
    assert_eq!(slots.pause_count() - pauses_before, 2000);
}

/// Dirty logging reports exactly the pages the guest wrote, and reading
/// the log clears it.
#[test]
fn dirty_log_reports_exactly_the_written_pages() {
    if !kvm_available() {
        return;
    }
    // No stack use: call/push would dirty pages too.
    let guest = r#"
        xorw %ax, %ax
        movw %ax, %es
        movb $1, %es:0x1000
        movw $0x2000, %ax
        movw %ax, %es
        movw $0xbeef, %es:0x3004   # 0x23004
        movl $1, %es:0xf000        # 0x2f000
        movb $1, %al
        movw $0x500, %dx
        outb %al, %dx           # doorbell 1
        movw $0xd000, %ax
        movw %ax, %gs
    1:  movl %gs:8, %eax
        cmpl $2, %eax
        jne 1b
        movw $0x4000, %ax
        movw %ax, %es
        movb $7, %es:0x0ff0        # 0x40ff0
        movb $2, %al
        movw $0x500, %dx
        outb %al, %dx           # doorbell 2
    2:  movl %gs:8, %eax
        cmpl $3, %eax
        jne 2b
        movw $0x501, %dx
        outb %al, %dx
    3:  hlt
        jmp 3b
    "#;
    let mut cfg = config("dirty", Some(guest));
    cfg.debug_exit = Some(0x501);
    let mut vm = X86Vm::new(cfg).unwrap();
    let doorbell = Recorder::new(0);
    let rings = doorbell.subscribe();
    {
        let tree = vm.tree();
        let mut t = tree.lock().unwrap();
        add_io(
            &mut t,
            vm.layout().io,
            "doorbell",
            0x500,
            1,
            0,
            doorbell.clone(),
        );
        t.set_dirty_log(vm.layout().ram, 0, true).unwrap();
    }
    vm.prepare().unwrap();
    let slots = vm.kvm_memory().unwrap();
    let memory = vm.memory().clone();
    // Pages the VMM wrote while loading (the MP table) are not the guest's.
    let _ = slots.dirty_pages(0, 1 << 20).unwrap();
    let runner = std::thread::spawn(move || vm.run());
    assert_eq!(rings.recv_timeout(PATIENCE).unwrap(), (0, 1));
    assert_eq!(
        slots.dirty_pages(0, 1 << 20).unwrap(),
        vec![0x1000, 0x23000, 0x2f000]
    );
    memory.write(0xd0008, 4, 2);
    assert_eq!(rings.recv_timeout(PATIENCE).unwrap(), (0, 2));
    assert_eq!(slots.dirty_pages(0, 1 << 20).unwrap(), vec![0x40000]);
    memory.write(0xd0008, 4, 3);
    let outcome = runner.join().unwrap().unwrap();
    assert!(matches!(outcome.reason, ExitReason::DebugExit(_)));
}

/// Two vCPUs run at once. Without the in-kernel irqchip both start at the
/// reset vector; each reports its APIC ID from CPUID.
#[test]
fn two_vcpus_both_run() {
    if !kvm_available() {
        return;
    }
    let guest = r#"
        movl $1, %eax
        cpuid
        shrl $24, %ebx
        movb %bl, %al
        movw $0x500, %dx
        outb %al, %dx
    1:  jmp 1b
    "#;
    let mut cfg = config("smp", Some(guest));
    cfg.cpus = 2;
    cfg.irqchip = false;
    let vm = X86Vm::new(cfg).unwrap();
    let ids = Recorder::new(0);
    let rings = ids.subscribe();
    {
        let tree = vm.tree();
        let mut t = tree.lock().unwrap();
        add_io(&mut t, vm.layout().io, "ids", 0x500, 1, 0, ids.clone());
    }
    let exit = vm.exit_signal();
    let runner = std::thread::spawn(move || vm.run());
    let mut seen = vec![
        rings.recv_timeout(PATIENCE).unwrap().1,
        rings.recv_timeout(PATIENCE).unwrap().1,
    ];
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1]);
    exit.request(ExitReason::UserQuit);
    let outcome = runner.join().unwrap().unwrap();
    assert_eq!(outcome.reason, ExitReason::UserQuit);
    assert_eq!(outcome.vcpus.len(), 2);
}

/// A PVH kernel entered in 32-bit protected mode with the empty boot IDT
/// raises #UD: #GP, #DF, triple fault, and the VM ends with that reason.
/// (The nested KVM of the CI machines cannot emulate `int3` delivery or a
/// real-mode switch to protected mode, so the test uses `ud2` here.)
#[test]
fn triple_fault_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    let mut code = common::print_byte(b'P');
    code.extend_from_slice(&common::UD2);
    let mut cfg = config("triple", None);
    cfg.kernel = Some(common::tiny_elf_file("triple", &code, true));
    let text_cfg = cfg.clone();
    let outcome = X86Vm::new(cfg).unwrap().run().unwrap();
    assert_eq!(outcome.reason, ExitReason::TripleFault);
    assert_ne!(outcome.reason.exit_code(), 0);
    assert_eq!(console_text(&text_cfg), "P", "the PVH entry ran");
}

/// An ELF kernel without the PVH note is entered in long mode at its entry
/// point, with the zero page in %rsi.
#[test]
fn elf_kernel_runs_in_long_mode() {
    if !kvm_available() {
        return;
    }
    // mov %rsi, %rax; shr $12, %eax; (zero page 0x7000 -> 7) then exit
    let mut code = common::print_byte(b'L');
    code.extend_from_slice(&[0x48, 0x89, 0xf0, 0xc1, 0xe8, 0x0c]);
    code.extend_from_slice(&[0x66, 0xba, 0x01, 0x05, 0xee, 0xf4]);
    let mut cfg = config("long-mode", None);
    cfg.kernel = Some(common::tiny_elf_file("long-mode", &code, false));
    cfg.debug_exit = Some(0x501);
    let text_cfg = cfg.clone();
    let outcome = X86Vm::new(cfg).unwrap().run().unwrap();
    assert_eq!(outcome.reason, ExitReason::DebugExit(7));
    assert_eq!(console_text(&text_cfg), "L");
}

/// RAM placed where guest and host pages do not line up gets no KVM slot;
/// the guest still reads and writes it, through MMIO exits and dispatch.
#[test]
fn misaligned_ram_works_through_dispatch() {
    if !kvm_available() {
        return;
    }
    let guest = r#"
        movw $0xd680, %ax
        movw %ax, %es              # 0xd6800: RAM at offset 0
        movl $0x12345678, %es:0x10
        movl %es:0x10, %eax
        movw $0x500, %dx; outl %eax, %dx
        movw $0x501, %dx
        outb %al, %dx
    1:  hlt
        jmp 1b
    "#;
    let mut cfg = config("skew", Some(guest));
    cfg.debug_exit = Some(0x501);
    let vm = X86Vm::new(cfg).unwrap();
    let results = results_port(&vm);
    let block;
    {
        let tree = vm.tree();
        let mut t = tree.lock().unwrap();
        let ram = t.new_ram("skew", 0x1000).unwrap();
        block = t.ram_block(ram).unwrap();
        t.add_subregion(vm.layout().system, 0xd6800, ram).unwrap();
    }
    let outcome = vm.run().unwrap();
    assert!(matches!(outcome.reason, ExitReason::DebugExit(_)));
    assert_eq!(results.values(), vec![0x1234_5678]);
    let mut b = [0u8; 4];
    block.read(0x10, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    assert!(outcome.vcpus[0].mmio_exits >= 2);
}

/// An ioeventfd turns a guest port write into an eventfd signal inside KVM:
/// the device behind the port never sees it.
#[test]
fn ioeventfd_signals_without_reaching_the_device() {
    if !kvm_available() {
        return;
    }
    let guest = r#"
        movw $0x520, %dx
        movb $7, %al
        outb %al, %dx
        outb %al, %dx
        movw $0x501, %dx
        outb %al, %dx
    1:  hlt
        jmp 1b
    "#;
    let mut cfg = config("ioeventfd", Some(guest));
    cfg.debug_exit = Some(0x501);
    let mut vm = X86Vm::new(cfg).unwrap();
    let device = Recorder::new(0);
    {
        let tree = vm.tree();
        let mut t = tree.lock().unwrap();
        add_io(
            &mut t,
            vm.layout().io,
            "doorbell",
            0x520,
            1,
            0,
            device.clone(),
        );
    }
    vm.prepare().unwrap();
    let event = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    vm.register_ioeventfd(&event, kvm_ioctls::IoEventAddress::Pio(0x520), None)
        .unwrap();
    let outcome = vm.run().unwrap();
    assert!(matches!(outcome.reason, ExitReason::DebugExit(7)));
    assert_eq!(event.read().unwrap(), 2);
    assert!(device.writes().is_empty());
}

/// Runs a guest that echoes serial input to the results port until a
/// newline, with console input from `input`.
fn echo_serial_input(name: &str, input: ConsoleInput) -> Vec<u8> {
    let guest = r#"
    next:
        movw $0x3fd, %dx
    wait:
        inb %dx, %al               # line status: data ready?
        testb $1, %al
        jz wait
        movw $0x3f8, %dx
        inb %dx, %al
        movw $0x500, %dx; outb %al, %dx
        cmpb $0x0a, %al
        jne next
        movw $0x501, %dx
        outb %al, %dx
    1:  hlt
        jmp 1b
    "#;
    let mut cfg = config(name, Some(guest));
    cfg.debug_exit = Some(0x501);
    cfg.console_input = input;
    let vm = X86Vm::new(cfg).unwrap();
    let results = results_port(&vm);
    let outcome = vm.run().unwrap();
    assert!(matches!(outcome.reason, ExitReason::DebugExit(0x0a)));
    results.values().iter().map(|v| *v as u8).collect()
}

/// Console input from a file reaches the guest's UART in order.
#[test]
fn serial_input_from_a_file_reaches_the_guest() {
    if !kvm_available() {
        return;
    }
    let input = scratch_dir("input").join("typed.txt");
    std::fs::write(&input, b"ls -l\n").unwrap();
    assert_eq!(
        echo_serial_input("serial-file", ConsoleInput::Path(input)),
        b"ls -l\n"
    );
}

/// Console input from a UNIX socket reaches the guest, across more bytes
/// than the UART's FIFO holds.
#[test]
fn serial_input_from_a_socket_reaches_the_guest() {
    if !kvm_available() {
        return;
    }
    let path = scratch_dir("socket").join("console.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut line: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    let sent = line.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(&sent).unwrap();
        // Keep the connection open until the guest is done.
        let mut buf = [0u8; 1];
        let _ = std::io::Read::read(&mut stream, &mut buf);
    });
    let got = echo_serial_input("serial-socket", ConsoleInput::Path(path));
    assert_eq!(got, line);
    drop(writer);
}

/// Without the in-kernel irqchip, HLT exits to Ember, which ends the VM.
#[test]
fn hlt_without_irqchip_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    let mut cfg = config("hlt", Some("        hlt\n"));
    cfg.irqchip = false;
    let outcome = X86Vm::new(cfg).unwrap().run().unwrap();
    assert_eq!(outcome.reason, ExitReason::Halted);
}

/// A kernel finds the ACPI RSDP in the BIOS area, and writing the `_S5`
/// sleep type with SLP_EN to the FADT's sleep control register powers the
/// VM off (what a Linux guest's `poweroff` does).
#[test]
fn acpi_tables_are_in_place_and_sleep_control_powers_off() {
    if !kvm_available() {
        return;
    }
    let code = [
        0x8b, 0x04, 0x25, 0x00, 0x00, 0x0f, 0x00, // mov 0xf0000, %eax ("RSD ")
        0x66, 0xba, 0x00, 0x05, // mov $0x500, %dx
        0xef, // out %eax, (%dx)
        0x66, 0xba, 0xc0, 0x03, // mov $0x3c0, %dx
        0xb0, 0x34, // mov $(5 << 2 | SLP_EN), %al
        0xee, // out %al, (%dx)
        0xf4, // hlt
    ];
    let mut cfg = config("acpi-off", None);
    cfg.kernel = Some(common::tiny_elf_file("acpi-off", &code, false));
    let vm = X86Vm::new(cfg).unwrap();
    let results = results_port(&vm);
    let outcome = vm.run().unwrap();
    assert_eq!(outcome.reason, ExitReason::PowerOff);
    assert_eq!(results.values(), vec![u32::from_le_bytes(*b"RSD ") as u64]);
}

/// Pause stops every vCPU (a guest counting in RAM stops counting) and
/// resume lets it go on; both are idempotent and report the state.
#[test]
fn pause_and_resume_a_kvm_guest() {
    use ember::api::{VmControl, VmState};
    if !kvm_available() {
        return;
    }
    let guest = r#"
        xorw %ax, %ax
        movw %ax, %ds
    1:  incl 0x7000
        jmp 1b
    "#;
    let cfg = config("pause", Some(guest));
    let vm = X86Vm::new(cfg).unwrap();
    let memory = vm.memory().clone();
    let control = vm.control();
    let runner = std::thread::spawn(move || vm.run());
    let counter = || memory.read(0x7000, 4).0;
    let deadline = std::time::Instant::now() + PATIENCE;
    while counter() == 0 {
        assert!(std::time::Instant::now() < deadline, "the guest never ran");
        std::thread::yield_now();
    }
    assert_eq!(control.pause().unwrap(), VmState::Paused);
    assert_eq!(control.pause().unwrap(), VmState::Paused);
    let frozen = counter();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(counter(), frozen, "the vCPU ran while paused");
    assert!(control.accel_info()["slots"]
        .as_array()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(control.resume().unwrap(), VmState::Running);
    let deadline = std::time::Instant::now() + PATIENCE;
    while counter() == frozen {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not resume"
        );
        std::thread::yield_now();
    }
    control.stop().unwrap();
    let outcome = runner.join().unwrap().unwrap();
    assert_eq!(outcome.reason, ExitReason::UserQuit);
}

/// The control API's power button raises the ACPI Generic Event Device's
/// interrupt (GSI 23): a guest that routes IOAPIC pin 23 to a vector gets
/// it. (Running `_EVT` and acting on the power button is the guest OS's
/// part; the DSDT that says so is checked in `arch::x86_64::acpi`.)
#[test]
fn the_power_button_interrupts_the_guest() {
    use ember::api::VmControl;
    if !kvm_available() {
        return;
    }
    let guest = r#"
        .set IDT, 0x206000
        .set IDTR, 0x207100
        .set FLAG, 0x207000
        .set VECTOR, 0x32
        # (common::route_irq_asm goes here)
        ROUTE_IRQ
        movl $0, FLAG
        mov $0x500, %dx
        mov $1, %eax
        out %eax, (%dx)              # ready
    1:  cli
        cmpl $0, FLAG
        jne 2f
        sti
        hlt
        jmp 1b
    2:  mov $0x501, %dx
        mov $0x21, %al
        out %al, (%dx)
        hlt
    handler:
        movl $1, FLAG
        movl $0, 0xb0(%r12)
        iretq
    "#;
    let mut cfg = config("power-button", None);
    let guest = guest.replace(
        "        # (common::route_irq_asm goes here)\n        ROUTE_IRQ\n",
        &common::route_irq_asm(23),
    );
    cfg.kernel = Some(common::elf64_from_asm("power-button", &guest));
    cfg.debug_exit = Some(0x501);
    let vm = X86Vm::new(cfg).unwrap();
    let results = results_port(&vm);
    let control = vm.control();
    // A guest that never gets the interrupt sleeps forever: bound it.
    let exit = vm.exit_signal();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(PATIENCE).is_err() {
            exit.request(ExitReason::Error("no power-button interrupt".into()));
        }
    });
    let runner = std::thread::spawn(move || vm.run());
    let deadline = std::time::Instant::now() + PATIENCE;
    while results.values().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never got ready"
        );
        std::thread::yield_now();
    }
    control.power_button().expect("press the power button");
    let outcome = runner.join().unwrap().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    assert_eq!(outcome.reason, ExitReason::DebugExit(0x21));
}
