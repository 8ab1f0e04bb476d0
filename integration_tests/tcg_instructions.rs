//! Instruction-level tests of the riscv64 software CPU: small bare-metal
//! programs, assembled with the Debian cross binutils, run on one hart in
//! S-mode; every expected value comes from a Rust model of the ISA written
//! here, independently of the interpreter.

#[path = "common/riscv.rs"]
mod riscv;

use std::sync::OnceLock;

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
    (
        "divu t0, a0, a1",
        |a, b| if b == 0 { u64::MAX } else { a / b },
    ),
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
        if y == 0 {
            u64::MAX
        } else {
            (x / y) as i32 as i64 as u64
        }
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
    let got = m.traps();
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
    ",
    );
    m.run_to_poweroff();
    assert_eq!(m.out(0), 11, "ten nops and the first rdinstret");
    assert_eq!(m.out(1), 3, "two addis and the second rdinstret");
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
