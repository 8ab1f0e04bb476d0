//! Device models. Each exposes its registers as a [`RegionOps`] so that it
//! plugs into the memory tree like any QEMU device.
//!
//! [`RegionOps`]: crate::memory::RegionOps

pub mod debug_exit;
pub mod ember_info;
pub mod i8042;
pub mod irq;
pub mod plic;
pub mod port80;
pub mod power;
pub mod serial;
pub mod virtio;

#[cfg(test)]
mod test_util;
