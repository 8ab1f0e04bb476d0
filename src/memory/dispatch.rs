//! Dispatch: the one path every access that is not a direct RAM mapping
//! takes (KVM MMIO and port-I/O exits, the software CPU's slow path, device
//! DMA). It looks the address up in the current FlatView and then copies
//! RAM, drops ROM writes, or calls the device's callbacks, splitting and
//! widening accesses to the sizes the device implements.
//!
//! Values are what a little-endian CPU would load from or store to the bytes
//! at the address (both x86_64 and riscv64 are little endian); a big-endian
//! device sees the bytes the other way round.

use std::sync::atomic::Ordering;

use super::address_space::{size_mask, AddressSpace, Unassigned};
use super::flatview::{FlatRange, FlatView};
use super::region::{Endianness, IoHandler, RegionKind, SIZE_2_64};

/// The outcome of an access, as QEMU's `MemTxResult`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemTxResult {
    /// The access reached memory or a device.
    Ok,
    /// Nothing claims (part of) the address range, or a device region has
    /// no callbacks: reads returned the unassigned value, writes were
    /// dropped.
    Unassigned,
    /// A device rejected the access size or alignment: reads returned 0,
    /// writes were dropped.
    Invalid,
}

impl MemTxResult {
    /// Keeps the first failure of a multi-part access.
    fn and(self, next: MemTxResult) -> MemTxResult {
        if self == MemTxResult::Ok {
            next
        } else {
            self
        }
    }
}

impl FlatView {
    /// The range containing `addr`: first the range that answered the last
    /// lookup, then a binary search over the range starts.
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<&FlatRange> {
        let recent = self.mru.load(Ordering::Relaxed);
        if let (Some(&start), Some(&last)) = (self.starts.get(recent), self.lasts.get(recent)) {
            if start <= addr && addr <= last {
                return self.ranges.get(recent);
            }
        }
        let index = self
            .starts
            .partition_point(|&start| start <= addr)
            .checked_sub(1)?;
        if addr <= self.lasts[index] {
            self.mru.store(index, Ordering::Relaxed);
            self.ranges.get(index)
        } else {
            None
        }
    }

    /// The first address at or after `addr` that some range claims, or 2^64.
    fn next_claimed(&self, addr: u64) -> u128 {
        let index = self.starts.partition_point(|&start| start <= addr);
        self.starts.get(index).map_or(SIZE_2_64, |&s| s as u128)
    }
}

/// Whether a read of this range goes straight to its memory.
fn direct_read(range: &FlatRange) -> bool {
    match range.kind {
        RegionKind::Ram | RegionKind::Rom => true,
        RegionKind::Romd => range.romd_mode,
        _ => false,
    }
}

/// QEMU's `memory_region_access_valid`.
fn access_valid(io: &IoHandler, offset: u64, size: u32, is_write: bool) -> bool {
    let rules = &io.rules;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return false;
    }
    if !rules.valid_unaligned && offset & (size as u64 - 1) != 0 {
        return false;
    }
    if size > rules.valid_max || size < rules.valid_min {
        return false;
    }
    io.ops.accepts(offset, size, is_write)
}

/// Swaps the low `size` bytes of `value` (between guest and big-endian
/// device order).
fn swap_low_bytes(value: u64, size: u32) -> u64 {
    if size <= 1 {
        value
    } else {
        value.swap_bytes() >> (64 - size * 8)
    }
}

fn to_device_order(io: &IoHandler, value: u64, size: u32) -> u64 {
    match io.rules.endianness {
        Endianness::Little => value,
        Endianness::Big => swap_low_bytes(value, size),
    }
}

/// Shifts left by `shift` bits, or right when `shift` is negative.
fn shift_signed(value: u64, shift: i64) -> u64 {
    if shift >= 0 {
        value << shift
    } else {
        value >> -shift
    }
}

/// The callback size for an access of `size` bytes and where each piece
/// goes: QEMU's `access_with_adjusted_size`. Yields (offset delta, shift of
/// the piece within the value, piece size).
fn pieces(io: &IoHandler, size: u32) -> impl Iterator<Item = (u64, i64, u32)> {
    let rules = io.rules;
    let access = size.min(rules.impl_max).max(rules.impl_min);
    let big = rules.endianness == Endianness::Big;
    (0..size).step_by(access as usize).map(move |i| {
        let shift = if big {
            (size as i64 - access as i64 - i as i64) * 8
        } else {
            i as i64 * 8
        };
        (i as u64, shift, access)
    })
}

/// One read of `size` bytes at `offset` of a device, in guest order.
fn io_read(
    io: Option<&IoHandler>,
    offset: u64,
    size: u32,
    unassigned: Unassigned,
) -> (u64, MemTxResult) {
    let Some(io) = io else {
        return (unassigned.value(size), MemTxResult::Unassigned);
    };
    if !access_valid(io, offset, size, false) {
        return (0, MemTxResult::Invalid);
    }
    io.accesses
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut value = 0u64;
    for (delta, shift, access) in pieces(io, size) {
        let piece = io.ops.read(offset.wrapping_add(delta), access) & size_mask(access);
        value |= shift_signed(piece, shift);
    }
    let value = value & size_mask(size);
    (to_device_order(io, value, size), MemTxResult::Ok)
}

/// One write of the low `size` bytes of `value` (guest order) to a device.
fn io_write(io: Option<&IoHandler>, offset: u64, size: u32, value: u64) -> MemTxResult {
    let Some(io) = io else {
        return MemTxResult::Unassigned;
    };
    if !access_valid(io, offset, size, true) {
        return MemTxResult::Invalid;
    }
    io.accesses
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let value = to_device_order(io, value & size_mask(size), size);
    for (delta, shift, access) in pieces(io, size) {
        let piece = shift_signed(value, -shift) & size_mask(access);
        io.ops.write(offset.wrapping_add(delta), access, piece);
    }
    MemTxResult::Ok
}

/// How much of a buffer access at `offset` goes to a device in one call:
/// QEMU's `memory_access_size`, bounded by the valid maximum and, unless the
/// device handles unaligned accesses, by the offset's alignment.
fn buffer_piece(io: Option<&IoHandler>, remaining: usize, offset: u64) -> usize {
    let Some(io) = io else {
        return remaining.min(8);
    };
    let mut max = io.rules.valid_max as u64;
    if !io.rules.impl_unaligned {
        let align = offset & offset.wrapping_neg();
        if align != 0 && align < max {
            max = align;
        }
    }
    let l = (remaining as u64).min(max).max(1);
    // Round down to a power of two.
    1usize << (63 - l.leading_zeros())
}

fn le_value(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(raw)
}

/// Either side of a buffer access.
enum Buf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Buf<'_> {
    fn len(&self) -> usize {
        match self {
            Buf::Read(b) => b.len(),
            Buf::Write(b) => b.len(),
        }
    }
}

impl AddressSpace {
    /// One access of `size` (1, 2, 4 or 8) bytes at `addr`, as a CPU load
    /// makes it: it goes whole to the region at `addr`. Returns the value
    /// and how the access went.
    pub fn read(&self, addr: u64, size: u32) -> (u64, MemTxResult) {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return (0, MemTxResult::Invalid);
        }
        let view = self.view_guard();
        match view.lookup(addr) {
            None => (self.unassigned().value(size), MemTxResult::Unassigned),
            Some(range) if !direct_read(range) => {
                let offset = range.offset_in_region + (addr - range.start);
                io_read(range.backing.io(), offset, size, self.unassigned())
            }
            Some(_) => {
                let mut bytes = [0u8; 8];
                let result = rw(
                    &view,
                    self.unassigned(),
                    addr,
                    Buf::Read(&mut bytes[..size as usize]),
                );
                (le_value(&bytes), result)
            }
        }
    }

    /// One store of the low `size` (1, 2, 4 or 8) bytes of `value` at
    /// `addr`, as a CPU makes it.
    pub fn write(&self, addr: u64, size: u32, value: u64) -> MemTxResult {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return MemTxResult::Invalid;
        }
        let view = self.view_guard();
        match view.lookup(addr) {
            None => MemTxResult::Unassigned,
            Some(range) if matches!(range.kind, RegionKind::Io | RegionKind::Romd) => {
                let offset = range.offset_in_region + (addr - range.start);
                io_write(range.backing.io(), offset, size, value)
            }
            Some(_) => {
                let bytes = value.to_le_bytes();
                rw(
                    &view,
                    self.unassigned(),
                    addr,
                    Buf::Write(&bytes[..size as usize]),
                )
            }
        }
    }

    /// Reads `buf.len()` bytes starting at `addr`, across as many regions as
    /// it spans (device DMA, KVM exit data): RAM is copied, device ranges
    /// are read in the largest pieces they accept, holes read unassigned.
    pub fn read_buf(&self, addr: u64, buf: &mut [u8]) -> MemTxResult {
        rw(&self.view_guard(), self.unassigned(), addr, Buf::Read(buf))
    }

    /// Writes `buf` starting at `addr`; the counterpart of [`Self::read_buf`].
    /// Writes to ROM and to holes are dropped.
    pub fn write_buf(&self, addr: u64, buf: &[u8]) -> MemTxResult {
        rw(&self.view_guard(), self.unassigned(), addr, Buf::Write(buf))
    }
}

/// QEMU's `flatview_read_continue` / `flatview_write_continue` in one loop.
fn rw(view: &FlatView, unassigned: Unassigned, addr: u64, mut buf: Buf<'_>) -> MemTxResult {
    let len = buf.len();
    let mut done = 0usize;
    let mut result = MemTxResult::Ok;
    while done < len {
        let remaining = len - done;
        let at = addr as u128 + done as u128;
        if at >= SIZE_2_64 {
            // The access runs off the end of the address space.
            if let Buf::Read(b) = &mut buf {
                b[done..].fill(unassigned.byte());
            }
            return result.and(MemTxResult::Unassigned);
        }
        let at = at as u64;
        let step = match view.lookup(at) {
            None => {
                let l = remaining
                    .min((view.next_claimed(at) - at as u128).min(usize::MAX as u128) as usize);
                if let Buf::Read(b) = &mut buf {
                    b[done..done + l].fill(unassigned.byte());
                }
                result = result.and(MemTxResult::Unassigned);
                l
            }
            Some(range) => {
                let offset = range.offset_in_region + (at - range.start);
                let in_range =
                    remaining.min((range.end() - at as u128).min(usize::MAX as u128) as usize);
                let (l, r) = match &mut buf {
                    Buf::Read(b) if direct_read(range) => (
                        in_range,
                        ram_copy(
                            range,
                            offset,
                            Buf::Read(&mut b[done..done + in_range]),
                            unassigned,
                        ),
                    ),
                    Buf::Write(b) if matches!(range.kind, RegionKind::Ram | RegionKind::Rom) => {
                        let r = if range.readonly {
                            // ROM: the guest's write is dropped.
                            MemTxResult::Ok
                        } else {
                            ram_copy(
                                range,
                                offset,
                                Buf::Write(&b[done..done + in_range]),
                                unassigned,
                            )
                        };
                        (in_range, r)
                    }
                    Buf::Read(b) => {
                        let io = range.backing.io();
                        let l = buffer_piece(io, remaining, offset);
                        let (value, r) = io_read(io, offset, l as u32, unassigned);
                        b[done..done + l].copy_from_slice(&value.to_le_bytes()[..l]);
                        (l, r)
                    }
                    Buf::Write(b) => {
                        let io = range.backing.io();
                        let l = buffer_piece(io, remaining, offset);
                        (
                            l,
                            io_write(io, offset, l as u32, le_value(&b[done..done + l])),
                        )
                    }
                };
                result = result.and(r);
                l
            }
        };
        done += step;
    }
    result
}

/// Copies between a buffer and the RAM block of a range.
fn ram_copy(range: &FlatRange, offset: u64, buf: Buf<'_>, unassigned: Unassigned) -> MemTxResult {
    let Some(ram) = range.backing.ram() else {
        return MemTxResult::Unassigned;
    };
    let ok = match buf {
        Buf::Read(b) => {
            let ok = ram.read(offset, b).is_ok();
            if !ok {
                b.fill(unassigned.byte());
            }
            ok
        }
        Buf::Write(b) => ram.write(offset, b).is_ok(),
    };
    // The block is as large as the region, so this only fails for a range
    // past the block's end, which rendering never produces.
    if ok {
        MemTxResult::Ok
    } else {
        MemTxResult::Unassigned
    }
}
