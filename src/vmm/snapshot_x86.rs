//! Snapshots of a paused x86_64 VM under KVM, in the format of
//! [`crate::vmm::snapshot`] (`manifest.json` with architecture `x86_64`,
//! `state.json`, sparse `memory.bin`; same version, same checks).
//!
//! `state.json` holds [`X86SnapshotState`]: the machine configuration,
//! every vCPU's KVM state (`crate::accel::kvm::state`: registers, XSAVE or
//! FPU, XCRs, debug registers, MSRs, LAPIC, MP state, pending events), the
//! in-kernel 8259s, IOAPIC, PIT and kvmclock, the UART, the i8042 and the
//! virtio-mmio transports with their queues and device state. The other
//! legacy devices (port 0x80, PM1a, ACPI sleep control, isa-debug-exit,
//! the GED power button) hold no state.
//!
//! The vCPU state is read on each vCPU's own thread while it is parked in
//! the pause, after KVM completed the instruction of its last I/O exit
//! (`VcpuControl::run_parked`), so a restored guest neither repeats nor
//! loses an access.
//!
//! Not saved: CPUID (a restore sets the host's, as a fresh VM gets; the
//! snapshot is for the same host or an identical one), the firmware ROM
//! (the `--firmware` file, or the built-in guest, is mapped again), the TSC
//! frequency (no scaling), nested virtualisation state, and disk contents
//! (the files must be there, unchanged).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::accel::kvm::kick::VcpuControl;
use crate::accel::kvm::state::{capture_vcpu, capture_vm, VcpuState, VcpuStateCaps, VmKvmState};
use crate::devices::i8042::{I8042State, I8042};
use crate::devices::serial::{Serial, SerialSnapshot};
use crate::devices::virtio::mmio::VirtioMmio;
use crate::memory::RamBlock;
use crate::vmm::config::VmConfig;
use crate::vmm::snapshot::{
    absolute, save_devices, save_with, Loaded, SavedConfig, SavedDevice, SnapshotError,
    SnapshotOptions, SnapshotStats, ARCH_X86_64, FORMAT, VERSION,
};

/// How long one vCPU may take to hand over its state.
const VCPU_WAIT: Duration = Duration::from_secs(5);

/// What an x86_64 machine has beyond [`SavedConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedX86Config {
    /// The firmware image mapped as ROM, mapped again on restore; with
    /// neither this nor a kernel the built-in guest was the firmware.
    pub firmware: Option<PathBuf>,
    pub debug_exit: Option<u16>,
    pub irqchip: bool,
}

/// `state.json` of an x86_64 snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct X86SnapshotState {
    pub format: String,
    pub version: u32,
    pub arch: String,
    pub config: SavedConfig,
    pub x86: SavedX86Config,
    pub vcpus: Vec<VcpuState>,
    pub kvm: VmKvmState,
    pub uart: SerialSnapshot,
    pub i8042: I8042State,
    pub devices: Vec<SavedDevice>,
}

/// The parts of a prepared x86_64 VM a snapshot reads besides the ones
/// every VM has (serial, virtio transports).
pub struct X86SnapshotParts {
    pub vm: Arc<VmFd>,
    pub caps: VcpuStateCaps,
    pub ram: Arc<RamBlock>,
    pub i8042: Arc<I8042>,
}

/// What a snapshot is taken from: a live, paused VM.
pub struct X86SnapshotSource<'a> {
    pub config: &'a VmConfig,
    pub parts: &'a X86SnapshotParts,
    pub control: &'a VcpuControl,
    pub serial: &'a Serial,
    pub devices: &'a [(String, VirtioMmio)],
}

/// Collects the state of a paused VM (vCPUs parked, devices paused).
pub fn capture(src: &X86SnapshotSource<'_>) -> Result<X86SnapshotState, SnapshotError> {
    let irqchip = src.config.irqchip;
    let mut vcpus = Vec::with_capacity(usize::from(src.config.cpus));
    for index in 0..usize::from(src.config.cpus) {
        let caps = src.parts.caps.clone();
        let cpu_error = |reason: String| SnapshotError::Device {
            name: format!("vCPU {index}"),
            reason,
        };
        let state = src
            .control
            .run_parked(index, VCPU_WAIT, move |vcpu| {
                let vcpu = vcpu?;
                capture_vcpu(vcpu, &caps, irqchip).map_err(|e| e.to_string())
            })
            .map_err(cpu_error)?
            .map_err(cpu_error)?;
        vcpus.push(state);
    }
    let kvm = capture_vm(&src.parts.vm, irqchip).map_err(|e| SnapshotError::Device {
        name: "KVM VM".into(),
        reason: e.to_string(),
    })?;
    let devices = save_devices(src.devices)?;
    Ok(X86SnapshotState {
        format: FORMAT.into(),
        version: VERSION,
        arch: ARCH_X86_64.into(),
        config: SavedConfig::of(src.config),
        x86: SavedX86Config {
            firmware: src.config.firmware.as_deref().map(absolute),
            debug_exit: src.config.debug_exit,
            irqchip,
        },
        vcpus,
        kvm,
        uart: src.serial.state(),
        i8042: src.parts.i8042.state(),
        devices,
    })
}

/// Takes a snapshot of a paused VM into `dir` (created if missing; see
/// [`SnapshotOptions`] for one that is not empty), after flushing its
/// writable disk images.
pub fn save(
    dir: &Path,
    options: &SnapshotOptions,
    src: &X86SnapshotSource<'_>,
) -> Result<SnapshotStats, SnapshotError> {
    save_with(
        dir,
        options,
        src.config,
        ARCH_X86_64,
        &src.parts.ram,
        || capture(src),
    )
}

/// An x86_64 snapshot whose manifest and state file passed their checks;
/// memory is checked while it is loaded.
pub type LoadedX86Snapshot = Loaded<X86SnapshotState>;

/// Reads the x86_64 snapshot in `dir` (see [`Loaded::open_with`]).
pub fn open(dir: &Path) -> Result<LoadedX86Snapshot, SnapshotError> {
    Loaded::open_with(dir, ARCH_X86_64, |state: &X86SnapshotState| {
        if state.vcpus.len() != usize::from(state.config.cpus) || state.vcpus.is_empty() {
            return Err(SnapshotError::Inconsistent(format!(
                "{} vCPUs saved for a VM with {} CPUs",
                state.vcpus.len(),
                state.config.cpus
            )));
        }
        if state.x86.irqchip != state.kvm.irqchip.is_some()
            || state
                .vcpus
                .iter()
                .any(|v| v.lapic.is_some() != state.x86.irqchip)
        {
            return Err(SnapshotError::Inconsistent(
                "the in-kernel irqchip is saved for part of the VM only".into(),
            ));
        }
        Ok(state.config.memory)
    })
}
