//! Device models. Each exposes its registers as a [`RegionOps`] so that it
//! plugs into the memory tree like any QEMU device.
//!
//! [`RegionOps`]: crate::memory::RegionOps
