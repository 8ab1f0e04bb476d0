//! `ember-info`: a small MMIO page that identifies the VMM to a guest and
//! gives it a scratch register. The built-in guest uses it to check that
//! MMIO reaches a device through dispatch; tests use it the same way.
//!
//! Registers (32-bit, little endian): 0x0 magic "EMBR", 0x4 interface
//! version, 0x8 scratch (read/write), 0xc number of vCPUs.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::memory::{AccessRules, RegionOps};

/// Where the x86 machine puts it: in the legacy option-ROM hole, so that
/// real-mode code reaches it.
pub const EMBER_INFO_ADDR: u64 = 0xd0000;
/// One page.
pub const EMBER_INFO_LEN: u128 = 0x1000;

const MAGIC: u32 = u32::from_le_bytes(*b"EMBR");
const VERSION: u32 = 1;

/// The device.
pub struct EmberInfo {
    scratch: AtomicU32,
    cpus: u32,
}

impl EmberInfo {
    pub fn new(cpus: u32) -> Self {
        EmberInfo {
            scratch: AtomicU32::new(0),
            cpus,
        }
    }
}

impl RegionOps for EmberInfo {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        (match offset {
            0x0 => MAGIC,
            0x4 => VERSION,
            0x8 => self.scratch.load(Ordering::Relaxed),
            0xc => self.cpus,
            _ => 0,
        }) as u64
    }

    fn write(&self, offset: u64, _size: u32, value: u64) {
        if offset == 0x8 {
            self.scratch.store(value as u32, Ordering::Relaxed);
        }
    }

    fn rules(&self) -> AccessRules {
        AccessRules::with_impl(4, 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryTree, Unassigned, SIZE_2_64};
    use std::sync::Arc;

    #[test]
    fn registers_read_back() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let dev = tree
            .new_io(
                "ember-info",
                EMBER_INFO_LEN,
                Some(Arc::new(EmberInfo::new(2))),
            )
            .unwrap();
        tree.add_subregion(sys, EMBER_INFO_ADDR, dev).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        assert_eq!(mem.read(EMBER_INFO_ADDR, 4).0, 0x5242_4d45);
        mem.write(EMBER_INFO_ADDR + 8, 4, 0xcafe_1234);
        assert_eq!(mem.read(EMBER_INFO_ADDR + 8, 4).0, 0xcafe_1234);
        // A byte read is widened to the 32-bit register and narrowed back.
        assert_eq!(mem.read(EMBER_INFO_ADDR + 8, 1).0, 0x34);
        assert_eq!(mem.read(EMBER_INFO_ADDR + 0xc, 4).0, 2);
    }
}
