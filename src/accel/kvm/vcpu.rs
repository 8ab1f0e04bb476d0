//! The vCPU thread: `KVM_RUN` in a loop, port I/O exits dispatched through
//! the `I/O` address space and MMIO exits through `memory` (the same tree
//! and dispatch code as everything else), and every way a vCPU can end.
//! The same loop runs x86_64 and riscv64 vCPUs; what differs (register
//! dumps, riscv's forwarded SBI calls) comes from the architecture's
//! module.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::kick::{KvmRunRegistration, VcpuControl};
#[cfg(target_arch = "riscv64")]
use super::riscv64::vcpu::describe_registers;
#[cfg(target_arch = "x86_64")]
use super::x86_64::describe_registers;
use crate::memory::AddressSpace;
use crate::vmm::exit::{ExitReason, ExitSignal};

/// Where a guest's SBI console output goes (riscv64's forwarded legacy
/// putchar).
pub type SbiConsole = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// What a vCPU thread needs.
pub struct VcpuContext {
    /// The vCPU's index (0 is the boot CPU).
    pub index: usize,
    /// Where MMIO exits go.
    pub memory: AddressSpace,
    /// Where port I/O exits go (x86_64; riscv64 has no port I/O).
    pub io: Option<AddressSpace>,
    /// Where the guest's SBI console output goes (riscv64).
    pub console: Option<SbiConsole>,
    /// Pausing and stopping.
    pub control: Arc<VcpuControl>,
    /// Where the vCPU reports why the VM must end.
    pub exit: Arc<ExitSignal>,
    /// Set once, by whichever vCPU enters `KVM_RUN` first (startup timing).
    pub first_run: Arc<OnceLock<Instant>>,
    /// The counters as of the last exit, for the control API.
    pub live: Arc<LiveVcpuStats>,
    /// The system call filter the thread installs before its first
    /// `KVM_RUN`.
    pub seccomp: crate::vmm::seccomp::SeccompMode,
}

/// A vCPU's counters readable while it runs: the vCPU thread stores its
/// own after every exit (relaxed stores, no read-modify-write, so the cost
/// is a few cycles against a microseconds-long exit).
#[derive(Debug, Default)]
pub struct LiveVcpuStats {
    runs: std::sync::atomic::AtomicU64,
    pio_exits: std::sync::atomic::AtomicU64,
    mmio_exits: std::sync::atomic::AtomicU64,
    sbi_exits: std::sync::atomic::AtomicU64,
    interrupted: std::sync::atomic::AtomicU64,
}

impl LiveVcpuStats {
    fn publish(&self, s: &VcpuStats) {
        use std::sync::atomic::Ordering::Relaxed;
        self.runs.store(s.runs, Relaxed);
        self.pio_exits.store(s.pio_exits, Relaxed);
        self.mmio_exits.store(s.mmio_exits, Relaxed);
        self.sbi_exits.store(s.sbi_exits, Relaxed);
        self.interrupted.store(s.interrupted, Relaxed);
    }

    /// The counters as last published.
    pub fn get(&self) -> VcpuStats {
        use std::sync::atomic::Ordering::Relaxed;
        VcpuStats {
            runs: self.runs.load(Relaxed),
            pio_exits: self.pio_exits.load(Relaxed),
            mmio_exits: self.mmio_exits.load(Relaxed),
            sbi_exits: self.sbi_exits.load(Relaxed),
            interrupted: self.interrupted.load(Relaxed),
        }
    }
}

/// Counters a vCPU keeps (returned when its thread ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuStats {
    pub runs: u64,
    pub pio_exits: u64,
    pub mmio_exits: u64,
    /// Forwarded SBI calls (riscv64).
    pub sbi_exits: u64,
    pub interrupted: u64,
}

/// What to do after an exit.
enum Next {
    Continue,
    Stop(ExitReason),
    InternalError,
    Unexpected(String),
}

/// How many round trips completing one exit's I/O may take (a string
/// instruction spanning pages comes back once per piece).
const MAX_COMPLETION_ROUNDS: usize = 64;

/// Handles a port I/O or MMIO exit through the address spaces. Any other
/// exit is handed back.
fn handle_io<'a>(
    ctx: &VcpuContext,
    run_page: *mut kvm_run,
    exit: VcpuExit<'a>,
    stats: &mut VcpuStats,
) -> Option<VcpuExit<'a>> {
    match exit {
        VcpuExit::IoOut(port, data) => {
            stats.pio_exits += 1;
            // SAFETY: the exit is KVM_EXIT_IO, so the `io` member of the
            // run page's union is the valid one; `run_page` points at
            // this vCPU's live run mapping and `data` borrows a
            // different part of it.
            let size = unsafe { (*run_page).__bindgen_anon_1.io.size } as usize;
            if let Some(io) = &ctx.io {
                for element in data.chunks(size.max(1)) {
                    io.write_buf(port as u64, element);
                }
            }
            None
        }
        VcpuExit::IoIn(port, data) => {
            stats.pio_exits += 1;
            // SAFETY: as above, for an input exit.
            let size = unsafe { (*run_page).__bindgen_anon_1.io.size } as usize;
            match &ctx.io {
                Some(io) => {
                    for element in data.chunks_mut(size.max(1)) {
                        io.read_buf(port as u64, element);
                    }
                }
                None => data.fill(0xff),
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            stats.mmio_exits += 1;
            ctx.memory.read_buf(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            stats.mmio_exits += 1;
            ctx.memory.write_buf(addr, data);
            None
        }
        other => Some(other),
    }
}

/// Finishes the instruction the last I/O exit stopped in. KVM completes
/// it (advances RIP past an OUT, loads an IN's data into RAX, ...) only on
/// the next `KVM_RUN`, so state read before that would replay or lose the
/// access. `immediate_exit` makes that `KVM_RUN` return right after the
/// completion without running guest code (the KVM API documentation
/// recommends exactly this before saving state).
fn complete_pending_io(
    vcpu: &mut VcpuFd,
    ctx: &VcpuContext,
    run_page: *mut kvm_run,
    stats: &mut VcpuStats,
) -> Result<(), String> {
    for _ in 0..MAX_COMPLETION_ROUNDS {
        vcpu.set_kvm_immediate_exit(1);
        let done = match vcpu.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => true,
            Err(e) => return Err(format!("vCPU {}: KVM_RUN failed: {e}", ctx.index)),
            Ok(exit) => match handle_io(ctx, run_page, exit, stats) {
                None => false,
                Some(other) => {
                    return Err(format!(
                        "vCPU {}: unexpected exit {other:?} while completing I/O",
                        ctx.index
                    ))
                }
            },
        };
        vcpu.set_kvm_immediate_exit(0);
        if done {
            return Ok(());
        }
    }
    Err(format!(
        "vCPU {}: I/O still pending after {MAX_COMPLETION_ROUNDS} completions",
        ctx.index
    ))
}

/// `KVM_EXIT_RISCV_SBI`, which kvm-ioctls reports as `Unsupported`.
#[cfg(target_arch = "riscv64")]
const KVM_EXIT_RISCV_SBI: u32 = 35;

/// Answers a forwarded SBI call (see [`super::riscv64::sbi`]).
#[cfg(target_arch = "riscv64")]
fn answer_sbi(vcpu: &mut VcpuFd, ctx: &VcpuContext) {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit is KVM_EXIT_RISCV_SBI, so `riscv_sbi` is the valid
    // member of the union; every field is a plain integer, whatever the
    // guest put in its registers.
    let sbi = unsafe { &mut run.__bindgen_anon_1.riscv_sbi };
    let no_console = |_: &[u8]| {};
    let console: &dyn Fn(&[u8]) = match &ctx.console {
        Some(c) => c.as_ref(),
        None => &no_console,
    };
    sbi.ret = super::riscv64::sbi::answer(sbi.extension_id, sbi.args, console);
}

/// Runs a vCPU until the VM stops. Call on the vCPU's own thread.
pub fn run_vcpu(mut vcpu: VcpuFd, ctx: VcpuContext) -> VcpuStats {
    let mut stats = VcpuStats::default();
    ctx.control.register_thread(ctx.index);
    let run_page: *mut kvm_run = vcpu.get_kvm_run();
    let registration = KvmRunRegistration::new(vcpu.get_kvm_run());
    if let Err(e) =
        crate::vmm::seccomp::confine_thread(crate::vmm::seccomp::ThreadKind::Vcpu, ctx.seccomp)
    {
        ctx.exit
            .request(ExitReason::Error(format!("vCPU {}: {e}", ctx.index)));
        ctx.control.unregister_thread(ctx.index);
        return stats;
    }
    // The last exit was I/O that KVM completes on the next KVM_RUN.
    let mut io_pending = false;
    loop {
        let entered = ctx.control.enter_serving(ctx.index, |job| {
            let ready = if io_pending {
                let done = complete_pending_io(&mut vcpu, &ctx, run_page, &mut stats);
                io_pending = done.is_err();
                done
            } else {
                Ok(())
            };
            match ready {
                Ok(()) => job(Ok(&mut vcpu)),
                Err(e) => job(Err(e)),
            }
        });
        if !entered {
            break;
        }
        ctx.first_run.get_or_init(Instant::now);
        stats.runs += 1;
        let result = vcpu.run();
        ctx.control.leave();
        io_pending = false;
        let next = match result {
            Ok(exit) => match handle_io(&ctx, run_page, exit, &mut stats) {
                None => {
                    io_pending = true;
                    Next::Continue
                }
                Some(VcpuExit::Hlt) => Next::Stop(ExitReason::Halted),
                Some(VcpuExit::Shutdown) => Next::Stop(ExitReason::TripleFault),
                Some(VcpuExit::SystemEvent(kind, _)) => Next::Stop(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::Error(format!("vCPU {} reported a guest crash", ctx.index)),
                    other => ExitReason::Error(format!("vCPU {}: unknown KVM system event {other}", ctx.index)),
                }),
                Some(VcpuExit::FailEntry(reason, cpu)) => Next::Stop(ExitReason::Error(format!(
                    "vCPU {}: KVM_EXIT_FAIL_ENTRY, hardware entry failure reason {reason:#x} on host cpu {cpu}\n{}",
                    ctx.index,
                    describe_registers(&vcpu)
                ))),
                Some(VcpuExit::InternalError) => Next::InternalError,
                Some(VcpuExit::IrqWindowOpen) | Some(VcpuExit::Intr) => Next::Continue,
                #[cfg(target_arch = "riscv64")]
                Some(VcpuExit::Unsupported(KVM_EXIT_RISCV_SBI)) => {
                    stats.sbi_exits += 1;
                    answer_sbi(&mut vcpu, &ctx);
                    Next::Continue
                }
                Some(other) => Next::Unexpected(format!("{other:?}")),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                stats.interrupted += 1;
                vcpu.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) => Next::Stop(ExitReason::Error(format!(
                "vCPU {}: KVM_RUN failed: {e}",
                ctx.index
            ))),
        };
        ctx.live.publish(&stats);
        match next {
            Next::Continue => {}
            Next::Stop(reason) => {
                ctx.exit.request(reason);
                break;
            }
            Next::Unexpected(what) => {
                ctx.exit.request(ExitReason::Error(format!(
                    "vCPU {}: unexpected KVM exit {what}\n{}",
                    ctx.index,
                    describe_registers(&vcpu)
                )));
                break;
            }
            Next::InternalError => {
                let run = vcpu.get_kvm_run();
                // SAFETY: the exit is KVM_EXIT_INTERNAL_ERROR, so `internal`
                // is the valid member of the union.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                let data: Vec<String> = internal.data[..n]
                    .iter()
                    .map(|d| format!("{d:#x}"))
                    .collect();
                ctx.exit.request(ExitReason::Error(format!(
                    "vCPU {}: KVM internal error, suberror {} data [{}]\n{}",
                    ctx.index,
                    internal.suberror,
                    data.join(", "),
                    describe_registers(&vcpu)
                )));
                break;
            }
        }
    }
    drop(registration);
    ctx.control.unregister_thread(ctx.index);
    stats
}
