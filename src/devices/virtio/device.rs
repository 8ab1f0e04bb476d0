//! The interface between the virtio-mmio transport and a device type.

use std::os::fd::RawFd;

use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;

/// virtio 1.x devices must offer `VIRTIO_F_VERSION_1` (bit 32); a driver
/// that does not accept it is refused at `FEATURES_OK`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device IDs (virtio 1.2, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CONSOLE: u32 = 3;
    pub const RNG: u32 = 4;
}

/// Why a device could not be activated or had to stop processing. The
/// transport answers with `DEVICE_NEEDS_RESET` and a config-change
/// interrupt, as virtio 1.x asks; the guest must reset the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("queue {0} is not usable: {1}")]
    BadQueue(usize, String),
    #[error("malformed descriptor chain on queue {queue}: {reason}")]
    BadChain { queue: usize, reason: String },
    #[error("guest memory access failed: {0}")]
    Memory(String),
    #[error("host I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// An interrupt line as the transport sees it.
///
/// The transport calls `set_level(true)` every time it sets a bit in
/// InterruptStatus (even if one was already set) and `set_level(false)`
/// when the driver's InterruptACK leaves it at zero. A level-triggered
/// implementation (the riscv64 PLIC) follows the level; an edge-triggered
/// one (a KVM irqfd on x86) fires on every `true` and ignores `false`.
pub trait IrqLine: Send + Sync {
    fn set_level(&self, asserted: bool);
}

/// A device type behind the virtio-mmio transport.
///
/// The transport calls these with its lock held, from a vCPU thread for
/// register accesses and from the event loop for queue and host events, so
/// none of them may block for long (bulk I/O runs only in `process_queue`
/// and `process_host_event`, which the event loop calls).
///
/// Life cycle: `process_queue` and `process_host_event` are only called
/// while the device is active, i.e. after an `activate` that returned `Ok`
/// and before the next `reset`. A device whose processing returns `Err` is
/// marked `DEVICE_NEEDS_RESET` and is not called again until the driver
/// resets it.
///
/// Host descriptors from [`VirtioDevice::host_fds`] are registered
/// edge-triggered (`EPOLLET`): the event loop is woken once per edge, not
/// for as long as the descriptor stays readable. A device that cannot take
/// more host input (the guest's receive ring is full) therefore simply
/// stops reading and leaves the rest in the descriptor; it must retry in
/// `process_queue` when the driver notifies the receive queue (new buffers).
/// The same rule covers input that arrived before activation, whose edge
/// was not delivered to the device: the driver's first notification of the
/// receive queue after DRIVER_OK is the device's cue to read.
pub trait VirtioDevice: Send {
    /// The virtio device ID, see [`device_type`].
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the number of queues is its length.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers, including [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// Reads `data.len()` bytes of config space at `offset`. Bytes beyond
    /// the config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes config space; read-only fields ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: the queues (already checked against guest
    /// memory by the transport) and the negotiated features are final.
    ///
    /// `queues` has one entry per [`VirtioDevice::queue_max_sizes`], in
    /// order. A queue the driver did not set up has `ready() == false`; the
    /// device must not use it (the transport never calls `process_queue`
    /// for it). `features` is the subset of [`VirtioDevice::features`] the
    /// driver accepted; it always contains [`VIRTIO_F_VERSION_1`].
    fn activate(&mut self, queues: Vec<Queue>, features: u64) -> Result<(), DeviceError>;
    /// The driver reset the device (status 0): forget queues and features
    /// and return to the state before `activate`.
    fn reset(&mut self);
    /// The driver notified queue `index`. Returns whether the used ring
    /// changed in a way the driver must be interrupted for.
    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError>;
    /// Whether the last `process_queue` or `process_host_event` stopped at
    /// its [`PassBudget`](super::PassBudget) with work left for queue
    /// `index`. The transport then notifies that queue again (its eventfd),
    /// so the event loop comes back to it after serving the other events
    /// that are ready, instead of one guest notification holding the
    /// transport lock for as long as the guest likes. A device that cannot
    /// be asked for unbounded work keeps the default.
    fn has_more_work(&self, _index: usize) -> bool {
        false
    }
    /// Writes everything the device has completed to stable storage
    /// (`fdatasync` for a disk), for a snapshot: a restored guest must not
    /// lose writes it was told were complete. Devices without storage have
    /// nothing to do.
    fn sync_data(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    /// The VM is gone: let go of what other VMs may want (a disk's lock).
    /// Called when the VM drops its devices; handles such as the control
    /// plane's may keep the device itself alive for a while (for its
    /// counters), but no guest work reaches it any more.
    fn release(&mut self) {}
    /// Host descriptors the event loop should poll for this device (a TAP
    /// device, console input), with readable interest, edge-triggered
    /// (`EPOLLET`; see the trait documentation for what that asks of the
    /// device). Read once, when the event-loop subscriber is registered;
    /// the descriptors must stay open for the device's lifetime.
    fn host_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// `host_fds()[index]` became readable (or reported an error or hang
    /// up, which the device sees when it reads). Returns whether to
    /// interrupt for the used ring.
    fn process_host_event(
        &mut self,
        _index: usize,
        _mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        Ok(false)
    }
    /// The queues the device owns since `activate`, as `(index, state)`
    /// (next_avail, next_used, ring addresses, ...), for a snapshot. A
    /// restore hands the rebuilt queues to `activate` again, so a device
    /// whose queues are all ready and that keeps no other driver-visible
    /// state needs nothing else. Devices that own queues must implement
    /// this: the transport refuses to snapshot an active device whose
    /// ready queues are missing here.
    fn queue_states(&self) -> Vec<(usize, QueueState)> {
        Vec::new()
    }
    /// Device-specific state beyond the queues (buffered console input),
    /// as JSON; `null` when there is none.
    fn save_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Loads what [`VirtioDevice::save_state`] gave, after `activate`
    /// (when the device was active) on a restored VM.
    fn restore_state(&mut self, _state: &serde_json::Value) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Device-level counters (requests, bytes, errors) for the control
    /// API, as JSON; `null` when the device keeps none.
    fn counters(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
