//! Memory listeners: the way accelerators (KVM memory slots, the software
//! TLB) learn how an address space's view changed.
//!
//! On every commit that changes the tree each listener gets `begin`, then a
//! `region_del` for every old range that is gone or changed, then, walking
//! the new view, `region_nop` for unchanged ranges (with `log_start` /
//! `log_stop` when only dirty logging changed) and `region_add` for new ones,
//! then `commit`. `region_del` and `log_stop` go to listeners in descending
//! priority, everything else in ascending priority, as in QEMU.

use super::flatview::{FlatRange, FlatView};
use super::ioeventfd::{self, IoEventFd};

/// Receives the changes of one address space's view. Every method has an
/// empty default, so a listener implements only what it needs.
pub trait MemoryListener: Send {
    /// A batch of changes starts.
    fn begin(&mut self) {}
    /// The batch is complete; the new view is about to be published.
    fn commit(&mut self) {}
    /// A range appeared (or changed: it was deleted first).
    fn region_add(&mut self, _range: &FlatRange) {}
    /// A range disappeared or is about to be replaced.
    fn region_del(&mut self, _range: &FlatRange) {}
    /// A range is unchanged.
    fn region_nop(&mut self, _range: &FlatRange) {}
    /// Dirty logging started for some clients on an unchanged range.
    fn log_start(&mut self, _range: &FlatRange, _old_mask: u8, _new_mask: u8) {}
    /// Dirty logging stopped for some clients on an unchanged range.
    fn log_stop(&mut self, _range: &FlatRange, _old_mask: u8, _new_mask: u8) {}
    /// An ioeventfd now answers for guest writes at `fd.addr`.
    fn eventfd_add(&mut self, _fd: &IoEventFd) {}
    /// An ioeventfd no longer answers (removed, or its region moved away).
    fn eventfd_del(&mut self, _fd: &IoEventFd) {}
}

/// Names a registered listener, for removing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ListenerId(pub(crate) u64);

struct Entry {
    id: ListenerId,
    priority: i32,
    listener: Box<dyn MemoryListener>,
}

/// The listeners of one address space, sorted by ascending priority (a new
/// listener goes after those of equal priority).
#[derive(Default)]
pub(crate) struct ListenerSet {
    entries: Vec<Entry>,
}

/// What the second pass of the diff does with one range of the new view.
enum Change<'a> {
    Add(&'a FlatRange),
    Nop {
        old: &'a FlatRange,
        new: &'a FlatRange,
    },
}

/// The exact difference between two views, as QEMU's
/// `address_space_update_topology_pass` walks it: a range present in both
/// with the same mapping is unchanged; anything else in the old view is
/// deleted and anything else in the new view is added.
fn diff<'a>(old: &'a [FlatRange], new: &'a [FlatRange]) -> (Vec<&'a FlatRange>, Vec<Change<'a>>) {
    let mut dels = Vec::new();
    let mut rest = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.same_mapping(n) => {
                rest.push(Change::Nop { old: o, new: n });
                i += 1;
                j += 1;
            }
            (Some(o), n) if n.is_none_or(|n| o.start <= n.start) => {
                dels.push(o);
                i += 1;
            }
            (_, Some(n)) => {
                rest.push(Change::Add(n));
                j += 1;
            }
            (_, None) => unreachable!("loop condition keeps one side non-empty"),
        }
    }
    (dels, rest)
}

impl ListenerSet {
    pub(crate) fn add(
        &mut self,
        id: ListenerId,
        priority: i32,
        mut listener: Box<dyn MemoryListener>,
        view: &FlatView,
        fds: &[IoEventFd],
    ) {
        listener.begin();
        for range in view.ranges() {
            listener.region_add(range);
            if range.dirty_log_mask != 0 {
                listener.log_start(range, 0, range.dirty_log_mask);
            }
        }
        listener.commit();
        for fd in fds {
            listener.eventfd_add(fd);
        }
        let at = self
            .entries
            .iter()
            .position(|e| e.priority > priority)
            .unwrap_or(self.entries.len());
        self.entries.insert(
            at,
            Entry {
                id,
                priority,
                listener,
            },
        );
    }

    pub(crate) fn remove(
        &mut self,
        id: ListenerId,
        view: &FlatView,
        fds: &[IoEventFd],
    ) -> Option<Box<dyn MemoryListener>> {
        let at = self.entries.iter().position(|e| e.id == id)?;
        let mut listener = self.entries.remove(at).listener;
        for fd in fds {
            listener.eventfd_del(fd);
        }
        listener.begin();
        for range in view.ranges() {
            listener.region_del(range);
        }
        listener.commit();
        Some(listener)
    }

    /// Tells every listener which ioeventfds went away and which appeared,
    /// after the topology update (QEMU's `address_space_update_ioeventfds`).
    pub(crate) fn update_eventfds(&mut self, old: &[IoEventFd], new: &[IoEventFd]) {
        if self.entries.is_empty() {
            return;
        }
        let (gone, added) = ioeventfd::diff(old, new);
        for fd in gone {
            for e in self.entries.iter_mut().rev() {
                e.listener.eventfd_del(fd);
            }
        }
        for fd in added {
            for e in &mut self.entries {
                e.listener.eventfd_add(fd);
            }
        }
    }

    /// Tells every listener how `old` became `new`.
    pub(crate) fn update(&mut self, old: &FlatView, new: &FlatView) {
        if self.entries.is_empty() {
            return;
        }
        let (dels, rest) = diff(old.ranges(), new.ranges());
        for e in &mut self.entries {
            e.listener.begin();
        }
        for range in dels {
            for e in self.entries.iter_mut().rev() {
                e.listener.region_del(range);
            }
        }
        for change in rest {
            match change {
                Change::Add(range) => {
                    for e in &mut self.entries {
                        e.listener.region_add(range);
                    }
                }
                Change::Nop { old, new } => {
                    for e in &mut self.entries {
                        e.listener.region_nop(new);
                    }
                    let (o, n) = (old.dirty_log_mask, new.dirty_log_mask);
                    if n & !o != 0 {
                        for e in &mut self.entries {
                            e.listener.log_start(new, o, n);
                        }
                    }
                    if o & !n != 0 {
                        for e in self.entries.iter_mut().rev() {
                            e.listener.log_stop(new, o, n);
                        }
                    }
                }
            }
        }
        for e in &mut self.entries {
            e.listener.commit();
        }
    }
}
