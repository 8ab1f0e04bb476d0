//! virtio-blk (virtio 1.2, section 5.2) backed by a host file or block
//! device.
//!
//! One request queue, processed synchronously on the event loop with
//! `pread`/`pwrite` through a bounded bounce buffer. The guest sees:
//! - capacity: the file size in 512-byte sectors, rounded down (a trailing
//!   partial sector is invisible to the guest and never touched);
//! - `SIZE_MAX` = [`MAX_SEGMENT_BYTES`] per data descriptor and `SEG_MAX` =
//!   [`SEG_MAX`] data descriptors per request, which bound every request;
//! - `FLUSH` (completed after `fdatasync`), `BLK_SIZE` = 512, and `RO` for a
//!   read-only disk;
//! - on a writable disk `DISCARD` (punches holes, a no-op where the host
//!   file system cannot) and `WRITE_ZEROES` (`FALLOC_FL_ZERO_RANGE`, or a
//!   hole with the unmap flag, falling back to writing zeros).
//!
//! Request framing: this device expects the layout every driver in use
//! produces: one device-readable 16-byte header descriptor, the data
//! descriptors, and one device-writable 1-byte status descriptor. Anything
//! else is a malformed chain, see [`parse_request`].

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::device::{device_type, DeviceError, VirtioDevice, VIRTIO_F_VERSION_1};
use super::{pop_head, read_chain, ChainRef, PassBudget};

/// Bytes per sector, as virtio-blk counts them whatever the host's.
pub const SECTOR_SIZE: u64 = 512;
/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request (the header and status take two more).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes per data descriptor: also the size of the bounce buffer.
pub const MAX_SEGMENT_BYTES: u32 = 1 << 20;
/// Sectors one discard segment may cover (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Discard segments per request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Sectors one write-zeroes request may cover (4 MiB): bounded because the
/// fallback writes the zeros, within one pass's [`PASS_BUDGET`].
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 13;
/// Write-zeroes segments per request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Discard granularity reported to the guest, in sectors (4 KiB, the host
/// page and usual file-system block).
pub const DISCARD_ALIGNMENT: u32 = 8;

/// What one pass over the request queue may do before it yields the event
/// loop (see [`PassBudget`]): a guest can publish one head 256 times, each
/// a chain of 254 MiB, with one notification. 8 MiB is a few milliseconds
/// of page-cache copies; a request larger than what is left is carried on
/// segment by segment in the next passes. Requests that go to the host file
/// system's metadata (flush, discard, write-zeroes), whose time the device
/// cannot bound, end the pass.
pub const PASS_BUDGET: PassBudget = PassBudget {
    requests: 64,
    bytes: 8 << 20,
};

/// The header every request starts with.
const HEADER_LEN: u32 = 16;
/// One discard/write-zeroes segment.
const DISCARD_SEGMENT_LEN: usize = 16;
/// Config space as far as the write-zeroes fields (up to
/// `max_secure_erase_sectors`, which we do not offer).
const CONFIG_LEN: usize = 0x3c;

/// How to open a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub readonly: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes); by
    /// default the file's name, cut to 20 bytes.
    pub id: Option<String>,
}

/// Why a disk could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "cannot open {path} for writing: {source}; add readonly=on to give the \
         guest a read-only disk"
    )]
    NotWritable { path: PathBuf, source: io::Error },
    #[error("{path} is {kind}; a disk must be a regular file or a block device")]
    NotADisk { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is in use: {} elsewhere (another VM or process, or the same \
         image given twice); an image is shared only if every user opens it read-only",
        if *readonly { "it is open for writing" } else { "it is open" }
    )]
    Locked { path: PathBuf, readonly: bool },
    #[error("cannot find the size of {path}: {source}")]
    Size { path: PathBuf, source: io::Error },
    #[error("disk id {0:?} is longer than 20 bytes")]
    IdTooLong(String),
}

/// A request type, from the header's `type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    /// Anything else: answered with `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

impl RequestKind {
    fn from_type(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestKind::In,
            VIRTIO_BLK_T_OUT => RequestKind::Out,
            VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
            VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
            VIRTIO_BLK_T_DISCARD => RequestKind::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestKind::WriteZeroes,
            other => RequestKind::Unsupported(other),
        }
    }

    /// Whether the data descriptors must be device-writable (`Some(true)`),
    /// device-readable (`Some(false)`), or are not looked at.
    fn data_writable(self) -> Option<bool> {
        match self {
            RequestKind::In | RequestKind::GetId => Some(true),
            RequestKind::Out | RequestKind::Discard | RequestKind::WriteZeroes => Some(false),
            RequestKind::Flush | RequestKind::Unsupported(_) => None,
        }
    }
}

/// One data buffer of a request, checked to lie inside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A well-formed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    pub data: Vec<Segment>,
    /// The status byte, checked to lie inside guest RAM.
    pub status: GuestAddress,
}

impl Request {
    /// Total bytes of the data buffers (at most `SEG_MAX * 1 MiB`).
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|s| s.len as u64).sum()
    }
}

/// What is wrong with a descriptor chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the chain is cut short (loop, bad next index or unreadable table)")]
    Incomplete,
    #[error("the chain uses an indirect descriptor, which was not negotiated")]
    Indirect,
    #[error("the chain has more than {0} descriptors")]
    TooManyDescriptors(usize),
    #[error("the chain has no header or no status descriptor")]
    TooShort,
    #[error("the last descriptor is not device-writable")]
    StatusNotWritable,
    #[error("the status descriptor is {0} bytes, not 1")]
    StatusLength(u32),
    #[error("the header descriptor is device-writable")]
    HeaderNotReadable,
    #[error("the header descriptor is {0} bytes, not 16")]
    HeaderLength(u32),
    #[error("data descriptor {index} has the wrong direction")]
    WrongDirection { index: usize },
    #[error("data descriptor {index} is {len} bytes, more than the 1 MiB limit")]
    SegmentTooLarge { index: usize, len: u32 },
    #[error("a buffer at {addr:#x} of {len} bytes is outside guest RAM")]
    OutOfRange { addr: u64, len: u64 },
}

/// A chain that is not a request: why, and where to put the
/// `VIRTIO_BLK_S_IOERR` answer if the chain has a writable byte for it (the
/// last byte of its last descriptor, when that descriptor is
/// device-writable and wholly inside guest RAM: a device writes only into
/// buffers that are valid as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedChain {
    pub error: ChainError,
    pub status: Option<GuestAddress>,
}

fn in_ram(mem: &GuestMemoryMmap<()>, addr: GuestAddress, len: u64) -> bool {
    // A zero-length buffer is never accessed, wherever it points.
    len == 0
        || usize::try_from(len).is_ok_and(|len| GuestMemoryBackend::check_range(mem, addr, len))
}

/// Parses the descriptor chain `chain` into a request; pure apart from
/// reading the descriptors and the header from guest memory. Never panics,
/// whatever the chain.
pub fn parse_request(
    mem: &GuestMemoryMmap<()>,
    chain: ChainRef,
) -> Result<Request, MalformedChain> {
    let chain = read_chain(mem, chain, SEG_MAX as usize + 3);
    parse_descriptors(&chain.descriptors, chain.complete, chain.indirect, mem)
}

/// [`parse_request`] on descriptors already read; `complete` says whether
/// the chain really ended after the last of them, `indirect` whether it was
/// cut at an indirect descriptor (a feature we do not offer).
pub fn parse_descriptors(
    descs: &[Descriptor],
    complete: bool,
    indirect: bool,
    mem: &GuestMemoryMmap<()>,
) -> Result<Request, MalformedChain> {
    let status = descs.last().and_then(|d| {
        let last = d.addr().checked_add(d.len().checked_sub(1)? as u64)?;
        (d.is_write_only() && in_ram(mem, d.addr(), d.len() as u64)).then_some(last)
    });
    let fail = |error| MalformedChain { error, status };
    if descs.len() > SEG_MAX as usize + 2 {
        return Err(fail(ChainError::TooManyDescriptors(SEG_MAX as usize + 2)));
    }
    if indirect {
        return Err(fail(ChainError::Indirect));
    }
    if !complete {
        return Err(fail(ChainError::Incomplete));
    }
    let [header, data @ .., last] = descs else {
        return Err(fail(ChainError::TooShort));
    };
    if !last.is_write_only() {
        return Err(fail(ChainError::StatusNotWritable));
    }
    if last.len() != 1 {
        return Err(fail(ChainError::StatusLength(last.len())));
    }
    let Some(status_addr) = status else {
        return Err(fail(ChainError::OutOfRange {
            addr: last.addr().0,
            len: 1,
        }));
    };
    if header.is_write_only() {
        return Err(fail(ChainError::HeaderNotReadable));
    }
    if header.len() != HEADER_LEN {
        return Err(fail(ChainError::HeaderLength(header.len())));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr()).map_err(|_| {
        fail(ChainError::OutOfRange {
            addr: header.addr().0,
            len: HEADER_LEN as u64,
        })
    })?;
    // struct virtio_blk_outhdr { le32 type; le32 reserved; le64 sector; }
    let kind = RequestKind::from_type(le_field(&raw, 0, 4) as u32);
    let sector = le_field(&raw, 8, 8);
    let direction = kind.data_writable();
    let mut segments = Vec::with_capacity(data.len());
    for (index, d) in data.iter().enumerate() {
        if direction.is_some_and(|w| w != d.is_write_only()) {
            return Err(fail(ChainError::WrongDirection { index }));
        }
        if d.len() > MAX_SEGMENT_BYTES {
            return Err(fail(ChainError::SegmentTooLarge {
                index,
                len: d.len(),
            }));
        }
        if !in_ram(mem, d.addr(), d.len() as u64) {
            return Err(fail(ChainError::OutOfRange {
                addr: d.addr().0,
                len: d.len() as u64,
            }));
        }
        segments.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }
    Ok(Request {
        kind,
        sector,
        data: segments,
        status: status_addr,
    })
}

/// The little-endian number in `bytes[at..at + n]` (n <= 8); bytes past
/// the end count as zero.
fn le_field(bytes: &[u8], at: usize, n: usize) -> u64 {
    bytes
        .iter()
        .skip(at)
        .take(n.min(8))
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// The request status values.
const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// The disk itself, apart from the queue.
struct Disk {
    file: File,
    readonly: bool,
    /// In sectors.
    capacity: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// Negotiated features.
    features: u64,
    /// The bounce buffer, at most [`MAX_SEGMENT_BYTES`].
    buf: Vec<u8>,
    /// Data bytes moved between the disk and guest buffers, ever.
    moved: u64,
}

/// A request's outcome: its status and how many bytes went into the
/// guest's data buffers.
struct Outcome {
    status: u8,
    written: u32,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Outcome { status, written: 0 }
    }
}

/// Where a request that did not fit one pass stopped: the next data
/// segment, and the bytes already written into the guest's buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Resume {
    segment: usize,
    written: u32,
}

/// What executing (part of) a request came to.
enum Step {
    Done(Outcome),
    /// The pass budget ran out before the request's end.
    Yield(Resume),
}

impl Disk {
    /// The byte range `[sector * 512, + len)`, if it lies on the disk.
    fn byte_range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.capacity * SECTOR_SIZE).then_some(start)
    }

    /// Executes `req` from `from` on, charging `budget` for the data moved.
    fn execute(
        &mut self,
        req: &Request,
        mem: &GuestMemoryMmap<()>,
        from: Resume,
        budget: &mut PassBudget,
    ) -> Step {
        let metadata = matches!(
            req.kind,
            RequestKind::Flush | RequestKind::Discard | RequestKind::WriteZeroes
        );
        if metadata {
            // See PASS_BUDGET.
            budget.charge_bytes(u64::MAX);
        }
        let outcome = match req.kind {
            RequestKind::Out if self.readonly => Outcome::status(S_IOERR),
            RequestKind::In | RequestKind::Out => return self.transfer(req, mem, from, budget),
            RequestKind::Flush => match self.file.sync_data() {
                Ok(()) => Outcome::status(S_OK),
                Err(_) => Outcome::status(S_IOERR),
            },
            RequestKind::GetId => self.get_id(req, mem),
            RequestKind::Discard | RequestKind::WriteZeroes if self.readonly => {
                Outcome::status(S_IOERR)
            }
            RequestKind::Discard if self.features & (1 << VIRTIO_BLK_F_DISCARD) != 0 => {
                self.discard_or_zero(req, mem)
            }
            RequestKind::WriteZeroes if self.features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0 => {
                self.discard_or_zero(req, mem)
            }
            _ => Outcome::status(S_UNSUPP),
        };
        Step::Done(outcome)
    }

    /// A read (`In`) or write (`Out`), one segment at a time through the
    /// bounce buffer, from segment `from.segment` on, until the request or
    /// the budget ends (at least one segment per call, so a pass always
    /// makes progress).
    fn transfer(
        &mut self,
        req: &Request,
        mem: &GuestMemoryMmap<()>,
        from: Resume,
        budget: &mut PassBudget,
    ) -> Step {
        let reading = req.kind == RequestKind::In;
        let len = req.data_len();
        let Some(start) = self
            .byte_range(req.sector, len)
            .filter(|_| len % SECTOR_SIZE == 0)
        else {
            return Step::Done(Outcome::status(S_IOERR));
        };
        let done: u64 = req
            .data
            .iter()
            .take(from.segment)
            .map(|s| s.len as u64)
            .sum();
        let mut offset = start + done;
        let mut written = from.written;
        for (index, seg) in req.data.iter().enumerate().skip(from.segment) {
            if index > from.segment && budget.bytes == 0 {
                return Step::Yield(Resume {
                    segment: index,
                    written,
                });
            }
            self.buf.resize(seg.len as usize, 0);
            let ok = if reading {
                self.file.read_exact_at(&mut self.buf, offset).is_ok()
                    && mem.write_slice(&self.buf, seg.addr).is_ok()
            } else {
                mem.read_slice(&mut self.buf, seg.addr).is_ok()
                    && self.file.write_all_at(&self.buf, offset).is_ok()
            };
            budget.charge_bytes(seg.len as u64);
            self.moved += seg.len as u64;
            if !ok {
                return Step::Done(Outcome {
                    status: S_IOERR,
                    written,
                });
            }
            offset += seg.len as u64;
            if reading {
                // At most SEG_MAX segments of 1 MiB: fits.
                written = written.saturating_add(seg.len);
            }
        }
        Step::Done(Outcome {
            status: S_OK,
            written,
        })
    }

    fn get_id(&mut self, req: &Request, mem: &GuestMemoryMmap<()>) -> Outcome {
        let mut id = &self.id[..];
        let mut written = 0u32;
        for seg in &req.data {
            let n = id.len().min(seg.len as usize);
            let (chunk, rest) = id.split_at(n);
            if mem.write_slice(chunk, seg.addr).is_err() {
                return Outcome {
                    status: S_IOERR,
                    written,
                };
            }
            written += n as u32;
            id = rest;
        }
        Outcome {
            status: S_OK,
            written,
        }
    }

    fn discard_or_zero(&mut self, req: &Request, mem: &GuestMemoryMmap<()>) -> Outcome {
        let zeroes = req.kind == RequestKind::WriteZeroes;
        let max_seg = if zeroes {
            MAX_WRITE_ZEROES_SEG
        } else {
            MAX_DISCARD_SEG
        } as u64;
        let len = req.data_len();
        if len == 0 || len % DISCARD_SEGMENT_LEN as u64 != 0 || len > max_seg * 16 {
            return Outcome::status(S_IOERR);
        }
        // At most 16 segments of 16 bytes.
        let mut raw = Vec::with_capacity(len as usize);
        for seg in &req.data {
            let start = raw.len();
            raw.resize(start + seg.len as usize, 0);
            if mem.read_slice(&mut raw[start..], seg.addr).is_err() {
                return Outcome::status(S_IOERR);
            }
        }
        for entry in raw.chunks_exact(DISCARD_SEGMENT_LEN) {
            // struct virtio_blk_discard_write_zeroes
            // { le64 sector; le32 num_sectors; le32 flags; }
            let sector = le_field(entry, 0, 8);
            let num_sectors = le_field(entry, 8, 4);
            let flags = le_field(entry, 12, 4) as u32;
            let (max_sectors, allowed_flags) = if zeroes {
                (MAX_WRITE_ZEROES_SECTORS, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
            } else {
                (MAX_DISCARD_SECTORS, 0)
            };
            // Unknown flags, and unmap on a discard, are unsupported (virtio
            // 1.2, 5.2.6.2).
            if flags & !allowed_flags != 0 {
                return Outcome::status(S_UNSUPP);
            }
            if num_sectors > max_sectors as u64 {
                return Outcome::status(S_IOERR);
            }
            let bytes = num_sectors * SECTOR_SIZE;
            let Some(offset) = self.byte_range(sector, bytes) else {
                return Outcome::status(S_IOERR);
            };
            let result = if zeroes {
                self.write_zeroes(
                    offset,
                    bytes,
                    flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                )
            } else {
                self.punch_hole(offset, bytes)
            };
            if result.is_err() {
                return Outcome::status(S_IOERR);
            }
        }
        Outcome::status(S_OK)
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: fallocate only acts on the open descriptor we own; no
            // memory is passed.
            let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
            if r == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// A discard is a hint: where the host cannot punch holes the data
    /// simply stays.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Err(e) if unsupported(&e) => {}
            other => return other,
        }
        let chunk = (MAX_SEGMENT_BYTES as u64).min(len) as usize;
        self.buf.clear();
        self.buf.resize(chunk, 0);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk as u64) as usize;
            self.file.write_all_at(&self.buf[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV)
    )
}

/// Request counters, for the control API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlockCounters {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    /// Other requests (get-id, discard, write-zeroes, unsupported).
    pub other: u64,
    /// Requests answered with an error status (malformed ones included).
    pub errors: u64,
}

/// What the last pass over the request queue did, for tests and
/// introspection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Requests completed (malformed ones included).
    pub requests: u32,
    /// Data bytes moved between the disk and guest buffers.
    pub bytes: u64,
}

/// A request the last pass stopped in the middle of. Its chain is left on
/// the available ring (the queue's position is moved back), so a snapshot
/// taken meanwhile redoes it whole after restore; the next pass on this
/// device finds it first and carries on from `resume`, provided the guest
/// did not change it meanwhile.
struct InProgress {
    /// The chain's position in the available ring.
    avail: u16,
    head: u16,
    request: Request,
    resume: Resume,
}

/// The virtio-blk device.
pub struct Block {
    disk: Disk,
    queue: Option<Queue>,
    offered: u64,
    config: [u8; CONFIG_LEN],
    counters: BlockCounters,
    in_progress: Option<InProgress>,
    /// The last pass stopped at its budget with requests left.
    more: bool,
    last_pass: PassStats,
}

impl Block {
    /// Opens the disk (read-write unless `readonly`) and locks it against
    /// other openers, see [`open_disk`].
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let id = disk_id(config)?;
        let mut file = open_disk(&config.path, config.readonly)?;
        // Seeking works for block devices too, whose metadata length is 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: config.path.clone(),
                source,
            })?;
        let capacity = size / SECTOR_SIZE;
        let mut offered = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if config.readonly {
            offered |= 1 << VIRTIO_BLK_F_RO;
        } else {
            offered |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        Ok(Block {
            disk: Disk {
                file,
                readonly: config.readonly,
                capacity,
                id,
                features: 0,
                buf: Vec::new(),
                moved: 0,
            },
            queue: None,
            offered,
            config: config_space(capacity),
            counters: BlockCounters::default(),
            in_progress: None,
            more: false,
            last_pass: PassStats::default(),
        })
    }

    /// The disk size in sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// What the last pass over the queue did.
    pub fn last_pass(&self) -> PassStats {
        self.last_pass
    }

    /// Answers chain `chain`, found at position `avail` of the available
    /// ring, as far as `budget` allows: `Some(used length)` once it is
    /// complete, `None` if the budget ran out first (the request is kept in
    /// `in_progress`). A bad chain is answered as well as it can be.
    fn serve_chain(
        &mut self,
        chain: ChainRef,
        avail: u16,
        mem: &GuestMemoryMmap<()>,
        budget: &mut PassBudget,
    ) -> Option<u32> {
        let parsed = parse_request(mem, chain);
        let resume = match (self.in_progress.take(), &parsed) {
            (Some(p), Ok(req)) if p.avail == avail && p.head == chain.head && p.request == *req => {
                p.resume
            }
            _ => Resume::default(),
        };
        budget.charge_request(0);
        let (status_addr, outcome) = match parsed {
            Ok(req) => {
                let outcome = match self.disk.execute(&req, mem, resume, budget) {
                    Step::Done(outcome) => outcome,
                    Step::Yield(resume) => {
                        self.in_progress = Some(InProgress {
                            avail,
                            head: chain.head,
                            request: req,
                            resume,
                        });
                        return None;
                    }
                };
                let bytes = req.data_len();
                let c = &mut self.counters;
                match req.kind {
                    RequestKind::In => {
                        c.reads += 1;
                        c.read_bytes += bytes;
                    }
                    RequestKind::Out => {
                        c.writes += 1;
                        c.write_bytes += bytes;
                    }
                    RequestKind::Flush => c.flushes += 1,
                    _ => c.other += 1,
                }
                if outcome.status != S_OK {
                    c.errors += 1;
                }
                (Some(req.status), outcome)
            }
            Err(bad) => {
                self.counters.errors += 1;
                (bad.status, Outcome::status(S_IOERR))
            }
        };
        Some(match status_addr {
            Some(addr) if mem.write_obj(outcome.status, addr).is_ok() => {
                outcome.written.saturating_add(1)
            }
            _ => 0,
        })
    }

    /// One pass over the queue: requests in order until none is left or
    /// [`PASS_BUDGET`] is spent. Returns whether to interrupt the driver.
    fn serve(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        let bad = |e: virtio_queue::Error| DeviceError::BadChain {
            queue: 0,
            reason: e.to_string(),
        };
        let mut budget = PASS_BUDGET;
        let moved_before = self.disk.moved;
        let mut requests = 0;
        let mut used = false;
        self.more = false;
        let result = loop {
            if budget.spent() {
                self.more = true;
                break Ok(());
            }
            let avail = queue.next_avail();
            let head = match pop_head(queue, 0, mem) {
                Ok(Some(head)) => head,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            match self.serve_chain(ChainRef::new(queue, head), avail, mem, &mut budget) {
                Some(len) => {
                    requests += 1;
                    if let Err(e) = queue.add_used(mem, head, len).map_err(bad) {
                        break Err(e);
                    }
                    used = true;
                }
                None => {
                    queue.go_to_previous_position();
                    self.more = true;
                    break Ok(());
                }
            }
        };
        self.last_pass = PassStats {
            requests,
            bytes: self.disk.moved - moved_before,
        };
        result?;
        if !used {
            return Ok(false);
        }
        queue.needs_notification(mem).map_err(bad)
    }
}

/// Opens a disk image and takes an `flock` on it, as QEMU does: shared for
/// a read-only disk, exclusive for a writable one, never waiting. Two VMs
/// (or a VM and another tool that locks) cannot both have an image open
/// for writing, nor one write what another reads. The lock lives as long as
/// the descriptor. Only regular files and block devices are disks: a
/// directory, FIFO, socket or character device is refused with its path.
pub fn open_disk(path: &Path, readonly: bool) -> Result<File, BlockError> {
    let err = |source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused
    // below anyway. Cleared again for the I/O.
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem if !readonly => {
                BlockError::NotWritable {
                    path: path.to_path_buf(),
                    source,
                }
            }
            _ => err(source),
        })?;
    let kind = file.metadata().map_err(err)?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(BlockError::NotADisk {
            path: path.to_path_buf(),
            kind: describe_file_type(kind),
        });
    }
    set_blocking(&file).map_err(err)?;
    let op = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    loop {
        // SAFETY: flock only acts on the descriptor, which `file` owns and
        // keeps open for the call.
        let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if r == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(BlockError::Locked {
                    path: path.to_path_buf(),
                    readonly,
                })
            }
            _ => return Err(err(e)),
        }
    }
}

fn set_blocking(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only read and set the flags of the descriptor
    // `file` owns; no memory is passed.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else {
        "not a regular file or block device"
    }
}

fn disk_id(config: &BlockConfig) -> Result<[u8; VIRTIO_BLK_ID_BYTES as usize], BlockError> {
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    match &config.id {
        Some(s) if s.len() > id.len() => return Err(BlockError::IdTooLong(s.clone())),
        Some(s) => id[..s.len()].copy_from_slice(s.as_bytes()),
        None => {
            let name = config
                .path
                .file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or(b"ember-disk");
            let n = name.len().min(id.len());
            id[..n].copy_from_slice(&name[..n]);
        }
    }
    Ok(id)
}

/// `struct virtio_blk_config`, little endian, up to the write-zeroes fields.
fn config_space(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x00, &capacity.to_le_bytes());
    put(0x08, &MAX_SEGMENT_BYTES.to_le_bytes());
    put(0x0c, &SEG_MAX.to_le_bytes());
    put(0x14, &(SECTOR_SIZE as u32).to_le_bytes());
    put(0x22, &1u16.to_le_bytes()); // num_queues
    put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(0x28, &MAX_DISCARD_SEG.to_le_bytes());
    put(0x2c, &DISCARD_ALIGNMENT.to_le_bytes());
    put(0x30, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(0x34, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
    put(0x38, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn counters(&self) -> serde_json::Value {
        serde_json::to_value(self.counters).unwrap_or_default()
    }

    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, queues: Vec<Queue>, features: u64) -> Result<(), DeviceError> {
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(DeviceError::BadQueue(
                0,
                "expected exactly one queue".into(),
            ));
        };
        self.disk.features = features;
        self.queue = queue.ready().then_some(queue);
        self.in_progress = None;
        self.more = false;
        Ok(())
    }

    fn queue_states(&self) -> Vec<(usize, virtio_queue::QueueState)> {
        self.queue.iter().map(|q| (0, q.state())).collect()
    }

    fn reset(&mut self) {
        self.queue = None;
        self.in_progress = None;
        self.more = false;
        self.disk.features = 0;
        // Give the bounce buffer back between lives.
        self.disk.buf = Vec::new();
    }

    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        if index != 0 {
            return Ok(false);
        }
        let Some(mut queue) = self.queue.take() else {
            return Ok(false);
        };
        let result = self.serve(&mut queue, mem);
        self.queue = Some(queue);
        result
    }

    fn has_more_work(&self, index: usize) -> bool {
        index == 0 && self.more
    }

    fn release(&mut self) {
        // The descriptor may outlive the VM in a handle that keeps the
        // device for its counters; the lock must not, or the image could
        // not be opened again (a restore in the same process).
        // SAFETY: flock only acts on the descriptor the file owns.
        unsafe { libc::flock(self.disk.file.as_raw_fd(), libc::LOCK_UN) };
    }

    fn sync_data(&mut self) -> Result<(), DeviceError> {
        // Requests go straight to the file with pwrite (no userspace
        // buffering), so the kernel's copy is all there is to sync.
        Ok(self.disk.file.sync_data()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{
        guest_memory, TempFile as TempDisk, TestQueue, NEXT, R, W,
    };
    use proptest::prelude::*;

    const HDR: u64 = 0x10000;
    const STATUS: u64 = 0x18000;
    const DATA: u64 = 0x20000;
    const MEM_SIZE: usize = 0x400000;

    struct Fixture {
        disk: TempDisk,
        mem: GuestMemoryMmap<()>,
        tq: TestQueue,
        blk: Block,
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn fixture_with(contents: &[u8], readonly: bool, id: Option<&str>) -> Fixture {
        let disk = TempDisk::new(contents);
        let config = BlockConfig {
            path: disk.0.clone(),
            readonly,
            id: id.map(str::to_string),
        };
        let mut blk = Block::new(&config).unwrap();
        let mem = guest_memory(MEM_SIZE);
        let tq = TestQueue::new(&mem, 0x1000, 16);
        let features = blk.features();
        blk.activate(vec![tq.device_queue()], features).unwrap();
        Fixture { disk, mem, tq, blk }
    }

    fn fixture(sectors: usize, readonly: bool) -> Fixture {
        fixture_with(&pattern(sectors * 512, 0), readonly, None)
    }

    impl Fixture {
        /// Writes a header at `HDR + 16 * slot`.
        fn header(&self, slot: u64, kind: u32, sector: u64) -> u64 {
            let at = HDR + 16 * slot;
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(at)).unwrap();
            at
        }

        /// Pushes a request: header, data descriptors, 1-byte status.
        fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, u16)]) -> u16 {
            let hdr = self.header(0, kind, sector);
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let mut descs = vec![(hdr, 16, R)];
            descs.extend_from_slice(data);
            descs.push((STATUS, 1, W));
            self.tq.push(&self.mem, &descs)
        }

        /// Processes the queue; returns the used entries.
        fn run(&mut self) -> Vec<(u32, u32)> {
            self.blk.process_queue(0, &self.mem).unwrap();
            self.tq.take_used(&self.mem)
        }

        /// One request, processed: (used len, status byte).
        fn one(&mut self, kind: u32, sector: u64, data: &[(u64, u32, u16)]) -> (u32, u8) {
            let head = self.request(kind, sector, data);
            let used = self.run();
            assert_eq!(used.len(), 1);
            assert_eq!(used[0].0, head as u32);
            (used[0].1, self.status())
        }

        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }
    }

    const IN: u32 = VIRTIO_BLK_T_IN;
    const OUT: u32 = VIRTIO_BLK_T_OUT;
    const OK: u8 = S_OK;
    const IOERR: u8 = S_IOERR;
    const UNSUPP: u8 = S_UNSUPP;

    #[test]
    fn config_space_matches_the_spec_layout() {
        use std::mem::offset_of;
        type C = virtio_blk_config;
        let f = fixture(100, false);
        let read = |offset: usize, n: usize| {
            let mut b = vec![0u8; n];
            f.blk.read_config(offset as u64, &mut b);
            le_field(&b, 0, n)
        };
        assert_eq!(read(offset_of!(C, capacity), 8), 100);
        assert_eq!(read(offset_of!(C, size_max), 4), MAX_SEGMENT_BYTES as u64);
        assert_eq!(read(offset_of!(C, seg_max), 4), SEG_MAX as u64);
        assert_eq!(read(offset_of!(C, blk_size), 4), 512);
        assert_eq!(read(offset_of!(C, num_queues), 2), 1);
        assert_eq!(
            read(offset_of!(C, max_discard_sectors), 4),
            MAX_DISCARD_SECTORS as u64
        );
        assert_eq!(
            read(offset_of!(C, max_discard_seg), 4),
            MAX_DISCARD_SEG as u64
        );
        assert_eq!(
            read(offset_of!(C, discard_sector_alignment), 4),
            DISCARD_ALIGNMENT as u64
        );
        assert_eq!(
            read(offset_of!(C, max_write_zeroes_sectors), 4),
            MAX_WRITE_ZEROES_SECTORS as u64
        );
        assert_eq!(
            read(offset_of!(C, max_write_zeroes_seg), 4),
            MAX_WRITE_ZEROES_SEG as u64
        );
        assert_eq!(read(offset_of!(C, write_zeroes_may_unmap), 1), 1);
        assert_eq!(offset_of!(C, max_secure_erase_sectors), CONFIG_LEN);
        assert_eq!(read(CONFIG_LEN, 8), 0, "beyond the fields");
        assert_eq!(read(usize::MAX - 2, 8), 0, "offset overflow");
        assert_eq!(f.blk.device_type(), device_type::BLOCK);
    }

    #[test]
    fn features_follow_readonly() {
        let rw = fixture(8, false).blk.features();
        let ro = fixture(8, true).blk.features();
        let bit = |b: u32| 1u64 << b;
        for f in [rw, ro] {
            assert_ne!(f & VIRTIO_F_VERSION_1, 0);
            assert_ne!(f & bit(VIRTIO_BLK_F_FLUSH), 0);
            assert_ne!(f & bit(VIRTIO_BLK_F_SEG_MAX), 0);
        }
        assert_eq!(rw & bit(VIRTIO_BLK_F_RO), 0);
        assert_ne!(ro & bit(VIRTIO_BLK_F_RO), 0);
        assert_ne!(rw & bit(VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(ro & bit(VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(ro & bit(VIRTIO_BLK_F_WRITE_ZEROES), 0);
    }

    #[test]
    fn capacity_rounds_down_a_partial_sector() {
        let mut f = fixture_with(&pattern(1000, 9), false, None);
        assert_eq!(f.blk.capacity(), 1);
        assert_eq!(f.one(IN, 1, &[(DATA, 512, W)]).1, IOERR);
        f.mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(f.one(OUT, 0, &[(DATA, 512, R)]), (1, OK));
        let data = f.disk.contents();
        assert_eq!(&data[..512], &[0xaa; 512]);
        assert_eq!(&data[512..], &pattern(1000, 9)[512..], "tail untouched");
    }

    #[test]
    fn write_then_read_round_trip() {
        let mut f = fixture(16, false);
        let new = pattern(1024, 77);
        f.mem.write_slice(&new[..512], GuestAddress(DATA)).unwrap();
        f.mem
            .write_slice(&new[512..], GuestAddress(DATA + 0x1000))
            .unwrap();
        let out = f.one(OUT, 3, &[(DATA, 512, R), (DATA + 0x1000, 512, R)]);
        assert_eq!(out, (1, OK));
        let mut expected = pattern(16 * 512, 0);
        expected[3 * 512..5 * 512].copy_from_slice(&new);
        assert_eq!(f.disk.contents(), expected);
        // Read sectors 2..6 back into one buffer.
        let (len, status) = f.one(IN, 2, &[(DATA + 0x4000, 2048, W)]);
        assert_eq!((len, status), (2048 + 1, OK));
        assert_eq!(f.guest(DATA + 0x4000, 2048), &expected[1024..3072]);
    }

    #[test]
    fn flush_succeeds() {
        let mut f = fixture(4, false);
        assert_eq!(f.one(VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
    }

    #[test]
    fn get_id_default_explicit_and_short_buffer() {
        let mut f = fixture(4, false);
        let (len, status) = f.one(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, W)]);
        assert_eq!((len, status), (21, OK));
        let name = f.disk.0.file_name().unwrap().as_encoded_bytes().to_vec();
        assert_eq!(f.guest(DATA, 20), &name[..20]);

        let mut f = fixture_with(&[0; 512], false, Some("disk-7"));
        assert_eq!(f.one(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, W)]), (21, OK));
        assert_eq!(f.guest(DATA, 20), b"disk-7\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        f.mem.write_slice(&[0xee; 8], GuestAddress(DATA)).unwrap();
        assert_eq!(f.one(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 4, W)]), (5, OK));
        assert_eq!(f.guest(DATA, 8), b"disk\xee\xee\xee\xee");

        let long = BlockConfig {
            path: f.disk.0.clone(),
            readonly: false,
            id: Some("x".repeat(21)),
        };
        assert!(matches!(Block::new(&long), Err(BlockError::IdTooLong(_))));
    }

    #[test]
    fn missing_file_is_an_open_error() {
        let config = BlockConfig {
            path: PathBuf::from("/nonexistent/ember/disk.img"),
            readonly: true,
            id: None,
        };
        assert!(matches!(Block::new(&config), Err(BlockError::Open { .. })));
    }

    #[test]
    fn readonly_disk_refuses_writes_and_keeps_the_file() {
        let mut f = fixture(8, true);
        let before = f.disk.contents();
        f.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(f.one(OUT, 0, &[(DATA, 512, R)]), (1, IOERR));
        let seg = discard_segment(0, 1, 0);
        f.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        assert_eq!(f.one(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, R)]), (1, IOERR));
        assert_eq!(
            f.one(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, R)]),
            (1, IOERR)
        );
        assert_eq!(f.disk.contents(), before);
        assert_eq!(f.one(IN, 1, &[(DATA, 512, W)]), (513, OK));
        assert_eq!(f.guest(DATA, 512), &before[512..1024]);
    }

    #[test]
    fn out_of_range_and_odd_lengths_are_io_errors() {
        let mut f = fixture(8, false);
        let before = f.disk.contents();
        assert_eq!(f.one(IN, 7, &[(DATA, 1024, W)]).1, IOERR);
        assert_eq!(f.one(IN, 8, &[(DATA, 512, W)]).1, IOERR);
        assert_eq!(f.one(IN, u64::MAX, &[(DATA, 512, W)]).1, IOERR);
        assert_eq!(f.one(IN, u64::MAX / 512, &[(DATA, 512, W)]).1, IOERR);
        assert_eq!(f.one(OUT, 7, &[(DATA, 1024, R)]).1, IOERR);
        assert_eq!(f.one(IN, 0, &[(DATA, 100, W)]).1, IOERR);
        assert_eq!(f.one(OUT, 0, &[(DATA, 511, R)]).1, IOERR);
        assert_eq!(f.disk.contents(), before);
        // The queue goes on after errors.
        assert_eq!(f.one(IN, 7, &[(DATA, 512, W)]), (513, OK));
    }

    #[test]
    fn short_host_read_is_an_io_error() {
        let mut f = fixture(8, false);
        // The image shrinks under the device.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f.disk.0)
            .unwrap()
            .set_len(1024)
            .unwrap();
        assert_eq!(f.one(IN, 1, &[(DATA, 512, W)]), (513, OK));
        assert_eq!(f.one(IN, 4, &[(DATA, 512, W)]).1, IOERR);
    }

    #[test]
    fn unknown_and_unnegotiated_requests_are_unsupported() {
        let mut f = fixture(8, false);
        assert_eq!(f.one(99, 0, &[]), (1, UNSUPP));
        assert_eq!(
            f.one(VIRTIO_BLK_T_SCSI_CMD, 0, &[(DATA, 16, R)]),
            (1, UNSUPP)
        );
        // Without DISCARD negotiated.
        f.blk.reset();
        f.blk
            .activate(vec![f.tq.device_queue()], VIRTIO_F_VERSION_1)
            .unwrap();
        f.tq = TestQueue::new(&f.mem, 0x1000, 16);
        let seg = discard_segment(0, 1, 0);
        f.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        assert_eq!(
            f.one(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, R)]),
            (1, UNSUPP)
        );
    }

    fn discard_segment(sector: u64, num: u32, flags: u32) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&num.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        s
    }

    #[test]
    fn discard_and_write_zeroes() {
        let mut f = fixture(64, false);
        let mut expected = f.disk.contents();
        // Write zeroes over sectors 8..24, with and without unmap.
        let segs = [discard_segment(8, 8, 0), discard_segment(16, 8, 1)];
        for (i, seg) in segs.iter().enumerate() {
            f.mem.write_slice(seg, GuestAddress(DATA)).unwrap();
            assert_eq!(
                f.one(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, R)]),
                (1, OK),
                "segment {i}"
            );
        }
        expected[8 * 512..24 * 512].fill(0);
        assert_eq!(f.disk.contents(), expected);
        // A discard of two segments succeeds and leaves the size alone.
        let mut two = discard_segment(32, 8, 0).to_vec();
        two.extend_from_slice(&discard_segment(48, 8, 0));
        f.mem.write_slice(&two, GuestAddress(DATA)).unwrap();
        assert_eq!(f.one(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 32, R)]), (1, OK));
        let after = f.disk.contents();
        assert_eq!(after.len(), 64 * 512);
        assert_eq!(&after[..32 * 512], &expected[..32 * 512]);
        // Unmap on a discard and unknown flags are unsupported.
        for (kind, seg) in [
            (VIRTIO_BLK_T_DISCARD, discard_segment(0, 1, 1)),
            (VIRTIO_BLK_T_WRITE_ZEROES, discard_segment(0, 1, 2)),
        ] {
            f.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
            assert_eq!(f.one(kind, 0, &[(DATA, 16, R)]), (1, UNSUPP));
        }
        // Out of range, too large, badly sized.
        for (kind, seg, len) in [
            (VIRTIO_BLK_T_DISCARD, discard_segment(60, 8, 0), 16),
            (VIRTIO_BLK_T_DISCARD, discard_segment(u64::MAX, 1, 0), 16),
            (
                VIRTIO_BLK_T_WRITE_ZEROES,
                discard_segment(0, MAX_WRITE_ZEROES_SECTORS + 1, 0),
                16,
            ),
            (VIRTIO_BLK_T_DISCARD, discard_segment(0, 1, 0), 12),
            (VIRTIO_BLK_T_DISCARD, discard_segment(0, 1, 0), 0),
        ] {
            f.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
            assert_eq!(f.one(kind, 0, &[(DATA, len, R)]), (1, IOERR));
        }
        assert_eq!(f.disk.contents(), after);
    }

    /// `(addr, len, flags)` per descriptor.
    type Chain = Vec<(u64, u32, u16)>;

    /// Pushes a raw chain, processes it, returns the used length.
    fn raw(f: &mut Fixture, descs: &[(u64, u32, u16)]) -> u32 {
        f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = f.tq.push(&f.mem, descs);
        let used = f.run();
        assert_eq!(used, vec![(head as u32, used[0].1)]);
        used[0].1
    }

    #[test]
    fn malformed_chains_never_touch_the_disk() {
        let mut f = fixture(8, false);
        let before = f.disk.contents();
        let hdr_in = f.header(0, IN, 0);
        let hdr_out = f.header(1, OUT, 0);
        f.mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
        let end = MEM_SIZE as u64;
        // (chain, used length, status byte afterwards)
        let cases: Vec<(&str, Chain, u32, u8)> = vec![
            ("header only", vec![(hdr_in, 16, R)], 0, 0xff),
            (
                "readable status",
                vec![(hdr_in, 16, R), (STATUS, 1, R)],
                0,
                0xff,
            ),
            (
                "status of 2 bytes",
                vec![(hdr_in, 16, R), (STATUS - 1, 2, W)],
                1,
                IOERR,
            ),
            (
                "empty status",
                vec![(hdr_in, 16, R), (STATUS, 0, W)],
                0,
                0xff,
            ),
            ("status only", vec![(STATUS, 1, W)], 1, IOERR),
            (
                "short header",
                vec![(hdr_in, 8, R), (DATA, 512, W), (STATUS, 1, W)],
                1,
                IOERR,
            ),
            (
                "writable header",
                vec![(hdr_in, 16, W), (DATA, 512, W), (STATUS, 1, W)],
                1,
                IOERR,
            ),
            (
                "header outside RAM",
                vec![(end - 8, 16, R), (STATUS, 1, W)],
                1,
                IOERR,
            ),
            (
                "write with writable data",
                vec![(hdr_out, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                1,
                IOERR,
            ),
            (
                "read with readable data",
                vec![(hdr_in, 16, R), (DATA, 512, R), (STATUS, 1, W)],
                1,
                IOERR,
            ),
            (
                "data outside RAM",
                vec![(hdr_out, 16, R), (end - 256, 512, R), (STATUS, 1, W)],
                1,
                IOERR,
            ),
            (
                "data address wraps",
                vec![(hdr_out, 16, R), (u64::MAX - 100, 512, R), (STATUS, 1, W)],
                1,
                IOERR,
            ),
            (
                "oversized data descriptor",
                vec![(hdr_out, 16, R), (DATA, 2 << 20, R), (STATUS, 1, W)],
                1,
                IOERR,
            ),
            (
                "status outside RAM",
                vec![(hdr_out, 16, R), (DATA, 512, R), (end, 1, W)],
                0,
                0xff,
            ),
            (
                "chain longer than 4 GiB",
                vec![
                    (hdr_out, 16, R),
                    (DATA, 0xffff_0000, R),
                    (DATA, 0xffff_0000, R),
                    (STATUS, 1, W),
                ],
                0,
                0xff,
            ),
        ];
        for (name, descs, len, status) in cases {
            assert_eq!(raw(&mut f, &descs), len, "{name}");
            assert_eq!(f.status(), status, "{name}");
        }
        assert_eq!(f.disk.contents(), before);
        assert_eq!(f.guest(DATA, 512), vec![0x11; 512], "data untouched");
    }

    #[test]
    fn descriptor_loop_is_cut_off() {
        let mut f = fixture(8, false);
        let hdr = f.header(0, IN, 0);
        // 0 -> 1 -> 0 -> ...: the iterator gives up after the queue size;
        // the last descriptor it yields is the writable one, which gets the
        // error status in its last byte.
        f.tq.write_desc(&f.mem, 0, hdr, 16, R | NEXT, 1);
        f.tq.write_desc(&f.mem, 1, DATA, 512, W | NEXT, 0);
        f.tq.publish(&f.mem, 0);
        assert_eq!(f.run(), vec![(0, 1)]);
        assert_eq!(f.guest(DATA + 511, 1), vec![IOERR]);
        // A loop of readable descriptors cannot be answered at all.
        f.tq.write_desc(&f.mem, 2, hdr, 16, R | NEXT, 2);
        f.tq.publish(&f.mem, 2);
        assert_eq!(f.run(), vec![(2, 0)]);
    }

    /// Writes a descriptor into an indirect table.
    fn table_desc(mem: &GuestMemoryMmap<()>, table: u64, i: u64, d: (u64, u32, u16), next: u16) {
        let at = table + 16 * i;
        mem.write_obj(d.0, GuestAddress(at)).unwrap();
        mem.write_obj(d.1, GuestAddress(at + 8)).unwrap();
        mem.write_obj(d.2, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Regression: virtio-queue follows VIRTQ_DESC_F_INDIRECT whether or
    /// not the feature was negotiated; we never offer it, so such a chain
    /// is malformed, and its table is not read.
    #[test]
    fn indirect_descriptors_are_refused() {
        const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        let table = 0x200000u64;
        let mut f = fixture(8, false);
        assert_eq!(
            f.blk.features() & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC),
            0
        );
        let hdr = f.header(0, IN, 2);
        table_desc(&f.mem, table, 0, (hdr, 16, R | NEXT), 1);
        table_desc(&f.mem, table, 1, (DATA, 512, W | NEXT), 2);
        table_desc(&f.mem, table, 2, (STATUS, 1, W), 0);
        f.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
        f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        f.tq.write_desc(&f.mem, 0, table, 48, INDIRECT, 0);
        f.tq.publish(&f.mem, 0);
        assert_eq!(f.run(), vec![(0, 0)], "returned unanswered");
        assert_eq!(f.status(), 0xff);
        assert_eq!(f.guest(DATA, 512), vec![0x77; 512], "table not followed");
        // Behind a direct header too: the chain ends at the indirect
        // descriptor, before the status.
        let hdr = f.header(1, OUT, 0);
        f.tq.write_desc(&f.mem, 1, hdr, 16, R | NEXT, 2);
        f.tq.write_desc(&f.mem, 2, table, 48, INDIRECT, 0);
        f.tq.publish(&f.mem, 1);
        assert_eq!(f.run(), vec![(1, 0)]);
        assert_eq!(f.status(), 0xff);
        assert_eq!(f.disk.contents(), pattern(8 * 512, 0));
        assert_eq!(f.blk.counters().errors, 2);
        let chain = ChainRef {
            desc_table: GuestAddress(f.tq.desc),
            queue_size: 16,
            head: 1,
        };
        assert_eq!(
            parse_request(&f.mem, chain).map_err(|e| e.error),
            Err(ChainError::Indirect)
        );
    }

    /// A queue of `queue_size` entries over a sparse disk of `disk_bytes`.
    fn sparse_fixture(queue_size: u16, disk_bytes: u64) -> Fixture {
        let disk = TempDisk::new(&[]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.0)
            .unwrap()
            .set_len(disk_bytes)
            .unwrap();
        let config = BlockConfig {
            path: disk.0.clone(),
            readonly: false,
            id: None,
        };
        let mut blk = Block::new(&config).unwrap();
        let mem = guest_memory(MEM_SIZE);
        let tq = TestQueue::new(&mem, 0x1000, queue_size);
        let features = blk.features();
        blk.activate(vec![tq.device_queue()], features).unwrap();
        Fixture { disk, mem, tq, blk }
    }

    /// Most a pass may move: its budget, plus the one segment it may start
    /// with little budget left.
    const PASS_MAX: u64 = PASS_BUDGET.bytes + MAX_SEGMENT_BYTES as u64;

    /// Regression: one notification made the device read 63.5 GiB under the
    /// transport lock (one head published 256 times, each a chain of 254 x
    /// 1 MiB). Now a pass stops at its budget, in the middle of a request,
    /// and says there is more.
    #[test]
    fn one_notification_does_bounded_work_per_pass() {
        const MIB: u32 = 1 << 20;
        let mut f = sparse_fixture(256, SEG_MAX as u64 * MIB as u64);
        let hdr = f.header(0, IN, 0);
        let mut chain = vec![(hdr, 16, R)];
        chain.extend(std::iter::repeat_n((DATA, MIB, W), SEG_MAX as usize));
        chain.push((STATUS, 1, W));
        let head = f.tq.add_chain(&f.mem, &chain);
        for _ in 0..256 {
            f.tq.publish(&f.mem, head);
        }
        let mut moved = 0;
        for _ in 0..4 {
            f.blk.process_queue(0, &f.mem).unwrap();
            let pass = f.blk.last_pass();
            assert!(pass.bytes > 0 && pass.bytes <= PASS_MAX, "{pass:?}");
            assert!(f.blk.has_more_work(0));
            moved += pass.bytes;
        }
        assert!(f.tq.take_used(&f.mem).is_empty(), "254 MiB not done yet");
        assert_eq!(f.blk.counters().read_bytes, 0);
        assert!(moved <= 4 * PASS_MAX);
    }

    /// Requests cut across passes all complete, in order, with the right
    /// data and lengths; nothing is lost or done twice.
    #[test]
    fn budgeted_passes_complete_every_request_in_order() {
        const MIB: u32 = 1 << 20;
        let sectors = 3 * MIB as u64 / 512;
        let mut f = sparse_fixture(256, 3 * MIB as u64 + 4096);
        // The disk's last 4 KiB hold a pattern; the rest is zeros.
        let tail = pattern(4096, 5);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f.disk.0)
            .unwrap()
            .write_all_at(&tail, 3 * MIB as u64)
            .unwrap();
        let hdr_big = f.header(0, IN, 0);
        let hdr_small = f.header(1, IN, sectors + 1);
        let big = f.tq.add_chain(
            &f.mem,
            &[
                (hdr_big, 16, R),
                (DATA, MIB, W),
                (DATA, MIB, W),
                (DATA, MIB, W),
                (STATUS, 1, W),
            ],
        );
        let small = f.tq.add_chain(
            &f.mem,
            &[(hdr_small, 16, R), (0x300000, 512, W), (STATUS + 1, 1, W)],
        );
        for i in 0..256 {
            f.tq.publish(&f.mem, if i % 2 == 0 { big } else { small });
        }
        let mut used = Vec::new();
        let mut passes = 0;
        loop {
            f.blk.process_queue(0, &f.mem).unwrap();
            passes += 1;
            let pass = f.blk.last_pass();
            assert!(pass.bytes <= PASS_MAX, "{pass:?}");
            assert!(pass.requests <= PASS_BUDGET.requests, "{pass:?}");
            used.extend(f.tq.take_used(&f.mem));
            if !f.blk.has_more_work(0) {
                break;
            }
            assert!(passes < 1000, "no progress");
        }
        let expect: Vec<(u32, u32)> = (0..256)
            .map(|i| {
                if i % 2 == 0 {
                    (big as u32, 3 * MIB + 1)
                } else {
                    (small as u32, 513)
                }
            })
            .collect();
        assert_eq!(used, expect);
        assert!(passes >= (128 * 3 * MIB as u64).div_ceil(PASS_MAX) as usize);
        assert_eq!(f.guest(STATUS, 2), vec![OK, OK]);
        assert_eq!(f.guest(0x300000, 512), &tail[512..1024]);
        let c = f.blk.counters();
        assert_eq!((c.reads, c.read_bytes), (256, 128 * (3 * MIB as u64 + 512)));
        // Nothing left: another pass finds nothing.
        f.blk.process_queue(0, &f.mem).unwrap();
        assert_eq!(f.blk.last_pass(), PassStats::default());
    }

    /// A request interrupted by the budget and then reset is forgotten: the
    /// next driver session starts clean.
    #[test]
    fn reset_forgets_a_request_in_progress() {
        const MIB: u32 = 1 << 20;
        let mut f = sparse_fixture(16, 16 * MIB as u64);
        let hdr = f.header(0, IN, 0);
        let mut chain = vec![(hdr, 16, R)];
        chain.extend(std::iter::repeat_n((DATA, MIB, W), 12));
        chain.push((STATUS, 1, W));
        f.tq.push(&f.mem, &chain);
        f.blk.process_queue(0, &f.mem).unwrap();
        assert!(f.blk.has_more_work(0));
        assert!(
            f.blk.queue_states()[0].1.next_avail == 0,
            "chain left on the ring"
        );
        f.blk.reset();
        assert!(!f.blk.has_more_work(0));
        assert!(f.blk.in_progress.is_none());
    }

    /// Regression: for a malformed chain the status byte went to the last
    /// byte of the last writable descriptor whenever that byte was in RAM,
    /// even when the buffer as a whole was not (a buffer starting in a hole
    /// below RAM). A device writes only into wholly valid buffers.
    #[test]
    fn no_status_through_a_partly_invalid_buffer() {
        // RAM at [0, 2 MiB) and [3 MiB, 4 MiB): a hole below 3 MiB.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x30_0000), 0x10_0000),
        ])
        .unwrap();
        let straddling = Descriptor::new(0x30_0000 - 0x800, 0x1000, W, 0);
        let last_byte = 0x30_0000 + 0x7ff;
        mem.write_obj(0xeeu8, GuestAddress(last_byte)).unwrap();
        let header = Descriptor::new(0x1000, 16, R | NEXT, 1);
        let bad = parse_descriptors(&[header, straddling], true, false, &mem).unwrap_err();
        assert_eq!(bad.status, None);
        // Through the device: the chain is returned unanswered and the
        // byte in RAM is untouched.
        let disk = TempDisk::new(&[0; 4096]);
        let mut blk = Block::new(&BlockConfig {
            path: disk.0.clone(),
            readonly: false,
            id: None,
        })
        .unwrap();
        let mut tq = TestQueue::new(&mem, 0x1000, 16);
        blk.activate(vec![tq.device_queue()], blk.features())
            .unwrap();
        tq.push(&mem, &[(0x8000, 16, R), (0x30_0000 - 0x800, 0x1000, W)]);
        blk.process_queue(0, &mem).unwrap();
        assert_eq!(tq.take_used(&mem), vec![(0, 0)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(last_byte)).unwrap(), 0xee);
        // A wholly valid writable last descriptor still gets the error.
        let ok = Descriptor::new(0x30_0000, 0x1000, W, 0);
        let bad = parse_descriptors(&[header, ok], true, false, &mem).unwrap_err();
        assert_eq!(bad.status, Some(GuestAddress(last_byte + 0x800)));
    }

    #[test]
    fn a_writable_disk_is_locked_against_other_openers() {
        let disk = TempDisk::new(&[0; 4096]);
        let cfg = |readonly| BlockConfig {
            path: disk.0.clone(),
            readonly,
            id: None,
        };
        let rw = Block::new(&cfg(false)).unwrap();
        for readonly in [false, true] {
            let err = Block::new(&cfg(readonly)).err().expect("refused");
            assert!(matches!(err, BlockError::Locked { .. }), "{err}");
            assert!(
                err.to_string().contains(&*disk.0.to_string_lossy()),
                "{err}"
            );
        }
        drop(rw);
        // Readers share; a writer cannot join them.
        let ro1 = Block::new(&cfg(true)).unwrap();
        let ro2 = Block::new(&cfg(true)).unwrap();
        assert!(matches!(
            Block::new(&cfg(false)),
            Err(BlockError::Locked { .. })
        ));
        drop((ro1, ro2));
        assert!(
            Block::new(&cfg(false)).is_ok(),
            "the lock goes with the file"
        );
    }

    #[test]
    fn only_regular_files_and_block_devices_are_disks() {
        let dir = std::env::temp_dir().join(format!("ember-disk-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let cases = [
            (dir.clone(), true, "a directory"),
            (fifo.clone(), true, "a FIFO"),
            (fifo.clone(), false, "a FIFO"),
            (PathBuf::from("/dev/null"), true, "a character device"),
        ];
        for (path, readonly, kind) in cases {
            let err = Block::new(&BlockConfig {
                path: path.clone(),
                readonly,
                id: Some("x".into()),
            })
            .err()
            .expect("refused");
            let msg = err.to_string();
            assert!(
                msg.contains(&*path.to_string_lossy()) && msg.contains(kind),
                "{msg}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sync_data_reaches_the_file() {
        let mut f = fixture(4, false);
        f.mem.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(f.one(OUT, 1, &[(DATA, 512, R)]), (1, OK));
        f.blk.sync_data().unwrap();
        assert_eq!(&f.disk.contents()[512..1024], &[0x42; 512]);
    }

    #[test]
    fn bad_head_or_available_index_is_a_device_error() {
        let mut f = fixture(8, false);
        f.tq.publish(&f.mem, 16);
        assert!(matches!(
            f.blk.process_queue(0, &f.mem),
            Err(DeviceError::BadChain { .. })
        ));
        let mut f = fixture(8, false);
        f.tq.set_avail_idx(&f.mem, 17);
        assert!(f.blk.process_queue(0, &f.mem).is_err());
    }

    #[test]
    fn several_requests_in_one_notification() {
        let mut f = fixture(8, false);
        let mut heads = Vec::new();
        for i in 0..4u64 {
            let hdr = f.header(i, IN, i);
            let status = STATUS + i;
            heads.push(f.tq.push(
                &f.mem,
                &[(hdr, 16, R), (DATA + 512 * i, 512, W), (status, 1, W)],
            ));
        }
        let used = f.run();
        let expect: Vec<_> = heads.iter().map(|&h| (h as u32, 513)).collect();
        assert_eq!(used, expect);
        assert_eq!(f.guest(DATA, 2048), &pattern(8 * 512, 0)[..2048]);
        assert_eq!(f.guest(STATUS, 4), vec![OK; 4]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write {
            sector: u64,
            sectors: u8,
            seed: u8,
            split: u8,
        },
        Read {
            sector: u64,
            sectors: u8,
            split: u8,
        },
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Sectors up to 36 on a 32-sector disk, so that some run off the end.
        prop_oneof![
            4 => (0u64..36, 1u8..6, any::<u8>(), 1u8..4).prop_map(|(sector, sectors, seed, split)| {
                Op::Write { sector, sectors, seed, split }
            }),
            4 => (0u64..36, 1u8..6, 1u8..4)
                .prop_map(|(sector, sectors, split)| Op::Read { sector, sectors, split }),
            1 => Just(Op::Flush),
        ]
    }

    /// `len` bytes cut into up to `split` descriptors at DATA, 64 KiB apart.
    fn segments(len: u32, split: u8, flags: u16) -> Vec<(u64, u32, u16)> {
        let split = split.max(1) as u32;
        let base = len / split / 512 * 512;
        let mut out = Vec::new();
        let mut done = 0;
        for i in 0..split {
            let n = if i + 1 == split { len - done } else { base };
            if n > 0 {
                out.push((DATA + 0x10000 * i as u64, n, flags));
            }
            done += n;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn reads_and_writes_match_a_vec_model(ops in prop::collection::vec(op(), 1..24)) {
            const SECTORS: u64 = 32;
            let mut f = fixture(SECTORS as usize, false);
            let mut model = pattern(SECTORS as usize * 512, 0);
            for op in ops {
                match op {
                    Op::Write { sector, sectors, seed, split } => {
                        let len = sectors as u32 * 512;
                        let data = pattern(len as usize, seed);
                        let segs = segments(len, split, R);
                        let mut at = 0usize;
                        for &(addr, n, _) in &segs {
                            f.mem.write_slice(&data[at..at + n as usize], GuestAddress(addr)).unwrap();
                            at += n as usize;
                        }
                        let fits = sector + sectors as u64 <= SECTORS;
                        let expect = if fits { OK } else { IOERR };
                        prop_assert_eq!(f.one(OUT, sector, &segs), (1, expect));
                        if fits {
                            let start = sector as usize * 512;
                            model[start..start + len as usize].copy_from_slice(&data);
                        }
                    }
                    Op::Read { sector, sectors, split } => {
                        let len = sectors as u32 * 512;
                        let segs = segments(len, split, W);
                        let fits = sector + sectors as u64 <= SECTORS;
                        let (used, status) = f.one(IN, sector, &segs);
                        if fits {
                            prop_assert_eq!((used, status), (len + 1, OK));
                            let mut got = Vec::new();
                            for &(addr, n, _) in &segs {
                                got.extend(f.guest(addr, n as usize));
                            }
                            let start = sector as usize * 512;
                            prop_assert_eq!(&got[..], &model[start..start + len as usize]);
                        } else {
                            prop_assert_eq!((used, status), (1, IOERR));
                        }
                    }
                    Op::Flush => {
                        prop_assert_eq!(f.one(VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
                    }
                }
            }
            prop_assert_eq!(f.disk.contents(), model);
        }
    }
}
