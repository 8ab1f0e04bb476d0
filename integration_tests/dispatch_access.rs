//! Dispatch through the FlatView: access splitting and widening, endianness,
//! validity rules, unassigned reads, ROM and romd behaviour, and buffer
//! accesses that span several regions.

use std::sync::{Arc, Mutex};

use ember::memory::{
    AccessRules, AddressSpace, Endianness, MemTxResult, MemoryTree, RegionOps, Unassigned,
    SIZE_2_64,
};
use proptest::prelude::*;

/// A device whose registers are a byte array presented in the device's own
/// endianness, recording every callback. Whatever the splitting, a guest
/// must see the array in memory order.
struct ByteDevice {
    rules: AccessRules,
    bytes: Mutex<Vec<u8>>,
    calls: Mutex<Vec<(char, u64, u32, u64)>>,
}

impl ByteDevice {
    fn new(rules: AccessRules, len: usize) -> Arc<Self> {
        Arc::new(ByteDevice {
            rules,
            bytes: Mutex::new(
                (0..len)
                    .map(|i| 0x10u8.wrapping_add((i as u8).wrapping_mul(7)))
                    .collect(),
            ),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<(char, u64, u32, u64)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        self.bytes.lock().unwrap()[offset as usize..offset as usize + len].to_vec()
    }
}

impl RegionOps for ByteDevice {
    fn read(&self, offset: u64, size: u32) -> u64 {
        let bytes = self.bytes.lock().unwrap();
        let mut value = 0u64;
        for i in 0..size as usize {
            let b = bytes.get(offset as usize + i).copied().unwrap_or(0) as u64;
            value |= match self.rules.endianness {
                Endianness::Little => b << (8 * i),
                Endianness::Big => b << (8 * (size as usize - 1 - i)),
            };
        }
        self.calls.lock().unwrap().push(('r', offset, size, value));
        value
    }

    fn write(&self, offset: u64, size: u32, value: u64) {
        self.calls.lock().unwrap().push(('w', offset, size, value));
        let mut bytes = self.bytes.lock().unwrap();
        for i in 0..size as usize {
            let shift = match self.rules.endianness {
                Endianness::Little => 8 * i,
                Endianness::Big => 8 * (size as usize - 1 - i),
            };
            if let Some(b) = bytes.get_mut(offset as usize + i) {
                *b = (value >> shift) as u8;
            }
        }
    }

    fn rules(&self) -> AccessRules {
        self.rules
    }
}

/// A memory space with one device at 0x1000.
fn space_with(dev: Arc<ByteDevice>, size: u128) -> (MemoryTree, AddressSpace) {
    let mut tree = MemoryTree::new();
    let root = tree.new_container("system", SIZE_2_64).unwrap();
    let io = tree.new_io("dev", size, Some(dev)).unwrap();
    tree.add_subregion(root, 0x1000, io).unwrap();
    let space = tree
        .add_address_space("memory", root, Unassigned::Zero)
        .unwrap();
    (tree, space)
}

fn le(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(raw)
}

#[test]
fn wide_access_is_split_into_implemented_sizes() {
    let dev = ByteDevice::new(AccessRules::with_impl(1, 2), 64);
    let (_tree, space) = space_with(dev.clone(), 64);
    let (value, result) = space.read(0x1008, 8);
    assert_eq!(result, MemTxResult::Ok);
    assert_eq!(value, le(&dev.bytes(8, 8)));
    let offsets: Vec<(char, u64, u32)> = dev.calls().iter().map(|c| (c.0, c.1, c.2)).collect();
    assert_eq!(
        offsets,
        vec![('r', 8, 2), ('r', 10, 2), ('r', 12, 2), ('r', 14, 2)]
    );
    assert_eq!(space.write(0x1010, 4, 0xaabbccdd), MemTxResult::Ok);
    assert_eq!(
        dev.calls(),
        vec![('w', 16, 2, 0xccdd), ('w', 18, 2, 0xaabb)]
    );
    assert_eq!(dev.bytes(16, 4), vec![0xdd, 0xcc, 0xbb, 0xaa]);
}

#[test]
fn big_endian_device_gets_the_high_half_first() {
    let rules = AccessRules {
        endianness: Endianness::Big,
        ..AccessRules::with_impl(2, 2)
    };
    let dev = ByteDevice::new(rules, 64);
    let (_tree, space) = space_with(dev.clone(), 64);
    assert_eq!(space.write(0x1000, 4, 0x1122_3344), MemTxResult::Ok);
    // The guest stored bytes 44 33 22 11; the device sees the big-endian
    // value 0x44332211, split into 0x4433 at offset 0 and 0x2211 at 2.
    assert_eq!(dev.calls(), vec![('w', 0, 2, 0x4433), ('w', 2, 2, 0x2211)]);
    assert_eq!(dev.bytes(0, 4), vec![0x44, 0x33, 0x22, 0x11]);
    assert_eq!(space.read(0x1000, 4), (0x1122_3344, MemTxResult::Ok));
}

#[test]
fn narrow_access_is_widened() {
    let dev = ByteDevice::new(AccessRules::with_impl(4, 4), 64);
    let (_tree, space) = space_with(dev.clone(), 64);
    let (value, _) = space.read(0x1005, 1);
    assert_eq!(value, dev.bytes(5, 1)[0] as u64);
    // QEMU's rule: the callback gets the access's own offset, at the
    // implemented size, and the low byte is kept.
    assert_eq!(dev.calls(), vec![('r', 5, 4, le(&dev.bytes(5, 4)))]);
    assert_eq!(space.write(0x1004, 2, 0xbeef), MemTxResult::Ok);
    assert_eq!(dev.calls(), vec![('w', 4, 4, 0xbeef)]);
}

#[test]
fn invalid_sizes_and_alignment_are_rejected() {
    let rules = AccessRules {
        valid_min: 2,
        valid_max: 4,
        ..AccessRules::default()
    };
    let dev = ByteDevice::new(rules, 64);
    let (_tree, space) = space_with(dev.clone(), 64);
    assert_eq!(space.read(0x1000, 1), (0, MemTxResult::Invalid));
    assert_eq!(space.read(0x1000, 8), (0, MemTxResult::Invalid));
    assert_eq!(
        space.read(0x1002, 4),
        (0, MemTxResult::Invalid),
        "unaligned"
    );
    assert_eq!(space.write(0x1000, 8, 1), MemTxResult::Invalid);
    assert_eq!(space.read(0x1000, 3).1, MemTxResult::Invalid);
    assert!(
        dev.calls().is_empty(),
        "rejected accesses reached the device"
    );
    assert_eq!(space.read(0x1004, 4).1, MemTxResult::Ok);
}

#[test]
fn unaligned_allowed_when_declared() {
    let rules = AccessRules {
        valid_unaligned: true,
        ..AccessRules::default()
    };
    let dev = ByteDevice::new(rules, 64);
    let (_tree, space) = space_with(dev.clone(), 64);
    assert_eq!(
        space.read(0x1003, 4),
        (le(&dev.bytes(3, 4)), MemTxResult::Ok)
    );
}

#[test]
fn access_goes_whole_to_the_region_at_its_start() {
    // A 4-byte device at 0x1000 followed by RAM: an 8-byte read at 0x1000
    // goes entirely to the device.
    let dev = ByteDevice::new(AccessRules::default(), 64);
    let mut tree = MemoryTree::new();
    let root = tree.new_container("system", SIZE_2_64).unwrap();
    let io = tree.new_io("dev", 4, Some(dev.clone())).unwrap();
    let ram = tree.new_ram("ram", 4096).unwrap();
    tree.add_subregion(root, 0x1000, io).unwrap();
    tree.add_subregion(root, 0x1004, ram).unwrap();
    let space = tree
        .add_address_space("memory", root, Unassigned::Zero)
        .unwrap();
    let (value, result) = space.read(0x1000, 8);
    assert_eq!(result, MemTxResult::Ok);
    assert_eq!(value, le(&dev.bytes(0, 8)));
    assert_eq!(dev.calls().len(), 1);
}

#[test]
fn unassigned_memory_reads_zero_and_io_reads_ones() {
    let mut tree = MemoryTree::new();
    let sys = tree.new_container("system", SIZE_2_64).unwrap();
    let io_root = tree.new_container("io", 0x10000).unwrap();
    let mem = tree
        .add_address_space("memory", sys, Unassigned::Zero)
        .unwrap();
    let io = tree
        .add_address_space("I/O", io_root, Unassigned::AllOnes)
        .unwrap();
    assert_eq!(mem.read(0x1234, 4), (0, MemTxResult::Unassigned));
    assert_eq!(io.read(0x80, 1), (0xff, MemTxResult::Unassigned));
    assert_eq!(io.read(0x80, 2), (0xffff, MemTxResult::Unassigned));
    assert_eq!(io.write(0x80, 1, 0), MemTxResult::Unassigned);
    let mut buf = [0u8; 3];
    assert_eq!(io.read_buf(0x70, &mut buf), MemTxResult::Unassigned);
    assert_eq!(buf, [0xff; 3]);
    // An io region without callbacks claims its range but reads unassigned.
    let dead = tree.new_io("dead", 4, None).unwrap();
    tree.add_subregion(io_root, 0x60, dead).unwrap();
    assert_eq!(io.read(0x60, 1), (0xff, MemTxResult::Unassigned));
    assert_eq!(io.view().lookup(0x60).unwrap().region, dead);
}

#[test]
fn rom_writes_are_dropped_and_romd_switches_reads() {
    let flash = ByteDevice::new(AccessRules::default(), 64);
    let mut tree = MemoryTree::new();
    let sys = tree.new_container("system", SIZE_2_64).unwrap();
    let rom = tree.new_rom("rom", 4096).unwrap();
    tree.ram_block(rom)
        .unwrap()
        .write(0, &[1, 2, 3, 4])
        .unwrap();
    let romd = tree.new_romd("flash", 4096, Some(flash.clone())).unwrap();
    tree.ram_block(romd)
        .unwrap()
        .write(0, &[9, 9, 9, 9])
        .unwrap();
    tree.add_subregion(sys, 0, rom).unwrap();
    tree.add_subregion(sys, 0x10000, romd).unwrap();
    let mem = tree
        .add_address_space("memory", sys, Unassigned::Zero)
        .unwrap();

    assert_eq!(mem.write(0, 4, 0xdeadbeef), MemTxResult::Ok);
    assert_eq!(mem.read(0, 4), (0x04030201, MemTxResult::Ok));
    assert_eq!(mem.write_buf(0, &[7; 8]), MemTxResult::Ok);
    assert_eq!(mem.read(0, 4).0, 0x04030201);

    // romd mode: reads from memory, writes to the device.
    assert_eq!(mem.read(0x10000, 4), (0x09090909, MemTxResult::Ok));
    assert!(flash.calls().is_empty());
    assert_eq!(mem.write(0x10000, 1, 0xff), MemTxResult::Ok);
    assert_eq!(flash.calls(), vec![('w', 0, 1, 0xff)]);
    // Device mode: reads go to the callbacks too.
    tree.set_romd_mode(romd, false).unwrap();
    assert_eq!(mem.read(0x10000, 1), (0xff, MemTxResult::Ok));
    assert_eq!(flash.calls(), vec![('r', 0, 1, 0xff)]);

    // Inherited read-only: a writable RAM under a read-only container.
    let ro = tree.new_container("ro", 0x1000).unwrap();
    let ram = tree.new_ram("ram", 0x1000).unwrap();
    tree.add_subregion(ro, 0, ram).unwrap();
    tree.add_subregion(sys, 0x20000, ro).unwrap();
    tree.set_readonly(ro, true).unwrap();
    assert_eq!(mem.write(0x20000, 4, 0x55aa55aa), MemTxResult::Ok);
    assert_eq!(mem.read(0x20000, 4).0, 0);
    tree.set_readonly(ro, false).unwrap();
    mem.write(0x20000, 4, 0x55aa55aa);
    assert_eq!(mem.read(0x20000, 4).0, 0x55aa55aa);
}

#[test]
fn buffer_access_spans_ram_device_and_hole() {
    let dev = ByteDevice::new(AccessRules::with_impl(1, 4), 64);
    let mut tree = MemoryTree::new();
    let sys = tree.new_container("system", SIZE_2_64).unwrap();
    let ram = tree.new_ram("ram", 0x1000).unwrap();
    let io = tree.new_io("dev", 16, Some(dev.clone())).unwrap();
    tree.add_subregion(sys, 0, ram).unwrap();
    tree.add_subregion(sys, 0x1000, io).unwrap();
    let mem = tree
        .add_address_space("memory", sys, Unassigned::Zero)
        .unwrap();
    tree.ram_block(ram)
        .unwrap()
        .write(0xffc, &[0xa1, 0xa2, 0xa3, 0xa4])
        .unwrap();

    let mut buf = [0xeeu8; 4 + 16 + 4];
    assert_eq!(mem.read_buf(0xffc, &mut buf), MemTxResult::Unassigned);
    assert_eq!(&buf[..4], &[0xa1, 0xa2, 0xa3, 0xa4]);
    assert_eq!(&buf[4..20], dev.bytes(0, 16).as_slice());
    assert_eq!(&buf[20..], &[0, 0, 0, 0]);
    // The device part is read in 8-byte pieces (valid max), each split into
    // the implemented 4 bytes.
    let sizes: Vec<u32> = dev.calls().iter().map(|c| c.2).collect();
    assert_eq!(sizes, vec![4, 4, 4, 4]);

    // Unaligned buffer write into the device: pieces follow alignment.
    let data = [1u8, 2, 3, 4, 5, 6, 7];
    assert_eq!(mem.write_buf(0x1001, &data), MemTxResult::Ok);
    let pieces: Vec<(u64, u32)> = dev.calls().iter().map(|c| (c.1, c.2)).collect();
    assert_eq!(pieces, vec![(1, 1), (2, 2), (4, 4)]);
    assert_eq!(dev.bytes(1, 7), data.to_vec());
}

#[test]
fn access_off_the_end_of_the_address_space() {
    let mut tree = MemoryTree::new();
    let sys = tree.new_container("system", SIZE_2_64).unwrap();
    let ram = tree.new_ram("top", 0x1000).unwrap();
    tree.add_subregion(sys, u64::MAX - 0xfff, ram).unwrap();
    let mem = tree
        .add_address_space("memory", sys, Unassigned::Zero)
        .unwrap();
    mem.write(u64::MAX - 1, 2, 0xabcd);
    assert_eq!(mem.read(u64::MAX - 1, 2), (0xabcd, MemTxResult::Ok));
    let mut buf = [0x55u8; 4];
    assert_eq!(
        mem.read_buf(u64::MAX - 1, &mut buf),
        MemTxResult::Unassigned
    );
    assert_eq!(buf, [0xcd, 0xab, 0, 0]);
}

fn rules_strategy() -> impl Strategy<Value = AccessRules> {
    let size = prop_oneof![Just(1u32), Just(2), Just(4), Just(8)];
    (size.clone(), size, any::<bool>()).prop_map(|(a, b, big)| AccessRules {
        impl_min: a.min(b),
        impl_max: a.max(b),
        endianness: if big {
            Endianness::Big
        } else {
            Endianness::Little
        },
        ..AccessRules::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the implemented sizes and endianness, a device that presents
    /// a byte array in its own byte order looks like plain memory to the
    /// guest, and widened writes zero only the bytes they add.
    #[test]
    fn split_and_widen_preserve_memory_order(
        rules in rules_strategy(),
        size in prop_oneof![Just(1u32), Just(2), Just(4), Just(8)],
        slot in 0u64..6,
        value in any::<u64>(),
    ) {
        let dev = ByteDevice::new(rules, 64);
        let (_tree, space) = space_with(dev.clone(), 64);
        let offset = slot * 8 + if size < 8 { size as u64 * (slot % (8 / size as u64)) } else { 0 };
        let (read, result) = space.read(0x1000 + offset, size);
        prop_assert_eq!(result, MemTxResult::Ok);
        prop_assert_eq!(read, le(&dev.bytes(offset, size as usize)));
        let access = size.min(rules.impl_max).max(rules.impl_min);
        let calls = dev.calls();
        prop_assert_eq!(calls.len() as u32, (size / access).max(1));
        prop_assert!(calls.iter().all(|c| c.2 == access));

        prop_assert_eq!(space.write(0x1000 + offset, size, value), MemTxResult::Ok);
        let want = &value.to_le_bytes()[..size as usize];
        prop_assert_eq!(dev.bytes(offset, size as usize), want.to_vec());
        if access > size {
            let extra = (access - size) as usize;
            prop_assert_eq!(dev.bytes(offset + size as u64, extra), vec![0; extra]);
        }
    }

    /// Lookup (with its most-recently-used shortcut) agrees with a linear
    /// scan of the ranges, for many ranges and random addresses.
    #[test]
    fn lookup_matches_linear_scan(
        n in 1usize..400,
        gap in 1u64..64,
        addrs in proptest::collection::vec(any::<u64>(), 64),
    ) {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).unwrap();
        for i in 0..n as u64 {
            let io = tree.new_io("r", 16, None).unwrap();
            tree.add_subregion(sys, i * (16 + gap), io).unwrap();
        }
        let space = tree.add_address_space("memory", sys, Unassigned::Zero).unwrap();
        let view = space.view();
        let limit = n as u64 * (16 + gap) + 32;
        for a in addrs.into_iter().flat_map(|a| [a % limit, a]) {
            let scan = view.ranges().iter().find(|r| r.contains(a)).map(|r| r.start);
            prop_assert_eq!(view.lookup(a).map(|r| r.start), scan);
        }
    }
}
