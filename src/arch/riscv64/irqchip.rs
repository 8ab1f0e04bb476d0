//! The riscv64 machine's interrupt controller: a userspace PLIC (every
//! accelerator), or the AIA (APLIC plus one IMSIC per hart) that KVM
//! emulates in the kernel on Linux 6.5+ hosts, as QEMU's `virt,aia=
//! aplic-imsic` and kvmtool lay it out. Wired sources (the UART, virtio)
//! are the same numbers either way; only who turns their levels into hart
//! interrupts differs.

use std::sync::Arc;

/// The `--irqchip` choice for riscv64 guests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IrqchipChoice {
    /// The in-kernel AIA where KVM offers it, else the PLIC.
    #[default]
    Auto,
    /// Ember's PLIC.
    Plic,
    /// KVM's in-kernel AIA; refused where the host lacks it.
    Aia,
}

impl std::str::FromStr for IrqchipChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IrqchipChoice::Auto),
            "plic" => Ok(IrqchipChoice::Plic),
            "aia" => Ok(IrqchipChoice::Aia),
            other => Err(format!(
                "unknown interrupt controller '{other}' (expected auto, plic or aia)"
            )),
        }
    }
}

/// The interrupt controller a machine is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irqchip {
    Plic,
    /// APLIC at [`APLIC_BASE`] (MSI mode, delivering to the IMSICs) and an
    /// S-level IMSIC per hart from [`IMSIC_BASE`], all inside KVM.
    Aia,
}

impl Irqchip {
    pub fn name(self) -> &'static str {
        match self {
            Irqchip::Plic => "plic",
            Irqchip::Aia => "aia",
        }
    }
}

/// The APLIC's registers (QEMU `virt`'s S-level APLIC address).
pub const APLIC_BASE: u64 = 0x0d00_0000;
/// `KVM_DEV_RISCV_APLIC_SIZE`.
pub const APLIC_SIZE: u64 = 0x4000;
/// Hart 0's S-level IMSIC interrupt file (QEMU `virt`'s address); hart N's
/// is [`IMSIC_STRIDE`] further per hart.
pub const IMSIC_BASE: u64 = 0x2800_0000;
/// `KVM_DEV_RISCV_IMSIC_SIZE`: one page per hart.
pub const IMSIC_STRIDE: u64 = 0x1000;
/// MSI identities each IMSIC implements (`riscv,num-ids`; KVM allows 63
/// to 2047).
pub const AIA_NR_IDS: u32 = 255;
/// Wired sources of the APLIC (`riscv,num-sources`): as many as the PLIC
/// has, so devices keep their numbers.
pub const AIA_NR_SOURCES: u32 = super::layout::PLIC_NDEV;

/// KVM's `hart_bits` for `harts` harts: enough bits to number them in an
/// IMSIC address (at least one).
pub fn hart_bits(harts: u32) -> u32 {
    (u32::BITS - harts.saturating_sub(1).leading_zeros()).max(1)
}

/// The address of hart `hart`'s S-level IMSIC. With [`IMSIC_BASE`]
/// aligned far beyond `IMSIC_STRIDE << hart_bits`, the hart index is the
/// address's page number's low bits, as KVM decodes it.
pub fn imsic_address(hart: u32) -> u64 {
    IMSIC_BASE + IMSIC_STRIDE * hart as u64
}

// The AIA fits the machine: aligned as KVM requires, clear of the UART,
// the virtio slots and RAM for the largest machine. (The APLIC sits in the
// window QEMU keeps for the PLIC, as on QEMU's `virt`: a machine has one or
// the other.)
const _: () = {
    use super::layout::{
        MAX_HARTS, PLIC_BASE, PLIC_WINDOW, RAM_BASE, UART0_BASE, VIRTIO_MMIO_BASE,
        VIRTIO_MMIO_SIZE, VIRTIO_MMIO_SLOTS,
    };
    assert!(APLIC_BASE % 0x1000 == 0 && IMSIC_BASE % 0x1000 == 0);
    assert!(APLIC_BASE >= PLIC_BASE && APLIC_BASE + APLIC_SIZE <= PLIC_BASE + PLIC_WINDOW);
    assert!(APLIC_BASE + APLIC_SIZE <= UART0_BASE);
    assert!(IMSIC_BASE >= VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE * VIRTIO_MMIO_SLOTS as u64);
    assert!(IMSIC_BASE + IMSIC_STRIDE * MAX_HARTS as u64 <= RAM_BASE);
    assert!(AIA_NR_IDS >= 63 && AIA_NR_IDS <= 2047);
};

/// Drives wired source `n`'s level (1-based, as the device tree numbers
/// them).
pub type SourceLevel = Arc<dyn Fn(u32, bool) + Send + Sync>;

/// One wired source as a level-triggered line for a device.
pub struct SourceLine {
    set: SourceLevel,
    source: u32,
}

impl SourceLine {
    pub fn new(set: SourceLevel, source: u32) -> Self {
        SourceLine { set, source }
    }
}

impl crate::devices::virtio::IrqLine for SourceLine {
    fn set_level(&self, asserted: bool) {
        (self.set)(self.source, asserted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_unknown_ones_are_named() {
        assert_eq!("auto".parse(), Ok(IrqchipChoice::Auto));
        assert_eq!("plic".parse(), Ok(IrqchipChoice::Plic));
        assert_eq!("aia".parse(), Ok(IrqchipChoice::Aia));
        let err = "gic".parse::<IrqchipChoice>().unwrap_err();
        assert!(
            err.contains("'gic'") && err.contains("auto, plic or aia"),
            "{err}"
        );
    }

    #[test]
    fn hart_bits_number_every_hart_and_imsics_decode_to_their_hart() {
        for harts in 1..=64u32 {
            let bits = hart_bits(harts);
            assert!(bits >= 1);
            assert!(harts - 1 < (1 << bits), "{harts} harts in {bits} bits");
            if harts > 2 {
                assert!(
                    harts > (1 << (bits - 1)),
                    "{harts}: {bits} bits is too many"
                );
            }
            for hart in 0..harts {
                let addr = imsic_address(hart);
                assert_eq!(addr % IMSIC_STRIDE, 0);
                assert_eq!((addr / IMSIC_STRIDE) & ((1 << bits) - 1), hart as u64);
            }
        }
    }

    #[test]
    fn a_source_line_drives_its_own_source() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let line = SourceLine::new(Arc::new(move |n, l| s.lock().unwrap().push((n, l))), 7);
        use crate::devices::virtio::IrqLine;
        line.set_level(true);
        line.set_level(false);
        assert_eq!(*seen.lock().unwrap(), [(7, true), (7, false)]);
    }
}
