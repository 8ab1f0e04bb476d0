//! Interrupt lines as eventfds.
//!
//! A device raises its interrupt by writing to an eventfd; the VMM registers
//! the same eventfd with KVM as an irqfd (`KVM_IRQFD`, e.g. GSI 4 for COM1),
//! so the interrupt is injected by the kernel without the VMM's event loop
//! being involved. Without an in-kernel irqchip nobody listens and the
//! counter simply accumulates, which is harmless.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// An interrupt line backed by an eventfd, usable as a vm-superio
/// [`Trigger`](vm_superio::Trigger).
///
/// Cloning shares the same eventfd (no new file descriptor), so a device can
/// own one handle while the VMM keeps another for irqfd registration;
/// [`EventFdTrigger::try_clone`] duplicates the descriptor when an
/// independently owned [`EventFd`] is needed.
#[derive(Clone, Debug)]
pub struct EventFdTrigger {
    event: Arc<EventFd>,
}

impl EventFdTrigger {
    /// A new line on a fresh non-blocking eventfd.
    ///
    /// Non-blocking so that raising the line never stalls a vCPU thread (a
    /// saturated counter fails with `EAGAIN` instead of blocking) and so that
    /// [`EventFdTrigger::drain`] returns at once when nothing is pending.
    pub fn new() -> io::Result<Self> {
        Ok(Self::from_eventfd(EventFd::new(EFD_NONBLOCK)?))
    }

    /// Wraps an existing eventfd. It should be non-blocking; see
    /// [`EventFdTrigger::new`].
    pub fn from_eventfd(event: EventFd) -> Self {
        EventFdTrigger {
            event: Arc::new(event),
        }
    }

    /// The eventfd, to register with KVM as an irqfd or with an event loop.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// A trigger on a duplicate of the descriptor (same eventfd object, so
    /// raising either raises both).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self::from_eventfd(self.event.try_clone()?))
    }

    /// Reads and clears the counter: how many times the line was raised
    /// since the last drain, 0 if never. For tests and for VMMs that poll
    /// the line themselves instead of using an irqfd.
    pub fn drain(&self) -> io::Result<u64> {
        match self.event.read() {
            Ok(count) => Ok(count),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    /// Raises the line (an edge: KVM's irqfd asserts and deasserts the GSI).
    fn trigger(&self) -> io::Result<()> {
        self.event.write(1)
    }
}

/// As a virtio interrupt line: an edge per interrupt (x86 virtio-mmio
/// interrupts are edge-triggered, see the DSDT), nothing on deassert.
impl crate::devices::virtio::IrqLine for EventFdTrigger {
    fn set_level(&self, asserted: bool) {
        if asserted {
            // EAGAIN means the counter is saturated: an interrupt is
            // already pending, so nothing is lost.
            let _ = self.event.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_superio::Trigger;

    #[test]
    fn trigger_counts_and_drain_clears() {
        let line = EventFdTrigger::new().unwrap();
        assert_eq!(line.drain().unwrap(), 0);
        line.trigger().unwrap();
        line.trigger().unwrap();
        assert_eq!(line.drain().unwrap(), 2);
        assert_eq!(line.drain().unwrap(), 0);
    }

    #[test]
    fn as_a_virtio_line_it_fires_on_assert_only() {
        use crate::devices::virtio::IrqLine;
        let line = EventFdTrigger::new().unwrap();
        line.set_level(true);
        line.set_level(false);
        line.set_level(true);
        assert_eq!(line.drain().unwrap(), 2);
    }

    #[test]
    fn clones_share_the_eventfd() {
        let line = EventFdTrigger::new().unwrap();
        let shared = line.clone();
        let dup = line.try_clone().unwrap();
        shared.trigger().unwrap();
        dup.trigger().unwrap();
        assert_eq!(line.event().read().unwrap(), 2);
        assert_eq!(dup.drain().unwrap(), 0);
    }
}
