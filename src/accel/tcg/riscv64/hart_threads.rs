//! The software CPU as a VM's [`Accelerator`]: one host thread per hart
//! (rather than round-robin on one thread) because harts are independent
//! most of the time, so a 2-hart guest uses both host cores; shared guest
//! memory is accessed with host atomics and LR/SC is value-checked, as in
//! QEMU's multi-threaded TCG.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use super::jit::JitPolicy;
use super::{Hart, HartState, HartStats, RiscvSystem};
use crate::arch::riscv64::image::RiscvBoot;
use crate::vmm::error::VmError;
use crate::vmm::exit::ExitReason;
use crate::vmm::lifecycle::{Accelerator, CpuCounters, CpuOutcome};
use crate::vmm::seccomp::{confine_thread, SeccompMode, ThreadKind};

/// Where the harts start: a booted kernel (hart 0 at its entry, the others
/// stopped until SBI HSM starts them), or each hart's restored state.
pub enum HartStart {
    Boot(RiscvBoot),
    Restored(Vec<Option<HartState>>),
}

/// The harts of one VM and, once started, their threads.
pub struct TcgHartThreads {
    system: Arc<RiscvSystem>,
    start: Option<HartStart>,
    jit: JitPolicy,
    seccomp: SeccompMode,
    threads: Vec<JoinHandle<HartStats>>,
    started: OnceLock<Instant>,
}

impl TcgHartThreads {
    pub fn new(
        system: Arc<RiscvSystem>,
        start: HartStart,
        jit: JitPolicy,
        seccomp: SeccompMode,
    ) -> Self {
        TcgHartThreads {
            system,
            start: Some(start),
            jit,
            seccomp,
            threads: Vec::new(),
            started: OnceLock::new(),
        }
    }
}

impl Accelerator for TcgHartThreads {
    fn name(&self) -> &'static str {
        "tcg"
    }

    fn start(&mut self) -> Result<(), VmError> {
        let start = self
            .start
            .take()
            .ok_or_else(|| VmError::Arch("the harts were already started".into()))?;
        let (boot, restored) = match start {
            HartStart::Boot(boot) => (Some(boot), None),
            HartStart::Restored(states) => (None, Some(states)),
        };
        self.started.get_or_init(Instant::now);
        for id in 0..self.system.harts.len() {
            let system = self.system.clone();
            let saved = restored.as_ref().and_then(|r| r.get(id).cloned().flatten());
            let (jit, seccomp) = (self.jit, self.seccomp);
            let spawned = std::thread::Builder::new()
                .name(format!("ember-hart{id}"))
                .spawn(move || {
                    let exit = system.exit.clone();
                    let mut hart = Hart::new(system, id);
                    hart.set_jit_policy(jit);
                    // The state is set before the first instruction: a
                    // restored hart 0 does not enter the kernel again.
                    match (saved, boot) {
                        (Some(state), _) => hart.set_state(&state),
                        (None, Some(boot)) if id == 0 => {
                            hart.reset_to(boot.entry, 0, boot.fdt_addr)
                        }
                        _ => {}
                    }
                    // The code arena is mapped before the filter, which
                    // refuses new executable mappings.
                    hart.map_code_arena();
                    if let Err(e) = confine_thread(ThreadKind::Hart, seccomp) {
                        exit.request(ExitReason::Error(format!("hart {id}: {e}")));
                        return HartStats::default();
                    }
                    hart.thread_main()
                })
                .map_err(VmError::Thread)?;
            self.threads.push(spawned);
        }
        Ok(())
    }

    fn stop(&self) {
        self.system.stop_all();
        self.system.resume_all();
    }

    fn join(&mut self) -> CpuOutcome {
        let mut harts = Vec::new();
        let mut panicked = false;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(stats) => harts.push(stats),
                Err(_) => panicked = true,
            }
        }
        CpuOutcome {
            counters: CpuCounters::Tcg(harts),
            panicked,
        }
    }

    fn first_run(&self) -> Option<Instant> {
        self.started.get().copied()
    }
}
