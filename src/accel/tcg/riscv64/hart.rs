//! One riscv64 hart of the software CPU: architectural state, CSRs, traps,
//! interrupts and the run loop.
//!
//! The hart runs in S and U mode only. Ember plays the part of M-mode
//! firmware: S-mode `ecall` is the SBI (see `sbi.rs`), and every other trap
//! goes straight to the guest's S-mode handler, as if `medeleg`/`mideleg`
//! delegated everything.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::accel::tcg::signals::{HartSignals, IRQ_SEIP, IRQ_SSIP, IRQ_STIP};
use crate::accel::tcg::tlb::SoftTlb;
use crate::memory::FlatView;
use crate::vmm::exit::ExitReason;

use super::block::BlockCache;
use super::jit::{JitPolicy, PendingLink};
use super::system::{HsmState, RiscvSystem, REQ_FENCE_I, REQ_FLUSH_TLB};

/// Privilege levels the hart runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priv {
    User = 0,
    Supervisor = 1,
}

/// Exception causes (`scause` without the interrupt bit).
pub mod cause {
    pub const FETCH_MISALIGNED: u64 = 0;
    pub const FETCH_ACCESS: u64 = 1;
    pub const ILLEGAL: u64 = 2;
    pub const BREAKPOINT: u64 = 3;
    pub const LOAD_MISALIGNED: u64 = 4;
    pub const LOAD_ACCESS: u64 = 5;
    pub const STORE_MISALIGNED: u64 = 6;
    pub const STORE_ACCESS: u64 = 7;
    pub const ECALL_U: u64 = 8;
    pub const ECALL_S: u64 = 9;
    pub const FETCH_PAGE: u64 = 12;
    pub const LOAD_PAGE: u64 = 13;
    pub const STORE_PAGE: u64 = 15;
}

/// A synchronous exception, delivered to S-mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub cause: u64,
    pub tval: u64,
}

impl Exception {
    pub fn new(cause: u64, tval: u64) -> Self {
        Exception { cause, tval }
    }
    pub fn illegal(bits: u64) -> Self {
        Exception::new(cause::ILLEGAL, bits)
    }
}

// sstatus bits.
pub const SSTATUS_SIE: u64 = 1 << 1;
pub const SSTATUS_SPIE: u64 = 1 << 5;
pub const SSTATUS_SPP: u64 = 1 << 8;
pub const SSTATUS_FS: u64 = 3 << 13;
pub const SSTATUS_SUM: u64 = 1 << 18;
pub const SSTATUS_MXR: u64 = 1 << 19;
const SSTATUS_UXL_64: u64 = 2 << 32;
const SSTATUS_SD: u64 = 1 << 63;
const SSTATUS_WRITABLE: u64 =
    SSTATUS_SIE | SSTATUS_SPIE | SSTATUS_SPP | SSTATUS_FS | SSTATUS_SUM | SSTATUS_MXR;
/// Interrupts S-mode can see and enable.
const S_INTERRUPTS: u64 = IRQ_SSIP | IRQ_STIP | IRQ_SEIP;

/// MMU modes, each with its own TLB: user, supervisor, and supervisor with
/// `sstatus.SUM` (Linux flips SUM around every user copy; separate modes
/// mean no flush for that).
pub const MMU_USER: usize = 0;
pub const MMU_SUPER: usize = 1;
pub const MMU_SUPER_SUM: usize = 2;
pub const MMU_MODES: usize = 3;

/// Blocks run between looks at the clock.
const CLOCK_CHECK_BLOCKS: u32 = 2048;

/// Counters for `--timings` and the benchmark notes.
#[derive(Clone, Copy, Debug, Default)]
pub struct HartStats {
    pub instructions: u64,
    pub blocks: u64,
    pub translations: u64,
    /// Blocks compiled to host code.
    pub compilations: u64,
    /// Direct jumps linked between compiled blocks.
    pub chained: u64,
    /// Bytes of host code generated.
    pub code_bytes: u64,
    pub jump_cache_hits: u64,
    pub smc_invalidations: u64,
    /// Whole block-cache flushes (`fence.i`, topology changes, the cache
    /// filling up).
    pub block_flushes: u64,
    pub traps: u64,
    pub interrupts: u64,
    pub sbi_calls: u64,
    pub wfi_sleeps: u64,
    pub mmio: u64,
    pub tlb: crate::accel::tcg::tlb::TlbStats,
}

/// A hart's architectural state, as a snapshot saves it: everything the
/// guest can observe, without the caches (TLB, translated blocks) and the
/// LR/SC reservation (dropping one only makes an SC fail, which the guest
/// retries).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HartState {
    pub x: [u64; 32],
    pub f: [u64; 32],
    pub pc: u64,
    /// Runs in user mode (else supervisor).
    pub user: bool,
    pub sstatus: u64,
    pub sie: u64,
    pub stvec: u64,
    pub sscratch: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stval: u64,
    pub satp: u64,
    pub scounteren: u64,
    pub fflags: u8,
    pub frm: u8,
    /// STIP as the SBI timer drove it.
    pub stip: bool,
    /// SSIP (held in the hart's signals: IPIs set it).
    pub ssip: bool,
    /// The SBI timer deadline in ticks of `time`; `None` when disarmed.
    pub timer_deadline: Option<u64>,
    /// Waiting in WFI.
    pub wfi: bool,
    /// Instructions retired (the `cycle` and `instret` CSRs).
    pub instret: u64,
}

impl HartState {
    /// Refuses a state no hart can be in, which a restore must not load:
    /// an odd pc (instructions are 2-byte aligned; `jalr`, `sepc` and
    /// `stvec` cannot produce one). A hart given one anyway faults on its
    /// first fetch (instruction address misaligned), never reads outside
    /// the page. Everything else is either masked by
    /// [`Hart::set_state`] as the CSR writes would, or a value the guest
    /// could have written (a pc outside RAM faults on fetch).
    pub fn check(&self) -> Result<(), String> {
        check_pc(self.pc)
    }
}

/// Refuses a pc no hart can have (see [`HartState::check`]): also for the
/// start address of a hart saved between HSM `hart_start` and its start.
pub fn check_pc(pc: u64) -> Result<(), String> {
    if pc & 1 != 0 {
        return Err(format!(
            "pc {pc:#x} is odd (instructions are 2-byte aligned)"
        ));
    }
    Ok(())
}

/// One hart.
pub struct Hart {
    /// x0..x31 plus a write sink at index 32 (see `decode::SINK`); padded
    /// to 256 so that indexing with a `u8` register number needs neither a
    /// bounds check nor a mask.
    pub x: [u64; 256],
    pub f: [u64; 32],
    pub pc: u64,
    pub prv: Priv,
    pub(super) sstatus: u64,
    pub(super) sie: u64,
    pub(super) stvec: u64,
    pub(super) sscratch: u64,
    pub(super) sepc: u64,
    pub(super) scause: u64,
    pub(super) stval: u64,
    pub(super) satp: u64,
    pub(super) scounteren: u64,
    pub(super) fflags: u8,
    pub(super) frm: u8,
    /// STIP, driven by the SBI timer.
    pub(super) stip: bool,
    /// The SBI `set_timer` deadline in ticks.
    pub(super) timer_deadline: u64,
    /// LR reservation: guest physical address and the value loaded.
    pub(super) reservation: Option<(u64, u64)>,
    pub(super) tlb: SoftTlb,
    pub(super) mmu_idx: usize,
    /// The view TLB entries were filled from; kept alive so host pointers in
    /// the TLB stay valid until the next flush.
    pub(super) view: Arc<FlatView>,
    pub(super) blocks: BlockCache,
    pub(super) sys: Arc<RiscvSystem>,
    pub(super) signals: Arc<HartSignals>,
    pub id: usize,
    /// Set when something the run loop must look at changed locally
    /// (interrupt enables, WFI, an exit).
    pub(super) check: bool,
    pub(super) wfi: bool,
    pub(super) exit: Option<ExitReason>,
    /// The guest called HSM `hart_stop`.
    pub(super) hsm_stop: bool,
    pub(super) budget: u32,
    /// Instructions retired in the running block before its last one.
    pub(super) inflight: u64,
    /// When blocks are compiled to host code (`jit.rs`).
    pub(super) jit_policy: JitPolicy,
    /// Self-loop iterations the interpreter may still run in the current
    /// block before it should be compiled instead.
    pub(super) loops_left: u32,
    /// Written by compiled code: the chain slot it left unlinked (0 for
    /// none).
    pub(super) link_slot: u64,
    /// Written with it: the physical page of the block that left it.
    pub(super) link_page: u64,
    /// That slot, waiting for the next block (see `Hart::link`).
    pub(super) pending_link: Option<PendingLink>,
    /// The exception a helper called from compiled code raised.
    pub(super) jit_exception: Option<Exception>,
    /// Stop after this many instructions (bounded runs for tests).
    limit: Option<u64>,
    pub stats: HartStats,
}

impl Hart {
    pub fn new(sys: Arc<RiscvSystem>, id: usize) -> Hart {
        let signals = sys.harts[id].signals.clone();
        let view = sys.memory.view();
        Hart {
            x: [0; 256],
            f: [0; 32],
            pc: 0,
            prv: Priv::Supervisor,
            sstatus: 0,
            sie: 0,
            stvec: 0,
            sscratch: 0,
            sepc: 0,
            scause: 0,
            stval: 0,
            satp: 0,
            // OpenSBI hands S-mode a scounteren of 7 (cycle, time and
            // instret readable from U-mode); Linux relies on it for rdtime
            // in the vDSO and never writes it.
            scounteren: 7,
            fflags: 0,
            frm: 0,
            stip: false,
            timer_deadline: u64::MAX,
            reservation: None,
            tlb: SoftTlb::new(MMU_MODES),
            mmu_idx: MMU_SUPER,
            view,
            blocks: BlockCache::new(),
            sys,
            signals,
            id,
            check: true,
            wfi: false,
            exit: None,
            hsm_stop: false,
            budget: CLOCK_CHECK_BLOCKS,
            limit: None,
            inflight: 0,
            jit_policy: JitPolicy::default(),
            jit_exception: None,
            link_slot: 0,
            link_page: 0,
            pending_link: None,
            loops_left: 0,
            stats: HartStats::default(),
        }
    }

    /// Puts the hart at an S-mode entry point with translation off and
    /// interrupts disabled: the Linux boot protocol and HSM `hart_start`.
    pub fn reset_to(&mut self, pc: u64, a0: u64, a1: u64) {
        self.pc = pc;
        self.x[10] = a0;
        self.x[11] = a1;
        self.prv = Priv::Supervisor;
        self.satp = 0;
        self.sstatus &= !(SSTATUS_SIE | SSTATUS_SUM | SSTATUS_MXR);
        self.wfi = false;
        self.reservation = None;
        self.tlb.flush_all();
        self.blocks.flush();
        self.update_mmu_idx();
        self.check = true;
    }

    /// The architectural state (see [`HartState`]).
    pub fn state(&self) -> HartState {
        let mut x = [0u64; 32];
        x.copy_from_slice(&self.x[..32]);
        HartState {
            x,
            f: self.f,
            pc: self.pc,
            user: self.prv == Priv::User,
            sstatus: self.sstatus,
            sie: self.sie,
            stvec: self.stvec,
            sscratch: self.sscratch,
            sepc: self.sepc,
            scause: self.scause,
            stval: self.stval,
            satp: self.satp,
            scounteren: self.scounteren,
            fflags: self.fflags,
            frm: self.frm,
            stip: self.stip,
            ssip: self.signals.lines() & IRQ_SSIP != 0,
            timer_deadline: (self.timer_deadline != u64::MAX).then_some(self.timer_deadline),
            wfi: self.wfi,
            instret: self.stats.instructions,
        }
    }

    /// Loads a saved architectural state (restore): the hart goes on from
    /// `state.pc` with empty caches, as if it had never stopped. Values the
    /// guest could not have written are masked as the CSR writes would.
    pub fn set_state(&mut self, state: &HartState) {
        self.x[..32].copy_from_slice(&state.x);
        self.x[0] = 0;
        self.f = state.f;
        self.pc = state.pc;
        self.prv = if state.user {
            Priv::User
        } else {
            Priv::Supervisor
        };
        self.sstatus = state.sstatus & SSTATUS_WRITABLE;
        self.sie = state.sie & S_INTERRUPTS;
        self.stvec = stvec_warl(state.stvec);
        self.sscratch = state.sscratch;
        self.sepc = state.sepc & !1;
        self.scause = state.scause;
        self.stval = state.stval;
        // Only Bare, Sv39 and Sv48 can be written (see `csr_write`).
        self.satp = if matches!(state.satp >> 60, 0 | 8 | 9) {
            state.satp
        } else {
            0
        };
        self.scounteren = state.scounteren & 0xffff_ffff;
        self.fflags = state.fflags & 0x1f;
        self.frm = state.frm & 7;
        self.stip = state.stip;
        if state.ssip {
            self.signals.raise(IRQ_SSIP);
        } else {
            self.signals.clear(IRQ_SSIP);
        }
        self.timer_deadline = state.timer_deadline.unwrap_or(u64::MAX);
        self.wfi = state.wfi;
        self.stats.instructions = state.instret;
        self.reservation = None;
        self.tlb.flush_all();
        self.blocks.flush();
        self.update_mmu_idx();
        self.check = true;
    }

    /// The `sstatus` value the guest reads.
    pub fn sstatus(&self) -> u64 {
        let sd = if self.sstatus & SSTATUS_FS == SSTATUS_FS {
            SSTATUS_SD
        } else {
            0
        };
        self.sstatus | SSTATUS_UXL_64 | sd
    }

    pub(super) fn update_mmu_idx(&mut self) {
        self.mmu_idx = match self.prv {
            Priv::User => MMU_USER,
            Priv::Supervisor if self.sstatus & SSTATUS_SUM != 0 => MMU_SUPER_SUM,
            Priv::Supervisor => MMU_SUPER,
        };
    }

    /// Whether the FPU is on (`sstatus.FS != Off`).
    #[inline]
    pub(super) fn fpu_enabled(&self) -> bool {
        self.sstatus & SSTATUS_FS != 0
    }

    #[inline]
    pub(super) fn fpu_dirty(&mut self) {
        self.sstatus |= SSTATUS_FS;
    }

    /// Pending S-level interrupts (before enables).
    pub fn pending_interrupts(&self) -> u64 {
        let mut pending = self.signals.lines() & (IRQ_SSIP | IRQ_SEIP);
        if self.stip {
            pending |= IRQ_STIP;
        }
        pending
    }

    // ---------------------------------------------------------------- CSRs

    /// Reads a CSR, checking privilege; illegal-instruction on failure.
    pub(super) fn csr_read(&mut self, csr: u16, raw: u64) -> Result<u64, Exception> {
        let illegal = Exception::illegal(raw);
        if u64::from((csr >> 8) & 3) > self.prv as u64 {
            return Err(illegal);
        }
        Ok(match csr {
            0x001..=0x003 if !self.fpu_enabled() => return Err(illegal),
            0x001 => self.fflags as u64,
            0x002 => self.frm as u64,
            0x003 => (self.frm as u64) << 5 | self.fflags as u64,
            0x100 => self.sstatus(),
            0x104 => self.sie,
            0x105 => self.stvec,
            0x106 => self.scounteren,
            0x10a => 0, // senvcfg: no optional features
            0x140 => self.sscratch,
            0x141 => self.sepc,
            0x142 => self.scause,
            0x143 => self.stval,
            0x144 => self.pending_interrupts() & S_INTERRUPTS,
            0x180 => self.satp,
            0xc00..=0xc1f => {
                let counter = u64::from(csr - 0xc00);
                if self.prv == Priv::User && self.scounteren & (1 << counter) == 0 {
                    return Err(illegal);
                }
                match counter {
                    // Instructions of the running block are added to the
                    // count when it ends; a CSR instruction is always the
                    // last of its block, so the ones before it are known.
                    0 | 2 => self.stats.instructions + self.inflight,
                    1 => self.sys.now_ticks(),
                    _ => 0,
                }
            }
            _ => return Err(illegal),
        })
    }

    /// Writes a CSR (the read-only and privilege checks are done by the
    /// caller through [`Hart::csr_read`] and [`csr_is_read_only`]).
    pub(super) fn csr_write(&mut self, csr: u16, value: u64, raw: u64) -> Result<(), Exception> {
        match csr {
            0x001 => {
                self.fflags = (value & 0x1f) as u8;
                self.fpu_dirty();
            }
            0x002 => {
                self.frm = (value & 7) as u8;
                self.fpu_dirty();
            }
            0x003 => {
                self.fflags = (value & 0x1f) as u8;
                self.frm = ((value >> 5) & 7) as u8;
                self.fpu_dirty();
            }
            0x100 => {
                let old = self.sstatus;
                self.sstatus = value & SSTATUS_WRITABLE;
                if (old ^ self.sstatus) & SSTATUS_MXR != 0 {
                    // MXR changes what loads may read; the TLB modes do not
                    // encode it, so start over.
                    self.tlb.flush_all();
                }
                self.update_mmu_idx();
                self.check = true;
            }
            0x104 => {
                self.sie = value & S_INTERRUPTS;
                self.check = true;
            }
            0x105 => self.stvec = stvec_warl(value),
            0x106 => self.scounteren = value & 0xffff_ffff,
            0x10a => {}
            0x140 => self.sscratch = value,
            0x141 => self.sepc = value & !1,
            0x142 => self.scause = value,
            0x143 => self.stval = value,
            0x144 => {
                // Only SSIP is writable from S-mode.
                if value & IRQ_SSIP != 0 {
                    self.signals.raise(IRQ_SSIP);
                } else {
                    self.signals.clear(IRQ_SSIP);
                }
                self.check = true;
            }
            0x180 => {
                let mode = value >> 60;
                // Bare, Sv39 and Sv48. Other modes leave satp unchanged, as
                // hardware does: Linux probes Sv57 that way.
                if matches!(mode, 0 | 8 | 9) {
                    // MODE, a 16-bit ASID and the PPN: every bit is kept.
                    if value != self.satp {
                        self.satp = value;
                        self.tlb.flush_all();
                    }
                }
            }
            _ => return Err(Exception::illegal(raw)),
        }
        Ok(())
    }

    // ------------------------------------------------------- traps and IRQs

    /// Delivers a trap to S-mode. `self.pc` must be the `sepc` value: the
    /// faulting instruction, or the next one for interrupts.
    pub(super) fn take_trap(&mut self, cause: u64, tval: u64, interrupt: bool) {
        self.stats.traps += 1;
        // sepc[0] is always zero with 2-byte instructions; the pc is odd
        // only for an instruction-address-misaligned fetch (which has the
        // odd address in stval).
        self.sepc = self.pc & !1;
        self.scause = cause | if interrupt { 1 << 63 } else { 0 };
        self.stval = tval;
        let mut s = self.sstatus & !(SSTATUS_SPP | SSTATUS_SPIE | SSTATUS_SIE);
        if self.prv == Priv::Supervisor {
            s |= SSTATUS_SPP;
        }
        if self.sstatus & SSTATUS_SIE != 0 {
            s |= SSTATUS_SPIE;
        }
        self.sstatus = s;
        self.prv = Priv::Supervisor;
        let base = self.stvec & !3;
        self.pc = if interrupt && self.stvec & 1 == 1 {
            base.wrapping_add(4 * cause)
        } else {
            base
        };
        self.reservation = None;
        self.update_mmu_idx();
    }

    pub(super) fn take_exception(&mut self, e: Exception) {
        self.take_trap(e.cause, e.tval, false);
    }

    /// `sret`.
    pub(super) fn sret(&mut self) -> Result<u64, Exception> {
        if self.prv != Priv::Supervisor {
            return Err(Exception::illegal(0x1020_0073));
        }
        let s = self.sstatus;
        self.prv = if s & SSTATUS_SPP != 0 {
            Priv::Supervisor
        } else {
            Priv::User
        };
        let mut n = s & !(SSTATUS_SPP | SSTATUS_SIE);
        if s & SSTATUS_SPIE != 0 {
            n |= SSTATUS_SIE;
        }
        n |= SSTATUS_SPIE;
        self.sstatus = n;
        self.reservation = None;
        self.update_mmu_idx();
        self.check = true;
        Ok(self.sepc)
    }

    /// Takes the highest-priority enabled pending interrupt, if any.
    fn check_interrupts(&mut self) -> bool {
        let pending = self.pending_interrupts() & self.sie;
        if pending == 0 {
            return false;
        }
        let enabled = self.prv == Priv::User || self.sstatus & SSTATUS_SIE != 0;
        if !enabled {
            return false;
        }
        // Priority: external, software, timer.
        let cause = [9u64, 1, 5]
            .into_iter()
            .find(|c| pending & (1 << c) != 0)
            .unwrap_or(9);
        self.stats.interrupts += 1;
        self.take_trap(cause, 0, true);
        true
    }

    /// SBI `set_timer`.
    pub(super) fn set_timer(&mut self, deadline: u64) {
        self.timer_deadline = deadline;
        self.stip = false;
        self.update_timer();
    }

    fn update_timer(&mut self) {
        if self.timer_deadline != u64::MAX && self.sys.now_ticks() >= self.timer_deadline {
            self.stip = true;
        }
    }

    // ---------------------------------------------------------- run loop

    /// Everything the hot loop defers: requests from other harts, stop,
    /// view changes, the clock, interrupts. Returns false when the hart
    /// must leave its run loop.
    fn service(&mut self) -> bool {
        self.check = false;
        self.budget = CLOCK_CHECK_BLOCKS;
        self.signals.acknowledge();
        if self.signals.stop_requested() || self.exit.is_some() || self.hsm_stop {
            return false;
        }
        if self.sys.pause.requested() {
            self.publish_stats();
            // A paused hart's state is what a snapshot saves; publishing it
            // here keeps the cost on the pause path only.
            let epoch = self.sys.pause.epoch();
            self.sys.harts[self.id].publish_state(epoch, self.state());
            let signals = self.signals.clone();
            self.sys.pause.park(|| signals.stop_requested());
            if self.signals.stop_requested() {
                return false;
            }
        }
        // Traps count too, so a guest stuck in a trap loop (an unmapped
        // stvec) still ends a bounded run.
        if self
            .limit
            .is_some_and(|l| self.stats.instructions + self.stats.traps >= l)
        {
            return false;
        }
        self.publish_stats();
        let requests = self.sys.harts[self.id].requests.swap(0, Ordering::SeqCst);
        if requests & REQ_FLUSH_TLB != 0 {
            self.tlb.flush_all();
        }
        if requests & REQ_FENCE_I != 0 {
            self.blocks.flush();
        }
        let current = self.sys.memory.view_guard();
        if !Arc::ptr_eq(&self.view, &current) {
            self.view = Arc::clone(&current);
            self.tlb.flush_all();
            self.blocks.flush();
        }
        drop(current);
        self.update_timer();
        if self.check_interrupts() {
            self.wfi = false;
        }
        true
    }

    /// Copies the counters where the control API reads them; skipped when
    /// a reader holds the lock (the next service point publishes).
    fn publish_stats(&mut self) {
        self.stats.block_flushes = self.blocks.flushes;
        if let Ok(mut p) = self.sys.harts[self.id].published.try_lock() {
            *p = self.stats;
            p.tlb = self.tlb.stats;
        }
    }

    /// Parks the hart in WFI until an interrupt is pending (enabled in
    /// `sie`, whatever `sstatus.SIE` says) or the timer fires.
    fn sleep_in_wfi(&mut self) {
        self.update_timer();
        if self.pending_interrupts() & self.sie != 0 {
            self.wfi = false;
            return;
        }
        self.stats.wfi_sleeps += 1;
        // An expired deadline (STIP already set, but not enabled) cannot
        // wake the hart again: only an interrupt or a new deadline can.
        let deadline = if self.timer_deadline == u64::MAX || self.stip {
            None
        } else {
            self.sys.instant_of(self.timer_deadline)
        };
        let sie = self.sie;
        let signals = self.signals.clone();
        let requests = &self.sys.harts[self.id].requests;
        let pause = &self.sys.pause;
        signals.park_until(deadline, || {
            signals.lines() & sie == 0 && requests.load(Ordering::SeqCst) == 0 && !pause.requested()
        });
        self.update_timer();
        if self.pending_interrupts() & self.sie != 0 {
            self.wfi = false;
        }
        self.check = true;
    }

    /// Runs until the VM ends or this hart is stopped (HSM `hart_stop`).
    pub fn run(&mut self) {
        loop {
            if self.check || self.budget == 0 || self.signals.needs_attention() {
                // Whatever service does (an interrupt, a flush) breaks the
                // link between the last block and the next.
                self.pending_link = None;
                if !self.service() {
                    return;
                }
                if self.wfi {
                    if self.limit.is_some()
                        && (self.timer_deadline == u64::MAX || self.stip)
                        && self.pending_interrupts() & self.sie == 0
                    {
                        // A bounded run would wait forever.
                        return;
                    }
                    self.sleep_in_wfi();
                    continue;
                }
            }
            self.budget -= 1;
            match self.fetch_block() {
                Ok(block) => {
                    if let Err(e) = self.exec_block(block) {
                        self.pending_link = None;
                        self.take_exception(e);
                    }
                }
                Err(e) => {
                    self.pending_link = None;
                    self.take_exception(e);
                }
            }
        }
    }

    /// Runs on the calling thread until the guest ends the VM through the
    /// SBI (SRST or legacy shutdown), returning why, or until about
    /// `max_instructions` more have run or the hart waits in WFI with
    /// nothing that could wake it, returning `None`. For tests and tools
    /// that drive one hart directly.
    pub fn run_bounded(&mut self, max_instructions: u64) -> Option<ExitReason> {
        self.limit = Some(self.stats.instructions.saturating_add(max_instructions));
        self.check = true;
        self.run();
        self.limit = None;
        self.stats.tlb = self.tlb.stats;
        self.stats.block_flushes = self.blocks.flushes;
        self.exit.take()
    }

    /// Whether the hart is waiting in WFI.
    pub fn in_wfi(&self) -> bool {
        self.wfi
    }

    /// Reads a CSR as the guest would in S-mode (`None` if it does not
    /// exist), for tests and register dumps.
    pub fn read_csr(&mut self, csr: u16) -> Option<u64> {
        let prv = self.prv;
        self.prv = Priv::Supervisor;
        let v = self.csr_read(csr, 0).ok();
        self.prv = prv;
        v
    }

    /// Runs this hart's thread: waits for HSM start when it is not the boot
    /// hart, runs, and goes back to waiting after `hart_stop`.
    pub fn thread_main(mut self) -> HartStats {
        loop {
            let shared = &self.sys.harts[self.id];
            match shared.hsm() {
                HsmState::Started => {}
                HsmState::StartPending { addr, opaque } => {
                    shared.set_hsm(HsmState::Started);
                    let id = self.id as u64;
                    self.reset_to(addr, id, opaque);
                }
                HsmState::Stopped => {
                    let signals = shared.signals.clone();
                    signals.acknowledge();
                    if signals.stop_requested() {
                        break;
                    }
                    signals.park_until(None, || shared.hsm() == HsmState::Stopped);
                    continue;
                }
            }
            // Registered without parking: `run` starts with a service
            // point (`check` is set), which parks if a pause is requested
            // and publishes the state a snapshot needs first.
            self.sys.pause.register();
            self.check = true;
            self.run();
            self.sys.pause.leave();
            self.hsm_stop = false;
            if let Some(reason) = self.exit.take() {
                self.sys.exit.request(reason);
                break;
            }
            if self.signals.stop_requested() {
                break;
            }
        }
        self.stats.tlb = self.tlb.stats;
        self.stats.block_flushes = self.blocks.flushes;
        self.stats
    }
}

/// `stvec` as a write leaves it: direct and vectored modes; the reserved
/// modes read back as direct (WARL).
fn stvec_warl(value: u64) -> u64 {
    if value & 3 >= 2 {
        value & !3
    } else {
        value
    }
}

/// CSRs whose number marks them read-only (bits 11:10 = 3).
pub(super) fn csr_is_read_only(csr: u16) -> bool {
    (csr >> 10) & 3 == 3
}
