//! An ACPI-style PM1a control register at port 0x604 (where QEMU's q35
//! machine has it): writing SLP_EN with sleep type S5 powers the VM off.
//! It gives the built-in guest, and later an ACPI FADT, a way to power off
//! that x86 lacks without ACPI.

use std::sync::Arc;

use crate::memory::{AccessRules, RegionOps};
use crate::vmm::exit::{ExitReason, ExitSignal};

/// The conventional port of PM1a_CNT.
pub const PM1A_CNT_PORT: u64 = 0x604;
/// The register is 16 bits wide.
pub const PM1A_CNT_LEN: u128 = 2;

const SLP_EN: u64 = 1 << 13;
const SLP_TYP_SHIFT: u64 = 10;
const SLP_TYP_MASK: u64 = 0x7;
/// The sleep type Ember's firmware tables will give S5.
const SLP_TYP_S5: u64 = 0;

/// The PM1a control register.
pub struct PowerControl {
    exit: Arc<ExitSignal>,
}

impl PowerControl {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        PowerControl { exit }
    }
}

impl RegionOps for PowerControl {
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        // SCI_EN reads as set: the platform is in ACPI mode.
        1
    }

    fn write(&self, offset: u64, _size: u32, value: u64) {
        if offset == 0
            && value & SLP_EN != 0
            && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLP_TYP_S5
        {
            self.exit.request(ExitReason::PowerOff);
        }
    }

    fn rules(&self) -> AccessRules {
        AccessRules {
            valid_min: 1,
            valid_max: 2,
            valid_unaligned: false,
            impl_min: 2,
            impl_max: 2,
            ..AccessRules::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryTree, Unassigned};

    #[test]
    fn slp_en_with_s5_powers_off_and_nothing_else_does() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut tree = MemoryTree::new();
        let io = tree.new_io("io", 0x10000, None).unwrap();
        let pm = tree
            .new_io(
                "pm1a-cnt",
                PM1A_CNT_LEN,
                Some(Arc::new(PowerControl::new(exit.clone()))),
            )
            .unwrap();
        tree.add_subregion(io, PM1A_CNT_PORT, pm).unwrap();
        let space = tree
            .add_address_space("I/O", io, Unassigned::AllOnes)
            .unwrap();
        space.write(PM1A_CNT_PORT, 2, 1 << 10 | SLP_EN); // S1-like type: ignored
        space.write(PM1A_CNT_PORT, 2, 0); // no SLP_EN
        assert!(!exit.is_requested());
        assert_eq!(space.read(PM1A_CNT_PORT, 2).0, 1);
        space.write(PM1A_CNT_PORT, 2, SLP_EN);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }
}

/// The hardware-reduced ACPI sleep control register (a byte; the FADT
/// points at it): writing SLP_EN (bit 5) with the `_S5` sleep type in bits
/// 4:2 powers the VM off. How a Linux guest's `poweroff` ends the VM.
pub struct SleepControl {
    exit: Arc<ExitSignal>,
    s5_type: u8,
}

/// Its port and size (control, then status), as the FADT describes.
pub const SLEEP_CONTROL_LEN: u128 = 2;

const X_SLP_EN: u64 = 1 << 5;

impl SleepControl {
    /// `s5_type` is the sleep type the DSDT's `_S5` package declares.
    pub fn new(exit: Arc<ExitSignal>, s5_type: u8) -> Self {
        SleepControl { exit, s5_type }
    }
}

impl RegionOps for SleepControl {
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        0
    }

    fn write(&self, offset: u64, _size: u32, value: u64) {
        if offset == 0 && value & X_SLP_EN != 0 && (value >> 2) & 0x7 == self.s5_type as u64 {
            self.exit.request(ExitReason::PowerOff);
        }
    }

    fn rules(&self) -> AccessRules {
        AccessRules::with_impl(1, 1)
    }
}

#[cfg(test)]
mod sleep_tests {
    use super::*;

    #[test]
    fn slp_en_with_the_s5_type_powers_off() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let dev = SleepControl::new(exit.clone(), 5);
        dev.write(0, 1, (3 << 2) | X_SLP_EN); // S3: ignored
        dev.write(0, 1, 5 << 2); // no SLP_EN
        dev.write(1, 1, (5 << 2) | X_SLP_EN); // status register
        assert!(!exit.is_requested());
        dev.write(0, 1, (5 << 2) | X_SLP_EN);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }
}
