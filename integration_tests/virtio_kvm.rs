//! virtio-blk under KVM with a purpose-built x86_64 guest (full Linux is too
//! slow on the nested KVM here): the guest probes the virtio-mmio transport
//! at the first slot of the MMIO window, negotiates VERSION_1, sets up one
//! queue, reads a sector and writes another through a hand-built descriptor
//! chain, and waits with `hlt` for the used-ring interrupt, which arrives
//! through the IOAPIC only if the irqfd is wired. The queue notification
//! must reach the device through the KVM ioeventfd, never through an MMIO
//! exit to the transport.

// x86_64 guests under KVM: only x86_64 hosts build the x86_64 machine.
#![cfg(target_arch = "x86_64")]

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{elf64_from_asm, kvm_available, scratch_dir, Recorder};
use ember::memory::RegionOps;
use ember::vmm::config::{DiskSpec, VmConfig};
use ember::vmm::console::{ConsoleInput, ConsoleOutput};
use ember::vmm::exit::ExitReason;
use ember::vmm::x86_vm::X86Vm;

/// The guest. Registers (virtio-mmio v2): 0x00 magic, 0x04 version, 0x08
/// device id, 0x20 driver features, 0x24 driver features select, 0x30
/// queue select, 0x38 queue size, 0x44 queue ready, 0x50 notify, 0x60
/// interrupt status, 0x64 interrupt ack, 0x70 status, 0x80/0x90/0xa0 ring
/// addresses, 0x100 config (capacity). Results go to port 0x500 in order;
/// a failed check exits with its number through isa-debug-exit (0x501).
const GUEST: &str = r#"
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
        .set VECTOR, 0x30

        VIRTIO_BLK_SETUP
        movl 0x100(%rbx), %eax       # capacity, low half
        mov $0x500, %dx
        out %eax, (%dx)

        # (common::virtio_blk_guest fills in the placeholder lines)
        ROUTE_IRQ

        # Request 1: read sector 1 into DATA.
        movl $0, HDR                 # VIRTIO_BLK_T_IN
        movl $0, HDR + 4
        movq $1, HDR + 8
        movb $0xff, STATUS
        call submit
        movl USED + 2, %eax          # used.idx (u16) and flags
        and $0xffff, %eax
        mov $0x500, %dx
        out %eax, (%dx)
        movzbl STATUS, %eax
        out %eax, (%dx)
        movl DATA, %eax
        out %eax, (%dx)
        movl DATA + 508, %eax
        out %eax, (%dx)

        # Request 2: write sector 2 from DATA, after changing it.
        movl $0x57524954, DATA       # "TIRW"
        movl $1, HDR                 # VIRTIO_BLK_T_OUT
        movq $2, HDR + 8
        movb $0xff, STATUS
        call submit
        movzbl STATUS, %eax
        mov $0x500, %dx
        out %eax, (%dx)
        mov $0x501, %dx
        mov $0x10, %al
        out %al, (%dx)
1:      hlt
        jmp 1b

        VIRTIO_BLK_SUBMIT

fail:
        mov $0x501, %dx
        mov %cl, %al
        out %al, (%dx)
        hlt
"#;

#[test]
fn a_hand_driven_virtio_blk_request_goes_through_ioeventfd_and_irqfd() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("virtio-kvm");
    let disk = dir.join("disk.img");
    let mut image = vec![0u8; 64 * 512];
    image[512..516].copy_from_slice(&0xc0ffee01u32.to_le_bytes());
    image[512 + 508..1024].copy_from_slice(&0x5ec7041eu32.to_le_bytes());
    std::fs::write(&disk, &image).unwrap();

    let mut cfg = VmConfig {
        kernel: Some(elf64_from_asm(
            "virtio-blk",
            &common::virtio_blk_guest(GUEST, 5),
        )),
        memory: 64 << 20,
        debug_exit: Some(0x501),
        console_input: ConsoleInput::None,
        console_output: ConsoleOutput::File(dir.join("console.log")),
        ..VmConfig::default()
    };
    cfg.disks.push(DiskSpec {
        path: disk.clone(),
        readonly: false,
        id: None,
    });
    let vm = X86Vm::new(cfg).unwrap();
    let results = Recorder::new(0);
    {
        let tree = vm.tree();
        let mut t = tree.lock().unwrap();
        let id = t
            .new_io("results", 1, Some(results.clone() as Arc<dyn RegionOps>))
            .unwrap();
        t.add_subregion(vm.layout().io, 0x500, id).unwrap();
    }
    let transport = vm.virtio().devices[0].transport.clone();
    assert_eq!(vm.virtio().devices[0].slot.base, 0xd000_0000);
    // A guest whose interrupt never comes sleeps in `hlt` forever: bound
    // the wait (a limit, not a synchronisation) and fail with what it saw.
    let exit = vm.exit_signal();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(60)).is_err() {
            exit.request(ExitReason::Error("the guest never finished".into()));
        }
    });
    let outcome = vm.run().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    assert_eq!(
        outcome.reason,
        ExitReason::DebugExit(0x10),
        "results so far: {:x?}",
        results.values()
    );
    // capacity, used.idx, status OK, the sector's first and last words,
    // then the write's status.
    assert_eq!(results.values(), vec![64, 1, 0, 0xc0ffee01, 0x5ec7041e, 0]);
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(&after[1024..1028], b"TIRW");
    assert_eq!(&after[1024 + 508..1536], &0x5ec7041eu32.to_le_bytes());
    assert_eq!(&after[..1024], &image[..1024]);
    let stats = transport.stats();
    assert_eq!(stats.notify_writes, 0, "notifications took an MMIO exit");
    assert!(stats.queue_events >= 2, "{stats:?}");
    assert!(stats.used_interrupts >= 2, "{stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two VMs cannot open one image for writing: the second is refused at
/// creation with a message naming the image; two read-only users share it,
/// and a directory is no disk.
#[test]
fn a_disk_image_is_locked_against_a_second_vm() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("virtio-kvm-lock");
    let disk = dir.join("shared.img");
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
    let config = |path: &std::path::Path, readonly: bool| {
        let mut cfg = VmConfig {
            kernel: Some(elf64_from_asm(
                "virtio-blk",
                &common::virtio_blk_guest(GUEST, 5),
            )),
            memory: 16 << 20,
            console_input: ConsoleInput::None,
            console_output: ConsoleOutput::File(dir.join("console.log")),
            ..VmConfig::default()
        };
        cfg.disks.push(DiskSpec {
            path: path.to_path_buf(),
            readonly,
            id: None,
        });
        cfg
    };
    let first = X86Vm::new(config(&disk, false)).unwrap();
    for readonly in [false, true] {
        let err = X86Vm::new(config(&disk, readonly)).err().expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains(&*disk.to_string_lossy()) && msg.contains("in use"),
            "{msg}"
        );
    }
    // A handle on a transport outliving its VM (the control plane keeps
    // them for counters) does not keep the image locked.
    let held = first.virtio().devices[0].transport.clone();
    drop(first);
    let readers = [
        X86Vm::new(config(&disk, true)).unwrap(),
        X86Vm::new(config(&disk, true)).unwrap(),
    ];
    assert!(X86Vm::new(config(&disk, false)).is_err());
    drop(readers);
    let err = X86Vm::new(config(&dir, true)).err().expect("refused");
    assert!(err.to_string().contains("is a directory"), "{err}");
    drop(held);
}
