//! KVM as the accelerator of the riscv64 `virt` machine. Before the
//! machine is built: open KVM, create the vCPUs, read what they are (for
//! the device tree) and hand out their external interrupt lines (for the
//! PLIC). After: attach the memory slots and ioeventfds to the machine's
//! `memory` address space, and load boot or restored registers. Then
//! [`RiscvKvm::into_threads`] gives the generic vCPU threads.

use std::sync::Arc;

use kvm_ioctls::VcpuFd;

use super::aia;
use super::interrupt::{duplicate, kvm_interrupt, plic_output};
use super::vcpu;
use super::SavedVcpu;
use crate::accel::kvm::ioeventfd::{IoEventBus, KvmIoEventFdListener};
use crate::accel::kvm::kick::{install_kick_handler, VcpuControl};
use crate::accel::kvm::memory::KvmMemory;
use crate::accel::kvm::vcpu_threads::{KvmVcpuParts, KvmVcpuThreads};
use crate::accel::kvm::{KvmAccel, KvmError};
use crate::arch::riscv64::cpu_description::CpuDescription;
use crate::arch::riscv64::irqchip::{IrqchipChoice, SourceLevel};
use crate::arch::riscv64::machine::{HartLines, InterruptWiring};
use crate::arch::riscv64::RiscvBoot;
use crate::memory::{AddressSpace, MemoryTree};
use crate::vmm::error::VmError;
use crate::vmm::exit::{ExitReason, ExitSignal};
use crate::vmm::live::LiveVm;

/// KVM's side of one riscv64 VM, before its vCPU threads start.
pub struct RiscvKvm {
    pub accel: KvmAccel,
    pub vcpus: Vec<VcpuFd>,
    pub control: Arc<VcpuControl>,
    pub slots: Option<KvmMemory>,
    /// The in-kernel AIA, when the VM has it (kept open with the VM).
    pub aia: Option<kvm_ioctls::DeviceFd>,
}

/// One `KVM_INTERRUPT` line per vCPU, for the PLIC's contexts.
fn interrupt_lines(vcpus: &[VcpuFd], exit: &Arc<ExitSignal>) -> Result<HartLines, VmError> {
    let mut lines: HartLines = Vec::with_capacity(vcpus.len());
    for (index, v) in vcpus.iter().enumerate() {
        let fd = duplicate(v).map_err(|e| {
            VmError::Kvm(KvmError::Unusable(format!(
                "cannot duplicate vCPU {index}'s descriptor: {e}"
            )))
        })?;
        let exit = exit.clone();
        lines.push(plic_output(
            move |irq| kvm_interrupt(&fd, irq),
            move |e| {
                exit.request(ExitReason::Error(format!(
                    "vCPU {index}: KVM_INTERRUPT failed: {e}"
                )))
            },
        ));
    }
    Ok(lines)
}

impl RiscvKvm {
    /// Opens KVM at `path` and creates `cpus` vCPUs and the interrupt
    /// controller `irqchip` asks for. Returns what the machine needs of
    /// them: their description and how wired interrupts reach them (a
    /// failed `KVM_INTERRUPT` or `KVM_IRQ_LINE` ends the VM through
    /// `exit`).
    pub fn open(
        path: &std::path::Path,
        cpus: u8,
        irqchip: IrqchipChoice,
        exit: &Arc<ExitSignal>,
    ) -> Result<(RiscvKvm, CpuDescription, InterruptWiring), VmError> {
        let accel = KvmAccel::open(path)?;
        install_kick_handler().map_err(|source| VmError::Ioctl {
            what: "installing the vCPU kick signal handler",
            source,
        })?;
        let use_aia = match irqchip {
            IrqchipChoice::Plic => false,
            IrqchipChoice::Auto => aia::available(&accel.vm),
            IrqchipChoice::Aia if aia::available(&accel.vm) => true,
            IrqchipChoice::Aia => {
                return Err(VmError::Kvm(KvmError::Unusable(
                    "--irqchip aia: this host's KVM has no in-kernel AIA (it needs Linux 6.5+ \
                     and a CPU with the Ssaia extension and an IMSIC); use --irqchip plic"
                        .into(),
                )))
            }
        };
        let vcpus = vcpu::create_vcpus(&accel, cpus)?;
        let first = vcpus
            .first()
            .ok_or_else(|| VmError::Arch("a VM needs at least one vCPU".into()))?;
        let description = vcpu::describe(first)?;
        let (wiring, aia) = if use_aia {
            // After the vCPUs: initializing the AIA gives each its IMSIC.
            let device = aia::create(&accel.vm, cpus as u32)?;
            let vm = accel.vm.clone();
            let exit = exit.clone();
            let wired: SourceLevel = Arc::new(move |source, level| {
                if let Err(e) = vm.set_irq_line(source, level) {
                    exit.request(ExitReason::Error(format!(
                        "KVM_IRQ_LINE for AIA source {source} failed: {e}"
                    )));
                }
            });
            (InterruptWiring::External(wired), Some(device))
        } else {
            (InterruptWiring::Plic(interrupt_lines(&vcpus, exit)?), None)
        };
        Ok((
            RiscvKvm {
                accel,
                vcpus,
                control: Arc::new(VcpuControl::new()),
                slots: None,
                aia,
            },
            description,
            wiring,
        ))
    }

    /// Registers KVM's listeners on the machine's `memory` address space:
    /// memory slots for RAM and ROM, ioeventfds for virtio notifications.
    pub fn attach(&mut self, tree: &mut MemoryTree, memory: &AddressSpace) -> Result<(), VmError> {
        let (slots, listener) = KvmMemory::new(
            self.accel.vm.clone(),
            self.accel.max_slots,
            Some(self.control.clone()),
        );
        let (ioevents, ioevent_state) =
            KvmIoEventFdListener::new(self.accel.vm.clone(), IoEventBus::Mmio);
        tree.add_listener(memory, 0, Box::new(listener))?;
        tree.add_listener(memory, 1, Box::new(ioevents))?;
        if let Some(e) = slots.take_error() {
            return Err(VmError::Slots(e));
        }
        if let Some(e) = ioevent_state.take_error() {
            return Err(VmError::Device(format!("virtio notifications: {e}")));
        }
        self.slots = Some(slots);
        Ok(())
    }

    /// Boot state: vCPU 0 at the kernel's entry with `a0` = 0 and `a1` =
    /// the device tree; the others stopped until the guest starts them.
    pub fn load_boot(&self, boot: &RiscvBoot) -> Result<(), VmError> {
        for (hart, v) in self.vcpus.iter().enumerate() {
            if hart == 0 {
                vcpu::set_boot_registers(v, 0, boot.entry, boot.fdt_addr)?;
            } else {
                vcpu::stop_secondary(v)?;
            }
        }
        Ok(())
    }

    /// Restored state: every vCPU's saved registers and run state.
    pub fn load_restored(&self, saved: &[SavedVcpu]) -> Result<(), VmError> {
        if saved.len() != self.vcpus.len() {
            return Err(VmError::Arch(format!(
                "{} vCPUs saved, {} created",
                saved.len(),
                self.vcpus.len()
            )));
        }
        for (index, (v, s)) in self.vcpus.iter().zip(saved).enumerate() {
            vcpu::restore(v, s).map_err(|e| {
                VmError::Snapshot(crate::vmm::snapshot::SnapshotError::Device {
                    name: format!("vCPU {index}"),
                    reason: e.to_string(),
                })
            })?;
        }
        Ok(())
    }

    /// The vCPU threads, ready to start.
    pub fn into_threads(
        self,
        memory: AddressSpace,
        console: crate::accel::kvm::vcpu::SbiConsole,
        exit: Arc<ExitSignal>,
        live: Arc<LiveVm>,
        seccomp: crate::vmm::seccomp::SeccompMode,
    ) -> KvmVcpuThreads {
        KvmVcpuThreads::new(KvmVcpuParts {
            accel: self.accel,
            vcpus: self.vcpus,
            memory,
            io: None,
            console: Some(console),
            control: self.control,
            exit,
            live,
            seccomp,
        })
    }
}
