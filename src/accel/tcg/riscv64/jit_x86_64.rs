//! The x86-64 code generator: turns one translated block into host code.
//!
//! This is the software CPU's second tier (see `jit.rs` for when it is
//! used). The generated function keeps guest registers in the hart's
//! register file (`[rbx + 8 * r]`), as QEMU's TCG keeps them in `env`, and
//! does the integer, multiply/divide and branch instructions inline. Loads
//! and stores do the softmmu TLB lookup inline and call the interpreter's
//! TLB code through small helpers only on a miss (or MMIO, or a page
//! crossing). Every other instruction (system, CSR, atomic, floating
//! point) calls the interpreter for that one instruction, so every block
//! can be compiled and both tiers share one implementation of the rarer
//! instructions.
//!
//! Machine code is written with dynasm-rs (`dynasm!`), the runtime
//! assembler the Rust ecosystem uses for JITs; the instruction selection
//! is ours because no crate maps RISC-V onto x86-64.
//!
//! Calling convention of a compiled block (System V): `fn(hart: *mut Hart,
//! attention: *const AtomicBool, tlb: *const TlbEntry) -> u32`, where `tlb`
//! is the current MMU mode's table (it cannot change inside a block or a
//! chain: only instructions that leave through the run loop switch modes).
//! It returns [`EXIT_OK`](super::jit::EXIT_OK) (the hart's `pc` holds the next pc) or
//! [`EXIT_EXCEPTION`] (`pc` holds the faulting instruction's pc and the
//! helper that failed left the exception in the hart). In both cases the
//! hart's instruction count already includes what the block retired, with
//! the same rules as the interpreter (see `exec.rs`).
//!
//! Registers while blocks run: `r12` the hart, `rbx` its register file,
//! `r13` the running block's start pc, `r14` its decoded instructions
//! (their address is built into the code: a block's instructions and code
//! live and die together), `r15` the attention flag, `rbp` the TLB table.

use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi};

use super::decode::{Insn, Op};
use super::jit::EXIT_EXCEPTION;
use crate::accel::tcg::tlb::{PAGE_BITS, PAGE_MASK, PAGE_SIZE, TLB_ENTRIES};

type Asm = dynasmrt::VecAssembler<dynasmrt::x64::X64Relocation>;

/// Byte offsets of the hart fields generated code touches.
#[derive(Clone, Copy, Debug)]
pub struct HartLayout {
    pub x: i32,
    pub pc: i32,
    /// `u32`.
    pub budget: i32,
    /// `bool`.
    pub check: i32,
    pub instructions: i32,
    pub blocks: i32,
    /// `u64`: instructions retired before the current one in this pass,
    /// for CSR reads of `instret` (see `Hart::inflight`).
    pub inflight: i32,
    /// `u64`: where an unlinked chain slot was left (see `Stub::Exit`).
    pub link_slot: i32,
    /// `u64`: the physical page of the block that left it.
    pub link_page: i32,
    /// Size of a `TlbEntry` and the offsets of its fields.
    pub tlb_stride: i32,
    pub tlb_read: i32,
    pub tlb_write: i32,
    pub tlb_addend: i32,
}

/// Addresses of the Rust helpers generated code calls.
///
/// `load[n]` for an access of `1 << n` bytes: `(hart, addr) -> (value,
/// status)` in `rax:rdx`, status 0 for success. `store[n]`: `(hart, addr,
/// value) -> status` in `rax`. `cold`: `(hart, insn, pc) -> (target,
/// status)`, status 0 for "next instruction", 1 for "jump to target", 2
/// for an exception.
#[derive(Clone, Copy, Debug)]
pub struct Helpers {
    pub load: [usize; 4],
    pub store: [usize; 4],
    pub cold: usize,
    /// `(hart, pc) -> chain entry` of the compiled block for `pc` the run
    /// loop would run next, or 0 (QEMU's `helper_lookup_tb_ptr`).
    pub lookup: usize,
}

/// Why a block could not be compiled (it then stays interpreted).
#[derive(Debug, PartialEq, Eq)]
pub enum CompileError {
    /// An immediate does not fit the encodings used.
    Immediate,
    Assembler,
}

/// Out-of-line code at the end of the block.
enum Stub {
    /// Instruction `index` jumped to the block's own start: count, then
    /// run the block again if nothing needs looking at.
    Loop { label: DynamicLabel, retired: u64 },
    /// Leave the block for `start + target`. With `chain` (the target is
    /// on the block's own guest page, so the same physical page and
    /// translation), the exit has a slot the run loop fills with the
    /// target block's chain entry once that is compiled; the jump then
    /// goes straight there. Only same-page targets are chained, as in
    /// QEMU: every block on a page goes stale together (SMC), so a chain
    /// never leads from valid code into stale code, and the hop checks
    /// `check` (set by a store into a code page) and the attention flag.
    ///
    /// Without `chain` but with `lookup` (a jump off the page), the exit
    /// asks [`Helpers::lookup`] for the target's code instead of leaving.
    Exit {
        label: DynamicLabel,
        retired: u64,
        target: i64,
        chain: bool,
        lookup: bool,
    },
    /// Instruction at byte offset `off` faulted after `retired` others.
    Fault {
        label: DynamicLabel,
        retired: u64,
        off: i64,
    },
    /// A load the inline TLB lookup could not do (miss, MMIO, page
    /// crossing): the interpreter's load, then back with the value in rax.
    SlowLoad {
        label: DynamicLabel,
        back: DynamicLabel,
        fault: DynamicLabel,
        size_log2: usize,
        signed: bool,
    },
    /// The same for a store of guest register at offset `rs2`.
    SlowStore {
        label: DynamicLabel,
        back: DynamicLabel,
        fault: DynamicLabel,
        size_log2: usize,
        rs2: i32,
    },
}

fn fits_i32(v: i64) -> bool {
    i32::try_from(v).is_ok()
}

fn imm32(v: i64) -> Result<i32, CompileError> {
    i32::try_from(v).map_err(|_| CompileError::Immediate)
}

/// A compiled block: position-independent x86-64 code.
pub struct Compiled {
    pub code: Vec<u8>,
    /// Where blocks chained to this one jump in (see `Stub::Exit`).
    pub chain_entry: usize,
}

/// Compiles `insns` (one translated block, starting at guest physical
/// `paddr`; the instructions stay at `insns_addr` for as long as the code
/// exists) to position-independent x86-64 code.
pub fn compile(
    insns: &[Insn],
    paddr: u64,
    insns_addr: usize,
    layout: &HartLayout,
    helpers: &Helpers,
) -> Result<Compiled, CompileError> {
    let mut g = Gen {
        a: Asm::new(0),
        l: *layout,
        h: *helpers,
        stubs: Vec::new(),
        slots: Vec::new(),
        lookup: None,
        page: paddr & PAGE_MASK,
        page_offset: (paddr & !PAGE_MASK) as i64,
    };
    let chain_entry = g.block(insns, insns_addr)?;
    let code = g.a.finalize().map_err(|_| CompileError::Assembler)?;
    Ok(Compiled { code, chain_entry })
}

struct Gen {
    a: Asm,
    l: HartLayout,
    h: Helpers,
    stubs: Vec<Stub>,
    /// Chain slots to emit after the code.
    slots: Vec<DynamicLabel>,
    /// The shared tail that leaves through a lookup (see `lookup_tail`).
    lookup: Option<DynamicLabel>,
    /// The block's guest physical page, and where in it the block starts.
    page: u64,
    page_offset: i64,
}

impl Gen {
    /// `[rbx + reg(r)]` addresses guest register `r`.
    fn reg(r: u8) -> i32 {
        8 * r as i32
    }

    /// Emits the block; returns the chain entry's offset.
    fn block(&mut self, insns: &[Insn], insns_addr: usize) -> Result<usize, CompileError> {
        let top = self.a.new_dynamic_label();
        let exit = self.a.new_dynamic_label();
        let l = self.l;
        dynasm!(self.a
            ; .arch x64
            ; push rbp
            ; push rbx
            ; push r12
            ; push r13
            ; push r14
            ; push r15
            // Six pushes after the return address: realign to 16 for calls.
            ; sub rsp, 8
            ; mov r12, rdi
            ; lea rbx, [rdi + l.x]
            ; mov r13, QWORD [rdi + l.pc]
            ; mov r15, rsi
            ; mov rbp, rdx
        );
        // Chained blocks come in here, with r13 already their start pc.
        let chain_entry = self.a.offset().0;
        dynasm!(self.a
            ; .arch x64
            ; mov r14, QWORD insns_addr as i64
            ; =>top
            ; inc QWORD [r12 + l.blocks]
        );
        let mut ended = false;
        for (k, i) in insns.iter().enumerate() {
            ended = self.insn(k as u64, i, exit)?;
        }
        if !ended {
            // Fell off the end: the next pc follows the last instruction.
            // After a cold instruction (a CSR write, an SBI call) the hart
            // must go back to its run loop, so that exit never chains.
            let end = insns.last().map_or(0, |i| i.off as i64 + i.len as i64);
            let chain = !insns.last().is_some_and(Insn::runs_cold);
            let label = self.exit_stub(insns.len() as u64, end, chain);
            dynasm!(self.a ; .arch x64 ; jmp =>label);
        }
        for stub in std::mem::take(&mut self.stubs) {
            self.stub(stub, top, exit)?;
        }
        if let Some(label) = self.lookup {
            self.lookup_tail(label, exit);
        }
        dynasm!(self.a
            ; .arch x64
            ; =>exit
            ; add rsp, 8
            ; pop r15
            ; pop r14
            ; pop r13
            ; pop r12
            ; pop rbx
            ; pop rbp
            ; ret
        );
        for slot in std::mem::take(&mut self.slots) {
            dynasm!(self.a ; .arch x64 ; .align 8 ; =>slot ; .u64 0);
        }
        Ok(chain_entry)
    }

    fn stub(
        &mut self,
        stub: Stub,
        top: DynamicLabel,
        exit: DynamicLabel,
    ) -> Result<(), CompileError> {
        let l = self.l;
        match stub {
            Stub::Loop { label, retired } => {
                let n = imm32(retired as i64)?;
                let leave = self.a.new_dynamic_label();
                dynasm!(self.a
                    ; .arch x64
                    ; =>label
                    ; add QWORD [r12 + l.instructions], n
                );
                self.stop_unless_may_go_on(leave);
                dynasm!(self.a
                    ; .arch x64
                    ; dec DWORD [r12 + l.budget]
                    ; jmp =>top
                    ; =>leave
                    ; mov QWORD [r12 + l.pc], r13
                    ; xor eax, eax
                    ; jmp =>exit
                );
            }
            Stub::Exit {
                label,
                retired,
                target,
                chain,
                lookup,
            } => {
                let n = imm32(retired as i64)?;
                dynasm!(self.a
                    ; .arch x64
                    ; =>label
                    ; add QWORD [r12 + l.instructions], n
                );
                if chain {
                    // Direct block chaining (QEMU's goto_tb): jump straight
                    // into the target's code once the run loop has linked
                    // the slot, under the checks the run loop would make.
                    let slot = self.a.new_dynamic_label();
                    self.slots.push(slot);
                    let page = self.page as i64;
                    let t = imm32(target)?;
                    let plain = self.a.new_dynamic_label();
                    self.stop_unless_may_go_on(plain);
                    dynasm!(self.a
                        ; .arch x64
                        ; mov rax, QWORD [=>slot]
                        ; test rax, rax
                        ; jz >unlinked
                        ; dec DWORD [r12 + l.budget]
                        ; lea r13, [r13 + t]
                        ; jmp rax
                        ; unlinked:
                        ; lea rax, [=>slot]
                        ; mov QWORD [r12 + l.link_slot], rax
                        ; mov rax, QWORD page
                        ; mov QWORD [r12 + l.link_page], rax
                        ; =>plain
                    );
                }
                self.start_plus(target);
                dynasm!(self.a ; .arch x64 ; mov QWORD [r12 + l.pc], rax);
                if lookup && !chain {
                    let tail = self.lookup_label();
                    dynasm!(self.a ; .arch x64 ; jmp =>tail);
                } else {
                    dynasm!(self.a ; .arch x64 ; xor eax, eax ; jmp =>exit);
                }
            }
            Stub::SlowLoad {
                label,
                back,
                fault,
                size_log2,
                signed,
            } => {
                // rsi still holds the guest virtual address.
                let helper = self.h.load[size_log2] as i64;
                dynasm!(self.a
                    ; .arch x64
                    ; =>label
                    ; mov rdi, r12
                    ; mov rax, QWORD helper
                    ; call rax
                    ; test rdx, rdx
                    ; jnz =>fault
                );
                if signed {
                    match size_log2 {
                        0 => dynasm!(self.a ; .arch x64 ; movsx rax, al),
                        1 => dynasm!(self.a ; .arch x64 ; movsx rax, ax),
                        _ => dynasm!(self.a ; .arch x64 ; movsxd rax, eax),
                    }
                }
                dynasm!(self.a ; .arch x64 ; jmp =>back);
            }
            Stub::SlowStore {
                label,
                back,
                fault,
                size_log2,
                rs2,
            } => {
                let helper = self.h.store[size_log2] as i64;
                dynasm!(self.a
                    ; .arch x64
                    ; =>label
                    ; mov rdi, r12
                    ; mov rdx, QWORD [rbx + rs2]
                    ; mov rax, QWORD helper
                    ; call rax
                    ; test rax, rax
                    ; jnz =>fault
                    ; jmp =>back
                );
            }
            Stub::Fault {
                label,
                retired,
                off,
            } => {
                let n = imm32(retired as i64)?;
                let off = imm32(off)?;
                dynasm!(self.a
                    ; .arch x64
                    ; =>label
                    ; add QWORD [r12 + l.instructions], n
                    ; lea rax, [r13 + off]
                    ; mov QWORD [r12 + l.pc], rax
                    ; mov eax, EXIT_EXCEPTION as i32
                    ; jmp =>exit
                );
            }
        }
        Ok(())
    }

    /// The softmmu fast path, inline (QEMU's `tcg_out_tlb_load`): with the
    /// guest virtual address in rsi, looks up the current MMU mode's TLB
    /// (table in rbp) and compares the page of the access's last byte with
    /// the comparator at `comparator` (`addr_read` or `addr_write`). A
    /// comparator with flag bits, a different page or an access that
    /// crosses into the next page all mismatch and go to `slow` with rsi
    /// unchanged; a hit leaves the host address in rsi.
    fn tlb_lookup(&mut self, size_log2: usize, comparator: i32, slow: DynamicLabel) {
        let l = self.l;
        let last = (1i32 << size_log2) - 1;
        let page_mask = PAGE_MASK as i64 as i32;
        dynasm!(self.a
            ; .arch x64
            ; mov rax, rsi
            ; shr rax, PAGE_BITS as i8
            ; and eax, (TLB_ENTRIES - 1) as i32
            ; imul eax, eax, l.tlb_stride
            ; lea rdx, [rsi + last]
            ; and rdx, page_mask
            ; cmp rdx, QWORD [rbp + rax + comparator]
            ; jne =>slow
            ; add rsi, QWORD [rbp + rax + l.tlb_addend]
        );
    }

    /// Jumps to `stop` unless the hart may go on into more compiled code
    /// without passing through its run loop: the checks the run loop makes
    /// between blocks (block budget left, no `check` from a store into a
    /// code page, no attention request: interrupt, IPI, pause, stop).
    /// Every self-loop, chained hop and looked-up hop makes them.
    fn stop_unless_may_go_on(&mut self, stop: DynamicLabel) {
        let l = self.l;
        dynasm!(self.a
            ; .arch x64
            ; cmp DWORD [r12 + l.budget], 0
            ; je =>stop
            ; cmp BYTE [r12 + l.check], 0
            ; jne =>stop
            ; cmp BYTE [r15], 0
            ; jne =>stop
        );
    }

    /// `rax = start + v`.
    fn start_plus(&mut self, v: i64) {
        if fits_i32(v) {
            dynasm!(self.a ; .arch x64 ; lea rax, [r13 + v as i32]);
        } else {
            dynasm!(self.a ; .arch x64 ; mov rax, QWORD v ; add rax, r13);
        }
    }

    /// `rax = v`.
    fn mov_imm(&mut self, v: i64) {
        if fits_i32(v) {
            dynasm!(self.a ; .arch x64 ; mov rax, v as i32);
        } else {
            dynasm!(self.a ; .arch x64 ; mov rax, QWORD v);
        }
    }

    /// A label for leaving the block to `start + target` after `retired`
    /// instructions (looping when the target is the start).
    fn exit_to(&mut self, retired: u64, target: i64) -> DynamicLabel {
        if target == 0 {
            let label = self.a.new_dynamic_label();
            self.stubs.push(Stub::Loop { label, retired });
            return label;
        }
        self.exit_stub(retired, target, true)
    }

    /// An exit to `start + target`, chained if `chain` and the target is on
    /// this block's page.
    fn exit_stub(&mut self, retired: u64, target: i64, chain: bool) -> DynamicLabel {
        let label = self.a.new_dynamic_label();
        let in_page = (0..PAGE_SIZE as i64).contains(&(self.page_offset + target));
        self.stubs.push(Stub::Exit {
            label,
            retired,
            target,
            chain: chain && in_page,
            lookup: chain,
        });
        label
    }

    /// The label of the block's lookup tail, created on first use.
    fn lookup_label(&mut self) -> DynamicLabel {
        match self.lookup {
            Some(l) => l,
            None => {
                let l = self.a.new_dynamic_label();
                self.lookup = Some(l);
                l
            }
        }
    }

    /// Leaves the block for the pc already stored in the hart, going
    /// straight into that block's compiled code when the run loop would
    /// run it next (same checks as a chained hop, then a jump-cache
    /// lookup in Rust), else back to the run loop. For targets known only
    /// at run time (`jalr`) or on another page, which cannot be chained.
    fn lookup_tail(&mut self, label: DynamicLabel, exit: DynamicLabel) {
        let l = self.l;
        let helper = self.h.lookup as i64;
        let out = self.a.new_dynamic_label();
        dynasm!(self.a ; .arch x64 ; =>label);
        self.stop_unless_may_go_on(out);
        dynasm!(self.a
            ; .arch x64
            ; mov rdi, r12
            ; mov rsi, QWORD [r12 + l.pc]
            ; mov rax, QWORD helper
            ; call rax
            ; test rax, rax
            ; jz =>out
            ; dec DWORD [r12 + l.budget]
            ; mov r13, QWORD [r12 + l.pc]
            ; jmp rax
            ; =>out
            ; xor eax, eax
            ; jmp =>exit
        );
    }

    fn fault(&mut self, k: u64, i: &Insn) -> DynamicLabel {
        let label = self.a.new_dynamic_label();
        self.stubs.push(Stub::Fault {
            label,
            retired: k,
            off: i.off as i64,
        });
        label
    }

    /// Emits instruction `k`; returns whether it always leaves the block.
    fn insn(&mut self, k: u64, i: &Insn, exit: DynamicLabel) -> Result<bool, CompileError> {
        let rd = Self::reg(i.rd);
        let rs1 = Self::reg(i.rs1);
        let rs2 = Self::reg(i.rs2);
        let imm = i.imm;
        let l = self.l;
        // Shift amounts: RISC-V masks them as x86 does for registers; the
        // immediate forms are masked here.
        let sh64 = (imm & 63) as i8;
        let sh32 = (imm & 31) as i8;
        macro_rules! asm {
            ($($t:tt)*) => { dynasm!(self.a ; .arch x64 $($t)*) };
        }
        // Result in rax, written to rd.
        macro_rules! put {
            () => {
                asm!(; mov QWORD [rbx + rd], rax)
            };
        }
        macro_rules! put32 {
            () => {
                asm!(; movsxd rax, eax ; mov QWORD [rbx + rd], rax)
            };
        }
        macro_rules! branch {
            ($jcc:tt) => {{
                let target = self.exit_to(k + 1, imm);
                asm!(; mov rax, QWORD [rbx + rs1] ; cmp rax, QWORD [rbx + rs2] ; $jcc =>target);
            }};
        }
        match i.op {
            Op::Lui => {
                self.mov_imm(imm);
                put!();
            }
            Op::Auipc => {
                self.start_plus(imm);
                put!();
            }
            Op::Jal => {
                let link = i.off as i32 + i.len as i32;
                asm!(; lea rax, [r13 + link]);
                put!();
                let target = self.exit_to(k + 1, imm);
                asm!(; jmp =>target);
                return Ok(true);
            }
            Op::Jalr => {
                let link = i.off as i32 + i.len as i32;
                let loop_ = self.a.new_dynamic_label();
                self.stubs.push(Stub::Loop {
                    label: loop_,
                    retired: k + 1,
                });
                // The target is computed before rd is written (rd may be
                // rs1).
                asm!(
                    ; mov rax, QWORD [rbx + rs1]
                    ; add rax, imm32(imm)?
                    ; and rax, -2
                    ; lea rcx, [r13 + link]
                    ; mov QWORD [rbx + rd], rcx
                    ; cmp rax, r13
                    ; je =>loop_
                    ; add QWORD [r12 + l.instructions], (k + 1) as i32
                    ; mov QWORD [r12 + l.pc], rax
                );
                let tail = self.lookup_label();
                asm!(; jmp =>tail);
                return Ok(true);
            }
            Op::Beq => branch!(je),
            Op::Bne => branch!(jne),
            Op::Blt => branch!(jl),
            Op::Bge => branch!(jge),
            Op::Bltu => branch!(jb),
            Op::Bgeu => branch!(jae),
            Op::Lb | Op::Lh | Op::Lw | Op::Ld | Op::Lbu | Op::Lhu | Op::Lwu => {
                let (size_log2, signed) = match i.op {
                    Op::Lb => (0, true),
                    Op::Lh => (1, true),
                    Op::Lw => (2, true),
                    Op::Ld => (3, false),
                    Op::Lbu => (0, false),
                    Op::Lhu => (1, false),
                    _ => (2, false),
                };
                let slow = self.a.new_dynamic_label();
                let back = self.a.new_dynamic_label();
                let fault = self.fault(k, i);
                self.stubs.push(Stub::SlowLoad {
                    label: slow,
                    back,
                    fault,
                    size_log2,
                    signed,
                });
                asm!(; mov rsi, QWORD [rbx + rs1] ; add rsi, imm32(imm)?);
                self.tlb_lookup(size_log2, l.tlb_read, slow);
                // rsi = host address.
                match (size_log2, signed) {
                    (0, true) => asm!(; movsx rax, BYTE [rsi]),
                    (1, true) => asm!(; movsx rax, WORD [rsi]),
                    (2, true) => asm!(; movsxd rax, DWORD [rsi]),
                    (0, false) => asm!(; movzx eax, BYTE [rsi]),
                    (1, false) => asm!(; movzx eax, WORD [rsi]),
                    (2, false) => asm!(; mov eax, DWORD [rsi]),
                    _ => asm!(; mov rax, QWORD [rsi]),
                }
                asm!(; =>back);
                put!();
            }
            Op::Sb | Op::Sh | Op::Sw | Op::Sd => {
                let size_log2 = match i.op {
                    Op::Sb => 0,
                    Op::Sh => 1,
                    Op::Sw => 2,
                    _ => 3,
                };
                let slow = self.a.new_dynamic_label();
                let back = self.a.new_dynamic_label();
                let fault = self.fault(k, i);
                self.stubs.push(Stub::SlowStore {
                    label: slow,
                    back,
                    fault,
                    size_log2,
                    rs2,
                });
                asm!(; mov rsi, QWORD [rbx + rs1] ; add rsi, imm32(imm)?);
                self.tlb_lookup(size_log2, l.tlb_write, slow);
                asm!(; mov rdx, QWORD [rbx + rs2]);
                match size_log2 {
                    0 => asm!(; mov BYTE [rsi], dl),
                    1 => asm!(; mov WORD [rsi], dx),
                    2 => asm!(; mov DWORD [rsi], edx),
                    _ => asm!(; mov QWORD [rsi], rdx),
                }
                asm!(; =>back);
            }
            Op::Addi => {
                asm!(; mov rax, QWORD [rbx + rs1] ; add rax, imm32(imm)?);
                put!();
            }
            Op::Slti => {
                asm!(; mov rax, QWORD [rbx + rs1] ; cmp rax, imm32(imm)? ; setl al ; movzx eax, al);
                put!();
            }
            Op::Sltiu => {
                asm!(; mov rax, QWORD [rbx + rs1] ; cmp rax, imm32(imm)? ; setb al ; movzx eax, al);
                put!();
            }
            Op::Xori => {
                asm!(; mov rax, QWORD [rbx + rs1] ; xor rax, imm32(imm)?);
                put!();
            }
            Op::Ori => {
                asm!(; mov rax, QWORD [rbx + rs1] ; or rax, imm32(imm)?);
                put!();
            }
            Op::Andi => {
                asm!(; mov rax, QWORD [rbx + rs1] ; and rax, imm32(imm)?);
                put!();
            }
            Op::Slli => {
                asm!(; mov rax, QWORD [rbx + rs1] ; shl rax, sh64);
                put!();
            }
            Op::Srli => {
                asm!(; mov rax, QWORD [rbx + rs1] ; shr rax, sh64);
                put!();
            }
            Op::Srai => {
                asm!(; mov rax, QWORD [rbx + rs1] ; sar rax, sh64);
                put!();
            }
            Op::Addiw => {
                asm!(; mov eax, DWORD [rbx + rs1] ; add eax, imm32(imm)?);
                put32!();
            }
            Op::Slliw => {
                asm!(; mov eax, DWORD [rbx + rs1] ; shl eax, sh32);
                put32!();
            }
            Op::Srliw => {
                asm!(; mov eax, DWORD [rbx + rs1] ; shr eax, sh32);
                put32!();
            }
            Op::Sraiw => {
                asm!(; mov eax, DWORD [rbx + rs1] ; sar eax, sh32);
                put32!();
            }
            Op::Add => {
                asm!(; mov rax, QWORD [rbx + rs1] ; add rax, QWORD [rbx + rs2]);
                put!();
            }
            Op::Sub => {
                asm!(; mov rax, QWORD [rbx + rs1] ; sub rax, QWORD [rbx + rs2]);
                put!();
            }
            Op::Xor => {
                asm!(; mov rax, QWORD [rbx + rs1] ; xor rax, QWORD [rbx + rs2]);
                put!();
            }
            Op::Or => {
                asm!(; mov rax, QWORD [rbx + rs1] ; or rax, QWORD [rbx + rs2]);
                put!();
            }
            Op::And => {
                asm!(; mov rax, QWORD [rbx + rs1] ; and rax, QWORD [rbx + rs2]);
                put!();
            }
            Op::Slt => {
                asm!(; mov rax, QWORD [rbx + rs1] ; cmp rax, QWORD [rbx + rs2] ; setl al ; movzx eax, al);
                put!();
            }
            Op::Sltu => {
                asm!(; mov rax, QWORD [rbx + rs1] ; cmp rax, QWORD [rbx + rs2] ; setb al ; movzx eax, al);
                put!();
            }
            Op::Sll => {
                asm!(; mov rcx, QWORD [rbx + rs2] ; mov rax, QWORD [rbx + rs1] ; shl rax, cl);
                put!();
            }
            Op::Srl => {
                asm!(; mov rcx, QWORD [rbx + rs2] ; mov rax, QWORD [rbx + rs1] ; shr rax, cl);
                put!();
            }
            Op::Sra => {
                asm!(; mov rcx, QWORD [rbx + rs2] ; mov rax, QWORD [rbx + rs1] ; sar rax, cl);
                put!();
            }
            Op::Addw => {
                asm!(; mov eax, DWORD [rbx + rs1] ; add eax, DWORD [rbx + rs2]);
                put32!();
            }
            Op::Subw => {
                asm!(; mov eax, DWORD [rbx + rs1] ; sub eax, DWORD [rbx + rs2]);
                put32!();
            }
            Op::Sllw => {
                asm!(; mov rcx, QWORD [rbx + rs2] ; mov eax, DWORD [rbx + rs1] ; shl eax, cl);
                put32!();
            }
            Op::Srlw => {
                asm!(; mov rcx, QWORD [rbx + rs2] ; mov eax, DWORD [rbx + rs1] ; shr eax, cl);
                put32!();
            }
            Op::Sraw => {
                asm!(; mov rcx, QWORD [rbx + rs2] ; mov eax, DWORD [rbx + rs1] ; sar eax, cl);
                put32!();
            }
            Op::Mul => {
                asm!(; mov rax, QWORD [rbx + rs1] ; imul rax, QWORD [rbx + rs2]);
                put!();
            }
            Op::Mulw => {
                asm!(; mov eax, DWORD [rbx + rs1] ; imul eax, DWORD [rbx + rs2]);
                put32!();
            }
            Op::Mulh => {
                asm!(; mov rax, QWORD [rbx + rs1] ; imul QWORD [rbx + rs2] ; mov rax, rdx);
                put!();
            }
            Op::Mulhu => {
                asm!(; mov rax, QWORD [rbx + rs1] ; mul QWORD [rbx + rs2] ; mov rax, rdx);
                put!();
            }
            Op::Mulhsu => {
                // The unsigned high half, less rs2 when rs1 is negative.
                asm!(
                    ; mov rcx, QWORD [rbx + rs2]
                    ; mov rax, QWORD [rbx + rs1]
                    ; mul rcx
                    ; mov rax, QWORD [rbx + rs1]
                    ; sar rax, 63
                    ; and rax, rcx
                    ; sub rdx, rax
                    ; mov rax, rdx
                );
                put!();
            }
            // Division: RISC-V defines division by zero and the signed
            // overflow (MIN / -1) where x86 would trap, so both are
            // handled before `div`/`idiv`. Unsigned 64-bit operands that
            // fit in 32 bits take the (much) faster 32-bit divide.
            Op::Divu | Op::Remu => {
                let quotient = i.op == Op::Divu;
                asm!(
                    ; mov rax, QWORD [rbx + rs1]
                    ; mov rcx, QWORD [rbx + rs2]
                    ; test rcx, rcx
                    ; jz >zero
                    ; mov rdx, rax
                    ; or rdx, rcx
                    ; shr rdx, 32
                    ; jnz >wide
                    ; xor edx, edx
                    ; div ecx
                    ; jmp >done
                    ; wide:
                    ; xor edx, edx
                    ; div rcx
                    ; done:
                );
                if quotient {
                    asm!(; jmp >store ; zero: ; mov rax, -1 ; store:);
                } else {
                    asm!(; mov rax, rdx ; zero:);
                }
                put!();
            }
            Op::Div | Op::Rem => {
                let quotient = i.op == Op::Div;
                asm!(
                    ; mov rax, QWORD [rbx + rs1]
                    ; mov rcx, QWORD [rbx + rs2]
                    ; test rcx, rcx
                    ; jz >zero
                    ; cmp rcx, -1
                    ; je >minus1
                    ; cqo
                    ; idiv rcx
                );
                if quotient {
                    asm!(
                        ; jmp >store
                        ; zero:
                        ; mov rax, -1
                        ; jmp >store
                        ; minus1:
                        ; neg rax
                        ; store:
                    );
                } else {
                    asm!(
                        ; mov rax, rdx
                        ; jmp >store
                        ; minus1:
                        ; xor eax, eax
                        ; zero:
                        ; store:
                    );
                }
                put!();
            }
            Op::Divuw | Op::Remuw => {
                let quotient = i.op == Op::Divuw;
                asm!(
                    ; mov eax, DWORD [rbx + rs1]
                    ; mov ecx, DWORD [rbx + rs2]
                    ; test ecx, ecx
                    ; jz >zero
                    ; xor edx, edx
                    ; div ecx
                );
                if quotient {
                    asm!(; jmp >store ; zero: ; mov eax, -1 ; store:);
                } else {
                    asm!(; mov eax, edx ; zero:);
                }
                put32!();
            }
            Op::Divw | Op::Remw => {
                let quotient = i.op == Op::Divw;
                asm!(
                    ; mov eax, DWORD [rbx + rs1]
                    ; mov ecx, DWORD [rbx + rs2]
                    ; test ecx, ecx
                    ; jz >zero
                    ; cmp ecx, -1
                    ; je >minus1
                    ; cdq
                    ; idiv ecx
                );
                if quotient {
                    asm!(
                        ; jmp >store
                        ; zero:
                        ; mov eax, -1
                        ; jmp >store
                        ; minus1:
                        ; neg eax
                        ; store:
                    );
                } else {
                    asm!(
                        ; mov eax, edx
                        ; jmp >store
                        ; minus1:
                        ; xor eax, eax
                        ; zero:
                        ; store:
                    );
                }
                put32!();
            }
            _ => {
                // Everything else runs in the interpreter, one instruction.
                let fault = self.fault(k, i);
                let insn_off = imm32(k as i64 * std::mem::size_of::<Insn>() as i64)?;
                let off = i.off as i32;
                let helper = self.h.cold as i64;
                // `inflight` as the interpreter has it when this
                // instruction runs (a CSR read of instret sees it).
                asm!(
                    ; mov QWORD [r12 + l.inflight], k as i32
                    ; mov rdi, r12
                    ; lea rsi, [r14 + insn_off]
                    ; lea rdx, [r13 + off]
                    ; mov rax, QWORD helper
                    ; call rax
                    ; test rdx, rdx
                    ; jz >next
                    ; cmp rdx, 1
                    ; jne =>fault
                    ; add QWORD [r12 + l.instructions], (k + 1) as i32
                    ; mov QWORD [r12 + l.pc], rax
                    ; xor eax, eax
                    ; jmp =>exit
                    ; next:
                );
                // A cold instruction that ends the block (a CSR access) is
                // its last, so falling off the end handles "next".
            }
        }
        Ok(false)
    }
}
