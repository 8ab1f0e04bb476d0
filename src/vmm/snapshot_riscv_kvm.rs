//! Snapshots of a paused riscv64 `virt` VM under KVM, in the format of
//! [`crate::vmm::snapshot`] (`manifest.json` with architecture `riscv64`,
//! `state.json`, sparse `memory.bin`; same version, same checks).
//! `state.json` says `"accel": "kvm"` and holds each vCPU's registers by
//! name ([`SavedVcpu`]) instead of software harts; the machine part (PLIC,
//! UART, virtio transports) is the same as the software CPU's.
//!
//! The vCPU registers are read on each vCPU's own thread while it is
//! parked in the pause, after KVM completed its last MMIO access
//! (`VcpuControl::run_parked`). The guest's `time` is saved with the
//! timer registers and set again on restore, so it does not jump.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accel::kvm::kick::VcpuControl;
use crate::accel::kvm::riscv64::SavedVcpu;
use crate::devices::plic::{Plic, PlicState};
use crate::devices::serial::{Serial, SerialSnapshot};
use crate::devices::virtio::mmio::VirtioMmio;
use crate::memory::RamBlock;
use crate::vmm::config::VmConfig;
use crate::vmm::snapshot::{
    save_devices, save_with, Loaded, SavedConfig, SavedDevice, SnapshotError, SnapshotOptions,
    SnapshotStats, ARCH, FORMAT, VERSION,
};

/// How long one vCPU may take to hand over its state.
const VCPU_WAIT: Duration = Duration::from_secs(5);

/// The `accel` of a KVM snapshot's state.
pub const ACCEL_KVM: &str = "kvm";

/// `state.json` of a riscv64 KVM snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RiscvKvmSnapshotState {
    pub format: String,
    pub version: u32,
    pub arch: String,
    pub accel: String,
    pub config: SavedConfig,
    pub vcpus: Vec<SavedVcpu>,
    pub plic: PlicState,
    pub uart: SerialSnapshot,
    pub devices: Vec<SavedDevice>,
}

/// What a snapshot reads of a prepared riscv64 KVM VM besides what every
/// VM has.
pub struct RiscvKvmSnapshotParts {
    pub ram: Arc<RamBlock>,
    /// `None` with KVM's in-kernel AIA, whose state is not saved yet.
    pub plic: Option<Arc<Plic>>,
}

/// What a snapshot is taken from: a live, paused VM.
pub struct RiscvKvmSnapshotSource<'a> {
    pub config: &'a VmConfig,
    pub parts: &'a RiscvKvmSnapshotParts,
    pub control: &'a VcpuControl,
    pub serial: &'a Serial,
    pub devices: &'a [(String, VirtioMmio)],
}

/// Collects the state of a paused VM (vCPUs parked, devices paused).
pub fn capture(src: &RiscvKvmSnapshotSource<'_>) -> Result<RiscvKvmSnapshotState, SnapshotError> {
    let plic = src.parts.plic.as_ref().ok_or_else(|| {
        SnapshotError::Unsupported(
            "snapshots of a VM with KVM's in-kernel AIA are not supported yet (its APLIC and \
             IMSIC state is not saved); start the VM with --irqchip plic to take snapshots"
                .into(),
        )
    })?;
    let mut vcpus = Vec::with_capacity(usize::from(src.config.cpus));
    for index in 0..usize::from(src.config.cpus) {
        let cpu_error = |reason: String| SnapshotError::Device {
            name: format!("vCPU {index}"),
            reason,
        };
        let state = src
            .control
            .run_parked(index, VCPU_WAIT, move |vcpu| {
                crate::accel::kvm::riscv64::vcpu::save(vcpu?).map_err(|e| e.to_string())
            })
            .map_err(cpu_error)?
            .map_err(cpu_error)?;
        vcpus.push(state);
    }
    Ok(RiscvKvmSnapshotState {
        format: FORMAT.into(),
        version: VERSION,
        arch: ARCH.into(),
        accel: ACCEL_KVM.into(),
        config: SavedConfig::of(src.config),
        vcpus,
        plic: plic.state(),
        uart: src.serial.state(),
        devices: save_devices(src.devices)?,
    })
}

/// Writes a snapshot of the paused VM to `dir`.
pub fn save(
    dir: &Path,
    options: &SnapshotOptions,
    src: &RiscvKvmSnapshotSource<'_>,
) -> Result<SnapshotStats, SnapshotError> {
    save_with(dir, options, src.config, ARCH, &src.parts.ram, || {
        capture(src)
    })
}

/// A riscv64 KVM snapshot whose manifest and state file passed their
/// checks; memory is checked while it is loaded.
pub type LoadedRiscvKvmSnapshot = Loaded<RiscvKvmSnapshotState>;

/// Reads the riscv64 KVM snapshot in `dir` (see [`Loaded::open_with`]).
pub fn open(dir: &Path) -> Result<LoadedRiscvKvmSnapshot, SnapshotError> {
    Loaded::open_with(dir, ARCH, |state: &RiscvKvmSnapshotState| {
        if state.accel != ACCEL_KVM {
            return Err(SnapshotError::Inconsistent(format!(
                "the state is for accelerator {:?}, not KVM",
                state.accel
            )));
        }
        if state.vcpus.len() != usize::from(state.config.cpus) || state.vcpus.is_empty() {
            return Err(SnapshotError::Inconsistent(format!(
                "{} vCPUs saved for a VM with {} CPUs",
                state.vcpus.len(),
                state.config.cpus
            )));
        }
        for (index, vcpu) in state.vcpus.iter().enumerate() {
            vcpu.ids()
                .map_err(|e| SnapshotError::Inconsistent(format!("vCPU {index}: {e}")))?;
        }
        Ok(state.config.memory)
    })
}
