//! Address spaces: a name, a root region (kept by the tree) and the current
//! FlatView, published so that vCPU and device threads read a consistent
//! snapshot without taking a lock.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::flatview::FlatView;

/// What reads of addresses nothing claims return.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Unassigned {
    /// Reads return 0 (the `memory` address space).
    #[default]
    Zero,
    /// Reads return all ones (x86 port I/O, where an empty ISA bus floats
    /// high).
    AllOnes,
}

impl Unassigned {
    /// The value a read of `size` bytes returns.
    pub fn value(self, size: u32) -> u64 {
        match self {
            Unassigned::Zero => 0,
            Unassigned::AllOnes => size_mask(size),
        }
    }

    /// The byte unassigned reads fill buffers with.
    pub fn byte(self) -> u8 {
        match self {
            Unassigned::Zero => 0,
            Unassigned::AllOnes => 0xff,
        }
    }
}

/// The mask of the low `size` bytes.
pub(crate) fn size_mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

struct Shared {
    index: usize,
    name: String,
    unassigned: Unassigned,
    view: ArcSwap<FlatView>,
}

/// A handle on an address space; cheap to clone and to send to other
/// threads. The tree publishes a new view on each commit; accesses made
/// through the handle (see `dispatch.rs`) use whichever view is current.
#[derive(Clone)]
pub struct AddressSpace {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl AddressSpace {
    pub(crate) fn new(index: usize, name: &str, unassigned: Unassigned) -> Self {
        AddressSpace {
            shared: Arc::new(Shared {
                index,
                name: name.to_string(),
                unassigned,
                view: ArcSwap::from_pointee(FlatView::empty()),
            }),
        }
    }

    /// The address space's name (`memory`, `I/O`, ...).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// What unassigned reads return here.
    pub fn unassigned(&self) -> Unassigned {
        self.shared.unassigned
    }

    /// The current view, kept alive for as long as the caller holds it.
    pub fn view(&self) -> Arc<FlatView> {
        self.shared.view.load_full()
    }

    /// The current view for a short access; cheaper than [`Self::view`].
    pub(crate) fn view_guard(&self) -> Guard<Arc<FlatView>> {
        self.shared.view.load()
    }

    pub(crate) fn publish(&self, view: Arc<FlatView>) {
        self.shared.view.store(view);
    }

    pub(crate) fn index(&self) -> usize {
        self.shared.index
    }

    /// Whether two handles name the same address space.
    pub fn same(&self, other: &AddressSpace) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}
