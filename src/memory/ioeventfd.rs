//! ioeventfds: QEMU's `memory_region_add_eventfd`.
//!
//! A device asks that guest writes of one value (or any value) to one
//! address of its io region signal an eventfd instead of calling the device.
//! The tree keeps these per region; after every commit it computes, for each
//! address space, where they land in the flat view (an io region may be
//! mapped through aliases, several times, or not at all) and tells listeners
//! what was added and removed. The KVM listener turns them into
//! `KVM_IOEVENTFD`s, so such a write never leaves the kernel; without KVM the
//! device's own register handler signals the same eventfd, so both
//! accelerators hand the work to the same event-loop code.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::flatview::FlatView;
use super::region::RegionKind;
use super::tree::MemoryTree;

/// An ioeventfd on a region: `size` bytes at `offset` within it.
#[derive(Clone, Debug)]
pub struct RegionIoEventFd {
    pub offset: u64,
    /// Access size the eventfd matches: 1, 2, 4 or 8, or 0 for any size
    /// (only allowed without `datamatch`, as in KVM).
    pub size: u32,
    pub datamatch: Option<u64>,
    pub event: Arc<EventFd>,
}

/// An ioeventfd placed in an address space: the guest address it answers
/// for. Listeners receive these.
#[derive(Clone, Debug)]
pub struct IoEventFd {
    pub addr: u64,
    pub size: u32,
    pub datamatch: Option<u64>,
    pub event: Arc<EventFd>,
}

impl IoEventFd {
    /// The same registration: address, size, value and the same eventfd
    /// object (QEMU's `memory_region_ioeventfd_equal`).
    pub fn same(&self, other: &IoEventFd) -> bool {
        self.addr == other.addr
            && self.size == other.size
            && self.datamatch == other.datamatch
            && Arc::ptr_eq(&self.event, &other.event)
    }

    fn key(&self) -> (u64, u32, Option<u64>, usize) {
        (
            self.addr,
            self.size,
            self.datamatch,
            Arc::as_ptr(&self.event) as usize,
        )
    }
}

impl RegionIoEventFd {
    pub(crate) fn same(&self, other: &RegionIoEventFd) -> bool {
        self.offset == other.offset
            && self.size == other.size
            && self.datamatch == other.datamatch
            && Arc::ptr_eq(&self.event, &other.event)
    }
}

/// Where the ioeventfds of every io region land in `view`, sorted. An
/// ioeventfd counts when its whole access lies in a visible part of its
/// region (QEMU places it when its range intersects a flat range; a
/// partially hidden register cannot be matched by one access anyway).
pub(crate) fn place(tree: &MemoryTree, view: &FlatView) -> Vec<IoEventFd> {
    let mut out = Vec::new();
    for range in view.ranges() {
        if range.kind != RegionKind::Io {
            continue;
        }
        let region = tree.region_ref(range.region);
        for fd in &region.ioeventfds {
            let len = u128::from(fd.size.max(1));
            let start = range.offset_in_region as u128;
            let end = start + range.size;
            let at = fd.offset as u128;
            if at >= start && at + len <= end {
                out.push(IoEventFd {
                    addr: range.start + (fd.offset - range.offset_in_region),
                    size: fd.size,
                    datamatch: fd.datamatch,
                    event: fd.event.clone(),
                });
            }
        }
    }
    out.sort_by_key(IoEventFd::key);
    out
}

/// The ioeventfds in `old` but not `new`, and those in `new` but not `old`.
pub(crate) fn diff<'a>(
    old: &'a [IoEventFd],
    new: &'a [IoEventFd],
) -> (Vec<&'a IoEventFd>, Vec<&'a IoEventFd>) {
    let gone = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.same(o)))
        .collect();
    let added = new
        .iter()
        .filter(|n| !old.iter().any(|o| o.same(n)))
        .collect();
    (gone, added)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::memory::{MemoryError, MemoryListener, Unassigned, SIZE_2_64};

    /// One ioeventfd call: (added?, addr, size, datamatch).
    type Call = (bool, u64, u32, Option<u64>);

    /// Records the ioeventfd calls.
    struct Recorder(Arc<Mutex<Vec<Call>>>);

    impl MemoryListener for Recorder {
        fn eventfd_add(&mut self, fd: &IoEventFd) {
            self.0
                .lock()
                .unwrap()
                .push((true, fd.addr, fd.size, fd.datamatch));
        }
        fn eventfd_del(&mut self, fd: &IoEventFd) {
            self.0
                .lock()
                .unwrap()
                .push((false, fd.addr, fd.size, fd.datamatch));
        }
    }

    fn event() -> Arc<EventFd> {
        Arc::new(EventFd::new(EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn listeners_follow_the_region_through_the_view() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let dev = tree.new_io("virtio-mmio", 0x200, None).unwrap();
        tree.add_subregion(sys, 0x1000_0000, dev).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        tree.add_listener(&mem, 0, Box::new(Recorder(log.clone())))
            .unwrap();
        let q0 = event();
        tree.add_eventfd(dev, 0x50, 4, Some(0), q0.clone()).unwrap();
        assert_eq!(
            log.lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![(true, 0x1000_0050, 4, Some(0))]
        );

        // Moving the region moves the ioeventfd: deleted, then added.
        tree.set_address(dev, 0x2000_0000).unwrap();
        assert_eq!(
            log.lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![
                (false, 0x1000_0050, 4, Some(0)),
                (true, 0x2000_0050, 4, Some(0))
            ]
        );

        // An unrelated change leaves it alone.
        let ram = tree.new_ram("ram", 0x1000).unwrap();
        tree.add_subregion(sys, 0, ram).unwrap();
        assert!(log.lock().unwrap().is_empty());

        // Hidden by a higher-priority region: gone from the view.
        let cover = tree.new_io("cover", 0x1000, None).unwrap();
        tree.add_subregion_overlap(sys, 0x2000_0000, cover, 1)
            .unwrap();
        assert_eq!(
            log.lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![(false, 0x2000_0050, 4, Some(0))]
        );
        tree.del_subregion(sys, cover).unwrap();
        assert_eq!(log.lock().unwrap().len(), 1);
        log.lock().unwrap().clear();

        // Mapped a second time through an alias: two registrations.
        let alias = tree.new_alias("alias", dev, 0, 0x200).unwrap();
        tree.add_subregion(sys, 0x3000_0000, alias).unwrap();
        assert_eq!(
            log.lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![(true, 0x3000_0050, 4, Some(0))]
        );
        assert_eq!(tree.ioeventfds(&mem).unwrap().len(), 2);

        // Removal reaches every placement; a second removal is an error.
        tree.del_eventfd(dev, 0x50, 4, Some(0), &q0).unwrap();
        let mut got = log.lock().unwrap().drain(..).collect::<Vec<_>>();
        got.sort();
        assert_eq!(
            got,
            vec![
                (false, 0x2000_0050, 4, Some(0)),
                (false, 0x3000_0050, 4, Some(0))
            ]
        );
        assert!(matches!(
            tree.del_eventfd(dev, 0x50, 4, Some(0), &q0),
            Err(MemoryError::BadIoEventFd { .. })
        ));
    }

    #[test]
    fn a_new_listener_is_replayed_and_a_removed_one_told() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let dev = tree.new_io("dev", 0x100, None).unwrap();
        tree.add_subregion(sys, 0x5000, dev).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        let (a, b) = (event(), event());
        tree.add_eventfd(dev, 0x10, 0, None, a).unwrap();
        tree.add_eventfd(dev, 0x20, 2, Some(0xffff), b).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let id = tree
            .add_listener(&mem, 0, Box::new(Recorder(log.clone())))
            .unwrap();
        assert_eq!(
            log.lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![(true, 0x5010, 0, None), (true, 0x5020, 2, Some(0xffff))]
        );
        tree.remove_listener(&mem, id).unwrap();
        assert_eq!(
            log.lock().unwrap().drain(..).collect::<Vec<_>>(),
            vec![(false, 0x5010, 0, None), (false, 0x5020, 2, Some(0xffff))]
        );
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut tree = MemoryTree::new();
        let dev = tree.new_io("dev", 0x100, None).unwrap();
        let ram = tree.new_ram("ram", 0x1000).unwrap();
        let e = event();
        for (region, offset, size, data) in [
            (ram, 0, 4, None),
            (dev, 0, 3, None),
            (dev, 0, 0, Some(1)),
            (dev, 0xfe, 4, None),
            (dev, 0, 1, Some(0x100)),
        ] {
            assert!(
                matches!(
                    tree.add_eventfd(region, offset, size, data, e.clone()),
                    Err(MemoryError::BadIoEventFd { .. })
                ),
                "{offset:#x} {size} {data:?}"
            );
        }
        tree.add_eventfd(dev, 0, 8, Some(u64::MAX), e.clone())
            .unwrap();
        assert!(tree.add_eventfd(dev, 0, 8, Some(u64::MAX), e).is_err());
    }
}
