//! The API socket end to end, through the library, with a fake VM: framing
//! over a real socket, concurrency, limits, slow clients, the socket file's
//! life cycle and a clean shutdown (threads joined, fds closed).
//!
//! Tests run in parallel threads of one process. The ones that count the
//! process's threads and fds take `exclusive()`; every other test holds
//! `shared()` for its whole run, so nothing else is alive during a count.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use ember::api::{
    ctl_main, ApiClient, ApiError, ApiServer, ControlError, ServerConfig, ServerStats, VmControl,
    VmState,
};
use serde_json::{json, Value};

static LOCK: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    LOCK.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// Every wait in these tests is bounded by this; hitting it fails the test.
const BOUND: Duration = Duration::from_secs(10);

struct FakeVm {
    state: Mutex<VmState>,
}

impl FakeVm {
    fn new() -> Arc<FakeVm> {
        Arc::new(FakeVm {
            state: Mutex::new(VmState::Running),
        })
    }
}

impl VmControl for FakeVm {
    fn state(&self) -> VmState {
        *self.state.lock().unwrap()
    }
    fn info(&self) -> Value {
        json!({"arch": "x86_64", "memory": {"mib": 64}, "state": self.state()})
    }
    fn pause(&self) -> Result<VmState, ControlError> {
        let mut s = self.state.lock().unwrap();
        if *s == VmState::ShutDown {
            return Err(ControlError::WrongState(*s, "running or paused"));
        }
        *s = VmState::Paused;
        Ok(*s)
    }
    fn resume(&self) -> Result<VmState, ControlError> {
        let mut s = self.state.lock().unwrap();
        if *s == VmState::ShutDown {
            return Err(ControlError::WrongState(*s, "running or paused"));
        }
        *s = VmState::Running;
        Ok(*s)
    }
    fn power_button(&self) -> Result<(), ControlError> {
        Ok(())
    }
    fn reset(&self) -> Result<(), ControlError> {
        Err(ControlError::Unsupported("reset".into()))
    }
    fn stop(&self) -> Result<(), ControlError> {
        *self.state.lock().unwrap() = VmState::ShutDown;
        Ok(())
    }
    fn mtree(&self, flat: bool) -> String {
        format!("mtree flat={flat}\n")
    }
    fn accel_info(&self) -> Value {
        json!({"accel": "fake"})
    }
    fn counters(&self) -> Value {
        json!({"exits": {"io": 1, "mmio": 2}})
    }
}

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ember-api-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.0)
            .expect("read scratch")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn start(path: &Path) -> ApiServer {
    ApiServer::start(path, FakeVm::new()).expect("start server")
}

/// A raw line-level connection, for what `ApiClient` never sends.
struct Raw {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).expect("connect");
        stream.set_read_timeout(Some(BOUND)).expect("timeout");
        stream.set_write_timeout(Some(BOUND)).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Raw { stream, reader }
    }
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }
    /// The next response line, parsed; fails the test on EOF or timeout.
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read response");
        assert!(n > 0, "server closed the connection");
        assert!(line.ends_with('\n'), "unterminated response {line:?}");
        serde_json::from_str(&line).expect("response is JSON")
    }
    fn at_eof(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to EOF") == 0
    }
}

fn code(resp: &Value) -> &str {
    assert_eq!(resp["ok"], json!(false), "{resp}");
    resp["error"]["code"].as_str().expect("error code")
}

/// Shuts the server down, failing the test if that takes longer than
/// [`BOUND`] instead of hanging it.
fn stop(server: ApiServer) -> ServerStats {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(server.shutdown());
    });
    rx.recv_timeout(BOUND)
        .expect("shutdown hung")
        .expect("shutdown")
}

/// Polls `cond` until it holds or [`BOUND`] passes (then fails the test).
/// For conditions with no event to wait on, such as a counter.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_op_over_the_socket_with_the_client() {
    let _g = shared();
    let dir = Scratch::new("ops");
    let path = dir.path("api.sock");
    let server = start(&path);
    let mut c = ApiClient::connect(&path).expect("connect");
    assert_eq!(c.call("ping", None).expect("ping"), json!({"pong": true}));
    let v = c.call("version", None).expect("version");
    assert_eq!(v["protocol"], json!(1));
    assert_eq!(
        c.call("state", None).expect("state"),
        json!({"state": "running"})
    );
    assert_eq!(
        c.call("pause", None).expect("pause"),
        json!({"state": "paused"})
    );
    assert_eq!(
        c.call("info", None).expect("info")["state"],
        json!("paused")
    );
    assert_eq!(
        c.call("resume", None).expect("resume"),
        json!({"state": "running"})
    );
    assert_eq!(
        c.call("mtree", Some(json!({"flat": true}))).expect("mtree"),
        json!({"text": "mtree flat=true\n"})
    );
    assert_eq!(
        c.call("accel_info", None).expect("accel"),
        json!({"accel": "fake"})
    );
    assert_eq!(
        c.call("counters", None).expect("counters")["exits"]["mmio"],
        json!(2)
    );
    assert_eq!(c.call("power_button", None).expect("power"), json!({}));
    match c.call("reset", None) {
        Err(ApiError::Remote { code, .. }) => assert_eq!(code, "unsupported"),
        other => panic!("reset: {other:?}"),
    }
    assert_eq!(c.call("stop", None).expect("stop"), json!({}));
    match c.call("pause", None) {
        Err(ApiError::Remote { code, message }) => {
            assert_eq!(code, "wrong_state");
            assert!(message.contains("ShutDown"), "{message}");
        }
        other => panic!("pause after stop: {other:?}"),
    }
    match c.call("frobnicate", None) {
        Err(ApiError::Remote { code, .. }) => assert_eq!(code, "unknown_op"),
        other => panic!("unknown op: {other:?}"),
    }
    // The connection survives errors.
    assert_eq!(
        c.call("state", None).expect("state"),
        json!({"state": "shut_down"})
    );
    let stats = server.stats();
    assert_eq!(stats.requests, 15);
    assert_eq!(stats.errors, 3);
    assert_eq!(stats.connections, 1);
    drop(c);
    stop(server);
}

#[test]
fn ctl_main_drives_the_server() {
    let _g = shared();
    let dir = Scratch::new("ctl");
    let path = dir.path("api.sock");
    let server = start(&path);
    let ctl = |op: &str, args: &[&str], json: bool| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        ctl_main(&path, op, &args, json)
    };
    assert_eq!(ctl("ping", &[], false).expect("ping"), "pong\n");
    assert_eq!(ctl("pause", &[], false).expect("pause"), "paused\n");
    assert_eq!(ctl("state", &[], false).expect("state"), "paused\n");
    assert_eq!(
        ctl("mtree", &["-f"], false).expect("mtree"),
        "mtree flat=true\n"
    );
    assert_eq!(
        ctl("mtree", &[], false).expect("mtree"),
        "mtree flat=false\n"
    );
    assert_eq!(
        ctl("info", &[], false).expect("info"),
        "arch: x86_64\nmemory.mib: 64\nstate: paused\n"
    );
    assert_eq!(
        ctl("counters", &[], false).expect("counters"),
        "exits.io: 1\nexits.mmio: 2\n"
    );
    let out = ctl("counters", &[], true).expect("counters --json");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!({"exits": {"io": 1, "mmio": 2}})
    );
    assert_eq!(ctl("power-button", &[], false).expect("power"), "");
    match ctl("reset", &[], false) {
        Err(e @ ApiError::Remote { .. }) => assert!(e.to_string().starts_with("unsupported: ")),
        other => panic!("reset: {other:?}"),
    }
    assert!(matches!(ctl("reboot", &[], false), Err(ApiError::Usage(_))));
    stop(server);
}

#[test]
fn concurrent_clients_each_get_their_own_answers_in_order() {
    let _g = shared();
    let dir = Scratch::new("concurrent");
    let path = dir.path("api.sock");
    let server = start(&path);
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            thread::spawn(move || {
                let mut raw = Raw::connect(&path);
                // Pipeline 100 requests, then read the 100 answers.
                let mut batch = String::new();
                for i in 0..100 {
                    batch.push_str(&json!({"id": [t, i], "op": "ping"}).to_string());
                    batch.push('\n');
                }
                raw.send(batch.as_bytes());
                for i in 0..100 {
                    let r = raw.recv();
                    assert_eq!(r["id"], json!([t, i]));
                    assert_eq!(r["result"], json!({"pong": true}));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let stats = server.stats();
    assert_eq!(stats.connections, 8);
    assert_eq!(stats.requests, 800);
    assert_eq!(stats.errors, 0);
    stop(server);
}

#[test]
fn malformed_lines_get_errors_and_the_connection_stays_usable() {
    let _g = shared();
    let dir = Scratch::new("malformed");
    let path = dir.path("api.sock");
    let server = start(&path);
    let mut raw = Raw::connect(&path);
    raw.send(b"this is not json\n");
    assert_eq!(code(&raw.recv()), "parse_error");
    raw.send(b"\xff\xfe{}\n");
    assert_eq!(code(&raw.recv()), "parse_error");
    raw.send(b"[1,2]\n{\"id\":9,\"op\":7}\n");
    assert_eq!(code(&raw.recv()), "invalid_request");
    let r = raw.recv();
    assert_eq!(code(&r), "invalid_request");
    assert_eq!(r["id"], json!(9));
    // Blank lines are skipped; CRLF is accepted.
    raw.send(b"\n  \r\n{\"id\":1,\"op\":\"ping\"}\r\n");
    let r = raw.recv();
    assert_eq!((r["id"].clone(), r["ok"].clone()), (json!(1), json!(true)));
    stop(server);
}

#[test]
fn oversized_line_gets_too_large_and_the_next_request_works() {
    let _g = shared();
    let dir = Scratch::new("large");
    let path = dir.path("api.sock");
    let server = start(&path);
    let mut raw = Raw::connect(&path);
    // 1 MiB of one JSON string: valid JSON if it were accepted, so only
    // the length limit can refuse it.
    let mut big = Vec::with_capacity(1 << 20);
    big.extend_from_slice(b"{\"op\":\"ping\",\"pad\":\"");
    big.resize((1 << 20) - 2, b'a');
    big.extend_from_slice(b"\"}\n{\"id\":2,\"op\":\"ping\"}\n");
    raw.send(&big);
    let r = raw.recv();
    assert_eq!(code(&r), "too_large");
    assert!(r["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("65536")));
    let r = raw.recv();
    assert_eq!(r["id"], json!(2));
    assert_eq!(r["result"], json!({"pong": true}));
    // A line just under the limit is still served.
    let mut edge = b"{\"id\":3,\"op\":\"ping\",\"pad\":\"".to_vec();
    edge.resize(64 * 1024 - 2, b'b');
    edge.extend_from_slice(b"\"}\n");
    raw.send(&edge);
    assert_eq!(raw.recv()["id"], json!(3));
    stop(server);
}

#[test]
fn half_closed_client_gets_every_answer_then_eof() {
    let _g = shared();
    let dir = Scratch::new("halfclose");
    let path = dir.path("api.sock");
    let server = start(&path);
    let mut raw = Raw::connect(&path);
    // The last request has no newline: end of file terminates it.
    raw.send(
        b"{\"id\":1,\"op\":\"ping\"}\n{\"id\":2,\"op\":\"state\"}\n{\"id\":3,\"op\":\"ping\"}",
    );
    raw.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half close");
    for id in 1..=3 {
        let r = raw.recv();
        assert_eq!(r["id"], json!(id));
        assert_eq!(r["ok"], json!(true));
    }
    assert!(raw.at_eof(), "server kept the connection open");
    stop(server);
}

/// Fills a connection with requests without ever reading, until the
/// server's answers back up and our own writes stall. Reports `"stalled"`
/// once, then keeps writing until the server drops the connection and
/// reports `"closed"`.
fn flood(
    path: &Path,
) -> (
    UnixStream,
    mpsc::Receiver<&'static str>,
    thread::JoinHandle<()>,
) {
    let stream = UnixStream::connect(path).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let keep = stream.try_clone().expect("clone");
    let (tx, rx) = mpsc::channel();
    let writer = thread::spawn(move || {
        let mut s = stream;
        let chunk = "{\"op\":\"counters\"}\n".repeat(1000);
        let mut stalled = false;
        loop {
            match s.write(chunk.as_bytes()) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if !stalled {
                        stalled = true;
                        let _ = tx.send("stalled");
                    }
                }
                Err(_) => {
                    let _ = tx.send("closed");
                    return;
                }
            }
        }
    });
    (keep, rx, writer)
}

#[test]
fn a_client_that_never_reads_blocks_nobody_and_is_dropped() {
    let _g = shared();
    let dir = Scratch::new("flood");
    let path = dir.path("api.sock");
    let config = ServerConfig {
        write_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = ApiServer::start_with_config(&path, FakeVm::new(), config).expect("start");
    let (_keep, events, writer) = flood(&path);
    assert_eq!(events.recv_timeout(BOUND), Ok("stalled"));
    // The server's thread for the flooder is now stuck in send; another
    // client is served at once.
    let started = Instant::now();
    let mut c = ApiClient::connect(&path).expect("connect");
    c.set_timeout(Duration::from_secs(2)).expect("timeout");
    assert_eq!(
        c.call("ping", None).expect("ping while flooded"),
        json!({"pong": true})
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // After the send timeout the flooder is disconnected.
    assert_eq!(events.recv_timeout(BOUND), Ok("closed"));
    writer.join().expect("writer");
    wait_until("the drop to be counted", || server.stats().dropped == 1);
    assert_eq!(
        c.call("ping", None).expect("ping after"),
        json!({"pong": true})
    );
    stop(server);
}

/// A VM whose `stop` makes the "VMM" shut the API server down at once, as
/// `ember run` does when the VM ends.
struct SelfStoppingVm {
    inner: Arc<FakeVm>,
    path: PathBuf,
    server: Mutex<Option<ApiServer>>,
    stopped: Mutex<Option<mpsc::Sender<Result<ServerStats, ApiError>>>>,
}

impl VmControl for SelfStoppingVm {
    fn state(&self) -> VmState {
        self.inner.state()
    }
    fn info(&self) -> Value {
        self.inner.info()
    }
    fn pause(&self) -> Result<VmState, ControlError> {
        self.inner.pause()
    }
    fn resume(&self) -> Result<VmState, ControlError> {
        self.inner.resume()
    }
    fn power_button(&self) -> Result<(), ControlError> {
        self.inner.power_button()
    }
    fn reset(&self) -> Result<(), ControlError> {
        self.inner.reset()
    }
    fn stop(&self) -> Result<(), ControlError> {
        let server = self.server.lock().unwrap().take();
        let tx = self.stopped.lock().unwrap().take();
        if let (Some(server), Some(tx)) = (server, tx) {
            thread::spawn(move || {
                let _ = tx.send(server.shutdown());
            });
            // Let the shutdown get going (it removes the socket file first)
            // before this answer is written, to make the race likely.
            wait_until("shutdown to begin", || !self.path.exists());
        }
        self.inner.stop()
    }
    fn mtree(&self, flat: bool) -> String {
        self.inner.mtree(flat)
    }
    fn accel_info(&self) -> Value {
        self.inner.accel_info()
    }
    fn counters(&self) -> Value {
        self.inner.counters()
    }
}

#[test]
fn stop_is_answered_even_when_the_server_shuts_down_right_after() {
    let _g = shared();
    let dir = Scratch::new("selfstop");
    let path = dir.path("api.sock");
    let (tx, rx) = mpsc::channel();
    let vm = Arc::new(SelfStoppingVm {
        inner: FakeVm::new(),
        path: path.clone(),
        server: Mutex::new(None),
        stopped: Mutex::new(Some(tx)),
    });
    let config = ServerConfig {
        // Generous, so the answer's delivery does not depend on scheduling;
        // the shutdown still ends as soon as the session has finished.
        shutdown_grace: BOUND,
        ..ServerConfig::default()
    };
    let server = ApiServer::start_with_config(&path, vm.clone(), config).expect("start");
    *vm.server.lock().unwrap() = Some(server);
    let mut silent = Raw::connect(&path);
    let mut c = ApiClient::connect(&path).expect("connect");
    let started = Instant::now();
    assert_eq!(c.call("stop", None).expect("stop answered"), json!({}));
    let stats = rx
        .recv_timeout(BOUND)
        .expect("shutdown hung")
        .expect("shutdown");
    // The silent client did not hold the shutdown up for the grace period.
    assert!(started.elapsed() < BOUND / 2, "{:?}", started.elapsed());
    assert_eq!(stats.requests, 1);
    assert!(matches!(c.call("ping", None), Err(ApiError::Closed { .. })));
    assert!(silent.at_eof());
    assert_eq!(vm.state(), VmState::ShutDown);
}

#[test]
fn at_the_limit_the_longest_idle_client_makes_room() {
    let _g = shared();
    let dir = Scratch::new("busy");
    let path = dir.path("api.sock");
    let config = ServerConfig {
        max_clients: 2,
        ..ServerConfig::default()
    };
    let server = ApiServer::start_with_config(&path, FakeVm::new(), config).expect("start");
    let mut a = Raw::connect(&path);
    let mut b = ApiClient::connect(&path).expect("b");
    // Both are being served before the third arrives; `a` has waited for
    // its next request longest.
    a.send(b"{\"op\":\"ping\"}\n");
    assert_eq!(a.recv()["ok"], json!(true));
    b.call("ping", None).expect("b ping");
    let mut c = ApiClient::connect(&path).expect("connect c");
    assert_eq!(c.call("ping", None).expect("c ping"), json!({"pong": true}));
    assert!(a.at_eof(), "the longest-idle client was not closed");
    assert_eq!(b.call("ping", None).expect("b ping"), json!({"pong": true}));
    let stats = server.stats();
    assert_eq!((stats.evicted, stats.rejected), (1, 0), "{stats:?}");
    stop(server);
}

#[test]
fn many_open_connections_do_not_lock_out_ctl() {
    let _g = shared();
    let dir = Scratch::new("many");
    let path = dir.path("api.sock");
    // The default limits, as `ember run --api-socket` has them.
    let server = start(&path);
    let max = ServerConfig::default().max_clients;
    // Someone opens more connections than the cap and leaves them idle
    // (each is admitted: the acceptor has seen it once it answers).
    let mut hogs: Vec<Raw> = Vec::new();
    for _ in 0..max + 8 {
        let mut c = Raw::connect(&path);
        c.send(b"{\"op\":\"ping\"}\n");
        assert_eq!(c.recv()["ok"], json!(true));
        hogs.push(c);
    }
    let info = ctl_main(&path, "info", &[], true).expect("ctl info with the cap reached");
    assert!(info.contains("x86_64"), "{info}");
    let stats = server.stats();
    assert_eq!(stats.rejected, 0, "{stats:?}");
    assert_eq!(stats.evicted, 9, "{stats:?}");
    drop(hogs);
    stop(server);
}

#[test]
fn at_the_limit_with_every_client_mid_request_a_new_one_gets_busy() {
    let _g = shared();
    let dir = Scratch::new("allbusy");
    let path = dir.path("api.sock");
    let config = ServerConfig {
        max_clients: 1,
        write_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = ApiServer::start_with_config(&path, FakeVm::new(), config).expect("start");
    // The only session is stuck sending to a client that does not read:
    // it is in the middle of a request, not idle, so it is not evicted.
    let (_keep, events, writer) = flood(&path);
    assert_eq!(events.recv_timeout(BOUND), Ok("stalled"));
    let mut late = Raw::connect(&path);
    assert_eq!(code(&late.recv()), "busy");
    assert!(late.at_eof());
    // Once the send timeout drops the flooder, a client is served again.
    assert_eq!(events.recv_timeout(BOUND), Ok("closed"));
    writer.join().expect("writer");
    wait_until("the flooder's slot to be freed", || {
        server.stats().active == 0
    });
    let mut d = ApiClient::connect(&path).expect("connect d");
    assert_eq!(d.call("ping", None).expect("d ping"), json!({"pong": true}));
    assert_eq!(server.stats().rejected, 1);
    stop(server);
}

#[test]
fn an_idle_connection_is_closed_after_the_timeout() {
    let _g = shared();
    let dir = Scratch::new("idle");
    let path = dir.path("api.sock");
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = ApiServer::start_with_config(&path, FakeVm::new(), config).expect("start");
    // Silent from the start.
    let mut silent = Raw::connect(&path);
    // One answered request, then silence.
    let mut served = Raw::connect(&path);
    served.send(b"{\"op\":\"ping\"}\n");
    assert_eq!(served.recv()["ok"], json!(true));
    // Half a request line, never finished: the line's time runs out too.
    let mut partial = Raw::connect(&path);
    partial.send(b"{\"op\":");
    let started = Instant::now();
    // The clients' reads wait up to BOUND; the server closes first.
    assert!(silent.at_eof());
    assert!(served.at_eof());
    assert!(partial.at_eof());
    assert!(started.elapsed() < BOUND);
    wait_until("the closes to be counted", || {
        server.stats().idle_closed == 3
    });
    // A fresh connection is served as usual.
    let mut c = ApiClient::connect(&path).expect("connect");
    assert_eq!(c.call("ping", None).expect("ping"), json!({"pong": true}));
    stop(server);
}

#[test]
fn socket_is_owner_only_and_no_temporary_is_left() {
    let _g = shared();
    let dir = Scratch::new("mode");
    let path = dir.path("api.sock");
    let server = start(&path);
    let meta = fs::symlink_metadata(&path).expect("stat");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(dir.entries(), ["api.sock"]);
    stop(server);
    assert_eq!(dir.entries(), Vec::<String>::new());
}

#[test]
fn long_socket_paths_work_up_to_the_limit() {
    let _g = shared();
    let dir = Scratch::new("long");
    // A parent directory so long that the private bind directory inside it
    // would overflow sun_path, with a final path of exactly 107 bytes.
    let pad = 100 - dir.0.as_os_str().len() - 1;
    let parent = dir.path(&"d".repeat(pad));
    fs::create_dir(&parent).expect("mkdir");
    let path = parent.join("a.sock");
    assert_eq!(path.as_os_str().len(), 107);
    let server = start(&path);
    let mut c = ApiClient::connect(&path).expect("connect");
    assert_eq!(c.call("ping", None).expect("ping"), json!({"pong": true}));
    assert_eq!(
        fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    let leftovers: Vec<_> = fs::read_dir(&parent)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["a.sock"]);
    drop(c);
    stop(server);
    let too_long = parent.join("ab.sock");
    match ApiServer::start(&too_long, FakeVm::new()) {
        Err(e @ ApiError::Io { .. }) => assert!(e.to_string().contains("too long"), "{e}"),
        Err(e) => panic!("too long: {e}"),
        Ok(_) => panic!("a 108-byte path was accepted"),
    }
}

#[test]
fn stale_socket_is_replaced() {
    let _g = shared();
    let dir = Scratch::new("stale");
    let path = dir.path("api.sock");
    // A listener that went away without removing its file.
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(matches!(
        ApiClient::connect(&path),
        Err(ApiError::Refused { .. })
    ));
    let server = start(&path);
    let mut c = ApiClient::connect(&path).expect("connect");
    assert_eq!(c.call("ping", None).expect("ping"), json!({"pong": true}));
    stop(server);
}

#[test]
fn live_socket_is_refused_and_left_working() {
    let _g = shared();
    let dir = Scratch::new("live");
    let path = dir.path("api.sock");
    let first = start(&path);
    match ApiServer::start(&path, FakeVm::new()) {
        Err(e @ ApiError::InUse { .. }) => {
            assert!(e.to_string().contains("in use by another process"), "{e}")
        }
        Err(e) => panic!("second server: {e}"),
        Ok(_) => panic!("second server bound a live socket"),
    }
    let mut c = ApiClient::connect(&path).expect("first still reachable");
    assert_eq!(c.call("ping", None).expect("ping"), json!({"pong": true}));
    drop(c);
    // A foreign listener is refused the same way.
    stop(first);
    let foreign = UnixListener::bind(&path).expect("foreign bind");
    assert!(matches!(
        ApiServer::start(&path, FakeVm::new()),
        Err(ApiError::InUse { .. })
    ));
    drop(foreign);
}

#[test]
fn non_socket_paths_are_refused_and_left_intact() {
    let _g = shared();
    let dir = Scratch::new("regular");
    let file = dir.path("api.sock");
    fs::write(&file, b"precious").expect("write");
    match ApiServer::start(&file, FakeVm::new()) {
        Err(e @ ApiError::NotASocket { .. }) => {
            assert!(e.to_string().contains("not a socket"), "{e}")
        }
        Err(e) => panic!("regular file: {e}"),
        Ok(_) => panic!("bound over a regular file"),
    }
    assert_eq!(fs::read(&file).expect("read"), b"precious");
    assert!(matches!(
        ApiClient::connect(&file),
        Err(ApiError::NotASocket { .. })
    ));

    let sub = dir.path("d");
    fs::create_dir(&sub).expect("mkdir");
    assert!(matches!(
        ApiServer::start(&sub, FakeVm::new()),
        Err(ApiError::NotASocket { .. })
    ));
    assert!(sub.is_dir());

    // A symlink, even to a stale socket, is not followed or removed.
    let stale = dir.path("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    let link = dir.path("link.sock");
    std::os::unix::fs::symlink(&stale, &link).expect("symlink");
    assert!(matches!(
        ApiServer::start(&link, FakeVm::new()),
        Err(ApiError::NotASocket { .. })
    ));
    assert!(fs::symlink_metadata(&link).expect("link").is_symlink());
    assert_eq!(dir.entries(), ["api.sock", "d", "link.sock", "stale.sock"]);
}

#[test]
fn client_errors_name_the_path() {
    let _g = shared();
    let dir = Scratch::new("clienterr");
    let missing = dir.path("missing.sock");
    match ApiClient::connect(&missing) {
        Err(e @ ApiError::NotFound { .. }) => {
            assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}")
        }
        other => panic!("missing: {:?}", other.err()),
    }
    let server = start(&dir.path("api.sock"));
    let mut c = ApiClient::connect(&dir.path("api.sock")).expect("connect");
    stop(server);
    assert!(matches!(c.call("ping", None), Err(ApiError::Closed { .. })));
}

fn api_threads() -> usize {
    fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("ember-api"))
        .count()
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn shutdown_with_silent_and_stuck_clients_joins_everything_and_leaks_nothing() {
    let _g = exclusive();
    wait_until("other tests' API threads to leave /proc", || {
        api_threads() == 0
    });
    let dir = Scratch::new("shutdown");
    let path = dir.path("api.sock");
    let fds_before = open_fds();
    let server = start(&path);
    // A silent client, a client with an unfinished line, a flooder whose
    // answers back up, and an idle ApiClient.
    let silent = UnixStream::connect(&path).expect("silent");
    silent.set_read_timeout(Some(BOUND)).expect("timeout");
    let mut partial = UnixStream::connect(&path).expect("partial");
    partial.write_all(b"{\"op\":\"pi").expect("partial write");
    let (flooder, events, writer) = flood(&path);
    assert_eq!(events.recv_timeout(BOUND), Ok("stalled"));
    let mut idle = ApiClient::connect(&path).expect("idle");
    idle.call("ping", None).expect("ping");
    wait_until("all four clients to be served", || {
        server.stats().active == 4
    });
    // Threads name themselves as they start; allow them that instant.
    wait_until("five named API threads", || api_threads() == 5);

    // Shutdown must finish long before the 5 s send timeout would free the
    // flooder's thread.
    let started = Instant::now();
    let stats = stop(server);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stats.connections, 4);
    assert_eq!(stats.active, 0);

    assert!(!path.exists(), "socket file left behind");
    assert!(matches!(
        ApiClient::connect(&path),
        Err(ApiError::NotFound { .. })
    ));
    // Every client sees the connection end.
    let mut buf = [0u8; 16];
    assert_eq!((&silent).read(&mut buf).expect("silent read"), 0);
    assert_eq!(events.recv_timeout(BOUND), Ok("closed"));
    writer.join().expect("writer");
    assert!(matches!(
        idle.call("ping", None),
        Err(ApiError::Closed { .. })
    ));
    // Joined threads can linger in /proc for an instant after join returns.
    wait_until("API threads to leave /proc", || api_threads() == 0);

    drop((silent, partial, flooder, idle));
    assert_eq!(open_fds(), fds_before, "fds leaked");
}

#[test]
fn dropping_the_server_also_cleans_up() {
    let _g = exclusive();
    let dir = Scratch::new("drop");
    let path = dir.path("api.sock");
    let fds_before = open_fds();
    let server = start(&path);
    let mut c = ApiClient::connect(&path).expect("connect");
    c.call("ping", None).expect("ping");
    assert!(path.exists());
    // The client stays connected: dropping must not wait for it.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        drop(server);
        let _ = tx.send(());
    });
    rx.recv_timeout(BOUND).expect("drop hung");
    assert!(matches!(c.call("ping", None), Err(ApiError::Closed { .. })));
    drop(c);
    assert!(!path.exists());
    wait_until("API threads to leave /proc", || api_threads() == 0);
    assert_eq!(open_fds(), fds_before, "fds leaked");
}
