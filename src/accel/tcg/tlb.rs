//! The softmmu TLB, in QEMU's design (`accel/tcg/cputlb.c`).
//!
//! One direct-mapped table per MMU mode, indexed by virtual page number.
//! Each entry holds one comparator per access type (`addr_read`,
//! `addr_write`, `addr_code`) and an `addend` that turns a guest virtual
//! address into a host pointer. The fast path is: index, compare the
//! page-aligned address with the comparator, add. A comparator with any low
//! flag bit set can never equal a page-aligned address, so flags force the
//! slow path without a second test:
//!
//! * [`TLB_INVALID`]: no permission for that access type (or no entry);
//! * [`TLB_MMIO`]: the page is a device (io region) or read-only memory
//!   for writes; the slow path dispatches through the `memory` address
//!   space, the same code KVM's MMIO exits use;
//! * [`TLB_NOTDIRTY`]: the page holds translated code; stores take the slow
//!   path once, which invalidates the blocks on the page.
//!
//! Behind each table sits a small fully associative victim TLB that catches
//! conflict misses before a page walk.

/// log2 of the guest page size.
pub const PAGE_BITS: u32 = 12;
/// The guest page size.
pub const PAGE_SIZE: u64 = 1 << PAGE_BITS;
/// Mask of the page-aligned part of an address.
pub const PAGE_MASK: u64 = !(PAGE_SIZE - 1);
/// Entries per table.
pub const TLB_ENTRIES: usize = 256;
/// Entries in the victim TLB.
pub const VICTIM_ENTRIES: usize = 8;

/// No entry or no permission.
pub const TLB_INVALID: u64 = 1 << 0;
/// Accesses go through dispatch.
pub const TLB_MMIO: u64 = 1 << 1;
/// Stores must invalidate translated code on the page.
pub const TLB_NOTDIRTY: u64 = 1 << 2;

/// One TLB entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    pub addr_read: u64,
    pub addr_write: u64,
    pub addr_code: u64,
    /// Host address = guest virtual address + `addend` (wrapping), for RAM.
    pub addend: usize,
    /// The guest physical address of the page.
    pub paddr: u64,
}

impl TlbEntry {
    /// An entry that matches nothing.
    pub const EMPTY: TlbEntry = TlbEntry {
        addr_read: u64::MAX,
        addr_write: u64::MAX,
        addr_code: u64::MAX,
        addend: 0,
        paddr: 0,
    };

    /// The page this entry maps, whatever its permissions.
    pub fn vpage(&self) -> Option<u64> {
        [self.addr_read, self.addr_write, self.addr_code]
            .into_iter()
            .find(|c| *c != u64::MAX)
            .map(|c| c & PAGE_MASK)
    }
}

/// Hit and miss counters, for `--timings` and the benchmark notes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// Slow-path lookups answered by the victim TLB.
    pub victim_hits: u64,
    /// Page walks (misses in both levels).
    pub fills: u64,
    /// Whole-TLB flushes.
    pub full_flushes: u64,
    /// Single-page flushes.
    pub page_flushes: u64,
}

/// The TLB of one MMU mode.
pub struct ModeTlb {
    pub table: Box<[TlbEntry; TLB_ENTRIES]>,
    victim: [TlbEntry; VICTIM_ENTRIES],
    victim_next: usize,
    /// A range covering every superpage mapping entered since the last full
    /// flush (QEMU's `large_page_addr/mask`): a page flush inside it flushes
    /// everything, because one superpage PTE filled many entries.
    large_addr: u64,
    large_mask: u64,
    has_large: bool,
}

impl Default for ModeTlb {
    fn default() -> Self {
        ModeTlb {
            table: Box::new([TlbEntry::EMPTY; TLB_ENTRIES]),
            victim: [TlbEntry::EMPTY; VICTIM_ENTRIES],
            victim_next: 0,
            large_addr: 0,
            large_mask: 0,
            has_large: false,
        }
    }
}

/// The table index of a virtual address.
#[inline(always)]
pub fn tlb_index(vaddr: u64) -> usize {
    (vaddr >> PAGE_BITS) as usize & (TLB_ENTRIES - 1)
}

/// Which comparator an access uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessType {
    Read,
    Write,
    Fetch,
}

impl AccessType {
    #[inline(always)]
    pub fn comparator(self, e: &TlbEntry) -> u64 {
        match self {
            AccessType::Read => e.addr_read,
            AccessType::Write => e.addr_write,
            AccessType::Fetch => e.addr_code,
        }
    }
}

impl ModeTlb {
    fn flush_all(&mut self) {
        self.table.fill(TlbEntry::EMPTY);
        self.victim = [TlbEntry::EMPTY; VICTIM_ENTRIES];
        self.has_large = false;
    }

    /// Looks `vaddr` up in the victim TLB; on a hit swaps the entry into the
    /// main table (as QEMU's `victim_tlb_hit` does) and returns true.
    pub fn victim_lookup(&mut self, vaddr: u64, access: AccessType) -> bool {
        let page = vaddr & PAGE_MASK;
        let idx = tlb_index(vaddr);
        for i in 0..VICTIM_ENTRIES {
            let cmp = access.comparator(&self.victim[i]);
            if cmp & !(TLB_MMIO | TLB_NOTDIRTY) == page && cmp & TLB_INVALID == 0 {
                std::mem::swap(&mut self.victim[i], &mut self.table[idx]);
                return true;
            }
        }
        false
    }

    /// Installs an entry for `vaddr`, moving the displaced one to the
    /// victim TLB. `page_size` is the size of the PTE's mapping.
    pub fn insert(&mut self, vaddr: u64, entry: TlbEntry, page_size: u64) {
        let idx = tlb_index(vaddr);
        let old = self.table[idx];
        if old.vpage().is_some() && old.vpage() != Some(vaddr & PAGE_MASK) {
            self.victim[self.victim_next] = old;
            self.victim_next = (self.victim_next + 1) % VICTIM_ENTRIES;
        }
        self.table[idx] = entry;
        if page_size > PAGE_SIZE {
            let base = vaddr & !(page_size - 1);
            if !self.has_large {
                self.large_addr = base;
                self.large_mask = !(page_size - 1);
                self.has_large = true;
            } else {
                // Widen the mask until it covers both ranges.
                let mut mask = self.large_mask & !(page_size - 1);
                while (self.large_addr ^ base) & mask != 0 {
                    mask <<= 1;
                }
                self.large_mask = mask;
                self.large_addr &= mask;
            }
        }
    }

    fn flush_page(&mut self, vaddr: u64) -> bool {
        if self.has_large && vaddr & self.large_mask == self.large_addr {
            self.flush_all();
            return true;
        }
        let page = vaddr & PAGE_MASK;
        let idx = tlb_index(vaddr);
        if self.table[idx].vpage() == Some(page) {
            self.table[idx] = TlbEntry::EMPTY;
        }
        for v in self.victim.iter_mut() {
            if v.vpage() == Some(page) {
                *v = TlbEntry::EMPTY;
            }
        }
        false
    }

    /// Drops the fast-write permission of entries mapping physical page
    /// `ppage`, so the next store there takes the slow path.
    fn protect_code_page(&mut self, ppage: u64) {
        for e in self.table.iter_mut().chain(self.victim.iter_mut()) {
            if e.paddr == ppage && e.addr_write & TLB_INVALID == 0 {
                e.addr_write |= TLB_NOTDIRTY;
            }
        }
    }
}

/// All MMU modes of one hart.
pub struct SoftTlb {
    pub modes: Vec<ModeTlb>,
    pub stats: TlbStats,
}

impl SoftTlb {
    pub fn new(modes: usize) -> SoftTlb {
        SoftTlb {
            modes: (0..modes).map(|_| ModeTlb::default()).collect(),
            stats: TlbStats::default(),
        }
    }

    /// Flushes every mode.
    pub fn flush_all(&mut self) {
        self.stats.full_flushes += 1;
        for m in &mut self.modes {
            m.flush_all();
        }
    }

    /// Flushes the page holding `vaddr` in every mode.
    pub fn flush_page(&mut self, vaddr: u64) {
        self.stats.page_flushes += 1;
        for m in &mut self.modes {
            if m.flush_page(vaddr) {
                self.stats.full_flushes += 1;
            }
        }
    }

    /// See [`ModeTlb::protect_code_page`].
    pub fn protect_code_page(&mut self, ppage: u64) {
        for m in &mut self.modes {
            m.protect_code_page(ppage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vpage: u64, paddr: u64) -> TlbEntry {
        TlbEntry {
            addr_read: vpage,
            addr_write: vpage,
            addr_code: TLB_INVALID | vpage,
            addend: 0,
            paddr,
        }
    }

    #[test]
    fn conflicting_entries_move_to_the_victim_tlb() {
        let mut t = ModeTlb::default();
        let a = 0x1000;
        let b = a + (TLB_ENTRIES as u64) * PAGE_SIZE;
        t.insert(a, entry(a, 0x8000_0000), PAGE_SIZE);
        t.insert(b, entry(b, 0x8000_1000), PAGE_SIZE);
        assert_eq!(t.table[tlb_index(a)].addr_read, b);
        assert!(t.victim_lookup(a, AccessType::Read));
        assert_eq!(t.table[tlb_index(a)].addr_read, a);
        assert!(!t.victim_lookup(a, AccessType::Fetch), "no code permission");
        assert!(t.victim_lookup(b, AccessType::Write));
    }

    #[test]
    fn page_flush_removes_only_that_page_unless_inside_a_superpage() {
        let mut tlb = SoftTlb::new(1);
        tlb.modes[0].insert(0x1000, entry(0x1000, 0), PAGE_SIZE);
        tlb.modes[0].insert(0x2000, entry(0x2000, 0), PAGE_SIZE);
        tlb.flush_page(0x1234);
        assert_eq!(tlb.modes[0].table[1], TlbEntry::EMPTY);
        assert_eq!(tlb.modes[0].table[2].addr_read, 0x2000);
        // A 2 MiB superpage at 0x4000_0000: flushing any address in it
        // flushes everything.
        tlb.modes[0].insert(0x4000_3000, entry(0x4000_3000, 0), 2 << 20);
        tlb.flush_page(0x401f_f000);
        assert_eq!(tlb.modes[0].table[2], TlbEntry::EMPTY);
        assert_eq!(tlb.stats.full_flushes, 1);
    }

    #[test]
    fn protecting_a_code_page_forces_the_store_slow_path() {
        let mut tlb = SoftTlb::new(2);
        tlb.modes[1].insert(0x5000, entry(0x5000, 0x8000_5000), PAGE_SIZE);
        tlb.protect_code_page(0x8000_5000);
        let e = tlb.modes[1].table[5];
        assert_ne!(e.addr_write, 0x5000);
        assert_eq!(e.addr_write & PAGE_MASK, 0x5000);
        assert_eq!(e.addr_read, 0x5000, "loads stay fast");
    }
}
