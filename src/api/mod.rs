//! The control plane: a versioned JSON protocol over a Unix socket
//! (`--api-socket`), its server, and the `ember ctl` client. All three
//! drive a running VM only through [`VmControl`], which both machines
//! implement, so the socket, the command line and the Rust library API
//! share one lifecycle state machine.
//!
//! - [`protocol`]: the wire format and the pure dispatcher
//!   ([`protocol::handle_line`]); `docs/api.md` is its user documentation.
//! - [`server`]: [`ApiServer`], the socket, its acceptor and client threads.
//! - [`client`]: [`ApiClient`] and [`client::ctl_main`] for `ember ctl`.

pub mod client;
pub mod control;
pub mod protocol;
pub mod server;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{ctl_main, ApiClient};
pub use control::{ControlError, VmControl, VmState};
pub use server::{ApiServer, ServerConfig, ServerStats};

/// Why starting the server, connecting, or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {}: in use by another process", path.display())]
    InUse { path: PathBuf },
    #[error("API socket {}: exists and is not a socket; refusing to touch it", path.display())]
    NotASocket { path: PathBuf },
    #[error("API socket {}: no such file (is the VM running with --api-socket?)", path.display())]
    NotFound { path: PathBuf },
    #[error("API socket {}: connection refused (stale socket: nothing is listening)", path.display())]
    Refused { path: PathBuf },
    #[error("API socket {}: permission denied", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("API socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "API socket {}: no response to {op:?} within {timeout:?} (is the VM process \
         running and not stopped? `jobs` in the shell that started it shows a stopped \
         VM; `kill -CONT` or `fg` resumes it)",
        path.display()
    )]
    Timeout {
        path: PathBuf,
        op: String,
        timeout: Duration,
    },
    #[error("API socket {}: the server closed the connection", path.display())]
    Closed { path: PathBuf },
    #[error("API socket {}: malformed response: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },
    /// The server answered with `"ok": false`.
    #[error("{code}: {message}")]
    Remote { code: String, message: String },
    /// `ember ctl` was given words it cannot turn into a request.
    #[error("{0}")]
    Usage(String),
    #[error("API server thread panicked")]
    ThreadPanicked,
}

/// Writes all of `buf` to a connected socket with `MSG_NOSIGNAL`, so a peer
/// that went away yields `EPIPE` instead of killing an embedding process
/// that has not ignored `SIGPIPE` (std's `UnixStream::write` does not pass
/// the flag). The socket's `SO_SNDTIMEO` still applies: its expiry comes
/// back as `EAGAIN`, reported here as `TimedOut`.
pub(crate) fn send_all(stream: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the fd is a live socket owned by `stream` for the whole
        // call, and the pointer/length pair describes the readable slice
        // `buf`.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "send timed out"))
                }
                _ => return Err(err),
            }
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// What [`read_line_limited`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line (without its `\n`, and without a trailing `\r`) is in the
    /// buffer. A last line cut off by end of file also counts.
    Complete,
    /// The line was longer than the limit; it has been read and discarded
    /// up to and including its `\n`, so the stream is at the next line.
    TooLarge,
    /// End of file with nothing pending.
    Eof,
}

/// Reads one `\n`-terminated line into `buf`, holding at most `max` bytes of
/// it in memory: a longer line is consumed and dropped rather than
/// buffered, so one client cannot make the server allocate without bound.
pub(crate) fn read_line_limited<R: io::BufRead>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<Line> {
    buf.clear();
    let mut overflow = false;
    let mut seen_any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(if overflow {
                Line::TooLarge
            } else if seen_any {
                strip_cr(buf);
                Line::Complete
            } else {
                Line::Eof
            });
        }
        seen_any = true;
        let (take, found) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !overflow {
            if buf.len() + take > max {
                overflow = true;
                buf.clear();
                buf.shrink_to(max.min(64 * 1024));
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(take + usize::from(found));
        if found {
            if overflow {
                return Ok(Line::TooLarge);
            }
            strip_cr(buf);
            return Ok(Line::Complete);
        }
    }
}

fn strip_cr(buf: &mut Vec<u8>) {
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_says_what_to_check() {
        let e = ApiError::Timeout {
            path: "/tmp/vm.sock".into(),
            op: "ping".into(),
            timeout: std::time::Duration::from_secs(10),
        };
        let text = e.to_string();
        assert!(
            text.contains("/tmp/vm.sock") && text.contains("stopped") && text.contains("fg"),
            "{text}"
        );
    }

    use std::io::{BufReader, Cursor};

    fn lines(input: &[u8], max: usize, cap: usize) -> Vec<(Line, Vec<u8>)> {
        let mut r = BufReader::with_capacity(cap, Cursor::new(input.to_vec()));
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let l = read_line_limited(&mut r, max, &mut buf).expect("read");
            let eof = l == Line::Eof;
            out.push((l, buf.clone()));
            if eof {
                return out;
            }
        }
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let got = lines(b"ab\r\n\ncd\nlast", 16, 3);
        assert_eq!(
            got,
            vec![
                (Line::Complete, b"ab".to_vec()),
                (Line::Complete, b"".to_vec()),
                (Line::Complete, b"cd".to_vec()),
                (Line::Complete, b"last".to_vec()),
                (Line::Eof, vec![]),
            ]
        );
    }

    #[test]
    fn oversized_line_is_discarded_up_to_its_newline() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nok\n");
        input.extend_from_slice(&[b'y'; 50]);
        // Small buffer capacity: the long line spans many fill_buf calls.
        let got = lines(&input, 10, 7);
        assert_eq!(
            got,
            vec![
                (Line::TooLarge, vec![]),
                (Line::Complete, b"ok".to_vec()),
                (Line::TooLarge, vec![]),
                (Line::Eof, vec![]),
            ]
        );
    }

    #[test]
    fn line_exactly_at_the_limit_is_accepted() {
        let got = lines(b"0123456789\n01234567890\n", 10, 4);
        assert_eq!(got[0], (Line::Complete, b"0123456789".to_vec()));
        assert_eq!(got[1], (Line::TooLarge, vec![]));
        assert_eq!(got[2], (Line::Eof, vec![]));
    }
}
