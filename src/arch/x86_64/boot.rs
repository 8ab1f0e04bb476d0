//! Loading Linux for a direct boot, without firmware.
//!
//! linux-loader does the work it knows: parsing and copying an ELF vmlinux
//! (`Elf`, which also finds the PVH note) or a bzImage (`BzImage`), the
//! command line (`Cmdline`, `load_cmdline`), and writing `boot_params` or
//! `hvm_start_info` (`LinuxBootConfigurator`, `PvhBootConfigurator`). This
//! file decides the protocol and where things go, and checks the image
//! first so that errors say what is wrong (linux-loader reports "unable to
//! read kernel image" whether the file is short or RAM is).
//!
//! - An ELF with a Xen `PHYS32_ENTRY` note boots through PVH (32-bit
//!   entry, `hvm_start_info`); any other ELF through its 64-bit entry with
//!   a zero page.
//! - A bzImage boots through its 64-bit entry, 0x200 past its load address,
//!   with a zero page built from its own setup header.
//! - The initrd goes page-aligned at the top of RAM below 4 GiB and below
//!   the kernel's `initrd_addr_max`, above the kernel.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams, Error as ConfiguratorError};
use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, PT_LOAD,
};
use linux_loader::loader::bootparam::{
    boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH, XLF_KERNEL_64,
};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_RAM_START, HIMEM_START, PVH_MEMMAP_MAX_ENTRIES,
    PVH_MEMMAP_START, PVH_MODLIST_START, PVH_START_INFO, ZERO_PAGE_START,
};
use super::memory_map::{E820Entry, E820Type};

pub use super::error::BootError;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// 32-bit protected mode, paging off, %ebx = `hvm_start_info`.
    Pvh { start_info: GuestAddress },
    /// 64-bit long mode, identity-mapped, %rsi = zero page.
    Linux64 { zero_page: GuestAddress },
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub entry: GuestAddress,
    pub protocol: BootProtocol,
}

/// `boot_flag`: the 0xAA55 boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// `header`: "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
const HDR_MAGIC_OFFSET: usize = 0x202;
/// The setup header's place in a bzImage (and in `boot_params`).
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// `type_of_loader`: undefined boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// Alignment for a vmlinux without a header: Linux's default
/// CONFIG_PHYSICAL_ALIGN (as Firecracker).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// The 64-bit entry of a bzImage is 0x200 past its protected-mode code
/// (arch/x86/boot/compressed/head_64.S: startup_64).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Boot protocol 2.12 added `xloadflags` and with it the 64-bit entry.
const MIN_64BIT_PROTOCOL: u16 = 0x020c;
/// Before protocol 2.03, `initrd_addr_max` was implicitly this.
const OLD_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE: u64 = 0x1000;

/// What kind of image a kernel file is.
enum KernelKind {
    Elf,
    BzImage(Box<setup_header>),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BootError {
    move |source| BootError::Io { what, source }
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many were read.
fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> Result<usize, BootError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(io("kernel image"))?;
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(BootError::Io {
                    what: "kernel image",
                    source: e,
                })
            }
        }
    }
    Ok(done)
}

/// Tells an ELF from a bzImage by their magic numbers.
fn detect(file: &mut File, len: u64) -> Result<KernelKind, BootError> {
    if len == 0 {
        return Err(BootError::KernelEmpty);
    }
    let mut start = [0u8; 16];
    let n = read_at(file, 0, &mut start)?;
    if start[..n].starts_with(ELFMAG) {
        return Ok(KernelKind::Elf);
    }
    let mut hdr = setup_header::default();
    let n = read_at(file, SETUP_HEADER_OFFSET, hdr.as_mut_slice())?;
    let magic_end = HDR_MAGIC_OFFSET - SETUP_HEADER_OFFSET as usize + 4;
    if n >= magic_end && hdr.header == HDR_MAGIC {
        if n < std::mem::size_of::<setup_header>() {
            return Err(BootError::Truncated(format!(
                "the bzImage setup header is cut off at {len:#x} bytes"
            )));
        }
        return Ok(KernelKind::BzImage(Box::new(hdr)));
    }
    Err(BootError::NotAKernel {
        start: start[..n.min(8)].to_vec(),
    })
}

/// Whether `[start, end)` lies inside one RAM entry of the E820 map and in
/// guest memory.
fn in_ram(mem: &GuestMemoryMmap<()>, e820: &[E820Entry], start: u64, end: u64) -> bool {
    if end <= start {
        return end == start;
    }
    let Ok(len) = usize::try_from(end - start) else {
        return false;
    };
    e820.iter()
        .any(|e| e.kind == E820Type::Ram && e.addr <= start && end <= e.end())
        && mem.check_range(GuestAddress(start), len)
}

/// Checks an ELF vmlinux before linux-loader copies it: the header and
/// program headers are complete, it is 64-bit x86, every loadable segment
/// is in the file and lands in RAM above 1 MiB. Returns the end of the
/// highest segment in memory.
fn check_elf(
    mem: &GuestMemoryMmap<()>,
    e820: &[E820Entry],
    file: &mut File,
    len: u64,
) -> Result<u64, BootError> {
    let mut ehdr = Elf64_Ehdr::default();
    let ehdr_size = std::mem::size_of::<Elf64_Ehdr>();
    if read_at(file, 0, ehdr.as_mut_slice())? < ehdr_size {
        return Err(BootError::Truncated(format!(
            "the ELF header needs {ehdr_size} bytes, the file has {len}"
        )));
    }
    if ehdr.e_ident[EI_CLASS] != ELFCLASS64 {
        return Err(BootError::BadElf(
            "not a 64-bit ELF (an x86_64 vmlinux is ELFCLASS64)".into(),
        ));
    }
    if ehdr.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(BootError::BadElf("not little-endian".into()));
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(BootError::ElfMachine(ehdr.e_machine));
    }
    let phdr_size = std::mem::size_of::<Elf64_Phdr>();
    if usize::from(ehdr.e_phentsize) != phdr_size {
        return Err(BootError::BadElf(format!(
            "program header entries of {} bytes, not {phdr_size}",
            ehdr.e_phentsize
        )));
    }
    let phdrs_end = u64::from(ehdr.e_phnum)
        .checked_mul(phdr_size as u64)
        .and_then(|n| n.checked_add(ehdr.e_phoff))
        .unwrap_or(u64::MAX);
    if phdrs_end > len {
        return Err(BootError::Truncated(format!(
            "the program headers end at {phdrs_end:#x}, past the end of the file ({len:#x})"
        )));
    }
    let mut kernel_end = 0;
    let mut loads = 0;
    for i in 0..u64::from(ehdr.e_phnum) {
        let mut phdr = Elf64_Phdr::default();
        read_at(
            file,
            ehdr.e_phoff + i * phdr_size as u64,
            phdr.as_mut_slice(),
        )?;
        if phdr.p_type != PT_LOAD || phdr.p_filesz == 0 {
            continue;
        }
        loads += 1;
        let file_end = phdr.p_offset.saturating_add(phdr.p_filesz);
        if file_end > len {
            return Err(BootError::Truncated(format!(
                "segment {i} ends at {file_end:#x}, past the end of the file ({len:#x})"
            )));
        }
        if phdr.p_paddr < HIMEM_START {
            return Err(BootError::KernelTooLow { addr: phdr.p_paddr });
        }
        let end = phdr.p_paddr.saturating_add(phdr.p_memsz.max(phdr.p_filesz));
        if !in_ram(mem, e820, phdr.p_paddr, end) {
            return Err(BootError::KernelDoesNotFit {
                start: phdr.p_paddr,
                end,
            });
        }
        kernel_end = kernel_end.max(end);
    }
    if loads == 0 {
        return Err(BootError::BadElf("no loadable segment".into()));
    }
    Ok(kernel_end)
}

/// Checks a bzImage before linux-loader copies it: it has the 64-bit
/// entry, its protected-mode code is all in the file, and RAM from the load
/// address holds what the decompressor needs. Returns the end of that area.
fn check_bzimage(
    mem: &GuestMemoryMmap<()>,
    e820: &[E820Entry],
    hdr: &setup_header,
    len: u64,
) -> Result<u64, BootError> {
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < MIN_64BIT_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::BzImageNot64Bit {
            major: (version >> 8) as u8,
            minor: version as u8,
        });
    }
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_size = (setup_sects + 1) * 512;
    // `syssize` counts the protected-mode code in 16-byte paragraphs.
    let code_size = u64::from(hdr.syssize) * 16;
    if len <= setup_size || len - setup_size < code_size {
        return Err(BootError::Truncated(format!(
            "the bzImage has {len:#x} bytes; its header announces {:#x}",
            setup_size + code_size.max(1)
        )));
    }
    let load = u64::from(hdr.code32_start);
    if load < HIMEM_START {
        return Err(BootError::KernelTooLow { addr: load });
    }
    // The decompressor runs from where the kernel is loaded and needs
    // `init_size` bytes from the (aligned) address it decompresses to.
    let align = u64::from(hdr.kernel_alignment).max(PAGE);
    let target = if hdr.relocatable_kernel != 0 {
        load.next_multiple_of(align)
    } else {
        load.max(hdr.pref_address)
    };
    // Header fields come from the file: saturate rather than overflow.
    let end = load
        .saturating_add(len - setup_size)
        .max(target.saturating_add(u64::from(hdr.init_size)));
    if !in_ram(mem, e820, load, end) {
        return Err(BootError::KernelDoesNotFit { start: load, end });
    }
    Ok(end)
}

/// The command line, checked against `capacity` (NUL included). It is
/// passed verbatim, init arguments after " -- " included; linux-loader
/// checks it is printable ASCII.
fn make_cmdline(cmdline: &str, capacity: usize) -> Result<Cmdline, BootError> {
    let mut cmd = Cmdline::new(capacity).map_err(|e| BootError::CmdlineInvalid(e.to_string()))?;
    cmd.insert_str(cmdline).map_err(|e| match e {
        linux_loader::cmdline::Error::TooLarge => BootError::CmdlineTooLong {
            len: cmdline.trim().len(),
            max: capacity - 1,
        },
        other => BootError::CmdlineInvalid(other.to_string()),
    })?;
    Ok(cmd)
}

/// Checks a command line against Linux's x86 limit before anything is
/// loaded, so a bad one is reported without reading the kernel.
pub fn check_cmdline(cmdline: &str) -> Result<(), BootError> {
    make_cmdline(cmdline, CMDLINE_MAX_SIZE).map(|_| ())
}

/// The highest page-aligned place for `size` bytes of initrd in RAM, above
/// `low` and ending at or below `limit`.
fn place_initrd(e820: &[E820Entry], size: u64, low: u64, limit: u64) -> Option<u64> {
    e820.iter()
        .filter(|e| e.kind == E820Type::Ram)
        .filter_map(|e| {
            let start = e.addr.max(low);
            let end = e.end().min(limit);
            let addr = end.checked_sub(size)? / PAGE * PAGE;
            (end > start && addr >= start).then_some(addr)
        })
        .max()
}

/// Copies the initrd into RAM; returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap<()>,
    e820: &[E820Entry],
    file: &mut File,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let size = file.metadata().map_err(io("initrd"))?.len();
    if size == 0 {
        return Err(BootError::InitrdEmpty);
    }
    let low = kernel_end.max(HIMEM_START).next_multiple_of(PAGE);
    // The 32-bit `ramdisk_image` field reaches up to 4 GiB at most.
    let limit = addr_max.saturating_add(1).min(HIGH_RAM_START);
    let addr = place_initrd(e820, size, low, limit).ok_or(BootError::InitrdDoesNotFit {
        size,
        low,
        high: limit,
    })?;
    file.seek(SeekFrom::Start(0)).map_err(io("initrd"))?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdDoesNotFit {
        size,
        low,
        high: limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| BootError::Io {
            what: "initrd",
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}

fn params_error(e: ConfiguratorError) -> BootError {
    BootError::BootParams(match e {
        ConfiguratorError::Linux(inner) => inner.to_string(),
        ConfiguratorError::Pvh(inner) => inner.to_string(),
        other => other.to_string(),
    })
}

/// Writes `boot_params` for the 64-bit entry: the kernel's own setup
/// header (bzImage) or a minimal one (ELF), and the E820 map.
fn write_zero_page(
    mem: &GuestMemoryMmap<()>,
    e820: &[E820Entry],
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyE820 {
            count: e820.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
            protocol: "Linux",
        });
    }
    let mut params = boot_params::default();
    let mut hdr = header.unwrap_or_default();
    hdr.boot_flag = BOOT_FLAG;
    hdr.header = HDR_MAGIC;
    hdr.type_of_loader = LOADER_UNDEFINED;
    // The kernel is loaded at 1 MiB or above.
    hdr.loadflags |= LOADED_HIGH;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    // Fits: at most CMDLINE_MAX_SIZE.
    hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        // Both below 4 GiB: load_initrd places it there.
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    params.hdr = hdr;
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = (*entry).into();
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(params_error)
}

/// Writes `hvm_start_info`, the memory map and the module list for PVH.
fn write_pvh_start_info(
    mem: &GuestMemoryMmap<()>,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    if e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyE820 {
            count: e820.len(),
            max: PVH_MEMMAP_MAX_ENTRIES,
            protocol: "PVH",
        });
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind.code(),
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if initrd.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_START_INFO));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(params_error)
}

/// Loads `kernel` (ELF vmlinux or bzImage), the optional `initrd` and
/// `cmdline` into `mem`, writes the boot parameters for the protocol the
/// kernel supports, and says where and how to start. `e820` is the memory
/// map from `memory_map::e820_from_view`; the kernel and initrd go only
/// into its RAM.
pub fn load_linux(
    mem: &GuestMemoryMmap<()>,
    e820: &[E820Entry],
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
) -> Result<BootInfo, BootError> {
    let len = kernel.metadata().map_err(io("kernel image"))?.len();
    let kind = detect(kernel, len)?;
    let himem = Some(GuestAddress(HIMEM_START));

    // Check the command line before copying the kernel. A bzImage's
    // `cmdline_size` (protocol 2.06+) is its limit without the NUL.
    let capacity = match &kind {
        KernelKind::BzImage(hdr) if hdr.version >= 0x0206 && hdr.cmdline_size > 0 => {
            CMDLINE_MAX_SIZE.min(hdr.cmdline_size as usize + 1)
        }
        _ => CMDLINE_MAX_SIZE,
    };
    let cmd = make_cmdline(cmdline, capacity)?;

    let (loaded, kernel_end, header) = match kind {
        KernelKind::Elf => {
            let end = check_elf(mem, e820, kernel, len)?;
            let loaded = Elf::load(mem, None, kernel, himem)?;
            (loaded, end.max(loaded.kernel_end), None)
        }
        KernelKind::BzImage(hdr) => {
            let end = check_bzimage(mem, e820, &hdr, len)?;
            let loaded = BzImage::load(mem, None, kernel, himem)?;
            (loaded, end, loaded.setup_header)
        }
    };
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmd)?;
    let cmdline_len = cmd
        .as_cstring()
        .map_err(|e| BootError::CmdlineInvalid(e.to_string()))?
        .as_bytes_with_nul()
        .len();

    let initrd_addr_max = match header {
        Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        Some(_) => OLD_INITRD_ADDR_MAX,
        // A vmlinux does not say; any address below 4 GiB works.
        None => HIGH_RAM_START - 1,
    };
    let initrd = match initrd {
        Some(file) => Some(load_initrd(mem, e820, file, kernel_end, initrd_addr_max)?),
        None => None,
    };

    if let (None, PvhBootCapability::PvhEntryPresent(entry)) = (header, loaded.pvh_boot_cap) {
        write_pvh_start_info(mem, e820, initrd)?;
        return Ok(BootInfo {
            entry,
            protocol: BootProtocol::Pvh {
                start_info: GuestAddress(PVH_START_INFO),
            },
        });
    }

    write_zero_page(mem, e820, header, cmdline_len, initrd)?;
    let entry = match header {
        // linux-loader reports the ELF's entry point as `kernel_load`.
        None => loaded.kernel_load,
        Some(_) => GuestAddress(loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
    };
    Ok(BootInfo {
        entry,
        protocol: BootProtocol::Linux64 {
            zero_page: GuestAddress(ZERO_PAGE_START),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::arch::x86_64::memory_map::{build_pc_memory, e820_from_view};
    use crate::memory::{GuestRam, MemoryTree, Unassigned};

    const MIB: u64 = 1 << 20;

    /// A file in the temporary directory, removed when dropped.
    struct TempFile {
        path: PathBuf,
        file: File,
    }

    impl TempFile {
        fn new(bytes: &[u8]) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "ember-boot-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let mut file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            file.write_all(bytes).unwrap();
            TempFile { path, file }
        }

        /// A sparse file of `len` bytes.
        fn sized(len: u64) -> Self {
            let t = TempFile::new(&[]);
            t.file.set_len(len).unwrap();
            t
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Guest RAM of `size` bytes built the way the VMM builds it.
    fn machine(size: u64) -> (GuestRam, Vec<E820Entry>) {
        let mut tree = MemoryTree::new();
        let pc = build_pc_memory(&mut tree, size).unwrap();
        let space = tree
            .add_address_space("memory", pc.system, Unassigned::Zero)
            .unwrap();
        let view = space.view();
        (GuestRam::from_view(&view).unwrap(), e820_from_view(&view))
    }

    const CODE: [u8; 8] = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'X', 0xee, 0xf4];
    const ELF_ENTRY: u64 = 0x100_0000;
    const PVH_ENTRY: u64 = 0x100_0100;

    /// A minimal x86_64 ELF executable: one PT_LOAD of `CODE` at 16 MiB
    /// and, with `pvh`, a PT_NOTE holding a Xen PHYS32_ENTRY note.
    fn tiny_elf(pvh: bool) -> Vec<u8> {
        let phnum: u16 = if pvh { 2 } else { 1 };
        let note_off = 0x100u64;
        let code_off = 0x200u64;
        let mut f = vec![0u8; code_off as usize + CODE.len()];
        let put = |f: &mut Vec<u8>, at: u64, bytes: &[u8]| {
            f[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        // ELF header.
        put(&mut f, 0, b"\x7fELF");
        put(&mut f, 4, &[2, 1, 1]); // 64-bit, little-endian, version 1
        put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
        put(&mut f, 20, &1u32.to_le_bytes());
        put(&mut f, 24, &ELF_ENTRY.to_le_bytes());
        put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
        put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
        put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
        put(&mut f, 56, &phnum.to_le_bytes());
        // PT_LOAD.
        let ph = 64;
        put(&mut f, ph, &1u32.to_le_bytes());
        put(&mut f, ph + 4, &5u32.to_le_bytes()); // R+X
        put(&mut f, ph + 8, &code_off.to_le_bytes());
        put(&mut f, ph + 16, &ELF_ENTRY.to_le_bytes()); // vaddr
        put(&mut f, ph + 24, &ELF_ENTRY.to_le_bytes()); // paddr
        put(&mut f, ph + 32, &(CODE.len() as u64).to_le_bytes());
        put(&mut f, ph + 40, &0x1000u64.to_le_bytes()); // memsz
        put(&mut f, ph + 48, &0x1000u64.to_le_bytes());
        if pvh {
            // PT_NOTE.
            let ph = 64 + 56;
            put(&mut f, ph, &4u32.to_le_bytes());
            put(&mut f, ph + 8, &note_off.to_le_bytes());
            put(&mut f, ph + 32, &20u64.to_le_bytes()); // filesz
            put(&mut f, ph + 40, &20u64.to_le_bytes());
            put(&mut f, ph + 48, &4u64.to_le_bytes());
            // Note: namesz 4, descsz 4, type 18, "Xen\0", entry.
            put(&mut f, note_off, &4u32.to_le_bytes());
            put(&mut f, note_off + 4, &4u32.to_le_bytes());
            put(&mut f, note_off + 8, &18u32.to_le_bytes());
            put(&mut f, note_off + 12, b"Xen\0");
            put(&mut f, note_off + 16, &(PVH_ENTRY as u32).to_le_bytes());
        }
        put(&mut f, code_off, &CODE);
        f
    }

    /// A minimal bzImage: one setup sector after the boot sector, then
    /// `payload` bytes of "compressed kernel".
    fn tiny_bzimage(version: u16, payload: usize, init_size: u32) -> Vec<u8> {
        let hdr = setup_header {
            setup_sects: 1,
            syssize: (payload / 16) as u32,
            boot_flag: BOOT_FLAG,
            header: HDR_MAGIC,
            version,
            loadflags: LOADED_HIGH,
            code32_start: HIMEM_START as u32,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 255,
            init_size,
            ..Default::default()
        };
        let mut f = vec![0u8; 1024 + payload];
        f[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        f[1024..].fill(0x90);
        f
    }

    fn load(
        ram: &GuestRam,
        e820: &[E820Entry],
        kernel: &[u8],
        initrd: Option<&mut TempFile>,
        cmdline: &str,
    ) -> Result<BootInfo, BootError> {
        let mut k = TempFile::new(kernel);
        load_linux(
            ram.memory(),
            e820,
            &mut k.file,
            initrd.map(|t| &mut t.file),
            cmdline,
        )
    }

    fn zero_page(ram: &GuestRam) -> boot_params {
        ram.memory()
            .read_obj(GuestAddress(ZERO_PAGE_START))
            .unwrap()
    }

    #[test]
    fn elf_with_pvh_note_boots_through_pvh() {
        let (ram, e820) = machine(64 * MIB);
        let mut initrd = TempFile::new(&[0x5a; 5000]);
        let boot = load(
            &ram,
            &e820,
            &tiny_elf(true),
            Some(&mut initrd),
            "console=ttyS0",
        )
        .unwrap();
        assert_eq!(
            boot,
            BootInfo {
                entry: GuestAddress(PVH_ENTRY),
                protocol: BootProtocol::Pvh {
                    start_info: GuestAddress(PVH_START_INFO)
                },
            }
        );
        let mem = ram.memory();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries as usize, e820.len());
        assert_eq!(info.nr_modules, 1);
        let first: hvm_memmap_table_entry = mem.read_obj(GuestAddress(info.memmap_paddr)).unwrap();
        assert_eq!((first.addr, first.type_), (0, 1));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(module.size, 5000);
        assert_eq!(module.paddr % PAGE, 0);
        assert!(module.paddr + module.size <= 64 * MIB);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(module.paddr)).unwrap(),
            0x5a
        );
        let mut cmd = [0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
        let mut code = [0u8; 8];
        mem.read_slice(&mut code, GuestAddress(ELF_ENTRY)).unwrap();
        assert_eq!(code, CODE);
    }

    #[test]
    fn elf_without_note_boots_through_the_64bit_entry() {
        let (ram, e820) = machine(64 * MIB);
        let boot = load(&ram, &e820, &tiny_elf(false), None, "quiet").unwrap();
        assert_eq!(boot.entry, GuestAddress(ELF_ENTRY));
        assert_eq!(
            boot.protocol,
            BootProtocol::Linux64 {
                zero_page: GuestAddress(ZERO_PAGE_START)
            }
        );
        let params = zero_page(&ram);
        let hdr = params.hdr;
        assert_eq!((hdr.boot_flag, hdr.header), (BOOT_FLAG, HDR_MAGIC));
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!(hdr.cmd_line_ptr as u64, CMDLINE_START);
        assert_eq!({ hdr.cmdline_size }, 6);
        assert_eq!((hdr.ramdisk_image, hdr.ramdisk_size), (0, 0));
        assert_eq!(params.e820_entries as usize, e820.len());
        let last = params.e820_table[e820.len() - 1];
        let (addr, size, kind) = (last.addr, last.size, last.r#type);
        assert_eq!((addr, size, kind), (MIB, 63 * MIB, 1));
    }

    #[test]
    fn bzimage_boots_at_load_address_plus_0x200() {
        let (ram, e820) = machine(64 * MIB);
        let mut initrd = TempFile::new(&[1; 3 * 4096 + 1]);
        let kernel = tiny_bzimage(0x020f, 0x2000, 0x40_0000);
        let boot = load(&ram, &e820, &kernel, Some(&mut initrd), "root=/dev/vda").unwrap();
        assert_eq!(boot.entry, GuestAddress(HIMEM_START + 0x200));
        let hdr = zero_page(&ram).hdr;
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!(hdr.code32_start as u64, HIMEM_START);
        assert_eq!(hdr.loadflags & LOADED_HIGH, LOADED_HIGH);
        assert_eq!({ hdr.ramdisk_size }, 3 * 4096 + 1);
        // Top of RAM, page-aligned.
        assert_eq!(hdr.ramdisk_image as u64, 64 * MIB - 4 * 4096);
        assert_eq!({ hdr.cmdline_size }, 14);
    }

    #[test]
    fn bzimage_errors() {
        let (ram, e820) = machine(8 * MIB);
        let err = load(&ram, &e820, &tiny_bzimage(0x020a, 0x2000, 0), None, "").unwrap_err();
        assert!(
            matches!(
                err,
                BootError::BzImageNot64Bit {
                    major: 2,
                    minor: 10
                }
            ),
            "{err}"
        );
        let mut cut = tiny_bzimage(0x020f, 0x2000, 0);
        cut.truncate(0x1000);
        let err = load(&ram, &e820, &cut, None, "").unwrap_err();
        assert!(matches!(err, BootError::Truncated(_)), "{err}");
        // Needs 16 MiB to decompress into 8 MiB of RAM.
        let big = tiny_bzimage(0x020f, 0x2000, 16 << 20);
        let err = load(&ram, &e820, &big, None, "").unwrap_err();
        assert!(matches!(err, BootError::KernelDoesNotFit { .. }), "{err}");
        // The kernel's own cmdline_size (255) wins over 2048.
        let long = "a".repeat(300);
        let err = load(&ram, &e820, &tiny_bzimage(0x020f, 0x2000, 0), None, &long).unwrap_err();
        assert!(
            matches!(err, BootError::CmdlineTooLong { len: 300, max: 255 }),
            "{err}"
        );
    }

    #[test]
    fn bad_kernel_files() {
        let (ram, e820) = machine(32 * MIB);
        let err = load(&ram, &e820, &[], None, "").unwrap_err();
        assert!(matches!(err, BootError::KernelEmpty), "{err}");
        assert!(err.to_string().contains("empty"));

        let err = load(&ram, &e820, &[0xab; 4096], None, "").unwrap_err();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        assert!(err.to_string().contains("not an ELF vmlinux or a bzImage"));

        let err = load(&ram, &e820, &tiny_elf(false)[..20], None, "").unwrap_err();
        assert!(matches!(err, BootError::Truncated(_)), "{err}");
        assert!(err.to_string().contains("ELF header"), "{err}");

        let mut short = tiny_elf(false);
        short.truncate(0x204);
        let err = load(&ram, &e820, &short, None, "").unwrap_err();
        assert!(matches!(err, BootError::Truncated(_)), "{err}");
        assert!(err.to_string().contains("segment 0"), "{err}");

        let mut arm = tiny_elf(false);
        arm[18] = 183; // EM_AARCH64
        let err = load(&ram, &e820, &arm, None, "").unwrap_err();
        assert!(matches!(err, BootError::ElfMachine(183)), "{err}");
    }

    #[test]
    fn kernel_beyond_ram_does_not_fit() {
        // The ELF loads at 16 MiB; 8 MiB of RAM cannot hold it.
        let (ram, e820) = machine(8 * MIB);
        let err = load(&ram, &e820, &tiny_elf(true), None, "").unwrap_err();
        assert!(matches!(err, BootError::KernelDoesNotFit { .. }), "{err}");
        assert!(err.to_string().contains("more memory"), "{err}");
    }

    #[test]
    fn initrd_errors() {
        let (ram, e820) = machine(32 * MIB);
        let mut huge = TempFile::sized(64 * MIB);
        let err = load(&ram, &e820, &tiny_elf(false), Some(&mut huge), "").unwrap_err();
        assert!(matches!(err, BootError::InitrdDoesNotFit { .. }), "{err}");
        assert!(err.to_string().contains("does not fit"), "{err}");

        let mut empty = TempFile::new(&[]);
        let err = load(&ram, &e820, &tiny_elf(false), Some(&mut empty), "").unwrap_err();
        assert!(matches!(err, BootError::InitrdEmpty), "{err}");

        // Fits in RAM but not between the kernel (ending at 16 MiB + 4 KiB)
        // and the top of 32 MiB.
        let mut big = TempFile::sized(16 * MIB);
        let err = load(&ram, &e820, &tiny_elf(false), Some(&mut big), "").unwrap_err();
        assert!(matches!(err, BootError::InitrdDoesNotFit { .. }), "{err}");
    }

    #[test]
    fn initrd_respects_the_hole_and_addr_max() {
        let e820 = vec![
            E820Entry {
                addr: MIB,
                size: 0xc000_0000 - MIB,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: 1 << 32,
                size: 1 << 30,
                kind: E820Type::Ram,
            },
        ];
        let top = place_initrd(&e820, 0x1800, 2 * MIB, 1 << 32).unwrap();
        assert_eq!(top, 0xc000_0000 - 0x2000);
        let capped = place_initrd(&e820, 0x1000, 2 * MIB, 0x3800_0000).unwrap();
        assert_eq!(capped, 0x3800_0000 - 0x1000);
        assert_eq!(place_initrd(&e820, 0xc000_0000, 2 * MIB, 1 << 32), None);
    }

    #[test]
    fn cmdline_errors() {
        let (ram, e820) = machine(32 * MIB);
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        let err = load(&ram, &e820, &tiny_elf(false), None, &long).unwrap_err();
        assert!(
            matches!(
                err,
                BootError::CmdlineTooLong {
                    len: 2048,
                    max: 2047
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("at most 2047"), "{err}");
        let fits = "x".repeat(CMDLINE_MAX_SIZE - 1);
        load(&ram, &e820, &tiny_elf(false), None, &fits).unwrap();
        let err = load(&ram, &e820, &tiny_elf(false), None, "quiet\tdebug").unwrap_err();
        assert!(matches!(err, BootError::CmdlineInvalid(_)), "{err}");
    }
}
