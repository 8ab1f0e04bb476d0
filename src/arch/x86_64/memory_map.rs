//! The PC's region tree, built the way QEMU's `pc_memory_init` builds it:
//! one RAM block "pc.ram" reached through the aliases "ram-below-4g" and
//! "ram-above-4g" around the 32-bit MMIO hole, the 64 KiB I/O root, and
//! optional firmware as "pc.bios" under 4 GiB with its tail mirrored below
//! 1 MiB as "isa-bios". The E820 table the guest gets is derived from the
//! rendered view, so it cannot disagree with what is really mapped.

use linux_loader::loader::bootparam::boot_e820_entry;

use super::layout::{
    BASE_MEMORY_END, BIOS_AREA_START, EBDA_START, FIRMWARE_MAX_SIZE, HIGH_RAM_START, HIMEM_START,
    IO_SPACE_SIZE, ISA_BIOS_MAX_SIZE, MAX_RAM_SIZE, MMIO_HOLE_START,
};
use super::ArchError;
use crate::memory::{FlatView, MemoryTree, RegionId, RegionKind, SIZE_2_64};

/// Smallest guest RAM: the low-memory boot structures and the kernel's
/// load address need the first MiB.
pub const MIN_RAM_SIZE: u64 = 1 << 20;
const PAGE: u64 = 0x1000;

/// What an E820 range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Type {
    /// Usable RAM.
    Ram,
    /// In use by the platform; the OS must leave it alone.
    Reserved,
}

impl E820Type {
    /// The type code of the E820 table and the PVH memory map (the two
    /// use the same numbers).
    pub fn code(self) -> u32 {
        match self {
            E820Type::Ram => 1,
            E820Type::Reserved => 2,
        }
    }
}

/// One entry of the BIOS E820 memory map: `[addr, addr + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

impl E820Entry {
    /// One past the last byte (saturating at 2^64 - 1).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

impl From<E820Entry> for boot_e820_entry {
    fn from(e: E820Entry) -> Self {
        boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.code(),
        }
    }
}

/// The regions of the PC that the VMM builds on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcMemory {
    /// The root of the `memory` address space: a 2^64 container.
    pub system: RegionId,
    /// All guest RAM, one block, mapped only through the two aliases.
    pub ram: RegionId,
    /// "ram-below-4g": RAM from 0 up to the MMIO hole.
    pub below_4g: RegionId,
    /// "ram-above-4g": the rest of RAM, from 4 GiB, when there is a rest.
    pub above_4g: Option<RegionId>,
    /// The root of the `I/O` address space: a 64 KiB io region without
    /// callbacks (unclaimed ports read as unassigned); devices go under it.
    pub io: RegionId,
}

/// Builds the PC's regions for `ram_size` bytes of RAM. The caller creates
/// the address spaces over `system` and `io`.
pub fn build_pc_memory(tree: &mut MemoryTree, ram_size: u64) -> Result<PcMemory, ArchError> {
    if ram_size < MIN_RAM_SIZE || ram_size % PAGE != 0 {
        return Err(ArchError::RamSize { size: ram_size });
    }
    if ram_size > MAX_RAM_SIZE {
        return Err(ArchError::RamTooLarge {
            size: ram_size,
            max: MAX_RAM_SIZE,
        });
    }
    let below = ram_size.min(MMIO_HOLE_START);
    // One transaction: address spaces created meanwhile would otherwise
    // render every intermediate state.
    tree.transaction(|tree| {
        let system = tree.new_container("system", SIZE_2_64)?;
        let ram = tree.new_ram("pc.ram", ram_size)?;
        let below_4g = tree.new_alias("ram-below-4g", ram, 0, below as u128)?;
        tree.add_subregion(system, 0, below_4g)?;
        let above_4g = if ram_size > below {
            let above = tree.new_alias("ram-above-4g", ram, below, (ram_size - below) as u128)?;
            tree.add_subregion(system, HIGH_RAM_START, above)?;
            Some(above)
        } else {
            None
        };
        let io = tree.new_io("io", IO_SPACE_SIZE as u128, None)?;
        Ok(PcMemory {
            system,
            ram,
            below_4g,
            above_4g,
            io,
        })
    })
}

/// The E820 table of a rendered `memory` view.
///
/// RAM entries are the view's writable RAM ranges, merged where they touch
/// (ROM, read-only RAM and MMIO are not RAM to the guest). Base memory ends
/// at the EBDA, and `[EBDA, 640 KiB)` and the system BIOS area
/// `[0xf0000, 1 MiB)` are reported reserved, as PC firmware does: the MP
/// table lives in the EBDA, and Linux must not treat the legacy window
/// below 1 MiB as RAM. Sorted by address.
pub fn e820_from_view(view: &FlatView) -> Vec<E820Entry> {
    let mut ram: Vec<(u64, u64)> = Vec::new();
    let mut push = |start: u64, end: u64| {
        if start >= end {
            return;
        }
        match ram.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => ram.push((start, end)),
        }
    };
    for range in view.ranges() {
        if range.kind != RegionKind::Ram || range.readonly {
            continue;
        }
        let start = range.start;
        // A range may end at 2^64; the last page cannot be described in a
        // u64 end, and no guest has RAM there.
        let end = u64::try_from(range.end()).unwrap_or(u64::MAX);
        // Cut [EBDA, 1 MiB) out of RAM.
        push(start, end.min(EBDA_START));
        push(start.max(HIMEM_START), end);
    }
    let has_base_memory = ram.first().is_some_and(|r| r.0 == 0);
    let mut table: Vec<E820Entry> = ram
        .into_iter()
        .map(|(start, end)| E820Entry {
            addr: start,
            size: end - start,
            kind: E820Type::Ram,
        })
        .collect();
    if has_base_memory {
        for (start, end) in [
            (EBDA_START, BASE_MEMORY_END),
            (BIOS_AREA_START, HIMEM_START),
        ] {
            table.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Type::Reserved,
            });
        }
    }
    table.sort_by_key(|e| e.addr);
    table
}

/// Maps a flat firmware image as QEMU's PC does: ROM "pc.bios" ending at
/// 4 GiB (where the reset vector 0xffff_fff0 points), and its last
/// min(size, 128 KiB) also visible to end at 1 MiB through the read-only
/// alias "isa-bios" (priority 1, so it covers RAM there), for firmware that
/// jumps to the legacy F-segment. Returns "pc.bios".
///
/// The image must be a non-empty multiple of 4 KiB (KVM maps whole pages)
/// and at most 16 MiB (it must not reach the IOAPIC and LAPIC).
pub fn map_firmware(
    tree: &mut MemoryTree,
    system: RegionId,
    image: &[u8],
) -> Result<RegionId, ArchError> {
    let size = image.len() as u64;
    if size == 0 || size % PAGE != 0 || size > FIRMWARE_MAX_SIZE {
        return Err(ArchError::FirmwareSize { size: image.len() });
    }
    let isa_size = size.min(ISA_BIOS_MAX_SIZE);
    tree.transaction(|tree| {
        let rom = tree.new_rom("pc.bios", size)?;
        tree.ram_block(rom)?.write(0, image)?;
        tree.add_subregion(system, HIGH_RAM_START - size, rom)?;
        let isa = tree.new_alias("isa-bios", rom, size - isa_size, isa_size as u128)?;
        tree.set_readonly(isa, true)?;
        tree.add_subregion_overlap(system, HIMEM_START - isa_size, isa, 1)?;
        Ok(rom)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{AddressSpace, Unassigned};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn pc(size: u64) -> (MemoryTree, PcMemory, AddressSpace) {
        let mut tree = MemoryTree::new();
        let pc = build_pc_memory(&mut tree, size).unwrap();
        let mem = tree
            .add_address_space("memory", pc.system, Unassigned::Zero)
            .unwrap();
        (tree, pc, mem)
    }

    fn ram(addr: u64, end: u64) -> E820Entry {
        E820Entry {
            addr,
            size: end - addr,
            kind: E820Type::Ram,
        }
    }

    fn reserved(addr: u64, end: u64) -> E820Entry {
        E820Entry {
            addr,
            size: end - addr,
            kind: E820Type::Reserved,
        }
    }

    #[test]
    fn e820_for_512_mib() {
        let (_tree, pc, mem) = pc(512 * MIB);
        assert!(pc.above_4g.is_none());
        assert_eq!(
            e820_from_view(&mem.view()),
            vec![
                ram(0, EBDA_START),
                reserved(EBDA_START, 0xa0000),
                reserved(0xf0000, MIB),
                ram(MIB, 512 * MIB),
            ]
        );
    }

    #[test]
    fn e820_for_5_gib_respects_the_hole() {
        let (tree, pc, mem) = pc(5 * GIB);
        let above = pc.above_4g.expect("RAM above 4 GiB");
        assert_eq!(tree.address(above).unwrap(), 4 * GIB);
        assert_eq!(tree.alias_of(above).unwrap(), Some((pc.ram, 3 * GIB)));
        assert_eq!(tree.size(above).unwrap(), (2 * GIB) as u128);
        let e820 = e820_from_view(&mem.view());
        assert_eq!(
            e820,
            vec![
                ram(0, EBDA_START),
                reserved(EBDA_START, 0xa0000),
                reserved(0xf0000, MIB),
                ram(MIB, MMIO_HOLE_START),
                ram(4 * GIB, 6 * GIB),
            ]
        );
        // Nothing claims the hole.
        assert!(mem.view().lookup(MMIO_HOLE_START).is_none());
        assert!(mem.view().lookup(4 * GIB - 1).is_none());
    }

    #[test]
    fn ram_exactly_filling_low_memory_has_no_high_part() {
        let (_tree, pc, mem) = pc(MMIO_HOLE_START);
        assert!(pc.above_4g.is_none());
        assert_eq!(
            e820_from_view(&mem.view()).last(),
            Some(&ram(MIB, MMIO_HOLE_START))
        );
    }

    #[test]
    fn bad_ram_sizes_are_refused() {
        let mut tree = MemoryTree::new();
        for size in [0, 512 << 10, MIB - PAGE, 64 * MIB + 1, 64 * MIB + 512] {
            assert!(
                matches!(
                    build_pc_memory(&mut tree, size),
                    Err(ArchError::RamSize { .. })
                ),
                "{size:#x}"
            );
        }
        assert!(matches!(
            build_pc_memory(&mut tree, 1 << 50),
            Err(ArchError::RamTooLarge { .. })
        ));
        let msg = build_pc_memory(&mut tree, 12345).unwrap_err().to_string();
        assert!(msg.contains("at least 1 MiB"), "{msg}");
    }

    #[test]
    fn io_root_is_64k() {
        let (tree, pc, _mem) = pc(16 * MIB);
        assert_eq!(tree.kind(pc.io).unwrap(), RegionKind::Io);
        assert_eq!(tree.size(pc.io).unwrap(), 0x10000);
    }

    #[test]
    fn firmware_at_4g_and_below_1m() {
        let (mut tree, pc, mem) = pc(64 * MIB);
        let size = 256 << 10;
        let mut image = vec![0u8; size as usize];
        image[(size - 16) as usize] = 0xea; // the reset vector's far jump
        let rom = map_firmware(&mut tree, pc.system, &image).unwrap();
        let view = mem.view();

        let top = view.lookup(HIGH_RAM_START - size).unwrap();
        assert_eq!(top.region, rom);
        assert_eq!(top.start, HIGH_RAM_START - size);
        assert_eq!(top.offset_in_region, 0);
        assert_eq!(top.end(), HIGH_RAM_START as u128);

        let isa = view.lookup(MIB - (128 << 10)).unwrap();
        assert_eq!(isa.region, rom);
        assert_eq!(isa.start, MIB - (128 << 10));
        assert_eq!(isa.offset_in_region, size - (128 << 10));
        assert_eq!(isa.end(), MIB as u128);
        assert!(isa.readonly);
        // Below the window, RAM again.
        assert_eq!(
            view.lookup(MIB - (128 << 10) - 1).unwrap().kind,
            RegionKind::Ram
        );
        assert_eq!(mem.read(0xffff0, 1).0, 0xea);
        assert_eq!(mem.read(0xffff_fff0, 1).0, 0xea);

        // The E820 table does not call the ROM window RAM.
        let e820 = e820_from_view(&view);
        assert!(e820
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .all(|e| e.end() <= EBDA_START || e.addr >= MIB));
    }

    #[test]
    fn small_firmware_is_mirrored_whole() {
        let (mut tree, pc, mem) = pc(16 * MIB);
        let rom = map_firmware(&mut tree, pc.system, &[0x90; 0x10000]).unwrap();
        let low = mem.view().lookup(MIB - 0x10000).unwrap().clone();
        assert_eq!((low.region, low.offset_in_region), (rom, 0));
        assert!(low.readonly);
    }

    #[test]
    fn bad_firmware_is_refused() {
        let (mut tree, pc, _mem) = pc(16 * MIB);
        for len in [0, 100, 0x1001, (16 << 20) + 0x1000] {
            let image = vec![0u8; len];
            assert!(
                matches!(
                    map_firmware(&mut tree, pc.system, &image),
                    Err(ArchError::FirmwareSize { size }) if size == len
                ),
                "{len}"
            );
        }
    }
}
