//! Helpers for the riscv64 software-CPU instruction tests: assembling small
//! bare-metal programs with the Debian cross binutils
//! (binutils-riscv64-linux-gnu), a machine (one hart, or more for SMP
//! tests) with 16 MiB of RAM at 0x8000_0000, a standard S-mode trap handler
//! that logs every trap into guest memory, and an Sv39/Sv48 page-table
//! builder.
//!
//! Guest memory map (all in RAM, identity-mapped by the page-table helpers):
//!
//! | address          | what                                            |
//! | ---------------- | ----------------------------------------------- |
//! | `0x8000_0000`    | the program (`.text`, linked there)             |
//! | [`DATA`]         | test input data                                 |
//! | [`OUT`]          | test results                                    |
//! | [`PT_POOL`]      | page tables built by [`PageTables`]             |
//! | [`STACK_TOP`]    | initial `sp`                                    |
//! | [`TRAP_RESUME`]  | where the handler resumes after the next trap   |
//! | [`TRAP_LOG`]     | trap count, then 32-byte records                |

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember::accel::tcg::riscv64::jit::JitPolicy;
use ember::accel::tcg::riscv64::{Hart, RiscvSystem};
use ember::accel::tcg::signals::HartSignals;
use ember::memory::{AddressSpace, MemTxResult, MemoryTree, Unassigned};
use ember::vmm::exit::{ExitReason, ExitSignal};

pub const RAM_BASE: u64 = 0x8000_0000;
pub const RAM_SIZE: u64 = 16 << 20;
pub const DATA: u64 = 0x8080_0000;
pub const OUT: u64 = 0x8090_0000;
pub const PT_POOL: u64 = 0x80a0_0000;
pub const STACK_TOP: u64 = 0x80d0_0000;
pub const TRAP_RESUME: u64 = 0x80e0_0000;
pub const TRAP_SAVE: u64 = 0x80e0_0010;
pub const TRAP_LOG: u64 = 0x80e0_1000;
/// After this many traps the handler powers the machine off, so a program
/// stuck faulting ends quickly.
pub const TRAP_LIMIT: u64 = 64;
/// The `time` frequency the tests' machines use.
pub const TIMEBASE: u64 = 10_000_000;

/// Interrupt bit of `scause`.
pub const INTERRUPT: u64 = 1 << 63;

/// An assembled program: the flat image of `.text` (linked at
/// [`RAM_BASE`]) and the addresses of its labels.
#[derive(Clone, Debug)]
pub struct Program {
    pub image: Vec<u8>,
    pub symbols: HashMap<String, u64>,
}

/// Runs `tool` with `args`, panicking with a useful message when the tool is
/// missing or fails; returns its standard output.
fn run_tool(tool: &str, args: &[&str], what: &str, source: &str) -> Vec<u8> {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {tool} ({e}): install Debian's binutils-riscv64-linux-gnu \
             (tools/setup.sh does) to assemble the riscv64 test programs"
        )
    });
    if !out.status.success() {
        let numbered: String = source
            .lines()
            .enumerate()
            .map(|(i, l)| format!("{:4} {l}\n", i + 1))
            .collect();
        panic!(
            "{what} failed:\n{}\nsource:\n{numbered}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}

/// A fresh scratch directory for one assembly run.
fn scratch() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("ember-rv-asm-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Assembles `source` (GNU as syntax, rv64gc, lp64d) linked at
/// [`RAM_BASE`].
pub fn assemble(source: &str) -> Program {
    let dir = scratch();
    let src = dir.join("prog.s");
    let obj = dir.join("prog.o");
    let elf = dir.join("prog.elf");
    let bin = dir.join("prog.bin");
    std::fs::write(&src, source).expect("write source");
    let path = |p: &PathBuf| p.to_str().expect("UTF-8 temp path").to_string();
    run_tool(
        "riscv64-linux-gnu-as",
        &[
            "-march=rv64gc",
            "-mabi=lp64d",
            "-o",
            &path(&obj),
            &path(&src),
        ],
        "assembling",
        source,
    );
    run_tool(
        "riscv64-linux-gnu-ld",
        &[
            "--no-relax",
            "-Ttext=0x80000000",
            "-e",
            "_start",
            "-o",
            &path(&elf),
            &path(&obj),
        ],
        "linking",
        source,
    );
    run_tool(
        "riscv64-linux-gnu-objcopy",
        &["-O", "binary", "-j", ".text", &path(&elf), &path(&bin)],
        "objcopy",
        source,
    );
    let nm = run_tool("riscv64-linux-gnu-nm", &[&path(&elf)], "nm", source);
    let symbols = String::from_utf8_lossy(&nm)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let _kind = parts.next()?;
            Some((parts.next()?.to_string(), addr))
        })
        .collect();
    let image = std::fs::read(&bin).expect("read image");
    let _ = std::fs::remove_dir_all(&dir);
    Program { image, symbols }
}

/// Wraps `body` in the standard prelude: `_start` sets `stvec` to the
/// logging trap handler and `sp` to [`STACK_TOP`], then falls into `body`
/// (label `main`), which ends in `shutdown` (SBI SRST power-off) unless it
/// jumps there itself. Uncompressed code unless the body says
/// `.option rvc`.
///
/// The handler logs `scause`, `stval`, `sepc` and `sstatus` to [`TRAP_LOG`]
/// and preserves every register. Then, for an interrupt, it clears `sie`
/// and `sip.SSIP` and returns to `sepc`; for an exception, it resumes at
/// the address stored at [`TRAP_RESUME`] in S-mode if that is non-zero
/// (clearing it: see the `on_trap` macro), powers off on an instruction
/// fetch fault, and otherwise skips the 4-byte instruction at `sepc`.
///
/// Symbols: `DATA`, `OUT`, `TRAP_LOG`, `TRAP_RESUME`, `STACK_TOP`; macros
/// `on_trap label` (clobbers t0, t1) and `sbi ext, fid` (sets a7, a6 and
/// does the `ecall`).
pub fn program(body: &str) -> String {
    format!(
        r#"
    .equ DATA, {DATA:#x}
    .equ OUT, {OUT:#x}
    .equ TRAP_LOG, {TRAP_LOG:#x}
    .equ TRAP_RESUME, {TRAP_RESUME:#x}
    .equ TRAP_SAVE, {TRAP_SAVE:#x}
    .equ STACK_TOP, {STACK_TOP:#x}
    .equ TRAP_LIMIT, {TRAP_LIMIT}

    .macro on_trap label
    la t0, \label
    li t1, TRAP_RESUME
    sd t0, 0(t1)
    .endm

    .macro sbi ext, fid
    li a7, \ext
    li a6, \fid
    ecall
    .endm

    .option norvc
    .option norelax
    .text
    .globl _start
_start:
    la t0, trap_handler
    csrw stvec, t0
    li sp, STACK_TOP
    j main

    .balign 4
trap_handler:
    csrw sscratch, t0
    li t0, TRAP_SAVE
    sd t1, 0(t0)
    sd t2, 8(t0)
    li t0, TRAP_LOG
    ld t1, 0(t0)
    addi t2, t1, 1
    sd t2, 0(t0)
    slli t1, t1, 5
    add t1, t1, t0
    csrr t2, scause
    sd t2, 8(t1)
    csrr t2, stval
    sd t2, 16(t1)
    csrr t2, sepc
    sd t2, 24(t1)
    csrr t2, sstatus
    sd t2, 32(t1)
    ld t2, 0(t0)
    li t1, TRAP_LIMIT
    bgeu t2, t1, shutdown
    csrr t2, scause
    bltz t2, .Ltrap_interrupt
    li t0, TRAP_RESUME
    ld t1, 0(t0)
    beqz t1, .Ltrap_skip
    sd zero, 0(t0)
    csrw sepc, t1
    li t1, 0x100
    csrs sstatus, t1
    j .Ltrap_return
.Ltrap_skip:
    li t1, 12
    beq t2, t1, shutdown
    li t1, 1
    beq t2, t1, shutdown
    csrr t1, sepc
    addi t1, t1, 4
    csrw sepc, t1
    j .Ltrap_return
.Ltrap_interrupt:
    csrw sie, zero
    li t1, 2
    csrc sip, t1
.Ltrap_return:
    li t0, TRAP_SAVE
    ld t1, 0(t0)
    ld t2, 8(t0)
    csrr t0, sscratch
    sret

shutdown:
    li a7, 0x53525354
    li a6, 0
    li a0, 0
    li a1, 0
    ecall
    j shutdown

main:
{body}
    j shutdown
"#
    )
}

/// One logged trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trap {
    pub cause: u64,
    pub tval: u64,
    pub epc: u64,
    pub status: u64,
}

impl Trap {
    /// A trap with the given cause, `stval` and `sepc`; `status` is not
    /// compared by [`assert_traps`].
    pub fn new(cause: u64, tval: u64, epc: u64) -> Trap {
        Trap {
            cause,
            tval,
            epc,
            status: 0,
        }
    }
}

/// A one-hart machine.
pub struct Machine {
    pub tree: MemoryTree,
    pub memory: AddressSpace,
    pub sys: Arc<RiscvSystem>,
    pub signals: Arc<HartSignals>,
    pub hart: Hart,
    /// Harts 1.. of an SMP machine.
    pub others: Vec<Hart>,
    pub console: Arc<Mutex<Vec<u8>>>,
    pub symbols: HashMap<String, u64>,
    /// How long [`Machine::run_bounded`] waits before declaring the hart
    /// stuck.
    pub deadline: Duration,
}

/// The compile policy the machines use: `EMBER_TEST_TCG_JIT=off|hot|eager`
/// (tools/test.sh runs the instruction tests under each), else the
/// default.
pub fn jit_policy() -> JitPolicy {
    match std::env::var("EMBER_TEST_TCG_JIT").as_deref() {
        Ok("off") => JitPolicy::Off,
        Ok("eager") => JitPolicy::Eager,
        Ok("hot") | Err(_) => JitPolicy::Hot,
        Ok(other) => panic!("EMBER_TEST_TCG_JIT={other}: want off, hot or eager"),
    }
}

impl Machine {
    /// A machine with `image` loaded at [`RAM_BASE`] and the hart reset to
    /// it in S-mode.
    pub fn new(image: &[u8]) -> Machine {
        Machine::new_smp(image, 1)
    }

    /// A machine with `harts` harts: hart 0 is [`Machine::hart`], reset to
    /// the image; the others are in [`Machine::others`], stopped until the
    /// guest starts them with SBI HSM (run them with `Hart::thread_main`).
    pub fn new_smp(image: &[u8], harts: usize) -> Machine {
        let mut tree = MemoryTree::new();
        let root = tree.new_container("system", 1u128 << 64).unwrap();
        let ram = tree.new_ram("ram", RAM_SIZE).unwrap();
        tree.add_subregion(root, RAM_BASE, ram).unwrap();
        let memory = tree
            .add_address_space("memory", root, Unassigned::Zero)
            .unwrap();
        assert_eq!(memory.write_buf(RAM_BASE, image), MemTxResult::Ok);
        let signals: Vec<Arc<HartSignals>> =
            (0..harts).map(|_| Arc::new(HartSignals::new())).collect();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let console = Arc::new(Mutex::new(Vec::new()));
        let sink = console.clone();
        let sys = RiscvSystem::new(
            memory.clone(),
            &signals,
            TIMEBASE,
            exit,
            Box::new(move |bytes: &[u8]| sink.lock().unwrap().extend_from_slice(bytes)),
        );
        let policy = jit_policy();
        let mut hart = Hart::new(sys.clone(), 0);
        hart.set_jit_policy(policy);
        hart.reset_to(RAM_BASE, 0, 0);
        let others = (1..harts)
            .map(|i| {
                let mut h = Hart::new(sys.clone(), i);
                h.set_jit_policy(policy);
                h
            })
            .collect();
        Machine {
            tree,
            memory,
            sys,
            signals: signals[0].clone(),
            hart,
            others,
            console,
            symbols: HashMap::new(),
            deadline: Duration::from_secs(60),
        }
    }

    /// A machine running `p`, with its symbols.
    pub fn load(p: &Program) -> Machine {
        let mut m = Machine::new(&p.image);
        m.symbols = p.symbols.clone();
        m
    }

    /// Writes `p` over the start of RAM and takes its symbols: for tests
    /// that prepare memory (page tables) before they know what the program
    /// needs to refer to.
    pub fn load_program(&mut self, p: &Program) {
        self.write(RAM_BASE, &p.image);
        self.symbols = p.symbols.clone();
    }

    /// Assembles `body` inside [`program`] and builds a machine for it.
    pub fn with_program(body: &str) -> Machine {
        Machine::load(&assemble(&program(body)))
    }

    /// The address of label `name` in the program.
    pub fn sym(&self, name: &str) -> u64 {
        *self
            .symbols
            .get(name)
            .unwrap_or_else(|| panic!("no symbol {name:?} in the program"))
    }

    /// Runs at most about `limit` instructions on a helper thread. A run
    /// that has not ended by [`Machine::deadline`] (a hart looping without
    /// retiring instructions, which `run_bounded` cannot count) is stopped
    /// and the test fails instead of hanging.
    pub fn run_bounded(&mut self, limit: u64) -> Option<ExitReason> {
        let signals = self.signals.clone();
        let deadline = self.deadline;
        let hart = &mut self.hart;
        std::thread::scope(|s| {
            let (tx, rx) = channel();
            let runner = s.spawn(move || {
                let r = hart.run_bounded(limit);
                let _ = tx.send(());
                r
            });
            match rx.recv_timeout(deadline) {
                Ok(()) => runner.join().expect("hart thread"),
                Err(RecvTimeoutError::Disconnected) => match runner.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Err(RecvTimeoutError::Timeout) => {
                    signals.request_stop();
                    let _ = runner.join();
                    panic!("run_bounded({limit}) did not return within {deadline:?}");
                }
            }
        })
    }

    /// Runs the program to its SBI power-off (at most 5 M instructions).
    pub fn run_to_poweroff(&mut self) {
        let r = self.run_bounded(5_000_000);
        assert_eq!(
            r,
            Some(ExitReason::PowerOff),
            "the program did not power off; pc = {:#x}, traps = {:x?}",
            self.hart.pc,
            self.traps()
        );
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        assert_eq!(self.memory.write_buf(addr, bytes), MemTxResult::Ok);
    }

    pub fn write_u64(&self, addr: u64, v: u64) {
        self.write(addr, &v.to_le_bytes());
    }

    pub fn write_u32(&self, addr: u64, v: u32) {
        self.write(addr, &v.to_le_bytes());
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        assert_eq!(self.memory.read_buf(addr, &mut buf), MemTxResult::Ok);
        buf
    }

    pub fn read_u64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.read(addr, 8).try_into().unwrap())
    }

    pub fn read_u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.read(addr, 4).try_into().unwrap())
    }

    /// `n` consecutive u64s from `addr`.
    pub fn read_u64s(&self, addr: u64, n: usize) -> Vec<u64> {
        (0..n as u64).map(|i| self.read_u64(addr + 8 * i)).collect()
    }

    /// Everything the trap handler logged.
    pub fn traps(&self) -> Vec<Trap> {
        let n = self.read_u64(TRAP_LOG).min(TRAP_LIMIT);
        (0..n)
            .map(|i| {
                let r = self.read_u64s(TRAP_LOG + 8 + 32 * i, 4);
                Trap {
                    cause: r[0],
                    tval: r[1],
                    epc: r[2],
                    status: r[3],
                }
            })
            .collect()
    }

    /// Asserts that the logged traps have exactly these causes, `stval`s
    /// and `sepc`s, in order.
    pub fn assert_traps(&self, want: &[Trap]) {
        let got: Vec<Trap> = self
            .traps()
            .into_iter()
            .map(|t| Trap { status: 0, ..t })
            .collect();
        assert_eq!(got, want, "trap log (cause, tval, epc)");
    }

    /// What the guest wrote to the SBI console.
    pub fn console(&self) -> Vec<u8> {
        self.console.lock().unwrap().clone()
    }

    /// Result number `i` of a program that stores its results as u64s
    /// from [`OUT`] on.
    pub fn out(&self, i: u64) -> u64 {
        self.read_u64(OUT + 8 * i)
    }
}

// ------------------------------------------------------------ page tables

pub const PTE_V: u64 = 1 << 0;
pub const PTE_R: u64 = 1 << 1;
pub const PTE_W: u64 = 1 << 2;
pub const PTE_X: u64 = 1 << 3;
pub const PTE_U: u64 = 1 << 4;
pub const PTE_G: u64 = 1 << 5;
pub const PTE_A: u64 = 1 << 6;
pub const PTE_D: u64 = 1 << 7;

/// Page sizes by level.
pub const PAGE_4K: u32 = 0;
pub const PAGE_2M: u32 = 1;
pub const PAGE_1G: u32 = 2;

/// Sv39 (3 levels) or Sv48 (4 levels) tables written straight into guest
/// memory, with table pages allocated upwards from [`PT_POOL`].
pub struct PageTables {
    pub root: u64,
    levels: u32,
    next: u64,
}

impl PageTables {
    pub fn new(m: &Machine, levels: u32) -> PageTables {
        assert!(levels == 3 || levels == 4);
        let mut pt = PageTables {
            root: 0,
            levels,
            next: PT_POOL,
        };
        pt.root = pt.alloc(m);
        pt
    }

    fn alloc(&mut self, m: &Machine) -> u64 {
        let page = self.next;
        self.next += 0x1000;
        m.write(page, &[0u8; 4096]);
        page
    }

    /// The `satp` value selecting these tables (ASID 0).
    pub fn satp(&self) -> u64 {
        let mode = if self.levels == 3 { 8 } else { 9 };
        (mode << 60) | (self.root >> 12)
    }

    /// Maps `va` to `pa` with a leaf at `level` (0 = 4 KiB, 1 = 2 MiB,
    /// 2 = 1 GiB) and the given flag bits (V is added). Returns the
    /// physical address of the leaf PTE.
    pub fn map(&mut self, m: &Machine, va: u64, pa: u64, level: u32, flags: u64) -> u64 {
        let mut table = self.root;
        for l in (level + 1..self.levels).rev() {
            let slot = table + 8 * ((va >> (12 + 9 * l)) & 0x1ff);
            let pte = m.read_u64(slot);
            table = if pte & PTE_V != 0 {
                assert_eq!(
                    pte & (PTE_R | PTE_W | PTE_X),
                    0,
                    "{va:#x}: a leaf is in the way"
                );
                (pte >> 10) << 12
            } else {
                let t = self.alloc(m);
                m.write_u64(slot, ((t >> 12) << 10) | PTE_V);
                t
            };
        }
        let slot = table + 8 * ((va >> (12 + 9 * level)) & 0x1ff);
        m.write_u64(slot, ((pa >> 12) << 10) | flags | PTE_V);
        slot
    }

    /// Maps the 1 GiB holding RAM onto itself (S-mode RWX, A and D set),
    /// so the prelude, the trap handler and the data areas keep working
    /// with translation on.
    pub fn identity_ram(&mut self, m: &Machine) {
        self.map(
            m,
            RAM_BASE,
            RAM_BASE,
            PAGE_1G,
            PTE_R | PTE_W | PTE_X | PTE_A | PTE_D,
        );
    }
}
