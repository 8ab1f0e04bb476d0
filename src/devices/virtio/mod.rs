//! virtio devices on the virtio-mmio transport (virtio 1.x, MMIO version 2).
//!
//! The split is the one Firecracker and Cloud Hypervisor use:
//! - [`device::VirtioDevice`]: what a device type (block, net, rng, console)
//!   implements: its features, config space and queue processing.
//! - [`mmio::VirtioMmio`]: the transport, a [`RegionOps`](crate::memory::RegionOps)
//!   that sits in the `memory` tree like any other device, owns the status
//!   state machine, the queues' registers and the interrupt status.
//! - [`subscriber::VirtioSubscriber`]: the event-loop side, which waits on
//!   the queues' eventfds and the device's host descriptors and runs the
//!   device's processing.
//!
//! Device work never runs on a vCPU's exit path: a queue notification only
//! signals the queue's eventfd (under KVM the kernel does that itself through
//! an ioeventfd, so the vCPU does not exit at all), and the VMM's event loop
//! processes the queue. Guest memory is reached through vm-memory, from a
//! [`GuestRam`] snapshot of the `memory` view that is replaced on every
//! topology commit (see [`GuestMemoryHandle`]).
//!
//! Wiring a device into a VMM:
//!
//! ```ignore
//! let mem: GuestMemoryHandle = Arc::new(ArcSwap::from_pointee(GuestRam::from_view(&view)?));
//! let mmio = VirtioMmio::new(Box::new(Block::new(&config)?), irq_line, mem.clone())?;
//! let region = tree.new_io("virtio-blk", WINDOW_SIZE as u128, Some(Arc::new(mmio.clone())))?;
//! tree.add_subregion(system, base, region)?;
//! // KVM only: let notifications bypass the vCPU exit.
//! for (index, event) in mmio.queue_events().iter().enumerate() {
//!     vm_fd.register_ioevent(event, &IoEventAddress::Mmio(base + NOTIFY_OFFSET), index as u32)?;
//! }
//! event_manager.add_subscriber(Box::new(VirtioSubscriber::new(mmio)));
//! // On every topology commit: mem.store(Arc::new(GuestRam::from_view(&new_view)?));
//! ```

use std::sync::Arc;

use arc_swap::ArcSwap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::memory::GuestRam;

pub mod block;
pub mod console;
pub mod device;
pub mod fuzz;
pub mod input;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod subscriber;
pub mod tap;

pub use device::{DeviceError, IrqLine, VirtioDevice};

/// Where a descriptor chain lives: its queue's descriptor table and size,
/// and its head index (as the driver put it in the available ring, so
/// possibly out of range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainRef {
    pub desc_table: GuestAddress,
    pub queue_size: u16,
    pub head: u16,
}

impl ChainRef {
    /// Chain `head` of `queue`.
    pub fn new(queue: &Queue, head: u16) -> Self {
        ChainRef {
            desc_table: GuestAddress(queue.desc_table()),
            queue_size: queue.size(),
            head,
        }
    }
}

/// The descriptors of one chain, as far as [`read_chain`] walked it.
#[derive(Debug)]
pub struct ChainDescriptors {
    pub descriptors: Vec<Descriptor>,
    /// False when the chain did not end with a descriptor without
    /// `VIRTQ_DESC_F_NEXT`: the walk stopped early (a loop longer than the
    /// queue, a `next` index out of range, an unreadable descriptor, a total
    /// length over 4 GiB, an indirect descriptor), the chain had more than
    /// the caller's maximum number of descriptors, or it yielded none (its
    /// head index is out of range).
    pub complete: bool,
    /// The walk stopped at a descriptor with `VIRTQ_DESC_F_INDIRECT`.
    pub indirect: bool,
}

/// Walks the chain `chain` (at most `max` descriptors) in guest memory.
///
/// Written here rather than taken from virtio-queue's `DescriptorChain`
/// iterator because that iterator follows `VIRTQ_DESC_F_INDIRECT` whether
/// or not `VIRTIO_RING_F_INDIRECT_DESC` was negotiated, and ends silently on
/// every problem. No device here offers indirect descriptors, so a chain
/// that uses one is malformed (virtio 1.2, 2.7.5.3.1: the driver must not
/// set the flag without the feature): the walk stops there, before reading
/// the table. Each descriptor is read once, so what the device checks is
/// what it uses, whatever the guest changes meanwhile. The other limits are
/// virtio-queue's: at most the queue size of descriptors (which also ends a
/// loop), and 4 GiB in total (virtio 1.2, 2.7.5.2).
pub fn read_chain<M>(mem: &M, chain: ChainRef, max: usize) -> ChainDescriptors
where
    M: GuestMemory + ?Sized,
{
    let mut descriptors = Vec::new();
    let mut index = chain.head;
    let mut total: u32 = 0;
    let limit = max.min(chain.queue_size as usize);
    let cut = |descriptors, indirect| ChainDescriptors {
        descriptors,
        complete: false,
        indirect,
    };
    loop {
        if index >= chain.queue_size || descriptors.len() == limit {
            return cut(descriptors, false);
        }
        // At most 2^16 * 16 past a 64-bit address: checked.
        let Some(addr) = chain.desc_table.checked_add(16 * u64::from(index)) else {
            return cut(descriptors, false);
        };
        let Ok(desc) = mem.read_obj::<Descriptor>(addr) else {
            return cut(descriptors, false);
        };
        if desc.refers_to_indirect_table() {
            return cut(descriptors, true);
        }
        let Some(sum) = total.checked_add(desc.len()) else {
            return cut(descriptors, false);
        };
        total = sum;
        descriptors.push(desc);
        if !desc.has_next() {
            return ChainDescriptors {
                descriptors,
                complete: true,
                indirect: false,
            };
        }
        index = desc.next();
    }
}

/// Takes the next available chain's head index from `queue`, if the driver
/// published one. An available index the driver moved more than a ring
/// ahead is a broken queue.
pub fn pop_head<M>(queue: &mut Queue, index: usize, mem: &M) -> Result<Option<u16>, DeviceError>
where
    M: GuestMemory,
{
    let mut iter = queue
        .iter(mem)
        .map_err(|e| DeviceError::BadQueue(index, e.to_string()))?;
    Ok(iter.next().map(|chain| chain.head_index()))
}

/// How much one pass over a queue may do before the device yields the
/// event loop (and with it the transport lock, which pause, snapshots,
/// register accesses and, for the event loop, every other device wait
/// for). A device whose budget runs out stops where it is, without losing
/// or reordering anything, and says so through
/// [`VirtioDevice::has_more_work`]; the transport then notifies the queue
/// again, so the event loop comes back after serving what else is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassBudget {
    pub requests: u32,
    pub bytes: u64,
}

impl PassBudget {
    /// Whether nothing more may be started in this pass.
    pub fn spent(&self) -> bool {
        self.requests == 0 || self.bytes == 0
    }

    /// Counts one request of `bytes`.
    pub fn charge_request(&mut self, bytes: u64) {
        self.requests = self.requests.saturating_sub(1);
        self.charge_bytes(bytes);
    }

    /// Counts `bytes` of data moved.
    pub fn charge_bytes(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// The guest memory devices use, shared between the VMM (which stores a
/// new [`GuestRam`] after every topology commit) and the transports and
/// event loop (which load the current one for each batch of work).
pub type GuestMemoryHandle = Arc<ArcSwap<GuestRam>>;

/// A driver-side view of a split virtqueue in test guest memory, for the
/// device and transport tests: builds descriptor tables and rings by hand so
/// that tests can also build the malformed ones a real driver never would.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use arc_swap::ArcSwap;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::{GuestMemoryHandle, IrqLine};
    use crate::memory::{AddressSpace, GuestRam, MemoryTree, Unassigned, SIZE_2_64};

    /// Device-readable (`false`) or device-writable (`true`) descriptor.
    pub const R: u16 = 0;
    pub const W: u16 = VRING_DESC_F_WRITE as u16;
    pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;

    /// Guest memory of `size` bytes at guest address 0.
    pub fn guest_memory(size: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory")
    }

    /// A split queue of `size` entries at `base`: descriptor table, then
    /// the available ring, then the used ring (4-aligned).
    pub struct TestQueue {
        pub size: u16,
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        /// Next free descriptor index for [`TestQueue::add_chain`].
        next_desc: u16,
        avail_idx: u16,
        used_seen: u16,
    }

    impl TestQueue {
        pub fn new(mem: &GuestMemoryMmap<()>, base: u64, size: u16) -> Self {
            let desc = base;
            let avail = desc + 16 * size as u64;
            let used = (avail + 6 + 2 * size as u64).next_multiple_of(4);
            let q = TestQueue {
                size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            };
            // Rings start zeroed: flags 0, idx 0.
            mem.write_obj(0u32, GuestAddress(avail)).expect("avail");
            mem.write_obj(0u32, GuestAddress(used)).expect("used");
            q
        }

        /// The device's side of this queue, ready to use.
        pub fn device_queue(&self) -> Queue {
            let mut q = Queue::new(self.size).expect("queue size");
            q.try_set_desc_table_address(GuestAddress(self.desc))
                .expect("desc");
            q.try_set_avail_ring_address(GuestAddress(self.avail))
                .expect("avail");
            q.try_set_used_ring_address(GuestAddress(self.used))
                .expect("used");
            q.set_ready(true);
            q
        }

        /// Writes descriptor `index` as given (no checks, for malformed
        /// chains).
        pub fn write_desc(
            &self,
            mem: &GuestMemoryMmap<()>,
            index: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            let at = GuestAddress(self.desc + 16 * index as u64);
            mem.write_obj(addr, at).expect("desc addr");
            mem.write_obj(len, GuestAddress(at.0 + 8))
                .expect("desc len");
            mem.write_obj(flags, GuestAddress(at.0 + 12))
                .expect("desc flags");
            mem.write_obj(next, GuestAddress(at.0 + 14))
                .expect("desc next");
        }

        /// Writes a chain of `(addr, len, R|W)` descriptors into consecutive
        /// free slots and returns its head; does not publish it.
        pub fn add_chain(&mut self, mem: &GuestMemoryMmap<()>, descs: &[(u64, u32, u16)]) -> u16 {
            let head = self.next_desc;
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let index = (head + i as u16) % self.size;
                let last = i + 1 == descs.len();
                let flags = if last { flags } else { flags | NEXT };
                self.write_desc(mem, index, addr, len, flags, (index + 1) % self.size);
            }
            self.next_desc = (head + descs.len() as u16) % self.size;
            head
        }

        /// Puts `head` in the available ring and bumps its index.
        pub fn publish(&mut self, mem: &GuestMemoryMmap<()>, head: u16) {
            let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
            mem.write_obj(head, GuestAddress(slot)).expect("avail slot");
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.set_avail_idx(mem, self.avail_idx);
        }

        /// Sets the available index directly (for bogus indexes).
        pub fn set_avail_idx(&self, mem: &GuestMemoryMmap<()>, idx: u16) {
            mem.write_obj(idx, GuestAddress(self.avail + 2))
                .expect("avail idx");
        }

        /// `add_chain` + `publish`.
        pub fn push(&mut self, mem: &GuestMemoryMmap<()>, descs: &[(u64, u32, u16)]) -> u16 {
            let head = self.add_chain(mem, descs);
            self.publish(mem, head);
            head
        }

        /// The used-ring entries `(id, len)` added since the last call.
        pub fn take_used(&mut self, mem: &GuestMemoryMmap<()>) -> Vec<(u32, u32)> {
            let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).expect("used idx");
            let mut out = Vec::new();
            while self.used_seen != idx {
                let slot = self.used + 4 + 8 * (self.used_seen % self.size) as u64;
                let id: u32 = mem.read_obj(GuestAddress(slot)).expect("used id");
                let len: u32 = mem.read_obj(GuestAddress(slot + 4)).expect("used len");
                out.push((id, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }

    /// A file in the temp directory, removed on drop.
    pub struct TempFile(pub PathBuf);

    static UNIQUE: AtomicUsize = AtomicUsize::new(0);

    impl TempFile {
        pub fn new(contents: &[u8]) -> Self {
            let path = std::env::temp_dir().join(format!(
                "ember-virtio-{}-{}.img",
                std::process::id(),
                UNIQUE.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).expect("temp file");
            TempFile(path)
        }

        pub fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.0).expect("temp file")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// `size` bytes of RAM at guest address 0 in a memory tree, and a
    /// handle on its GuestRam, as the VMM builds them.
    pub fn ram_handle(size: u64) -> (MemoryTree, AddressSpace, GuestMemoryHandle) {
        let mut tree = MemoryTree::new();
        let sys = tree.new_container("system", SIZE_2_64).expect("root");
        let ram = tree.new_ram("ram", size).expect("ram");
        tree.add_subregion(sys, 0, ram).expect("place ram");
        let space = tree
            .add_address_space("memory", sys, Unassigned::Zero)
            .expect("address space");
        let guest = GuestRam::from_view(&space.view()).expect("guest ram");
        (tree, space, Arc::new(ArcSwap::from_pointee(guest)))
    }

    /// An [`IrqLine`] that records every level change.
    #[derive(Default)]
    pub struct RecordingIrq {
        pub levels: Mutex<Vec<bool>>,
    }

    impl RecordingIrq {
        pub fn take(&self) -> Vec<bool> {
            std::mem::take(&mut *self.levels.lock().expect("irq log"))
        }
    }

    impl IrqLine for RecordingIrq {
        fn set_level(&self, asserted: bool) {
            self.levels.lock().expect("irq log").push(asserted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
    use vm_memory::GuestMemoryMmap;

    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;

    /// A descriptor table of `descs` at 0x1000 in 64 KiB of memory.
    fn table(descs: &[(u64, u32, u16, u16)]) -> GuestMemoryMmap<()> {
        let mem = testing::guest_memory(0x10000);
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let d = Descriptor::new(addr, len, flags, next);
            mem.write_obj(d, GuestAddress(0x1000 + 16 * i as u64))
                .unwrap();
        }
        mem
    }

    /// Chain `head` as virtio-queue's iterator walks it (queue of 16 with
    /// the table at 0x1000).
    fn reference_chain(mem: &GuestMemoryMmap<()>, head: u16) -> Vec<Descriptor> {
        let mut tq = testing::TestQueue::new(mem, 0x1000, 16);
        tq.publish(mem, head);
        let mut queue = tq.device_queue();
        queue
            .pop_descriptor_chain(mem)
            .map(|c| c.collect())
            .unwrap_or_default()
    }

    fn descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
        (
            any::<u64>(),
            prop_oneof![0u32..4096, any::<u32>()],
            // NEXT often, WRITE sometimes, INDIRECT rarely.
            prop_oneof![4 => Just(NEXT), 2 => Just(0u16), 1 => Just(NEXT | 2), 1 => Just(INDIRECT)],
            0u16..20,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Against virtio-queue's own iterator: without indirect
        /// descriptors, `read_chain` yields the same descriptors, and
        /// calls the chain complete exactly when the last one ends it. With
        /// one, it stops before it (never reading its table) and says so.
        #[test]
        fn read_chain_matches_virtio_queue_without_indirect_tables(
            descs in proptest::collection::vec(descriptor(), 1..16),
            head in 0u16..18,
        ) {
            let mem = table(&descs);
            let size = 16u16;
            let chain = ChainRef { desc_table: GuestAddress(0x1000), queue_size: size, head };
            let ours = read_chain(&mem, chain, usize::MAX);
            let theirs: Vec<Descriptor> = reference_chain(&mem, head);
            let key = |v: &[Descriptor]| -> Vec<(u64, u32, u16, u16)> {
                v.iter().map(|d| (d.addr().0, d.len(), d.flags(), d.next())).collect()
            };
            // The index of the first indirect descriptor the walk meets,
            // following `next` like the reference iterator.
            let direct_prefix = theirs.len().min(ours.descriptors.len());
            prop_assert_eq!(key(&ours.descriptors), key(&theirs[..direct_prefix]));
            if ours.indirect {
                prop_assert!(!ours.complete);
                prop_assert!(ours.descriptors.iter().all(|d| !d.refers_to_indirect_table()));
            } else {
                prop_assert_eq!(key(&ours.descriptors), key(&theirs));
                let ends = theirs.last().is_some_and(|d| !d.has_next());
                prop_assert_eq!(ours.complete, ends);
            }
            prop_assert!(ours.descriptors.len() <= size as usize);
        }
    }

    #[test]
    fn read_chain_stops_at_max_and_at_4_gib() {
        let mem = table(&[(0, 100, NEXT, 1), (0, 100, NEXT, 2), (0, 100, 0, 0)]);
        let chain = ChainRef {
            desc_table: GuestAddress(0x1000),
            queue_size: 16,
            head: 0,
        };
        let two = read_chain(&mem, chain, 2);
        assert_eq!((two.descriptors.len(), two.complete), (2, false));
        let all = read_chain(&mem, chain, 3);
        assert_eq!((all.descriptors.len(), all.complete), (3, true));
        let mem = table(&[(0, u32::MAX, NEXT, 1), (0, 1, 0, 0)]);
        let big = read_chain(&mem, chain, 16);
        assert_eq!((big.descriptors.len(), big.complete), (1, false));
        // A table beyond memory, and a head out of range.
        let far = ChainRef {
            desc_table: GuestAddress(u64::MAX - 8),
            ..chain
        };
        assert!(!read_chain(&mem, far, 16).complete);
        let out = ChainRef { head: 16, ..chain };
        assert!(read_chain(&mem, out, 16).descriptors.is_empty());
    }
}
