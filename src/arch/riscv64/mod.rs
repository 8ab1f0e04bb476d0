//! The riscv64 `virt` machine, laid out like QEMU's `virt` board and booted
//! like kvmtool boots it: no firmware, the VMM answers the guest's SBI
//! calls, and hart 0 enters a Linux `Image` directly in S-mode.
//!
//! [`machine::build_machine`] does everything a VMM needs before the harts
//! run: the memory tree (RAM at [`layout::RAM_BASE`], the PLIC, the
//! ns16550a UART), the interrupt wiring (UART -> PLIC -> each hart's
//! `HartSignals` SEIP line), the kernel and initrd ([`image`]) and the
//! device tree ([`fdt`]) in guest RAM. The pieces are public for VMMs that
//! need them separately (e.g. `--dump-dtb`, or virtio devices later placed
//! in [`layout::VirtioMmioSlot`]s).

pub mod cpu_description;
mod error;
pub mod fdt;
pub mod image;
pub mod irqchip;
pub mod layout;
pub mod machine;

pub use error::{BootError, FdtError, ImageError, MachineError};
pub use image::RiscvBoot;
pub use machine::{build_machine, RiscvMachine, RiscvMachineConfig};
