//! A minimal i8042 keyboard controller, as Firecracker has one: its only job
//! is the CPU reset line. A Linux guest without ACPI reboots (`reboot=k`,
//! and the fallback after a failed ACPI reset) by waiting for the input
//! buffer to be empty and writing command 0xfe to port 0x64; that ends the
//! VM with [`ExitReason::Reset`] (Ember, like Firecracker, does not restart
//! the guest).
//!
//! There is no keyboard behind it, but the controller answers the probes a
//! Linux driver makes while it initialises (read and write the command
//! byte, self-test, keyboard interface test), so the guest does not wait
//! half a second for answers that never come. Other commands are accepted
//! and ignored; the data port reads 0 when nothing is pending.
//!
//! Written by hand rather than with vm-superio's `I8042Device`: that one
//! needs `&mut self` and reads 0 from the status port, where this model
//! sets the system flag a controller that passed its self-test reports.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::memory::{AccessRules, RegionOps};
use crate::vmm::exit::{ExitReason, ExitSignal};

/// The data port; the command/status port is `I8042_PORT + 4` (0x64).
pub const I8042_PORT: u64 = 0x60;
/// One region covers 0x60..=0x64. Ports 0x61..=0x63 are not the
/// controller's (0x61 is the PC's system control port B, which KVM's
/// in-kernel PIT emulates); here they read all ones and ignore writes, as
/// unclaimed ports do.
pub const I8042_LEN: u128 = 5;

/// Offset of the data port.
const DATA: u64 = 0;
/// Offset of the command (write) / status (read) port.
const COMMAND: u64 = 4;
/// "Pulse output port bit 0": the CPU reset line.
const CMD_RESET_CPU: u64 = 0xfe;
const CMD_READ_CTR: u64 = 0x20;
const CMD_WRITE_CTR: u64 = 0x60;
const CMD_SELF_TEST: u64 = 0xaa;
const CMD_KBD_TEST: u64 = 0xab;
/// Status: input buffer empty (bit 1 clear), system flag set (bit 2,
/// self-test passed); bit 0 says whether the data port holds a byte.
const STATUS: u64 = 0x04;
const STATUS_OUTPUT_FULL: u64 = 0x01;
/// The command byte after reset: keyboard interrupt on, system flag,
/// translation on.
const CTR_DEFAULT: u8 = 0x45;

struct State {
    ctr: u8,
    output: VecDeque<u8>,
    /// A command that takes its argument through the data port.
    awaiting: Option<u64>,
}

/// The controller.
pub struct I8042 {
    exit: Arc<ExitSignal>,
    state: Mutex<State>,
}

impl I8042 {
    /// A controller that reports a reset pulse to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            exit,
            state: Mutex::new(State {
                ctr: CTR_DEFAULT,
                output: VecDeque::new(),
                awaiting: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The controller's registers, for a snapshot.
    pub fn state(&self) -> I8042State {
        let state = self.lock();
        I8042State {
            ctr: state.ctr,
            output: state.output.iter().copied().collect(),
            awaiting_ctr: state.awaiting == Some(CMD_WRITE_CTR),
        }
    }

    /// Loads a saved state (restore). The output queue is cut to the
    /// length a running controller never exceeds.
    pub fn restore_state(&self, saved: &I8042State) {
        let mut state = self.lock();
        state.ctr = saved.ctr;
        let skip = saved.output.len().saturating_sub(MAX_OUTPUT);
        state.output = saved.output[skip..].iter().copied().collect();
        state.awaiting = saved.awaiting_ctr.then_some(CMD_WRITE_CTR);
    }
}

/// What a snapshot saves of the controller.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// The command byte.
    pub ctr: u8,
    /// Answers the guest has not read yet, oldest first.
    pub output: Vec<u8>,
    /// A "write command byte" command waits for its argument.
    pub awaiting_ctr: bool,
}

/// Answers kept for a guest that does not read them.
const MAX_OUTPUT: usize = 16;

impl RegionOps for I8042 {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        match offset {
            COMMAND => {
                if self.lock().output.is_empty() {
                    STATUS
                } else {
                    STATUS | STATUS_OUTPUT_FULL
                }
            }
            DATA => self.lock().output.pop_front().unwrap_or(0) as u64,
            _ => 0xff,
        }
    }

    fn write(&self, offset: u64, _size: u32, value: u64) {
        let value = value & 0xff;
        match offset {
            COMMAND => {
                let mut state = self.lock();
                state.awaiting = None;
                match value {
                    CMD_RESET_CPU => self.exit.request(ExitReason::Reset),
                    CMD_READ_CTR => {
                        let ctr = state.ctr;
                        state.output.push_back(ctr);
                    }
                    CMD_WRITE_CTR => state.awaiting = Some(CMD_WRITE_CTR),
                    CMD_SELF_TEST => state.output.push_back(0x55),
                    CMD_KBD_TEST => state.output.push_back(0x00),
                    _ => {}
                }
                // A guest that never reads cannot grow the queue.
                while state.output.len() > MAX_OUTPUT {
                    state.output.pop_front();
                }
            }
            DATA => {
                let mut state = self.lock();
                if state.awaiting.take() == Some(CMD_WRITE_CTR) {
                    state.ctr = value as u8;
                }
            }
            _ => {}
        }
    }

    /// Byte ports, as QEMU's i8042: wider accesses are split into bytes.
    fn rules(&self) -> AccessRules {
        AccessRules::with_impl(1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_util::io_space;
    use crate::memory::{AddressSpace, MemTxResult, MemoryTree};

    const DATA_PORT: u64 = 0x60;
    const CMD_PORT: u64 = 0x64;

    fn rig() -> (Arc<ExitSignal>, AddressSpace, MemoryTree) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let dev = Arc::new(I8042::new(exit.clone()));
        let (tree, io) = io_space(vec![("i8042", I8042_PORT, I8042_LEN, dev)]);
        (exit, io, tree)
    }

    #[test]
    fn linux_reboot_sequence_resets() {
        let (exit, io, _tree) = rig();
        // kb_wait(): poll until the input buffer is empty.
        let status = io.read(CMD_PORT, 1);
        assert_eq!(status, (STATUS, MemTxResult::Ok));
        assert_eq!(status.0 & 0x03, 0, "no data pending, ready for a command");
        assert!(!exit.is_requested());
        // outb(0xfe, 0x64), as a KVM port-I/O exit delivers it.
        assert_eq!(io.write_buf(CMD_PORT, &[0xfe]), MemTxResult::Ok);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn other_commands_and_ports_do_not_reset() {
        let (exit, io, _tree) = rig();
        // Disable/enable keyboard, read/write the command byte, write the
        // output port, self-test...
        for cmd in [0xad, 0xae, 0xa7, 0xa8, 0x20, 0x60, 0xd1, 0xaa, 0xff, 0x00] {
            assert_eq!(io.write(CMD_PORT, 1, cmd), MemTxResult::Ok);
        }
        // 0xfe sent to the keyboard (data port) is a resend request, not a
        // reset; nor is it on the ports in between.
        for port in DATA_PORT..CMD_PORT {
            io.write(port, 1, 0xfe);
        }
        // outw 0xfe00 to 0x64: the command port gets 0x00, 0xfe lands on
        // 0x65, which is nobody's.
        assert_eq!(io.write(CMD_PORT, 2, 0xfe00), MemTxResult::Ok);
        assert!(!exit.is_requested());
        // 0x20 and 0xaa left their answers; once read, nothing is pending.
        while io.read(CMD_PORT, 1).0 & 0x01 != 0 {
            io.read(DATA_PORT, 1);
        }
        assert_eq!(io.read(DATA_PORT, 1), (0, MemTxResult::Ok));
        assert_eq!(io.read(0x61, 1).0, 0xff);
        assert_eq!(io.read(CMD_PORT, 1).0 & 0x03, 0, "nothing pending");
    }

    /// The probes Linux's i8042 driver makes while it initialises.
    #[test]
    fn linux_probe_is_answered() {
        let (exit, io, _tree) = rig();
        io.write(CMD_PORT, 1, 0xaa);
        assert_eq!(io.read(CMD_PORT, 1).0 & 0x01, 1, "output full");
        assert_eq!(io.read(DATA_PORT, 1).0, 0x55, "self-test passed");
        io.write(CMD_PORT, 1, 0x20);
        let ctr = io.read(DATA_PORT, 1).0;
        assert_eq!(ctr, CTR_DEFAULT as u64);
        io.write(CMD_PORT, 1, 0x60);
        io.write(DATA_PORT, 1, 0x44);
        io.write(CMD_PORT, 1, 0x20);
        assert_eq!(io.read(DATA_PORT, 1).0, 0x44, "command byte written");
        io.write(CMD_PORT, 1, 0xab);
        assert_eq!(io.read(DATA_PORT, 1).0, 0x00, "keyboard interface ok");
        assert_eq!(io.read(CMD_PORT, 1).0 & 0x01, 0);
        // Answers a guest never reads do not pile up.
        for _ in 0..1000 {
            io.write(CMD_PORT, 1, 0xaa);
        }
        let mut n = 0;
        while io.read(CMD_PORT, 1).0 & 0x01 != 0 {
            io.read(DATA_PORT, 1);
            n += 1;
        }
        assert_eq!(n, 16);
        assert!(!exit.is_requested());
    }

    #[test]
    fn state_round_trips() {
        let copy = I8042::new(Arc::new(ExitSignal::new().unwrap()));
        let dev = I8042::new(Arc::new(ExitSignal::new().unwrap()));
        dev.write(COMMAND, 1, CMD_SELF_TEST);
        dev.write(COMMAND, 1, CMD_WRITE_CTR);
        let saved = dev.state();
        assert_eq!(saved.output, vec![0x55]);
        assert!(saved.awaiting_ctr);
        copy.restore_state(&saved);
        assert_eq!(copy.state(), saved);
        copy.write(DATA, 1, 0x44);
        copy.write(COMMAND, 1, CMD_READ_CTR);
        assert_eq!(copy.read(DATA, 1), 0x55);
        assert_eq!(copy.read(DATA, 1), 0x44);
    }

    #[test]
    fn a_wide_write_resets_through_its_low_byte() {
        let (exit, io, _tree) = rig();
        // outw 0x00fe to 0x64: the low byte reaches the command port.
        assert_eq!(io.write(CMD_PORT, 2, 0x00fe), MemTxResult::Ok);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn hostile_offsets_do_not_panic_or_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let dev = I8042::new(exit.clone());
        for offset in [5, 0x104, u64::MAX] {
            assert_eq!(dev.read(offset, 8), 0xff);
            dev.write(offset, 8, CMD_RESET_CPU);
        }
        assert!(!exit.is_requested());
    }
}
