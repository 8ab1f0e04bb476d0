//! virtio devices under a real riscv64 Linux guest on the software CPU:
//! block (ext4 made by the test, checked from the host with debugfs, and a
//! read-only disk that must stay unchanged), rng, console (hvc0) and net
//! (a TAP in a private network namespace, UDP both ways).
//!
//! The guest's init (resources/riscv64/test-init.c) runs the scenario named
//! by `ember_test=` and prints `EMBER-TEST:` lines.

#[path = "common/riscv_linux.rs"]
mod riscv_linux;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use riscv_linux::{ember, guest, test_initramfs};

const DEADLINE: Duration = Duration::from_secs(120);

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-virtio-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Installs e2fsprogs if mkfs.ext4 or debugfs is missing (the README's
/// tools/setup.sh does this too; this keeps `cargo test` self-sufficient).
fn e2fsprogs() {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success() || !o.stderr.is_empty())
            .unwrap_or(false)
    };
    if !have("mkfs.ext4") || !have("debugfs") {
        let status = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/setup.sh"))
            .status()
            .expect("run tools/setup.sh");
        assert!(status.success(), "tools/setup.sh failed");
    }
}

/// Boots the test guest with `extra` ember arguments and `ember_test=test`
/// plus `cmdline` on the kernel command line.
fn run_guest(test: &str, cmdline: &str, extra: &[&str]) -> (Output, String) {
    let (image, _) = guest();
    let initrd = test_initramfs();
    let cmdline = format!("console=ttyS0 panic=-1 ember_test={test} {cmdline}");
    let mut args = vec![
        "run",
        "--arch",
        "riscv64",
        "--accel",
        "tcg",
        "--memory",
        "256M",
        "--kernel",
        image.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    let out = ember(&args, DEADLINE);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ember failed: {:?}\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("EMBER-TEST-DONE"),
        "the guest did not finish:\n{text}"
    );
    (out, text)
}

/// The values of `EMBER-TEST: key=value` lines, in order.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("EMBER-TEST: {key}=");
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .collect()
}

fn no_guest_errors(text: &str) {
    let errors: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("EMBER-TEST: error"))
        .collect();
    assert!(errors.is_empty(), "guest errors: {errors:?}\n{text}");
    assert!(text.contains("EMBER-TEST-DONE rc=0"), "{text}");
}

fn debugfs_cat(image: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .expect("run debugfs");
    assert!(out.status.success(), "debugfs failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn block_ext4_written_by_the_guest_reads_back_on_the_host() {
    e2fsprogs();
    let dir = scratch("blk");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    // Content chosen per run, so a stale image cannot pass.
    let host_text = format!(
        "host-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    );
    std::fs::write(root.join("in.txt"), format!("{host_text}\n")).unwrap();
    let disk = dir.join("disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(32 << 20).unwrap();
    drop(f);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&disk)
        .status()
        .expect("run mkfs.ext4");
    assert!(status.success(), "mkfs.ext4 failed");
    // A read-only second disk with a pattern the guest tries to overwrite.
    let ro = dir.join("ro.img");
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&ro, &pattern).unwrap();

    let guest_text = format!("guest-{}", std::process::id());
    let disk_arg = format!("path={},id=test-disk", disk.display());
    let ro_arg = format!("path={},readonly=on", ro.display());
    let (_, text) = run_guest(
        "blk",
        &format!("ember_data={guest_text}"),
        &["--disk", &disk_arg, "--disk", &ro_arg],
    );
    no_guest_errors(&text);
    assert_eq!(values(&text, "in"), vec![host_text.as_str()], "{text}");
    assert!(text.contains("EMBER-TEST: blk ok"), "{text}");
    assert_eq!(debugfs_cat(&disk, "/out.txt"), format!("{guest_text}\n"));
    // The guest read the read-only disk but could not change it.
    assert_eq!(values(&text, "vdb read"), vec!["512"], "{text}");
    assert_eq!(std::fs::read(&ro).unwrap(), pattern);
    // A filesystem check from the host finds the image clean.
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&disk)
        .output()
        .expect("run e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rng_gives_the_guest_entropy() {
    let (_, text) = run_guest("rng", "", &["--rng"]);
    no_guest_errors(&text);
    assert_eq!(values(&text, "rng_current"), vec!["virtio_rng.0"]);
    let hex = values(&text, "rng")[0];
    assert_eq!(hex.len(), 128, "{hex}");
    let bytes: Vec<u8> = (0..64)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    // 64 random bytes with fewer than 40 distinct values: odds ~1e-9.
    let mut distinct = bytes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() >= 40, "{hex}");
}

#[test]
fn without_rng_the_guest_has_no_hwrng() {
    let (image, _) = guest();
    let out = ember(
        &[
            "run",
            "--arch",
            "riscv64",
            "--memory",
            "128M",
            "--kernel",
            image.to_str().unwrap(),
            "--initrd",
            test_initramfs().to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 panic=-1 ember_test=rng",
        ],
        DEADLINE,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("EMBER-TEST: error"), "{text}");
}

#[test]
fn virtio_console_carries_output_and_input() {
    let dir = scratch("hvc");
    let sock = dir.join("console.sock");
    let listener = UnixListener::bind(&sock).expect("bind console socket");
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Console input over a UNIX socket, as a user would type it. Linux drops
    // hvc input that arrives before the tty is opened, so the line is sent
    // again every 200 ms until the VM has ended; the guest echoes the first
    // whole line it reads.
    let typist = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = listener.accept().ok().map(|(c, _)| c);
                }
                if let Some(c) = conn.as_mut() {
                    if c.write_all(b"typed-into-hvc\n").is_err() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let result = std::panic::catch_unwind(|| {
        run_guest(
            "hvc",
            "ember_hvc=hvc1",
            &[
                "--console",
                "virtio",
                "--serial-input",
                sock.to_str().unwrap(),
            ],
        )
    });
    stop.store(true, Ordering::Relaxed);
    let _ = typist.join();
    let (_, text) = result.unwrap_or_else(|p| std::panic::resume_unwind(p));
    no_guest_errors(&text);
    // riscv64 kernels with the SBI console have it as hvc0; virtio-console
    // is the next one.
    assert!(text.contains("EMBER-HVC: hello on hvc1"), "{text}");
    assert_eq!(values(&text, "hvc got"), vec!["typed-into-hvc"], "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_disk_is_a_clear_error() {
    let (image, _) = guest();
    let out = ember(
        &[
            "run",
            "--arch",
            "riscv64",
            "--kernel",
            image.to_str().unwrap(),
            "--disk",
            "path=/nonexistent/disk.img",
        ],
        DEADLINE,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
}

/// Runs `ip` with `args` (in the calling thread's network namespace).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves this thread into a new network namespace (only this thread: the
/// namespace is per task). Children it spawns and sockets it creates live
/// there. `false` when the kernel forbids it.
fn enter_private_netns() -> bool {
    // SAFETY: unshare(2) with a flag constant; affects only this thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        eprintln!(
            "skipping: cannot create a network namespace: {}",
            std::io::Error::last_os_error()
        );
        return false;
    }
    true
}

#[test]
fn net_exchanges_udp_both_ways_through_a_tap() {
    // A thread of its own, so the namespace dies with it and no other test
    // runs in it.
    let result = std::thread::spawn(|| {
        if !enter_private_netns() {
            return None;
        }
        ip(&["link", "set", "lo", "up"]);
        ip(&["tuntap", "add", "dev", "embertap0", "mode", "tap"]);
        ip(&["addr", "add", "10.0.2.1/24", "dev", "embertap0"]);
        ip(&["link", "set", "embertap0", "up"]);
        let echo = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 1), 7777))
            .expect("bind 10.0.2.1:7777");
        let client =
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 1), 0)).expect("bind client");
        // The host side runs on another thread while this one runs ember;
        // the sockets stay in the namespace they were made in.
        let host = std::thread::spawn(move || {
            echo.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut buf = [0u8; 2048];
            let (n, from) = echo.recv_from(&mut buf).expect("guest datagram");
            let got = String::from_utf8_lossy(&buf[..n]).into_owned();
            echo.send_to(&buf[..n], from).unwrap();
            // Host to guest: retry until the guest's echo server answers.
            client
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let guest = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 7778);
            let mut echoed = None;
            for attempt in 0..120 {
                let msg = format!("host-to-guest-{attempt}");
                client.send_to(msg.as_bytes(), guest).unwrap();
                if let Ok((n, _)) = client.recv_from(&mut buf) {
                    echoed = Some((msg, String::from_utf8_lossy(&buf[..n]).into_owned()));
                    break;
                }
            }
            client.send_to(b"done", guest).unwrap();
            (got, echoed)
        });
        let mac = "52:54:00:12:34:56";
        let net = format!("tap=embertap0,mac={mac}");
        let (_, text) = run_guest(
            "net",
            "ember_ip=10.0.2.15 ember_peer=10.0.2.1",
            &["--net", &net],
        );
        let host = host.join().expect("host thread");
        Some((text, host, mac))
    })
    .join()
    .expect("namespace thread");
    let Some((text, (got, echoed), mac)) = result else {
        return;
    };
    no_guest_errors(&text);
    assert_eq!(values(&text, "mac"), vec![mac], "{text}");
    assert_eq!(got, "ember-guest-to-host");
    assert_eq!(values(&text, "echo"), vec!["ember-guest-to-host"], "{text}");
    let (sent, back) = echoed.expect("the guest echoed a host datagram");
    assert_eq!(sent, back);
    assert!(
        values(&text, "host says").contains(&sent.as_str()),
        "{text}"
    );
}
