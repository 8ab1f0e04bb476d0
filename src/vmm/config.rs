//! What `ember run` is asked to build.

use std::path::PathBuf;

use crate::accel::AccelChoice;
use crate::arch::GuestArch;
use crate::vmm::console::{ConsoleInput, ConsoleOutput};

/// The default kernel command line: the serial console, reboot through the
/// keyboard controller, no waiting after a panic, and no probing for i8042
/// features the minimal controller lacks (as Firecracker recommends).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// The default command line of riscv64 guests (the UART is ttyS0 there
/// too).
pub const DEFAULT_CMDLINE_RISCV64: &str = "console=ttyS0 panic=-1";

/// Everything needed to build and run a microVM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The guest architecture.
    pub arch: GuestArch,
    /// ELF vmlinux or bzImage; `None` boots the firmware or the built-in
    /// guest.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub cpus: u8,
    /// A flat firmware image started at the reset vector.
    pub firmware: Option<PathBuf>,
    /// Port of an isa-debug-exit device.
    pub debug_exit: Option<u16>,
    pub accel: AccelChoice,
    pub kvm_path: PathBuf,
    pub console_input: ConsoleInput,
    pub console_output: ConsoleOutput,
    /// Create KVM's in-kernel interrupt controllers and PIT. Without them a
    /// vCPU's HLT exits to Ember (used by small test guests).
    pub irqchip: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            arch: GuestArch::host(),
            kernel: None,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            memory: 512 << 20,
            cpus: 1,
            firmware: None,
            debug_exit: None,
            accel: AccelChoice::Auto,
            kvm_path: PathBuf::from(crate::accel::kvm::KVM_PATH),
            console_input: ConsoleInput::Stdin,
            console_output: ConsoleOutput::Stdout,
            irqchip: true,
        }
    }
}

/// Parses a memory size: bytes, or with a K, M, G or T suffix (binary
/// units, as QEMU and Firecracker read them).
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let bad = || format!("'{text}' is not a memory size (use e.g. 512M, 2G or a byte count)");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("memory size '{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("512M"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2g"), Ok(2 << 30));
        assert_eq!(parse_memory_size("4096"), Ok(4096));
        assert!(parse_memory_size("12MB").is_err());
        assert!(parse_memory_size("-1M").is_err());
        assert!(parse_memory_size("").is_err());
        assert!(parse_memory_size("99999999999T").is_err());
    }
}
