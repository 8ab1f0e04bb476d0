//! virtio-net (device ID 1) over a TAP interface.
//!
//! Two queues, receiveq (0) and transmitq (1); no control queue, no
//! multiqueue, no offloads and no mergeable receive buffers. Offered
//! features: `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC` and
//! `VIRTIO_NET_F_STATUS` (the link is always reported up). Without
//! offloads every frame is preceded by a 12-byte `virtio_net_hdr_v1`
//! that carries nothing: on transmit the device skips it, on receive it
//! writes zeros with `num_buffers = 1` (what virtio 1.x asks when
//! `MRG_RXBUF` is not negotiated).
//!
//! Since there are no mergeable buffers, a received frame must fit one
//! receive chain; one that does not is dropped and counted (Linux's
//! driver posts buffers for a full 1518-byte frame, so only a host MTU
//! above 1500 causes drops). The receive chain is kept for the next frame.
//!
//! The host side is a [`NetBackend`], a [`Tap`] in the VMM. Its descriptor
//! is polled edge-triggered: receive work reads until `WouldBlock`, except
//! when the guest has no free receive buffer; then the frame already read
//! is kept (one pending frame) and reading resumes when the guest notifies
//! receiveq, which it does after adding buffers. A transmit that the
//! backend refuses with `WouldBlock` leaves its chain on the ring and is
//! retried on the next event of this device (either queue's notification
//! or the backend becoming readable).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::device::{device_type, DeviceError, VirtioDevice, VIRTIO_F_VERSION_1};
use super::tap::{Tap, TapError};
use super::{pop_head, read_chain, ChainRef, PassBudget};

/// The device has a MAC address in config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The config space has a link status field.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// `status` bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];

/// Size of `virtio_net_hdr_v1`, which precedes every frame in both
/// directions under virtio 1.x.
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame accepted from the guest: a 64 KiB IP packet plus
/// Ethernet and VLAN headers (the limit Linux's tun uses too).
pub const MAX_FRAME_LEN: usize = 65550;
/// What one pass over a queue may do before yielding the event loop (see
/// [`PassBudget`]): frames, and bytes copied. A guest can keep both rings
/// full from another vCPU, and the TAP can keep receiving, forever.
pub const PASS_BUDGET: PassBudget = PassBudget {
    requests: 128,
    bytes: 4 << 20,
};
/// Cap on descriptors walked in one chain, so that a parser fed an
/// arbitrary iterator (the fuzz target) terminates too; a real chain is
/// bounded by the queue size anyway.
const MAX_CHAIN_DESCRIPTORS: usize = 1 << 16;

/// The host end of the network device.
pub trait NetBackend: Send {
    /// Reads one Ethernet frame into `buf` and returns its length;
    /// `WouldBlock` when no frame is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one Ethernet frame; `WouldBlock` means it was not sent and may
    /// be retried later.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The descriptor to poll (edge-triggered, readable) for frames.
    fn raw_fd(&self) -> RawFd;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        Tap::write_frame(self, frame)
    }
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// How the VMM configures one network device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Host TAP interface name.
    pub tap: String,
    /// Guest MAC address; `None` picks a random one, see [`random_mac`].
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// Why a MAC address string was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacParseError {
    #[error("MAC address {0:?} must be six hex octets separated by ':' (like 52:54:00:12:34:56)")]
    Syntax(String),
    #[error("MAC address {0:?} is a multicast address (low bit of the first octet set)")]
    Multicast(String),
    #[error("MAC address {0:?} is all zeros")]
    Zero(String),
}

/// Parses `xx:xx:xx:xx:xx:xx` (hex, either case, exactly two digits per
/// octet). Multicast and all-zero addresses are refused: a NIC cannot
/// use them as its own address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], MacParseError> {
    let syntax = || MacParseError::Syntax(s.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for octet in mac.iter_mut() {
        let part = parts.next().ok_or_else(syntax)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        *octet = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
    }
    if parts.next().is_some() {
        return Err(syntax());
    }
    if mac[0] & 1 != 0 {
        return Err(MacParseError::Multicast(s.to_owned()));
    }
    if mac == [0; 6] {
        return Err(MacParseError::Zero(s.to_owned()));
    }
    Ok(mac)
}

/// Formats a MAC address the way [`parse_mac`] reads it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random locally administered (bit 1 of the first octet set) unicast
/// (bit 0 clear) MAC address. It differs on every call, so two VMs
/// started without `mac` do not collide on a bridge, but the guest sees
/// a new address on every boot; configure one for a stable address.
pub fn random_mac() -> [u8; 6] {
    // std seeds each RandomState from the OS's random source; hashing the
    // time and pid on top only guards against a degenerate seed.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let r = h.finish().to_le_bytes();
    [(r[0] & 0xfc) | 0x02, r[1], r[2], r[3], r[4], r[5]]
}

/// Why a transmit chain was refused by [`parse_tx_chain`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxChainError {
    #[error("empty chain")]
    Empty,
    #[error("chain does not end (descriptor loop, bad next index or over 4 GiB)")]
    Unterminated,
    #[error("device-writable descriptor in a transmit chain")]
    WritableDescriptor,
    #[error("buffer {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfRange { addr: u64, len: u32 },
    #[error("chain of {0} bytes is shorter than the virtio-net header")]
    TooShort(u64),
    #[error("chain of over {0} bytes exceeds header plus the largest frame")]
    TooLong(u64),
}

/// Gathers a transmit chain (header and frame, in any split over
/// descriptors) and leaves the frame, without the header, in `frame`.
/// Every descriptor must be device-readable and inside guest RAM, the
/// chain must end, and its length must be between `NET_HDR_LEN` and
/// `NET_HDR_LEN + MAX_FRAME_LEN`. Pure apart from reading `mem`, so a fuzz
/// target can drive it with arbitrary descriptors.
pub fn parse_tx_chain<M, I>(
    mem: &M,
    descriptors: I,
    frame: &mut Vec<u8>,
) -> Result<(), TxChainError>
where
    M: GuestMemory + ?Sized,
    I: IntoIterator<Item = Descriptor>,
{
    frame.clear();
    let mut total: u64 = 0;
    let mut count = 0usize;
    let mut last_has_next = false;
    for desc in descriptors {
        count += 1;
        if count > MAX_CHAIN_DESCRIPTORS {
            return Err(TxChainError::Unterminated);
        }
        if desc.is_write_only() {
            return Err(TxChainError::WritableDescriptor);
        }
        let len = desc.len();
        let start = total;
        total += u64::from(len);
        // Checked before any copy, so an oversized chain never makes us
        // allocate more than one maximal frame.
        if total > (NET_HDR_LEN + MAX_FRAME_LEN) as u64 {
            return Err(TxChainError::TooLong(total));
        }
        let out_of_range = || TxChainError::OutOfRange {
            addr: desc.addr().raw_value(),
            len,
        };
        if len > 0 && !mem.check_range(desc.addr(), len as usize, Permissions::Read) {
            return Err(out_of_range());
        }
        // The part of this descriptor that lies past the header. `start`
        // and `len` are bounded by the length check above.
        let skip = (NET_HDR_LEN as u64)
            .saturating_sub(start)
            .min(u64::from(len));
        let copy = u64::from(len) - skip;
        if copy > 0 {
            let addr = desc.addr().checked_add(skip).ok_or_else(out_of_range)?;
            let old = frame.len();
            frame.resize(old + copy as usize, 0);
            mem.read_slice(&mut frame[old..], addr)
                .map_err(|_| out_of_range())?;
        }
        last_has_next = desc.has_next();
    }
    if count == 0 {
        return Err(TxChainError::Empty);
    }
    // The chain iterator stops early (still yielding a NEXT descriptor) on
    // a loop, an out-of-table next index or an unreadable descriptor.
    if last_has_next {
        return Err(TxChainError::Unterminated);
    }
    if total < NET_HDR_LEN as u64 {
        return Err(TxChainError::TooShort(total));
    }
    Ok(())
}

/// Why a receive chain could not take a frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum RxChainError {
    #[error("malformed receive chain: {0}")]
    Malformed(&'static str),
    #[error("frame does not fit the receive chain")]
    TooSmall,
}

/// Writes a zeroed header (`num_buffers` = 1) and `frame` into a receive
/// chain; returns the bytes written. The chain is validated completely
/// before anything is written.
fn write_rx_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    descriptors: impl Iterator<Item = Descriptor>,
    frame: &[u8],
) -> Result<u32, RxChainError> {
    let mut bufs: Vec<(GuestAddress, u32)> = Vec::new();
    let mut capacity: u64 = 0;
    let mut last_has_next = false;
    for desc in descriptors {
        if desc.is_write_only() {
            if desc.len() > 0
                && !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write)
            {
                return Err(RxChainError::Malformed("buffer outside guest RAM"));
            }
        } else {
            return Err(RxChainError::Malformed("device-readable descriptor"));
        }
        capacity += u64::from(desc.len());
        bufs.push((desc.addr(), desc.len()));
        last_has_next = desc.has_next();
    }
    if bufs.is_empty() {
        return Err(RxChainError::Malformed("empty chain"));
    }
    if last_has_next {
        return Err(RxChainError::Malformed("chain does not end"));
    }
    let total = NET_HDR_LEN + frame.len();
    if capacity < total as u64 {
        return Err(RxChainError::TooSmall);
    }

    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&1u16.to_le_bytes());
    let mut src = hdr.iter().chain(frame.iter()).copied();
    let mut chunk = Vec::new();
    let mut left = total;
    for (addr, len) in bufs {
        if left == 0 {
            break;
        }
        let n = left.min(len as usize);
        chunk.clear();
        chunk.extend(src.by_ref().take(n));
        mem.write_slice(&chunk, addr)
            .map_err(|_| RxChainError::Malformed("buffer outside guest RAM"))?;
        left -= n;
    }
    // `total` <= NET_HDR_LEN + the backend buffer, far below 4 GiB.
    Ok(total as u32)
}

/// Returns chain `head` to the driver with `len` bytes written. A head
/// index beyond the ring (which the guest can put in the available ring)
/// names no chain and cannot be returned; it is skipped. Returns whether
/// the used ring changed.
pub(crate) fn return_chain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap<()>,
    head: u16,
    len: u32,
) -> Result<bool, DeviceError> {
    if head >= queue.size() {
        return Ok(false);
    }
    queue
        .add_used(mem, head, len)
        .map_err(|e| DeviceError::Memory(e.to_string()))?;
    Ok(true)
}

/// Whether the driver wants an interrupt for the used entries added.
pub(crate) fn wants_interrupt(
    queue: &mut Queue,
    mem: &GuestMemoryMmap<()>,
    used: bool,
) -> Result<bool, DeviceError> {
    if !used {
        return Ok(false);
    }
    queue
        .needs_notification(mem)
        .map_err(|e| DeviceError::Memory(e.to_string()))
}

/// Traffic and error counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames larger than the receive chain offered for them.
    pub rx_dropped_too_big: u64,
    /// Receive chains returned unused because they were malformed.
    pub rx_bad_chains: u64,
    /// Backend read errors other than `WouldBlock`.
    pub rx_errors: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Transmit chains returned unsent because they were malformed.
    pub tx_bad_chains: u64,
    /// Frames the backend refused with an error other than `WouldBlock`.
    pub tx_errors: u64,
}

/// A virtio-net device.
pub struct Net<B: NetBackend = Tap> {
    backend: B,
    mac: [u8; 6],
    acked_features: u64,
    /// `[rx, tx]` between `activate` and `reset`.
    queues: Option<[Queue; 2]>,
    /// `rx_buf[..len]` holds a frame read from the backend but not yet
    /// delivered (no free receive chain).
    rx_pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// A transmit hit `WouldBlock`; retry on every event.
    tx_blocked: bool,
    /// The last receive pass stopped at its budget with frames left.
    more_rx: bool,
    /// The last transmit pass stopped at its budget with chains left.
    more_tx: bool,
    counters: NetCounters,
}

impl Net<Tap> {
    /// Opens the configured TAP (see [`Tap::open`]) and picks the MAC.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(&config.tap)?;
        Ok(Self::with_backend(
            tap,
            config.mac.unwrap_or_else(random_mac),
        ))
    }
}

impl<B: NetBackend> Net<B> {
    pub fn with_backend(backend: B, mac: [u8; 6]) -> Self {
        Net {
            backend,
            mac,
            acked_features: 0,
            queues: None,
            rx_pending: None,
            // Room for the largest frame a TAP can hand over (64 KiB MTU
            // plus Ethernet and VLAN headers), so the kernel never
            // truncates one.
            rx_buf: vec![0; MAX_FRAME_LEN + 16],
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            tx_blocked: false,
            more_rx: false,
            more_tx: false,
            counters: NetCounters::default(),
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Moves frames from the backend into receive chains until the backend
    /// is empty or the guest has no free chain (then one frame stays
    /// pending).
    fn process_rx(&mut self, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        let Some(queues) = self.queues.as_mut() else {
            return Ok(false);
        };
        let rxq = &mut queues[RX_QUEUE];
        let mut used = false;
        let mut budget = PASS_BUDGET;
        self.more_rx = false;
        loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(len) => {
                        self.rx_pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        // Stop instead of spinning on a persistent error;
                        // the next event retries.
                        self.counters.rx_errors += 1;
                        break;
                    }
                },
            };
            if budget.spent() {
                self.more_rx = true;
                break;
            }
            let Some(head) = pop_head(rxq, RX_QUEUE, mem)? else {
                break;
            };
            budget.charge_request(len as u64);
            let chain = read_chain(mem, ChainRef::new(rxq, head), MAX_CHAIN_DESCRIPTORS);
            let descriptors = chain.descriptors.into_iter();
            let result = if chain.indirect {
                Err(RxChainError::Malformed(
                    "indirect descriptor (not negotiated)",
                ))
            } else {
                write_rx_chain(mem, descriptors, &self.rx_buf[..len])
            };
            match result {
                Ok(written) => {
                    self.rx_pending = None;
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                    used |= return_chain(rxq, mem, head, written)?;
                }
                Err(RxChainError::TooSmall) => {
                    // Drop the frame, keep the chain for the next one.
                    self.rx_pending = None;
                    self.counters.rx_dropped_too_big += 1;
                    rxq.go_to_previous_position();
                }
                Err(RxChainError::Malformed(_)) => {
                    // Hand the chain back empty; the frame waits for the
                    // next chain.
                    self.counters.rx_bad_chains += 1;
                    used |= return_chain(rxq, mem, head, 0)?;
                }
            }
        }
        wants_interrupt(rxq, mem, used)
    }

    /// Sends every available transmit chain, stopping (chain left on the
    /// ring) when the backend would block.
    fn process_tx(&mut self, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        let Some(queues) = self.queues.as_mut() else {
            return Ok(false);
        };
        let txq = &mut queues[TX_QUEUE];
        self.tx_blocked = false;
        let mut used = false;
        let mut budget = PASS_BUDGET;
        self.more_tx = false;
        loop {
            if budget.spent() {
                self.more_tx = true;
                break;
            }
            let Some(head) = pop_head(txq, TX_QUEUE, mem)? else {
                break;
            };
            let chain = read_chain(mem, ChainRef::new(txq, head), MAX_CHAIN_DESCRIPTORS);
            let parsed = if chain.indirect {
                Err(TxChainError::Unterminated)
            } else {
                parse_tx_chain(mem, chain.descriptors, &mut self.tx_buf)
            };
            budget.charge_request(self.tx_buf.len() as u64);
            if parsed.is_err() {
                self.counters.tx_bad_chains += 1;
            } else {
                match self.backend.write_frame(&self.tx_buf) {
                    Ok(()) => {
                        self.counters.tx_frames += 1;
                        self.counters.tx_bytes += self.tx_buf.len() as u64;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        txq.go_to_previous_position();
                        self.tx_blocked = true;
                        break;
                    }
                    Err(_) => self.counters.tx_errors += 1,
                }
            }
            used |= return_chain(txq, mem, head, 0)?;
        }
        wants_interrupt(txq, mem, used)
    }

    fn retry_blocked_tx(&mut self, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        if self.tx_blocked {
            self.process_tx(mem)
        } else {
            Ok(false)
        }
    }

    fn config_bytes(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6..].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        c
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(self.counters).unwrap_or_default()
    }

    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, queues: Vec<Queue>, features: u64) -> Result<(), DeviceError> {
        let n = queues.len();
        let queues: [Queue; 2] = queues
            .try_into()
            .map_err(|_| DeviceError::BadQueue(n, format!("virtio-net needs 2 queues, got {n}")))?;
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                return Err(DeviceError::BadQueue(i, "not ready".into()));
            }
        }
        self.queues = Some(queues);
        self.acked_features = features;
        self.rx_pending = None;
        self.tx_blocked = false;
        self.more_rx = false;
        self.more_tx = false;
        Ok(())
    }

    fn queue_states(&self) -> Vec<(usize, virtio_queue::QueueState)> {
        self.queues
            .iter()
            .flat_map(|qs| qs.iter().map(|q| q.state()).enumerate())
            .collect()
    }

    fn reset(&mut self) {
        self.queues = None;
        self.acked_features = 0;
        // The pending frame belonged to the old driver session.
        self.rx_pending = None;
        self.tx_blocked = false;
        self.more_rx = false;
        self.more_tx = false;
    }

    fn has_more_work(&self, index: usize) -> bool {
        match index {
            RX_QUEUE => self.more_rx,
            TX_QUEUE => self.more_tx,
            _ => false,
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        match index {
            // New receive buffers: deliver the pending frame and whatever
            // the backend queued while the ring was full.
            RX_QUEUE => Ok(self.process_rx(mem)? | self.retry_blocked_tx(mem)?),
            TX_QUEUE => self.process_tx(mem),
            _ => Err(DeviceError::BadQueue(
                index,
                "virtio-net has 2 queues".into(),
            )),
        }
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.backend.raw_fd()]
    }

    fn process_host_event(
        &mut self,
        _index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        Ok(self.process_rx(mem)? | self.retry_blocked_tx(mem)?)
    }
}

/// Copies `config[offset..]` into `data`, zero past the end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Driver-side rings in test guest memory, shared by the device tests.
#[cfg(test)]
pub(crate) mod test_ring {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    /// 1 MiB of guest RAM at 0; rings live below 0x1_0000, buffers above.
    pub const RAM_SIZE: u64 = 0x10_0000;

    pub fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
            .expect("test guest memory")
    }

    pub struct Ring<'a> {
        vq: MockSplitQueue<'a, GuestMemoryMmap<()>>,
        mem: &'a GuestMemoryMmap<()>,
        size: u16,
        next_desc: u16,
    }

    impl<'a> Ring<'a> {
        pub fn new(mem: &'a GuestMemoryMmap<()>, start: u64, size: u16) -> Self {
            Ring {
                vq: MockSplitQueue::create(mem, GuestAddress(start), size),
                mem,
                size,
                next_desc: 0,
            }
        }

        pub fn queue(&self) -> Queue {
            self.vq.create_queue().expect("valid mock queue")
        }

        /// Adds a chain of `(addr, len, device_writable)` buffers; returns
        /// its head index.
        pub fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_desc;
            let descs: Vec<RawDescriptor> = bufs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, writable))| {
                    let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
                    if i + 1 < bufs.len() {
                        flags |= VRING_DESC_F_NEXT as u16;
                    }
                    let next = (head + i as u16 + 1) % self.size;
                    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
                })
                .collect();
            self.add_raw(&descs)
        }

        /// Stores descriptors verbatim (next fields and all) at the next
        /// free slots and makes the first one available.
        pub fn add_raw(&mut self, descs: &[RawDescriptor]) -> u16 {
            let head = self.next_desc;
            self.vq
                .add_desc_chains(descs, head)
                .expect("room in the table");
            self.next_desc = (head + descs.len() as u16) % self.size;
            head
        }

        /// Puts an arbitrary head index into the available ring.
        pub fn add_head(&mut self, head: u16) {
            let avail = self.vq.avail_addr();
            let idx: u16 = self
                .mem
                .read_obj(avail.unchecked_add(2))
                .expect("avail idx");
            let slot = avail.unchecked_add(4 + 2 * u64::from(idx % self.size));
            self.mem.write_obj(head, slot).expect("avail slot");
            self.set_avail_idx(idx.wrapping_add(1));
        }

        pub fn set_avail_idx(&self, idx: u16) {
            self.mem
                .write_obj(idx, self.vq.avail_addr().unchecked_add(2))
                .expect("avail idx");
        }

        /// All `(head, len)` entries of the used ring so far.
        pub fn used(&self) -> Vec<(u32, u32)> {
            let n = self.vq.used().idx().load();
            (0..n)
                .map(|i| {
                    let e = self
                        .vq
                        .used()
                        .ring()
                        .ref_at(usize::from(i % self.size))
                        .expect("in ring")
                        .load();
                    (e.id(), e.len())
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;

    use super::test_ring::{mem, Ring, RAM_SIZE};
    use super::*;
    use crate::devices::virtio::testing;

    #[derive(Default)]
    struct FakeState {
        rx: VecDeque<Vec<u8>>,
        tx: Vec<Vec<u8>>,
        tx_would_block: bool,
        tx_fail: bool,
    }

    /// An in-memory backend; the test keeps a clone to feed and inspect it.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    impl Fake {
        fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.0.lock().expect("fake backend lock")
        }
        fn push_rx(&self, frame: &[u8]) {
            self.state().rx.push_back(frame.to_vec());
        }
    }

    impl NetBackend for Fake {
        fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let frame = self
                .state()
                .rx
                .pop_front()
                .ok_or(io::ErrorKind::WouldBlock)?;
            // Like a datagram socket: a frame longer than `buf` is cut.
            let n = frame.len().min(buf.len());
            buf[..n].copy_from_slice(&frame[..n]);
            Ok(n)
        }
        fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
            let mut s = self.state();
            if s.tx_would_block {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if s.tx_fail {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            s.tx.push(frame.to_vec());
            Ok(())
        }
        fn raw_fd(&self) -> RawFd {
            77
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const RX_RING: u64 = 0;
    const TX_RING: u64 = 0x2000;

    struct Setup<'a> {
        mem: &'a GuestMemoryMmap<()>,
        net: Net<Fake>,
        fake: Fake,
        rx: Ring<'a>,
        tx: Ring<'a>,
    }

    fn setup(mem: &GuestMemoryMmap<()>) -> Setup<'_> {
        let fake = Fake::default();
        let mut net = Net::with_backend(fake.clone(), MAC);
        let rx = Ring::new(mem, RX_RING, 16);
        let tx = Ring::new(mem, TX_RING, 16);
        net.activate(vec![rx.queue(), tx.queue()], net.features())
            .expect("activate");
        Setup {
            mem,
            net,
            fake,
            rx,
            tx,
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    fn read(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).expect("read");
        v
    }

    fn write(mem: &GuestMemoryMmap<()>, addr: u64, data: &[u8]) {
        mem.write_slice(data, GuestAddress(addr)).expect("write");
    }

    fn expected_hdr() -> [u8; NET_HDR_LEN] {
        let mut h = [0; NET_HDR_LEN];
        h[10] = 1; // num_buffers = 1, little endian
        h
    }

    #[test]
    fn tx_sends_frame_without_header() {
        let m = mem();
        let mut s = setup(&m);
        let f = frame(100, 1);
        // Header alone, then the frame split over two descriptors.
        write(s.mem, 0x1_0000, &[0xaa; NET_HDR_LEN]);
        write(s.mem, 0x1_1000, &f[..40]);
        write(s.mem, 0x1_2000, &f[40..]);
        let h1 = s.tx.add(&[
            (0x1_0000, NET_HDR_LEN as u32, false),
            (0x1_1000, 40, false),
            (0x1_2000, 60, false),
        ]);
        // Header and frame in one descriptor.
        let g = frame(60, 2);
        write(s.mem, 0x1_3000, &[0; NET_HDR_LEN]);
        write(s.mem, 0x1_3000 + NET_HDR_LEN as u64, &g);
        let h2 =
            s.tx.add(&[(0x1_3000, (NET_HDR_LEN + g.len()) as u32, false)]);

        assert!(s.net.process_queue(TX_QUEUE, s.mem).expect("tx"));
        assert_eq!(s.fake.state().tx, vec![f, g]);
        assert_eq!(s.tx.used(), vec![(h1.into(), 0), (h2.into(), 0)]);
        let c = s.net.counters();
        assert_eq!((c.tx_frames, c.tx_bytes, c.tx_bad_chains), (2, 160, 0));
    }

    #[test]
    fn rx_delivers_frame_with_zeroed_header() {
        let m = mem();
        let mut s = setup(&m);
        let f = frame(1514, 3);
        s.fake.push_rx(&f);
        // Header and the start of the frame in a short first buffer.
        let head = s.rx.add(&[(0x1_0000, 20, true), (0x2_0000, 2048, true)]);

        assert!(s.net.process_host_event(0, s.mem).expect("rx"));
        assert_eq!(
            s.rx.used(),
            vec![(head.into(), (NET_HDR_LEN + f.len()) as u32)]
        );
        assert_eq!(read(s.mem, 0x1_0000, NET_HDR_LEN), expected_hdr());
        let mut got = read(s.mem, 0x1_0000 + NET_HDR_LEN as u64, 8);
        got.extend(read(s.mem, 0x2_0000, f.len() - 8));
        assert_eq!(got, f);
        let c = s.net.counters();
        assert_eq!((c.rx_frames, c.rx_bytes), (1, 1514));
        assert!(s.fake.state().rx.is_empty());
    }

    #[test]
    fn rx_frame_larger_than_chain_is_dropped_and_chain_reused() {
        let m = mem();
        let mut s = setup(&m);
        s.fake.push_rx(&frame(100, 4));
        let small = frame(30, 5);
        s.fake.push_rx(&small);
        // Fits header + 38 bytes: the first frame is 12 + 100 bytes.
        let head = s.rx.add(&[(0x1_0000, 50, true)]);
        write(s.mem, 0x1_0000, &[0xee; 50]);

        assert!(s.net.process_host_event(0, s.mem).expect("rx"));
        assert_eq!(s.net.counters().rx_dropped_too_big, 1);
        // The same chain got the next frame; nothing past it was touched.
        assert_eq!(s.rx.used(), vec![(head.into(), 42)]);
        assert_eq!(read(s.mem, 0x1_0000 + 12, 30), small);
        assert_eq!(read(s.mem, 0x1_0000 + 42, 8), vec![0xee; 8]);
        assert_eq!(s.net.counters().rx_frames, 1);
    }

    #[test]
    fn rx_without_buffers_keeps_frames_until_guest_adds_some() {
        let m = mem();
        let mut s = setup(&m);
        let (f1, f2) = (frame(64, 6), frame(65, 7));
        s.fake.push_rx(&f1);
        s.fake.push_rx(&f2);

        // No buffers: one frame is read and held, the other stays queued
        // in the backend, and no interrupt is due.
        assert!(!s.net.process_host_event(0, s.mem).expect("rx"));
        assert_eq!(s.fake.state().rx.len(), 1);
        assert!(s.rx.used().is_empty());

        // One buffer, announced by a notification: only the held frame
        // fits, the second waits again.
        s.rx.add(&[(0x1_0000, 2048, true)]);
        assert!(s.net.process_queue(RX_QUEUE, s.mem).expect("rx"));
        assert_eq!(read(s.mem, 0x1_0000 + 12, 64), f1);
        assert!(s.fake.state().rx.is_empty());

        s.rx.add(&[(0x2_0000, 2048, true)]);
        assert!(s.net.process_queue(RX_QUEUE, s.mem).expect("rx"));
        assert_eq!(read(s.mem, 0x2_0000 + 12, 65), f2);
        assert_eq!(
            s.rx.used().iter().map(|e| e.1).collect::<Vec<_>>(),
            [76, 77]
        );
        assert_eq!(s.net.counters().rx_frames, 2);
    }

    #[test]
    fn tx_would_block_keeps_chain_for_retry() {
        let m = mem();
        let mut s = setup(&m);
        let f = frame(80, 8);
        write(s.mem, 0x1_0000 + 12, &f);
        let head = s.tx.add(&[(0x1_0000, 92, false)]);
        s.fake.state().tx_would_block = true;

        assert!(!s.net.process_queue(TX_QUEUE, s.mem).expect("tx"));
        assert!(s.tx.used().is_empty(), "chain must stay with the device");

        // Any later event of the device retries it: here the backend
        // becoming readable.
        s.fake.state().tx_would_block = false;
        assert!(s.net.process_host_event(0, s.mem).expect("retry"));
        assert_eq!(s.fake.state().tx, vec![f]);
        assert_eq!(s.tx.used(), vec![(head.into(), 0)]);
    }

    #[test]
    fn tx_backend_error_drops_frame_and_counts() {
        let m = mem();
        let mut s = setup(&m);
        s.tx.add(&[(0x1_0000, 60, false)]);
        s.fake.state().tx_fail = true;
        assert!(s.net.process_queue(TX_QUEUE, s.mem).expect("tx"));
        assert_eq!(s.tx.used().len(), 1);
        assert_eq!(s.net.counters().tx_errors, 1);
        assert_eq!(s.net.counters().tx_frames, 0);
    }

    #[test]
    fn malformed_tx_chains_are_returned_and_counted() {
        let m = mem();
        let mut s = setup(&m);
        let mut expect_used = vec![
            // Shorter than the header.
            s.tx.add(&[(0x1_0000, 8, false)]),
            // A device-writable descriptor.
            s.tx.add(&[(0x1_0000, 12, false), (0x1_1000, 64, true)]),
            // Past the end of RAM, and straddling it.
            s.tx.add(&[(RAM_SIZE, 100, false)]),
            s.tx.add(&[(RAM_SIZE - 0x10, 100, false)]),
        ];
        // A descriptor whose next is itself.
        let looped = s.tx.add_raw(&[RawDescriptor::from(Descriptor::new(
            0x1_0000,
            64,
            VRING_DESC_F_NEXT as u16,
            5,
        ))]);
        assert_eq!(looped, 5, "the loop descriptor must point at itself");
        expect_used.push(looped);
        // Larger than header plus the largest frame.
        expect_used.push(s.tx.add(&[(0x2_0000, (NET_HDR_LEN + MAX_FRAME_LEN + 1) as u32, false)]));
        // Oversized in total, from descriptors each below the limit.
        expect_used.push(s.tx.add(&[(0x2_0000, 40000, false), (0x4_0000, 40000, false)]));
        // A head index beyond the table: nothing to return.
        s.tx.add_head(200);
        // A good frame after all that still goes out.
        let f = frame(50, 9);
        write(s.mem, 0x5_0000 + 12, &f);
        expect_used.push(s.tx.add(&[(0x5_0000, 62, false)]));

        assert!(s
            .net
            .process_queue(TX_QUEUE, s.mem)
            .expect("tx survives bad chains"));
        assert_eq!(s.fake.state().tx, vec![f]);
        let used: Vec<(u32, u32)> = expect_used.iter().map(|&h| (h.into(), 0)).collect();
        assert_eq!(s.tx.used(), used);
        let c = s.net.counters();
        assert_eq!((c.tx_bad_chains, c.tx_frames), (8, 1));
    }

    #[test]
    fn malformed_rx_chain_is_returned_empty_and_frame_kept() {
        let m = mem();
        let mut s = setup(&m);
        let f = frame(60, 10);
        s.fake.push_rx(&f);
        let bad = s.rx.add(&[(0x1_0000, 2048, false)]);
        let outside = s.rx.add(&[(RAM_SIZE - 8, 2048, true)]);
        let good = s.rx.add(&[(0x2_0000, 2048, true)]);
        assert!(s.net.process_host_event(0, s.mem).expect("rx"));
        assert_eq!(
            s.rx.used(),
            vec![(bad.into(), 0), (outside.into(), 0), (good.into(), 72)]
        );
        assert_eq!(read(s.mem, 0x2_0000 + 12, 60), f);
        assert_eq!(s.net.counters().rx_bad_chains, 2);
    }

    /// A device with rings of 256 entries (laid out by
    /// `testing::TestQueue`: virtio-queue's mock places the used ring over
    /// the end of a large available ring), for the budget tests.
    fn big_setup(
        mem: &GuestMemoryMmap<()>,
    ) -> (Net<Fake>, Fake, testing::TestQueue, testing::TestQueue) {
        let fake = Fake::default();
        let mut net = Net::with_backend(fake.clone(), MAC);
        let rx = testing::TestQueue::new(mem, 0x4_0000, 256);
        let tx = testing::TestQueue::new(mem, 0x5_0000, 256);
        net.activate(vec![rx.device_queue(), tx.device_queue()], net.features())
            .expect("activate");
        (net, fake, rx, tx)
    }

    /// Regression: one transmit notification sent whatever the guest kept
    /// publishing. A pass stops at its budget (frames and bytes) and says
    /// there is more; across passes every frame goes out once, in order.
    #[test]
    fn tx_work_per_pass_is_bounded_and_nothing_is_lost() {
        let m = mem();
        let (mut net, fake, _rx, mut tx) = big_setup(&m);
        let big = frame(MAX_FRAME_LEN, 3);
        write(&m, 0x1_0000, &[0; NET_HDR_LEN]);
        write(&m, 0x1_0000 + NET_HDR_LEN as u64, &big);
        let small = frame(60, 4);
        write(&m, 0x3_0000, &[0; NET_HDR_LEN]);
        write(&m, 0x3_0000 + NET_HDR_LEN as u64, &small);
        let h_big = tx.add_chain(
            &m,
            &[(0x1_0000, (NET_HDR_LEN + big.len()) as u32, testing::R)],
        );
        let h_small = tx.add_chain(
            &m,
            &[(0x3_0000, (NET_HDR_LEN + small.len()) as u32, testing::R)],
        );
        for i in 0..256 {
            tx.publish(&m, if i % 4 == 3 { h_big } else { h_small });
        }
        let mut passes = 0;
        let mut used = Vec::new();
        loop {
            let before = fake.state().tx.len();
            let bytes_before = net.counters().tx_bytes;
            net.process_queue(TX_QUEUE, &m).expect("tx");
            passes += 1;
            let sent = fake.state().tx.len() - before;
            let bytes = net.counters().tx_bytes - bytes_before;
            assert!(
                sent <= PASS_BUDGET.requests as usize,
                "{sent} frames in one pass"
            );
            assert!(
                bytes <= PASS_BUDGET.bytes + MAX_FRAME_LEN as u64,
                "{bytes} bytes"
            );
            used.extend(tx.take_used(&m));
            if !net.has_more_work(TX_QUEUE) {
                break;
            }
            assert!(passes < 100, "no progress");
        }
        assert!(passes >= 2);
        let expect: Vec<Vec<u8>> = (0..256)
            .map(|i| {
                if i % 4 == 3 {
                    big.clone()
                } else {
                    small.clone()
                }
            })
            .collect();
        assert!(fake.state().tx == expect, "every frame once, in order");
        let heads: Vec<u32> = used.iter().map(|&(h, _)| h).collect();
        let expect: Vec<u32> = (0..256)
            .map(|i| if i % 4 == 3 { h_big } else { h_small } as u32)
            .collect();
        assert_eq!(heads, expect);
    }

    /// The same for receive: a backend that always has frames and a guest
    /// that keeps the ring full cannot keep one pass going; the transport
    /// re-notifies receiveq, whose pass carries on.
    #[test]
    fn rx_work_per_pass_is_bounded_and_nothing_is_lost() {
        let m = mem();
        let (mut net, fake, mut rx, _tx) = big_setup(&m);
        for i in 0..300u32 {
            fake.push_rx(&frame(60 + (i % 7) as usize, i as u8));
        }
        let head = rx.add_chain(&m, &[(0x2_0000, 2048, testing::W)]);
        for _ in 0..256 {
            rx.publish(&m, head);
        }
        net.process_host_event(0, &m).expect("rx");
        let first = net.counters().rx_frames;
        assert!(first > 0 && first <= PASS_BUDGET.requests as u64, "{first}");
        assert!(net.has_more_work(RX_QUEUE));
        let mut passes = 1;
        while net.has_more_work(RX_QUEUE) {
            net.process_queue(RX_QUEUE, &m).expect("rx");
            passes += 1;
            assert!(passes < 100, "no progress");
        }
        // The ring's 256 buffers taken, in order; the rest waits.
        assert_eq!(net.counters().rx_frames, 256);
        let used = rx.take_used(&m);
        assert_eq!(used.len(), 256);
        for (i, &(id, len)) in used.iter().enumerate() {
            assert_eq!((id, len), (head.into(), (NET_HDR_LEN + 60 + i % 7) as u32));
        }
        assert_eq!(fake.state().rx.len(), 300 - 257, "one frame pending");
    }

    /// Indirect descriptors were never negotiated: such a chain is
    /// malformed in both directions, and its table is not read.
    #[test]
    fn indirect_chains_are_refused() {
        const INDIRECT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        let m = mem();
        let mut s = setup(&m);
        // A valid-looking table at 0x5_0000 with one readable descriptor.
        let f = frame(60, 9);
        write(s.mem, 0x1_0000, &[0; NET_HDR_LEN]);
        write(s.mem, 0x1_0000 + NET_HDR_LEN as u64, &f);
        let table = RawDescriptor::from(Descriptor::new(0x1_0000, 72, 0, 0));
        s.mem
            .write_obj(table, GuestAddress(0x5_0000))
            .expect("table");
        let head = s.tx.add_raw(&[RawDescriptor::from(Descriptor::new(
            0x5_0000, 16, INDIRECT, 0,
        ))]);
        s.net.process_queue(TX_QUEUE, s.mem).expect("tx");
        assert!(s.fake.state().tx.is_empty());
        assert_eq!(s.tx.used(), vec![(head.into(), 0)]);
        assert_eq!(s.net.counters().tx_bad_chains, 1);
        // Receive: the frame is not written through the table.
        let w = RawDescriptor::from(Descriptor::new(
            0x6_0000,
            2048,
            VRING_DESC_F_WRITE as u16,
            0,
        ));
        s.mem.write_obj(w, GuestAddress(0x5_1000)).expect("table");
        s.fake.push_rx(&f);
        let head = s.rx.add_raw(&[RawDescriptor::from(Descriptor::new(
            0x5_1000, 16, INDIRECT, 0,
        ))]);
        s.net.process_host_event(0, s.mem).expect("rx");
        assert_eq!(s.rx.used(), vec![(head.into(), 0)]);
        assert_eq!(read(s.mem, 0x6_0000, 72), vec![0; 72]);
        assert_eq!(s.net.counters().rx_bad_chains, 1);
    }

    #[test]
    fn avail_index_beyond_ring_is_a_queue_error() {
        let m = mem();
        let mut s = setup(&m);
        s.tx.set_avail_idx(100);
        assert!(matches!(
            s.net.process_queue(TX_QUEUE, s.mem),
            Err(DeviceError::BadQueue(TX_QUEUE, _))
        ));
    }

    #[test]
    fn idle_and_reset_device_does_nothing() {
        let m = mem();
        let fake = Fake::default();
        fake.push_rx(&frame(60, 11));
        let mut net = Net::with_backend(fake.clone(), MAC);
        assert!(!net.process_host_event(0, &m).expect("inactive"));
        assert!(!net.process_queue(RX_QUEUE, &m).expect("inactive"));
        assert_eq!(fake.state().rx.len(), 1, "no read before activation");
        assert!(net.activate(vec![Ring::new(&m, 0, 16).queue()], 0).is_err());
        assert!(net.process_queue(2, &m).is_err());
        assert_eq!(net.host_fds(), vec![77]);
    }

    #[test]
    fn config_space_has_mac_and_link_up() {
        let net = Net::with_backend(Fake::default(), MAC);
        let mut buf = [0xffu8; 10];
        net.read_config(0, &mut buf);
        assert_eq!(buf, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 0, 0]);
        let mut two = [0u8; 2];
        net.read_config(4, &mut two);
        assert_eq!(two, [0x34, 0x56]);
        net.read_config(u64::MAX, &mut two);
        assert_eq!(two, [0, 0]);
        let f = net.features();
        assert_eq!(
            f,
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS,
            "no offloads, no mergeable buffers"
        );
        assert_eq!(net.device_type(), device_type::NET);
        assert_eq!(net.queue_max_sizes().len(), 2);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Ok(MAC));
        assert_eq!(
            parse_mac("02:AB:cd:ef:00:01"),
            Ok([2, 0xab, 0xcd, 0xef, 0, 1])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:+5",
            "52:54:00:12:34:56:",
        ] {
            assert!(
                matches!(parse_mac(bad), Err(MacParseError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_mac("01:00:5e:00:00:01"),
            Err(MacParseError::Multicast(_))
        ));
        assert!(matches!(
            parse_mac("00:00:00:00:00:00"),
            Err(MacParseError::Zero(_))
        ));
    }

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let a = random_mac();
        let b = random_mac();
        for m in [a, b] {
            assert_eq!(m[0] & 0b11, 0b10, "{}", format_mac(&m));
            assert_eq!(parse_mac(&format_mac(&m)), Ok(m));
        }
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn mac_round_trip(mut mac in any::<[u8; 6]>()) {
            mac[0] &= !1;
            prop_assume!(mac != [0; 6]);
            prop_assert_eq!(parse_mac(&format_mac(&mac)), Ok(mac));
            prop_assert_eq!(parse_mac(&format_mac(&mac).to_uppercase()), Ok(mac));
        }

        /// Arbitrary descriptor lists never panic the parser, and an
        /// accepted one yields exactly the bytes past the header.
        #[test]
        fn tx_parser_accepts_only_sane_chains(
            descs in proptest::collection::vec(
                (0u64..RAM_SIZE + 0x1000, 0u32..0x2_0000, any::<bool>(), any::<bool>()),
                0..6,
            )
        ) {
            let m = mem();
            let list: Vec<Descriptor> = descs
                .iter()
                .map(|&(addr, len, write, next)| {
                    let mut flags = 0u16;
                    if write { flags |= VRING_DESC_F_WRITE as u16; }
                    if next { flags |= VRING_DESC_F_NEXT as u16; }
                    Descriptor::new(addr, len, flags, 0)
                })
                .collect();
            let mut out = Vec::new();
            let total: u64 = descs.iter().map(|d| u64::from(d.1)).sum();
            let in_range = descs
                .iter()
                .all(|&(addr, len, _, _)| len == 0 || addr + u64::from(len) <= RAM_SIZE);
            let valid = !list.is_empty()
                && list.iter().all(|d| !d.is_write_only())
                && !list.last().is_some_and(|d| d.has_next())
                && (NET_HDR_LEN as u64..=(NET_HDR_LEN + MAX_FRAME_LEN) as u64).contains(&total)
                && in_range;
            let result = parse_tx_chain(&m, list, &mut out);
            prop_assert_eq!(result.is_ok(), valid, "{:?}", result);
            if valid {
                prop_assert_eq!(out.len() as u64, total - NET_HDR_LEN as u64);
            }
        }
    }
}
