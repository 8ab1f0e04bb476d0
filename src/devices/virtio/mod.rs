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

use std::ops::Deref;
use std::sync::Arc;

use arc_swap::ArcSwap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

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

/// The descriptors of one chain, as far as virtio-queue's iterator yields
/// them.
#[derive(Debug)]
pub struct ChainDescriptors {
    pub descriptors: Vec<Descriptor>,
    /// False when the chain did not end with a descriptor without
    /// `VIRTQ_DESC_F_NEXT`: the iterator stopped early (a loop exhausted its
    /// length budget, a `next` index or indirect table was out of range or
    /// unreadable, the total length passed 4 GiB), the chain had more than
    /// the caller's maximum number of descriptors, or it yielded none (its
    /// head index is out of range).
    pub complete: bool,
}

/// Collects at most `max` descriptors of `chain`.
///
/// virtio-queue's iterator already bounds a chain (by the queue size, or
/// the indirect table's size, and by 4 GiB in total) but ends silently on
/// every problem; checking that the last descriptor yielded does not point
/// further tells a complete chain from one that was cut off.
pub fn collect_chain<M>(chain: DescriptorChain<M>, max: usize) -> ChainDescriptors
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut descriptors = Vec::new();
    for desc in chain {
        if descriptors.len() == max {
            return ChainDescriptors {
                descriptors,
                complete: false,
            };
        }
        descriptors.push(desc);
    }
    let complete = descriptors.last().is_some_and(|d| !d.has_next());
    ChainDescriptors {
        descriptors,
        complete,
    }
}

/// The guest memory devices use, shared between the VMM (which stores a
/// new [`GuestRam`] after every topology commit) and the transports and
/// event loop (which load the current one for each batch of work).
pub type GuestMemoryHandle = Arc<ArcSwap<GuestRam>>;

/// A driver-side view of a split virtqueue in test guest memory, for the
/// device and transport tests: builds descriptor tables and rings by hand so
/// that tests can also build the malformed ones a real driver never would.
/// Takes every available chain of `queue` (at most one ring's worth:
/// virtio-queue refuses an available index more than the queue size ahead,
/// and the driver notifies again for what it adds meanwhile), completes
/// each with the used length `complete` returns, and says whether the
/// driver must be interrupted. A chain that cannot be returned is a device
/// error.
pub(crate) fn drain_queue<'m>(
    queue: &mut virtio_queue::Queue,
    index: usize,
    mem: &'m vm_memory::GuestMemoryMmap<()>,
    mut complete: impl FnMut(
        DescriptorChain<&'m vm_memory::GuestMemoryMmap<()>>,
    ) -> Result<u32, DeviceError>,
) -> Result<bool, DeviceError> {
    use virtio_queue::{QueueOwnedT, QueueT};
    let bad = |e: virtio_queue::Error| DeviceError::BadChain {
        queue: index,
        reason: e.to_string(),
    };
    let chains: Vec<_> = queue.iter(mem).map_err(bad)?.collect();
    if chains.is_empty() {
        return Ok(false);
    }
    for chain in chains {
        let head = chain.head_index();
        let len = complete(chain)?;
        queue.add_used(mem, head, len).map_err(bad)?;
    }
    queue.needs_notification(mem).map_err(bad)
}

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
