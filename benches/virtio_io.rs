//! virtio I/O benchmarks inside the riscv64 guest on the software CPU, in
//! one run on the same machine:
//!
//! * block: sequential 1 MiB writes (then fsync) and reads, and 4 KiB random
//!   writes (then fsync) and reads, with O_DIRECT on the guest's raw
//!   /dev/vda (resources/riscv64/test-init.c, `ember_test=blkbench`),
//!   against the same pattern on the host file itself (O_DIRECT), and, with
//!   `--bench` and QEMU installed, against `qemu-system-riscv64 -M virt`
//!   with a virtio-blk-device on the same image;
//! * net: host-to-guest TCP throughput (one stream into the guest) and UDP
//!   round-trip latency through a TAP in a private network namespace, Ember
//!   against QEMU's virtio-net-device on the same TAP.
//!
//! `cargo bench --bench virtio_io` (tools/bench-riscv.sh installs QEMU)
//! prints the figures and ratios. Without `--bench` (as `cargo test
//! --all-targets` runs it) it does one small Ember run of each and skips
//! QEMU. The net part is skipped, saying why, where network namespaces
//! cannot be created.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const TAP: &str = "embbench0";
const MAC: &str = "52:54:00:12:34:56";

fn script_path(name: &str) -> PathBuf {
    let script = format!("{}/tools/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run guest build script");
    assert!(out.status.success(), "{script} failed");
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .expect("a path"),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ember,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Ember => "Ember",
            Vmm::Qemu => "QEMU",
        }
    }
}

/// The VMM command for the test guest with `cmdline`, a disk or a TAP.
fn vmm(which: Vmm, kernel: &Path, initrd: &Path, cmdline: &str, disk: Option<&Path>) -> Command {
    let mut cmd;
    match which {
        Vmm::Ember => {
            cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
            cmd.args(["run", "--arch", "riscv64", "--accel", "tcg"])
                .args(["--memory", "256M", "--serial-input", "none"])
                .arg("--kernel")
                .arg(kernel)
                .arg("--initrd")
                .arg(initrd)
                .args(["--cmdline", cmdline]);
            match disk {
                Some(d) => {
                    cmd.arg("--disk").arg(format!("path={}", d.display()));
                }
                None => {
                    cmd.arg("--net").arg(format!("tap={TAP},mac={MAC}"));
                }
            }
        }
        Vmm::Qemu => {
            cmd = Command::new("qemu-system-riscv64");
            cmd.args(["-M", "virt", "-smp", "1", "-m", "256M"])
                .args(["-nographic", "-no-reboot", "-kernel"])
                .arg(kernel)
                .arg("-initrd")
                .arg(initrd)
                .args(["-append", cmdline]);
            match disk {
                Some(d) => {
                    cmd.arg("-drive")
                        .arg(format!("file={},format=raw,if=none,id=d0", d.display()))
                        .args(["-device", "virtio-blk-device,drive=d0"]);
                }
                None => {
                    cmd.args([
                        "-netdev",
                        &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
                        "-device",
                        &format!("virtio-net-device,netdev=n0,mac={MAC}"),
                    ]);
                }
            }
        }
    }
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    cmd
}

fn value(out: &str, key: &str) -> Option<f64> {
    let prefix = format!("{key}=");
    out.lines()
        .filter(|l| l.contains("EMBER-TEST:"))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(prefix.as_str()))?
        .parse()
        .ok()
}

#[derive(Debug, Clone, Copy, Default)]
struct BlockFigures {
    seq_write_mibps: f64,
    seq_read_mibps: f64,
    rand_write_iops: f64,
    rand_read_iops: f64,
}

fn guest_block(which: Vmm, kernel: &Path, initrd: &Path, disk: &Path, mib: u64) -> BlockFigures {
    let cmdline = format!("console=ttyS0 panic=-1 quiet ember_test=blkbench ember_mib={mib}");
    let out = vmm(which, kernel, initrd, &cmdline, Some(disk))
        .output()
        .expect("run the VMM");
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k| value(&text, k).unwrap_or_else(|| panic!("{}: no {k} in\n{text}", which.name()));
    BlockFigures {
        seq_write_mibps: get("seq_write_mibps"),
        seq_read_mibps: get("seq_read_mibps"),
        rand_write_iops: get("rand_write_iops"),
        rand_read_iops: get("rand_read_iops"),
    }
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: a non-zero size with a valid alignment.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Aligned { ptr, layout }
    }
    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The guest's pattern on the host file (same xorshift sequence).
fn host_block(path: &Path, mib: u64) -> BlockFigures {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("open with O_DIRECT");
    let size = mib << 20;
    let mut chunk = Aligned::new(1 << 20);
    chunk.slice().fill(0x5a);
    let t = Instant::now();
    for off in (0..size).step_by(1 << 20) {
        file.write_all_at(chunk.slice(), off).expect("write");
    }
    file.sync_all().expect("fsync");
    let seq_write_mibps = mib as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for off in (0..size).step_by(1 << 20) {
        file.read_exact_at(chunk.slice(), off).expect("read");
    }
    let seq_read_mibps = mib as f64 / t.elapsed().as_secs_f64();
    let blocks = size / 4096;
    let ops = blocks.min(4096);
    let mut x: u64 = 88172645463325252;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * 4096
    };
    let mut small = Aligned::new(4096);
    let t = Instant::now();
    for _ in 0..ops {
        file.write_all_at(small.slice(), next()).expect("write");
    }
    file.sync_all().expect("fsync");
    let rand_write_iops = ops as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..ops {
        file.read_exact_at(small.slice(), next()).expect("read");
    }
    let rand_read_iops = ops as f64 / t.elapsed().as_secs_f64();
    BlockFigures {
        seq_write_mibps,
        seq_read_mibps,
        rand_write_iops,
        rand_read_iops,
    }
}

fn fresh_disk(dir: &Path, mib: u64) -> PathBuf {
    let path = dir.join("bench.img");
    let f = std::fs::File::create(&path).expect("create image");
    f.set_len(mib << 20).expect("size image");
    path
}

fn print_block(rows: &[(&str, BlockFigures)]) {
    println!(
        "{:<8} {:>14} {:>14} {:>16} {:>16}",
        "", "seq write MiB/s", "seq read MiB/s", "4K rand write IOPS", "4K rand read IOPS"
    );
    for (name, f) in rows {
        println!(
            "{:<8} {:>14.1} {:>14.1} {:>16.0} {:>16.0}",
            name, f.seq_write_mibps, f.seq_read_mibps, f.rand_write_iops, f.rand_read_iops
        );
    }
}

#[derive(Debug, Clone, Copy)]
struct NetFigures {
    /// Host-measured: bytes sent until the guest's count came back.
    throughput_mibps: f64,
    rtt_median_us: f64,
    rtt_p99_us: f64,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills the VMM if the benchmark bails out.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the net scenario against one VMM; call in the namespace thread.
fn guest_net(which: Vmm, kernel: &Path, initrd: &Path, mib: usize, pings: usize) -> NetFigures {
    let cmdline = format!("console=ttyS0 panic=-1 quiet ember_test=netbench ember_ip={GUEST_IP}");
    let child = vmm(which, kernel, initrd, &cmdline, None)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the VMM");
    let mut vm = Reap(child);
    // The guest listens once it has booted: retry the connection (paced,
    // bounded), the guest's boot time is not part of the figure.
    let deadline = Instant::now() + Duration::from_secs(120);
    let target = SocketAddrV4::new(GUEST_IP, 7779);
    let mut stream = loop {
        match TcpStream::connect_timeout(&target.into(), Duration::from_millis(500)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{}: cannot reach the guest: {e}", which.name()),
        }
    };
    let chunk = vec![0xa5u8; 64 << 10];
    let total = mib << 20;
    let t = Instant::now();
    let mut sent = 0;
    while sent < total {
        stream.write_all(&chunk).expect("send");
        sent += chunk.len();
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("guest's count");
    let throughput_mibps = total as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
    assert_eq!(reply.trim(), total.to_string(), "the guest lost bytes");

    let udp = UdpSocket::bind(SocketAddrV4::new(HOST_IP, 0)).expect("bind");
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let peer = SocketAddrV4::new(GUEST_IP, 7780);
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    let mut attempts = 0;
    while rtts.len() < pings && attempts < pings * 4 {
        attempts += 1;
        let t = Instant::now();
        udp.send_to(b"ping", peer).expect("send");
        if udp.recv_from(&mut buf).is_ok() {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = udp.send_to(b"done", peer);
    let _ = vm.0.wait();
    assert!(!rtts.is_empty(), "{}: no ping came back", which.name());
    rtts.sort_by(|a, b| a.total_cmp(b));
    NetFigures {
        throughput_mibps,
        rtt_median_us: rtts[rtts.len() / 2],
        rtt_p99_us: rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)],
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let kernel = script_path("riscv-linux-guest.sh");
    let initrd = script_path("riscv-test-guest.sh");
    let have_qemu = full
        && Command::new("qemu-system-riscv64")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if full && !have_qemu {
        println!(
            "qemu-system-riscv64 not found (tools/bench-riscv.sh installs it): Ember and host only"
        );
    }
    let dir = std::env::temp_dir().join(format!("ember-bench-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");

    // Block.
    let mib = if full { 64 } else { 4 };
    let mut rows = vec![(
        "Ember",
        guest_block(Vmm::Ember, &kernel, &initrd, &fresh_disk(&dir, mib), mib),
    )];
    if have_qemu {
        rows.push((
            "QEMU",
            guest_block(Vmm::Qemu, &kernel, &initrd, &fresh_disk(&dir, mib), mib),
        ));
    }
    rows.push(("host", host_block(&fresh_disk(&dir, mib), mib)));
    println!("virtio-blk, {mib} MiB raw disk, O_DIRECT in the guest and on the host:");
    print_block(&rows);
    if let (Some(e), Some(h)) = (rows.first(), rows.last()) {
        println!(
            "Ember/host: seq write {:.2}, seq read {:.2}, rand write {:.2}, rand read {:.2}",
            e.1.seq_write_mibps / h.1.seq_write_mibps,
            e.1.seq_read_mibps / h.1.seq_read_mibps,
            e.1.rand_write_iops / h.1.rand_write_iops,
            e.1.rand_read_iops / h.1.rand_read_iops
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    // Net, in a private network namespace on a thread of its own.
    let (mib, pings) = if full { (64, 500) } else { (2, 20) };
    let result = std::thread::spawn(move || {
        // SAFETY: unshare(2) with a flag constant; affects only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        let host_cidr = format!("{HOST_IP}/24");
        if !(ip(&["link", "set", "lo", "up"])
            && ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])
            && ip(&["addr", "add", &host_cidr, "dev", TAP])
            && ip(&["link", "set", TAP, "up"]))
        {
            return Err("cannot set up the TAP device".into());
        }
        let mut out = vec![("Ember", guest_net(Vmm::Ember, &kernel, &initrd, mib, pings))];
        if have_qemu {
            out.push(("QEMU", guest_net(Vmm::Qemu, &kernel, &initrd, mib, pings)));
        }
        Ok(out)
    })
    .join()
    .expect("net benchmark thread");
    match result {
        Err(why) => println!("virtio-net: skipped: {why}"),
        Ok(rows) => {
            println!("virtio-net, host to guest, {mib} MiB over one TCP stream, {pings} UDP round trips:");
            println!(
                "{:<8} {:>12} {:>14} {:>12}",
                "", "TCP MiB/s", "RTT median us", "RTT p99 us"
            );
            for (name, f) in &rows {
                println!(
                    "{:<8} {:>12.1} {:>14.0} {:>12.0}",
                    name, f.throughput_mibps, f.rtt_median_us, f.rtt_p99_us
                );
            }
            if let [(_, e), (_, q)] = rows.as_slice() {
                println!(
                    "Ember/QEMU: throughput {:.2}, median RTT {:.2}",
                    e.throughput_mibps / q.throughput_mibps,
                    e.rtt_median_us / q.rtt_median_us
                );
            }
        }
    }
}
