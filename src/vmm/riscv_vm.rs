//! A riscv64 `virt` microVM: the machine from `arch::riscv64` on either
//! accelerator, the software CPU (any host) or KVM (riscv64 hosts). The
//! machine is the same for both; the accelerator supplies what the machine
//! needs of its harts (their device-tree description and their external
//! interrupt lines) before the machine is built, attaches to its memory
//! after, and runs the harts under the shared lifecycle
//! ([`crate::vmm::lifecycle`]).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::accel::tcg::riscv64::hart_threads::{HartStart, TcgHartThreads};
use crate::accel::tcg::riscv64::{HartState, RiscvSystem, TcgMemoryListener};
use crate::accel::tcg::signals::{HartSignals, IRQ_SEIP};
use crate::accel::AccelChoice;
use crate::arch::riscv64::cpu_description::CpuDescription;
use crate::arch::riscv64::irqchip::{IrqchipChoice, SourceLine};
use crate::arch::riscv64::layout::TIMEBASE_FREQ;
use crate::arch::riscv64::layout::VIRTIO_MMIO_WINDOW;
use crate::arch::riscv64::machine::InterruptWiring;
use crate::arch::riscv64::{build_machine, RiscvBoot, RiscvMachineConfig};
use crate::arch::virtio_mmio::{VirtioMmioAllocator, VirtioMmioSlot};
use crate::devices::plic::PlicOutput;
use crate::devices::serial::Serial;
use crate::devices::virtio::IrqLine;
use crate::memory::{mtree_and_flatviews_text, AddressSpace, MemoryTree};
use crate::vmm::config::VmConfig;
use crate::vmm::error::VmError;
use crate::vmm::event_loop::console_target;
use crate::vmm::exit::{ExitReason, ExitSignal};
use crate::vmm::lifecycle::{Accelerator, CpuCounters, LifecycleParts};
use crate::vmm::live::{CpuBackend, LiveVm, LiveVmParts};
use crate::vmm::snapshot::{LoadedSnapshot, SnapshotError};
use crate::vmm::virtio::{build_virtio_devices, device_count, MachineExtras, VirtioDevices};
use crate::vmm::vm::RestoreOptions;

/// How a riscv64 run ended.
#[derive(Debug)]
pub struct RiscvOutcome {
    pub reason: ExitReason,
    /// Per-hart (software CPU) or per-vCPU (KVM) counters.
    pub cpus: CpuCounters,
    /// From the start of the harts to the end.
    pub run_time: Duration,
    /// When the harts were started: start-up time for `--timings`.
    pub started: Instant,
    /// When the first vCPU entered `KVM_RUN` (KVM).
    pub first_run: Option<Instant>,
}

/// The accelerator side of a riscv64 VM, before it runs.
enum RiscvCpus {
    /// The software CPU; `restored` holds each hart's saved state (`None`
    /// for harts that are not started).
    Tcg {
        system: Arc<RiscvSystem>,
        restored: Option<Vec<Option<HartState>>>,
    },
    /// KVM vCPUs, created, with their boot or restored registers loaded.
    #[cfg(target_arch = "riscv64")]
    Kvm(crate::accel::kvm::riscv64::setup::RiscvKvm),
}

/// A riscv64 microVM.
pub struct RiscvVm {
    config: VmConfig,
    tree: Arc<Mutex<MemoryTree>>,
    memory: AddressSpace,
    serial: Arc<Serial>,
    cpus: RiscvCpus,
    boot: Option<RiscvBoot>,
    fdt: Vec<u8>,
    exit: Arc<ExitSignal>,
    virtio: VirtioDevices,
    live: Arc<LiveVm>,
    /// The PLIC (none with KVM's in-kernel AIA).
    plic: Option<Arc<crate::devices::plic::Plic>>,
    /// The RAM region.
    ram: crate::memory::RegionId,
    /// Built from a snapshot (nothing is booted).
    restored: bool,
}

/// Where a VM being built starts from.
enum Start {
    Boot,
    /// A software-CPU snapshot: `time` goes on from the saved value.
    TcgRestore {
        time: u64,
    },
    /// A KVM snapshot.
    #[cfg(target_arch = "riscv64")]
    KvmRestore,
}

/// Whether the KVM device at `path` opens (read-write, as KVM needs).
pub fn kvm_usable(path: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .is_ok()
}

/// The accelerator a riscv64 VM gets for `choice` on this host: KVM only
/// where the host is riscv64; `auto` means KVM when /dev/kvm can be
/// opened (the caller has said which in one line), else the software CPU.
fn accel_for(choice: AccelChoice, kvm_path: &Path) -> Result<AccelChoice, VmError> {
    match choice {
        AccelChoice::Kvm if !cfg!(target_arch = "riscv64") => Err(VmError::Arch(format!(
            "KVM cannot run riscv64 guests on this {} host; use --accel tcg",
            std::env::consts::ARCH
        ))),
        AccelChoice::Auto if cfg!(target_arch = "riscv64") && kvm_usable(kvm_path) => {
            Ok(AccelChoice::Kvm)
        }
        AccelChoice::Auto => Ok(AccelChoice::Tcg),
        other => Ok(other),
    }
}

impl RiscvVm {
    /// Builds the machine, loads the kernel, initrd and device tree.
    pub fn new(config: VmConfig) -> Result<RiscvVm, VmError> {
        Self::build(config, Start::Boot)
    }

    /// Builds the VM saved in the snapshot directory `dir` (see
    /// [`crate::vmm::snapshot`] and, for KVM snapshots,
    /// [`crate::vmm::snapshot_riscv_kvm`]): the same machine and devices
    /// (disk files and TAPs must exist again), guest memory, PLIC, UART,
    /// virtio transports with their queues, and the harts' state, with
    /// `time` going on from the saved value. [`RiscvVm::run`] then
    /// continues the guest where it stopped; the kernel is not entered
    /// again. A snapshot is restored on the accelerator it was taken on.
    pub fn restore(dir: &Path, options: RestoreOptions) -> Result<RiscvVm, VmError> {
        if crate::vmm::snapshot::saved_accel(dir).as_deref() == Some("kvm") {
            return Self::restore_kvm(dir, options);
        }
        let snapshot = LoadedSnapshot::open(dir)?;
        let state = &snapshot.state;
        // A hart state no hart could be in (a hand-edited state.json) is
        // refused before anything is built.
        for (id, saved) in state.harts.iter().enumerate() {
            let pc = match (&saved.state, saved.hsm) {
                (Some(s), _) => s.check(),
                (None, crate::vmm::snapshot::SavedHsm::StartPending { addr, .. }) => {
                    crate::accel::tcg::riscv64::hart::check_pc(addr)
                }
                (None, _) => Ok(()),
            };
            pc.map_err(|e| SnapshotError::Inconsistent(format!("hart {id}: {e}")))?;
        }
        let mut config = Self::restored_config(&state.config, &options)?;
        config.accel = AccelChoice::Tcg;
        let mut vm = Self::build(config, Start::TcgRestore { time: state.time })?;
        let ram = vm.lock_tree().ram_block(vm.ram)?;
        snapshot.load_memory(&ram)?;
        vm.restore_machine(&state.devices, &state.uart, &state.plic)?;
        #[allow(irrefutable_let_patterns)] // riscv64 hosts also have KVM
        if let RiscvCpus::Tcg { system, restored } = &mut vm.cpus {
            for (shared, saved) in system.harts.iter().zip(&state.harts) {
                shared.set_hsm(saved.hsm.into());
            }
            *restored = Some(
                (0..state.harts.len())
                    .map(|id| state.hart_state(id))
                    .collect(),
            );
        }
        Ok(vm)
    }

    #[cfg(not(target_arch = "riscv64"))]
    fn restore_kvm(dir: &Path, _: RestoreOptions) -> Result<RiscvVm, VmError> {
        Err(VmError::Arch(format!(
            "{} holds a snapshot of a riscv64 VM under KVM, which only a riscv64 host can \
             restore",
            dir.display()
        )))
    }

    #[cfg(target_arch = "riscv64")]
    fn restore_kvm(dir: &Path, options: RestoreOptions) -> Result<RiscvVm, VmError> {
        let snapshot = crate::vmm::snapshot_riscv_kvm::open(dir)?;
        let state = &snapshot.state;
        let mut config = Self::restored_config(&state.config, &options)?;
        config.accel = AccelChoice::Kvm;
        // The saved interrupt controller is the PLIC.
        config.riscv_irqchip = IrqchipChoice::Plic;
        let vm = Self::build(config, Start::KvmRestore)?;
        let ram = vm.lock_tree().ram_block(vm.ram)?;
        snapshot.load_memory(&ram)?;
        vm.restore_machine(&state.devices, &state.uart, &state.plic)?;
        if let RiscvCpus::Kvm(kvm) = &vm.cpus {
            kvm.load_restored(&state.vcpus)?;
        }
        Ok(vm)
    }

    /// The configuration of a restored VM: the saved machine, with the
    /// host-side settings from `options`.
    fn restored_config(
        saved: &crate::vmm::snapshot::SavedConfig,
        options: &RestoreOptions,
    ) -> Result<VmConfig, VmError> {
        let base = VmConfig {
            arch: crate::arch::GuestArch::Riscv64,
            console_input: options.console_input.clone(),
            console_output: options.console_output.clone(),
            ..VmConfig::default()
        };
        let mut config = saved
            .with_overrides(&options.disks, &options.nets)?
            .apply(base)?;
        config.api_socket = options.api_socket.clone();
        config.tcg_jit = options.tcg_jit;
        config.confinement = options.confinement.clone();
        Ok(config)
    }

    /// Loads the saved devices, UART and PLIC.
    fn restore_machine(
        &self,
        devices: &[crate::vmm::snapshot::SavedDevice],
        uart: &crate::devices::serial::SerialSnapshot,
        plic: &crate::devices::plic::PlicState,
    ) -> Result<(), VmError> {
        crate::vmm::snapshot::restore_devices(&self.virtio.devices, devices)?;
        crate::vmm::snapshot::restore_uart(&self.serial, uart)?;
        // Last: the devices above drove their PLIC inputs as they came
        // back; the saved registers are the truth. (Snapshots are taken
        // with the PLIC only, and restored with it.)
        self.plic
            .as_ref()
            .ok_or_else(|| SnapshotError::Inconsistent("this VM has no PLIC".into()))?
            .restore_state(plic)
            .map_err(|e| SnapshotError::Device {
                name: "plic".into(),
                reason: e.to_string(),
            })?;
        Ok(())
    }

    fn build(config: VmConfig, start: Start) -> Result<RiscvVm, VmError> {
        let mut config = config.with_macs_picked();
        let restoring = !matches!(start, Start::Boot);
        config.accel = accel_for(config.accel, &config.kvm_path)?;
        if config.firmware.is_some() {
            return Err(VmError::Arch(
                "--firmware is not supported for riscv64 guests; give a Linux Image with --kernel"
                    .into(),
            ));
        }
        let exit = Arc::new(ExitSignal::new().map_err(VmError::Console)?);
        let output = config
            .console_output
            .open(config.confinement.seccomp)
            .map_err(VmError::Console)?;

        // What the machine needs of the accelerator: how to describe the
        // harts and how to drive their interrupt lines.
        #[cfg(target_arch = "riscv64")]
        let mut kvm = None;
        let signals: Vec<Arc<HartSignals>>;
        let (cpu, wiring): (CpuDescription, InterruptWiring) = match config.accel {
            #[cfg(target_arch = "riscv64")]
            AccelChoice::Kvm => {
                let (k, cpu, wiring) = crate::accel::kvm::riscv64::setup::RiscvKvm::open(
                    &config.kvm_path,
                    config.cpus,
                    config.riscv_irqchip,
                    &exit,
                )?;
                kvm = Some(k);
                signals = Vec::new();
                (cpu, wiring)
            }
            _ => {
                if config.riscv_irqchip == IrqchipChoice::Aia {
                    return Err(VmError::Arch(
                        "--irqchip aia is KVM's in-kernel interrupt controller: it needs \
                         --accel kvm on a riscv64 host (the software CPU uses the PLIC)"
                            .into(),
                    ));
                }
                signals = (0..config.cpus)
                    .map(|_| Arc::new(HartSignals::new()))
                    .collect();
                let lines = signals
                    .iter()
                    .map(|hart| {
                        let hart = hart.clone();
                        Box::new(move |level| hart.set_line(IRQ_SEIP, level)) as PlicOutput
                    })
                    .collect();
                (CpuDescription::software(), InterruptWiring::Plic(lines))
            }
        };

        let machine_config = RiscvMachineConfig {
            memory: config.memory,
            cpus: config.cpus,
            cmdline: config.cmdline.clone(),
            // A restore loads guest memory instead.
            kernel: config.kernel.clone().filter(|_| !restoring),
            initrd: config.initrd.clone().filter(|_| !restoring),
            // The devices asked for, plus the power key (virtio-input, the
            // power button of this ACPI-less machine) if a slot is left.
            virtio: {
                let mut alloc = VirtioMmioAllocator::new(VIRTIO_MMIO_WINDOW);
                (0..device_count(&config) + 1)
                    .map_while(|_| alloc.allocate())
                    .collect()
            },
            cpu,
        };
        let machine = build_machine(&machine_config, Box::new(output.clone()), wiring)
            .map_err(|e| VmError::Arch(e.to_string()))?;
        let serial = machine.serial.clone();
        let mut tree = machine.tree;

        // The accelerator attaches to the machine's memory.
        let cpus = match config.accel {
            #[cfg(target_arch = "riscv64")]
            AccelChoice::Kvm => {
                let mut k = kvm
                    .take()
                    .ok_or_else(|| VmError::Arch("KVM was not opened".into()))?;
                k.attach(&mut tree, &machine.memory)?;
                if let (Some(boot), false) = (&machine.boot, restoring) {
                    k.load_boot(boot)?;
                }
                RiscvCpus::Kvm(k)
            }
            _ => {
                let console_serial = serial.clone();
                let time = match start {
                    Start::TcgRestore { time } => time,
                    _ => 0,
                };
                let system = RiscvSystem::with_time(
                    machine.memory.clone(),
                    &signals,
                    TIMEBASE_FREQ as u64,
                    exit.clone(),
                    Box::new(move |bytes| console_serial.write_console(bytes)),
                    time,
                );
                tree.add_listener(
                    &machine.memory,
                    0,
                    Box::new(TcgMemoryListener::new(&system)),
                )?;
                RiscvCpus::Tcg {
                    system,
                    restored: None,
                }
            }
        };

        let wired = machine.wired.clone();
        let irq_for = |slot: &VirtioMmioSlot| -> Result<Arc<dyn IrqLine>, VmError> {
            Ok(Arc::new(SourceLine::new(wired.clone(), slot.irq)))
        };
        let virtio = build_virtio_devices(
            &config,
            &mut tree,
            machine.system,
            &machine.memory,
            &machine_config.virtio,
            &irq_for,
            MachineExtras {
                console_output: Box::new(output.clone()),
                power_key: machine_config.virtio.len() > device_count(&config),
            },
        )?;
        let ram_block = tree.ram_block(machine.ram)?;
        let tree = Arc::new(Mutex::new(tree));
        let backend = match &cpus {
            RiscvCpus::Tcg { system, .. } => CpuBackend::Tcg {
                system: system.clone(),
                plic: machine.plic.clone().ok_or_else(|| {
                    VmError::Arch("the software CPU's machine has no PLIC".into())
                })?,
                ram: ram_block,
            },
            #[cfg(target_arch = "riscv64")]
            RiscvCpus::Kvm(k) => CpuBackend::Kvm {
                control: k.control.clone(),
                slots: Mutex::new(k.slots.clone()),
                exits: Mutex::new(Vec::new()),
                snapshot: Mutex::new(Some(crate::vmm::live::KvmSnapshotParts::Riscv(Arc::new(
                    crate::vmm::snapshot_riscv_kvm::RiscvKvmSnapshotParts {
                        ram: ram_block,
                        plic: machine.plic.clone(),
                    },
                )))),
            },
        };
        let live = LiveVm::new(LiveVmParts {
            config: config.clone(),
            cpu: backend,
            devices: &virtio.devices,
            console_output: output.clone(),
            serial: serial.clone(),
            exit: exit.clone(),
            tree: tree.clone(),
            input: console_target(&virtio, &serial),
            power_button: virtio
                .power_key
                .clone()
                .map(|key| Box::new(move || key.press()) as crate::vmm::live::PowerButton),
        });
        Ok(RiscvVm {
            config,
            tree,
            memory: machine.memory,
            serial,
            cpus,
            boot: machine.boot,
            fdt: machine.fdt,
            exit,
            virtio,
            live,
            plic: machine.plic,
            ram: machine.ram,
            restored: restoring,
        })
    }

    fn lock_tree(&self) -> MutexGuard<'_, MemoryTree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The accelerator this VM runs on: `kvm` or `tcg`.
    pub fn accel_name(&self) -> &'static str {
        match self.cpus {
            RiscvCpus::Tcg { .. } => "tcg",
            #[cfg(target_arch = "riscv64")]
            RiscvCpus::Kvm(_) => "kvm",
        }
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

    /// A probe for how much guest RAM is resident, in KiB (for the VMM's
    /// own memory figure: resident memory minus guest RAM).
    pub fn guest_ram_resident_kib_probe(&self) -> impl Fn() -> u64 {
        let block = self.lock_tree().ram_block(self.ram).ok();
        move || block.as_ref().map_or(0, |b| b.resident_bytes() / 1024)
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
        let seccomp = self.config.confinement.seccomp;
        if self.boot.is_none() && !self.restored {
            return Err(VmError::Arch(
                "riscv64 guests need a kernel (--kernel Image)".into(),
            ));
        }
        let mut cpus: Box<dyn Accelerator> = match self.cpus {
            RiscvCpus::Tcg { system, restored } => {
                let start = match (restored, self.boot) {
                    (Some(states), _) => HartStart::Restored(states),
                    (None, Some(boot)) => HartStart::Boot(boot),
                    (None, None) => {
                        return Err(VmError::Arch(
                            "riscv64 guests need a kernel (--kernel Image)".into(),
                        ))
                    }
                };
                Box::new(TcgHartThreads::new(
                    system,
                    start,
                    self.config.tcg_jit,
                    seccomp,
                ))
            }
            #[cfg(target_arch = "riscv64")]
            RiscvCpus::Kvm(kvm) => {
                let console_serial = self.serial.clone();
                Box::new(kvm.into_threads(
                    self.memory.clone(),
                    Arc::new(move |bytes: &[u8]| console_serial.write_console(bytes)),
                    self.exit.clone(),
                    self.live.clone(),
                    seccomp,
                ))
            }
        };
        let outcome = crate::vmm::lifecycle::run(
            LifecycleParts {
                config: &self.config,
                live: &self.live,
                exit: &self.exit,
                virtio: &self.virtio,
                serial: &self.serial,
            },
            cpus.as_mut(),
        )?;
        Ok(RiscvOutcome {
            reason: outcome.reason,
            cpus: outcome.cpus,
            run_time: outcome.ended.duration_since(outcome.started),
            started: outcome.started,
            first_run: outcome.first_run,
        })
    }
}
