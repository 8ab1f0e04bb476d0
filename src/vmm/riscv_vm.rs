//! A riscv64 `virt` microVM on the software CPU: the machine from
//! `arch::riscv64`, one host thread per hart, and the shared event loop.
//!
//! One thread per hart (rather than round-robin on one thread) because harts
//! are independent most of the time, so a 2-hart guest uses both host
//! cores; shared guest memory is accessed with host atomics and LR/SC is
//! value-checked, as in QEMU's multi-threaded TCG.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::accel::tcg::riscv64::{Hart, HartStats, RiscvSystem, TcgMemoryListener};
use crate::arch::riscv64::layout::TIMEBASE_FREQ;
use crate::arch::riscv64::layout::VIRTIO_MMIO_WINDOW;
use crate::arch::riscv64::{build_machine, RiscvBoot, RiscvMachineConfig};
use crate::arch::virtio_mmio::{VirtioMmioAllocator, VirtioMmioSlot};
use crate::devices::plic::PlicLine;
use crate::devices::serial::Serial;
use crate::devices::virtio::IrqLine;
use crate::memory::{mtree_and_flatviews_text, AddressSpace, MemoryTree};
use crate::vmm::config::VmConfig;
use crate::vmm::console::SharedOutput;
use crate::vmm::event_loop::{console_target, run_event_loop, EventLoopParts};
use crate::vmm::exit::{ExitReason, ExitSignal};
use crate::vmm::live::{start_api, CpuBackend, LiveVm};
use crate::vmm::virtio::{build_virtio_devices, device_count, VirtioDevices};
use crate::vmm::vm::VmError;

/// How a riscv64 run ended.
#[derive(Debug)]
pub struct RiscvOutcome {
    pub reason: ExitReason,
    /// Per-hart counters.
    pub harts: Vec<HartStats>,
    /// From the first instruction to the end.
    pub run_time: Duration,
}

/// A riscv64 microVM on the software CPU.
pub struct RiscvVm {
    config: VmConfig,
    tree: Arc<Mutex<MemoryTree>>,
    memory: AddressSpace,
    serial: Arc<Serial>,
    system: Arc<RiscvSystem>,
    boot: Option<RiscvBoot>,
    fdt: Vec<u8>,
    exit: Arc<ExitSignal>,
    virtio: VirtioDevices,
    live: Arc<LiveVm>,
}

impl RiscvVm {
    /// Builds the machine, loads the kernel, initrd and device tree.
    pub fn new(config: VmConfig) -> Result<RiscvVm, VmError> {
        let machine_config = RiscvMachineConfig {
            memory: config.memory,
            cpus: config.cpus,
            cmdline: config.cmdline.clone(),
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            virtio: {
                let mut alloc = VirtioMmioAllocator::new(VIRTIO_MMIO_WINDOW);
                (0..device_count(&config))
                    .map_while(|_| alloc.allocate())
                    .collect()
            },
        };
        if config.firmware.is_some() {
            return Err(VmError::Arch(
                "--firmware is not supported for riscv64 guests; give a Linux Image with --kernel"
                    .into(),
            ));
        }
        let output = SharedOutput::new(config.console_output.open().map_err(VmError::Console)?);
        let machine = build_machine(&machine_config, Box::new(output.clone()))
            .map_err(|e| VmError::Arch(e.to_string()))?;
        let exit = Arc::new(ExitSignal::new().map_err(VmError::Console)?);
        let serial = machine.serial.clone();
        let console_serial = serial.clone();
        let system = RiscvSystem::new(
            machine.memory.clone(),
            &machine.harts,
            TIMEBASE_FREQ as u64,
            exit.clone(),
            Box::new(move |bytes| console_serial.write_console(bytes)),
        );
        let mut tree = machine.tree;
        tree.add_listener(
            &machine.memory,
            0,
            Box::new(TcgMemoryListener::new(&system)),
        )?;
        let plic = machine.plic.clone();
        let irq_for = |slot: &VirtioMmioSlot| -> Result<Arc<dyn IrqLine>, VmError> {
            Ok(Arc::new(PlicLine::new(plic.clone(), slot.irq)))
        };
        let virtio = build_virtio_devices(
            &config,
            &mut tree,
            machine.system,
            &machine.memory,
            &machine_config.virtio,
            &irq_for,
            Box::new(output),
        )?;
        let tree = Arc::new(Mutex::new(tree));
        let live = LiveVm::new(
            config.clone(),
            CpuBackend::Tcg {
                system: system.clone(),
            },
            &virtio.devices,
            serial.clone(),
            exit.clone(),
            tree.clone(),
            console_target(&virtio, &serial),
        );
        Ok(RiscvVm {
            config,
            tree,
            memory: machine.memory,
            serial,
            system,
            boot: machine.boot,
            fdt: machine.fdt,
            exit,
            virtio,
            live,
        })
    }

    fn lock_tree(&self) -> MutexGuard<'_, MemoryTree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device tree blob given to the guest.
    pub fn fdt(&self) -> &[u8] {
        &self.fdt
    }

    /// Writes the device tree blob to `path` (`--dump-dtb`).
    pub fn dump_dtb(&self, path: &Path) -> Result<(), VmError> {
        std::fs::write(path, &self.fdt).map_err(|source| VmError::File {
            what: "device tree dump",
            path: path.display().to_string(),
            source,
        })
    }

    /// `info mtree` and `info mtree -f`.
    pub fn mtree(&self) -> String {
        mtree_and_flatviews_text(&self.lock_tree())
    }

    /// The memory tree.
    pub fn tree(&self) -> Arc<Mutex<MemoryTree>> {
        self.tree.clone()
    }

    /// The `memory` address space.
    pub fn memory(&self) -> &AddressSpace {
        &self.memory
    }

    /// The VM's control interface (pause, resume, info, counters, ...),
    /// usable from other threads while [`RiscvVm::run`] runs.
    pub fn control(&self) -> Arc<LiveVm> {
        self.live.clone()
    }

    /// The virtio devices.
    pub fn virtio(&self) -> &VirtioDevices {
        &self.virtio
    }

    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// Runs until the guest powers off or resets, the user quits, or a
    /// signal ends it.
    pub fn run(self) -> Result<RiscvOutcome, VmError> {
        let boot = self
            .boot
            .ok_or_else(|| VmError::Arch("riscv64 guests need a kernel (--kernel Image)".into()))?;
        let started = Instant::now();
        let api = start_api(&self.config, &self.live)?;
        self.live.set_running();
        let mut threads: Vec<JoinHandle<HartStats>> = Vec::new();
        for id in 0..self.system.harts.len() {
            let system = self.system.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ember-hart{id}"))
                .spawn(move || {
                    let mut hart = Hart::new(system, id);
                    if id == 0 {
                        hart.reset_to(boot.entry, 0, boot.fdt_addr);
                    }
                    hart.thread_main()
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.system.stop_all();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(VmError::Thread(e));
                }
            }
        }
        let result = run_event_loop(
            &self.exit,
            EventLoopParts {
                input: self.config.console_input.clone(),
                deliver: console_target(&self.virtio, &self.serial),
                devices: self.virtio.subscribers(),
            },
        );
        self.system.stop_all();
        self.system.resume_all();
        self.live.set_shut_down();
        if let Some(api) = api {
            let _ = api.shutdown();
        }
        let mut harts = Vec::new();
        let mut panicked = false;
        for t in threads {
            match t.join() {
                Ok(stats) => harts.push(stats),
                Err(_) => panicked = true,
            }
        }
        result?;
        let mut reason = self
            .exit
            .reason()
            .unwrap_or_else(|| ExitReason::Error("the VM stopped without a reason".into()));
        if panicked {
            reason = ExitReason::Error("a hart thread panicked".into());
        }
        Ok(RiscvOutcome {
            reason,
            harts,
            run_time: started.elapsed(),
        })
    }
}
