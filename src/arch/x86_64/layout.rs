//! Where things go in the guest-physical address space of the x86_64
//! microVM.
//!
//! Low memory (below 1 MiB) holds the small structures a direct kernel boot
//! needs; the kernel itself goes at 1 MiB. Addresses follow Firecracker
//! where it has an established value, so guest kernels see a familiar
//! machine:
//!
//! ```text
//! 0x0000_0500  GDT                       (Firecracker's BOOT_GDT_OFFSET)
//! 0x0000_0530  IDT (empty), after the 5-entry GDT
//! 0x0000_6000  PVH hvm_start_info
//! 0x0000_6040  PVH module list (initrd)
//! 0x0000_6100  PVH memory map
//! 0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  initial stack pointer, growing down
//! 0x0000_9000  PML4
//! 0x0000_a000  PDPT
//! 0x0000_b000  4 page directories: identity map of the first 4 GiB
//! 0x0002_0000  kernel command line
//! 0x0009_e000  EBDA: MP configuration table     } reserved in the E820
//! 0x0009_fc00  MP floating pointer               } map, up to 640 KiB
//! 0x000f_0000  system BIOS area (reserved in the E820 map)
//! 0x0010_0000  kernel
//! 0xc000_0000  32-bit MMIO hole up to 4 GiB (IOAPIC, LAPIC, firmware ROM)
//! 1 << 32      RAM above the hole
//! ```

/// The GDT written for the boot vCPU.
pub const GDT_START: u64 = 0x500;
/// An empty IDT: interrupts are disabled at entry and the kernel loads its
/// own IDT before enabling them.
pub const IDT_START: u64 = 0x530;

/// PVH `hvm_start_info` (56 bytes), passed in %ebx.
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH module list: one 32-byte `hvm_modlist_entry` for the initrd.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map: 24-byte `hvm_memmap_table_entry`s up to the zero page.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// How many PVH memory-map entries fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;

/// The Linux zero page (`struct boot_params`, 4 KiB), passed in %rsi.
pub const ZERO_PAGE_START: u64 = 0x7000;

/// Initial stack pointer of the boot vCPU. Neither boot protocol needs a
/// stack at entry, but a valid one costs nothing and helps debugging.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Top-level page table (PML4) of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPT_START: u64 = 0xa000;
/// The first of [`PD_COUNT`] page directories, 1 GiB of 2 MiB pages each.
pub const PD_START: u64 = 0xb000;
/// Four page directories identity-map the first 4 GiB: the kernel, zero
/// page, command line and an initrd anywhere in low RAM are all mapped, as
/// the 64-bit boot protocol requires, for 4 pages of tables.
pub const PD_COUNT: u64 = 4;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line including its NUL: x86 Linux's
/// `COMMAND_LINE_SIZE`. A bzImage may announce a smaller limit
/// (`cmdline_size`), which is then used instead.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the Extended BIOS Data Area, reserved in the E820 map up to
/// [`BASE_MEMORY_END`]. PC firmware reports the last KiB (0x9fc00,
/// Firecracker's `EBDA_START`); this one is 8 KiB so it also holds an MP
/// configuration table for 254 CPUs (about 5.3 KiB), which the 1 KiB EBDA
/// Firecracker uses cannot.
pub const EBDA_START: u64 = 0x9e000;
/// The MP configuration table (see `mptable.rs`).
pub const MP_CONFIG_TABLE_START: u64 = EBDA_START;
/// The MP floating pointer, in the last KiB of base memory, one of the
/// places Linux scans for it (and where Firecracker puts its table).
pub const MP_FLOATING_POINTER_START: u64 = 0x9fc00;
/// Room for the MP configuration table, up to the floating pointer.
pub const MP_CONFIG_TABLE_MAX_SIZE: u64 = MP_FLOATING_POINTER_START - MP_CONFIG_TABLE_START;
/// End of base memory (the legacy VGA window starts here).
pub const BASE_MEMORY_END: u64 = 0xa0000;
/// The 64 KiB system BIOS area, reported reserved as PC firmware does
/// (with firmware mapped, its "isa-bios" window lies here).
pub const BIOS_AREA_START: u64 = 0xf0000;

/// Where the kernel is loaded: the boot protocols' "high memory".
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole: RAM below 4 GiB ends here at most.
///
/// 3 GiB, as Firecracker's `MMIO_MEM_START` and QEMU's microvm machine: the
/// 1 GiB hole holds the IOAPIC, the LAPIC, the firmware ROM and room for
/// 32-bit device windows, while guests with up to 3 GiB need no high RAM.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// RAM beyond the hole is mapped from 4 GiB.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// Size of the 32-bit MMIO hole.
pub const MMIO_HOLE_SIZE: u64 = HIGH_RAM_START - MMIO_HOLE_START;

/// Largest guest RAM accepted: 64 TiB keeps every guest-physical address
/// below 2^46, within what KVM hosts support.
pub const MAX_RAM_SIZE: u64 = 64 << 40;

/// The x86 port I/O address space: 64 KiB.
pub const IO_SPACE_SIZE: u64 = 0x10000;

/// The IOAPIC's registers (where KVM's in-kernel irqchip puts them).
/// virtio-mmio transports: 4 KiB slots at the start of the MMIO hole, on
/// IOAPIC pins 5..=22 (0-4 are the timer, keyboard, cascade and COM1/2 in
/// the PC's legacy assignment; pin 23, the last of the IOAPIC's 24, is the
/// power button's, see [`POWER_BUTTON_GSI`]).
pub const VIRTIO_MMIO_WINDOW: crate::arch::virtio_mmio::VirtioMmioWindow =
    crate::arch::virtio_mmio::VirtioMmioWindow {
        base: 0xd000_0000,
        slot_size: 0x1000,
        slots: 18,
        first_irq: 5,
    };

/// The interrupt of the ACPI Generic Event Device whose `_EVT` notifies the
/// power button (`\_SB.PWRB`): the control API's power button raises it.
pub const POWER_BUTTON_GSI: u32 = 23;

pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const APIC_ADDR: u64 = 0xfee0_0000;

/// The 3 pages KVM on Intel needs for its real-mode TSS
/// (`KVM_SET_TSS_ADDR`). QEMU's value: below the largest firmware image
/// (16 MiB under 4 GiB) and clear of the IOAPIC and LAPIC.
pub const KVM_TSS_ADDRESS: u64 = 0xfeff_d000;
/// The page KVM on Intel needs for its EPT identity map
/// (`KVM_SET_IDENTITY_MAP_ADDR`), just below the TSS, as in QEMU.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfeff_c000;

/// Largest firmware image `map_firmware` accepts.
pub const FIRMWARE_MAX_SIZE: u64 = 16 << 20;
/// The firmware's last bytes, at most this many, also appear just below
/// 1 MiB (QEMU's "isa-bios").
pub const ISA_BIOS_MAX_SIZE: u64 = 128 << 10;

// The low-memory structures must not overlap one another.
const _: () = assert!(IDT_START >= GDT_START + 8 * super::gdt::BOOT_GDT.len() as u64);
const _: () = assert!(IDT_START + 8 <= PVH_START_INFO);
const _: () = assert!(PVH_MODLIST_START >= PVH_START_INFO + 56);
const _: () = assert!(PVH_MEMMAP_START >= PVH_MODLIST_START + 32);
const _: () = assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
const _: () = assert!(PML4_START > BOOT_STACK_POINTER);
const _: () = assert!(PD_START + PD_COUNT * 0x1000 <= CMDLINE_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
const _: () = assert!(MP_FLOATING_POINTER_START + 16 <= BASE_MEMORY_END);
const _: () = assert!(KVM_TSS_ADDRESS + 0x3000 <= HIGH_RAM_START - FIRMWARE_MAX_SIZE);
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 <= KVM_TSS_ADDRESS);
const _: () = assert!(APIC_ADDR + 0x1000 <= KVM_IDENTITY_MAP_ADDRESS);
const _: () = assert!(VIRTIO_MMIO_WINDOW.base >= MMIO_HOLE_START);
const _: () = assert!(VIRTIO_MMIO_WINDOW.end() <= IOAPIC_ADDR);
const _: () =
    assert!(VIRTIO_MMIO_WINDOW.first_irq + VIRTIO_MMIO_WINDOW.slots as u32 <= POWER_BUTTON_GSI);
const _: () = assert!(POWER_BUTTON_GSI < 24);
