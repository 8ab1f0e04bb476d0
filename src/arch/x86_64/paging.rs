//! The identity-mapped page tables the 64-bit boot protocol needs: long
//! mode cannot run without paging, and the kernel expects its image, the
//! zero page and the command line mapped 1:1 at entry.
//!
//! Written by hand (no rust-vmm crate builds them). One PML4 entry, one
//! PDPT with [`PD_COUNT`] entries, and that many page directories of 2 MiB
//! pages: the first 4 GiB, identity-mapped, writable, supervisor-only.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDPT_START, PD_COUNT, PD_START, PML4_START};
use super::ArchError;

/// Present.
const P: u64 = 1 << 0;
/// Writable.
const RW: u64 = 1 << 1;
/// In a page directory: this entry maps a 2 MiB page.
const PS: u64 = 1 << 7;

const PAGE: usize = 0x1000;
const ENTRIES: u64 = 512;
const PAGE_2M: u64 = 2 << 20;

/// How much the tables map, from address 0.
pub const IDENTITY_MAPPED: u64 = PD_COUNT * ENTRIES * PAGE_2M;

/// Writes the tables and returns the value for CR3.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap<()>) -> Result<u64, ArchError> {
    let mut pml4 = vec![0u8; PAGE];
    pml4[..8].copy_from_slice(&(PDPT_START | P | RW).to_le_bytes());
    write(mem, "PML4", PML4_START, &pml4)?;

    let mut pdpt = vec![0u8; PAGE];
    for d in 0..PD_COUNT {
        let at = (d * 8) as usize;
        pdpt[at..at + 8].copy_from_slice(&((PD_START + d * PAGE as u64) | P | RW).to_le_bytes());
    }
    write(mem, "PDPT", PDPT_START, &pdpt)?;

    let mut pds = vec![0u8; PAGE * PD_COUNT as usize];
    for (i, slot) in pds.chunks_exact_mut(8).enumerate() {
        slot.copy_from_slice(&((i as u64 * PAGE_2M) | P | RW | PS).to_le_bytes());
    }
    write(mem, "page directories", PD_START, &pds)?;
    Ok(PML4_START)
}

fn write(
    mem: &GuestMemoryMmap<()>,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), ArchError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| ArchError::GuestMemory {
            what,
            addr,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Translates `va` the way the MMU does with 4-level paging, reading
    /// the tables from guest memory; `None` if unmapped.
    fn walk(mem: &GuestMemoryMmap<()>, cr3: u64, va: u64) -> Option<u64> {
        let entry = |table: u64, index: u64| -> u64 {
            mem.read_obj::<u64>(GuestAddress((table & !0xfff) + index * 8))
                .unwrap()
        };
        let pml4e = entry(cr3, (va >> 39) & 511);
        if pml4e & P == 0 {
            return None;
        }
        let pdpte = entry(pml4e & 0x000f_ffff_ffff_f000, (va >> 30) & 511);
        if pdpte & P == 0 {
            return None;
        }
        assert_eq!(pdpte & PS, 0, "no 1 GiB pages expected");
        let pde = entry(pdpte & 0x000f_ffff_ffff_f000, (va >> 21) & 511);
        if pde & P == 0 {
            return None;
        }
        assert_ne!(pde & PS, 0, "2 MiB pages expected");
        assert_ne!(pde & RW, 0);
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_gib_and_more_is_identity_mapped() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = write_identity_page_tables(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        for va in [
            0,
            0x7000,
            0x10_0000,
            0x1ff_ffff,
            0x200_0000,
            0x1234_5678,
            (1 << 30) - 1,
            1 << 30,
            0xbfff_f000,
            0xfee0_0000,
            (1 << 32) - 1,
        ] {
            assert_eq!(walk(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(walk(&mem, cr3, 1 << 32), None);
        assert_eq!(walk(&mem, cr3, 1 << 39), None);
        assert_eq!(IDENTITY_MAPPED, 1 << 32);
    }
}
