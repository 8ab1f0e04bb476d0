//! QEMU's isa-debug-exit: a guest write of value v ends the VM, and Ember
//! exits with status `(v << 1) | 1`, so test guests can report results.

use std::sync::Arc;

use crate::memory::{AccessRules, RegionOps};
use crate::vmm::exit::{ExitReason, ExitSignal};

/// QEMU's default I/O base.
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// QEMU's default I/O size.
pub const DEBUG_EXIT_LEN: u128 = 2;

/// The device.
pub struct DebugExit {
    exit: Arc<ExitSignal>,
}

impl DebugExit {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        DebugExit { exit }
    }
}

impl RegionOps for DebugExit {
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        0
    }

    fn write(&self, _offset: u64, _size: u32, value: u64) {
        self.exit.request(ExitReason::DebugExit(value as u32));
    }

    fn rules(&self) -> AccessRules {
        AccessRules {
            valid_max: 4,
            ..AccessRules::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryTree, Unassigned};

    #[test]
    fn a_write_ends_the_vm_with_qemus_status() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut tree = MemoryTree::new();
        let io = tree.new_io("io", 0x10000, None).unwrap();
        let dev = tree
            .new_io(
                "isa-debug-exit",
                DEBUG_EXIT_LEN,
                Some(Arc::new(DebugExit::new(exit.clone()))),
            )
            .unwrap();
        tree.add_subregion(io, DEBUG_EXIT_PORT as u64, dev).unwrap();
        let space = tree
            .add_address_space("I/O", io, Unassigned::AllOnes)
            .unwrap();
        assert_eq!(space.read(0x501, 1).0, 0);
        assert!(!exit.is_requested());
        space.write(0x501, 1, 0x31);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(0x31)));
        assert_eq!(ExitReason::DebugExit(0x31).exit_code(), 0x63);
    }
}
