//! Instruction-level tests of the riscv64 software CPU: small bare-metal
//! programs, assembled with the Debian cross binutils, run on one hart in
//! S-mode; every expected value comes from a Rust model of the ISA written
//! here, independently of the interpreter.

#[path = "common/riscv.rs"]
mod riscv;

use std::sync::OnceLock;

use ember::accel::tcg::riscv64::Hart;
use ember::vmm::exit::ExitReason;
use proptest::prelude::*;
use riscv::*;

// ------------------------------------------------------------ helpers

fn sext32(v: u64) -> u64 {
    v as u32 as i32 as i64 as u64
}

/// Exception causes.
const ILLEGAL: u64 = 2;
const BREAKPOINT: u64 = 3;
const LOAD_MISALIGNED: u64 = 4;
const STORE_MISALIGNED: u64 = 6;
const LOAD_ACCESS: u64 = 5;
const STORE_ACCESS: u64 = 7;
const ECALL_U: u64 = 8;
const FETCH_ACCESS: u64 = 1;
const FETCH_PAGE: u64 = 12;
const LOAD_PAGE: u64 = 13;
const STORE_PAGE: u64 = 15;

// ------------------------------------------------- integer arithmetic

type IntModel = fn(u64, u64) -> u64;

/// Every integer operation the table program runs on `a0 = a, a1 = b`,
/// leaving its result in t0, with the ISA's definition.
const INT_OPS: &[(&str, IntModel)] = &[
    ("add t0, a0, a1", |a, b| a.wrapping_add(b)),
    ("sub t0, a0, a1", |a, b| a.wrapping_sub(b)),
    ("sll t0, a0, a1", |a, b| a << (b & 63)),
    ("srl t0, a0, a1", |a, b| a >> (b & 63)),
    ("sra t0, a0, a1", |a, b| ((a as i64) >> (b & 63)) as u64),
    ("slt t0, a0, a1", |a, b| ((a as i64) < (b as i64)) as u64),
    ("sltu t0, a0, a1", |a, b| (a < b) as u64),
    ("xor t0, a0, a1", |a, b| a ^ b),
    ("or t0, a0, a1", |a, b| a | b),
    ("and t0, a0, a1", |a, b| a & b),
    ("addw t0, a0, a1", |a, b| sext32(a.wrapping_add(b))),
    ("subw t0, a0, a1", |a, b| sext32(a.wrapping_sub(b))),
    ("sllw t0, a0, a1", |a, b| {
        sext32(((a as u32) << (b & 31)) as u64)
    }),
    ("srlw t0, a0, a1", |a, b| {
        sext32(((a as u32) >> (b & 31)) as u64)
    }),
    ("sraw t0, a0, a1", |a, b| {
        ((a as i32) >> (b & 31)) as i64 as u64
    }),
    ("mul t0, a0, a1", |a, b| a.wrapping_mul(b)),
    ("mulh t0, a0, a1", |a, b| {
        ((a as i64 as i128 * b as i64 as i128) >> 64) as u64
    }),
    ("mulhsu t0, a0, a1", |a, b| {
        ((a as i64 as i128 * b as i128) >> 64) as u64
    }),
    ("mulhu t0, a0, a1", |a, b| {
        ((a as u128 * b as u128) >> 64) as u64
    }),
    ("div t0, a0, a1", |a, b| {
        let (x, y) = (a as i64, b as i64);
        if y == 0 {
            u64::MAX
        } else if x == i64::MIN && y == -1 {
            x as u64
        } else {
            (x / y) as u64
        }
    }),
    ("divu t0, a0, a1", |a, b| {
        a.checked_div(b).unwrap_or(u64::MAX)
    }),
    ("rem t0, a0, a1", |a, b| {
        let (x, y) = (a as i64, b as i64);
        if y == 0 {
            a
        } else if x == i64::MIN && y == -1 {
            0
        } else {
            (x % y) as u64
        }
    }),
    ("remu t0, a0, a1", |a, b| if b == 0 { a } else { a % b }),
    ("mulw t0, a0, a1", |a, b| {
        (a as u32).wrapping_mul(b as u32) as i32 as i64 as u64
    }),
    ("divw t0, a0, a1", |a, b| {
        let (x, y) = (a as i32, b as i32);
        if y == 0 {
            u64::MAX
        } else if x == i32::MIN && y == -1 {
            x as i64 as u64
        } else {
            (x / y) as i64 as u64
        }
    }),
    ("divuw t0, a0, a1", |a, b| {
        let (x, y) = (a as u32, b as u32);
        x.checked_div(y)
            .map_or(u64::MAX, |q| q as i32 as i64 as u64)
    }),
    ("remw t0, a0, a1", |a, b| {
        let (x, y) = (a as i32, b as i32);
        if y == 0 {
            x as i64 as u64
        } else if x == i32::MIN && y == -1 {
            0
        } else {
            (x % y) as i64 as u64
        }
    }),
    ("remuw t0, a0, a1", |a, b| {
        let (x, y) = (a as u32, b as u32);
        if y == 0 {
            x as i32 as i64 as u64
        } else {
            (x % y) as i32 as i64 as u64
        }
    }),
    // Immediate forms (b unused): the 12-bit immediate is sign-extended.
    ("addi t0, a0, -2048", |a, _| a.wrapping_sub(2048)),
    ("addi t0, a0, 2047", |a, _| a.wrapping_add(2047)),
    ("slti t0, a0, -1", |a, _| ((a as i64) < -1) as u64),
    ("sltiu t0, a0, -1", |a, _| (a < u64::MAX) as u64),
    ("sltiu t0, a0, 1", |a, _| (a == 0) as u64),
    ("xori t0, a0, -1", |a, _| !a),
    ("ori t0, a0, 0x555", |a, _| a | 0x555),
    ("andi t0, a0, -256", |a, _| a & !0xff),
    ("slli t0, a0, 63", |a, _| a << 63),
    ("srli t0, a0, 63", |a, _| a >> 63),
    ("srai t0, a0, 33", |a, _| ((a as i64) >> 33) as u64),
    ("addiw t0, a0, -1", |a, _| sext32(a.wrapping_sub(1))),
    ("addiw t0, a0, 0", |a, _| sext32(a)),
    ("slliw t0, a0, 31", |a, _| sext32(((a as u32) << 31) as u64)),
    ("srliw t0, a0, 0", |a, _| sext32(a as u32 as u64)),
    ("srliw t0, a0, 31", |a, _| ((a as u32) >> 31) as u64),
    ("sraiw t0, a0, 31", |a, _| ((a as i32) >> 31) as i64 as u64),
    ("sraiw t0, a0, 4", |a, _| ((a as i32) >> 4) as i64 as u64),
    // Pseudo-instructions built on x0.
    ("sub t0, zero, a1", |_, b| b.wrapping_neg()),
    ("sltu t0, zero, a1", |_, b| (b != 0) as u64),
    ("sltiu t0, a1, 1", |_, b| (b == 0) as u64),
    // x0 ignores writes.
    ("add zero, a0, a1\n    mv t0, zero", |_, _| 0),
    (
        "lui t0, 0\n    mulhu zero, a0, a1\n    or t0, t0, zero",
        |_, _| 0,
    ),
];

/// The table program: `DATA` holds a count and that many (a, b) pairs; the
/// results of every [`INT_OPS`] entry go to `OUT`, one row per pair.
fn int_program() -> &'static Program {
    static P: OnceLock<Program> = OnceLock::new();
    P.get_or_init(|| {
        let mut body = String::from(
            "    li s0, DATA\n    ld s1, 0(s0)\n    addi s0, s0, 8\n    li s2, OUT\n\
             1:  beqz s1, 2f\n    ld a0, 0(s0)\n    ld a1, 8(s0)\n",
        );
        for (i, (asm, _)) in INT_OPS.iter().enumerate() {
            body += &format!("    {asm}\n    sd t0, {}(s2)\n", 8 * i);
        }
        body += &format!(
            "    addi s0, s0, 16\n    addi s2, s2, {}\n    addi s1, s1, -1\n    j 1b\n2:\n",
            8 * INT_OPS.len()
        );
        assemble(&program(&body))
    })
}

/// Runs every op on every pair and compares with the models.
fn check_int_ops(pairs: &[(u64, u64)]) -> Result<(), TestCaseError> {
    let m = Machine::load(int_program());
    m.write_u64(DATA, pairs.len() as u64);
    for (i, &(a, b)) in pairs.iter().enumerate() {
        m.write_u64(DATA + 8 + 16 * i as u64, a);
        m.write_u64(DATA + 16 + 16 * i as u64, b);
    }
    let mut m = m;
    m.run_to_poweroff();
    prop_assert_eq!(m.traps(), vec![]);
    let n = INT_OPS.len();
    let got = m.read_u64s(OUT, n * pairs.len());
    for (i, &(a, b)) in pairs.iter().enumerate() {
        for (j, (asm, model)) in INT_OPS.iter().enumerate() {
            prop_assert_eq!(
                got[i * n + j],
                model(a, b),
                "{} with a0 = {:#x}, a1 = {:#x}",
                asm,
                a,
                b
            );
        }
    }
    Ok(())
}

/// Operands where the ISA has corner cases: signs, 32-bit boundaries,
/// shift amounts past the width, division overflow.
const EDGES: &[u64] = &[
    0,
    1,
    2,
    3,
    31,
    32,
    63,
    64,
    65,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0xffff_ffff_8000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0x8000_0000_0000_0001,
    0xffff_ffff_ffff_fffe,
    u64::MAX,
    0xdead_beef_cafe_babe,
];

#[test]
fn integer_ops_on_corner_operands() {
    let pairs: Vec<(u64, u64)> = EDGES
        .iter()
        .flat_map(|&a| EDGES.iter().map(move |&b| (a, b)))
        .collect();
    check_int_ops(&pairs).unwrap();
}

/// Spot checks of the corner cases the models encode, stated as numbers.
#[test]
fn division_corner_cases_as_numbers() {
    let m = Machine::load(int_program());
    let cases: &[(u64, u64)] = &[
        (7, 0),                                         // by zero
        (0x8000_0000_0000_0000, u64::MAX),              // INT64_MIN / -1
        (0xffff_ffff_8000_0000, 0xffff_ffff_ffff_ffff), // INT32_MIN / -1
        ((-7i64) as u64, 2),                            // truncation
    ];
    m.write_u64(DATA, cases.len() as u64);
    for (i, &(a, b)) in cases.iter().enumerate() {
        m.write_u64(DATA + 8 + 16 * i as u64, a);
        m.write_u64(DATA + 16 + 16 * i as u64, b);
    }
    let mut m = m;
    m.run_to_poweroff();
    let n = INT_OPS.len() as u64;
    let idx = |name: &str| {
        INT_OPS
            .iter()
            .position(|(a, _)| a.starts_with(name))
            .unwrap() as u64
    };
    let get = |case: u64, op: &str| m.out(case * n + idx(&format!("{op} ")));
    // x / 0 = all ones, x % 0 = x, in both widths.
    assert_eq!(get(0, "div"), u64::MAX);
    assert_eq!(get(0, "divu"), u64::MAX);
    assert_eq!(get(0, "rem"), 7);
    assert_eq!(get(0, "remu"), 7);
    assert_eq!(get(0, "divw"), u64::MAX);
    assert_eq!(get(0, "divuw"), u64::MAX);
    assert_eq!(get(0, "remw"), 7);
    assert_eq!(get(0, "remuw"), 7);
    // Overflow: the quotient is the dividend, the remainder 0.
    assert_eq!(get(1, "div"), 0x8000_0000_0000_0000);
    assert_eq!(get(1, "rem"), 0);
    assert_eq!(get(2, "divw"), 0xffff_ffff_8000_0000);
    assert_eq!(get(2, "remw"), 0);
    // -7 / 2 = -3 rem -1 (rounds toward zero).
    assert_eq!(get(3, "div"), (-3i64) as u64);
    assert_eq!(get(3, "rem"), u64::MAX);
    assert_eq!(get(3, "mulh"), u64::MAX);
    assert_eq!(get(3, "mulhu"), 1);
    assert_eq!(get(3, "mulhsu"), u64::MAX);
}

fn operand() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        proptest::sample::select(EDGES),
        0u64..=70,
        any::<i32>().prop_map(|v| v as i64 as u64),
        any::<u32>().prop_map(u64::from),
        any::<i8>().prop_map(|v| v as i64 as u64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn integer_ops_match_the_model(pairs in proptest::collection::vec((operand(), operand()), 1..48)) {
        check_int_ops(&pairs)?;
    }
}

#[test]
fn lui_auipc_and_x0() {
    // The first instructions of `main` sit at known addresses.
    let mut m = Machine::with_program(
        "
f_auipc0:
    auipc s0, 0
f_auipc_neg:
    auipc s1, 0xfffff
f_auipc_wrap:
    auipc s2, 0x80000
    lui s3, 0x80000
    lui s4, 0x7ffff
    lui s5, 0xfffff
    addi zero, zero, 5
    mv s6, zero
    li s7, 0x123456789abcdef0
    li s8, -1
    ",
    );
    m.run_to_poweroff();
    let x = &m.hart.x;
    let pc0 = m.sym("f_auipc0");
    assert_eq!(x[8], pc0);
    assert_eq!(x[9], m.sym("f_auipc_neg").wrapping_sub(0x1000));
    // auipc with 0x80000 adds sign-extended 0xffff_ffff_8000_0000.
    assert_eq!(
        x[18],
        m.sym("f_auipc_wrap").wrapping_add(0xffff_ffff_8000_0000)
    );
    assert_eq!(x[19], 0xffff_ffff_8000_0000);
    assert_eq!(x[20], 0x7fff_f000);
    assert_eq!(x[21], 0xffff_ffff_ffff_f000);
    assert_eq!(x[0], 0);
    assert_eq!(x[22], 0);
    assert_eq!(x[23], 0x1234_5678_9abc_def0);
    assert_eq!(x[24], u64::MAX);
}

// ------------------------------------------------------ loads / stores

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(0x9d).wrapping_add(seed))
        .collect()
}

/// Little-endian value of `bytes`, sign-extended from its width if `signed`.
fn le(bytes: &[u8], signed: bool) -> u64 {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= (*b as u64) << (8 * i);
    }
    let bits = 8 * bytes.len() as u32;
    if signed && bits < 64 {
        let shift = 64 - bits;
        (((v << shift) as i64) >> shift) as u64
    } else {
        v
    }
}

const LOADS: &[(&str, usize, bool)] = &[
    ("lb", 1, true),
    ("lbu", 1, false),
    ("lh", 2, true),
    ("lhu", 2, false),
    ("lw", 4, true),
    ("lwu", 4, false),
    ("ld", 8, true),
];
const STORES: &[(&str, usize)] = &[("sb", 1), ("sh", 2), ("sw", 4), ("sd", 8)];

#[test]
fn loads_and_stores_of_every_width_aligned_and_not() {
    const STORE_VALUE: u64 = 0x0123_4567_89ab_cdef;
    // Loads read DATA + off for off in 0..8; stores go to 16-byte slots at
    // DATA + 0x200; the page-crossing cases straddle DATA + 0x1000 (loads)
    // and DATA + 0x2000.. (stores).
    let mut body = format!(
        "    li s0, DATA\n    li s2, OUT\n    li s1, {STORE_VALUE:#x}\n    li s3, DATA + 0x200\n"
    );
    let mut k = 0;
    for (op, _, _) in LOADS {
        for off in 0..8 {
            body += &format!("    {op} t0, {off}(s0)\n    sd t0, {}(s2)\n", 8 * k);
            k += 1;
        }
    }
    let mut slot = 0;
    for (op, _) in STORES {
        for off in 0..8 {
            body += &format!("    {op} s1, {}(s3)\n", 16 * slot + off);
            slot += 1;
        }
    }
    // Crossing a page boundary.
    body += "    li s4, DATA + 0x1000\n";
    let crossing_loads: &[(&str, i64)] = &[
        ("ld", -3),
        ("lw", -2),
        ("lwu", -1),
        ("lh", -1),
        ("lhu", -1),
        ("ld", -7),
    ];
    for (op, off) in crossing_loads {
        body += &format!("    {op} t0, {off}(s4)\n    sd t0, {}(s2)\n", 8 * k);
        k += 1;
    }
    let crossing_stores: &[(&str, u64, i64)] = &[
        ("sd", 0x2000, -5),
        ("sw", 0x3000, -3),
        ("sh", 0x4000, -1),
        ("sd", 0x5000, -1),
    ];
    for (op, page, off) in crossing_stores {
        body += &format!("    li s5, DATA + {page:#x}\n    {op} s1, {off}(s5)\n");
    }
    let mut m = Machine::with_program(&body);
    let data = pattern(16, 0x83);
    m.write(DATA, &data);
    let edge = pattern(16, 0x47);
    m.write(DATA + 0x1000 - 8, &edge);
    m.run_to_poweroff();
    m.assert_traps(&[]);

    let mut k = 0;
    for (op, size, signed) in LOADS {
        for off in 0..8 {
            assert_eq!(
                m.out(k),
                le(&data[off..off + size], *signed),
                "{op} at offset {off}"
            );
            k += 1;
        }
    }
    for (op, off) in crossing_loads {
        let size = LOADS.iter().find(|l| l.0 == *op).unwrap().1;
        let signed = LOADS.iter().find(|l| l.0 == *op).unwrap().2;
        let start = (8 + off) as usize;
        assert_eq!(
            m.out(k),
            le(&edge[start..start + size], signed),
            "{op} {off}(page end)"
        );
        k += 1;
    }
    let value = STORE_VALUE.to_le_bytes();
    let mut slot = 0u64;
    for (op, size) in STORES {
        for off in 0..8 {
            let mut want = [0u8; 16];
            want[off..off + size].copy_from_slice(&value[..*size]);
            assert_eq!(
                m.read(DATA + 0x200 + 16 * slot, 16),
                want,
                "{op} at offset {off}"
            );
            slot += 1;
        }
    }
    for (op, page, off) in crossing_stores {
        let size = STORES.iter().find(|s| s.0 == *op).unwrap().1;
        let mut want = [0u8; 16];
        let start = (8 + off) as usize;
        want[start..start + size].copy_from_slice(&value[..size]);
        assert_eq!(
            m.read(DATA + page - 8, 16),
            want,
            "{op} {off}(page {page:#x})"
        );
    }
}

// ----------------------------------------------------------- atomics

type AmoModel = fn(u64, u64) -> u64;

/// AMO mnemonic stems and the new memory value as a function of the old
/// value and rs2, at the given width (values already truncated for .w).
const AMOS: &[(&str, AmoModel, AmoModel)] = &[
    ("amoswap", |_, v| v, |_, v| v),
    (
        "amoadd",
        |m, v| m.wrapping_add(v),
        |m, v| (m as u32).wrapping_add(v as u32) as u64,
    ),
    ("amoxor", |m, v| m ^ v, |m, v| (m ^ v) & 0xffff_ffff),
    ("amoand", |m, v| m & v, |m, v| m & v & 0xffff_ffff),
    ("amoor", |m, v| m | v, |m, v| (m | v) & 0xffff_ffff),
    (
        "amomin",
        |m, v| (m as i64).min(v as i64) as u64,
        |m, v| (m as i32).min(v as i32) as u32 as u64,
    ),
    (
        "amomax",
        |m, v| (m as i64).max(v as i64) as u64,
        |m, v| (m as i32).max(v as i32) as u32 as u64,
    ),
    (
        "amominu",
        |m, v| m.min(v),
        |m, v| (m as u32).min(v as u32) as u64,
    ),
    (
        "amomaxu",
        |m, v| m.max(v),
        |m, v| (m as u32).max(v as u32) as u64,
    ),
];

/// For each (m, v) pair in DATA: store m at a scratch doubleword, run each
/// AMO (.d, then .w on the low word) with rs2 = v, store rd and the
/// doubleword afterwards.
fn amo_program() -> &'static Program {
    static P: OnceLock<Program> = OnceLock::new();
    P.get_or_init(|| {
        let mut body = String::from(
            "    li s0, DATA\n    ld s1, 0(s0)\n    addi s0, s0, 8\n    li s2, OUT\n    li s3, DATA - 64\n\
             1:  beqz s1, 2f\n    ld a0, 0(s0)\n    ld a1, 8(s0)\n",
        );
        let mut k = 0;
        for width in ["d", "w"] {
            for (stem, _, _) in AMOS {
                body += &format!(
                    "    sd a0, 0(s3)\n    {stem}.{width} t0, a1, (s3)\n    ld t1, 0(s3)\n    sd t0, {}(s2)\n    sd t1, {}(s2)\n",
                    16 * k,
                    16 * k + 8
                );
                k += 1;
            }
        }
        body += &format!(
            "    addi s0, s0, 16\n    addi s2, s2, {}\n    addi s1, s1, -1\n    j 1b\n2:\n",
            16 * k
        );
        assemble(&program(&body))
    })
}

fn check_amos(pairs: &[(u64, u64)]) -> Result<(), TestCaseError> {
    let mut m = Machine::load(amo_program());
    m.write_u64(DATA, pairs.len() as u64);
    for (i, &(a, b)) in pairs.iter().enumerate() {
        m.write_u64(DATA + 8 + 16 * i as u64, a);
        m.write_u64(DATA + 16 + 16 * i as u64, b);
    }
    m.run_to_poweroff();
    prop_assert_eq!(m.traps(), vec![]);
    let per_pair = 2 * AMOS.len();
    let got = m.read_u64s(OUT, 2 * per_pair * pairs.len());
    for (i, &(mem, v)) in pairs.iter().enumerate() {
        let row = &got[2 * per_pair * i..];
        for (j, (stem, d, _)) in AMOS.iter().enumerate() {
            prop_assert_eq!(
                row[2 * j],
                mem,
                "{}.d rd, m = {:#x}, v = {:#x}",
                stem,
                mem,
                v
            );
            prop_assert_eq!(
                row[2 * j + 1],
                d(mem, v),
                "{}.d memory, m = {:#x}, v = {:#x}",
                stem,
                mem,
                v
            );
        }
        for (j, (stem, _, w)) in AMOS.iter().enumerate() {
            let at = 2 * (AMOS.len() + j);
            // rd is the old low word, sign-extended; the high word of the
            // doubleword is untouched.
            prop_assert_eq!(
                row[at],
                sext32(mem),
                "{}.w rd, m = {:#x}, v = {:#x}",
                stem,
                mem,
                v
            );
            prop_assert_eq!(
                row[at + 1],
                (mem & 0xffff_ffff_0000_0000) | w(mem & 0xffff_ffff, v & 0xffff_ffff),
                "{}.w memory, m = {:#x}, v = {:#x}",
                stem,
                mem,
                v
            );
        }
    }
    Ok(())
}

#[test]
fn every_amo_on_corner_operands() {
    let pairs: Vec<(u64, u64)> = EDGES
        .iter()
        .flat_map(|&a| EDGES.iter().step_by(3).map(move |&b| (a, b)))
        .collect();
    check_amos(&pairs).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn amos_match_the_model(pairs in proptest::collection::vec((operand(), operand()), 1..24)) {
        check_amos(&pairs)?;
    }
}

#[test]
fn amo_signedness_as_numbers() {
    let mut m = Machine::load(amo_program());
    // m = 0x00000000_ffffffff (-1 as a word, 2^32-1 as a doubleword), v = 1.
    m.write_u64(DATA, 1);
    m.write_u64(DATA + 8, 0xffff_ffff);
    m.write_u64(DATA + 16, 1);
    m.run_to_poweroff();
    let n = AMOS.len() as u64;
    let i = |stem: &str| AMOS.iter().position(|a| a.0 == stem).unwrap() as u64;
    // .d: 0xffffffff is positive: min keeps v = 1, max keeps m.
    assert_eq!(
        (m.out(2 * i("amomin")), m.out(2 * i("amomin") + 1)),
        (0xffff_ffff, 1)
    );
    assert_eq!(m.out(2 * i("amomax") + 1), 0xffff_ffff);
    // .w: the word is -1: amomin.w keeps it, amomax.w stores 1; rd is -1
    // sign-extended.
    assert_eq!(m.out(2 * (n + i("amomin"))), u64::MAX);
    assert_eq!(m.out(2 * (n + i("amomin")) + 1), 0xffff_ffff);
    assert_eq!(m.out(2 * (n + i("amomax")) + 1), 1);
    // Unsigned forms: 0xffffffff is the larger.
    assert_eq!(m.out(2 * (n + i("amominu")) + 1), 1);
    assert_eq!(m.out(2 * (n + i("amomaxu")) + 1), 0xffff_ffff);
}

#[test]
fn lr_sc_and_misaligned_atomics() {
    let mut m = Machine::with_program(
        "
    li s0, DATA
    li t0, 0x1111
    sd t0, 0(s0)
    lr.d s1, (s0)
    li t1, 0x2222
    sc.d s2, t1, (s0)
    li t1, 0x3333
    sc.d s3, t1, (s0)          # no reservation any more: fails
    ld s4, 0(s0)
    li t0, 0x80000001
    sw t0, 8(s0)
    li t0, 0x77777777
    sw t0, 12(s0)
    addi a2, s0, 8
    lr.w.aq s5, (a2)            # sign-extended
    li t1, -1
    sc.w.rl s6, t1, (a2)
    ld s7, 8(s0)
    lr.d t0, (s0)
    addi a3, s0, 16
    sc.d s8, t1, (a3)           # not the reserved address: fails
    ld s9, 16(s0)
    addi a4, s0, 12
    li t1, 1
    amoadd.w.aqrl s10, t1, (a4) # the high word of the doubleword at 8
    ld s11, 8(s0)
    # Misaligned atomics fault (nothing is written).
    addi a4, s0, 2
    addi a5, s0, 4
f_amo_w:
    amoadd.w t0, t1, (a4)
f_amo_d:
    amoswap.d t0, t1, (a5)
f_lr:
    lr.w t0, (a4)
f_sc:
    sc.d t0, t1, (a5)
    ",
    );
    m.run_to_poweroff();
    let x = &m.hart.x;
    assert_eq!(x[9], 0x1111, "lr.d");
    assert_eq!(x[18], 0, "sc.d after lr.d succeeds");
    assert_eq!(x[19], 1, "sc.d without a reservation fails");
    assert_eq!(x[20], 0x2222, "memory holds the successful sc.d only");
    assert_eq!(x[21], 0xffff_ffff_8000_0001, "lr.w sign-extends");
    assert_eq!(x[22], 0, "sc.w succeeds");
    assert_eq!(x[23], 0x7777_7777_ffff_ffff, "sc.w writes one word");
    assert_eq!(x[24], 1, "sc.d to another address fails");
    assert_eq!(x[25], 0, "and writes nothing");
    assert_eq!(x[26], 0x7777_7777, "amoadd.w returns the old word");
    assert_eq!(x[27], 0x7777_7778_ffff_ffff);
    let data = DATA;
    m.assert_traps(&[
        Trap::new(STORE_MISALIGNED, data + 2, m.sym("f_amo_w")),
        Trap::new(STORE_MISALIGNED, data + 4, m.sym("f_amo_d")),
        Trap::new(LOAD_MISALIGNED, data + 2, m.sym("f_lr")),
        Trap::new(STORE_MISALIGNED, data + 4, m.sym("f_sc")),
    ]);
    assert_eq!(m.read_u64(DATA), 0x2222);
}

// ------------------------------------------------------------- traps

/// One expected trap. Illegal-instruction traps may report either 0 or the
/// instruction bits in `stval` (both are allowed by the privileged spec),
/// so [`Want::Illegal`] accepts exactly those two values.
#[derive(Clone, Copy, Debug)]
enum Want {
    Trap { cause: u64, tval: u64, epc: u64 },
    Illegal { epc: u64, bits: u64 },
}

fn trap(cause: u64, tval: u64, epc: u64) -> Want {
    Want::Trap { cause, tval, epc }
}

/// An illegal-instruction trap at `epc` in identity-mapped memory.
fn illegal(m: &Machine, epc: u64) -> Want {
    let lo = m.read(epc, 2);
    let bits = if lo[0] & 3 == 3 {
        m.read_u32(epc) as u64
    } else {
        u16::from_le_bytes([lo[0], lo[1]]) as u64
    };
    Want::Illegal { epc, bits }
}

fn check_traps(m: &Machine, want: &[Want]) {
    check_trap_list(&m.traps(), want);
}

fn check_trap_list(got: &[Trap], want: &[Want]) {
    assert_eq!(got.len(), want.len(), "trap count; traps = {got:#x?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match *w {
            Want::Trap { cause, tval, epc } => assert_eq!(
                (g.cause, g.tval, g.epc),
                (cause, tval, epc),
                "trap {i} (cause, tval, epc): {g:#x?}"
            ),
            Want::Illegal { epc, bits } => {
                assert_eq!((g.cause, g.epc), (ILLEGAL, epc), "trap {i}: {g:#x?}");
                assert!(
                    g.tval == 0 || g.tval == bits,
                    "trap {i}: stval {:#x} is neither 0 nor the instruction {bits:#x}",
                    g.tval
                );
            }
        }
    }
}

const SSTATUS_SIE: u64 = 1 << 1;
const SSTATUS_SPIE: u64 = 1 << 5;
const SSTATUS_SPP: u64 = 1 << 8;
const SSTATUS_FS: u64 = 3 << 13;
const SSTATUS_UXL_64: u64 = 2 << 32;
const SSTATUS_SD: u64 = 1 << 63;

// ------------------------------------------------------- compressed

#[test]
fn compressed_instructions() {
    let mut m = Machine::with_program(
        "
    .option rvc
    li t0, 0x2000              # FS = Initial, for the FP forms
    csrs sstatus, t0
    # Arithmetic on x8..x15 and immediates.
    c.li s0, 21
    c.addi s0, 10
    c.slli s0, 2               # 124
    c.li s1, -1
    c.srli s1, 60              # 15
    c.li a0, -16
    c.srai a0, 2               # -4
    c.li a1, 27
    c.andi a1, -6              # 26
    c.mv a2, s0
    c.add a2, s1               # 139
    c.lui a3, 0x1f             # 0x1f000
    c.lui a4, 0xfffe1          # -0x1f000
    c.mv a5, a3
    c.sub a5, a4               # 0x3e000
    c.sdsp s0, 0(sp)
    c.sdsp s1, 8(sp)
    c.sdsp a0, 16(sp)
    c.sdsp a1, 24(sp)
    c.sdsp a2, 32(sp)
    c.sdsp a3, 40(sp)
    c.sdsp a4, 48(sp)
    c.sdsp a5, 56(sp)
    # Logic and word forms.
    c.li s0, 12
    c.li s1, 10
    c.mv a0, s0
    c.xor a0, s1               # 6
    c.mv a1, s0
    c.or a1, s1                # 14
    c.mv a2, s0
    c.and a2, s1               # 8
    li a3, 0x7fffffff
    c.addiw a3, 1              # 0xffffffff80000000
    li a4, 0x80000000
    c.li a5, 1
    c.subw a4, a5              # 0x7fffffff
    li s0, 0x7fffffff
    c.addw s0, s0              # 0xfffffffffffffffe
    c.sdsp a0, 64(sp)
    c.sdsp a1, 72(sp)
    c.sdsp a2, 80(sp)
    c.sdsp a3, 88(sp)
    c.sdsp a4, 96(sp)
    c.sdsp s0, 104(sp)
    # Stack-pointer forms, loads and stores.
    mv t5, sp
    c.addi16sp sp, -64
    c.addi4spn s0, sp, 16
    sub s1, t5, sp             # 64
    c.li a0, -7
    c.swsp a0, 4(sp)
    c.lwsp a1, 4(sp)           # -7
    c.sw a0, 0(s0)
    c.lw a2, 0(s0)             # -7
    li a3, 0x0123456789abcdef
    c.sd a3, 8(s0)
    c.ld a4, 8(s0)
    c.sdsp a3, 48(sp)
    c.ldsp a5, 48(sp)
    li t0, 0x4008000000000000  # 3.0
    fmv.d.x fa0, t0
    c.fsdsp fa0, 56(sp)
    c.fldsp fa1, 56(sp)
    c.fsd fa1, 24(s0)
    c.fld fa2, 24(s0)
    fmv.x.d t1, fa2
    c.addi16sp sp, 64
    sub s0, s0, t5             # -48: addi4spn result relative to the old sp
    c.sdsp s0, 112(sp)
    c.sdsp s1, 120(sp)
    c.sdsp a1, 128(sp)
    c.sdsp a2, 136(sp)
    c.sdsp a4, 144(sp)
    c.sdsp a5, 152(sp)
    sd t1, 160(sp)
    # Control flow.
    c.li s0, 0
    c.li s1, 0
    c.beqz s0, 1f              # taken
    c.li s1, 1
1:  c.bnez s0, 2f              # not taken
    c.addi s1, 2
2:  c.j 3f
    c.li s1, 9
3:  c.bnez s1, 4f              # taken
    c.li s1, 9
4:  la t0, c_func
    c.jalr t0
c_after_jalr:
    c.nop
    c.sdsp s1, 168(sp)         # 2 + 4 = 6
    on_trap c_after_ebreak
c_ebreak:
    c.ebreak
c_after_ebreak:
    la t0, c_tail
    c.jr t0
    c.li s1, 9
c_tail:
    j shutdown
c_func:
    c.addi s1, 4
    mv t6, ra
    sd t6, 176(sp)
    c.jr ra
    ",
    );
    m.run_to_poweroff();
    let sp = STACK_TOP;
    let r = m.read_u64s(sp, 23);
    let expect: [(u64, &str); 23] = [
        (124, "c.li/c.addi/c.slli"),
        (15, "c.srli"),
        ((-4i64) as u64, "c.srai"),
        (27 & (-6i64) as u64, "c.andi"),
        (139, "c.mv/c.add"),
        (0x1f000, "c.lui"),
        ((-0x1f000i64) as u64, "c.lui negative"),
        (0x1f000u64.wrapping_sub((-0x1f000i64) as u64), "c.sub"),
        (12 ^ 10, "c.xor"),
        (12 | 10, "c.or"),
        (12 & 10, "c.and"),
        (sext32(0x8000_0000), "c.addiw"),
        (0x7fff_ffff, "c.subw"),
        (sext32(0xffff_fffe), "c.addw"),
        ((-48i64) as u64, "c.addi16sp/c.addi4spn"),
        (64, "c.addi16sp"),
        ((-7i64) as u64, "c.swsp/c.lwsp"),
        ((-7i64) as u64, "c.sw/c.lw"),
        (0x0123_4567_89ab_cdef, "c.sd/c.ld"),
        (0x0123_4567_89ab_cdef, "c.sdsp/c.ldsp"),
        (3.0f64.to_bits(), "c.fsdsp/c.fldsp/c.fsd/c.fld"),
        (6, "c.beqz/c.bnez/c.j/c.jalr"),
        (m.sym("c_after_jalr"), "c.jalr link = pc + 2"),
    ];
    for (i, (want, what)) in expect.iter().enumerate() {
        assert_eq!(r[i], *want, "{what}");
    }
    let ebreak = m.sym("c_ebreak");
    check_traps(&m, &[trap(BREAKPOINT, ebreak, ebreak)]);
    // c.ebreak is 2 bytes: the resume label follows it directly.
    assert_eq!(m.sym("c_after_ebreak"), ebreak + 2);
}

// --------------------------------------------------------------- CSRs

#[test]
fn csr_instructions_counters_and_satp() {
    let mut m = Machine::with_program(
        "
    csrr s0, sstatus
    li t0, 0x1234
    csrw sscratch, t0
    li t1, 0xff00
    csrrw s1, sscratch, t1       # 0x1234, then 0xff00
    li t1, 0x00f0
    csrrs s2, sscratch, t1       # 0xff00, then 0xfff0
    li t1, 0x0f00
    csrrc s3, sscratch, t1       # 0xfff0, then 0xf0f0
    csrrwi s4, sscratch, 0x15    # 0xf0f0, then 0x15
    csrrsi s5, sscratch, 0x0a    # 0x15, then 0x1f
    csrrci s6, sscratch, 0x03    # 0x1f, then 0x1c
    csrrs s7, sscratch, zero     # read only
    csrr s8, sscratch
    li s11, OUT
    sd s0, 0(s11)
    sd s1, 8(s11)
    sd s2, 16(s11)
    sd s3, 24(s11)
    sd s4, 32(s11)
    sd s5, 40(s11)
    sd s6, 48(s11)
    sd s7, 56(s11)
    sd s8, 64(s11)
    # satp: an unsupported mode (Sv57) leaves it unchanged.
    li t0, (10 << 60) | 0x80123
    csrw satp, t0
    csrr t0, satp
    sd t0, 72(s11)
    # sepc bit 0 is always zero; sie keeps only SSIE, STIE, SEIE.
    li t0, 0x1235
    csrw sepc, t0
    csrr t0, sepc
    sd t0, 80(s11)
    li t0, -1
    csrw sie, t0
    csrr t0, sie
    sd t0, 88(s11)
    csrw sie, zero
    # time moves on.
    rdtime s0
1:  rdtime s1
    beq s0, s1, 1b
    sltu t0, s0, s1
    sd t0, 96(s11)
    rdinstret s2
    nop
    rdinstret s3
    sltu t0, s2, s3
    sd t0, 104(s11)
    rdcycle s4
    nop
    rdcycle s5
    sltu t0, s4, s5
    sd t0, 112(s11)
    # Reading a read-only CSR is fine (rs1 = x0 or uimm = 0 means no write).
    csrrs t0, time, zero
    csrrsi t0, cycle, 0
    # Writing one is illegal, even with a zero value from a register.
    li t1, 0
f_w_time:
    csrw time, zero
f_w_cycle:
    csrw cycle, zero
f_w_instret:
    csrrwi zero, instret, 1
f_s_time:
    csrrs t0, time, t1
f_unknown:
    csrr t0, 0x5c0
f_mstatus:
    csrr t0, mstatus
f_fcsr_off:
    csrr t0, fcsr
    ",
    );
    m.run_to_poweroff();
    let o = m.read_u64s(OUT, 15);
    assert_eq!(o[0], SSTATUS_UXL_64, "sstatus at reset: UXL = 64, FS off");
    assert_eq!(
        &o[1..9],
        &[0x1234, 0xff00, 0xfff0, 0xf0f0, 0x15, 0x1f, 0x1c, 0x1c]
    );
    assert_eq!(o[8], 0x1c);
    assert_eq!(o[9], 0, "satp unchanged by an Sv57 write");
    assert_eq!(o[10], 0x1234, "sepc[0] is zero");
    assert_eq!(o[11], 0x222, "sie: SSIE, STIE, SEIE");
    assert_eq!(o[12], 1, "time advances");
    assert_eq!(o[13], 1, "instret advances");
    assert_eq!(o[14], 1, "cycle advances");
    let want: Vec<Want> = [
        "f_w_time",
        "f_w_cycle",
        "f_w_instret",
        "f_s_time",
        "f_unknown",
        "f_mstatus",
        "f_fcsr_off",
    ]
    .iter()
    .map(|s| illegal(&m, m.sym(s)))
    .collect();
    check_traps(&m, &want);
}

/// `instret` must count every instruction retired before the reading one,
/// including those earlier in the same translated block.
#[test]
fn instret_counts_exactly() {
    let mut m = Machine::with_program(
        "
    li s11, OUT
    nop
    rdinstret s2
    nop
    nop
    nop
    nop
    nop
    nop
    nop
    nop
    nop
    nop
    rdinstret s3
    addi s4, s4, 1
    addi s4, s4, 1
    rdinstret s5
    sub t0, s3, s2
    sd t0, 0(s11)
    sub t0, s5, s3
    sd t0, 8(s11)
    # A loop that is one block branching back to its own start, with the
    # counter read in that block once the loop ends.
    li s1, 5
    rdinstret s2
1:  addi s1, s1, -1
    bnez s1, 1b
    rdinstret s3
    sub t0, s3, s2
    sd t0, 16(s11)
    # The same, with rdcycle (which counts instructions here too).
    li s1, 7
    rdcycle s2
2:  addi s1, s1, -1
    bnez s1, 2b
    rdcycle s3
    sub t0, s3, s2
    sd t0, 24(s11)
    ",
    );
    m.run_to_poweroff();
    assert_eq!(m.out(0), 11, "ten nops and the first rdinstret");
    assert_eq!(m.out(1), 3, "two addis and the second rdinstret");
    assert_eq!(
        m.out(2),
        1 + 5 * 2,
        "the first rdinstret and five iterations"
    );
    assert_eq!(
        m.out(3),
        1 + 7 * 2,
        "the first rdcycle and seven iterations"
    );
}

#[test]
fn exceptions_and_user_mode() {
    let mut m = Machine::with_program(
        "
f_mret:
    .word 0x30200073              # mret: no M-mode
f_zero:
    .word 0                       # the all-zero instruction
f_ebreak:
    ebreak
    # Into U-mode: SPP = 0, sepc = user code.
    la t0, user_code
    csrw sepc, t0
    li t0, 0x100
    csrc sstatus, t0
    sret
user_code:
    li a0, 42
u_ecall:
    ecall                          # cause 8, then back here
    mv s2, a0
u_csr:
    csrr t2, sstatus
u_sret:
    sret
u_wfi:
    wfi
u_sfence:
    sfence.vma
    rdtime s1                      # scounteren allows it
    on_trap back_in_s
u_ebreak:
    ebreak
back_in_s:
    csrr s3, sstatus               # S-mode again
    csrw scounteren, zero
    la t0, user2
    csrw sepc, t0
    li t0, 0x100
    csrc sstatus, t0
    sret
user2:
    on_trap back2
u_time:
    rdtime t0                      # now illegal in U-mode
back2:
    li t0, OUT
    sd s1, 0(t0)
    sd s2, 8(t0)
    sd s3, 16(t0)
    ",
    );
    m.run_to_poweroff();
    let s = |n: &str| m.sym(n);
    check_traps(
        &m,
        &[
            illegal(&m, s("f_mret")),
            illegal(&m, s("f_zero")),
            trap(BREAKPOINT, s("f_ebreak"), s("f_ebreak")),
            trap(ECALL_U, 0, s("u_ecall")),
            illegal(&m, s("u_csr")),
            illegal(&m, s("u_sret")),
            illegal(&m, s("u_wfi")),
            illegal(&m, s("u_sfence")),
            trap(BREAKPOINT, s("u_ebreak"), s("u_ebreak")),
            illegal(&m, s("u_time")),
        ],
    );
    let traps = m.traps();
    // SPP records where each trap came from.
    let spp: Vec<bool> = traps.iter().map(|t| t.status & SSTATUS_SPP != 0).collect();
    assert_eq!(
        spp,
        [true, true, true, false, false, false, false, false, false, false]
    );
    assert_ne!(m.out(0), 0, "rdtime in U-mode with scounteren.TM");
    assert_eq!(m.out(1), 42, "a0 survives the U-mode ecall");
    // Read in S-mode after the handler's sret from a U-mode trap. The
    // first handler sret set SPIE; the sret into U-mode copied it to SIE;
    // the U-mode trap saved SIE in SPIE and the handler's sret restored it.
    // SPP is clear after every sret.
    assert_eq!(
        m.out(2),
        SSTATUS_UXL_64 | SSTATUS_SPIE | SSTATUS_SIE,
        "sstatus back in S-mode"
    );
}

// --------------------------------------------------------- interrupts

const SBI_TIME: u64 = 0x5449_4d45;

#[test]
fn software_and_timer_interrupts() {
    let mut m = Machine::with_program(&format!(
        "
    li s11, OUT
    li t0, 2
    csrs sie, t0                  # SSIE
    csrs sip, t0                  # pending, but sstatus.SIE is clear
    csrr t1, sip
    sd t1, 0(s11)
f_enable_sie:
    csrsi sstatus, 2              # taken right after this instruction
f_after_ssi:
    csrr t1, sip                  # the handler cleared SSIP and sie
    sd t1, 8(s11)
    # Timer: interrupts globally off, STIE on, wfi until STIP is pending.
    csrci sstatus, 2
    rdtime t0
    addi a0, t0, 500              # 50 us at 10 MHz
    sbi {SBI_TIME:#x}, 0
    sd a0, 16(s11)
    li t0, 0x20
    csrs sie, t0
1:  csrr t1, sip
    andi t1, t1, 0x20
    bnez t1, 2f
    wfi
    j 1b
2:  csrr t1, sip
    sd t1, 24(s11)
f_enable_sti:
    csrsi sstatus, 2              # the pending timer interrupt is taken
f_after_sti:
    csrr t1, sip                  # STIP stays pending until the next set_timer
    sd t1, 32(s11)
    li a0, -1
    sbi {SBI_TIME:#x}, 0
    csrr t1, sip
    sd t1, 40(s11)
    # Vectored mode: interrupt cause 1 goes to base + 4.
    la t0, vec_table
    ori t0, t0, 1
    csrw stvec, t0
    li t0, 2
    csrs sie, t0
f_ssi_vectored:
    csrs sip, t0                  # SIE is set again: taken at once
f_after_vectored:
    sd s9, 48(s11)
    j shutdown
    .balign 4
vec_table:
    j trap_handler
    j vec_ssi
vec_ssi:
    li s9, 0x55
    j trap_handler
    "
    ));
    m.run_to_poweroff();
    let o = m.read_u64s(OUT, 7);
    assert_eq!(o[0], 2, "sip.SSIP pending while masked");
    assert_eq!(o[1], 0, "SSIP cleared by the handler");
    assert_eq!(o[2], 0, "set_timer succeeds");
    assert_eq!(o[3], 0x20, "wfi woke with STIP pending");
    assert_eq!(o[4], 0x20, "STIP pending after the interrupt");
    assert_eq!(o[5], 0, "set_timer(-1) clears STIP");
    assert_eq!(o[6], 0x55, "vectored interrupt entered at base + 4");
    check_traps(
        &m,
        &[
            trap(INTERRUPT | 1, 0, m.sym("f_after_ssi")),
            trap(INTERRUPT | 5, 0, m.sym("f_after_sti")),
            trap(INTERRUPT | 1, 0, m.sym("f_after_vectored")),
        ],
    );
    // Taken from S-mode with SIE set: SPP = 1, SPIE = 1, SIE = 0.
    for t in m.traps() {
        assert_eq!(
            t.status & (SSTATUS_SPP | SSTATUS_SPIE | SSTATUS_SIE),
            SSTATUS_SPP | SSTATUS_SPIE
        );
    }
}

#[test]
fn wfi_with_nothing_to_wake_it_ends_a_bounded_run() {
    let mut m = Machine::with_program(
        "
    csrw sie, zero
f_wfi:
    wfi
    ",
    );
    assert_eq!(m.run_bounded(1_000_000), None);
    assert!(m.hart.in_wfi());
    assert_eq!(m.hart.pc, m.sym("f_wfi") + 4);
    m.assert_traps(&[]);
}

/// A timer that already fired while STIE is masked cannot wake WFI either;
/// the hart must sleep (and a bounded run end) rather than spin.
#[test]
fn wfi_with_an_expired_but_masked_timer_ends_a_bounded_run() {
    let mut m = Machine::with_program(&format!(
        "
    li a0, 0
    sbi {SBI_TIME:#x}, 0          # deadline in the past: STIP pending
    csrw sie, zero
    wfi
    "
    ));
    m.deadline = std::time::Duration::from_secs(10);
    assert_eq!(m.run_bounded(1_000_000), None);
    assert!(m.hart.in_wfi());
}

/// A guest whose trap vector is unmapped faults forever without retiring
/// an instruction; `run_bounded` must still return.
#[test]
fn a_trap_loop_ends_a_bounded_run() {
    let mut m = Machine::with_program(
        "
    li t0, 0x1000                 # nothing there
    csrw stvec, t0
    .word 0                       # illegal: traps to 0x1000, which faults
    ",
    );
    m.deadline = std::time::Duration::from_secs(10);
    assert_eq!(m.run_bounded(1_000_000), None);
    assert_eq!(m.hart.read_csr(0x142), Some(FETCH_ACCESS));
    assert_eq!(m.hart.pc, 0x1000);
}

// ----------------------------------------------------------------- SBI

#[test]
fn sbi_calls() {
    let mut m = Machine::with_program(
        "
    .macro rec
    sd a0, 0(s11)
    sd a1, 8(s11)
    addi s11, s11, 16
    .endm
    li s11, OUT
    li a1, 0x77
    sbi 0x10, 0                   # BASE get_spec_version
    rec
    li a0, 0x54494D45
    sbi 0x10, 3                   # probe TIME
    rec
    li a0, 0x12345678
    sbi 0x10, 3                   # probe an unknown extension
    rec
    sbi 0x10, 4                   # mvendorid
    rec
    sbi 0x12345678, 0             # unknown extension
    rec
    sbi 0x10, 99                  # unknown BASE function
    rec
    li a0, 'E'
    sbi 0x4442434E, 2             # DBCN write_byte
    rec
    li a0, 4
    li a1, DATA
    li a2, 0
    sbi 0x4442434E, 0             # DBCN write 4 bytes from DATA
    rec
    li a0, 4
    li a1, DATA
    li a2, 1
    sbi 0x4442434E, 0             # base_addr_hi != 0: invalid
    rec
    li a0, 4
    li a1, 0x1000
    li a2, 0
    sbi 0x4442434E, 0             # not RAM: invalid
    rec
    li a0, 0
    sbi 0x48534D, 2               # HSM hart_get_status(0)
    rec
    li a0, 7
    sbi 0x48534D, 2               # no hart 7
    rec
    li a0, 0
    li a1, DATA
    li a2, 0
    sbi 0x48534D, 0               # hart_start(0): already started
    rec
    li a0, 1
    li a1, 0
    sbi 0x735049, 0               # IPI to hart 0 (mask 1, base 0)
    rec
    csrr a0, sip                  # SSIP now pending
    li a1, 0
    rec
    li a0, -1
    li a1, -2
    sbi 0x735049, 0               # mask/base past the last hart
    rec
    li a0, '!'
    li a7, 1                      # legacy console_putchar
    ecall
    rec
    li a0, 5
    li a1, 0
    sbi 0x53525354, 0             # SRST with an invalid type
    rec
    ",
    );
    m.write(DATA, b"mber");
    m.run_to_poweroff();
    let o = m.read_u64s(OUT, 36);
    let pairs: Vec<(u64, u64)> = o.chunks(2).map(|c| (c[0], c[1])).collect();
    let err = |e: i64| e as u64;
    assert_eq!(pairs[0], (0, 2 << 24), "spec version 2.0");
    assert_eq!(pairs[1], (0, 1), "TIME is there");
    assert_eq!(pairs[2], (0, 0), "unknown extension probes as absent");
    assert_eq!(pairs[3], (0, 0), "mvendorid");
    assert_eq!(pairs[4].0, err(-2), "unknown extension: NOT_SUPPORTED");
    assert_eq!(pairs[5].0, err(-2), "unknown function: NOT_SUPPORTED");
    assert_eq!(pairs[6].0, 0, "write_byte");
    assert_eq!(pairs[7], (0, 4), "write: 4 bytes written");
    assert_eq!(pairs[8].0, err(-3), "write above 2^64: INVALID_PARAM");
    assert_eq!(
        pairs[9].0,
        err(-3),
        "write from unassigned memory: INVALID_PARAM"
    );
    assert_eq!(pairs[10], (0, 0), "hart 0 is started");
    assert_eq!(pairs[11].0, err(-3), "no hart 7: INVALID_PARAM");
    assert_eq!(
        pairs[12].0,
        err(-6),
        "hart 0 already started: ALREADY_AVAILABLE"
    );
    assert_eq!(pairs[13].0, 0, "send_ipi");
    assert_eq!(pairs[14].0, 2, "sip.SSIP set by the IPI");
    assert_eq!(
        pairs[15].0,
        err(-3),
        "send_ipi to a missing hart: INVALID_PARAM"
    );
    assert_eq!(pairs[16].0, 0, "legacy putchar returns 0");
    assert_eq!(pairs[17].0, err(-3), "SRST type 5: INVALID_PARAM");
    assert_eq!(m.console(), b"Ember!");
    m.assert_traps(&[]);
}

#[test]
fn sbi_reset_and_legacy_shutdown() {
    let mut m = Machine::with_program(
        "
    li a0, 1                      # cold reboot
    li a1, 0
    sbi 0x53525354, 0
    ",
    );
    assert_eq!(m.run_bounded(100_000), Some(ExitReason::Reset));
    let mut m = Machine::with_program(
        "
    li a7, 8                      # legacy shutdown
    ecall
    ",
    );
    assert_eq!(m.run_bounded(100_000), Some(ExitReason::PowerOff));
}

// --------------------------------------------------------- page tables

/// Physical pages the paging tests map (all inside RAM, away from the
/// program, the data areas and the table pool).
const P1: u64 = 0x8081_0000;
const P2: u64 = 0x8081_1000;
const P3: u64 = 0x8081_2000;
const P4: u64 = 0x8081_3000;
const P5: u64 = 0x8081_4000;
const P6: u64 = 0x8081_5000;
const P7: u64 = 0x8081_8000;
const P8: u64 = 0x8081_6000;
const P9: u64 = 0x8081_a000;
const P10: u64 = 0x8081_b000;
const PMEGA: u64 = 0x8060_0000;

/// A recognisable doubleword for physical address `pa`.
fn tag(pa: u64) -> u64 {
    pa.rotate_left(17) ^ 0x5a5a_0000_0000_a5a5
}

fn fill_tags(m: &Machine, pa: u64, len: u64) {
    for off in (0..len).step_by(8) {
        m.write_u64(pa + off, tag(pa + off));
    }
}

const RWAD: u64 = PTE_R | PTE_W | PTE_A | PTE_D;

#[test]
fn sv39_translation_permissions_and_faults() {
    const V1: u64 = 0x1000_0000; // RW, A and D clear
    const V2: u64 = 0x1000_1000; // read-only, A clear
    const V3: u64 = 0x1000_2000; // user RW
    const V4: u64 = 0x1000_3000; // execute-only
    const V5: u64 = 0x1000_4000; // remapped from P5 to P6 by the program
    const VC: u64 = 0x1000_6000; // VC -> P7, VC + 4K -> P8
    const VUNMAPPED: u64 = 0x1000_8000;
    const VWONLY: u64 = 0x1000_9000; // W without R: reserved
    const VX: u64 = 0x1000_a000; // RX; VX + 4K mapped later
    const VMEGA: u64 = 0x2000_0000; // 2 MiB -> PMEGA
    const VBADMEGA: u64 = 0x2020_0000; // 2 MiB leaf, misaligned PPN
    const VGIGA: u64 = 0x4000_0000; // 1 GiB -> RAM_BASE
                                    // The program gets the PTE addresses and values it needs as symbols.
    let body = |pte5: u64, p5: u64, p6: u64, pte_x2: u64, x2: u64, satp: u64| {
        format!(
            "
    .macro rec reg
    sd \\reg, 0(s11)
    addi s11, s11, 8
    .endm
    li s11, OUT
    li t0, {satp:#x}
    csrw satp, t0
    sfence.vma
    li s0, {V1:#x}
    ld t0, 8(s0)
    rec t0                          # 0
    li t0, 0xabcd
    sd t0, 16(s0)
    li s1, {V2:#x}
    ld t0, 0(s1)
    rec t0                          # 1
f_st_ro:
    sd t0, 0(s1)
    li s2, {VUNMAPPED:#x}
f_ld_unmapped:
    ld t0, 0(s2)
f_st_unmapped:
    sd t0, 16(s2)
    li t1, {VMEGA:#x} + 0x12340
    ld t0, 0(t1)
    rec t0                          # 2
    li t1, {VGIGA:#x} + 0x800100    # = DATA + 0x100
    ld t0, 0(t1)
    rec t0                          # 3
    li t0, 0x600d
    sd t0, 8(t1)                    # DATA + 0x108 through the alias
    li s3, 0x0000004000000000       # bit 38 clear, bit 39 set
f_noncanon_ld:
    ld t0, 0(s3)
    li s3, 0xffffff0000000000
f_noncanon_st:
    sd t0, 0(s3)
    li s3, 0xffffffc000000000       # canonical, unmapped
f_upper_unmapped:
    ld t0, 0(s3)
    li s3, {VWONLY:#x}
f_wonly:
    ld t0, 0(s3)
    li s3, {VBADMEGA:#x}
f_badmega:
    ld t0, 0(s3)
    # SUM: S-mode reaches a U page only with sstatus.SUM.
    li s3, {V3:#x}
f_sum0:
    ld t0, 0(s3)
    li t2, 1 << 18
    csrs sstatus, t2
    ld t0, 0(s3)
    rec t0                          # 4
    li t0, 0x5ca1ab1e
    sd t0, 8(s3)
    csrc sstatus, t2
f_sum1:
    ld t0, 0(s3)
    csrs sstatus, t2
    on_trap 1f
f_sum_exec:
    jr s3                           # never executable from S-mode
1:  csrc sstatus, t2
    # MXR: loads from an execute-only page need sstatus.MXR.
    li s3, {V4:#x}
f_mxr0:
    ld t0, 0(s3)
    li t2, 1 << 19
    csrs sstatus, t2
    ld t0, 0(s3)
    rec t0                          # 5
    csrc sstatus, t2
f_mxr1:
    ld t0, 0(s3)
    # sfence.vma after a PTE change.
    li s4, {V5:#x}
    ld t0, 0(s4)
    rec t0                          # 6
    li t1, {pte5:#x}
    li t0, {p6:#x}
    sd t0, 0(t1)
    sfence.vma s4, zero
    ld t0, 0(s4)
    rec t0                          # 7
    li t0, {p5:#x}
    sd t0, 0(t1)
    sfence.vma
    ld t0, 0(s4)
    rec t0                          # 8
    # Accesses across a page boundary into a different physical page.
    li s5, {VC:#x} + 0x1000
    li t0, 0x1122334455667788
    sd t0, -3(s5)
    ld t0, -5(s5)
    rec t0                          # 9
    # Fetch from a page without X.
    on_trap 2f
f_fetch_nx:
    jr s0
2:  # A 4-byte instruction straddling into an unmapped page.
    on_trap 3f
    li a0, 5
    li t0, {VX:#x} + 0xffe
f_straddle:
    jr t0
3:  li t1, {pte_x2:#x}
    li t0, {x2:#x}
    sd t0, 0(t1)
    sfence.vma
    li a0, 5
    la ra, 4f
    li t0, {VX:#x} + 0xffe
    jr t0                            # addi a0, a0, 1; ret
4:  rec a0                           # 10
    csrw satp, zero
    "
        )
    };
    // Lay out the tables first, then load the program that refers to them.
    let mut m = Machine::new(&[]);
    let mut pt = PageTables::new(&m, 3);
    pt.identity_ram(&m);
    let pte1 = pt.map(&m, V1, P1, PAGE_4K, PTE_R | PTE_W);
    let pte2 = pt.map(&m, V2, P2, PAGE_4K, PTE_R);
    pt.map(&m, V3, P3, PAGE_4K, RWAD | PTE_U);
    let pte4 = pt.map(&m, V4, P4, PAGE_4K, PTE_X | PTE_A);
    let pte5 = pt.map(&m, V5, P5, PAGE_4K, RWAD);
    pt.map(&m, VC, P7, PAGE_4K, RWAD);
    pt.map(&m, VC + 0x1000, P8, PAGE_4K, RWAD);
    pt.map(&m, VWONLY, P1, PAGE_4K, PTE_W | PTE_A | PTE_D);
    let ptex = pt.map(&m, VX, P9, PAGE_4K, PTE_R | PTE_X);
    let pte_x2 = pt.map(&m, VX + 0x1000, P10, PAGE_4K, PTE_R | PTE_X | PTE_A);
    let x2 = m.read_u64(pte_x2);
    m.write_u64(pte_x2, 0); // mapped by the program later
    pt.map(&m, VMEGA, PMEGA, PAGE_2M, RWAD);
    pt.map(&m, VBADMEGA, PMEGA + 0x1_0000, PAGE_2M, RWAD);
    pt.map(&m, VGIGA, RAM_BASE, PAGE_1G, RWAD);
    let p5 = m.read_u64(pte5);
    let p6 = (p5 & 0x3ff) | ((P6 >> 12) << 10);

    m.load_program(&assemble(&program(&body(
        pte5,
        p5,
        p6,
        pte_x2,
        x2,
        pt.satp(),
    ))));
    for p in [P1, P2, P3, P4, P5, P6, P7, P8] {
        fill_tags(&m, p, 0x1000);
    }
    fill_tags(&m, PMEGA + 0x12000, 0x1000);
    fill_tags(&m, DATA, 0x1000);
    // addi a0, a0, 1 split across VX + 0xffe | VX + 0x1000, then ret.
    m.write(P9 + 0xffe, &0x0015_0513u32.to_le_bytes()[..2]);
    m.write(P10, &0x0015_0513u32.to_le_bytes()[2..]);
    m.write(P10 + 2, &0x0000_8067u32.to_le_bytes());

    m.run_to_poweroff();
    let o = m.read_u64s(OUT, 11);
    assert_eq!(o[0], tag(P1 + 8), "4 KiB page");
    assert_eq!(m.read_u64(P1 + 16), 0xabcd, "store through a 4 KiB page");
    assert_eq!(o[1], tag(P2), "read-only page");
    assert_eq!(o[2], tag(PMEGA + 0x12340), "2 MiB megapage");
    assert_eq!(o[3], tag(DATA + 0x100), "1 GiB gigapage");
    assert_eq!(
        m.read_u64(DATA + 0x108),
        0x600d,
        "store through the gigapage"
    );
    assert_eq!(o[4], tag(P3), "U page with SUM");
    assert_eq!(
        m.read_u64(P3 + 8),
        0x5ca1_ab1e,
        "store to a U page with SUM"
    );
    assert_eq!(o[5], tag(P4), "execute-only page with MXR");
    assert_eq!(o[6], tag(P5), "before the remap");
    assert_eq!(o[7], tag(P6), "sfence.vma of the page");
    assert_eq!(o[8], tag(P5), "sfence.vma of everything");
    // The doubleword stored at VC + 0xffd: three bytes end P7, five start P8.
    let v = 0x1122_3344_5566_7788u64.to_le_bytes();
    assert_eq!(m.read(P7 + 0xffd, 3), &v[..3]);
    assert_eq!(m.read(P8, 5), &v[3..]);
    let mut expect = tag(P7 + 0xff8).to_le_bytes()[3..5].to_vec();
    expect.extend_from_slice(&v[..6]);
    assert_eq!(
        o[9],
        u64::from_le_bytes(expect.try_into().unwrap()),
        "load across pages"
    );
    assert_eq!(
        o[10], 6,
        "straddling instruction ran once both pages were mapped"
    );

    // Accessed and dirty bits.
    let flags = |pte: u64| m.read_u64(pte) & (PTE_A | PTE_D);
    assert_eq!(flags(pte1), PTE_A | PTE_D, "loaded and stored");
    assert_eq!(flags(pte2), PTE_A, "loaded only");
    assert_eq!(flags(pte4), PTE_A);
    assert_eq!(flags(ptex), PTE_A, "fetched");

    let s = |n: &str| m.sym(n);
    check_traps(
        &m,
        &[
            trap(STORE_PAGE, V2, s("f_st_ro")),
            trap(LOAD_PAGE, VUNMAPPED, s("f_ld_unmapped")),
            trap(STORE_PAGE, VUNMAPPED + 16, s("f_st_unmapped")),
            trap(LOAD_PAGE, 0x40_0000_0000, s("f_noncanon_ld")),
            trap(STORE_PAGE, 0xffff_ff00_0000_0000, s("f_noncanon_st")),
            trap(LOAD_PAGE, 0xffff_ffc0_0000_0000, s("f_upper_unmapped")),
            trap(LOAD_PAGE, VWONLY, s("f_wonly")),
            trap(LOAD_PAGE, VBADMEGA, s("f_badmega")),
            trap(LOAD_PAGE, V3, s("f_sum0")),
            trap(LOAD_PAGE, V3, s("f_sum1")),
            trap(FETCH_PAGE, V3, V3),
            trap(LOAD_PAGE, V4, s("f_mxr0")),
            trap(LOAD_PAGE, V4, s("f_mxr1")),
            trap(FETCH_PAGE, V1, V1),
            trap(FETCH_PAGE, VX + 0x1000, VX + 0xffe),
        ],
    );
}

#[test]
fn sv48_translation_and_a_512_gib_leaf() {
    const VHIGH: u64 = 0x0000_7f00_1234_5000; // needs 48-bit addresses
    const VTERA: u64 = 0x0000_0100_0000_0000; // 512 GiB leaf -> physical 0
    let mut m = Machine::new(&[]);
    let mut pt = PageTables::new(&m, 4);
    pt.identity_ram(&m);
    let pte_high = pt.map(&m, VHIGH, P1, PAGE_4K, PTE_R | PTE_W);
    pt.map(&m, VTERA, 0, 3, RWAD);
    fill_tags(&m, P1, 0x1000);
    fill_tags(&m, DATA, 0x1000);
    m.load_program(&assemble(&program(&format!(
        "
    li s11, OUT
    li t0, {satp:#x}
    csrw satp, t0
    sfence.vma
    csrr t0, satp
    sd t0, 0(s11)
    li s0, {VHIGH:#x}
    ld t0, 0x18(s0)
    sd t0, 8(s11)
    li t0, 0x4848
    sd t0, 0x20(s0)
    li s1, {VTERA:#x} + {data_off:#x}
    ld t0, 0(s1)
    sd t0, 16(s11)
    li s2, 0x0000800000000000
f_noncanon:
    ld t0, 0(s2)
    li s2, 0xffff800000000000
f_upper:
    sd t0, 0(s2)
    li s2, 0x0000008000000000      # valid in Sv48, unmapped
f_low:
    ld t0, 0(s2)
    csrw satp, zero
    ",
        satp = pt.satp(),
        data_off = DATA + 0x100,
    ))));
    m.run_to_poweroff();
    let o = m.read_u64s(OUT, 3);
    assert_eq!(o[0], pt.satp(), "Sv48 is supported");
    assert_eq!(o[1], tag(P1 + 0x18));
    assert_eq!(m.read_u64(P1 + 0x20), 0x4848);
    assert_eq!(o[2], tag(DATA + 0x100), "512 GiB leaf");
    assert_eq!(m.read_u64(pte_high) & (PTE_A | PTE_D), PTE_A | PTE_D);
    check_traps(
        &m,
        &[
            trap(LOAD_PAGE, 0x0000_8000_0000_0000, m.sym("f_noncanon")),
            trap(STORE_PAGE, 0xffff_8000_0000_0000, m.sym("f_upper")),
            trap(LOAD_PAGE, 0x0000_0080_0000_0000, m.sym("f_low")),
        ],
    );
}

#[test]
fn user_mode_under_sv39() {
    const VU: u64 = 0x2000_0000; // user code, RX
    const VUD: u64 = 0x2000_1000; // user data, RW
    const VUR: u64 = 0x2000_2000; // user data, read-only
    const VS: u64 = 0x2000_3000; // supervisor data
    let mut m = Machine::new(&[]);
    let mut pt = PageTables::new(&m, 3);
    pt.identity_ram(&m);
    pt.map(&m, VU, P1, PAGE_4K, PTE_R | PTE_X | PTE_U | PTE_A);
    pt.map(&m, VUD, P2, PAGE_4K, RWAD | PTE_U);
    pt.map(&m, VUR, P3, PAGE_4K, PTE_R | PTE_U | PTE_A);
    pt.map(&m, VS, P4, PAGE_4K, RWAD);
    fill_tags(&m, P2, 0x1000);
    fill_tags(&m, P3, 0x1000);
    fill_tags(&m, P4, 0x1000);
    let prog = assemble(&program(&format!(
        "
    li t0, {satp:#x}
    csrw satp, t0
    sfence.vma
    li t0, {VU:#x}
    csrw sepc, t0
    li t0, 0x100
    csrc sstatus, t0
    sret
    # The user program, copied to VU (position-independent).
ucode:
    li s0, {VUD:#x}
    ld a2, 0(s0)
    li t1, 0x777
    sd t1, 8(s0)
    li t2, {VS:#x}
u_ld_s:
    ld a3, 0(t2)                  # supervisor page: fault
    li t3, {VUR:#x}
    ld a4, 0(t3)
u_st_ro:
    sd t1, 0(t3)                  # read-only: fault
    li a0, 9
u_ecall:
    ecall
    sd a2, 16(s0)
    sd a4, 24(s0)
    sd a3, 32(s0)
    li t4, {RAM_BASE:#x}
u_fetch_s:
    jr t4                         # supervisor code: fetch fault, the end
ucode_end:
    ",
        satp = pt.satp(),
    )));
    m.load_program(&prog);
    let (start, end) = (m.sym("ucode"), m.sym("ucode_end"));
    let code = m.read(start, (end - start) as usize);
    m.write(P1, &code);
    // The handler powers off on the final fetch fault.
    m.run_to_poweroff();
    let at = |label: &str| VU + m.sym(label) - start;
    check_traps(
        &m,
        &[
            trap(LOAD_PAGE, VS, at("u_ld_s")),
            trap(STORE_PAGE, VUR, at("u_st_ro")),
            trap(ECALL_U, 0, at("u_ecall")),
            trap(FETCH_PAGE, RAM_BASE, RAM_BASE),
        ],
    );
    assert!(m.traps().iter().all(|t| t.status & SSTATUS_SPP == 0));
    assert_eq!(m.read_u64(P2 + 8), 0x777);
    assert_eq!(m.read_u64(P2 + 16), tag(P2));
    assert_eq!(m.read_u64(P2 + 24), tag(P3));
    assert_eq!(m.read_u64(P2 + 32), 0, "the faulting load wrote nothing");
    assert_eq!(m.read_u64(P3), tag(P3), "the faulting store wrote nothing");
}

// ------------------------------------------------- self-modifying code

/// `addi a0, zero, imm`.
fn li_a0(imm: u32) -> u32 {
    (imm << 20) | (10 << 7) | 0x13
}

#[test]
fn self_modifying_code() {
    let mut m = Machine::with_program(&format!(
        "
    li s11, OUT
    # Warm the function up so it is translated and in the jump cache.
    li s0, 100
1:  call f_same_page
    addi s0, s0, -1
    bnez s0, 1b
    sd a0, 0(s11)                 # 1
    la s1, f_same_page
    li t1, {i2:#x}
    sw t1, 0(s1)
    fence.i
    call f_same_page
    sd a0, 8(s11)                 # 2
    # Without fence.i: Ember invalidates on the store.
    li t1, {i3:#x}
    sw t1, 0(s1)
    call f_same_page
    sd a0, 16(s11)                # 3
    li t1, {i4:#x}
    amoswap.w t2, t1, (s1)
    sd t2, 24(s11)                # the old instruction
    call f_same_page
    sd a0, 32(s11)                # 4
    li t1, 1
    sb t1, 3(s1)                  # immediate 4 -> 0x14
    call f_same_page
    sd a0, 40(s11)                # 20
    # Code on another page than the code patching it.
    call f_other_page
    sd a0, 48(s11)                # 7
    la s2, f_other_page
    li t1, {i8:#x}
    sw t1, 0(s2)
    call f_other_page
    sd a0, 56(s11)                # 8
    j shutdown
f_same_page:
    li a0, 1
    ret
    .balign 4096
f_other_page:
    li a0, 7
    ret
    ",
        i2 = li_a0(2),
        i3 = li_a0(3),
        i4 = li_a0(4),
        i8 = li_a0(8),
    ));
    assert_eq!(
        m.read_u32(m.sym("f_same_page")),
        li_a0(1),
        "li a0, 1 as assembled"
    );
    m.run_to_poweroff();
    assert_eq!(m.read_u64s(OUT, 8), [1, 2, 3, li_a0(3) as u64, 4, 20, 7, 8]);
    assert!(m.hart.stats.smc_invalidations > 0);
    m.assert_traps(&[]);
}

/// A loop whose body is one translated block that branches back to its
/// own start, patching an instruction of that body as it runs: after the
/// store (here without fence.i) the next iteration runs the new code.
#[test]
fn self_modifying_loop() {
    let mut m = Machine::with_program(&format!(
        "
    li s0, 0
    li s1, 3
    la s2, f_patched_insn
    li s3, {new:#x}
    li s4, 0
    li s5, 3
    la s6, g_patched_insn
1:
f_patched_insn:
    addi s0, s0, 1
    sw s3, 0(s2)
    addi s1, s1, -1
    bnez s1, 1b
    # The same with fence.i, which the ISA requires to see the change.
2:
g_patched_insn:
    addi s4, s4, 1
    sw s3, 0(s6)
    fence.i
    addi s5, s5, -1
    bnez s5, 2b
    li t0, OUT
    sd s0, 0(t0)
    sd s4, 8(t0)
    ",
        new = (16u32 << 20) | (8 << 15) | (8 << 7) | 0x13, // addi s0, s0, 16
    ));
    m.run_to_poweroff();
    m.assert_traps(&[]);
    // The fence.i loop patches its addi into one on s0, not s4.
    assert_eq!(m.read_u64s(OUT, 2), [1 + 16 + 16 + 16 + 16, 1]);
}

/// Code patched through a second virtual mapping of its physical page,
/// with the alias's TLB entry created before the code was translated.
#[test]
fn self_modifying_code_through_an_alias_mapping() {
    const ALIAS: u64 = 0x4000_0000; // 1 GiB alias of RAM, not executable
    let mut m = Machine::new(&[]);
    let mut pt = PageTables::new(&m, 3);
    pt.identity_ram(&m);
    pt.map(&m, ALIAS, RAM_BASE, PAGE_1G, RWAD);
    m.load_program(&assemble(&program(&format!(
        "
    li s11, OUT
    li t0, {satp:#x}
    csrw satp, t0
    sfence.vma
    la s1, f_patched
    li t0, {delta:#x}
    sub s2, s1, t0                # the alias of f_patched
    lw t0, 0(s2)                  # TLB entry for the alias page
    call f_patched
    sd a0, 0(s11)                 # 1
    li t1, {i5:#x}
    sw t1, 0(s2)
    call f_patched
    sd a0, 8(s11)                 # 5
    csrw satp, zero
    j shutdown
    .balign 4096
f_patched:
    li a0, 1
    ret
    ",
        satp = pt.satp(),
        delta = RAM_BASE - ALIAS,
        i5 = li_a0(5),
    ))));
    m.run_to_poweroff();
    assert_eq!(m.read_u64s(OUT, 2), [1, 5]);
    assert!(m.hart.stats.smc_invalidations > 0);
    m.assert_traps(&[]);
}

// ------------------------------------------------------ floating point

const NX: u64 = 1;
const UF: u64 = 2;
const OF: u64 = 4;
const DZ: u64 = 8;
const NV: u64 = 16;
const CNAN_D: u64 = 0x7ff8_0000_0000_0000;
const CNAN_S: u64 = 0xffff_ffff_7fc0_0000;
const SNAN_D: u64 = 0x7ff0_0000_0000_0001;
const SNAN_S: u32 = 0x7f80_0001;

/// A NaN-boxed single.
fn boxed(f: f32) -> u64 {
    0xffff_ffff_0000_0000 | f.to_bits() as u64
}

/// 2^e exactly, for e in the double range including subnormals.
fn pow2(e: i32) -> f64 {
    if e >= -1022 {
        f64::from_bits(((e + 1023) as u64) << 52)
    } else {
        f64::from_bits(1u64 << (e + 1074))
    }
}

fn pow2f(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149))
    }
}

/// One hand-written FP case: `asm` leaves its result in t1.
struct FpCase {
    what: String,
    asm: String,
    want: u64,
    flags: u64,
}

fn set_f(reg: &str, bits: u64) -> String {
    format!("    li t0, {bits:#x}\n    fmv.d.x {reg}, t0\n")
}

/// `op fa3, fa0[, fa1[, fa2]][, rm]` on raw register images, result moved
/// to t1.
fn fp_op(op: &str, args: &[u64], rm: &str, want: u64, flags: u64) -> FpCase {
    let regs = ["fa0", "fa1", "fa2"];
    let mut asm = String::new();
    for (r, v) in regs.iter().zip(args) {
        asm += &set_f(r, *v);
    }
    let mut ops = vec!["fa3"];
    ops.extend(&regs[..args.len()]);
    let rm = if rm.is_empty() {
        String::new()
    } else {
        format!(", {rm}")
    };
    asm += &format!("    {op} {}{rm}\n    fmv.x.d t1, fa3\n", ops.join(", "));
    FpCase {
        what: format!("{op} {args:x?} {rm}"),
        asm,
        want,
        flags,
    }
}

/// `op t1, fa0[, fa1][, rm]`: results in an x register.
fn fp_x(op: &str, args: &[u64], rm: &str, want: u64, flags: u64) -> FpCase {
    let regs = ["fa0", "fa1"];
    let mut asm = String::new();
    for (r, v) in regs.iter().zip(args) {
        asm += &set_f(r, *v);
    }
    let rm = if rm.is_empty() {
        String::new()
    } else {
        format!(", {rm}")
    };
    asm += &format!("    {op} t1, {}{rm}\n", regs[..args.len()].join(", "));
    FpCase {
        what: format!("{op} {args:x?} {rm}"),
        asm,
        want,
        flags,
    }
}

/// `op fa3, t0[, rm]` from an integer, result moved to t1.
fn fp_from_int(op: &str, x: u64, rm: &str, want: u64, flags: u64) -> FpCase {
    let rm = if rm.is_empty() {
        String::new()
    } else {
        format!(", {rm}")
    };
    FpCase {
        what: format!("{op} {x:#x} {rm}"),
        asm: format!("    li t0, {x:#x}\n    {op} fa3, t0{rm}\n    fmv.x.d t1, fa3\n"),
        want,
        flags,
    }
}

fn raw(what: &str, asm: &str, want: u64, flags: u64) -> FpCase {
    FpCase {
        what: what.to_string(),
        asm: asm.to_string(),
        want,
        flags,
    }
}

fn d(v: f64) -> u64 {
    v.to_bits()
}

fn run_fp_cases(cases: &[FpCase]) {
    let mut body = String::from("    li t0, 0x2000\n    csrs sstatus, t0\n    li s0, OUT\n");
    for c in cases {
        body += &format!(
            "    fsflags zero\n{}    frflags t2\n    sd t1, 0(s0)\n    sd t2, 8(s0)\n    addi s0, s0, 16\n",
            c.asm
        );
    }
    let mut m = Machine::with_program(&body);
    m.run_to_poweroff();
    m.assert_traps(&[]);
    let got = m.read_u64s(OUT, 2 * cases.len());
    let mut bad = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let (v, f) = (got[2 * i], got[2 * i + 1]);
        if (v, f) != (c.want, c.flags) {
            bad.push(format!(
                "{}: got {v:#018x} flags {f:#x}, want {:#018x} flags {:#x}",
                c.what, c.want, c.flags
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} FP cases wrong:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn fp_arithmetic_rounding_and_flags() {
    let one = d(1.0);
    let half_ulp = d(pow2(-53)); // exactly half an ulp of 1.0
    let up1 = d(1.0) + 1; // 1 + 2^-52
    let third = 1.0f64 / 3.0;
    // 1/3 is not a double; whether RNE rounded it down or up tells the
    // directed results: the residual third * 3 - 1 is exact in an FMA.
    let below = third.mul_add(3.0, -1.0) < 0.0;
    let (third_dn, third_up) = if below {
        (d(third), d(third) + 1)
    } else {
        (d(third) - 1, d(third))
    };
    let a = 1.0 + pow2(-30);
    let b = 1.0 - pow2(-30);
    let af = 1.0 + pow2f(-12);
    let bf = 1.0 - pow2f(-12);
    let cases = vec![
        fp_op("fadd.d", &[one, d(2.0)], "", d(3.0), 0),
        fp_op("fsub.d", &[one, d(2.0)], "", d(-1.0), 0),
        fp_op("fmul.d", &[d(1.5), d(-4.0)], "", d(-6.0), 0),
        // 1 + 2^-53 is a tie between 1 and 1 + 2^-52.
        fp_op("fadd.d", &[one, half_ulp], "rne", one, NX),
        fp_op("fadd.d", &[one, half_ulp], "rtz", one, NX),
        fp_op("fadd.d", &[one, half_ulp], "rdn", one, NX),
        fp_op("fadd.d", &[one, half_ulp], "rup", up1, NX),
        fp_op("fadd.d", &[one, half_ulp], "rmm", up1, NX),
        fp_op("fadd.d", &[d(-1.0), d(-pow2(-53))], "rne", d(-1.0), NX),
        fp_op("fadd.d", &[d(-1.0), d(-pow2(-53))], "rdn", d(-1.0) + 1, NX),
        fp_op("fadd.d", &[d(-1.0), d(-pow2(-53))], "rup", d(-1.0), NX),
        fp_op("fadd.d", &[d(-1.0), d(-pow2(-53))], "rtz", d(-1.0), NX),
        fp_op("fadd.d", &[d(-1.0), d(-pow2(-53))], "rmm", d(-1.0) + 1, NX),
        fp_op("fadd.s", &[boxed(1.0), boxed(pow2f(-24))], "rne", boxed(1.0), NX),
        fp_op("fadd.s", &[boxed(1.0), boxed(pow2f(-24))], "rup", boxed(1.0) + 1, NX),
        fp_op("fadd.s", &[boxed(1.0), boxed(pow2f(-24))], "rmm", boxed(1.0) + 1, NX),
        fp_op("fadd.s", &[boxed(1.0), boxed(pow2f(-24))], "rdn", boxed(1.0), NX),
        fp_op("fdiv.d", &[one, d(3.0)], "rne", d(third), NX),
        fp_op("fdiv.d", &[one, d(3.0)], "rdn", third_dn, NX),
        fp_op("fdiv.d", &[one, d(3.0)], "rup", third_up, NX),
        fp_op("fdiv.d", &[one, d(3.0)], "rtz", third_dn, NX),
        fp_op("fdiv.s", &[boxed(1.0), boxed(3.0)], "", boxed(1.0f32 / 3.0), NX),
        // Dynamic rounding from frm, and a static rm overriding it.
        raw(
            "fdiv.d dyn with frm = rup",
            &format!(
                "{}{}    fsrmi 3\n    fdiv.d fa3, fa0, fa1\n    fsrmi 0\n    fmv.x.d t1, fa3\n",
                set_f("fa0", one),
                set_f("fa1", d(3.0))
            ),
            third_up,
            NX,
        ),
        raw(
            "fdiv.d dyn with frm = rdn",
            &format!(
                "{}{}    fsrmi 2\n    fdiv.d fa3, fa0, fa1\n    fsrmi 0\n    fmv.x.d t1, fa3\n",
                set_f("fa0", one),
                set_f("fa1", d(3.0))
            ),
            third_dn,
            NX,
        ),
        raw(
            "fdiv.d rne with frm = rup",
            &format!(
                "{}{}    fsrmi 3\n    fdiv.d fa3, fa0, fa1, rne\n    fsrmi 0\n    fmv.x.d t1, fa3\n",
                set_f("fa0", one),
                set_f("fa1", d(3.0))
            ),
            d(third),
            NX,
        ),
        raw("frrm after fsrmi 4", "    fsrmi 4\n    frrm t1\n    fsrmi 0\n", 4, 0),
        // Exceptions.
        fp_op("fdiv.d", &[one, d(0.0)], "", d(f64::INFINITY), DZ),
        fp_op("fdiv.d", &[d(-1.0), d(0.0)], "", d(f64::NEG_INFINITY), DZ),
        fp_op("fdiv.d", &[d(0.0), d(0.0)], "", CNAN_D, NV),
        fp_op("fdiv.s", &[boxed(0.0), boxed(0.0)], "", CNAN_S, NV),
        raw(
            "fflags accumulate: 1/0 then 0/0",
            &format!(
                "{}{}    fdiv.d fa3, fa0, fa1\n    fdiv.d fa3, fa1, fa1\n    fmv.x.d t1, fa3\n",
                set_f("fa0", one),
                set_f("fa1", 0)
            ),
            CNAN_D,
            DZ | NV,
        ),
        fp_op("fmul.d", &[d(f64::MAX), d(2.0)], "", d(f64::INFINITY), OF | NX),
        fp_op("fmul.d", &[d(f64::MAX), d(2.0)], "rtz", d(f64::MAX), OF | NX),
        fp_op("fmul.d", &[d(pow2(-1000)), d(pow2(-100))], "", 0, UF | NX),
        fp_op("fmul.d", &[d(pow2(-1000)), d(pow2(-100))], "rup", 1, UF | NX),
        // An exact subnormal result is not an underflow.
        fp_op("fmul.d", &[d(pow2(-1000)), d(pow2(-30))], "", d(pow2(-1030)), 0),
        fp_op("fmul.d", &[d(0.0), d(f64::INFINITY)], "", CNAN_D, NV),
        fp_op("fadd.s", &[boxed(f32::INFINITY), boxed(f32::NEG_INFINITY)], "", CNAN_S, NV),
        // NaN payloads are not propagated; sNaN operands raise NV.
        fp_op("fadd.d", &[0x7ff8_0000_0000_0123, one], "", CNAN_D, 0),
        fp_op("fadd.d", &[SNAN_D, one], "", CNAN_D, NV),
        fp_op("fmul.s", &[boxed(f32::from_bits(SNAN_S)), boxed(1.0)], "", CNAN_S, NV),
        // Square root.
        fp_op("fsqrt.d", &[d(2.0)], "", d(2.0f64.sqrt()), NX),
        fp_op("fsqrt.d", &[d(4.0)], "", d(2.0), 0),
        fp_op("fsqrt.d", &[d(-1.0)], "", CNAN_D, NV),
        fp_op("fsqrt.d", &[d(-0.0)], "", d(-0.0), 0),
        fp_op("fsqrt.d", &[d(f64::INFINITY)], "", d(f64::INFINITY), 0),
        fp_op("fsqrt.s", &[boxed(2.0)], "", boxed(2.0f32.sqrt()), NX),
        // Fused multiply-add rounds once: (1 + 2^-30)(1 - 2^-30) - 1 is
        // exactly -2^-60, where a separate multiply would give 0.
        fp_op("fmadd.d", &[d(a), d(b), d(-1.0)], "", d(a.mul_add(b, -1.0)), 0),
        fp_op("fmadd.s", &[boxed(af), boxed(bf), boxed(-1.0)], "", boxed(af.mul_add(bf, -1.0)), 0),
        fp_op("fmsub.d", &[d(2.0), d(3.0), d(1.0)], "", d(5.0), 0),
        fp_op("fnmsub.d", &[d(2.0), d(3.0), d(1.0)], "", d(-5.0), 0),
        fp_op("fnmadd.d", &[d(2.0), d(3.0), d(1.0)], "", d(-7.0), 0),
        fp_op("fnmadd.s", &[boxed(2.0), boxed(3.0), boxed(1.0)], "", boxed(-7.0), 0),
        fp_op("fmadd.d", &[one, one, half_ulp], "rup", up1, NX),
        // inf * 0 + qNaN is invalid.
        fp_op("fmadd.d", &[d(f64::INFINITY), d(0.0), CNAN_D], "", CNAN_D, NV),
        // min/max: -0 < +0, a single NaN is ignored, sNaN raises NV.
        fp_op("fmin.d", &[d(-0.0), d(0.0)], "", d(-0.0), 0),
        fp_op("fmax.d", &[d(-0.0), d(0.0)], "", d(0.0), 0),
        fp_op("fmin.d", &[CNAN_D, one], "", one, 0),
        fp_op("fmax.d", &[SNAN_D, one], "", one, NV),
        fp_op("fmax.d", &[CNAN_D, 0x7ff8_0000_0000_0042], "", CNAN_D, 0),
        fp_op("fmin.s", &[boxed(1.0), boxed(2.0)], "", boxed(1.0), 0),
        // Comparisons: only feq is quiet.
        fp_x("feq.d", &[CNAN_D, one], "", 0, 0),
        fp_x("flt.d", &[CNAN_D, one], "", 0, NV),
        fp_x("fle.d", &[one, one], "", 1, 0),
        fp_x("feq.d", &[SNAN_D, one], "", 0, NV),
        fp_x("feq.d", &[d(-0.0), d(0.0)], "", 1, 0),
        fp_x("flt.s", &[boxed(-0.0), boxed(0.0)], "", 0, 0),
        fp_x("fle.s", &[boxed(1.0), boxed(2.0)], "", 1, 0),
        // Sign injection moves bits, NaNs included.
        fp_op("fsgnjn.d", &[one, one], "", d(-1.0), 0),
        fp_op("fsgnjx.d", &[d(-2.0), d(-3.0)], "", d(2.0), 0),
        fp_op("fsgnj.d", &[d(5.0), d(-0.0)], "", d(-5.0), 0),
        fp_op("fsgnjx.d", &[SNAN_D, d(-1.0)], "", SNAN_D | 1 << 63, 0),
        // Conversions to integers saturate.
        fp_x("fcvt.w.s", &[boxed(3e9)], "rtz", 0x7fff_ffff, NV),
        fp_x("fcvt.w.s", &[boxed(-3e9)], "rtz", 0xffff_ffff_8000_0000, NV),
        fp_x("fcvt.w.s", &[CNAN_S], "rtz", 0x7fff_ffff, NV),
        fp_x("fcvt.w.s", &[boxed(f32::NEG_INFINITY)], "rtz", 0xffff_ffff_8000_0000, NV),
        fp_x("fcvt.w.s", &[boxed(f32::INFINITY)], "rtz", 0x7fff_ffff, NV),
        fp_x("fcvt.wu.s", &[boxed(-1.0)], "rtz", 0, NV),
        fp_x("fcvt.wu.s", &[boxed(4e9)], "rtz", sext32(4_000_000_000), 0),
        fp_x("fcvt.wu.s", &[boxed(5e9)], "rtz", u64::MAX, NV),
        fp_x("fcvt.wu.s", &[CNAN_S], "rtz", u64::MAX, NV),
        fp_x("fcvt.wu.s", &[boxed(-0.5)], "rtz", 0, NX),
        fp_x("fcvt.wu.s", &[boxed(-0.5)], "rne", 0, NX),
        fp_x("fcvt.wu.s", &[boxed(-0.5)], "rdn", 0, NV),
        fp_x("fcvt.l.d", &[d(pow2(63))], "rtz", i64::MAX as u64, NV),
        fp_x("fcvt.l.d", &[d(-pow2(63))], "rtz", i64::MIN as u64, 0),
        fp_x("fcvt.lu.d", &[d(-0.0)], "rtz", 0, 0),
        fp_x("fcvt.lu.d", &[d(pow2(64))], "rtz", u64::MAX, NV),
        fp_x("fcvt.lu.d", &[d(1.5)], "rne", 2, NX),
        fp_x("fcvt.w.d", &[d(2.5)], "rne", 2, NX),
        fp_x("fcvt.w.d", &[d(2.5)], "rmm", 3, NX),
        fp_x("fcvt.w.d", &[d(2.5)], "rup", 3, NX),
        fp_x("fcvt.w.d", &[d(-2.5)], "rdn", (-3i64) as u64, NX),
        fp_x("fcvt.w.d", &[d(-2.5)], "rtz", (-2i64) as u64, NX),
        fp_x("fcvt.w.d", &[d(-2.5)], "rup", (-2i64) as u64, NX),
        // Conversions from integers.
        fp_from_int("fcvt.s.w", 16_777_217, "rne", boxed(16_777_216.0), NX),
        fp_from_int("fcvt.s.w", 16_777_217, "rup", boxed(16_777_218.0), NX),
        fp_from_int("fcvt.d.l", i64::MAX as u64, "", d(pow2(63)), NX),
        fp_from_int("fcvt.d.lu", u64::MAX, "", d(pow2(64)), NX),
        fp_from_int("fcvt.d.wu", u64::MAX, "", d(4_294_967_295.0), 0),
        fp_from_int("fcvt.d.w", 0x1_8000_0000, "", d(-2_147_483_648.0), 0),
        // Between precisions.
        fp_op("fcvt.s.d", &[d(third)], "", boxed(third as f32), NX),
        fp_op("fcvt.s.d", &[d(1e300)], "", boxed(f32::INFINITY), OF | NX),
        fp_op("fcvt.d.s", &[boxed(f32::from_bits(SNAN_S))], "", CNAN_D, NV),
        fp_op("fcvt.d.s", &[boxed(0.1)], "", d(0.1f32 as f64), 0),
    ];
    run_fp_cases(&cases);
}

#[test]
fn fp_nan_boxing_moves_and_classes() {
    // Improperly boxed singles: upper half not all ones.
    let unboxed_one = 0x0000_0000_3f80_0000u64;
    let half_boxed = 0xffff_fffe_3f80_0000u64;
    let mut cases = vec![
        raw(
            "flw boxes",
            "    li t0, DATA\n    li t2, 0x3f800000\n    sw t2, 0(t0)\n    flw fa3, 0(t0)\n    fmv.x.d t1, fa3\n",
            boxed(1.0),
            0,
        ),
        raw(
            "fmv.w.x boxes",
            "    li t0, 0x12345678\n    fmv.w.x fa3, t0\n    fmv.x.d t1, fa3\n",
            0xffff_ffff_1234_5678,
            0,
        ),
        raw(
            "fmv.x.w sign-extends",
            "    li t0, 0x80000000\n    fmv.w.x fa3, t0\n    fmv.x.w t1, fa3\n",
            0xffff_ffff_8000_0000,
            0,
        ),
        fp_op("fadd.s", &[unboxed_one, unboxed_one], "", CNAN_S, 0),
        fp_op("fadd.s", &[half_boxed, boxed(1.0)], "", CNAN_S, 0),
        fp_op("fsgnj.s", &[unboxed_one, boxed(-1.0)], "", 0xffff_ffff_ffc0_0000, 0),
        fp_op("fsgnj.s", &[boxed(2.0), unboxed_one], "", boxed(2.0), 0),
        fp_op("fcvt.d.s", &[unboxed_one], "", CNAN_D, 0),
        fp_x("fclass.s", &[unboxed_one], "", 1 << 9, 0),
        // Moves and stores pass the bits through unchecked.
        fp_x("fmv.x.w", &[0x0000_0000_bf80_0000], "", 0xffff_ffff_bf80_0000, 0),
        raw(
            "fsw of an unboxed value",
            &format!(
                "{}    li t0, DATA\n    fsw fa0, 0(t0)\n    lwu t1, 0(t0)\n",
                set_f("fa0", unboxed_one)
            ),
            0x3f80_0000,
            0,
        ),
        raw(
            "fmv.d.x / fmv.x.d round trip",
            "    li t0, 0x123456789abcdef0\n    fmv.d.x fa3, t0\n    fmv.x.d t1, fa3\n",
            0x1234_5678_9abc_def0,
            0,
        ),
        raw(
            "fld/fsd misaligned",
            "    li t0, DATA + 0x13\n    li t2, 0x0123456789abcdef\n    sd t2, 0(t0)\n    fld fa3, 0(t0)\n    fsd fa3, 9(t0)\n    ld t1, 9(t0)\n",
            0x0123_4567_89ab_cdef,
            0,
        ),
    ];
    let classes_d: [(u64, u64); 10] = [
        (d(f64::NEG_INFINITY), 1 << 0),
        (d(-1.0), 1 << 1),
        (0x8000_0000_0000_0001, 1 << 2),
        (d(-0.0), 1 << 3),
        (d(0.0), 1 << 4),
        (1, 1 << 5),
        (d(1.0), 1 << 6),
        (d(f64::INFINITY), 1 << 7),
        (SNAN_D, 1 << 8),
        (CNAN_D, 1 << 9),
    ];
    for (v, class) in classes_d {
        cases.push(fp_x("fclass.d", &[v], "", class, 0));
    }
    let classes_s: [(u32, u64); 10] = [
        (f32::NEG_INFINITY.to_bits(), 1 << 0),
        ((-1.0f32).to_bits(), 1 << 1),
        (0x8000_0001, 1 << 2),
        ((-0.0f32).to_bits(), 1 << 3),
        (0, 1 << 4),
        (1, 1 << 5),
        (1.0f32.to_bits(), 1 << 6),
        (f32::INFINITY.to_bits(), 1 << 7),
        (SNAN_S, 1 << 8),
        (0x7fc0_0000, 1 << 9),
    ];
    for (v, class) in classes_s {
        cases.push(fp_x(
            "fclass.s",
            &[0xffff_ffff_0000_0000 | v as u64],
            "",
            class,
            0,
        ));
    }
    run_fp_cases(&cases);
}

#[test]
fn fp_state_and_illegal_fp_instructions() {
    let mut m = Machine::with_program(
        "
    li s11, OUT
    csrr t0, sstatus
    sd t0, 0(s11)
f_fadd_off:
    fadd.d ft0, ft1, ft2
f_flw_off:
    flw ft0, 0(sp)
f_fflags_off:
    csrr t0, fflags
f_fmv_off:
    fmv.x.d t0, ft0
    .option push
    .option rvc
f_cfld_off:
    c.fldsp fa0, 0(sp)
    c.nop
    .option pop
    li t0, 0x2000                 # FS = Initial
    csrs sstatus, t0
    csrr t0, sstatus
    sd t0, 8(s11)
    fsd ft0, 0(sp)                # a store does not have to dirty
    fadd.d ft0, ft1, ft2
    csrr t0, sstatus              # Dirty, and SD
    sd t0, 16(s11)
    # Reserved rounding modes: static rm = 5, and frm = 5 / 7 with dyn.
f_rm5:
    .word 0x02105153              # fadd.d ft2, ft0, ft1, rm = 5
    fsrmi 5
f_dyn5:
    fadd.d ft2, ft0, ft1
    fsrmi 7
f_dyn7:
    fmul.d ft2, ft0, ft1
    fsgnj.d ft2, ft0, ft1         # no rounding: fine with frm = 7
    fsrmi 0
    li t0, 0x1ff
    csrw fcsr, t0
    csrr t0, fcsr
    sd t0, 24(s11)
    frrm t0
    sd t0, 32(s11)
    frflags t0
    sd t0, 40(s11)
    csrw fcsr, zero
    # Half precision is not implemented.
f_fadd_h:
    .word 0x04100153              # fadd.h ft2, ft0, ft1
    # FS = Off again.
    li t0, 0x6000
    csrc sstatus, t0
f_fsd_off:
    fsd ft0, 0(sp)
    ",
    );
    m.run_to_poweroff();
    let o = m.read_u64s(OUT, 6);
    assert_eq!(o[0] & (SSTATUS_FS | SSTATUS_SD), 0, "FS off at reset");
    assert_eq!(
        o[1] & (SSTATUS_FS | SSTATUS_SD),
        1 << 13,
        "Initial, SD clear"
    );
    assert_eq!(
        o[2] & (SSTATUS_FS | SSTATUS_SD),
        SSTATUS_FS | SSTATUS_SD,
        "Dirty, SD set"
    );
    assert_eq!(o[3], 0xff, "fcsr keeps frm and fflags only");
    assert_eq!(o[4], 7);
    assert_eq!(o[5], 0x1f);
    let s = |n: &str| m.sym(n);
    check_traps(
        &m,
        &[
            illegal(&m, s("f_fadd_off")),
            illegal(&m, s("f_flw_off")),
            illegal(&m, s("f_fflags_off")),
            illegal(&m, s("f_fmv_off")),
            illegal(&m, s("f_cfld_off")),
            illegal(&m, s("f_rm5")),
            illegal(&m, s("f_dyn5")),
            illegal(&m, s("f_dyn7")),
            illegal(&m, s("f_fadd_h")),
            illegal(&m, s("f_fsd_off")),
        ],
    );
}

// ------------------------------------- floating point against the host

/// Rounding modes, by their assembler names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rm {
    Rne,
    Rtz,
    Rdn,
    Rup,
    Rmm,
}

const ALL_RM: [Rm; 5] = [Rm::Rne, Rm::Rtz, Rm::Rdn, Rm::Rup, Rm::Rmm];

impl Rm {
    fn name(self) -> &'static str {
        match self {
            Rm::Rne => "rne",
            Rm::Rtz => "rtz",
            Rm::Rdn => "rdn",
            Rm::Rup => "rup",
            Rm::Rmm => "rmm",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IntK {
    W,
    Wu,
    L,
    Lu,
}

const ALL_INT: [IntK; 4] = [IntK::W, IntK::Wu, IntK::L, IntK::Lu];

impl IntK {
    fn name(self) -> &'static str {
        match self {
            IntK::W => "w",
            IntK::Wu => "wu",
            IntK::L => "l",
            IntK::Lu => "lu",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FOp {
    Add,
    Sub,
    Mul,
    Div,
    Sqrt,
    /// fmadd (false, false), fmsub (false, true), fnmsub (true, false),
    /// fnmadd (true, true): negate the product, negate the addend.
    Fma(bool, bool),
    Min,
    Max,
    Eq,
    Lt,
    Le,
    SgnJ,
    SgnJn,
    SgnJx,
    Class,
    ToInt(IntK),
    FromInt(IntK),
    /// fcvt.s.d for a single-precision spec, fcvt.d.s for a double one.
    Convert,
}

#[derive(Clone, Copy, Debug)]
struct FSpec {
    double: bool,
    op: FOp,
    rm: Rm,
}

impl FSpec {
    /// The instruction: double operands in fa0..fa2, single ones in
    /// ft0..ft2, the integer operand in a0; F results in fa3, X results in
    /// t1.
    fn asm(&self) -> String {
        let p = if self.double { "d" } else { "s" };
        let [r1, r2, r3] = if self.double {
            ["fa0", "fa1", "fa2"]
        } else {
            ["ft0", "ft1", "ft2"]
        };
        let rm = self.rm.name();
        match self.op {
            FOp::Add => format!("fadd.{p} fa3, {r1}, {r2}, {rm}"),
            FOp::Sub => format!("fsub.{p} fa3, {r1}, {r2}, {rm}"),
            FOp::Mul => format!("fmul.{p} fa3, {r1}, {r2}, {rm}"),
            FOp::Div => format!("fdiv.{p} fa3, {r1}, {r2}, {rm}"),
            FOp::Sqrt => format!("fsqrt.{p} fa3, {r1}, {rm}"),
            FOp::Fma(np, na) => {
                let name = match (np, na) {
                    (false, false) => "fmadd",
                    (false, true) => "fmsub",
                    (true, false) => "fnmsub",
                    (true, true) => "fnmadd",
                };
                format!("{name}.{p} fa3, {r1}, {r2}, {r3}, {rm}")
            }
            FOp::Min => format!("fmin.{p} fa3, {r1}, {r2}"),
            FOp::Max => format!("fmax.{p} fa3, {r1}, {r2}"),
            FOp::Eq => format!("feq.{p} t1, {r1}, {r2}"),
            FOp::Lt => format!("flt.{p} t1, {r1}, {r2}"),
            FOp::Le => format!("fle.{p} t1, {r1}, {r2}"),
            FOp::SgnJ => format!("fsgnj.{p} fa3, {r1}, {r2}"),
            FOp::SgnJn => format!("fsgnjn.{p} fa3, {r1}, {r2}"),
            FOp::SgnJx => format!("fsgnjx.{p} fa3, {r1}, {r2}"),
            FOp::Class => format!("fclass.{p} t1, {r1}"),
            FOp::ToInt(k) => format!("fcvt.{}.{p} t1, {r1}, {rm}", k.name()),
            // Conversions of 32-bit integers to double are exact: no rm.
            FOp::FromInt(k) if self.double && matches!(k, IntK::W | IntK::Wu) => {
                format!("fcvt.d.{} fa3, a0", k.name())
            }
            FOp::FromInt(k) => format!("fcvt.{p}.{} fa3, a0, {rm}", k.name()),
            FOp::Convert if self.double => "fcvt.d.s fa3, ft0".to_string(),
            FOp::Convert => format!("fcvt.s.d fa3, fa0, {rm}"),
        }
    }

    fn x_result(&self) -> bool {
        matches!(
            self.op,
            FOp::Eq | FOp::Lt | FOp::Le | FOp::Class | FOp::ToInt(_)
        )
    }
}

fn fp_specs() -> Vec<FSpec> {
    let mut v = Vec::new();
    for double in [true, false] {
        let mut add = |op, rm| v.push(FSpec { double, op, rm });
        for rm in ALL_RM {
            for op in [
                FOp::Add,
                FOp::Sub,
                FOp::Mul,
                FOp::Div,
                FOp::Sqrt,
                FOp::Fma(false, false),
            ] {
                add(op, rm);
            }
            for k in ALL_INT {
                add(FOp::ToInt(k), rm);
            }
        }
        for op in [
            FOp::Fma(false, true),
            FOp::Fma(true, false),
            FOp::Fma(true, true),
        ] {
            add(op, Rm::Rne);
        }
        for op in [
            FOp::Min,
            FOp::Max,
            FOp::Eq,
            FOp::Lt,
            FOp::Le,
            FOp::SgnJ,
            FOp::SgnJn,
            FOp::SgnJx,
            FOp::Class,
            FOp::Convert,
        ] {
            add(op, Rm::Rne);
        }
        for k in ALL_INT {
            add(FOp::FromInt(k), Rm::Rne);
        }
    }
    v
}

/// What a case must produce: `value` if known, and `flags` on the bits not
/// in `mask`.
#[derive(Clone, Copy, Debug)]
struct Expect {
    value: Option<u64>,
    flags: u64,
    mask: u64,
}

impl Expect {
    fn exact(value: u64, flags: u64) -> Expect {
        Expect {
            value: Some(value),
            flags,
            mask: 0,
        }
    }
}

fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

fn sign_of(v: f64) -> std::cmp::Ordering {
    v.partial_cmp(&0.0).unwrap()
}

/// The host side of one precision.
trait HostFloat:
    Copy
    + PartialEq
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    const SIGN: u64;
    const QUIET: u64;
    const MIN_POS: Self;
    const MAX: Self;
    const ZERO: Self;
    fn from_raw(bits: u64) -> Self;
    fn raw(self) -> u64;
    /// The register image (NaN-boxed for singles).
    fn reg(self) -> u64;
    fn canonical_nan() -> u64;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn is_nan(self) -> bool {
        self.partial_cmp(&self).is_none()
    }
    fn is_inf(self) -> bool {
        self.to_f64().is_infinite()
    }
    fn is_zero(self) -> bool {
        self == Self::ZERO
    }
    fn is_snan(self) -> bool {
        self.is_nan() && self.raw() & Self::QUIET == 0
    }
    fn negative(self) -> bool {
        self.raw() & Self::SIGN != 0
    }
    fn abs(self) -> Self {
        Self::from_raw(self.raw() & !Self::SIGN)
    }
    /// The next value towards +inf (for finite values and -inf).
    fn next_up(self) -> Self {
        let b = self.raw();
        if self.is_zero() {
            Self::from_raw(1)
        } else if b & Self::SIGN == 0 {
            Self::from_raw(b + 1)
        } else {
            Self::from_raw(b - 1)
        }
    }
    fn next_down(self) -> Self {
        -(-self).next_up()
    }
    /// For a finite, valid, non-NaN `r` (the host's round-to-nearest-even
    /// result of `op`), whether the exact result is above, below or equal
    /// to `r`, and whether it is exactly halfway between `r` and its
    /// neighbour on that side; `None` when this cannot be computed exactly.
    fn exact_vs(op: FOp, a: Self, b: Self, c: Self, r: Self) -> Option<(std::cmp::Ordering, bool)>;
}

impl HostFloat for f64 {
    const SIGN: u64 = 1 << 63;
    const QUIET: u64 = 1 << 51;
    const MIN_POS: f64 = f64::MIN_POSITIVE;
    const MAX: f64 = f64::MAX;
    const ZERO: f64 = 0.0;
    fn from_raw(bits: u64) -> f64 {
        f64::from_bits(bits)
    }
    fn raw(self) -> u64 {
        self.to_bits()
    }
    fn reg(self) -> u64 {
        self.to_bits()
    }
    fn canonical_nan() -> u64 {
        CNAN_D
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn mul_add(self, b: f64, c: f64) -> f64 {
        f64::mul_add(self, b, c)
    }
    fn exact_vs(op: FOp, a: f64, b: f64, c: f64, r: f64) -> Option<(std::cmp::Ordering, bool)> {
        use std::cmp::Ordering::*;
        let _ = c;
        let half = |ord| {
            let (lo, hi) = if ord == Greater {
                (r, HostFloat::next_up(r))
            } else {
                (HostFloat::next_down(r), r)
            };
            (hi - lo) / 2.0
        };
        let safe = |v: f64| v == 0.0 || (v.abs() >= pow2(-960) && v.abs() <= pow2(960));
        match op {
            FOp::Add | FOp::Sub => {
                let b = if op == FOp::Sub { -b } else { b };
                let (s, e) = two_sum(a, b);
                debug_assert_eq!(s, r);
                let ord = sign_of(e);
                Some((ord, ord != Equal && e.abs() == half(ord)))
            }
            FOp::Mul => {
                if a == 0.0 || b == 0.0 {
                    return Some((Equal, false));
                }
                if !(r.abs() >= pow2(-960) && r.abs() <= pow2(960)) {
                    return None;
                }
                let e = a.mul_add(b, -r);
                let ord = sign_of(e);
                Some((ord, ord != Equal && e.abs() == half(ord)))
            }
            FOp::Div => {
                if a == 0.0 {
                    return Some((Equal, false));
                }
                if !(safe(a) && safe(b) && safe(r)) || r == 0.0 {
                    return None;
                }
                let res = (-r).mul_add(b, a);
                let ord = if b > 0.0 { sign_of(res) } else { sign_of(-res) };
                Some((ord, ord != Equal && res.abs() == half(ord) * b.abs()))
            }
            FOp::Sqrt => {
                if a == 0.0 {
                    return Some((Equal, false));
                }
                if !safe(a) {
                    return None;
                }
                Some((sign_of((-r).mul_add(r, a)), false))
            }
            _ => None,
        }
    }
}

impl HostFloat for f32 {
    const SIGN: u64 = 1 << 31;
    const QUIET: u64 = 1 << 22;
    const MIN_POS: f32 = f32::MIN_POSITIVE;
    const MAX: f32 = f32::MAX;
    const ZERO: f32 = 0.0;
    fn from_raw(bits: u64) -> f32 {
        f32::from_bits(bits as u32)
    }
    fn raw(self) -> u64 {
        self.to_bits() as u64
    }
    fn reg(self) -> u64 {
        boxed(self)
    }
    fn canonical_nan() -> u64 {
        CNAN_S
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn mul_add(self, b: f32, c: f32) -> f32 {
        f32::mul_add(self, b, c)
    }
    /// Exact in doubles: products of singles are exact, and the other
    /// differences below are of nearby values.
    fn exact_vs(op: FOp, a: f32, b: f32, c: f32, r: f32) -> Option<(std::cmp::Ordering, bool)> {
        use std::cmp::Ordering::*;
        let (a64, b64, c64, r64) = (a as f64, b as f64, c as f64, r as f64);
        let half = |ord| {
            let (lo, hi) = if ord == Greater {
                (r, HostFloat::next_up(r))
            } else {
                (HostFloat::next_down(r), r)
            };
            (hi as f64 - lo as f64) / 2.0
        };
        // exact - r as an unevaluated sum d + e of exact doubles.
        let from_sum = |s: f64, e: f64| {
            let (t, e2) = two_sum(s - r64, e);
            let ord = sign_of(t);
            Some((ord, ord != Equal && e2 == 0.0 && t.abs() == half(ord)))
        };
        match op {
            FOp::Add | FOp::Sub => {
                let b64 = if op == FOp::Sub { -b64 } else { b64 };
                let (s, e) = two_sum(a64, b64);
                from_sum(s, e)
            }
            FOp::Mul => {
                let d = a64 * b64 - r64;
                let ord = sign_of(d);
                Some((ord, ord != Equal && d.abs() == half(ord)))
            }
            FOp::Div => {
                if a == 0.0 {
                    return Some((Equal, false));
                }
                let res = a64 - r64 * b64;
                let ord = if b64 > 0.0 {
                    sign_of(res)
                } else {
                    sign_of(-res)
                };
                Some((ord, ord != Equal && res.abs() == half(ord) * b64.abs()))
            }
            FOp::Sqrt => Some((sign_of(a64 - r64 * r64), false)),
            FOp::Fma(np, na) => {
                let p = if np { -a64 * b64 } else { a64 * b64 };
                let c64 = if na { -c64 } else { c64 };
                let (s, e) = two_sum(p, c64);
                from_sum(s, e)
            }
            _ => None,
        }
    }
}

/// The IEEE-754 result of `op` in rounding mode `rm`, from the host's
/// round-to-nearest-even result and the exact comparison.
fn model_arith<F: HostFloat>(op: FOp, rm: Rm, a: F, b: F, c: F) -> Expect {
    use std::cmp::Ordering::*;
    let inputs: Vec<F> = match op {
        FOp::Sqrt => vec![a],
        FOp::Fma(..) => vec![a, b, c],
        _ => vec![a, b],
    };
    let any_nan = inputs.iter().any(|v| v.is_nan());
    let snan = inputs.iter().any(|v| v.is_snan());
    let zero_inf = |x: F, y: F| (x.is_inf() && y.is_zero()) || (x.is_zero() && y.is_inf());
    let (pa, addend, add_like) = match op {
        FOp::Fma(np, na) => (if np { -a } else { a }, if na { -c } else { c }, true),
        FOp::Sub => (a, -b, true),
        _ => (a, b, op == FOp::Add),
    };
    let invalid = snan
        || match op {
            FOp::Add | FOp::Sub => {
                !any_nan && a.is_inf() && addend.is_inf() && a.negative() != addend.negative()
            }
            FOp::Mul => zero_inf(a, b),
            FOp::Div => (a.is_zero() && b.is_zero()) || (a.is_inf() && b.is_inf()),
            FOp::Sqrt => !any_nan && a.negative() && !a.is_zero(),
            FOp::Fma(..) => {
                zero_inf(a, b)
                    || (!any_nan && {
                        let prod_inf = a.is_inf() || b.is_inf();
                        let prod_neg = pa.negative() != b.negative();
                        prod_inf && addend.is_inf() && prod_neg != addend.negative()
                    })
            }
            _ => unreachable!(),
        };
    if invalid || any_nan {
        return Expect::exact(F::canonical_nan(), if invalid { NV } else { 0 });
    }
    let r = match op {
        FOp::Add => a + b,
        FOp::Sub => a - b,
        FOp::Mul => a * b,
        FOp::Div => a / b,
        FOp::Sqrt => a.sqrt(),
        FOp::Fma(..) => pa.mul_add(b, addend),
        _ => unreachable!(),
    };
    if inputs.iter().any(|v| v.is_inf()) {
        return Expect::exact(r.reg(), 0);
    }
    if op == FOp::Div && b.is_zero() {
        return Expect::exact(r.reg(), DZ);
    }
    if r.is_inf() {
        // Overflow in round-to-nearest: the exact result is at least
        // MAX + half an ulp. Directed modes may round to MAX, and whether
        // that counts as an overflow depends on digits the host did not
        // give us, so OF is not checked for them.
        let toward_max = match rm {
            Rm::Rne | Rm::Rmm => false,
            Rm::Rtz => true,
            Rm::Rdn => !r.negative(),
            Rm::Rup => r.negative(),
        };
        let v = if toward_max {
            if r.negative() {
                -F::MAX
            } else {
                F::MAX
            }
        } else {
            r
        };
        let mask = if matches!(rm, Rm::Rne | Rm::Rmm) {
            0
        } else {
            OF
        };
        return Expect {
            value: Some(v.reg()),
            flags: OF | NX,
            mask,
        };
    }
    let Some((ord, tie)) = F::exact_vs(op, a, b, c, r) else {
        return Expect {
            value: (rm == Rm::Rne).then(|| r.reg()),
            flags: 0,
            mask: NX | UF | if rm == Rm::Rne { 0 } else { OF },
        };
    };
    let result = if ord == Equal && add_like && r.is_zero() {
        // An exact zero sum: -0 only from two negative zeros, or in rdn
        // from operands of opposite signs (or a non-zero cancellation).
        let (first_zero, first_neg) = match op {
            FOp::Fma(..) => (pa.is_zero() || b.is_zero(), pa.negative() != b.negative()),
            _ => (pa.is_zero(), pa.negative()),
        };
        let negative = if first_zero && addend.is_zero() && first_neg == addend.negative() {
            first_neg
        } else {
            rm == Rm::Rdn
        };
        if negative {
            -F::ZERO
        } else {
            F::ZERO
        }
    } else if ord == Equal {
        r
    } else {
        let (lo, hi) = if ord == Greater {
            (r, r.next_up())
        } else {
            (r.next_down(), r)
        };
        let positive = if r.is_zero() {
            ord == Greater
        } else {
            !r.negative()
        };
        match rm {
            Rm::Rne => r,
            Rm::Rtz => {
                if positive {
                    lo
                } else {
                    hi
                }
            }
            Rm::Rdn => lo,
            Rm::Rup => hi,
            Rm::Rmm => {
                if !tie {
                    r
                } else if positive {
                    hi
                } else {
                    lo
                }
            }
        }
    };
    let inexact = ord != Equal;
    let mut flags = if inexact { NX } else { 0 };
    let mut mask = 0;
    if result.is_inf() {
        flags |= OF;
    }
    if inexact && result.abs() < F::MIN_POS {
        flags |= UF;
    }
    if inexact && result.abs() == F::MIN_POS {
        mask |= UF;
    }
    Expect {
        value: Some(result.reg()),
        flags,
        mask,
    }
}

fn class_of<F: HostFloat>(v: F) -> u64 {
    let neg = v.negative();
    let sub = !v.is_zero() && !v.is_nan() && v.abs() < F::MIN_POS;
    let bit = if v.is_nan() {
        if v.is_snan() {
            8
        } else {
            9
        }
    } else if v.is_inf() {
        if neg {
            0
        } else {
            7
        }
    } else if v.is_zero() {
        if neg {
            3
        } else {
            4
        }
    } else if sub {
        if neg {
            2
        } else {
            5
        }
    } else if neg {
        1
    } else {
        6
    };
    1 << bit
}

fn model_to_int(x: f64, snan_or_nan: bool, k: IntK, rm: Rm) -> Expect {
    let (min, max): (f64, f64) = match k {
        IntK::W => (-pow2(31), pow2(31) - 1.0),
        IntK::Wu => (0.0, pow2(32) - 1.0),
        IntK::L => (-pow2(63), pow2(63)),
        IntK::Lu => (0.0, pow2(64)),
    };
    let pack = |v: i128| -> u64 {
        match k {
            IntK::W | IntK::Wu => sext32(v as u64),
            _ => v as u64,
        }
    };
    let max_int: i128 = match k {
        IntK::W => i32::MAX as i128,
        IntK::Wu => u32::MAX as i128,
        IntK::L => i64::MAX as i128,
        IntK::Lu => u64::MAX as i128,
    };
    let min_int: i128 = match k {
        IntK::W => i32::MIN as i128,
        IntK::L => i64::MIN as i128,
        _ => 0,
    };
    if snan_or_nan {
        return Expect::exact(pack(max_int), NV);
    }
    let rounded = match rm {
        Rm::Rne => x.round_ties_even(),
        Rm::Rtz => x.trunc(),
        Rm::Rdn => x.floor(),
        Rm::Rup => x.ceil(),
        Rm::Rmm => x.round(),
    };
    // For L and Lu `max` is the first value out of range.
    let too_big = match k {
        IntK::L | IntK::Lu => rounded >= max,
        _ => rounded > max,
    };
    if too_big {
        return Expect::exact(pack(max_int), NV);
    }
    if rounded < min {
        return Expect::exact(pack(min_int), NV);
    }
    Expect::exact(pack(rounded as i128), if rounded != x { NX } else { 0 })
}

fn model<F: HostFloat>(spec: &FSpec, a: F, b: F, c: F, int: u64, other_a: u64) -> Expect {
    match spec.op {
        FOp::Add | FOp::Sub | FOp::Mul | FOp::Div | FOp::Sqrt | FOp::Fma(..) => {
            model_arith(spec.op, spec.rm, a, b, c)
        }
        FOp::Min | FOp::Max => {
            let flags = if a.is_snan() || b.is_snan() { NV } else { 0 };
            let v = if a.is_nan() && b.is_nan() {
                F::canonical_nan()
            } else if a.is_nan() {
                b.reg()
            } else if b.is_nan() {
                a.reg()
            } else if a == b {
                // Equal values: only the zeros differ, by sign.
                let want_neg = (spec.op == FOp::Min) == (a.negative() || b.negative());
                let pick = if a.negative() == want_neg { a } else { b };
                pick.reg()
            } else if (a < b) == (spec.op == FOp::Min) {
                a.reg()
            } else {
                b.reg()
            };
            Expect::exact(v, flags)
        }
        FOp::Eq => Expect::exact(
            (a == b) as u64,
            if a.is_snan() || b.is_snan() { NV } else { 0 },
        ),
        FOp::Lt | FOp::Le => Expect::exact(
            if spec.op == FOp::Lt { a < b } else { a <= b } as u64,
            if a.is_nan() || b.is_nan() { NV } else { 0 },
        ),
        FOp::SgnJ | FOp::SgnJn | FOp::SgnJx => {
            let s = F::SIGN;
            let sign = match spec.op {
                FOp::SgnJ => b.raw() & s,
                FOp::SgnJn => !b.raw() & s,
                _ => (a.raw() ^ b.raw()) & s,
            };
            Expect::exact(F::from_raw((a.raw() & !s) | sign).reg(), 0)
        }
        FOp::Class => Expect::exact(class_of(a), 0),
        FOp::ToInt(k) => model_to_int(a.to_f64(), a.is_nan(), k, spec.rm),
        FOp::FromInt(k) => {
            let x: i128 = match k {
                IntK::W => int as i32 as i128,
                IntK::Wu => int as u32 as i128,
                IntK::L => int as i64 as i128,
                IntK::Lu => int as i128,
            };
            let (reg, back) = if spec.double {
                let v = x as f64;
                (v.to_bits(), v as i128)
            } else {
                let v = x as f32;
                (boxed(v), v as i128)
            };
            Expect::exact(reg, if back != x { NX } else { 0 })
        }
        FOp::Convert if spec.double => {
            // fcvt.d.s of the single operand `a`.
            if a.is_nan() {
                Expect::exact(CNAN_D, if a.is_snan() { NV } else { 0 })
            } else {
                Expect::exact(a.to_f64().to_bits(), 0)
            }
        }
        FOp::Convert => {
            // fcvt.s.d of the double operand.
            let x = f64::from_bits(other_a);
            if x.is_nan() {
                let snan = x.to_bits() & (1 << 51) == 0;
                return Expect::exact(CNAN_S, if snan { NV } else { 0 });
            }
            let r = x as f32;
            let inexact = r as f64 != x;
            if r.is_infinite() && !x.is_infinite() {
                return Expect::exact(boxed(r), OF | NX);
            }
            let mut flags = if inexact { NX } else { 0 };
            let mut mask = 0;
            if inexact && r.abs() < f32::MIN_POSITIVE {
                flags |= UF;
            }
            if inexact && r.abs() == f32::MIN_POSITIVE {
                mask |= UF;
            }
            Expect {
                value: Some(boxed(r)),
                flags,
                mask,
            }
        }
    }
}

/// One row of FP operands: three doubles and three singles.
#[derive(Clone, Copy, Debug)]
struct FpRow {
    d: [u64; 3],
    s: [u32; 3],
}

fn fp_program(specs: &[FSpec]) -> Program {
    let mut body = String::from(
        "    li t0, 0x2000\n    csrs sstatus, t0\n    li s0, DATA\n    ld s1, 0(s0)\n    addi s0, s0, 8\n    li s2, OUT\n\
         1:  beqz s1, 2f\n    fld fa0, 0(s0)\n    fld fa1, 8(s0)\n    fld fa2, 16(s0)\n\
             flw ft0, 24(s0)\n    flw ft1, 32(s0)\n    flw ft2, 40(s0)\n    ld a0, 0(s0)\n",
    );
    for spec in specs {
        body += &format!("    fsflags zero\n    {}\n    frflags t2\n", spec.asm());
        if !spec.x_result() {
            body += "    fmv.x.d t1, fa3\n";
        }
        body += "    sd t1, 0(s2)\n    sd t2, 8(s2)\n    addi s2, s2, 16\n";
    }
    body += "    addi s0, s0, 48\n    addi s1, s1, -1\n    j 1b\n2:\n";
    assemble(&program(&body))
}

fn check_fp_rows(rows: &[FpRow]) -> Result<(), TestCaseError> {
    static SPECS: OnceLock<(Vec<FSpec>, Program)> = OnceLock::new();
    let (specs, prog) = SPECS.get_or_init(|| {
        let specs = fp_specs();
        let prog = fp_program(&specs);
        (specs, prog)
    });
    let mut m = Machine::load(prog);
    m.write_u64(DATA, rows.len() as u64);
    for (i, row) in rows.iter().enumerate() {
        let at = DATA + 8 + 48 * i as u64;
        for j in 0..3 {
            m.write_u64(at + 8 * j as u64, row.d[j]);
            m.write_u64(at + 24 + 8 * j as u64, row.s[j] as u64);
        }
    }
    m.run_to_poweroff();
    prop_assert_eq!(m.traps(), vec![]);
    let got = m.read_u64s(OUT, 2 * specs.len() * rows.len());
    let mut bad = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        for (j, spec) in specs.iter().enumerate() {
            let k = 2 * (i * specs.len() + j);
            let (value, flags) = (got[k], got[k + 1]);
            let want = if spec.double && spec.op == FOp::Convert {
                // fcvt.d.s reads the single operand.
                model(spec, f32::from_bits(row.s[0]), 0.0, 0.0, 0, 0)
            } else if spec.double {
                let [a, b, c] = row.d.map(f64::from_bits);
                model(spec, a, b, c, row.d[0], 0)
            } else {
                let [a, b, c] = row.s.map(f32::from_bits);
                model(spec, a, b, c, row.d[0], row.d[0])
            };
            let value_ok = want.value.is_none_or(|v| v == value);
            let flags_ok = (flags & !want.mask) == (want.flags & !want.mask);
            if !value_ok || !flags_ok {
                bad.push(format!(
                    "{} on {:x?}: got {value:#018x} flags {flags:#x}, want {:x?} flags {:#x} (mask {:#x})",
                    spec.asm(),
                    if spec.double { format!("{:x?}", row.d) } else { format!("{:x?}", row.s) },
                    want.value,
                    want.flags,
                    want.mask
                ));
            }
        }
    }
    prop_assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    Ok(())
}

const SPECIAL_D: &[u64] = &[
    0,
    1 << 63,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    CNAN_D,
    SNAN_D,
    0x0010_0000_0000_0000, // MIN_POSITIVE
    0x000f_ffff_ffff_ffff, // largest subnormal
    1,                     // smallest subnormal
    0x8000_0000_0000_0001,
    0x7fef_ffff_ffff_ffff, // MAX
    0xffef_ffff_ffff_ffff,
    0x3ff0_0000_0000_0000, // 1
    0xbff0_0000_0000_0000,
    0x3ff0_0000_0000_0001,
    0x4008_0000_0000_0000, // 3
    0x3fe0_0000_0000_0000, // 0.5
    0x4004_0000_0000_0000, // 2.5
    0x43e0_0000_0000_0000, // 2^63
    0x41e0_0000_0000_0000, // 2^31
    0x41ef_ffff_ffe0_0000, // 2^32 - 1
    0xc1e0_0000_0000_0000, // -2^31
];

const SPECIAL_S: &[u32] = &[
    0,
    1 << 31,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    SNAN_S,
    0x0080_0000,
    0x007f_ffff,
    1,
    0x8000_0001,
    0x7f7f_ffff,
    0xff7f_ffff,
    0x3f80_0000,
    0xbf80_0000,
    0x3f80_0001,
    0x4040_0000,
    0x3f00_0000,
    0x4020_0000,
    0x4f00_0000, // 2^31
    0x4f80_0000, // 2^32
    0xcf00_0000,
];

fn fp_double() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        2 => proptest::sample::select(SPECIAL_D),
        // Values near each other and near integers make cancellation,
        // ties and exact results likely.
        2 => (any::<i32>(), -70i32..70).prop_map(|(m, e)| (m as f64 * pow2(e)).to_bits()),
        1 => (any::<u64>(), 0x3c0u64..0x440).prop_map(|(m, e)| (e << 52) | (m & ((1 << 52) - 1))),
        1 => (any::<u64>(), 0u64..3).prop_map(|(m, e)| (e << 52) | (m & ((1 << 52) - 1)) | (m & (1 << 63))),
    ]
}

fn fp_single() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => any::<u32>(),
        2 => proptest::sample::select(SPECIAL_S),
        2 => (any::<i16>(), -30i32..30).prop_map(|(m, e)| (m as f32 * pow2f(e)).to_bits()),
        1 => (any::<u32>(), 0x70u32..0x90).prop_map(|(m, e)| (e << 23) | (m & ((1 << 23) - 1))),
        1 => (any::<u32>(), 0u32..3).prop_map(|(m, e)| (e << 23) | (m & ((1 << 23) - 1)) | (m & (1 << 31))),
    ]
}

fn fp_row() -> impl Strategy<Value = FpRow> {
    (
        [fp_double(), fp_double(), fp_double()],
        [fp_single(), fp_single(), fp_single()],
    )
        .prop_map(|(d, s)| FpRow { d, s })
}

#[test]
fn fp_ops_on_special_operands() {
    // Every pair of special values (the third operand cycles through them).
    let mut rows = Vec::new();
    for (i, &a) in SPECIAL_D.iter().enumerate() {
        for (j, &b) in SPECIAL_D.iter().enumerate() {
            let sa = SPECIAL_S[i % SPECIAL_S.len()];
            let sb = SPECIAL_S[j % SPECIAL_S.len()];
            let k = (i + j) % SPECIAL_D.len();
            rows.push(FpRow {
                d: [a, b, SPECIAL_D[k]],
                s: [sa, sb, SPECIAL_S[k % SPECIAL_S.len()]],
            });
        }
    }
    check_fp_rows(&rows).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn fp_ops_match_the_host(rows in proptest::collection::vec(fp_row(), 1..24)) {
        check_fp_rows(&rows)?;
    }
}

// ----------------------------------------------- more memory management

#[test]
fn sfence_vma_reaches_superpages_and_victim_tlb_entries() {
    const VMEGA: u64 = 0x2000_0000;
    const PMEGA2: u64 = 0x8020_0000; // another 2 MiB-aligned page
                                     // Ten pages that all index TLB slot 0 (stride 256 pages): most of
                                     // them end up in the victim TLB.
    const VBASE: u64 = 0x3000_0000;
    const STRIDE: u64 = 256 * 4096;
    let mut m = Machine::new(&[]);
    let mut pt = PageTables::new(&m, 3);
    pt.identity_ram(&m);
    let mega_pte = pt.map(&m, VMEGA, PMEGA, PAGE_2M, RWAD);
    let mut ptes = Vec::new();
    for i in 0..10u64 {
        ptes.push(pt.map(&m, VBASE + i * STRIDE, P1 + 0x1000 * (i % 8), PAGE_4K, RWAD));
    }
    let mega2 = (m.read_u64(mega_pte) & 0x3ff) | ((PMEGA2 >> 12) << 10);
    let small2 = (m.read_u64(ptes[1]) & 0x3ff) | ((P10 >> 12) << 10);
    fill_tags(&m, PMEGA + 0x5000, 0x1000);
    fill_tags(&m, PMEGA2 + 0x5000, 0x1000);
    for i in 0..8 {
        fill_tags(&m, P1 + 0x1000 * i, 0x1000);
    }
    fill_tags(&m, P10, 0x1000);
    m.load_program(&assemble(&program(&format!(
        "
    .macro rec reg
    sd \\reg, 0(s11)
    addi s11, s11, 8
    .endm
    li s11, OUT
    li t0, {satp:#x}
    csrw satp, t0
    sfence.vma
    # A superpage: flushing any address inside it drops it.
    li s0, {VMEGA:#x} + 0x5000
    ld t0, 0(s0)
    rec t0                          # PMEGA + 0x5000
    li t1, {mega_pte:#x}
    li t0, {mega2:#x}
    sd t0, 0(t1)
    li t2, {VMEGA:#x} + 0x100000
    sfence.vma t2, zero
    ld t0, 0(s0)
    rec t0                          # PMEGA2 + 0x5000
    # Conflicting pages: touch all, remap the second, flush it alone.
    li s1, {VBASE:#x}
    li s2, {STRIDE:#x}
    li s3, 10
    mv s4, s1
1:  ld t0, 0(s4)
    add s4, s4, s2
    addi s3, s3, -1
    bnez s3, 1b
    add s5, s1, s2                  # VBASE + STRIDE
    li t1, {pte1:#x}
    li t0, {small2:#x}
    sd t0, 0(t1)
    sfence.vma s5, zero
    ld t0, 0(s5)
    rec t0                          # P10
    ld t0, 0(s1)
    rec t0                          # unchanged page
    csrw satp, zero
    ",
        satp = pt.satp(),
        pte1 = ptes[1],
    ))));
    m.run_to_poweroff();
    m.assert_traps(&[]);
    assert_eq!(
        m.read_u64s(OUT, 4),
        [tag(PMEGA + 0x5000), tag(PMEGA2 + 0x5000), tag(P10), tag(P1)]
    );
}

#[test]
fn faulting_accesses_write_nothing() {
    const VC: u64 = 0x1000_6000; // mapped; VC + 4K unmapped
    let mut m = Machine::new(&[]);
    let mut pt = PageTables::new(&m, 3);
    pt.identity_ram(&m);
    pt.map(&m, VC, P7, PAGE_4K, RWAD);
    fill_tags(&m, P7, 0x1000);
    m.load_program(&assemble(&program(&format!(
        "
    li t0, {satp:#x}
    csrw satp, t0
    sfence.vma
    li s0, {VC:#x} + 0x1000
    li s1, -1
    li s2, 0x77
f_cross_st:
    sd s1, -4(s0)                   # half on the unmapped page
f_cross_ld:
    ld s2, -2(s0)                   # s2 keeps 0x77
    csrw satp, zero
    # Physical addresses outside RAM: access faults.
    li s3, 0x1000
f_ld_access:
    ld t0, 0(s3)
f_st_access:
    sd t0, 8(s3)
f_amo_access:
    amoadd.d t0, t0, (s3)
    on_trap 1f
f_fetch_access:
    jr s3
1:  li t0, OUT
    sd s2, 0(t0)
    ",
        satp = pt.satp(),
    ))));
    m.run_to_poweroff();
    assert_eq!(
        m.read_u64(P7 + 0xff8),
        tag(P7 + 0xff8),
        "first half not written"
    );
    assert_eq!(m.out(0), 0x77, "faulting load left rd alone");
    let t = m.traps();
    assert_eq!(t.len(), 6, "{t:#x?}");
    // The two page-crossing faults name an address in the unmapped page.
    let second_page = VC + 0x1000;
    assert_eq!((t[0].cause, t[0].epc), (STORE_PAGE, m.sym("f_cross_st")));
    assert_eq!(t[0].tval & !0xfff, second_page, "{:#x}", t[0].tval);
    assert_eq!((t[1].cause, t[1].epc), (LOAD_PAGE, m.sym("f_cross_ld")));
    assert_eq!(t[1].tval & !0xfff, second_page, "{:#x}", t[1].tval);
    check_trap_list(
        &t[2..],
        &[
            trap(LOAD_ACCESS, 0x1000, m.sym("f_ld_access")),
            trap(STORE_ACCESS, 0x1008, m.sym("f_st_access")),
            trap(STORE_ACCESS, 0x1000, m.sym("f_amo_access")),
            trap(FETCH_ACCESS, 0x1000, 0x1000),
        ],
    );
}

// ------------------------------------------------------ hostile guests

/// Reserved or unimplemented encodings, each of which must raise an
/// illegal-instruction exception (with the FPU on).
const ILLEGAL_32: &[(u32, &str)] = &[
    (0x0000_0000, "all zeros"),
    (0xffff_ffff, "all ones (a >= 48-bit encoding)"),
    (0x0000_001f, "48-bit prefix"),
    (0x0000_000b, "custom-0"),
    (
        (1 << 25) | (5 << 15) | (1 << 12) | (5 << 7) | 0x1b,
        "slliw with shamt[5]",
    ),
    (
        (0x08 << 26) | (5 << 15) | (5 << 12) | (5 << 7) | 0x13,
        "srli with a bad funct6",
    ),
    ((0x02 << 25) | (5 << 15) | (5 << 7) | 0x33, "OP funct7 = 2"),
    (
        (0x20 << 25) | (5 << 15) | (7 << 12) | (5 << 7) | 0x33,
        "and with funct7 = 0x20",
    ),
    (
        (0x20 << 25) | (5 << 15) | (5 << 7) | 0x3b | (1 << 12),
        "sllw with funct7 = 0x20",
    ),
    ((7 << 12) | (5 << 15) | (6 << 7) | 0x03, "load funct3 = 7"),
    ((4 << 12) | (5 << 15) | 0x23, "store funct3 = 4"),
    ((2 << 12) | 0x63, "branch funct3 = 2"),
    ((1 << 12) | (1 << 15) | 0x67, "jalr funct3 = 1"),
    (
        (0x02 << 27) | (1 << 20) | (10 << 15) | (2 << 12) | (5 << 7) | 0x2f,
        "lr.w with rs2 != 0",
    ),
    ((10 << 15) | (5 << 7) | 0x2f, "AMO funct3 = 0"),
    (
        (0x05 << 27) | (10 << 15) | (2 << 12) | (5 << 7) | 0x2f,
        "AMO funct5 = 5",
    ),
    ((2 << 12) | 0x0f, "MISC-MEM funct3 = 2"),
    ((4 << 12) | 0x73, "SYSTEM funct3 = 4"),
    ((5 << 7) | 0x73, "ecall with rd != 0"),
    (0x0020_0073, "uret"),
    (0x7b20_0073, "dret"),
    (0x3020_0073, "mret"),
    ((0x02 << 25) | (1 << 20) | (2 << 7) | 0x53, "fadd.h"),
    ((0x03 << 25) | (1 << 20) | (2 << 7) | 0x53, "fadd.q"),
    (
        (0x2d << 25) | (1 << 20) | (2 << 7) | 0x53,
        "fsqrt.d with rs2 = 1",
    ),
    (
        (0x61 << 25) | (4 << 20) | (1 << 12) | (5 << 7) | 0x53,
        "fcvt with rs2 = 4",
    ),
    (
        (0x70 << 25) | (2 << 12) | (5 << 7) | 0x53,
        "fmv.x.w with funct3 = 2",
    ),
    (
        (0x10 << 25) | (3 << 12) | (2 << 7) | 0x53,
        "fsgnj funct3 = 3",
    ),
    (
        (0x50 << 25) | (3 << 12) | (5 << 7) | 0x53,
        "fcmp funct3 = 3",
    ),
    ((0x20 << 25) | (2 << 7) | 0x53, "fcvt.s.s"),
    ((4 << 12) | (2 << 7) | 0x07, "flq"),
    ((2 << 25) | (2 << 7) | 0x43, "fmadd.h"),
];

/// Reserved 16-bit encodings (each followed by c.nop in the program).
const ILLEGAL_16: &[(u16, &str)] = &[
    (0x0004, "c.addi4spn with a zero immediate"),
    (0x4002, "c.lwsp x0"),
    (0x6002, "c.ldsp x0"),
    (0x8002, "c.jr x0"),
    (0x2001, "c.addiw x0"),
    (0x6081, "c.lui with a zero immediate"),
    (0x6101, "c.addi16sp with a zero immediate"),
    (0x8000, "quadrant 0, funct3 = 4"),
    (0x9c41, "quadrant 1 reserved ALU op"),
];

#[test]
fn reserved_encodings_are_illegal() {
    let mut body = String::from("    li t0, 0x2000\n    csrs sstatus, t0\n");
    for (i, (w, _)) in ILLEGAL_32.iter().enumerate() {
        body += &format!("ill32_{i}:\n    .word {w:#x}\n");
    }
    for (i, (h, _)) in ILLEGAL_16.iter().enumerate() {
        body += &format!("ill16_{i}:\n    .half {h:#x}, 0x0001\n");
    }
    let mut m = Machine::with_program(&body);
    m.run_to_poweroff();
    let traps = m.traps();
    let mut want = Vec::new();
    for (i, (w, what)) in ILLEGAL_32.iter().enumerate() {
        let epc = m.sym(&format!("ill32_{i}"));
        // A word whose low half is a 16-bit encoding is reported as that.
        let bits = if w & 3 != 3 || w & 0x1f == 0x1f {
            *w as u64 & 0xffff
        } else {
            *w as u64
        };
        want.push((epc, bits, *what));
    }
    for (i, (h, what)) in ILLEGAL_16.iter().enumerate() {
        want.push((m.sym(&format!("ill16_{i}")), *h as u64, *what));
    }
    let got: Vec<(u64, u64)> = traps.iter().map(|t| (t.cause, t.epc)).collect();
    let expect: Vec<(u64, u64)> = want.iter().map(|w| (ILLEGAL, w.0)).collect();
    if got != expect {
        let missing: Vec<&str> = want
            .iter()
            .filter(|w| !traps.iter().any(|t| t.epc == w.0 && t.cause == ILLEGAL))
            .map(|w| w.2)
            .collect();
        panic!("not all reserved encodings trapped; missing: {missing:?}\n{traps:#x?}");
    }
    for (t, (_, bits, what)) in traps.iter().zip(&want) {
        assert!(
            t.tval == 0 || t.tval == *bits,
            "{what}: stval {:#x}",
            t.tval
        );
    }
}

/// Where the fuzz program's random words go.
const FUZZ: u64 = RAM_BASE + 0x10000;

fn fuzz_program() -> &'static Program {
    static P: OnceLock<Program> = OnceLock::new();
    P.get_or_init(|| {
        let mut body = String::from(
            "    li t6, DATA\n    ld t0, 256(t6)\n    li t1, 0x100\n    csrs sstatus, t1\n    beqz t0, 1f\n    csrc sstatus, t1\n\
             1:  li t0, 0x2000\n    ld t2, 264(t6)\n    beqz t2, 2f\n    csrs sstatus, t0\n\
             2:  li t0, FUZZ\n    csrw sepc, t0\n",
        );
        for r in 1..=31 {
            body += &format!("    ld x{r}, {}(t6)\n", 8 * r);
        }
        body += "    sret\n";
        assemble(&program(&format!(".equ FUZZ, {FUZZ:#x}\n{body}")))
    })
}

/// CSRs worth hitting on purpose: the S-mode state, the FP CSRs, the
/// counters, and some that do not exist here.
const FUZZ_CSRS: &[u32] = &[
    0x001, 0x002, 0x003, 0x100, 0x104, 0x105, 0x106, 0x10a, 0x140, 0x141, 0x142, 0x143, 0x144,
    0x180, 0xc00, 0xc01, 0xc02, 0x300, 0x5c0, 0x7c0,
];

/// Random words, with CSR accesses, system instructions and memory
/// accesses made more likely than chance would.
fn fuzz_word() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => any::<u32>(),
        2 => (proptest::sample::select(FUZZ_CSRS), 0u32..8, 0u32..32, 0u32..32).prop_map(
            |(csr, f3, rs1, rd)| (csr << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x73
        ),
        1 => proptest::sample::select(&[
            0x0000_0073u32, // ecall
            0x0010_0073,    // ebreak
            0x1020_0073,    // sret
            0x1200_0073,    // sfence.vma
            0x0000_100f,    // fence.i
            0x0ff0_000f,    // fence
        ][..]),
        2 => (any::<u32>(), proptest::sample::select(&[0x03u32, 0x23, 0x2f, 0x07, 0x27][..]))
            .prop_map(|(w, opcode)| (w & !0x7f) | opcode),
    ]
}

/// Register values: random, small, RAM addresses, and SBI extension IDs
/// (not the timer or HSM, whose calls could park the hart until a random
/// deadline).
fn fuzz_reg() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        2 => 0u64..64,
        1 => RAM_BASE..RAM_BASE + RAM_SIZE,
        1 => proptest::sample::select(&[0x10u64, 0x73_5049, 0x5246_4e43, 0x4442_434e, 0x5352_5354][..]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random instructions, in S- or U-mode, with random registers, must
    /// never bring the host down: the run ends (power-off after the trap
    /// limit, a fetch fault, or the instruction limit) without a panic.
    #[test]
    fn random_instructions_never_crash_the_host(
        words in proptest::collection::vec(fuzz_word(), 64),
        regs in proptest::collection::vec(fuzz_reg(), 31),
        user in any::<bool>(),
        fpu in any::<bool>(),
    ) {
        let mut m = Machine::load(fuzz_program());
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        m.write(FUZZ, &bytes);
        // After the random code: zeros, which are illegal instructions.
        for (i, r) in regs.iter().enumerate() {
            m.write_u64(DATA + 8 * (i as u64 + 1), *r);
        }
        m.write_u64(DATA + 256, user as u64);
        m.write_u64(DATA + 264, fpu as u64);
        let r = m.run_bounded(200_000);
        prop_assert!(matches!(r, None | Some(ExitReason::PowerOff) | Some(ExitReason::Reset)), "{:?}", r);
        // The machine is still usable: the hart state reads back.
        let _ = m.hart.read_csr(0x142);
    }
}

#[test]
fn hostile_sbi_arguments() {
    let mut m = Machine::with_program(
        "
    .macro rec
    sd a0, 0(s11)
    addi s11, s11, 8
    .endm
    li s11, OUT
    li a0, -1
    li a1, 0x80000000
    li a2, 0
    sbi 0x4442434E, 0             # 2^64-1 bytes: capped, not a host overrun
    rec
    li a0, 64
    li a1, 0x80fffff0             # runs off the end of RAM
    li a2, 0
    sbi 0x4442434E, 0
    rec
    li a0, -1
    li a1, 0
    li a2, 0
    sbi 0x48534D, 0               # hart_start(2^64-1)
    rec
    li a0, 1 << 63
    li a1, -2
    sbi 0x735049, 0               # hart base + bit overflows
    rec
    li a0, 1
    li a1, 1 << 40
    sbi 0x52464E43, 0             # remote fence.i on hart 2^40
    rec
    li a0, 0x1000                 # legacy remote fence with an unreadable mask
    li a7, 5
    ecall
    rec
    ",
    );
    m.run_to_poweroff();
    let o = m.read_u64s(OUT, 6);
    assert_eq!(o[0], 0, "a capped DBCN write succeeds");
    assert_eq!(m.console().len(), 4096, "at most 4096 bytes per call");
    let inval = (-3i64) as u64;
    assert_eq!(&o[1..], &[inval, inval, inval, inval, inval]);
}

// ------------------------------------------------------------ two harts

/// Hart 0 starts hart 1 through SBI HSM, wakes it from WFI with an IPI,
/// patches code it is running and sends a remote fence.i, remaps a page it
/// reads and sends a remote sfence.vma, breaks its LR/SC reservation with a
/// store, and waits for it to stop itself.
#[test]
fn two_harts_hsm_ipi_remote_fences_and_lr_sc() {
    const VX: u64 = 0x1000_0000;
    const HSM: u64 = 0x48_534d;
    const IPI: u64 = 0x73_5049;
    const RFENCE: u64 = 0x5246_4e43;
    let mut m = Machine::new_smp(&[], 2);
    let mut pt = PageTables::new(&m, 3);
    pt.identity_ram(&m);
    let pte_vx = pt.map(&m, VX, P1, PAGE_4K, RWAD);
    let remapped = (m.read_u64(pte_vx) & 0x3ff) | ((P2 >> 12) << 10);
    fill_tags(&m, P1, 0x1000);
    fill_tags(&m, P2, 0x1000);
    m.write_u64(DATA + 88, 0x11);
    m.load_program(&assemble(&program(&format!(
        "
    .macro rec
    sd a0, 0(s11)
    sd a1, 8(s11)
    addi s11, s11, 16
    .endm
    li s0, DATA
    li s11, OUT
    li a0, 1
    sbi {HSM:#x}, 2                 # hart 1: stopped
    rec
    li a0, 1
    la a1, secondary
    li a2, 0x1234
    sbi {HSM:#x}, 0                 # start it
    rec
1:  ld t0, 0(s0)                    # until hart 1 is up
    beqz t0, 1b
    li a0, 1
    la a1, secondary
    li a2, 0
    sbi {HSM:#x}, 0                 # already started
    rec
    li a0, 1
    sbi {HSM:#x}, 2                 # started
    rec
    li a0, 2
    li a1, 0
    sbi {IPI:#x}, 0                 # wake hart 1 from WFI
    rec
2:  ld t0, 8(s0)                    # until its handler ran
    beqz t0, 2b
3:  ld t0, 16(s0)                   # until it ran f_shared once
    beqz t0, 3b
    la t1, f_shared
    li t0, {li2:#x}
    sw t0, 0(t1)
    li a0, 2
    li a1, 0
    sbi {RFENCE:#x}, 0              # remote fence.i
    rec
4:  ld t0, 40(s0)                   # until hart 1 read VX
    beqz t0, 4b
    li t1, {pte_vx:#x}
    li t0, {remapped:#x}
    sd t0, 0(t1)
    li a0, 2
    li a1, 0
    li a2, {VX:#x}
    li a3, 4096
    sbi {RFENCE:#x}, 1              # remote sfence.vma
    rec
    li t0, 1
    sd t0, 48(s0)
5:  ld t0, 64(s0)                   # until hart 1 holds a reservation
    beqz t0, 5b
    li t0, 0x77
    sd t0, 88(s0)
    li t0, 1
    sd t0, 72(s0)
6:  li a0, 1
    sbi {HSM:#x}, 2                 # until hart 1 has stopped
    li t0, 1
    bne a1, t0, 6b
    rec
    j shutdown

secondary:
    la t0, h1_handler
    csrw stvec, t0
    li s0, DATA
    sd a0, 24(s0)
    sd a1, 32(s0)
    li t0, 2
    csrs sie, t0
    li t0, 1
    sd t0, 0(s0)
7:  csrr t0, sip                    # WFI until the IPI is pending
    andi t0, t0, 2
    bnez t0, 8f
    wfi
    j 7b
8:  csrsi sstatus, 2                # take it
9:  call f_shared                   # until hart 0 has patched it
    sd a0, 16(s0)
    li t0, 2
    bne a0, t0, 9b
    li t0, {satp:#x}
    csrw satp, t0
    sfence.vma
    li s1, {VX:#x}
    ld t0, 0(s1)
    sd t0, 40(s0)
10: ld t0, 48(s0)                   # until remapped and fenced
    beqz t0, 10b
    ld t0, 0(s1)
    sd t0, 56(s0)
    csrw satp, zero
    addi s2, s0, 88
    lr.d t1, (s2)
    sd t1, 104(s0)
    li t0, 1
    sd t0, 64(s0)
11: ld t0, 72(s0)                   # until hart 0 stored to it
    beqz t0, 11b
    li t2, 0x5c
    sc.d t0, t2, (s2)
    sd t0, 80(s0)
    sbi {HSM:#x}, 1                 # hart_stop
12: j 12b

h1_handler:
    li t0, DATA
    li t1, 1
    sd t1, 8(t0)
    csrw sie, zero
    li t1, 2
    csrc sip, t1
    sret

    .balign 4
f_shared:
    li a0, 1
    ret
    ",
        li2 = li_a0(2),
        satp = pt.satp(),
    ))));
    let hart1 = m.others.pop().unwrap();
    let thread = std::thread::spawn(move || hart1.thread_main());
    let r = m.run_bounded(1_000_000_000);
    m.sys.stop_all();
    let stats1 = thread.join().expect("hart 1 thread");
    assert_eq!(r, Some(ExitReason::PowerOff), "traps: {:#x?}", m.traps());
    m.assert_traps(&[]);
    let o = m.read_u64s(OUT, 16);
    let pairs: Vec<(u64, u64)> = o.chunks(2).map(|c| (c[0], c[1])).collect();
    let err = |e: i64| e as u64;
    assert_eq!(pairs[0], (0, 1), "hart 1 stopped before hart_start");
    assert_eq!(pairs[1].0, 0, "hart_start");
    assert_eq!(pairs[2].0, err(-6), "hart_start again: ALREADY_AVAILABLE");
    assert_eq!(pairs[3], (0, 0), "hart 1 started");
    assert_eq!(pairs[4].0, 0, "send_ipi");
    assert_eq!(pairs[5].0, 0, "remote fence.i");
    assert_eq!(pairs[6].0, 0, "remote sfence.vma");
    assert_eq!(pairs[7], (0, 1), "hart 1 stopped itself");
    let d = m.read_u64s(DATA, 14);
    assert_eq!(d[1], 1, "hart 1 took the IPI");
    assert_eq!(d[2], 2, "hart 1 ran the patched function");
    assert_eq!(
        (d[3], d[4]),
        (1, 0x1234),
        "hart_start's a0 = hartid, a1 = opaque"
    );
    assert_eq!(d[5], tag(P1), "hart 1 before the remap");
    assert_eq!(d[7], tag(P2), "hart 1 after the remote sfence.vma");
    assert_eq!(d[13], 0x11, "lr.d");
    assert_eq!(d[10], 1, "sc.d fails after another hart's store");
    assert_eq!(d[11], 0x77, "and writes nothing");
    assert!(stats1.instructions > 0);
}

/// In U-mode, S-level interrupts are taken whatever sstatus.SIE says.
#[test]
fn interrupts_are_always_enabled_in_user_mode() {
    let mut m = Machine::with_program(
        "
    li t0, 2
    csrs sie, t0
    csrs sip, t0                  # pending; SIE clear: not taken in S-mode
    csrr s0, sip
    la t0, user
    csrw sepc, t0
    li t0, 0x100
    csrc sstatus, t0
    csrci sstatus, 2
f_sret:
    sret                          # the interrupt is taken on entry
user:
    li a0, 1
u_ecall:
    ecall
    li t0, 0x1000
u_jump:
    jr t0                         # fetch access fault: the handler powers off
    ",
    );
    m.run_to_poweroff();
    let user = m.sym("user");
    check_traps(
        &m,
        &[
            trap(INTERRUPT | 1, 0, user),
            trap(ECALL_U, 0, m.sym("u_ecall")),
            trap(FETCH_ACCESS, 0x1000, 0x1000),
        ],
    );
    assert_eq!(m.hart.x[8], 2, "SSIP was pending in S-mode");
    assert!(m.traps().iter().all(|t| t.status & SSTATUS_SPP == 0));
}

// ------------------------------------------------- pcs from outside the ISA

const FETCH_MISALIGNED: u64 = 0;
const HSM: u64 = 0x48_534d;
const ERR_INVALID_ADDRESS: u64 = -5i64 as u64;

/// HSM `hart_start` refuses a start address a hart could not fetch from
/// with SBI_ERR_INVALID_ADDRESS, and hart 1 stays stopped: the last byte
/// of RAM (where the first fetch, two bytes at page offset 0xfff, read
/// past the end of the RAM mapping: a host SIGSEGV), any odd address, the
/// first address past RAM, and one where nothing is mapped. The hart id is
/// checked first (INVALID_PARAM), the hart's state last.
#[test]
fn hart_start_refuses_addresses_it_cannot_fetch_from() {
    let last = RAM_BASE + RAM_SIZE - 1;
    let end = RAM_BASE + RAM_SIZE;
    let mut m = Machine::new_smp(&[], 2);
    m.load_program(&assemble(&program(&format!(
        "
    .macro start hart, addr
    li a0, \\hart
    li a1, \\addr
    sbi {HSM:#x}, 0
    sd a0, 0(s11)
    addi s11, s11, 8
    .endm
    li s11, OUT
    start 1, {last:#x}
    start 1, {odd:#x}
    start 1, {end:#x}
    start 1, 0x1000
    start 7, {last:#x}
    start 0, {last:#x}
    start 0, {RAM_BASE:#x}
    li a0, 1
    sbi {HSM:#x}, 2
    sd a1, 0(s11)
    ",
        odd = RAM_BASE + 0x2001,
    ))));
    let hart1 = m.others.pop().unwrap();
    let thread = std::thread::spawn(move || hart1.thread_main());
    let r = m.run_bounded(1_000_000);
    m.sys.stop_all();
    let stats1 = thread.join().expect("hart 1 thread");
    assert_eq!(r, Some(ExitReason::PowerOff), "traps: {:#x?}", m.traps());
    m.assert_traps(&[]);
    let invalid_param = -3i64 as u64;
    let already = -6i64 as u64;
    assert_eq!(
        m.read_u64s(OUT, 8),
        [
            ERR_INVALID_ADDRESS,
            ERR_INVALID_ADDRESS,
            ERR_INVALID_ADDRESS,
            ERR_INVALID_ADDRESS,
            invalid_param,
            ERR_INVALID_ADDRESS,
            already,
            1, // hart 1: stopped
        ]
    );
    assert_eq!(stats1.instructions, 0, "hart 1 never ran");
}

/// HSM `hart_suspend` answers as the spec says for the types it does not
/// implement: NOT_SUPPORTED for the default non-retentive suspend (so its
/// resume address is never jumped to), INVALID_PARAM for reserved and
/// platform-specific types; only the low 32 bits are the type.
#[test]
fn hart_suspend_types_it_does_not_implement() {
    let mut m = Machine::with_program(&format!(
        "
    .macro suspend type
    li a0, \\type
    li a1, {last:#x}
    sbi {HSM:#x}, 3
    sd a0, 0(s11)
    addi s11, s11, 8
    .endm
    li s11, OUT
    suspend 0x80000000
    suspend 0x180000000
    suspend 1
    suspend 0x10000000
    suspend 0x80000001
    suspend 0x90000000
    ",
        last = RAM_BASE + RAM_SIZE - 1,
    ));
    m.run_to_poweroff();
    m.assert_traps(&[]);
    let (unsupported, invalid) = (-2i64 as u64, -3i64 as u64);
    assert_eq!(
        m.read_u64s(OUT, 6),
        [unsupported, unsupported, invalid, invalid, invalid, invalid]
    );
}

/// A pc with bit 0 set, which no instruction can produce but HSM
/// `hart_start` (`reset_to`) or a restored state (`set_state`) could
/// hand a hart, raises instruction-address-misaligned before anything is
/// fetched, with the odd pc in stval and sepc with bit 0 clear: on the
/// last byte of RAM (where a 2-byte fetch read past the end of the RAM
/// mapping) and inside a page.
#[test]
fn an_odd_pc_faults_before_anything_is_fetched() {
    let last = RAM_BASE + RAM_SIZE - 1;
    for (pc, restore) in [(last, true), (RAM_BASE + 0x2001, true), (last, false)] {
        let mut m = Machine::with_program(
            "
resumed:
    li t0, OUT
    li t1, 1
    sd t1, 0(t0)
    ",
        );
        let mut state = m.hart.state();
        state.stvec = m.sym("trap_handler");
        if restore {
            state.pc = pc;
            assert!(state.check().is_err(), "a restore refuses it");
            m.hart.set_state(&state);
        } else {
            m.hart.set_state(&state);
            m.hart.reset_to(pc, 1, 0);
        }
        m.write_u64(TRAP_RESUME, m.sym("resumed"));
        m.run_to_poweroff();
        m.assert_traps(&[Trap::new(FETCH_MISALIGNED, pc, pc & !1)]);
        assert_eq!(m.out(0), 1, "resumed at {pc:#x} (restore: {restore})");
    }
}

/// Bit 0 of a jump target is dropped as the ISA says (IALIGN = 16): `jalr`
/// clears it, and so does a write to `sepc`, so `sret` cannot reach an
/// odd pc either.
#[test]
fn jump_targets_lose_bit_0() {
    let mut m = Machine::with_program(
        "
    li s11, OUT
    la t0, after_sret
    addi t0, t0, 1
    csrw sepc, t0
    csrr t1, sepc
    sd t1, 0(s11)
    li t1, 0x100
    csrs sstatus, t1              # SPP = S
    sret
after_sret:
    la t0, after_jalr
    addi t0, t0, 1
    jalr ra, 0(t0)
after_jalr:
    li t1, 1
    sd t1, 8(s11)
    ",
    );
    m.run_to_poweroff();
    m.assert_traps(&[]);
    assert_eq!(m.read_u64s(OUT, 2), [m.sym("after_sret"), 1]);
}

/// A restored state is masked as the CSR writes would leave it: bit 0 of
/// `sepc`, a reserved `stvec` mode, a `satp` mode the hart does not have.
#[test]
fn a_restored_state_is_masked_like_csr_writes() {
    let mut m = Machine::new(&[]);
    let mut state = m.hart.state();
    state.sepc = RAM_BASE | 1;
    state.stvec = RAM_BASE | 3;
    state.satp = (5 << 60) | 0x1234;
    m.hart.set_state(&state);
    assert_eq!(m.hart.read_csr(0x141), Some(RAM_BASE), "sepc");
    assert_eq!(m.hart.read_csr(0x105), Some(RAM_BASE), "stvec");
    assert_eq!(m.hart.read_csr(0x180), Some(0), "satp");
}

/// A pause completes while a hart keeps sending remote fences to another:
/// a hart waiting for a target that has parked for the pause used to wait
/// forever (the target serves requests only after the pause), so it never
/// parked itself and `pause` timed out.
#[test]
fn pause_completes_while_a_hart_waits_on_a_remote_fence() {
    const RFENCE: u64 = 0x5246_4e43;
    let mut m = Machine::new_smp(&[], 2);
    m.load_program(&assemble(&program(&format!(
        "
    li a0, 1
    la a1, secondary
    li a2, 0
    sbi {HSM:#x}, 0
1:  j 1b
secondary:
    li s0, DATA
2:  li a0, 1                        # hart 0
    li a1, 0
    sbi {RFENCE:#x}, 0              # remote fence.i
    li a0, 1
    li a1, 0
    sbi {RFENCE:#x}, 1              # remote sfence.vma
    ld t0, 0(s0)
    addi t0, t0, 1
    sd t0, 0(s0)
    j 2b
    "
    ))));
    let hart1 = m.others.pop().unwrap();
    let sys = m.sys.clone();
    let mut hart0 = std::mem::replace(&mut m.hart, Hart::new(sys.clone(), 0));
    hart0.reset_to(RAM_BASE, 0, 0);
    let threads = [
        std::thread::spawn(move || hart0.thread_main()),
        std::thread::spawn(move || hart1.thread_main()),
    ];
    let mut paused = Vec::new();
    for _ in 0..20 {
        // Until hart 1 has done a round of fences since the last resume.
        let start = m.read_u64(DATA);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while m.read_u64(DATA) < start + 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "hart 1 makes no progress"
            );
            std::thread::yield_now();
        }
        let ok = sys.pause_all(std::time::Duration::from_secs(5));
        paused.push(ok);
        sys.resume_all();
        if !ok {
            break;
        }
    }
    sys.stop_all();
    sys.resume_all();
    for t in threads {
        t.join().expect("hart thread");
    }
    assert!(paused.iter().all(|&p| p), "pauses: {paused:?}");
}
