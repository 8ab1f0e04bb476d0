//! virtio-console (device ID 3) with a single port, the guest's hvc0.
//!
//! Queues: receiveq (0, host to guest) and transmitq (1, guest to host).
//! Only `VIRTIO_F_VERSION_1` is offered (no `SIZE`, `MULTIPORT` or
//! `EMERG_WRITE`), so the config space (cols, rows, max_nr_ports,
//! emerg_wr) reads as zeros.
//!
//! Output goes to a `Box<dyn Write + Send>`, flushed after every batch so
//! that prompts without a newline show up. In the VMM that is a
//! `SharedOutput` (`vmm/console.rs`), whose writes only queue into a
//! bounded buffer that its own thread writes to stdout: this device runs on
//! the event loop under the transport's lock and must never wait for the
//! host's reader.
//!
//! Input arrives from a thread or event handler that does not hold the
//! transport's lock, so it goes through a shared [`ConsoleInput`]: the VMM
//! keeps an `Arc` of it (from [`Console::input`]) and calls
//! [`ConsoleInput::enqueue_input`], which buffers the bytes and signals an
//! `EventFd`. That eventfd is this device's only host fd, so the event
//! loop then calls `process_host_event`, which moves buffered bytes into
//! the guest's receive buffers. Bytes the guest has no buffer for stay
//! buffered until it notifies receiveq.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_queue::Queue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{device_type, DeviceError, VirtioDevice, VIRTIO_F_VERSION_1};
use super::net::{read_config_bytes, return_chain, wants_interrupt};
use super::{pop_head, read_chain, ChainDescriptors, ChainRef, PassBudget};

pub const RECEIVE_QUEUE: usize = 0;
pub const TRANSMIT_QUEUE: usize = 1;
const QUEUE_SIZES: [u16; 2] = [64, 64];
/// cols (u16), rows (u16), max_nr_ports (u32), emerg_wr (u32).
const CONFIG_LEN: usize = 12;
/// Default bound of the input buffer.
pub const DEFAULT_INPUT_CAPACITY: usize = 64 * 1024;
/// Guest output is copied through a buffer of this size.
const COPY_CHUNK: usize = 4096;
/// What one pass over a queue may do before the device yields the event
/// loop (and the transport lock): a guest can publish one chain many times
/// and refill the ring while the pass runs.
const PASS_BUDGET: PassBudget = PassBudget {
    requests: 64,
    bytes: 1 << 20,
};
/// At most this much of one transmit chain is read; the rest is dropped
/// and counted (`tx_dropped_bytes`), as output the host side cannot keep up
/// with is (the console output buffer holds 1 MiB).
const MAX_TX_CHAIN_BYTES: u64 = 1 << 20;

/// Console input waiting for the guest, shared between the VMM's input
/// reader and the device.
///
/// The buffer is bounded: when it is full (the guest is not reading, for
/// example before its driver is up or while it is stopped), further bytes
/// are dropped and counted; [`enqueue_input`](Self::enqueue_input) returns
/// how many it accepted, so a caller that prefers back-pressure can keep
/// the rest and stop reading its source instead.
#[derive(Debug)]
pub struct ConsoleInput {
    buf: Mutex<VecDeque<u8>>,
    capacity: usize,
    event: EventFd,
    dropped: AtomicU64,
}

impl ConsoleInput {
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(ConsoleInput {
            buf: Mutex::new(VecDeque::new()),
            capacity,
            event: EventFd::new(EFD_NONBLOCK)?,
            dropped: AtomicU64::new(0),
        })
    }

    /// Buffers as much of `bytes` as fits and wakes the device. Returns the
    /// number of bytes accepted; the rest are dropped and counted.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let accepted = {
            let mut buf = self.lock();
            let n = bytes.len().min(self.capacity.saturating_sub(buf.len()));
            buf.extend(&bytes[..n]);
            n
        };
        let dropped = bytes.len() - accepted;
        if dropped > 0 {
            self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        if accepted > 0 {
            // Only fails if the counter would overflow, which needs 2^64
            // unread signals; the device drains it on every event.
            let _ = self.event.write(1);
        }
        accepted
    }

    /// Bytes buffered and not yet delivered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The eventfd signalled on every enqueue.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        // A panic elsewhere while holding the lock cannot leave a byte
        // queue inconsistent, so keep using it.
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Console counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsoleCounters {
    /// Guest output bytes written to the output.
    pub tx_bytes: u64,
    /// Input bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Chains returned unused because they were malformed.
    pub bad_chains: u64,
    /// Output write errors (the rest of that chain is discarded).
    pub output_errors: u64,
    /// Bytes of transmit chains beyond [`MAX_TX_CHAIN_BYTES`], not read.
    pub tx_dropped_bytes: u64,
}

/// A single-port virtio console.
pub struct Console {
    output: Box<dyn Write + Send>,
    input: Arc<ConsoleInput>,
    /// `[receiveq, transmitq]` between `activate` and `reset`.
    queues: Option<[Queue; 2]>,
    counters: ConsoleCounters,
    /// Per queue: the last pass stopped at its budget with chains left.
    more: [bool; 2],
}

impl Console {
    /// A console writing guest output to `output`, with a new input buffer
    /// of [`DEFAULT_INPUT_CAPACITY`] bytes.
    pub fn new(output: Box<dyn Write + Send>) -> io::Result<Self> {
        Ok(Self::with_input(
            output,
            Arc::new(ConsoleInput::new(DEFAULT_INPUT_CAPACITY)?),
        ))
    }

    pub fn with_input(output: Box<dyn Write + Send>, input: Arc<ConsoleInput>) -> Self {
        Console {
            output,
            input,
            queues: None,
            counters: ConsoleCounters::default(),
            more: [false; 2],
        }
    }

    /// The input handle for the VMM's console reader.
    pub fn input(&self) -> Arc<ConsoleInput> {
        Arc::clone(&self.input)
    }

    /// Same as `self.input().enqueue_input(bytes)`.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        self.input.enqueue_input(bytes)
    }

    pub fn counters(&self) -> ConsoleCounters {
        self.counters
    }

    /// Fills receive chains from the input buffer until one runs out.
    fn process_rx(&mut self, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        let Some(queues) = self.queues.as_mut() else {
            return Ok(false);
        };
        let rxq = &mut queues[RECEIVE_QUEUE];
        let mut used = false;
        let mut bytes = Vec::new();
        let mut budget = PASS_BUDGET;
        self.more[RECEIVE_QUEUE] = false;
        while !self.input.is_empty() {
            if budget.spent() {
                self.more[RECEIVE_QUEUE] = true;
                break;
            }
            let Some(head) = pop_head(rxq, RECEIVE_QUEUE, mem)? else {
                break;
            };
            let chain = read_chain(
                mem,
                ChainRef::new(rxq, head),
                QUEUE_SIZES[RECEIVE_QUEUE].into(),
            );
            budget.charge_request(0);
            let Some(bufs) = collect_buffers(mem, &chain, true) else {
                self.counters.bad_chains += 1;
                used |= return_chain(rxq, mem, head, 0)?;
                continue;
            };
            let capacity: u64 = bufs.iter().map(|&(_, len)| u64::from(len)).sum();
            // Take the bytes only once they are sure to be written, so a
            // failure cannot lose input.
            let mut input = self.input.lock();
            let n = input
                .len()
                .min(usize::try_from(capacity).unwrap_or(usize::MAX));
            bytes.clear();
            bytes.extend(input.iter().take(n));
            let mut off = 0;
            for (addr, len) in bufs {
                if off == n {
                    break;
                }
                let k = (n - off).min(len as usize);
                // In range: checked by collect_buffers.
                mem.write_slice(&bytes[off..off + k], addr)
                    .map_err(|e| DeviceError::Memory(e.to_string()))?;
                off += k;
            }
            input.drain(..n);
            drop(input);
            self.counters.rx_bytes += n as u64;
            budget.charge_bytes(n as u64);
            // n <= capacity of one chain, which is below 4 GiB (the chain
            // iterator enforces that).
            used |= return_chain(rxq, mem, head, n as u32)?;
        }
        wants_interrupt(rxq, mem, used)
    }

    /// Writes transmit chains to the output until none is left or the
    /// pass's budget is spent.
    fn process_tx(&mut self, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        let Some(queues) = self.queues.as_mut() else {
            return Ok(false);
        };
        let txq = &mut queues[TRANSMIT_QUEUE];
        let mut used = false;
        let mut chunk = vec![0u8; COPY_CHUNK];
        let mut budget = PASS_BUDGET;
        self.more[TRANSMIT_QUEUE] = false;
        while let Some(head) = pop_head(txq, TRANSMIT_QUEUE, mem)? {
            let chain = read_chain(
                mem,
                ChainRef::new(txq, head),
                QUEUE_SIZES[TRANSMIT_QUEUE].into(),
            );
            let mut taken = 0u64;
            match collect_buffers(mem, &chain, false) {
                None => self.counters.bad_chains += 1,
                Some(bufs) => {
                    'chain: for (addr, len) in bufs {
                        let mut done = 0u64;
                        while done < u64::from(len) {
                            if taken == MAX_TX_CHAIN_BYTES {
                                self.counters.tx_dropped_bytes += u64::from(len) - done;
                                done = u64::from(len);
                                continue;
                            }
                            let k = (u64::from(len) - done)
                                .min(COPY_CHUNK as u64)
                                .min(MAX_TX_CHAIN_BYTES - taken)
                                as usize;
                            let Some(a) = addr.0.checked_add(done) else {
                                break 'chain;
                            };
                            if mem.read_slice(&mut chunk[..k], GuestAddress(a)).is_err()
                                || self.output.write_all(&chunk[..k]).is_err()
                            {
                                self.counters.output_errors += 1;
                                break 'chain;
                            }
                            self.counters.tx_bytes += k as u64;
                            done += k as u64;
                            taken += k as u64;
                        }
                    }
                }
            }
            budget.charge_request(taken);
            used |= return_chain(txq, mem, head, 0)?;
            if budget.spent() {
                self.more[TRANSMIT_QUEUE] = true;
                break;
            }
        }
        if used && self.output.flush().is_err() {
            self.counters.output_errors += 1;
        }
        wants_interrupt(txq, mem, used)
    }
}

/// The buffers of a chain whose descriptors all go in one direction
/// (`writable` for receive, device-readable for transmit), lie inside
/// guest RAM and end properly; `None` for any other chain.
fn collect_buffers<M: GuestMemory + ?Sized>(
    mem: &M,
    chain: &ChainDescriptors,
    writable: bool,
) -> Option<Vec<(GuestAddress, u32)>> {
    // A chain cut short (a loop, a next index beyond the table, an
    // unreadable or indirect descriptor: none is negotiated) is refused.
    if !chain.complete {
        return None;
    }
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut bufs = Vec::new();
    for desc in &chain.descriptors {
        if desc.is_write_only() != writable {
            return None;
        }
        if desc.len() > 0 && !mem.check_range(desc.addr(), desc.len() as usize, access) {
            return None;
        }
        bufs.push((desc.addr(), desc.len()));
    }
    (!bufs.is_empty()).then_some(bufs)
}

impl VirtioDevice for Console {
    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(self.counters).unwrap_or_default()
    }

    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[0; CONFIG_LEN], offset, data);
    }

    fn activate(&mut self, queues: Vec<Queue>, _features: u64) -> Result<(), DeviceError> {
        let n = queues.len();
        let queues: [Queue; 2] = queues.try_into().map_err(|_| {
            DeviceError::BadQueue(n, format!("virtio-console needs 2 queues, got {n}"))
        })?;
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                return Err(DeviceError::BadQueue(i, "not ready".into()));
            }
        }
        self.queues = Some(queues);
        Ok(())
    }

    fn queue_states(&self) -> Vec<(usize, virtio_queue::QueueState)> {
        self.queues
            .iter()
            .flat_map(|qs| qs.iter().map(|q| q.state()).enumerate())
            .collect()
    }

    /// The input typed but not yet delivered to the guest.
    fn save_state(&self) -> serde_json::Value {
        let input: Vec<u8> = self.input.lock().iter().copied().collect();
        serde_json::json!({ "input": input })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), DeviceError> {
        let Some(saved) = state.get("input") else {
            return Ok(());
        };
        let bytes: Vec<u8> = serde_json::from_value(saved.clone()).map_err(|e| {
            DeviceError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("saved console input: {e}"),
            ))
        })?;
        let mut input = self.input.lock();
        input.clear();
        input.extend(bytes);
        Ok(())
    }

    fn reset(&mut self) {
        // Buffered input stays: it is the user's typing, and a driver that
        // resets and comes back (a reboot) can still receive it.
        self.queues = None;
        self.more = [false; 2];
    }

    fn has_more_work(&self, index: usize) -> bool {
        self.more.get(index).copied().unwrap_or(false)
    }

    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        match index {
            RECEIVE_QUEUE => self.process_rx(mem),
            TRANSMIT_QUEUE => self.process_tx(mem),
            _ => Err(DeviceError::BadQueue(
                index,
                "virtio-console has 2 queues".into(),
            )),
        }
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.input.event_fd()]
    }

    fn process_host_event(
        &mut self,
        _index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        // Reset the eventfd before looking at the buffer: an enqueue racing
        // with this call signals again and causes another event, so no
        // input is left behind unnoticed.
        let _ = self.input.event.read();
        self.process_rx(mem)
    }
}

#[cfg(test)]
mod tests {
    use super::super::net::test_ring::{mem, Ring, RAM_SIZE};
    use super::*;

    /// Output sink the test can inspect.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    fn activated<'a>(
        mem: &'a GuestMemoryMmap<()>,
        output: Box<dyn Write + Send>,
        capacity: usize,
    ) -> (Console, Ring<'a>, Ring<'a>) {
        let input = Arc::new(ConsoleInput::new(capacity).expect("eventfd"));
        let mut c = Console::with_input(output, input);
        let rx = Ring::new(mem, 0, 16);
        let tx = Ring::new(mem, 0x2000, 16);
        c.activate(vec![rx.queue(), tx.queue()], VIRTIO_F_VERSION_1)
            .expect("activate");
        (c, rx, tx)
    }

    fn read(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).expect("read");
        v
    }

    #[test]
    fn tx_writes_guest_output() {
        let m = mem();
        let sink = Sink::default();
        let (mut c, _rx, mut tx) = activated(&m, Box::new(sink.clone()), 64);
        m.write_slice(b"hello ", GuestAddress(0x1_0000)).expect("w");
        let big: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        m.write_slice(&big, GuestAddress(0x2_0000)).expect("w");
        let h1 = tx.add(&[(0x1_0000, 6, false), (0x2_0000, big.len() as u32, false)]);
        m.write_slice(b"!\n", GuestAddress(0x3_0000)).expect("w");
        let h2 = tx.add(&[(0x3_0000, 2, false)]);

        assert!(c.process_queue(TRANSMIT_QUEUE, &m).expect("tx"));
        let mut want = b"hello ".to_vec();
        want.extend(&big);
        want.extend(b"!\n");
        assert_eq!(*sink.0.lock().expect("sink"), want);
        assert_eq!(tx.used(), vec![(h1.into(), 0), (h2.into(), 0)]);
        assert_eq!(c.counters().tx_bytes, want.len() as u64);
    }

    #[test]
    fn malformed_tx_chains_write_nothing() {
        let m = mem();
        let sink = Sink::default();
        let (mut c, _rx, mut tx) = activated(&m, Box::new(sink.clone()), 64);
        m.write_slice(b"secret", GuestAddress(0x1_0000)).expect("w");
        tx.add(&[(0x1_0000, 6, false), (0x1_1000, 6, true)]);
        tx.add(&[(RAM_SIZE - 2, 6, false)]);
        tx.add_head(100);
        assert!(c.process_queue(TRANSMIT_QUEUE, &m).expect("tx"));
        assert!(sink.0.lock().expect("sink").is_empty());
        assert_eq!(tx.used().len(), 2);
        assert_eq!(c.counters().bad_chains, 3);
    }

    /// 512 KiB of guest memory holding output.
    const HALF_MIB: u32 = 0x8_0000;

    #[test]
    fn a_tx_pass_stops_at_its_budget_and_the_next_goes_on() {
        let m = mem();
        let sink = Sink::default();
        let (mut c, _rx, mut tx) = activated(&m, Box::new(sink.clone()), 64);
        let heads: Vec<u16> = (0..3)
            .map(|_| tx.add(&[(0x1_0000, HALF_MIB, false)]))
            .collect();
        assert!(c.process_queue(TRANSMIT_QUEUE, &m).expect("tx"));
        assert_eq!(tx.used().len(), 2, "1 MiB per pass");
        assert!(c.has_more_work(TRANSMIT_QUEUE));
        assert!(c.process_queue(TRANSMIT_QUEUE, &m).expect("tx"));
        let want: Vec<(u32, u32)> = heads.iter().map(|&h| (h.into(), 0)).collect();
        assert_eq!(tx.used(), want, "all chains, in order");
        assert!(!c.has_more_work(TRANSMIT_QUEUE));
        assert_eq!(sink.0.lock().expect("sink").len(), 3 * HALF_MIB as usize);
    }

    #[test]
    fn a_huge_tx_chain_is_read_up_to_its_cap_and_the_rest_counted() {
        let m = mem();
        let sink = Sink::default();
        let (mut c, _rx, mut tx) = activated(&m, Box::new(sink.clone()), 64);
        tx.add(&[(0x1_0000, HALF_MIB, false); 3]);
        assert!(c.process_queue(TRANSMIT_QUEUE, &m).expect("tx"));
        assert_eq!(tx.used().len(), 1);
        assert_eq!(
            sink.0.lock().expect("sink").len() as u64,
            MAX_TX_CHAIN_BYTES
        );
        assert_eq!(
            c.counters().tx_dropped_bytes,
            3 * u64::from(HALF_MIB) - MAX_TX_CHAIN_BYTES
        );
    }

    #[test]
    fn an_indirect_tx_chain_is_refused_without_reading_its_table() {
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        const INDIRECT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        let m = mem();
        let sink = Sink::default();
        let (mut c, _rx, mut tx) = activated(&m, Box::new(sink.clone()), 64);
        // A valid-looking table at 0x5_0000 pointing at readable bytes.
        m.write_slice(b"secret", GuestAddress(0x1_0000)).expect("w");
        let table = RawDescriptor::from(Descriptor::new(0x1_0000, 6, 0, 0));
        m.write_obj(table, GuestAddress(0x5_0000)).expect("w");
        tx.add_raw(&[RawDescriptor::from(Descriptor::new(
            0x5_0000, 16, INDIRECT, 0,
        ))]);
        assert!(c.process_queue(TRANSMIT_QUEUE, &m).expect("tx"));
        assert!(sink.0.lock().expect("sink").is_empty());
        assert_eq!(tx.used().len(), 1);
        assert_eq!(c.counters().bad_chains, 1);
    }

    #[test]
    fn output_errors_are_counted_not_fatal() {
        let m = mem();
        let (mut c, _rx, mut tx) = activated(&m, Box::new(Broken), 64);
        tx.add(&[(0x1_0000, 6, false)]);
        assert!(c.process_queue(TRANSMIT_QUEUE, &m).expect("tx"));
        assert_eq!(tx.used().len(), 1);
        assert!(c.counters().output_errors >= 1);
    }

    #[test]
    fn input_fills_receive_buffers_in_order() {
        let m = mem();
        let (mut c, mut rx, _tx) = activated(&m, Box::new(Sink::default()), 64);
        let input = c.input();
        assert_eq!(c.host_fds(), vec![input.event_fd()]);

        // No buffer yet: the bytes wait.
        assert_eq!(input.enqueue_input(b"hello, world"), 12);
        assert!(!c.process_host_event(0, &m).expect("rx"));
        assert_eq!(input.len(), 12);

        // A 5-byte buffer split in two, then a large one.
        let h1 = rx.add(&[(0x1_0000, 2, true), (0x1_1000, 3, true)]);
        let h2 = rx.add(&[(0x2_0000, 100, true)]);
        assert!(c.process_queue(RECEIVE_QUEUE, &m).expect("rx"));
        assert_eq!(rx.used(), vec![(h1.into(), 5), (h2.into(), 7)]);
        let mut got = read(&m, 0x1_0000, 2);
        got.extend(read(&m, 0x1_1000, 3));
        got.extend(read(&m, 0x2_0000, 7));
        assert_eq!(got, b"hello, world");
        assert!(input.is_empty());
        assert_eq!(c.counters().rx_bytes, 12);

        // With nothing to deliver, buffers are left with the device.
        rx.add(&[(0x3_0000, 100, true)]);
        assert!(!c.process_queue(RECEIVE_QUEUE, &m).expect("rx"));
        assert_eq!(rx.used().len(), 2);
    }

    #[test]
    fn enqueue_signals_the_eventfd() {
        let input = ConsoleInput::new(16).expect("eventfd");
        assert!(input.event.read().is_err(), "nothing signalled yet");
        input.enqueue_input(b"x");
        assert_eq!(input.event.read().expect("signalled"), 1);
        // Nothing accepted, nothing signalled.
        input.enqueue_input(b"");
        assert!(input.event.read().is_err());
    }

    #[test]
    fn input_buffer_is_bounded_and_counts_drops() {
        let input = ConsoleInput::new(8).expect("eventfd");
        assert_eq!(input.enqueue_input(b"12345"), 5);
        assert_eq!(input.enqueue_input(b"6789abc"), 3);
        assert_eq!(input.enqueue_input(b"d"), 0);
        assert_eq!(input.len(), 8);
        assert_eq!(input.dropped(), 5);
        assert_eq!(
            input.lock().iter().copied().collect::<Vec<_>>(),
            b"12345678"
        );
    }

    #[test]
    fn malformed_receive_chain_does_not_lose_input() {
        let m = mem();
        let (mut c, mut rx, _tx) = activated(&m, Box::new(Sink::default()), 64);
        c.enqueue_input(b"abc");
        let bad = rx.add(&[(0x1_0000, 10, false)]);
        let outside = rx.add(&[(RAM_SIZE - 1, 10, true)]);
        let good = rx.add(&[(0x2_0000, 10, true)]);
        assert!(c.process_host_event(0, &m).expect("rx"));
        assert_eq!(
            rx.used(),
            vec![(bad.into(), 0), (outside.into(), 0), (good.into(), 3)]
        );
        assert_eq!(read(&m, 0x2_0000, 3), b"abc");
        assert_eq!(c.counters().bad_chains, 2);
    }

    #[test]
    fn config_reads_zero_and_reset_keeps_input() {
        let m = mem();
        let (mut c, mut rx, _tx) = activated(&m, Box::new(Sink::default()), 64);
        let mut cfg = [0xffu8; 16];
        c.read_config(0, &mut cfg);
        assert_eq!(cfg, [0; 16]);
        assert_eq!(c.features(), VIRTIO_F_VERSION_1);
        assert_eq!(c.device_type(), device_type::CONSOLE);

        c.enqueue_input(b"z");
        c.reset();
        rx.add(&[(0x1_0000, 4, true)]);
        assert!(!c.process_host_event(0, &m).expect("reset device idles"));
        assert_eq!(c.input().len(), 1);
        assert!(c.activate(Vec::new(), 0).is_err());
    }
}
