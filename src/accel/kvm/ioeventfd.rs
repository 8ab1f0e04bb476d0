//! ioeventfds from the memory model into KVM: a [`MemoryListener`] that
//! turns the tree's `eventfd_add`/`eventfd_del` into `KVM_IOEVENTFD`, so a
//! guest write to, say, a virtio queue-notify register signals the queue's
//! eventfd inside the kernel and the vCPU does not exit at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};

use crate::memory::{IoEventFd, MemoryListener};

/// Which bus the listener's address space is: MMIO (`memory`) or x86
/// port I/O (`I/O`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventBus {
    Mmio,
    Pio,
}

/// Counters and the first error, shared with the VMM.
#[derive(Default)]
pub struct IoEventFdState {
    registered: AtomicU64,
    error: Mutex<Option<String>>,
}

impl IoEventFdState {
    /// ioeventfds currently registered with KVM.
    pub fn registered(&self) -> u64 {
        self.registered.load(Ordering::Relaxed)
    }

    /// The first registration error since the last call. Listener callbacks
    /// cannot fail, so the VMM asks after each commit; a missing ioeventfd
    /// only costs an exit (the device's register handler signals the same
    /// eventfd), so it is reported, not fatal.
    pub fn take_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn record(&self, what: &str, fd: &IoEventFd, e: impl std::fmt::Display) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(format!(
                "{what} at {:#x} (size {}, value {:?}): {e}",
                fd.addr, fd.size, fd.datamatch
            ));
        }
    }
}

/// The listener; register one per address space that has ioeventfds.
pub struct KvmIoEventFdListener {
    vm: Arc<VmFd>,
    bus: IoEventBus,
    state: Arc<IoEventFdState>,
}

impl KvmIoEventFdListener {
    pub fn new(vm: Arc<VmFd>, bus: IoEventBus) -> (Self, Arc<IoEventFdState>) {
        let state = Arc::new(IoEventFdState::default());
        (
            KvmIoEventFdListener {
                vm,
                bus,
                state: state.clone(),
            },
            state,
        )
    }

    fn address(&self, fd: &IoEventFd) -> IoEventAddress {
        match self.bus {
            IoEventBus::Mmio => IoEventAddress::Mmio(fd.addr),
            IoEventBus::Pio => IoEventAddress::Pio(fd.addr),
        }
    }

    /// KVM takes the access length from the datamatch type's size, and
    /// length 0 (any access) only without a value.
    fn apply(&self, fd: &IoEventFd, add: bool) -> Result<(), vmm_sys_util::errno::Error> {
        let addr = self.address(fd);
        let ev = fd.event.as_ref();
        macro_rules! call {
            ($data:expr) => {
                if add {
                    self.vm.register_ioevent(ev, &addr, $data)
                } else {
                    self.vm.unregister_ioevent(ev, &addr, $data)
                }
            };
        }
        // The tree only accepts values that fit the size, so the casts
        // below do not truncate.
        match (fd.size, fd.datamatch) {
            (_, None) if fd.size == 0 => call!(NoDatamatch),
            (1, Some(v)) => call!(v as u8),
            (2, Some(v)) => call!(v as u16),
            (4, Some(v)) => call!(v as u32),
            (8, Some(v)) => call!(v),
            // A size without a value: KVM matches any length then.
            (_, None) => call!(NoDatamatch),
            (_, Some(_)) => Err(vmm_sys_util::errno::Error::new(libc::EINVAL)),
        }
    }
}

impl MemoryListener for KvmIoEventFdListener {
    fn eventfd_add(&mut self, fd: &IoEventFd) {
        match self.apply(fd, true) {
            Ok(()) => {
                self.state.registered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.state.record("KVM_IOEVENTFD", fd, e),
        }
    }

    fn eventfd_del(&mut self, fd: &IoEventFd) {
        match self.apply(fd, false) {
            Ok(()) => {
                self.state.registered.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => self.state.record("KVM_IOEVENTFD (deassign)", fd, e),
        }
    }
}
