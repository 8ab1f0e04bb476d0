//! Software-CPU benchmarks against QEMU, in one run on the same machine:
//!
//! * boot of the riscv64 test kernel to its init marker and power-off,
//!   wall time, Ember (`--accel tcg`) vs `qemu-system-riscv64 -M virt`;
//! * a CPU-bound guest program (prime counting by trial division, from
//!   tools/riscv-bench-guest.sh), guest-measured compute time;
//! * both once more with the interpreter alone (`--tcg-jit off`), for the
//!   compiled tier's gain.
//!
//! `cargo bench --bench tcg_boot` (or tools/bench-riscv.sh, which installs
//! QEMU first) prints medians and Ember/QEMU ratios, and for the CPU-bound
//! guest also the minimums (the least disturbed run of each, the steadier
//! figure on a shared machine). Without `--bench`
//! (as `cargo test --all-targets` runs it) it does one short Ember run of
//! each and skips QEMU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;

fn script_lines(name: &str) -> Vec<PathBuf> {
    let script = format!("{}/tools/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run guest build script");
    assert!(out.status.success(), "{script} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

struct Run {
    wall: Duration,
    stdout: String,
}

fn run(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("start VMM");
    let wall = start.elapsed();
    Run {
        wall,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn ember(image: &Path, initrd: &Path, cmdline: &str) -> Run {
    ember_with(image, initrd, cmdline, &[])
}

/// Ember with `extra` flags (`--tcg-jit off` for the interpreter alone).
fn ember_with(image: &Path, initrd: &Path, cmdline: &str, extra: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.args([
        "run",
        "--arch",
        "riscv64",
        "--accel",
        "tcg",
        "--memory",
        "512M",
        "--serial-input",
        "none",
        "--kernel",
        image.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        cmdline,
    ])
    .args(extra);
    run(&mut cmd)
}

fn qemu(image: &Path, initrd: &Path, cmdline: &str) -> Run {
    run(Command::new("qemu-system-riscv64").args([
        "-M",
        "virt",
        "-smp",
        "1",
        "-m",
        "512M",
        "-nographic",
        "-no-reboot",
        "-kernel",
        image.to_str().unwrap(),
        "-initrd",
        initrd.to_str().unwrap(),
        "-append",
        cmdline,
    ]))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The guest-measured compute time from the primes init.
fn primes_ms(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("EMBER-PRIMES:"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))?
        .trim()
        .parse()
        .ok()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let guest = script_lines("riscv-linux-guest.sh");
    let (image, initrd) = (&guest[0], &guest[1]);
    let primes = &script_lines("riscv-bench-guest.sh")[0];
    let boot_cmdline = "console=ttyS0 panic=-1";
    let n = if full { 2_000_000 } else { 20_000 };
    let primes_cmdline = format!("console=ttyS0 panic=-1 quiet primes={n}");

    if !full {
        let r = ember(image, initrd, boot_cmdline);
        assert!(
            r.stdout.contains("EMBER-GUEST-USERSPACE-OK"),
            "{}",
            r.stdout
        );
        let p = ember(image, primes, &primes_cmdline);
        assert!(p.stdout.contains("count=2262 "), "{}", p.stdout);
        // The guest measures in whole milliseconds: a quick run can read 0.
        let ms = primes_ms(&p.stdout).map_or("not reported".to_string(), |v| format!("{v} ms"));
        println!(
            "tcg_boot (quick): boot {:.3} s, primes below {n}: {ms} (guest-measured, ms resolution)",
            r.wall.as_secs_f64(),
        );
        return;
    }
    let have_qemu = Command::new("qemu-system-riscv64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_qemu {
        println!("qemu-system-riscv64 not found: run tools/bench-riscv.sh to install it");
    }
    let mut e_boot = Vec::new();
    let mut q_boot = Vec::new();
    let mut e_primes = Vec::new();
    let mut q_primes = Vec::new();
    let mut e_primes_wall = Vec::new();
    let mut q_primes_wall = Vec::new();
    // The interpreter alone, for the compiled tier's gain in the same run.
    let mut i_boot = Vec::new();
    let mut i_primes = Vec::new();
    const INTERPRET: &[&str] = &["--tcg-jit", "off"];
    for _ in 0..ROUNDS {
        let r = ember(image, initrd, boot_cmdline);
        assert!(
            r.stdout.contains("EMBER-GUEST-USERSPACE-OK"),
            "{}",
            r.stdout
        );
        e_boot.push(r.wall.as_secs_f64());
        let p = ember(image, primes, &primes_cmdline);
        e_primes.push(primes_ms(&p.stdout).expect("ember primes result"));
        e_primes_wall.push(p.wall.as_secs_f64());
        let r = ember_with(image, initrd, boot_cmdline, INTERPRET);
        assert!(
            r.stdout.contains("EMBER-GUEST-USERSPACE-OK"),
            "{}",
            r.stdout
        );
        i_boot.push(r.wall.as_secs_f64());
        let p = ember_with(image, primes, &primes_cmdline, INTERPRET);
        i_primes.push(primes_ms(&p.stdout).expect("interpreter primes result"));
        if have_qemu {
            let r = qemu(image, initrd, boot_cmdline);
            assert!(
                r.stdout.contains("EMBER-GUEST-USERSPACE-OK"),
                "{}",
                r.stdout
            );
            q_boot.push(r.wall.as_secs_f64());
            let p = qemu(image, primes, &primes_cmdline);
            q_primes.push(primes_ms(&p.stdout).expect("qemu primes result"));
            q_primes_wall.push(p.wall.as_secs_f64());
        }
    }
    let (eb, ep, epw) = (
        median(e_boot),
        median(e_primes.clone()),
        median(e_primes_wall),
    );
    println!("boot to marker + power-off, median of {ROUNDS}:");
    println!("  ember tcg : {eb:.3} s");
    let ib = median(i_boot);
    println!(
        "  ember tcg, interpreter only (--tcg-jit off): {ib:.3} s   compiled/interpreted {:.2}",
        eb / ib
    );
    if have_qemu {
        let qb = median(q_boot);
        println!("  qemu      : {qb:.3} s   ratio ember/qemu {:.2}", eb / qb);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let ep_min = min(&e_primes);
    println!(
        "primes below {n} (guest-measured compute; whole run wall), median of {ROUNDS} (min):"
    );
    println!("  ember tcg : {ep:.0} ms ({ep_min:.0}) ({epw:.3} s)");
    let ip = median(i_primes);
    println!(
        "  ember tcg, interpreter only (--tcg-jit off): {ip:.0} ms   compiled/interpreted {:.2}",
        ep / ip
    );
    if have_qemu {
        let (qp, qpw) = (median(q_primes.clone()), median(q_primes_wall));
        let qp_min = min(&q_primes);
        println!(
            "  qemu      : {qp:.0} ms ({qp_min:.0}) ({qpw:.3} s)   ratio ember/qemu {:.2}, of minimums {:.2} (wall {:.2})",
            ep / qp,
            ep_min / qp_min,
            epw / qpw
        );
    }
}
