//! The API socket server.
//!
//! Threads: one acceptor, plus one thread per connected client (at most
//! [`ServerConfig::max_clients`]). A client thread reads a line, dispatches
//! it through [`protocol::dispatch`] and writes the answer before reading
//! the next line, so answers come back in order and a client that does not
//! read its answers only ever stalls its own thread: its writes carry a send
//! timeout (`SO_SNDTIMEO`), after which the server drops it.
//!
//! Idle clients: a request line must arrive complete within
//! [`ServerConfig::idle_timeout`] of the previous answer (or of the
//! connection); otherwise the connection is closed. That also ends a
//! client that dribbles a line out a byte at a time. Lines are at most
//! [`ServerConfig::max_line`] bytes.
//!
//! The client cap cannot lock the owner out: when all
//! [`ServerConfig::max_clients`] sessions are taken, a new connection
//! closes the session that has waited longest for its next request and
//! takes its place (as a pool evicts its least recently used entry). Only
//! when every session is in the middle of a request does a new connection
//! get `busy`, and each of those ends within the time its operation takes
//! plus the send timeout. Connections are cheap (a thread blocked in
//! `read`), so the cap only bounds threads; idle sessions making room is
//! what keeps `ember ctl` usable whatever other local processes hold open.
//!
//! Shutdown: the acceptor sleeps in `poll(2)` on the listening socket and an
//! eventfd. [`ApiServer::shutdown`] (or `Drop`) signals the eventfd; the
//! acceptor then calls `shutdown(SHUT_RD)` on every client socket, which
//! makes a client thread blocked in `read` see end of file while one in the
//! middle of a request still writes its answer. After a short grace period
//! ([`ServerConfig::shutdown_grace`]) it calls `shutdown(SHUT_RDWR)` on the
//! rest, so a thread blocked in `send` to a client that does not read fails
//! with `EPIPE`; then it joins every client thread and returns. Nothing
//! waits for a client to cooperate, so a silent client cannot hang it.
//! Client threads also signal the eventfd when they finish so the acceptor
//! joins them promptly instead of accumulating finished threads.
//!
//! Permissions: the socket is bound inside a fresh directory created with
//! mode 0700 next to the final path, set to 0600, and then hard-linked to
//! the final path (which fails if anything appeared there meanwhile, so an
//! existing file is never replaced) before the private directory is
//! removed. The socket is thus never reachable by anyone but the owner, and
//! no process-wide umask change is needed (umask is shared by all threads).

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::vmm::landlock_rules::FsPolicy;
use crate::vmm::seccomp::{confine_thread, SeccompMode, ThreadKind};
use serde_json::Value;
use vmm_sys_util::eventfd::EventFd;

use super::control::VmControl;
use super::protocol::{self, ErrorCode, Response, MAX_REQUEST_LINE};
use super::{read_line_limited, send_all, ApiError, Line};

/// Limits of one server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Clients served at once; one more gets a `busy` error line and is
    /// disconnected.
    pub max_clients: usize,
    /// Longest request line in bytes (without the newline).
    pub max_line: usize,
    /// How long one response write may block on a client that does not
    /// read before that client is dropped.
    pub write_timeout: Duration,
    /// At shutdown, how long answers already being produced may take to
    /// reach their clients before every connection is cut.
    pub shutdown_grace: Duration,
    /// How long a client may take to send its next complete request line
    /// before the connection is closed.
    pub idle_timeout: Duration,
    /// The system call filter the acceptor installs before it serves
    /// anyone; connection threads inherit it (`vmm/seccomp.rs`).
    pub seccomp: SeccompMode,
    /// The files the acceptor and its connection threads may reach
    /// (`vmm/landlock_rules.rs`), applied before the filter. The socket is
    /// bound before, so it needs no rule.
    pub fs_policy: FsPolicy,
}

/// [`ServerConfig::idle_timeout`] by default: ample for a person typing
/// into `socat`, short enough that forgotten connections do not pile up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_clients: 32,
            max_line: MAX_REQUEST_LINE,
            write_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_millis(250),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            seccomp: SeccompMode::Off,
            fs_policy: FsPolicy::default(),
        }
    }
}

/// Counters for introspection, since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub connections: u64,
    /// Connections turned away with `busy`.
    pub rejected: u64,
    /// Connections being served now.
    pub active: u64,
    /// Requests answered (every non-blank line, including bad ones).
    pub requests: u64,
    /// Of those, answered with an error.
    pub errors: u64,
    /// Clients dropped because a response write timed out or failed.
    pub dropped: u64,
    /// Clients closed for sending no complete request within the idle
    /// timeout.
    pub idle_closed: u64,
    /// Idle clients closed to make room for a new connection at the cap.
    pub evicted: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    rejected: AtomicU64,
    active: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    idle_closed: AtomicU64,
    evicted: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        ServerStats {
            connections: self.connections.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// A running API server. Stops on [`ApiServer::shutdown`] or drop.
pub struct ApiServer {
    path: PathBuf,
    /// Device and inode of the socket we bound, so shutdown removes the
    /// path only while it is still our socket.
    ident: (u64, u64),
    wake: Arc<EventFd>,
    counters: Arc<Counters>,
    acceptor: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` with the default [`ServerConfig`] and starts serving.
    pub fn start(path: &Path, control: Arc<dyn VmControl>) -> Result<ApiServer, ApiError> {
        ApiServer::start_with_config(path, control, ServerConfig::default())
    }

    /// Binds `path` and starts serving.
    ///
    /// If `path` exists: a socket nobody accepts on (connecting is refused)
    /// is a leftover of a dead VM and is replaced; a socket someone listens
    /// on is refused with [`ApiError::InUse`]; anything else (regular
    /// file, directory, symlink) is refused with [`ApiError::NotASocket`]
    /// and left alone.
    pub fn start_with_config(
        path: &Path,
        control: Arc<dyn VmControl>,
        config: ServerConfig,
    ) -> Result<ApiServer, ApiError> {
        let io_err = |source| ApiError::Io {
            path: path.to_owned(),
            source,
        };
        // sun_path holds 108 bytes including the terminating NUL.
        if path.as_os_str().len() > 107 {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path too long for a Unix socket (at most 107 bytes)",
            )));
        }
        remove_stale(path)?;
        let listener = bind_private(path)?;
        let meta = fs::symlink_metadata(path).map_err(io_err)?;
        let ident = (meta.dev(), meta.ino());
        let cleanup = |e: ApiError| {
            remove_if_ours(path, ident);
            e
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| cleanup(io_err(e)))?;
        let wake = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| cleanup(io_err(e)))?,
        );
        let counters = Arc::new(Counters::default());
        let acceptor = Acceptor {
            listener,
            control,
            config,
            wake: wake.clone(),
            counters: counters.clone(),
            clients: HashMap::new(),
            next_id: 0,
            epoch: Instant::now(),
        };
        let seccomp = acceptor.config.seccomp;
        let fs_policy = acceptor.config.fs_policy.clone();
        let handle = thread::Builder::new()
            .name("ember-api-accept".into())
            .spawn(move || {
                // Unconfined, the API would be the one way into the process
                // that no filter covers: without its filter it does not
                // serve (the error reaches stderr; the VM runs on).
                let confined = fs_policy
                    .restrict_current_thread()
                    .map_err(|e| e.to_string())
                    .and_then(|_| {
                        confine_thread(ThreadKind::Api, seccomp).map_err(|e| e.to_string())
                    });
                match confined {
                    Ok(()) => acceptor.run(),
                    Err(e) => eprintln!("ember: the API socket is not served: {e}"),
                }
            })
            .map_err(|e| cleanup(io_err(e)))?;
        Ok(ApiServer {
            path: path.to_owned(),
            ident,
            wake,
            counters,
            acceptor: Some(handle),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connection and request counters so far.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// Stops accepting, disconnects every client, joins every thread and
    /// removes the socket file. Takes at most about
    /// [`ServerConfig::shutdown_grace`] plus the time the operations in
    /// progress need.
    ///
    /// Must not be called from inside a [`VmControl`] method (that runs on
    /// a client thread, which this joins), and a `VmControl` method must
    /// not wait for it: `stop` should signal the VMM and return.
    pub fn shutdown(mut self) -> Result<ServerStats, ApiError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<ServerStats, ApiError> {
        let Some(acceptor) = self.acceptor.take() else {
            return Ok(self.stats());
        };
        // Remove the name first: from here on a new server may bind it.
        remove_if_ours(&self.path, self.ident);
        // An eventfd write only fails when the counter would overflow,
        // which leaves it readable anyway, so the wake-up still happens.
        let _ = self.wake.write(STOP);
        acceptor.join().map_err(|_| ApiError::ThreadPanicked)?;
        Ok(self.stats())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Makes room for binding `path`, or says why not.
fn remove_stale(path: &Path) -> Result<(), ApiError> {
    let owned = || path.to_owned();
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiError::Io {
                path: owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket { path: owned() });
    }
    // Note: connect(2) to a live listener whose backlog is full blocks
    // until it accepts, which a live server does; it cannot be mistaken
    // for stale.
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse { path: owned() }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            fs::remove_file(path).or_else(|e| match e.kind() {
                // Someone else cleaned it up first: fine.
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(ApiError::Io {
                    path: owned(),
                    source: e,
                }),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(ApiError::PermissionDenied { path: owned() })
        }
        Err(source) => Err(ApiError::Io {
            path: owned(),
            source,
        }),
    }
}

/// Binds a listener whose socket file is mode 0600 from the moment it is
/// reachable at `path` (see the module documentation).
fn bind_private(path: &Path) -> Result<UnixListener, ApiError> {
    let io_err = |source| ApiError::Io {
        path: path.to_owned(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = make_private_dir(parent).map_err(io_err)?;
    let result = (|| {
        let inner = dir.join("s");
        let listener = match UnixListener::bind(&inner) {
            Ok(l) => l,
            // The private directory's name made the path longer than
            // sun_path allows; reach the directory through its fd instead.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                let d = fs::File::open(&dir)?;
                UnixListener::bind(format!("/proc/self/fd/{}/s", d.as_raw_fd()))?
            }
            Err(e) => return Err(e),
        };
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o600))?;
        match fs::hard_link(&inner, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists))
            }
            Err(e) => return Err(e),
        }
        fs::remove_file(&inner)?;
        Ok(listener)
    })();
    let inner = dir.join("s");
    let _ = fs::remove_file(&inner);
    let _ = fs::remove_dir(&dir);
    result.map_err(|e| match e.kind() {
        // Something appeared at `path` since the stale check: either a
        // racing server or a file; both mean we must not take the path.
        io::ErrorKind::AlreadyExists => ApiError::InUse {
            path: path.to_owned(),
        },
        _ => io_err(e),
    })
}

fn make_private_dir(parent: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!(".ember-api.{}.{n}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn remove_if_ours(path: &Path, ident: (u64, u64)) {
    if let Ok(m) = fs::symlink_metadata(path) {
        if m.file_type().is_socket() && (m.dev(), m.ino()) == ident {
            let _ = fs::remove_file(path);
        }
    }
}

struct Client {
    /// A second handle on the connection, for `shutdown(2)` at server stop.
    stream: UnixStream,
    thread: JoinHandle<()>,
    /// See [`Session::idle_since`].
    idle_since: Arc<AtomicU64>,
    /// Closed to make room; its thread is on its way out.
    evicted: bool,
}

/// [`Session::idle_since`] while a request is being answered.
const BUSY: u64 = 0;

struct Acceptor {
    listener: UnixListener,
    control: Arc<dyn VmControl>,
    config: ServerConfig,
    wake: Arc<EventFd>,
    counters: Arc<Counters>,
    clients: HashMap<u64, Client>,
    next_id: u64,
    /// The zero of the sessions' idle clocks.
    epoch: Instant,
}

enum Wake {
    Stop,
    Events { listener: bool },
}

impl Acceptor {
    fn run(mut self) {
        let (done_tx, done_rx) = mpsc::channel::<u64>();
        let mut backoff = false;
        loop {
            let wake = self.wait(backoff);
            for id in done_rx.try_iter() {
                if let Some(c) = self.clients.remove(&id) {
                    // The thread sent its id as its last act; this join
                    // waits only for the thread to unwind its stack.
                    let _ = c.thread.join();
                }
            }
            match wake {
                Wake::Stop => break,
                Wake::Events { listener: false } => {
                    backoff = false;
                    continue;
                }
                Wake::Events { listener: true } => {}
            }
            backoff = false;
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => self.admit(stream, &done_tx),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                    Err(_) => {
                        // Out of fds or memory: the listener stays
                        // readable, so wait with a timeout instead of
                        // spinning on it.
                        backoff = true;
                        break;
                    }
                }
            }
        }
        self.disconnect_all(&done_rx);
    }

    /// Ends every session without waiting on any client: first the read
    /// side, so idle sessions see end of file while a session in the middle
    /// of a request still delivers its answer (an `ember ctl stop` should
    /// get its `{}` even though the VMM tears the server down right after);
    /// then, after at most the grace period, the write side too, which
    /// fails any send still blocked on a client that does not read.
    fn disconnect_all(&mut self, done: &mpsc::Receiver<u64>) {
        for c in self.clients.values() {
            let _ = c.stream.shutdown(std::net::Shutdown::Read);
        }
        let deadline = Instant::now() + self.config.shutdown_grace;
        while !self.clients.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match done.recv_timeout(left) {
                Ok(id) => {
                    if let Some(c) = self.clients.remove(&id) {
                        let _ = c.thread.join();
                    }
                }
                Err(_) => break,
            }
        }
        for c in self.clients.values() {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        for (_, c) in self.clients.drain() {
            let _ = c.thread.join();
        }
    }

    /// Sleeps until the listener is readable or the eventfd is signalled.
    /// With `backoff`, the listener is ignored for 100 ms.
    fn wait(&self, backoff: bool) -> Wake {
        let mut fds = [
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.listener.as_fd().as_raw_fd(),
                events: if backoff { 0 } else { libc::POLLIN },
                revents: 0,
            },
        ];
        let timeout = if backoff { 100 } else { -1 };
        loop {
            // SAFETY: `fds` is a live array of two initialised pollfds and
            // the length passed matches it; both fds stay open for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n >= 0 {
                break;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                // poll on two valid fds does not fail otherwise; treat it
                // as a shutdown rather than spin.
                return Wake::Stop;
            }
        }
        if fds[0].revents != 0 {
            // Reading resets the counter. Client exits add 1 and the stop
            // request adds STOP, so a sum at or above STOP means stop.
            if let Ok(v) = self.wake.read() {
                if v >= STOP {
                    return Wake::Stop;
                }
            }
        }
        Wake::Events {
            listener: fds[1].revents != 0,
        }
    }

    /// At the cap, closes the session idle the longest to make room;
    /// returns whether there is room now. Evicted sessions still count
    /// against a second cap of the same size, so clients that connect
    /// faster than evicted threads exit cannot grow the thread count
    /// without bound.
    fn make_room(&mut self) -> bool {
        let live = self.clients.values().filter(|c| !c.evicted).count();
        if live < self.config.max_clients {
            return true;
        }
        if self.clients.len() >= self.config.max_clients.saturating_mul(2) {
            return false;
        }
        // Ties (same microsecond) go to the older connection.
        let oldest = self
            .clients
            .iter_mut()
            .filter(|(_, c)| !c.evicted)
            .map(|(id, c)| (c.idle_since.load(Ordering::Relaxed), *id, c))
            .filter(|(since, _, _)| *since != BUSY)
            .min_by_key(|(since, id, _)| (*since, *id));
        match oldest {
            Some((_, _, c)) => {
                // Its thread sees end of file (or a failed send) and ends.
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                c.evicted = true;
                self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn admit(&mut self, stream: UnixStream, done: &mpsc::Sender<u64>) {
        if !self.make_room() {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            let line = Response::failure(
                Value::Null,
                ErrorCode::Busy,
                format!(
                    "too many clients (limit {}); try again later",
                    self.config.max_clients
                ),
            )
            .to_line()
                + "\n";
            // Never let the acceptor block on this client: the line fits
            // in a fresh socket's buffer, and if it does not, too bad.
            let _ = stream.set_nonblocking(true);
            let _ = send_all(&stream, line.as_bytes());
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        #[allow(clippy::type_complexity)]
        let setup = || -> io::Result<(UnixStream, JoinHandle<()>, Arc<AtomicU64>)> {
            stream.set_nonblocking(false)?;
            stream.set_write_timeout(Some(self.config.write_timeout))?;
            let handle = stream.try_clone()?;
            let id = self.next_id;
            let idle_since = Arc::new(AtomicU64::new(BUSY));
            let session = Session {
                stream: stream.try_clone()?,
                control: self.control.clone(),
                max_line: self.config.max_line,
                idle_timeout: self.config.idle_timeout,
                counters: self.counters.clone(),
                wake: self.wake.clone(),
                done: done.clone(),
                id,
                idle_since: idle_since.clone(),
                epoch: self.epoch,
            };
            let thread = thread::Builder::new()
                .name("ember-api-client".into())
                .spawn(move || session.run())?;
            Ok((handle, thread, idle_since))
        };
        match setup() {
            Ok((handle, thread, idle_since)) => {
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
                self.counters.active.fetch_add(1, Ordering::Relaxed);
                self.clients.insert(
                    self.next_id,
                    Client {
                        stream: handle,
                        thread,
                        idle_since,
                        evicted: false,
                    },
                );
                self.next_id += 1;
            }
            Err(e) => {
                let line = Response::failure(
                    Value::Null,
                    ErrorCode::Failed,
                    format!("cannot serve this connection: {e}"),
                )
                .to_line()
                    + "\n";
                let _ = stream.set_nonblocking(true);
                let _ = send_all(&stream, line.as_bytes());
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The eventfd value that means "stop"; client exits add 1 each, which
/// cannot reach this.
const STOP: u64 = 1 << 40;

/// One client connection, on its own thread.
struct Session {
    stream: UnixStream,
    control: Arc<dyn VmControl>,
    max_line: usize,
    idle_timeout: Duration,
    counters: Arc<Counters>,
    wake: Arc<EventFd>,
    done: mpsc::Sender<u64>,
    id: u64,
    /// Microseconds since `epoch`, plus one, at which this session began
    /// waiting for its next request; [`BUSY`] while it answers one. The
    /// acceptor reads it to pick whom to evict.
    idle_since: Arc<AtomicU64>,
    epoch: Instant,
}

/// The session's socket as a reader that fails with `TimedOut` once
/// `deadline` has passed, however the bytes trickle in: each read waits
/// (`SO_RCVTIMEO`) only for what is left of the time.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl io::Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match (&*self.stream).read(buf) {
            // SO_RCVTIMEO expiring reads as EAGAIN.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }
}

impl Session {
    fn run(self) {
        self.serve();
        // Close our side for the peer now: the acceptor still holds a
        // duplicate fd until it reaps this thread, and a socket only reads
        // as closed when every fd on it is gone or it is shut down.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        let _ = self.done.send(self.id);
        let _ = self.wake.write(1);
    }

    fn serve(&self) {
        let mut reader = BufReader::with_capacity(
            8192,
            DeadlineReader {
                stream: &self.stream,
                deadline: Instant::now() + self.idle_timeout,
            },
        );
        let mut buf = Vec::new();
        loop {
            reader.get_mut().deadline = Instant::now() + self.idle_timeout;
            let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
            self.idle_since
                .store(now.saturating_add(1), Ordering::Relaxed);
            // A read error (the socket was shut down or reset) or end of
            // file both end the session. Every answer to a line already
            // read has been written by then, so a client that half-closes
            // after sending still gets all of its answers.
            let line = read_line_limited(&mut reader, self.max_line, &mut buf);
            self.idle_since.store(BUSY, Ordering::Relaxed);
            let response = match line {
                Ok(Line::Complete) => match std::str::from_utf8(&buf) {
                    Ok(s) if s.trim().is_empty() => continue,
                    Ok(s) => self.dispatch(s),
                    Err(e) => Response::failure(
                        Value::Null,
                        ErrorCode::ParseError,
                        format!("not UTF-8: {e}"),
                    ),
                },
                Ok(Line::TooLarge) => Response::failure(
                    Value::Null,
                    ErrorCode::TooLarge,
                    format!(
                        "request line longer than {} bytes; discarded",
                        self.max_line
                    ),
                ),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Line::Eof) | Err(_) => return,
            };
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            if !response.ok {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            let mut line = response.to_line();
            line.push('\n');
            if send_all(&self.stream, line.as_bytes()).is_err() {
                // Timed out (the client does not read) or gone.
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    fn dispatch(&self, line: &str) -> Response {
        // A panicking VmControl implementation must not take the
        // connection (or a lock in the acceptor) down with it.
        catch_unwind(AssertUnwindSafe(|| {
            protocol::dispatch(line, self.control.as_ref())
        }))
        .unwrap_or_else(|_| {
            Response::failure(
                Value::Null,
                ErrorCode::Failed,
                "internal error: the operation panicked",
            )
        })
    }
}
