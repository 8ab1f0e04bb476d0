//! Running a VM, the same for every machine and accelerator: serve the
//! control API, confine the process, start the CPUs, run the event loop
//! until something ends the VM, then stop the CPUs, the API and the
//! threads in that order. A machine builds what runs; an [`Accelerator`]
//! runs its CPUs (KVM vCPU threads, or software harts); this is the one
//! place that sequences them (docs/architecture.md, "One VM: a machine
//! and an accelerator").

use std::sync::Arc;
use std::time::Instant;

use crate::accel::tcg::riscv64::HartStats;
use crate::devices::serial::Serial;
use crate::vmm::config::VmConfig;
use crate::vmm::error::VmError;
use crate::vmm::event_loop::{console_target, run_event_loop, EventLoopParts};
use crate::vmm::exit::{ExitReason, ExitSignal};
use crate::vmm::landlock_rules::confine_filesystem;
use crate::vmm::live::{start_api, LiveVm};
use crate::vmm::virtio::VirtioDevices;

/// Per-CPU counters, as each accelerator keeps them.
#[derive(Debug)]
pub enum CpuCounters {
    /// KVM vCPUs.
    #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
    Kvm(Vec<crate::accel::kvm::vcpu::VcpuStats>),
    /// Software harts.
    Tcg(Vec<HartStats>),
}

/// What an accelerator reports when its CPUs have stopped.
#[derive(Debug)]
pub struct CpuOutcome {
    pub counters: CpuCounters,
    /// A CPU thread panicked (a bug in Ember, reported as the VM's end).
    pub panicked: bool,
}

/// What runs a VM's CPUs. It is built by a machine-specific constructor
/// that has already created the CPUs, loaded their boot or restored
/// state, and attached to the machine's memory; the lifecycle only starts
/// and stops them.
pub trait Accelerator: Send {
    /// `kvm` or `tcg`.
    fn name(&self) -> &'static str;
    /// Starts one thread per CPU. Each thread confines itself before it
    /// runs guest code.
    fn start(&mut self) -> Result<(), VmError>;
    /// Stops every CPU (the VM is ending), including paused ones.
    fn stop(&self);
    /// Waits for the CPU threads to end.
    fn join(&mut self) -> CpuOutcome;
    /// When the first CPU started running guest code.
    fn first_run(&self) -> Option<Instant>;
}

/// What the lifecycle needs of a built VM besides its accelerator.
pub struct LifecycleParts<'a> {
    pub config: &'a VmConfig,
    pub live: &'a Arc<LiveVm>,
    pub exit: &'a Arc<ExitSignal>,
    /// The virtio devices, whose queues the event loop serves.
    pub virtio: &'a VirtioDevices,
    /// The UART, which gets console input unless a virtio console does.
    pub serial: &'a Arc<Serial>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub reason: ExitReason,
    pub cpus: CpuCounters,
    /// When the CPUs were started.
    pub started: Instant,
    /// When the first CPU ran guest code (KVM: entered `KVM_RUN`).
    pub first_run: Option<Instant>,
    /// When the event loop returned.
    pub ended: Instant,
}

/// Runs a VM to its end on the calling thread (which becomes the event
/// loop and is confined with it).
pub fn run(parts: LifecycleParts<'_>, cpus: &mut dyn Accelerator) -> Result<RunOutcome, VmError> {
    // The API binds its socket first; its acceptor confines itself.
    let api = start_api(parts.config, parts.live)?;
    confine_filesystem(parts.config)?;
    parts.live.set_running();
    let started = Instant::now();
    if let Err(e) = cpus.start() {
        cpus.stop();
        cpus.join();
        parts.live.set_shut_down();
        if let Some(api) = api {
            let _ = api.shutdown();
        }
        return Err(e);
    }
    let result = run_event_loop(
        parts.exit,
        EventLoopParts {
            input: parts.config.console_input.clone(),
            deliver: console_target(parts.virtio, parts.serial),
            devices: parts.virtio.subscribers(),
            seccomp: parts.config.confinement.seccomp,
        },
    );
    let ended = Instant::now();
    cpus.stop();
    parts.live.set_shut_down();
    if let Some(api) = api {
        let _ = api.shutdown();
    }
    let outcome = cpus.join();
    result?;
    let mut reason = parts
        .exit
        .reason()
        .unwrap_or_else(|| ExitReason::Error("the VM stopped without a reason".into()));
    if outcome.panicked {
        reason = ExitReason::Error(format!("a {} CPU thread panicked", cpus.name()));
    }
    Ok(RunOutcome {
        reason,
        cpus: outcome.counters,
        started,
        first_run: cpus.first_run(),
        ended,
    })
}
