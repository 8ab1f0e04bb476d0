//! The serial console on the host side: where guest output goes, where
//! guest input comes from, the terminal's raw mode, and QEMU's `Ctrl-a x`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::signal::register_signal_handler;
use vmm_sys_util::terminal::Terminal;

use super::console_writer::{ConsoleOutputStats, ConsoleWriter};
use super::exit::{ExitReason, ExitSignal};
use super::seccomp::SeccompMode;

/// Where guest console input comes from (`--serial-input`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleInput {
    /// The terminal or pipe on standard input; `Ctrl-a x` quits.
    Stdin,
    /// No input.
    None,
    /// A file read to its end, or a UNIX socket to connect to.
    Path(PathBuf),
}

/// Where guest console output goes (`--serial-output`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleOutput {
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// Kept in memory for the library API to read and wait on.
    Capture(OutputCapture),
}

/// Guest output kept in memory (bounded: the oldest bytes go first), with
/// a way to wait for a pattern.
#[derive(Clone, Default)]
pub struct OutputCapture(Arc<(Mutex<CaptureState>, std::sync::Condvar)>);

#[derive(Default)]
struct CaptureState {
    bytes: Vec<u8>,
    /// Bytes dropped from the front to stay under the bound.
    dropped: u64,
}

/// How much output a capture keeps.
const CAPTURE_LIMIT: usize = 16 << 20;

impl OutputCapture {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CaptureState> {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything captured so far (lossily as UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Waits until the output contains `pattern` (from the start of the
    /// capture), up to `timeout`; returns the output so far either way,
    /// and whether the pattern was found.
    pub fn wait_for(&self, pattern: &str, timeout: std::time::Duration) -> (bool, String) {
        let deadline = std::time::Instant::now() + timeout;
        let needle = pattern.as_bytes();
        let mut st = self.lock();
        loop {
            if !needle.is_empty() && st.bytes.windows(needle.len()).any(|w| w == needle) {
                return (true, String::from_utf8_lossy(&st.bytes).into_owned());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return (false, String::from_utf8_lossy(&st.bytes).into_owned());
            }
            st = self
                .0
                 .1
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Write for OutputCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.lock();
        st.bytes.extend_from_slice(buf);
        if st.bytes.len() > CAPTURE_LIMIT {
            let excess = st.bytes.len() - CAPTURE_LIMIT;
            st.bytes.drain(..excess);
            st.dropped += excess as u64;
        }
        drop(st);
        self.0 .1.notify_all();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PartialEq for OutputCapture {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OutputCapture {}

impl std::fmt::Debug for OutputCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputCapture")
            .field("bytes", &self.lock().bytes.len())
            .finish()
    }
}

impl std::str::FromStr for ConsoleInput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "stdin" | "-" => ConsoleInput::Stdin,
            "none" => ConsoleInput::None,
            path => ConsoleInput::Path(PathBuf::from(path)),
        })
    }
}

impl std::str::FromStr for ConsoleOutput {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "stdout" | "-" => ConsoleOutput::Stdout,
            path => ConsoleOutput::File(PathBuf::from(path)),
        })
    }
}

/// One output sink shared by several devices (the UART and
/// virtio-console both write to the same stdout or file, in the order they
/// write). Writing never waits for the host's reader: stdout and files go
/// through a [`ConsoleWriter`] (a bounded buffer drained by its own
/// thread; what does not fit is dropped and counted), a capture is memory
/// and is written directly.
#[derive(Clone)]
pub struct SharedOutput(OutputPath);

#[derive(Clone)]
enum OutputPath {
    Queued(ConsoleWriter),
    /// Bytes go straight into the capture under its short lock, so the
    /// library API sees every byte written by the time a device returns.
    Capture(OutputCapture),
}

impl SharedOutput {
    /// Output for a sink that can block (a pipe, a terminal, a file): a
    /// writer thread takes the writes off the caller's thread.
    pub fn queued(sink: Box<dyn Write + Send>, seccomp: SeccompMode) -> std::io::Result<Self> {
        Ok(SharedOutput(OutputPath::Queued(ConsoleWriter::spawn(
            sink, seccomp,
        )?)))
    }

    /// Output into a capture (never blocks).
    pub fn capture(capture: OutputCapture) -> Self {
        SharedOutput(OutputPath::Capture(capture))
    }

    /// What became of the output so far (a capture never drops or fails
    /// and has nothing pending; it counts as written).
    pub fn stats(&self) -> ConsoleOutputStats {
        match &self.0 {
            OutputPath::Queued(w) => w.stats(),
            OutputPath::Capture(c) => {
                let st = c.lock();
                let written = st.bytes.len() as u64 + st.dropped;
                ConsoleOutputStats {
                    accepted: written,
                    written,
                    ..Default::default()
                }
            }
        }
    }

    /// Waits up to `timeout` for queued output to reach its sink (the end
    /// of a run); returns the counts either way.
    pub fn drain(&self, timeout: std::time::Duration) -> ConsoleOutputStats {
        match &self.0 {
            OutputPath::Queued(w) => w.drain(timeout),
            OutputPath::Capture(_) => self.stats(),
        }
    }
}

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            OutputPath::Queued(w) => w.write(buf),
            OutputPath::Capture(c) => c.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ConsoleOutput {
    /// Opens the sink guest output is written to; for stdout and files
    /// this starts the writer thread, confined by `seccomp` before it
    /// writes anything. Whoever ends the process calls
    /// [`SharedOutput::drain`] first (`ember run` does), or output still
    /// queued is lost with the process.
    pub fn open(&self, seccomp: SeccompMode) -> std::io::Result<SharedOutput> {
        match self {
            ConsoleOutput::Stdout => SharedOutput::queued(Box::new(stdout_fd()?), seccomp),
            ConsoleOutput::File(path) => {
                let file = File::create(path).map_err(|e| named("--serial-output", path, e))?;
                SharedOutput::queued(Box::new(file), seccomp)
            }
            ConsoleOutput::Capture(c) => Ok(SharedOutput::capture(c.clone())),
        }
    }
}

/// Standard output as an unbuffered file of its own (a duplicate of fd 1).
/// Not `std::io::stdout()`: its buffer is flushed when the process exits,
/// which would block on a reader that stopped reading, and its lock would
/// be held by a writer stuck in write(2).
fn stdout_fd() -> std::io::Result<File> {
    use std::os::fd::AsFd;
    Ok(File::from(std::io::stdout().as_fd().try_clone_to_owned()?))
}

/// An opened input source.
pub enum InputSource {
    Stdin,
    File(File),
    Socket(UnixStream),
}

impl InputSource {
    /// Opens the source, or `None` for no input.
    pub fn open(input: &ConsoleInput) -> std::io::Result<Option<InputSource>> {
        Ok(match input {
            ConsoleInput::None => None,
            ConsoleInput::Stdin => Some(InputSource::Stdin),
            ConsoleInput::Path(path) => {
                Some(open_path(path).map_err(|e| named("--serial-input", path, e))?)
            }
        })
    }

    fn fd(&self) -> RawFd {
        match self {
            InputSource::Stdin => std::io::stdin().as_raw_fd(),
            InputSource::File(f) => f.as_raw_fd(),
            InputSource::Socket(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            InputSource::Stdin => std::io::stdin().lock().read(buf),
            InputSource::File(f) => f.read(buf),
            InputSource::Socket(s) => s.read(buf),
        }
    }
}

/// `e` with the flag and path it is about in its message.
fn named(flag: &str, path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{flag} {}: {e}", path.display()))
}

fn open_path(path: &Path) -> std::io::Result<InputSource> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_socket() {
        Ok(InputSource::Socket(UnixStream::connect(path)?))
    } else {
        Ok(InputSource::File(File::open(path)?))
    }
}

/// QEMU's console escape: `Ctrl-a x` quits, `Ctrl-a Ctrl-a` sends one
/// `Ctrl-a`, anything else after `Ctrl-a` is sent as typed.
#[derive(Default)]
pub struct EscapeFilter {
    pending: bool,
}

const CTRL_A: u8 = 0x01;

impl EscapeFilter {
    /// Filters `input`; returns the bytes for the guest and whether the
    /// user asked to quit (bytes after the quit are dropped).
    pub fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => return (out, true),
                    CTRL_A => out.push(CTRL_A),
                    other => {
                        out.push(CTRL_A);
                        out.push(other);
                    }
                }
            } else if b == CTRL_A {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// Queues bytes into the guest's UART.
pub type DeliverInput = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Feeds console input to the guest's UART from the event loop.
pub struct ConsoleReader {
    source: InputSource,
    deliver: DeliverInput,
    exit: Arc<ExitSignal>,
    escape: Option<EscapeFilter>,
}

impl ConsoleReader {
    /// `deliver` queues bytes into the guest UART.
    pub fn new(source: InputSource, deliver: DeliverInput, exit: Arc<ExitSignal>) -> Self {
        let escape = matches!(source, InputSource::Stdin).then(EscapeFilter::default);
        ConsoleReader {
            source,
            deliver,
            exit,
            escape,
        }
    }
}

impl ConsoleReader {
    /// Delivers everything a source that epoll cannot watch (a regular file,
    /// /dev/null) holds; reading such a source never blocks for long.
    fn drain_unpollable(&mut self) -> bool {
        use std::os::fd::BorrowedFd;
        use std::os::unix::fs::FileTypeExt;
        // SAFETY: the descriptor belongs to `self.source`, which outlives
        // this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.source.fd()) };
        let Ok(owned) = fd.try_clone_to_owned() else {
            return false;
        };
        let Ok(meta) = File::from(owned).metadata() else {
            return false;
        };
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_char_device()) {
            return false;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.source.read(&mut buf) {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    let (bytes, quit) = match &mut self.escape {
                        Some(filter) => filter.filter(&buf[..n]),
                        None => (buf[..n].to_vec(), false),
                    };
                    (self.deliver)(&bytes);
                    if quit {
                        self.exit.request(ExitReason::UserQuit);
                        return true;
                    }
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleReader {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.source.fd(), EventSet::IN)) {
            if !self.drain_unpollable() {
                self.exit.request(ExitReason::Error(format!(
                    "cannot watch console input: {e:?}"
                )));
            }
        }
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 4096];
        let n = match self.source.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            // End of input: stop watching it, the guest keeps running.
            let _ = ops.remove(Events::new_raw(self.source.fd(), EventSet::IN));
            return;
        }
        let (bytes, quit) = match &mut self.escape {
            Some(filter) => filter.filter(&buf[..n]),
            None => (buf[..n].to_vec(), false),
        };
        if !bytes.is_empty() {
            (self.deliver)(&bytes);
        }
        if quit {
            self.exit.request(ExitReason::UserQuit);
        }
    }
}

/// Wakes the event loop when the VM must end.
pub struct ExitWatcher {
    exit: Arc<ExitSignal>,
}

impl ExitWatcher {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        ExitWatcher { exit }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.exit.eventfd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.eventfd().read();
        // A termination signal writes the eventfd directly (taking the
        // reason's lock is not allowed in a signal handler): no reason yet
        // means one of those signals.
        if !self.exit.is_requested() {
            self.exit.request(ExitReason::UserQuit);
        }
    }
}

/// Standard input in raw mode for as long as this guard lives, when it is a
/// terminal; canonical mode is restored on drop (including unwinding) and by
/// [`install_termination_handlers`]'s signals.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Switches standard input to raw mode if it is a terminal.
    pub fn enter() -> Self {
        let stdin = std::io::stdin();
        let lock = stdin.lock();
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(lock.tty_fd()) } == 1;
        let active = tty && lock.set_raw_mode().is_ok();
        RawTerminal { active }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}

/// The exit eventfd that termination signals write to.
static EXIT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = EXIT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is 8 valid bytes and
        // `fd` is the exit eventfd, which lives for the whole process run.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// Makes SIGTERM, SIGINT and SIGHUP end the VM through the event loop (so the
/// terminal is restored and the exit status is clean) instead of killing
/// the process in raw mode.
pub fn install_termination_handlers(exit: &ExitSignal) -> std::io::Result<()> {
    EXIT_FD.store(exit.eventfd().as_raw_fd(), Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        register_signal_handler(sig, on_terminate)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_follow_qemu() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(
            f.filter(&[CTRL_A, CTRL_A, b'y']),
            (vec![CTRL_A, b'y'], false)
        );
        assert_eq!(f.filter(&[CTRL_A, b'c']), (vec![CTRL_A, b'c'], false));
        // Split across reads.
        assert_eq!(f.filter(b"a\x01"), (b"a".to_vec(), false));
        assert_eq!(f.filter(b"xignored"), (vec![], true));
    }

    #[test]
    fn inputs_parse() {
        assert_eq!("stdin".parse::<ConsoleInput>(), Ok(ConsoleInput::Stdin));
        assert_eq!("none".parse::<ConsoleInput>(), Ok(ConsoleInput::None));
        assert_eq!(
            "/tmp/x".parse::<ConsoleOutput>(),
            Ok(ConsoleOutput::File("/tmp/x".into()))
        );
    }
}
