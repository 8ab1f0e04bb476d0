//! Machine descriptions per guest architecture.
pub mod riscv64;
pub mod virtio_mmio;
// The PC machine's boot code drives KVM's x86 ioctls and structures, which
// exist only on x86_64 hosts; elsewhere x86_64 guests are refused
// (VmError::ForeignHost).
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// The guest architecture (`--arch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestArch {
    X86_64,
    Riscv64,
}

impl GuestArch {
    /// The architecture Ember was built for, which KVM can run.
    pub const fn host() -> GuestArch {
        if cfg!(target_arch = "riscv64") {
            GuestArch::Riscv64
        } else {
            GuestArch::X86_64
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GuestArch::X86_64 => "x86_64",
            GuestArch::Riscv64 => "riscv64",
        }
    }
}

impl Default for GuestArch {
    fn default() -> Self {
        GuestArch::host()
    }
}

impl std::str::FromStr for GuestArch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "x86-64" | "amd64" => Ok(GuestArch::X86_64),
            "riscv64" => Ok(GuestArch::Riscv64),
            other => Err(format!(
                "unknown architecture '{other}' (expected x86_64 or riscv64)"
            )),
        }
    }
}
