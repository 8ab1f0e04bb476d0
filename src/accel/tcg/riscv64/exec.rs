//! The interpreter: runs one translated block.
//!
//! Every instruction either falls through, jumps (ending the block) or
//! raises an exception; on an exception `pc` is left at the faulting
//! instruction so the trap sees the right `sepc`.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use super::decode::{AmoOp, FpOp, Insn, Op, SINK};
use super::fpu::{self, IntKind, Precision, Rounding, SignInject};
use super::hart::{cause, csr_is_read_only, Exception, Hart, Priv};

/// What an instruction did to control flow.
enum Flow {
    Next,
    Jump(u64),
}

#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as u32 as i32 as i64 as u64
}

impl Hart {
    /// Runs block `id` starting at `self.pc`.
    ///
    /// A block whose exit jumps back to its own start (a tight loop) runs
    /// again right here, without going back through the block lookup: the
    /// software CPU's cheapest form of QEMU's block chaining. It stops
    /// chaining when the hart has something to look at (a store that hit
    /// a code page sets `check`, see `mmu.rs`) or when its block budget
    /// runs out.
    pub(super) fn exec_block(&mut self, id: u32) -> Result<(), Exception> {
        // Borrow the instructions out of the cache for the duration of the
        // block (a move of a pointer, no copy), so executing them can use
        // `&mut self` freely.
        let compiled = self.compiled(id);
        if let Some(link) = self.pending_link.take() {
            if compiled.is_ok() {
                self.link(link, id);
            }
        }
        let insns = match self.blocks_take(id) {
            Some(i) => i,
            None => return Ok(()),
        };
        self.inflight = insns.len().saturating_sub(1) as u64;
        // From here until `end_run` the cache frees nothing: the compiled
        // code may chain into other blocks, whose instructions (which
        // their code points into) and code must outlive the whole run even
        // if an instruction flushes the cache (`fence.i`).
        self.blocks.begin_run();
        let result = match compiled {
            Ok(f) => self.run_compiled(f),
            Err(max_loops) => {
                self.loops_left = max_loops;
                let r = self.run_insns(&insns);
                self.count_self_loops(id, max_loops - self.loops_left);
                r
            }
        };
        self.blocks_put_back(id, insns);
        self.blocks.end_run();
        result
    }

    /// The interpreter loop over one block's instructions, from `self.pc`
    /// (the block's start); leaves `self.pc` at the next instruction to run
    /// (or the faulting one) and counts the instructions retired.
    ///
    /// The common integer operations are handled inline; everything else
    /// goes through [`Hart::step_cold`]. The pc of an instruction is the
    /// block start plus its `off`, so nothing is tracked per instruction but
    /// the index.
    #[inline(never)]
    fn run_insns(&mut self, insns: &[Insn]) -> Result<(), Exception> {
        let start = self.pc;
        let end = insns
            .last()
            .map_or(start, |l| start.wrapping_add(l.off as u64 + l.len as u64));
        self.stats.blocks += 1;
        let mut it = insns.iter();
        loop {
            let Some(i) = it.next() else {
                // Fell off the end of the block.
                self.stats.instructions += insns.len() as u64;
                self.pc = end;
                return Ok(());
            };
            // Operands are read in the arms that use them, not before the
            // dispatch, so each operation loads only what it needs. The
            // register file has 256 slots, so `u8` indices need no bounds
            // checks (decoding never produces more than 33).
            macro_rules! rs1 {
                () => {
                    self.x[i.rs1 as usize]
                };
            }
            macro_rules! rs2 {
                () => {
                    self.x[i.rs2 as usize]
                };
            }
            macro_rules! imm {
                () => {
                    (i.imm as u64)
                };
            }
            // Only for the rarer paths; pc-relative operations have their
            // immediate rebased onto the block start (see `Insn::imm`).
            let pc = || start.wrapping_add(i.off as u64);
            // Instructions retired before this one, in this pass.
            let before = |it: &std::slice::Iter<Insn>| (insns.len() - it.len() - 1) as u64;
            macro_rules! set {
                ($v:expr) => {{
                    self.x[i.rd as usize] = $v;
                    continue;
                }};
            }
            macro_rules! next {
                () => {{
                    continue;
                }};
            }
            // Unwraps a memory access; a fault leaves the pc at the
            // instruction and counts only the ones before it.
            macro_rules! mem {
                ($e:expr) => {
                    match $e {
                        Ok(v) => v,
                        Err(e) => {
                            self.stats.instructions += before(&it);
                            self.pc = pc();
                            return Err(e);
                        }
                    }
                };
            }
            macro_rules! branch {
                ($cond:expr) => {{
                    if $cond {
                        start.wrapping_add(imm!())
                    } else {
                        next!()
                    }
                }};
            }
            let target = match i.op {
                Op::Lui => set!(imm!()),
                Op::Auipc => set!(start.wrapping_add(imm!())),
                Op::Jal => {
                    self.x[i.rd as usize] = start.wrapping_add(i.off as u64 + i.len as u64);
                    start.wrapping_add(imm!())
                }
                Op::Jalr => {
                    let target = rs1!().wrapping_add(imm!()) & !1;
                    self.x[i.rd as usize] = start.wrapping_add(i.off as u64 + i.len as u64);
                    target
                }
                Op::Beq => branch!(rs1!() == rs2!()),
                Op::Bne => branch!(rs1!() != rs2!()),
                Op::Blt => branch!((rs1!() as i64) < (rs2!() as i64)),
                Op::Bge => branch!((rs1!() as i64) >= (rs2!() as i64)),
                Op::Bltu => branch!(rs1!() < rs2!()),
                Op::Bgeu => branch!(rs1!() >= rs2!()),
                Op::Lb => {
                    let v = mem!(self.load::<1>(rs1!().wrapping_add(imm!())));
                    set!(v as u8 as i8 as i64 as u64)
                }
                Op::Lh => {
                    let v = mem!(self.load::<2>(rs1!().wrapping_add(imm!())));
                    set!(v as u16 as i16 as i64 as u64)
                }
                Op::Lw => {
                    let v = mem!(self.load::<4>(rs1!().wrapping_add(imm!())));
                    set!(sext32(v))
                }
                Op::Ld => set!(mem!(self.load::<8>(rs1!().wrapping_add(imm!())))),
                Op::Lbu => set!(mem!(self.load::<1>(rs1!().wrapping_add(imm!())))),
                Op::Lhu => set!(mem!(self.load::<2>(rs1!().wrapping_add(imm!())))),
                Op::Lwu => set!(mem!(self.load::<4>(rs1!().wrapping_add(imm!())))),
                Op::Sb => {
                    mem!(self.store::<1>(rs1!().wrapping_add(imm!()), rs2!()));
                    next!()
                }
                Op::Sh => {
                    mem!(self.store::<2>(rs1!().wrapping_add(imm!()), rs2!()));
                    next!()
                }
                Op::Sw => {
                    mem!(self.store::<4>(rs1!().wrapping_add(imm!()), rs2!()));
                    next!()
                }
                Op::Sd => {
                    mem!(self.store::<8>(rs1!().wrapping_add(imm!()), rs2!()));
                    next!()
                }
                Op::Addi => set!(rs1!().wrapping_add(imm!())),
                Op::Slti => set!(((rs1!() as i64) < (imm!() as i64)) as u64),
                Op::Sltiu => set!((rs1!() < imm!()) as u64),
                Op::Xori => set!(rs1!() ^ imm!()),
                Op::Ori => set!(rs1!() | imm!()),
                Op::Andi => set!(rs1!() & imm!()),
                Op::Slli => set!(rs1!() << (imm!() & 63)),
                Op::Srli => set!(rs1!() >> (imm!() & 63)),
                Op::Srai => set!(((rs1!() as i64) >> (imm!() & 63)) as u64),
                Op::Addiw => set!(sext32(rs1!().wrapping_add(imm!()))),
                Op::Slliw => set!(sext32(rs1!() << (imm!() & 31))),
                Op::Srliw => set!(sext32(((rs1!() as u32) >> (imm!() & 31)) as u64)),
                Op::Sraiw => set!(((rs1!() as i32) >> (imm!() & 31)) as i64 as u64),
                Op::Add => set!(rs1!().wrapping_add(rs2!())),
                Op::Sub => set!(rs1!().wrapping_sub(rs2!())),
                Op::Sll => set!(rs1!() << (rs2!() & 63)),
                Op::Slt => set!(((rs1!() as i64) < (rs2!() as i64)) as u64),
                Op::Sltu => set!((rs1!() < rs2!()) as u64),
                Op::Xor => set!(rs1!() ^ rs2!()),
                Op::Srl => set!(rs1!() >> (rs2!() & 63)),
                Op::Sra => set!(((rs1!() as i64) >> (rs2!() & 63)) as u64),
                Op::Or => set!(rs1!() | rs2!()),
                Op::And => set!(rs1!() & rs2!()),
                Op::Addw => set!(sext32(rs1!().wrapping_add(rs2!()))),
                Op::Subw => set!(sext32(rs1!().wrapping_sub(rs2!()))),
                Op::Sllw => set!(sext32(rs1!() << (rs2!() & 31))),
                Op::Srlw => set!(sext32(((rs1!() as u32) >> (rs2!() & 31)) as u64)),
                Op::Sraw => set!(((rs1!() as i32) >> (rs2!() & 31)) as i64 as u64),
                Op::Mul => set!(rs1!().wrapping_mul(rs2!())),
                Op::Mulh => set!(((rs1!() as i64 as i128 * rs2!() as i64 as i128) >> 64) as u64),
                Op::Mulhsu => {
                    set!(((rs1!() as i64 as i128).wrapping_mul(rs2!() as i128) >> 64) as u64)
                }
                Op::Mulhu => set!(((rs1!() as u128 * rs2!() as u128) >> 64) as u64),
                Op::Div => set!(if rs2!() == 0 {
                    u64::MAX
                } else {
                    (rs1!() as i64).wrapping_div(rs2!() as i64) as u64
                }),
                Op::Divu => set!(rs1!().checked_div(rs2!()).unwrap_or(u64::MAX)),
                Op::Rem => set!(if rs2!() == 0 {
                    rs1!()
                } else {
                    (rs1!() as i64).wrapping_rem(rs2!() as i64) as u64
                }),
                Op::Remu => set!(if rs2!() == 0 { rs1!() } else { rs1!() % rs2!() }),
                Op::Mulw => set!(sext32(rs1!().wrapping_mul(rs2!()))),
                Op::Divw => {
                    let (a, b) = (rs1!() as i32, rs2!() as i32);
                    set!(if b == 0 {
                        u64::MAX
                    } else {
                        a.wrapping_div(b) as i64 as u64
                    })
                }
                Op::Divuw => {
                    let (a, b) = (rs1!() as u32, rs2!() as u32);
                    set!(a.checked_div(b).map_or(u64::MAX, |q| sext32(q as u64)))
                }
                Op::Remw => {
                    let (a, b) = (rs1!() as i32, rs2!() as i32);
                    set!(if b == 0 {
                        a as i64 as u64
                    } else {
                        a.wrapping_rem(b) as i64 as u64
                    })
                }
                Op::Remuw => {
                    let (a, b) = (rs1!() as u32, rs2!() as u32);
                    set!(if b == 0 {
                        sext32(a as u64)
                    } else {
                        sext32((a % b) as u64)
                    })
                }
                // Everything else (`Insn::runs_cold`, the list compiled
                // code uses too): system, CSR, atomic and FP instructions.
                _ => match self.step_cold(i, pc(), rs1!(), rs2!()) {
                    Ok(Flow::Next) => next!(),
                    Ok(Flow::Jump(target)) => target,
                    Err(e) => {
                        self.stats.instructions += before(&it);
                        self.pc = pc();
                        return Err(e);
                    }
                },
            };
            // The instruction just run jumped: the block ends here.
            self.stats.instructions += before(&it) + 1;
            if target == start
                && self.budget > 0
                && self.loops_left > 0
                && !self.check
                && !self.signals.needs_attention()
            {
                // Run the block again. `stats.instructions` is kept exact
                // for a CSR read later in this block (see
                // `Hart::inflight`).
                self.budget -= 1;
                self.loops_left -= 1;
                self.stats.blocks += 1;
                it = insns.iter();
                continue;
            }
            self.pc = target;
            return Ok(());
        }
    }

    /// Runs one instruction of the kinds [`Hart::step_cold`] handles, at
    /// `pc`, for compiled code: `Some(target)` if it jumped.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn step_one_cold(&mut self, i: &Insn, pc: u64) -> Result<Option<u64>, Exception> {
        let (rs1, rs2) = (self.x[i.rs1 as usize], self.x[i.rs2 as usize]);
        match self.step_cold(i, pc, rs1, rs2)? {
            Flow::Next => Ok(None),
            Flow::Jump(target) => Ok(Some(target)),
        }
    }

    /// The operations [`Hart::run_insns`] does not handle inline: system
    /// instructions, atomics and floating point. `rs1` and `rs2` are the
    /// values of the source registers.
    #[inline(never)]
    fn step_cold(&mut self, i: &Insn, pc: u64, rs1: u64, rs2: u64) -> Result<Flow, Exception> {
        debug_assert!(i.runs_cold(), "{:?} is handled inline", i.op);
        let imm = i.imm as u64;
        let rd = i.rd as usize;
        let next = pc.wrapping_add(i.len as u64);
        macro_rules! set {
            ($v:expr) => {{
                self.x[rd] = $v;
            }};
        }
        match i.op {
            Op::Illegal => return Err(Exception::illegal(imm)),
            Op::Fence => {
                if self.sys.harts.len() > 1 {
                    std::sync::atomic::fence(Ordering::SeqCst);
                }
            }
            Op::FenceI => {
                // Deferred until this block (and any it chained into)
                // returns to the run loop, before the next fetch.
                self.blocks.flush();
                return Ok(Flow::Jump(next));
            }
            Op::Ecall => {
                if self.prv == Priv::User {
                    return Err(Exception::new(cause::ECALL_U, 0));
                }
                self.sbi_call();
                return Ok(Flow::Jump(next));
            }
            Op::Ebreak => return Err(Exception::new(cause::BREAKPOINT, pc)),
            Op::Sret => {
                let target = self.sret()?;
                return Ok(Flow::Jump(target));
            }
            Op::Wfi => {
                if self.prv == Priv::User {
                    return Err(Exception::illegal(0x1050_0073));
                }
                self.wfi = true;
                self.check = true;
                return Ok(Flow::Jump(next));
            }
            Op::SfenceVma => {
                if self.prv == Priv::User {
                    return Err(Exception::illegal(0));
                }
                if i.rs1 == 0 {
                    self.tlb.flush_all();
                } else {
                    self.tlb.flush_page(rs1);
                }
                return Ok(Flow::Jump(next));
            }
            Op::Csrrw | Op::Csrrs | Op::Csrrc | Op::Csrrwi | Op::Csrrsi | Op::Csrrci => {
                self.exec_csr(i)?;
                return Ok(Flow::Jump(next));
            }
            Op::Lr => {
                let size = i.rs3 as u64;
                let (host, paddr) = self.atomic_host(rs1, size, true)?;
                // SAFETY: `atomic_host` returned an aligned pointer into a
                // RAM page of the held view.
                let v = unsafe {
                    if size == 4 {
                        sext32((*host.cast::<AtomicU32>()).load(Ordering::SeqCst) as u64)
                    } else {
                        (*host.cast::<AtomicU64>()).load(Ordering::SeqCst)
                    }
                };
                self.reservation = Some((paddr, v));
                set!(v)
            }
            Op::Sc => {
                let size = i.rs3 as u64;
                let reservation = self.reservation.take();
                let (host, paddr) = self.atomic_host(rs1, size, false)?;
                let ok = match reservation {
                    // The value-based check is how QEMU implements SC too:
                    // the store happens only if memory still holds what LR
                    // loaded.
                    Some((rp, old)) if rp == paddr => {
                        // SAFETY: as for LR.
                        unsafe {
                            if size == 4 {
                                (*host.cast::<AtomicU32>())
                                    .compare_exchange(
                                        old as u32,
                                        rs2 as u32,
                                        Ordering::SeqCst,
                                        Ordering::SeqCst,
                                    )
                                    .is_ok()
                            } else {
                                (*host.cast::<AtomicU64>())
                                    .compare_exchange(old, rs2, Ordering::SeqCst, Ordering::SeqCst)
                                    .is_ok()
                            }
                        }
                    }
                    _ => false,
                };
                set!(if ok { 0 } else { 1 })
            }
            Op::Amo => {
                let size = i.rs3 as u64;
                let (host, _) = self.atomic_host(rs1, size, false)?;
                let op = AmoOp::from_u8(i.rm);
                // SAFETY: as for LR.
                let old = unsafe {
                    if size == 4 {
                        amo32(&*host.cast::<AtomicI32>(), op, rs2 as u32 as i32)
                    } else {
                        amo64(&*host.cast::<AtomicI64>(), op, rs2 as i64)
                    }
                };
                set!(old)
            }
            Op::Flw | Op::Fld => {
                if !self.fpu_enabled() {
                    return Err(Exception::illegal(0));
                }
                let addr = rs1.wrapping_add(imm);
                let v = if i.op == Op::Flw {
                    fpu::box_single(self.load::<4>(addr)? as u32)
                } else {
                    self.load::<8>(addr)?
                };
                self.f[rd & 31] = v;
                self.fpu_dirty();
            }
            Op::Fsw | Op::Fsd => {
                if !self.fpu_enabled() {
                    return Err(Exception::illegal(0));
                }
                let addr = rs1.wrapping_add(imm);
                let v = self.f[i.rs2 as usize & 31];
                if i.op == Op::Fsw {
                    self.store::<4>(addr, v)?
                } else {
                    self.store::<8>(addr, v)?
                }
            }
            Op::Fp => self.exec_fp(i)?,
            // Handled by `run_insns`; never passed here.
            _ => return Err(Exception::illegal(imm)),
        }
        Ok(Flow::Next)
    }

    fn exec_csr(&mut self, i: &Insn) -> Result<(), Exception> {
        let csr = (i.imm & 0xfff) as u16;
        let operand = match i.op {
            Op::Csrrwi | Op::Csrrsi | Op::Csrrci => i.rs1 as u64,
            _ => self.x[i.rs1 as usize],
        };
        let writes = match i.op {
            Op::Csrrw | Op::Csrrwi => true,
            _ => i.rs1 != 0,
        };
        if writes && csr_is_read_only(csr) {
            return Err(Exception::illegal(0));
        }
        let old = self.csr_read(csr, 0)?;
        if writes {
            let new = match i.op {
                Op::Csrrw | Op::Csrrwi => operand,
                Op::Csrrs | Op::Csrrsi => old | operand,
                _ => old & !operand,
            };
            self.csr_write(csr, new, 0)?;
        }
        self.x[i.rd as usize] = old;
        Ok(())
    }

    fn exec_fp(&mut self, i: &Insn) -> Result<(), Exception> {
        let illegal = Exception::illegal(0);
        if !self.fpu_enabled() {
            return Err(illegal);
        }
        let double = i.imm & 0x100 != 0;
        let p = if double {
            Precision::Double
        } else {
            Precision::Single
        };
        let op = FpOp::from_u8((i.imm & 0xff) as u8).ok_or(illegal)?;
        let rounding = || {
            let rm = if i.rm == 7 { self.frm } else { i.rm };
            Rounding::from_bits(rm).ok_or(illegal)
        };
        let (a, b, c) = (
            self.f[i.rs1 as usize & 31],
            self.f[i.rs2 as usize & 31],
            self.f[i.rs3 as usize & 31],
        );
        let int_kind = |k: u8| match k {
            0 => IntKind::W,
            1 => IntKind::Wu,
            2 => IntKind::L,
            _ => IntKind::Lu,
        };
        enum Dest {
            F(fpu::FpOut),
            X(fpu::FpOut),
        }
        let out = match op {
            FpOp::Madd | FpOp::Msub | FpOp::Nmsub | FpOp::Nmadd => {
                let (np, na) = match op {
                    FpOp::Madd => (false, false),
                    FpOp::Msub => (false, true),
                    FpOp::Nmsub => (true, false),
                    _ => (true, true),
                };
                Dest::F(fpu::fma(p, a, b, c, np, na, rounding()?))
            }
            FpOp::Add => Dest::F(fpu::add(p, a, b, rounding()?)),
            FpOp::Sub => Dest::F(fpu::sub(p, a, b, rounding()?)),
            FpOp::Mul => Dest::F(fpu::mul(p, a, b, rounding()?)),
            FpOp::Div => Dest::F(fpu::div(p, a, b, rounding()?)),
            FpOp::Sqrt => Dest::F(fpu::sqrt(p, a, rounding()?)),
            FpOp::SgnJ | FpOp::SgnJn | FpOp::SgnJx => {
                let kind = match op {
                    FpOp::SgnJ => SignInject::Copy,
                    FpOp::SgnJn => SignInject::Negate,
                    _ => SignInject::Xor,
                };
                Dest::F(fpu::FpOut {
                    bits: fpu::sign_inject(p, a, b, kind),
                    flags: 0,
                })
            }
            FpOp::Min => Dest::F(fpu::min(p, a, b)),
            FpOp::Max => Dest::F(fpu::max(p, a, b)),
            FpOp::CvtFF => {
                let from = if double {
                    Precision::Single
                } else {
                    Precision::Double
                };
                Dest::F(fpu::convert(from, p, a, rounding()?))
            }
            FpOp::Eq => Dest::X(fpu::eq(p, a, b)),
            FpOp::Lt => Dest::X(fpu::lt(p, a, b)),
            FpOp::Le => Dest::X(fpu::le(p, a, b)),
            FpOp::Class => Dest::X(fpu::FpOut {
                bits: fpu::classify(p, a),
                flags: 0,
            }),
            FpOp::CvtToInt => Dest::X(fpu::to_int(p, a, int_kind(i.rs2), rounding()?)),
            FpOp::CvtFromInt => {
                let x = self.x[i.rs1 as usize];
                Dest::F(fpu::from_int(p, x, int_kind(i.rs2), rounding()?))
            }
            FpOp::MvToX => Dest::X(fpu::FpOut {
                bits: if double { a } else { sext32(a) },
                flags: 0,
            }),
            FpOp::MvFromX => {
                let x = self.x[i.rs1 as usize];
                Dest::F(fpu::FpOut {
                    bits: if double { x } else { fpu::box_single(x as u32) },
                    flags: 0,
                })
            }
        };
        let flags = match out {
            Dest::F(o) => {
                self.f[i.rd as usize & 31] = o.bits;
                self.fpu_dirty();
                o.flags
            }
            Dest::X(o) => {
                let rd = if i.rd == 0 { SINK } else { i.rd };
                self.x[rd as usize] = o.bits;
                o.flags
            }
        };
        if flags != 0 {
            self.fflags |= flags;
            self.fpu_dirty();
        }
        Ok(())
    }
}

fn amo32(a: &AtomicI32, op: AmoOp, v: i32) -> u64 {
    let o = Ordering::SeqCst;
    let old = match op {
        AmoOp::Swap => a.swap(v, o),
        AmoOp::Add => a.fetch_add(v, o),
        AmoOp::Xor => a.fetch_xor(v, o),
        AmoOp::And => a.fetch_and(v, o),
        AmoOp::Or => a.fetch_or(v, o),
        AmoOp::Min => a.fetch_min(v, o),
        AmoOp::Max => a.fetch_max(v, o),
        // The unsigned forms compare the same bits as unsigned.
        AmoOp::Minu | AmoOp::Maxu => a
            .fetch_update(o, o, |x| {
                let (xu, vu) = (x as u32, v as u32);
                Some(if op == AmoOp::Minu {
                    xu.min(vu)
                } else {
                    xu.max(vu)
                } as i32)
            })
            .unwrap_or_else(|x| x),
    };
    // The 32-bit result is sign-extended into rd.
    old as i64 as u64
}

fn amo64(a: &AtomicI64, op: AmoOp, v: i64) -> u64 {
    let o = Ordering::SeqCst;
    let old = match op {
        AmoOp::Swap => a.swap(v, o),
        AmoOp::Add => a.fetch_add(v, o),
        AmoOp::Xor => a.fetch_xor(v, o),
        AmoOp::And => a.fetch_and(v, o),
        AmoOp::Or => a.fetch_or(v, o),
        AmoOp::Min => a.fetch_min(v, o),
        AmoOp::Max => a.fetch_max(v, o),
        AmoOp::Minu | AmoOp::Maxu => a
            .fetch_update(o, o, |x| {
                let (xu, vu) = (x as u64, v as u64);
                Some(if op == AmoOp::Minu {
                    xu.min(vu)
                } else {
                    xu.max(vu)
                } as i64)
            })
            .unwrap_or_else(|x| x),
    };
    old as u64
}
