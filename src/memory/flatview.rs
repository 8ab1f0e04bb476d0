//! Flattening a region tree into a FlatView: the sorted, disjoint list of
//! ranges an address space resolves to, rendered exactly as the contract's
//! "Rendering a view" section says.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;

use super::region::{Backing, RegionId, RegionKind, SIZE_2_64};
use super::tree::MemoryTree;

/// One range of a FlatView: `[start, start + size)` of the address space maps
/// to `offset_in_region` of the leaf `region`.
#[derive(Clone, Debug)]
pub struct FlatRange {
    /// First address (always below 2^64).
    pub start: u64,
    /// Length in bytes, up to 2^64.
    pub size: u128,
    /// The terminating region that answers for this range.
    pub region: RegionId,
    /// The leaf's kind (ram, rom, romd or io).
    pub kind: RegionKind,
    /// Offset of `start` within the leaf.
    pub offset_in_region: u64,
    /// Read-only, from the leaf or inherited from a container or alias.
    pub readonly: bool,
    /// The leaf's romd mode (romd regions only; true otherwise).
    pub romd_mode: bool,
    /// Dirty-log clients active on the leaf.
    pub dirty_log_mask: u8,
    /// What the leaf is backed by, for dispatch and accelerators.
    pub backing: Backing,
}

impl FlatRange {
    /// One past the last address.
    pub fn end(&self) -> u128 {
        self.start as u128 + self.size
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && (addr as u128) < self.end()
    }

    /// QEMU's `flatrange_equal`: the same mapping of the same addresses.
    /// Listeners see such a range as unchanged (`region_nop`).
    pub fn same_mapping(&self, other: &FlatRange) -> bool {
        self.start == other.start
            && self.size == other.size
            && self.region == other.region
            && self.offset_in_region == other.offset_in_region
            && self.readonly == other.readonly
            && self.romd_mode == other.romd_mode
    }

    /// Whether `next` continues this range and can be merged into it.
    fn can_merge(&self, next: &FlatRange) -> bool {
        self.end() == next.start as u128
            && self.region == next.region
            && self.offset_in_region as u128 + self.size == next.offset_in_region as u128
            && self.readonly == next.readonly
            && self.romd_mode == next.romd_mode
            && self.dirty_log_mask == next.dirty_log_mask
    }
}

/// The rendered view of one address space.
#[derive(Debug)]
pub struct FlatView {
    /// The region the view was rendered from (see [`flatview_root`]).
    pub(crate) root: Option<RegionId>,
    pub(crate) ranges: Vec<FlatRange>,
    /// `ranges[i].start` and the last address of `ranges[i]`, kept apart so
    /// a lookup touches only dense arrays of 8-byte keys, never the ranges.
    pub(crate) starts: Vec<u64>,
    pub(crate) lasts: Vec<u64>,
    /// Index of the range that answered the last lookup.
    pub(crate) mru: AtomicUsize,
}

impl FlatView {
    /// An empty view (nothing mapped).
    pub fn empty() -> Self {
        FlatView::from_ranges(None, Vec::new())
    }

    pub(crate) fn from_ranges(root: Option<RegionId>, ranges: Vec<FlatRange>) -> Self {
        let starts = ranges.iter().map(|r| r.start).collect();
        // A range is never empty and ends at or below 2^64.
        let lasts = ranges.iter().map(|r| (r.end() - 1) as u64).collect();
        FlatView {
            root,
            ranges,
            starts,
            lasts,
            mru: AtomicUsize::new(0),
        }
    }

    /// The ranges, sorted by address and disjoint.
    pub fn ranges(&self) -> &[FlatRange] {
        &self.ranges
    }

    /// The region this view was rendered from, `None` when nothing is
    /// enabled under the address space's root.
    pub fn root(&self) -> Option<RegionId> {
        self.root
    }
}

/// Where rendering an address space's root may start: QEMU's
/// `memory_region_get_flatview_root`. Aliases that show all of their target
/// from offset 0, and containers whose only enabled child covers them from
/// address 0, are skipped, so address spaces over the same memory share one
/// view. `None` means nothing under the root is enabled.
pub(crate) fn flatview_root(tree: &MemoryTree, mut id: RegionId) -> Option<RegionId> {
    loop {
        let r = tree.region_ref(id);
        if !r.enabled {
            return None;
        }
        // Unlike QEMU, never skip a read-only region: its flag must reach
        // the ranges below it (contract rule 6).
        if r.readonly {
            return Some(id);
        }
        if let Some((target, offset)) = r.alias {
            if offset == 0 && r.size >= tree.region_ref(target).size {
                id = target;
                continue;
            }
            return Some(id);
        }
        if r.kind.terminates() {
            return Some(id);
        }
        let mut enabled = r.children.iter().filter(|c| tree.region_ref(**c).enabled);
        match (enabled.next(), enabled.next()) {
            (None, _) => return None,
            (Some(only), None) => {
                let child = tree.region_ref(*only);
                if child.addr == 0 && r.size >= child.size {
                    id = *only;
                    continue;
                }
                return Some(id);
            }
            _ => return Some(id),
        }
    }
}

/// A half-open window `[start, end)` of the address space.
#[derive(Clone, Copy)]
struct Window {
    start: u128,
    end: u128,
}

enum Step {
    /// Render a region (and its subtree) whose parent starts at `base`.
    Enter {
        id: RegionId,
        base: i128,
        clip: Window,
        readonly: bool,
    },
    /// After its children: let a terminating region fill the gaps left in
    /// `clip`; `base` is the region's own start.
    Fill {
        id: RegionId,
        base: i128,
        clip: Window,
        readonly: bool,
    },
}

/// Renders the tree under `root` into a merged FlatView.
///
/// Works with an explicit stack rather than recursion, so a deep tree from a
/// map file cannot overflow a thread's stack. Gap filling asks an ordered map
/// of what is already covered, so each region costs O(log n) plus the ranges
/// it actually touches, not a scan of the whole view as in QEMU.
pub(crate) fn render(tree: &MemoryTree, root: Option<RegionId>) -> FlatView {
    // What is covered so far: start -> (end, index into `pieces`). Kept
    // small so the ordered map stays cache-friendly; the ranges themselves
    // go to `pieces` in the order they are rendered.
    let mut covered: BTreeMap<u64, (u128, u32)> = BTreeMap::new();
    let mut pieces: Vec<FlatRange> = Vec::new();
    let mut stack = Vec::new();
    if let Some(root) = root {
        // A region's address only means something inside its parent; the
        // root of a view starts at 0 whatever its address elsewhere (QEMU
        // adds it, so moving a parentless root shifts its view only at the
        // next unrelated commit).
        stack.push(Step::Enter {
            id: root,
            base: -(tree.region_ref(root).addr as i128),
            clip: Window {
                start: 0,
                end: SIZE_2_64,
            },
            readonly: false,
        });
    }
    let mut gaps = Vec::new();
    while let Some(step) = stack.pop() {
        match step {
            Step::Enter {
                id,
                base,
                clip,
                readonly,
            } => {
                let r = tree.region_ref(id);
                if !r.enabled {
                    continue;
                }
                let base = base + r.addr as i128;
                let readonly = readonly || r.readonly;
                let start = base.max(clip.start as i128);
                let end = (base + r.size as i128).min(clip.end as i128);
                if start >= end {
                    continue;
                }
                // Both ends lie inside the previous clip, so within [0, 2^64].
                let clip = Window {
                    start: start as u128,
                    end: end as u128,
                };
                if let Some((target, offset)) = r.alias {
                    let target_addr = tree.region_ref(target).addr as i128;
                    stack.push(Step::Enter {
                        id: target,
                        base: base - target_addr - offset as i128,
                        clip,
                        readonly,
                    });
                    continue;
                }
                if r.kind.terminates() {
                    stack.push(Step::Fill {
                        id,
                        base,
                        clip,
                        readonly,
                    });
                }
                // Pushed in reverse so the first child in render order is
                // rendered first and wins overlaps.
                for &child in r.children.iter().rev() {
                    stack.push(Step::Enter {
                        id: child,
                        base,
                        clip,
                        readonly,
                    });
                }
            }
            Step::Fill {
                id,
                base,
                clip,
                readonly,
            } => {
                find_gaps(&covered, clip, &mut gaps);
                let r = tree.region_ref(id);
                for gap in gaps.drain(..) {
                    let offset = (gap.start as i128 - base) as u64;
                    covered.insert(gap.start as u64, (gap.end, pieces.len() as u32));
                    pieces.push(FlatRange {
                        start: gap.start as u64,
                        size: gap.end - gap.start,
                        region: id,
                        kind: r.kind,
                        offset_in_region: offset,
                        readonly,
                        romd_mode: r.kind != RegionKind::Romd || r.romd_mode,
                        dirty_log_mask: r.dirty_log_mask,
                        backing: r.backing.clone(),
                    });
                }
            }
        }
    }
    // Put the pieces in address order (moving each once), then merge.
    let mut slots: Vec<Option<FlatRange>> = pieces.into_iter().map(Some).collect();
    let ordered = covered
        .into_values()
        .filter_map(|(_, index)| slots[index as usize].take());
    FlatView::from_ranges(root, merge(ordered))
}

/// Appends to `gaps` the parts of `clip` that nothing in `covered` claims.
fn find_gaps(covered: &BTreeMap<u64, (u128, u32)>, clip: Window, gaps: &mut Vec<Window>) {
    // clip.start < clip.end <= 2^64, so clip.start fits a u64.
    let first = clip.start as u64;
    let mut pos = clip.start;
    if let Some((_, &(end, _))) = covered.range(..first).next_back() {
        pos = pos.max(end);
    }
    for (&start, &(end, _)) in covered.range(first..) {
        let start = start as u128;
        if start >= clip.end || pos >= clip.end {
            break;
        }
        if start > pos {
            gaps.push(Window {
                start: pos,
                end: start,
            });
        }
        pos = pos.max(end);
    }
    if pos < clip.end {
        gaps.push(Window {
            start: pos,
            end: clip.end,
        });
    }
}

/// Merges neighbours that continue each other (QEMU's `flatview_simplify`).
fn merge(ranges: impl Iterator<Item = FlatRange>) -> Vec<FlatRange> {
    let mut out: Vec<FlatRange> = Vec::new();
    for range in ranges {
        if let Some(last) = out.last_mut() {
            if last.can_merge(&range) {
                last.size += range.size;
                continue;
            }
        }
        out.push(range);
    }
    out
}
