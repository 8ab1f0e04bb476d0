//! Assembles the built-in guests in resources/guests/ with GNU as, so the
//! repository holds readable source rather than binary blobs.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils: tools/setup.sh)"));
    assert!(status.success(), "{cmd:?} failed");
}

/// The guests to assemble, by file stem.
const GUESTS: &[&str] = &["hello"];

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    // The guests are x86 code for the x86_64 machine, which only x86_64
    // hosts build (src/vmm/vm.rs); elsewhere the host's `as` may not even
    // know `--32` (riscv64 binutils).
    let x86_host = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
    for name in GUESTS {
        let src = format!("resources/guests/{name}.s");
        println!("cargo:rerun-if-changed={src}");
        if !x86_host {
            continue;
        }
        let obj = Path::new(&out).join(format!("{name}.o"));
        let bin = Path::new(&out).join(format!("{name}.bin"));
        run(Command::new("as").args(["--32", "-o"]).arg(&obj).arg(&src));
        run(Command::new("objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin));
    }
}
