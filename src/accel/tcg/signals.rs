//! Asynchronous events for a software-CPU hart: interrupt lines raised by
//! devices and other harts, and wake-ups for a hart parked in WFI.
//!
//! Devices (the PLIC, the SBI's IPI and timer code on another hart, the VMM
//! stopping the VM) never touch a hart's architectural state directly; they
//! set bits here. The hart folds them into its `sip` view at the next block
//! boundary, which is the software CPU's equivalent of an instruction
//! boundary for interrupts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// `sip`/`mip` bit of the supervisor software interrupt.
pub const IRQ_SSIP: u64 = 1 << 1;
/// `sip`/`mip` bit of the supervisor timer interrupt.
pub const IRQ_STIP: u64 = 1 << 5;
/// `sip`/`mip` bit of the supervisor external interrupt.
pub const IRQ_SEIP: u64 = 1 << 9;

/// The shared, thread-safe part of one hart.
#[derive(Debug, Default)]
pub struct HartSignals {
    /// Interrupt-pending bits driven from outside the hart (SEIP as a level
    /// from the PLIC, SSIP set by IPIs).
    lines: AtomicU64,
    /// Set whenever anything here changes, so the hart's hot loop checks one
    /// flag per block instead of several.
    attention: AtomicBool,
    /// The hart should stop running (the VM is ending).
    stop: AtomicBool,
    /// Parking for WFI.
    park: Mutex<()>,
    wake: Condvar,
}

impl HartSignals {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drives an interrupt line (`IRQ_SEIP` from the PLIC) to `level`.
    pub fn set_line(&self, bit: u64, level: bool) {
        let old = if level {
            self.lines.fetch_or(bit, Ordering::SeqCst)
        } else {
            self.lines.fetch_and(!bit, Ordering::SeqCst)
        };
        if (old & bit != 0) != level {
            self.notify();
        }
    }

    /// Raises a bit that the hart itself clears (SSIP from an IPI).
    pub fn raise(&self, bit: u64) {
        self.lines.fetch_or(bit, Ordering::SeqCst);
        self.notify();
    }

    /// Clears a bit, as the hart does when the guest writes `sip.SSIP = 0`.
    pub fn clear(&self, bit: u64) {
        self.lines.fetch_and(!bit, Ordering::SeqCst);
    }

    /// The current line levels.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::SeqCst)
    }

    /// Asks the hart to stop at its next block boundary and wakes it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify();
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The flag [`HartSignals::needs_attention`] reads, for compiled code
    /// that polls it directly.
    pub fn attention_flag(&self) -> &AtomicBool {
        &self.attention
    }

    /// Something changed: the hot loop should look. Cheap enough to poll
    /// once per translated block.
    #[inline]
    pub fn needs_attention(&self) -> bool {
        self.attention.load(Ordering::Relaxed)
    }

    /// Clears the attention flag; the hart does this before re-reading the
    /// state, so an event arriving meanwhile sets it again.
    pub fn acknowledge(&self) {
        self.attention.store(false, Ordering::SeqCst);
    }

    /// Flags the change and wakes the hart if it is parked.
    pub fn notify(&self) {
        self.attention.store(true, Ordering::SeqCst);
        // Taking the lock orders this wake-up after a parking hart's last
        // check, so the notification cannot fall between its check and its
        // wait.
        let _guard = self.park.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// Parks the calling hart until [`HartSignals::notify`] or `deadline`.
    /// `still_idle` is evaluated under the lock: the hart only sleeps if it
    /// still has nothing to do, which closes the lost-wake-up window.
    pub fn park_until(&self, deadline: Option<Instant>, still_idle: impl Fn() -> bool) {
        let guard = self.park.lock().unwrap_or_else(|e| e.into_inner());
        if !still_idle() || self.attention.load(Ordering::SeqCst) {
            return;
        }
        match deadline {
            Some(deadline) => {
                let now = Instant::now();
                if deadline > now {
                    drop(self.wake.wait_timeout(guard, deadline - now));
                }
            }
            None => {
                drop(self.wake.wait(guard));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn set_line_tracks_level_and_flags_changes() {
        let s = HartSignals::new();
        s.set_line(IRQ_SEIP, true);
        assert!(s.needs_attention());
        assert_eq!(s.lines(), IRQ_SEIP);
        s.acknowledge();
        s.set_line(IRQ_SEIP, true);
        assert!(!s.needs_attention(), "no change, no attention");
        s.set_line(IRQ_SEIP, false);
        assert!(s.needs_attention());
        assert_eq!(s.lines(), 0);
    }

    #[test]
    fn notify_wakes_a_parked_hart() {
        let s = Arc::new(HartSignals::new());
        let parked = s.clone();
        let t = std::thread::spawn(move || {
            parked.park_until(None, || parked.lines() == 0);
            parked.lines()
        });
        s.raise(IRQ_SSIP);
        assert_eq!(t.join().unwrap(), IRQ_SSIP);
    }
}
