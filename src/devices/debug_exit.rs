//! QEMU's isa-debug-exit: a guest write of value v ends the VM, and Ember
//! exits with status `(v << 1) | 1` (see [`ExitReason::exit_code`]), so test
//! guests and firmware can report pass/fail without a console.

use std::sync::Arc;

use crate::memory::{AccessRules, RegionOps};
use crate::vmm::exit::{ExitReason, ExitSignal};

/// QEMU's default I/O base (`iobase=0x501`).
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// QEMU's default I/O size (`iosize=2`).
pub const DEBUG_EXIT_LEN: u128 = 2;

/// The device.
pub struct DebugExit {
    exit: Arc<ExitSignal>,
}

impl DebugExit {
    /// A device that reports guest writes to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        DebugExit { exit }
    }
}

impl RegionOps for DebugExit {
    /// Write-only: reads return 0.
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        0
    }

    /// Any write, at any offset and of any valid size, ends the VM with the
    /// written value, as in QEMU (which ignores the address too).
    fn write(&self, _offset: u64, _size: u32, value: u64) {
        self.exit.request(ExitReason::DebugExit(value as u32));
    }

    /// QEMU's `debug_exit_ops`: accesses of 1, 2 or 4 bytes, whole.
    fn rules(&self) -> AccessRules {
        AccessRules {
            valid_max: 4,
            impl_max: 4,
            ..AccessRules::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_util::io_space;
    use crate::memory::{AddressSpace, MemTxResult, MemoryTree};

    const PORT: u64 = DEBUG_EXIT_PORT as u64;

    fn rig() -> (Arc<ExitSignal>, AddressSpace, MemoryTree) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let dev = Arc::new(DebugExit::new(exit.clone()));
        let (tree, io) = io_space(vec![("isa-debug-exit", PORT, DEBUG_EXIT_LEN, dev)]);
        (exit, io, tree)
    }

    #[test]
    fn a_byte_write_ends_the_vm_with_qemus_status() {
        let (exit, io, _tree) = rig();
        assert_eq!(io.read(PORT, 1), (0, MemTxResult::Ok));
        assert_eq!(io.read(PORT, 2), (0, MemTxResult::Ok));
        assert!(!exit.is_requested(), "reads do not exit");
        assert_eq!(io.write_buf(PORT, &[0x31]), MemTxResult::Ok);
        let reason = exit.reason();
        assert_eq!(reason, Some(ExitReason::DebugExit(0x31)));
        assert_eq!(reason.map(|r| r.exit_code()), Some(0x63));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn word_and_dword_writes_carry_the_whole_value() {
        let (exit, io, _tree) = rig();
        assert_eq!(
            io.write_buf(PORT, &0x1234u16.to_le_bytes()),
            MemTxResult::Ok
        );
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(0x1234)));

        let (exit, io, _tree) = rig();
        // outl runs past the 2-byte region but goes whole to it.
        assert_eq!(io.write(PORT, 4, 0xdead_beef), MemTxResult::Ok);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(0xdead_beef)));
        assert_eq!(ExitReason::DebugExit(0xdead_beef).exit_code(), 0xdf);
    }

    #[test]
    fn the_second_port_exits_too_and_eight_bytes_are_rejected() {
        let (exit, io, _tree) = rig();
        assert_eq!(io.write(PORT, 8, 1), MemTxResult::Invalid);
        assert!(!exit.is_requested());
        assert_eq!(io.write(PORT + 1, 1, 0), MemTxResult::Ok);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(0)));
        assert_eq!(ExitReason::DebugExit(0).exit_code(), 1);
    }

    #[test]
    fn hostile_values_do_not_panic() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let dev = DebugExit::new(exit.clone());
        dev.write(u64::MAX, 8, u64::MAX);
        assert_eq!(dev.read(u64::MAX, 8), 0);
        let reason = exit.reason();
        assert_eq!(reason, Some(ExitReason::DebugExit(u32::MAX)));
        // (v << 1) | 1 must not overflow for any v.
        assert_eq!(reason.map(|r| r.exit_code()), Some(0xff));
    }
}
