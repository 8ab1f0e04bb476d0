//! The software CPU's two tiers agree: random programs (integer,
//! multiply/divide, shifts, loads and stores of every width, forward
//! branches, a counted loop, compressed and full-size encodings, accesses
//! that straddle a page boundary) run once
//! interpreted only, once compiling blocks when hot (so blocks change tier
//! in the middle of the loop) and once compiling every block before it
//! runs. Registers, memory and the retired-instruction count must match
//! exactly. The interpreter itself is checked against an ISA model in
//! tcg_instructions.rs, which tools/test.sh also runs with every block
//! compiled.

#[path = "common/riscv.rs"]
mod riscv;

use std::fmt::Write;

use ember::accel::tcg::riscv64::jit::JitPolicy;
use ember::accel::tcg::riscv64::Hart;
use proptest::prelude::*;
use riscv::*;

/// Registers the random instructions use (x0 as a destination checks that
/// writes to it vanish). s2 holds the data address and s3 the loop count.
const POOL: &[&str] = &[
    "zero", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2", "a3", "a4", "a5",
];
const RR: &[&str] = &[
    "add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or", "and", "addw", "subw", "sllw",
    "srlw", "sraw", "mul", "mulh", "mulhsu", "mulhu", "div", "divu", "rem", "remu", "mulw", "divw",
    "divuw", "remw", "remuw",
];
const RI: &[&str] = &["addi", "slti", "sltiu", "xori", "ori", "andi", "addiw"];
const SHIFT: &[&str] = &["slli", "srli", "srai"];
const SHIFTW: &[&str] = &["slliw", "srliw", "sraiw"];
const LOADS: &[&str] = &["lb", "lh", "lw", "ld", "lbu", "lhu", "lwu"];
const STORES: &[&str] = &["sb", "sh", "sw", "sd"];
const BRANCHES: &[&str] = &["beq", "bne", "blt", "bge", "bltu", "bgeu"];
/// Bytes of data the loads and stores reach, from `BASE`: across a page
/// boundary, so that some accesses straddle two pages.
const DATA_LEN: usize = 320;
const BASE: u64 = DATA + 4096 - 160;
/// Loop iterations: more than `jit::HOT_THRESHOLD`, so under the hot
/// policy the loop's blocks switch tier part-way.
const ITERATIONS: u64 = 60;

#[derive(Clone, Debug)]
enum Step {
    Rr(usize, usize, usize, usize),
    Ri(usize, usize, usize, i32),
    Shift(usize, usize, usize, u32),
    ShiftW(usize, usize, usize, u32),
    Lui(usize, u32),
    Load(usize, usize, u32),
    Store(usize, usize, u32),
    /// Skip the next `n` steps when the branch is taken.
    Branch(usize, usize, usize, usize),
}

fn reg() -> impl Strategy<Value = usize> {
    0..POOL.len()
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..RR.len(), reg(), reg(), reg()).prop_map(|(o, d, a, b)| Step::Rr(o, d, a, b)),
        2 => (0..RI.len(), reg(), reg(), -2048i32..2048).prop_map(|(o, d, a, i)| Step::Ri(o, d, a, i)),
        1 => (0..SHIFT.len(), reg(), reg(), 0u32..64).prop_map(|(o, d, a, s)| Step::Shift(o, d, a, s)),
        1 => (0..SHIFTW.len(), reg(), reg(), 0u32..32).prop_map(|(o, d, a, s)| Step::ShiftW(o, d, a, s)),
        1 => (reg(), 0u32..(1 << 20)).prop_map(|(d, i)| Step::Lui(d, i)),
        2 => (0..LOADS.len(), reg(), 0u32..(DATA_LEN as u32 - 8)).prop_map(|(o, d, off)| Step::Load(o, d, off)),
        2 => (0..STORES.len(), reg(), 0u32..(DATA_LEN as u32 - 8)).prop_map(|(o, s, off)| Step::Store(o, s, off)),
        2 => (0..BRANCHES.len(), reg(), reg(), 1usize..6).prop_map(|(o, a, b, n)| Step::Branch(o, a, b, n)),
    ]
}

/// Register values: corner cases for division, shifts and comparisons,
/// and anything else.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0u64,
            1,
            u64::MAX,
            i64::MIN as u64,
            i64::MAX as u64,
            0xffff_ffff,
            0x8000_0000,
            0x7fff_ffff,
            0xffff_ffff_8000_0000,
            63,
            64,
            32,
        ]),
        any::<u64>(),
        0u64..1000,
    ]
}

fn source(init: &[u64], steps: &[Step]) -> String {
    let mut s = format!("main:\n    li s2, {BASE:#x}\n");
    for (r, v) in POOL.iter().zip(init).skip(1) {
        writeln!(s, "    li {r}, {v:#x}").unwrap();
    }
    writeln!(s, "    li s3, {ITERATIONS}\nloop:\n    .option rvc").unwrap();
    // Labels a branch at step k jumps to, placed after step k + n.
    let mut labels: Vec<Vec<usize>> = vec![Vec::new(); steps.len() + 1];
    for (k, st) in steps.iter().enumerate() {
        for &from in &labels[k] {
            writeln!(s, "L{from}:").unwrap();
        }
        let p = |i: usize| POOL[i];
        match *st {
            Step::Rr(o, d, a, b) => writeln!(s, "    {} {}, {}, {}", RR[o], p(d), p(a), p(b)),
            Step::Ri(o, d, a, i) => writeln!(s, "    {} {}, {}, {i}", RI[o], p(d), p(a)),
            Step::Shift(o, d, a, sh) => writeln!(s, "    {} {}, {}, {sh}", SHIFT[o], p(d), p(a)),
            Step::ShiftW(o, d, a, sh) => {
                writeln!(s, "    {} {}, {}, {sh}", SHIFTW[o], p(d), p(a))
            }
            Step::Lui(d, i) => writeln!(s, "    lui {}, {i:#x}", p(d)),
            Step::Load(o, d, off) => writeln!(s, "    {} {}, {off}(s2)", LOADS[o], p(d)),
            Step::Store(o, v, off) => writeln!(s, "    {} {}, {off}(s2)", STORES[o], p(v)),
            Step::Branch(o, a, b, n) => {
                labels[(k + 1 + n).min(steps.len())].push(k);
                writeln!(s, "    {} {}, {}, L{k}", BRANCHES[o], p(a), p(b))
            }
        }
        .unwrap();
    }
    for &from in &labels[steps.len()] {
        writeln!(s, "L{from}:").unwrap();
    }
    s.push_str("    addi s3, s3, -1\n    bnez s3, loop\n    .option norvc\n    sbi 8, 0\n");
    s
}

/// What a run leaves behind.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    x: Vec<u64>,
    data: Vec<u8>,
    instructions: u64,
    traps: usize,
}

/// Statistics of a run: blocks compiled, chain links made, block-cache
/// flushes.
#[derive(Debug, Default)]
struct JitStats {
    compilations: u64,
    chained: u64,
    flushes: u64,
}

fn run(p: &Program, data: &[u8], policy: JitPolicy) -> (Outcome, JitStats) {
    run_with(p, data, policy, |_| {})
}

fn run_with_arena(
    p: &Program,
    data: &[u8],
    policy: JitPolicy,
    arena: Option<usize>,
) -> (Outcome, JitStats) {
    run_with(p, data, policy, |hart| {
        if let Some(bytes) = arena {
            hart.set_code_arena_size(bytes);
        }
    })
}

/// Runs `p` on a hart `setup` configured after the policy was set.
fn run_with(
    p: &Program,
    data: &[u8],
    policy: JitPolicy,
    setup: impl FnOnce(&mut Hart),
) -> (Outcome, JitStats) {
    let mut m = Machine::load(p);
    m.hart.set_jit_policy(policy);
    setup(&mut m.hart);
    let flushes_before = m.hart.block_cache_flushes();
    m.write(BASE, data);
    m.run_to_poweroff();
    let outcome = Outcome {
        x: m.hart.x[..32].to_vec(),
        data: m.read(BASE, DATA_LEN),
        instructions: m.hart.stats.instructions,
        traps: m.traps().len(),
    };
    let stats = JitStats {
        compilations: m.hart.stats.compilations,
        chained: m.hart.stats.chained,
        flushes: m.hart.block_cache_flushes() - flushes_before,
    };
    (outcome, stats)
}

/// A loop through several blocks on one page (jumps, a taken branch, a
/// load and store) runs chained from block to block once compiled, and
/// calls a function on the next page (a jump off the page and a `ret`,
/// which compiled code follows through a jump-cache lookup), with the
/// interpreter's results.
#[test]
fn chained_blocks_match_the_interpreter() {
    let p = assemble(&program(&format!(
        r#"
main:
    li s2, {BASE:#x}
    li s3, 500
    li t0, 0
    li t1, 7
loop:
    addi t0, t0, 3
    j 1f
2:
    mul t1, t1, t0
    andi t2, t1, 4
    beqz t2, 3f
    addi t0, t0, 1
3:
    call leaf
    addi s3, s3, -1
    bnez s3, loop
    sbi 8, 0
1:
    xor t1, t1, t0
    sd t1, 0(s2)
    j 2b
    .balign 4096
leaf:
    ld a0, 0(s2)
    add a1, a1, a0
    ret
"#
    )));
    let data = vec![0u8; DATA_LEN];
    let (interpreted, _) = run(&p, &data, JitPolicy::Off);
    for policy in [JitPolicy::Hot, JitPolicy::Eager] {
        let (compiled, stats) = run(&p, &data, policy);
        assert_eq!(compiled, interpreted, "{policy:?}");
        if JitPolicy::supported() {
            assert!(stats.compilations > 0, "{policy:?}: {stats:?}");
            assert!(stats.chained > 0, "{policy:?}: {stats:?}");
        }
    }
    // An arena too small for the loop's blocks: it fills again and again,
    // dropping all compiled code (and the chain links into it) each time.
    let (compiled, stats) = run_with_arena(&p, &data, JitPolicy::Eager, Some(2048));
    assert_eq!(compiled, interpreted, "2 KiB arena");
    if JitPolicy::supported() {
        assert!(stats.compilations > 100, "no arena resets: {stats:?}");
    }
}

/// A loop through blocks on one page that, every 64th of 512 iterations,
/// patches a function on that page and runs `fence.i`: in compiled code
/// that the loop reached through a chain link (not from the run loop),
/// so the flush `fence.i` asks for must wait until the chain returns,
/// since the code running points into that block's instructions (which
/// the flush used to free under it). In between, the blocks get hot and
/// chained again. The next call runs the new code under every policy.
#[test]
fn fence_i_in_chained_compiled_code() {
    let p = assemble(&program(&format!(
        r#"
main:
    li s3, 512
    li s4, 0
    la s2, f_patched
    li s6, {addi_a0:#x}
loop:
    addi s5, s5, 1
    j 1f
1:
    andi t1, s3, 63
    bnez t1, 2f
    slli t2, s3, 20
    or t2, t2, s6
    sw t2, 0(s2)
    fence.i
2:
    call f_patched
    add s4, s4, a0
    addi s3, s3, -1
    bnez s3, loop
    sbi 8, 0
f_patched:
    li a0, 1
    ret
"#,
        addi_a0 = (10 << 7) | 0x13, // addi a0, zero, 0
    )));
    let mut value = 1;
    let mut sum = 0u64;
    for s3 in (1..=512u64).rev() {
        if s3 % 64 == 0 {
            value = s3;
        }
        sum += value;
    }
    let data = vec![0u8; DATA_LEN];
    let (interpreted, none) = run(&p, &data, JitPolicy::Off);
    assert_eq!(interpreted.x[20], sum, "s4: the sum of f's results");
    assert_eq!(none.flushes, 8, "one per fence.i");
    for policy in [JitPolicy::Hot, JitPolicy::Eager] {
        let (compiled, stats) = run(&p, &data, policy);
        assert_eq!(compiled, interpreted, "{policy:?}");
        assert_eq!(stats.flushes, 8, "{policy:?}: one per fence.i");
        if JitPolicy::supported() {
            assert!(stats.chained > 0, "{policy:?}: {stats:?}");
        }
    }
}

/// A block cache limited to about two blocks starts over whenever it is
/// full (as the code arena does), under every policy, with the results of
/// an unlimited one.
#[test]
fn a_full_block_cache_starts_over() {
    let p = assemble(&program(&format!(
        r#"
main:
    li s2, {BASE:#x}
    li s3, 300
loop:
    addi t0, t0, 3
    j 1f
2:
    mul t1, t1, t0
    andi t2, t1, 4
    beqz t2, 3f
    addi t0, t0, 1
3:
    addi s3, s3, -1
    bnez s3, loop
    sd t1, 0(s2)
    sbi 8, 0
1:
    xor t1, t1, t0
    addi t1, t1, 7
    j 2b
"#
    )));
    let data = vec![0u8; DATA_LEN];
    let (unlimited, stats) = run(&p, &data, JitPolicy::Off);
    assert_eq!(stats.flushes, 0, "nothing fills the default limit here");
    for policy in [JitPolicy::Off, JitPolicy::Hot, JitPolicy::Eager] {
        let (limited, stats) = run_with(&p, &data, policy, |h| h.set_block_cache_size(512));
        assert_eq!(limited, unlimited, "{policy:?}");
        assert!(stats.flushes > 100, "{policy:?}: {stats:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn compiled_blocks_match_the_interpreter(
        init in prop::collection::vec(value(), POOL.len()),
        steps in prop::collection::vec(step(), 1..40),
        data in prop::collection::vec(any::<u8>(), DATA_LEN),
    ) {
        let p = assemble(&program(&source(&init, &steps)));
        let (interpreted, none) = run(&p, &data, JitPolicy::Off);
        prop_assert_eq!(none.compilations, 0);
        prop_assert_eq!(interpreted.traps, 0);
        for policy in [JitPolicy::Hot, JitPolicy::Eager] {
            let (compiled, stats) = run(&p, &data, policy);
            prop_assert_eq!(&compiled, &interpreted, "{:?}", policy);
            if JitPolicy::supported() {
                prop_assert!(stats.compilations > 0, "{:?} compiled nothing", policy);
            }
        }
    }
}
