//! Translated blocks: runs of decoded instructions, cached by guest
//! physical address, with a per-hart jump cache by virtual PC in front.
//!
//! A block never crosses a guest page, so it depends on exactly one physical
//! page, whose generation (`CodePages`) it records; a block whose page
//! generation moved on is decoded again. `fence.i` and topology changes
//! drop the whole cache, like QEMU's `tb_flush`, together with the host
//! code compiled from it (`jit.rs`).
//!
//! Nothing is freed while guest code runs: a flush asked for by an
//! instruction (`fence.i`, an SBI remote fence aimed at the hart itself)
//! is deferred until the block, and the compiled blocks it chained into,
//! have returned to the run loop, because those blocks' instructions and
//! host code are in use until then.
//!
//! The cache is bounded: past [`MAX_BLOCKS`] blocks or
//! [`DEFAULT_CACHE_BYTES`] of blocks and decoded instructions it starts
//! over, as the code arena does when full (see docs/architecture.md for
//! the per-hart total).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::accel::tcg::tlb::{PAGE_MASK, PAGE_SIZE};

use super::decode::{decode_parts, is_compressed, Insn};
use super::hart::{cause, Exception, Hart};
use super::jit::JitState;
#[cfg(target_arch = "x86_64")]
use crate::accel::tcg::code_buffer::{CodeBuffer, ARENA_SIZE};

/// Longest block, in instructions.
const MAX_BLOCK_INSNS: usize = 64;
// Instruction offsets within a block are kept in a `u8` (`Insn::off`).
const _: () = assert!((MAX_BLOCK_INSNS - 1) * 4 <= u8::MAX as usize);
/// Jump-cache entries (direct-mapped by virtual PC).
const JUMP_CACHE: usize = 4096;
/// Beyond this many blocks the cache starts over (bounded memory).
pub const MAX_BLOCKS: usize = 1 << 16;
/// Bytes of translated blocks (decoded instructions plus the cache's
/// bookkeeping per block, see [`Block::footprint`]) beyond which the cache
/// starts over.
pub const DEFAULT_CACHE_BYTES: usize = 24 << 20;

/// One translated block.
pub struct Block {
    pub generation: u64,
    /// Guest physical address of the first instruction.
    pub paddr: u64,
    pub insns: Box<[Insn]>,
    pub jit: JitState,
}

impl Block {
    /// Bytes this block accounts for against the cache's limit: its
    /// instructions, and twice its entries in the block vector and the
    /// address map (the slack either may have after growing).
    fn footprint(insns: usize) -> usize {
        insns * std::mem::size_of::<Insn>()
            + 2 * (std::mem::size_of::<Block>() + std::mem::size_of::<(u64, u32)>() + 1)
    }
}

#[derive(Clone, Copy)]
struct JumpEntry {
    vpc: u64,
    paddr: u64,
    block: u32,
}

/// Multiplicative hashing of page-aligned-ish keys; SipHash is needlessly
/// slow for guest addresses.
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The per-hart block cache.
pub struct BlockCache {
    pub(super) blocks: Vec<Block>,
    by_paddr: HashMap<u64, u32, BuildHasherDefault<AddrHasher>>,
    jump: Box<[JumpEntry]>,
    /// The last uncacheable block (one straddling two pages).
    scratch: Option<Block>,
    /// [`Block::footprint`] of every block in `blocks`.
    bytes: usize,
    /// The limit on `bytes`.
    max_bytes: usize,
    /// Guest code is running (a block, and what it chains into): the
    /// blocks and the code arena must not change.
    running: bool,
    /// A flush was asked for while `running`.
    flush_deferred: bool,
    /// Flushes done (for tests and `--timings`).
    pub(super) flushes: u64,
    /// Executable memory for compiled blocks, created at the first
    /// compilation.
    #[cfg(target_arch = "x86_64")]
    code: Option<CodeBuffer>,
    /// Bytes to reserve for `code`.
    #[cfg(target_arch = "x86_64")]
    code_size: usize,
}

/// The id of [`BlockCache::scratch`].
pub const SCRATCH_BLOCK: u32 = u32::MAX;

const EMPTY_JUMP: JumpEntry = JumpEntry {
    vpc: u64::MAX,
    paddr: u64::MAX,
    block: 0,
};

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockCache {
    pub fn new() -> Self {
        BlockCache {
            blocks: Vec::new(),
            by_paddr: HashMap::default(),
            jump: vec![EMPTY_JUMP; JUMP_CACHE].into_boxed_slice(),
            scratch: None,
            bytes: 0,
            max_bytes: DEFAULT_CACHE_BYTES,
            running: false,
            flush_deferred: false,
            flushes: 0,
            #[cfg(target_arch = "x86_64")]
            code: None,
            #[cfg(target_arch = "x86_64")]
            code_size: ARENA_SIZE,
        }
    }

    /// Reserves `bytes` for compiled code from now on (dropping the
    /// current arena and every block).
    pub fn set_code_size(&mut self, bytes: usize) {
        self.flush();
        #[cfg(target_arch = "x86_64")]
        {
            self.code = None;
            self.code_size = bytes;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = bytes;
    }

    /// Sets the limit on the bytes of translated blocks (dropping every
    /// block): [`DEFAULT_CACHE_BYTES`] unless a test wants the cache to
    /// fill often.
    pub fn set_max_bytes(&mut self, bytes: usize) {
        self.flush();
        self.max_bytes = bytes;
    }

    /// Drops every block and the code compiled from them; while guest code
    /// runs (an instruction asked for it), when that code has returned to
    /// the run loop (see [`BlockCache::end_run`]).
    pub fn flush(&mut self) {
        if self.running {
            self.flush_deferred = true;
            return;
        }
        self.flushes += 1;
        self.blocks.clear();
        self.by_paddr.clear();
        self.bytes = 0;
        self.jump.fill(EMPTY_JUMP);
        #[cfg(target_arch = "x86_64")]
        if let Some(code) = &mut self.code {
            code.reset();
        }
    }

    /// Guest code starts running: from now until [`BlockCache::end_run`]
    /// no block, instruction array or compiled code is freed or replaced.
    pub(super) fn begin_run(&mut self) {
        self.running = true;
    }

    /// Guest code has returned to the run loop: a flush it asked for
    /// happens now.
    pub(super) fn end_run(&mut self) {
        self.running = false;
        if std::mem::take(&mut self.flush_deferred) {
            self.flush();
        }
    }

    /// Forgets all compiled code (the arena is full) but keeps the blocks,
    /// which compile again once hot.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn drop_compiled(&mut self) {
        // Compilation happens between blocks, never from running code.
        debug_assert!(!self.running, "arena reset while its code runs");
        for b in &mut self.blocks {
            if let JitState::Compiled { .. } = b.jit {
                b.jit = JitState::Cold(0);
            }
        }
        if let Some(code) = &mut self.code {
            code.reset();
        }
    }

    /// The code arena, reserved on first use; `None` if the host refuses.
    /// The arena's reset count (0 before it exists).
    pub(super) fn code_epoch(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        return self.code.as_ref().map_or(0, CodeBuffer::epoch);
        #[cfg(not(target_arch = "x86_64"))]
        0
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) fn code_buffer(&mut self) -> Option<&mut CodeBuffer> {
        if self.code.is_none() {
            self.code = CodeBuffer::new(self.code_size).ok();
        }
        self.code.as_mut()
    }

    fn jump_slot(vpc: u64) -> usize {
        (vpc >> 1) as usize & (JUMP_CACHE - 1)
    }
}

impl Hart {
    /// The block at `self.pc`, translating it if needed. Returns its index.
    #[inline]
    pub(super) fn fetch_block(&mut self) -> Result<u32, Exception> {
        let vpc = self.pc;
        if vpc & 1 != 0 {
            // Only a pc set from outside the guest's instructions can be
            // odd (HSM `hart_start`, a restored state: `jalr`, `sepc` and
            // `stvec` clear bit 0). Instructions are 2-byte aligned, so
            // no fetch ever starts at a page's last byte.
            return Err(Exception::new(cause::FETCH_MISALIGNED, vpc));
        }
        let (ppage, host_page) = self.fetch_page(vpc)?;
        let paddr = ppage | (vpc & !PAGE_MASK);
        if let Some(id) = self.jump_cache_hit(vpc, paddr) {
            self.stats.jump_cache_hits += 1;
            return Ok(id);
        }
        let slot = BlockCache::jump_slot(vpc);
        if let Some(&id) = self.blocks.by_paddr.get(&paddr) {
            if let Some(b) = self.blocks.blocks.get(id as usize) {
                if b.generation == self.sys.code.generation(paddr) {
                    self.blocks.jump[slot] = JumpEntry {
                        vpc,
                        paddr,
                        block: id,
                    };
                    return Ok(id);
                }
            }
        }
        self.translate_block(vpc, paddr, host_page)
    }

    /// The chain entry of the compiled block the run loop would run for
    /// `vpc` now, if the jump cache has it (compiled code asks, to go
    /// straight on after a `jalr` or a jump to another page). `None`
    /// sends the hart back to its run loop, which does the full lookup,
    /// translation, compilation or fault.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn lookup_compiled(&mut self, vpc: u64) -> Option<usize> {
        let (ppage, _) = self.fetch_page(vpc).ok()?;
        let id = self.jump_cache_hit(vpc, ppage | (vpc & !PAGE_MASK))?;
        match self.blocks.blocks.get(id as usize)?.jit {
            JitState::Compiled { chain, .. } => {
                self.stats.jump_cache_hits += 1;
                Some(chain)
            }
            _ => None,
        }
    }

    /// The block the jump cache holds for `vpc` at physical `paddr`, if
    /// it is still valid (its page generation unchanged).
    #[inline]
    fn jump_cache_hit(&mut self, vpc: u64, paddr: u64) -> Option<u32> {
        let j = self.blocks.jump[BlockCache::jump_slot(vpc)];
        if j.vpc != vpc || j.paddr != paddr {
            return None;
        }
        let b = self.blocks.blocks.get(j.block as usize)?;
        if b.generation != self.sys.code.generation(paddr) {
            return None;
        }
        Some(j.block)
    }

    /// Decodes the block at `vpc` (physical `paddr`, page mapped at
    /// `host_page`, `vpc` even).
    fn translate_block(
        &mut self,
        vpc: u64,
        paddr: u64,
        host_page: *const u8,
    ) -> Result<u32, Exception> {
        debug_assert!(!self.blocks.running, "translation while code runs");
        self.stats.translations += 1;
        let ppage = paddr & PAGE_MASK;
        if !self.sys.code.has_code(ppage) {
            // From now on stores to this page take the slow path (in this
            // hart's TLB at once; other harts' new entries see the flag).
            self.tlb.protect_code_page(ppage);
        }
        let generation = self.sys.code.mark_code(ppage);
        debug_assert!(vpc & 1 == 0, "fetch_block refuses odd pcs");
        let mut insns = Vec::with_capacity(16);
        let first = vpc & !PAGE_MASK;
        let mut offset = first;
        let mut cacheable = true;
        // The one place fetched bytes are read: two at `off`, only if
        // both are on the page.
        let read_half = |off: u64| -> Option<u16> {
            if off > PAGE_SIZE - 2 {
                return None;
            }
            // SAFETY: `host_page` maps a whole guest page of RAM or ROM
            // (`fetch_page` returns only those, from a TLB entry filled for
            // exactly one page of the view the hart holds), and `off + 2 <=
            // PAGE_SIZE` was checked just above, for any `off`.
            Some(unsafe {
                let p = host_page.wrapping_add(off as usize);
                u16::from_le_bytes([*p, *p.wrapping_add(1)])
            })
        };
        while insns.len() < MAX_BLOCK_INSNS {
            // `offset` is even (so is `vpc`, and instructions are 2 or 4
            // bytes), so this ends the block exactly at the page's end.
            let Some(lo) = read_half(offset) else {
                break;
            };
            let mut insn = if is_compressed(lo) {
                decode_parts(lo, 0)
            } else if let Some(hi) = read_half(offset + 2) {
                decode_parts(lo, hi)
            } else {
                // The second half is on the next page, which may fault.
                let next = (vpc & PAGE_MASK).wrapping_add(PAGE_SIZE);
                if !insns.is_empty() {
                    // End the block before it; the straddler gets its own.
                    break;
                }
                let (_, next_host) = self.fetch_page(next)?;
                // SAFETY: as in `read_half`, for the first two bytes of
                // the next page, which `fetch_page` just mapped whole.
                let hi = unsafe { u16::from_le_bytes([*next_host, *next_host.wrapping_add(1)]) };
                cacheable = false;
                decode_parts(lo, hi)
            };
            insn.rebase((offset - first) as u8);
            offset += insn.len as u64;
            insns.push(insn);
            if insn.ends_block() {
                break;
            }
        }
        if insns.is_empty() {
            // Not reachable with an even `vpc`; never an empty block.
            return Err(Exception::new(cause::FETCH_MISALIGNED, vpc));
        }
        let block = Block {
            generation,
            paddr,
            insns: insns.into_boxed_slice(),
            jit: JitState::Cold(0),
        };
        if !cacheable {
            self.blocks.scratch = Some(block);
            return Ok(SCRATCH_BLOCK);
        }
        let footprint = Block::footprint(block.insns.len());
        if self.blocks.blocks.len() >= MAX_BLOCKS
            || self.blocks.bytes.saturating_add(footprint) > self.blocks.max_bytes
        {
            // Full: start over, as QEMU does.
            self.blocks.flush();
        }
        // Reuse the slot of a stale block at the same address.
        let id = match self.blocks.by_paddr.get(&paddr) {
            Some(&id) if (id as usize) < self.blocks.blocks.len() => {
                let old = std::mem::replace(&mut self.blocks.blocks[id as usize], block);
                self.blocks.bytes = self
                    .blocks
                    .bytes
                    .saturating_sub(Block::footprint(old.insns.len()));
                id
            }
            _ => {
                self.blocks.blocks.push(block);
                (self.blocks.blocks.len() - 1) as u32
            }
        };
        self.blocks.bytes += footprint;
        self.blocks.by_paddr.insert(paddr, id);
        self.blocks.jump[BlockCache::jump_slot(vpc)] = JumpEntry {
            vpc,
            paddr,
            block: id,
        };
        Ok(id)
    }
}

impl Hart {
    /// Moves block `id`'s instructions out for execution.
    pub(super) fn blocks_take(&mut self, id: u32) -> Option<Box<[Insn]>> {
        let block = if id == SCRATCH_BLOCK {
            self.blocks.scratch.as_mut()?
        } else {
            self.blocks.blocks.get_mut(id as usize)?
        };
        Some(std::mem::take(&mut block.insns))
    }

    /// Returns instructions taken by [`Hart::blocks_take`] (nothing can
    /// have replaced the block meanwhile: see [`BlockCache::begin_run`]).
    pub(super) fn blocks_put_back(&mut self, id: u32, insns: Box<[Insn]>) {
        let block = if id == SCRATCH_BLOCK {
            self.blocks.scratch.as_mut()
        } else {
            self.blocks.blocks.get_mut(id as usize)
        };
        if let Some(block) = block {
            if block.insns.is_empty() {
                block.insns = insns;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures docs/architecture.md gives for the per-hart bound.
    #[test]
    fn footprints_are_as_documented() {
        assert_eq!(std::mem::size_of::<Insn>(), 16);
        assert_eq!(Block::footprint(0), 146);
        assert_eq!(Block::footprint(MAX_BLOCK_INSNS), 146 + 1024);
        assert_eq!(JUMP_CACHE * std::mem::size_of::<JumpEntry>(), 96 << 10);
        assert_eq!(DEFAULT_CACHE_BYTES, 24 << 20);
    }
}
