//! ACPI tables for Linux guests (built with the acpi_tables crate): an
//! RSDP where the legacy scan finds it, an XSDT, a hardware-reduced FADT
//! whose sleep control register is Ember's power-off port, a DSDT with the
//! `_S5` sleep type, and a MADT listing every CPU's local APIC and the
//! IOAPIC. With them a guest's `poweroff` ends the VM, and kernels built
//! without MP-table support (Debian's cloud kernel) still find every CPU.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, BIOS_AREA_START, HIMEM_START, IOAPIC_ADDR, POWER_BUTTON_GSI};
use super::ArchError;
use crate::arch::virtio_mmio::VirtioMmioSlot;

/// The RSDP, 16-byte aligned inside 0xe0000..0x100000 where Linux scans
/// for it; the other tables follow it in the reserved BIOS area.
pub const RSDP_ADDR: u64 = BIOS_AREA_START;

/// The sleep control register (hardware-reduced ACPI): a byte port.
pub const SLEEP_CONTROL_PORT: u64 = 0x3c0;
/// The sleep type `_S5` declares; written with SLP_EN to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

const OEM_ID: [u8; 6] = *b"EMBER ";
const OEM_TABLE: [u8; 8] = *b"EMBERVM ";
const OEM_REVISION: u32 = 1;

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// The DSDT: `Name (_S5_, Package () { 5 })`, and under `\_SB` one
/// `LNRO0005` device per virtio-mmio transport (the ID Linux's virtio_mmio
/// driver matches), with its registers and its edge-triggered interrupt,
/// as Firecracker and QEMU's microvm describe them.
fn dsdt(virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, OEM_REVISION);
    let s5 = aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE]));
    s5.to_aml_bytes(&mut dsdt);
    let names: Vec<String> = virtio.iter().map(|s| format!("V{:03}", s.index)).collect();
    let parts: Vec<_> = virtio
        .iter()
        .map(|s| {
            (
                s.index as u32,
                aml::Memory32Fixed::new(true, s.base as u32, s.size as u32),
                aml::Interrupt::new(true, true, false, false, s.irq),
            )
        })
        .collect();
    let crs: Vec<_> = parts
        .iter()
        .map(|(_, mem, irq)| aml::ResourceTemplate::new(vec![mem, irq]))
        .collect();
    // "LNRO0005" is not a 7-character EISA id, so it goes in as a string.
    let hid_name = aml::Name::new("_HID".into(), &"LNRO0005");
    let uids: Vec<_> = parts
        .iter()
        .map(|(uid, _, _)| aml::Name::new("_UID".into(), uid))
        .collect();
    let crs_names: Vec<_> = crs
        .iter()
        .map(|c| aml::Name::new("_CRS".into(), c))
        .collect();
    let devices: Vec<_> = names
        .iter()
        .zip(uids.iter().zip(&crs_names))
        .map(|(name, (uid, crs))| aml::Device::new(name.as_str().into(), vec![&hid_name, uid, crs]))
        .collect();
    // The power button: a control-method button (PNP0C0C; the FADT says
    // there is no fixed-hardware one) notified by a Generic Event Device,
    // whose interrupt the VMM raises. Linux's acpi-ged driver runs `_EVT`,
    // the button driver turns the notification into KEY_POWER, and the
    // guest's userspace shuts down (as with Cloud Hypervisor's GED).
    let pwrb_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let uid0 = aml::Name::new("_UID".into(), &aml::ZERO);
    let pwrb = aml::Device::new("PWRB".into(), vec![&pwrb_hid, &uid0]);
    let ged_irq = aml::Interrupt::new(true, true, false, false, POWER_BUTTON_GSI);
    let ged_crs_template = aml::ResourceTemplate::new(vec![&ged_irq]);
    let ged_crs = aml::Name::new("_CRS".into(), &ged_crs_template);
    let ged_hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let pwrb_path = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&pwrb_path, &0x80u8);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&notify]);
    let ged = aml::Device::new("GED0".into(), vec![&ged_hid, &uid0, &ged_crs, &evt]);
    let mut children: Vec<&dyn Aml> = vec![&pwrb, &ged];
    children.extend(devices.iter().map(|d| d as &dyn Aml));
    aml::Scope::new("_SB_".into(), children).to_aml_bytes(&mut dsdt);
    dsdt.update_checksum();
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.sleep_control_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        SLEEP_CONTROL_PORT,
    );
    fadt.sleep_status_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        SLEEP_CONTROL_PORT + 1,
    );
    bytes(&fadt.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDR as u32),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, IOAPIC_ADDR as u32, 0));
    bytes(&madt)
}

/// The tables for `cpus` CPUs, laid out from `RSDP_ADDR`: returns the
/// bytes to write there.
pub fn build(cpus: u8, virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    let align = |n: usize| n.next_multiple_of(16);
    let rsdp_len = align(36);
    let dsdt = dsdt(virtio);
    let dsdt_addr = RSDP_ADDR + rsdp_len as u64;
    let fadt_addr = dsdt_addr + align(dsdt.len()) as u64;
    let fadt = fadt(dsdt_addr);
    let madt_addr = fadt_addr + align(fadt.len()) as u64;
    let madt = madt(cpus);
    let xsdt_addr = madt_addr + align(madt.len()) as u64;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let mut out = vec![0u8; (xsdt_addr - RSDP_ADDR) as usize + xsdt.len()];
    let mut put = |addr: u64, data: &[u8]| {
        let at = (addr - RSDP_ADDR) as usize;
        out[at..at + data.len()].copy_from_slice(data);
    };
    put(RSDP_ADDR, &rsdp);
    put(dsdt_addr, &dsdt);
    put(fadt_addr, &fadt);
    put(madt_addr, &madt);
    put(xsdt_addr, &xsdt);
    out
}

/// Writes the tables into guest memory (the reserved BIOS area).
pub fn setup_acpi(
    mem: &GuestMemoryMmap<()>,
    cpus: u8,
    virtio: &[VirtioMmioSlot],
) -> Result<GuestAddress, ArchError> {
    let tables = build(cpus, virtio);
    if RSDP_ADDR + tables.len() as u64 > HIMEM_START {
        return Err(ArchError::GuestMemory {
            what: "ACPI tables",
            addr: RSDP_ADDR,
            reason: format!(
                "ACPI tables of {} bytes do not fit below 1 MiB",
                tables.len()
            ),
        });
    }
    mem.write_slice(&tables, GuestAddress(RSDP_ADDR))
        .map_err(|e| ArchError::GuestMemory {
            what: "ACPI tables",
            addr: RSDP_ADDR,
            reason: e.to_string(),
        })?;
    Ok(GuestAddress(RSDP_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::VIRTIO_MMIO_WINDOW;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Follows RSDP -> XSDT -> tables as a guest would, checking every
    /// signature and checksum.
    #[test]
    fn tables_link_up_with_valid_checksums() {
        let cpus = 3;
        let t = build(cpus, &[]);
        let table = |addr: u64| -> &[u8] {
            let at = (addr - RSDP_ADDR) as usize;
            let len = u32_at(&t, at + 4) as usize;
            let b = &t[at..at + len];
            assert_eq!(sum(b), 0, "checksum of {:?}", std::str::from_utf8(&b[..4]));
            b
        };
        assert_eq!(&t[..8], b"RSD PTR ");
        assert_eq!(sum(&t[..20]), 0);
        assert_eq!(sum(&t[..36]), 0);
        let xsdt = table(u64_at(&t, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|at| u64_at(xsdt, at))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(entries[0]);
        assert_eq!(&fadt[..4], b"FACP");
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "hardware-reduced");
        // Sleep control register: SystemIO at the power-off port.
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(fadt, 248), SLEEP_CONTROL_PORT);
        let dsdt = table(u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        let body = &dsdt[36..];
        assert!(body.windows(4).any(|w| w == b"_S5_"));
        let madt = table(entries[1]);
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(u32_at(madt, 36), APIC_ADDR as u32);
        let (mut at, mut lapics, mut ioapics) = (44, 0, 0);
        while at < madt.len() {
            match madt[at] {
                0 => {
                    assert_eq!(madt[at + 3], lapics, "APIC IDs in order");
                    lapics += 1;
                }
                1 => ioapics += 1,
                other => panic!("unexpected MADT entry {other}"),
            }
            at += madt[at + 1] as usize;
        }
        assert_eq!((lapics, ioapics), (cpus, 1));
        assert!(RSDP_ADDR + t.len() as u64 <= HIMEM_START);
    }

    #[test]
    fn the_dsdt_lists_each_virtio_transport() {
        let slots: Vec<_> = VIRTIO_MMIO_WINDOW.all().take(2).collect();
        let d = dsdt(&slots);
        assert_eq!(sum(&d), 0, "checksum");
        assert_eq!(u32_at(&d, 4) as usize, d.len());
        let count = d.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 2);
        for s in &slots {
            // Memory32Fixed: tag 0x86, length 9, read/write, base, size.
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend_from_slice(&(s.base as u32).to_le_bytes());
            mem.extend_from_slice(&(s.size as u32).to_le_bytes());
            assert!(d.windows(mem.len()).any(|w| w == mem), "{s:?}");
            // Extended interrupt: consumer, edge, active high, exclusive.
            let mut irq = vec![0x89, 6, 0, 0b0011, 1];
            irq.extend_from_slice(&s.irq.to_le_bytes());
            assert!(d.windows(irq.len()).any(|w| w == irq), "{s:?}");
        }
        let empty = dsdt(&[]);
        assert!(!empty.windows(8).any(|w| w == b"LNRO0005"));
        // The power button and its Generic Event Device are always there.
        assert!(empty.windows(8).any(|w| w == b"ACPI0013"));
        assert!(empty.windows(4).any(|w| w == b"PWRB"));
        assert!(empty.windows(4).any(|w| w == b"_EVT"));
    }

    /// Writes each table to $EMBER_ACPI_DUMP (when set) for `iasl -d`.
    #[test]
    fn dump_for_iasl() {
        let Ok(dir) = std::env::var("EMBER_ACPI_DUMP") else {
            return;
        };
        let t = build(2, &VIRTIO_MMIO_WINDOW.all().take(3).collect::<Vec<_>>());
        let xsdt_at = (u64_at(&t, 24) - RSDP_ADDR) as usize;
        let mut addrs = vec![u64_at(&t, 24)];
        let xlen = u32_at(&t, xsdt_at + 4) as usize;
        addrs.extend((36..xlen).step_by(8).map(|at| u64_at(&t, xsdt_at + at)));
        let fadt_at = (addrs[1] - RSDP_ADDR) as usize;
        addrs.push(u64_at(&t, fadt_at + 140));
        for addr in addrs {
            let at = (addr - RSDP_ADDR) as usize;
            let len = u32_at(&t, at + 4) as usize;
            let name = std::str::from_utf8(&t[at..at + 4]).unwrap().to_string();
            std::fs::write(format!("{dir}/{name}.dat"), &t[at..at + len]).unwrap();
        }
    }

    #[test]
    fn the_largest_machine_fits() {
        let all: Vec<_> = VIRTIO_MMIO_WINDOW.all().collect();
        assert!(RSDP_ADDR + build(254, &all).len() as u64 <= HIMEM_START);
    }
}
