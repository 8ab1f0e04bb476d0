//! [`VmError`]: why a VM (of either architecture) could not be built or
//! run. Its own module because the x86_64 `vm` module exists only on
//! x86_64 hosts, while the riscv64 machine and the common VMM code use it
//! everywhere.

use crate::accel::kvm::KvmError;
use crate::memory::MemoryError;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("--cpus must be between 1 and 254, not {0}")]
    Cpus(u8),
    #[error("memory map: {0}")]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("the software CPU (--accel tcg) is not available yet for x86_64 guests")]
    NoTcg,
    #[error("{what}: {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Arch(String),
    #[error("{0}")]
    Cmdline(String),
    #[error("KVM memory slots: {0}")]
    Slots(String),
    #[error("{what}: {source}")]
    Ioctl {
        what: &'static str,
        source: vmm_sys_util::errno::Error,
    },
    #[error("console: {0}")]
    Console(std::io::Error),
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    #[error(transparent)]
    Seccomp(crate::vmm::seccomp::SeccompError),
    #[error(transparent)]
    Landlock(crate::vmm::landlock_rules::LandlockError),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Device(String),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::vmm::snapshot::SnapshotError),
    #[error(
        "x86_64 guests need an x86_64 host (this host is {host}); use --arch riscv64 --accel tcg"
    )]
    ForeignHost { host: &'static str },
}

impl VmError {
    /// The error for an x86_64 guest (run, restore, library) on a host
    /// that is not x86_64: KVM runs only guests of the host's architecture
    /// and the software CPU runs only riscv64 guests.
    pub fn x86_64_needs_x86_64_host() -> VmError {
        VmError::ForeignHost {
            // The real host (GuestArch::host() knows only the two guest
            // architectures).
            host: std::env::consts::ARCH,
        }
    }
}
