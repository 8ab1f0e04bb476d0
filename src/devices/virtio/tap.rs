//! A Linux TAP interface as the host side of virtio-net.
//!
//! [`Tap::open`] opens `/dev/net/tun` and attaches it to the interface of
//! the given name with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`:
//! - `IFF_TAP`: Ethernet frames, which is what virtio-net carries.
//! - `IFF_NO_PI`: no 4-byte packet-information prefix; the frame's own
//!   Ethernet header says everything.
//! - `IFF_VNET_HDR` with a header size of 12 (`TUNSETVNETHDRSZ`), the size
//!   of virtio 1.x's `virtio_net_hdr_v1`: every frame read or written is
//!   preceded by that header. With all offloads off (`TUNSETOFFLOAD 0`) the
//!   kernel checksums and segments everything itself and the header carries
//!   nothing we need, so [`Tap::read_frame`] discards it and
//!   [`Tap::write_frame`] sends a zeroed one; the callers deal in plain
//!   Ethernet frames. The header is negotiated anyway so that checksum and
//!   segmentation offloads can later be passed through without changing how
//!   the interface is opened.
//!
//! If an interface of that name exists (a persistent tap made with
//! `ip tuntap add NAME mode tap user UID`), `open` attaches to it; that
//! needs `CAP_NET_ADMIN` or being the tap's owner, and its link state is
//! the host's business (`ip link set NAME up`). Otherwise `open` creates a
//! new, non-persistent interface, which needs `CAP_NET_ADMIN`, and brings
//! its link up (nobody else could have, since it did not exist before);
//! that interface disappears when the [`Tap`] is dropped.
//!
//! The descriptor is non-blocking and close-on-exec: the VMM polls it
//! (edge-triggered), and a child process must not keep the interface alive.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of `virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers): the per-frame header the TAP
/// exchanges with us.
pub const VNET_HDR_LEN: usize = 12;

const TUN_PATH: &str = "/dev/net/tun";

/// Whether an interface called `name` exists in this network namespace.
fn interface_exists(name: &str) -> bool {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string, which `c_name`
    // is for the duration of the call.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

/// The flags of interface `ifr_name` (`SIOCGIFFLAGS`), and the socket the
/// interface ioctls go through.
fn interface_flags(
    ifr_name: [libc::c_char; libc::IFNAMSIZ],
) -> io::Result<(std::os::fd::OwnedFd, libc::ifreq)> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket has no memory arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero bytes are a valid `ifreq` (see `Tap::open`).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_name = ifr_name;
    // SAFETY: SIOCGIFFLAGS reads and writes one `struct ifreq`, which
    // `ifr` is, exclusively borrowed for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((sock, ifr))
}

/// Brings interface `ifr_name`'s link up (`IFF_UP`), keeping its other
/// flags.
fn set_link_up(ifr_name: [libc::c_char; libc::IFNAMSIZ]) -> io::Result<()> {
    let (sock, mut ifr) = interface_flags(ifr_name)?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags member, which is the
    // one read and written here.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as i16 };
    // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`, which `ifr` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why a TAP interface could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid TAP interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot open {TUN_PATH} for TAP {name}: {source}{hint}")]
    OpenTun {
        name: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name}: {op} failed: {source}{hint}")]
    Ioctl {
        name: String,
        op: &'static str,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open TAP interface. Dropping it closes the descriptor (and removes
/// the interface if `open` created it).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to (or, with `CAP_NET_ADMIN`, creates) the TAP interface
    /// `name`; see the module documentation.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let ifr_name = encode_ifname(name)?;
        let existed = interface_exists(name);

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            // std already opens with O_CLOEXEC; O_NONBLOCK because the
            // event loop must never stall on the TAP.
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                hint: match source.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                        " (is the tun module loaded / /dev/net/tun present?)"
                    }
                    Some(libc::EACCES) | Some(libc::EPERM) => " (no permission on /dev/net/tun)",
                    _ => "",
                },
                source,
            })?;

        // SAFETY: `ifreq` is a plain C struct (a name array and a union of
        // integers, sockaddrs and a pointer) for which all-zero bytes is a
        // valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = ifr_name;
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, and `ifr`
        // is a valid, exclusively borrowed one for the whole call; the fd
        // is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        check(rc, name, "TUNSETIFF")?;

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer,
        // which points at a live local for the duration of the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        check(rc, name, "TUNSETVNETHDRSZ")?;

        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned
        // long of TUN_F_* flags); no memory is passed.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        check(rc, name, "TUNSETOFFLOAD")?;

        if !existed {
            set_link_up(ifr_name).map_err(|source| TapError::Ioctl {
                name: name.to_owned(),
                op: "bringing the new interface's link up (SIOCSIFFLAGS)",
                hint: "",
                source,
            })?;
        }

        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface name as given to [`Tap::open`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one Ethernet frame (without the vnet header) into `buf`.
    /// Returns its length; `WouldBlock` when no frame is queued. A frame
    /// longer than `buf` is truncated by the kernel, so `buf` should hold
    /// the largest frame the interface's MTU allows.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        let n = self
            .file
            .read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])?;
        n.checked_sub(VNET_HDR_LEN).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "TAP {}: read of {n} bytes is shorter than the vnet header",
                    self.name
                ),
            )
        })
    }

    /// Writes one Ethernet frame, preceded by a zeroed vnet header (no
    /// checksum or segmentation offload). `WouldBlock` means the kernel
    /// cannot take it now; nothing was sent.
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let hdr = [0u8; VNET_HDR_LEN];
        let n = self
            .file
            .write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)])?;
        // A TAP write is one packet: the kernel takes all of it or fails.
        if n != VNET_HDR_LEN + frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("TAP {}: short write ({n} bytes)", self.name),
            ));
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn check(rc: libc::c_int, name: &str, op: &'static str) -> Result<(), TapError> {
    if rc >= 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::EPERM) => {
            " (creating a TAP needs CAP_NET_ADMIN; attaching to a persistent one needs \
             CAP_NET_ADMIN or being its owner)"
        }
        Some(libc::EBUSY) => " (the interface is already attached to another process)",
        Some(libc::EINVAL) if op == "TUNSETIFF" => {
            " (an interface of that name exists but is not a single-queue TAP)"
        }
        _ => "",
    };
    Err(TapError::Ioctl {
        name: name.to_owned(),
        op,
        hint,
        source,
    })
}

/// Checks an interface name and converts it to `ifr_name`. Linux names are
/// at most `IFNAMSIZ - 1` bytes, not empty, and contain no '/', whitespace
/// or ':' (the kernel's `dev_valid_name`, minus its "." and ".." cases,
/// which it rejects too).
fn encode_ifname(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], TapError> {
    let invalid = |reason| TapError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(invalid("longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(invalid("reserved name"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(invalid("contains '/', ':', NUL or whitespace"));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, src) in out.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_validated() {
        assert!(encode_ifname("tap0").is_ok());
        assert!(encode_ifname("a23456789012345").is_ok());
        for bad in ["", "a234567890123456", "a/b", "a b", "a:b", ".", ".."] {
            assert!(
                matches!(encode_ifname(bad), Err(TapError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        let enc = encode_ifname("tap0").expect("valid");
        assert_eq!(
            &enc[..5],
            &[b't' as libc::c_char, b'a' as _, b'p' as _, b'0' as _, 0]
        );
    }

    /// Creates a TAP in a private network namespace, so the host's
    /// interfaces are never touched, and exchanges an ARP request/reply
    /// with the kernel through it. Skipped (with the reason printed) where
    /// namespaces or TAP creation are not permitted.
    #[test]
    fn tap_in_private_netns_answers_arp() {
        // unshare(CLONE_NEWNET) only moves the calling thread, so a fresh
        // thread keeps the rest of the test process in the host namespace.
        let result = std::thread::spawn(tap_arp_roundtrip)
            .join()
            .expect("tap test thread panicked");
        if let Err(reason) = result {
            println!("skipping TAP test: {reason}");
        }
    }

    fn tap_arp_roundtrip() -> Result<(), String> {
        // SAFETY: unshare has no memory arguments; it only changes this
        // thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            ));
        }
        let mut tap = match Tap::open("embertest0") {
            Ok(t) => t,
            Err(e) => return Err(e.to_string()),
        };
        assert_eq!(tap.name(), "embertest0");
        // Created here, so its link is up already.
        let (_, ifr) = interface_flags(encode_ifname("embertest0").expect("valid"))
            .map_err(|e| format!("SIOCGIFFLAGS: {e}"))?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        assert_ne!(flags & libc::IFF_UP as i16, 0, "flags {flags:#x}");

        // A second attach to a single-queue TAP is refused with EBUSY, and
        // the error names the device.
        let err = Tap::open("embertest0").expect_err("second attach must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("embertest0") && msg.contains("TUNSETIFF"),
            "{msg}"
        );

        // 192.0.2.0/24 is TEST-NET-1 and lives only inside this namespace.
        // Child processes inherit this thread's namespace.
        for args in [
            &["link", "set", "embertest0", "address", "02:00:00:00:00:01"][..],
            &["addr", "add", "192.0.2.1/24", "dev", "embertest0"],
            &["link", "set", "embertest0", "up"],
        ] {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !status.success() {
                return Err(format!("ip {args:?} failed: {status}"));
            }
        }

        let guest_mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        tap.write_frame(&arp_request(guest_mac, 2))
            .expect("write ARP request");

        // Other frames (IPv6 router solicitations, MLD) may come first;
        // wait for the ARP reply with poll(), bounded by a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut buf = vec![0u8; 65550];
        loop {
            match tap.read_frame(&mut buf) {
                Ok(n) => {
                    if is_arp_reply(&buf[..n], guest_mac, 2) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(&tap, deadline),
                Err(e) => panic!("TAP read failed: {e}"),
            }
        }

        // The same exchange through the virtio-net device and its rings.
        use super::super::net::test_ring::{mem, Ring};
        use super::super::net::{Net, RX_QUEUE, TX_QUEUE};
        use super::super::VirtioDevice;
        use vm_memory::{Bytes, GuestAddress};

        let guest_mac = [0x52, 0x54, 0, 0x12, 0x34, 0x57];
        let m = mem();
        let mut rx = Ring::new(&m, 0, 16);
        let mut tx = Ring::new(&m, 0x2000, 16);
        let fd = tap.as_raw_fd();
        let mut net = Net::with_backend(tap, guest_mac);
        net.activate(vec![rx.queue(), tx.queue()], net.features())
            .expect("activate");
        assert_eq!(net.host_fds(), vec![fd]);
        let bufs: Vec<u64> = (0..8).map(|i| 0x1_0000 + i * 0x1000).collect();
        for &b in &bufs {
            rx.add(&[(b, 0x1000, true)]);
        }
        // Drain whatever the kernel already queued, as after EPOLLET.
        net.process_queue(RX_QUEUE, &m).expect("rx");
        let seen = rx.used().len();

        let req = arp_request(guest_mac, 3);
        m.write_slice(&req, GuestAddress(0x4_0000 + 12))
            .expect("frame");
        tx.add(&[(0x4_0000, 12, false), (0x4_000c, req.len() as u32, false)]);
        assert!(net.process_queue(TX_QUEUE, &m).expect("tx"));
        assert_eq!(net.counters().tx_frames, 1);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut checked = seen;
        loop {
            let used = rx.used();
            for &(head, len) in &used[checked..] {
                let mut f = vec![0u8; len as usize];
                m.read_slice(&mut f, GuestAddress(bufs[head as usize]))
                    .expect("rx buffer");
                assert_eq!(
                    &f[..12],
                    &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                    "virtio header"
                );
                if is_arp_reply(&f[12..], guest_mac, 3) {
                    return Ok(());
                }
            }
            checked = used.len();
            assert!(
                checked < bufs.len(),
                "receive buffers used up without an ARP reply"
            );
            wait_fd_readable(fd, deadline);
            net.process_host_event(0, &m).expect("rx");
        }
    }

    /// An ARP request from `mac`/192.0.2.`host` for 192.0.2.1.
    fn arp_request(mac: [u8; 6], host: u8) -> Vec<u8> {
        let mut req = Vec::new();
        req.extend_from_slice(&[0xff; 6]);
        req.extend_from_slice(&mac);
        req.extend_from_slice(&[0x08, 0x06]); // ARP
        req.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
        req.extend_from_slice(&mac);
        req.extend_from_slice(&[192, 0, 2, host]);
        req.extend_from_slice(&[0; 6]);
        req.extend_from_slice(&[192, 0, 2, 1]);
        req
    }

    /// Whether `f` is the tap's ARP reply to [`arp_request`]`(mac, host)`.
    fn is_arp_reply(f: &[u8], mac: [u8; 6], host: u8) -> bool {
        if f.len() < 42 || f[12..14] != [0x08, 0x06] || f[20..22] != [0, 2] {
            return false;
        }
        assert_eq!(&f[0..6], &mac, "reply goes to the requester");
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 1], "reply from the tap's MAC");
        assert_eq!(&f[28..32], &[192, 0, 2, 1], "sender IP");
        assert_eq!(&f[38..42], &[192, 0, 2, host], "target IP");
        true
    }

    fn wait_readable(tap: &Tap, deadline: std::time::Instant) {
        wait_fd_readable(tap.as_raw_fd(), deadline)
    }

    /// Blocks in poll() until `fd` is readable; fails the test at the
    /// deadline.
    fn wait_fd_readable(fd: RawFd, deadline: std::time::Instant) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no ARP reply from the TAP");
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, borrowed for the call.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
    }
}
