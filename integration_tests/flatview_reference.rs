//! Checks the FlatView renderer against an independent, naive reference.
//!
//! Random region trees are built through the public `MemoryTree` API and
//! mirrored here as plain data. The reference resolves one address at a time
//! by walking that data exactly as the contract's "Rendering a view" section
//! says (`shared/docs/memory-model.md`); it shares no code with the crate's
//! renderer. Every address where the answer can change (each boundary of
//! each region instance, reached through aliases too, and each boundary of
//! the rendered view) is probed, plus random addresses, so when the walk is
//! not capped the comparison covers the whole 2^64 space: between two
//! consecutive probes both sides map addresses linearly to one leaf.
//!
//! The hand-written tests below name single contract rules.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use ember::memory::{FlatView, MemoryTree, RegionId, RegionKind, Unassigned, SIZE_2_64};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

// ----- the mirrored tree -----------------------------------------------------

/// One region as the test asked the API to build it.
#[derive(Clone, Debug)]
struct Node {
    id: RegionId,
    name: String,
    kind: RegionKind,
    size: u128,
    /// Address within the parent; 0 while the region has no parent.
    addr: u64,
    priority: i32,
    enabled: bool,
    readonly: bool,
    romd_mode: bool,
    parent: Option<usize>,
    /// Children as `(index, add sequence number)`, in the order added.
    children: Vec<(usize, u64)>,
    /// For aliases: the target's index and the offset within it.
    alias: Option<(usize, u64)>,
}

/// The whole tree as plain data; nodes are indexed in creation order.
#[derive(Default, Debug)]
struct Model {
    nodes: Vec<Node>,
    next_seq: u64,
}

/// What an address resolves to: the leaf, the offset within it and flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Hit {
    region: RegionId,
    kind: RegionKind,
    offset: u64,
    readonly: bool,
    romd_mode: bool,
}

fn terminates(kind: RegionKind) -> bool {
    !matches!(kind, RegionKind::Container | RegionKind::Alias)
}

impl Model {
    fn push(&mut self, id: RegionId, name: String, kind: RegionKind, size: u128) -> usize {
        self.nodes.push(Node {
            id,
            name,
            kind,
            size,
            addr: 0,
            priority: 0,
            enabled: true,
            readonly: kind == RegionKind::Rom,
            romd_mode: true,
            parent: None,
            children: Vec::new(),
            alias: None,
        });
        self.nodes.len() - 1
    }

    /// Children in the contract's render order: descending priority, the
    /// most recently added first among equal priorities.
    fn render_order(&self, index: usize) -> Vec<usize> {
        let mut children = self.nodes[index].children.clone();
        children.sort_by(|a, b| {
            let pa = self.nodes[a.0].priority;
            let pb = self.nodes[b.0].priority;
            pb.cmp(&pa).then(b.1.cmp(&a.1))
        });
        children.into_iter().map(|(c, _)| c).collect()
    }

    /// Whether `to` is `from` or lies below it through children or alias
    /// targets (adding `from` under `to` would make a cycle).
    fn reaches(&self, from: usize, to: usize) -> bool {
        let mut seen = vec![false; self.nodes.len()];
        let mut todo = vec![from];
        while let Some(i) = todo.pop() {
            if i == to {
                return true;
            }
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            todo.extend(self.nodes[i].children.iter().map(|c| c.0));
            if let Some((t, _)) = self.nodes[i].alias {
                todo.push(t);
            }
        }
        false
    }

    /// Whether adding `child` under `parent` must be refused.
    fn add_must_fail(&self, parent: usize, child: usize) -> bool {
        self.nodes[parent].kind == RegionKind::Alias
            || self.nodes[child].parent.is_some()
            || self.reaches(child, parent)
    }

    fn add(&mut self, parent: usize, child: usize, addr: u64, priority: i32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let c = &mut self.nodes[child];
        c.parent = Some(parent);
        c.addr = addr;
        c.priority = priority;
        self.nodes[parent].children.push((child, seq));
    }

    /// The reference: resolves `addr` in the region `index` whose absolute
    /// start is `start`, inside the clip window `[clip.0, clip.1)`.
    fn resolve(
        &self,
        index: usize,
        start: i128,
        clip: (i128, i128),
        readonly: bool,
        addr: i128,
    ) -> Option<Hit> {
        let n = &self.nodes[index];
        // 1. Disabled: skipped with its subtree, hides nothing.
        if !n.enabled {
            return None;
        }
        // 2. Intersect with the clip window; it becomes the children's.
        let lo = start.max(clip.0);
        let hi = (start + n.size as i128).min(clip.1);
        if lo >= hi || addr < lo || addr >= hi {
            return None;
        }
        // 6. Read-only is inherited downwards.
        let readonly = readonly || n.readonly;
        // 3. An alias shows its target so that target offset `offset` lands
        //    at the alias's start; the target's own address is ignored.
        if let Some((target, offset)) = n.alias {
            return self.resolve(target, start - offset as i128, (lo, hi), readonly, addr);
        }
        // 4. Children by descending priority, newest first; first hit wins.
        for child in self.render_order(index) {
            let child_start = start + self.nodes[child].addr as i128;
            if let Some(hit) = self.resolve(child, child_start, (lo, hi), readonly, addr) {
                return Some(hit);
            }
        }
        // 5. A terminating region fills what its children left.
        if terminates(n.kind) {
            return Some(Hit {
                region: n.id,
                kind: n.kind,
                offset: u64::try_from(addr - start).expect("offset within a 2^64 region"),
                readonly,
                romd_mode: n.kind != RegionKind::Romd || n.romd_mode,
            });
        }
        None
    }

    /// The reference answer for `addr` in an address space over `root`.
    fn lookup(&self, root: usize, addr: u64) -> Option<Hit> {
        self.resolve(root, 0, (0, SIZE_2_64 as i128), false, addr as i128)
    }

    /// Adds to `out` every address where the reference's answer may change:
    /// the starts and ends of each region instance and of its clip window
    /// (and the addresses just before them), walking through aliases.
    /// Returns false when the walk was cut off at `budget` instances.
    fn boundaries(
        &self,
        index: usize,
        start: i128,
        clip: (i128, i128),
        budget: &mut usize,
        out: &mut BTreeSet<u64>,
    ) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        let n = &self.nodes[index];
        if !n.enabled {
            return true;
        }
        let end = start + n.size as i128;
        for b in [start, end, clip.0.max(start), clip.1.min(end)] {
            for p in [b - 1, b, b + 1] {
                out.insert(p.clamp(0, u64::MAX as i128) as u64);
            }
        }
        let lo = start.max(clip.0);
        let hi = end.min(clip.1);
        if lo >= hi {
            return true;
        }
        if let Some((target, offset)) = n.alias {
            return self.boundaries(target, start - offset as i128, (lo, hi), budget, out);
        }
        for (child, _) in &n.children {
            let child_start = start + self.nodes[*child].addr as i128;
            if !self.boundaries(*child, child_start, (lo, hi), budget, out) {
                return false;
            }
        }
        true
    }

    /// The tree, one region a line, for failure messages.
    fn dump(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = write!(
                s,
                "  [{i}] {} {:?} {} size={:#x}",
                n.name,
                n.id,
                n.kind.as_str(),
                n.size
            );
            if let Some((t, off)) = n.alias {
                let _ = write!(s, " -> [{t}] @{off:#x}");
            }
            if let Some(p) = n.parent {
                let _ = write!(s, " in [{p}] at {:#x} prio {}", n.addr, n.priority);
            }
            if !n.enabled {
                s.push_str(" DISABLED");
            }
            if n.readonly {
                s.push_str(" readonly");
            }
            if n.kind == RegionKind::Romd && !n.romd_mode {
                s.push_str(" romd_mode=off");
            }
            s.push('\n');
        }
        s
    }
}

// ----- random trees ------------------------------------------------------------

#[derive(Clone, Debug)]
enum KindSpec {
    Container,
    Ram,
    Rom,
    Romd,
    Io,
    /// `target` picks among the regions created before this one, so aliases
    /// of aliases (and of the root) occur.
    Alias {
        target: Index,
        offset: u64,
    },
}

#[derive(Clone, Debug)]
struct RegionSpec {
    kind: KindSpec,
    /// Drawn from the small sizes (under 1 MiB) for ram, rom and romd.
    size: u128,
    enabled: bool,
    readonly: bool,
    romd_mode: bool,
}

/// Where a region is added.
#[derive(Clone, Debug)]
struct Attach {
    /// Pick the parent among all regions (the API refuses aliases and
    /// cycles; terminating regions may have children) instead of among the
    /// containers created before the child.
    any_parent: bool,
    parent: Index,
    addr: u64,
    priority: i32,
}

#[derive(Clone, Copy, Debug)]
enum SpaceTiming {
    /// The address space exists first; every change re-renders at once.
    Early,
    /// The address space exists first; the tree is built in a transaction.
    EarlyInTransaction,
    /// The tree is built, then the address space is created over it.
    Late,
}

#[derive(Clone, Debug)]
struct TreeSpec {
    root_size: u128,
    root_readonly: bool,
    regions: Vec<RegionSpec>,
    /// For each region, where it is added (`None`: left without a parent,
    /// for instance as an alias target).
    attach: Vec<Option<Attach>>,
    /// The order in which the regions are added (a permutation).
    order: Vec<usize>,
    /// Arbitrary extra adds `(child, attach)`, which may be refused.
    extra_adds: Vec<(Index, Attach)>,
    /// Regions whose enabled flag is toggled once everything is added.
    late_disable: Vec<Index>,
    mode: SpaceTiming,
    /// A second address space over some other region.
    second_root: Option<Index>,
    probes: Vec<u64>,
}

/// Small sizes, all under 1 MiB, for anything that allocates host memory.
fn small_size() -> impl Strategy<Value = u128> {
    prop_oneof![
        1 => Just(0u128),
        1 => Just(1u128),
        2 => Just(0x800u128),
        4 => Just(0x1000u128),
        3 => Just(0x2000u128),
        2 => Just(0x3000u128),
        1 => Just(0x10000u128),
        4 => (1u128..=0x20).prop_map(|k| k * 0x400),
    ]
}

/// Sizes for io regions and aliases: small, huge, or 2^64.
fn any_size() -> impl Strategy<Value = u128> {
    prop_oneof![
        30 => small_size(),
        1 => Just(1u128 << 32),
        1 => Just(1u128 << 63),
        1 => Just(SIZE_2_64 - 0x1000),
        1 => Just(SIZE_2_64 - 1),
        1 => Just(SIZE_2_64),
    ]
}

/// Sizes for containers: mostly large enough to hold a few children.
fn container_size() -> impl Strategy<Value = u128> {
    prop_oneof![
        1 => Just(0u128),
        6 => (1u128..=0x10).prop_map(|k| k * 0x1000),
        4 => Just(0x10000u128),
        1 => Just(1u128 << 63),
        1 => Just(SIZE_2_64 - 0x1000),
        2 => Just(SIZE_2_64),
    ]
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => Just(0u64),
        30 => (0u64..=0x30).prop_map(|k| k * 0x400),
        2 => Just(0x800u64),
        1 => Just(1u64 << 32),
        1 => Just(1u64 << 63),
        1 => Just(u64::MAX - 0xfff),
        1 => Just(u64::MAX - 0x7ff),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn alias_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        4 => (0u64..=0x40).prop_map(|k| k * 0x400),
        1 => Just(1u64 << 63),
        1 => Just(u64::MAX - 0xfff),
        1 => Just(u64::MAX),
    ]
}

fn priority() -> impl Strategy<Value = i32> {
    prop_oneof![
        5 => Just(0i32),
        4 => -2i32..=2,
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
    ]
}

fn kind() -> impl Strategy<Value = KindSpec> {
    prop_oneof![
        4 => Just(KindSpec::Container),
        3 => Just(KindSpec::Ram),
        1 => Just(KindSpec::Rom),
        1 => Just(KindSpec::Romd),
        2 => Just(KindSpec::Io),
        4 => (any::<Index>(), alias_offset())
            .prop_map(|(target, offset)| KindSpec::Alias { target, offset }),
    ]
}

fn region_spec() -> impl Strategy<Value = RegionSpec> {
    (
        kind(),
        any_size(),
        small_size(),
        container_size(),
        prop::bool::weighted(0.93),
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(
            |(kind, big, small, container, enabled, readonly, romd_mode)| {
                let size = match kind {
                    KindSpec::Ram | KindSpec::Rom | KindSpec::Romd => small,
                    KindSpec::Container => container,
                    _ => big,
                };
                RegionSpec {
                    kind,
                    size,
                    enabled,
                    readonly,
                    romd_mode,
                }
            },
        )
}

fn attach() -> impl Strategy<Value = Attach> {
    (
        prop::bool::weighted(0.1),
        any::<Index>(),
        addr(),
        priority(),
    )
        .prop_map(|(any_parent, parent, addr, priority)| Attach {
            any_parent,
            parent,
            addr,
            priority,
        })
}

fn probe() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0u64..0x20000,
        1 => any::<u64>(),
        1 => (u64::MAX - 0x20000)..=u64::MAX,
    ]
}

fn tree_spec() -> impl Strategy<Value = TreeSpec> {
    prop_oneof![1 => 0usize..5, 4 => 5usize..=25].prop_flat_map(|n| {
        (
            (
                prop_oneof![
                    6 => Just(SIZE_2_64),
                    1 => Just(0x10000u128),
                    1 => Just(1u128 << 63),
                    1 => Just(SIZE_2_64 - 0x1000),
                ],
                prop::bool::weighted(0.1),
                prop::collection::vec(region_spec(), n),
                prop::collection::vec(prop::option::weighted(0.85, attach()), n),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
                prop::collection::vec((any::<Index>(), attach()), 0..3),
            ),
            (
                prop::collection::vec(any::<Index>(), 0..2),
                prop_oneof![
                    Just(SpaceTiming::Early),
                    Just(SpaceTiming::EarlyInTransaction),
                    Just(SpaceTiming::Late),
                ],
                prop::option::weighted(0.3, any::<Index>()),
                prop::collection::vec(probe(), 16),
            ),
        )
            .prop_map(
                |(
                    (root_size, root_readonly, regions, attach, order, extra_adds),
                    (late_disable, mode, second_root, probes),
                )| TreeSpec {
                    root_size,
                    root_readonly,
                    regions,
                    attach,
                    order,
                    extra_adds,
                    late_disable,
                    mode,
                    second_root,
                    probes,
                },
            )
    })
}

fn ram_size(size: u128) -> u64 {
    u64::try_from(size).expect("small sizes fit u64")
}

/// A tree built through the API together with its mirror.
struct Built {
    /// Kept so the tree outlives the checks, as a VMM's would.
    _tree: MemoryTree,
    model: Model,
    /// (address space, index of its root in the model).
    spaces: Vec<(ember::memory::AddressSpace, usize)>,
}

fn build(spec: &TreeSpec) -> Result<Built, TestCaseError> {
    let mut tree = MemoryTree::new();
    let mut model = Model::default();
    let root_id = tree.new_container("root", spec.root_size).unwrap();
    let root = model.push(
        root_id,
        "root".into(),
        RegionKind::Container,
        spec.root_size,
    );
    let mut spaces = Vec::new();

    let transaction = matches!(spec.mode, SpaceTiming::EarlyInTransaction);
    if !matches!(spec.mode, SpaceTiming::Late) {
        spaces.push((
            tree.add_address_space("memory", root_id, Unassigned::Zero)
                .unwrap(),
            root,
        ));
    }
    if transaction {
        tree.begin();
    }

    for (i, r) in spec.regions.iter().enumerate() {
        let name = format!("r{}", i + 1);
        let (id, kind) = match &r.kind {
            KindSpec::Container => (
                tree.new_container(&name, r.size).unwrap(),
                RegionKind::Container,
            ),
            KindSpec::Ram => (
                tree.new_ram(&name, ram_size(r.size)).unwrap(),
                RegionKind::Ram,
            ),
            KindSpec::Rom => (
                tree.new_rom(&name, ram_size(r.size)).unwrap(),
                RegionKind::Rom,
            ),
            KindSpec::Romd => (
                tree.new_romd(&name, ram_size(r.size), None).unwrap(),
                RegionKind::Romd,
            ),
            KindSpec::Io => (tree.new_io(&name, r.size, None).unwrap(), RegionKind::Io),
            KindSpec::Alias { target, offset } => {
                let t = target.index(model.nodes.len());
                let id = tree
                    .new_alias(&name, model.nodes[t].id, *offset, r.size)
                    .unwrap();
                (id, RegionKind::Alias)
            }
        };
        let index = model.push(id, name, kind, r.size);
        if let KindSpec::Alias { target, offset } = &r.kind {
            model.nodes[index].alias = Some((target.index(index), *offset));
        }
    }

    // Each region goes under a container created before it (so most of the
    // tree hangs off the root), in a random order; the root is never a child.
    let count = model.nodes.len();
    let adds = spec
        .order
        .iter()
        .filter_map(|&i| spec.attach[i].as_ref().map(|a| (i + 1, a)))
        .chain(
            spec.extra_adds
                .iter()
                .filter(|_| count > 1)
                .map(|(c, a)| (1 + c.index(count - 1), a)),
        );
    for (child, a) in adds {
        let parent = if a.any_parent {
            a.parent.index(count)
        } else {
            let earlier: Vec<usize> = (0..child)
                .filter(|&i| model.nodes[i].kind == RegionKind::Container)
                .collect();
            earlier[a.parent.index(earlier.len())]
        };
        let result = tree.add_subregion_overlap(
            model.nodes[parent].id,
            a.addr,
            model.nodes[child].id,
            a.priority,
        );
        let must_fail = model.add_must_fail(parent, child);
        prop_assert_eq!(
            result.is_err(),
            must_fail,
            "adding [{}] to [{}]: {:?}",
            child,
            parent,
            result
        );
        if result.is_ok() {
            model.add(parent, child, a.addr, a.priority);
        }
    }

    // Flags.
    if spec.root_readonly {
        tree.set_readonly(root_id, true).unwrap();
        model.nodes[root].readonly = true;
    }
    for (i, r) in spec.regions.iter().enumerate() {
        let index = i + 1;
        let id = model.nodes[index].id;
        if !r.enabled {
            tree.set_enabled(id, false).unwrap();
            model.nodes[index].enabled = false;
        }
        if r.readonly {
            tree.set_readonly(id, true).unwrap();
            model.nodes[index].readonly = true;
        }
        if model.nodes[index].kind == RegionKind::Romd && !r.romd_mode {
            tree.set_romd_mode(id, false).unwrap();
            model.nodes[index].romd_mode = false;
        }
    }
    if count > 1 {
        for d in &spec.late_disable {
            let index = 1 + d.index(count - 1);
            let enabled = !model.nodes[index].enabled;
            tree.set_enabled(model.nodes[index].id, enabled).unwrap();
            model.nodes[index].enabled = enabled;
        }
    }

    if transaction {
        tree.commit().unwrap();
    }
    if matches!(spec.mode, SpaceTiming::Late) {
        spaces.push((
            tree.add_address_space("memory", root_id, Unassigned::Zero)
                .unwrap(),
            root,
        ));
    }
    // A second address space over any other region, parentless or not: a
    // view's root starts at address 0 whatever its address in a parent.
    if let Some(pick) = &spec.second_root {
        if count > 1 {
            let r = 1 + pick.index(count - 1);
            spaces.push((
                tree.add_address_space("second", model.nodes[r].id, Unassigned::Zero)
                    .unwrap(),
                r,
            ));
        }
    }
    Ok(Built {
        _tree: tree,
        model,
        spaces,
    })
}

// ----- checks --------------------------------------------------------------------

/// What the FlatView says about `addr`, in the reference's terms.
fn view_hit(view: &FlatView, addr: u64) -> Option<Hit> {
    view.lookup(addr).map(|r| Hit {
        region: r.region,
        kind: r.kind,
        offset: r.offset_in_region.wrapping_add(addr - r.start),
        readonly: r.readonly,
        romd_mode: r.romd_mode,
    })
}

/// Sorted, disjoint, non-empty, within 2^64, and fully merged.
fn check_invariants(view: &FlatView) -> Result<(), String> {
    let ranges = view.ranges();
    for (i, r) in ranges.iter().enumerate() {
        if r.size == 0 {
            return Err(format!("range {i} is empty: {r:?}"));
        }
        if r.end() > SIZE_2_64 {
            return Err(format!("range {i} ends beyond 2^64: {r:?}"));
        }
        if r.offset_in_region as u128 + r.size > SIZE_2_64 {
            return Err(format!("range {i} offsets run beyond 2^64: {r:?}"));
        }
        if i > 0 {
            let p = &ranges[i - 1];
            if p.end() > r.start as u128 {
                return Err(format!("ranges {} and {i} overlap or are unsorted", i - 1));
            }
            let mergeable = p.end() == r.start as u128
                && p.region == r.region
                && p.offset_in_region as u128 + p.size == r.offset_in_region as u128
                && p.readonly == r.readonly
                && p.romd_mode == r.romd_mode
                && p.dirty_log_mask == r.dirty_log_mask;
            if mergeable {
                return Err(format!(
                    "ranges {} and {i} should have been merged: {p:?} / {r:?}",
                    i - 1
                ));
            }
        }
    }
    Ok(())
}

fn dump_view(view: &FlatView) -> String {
    let mut s = String::new();
    for r in view.ranges() {
        let _ = writeln!(
            s,
            "  {:#018x}-{:#x} {:?} {} @{:#x}{}{}",
            r.start,
            r.end() - 1,
            r.region,
            r.kind.as_str(),
            r.offset_in_region,
            if r.readonly { " ro" } else { "" },
            if r.romd_mode { "" } else { " romd_mode=off" },
        );
    }
    s
}

/// Cap on region instances walked to enumerate probe addresses.
const BOUNDARY_BUDGET: usize = 4096;

fn check_space(model: &Model, root: usize, view: &FlatView, extra: &[u64]) -> Result<(), String> {
    check_invariants(view)?;
    let mut probes: BTreeSet<u64> = extra.iter().copied().collect();
    let mut budget = BOUNDARY_BUDGET;
    model.boundaries(root, 0, (0, SIZE_2_64 as i128), &mut budget, &mut probes);
    for r in view.ranges() {
        let end = r.end();
        for p in [
            r.start as u128,
            (r.start as u128).saturating_sub(1),
            end - 1,
            end.min(u64::MAX as u128),
        ] {
            probes.insert(p as u64);
        }
    }
    for addr in probes {
        let want = model.lookup(root, addr);
        let got = view_hit(view, addr);
        if want != got {
            return Err(format!(
                "address {addr:#x}: reference says {want:?}, FlatView says {got:?}"
            ));
        }
    }
    Ok(())
}

fn check_built(built: &Built, extra: &[u64]) -> Result<(), TestCaseError> {
    for (space, root) in &built.spaces {
        let view = space.view();
        if let Err(e) = check_space(&built.model, *root, &view, extra) {
            return Err(TestCaseError::fail(format!(
                "address space '{}' over [{root}]: {e}\ntree:\n{}view:\n{}",
                space.name(),
                built.model.dump(),
                dump_view(&view)
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 50_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn flatview_matches_reference(spec in tree_spec()) {
        let built = build(&spec)?;
        check_built(&built, &spec.probes)?;
    }
}

// ----- named contract rules ------------------------------------------------------

/// Builds a tree over a 2^64 root, lets `f` fill it, and returns the view.
fn view_of(f: impl FnOnce(&mut MemoryTree, RegionId)) -> (MemoryTree, std::sync::Arc<FlatView>) {
    let mut tree = MemoryTree::new();
    let root = tree.new_container("root", SIZE_2_64).unwrap();
    let space = tree
        .add_address_space("memory", root, Unassigned::Zero)
        .unwrap();
    tree.transaction(|t| f(t, root));
    let view = space.view();
    assert_eq!(check_invariants(&view), Ok(()));
    (tree, view)
}

fn hit_at(view: &FlatView, addr: u64) -> Option<(RegionId, u64, bool)> {
    view_hit(view, addr).map(|h| (h.region, h.offset, h.readonly))
}

#[test]
fn higher_priority_wins_and_newest_wins_ties() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let low = t.new_ram("low", 0x3000).unwrap();
        let old = t.new_ram("old", 0x1000).unwrap();
        let new = t.new_ram("new", 0x1000).unwrap();
        let high = t.new_io("high", 0x800, None).unwrap();
        t.add_subregion_overlap(root, 0x2000, high, 1).unwrap();
        t.add_subregion_overlap(root, 0, low, -1).unwrap();
        t.add_subregion_overlap(root, 0x1000, old, 0).unwrap();
        t.add_subregion_overlap(root, 0x1800, new, 0).unwrap();
        ids = vec![low, old, new, high];
    });
    let [low, old, new, high] = ids[..] else {
        unreachable!()
    };
    assert_eq!(hit_at(&view, 0x0), Some((low, 0, false)));
    assert_eq!(hit_at(&view, 0x1000), Some((old, 0, false)));
    assert_eq!(hit_at(&view, 0x1800), Some((new, 0, false)));
    assert_eq!(hit_at(&view, 0x2000), Some((high, 0, false)));
    assert_eq!(hit_at(&view, 0x27ff), Some((high, 0x7ff, false)));
    assert_eq!(hit_at(&view, 0x2800), Some((low, 0x2800, false)));
    assert_eq!(hit_at(&view, 0x2fff), Some((low, 0x2fff, false)));
    assert_eq!(hit_at(&view, 0x3000), None);
}

#[test]
fn alias_with_negative_base_and_window_beyond_target() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let ram = t.new_ram("ram", 0x4000).unwrap();
        // Somewhere else entirely: the target's own address must not matter.
        let other = t.new_container("other", SIZE_2_64).unwrap();
        t.add_subregion(other, 0x9000_0000, ram).unwrap();
        // Base = 0x1000 - 0x3000 < 0; the window [0x3000, 0x7000) of a
        // 0x4000-byte target has a hole at its upper 0x3000 bytes.
        let alias = t.new_alias("alias", ram, 0x3000, 0x4000).unwrap();
        t.add_subregion(root, 0x1000, alias).unwrap();
        ids = vec![ram];
    });
    let ram = ids[0];
    assert_eq!(hit_at(&view, 0xfff), None);
    assert_eq!(hit_at(&view, 0x1000), Some((ram, 0x3000, false)));
    assert_eq!(hit_at(&view, 0x1fff), Some((ram, 0x3fff, false)));
    assert_eq!(hit_at(&view, 0x2000), None);
    assert_eq!(view.ranges().len(), 1);
}

#[test]
fn holes_in_containers_show_lower_priority_siblings() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let under = t.new_ram("under", 0x4000).unwrap();
        let outer = t.new_container("outer", 0x4000).unwrap();
        let inner = t.new_container("inner", 0x4000).unwrap();
        let dev = t.new_io("dev", 0x1000, None).unwrap();
        t.add_subregion(inner, 0x1000, dev).unwrap();
        t.add_subregion(outer, 0, inner).unwrap();
        t.add_subregion_overlap(root, 0, outer, 5).unwrap();
        t.add_subregion_overlap(root, 0, under, 0).unwrap();
        ids = vec![under, dev];
    });
    let [under, dev] = ids[..] else {
        unreachable!()
    };
    assert_eq!(hit_at(&view, 0), Some((under, 0, false)));
    assert_eq!(hit_at(&view, 0x1000), Some((dev, 0, false)));
    assert_eq!(hit_at(&view, 0x2000), Some((under, 0x2000, false)));
    assert_eq!(view.ranges().len(), 3);
}

#[test]
fn ranges_reached_through_different_aliases_merge() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let ram = t.new_ram("ram", 0x2000).unwrap();
        let lo = t.new_alias("lo", ram, 0, 0x1000).unwrap();
        let hi = t.new_alias("hi", ram, 0x1000, 0x1000).unwrap();
        let hi2 = t.new_alias("hi2", hi, 0, 0x1000).unwrap();
        t.add_subregion(root, 0x10000, lo).unwrap();
        t.add_subregion(root, 0x11000, hi2).unwrap();
        ids = vec![ram];
    });
    let ranges = view.ranges();
    assert_eq!(ranges.len(), 1, "{}", dump_view(&view));
    assert_eq!(ranges[0].region, ids[0]);
    assert_eq!(
        (ranges[0].start, ranges[0].size, ranges[0].offset_in_region),
        (0x10000, 0x2000, 0)
    );
}

#[test]
fn regions_of_2_64_and_near_the_top() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let all = t.new_io("all", SIZE_2_64, None).unwrap();
        t.add_subregion_overlap(root, 0, all, -1).unwrap();
        // A container straddling 2^64 is clipped there.
        let top = t.new_container("top", 0x2000).unwrap();
        let ram = t.new_ram("ram", 0x2000).unwrap();
        t.add_subregion(top, 0, ram).unwrap();
        t.add_subregion(root, u64::MAX - 0xfff, top).unwrap();
        ids = vec![all, ram];
    });
    let [all, ram] = ids[..] else { unreachable!() };
    assert_eq!(hit_at(&view, 0), Some((all, 0, false)));
    assert_eq!(
        hit_at(&view, u64::MAX - 0x1000),
        Some((all, u64::MAX - 0x1000, false))
    );
    assert_eq!(hit_at(&view, u64::MAX - 0xfff), Some((ram, 0, false)));
    assert_eq!(hit_at(&view, u64::MAX), Some((ram, 0xfff, false)));
    let last = view.ranges().last().unwrap();
    assert_eq!(last.end(), SIZE_2_64);
    assert_eq!(last.size, 0x1000);
}

#[test]
fn readonly_is_inherited_through_containers_and_aliases() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let ram = t.new_ram("ram", 0x1000).unwrap();
        let c = t.new_container("c", 0x1000).unwrap();
        t.add_subregion(c, 0, ram).unwrap();
        t.set_readonly(c, true).unwrap();
        t.add_subregion(root, 0, c).unwrap();
        let ram2 = t.new_ram("ram2", 0x1000).unwrap();
        let alias = t.new_alias("alias", ram2, 0, 0x1000).unwrap();
        t.set_readonly(alias, true).unwrap();
        t.add_subregion(root, 0x1000, alias).unwrap();
        let ram3 = t.new_ram("ram3", 0x1000).unwrap();
        t.add_subregion(root, 0x2000, ram3).unwrap();
        ids = vec![ram, ram2, ram3];
    });
    let [ram, ram2, ram3] = ids[..] else {
        unreachable!()
    };
    assert_eq!(hit_at(&view, 0), Some((ram, 0, true)));
    assert_eq!(hit_at(&view, 0x1000), Some((ram2, 0, true)));
    assert_eq!(hit_at(&view, 0x2000), Some((ram3, 0, false)));
}

#[test]
fn disabled_subtrees_hide_nothing_and_zero_size_renders_nothing() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let under = t.new_ram("under", 0x2000).unwrap();
        let c = t.new_container("c", 0x2000).unwrap();
        let dev = t.new_io("dev", 0x2000, None).unwrap();
        t.add_subregion(c, 0, dev).unwrap();
        t.add_subregion_overlap(root, 0, c, 1).unwrap();
        t.set_enabled(c, false).unwrap();
        let empty = t.new_io("empty", 0, None).unwrap();
        t.add_subregion_overlap(root, 0x1000, empty, 2).unwrap();
        t.add_subregion(root, 0, under).unwrap();
        ids = vec![under];
    });
    assert_eq!(view.ranges().len(), 1);
    assert_eq!(hit_at(&view, 0x1000), Some((ids[0], 0x1000, false)));
}

/// The contract inherits read-only from every container and alias on the
/// way down, the address space's root included, even when the root has a
/// single child at address 0.
#[test]
fn readonly_root_with_a_single_child() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let ram = t.new_ram("ram", 0x1000).unwrap();
        t.add_subregion(root, 0, ram).unwrap();
        t.set_readonly(root, true).unwrap();
        ids = vec![ram];
    });
    assert_eq!(hit_at(&view, 0), Some((ids[0], 0, true)));
}

/// The same through a read-only alias that shows all of its target.
#[test]
fn readonly_alias_as_address_space_root() {
    let mut tree = MemoryTree::new();
    let ram = tree.new_ram("ram", 0x1000).unwrap();
    let alias = tree.new_alias("alias", ram, 0, 0x1000).unwrap();
    tree.set_readonly(alias, true).unwrap();
    let space = tree
        .add_address_space("memory", alias, Unassigned::Zero)
        .unwrap();
    assert_eq!(hit_at(&space.view(), 0), Some((ram, 0, true)));
}

/// An address space whose root is (after skipping a root container with a
/// single child) an alias of a whole region: the target's own address inside
/// some other container must not shift the view.
#[test]
fn root_alias_target_address_is_ignored() {
    let mut ids = Vec::new();
    let (_tree, view) = view_of(|t, root| {
        let ram = t.new_ram("ram", 0x1000).unwrap();
        let elsewhere = t.new_container("elsewhere", SIZE_2_64).unwrap();
        t.add_subregion(elsewhere, 0x5000, ram).unwrap();
        let alias = t.new_alias("alias", ram, 0, 0x1000).unwrap();
        t.add_subregion(root, 0, alias).unwrap();
        ids = vec![ram];
    });
    assert_eq!(hit_at(&view, 0), Some((ids[0], 0, false)));
    assert_eq!(hit_at(&view, 0x5000), None);
}
