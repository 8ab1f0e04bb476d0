//! Interrupt lines as eventfds: a device writes the eventfd, and KVM (an
//! irqfd) or a software interrupt controller delivers the interrupt.

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A vm-superio `Trigger` that writes an eventfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// A new, non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(EventFdTrigger(EventFd::new(EFD_NONBLOCK)?))
    }

    /// The eventfd, to register with KVM as an irqfd.
    pub fn event(&self) -> &EventFd {
        &self.0
    }

    /// Reads and clears how many times the line was raised (0 if not).
    pub fn take_count(&self) -> u64 {
        self.0.read().unwrap_or(0)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
