//! Guest memory access for the riscv64 hart: Sv39/Sv48 page walks, TLB
//! fills from the page walk plus the `memory` FlatView, and the load/store
//! fast and slow paths.
//!
//! Host pointers only ever come from RAM ranges of `Hart::view`, which the
//! hart keeps alive until it flushes its TLB, so a TLB entry can never point
//! at unmapped host memory; and an entry covers exactly one guest page of
//! one flat range, so `vaddr + addend` stays inside that RAM block.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::accel::tcg::tlb::{
    tlb_index, AccessType, TlbEntry, PAGE_MASK, PAGE_SIZE, TLB_INVALID, TLB_MMIO, TLB_NOTDIRTY,
};
use crate::memory::{MemTxResult, RegionKind};

use super::hart::{cause, Exception, Hart, MMU_SUPER_SUM, MMU_USER, SSTATUS_MXR};

const PTE_V: u64 = 1 << 0;
const PTE_R: u64 = 1 << 1;
const PTE_W: u64 = 1 << 2;
const PTE_X: u64 = 1 << 3;
const PTE_U: u64 = 1 << 4;
const PTE_A: u64 = 1 << 6;
const PTE_D: u64 = 1 << 7;
/// PPN field of a PTE (bits 53:10).
const PTE_PPN_MASK: u64 = ((1 << 44) - 1) << 10;
/// Bits 63:54: PBMT and Svnapot are not implemented, reserved bits must be 0.
const PTE_RESERVED: u64 = !((1 << 54) - 1);

/// What a page walk found.
#[derive(Clone, Copy, Debug)]
pub(super) struct Translation {
    /// Physical address of the 4 KiB page holding the address.
    pub ppage: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// Size of the mapping (4 KiB, 2 MiB, 1 GiB, 512 GiB).
    pub size: u64,
}

fn page_fault(access: AccessType, vaddr: u64) -> Exception {
    let c = match access {
        AccessType::Read => cause::LOAD_PAGE,
        AccessType::Write => cause::STORE_PAGE,
        AccessType::Fetch => cause::FETCH_PAGE,
    };
    Exception::new(c, vaddr)
}

fn access_fault(access: AccessType, vaddr: u64) -> Exception {
    let c = match access {
        AccessType::Read => cause::LOAD_ACCESS,
        AccessType::Write => cause::STORE_ACCESS,
        AccessType::Fetch => cause::FETCH_ACCESS,
    };
    Exception::new(c, vaddr)
}

/// Reads `N` bytes of host memory little-endian.
///
/// # Safety
/// `host` must point to `N` readable bytes of a live guest RAM block.
#[inline(always)]
unsafe fn host_read<const N: usize>(host: *const u8) -> u64 {
    // Aligned accesses are atomic (relaxed) so that harts racing on guest
    // memory, as guest programs legitimately do, are not a data race on the
    // host side; on x86_64 these are plain moves.
    // SAFETY (for every arm): the caller guarantees `N` valid bytes at
    // `host`; the alignment check makes the atomic casts valid.
    unsafe {
        if (host as usize) % N == 0 {
            match N {
                1 => (*host.cast::<AtomicU8>()).load(Ordering::Relaxed) as u64,
                2 => (*host.cast::<AtomicU16>()).load(Ordering::Relaxed) as u64,
                4 => (*host.cast::<AtomicU32>()).load(Ordering::Relaxed) as u64,
                _ => (*host.cast::<AtomicU64>()).load(Ordering::Relaxed),
            }
        } else {
            let mut buf = [0u8; 8];
            std::ptr::copy_nonoverlapping(host, buf.as_mut_ptr(), N);
            u64::from_le_bytes(buf)
        }
    }
}

/// Writes the low `N` bytes of `value` to host memory.
///
/// # Safety
/// `host` must point to `N` writable bytes of a live guest RAM block.
#[inline(always)]
unsafe fn host_write<const N: usize>(host: *mut u8, value: u64) {
    // SAFETY: as in `host_read`.
    unsafe {
        if (host as usize) % N == 0 {
            match N {
                1 => (*host.cast::<AtomicU8>()).store(value as u8, Ordering::Relaxed),
                2 => (*host.cast::<AtomicU16>()).store(value as u16, Ordering::Relaxed),
                4 => (*host.cast::<AtomicU32>()).store(value as u32, Ordering::Relaxed),
                _ => (*host.cast::<AtomicU64>()).store(value, Ordering::Relaxed),
            }
        } else {
            let buf = value.to_le_bytes();
            std::ptr::copy_nonoverlapping(buf.as_ptr(), host, N);
        }
    }
}

/// Where a physical address lives, for the page walker and atomics.
enum PhysTarget {
    /// Host pointer to the byte, and whether it may be written.
    Host(*mut u8, bool),
    Mmio,
    Unassigned,
}

impl Hart {
    /// Resolves a physical address in the hart's view. `len` bytes from
    /// `paddr` must lie in one range for a host pointer to be returned.
    fn phys_target(&self, paddr: u64, len: u64) -> PhysTarget {
        let Some(range) = self.view.lookup(paddr) else {
            return PhysTarget::Unassigned;
        };
        if !range.contains(paddr.saturating_add(len - 1)) {
            return PhysTarget::Mmio;
        }
        let direct = match range.kind {
            RegionKind::Ram | RegionKind::Rom => true,
            RegionKind::Romd => range.romd_mode,
            _ => false,
        };
        match (direct, range.backing.ram()) {
            (true, Some(ram)) => {
                let offset = range.offset_in_region + (paddr - range.start);
                if offset.saturating_add(len) > ram.size() {
                    return PhysTarget::Mmio;
                }
                let writable = range.kind == RegionKind::Ram && !range.readonly;
                // The offset is inside the block, checked above.
                PhysTarget::Host(ram.host_address().wrapping_add(offset as usize), writable)
            }
            _ => PhysTarget::Mmio,
        }
    }

    /// Reads a PTE; page tables must be in RAM.
    fn read_pte(&self, addr: u64) -> Option<(u64, *mut u8)> {
        match self.phys_target(addr, 8) {
            PhysTarget::Host(p, true) if addr % 8 == 0 => {
                // SAFETY: 8 bytes of live RAM, checked by `phys_target`.
                Some((unsafe { host_read::<8>(p) }, p))
            }
            _ => None,
        }
    }

    /// The Sv39/Sv48 walk, setting A (and D for stores) atomically.
    pub(super) fn translate(
        &mut self,
        vaddr: u64,
        access: AccessType,
        mmu_idx: usize,
    ) -> Result<Translation, Exception> {
        let mode = self.satp >> 60;
        if mode == 0 {
            return Ok(Translation {
                ppage: vaddr & PAGE_MASK,
                read: true,
                write: true,
                exec: true,
                size: PAGE_SIZE,
            });
        }
        let levels: u32 = if mode == 9 { 4 } else { 3 };
        let va_bits = 12 + 9 * levels;
        let shift = 64 - va_bits;
        if (((vaddr << shift) as i64) >> shift) as u64 != vaddr {
            return Err(page_fault(access, vaddr));
        }
        let root = (self.satp & ((1 << 44) - 1)) << 12;
        'walk: loop {
            let mut table = root;
            for level in (0..levels).rev() {
                let vpn = (vaddr >> (12 + 9 * level)) & 0x1ff;
                let pte_addr = table + vpn * 8;
                let Some((pte, host)) = self.read_pte(pte_addr) else {
                    return Err(access_fault(access, vaddr));
                };
                if pte & PTE_V == 0 || (pte & PTE_R == 0 && pte & PTE_W != 0) {
                    return Err(page_fault(access, vaddr));
                }
                if pte & PTE_RESERVED != 0 {
                    return Err(page_fault(access, vaddr));
                }
                let ppn = (pte & PTE_PPN_MASK) >> 10;
                if pte & (PTE_R | PTE_X) == 0 {
                    if pte & (PTE_A | PTE_D | PTE_U) != 0 {
                        return Err(page_fault(access, vaddr));
                    }
                    table = ppn << 12;
                    continue;
                }
                // A leaf.
                let user_page = pte & PTE_U != 0;
                let allowed_mode = match mmu_idx {
                    MMU_USER => user_page,
                    // S-mode reaches user pages only for loads and stores
                    // with SUM, and never executes them.
                    MMU_SUPER_SUM => !user_page || access != AccessType::Fetch,
                    _ => !user_page,
                };
                let mxr = self.sstatus & SSTATUS_MXR != 0;
                let readable = pte & PTE_R != 0 || (mxr && pte & PTE_X != 0);
                let ok = allowed_mode
                    && match access {
                        AccessType::Read => readable,
                        AccessType::Write => pte & PTE_W != 0,
                        AccessType::Fetch => pte & PTE_X != 0,
                    };
                if !ok {
                    return Err(page_fault(access, vaddr));
                }
                let low_ppn_bits = 9 * level;
                if ppn & ((1 << low_ppn_bits) - 1) != 0 {
                    // A misaligned superpage.
                    return Err(page_fault(access, vaddr));
                }
                let mut want = pte | PTE_A;
                if access == AccessType::Write {
                    want |= PTE_D;
                }
                if want != pte {
                    // SAFETY: `host` is the aligned PTE in live RAM
                    // (`read_pte` checked it).
                    let atom = unsafe { &*host.cast::<AtomicU64>() };
                    if atom
                        .compare_exchange(pte, want, Ordering::SeqCst, Ordering::SeqCst)
                        .is_err()
                    {
                        // Another hart changed the PTE: walk again.
                        continue 'walk;
                    }
                }
                let size = 1u64 << (12 + low_ppn_bits);
                let base = ppn << 12;
                let ppage = (base | (vaddr & (size - 1))) & PAGE_MASK;
                // Permissions for the TLB entry, per access type.
                let data_ok = match mmu_idx {
                    MMU_USER => user_page,
                    MMU_SUPER_SUM => true,
                    _ => !user_page,
                };
                let exec_ok = if mmu_idx == MMU_USER {
                    user_page
                } else {
                    !user_page
                };
                return Ok(Translation {
                    ppage,
                    read: data_ok && readable,
                    // Write permission in the TLB only once D is set, so a
                    // fast-path store can never skip setting it.
                    write: data_ok && pte & PTE_W != 0 && want & PTE_D != 0,
                    exec: exec_ok && pte & PTE_X != 0,
                    size,
                });
            }
            return Err(page_fault(access, vaddr));
        }
    }

    /// Walks and installs a TLB entry for `vaddr` in the current mode.
    pub(super) fn tlb_fill(&mut self, vaddr: u64, access: AccessType) -> Result<(), Exception> {
        let mmu_idx = self.mmu_idx;
        if self.tlb.modes[mmu_idx].victim_lookup(vaddr, access) {
            self.tlb.stats.victim_hits += 1;
            return Ok(());
        }
        self.tlb.stats.fills += 1;
        let t = self.translate(vaddr, access, mmu_idx)?;
        let vpage = vaddr & PAGE_MASK;
        let mut entry = TlbEntry {
            addr_read: vpage,
            addr_write: vpage,
            addr_code: vpage,
            addend: 0,
            paddr: t.ppage,
        };
        match self.phys_target(t.ppage, PAGE_SIZE) {
            PhysTarget::Host(host, writable) => {
                entry.addend = (host as usize).wrapping_sub(vpage as usize);
                if !writable {
                    // ROM: writes are dropped by dispatch.
                    entry.addr_write |= TLB_MMIO;
                } else if self.sys.code.has_code(t.ppage) {
                    entry.addr_write |= TLB_NOTDIRTY;
                }
            }
            PhysTarget::Mmio => {
                entry.addr_read |= TLB_MMIO;
                entry.addr_write |= TLB_MMIO;
                entry.addr_code |= TLB_MMIO;
            }
            PhysTarget::Unassigned => return Err(access_fault(access, vaddr)),
        }
        if !t.read {
            entry.addr_read = u64::MAX;
        }
        if !t.write {
            entry.addr_write = u64::MAX;
        }
        if !t.exec {
            entry.addr_code = u64::MAX;
        }
        self.tlb.modes[mmu_idx].insert(vaddr, entry, t.size);
        Ok(())
    }

    /// The current mode's entry for `vaddr` after making sure it permits
    /// `access` (filling it if needed).
    fn entry_for(&mut self, vaddr: u64, access: AccessType) -> Result<TlbEntry, Exception> {
        let vpage = vaddr & PAGE_MASK;
        let e = self.tlb.modes[self.mmu_idx].table[tlb_index(vaddr)];
        let cmp = access.comparator(&e);
        if cmp & TLB_INVALID == 0 && cmp & PAGE_MASK == vpage {
            return Ok(e);
        }
        self.tlb_fill(vaddr, access)?;
        let e = self.tlb.modes[self.mmu_idx].table[tlb_index(vaddr)];
        let cmp = access.comparator(&e);
        if cmp & TLB_INVALID == 0 && cmp & PAGE_MASK == vpage {
            Ok(e)
        } else {
            // The walk succeeded for this access, so this cannot happen; a
            // fault is the safe answer anyway.
            Err(page_fault(access, vaddr))
        }
    }

    // ------------------------------------------------------------ loads

    /// Loads `N` bytes (zero-extended).
    #[inline(always)]
    pub(super) fn load<const N: usize>(&mut self, vaddr: u64) -> Result<u64, Exception> {
        let e = &self.tlb.modes[self.mmu_idx].table[tlb_index(vaddr)];
        if e.addr_read == vaddr & PAGE_MASK && (vaddr & !PAGE_MASK) <= PAGE_SIZE - N as u64 {
            let host = (vaddr as usize).wrapping_add(e.addend) as *const u8;
            // SAFETY: a read comparator without flags is only installed for
            // a RAM/ROM page of the held view, and the bounds check keeps
            // all N bytes inside that page.
            return Ok(unsafe { host_read::<N>(host) });
        }
        self.load_slow(vaddr, N)
    }

    #[inline(never)]
    fn load_slow(&mut self, vaddr: u64, size: usize) -> Result<u64, Exception> {
        if (vaddr & !PAGE_MASK) + size as u64 > PAGE_SIZE {
            // Crosses a page: byte by byte (misaligned accesses are
            // performed, as hardware may).
            let mut v = 0u64;
            for i in 0..size {
                v |= self.load::<1>(vaddr.wrapping_add(i as u64))? << (8 * i);
            }
            return Ok(v);
        }
        let e = self.entry_for(vaddr, AccessType::Read)?;
        if e.addr_read & TLB_MMIO != 0 {
            self.stats.mmio += 1;
            let paddr = e.paddr | (vaddr & !PAGE_MASK);
            let (value, res) = self.sys.memory.read(paddr, size as u32);
            return match res {
                MemTxResult::Ok => Ok(value),
                _ => Err(Exception::new(cause::LOAD_ACCESS, vaddr)),
            };
        }
        let host = (vaddr as usize).wrapping_add(e.addend) as *const u8;
        // SAFETY: as in `load`: a RAM page of the held view, in bounds.
        Ok(unsafe {
            match size {
                1 => host_read::<1>(host),
                2 => host_read::<2>(host),
                4 => host_read::<4>(host),
                _ => host_read::<8>(host),
            }
        })
    }

    // ----------------------------------------------------------- stores

    /// Stores the low `N` bytes of `value`.
    #[inline(always)]
    pub(super) fn store<const N: usize>(
        &mut self,
        vaddr: u64,
        value: u64,
    ) -> Result<(), Exception> {
        let e = &self.tlb.modes[self.mmu_idx].table[tlb_index(vaddr)];
        if e.addr_write == vaddr & PAGE_MASK && (vaddr & !PAGE_MASK) <= PAGE_SIZE - N as u64 {
            let host = (vaddr as usize).wrapping_add(e.addend) as *mut u8;
            // SAFETY: a write comparator without flags is only installed
            // for a writable RAM page of the held view; in bounds.
            unsafe { host_write::<N>(host, value) };
            return Ok(());
        }
        self.store_slow(vaddr, N, value)
    }

    #[inline(never)]
    fn store_slow(&mut self, vaddr: u64, size: usize, value: u64) -> Result<(), Exception> {
        if (vaddr & !PAGE_MASK) + size as u64 > PAGE_SIZE {
            // Check both pages before writing anything, so a fault on the
            // second leaves memory unchanged.
            self.entry_for(vaddr, AccessType::Write)?;
            self.entry_for(vaddr.wrapping_add(size as u64 - 1), AccessType::Write)?;
            for i in 0..size {
                self.store::<1>(vaddr.wrapping_add(i as u64), value >> (8 * i))?;
            }
            return Ok(());
        }
        let e = self.entry_for(vaddr, AccessType::Write)?;
        let paddr = e.paddr | (vaddr & !PAGE_MASK);
        if e.addr_write & TLB_MMIO != 0 {
            self.stats.mmio += 1;
            return match self.sys.memory.write(paddr, size as u32, value) {
                MemTxResult::Ok => Ok(()),
                _ => Err(Exception::new(cause::STORE_ACCESS, vaddr)),
            };
        }
        if e.addr_write & TLB_NOTDIRTY != 0 {
            self.code_page_written(vaddr, e.paddr);
        }
        let host = (vaddr as usize).wrapping_add(e.addend) as *mut u8;
        // SAFETY: a writable RAM page of the held view, in bounds.
        unsafe {
            match size {
                1 => host_write::<1>(host, value),
                2 => host_write::<2>(host, value),
                4 => host_write::<4>(host, value),
                _ => host_write::<8>(host, value),
            }
        }
        Ok(())
    }

    /// A store is about to hit physical page `ppage`, which holds
    /// translated code: every block decoded from it becomes stale, and the
    /// current mode's entry for `vaddr` loses its not-dirty flag so the
    /// following stores take the fast path again.
    fn code_page_written(&mut self, vaddr: u64, ppage: u64) {
        self.stats.smc_invalidations += 1;
        self.sys.code.invalidate(ppage);
        // The running block may be one of those made stale: stop
        // self-chaining it (exec.rs) and look the next block up afresh.
        self.check = true;
        let idx = tlb_index(vaddr);
        self.tlb.modes[self.mmu_idx].table[idx].addr_write &= !TLB_NOTDIRTY;
    }

    // ---------------------------------------------------------- atomics

    /// The host address of an aligned atomic access of `size` bytes, which
    /// must be writable RAM. Misaligned atomics fault (cause 4/6), device
    /// memory gives an access fault.
    pub(super) fn atomic_host(
        &mut self,
        vaddr: u64,
        size: u64,
        is_lr: bool,
    ) -> Result<(*mut u8, u64), Exception> {
        if vaddr % size != 0 {
            let c = if is_lr {
                cause::LOAD_MISALIGNED
            } else {
                cause::STORE_MISALIGNED
            };
            return Err(Exception::new(c, vaddr));
        }
        // LR only needs read permission; SC and AMOs need write.
        let access = if is_lr {
            AccessType::Read
        } else {
            AccessType::Write
        };
        let e = self.entry_for(vaddr, access)?;
        let cmp = access.comparator(&e);
        if cmp & TLB_MMIO != 0 {
            let c = if is_lr {
                cause::LOAD_ACCESS
            } else {
                cause::STORE_ACCESS
            };
            return Err(Exception::new(c, vaddr));
        }
        let paddr = e.paddr | (vaddr & !PAGE_MASK);
        if cmp & TLB_NOTDIRTY != 0 {
            self.code_page_written(vaddr, e.paddr);
        }
        Ok(((vaddr as usize).wrapping_add(e.addend) as *mut u8, paddr))
    }

    // ------------------------------------------------------------ fetch

    /// The physical address and host pointer of the page holding `vaddr`
    /// for instruction fetch.
    pub(super) fn fetch_page(&mut self, vaddr: u64) -> Result<(u64, *const u8), Exception> {
        let e = self.tlb.modes[self.mmu_idx].table[tlb_index(vaddr)];
        let e = if e.addr_code == vaddr & PAGE_MASK {
            e
        } else {
            self.entry_for(vaddr, AccessType::Fetch)?
        };
        if e.addr_code & TLB_MMIO != 0 {
            // Executing from a device is not supported.
            return Err(Exception::new(cause::FETCH_ACCESS, vaddr));
        }
        let host = ((vaddr & PAGE_MASK) as usize).wrapping_add(e.addend) as *const u8;
        Ok((e.paddr, host))
    }

    /// Whether a hart could start fetching at physical `paddr`: a 2-byte
    /// aligned address in a page of RAM or ROM (what `fetch_page` maps),
    /// for HSM `hart_start`.
    pub(super) fn can_execute_phys(&self, paddr: u64) -> bool {
        paddr & 1 == 0
            && matches!(
                self.phys_target(paddr & PAGE_MASK, PAGE_SIZE),
                PhysTarget::Host(..)
            )
    }

    /// Reads guest-physical memory for the SBI (DBCN buffers).
    pub(super) fn read_phys(&self, paddr: u64, buf: &mut [u8]) -> bool {
        matches!(self.sys.memory.read_buf(paddr, buf), MemTxResult::Ok)
    }
}
