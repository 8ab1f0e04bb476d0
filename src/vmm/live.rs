//! The running VM as its controllers see it: one [`VmControl`]
//! implementation for both machines, over what differs between them (how
//! vCPUs pause, what the accelerator can report) behind [`CpuBackend`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
use crate::accel::kvm::{kick::VcpuControl, memory::KvmMemory, vcpu::LiveVcpuStats};
use crate::accel::tcg::riscv64::RiscvSystem;
use crate::api::{ControlError, VmControl, VmState};
use crate::devices::plic::Plic;
use crate::devices::serial::Serial;
use crate::memory::RamBlock;
use crate::memory::{mtree_text, MemoryTree, MtreeOptions};
use crate::vmm::config::VmConfig;
use crate::vmm::console::{DeliverInput, SharedOutput};
use crate::vmm::exit::{ExitReason, ExitSignal};
use crate::vmm::snapshot::{SnapshotOptions, SnapshotSource, SnapshotStats};
#[cfg(target_arch = "x86_64")]
use crate::vmm::snapshot_x86::{X86SnapshotParts, X86SnapshotSource};
use crate::vmm::virtio::PlacedDevice;

/// How long a pause may take before it is reported as failed. Harts park
/// within one block (microseconds); KVM vCPUs leave `KVM_RUN` on a kick.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The accelerator side.
pub enum CpuBackend {
    /// KVM vCPUs; `slots` once KVM is set up. KVM runs guests of the
    /// host's architecture: x86_64 and riscv64 hosts have it.
    #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
    Kvm {
        control: Arc<VcpuControl>,
        slots: Mutex<Option<KvmMemory>>,
        /// One per vCPU, created when the vCPU threads start.
        exits: Mutex<Vec<Arc<LiveVcpuStats>>>,
        /// What a snapshot reads, once KVM is set up; dropped when the VM
        /// ends (it holds the VM descriptor).
        snapshot: Mutex<Option<KvmSnapshotParts>>,
    },
    /// Software harts, with the machine parts a snapshot saves beyond
    /// what every VM has (the PLIC and guest RAM).
    Tcg {
        system: Arc<RiscvSystem>,
        plic: Arc<Plic>,
        ram: Arc<RamBlock>,
    },
}

/// What a snapshot of a KVM VM reads beyond what every VM has.
#[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
#[derive(Clone)]
pub enum KvmSnapshotParts {
    #[cfg(target_arch = "x86_64")]
    X86(Arc<X86SnapshotParts>),
    #[cfg(target_arch = "riscv64")]
    Riscv(Arc<crate::vmm::snapshot_riscv_kvm::RiscvKvmSnapshotParts>),
}

struct Inner {
    state: VmState,
    /// When the VM started running.
    started: Option<Instant>,
}

/// The live VM behind the API socket, `ember ctl` and the library API.
pub struct LiveVm {
    config: VmConfig,
    cpu: CpuBackend,
    devices: Vec<(String, crate::devices::virtio::mmio::VirtioMmio)>,
    serial: Arc<Serial>,
    /// Where guest console output goes, for its counters.
    console_output: SharedOutput,
    exit: Arc<ExitSignal>,
    tree: Arc<Mutex<MemoryTree>>,
    inner: Mutex<Inner>,
    /// Where console input goes (the UART or virtio-console).
    input: DeliverInput,
    /// Presses the power button, where the machine has one.
    power_button: Option<PowerButton>,
}

/// Raises the machine's power-button event.
pub type PowerButton = Box<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// What a machine hands its [`LiveVm`].
pub struct LiveVmParts<'a> {
    pub config: VmConfig,
    pub cpu: CpuBackend,
    pub devices: &'a [PlacedDevice],
    pub console_output: SharedOutput,
    pub serial: Arc<Serial>,
    pub exit: Arc<ExitSignal>,
    pub tree: Arc<Mutex<MemoryTree>>,
    pub input: DeliverInput,
    pub power_button: Option<PowerButton>,
}

impl LiveVm {
    pub fn new(parts: LiveVmParts<'_>) -> Arc<LiveVm> {
        let LiveVmParts {
            config,
            cpu,
            devices,
            console_output,
            serial,
            exit,
            tree,
            input,
            power_button,
        } = parts;
        Arc::new(LiveVm {
            config,
            cpu,
            devices: devices
                .iter()
                .map(|d| (d.name.clone(), d.transport.clone()))
                .collect(),
            serial,
            console_output,
            exit,
            tree,
            inner: Mutex::new(Inner {
                state: VmState::Created,
                started: None,
            }),
            input,
            power_button,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Types `bytes` into the guest's console (as console input from the
    /// terminal would arrive).
    pub fn send_input(&self, bytes: &[u8]) {
        (self.input)(bytes);
    }

    /// Where guest console output goes (its counters; draining it at exit).
    pub fn console_output(&self) -> &SharedOutput {
        &self.console_output
    }

    /// The vCPUs are about to run.
    pub fn set_running(&self) {
        let mut inner = self.lock();
        inner.state = VmState::Running;
        inner.started = Some(Instant::now());
    }

    /// The VM has ended.
    pub fn set_shut_down(&self) {
        self.lock().state = VmState::ShutDown;
        #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
        if let CpuBackend::Kvm { snapshot, .. } = &self.cpu {
            snapshot.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }

    /// KVM is set up: snapshots can be taken.
    #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
    pub fn set_kvm_snapshot_parts(&self, parts: KvmSnapshotParts) {
        if let CpuBackend::Kvm { snapshot, .. } = &self.cpu {
            *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(parts);
        }
    }

    /// The live counters of vCPU `index` (KVM), registered for
    /// [`VmControl::counters`].
    #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
    pub fn vcpu_stats(&self, index: usize) -> Arc<LiveVcpuStats> {
        let stats = Arc::new(LiveVcpuStats::default());
        if let CpuBackend::Kvm { exits, .. } = &self.cpu {
            let mut exits = exits.lock().unwrap_or_else(|e| e.into_inner());
            if exits.len() <= index {
                exits.resize_with(index + 1, Default::default);
            }
            exits[index] = stats.clone();
        }
        stats
    }

    /// KVM is set up: the slot table can be reported.
    #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
    pub fn set_kvm_slots(&self, slots: KvmMemory) {
        if let CpuBackend::Kvm { slots: s, .. } = &self.cpu {
            *s.lock().unwrap_or_else(|e| e.into_inner()) = Some(slots);
        }
    }

    fn pause_cpus(&self) -> Result<(), ControlError> {
        match &self.cpu {
            #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
            CpuBackend::Kvm { control, .. } => {
                control.pause();
                Ok(())
            }
            CpuBackend::Tcg { system, .. } => {
                if system.pause_all(PAUSE_TIMEOUT) {
                    Ok(())
                } else {
                    system.resume_all();
                    Err(ControlError::Failed(format!(
                        "the harts did not stop within {PAUSE_TIMEOUT:?}"
                    )))
                }
            }
        }
    }

    fn resume_cpus(&self) {
        match &self.cpu {
            #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
            CpuBackend::Kvm { control, .. } => control.resume(),
            CpuBackend::Tcg { system, .. } => system.resume_all(),
        }
    }

    /// Writes a snapshot of the paused VM to `dir` (see
    /// [`crate::vmm::snapshot`] and [`crate::vmm::snapshot_x86`]); the VM
    /// stays paused and can be resumed or stopped afterwards.
    pub fn snapshot_with_stats(
        &self,
        dir: &std::path::Path,
        options: &SnapshotOptions,
    ) -> Result<SnapshotStats, ControlError> {
        // Held throughout, so nobody resumes the VM mid-snapshot.
        let inner = self.lock();
        if inner.state != VmState::Paused {
            return Err(ControlError::WrongState(inner.state, "paused"));
        }
        match &self.cpu {
            #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
            CpuBackend::Kvm {
                control, snapshot, ..
            } => {
                let parts = snapshot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .ok_or_else(|| {
                        ControlError::Unsupported("KVM is not set up for this VM".into())
                    })?;
                match parts {
                    #[cfg(target_arch = "x86_64")]
                    KvmSnapshotParts::X86(parts) => crate::vmm::snapshot_x86::save(
                        dir,
                        options,
                        &X86SnapshotSource {
                            config: &self.config,
                            parts: &parts,
                            control,
                            serial: &self.serial,
                            devices: &self.devices,
                        },
                    ),
                    #[cfg(target_arch = "riscv64")]
                    KvmSnapshotParts::Riscv(parts) => crate::vmm::snapshot_riscv_kvm::save(
                        dir,
                        options,
                        &crate::vmm::snapshot_riscv_kvm::RiscvKvmSnapshotSource {
                            config: &self.config,
                            parts: &parts,
                            control,
                            serial: &self.serial,
                            devices: &self.devices,
                        },
                    ),
                }
                .map_err(|e| self.snapshot_failed(dir, e))
            }
            CpuBackend::Tcg { system, plic, ram } => crate::vmm::snapshot::save(
                dir,
                options,
                &SnapshotSource {
                    config: &self.config,
                    system,
                    plic,
                    serial: &self.serial,
                    devices: &self.devices,
                    ram,
                },
            )
            .map_err(|e| self.snapshot_failed(dir, e)),
        }
    }

    /// A failed snapshot, with a hint when Landlock is why.
    fn snapshot_failed(&self, dir: &std::path::Path, e: impl std::fmt::Display) -> ControlError {
        match crate::vmm::landlock_rules::snapshot_dir_hint(&self.config, dir) {
            Some(hint) => ControlError::Failed(format!("snapshot: {e} ({hint})")),
            None => ControlError::Failed(format!("snapshot: {e}")),
        }
    }

    fn disk_json(&self) -> Vec<Value> {
        self.config
            .disks
            .iter()
            .map(|d| json!({"path": d.path, "readonly": d.readonly, "id": d.id}))
            .collect()
    }
}

impl VmControl for LiveVm {
    fn state(&self) -> VmState {
        self.lock().state
    }

    fn info(&self) -> Value {
        let inner = self.lock();
        let uptime = inner.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let c = &self.config;
        json!({
            "state": inner.state,
            "uptime_secs": uptime,
            "config": {
                "arch": c.arch.name(),
                "accel": match self.cpu {
                    #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
                    CpuBackend::Kvm { .. } => "kvm",
                    CpuBackend::Tcg { .. } => "tcg",
                },
                "memory": c.memory,
                "cpus": c.cpus,
                "kernel": c.kernel,
                "initrd": c.initrd,
                "firmware": c.firmware,
                "cmdline": c.cmdline,
                "disks": self.disk_json(),
                "nets": c.nets.iter().map(|n| json!({
                    "tap": n.tap,
                    "mac": n.mac.map(|m| crate::devices::virtio::net::format_mac(&m)),
                })).collect::<Vec<_>>(),
                "rng": c.rng,
                "console": match c.console {
                    crate::vmm::config::ConsoleKind::Serial => "serial",
                    crate::vmm::config::ConsoleKind::Virtio => "virtio",
                },
                "api_socket": c.api_socket,
            },
            "devices": self.devices.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(),
        })
    }

    fn pause(&self) -> Result<VmState, ControlError> {
        let mut inner = self.lock();
        match inner.state {
            VmState::Paused => return Ok(VmState::Paused),
            VmState::Running => {}
            other => return Err(ControlError::WrongState(other, "running")),
        }
        self.pause_cpus()?;
        for (_, t) in &self.devices {
            t.pause();
        }
        inner.state = VmState::Paused;
        Ok(VmState::Paused)
    }

    fn resume(&self) -> Result<VmState, ControlError> {
        let mut inner = self.lock();
        match inner.state {
            VmState::Running => return Ok(VmState::Running),
            VmState::Paused => {}
            other => return Err(ControlError::WrongState(other, "paused")),
        }
        for (_, t) in &self.devices {
            t.resume();
        }
        self.resume_cpus();
        inner.state = VmState::Running;
        Ok(VmState::Running)
    }

    fn power_button(&self) -> Result<(), ControlError> {
        let state = self.state();
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(ControlError::WrongState(state, "running or paused"));
        }
        match &self.power_button {
            Some(press) => press().map_err(|e| ControlError::Failed(format!("power button: {e}"))),
            None => Err(ControlError::Unsupported(
                "this machine has no power button yet (riscv64: no power-off key); \
                 use stop, or have the guest power off"
                    .into(),
            )),
        }
    }

    fn reset(&self) -> Result<(), ControlError> {
        let state = self.state();
        if matches!(state, VmState::ShutDown) {
            return Err(ControlError::WrongState(
                state,
                "created, running or paused",
            ));
        }
        self.exit.request(ExitReason::Reset);
        Ok(())
    }

    fn stop(&self) -> Result<(), ControlError> {
        self.exit.request(ExitReason::UserQuit);
        Ok(())
    }

    fn snapshot_with(
        &self,
        dir: &std::path::Path,
        options: &SnapshotOptions,
    ) -> Result<(), ControlError> {
        self.snapshot_with_stats(dir, options).map(|_| ())
    }

    fn mtree(&self, flat: bool) -> String {
        let tree = self.tree.lock().unwrap_or_else(|e| e.into_inner());
        mtree_text(
            &tree,
            MtreeOptions {
                flatview: flat,
                disabled: false,
            },
        )
    }

    fn accel_info(&self) -> Value {
        match &self.cpu {
            #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
            CpuBackend::Kvm { slots, .. } => {
                let slots = slots.lock().unwrap_or_else(|e| e.into_inner());
                match slots.as_ref() {
                    None => json!({"accel": "kvm", "slots": []}),
                    Some(s) => json!({
                        "accel": "kvm",
                        "slot_ioctls": s.ioctl_count(),
                        "pauses_for_slot_updates": s.pause_count(),
                        "slots": s.slots().iter().map(|m| json!({
                            "guest_addr": m.guest_addr,
                            "size": m.size,
                            "readonly": m.readonly,
                            "log_dirty": m.log_dirty,
                        })).collect::<Vec<_>>(),
                    }),
                }
            }
            CpuBackend::Tcg { system, .. } => json!({
                "accel": "tcg",
                "harts": system.harts.iter().map(|h| {
                    let s = *h.published.lock().unwrap_or_else(|e| e.into_inner());
                    json!({
                        "instructions": s.instructions,
                        "blocks": s.blocks,
                        "translations": s.translations,
                        "jump_cache_hits": s.jump_cache_hits,
                        "tlb": {
                            "fills": s.tlb.fills,
                            "victim_hits": s.tlb.victim_hits,
                            "full_flushes": s.tlb.full_flushes,
                            "page_flushes": s.tlb.page_flushes,
                        },
                    })
                }).collect::<Vec<_>>(),
            }),
        }
    }

    fn counters(&self) -> Value {
        let virtio: Vec<Value> = self
            .devices
            .iter()
            .map(|(name, t)| {
                let s = t.stats();
                json!({
                    "device": name,
                    "notifications": s.queue_events,
                    "notify_exits": s.notify_writes,
                    "interrupts": s.used_interrupts + s.config_interrupts,
                    "errors": s.device_errors,
                    "resets": s.resets,
                    "device_counters": t.with_device(|d| d.counters()),
                })
            })
            .collect();
        let serial = self.serial.counters();
        let cpus = match &self.cpu {
            #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
            CpuBackend::Kvm { exits, .. } => Value::Array(
                exits
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|e| {
                        let s = e.get();
                        json!({
                            "runs": s.runs,
                            "exits": {
                                "pio": s.pio_exits,
                                "mmio": s.mmio_exits,
                                "sbi": s.sbi_exits,
                                "interrupted": s.interrupted,
                            },
                        })
                    })
                    .collect(),
            ),
            CpuBackend::Tcg { system, .. } => Value::Array(
                system
                    .harts
                    .iter()
                    .map(|h| {
                        let s = *h.published.lock().unwrap_or_else(|e| e.into_inner());
                        json!({
                            "instructions": s.instructions,
                            "traps": s.traps,
                            "interrupts": s.interrupts,
                            "sbi_calls": s.sbi_calls,
                            "mmio": s.mmio,
                            "wfi_sleeps": s.wfi_sleeps,
                        })
                    })
                    .collect(),
            ),
        };
        // Exits by device: accesses dispatched to each device region
        // (MMIO and port-I/O exits under KVM, slow-path accesses under TCG;
        // queue notifications that KVM turned into ioeventfds never get
        // here).
        let by_device: serde_json::Map<String, Value> = {
            let tree = self.tree.lock().unwrap_or_else(|e| e.into_inner());
            let mut map = serde_json::Map::new();
            for (name, n) in tree.io_access_counts() {
                let total = map.get(&name).and_then(Value::as_u64).unwrap_or(0) + n;
                map.insert(name, json!(total));
            }
            map
        };
        let output = self.console_output.stats();
        json!({
            "virtio": virtio,
            "serial": {"tx_bytes": serial.0, "rx_bytes": serial.1},
            "console_output": {
                "accepted_bytes": output.accepted,
                "dropped_bytes": output.dropped,
                "written_bytes": output.written,
                "failed_bytes": output.failed,
                "pending_bytes": output.pending,
            },
            "cpus": cpus,
            "device_accesses": by_device,
        })
    }
}

/// Starts the control API on `config.api_socket`, if one is configured.
pub fn start_api(
    config: &VmConfig,
    live: &Arc<LiveVm>,
) -> Result<Option<crate::api::server::ApiServer>, crate::vmm::error::VmError> {
    let Some(path) = &config.api_socket else {
        return Ok(None);
    };
    let control: Arc<dyn VmControl> = live.clone();
    let server = crate::api::server::ServerConfig {
        seccomp: config.confinement.seccomp,
        fs_policy: crate::vmm::landlock_rules::FsPolicy::for_vm(config),
        ..Default::default()
    };
    crate::api::server::ApiServer::start_with_config(path, control, server)
        .map(Some)
        .map_err(|e| crate::vmm::error::VmError::Device(format!("--api-socket: {e}")))
}
