//! The x86_64 PC-style microVM: memory layout and region tree, kernel
//! loading (linux-loader), and what linux-loader does not provide, written
//! here by hand: vCPU registers, GDT, page tables, MSRs, LAPIC pins, CPUID
//! filtering and the MP table.
//!
//! The VMM's order of calls: [`memory_map::build_pc_memory`] (and
//! optionally [`memory_map::map_firmware`]), address spaces, KVM slots,
//! `KVM_CREATE_IRQCHIP`, then per boot: [`memory_map::e820_from_view`],
//! [`boot::load_linux`], [`mptable::setup_mptable`], and per vCPU:
//! [`cpuid::setup_cpuid`], [`regs::setup_lapic`], then
//! [`regs::setup_boot_vcpu`] for vCPU 0 and [`regs::setup_secondary_vcpu`]
//! for the others.

pub mod acpi;
pub mod boot;
pub mod cpuid;
mod error;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod memory_map;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;

pub use error::{ArchError, BootError};
