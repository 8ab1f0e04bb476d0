//! A minimal i8042 keyboard controller, as Firecracker has: enough for a
//! Linux guest's `reboot` (reboot=k pulses the CPU reset line through
//! command 0xfe) to end the VM.

use std::sync::Arc;

use crate::memory::{AccessRules, RegionOps};
use crate::vmm::exit::{ExitReason, ExitSignal};

/// The data port; the command/status port is `I8042_PORT + 4`.
pub const I8042_PORT: u64 = 0x60;
/// One region covers 0x60..=0x64.
pub const I8042_LEN: u128 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;
const CMD_RESET_CPU: u64 = 0xfe;

/// The controller.
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }
}

impl RegionOps for I8042 {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        match offset {
            // Status: output buffer empty, input buffer empty, system flag.
            COMMAND => 0x04,
            DATA => 0,
            _ => 0xff,
        }
    }

    fn write(&self, offset: u64, _size: u32, value: u64) {
        if offset == COMMAND && value & 0xff == CMD_RESET_CPU {
            self.exit.request(ExitReason::Reset);
        }
    }

    fn rules(&self) -> AccessRules {
        AccessRules::with_impl(1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryTree, Unassigned};

    #[test]
    fn only_the_reset_command_resets() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut tree = MemoryTree::new();
        let io = tree.new_io("io", 0x10000, None).unwrap();
        let dev = tree
            .new_io("i8042", I8042_LEN, Some(Arc::new(I8042::new(exit.clone()))))
            .unwrap();
        tree.add_subregion(io, I8042_PORT, dev).unwrap();
        let space = tree
            .add_address_space("I/O", io, Unassigned::AllOnes)
            .unwrap();
        assert_eq!(space.read(0x64, 1).0 & 0x3, 0, "no data pending");
        space.write(0x64, 1, 0xad);
        space.write(0x60, 1, 0xfe);
        assert!(!exit.is_requested());
        space.write(0x64, 1, 0xfe);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
        // Ports between data and command belong to no one else either.
        assert_eq!(space.read(0x61, 1).0, 0xff);
    }
}
