//! The errors of the riscv64 `virt` machine: [`ImageError`] for a kernel
//! file that is not a usable Linux `Image`, [`BootError`] for placing the
//! kernel, initrd and device tree in guest RAM, [`FdtError`] for building
//! the device tree, and [`MachineError`] for everything `build_machine`
//! does. Every message says what is wrong and, where it helps, what to do.

use std::path::PathBuf;

use crate::memory::MemoryError;

/// Why a kernel file is not a riscv64 Linux `Image`.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("the kernel image is an empty file")]
    Empty,
    #[error(
        "the kernel image is {len} bytes, shorter than the 64-byte riscv64 Image header; \
         pass arch/riscv/boot/Image"
    )]
    TooShort { len: usize },
    #[error(
        "the kernel image is an ELF file (a vmlinux?); this machine boots the flat \
         arch/riscv/boot/Image"
    )]
    Elf,
    #[error(
        "the kernel image is gzip-compressed (Image.gz?); decompress it first, \
         this machine boots the uncompressed arch/riscv/boot/Image"
    )]
    Gzip,
    #[error(
        "the kernel image is not a riscv64 Linux Image: the magic at offset 56 is {found:02x?}, \
         not \"RSC\\x05\""
    )]
    BadMagic { found: [u8; 4] },
    #[error(
        "the kernel Image header says the image is big-endian; riscv64 guests are little-endian"
    )]
    BigEndian,
    #[error("the kernel Image header gives an image_size of 0 (header version {version:#x})")]
    ZeroImageSize { version: u32 },
    #[error(
        "the kernel Image header's image_size ({image_size:#x}) is smaller than the file \
         ({file_len:#x} bytes); the file is not a kernel Image or is corrupt"
    )]
    ImageSizeTooSmall { image_size: u64, file_len: u64 },
}

/// Why the kernel, initrd or device tree could not be placed in RAM.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootError {
    #[error("there is no guest RAM at {addr:#x} to load the kernel into")]
    NoRam { addr: u64 },
    #[error(
        "the kernel needs [{start:#x}, {end:#x}) and the device tree needs \
         [{fdt:#x}, {fdt_end:#x}); the RAM at {ram:#x} ({size:#x} bytes) is too small, \
         give the VM more memory"
    )]
    KernelDoesNotFit {
        start: u64,
        end: u64,
        fdt: u64,
        fdt_end: u64,
        ram: u64,
        size: u64,
    },
    #[error("the initrd is an empty file")]
    InitrdEmpty,
    #[error(
        "the initrd ({size:#x} bytes) does not fit between the kernel's end ({low:#x}) \
         and the device tree ({high:#x}) in the first 256 MiB of RAM; give the VM more \
         memory or use a smaller initrd"
    )]
    InitrdDoesNotFit { size: u64, low: u64, high: u64 },
    #[error("the device tree is {size} bytes, more than the {max} bytes reserved for it")]
    FdtTooLarge { size: usize, max: u64 },
    #[error("writing the {what} ({len:#x} bytes) to guest RAM at {addr:#x} failed")]
    GuestMemory {
        what: &'static str,
        addr: u64,
        len: usize,
    },
}

/// Why the device tree could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdtError {
    #[error("building the device tree: {0}")]
    Writer(#[from] vm_fdt::Error),
    #[error("the device tree has no RAM to describe")]
    NoMemory,
    #[error("{harts} harts: the device tree describes 1 to {max}")]
    Harts { harts: u32, max: u32 },
}

/// Why the machine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("{count} CPUs requested: this machine supports 1 to {max}")]
    CpuCount { count: u8, max: u8 },
    #[error("the accelerator gave {lines} hart interrupt lines for {harts} harts")]
    HartLines { lines: usize, harts: u8 },
    #[error(
        "guest RAM of {size:#x} bytes: it must be at least {min} MiB and a multiple of 4 KiB",
        min = super::layout::MIN_RAM_SIZE >> 20
    )]
    RamSize { size: u64 },
    #[error(
        "guest RAM of {} is more than the {} this machine supports",
        crate::memory::human_size(*size),
        crate::memory::human_size(*max)
    )]
    RamTooLarge { size: u64, max: u64 },
    #[error("the kernel command line is {len} bytes; riscv Linux accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("an initrd was given without a kernel")]
    InitrdWithoutKernel,
    #[error("reading the {what} {path}: {source}", path = path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}", path = path.display())]
    Image { path: PathBuf, source: ImageError },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Fdt(#[from] FdtError),
    #[error("building the memory map: {0}")]
    Memory(#[from] MemoryError),
    #[error("creating the UART's interrupt eventfd: {0}")]
    Eventfd(std::io::Error),
}
