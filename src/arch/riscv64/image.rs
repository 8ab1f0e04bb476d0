//! Loading a riscv64 Linux `Image` for a direct boot without firmware
//! (Documentation/arch/riscv/boot-image-header.rst, boot.rst).
//!
//! The flat `Image` starts with a 64-byte little-endian header:
//!
//! ```text
//!  0  u32 code0, u32 code1   executable code (a jump past the header)
//!  8  u64 text_offset        where to load it, from a 2 MiB aligned base
//! 16  u64 image_size         bytes the kernel occupies in memory, bss included
//! 24  u64 flags              bit 0: big-endian kernel
//! 32  u32 version            header version (0.2: major << 16 | minor)
//! 36  u32 res1, u64 res2
//! 48  u64 magic              "RISCV\0\0\0" (deprecated)
//! 56  u32 magic2             "RSC\x05"
//! 60  u32 res3
//! ```
//!
//! Placement, with `top` = the end of RAM or `RAM + 256 MiB`, the lower
//! (Linux wants the device tree and the initrd in the memory it maps
//! first):
//!
//! - the kernel at `RAM + round_up(text_offset, 2 MiB)` (`RAM + 2 MiB` for
//!   every rv64 kernel), running to `+ image_size`;
//! - the device tree on the 2 MiB boundary at least [`FDT_MAX_SIZE`] below
//!   `top`, as QEMU's `riscv_compute_fdt_addr` places it;
//! - the initrd page-aligned just below the device tree.
//!
//! The hart then starts at the kernel with `a0` = hart id, `a1` = the
//! device tree's address, `satp` = 0, in S-mode with interrupts off.

use super::error::{BootError, ImageError};
use super::layout::{FDT_ALIGN, FDT_MAX_SIZE, KERNEL_ALIGN, LOWMEM_SIZE};
use crate::memory::{AddressSpace, MemTxResult};

/// Size of the `Image` header.
pub const IMAGE_HEADER_SIZE: usize = 64;
/// The deprecated first magic, at offset 48.
pub const IMAGE_MAGIC: [u8; 8] = *b"RISCV\0\0\0";
/// The magic at offset 56 that identifies a riscv `Image`.
pub const IMAGE_MAGIC2: [u8; 4] = *b"RSC\x05";
/// `flags` bit 0: the kernel is big-endian.
const FLAG_BIG_ENDIAN: u64 = 1;
const PAGE: u64 = 0x1000;

/// The fields of an `Image` header that matter for loading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Load offset from a 2 MiB aligned RAM base.
    pub text_offset: u64,
    /// Memory the kernel occupies from its load address, bss included.
    pub image_size: u64,
    /// Kernel flags (bit 0: big-endian).
    pub flags: u64,
    /// Header version, `major << 16 | minor`.
    pub version: u32,
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(b)
}

impl ImageHeader {
    /// Parses and checks the header of the kernel file `image`.
    pub fn parse(image: &[u8]) -> Result<Self, ImageError> {
        if image.is_empty() {
            return Err(ImageError::Empty);
        }
        if image.starts_with(b"\x7fELF") {
            return Err(ImageError::Elf);
        }
        if image.starts_with(&[0x1f, 0x8b]) {
            return Err(ImageError::Gzip);
        }
        let Some(header) = image.get(..IMAGE_HEADER_SIZE) else {
            return Err(ImageError::TooShort { len: image.len() });
        };
        let mut magic2 = [0u8; 4];
        magic2.copy_from_slice(&header[56..60]);
        if magic2 != IMAGE_MAGIC2 {
            return Err(ImageError::BadMagic { found: magic2 });
        }
        let parsed = ImageHeader {
            text_offset: u64_at(header, 8),
            image_size: u64_at(header, 16),
            flags: u64_at(header, 24),
            version: u32_at(header, 32),
        };
        if parsed.flags & FLAG_BIG_ENDIAN != 0 {
            return Err(ImageError::BigEndian);
        }
        if parsed.image_size == 0 {
            return Err(ImageError::ZeroImageSize {
                version: parsed.version,
            });
        }
        let file_len = image.len() as u64;
        if parsed.image_size < file_len {
            return Err(ImageError::ImageSizeTooSmall {
                image_size: parsed.image_size,
                file_len,
            });
        }
        Ok(parsed)
    }
}

/// Where the boot put things and how the boot hart starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RiscvBoot {
    /// The kernel's load address: the boot hart's `pc`.
    pub entry: u64,
    /// The device tree's address: the boot hart's `a1`.
    pub fdt_addr: u64,
    /// One past the kernel's memory (`entry + image_size`).
    pub kernel_end: u64,
    /// The initrd as `(start, end)`, end exclusive, as `/chosen` gives it.
    pub initrd: Option<(u64, u64)>,
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_next_multiple_of(align)
}

fn align_down(value: u64, align: u64) -> u64 {
    value / align * align
}

/// Decides where the kernel, device tree and an initrd of `initrd_size`
/// bytes go in the RAM `[ram_start, ram_start + ram_size)`.
pub fn plan_boot(
    header: &ImageHeader,
    ram_start: u64,
    ram_size: u64,
    initrd_size: Option<u64>,
) -> Result<RiscvBoot, BootError> {
    let ram_end = ram_start.saturating_add(ram_size);
    let top = ram_end.min(ram_start.saturating_add(LOWMEM_SIZE));
    let fdt_addr = top
        .checked_sub(FDT_MAX_SIZE)
        .map(|a| align_down(a, FDT_ALIGN))
        .filter(|&a| a >= ram_start);
    let entry = align_up(ram_start, KERNEL_ALIGN).and_then(|base| {
        align_up(header.text_offset, KERNEL_ALIGN).and_then(|offset| base.checked_add(offset))
    });
    let kernel_end = entry.and_then(|entry| entry.checked_add(header.image_size));
    let (Some(fdt_addr), Some(entry), Some(kernel_end)) = (fdt_addr, entry, kernel_end) else {
        return Err(does_not_fit(header, ram_start, ram_size));
    };
    if kernel_end > fdt_addr {
        return Err(does_not_fit(header, ram_start, ram_size));
    }
    let initrd = match initrd_size {
        None => None,
        Some(0) => return Err(BootError::InitrdEmpty),
        Some(size) => {
            let low = align_up(kernel_end, PAGE).unwrap_or(u64::MAX);
            let start = fdt_addr
                .checked_sub(size)
                .map(|s| align_down(s, PAGE))
                .filter(|&s| s >= low)
                .ok_or(BootError::InitrdDoesNotFit {
                    size,
                    low: kernel_end,
                    high: fdt_addr,
                })?;
            Some((start, start + size))
        }
    };
    Ok(RiscvBoot {
        entry,
        fdt_addr,
        kernel_end,
        initrd,
    })
}

/// The error for a kernel that does not fit, with the addresses it
/// would have needed.
fn does_not_fit(header: &ImageHeader, ram_start: u64, ram_size: u64) -> BootError {
    let start = align_up(header.text_offset, KERNEL_ALIGN)
        .and_then(|offset| align_up(ram_start, KERNEL_ALIGN)?.checked_add(offset))
        .unwrap_or(u64::MAX);
    let top = ram_start.saturating_add(ram_size.min(LOWMEM_SIZE));
    let fdt = align_down(top.saturating_sub(FDT_MAX_SIZE), FDT_ALIGN);
    BootError::KernelDoesNotFit {
        start,
        end: start.saturating_add(header.image_size),
        fdt,
        fdt_end: fdt + FDT_MAX_SIZE,
        ram: ram_start,
        size: ram_size,
    }
}

/// Copies `bytes` to guest RAM at `addr` through `mem`.
pub(crate) fn write_guest(
    mem: &AddressSpace,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), BootError> {
    match mem.write_buf(addr, bytes) {
        MemTxResult::Ok => Ok(()),
        _ => Err(BootError::GuestMemory {
            what,
            addr,
            len: bytes.len(),
        }),
    }
}

/// Places `kernel` (an `Image` whose header is `header`) and `initrd` in
/// the RAM `[ram_start, ram_start + ram_size)` of `mem` as
/// [`plan_boot`] decides, and returns where they went. The device tree is
/// written later, with [`write_fdt`], once it knows the initrd's place.
pub fn load_image(
    mem: &AddressSpace,
    header: &ImageHeader,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    ram_start: u64,
    ram_size: u64,
) -> Result<RiscvBoot, BootError> {
    let boot = plan_boot(header, ram_start, ram_size, initrd.map(|i| i.len() as u64))?;
    write_guest(mem, "kernel", boot.entry, kernel)?;
    if let (Some(bytes), Some((start, _))) = (initrd, boot.initrd) {
        write_guest(mem, "initrd", start, bytes)?;
    }
    Ok(boot)
}

/// Writes the device tree blob to its place.
pub fn write_fdt(mem: &AddressSpace, boot: &RiscvBoot, fdt: &[u8]) -> Result<(), BootError> {
    if fdt.len() as u64 > FDT_MAX_SIZE {
        return Err(BootError::FdtTooLarge {
            size: fdt.len(),
            max: FDT_MAX_SIZE,
        });
    }
    write_guest(mem, "device tree", boot.fdt_addr, fdt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::riscv64::layout::RAM_BASE;
    use crate::memory::{MemoryTree, Unassigned, SIZE_2_64};

    const MIB: u64 = 1 << 20;

    /// A synthetic Image of `file_len` bytes.
    fn image(text_offset: u64, image_size: u64, file_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; file_len.max(IMAGE_HEADER_SIZE)];
        b[0..4].copy_from_slice(&0x4d5a_0000u32.to_le_bytes()); // c.li s4,-13 as in Linux
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[32..36].copy_from_slice(&0x0002u32.to_le_bytes());
        b[48..56].copy_from_slice(&IMAGE_MAGIC);
        b[56..60].copy_from_slice(&IMAGE_MAGIC2);
        for (i, byte) in b.iter_mut().enumerate().skip(IMAGE_HEADER_SIZE) {
            *byte = (i % 251) as u8;
        }
        b.truncate(file_len);
        b
    }

    fn header(text_offset: u64, image_size: u64) -> ImageHeader {
        ImageHeader {
            text_offset,
            image_size,
            flags: 0,
            version: 2,
        }
    }

    fn ram(size: u64) -> (MemoryTree, AddressSpace) {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let ram = tree.new_ram("ram", size).unwrap();
        tree.add_subregion(sys, RAM_BASE, ram).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        (tree, mem)
    }

    #[test]
    fn header_fields_are_read() {
        let h = ImageHeader::parse(&image(0x20_0000, 0x80_0000, 0x1000)).unwrap();
        assert_eq!(h, header(0x20_0000, 0x80_0000));
        // image_size equal to the file is fine.
        ImageHeader::parse(&image(0x20_0000, 0x1000, 0x1000)).unwrap();
    }

    #[test]
    fn non_images_are_rejected_with_the_reason() {
        let cases: Vec<(Vec<u8>, ImageError)> = vec![
            (vec![], ImageError::Empty),
            (image(0, 0x1000, 63), ImageError::TooShort { len: 63 }),
            (b"\x7fELF\x02\x01\x01".to_vec(), ImageError::Elf),
            (vec![0x1f, 0x8b, 8, 0, 0, 0], ImageError::Gzip),
            (
                {
                    let mut b = image(0, 0x1000, 0x100);
                    b[56..60].copy_from_slice(b"ARM\x64");
                    b
                },
                ImageError::BadMagic { found: *b"ARM\x64" },
            ),
            (
                {
                    let mut b = image(0, 0x1000, 0x100);
                    b[24] = 1;
                    b
                },
                ImageError::BigEndian,
            ),
            (
                image(0x20_0000, 0, 0x100),
                ImageError::ZeroImageSize { version: 2 },
            ),
            (
                image(0x20_0000, 0x800, 0x1000),
                ImageError::ImageSizeTooSmall {
                    image_size: 0x800,
                    file_len: 0x1000,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(ImageHeader::parse(&bytes), Err(want.clone()), "{want}");
        }
        let msg = ImageError::BadMagic { found: *b"MZ\0\0" }.to_string();
        assert!(msg.contains("offset 56"), "{msg}");
        let msg = ImageError::Gzip.to_string();
        assert!(msg.contains("decompress"), "{msg}");
    }

    #[test]
    fn layout_for_small_ram_puts_the_fdt_at_the_top() {
        let boot = plan_boot(
            &header(0x20_0000, 8 * MIB),
            RAM_BASE,
            128 * MIB,
            Some(0x1800),
        )
        .unwrap();
        assert_eq!(boot.entry, RAM_BASE + 2 * MIB);
        assert_eq!(boot.kernel_end, RAM_BASE + 10 * MIB);
        assert_eq!(boot.fdt_addr, RAM_BASE + 126 * MIB);
        let (start, end) = boot.initrd.unwrap();
        assert_eq!(end - start, 0x1800);
        assert_eq!(start % PAGE, 0);
        assert!(end <= boot.fdt_addr && boot.fdt_addr - end < PAGE);
    }

    #[test]
    fn layout_for_large_ram_stays_in_the_first_256_mib() {
        let boot = plan_boot(&header(0x20_0000, 8 * MIB), RAM_BASE, 4 << 30, None).unwrap();
        assert_eq!(boot.fdt_addr, RAM_BASE + 254 * MIB);
        assert_eq!(boot.initrd, None);
    }

    #[test]
    fn text_offset_is_rounded_to_2_mib() {
        for (offset, want) in [
            (0, 0),
            (0x10_0000, 2 * MIB),
            (0x20_0000, 2 * MIB),
            (0x40_0000, 4 * MIB),
        ] {
            let boot = plan_boot(&header(offset, MIB), RAM_BASE, 64 * MIB, None).unwrap();
            assert_eq!(boot.entry, RAM_BASE + want, "text_offset {offset:#x}");
            assert_eq!(boot.entry % KERNEL_ALIGN, 0);
        }
    }

    #[test]
    fn too_little_ram_is_an_error() {
        // 16 MiB: the FDT is at +14 MiB, so a 13 MiB kernel at +2 MiB is too big.
        let err = plan_boot(&header(0x20_0000, 13 * MIB), RAM_BASE, 16 * MIB, None).unwrap_err();
        assert!(matches!(err, BootError::KernelDoesNotFit { .. }), "{err}");
        assert!(err.to_string().contains("more memory"), "{err}");
        plan_boot(&header(0x20_0000, 12 * MIB), RAM_BASE, 16 * MIB, None).unwrap();
        // Absurd header values do not overflow.
        for (offset, size) in [(u64::MAX, 1), (0x20_0000, u64::MAX), (u64::MAX, u64::MAX)] {
            assert!(matches!(
                plan_boot(&header(offset, size), RAM_BASE, 64 * MIB, None),
                Err(BootError::KernelDoesNotFit { .. })
            ));
        }
        // RAM smaller than the FDT's room.
        assert!(plan_boot(&header(0, 1), RAM_BASE, 0x1000, None).is_err());
    }

    #[test]
    fn initrd_must_fit_between_kernel_and_fdt() {
        let h = header(0x20_0000, 8 * MIB);
        // 32 MiB: kernel ends at +10 MiB, FDT at +30 MiB: 20 MiB of room.
        plan_boot(&h, RAM_BASE, 32 * MIB, Some(20 * MIB)).unwrap();
        let err = plan_boot(&h, RAM_BASE, 32 * MIB, Some(20 * MIB + 1)).unwrap_err();
        assert_eq!(
            err,
            BootError::InitrdDoesNotFit {
                size: 20 * MIB + 1,
                low: RAM_BASE + 10 * MIB,
                high: RAM_BASE + 30 * MIB,
            }
        );
        assert_eq!(
            plan_boot(&h, RAM_BASE, 32 * MIB, Some(0)),
            Err(BootError::InitrdEmpty)
        );
        assert!(plan_boot(&h, RAM_BASE, 32 * MIB, Some(u64::MAX)).is_err());
    }

    #[test]
    fn kernel_initrd_and_fdt_land_in_guest_ram() {
        let (_tree, mem) = ram(64 * MIB);
        let kernel = image(0x20_0000, 4 * MIB, 0x3000);
        let h = ImageHeader::parse(&kernel).unwrap();
        let initrd: Vec<u8> = (0..0x2345u32).map(|i| (i * 13) as u8).collect();
        let boot = load_image(&mem, &h, &kernel, Some(&initrd), RAM_BASE, 64 * MIB).unwrap();
        let mut back = vec![0u8; kernel.len()];
        assert_eq!(mem.read_buf(boot.entry, &mut back), MemTxResult::Ok);
        assert_eq!(back, kernel);
        let (start, end) = boot.initrd.unwrap();
        let mut back = vec![0u8; (end - start) as usize];
        assert_eq!(mem.read_buf(start, &mut back), MemTxResult::Ok);
        assert_eq!(back, initrd);
        write_fdt(&mem, &boot, &[0xd0, 0x0d, 0xfe, 0xed]).unwrap();
        assert_eq!(mem.read(boot.fdt_addr, 4).0, 0xedfe_0dd0);
        assert_eq!(
            write_fdt(&mem, &boot, &vec![0; FDT_MAX_SIZE as usize + 1]),
            Err(BootError::FdtTooLarge {
                size: FDT_MAX_SIZE as usize + 1,
                max: FDT_MAX_SIZE
            })
        );
    }

    #[test]
    fn writing_outside_ram_is_an_error() {
        let (_tree, mem) = ram(64 * MIB);
        // Planned for more RAM than the address space has.
        let kernel = image(0x20_0000, 4 * MIB, 0x1000);
        let h = ImageHeader::parse(&kernel).unwrap();
        let err = load_image(&mem, &h, &kernel, Some(&[1; 16]), RAM_BASE, 512 * MIB).unwrap_err();
        assert!(
            matches!(err, BootError::GuestMemory { what: "initrd", .. }),
            "{err}"
        );
    }
}
