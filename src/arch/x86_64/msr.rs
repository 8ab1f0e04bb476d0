//! The MSRs every vCPU starts with, as Firecracker's
//! `create_boot_msr_entries`: system-call entry points cleared (the kernel
//! sets its own), TSC at 0, fast string operations enabled, and MTRRs on
//! with write-back as the default memory type. Without the MTRR default a
//! Linux guest sees all memory as uncached and runs very slowly.
//!
//! Written by hand: kvm-bindings has no MSR numbers.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use super::ArchError;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE bit 0: fast-string operations (`rep movs/stos`).
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE bit 11: MTRRs enabled.
pub const MTRR_ENABLE: u64 = 1 << 11;
/// Memory type write-back.
pub const MTRR_TYPE_WB: u64 = 6;

/// The boot MSR values.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets the boot MSRs on `vcpu`. KVM stops at the first MSR it refuses;
/// the error names it.
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| ArchError::TooManyEntries {
        what: "the boot MSR list",
        count: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| ArchError::Kvm {
        what: "KVM_SET_MSRS",
        source,
    })?;
    match entries.get(set) {
        Some(refused) => Err(ArchError::MsrRefused {
            set,
            total: entries.len(),
            refused: refused.index,
        }),
        None => Ok(()),
    }
}
