//! An Intel MultiProcessor Specification 1.4 table, so a Linux guest
//! without ACPI finds every CPU, the IOAPIC and the interrupt routing.
//!
//! Written by hand from the specification (no rust-vmm crate builds it).
//! The floating pointer goes in the last KiB of base memory, where Linux
//! scans for it; it points at the configuration table at the start of the
//! (reserved) EBDA. The configuration table lists:
//!
//! - one processor per vCPU, LAPIC ID = vCPU index, the first one the BSP;
//! - one ISA bus (ID 0);
//! - the IOAPIC at 0xfec0_0000 with ID `cpu_count` (after the LAPICs);
//! - I/O interrupts: ISA IRQ n → IOAPIC pin n for n in 0..24, matching
//!   KVM's default GSI routing (all 24 pins, so devices may use IRQs above
//!   15), bus-default polarity and trigger;
//! - local interrupts: ExtINT on LINT0 of the BSP and NMI on LINT1 of
//!   every LAPIC, as `lapic.rs` programs them.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    APIC_ADDR, IOAPIC_ADDR, MP_CONFIG_TABLE_MAX_SIZE, MP_CONFIG_TABLE_START,
    MP_FLOATING_POINTER_START,
};
use super::ArchError;

/// Most CPUs: LAPIC IDs 0..=253, the IOAPIC takes the next ID and 0xff
/// means "all LAPICs".
pub const MAX_CPUS: u8 = 254;
/// IOAPIC pins (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u8 = 24;

const SPEC_REV: u8 = 4; // version 1.4
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_BUS_ID: u8 = 0;

// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

// Interrupt types.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6, model 0, stepping 0: a generic P6-class signature; Linux
/// takes the real one from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1 EDX: FPU and APIC present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// All local APICs.
const ALL_LAPICS: u8 = 0xff;

/// Sizes fixed by the specification.
pub const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

// Linux scans the last KiB of base memory for the floating pointer, in
// 16-byte steps.
const _: () = assert!(MP_FLOATING_POINTER_START % 16 == 0);
const _: () = assert!(MP_FLOATING_POINTER_START >= 639 * 1024);

/// The two parts of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpTable {
    /// The 16-byte floating pointer structure.
    pub floating_pointer: [u8; FLOATING_POINTER_SIZE],
    /// The configuration table (header and entries).
    pub config_table: Vec<u8>,
}

/// Makes the bytes sum to zero, modulo 256, by setting `bytes[at]`.
fn fix_checksum(bytes: &mut [u8], at: usize) {
    bytes[at] = 0;
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    bytes[at] = sum.wrapping_neg();
}

/// Builds the table for `cpu_count` CPUs with its configuration table at
/// `config_addr`.
pub fn build_mptable(cpu_count: u8, config_addr: u32) -> Result<MpTable, ArchError> {
    if cpu_count == 0 || cpu_count > MAX_CPUS {
        return Err(ArchError::CpuCount {
            count: cpu_count,
            max: MAX_CPUS,
        });
    }
    let ioapic_id = cpu_count;
    let mut entries = Vec::with_capacity(
        usize::from(cpu_count) * PROCESSOR_ENTRY_SIZE
            + (4 + usize::from(IOAPIC_PINS)) * SMALL_ENTRY_SIZE,
    );
    let mut count: u16 = 0;

    for cpu in 0..cpu_count {
        entries.push(ENTRY_PROCESSOR);
        entries.push(cpu); // LAPIC ID
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]); // reserved
        count += 1;
    }

    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;

    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;

    for irq in 0..IOAPIC_PINS {
        // Flags 0: polarity and trigger conform to the bus (ISA: edge,
        // active high).
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_VECTORED, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, irq]);
        count += 1;
    }

    for (kind, lapic, lint) in [(INT_EXTINT, 0, 0), (INT_NMI, ALL_LAPICS, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, 0, lapic, lint]);
        count += 1;
    }

    let length = HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(length);
    table.extend_from_slice(b"PCMP");
    // At most 44 + 254 * 20 + 2 * 8 + 24 * 8 + 2 * 8 bytes: fits a u16.
    table.extend_from_slice(&(length as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, fixed below
    table.extend_from_slice(b"EMBER   "); // OEM ID, 8 bytes
    table.extend_from_slice(b"MICROVM     "); // product ID, 12 bytes
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    debug_assert_eq!(table.len(), HEADER_SIZE);
    table.extend_from_slice(&entries);
    fix_checksum(&mut table, 7);

    let mut fp = [0u8; FLOATING_POINTER_SIZE];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&config_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = SPEC_REV;
    // fp[10]: checksum. fp[11] = 0: a configuration table is present (no
    // default configuration). fp[12] = 0: no IMCR, virtual-wire mode.
    fix_checksum(&mut fp, 10);

    Ok(MpTable {
        floating_pointer: fp,
        config_table: table,
    })
}

/// Writes the MP table for `cpu_count` CPUs (1 to [`MAX_CPUS`]) into low
/// memory, in the EBDA the E820 map reserves.
pub fn setup_mptable(mem: &GuestMemoryMmap<()>, cpu_count: u8) -> Result<(), ArchError> {
    let table = build_mptable(cpu_count, MP_CONFIG_TABLE_START as u32)?;
    // Cannot fail for up to MAX_CPUS (checked by a test); guards changes.
    if table.config_table.len() as u64 > MP_CONFIG_TABLE_MAX_SIZE {
        return Err(ArchError::GuestMemory {
            what: "MP table",
            addr: MP_CONFIG_TABLE_START,
            reason: format!(
                "{} bytes do not fit in the {MP_CONFIG_TABLE_MAX_SIZE} reserved for it",
                table.config_table.len()
            ),
        });
    }
    let write = |bytes: &[u8], addr: u64| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| ArchError::GuestMemory {
                what: "MP table",
                addr,
                reason: e.to_string(),
            })
    };
    write(&table.config_table, MP_CONFIG_TABLE_START)?;
    write(&table.floating_pointer, MP_FLOATING_POINTER_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    /// Walks the configuration table's entries: (type, bytes) pairs.
    fn entries(table: &[u8]) -> Vec<(u8, &[u8])> {
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut at = HEADER_SIZE;
        let mut out = Vec::new();
        for _ in 0..count {
            let len = if table[at] == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_SIZE
            } else {
                SMALL_ENTRY_SIZE
            };
            out.push((table[at], &table[at..at + len]));
            at += len;
        }
        assert_eq!(at, table.len(), "entry count matches the length");
        out
    }

    #[test]
    fn checksums_and_processors() {
        for cpus in [1, 2, 4, 7, 64, MAX_CPUS] {
            let t = build_mptable(cpus, MP_CONFIG_TABLE_START as u32).unwrap();
            assert_eq!(sum(&t.floating_pointer), 0, "floating pointer checksum");
            assert_eq!(sum(&t.config_table), 0, "configuration table checksum");
            assert_eq!(&t.floating_pointer[..4], b"_MP_");
            assert_eq!(&t.config_table[..4], b"PCMP");
            let length = u16::from_le_bytes([t.config_table[4], t.config_table[5]]);
            assert_eq!(usize::from(length), t.config_table.len());
            assert!(t.config_table.len() as u64 <= MP_CONFIG_TABLE_MAX_SIZE);

            let e = entries(&t.config_table);
            let cpus_listed: Vec<_> = e.iter().filter(|(k, _)| *k == ENTRY_PROCESSOR).collect();
            assert_eq!(cpus_listed.len(), usize::from(cpus));
            for (i, (_, p)) in cpus_listed.iter().enumerate() {
                assert_eq!(p[1], i as u8, "LAPIC ID");
                assert_eq!(p[3] & CPU_BSP != 0, i == 0, "only CPU 0 is the BSP");
                assert_ne!(p[3] & CPU_ENABLED, 0);
            }
            let ioapic: Vec<_> = e.iter().filter(|(k, _)| *k == ENTRY_IOAPIC).collect();
            assert_eq!(ioapic.len(), 1);
            assert_eq!(ioapic[0].1[1], cpus, "IOAPIC ID after the LAPICs");
            assert_eq!(&ioapic[0].1[4..8], &0xfec0_0000u32.to_le_bytes());
            let ints: Vec<_> = e.iter().filter(|(k, _)| *k == ENTRY_IO_INTERRUPT).collect();
            assert_eq!(ints.len(), usize::from(IOAPIC_PINS));
            for (pin, (_, i)) in ints.iter().enumerate() {
                assert_eq!((i[5], i[6], i[7]), (pin as u8, cpus, pin as u8));
            }
            assert_eq!(e.iter().filter(|(k, _)| *k == ENTRY_BUS).count(), 1);
            assert_eq!(
                e.iter()
                    .filter(|(k, _)| *k == ENTRY_LOCAL_INTERRUPT)
                    .count(),
                2
            );
        }
    }

    #[test]
    fn cpu_count_is_checked() {
        for bad in [0, 255] {
            let err = build_mptable(bad, 0).unwrap_err();
            assert!(matches!(err, ArchError::CpuCount { .. }));
            assert!(err.to_string().contains("1 to 254"), "{err}");
        }
    }

    #[test]
    fn written_where_linux_looks() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, 4).unwrap();
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(MP_FLOATING_POINTER_START))
            .unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(&fp), 0);
        let addr = u32::from_le_bytes([fp[4], fp[5], fp[6], fp[7]]);
        let mut header = [0u8; HEADER_SIZE];
        mem.read_slice(&mut header, GuestAddress(u64::from(addr)))
            .unwrap();
        assert_eq!(&header[..4], b"PCMP");
        let mut table = vec![0u8; usize::from(u16::from_le_bytes([header[4], header[5]]))];
        mem.read_slice(&mut table, GuestAddress(u64::from(addr)))
            .unwrap();
        assert_eq!(sum(&table), 0);
        assert!(setup_mptable(&mem, 0).is_err());
    }
}
