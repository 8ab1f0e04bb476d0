//! Assembling the riscv64 `virt` machine: the memory tree with RAM, the
//! PLIC and the UART, the harts' interrupt lines, the kernel, initrd and
//! device tree in guest RAM. Nothing here depends on how the harts run, so
//! the software CPU and (later) KVM on riscv64 hosts share it.
//!
//! Interrupt path: the UART's INTR level ([`Serial::set_level_listener`])
//! drives PLIC source [`UART0_IRQ`]; the PLIC drives context N's output,
//! hart N's supervisor external interrupt line, which the accelerator hands
//! in ([`HartLines`]): the software CPU sets `SEIP` in the hart's signals,
//! KVM raises or lowers the vCPU's interrupt with `KVM_INTERRUPT`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cpu_description::CpuDescription;
use super::error::{ImageError, MachineError};
use super::fdt::{build_fdt, memory_ranges, FdtConfig};
use super::image::{load_image, write_fdt, ImageHeader, RiscvBoot};
use super::irqchip::{Irqchip, SourceLevel};
use super::layout::{
    plic_size, CMDLINE_MAX_SIZE, MAX_HARTS, MAX_RAM_SIZE, MIN_RAM_SIZE, PLIC_BASE, RAM_ALIGN,
    RAM_BASE, UART0_BASE, UART0_IRQ, UART0_SIZE,
};
use crate::arch::virtio_mmio::VirtioMmioSlot;
use crate::devices::irq::EventFdTrigger;
use crate::devices::plic::{Plic, PlicOutput};
use crate::devices::serial::Serial;
use crate::memory::{AddressSpace, MemoryTree, RegionId, Unassigned, SIZE_2_64};

/// Name of the RAM region (`info mtree`).
pub const RAM_REGION: &str = "riscv.virt.ram";
/// Name of the PLIC's region.
pub const PLIC_REGION: &str = "riscv.sifive.plic";
/// Name of the UART's region.
pub const UART_REGION: &str = "serial";

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiscvMachineConfig {
    /// Guest RAM in bytes, from [`RAM_BASE`].
    pub memory: u64,
    /// Harts, 1..=[`MAX_HARTS`].
    pub cpus: u8,
    /// The kernel command line (`/chosen/bootargs`).
    pub cmdline: String,
    /// A riscv64 Linux `Image` to load.
    pub kernel: Option<PathBuf>,
    /// An initrd to load with it.
    pub initrd: Option<PathBuf>,
    /// The virtio-mmio slots the VMM will put devices in (the device tree
    /// lists them; the devices themselves are added to the tree later).
    pub virtio: Vec<VirtioMmioSlot>,
    /// What the accelerator's harts are, for the device tree.
    pub cpu: CpuDescription,
}

/// Each hart's supervisor external interrupt line, from the accelerator,
/// in hart order: the PLIC drives context N's output into line N.
pub type HartLines = Vec<PlicOutput>;

/// How wired interrupts reach the harts, as the accelerator provides.
pub enum InterruptWiring {
    /// Ember's PLIC, whose context N drives hart line N.
    Plic(HartLines),
    /// A controller outside the VMM (KVM's in-kernel AIA): each wired
    /// source's level goes here.
    External(SourceLevel),
}

/// A built machine, ready for harts to run.
///
/// The tree is owned here; the VMM puts it behind a mutex if anything
/// changes it while harts run (harts and devices only use `memory`, whose
/// views are published lock-free).
pub struct RiscvMachine {
    pub tree: MemoryTree,
    /// The `memory` address space over `system` (unassigned reads are 0).
    pub memory: AddressSpace,
    /// The root container, 2^64 bytes: virtio-mmio devices go under it.
    pub system: RegionId,
    /// The RAM region at [`RAM_BASE`].
    pub ram: RegionId,
    /// The PLIC, unless the interrupt controller is outside the VMM.
    pub plic: Option<Arc<Plic>>,
    /// Drives a wired source's level (through the PLIC, or outside).
    pub wired: SourceLevel,
    /// UART0 (ns16550a); feed host input with [`Serial::enqueue_input`].
    pub serial: Arc<Serial>,
    /// Where the kernel went, when one was given: hart 0 starts at `entry`
    /// with `a0` = 0 and `a1` = `fdt_addr`.
    pub boot: Option<RiscvBoot>,
    /// The device tree blob (also in guest RAM at `fdt_addr` when booting).
    pub fdt: Vec<u8>,
}

/// Checks the sizes and the command line, without reading any file, so
/// that a VMM can report them before doing anything else.
pub fn check_config(config: &RiscvMachineConfig) -> Result<(), MachineError> {
    if config.cpus == 0 || config.cpus > MAX_HARTS {
        return Err(MachineError::CpuCount {
            count: config.cpus,
            max: MAX_HARTS,
        });
    }
    if config.memory < MIN_RAM_SIZE || config.memory % RAM_ALIGN != 0 {
        return Err(MachineError::RamSize {
            size: config.memory,
        });
    }
    if config.memory > MAX_RAM_SIZE {
        return Err(MachineError::RamTooLarge {
            size: config.memory,
            max: MAX_RAM_SIZE,
        });
    }
    check_cmdline(&config.cmdline)?;
    if config.initrd.is_some() && config.kernel.is_none() {
        return Err(MachineError::InitrdWithoutKernel);
    }
    Ok(())
}

/// Checks a command line against riscv Linux's limit (its NUL included).
pub fn check_cmdline(cmdline: &str) -> Result<(), MachineError> {
    if cmdline.contains('\0') {
        return Err(MachineError::CmdlineNul);
    }
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(MachineError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    Ok(())
}

/// Reads a kernel or initrd: a regular file no larger than the guest's
/// RAM (`limit`), since nothing larger could be loaded anyway; a device
/// or FIFO at the path is refused instead of read forever or waited on.
fn read_file(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, MachineError> {
    crate::vmm::host_file::read_regular(path, limit, crate::vmm::host_file::Symlinks::Follow)
        .map_err(|source| MachineError::Io {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// Entropy for the device tree's `rng-seed`, if the host has any to give.
fn rng_seed() -> Option<[u8; 32]> {
    let mut seed = [0u8; 32];
    let mut urandom = std::fs::File::open("/dev/urandom").ok()?;
    urandom.read_exact(&mut seed).ok()?;
    Some(seed)
}

/// Builds the machine: memory tree, devices, interrupt wiring, and the
/// kernel, initrd and device tree in RAM when a kernel is given. Guest
/// output of the UART goes to `serial_output`.
pub fn build_machine(
    config: &RiscvMachineConfig,
    serial_output: Box<dyn Write + Send>,
    wiring: InterruptWiring,
) -> Result<RiscvMachine, MachineError> {
    check_config(config)?;
    let (plic, wired, irqchip): (Option<Arc<Plic>>, SourceLevel, Irqchip) = match wiring {
        InterruptWiring::Plic(hart_lines) => {
            if hart_lines.len() != config.cpus as usize {
                return Err(MachineError::HartLines {
                    lines: hart_lines.len(),
                    harts: config.cpus,
                });
            }
            let plic = Arc::new(Plic::new(hart_lines));
            let p = plic.clone();
            (
                Some(plic),
                Arc::new(move |s, l| p.set_irq(s, l)),
                Irqchip::Plic,
            )
        }
        InterruptWiring::External(wired) => (None, wired, Irqchip::Aia),
    };
    // Read and check the files first: their errors are the likeliest.
    let kernel = match &config.kernel {
        Some(path) => {
            let bytes = read_file("kernel", path, config.memory)?;
            let header = ImageHeader::parse(&bytes).map_err(|source| image_error(path, source))?;
            Some((header, bytes))
        }
        None => None,
    };
    let initrd = match &config.initrd {
        Some(path) => Some(read_file("initrd", path, config.memory)?),
        None => None,
    };

    let trigger = EventFdTrigger::new().map_err(MachineError::Eventfd)?;
    let serial = Arc::new(Serial::new(trigger, serial_output));
    {
        let wired = wired.clone();
        serial.set_level_listener(Box::new(move |level| wired(UART0_IRQ, level)));
    }

    let mut tree = MemoryTree::new();
    let (system, ram) = tree.transaction(|tree| {
        let system = tree.new_container("system", SIZE_2_64)?;
        let ram = tree.new_ram(RAM_REGION, config.memory)?;
        tree.add_subregion(system, RAM_BASE, ram)?;
        // The AIA's registers are KVM's: nothing in the tree.
        if let Some(plic) = &plic {
            let plic_region = tree.new_io(
                PLIC_REGION,
                plic_size(config.cpus as u32) as u128,
                Some(plic.clone()),
            )?;
            tree.add_subregion(system, PLIC_BASE, plic_region)?;
        }
        let uart = tree.new_io(UART_REGION, UART0_SIZE as u128, Some(serial.clone()))?;
        tree.add_subregion(system, UART0_BASE, uart)?;
        Ok::<_, MachineError>((system, ram))
    })?;
    let memory = tree.add_address_space("memory", system, Unassigned::Zero)?;
    let view = memory.view();

    let boot = match &kernel {
        Some((header, bytes)) => {
            let (ram_start, ram_size) = memory_ranges(&view)
                .into_iter()
                .find(|&(start, _)| start == RAM_BASE)
                .ok_or(super::error::BootError::NoRam { addr: RAM_BASE })?;
            Some(load_image(
                &memory,
                header,
                bytes,
                initrd.as_deref(),
                ram_start,
                ram_size,
            )?)
        }
        None => None,
    };

    let seed = rng_seed();
    let fdt = build_fdt(
        &view,
        &FdtConfig {
            cmdline: &config.cmdline,
            harts: config.cpus as u32,
            initrd: boot.and_then(|b| b.initrd),
            virtio: &config.virtio,
            rng_seed: seed.as_ref().map(|s| &s[..]),
            cpu: Some(&config.cpu),
            irqchip: Some(irqchip),
        },
    )?;
    if let Some(boot) = &boot {
        write_fdt(&memory, boot, &fdt)?;
    }

    Ok(RiscvMachine {
        tree,
        memory,
        system,
        ram,
        plic,
        wired,
        serial,
        boot,
        fdt,
    })
}

fn image_error(path: &Path, source: ImageError) -> MachineError {
    MachineError::Image {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::tcg::signals::{HartSignals, IRQ_SEIP};
    use crate::arch::riscv64::error::BootError;
    use crate::arch::riscv64::fdt::reader::{parse, prop, string, u64s};
    use crate::arch::riscv64::image::IMAGE_MAGIC2;
    use crate::arch::riscv64::layout::FDT_MAX_SIZE;
    use crate::memory::{MemTxResult, RegionKind};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    const MIB: u64 = 1 << 20;

    /// A file in the temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(bytes: &[u8]) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "ember-riscv-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, bytes).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<u8>>>);

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn kernel_image(image_size: u64, file_len: usize) -> Vec<u8> {
        let mut b: Vec<u8> = (0..file_len).map(|i| (i % 253) as u8).collect();
        b[8..16].copy_from_slice(&0x20_0000u64.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].fill(0);
        b[56..60].copy_from_slice(&IMAGE_MAGIC2);
        b
    }

    fn config(memory: u64, cpus: u8) -> RiscvMachineConfig {
        RiscvMachineConfig {
            memory,
            cpus,
            cmdline: "console=ttyS0".into(),
            kernel: None,
            initrd: None,
            virtio: Vec::new(),
            cpu: CpuDescription::software(),
        }
    }

    /// Each hart's line as the software CPU wires it, and the lines.
    fn hart_lines(cpus: u8) -> (Vec<Arc<HartSignals>>, HartLines) {
        let signals: Vec<Arc<HartSignals>> =
            (0..cpus).map(|_| Arc::new(HartSignals::new())).collect();
        let lines = signals
            .iter()
            .map(|s| {
                let s = s.clone();
                Box::new(move |level| s.set_line(IRQ_SEIP, level)) as PlicOutput
            })
            .collect();
        (signals, lines)
    }

    fn build(config: &RiscvMachineConfig) -> Result<RiscvMachine, MachineError> {
        build_machine(
            config,
            Box::new(Output::default()),
            InterruptWiring::Plic(hart_lines(config.cpus).1),
        )
    }

    #[test]
    fn layout_of_the_memory_tree() {
        let m = build(&config(64 * MIB, 2)).unwrap();
        let view = m.memory.view();
        let ram = view.lookup(RAM_BASE).unwrap();
        assert_eq!(
            (ram.kind, ram.region, ram.start),
            (RegionKind::Ram, m.ram, RAM_BASE)
        );
        assert_eq!(ram.end(), (RAM_BASE + 64 * MIB) as u128);
        assert!(view.lookup(RAM_BASE - 1).is_none());
        assert!(view.lookup(RAM_BASE + 64 * MIB).is_none());
        let plic = view.lookup(PLIC_BASE).unwrap();
        assert_eq!(m.tree.name(plic.region).unwrap(), PLIC_REGION);
        assert_eq!(plic.size, 0x20_2000, "two contexts");
        let uart = view.lookup(UART0_BASE + 0xff).unwrap();
        assert_eq!(m.tree.name(uart.region).unwrap(), UART_REGION);
        assert!(view.lookup(UART0_BASE + 0x100).is_none());
        assert_eq!(m.plic.as_ref().map(|p| p.contexts()), Some(2));
        assert!(m.boot.is_none());
        // The device tree shows the RAM the tree maps.
        let t = parse(&m.fdt);
        assert_eq!(
            u64s(prop(&t, "/memory@80000000", "reg")),
            [RAM_BASE, 64 * MIB]
        );
        assert_eq!(string(&t, "/chosen", "bootargs"), "console=ttyS0");
        assert_eq!(prop(&t, "/chosen", "rng-seed").len(), 32);
    }

    #[test]
    fn kernel_initrd_and_fdt_are_in_ram() {
        let kernel = kernel_image(6 * MIB, 0x5000);
        let initrd: Vec<u8> = (0..0x3001u32).map(|i| (i * 7) as u8).collect();
        let (k, i) = (TempFile::new(&kernel), TempFile::new(&initrd));
        let m = build(&RiscvMachineConfig {
            kernel: Some(k.0.clone()),
            initrd: Some(i.0.clone()),
            ..config(128 * MIB, 1)
        })
        .unwrap();
        let boot = m.boot.unwrap();
        assert_eq!(boot.entry, RAM_BASE + 2 * MIB);
        assert_eq!(boot.kernel_end, RAM_BASE + 8 * MIB);
        assert_eq!(boot.fdt_addr, RAM_BASE + 126 * MIB);
        let read = |addr: u64, len: usize| {
            let mut buf = vec![0u8; len];
            assert_eq!(m.memory.read_buf(addr, &mut buf), MemTxResult::Ok);
            buf
        };
        assert_eq!(read(boot.entry, kernel.len()), kernel);
        let (start, end) = boot.initrd.unwrap();
        assert_eq!(read(start, (end - start) as usize), initrd);
        assert_eq!(read(boot.fdt_addr, m.fdt.len()), m.fdt);
        assert!(m.fdt.len() as u64 <= FDT_MAX_SIZE);
        let t = parse(&m.fdt);
        assert_eq!(u64s(prop(&t, "/chosen", "linux,initrd-start")), [start]);
        assert_eq!(u64s(prop(&t, "/chosen", "linux,initrd-end")), [end]);
    }

    #[test]
    fn uart_interrupts_reach_the_hart_through_the_plic() {
        let out = Output::default();
        let (harts, lines) = hart_lines(2);
        let m = build_machine(
            &config(32 * MIB, 2),
            Box::new(out.clone()),
            InterruptWiring::Plic(lines),
        )
        .unwrap();
        let mem = &m.memory;
        let w32 = |addr: u64, v: u32| assert_eq!(mem.write(addr, 4, v as u64), MemTxResult::Ok);
        let r32 = |addr: u64| mem.read(addr, 4).0 as u32;
        // Output through MMIO byte stores.
        for &b in b"hi" {
            assert_eq!(mem.write(UART0_BASE, 1, b as u64), MemTxResult::Ok);
        }
        assert_eq!(*out.0.lock().unwrap(), b"hi");

        // The guest's PLIC set-up: source 10 at priority 1, enabled for
        // hart 1's context only, threshold 0.
        w32(PLIC_BASE + 4 * UART0_IRQ as u64, 1);
        w32(PLIC_BASE + 0x2000 + 0x80, 1 << UART0_IRQ);
        w32(PLIC_BASE + 0x20_1000, 0);
        // RX interrupts on in the UART.
        assert_eq!(mem.write(UART0_BASE + 1, 1, 1), MemTxResult::Ok);
        assert_eq!(harts[1].lines() & IRQ_SEIP, 0);

        m.serial.enqueue_input(b"k");
        assert_eq!(harts[1].lines() & IRQ_SEIP, IRQ_SEIP);
        assert!(harts[1].needs_attention());
        assert_eq!(harts[0].lines() & IRQ_SEIP, 0, "not enabled for hart 0");
        // Claim, service, complete.
        assert_eq!(r32(PLIC_BASE + 0x20_1004), UART0_IRQ);
        assert_eq!(harts[1].lines() & IRQ_SEIP, 0);
        assert_eq!(mem.read(UART0_BASE, 1).0, b'k' as u64);
        w32(PLIC_BASE + 0x20_1004, UART0_IRQ);
        assert_eq!(harts[1].lines() & IRQ_SEIP, 0, "nothing left");
        // Completing before servicing re-raises it at once (level).
        m.serial.enqueue_input(b"z");
        assert_eq!(r32(PLIC_BASE + 0x20_1004), UART0_IRQ);
        w32(PLIC_BASE + 0x20_1004, UART0_IRQ);
        assert_eq!(harts[1].lines() & IRQ_SEIP, IRQ_SEIP);
        assert_eq!(mem.read(UART0_BASE, 1).0, b'z' as u64);
        assert_eq!(harts[1].lines() & IRQ_SEIP, 0);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let cases: Vec<(RiscvMachineConfig, &str)> = vec![
            (config(64 * MIB, 0), "1 to 32"),
            (config(64 * MIB, 33), "1 to 32"),
            (config(MIB, 1), "at least 16 MiB"),
            (config(64 * MIB + 1, 1), "multiple of 4 KiB"),
            (config(1 << 60, 1), "more than"),
            (
                RiscvMachineConfig {
                    cmdline: "x".repeat(1024),
                    ..config(64 * MIB, 1)
                },
                "at most 1023",
            ),
            (
                RiscvMachineConfig {
                    cmdline: "a\0b".into(),
                    ..config(64 * MIB, 1)
                },
                "NUL",
            ),
            (
                RiscvMachineConfig {
                    initrd: Some("/initrd".into()),
                    ..config(64 * MIB, 1)
                },
                "without a kernel",
            ),
            (
                RiscvMachineConfig {
                    kernel: Some("/nonexistent/ember-kernel".into()),
                    ..config(64 * MIB, 1)
                },
                "reading the kernel /nonexistent/ember-kernel",
            ),
        ];
        for (config, want) in cases {
            let msg = build(&config).err().unwrap().to_string();
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }
        // The longest command line Linux takes is fine.
        check_cmdline(&"x".repeat(1023)).unwrap();
    }

    #[test]
    fn bad_kernels_and_initrds_are_refused() {
        let elf = TempFile::new(b"\x7fELF\x02\x01\x01\0");
        let err = build(&RiscvMachineConfig {
            kernel: Some(elf.0.clone()),
            ..config(64 * MIB, 1)
        })
        .err()
        .unwrap();
        assert!(
            matches!(&err, MachineError::Image { source: ImageError::Elf, path } if *path == elf.0),
            "{err}"
        );
        assert!(err.to_string().contains(&elf.0.display().to_string()));

        let big = TempFile::new(&kernel_image(20 * MIB, 0x1000));
        let err = build(&RiscvMachineConfig {
            kernel: Some(big.0.clone()),
            ..config(16 * MIB, 1)
        })
        .err()
        .unwrap();
        assert!(
            matches!(err, MachineError::Boot(BootError::KernelDoesNotFit { .. })),
            "{err}"
        );

        let kernel = TempFile::new(&kernel_image(8 * MIB, 0x1000));
        let empty = TempFile::new(&[]);
        let err = build(&RiscvMachineConfig {
            kernel: Some(kernel.0.clone()),
            initrd: Some(empty.0.clone()),
            ..config(64 * MIB, 1)
        })
        .err()
        .unwrap();
        assert!(
            matches!(err, MachineError::Boot(BootError::InitrdEmpty)),
            "{err}"
        );
        let huge = TempFile::new(&vec![0; (8 * MIB) as usize]);
        let err = build(&RiscvMachineConfig {
            kernel: Some(kernel.0.clone()),
            initrd: Some(huge.0.clone()),
            ..config(16 * MIB, 1)
        })
        .err()
        .unwrap();
        assert!(
            matches!(err, MachineError::Boot(BootError::InitrdDoesNotFit { .. })),
            "{err}"
        );
    }
}
