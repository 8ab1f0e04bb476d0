//! Entry points for the cargo-fuzz targets in `fuzz/` (which need nightly
//! Rust and libFuzzer); the unit tests below also run them on random
//! inputs with stable Rust, so CI exercises the same code.
//!
//! An input is turned into a queue the way a hostile guest could lay one
//! out: byte 0 picks the queue size, bytes 1-2 the head index, the next
//! `16 * size` bytes are the descriptor table, and the rest fills guest
//! memory from [`DATA_START`]. Descriptors may point anywhere, including
//! outside guest memory, loop, or claim huge lengths.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::parse_request;
use super::net::parse_tx_chain;
use super::{read_chain, ChainRef};

/// Size of the fuzzed guest memory, at guest address 0.
pub const MEMORY_SIZE: usize = 0x10000;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
/// Where the rest of the input lands.
pub const DATA_START: u64 = 0x3000;

/// Guest memory with one available chain described by `data`, and the
/// queue to pop it from. `None` if memory cannot be created.
fn setup(data: &[u8]) -> Option<(GuestMemoryMmap<()>, Queue)> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).ok()?;
    let size: u16 = 1 << (data.first().copied().unwrap_or(0) % 9);
    let head = u16::from_le_bytes([
        data.get(1).copied().unwrap_or(0),
        data.get(2).copied().unwrap_or(0),
    ]);
    let rest = data.get(3..).unwrap_or(&[]);
    let table_len = (16 * size as usize).min(rest.len());
    mem.write_slice(&rest[..table_len], GuestAddress(DESC_TABLE))
        .ok()?;
    let payload = &rest[table_len..];
    let payload = &payload[..payload.len().min(MEMORY_SIZE - DATA_START as usize)];
    mem.write_slice(payload, GuestAddress(DATA_START)).ok()?;
    // avail: flags 0, idx 1, ring[0] = head.
    mem.write_obj(0u16, GuestAddress(AVAIL_RING)).ok()?;
    mem.write_obj(1u16, GuestAddress(AVAIL_RING + 2)).ok()?;
    mem.write_obj(head, GuestAddress(AVAIL_RING + 4)).ok()?;
    let mut queue = Queue::new(size).ok()?;
    queue.set_size(size);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    Some((mem, queue))
}

/// Parses the chain as a virtio-blk request. Must never panic.
pub fn block_request(data: &[u8]) {
    let Some((mem, mut queue)) = setup(data) else {
        return;
    };
    if let Some(chain) = queue.pop_descriptor_chain(&mem) {
        let _ = parse_request(&mem, ChainRef::new(&queue, chain.head_index()));
    }
}

/// Parses the chain as a virtio-net transmit chain. Must never panic.
pub fn net_tx(data: &[u8]) {
    let Some((mem, mut queue)) = setup(data) else {
        return;
    };
    if let Some(chain) = queue.pop_descriptor_chain(&mem) {
        let chain = read_chain(&mem, ChainRef::new(&queue, chain.head_index()), usize::MAX);
        let mut frame = Vec::new();
        let _ = parse_tx_chain(&mem, chain.descriptors, &mut frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A well-formed chain is accepted: checks that the harness builds real
    /// chains, so random inputs are not all rejected up front.
    #[test]
    fn the_harness_builds_real_chains() {
        let mut data = vec![2u8, 0, 0]; // size 4, head 0
        let desc = |addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = addr.to_le_bytes().to_vec();
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&next.to_le_bytes());
            d
        };
        data.extend(desc(DATA_START, 16, 1, 1)); // header, NEXT
        data.extend(desc(DATA_START + 0x100, 512, 3, 2)); // data, NEXT|WRITE
        data.extend(desc(DATA_START + 0x400, 1, 2, 0)); // status, WRITE
        data.extend(desc(0, 0, 0, 0));
        data.extend([0u8; 16]); // header: IN, sector 0
        let (mem, mut queue) = setup(&data).unwrap();
        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        let chain = ChainRef::new(&queue, chain.head_index());
        assert!(parse_request(&mem, chain).is_ok());
        let chain = read_chain(&mem, chain, usize::MAX);
        let mut frame = Vec::new();
        // A chain with writable descriptors is not a transmit chain.
        assert!(parse_tx_chain(&mem, chain.descriptors, &mut frame).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_block_chains_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            block_request(&data);
        }

        /// Wherever the parser puts a status byte (a request's, or the
        /// error answer of a malformed chain), it is the last byte of the
        /// chain's last descriptor, which is device-writable and wholly
        /// inside guest memory; a request's data buffers are too.
        #[test]
        fn random_block_chains_write_only_into_whole_buffers(
            data in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            use vm_memory::GuestMemoryBackend;
            let Some((mem, mut queue)) = setup(&data) else {
                return Ok(());
            };
            let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                return Ok(());
            };
            let chain = ChainRef::new(&queue, chain.head_index());
            let whole = |addr: GuestAddress, len: u32| {
                len == 0 || GuestMemoryBackend::check_range(&mem, addr, len as usize)
            };
            let (status, segments) = match parse_request(&mem, chain) {
                Ok(req) => (Some(req.status), req.data),
                Err(bad) => (bad.status, Vec::new()),
            };
            if let Some(status) = status {
                let descs = read_chain(&mem, chain, usize::MAX).descriptors;
                let last = descs.last().expect("a status needs a descriptor");
                prop_assert!(last.is_write_only() && whole(last.addr(), last.len()));
                prop_assert_eq!(status.0, last.addr().0 + last.len() as u64 - 1);
            }
            for s in segments {
                prop_assert!(whole(s.addr, s.len));
            }
        }

        #[test]
        fn random_net_chains_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            net_tx(&data);
        }
    }
}
