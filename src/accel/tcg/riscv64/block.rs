//! Translated blocks: runs of decoded instructions, cached by guest
//! physical address, with a per-hart jump cache by virtual PC in front.
//!
//! A block never crosses a guest page, so it depends on exactly one physical
//! page, whose generation (`CodePages`) it records; a block whose page
//! generation moved on is decoded again. `fence.i` and topology changes
//! drop the whole cache, like QEMU's `tb_flush`, together with the host
//! code compiled from it (`jit.rs`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::accel::tcg::tlb::{PAGE_MASK, PAGE_SIZE};

use super::decode::{decode_parts, is_compressed, Insn};
use super::hart::{Exception, Hart};
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
const MAX_BLOCKS: usize = 1 << 16;

/// One translated block.
pub struct Block {
    pub generation: u32,
    /// Guest physical address of the first instruction.
    pub paddr: u64,
    pub insns: Box<[Insn]>,
    pub jit: JitState,
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

    /// Drops every block and the code compiled from them.
    ///
    /// This may run from a helper called by compiled code (`fence.i`);
    /// that code is not overwritten before it returns, because nothing is
    /// installed in the arena until the next compilation, which happens
    /// between blocks.
    pub fn flush(&mut self) {
        self.blocks.clear();
        self.by_paddr.clear();
        self.jump.fill(EMPTY_JUMP);
        #[cfg(target_arch = "x86_64")]
        if let Some(code) = &mut self.code {
            code.reset();
        }
    }

    /// Forgets all compiled code (the arena is full) but keeps the blocks,
    /// which compile again once hot.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn drop_compiled(&mut self) {
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
    /// `host_page`).
    fn translate_block(
        &mut self,
        vpc: u64,
        paddr: u64,
        host_page: *const u8,
    ) -> Result<u32, Exception> {
        self.stats.translations += 1;
        let ppage = paddr & PAGE_MASK;
        if !self.sys.code.has_code(ppage) {
            // From now on stores to this page take the slow path (in this
            // hart's TLB at once; other harts' new entries see the flag).
            self.tlb.protect_code_page(ppage);
        }
        let generation = self.sys.code.mark_code(ppage);
        let mut insns = Vec::with_capacity(16);
        let first = vpc & !PAGE_MASK;
        let mut offset = first;
        let mut cacheable = true;
        let read_half = |off: u64| -> u16 {
            // SAFETY: `host_page` maps a whole guest page of RAM or ROM
            // (fetch_page checked the TLB entry) and `off + 2 <= 4096`.
            unsafe {
                let p = host_page.wrapping_add(off as usize);
                u16::from_le_bytes([*p, *p.wrapping_add(1)])
            }
        };
        while insns.len() < MAX_BLOCK_INSNS && offset < PAGE_SIZE {
            let lo = read_half(offset);
            let mut insn = if is_compressed(lo) {
                decode_parts(lo, 0)
            } else if offset + 4 <= PAGE_SIZE {
                decode_parts(lo, read_half(offset + 2))
            } else {
                // The second half is on the next page, which may fault.
                let next = (vpc & PAGE_MASK).wrapping_add(PAGE_SIZE);
                if !insns.is_empty() {
                    // End the block before it; the straddler gets its own.
                    break;
                }
                let (_, next_host) = self.fetch_page(next)?;
                // SAFETY: as above, for the first bytes of the next page.
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
        if self.blocks.blocks.len() >= MAX_BLOCKS {
            self.blocks.flush();
        }
        // Reuse the slot of a stale block at the same address.
        let id = match self.blocks.by_paddr.get(&paddr) {
            Some(&id) if (id as usize) < self.blocks.blocks.len() => {
                self.blocks.blocks[id as usize] = block;
                id
            }
            _ => {
                self.blocks.blocks.push(block);
                (self.blocks.blocks.len() - 1) as u32
            }
        };
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

    /// Returns instructions taken by [`Hart::blocks_take`], unless the
    /// cache was flushed meanwhile (`fence.i`), in which case they go.
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
