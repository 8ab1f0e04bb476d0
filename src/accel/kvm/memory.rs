//! KVM memory slots from FlatView changes.
//!
//! [`KvmMemoryListener`] listens to the `memory` address space. RAM ranges
//! become memory slots, ROM ranges and romd ranges in romd mode become
//! read-only slots (guest writes then exit as MMIO and reach dispatch), io
//! ranges get no slot. Each range is trimmed to whole host pages; the
//! unaligned edges are left to MMIO dispatch. An unchanged range costs no
//! ioctl (the tree reports it as `region_nop`).
//!
//! Changes are collected between `begin` and `commit` and applied at
//! `commit`. When a deleted slot overlaps an added one (a resize, a split,
//! a remap) every vCPU is first taken out of `KVM_RUN` and held there until
//! all ioctls are done, so no vCPU ever sees the transient hole between the
//! delete and the add (QEMU 8 does the same). Updates that only add, only
//! remove, or touch disjoint ranges need no pause.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;

use super::kick::VcpuControl;
use crate::memory::{FlatRange, MemoryListener, RegionKind, PAGE_SIZE};

/// What one slot maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotMapping {
    /// First guest-physical address (page aligned).
    pub guest_addr: u64,
    /// Length in bytes (whole pages).
    pub size: u64,
    /// Host address of the first byte.
    pub host_addr: u64,
    /// Guest writes exit to the VMM.
    pub readonly: bool,
    /// Dirty pages are logged.
    pub log_dirty: bool,
}

impl SlotMapping {
    fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.readonly {
            flags |= KVM_MEM_READONLY;
        }
        if self.log_dirty {
            flags |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        flags
    }

    fn end(&self) -> u64 {
        self.guest_addr + self.size
    }

    fn overlaps(&self, other: &SlotMapping) -> bool {
        self.guest_addr < other.end() && other.guest_addr < self.end()
    }

    /// The slot a flat range needs, if any: RAM-backed ranges that KVM can
    /// read directly, trimmed to whole pages.
    pub fn for_range(range: &FlatRange) -> Option<SlotMapping> {
        let readonly = match range.kind {
            RegionKind::Ram => range.readonly,
            RegionKind::Rom => true,
            RegionKind::Romd if range.romd_mode => true,
            _ => return None,
        };
        let ram = range.backing.ram()?;
        let start = (range.start as u128).next_multiple_of(PAGE_SIZE as u128);
        let end = range.end() / PAGE_SIZE as u128 * PAGE_SIZE as u128;
        if start >= end {
            return None;
        }
        let offset = range.offset_in_region as u128 + (start - range.start as u128);
        let size = end - start;
        if offset + size > ram.size() as u128 {
            // Rendering never produces this; refuse rather than map host
            // memory outside the block.
            return None;
        }
        let host_addr = ram.host_address() as u64 + offset as u64;
        if host_addr % PAGE_SIZE != 0 {
            // Guest and host pages do not line up (a RAM region placed at an
            // address that is not congruent to its offset modulo the page
            // size). KVM cannot map that; every access exits and dispatch
            // serves it from the same memory, slower but correct.
            return None;
        }
        Some(SlotMapping {
            guest_addr: start as u64,
            size: size as u64,
            host_addr,
            readonly,
            log_dirty: range.dirty_log_mask != 0,
        })
    }
}

/// Slot bookkeeping shared by the listener (inside the memory tree) and the
/// VMM's [`KvmMemory`] handle.
struct Slots {
    vm: Arc<VmFd>,
    limit: u32,
    /// Live slots by guest address.
    live: BTreeMap<u64, (u32, SlotMapping)>,
    free: Vec<u32>,
    next: u32,
    pending_del: Vec<SlotMapping>,
    pending_add: Vec<SlotMapping>,
    /// Live slots whose dirty-log flag must change: guest address -> flag.
    pending_log: HashMap<u64, bool>,
    control: Option<Arc<VcpuControl>>,
    /// The first failure since the VMM last asked; listeners cannot return
    /// errors, so the VMM checks after each change it makes.
    error: Option<String>,
    pauses: u64,
}

impl Slots {
    fn set(
        &mut self,
        slot: u32,
        m: &SlotMapping,
        size: u64,
        ioctls: &AtomicU64,
    ) -> Result<(), String> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: m.flags(),
            guest_phys_addr: m.guest_addr,
            memory_size: size,
            userspace_addr: m.host_addr,
        };
        ioctls.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `host_addr .. host_addr + size` lies inside a RAM block's
        // mapping (checked in `SlotMapping::for_range`); the block stays
        // mapped while the range is in the view, and the tree deletes the
        // slot (size 0, no memory referenced) before the range goes away.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| {
            format!(
                "KVM_SET_USER_MEMORY_REGION slot {slot} at {:#x} (+{size:#x}): {e}",
                m.guest_addr
            )
        })
    }

    fn apply(&mut self, ioctls: &AtomicU64) -> Result<(), String> {
        let dels = std::mem::take(&mut self.pending_del);
        let adds = std::mem::take(&mut self.pending_add);
        let logs = std::mem::take(&mut self.pending_log);
        for m in &dels {
            let Some((slot, live)) = self.live.remove(&m.guest_addr) else {
                continue;
            };
            self.set(slot, &live, 0, ioctls)?;
            self.free.push(slot);
        }
        for m in &adds {
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None if self.next < self.limit => {
                    self.next += 1;
                    self.next - 1
                }
                None => {
                    return Err(format!(
                        "out of KVM memory slots: the host allows {} (KVM_CAP_NR_MEMSLOTS) and the memory map needs more",
                        self.limit
                    ))
                }
            };
            self.set(slot, m, m.size, ioctls)?;
            self.live.insert(m.guest_addr, (slot, *m));
        }
        for (addr, log) in logs {
            if let Some((slot, live)) = self.live.get_mut(&addr) {
                if live.log_dirty != log {
                    live.log_dirty = log;
                    let (slot, live) = (*slot, *live);
                    self.set(slot, &live, live.size, ioctls)?;
                }
            }
        }
        Ok(())
    }
}

/// The VMM's handle on the slots: counters, errors, dirty pages.
#[derive(Clone)]
pub struct KvmMemory {
    slots: Arc<Mutex<Slots>>,
    ioctls: Arc<AtomicU64>,
}

/// The listener half, registered on the `memory` address space.
pub struct KvmMemoryListener {
    slots: Arc<Mutex<Slots>>,
    ioctls: Arc<AtomicU64>,
}

impl KvmMemory {
    /// A slot manager for `vm` allowing `limit` slots; `control` pauses the
    /// vCPUs for updates that delete and re-add overlapping slots.
    pub fn new(
        vm: Arc<VmFd>,
        limit: u32,
        control: Option<Arc<VcpuControl>>,
    ) -> (KvmMemory, KvmMemoryListener) {
        let slots = Arc::new(Mutex::new(Slots {
            vm,
            limit,
            live: BTreeMap::new(),
            free: Vec::new(),
            next: 0,
            pending_del: Vec::new(),
            pending_add: Vec::new(),
            pending_log: HashMap::new(),
            control,
            error: None,
            pauses: 0,
        }));
        let ioctls = Arc::new(AtomicU64::new(0));
        (
            KvmMemory {
                slots: slots.clone(),
                ioctls: ioctls.clone(),
            },
            KvmMemoryListener { slots, ioctls },
        )
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `KVM_SET_USER_MEMORY_REGION` calls made so far.
    pub fn ioctl_count(&self) -> u64 {
        self.ioctls.load(Ordering::Relaxed)
    }

    /// Times the vCPUs were paused for an overlapping update.
    pub fn pause_count(&self) -> u64 {
        self.lock().pauses
    }

    /// The live slots, by guest address.
    pub fn slots(&self) -> Vec<SlotMapping> {
        self.lock().live.values().map(|(_, m)| *m).collect()
    }

    /// The first slot error since the last call, if any.
    pub fn take_error(&self) -> Option<String> {
        self.lock().error.take()
    }

    /// Lets later updates pause these vCPUs.
    pub fn set_control(&self, control: Arc<VcpuControl>) {
        self.lock().control = Some(control);
    }

    /// Guest-physical addresses of the pages in `[start, start + len)` that
    /// were written since the last call (or since logging started), and
    /// clears them. Only slots with dirty logging on are reported.
    pub fn dirty_pages(&self, start: u64, len: u64) -> Result<Vec<u64>, String> {
        let slots = self.lock();
        let end = start.saturating_add(len);
        let mut pages = Vec::new();
        for (slot, m) in slots.live.values() {
            if !m.log_dirty || m.end() <= start || m.guest_addr >= end {
                continue;
            }
            let bitmap = slots
                .vm
                .get_dirty_log(*slot, m.size as usize)
                .map_err(|e| format!("KVM_GET_DIRTY_LOG slot {slot}: {e}"))?;
            for (word_index, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let bit = bits.trailing_zeros() as u64;
                    bits &= bits - 1;
                    let page = m.guest_addr + (word_index as u64 * 64 + bit) * PAGE_SIZE;
                    if page >= start && page < end {
                        pages.push(page);
                    }
                }
            }
        }
        pages.sort_unstable();
        Ok(pages)
    }
}

impl KvmMemoryListener {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryListener for KvmMemoryListener {
    fn region_add(&mut self, range: &FlatRange) {
        if let Some(m) = SlotMapping::for_range(range) {
            self.lock().pending_add.push(m);
        }
    }

    fn region_del(&mut self, range: &FlatRange) {
        if let Some(m) = SlotMapping::for_range(range) {
            self.lock().pending_del.push(m);
        }
    }

    fn log_start(&mut self, range: &FlatRange, _old: u8, _new: u8) {
        if let Some(m) = SlotMapping::for_range(range) {
            self.lock().pending_log.insert(m.guest_addr, true);
        }
    }

    fn log_stop(&mut self, range: &FlatRange, _old: u8, new: u8) {
        if let Some(m) = SlotMapping::for_range(range) {
            self.lock().pending_log.insert(m.guest_addr, new != 0);
        }
    }

    fn commit(&mut self) {
        let mut slots = self.lock();
        let overlapping = slots
            .pending_del
            .iter()
            .any(|d| slots.pending_add.iter().any(|a| a.overlaps(d)));
        let control = if overlapping {
            slots.control.clone()
        } else {
            None
        };
        if let Some(control) = &control {
            slots.pauses += 1;
            control.pause();
        }
        let result = slots.apply(&self.ioctls);
        if let Some(control) = &control {
            control.resume();
        }
        if let Err(e) = result {
            slots.error.get_or_insert(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::kvm::{KvmAccel, KVM_PATH};
    use crate::memory::{MemoryTree, Unassigned, SIZE_2_64};

    fn accel() -> Option<KvmAccel> {
        KvmAccel::open(std::path::Path::new(KVM_PATH))
            .map_err(|e| eprintln!("skipping: {e}"))
            .ok()
    }

    #[test]
    fn slots_follow_the_view_and_the_limit_is_a_clear_error() {
        let Some(kvm) = accel() else { return };
        let (slots, listener) = KvmMemory::new(kvm.vm.clone(), 2, None);
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        tree.add_listener(&mem, 0, Box::new(listener)).unwrap();
        // RAM whose pages do not line up with guest pages gets no slot.
        let skew = tree.new_ram("skew", 0x3000).unwrap();
        tree.add_subregion(sys, 0x80800, skew).unwrap();
        // A window with unaligned edges: only its whole pages get a slot.
        let backing = tree.new_ram("a", 0x4000).unwrap();
        let a = tree.new_alias("a-window", backing, 0x800, 0x3000).unwrap();
        tree.add_subregion(sys, 0x10800, a).unwrap();
        let io = tree.new_io("dev", 0x1000, None).unwrap();
        tree.add_subregion(sys, 0x40000, io).unwrap();
        let rom = tree.new_rom("rom", 0x1000).unwrap();
        tree.add_subregion(sys, 0x50000, rom).unwrap();
        assert_eq!(slots.take_error(), None);
        let live = slots.slots();
        assert_eq!(live.len(), 2, "io ranges get no slot");
        assert_eq!(
            (live[0].guest_addr, live[0].size, live[0].readonly),
            (0x11000, 0x2000, false)
        );
        assert_eq!((live[1].guest_addr, live[1].readonly), (0x50000, true));
        assert_eq!(live[0].host_addr % PAGE_SIZE, 0);
        assert_eq!(slots.ioctl_count(), 2);
        // A third slot exceeds the limit of 2.
        let b = tree.new_ram("b", 0x1000).unwrap();
        tree.add_subregion(sys, 0x60000, b).unwrap();
        let err = slots.take_error().expect("limit reached");
        assert!(
            err.contains("out of KVM memory slots") && err.contains('2'),
            "{err}"
        );
        // Freeing one makes room again: the slot number is reused.
        tree.del_subregion(sys, rom).unwrap();
        tree.del_subregion(sys, b).unwrap();
        tree.add_subregion(sys, 0x60000, b).unwrap();
        assert_eq!(slots.take_error(), None);
        assert_eq!(slots.slots().len(), 2);
        // An unchanged view costs no ioctl.
        let before = slots.ioctl_count();
        tree.set_enabled(io, false).unwrap();
        assert_eq!(slots.ioctl_count(), before);
    }
}
