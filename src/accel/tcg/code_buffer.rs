//! Executable memory for translated host code: one arena per hart, filled
//! front to back and emptied as a whole, like QEMU's `code_gen_buffer`
//! (QEMU also empties it all at once, in `tb_flush`, rather than freeing
//! single blocks).
//!
//! The arena is one memfd mapped twice: writable for the code generator,
//! executable for running, never both in one mapping (W^X; QEMU's
//! `--enable-split-wx` layout). Switching one mapping's protection per
//! compiled block instead costs an `mprotect` over the whole arena each
//! time, which measured 180 µs per block here. Pages cost memory only once
//! written.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use memmap2::{Mmap, MmapMut, MmapOptions};

/// Bytes reserved per arena.
pub const ARENA_SIZE: usize = 32 << 20;

/// An arena of executable memory.
pub struct CodeBuffer {
    write: MmapMut,
    exec: Mmap,
    used: usize,
    /// Counts resets, so that an address taken before one is not trusted
    /// after it.
    epoch: u64,
}

/// An anonymous memory file of `size` bytes.
fn memfd(size: usize) -> io::Result<File> {
    // No crate in the dependency tree wraps memfd_create.
    // SAFETY: a valid NUL-terminated name and flags; the returned fd, when
    // valid, is new and owned by nobody else.
    let fd = unsafe { libc::memfd_create(c"ember-jit".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is not owned elsewhere.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    Ok(file)
}

impl CodeBuffer {
    /// Reserves `size` bytes.
    pub fn new(size: usize) -> io::Result<CodeBuffer> {
        let file = memfd(size)?;
        // SAFETY: the file is private to this arena (nobody else can
        // truncate it, which is what makes file mappings unsafe), and is
        // `size` bytes long.
        let (write, exec) = unsafe {
            (
                MmapOptions::new().len(size).map_mut(&file)?,
                MmapOptions::new().len(size).map_exec(&file)?,
            )
        };
        Ok(CodeBuffer {
            write,
            exec,
            used: 0,
            epoch: 0,
        })
    }

    /// Forgets everything installed. The caller guarantees that no code
    /// from the arena is running or will be run again: the next
    /// installation overwrites it.
    pub fn reset(&mut self) {
        self.used = 0;
        self.epoch += 1;
    }

    /// How many times the arena was reset.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Overwrites the 8 bytes at `addr` (an executable-mapping address
    /// inside installed code, 8-aligned): a chain slot. Returns whether
    /// `addr` was such a place.
    pub fn patch_u64(&mut self, addr: usize, value: u64) -> bool {
        let Some(off) = addr.checked_sub(self.exec.as_ptr() as usize) else {
            return false;
        };
        if off % 8 != 0 || off.saturating_add(8) > self.used {
            return false;
        }
        self.write[off..off + 8].copy_from_slice(&value.to_ne_bytes());
        true
    }

    /// Bytes installed since the last reset.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Copies `code` into the arena and returns where it starts in the
    /// executable mapping, or `None` when the arena is full (the caller
    /// resets it and retries).
    pub fn install(&mut self, code: &[u8]) -> Option<*const u8> {
        // 16-byte alignment for the start of each piece of code.
        let start = self.used.checked_add(15)? & !15;
        let end = start.checked_add(code.len())?;
        if end > self.write.len() {
            return None;
        }
        // x86 keeps instruction fetch coherent with stores to the same
        // physical memory, through any mapping, so no cache maintenance is
        // needed before running it.
        self.write[start..end].copy_from_slice(code);
        self.used = end;
        Some(self.exec[start..].as_ptr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_in_order_aligned_and_reports_full() {
        let mut b = CodeBuffer::new(4096).unwrap();
        let a = b.install(&[0xc3; 10]).unwrap();
        let c = b.install(&[0x90; 20]).unwrap();
        assert_eq!(c as usize - a as usize, 16);
        assert_eq!(b.used(), 36);
        // SAFETY: both pointers point at bytes installed just above.
        unsafe {
            assert_eq!(*a, 0xc3);
            assert_eq!(*c.add(19), 0x90);
        }
        assert!(b.install(&[0; 4096]).is_none());
        b.reset();
        let d = b.install(&[0xcc; 4096]).unwrap();
        assert_eq!(d, a);
        // SAFETY: as above.
        assert_eq!(unsafe { *d.add(4095) }, 0xcc);
    }

    #[test]
    fn patches_only_installed_aligned_slots() {
        let mut b = CodeBuffer::new(4096).unwrap();
        let p = b.install(&[0u8; 24]).unwrap() as usize;
        assert!(b.patch_u64(p + 8, 0x1122_3344_5566_7788));
        // SAFETY: inside the installed bytes.
        assert_eq!(unsafe { *(p as *const u8).add(8) }, 0x88);
        assert!(!b.patch_u64(p + 4, 1), "unaligned");
        assert!(!b.patch_u64(p + 24, 1), "past the installed code");
        assert!(!b.patch_u64(p.wrapping_sub(8), 1), "before the arena");
        let e = b.epoch();
        b.reset();
        assert_eq!(b.epoch(), e + 1);
        assert!(!b.patch_u64(p, 1), "nothing is installed after a reset");
    }

    #[test]
    fn installed_code_runs() {
        let mut b = CodeBuffer::new(4096).unwrap();
        // mov eax, 42; ret
        let p = b.install(&[0xb8, 42, 0, 0, 0, 0xc3]).unwrap();
        // SAFETY: `p` is the code just installed, a function returning
        // 42 in eax under the C convention.
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(p) };
        assert_eq!(f(), 42);
    }
}
