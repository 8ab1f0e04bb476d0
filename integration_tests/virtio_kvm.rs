//! virtio-blk under KVM with a purpose-built x86_64 guest (full Linux is too
//! slow on the nested KVM here): the guest probes the virtio-mmio transport
//! at the first slot of the MMIO window, negotiates VERSION_1, sets up one
//! queue, reads a sector and writes another through a hand-built descriptor
//! chain, and waits with `hlt` for the used-ring interrupt, which arrives
//! through the IOAPIC only if the irqfd is wired. The queue notification
//! must reach the device through the KVM ioeventfd, never through an MMIO
//! exit to the transport.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{elf64_from_asm, kvm_available, scratch_dir, Recorder};
use ember::memory::RegionOps;
use ember::vmm::config::{DiskSpec, VmConfig};
use ember::vmm::console::{ConsoleInput, ConsoleOutput};
use ember::vmm::exit::ExitReason;
use ember::vmm::vm::Vm;

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

        mov $BASE, %rbx
        mov $1, %cl
        cmpl $0x74726976, 0x00(%rbx)
        jne fail
        inc %cl
        cmpl $2, 0x04(%rbx)
        jne fail
        inc %cl
        cmpl $2, 0x08(%rbx)
        jne fail
        movl $0, 0x70(%rbx)
        movl $1, 0x70(%rbx)
        movl $3, 0x70(%rbx)
        movl $1, 0x24(%rbx)
        movl $1, 0x20(%rbx)          # VIRTIO_F_VERSION_1 (bit 32)
        movl $0, 0x24(%rbx)
        movl $0, 0x20(%rbx)
        movl $11, 0x70(%rbx)         # FEATURES_OK
        inc %cl
        testl $8, 0x70(%rbx)
        jz fail
        movl $0, 0x30(%rbx)
        movl $8, 0x38(%rbx)
        movl $DESC, 0x80(%rbx)
        movl $0, 0x84(%rbx)
        movl $AVAIL, 0x90(%rbx)
        movl $0, 0x94(%rbx)
        movl $USED, 0xa0(%rbx)
        movl $0, 0xa4(%rbx)
        movl $1, 0x44(%rbx)
        movl $15, 0x70(%rbx)         # DRIVER_OK
        inc %cl
        testl $0x40, 0x70(%rbx)      # DEVICE_NEEDS_RESET?
        jnz fail
        movl 0x100(%rbx), %eax       # capacity, low half
        mov $0x500, %dx
        out %eax, (%dx)

        # (common::route_irq_asm goes here)
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

# Builds the 3-descriptor chain for the request in HDR, publishes it in
# the available ring, notifies queue 0 and sleeps until the interrupt.
# Direction of the data descriptor: writable for reads (HDR type 0).
submit:
        movq $HDR, DESC
        movl $16, DESC + 8
        movw $1, DESC + 12           # NEXT
        movw $1, DESC + 14
        movq $DATA, DESC + 16
        movl $512, DESC + 24
        movw $3, %ax                 # NEXT | WRITE
        cmpl $0, HDR
        je 2f
        movw $1, %ax                 # NEXT
2:      movw %ax, DESC + 28
        movw $2, DESC + 30
        movq $STATUS, DESC + 32
        movl $1, DESC + 40
        movw $2, DESC + 44           # WRITE
        movw $0, DESC + 46
        movzwl AVAIL + 2, %eax       # ring[idx % 8] = 0, then idx += 1
        mov %eax, %edx
        and $7, %edx
        movw $0, AVAIL + 4(,%rdx,2)
        inc %eax
        mfence
        movw %ax, AVAIL + 2
        movl $0, FLAG
        mfence
        movl $0, 0x50(%rbx)          # QueueNotify: the ioeventfd
3:      cli
        cmpl $0, FLAG
        jne 4f
        sti
        hlt
        jmp 3b
4:      movl 0x60(%rbx), %eax        # interrupt status -> ack
        movl %eax, 0x64(%rbx)
        ret

handler:
        movl $1, FLAG
        movl $0, 0xb0(%r12)          # EOI
        iretq

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
            &GUEST.replace(
                "        # (common::route_irq_asm goes here)\n        ROUTE_IRQ\n",
                &common::route_irq_asm(5),
            ),
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
    let vm = Vm::new(cfg).unwrap();
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
