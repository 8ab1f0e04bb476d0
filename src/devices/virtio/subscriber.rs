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
