//! The device tree of the riscv64 `virt` machine, written with vm-fdt.
//!
//! ```text
//! /                 compatible "riscv-virtio", model "ember,riscv-virt"
//!   chosen          bootargs, stdout-path, linux,initrd-start/-end, rng-seed
//!   aliases         serial0
//!   memory@...      one node per RAM range of the `memory` FlatView
//!   cpus            timebase-frequency
//!     cpu@N         rv64imafdc_zicsr_zifencei, sv48
//!       interrupt-controller   riscv,cpu-intc (phandle 2 + N)
//!   soc             simple-bus
//!     plic@c000000  sifive,plic-1.0.0 (phandle 1), context N = hart N S-mode
//!     serial@10000000         ns16550a, PLIC source 10
//!     virtio_mmio@...         one per virtio device, PLIC sources 1..=8
//! ```
//!
//! The RAM described is what the `memory` address space really maps, so
//! the device tree cannot disagree with the memory tree.

use vm_fdt::FdtWriter;

use super::cpu_description::CpuDescription;
use super::error::FdtError;
use super::irqchip::{
    Irqchip, AIA_NR_IDS, AIA_NR_SOURCES, APLIC_BASE, APLIC_SIZE, IMSIC_BASE, IMSIC_STRIDE,
};
use super::layout::{
    plic_size, VirtioMmioSlot, MAX_HARTS, PLIC_BASE, PLIC_NDEV, UART0_BASE, UART0_IRQ, UART0_SIZE,
    UART_CLOCK_FREQ,
};
use crate::memory::{FlatView, RegionKind};

/// The ISA the harts advertise (`riscv,isa`).
pub const ISA_STRING: &str = "rv64imafdc_zicsr_zifencei";
/// The same ISA as `riscv,isa-base` ...
pub const ISA_BASE: &str = "rv64i";
/// ... and `riscv,isa-extensions`.
pub const ISA_EXTENSIONS: &[&str] = &["i", "m", "a", "f", "d", "c", "zicsr", "zifencei"];
/// The widest paging mode the harts advertise (`mmu-type`).
pub const MMU_TYPE: &str = "riscv,sv48";
/// The PLIC's phandle, or the APLIC's with the AIA: the
/// `interrupt-parent` of every wired device.
pub const PLIC_PHANDLE: u32 = 1;
/// The IMSICs' phandle (the APLIC's `msi-parent`): after every hart's
/// interrupt controller.
pub const IMSIC_PHANDLE: u32 = PLIC_PHANDLE + 1 + MAX_HARTS as u32;
/// `IRQ_TYPE_LEVEL_HIGH`, the APLIC's second interrupt cell.
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// The `mcause`/`scause` number of the supervisor external interrupt: the
/// cpu-intc input each PLIC context drives.
const IRQ_S_EXT: u32 = 9;

/// The phandle of hart `hart`'s interrupt controller.
pub fn cpu_intc_phandle(hart: u32) -> u32 {
    PLIC_PHANDLE + 1 + hart
}

/// The path `stdout-path` names: the UART's node.
pub fn uart_path() -> String {
    format!("/soc/serial@{UART0_BASE:x}")
}

/// What the device tree describes beyond the memory map.
#[derive(Clone, Copy, Debug, Default)]
pub struct FdtConfig<'a> {
    /// The kernel command line (`bootargs`).
    pub cmdline: &'a str,
    /// How many harts, 1..=[`MAX_HARTS`].
    pub harts: u32,
    /// The initrd as `(start, end)`, end exclusive.
    pub initrd: Option<(u64, u64)>,
    /// The virtio-mmio slots that hold a device.
    pub virtio: &'a [VirtioMmioSlot],
    /// Entropy for the guest's early random pool (`rng-seed`).
    pub rng_seed: Option<&'a [u8]>,
    /// The harts' ISA, paging mode and timebase; `None` for the software
    /// CPU's ([`CpuDescription::software`]).
    pub cpu: Option<&'a CpuDescription>,
    /// The interrupt controller (`None`: the PLIC).
    pub irqchip: Option<Irqchip>,
}

/// The writable RAM of `view` as `(start, size)` ranges, neighbours merged,
/// sorted by address. ROM, read-only RAM and devices are not RAM.
pub fn memory_ranges(view: &FlatView) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for range in view.ranges() {
        if range.kind != RegionKind::Ram || range.readonly {
            continue;
        }
        // A range may end at 2^64; its last byte cannot be described with
        // a 64-bit size, and no guest has RAM there.
        let size = u64::try_from(range.size).unwrap_or(u64::MAX);
        match ranges.last_mut() {
            Some(last) if last.0 as u128 + last.1 as u128 == range.start as u128 => {
                last.1 = last.1.saturating_add(size);
            }
            _ => ranges.push((range.start, size)),
        }
    }
    ranges
}

/// Builds the device tree blob for the RAM of `view` (the `memory`
/// address space's current view) and `config`.
pub fn build_fdt(view: &FlatView, config: &FdtConfig<'_>) -> Result<Vec<u8>, FdtError> {
    if config.harts == 0 || config.harts > MAX_HARTS as u32 {
        return Err(FdtError::Harts {
            harts: config.harts,
            max: MAX_HARTS as u32,
        });
    }
    let memory = memory_ranges(view);
    if memory.is_empty() {
        return Err(FdtError::NoMemory);
    }
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_string("compatible", "riscv-virtio")?;
    fdt.property_string("model", "ember,riscv-virt")?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", config.cmdline)?;
    fdt.property_string("stdout-path", &uart_path())?;
    if let Some((start, end)) = config.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    if let Some(seed) = config.rng_seed {
        fdt.property("rng-seed", seed)?;
    }
    fdt.end_node(chosen)?;

    let aliases = fdt.begin_node("aliases")?;
    fdt.property_string("serial0", &uart_path())?;
    fdt.end_node(aliases)?;

    for (start, size) in memory {
        let node = fdt.begin_node(&format!("memory@{start:x}"))?;
        fdt.property_string("device_type", "memory")?;
        fdt.property_array_u64("reg", &[start, size])?;
        fdt.end_node(node)?;
    }

    let software = CpuDescription::software();
    cpus(&mut fdt, config.harts, config.cpu.unwrap_or(&software))?;
    soc(&mut fdt, config)?;

    fdt.end_node(root)?;
    Ok(fdt.finish()?)
}

fn cpus(fdt: &mut FdtWriter, harts: u32, desc: &CpuDescription) -> Result<(), FdtError> {
    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    fdt.property_u32("timebase-frequency", desc.timebase)?;
    for hart in 0..harts {
        let cpu = fdt.begin_node(&format!("cpu@{hart:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_u32("reg", hart)?;
        fdt.property_string("status", "okay")?;
        fdt.property_string("compatible", "riscv")?;
        fdt.property_string("mmu-type", &desc.mmu_type)?;
        fdt.property_string("riscv,isa", &desc.isa)?;
        fdt.property_string("riscv,isa-base", desc.isa_base())?;
        fdt.property_string_list("riscv,isa-extensions", desc.extensions.clone())?;
        let intc = fdt.begin_node("interrupt-controller")?;
        fdt.property_string("compatible", "riscv,cpu-intc")?;
        fdt.property_u32("#interrupt-cells", 1)?;
        // Not needed by Linux; keeps dtc's interrupt_provider check quiet.
        fdt.property_u32("#address-cells", 0)?;
        fdt.property_null("interrupt-controller")?;
        fdt.property_phandle(cpu_intc_phandle(hart))?;
        fdt.end_node(intc)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

/// The PLIC: context N is hart N's supervisor external interrupt.
fn plic_node(fdt: &mut FdtWriter, harts: u32) -> Result<(), FdtError> {
    let plic = fdt.begin_node(&format!("plic@{PLIC_BASE:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    fdt.property_array_u64("reg", &[PLIC_BASE, plic_size(harts)])?;
    fdt.property_u32("#interrupt-cells", 1)?;
    fdt.property_u32("#address-cells", 0)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("riscv,ndev", PLIC_NDEV)?;
    // Context N is hart N's supervisor external interrupt.
    let contexts: Vec<u32> = (0..harts)
        .flat_map(|hart| [cpu_intc_phandle(hart), IRQ_S_EXT])
        .collect();
    fdt.property_array_u32("interrupts-extended", &contexts)?;
    fdt.property_phandle(PLIC_PHANDLE)?;
    fdt.end_node(plic)?;
    Ok(())
}

/// The AIA as Linux's drivers expect it (Documentation/devicetree/
/// bindings/interrupt-controller/riscv,imsics.yaml and riscv,aplic.yaml):
/// the S-level IMSICs, one page per hart, each wired to its hart's
/// supervisor external interrupt; the APLIC in MSI mode, delivering to
/// them.
fn aia_nodes(fdt: &mut FdtWriter, harts: u32) -> Result<(), FdtError> {
    let imsic = fdt.begin_node(&format!("imsics@{IMSIC_BASE:x}"))?;
    fdt.property_string("compatible", "riscv,imsics")?;
    fdt.property_array_u64("reg", &[IMSIC_BASE, IMSIC_STRIDE * harts as u64])?;
    let targets: Vec<u32> = (0..harts)
        .flat_map(|hart| [cpu_intc_phandle(hart), IRQ_S_EXT])
        .collect();
    fdt.property_array_u32("interrupts-extended", &targets)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 0)?;
    fdt.property_null("msi-controller")?;
    fdt.property_u32("#msi-cells", 0)?;
    fdt.property_u32("riscv,num-ids", AIA_NR_IDS)?;
    fdt.property_phandle(IMSIC_PHANDLE)?;
    fdt.end_node(imsic)?;

    let aplic = fdt.begin_node(&format!("aplic@{APLIC_BASE:x}"))?;
    fdt.property_string("compatible", "riscv,aplic")?;
    fdt.property_array_u64("reg", &[APLIC_BASE, APLIC_SIZE])?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 2)?;
    fdt.property_u32("#address-cells", 0)?;
    fdt.property_u32("msi-parent", IMSIC_PHANDLE)?;
    fdt.property_u32("riscv,num-sources", AIA_NR_SOURCES)?;
    fdt.property_phandle(PLIC_PHANDLE)?;
    fdt.end_node(aplic)?;
    Ok(())
}

fn soc(fdt: &mut FdtWriter, config: &FdtConfig<'_>) -> Result<(), FdtError> {
    let soc = fdt.begin_node("soc")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_string("compatible", "simple-bus")?;
    fdt.property_null("ranges")?;

    let irqchip = config.irqchip.unwrap_or(Irqchip::Plic);
    match irqchip {
        Irqchip::Plic => plic_node(fdt, config.harts)?,
        Irqchip::Aia => aia_nodes(fdt, config.harts)?,
    }
    // A wired source as the interrupt controller numbers it: the PLIC
    // takes the source alone, the APLIC the source and its trigger.
    let interrupts = |source: u32| -> Vec<u32> {
        match irqchip {
            Irqchip::Plic => vec![source],
            Irqchip::Aia => vec![source, IRQ_TYPE_LEVEL_HIGH],
        }
    };

    let uart = fdt.begin_node(&format!("serial@{UART0_BASE:x}"))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[UART0_BASE, UART0_SIZE])?;
    fdt.property_u32("clock-frequency", UART_CLOCK_FREQ)?;
    fdt.property_array_u32("interrupts", &interrupts(UART0_IRQ))?;
    fdt.property_u32("interrupt-parent", PLIC_PHANDLE)?;
    fdt.end_node(uart)?;

    for slot in config.virtio {
        let node = fdt.begin_node(&format!("virtio_mmio@{:x}", slot.base))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[slot.base, slot.size])?;
        fdt.property_array_u32("interrupts", &interrupts(slot.irq))?;
        fdt.property_u32("interrupt-parent", PLIC_PHANDLE)?;
        fdt.end_node(node)?;
    }

    fdt.end_node(soc)?;
    Ok(())
}

/// A minimal flattened-device-tree reader for tests: every node by path
/// with its properties.
#[cfg(test)]
pub(crate) mod reader {
    use std::collections::BTreeMap;

    /// Node path ("/", "/cpus/cpu@0") -> property name -> raw value.
    pub type Tree = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn cstr(b: &[u8], at: usize) -> &str {
        let end = at + b[at..].iter().position(|&c| c == 0).unwrap();
        std::str::from_utf8(&b[at..end]).unwrap()
    }

    /// Parses a blob, checking its header and structure as it goes.
    pub fn parse(blob: &[u8]) -> Tree {
        assert_eq!(be32(blob, 0), 0xd00d_feed, "magic");
        assert_eq!(be32(blob, 4) as usize, blob.len(), "totalsize");
        let structs = be32(blob, 8) as usize;
        let strings = be32(blob, 12) as usize;
        assert_eq!(be32(blob, 20), 17, "version");
        let mut tree = Tree::new();
        let mut path: Vec<String> = Vec::new();
        let mut at = structs;
        let full = |path: &[String]| {
            if path.len() <= 1 {
                "/".to_string()
            } else {
                path[1..].iter().fold(String::new(), |p, n| p + "/" + n)
            }
        };
        loop {
            let token = be32(blob, at);
            at += 4;
            match token {
                1 => {
                    let name = cstr(blob, at).to_string();
                    at = (at + name.len() + 1).next_multiple_of(4);
                    path.push(name);
                    let prev = tree.insert(full(&path), BTreeMap::new());
                    assert!(prev.is_none(), "duplicate node {}", full(&path));
                }
                2 => {
                    path.pop().expect("END_NODE without node");
                }
                3 => {
                    let len = be32(blob, at) as usize;
                    let name = cstr(blob, strings + be32(blob, at + 4) as usize).to_string();
                    let value = blob[at + 8..at + 8 + len].to_vec();
                    at = (at + 8 + len).next_multiple_of(4);
                    let node = tree.get_mut(&full(&path)).expect("property outside node");
                    assert!(node.insert(name, value).is_none(), "duplicate property");
                }
                4 => {}
                9 => break,
                other => panic!("bad token {other:#x}"),
            }
        }
        assert!(path.is_empty(), "unclosed nodes");
        tree
    }

    pub fn u32s(value: &[u8]) -> Vec<u32> {
        assert_eq!(value.len() % 4, 0);
        value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn u64s(value: &[u8]) -> Vec<u64> {
        assert_eq!(value.len() % 8, 0);
        value
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn strings(value: &[u8]) -> Vec<&str> {
        assert_eq!(value.last(), Some(&0), "NUL-terminated");
        value[..value.len() - 1]
            .split(|&b| b == 0)
            .map(|s| std::str::from_utf8(s).unwrap())
            .collect()
    }

    /// A property of a node, which must exist.
    pub fn prop<'t>(tree: &'t Tree, node: &str, name: &str) -> &'t [u8] {
        tree.get(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .get(name)
            .unwrap_or_else(|| panic!("no property {name} in {node}"))
    }

    pub fn string<'t>(tree: &'t Tree, node: &str, name: &str) -> &'t str {
        let s = strings(prop(tree, node, name));
        assert_eq!(s.len(), 1, "{node} {name} is one string");
        s[0]
    }
}

#[cfg(test)]
mod tests {
    use super::reader::{parse, prop, string, strings, u32s, u64s};
    use super::*;
    use crate::arch::riscv64::layout::RAM_BASE;
    use crate::memory::{MemoryTree, Unassigned, SIZE_2_64};

    const MIB: u64 = 1 << 20;

    /// A `memory` view with RAM at RAM_BASE, a ROM and a device.
    fn view(ram: u64) -> std::sync::Arc<FlatView> {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let r = tree.new_ram("ram", ram).unwrap();
        tree.add_subregion(sys, RAM_BASE, r).unwrap();
        let rom = tree.new_rom("rom", 0x1000).unwrap();
        tree.add_subregion(sys, 0x1000, rom).unwrap();
        let dev = tree.new_io("dev", 0x100, None).unwrap();
        tree.add_subregion(sys, UART0_BASE, dev).unwrap();
        tree.add_address_space("memory", sys, Unassigned::Zero)
            .unwrap()
            .view()
    }

    #[test]
    fn root_chosen_and_memory() {
        let blob = build_fdt(
            &view(128 * MIB),
            &FdtConfig {
                cmdline: "console=ttyS0 quiet",
                harts: 1,
                initrd: Some((0x8700_0000, 0x8712_3456)),
                rng_seed: Some(&[7; 32]),
                ..Default::default()
            },
        )
        .unwrap();
        let t = parse(&blob);
        assert_eq!(u32s(prop(&t, "/", "#address-cells")), [2]);
        assert_eq!(u32s(prop(&t, "/", "#size-cells")), [2]);
        assert_eq!(string(&t, "/", "compatible"), "riscv-virtio");
        assert_eq!(string(&t, "/", "model"), "ember,riscv-virt");
        assert_eq!(string(&t, "/chosen", "bootargs"), "console=ttyS0 quiet");
        assert_eq!(string(&t, "/chosen", "stdout-path"), "/soc/serial@10000000");
        assert_eq!(
            u64s(prop(&t, "/chosen", "linux,initrd-start")),
            [0x8700_0000]
        );
        assert_eq!(u64s(prop(&t, "/chosen", "linux,initrd-end")), [0x8712_3456]);
        assert_eq!(prop(&t, "/chosen", "rng-seed"), [7; 32]);
        assert_eq!(string(&t, "/aliases", "serial0"), "/soc/serial@10000000");
        // Only the RAM: not the ROM, not the device.
        let memories: Vec<_> = t.keys().filter(|k| k.starts_with("/memory")).collect();
        assert_eq!(memories, ["/memory@80000000"]);
        assert_eq!(string(&t, "/memory@80000000", "device_type"), "memory");
        assert_eq!(
            u64s(prop(&t, "/memory@80000000", "reg")),
            [RAM_BASE, 128 * MIB]
        );
        // The stdout path names a node that exists.
        assert!(t.contains_key("/soc/serial@10000000"));
    }

    #[test]
    fn no_initrd_no_seed_no_properties() {
        let blob = build_fdt(
            &view(64 * MIB),
            &FdtConfig {
                harts: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let t = parse(&blob);
        let chosen = &t["/chosen"];
        assert!(!chosen.contains_key("linux,initrd-start"));
        assert!(!chosen.contains_key("rng-seed"));
        assert_eq!(string(&t, "/chosen", "bootargs"), "");
    }

    #[test]
    fn cpus_and_their_interrupt_controllers() {
        let blob = build_fdt(
            &view(64 * MIB),
            &FdtConfig {
                harts: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let t = parse(&blob);
        assert_eq!(u32s(prop(&t, "/cpus", "timebase-frequency")), [10_000_000]);
        assert_eq!(u32s(prop(&t, "/cpus", "#address-cells")), [1]);
        assert_eq!(u32s(prop(&t, "/cpus", "#size-cells")), [0]);
        for hart in 0..3u32 {
            let cpu = format!("/cpus/cpu@{hart}");
            assert_eq!(string(&t, &cpu, "device_type"), "cpu");
            assert_eq!(u32s(prop(&t, &cpu, "reg")), [hart]);
            assert_eq!(string(&t, &cpu, "status"), "okay");
            assert_eq!(string(&t, &cpu, "compatible"), "riscv");
            assert_eq!(string(&t, &cpu, "mmu-type"), "riscv,sv48");
            assert_eq!(string(&t, &cpu, "riscv,isa"), "rv64imafdc_zicsr_zifencei");
            assert_eq!(string(&t, &cpu, "riscv,isa-base"), "rv64i");
            assert_eq!(
                strings(prop(&t, &cpu, "riscv,isa-extensions")),
                ["i", "m", "a", "f", "d", "c", "zicsr", "zifencei"]
            );
            let intc = format!("{cpu}/interrupt-controller");
            assert_eq!(string(&t, &intc, "compatible"), "riscv,cpu-intc");
            assert_eq!(u32s(prop(&t, &intc, "#interrupt-cells")), [1]);
            assert_eq!(u32s(prop(&t, &intc, "#address-cells")), [0]);
            assert!(prop(&t, &intc, "interrupt-controller").is_empty());
            assert_eq!(u32s(prop(&t, &intc, "phandle")), [cpu_intc_phandle(hart)]);
        }
        assert!(!t.contains_key("/cpus/cpu@3"));
    }

    #[test]
    fn the_aia_replaces_the_plic_and_devices_take_two_cells() {
        let slots: Vec<_> = crate::arch::riscv64::layout::VIRTIO_MMIO_WINDOW
            .all()
            .take(2)
            .collect();
        let blob = build_fdt(
            &view(64 * MIB),
            &FdtConfig {
                harts: 2,
                virtio: &slots,
                irqchip: Some(Irqchip::Aia),
                ..Default::default()
            },
        )
        .unwrap();
        let t = parse(&blob);
        assert!(!t.keys().any(|k| k.contains("/plic@")), "no PLIC node");
        let imsic = format!("/soc/imsics@{IMSIC_BASE:x}");
        assert_eq!(string(&t, &imsic, "compatible"), "riscv,imsics");
        assert_eq!(
            u64s(prop(&t, &imsic, "reg")),
            [IMSIC_BASE, 2 * IMSIC_STRIDE]
        );
        assert_eq!(
            u32s(prop(&t, &imsic, "interrupts-extended")),
            [cpu_intc_phandle(0), 9, cpu_intc_phandle(1), 9]
        );
        assert!(prop(&t, &imsic, "msi-controller").is_empty());
        assert_eq!(u32s(prop(&t, &imsic, "riscv,num-ids")), [AIA_NR_IDS]);
        assert_eq!(u32s(prop(&t, &imsic, "phandle")), [IMSIC_PHANDLE]);
        let aplic = format!("/soc/aplic@{APLIC_BASE:x}");
        assert_eq!(string(&t, &aplic, "compatible"), "riscv,aplic");
        assert_eq!(u64s(prop(&t, &aplic, "reg")), [APLIC_BASE, APLIC_SIZE]);
        assert_eq!(u32s(prop(&t, &aplic, "msi-parent")), [IMSIC_PHANDLE]);
        assert_eq!(u32s(prop(&t, &aplic, "#interrupt-cells")), [2]);
        assert_eq!(
            u32s(prop(&t, &aplic, "riscv,num-sources")),
            [AIA_NR_SOURCES]
        );
        assert_eq!(u32s(prop(&t, &aplic, "phandle")), [PLIC_PHANDLE]);
        let uart = uart_path();
        assert_eq!(u32s(prop(&t, &uart, "interrupts")), [UART0_IRQ, 4]);
        assert_eq!(u32s(prop(&t, &uart, "interrupt-parent")), [PLIC_PHANDLE]);
        for slot in &slots {
            let node = format!("/soc/virtio_mmio@{:x}", slot.base);
            assert_eq!(u32s(prop(&t, &node, "interrupts")), [slot.irq, 4]);
        }
        // Every phandle is distinct.
        let mut handles: Vec<u32> = t
            .values()
            .filter_map(|props| props.get("phandle").map(|p| u32s(p)[0]))
            .collect();
        let n = handles.len();
        handles.sort();
        handles.dedup();
        assert_eq!(handles.len(), n);
    }

    #[test]
    fn cpus_are_described_as_the_accelerator_reports_them() {
        // What a KVM vCPU on a Sv57 host with Sstc reports, at 25 MHz.
        let bits = b"imafdch".iter().fold(0u64, |b, c| b | 1 << (c - b'a'));
        let desc = CpuDescription::from_kvm(bits, &["sstc"], 25_000_000, Some("sv57")).unwrap();
        let blob = build_fdt(
            &view(64 * MIB),
            &FdtConfig {
                harts: 2,
                cpu: Some(&desc),
                ..Default::default()
            },
        )
        .unwrap();
        let t = parse(&blob);
        assert_eq!(u32s(prop(&t, "/cpus", "timebase-frequency")), [25_000_000]);
        for hart in 0..2u32 {
            let cpu = format!("/cpus/cpu@{hart}");
            assert_eq!(string(&t, &cpu, "mmu-type"), "riscv,sv57");
            assert_eq!(
                string(&t, &cpu, "riscv,isa"),
                "rv64imafdc_zicsr_zifencei_sstc"
            );
            let exts = strings(prop(&t, &cpu, "riscv,isa-extensions"));
            assert!(exts.contains(&"sstc"), "{exts:?}");
            assert!(!exts.contains(&"h"), "{exts:?}");
        }
    }

    #[test]
    fn soc_plic_uart_and_virtio() {
        let slots: Vec<_> = crate::arch::riscv64::layout::VIRTIO_MMIO_WINDOW
            .all()
            .take(2)
            .collect();
        let blob = build_fdt(
            &view(64 * MIB),
            &FdtConfig {
                harts: 2,
                virtio: &slots,
                ..Default::default()
            },
        )
        .unwrap();
        let t = parse(&blob);
        assert_eq!(string(&t, "/soc", "compatible"), "simple-bus");
        assert!(prop(&t, "/soc", "ranges").is_empty());
        assert_eq!(u32s(prop(&t, "/soc", "#address-cells")), [2]);

        let plic = "/soc/plic@c000000";
        assert_eq!(
            strings(prop(&t, plic, "compatible")),
            ["sifive,plic-1.0.0", "riscv,plic0"]
        );
        assert_eq!(u64s(prop(&t, plic, "reg")), [0x0c00_0000, 0x20_2000]);
        assert_eq!(u32s(prop(&t, plic, "#interrupt-cells")), [1]);
        assert_eq!(u32s(prop(&t, plic, "#address-cells")), [0]);
        assert!(prop(&t, plic, "interrupt-controller").is_empty());
        assert_eq!(u32s(prop(&t, plic, "riscv,ndev")), [31]);
        assert_eq!(
            u32s(prop(&t, plic, "interrupts-extended")),
            [cpu_intc_phandle(0), 9, cpu_intc_phandle(1), 9]
        );
        assert_eq!(u32s(prop(&t, plic, "phandle")), [PLIC_PHANDLE]);

        let uart = "/soc/serial@10000000";
        assert_eq!(string(&t, uart, "compatible"), "ns16550a");
        assert_eq!(u64s(prop(&t, uart, "reg")), [0x1000_0000, 0x100]);
        assert_eq!(u32s(prop(&t, uart, "clock-frequency")), [3_686_400]);
        assert_eq!(u32s(prop(&t, uart, "interrupts")), [10]);
        assert_eq!(u32s(prop(&t, uart, "interrupt-parent")), [PLIC_PHANDLE]);

        for (node, base, irq) in [
            ("/soc/virtio_mmio@10001000", 0x1000_1000u64, 1u32),
            ("/soc/virtio_mmio@10002000", 0x1000_2000, 2),
        ] {
            assert_eq!(string(&t, node, "compatible"), "virtio,mmio");
            assert_eq!(u64s(prop(&t, node, "reg")), [base, 0x1000]);
            assert_eq!(u32s(prop(&t, node, "interrupts")), [irq]);
            assert_eq!(u32s(prop(&t, node, "interrupt-parent")), [PLIC_PHANDLE]);
        }
        assert_eq!(
            t.keys().filter(|k| k.contains("virtio_mmio")).count(),
            2,
            "one node per device"
        );
    }

    #[test]
    fn split_ram_gives_one_memory_node_per_range() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let ram = tree.new_ram("ram", 64 * MIB).unwrap();
        let low = tree.new_alias("low", ram, 0, (32 * MIB) as u128).unwrap();
        let mid = tree
            .new_alias("mid", ram, 32 * MIB, (16 * MIB) as u128)
            .unwrap();
        let high = tree
            .new_alias("high", ram, 48 * MIB, (16 * MIB) as u128)
            .unwrap();
        tree.add_subregion(sys, RAM_BASE, low).unwrap();
        // Contiguous with `low` though a different alias: merged.
        tree.add_subregion(sys, RAM_BASE + 32 * MIB, mid).unwrap();
        tree.add_subregion(sys, 0x1_0000_0000, high).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        assert_eq!(
            memory_ranges(&mem.view()),
            [(RAM_BASE, 48 * MIB), (0x1_0000_0000, 16 * MIB)]
        );
        let t = parse(
            &build_fdt(
                &mem.view(),
                &FdtConfig {
                    harts: 1,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        assert_eq!(
            u64s(prop(&t, "/memory@80000000", "reg")),
            [RAM_BASE, 48 * MIB]
        );
        assert_eq!(
            u64s(prop(&t, "/memory@100000000", "reg")),
            [0x1_0000_0000, 16 * MIB]
        );
    }

    #[test]
    fn bad_configs_are_errors() {
        let v = view(64 * MIB);
        for harts in [0, MAX_HARTS as u32 + 1] {
            let err = build_fdt(
                &v,
                &FdtConfig {
                    harts,
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert!(matches!(err, FdtError::Harts { .. }), "{err}");
        }
        let config = FdtConfig {
            harts: 1,
            ..Default::default()
        };
        assert_eq!(
            build_fdt(&FlatView::empty(), &config),
            Err(FdtError::NoMemory)
        );
        // A NUL in the command line cannot be written as a string.
        let err = build_fdt(
            &v,
            &FdtConfig {
                cmdline: "a\0b",
                ..config
            },
        )
        .unwrap_err();
        assert_eq!(err, FdtError::Writer(vm_fdt::Error::InvalidString));
        // The largest machine still fits the room reserved for the blob.
        let slots: Vec<_> = crate::arch::riscv64::layout::VIRTIO_MMIO_WINDOW
            .all()
            .collect();
        let blob = build_fdt(
            &v,
            &FdtConfig {
                cmdline: &"x".repeat(1023),
                harts: MAX_HARTS as u32,
                initrd: Some((1, 2)),
                virtio: &slots,
                rng_seed: Some(&[0; 64]),
                cpu: None,
                irqchip: None,
            },
        )
        .unwrap();
        assert!(blob.len() as u64 <= crate::arch::riscv64::layout::FDT_MAX_SIZE);
    }
}
