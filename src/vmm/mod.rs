//! The virtual machine: assembling a machine, running its vCPUs and its
//! event loop, and ending it.

pub mod config;
pub mod config_file;
pub mod console;
pub mod console_writer;
pub mod error;
pub mod event_loop;
pub mod exit;
pub mod host_file;
pub mod instance;
pub mod landlock_rules;
pub mod lifecycle;
pub mod live;
#[cfg(test)]
mod parser_fuzz;
pub mod riscv_vm;
pub mod seccomp;
pub mod snapshot;
// riscv64 VMs under KVM exist only on riscv64 hosts.
#[cfg(target_arch = "riscv64")]
pub mod snapshot_riscv_kvm;
// The x86_64 machine under KVM and its snapshots exist only on x86_64 hosts
// (KVM runs only the host's architecture and the software CPU only riscv64).
#[cfg(target_arch = "x86_64")]
pub mod snapshot_x86;
pub mod virtio;
pub mod vm;
#[cfg(target_arch = "x86_64")]
pub mod x86_vm;
