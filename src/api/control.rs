//! What a running VM offers its controllers.

use serde::Serialize;

pub use crate::vmm::snapshot::SnapshotOptions;

/// The lifecycle state machine: `Created` → `Running` ⇄ `Paused` →
/// `ShutDown` (from either). Pause and resume are idempotent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Created,
    Running,
    Paused,
    ShutDown,
}

/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the VM is {0:?}; this operation needs it {1}")]
    WrongState(VmState, &'static str),
    #[error("not supported by this VM: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Failed(String),
}

/// Operations on a live VM, callable from any thread (the API server runs
/// one thread per client). Every method returns promptly: a slow or dead
/// client must never block the VM, and the VM must never block a client for
/// longer than the operation itself takes.
pub trait VmControl: Send + Sync {
    /// The current state.
    fn state(&self) -> VmState;
    /// Static facts and the configuration (arch, accel, memory, cpus,
    /// kernel, cmdline, devices, ...) plus the state and uptime in
    /// seconds, as JSON.
    fn info(&self) -> serde_json::Value;
    /// Stops every vCPU at an instruction boundary and all device
    /// activity. Idempotent; returns the new state.
    fn pause(&self) -> Result<VmState, ControlError>;
    /// Continues a paused VM. Idempotent; returns the new state.
    fn resume(&self) -> Result<VmState, ControlError>;
    /// Asks the guest to shut down cleanly (ACPI power button on x86, the
    /// power-off key / SBI shutdown event on riscv64).
    fn power_button(&self) -> Result<(), ControlError>;
    /// Resets the VM (ends `ember run` with the reset exit, as a guest
    /// reboot does).
    fn reset(&self) -> Result<(), ControlError>;
    /// Stops the VM at once.
    fn stop(&self) -> Result<(), ControlError>;
    /// Writes a snapshot of the paused VM into the directory `dir` (state,
    /// guest memory and a manifest; see `ember::vmm::snapshot`), from which
    /// a new VM can be restored. The VM must be paused and stays so. A
    /// directory that is not empty is refused (see [`Self::snapshot_with`]).
    fn snapshot(&self, dir: &std::path::Path) -> Result<(), ControlError> {
        self.snapshot_with(dir, &SnapshotOptions::default())
    }
    /// [`Self::snapshot`] with options (`force`: write into a directory
    /// that is not empty, replacing an earlier snapshot there).
    fn snapshot_with(
        &self,
        dir: &std::path::Path,
        options: &SnapshotOptions,
    ) -> Result<(), ControlError> {
        let _ = (dir, options);
        Err(ControlError::Unsupported(
            "snapshots are not available for this VM".into(),
        ))
    }
    /// `info mtree` (or `info mtree -f` when `flat`) of the live VM.
    fn mtree(&self, flat: bool) -> String;
    /// The accelerator's view: KVM memory slots, or the software CPU's TLB
    /// statistics, as JSON.
    fn accel_info(&self) -> serde_json::Value;
    /// Counters: exits by reason and by device, virtio requests and bytes
    /// per device, serial bytes, as JSON.
    fn counters(&self) -> serde_json::Value;
}
