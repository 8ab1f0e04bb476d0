//! The region tree: an arena of regions, the operations that change it,
//! transactions, and the commit that re-renders every address space and
//! tells the listeners what changed.
//!
//! The tree is changed from one thread at a time (wrap it in a mutex to share
//! it, as QEMU relies on its big lock); readers on other threads never touch
//! it: they read the FlatView each [`AddressSpace`] publishes.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::address_space::{AddressSpace, Unassigned};
use super::flatview::{flatview_root, render, FlatView};
use super::ioeventfd::{self, IoEventFd, RegionIoEventFd};
use super::listener::{ListenerId, ListenerSet, MemoryListener};
use super::ram::{RamBacking, RamBlock};
use super::region::{Backing, IoHandler, Region, RegionId, RegionKind, RegionOps, SIZE_2_64};
use super::MemoryError;

struct SpaceEntry {
    handle: AddressSpace,
    root: RegionId,
    listeners: ListenerSet,
    /// Where the ioeventfds landed in the current view.
    ioeventfds: Vec<IoEventFd>,
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Outermost commits that found changes and re-rendered the views.
    pub updates: u64,
    /// FlatViews rendered (address spaces sharing a root share one render).
    pub renders: u64,
}

/// The guest memory model of one machine: every region, every address space.
pub struct MemoryTree {
    regions: Vec<Option<Region>>,
    spaces: Vec<SpaceEntry>,
    depth: u32,
    pending: bool,
    next_listener: u64,
    stats: TreeStats,
}

impl Default for MemoryTree {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTree {
    /// An empty tree with no address spaces.
    pub fn new() -> Self {
        MemoryTree {
            regions: Vec::new(),
            spaces: Vec::new(),
            depth: 0,
            pending: false,
            next_listener: 0,
            stats: TreeStats::default(),
        }
    }

    // ----- creating regions -------------------------------------------------

    /// A container of `size` bytes.
    pub fn new_container(&mut self, name: &str, size: u128) -> Result<RegionId, MemoryError> {
        self.insert(name, RegionKind::Container, size, Backing::None)
    }

    /// A RAM region with its own anonymous memory.
    pub fn new_ram(&mut self, name: &str, size: u64) -> Result<RegionId, MemoryError> {
        self.new_ram_with_backing(name, size, RamBacking::Anonymous)
    }

    /// A RAM region whose memory comes from `backing`.
    pub fn new_ram_with_backing(
        &mut self,
        name: &str,
        size: u64,
        backing: RamBacking,
    ) -> Result<RegionId, MemoryError> {
        let block = Arc::new(RamBlock::with_backing(size, backing)?);
        self.insert(name, RegionKind::Ram, size as u128, Backing::Ram(block))
    }

    /// A ROM region: RAM the guest cannot write. The host fills it through
    /// [`MemoryTree::ram_block`].
    pub fn new_rom(&mut self, name: &str, size: u64) -> Result<RegionId, MemoryError> {
        let block = Arc::new(RamBlock::anonymous(size)?);
        self.insert(name, RegionKind::Rom, size as u128, Backing::Ram(block))
    }

    /// A ROM device: reads come from its memory in romd mode (the default),
    /// writes always go to `ops`.
    pub fn new_romd(
        &mut self,
        name: &str,
        size: u64,
        ops: Option<Arc<dyn RegionOps>>,
    ) -> Result<RegionId, MemoryError> {
        let io = self.handler(name, ops)?;
        let ram = Arc::new(RamBlock::anonymous(size)?);
        self.insert(
            name,
            RegionKind::Romd,
            size as u128,
            Backing::Romd { ram, io },
        )
    }

    /// Device registers. With `ops` of `None` the region still claims its
    /// range and reads as unassigned.
    pub fn new_io(
        &mut self,
        name: &str,
        size: u128,
        ops: Option<Arc<dyn RegionOps>>,
    ) -> Result<RegionId, MemoryError> {
        let io = self.handler(name, ops)?;
        self.insert(name, RegionKind::Io, size, Backing::Io(io))
    }

    /// A window `[offset, offset + size)` of `target`.
    pub fn new_alias(
        &mut self,
        name: &str,
        target: RegionId,
        offset: u64,
        size: u128,
    ) -> Result<RegionId, MemoryError> {
        self.try_region(target)?;
        let id = self.insert(name, RegionKind::Alias, size, Backing::None)?;
        self.region_mut(id).alias = Some((target, offset));
        Ok(id)
    }

    fn handler(
        &self,
        name: &str,
        ops: Option<Arc<dyn RegionOps>>,
    ) -> Result<Option<IoHandler>, MemoryError> {
        let Some(ops) = ops else { return Ok(None) };
        let io = IoHandler::new(ops);
        if !io.rules.is_well_formed() {
            return Err(MemoryError::BadAccessRules {
                region: name.to_string(),
            });
        }
        Ok(Some(io))
    }

    fn insert(
        &mut self,
        name: &str,
        kind: RegionKind,
        size: u128,
        backing: Backing,
    ) -> Result<RegionId, MemoryError> {
        if size > SIZE_2_64 {
            return Err(MemoryError::SizeTooLarge {
                region: name.to_string(),
                size,
            });
        }
        let index = u32::try_from(self.regions.len()).map_err(|_| MemoryError::TooManyRegions)?;
        self.regions
            .push(Some(Region::new(name.to_string(), kind, size, backing)));
        Ok(RegionId(index))
    }

    // ----- reading regions --------------------------------------------------

    pub(crate) fn region_ref(&self, id: RegionId) -> &Region {
        // Every id stored inside the tree (children, alias targets, roots)
        // names a live region: destroy() refuses regions still referenced.
        self.regions[id.0 as usize]
            .as_ref()
            .expect("dangling region id inside the tree")
    }

    fn region_mut(&mut self, id: RegionId) -> &mut Region {
        self.regions[id.0 as usize]
            .as_mut()
            .expect("dangling region id inside the tree")
    }

    fn try_region(&self, id: RegionId) -> Result<&Region, MemoryError> {
        self.regions
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(MemoryError::NoSuchRegion(id))
    }

    /// The region's display name.
    pub fn name(&self, id: RegionId) -> Result<&str, MemoryError> {
        Ok(&self.try_region(id)?.name)
    }

    /// The region's kind.
    pub fn kind(&self, id: RegionId) -> Result<RegionKind, MemoryError> {
        Ok(self.try_region(id)?.kind)
    }

    /// The region's size in bytes (up to 2^64).
    pub fn size(&self, id: RegionId) -> Result<u128, MemoryError> {
        Ok(self.try_region(id)?.size)
    }

    /// The region's address inside its parent.
    pub fn address(&self, id: RegionId) -> Result<u64, MemoryError> {
        Ok(self.try_region(id)?.addr)
    }

    /// The region's priority among its siblings.
    pub fn priority(&self, id: RegionId) -> Result<i32, MemoryError> {
        Ok(self.try_region(id)?.priority)
    }

    /// The region's parent, if it has been added to one.
    pub fn parent(&self, id: RegionId) -> Result<Option<RegionId>, MemoryError> {
        Ok(self.try_region(id)?.parent)
    }

    /// The region's children in render order (descending priority, newest
    /// first among equals).
    pub fn children(&self, id: RegionId) -> Result<&[RegionId], MemoryError> {
        Ok(&self.try_region(id)?.children)
    }

    /// Whether the region is enabled.
    pub fn is_enabled(&self, id: RegionId) -> Result<bool, MemoryError> {
        Ok(self.try_region(id)?.enabled)
    }

    /// Whether the region itself is marked read-only.
    pub fn is_readonly(&self, id: RegionId) -> Result<bool, MemoryError> {
        Ok(self.try_region(id)?.readonly)
    }

    /// For an alias, its target and offset.
    pub fn alias_of(&self, id: RegionId) -> Result<Option<(RegionId, u64)>, MemoryError> {
        Ok(self.try_region(id)?.alias)
    }

    /// The host memory of a ram, rom or romd region.
    pub fn ram_block(&self, id: RegionId) -> Result<Arc<RamBlock>, MemoryError> {
        let r = self.try_region(id)?;
        r.backing
            .ram()
            .cloned()
            .ok_or_else(|| MemoryError::WrongKind {
                region: r.name.clone(),
                expected: "ram, rom or romd",
            })
    }

    /// The ids of all live regions, in creation order.
    pub fn region_ids(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_some())
            .map(|(i, _)| RegionId(i as u32))
    }

    /// Renders the view of `root` from scratch, without publishing it or
    /// telling listeners; for diagnostics and benchmarks.
    pub fn render_view(&self, root: RegionId) -> Result<FlatView, MemoryError> {
        self.try_region(root)?;
        Ok(render(self, flatview_root(self, root)))
    }

    /// Counters of the work commits have done.
    pub fn stats(&self) -> TreeStats {
        self.stats
    }

    // ----- changing the tree ------------------------------------------------

    /// Adds `child` to `parent` at `addr` with priority 0.
    pub fn add_subregion(
        &mut self,
        parent: RegionId,
        addr: u64,
        child: RegionId,
    ) -> Result<(), MemoryError> {
        self.add_subregion_overlap(parent, addr, child, 0)
    }

    /// Adds `child` to `parent` at `addr` with `priority`; among equal
    /// priorities the newest child wins overlaps.
    pub fn add_subregion_overlap(
        &mut self,
        parent: RegionId,
        addr: u64,
        child: RegionId,
        priority: i32,
    ) -> Result<(), MemoryError> {
        let p = self.try_region(parent)?;
        let c = self.try_region(child)?;
        if p.kind == RegionKind::Alias {
            return Err(MemoryError::AliasWithChildren {
                parent: p.name.clone(),
                child: c.name.clone(),
            });
        }
        if let Some(existing) = c.parent {
            return Err(MemoryError::AlreadyAdded {
                child: c.name.clone(),
                parent: self.region_ref(existing).name.clone(),
            });
        }
        if self.reaches(child, parent) {
            return Err(MemoryError::Cycle {
                parent: p.name.clone(),
                child: c.name.clone(),
            });
        }
        let c = self.region_mut(child);
        c.parent = Some(parent);
        c.addr = addr;
        c.priority = priority;
        self.link(parent, child);
        self.changed();
        Ok(())
    }

    /// Inserts `child` into `parent`'s render order: before the first
    /// sibling whose priority is not higher, so the newest wins ties.
    fn link(&mut self, parent: RegionId, child: RegionId) {
        let priority = self.region_ref(child).priority;
        let siblings = &self.region_ref(parent).children;
        let at = siblings
            .iter()
            .position(|s| priority >= self.region_ref(*s).priority)
            .unwrap_or(siblings.len());
        self.region_mut(parent).children.insert(at, child);
    }

    fn unlink(&mut self, parent: RegionId, child: RegionId) {
        self.region_mut(parent).children.retain(|c| *c != child);
    }

    /// Whether `to` is `from` or lies below it, through children or alias
    /// targets. Adding `from` under `to` would then make rendering loop.
    fn reaches(&self, from: RegionId, to: RegionId) -> bool {
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![from];
        while let Some(id) = todo.pop() {
            if id == to {
                return true;
            }
            if !seen.insert(id) {
                continue;
            }
            let r = self.region_ref(id);
            todo.extend(r.children.iter().copied());
            if let Some((target, _)) = r.alias {
                todo.push(target);
            }
        }
        false
    }

    /// Removes `child` from `parent`.
    pub fn del_subregion(&mut self, parent: RegionId, child: RegionId) -> Result<(), MemoryError> {
        let c = self.try_region(child)?;
        if c.parent != Some(parent) {
            return Err(MemoryError::NotAChild {
                child: c.name.clone(),
                parent: self.try_region(parent)?.name.clone(),
            });
        }
        self.unlink(parent, child);
        self.region_mut(child).parent = None;
        self.changed();
        Ok(())
    }

    /// Moves a region within its parent. Moving re-adds it, so it becomes
    /// the newest among its equal-priority siblings (as in QEMU).
    pub fn set_address(&mut self, id: RegionId, addr: u64) -> Result<(), MemoryError> {
        let r = self.try_region(id)?;
        if r.addr == addr {
            return Ok(());
        }
        let parent = r.parent;
        self.region_mut(id).addr = addr;
        if let Some(parent) = parent {
            self.unlink(parent, id);
            self.link(parent, id);
            self.changed();
        }
        Ok(())
    }

    /// Changes a region's priority, re-adding it among its siblings.
    pub fn set_priority(&mut self, id: RegionId, priority: i32) -> Result<(), MemoryError> {
        let r = self.try_region(id)?;
        let parent = r.parent;
        self.region_mut(id).priority = priority;
        if let Some(parent) = parent {
            self.unlink(parent, id);
            self.link(parent, id);
            self.changed();
        }
        Ok(())
    }

    /// Resizes a region. RAM-backed regions cannot grow past their block.
    pub fn set_size(&mut self, id: RegionId, size: u128) -> Result<(), MemoryError> {
        let r = self.try_region(id)?;
        if size > SIZE_2_64 {
            return Err(MemoryError::SizeTooLarge {
                region: r.name.clone(),
                size,
            });
        }
        if let Some(ram) = r.backing.ram() {
            if size > ram.size() as u128 {
                return Err(MemoryError::RamCannotGrow {
                    region: r.name.clone(),
                    size,
                    block: ram.size(),
                });
            }
        }
        if r.size != size {
            self.region_mut(id).size = size;
            self.changed();
        }
        Ok(())
    }

    /// Enables or disables a region and its subtree.
    pub fn set_enabled(&mut self, id: RegionId, enabled: bool) -> Result<(), MemoryError> {
        if self.try_region(id)?.enabled != enabled {
            self.region_mut(id).enabled = enabled;
            self.changed();
        }
        Ok(())
    }

    /// Marks a region (and what it contains) read-only or writable.
    pub fn set_readonly(&mut self, id: RegionId, readonly: bool) -> Result<(), MemoryError> {
        if self.try_region(id)?.readonly != readonly {
            self.region_mut(id).readonly = readonly;
            self.changed();
        }
        Ok(())
    }

    /// Switches a romd region between reading its memory (true) and sending
    /// reads to its callbacks (false).
    pub fn set_romd_mode(&mut self, id: RegionId, romd: bool) -> Result<(), MemoryError> {
        let r = self.try_region(id)?;
        if r.kind != RegionKind::Romd {
            return Err(MemoryError::WrongKind {
                region: r.name.clone(),
                expected: "romd",
            });
        }
        if r.romd_mode != romd {
            self.region_mut(id).romd_mode = romd;
            self.changed();
        }
        Ok(())
    }

    /// Points an alias at another offset of its target.
    pub fn set_alias_offset(&mut self, id: RegionId, offset: u64) -> Result<(), MemoryError> {
        let r = self.try_region(id)?;
        let Some((target, old)) = r.alias else {
            return Err(MemoryError::WrongKind {
                region: r.name.clone(),
                expected: "alias",
            });
        };
        if old != offset {
            self.region_mut(id).alias = Some((target, offset));
            self.changed();
        }
        Ok(())
    }

    /// Turns dirty logging for `client` (0..8) on or off for a RAM-backed
    /// region. Listeners get `log_start`/`log_stop` for its ranges.
    pub fn set_dirty_log(&mut self, id: RegionId, client: u8, on: bool) -> Result<(), MemoryError> {
        let r = self.try_region(id)?;
        if r.backing.ram().is_none() {
            return Err(MemoryError::WrongKind {
                region: r.name.clone(),
                expected: "ram, rom or romd",
            });
        }
        if client >= 8 {
            return Err(MemoryError::BadLogClient(client));
        }
        let bit = 1u8 << client;
        let mask = if on {
            r.dirty_log_mask | bit
        } else {
            r.dirty_log_mask & !bit
        };
        if mask != r.dirty_log_mask {
            self.region_mut(id).dirty_log_mask = mask;
            self.changed();
        }
        Ok(())
    }

    /// Frees a region that nothing refers to any more: no parent, no
    /// children, no alias pointing at it, not an address space root.
    pub fn destroy(&mut self, id: RegionId) -> Result<(), MemoryError> {
        let r = self.try_region(id)?;
        let busy = r.parent.is_some()
            || !r.children.is_empty()
            || self.spaces.iter().any(|s| s.root == id)
            || self
                .regions
                .iter()
                .flatten()
                .any(|o| o.alias.is_some_and(|(t, _)| t == id));
        if busy {
            return Err(MemoryError::InUse {
                region: r.name.clone(),
            });
        }
        self.regions[id.0 as usize] = None;
        Ok(())
    }

    // ----- ioeventfds ---------------------------------------------------------

    /// Makes guest writes of `size` bytes (0: any size) at `offset` of io
    /// region `id`, of value `datamatch` (None: any value), signal `event`
    /// (QEMU's `memory_region_add_eventfd`). Takes effect at the next commit.
    pub fn add_eventfd(
        &mut self,
        id: RegionId,
        offset: u64,
        size: u32,
        datamatch: Option<u64>,
        event: Arc<EventFd>,
    ) -> Result<(), MemoryError> {
        let region = self.try_region(id)?;
        let bad = |reason: &str| MemoryError::BadIoEventFd {
            region: region.name.clone(),
            offset,
            reason: reason.to_string(),
        };
        if region.kind != RegionKind::Io {
            return Err(bad("ioeventfds go on io regions"));
        }
        if !matches!(size, 0 | 1 | 2 | 4 | 8) {
            return Err(bad("size must be 0 (any), 1, 2, 4 or 8"));
        }
        if size == 0 && datamatch.is_some() {
            return Err(bad("matching a value needs an access size"));
        }
        if offset as u128 + u128::from(size.max(1)) > region.size {
            return Err(bad("outside the region"));
        }
        if let Some(v) = datamatch {
            if size < 8 && v >> (size * 8) != 0 {
                return Err(bad("the value does not fit the access size"));
            }
        }
        let fd = RegionIoEventFd {
            offset,
            size,
            datamatch,
            event,
        };
        if region.ioeventfds.iter().any(|f| f.same(&fd)) {
            return Err(bad("already registered"));
        }
        self.region_mut(id).ioeventfds.push(fd);
        self.changed();
        Ok(())
    }

    /// Removes an ioeventfd added with the same arguments.
    pub fn del_eventfd(
        &mut self,
        id: RegionId,
        offset: u64,
        size: u32,
        datamatch: Option<u64>,
        event: &Arc<EventFd>,
    ) -> Result<(), MemoryError> {
        let region = self.try_region(id)?;
        let fd = RegionIoEventFd {
            offset,
            size,
            datamatch,
            event: event.clone(),
        };
        let Some(at) = region.ioeventfds.iter().position(|f| f.same(&fd)) else {
            return Err(MemoryError::BadIoEventFd {
                region: region.name.clone(),
                offset,
                reason: "no such ioeventfd".into(),
            });
        };
        self.region_mut(id).ioeventfds.remove(at);
        self.changed();
        Ok(())
    }

    /// Where the ioeventfds of `space` currently land.
    pub fn ioeventfds(&self, space: &AddressSpace) -> Result<&[IoEventFd], MemoryError> {
        Ok(&self.space(space)?.ioeventfds)
    }

    // ----- transactions -----------------------------------------------------

    /// Opens a (possibly nested) transaction: views are recomputed once,
    /// when the outermost transaction commits.
    pub fn begin(&mut self) {
        self.depth += 1;
    }

    /// Closes a transaction; the outermost one publishes the new views.
    pub fn commit(&mut self) -> Result<(), MemoryError> {
        if self.depth == 0 {
            return Err(MemoryError::NoTransaction);
        }
        self.depth -= 1;
        self.publish_if_outermost();
        Ok(())
    }

    /// Runs `f` inside a transaction.
    pub fn transaction<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let outer = self.depth;
        self.begin();
        let result = f(self);
        // Restore the depth even if `f` committed more than it began.
        self.depth = outer;
        self.publish_if_outermost();
        result
    }

    /// Records a change; outside any transaction it takes effect at once.
    fn changed(&mut self) {
        self.pending = true;
        self.publish_if_outermost();
    }

    /// Outside every transaction, renders and publishes pending changes.
    fn publish_if_outermost(&mut self) {
        if self.depth == 0 && self.pending {
            self.pending = false;
            self.update_views();
        }
    }

    fn update_views(&mut self) {
        self.stats.updates += 1;
        let mut rendered: Vec<(Option<RegionId>, Arc<FlatView>)> = Vec::new();
        let mut views = Vec::with_capacity(self.spaces.len());
        for space in &self.spaces {
            let root = flatview_root(self, space.root);
            let view = match rendered.iter().find(|(r, _)| *r == root) {
                Some((_, view)) => view.clone(),
                None => {
                    self.stats.renders += 1;
                    let view = Arc::new(render(self, root));
                    rendered.push((root, view.clone()));
                    view
                }
            };
            views.push(view);
        }
        let placed: Vec<Vec<IoEventFd>> = views
            .iter()
            .map(|view| ioeventfd::place(self, view))
            .collect();
        for ((space, view), fds) in self.spaces.iter_mut().zip(views).zip(placed) {
            let old = space.handle.view();
            space.listeners.update(&old, &view);
            space.handle.publish(view);
            space.listeners.update_eventfds(&space.ioeventfds, &fds);
            space.ioeventfds = fds;
        }
    }

    // ----- address spaces and listeners -------------------------------------

    /// Creates an address space over `root`. `unassigned` says what reads of
    /// addresses nothing claims return (0 for memory, all-ones for x86 I/O).
    pub fn add_address_space(
        &mut self,
        name: &str,
        root: RegionId,
        unassigned: Unassigned,
    ) -> Result<AddressSpace, MemoryError> {
        self.try_region(root)?;
        let handle = AddressSpace::new(self.spaces.len(), name, unassigned);
        let froot = flatview_root(self, root);
        // Share the view of an address space over the same memory, unless a
        // transaction has changes that view does not show yet.
        let existing = self
            .spaces
            .iter()
            .map(|s| s.handle.view())
            .find(|view| !self.pending && view.root == froot);
        let view = match existing {
            Some(view) => view,
            None => {
                self.stats.renders += 1;
                Arc::new(render(self, froot))
            }
        };
        let ioeventfds = ioeventfd::place(self, &view);
        handle.publish(view);
        self.spaces.push(SpaceEntry {
            handle: handle.clone(),
            root,
            listeners: ListenerSet::default(),
            ioeventfds,
        });
        Ok(handle)
    }

    /// For every io region with a device: its name and how many accesses
    /// were dispatched to it (all address spaces together), in region
    /// creation order.
    pub fn io_access_counts(&self) -> Vec<(String, u64)> {
        self.regions
            .iter()
            .flatten()
            .filter_map(|r| Some((r.name.clone(), r.backing.io()?.accesses())))
            .collect()
    }

    /// The address spaces in creation order.
    pub fn address_spaces(&self) -> impl Iterator<Item = &AddressSpace> + '_ {
        self.spaces.iter().map(|s| &s.handle)
    }

    /// The root region of an address space.
    pub fn address_space_root(&self, space: &AddressSpace) -> Result<RegionId, MemoryError> {
        Ok(self.space(space)?.root)
    }

    fn space(&self, space: &AddressSpace) -> Result<&SpaceEntry, MemoryError> {
        self.spaces
            .get(space.index())
            .filter(|s| s.handle.same(space))
            .ok_or_else(|| MemoryError::NoSuchAddressSpace(space.name().to_string()))
    }

    /// Registers a listener on an address space. It is first replayed the
    /// current view as additions. Listeners of lower `priority` see
    /// additions first and deletions last.
    pub fn add_listener(
        &mut self,
        space: &AddressSpace,
        priority: i32,
        listener: Box<dyn MemoryListener>,
    ) -> Result<ListenerId, MemoryError> {
        self.space(space)?;
        let id = ListenerId(self.next_listener);
        self.next_listener += 1;
        let entry = &mut self.spaces[space.index()];
        let view = entry.handle.view();
        entry
            .listeners
            .add(id, priority, listener, &view, &entry.ioeventfds);
        Ok(id)
    }

    /// Unregisters a listener; it is told that every range is gone.
    pub fn remove_listener(
        &mut self,
        space: &AddressSpace,
        id: ListenerId,
    ) -> Result<Box<dyn MemoryListener>, MemoryError> {
        self.space(space)?;
        let entry = &mut self.spaces[space.index()];
        let view = entry.handle.view();
        entry
            .listeners
            .remove(id, &view, &entry.ioeventfds)
            .ok_or(MemoryError::NoSuchListener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemTxResult;

    #[test]
    fn address_spaces_over_the_same_memory_share_a_view() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let ram = tree.new_ram("ram", 0x1000).unwrap();
        tree.add_subregion(sys, 0, ram).unwrap();
        let whole = tree.new_alias("cpu-view", sys, 0, SIZE_2_64).unwrap();
        let a = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        let b = tree
            .add_address_space("cpu", whole, Unassigned::Zero)
            .unwrap();
        assert!(Arc::ptr_eq(&a.view(), &b.view()));
        let renders = tree.stats().renders;
        tree.set_address(ram, 0x1000).unwrap();
        assert!(Arc::ptr_eq(&a.view(), &b.view()));
        assert_eq!(tree.stats().renders, renders + 1);
    }

    #[test]
    fn structural_mistakes_are_errors() {
        let mut tree = MemoryTree::new();
        let a = tree.new_container("a", 0x100).unwrap();
        let b = tree.new_container("b", 0x100).unwrap();
        let r = tree.new_ram("r", 0x100).unwrap();
        let w = tree.new_alias("w", a, 0, 0x100).unwrap();
        tree.add_subregion(a, 0, r).unwrap();
        assert!(matches!(
            tree.add_subregion(b, 0, r),
            Err(MemoryError::AlreadyAdded { .. })
        ));
        assert!(matches!(
            tree.add_subregion(a, 0, a),
            Err(MemoryError::Cycle { .. })
        ));
        assert!(matches!(
            tree.add_subregion(a, 0, w),
            Err(MemoryError::Cycle { .. })
        ));
        assert!(matches!(
            tree.add_subregion(w, 0, b),
            Err(MemoryError::AliasWithChildren { .. })
        ));
        assert!(matches!(
            tree.set_size(r, 0x200),
            Err(MemoryError::RamCannotGrow { .. })
        ));
        assert!(matches!(
            tree.new_io("big", SIZE_2_64 + 1, None),
            Err(MemoryError::SizeTooLarge { .. })
        ));
        assert!(matches!(tree.destroy(a), Err(MemoryError::InUse { .. })));
        assert!(matches!(
            tree.del_subregion(b, r),
            Err(MemoryError::NotAChild { .. })
        ));
        tree.del_subregion(a, r).unwrap();
        tree.destroy(r).unwrap();
        assert!(matches!(tree.name(r), Err(MemoryError::NoSuchRegion(_))));
        assert!(matches!(tree.commit(), Err(MemoryError::NoTransaction)));
    }

    #[test]
    fn moving_makes_a_region_the_newest_sibling() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let first = tree.new_io("first", 0x1000, None).unwrap();
        let second = tree.new_io("second", 0x1000, None).unwrap();
        tree.add_subregion(sys, 0, first).unwrap();
        tree.add_subregion(sys, 0, second).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        assert_eq!(mem.view().lookup(0).unwrap().region, second);
        tree.set_address(first, 0x800).unwrap();
        tree.set_address(first, 0).unwrap();
        assert_eq!(mem.view().lookup(0).unwrap().region, first);
    }

    /// A reader thread dispatching through the published view never sees a
    /// hole while the writer remaps an alias back and forth, because each
    /// commit publishes a complete view at once.
    #[test]
    fn readers_never_see_a_transient_hole() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        let ram = tree.new_ram("ram", 0x4000).unwrap();
        tree.ram_block(ram)
            .unwrap()
            .write(0, &[0x11; 0x2000])
            .unwrap();
        tree.ram_block(ram)
            .unwrap()
            .write(0x2000, &[0x22; 0x2000])
            .unwrap();
        let win = tree.new_alias("win", ram, 0, 0x2000).unwrap();
        tree.add_subregion(sys, 0x10000, win).unwrap();
        let mem = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();

        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        // Reads of each value so far, so the writer keeps remapping until
        // the reader has really raced with it.
        let seen: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let reader = {
            let (mem, stop, seen) = (mem.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (v, r) = mem.read(0x10800, 1);
                    assert_eq!(r, MemTxResult::Ok, "hole seen during a remap");
                    assert!(v == 0x11 || v == 0x22, "unexpected byte {v:#x}");
                    seen[(v == 0x22) as usize].fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let mut i = 0u64;
        while i < 2000
            || seen[0].load(Ordering::Relaxed) < 100
            || seen[1].load(Ordering::Relaxed) < 100
        {
            assert!(i < 50_000_000, "reader thread made no progress");
            if reader.is_finished() {
                break;
            }
            i += 1;
            // Delete and re-add inside one transaction, as a remap does.
            tree.transaction(|t| {
                t.del_subregion(sys, win).unwrap();
                t.set_alias_offset(win, (i % 2) * 0x2000).unwrap();
                t.add_subregion(sys, 0x10000, win).unwrap();
            });
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader saw a hole");
    }
}
