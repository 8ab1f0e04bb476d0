//! The API client and the `ember ctl` front end.

use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::protocol::{Op, Request, Response};
use super::{read_line_limited, send_all, ApiError, Line};

/// The longest response line the client accepts (a large `mtree` is tens
/// of KiB; this leaves plenty of room while bounding memory).
const MAX_RESPONSE_LINE: usize = 64 * 1024 * 1024;

/// A connection to an API socket. Requests are answered in order; each
/// [`ApiClient::call`] sends one and waits for its answer.
pub struct ApiClient {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    buf: Vec<u8>,
    next_id: u64,
    timeout: Duration,
}

impl ApiClient {
    /// How long [`ApiClient::call`] waits for an answer unless changed.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Connects to the server at `path`.
    pub fn connect(path: &Path) -> Result<ApiClient, ApiError> {
        let owned = || path.to_owned();
        let stream = UnixStream::connect(path).map_err(|e| {
            // Linux answers ECONNREFUSED both for a stale socket and for a
            // path that is not a socket at all; look to tell them apart.
            let not_socket = fs::metadata(path).is_ok_and(|m| !m.file_type().is_socket());
            if not_socket {
                return ApiError::NotASocket { path: owned() };
            }
            match e.kind() {
                io::ErrorKind::NotFound => ApiError::NotFound { path: owned() },
                io::ErrorKind::ConnectionRefused => ApiError::Refused { path: owned() },
                io::ErrorKind::PermissionDenied => ApiError::PermissionDenied { path: owned() },
                _ => ApiError::Io {
                    path: owned(),
                    source: e,
                },
            }
        })?;
        let io_err = |source| ApiError::Io {
            path: path.to_owned(),
            source,
        };
        let reader = BufReader::new(stream.try_clone().map_err(io_err)?);
        let mut client = ApiClient {
            path: path.to_owned(),
            stream,
            reader,
            buf: Vec::new(),
            next_id: 1,
            timeout: ApiClient::DEFAULT_TIMEOUT,
        };
        client.set_timeout(ApiClient::DEFAULT_TIMEOUT)?;
        Ok(client)
    }

    /// Sets how long a call may wait to send its request and to receive
    /// its answer.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ApiError> {
        let set = || -> io::Result<()> {
            self.stream.set_read_timeout(Some(timeout))?;
            self.stream.set_write_timeout(Some(timeout))
        };
        set().map_err(|source| ApiError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends `op` with `args` (an object, or `None`) and returns the
    /// result, or the server's error as [`ApiError::Remote`].
    pub fn call(&mut self, op: &str, args: Option<Value>) -> Result<Value, ApiError> {
        let args = match args {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                return Err(ApiError::Usage(format!(
                    "arguments must be a JSON object, not {other}"
                )))
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let request = Request {
            id: Some(Value::from(id)),
            op: op.to_owned(),
            args,
        };
        let mut line = serde_json::to_string(&request).map_err(|e| self.protocol(e))?;
        line.push('\n');
        if let Err(e) = send_all(&self.stream, line.as_bytes()) {
            // A server that turned us away (`busy`) wrote why before
            // closing; report that rather than the broken pipe.
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                if let Ok(r) = self.read_response(op) {
                    if !r.ok && r.id.is_null() {
                        return self.outcome(r);
                    }
                }
            }
            return Err(self.io_error(op, e));
        }
        loop {
            let response = self.read_response(op)?;
            match response.id.as_u64() {
                Some(got) if got == id => return self.outcome(response),
                // An answer to an earlier call that timed out: skip it.
                Some(got) if got < id => continue,
                // `busy` and other connection-level errors carry no id.
                None if !response.ok => return self.outcome(response),
                _ => {
                    return Err(self.protocol(format!(
                        "answer for id {} while waiting for {id}",
                        response.id
                    )))
                }
            }
        }
    }

    fn read_response(&mut self, op: &str) -> Result<Response, ApiError> {
        match read_line_limited(&mut self.reader, MAX_RESPONSE_LINE, &mut self.buf) {
            Ok(Line::Complete) => {}
            Ok(Line::TooLarge) => return Err(self.protocol("response line too long")),
            Ok(Line::Eof) => {
                return Err(ApiError::Closed {
                    path: self.path.clone(),
                })
            }
            Err(e) => return Err(self.io_error(op, e)),
        }
        serde_json::from_slice(&self.buf).map_err(|e| self.protocol(e))
    }

    fn outcome(&self, response: Response) -> Result<Value, ApiError> {
        if response.ok {
            return Ok(response.result.unwrap_or(Value::Null));
        }
        match response.error {
            Some(e) => Err(ApiError::Remote {
                code: e.code,
                message: e.message,
            }),
            None => Err(self.protocol("\"ok\": false without an \"error\"")),
        }
    }

    fn io_error(&self, op: &str, e: io::Error) -> ApiError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ApiError::Timeout {
                path: self.path.clone(),
                op: op.to_owned(),
                timeout: self.timeout,
            },
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ApiError::Closed {
                path: self.path.clone(),
            },
            _ => ApiError::Io {
                path: self.path.clone(),
                source: e,
            },
        }
    }

    fn protocol(&self, detail: impl ToString) -> ApiError {
        ApiError::Protocol {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }
}

/// The `ember ctl` words: an op (wire name, or with `-` for `_`) and its
/// arguments. Returns the op and the request's `args`.
pub fn parse_ctl(op: &str, args: &[String]) -> Result<(Op, Option<Value>), ApiError> {
    let name = op.replace('-', "_");
    let op = Op::from_name(&name).ok_or_else(|| {
        ApiError::Usage(format!(
            "unknown ctl command {op:?}; one of: {}",
            Op::ALL.map(Op::name).join(", ")
        ))
    })?;
    let mut req_args = Map::new();
    if op == Op::Snapshot {
        // `snapshot create --path DIR`, `snapshot --path DIR` or
        // `snapshot DIR`, each with `--force` anywhere to write into a
        // directory that is not empty; a relative DIR is taken from ctl's
        // directory.
        let force = args.iter().any(|a| a == "--force");
        let words: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|&a| a != "--force")
            .collect();
        let dir = match words.as_slice() {
            ["create", "--path", dir] | ["--path", dir] | ["create", dir] | [dir]
                if !dir.starts_with('-') =>
            {
                *dir
            }
            _ => {
                return Err(ApiError::Usage(
                    "usage: snapshot create --path DIR [--force]".into(),
                ))
            }
        };
        let dir = std::path::absolute(dir)
            .map_err(|e| ApiError::Usage(format!("snapshot: {dir}: {e}")))?;
        req_args.insert("path".into(), Value::String(dir.display().to_string()));
        if force {
            req_args.insert("force".into(), Value::Bool(true));
        }
        return Ok((op, Some(Value::Object(req_args))));
    }
    for arg in args {
        match (op, arg.as_str()) {
            (Op::Mtree, "-f" | "--flat") => {
                req_args.insert("flat".into(), Value::Bool(true));
            }
            _ => {
                return Err(ApiError::Usage(format!(
                    "{}: unexpected argument {arg:?}{}",
                    op.name(),
                    if op == Op::Mtree {
                        " (only -f/--flat)"
                    } else {
                        " (takes none)"
                    }
                )))
            }
        }
    }
    Ok((
        op,
        (!req_args.is_empty()).then_some(Value::Object(req_args)),
    ))
}

/// `ember ctl --socket SOCKET [--json] OP [ARGS...]`: sends one request and
/// returns what to print on standard output (ending in a newline unless
/// empty). With `json`, the result as pretty JSON; otherwise plain text.
pub fn ctl_main(socket: &Path, op: &str, args: &[String], json: bool) -> Result<String, ApiError> {
    let (op, req_args) = parse_ctl(op, args)?;
    let mut client = ApiClient::connect(socket)?;
    let result = client.call(op.name(), req_args)?;
    Ok(format_result(op, &result, json))
}

/// How `ember ctl` prints a result.
pub fn format_result(op: Op, result: &Value, json: bool) -> String {
    if json {
        let mut s = serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string());
        s.push('\n');
        return s;
    }
    let mut out = match op {
        Op::Ping => "pong".to_owned(),
        Op::State | Op::Pause | Op::Resume => match &result["state"] {
            Value::String(s) => s.clone(),
            _ => flatten_lines(result),
        },
        Op::Mtree => match &result["text"] {
            Value::String(s) => s.clone(),
            _ => flatten_lines(result),
        },
        // power_button, reset and stop answer `{}`: say nothing, as Unix
        // tools do on success; anything else they might return is shown.
        _ => flatten_lines(result),
    };
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `key: value` lines, nested keys joined with dots and array elements
/// numbered (`devices.0.kind: serial`). Strings are printed bare.
pub fn flatten_lines(value: &Value) -> String {
    let mut lines = Vec::new();
    flatten_into("", value, &mut lines);
    lines.join("\n")
}

fn flatten_into(prefix: &str, value: &Value, out: &mut Vec<String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                flatten_into(&key(k), v, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                flatten_into(&key(&i.to_string()), v, out);
            }
        }
        _ => {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if prefix.is_empty() {
                // A bare scalar, or an empty object/array at the top level.
                if !matches!(value, Value::Object(_)) {
                    out.push(text);
                }
            } else {
                out.push(format!("{prefix}: {text}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ctl_words_map_to_requests() {
        let words = |op: &str, args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            parse_ctl(op, &args)
        };
        for op in Op::ALL.into_iter().filter(|&op| op != Op::Snapshot) {
            let (got, args) = words(op.name(), &[]).expect("every op is reachable");
            assert_eq!(got, op);
            assert_eq!(args, None);
        }
        let abs = words("snapshot", &["create", "--path", "/tmp/snap"]).expect("snapshot");
        assert_eq!(abs, (Op::Snapshot, Some(json!({"path": "/tmp/snap"}))));
        let rel = words("snapshot", &["snap"])
            .expect("snapshot DIR")
            .1
            .unwrap();
        let cwd = std::env::current_dir().unwrap().join("snap");
        assert_eq!(rel["path"], json!(cwd.display().to_string()));
        assert_eq!(
            words("snapshot", &["--force", "create", "--path", "/tmp/snap"]).expect("--force"),
            (
                Op::Snapshot,
                Some(json!({"path": "/tmp/snap", "force": true}))
            )
        );
        assert_eq!(
            words("snapshot", &["/tmp/snap", "--force"]).expect("DIR --force"),
            (
                Op::Snapshot,
                Some(json!({"path": "/tmp/snap", "force": true}))
            )
        );
        assert!(words("snapshot", &["--force"]).is_err());
        assert!(words("snapshot", &[]).is_err());
        assert!(words("snapshot", &["create", "--path"]).is_err());
        assert_eq!(
            words("mtree", &["-f"]).expect("mtree -f").1,
            Some(json!({"flat": true}))
        );
        assert_eq!(
            words("mtree", &["--flat"]).expect("mtree --flat").1,
            Some(json!({"flat": true}))
        );
        assert_eq!(
            words("power-button", &[]).expect("dashes").0,
            Op::PowerButton
        );
        assert_eq!(words("accel-info", &[]).expect("dashes").0, Op::AccelInfo);
        assert!(matches!(words("reboot", &[]), Err(ApiError::Usage(_))));
        assert!(matches!(words("mtree", &["-x"]), Err(ApiError::Usage(_))));
        assert!(matches!(words("pause", &["now"]), Err(ApiError::Usage(_))));
    }

    #[test]
    fn plain_text_formatting() {
        assert_eq!(
            format_result(Op::Ping, &json!({"pong": true}), false),
            "pong\n"
        );
        assert_eq!(
            format_result(Op::State, &json!({"state": "paused"}), false),
            "paused\n"
        );
        assert_eq!(
            format_result(Op::Resume, &json!({"state": "running"}), false),
            "running\n"
        );
        assert_eq!(
            format_result(Op::Mtree, &json!({"text": "a\nb\n"}), false),
            "a\nb\n"
        );
        assert_eq!(format_result(Op::Stop, &json!({}), false), "");
        let info = json!({
            "arch": "x86_64",
            "memory": {"size": 134217728, "slots": []},
            "devices": [{"kind": "serial", "irq": 4}, {"kind": "rng"}],
            "cmdline": "console=ttyS0",
            "uptime": 1.5,
            "kernel": null,
        });
        assert_eq!(
            format_result(Op::Info, &info, false),
            "arch: x86_64\n\
             cmdline: console=ttyS0\n\
             devices.0.irq: 4\n\
             devices.0.kind: serial\n\
             devices.1.kind: rng\n\
             kernel: null\n\
             memory.size: 134217728\n\
             memory.slots: []\n\
             uptime: 1.5\n"
        );
    }

    #[test]
    fn json_formatting_is_the_raw_result() {
        let v = json!({"exits": {"io": 3}});
        let out = format_result(Op::Counters, &v, true);
        assert!(out.ends_with('\n'));
        assert_eq!(serde_json::from_str::<Value>(&out).expect("json"), v);
        assert!(out.contains("\n  "), "not pretty: {out}");
    }
}
