//! The POST-code port 0x80 (QEMU's ioport80): a sink that remembers the last
//! value. Guests write it in tight loops, so it only stores a byte.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::memory::{AccessRules, RegionOps};

/// The port sink.
#[derive(Default)]
pub struct Port80 {
    last: AtomicU8,
}

impl Port80 {
    /// The last POST code written.
    pub fn last(&self) -> u8 {
        self.last.load(Ordering::Relaxed)
    }
}

impl RegionOps for Port80 {
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        0xff
    }

    fn write(&self, _offset: u64, _size: u32, value: u64) {
        self.last.store(value as u8, Ordering::Relaxed);
    }

    fn rules(&self) -> AccessRules {
        AccessRules::with_impl(1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_reads_ones_and_keeps_the_code() {
        let p = Port80::default();
        p.write(0, 1, 0x42);
        assert_eq!(p.last(), 0x42);
        assert_eq!(p.read(0, 1), 0xff);
    }
}
