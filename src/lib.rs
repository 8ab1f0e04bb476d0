//! Ember: a KVM-backed userspace VMM for microVMs, built around QEMU's guest
//! memory model.

pub mod memory;
