//! KVM as a VM's [`Accelerator`]: one thread per vCPU running the generic
//! loop of [`super::vcpu`], the same for every machine; the machine's
//! constructor creates the vCPUs and loads their state first.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_ioctls::VcpuFd;

use super::kick::VcpuControl;
use super::vcpu::{run_vcpu, SbiConsole, VcpuContext, VcpuStats};
use super::KvmAccel;
use crate::memory::AddressSpace;
use crate::vmm::error::VmError;
use crate::vmm::exit::ExitSignal;
use crate::vmm::lifecycle::{Accelerator, CpuCounters, CpuOutcome};
use crate::vmm::live::LiveVm;

/// Prepared vCPUs, then their threads.
pub struct KvmVcpuThreads {
    /// Kept open until every vCPU thread is gone.
    accel: Option<KvmAccel>,
    vcpus: Vec<VcpuFd>,
    threads: Vec<JoinHandle<VcpuStats>>,
    memory: AddressSpace,
    io: Option<AddressSpace>,
    console: Option<SbiConsole>,
    control: Arc<VcpuControl>,
    exit: Arc<ExitSignal>,
    live: Arc<LiveVm>,
    first_run: Arc<OnceLock<Instant>>,
    seccomp: crate::vmm::seccomp::SeccompMode,
}

/// What the vCPU threads use besides the vCPUs.
pub struct KvmVcpuParts {
    pub accel: KvmAccel,
    pub vcpus: Vec<VcpuFd>,
    /// Where MMIO exits go.
    pub memory: AddressSpace,
    /// Where port I/O exits go (x86_64).
    pub io: Option<AddressSpace>,
    /// Where SBI console output goes (riscv64).
    pub console: Option<SbiConsole>,
    pub control: Arc<VcpuControl>,
    pub exit: Arc<ExitSignal>,
    pub live: Arc<LiveVm>,
    pub seccomp: crate::vmm::seccomp::SeccompMode,
}

impl KvmVcpuThreads {
    pub fn new(parts: KvmVcpuParts) -> Self {
        KvmVcpuThreads {
            accel: Some(parts.accel),
            vcpus: parts.vcpus,
            threads: Vec::new(),
            memory: parts.memory,
            io: parts.io,
            console: parts.console,
            control: parts.control,
            exit: parts.exit,
            live: parts.live,
            first_run: Arc::new(OnceLock::new()),
            seccomp: parts.seccomp,
        }
    }
}

impl Accelerator for KvmVcpuThreads {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn start(&mut self) -> Result<(), VmError> {
        for (index, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let ctx = VcpuContext {
                index,
                memory: self.memory.clone(),
                io: self.io.clone(),
                console: self.console.clone(),
                control: self.control.clone(),
                exit: self.exit.clone(),
                first_run: self.first_run.clone(),
                live: self.live.vcpu_stats(index),
                seccomp: self.seccomp,
            };
            let handle = std::thread::Builder::new()
                .name(format!("ember-vcpu{index}"))
                .spawn(move || run_vcpu(vcpu, ctx))
                .map_err(VmError::Thread)?;
            self.threads.push(handle);
        }
        Ok(())
    }

    fn stop(&self) {
        self.control.stop();
    }

    fn join(&mut self) -> CpuOutcome {
        let mut stats = Vec::new();
        let mut panicked = false;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(s) => stats.push(s),
                Err(_) => panicked = true,
            }
        }
        // Every vCPU thread is gone: KVM can close.
        self.accel.take();
        CpuOutcome {
            counters: CpuCounters::Kvm(stats),
            panicked,
        }
    }

    fn first_run(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }
}
