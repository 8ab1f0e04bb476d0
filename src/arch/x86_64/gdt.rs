//! The boot GDT and the segment registers that match it.
//!
//! Written by hand: linux-loader and the other rust-vmm crates leave CPU
//! state to the VMM. One table serves both entries: the Linux 64-bit boot
//! protocol wants `__BOOT_CS` = 0x10 (64-bit code) and `__BOOT_DS` = 0x18
//! (flat data); PVH wants a flat 32-bit code segment (selector unspecified,
//! here 0x08) and a TSS with base 0 and limit 0x67.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{GDT_START, IDT_START};
use super::ArchError;

/// Selector of the flat 32-bit code segment (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x08;
/// Selector of the 64-bit code segment (Linux's `__BOOT_CS`).
pub const CODE64_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment (Linux's `__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x20;

/// A descriptor from its access/flags word (bits 0-7: access byte, bits
/// 12-15: G, D/B, L, AVL), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT, indexed by selector / 8.
pub const BOOT_GDT: [u64; 5] = [
    0,
    // 32-bit code: G, D, present, DPL 0, code, execute/read, accessed.
    gdt_entry(0xc09b, 0, 0xfffff),
    // 64-bit code: G, L, present, DPL 0, code, execute/read, accessed.
    gdt_entry(0xa09b, 0, 0xfffff),
    // Data: G, B, present, DPL 0, data, read/write, accessed.
    gdt_entry(0xc093, 0, 0xfffff),
    // TSS: present, busy 32/64-bit TSS, byte granular, 0x68 bytes.
    gdt_entry(0x008b, 0, 0x67),
];

/// The KVM segment register for the descriptor `entry` loaded through
/// `selector`, as the CPU would cache it.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With G set the limit counts 4 KiB pages.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The segment register for one of the `*_SELECTOR`s of [`BOOT_GDT`].
pub fn boot_segment(selector: u16) -> kvm_segment {
    segment_from_gdt(BOOT_GDT[usize::from(selector / 8)], selector)
}

/// The GDT's limit as loaded into GDTR.
pub const GDT_LIMIT: u16 = (BOOT_GDT.len() * 8 - 1) as u16;
/// An IDT of one empty gate: any exception before the kernel loads its
/// own IDT becomes a triple fault, which KVM reports as a shutdown.
pub const IDT_LIMIT: u16 = 7;

/// Writes the boot GDT and the empty IDT into guest memory.
pub fn write_gdt_and_idt(mem: &GuestMemoryMmap<()>) -> Result<(), ArchError> {
    let mut bytes = Vec::with_capacity(BOOT_GDT.len() * 8);
    for entry in BOOT_GDT {
        bytes.extend_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(GDT_START))
        .map_err(|e| ArchError::GuestMemory {
            what: "GDT",
            addr: GDT_START,
            reason: e.to_string(),
        })?;
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|e| ArchError::GuestMemory {
            what: "IDT",
            addr: IDT_START,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let code64 = boot_segment(CODE64_SELECTOR);
        assert_eq!((code64.base, code64.limit), (0, 0xffff_ffff));
        assert_eq!(
            (code64.l, code64.db, code64.type_, code64.s),
            (1, 0, 0xb, 1)
        );
        let code32 = boot_segment(CODE32_SELECTOR);
        assert_eq!((code32.l, code32.db, code32.type_), (0, 1, 0xb));
        let data = boot_segment(DATA_SELECTOR);
        assert_eq!(
            (data.type_, data.db, data.g, data.limit),
            (3, 1, 1, 0xffff_ffff)
        );
        let tss = boot_segment(TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.g, tss.limit), (0xb, 0, 0, 0x67));
        for s in [code64, code32, data, tss] {
            assert_eq!((s.present, s.dpl, s.unusable), (1, 0, 0));
        }
        // Known encodings (Firecracker's and the SDM's).
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        let odd = segment_from_gdt(gdt_entry(0x4093, 0x1234_5678, 0xabcde), 0x28);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));
    }
}
