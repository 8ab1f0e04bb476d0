//! The errors of the x86_64 machine code: [`ArchError`] for building the
//! machine and its vCPUs, [`BootError`] for loading a kernel. Every message
//! says what is wrong and, where it helps, what to change.

use crate::memory::MemoryError;

/// Why the machine or a vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("guest RAM of {size:#x} bytes: it must be at least 1 MiB and a multiple of 4 KiB")]
    RamSize { size: u64 },
    #[error(
        "guest RAM of {} is more than the {} this machine supports",
        crate::memory::human_size(*size),
        crate::memory::human_size(*max)
    )]
    RamTooLarge { size: u64, max: u64 },
    #[error(
        "firmware image of {size} bytes: it must be non-empty, a multiple of 4 KiB \
         and at most 16 MiB"
    )]
    FirmwareSize { size: usize },
    #[error("{count} CPUs requested: this machine supports 1 to {max}")]
    CpuCount { count: u8, max: u8 },
    #[error("vCPU index {index} is not below the CPU count {count}")]
    CpuIndex { index: u8, count: u8 },
    #[error("building the memory map: {0}")]
    Memory(#[from] MemoryError),
    #[error("writing the {what} to guest memory at {addr:#x}: {reason}")]
    GuestMemory {
        what: &'static str,
        addr: u64,
        reason: String,
    },
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: vmm_sys_util::errno::Error,
    },
    #[error("KVM_SET_MSRS accepted {set} of {total} boot MSRs; it refused MSR {refused:#x}")]
    MsrRefused {
        set: usize,
        total: usize,
        refused: u32,
    },
    #[error("{what} has {count} entries, more than KVM accepts")]
    TooManyEntries { what: &'static str, count: usize },
}

/// Why a kernel, initrd or command line could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("reading the {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the kernel image is an empty file")]
    KernelEmpty,
    #[error("the kernel image is not an ELF vmlinux or a bzImage (it starts with {start:02x?})")]
    NotAKernel { start: Vec<u8> },
    #[error("the kernel image is truncated: {0}")]
    Truncated(String),
    #[error("the kernel ELF is malformed: {0}")]
    BadElf(String),
    #[error("the kernel ELF is for machine type {0}, not x86_64 (62)")]
    ElfMachine(u16),
    #[error("the bzImage (boot protocol {major}.{minor:02}) has no 64-bit entry point")]
    BzImageNot64Bit { major: u8, minor: u8 },
    #[error("the kernel wants to be loaded at {addr:#x}, below 1 MiB")]
    KernelTooLow { addr: u64 },
    #[error(
        "the kernel needs guest RAM at [{start:#x}, {end:#x}), which is not (all) RAM; \
         give the VM more memory"
    )]
    KernelDoesNotFit { start: u64, end: u64 },
    #[error("loading the kernel: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    #[error("the kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line: {0}")]
    CmdlineInvalid(String),
    #[error("the initrd is an empty file")]
    InitrdEmpty,
    #[error(
        "the initrd ({size:#x} bytes) does not fit in guest RAM between the kernel's end \
         ({low:#x}) and {high:#x}; give the VM more memory"
    )]
    InitrdDoesNotFit { size: u64, low: u64, high: u64 },
    #[error(
        "the memory map has {count} entries; the {protocol} boot protocol takes at most {max}"
    )]
    TooManyE820 {
        count: usize,
        max: usize,
        protocol: &'static str,
    },
    #[error("writing the boot parameters: {0}")]
    BootParams(String),
}
