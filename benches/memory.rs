//! Memory-model benchmarks: `cargo bench --bench memory`.
//!
//! - full render of a 10,000-region tree,
//! - one commit after a single change in that tree (re-render, diff, one
//!   listener told of the change, publish),
//! - lookup latency with 1,000 and 10,000 ranges at random addresses (the
//!   FlatView lookup alone, and a whole `AddressSpace::read` to a device),
//!   and at a repeated address (the most-recently-used shortcut).
//!
//! Each figure is the median of several timed batches.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember::memory::{
    AddressSpace, FlatRange, MemoryListener, MemoryTree, RegionId, RegionOps, Unassigned, SIZE_2_64,
};

struct Nop;
impl RegionOps for Nop {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        offset
    }
    fn write(&self, _offset: u64, _size: u32, _value: u64) {}
}

struct CountingListener(u64);
impl MemoryListener for CountingListener {
    fn region_add(&mut self, _r: &FlatRange) {
        self.0 += 1;
    }
    fn region_del(&mut self, _r: &FlatRange) {
        self.0 += 1;
    }
}

/// A tree of `leaves` io regions (4 KiB each, 4 KiB apart) in containers of
/// 100, with a low-priority RAM background that fills every gap, an alias
/// per container window, and a high-priority overlay; about `leaves * 1.03`
/// regions and `2 * leaves` flat ranges.
fn build(leaves: usize) -> (MemoryTree, AddressSpace, Vec<RegionId>) {
    let mut tree = MemoryTree::new();
    let ops: Arc<dyn RegionOps> = Arc::new(Nop);
    let system = tree.new_container("system", SIZE_2_64).unwrap();
    let mut all = Vec::new();
    tree.transaction(|tree| {
        let span = (leaves as u64) * 0x2000;
        let background = tree.new_ram("background", span).unwrap();
        tree.add_subregion_overlap(system, 0, background, -1)
            .unwrap();
        let per = 100usize;
        for c in 0..leaves.div_ceil(per) {
            let base = (c * per) as u64 * 0x2000;
            let container = tree.new_container("bus", (per as u128) * 0x2000).unwrap();
            tree.add_subregion(system, base, container).unwrap();
            for i in 0..per.min(leaves - c * per) {
                let io = tree.new_io("dev", 0x1000, Some(ops.clone())).unwrap();
                tree.add_subregion(container, i as u64 * 0x2000, io)
                    .unwrap();
                all.push(io);
            }
            // An alias showing the bus a second time far above.
            let alias = tree.new_alias("bus-mirror", container, 0, 0x2000).unwrap();
            tree.add_subregion(system, 0x10_0000_0000 + base, alias)
                .unwrap();
        }
    });
    let space = tree
        .add_address_space("memory", system, Unassigned::Zero)
        .unwrap();
    (tree, space, all)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_batches(batches: usize, mut f: impl FnMut()) -> Duration {
    let mut times = Vec::with_capacity(batches);
    for _ in 0..batches {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    median(times)
}

/// xorshift64*: random addresses without a dependency.
fn random_addresses(n: usize, limit: u64) -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d) % limit
        })
        .collect()
}

fn count_regions(tree: &MemoryTree) -> usize {
    tree.region_ids().count()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // and only wants a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let batches = if quick { 3 } else { 21 };

    let (mut tree, space, leaves) = build(9_700);
    let system = tree.address_space_root(&space).unwrap();
    let regions = count_regions(&tree);
    let ranges = space.view().ranges().len();
    let render = time_batches(batches, || {
        black_box(tree.render_view(system).unwrap());
    });
    println!(
        "render: {regions} regions -> {ranges} flat ranges: {:.3} ms",
        render.as_secs_f64() * 1e3
    );

    tree.add_listener(&space, 0, Box::new(CountingListener(0)))
        .unwrap();
    let victim = leaves[leaves.len() / 2];
    let mut on = false;
    let commit = time_batches(batches, || {
        tree.set_enabled(victim, on).unwrap();
        on = !on;
    });
    println!(
        "commit after one change ({regions} regions, 1 listener): {:.3} ms",
        commit.as_secs_f64() * 1e3
    );

    for n in [1_000usize, 10_000] {
        let (_tree, space, _) = build(n / 2);
        let view = space.view();
        let limit = (n as u64 / 2) * 0x2000;
        let addrs = random_addresses(1 << 16, limit);
        let rounds = if quick { 1 } else { 16 };
        let lookup = time_batches(batches, || {
            for _ in 0..rounds {
                for &a in &addrs {
                    black_box(view.lookup(black_box(a)));
                }
            }
        });
        let per = lookup.as_secs_f64() * 1e9 / (addrs.len() * rounds) as f64;
        println!(
            "lookup, {} ranges, random addresses: {per:.1} ns",
            view.ranges().len()
        );

        let hot = time_batches(batches, || {
            for _ in 0..rounds {
                for _ in 0..addrs.len() {
                    black_box(view.lookup(black_box(0x1234)));
                }
            }
        });
        let per_hot = hot.as_secs_f64() * 1e9 / (addrs.len() * rounds) as f64;
        println!(
            "lookup, {} ranges, same address (MRU hit): {per_hot:.1} ns",
            view.ranges().len()
        );

        let device = time_batches(batches, || {
            for _ in 0..rounds {
                for &a in &addrs {
                    // Aligned 4-byte reads; half land on devices, half on RAM.
                    black_box(space.read(black_box(a & !3), 4));
                }
            }
        });
        let per_dev = device.as_secs_f64() * 1e9 / (addrs.len() * rounds) as f64;
        println!(
            "AddressSpace::read, {} ranges, random addresses: {per_dev:.1} ns",
            view.ranges().len()
        );
    }
}
