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

use crate::accel::tcg::riscv64::{Hart, HartState, HartStats, RiscvSystem, TcgMemoryListener};
use crate::arch::riscv64::layout::TIMEBASE_FREQ;
use crate::arch::riscv64::layout::VIRTIO_MMIO_WINDOW;
use crate::arch::riscv64::{build_machine, RiscvBoot, RiscvMachineConfig};
use crate::arch::virtio_mmio::{VirtioMmioAllocator, VirtioMmioSlot};
use crate::devices::plic::PlicLine;
use crate::devices::serial::Serial;
use crate::devices::virtio::IrqLine;
use crate::memory::{mtree_and_flatviews_text, AddressSpace, MemoryTree};
use crate::vmm::config::VmConfig;
use crate::vmm::console::{ConsoleInput, ConsoleOutput};
use crate::vmm::error::VmError;
use crate::vmm::event_loop::{console_target, run_event_loop, EventLoopParts};
use crate::vmm::exit::{ExitReason, ExitSignal};
use crate::vmm::landlock_rules::confine_filesystem;
use crate::vmm::live::{start_api, CpuBackend, LiveVm, LiveVmParts};
use crate::vmm::seccomp::{confine_thread, ThreadKind};
use crate::vmm::snapshot::{LoadedSnapshot, SnapshotError};
use crate::vmm::virtio::{build_virtio_devices, device_count, MachineExtras, VirtioDevices};

/// How a riscv64 run ended.
#[derive(Debug)]
pub struct RiscvOutcome {
    pub reason: ExitReason,
    /// Per-hart counters.
    pub harts: Vec<HartStats>,
    /// From the first instruction to the end.
    pub run_time: Duration,
    /// When the harts were started (the first instruction follows at
    /// once): start-up time for `--timings`.
    pub started: Instant,
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
    plic: Arc<crate::devices::plic::Plic>,
    /// The RAM region.
    ram: crate::memory::RegionId,
    /// A restored VM: each hart's saved state (`None` for harts that are
    /// not started); the harts start from these instead of the kernel.
    restored: Option<Vec<Option<HartState>>>,
}

/// What a restore takes from the caller rather than from the snapshot:
/// where the console goes (host-side settings; the machine itself is
/// rebuilt exactly as saved).
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub console_input: ConsoleInput,
    pub console_output: ConsoleOutput,
    /// Serve the control API here (`--api-socket`).
    pub api_socket: Option<std::path::PathBuf>,
    /// The software CPU's compile policy (`--tcg-jit`): a property of the
    /// host side, not of the saved machine.
    pub tcg_jit: crate::accel::tcg::riscv64::jit::JitPolicy,
    /// Disks to use instead of the saved ones (`--disk` at restore; see
    /// [`crate::vmm::snapshot::SavedConfig::with_overrides`]).
    pub disks: Vec<crate::vmm::config::DiskSpec>,
    /// TAPs to use instead of the saved ones, by position.
    pub nets: Vec<crate::vmm::config::NetSpec>,
    /// How the VMM confines itself (`--seccomp`, `--landlock`,
    /// `--snapshot-dir`): also a property of the host side.
    pub confinement: crate::vmm::config::Confinement,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            console_input: ConsoleInput::Stdin,
            console_output: ConsoleOutput::Stdout,
            api_socket: None,
            tcg_jit: Default::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            confinement: Default::default(),
        }
    }
}

impl RiscvVm {
    /// Builds the machine, loads the kernel, initrd and device tree.
    pub fn new(config: VmConfig) -> Result<RiscvVm, VmError> {
        Self::build(config, None)
    }

    /// Builds the VM saved in the snapshot directory `dir` (see
    /// [`crate::vmm::snapshot`]): the same machine and devices (disk files
    /// and TAPs must exist again), guest memory, PLIC, UART, virtio
    /// transports with their queues, and the harts' state, with `time`
    /// going on from the saved value. [`RiscvVm::run`] then continues the
    /// guest where it stopped; the kernel is not entered again.
    pub fn restore(dir: &Path, options: RestoreOptions) -> Result<RiscvVm, VmError> {
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
        let base = VmConfig {
            arch: crate::arch::GuestArch::Riscv64,
            console_input: options.console_input,
            console_output: options.console_output,
            ..VmConfig::default()
        };
        let mut config = state
            .config
            .with_overrides(&options.disks, &options.nets)?
            .apply(base)?;
        config.api_socket = options.api_socket;
        config.tcg_jit = options.tcg_jit;
        config.confinement = options.confinement;
        let mut vm = Self::build(config, Some(state.time))?;
        let ram = {
            let tree = vm.lock_tree();
            tree.ram_block(vm.ram)?
        };
        snapshot.load_memory(&ram)?;
        crate::vmm::snapshot::restore_devices(&vm.virtio.devices, &state.devices)?;
        crate::vmm::snapshot::restore_uart(&vm.serial, &state.uart)?;
        // Last: the devices above drove their PLIC inputs as they came
        // back; the saved registers are the truth.
        vm.plic
            .restore_state(&state.plic)
            .map_err(|e| SnapshotError::Device {
                name: "plic".into(),
                reason: e.to_string(),
            })?;
        for (shared, saved) in vm.system.harts.iter().zip(&state.harts) {
            shared.set_hsm(saved.hsm.into());
        }
        vm.restored = Some(
            (0..state.harts.len())
                .map(|id| state.hart_state(id))
                .collect(),
        );
        Ok(vm)
    }

    /// `time_at_start`: the `time` value to start from (a restore).
    fn build(config: VmConfig, time_at_start: Option<u64>) -> Result<RiscvVm, VmError> {
        let restoring = time_at_start.is_some();
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
        };
        if config.firmware.is_some() {
            return Err(VmError::Arch(
                "--firmware is not supported for riscv64 guests; give a Linux Image with --kernel"
                    .into(),
            ));
        }
        let output = config
            .console_output
            .open(config.confinement.seccomp)
            .map_err(VmError::Console)?;
        let machine = build_machine(&machine_config, Box::new(output.clone()))
            .map_err(|e| VmError::Arch(e.to_string()))?;
        let exit = Arc::new(ExitSignal::new().map_err(VmError::Console)?);
        let serial = machine.serial.clone();
        let console_serial = serial.clone();
        let system = RiscvSystem::with_time(
            machine.memory.clone(),
            &machine.harts,
            TIMEBASE_FREQ as u64,
            exit.clone(),
            Box::new(move |bytes| console_serial.write_console(bytes)),
            time_at_start.unwrap_or(0),
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
            MachineExtras {
                console_output: Box::new(output.clone()),
                power_key: machine_config.virtio.len() > device_count(&config),
            },
        )?;
        let ram_block = tree.ram_block(machine.ram)?;
        let tree = Arc::new(Mutex::new(tree));
        let live = LiveVm::new(LiveVmParts {
            config: config.clone(),
            cpu: CpuBackend::Tcg {
                system: system.clone(),
                plic: machine.plic.clone(),
                ram: ram_block,
            },
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
            system,
            boot: machine.boot,
            fdt: machine.fdt,
            exit,
            virtio,
            live,
            plic: machine.plic,
            ram: machine.ram,
            restored: None,
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
        let restored = self.restored.clone();
        let boot = match (&restored, self.boot) {
            (Some(_), _) => None,
            (None, Some(boot)) => Some(boot),
            (None, None) => {
                return Err(VmError::Arch(
                    "riscv64 guests need a kernel (--kernel Image)".into(),
                ))
            }
        };
        let started = Instant::now();
        let jit = self.config.tcg_jit;
        // The API binds its socket first; its acceptor confines itself.
        let api = start_api(&self.config, &self.live)?;
        confine_filesystem(&self.config)?;
        let seccomp = self.config.confinement.seccomp;
        self.live.set_running();
        let mut threads: Vec<JoinHandle<HartStats>> = Vec::new();
        for id in 0..self.system.harts.len() {
            let system = self.system.clone();
            let saved = restored.as_ref().and_then(|r| r.get(id).cloned().flatten());
            let spawned = std::thread::Builder::new()
                .name(format!("ember-hart{id}"))
                .spawn(move || {
                    let exit = system.exit.clone();
                    let mut hart = Hart::new(system, id);
                    hart.set_jit_policy(jit);
                    // The state is set before the first instruction: a
                    // restored hart 0 does not enter the kernel again.
                    match (saved, boot) {
                        (Some(state), _) => hart.set_state(&state),
                        (None, Some(boot)) if id == 0 => {
                            hart.reset_to(boot.entry, 0, boot.fdt_addr)
                        }
                        _ => {}
                    }
                    // The code arena is mapped before the filter, which
                    // refuses new executable mappings.
                    hart.map_code_arena();
                    if let Err(e) = confine_thread(ThreadKind::Hart, seccomp) {
                        exit.request(ExitReason::Error(format!("hart {id}: {e}")));
                        return HartStats::default();
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
                seccomp: self.config.confinement.seccomp,
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
            started,
        })
    }
}
