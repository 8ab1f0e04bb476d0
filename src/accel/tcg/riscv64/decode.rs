//! RV64GC instruction decoding into a compact, pre-extracted form.
//!
//! Decoding happens once per translated block, so this code favours
//! clarity; the interpreter's hot loop only ever sees [`Insn`]. Compressed
//! instructions are expanded to their 32-bit equivalents first
//! ([`expand_compressed`]), so the interpreter has one implementation of each
//! operation. Anything not understood decodes to [`Op::Illegal`], which the
//! interpreter turns into a guest illegal-instruction trap.

/// Register index that absorbs writes to `x0`: the register file has 33
/// slots and decoding redirects `rd = 0` here, so the interpreter never has
/// to special-case `x0` (slot 0 stays zero because nothing writes it).
pub const SINK: u8 = 32;

/// Operations. Field use is documented per group; `imm` is sign-extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Illegal,
    // U/J type: rd, imm
    Lui,
    Auipc,
    Jal,
    // I type: rd, rs1, imm
    Jalr,
    // B type: rs1, rs2, imm
    Beq,
    Bne,
    Blt,
    Bge,
    Bltu,
    Bgeu,
    // Loads: rd, rs1, imm
    Lb,
    Lh,
    Lw,
    Ld,
    Lbu,
    Lhu,
    Lwu,
    // Stores: rs1 (base), rs2 (value), imm
    Sb,
    Sh,
    Sw,
    Sd,
    // Register-immediate: rd, rs1, imm (shift amount in imm)
    Addi,
    Slti,
    Sltiu,
    Xori,
    Ori,
    Andi,
    Slli,
    Srli,
    Srai,
    Addiw,
    Slliw,
    Srliw,
    Sraiw,
    // Register-register: rd, rs1, rs2
    Add,
    Sub,
    Sll,
    Slt,
    Sltu,
    Xor,
    Srl,
    Sra,
    Or,
    And,
    Addw,
    Subw,
    Sllw,
    Srlw,
    Sraw,
    Mul,
    Mulh,
    Mulhsu,
    Mulhu,
    Div,
    Divu,
    Rem,
    Remu,
    Mulw,
    Divw,
    Divuw,
    Remw,
    Remuw,
    // System
    Fence,
    FenceI,
    Ecall,
    Ebreak,
    Sret,
    Wfi,
    /// rs1 = address register, rs2 = ASID register.
    SfenceVma,
    /// CSR ops: rd, rs1 (register or, for the *i forms, the 5-bit
    /// immediate), imm = CSR number.
    Csrrw,
    Csrrs,
    Csrrc,
    Csrrwi,
    Csrrsi,
    Csrrci,
    /// Atomics: rd, rs1 (address), rs2 (value), `rm` = [`AmoOp`] as u8,
    /// `rs3` = 4 or 8 (width).
    Lr,
    Sc,
    Amo,
    // FP loads/stores: rd/rs2 are f registers.
    Flw,
    Fld,
    Fsw,
    Fsd,
    /// Every other F/D instruction: `rs3` holds the third source, `rm` the
    /// rounding mode field, `imm` the [`FpOp`] as i64 plus 0x100 for double
    /// precision.
    Fp,
}

/// AMO operations, in `Insn::rm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AmoOp {
    Swap = 0,
    Add,
    Xor,
    And,
    Or,
    Min,
    Max,
    Minu,
    Maxu,
}

impl AmoOp {
    pub fn from_u8(v: u8) -> AmoOp {
        match v {
            0 => AmoOp::Swap,
            1 => AmoOp::Add,
            2 => AmoOp::Xor,
            3 => AmoOp::And,
            4 => AmoOp::Or,
            5 => AmoOp::Min,
            6 => AmoOp::Max,
            7 => AmoOp::Minu,
            _ => AmoOp::Maxu,
        }
    }
}

/// F/D operations other than loads and stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FpOp {
    Madd = 0,
    Msub,
    Nmsub,
    Nmadd,
    Add,
    Sub,
    Mul,
    Div,
    Sqrt,
    SgnJ,
    SgnJn,
    SgnJx,
    Min,
    Max,
    /// fcvt.s.d (in a single-precision insn) or fcvt.d.s (double).
    CvtFF,
    Eq,
    Lt,
    Le,
    Class,
    /// fcvt to integer; rs2 selects w/wu/l/lu (0..=3).
    CvtToInt,
    /// fcvt from integer; rs2 selects w/wu/l/lu.
    CvtFromInt,
    /// fmv.x.w / fmv.x.d
    MvToX,
    /// fmv.w.x / fmv.d.x
    MvFromX,
}

impl FpOp {
    const ALL: [FpOp; 23] = [
        FpOp::Madd,
        FpOp::Msub,
        FpOp::Nmsub,
        FpOp::Nmadd,
        FpOp::Add,
        FpOp::Sub,
        FpOp::Mul,
        FpOp::Div,
        FpOp::Sqrt,
        FpOp::SgnJ,
        FpOp::SgnJn,
        FpOp::SgnJx,
        FpOp::Min,
        FpOp::Max,
        FpOp::CvtFF,
        FpOp::Eq,
        FpOp::Lt,
        FpOp::Le,
        FpOp::Class,
        FpOp::CvtToInt,
        FpOp::CvtFromInt,
        FpOp::MvToX,
        FpOp::MvFromX,
    ];

    pub fn from_u8(v: u8) -> Option<FpOp> {
        Self::ALL.get(v as usize).copied()
    }
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub op: Op,
    pub rd: u8,
    pub rs1: u8,
    pub rs2: u8,
    pub rs3: u8,
    pub rm: u8,
    /// 2 or 4.
    pub len: u8,
    /// Byte offset from the start of the block (set when the block is
    /// translated; at most 63 * 4), so the interpreter need not track the
    /// pc instruction by instruction.
    pub off: u8,
    /// The immediate. For the pc-relative operations (`auipc`, `jal` and
    /// the conditional branches) a translated block holds it rebased onto
    /// the block's start (`imm + off`, see [`Insn::rebase`]), so the
    /// interpreter adds it to the block's start pc.
    pub imm: i64,
}

impl Insn {
    fn new(op: Op) -> Insn {
        Insn {
            op,
            rd: 0,
            rs1: 0,
            rs2: 0,
            rs3: 0,
            rm: 0,
            len: 4,
            off: 0,
            imm: 0,
        }
    }

    /// Places the instruction at byte `off` of its block, rebasing a
    /// pc-relative immediate onto the block's start.
    pub fn rebase(&mut self, off: u8) {
        self.off = off;
        if matches!(
            self.op,
            Op::Auipc | Op::Jal | Op::Beq | Op::Bne | Op::Blt | Op::Bge | Op::Bltu | Op::Bgeu
        ) {
            self.imm = self.imm.wrapping_add(off as i64);
        }
    }

    /// An illegal instruction; `imm` keeps the raw bits for `stval`.
    pub fn illegal(raw: u32, len: u8) -> Insn {
        Insn {
            imm: raw as i64,
            len,
            ..Insn::new(Op::Illegal)
        }
    }

    /// Whether the instruction runs out of line, in `Hart::step_cold`
    /// (system, CSR, atomic and floating-point instructions): the
    /// interpreter's cold arm, and the instructions compiled code hands
    /// back to the interpreter one at a time.
    pub fn runs_cold(&self) -> bool {
        matches!(
            self.op,
            Op::Illegal
                | Op::Fence
                | Op::FenceI
                | Op::Ecall
                | Op::Ebreak
                | Op::Sret
                | Op::Wfi
                | Op::SfenceVma
                | Op::Csrrw
                | Op::Csrrs
                | Op::Csrrc
                | Op::Csrrwi
                | Op::Csrrsi
                | Op::Csrrci
                | Op::Lr
                | Op::Sc
                | Op::Amo
                | Op::Flw
                | Op::Fld
                | Op::Fsw
                | Op::Fsd
                | Op::Fp
        )
    }

    /// Whether the instruction ends a translated block: unconditional
    /// jumps and anything that changes privilege, translation or interrupt
    /// state. Conditional branches do not: a taken branch leaves the block
    /// early (a side exit) and a not-taken one falls through, which makes
    /// blocks of loop bodies two to three times longer.
    pub fn ends_block(&self) -> bool {
        matches!(
            self.op,
            Op::Illegal
                | Op::Jal
                | Op::Jalr
                | Op::FenceI
                | Op::Ecall
                | Op::Ebreak
                | Op::Sret
                | Op::Wfi
                | Op::SfenceVma
                | Op::Csrrw
                | Op::Csrrs
                | Op::Csrrc
                | Op::Csrrwi
                | Op::Csrrsi
                | Op::Csrrci
        )
    }
}

fn bits(raw: u32, hi: u32, lo: u32) -> u32 {
    (raw >> lo) & ((1u32 << (hi - lo + 1)) - 1)
}

fn sext(value: u64, width: u32) -> i64 {
    let shift = 64 - width;
    ((value << shift) as i64) >> shift
}

fn rd_of(raw: u32) -> u8 {
    match bits(raw, 11, 7) as u8 {
        0 => SINK,
        r => r,
    }
}

fn imm_i(raw: u32) -> i64 {
    (raw as i32 >> 20) as i64
}

fn imm_s(raw: u32) -> i64 {
    sext(((raw >> 25) << 5 | bits(raw, 11, 7)) as u64, 12)
}

fn imm_b(raw: u32) -> i64 {
    let v = (bits(raw, 31, 31) << 12)
        | (bits(raw, 7, 7) << 11)
        | (bits(raw, 30, 25) << 5)
        | (bits(raw, 11, 8) << 1);
    sext(v as u64, 13)
}

fn imm_u(raw: u32) -> i64 {
    (raw & 0xffff_f000) as i32 as i64
}

fn imm_j(raw: u32) -> i64 {
    let v = (bits(raw, 31, 31) << 20)
        | (bits(raw, 19, 12) << 12)
        | (bits(raw, 20, 20) << 11)
        | (bits(raw, 30, 21) << 1);
    sext(v as u64, 21)
}

/// Decodes a 32-bit instruction.
pub fn decode(raw: u32) -> Insn {
    let opcode = raw & 0x7f;
    let funct3 = bits(raw, 14, 12);
    let funct7 = bits(raw, 31, 25);
    let rd = rd_of(raw);
    let rs1 = bits(raw, 19, 15) as u8;
    let rs2 = bits(raw, 24, 20) as u8;
    let illegal = Insn::illegal(raw, 4);
    let r = |op: Op| Insn {
        rd,
        rs1,
        rs2,
        ..Insn::new(op)
    };
    let i = |op: Op, imm: i64| Insn {
        rd,
        rs1,
        imm,
        ..Insn::new(op)
    };
    match opcode {
        0x37 => Insn {
            rd,
            imm: imm_u(raw),
            ..Insn::new(Op::Lui)
        },
        0x17 => Insn {
            rd,
            imm: imm_u(raw),
            ..Insn::new(Op::Auipc)
        },
        0x6f => Insn {
            rd,
            imm: imm_j(raw),
            ..Insn::new(Op::Jal)
        },
        0x67 if funct3 == 0 => i(Op::Jalr, imm_i(raw)),
        0x63 => {
            let op = match funct3 {
                0 => Op::Beq,
                1 => Op::Bne,
                4 => Op::Blt,
                5 => Op::Bge,
                6 => Op::Bltu,
                7 => Op::Bgeu,
                _ => return illegal,
            };
            Insn {
                rs1,
                rs2,
                imm: imm_b(raw),
                ..Insn::new(op)
            }
        }
        0x03 => {
            let op = match funct3 {
                0 => Op::Lb,
                1 => Op::Lh,
                2 => Op::Lw,
                3 => Op::Ld,
                4 => Op::Lbu,
                5 => Op::Lhu,
                6 => Op::Lwu,
                _ => return illegal,
            };
            i(op, imm_i(raw))
        }
        0x23 => {
            let op = match funct3 {
                0 => Op::Sb,
                1 => Op::Sh,
                2 => Op::Sw,
                3 => Op::Sd,
                _ => return illegal,
            };
            Insn {
                rs1,
                rs2,
                imm: imm_s(raw),
                ..Insn::new(op)
            }
        }
        0x13 => {
            let imm = imm_i(raw);
            let shamt = bits(raw, 25, 20) as i64;
            let top6 = bits(raw, 31, 26);
            let op = match funct3 {
                0 => Op::Addi,
                2 => Op::Slti,
                3 => Op::Sltiu,
                4 => Op::Xori,
                6 => Op::Ori,
                7 => Op::Andi,
                1 if top6 == 0 => return i(Op::Slli, shamt),
                5 if top6 == 0 => return i(Op::Srli, shamt),
                5 if top6 == 0x10 => return i(Op::Srai, shamt),
                _ => return illegal,
            };
            i(op, imm)
        }
        0x1b => {
            let shamt = bits(raw, 24, 20) as i64;
            match (funct3, funct7) {
                (0, _) => i(Op::Addiw, imm_i(raw)),
                (1, 0) => i(Op::Slliw, shamt),
                (5, 0) => i(Op::Srliw, shamt),
                (5, 0x20) => i(Op::Sraiw, shamt),
                _ => illegal,
            }
        }
        0x33 => {
            let op = match (funct7, funct3) {
                (0, 0) => Op::Add,
                (0x20, 0) => Op::Sub,
                (0, 1) => Op::Sll,
                (0, 2) => Op::Slt,
                (0, 3) => Op::Sltu,
                (0, 4) => Op::Xor,
                (0, 5) => Op::Srl,
                (0x20, 5) => Op::Sra,
                (0, 6) => Op::Or,
                (0, 7) => Op::And,
                (1, 0) => Op::Mul,
                (1, 1) => Op::Mulh,
                (1, 2) => Op::Mulhsu,
                (1, 3) => Op::Mulhu,
                (1, 4) => Op::Div,
                (1, 5) => Op::Divu,
                (1, 6) => Op::Rem,
                (1, 7) => Op::Remu,
                _ => return illegal,
            };
            r(op)
        }
        0x3b => {
            let op = match (funct7, funct3) {
                (0, 0) => Op::Addw,
                (0x20, 0) => Op::Subw,
                (0, 1) => Op::Sllw,
                (0, 5) => Op::Srlw,
                (0x20, 5) => Op::Sraw,
                (1, 0) => Op::Mulw,
                (1, 4) => Op::Divw,
                (1, 5) => Op::Divuw,
                (1, 6) => Op::Remw,
                (1, 7) => Op::Remuw,
                _ => return illegal,
            };
            r(op)
        }
        0x0f => match funct3 {
            0 => Insn::new(Op::Fence),
            1 => Insn::new(Op::FenceI),
            _ => illegal,
        },
        0x73 => decode_system(raw, rd, rs1, rs2, funct3, funct7),
        0x2f => decode_atomic(raw, rd, rs1, rs2, funct3),
        0x07 => {
            let op = match funct3 {
                2 => Op::Flw,
                3 => Op::Fld,
                _ => return illegal,
            };
            Insn {
                rd: bits(raw, 11, 7) as u8,
                rs1,
                imm: imm_i(raw),
                ..Insn::new(op)
            }
        }
        0x27 => {
            let op = match funct3 {
                2 => Op::Fsw,
                3 => Op::Fsd,
                _ => return illegal,
            };
            Insn {
                rs1,
                rs2,
                imm: imm_s(raw),
                ..Insn::new(op)
            }
        }
        0x43 | 0x47 | 0x4b | 0x4f => {
            let fmt = bits(raw, 26, 25);
            if fmt > 1 {
                return illegal;
            }
            let op = match opcode {
                0x43 => FpOp::Madd,
                0x47 => FpOp::Msub,
                0x4b => FpOp::Nmsub,
                _ => FpOp::Nmadd,
            };
            fp_insn(raw, op, fmt == 1)
        }
        0x53 => decode_fp(raw, funct3, funct7, rs2),
        _ => illegal,
    }
}

fn fp_insn(raw: u32, op: FpOp, double: bool) -> Insn {
    Insn {
        rd: bits(raw, 11, 7) as u8,
        rs1: bits(raw, 19, 15) as u8,
        rs2: bits(raw, 24, 20) as u8,
        rs3: bits(raw, 31, 27) as u8,
        rm: bits(raw, 14, 12) as u8,
        imm: op as i64 + if double { 0x100 } else { 0 },
        ..Insn::new(Op::Fp)
    }
}

fn decode_fp(raw: u32, funct3: u32, funct7: u32, rs2: u8) -> Insn {
    let illegal = Insn::illegal(raw, 4);
    let double = funct7 & 1 == 1;
    if funct7 & 2 != 0 {
        // fmt 2 (H) and 3 (Q) are not implemented.
        return illegal;
    }
    let op = match funct7 >> 2 {
        0x00 => FpOp::Add,
        0x01 => FpOp::Sub,
        0x02 => FpOp::Mul,
        0x03 => FpOp::Div,
        0x0b if rs2 == 0 => FpOp::Sqrt,
        0x04 => match funct3 {
            0 => FpOp::SgnJ,
            1 => FpOp::SgnJn,
            2 => FpOp::SgnJx,
            _ => return illegal,
        },
        0x05 => match funct3 {
            0 => FpOp::Min,
            1 => FpOp::Max,
            _ => return illegal,
        },
        // fcvt.s.d (funct7 0x20, rs2 1) and fcvt.d.s (0x21, rs2 0).
        0x08 if (double && rs2 == 0) || (!double && rs2 == 1) => FpOp::CvtFF,
        0x14 => match funct3 {
            2 => FpOp::Eq,
            1 => FpOp::Lt,
            0 => FpOp::Le,
            _ => return illegal,
        },
        0x18 if rs2 < 4 => FpOp::CvtToInt,
        0x1a if rs2 < 4 => FpOp::CvtFromInt,
        0x1c if rs2 == 0 && funct3 == 0 => FpOp::MvToX,
        0x1c if rs2 == 0 && funct3 == 1 => FpOp::Class,
        0x1e if rs2 == 0 && funct3 == 0 => FpOp::MvFromX,
        _ => return illegal,
    };
    fp_insn(raw, op, double)
}

fn decode_system(raw: u32, rd: u8, rs1: u8, rs2: u8, funct3: u32, funct7: u32) -> Insn {
    let illegal = Insn::illegal(raw, 4);
    let csr = bits(raw, 31, 20) as i64;
    let csr_op = |op: Op| Insn {
        rd,
        rs1,
        imm: csr,
        ..Insn::new(op)
    };
    match funct3 {
        0 => {
            if rd != SINK && funct7 != 0x09 {
                return illegal;
            }
            match (funct7, rs2, rs1) {
                (0, 0, 0) => Insn::new(Op::Ecall),
                (0, 1, 0) => Insn::new(Op::Ebreak),
                (0x08, 2, 0) => Insn::new(Op::Sret),
                (0x08, 5, 0) => Insn::new(Op::Wfi),
                (0x09, _, _) if rd == SINK => Insn {
                    rs1,
                    rs2,
                    ..Insn::new(Op::SfenceVma)
                },
                _ => illegal,
            }
        }
        1 => csr_op(Op::Csrrw),
        2 => csr_op(Op::Csrrs),
        3 => csr_op(Op::Csrrc),
        5 => csr_op(Op::Csrrwi),
        6 => csr_op(Op::Csrrsi),
        7 => csr_op(Op::Csrrci),
        _ => illegal,
    }
}

fn decode_atomic(raw: u32, rd: u8, rs1: u8, rs2: u8, funct3: u32) -> Insn {
    let illegal = Insn::illegal(raw, 4);
    let width = match funct3 {
        2 => 4,
        3 => 8,
        _ => return illegal,
    };
    let funct5 = bits(raw, 31, 27);
    let (op, amo) = match funct5 {
        0x02 if rs2 == 0 => (Op::Lr, AmoOp::Swap),
        0x03 => (Op::Sc, AmoOp::Swap),
        0x01 => (Op::Amo, AmoOp::Swap),
        0x00 => (Op::Amo, AmoOp::Add),
        0x04 => (Op::Amo, AmoOp::Xor),
        0x0c => (Op::Amo, AmoOp::And),
        0x08 => (Op::Amo, AmoOp::Or),
        0x10 => (Op::Amo, AmoOp::Min),
        0x14 => (Op::Amo, AmoOp::Max),
        0x18 => (Op::Amo, AmoOp::Minu),
        0x1c => (Op::Amo, AmoOp::Maxu),
        _ => return illegal,
    };
    Insn {
        rd,
        rs1,
        rs2,
        rs3: width,
        rm: amo as u8,
        ..Insn::new(op)
    }
}

/// Expands a 16-bit RVC instruction to the equivalent 32-bit encoding, or
/// `None` for reserved or illegal encodings (including all-zero).
pub fn expand_compressed(c: u16) -> Option<u32> {
    let c = c as u32;
    let op = c & 3;
    let funct3 = bits(c, 15, 13);
    // Registers x8..x15 in the 3-bit fields.
    let r3 = |hi: u32, lo: u32| bits(c, hi, lo) + 8;
    let rd_full = bits(c, 11, 7);
    let rs2_full = bits(c, 6, 2);
    let enc_i = |imm: i32, rs1: u32, f3: u32, rd: u32, opc: u32| -> u32 {
        ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opc
    };
    let enc_s = |imm: i32, rs2: u32, rs1: u32, f3: u32, opc: u32| -> u32 {
        let imm = imm as u32 & 0xfff;
        ((imm >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | opc
    };
    let enc_r = |f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, opc: u32| -> u32 {
        (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | opc
    };
    let enc_b = |imm: i32, rs2: u32, rs1: u32, f3: u32| -> u32 {
        let imm = imm as u32;
        (((imm >> 12) & 1) << 31)
            | (((imm >> 5) & 0x3f) << 25)
            | (rs2 << 20)
            | (rs1 << 15)
            | (f3 << 12)
            | (((imm >> 1) & 0xf) << 8)
            | (((imm >> 11) & 1) << 7)
            | 0x63
    };
    let enc_j = |imm: i32, rd: u32| -> u32 {
        let imm = imm as u32;
        (((imm >> 20) & 1) << 31)
            | (((imm >> 1) & 0x3ff) << 21)
            | (((imm >> 11) & 1) << 20)
            | (((imm >> 12) & 0xff) << 12)
            | (rd << 7)
            | 0x6f
    };
    // Sign-extended 6-bit immediate from bit 12 and bits 6:2.
    let imm6 = || sext(((bits(c, 12, 12) << 5) | bits(c, 6, 2)) as u64, 6) as i32;
    match (op, funct3) {
        (0, 0) => {
            // c.addi4spn
            let nzuimm = (bits(c, 10, 7) << 6)
                | (bits(c, 12, 11) << 4)
                | (bits(c, 5, 5) << 3)
                | (bits(c, 6, 6) << 2);
            if nzuimm == 0 {
                return None;
            }
            Some(enc_i(nzuimm as i32, 2, 0, r3(4, 2), 0x13))
        }
        (0, 1) | (0, 3) | (0, 5) | (0, 7) => {
            // c.fld / c.ld / c.fsd / c.sd: 8-byte scaled offset
            let off = (bits(c, 6, 5) << 6) | (bits(c, 12, 10) << 3);
            Some(match funct3 {
                1 => enc_i(off as i32, r3(9, 7), 3, r3(4, 2), 0x07),
                3 => enc_i(off as i32, r3(9, 7), 3, r3(4, 2), 0x03),
                5 => enc_s(off as i32, r3(4, 2), r3(9, 7), 3, 0x27),
                _ => enc_s(off as i32, r3(4, 2), r3(9, 7), 3, 0x23),
            })
        }
        (0, 2) | (0, 6) => {
            // c.lw / c.sw
            let off = (bits(c, 5, 5) << 6) | (bits(c, 12, 10) << 3) | (bits(c, 6, 6) << 2);
            Some(if funct3 == 2 {
                enc_i(off as i32, r3(9, 7), 2, r3(4, 2), 0x03)
            } else {
                enc_s(off as i32, r3(4, 2), r3(9, 7), 2, 0x23)
            })
        }
        (0, _) => None,
        (1, 0) => Some(enc_i(imm6(), rd_full, 0, rd_full, 0x13)), // c.addi / c.nop
        (1, 1) => {
            // c.addiw
            if rd_full == 0 {
                return None;
            }
            Some(enc_i(imm6(), rd_full, 0, rd_full, 0x1b))
        }
        (1, 2) => Some(enc_i(imm6(), 0, 0, rd_full, 0x13)), // c.li
        (1, 3) => {
            if rd_full == 2 {
                // c.addi16sp
                let imm = sext(
                    ((bits(c, 12, 12) << 9)
                        | (bits(c, 4, 3) << 7)
                        | (bits(c, 5, 5) << 6)
                        | (bits(c, 2, 2) << 5)
                        | (bits(c, 6, 6) << 4)) as u64,
                    10,
                ) as i32;
                if imm == 0 {
                    return None;
                }
                Some(enc_i(imm, 2, 0, 2, 0x13))
            } else {
                // c.lui
                let imm = imm6();
                if imm == 0 {
                    return None;
                }
                Some(((imm as u32 & 0xfffff) << 12) | (rd_full << 7) | 0x37)
            }
        }
        (1, 4) => {
            let rd = r3(9, 7);
            match bits(c, 11, 10) {
                0 | 1 => {
                    // c.srli / c.srai
                    let shamt = (bits(c, 12, 12) << 5) | bits(c, 6, 2);
                    let top = if bits(c, 11, 10) == 1 { 0x10 << 6 } else { 0 };
                    Some(enc_i((top | shamt) as i32, rd, 5, rd, 0x13))
                }
                2 => Some(enc_i(imm6(), rd, 7, rd, 0x13)), // c.andi
                _ => {
                    let rs2 = r3(4, 2);
                    match (bits(c, 12, 12), bits(c, 6, 5)) {
                        (0, 0) => Some(enc_r(0x20, rs2, rd, 0, rd, 0x33)), // c.sub
                        (0, 1) => Some(enc_r(0, rs2, rd, 4, rd, 0x33)),    // c.xor
                        (0, 2) => Some(enc_r(0, rs2, rd, 6, rd, 0x33)),    // c.or
                        (0, 3) => Some(enc_r(0, rs2, rd, 7, rd, 0x33)),    // c.and
                        (1, 0) => Some(enc_r(0x20, rs2, rd, 0, rd, 0x3b)), // c.subw
                        (1, 1) => Some(enc_r(0, rs2, rd, 0, rd, 0x3b)),    // c.addw
                        _ => None,
                    }
                }
            }
        }
        (1, 5) => {
            // c.j
            let imm = sext(
                ((bits(c, 12, 12) << 11)
                    | (bits(c, 8, 8) << 10)
                    | (bits(c, 10, 9) << 8)
                    | (bits(c, 6, 6) << 7)
                    | (bits(c, 7, 7) << 6)
                    | (bits(c, 2, 2) << 5)
                    | (bits(c, 11, 11) << 4)
                    | (bits(c, 5, 3) << 1)) as u64,
                12,
            ) as i32;
            Some(enc_j(imm, 0))
        }
        (1, 6) | (1, 7) => {
            // c.beqz / c.bnez
            let imm = sext(
                ((bits(c, 12, 12) << 8)
                    | (bits(c, 6, 5) << 6)
                    | (bits(c, 2, 2) << 5)
                    | (bits(c, 11, 10) << 3)
                    | (bits(c, 4, 3) << 1)) as u64,
                9,
            ) as i32;
            Some(enc_b(imm, 0, r3(9, 7), funct3 - 6))
        }
        (2, 0) => {
            // c.slli
            let shamt = (bits(c, 12, 12) << 5) | bits(c, 6, 2);
            Some(enc_i(shamt as i32, rd_full, 1, rd_full, 0x13))
        }
        (2, 1) | (2, 3) => {
            // c.fldsp / c.ldsp
            let off = (bits(c, 4, 2) << 6) | (bits(c, 12, 12) << 5) | (bits(c, 6, 5) << 3);
            if funct3 == 3 && rd_full == 0 {
                return None;
            }
            let opc = if funct3 == 1 { 0x07 } else { 0x03 };
            Some(enc_i(off as i32, 2, 3, rd_full, opc))
        }
        (2, 2) => {
            // c.lwsp
            if rd_full == 0 {
                return None;
            }
            let off = (bits(c, 3, 2) << 6) | (bits(c, 12, 12) << 5) | (bits(c, 6, 4) << 2);
            Some(enc_i(off as i32, 2, 2, rd_full, 0x03))
        }
        (2, 4) => match (bits(c, 12, 12), rd_full, rs2_full) {
            (0, 0, 0) => None,
            (0, rs1, 0) => Some(enc_i(0, rs1, 0, 0, 0x67)), // c.jr
            (0, rd, rs2) => Some(enc_r(0, rs2, 0, 0, rd, 0x33)), // c.mv
            (1, 0, 0) => Some(0x0010_0073),                 // c.ebreak
            (1, rs1, 0) => Some(enc_i(0, rs1, 0, 1, 0x67)), // c.jalr
            (1, rd, rs2) => Some(enc_r(0, rs2, rd, 0, rd, 0x33)), // c.add
            _ => None,
        },
        (2, 5) | (2, 7) => {
            // c.fsdsp / c.sdsp
            let off = (bits(c, 9, 7) << 6) | (bits(c, 12, 10) << 3);
            let opc = if funct3 == 5 { 0x27 } else { 0x23 };
            Some(enc_s(off as i32, rs2_full, 2, 3, opc))
        }
        (2, 6) => {
            // c.swsp
            let off = (bits(c, 8, 7) << 6) | (bits(c, 12, 9) << 2);
            Some(enc_s(off as i32, rs2_full, 2, 2, 0x23))
        }
        _ => None,
    }
}

/// Decodes the instruction whose first halfword is `lo` (and, for 32-bit
/// instructions, second halfword `hi`).
pub fn decode_parts(lo: u16, hi: u16) -> Insn {
    if lo & 3 != 3 {
        match expand_compressed(lo) {
            Some(raw) => Insn {
                len: 2,
                ..decode(raw)
            },
            None => Insn::illegal(lo as u32, 2),
        }
    } else if lo & 0x1c == 0x1c {
        // 48-bit and longer encodings.
        Insn::illegal(lo as u32, 2)
    } else {
        decode(lo as u32 | (hi as u32) << 16)
    }
}

/// Whether an instruction starting with halfword `lo` is 16 bits long.
pub fn is_compressed(lo: u16) -> bool {
    lo & 3 != 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_basic_forms() {
        // addi a0, a0, -1
        let i = decode(0xfff5_0513);
        assert_eq!((i.op, i.rd, i.rs1, i.imm), (Op::Addi, 10, 10, -1));
        // sd ra, 8(sp)
        let s = decode(0x0011_3423);
        assert_eq!((s.op, s.rs1, s.rs2, s.imm), (Op::Sd, 2, 1, 8));
        // beq a0, a1, -4
        let b = decode(0xfeb5_0ee3);
        assert_eq!((b.op, b.imm), (Op::Beq, -4));
        // jal ra, 2048
        let j = decode(0x0010_00ef);
        assert_eq!((j.op, j.rd, j.imm), (Op::Jal, 1, 2048));
        // addi x0, x0, 0 writes the sink
        assert_eq!(decode(0x0000_0013).rd, SINK);
        // csrrw a0, sstatus, a1
        let c = decode(0x1005_9573);
        assert_eq!((c.op, c.rd, c.rs1, c.imm), (Op::Csrrw, 10, 11, 0x100));
        assert_eq!(decode(0x1020_0073).op, Op::Sret);
        assert_eq!(decode(0x1050_0073).op, Op::Wfi);
        assert_eq!(decode(0x3020_0073).op, Op::Illegal, "mret is M-mode");
        assert_eq!(decode(0).op, Op::Illegal);
    }

    #[test]
    fn compressed_expansion_matches_the_assembler() {
        // Pairs taken from `riscv64-linux-gnu-objdump -d -M no-aliases`.
        let cases: &[(u16, u32)] = &[
            (0x1141, 0xff01_0113), // c.addi sp,-16  -> addi sp,sp,-16
            (0xe406, 0x0011_3423), // c.sdsp ra,8(sp)
            (0x60a2, 0x0081_3083), // c.ldsp ra,8(sp)
            (0x8082, 0x0000_8067), // c.jr ra
            (0x4501, 0x0000_0513), // c.li a0,0
            (0x852e, 0x00b0_0533), // c.mv a0,a1
            (0x952e, 0x00b5_0533), // c.add a0,a1
            (0x0505, 0x0015_0513), // c.addi a0,1
            (0x6585, 0x0000_15b7), // c.lui a1,0x1
            (0x8d0d, 0x40b5_0533), // c.sub a0,a1
            (0x9002, 0x0010_0073), // c.ebreak
            (0xc119, 0x0005_0363), // c.beqz a0,+6
            (0xa011, 0x0040_006f), // c.j +4
            (0x2505, 0x0015_051b), // c.addiw a0,1
            (0x0532, 0x00c5_1513), // c.slli a0,12
            (0x8505, 0x4015_5513), // c.srai a0,1
            (0x6108, 0x0005_3503), // c.ld a0,0(a0)
            (0xe10c, 0x00b5_3023), // c.sd a1,0(a0)
            (0x0028, 0x0000_0513 | (8 << 20) | (2 << 15)), // c.addi4spn a0,sp,8
        ];
        for &(c, want) in cases {
            assert_eq!(expand_compressed(c), Some(want), "{c:#06x}");
        }
        assert_eq!(expand_compressed(0), None);
    }
}
