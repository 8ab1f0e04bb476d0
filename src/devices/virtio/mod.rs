//! virtio devices on the virtio-mmio transport (virtio 1.x, MMIO version 2).
//!
//! The split is the one Firecracker and Cloud Hypervisor use:
//! - [`device::VirtioDevice`]: what a device type (block, net, rng, console)
//!   implements: its features, config space and queue processing.
//! - `mmio`: the transport, a [`RegionOps`](crate::memory::RegionOps) that
//!   sits in the `memory` tree like any other device, owns the status state
//!   machine, the queues' registers and the interrupt status.
//!
//! Device work never runs on a vCPU's exit path: a queue notification only
//! signals the queue's eventfd (under KVM the kernel does that itself through
//! an ioeventfd, so the vCPU does not exit at all), and the VMM's event loop
//! processes the queue. Guest memory is reached through vm-memory, from a
//! [`GuestRam`](crate::memory::GuestRam) snapshot of the `memory` view that
//! is replaced on every topology commit.

pub mod console;
pub mod device;
pub mod net;
pub mod tap;

pub use device::{DeviceError, IrqLine, VirtioDevice};
