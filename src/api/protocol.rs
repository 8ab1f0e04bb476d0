//! The API wire protocol, version [`PROTOCOL_VERSION`].
//!
//! Newline-delimited JSON over a Unix stream socket: each line the client
//! sends is one request, and the server answers every request with exactly
//! one line, in order, on the same connection. Blank lines are not requests
//! and get no answer (handy when typing at `socat`). A trailing `\r` is
//! ignored.
//!
//! Request: `{"id": <any JSON, optional>, "op": "<name>", "args": {..}}`.
//! `id` is echoed back verbatim (`null` when absent). `args` is optional
//! (`null` means absent) and must be an object.
//!
//! Response: `{"id": .., "ok": true, "result": <JSON>}` or
//! `{"id": .., "ok": false, "error": {"code": "<code>", "message": ".."}}`.
//!
//! Unknown fields: at the top level of a request they are ignored (the
//! envelope may grow, e.g. a future `"token"`), but an unknown key inside
//! `args` is refused with `invalid_request`: an argument changes what an op
//! does, so a client asking for an option this server does not know must
//! learn that rather than get the default behaviour silently.
//!
//! Compatibility promise within protocol 1: ops, their arguments, result
//! fields and error codes are never removed or changed in meaning. New ops,
//! new optional arguments, new result fields and new error codes may be
//! added; clients ignore result fields they do not know and treat an
//! unknown error code as a failure. Anything else bumps the version.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::control::{ControlError, SnapshotOptions, VmControl};

/// The protocol version reported by `version`. Bumped only on an
/// incompatible change (see the module documentation).
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line the server accepts, in bytes, without the
/// newline. Longer lines are discarded and answered with `too_large`.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// A request as a client sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Map<String, Value>>,
}

/// The `error` member of a failed response. `code` is a string rather than
/// [`ErrorCode`] so a client can still read codes added by newer servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default)]
    pub id: Value,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    pub fn success(id: Value, result: Value) -> Response {
        Response {
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn failure(id: Value, code: ErrorCode, message: impl Into<String>) -> Response {
        Response {
            id,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code: code.as_str().to_owned(),
                message: message.into(),
            }),
        }
    }

    /// The response as one line, without the newline.
    pub fn to_line(&self) -> String {
        // Serialising a tree of `Value`s with string keys cannot fail; the
        // fallback only keeps this path free of `unwrap`.
        serde_json::to_string(self).unwrap_or_else(|e| {
            let msg = Value::String(format!("cannot encode the response: {e}"));
            format!(r#"{{"id":null,"ok":false,"error":{{"code":"failed","message":{msg}}}}}"#)
        })
    }
}

/// The stable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON (or not UTF-8).
    ParseError,
    /// JSON, but not a request: not an object, `op` missing or not a
    /// string, `args` not an object, or an argument unknown or mistyped.
    InvalidRequest,
    /// `op` names no operation.
    UnknownOp,
    /// The line is longer than the limit; it was discarded.
    TooLarge,
    /// The VM's state does not allow the operation.
    WrongState,
    /// This VM does not offer the operation.
    Unsupported,
    /// The operation was attempted and failed.
    Failed,
    /// The server has as many clients as it accepts; the connection is
    /// closed after this line.
    Busy,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownOp,
        ErrorCode::TooLarge,
        ErrorCode::WrongState,
        ErrorCode::Unsupported,
        ErrorCode::Failed,
        ErrorCode::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "parse_error",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Failed => "failed",
            ErrorCode::Busy => "busy",
        }
    }
}

/// The operations of protocol 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Ping,
    Version,
    Info,
    State,
    Pause,
    Resume,
    PowerButton,
    Reset,
    Stop,
    Mtree,
    AccelInfo,
    Counters,
    Snapshot,
}

impl Op {
    pub const ALL: [Op; 13] = [
        Op::Ping,
        Op::Version,
        Op::Info,
        Op::State,
        Op::Pause,
        Op::Resume,
        Op::PowerButton,
        Op::Reset,
        Op::Stop,
        Op::Mtree,
        Op::AccelInfo,
        Op::Counters,
        Op::Snapshot,
    ];

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::Version => "version",
            Op::Info => "info",
            Op::State => "state",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::PowerButton => "power_button",
            Op::Reset => "reset",
            Op::Stop => "stop",
            Op::Mtree => "mtree",
            Op::AccelInfo => "accel_info",
            Op::Counters => "counters",
            Op::Snapshot => "snapshot",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// Answers one request line: the response line, without the newline.
pub fn handle_line(line: &str, control: &dyn VmControl) -> String {
    dispatch(line, control).to_line()
}

/// [`handle_line`] before encoding, for callers that look at the outcome
/// (the server counts errors).
pub fn dispatch(line: &str, control: &dyn VmControl) -> Response {
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Response::failure(Value::Null, ErrorCode::ParseError, format!("{e}")),
    };
    let Value::Object(mut req) = value else {
        return Response::failure(
            Value::Null,
            ErrorCode::InvalidRequest,
            "a request must be a JSON object",
        );
    };
    let id = req.remove("id").unwrap_or(Value::Null);
    let name = match req.remove("op") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Response::failure(id, ErrorCode::InvalidRequest, "\"op\" must be a string")
        }
        None => return Response::failure(id, ErrorCode::InvalidRequest, "missing \"op\""),
    };
    let args = match req.remove("args") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Response::failure(id, ErrorCode::InvalidRequest, "\"args\" must be an object")
        }
    };
    let Some(op) = Op::from_name(&name) else {
        let known: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        return Response::failure(
            id,
            ErrorCode::UnknownOp,
            format!("unknown op {name:?}; known: {}", known.join(", ")),
        );
    };
    match run(op, args, control) {
        Ok(result) => Response::success(id, result),
        Err((code, message)) => Response::failure(id, code, message),
    }
}

type OpResult = Result<Value, (ErrorCode, String)>;

fn run(op: Op, mut args: Map<String, Value>, control: &dyn VmControl) -> OpResult {
    // Take the known arguments out first; whatever is left is unknown.
    let flat = if op == Op::Mtree {
        match args.remove("flat") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => {
                return Err((
                    ErrorCode::InvalidRequest,
                    "mtree: \"flat\" must be a boolean".into(),
                ))
            }
        }
    } else {
        false
    };
    let path = if op == Op::Snapshot {
        match args.remove("path") {
            Some(Value::String(p)) if !p.is_empty() => Some(std::path::PathBuf::from(p)),
            _ => {
                return Err((
                    ErrorCode::InvalidRequest,
                    "snapshot: \"path\" (a directory) is required".into(),
                ))
            }
        }
    } else {
        None
    };
    let force = if op == Op::Snapshot {
        match args.remove("force") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => {
                return Err((
                    ErrorCode::InvalidRequest,
                    "snapshot: \"force\" must be a boolean".into(),
                ))
            }
        }
    } else {
        false
    };
    if let Some(key) = args.keys().next() {
        return Err((
            ErrorCode::InvalidRequest,
            format!("{}: unknown argument {key:?}", op.name()),
        ));
    }
    Ok(match op {
        Op::Ping => json!({"pong": true}),
        Op::Version => json!({
            "protocol": PROTOCOL_VERSION,
            "ember": env!("CARGO_PKG_VERSION"),
            "ops": Op::ALL.iter().map(|o| o.name()).collect::<Vec<_>>(),
        }),
        Op::Info => control.info(),
        Op::State => json!({"state": control.state()}),
        Op::Pause => json!({"state": control.pause().map_err(control_error)?}),
        Op::Resume => json!({"state": control.resume().map_err(control_error)?}),
        Op::PowerButton => {
            control.power_button().map_err(control_error)?;
            json!({})
        }
        Op::Reset => {
            control.reset().map_err(control_error)?;
            json!({})
        }
        Op::Stop => {
            control.stop().map_err(control_error)?;
            json!({})
        }
        Op::Mtree => json!({"text": control.mtree(flat)}),
        Op::AccelInfo => control.accel_info(),
        Op::Counters => control.counters(),
        Op::Snapshot => {
            let path = path.unwrap_or_default();
            control
                .snapshot_with(&path, &SnapshotOptions { force })
                .map_err(control_error)?;
            json!({"path": path})
        }
    })
}

fn control_error(e: ControlError) -> (ErrorCode, String) {
    let code = match e {
        ControlError::WrongState(..) => ErrorCode::WrongState,
        ControlError::Unsupported(_) => ErrorCode::Unsupported,
        ControlError::Failed(_) => ErrorCode::Failed,
    };
    (code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::VmState;
    use std::sync::Mutex;

    /// A VM that records calls and can be told to fail.
    struct FakeVm {
        state: Mutex<VmState>,
        calls: Mutex<Vec<String>>,
        fail_reset: bool,
    }

    impl FakeVm {
        fn new(state: VmState) -> FakeVm {
            FakeVm {
                state: Mutex::new(state),
                calls: Mutex::new(Vec::new()),
                fail_reset: false,
            }
        }
        fn log(&self, call: &str) {
            self.calls.lock().unwrap().push(call.to_owned());
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl VmControl for FakeVm {
        fn state(&self) -> VmState {
            *self.state.lock().unwrap()
        }
        fn info(&self) -> Value {
            json!({"arch": "x86_64", "memory": {"size_mib": 128}, "cpus": 1})
        }
        fn pause(&self) -> Result<VmState, ControlError> {
            self.log("pause");
            let mut s = self.state.lock().unwrap();
            match *s {
                VmState::Running | VmState::Paused => {
                    *s = VmState::Paused;
                    Ok(*s)
                }
                other => Err(ControlError::WrongState(other, "running or paused")),
            }
        }
        fn resume(&self) -> Result<VmState, ControlError> {
            self.log("resume");
            let mut s = self.state.lock().unwrap();
            match *s {
                VmState::Running | VmState::Paused => {
                    *s = VmState::Running;
                    Ok(*s)
                }
                other => Err(ControlError::WrongState(other, "running or paused")),
            }
        }
        fn power_button(&self) -> Result<(), ControlError> {
            self.log("power_button");
            Err(ControlError::Unsupported("no power button".into()))
        }
        fn reset(&self) -> Result<(), ControlError> {
            self.log("reset");
            if self.fail_reset {
                Err(ControlError::Failed("reset line stuck".into()))
            } else {
                Ok(())
            }
        }
        fn stop(&self) -> Result<(), ControlError> {
            self.log("stop");
            *self.state.lock().unwrap() = VmState::ShutDown;
            Ok(())
        }
        fn mtree(&self, flat: bool) -> String {
            if flat {
                "FlatView #0\n".into()
            } else {
                "address-space: memory\n".into()
            }
        }
        fn accel_info(&self) -> Value {
            json!({"accel": "tcg", "tlb": {"hits": 5}})
        }
        fn counters(&self) -> Value {
            json!({"exits": {"io": 3}})
        }
    }

    fn call(vm: &FakeVm, line: &str) -> Value {
        let out = handle_line(line, vm);
        assert!(!out.contains('\n'), "response spans lines: {out}");
        serde_json::from_str(&out).expect("response is JSON")
    }

    fn error_code(resp: &Value) -> &str {
        assert_eq!(resp["ok"], json!(false), "{resp}");
        assert!(resp.get("result").is_none(), "{resp}");
        assert!(resp["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        resp["error"]["code"].as_str().expect("code is a string")
    }

    fn result(resp: &Value) -> &Value {
        assert_eq!(resp["ok"], json!(true), "{resp}");
        assert!(resp.get("error").is_none(), "{resp}");
        &resp["result"]
    }

    #[test]
    fn ping_and_version() {
        let vm = FakeVm::new(VmState::Running);
        let r = call(&vm, r#"{"op":"ping"}"#);
        assert_eq!(r["id"], Value::Null);
        assert_eq!(result(&r), &json!({"pong": true}));
        let r = call(&vm, r#"{"op":"version","id":7}"#);
        let v = result(&r);
        assert_eq!(v["protocol"], json!(1));
        assert_eq!(v["ember"], json!(env!("CARGO_PKG_VERSION")));
        assert_eq!(v["ops"].as_array().map(Vec::len), Some(Op::ALL.len()));
        assert_eq!(r["id"], json!(7));
    }

    #[test]
    fn every_query_op_returns_the_vm_answer() {
        let vm = FakeVm::new(VmState::Paused);
        assert_eq!(result(&call(&vm, r#"{"op":"info"}"#)), &vm.info());
        assert_eq!(
            result(&call(&vm, r#"{"op":"state"}"#)),
            &json!({"state": "paused"})
        );
        assert_eq!(
            result(&call(&vm, r#"{"op":"mtree"}"#)),
            &json!({"text": "address-space: memory\n"})
        );
        assert_eq!(
            result(&call(&vm, r#"{"op":"mtree","args":{"flat":true}}"#)),
            &json!({"text": "FlatView #0\n"})
        );
        assert_eq!(
            result(&call(&vm, r#"{"op":"mtree","args":{"flat":false}}"#)),
            &json!({"text": "address-space: memory\n"})
        );
        assert_eq!(
            result(&call(&vm, r#"{"op":"accel_info"}"#)),
            &vm.accel_info()
        );
        assert_eq!(result(&call(&vm, r#"{"op":"counters"}"#)), &vm.counters());
        assert!(
            vm.calls().is_empty(),
            "queries changed the VM: {:?}",
            vm.calls()
        );
    }

    #[test]
    fn lifecycle_ops_reach_the_vm_and_report_the_new_state() {
        let vm = FakeVm::new(VmState::Running);
        assert_eq!(
            result(&call(&vm, r#"{"op":"pause"}"#)),
            &json!({"state": "paused"})
        );
        assert_eq!(vm.state(), VmState::Paused);
        assert_eq!(
            result(&call(&vm, r#"{"op":"resume"}"#)),
            &json!({"state": "running"})
        );
        assert_eq!(result(&call(&vm, r#"{"op":"reset"}"#)), &json!({}));
        assert_eq!(result(&call(&vm, r#"{"op":"stop"}"#)), &json!({}));
        assert_eq!(vm.state(), VmState::ShutDown);
        assert_eq!(vm.calls(), ["pause", "resume", "reset", "stop"]);
    }

    #[test]
    fn control_errors_map_to_their_codes() {
        let mut vm = FakeVm::new(VmState::ShutDown);
        let r = call(&vm, r#"{"op":"pause","id":"p"}"#);
        assert_eq!(error_code(&r), "wrong_state");
        assert_eq!(r["id"], json!("p"));
        assert_eq!(
            error_code(&call(&vm, r#"{"op":"power_button"}"#)),
            "unsupported"
        );
        vm.fail_reset = true;
        let r = call(&vm, r#"{"op":"reset"}"#);
        assert_eq!(error_code(&r), "failed");
        assert_eq!(r["error"]["message"], json!("reset line stuck"));
    }

    #[test]
    fn malformed_requests() {
        let vm = FakeVm::new(VmState::Running);
        for (line, code) in [
            ("", "parse_error"),
            ("{", "parse_error"),
            ("ping", "parse_error"),
            (r#"{"op":"ping"} trailing"#, "parse_error"),
            ("[]", "invalid_request"),
            ("\"ping\"", "invalid_request"),
            ("null", "invalid_request"),
            (r#"{"id":1}"#, "invalid_request"),
            (r#"{"op":5}"#, "invalid_request"),
            (r#"{"op":null}"#, "invalid_request"),
            (r#"{"op":"ping","args":[]}"#, "invalid_request"),
            (r#"{"op":"ping","args":"x"}"#, "invalid_request"),
            (r#"{"op":"ping","args":{"x":1}}"#, "invalid_request"),
            (r#"{"op":"mtree","args":{"flat":"yes"}}"#, "invalid_request"),
            (
                r#"{"op":"mtree","args":{"flat":true,"depth":2}}"#,
                "invalid_request",
            ),
            (r#"{"op":"Ping"}"#, "unknown_op"),
            (r#"{"op":"quit"}"#, "unknown_op"),
        ] {
            let r = call(&vm, line);
            assert_eq!(error_code(&r), code, "for {line:?}: {r}");
        }
        assert!(vm.calls().is_empty());
    }

    #[test]
    fn ids_are_echoed_verbatim_even_on_errors() {
        let vm = FakeVm::new(VmState::Running);
        for id in [
            json!(0),
            json!(-1.5),
            json!("abc"),
            json!({"nested": [1, 2, {"x": null}]}),
            json!([true]),
            json!(null),
        ] {
            let ok = json!({"id": id, "op": "ping"}).to_string();
            assert_eq!(call(&vm, &ok)["id"], id);
            let bad_op = json!({"id": id, "op": "nope"}).to_string();
            assert_eq!(call(&vm, &bad_op)["id"], id);
            let bad_args = json!({"id": id, "op": "ping", "args": 3}).to_string();
            assert_eq!(call(&vm, &bad_args)["id"], id);
        }
    }

    #[test]
    fn unknown_top_level_fields_and_null_args_are_accepted() {
        let vm = FakeVm::new(VmState::Running);
        let r = call(&vm, r#"{"op":"ping","args":null,"token":"x","v":2}"#);
        assert_eq!(result(&r), &json!({"pong": true}));
        let r = call(&vm, r#"{"op":"mtree","args":{"flat":null}}"#);
        assert_eq!(result(&r), &json!({"text": "address-space: memory\n"}));
    }

    #[test]
    fn snapshot_needs_a_path() {
        let vm = FakeVm::new(VmState::Paused);
        for bad in [
            r#"{"op":"snapshot"}"#,
            r#"{"op":"snapshot","args":{"path":""}}"#,
            r#"{"op":"snapshot","args":{"path":7}}"#,
        ] {
            assert_eq!(call(&vm, bad)["error"]["code"], "invalid_request", "{bad}");
        }
    }

    #[test]
    fn every_op_is_dispatched_and_every_code_has_a_stable_name() {
        let vm = FakeVm::new(VmState::Running);
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
            let request = if op == Op::Snapshot {
                json!({"op": "snapshot", "args": {"path": "/nonexistent/snap"}})
            } else {
                json!({"op": op.name()})
            };
            let r = call(&vm, &request.to_string());
            let code = r["error"]["code"].as_str();
            assert!(
                r["ok"] == json!(true) || code == Some("unsupported"),
                "{}: {r}",
                op.name()
            );
        }
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).expect("encode"),
                json!(code.as_str())
            );
        }
    }

    #[test]
    fn request_type_round_trips_through_the_dispatcher() {
        let vm = FakeVm::new(VmState::Running);
        let mut args = Map::new();
        args.insert("flat".into(), json!(true));
        let req = Request {
            id: Some(json!(3)),
            op: "mtree".into(),
            args: Some(args),
        };
        let line = serde_json::to_string(&req).expect("encode");
        let resp: Response = serde_json::from_str(&handle_line(&line, &vm)).expect("decode");
        assert_eq!(
            resp,
            Response::success(json!(3), json!({"text": "FlatView #0\n"}))
        );
    }
}
