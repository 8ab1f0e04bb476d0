//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! [`VirtioMmio`] is a cheap, cloneable handle on one transport. The memory
//! tree gets one clone as the device's [`RegionOps`] (register accesses from
//! vCPU threads), the event loop gets another inside a
//! [`VirtioSubscriber`](super::subscriber::VirtioSubscriber). All mutable
//! state, the device included, sits behind one mutex, so a register access
//! and queue processing never interleave (a vCPU touching the registers
//! waits for the request batch in progress; drivers do not touch them on
//! their I/O path, which only notifies).
//!
//! The driver-visible rules this transport enforces, beyond the register
//! layout:
//! - Registers take only aligned 32-bit accesses; any other size or an
//!   unknown offset reads 0 and drops writes. Config space (from 0x100) takes
//!   aligned 1, 2, 4 and 8-byte accesses.
//! - Status: the driver may only add bits, in the order ACKNOWLEDGE, DRIVER,
//!   FEATURES_OK, DRIVER_OK (several in one write is fine); FAILED may be
//!   added at any time. A write that clears a bit, skips a step, or comes
//!   after FAILED or DEVICE_NEEDS_RESET is ignored, except writing 0, which
//!   always resets. The driver cannot set DEVICE_NEEDS_RESET itself.
//! - FEATURES_OK is refused (left clear, as the spec asks, so the driver
//!   sees it was not accepted) unless the driver's features are a subset of
//!   the device's and include `VIRTIO_F_VERSION_1`.
//! - At DRIVER_OK every ready queue is checked (size a power of two no larger
//!   than its maximum, rings aligned and inside guest RAM). A bad queue, or a
//!   device that fails to activate, leaves the device inactive with
//!   DEVICE_NEEDS_RESET set and a configuration-change interrupt raised.
//! - Driver features are writable until FEATURES_OK; queue registers (other
//!   than QueueSel) until DRIVER_OK, and for the selected queue only while
//!   its QueueReady is 0. Writes outside those windows are ignored.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{DeviceError, IrqLine, VirtioDevice, VIRTIO_F_VERSION_1};
use super::GuestMemoryHandle;
use crate::memory::{AccessRules, RegionOps};

/// `VIRTIO_RING_F_EVENT_IDX` (virtio 1.2, 6): no device here offers it.
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// The size of the register window: registers up to 0x100, config space
/// from 0x100 to 0x200.
pub const WINDOW_SIZE: u64 = 0x200;
/// The offset of QueueNotify. Under KVM the VMM registers each queue's
/// eventfd as an ioeventfd at `base + NOTIFY_OFFSET` with datamatch = the
/// queue index, so that a notification never exits to the VMM.
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Where config space starts.
pub const CONFIG_OFFSET: u64 = 0x100;

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The non-legacy virtio-mmio interface.
pub const MMIO_VERSION: u32 = 2;
/// Our vendor ID: "EMBR" read as a big-endian number. Drivers do not
/// interpret it; it only shows up in the guest's sysfs.
pub const VENDOR_ID: u32 = 0x454d_4252;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bits.
pub mod interrupt {
    /// The device used a buffer in at least one queue.
    pub const USED_RING: u32 = 1;
    /// The configuration (or DEVICE_NEEDS_RESET) changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

// Register offsets (virtio 1.2, table 4.1).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

/// Why a transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("queue {index}: maximum size {size} is not a power of two in 1..=32768")]
    BadQueueMax { index: usize, size: u16 },
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// One queue's registers as the driver programmed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueRegisters {
    pub num: u32,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// A device-owned queue's position and layout (virtio-queue's
/// `QueueState`, which has no serde support).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedQueue {
    pub index: usize,
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl SavedQueue {
    fn new(index: usize, q: &QueueState) -> Self {
        SavedQueue {
            index,
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }

    fn queue_state(&self) -> QueueState {
        QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        }
    }
}

/// What a snapshot saves of a transport and its device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub queues: Vec<QueueRegisters>,
    pub interrupt_status: u32,
    pub config_generation: u32,
    /// Activated (DRIVER_OK accepted) and not failed.
    pub active: bool,
    /// The device's queues when active.
    pub device_queues: Vec<SavedQueue>,
    /// [`VirtioDevice::save_state`].
    pub device: serde_json::Value,
}

/// Why a transport's saved state could not be taken or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TransportStateError {
    #[error("device type {saved} was saved here, but this slot holds device type {found}")]
    DeviceType { saved: u32, found: u32 },
    #[error("features {saved:#x} were saved, the device offers only {offered:#x}")]
    Features { saved: u64, offered: u64 },
    #[error("{saved} queues were saved, the device has {found}")]
    QueueCount { saved: usize, found: usize },
    #[error("the device did not report its ready queue {0}")]
    MissingQueue(usize),
    #[error("saved queue {index} is unusable: {reason}")]
    BadQueue { index: usize, reason: String },
    #[error("the device refused the restored state: {0}")]
    Device(#[from] DeviceError),
}

/// Counters for introspection; monotonic over the transport's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioStats {
    /// QueueNotify writes that reached the transport (TCG, or KVM without
    /// ioeventfds).
    pub notify_writes: u64,
    /// Queue eventfd wake-ups the event loop handled.
    pub queue_events: u64,
    /// Host-descriptor wake-ups the event loop handled.
    pub host_events: u64,
    /// Used-ring interrupts raised.
    pub used_interrupts: u64,
    /// Configuration-change interrupts raised (including DEVICE_NEEDS_RESET).
    pub config_interrupts: u64,
    /// Times the device was marked DEVICE_NEEDS_RESET.
    pub device_errors: u64,
    /// Resets by the driver (status 0).
    pub resets: u64,
}

#[derive(Default)]
struct Counters {
    notify_writes: AtomicU64,
    queue_events: AtomicU64,
    host_events: AtomicU64,
    used_interrupts: AtomicU64,
    config_interrupts: AtomicU64,
    device_errors: AtomicU64,
    resets: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The driver's settings for one queue, kept raw until DRIVER_OK so that
/// bad values are reported then rather than silently dropped (virtio-queue's
/// setters ignore invalid values).
#[derive(Clone, Copy, Debug)]
struct QueueConfig {
    max: u16,
    num: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max: u16) -> Self {
        QueueConfig {
            max,
            num: max as u32,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// The virtio-queue `Queue` for these settings, checked against `mem`.
    fn build(&self, index: usize, mem: &GuestMemoryMmap<()>) -> Result<Queue, DeviceError> {
        let bad = |why: String| DeviceError::BadQueue(index, why);
        let mut queue = Queue::new(self.max).map_err(|e| bad(format!("maximum size: {e}")))?;
        if !self.ready {
            return Ok(queue);
        }
        let size = u16::try_from(self.num).map_err(|_| bad(format!("size {}", self.num)))?;
        queue
            .try_set_size(size)
            .map_err(|_| bad(format!("size {size} (maximum {})", self.max)))?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| bad(format!("descriptor table {:#x} misaligned", self.desc)))?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(|_| bad(format!("driver area {:#x} misaligned", self.driver)))?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .map_err(|_| bad(format!("device area {:#x} misaligned", self.device)))?;
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(bad(format!(
                "rings at {:#x}/{:#x}/{:#x} (size {size}) are not inside guest RAM",
                self.desc, self.driver, self.device
            )));
        }
        Ok(queue)
    }
}

struct State {
    device: Box<dyn VirtioDevice>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    interrupt_status: u32,
    config_generation: u32,
    /// Between a successful `activate` and the next reset or device error.
    active: bool,
    /// The VM is paused: no device work (see `VirtioMmio::pause`).
    paused: bool,
}

struct Inner {
    state: Mutex<State>,
    queue_events: Vec<EventFd>,
    irq: Arc<dyn IrqLine>,
    mem: GuestMemoryHandle,
    device_type: u32,
    counters: Counters,
}

/// One virtio-mmio transport; clones share it.
#[derive(Clone)]
pub struct VirtioMmio {
    inner: Arc<Inner>,
}

impl fmt::Debug for VirtioMmio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioMmio")
            .field("device_type", &self.inner.device_type)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl VirtioMmio {
    /// A transport for `device`, raising `irq`, checking queues against
    /// (and processing them in) the guest memory `mem` currently holds.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        irq: Arc<dyn IrqLine>,
        mem: GuestMemoryHandle,
    ) -> Result<Self, MmioError> {
        let maxes = device.queue_max_sizes().to_vec();
        for (index, &size) in maxes.iter().enumerate() {
            if size == 0 || !size.is_power_of_two() || size > 32768 {
                return Err(MmioError::BadQueueMax { index, size });
            }
        }
        let queue_events = maxes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(MmioError::EventFd)?;
        let device_type = device.device_type();
        let state = State {
            device,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: maxes.iter().map(|&m| QueueConfig::new(m)).collect(),
            interrupt_status: 0,
            config_generation: 0,
            active: false,
            paused: false,
        };
        Ok(VirtioMmio {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                queue_events,
                irq,
                mem,
                device_type,
                counters: Counters::default(),
            }),
        })
    }

    /// The queues' notification eventfds, indexed by queue. Register each
    /// as an ioeventfd at `base + NOTIFY_OFFSET` with datamatch = its index
    /// (KVM); the [`VirtioSubscriber`](super::subscriber::VirtioSubscriber)
    /// waits on them.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.inner.queue_events
    }

    /// [`NOTIFY_OFFSET`], for callers that hold a transport.
    pub fn notify_address_offset(&self) -> u64 {
        NOTIFY_OFFSET
    }

    /// The device's virtio ID.
    pub fn device_type(&self) -> u32 {
        self.inner.device_type
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.lock().status
    }

    /// The InterruptStatus register.
    pub fn interrupt_status(&self) -> u32 {
        self.lock().interrupt_status
    }

    /// Whether the device is activated and not failed.
    pub fn is_active(&self) -> bool {
        self.lock().active
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MmioStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MmioStats {
            notify_writes: get(&c.notify_writes),
            queue_events: get(&c.queue_events),
            host_events: get(&c.host_events),
            used_interrupts: get(&c.used_interrupts),
            config_interrupts: get(&c.config_interrupts),
            device_errors: get(&c.device_errors),
            resets: get(&c.resets),
        }
    }

    /// The device's host descriptors (see [`VirtioDevice::host_fds`]).
    pub fn host_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.lock().device.host_fds()
    }

    /// Runs `f` on the device with the transport lock held (introspection,
    /// tests).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut dyn VirtioDevice) -> R) -> R {
        f(self.lock().device.as_mut())
    }

    /// Sets InterruptStatus bit 0 and raises the line.
    pub fn signal_used_ring(&self) {
        let mut st = self.lock();
        self.raise(&mut st, interrupt::USED_RING);
    }

    /// Sets InterruptStatus bit 1, bumps ConfigGeneration and raises the
    /// line, for a device whose config space changed.
    pub fn signal_config_change(&self) {
        let mut st = self.lock();
        st.config_generation = st.config_generation.wrapping_add(1);
        self.raise(&mut st, interrupt::CONFIG_CHANGE);
    }

    /// The event loop saw queue `index`'s eventfd: processes the queue if
    /// the device is active and the queue is ready, then interrupts if the
    /// device asks for it. A device error marks the device
    /// DEVICE_NEEDS_RESET. The caller drains the eventfd.
    pub fn process_queue_event(&self, index: usize) {
        bump(&self.inner.counters.queue_events);
        // Loaded before the lock: the VMM's store of a new GuestRam never
        // waits for device work, and the Arc keeps this one alive meanwhile.
        let mem = self.inner.mem.load_full();
        let mut st = self.lock();
        if !st.active || st.paused || !st.queues.get(index).is_some_and(|q| q.ready) {
            return;
        }
        let result = st.device.process_queue(index, mem.memory());
        self.finish(&mut st, result);
    }

    /// Notifies again every queue whose device stopped at its work budget
    /// (see [`VirtioDevice::has_more_work`]): the event loop serves what
    /// else is ready, this transport's lock is free meanwhile, and the
    /// queue's next pass goes on where this one stopped.
    fn requeue_unfinished(&self, st: &State) {
        if !st.active {
            return;
        }
        for (index, event) in self.inner.queue_events.iter().enumerate() {
            if st.device.has_more_work(index) {
                // Cannot fail short of the counter reaching 2^64 - 1, which
                // the event loop's reads prevent.
                let _ = event.write(1);
            }
        }
    }

    /// The VM is gone: the device lets go of host resources other VMs may
    /// want, see [`VirtioDevice::release`]. It is stopped (as if paused)
    /// for good.
    pub fn release(&self) {
        let mut st = self.lock();
        st.paused = true;
        st.active = false;
        st.device.release();
    }

    /// Writes what the device completed to stable storage (a disk's
    /// `fdatasync`), for a snapshot; see [`VirtioDevice::sync_data`].
    pub fn sync_data(&self) -> Result<(), DeviceError> {
        self.lock().device.sync_data()
    }

    /// The event loop saw `host_fds()[index]` ready: lets an active device
    /// handle it.
    pub fn process_host_event(&self, index: usize) {
        bump(&self.inner.counters.host_events);
        let mem = self.inner.mem.load_full();
        let mut st = self.lock();
        if !st.active || st.paused {
            return;
        }
        let result = st.device.process_host_event(index, mem.memory());
        self.finish(&mut st, result);
    }

    /// Stops device activity (the VM is paused): queue and host events are
    /// ignored until [`VirtioMmio::resume`]. Returns once any batch in
    /// progress has finished (it holds the lock this takes).
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Restarts device activity, with one pass over every ready queue for
    /// what arrived meanwhile (as at DRIVER_OK).
    pub fn resume(&self) {
        let mut st = self.lock();
        if !st.paused {
            return;
        }
        st.paused = false;
        if st.active {
            self.kick_ready_queues(&st);
        }
    }

    /// The transport's registers and the device's queues and state, for a
    /// snapshot of a paused VM (device work must be stopped, or the queue
    /// positions would be out of date at once).
    pub fn save_state(&self) -> Result<TransportState, TransportStateError> {
        let st = self.lock();
        let owned = if st.active {
            st.device.queue_states()
        } else {
            Vec::new()
        };
        let mut device_queues = Vec::new();
        if st.active {
            for (index, q) in st.queues.iter().enumerate() {
                if !q.ready {
                    continue;
                }
                let Some((_, state)) = owned.iter().find(|(i, _)| *i == index) else {
                    return Err(TransportStateError::MissingQueue(index));
                };
                device_queues.push(SavedQueue::new(index, state));
            }
        }
        Ok(TransportState {
            device_type: self.inner.device_type,
            status: st.status,
            device_features_sel: st.device_features_sel,
            driver_features_sel: st.driver_features_sel,
            driver_features: st.driver_features,
            queue_sel: st.queue_sel,
            queues: st
                .queues
                .iter()
                .map(|q| QueueRegisters {
                    num: q.num,
                    ready: q.ready,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                })
                .collect(),
            interrupt_status: st.interrupt_status,
            config_generation: st.config_generation,
            active: st.active,
            device_queues,
            device: st.device.save_state(),
        })
    }

    /// Loads a saved state into this fresh transport (restore): registers,
    /// and for a device that was active, its queues rebuilt from their
    /// saved positions and handed to `activate` (the guest does not probe
    /// again), then the device's own state. Raises the interrupt line if
    /// InterruptStatus is non-zero, and kicks every ready queue so that a
    /// notification the paused VM had not processed is not lost.
    pub fn restore_state(&self, saved: &TransportState) -> Result<(), TransportStateError> {
        if saved.device_type != self.inner.device_type {
            return Err(TransportStateError::DeviceType {
                saved: saved.device_type,
                found: self.inner.device_type,
            });
        }
        let mut st = self.lock();
        // The queues and the device trust the negotiated features (no
        // indirect descriptors, no event index unless offered): a state file
        // may not claim more than the device offers.
        let offered = st.device.features();
        if saved.driver_features & !offered != 0 {
            return Err(TransportStateError::Features {
                saved: saved.driver_features,
                offered,
            });
        }
        if let Some(q) = saved
            .device_queues
            .iter()
            .find(|q| q.event_idx && saved.driver_features & VIRTIO_RING_F_EVENT_IDX == 0)
        {
            return Err(TransportStateError::BadQueue {
                index: q.index,
                reason: "event index enabled but VIRTIO_RING_F_EVENT_IDX not negotiated".into(),
            });
        }
        if saved.queues.len() != st.queues.len() {
            return Err(TransportStateError::QueueCount {
                saved: saved.queues.len(),
                found: st.queues.len(),
            });
        }
        st.status = saved.status;
        st.device_features_sel = saved.device_features_sel;
        st.driver_features_sel = saved.driver_features_sel;
        st.driver_features = saved.driver_features;
        st.queue_sel = saved.queue_sel;
        for (q, r) in st.queues.iter_mut().zip(&saved.queues) {
            q.num = r.num;
            q.ready = r.ready;
            q.desc = r.desc;
            q.driver = r.driver;
            q.device = r.device;
        }
        st.config_generation = saved.config_generation;
        if saved.active {
            let mem = self.inner.mem.load_full();
            let mut queues = Vec::with_capacity(st.queues.len());
            for (index, q) in st.queues.iter().enumerate() {
                let queue = match saved.device_queues.iter().find(|s| s.index == index) {
                    Some(s) => {
                        let bad = |reason: String| TransportStateError::BadQueue { index, reason };
                        if s.max_size != q.max {
                            return Err(bad(format!(
                                "maximum size {} saved, the device has {}",
                                s.max_size, q.max
                            )));
                        }
                        let queue =
                            Queue::try_from(s.queue_state()).map_err(|e| bad(e.to_string()))?;
                        if queue.ready() && !queue.is_valid(mem.memory()) {
                            return Err(bad("rings are not inside guest RAM".into()));
                        }
                        queue
                    }
                    None if q.ready => return Err(TransportStateError::MissingQueue(index)),
                    None => q.build(index, mem.memory())?,
                };
                queues.push(queue);
            }
            st.device.activate(queues, saved.driver_features)?;
            st.active = true;
        }
        st.device.restore_state(&saved.device)?;
        st.interrupt_status = saved.interrupt_status;
        if st.interrupt_status != 0 {
            self.inner.irq.set_level(true);
        }
        if st.active {
            self.kick_ready_queues(&st);
        }
        Ok(())
    }

    fn kick_ready_queues(&self, st: &State) {
        for (q, event) in st.queues.iter().zip(&self.inner.queue_events) {
            if q.ready {
                let _ = event.write(1);
            }
        }
    }

    fn finish(&self, st: &mut State, result: Result<bool, DeviceError>) {
        match result {
            Ok(true) => self.raise(st, interrupt::USED_RING),
            Ok(false) => {}
            Err(e) => self.fail(st, &e),
        }
        self.requeue_unfinished(st);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug, but the register
        // interface must keep answering so that the guest can reset the
        // device; the state itself is always consistent between statements.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn raise(&self, st: &mut State, bit: u32) {
        st.interrupt_status |= bit;
        let counter = if bit == interrupt::USED_RING {
            &self.inner.counters.used_interrupts
        } else {
            &self.inner.counters.config_interrupts
        };
        bump(counter);
        // Under the lock, so that a concurrent InterruptACK cannot lower the
        // line after this raise while leaving the status bit set.
        self.inner.irq.set_level(true);
    }

    /// The device cannot go on: stop calling it, tell the driver.
    fn fail(&self, st: &mut State, err: &DeviceError) {
        crate::eprintln_limited!(
            "virtio (device type {}): {err}; device needs reset",
            self.inner.device_type
        );
        bump(&self.inner.counters.device_errors);
        st.active = false;
        st.status |= status::DEVICE_NEEDS_RESET;
        self.raise(st, interrupt::CONFIG_CHANGE);
    }

    fn reset(&self, st: &mut State) {
        bump(&self.inner.counters.resets);
        st.device.reset();
        st.status = 0;
        st.device_features_sel = 0;
        st.driver_features_sel = 0;
        st.driver_features = 0;
        st.queue_sel = 0;
        for q in &mut st.queues {
            *q = QueueConfig::new(q.max);
        }
        st.active = false;
        if st.interrupt_status != 0 {
            st.interrupt_status = 0;
            self.inner.irq.set_level(false);
        }
    }

    fn write_status(&self, st: &mut State, value: u32) {
        use status::*;
        if value == 0 {
            self.reset(st);
            return;
        }
        if st.status & FAILED != 0 {
            return;
        }
        const DRIVER_BITS: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;
        let old = st.status & DRIVER_BITS;
        let value = value & DRIVER_BITS;
        if value & old != old {
            // The driver may not clear bits other than by a reset.
            return;
        }
        let new = value & !old;
        if new & FAILED != 0 {
            // The driver gave up on the device; only a reset revives it.
            st.status |= FAILED;
            st.active = false;
            return;
        }
        if st.status & DEVICE_NEEDS_RESET != 0 {
            return;
        }
        for (bit, needs) in [
            (ACKNOWLEDGE, 0),
            (DRIVER, ACKNOWLEDGE),
            (FEATURES_OK, DRIVER),
            (DRIVER_OK, FEATURES_OK),
        ] {
            if new & bit == 0 {
                continue;
            }
            if st.status & needs != needs {
                return;
            }
            match bit {
                FEATURES_OK if !self.features_acceptable(st) => return,
                DRIVER_OK => {
                    st.status |= DRIVER_OK;
                    self.activate(st);
                    return;
                }
                _ => st.status |= bit,
            }
        }
    }

    fn features_acceptable(&self, st: &State) -> bool {
        let offered = st.device.features();
        st.driver_features & !offered == 0 && st.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&self, st: &mut State) {
        let mem = self.inner.mem.load_full();
        let queues = st
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| q.build(i, mem.memory()))
            .collect::<Result<Vec<_>, _>>();
        let features = st.driver_features;
        let result = queues.and_then(|queues| st.device.activate(queues, features));
        match result {
            Ok(()) => {
                st.active = true;
                // One catch-up pass over every ready queue on the event
                // loop: notifications sent before DRIVER_OK were dropped
                // (Linux's virtio-console fills and kicks its receive queue
                // during probe), and host input that arrived before
                // activation is only pulled in when its queue is processed.
                self.kick_ready_queues(st);
            }
            Err(e) => self.fail(st, &e),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let st = self.lock();
        let queue = st.queues.get(st.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.inner.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match st.device_features_sel {
                0 => st.device.features() as u32,
                1 => (st.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| q.max as u32),
            REG_QUEUE_READY => queue.map_or(0, |q| q.ready as u32),
            REG_INTERRUPT_STATUS => st.interrupt_status,
            REG_STATUS => st.status,
            // No shared memory regions: a length of all ones says so.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => st.config_generation,
            _ => 0,
        }
    }

    fn write_register(&self, offset: u64, value: u32) {
        let mut st = self.lock();
        match offset {
            REG_DEVICE_FEATURES_SEL => st.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => st.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                if st.status & (status::FEATURES_OK | status::FAILED) != 0 {
                    return;
                }
                match st.driver_features_sel {
                    0 => st.driver_features = (st.driver_features & !0xffff_ffff) | value as u64,
                    1 => {
                        st.driver_features =
                            (st.driver_features & 0xffff_ffff) | ((value as u64) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => st.queue_sel = value,
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                let locked = status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET;
                if st.status & locked != 0 {
                    return;
                }
                let sel = st.queue_sel as usize;
                let Some(q) = st.queues.get_mut(sel) else {
                    return;
                };
                if offset == REG_QUEUE_READY {
                    q.ready = value == 1;
                    return;
                }
                if q.ready {
                    return;
                }
                let set_low = |v: &mut u64| *v = (*v & !0xffff_ffff) | value as u64;
                let set_high = |v: &mut u64| *v = (*v & 0xffff_ffff) | ((value as u64) << 32);
                match offset {
                    REG_QUEUE_NUM => q.num = value,
                    REG_QUEUE_DESC_LOW => set_low(&mut q.desc),
                    REG_QUEUE_DESC_HIGH => set_high(&mut q.desc),
                    REG_QUEUE_DRIVER_LOW => set_low(&mut q.driver),
                    REG_QUEUE_DRIVER_HIGH => set_high(&mut q.driver),
                    REG_QUEUE_DEVICE_LOW => set_low(&mut q.device),
                    _ => set_high(&mut q.device),
                }
            }
            NOTIFY_OFFSET => {
                bump(&self.inner.counters.notify_writes);
                if let Some(event) = self.inner.queue_events.get(value as usize) {
                    // EAGAIN means the counter is saturated: the event loop
                    // is already due to run, so nothing is lost.
                    let _ = event.write(1);
                }
            }
            REG_INTERRUPT_ACK => {
                if st.interrupt_status == 0 {
                    return;
                }
                st.interrupt_status &= !value;
                if st.interrupt_status == 0 {
                    self.inner.irq.set_level(false);
                }
            }
            REG_STATUS => self.write_status(&mut st, value),
            _ => {}
        }
    }

    fn valid(offset: u64, size: u32) -> bool {
        if offset < CONFIG_OFFSET {
            size == 4 && offset % 4 == 0
        } else {
            matches!(size, 1 | 2 | 4 | 8)
                && offset % size as u64 == 0
                && offset + size as u64 <= WINDOW_SIZE
        }
    }
}

impl RegionOps for VirtioMmio {
    fn read(&self, offset: u64, size: u32) -> u64 {
        if !Self::valid(offset, size) {
            return 0;
        }
        if offset < CONFIG_OFFSET {
            return self.read_register(offset) as u64;
        }
        let mut buf = [0u8; 8];
        let data = &mut buf[..size as usize];
        self.lock().device.read_config(offset - CONFIG_OFFSET, data);
        u64::from_le_bytes(buf)
    }

    fn write(&self, offset: u64, size: u32, value: u64) {
        if !Self::valid(offset, size) {
            return;
        }
        if offset < CONFIG_OFFSET {
            self.write_register(offset, value as u32);
            return;
        }
        let bytes = value.to_le_bytes();
        self.lock()
            .device
            .write_config(offset - CONFIG_OFFSET, &bytes[..size as usize]);
    }

    fn rules(&self) -> AccessRules {
        // Callbacks see every access as the guest made it; `accepts` and
        // `valid` reject the ones the spec does not allow.
        AccessRules::default()
    }

    fn accepts(&self, offset: u64, size: u32, _is_write: bool) -> bool {
        Self::valid(offset, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{ram_handle, RecordingIrq, TestQueue};
    use crate::memory::MemoryTree;
    use std::sync::Mutex;

    const FEATURE_A: u64 = 1 << 3;

    /// (ready, size, descriptor table, driver area, device area).
    type QueueSeen = (bool, u16, u64, u64, u64);

    /// What the fake device saw, shared with the test.
    #[derive(Default)]
    struct Log {
        activations: Vec<(Vec<QueueSeen>, u64)>,
        resets: usize,
        processed: Vec<usize>,
        config_writes: Vec<(u64, Vec<u8>)>,
        /// Passes `process_queue` still claims to have work for.
        more_passes: u32,
    }

    struct Fake {
        log: Arc<Mutex<Log>>,
        config: [u8; 8],
        /// What `process_queue` answers.
        answer: fn() -> Result<bool, DeviceError>,
        fail_activate: bool,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | FEATURE_A
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, queues: Vec<Queue>, features: u64) -> Result<(), DeviceError> {
            let qs = queues
                .iter()
                .map(|q| {
                    (
                        q.ready(),
                        q.size(),
                        q.desc_table(),
                        q.avail_ring(),
                        q.used_ring(),
                    )
                })
                .collect();
            self.log.lock().unwrap().activations.push((qs, features));
            if self.fail_activate {
                return Err(DeviceError::BadQueue(0, "refused".into()));
            }
            Ok(())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
        fn process_queue(
            &mut self,
            index: usize,
            _mem: &GuestMemoryMmap<()>,
        ) -> Result<bool, DeviceError> {
            let mut log = self.log.lock().unwrap();
            log.processed.push(index);
            log.more_passes = log.more_passes.saturating_sub(1);
            (self.answer)()
        }
        fn has_more_work(&self, index: usize) -> bool {
            index == 0 && self.log.lock().unwrap().more_passes > 0
        }
    }

    struct Rig {
        mmio: VirtioMmio,
        irq: Arc<RecordingIrq>,
        log: Arc<Mutex<Log>>,
        mem: GuestMemoryHandle,
        _tree: MemoryTree,
    }

    fn rig_with(answer: fn() -> Result<bool, DeviceError>, fail_activate: bool) -> Rig {
        let (tree, _, mem) = ram_handle(0x100000);
        let log = Arc::new(Mutex::new(Log::default()));
        let irq = Arc::new(RecordingIrq::default());
        let dev = Fake {
            log: log.clone(),
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            answer,
            fail_activate,
        };
        let mmio = VirtioMmio::new(Box::new(dev), irq.clone(), mem.clone()).unwrap();
        Rig {
            mmio,
            irq,
            log,
            mem,
            _tree: tree,
        }
    }

    fn rig() -> Rig {
        rig_with(|| Ok(true), false)
    }

    impl Rig {
        fn r(&self, offset: u64) -> u32 {
            self.mmio.read(offset, 4) as u32
        }
        fn w(&self, offset: u64, value: u32) {
            self.mmio.write(offset, 4, value as u64)
        }
        /// Negotiates VERSION_1 and sets FEATURES_OK.
        fn negotiate(&self) {
            self.w(REG_STATUS, status::ACKNOWLEDGE);
            self.w(REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.w(REG_DRIVER_FEATURES_SEL, 1);
            self.w(REG_DRIVER_FEATURES, 1);
            self.w(REG_STATUS, 0xb);
            assert_eq!(self.r(REG_STATUS), 0xb);
        }
        fn setup_queue(&self, sel: u32, num: u32, desc: u64, driver: u64, device: u64) {
            self.w(REG_QUEUE_SEL, sel);
            self.w(REG_QUEUE_NUM, num);
            self.w(REG_QUEUE_DESC_LOW, desc as u32);
            self.w(REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.w(REG_QUEUE_DRIVER_LOW, driver as u32);
            self.w(REG_QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
            self.w(REG_QUEUE_DEVICE_LOW, device as u32);
            self.w(REG_QUEUE_DEVICE_HIGH, (device >> 32) as u32);
            self.w(REG_QUEUE_READY, 1);
        }
        fn driver_ok(&self) {
            self.w(REG_STATUS, 0xf);
        }
    }

    #[test]
    fn identity_registers() {
        let rig = rig();
        assert_eq!(rig.r(REG_MAGIC), MAGIC_VALUE);
        assert_eq!(rig.r(REG_VERSION), 2);
        assert_eq!(rig.r(REG_DEVICE_ID), 42);
        assert_eq!(rig.r(REG_VENDOR_ID), VENDOR_ID);
        assert_eq!(rig.r(REG_CONFIG_GENERATION), 0);
        assert_eq!(rig.r(REG_SHM_LEN_LOW), u32::MAX);
        assert_eq!(rig.r(0x0f8), 0, "unknown register");
        // Registers take 32-bit accesses only.
        assert_eq!(rig.mmio.read(REG_MAGIC, 1), 0);
        assert_eq!(rig.mmio.read(REG_MAGIC, 2), 0);
        assert_eq!(rig.mmio.read(REG_MAGIC, 8), 0);
        assert_eq!(rig.mmio.read(REG_MAGIC + 2, 4), 0, "misaligned");
        assert!(!rig.mmio.accepts(REG_MAGIC, 2, false));
        assert!(rig.mmio.accepts(REG_MAGIC, 4, false));
        rig.mmio.write(REG_STATUS, 1, 1);
        assert_eq!(rig.r(REG_STATUS), 0, "a byte write to Status is dropped");
        assert_eq!(rig.mmio.queue_events().len(), 2);
        assert_eq!(rig.mmio.notify_address_offset(), 0x50);
    }

    #[test]
    fn device_features_by_selector() {
        let rig = rig();
        assert_eq!(rig.r(REG_DEVICE_FEATURES), FEATURE_A as u32);
        rig.w(REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rig.r(REG_DEVICE_FEATURES), 1);
        rig.w(REG_DEVICE_FEATURES_SEL, 2);
        assert_eq!(rig.r(REG_DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_ok_is_refused_for_bad_feature_sets() {
        for (low, high, accepted) in [
            (FEATURE_A as u32, 1, true),
            (0, 1, true),
            (FEATURE_A as u32, 0, false),     // no VERSION_1
            (1 << 4, 1, false),               // not offered
            (FEATURE_A as u32, 1 | 2, false), // high bit not offered
        ] {
            let rig = rig();
            rig.w(REG_STATUS, 1);
            rig.w(REG_STATUS, 3);
            rig.w(REG_DRIVER_FEATURES_SEL, 0);
            rig.w(REG_DRIVER_FEATURES, low);
            rig.w(REG_DRIVER_FEATURES_SEL, 1);
            rig.w(REG_DRIVER_FEATURES, high);
            rig.w(REG_STATUS, 0xb);
            let expected = if accepted { 0xb } else { 0x3 };
            assert_eq!(rig.r(REG_STATUS), expected, "{low:#x}/{high:#x}");
            if accepted {
                // Features are frozen after FEATURES_OK.
                rig.w(REG_DRIVER_FEATURES_SEL, 0);
                rig.w(REG_DRIVER_FEATURES, 0xffff_ffff);
                rig.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
                rig.driver_ok();
                let log = rig.log.lock().unwrap();
                assert_eq!(log.activations[0].1, (high as u64) << 32 | low as u64);
            }
        }
    }

    #[test]
    fn status_transitions() {
        let rig = rig();
        // FEATURES_OK without DRIVER: ignored.
        rig.w(REG_STATUS, 1);
        rig.w(REG_STATUS, 1 | 8);
        assert_eq!(rig.r(REG_STATUS), 1);
        // Clearing a bit: ignored.
        rig.w(REG_STATUS, 3);
        rig.w(REG_STATUS, 2);
        assert_eq!(rig.r(REG_STATUS), 3);
        // The driver cannot set DEVICE_NEEDS_RESET.
        rig.w(REG_STATUS, 3 | 0x40);
        assert_eq!(rig.r(REG_STATUS), 3);
        // Reset.
        rig.w(REG_STATUS, 0);
        assert_eq!(rig.r(REG_STATUS), 0);
        assert_eq!(rig.log.lock().unwrap().resets, 1);
        // Several steps in one write.
        rig.w(REG_DRIVER_FEATURES_SEL, 1);
        rig.w(REG_DRIVER_FEATURES, 1);
        rig.w(REG_STATUS, 0xb);
        assert_eq!(rig.r(REG_STATUS), 0xb);
        // FAILED sticks until a reset; nothing else is accepted meanwhile.
        rig.w(REG_STATUS, 0xb | 0x80);
        assert_eq!(rig.r(REG_STATUS), 0x8b);
        rig.w(REG_STATUS, 0x8f);
        assert_eq!(rig.r(REG_STATUS), 0x8b);
        assert!(rig.log.lock().unwrap().activations.is_empty());
        rig.w(REG_STATUS, 0);
        assert_eq!(rig.r(REG_STATUS), 0);
        assert_eq!(rig.mmio.stats().resets, 2);
    }

    #[test]
    fn driver_ok_activates_with_the_programmed_queues() {
        let rig = rig();
        rig.negotiate();
        assert_eq!(rig.r(REG_QUEUE_NUM_MAX), 16);
        rig.w(REG_QUEUE_SEL, 1);
        assert_eq!(rig.r(REG_QUEUE_NUM_MAX), 8);
        rig.w(REG_QUEUE_SEL, 2);
        assert_eq!(rig.r(REG_QUEUE_NUM_MAX), 0, "no queue 2");
        rig.setup_queue(0, 8, 0x1_0000, 0x1_1000, 0x1_2000);
        assert_eq!(rig.r(REG_QUEUE_READY), 1);
        // Writes to a ready queue are ignored.
        rig.w(REG_QUEUE_NUM, 4);
        rig.w(REG_QUEUE_DESC_LOW, 0x5000);
        rig.driver_ok();
        assert_eq!(rig.r(REG_STATUS), 0xf);
        assert!(rig.mmio.is_active());
        // And so are queue writes after DRIVER_OK.
        rig.w(REG_QUEUE_SEL, 1);
        rig.w(REG_QUEUE_READY, 1);
        assert_eq!(rig.r(REG_QUEUE_READY), 0);
        let log = rig.log.lock().unwrap();
        assert_eq!(
            log.activations,
            vec![(
                vec![(true, 8, 0x1_0000, 0x1_1000, 0x1_2000), (false, 8, 0, 0, 0)],
                VIRTIO_F_VERSION_1
            )]
        );
        assert!(rig.irq.take().is_empty());
    }

    fn assert_needs_reset(rig: &Rig) {
        assert_eq!(rig.r(REG_STATUS), 0xf | 0x40);
        assert!(!rig.mmio.is_active());
        assert_eq!(rig.r(REG_INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
        assert_eq!(rig.irq.take(), vec![true]);
        assert_eq!(rig.mmio.stats().device_errors, 1);
    }

    #[test]
    fn bad_queues_set_needs_reset() {
        let cases: [(u32, u64, u64, u64); 6] = [
            (12, 0x1000, 0x2000, 0x3000),        // not a power of two
            (32, 0x1000, 0x2000, 0x3000),        // above the maximum
            (0, 0x1000, 0x2000, 0x3000),         // zero
            (16, 0x1008, 0x2000, 0x3000),        // descriptor table misaligned
            (16, 0x1000, 0x2000, 0x3002),        // used ring misaligned
            (16, 0x1000, 0x2000, 0x10_0000 - 8), // used ring past the end of RAM
        ];
        for (num, desc, driver, device) in cases {
            let rig = rig();
            rig.negotiate();
            rig.setup_queue(0, num, desc, driver, device);
            rig.driver_ok();
            assert_needs_reset(&rig);
            assert!(rig.log.lock().unwrap().activations.is_empty());
        }
        // Outside RAM altogether, through the high halves.
        let rig = rig();
        rig.negotiate();
        rig.setup_queue(0, 16, 0x1_0000_1000, 0x2000, 0x3000);
        rig.driver_ok();
        assert_needs_reset(&rig);
    }

    #[test]
    fn failed_activation_sets_needs_reset_and_reset_recovers() {
        let rig = rig_with(|| Ok(true), true);
        rig.negotiate();
        rig.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        rig.driver_ok();
        assert_needs_reset(&rig);
        // Only a reset gets out of it.
        rig.w(REG_STATUS, 0x4f);
        assert_eq!(rig.r(REG_STATUS), 0x4f);
        rig.w(REG_STATUS, 0);
        assert_eq!(rig.r(REG_STATUS), 0);
        assert_eq!(rig.r(REG_INTERRUPT_STATUS), 0);
        assert_eq!(rig.irq.take(), vec![false]);
        rig.w(REG_QUEUE_SEL, 0);
        assert_eq!(rig.r(REG_QUEUE_READY), 0, "queues are cleared");
    }

    #[test]
    fn interrupt_status_and_ack() {
        let rig = rig();
        rig.mmio.signal_used_ring();
        assert_eq!(rig.r(REG_INTERRUPT_STATUS), 1);
        rig.mmio.signal_config_change();
        assert_eq!(rig.r(REG_INTERRUPT_STATUS), 3);
        assert_eq!(rig.r(REG_CONFIG_GENERATION), 1);
        assert_eq!(rig.irq.take(), vec![true, true]);
        rig.w(REG_INTERRUPT_ACK, 1);
        assert_eq!(rig.r(REG_INTERRUPT_STATUS), 2);
        assert!(rig.irq.take().is_empty(), "still pending: line stays up");
        rig.w(REG_INTERRUPT_ACK, 2);
        assert_eq!(rig.r(REG_INTERRUPT_STATUS), 0);
        assert_eq!(rig.irq.take(), vec![false]);
        rig.w(REG_INTERRUPT_ACK, 3);
        assert!(rig.irq.take().is_empty(), "nothing to acknowledge");
        let stats = rig.mmio.stats();
        assert_eq!((stats.used_interrupts, stats.config_interrupts), (1, 1));
    }

    #[test]
    fn notify_writes_the_queue_eventfd() {
        let rig = rig();
        rig.w(NOTIFY_OFFSET, 1);
        rig.w(NOTIFY_OFFSET, 1);
        rig.w(NOTIFY_OFFSET, 7);
        assert_eq!(rig.mmio.queue_events()[1].read().unwrap(), 2);
        assert!(rig.mmio.queue_events()[0].read().is_err(), "not signalled");
        assert_eq!(rig.mmio.stats().notify_writes, 3);
    }

    #[test]
    fn config_space_accesses() {
        let rig = rig();
        assert_eq!(rig.mmio.read(0x100, 1), 1);
        assert_eq!(rig.mmio.read(0x101, 1), 2);
        assert_eq!(rig.mmio.read(0x102, 2), 0x0403);
        assert_eq!(rig.mmio.read(0x104, 4), 0x0807_0605);
        assert_eq!(rig.mmio.read(0x100, 8), 0x0807_0605_0403_0201);
        assert_eq!(rig.mmio.read(0x101, 2), 0, "misaligned");
        assert_eq!(rig.mmio.read(0x108, 4), 0, "past the device's config");
        assert_eq!(rig.mmio.read(0x1fc, 8), 0, "past the window");
        assert_eq!(rig.mmio.read(0x200, 1), 0);
        rig.mmio.write(0x102, 2, 0xbeef);
        rig.mmio.write(0x103, 2, 0xbeef); // misaligned: dropped
        rig.mmio.write(0x100, 3, 0xbeef); // bad size: dropped
        assert_eq!(
            rig.log.lock().unwrap().config_writes,
            vec![(2, vec![0xef, 0xbe])]
        );
    }

    #[test]
    fn queue_events_reach_only_an_active_device_and_ready_queues() {
        let rig = rig();
        rig.mmio.process_queue_event(0);
        rig.negotiate();
        rig.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        rig.mmio.process_queue_event(0);
        assert!(rig.log.lock().unwrap().processed.is_empty());
        rig.driver_ok();
        rig.mmio.process_queue_event(1); // not ready
        rig.mmio.process_queue_event(5); // no such queue
        rig.mmio.process_queue_event(0);
        assert_eq!(rig.log.lock().unwrap().processed, vec![0]);
        assert_eq!(rig.r(REG_INTERRUPT_STATUS), 1);
        assert_eq!(rig.irq.take(), vec![true]);
        assert_eq!(rig.mmio.stats().queue_events, 5);
    }

    /// A device that stopped at its work budget gets its queue notified
    /// again, so the event loop comes back to it (after serving other
    /// events) with the lock free in between; pause holds it off, resume
    /// picks it up again.
    #[test]
    fn a_device_with_work_left_is_notified_again() {
        let rig = rig();
        rig.negotiate();
        rig.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        rig.driver_ok();
        let event = &rig.mmio.queue_events()[0];
        assert_eq!(event.read().unwrap(), 1, "the activation kick");
        rig.log.lock().unwrap().more_passes = 3;
        rig.mmio.process_queue_event(0);
        assert_eq!(event.read().unwrap(), 1);
        rig.mmio.process_queue_event(0);
        assert_eq!(event.read().unwrap(), 1);
        // Paused between passes: nothing runs, nothing is lost.
        rig.mmio.pause();
        rig.mmio.process_queue_event(0);
        assert!(event.read().is_err(), "no notification while paused");
        rig.mmio.resume();
        assert_eq!(event.read().unwrap(), 1, "resume kicks the queue");
        rig.mmio.process_queue_event(0);
        assert!(event.read().is_err(), "done: no more notifications");
        assert_eq!(rig.log.lock().unwrap().processed, vec![0, 0, 0]);
    }

    /// A saved state may not claim features the device does not offer, nor
    /// an event index that was not negotiated.
    #[test]
    fn restore_refuses_features_that_were_not_offered() {
        let rig = rig();
        rig.negotiate();
        rig.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        // As an active device with queue 0 saves it (the fake device does
        // not report its queues).
        let mut saved = rig.mmio.save_state().unwrap();
        saved.active = true;
        saved.status |= status::DRIVER_OK;
        saved.device_queues = vec![SavedQueue {
            index: 0,
            max_size: 16,
            size: 16,
            ready: true,
            next_avail: 0,
            next_used: 0,
            event_idx: false,
            desc_table: 0x1000,
            avail_ring: 0x2000,
            used_ring: 0x3000,
        }];
        let fresh = rig_with(|| Ok(true), false);
        let mut bad = saved.clone();
        bad.driver_features |= 1 << 28; // VIRTIO_RING_F_INDIRECT_DESC
        assert!(matches!(
            fresh.mmio.restore_state(&bad),
            Err(TransportStateError::Features { .. })
        ));
        let mut bad = saved.clone();
        bad.device_queues[0].event_idx = true;
        assert!(matches!(
            fresh.mmio.restore_state(&bad),
            Err(TransportStateError::BadQueue { index: 0, .. })
        ));
        fresh.mmio.restore_state(&saved).unwrap();
        assert!(fresh.mmio.is_active());
    }

    #[test]
    fn processing_error_sets_needs_reset_and_stops_processing() {
        let rig = rig_with(|| Err(DeviceError::Memory("boom".into())), false);
        rig.negotiate();
        rig.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        rig.driver_ok();
        rig.mmio.process_queue_event(0);
        assert_needs_reset(&rig);
        rig.mmio.process_queue_event(0);
        assert_eq!(rig.log.lock().unwrap().processed, vec![0]);
        // Reset and bring it up again: processing resumes.
        rig.w(REG_STATUS, 0);
        rig.negotiate();
        rig.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
        rig.driver_ok();
        assert!(rig.mmio.is_active());
        rig.mmio.process_queue_event(0);
        assert_eq!(rig.log.lock().unwrap().processed, vec![0, 0]);
    }

    #[test]
    fn driver_ok_checks_against_the_current_guest_memory() {
        let rig = rig();
        // The VMM commits a smaller RAM: the queue at 0x80000 is now outside.
        let (_tree, _, small) = ram_handle(0x40000);
        rig.mem.store(small.load_full());
        rig.negotiate();
        rig.setup_queue(0, 16, 0x8_0000, 0x8_1000, 0x8_2000);
        rig.driver_ok();
        assert_needs_reset(&rig);
        // A queue that fits is fine once reset.
        rig.w(REG_STATUS, 0);
        rig.negotiate();
        let tq = TestQueue::new(rig.mem.load().memory(), 0x1000, 16);
        rig.setup_queue(0, 16, tq.desc, tq.avail, tq.used);
        rig.driver_ok();
        assert!(rig.mmio.is_active());
    }
}
