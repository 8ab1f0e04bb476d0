//! The software CPU's second tier: blocks that run often are compiled to
//! host code.
//!
//! Every block starts interpreted (`exec.rs`), which is cheap to set up
//! and fine for code that runs a few times (most of a boot). Once a block
//! has run [`HOT_THRESHOLD`] times it is compiled (on x86-64 hosts, by
//! `jit_x86_64.rs`) into the hart's code arena (`code_buffer.rs`), and
//! from then on runs as host code. Both tiers keep the same state in the
//! same places (the hart's register file, pc and counters), so a block can
//! switch tiers between any two runs and a trap looks the same from
//! either. Compiled code calls back into Rust for loads and stores the
//! inline TLB lookup cannot do, for the instructions it does not generate
//! inline, and to look up the next block after a `jalr`; it goes from block
//! to block without the run loop through chain slots (see `Hart::link`
//! and `jit_x86_64.rs`).
//!
//! Compiled code is used only while its block is: a block cache flush
//! (`fence.i`, a topology change, the cache filling up) empties the arena
//! as well, and a full arena drops all compiled code and lets hot blocks
//! compile again. Neither happens while compiled code runs: a `fence.i`
//! it executes only asks for the flush, done once the code (and every
//! block it chained into) has returned to the run loop.

use super::hart::{Exception, Hart};

/// Runs after which a block is compiled (QEMU compiles at once; waiting
/// keeps code that runs a handful of times, most of a boot, from paying
/// for compilation).
pub const HOT_THRESHOLD: u32 = 50;

/// When the software CPU compiles blocks to host code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JitPolicy {
    /// Never: interpret everything.
    Off,
    /// Blocks that have run [`HOT_THRESHOLD`] times.
    #[default]
    Hot,
    /// Every block before its first run (for tests and debugging).
    Eager,
}

impl std::str::FromStr for JitPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(JitPolicy::Off),
            "hot" | "on" => Ok(JitPolicy::Hot),
            "eager" => Ok(JitPolicy::Eager),
            _ => Err(format!("'{s}' is not a JIT policy (use off, hot or eager)")),
        }
    }
}

impl JitPolicy {
    /// Runs before compiling, `None` for never.
    fn threshold(self) -> Option<u32> {
        match self {
            JitPolicy::Off => None,
            JitPolicy::Hot => Some(HOT_THRESHOLD),
            JitPolicy::Eager => Some(0),
        }
    }

    /// Whether this host can compile at all (an x86-64 host).
    pub fn supported() -> bool {
        cfg!(target_arch = "x86_64")
    }
}

/// A compiled block ended normally.
pub const EXIT_OK: u32 = 0;
/// An instruction in a compiled block raised an exception.
pub const EXIT_EXCEPTION: u32 = 1;

/// A compiled block (see `jit_x86_64.rs` for the convention).
#[cfg(target_arch = "x86_64")]
pub type CompiledBlock = unsafe extern "sysv64" fn(
    hart: *mut Hart,
    attention: *const std::sync::atomic::AtomicBool,
    tlb: *const crate::accel::tcg::tlb::TlbEntry,
) -> u32;

/// Never created on hosts without a code generator (the C ABI only so that
/// the type exists there).
#[cfg(not(target_arch = "x86_64"))]
pub type CompiledBlock = unsafe extern "C" fn(
    hart: *mut Hart,
    attention: *const std::sync::atomic::AtomicBool,
    tlb: *const crate::accel::tcg::tlb::TlbEntry,
) -> u32;

/// A chain slot compiled code left unlinked on its way out: linked to the
/// next block the run loop runs, if that qualifies (see `Hart::link`).
#[derive(Clone, Copy, Debug)]
pub struct PendingLink {
    /// Executable-arena address of the slot.
    pub slot: usize,
    /// Physical page of the block that left it (which may not be the
    /// block the run loop entered: hops go on through chains and lookups).
    pub page: u64,
    /// The arena's epoch then.
    pub epoch: u64,
}

/// A block's standing with the compiler.
#[derive(Clone, Copy, Debug)]
pub enum JitState {
    /// Interpreted so far, this many runs.
    Cold(u32),
    /// Host code: called from the run loop at `entry`, jumped to from
    /// chained blocks at `chain` (an address in the executable arena).
    Compiled { entry: CompiledBlock, chain: usize },
    /// Cannot be compiled (stays interpreted).
    Never,
}

#[cfg(target_arch = "x86_64")]
mod host {
    use std::mem::offset_of;

    use super::super::decode::Insn;
    use super::super::hart::Hart;
    use super::super::jit_x86_64::{compile, Compiled, HartLayout, Helpers};
    use super::{CompiledBlock, JitState};
    use crate::accel::tcg::code_buffer::CodeBuffer;
    use crate::accel::tcg::tlb::TlbEntry;

    /// `rax:rdx` of a helper's return.
    #[repr(C)]
    pub struct Ret {
        value: u64,
        status: u64,
    }

    /// # Safety
    /// `hart` is the hart running the compiled block, which lent it for the
    /// call; nothing else uses it meanwhile.
    unsafe extern "sysv64" fn load<const N: usize>(hart: *mut Hart, addr: u64) -> Ret {
        // SAFETY: see the function's contract; the pointer came from the
        // `&mut Hart` in `Hart::run_compiled`.
        let hart = unsafe { &mut *hart };
        match hart.load::<N>(addr) {
            Ok(value) => Ret { value, status: 0 },
            Err(e) => {
                hart.jit_exception = Some(e);
                Ret {
                    value: 0,
                    status: 1,
                }
            }
        }
    }

    /// # Safety
    /// As [`load`].
    unsafe extern "sysv64" fn store<const N: usize>(hart: *mut Hart, addr: u64, value: u64) -> u64 {
        // SAFETY: as in `load`.
        let hart = unsafe { &mut *hart };
        match hart.store::<N>(addr, value) {
            Ok(()) => 0,
            Err(e) => {
                hart.jit_exception = Some(e);
                1
            }
        }
    }

    /// # Safety
    /// As [`load`]; `insn` points at the block's instruction being run.
    unsafe extern "sysv64" fn cold(hart: *mut Hart, insn: *const Insn, pc: u64) -> Ret {
        // SAFETY: as in `load`; `insn` points into the instructions of the
        // compiled block running, which stay allocated and unchanged until
        // the run returns to `Hart::exec_block`: the entered block's are
        // held by `exec_block` itself, and those of blocks it chained into
        // are in the cache, which frees nothing between `begin_run` and
        // `end_run` (a `fence.i` here only asks for a flush).
        let (hart, insn) = unsafe { (&mut *hart, &*insn) };
        match hart.step_one_cold(insn, pc) {
            Ok(None) => Ret {
                value: 0,
                status: 0,
            },
            Ok(Some(target)) => Ret {
                value: target,
                status: 1,
            },
            Err(e) => {
                hart.jit_exception = Some(e);
                Ret {
                    value: 0,
                    status: 2,
                }
            }
        }
    }

    /// # Safety
    /// As [`load`].
    unsafe extern "sysv64" fn lookup(hart: *mut Hart, pc: u64) -> usize {
        // SAFETY: as in `load`.
        let hart = unsafe { &mut *hart };
        hart.lookup_compiled(pc).unwrap_or(0)
    }

    fn layout() -> HartLayout {
        // Offsets inside `Hart` are far below 2 GiB.
        let off = |o: usize| o as i32;
        HartLayout {
            x: off(offset_of!(Hart, x)),
            pc: off(offset_of!(Hart, pc)),
            budget: off(offset_of!(Hart, budget)),
            check: off(offset_of!(Hart, check)),
            instructions: off(offset_of!(Hart, stats.instructions)),
            blocks: off(offset_of!(Hart, stats.blocks)),
            inflight: off(offset_of!(Hart, inflight)),
            link_slot: off(offset_of!(Hart, link_slot)),
            link_page: off(offset_of!(Hart, link_page)),
            tlb_stride: off(std::mem::size_of::<TlbEntry>()),
            tlb_read: off(offset_of!(TlbEntry, addr_read)),
            tlb_write: off(offset_of!(TlbEntry, addr_write)),
            tlb_addend: off(offset_of!(TlbEntry, addend)),
        }
    }

    fn helpers() -> Helpers {
        Helpers {
            load: [
                load::<1> as *const () as usize,
                load::<2> as *const () as usize,
                load::<4> as *const () as usize,
                load::<8> as *const () as usize,
            ],
            store: [
                store::<1> as *const () as usize,
                store::<2> as *const () as usize,
                store::<4> as *const () as usize,
                store::<8> as *const () as usize,
            ],
            cold: cold as *const () as usize,
            lookup: lookup as *const () as usize,
        }
    }

    /// Host code for `insns` (a block starting at guest physical `paddr`),
    /// or `None` if the block cannot be compiled.
    pub fn translate(insns: &[Insn], paddr: u64) -> Option<Compiled> {
        compile(insns, paddr, insns.as_ptr() as usize, &layout(), &helpers()).ok()
    }

    /// Installs `code` in `buffer`; `None` when it is full.
    pub fn install(buffer: &mut CodeBuffer, code: &Compiled) -> Option<JitState> {
        let ptr = buffer.install(&code.code)?;
        // SAFETY: `ptr` is the start of `code`, which `compile` generated
        // as a function with exactly this signature and convention, now
        // in executable memory that stays mapped and unchanged until the
        // arena is reset, which drops every `CompiledBlock` first.
        let entry = unsafe { std::mem::transmute::<*const u8, CompiledBlock>(ptr) };
        Some(JitState::Compiled {
            entry,
            chain: ptr as usize + code.chain_entry,
        })
    }
}

impl Hart {
    /// Chooses when this hart compiles blocks (the VM's `--tcg-jit`).
    pub fn set_jit_policy(&mut self, policy: JitPolicy) {
        self.jit_policy = if JitPolicy::supported() {
            policy
        } else {
            JitPolicy::Off
        };
        self.blocks.flush();
    }

    /// Maps the code arena now rather than at the first compilation, so
    /// that a hart confined by seccomp (which refuses new executable
    /// mappings, `vmm/seccomp.rs`) can still compile. Without an arena the
    /// hart interprets.
    pub fn map_code_arena(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.jit_policy.threshold().is_some() && self.blocks.code_buffer().is_none() {
            self.jit_policy = JitPolicy::Off;
        }
    }

    /// Reserves `bytes` of executable memory for this hart's compiled code
    /// (default 32 MiB). Small arenas fill and start over often, which
    /// tests use to exercise that path.
    pub fn set_code_arena_size(&mut self, bytes: usize) {
        self.blocks.set_code_size(bytes);
    }

    /// Block-cache flushes so far (also in [`HartStats`] after a run).
    ///
    /// [`HartStats`]: super::HartStats
    pub fn block_cache_flushes(&self) -> u64 {
        self.blocks.flushes
    }

    /// Limits this hart's translated blocks to about `bytes` (default
    /// [`DEFAULT_CACHE_BYTES`](super::block::DEFAULT_CACHE_BYTES)): a
    /// translation that would pass it empties the cache first. Small
    /// limits make that happen often, which tests use.
    pub fn set_block_cache_size(&mut self, bytes: usize) {
        self.blocks.set_max_bytes(bytes);
    }

    /// The compiled code for block `id`, compiling it if it has become
    /// hot; else `Err(n)`: interpret it, looping on itself at most `n`
    /// times (a block that loops on itself becomes hot by its
    /// iterations, which [`Hart::count_self_loops`] adds).
    #[inline]
    pub(super) fn compiled(&mut self, id: u32) -> Result<CompiledBlock, u32> {
        let Some(threshold) = self.jit_policy.threshold() else {
            return Err(u32::MAX);
        };
        let Some(block) = self.blocks.blocks.get_mut(id as usize) else {
            return Err(u32::MAX);
        };
        match block.jit {
            JitState::Compiled { entry, .. } => Ok(entry),
            JitState::Never => Err(u32::MAX),
            JitState::Cold(runs) if runs < threshold => {
                block.jit = JitState::Cold(runs + 1);
                Err(threshold - runs)
            }
            JitState::Cold(_) => self.compile_block(id).ok_or(u32::MAX),
        }
    }

    /// Counts `loops` self-loop iterations of interpreted block `id` as
    /// runs.
    #[inline]
    pub(super) fn count_self_loops(&mut self, id: u32, loops: u32) {
        if loops == 0 {
            return;
        }
        if let Some(block) = self.blocks.blocks.get_mut(id as usize) {
            if let JitState::Cold(runs) = block.jit {
                block.jit = JitState::Cold(runs.saturating_add(loops));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    fn compile_block(&mut self, id: u32) -> Option<CompiledBlock> {
        let idx = id as usize;
        let code = self
            .blocks
            .blocks
            .get(idx)
            .and_then(|b| host::translate(&b.insns, b.paddr));
        let Some(code) = code else {
            if let Some(b) = self.blocks.blocks.get_mut(idx) {
                b.jit = JitState::Never;
            }
            return None;
        };
        let Some(buffer) = self.blocks.code_buffer() else {
            // No executable memory: interpret from now on.
            self.jit_policy = JitPolicy::Off;
            return None;
        };
        let state = match host::install(buffer, &code) {
            Some(s) => s,
            None => {
                // Full: start the arena over, as QEMU does.
                self.blocks.drop_compiled();
                let buffer = self.blocks.code_buffer()?;
                match host::install(buffer, &code) {
                    Some(s) => s,
                    None => {
                        self.jit_policy = JitPolicy::Off;
                        return None;
                    }
                }
            }
        };
        self.stats.compilations += 1;
        self.stats.code_bytes += code.code.len() as u64;
        let block = self.blocks.blocks.get_mut(idx)?;
        block.jit = state;
        match state {
            JitState::Compiled { entry, .. } => Some(entry),
            _ => None,
        }
    }

    /// Fills the chain slot the last compiled block left unlinked with
    /// block `id`'s chain entry, if `id` is compiled, on the same physical
    /// page as the block that left it, and the arena has not been reset
    /// since (see `Stub::Exit` in `jit_x86_64.rs`).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn link(&mut self, link: PendingLink, id: u32) {
        let epoch = self.blocks.code_epoch();
        let Some(block) = self.blocks.blocks.get(id as usize) else {
            return;
        };
        let JitState::Compiled { chain, .. } = block.jit else {
            return;
        };
        if link.epoch != epoch || block.paddr & crate::accel::tcg::tlb::PAGE_MASK != link.page {
            return;
        }
        if let Some(code) = self.blocks.code_buffer() {
            if code.patch_u64(link.slot, chain as u64) {
                self.stats.chained += 1;
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn link(&mut self, _link: PendingLink, _id: u32) {}

    #[cfg(not(target_arch = "x86_64"))]
    fn compile_block(&mut self, _id: u32) -> Option<CompiledBlock> {
        self.jit_policy = JitPolicy::Off;
        None
    }

    /// Runs compiled block `f`, with the interpreter's contract (see
    /// [`Hart::exec_block`]); the caller holds the block's instructions.
    pub(super) fn run_compiled(&mut self, f: CompiledBlock) -> Result<(), Exception> {
        self.link_slot = 0;
        let attention = self.signals.attention_flag() as *const _;
        let tlb = self.tlb.modes[self.mmu_idx].table.as_ptr();
        // SAFETY: `f` was compiled from exactly these instructions (a
        // block's code and instructions are replaced together) and follows
        // the convention documented in `jit_x86_64.rs`: it reads and writes
        // only this hart's fields at the offsets it was given and calls the
        // helpers above, which reborrow the hart from the pointer; `self`
        // is not used while it runs. Its inline loads and stores use the
        // TLB `tlb` points to exactly as `Hart::load`/`store`'s fast path
        // does: a comparator without flag bits is only installed for a RAM
        // page of the view the hart holds, and the page check keeps the
        // whole access inside that page.
        let status = unsafe { f(self as *mut Hart, attention, tlb) };
        if status == EXIT_OK {
            if self.link_slot != 0 {
                self.pending_link = Some(PendingLink {
                    slot: self.link_slot as usize,
                    page: self.link_page,
                    epoch: self.blocks.code_epoch(),
                });
            }
            return Ok(());
        }
        match self.jit_exception.take() {
            Some(e) => Err(e),
            // Not reachable: every failing helper leaves its exception.
            // Re-running the instruction is the safe fallback.
            None => Ok(()),
        }
    }
}
