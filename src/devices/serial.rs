//! COM1: a 16550 UART from vm-superio behind a `RegionOps`.
//!
//! vm-superio's receive FIFO holds 64 bytes; pasted input can be longer, so
//! the device keeps an overflow queue and refills the FIFO whenever the guest
//! reads a byte (written by hand: vm-superio has no such queue).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

use vm_superio::serial::NoEvents;
use vm_superio::Serial as Uart;
use vmm_sys_util::eventfd::EventFd;

use super::irq::EventFdTrigger;
use crate::memory::{AccessRules, RegionOps};

/// Input bytes held back beyond this are dropped (and counted).
pub const MAX_PENDING_INPUT: usize = 64 << 10;

/// The receive-buffer register offset.
const DATA: u64 = 0;

type Inner = Uart<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

struct State {
    uart: Inner,
    pending: VecDeque<u8>,
    dropped: u64,
}

/// A 16550 UART.
pub struct Serial {
    state: Mutex<State>,
    irq: EventFd,
}

impl Serial {
    /// A UART raising `trigger` and writing guest output to `out`.
    pub fn new(trigger: EventFdTrigger, out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let irq = trigger.event().try_clone()?;
        Ok(Serial {
            state: Mutex::new(State {
                uart: Uart::new(trigger, out),
                pending: VecDeque::new(),
                dropped: 0,
            }),
            irq,
        })
    }

    /// The interrupt eventfd, to register as an irqfd.
    pub fn irq_event(&self) -> &EventFd {
        &self.irq
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues host input for the guest.
    pub fn enqueue_input(&self, bytes: &[u8]) {
        let mut state = self.lock();
        let room = MAX_PENDING_INPUT.saturating_sub(state.pending.len());
        let keep = bytes.len().min(room);
        state.pending.extend(&bytes[..keep]);
        state.dropped += (bytes.len() - keep) as u64;
        Self::refill(&mut state);
    }

    /// Input bytes dropped because the guest did not read fast enough.
    pub fn dropped_input(&self) -> u64 {
        self.lock().dropped
    }

    fn refill(state: &mut State) {
        let room = state.uart.fifo_capacity().min(state.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = state.pending.iter().take(room).copied().collect();
        if let Ok(n) = state.uart.enqueue_raw_bytes(&chunk) {
            state.pending.drain(..n);
        }
    }
}

impl RegionOps for Serial {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        let Ok(reg) = u8::try_from(offset) else {
            return 0;
        };
        let mut state = self.lock();
        let value = state.uart.read(reg);
        if offset == DATA && !state.pending.is_empty() {
            Self::refill(&mut state);
        }
        value as u64
    }

    fn write(&self, offset: u64, _size: u32, value: u64) {
        let Ok(reg) = u8::try_from(offset) else {
            return;
        };
        // An output error (a closed pipe) must not stop the guest.
        let _ = self.lock().uart.write(reg, value as u8);
    }

    /// Byte registers, like QEMU's serial: wider accesses are split.
    fn rules(&self) -> AccessRules {
        AccessRules::with_impl(1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{AddressSpace, MemoryTree, Unassigned};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn setup() -> (Arc<Serial>, AddressSpace, Shared, MemoryTree) {
        let out = Shared::default();
        let serial =
            Arc::new(Serial::new(EventFdTrigger::new().unwrap(), Box::new(out.clone())).unwrap());
        let mut tree = MemoryTree::new();
        let io = tree.new_io("io", 0x10000, None).unwrap();
        let dev = tree.new_io("serial", 8, Some(serial.clone())).unwrap();
        tree.add_subregion(io, 0x3f8, dev).unwrap();
        let space = tree
            .add_address_space("I/O", io, Unassigned::AllOnes)
            .unwrap();
        (serial, space, out, tree)
    }

    #[test]
    fn output_status_and_divisor() {
        let (_serial, io, out, _tree) = setup();
        io.write(0x3f8, 1, b'A' as u64);
        io.write(0x3f8, 1, b'\n' as u64);
        assert_eq!(out.0.lock().unwrap().as_slice(), b"A\n");
        let lsr = io.read(0x3fd, 1).0;
        assert_eq!(lsr & 0x60, 0x60, "THR empty and idle");
        io.write(0x3fb, 1, 0x80); // DLAB
        io.write(0x3f8, 1, 0x0c);
        io.write(0x3f9, 1, 0x00);
        assert_eq!(io.read(0x3f8, 1).0, 0x0c);
        io.write(0x3fb, 1, 0x03);
        assert!(
            out.0.lock().unwrap().len() == 2,
            "divisor writes are not output"
        );
    }

    #[test]
    fn long_input_arrives_in_order_and_raises_the_irq() {
        let (serial, io, _out, _tree) = setup();
        io.write(0x3f9, 1, 1); // IER: received data available
        let input: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        serial.enqueue_input(&input);
        let trigger_count = serial.irq_event().read().unwrap_or(0);
        assert!(trigger_count >= 1);
        let mut got = Vec::new();
        while io.read(0x3fd, 1).0 & 1 != 0 {
            got.push(io.read(0x3f8, 1).0 as u8);
        }
        assert_eq!(got, input);
        assert_eq!(serial.dropped_input(), 0);
    }

    #[test]
    fn hostile_offsets_do_not_panic() {
        let serial =
            Serial::new(EventFdTrigger::new().unwrap(), Box::new(std::io::sink())).unwrap();
        assert_eq!(serial.read(0x1_0000, 1), 0);
        serial.write(u64::MAX, 1, 0xff);
        serial.write(7, 1, 0xff);
    }
}
