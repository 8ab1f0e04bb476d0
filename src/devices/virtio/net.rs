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
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::device::{device_type, DeviceError, VirtioDevice, VIRTIO_F_VERSION_1};
use super::tap::{Tap, TapError};

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

/// Pops the next available chain of `queue`. An available index the
/// driver moved more than a ring ahead is a broken queue.
pub(crate) fn pop_chain<'m>(
    queue: &mut Queue,
    index: usize,
    mem: &'m GuestMemoryMmap<()>,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap<()>>>, DeviceError> {
    let mut iter = queue
        .iter(mem)
        .map_err(|e| DeviceError::BadQueue(index, e.to_string()))?;
    Ok(iter.next())
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
            let Some(chain) = pop_chain(rxq, RX_QUEUE, mem)? else {
                break;
            };
            let head = chain.head_index();
            match write_rx_chain(mem, chain, &self.rx_buf[..len]) {
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
        while let Some(chain) = pop_chain(txq, TX_QUEUE, mem)? {
            let head = chain.head_index();
            if parse_tx_chain(mem, chain, &mut self.tx_buf).is_err() {
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
        Ok(())
    }

    fn reset(&mut self) {
        self.queues = None;
        self.acked_features = 0;
        // The pending frame belonged to the old driver session.
        self.rx_pending = None;
        self.tx_blocked = false;
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
