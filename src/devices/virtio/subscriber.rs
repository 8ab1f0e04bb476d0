//! The event-loop side of a virtio-mmio transport.
//!
//! A [`VirtioSubscriber`] waits on the transport's queue eventfds
//! (level-triggered: each wake-up drains the eventfd, so a notification
//! that arrives while the queue is being processed wakes the loop again
//! and is never lost) and on the device's host descriptors (edge-triggered,
//! see [`VirtioDevice`](super::VirtioDevice)), and hands each event to the
//! transport, which runs the device under its lock.

use std::io;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::mmio::VirtioMmio;

/// Epoll data tag bit for host descriptors; queue eventfds carry their
/// queue index alone.
const HOST_TAG: u32 = 1 << 31;

/// Processes one transport's queue and host events on the event loop.
pub struct VirtioSubscriber {
    mmio: VirtioMmio,
}

impl VirtioSubscriber {
    /// A subscriber for `mmio` (a clone of the transport in the memory
    /// tree). Add it to an `EventManager` with `add_subscriber`.
    pub fn new(mmio: VirtioMmio) -> Self {
        VirtioSubscriber { mmio }
    }

    /// The transport this subscriber drives.
    pub fn transport(&self) -> &VirtioMmio {
        &self.mmio
    }

    fn handle_queue(&self, index: usize, ops: &mut EventOps) {
        let Some(event) = self.mmio.queue_events().get(index) else {
            return;
        };
        match event.read() {
            Ok(_) => self.mmio.process_queue_event(index),
            // Spurious wake-up: someone else drained it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // An eventfd read does not fail otherwise; if it does, stop
                // watching it rather than spin on a descriptor that stays
                // readable.
                eprintln!("virtio: queue {index} eventfd: {e}; no longer watched");
                let _ = ops.remove(Events::empty(event));
            }
        }
    }
}

impl MutEventSubscriber for VirtioSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.mmio.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(event, index as u32, EventSet::IN)) {
                eprintln!("virtio: cannot watch queue {index}: {e}");
            }
        }
        for (index, fd) in self.mmio.host_fds().into_iter().enumerate() {
            let events = Events::with_data_raw(
                fd,
                HOST_TAG | index as u32,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            );
            if let Err(e) = ops.add(events) {
                eprintln!("virtio: cannot watch host descriptor {index}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if data & HOST_TAG != 0 {
            // Edge-triggered: one call per edge, errors and hang-ups
            // included (the device sees them when it reads), so this cannot
            // spin.
            self.mmio.process_host_event((data & !HOST_TAG) as usize);
        } else {
            let index = data as usize;
            if index < self.mmio.queue_events().len() {
                self.handle_queue(index, ops);
            } else {
                // Not ours: stop watching it so it cannot wake us forever.
                let _ = ops.remove(Events::empty_raw(events.fd()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::{Block, BlockConfig};
    use crate::devices::virtio::device::{DeviceError, VirtioDevice, VIRTIO_F_VERSION_1};
    use crate::devices::virtio::mmio::{interrupt, status, WINDOW_SIZE};
    use crate::devices::virtio::testing::{ram_handle, RecordingIrq, TempFile, TestQueue, R, W};
    use crate::memory::{GuestRam, RegionOps};
    use event_manager::{EventManager, SubscriberOps};
    use std::io::Write;
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    type Manager = EventManager<Box<dyn MutEventSubscriber + Send>>;

    const BASE: u64 = 0x1000_0000;

    /// The whole path a guest driver takes: registers through memory
    /// dispatch, requests in guest RAM of a MemoryTree, the notification
    /// through QueueNotify, processing on an event manager.
    #[test]
    fn block_device_end_to_end() {
        let image: Vec<u8> = (0..16 * 512).map(|i| (i % 251) as u8).collect();
        let disk = TempFile::new(&image);
        let (mut tree, space, mem) = ram_handle(0x10_0000);
        let irq = Arc::new(RecordingIrq::default());
        let block = Block::new(&BlockConfig {
            path: disk.0.clone(),
            readonly: false,
            id: None,
        })
        .unwrap();
        let mmio = VirtioMmio::new(Box::new(block), irq.clone(), mem.clone()).unwrap();
        let root = tree.address_space_root(&space).unwrap();
        let region = tree
            .new_io(
                "virtio-blk",
                WINDOW_SIZE as u128,
                Some(Arc::new(mmio.clone())),
            )
            .unwrap();
        tree.add_subregion(root, BASE, region).unwrap();
        // What the VMM does after every commit.
        mem.store(Arc::new(GuestRam::from_view(&space.view()).unwrap()));

        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(Box::new(VirtioSubscriber::new(mmio.clone())));

        let r = |off: u64| space.read(BASE + off, 4).0 as u32;
        let w = |off: u64, v: u32| {
            space.write(BASE + off, 4, v as u64);
        };
        assert_eq!(r(0x0), 0x7472_6976);
        assert_eq!(r(0x4), 2);
        assert_eq!(r(0x8), 2);
        // Capacity through config space, as two 32-bit reads.
        assert_eq!(r(0x100) as u64 | (r(0x104) as u64) << 32, 16);

        w(0x70, 0);
        w(0x70, status::ACKNOWLEDGE);
        w(0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(0x14, 1);
        let high = r(0x10);
        assert_eq!(high, 1, "VERSION_1 is bit 32");
        w(0x24, 1);
        w(0x20, 1);
        w(0x70, 0xb);
        assert_eq!(r(0x70), 0xb);

        let guest = mem.load_full();
        let gm = guest.memory();
        let mut tq = TestQueue::new(gm, 0x4000, 16);
        w(0x30, 0);
        assert_eq!(r(0x34), 256);
        w(0x38, 16);
        w(0x80, tq.desc as u32);
        w(0x84, 0);
        w(0x90, tq.avail as u32);
        w(0x94, 0);
        w(0xa0, tq.used as u32);
        w(0xa4, 0);
        w(0x44, 1);
        w(0x70, 0xf);
        assert_eq!(r(0x70), 0xf);

        // Write sector 3.
        let hdr = |kind: u32, sector: u64| {
            gm.write_obj(kind, GuestAddress(0x8000)).unwrap();
            gm.write_obj(0u32, GuestAddress(0x8004)).unwrap();
            gm.write_obj(sector, GuestAddress(0x8008)).unwrap();
        };
        hdr(VIRTIO_BLK_T_OUT, 3);
        gm.write_slice(&[0x5a; 512], GuestAddress(0x9000)).unwrap();
        let head = tq.push(gm, &[(0x8000, 16, R), (0x9000, 512, R), (0x8100, 1, W)]);
        w(0x50, 0);
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(tq.take_used(gm), vec![(head as u32, 1)]);
        assert_eq!(gm.read_obj::<u8>(GuestAddress(0x8100)).unwrap(), 0);
        assert_eq!(r(0x60), interrupt::USED_RING);
        assert_eq!(irq.take(), vec![true]);
        w(0x64, interrupt::USED_RING);
        assert_eq!(r(0x60), 0);
        assert_eq!(irq.take(), vec![false]);
        let mut expected = image.clone();
        expected[3 * 512..4 * 512].fill(0x5a);
        assert_eq!(disk.contents(), expected);

        // Read sectors 2..5 back.
        hdr(VIRTIO_BLK_T_IN, 2);
        let head = tq.push(gm, &[(0x8000, 16, R), (0xa000, 1536, W), (0x8100, 1, W)]);
        w(0x50, 0);
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(tq.take_used(gm), vec![(head as u32, 1537)]);
        let mut back = vec![0u8; 1536];
        gm.read_slice(&mut back, GuestAddress(0xa000)).unwrap();
        assert_eq!(back, &expected[1024..2560]);

        // Nothing pending: the drained eventfd does not wake the loop.
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        let stats = mmio.stats();
        assert_eq!(stats.notify_writes, 2);
        assert_eq!(stats.queue_events, 2);
        assert_eq!(stats.used_interrupts, 2);

        // A reset through Status stops processing until set up again.
        w(0x70, 0);
        assert_eq!(r(0x70), 0);
        tq.push(gm, &[(0x8000, 16, R), (0xa000, 512, W), (0x8100, 1, W)]);
        w(0x50, 0);
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert!(tq.take_used(gm).is_empty());
    }

    /// A device with one host descriptor that counts its events and never
    /// reads, like a device whose guest ring is full.
    struct HostDev {
        fd: RawFd,
        calls: Arc<AtomicUsize>,
    }

    impl VirtioDevice for HostDev {
        fn device_type(&self) -> u32 {
            3
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[4]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn activate(&mut self, _queues: Vec<Queue>, _features: u64) -> Result<(), DeviceError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn process_queue(
            &mut self,
            _index: usize,
            _mem: &GuestMemoryMmap<()>,
        ) -> Result<bool, DeviceError> {
            Ok(false)
        }
        fn host_fds(&self) -> Vec<RawFd> {
            vec![self.fd]
        }
        fn process_host_event(
            &mut self,
            index: usize,
            _mem: &GuestMemoryMmap<()>,
        ) -> Result<bool, DeviceError> {
            assert_eq!(index, 0);
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(true)
        }
    }

    /// A transport over a [`HostDev`] watching `rx`, on its own event loop.
    fn host_dev_transport(
        rx: &UnixStream,
        mem: &crate::devices::virtio::GuestMemoryHandle,
    ) -> (VirtioMmio, Arc<RecordingIrq>, Arc<AtomicUsize>, Manager) {
        let calls = Arc::new(AtomicUsize::new(0));
        let dev = HostDev {
            fd: rx.as_raw_fd(),
            calls: calls.clone(),
        };
        let irq = Arc::new(RecordingIrq::default());
        let mmio = VirtioMmio::new(Box::new(dev), irq.clone(), mem.clone()).unwrap();
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(Box::new(VirtioSubscriber::new(mmio.clone())));
        (mmio, irq, calls, manager)
    }

    /// Negotiates VERSION_1 and sets up one 4-entry queue, as a driver
    /// would, up to DRIVER_OK.
    fn drive_to_driver_ok(
        mmio: &VirtioMmio,
        mem: &crate::devices::virtio::GuestMemoryHandle,
    ) -> TestQueue {
        drive_queue_to_driver_ok(mmio, mem, 0x4000, 4)
    }

    /// [`drive_to_driver_ok`] with a queue of `size` at `base`.
    fn drive_queue_to_driver_ok(
        mmio: &VirtioMmio,
        mem: &crate::devices::virtio::GuestMemoryHandle,
        base: u64,
        size: u16,
    ) -> TestQueue {
        let w = |off: u64, v: u32| mmio.write(off, 4, v as u64);
        w(0x70, 3);
        w(0x24, 1);
        w(0x20, 1);
        w(0x70, 0xb);
        let tq = TestQueue::new(mem.load().memory(), base, size);
        w(0x38, size as u32);
        w(0x80, tq.desc as u32);
        w(0x90, tq.avail as u32);
        w(0xa0, tq.used as u32);
        w(0x44, 1);
        w(0x70, 0xf);
        tq
    }

    /// Regression for one notification's unbounded work, on the event
    /// loop: a disk asked for 63.5 GiB by one notification gets one bounded
    /// pass per round of the loop, another device's request on the same
    /// loop is served in the same round, and pause stops the disk between
    /// passes (resume picks it up again).
    #[test]
    fn a_busy_disk_does_not_stall_other_devices_or_pause() {
        use crate::devices::virtio::block::SEG_MAX;
        use crate::devices::virtio::rng::Rng;
        const MIB: u32 = 1 << 20;
        let (_tree, _space, mem) = ram_handle(0x40_0000);
        let disk = TempFile::new(&[]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.0)
            .unwrap()
            .set_len(SEG_MAX as u64 * MIB as u64)
            .unwrap();
        let block = Block::new(&BlockConfig {
            path: disk.0.clone(),
            readonly: false,
            id: None,
        })
        .unwrap();
        let irq = Arc::new(RecordingIrq::default());
        let blk = VirtioMmio::new(Box::new(block), irq.clone(), mem.clone()).unwrap();
        let rng = VirtioMmio::new(Box::new(Rng::new()), irq, mem.clone()).unwrap();
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(Box::new(VirtioSubscriber::new(blk.clone())));
        manager.add_subscriber(Box::new(VirtioSubscriber::new(rng.clone())));
        let mut btq = drive_queue_to_driver_ok(&blk, &mem, 0x4000, 256);
        let mut rtq = drive_queue_to_driver_ok(&rng, &mem, 0x8000, 4);
        // The activation kicks find nothing to do.
        while manager.run_with_timeout(0).unwrap() > 0 {}

        let guest = mem.load_full();
        let gm = guest.memory();
        gm.write_obj(VIRTIO_BLK_T_IN, GuestAddress(0x1_0000))
            .unwrap();
        gm.write_obj(0u32, GuestAddress(0x1_0004)).unwrap();
        gm.write_obj(0u64, GuestAddress(0x1_0008)).unwrap();
        let mut chain = vec![(0x1_0000, 16, R)];
        chain.extend(std::iter::repeat_n((0x10_0000, MIB, W), SEG_MAX as usize));
        chain.push((0x1_0100, 1, W));
        let head = btq.add_chain(gm, &chain);
        for _ in 0..256 {
            btq.publish(gm, head);
        }
        blk.write(0x50, 4, 0);
        rtq.push(gm, &[(0x2_0000, 64, W)]);
        rng.write(0x50, 4, 0);

        // One round serves both: the entropy request is done, the disk has
        // done one pass and is due again.
        assert_eq!(manager.run_with_timeout(0).unwrap(), 2);
        assert_eq!(rtq.take_used(gm), vec![(0, 64)]);
        assert!(btq.take_used(gm).is_empty());
        assert!(blk.with_device(|d| d.has_more_work(0)));
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1, "the disk again");
        // Paused between passes: the pending round does nothing and the
        // loop goes quiet.
        blk.pause();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        blk.resume();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1, "resumed");
        assert!(blk.with_device(|d| d.has_more_work(0)));
        assert_eq!(blk.stats().device_errors, 0);
    }

    #[test]
    fn host_descriptors_are_edge_triggered_and_wait_for_activation() {
        let (_tree, _space, mem) = ram_handle(0x10_0000);
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let (mmio, irq, calls, mut manager) = host_dev_transport(&rx, &mem);

        // Input before DRIVER_OK reaches nobody.
        tx.write_all(b"early").unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(mmio.stats().host_events, 1);

        let _tq = drive_to_driver_ok(&mmio, &mem);
        assert!(mmio.is_active());
        // Activation queues one catch-up pass over the ready queue.
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(mmio.stats().queue_events, 1);
        assert!(irq.take().is_empty());

        tx.write_all(b"more").unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(irq.take(), vec![true]);
        // The socket is still readable (nobody read it), but edge-triggered
        // registration does not wake the loop again until new data comes.
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        tx.write_all(b"again").unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_paused_transport_does_no_device_work_until_resumed() {
        let (_tree, _space, mem) = ram_handle(0x10_0000);
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let (mmio, irq, calls, mut manager) = host_dev_transport(&rx, &mem);
        let _tq = drive_to_driver_ok(&mmio, &mem);
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        let before = mmio.stats().queue_events;

        mmio.pause();
        mmio.pause();
        tx.write_all(b"while paused").unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "host event handled while paused"
        );
        mmio.write(0x50, 4, 0);
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert!(irq.take().is_empty());

        // Resume queues a pass over the ready queue: the device gets to
        // pull what arrived while paused.
        mmio.resume();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(mmio.stats().queue_events, before + 2);
        tx.write_all(b"after").unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
