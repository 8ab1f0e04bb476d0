//! Test helpers: the PC I/O address space as KVM port-I/O exits reach it.

use std::sync::Arc;

use crate::memory::{AddressSpace, MemoryTree, RegionOps, Unassigned};

/// A 64 KiB I/O space (unclaimed ports read all ones, as on a PC) with each
/// `(name, port, len, device)` placed at its port. The tree is returned so
/// that tests can keep it alive next to the address space.
pub(crate) fn io_space(
    devices: Vec<(&str, u64, u128, Arc<dyn RegionOps>)>,
) -> (MemoryTree, AddressSpace) {
    let mut tree = MemoryTree::new();
    let root = tree.new_io("io", 0x10000, None).expect("io root");
    for (name, port, len, ops) in devices {
        let id = tree.new_io(name, len, Some(ops)).expect("device region");
        tree.add_subregion(root, port, id).expect("place device");
    }
    let io = tree
        .add_address_space("I/O", root, Unassigned::AllOnes)
        .expect("I/O address space");
    (tree, io)
}
