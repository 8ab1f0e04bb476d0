//! Property tests over every parser of input from files or local users:
//! the memory map file, the VM config file, the snapshot manifest and
//! state, and the API protocol. They run on stable Rust with proptest in
//! the ordinary test run, a few hundred cases each.
//!
//! Inputs are random bytes and valid inputs with random edits (bytes
//! replaced, inserted or deleted, and tokens that tend to sit on limits:
//! huge numbers, negative ones, quotes, brackets). The property: the parser
//! returns (a value or an error) without panicking; where a printer exists,
//! parsing what it printed gives back the same value.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

use crate::api::control::{ControlError, VmControl, VmState};
use crate::api::protocol::{dispatch, Request, Response};
use crate::memory::map_file::load_str;
use crate::vmm::config_file::VmSettings;
use crate::vmm::snapshot::tests::sample_state;
use crate::vmm::snapshot::{
    parse_manifest, parse_state, FileSum, Manifest, SavedConfig, SavedDisk, SavedNet,
    SnapshotState, ARCH, FORMAT, KNOWN_ARCHES, VERSION,
};

const CASES: u32 = 256;

/// Tokens spliced into valid inputs.
const TOKENS: &[&str] = &[
    "0xffffffffffffffff",
    "18446744073709551616",
    "2^64",
    "2^63",
    "-1",
    "0",
    "1e999",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    "[[",
    "=",
    ",",
    ":",
    "\\u0000",
    "\n",
    "null",
    "true",
    "\u{1f525}",
    "9999999999999999999999",
];

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Edit {
    Replace(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Token(Index, Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<Index>().prop_map(Edit::Delete),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Token(i, t)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        match e {
            Edit::Replace(i, b) if !v.is_empty() => {
                let at = i.index(v.len());
                v[at] = *b;
            }
            Edit::Insert(i, b) => {
                let at = i.index(v.len() + 1);
                v.insert(at, *b);
            }
            Edit::Delete(i) if !v.is_empty() => {
                let at = i.index(v.len());
                v.remove(at);
            }
            Edit::Token(i, t) => {
                let at = i.index(v.len() + 1);
                let token = TOKENS[t.index(TOKENS.len())].as_bytes();
                v.splice(at..at, token.iter().copied());
            }
            _ => {}
        }
    }
    v
}

/// One of `seeds` with up to eight edits.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (any::<Index>(), proptest::collection::vec(edit(), 0..8))
        .prop_map(move |(i, edits)| apply(&seeds[i.index(seeds.len())], &edits))
}

/// Random bytes or a mutated seed.
fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        4 => mutated(seeds),
    ]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const CONFIG_SEED: &str = r#"
arch = "riscv64"
accel = "tcg"
memory = "256M"
cpus = 2
kernel = "Image"
initrd = "initrd.img"
cmdline = "console=ttyS0"
rng = true
console = "serial"
api_socket = "api.sock"
tcg_jit = "hot"

[serial]
input = "none"
output = "console.log"

[[disk]]
path = "root.img"
readonly = true
id = "root"

[[net]]
tap = "tap0"
mac = "52:54:00:12:34:56"
"#;

const X86_CONFIG_SEED: &str = r#"
memory = "64M"
firmware = "bios.bin"
debug_exit = 0x501
[[disk]]
path = "/data/a.img"
"#;

/// A VM that answers every operation without doing anything.
struct NullVm;

impl VmControl for NullVm {
    fn state(&self) -> VmState {
        VmState::Paused
    }
    fn info(&self) -> Value {
        json!({})
    }
    fn pause(&self) -> Result<VmState, ControlError> {
        Ok(VmState::Paused)
    }
    fn resume(&self) -> Result<VmState, ControlError> {
        Ok(VmState::Running)
    }
    fn power_button(&self) -> Result<(), ControlError> {
        Ok(())
    }
    fn reset(&self) -> Result<(), ControlError> {
        Ok(())
    }
    fn stop(&self) -> Result<(), ControlError> {
        Ok(())
    }
    fn mtree(&self, _flat: bool) -> String {
        String::new()
    }
    fn accel_info(&self) -> Value {
        json!({})
    }
    fn counters(&self) -> Value {
        json!({})
    }
}

fn request_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"op":"ping","id":1}"#,
        r#"{"op":"mtree","args":{"flat":true}}"#,
        r#"{"op":"snapshot","args":{"path":"/nonexistent/snap","force":true},"id":"x"}"#,
        r#"{"op":"pause"}"#,
        r#"{"op":"info","args":null,"id":[1,2]}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (any::<Index>(), any::<(u64, u32, u64, u32)>()).prop_map(|(arch, (ss, sc, ms, mc))| Manifest {
        format: FORMAT.into(),
        version: VERSION,
        arch: KNOWN_ARCHES[arch.index(KNOWN_ARCHES.len())].into(),
        state: FileSum {
            size: ss,
            crc32: sc,
        },
        memory: FileSum {
            size: ms,
            crc32: mc,
        },
    })
}

fn saved_config() -> impl Strategy<Value = SavedConfig> {
    let disk = (
        "[ -~]{1,20}",
        any::<bool>(),
        proptest::option::of("[a-z0-9]{1,20}"),
    )
        .prop_map(|(path, readonly, id)| SavedDisk {
            path: path.into(),
            readonly,
            id,
        });
    let net = ("[a-z0-9]{1,15}", proptest::option::of(any::<[u8; 6]>()))
        .prop_map(|(tap, mac)| SavedNet { tap, mac });
    (
        any::<(u64, u8, bool)>(),
        "[ -~]{0,40}",
        proptest::option::of("[ -~]{1,20}"),
        proptest::collection::vec(disk, 0..3),
        proptest::collection::vec(net, 0..3),
        prop_oneof![Just("serial"), Just("virtio")],
    )
        .prop_map(
            |((memory, cpus, rng), cmdline, kernel, disks, nets, console)| SavedConfig {
                memory,
                cpus,
                cmdline,
                kernel: kernel.map(Into::into),
                initrd: None,
                disks,
                nets,
                rng,
                console: console.into(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn map_files_parse_or_fail_cleanly(bytes in input(vec![
        include_bytes!("../../resources/maps/riscv-virt.toml").to_vec(),
        include_bytes!("../../resources/maps/x86-pc.toml").to_vec(),
    ])) {
        let _ = load_str(&text(&bytes));
    }

    #[test]
    fn config_files_parse_or_fail_cleanly(bytes in input(vec![
        CONFIG_SEED.as_bytes().to_vec(),
        X86_CONFIG_SEED.as_bytes().to_vec(),
    ])) {
        if let Ok(settings) = VmSettings::parse(&text(&bytes), "vm.toml", Path::new("/vms")) {
            let _ = settings.into_vm_config();
        }
    }

    #[test]
    fn manifests_parse_or_fail_cleanly(bytes in input(vec![
        serde_json::to_vec_pretty(&Manifest {
            format: FORMAT.into(),
            version: VERSION,
            arch: ARCH.into(),
            state: FileSum { size: 1234, crc32: 0xdead_beef },
            memory: FileSum { size: 64 << 20, crc32: 7 },
        }).unwrap_or_default(),
    ])) {
        let _ = parse_manifest(&bytes, Path::new("manifest.json"));
    }

    #[test]
    fn a_printed_manifest_parses_back(m in manifest()) {
        let text = serde_json::to_vec_pretty(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = parse_manifest(&text, Path::new("manifest.json"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, m);
    }

    #[test]
    fn states_parse_or_fail_cleanly(bytes in input(vec![
        serde_json::to_vec(&sample_state(Some(42))).unwrap_or_default(),
        serde_json::to_vec_pretty(&sample_state(None)).unwrap_or_default(),
    ])) {
        if let Ok(state) = parse_state::<SnapshotState>(&bytes, ARCH) {
            // What a restore asks of a parsed state must not panic either.
            for id in 0..state.harts.len() + 1 {
                let _ = state.hart_state(id);
            }
            let _ = state.config.apply(Default::default());
        }
        #[cfg(target_arch = "x86_64")]
        let _ = parse_state::<crate::vmm::snapshot_x86::X86SnapshotState>(
            &bytes,
            crate::vmm::snapshot::ARCH_X86_64,
        );
    }

    #[test]
    fn a_printed_saved_config_parses_back(c in saved_config()) {
        let mut state = sample_state(None);
        state.config = c;
        let bytes = serde_json::to_vec(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: SnapshotState = parse_state(&bytes, ARCH)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, state);
    }

    #[test]
    fn every_request_line_gets_one_well_formed_answer(bytes in input(request_seeds())) {
        let line = text(&bytes);
        let response = dispatch(&line, &NullVm);
        // The answer is one line of JSON that reads back as itself.
        let out = response.to_line();
        prop_assert!(!out.contains('\n'));
        let back: Response = serde_json::from_str(&out)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, response);
    }

    #[test]
    fn a_printed_request_parses_back(
        id in proptest::option::of(json_value()),
        op in "[a-z_]{1,12}",
        args in proptest::option::of(proptest::collection::btree_map("[a-z]{1,6}", json_value(), 0..4)),
    ) {
        // A JSON null id reads back as no id: the same request.
        let id = id.filter(|v| !v.is_null());
        let request = Request { id, op, args: args.map(|m| m.into_iter().collect()) };
        let line = serde_json::to_string(&request).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Request = serde_json::from_str(&line).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &request);
        // And the server answers it without panicking.
        let _ = dispatch(&line, &NullVm);
    }
}
