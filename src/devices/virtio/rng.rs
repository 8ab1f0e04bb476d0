//! virtio-rng, the entropy device (virtio 1.2, section 5.4): one queue of
//! device-writable buffers, each filled from the host's `getrandom`.

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::device::{device_type, DeviceError, VirtioDevice, VIRTIO_F_VERSION_1};
use super::{pop_head, read_chain, ChainRef, PassBudget};

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// At most this many random bytes per request, so that one guest request
/// cannot keep the event loop busy; the driver asks again for more.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
/// What one pass may do before yielding the event loop (a guest can
/// publish one 64 KiB request 256 times per notification, and refill).
const PASS_BUDGET: PassBudget = PassBudget {
    requests: 64,
    bytes: 1 << 20,
};
/// Descriptors per chain beyond which a request is refused.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// The virtio-rng device.
#[derive(Default)]
pub struct Rng {
    queue: Option<Queue>,
    buf: Vec<u8>,
    /// The last pass stopped at its budget.
    more: bool,
}

impl Rng {
    pub fn new() -> Self {
        Rng::default()
    }

    /// Fills chain `chain`; returns the number of bytes written. A chain
    /// with a device-readable descriptor, an indirect descriptor (not
    /// negotiated), cut short, or with a buffer not wholly inside guest RAM
    /// is returned untouched (length 0).
    fn fill_chain(
        &mut self,
        chain: ChainRef,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<u32, DeviceError> {
        let chain = read_chain(mem, chain, MAX_DESCRIPTORS);
        let usable = chain.complete
            && chain.descriptors.iter().all(|d| {
                d.is_write_only()
                    && GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize)
            });
        if !usable {
            return Ok(0);
        }
        let mut written = 0usize;
        for desc in &chain.descriptors {
            let n = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
            if n == 0 {
                continue;
            }
            self.buf.resize(n, 0);
            getrandom_fill(&mut self.buf)?;
            mem.write_slice(&self.buf, desc.addr())
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            written += n;
        }
        // At most MAX_BYTES_PER_REQUEST.
        Ok(written as u32)
    }
}

/// Fills `buf` from the kernel's random pool, retrying on short reads and
/// signals.
pub fn getrandom_fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, exclusively borrowed buffer of
        // `rest.len()` bytes; getrandom writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            // Never happens for a non-empty buffer; do not spin if it does.
            return Err(io::Error::other("getrandom returned no bytes"));
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No config space.
        data.fill(0);
    }

    fn activate(&mut self, queues: Vec<Queue>, _features: u64) -> Result<(), DeviceError> {
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(DeviceError::BadQueue(
                0,
                "expected exactly one queue".into(),
            ));
        };
        self.queue = queue.ready().then_some(queue);
        Ok(())
    }

    fn queue_states(&self) -> Vec<(usize, virtio_queue::QueueState)> {
        self.queue.iter().map(|q| (0, q.state())).collect()
    }

    fn reset(&mut self) {
        self.queue = None;
        self.more = false;
    }

    fn has_more_work(&self, index: usize) -> bool {
        index == 0 && self.more
    }

    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<bool, DeviceError> {
        if index != 0 {
            return Ok(false);
        }
        let Some(mut queue) = self.queue.take() else {
            return Ok(false);
        };
        let result = self.drain(&mut queue, mem);
        self.queue = Some(queue);
        result
    }
}

impl Rng {
    /// One pass: fills chains in order until none is left or
    /// [`PASS_BUDGET`] is spent.
    fn drain(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap<()>) -> Result<bool, DeviceError> {
        let mut budget = PASS_BUDGET;
        let mut used = false;
        self.more = false;
        while let Some(head) = pop_head(queue, 0, mem)? {
            let len = self.fill_chain(ChainRef::new(queue, head), mem)?;
            budget.charge_request(len as u64);
            queue
                .add_used(mem, head, len)
                .map_err(|e| DeviceError::BadChain {
                    queue: 0,
                    reason: e.to_string(),
                })?;
            used = true;
            if budget.spent() {
                self.more = true;
                break;
            }
        }
        if !used {
            return Ok(false);
        }
        queue
            .needs_notification(mem)
            .map_err(|e| DeviceError::Memory(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{guest_memory, TestQueue, NEXT, R, W};
    use vm_memory::GuestAddress;

    fn active(mem: &GuestMemoryMmap<()>) -> (Rng, TestQueue) {
        let tq = TestQueue::new(mem, 0x1000, 16);
        let mut rng = Rng::new();
        rng.activate(vec![tq.device_queue()], VIRTIO_F_VERSION_1)
            .unwrap();
        (rng, tq)
    }

    #[test]
    fn fills_writable_buffers() {
        let mem = guest_memory(0x40000);
        let (mut rng, mut tq) = active(&mem);
        let a = tq.push(&mem, &[(0x10000, 64, W), (0x11000, 32, W)]);
        assert!(rng.process_queue(0, &mem).unwrap());
        assert_eq!(tq.take_used(&mem), vec![(a as u32, 96)]);
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        // 64 random bytes being all zero has probability 2^-512.
        assert!(got.iter().any(|&b| b != 0));
        let mut tail = [0u8; 32];
        mem.read_slice(&mut tail, GuestAddress(0x11000)).unwrap();
        assert!(tail.iter().any(|&b| b != 0));
    }

    #[test]
    fn caps_bytes_per_request() {
        let mem = guest_memory(0x80000);
        let (mut rng, mut tq) = active(&mem);
        let head = tq.push(&mem, &[(0x10000, 0x30000, W), (0x40000, 0x30000, W)]);
        rng.process_queue(0, &mem).unwrap();
        assert_eq!(
            tq.take_used(&mem),
            vec![(head as u32, MAX_BYTES_PER_REQUEST as u32)]
        );
    }

    #[test]
    fn refuses_readable_outside_and_looping_chains() {
        let mem = guest_memory(0x40000);
        let (mut rng, mut tq) = active(&mem);
        mem.write_slice(&[0u8; 16], GuestAddress(0x10000)).unwrap();
        let readable = tq.push(&mem, &[(0x10000, 16, W), (0x10010, 16, R)]);
        let outside = tq.push(&mem, &[(0x3fff0, 32, W)]);
        // Descriptor 10 points at itself.
        tq.write_desc(&mem, 10, 0x12000, 8, W | NEXT, 10);
        tq.publish(&mem, 10);
        rng.process_queue(0, &mem).unwrap();
        assert_eq!(
            tq.take_used(&mem),
            vec![(readable as u32, 0), (outside as u32, 0), (10, 0)]
        );
        let mut got = [0xffu8; 16];
        mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert_eq!(got, [0u8; 16], "a refused chain is not written");
    }

    /// A full ring of maximal requests is served over several bounded
    /// passes, every request once and in order.
    #[test]
    fn a_full_ring_is_served_in_bounded_passes() {
        let mem = guest_memory(0x40000);
        let mut tq = TestQueue::new(&mem, 0x1000, 256);
        let mut rng = Rng::new();
        rng.activate(vec![tq.device_queue()], VIRTIO_F_VERSION_1)
            .unwrap();
        let head = tq.add_chain(&mem, &[(0x10000, MAX_BYTES_PER_REQUEST as u32, W)]);
        for _ in 0..256 {
            tq.publish(&mem, head);
        }
        let per_pass = (PASS_BUDGET.bytes / MAX_BYTES_PER_REQUEST as u64) as usize;
        let mut used = Vec::new();
        let mut passes = 0;
        loop {
            rng.process_queue(0, &mem).unwrap();
            passes += 1;
            let got = tq.take_used(&mem);
            assert!(got.len() <= per_pass, "{} requests in one pass", got.len());
            used.extend(got);
            if !rng.has_more_work(0) {
                break;
            }
            assert!(passes <= 256, "no progress");
        }
        assert_eq!(used, vec![(head as u32, MAX_BYTES_PER_REQUEST as u32); 256]);
    }

    #[test]
    fn bogus_available_index_is_a_device_error() {
        let mem = guest_memory(0x40000);
        let (mut rng, tq) = active(&mem);
        tq.set_avail_idx(&mem, 100);
        assert!(matches!(
            rng.process_queue(0, &mem),
            Err(DeviceError::BadQueue(0, _))
        ));
    }

    #[test]
    fn out_of_range_head_is_a_device_error() {
        let mem = guest_memory(0x40000);
        let (mut rng, mut tq) = active(&mem);
        tq.publish(&mem, 999);
        assert!(rng.process_queue(0, &mem).is_err());
    }

    #[test]
    fn inactive_or_other_queue_does_nothing() {
        let mem = guest_memory(0x40000);
        let mut rng = Rng::new();
        assert!(!rng.process_queue(0, &mem).unwrap());
        let (mut rng, mut tq) = active(&mem);
        tq.push(&mem, &[(0x10000, 8, W)]);
        assert!(!rng.process_queue(1, &mem).unwrap());
        rng.reset();
        assert!(!rng.process_queue(0, &mem).unwrap());
        assert!(tq.take_used(&mem).is_empty());
    }
}
