//! Snapshots of a paused riscv64 VM on the software CPU, and the format
//! they are stored in.
//!
//! A snapshot is a directory of three files:
//!
//! * `state.json`: [`SnapshotState`]: the format name and version, the VM
//!   configuration (memory, harts, command line, the kernel and initrd
//!   paths for information, disks, nets, rng, console), `time` at the
//!   snapshot, every hart's architectural state and SBI HSM state (a
//!   pending timer is saved relative to that `time`), the PLIC, the UART,
//!   and each virtio transport's registers with its device's queue
//!   positions and device-specific state.
//! * `memory.bin`: guest RAM, byte for byte, as a sparse file: only pages
//!   holding a non-zero byte are written, zero pages are left as holes.
//!   "Non-zero" stands in for "ever written by the guest": a page the
//!   guest wrote zeros to reads the same as one it never touched, and the
//!   check needs no dirty tracking.
//! * `manifest.json`: [`Manifest`]: format name, version and architecture
//!   again, and the size and CRC-32 of the two other files. It is written
//!   last (and removed first when a snapshot is overwritten), so a
//!   directory with a manifest holds a complete snapshot.
//!
//! Restoring checks the manifest (a foreign file, another version or
//! architecture is refused), the size and checksum of `state.json` before
//! parsing it, the size of `memory.bin` against the manifest and the saved
//! memory size, and the checksum of `memory.bin` while loading it.
//!
//! Writing: the directory is created mode 0700 if missing; a directory
//! that already holds anything is refused unless the caller asks for it
//! ([`SnapshotOptions::force`]: `"force": true` in the API, `ember ctl
//! snapshot --force`), so a mistyped path cannot overwrite someone's
//! files. Each file is created afresh, mode 0600 (guest memory is as
//! private as the guest), with `O_EXCL | O_NOFOLLOW` after removing any old
//! file of that name: a symlink planted in the directory is replaced, never
//! written through. Before the snapshot is reported done every writable
//! disk image is flushed with `fdatasync(2)`, so the writes the guest was
//! told were complete are on stable storage with the snapshot that assumes
//! them. Disk image paths are stored absolute, so a snapshot taken of a VM
//! started with a relative `--disk` restores from any directory.
//!
//! Reading: every file must be a regular file (a symlink to one is
//! followed) and is size-checked before it is read
//! ([`crate::vmm::host_file`]): the manifest is at most
//! [`MANIFEST_MAX_SIZE`] bytes, `state.json` at most [`STATE_MAX_SIZE`].
//!
//! Not saved: the LR/SC reservation (an SC after restore fails and the
//! guest retries), translated code and TLBs (rebuilt), host-side device
//! state that a guest cannot rely on (a frame read from the TAP but not yet
//! delivered is dropped, as a network may drop it). Disk contents are not
//! part of the snapshot: the disk files must still be there, unchanged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accel::tcg::riscv64::system::HsmState;
use crate::accel::tcg::riscv64::{HartState, RiscvSystem};
use crate::devices::plic::{Plic, PlicState};
use crate::devices::serial::{Serial, SerialSnapshot};
use crate::devices::virtio::mmio::{TransportState, VirtioMmio};
use crate::memory::RamBlock;
use crate::vmm::config::{ConsoleKind, DiskSpec, NetSpec, VmConfig};
use crate::vmm::host_file::{self, Symlinks};
use crate::vmm::virtio::PlacedDevice;

/// The format name in the manifest and the state file.
pub const FORMAT: &str = "ember-snapshot";
/// The only version this build reads and writes.
pub const VERSION: u32 = 1;
/// The architecture of riscv64 snapshots (this module's [`SnapshotState`]).
pub const ARCH: &str = "riscv64";
/// The architecture of x86_64 KVM snapshots (`crate::vmm::snapshot_x86`).
pub const ARCH_X86_64: &str = "x86_64";
/// Every architecture this build restores.
pub const KNOWN_ARCHES: &[&str] = &[ARCH, ARCH_X86_64];
pub const MANIFEST_FILE: &str = "manifest.json";
pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory.bin";

/// The largest `manifest.json` read: it holds a few short fields.
pub const MANIFEST_MAX_SIZE: u64 = 64 << 10;
/// The largest `state.json` read: registers and device state of at most
/// 255 CPUs come to a few MiB at most (an x86 vCPU with XSAVE and MSRs is
/// some tens of KiB as JSON).
pub const STATE_MAX_SIZE: u64 = 64 << 20;

/// The unit of sparseness of `memory.bin`: the host page size on the
/// hosts Ember runs on, and the size of a guest base page.
pub const PAGE_SIZE: usize = 4096;
/// Memory is copied in chunks of this many bytes.
const CHUNK: usize = 1 << 20;
/// How long a snapshot waits for a started hart to park (a hart started
/// by HSM just as the VM paused parks moments later).
const PARK_WAIT: Duration = Duration::from_secs(2);

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an Ember snapshot manifest: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    #[error("not an Ember snapshot: the format is '{found}', expected '{FORMAT}'")]
    Foreign { found: String },
    #[error(
        "snapshot format version {found} is not supported (this Ember reads version {VERSION})"
    )]
    Version { found: u32 },
    #[error("the snapshot is of a {found} VM; this restore needs a {expected} snapshot")]
    Arch {
        found: String,
        expected: &'static str,
    },
    #[error("{file} is {found} bytes, the manifest says {expected}: truncated or replaced")]
    Size {
        file: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("{file} checksum mismatch (CRC-32 {found:#010x}, manifest says {expected:#010x}): the snapshot is corrupted")]
    Checksum {
        file: &'static str,
        expected: u32,
        found: u32,
    },
    #[error("{file} does not parse: {reason}")]
    BadState { file: &'static str, reason: String },
    #[error("the saved state is inconsistent: {0}")]
    Inconsistent(String),
    #[error("hart {0} is started but did not park in the pause gate")]
    HartNotParked(usize),
    #[error("{name}: {reason}")]
    Device { name: String, reason: String },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("{path} is not empty; choose an empty or new directory, or force overwriting (API \"force\": true, ember ctl snapshot --force)", path = path.display())]
    DirectoryNotEmpty { path: PathBuf },
    #[error("{0}")]
    Unsupported(String),
}

/// How a snapshot is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Write into a directory that already holds files, replacing an
    /// earlier snapshot there (other files are left alone). Without it a
    /// non-empty directory is refused.
    pub force: bool,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { what, path, source }
}

/// Size and checksum of one file of the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub size: u64,
    pub crc32: u32,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub arch: String,
    pub state: FileSum,
    pub memory: FileSum,
}

/// The machine configuration a snapshot was taken of; a restore builds
/// the same machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    pub memory: u64,
    pub cpus: u8,
    pub cmdline: String,
    /// For information: the kernel is not loaded again.
    pub kernel: Option<PathBuf>,
    /// For information: the initrd is not loaded again.
    pub initrd: Option<PathBuf>,
    pub disks: Vec<SavedDisk>,
    pub nets: Vec<SavedNet>,
    pub rng: bool,
    /// "serial" or "virtio".
    pub console: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDisk {
    pub path: PathBuf,
    pub readonly: bool,
    pub id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNet {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

/// `path` made absolute against the current directory (symlinks are not
/// resolved: the path names what the user named), so that a snapshot
/// restores from any directory; unchanged if the current directory is
/// gone.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

impl SavedConfig {
    /// What to save of `config`; file paths are made absolute.
    pub fn of(config: &VmConfig) -> SavedConfig {
        SavedConfig {
            memory: config.memory,
            cpus: config.cpus,
            cmdline: config.cmdline.clone(),
            kernel: config.kernel.as_deref().map(absolute),
            initrd: config.initrd.as_deref().map(absolute),
            disks: config
                .disks
                .iter()
                .map(|d| SavedDisk {
                    path: absolute(&d.path),
                    readonly: d.readonly,
                    id: d.id.clone(),
                })
                .collect(),
            nets: config
                .nets
                .iter()
                .map(|n| SavedNet {
                    tap: n.tap.clone(),
                    mac: n.mac,
                })
                .collect(),
            rng: config.rng,
            console: match config.console {
                ConsoleKind::Serial => "serial".into(),
                ConsoleKind::Virtio => "virtio".into(),
            },
        }
    }

    /// The saved configuration with disks and nets given at restore put in
    /// place of the saved ones: a disk with an `id` replaces the saved disk
    /// of that id, one without replaces the saved disk at its position
    /// among the given disks; nets replace by position. Only where the
    /// backing lives can change: the device the guest sees must stay the
    /// same, so a different `readonly` or `mac`, an unknown id or more
    /// disks or nets than were saved are refused.
    pub fn with_overrides(
        &self,
        disks: &[DiskSpec],
        nets: &[NetSpec],
    ) -> Result<SavedConfig, SnapshotError> {
        let mut out = self.clone();
        for (i, d) in disks.iter().enumerate() {
            let index = match &d.id {
                Some(id) => out
                    .disks
                    .iter()
                    .position(|s| s.id.as_deref() == Some(id.as_str()))
                    .ok_or_else(|| {
                        SnapshotError::Inconsistent(format!(
                            "--disk id={id}: the snapshot has no disk with that id"
                        ))
                    })?,
                None => i,
            };
            let saved = out.disks.get_mut(index).ok_or_else(|| {
                SnapshotError::Inconsistent(format!(
                    "--disk {}: the snapshot has only {} disk(s)",
                    d.path.display(),
                    self.disks.len()
                ))
            })?;
            if saved.readonly != d.readonly {
                return Err(SnapshotError::Inconsistent(format!(
                    "--disk {}: the saved disk {} was {}; readonly cannot change at restore",
                    d.path.display(),
                    index,
                    if saved.readonly {
                        "read-only"
                    } else {
                        "read-write"
                    }
                )));
            }
            saved.path = absolute(&d.path);
        }
        for (i, n) in nets.iter().enumerate() {
            let saved = out.nets.get_mut(i).ok_or_else(|| {
                SnapshotError::Inconsistent(format!(
                    "--net tap={}: the snapshot has only {} net(s)",
                    n.tap,
                    self.nets.len()
                ))
            })?;
            if n.mac.is_some() && n.mac != saved.mac {
                return Err(SnapshotError::Inconsistent(format!(
                    "--net tap={}: the MAC address cannot change at restore",
                    n.tap
                )));
            }
            saved.tap = n.tap.clone();
        }
        Ok(out)
    }

    /// The configuration to build the restored machine from; the
    /// architecture and host-side settings (console input and output, ...)
    /// come from `base`.
    pub fn apply(&self, base: VmConfig) -> Result<VmConfig, SnapshotError> {
        let console = self
            .console
            .parse::<ConsoleKind>()
            .map_err(SnapshotError::Inconsistent)?;
        Ok(VmConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            memory: self.memory,
            cpus: self.cpus,
            firmware: None,
            disks: self
                .disks
                .iter()
                .map(|d| DiskSpec {
                    path: d.path.clone(),
                    readonly: d.readonly,
                    id: d.id.clone(),
                })
                .collect(),
            nets: self
                .nets
                .iter()
                .map(|n| NetSpec {
                    tap: n.tap.clone(),
                    mac: n.mac,
                })
                .collect(),
            rng: self.rng,
            console,
            ..base
        })
    }
}

/// SBI HSM state of a hart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SavedHsm {
    Started,
    Stopped,
    StartPending { addr: u64, opaque: u64 },
}

impl From<HsmState> for SavedHsm {
    fn from(s: HsmState) -> Self {
        match s {
            HsmState::Started => SavedHsm::Started,
            HsmState::Stopped => SavedHsm::Stopped,
            HsmState::StartPending { addr, opaque } => SavedHsm::StartPending { addr, opaque },
        }
    }
}

impl From<SavedHsm> for HsmState {
    fn from(s: SavedHsm) -> Self {
        match s {
            SavedHsm::Started => HsmState::Started,
            SavedHsm::Stopped => HsmState::Stopped,
            SavedHsm::StartPending { addr, opaque } => HsmState::StartPending { addr, opaque },
        }
    }
}

/// One hart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHart {
    pub hsm: SavedHsm,
    /// The architectural state of a started hart (a stopped one gets its
    /// state from HSM `hart_start`). Its `timer_deadline` is always `None`
    /// here: see `timer_in`.
    pub state: Option<HartState>,
    /// The SBI timer deadline in ticks after the snapshot's `time`
    /// (negative: already due); `None` when disarmed.
    pub timer_in: Option<i64>,
}

/// One virtio transport and its device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedDevice {
    /// `block vda`, `net tap0`, ...: checked against the rebuilt machine.
    pub name: String,
    pub transport: TransportState,
}

/// The state of every virtio transport of a paused VM (both machines).
pub fn save_devices(devices: &[(String, VirtioMmio)]) -> Result<Vec<SavedDevice>, SnapshotError> {
    devices
        .iter()
        .map(|(name, t)| {
            Ok(SavedDevice {
                name: name.clone(),
                transport: t.save_state().map_err(|e| SnapshotError::Device {
                    name: name.clone(),
                    reason: e.to_string(),
                })?,
            })
        })
        .collect()
}

/// Puts saved transport state back into the rebuilt machine's devices,
/// which must be the same devices in the same order (both machines).
pub fn restore_devices(
    placed: &[PlacedDevice],
    saved: &[SavedDevice],
) -> Result<(), SnapshotError> {
    if placed.len() != saved.len() {
        return Err(SnapshotError::Inconsistent(format!(
            "{} virtio devices saved, {} rebuilt",
            saved.len(),
            placed.len()
        )));
    }
    for (placed, saved) in placed.iter().zip(saved) {
        if placed.name != saved.name {
            return Err(SnapshotError::Inconsistent(format!(
                "device '{}' saved where '{}' was rebuilt",
                saved.name, placed.name
            )));
        }
        placed
            .transport
            .restore_state(&saved.transport)
            .map_err(|e| SnapshotError::Device {
                name: saved.name.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// Puts the UART's saved registers back (both machines).
pub fn restore_uart(serial: &Serial, saved: &SerialSnapshot) -> Result<(), SnapshotError> {
    serial
        .restore_state(saved)
        .map_err(|e| SnapshotError::Device {
            name: "uart".into(),
            reason: e.to_string(),
        })
}

/// The fields every `state.json` starts with.
#[derive(Deserialize)]
struct StateHeader {
    format: String,
    version: u32,
    arch: String,
}

/// The accelerator a snapshot's `state.json` says it was taken on
/// (`Some("kvm")` for riscv64 KVM snapshots; `None` when it does not say,
/// as software-CPU and x86_64 snapshots do not, or when the file cannot be
/// read or parsed: opening the snapshot then reports that with all its
/// checks).
pub fn saved_accel(dir: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct AccelHeader {
        #[serde(default)]
        accel: Option<String>,
    }
    let bytes =
        host_file::read_regular(&dir.join(STATE_FILE), STATE_MAX_SIZE, Symlinks::Follow).ok()?;
    serde_json::from_slice::<AccelHeader>(&bytes).ok()?.accel
}

/// Parses `state.json` of an `arch` snapshot after checking that it says
/// this format, version and architecture.
pub fn parse_state<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    arch: &'static str,
) -> Result<T, SnapshotError> {
    let bad = |e: serde_json::Error| SnapshotError::BadState {
        file: STATE_FILE,
        reason: e.to_string(),
    };
    let h: StateHeader = serde_json::from_slice(bytes).map_err(bad)?;
    if h.format != FORMAT || h.version != VERSION || h.arch != arch {
        return Err(SnapshotError::Inconsistent(format!(
            "{STATE_FILE} says {} version {} for {}, the manifest {FORMAT} version {VERSION} for {arch}",
            h.format, h.version, h.arch
        )));
    }
    serde_json::from_slice(bytes).map_err(bad)
}

/// `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub format: String,
    pub version: u32,
    pub arch: String,
    pub config: SavedConfig,
    /// The `time` CSR at the snapshot; a restored VM continues from it.
    pub time: u64,
    /// Ticks of `time` per second.
    pub timebase: u64,
    pub harts: Vec<SavedHart>,
    pub plic: PlicState,
    pub uart: SerialSnapshot,
    pub devices: Vec<SavedDevice>,
}

impl SnapshotState {
    /// The saved state of hart `id` as the hart takes it: the timer
    /// deadline made absolute again against `time`.
    pub fn hart_state(&self, id: usize) -> Option<HartState> {
        let saved = self.harts.get(id)?;
        let mut state = saved.state.clone()?;
        state.timer_deadline = saved.timer_in.map(|d| {
            if d >= 0 {
                self.time.saturating_add(d as u64)
            } else {
                self.time.saturating_sub(d.unsigned_abs())
            }
        });
        Some(state)
    }
}

/// What a snapshot is taken from: the parts of a live, paused VM.
pub struct SnapshotSource<'a> {
    pub config: &'a VmConfig,
    pub system: &'a RiscvSystem,
    pub plic: &'a Plic,
    pub serial: &'a Serial,
    pub devices: &'a [(String, VirtioMmio)],
    pub ram: &'a RamBlock,
}

/// How a snapshot went, for reports.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotStats {
    pub elapsed: Duration,
    /// Pages written to `memory.bin` (the rest are holes).
    pub data_pages: u64,
    pub memory_size: u64,
    /// Disk images flushed to stable storage before the snapshot was
    /// reported done (every writable one).
    pub disks_synced: usize,
}

/// Collects the state of a paused VM (harts parked, devices paused).
pub fn capture(src: &SnapshotSource<'_>) -> Result<SnapshotState, SnapshotError> {
    let time = src.system.now_ticks();
    let epoch = src.system.pause.epoch();
    let mut harts = Vec::new();
    for (id, shared) in src.system.harts.iter().enumerate() {
        let hsm = shared.hsm();
        let state = if hsm == HsmState::Started {
            // Bounded polling: a hart that was started by HSM while the
            // pause began publishes its state when it parks, moments later.
            let deadline = Instant::now() + PARK_WAIT;
            loop {
                if let Some(s) = shared.parked_state(epoch) {
                    break Some(s);
                }
                if Instant::now() >= deadline {
                    return Err(SnapshotError::HartNotParked(id));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            None
        };
        let timer_in = state.as_ref().and_then(|s| s.timer_deadline).map(|d| {
            let delta = i128::from(d) - i128::from(time);
            delta.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
        });
        harts.push(SavedHart {
            hsm: hsm.into(),
            state: state.map(|mut s| {
                s.timer_deadline = None;
                s
            }),
            timer_in,
        });
    }
    let devices = save_devices(src.devices)?;
    Ok(SnapshotState {
        format: FORMAT.into(),
        version: VERSION,
        arch: ARCH.into(),
        config: SavedConfig::of(src.config),
        time,
        timebase: src.system.timebase,
        harts,
        plic: src.plic.state(),
        uart: src.serial.state(),
        devices,
    })
}

/// Takes a snapshot of a paused VM into `dir` (created if missing; see
/// [`SnapshotOptions`] for one that is not empty).
pub fn save(
    dir: &Path,
    options: &SnapshotOptions,
    src: &SnapshotSource<'_>,
) -> Result<SnapshotStats, SnapshotError> {
    save_with(dir, options, src.config, ARCH, src.ram, || capture(src))
}

/// Writes a snapshot of any machine: prepares `dir`, takes the state with
/// `capture` (the VM is paused), syncs the disks, then writes `state.json`,
/// `memory.bin` from `ram` and the manifest for `arch`.
pub fn save_with<T: Serialize>(
    dir: &Path,
    options: &SnapshotOptions,
    config: &VmConfig,
    arch: &'static str,
    ram: &RamBlock,
    capture: impl FnOnce() -> Result<T, SnapshotError>,
) -> Result<SnapshotStats, SnapshotError> {
    let started = Instant::now();
    prepare_dir(dir, options)?;
    let state = capture()?;
    let disks_synced = sync_disks(config)?;
    let mut stats = save_state(dir, arch, &state, ram, started)?;
    stats.disks_synced = disks_synced;
    Ok(stats)
}

/// Creates `dir` (mode 0700) if missing, or checks that it may be written
/// into: empty, or `options.force`.
pub fn prepare_dir(dir: &Path, options: &SnapshotOptions) -> Result<(), SnapshotError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create snapshot directory", dir))?;
    if options.force {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(io("list snapshot directory", dir))?;
    if entries.next().is_some() {
        return Err(SnapshotError::DirectoryNotEmpty {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Flushes every writable disk image of `config` to stable storage
/// (`fdatasync(2)` on a fresh descriptor flushes the file's dirty pages,
/// whoever wrote them); returns how many were flushed. Called with the VM
/// paused, so no device writes meanwhile.
pub fn sync_disks(config: &VmConfig) -> Result<usize, SnapshotError> {
    let mut synced = 0;
    for disk in config.disks.iter().filter(|d| !d.readonly) {
        // O_NONBLOCK: opening never waits, whatever the path names now.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&disk.path)
            .map_err(io("open disk image to flush", &disk.path))?;
        file.sync_data()
            .map_err(io("flush disk image", &disk.path))?;
        synced += 1;
    }
    Ok(synced)
}

/// Writes a captured `state` of an `arch` VM and its `ram` into `dir`
/// (both machines); `started` is when the snapshot began.
pub fn save_state<T: Serialize>(
    dir: &Path,
    arch: &'static str,
    state: &T,
    ram: &RamBlock,
    started: Instant,
) -> Result<SnapshotStats, SnapshotError> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| SnapshotError::BadState {
        file: STATE_FILE,
        reason: e.to_string(),
    })?;
    let data_pages = write_files(dir, arch, &json, ram)?;
    Ok(SnapshotStats {
        elapsed: started.elapsed(),
        data_pages,
        memory_size: ram.size(),
        disks_synced: 0,
    })
}

/// Writes the three files of an `arch` snapshot; returns how many memory
/// pages hold data. The manifest goes first out and last in, so an
/// interrupted write never leaves a directory that passes for a snapshot.
pub fn write_files(
    dir: &Path,
    arch: &str,
    state_json: &[u8],
    ram: &RamBlock,
) -> Result<u64, SnapshotError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    match std::fs::remove_file(&manifest_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove old manifest", &manifest_path)(e)),
    }
    let (memory, data_pages) = write_sparse_memory(&dir.join(MEMORY_FILE), ram)?;
    let state_path = dir.join(STATE_FILE);
    write_synced(&state_path, state_json)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        arch: arch.into(),
        state: FileSum {
            size: state_json.len() as u64,
            crc32: crc32fast::hash(state_json),
        },
        memory,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::BadState {
        file: MANIFEST_FILE,
        reason: e.to_string(),
    })?;
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    write_synced(&tmp, &text)?;
    std::fs::rename(&tmp, &manifest_path).map_err(io("write", &manifest_path))?;
    // The renames and new files reach the disk with the directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(data_pages)
}

/// Creates the snapshot file `path` afresh: any old file (or symlink, or
/// anything else) of that name is removed first, then the file is created
/// with `O_EXCL | O_NOFOLLOW` and mode 0600, so nothing planted at the path
/// is followed or written through and stale contents cannot survive.
pub fn create_private(path: &Path) -> Result<File, SnapshotError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("replace", path)(e)),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io("create", path))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut f = create_private(path)?;
    f.write_all(bytes).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

/// Whether a page is all zero bytes. An OR fold has no early exit, which
/// lets the compiler vectorise it; zero pages are read whole anyway.
fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Writes `ram` to `path` as a sparse file: non-zero pages at their
/// offsets, zero pages skipped (holes), the length set to the RAM size.
/// Returns the file's size and CRC-32 (of all its bytes, holes reading as
/// zeros) and the number of pages written.
pub fn write_sparse_memory(path: &Path, ram: &RamBlock) -> Result<(FileSum, u64), SnapshotError> {
    // A fresh file: stale data from an older snapshot must not survive in
    // what are holes now.
    let file = create_private(path)?;
    let size = ram.size();
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut data_pages = 0u64;
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(CHUNK as u64) as usize;
        let chunk = &mut buf[..len];
        ram.read(offset, chunk)
            .map_err(|e| SnapshotError::Memory(e.to_string()))?;
        crc.update(chunk);
        // Runs of non-zero pages go out in one write each.
        let mut run: Option<usize> = None;
        for (i, page) in chunk.chunks(PAGE_SIZE).enumerate() {
            let start = i * PAGE_SIZE;
            if is_zero(page) {
                if let Some(s) = run.take() {
                    file.write_all_at(&chunk[s..start], offset + s as u64)
                        .map_err(io("write", path))?;
                }
            } else {
                data_pages += 1;
                run.get_or_insert(start);
            }
        }
        if let Some(s) = run {
            file.write_all_at(&chunk[s..], offset + s as u64)
                .map_err(io("write", path))?;
        }
        offset += len as u64;
    }
    file.set_len(size).map_err(io("set the length of", path))?;
    file.sync_all().map_err(io("sync", path))?;
    Ok((
        FileSum {
            size,
            crc32: crc.finalize(),
        },
        data_pages,
    ))
}

/// Holes up to 2^ZERO_RUN_BITS bytes (256 TiB, far beyond any guest RAM)
/// are accounted for; a longer one could only give a checksum mismatch.
const ZERO_RUN_BITS: usize = 48;

/// The CRC-32 states of runs of 2^k zero bytes, k < [`ZERO_RUN_BITS`], to
/// account for a hole without reading it (crc32fast combines states in
/// O(log n)).
fn zero_runs() -> Vec<crc32fast::Hasher> {
    let mut runs = Vec::with_capacity(ZERO_RUN_BITS);
    let mut h = crc32fast::Hasher::new();
    h.update(&[0]);
    for _ in 0..ZERO_RUN_BITS {
        runs.push(h.clone());
        let copy = h.clone();
        h.combine(&copy);
    }
    runs
}

/// Adds `len` zero bytes to `crc`.
fn crc_zeros(crc: &mut crc32fast::Hasher, runs: &[crc32fast::Hasher], len: u64) {
    for (k, run) in runs.iter().enumerate() {
        if len & (1 << k) != 0 {
            crc.combine(run);
        }
    }
}

/// The next data offset at or after `pos` (`SEEK_DATA`), `size` when only
/// a hole follows, or `pos` when the file system cannot tell (then
/// everything is read).
fn next_data(file: &File, pos: u64, size: u64) -> u64 {
    match seek(file, pos, libc::SEEK_DATA) {
        Some(data) => data,
        None if seek_failed_for_eof() => size,
        None => pos,
    }
}

/// The end of the data at `pos` (`SEEK_HOLE`; the file's end counts as a
/// hole), or `size` when the file system cannot tell.
fn next_hole(file: &File, pos: u64, size: u64) -> u64 {
    seek(file, pos, libc::SEEK_HOLE).unwrap_or(size).min(size)
}

fn seek(file: &File, pos: u64, whence: libc::c_int) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let pos = libc::off_t::try_from(pos).ok()?;
    // SAFETY: lseek on a descriptor `file` owns; it only moves the file
    // offset, which this module does not otherwise use (reads are
    // positioned with pread).
    let r = unsafe { libc::lseek(file.as_raw_fd(), pos, whence) };
    u64::try_from(r).ok()
}

/// Whether the last failed `lseek` said "no data after this offset"
/// (ENXIO), as opposed to "not supported".
fn seek_failed_for_eof() -> bool {
    std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO)
}

/// Loads `path` into `ram` (which must be fresh, i.e. zero: zero pages are
/// not written, so they stay unbacked), checking its size and checksum
/// against `expected`. Holes are skipped with `SEEK_DATA`/`SEEK_HOLE`
/// rather than read as zeros (their part of the checksum is computed),
/// which makes a restore cost what the data costs. On a checksum error
/// `ram` holds the corrupted image; the caller discards the VM.
pub fn load_sparse_memory(
    path: &Path,
    ram: &RamBlock,
    expected: &FileSum,
) -> Result<(), SnapshotError> {
    let (file, size) =
        host_file::open_regular(path, u64::MAX, Symlinks::Follow).map_err(io("open", path))?;
    if size != expected.size {
        return Err(SnapshotError::Size {
            file: MEMORY_FILE,
            expected: expected.size,
            found: size,
        });
    }
    if ram.size() != size {
        return Err(SnapshotError::Inconsistent(format!(
            "{MEMORY_FILE} holds {size} bytes, the guest has {} bytes of RAM",
            ram.size()
        )));
    }
    let runs = zero_runs();
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < size {
        let data = next_data(&file, pos, size).clamp(pos, size);
        crc_zeros(&mut crc, &runs, data - pos);
        pos = data;
        if pos >= size {
            break;
        }
        let end = next_hole(&file, pos, size);
        // A file system that reports no hole here still ends the run.
        let end = if end <= pos { size } else { end };
        while pos < end {
            let len = (end - pos).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..len];
            file.read_exact_at(chunk, pos).map_err(io("read", path))?;
            crc.update(chunk);
            // Data extents need not be page-aligned in the file; pages are
            // counted from the start of RAM.
            let mut off = 0usize;
            while off < len {
                let page_end = ((pos + off as u64) / PAGE_SIZE as u64 + 1) * PAGE_SIZE as u64;
                let n = ((page_end - pos) as usize).min(len) - off;
                let piece = &chunk[off..off + n];
                if !is_zero(piece) {
                    ram.write(pos + off as u64, piece)
                        .map_err(|e| SnapshotError::Memory(e.to_string()))?;
                }
                off += n;
            }
            pos += len as u64;
        }
    }
    let found = crc.finalize();
    if found != expected.crc32 {
        return Err(SnapshotError::Checksum {
            file: MEMORY_FILE,
            expected: expected.crc32,
            found,
        });
    }
    Ok(())
}

/// Reads and checks the manifest of the snapshot in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, SnapshotError> {
    let path = dir.join(MANIFEST_FILE);
    let text = host_file::read_regular(&path, MANIFEST_MAX_SIZE, Symlinks::Follow)
        .map_err(io("read snapshot manifest", &path))?;
    parse_manifest(&text, &path)
}

/// Parses and checks the manifest `text` read from `path` (named in
/// errors).
pub fn parse_manifest(text: &[u8], path: &Path) -> Result<Manifest, SnapshotError> {
    let path = path.to_path_buf();
    // The format name is checked before the rest of the structure, so a
    // foreign JSON file is reported as foreign, not as malformed.
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| SnapshotError::BadManifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(SnapshotError::Foreign {
                found: other.to_string(),
            })
        }
        None => {
            return Err(SnapshotError::Foreign {
                found: "(none)".into(),
            })
        }
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(SnapshotError::Version {
                found: u32::try_from(v).unwrap_or(u32::MAX),
            })
        }
        None => {
            return Err(SnapshotError::BadManifest {
                path,
                reason: "no version".into(),
            })
        }
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| SnapshotError::BadManifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if !KNOWN_ARCHES.contains(&manifest.arch.as_str()) {
        return Err(SnapshotError::Arch {
            found: manifest.arch,
            expected: "riscv64 or x86_64",
        });
    }
    Ok(manifest)
}

/// Reads the manifest of `dir` and requires an `arch` snapshot.
pub fn read_manifest_of(dir: &Path, arch: &'static str) -> Result<Manifest, SnapshotError> {
    let manifest = read_manifest(dir)?;
    if manifest.arch != arch {
        return Err(SnapshotError::Arch {
            found: manifest.arch,
            expected: arch,
        });
    }
    Ok(manifest)
}

/// Reads `state.json` of `dir`, checking its size and checksum against
/// the manifest before anyone parses it, and checks the size of
/// `memory.bin` against `memory_size` (the RAM the state says the VM had)
/// and the manifest.
pub fn read_checked_state(
    dir: &Path,
    manifest: &Manifest,
    memory_size: impl FnOnce(&[u8]) -> Result<u64, SnapshotError>,
) -> Result<Vec<u8>, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let bytes = host_file::read_regular(&state_path, STATE_MAX_SIZE, Symlinks::Follow)
        .map_err(io("read", &state_path))?;
    if bytes.len() as u64 != manifest.state.size {
        return Err(SnapshotError::Size {
            file: STATE_FILE,
            expected: manifest.state.size,
            found: bytes.len() as u64,
        });
    }
    let crc = crc32fast::hash(&bytes);
    if crc != manifest.state.crc32 {
        return Err(SnapshotError::Checksum {
            file: STATE_FILE,
            expected: manifest.state.crc32,
            found: crc,
        });
    }
    let ram = memory_size(&bytes)?;
    if ram != manifest.memory.size {
        return Err(SnapshotError::Inconsistent(format!(
            "the VM had {ram} bytes of RAM, the manifest lists {} bytes of memory",
            manifest.memory.size
        )));
    }
    let memory_path = dir.join(MEMORY_FILE);
    let found = std::fs::metadata(&memory_path)
        .map_err(io("stat", &memory_path))?
        .len();
    if found != manifest.memory.size {
        return Err(SnapshotError::Size {
            file: MEMORY_FILE,
            expected: manifest.memory.size,
            found,
        });
    }
    Ok(bytes)
}

/// A snapshot whose manifest and state file passed their checks; memory
/// is checked while it is loaded ([`Loaded::load_memory`]). `T` is the
/// machine's `state.json`.
pub struct Loaded<T> {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub state: T,
}

/// A software-CPU riscv64 snapshot.
pub type LoadedSnapshot = Loaded<SnapshotState>;

impl<T: serde::de::DeserializeOwned> Loaded<T> {
    /// Reads `dir`: the manifest (an `arch` snapshot of this format and
    /// version), then `state.json` (size and checksum checked before
    /// parsing, then `check`, which returns the RAM size the state
    /// describes), then the size of `memory.bin`.
    pub fn open_with(
        dir: &Path,
        arch: &'static str,
        check: impl FnOnce(&T) -> Result<u64, SnapshotError>,
    ) -> Result<Loaded<T>, SnapshotError> {
        let manifest = read_manifest_of(dir, arch)?;
        let mut parsed = None;
        read_checked_state(dir, &manifest, |bytes| {
            let state: T = parse_state(bytes, arch)?;
            let memory = check(&state)?;
            parsed = Some(state);
            Ok(memory)
        })?;
        let state = parsed.ok_or_else(|| SnapshotError::Inconsistent("no state".into()))?;
        Ok(Loaded {
            dir: dir.to_path_buf(),
            manifest,
            state,
        })
    }

    /// Loads `memory.bin` into `ram` (fresh, zero), verifying its checksum.
    pub fn load_memory(&self, ram: &RamBlock) -> Result<(), SnapshotError> {
        load_sparse_memory(&self.dir.join(MEMORY_FILE), ram, &self.manifest.memory)
    }
}

impl LoadedSnapshot {
    /// Reads a software-CPU riscv64 snapshot in `dir`.
    pub fn open(dir: &Path) -> Result<LoadedSnapshot, SnapshotError> {
        Self::open_with(dir, ARCH, |state: &SnapshotState| {
            if state.harts.len() != usize::from(state.config.cpus) {
                return Err(SnapshotError::Inconsistent(format!(
                    "{} harts saved for a VM with {} CPUs",
                    state.harts.len(),
                    state.config.cpus
                )));
            }
            Ok(state.config.memory)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ember-snapshot-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// 16 MiB of RAM with data in three places: the first page, one byte
    /// in the middle of a chunk, and the last page.
    fn ram_with_data() -> RamBlock {
        let ram = RamBlock::anonymous(16 << 20).unwrap();
        ram.write(0, &[0xaa; PAGE_SIZE]).unwrap();
        ram.write((5 << 20) + 123, &[7]).unwrap();
        ram.write((16 << 20) - PAGE_SIZE as u64, &[0x55; PAGE_SIZE])
            .unwrap();
        ram
    }

    fn contents(ram: &RamBlock) -> Vec<u8> {
        let mut v = vec![0u8; ram.size() as usize];
        ram.read(0, &mut v).unwrap();
        v
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn snapshot_files_are_private_and_planted_symlinks_are_not_followed() {
        let dir = temp_dir("private");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let snap = dir.join("snap");
        std::fs::create_dir(&snap).unwrap();
        for f in [MEMORY_FILE, STATE_FILE, "manifest.json.tmp"] {
            std::os::unix::fs::symlink(&victim, snap.join(f)).unwrap();
        }
        let ram = ram_with_data();
        // The directory holds links: not empty.
        assert!(matches!(
            prepare_dir(&snap, &SnapshotOptions::default()),
            Err(SnapshotError::DirectoryNotEmpty { .. })
        ));
        prepare_dir(&snap, &SnapshotOptions { force: true }).unwrap();
        write_files(&snap, ARCH, b"{}", &ram).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        for f in [MEMORY_FILE, STATE_FILE, MANIFEST_FILE] {
            let path = snap.join(f);
            assert!(
                std::fs::symlink_metadata(&path)
                    .unwrap()
                    .file_type()
                    .is_file(),
                "{f}"
            );
            assert_eq!(mode(&path), 0o600, "{f}");
        }
        assert!(!snap.join("manifest.json.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_snapshot_directory_is_private_and_a_used_one_needs_force() {
        let dir = temp_dir("nonempty");
        let fresh = dir.join("a/b");
        prepare_dir(&fresh, &SnapshotOptions::default()).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        // Empty: fine again.
        prepare_dir(&fresh, &SnapshotOptions::default()).unwrap();
        std::fs::write(fresh.join("notes.txt"), b"mine").unwrap();
        let e = prepare_dir(&fresh, &SnapshotOptions::default()).unwrap_err();
        assert!(e.to_string().contains("is not empty"), "{e}");
        prepare_dir(&fresh, &SnapshotOptions { force: true }).unwrap();
        // A file where the directory should be.
        let file = dir.join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(prepare_dir(&file, &SnapshotOptions { force: true }).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writable_disks_are_flushed_and_a_missing_one_fails_the_snapshot() {
        let dir = temp_dir("sync");
        let rw = dir.join("rw.img");
        let ro = dir.join("ro.img");
        std::fs::write(&rw, [0u8; 512]).unwrap();
        std::fs::write(&ro, [0u8; 512]).unwrap();
        let disk = |path: &Path, readonly| DiskSpec {
            path: path.to_path_buf(),
            readonly,
            id: None,
        };
        let mut config = VmConfig {
            disks: vec![disk(&rw, false), disk(&ro, true)],
            ..VmConfig::default()
        };
        assert_eq!(sync_disks(&config).unwrap(), 1);
        config.disks.push(disk(&dir.join("gone.img"), false));
        let e = sync_disks(&config).unwrap_err();
        assert!(e.to_string().contains("gone.img"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn saved_disk(path: &str, readonly: bool, id: Option<&str>) -> SavedDisk {
        SavedDisk {
            path: path.into(),
            readonly,
            id: id.map(Into::into),
        }
    }

    #[test]
    fn saved_paths_are_absolute_and_overrides_replace_by_id_or_position() {
        let config = VmConfig {
            disks: vec![DiskSpec {
                path: "rel/disk.img".into(),
                readonly: false,
                id: None,
            }],
            kernel: Some("Image".into()),
            ..VmConfig::default()
        };
        let saved = SavedConfig::of(&config);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(saved.disks[0].path, cwd.join("rel/disk.img"));
        assert_eq!(saved.kernel, Some(cwd.join("Image")));

        let saved = SavedConfig {
            disks: vec![
                saved_disk("/a.img", false, Some("root")),
                saved_disk("/b.img", true, Some("data")),
            ],
            nets: vec![SavedNet {
                tap: "tap0".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
            }],
            ..saved
        };
        let spec = |path: &str, readonly, id: Option<&str>| DiskSpec {
            path: path.into(),
            readonly,
            id: id.map(Into::into),
        };
        // By id, whatever the position.
        let o = saved
            .with_overrides(&[spec("/new-b.img", true, Some("data"))], &[])
            .unwrap();
        assert_eq!(o.disks[0].path, PathBuf::from("/a.img"));
        assert_eq!(o.disks[1].path, PathBuf::from("/new-b.img"));
        // By position, relative made absolute.
        let o = saved
            .with_overrides(
                &[spec("x.img", false, None)],
                &[NetSpec {
                    tap: "tap9".into(),
                    mac: None,
                }],
            )
            .unwrap();
        assert_eq!(o.disks[0].path, cwd.join("x.img"));
        assert_eq!(o.disks[1], saved.disks[1]);
        assert_eq!(o.nets[0].tap, "tap9");
        assert_eq!(o.nets[0].mac, saved.nets[0].mac);
        // What the guest would see differently is refused.
        for bad in [
            saved.with_overrides(&[spec("/a", true, None)], &[]),
            saved.with_overrides(&[spec("/a", false, Some("nosuch"))], &[]),
            saved.with_overrides(
                &[
                    spec("/a", false, None),
                    spec("/b", true, None),
                    spec("/c", false, None),
                ],
                &[],
            ),
            saved.with_overrides(
                &[],
                &[NetSpec {
                    tap: "t".into(),
                    mac: Some([2, 0, 0, 0, 0, 2]),
                }],
            ),
        ] {
            assert!(
                matches!(bad, Err(SnapshotError::Inconsistent(_))),
                "{bad:?}"
            );
        }
        assert_eq!(saved.with_overrides(&[], &[]).unwrap(), saved);
    }

    #[test]
    fn a_state_or_manifest_that_is_a_device_is_refused_by_name() {
        let dir = temp_dir("devzero");
        let ram = ram_with_data();
        write_files(&dir, ARCH, b"{}", &ram).unwrap();
        let manifest = read_manifest(&dir).unwrap();
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join(STATE_FILE)).unwrap();
        let e = read_checked_state(&dir, &manifest, |_| Ok(ram.size())).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(dir.join(STATE_FILE).to_str().unwrap())
                && text.contains("character device"),
            "{text}"
        );
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join(MANIFEST_FILE)).unwrap();
        let e = read_manifest(&dir).unwrap_err().to_string();
        assert!(e.contains("character device"), "{e}");
        // An oversized manifest is not read.
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        std::fs::File::create(dir.join(MANIFEST_FILE))
            .unwrap()
            .set_len(MANIFEST_MAX_SIZE + 1)
            .unwrap();
        let e = read_manifest(&dir).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sparse_memory_file_has_holes_and_round_trips() {
        let dir = temp_dir("sparse");
        let ram = ram_with_data();
        let path = dir.join(MEMORY_FILE);
        let (sum, pages) = write_sparse_memory(&path, &ram).unwrap();
        assert_eq!(pages, 3);
        assert_eq!(sum.size, 16 << 20);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 16 << 20);
        // st_blocks counts 512-byte units actually allocated: three pages
        // of data (plus perhaps some file-system rounding), far below the
        // 32768 blocks of a dense 16 MiB file.
        assert!(
            meta.blocks() < 1024,
            "{} blocks allocated for 3 data pages",
            meta.blocks()
        );
        assert!(meta.blocks() >= 3 * 8, "the data pages must be allocated");
        assert_eq!(sum.crc32, crc32fast::hash(&std::fs::read(&path).unwrap()));

        let copy = RamBlock::anonymous(16 << 20).unwrap();
        load_sparse_memory(&path, &copy, &sum).unwrap();
        assert_eq!(contents(&copy), contents(&ram));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn zero_runs_match_hashing_zeros() {
        let runs = zero_runs();
        for len in [0u64, 1, 7, 4096, 4097, 3 << 20] {
            let mut a = crc32fast::Hasher::new();
            a.update(b"head");
            let mut b = a.clone();
            a.update(&vec![0u8; len as usize]);
            crc_zeros(&mut b, &runs, len);
            assert_eq!(a.finalize(), b.finalize(), "{len} zeros");
        }
    }

    #[test]
    fn a_dense_file_loads_too() {
        // A copy without holes (what `cp` without --sparse may make).
        let dir = temp_dir("dense");
        let ram = ram_with_data();
        let (sum, _) = write_sparse_memory(&dir.join(MEMORY_FILE), &ram).unwrap();
        let dense = dir.join("dense.bin");
        std::fs::write(&dense, contents(&ram)).unwrap();
        let copy = RamBlock::anonymous(16 << 20).unwrap();
        load_sparse_memory(&dense, &copy, &sum).unwrap();
        assert_eq!(contents(&copy), contents(&ram));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rewriting_a_sparse_file_leaves_no_stale_data() {
        let dir = temp_dir("rewrite");
        let path = dir.join(MEMORY_FILE);
        write_sparse_memory(&path, &ram_with_data()).unwrap();
        let empty = RamBlock::anonymous(16 << 20).unwrap();
        let (sum, pages) = write_sparse_memory(&path, &empty).unwrap();
        assert_eq!(pages, 0);
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
        assert_eq!(sum.crc32, crc32fast::hash(&vec![0u8; 16 << 20]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A snapshot directory with a placeholder state (the format checks do
    /// not need a real VM).
    fn write_snapshot(name: &str) -> PathBuf {
        let dir = temp_dir(name);
        write_files(&dir, ARCH, br#"{"placeholder": true}"#, &ram_with_data()).unwrap();
        dir
    }

    fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join(MANIFEST_FILE);
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[test]
    fn manifest_round_trips_and_lists_both_files() {
        let dir = write_snapshot("manifest");
        let m = read_manifest(&dir).unwrap();
        assert_eq!(
            (m.format.as_str(), m.version, m.arch.as_str()),
            (FORMAT, 1, "riscv64")
        );
        assert_eq!(m.memory.size, 16 << 20);
        let state = std::fs::read(dir.join(STATE_FILE)).unwrap();
        assert_eq!(m.state.size, state.len() as u64);
        assert_eq!(m.state.crc32, crc32fast::hash(&state));
        assert!(!dir.join(format!("{MANIFEST_FILE}.tmp")).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn foreign_version_and_arch_are_refused() {
        let dir = write_snapshot("foreign");
        edit_manifest(&dir, |v| v["format"] = "qemu-savevm".into());
        assert!(matches!(
            read_manifest(&dir),
            Err(SnapshotError::Foreign { found }) if found == "qemu-savevm"
        ));
        std::fs::write(dir.join(MANIFEST_FILE), b"not json").unwrap();
        assert!(matches!(
            read_manifest(&dir),
            Err(SnapshotError::BadManifest { .. })
        ));

        let dir = write_snapshot("version");
        edit_manifest(&dir, |v| v["version"] = 2.into());
        let err = read_manifest(&dir).unwrap_err();
        assert!(matches!(err, SnapshotError::Version { found: 2 }));
        assert!(err.to_string().contains("version 2 is not supported"));

        let dir = write_snapshot("arch");
        edit_manifest(&dir, |v| v["arch"] = "sparc64".into());
        assert!(matches!(
            read_manifest(&dir),
            Err(SnapshotError::Arch { found, .. }) if found == "sparc64"
        ));
        edit_manifest(&dir, |v| v["arch"] = "x86_64".into());
        let err = read_manifest_of(&dir, ARCH).unwrap_err();
        assert!(
            matches!(&err, SnapshotError::Arch { found, expected: "riscv64" } if found == "x86_64"),
            "{err}"
        );
        assert!(err.to_string().contains("x86_64 VM"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_snapshot_names_the_manifest() {
        let dir = temp_dir("missing");
        let err = LoadedSnapshot::open(&dir).err().unwrap();
        assert!(err.to_string().contains(MANIFEST_FILE), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupted_or_truncated_files_are_refused() {
        // A modified state file: same size, other checksum.
        let dir = write_snapshot("state-crc");
        let path = dir.join(STATE_FILE);
        let mut state = std::fs::read(&path).unwrap();
        state[2] ^= 0x20;
        std::fs::write(&path, &state).unwrap();
        assert!(matches!(
            LoadedSnapshot::open(&dir),
            Err(SnapshotError::Checksum {
                file: STATE_FILE,
                ..
            })
        ));
        std::fs::write(&path, &state[..state.len() - 1]).unwrap();
        assert!(matches!(
            LoadedSnapshot::open(&dir),
            Err(SnapshotError::Size {
                file: STATE_FILE,
                ..
            })
        ));

        // A flipped byte in memory: caught while loading.
        let dir = write_snapshot("memory-crc");
        let m = read_manifest(&dir).unwrap();
        let mem = dir.join(MEMORY_FILE);
        let f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
        f.write_all_at(&[1], 9 << 20).unwrap();
        let ram = RamBlock::anonymous(16 << 20).unwrap();
        let err = load_sparse_memory(&mem, &ram, &m.memory).unwrap_err();
        assert!(matches!(
            err,
            SnapshotError::Checksum {
                file: MEMORY_FILE,
                ..
            }
        ));
        assert!(err.to_string().contains("corrupted"));

        // A truncated memory file.
        f.set_len(8 << 20).unwrap();
        let err = load_sparse_memory(&mem, &ram, &m.memory).unwrap_err();
        assert!(matches!(
            err,
            SnapshotError::Size { file: MEMORY_FILE, expected, found }
                if expected == 16 << 20 && found == 8 << 20
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A small valid riscv64 state with one started hart whose timer is
    /// `timer_in` ticks after `time` (also a seed for the parser fuzzing).
    pub(crate) fn sample_state(timer_in: Option<i64>) -> SnapshotState {
        let hart = HartState {
            x: [0; 32],
            f: [0; 32],
            pc: 0x8020_0000,
            user: false,
            sstatus: 0,
            sie: 0,
            stvec: 0,
            sscratch: 0,
            sepc: 0,
            scause: 0,
            stval: 0,
            satp: 0,
            scounteren: 7,
            fflags: 0,
            frm: 0,
            stip: false,
            ssip: false,
            timer_deadline: None,
            wfi: false,
            instret: 0,
        };
        SnapshotState {
            format: FORMAT.into(),
            version: VERSION,
            arch: ARCH.into(),
            config: SavedConfig::of(&VmConfig::default()),
            time: 1000,
            timebase: 10_000_000,
            harts: vec![SavedHart {
                hsm: SavedHsm::Started,
                state: Some(hart.clone()),
                timer_in,
            }],
            plic: PlicState {
                priority: vec![0; 32],
                level: 0,
                claimed: 0,
                enable: vec![0],
                threshold: vec![0],
            },
            uart: SerialSnapshot {
                baud_divisor_low: 12,
                baud_divisor_high: 0,
                interrupt_enable: 0,
                interrupt_identification: 1,
                line_control: 3,
                line_status: 0x60,
                modem_control: 8,
                modem_status: 0xb0,
                scratch: 0,
                fifo: vec![],
                pending: vec![],
            },
            devices: vec![],
        }
    }

    #[test]
    fn timer_deadlines_are_saved_relative_to_time() {
        let state = sample_state;
        assert_eq!(
            state(Some(500)).hart_state(0).unwrap().timer_deadline,
            Some(1500)
        );
        assert_eq!(
            state(Some(-300)).hart_state(0).unwrap().timer_deadline,
            Some(700)
        );
        assert_eq!(
            state(Some(-5000)).hart_state(0).unwrap().timer_deadline,
            Some(0)
        );
        assert_eq!(state(None).hart_state(0).unwrap().timer_deadline, None);
        assert!(state(None).hart_state(1).is_none());
        // And the whole state survives JSON.
        let s = state(Some(42));
        let back: SnapshotState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
