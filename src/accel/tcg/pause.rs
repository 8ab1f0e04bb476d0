//! Pausing software harts at an instruction boundary.
//!
//! A pause request is a flag every hart looks at when it services its
//! attention flag (between translated blocks, so never mid-instruction).
//! A hart that sees it parks here and counts itself paused; `pause_all`
//! returns once every hart that is executing guest code has parked. Harts
//! stopped by SBI HSM are not executing and do not count; one that is
//! started while the VM is paused parks before its first instruction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    /// Harts inside `Hart::run` (executing or about to).
    active: usize,
    /// Of those, how many are parked here.
    parked: usize,
}

/// The harts' pause gate, shared through the `RiscvSystem`.
#[derive(Default)]
pub struct PauseGate {
    requested: AtomicBool,
    /// Counts pause requests, so that state a parked hart publishes can be
    /// told apart from an earlier pause's.
    epoch: AtomicU64,
    counts: Mutex<Counts>,
    changed: Condvar,
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a pause is requested (cheap; polled by harts).
    #[inline]
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The current pause's number (see `epoch`); read by a hart that
    /// sees a request, which was stored after the number was bumped.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A hart starts executing guest code; it parks first if paused.
    pub fn enter(&self, stop: impl Fn() -> bool) {
        self.register();
        self.park(stop);
    }

    /// A hart starts executing guest code and promises to call
    /// [`PauseGate::park`] before its first instruction.
    pub fn register(&self) {
        self.lock().active += 1;
    }

    /// A hart stops executing guest code (HSM stop, end of the VM).
    pub fn leave(&self) {
        let mut c = self.lock();
        c.active = c.active.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Called by an active hart: parks while a pause is requested and
    /// `stop()` is false. Returns at once when no pause is requested.
    pub fn park(&self, stop: impl Fn() -> bool) {
        if !self.requested() {
            return;
        }
        let mut c = self.lock();
        c.parked += 1;
        self.changed.notify_all();
        while self.requested() && !stop() {
            // The timeout only bounds how late a stop request is seen:
            // `stop` is set from outside this lock.
            c = self
                .changed
                .wait_timeout(c, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        c.parked -= 1;
    }

    /// Requests the pause and waits until every active hart has parked, or
    /// `timeout` passes (returns false then; the request stays). `poke`
    /// wakes the harts so they look (a hart asleep in WFI parks too).
    pub fn pause(&self, poke: impl Fn(), timeout: Duration) -> bool {
        if !self.requested() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.requested.store(true, Ordering::SeqCst);
        poke();
        let deadline = Instant::now() + timeout;
        let mut c = self.lock();
        while c.parked < c.active {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            c = self
                .changed
                .wait_timeout(c, (deadline - now).min(Duration::from_millis(20)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            drop(c);
            // A hart may have gone to sleep between the request and its
            // check; poking again is cheap.
            poke();
            c = self.lock();
        }
        true
    }

    /// Lets parked harts continue.
    pub fn resume(&self) {
        let _c = self.lock();
        self.requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// (active, parked), for tests and introspection.
    pub fn counts(&self) -> (usize, usize) {
        let c = self.lock();
        (c.active, c.parked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// Worker threads count "instructions" and park at each step; a pause
    /// must freeze every counter until resume.
    #[test]
    fn pause_freezes_every_worker_until_resume() {
        let gate = Arc::new(PauseGate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let threads: Vec<_> = counters
            .iter()
            .map(|n| {
                let (gate, stop, n) = (gate.clone(), stop.clone(), n.clone());
                std::thread::spawn(move || {
                    let stopping = || stop.load(Ordering::SeqCst);
                    gate.enter(stopping);
                    while !stopping() {
                        n.fetch_add(1, Ordering::SeqCst);
                        gate.park(stopping);
                    }
                    gate.leave();
                })
            })
            .collect();
        // Wait until all three run (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.iter().any(|n| n.load(Ordering::SeqCst) == 0) {
            assert!(Instant::now() < deadline, "workers did not start");
            std::thread::yield_now();
        }
        assert!(gate.pause(|| {}, Duration::from_secs(10)));
        assert_eq!(gate.counts(), (3, 3));
        let frozen: Vec<u64> = counters.iter().map(|n| n.load(Ordering::SeqCst)).collect();
        // Paused workers are parked in the gate, so their counters cannot
        // move; check a second pause is immediate and idempotent.
        assert!(gate.pause(|| {}, Duration::from_millis(1)));
        let again: Vec<u64> = counters.iter().map(|n| n.load(Ordering::SeqCst)).collect();
        assert_eq!(frozen, again);
        gate.resume();
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters
            .iter()
            .zip(&frozen)
            .any(|(n, f)| n.load(Ordering::SeqCst) == *f)
        {
            assert!(Instant::now() < deadline, "workers did not resume");
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gate.counts(), (0, 0));
    }

    #[test]
    fn a_pause_with_no_active_harts_is_immediate() {
        let gate = PauseGate::default();
        assert!(gate.pause(|| {}, Duration::from_millis(1)));
        gate.resume();
        assert!(!gate.requested());
    }
}
