//! Puts the virtio devices a [`VmConfig`] asks for into a machine, the same
//! way for both architectures and both accelerators:
//!
//! 1. each device gets a virtio-mmio transport in the next slot of the
//!    machine's window, as an io region named `virtio-mmio` in the `memory`
//!    tree (so it shows in `info mtree`, like QEMU's);
//! 2. each queue's notify eventfd is registered on that region with the
//!    memory model's `add_eventfd` (offset 0x50, 4 bytes, value = queue
//!    index). Under KVM the ioeventfd listener turns that into
//!    `KVM_IOEVENTFD`; under TCG the transport's QueueNotify handler
//!    signals the same eventfd when the write arrives through dispatch;
//! 3. the interrupt line is whatever the machine gives: an irqfd trigger on
//!    x86 (edge), a PLIC source on riscv64 (level);
//! 4. device DMA uses a vm-memory view of RAM that a [`GuestRamListener`]
//!    on `memory` rebuilds at every topology commit;
//! 5. the event loop gets one subscriber per transport, which processes the
//!    queues off the vCPU threads.

use std::io::Write;
use std::sync::Arc;

use event_manager::MutEventSubscriber;

use crate::arch::virtio_mmio::VirtioMmioSlot;
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::console::{Console, ConsoleInput as VirtioConsoleInput};
use crate::devices::virtio::input::{KeyEvents, PowerKey};
use crate::devices::virtio::mmio::{MmioStats, VirtioMmio, NOTIFY_OFFSET, WINDOW_SIZE};
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::subscriber::VirtioSubscriber;
use crate::devices::virtio::{GuestMemoryHandle, IrqLine, VirtioDevice};
use crate::memory::{AddressSpace, GuestRamListener, MemoryTree, RegionId};
use crate::vmm::config::{ConsoleKind, VmConfig};
use crate::vmm::error::VmError;

/// The region name, as QEMU names its virtio-mmio transports.
pub const REGION_NAME: &str = "virtio-mmio";

/// Listener priority of the guest-RAM view: after the accelerators (it only
/// reads the new ranges).
const GUEST_RAM_LISTENER_PRIORITY: i32 = 10;

/// One placed device.
pub struct PlacedDevice {
    /// What it is, for messages and counters: `block vda`, `net tap0`, ...
    pub name: String,
    pub slot: VirtioMmioSlot,
    pub transport: VirtioMmio,
    pub region: RegionId,
}

/// The virtio devices of one VM.
pub struct VirtioDevices {
    pub devices: Vec<PlacedDevice>,
    /// Input for virtio-console, when the console is hvc0.
    pub console_input: Option<Arc<VirtioConsoleInput>>,
    /// The virtio-input power key, when the machine has one.
    pub power_key: Option<Arc<KeyEvents>>,
    /// The guest-RAM view devices use.
    pub memory: GuestMemoryHandle,
}

impl Drop for VirtioDevices {
    /// The VM is going away: its devices let go of what another VM may want
    /// (disk locks), even if a control handle still holds a transport.
    fn drop(&mut self) {
        for device in &self.devices {
            device.transport.release();
        }
    }
}

/// Gives the interrupt line of a slot.
pub type IrqFor<'a> = dyn Fn(&VirtioMmioSlot) -> Result<Arc<dyn IrqLine>, VmError> + 'a;

/// What the machine adds to the devices `config` asks for.
pub struct MachineExtras {
    /// Where virtio-console output goes.
    pub console_output: Box<dyn Write + Send>,
    /// Add the virtio-input power key (machines without ACPI).
    pub power_key: bool,
}

/// How many transports `config` needs (disks, nets, rng, console).
pub fn device_count(config: &VmConfig) -> usize {
    config.disks.len()
        + config.nets.len()
        + usize::from(config.rng)
        + usize::from(config.console == ConsoleKind::Virtio)
}

/// Guest device names in order: vda, vdb, ..., vdz, vdaa, ...
fn disk_name(index: usize) -> String {
    let mut n = index;
    let mut suffix = Vec::new();
    loop {
        suffix.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8_lossy(&suffix))
}

/// Opens every device `config` asks for (so a missing disk or TAP fails
/// before anything is placed), then places them in `slots` under `system`.
/// `irq_for` gives a slot's interrupt line; `console_output` is where
/// virtio-console output goes.
/// Refuses one file behind two drives (also through another path to it):
/// a guest writing through one would corrupt what it reads through the
/// other, and even two read-only views of one file are a mistake to say
/// rather than boot.
fn check_distinct_disks(disks: &[crate::vmm::config::DiskSpec]) -> Result<(), VmError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen: Vec<((u64, u64), usize)> = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        // A file that cannot be read is reported when it is opened.
        let Ok(meta) = std::fs::metadata(&disk.path) else {
            continue;
        };
        let id = (meta.dev(), meta.ino());
        if let Some((_, first)) = seen.iter().find(|(seen_id, _)| *seen_id == id) {
            return Err(VmError::Device(format!(
                "--disk {}: the same file is already disk {} ({}); give each drive its own \
                 file (a copy, or an overlay)",
                disk.path.display(),
                disk_name(*first),
                disks[*first].path.display()
            )));
        }
        seen.push((id, i));
    }
    Ok(())
}

pub fn build_virtio_devices(
    config: &VmConfig,
    tree: &mut MemoryTree,
    system: RegionId,
    memory: &AddressSpace,
    slots: &[VirtioMmioSlot],
    irq_for: &IrqFor<'_>,
    extras: MachineExtras,
) -> Result<VirtioDevices, VmError> {
    let MachineExtras {
        console_output,
        power_key,
    } = extras;
    let mut wanted: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    check_distinct_disks(&config.disks)?;
    for (i, disk) in config.disks.iter().enumerate() {
        let block = Block::new(&BlockConfig {
            path: disk.path.clone(),
            readonly: disk.readonly,
            id: disk.id.clone(),
        })
        .map_err(|e| VmError::Device(format!("--disk {}: {e}", disk.path.display())))?;
        wanted.push((format!("block {}", disk_name(i)), Box::new(block)));
    }
    for net in &config.nets {
        let dev = Net::new(&NetConfig {
            tap: net.tap.clone(),
            mac: net.mac,
        })
        .map_err(|e| VmError::Device(format!("--net tap={}: {e}", net.tap)))?;
        wanted.push((format!("net {}", net.tap), Box::new(dev)));
    }
    if config.rng {
        wanted.push(("rng".into(), Box::new(Rng::new())));
    }
    let mut console_input = None;
    if config.console == ConsoleKind::Virtio {
        let console = Console::new(console_output)
            .map_err(|e| VmError::Device(format!("virtio-console: {e}")))?;
        console_input = Some(console.input());
        wanted.push(("console hvc0".into(), Box::new(console)));
    }
    let mut key_events = None;
    if power_key {
        let key = PowerKey::new().map_err(|e| VmError::Device(format!("virtio-input: {e}")))?;
        key_events = Some(key.events());
        wanted.push(("input power-key".into(), Box::new(key)));
    }
    if wanted.len() > slots.len() {
        return Err(VmError::Device(format!(
            "{} virtio devices asked for, but the machine has {} virtio-mmio slots",
            wanted.len(),
            slots.len()
        )));
    }

    let (listener, mem) = GuestRamListener::new();
    tree.add_listener(memory, GUEST_RAM_LISTENER_PRIORITY, Box::new(listener))?;

    let mut devices = Vec::new();
    tree.begin();
    let placed = (|| {
        for ((name, device), slot) in wanted.into_iter().zip(slots) {
            let irq = irq_for(slot)?;
            let transport = VirtioMmio::new(device, irq, mem.clone())
                .map_err(|e| VmError::Device(format!("{name}: {e}")))?;
            let region = tree.new_io(
                REGION_NAME,
                WINDOW_SIZE as u128,
                Some(Arc::new(transport.clone())),
            )?;
            tree.add_subregion(system, slot.base, region)?;
            for (index, event) in transport.queue_events().iter().enumerate() {
                // A duplicate descriptor of the same eventfd object: KVM and
                // the event loop then watch the very same counter.
                let event = event
                    .try_clone()
                    .map_err(|e| VmError::Device(format!("{name}: eventfd: {e}")))?;
                tree.add_eventfd(
                    region,
                    NOTIFY_OFFSET,
                    4,
                    Some(index as u64),
                    Arc::new(event),
                )?;
            }
            devices.push(PlacedDevice {
                name,
                slot: *slot,
                transport,
                region,
            });
        }
        Ok::<_, VmError>(())
    })();
    tree.commit()?;
    placed?;
    Ok(VirtioDevices {
        devices,
        console_input,
        power_key: key_events,
        memory: mem,
    })
}

impl VirtioDevices {
    /// One event-loop subscriber per transport.
    pub fn subscribers(&self) -> Vec<Box<dyn MutEventSubscriber + Send>> {
        self.devices
            .iter()
            .map(|d| {
                Box::new(VirtioSubscriber::new(d.transport.clone()))
                    as Box<dyn MutEventSubscriber + Send>
            })
            .collect()
    }

    /// Per-device transport counters.
    pub fn stats(&self) -> Vec<(String, MmioStats)> {
        self.devices
            .iter()
            .map(|d| (d.name.clone(), d.transport.stats()))
            .collect()
    }

    /// The x86 kernel command-line entries that describe the transports to
    /// kernels without ACPI: `virtio_mmio.device=4K@0xd0000000:5 ...`.
    pub fn cmdline_entries(&self) -> String {
        self.devices
            .iter()
            .map(|d| {
                format!(
                    "virtio_mmio.device={}K@{:#x}:{}",
                    d.slot.size >> 10,
                    d.slot.base,
                    d.slot.irq
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_follow_linux() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        assert_eq!(disk_name(27), "vdab");
        assert_eq!(disk_name(26 + 26 * 26), "vdaaa");
    }
}
