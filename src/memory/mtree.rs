//! `info mtree` and `info mtree -f`: the tree and the flat views as text, in
//! QEMU's format (`mtree_info` in QEMU's memory.c), with one difference the
//! contract asks for: containers print their type as `container`, not `i/o`.
//!
//! Where QEMU walks hash tables (address spaces grouped by root, flat views)
//! the order here is the order the address spaces were created in, so the
//! output is deterministic.

use std::fmt::Write;
use std::sync::Arc;

use super::flatview::FlatView;
use super::region::{RegionId, RegionKind};
use super::tree::MemoryTree;

/// Options of `info mtree`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MtreeOptions {
    /// `-f`: print the flat views instead of the tree.
    pub flatview: bool,
    /// `-D`: also print disabled regions (marked `[disabled]`).
    pub disabled: bool,
}

/// The last address of a region of `size` bytes starting at 0, as QEMU's
/// `MR_SIZE`: size - 1, or 0 for an empty region.
fn mr_size(size: u128) -> u64 {
    if size == 0 {
        0
    } else {
        (size - 1) as u64
    }
}

/// QEMU's `memory_region_type`, with `container` for containers.
fn region_type(tree: &MemoryTree, mut id: RegionId) -> &'static str {
    loop {
        let r = tree.region_ref(id);
        match r.kind {
            // Alias chains end: the tree rejects cycles.
            RegionKind::Alias => match r.alias {
                Some((target, _)) => id = target,
                None => return "i/o",
            },
            RegionKind::Container => return "container",
            RegionKind::Io => return "i/o",
            RegionKind::Romd => return if r.romd_mode { "romd" } else { "i/o" },
            RegionKind::Ram | RegionKind::Rom => return if r.readonly { "rom" } else { "ram" },
        }
    }
}

/// `info mtree` followed by `info mtree -f`: what `ember run
/// --print-mtree` prints for every machine.
pub fn mtree_and_flatviews_text(tree: &MemoryTree) -> String {
    let mut text = mtree_text(tree, MtreeOptions::default());
    text.push_str(&mtree_text(
        tree,
        MtreeOptions {
            flatview: true,
            disabled: false,
        },
    ));
    text
}

/// The whole `info mtree` text.
pub fn mtree_text(tree: &MemoryTree, options: MtreeOptions) -> String {
    if options.flatview {
        flat_text(tree)
    } else {
        tree_text(tree, options.disabled)
    }
}

fn tree_text(tree: &MemoryTree, disabled: bool) -> String {
    let mut out = String::new();
    // Address spaces over the same root region are printed together, their
    // names sorted.
    let mut groups: Vec<(RegionId, Vec<&str>)> = Vec::new();
    for space in tree.address_spaces() {
        let Ok(root) = tree.address_space_root(space) else {
            continue;
        };
        match groups.iter_mut().find(|(r, _)| *r == root) {
            Some((_, names)) => names.push(space.name()),
            None => groups.push((root, vec![space.name()])),
        }
    }
    let mut aliased: Vec<RegionId> = Vec::new();
    for (root, mut names) in groups {
        names.sort_unstable();
        for name in names {
            let _ = writeln!(out, "address-space: {name}");
        }
        print_region(tree, &mut out, root, &mut aliased, disabled);
        out.push('\n');
    }
    // Regions reached through aliases, in the order they were first met;
    // printing them may meet more.
    let mut i = 0;
    while let Some(&id) = aliased.get(i) {
        let _ = writeln!(out, "memory-region: {}", tree.region_ref(id).name);
        print_region(tree, &mut out, id, &mut aliased, disabled);
        out.push('\n');
        i += 1;
    }
    out
}

/// QEMU's `mtree_print_mr`, with an explicit stack instead of recursion so
/// that a deeply nested tree cannot overflow the thread's stack.
fn print_region(
    tree: &MemoryTree,
    out: &mut String,
    top: RegionId,
    aliased: &mut Vec<RegionId>,
    disabled: bool,
) {
    // (region, indent level, base address of its parent)
    let mut stack = vec![(top, 1usize, 0u64)];
    while let Some((id, level, base)) = stack.pop() {
        let r = tree.region_ref(id);
        let start = base.wrapping_add(r.addr);
        let end = start.wrapping_add(mr_size(r.size));
        if start < base || end < start {
            out.push_str("[DETECTED OVERFLOW!] ");
        }
        let shown = r.enabled || disabled;
        if shown {
            for _ in 0..level {
                out.push_str("  ");
            }
            let _ = write!(
                out,
                "{start:016x}-{end:016x} (prio {}, {}): ",
                r.priority,
                region_type(tree, id)
            );
        }
        if let Some((target, offset)) = r.alias {
            if !aliased.contains(&target) {
                aliased.push(target);
            }
            if shown {
                let _ = write!(
                    out,
                    "alias {} @{} {offset:016x}-{:016x}",
                    r.name,
                    tree.region_ref(target).name,
                    offset.wrapping_add(mr_size(r.size))
                );
            }
        } else if shown {
            out.push_str(&r.name);
        }
        if shown {
            if !r.enabled {
                out.push_str(" [disabled]");
            }
            out.push('\n');
        }
        // Children by address, then by descending priority; a stable sort
        // keeps render order among equals, as QEMU's insertion does.
        let mut children = r.children.clone();
        children.sort_by(|a, b| {
            let (a, b) = (tree.region_ref(*a), tree.region_ref(*b));
            a.addr.cmp(&b.addr).then(b.priority.cmp(&a.priority))
        });
        // Reversed onto the stack so the first child is printed first.
        stack.extend(children.into_iter().rev().map(|c| (c, level + 1, start)));
    }
}

fn flat_text(tree: &MemoryTree) -> String {
    let mut out = String::new();
    // Each distinct view with the (name, root) of the address spaces on it.
    type SpacesOfView = (Arc<FlatView>, Vec<(String, RegionId)>);
    let mut views: Vec<SpacesOfView> = Vec::new();
    for space in tree.address_spaces() {
        let Ok(root) = tree.address_space_root(space) else {
            continue;
        };
        let view = space.view();
        let entry = (space.name().to_string(), root);
        match views.iter_mut().find(|(v, _)| Arc::ptr_eq(v, &view)) {
            Some((_, spaces)) => spaces.push(entry),
            None => views.push((view, vec![entry])),
        }
    }
    for (n, (view, spaces)) in views.iter().enumerate() {
        let _ = writeln!(out, "FlatView #{n}");
        for (name, root) in spaces {
            let r = tree.region_ref(*root);
            let _ = write!(out, " AS \"{name}\", root: {}", r.name);
            if let Some((target, _)) = r.alias {
                let _ = write!(out, ", alias {}", tree.region_ref(target).name);
            }
            out.push('\n');
        }
        let root_name = view.root().map_or("(none)", |r| &tree.region_ref(r).name);
        let _ = writeln!(out, " Root memory region: {root_name}");
        if view.ranges().is_empty() {
            out.push_str("  No rendered FlatView\n\n");
            continue;
        }
        for range in view.ranges() {
            let leaf = tree.region_ref(range.region);
            let ty = if range.readonly {
                "rom"
            } else {
                region_type(tree, range.region)
            };
            let _ = write!(
                out,
                "  {:016x}-{:016x} (prio {}, {ty}): {}",
                range.start,
                range.start.wrapping_add(mr_size(range.size)),
                leaf.priority,
                leaf.name
            );
            if range.offset_in_region != 0 {
                let _ = write!(out, " @{:016x}", range.offset_in_region);
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Unassigned, SIZE_2_64};

    #[test]
    fn types_follow_the_region_state() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("sys", SIZE_2_64).unwrap();
        let flash = tree.new_romd("flash", 0x1000, None).unwrap();
        let ram = tree.new_ram("ram", 0x1000).unwrap();
        let win = tree.new_alias("win", ram, 0x800, 0x800).unwrap();
        tree.add_subregion(sys, 0, flash).unwrap();
        tree.add_subregion(sys, 0x1000, ram).unwrap();
        tree.add_subregion(sys, 0x10000, win).unwrap();
        tree.add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        let text = mtree_text(&tree, MtreeOptions::default());
        assert!(text.contains("0000000000000000-0000000000000fff (prio 0, romd): flash\n"));
        assert!(text.contains(
            "0000000000010000-00000000000107ff (prio 0, ram): alias win @ram 0000000000000800-0000000000000fff\n"
        ));
        tree.set_romd_mode(flash, false).unwrap();
        tree.set_readonly(ram, true).unwrap();
        let text = mtree_text(&tree, MtreeOptions::default());
        assert!(text.contains("(prio 0, i/o): flash\n"), "{text}");
        assert!(text.contains("(prio 0, rom): ram\n"), "{text}");
        assert!(text.contains("(prio 0, rom): alias win @ram"), "{text}");
        let flat = mtree_text(
            &tree,
            MtreeOptions {
                flatview: true,
                disabled: false,
            },
        );
        assert!(
            flat.contains(
                "  0000000000010000-00000000000107ff (prio 0, rom): ram @0000000000000800\n"
            ),
            "{flat}"
        );
    }

    #[test]
    fn empty_view_and_alias_root() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("sys", SIZE_2_64).unwrap();
        let ram = tree.new_ram("ram", 0x1000).unwrap();
        let view = tree.new_alias("view", ram, 0, 0x1000).unwrap();
        tree.add_address_space("empty", sys, Unassigned::Zero)
            .unwrap();
        tree.add_address_space("aliased", view, Unassigned::Zero)
            .unwrap();
        let flat = mtree_text(
            &tree,
            MtreeOptions {
                flatview: true,
                disabled: false,
            },
        );
        let want = "FlatView #0\n AS \"empty\", root: sys\n Root memory region: (none)\n  No rendered FlatView\n\n\
                    FlatView #1\n AS \"aliased\", root: view, alias ram\n Root memory region: ram\n  0000000000000000-0000000000000fff (prio 0, ram): ram\n\n";
        assert_eq!(flat, want);
    }

    #[test]
    fn overflow_is_flagged_like_qemu() {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("sys", SIZE_2_64).unwrap();
        let io = tree.new_io("wrap", 0x2000, None).unwrap();
        tree.add_subregion(sys, u64::MAX - 0xfff, io).unwrap();
        tree.add_address_space("memory", sys, Unassigned::Zero)
            .unwrap();
        let text = mtree_text(&tree, MtreeOptions::default());
        assert!(
            text.contains(
                "[DETECTED OVERFLOW!]     fffffffffffff000-0000000000000fff (prio 0, i/o): wrap\n"
            ),
            "{text}"
        );
    }
}
