//! Host memory behind ram, rom and romd regions.
//!
//! The mapping itself comes from vm-memory's `MmapRegion` (anonymous, or
//! shared from a file or memfd so another process or a later vhost backend
//! can map the same pages); this file adds the region-relative, bounds-checked
//! accessors the dispatch path needs.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory};

use super::MemoryError;

/// Where a RAM block's pages come from.
#[derive(Debug)]
pub enum RamBacking {
    /// Private anonymous memory.
    Anonymous,
    /// A shared mapping of `file` starting at `offset`; the file must be at
    /// least `offset + size` bytes long.
    File { file: File, offset: u64 },
    /// A new anonymous memory file (memfd), mapped shared, so its descriptor
    /// can be handed to another process.
    Memfd,
}

/// A page-aligned block of host memory of a fixed size.
#[derive(Debug)]
pub struct RamBlock {
    /// `None` for a zero-size block, which mmap cannot create.
    map: Option<MmapRegion<()>>,
    size: u64,
}

impl RamBlock {
    /// Maps `size` bytes of anonymous memory.
    pub fn anonymous(size: u64) -> Result<Self, MemoryError> {
        Self::with_backing(size, RamBacking::Anonymous)
    }

    /// Maps `size` bytes from the given backing.
    pub fn with_backing(size: u64, backing: RamBacking) -> Result<Self, MemoryError> {
        if size == 0 {
            return Ok(RamBlock { map: None, size });
        }
        let len = usize::try_from(size).map_err(|_| MemoryError::RamTooLarge { size })?;
        let map = match backing {
            RamBacking::Anonymous => MmapRegion::new(len),
            RamBacking::File { file, offset } => {
                MmapRegion::from_file(FileOffset::new(file, offset), len)
            }
            RamBacking::Memfd => {
                let file = memfd(size)?;
                MmapRegion::from_file(FileOffset::new(file, 0), len)
            }
        }
        .map_err(|e| MemoryError::RamMap {
            size,
            reason: e.to_string(),
        })?;
        Ok(RamBlock {
            map: Some(map),
            size,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of the first byte (null for a zero-size block), for
    /// accelerators that map the block into the guest.
    pub fn host_address(&self) -> *mut u8 {
        self.map
            .as_ref()
            .map_or(std::ptr::null_mut(), |map| map.as_ptr())
    }

    /// The file descriptor and offset backing the block, when shared.
    pub fn file_offset(&self) -> Option<&FileOffset> {
        self.map.as_ref().and_then(|m| m.file_offset())
    }

    /// How many bytes of the block are resident in host memory (pages the
    /// guest or the VMM touched), for memory-footprint reports.
    pub fn resident_bytes(&self) -> u64 {
        let Some(map) = &self.map else { return 0 };
        let page = 4096usize;
        let pages = map.size().div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: the mapping is live for `map.size()` bytes from a
        // page-aligned address, and `vec` has one byte per page, as
        // mincore(2) requires.
        let ret = unsafe {
            libc::mincore(
                map.as_ptr() as *mut libc::c_void,
                map.size(),
                vec.as_mut_ptr(),
            )
        };
        if ret != 0 {
            return 0;
        }
        vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page as u64
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if buf.is_empty() {
            return Ok(());
        }
        let slice = self.slice(offset, buf.len())?;
        slice.copy_to(buf);
        Ok(())
    }

    /// Copies `buf` into the block starting at `offset`.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), MemoryError> {
        if buf.is_empty() {
            return Ok(());
        }
        let slice = self.slice(offset, buf.len())?;
        slice.copy_from(buf);
        Ok(())
    }

    fn slice(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<vm_memory::VolatileSlice<'_, ()>, MemoryError> {
        let out_of_bounds = MemoryError::RamOutOfBounds {
            offset,
            len: len as u64,
            size: self.size,
        };
        let end = offset
            .checked_add(len as u64)
            .ok_or(out_of_bounds.clone())?;
        if end > self.size {
            return Err(out_of_bounds);
        }
        let map = self.map.as_ref().ok_or(out_of_bounds.clone())?;
        // vm-memory checks the bounds again against the mapping.
        map.get_slice(offset as usize, len)
            .map_err(|_| out_of_bounds)
    }
}

/// Creates a memfd of `size` bytes. Written by hand because neither vm-memory
/// nor vmm-sys-util 0.15 wrap `memfd_create`.
fn memfd(size: u64) -> Result<File, MemoryError> {
    let name = c"ember-ram";
    // SAFETY: `name` is a valid NUL-terminated string and the flags are
    // constants; the call only returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::RamMap {
            size,
            reason: format!("memfd_create: {}", std::io::Error::last_os_error()),
        });
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody
    // else; the File takes sole ownership and closes it on drop.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| MemoryError::RamMap {
        size,
        reason: format!("sizing memfd: {e}"),
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_round_trip_and_bounds() {
        let block = RamBlock::anonymous(8192).unwrap();
        block.write(4000, &[1, 2, 3, 4]).unwrap();
        let mut buf = [0u8; 4];
        block.read(4000, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        assert!(block.write(8190, &[0; 3]).is_err());
        assert!(block.read(u64::MAX, &mut buf).is_err());
        assert_eq!(block.host_address() as usize % 4096, 0);
        // Only the touched pages (one, written above) are resident.
        assert_eq!(block.resident_bytes(), 4096);
    }

    #[test]
    fn memfd_backing_is_shared_file() {
        let block = RamBlock::with_backing(4096, RamBacking::Memfd).unwrap();
        assert!(block.file_offset().is_some());
        block.write(0, &[0xaa]).unwrap();
        let mut b = [0u8; 1];
        block.read(0, &mut b).unwrap();
        assert_eq!(b, [0xaa]);
    }

    #[test]
    fn zero_size_block_rejects_access() {
        let block = RamBlock::anonymous(0).unwrap();
        assert!(block.host_address().is_null());
        assert!(block.read(0, &mut [0u8; 1]).is_err());
        assert!(block.read(0, &mut []).is_ok());
    }
}
