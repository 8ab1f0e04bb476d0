//! Ember: a KVM-backed userspace VMM for microVMs, built around QEMU's guest
//! memory model.

pub mod accel;
pub mod api;
pub mod arch;
pub mod devices;
pub mod log_limit;
pub mod memory;
pub mod vmm;

pub use api::{VmControl, VmState};
pub use arch::GuestArch;
pub use vmm::config::{ConsoleKind, DiskSpec, NetSpec, VmConfig};
pub use vmm::instance::{InstanceError, RunningVm, VmBuilder};
