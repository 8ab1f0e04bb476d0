//! Where things go in the guest-physical address space of the riscv64
//! `virt` machine.
//!
//! The addresses and interrupt numbers are those of QEMU's `virt` board, so
//! guest kernels and their device trees see a familiar machine:
//!
//! ```text
//! 0x0c00_0000  PLIC          0x20_0000 + 0x1000 per context (one per hart)
//! 0x1000_0000  UART0         ns16550a, 0x100 bytes, PLIC source 10
//! 0x1000_1000  virtio-mmio   8 slots of 0x1000, PLIC sources 1..=8
//! 0x8000_0000  RAM           up to 2^56 (the RISC-V physical address width)
//!   + 0x20_0000   kernel      (Image text_offset, 2 MiB aligned)
//!   ...           initrd      page aligned, just below the FDT
//!   top - 2 MiB   FDT         top = end of RAM or RAM + 256 MiB, the lower
//! ```
//!
//! There is no M-mode firmware: the VMM itself answers the guest's SBI
//! calls, so RAM starts being the kernel's right at [`RAM_BASE`].

pub use crate::arch::virtio_mmio::{VirtioMmioAllocator, VirtioMmioSlot, VirtioMmioWindow};
use crate::devices::plic::{plic_mmio_size, PLIC_MAX_CONTEXTS, PLIC_SOURCES};

/// Guest RAM starts here (QEMU `virt`, kvmtool).
pub const RAM_BASE: u64 = 0x8000_0000;
/// Smallest guest RAM accepted: room for a small kernel at +2 MiB, its bss,
/// and the FDT at the top.
pub const MIN_RAM_SIZE: u64 = 16 << 20;
/// Largest guest RAM accepted: RAM must end below 2^56, the widest
/// physical address Sv39/Sv48/Sv57 page tables can name.
pub const MAX_RAM_SIZE: u64 = (1 << 56) - RAM_BASE;
/// RAM sizes are whole pages.
pub const RAM_ALIGN: u64 = 0x1000;

/// The first UART (ns16550a).
pub const UART0_BASE: u64 = 0x1000_0000;
/// The size of UART0's window (the 16550 decodes the first 8 bytes).
pub const UART0_SIZE: u64 = 0x100;
/// UART0's PLIC source.
pub const UART0_IRQ: u32 = 10;
/// The UART's input clock, as QEMU advertises it.
pub const UART_CLOCK_FREQ: u32 = 3_686_400;

/// The platform-level interrupt controller.
pub const PLIC_BASE: u64 = 0x0c00_0000;
/// The address window QEMU reserves for the PLIC; [`plic_size`] of every
/// supported hart count fits in it.
pub const PLIC_WINDOW: u64 = 0x400_0000;
/// The highest valid PLIC source id, the device tree's `riscv,ndev`.
pub const PLIC_NDEV: u32 = PLIC_SOURCES - 1;

/// The PLIC register window for `contexts` contexts (one per hart): up to
/// the end of the last context's page, a multiple of 4 KiB.
pub const fn plic_size(contexts: u32) -> u64 {
    plic_mmio_size(contexts as usize)
}

/// The first virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0x1000_1000;
/// Size of, and distance between, virtio-mmio slots.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// How many virtio-mmio slots the machine has.
pub const VIRTIO_MMIO_SLOTS: usize = 8;
/// The PLIC source of slot 0; slot `i` uses `VIRTIO_MMIO_FIRST_IRQ + i`.
pub const VIRTIO_MMIO_FIRST_IRQ: u32 = 1;
/// The virtio-mmio slots, as QEMU's `virt` has them.
pub const VIRTIO_MMIO_WINDOW: VirtioMmioWindow = VirtioMmioWindow {
    base: VIRTIO_MMIO_BASE,
    slot_size: VIRTIO_MMIO_SIZE,
    slots: VIRTIO_MMIO_SLOTS,
    first_irq: VIRTIO_MMIO_FIRST_IRQ,
};

/// The frequency of the `time` CSR (and the SBI timer), as QEMU's `virt`.
pub const TIMEBASE_FREQ: u32 = 10_000_000;
/// Most harts a machine may have (each is one PLIC context).
pub const MAX_HARTS: u8 = 32;

/// An rv64 kernel must start on a 2 MiB boundary.
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// Linux wants the FDT and the initrd in the memory it maps first; both
/// go below `RAM_BASE + LOWMEM_SIZE` (kvmtool's choice).
pub const LOWMEM_SIZE: u64 = 256 << 20;
/// Room reserved for the FDT.
pub const FDT_MAX_SIZE: u64 = 64 << 10;
/// The FDT sits on a 2 MiB boundary below the top of low memory, as QEMU's
/// `riscv_compute_fdt_addr` puts it.
pub const FDT_ALIGN: u64 = 2 << 20;
/// riscv Linux's `COMMAND_LINE_SIZE`, the terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 1024;

// The devices must not overlap each other or RAM, and every IRQ must be a
// valid PLIC source other than 0.
const _: () = assert!(MAX_HARTS as usize <= PLIC_MAX_CONTEXTS);
const _: () = assert!(plic_size(MAX_HARTS as u32) <= PLIC_WINDOW);
const _: () = assert!(PLIC_BASE + PLIC_WINDOW <= UART0_BASE);
const _: () = assert!(UART0_BASE + UART0_SIZE <= VIRTIO_MMIO_BASE);
const _: () = assert!(VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE * VIRTIO_MMIO_SLOTS as u64 <= RAM_BASE);
const _: () = assert!(UART0_IRQ > 0 && UART0_IRQ <= PLIC_NDEV);
const _: () = assert!(VIRTIO_MMIO_FIRST_IRQ > 0);
const _: () = assert!(VIRTIO_MMIO_FIRST_IRQ + VIRTIO_MMIO_SLOTS as u32 <= UART0_IRQ);
const _: () = assert!(RAM_BASE % KERNEL_ALIGN == 0);
const _: () = assert!(MIN_RAM_SIZE >= KERNEL_ALIGN + FDT_ALIGN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_follow_qemu_virt() {
        let slots: Vec<_> = VIRTIO_MMIO_WINDOW.all().collect();
        assert_eq!(slots.len(), 8);
        assert_eq!(slots[0].base, 0x1000_1000);
        assert_eq!(slots[0].irq, 1);
        assert_eq!(slots[7].base, 0x1000_8000);
        assert_eq!(slots[7].irq, 8);
        assert!(slots.iter().all(|s| s.size == 0x1000));
        assert_eq!(VIRTIO_MMIO_WINDOW.slot(8), None);
    }

    #[test]
    fn plic_window_grows_by_one_page_per_context() {
        assert_eq!(plic_size(1), 0x20_1000);
        assert_eq!(plic_size(MAX_HARTS as u32), 0x22_0000);
        assert_eq!(plic_size(5) % 0x1000, 0);
        assert_eq!(PLIC_NDEV, 31);
    }
}
