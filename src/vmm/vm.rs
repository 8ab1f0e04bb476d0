//! The VM: one machine run by one accelerator, picked from the
//! configuration (`arch`, `accel`) or, for a restore, from the snapshot.
//! The machines are the x86_64 `pc`-like machine on KVM
//! ([`crate::vmm::x86_vm`]) and the riscv64 `virt` machine on KVM or the
//! software CPU ([`crate::vmm::riscv_vm`]); both run under the one
//! lifecycle of [`crate::vmm::lifecycle`] and are controlled through the
//! one [`LiveVm`]. The CLI and the library API use this type and never
//! branch on the architecture themselves.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arch::GuestArch;
use crate::vmm::config::VmConfig;
use crate::vmm::console::{ConsoleInput, ConsoleOutput};
use crate::vmm::error::VmError;
use crate::vmm::exit::{ExitReason, ExitSignal};
use crate::vmm::lifecycle::CpuCounters;
use crate::vmm::live::LiveVm;
use crate::vmm::riscv_vm::RiscvVm;
#[cfg(target_arch = "x86_64")]
use crate::vmm::x86_vm::X86Vm;

/// What a restore takes from the caller rather than from the snapshot:
/// where the console goes (host-side settings; the machine itself is
/// rebuilt exactly as saved).
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub console_input: ConsoleInput,
    pub console_output: ConsoleOutput,
    /// Serve the control API here (`--api-socket`).
    pub api_socket: Option<std::path::PathBuf>,
    /// The software CPU's compile policy (`--tcg-jit`): a property of the
    /// host side, not of the saved machine.
    pub tcg_jit: crate::accel::tcg::riscv64::jit::JitPolicy,
    /// Disks to use instead of the saved ones (`--disk` at restore; see
    /// [`crate::vmm::snapshot::SavedConfig::with_overrides`]).
    pub disks: Vec<crate::vmm::config::DiskSpec>,
    /// TAPs to use instead of the saved ones, by position.
    pub nets: Vec<crate::vmm::config::NetSpec>,
    /// How the VMM confines itself (`--seccomp`, `--landlock`,
    /// `--snapshot-dir`): also a property of the host side.
    pub confinement: crate::vmm::config::Confinement,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            console_input: ConsoleInput::Stdin,
            console_output: ConsoleOutput::Stdout,
            api_socket: None,
            tcg_jit: Default::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            confinement: Default::default(),
        }
    }
}

/// A built (or restored) VM, ready to run.
pub enum Vm {
    /// The x86_64 machine under KVM (x86_64 hosts).
    #[cfg(target_arch = "x86_64")]
    X86(Box<X86Vm>),
    /// The riscv64 `virt` machine, on KVM (riscv64 hosts) or the software
    /// CPU.
    Riscv(Box<RiscvVm>),
}

/// How a run ended.
#[derive(Debug)]
pub struct VmOutcome {
    pub reason: ExitReason,
    /// Per-CPU counters.
    pub cpus: CpuCounters,
    /// The accelerator: `kvm` or `tcg`.
    pub accel: &'static str,
    /// When the first CPU ran guest code (KVM: entered `KVM_RUN`; the
    /// software CPU: its harts started).
    pub first_run: Option<Instant>,
    /// From the start of the CPUs to the end (software CPU).
    pub run_time: Option<Duration>,
}

impl Vm {
    /// Builds the machine `config.arch` names on the accelerator
    /// `config.accel` asks for (`auto`: KVM where it can run the guest).
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        match config.arch {
            GuestArch::Riscv64 => Ok(Vm::Riscv(Box::new(RiscvVm::new(config)?))),
            #[cfg(target_arch = "x86_64")]
            GuestArch::X86_64 => Ok(Vm::X86(Box::new(X86Vm::new(config)?))),
            #[cfg(not(target_arch = "x86_64"))]
            GuestArch::X86_64 => Err(VmError::x86_64_needs_x86_64_host()),
        }
    }

    /// Builds the VM saved in snapshot directory `dir`, of the
    /// architecture its manifest names.
    pub fn restore(dir: &Path, options: RestoreOptions) -> Result<Vm, VmError> {
        let manifest = crate::vmm::snapshot::read_manifest(dir)?;
        if manifest.arch == crate::vmm::snapshot::ARCH_X86_64 {
            #[cfg(target_arch = "x86_64")]
            return Ok(Vm::X86(Box::new(X86Vm::restore(dir, options)?)));
            #[cfg(not(target_arch = "x86_64"))]
            return Err(VmError::x86_64_needs_x86_64_host());
        }
        Ok(Vm::Riscv(Box::new(RiscvVm::restore(dir, options)?)))
    }

    /// `info mtree` and `info mtree -f` of the machine.
    pub fn mtree(&self) -> String {
        match self {
            #[cfg(target_arch = "x86_64")]
            Vm::X86(vm) => vm.mtree(),
            Vm::Riscv(vm) => vm.mtree(),
        }
    }

    /// Writes the device tree blob to `path` (`--dump-dtb`; riscv64).
    pub fn dump_dtb(&self, path: &Path) -> Result<(), VmError> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Vm::X86(_) => Err(VmError::Arch(
                "--dump-dtb is for riscv64 guests (x86_64 guests get ACPI tables)".into(),
            )),
            Vm::Riscv(vm) => vm.dump_dtb(path),
        }
    }

    /// The VM's control interface, usable from other threads while
    /// [`Vm::run`] runs.
    pub fn control(&self) -> Arc<LiveVm> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Vm::X86(vm) => vm.control(),
            Vm::Riscv(vm) => vm.control(),
        }
    }

    /// How the VM is told to stop and how it reports why.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Vm::X86(vm) => vm.exit_signal(),
            Vm::Riscv(vm) => vm.exit_signal(),
        }
    }

    /// A probe for how much guest RAM is resident, in KiB (subtracted
    /// from the process's resident size to report the VMM's own).
    pub fn guest_ram_resident_kib_probe(&self) -> Box<dyn Fn() -> u64> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Vm::X86(vm) => Box::new(vm.guest_ram_resident_kib_probe()),
            Vm::Riscv(vm) => Box::new(vm.guest_ram_resident_kib_probe()),
        }
    }

    /// Runs the VM to its end on the calling thread (which it confines).
    pub fn run(self) -> Result<VmOutcome, VmError> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Vm::X86(vm) => {
                let o = vm.run()?;
                Ok(VmOutcome {
                    reason: o.reason,
                    cpus: CpuCounters::Kvm(o.vcpus),
                    accel: "kvm",
                    first_run: o.first_run,
                    run_time: None,
                })
            }
            Vm::Riscv(vm) => {
                let accel = vm.accel_name();
                let o = vm.run()?;
                Ok(VmOutcome {
                    reason: o.reason,
                    cpus: o.cpus,
                    accel,
                    first_run: if accel == "kvm" {
                        o.first_run
                    } else {
                        Some(o.started)
                    },
                    run_time: Some(o.run_time),
                })
            }
        }
    }
}
