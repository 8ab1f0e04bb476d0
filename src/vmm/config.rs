//! What `ember run` is asked to build.

use std::path::PathBuf;

use crate::accel::tcg::riscv64::jit::JitPolicy;
use crate::accel::AccelChoice;
use crate::arch::GuestArch;
use crate::vmm::console::{ConsoleInput, ConsoleOutput};
use crate::vmm::seccomp::SeccompMode;

/// The default kernel command line: the serial console, reboot through the
/// keyboard controller, no waiting after a panic, and no probing for i8042
/// features the minimal controller lacks (as Firecracker recommends).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// The default command line of riscv64 guests (the UART is ttyS0 there
/// too).
pub const DEFAULT_CMDLINE_RISCV64: &str = "console=ttyS0 panic=-1";

/// The most vCPUs a VM may have (the VMM refuses more).
pub const MAX_CPUS: u8 = 254;

/// Everything needed to build and run a microVM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The guest architecture.
    pub arch: GuestArch,
    /// ELF vmlinux or bzImage; `None` boots the firmware or the built-in
    /// guest.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub cpus: u8,
    /// A flat firmware image started at the reset vector.
    pub firmware: Option<PathBuf>,
    /// Port of an isa-debug-exit device.
    pub debug_exit: Option<u16>,
    pub accel: AccelChoice,
    pub kvm_path: PathBuf,
    pub console_input: ConsoleInput,
    pub console_output: ConsoleOutput,
    /// Create KVM's in-kernel interrupt controllers and PIT. Without them a
    /// vCPU's HLT exits to Ember (used by small test guests).
    pub irqchip: bool,
    /// riscv64: the interrupt controller (`--irqchip`): the PLIC, or KVM's
    /// in-kernel AIA where the host has it.
    pub riscv_irqchip: crate::arch::riscv64::irqchip::IrqchipChoice,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskSpec>,
    /// virtio-net interfaces on TAP devices.
    pub nets: Vec<NetSpec>,
    /// A virtio-rng device.
    pub rng: bool,
    /// Where the guest console is.
    pub console: ConsoleKind,
    /// Where to serve the control API (docs/api.md), if anywhere. Only
    /// carried here; the socket server reads it.
    pub api_socket: Option<PathBuf>,
    /// When the software CPU compiles guest code to host code
    /// (`--tcg-jit`).
    pub tcg_jit: JitPolicy,
    /// How the VMM process confines itself (docs/security.md).
    pub confinement: Confinement,
}

/// How the VMM confines itself once the VM is built: a property of the
/// host side, so a restore takes it from the command line, not the
/// snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// Per-thread system call filters (`--seccomp`, `vmm/seccomp.rs`).
    pub seccomp: SeccompMode,
    /// Confine the filesystem with Landlock (`--landlock`,
    /// `vmm/landlock_rules.rs`).
    pub landlock: bool,
    /// Where snapshots may be written when Landlock confines the VM
    /// (`--snapshot-dir`); empty: the working and temporary directories.
    pub snapshot_dirs: Vec<PathBuf>,
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement {
            seccomp: SeccompMode::default(),
            landlock: true,
            snapshot_dirs: Vec::new(),
        }
    }
}

/// `--disk path=FILE[,readonly=on][,id=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub readonly: bool,
    /// The serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20
    /// bytes).
    pub id: Option<String>,
}

/// `--net tap=NAME[,mac=MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

impl VmConfig {
    /// Picks the random MAC of every interface that has none, once, when
    /// the VM is built: `info` then shows the address the guest sees, and
    /// a snapshot saves it, so a restored guest keeps its address.
    pub fn with_macs_picked(mut self) -> VmConfig {
        for net in &mut self.nets {
            net.mac
                .get_or_insert_with(crate::devices::virtio::net::random_mac);
        }
        self
    }
}

/// `--console serial|virtio`: the 16550 UART (ttyS0) or virtio-console
/// (hvc0). With `virtio` the UART stays present (earlycon and early boot
/// messages use it) but console input goes to hvc0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsoleKind {
    #[default]
    Serial,
    Virtio,
}

impl std::str::FromStr for ConsoleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "serial" => Ok(ConsoleKind::Serial),
            "virtio" => Ok(ConsoleKind::Virtio),
            _ => Err(format!("'{s}' is not a console (use serial or virtio)")),
        }
    }
}

/// Splits `key=value,key=value` into pairs, refusing empty keys, missing
/// `=` and repeated keys.
fn key_values<'a>(what: &str, text: &'a str) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in text.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("{what}: '{part}' is not key=value"));
        };
        if k.is_empty() {
            return Err(format!("{what}: empty key in '{part}'"));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("{what}: '{k}' is given twice"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// The words a switch accepts, on the command line and in a config file.
pub fn parse_on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

fn on_off(what: &str, key: &str, v: &str) -> Result<bool, String> {
    parse_on_off(v).ok_or_else(|| format!("{what}: {key}='{v}' must be on or off"))
}

/// Checks a disk serial: the guest reads it with VIRTIO_BLK_T_GET_ID into
/// a 20-byte field.
pub fn check_disk_id(v: &str) -> Result<(), String> {
    if v.len() <= 20 && v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!(
            "id '{v}' must be at most 20 printable ASCII characters"
        ))
    }
}

/// Checks a TAP interface name: IFNAMSIZ is 16 including the terminating
/// NUL, and the name becomes a path component under /sys.
pub fn check_tap_name(v: &str) -> Result<(), String> {
    if !v.is_empty() && v.len() < 16 && !v.contains('/') {
        Ok(())
    } else {
        Err(format!(
            "'{v}' is not an interface name (1 to 15 characters)"
        ))
    }
}

/// Parses an I/O port: decimal or `0x` hex.
pub fn parse_port(text: &str) -> Result<u16, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a port number (0..=65535, decimal or 0x hex)"))
}

impl std::str::FromStr for DiskSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut spec = DiskSpec {
            path: PathBuf::new(),
            readonly: false,
            id: None,
        };
        let mut have_path = false;
        for (k, v) in key_values("--disk", text)? {
            match k {
                "path" if !v.is_empty() => {
                    spec.path = PathBuf::from(v);
                    have_path = true;
                }
                "path" => return Err("--disk: path is empty".into()),
                "readonly" => spec.readonly = on_off("--disk", k, v)?,
                "id" => {
                    check_disk_id(v).map_err(|e| format!("--disk: {e}"))?;
                    spec.id = Some(v.to_string())
                }
                _ => {
                    return Err(format!(
                        "--disk: unknown key '{k}' (use path, readonly, id)"
                    ))
                }
            }
        }
        if !have_path {
            return Err("--disk needs path=FILE".into());
        }
        Ok(spec)
    }
}

impl std::str::FromStr for NetSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut mac = None;
        for (k, v) in key_values("--net", text)? {
            match k {
                "tap" => {
                    check_tap_name(v).map_err(|e| format!("--net: {e}"))?;
                    tap = Some(v.to_string())
                }
                "mac" => {
                    mac = Some(
                        crate::devices::virtio::net::parse_mac(v)
                            .map_err(|e| format!("--net: {e}"))?,
                    )
                }
                _ => return Err(format!("--net: unknown key '{k}' (use tap, mac)")),
            }
        }
        let tap = tap.ok_or("--net needs tap=NAME")?;
        Ok(NetSpec { tap, mac })
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            arch: GuestArch::host(),
            kernel: None,
            initrd: None,
            // The default arch's command line (riscv64 on riscv64 hosts).
            cmdline: match GuestArch::host() {
                GuestArch::X86_64 => DEFAULT_CMDLINE,
                GuestArch::Riscv64 => DEFAULT_CMDLINE_RISCV64,
            }
            .to_string(),
            memory: 512 << 20,
            cpus: 1,
            firmware: None,
            debug_exit: None,
            accel: AccelChoice::Auto,
            kvm_path: PathBuf::from(crate::accel::kvm::KVM_PATH),
            console_input: ConsoleInput::Stdin,
            console_output: ConsoleOutput::Stdout,
            irqchip: true,
            riscv_irqchip: Default::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            rng: false,
            console: ConsoleKind::Serial,
            api_socket: None,
            tcg_jit: JitPolicy::default(),
            confinement: Confinement::default(),
        }
    }
}

/// Parses a memory size: bytes, or with a K, M, G or T suffix (binary
/// units, as QEMU and Firecracker read them).
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let bad = || format!("'{text}' is not a memory size (use e.g. 512M, 2G or a byte count)");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("memory size '{text}' is too large"))
}

/// Parses a vCPU count, with the same words whatever is wrong with it.
pub fn parse_cpus(text: &str) -> Result<u8, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if (1..=u64::from(MAX_CPUS)).contains(&n) => Ok(n as u8),
        _ => Err(format!("must be between 1 and {MAX_CPUS}, not {text}")),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn missing_macs_are_picked_once_and_given_ones_kept() {
        let given = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let config = VmConfig {
            nets: vec![
                NetSpec {
                    tap: "a".into(),
                    mac: None,
                },
                NetSpec {
                    tap: "b".into(),
                    mac: Some(given),
                },
            ],
            ..VmConfig::default()
        }
        .with_macs_picked();
        let picked = config.nets[0].mac.expect("a MAC was picked");
        // Locally administered, unicast.
        assert_eq!(picked[0] & 0b11, 0b10, "{picked:02x?}");
        assert_eq!(config.nets[1].mac, Some(given));
        // Picking again changes nothing.
        let again = config.clone().with_macs_picked();
        assert_eq!(again.nets, config.nets);
    }
    use super::*;

    #[test]
    fn cpu_counts_are_refused_with_one_message() {
        assert_eq!(parse_cpus("2"), Ok(2));
        for bad in ["0", "255", "300", "-1", "x"] {
            let e = parse_cpus(bad).expect_err(bad);
            assert_eq!(e, format!("must be between 1 and {MAX_CPUS}, not {bad}"));
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("512M"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2g"), Ok(2 << 30));
        assert_eq!(parse_memory_size("4096"), Ok(4096));
        assert!(parse_memory_size("12MB").is_err());
        assert!(parse_memory_size("-1M").is_err());
        assert!(parse_memory_size("").is_err());
        assert!(parse_memory_size("99999999999T").is_err());
    }

    #[test]
    fn disk_specs() {
        let d: DiskSpec = "path=/tmp/a.img,readonly=on,id=root".parse().unwrap();
        assert_eq!(
            d,
            DiskSpec {
                path: "/tmp/a.img".into(),
                readonly: true,
                id: Some("root".into())
            }
        );
        let d: DiskSpec = "path=x.img".parse().unwrap();
        assert!(!d.readonly && d.id.is_none());
        for bad in [
            "",
            "x.img",
            "readonly=on",
            "path=",
            "path=a,path=b",
            "path=a,readonly=maybe",
            "path=a,id=123456789012345678901",
            "path=a,id=has space",
            "path=a,cache=none",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn net_specs_and_macs() {
        let n: NetSpec = "tap=tap0,mac=52:54:00:12:34:56".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        for bad in [
            "",
            "mac=52:54:00:12:34:56",
            "tap=",
            "tap=0123456789abcdef",
            "tap=a,mac=01:00:00:00:00:00",
            "tap=a,mac=52:54:00:12:34",
            "tap=a,mac=52:54:00:12:34:56:78",
            "tap=a,mac=5:54:00:12:34:56",
            "tap=a,speed=10",
        ] {
            assert!(bad.parse::<NetSpec>().is_err(), "{bad}");
        }
    }
}
