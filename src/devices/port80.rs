//! The POST-code port 0x80 (QEMU's ioport80). Firmware writes progress
//! codes to it and Linux's `outb_p`/`inb_p` write it as an I/O delay, so it
//! is hit in tight loops (and by the exit benchmark): a write is one relaxed
//! store of the byte, kept for diagnostics; a read returns all ones.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::memory::{AccessRules, RegionOps};

/// The port.
pub const PORT80: u64 = 0x80;
/// One port.
pub const PORT80_LEN: u128 = 1;

/// The sink.
#[derive(Default)]
pub struct Port80 {
    last: AtomicU8,
}

impl Port80 {
    /// The last byte written (0 before any write).
    pub fn last(&self) -> u8 {
        self.last.load(Ordering::Relaxed)
    }
}

impl RegionOps for Port80 {
    /// QEMU's `ioport80_read` returns all ones.
    fn read(&self, _offset: u64, _size: u32) -> u64 {
        0xff
    }

    fn write(&self, _offset: u64, _size: u32, value: u64) {
        self.last.store(value as u8, Ordering::Relaxed);
    }

    /// Byte callbacks, as QEMU's `ioport80_io_ops`; wider accesses are
    /// split, so an `inw` reads 0xffff.
    fn rules(&self) -> AccessRules {
        AccessRules::with_impl(1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_util::io_space;
    use crate::memory::MemTxResult;
    use std::sync::Arc;

    #[test]
    fn writes_are_accepted_and_reads_are_all_ones() {
        let dev = Arc::new(Port80::default());
        let (_tree, io) = io_space(vec![("ioport80", PORT80, PORT80_LEN, dev.clone())]);
        assert_eq!(dev.last(), 0);
        assert_eq!(io.write_buf(PORT80, &[0x42]), MemTxResult::Ok);
        assert_eq!(dev.last(), 0x42);
        assert_eq!(io.write(PORT80, 1, 0x1ff), MemTxResult::Ok);
        assert_eq!(dev.last(), 0xff);
        assert_eq!(io.read(PORT80, 1), (0xff, MemTxResult::Ok));
        assert_eq!(io.read(PORT80, 2), (0xffff, MemTxResult::Ok));
        assert_eq!(io.read(PORT80, 4), (0xffff_ffff, MemTxResult::Ok));
        let mut byte = [0u8; 1];
        assert_eq!(io.read_buf(PORT80, &mut byte), MemTxResult::Ok);
        assert_eq!(byte, [0xff]);
        // Offsets past the port (a wide access split into bytes) are harmless.
        dev.write(u64::MAX, 8, u64::MAX);
        assert_eq!(dev.read(u64::MAX, 8), 0xff);
    }
}
