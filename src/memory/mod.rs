//! QEMU's guest memory model: a tree of regions flattened into one view per
//! address space, listeners that learn how views change, and one dispatch
//! path for every access that is not a direct RAM mapping.
//!
//! The contract is `shared/docs/memory-model.md`; `docs/architecture.md`
//! shows how an access flows through these pieces.

mod address_space;
mod dispatch;
mod flatview;
mod guest_ram;
mod ioeventfd;
mod listener;
pub mod map_file;
mod mtree;
mod ram;
mod region;
mod tree;

pub use address_space::{AddressSpace, Unassigned};
pub use dispatch::MemTxResult;
pub use flatview::{FlatRange, FlatView};
pub use guest_ram::{GuestRam, GuestRamListener, PAGE_SIZE};
pub use ioeventfd::{IoEventFd, RegionIoEventFd};
pub use listener::{ListenerId, MemoryListener};
pub use mtree::{mtree_and_flatviews_text, mtree_text, MtreeOptions};
pub use ram::{RamBacking, RamBlock};
pub use region::{
    AccessRules, Backing, Endianness, IoHandler, RegionId, RegionKind, RegionOps, SIZE_2_64,
};
pub use tree::{MemoryTree, TreeStats};

/// Errors from building or changing the memory tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error("no region {0} in this tree")]
    NoSuchRegion(RegionId),
    #[error("no address space '{0}' in this tree")]
    NoSuchAddressSpace(String),
    #[error("no such listener on this address space")]
    NoSuchListener,
    #[error("region '{region}': size {size:#x} is larger than 2^64")]
    SizeTooLarge { region: String, size: u128 },
    #[error("region '{region}': cannot grow to {size:#x} bytes, its memory is {block:#x} bytes")]
    RamCannotGrow {
        region: String,
        size: u128,
        block: u64,
    },
    #[error("RAM of {size:#x} bytes does not fit this host's address space")]
    RamTooLarge { size: u64 },
    #[error("cannot map {} of RAM: {reason}", human_size(*size))]
    RamMap { size: u64, reason: String },
    #[error("RAM access of {len} bytes at offset {offset:#x} is outside the {size:#x}-byte block")]
    RamOutOfBounds { offset: u64, len: u64, size: u64 },
    #[error("ioeventfd at offset {offset:#x} of '{region}': {reason}")]
    BadIoEventFd {
        region: String,
        offset: u64,
        reason: String,
    },
    #[error("region '{child}' is already in '{parent}'; remove it first")]
    AlreadyAdded { child: String, parent: String },
    #[error("region '{child}' is not a child of '{parent}'")]
    NotAChild { child: String, parent: String },
    #[error("adding '{child}' to '{parent}' would make a cycle ('{parent}' is reachable from '{child}')")]
    Cycle { parent: String, child: String },
    #[error("alias '{parent}' cannot have children (tried to add '{child}')")]
    AliasWithChildren { parent: String, child: String },
    #[error("region '{region}' is not a {expected} region")]
    WrongKind {
        region: String,
        expected: &'static str,
    },
    #[error("region '{region}': access sizes must be powers of two from 1 to 8, min <= max")]
    BadAccessRules { region: String },
    #[error("dirty-log client {0} is out of range 0..8")]
    BadLogClient(u8),
    #[error(
        "region '{region}' is still in use (parent, children, alias target or address space root)"
    )]
    InUse { region: String },
    #[error("commit without a matching begin")]
    NoTransaction,
    #[error("too many regions")]
    TooManyRegions,
}

/// A byte count in the largest binary unit that divides it (`64 TiB`,
/// `1536 MiB`, `100 bytes`): how sizes are shown in messages.
pub fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod human_size_tests {
    use super::human_size;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(64 << 40), "64 TiB");
        assert_eq!(human_size(1536 << 20), "1536 MiB");
        assert_eq!(human_size(100), "100 bytes");
        assert_eq!(human_size((1 << 30) + 1), "1073741825 bytes");
    }
}
