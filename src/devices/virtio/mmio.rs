//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! [`VirtioMmio`] is a cheap, cloneable handle on one transport. The memory
//! tree gets one clone as the device's [`RegionOps`] (register accesses from
//! vCPU threads), the event loop gets another inside a
//! [`VirtioSubscriber`](super::subscriber::VirtioSubscriber). All mutable
//! state, the device included, sits behind one mutex, so a register access
//! and queue processing never interleave.
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

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{DeviceError, IrqLine, VirtioDevice, VIRTIO_F_VERSION_1};
use super::GuestMemoryHandle;
use crate::memory::{AccessRules, RegionOps};

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
        if !st.active || !st.queues.get(index).is_some_and(|q| q.ready) {
            return;
        }
        let result = st.device.process_queue(index, mem.memory());
        self.finish(&mut st, result);
    }

    /// The event loop saw `host_fds()[index]` ready: lets an active device
    /// handle it.
    pub fn process_host_event(&self, index: usize) {
        bump(&self.inner.counters.host_events);
        let mem = self.inner.mem.load_full();
        let mut st = self.lock();
        if !st.active {
            return;
        }
        let result = st.device.process_host_event(index, mem.memory());
        self.finish(&mut st, result);
    }

    fn finish(&self, st: &mut State, result: Result<bool, DeviceError>) {
        match result {
            Ok(true) => self.raise(st, interrupt::USED_RING),
            Ok(false) => {}
            Err(e) => self.fail(st, &e),
        }
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
        eprintln!(
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
            Ok(()) => st.active = true,
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
