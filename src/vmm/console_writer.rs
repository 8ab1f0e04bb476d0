//! Guest console output on its way to a host file descriptor that may
//! block: a bounded buffer that the devices fill without ever waiting, and
//! one thread (`ember-console-out`) that drains it into the sink.
//!
//! The UART writes on the vCPU/hart thread under its lock, virtio-console
//! on the event loop under its transport's lock. If either wrote to stdout
//! directly, a reader that stops reading (a full pipe, a suspended
//! terminal) would stop that thread inside write(2) with the lock held, and
//! pause, stop and SIGTERM would wait for it forever. So devices only
//! append to a [`ConsoleBuffer`] of [`CONSOLE_BUFFER_BYTES`], and what does
//! not fit is dropped and counted, the policy Firecracker follows for its
//! serial console: the guest never waits for the host's reader, and a
//! reader that cannot keep up loses output, never the VM.
//!
//! The writer thread holds no VM lock: it takes everything queued in one
//! move under the buffer's own short lock and writes it with no lock held.
//! When the reader keeps up the thread is woken by the first byte, so the
//! console is as prompt as a direct write. At exit, [`ConsoleWriter::drain`]
//! waits a bounded time for what is queued; a writer still stuck in
//! write(2) then is abandoned and ends with the process.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::vmm::seccomp::{confine_thread, SeccompMode, ThreadKind};

/// How many bytes of guest output may wait for the host's reader (queued
/// plus being written). 1 MiB holds several screens of a booting kernel's
/// log, enough to ride out a slow terminal, and bounds what a flooding
/// guest costs the host.
pub const CONSOLE_BUFFER_BYTES: usize = 1 << 20;

/// How long the end of a run waits for queued output to reach its sink
/// before giving up on it (a reader that keeps up needs milliseconds for
/// a full buffer; a stuck one must not hold the process).
pub const EXIT_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// The writer thread's name (seccomp filters are installed per thread).
pub const WRITER_THREAD_NAME: &str = "ember-console-out";

/// What became of the output so far, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleOutputStats {
    /// Accepted into the buffer.
    pub accepted: u64,
    /// Refused because the buffer was full.
    pub dropped: u64,
    /// Written to the sink.
    pub written: u64,
    /// Lost to a failed write (a closed pipe, a full disk).
    pub failed: u64,
    /// Queued or being written right now.
    pub pending: u64,
}

/// The bounded buffer itself, without threads: devices [`push`], the
/// writer [`take`]s everything queued and reports back with [`finish`].
/// Bytes queued plus bytes being written never exceed the capacity.
///
/// [`push`]: ConsoleBuffer::push
/// [`take`]: ConsoleBuffer::take
/// [`finish`]: ConsoleBuffer::finish
#[derive(Debug)]
pub struct ConsoleBuffer {
    capacity: usize,
    queued: Vec<u8>,
    /// Bytes taken by the writer and not yet finished.
    in_flight: usize,
    stats: ConsoleOutputStats,
}

impl ConsoleBuffer {
    pub fn new(capacity: usize) -> Self {
        ConsoleBuffer {
            capacity,
            queued: Vec::new(),
            in_flight: 0,
            stats: ConsoleOutputStats::default(),
        }
    }

    /// Queues as much of `bytes` as fits and drops the rest (counted);
    /// returns how many bytes were queued.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let room = self
            .capacity
            .saturating_sub(self.queued.len() + self.in_flight);
        let keep = bytes.len().min(room);
        self.queued.extend_from_slice(&bytes[..keep]);
        self.stats.accepted += keep as u64;
        self.stats.dropped += (bytes.len() - keep) as u64;
        keep
    }

    /// Hands everything queued to the writer (swapped into `chunk`, whose
    /// old contents are discarded), unless a write is still in flight or
    /// nothing is queued; returns whether it did.
    pub fn take(&mut self, chunk: &mut Vec<u8>) -> bool {
        if self.in_flight != 0 || self.queued.is_empty() {
            return false;
        }
        chunk.clear();
        std::mem::swap(chunk, &mut self.queued);
        self.in_flight = chunk.len();
        true
    }

    /// The writer is done with the chunk it took: it reached the sink, or
    /// (`ok` false) it was lost.
    pub fn finish(&mut self, ok: bool) {
        if ok {
            self.stats.written += self.in_flight as u64;
        } else {
            self.stats.failed += self.in_flight as u64;
        }
        self.in_flight = 0;
    }

    /// Nothing queued and nothing being written.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.queued.is_empty()
    }

    pub fn stats(&self) -> ConsoleOutputStats {
        ConsoleOutputStats {
            pending: (self.queued.len() + self.in_flight) as u64,
            ..self.stats
        }
    }
}

struct State {
    buffer: ConsoleBuffer,
    /// The writer sleeps on `work` and nobody has woken it yet: the next
    /// push must. Spares a futex wake per byte while the writer is busy.
    writer_asleep: bool,
    /// Every handle is gone: the writer finishes what is queued and ends.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: output queued, or closed.
    work: Condvar,
    /// Wakes [`ConsoleWriter::drain`]: a chunk finished.
    progress: Condvar,
}

impl Shared {
    /// The buffer's lock is only held for memory copies, never across I/O,
    /// so a panic under it leaves a consistent buffer to take over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks the buffer closed when the last [`ConsoleWriter`] handle goes,
/// so the writer thread ends once it has written what is queued.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.work.notify_one();
    }
}

/// A handle on the buffer and its writer thread; clones share both.
/// `write` queues (or drops) and never blocks on the sink.
#[derive(Clone)]
pub struct ConsoleWriter {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl ConsoleWriter {
    /// Starts the writer thread draining into `sink` through a buffer of
    /// [`CONSOLE_BUFFER_BYTES`].
    /// The thread installs the `seccomp` filter before it writes.
    pub fn spawn(sink: Box<dyn Write + Send>, seccomp: SeccompMode) -> std::io::Result<Self> {
        Self::with_capacity(sink, CONSOLE_BUFFER_BYTES, seccomp)
    }

    /// [`ConsoleWriter::spawn`] with another capacity (tests).
    pub fn with_capacity(
        sink: Box<dyn Write + Send>,
        capacity: usize,
        seccomp: SeccompMode,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buffer: ConsoleBuffer::new(capacity),
                writer_asleep: false,
                closed: false,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        let for_thread = shared.clone();
        // Detached: at exit it may be stuck in write(2) on a reader that
        // went away, and ending the process ends it.
        std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.into())
            .spawn(move || {
                // Unfiltered it would write nothing: guest output is
                // dropped and counted, as for a sink that fails.
                let confined = confine_thread(ThreadKind::ConsoleOutput, seccomp);
                if let Err(e) = &confined {
                    eprintln!("ember: console output is dropped: {e}");
                }
                run_writer(&for_thread, sink, confined.is_ok())
            })?;
        Ok(ConsoleWriter {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    /// Queues `bytes`, dropping what does not fit; returns how many were
    /// queued. Never waits for the sink.
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut state = self.shared.lock();
        let queued = state.buffer.push(bytes);
        let wake = queued > 0 && state.writer_asleep;
        if wake {
            state.writer_asleep = false;
        }
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
        queued
    }

    /// Waits until everything queued has been written, or `timeout` has
    /// passed; returns the counts either way (`pending` non-zero on a
    /// timeout).
    pub fn drain(&self, timeout: Duration) -> ConsoleOutputStats {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while !state.buffer.is_idle() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .shared
                .progress
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.buffer.stats()
    }

    pub fn stats(&self) -> ConsoleOutputStats {
        self.shared.lock().buffer.stats()
    }
}

impl Write for ConsoleWriter {
    /// Always reports the whole buffer taken: bytes that did not fit are
    /// counted as dropped, not returned to the device as an error (a UART
    /// with nothing listening goes on transmitting).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: takes everything queued, writes it with no lock
/// held, repeats; ends when every handle is gone and the buffer is empty.
fn run_writer(shared: &Shared, mut sink: Box<dyn Write + Send>, may_write: bool) {
    let mut chunk = Vec::new();
    loop {
        {
            let mut state = shared.lock();
            while !state.buffer.take(&mut chunk) {
                if state.closed {
                    return;
                }
                state.writer_asleep = true;
                state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
                state.writer_asleep = false;
            }
        }
        let ok = may_write && sink.write_all(&chunk).and_then(|_| sink.flush()).is_ok();
        shared.lock().buffer.finish(ok);
        shared.progress.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::mpsc;

    /// What the writer side does next, in the property test.
    #[derive(Clone, Debug)]
    enum Op {
        Push(Vec<u8>),
        Take,
        Finish(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Push),
            1 => Just(Op::Take),
            1 => any::<bool>().prop_map(Op::Finish),
        ]
    }

    proptest! {
        /// Against a byte-at-a-time model: a byte is queued iff queued plus
        /// in-flight bytes are below the capacity when it arrives; the
        /// sink sees exactly the queued bytes of finished-ok chunks, in
        /// order; every byte offered is accepted or dropped.
        #[test]
        fn buffer_drops_and_counts_like_the_model(
            capacity in 1usize..64,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut buffer = ConsoleBuffer::new(capacity);
            let mut chunk = Vec::new();
            let mut holding = false;
            let mut sink = Vec::new();
            // The model.
            let mut queue: std::collections::VecDeque<u8> = Default::default();
            let mut flight: Vec<u8> = Vec::new();
            let mut expected_sink = Vec::new();
            let (mut offered, mut dropped, mut failed) = (0u64, 0u64, 0u64);
            for op in ops {
                match op {
                    Op::Push(bytes) => {
                        let mut kept = 0;
                        for &b in &bytes {
                            offered += 1;
                            if queue.len() + flight.len() < capacity {
                                queue.push_back(b);
                                kept += 1;
                            } else {
                                dropped += 1;
                            }
                        }
                        prop_assert_eq!(buffer.push(&bytes), kept);
                    }
                    Op::Take => {
                        let model_takes = flight.is_empty() && !queue.is_empty();
                        prop_assert_eq!(buffer.take(&mut chunk), model_takes);
                        if model_takes {
                            flight = queue.drain(..).collect();
                            prop_assert_eq!(&chunk, &flight);
                            holding = true;
                        }
                    }
                    Op::Finish(ok) => {
                        if holding {
                            if ok {
                                sink.extend_from_slice(&chunk);
                                expected_sink.extend_from_slice(&flight);
                            } else {
                                failed += flight.len() as u64;
                            }
                            buffer.finish(ok);
                            flight.clear();
                            holding = false;
                        }
                    }
                }
                let stats = buffer.stats();
                prop_assert_eq!(stats.pending, (queue.len() + flight.len()) as u64);
                prop_assert!(stats.pending <= capacity as u64);
                prop_assert_eq!(stats.dropped, dropped);
                prop_assert_eq!(stats.failed, failed);
                prop_assert_eq!(stats.accepted + stats.dropped, offered);
                prop_assert_eq!(stats.accepted, stats.written + stats.failed + stats.pending);
                prop_assert_eq!(buffer.is_idle(), queue.is_empty() && flight.is_empty());
            }
            prop_assert_eq!(sink, expected_sink);
        }
    }

    /// A sink whose writes block until the test lets them go.
    struct Gated {
        gate: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_never_blocks_writers_and_overflow_is_counted() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = ConsoleWriter::with_capacity(
            Box::new(Gated {
                gate: gate.clone(),
                out: out.clone(),
            }),
            4096,
            SeccompMode::Off,
        )
        .unwrap();
        // Writing far more than the buffer holds must return at once, on
        // another thread so that a regression hangs only that thread.
        let (done, finished) = mpsc::channel();
        let mut w = writer.clone();
        std::thread::spawn(move || {
            for i in 0..10_000u32 {
                w.write_all(&i.to_le_bytes()).unwrap();
                w.flush().unwrap();
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a write blocked on the stuck sink");
        let stats = writer.stats();
        assert_eq!(stats.accepted + stats.dropped, 40_000);
        assert_eq!(stats.pending, 4096, "{stats:?}");
        assert_eq!(stats.dropped, 40_000 - 4096, "{stats:?}");
        // Draining a stuck sink gives up.
        let stuck = writer.drain(Duration::from_millis(20));
        assert_eq!(stuck.pending, 4096);
        // Let the sink go: what was queued arrives whole and in order.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let stats = writer.drain(Duration::from_secs(10));
        assert_eq!(stats.pending, 0, "{stats:?}");
        assert_eq!(stats.written, 4096);
        let expected: Vec<u8> = (0..1024u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(*out.lock().unwrap(), expected);
    }

    #[test]
    fn output_reaches_the_sink_without_a_drain_and_the_writer_ends_with_its_handles() {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        struct Channel(mpsc::Sender<Vec<u8>>);
        impl Write for Channel {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.send(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writer = ConsoleWriter::spawn(Box::new(Channel(tx)), SeccompMode::Off).unwrap();
        writer.push(b"hello");
        // Prompt: the writer wakes for the first byte, no flush needed.
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, b"hello");
        writer.push(b", world");
        drop(writer);
        // Closing writes what is queued, then the thread ends and drops
        // the sink, which closes the channel.
        let rest: Vec<u8> = rx.iter().flatten().collect();
        assert_eq!(rest, b", world");
    }

    #[test]
    fn failed_writes_are_counted() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writer = ConsoleWriter::spawn(Box::new(Broken), SeccompMode::Off).unwrap();
        writer.push(b"lost");
        let stats = writer.drain(Duration::from_secs(10));
        assert_eq!((stats.failed, stats.written, stats.pending), (4, 0, 0));
    }
}
