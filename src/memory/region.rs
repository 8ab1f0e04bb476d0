//! Memory regions: the nodes of the guest memory tree.
//!
//! A region is one of six kinds (see the contract in
//! `shared/docs/memory-model.md`). Regions live in the arena of a
//! [`MemoryTree`](super::MemoryTree) and are named by [`RegionId`]; this file
//! holds the per-region data and the device callback interface.

use std::fmt;
use std::sync::Arc;

use super::ram::RamBlock;

/// The size of the whole 64-bit address space, 2^64, which does not fit a
/// `u64`. Sizes and ends are therefore `u128` throughout the model.
pub const SIZE_2_64: u128 = 1u128 << 64;

/// Handle of a region inside its [`MemoryTree`](super::MemoryTree).
///
/// Ids are never reused within one tree, so a stale id can never name a
/// different region (the listener diff relies on that).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RegionId(pub(crate) u32);

impl RegionId {
    /// The index of the region in its tree, for diagnostics.
    pub fn index(self) -> u32 {
        self.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a region is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum RegionKind {
    /// Groups children; claims no address itself.
    Container,
    /// Host memory.
    Ram,
    /// Host memory the guest cannot write (a RAM region created read-only).
    Rom,
    /// ROM device: reads from memory in romd mode, writes to callbacks.
    Romd,
    /// Device registers: every access goes to the callbacks.
    Io,
    /// A window onto another region.
    Alias,
}

impl RegionKind {
    /// The spelling used in map files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionKind::Container => "container",
            RegionKind::Ram => "ram",
            RegionKind::Rom => "rom",
            RegionKind::Romd => "romd",
            RegionKind::Io => "io",
            RegionKind::Alias => "alias",
        }
    }

    /// Terminating regions fill the gaps their children leave.
    pub fn terminates(self) -> bool {
        !matches!(self, RegionKind::Container | RegionKind::Alias)
    }
}

/// Byte order of a device's registers.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Endianness {
    #[default]
    Little,
    Big,
}

/// Which accesses an io region accepts and which its callbacks implement,
/// as in QEMU's `MemoryRegionOps.valid` / `.impl`.
///
/// Sizes are in bytes and must be powers of two from 1 to 8.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AccessRules {
    /// Smallest access the device accepts.
    pub valid_min: u32,
    /// Largest access the device accepts.
    pub valid_max: u32,
    /// Whether an access not aligned to its own size is accepted.
    pub valid_unaligned: bool,
    /// Smallest access the callbacks implement; narrower accesses are
    /// widened (a read is masked, a write carries the neighbouring bytes as 0).
    pub impl_min: u32,
    /// Largest access the callbacks implement; wider accesses are split.
    pub impl_max: u32,
    /// Whether the callbacks handle unaligned accesses themselves; when not,
    /// buffer accesses are cut into naturally aligned pieces.
    pub impl_unaligned: bool,
    /// Byte order of the registers.
    pub endianness: Endianness,
}

impl Default for AccessRules {
    /// Accepts and implements aligned accesses of 1, 2, 4 and 8 bytes,
    /// little endian.
    fn default() -> Self {
        AccessRules {
            valid_min: 1,
            valid_max: 8,
            valid_unaligned: false,
            impl_min: 1,
            impl_max: 8,
            impl_unaligned: false,
            endianness: Endianness::Little,
        }
    }
}

impl AccessRules {
    /// Rules with the given implemented sizes and defaults otherwise.
    pub fn with_impl(impl_min: u32, impl_max: u32) -> Self {
        AccessRules {
            impl_min,
            impl_max,
            ..AccessRules::default()
        }
    }

    /// Checks that every size is a power of two in 1..=8 and min <= max.
    pub fn is_well_formed(&self) -> bool {
        let ok = |s: u32| s.is_power_of_two() && s <= 8;
        ok(self.valid_min)
            && ok(self.valid_max)
            && ok(self.impl_min)
            && ok(self.impl_max)
            && self.valid_min <= self.valid_max
            && self.impl_min <= self.impl_max
    }
}

/// The callbacks of a device region (io, or the write side of romd).
///
/// `offset` is relative to the start of the region. An access is delivered
/// whole to the region at its start address, so `offset + size` may exceed
/// the region's size; devices decide what that means.
pub trait RegionOps: Send + Sync {
    /// Reads `size` bytes (1, 2, 4 or 8, within [`AccessRules::impl_min`]
    /// ..= [`AccessRules::impl_max`]) and returns them in the low bits.
    fn read(&self, offset: u64, size: u32) -> u64;
    /// Writes the low `size` bytes of `value`.
    fn write(&self, offset: u64, size: u32, value: u64);
    /// Which accesses are valid and which the callbacks implement. Read once
    /// when the region is created.
    fn rules(&self) -> AccessRules {
        AccessRules::default()
    }
    /// A device-specific validity check after the size checks, like QEMU's
    /// `valid.accepts`. Rejected accesses read as 0 and drop writes.
    fn accepts(&self, _offset: u64, _size: u32, _is_write: bool) -> bool {
        true
    }
}

/// A device's callbacks with their rules, fixed when the region is created.
#[derive(Clone)]
pub struct IoHandler {
    pub(crate) ops: Arc<dyn RegionOps>,
    pub(crate) rules: AccessRules,
    /// Accesses dispatched to the device (KVM exits, software-CPU slow
    /// paths, DMA), counted for the control API's per-device counters.
    pub(crate) accesses: Arc<std::sync::atomic::AtomicU64>,
}

impl IoHandler {
    pub(crate) fn new(ops: Arc<dyn RegionOps>) -> Self {
        let rules = ops.rules();
        IoHandler {
            ops,
            rules,
            accesses: Arc::default(),
        }
    }

    /// Accesses dispatched to this device so far.
    pub fn accesses(&self) -> u64 {
        self.accesses.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The access rules of this device.
    pub fn rules(&self) -> &AccessRules {
        &self.rules
    }
}

impl fmt::Debug for IoHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoHandler")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// What backs a terminating region; shared by every flat range of it so that
/// dispatch never needs the tree.
#[derive(Clone, Debug)]
pub enum Backing {
    /// Containers and aliases.
    None,
    /// ram and rom regions.
    Ram(Arc<RamBlock>),
    /// io regions; `None` claims the range and reads as unassigned.
    Io(Option<IoHandler>),
    /// romd regions: memory for reads in romd mode, callbacks otherwise.
    Romd {
        ram: Arc<RamBlock>,
        io: Option<IoHandler>,
    },
}

impl Backing {
    /// The RAM block behind this region, if any.
    pub fn ram(&self) -> Option<&Arc<RamBlock>> {
        match self {
            Backing::Ram(ram) | Backing::Romd { ram, .. } => Some(ram),
            _ => None,
        }
    }

    /// The device callbacks behind this region, if any.
    pub fn io(&self) -> Option<&IoHandler> {
        match self {
            Backing::Io(io) | Backing::Romd { io, .. } => io.as_ref(),
            _ => None,
        }
    }
}

/// One node of the tree.
#[derive(Debug)]
pub(crate) struct Region {
    pub(crate) name: String,
    pub(crate) kind: RegionKind,
    pub(crate) size: u128,
    /// Address inside the parent (meaningful once added).
    pub(crate) addr: u64,
    pub(crate) priority: i32,
    pub(crate) enabled: bool,
    pub(crate) readonly: bool,
    /// Only meaningful for romd regions.
    pub(crate) romd_mode: bool,
    /// Dirty-log clients (bit per client) active on this region.
    pub(crate) dirty_log_mask: u8,
    pub(crate) parent: Option<RegionId>,
    /// Children in render order: descending priority, newest first among
    /// equal priorities.
    pub(crate) children: Vec<RegionId>,
    /// For aliases: the target and the offset within it.
    pub(crate) alias: Option<(RegionId, u64)>,
    pub(crate) backing: Backing,
    /// ioeventfds on this (io) region, see `ioeventfd.rs`.
    pub(crate) ioeventfds: Vec<super::ioeventfd::RegionIoEventFd>,
}

impl Region {
    pub(crate) fn new(name: String, kind: RegionKind, size: u128, backing: Backing) -> Self {
        Region {
            name,
            kind,
            size,
            addr: 0,
            priority: 0,
            enabled: true,
            readonly: kind == RegionKind::Rom,
            romd_mode: true,
            dirty_log_mask: 0,
            parent: None,
            children: Vec::new(),
            alias: None,
            backing,
            ioeventfds: Vec::new(),
        }
    }
}
