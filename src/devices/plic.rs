//! A RISC-V platform-level interrupt controller (SiFive PLIC 1.0.0, as in
//! QEMU's `virt` board) behind a [`RegionOps`].
//!
//! Sources 1..=31 (source 0 does not exist), 3-bit priorities, and one
//! context per output: on the `virt` machine without M-mode firmware,
//! context N is hart N's supervisor external interrupt. Register map:
//!
//! ```text
//! 0x00_0000 + 4*s            priority of source s (0..=7; 0 never interrupts)
//! 0x00_1000                  pending bits of sources 0..31 (read-only)
//! 0x00_2000 + 0x80*c         enable bits of context c for sources 0..31
//! 0x20_0000 + 0x1000*c       priority threshold of context c
//! 0x20_0004 + 0x1000*c       claim (read) / complete (write) of context c
//! ```
//!
//! Every gateway is level-triggered: a source is pending while its input
//! is high and it is not being serviced. A claim returns the
//! highest-priority pending source enabled for the context whose priority
//! exceeds the context's threshold (ties go to the lowest id) and marks it
//! in service; completing it re-arms the gateway, so it is pending again at
//! once if its input is still high.
//!
//! Only aligned 32-bit accesses are valid. Accesses to reserved offsets,
//! to sources or contexts that do not exist, and writes to read-only
//! registers are ignored; such reads return 0.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::memory::{AccessRules, Endianness, RegionOps};

/// Interrupt sources, including the reserved source 0.
pub const PLIC_SOURCES: u32 = 32;
/// Priorities are 3 bits wide, as on QEMU's `virt` board.
pub const PLIC_MAX_PRIORITY: u32 = 7;
/// Most contexts the PLIC specification's register map has: enable blocks
/// of 0x80 bytes from 0x2000 up to 0x1f_2000.
pub const PLIC_MAX_CONTEXTS: usize = 15872;

const PRIORITY_BASE: u64 = 0x0;
const PENDING_BASE: u64 = 0x1000;
const ENABLE_BASE: u64 = 0x2000;
const ENABLE_STRIDE: u64 = 0x80;
const CONTEXT_BASE: u64 = 0x20_0000;
const CONTEXT_STRIDE: u64 = 0x1000;
const THRESHOLD: u64 = 0x0;
const CLAIM: u64 = 0x4;
/// Bits of the sources that exist: all but source 0.
const SOURCE_MASK: u32 = !1;

/// The output of one context: called with the new level of its interrupt
/// line whenever that level changes.
pub type PlicOutput = Box<dyn Fn(bool) + Send + Sync>;

struct State {
    priority: [u32; PLIC_SOURCES as usize],
    /// Input levels, one bit per source.
    level: u32,
    /// Sources claimed and not yet completed.
    claimed: u32,
    enable: Vec<u32>,
    threshold: Vec<u32>,
    /// The level each output was last driven to.
    output: Vec<bool>,
}

impl State {
    fn pending(&self) -> u32 {
        self.level & !self.claimed & SOURCE_MASK
    }

    /// The source a claim by `ctx` would return, 0 if none.
    fn best(&self, ctx: usize) -> u32 {
        let candidates = self.pending() & self.enable[ctx];
        let mut best = 0;
        let mut best_priority = self.threshold[ctx];
        for source in 1..PLIC_SOURCES {
            if candidates & (1 << source) != 0 && self.priority[source as usize] > best_priority {
                best = source;
                best_priority = self.priority[source as usize];
            }
        }
        best
    }
}

/// What a snapshot saves of a PLIC: every register and gateway, not the
/// output levels (recomputed on restore).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlicState {
    /// Priority of each source, source 0 included (always 0).
    pub priority: Vec<u32>,
    /// Input levels, one bit per source.
    pub level: u32,
    /// Sources claimed and not yet completed.
    pub claimed: u32,
    /// Enable bits of each context.
    pub enable: Vec<u32>,
    /// Threshold of each context.
    pub threshold: Vec<u32>,
}

/// Why a saved PLIC state does not fit this PLIC.
#[derive(Debug, thiserror::Error)]
pub enum PlicStateError {
    #[error("the saved PLIC has {saved} contexts and {sources} sources; this one has {contexts} contexts and {PLIC_SOURCES} sources")]
    Shape {
        saved: usize,
        sources: usize,
        contexts: usize,
    },
}

/// The size of the register window of a PLIC with `contexts` contexts:
/// everything up to the end of the last context's page.
pub const fn plic_mmio_size(contexts: usize) -> u64 {
    CONTEXT_BASE + CONTEXT_STRIDE * contexts as u64
}

/// A PLIC; see the module documentation. Map it with
/// [`plic_mmio_size`] bytes for its contexts.
pub struct Plic {
    state: Mutex<State>,
    outputs: Vec<PlicOutput>,
}

impl Plic {
    /// A PLIC with one context per output, in order. Every output starts
    /// low and is only called when its level changes.
    ///
    /// # Panics
    ///
    /// With more than [`PLIC_MAX_CONTEXTS`] outputs, which the register map
    /// cannot address (the machine allows far fewer harts).
    pub fn new(outputs: Vec<PlicOutput>) -> Self {
        let contexts = outputs.len();
        assert!(
            contexts <= PLIC_MAX_CONTEXTS,
            "a PLIC has at most {PLIC_MAX_CONTEXTS} contexts, not {contexts}"
        );
        Plic {
            state: Mutex::new(State {
                priority: [0; PLIC_SOURCES as usize],
                level: 0,
                claimed: 0,
                enable: vec![0; contexts],
                threshold: vec![0; contexts],
                output: vec![false; contexts],
            }),
            outputs,
        }
    }

    /// How many contexts (outputs) the PLIC has.
    pub fn contexts(&self) -> usize {
        self.outputs.len()
    }

    /// Nothing the lock protects can be left inconsistent by a panic (each
    /// change is a single store), so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drives source `source`'s input to `level` (the device's interrupt
    /// line). Sources outside 1..=31 do not exist and are ignored. Repeating
    /// the current level changes nothing.
    pub fn set_irq(&self, source: u32, level: bool) {
        if source == 0 || source >= PLIC_SOURCES {
            return;
        }
        let mut state = self.lock();
        let bit = 1u32 << source;
        let old = state.level;
        if level {
            state.level |= bit;
        } else {
            state.level &= !bit;
        }
        if state.level != old {
            self.update(&mut state);
        }
    }

    /// The pending bits (what the guest reads at +0x1000).
    pub fn pending(&self) -> u32 {
        self.lock().pending()
    }

    /// The level context `ctx`'s output was last driven to (false for a
    /// context that does not exist).
    pub fn output(&self, ctx: usize) -> bool {
        self.lock().output.get(ctx).copied().unwrap_or(false)
    }

    /// Recomputes every context's output and drives those that changed.
    /// Called with the lock held, so outputs see changes in order.
    fn update(&self, state: &mut State) {
        for (ctx, output) in self.outputs.iter().enumerate() {
            let level = state.best(ctx) != 0;
            if state.output[ctx] != level {
                state.output[ctx] = level;
                output(level);
            }
        }
    }

    /// The registers and gateways, for a snapshot.
    pub fn state(&self) -> PlicState {
        let state = self.lock();
        PlicState {
            priority: state.priority.to_vec(),
            level: state.level,
            claimed: state.claimed,
            enable: state.enable.clone(),
            threshold: state.threshold.clone(),
        }
    }

    /// Loads saved registers and gateways and drives every output to the
    /// level they give. Values are masked as register writes would.
    pub fn restore_state(&self, saved: &PlicState) -> Result<(), PlicStateError> {
        let contexts = self.contexts();
        if saved.enable.len() != contexts
            || saved.threshold.len() != contexts
            || saved.priority.len() != PLIC_SOURCES as usize
        {
            return Err(PlicStateError::Shape {
                saved: saved.enable.len(),
                sources: saved.priority.len(),
                contexts,
            });
        }
        let mut state = self.lock();
        for (dst, src) in state.priority.iter_mut().zip(&saved.priority) {
            *dst = src & PLIC_MAX_PRIORITY;
        }
        state.priority[0] = 0;
        state.level = saved.level & SOURCE_MASK;
        state.claimed = saved.claimed & SOURCE_MASK;
        for (dst, src) in state.enable.iter_mut().zip(&saved.enable) {
            *dst = src & SOURCE_MASK;
        }
        for (dst, src) in state.threshold.iter_mut().zip(&saved.threshold) {
            *dst = src & PLIC_MAX_PRIORITY;
        }
        // Drive every output once, whatever it was, so the harts' SEIP
        // lines match the restored registers.
        for (ctx, output) in self.outputs.iter().enumerate() {
            let level = state.best(ctx) != 0;
            state.output[ctx] = level;
            output(level);
        }
        Ok(())
    }

    fn read_register(&self, offset: u64) -> u32 {
        let mut state = self.lock();
        match decode(offset, self.contexts()) {
            Register::Priority(source) => state.priority[source],
            Register::Pending => state.pending(),
            Register::Enable(ctx) => state.enable[ctx],
            Register::Threshold(ctx) => state.threshold[ctx],
            Register::Claim(ctx) => {
                let source = state.best(ctx);
                if source != 0 {
                    state.claimed |= 1 << source;
                    self.update(&mut state);
                }
                source
            }
            Register::None => 0,
        }
    }

    fn write_register(&self, offset: u64, value: u32) {
        let mut state = self.lock();
        match decode(offset, self.contexts()) {
            Register::Priority(source) => state.priority[source] = value & PLIC_MAX_PRIORITY,
            Register::Enable(ctx) => state.enable[ctx] = value & SOURCE_MASK,
            Register::Threshold(ctx) => state.threshold[ctx] = value & PLIC_MAX_PRIORITY,
            Register::Claim(ctx) => {
                // Completing a source the context has not enabled is
                // ignored, as the PLIC specification says.
                if value == 0 || value >= PLIC_SOURCES || state.enable[ctx] & (1 << value) == 0 {
                    return;
                }
                state.claimed &= !(1 << value);
            }
            Register::Pending | Register::None => return,
        }
        self.update(&mut state);
    }
}

/// What a register offset names.
enum Register {
    Priority(usize),
    Pending,
    Enable(usize),
    Threshold(usize),
    Claim(usize),
    None,
}

fn decode(offset: u64, contexts: usize) -> Register {
    let context = |index: u64| usize::try_from(index).ok().filter(|&c| c < contexts);
    if offset >= CONTEXT_BASE {
        let rel = offset - CONTEXT_BASE;
        let Some(ctx) = context(rel / CONTEXT_STRIDE) else {
            return Register::None;
        };
        match rel % CONTEXT_STRIDE {
            THRESHOLD => Register::Threshold(ctx),
            CLAIM => Register::Claim(ctx),
            _ => Register::None,
        }
    } else if offset >= ENABLE_BASE {
        let rel = offset - ENABLE_BASE;
        match (context(rel / ENABLE_STRIDE), rel % ENABLE_STRIDE) {
            // Only the first word exists: sources 0..31.
            (Some(ctx), 0) => Register::Enable(ctx),
            _ => Register::None,
        }
    } else if offset == PENDING_BASE {
        Register::Pending
    } else if offset >= PRIORITY_BASE + 4 && offset < PRIORITY_BASE + 4 * PLIC_SOURCES as u64 {
        Register::Priority(((offset - PRIORITY_BASE) / 4) as usize)
    } else {
        Register::None
    }
}

/// One PLIC source as a level-triggered line for a device (virtio-mmio
/// on riscv64): the device's interrupt status drives the source's level.
pub struct PlicLine {
    plic: Arc<Plic>,
    source: u32,
}

impl PlicLine {
    pub fn new(plic: Arc<Plic>, source: u32) -> Self {
        PlicLine { plic, source }
    }
}

impl crate::devices::virtio::IrqLine for PlicLine {
    fn set_level(&self, asserted: bool) {
        self.plic.set_irq(self.source, asserted);
    }
}

impl RegionOps for Plic {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        self.read_register(offset) as u64
    }

    fn write(&self, offset: u64, _size: u32, value: u64) {
        self.write_register(offset, value as u32);
    }

    /// Aligned 32-bit accesses only, as QEMU's `sifive_plic_ops`.
    fn rules(&self) -> AccessRules {
        AccessRules {
            valid_min: 4,
            valid_max: 4,
            valid_unaligned: false,
            impl_min: 4,
            impl_max: 4,
            impl_unaligned: false,
            endianness: Endianness::Little,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{AddressSpace, MemTxResult, MemoryTree, Unassigned, SIZE_2_64};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const BASE: u64 = 0x0c00_0000;

    /// One context's output line, counting how often it was driven.
    #[derive(Default)]
    struct Line {
        level: AtomicBool,
        calls: AtomicUsize,
    }

    struct Rig {
        plic: Arc<Plic>,
        mem: AddressSpace,
        lines: Vec<Arc<Line>>,
        _tree: MemoryTree,
    }

    impl Rig {
        fn new(contexts: usize) -> Self {
            let lines: Vec<Arc<Line>> = (0..contexts).map(|_| Arc::default()).collect();
            let outputs = lines
                .iter()
                .map(|line| {
                    let line = line.clone();
                    Box::new(move |level| {
                        line.level.store(level, Ordering::SeqCst);
                        line.calls.fetch_add(1, Ordering::SeqCst);
                    }) as PlicOutput
                })
                .collect();
            let plic = Arc::new(Plic::new(outputs));
            let mut tree = MemoryTree::new();
            let sys = tree.new_container("system", SIZE_2_64).unwrap();
            let size = plic_mmio_size(contexts);
            let region = tree
                .new_io("plic", size as u128, Some(plic.clone()))
                .unwrap();
            tree.add_subregion(sys, BASE, region).unwrap();
            let mem = tree
                .add_address_space("memory", sys, Unassigned::Zero)
                .unwrap();
            Rig {
                plic,
                mem,
                lines,
                _tree: tree,
            }
        }

        fn read(&self, offset: u64) -> u32 {
            let (value, result) = self.mem.read(BASE + offset, 4);
            assert_eq!(result, MemTxResult::Ok, "read {offset:#x}");
            value as u32
        }

        fn write(&self, offset: u64, value: u32) {
            let result = self.mem.write(BASE + offset, 4, value as u64);
            assert_eq!(result, MemTxResult::Ok, "write {offset:#x}");
        }

        fn priority(&self, source: u32, priority: u32) {
            self.write(4 * source as u64, priority);
        }

        fn enable(&self, ctx: u64, bits: u32) {
            self.write(ENABLE_BASE + ENABLE_STRIDE * ctx, bits);
        }

        fn threshold(&self, ctx: u64, value: u32) {
            self.write(CONTEXT_BASE + CONTEXT_STRIDE * ctx, value);
        }

        fn claim(&self, ctx: u64) -> u32 {
            self.read(CONTEXT_BASE + CONTEXT_STRIDE * ctx + CLAIM)
        }

        fn complete(&self, ctx: u64, source: u32) {
            self.write(CONTEXT_BASE + CONTEXT_STRIDE * ctx + CLAIM, source);
        }

        fn line(&self, ctx: usize) -> bool {
            self.lines[ctx].level.load(Ordering::SeqCst)
        }

        fn calls(&self, ctx: usize) -> usize {
            self.lines[ctx].calls.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn claims_follow_priority_then_lowest_id() {
        let r = Rig::new(1);
        for (source, priority) in [(3, 2), (5, 7), (9, 7), (10, 1)] {
            r.priority(source, priority);
        }
        r.enable(0, u32::MAX);
        for source in [3, 5, 9, 10] {
            r.plic.set_irq(source, true);
        }
        assert!(r.line(0));
        assert_eq!(
            r.read(PENDING_BASE),
            (1 << 3) | (1 << 5) | (1 << 9) | (1 << 10)
        );
        assert_eq!(r.claim(0), 5, "priority 7, lower id than 9");
        assert_eq!(r.claim(0), 9);
        assert_eq!(r.claim(0), 3);
        assert_eq!(r.claim(0), 10);
        assert!(!r.line(0), "everything is in service");
        assert_eq!(r.claim(0), 0, "nothing left to claim");
        assert_eq!(r.read(PENDING_BASE), 0);
    }

    #[test]
    fn threshold_masks_lower_priorities() {
        let r = Rig::new(1);
        r.priority(4, 3);
        r.enable(0, 1 << 4);
        r.threshold(0, 3);
        r.plic.set_irq(4, true);
        assert!(!r.line(0), "priority must exceed the threshold");
        assert_eq!(r.claim(0), 0);
        assert_eq!(r.read(PENDING_BASE), 1 << 4, "still pending");
        r.threshold(0, 2);
        assert!(r.line(0));
        assert_eq!(r.claim(0), 4);
        // Priority 0 never interrupts, whatever the threshold.
        r.priority(6, 0);
        r.enable(0, (1 << 4) | (1 << 6));
        r.threshold(0, 0);
        r.plic.set_irq(6, true);
        assert_eq!(r.claim(0), 0);
        // Priorities and thresholds are 3 bits.
        r.priority(6, 0xff);
        r.threshold(0, 0x1f);
        assert_eq!(r.read(4 * 6), 7);
        assert_eq!(r.read(CONTEXT_BASE), 7);
    }

    #[test]
    fn claim_and_complete_rearm_a_level_still_high() {
        let r = Rig::new(1);
        r.priority(10, 1);
        r.enable(0, 1 << 10);
        r.plic.set_irq(10, true);
        assert!(r.line(0));
        assert_eq!(r.claim(0), 10);
        assert!(!r.line(0));
        assert_eq!(r.read(PENDING_BASE), 0, "in service, not pending");
        // The level stays high: completing re-arms the gateway at once.
        r.complete(0, 10);
        assert!(r.line(0));
        assert_eq!(r.claim(0), 10);
        // The device drops its line while in service: nothing after completion.
        r.plic.set_irq(10, false);
        r.complete(0, 10);
        assert!(!r.line(0));
        assert_eq!(r.claim(0), 0);
        // A line that drops before being claimed is no longer pending.
        r.plic.set_irq(10, true);
        assert!(r.line(0));
        r.plic.set_irq(10, false);
        assert!(!r.line(0));
        assert_eq!(r.claim(0), 0);
    }

    #[test]
    fn completing_needs_the_source_enabled_for_the_context() {
        let r = Rig::new(2);
        r.priority(7, 1);
        r.enable(0, 1 << 7);
        r.plic.set_irq(7, true);
        assert_eq!(r.claim(0), 7);
        r.complete(1, 7); // context 1 has not enabled source 7: ignored
        r.complete(0, 0);
        r.complete(0, 32);
        r.complete(0, u32::MAX);
        assert_eq!(r.claim(0), 0, "still in service");
        r.complete(0, 7);
        assert_eq!(r.claim(0), 7);
    }

    #[test]
    fn enables_are_per_context() {
        let r = Rig::new(3);
        r.priority(1, 1);
        r.priority(2, 1);
        r.enable(0, 1 << 1);
        r.enable(1, 1 << 2);
        r.enable(2, (1 << 1) | (1 << 2));
        r.plic.set_irq(2, true);
        assert_eq!((r.line(0), r.line(1), r.line(2)), (false, true, true));
        assert_eq!(r.claim(0), 0, "source 2 is not enabled for context 0");
        assert_eq!(r.claim(2), 2);
        assert_eq!((r.line(1), r.line(2)), (false, false), "claimed once");
        assert_eq!(r.claim(1), 0);
        r.plic.set_irq(1, true);
        assert_eq!((r.line(0), r.line(1), r.line(2)), (true, false, true));
        assert_eq!(r.read(ENABLE_BASE + ENABLE_STRIDE * 2), 0b110);
        // Bit 0 (source 0) is hardwired to 0.
        r.enable(1, u32::MAX);
        assert_eq!(r.read(ENABLE_BASE + ENABLE_STRIDE), !1);
    }

    #[test]
    fn outputs_are_driven_only_on_change() {
        let r = Rig::new(1);
        r.priority(3, 1);
        r.enable(0, 1 << 3);
        assert_eq!(r.calls(0), 0);
        r.plic.set_irq(3, true);
        r.plic.set_irq(3, true);
        r.priority(3, 2);
        assert_eq!(r.calls(0), 1);
        r.plic.set_irq(3, false);
        assert_eq!(r.calls(0), 2);
        assert!(!r.plic.output(0));
        assert!(!r.plic.output(5), "no such context");
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let r = Rig::new(2);
        // Only aligned 32-bit accesses are valid.
        assert_eq!(r.mem.read(BASE + 4, 1).1, MemTxResult::Invalid);
        assert_eq!(r.mem.read(BASE + 4, 2).1, MemTxResult::Invalid);
        assert_eq!(r.mem.read(BASE + 4, 8).1, MemTxResult::Invalid);
        assert_eq!(r.mem.read(BASE + 6, 4).1, MemTxResult::Invalid);
        assert_eq!(r.mem.write(BASE + 4, 8, u64::MAX), MemTxResult::Invalid);
        assert_eq!(r.read(4), 0, "the dropped write did not land");
        // Source 0, sources past 31, reserved space, pending writes.
        r.write(0, 7);
        assert_eq!(r.read(0), 0);
        r.write(4 * 32, 7);
        assert_eq!(r.read(4 * 32), 0);
        r.write(0x800, 1);
        assert_eq!(r.read(0x800), 0);
        r.write(PENDING_BASE, u32::MAX);
        assert_eq!(r.read(PENDING_BASE), 0);
        assert_eq!(r.read(PENDING_BASE + 4), 0);
        // Enable words for sources 32 and up, contexts that do not exist.
        r.write(ENABLE_BASE + 4, u32::MAX);
        assert_eq!(r.read(ENABLE_BASE + 4), 0);
        r.write(ENABLE_BASE + ENABLE_STRIDE * 2, u32::MAX);
        assert_eq!(r.read(ENABLE_BASE + ENABLE_STRIDE * 2), 0);
        // Reserved words of a context page.
        r.write(CONTEXT_BASE + 8, 5);
        assert_eq!(r.read(CONTEXT_BASE + 8), 0);
        // Past the mapped contexts, straight to the device.
        assert_eq!(r.plic.read(CONTEXT_BASE + CONTEXT_STRIDE * 2 + CLAIM, 4), 0);
        r.plic.write(CONTEXT_BASE + CONTEXT_STRIDE * 2, 4, 1);
        assert_eq!(r.plic.read(u64::MAX - 3, 4), 0);
        r.plic.write(u64::MAX - 3, 4, u64::MAX);
        // Bad sources from the device side.
        r.plic.set_irq(0, true);
        r.plic.set_irq(32, true);
        r.plic.set_irq(u32::MAX, true);
        assert_eq!(r.plic.pending(), 0);
        assert!(!r.line(0) && !r.line(1));
    }

    #[test]
    fn register_map_fits_the_contexts() {
        assert_eq!(
            ENABLE_BASE + ENABLE_STRIDE * PLIC_MAX_CONTEXTS as u64,
            0x1f_2000,
            "the last enable block ends where the specification says"
        );
        assert_eq!(plic_mmio_size(1), 0x20_1000);
        assert_eq!(plic_mmio_size(32), 0x22_0000);
        let plic = Plic::new(Vec::new());
        assert_eq!(plic.contexts(), 0);
        assert_eq!(plic.read(CONTEXT_BASE + CLAIM, 4), 0);
    }

    #[test]
    fn restored_state_claims_and_drives_outputs_like_the_original() {
        let a = Rig::new(2);
        a.priority(3, 5);
        a.priority(7, 2);
        a.enable(0, (1 << 3) | (1 << 7));
        a.enable(1, 1 << 7);
        a.threshold(1, 1);
        a.plic.set_irq(3, true);
        a.plic.set_irq(7, true);
        assert_eq!(a.claim(0), 3, "3 is in service when the state is saved");
        let saved = a.plic.state();
        assert_eq!(saved.claimed, 1 << 3);

        let b = Rig::new(2);
        b.plic.restore_state(&saved).unwrap();
        assert_eq!(b.plic.state(), saved);
        assert!(b.line(0) && b.line(1), "7 is pending for both contexts");
        assert_eq!(b.read(PENDING_BASE), 1 << 7);
        assert_eq!(b.claim(1), 7);
        // Completing 3 re-arms it: its input is still high.
        b.complete(0, 3);
        assert_eq!(b.claim(0), 3);
        // A state of another shape is refused.
        let wrong = Rig::new(1);
        assert!(wrong.plic.restore_state(&saved).is_err());
    }
}
