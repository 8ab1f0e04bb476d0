//! A 16550A UART (COM1): vm-superio's `Serial` behind a [`RegionOps`].
//!
//! vm-superio does the register model, the transmit path (every byte is
//! written to the output and flushed at once, so the console is
//! interactive) and interrupt triggering. That write happens on the vCPU
//! or hart thread with this device's lock held, so the VMM's output
//! (`SharedOutput` in `vmm/console.rs`) only queues the byte into a
//! bounded buffer and never waits for the host's reader. Two things it lacks are written by
//! hand here:
//!
//! * **An input queue beyond the 64-byte receive FIFO.** vm-superio refuses
//!   input once its FIFO is full and expects the VMM to stop reading its
//!   input source until the guest drains it. Ember's console reader just
//!   hands over whatever arrived, so bytes that do not fit wait in an
//!   overflow queue (capped at [`MAX_PENDING_INPUT`]) and move into the FIFO
//!   each time the guest has emptied it. Pasted text is therefore never
//!   lost, only delivered 64 bytes at a time.
//! * **A level-style "received data available" indication in IIR.**
//!   vm-superio clears the RDA interrupt on every RBR read and on every IIR
//!   read, even when data remains. On a real 16550 the RDA condition lasts
//!   as long as the FIFO holds data. Linux's 8250 driver reads at most 256
//!   bytes per pass and then polls IIR again to decide whether to go on;
//!   with a refilled FIFO it would find "no interrupt" and leave the rest of
//!   a long paste sitting in the FIFO until the next keystroke. So an IIR
//!   read reports RDA whenever data is waiting and RX interrupts are on.
//! * **A level output for level-triggered interrupt controllers** (the
//!   RISC-V PLIC). vm-superio only pulses its trigger (an edge, which suits
//!   KVM's irqfd on x86). [`Serial::set_level_listener`] adds the 16550's
//!   INTR pin: high while an enabled interrupt condition holds (received
//!   data waiting with RX interrupts on, or a THR-empty indication with TX
//!   interrupts on), computed without side effects after every register
//!   access and every arrival of input, and reported when it changes.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_superio::serial::{Error as UartError, NoEvents};
use vmm_sys_util::eventfd::EventFd;

use super::irq::EventFdTrigger;
use crate::memory::{AccessRules, Endianness, RegionOps};

/// COM1's base port.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's interrupt line (ISA IRQ 4), the GSI to register
/// [`Serial::irq_event`] with as a KVM irqfd.
pub const COM1_GSI: u32 = 4;
/// The UART decodes eight ports.
pub const SERIAL_LEN: u128 = 8;
/// Input bytes held back beyond the FIFO; more than this is dropped and
/// counted ([`Serial::dropped_input`]), so a guest that never reads cannot
/// make the VMM buffer without bound.
pub const MAX_PENDING_INPUT: usize = 64 << 10;

// Register offsets and bits (16550A data sheet) the wrapper itself needs.
const IER: u8 = 1;
const IIR: u8 = 2;
const LCR: u8 = 3;
const LSR: u8 = 5;
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IIR_NO_INT: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const LCR_DLAB: u8 = 0x80;
const LSR_DATA_READY: u8 = 0x01;

type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// What a snapshot saves of the UART: vm-superio's registers and receive
/// FIFO, plus the input waiting beyond the FIFO.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// The receive FIFO, oldest first.
    pub fifo: Vec<u8>,
    /// Input waiting beyond the FIFO, oldest first.
    pub pending: Vec<u8>,
}

/// Why a saved UART state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    #[error("the saved receive FIFO holds {0} bytes, more than the UART's 64")]
    FifoTooLong(usize),
    #[error("the saved overflow queue holds {0} bytes, more than {MAX_PENDING_INPUT}")]
    PendingTooLong(usize),
    #[error("cannot raise the UART interrupt: {0}")]
    Trigger(String),
}

/// Receives the UART's interrupt level; see [`Serial::set_level_listener`].
pub type LevelListener = Box<dyn Fn(bool) + Send + Sync>;

/// Everything behind the device's lock.
struct State {
    uart: Uart,
    /// The FIFO's capacity (vm-superio keeps it private), to tell when the
    /// guest has emptied it.
    fifo_size: usize,
    /// Input that did not fit into the FIFO, oldest first.
    pending: VecDeque<u8>,
    dropped_input: u64,
    lost_output: u64,
    /// Who wants the interrupt level, and the level last reported to it
    /// (`None`: nothing reported yet).
    level_listener: Option<LevelListener>,
    reported_level: Option<bool>,
}

impl State {
    /// Moves waiting input into the FIFO once the guest has emptied it.
    /// Refilling only an empty FIFO raises one interrupt per FIFO-full
    /// instead of one per byte.
    fn refill_if_drained(&mut self) {
        if self.pending.is_empty() || self.uart.fifo_capacity() < self.fifo_size {
            return;
        }
        let mut chunk = [0u8; 64];
        loop {
            let len = self
                .uart
                .fifo_capacity()
                .min(self.pending.len())
                .min(chunk.len());
            if len == 0 {
                return;
            }
            for (slot, byte) in chunk.iter_mut().zip(self.pending.iter()) {
                *slot = *byte;
            }
            let moved = push_fifo(&mut self.uart, &chunk[..len]);
            if moved == 0 {
                // Loopback mode: the UART takes no external input.
                return;
            }
            self.pending.drain(..moved.min(self.pending.len()));
        }
    }

    /// The interrupt enable register, whatever the DLAB bit says (with DLAB
    /// set, offset 1 is the divisor latch).
    fn ier(&mut self) -> u8 {
        if self.uart.read(LCR) & LCR_DLAB == 0 {
            self.uart.read(IER)
        } else {
            self.uart.state().interrupt_enable
        }
    }

    /// The INTR pin: an interrupt condition that IER enables. Reads nothing
    /// through the register interface, so it changes no state (an IIR read
    /// would acknowledge the THR-empty interrupt).
    fn interrupt_level(&self) -> bool {
        let regs = self.uart.state();
        let ier = regs.interrupt_enable;
        let iir = regs.interrupt_identification;
        let rx_waiting = regs.line_status & LSR_DATA_READY != 0 || iir & IIR_RDA != 0;
        (rx_waiting && ier & IER_RDA != 0) || (iir & IIR_THRE != 0 && ier & IER_THRE != 0)
    }

    /// Tells the level listener, if any, about a change of the level. Runs
    /// with the lock held, so levels arrive in the order they happened.
    fn report_level(&mut self) {
        let Some(listener) = &self.level_listener else {
            return;
        };
        let level = self.interrupt_level();
        if self.reported_level != Some(level) {
            self.reported_level = Some(level);
            listener(level);
        }
    }

    /// IIR with RDA reported as a level; see the module documentation.
    fn read_iir(&mut self) -> u8 {
        let rx_waiting = self.uart.read(LSR) & LSR_DATA_READY != 0 && self.ier() & IER_RDA != 0;
        let iir = self.uart.read(IIR);
        if rx_waiting {
            (iir & !IIR_NO_INT) | IIR_RDA
        } else {
            iir
        }
    }
}

/// Puts as much of `bytes` into the FIFO as fits; returns how much did.
fn push_fifo(uart: &mut Uart, bytes: &[u8]) -> usize {
    let room = uart.fifo_capacity();
    match uart.enqueue_raw_bytes(bytes) {
        Ok(moved) => moved,
        // The bytes were queued; only raising the interrupt failed, which
        // means the eventfd counter is saturated and an interrupt is
        // pending anyway.
        Err(UartError::Trigger(_)) => room.min(bytes.len()),
        Err(_) => 0,
    }
}

/// The register a port offset names, if any. Accesses arrive whole at the
/// region's start, so a wide access near the end reaches offsets past 7;
/// those decode to nothing rather than wrapping onto real registers (a
/// wrapped read of RBR would eat a byte of input).
fn register(offset: u64) -> Option<u8> {
    (offset < SERIAL_LEN as u64).then_some(offset as u8)
}

/// A 16550A UART. Place it at [`COM1_PORT`] with [`SERIAL_LEN`] ports and
/// register [`Serial::irq_event`] as the irqfd for [`COM1_GSI`].
pub struct Serial {
    state: Mutex<State>,
    /// A second handle on the interrupt eventfd, reachable without the lock.
    irq: EventFdTrigger,
    /// Bytes written to the output (guest transmit and SBI console).
    tx_bytes: Arc<AtomicU64>,
    /// Input bytes handed to the UART.
    rx_bytes: AtomicU64,
}

/// Counts what goes through to the output.
struct CountingWriter {
    inner: Box<dyn Write + Send>,
    count: Arc<AtomicU64>,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Serial {
    /// A UART that raises `trigger` for interrupts and writes guest output
    /// to `out` (stdout or a file in the VMM).
    pub fn new(trigger: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        let irq = trigger.clone();
        let tx_bytes = Arc::new(AtomicU64::new(0));
        let out = Box::new(CountingWriter {
            inner: out,
            count: tx_bytes.clone(),
        });
        let uart = Uart::new(trigger, out);
        let fifo_size = uart.fifo_capacity();
        Serial {
            state: Mutex::new(State {
                uart,
                fifo_size,
                pending: VecDeque::new(),
                dropped_input: 0,
                lost_output: 0,
                level_listener: None,
                reported_level: None,
            }),
            irq,
            tx_bytes,
            rx_bytes: AtomicU64::new(0),
        }
    }

    /// (bytes output, bytes of input accepted) so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.tx_bytes.load(Ordering::Relaxed),
            self.rx_bytes.load(Ordering::Relaxed),
        )
    }

    /// The interrupt eventfd, to register with KVM as an irqfd.
    pub fn irq_event(&self) -> &EventFd {
        self.irq.event()
    }

    /// The interrupt line itself (for tests and for polling it).
    pub fn irq(&self) -> &EventFdTrigger {
        &self.irq
    }

    /// Drives a level-triggered interrupt input (a PLIC source) from the
    /// UART's INTR pin: `listener` is called at once with the current
    /// level, then whenever the level changes. It runs with the UART's lock
    /// held, so it must not call back into this UART. Replaces any earlier
    /// listener. The eventfd trigger keeps working alongside.
    pub fn set_level_listener(&self, listener: LevelListener) {
        let mut state = self.lock();
        state.level_listener = Some(listener);
        state.reported_level = None;
        state.report_level();
    }

    /// The INTR pin's current level (see the module documentation).
    pub fn interrupt_level(&self) -> bool {
        self.lock().interrupt_level()
    }

    /// A panic while the lock was held (a panicking writer) leaves the UART
    /// registers consistent, so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues host input for the guest: into the receive FIFO as far as it
    /// has room (raising the RX interrupt if enabled), the rest into the
    /// overflow queue, and beyond [`MAX_PENDING_INPUT`] dropped.
    pub fn enqueue_input(&self, bytes: &[u8]) {
        self.rx_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut state = self.lock();
        let mut rest = bytes;
        // Bytes already waiting go first, to keep the order.
        if state.pending.is_empty() {
            let moved = push_fifo(&mut state.uart, rest);
            rest = rest.get(moved..).unwrap_or_default();
        }
        let room = MAX_PENDING_INPUT.saturating_sub(state.pending.len());
        let keep = rest.len().min(room);
        state.pending.extend(&rest[..keep]);
        state.dropped_input += (rest.len() - keep) as u64;
        state.refill_if_drained();
        state.report_level();
    }

    /// Writes bytes to the UART's output stream without going through the
    /// registers: the SBI debug console of riscv64 guests shares the serial
    /// console's output this way, in order with the UART's own bytes.
    pub fn write_console(&self, bytes: &[u8]) {
        let mut state = self.lock();
        let writer = state.uart.writer_mut();
        if writer
            .write_all(bytes)
            .and_then(|_| writer.flush())
            .is_err()
        {
            state.lost_output += bytes.len() as u64;
        }
    }

    /// The registers, FIFO and waiting input, for a snapshot.
    pub fn state(&self) -> SerialSnapshot {
        let state = self.lock();
        let regs = state.uart.state();
        SerialSnapshot {
            baud_divisor_low: regs.baud_divisor_low,
            baud_divisor_high: regs.baud_divisor_high,
            interrupt_enable: regs.interrupt_enable,
            interrupt_identification: regs.interrupt_identification,
            line_control: regs.line_control,
            line_status: regs.line_status,
            modem_control: regs.modem_control,
            modem_status: regs.modem_status,
            scratch: regs.scratch,
            fifo: regs.in_buffer,
            pending: state.pending.iter().copied().collect(),
        }
    }

    /// Loads a saved state (restore), keeping this UART's output and
    /// interrupt line, and reports the resulting interrupt level.
    pub fn restore_state(&self, saved: &SerialSnapshot) -> Result<(), SerialStateError> {
        let mut state = self.lock();
        if saved.fifo.len() > state.fifo_size {
            return Err(SerialStateError::FifoTooLong(saved.fifo.len()));
        }
        if saved.pending.len() > MAX_PENDING_INPUT {
            return Err(SerialStateError::PendingTooLong(saved.pending.len()));
        }
        let regs = vm_superio::serial::SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.fifo.clone(),
        };
        // vm-superio builds a UART from a state only together with its
        // writer, so the current writer moves over (a sink stands in for
        // the moment between).
        let placeholder = Uart::new(self.irq.clone(), Box::new(std::io::sink()));
        let writer = std::mem::replace(&mut state.uart, placeholder).into_writer();
        state.uart = match Uart::from_state(&regs, self.irq.clone(), NoEvents, writer) {
            Ok(uart) => uart,
            Err(UartError::Trigger(e)) => return Err(SerialStateError::Trigger(e.to_string())),
            Err(_) => return Err(SerialStateError::FifoTooLong(saved.fifo.len())),
        };
        state.pending = saved.pending.iter().copied().collect();
        state.reported_level = None;
        state.report_level();
        Ok(())
    }

    /// Input bytes waiting beyond the FIFO.
    pub fn pending_input(&self) -> usize {
        self.lock().pending.len()
    }

    /// Input bytes dropped because the overflow queue was full.
    pub fn dropped_input(&self) -> u64 {
        self.lock().dropped_input
    }

    /// Output bytes the writer failed to take. The VMM's output never
    /// fails (its losses are counted in its own `console_output` counters);
    /// a writer given by a library user might. The guest is not told: like
    /// a UART with nothing attached, it goes on.
    pub fn lost_output(&self) -> u64 {
        self.lock().lost_output
    }
}

impl RegionOps for Serial {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        let Some(reg) = register(offset) else {
            return 0;
        };
        let mut state = self.lock();
        let value = if reg == IIR {
            state.read_iir()
        } else {
            state.uart.read(reg)
        };
        // After an RBR read the FIFO may have just run empty.
        state.refill_if_drained();
        state.report_level();
        value as u64
    }

    fn write(&self, offset: u64, _size: u32, value: u64) {
        let Some(reg) = register(offset) else {
            return;
        };
        let mut state = self.lock();
        match state.uart.write(reg, value as u8) {
            Ok(()) => {}
            Err(UartError::IOError(_)) => state.lost_output += 1,
            // A saturated interrupt eventfd: an interrupt is pending anyway.
            Err(_) => {}
        }
        // Leaving loopback mode lets waiting input in again.
        state.refill_if_drained();
        state.report_level();
    }

    /// Byte registers, as QEMU's `serial_io_ops`: accesses of up to 4 bytes
    /// (aligned or not) are accepted and split into byte accesses.
    fn rules(&self) -> AccessRules {
        AccessRules {
            valid_min: 1,
            valid_max: 4,
            valid_unaligned: true,
            impl_min: 1,
            impl_max: 1,
            impl_unaligned: false,
            endianness: Endianness::Little,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_util::io_space;
    use crate::memory::{AddressSpace, MemTxResult, MemoryTree};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const THR: u64 = COM1_PORT;
    const RBR: u64 = COM1_PORT;
    const DLL: u64 = COM1_PORT;
    const DLM: u64 = COM1_PORT + 1;
    const IER_PORT: u64 = COM1_PORT + 1;
    const IIR_PORT: u64 = COM1_PORT + 2;
    const LCR_PORT: u64 = COM1_PORT + 3;
    const MCR_PORT: u64 = COM1_PORT + 4;
    const LSR_PORT: u64 = COM1_PORT + 5;
    const SCR_PORT: u64 = COM1_PORT + 7;

    /// Guest output, shared with the test, counting flushes.
    #[derive(Clone, Default)]
    struct Output {
        bytes: Arc<Mutex<Vec<u8>>>,
        flushes: Arc<AtomicUsize>,
    }

    impl Output {
        fn bytes(&self) -> Vec<u8> {
            self.bytes.lock().unwrap().clone()
        }
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    struct Rig {
        serial: Arc<Serial>,
        io: AddressSpace,
        out: Output,
        _tree: MemoryTree,
    }

    fn rig_with(out: Box<dyn Write + Send>) -> (Arc<Serial>, AddressSpace, MemoryTree) {
        let serial = Arc::new(Serial::new(EventFdTrigger::new().unwrap(), out));
        let (tree, io) = io_space(vec![("serial", COM1_PORT, SERIAL_LEN, serial.clone())]);
        (serial, io, tree)
    }

    fn rig() -> Rig {
        let out = Output::default();
        let (serial, io, tree) = rig_with(Box::new(out.clone()));
        Rig {
            serial,
            io,
            out,
            _tree: tree,
        }
    }

    fn inb(io: &AddressSpace, port: u64) -> u8 {
        let (value, result) = io.read(port, 1);
        assert_eq!(result, MemTxResult::Ok, "inb {port:#x}");
        value as u8
    }

    fn outb(io: &AddressSpace, port: u64, value: u8) {
        assert_eq!(
            io.write(port, 1, value as u64),
            MemTxResult::Ok,
            "outb {port:#x}"
        );
    }

    /// Reads RBR while LSR says data is ready, as a polling driver does.
    fn drain_rx(io: &AddressSpace, limit: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < limit && inb(io, LSR_PORT) & LSR_DATA_READY != 0 {
            got.push(inb(io, RBR));
        }
        got
    }

    #[test]
    fn thr_writes_reach_the_writer_flushed_and_lsr_shows_empty() {
        let r = rig();
        let lsr = inb(&r.io, LSR_PORT);
        assert_eq!(lsr & 0x60, 0x60, "THRE and TEMT at reset");
        assert_eq!(lsr & LSR_DATA_READY, 0);
        for &b in b"ok\n" {
            outb(&r.io, THR, b);
        }
        assert_eq!(r.out.bytes(), b"ok\n");
        assert_eq!(
            r.out.flushes.load(Ordering::Relaxed),
            3,
            "one flush per byte"
        );
        assert_eq!(
            inb(&r.io, LSR_PORT) & 0x60,
            0x60,
            "still empty after sending"
        );
        // KVM delivers `rep outsb` and `outb` alike through write_buf.
        assert_eq!(r.io.write_buf(THR, b"!"), MemTxResult::Ok);
        assert_eq!(r.out.bytes(), b"ok\n!");
        assert_eq!(r.serial.lost_output(), 0);
    }

    #[test]
    fn divisor_latch_round_trips_and_is_not_output() {
        let r = rig();
        outb(&r.io, LCR_PORT, 0x83); // DLAB, 8N1
        outb(&r.io, DLL, 0x01); // 115200 baud
        outb(&r.io, DLM, 0x02);
        assert_eq!(inb(&r.io, DLL), 0x01);
        assert_eq!(inb(&r.io, DLM), 0x02);
        assert_eq!(inb(&r.io, LCR_PORT), 0x83);
        outb(&r.io, LCR_PORT, 0x03);
        assert_eq!(inb(&r.io, IER_PORT), 0, "IER again, not the latch");
        assert!(r.out.bytes().is_empty(), "latch writes are not output");
        outb(&r.io, THR, b'x');
        assert_eq!(r.out.bytes(), b"x");
        // The latch kept its value.
        outb(&r.io, LCR_PORT, 0x83);
        assert_eq!(inb(&r.io, DLL), 0x01);
        assert_eq!(inb(&r.io, DLM), 0x02);
    }

    #[test]
    fn input_longer_than_the_fifo_arrives_in_order() {
        let r = rig();
        let input: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        r.serial.enqueue_input(&input[..10]);
        r.serial.enqueue_input(&input[10..]);
        assert!(r.serial.pending_input() > 0, "more than the FIFO holds");
        let got = drain_rx(&r.io, 2 * input.len());
        assert_eq!(got, input);
        assert_eq!(r.serial.pending_input(), 0);
        assert_eq!(r.serial.dropped_input(), 0);
        assert_eq!(inb(&r.io, LSR_PORT) & LSR_DATA_READY, 0);
        // Input arriving while a backlog waits goes behind it.
        r.serial.enqueue_input(&[1; 100]);
        let first = drain_rx(&r.io, 30);
        r.serial.enqueue_input(&[2; 5]);
        let mut got = first;
        got.extend(drain_rx(&r.io, 1000));
        let mut want = vec![1u8; 100];
        want.extend([2u8; 5]);
        assert_eq!(got, want);
    }

    #[test]
    fn rx_interrupt_raises_the_eventfd() {
        let r = rig();
        let line = r.serial.irq();
        r.serial.enqueue_input(b"a");
        assert_eq!(line.drain().unwrap(), 0, "RX interrupt disabled");
        outb(&r.io, IER_PORT, 0x01);
        assert_eq!(
            line.drain().unwrap(),
            1,
            "enabling with data waiting raises it"
        );
        assert_eq!(inb(&r.io, IIR_PORT), 0xc4, "RDA, FIFOs enabled");
        assert_eq!(inb(&r.io, RBR), b'a');
        assert_eq!(inb(&r.io, IIR_PORT), 0xc1, "no interrupt pending");

        r.serial.enqueue_input(b"bc");
        assert_eq!(line.drain().unwrap(), 1);
        assert_eq!(r.serial.irq_event().read().ok(), None, "drained");
        assert_eq!(drain_rx(&r.io, 10), b"bc");
        assert_eq!(line.drain().unwrap(), 0, "reading raises nothing");
    }

    #[test]
    fn refilling_the_fifo_raises_the_interrupt_again() {
        let r = rig();
        outb(&r.io, IER_PORT, 0x01);
        r.serial.enqueue_input(&[0x55; 100]);
        assert_eq!(r.serial.irq().drain().unwrap(), 1);
        let first = drain_rx(&r.io, 64);
        assert_eq!(first.len(), 64);
        // The 64th read emptied the FIFO; the backlog moved in and raised
        // the line once.
        assert_eq!(r.serial.irq().drain().unwrap(), 1);
        assert_eq!(drain_rx(&r.io, 1000).len(), 36);
        assert_eq!(r.serial.irq().drain().unwrap(), 0);
    }

    #[test]
    fn iir_reports_data_while_the_fifo_holds_any() {
        // Linux reads at most 256 bytes per pass, then polls IIR again.
        let r = rig();
        outb(&r.io, IER_PORT, 0x01);
        r.serial.enqueue_input(&[7; 300]);
        assert_eq!(inb(&r.io, IIR_PORT) & 0x0f, 0x04);
        assert_eq!(drain_rx(&r.io, 256).len(), 256);
        assert_eq!(inb(&r.io, IIR_PORT) & 0x0f, 0x04, "44 bytes still waiting");
        assert_eq!(
            inb(&r.io, IIR_PORT) & 0x0f,
            0x04,
            "and IIR reads do not hide them"
        );
        assert_eq!(drain_rx(&r.io, 1000).len(), 44);
        assert_eq!(inb(&r.io, IIR_PORT) & 0x0f, 0x01);
        // With RX interrupts off, IIR does not claim one.
        outb(&r.io, IER_PORT, 0x00);
        r.serial.enqueue_input(b"z");
        assert_eq!(inb(&r.io, IIR_PORT) & 0x0f, 0x01);
        // Nor with DLAB set, whose offset 1 is the latch, not IER.
        outb(&r.io, LCR_PORT, 0x83);
        outb(&r.io, DLM, 0x01);
        assert_eq!(inb(&r.io, IIR_PORT) & 0x0f, 0x01);
    }

    /// Records every level the listener is told.
    fn record_levels(serial: &Serial) -> Arc<Mutex<Vec<bool>>> {
        let levels = Arc::new(Mutex::new(Vec::new()));
        let sink = levels.clone();
        serial.set_level_listener(Box::new(move |level| sink.lock().unwrap().push(level)));
        levels
    }

    fn take(levels: &Mutex<Vec<bool>>) -> Vec<bool> {
        std::mem::take(&mut *levels.lock().unwrap())
    }

    #[test]
    fn level_listener_follows_the_intr_pin() {
        let r = rig();
        let levels = record_levels(&r.serial);
        assert_eq!(take(&levels), [false], "the current level, at once");

        // RX: high while data waits and RX interrupts are on.
        r.serial.enqueue_input(b"a");
        assert_eq!(take(&levels), [false; 0], "RX interrupts are off");
        outb(&r.io, IER_PORT, IER_RDA);
        assert_eq!(take(&levels), [true]);
        assert!(r.serial.interrupt_level());
        assert_eq!(inb(&r.io, IIR_PORT) & 0x0f, 0x04);
        assert_eq!(inb(&r.io, LSR_PORT) & LSR_DATA_READY, 1);
        assert_eq!(
            take(&levels),
            [false; 0],
            "reading IIR and LSR keeps it high"
        );
        assert_eq!(inb(&r.io, RBR), b'a');
        assert_eq!(take(&levels), [false]);

        // A backlog refills the FIFO without the level dropping between.
        r.serial.enqueue_input(&[1; 100]);
        assert_eq!(drain_rx(&r.io, 64).len(), 64);
        assert_eq!(take(&levels), [true]);
        assert_eq!(drain_rx(&r.io, 100).len(), 36);
        assert_eq!(take(&levels), [false]);

        // TX: THR empty raises it until IIR is read or TX interrupts are off.
        outb(&r.io, IER_PORT, IER_RDA | IER_THRE);
        assert_eq!(take(&levels), [true], "THR is empty when enabled");
        assert_eq!(inb(&r.io, IIR_PORT) & 0x0f, 0x02);
        assert_eq!(take(&levels), [false], "reading IIR acknowledges it");
        outb(&r.io, THR, b'x');
        assert_eq!(take(&levels), [true]);
        outb(&r.io, IER_PORT, IER_RDA);
        assert_eq!(take(&levels), [false], "masked by IER");
        outb(&r.io, IER_PORT, IER_RDA | IER_THRE);
        assert_eq!(take(&levels), [true], "still indicated, unmasked again");
        assert_eq!(r.out.bytes(), b"x");

        // A new listener is told the current level.
        let again = record_levels(&r.serial);
        assert_eq!(take(&again), [true]);
        assert_eq!(take(&levels), [false; 0], "the old listener is gone");
    }

    #[test]
    fn the_level_is_computed_without_side_effects() {
        let r = rig();
        outb(&r.io, IER_PORT, IER_THRE);
        // Asking for the level many times does not acknowledge THR empty.
        for _ in 0..3 {
            assert!(r.serial.interrupt_level());
        }
        assert_eq!(inb(&r.io, IIR_PORT) & 0x0f, 0x02);
        assert!(!r.serial.interrupt_level());
        // Nor does it eat input.
        outb(&r.io, IER_PORT, IER_RDA);
        r.serial.enqueue_input(b"q");
        assert!(r.serial.interrupt_level());
        assert!(r.serial.interrupt_level());
        assert_eq!(drain_rx(&r.io, 10), b"q");
    }

    #[test]
    fn overflow_is_capped_and_counted() {
        let r = rig();
        let fifo = 64;
        r.serial
            .enqueue_input(&vec![b'q'; fifo + MAX_PENDING_INPUT + 10]);
        assert_eq!(r.serial.pending_input(), MAX_PENDING_INPUT);
        assert_eq!(r.serial.dropped_input(), 10);
        r.serial.enqueue_input(b"more");
        assert_eq!(r.serial.dropped_input(), 14);
        assert_eq!(drain_rx(&r.io, usize::MAX).len(), fifo + MAX_PENDING_INPUT);
    }

    #[test]
    fn loopback_keeps_host_input_for_later() {
        let r = rig();
        outb(&r.io, MCR_PORT, 0x10); // loopback
        r.serial.enqueue_input(b"host");
        outb(&r.io, THR, b'L');
        assert!(r.out.bytes().is_empty(), "loopback output stays inside");
        assert_eq!(drain_rx(&r.io, 10), b"L");
        outb(&r.io, MCR_PORT, 0x08); // back to normal (OUT2)
        assert_eq!(drain_rx(&r.io, 10), b"host");
    }

    #[test]
    fn wide_and_odd_accesses_split_like_qemu() {
        let r = rig();
        // outw to THR: 'A' to THR, then 0x01 to IER.
        assert_eq!(r.io.write(THR, 2, 0x0141), MemTxResult::Ok);
        assert_eq!(r.out.bytes(), b"A");
        assert_eq!(inb(&r.io, IER_PORT), 0x01);
        outb(&r.io, SCR_PORT, 0x5a);
        // A dword read from the last port runs past the UART: the bytes
        // beyond decode to nothing instead of wrapping onto RBR.
        r.serial.enqueue_input(b"k");
        assert_eq!(r.io.read(SCR_PORT, 4), (0x5a, MemTxResult::Ok));
        assert_eq!(drain_rx(&r.io, 10), b"k");
        // 8-byte accesses are not valid for the UART.
        assert_eq!(r.io.read(COM1_PORT, 8).1, MemTxResult::Invalid);
        // A buffer spanning the UART and the next ports.
        let mut buf = [0u8; 16];
        assert_eq!(r.io.read_buf(COM1_PORT, &mut buf), MemTxResult::Unassigned);
        assert_eq!(buf[7], 0x5a);
        assert_eq!(&buf[8..], &[0xff; 8]);
    }

    #[test]
    fn hostile_offsets_sizes_and_values_do_not_panic() {
        let r = rig();
        for offset in [8, 9, 0x100, 0x1_0000, u64::MAX] {
            assert_eq!(r.serial.read(offset, 1), 0);
            assert_eq!(r.serial.read(offset, 8), 0);
            r.serial.write(offset, 8, u64::MAX);
        }
        for offset in 0..8 {
            r.serial.write(offset, 1, u64::MAX);
            r.serial.read(offset, 3);
        }
        r.serial.enqueue_input(&[]);
        assert_eq!(r.serial.pending_input(), 0);
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_errors_are_counted_not_fatal() {
        let (serial, io, _tree) = rig_with(Box::new(Failing));
        outb(&io, THR, b'x');
        outb(&io, THR, b'y');
        assert_eq!(serial.lost_output(), 2);
        assert_eq!(inb(&io, LSR_PORT) & 0x60, 0x60);
    }

    struct Panicking;
    impl Write for Panicking {
        fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
            panic!("writer bug (expected by the test)");
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_poisoned_lock_does_not_panic_later_accesses() {
        let (serial, io, _tree) = rig_with(Box::new(Panicking));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            io.write(THR, 1, b'x' as u64);
        }));
        assert!(panicked.is_err());
        assert!(serial.state.is_poisoned());
        outb(&io, SCR_PORT, 0x42);
        assert_eq!(inb(&io, SCR_PORT), 0x42);
        serial.enqueue_input(b"ok");
        assert_eq!(drain_rx(&io, 10), b"ok");
    }

    #[test]
    fn restored_state_keeps_registers_fifo_and_waiting_input() {
        let a = rig();
        outb(&a.io, LCR_PORT, LCR_DLAB);
        outb(&a.io, DLL, 3);
        outb(&a.io, LCR_PORT, 0x03);
        outb(&a.io, SCR_PORT, 0x5a);
        outb(&a.io, IER_PORT, IER_RDA);
        // 64 bytes fill the FIFO, 36 more wait beyond it.
        let input: Vec<u8> = (0..100u8).collect();
        a.serial.enqueue_input(&input);
        assert_eq!(drain_rx(&a.io, 10), &input[..10]);
        let saved = a.serial.state();
        assert_eq!(saved.fifo.len(), 54);
        assert_eq!(saved.pending.len(), 36);

        let b = rig();
        let levels = Arc::new(Mutex::new(Vec::new()));
        let seen = levels.clone();
        b.serial
            .set_level_listener(Box::new(move |l| seen.lock().unwrap().push(l)));
        b.serial.restore_state(&saved).unwrap();
        assert_eq!(b.serial.state(), saved);
        assert_eq!(levels.lock().unwrap().last(), Some(&true), "RX data waits");
        assert_eq!(inb(&b.io, SCR_PORT), 0x5a);
        outb(&b.io, LCR_PORT, LCR_DLAB | 0x03);
        assert_eq!(inb(&b.io, DLL), 3);
        outb(&b.io, LCR_PORT, 0x03);
        assert_eq!(drain_rx(&b.io, 200), &input[10..]);
        // Output still goes to the restored UART's own writer.
        outb(&b.io, THR, b'x');
        assert_eq!(b.out.bytes(), b"x");
        assert!(a.out.bytes().is_empty());

        let mut too_long = saved.clone();
        too_long.fifo = vec![0; 65];
        assert!(b.serial.restore_state(&too_long).is_err());
    }
}
