//! The RAM of a FlatView as a vm-memory `GuestMemoryMmap`, for the crates
//! that load guests through vm-memory's traits (linux-loader, virtio-queue).
//!
//! Only writable RAM ranges are included, each trimmed to whole host pages
//! (vm-memory needs page-aligned mappings). The snapshot keeps the RAM
//! blocks alive for as long as it exists; it does not follow later changes
//! to the tree.

use std::sync::Arc;

use arc_swap::ArcSwap;

use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::flatview::{FlatRange, FlatView};
use super::listener::MemoryListener;
use super::ram::RamBlock;
use super::region::RegionKind;
use super::MemoryError;

/// Host page size assumed for trimming (x86_64 and riscv64 Linux hosts).
pub const PAGE_SIZE: u64 = 4096;

/// A vm-memory view of the guest RAM in a FlatView.
pub struct GuestRam {
    memory: GuestMemoryMmap<()>,
    // Declared after `memory` so the non-owning mappings go first.
    _blocks: Vec<Arc<RamBlock>>,
}

impl GuestRam {
    /// Builds the view from the writable RAM ranges of `view`.
    pub fn from_view(view: &FlatView) -> Result<Self, MemoryError> {
        Self::from_ranges(view.ranges())
    }

    /// An empty view: every access fails.
    pub fn empty() -> Self {
        GuestRam {
            memory: GuestMemoryMmap::default(),
            _blocks: Vec::new(),
        }
    }

    /// Builds the view from the writable RAM among `ranges` (sorted and
    /// disjoint, as a FlatView's are).
    pub fn from_ranges<'a>(
        ranges: impl IntoIterator<Item = &'a FlatRange>,
    ) -> Result<Self, MemoryError> {
        let mut regions = Vec::new();
        let mut blocks = Vec::new();
        for range in ranges {
            if range.kind != RegionKind::Ram || range.readonly {
                continue;
            }
            let Some(ram) = range.backing.ram() else {
                continue;
            };
            let start = (range.start as u128).next_multiple_of(PAGE_SIZE as u128);
            let end = range.end() / PAGE_SIZE as u128 * PAGE_SIZE as u128;
            if start >= end {
                continue;
            }
            let offset = range.offset_in_region as u128 + (start - range.start as u128);
            let len = end - start;
            // The range lies inside the block: rendering clips every range
            // to its region, and a RAM region is never larger than its block.
            if offset + len > ram.size() as u128 {
                return Err(MemoryError::RamOutOfBounds {
                    offset: offset as u64,
                    len: len as u64,
                    size: ram.size(),
                });
            }
            if (ram.host_address() as u64 + offset as u64) % PAGE_SIZE != 0 {
                // Guest and host pages do not line up; vm-memory cannot map
                // it. Such RAM is still reachable through dispatch.
                continue;
            }
            let len =
                usize::try_from(len).map_err(|_| MemoryError::RamTooLarge { size: len as u64 })?;
            // SAFETY: `host_address() + offset .. + len` lies inside the live
            // mapping of `ram` (checked just above), which `blocks` keeps
            // alive for as long as the returned GuestRam exists; the region
            // is built non-owning, so dropping it never unmaps the block.
            let mapping = unsafe {
                MmapRegion::build_raw(
                    ram.host_address().add(offset as usize),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE,
                )
            }
            .map_err(|e| MemoryError::RamMap {
                size: len as u64,
                reason: e.to_string(),
            })?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(start as u64)).ok_or(
                MemoryError::RamMap {
                    size: len as u64,
                    reason: "guest address overflows".into(),
                },
            )?;
            regions.push(region);
            blocks.push(ram.clone());
        }
        if regions.is_empty() {
            // vm-memory refuses to build a view of no regions.
            return Ok(GuestRam::empty());
        }
        let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::RamMap {
            size: 0,
            reason: e.to_string(),
        })?;
        Ok(GuestRam {
            memory,
            _blocks: blocks,
        })
    }

    /// The vm-memory view.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.memory
    }
}

/// Keeps a [`GuestRam`] in step with an address space: registered as a
/// listener on `memory`, it rebuilds the view from the new ranges at every
/// commit and swaps it in, so device DMA (virtio) always sees the current
/// RAM layout. Readers hold the old view (and its RAM blocks) until they
/// drop it, so a device in the middle of a request never sees memory
/// unmapped under it.
pub struct GuestRamListener {
    handle: Arc<ArcSwap<GuestRam>>,
    ranges: Vec<FlatRange>,
    errors: Arc<std::sync::atomic::AtomicU64>,
}

impl GuestRamListener {
    /// A listener and the handle devices read from (empty until the
    /// listener is registered and replayed the current view).
    pub fn new() -> (Self, Arc<ArcSwap<GuestRam>>) {
        let handle = Arc::new(ArcSwap::from_pointee(GuestRam::empty()));
        (
            GuestRamListener {
                handle: handle.clone(),
                ranges: Vec::new(),
                errors: Arc::default(),
            },
            handle,
        )
    }

    /// How many rebuilds failed (the previous view was then kept).
    pub fn errors(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.errors.clone()
    }
}

impl MemoryListener for GuestRamListener {
    fn begin(&mut self) {
        self.ranges.clear();
    }
    fn region_add(&mut self, range: &FlatRange) {
        self.ranges.push(range.clone());
    }
    fn region_nop(&mut self, range: &FlatRange) {
        self.ranges.push(range.clone());
    }
    fn commit(&mut self) {
        match GuestRam::from_ranges(&self.ranges) {
            Ok(ram) => self.handle.store(Arc::new(ram)),
            Err(_) => {
                self.errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.ranges.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryTree, Unassigned, SIZE_2_64};
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn writes_through_vm_memory_land_in_the_tree() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let ram = tree.new_ram("ram", 0x10000).unwrap();
        let low = tree.new_alias("low", ram, 0, 0x8000).unwrap();
        let high = tree.new_alias("high", ram, 0x8000, 0x8000).unwrap();
        tree.add_subregion(sys, 0, low).unwrap();
        tree.add_subregion(sys, 0x100000, high).unwrap();
        let rom = tree.new_rom("rom", 0x1000).unwrap();
        tree.add_subregion(sys, 0x200000, rom).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        let guest = GuestRam::from_view(&mem.view()).unwrap();
        assert_eq!(guest.memory().num_regions(), 2, "rom is not writable RAM");
        guest
            .memory()
            .write_obj(0xdead_beefu32, GuestAddress(0x100010))
            .unwrap();
        assert_eq!(mem.read(0x100010, 4).0, 0xdead_beef);
        let mut b = [0u8; 4];
        tree.ram_block(ram).unwrap().read(0x8010, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        assert!(guest
            .memory()
            .write_obj(1u8, GuestAddress(0x200000))
            .is_err());
    }

    #[test]
    fn the_listener_follows_topology_changes() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let ram = tree.new_ram("ram", 0x10000).unwrap();
        tree.add_subregion(sys, 0x8000_0000, ram).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        let (listener, handle) = GuestRamListener::new();
        tree.add_listener(&mem, 0, Box::new(listener)).unwrap();
        let at = GuestAddress(0x8000_0010);
        handle.load().memory().write_obj(7u32, at).unwrap();
        assert_eq!(mem.read(0x8000_0010, 4).0, 7);
        // A reader holding the old view keeps working after RAM moves.
        let old = handle.load_full();
        tree.set_address(ram, 0x4000_0000).unwrap();
        assert!(handle.load().memory().read_obj::<u32>(at).is_err());
        assert_eq!(
            handle
                .load()
                .memory()
                .read_obj::<u32>(GuestAddress(0x4000_0010))
                .unwrap(),
            7
        );
        assert_eq!(old.memory().read_obj::<u32>(at).unwrap(), 7);
        tree.set_enabled(ram, false).unwrap();
        assert_eq!(handle.load().memory().num_regions(), 0);
    }
}
