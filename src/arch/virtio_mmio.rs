//! Where a machine puts its virtio-mmio transports: a window of equally
//! sized slots, each with its own interrupt line. Both machines describe
//! theirs with a [`VirtioMmioWindow`] and hand slots out in order.

/// A machine's virtio-mmio window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioWindow {
    /// First address of slot 0.
    pub base: u64,
    /// Size of, and distance between, slots.
    pub slot_size: u64,
    /// How many slots there are.
    pub slots: usize,
    /// The interrupt line of slot 0; slot `i` uses `first_irq + i`.
    pub first_irq: u32,
}

/// One virtio-mmio slot: where its registers are and which interrupt line
/// (PLIC source, or x86 GSI) it raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// The slot number.
    pub index: usize,
    /// First address of its registers.
    pub base: u64,
    /// Size of its register window.
    pub size: u64,
    /// Its interrupt line.
    pub irq: u32,
}

impl VirtioMmioWindow {
    /// Slot `index`, or `None` past the last slot.
    pub const fn slot(&self, index: usize) -> Option<VirtioMmioSlot> {
        if index >= self.slots {
            return None;
        }
        Some(VirtioMmioSlot {
            index,
            base: self.base + self.slot_size * index as u64,
            size: self.slot_size,
            irq: self.first_irq + index as u32,
        })
    }

    /// Every slot, in order.
    pub fn all(self) -> impl Iterator<Item = VirtioMmioSlot> {
        (0..self.slots).filter_map(move |i| self.slot(i))
    }

    /// One past the last address of the window.
    pub const fn end(&self) -> u64 {
        self.base + self.slot_size * self.slots as u64
    }
}

/// Hands out a window's slots in order, for the devices of one machine.
#[derive(Clone, Debug)]
pub struct VirtioMmioAllocator {
    window: VirtioMmioWindow,
    next: usize,
}

impl VirtioMmioAllocator {
    /// An allocator with every slot of `window` free.
    pub fn new(window: VirtioMmioWindow) -> Self {
        VirtioMmioAllocator { window, next: 0 }
    }

    /// The next free slot, or `None` when all are taken.
    pub fn allocate(&mut self) -> Option<VirtioMmioSlot> {
        let slot = self.window.slot(self.next)?;
        self.next += 1;
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_hands_out_each_slot_once() {
        let w = VirtioMmioWindow {
            base: 0x1000,
            slot_size: 0x200,
            slots: 3,
            first_irq: 7,
        };
        let mut alloc = VirtioMmioAllocator::new(w);
        let got: Vec<_> = std::iter::from_fn(|| alloc.allocate()).collect();
        assert_eq!(got, w.all().collect::<Vec<_>>());
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].base, 0x1400);
        assert_eq!(got[2].irq, 9);
        assert_eq!(w.end(), 0x1600);
        assert_eq!(alloc.allocate(), None);
    }
}
