//! virtio-input (virtio 1.2, section 5.8) as a one-key keyboard: the power
//! key. The control API's power button presses it; Linux's virtio_input
//! driver turns the events into KEY_POWER on an evdev device, which the
//! guest's userspace (systemd-logind, acpid, or an init) answers with an
//! orderly shutdown. It is the power button of machines without ACPI
//! (riscv64's `virt`).
//!
//! Events are queued by [`PowerKey::press`] from any thread and moved into
//! the guest's event buffers on the event loop (the eventfd in `host_fds`),
//! or, when the guest has no buffer free, as soon as it adds some.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{DeviceError, VirtioDevice, VIRTIO_F_VERSION_1};
use super::net::{read_config_bytes, return_chain, wants_interrupt};
use super::{pop_head, read_chain, ChainRef};

/// virtio-input's device ID.
pub const DEVICE_ID_INPUT: u32 = 18;
const EVENT_QUEUE: usize = 0;
const STATUS_QUEUE: usize = 1;
const QUEUE_SIZE: u16 = 64;

// Linux input event codes (include/uapi/linux/input-event-codes.h).
const EV_SYN: u16 = 0x00;
const EV_KEY: u16 = 0x01;
const SYN_REPORT: u16 = 0;
/// KEY_POWER.
pub const KEY_POWER: u16 = 116;

// Config selectors (virtio 1.2, 5.8.4).
const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_EV_BITS: u8 = 0x11;
/// The payload starts after select, subsel, size and 5 reserved bytes.
const CFG_PAYLOAD: usize = 8;
const CFG_LEN: usize = CFG_PAYLOAD + 128;

const NAME: &[u8] = b"Ember power key";
/// Events that may wait for guest buffers; more are dropped (a guest that
/// never reads its input device gets at most this many).
const MAX_PENDING: usize = 256;

/// One `virtio_input_event`: type, code, value (little endian).
fn event(kind: u16, code: u16, value: u32) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..2].copy_from_slice(&kind.to_le_bytes());
    e[2..4].copy_from_slice(&code.to_le_bytes());
    e[4..].copy_from_slice(&value.to_le_bytes());
    e
}

/// The queue of events waiting for the guest, shared with whoever presses
/// the key.
pub struct KeyEvents {
    pending: Mutex<VecDeque<[u8; 8]>>,
    event: EventFd,
}

impl KeyEvents {
    fn lock(&self) -> MutexGuard<'_, VecDeque<[u8; 8]>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A press and release of the power key, each followed by a sync.
    pub fn press(&self) -> std::io::Result<()> {
        let mut q = self.lock();
        if q.len() + 4 > MAX_PENDING {
            return Err(std::io::Error::other(
                "the guest is not reading its power key; press dropped",
            ));
        }
        q.push_back(event(EV_KEY, KEY_POWER, 1));
        q.push_back(event(EV_SYN, SYN_REPORT, 0));
        q.push_back(event(EV_KEY, KEY_POWER, 0));
        q.push_back(event(EV_SYN, SYN_REPORT, 0));
        drop(q);
        self.event.write(1)
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }
}

/// The virtio-input power key.
pub struct PowerKey {
    events: Arc<KeyEvents>,
    queues: Option<[Queue; 2]>,
    /// select and subsel as last written by the driver.
    select: u8,
    subsel: u8,
    delivered: u64,
    /// Per queue: the last pass stopped after a ring's worth of chains.
    more: [bool; 2],
}

impl PowerKey {
    pub fn new() -> std::io::Result<Self> {
        Ok(PowerKey {
            events: Arc::new(KeyEvents {
                pending: Mutex::new(VecDeque::new()),
                event: EventFd::new(EFD_NONBLOCK)?,
            }),
            queues: None,
            select: 0,
            subsel: 0,
            delivered: 0,
            more: [false; 2],
        })
    }

    /// The handle that presses the key.
    pub fn events(&self) -> Arc<KeyEvents> {
        self.events.clone()
    }

    /// The config space for the current select/subsel.
    fn config(&self) -> [u8; CFG_LEN] {
        let mut c = [0u8; CFG_LEN];
        c[0] = self.select;
        c[1] = self.subsel;
        let payload: Vec<u8> = match (self.select, self.subsel) {
            (CFG_ID_NAME, 0) => NAME.to_vec(),
            (CFG_ID_SERIAL, 0) => b"0".to_vec(),
            // bustype BUS_VIRTUAL (6), vendor, product, version.
            (CFG_ID_DEVIDS, 0) => [6u16, 0, 0, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            (CFG_EV_BITS, s) if u16::from(s) == EV_KEY => {
                let mut bits = vec![0u8; usize::from(KEY_POWER / 8) + 1];
                bits[usize::from(KEY_POWER / 8)] |= 1 << (KEY_POWER % 8);
                bits
            }
            _ => Vec::new(),
        };
        c[2] = payload.len() as u8;
        c[CFG_PAYLOAD..CFG_PAYLOAD + payload.len()].copy_from_slice(&payload);
        c
    }

    /// Moves pending events into the guest's event buffers, one event per
    /// buffer, until either runs out.
    fn deliver(&mut self, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        let Some(queues) = self.queues.as_mut() else {
            return Ok(false);
        };
        let q = &mut queues[EVENT_QUEUE];
        let mut used = false;
        self.more[EVENT_QUEUE] = false;
        // One ring's worth of chains per pass: a guest that keeps handing
        // back bad chains from another vCPU cannot keep this loop going.
        let mut chains = 0;
        loop {
            if chains == QUEUE_SIZE {
                self.more[EVENT_QUEUE] = true;
                break;
            }
            chains += 1;
            let Some(ev) = self.events.lock().front().copied() else {
                break;
            };
            let Some(head) = pop_head(q, EVENT_QUEUE, mem)? else {
                break;
            };
            // The event goes into the first descriptor, which must be
            // device-writable and hold 8 bytes wholly inside guest RAM (no
            // indirect table: not negotiated).
            let first = read_chain(mem, ChainRef::new(q, head), 1);
            let written = match first.descriptors.first() {
                Some(d)
                    if d.is_write_only()
                        && d.len() >= 8
                        && GuestMemoryBackend::check_range(mem, d.addr(), 8) =>
                {
                    mem.write_slice(&ev, d.addr()).is_ok()
                }
                _ => false,
            };
            if written {
                self.events.lock().pop_front();
                self.delivered += 1;
            }
            used |= return_chain(q, mem, head, if written { 8 } else { 0 })?;
        }
        wants_interrupt(q, mem, used)
    }

    /// The driver's status messages (LEDs): consumed and returned.
    fn drain_status(&mut self, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        let Some(queues) = self.queues.as_mut() else {
            return Ok(false);
        };
        let q = &mut queues[STATUS_QUEUE];
        let mut used = false;
        self.more[STATUS_QUEUE] = false;
        for _ in 0..QUEUE_SIZE {
            let Some(head) = pop_head(q, STATUS_QUEUE, mem)? else {
                return wants_interrupt(q, mem, used);
            };
            used |= return_chain(q, mem, head, 0)?;
        }
        // A ring's worth handled: come back for the rest after the others.
        self.more[STATUS_QUEUE] = true;
        wants_interrupt(q, mem, used)
    }
}

impl VirtioDevice for PowerKey {
    fn device_type(&self) -> u32 {
        DEVICE_ID_INPUT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only select (0) and subsel (1) are writable.
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = b,
                Some(1) => self.subsel = b,
                _ => {}
            }
        }
    }

    fn activate(&mut self, queues: Vec<Queue>, _features: u64) -> Result<(), DeviceError> {
        let n = queues.len();
        let queues: [Queue; 2] = queues.try_into().map_err(|_| {
            DeviceError::BadQueue(n, format!("virtio-input needs 2 queues, got {n}"))
        })?;
        if !queues[EVENT_QUEUE].ready() {
            return Err(DeviceError::BadQueue(EVENT_QUEUE, "not ready".into()));
        }
        self.queues = Some(queues);
        Ok(())
    }

    fn reset(&mut self) {
        self.queues = None;
        self.select = 0;
        self.subsel = 0;
        self.more = [false; 2];
    }

    fn has_more_work(&self, index: usize) -> bool {
        self.more.get(index).copied().unwrap_or(false)
    }

    fn queue_states(&self) -> Vec<(usize, virtio_queue::QueueState)> {
        self.queues
            .iter()
            .flat_map(|qs| qs.iter().enumerate().map(|(i, q)| (i, q.state())))
            .collect()
    }

    /// Presses not yet delivered survive a snapshot.
    fn save_state(&self) -> serde_json::Value {
        let pending: Vec<Vec<u8>> = self.events.lock().iter().map(|e| e.to_vec()).collect();
        serde_json::json!({ "pending": pending })
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), DeviceError> {
        let bad = || DeviceError::BadQueue(EVENT_QUEUE, "bad saved power-key state".into());
        let Some(pending) = state.get("pending").and_then(|p| p.as_array()) else {
            return Ok(());
        };
        let mut q = self.events.lock();
        q.clear();
        for e in pending.iter().take(MAX_PENDING) {
            let bytes: Vec<u8> = serde_json::from_value(e.clone()).map_err(|_| bad())?;
            q.push_back(bytes.try_into().map_err(|_| bad())?);
        }
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        match index {
            EVENT_QUEUE => self.deliver(mem),
            STATUS_QUEUE => self.drain_status(mem),
            _ => Err(DeviceError::BadQueue(
                index,
                "virtio-input has 2 queues".into(),
            )),
        }
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.events.event.as_raw_fd()]
    }

    fn process_host_event(
        &mut self,
        _index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        // Clear the eventfd first: a press racing with this call signals
        // again, so it is not left behind.
        let _ = self.events.event.read();
        self.deliver(mem)
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::json!({
            "events_delivered": self.delivered,
            "events_pending": self.events.pending(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::net::test_ring::{mem, Ring};
    use super::*;

    fn config_read(dev: &mut PowerKey, select: u8, subsel: u8) -> Vec<u8> {
        dev.write_config(0, &[select, subsel]);
        let mut size = [0u8];
        dev.read_config(2, &mut size);
        let mut data = vec![0u8; usize::from(size[0])];
        dev.read_config(CFG_PAYLOAD as u64, &mut data);
        data
    }

    #[test]
    fn config_space_describes_one_power_key() {
        let mut dev = PowerKey::new().unwrap();
        assert_eq!(config_read(&mut dev, CFG_ID_NAME, 0), NAME);
        let keys = config_read(&mut dev, CFG_EV_BITS, EV_KEY as u8);
        let set: Vec<u16> = (0..keys.len() * 8)
            .filter(|b| keys[b / 8] & (1 << (b % 8)) != 0)
            .map(|b| b as u16)
            .collect();
        assert_eq!(set, vec![KEY_POWER]);
        // Other event types and unknown selectors are empty.
        assert!(config_read(&mut dev, CFG_EV_BITS, 2).is_empty());
        assert!(config_read(&mut dev, 0x7f, 0).is_empty());
        // Reads beyond the config space are zero; select echoes back.
        let mut b = [0xffu8; 4];
        dev.read_config(CFG_LEN as u64, &mut b);
        assert_eq!(b, [0; 4]);
        dev.write_config(0, &[CFG_ID_NAME]);
        let mut sel = [0u8];
        dev.read_config(0, &mut sel);
        assert_eq!(sel, [CFG_ID_NAME]);
    }

    #[test]
    fn a_press_waits_for_buffers_and_arrives_in_order() {
        let m = mem();
        let mut dev = PowerKey::new().unwrap();
        let mut evq = Ring::new(&m, 0, 16);
        let stq = Ring::new(&m, 0x4000, 16);
        dev.activate(vec![evq.queue(), stq.queue()], VIRTIO_F_VERSION_1)
            .unwrap();
        let events = dev.events();
        events.press().unwrap();
        // No buffers yet: nothing delivered, nothing lost.
        assert!(!dev.process_host_event(0, &m).unwrap());
        assert_eq!(events.pending(), 4);
        // Three buffers, one of them read-only (malformed): returned unused.
        evq.add(&[(0x10000, 8, true)]);
        evq.add(&[(0x10100, 8, false)]);
        evq.add(&[(0x10200, 8, true)]);
        assert!(dev.process_queue(EVENT_QUEUE, &m).unwrap());
        assert_eq!(evq.used(), vec![(0, 8), (1, 0), (2, 8)]);
        let read = |a: u64| {
            let mut e = [0u8; 8];
            m.read_slice(&mut e, vm_memory::GuestAddress(a)).unwrap();
            e
        };
        assert_eq!(read(0x10000), event(EV_KEY, KEY_POWER, 1));
        assert_eq!(read(0x10200), event(EV_SYN, SYN_REPORT, 0));
        assert_eq!(events.pending(), 2);
        evq.add(&[(0x10300, 16, true)]);
        evq.add(&[(0x10400, 8, true)]);
        assert!(dev.process_queue(EVENT_QUEUE, &m).unwrap());
        assert_eq!(read(0x10300), event(EV_KEY, KEY_POWER, 0));
        assert_eq!(read(0x10400), event(EV_SYN, SYN_REPORT, 0));
        assert_eq!(events.pending(), 0);
    }

    /// Regression: an event buffer reaching past the end of RAM got the
    /// part of the event that fitted. A device writes only into buffers
    /// that are wholly valid.
    #[test]
    fn no_event_is_written_into_a_partly_invalid_buffer() {
        use super::super::net::test_ring::RAM_SIZE;
        let m = mem();
        let mut dev = PowerKey::new().unwrap();
        let mut evq = Ring::new(&m, 0, 16);
        let stq = Ring::new(&m, 0x4000, 16);
        dev.activate(vec![evq.queue(), stq.queue()], VIRTIO_F_VERSION_1)
            .unwrap();
        let tail = vm_memory::GuestAddress(RAM_SIZE - 4);
        m.write_slice(&[0xee; 4], tail).unwrap();
        dev.events().press().unwrap();
        evq.add(&[(RAM_SIZE - 4, 8, true)]);
        dev.process_queue(EVENT_QUEUE, &m).unwrap();
        assert_eq!(evq.used(), vec![(0, 0)]);
        let mut got = [0u8; 4];
        m.read_slice(&mut got, tail).unwrap();
        assert_eq!(got, [0xee; 4]);
        assert_eq!(dev.events().pending(), 4, "nothing delivered");
    }

    #[test]
    fn an_unread_key_is_bounded() {
        let dev = PowerKey::new().unwrap();
        let events = dev.events();
        for _ in 0..MAX_PENDING / 4 {
            events.press().unwrap();
        }
        assert!(events.press().is_err());
        assert_eq!(events.pending(), MAX_PENDING);
    }
}
