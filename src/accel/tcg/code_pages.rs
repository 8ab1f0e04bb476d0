//! Which guest-physical RAM pages hold translated code, and a generation
//! number per page that changes whenever code on the page may have changed.
//!
//! Shared by all harts. A translated block records the generation of the
//! page(s) it was decoded from; a hart checks it (one relaxed atomic load)
//! before running a cached block, so a stale block is never executed after
//! its page was written through the slow path. Stores reach the slow path
//! because TLB entries for pages marked here carry `TLB_NOTDIRTY`.
//!
//! Generations are 63-bit counters, so they never come back to a value a
//! cached block recorded: each increment is one slow-path store into a
//! code page (a TLB fill, a page walk or at least a dispatch through
//! `code_page_written`), far slower than 1 ns, and 2^63 ns is 292 years.
//! (A 31-bit counter wrapped after 2^31 stores into one page, about a
//! minute of a guest hammering it, and made an old block valid again.)

use std::sync::atomic::{AtomicU64, Ordering};

use crate::memory::{FlatView, RegionKind};

use super::tlb::{PAGE_BITS, PAGE_MASK};

/// Set in a page's word while it holds translated code.
const HAS_CODE: u64 = 1 << 63;

struct Range {
    start: u64,
    pages: Box<[AtomicU64]>,
}

/// Per-page code flags and generations for the RAM of a view.
pub struct CodePages {
    ranges: Vec<Range>,
}

impl CodePages {
    /// Tracks every RAM range of `view`. Code outside them (ROM, or RAM
    /// added after start-up) is still cached but only invalidated by
    /// `fence.i` and topology changes.
    pub fn new(view: &FlatView) -> CodePages {
        let mut ranges = Vec::new();
        for r in view.ranges() {
            if r.kind == RegionKind::Ram && !r.readonly {
                let start = r.start & PAGE_MASK;
                let end = r.end().min(u64::MAX as u128) as u64;
                let count = (end.saturating_sub(start)).div_ceil(1 << PAGE_BITS) as usize;
                ranges.push(Range {
                    start,
                    pages: (0..count).map(|_| AtomicU64::new(0)).collect(),
                });
            }
        }
        CodePages { ranges }
    }

    #[inline]
    fn slot(&self, paddr: u64) -> Option<&AtomicU64> {
        // Machines have one RAM range almost always: check it first
        // without the iterator.
        if let Some(first) = self.ranges.first() {
            if let Some(index) = paddr.checked_sub(first.start) {
                if let Some(s) = first.pages.get((index >> PAGE_BITS) as usize) {
                    return Some(s);
                }
            }
        }
        self.ranges.iter().skip(1).find_map(|r| {
            let index = paddr.checked_sub(r.start)? >> PAGE_BITS;
            r.pages.get(usize::try_from(index).ok()?)
        })
    }

    /// The page's generation (0 for untracked pages).
    #[inline]
    pub fn generation(&self, paddr: u64) -> u64 {
        self.slot(paddr)
            .map_or(0, |s| s.load(Ordering::Acquire) & !HAS_CODE)
    }

    /// Marks the page as holding code; returns its generation.
    pub fn mark_code(&self, paddr: u64) -> u64 {
        match self.slot(paddr) {
            Some(s) => s.fetch_or(HAS_CODE, Ordering::AcqRel) & !HAS_CODE,
            None => 0,
        }
    }

    /// Whether stores to the page must invalidate code.
    #[inline]
    pub fn has_code(&self, paddr: u64) -> bool {
        self.slot(paddr)
            .is_some_and(|s| s.load(Ordering::Acquire) & HAS_CODE != 0)
    }

    /// A store hit a code page: every block decoded from it is stale. The
    /// code flag is cleared so stores go fast again until the page is
    /// translated anew.
    pub fn invalidate(&self, paddr: u64) {
        if let Some(s) = self.slot(paddr) {
            // `fetch_update` never fails with a closure that always
            // returns `Some`. The counter stays below 2^63 (see the module
            // comment), so the mask only drops the code flag.
            let _ = s.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(((v & !HAS_CODE) + 1) & !HAS_CODE)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryTree, Unassigned};

    #[test]
    fn generations_change_on_invalidate_only() {
        let mut tree = MemoryTree::new();
        let root = tree.new_container("system", 1 << 40).unwrap();
        let ram = tree.new_ram("ram", 0x10000).unwrap();
        tree.add_subregion(root, 0x8000_0000, ram).unwrap();
        let space = tree
            .add_address_space("memory", root, Unassigned::Zero)
            .unwrap();
        let pages = CodePages::new(&space.view());
        let p = 0x8000_3000;
        assert_eq!(pages.generation(p), 0);
        assert!(!pages.has_code(p));
        assert_eq!(pages.mark_code(p + 8), 0);
        assert!(pages.has_code(p));
        pages.invalidate(p + 0xff0);
        assert_eq!(pages.generation(p), 1);
        assert!(!pages.has_code(p));
        assert_eq!(pages.generation(p + 0x1000), 0, "neighbours untouched");
        assert_eq!(pages.generation(0x1000), 0, "untracked");
        pages.invalidate(0x1000);
    }

    /// Generations count on past 2^31 (where a 31-bit counter went back
    /// to a value old blocks recorded) without touching the code flag.
    #[test]
    fn generations_do_not_wrap() {
        let mut tree = MemoryTree::new();
        let root = tree.new_container("system", 1 << 40).unwrap();
        let ram = tree.new_ram("ram", 0x10000).unwrap();
        tree.add_subregion(root, 0x8000_0000, ram).unwrap();
        let space = tree
            .add_address_space("memory", root, Unassigned::Zero)
            .unwrap();
        let pages = CodePages::new(&space.view());
        let p = 0x8000_3000;
        let slot = pages.slot(p).unwrap();
        slot.store(((1u64 << 31) - 1) as _, Ordering::SeqCst);
        pages.mark_code(p);
        pages.invalidate(p);
        assert_eq!(pages.generation(p), 1 << 31);
        assert!(!pages.has_code(p));
        assert_eq!(pages.mark_code(p), 1 << 31);
        assert!(pages.has_code(p));
        pages.invalidate(p);
        assert_eq!(pages.generation(p), (1 << 31) + 1);
    }
}
