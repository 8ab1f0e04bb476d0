//! What the harts of one riscv64 software-CPU VM share: the `memory`
//! address space, the code-page tracker, the clock, HSM state and cross-hart
//! requests (remote fences), and the VM's exit signal.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::accel::tcg::code_pages::CodePages;
use crate::accel::tcg::pause::PauseGate;
use crate::accel::tcg::signals::HartSignals;
use crate::memory::{AddressSpace, FlatRange, MemoryListener};
use crate::vmm::exit::ExitSignal;

/// Cross-hart request: flush the whole TLB.
pub const REQ_FLUSH_TLB: u32 = 1 << 0;
/// Cross-hart request: drop cached translated code (remote `fence.i`).
pub const REQ_FENCE_I: u32 = 1 << 1;

/// SBI HSM state of a hart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HsmState {
    Started,
    Stopped,
    /// `hart_start` was called; the hart enters `addr` with `a1 = opaque`.
    StartPending {
        addr: u64,
        opaque: u64,
    },
}

/// The shared part of one hart.
pub struct HartShared {
    pub signals: Arc<HartSignals>,
    pub hsm: Mutex<HsmState>,
    /// `REQ_*` bits another hart asked this one to carry out.
    pub requests: AtomicU32,
    /// The hart's counters as of its last service point, for the control
    /// API (the live ones are the hart thread's own).
    pub published: Mutex<super::hart::HartStats>,
    /// The hart's architectural state as of its last park in the pause
    /// gate, with that pause's epoch (for snapshots).
    pub parked_state: Mutex<Option<(u64, super::hart::HartState)>>,
}

impl HartShared {
    pub fn hsm(&self) -> HsmState {
        *self.hsm.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_hsm(&self, state: HsmState) {
        *self.hsm.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Stores the state of a hart about to park for pause `epoch`.
    pub fn publish_state(&self, epoch: u64, state: super::hart::HartState) {
        *self.parked_state.lock().unwrap_or_else(|e| e.into_inner()) = Some((epoch, state));
    }

    /// The state published for pause `epoch`, if the hart has parked in it.
    pub fn parked_state(&self, epoch: u64) -> Option<super::hart::HartState> {
        match &*self.parked_state.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((e, state)) if *e == epoch => Some(state.clone()),
            _ => None,
        }
    }

    /// Asks the hart to carry out `req` at its next block boundary.
    pub fn request(&self, req: u32) {
        self.requests.fetch_or(req, Ordering::SeqCst);
        self.signals.notify();
    }
}

/// Where the SBI debug console writes.
pub type ConsoleSink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The machine-wide state of the software CPU.
pub struct RiscvSystem {
    pub memory: AddressSpace,
    pub harts: Vec<HartShared>,
    pub code: CodePages,
    /// `time` is `time_offset` plus ticks of [`RiscvSystem::timebase`]
    /// since this instant.
    pub clock_base: Instant,
    /// `time` at `clock_base`: 0 for a booted VM, the saved value for a
    /// restored one (so `time` never goes backwards for the guest).
    pub time_offset: u64,
    pub timebase: u64,
    pub exit: Arc<ExitSignal>,
    pub console: ConsoleSink,
    /// Pausing the harts (the control API's pause).
    pub pause: PauseGate,
}

impl RiscvSystem {
    /// `signals[i]` is hart i's; hart 0 starts as `Started`, the others as
    /// `Stopped` (they wait for SBI HSM `hart_start`).
    pub fn new(
        memory: AddressSpace,
        signals: &[Arc<HartSignals>],
        timebase: u64,
        exit: Arc<ExitSignal>,
        console: ConsoleSink,
    ) -> Arc<RiscvSystem> {
        Self::with_time(memory, signals, timebase, exit, console, 0)
    }

    /// As [`RiscvSystem::new`], with `time` starting at `time` ticks (a
    /// restored VM).
    pub fn with_time(
        memory: AddressSpace,
        signals: &[Arc<HartSignals>],
        timebase: u64,
        exit: Arc<ExitSignal>,
        console: ConsoleSink,
        time: u64,
    ) -> Arc<RiscvSystem> {
        let harts = signals
            .iter()
            .enumerate()
            .map(|(i, s)| HartShared {
                signals: s.clone(),
                hsm: Mutex::new(if i == 0 {
                    HsmState::Started
                } else {
                    HsmState::Stopped
                }),
                requests: AtomicU32::new(0),
                published: Mutex::default(),
                parked_state: Mutex::default(),
            })
            .collect();
        let code = CodePages::new(&memory.view());
        Arc::new(RiscvSystem {
            memory,
            harts,
            code,
            clock_base: Instant::now(),
            time_offset: time,
            timebase: timebase.max(1),
            exit,
            console,
            pause: PauseGate::default(),
        })
    }

    /// The current value of `time`.
    #[inline]
    pub fn now_ticks(&self) -> u64 {
        let ns = self.clock_base.elapsed().as_nanos();
        let ticks = (ns * self.timebase as u128 / 1_000_000_000) as u64;
        self.time_offset.wrapping_add(ticks)
    }

    /// The host instant at which `time` reaches `ticks`.
    pub fn instant_of(&self, ticks: u64) -> Option<Instant> {
        // A deadline before the restored start time is already due.
        let ticks = ticks.saturating_sub(self.time_offset);
        let ns = ticks as u128 * 1_000_000_000 / self.timebase as u128;
        let ns = u64::try_from(ns).ok()?;
        self.clock_base.checked_add(Duration::from_nanos(ns))
    }

    /// Stops every hart at an instruction boundary; returns false if they
    /// did not all park within `timeout`.
    pub fn pause_all(&self, timeout: Duration) -> bool {
        self.pause.pause(
            || {
                for h in &self.harts {
                    h.signals.notify();
                }
            },
            timeout,
        )
    }

    /// Lets paused harts continue.
    pub fn resume_all(&self) {
        self.pause.resume();
    }

    /// Stops every hart (the VM is ending).
    pub fn stop_all(&self) {
        for h in &self.harts {
            h.signals.request_stop();
        }
    }
}

/// The software CPU's listener on `memory`: every topology change pokes the
/// harts, which compare their view with the published one and, when it
/// changed, flush their TLBs and translated code before the next block, the
/// way QEMU's `tcg_commit` does. The listener runs just before the new view
/// is published, so harts also compare views periodically (every few
/// thousand blocks) to catch a publication that follows their check.
pub struct TcgMemoryListener {
    system: std::sync::Weak<RiscvSystem>,
    changed: bool,
}

impl TcgMemoryListener {
    pub fn new(system: &Arc<RiscvSystem>) -> Self {
        TcgMemoryListener {
            system: Arc::downgrade(system),
            changed: false,
        }
    }
}

impl MemoryListener for TcgMemoryListener {
    fn begin(&mut self) {
        self.changed = false;
    }
    fn region_add(&mut self, _range: &FlatRange) {
        self.changed = true;
    }
    fn region_del(&mut self, _range: &FlatRange) {
        self.changed = true;
    }
    fn commit(&mut self) {
        if !self.changed {
            return;
        }
        if let Some(system) = self.system.upgrade() {
            for h in &system.harts {
                h.signals.notify();
            }
        }
    }
}
