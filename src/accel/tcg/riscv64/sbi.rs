//! The SBI (RISC-V Supervisor Binary Interface), answered by the VMM
//! itself for S-mode `ecall`s, the way KVM on RISC-V does: no M-mode
//! firmware runs. Implements BASE, TIME, IPI, RFENCE, HSM, SRST, DBCN and
//! the legacy (v0.1) calls; everything else answers `NOT_SUPPORTED`.
//!
//! Every argument is a guest value: hart masks are checked against the hart
//! count, buffer addresses go through the memory dispatch (RAM only, never
//! host memory outside it), and byte counts are capped.

use std::sync::atomic::Ordering;

use crate::accel::tcg::signals::IRQ_SSIP;
use crate::vmm::exit::ExitReason;

use super::hart::Hart;
use super::system::{HsmState, REQ_FENCE_I, REQ_FLUSH_TLB};

pub const EXT_BASE: u64 = 0x10;
pub const EXT_TIME: u64 = 0x5449_4d45;
pub const EXT_IPI: u64 = 0x73_5049;
pub const EXT_RFENCE: u64 = 0x5246_4e43;
pub const EXT_HSM: u64 = 0x48_534d;
pub const EXT_SRST: u64 = 0x5352_5354;
pub const EXT_DBCN: u64 = 0x4442_434e;

const SUCCESS: i64 = 0;
const ERR_FAILED: i64 = -1;
const ERR_NOT_SUPPORTED: i64 = -2;
const ERR_INVALID_PARAM: i64 = -3;
const ERR_INVALID_ADDRESS: i64 = -5;
const ERR_ALREADY_AVAILABLE: i64 = -6;

/// SBI specification version 2.0: Linux uses SRST from 0.3 and DBCN from
/// 2.0 on.
const SPEC_VERSION: u64 = 2 << 24;
/// Implementation ID reported by BASE (not a registered one; Linux only
/// prints it).
const IMPL_ID: u64 = 0x454d_4252; // "EMBR"
/// Largest DBCN write handled per call; the guest loops on partial writes.
const DBCN_MAX: u64 = 4096;

/// HSM states as `hart_get_status` reports them.
const HSM_STARTED: u64 = 0;
const HSM_STOPPED: u64 = 1;
const HSM_START_PENDING: u64 = 2;

impl Hart {
    /// Handles an S-mode `ecall`; the caller resumes at `sepc + 4`.
    pub(super) fn sbi_call(&mut self) {
        self.stats.sbi_calls += 1;
        let ext = self.x[17];
        let fid = self.x[16];
        let a = [
            self.x[10], self.x[11], self.x[12], self.x[13], self.x[14], self.x[15],
        ];
        if ext <= 8 {
            // Legacy calls return only a0 and leave a1 alone.
            self.x[10] = self.sbi_legacy(ext, a) as u64;
            return;
        }
        let (error, value) = match ext {
            EXT_BASE => self.sbi_base(fid, a[0]),
            EXT_TIME if fid == 0 => {
                self.set_timer(a[0]);
                (SUCCESS, 0)
            }
            EXT_IPI if fid == 0 => self.sbi_send_ipi(a[0], a[1]),
            EXT_RFENCE => self.sbi_rfence(fid, a),
            EXT_HSM => self.sbi_hsm(fid, a),
            EXT_SRST if fid == 0 => self.sbi_reset(a[0]),
            EXT_DBCN => self.sbi_dbcn(fid, a),
            _ => (ERR_NOT_SUPPORTED, 0),
        };
        self.x[10] = error as u64;
        self.x[11] = value;
    }

    fn sbi_base(&mut self, fid: u64, arg: u64) -> (i64, u64) {
        match fid {
            0 => (SUCCESS, SPEC_VERSION),
            1 => (SUCCESS, IMPL_ID),
            2 => (SUCCESS, 1),
            3 => {
                let known = matches!(
                    arg,
                    EXT_BASE | EXT_TIME | EXT_IPI | EXT_RFENCE | EXT_HSM | EXT_SRST | EXT_DBCN
                ) || arg <= 8;
                (SUCCESS, known as u64)
            }
            4..=6 => (SUCCESS, 0),
            _ => (ERR_NOT_SUPPORTED, 0),
        }
    }

    /// The harts a `(mask, base)` pair names, or `None` when it names a
    /// hart that does not exist.
    fn hart_set(&self, mask: u64, base: u64) -> Option<Vec<usize>> {
        let count = self.sys.harts.len();
        if base == u64::MAX {
            return Some((0..count).collect());
        }
        let mut harts = Vec::new();
        for bit in 0..64u64 {
            if mask & (1 << bit) != 0 {
                let id = base.checked_add(bit)?;
                if id >= count as u64 {
                    return None;
                }
                harts.push(id as usize);
            }
        }
        Some(harts)
    }

    fn sbi_send_ipi(&mut self, mask: u64, base: u64) -> (i64, u64) {
        let Some(harts) = self.hart_set(mask, base) else {
            return (ERR_INVALID_PARAM, 0);
        };
        self.send_ipi(&harts);
        (SUCCESS, 0)
    }

    /// Raises the supervisor software interrupt on `harts`.
    fn send_ipi(&mut self, harts: &[usize]) {
        for &h in harts {
            self.sys.harts[h].signals.raise(IRQ_SSIP);
        }
        self.check = true;
    }

    /// Carries out `req` on the given harts and waits until every running
    /// one has done it, so the caller may rely on it on return (as with
    /// firmware's synchronous remote fences).
    ///
    /// A pause ends the wait: a target parks for it before serving
    /// requests, and would keep this hart from ever parking. Returning
    /// early is still safe: this hart goes to its service point, and
    /// parks, right after the call (`check`), and every target applies the
    /// request at its next service point, before it runs another
    /// instruction.
    fn remote_request(&mut self, harts: &[usize], req: u32) {
        let mut waiting = Vec::new();
        for &h in harts {
            if h == self.id {
                self.apply_requests(req);
            } else if self.sys.harts[h].hsm() == HsmState::Started {
                self.sys.harts[h].request(req);
                waiting.push(h);
            }
            // A stopped hart flushes everything when it starts.
        }
        let sys = self.sys.clone();
        for h in waiting {
            let target = &sys.harts[h];
            while target.requests.load(Ordering::SeqCst) & req != 0
                && target.hsm() == HsmState::Started
                && !target.signals.stop_requested()
                && !self.signals.stop_requested()
                && !sys.pause.requested()
            {
                // Serve requests aimed at this hart meanwhile, so two harts
                // fencing each other cannot deadlock.
                let mine = self.sys.harts[self.id].requests.swap(0, Ordering::SeqCst);
                self.apply_requests(mine);
                std::thread::yield_now();
            }
        }
        // Straight to the service point (and the pause) after this call.
        self.check = true;
    }

    pub(super) fn apply_requests(&mut self, req: u32) {
        if req & REQ_FLUSH_TLB != 0 {
            self.tlb.flush_all();
        }
        if req & REQ_FENCE_I != 0 {
            self.blocks.flush();
        }
    }

    fn sbi_rfence(&mut self, fid: u64, a: [u64; 6]) -> (i64, u64) {
        let req = match fid {
            0 => REQ_FENCE_I,
            1 | 2 => REQ_FLUSH_TLB,
            _ => return (ERR_NOT_SUPPORTED, 0),
        };
        let Some(harts) = self.hart_set(a[0], a[1]) else {
            return (ERR_INVALID_PARAM, 0);
        };
        // Address ranges and ASIDs are accepted but each target flushes its
        // whole TLB: always correct, and remote fences are rare next to
        // local `sfence.vma`.
        self.remote_request(&harts, req);
        (SUCCESS, 0)
    }

    fn sbi_hsm(&mut self, fid: u64, a: [u64; 6]) -> (i64, u64) {
        match fid {
            0 => {
                let Ok(id) = usize::try_from(a[0]) else {
                    return (ERR_INVALID_PARAM, 0);
                };
                let Some(target) = self.sys.harts.get(id) else {
                    return (ERR_INVALID_PARAM, 0);
                };
                // The hart starts in S-mode with translation off, so
                // `start_addr` is physical; the spec's INVALID_ADDRESS is
                // for one S-mode cannot execute from. Checked before the
                // hart's state, as OpenSBI does.
                if !self.can_execute_phys(a[1]) {
                    return (ERR_INVALID_ADDRESS, 0);
                }
                let mut state = target.hsm.lock().unwrap_or_else(|e| e.into_inner());
                if *state != HsmState::Stopped {
                    return (ERR_ALREADY_AVAILABLE, 0);
                }
                *state = HsmState::StartPending {
                    addr: a[1],
                    opaque: a[2],
                };
                drop(state);
                target.signals.notify();
                (SUCCESS, 0)
            }
            1 => {
                self.sys.harts[self.id].set_hsm(HsmState::Stopped);
                self.hsm_stop = true;
                self.check = true;
                (SUCCESS, 0)
            }
            2 => {
                let Some(target) = usize::try_from(a[0])
                    .ok()
                    .and_then(|id| self.sys.harts.get(id))
                else {
                    return (ERR_INVALID_PARAM, 0);
                };
                let status = match target.hsm() {
                    HsmState::Started => HSM_STARTED,
                    HsmState::Stopped => HSM_STOPPED,
                    HsmState::StartPending { .. } => HSM_START_PENDING,
                };
                (SUCCESS, status)
            }
            3 => match a[0] as u32 {
                // `suspend_type` is 32 bits wide. Only the default
                // retentive suspend is implemented, which behaves as WFI;
                // the default non-retentive one exists but is not
                // supported here (so its `resume_addr` is never used);
                // every other type is reserved or platform-specific and
                // unimplemented, which the spec answers INVALID_PARAM.
                0 => {
                    self.wfi = true;
                    self.check = true;
                    (SUCCESS, 0)
                }
                0x8000_0000 => (ERR_NOT_SUPPORTED, 0),
                _ => (ERR_INVALID_PARAM, 0),
            },
            _ => (ERR_NOT_SUPPORTED, 0),
        }
    }

    fn sbi_reset(&mut self, kind: u64) -> (i64, u64) {
        let reason = match kind {
            0 => ExitReason::PowerOff,
            1 | 2 => ExitReason::Reset,
            _ => return (ERR_INVALID_PARAM, 0),
        };
        self.exit = Some(reason);
        self.check = true;
        (SUCCESS, 0)
    }

    fn sbi_dbcn(&mut self, fid: u64, a: [u64; 6]) -> (i64, u64) {
        match fid {
            0 => {
                let len = a[0].min(DBCN_MAX) as usize;
                let mut buf = vec![0u8; len];
                if a[2] != 0 || !self.read_phys(a[1], &mut buf) {
                    return (ERR_INVALID_PARAM, 0);
                }
                (self.sys.console)(&buf);
                (SUCCESS, len as u64)
            }
            // No console input through the SBI: zero bytes read.
            1 => (SUCCESS, 0),
            2 => {
                (self.sys.console)(&[a[0] as u8]);
                (SUCCESS, 0)
            }
            _ => (ERR_NOT_SUPPORTED, 0),
        }
    }

    /// Reads a hart mask from the guest virtual address legacy calls pass.
    fn legacy_mask(&mut self, vaddr: u64) -> Option<Vec<usize>> {
        if vaddr == 0 {
            return Some((0..self.sys.harts.len()).collect());
        }
        let mask = self.load::<8>(vaddr).ok()?;
        self.hart_set(mask, 0)
    }

    fn sbi_legacy(&mut self, ext: u64, a: [u64; 6]) -> i64 {
        match ext {
            0 => {
                self.set_timer(a[0]);
                SUCCESS
            }
            1 => {
                (self.sys.console)(&[a[0] as u8]);
                SUCCESS
            }
            2 => -1,
            3 => {
                self.signals.clear(IRQ_SSIP);
                SUCCESS
            }
            4..=7 => {
                let Some(harts) = self.legacy_mask(a[0]) else {
                    return ERR_INVALID_PARAM;
                };
                match ext {
                    4 => self.send_ipi(&harts),
                    5 => self.remote_request(&harts, REQ_FENCE_I),
                    _ => self.remote_request(&harts, REQ_FLUSH_TLB),
                }
                SUCCESS
            }
            8 => {
                self.exit = Some(ExitReason::PowerOff);
                self.check = true;
                SUCCESS
            }
            _ => ERR_FAILED,
        }
    }
}
