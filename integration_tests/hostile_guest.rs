//! A hostile bare-metal riscv64 guest (integration_tests/guests/hostile.s)
//! attacks every device register, virtio descriptor corner, SBI call,
//! page-table and self-modifying-code path of the `virt` machine, under
//! each software-CPU tier and with two harts. Ember must end normally
//! (no signal, no panic, within the deadline), the guest must report its
//! counts with no sign of a device writing where it may not, and the
//! disk's protected sectors (which only malformed requests target) must
//! be unchanged.
//!
//! The guest is assembled here with the Debian cross binutils
//! (binutils-riscv64-linux-gnu, installed by tools/setup.sh), like the
//! instruction tests' programs. To bisect a failure, select attack
//! families and a seed with `EMBER_HOSTILE=FAMILIES[,SEED]` (hex; the
//! family bits are listed at the top of hostile.s), e.g.
//! `EMBER_HOSTILE=02 cargo test --test hostile_guest`.

#[path = "common/riscv_linux.rs"]
mod riscv_linux;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use riscv_linux::ember;

const DEADLINE: Duration = Duration::from_secs(60);
/// Every family (hostile.s).
const ALL_FAMILIES: u64 = 0x1ff;
/// Most log lines a run may print: the guest provokes 300 "device needs
/// reset" errors in a burst (family 0x100), which must be rate-limited.
const MAX_LOG_LINES: usize = 100;
const SECTOR: usize = 512;
/// The guest writes only below this sector with well-formed requests;
/// the rest of the disk is protected (hostile.s `PROT_SEC`).
const PROT_SEC: usize = 64;
const DISK_SIZE: usize = 1 << 20;
/// SBI_ERR_INVALID_ADDRESS as the guest prints it.
const SBI_ERR_INVALID_ADDRESS: u64 = -5i64 as u64;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-hostile-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run_tool(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {tool} ({e}): install Debian's binutils-riscv64-linux-gnu \
             (tools/setup.sh does) to assemble the hostile guest"
        )
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The guest as a flat `Image` (its source carries the 64-byte header),
/// assembled once per test process.
fn guest_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = scratch("image");
        let src = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/integration_tests/guests/hostile.s"
        );
        let obj = dir.join("hostile.o");
        let elf = dir.join("hostile.elf");
        let bin = dir.join("hostile.Image");
        let p = |p: &PathBuf| p.to_str().expect("UTF-8 temp path").to_string();
        run_tool(
            "riscv64-linux-gnu-as",
            &["-march=rv64gc", "-mabi=lp64d", "-o", &p(&obj), src],
        );
        run_tool(
            "riscv64-linux-gnu-ld",
            &[
                "--no-relax",
                "-Ttext=0x80200000",
                "-e",
                "_start",
                "-o",
                &p(&elf),
                &p(&obj),
            ],
        );
        run_tool(
            "riscv64-linux-gnu-objcopy",
            &["-O", "binary", "-j", ".text", &p(&elf), &p(&bin)],
        );
        bin
    })
}

/// A 1 MiB disk: zeroed scratch sectors, then protected sectors of
/// pseudo-random bytes. Returns its path and the protected bytes.
fn make_disk(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut disk = vec![0u8; DISK_SIZE];
    let mut x: u64 = 0x853c_49e6_748f_ea9b;
    for b in &mut disk[PROT_SEC * SECTOR..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let path = dir.join("disk.img");
    std::fs::write(&path, &disk).expect("write disk");
    (path, disk.split_off(PROT_SEC * SECTOR))
}

/// Families and seed: `EMBER_HOSTILE=FAMILIES[,SEED]` (hex) or the test's.
fn selection(seed: u64) -> (u64, u64) {
    let Ok(v) = std::env::var("EMBER_HOSTILE") else {
        return (ALL_FAMILIES, seed);
    };
    let mut parts = v.split(',');
    let hex = |s: Option<&str>| s.and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
    let families = hex(parts.next()).unwrap_or_else(|| panic!("EMBER_HOSTILE={v}: want hex"));
    (families, hex(parts.next()).unwrap_or(seed))
}

/// The guest's final `HOSTILE-COUNTS` line as key → value (numbers are
/// decimal, `families` and the `hsm` list hex).
struct Counts {
    line: String,
    values: HashMap<String, String>,
}

impl Counts {
    fn parse(stdout: &str) -> Option<Counts> {
        let line = stdout.lines().find_map(|l| {
            l.find("HOSTILE-COUNTS ")
                .map(|i| l[i..].trim_end().to_string())
        })?;
        let values = line
            .split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Counts { line, values })
    }

    fn get(&self, key: &str) -> u64 {
        let v = self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.line));
        v.parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number in {:?}", self.line))
    }

    /// The guest's `hart_start` results (SBI error codes, hex).
    fn hsm(&self) -> Vec<u64> {
        self.values
            .get("hsm")
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| u64::from_str_radix(s, 16).expect("hex hsm result"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Runs the guest with `--tcg-jit jit` and `cpus` harts and checks
/// everything the file's doc promises.
fn hostile(tag: &str, jit: &str, cpus: u8, seed: u64) {
    let image = guest_image();
    let dir = scratch(tag);
    let (disk, protected) = make_disk(&dir);
    let (families, seed) = selection(seed);
    let cmdline = format!("hostile={families:x},{seed:x}");
    let disk_arg = format!("path={}", disk.display());
    let cpus = cpus.to_string();
    let out = ember(
        &[
            "run",
            "--arch",
            "riscv64",
            "--accel",
            "tcg",
            // hostile.s's RAM_END assumes 64 MiB.
            "--memory",
            "64M",
            "--cpus",
            &cpus,
            "--tcg-jit",
            jit,
            "--kernel",
            image.to_str().expect("UTF-8 path"),
            "--disk",
            &disk_arg,
            "--rng",
            "--serial-input",
            "none",
            "--cmdline",
            &cmdline,
        ],
        DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "{tag}: ember {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(out.status.signal(), None, "killed by a signal: {context}");
    assert!(out.status.success(), "{context}");
    assert!(!stderr.contains("panicked"), "{context}");
    assert!(!stdout.contains("HOSTILE-FATAL"), "{context}");
    let counts = Counts::parse(&stdout).unwrap_or_else(|| panic!("no counts line: {context}"));
    println!("{tag} (--tcg-jit {jit}, --cpus {cpus}): {}", counts.line);

    let after = std::fs::read(&disk).expect("read disk");
    assert_eq!(after.len(), DISK_SIZE, "the disk changed size");
    let changed = after[PROT_SEC * SECTOR..]
        .iter()
        .zip(&protected)
        .position(|(a, b)| a != b);
    assert_eq!(
        changed.map(|i| PROT_SEC * SECTOR + i),
        None,
        "a malformed request wrote the protected sectors (first changed byte offset shown): {context}"
    );

    // What the guest checks itself: a device wrote outside the buffers it
    // was given, accepted a malformed request, lost data, or code the
    // guest rewrote (with fence.i) ran stale.
    for key in ["canary_bad", "malformed_ok", "blk_bad", "smc_bad"] {
        assert_eq!(counts.get(key), 0, "{key}: {context}");
    }
    assert!(counts.get("traps") > 0, "{context}");
    let on = |bit: u64| families & bit != 0;
    if on(0x01) {
        assert!(counts.get("accesses") > 0, "{context}");
    }
    if on(0x02) {
        // The scratch write/read-back works before, during and after.
        assert_eq!(counts.get("blk_ok"), 3, "{context}");
        assert!(counts.get("chains") > 0, "{context}");
        if cpus == "1" {
            // (With two harts, hart 1's register writes may hit the rng.)
            assert_eq!(counts.get("rng_ok"), 1, "{context}");
        }
    }
    if on(0x04) {
        assert!(counts.get("sbi") > 0, "{context}");
    }
    if on(0x08) {
        assert!(counts.get("pt") > 0, "{context}");
    }
    if on(0x10) {
        assert!(counts.get("smc") > 0, "{context}");
    }
    if on(0x100) {
        let lines = stderr.lines().count();
        assert!(
            lines < MAX_LOG_LINES,
            "{lines} log lines: guest-triggered messages are not rate-limited: {context}"
        );
    }
    if on(0x40) && cpus == "2" {
        // hart_start(1, ...): the last halfword of RAM is a valid start;
        // the last byte of RAM, an odd address in RAM, the end of RAM and
        // -1 are not; an MMIO address may be refused or fault on fetch.
        let hsm = counts.hsm();
        assert_eq!(hsm.first(), Some(&0), "hsm: {context}");
        assert_eq!(
            hsm.get(1..5),
            Some(&[SBI_ERR_INVALID_ADDRESS; 4][..]),
            "hsm: {context}"
        );
        assert!(
            matches!(hsm.get(5), Some(&0) | Some(&SBI_ERR_INVALID_ADDRESS)),
            "hsm: {context}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_guest_interpreter() {
    hostile("off", "off", 1, 0x1234_5678);
}

#[test]
fn hostile_guest_jit_hot() {
    hostile("hot", "hot", 1, 0x9abc_def0);
}

#[test]
fn hostile_guest_jit_eager() {
    hostile("eager", "eager", 1, 0x0f1e_2d3c);
}

#[test]
fn hostile_guest_two_harts() {
    hostile("smp", "hot", 2, 0x4b5a_6978);
}
