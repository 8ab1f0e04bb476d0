//! An x86_64 microVM: the PC-style memory tree, the legacy devices on it,
//! KVM underneath, the vCPU threads and the event loop that waits for the
//! end.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VcpuFd;

use crate::accel::kvm::ioeventfd::{IoEventBus, IoEventFdState, KvmIoEventFdListener};
use crate::accel::kvm::kick::{install_kick_handler, VcpuControl};
use crate::accel::kvm::memory::KvmMemory;
use crate::accel::kvm::state::{restore_cpuid, restore_vcpu, restore_vm, VcpuStateCaps};
use crate::accel::kvm::vcpu::VcpuStats;
use crate::accel::kvm::vcpu_threads::{KvmVcpuParts, KvmVcpuThreads};
use crate::accel::kvm::KvmAccel;
use crate::accel::AccelChoice;
use crate::arch::virtio_mmio::{VirtioMmioAllocator, VirtioMmioSlot};
use crate::arch::x86_64::acpi::{setup_acpi, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT};
use crate::arch::x86_64::boot::{check_cmdline, load_linux};
use crate::arch::x86_64::cpuid::setup_cpuid;
use crate::arch::x86_64::lapic::setup_lapic;
use crate::arch::x86_64::layout::{FIRMWARE_MAX_SIZE, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::arch::x86_64::layout::{POWER_BUTTON_GSI, VIRTIO_MMIO_WINDOW};
use crate::arch::x86_64::memory_map::{build_pc_memory, e820_from_view, map_firmware, PcMemory};
use crate::arch::x86_64::mptable::setup_mptable;
use crate::arch::x86_64::regs::{setup_boot_vcpu, setup_secondary_vcpu};
use crate::devices::debug_exit::DebugExit;
use crate::devices::ember_info::{EmberInfo, EMBER_INFO_ADDR, EMBER_INFO_LEN};
use crate::devices::i8042::I8042;
use crate::devices::irq::EventFdTrigger;
use crate::devices::port80::Port80;
use crate::devices::power::{
    PowerControl, SleepControl, PM1A_CNT_LEN, PM1A_CNT_PORT, SLEEP_CONTROL_LEN,
};
use crate::devices::serial::Serial;
use crate::devices::virtio::IrqLine;
use crate::memory::{
    mtree_and_flatviews_text, AddressSpace, GuestRam, MemoryTree, RegionOps, Unassigned,
};
use crate::vmm::config::VmConfig;
use crate::vmm::error::VmError;
use crate::vmm::event_loop::console_target;
use crate::vmm::exit::{ExitReason, ExitSignal};
use crate::vmm::host_file::{self, Symlinks};
use crate::vmm::lifecycle::{CpuCounters, LifecycleParts};
use crate::vmm::live::{CpuBackend, KvmSnapshotParts, LiveVm, LiveVmParts};
use crate::vmm::snapshot::SnapshotError;
use crate::vmm::snapshot_x86::{X86SnapshotParts, X86SnapshotState};
use crate::vmm::virtio::{build_virtio_devices, device_count, MachineExtras, VirtioDevices};
use crate::vmm::vm::RestoreOptions;

/// The firmware Ember boots when given neither a kernel nor a firmware
/// image: resources/guests/hello.s, assembled by build.rs.
pub const BUILTIN_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello.bin"));

/// COM1.
pub const SERIAL_PORT: u64 = 0x3f8;
/// COM1's interrupt line.
pub const SERIAL_IRQ: u32 = 4;

/// The KVM side of a prepared VM.
struct KvmParts {
    accel: KvmAccel,
    slots: KvmMemory,
    vcpus: Vec<VcpuFd>,
}

/// How a run ended.
#[derive(Debug)]
pub struct X86Outcome {
    pub reason: ExitReason,
    /// Per-vCPU counters.
    pub vcpus: Vec<VcpuStats>,
    /// From `Vm::new` to the first `KVM_RUN`.
    pub startup: Option<std::time::Duration>,
    /// When the first vCPU entered `KVM_RUN`.
    pub first_run: Option<Instant>,
}

/// An x86_64 microVM.
pub struct X86Vm {
    config: VmConfig,
    created: Instant,
    exit: Arc<ExitSignal>,
    tree: Arc<Mutex<MemoryTree>>,
    memory: AddressSpace,
    io: AddressSpace,
    pc: PcMemory,
    serial: Arc<Serial>,
    control: Arc<VcpuControl>,
    kvm: Option<KvmParts>,
    /// The kernel command line with the virtio-mmio entries appended.
    cmdline: String,
    virtio: VirtioDevices,
    /// Each virtio transport's interrupt eventfd and its GSI, for irqfds.
    virtio_irqs: Vec<(EventFdTrigger, u32)>,
    ioeventfds: Option<Arc<IoEventFdState>>,
    /// What the control API sees.
    live: Arc<LiveVm>,
    /// The ACPI power button's interrupt line.
    power_button: EventFdTrigger,
    /// The keyboard controller (a snapshot saves it).
    i8042: Arc<I8042>,
    /// A VM being restored: the saved state [`X86Vm::prepare`] loads into KVM
    /// instead of booting.
    restored: Option<Box<X86SnapshotState>>,
}

fn file_error<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> VmError + 'a {
    move |source| VmError::File {
        what,
        path: path.display().to_string(),
        source,
    }
}

impl X86Vm {
    /// Builds the machine's memory tree and devices. Nothing touches KVM
    /// yet, so `ember run --print-mtree` works anywhere.
    pub fn new(config: VmConfig) -> Result<X86Vm, VmError> {
        let created = Instant::now();
        let config = config.with_macs_picked();
        if config.cpus == 0 || config.cpus > crate::vmm::config::MAX_CPUS {
            return Err(VmError::Cpus(config.cpus));
        }
        if config.accel == AccelChoice::Tcg {
            return Err(VmError::NoTcg);
        }
        if config.riscv_irqchip != crate::arch::riscv64::irqchip::IrqchipChoice::Auto {
            return Err(VmError::Arch(
                "--irqchip chooses riscv64's interrupt controller; x86_64 guests always get \
                 KVM's in-kernel one"
                    .into(),
            ));
        }
        let exit = Arc::new(ExitSignal::new().map_err(VmError::Console)?);
        let output = config
            .console_output
            .open(config.confinement.seccomp)
            .map_err(VmError::Console)?;
        let mut tree = MemoryTree::new();
        let i8042 = Arc::new(I8042::new(exit.clone()));
        let (pc, serial) = tree.transaction(|tree| -> Result<_, VmError> {
            let pc =
                build_pc_memory(tree, config.memory).map_err(|e| VmError::Arch(e.to_string()))?;
            let trigger = EventFdTrigger::new().map_err(VmError::Console)?;
            let serial = Arc::new(Serial::new(trigger, Box::new(output.clone())));
            let io_devices: Vec<(&str, u64, u128, Arc<dyn RegionOps>)> = vec![
                ("serial", SERIAL_PORT, 8, serial.clone()),
                (
                    "i8042",
                    crate::devices::i8042::I8042_PORT,
                    crate::devices::i8042::I8042_LEN,
                    i8042.clone(),
                ),
                ("ioport80", 0x80, 1, Arc::new(Port80::default())),
                (
                    "pm1a-cnt",
                    PM1A_CNT_PORT,
                    PM1A_CNT_LEN,
                    Arc::new(PowerControl::new(exit.clone())),
                ),
                (
                    "acpi-sleep-control",
                    SLEEP_CONTROL_PORT,
                    SLEEP_CONTROL_LEN,
                    Arc::new(SleepControl::new(exit.clone(), S5_SLEEP_TYPE)),
                ),
            ];
            for (name, port, len, ops) in io_devices {
                let id = tree.new_io(name, len, Some(ops))?;
                tree.add_subregion(pc.io, port, id)?;
            }
            if let Some(port) = config.debug_exit {
                let dev = Arc::new(DebugExit::new(exit.clone()));
                let id = tree.new_io(
                    "isa-debug-exit",
                    crate::devices::debug_exit::DEBUG_EXIT_LEN,
                    Some(dev),
                )?;
                tree.add_subregion(pc.io, port as u64, id)?;
            }
            let info = tree.new_io(
                "ember-info",
                EMBER_INFO_LEN,
                Some(Arc::new(EmberInfo::new(config.cpus as u32))),
            )?;
            tree.add_subregion(pc.system, EMBER_INFO_ADDR, info)?;
            let firmware = match (&config.firmware, &config.kernel) {
                (Some(path), _) => Some(
                    host_file::read_regular(path, FIRMWARE_MAX_SIZE, Symlinks::Follow)
                        .map_err(file_error("firmware", path))?,
                ),
                (None, None) => Some(BUILTIN_GUEST.to_vec()),
                (None, Some(_)) => None,
            };
            if let Some(image) = firmware {
                map_firmware(tree, pc.system, &image).map_err(|e| VmError::Arch(e.to_string()))?;
            }
            Ok((pc, serial))
        })?;
        let memory = tree.add_address_space("memory", pc.system, Unassigned::Zero)?;
        let io = tree.add_address_space("I/O", pc.io, Unassigned::AllOnes)?;

        let mut alloc = VirtioMmioAllocator::new(VIRTIO_MMIO_WINDOW);
        let slots: Vec<_> = (0..device_count(&config))
            .map_while(|_| alloc.allocate())
            .collect();
        let triggers = slots
            .iter()
            .map(|_| EventFdTrigger::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(VmError::Console)?;
        let irq_for = |slot: &VirtioMmioSlot| -> Result<Arc<dyn IrqLine>, VmError> {
            Ok(Arc::new(triggers[slot.index].clone()))
        };
        let virtio = build_virtio_devices(
            &config,
            &mut tree,
            pc.system,
            &memory,
            &slots,
            &irq_for,
            MachineExtras {
                console_output: Box::new(output.clone()),
                power_key: false,
            },
        )?;
        let virtio_irqs = triggers
            .into_iter()
            .zip(&slots)
            .map(|(t, s)| (t, s.irq))
            .collect();
        let mut cmdline = config.cmdline.clone();
        if !virtio.devices.is_empty() {
            cmdline = format!("{} {}", cmdline.trim_end(), virtio.cmdline_entries());
        }
        if config.kernel.is_some() {
            check_cmdline(&cmdline).map_err(|e| VmError::Cmdline(e.to_string()))?;
        }
        let tree = Arc::new(Mutex::new(tree));
        let control = Arc::new(VcpuControl::new());
        // The ACPI power button's GED interrupt (an irqfd once KVM is set
        // up; without an irqchip the press goes nowhere).
        let power_button = EventFdTrigger::new().map_err(VmError::Console)?;
        let live = LiveVm::new(LiveVmParts {
            config: config.clone(),
            cpu: CpuBackend::Kvm {
                control: control.clone(),
                slots: Mutex::new(None),
                exits: Mutex::new(Vec::new()),
                snapshot: Mutex::new(None),
            },
            devices: &virtio.devices,
            console_output: output.clone(),
            serial: serial.clone(),
            exit: exit.clone(),
            tree: tree.clone(),
            input: console_target(&virtio, &serial),
            power_button: Some({
                let button = power_button.clone();
                Box::new(move || button.event().write(1))
            }),
        });
        Ok(X86Vm {
            config,
            created,
            exit,
            tree,
            memory,
            io,
            pc,
            serial,
            control,
            kvm: None,
            cmdline,
            virtio,
            virtio_irqs,
            ioeventfds: None,
            live,
            power_button,
            i8042,
            restored: None,
        })
    }

    /// Builds the VM saved in the x86_64 snapshot directory `dir` (see
    /// [`crate::vmm::snapshot_x86`]) and loads its state: the same machine
    /// and devices (disk files and TAPs must exist again), guest memory,
    /// UART, i8042, virtio transports with their queues, then in KVM the
    /// irqchip, PIT, clock and every vCPU. [`X86Vm::run`] continues the guest
    /// where it stopped; nothing is booted.
    pub fn restore(dir: &std::path::Path, options: RestoreOptions) -> Result<X86Vm, VmError> {
        let snapshot = crate::vmm::snapshot_x86::open(dir)?;
        let state = &snapshot.state;
        let base = VmConfig {
            arch: crate::arch::GuestArch::X86_64,
            console_input: options.console_input,
            console_output: options.console_output,
            ..VmConfig::default()
        };
        let mut config = state
            .config
            .with_overrides(&options.disks, &options.nets)?
            .apply(base)?;
        config.api_socket = options.api_socket;
        config.confinement = options.confinement;
        config.firmware = state.x86.firmware.clone();
        config.debug_exit = state.x86.debug_exit;
        config.irqchip = state.x86.irqchip;
        let mut vm = X86Vm::new(config)?;
        let ram = vm.lock_tree().ram_block(vm.pc.ram)?;
        snapshot.load_memory(&ram)?;
        crate::vmm::snapshot::restore_devices(&vm.virtio.devices, &state.devices)?;
        crate::vmm::snapshot::restore_uart(&vm.serial, &state.uart)?;
        vm.i8042.restore_state(&state.i8042);
        // Loading the devices may have raised their interrupt lines. Those
        // are not new interrupts: the saved irqchip holds whatever the
        // guest had not taken yet, so the edges are dropped before the
        // eventfds become irqfds.
        let _ = vm.serial.irq().drain();
        for (trigger, _) in &vm.virtio_irqs {
            let _ = trigger.drain();
        }
        let _ = vm.power_button.drain();
        vm.restored = Some(Box::new(snapshot.state));
        vm.prepare()?;
        Ok(vm)
    }

    /// The memory tree, for tests and introspection.
    pub fn tree(&self) -> Arc<Mutex<MemoryTree>> {
        self.tree.clone()
    }

    fn lock_tree(&self) -> MutexGuard<'_, MemoryTree> {
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `memory` address space.
    pub fn memory(&self) -> &AddressSpace {
        &self.memory
    }

    /// The `I/O` address space.
    pub fn io(&self) -> &AddressSpace {
        &self.io
    }

    /// The machine's regions.
    pub fn layout(&self) -> &PcMemory {
        &self.pc
    }

    /// `info mtree` and `info mtree -f` of the machine.
    pub fn mtree(&self) -> String {
        mtree_and_flatviews_text(&self.lock_tree())
    }

    /// A probe for how much guest RAM is resident (in KiB), to subtract
    /// from the process's resident size when reporting the VMM's own.
    pub fn guest_ram_resident_kib_probe(&self) -> impl Fn() -> u64 {
        let block = self.lock_tree().ram_block(self.pc.ram).ok();
        move || block.as_ref().map_or(0, |b| b.resident_bytes() / 1024)
    }

    /// How the VM is told to stop and how it reports why.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// The VM's control interface (pause, resume, info, counters, ...),
    /// usable from other threads while [`X86Vm::run`] runs.
    pub fn control(&self) -> Arc<LiveVm> {
        self.live.clone()
    }

    /// The virtio devices.
    pub fn virtio(&self) -> &VirtioDevices {
        &self.virtio
    }

    /// ioeventfds registered with KVM, once [`X86Vm::prepare`] ran.
    pub fn ioeventfds_registered(&self) -> Option<u64> {
        self.ioeventfds.as_ref().map(|s| s.registered())
    }

    /// The KVM slot manager, once [`X86Vm::prepare`] ran.
    pub fn kvm_memory(&self) -> Option<KvmMemory> {
        self.kvm.as_ref().map(|k| k.slots.clone())
    }

    /// Pauses and stops the vCPUs.
    pub fn vcpu_control(&self) -> Arc<VcpuControl> {
        self.control.clone()
    }

    /// Makes guest writes to `addr` signal `event` inside KVM without an
    /// exit (KVM_IOEVENTFD); needs [`X86Vm::prepare`] first.
    pub fn register_ioeventfd(
        &self,
        event: &vmm_sys_util::eventfd::EventFd,
        addr: kvm_ioctls::IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<(), VmError> {
        let kvm = self
            .kvm
            .as_ref()
            .ok_or_else(|| VmError::Slots("KVM was not prepared".into()))?;
        Ok(kvm.accel.register_ioeventfd(event, addr, datamatch)?)
    }

    /// Opens KVM, maps memory, loads the guest and creates the vCPUs.
    pub fn prepare(&mut self) -> Result<(), VmError> {
        if self.kvm.is_some() {
            return Ok(());
        }
        let accel = KvmAccel::open(&self.config.kvm_path)?;
        install_kick_handler().map_err(|source| VmError::Ioctl {
            what: "installing the vCPU kick signal handler",
            source,
        })?;
        let (slots, listener) = KvmMemory::new(
            accel.vm.clone(),
            accel.max_slots,
            Some(self.control.clone()),
        );
        let (ioevents, ioevent_state) =
            KvmIoEventFdListener::new(accel.vm.clone(), IoEventBus::Mmio);
        {
            let mut tree = self.lock_tree();
            tree.add_listener(&self.memory, 0, Box::new(listener))?;
            tree.add_listener(&self.memory, 1, Box::new(ioevents))?;
        }
        if let Some(e) = slots.take_error() {
            return Err(VmError::Slots(e));
        }
        if let Some(e) = ioevent_state.take_error() {
            return Err(VmError::Device(format!("virtio notifications: {e}")));
        }
        self.ioeventfds = Some(ioevent_state);
        let ioctl = |what| move |source| VmError::Ioctl { what, source };
        // Intel VMX needs three pages for a real-mode TSS and one for an
        // identity page table, in guest-physical space nothing else uses.
        accel
            .vm
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        accel
            .vm
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        if self.config.irqchip {
            accel
                .vm
                .create_irq_chip()
                .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            accel
                .vm
                .create_pit2(pit)
                .map_err(ioctl("KVM_CREATE_PIT2"))?;
            accel.register_irqfd(self.serial.irq_event(), SERIAL_IRQ)?;
            for (trigger, gsi) in &self.virtio_irqs {
                accel.register_irqfd(trigger.event(), *gsi)?;
            }
            accel.register_irqfd(self.power_button.event(), POWER_BUTTON_GSI)?;
        }

        let restored = self.restored.take();
        let guest = GuestRam::from_view(&self.memory.view())?;
        let boot = match &self.config.kernel {
            // A restored guest's memory already holds everything.
            _ if restored.is_some() => None,
            Some(path) => {
                let e820 = e820_from_view(&self.memory.view());
                // Neither can exceed the guest's RAM; a device or FIFO at
                // the path is refused rather than read or waited on.
                let limit = self.config.memory;
                let (mut kernel, _) = host_file::open_regular(path, limit, Symlinks::Follow)
                    .map_err(file_error("kernel", path))?;
                let mut initrd = match &self.config.initrd {
                    Some(p) => Some(
                        host_file::open_regular(p, limit, Symlinks::Follow)
                            .map_err(file_error("initrd", p))?
                            .0,
                    ),
                    None => None,
                };
                let boot = load_linux(
                    guest.memory(),
                    &e820,
                    &mut kernel,
                    initrd.as_mut(),
                    &self.cmdline,
                )
                .map_err(|e| VmError::Arch(e.to_string()))?;
                Some(boot)
            }
            None => None,
        };
        if restored.is_none() {
            setup_mptable(guest.memory(), self.config.cpus)
                .map_err(|e| VmError::Arch(e.to_string()))?;
        }
        if boot.is_some() {
            // The tables live in the BIOS area, which firmware occupies.
            let slots: Vec<_> = self.virtio.devices.iter().map(|d| d.slot).collect();
            setup_acpi(guest.memory(), self.config.cpus, &slots)
                .map_err(|e| VmError::Arch(e.to_string()))?;
        }

        let mut vcpus = Vec::with_capacity(self.config.cpus as usize);
        for index in 0..self.config.cpus {
            let vcpu = accel
                .vm
                .create_vcpu(index as u64)
                .map_err(ioctl("KVM_CREATE_VCPU"))?;
            let saved_cpuid = restored
                .as_ref()
                .and_then(|s| s.vcpus.get(usize::from(index)))
                .and_then(|v| v.cpuid.as_deref());
            match saved_cpuid {
                Some(entries) => restore_cpuid(&vcpu, entries).map_err(|e| {
                    VmError::Snapshot(SnapshotError::Device {
                        name: format!("vCPU {index} CPUID"),
                        reason: e.to_string(),
                    })
                })?,
                None => setup_cpuid(&accel.kvm, &vcpu, index, self.config.cpus)
                    .map_err(|e| VmError::Arch(e.to_string()))?,
            }
            if restored.is_some() {
                vcpus.push(vcpu);
                continue;
            }
            if self.config.irqchip {
                setup_lapic(&vcpu).map_err(|e| VmError::Arch(e.to_string()))?;
            }
            match (index, &boot) {
                (0, Some(boot)) => setup_boot_vcpu(&vcpu, guest.memory(), boot),
                _ => setup_secondary_vcpu(&vcpu),
            }
            .map_err(|e| VmError::Arch(e.to_string()))?;
            vcpus.push(vcpu);
        }
        if let Some(state) = &restored {
            // As Firecracker: the vCPUs exist (with their LAPICs) before
            // the VM-wide state is loaded, and each vCPU's state comes
            // after it.
            let kvm_error = |name: String| {
                move |e: crate::accel::kvm::state::StateError| {
                    VmError::Snapshot(SnapshotError::Device {
                        name,
                        reason: e.to_string(),
                    })
                }
            };
            restore_vm(&accel.vm, &state.kvm).map_err(kvm_error("KVM VM".into()))?;
            for (index, (vcpu, saved)) in vcpus.iter().zip(&state.vcpus).enumerate() {
                restore_vcpu(vcpu, saved).map_err(kvm_error(format!("vCPU {index}")))?;
            }
        }
        let ram = self.lock_tree().ram_block(self.pc.ram)?;
        self.live
            .set_kvm_snapshot_parts(KvmSnapshotParts::X86(Arc::new(X86SnapshotParts {
                vm: accel.vm.clone(),
                caps: VcpuStateCaps::probe(&accel.kvm),
                ram,
                i8042: self.i8042.clone(),
            })));
        self.live.set_kvm_slots(slots.clone());
        self.kvm = Some(KvmParts {
            accel,
            slots,
            vcpus,
        });
        Ok(())
    }

    /// Runs the VM until it ends: vCPU threads, console input and the exit
    /// signal, all driven by one event loop on this thread (the shared
    /// lifecycle, [`crate::vmm::lifecycle`]).
    pub fn run(mut self) -> Result<X86Outcome, VmError> {
        self.prepare()?;
        let parts = self
            .kvm
            .take()
            .ok_or_else(|| VmError::Slots("KVM was not prepared".into()))?;
        let seccomp = self.config.confinement.seccomp;
        let mut vcpus = KvmVcpuThreads::new(KvmVcpuParts {
            accel: parts.accel,
            vcpus: parts.vcpus,
            memory: self.memory.clone(),
            io: Some(self.io.clone()),
            console: None,
            control: self.control.clone(),
            exit: self.exit.clone(),
            live: self.live.clone(),
            seccomp,
        });
        let outcome = crate::vmm::lifecycle::run(
            LifecycleParts {
                config: &self.config,
                live: &self.live,
                exit: &self.exit,
                virtio: &self.virtio,
                serial: &self.serial,
            },
            &mut vcpus,
        )?;
        let stats = match outcome.cpus {
            CpuCounters::Kvm(stats) => stats,
            CpuCounters::Tcg(_) => Vec::new(),
        };
        Ok(X86Outcome {
            reason: outcome.reason,
            vcpus: stats,
            startup: outcome.first_run.map(|t| t.duration_since(self.created)),
            first_run: outcome.first_run,
        })
    }
}
