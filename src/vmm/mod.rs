//! The virtual machine: assembling a machine, running its vCPUs and its
//! event loop, and ending it.

pub mod config;
pub mod config_file;
pub mod console;
pub mod error;
pub mod event_loop;
pub mod exit;
pub mod instance;
pub mod live;
pub mod riscv_vm;
pub mod snapshot;
pub mod snapshot_x86;
pub mod virtio;
pub mod vm;
