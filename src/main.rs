//! The `ember` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ember::accel::tcg::riscv64::jit::JitPolicy;
use ember::accel::AccelChoice;
use ember::arch::riscv64::irqchip::IrqchipChoice;
use ember::arch::GuestArch;
use ember::memory::{map_file, mtree_text, MtreeOptions};
use ember::vmm::config::{
    parse_cpus, parse_memory_size, parse_port, ConsoleKind, DiskSpec, NetSpec,
};
use ember::vmm::config_file::VmSettings;
use ember::vmm::console::{
    install_termination_handlers, ConsoleInput, ConsoleOutput, SharedOutput,
};
use ember::vmm::console_writer::EXIT_DRAIN_TIMEOUT;
use ember::vmm::exit::ExitReason;
use ember::vmm::lifecycle::CpuCounters;
use ember::vmm::seccomp::SeccompMode;
use ember::vmm::vm::{RestoreOptions, Vm, VmOutcome};

#[derive(Parser)]
#[command(name = "ember", version, about = "A lightweight KVM microVM monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM: x86_64 on KVM, riscv64 on KVM (riscv64 hosts) or
    /// the software CPU. With no kernel and no firmware, an x86_64 VM boots
    /// the small built-in guest.
    Run(Box<RunArgs>),
    /// Print a memory map as QEMU's `info mtree` does.
    Mtree {
        /// The memory map, a TOML file (see resources/maps/).
        #[arg(long, value_name = "FILE")]
        map: PathBuf,
        /// Print the flattened views (`info mtree -f`).
        #[arg(short = 'f', long = "flatview")]
        flatview: bool,
        /// Also print disabled regions (`info mtree -D`).
        #[arg(short = 'D', long = "disabled")]
        disabled: bool,
    },
    /// Control a running VM through its API socket (docs/api.md): ping,
    /// version, info, state, pause, resume, power-button, reset, stop,
    /// mtree [-f], accel-info, counters, snapshot [--force] DIR.
    Ctl {
        /// The VM's API socket (`ember run --api-socket PATH`).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Print the raw JSON result instead of text.
        #[arg(long)]
        json: bool,
        /// The operation.
        op: String,
        /// Its arguments (e.g. `-f` for mtree).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

// Settings that have defaults are `Option`s without a clap default, so that
// a flag left out can be told from a flag given the default value: only
// given flags override the config file. The defaults are applied after
// merging (VmSettings::into_vm_config) and shown in the help text by hand.
#[derive(clap::Args)]
struct RunArgs {
    /// Read the VM's description from a TOML file (docs/config.md); flags
    /// given as well override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Linux kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    // Not `requires = "kernel"`: the kernel may come from the config file
    // (VmSettings::into_vm_config checks the pair).
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Guest architecture: x86_64 or riscv64 (default: the host's).
    #[arg(long)]
    arch: Option<GuestArch>,
    #[arg(long, help = format!(
        "Kernel command line (default for x86_64: \"{}\"; for riscv64: \"{}\")",
        ember::vmm::config::DEFAULT_CMDLINE,
        ember::vmm::config::DEFAULT_CMDLINE_RISCV64,
    ))]
    cmdline: Option<String>,
    /// Guest RAM, e.g. 512M or 2G [default: 512M]
    #[arg(long, value_parser = parse_memory_size)]
    memory: Option<u64>,
    /// Number of vCPUs, 1 to 254 [default: 1]
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<u8>,
    /// Flat firmware image, mapped as ROM ending at 4 GiB and started at
    /// the reset vector.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    firmware: Option<PathBuf>,
    /// Add an isa-debug-exit device at PORT: a guest write of v ends Ember
    /// with exit status (v << 1) | 1.
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    debug_exit: Option<u16>,
    /// Accelerator: kvm, tcg or auto (KVM when it can run the guest)
    /// [default: auto]
    #[arg(long)]
    accel: Option<AccelChoice>,
    /// KVM device (default: /dev/kvm).
    #[arg(long, hide = true)]
    kvm_device: Option<PathBuf>,
    /// Serial input: stdin, none, or a file or UNIX socket path [default:
    /// stdin]
    #[arg(long)]
    serial_input: Option<ConsoleInput>,
    /// Serial output: stdout or a file path [default: stdout]
    #[arg(long)]
    serial_output: Option<ConsoleOutput>,
    /// Print the machine's memory tree and flat views, then exit.
    #[arg(long)]
    print_mtree: bool,
    /// Report start-up time and VMM memory use on stderr at the end (and,
    /// on the software CPU, instruction and TLB counters).
    #[arg(long)]
    timings: bool,
    /// Write the guest's device tree blob to FILE before running (riscv64).
    #[arg(long, value_name = "FILE")]
    dump_dtb: Option<PathBuf>,
    /// A virtio-blk disk: path=FILE[,readonly=on][,id=NAME]. Repeat for
    /// more disks (vda, vdb, ...).
    #[arg(long, value_name = "SPEC")]
    disk: Vec<DiskSpec>,
    /// A virtio-net interface on a TAP device: tap=NAME[,mac=MAC]. An
    /// existing TAP is opened; a missing one is created if permitted.
    #[arg(long, value_name = "SPEC")]
    net: Vec<NetSpec>,
    /// A virtio-rng device (entropy from the host's getrandom): `--rng`
    /// or `--rng=on` adds it, `--rng=off` leaves it out even when the
    /// config file asks for it.
    #[arg(long, value_name = "on|off", num_args = 0..=1, require_equals = true,
          default_missing_value = "on", value_parser = parse_switch)]
    rng: Option<bool>,
    /// Guest console: serial (ttyS0) or virtio (hvc0; add console=hvc0 to
    /// the command line) [default: serial]
    #[arg(long)]
    console: Option<ConsoleKind>,
    /// Serve the control API (docs/api.md) on a Unix socket at PATH
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Software CPU: compile guest code that runs often to host code (hot),
    /// every block before it first runs (eager), or interpret only (off)
    /// [default: hot]
    #[arg(long, value_name = "POLICY")]
    tcg_jit: Option<JitPolicy>,
    /// riscv64 interrupt controller: plic (Ember's), aia (KVM's in-kernel
    /// APLIC and IMSICs, Linux 6.5+ hosts; guests need Linux 6.10+), or
    /// auto (aia where KVM has it) [default: auto]
    #[arg(long, value_name = "KIND")]
    irqchip: Option<IrqchipChoice>,
    /// Restore the VM (riscv64, or x86_64 under KVM) saved in snapshot
    /// directory DIR and continue it. The machine (memory, CPUs, kernel,
    /// command line, disks, nets, rng, console; on x86_64 also firmware and
    /// debug-exit) comes from the snapshot, so those flags are ignored;
    /// --serial-input, --serial-output, --api-socket and --timings apply.
    /// --disk and --net replace where a saved disk or TAP lives: a --disk
    /// with id=NAME the saved disk of that id, otherwise the N-th --disk
    /// the N-th saved disk, the N-th --net the N-th saved TAP (readonly
    /// and mac must stay as saved).
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// Per-thread system call filters: on (a refused call ends the VM with
    /// a message naming it), log (allowed, logged by the kernel) or off
    /// [default: on]
    #[arg(long, value_name = "on|log|off")]
    seccomp: Option<SeccompMode>,
    /// Confine the VM's filesystem access with Landlock to the files it
    /// uses (best effort: kernels without Landlock run unconfined)
    /// [default: on]
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    landlock: Option<bool>,
    /// A directory snapshots may be written beneath while Landlock confines
    /// the VM (repeatable) [default: the working and temporary directories]
    #[arg(long, value_name = "DIR")]
    snapshot_dir: Vec<PathBuf>,
}

/// `on`/`off` (also true/false, yes/no) for a switch flag.
fn parse_switch(v: &str) -> Result<bool, String> {
    ember::vmm::config::parse_on_off(v).ok_or_else(|| format!("'{v}': use on or off"))
}

/// A repeatable flag's values, or `None` when it was not given.
fn given<T: Clone>(values: &[T]) -> Option<Vec<T>> {
    (!values.is_empty()).then(|| values.to_vec())
}

impl RunArgs {
    /// The confinement the flags ask for (a restore takes no config file).
    fn confinement(&self) -> ember::vmm::config::Confinement {
        let defaults = ember::vmm::config::Confinement::default();
        ember::vmm::config::Confinement {
            seccomp: self.seccomp.unwrap_or(defaults.seccomp),
            landlock: self.landlock.unwrap_or(defaults.landlock),
            snapshot_dirs: self.snapshot_dir.clone(),
        }
    }

    /// The settings these flags give; flags left out are `None` so that
    /// the config file's values stand.
    fn settings(&self) -> VmSettings {
        VmSettings {
            arch: self.arch,
            accel: self.accel,
            kvm_device: self.kvm_device.clone(),
            memory: self.memory,
            cpus: self.cpus,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            firmware: self.firmware.clone(),
            debug_exit: self.debug_exit,
            // Absent, the file decides.
            rng: self.rng,
            console: self.console,
            serial_input: self.serial_input.clone(),
            serial_output: self.serial_output.clone(),
            // A repeatable flag given at least once replaces the file's
            // list.
            disks: given(&self.disk),
            nets: given(&self.net),
            api_socket: self.api_socket.clone(),
            tcg_jit: self.tcg_jit,
            irqchip: self.irqchip,
            seccomp: self.seccomp,
            landlock: self.landlock,
            snapshot_dirs: given(&self.snapshot_dir),
        }
    }
}

/// Resident memory of this process minus the guest RAM it has touched, in
/// KiB: VmRSS from /proc/self/status minus the resident guest pages.
fn vmm_rss_kib(guest_resident_kib: u64) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(rss.saturating_sub(guest_resident_kib))
}

/// Picks the accelerator: KVM runs only guests of the host's architecture,
/// so `auto` falls back to the software CPU for the others and when
/// /dev/kvm cannot be opened, saying so in one line.
fn resolve_accel(
    accel: AccelChoice,
    arch: GuestArch,
    kvm_path: &std::path::Path,
) -> anyhow::Result<AccelChoice> {
    let host = GuestArch::host();
    match (accel, arch == host) {
        (AccelChoice::Kvm, false) => anyhow::bail!(
            "KVM cannot run {} guests on this {} host; use --accel tcg",
            arch.name(),
            host.name()
        ),
        (AccelChoice::Auto, false) => {
            eprintln!(
                "ember: KVM cannot run {} guests on a {} host; using the software CPU (TCG)",
                arch.name(),
                host.name()
            );
            Ok(AccelChoice::Tcg)
        }
        // A riscv64 host without a usable /dev/kvm (no hypervisor
        // extension, no CONFIG_KVM, no permission) still runs riscv64
        // guests, on the software CPU.
        (AccelChoice::Auto, true) if arch == GuestArch::Riscv64 => {
            if ember::vmm::riscv_vm::kvm_usable(kvm_path) {
                Ok(AccelChoice::Kvm)
            } else {
                eprintln!(
                    "ember: {} cannot be opened; using the software CPU (TCG)",
                    kvm_path.display()
                );
                Ok(AccelChoice::Tcg)
            }
        }
        // x86_64 guests only run on KVM; opening it later reports why it
        // cannot be used (and --print-mtree works without it).
        (AccelChoice::Auto, true) => Ok(AccelChoice::Kvm),
        (choice, _) => Ok(choice),
    }
}

/// `--timings`: per-CPU counters of the run.
fn report_cpus(outcome: &VmOutcome) {
    let secs = outcome.run_time.map_or(0.0, |t| t.as_secs_f64()).max(1e-9);
    let harts = match &outcome.cpus {
        CpuCounters::Tcg(harts) => harts.as_slice(),
        #[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
        CpuCounters::Kvm(vcpus) => {
            for (i, v) in vcpus.iter().enumerate() {
                eprintln!(
                    "ember: vcpu{i}: {} KVM_RUN calls, {} port I/O, {} MMIO and {} SBI exits, \
                     {} interrupted",
                    v.runs, v.pio_exits, v.mmio_exits, v.sbi_exits, v.interrupted
                );
            }
            return;
        }
    };
    for (i, h) in harts.iter().enumerate() {
        let lookups = h.tlb.fills + h.tlb.victim_hits;
        eprintln!(
            "ember: hart{i}: {} instructions in {} blocks ({:.1} M instructions/s), {} translations, \
             {} compiled to host code ({} KiB), {} chain links, {} jump-cache hits, {} TLB fills, {} victim hits, {} full and {} page flushes, {} MMIO, {} SMC invalidations, \
             {} traps, {} interrupts, {} SBI calls, {} WFI sleeps ({} slow-path lookups)",
            h.instructions,
            h.blocks,
            h.instructions as f64 / secs / 1e6,
            h.translations,
            h.compilations,
            h.code_bytes / 1024,
            h.chained,
            h.jump_cache_hits,
            h.tlb.fills,
            h.tlb.victim_hits,
            h.tlb.full_flushes,
            h.tlb.page_flushes,
            h.mmio,
            h.smc_invalidations,
            h.traps,
            h.interrupts,
            h.sbi_calls,
            h.wfi_sleeps,
            lookups,
        );
    }
    eprintln!("ember: run time {:.3} s", secs);
}

/// Gives guest output still queued a bounded time to reach stdout or the
/// file (a reader that stopped reading must not keep the process alive;
/// the writer thread, if stuck, ends with the process), then says in one
/// line what did not arrive.
fn finish_console_output(output: &SharedOutput) {
    let s = output.drain(EXIT_DRAIN_TIMEOUT);
    if s.dropped + s.failed + s.pending > 0 {
        eprintln!(
            "ember: console output: {} bytes dropped (buffer full, the reader did not keep up), \
             {} lost to write errors, {} not written at exit",
            s.dropped, s.failed, s.pending
        );
    }
}

/// Runs a built or restored VM to its end and turns the outcome into the
/// exit status.
fn run_built_vm(vm: Vm, timings: bool, started: Instant) -> anyhow::Result<ExitCode> {
    install_termination_handlers(&vm.exit_signal())?;
    let output = vm.control().console_output().clone();
    let guest_ram = vm.guest_ram_resident_kib_probe();
    let outcome = vm.run();
    finish_console_output(&output);
    let outcome = outcome?;
    if timings {
        if let Some(first) = outcome.first_run {
            let ms = first.duration_since(started).as_secs_f64() * 1e3;
            match outcome.accel {
                "kvm" => eprintln!("ember: start-up to first KVM_RUN: {ms:.3} ms"),
                _ => eprintln!("ember: start-up to first instruction: {ms:.3} ms"),
            }
        }
        if let Some(kib) = vmm_rss_kib(guest_ram()) {
            eprintln!("ember: VMM resident memory excluding guest RAM: {kib} KiB");
        }
        report_cpus(&outcome);
        eprintln!("ember: the VM ended: {}", outcome.reason);
    }
    match &outcome.reason {
        ExitReason::PowerOff | ExitReason::Reset | ExitReason::UserQuit => {}
        other => eprintln!("ember: {other}"),
    }
    Ok(ExitCode::from(outcome.reason.exit_code() as u8))
}

fn run_vm(args: RunArgs, started: Instant) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.restore {
        let manifest = ember::vmm::snapshot::read_manifest(dir)
            .with_context(|| format!("restore {}", dir.display()))?;
        let arch: GuestArch = manifest
            .arch
            .parse()
            .map_err(|e| anyhow::anyhow!("restore {}: {e}", dir.display()))?;
        if let Some(asked) = args.arch {
            anyhow::ensure!(
                asked == arch,
                "--restore: {} holds a {} snapshot, not {}",
                dir.display(),
                arch.name(),
                asked.name()
            );
        }
        let options = RestoreOptions {
            console_input: args.serial_input.clone().unwrap_or(ConsoleInput::Stdin),
            console_output: args.serial_output.clone().unwrap_or(ConsoleOutput::Stdout),
            api_socket: args.api_socket.clone(),
            tcg_jit: args.tcg_jit.unwrap_or_default(),
            disks: args.disk.clone(),
            nets: args.net.clone(),
            confinement: args.confinement(),
        };
        let restore_started = Instant::now();
        let vm = Vm::restore(dir, options).with_context(|| format!("restore {}", dir.display()))?;
        if args.timings {
            eprintln!(
                "ember: snapshot restored in {:.3} ms",
                restore_started.elapsed().as_secs_f64() * 1e3
            );
        }
        return run_built_vm(vm, args.timings, started);
    }
    let file = match &args.config {
        Some(path) => VmSettings::load(path)?,
        None => VmSettings::default(),
    };
    let mut config = file.overridden_by(args.settings()).into_vm_config()?;
    let arch = config.arch;
    if arch == GuestArch::X86_64 && !cfg!(target_arch = "x86_64") {
        // Before resolve_accel, which would offer the software CPU.
        return Err(ember::vmm::error::VmError::x86_64_needs_x86_64_host().into());
    }
    if arch == GuestArch::X86_64 && args.dump_dtb.is_some() {
        anyhow::bail!("--dump-dtb is for riscv64 guests (x86_64 guests get ACPI tables)");
    }
    config.accel = resolve_accel(config.accel, arch, &config.kvm_path)?;
    // The kernel may come from the config file, so ask the merged config.
    let has_kernel = config.kernel.is_some();
    let vm = Vm::new(config)?;
    if let Some(path) = &args.dump_dtb {
        vm.dump_dtb(path)?;
    }
    if args.print_mtree {
        print!("{}", vm.mtree());
        return Ok(ExitCode::SUCCESS);
    }
    if arch == GuestArch::Riscv64 && !has_kernel {
        // --dump-dtb alone is a complete request.
        if args.dump_dtb.is_some() {
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::bail!("riscv64 guests need a kernel (--kernel Image)");
    }
    run_built_vm(vm, args.timings, started)
}

fn run(cli: Cli, started: Instant) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_vm(*args, started),
        Command::Mtree {
            map,
            flatview,
            disabled,
        } => {
            let loaded = map_file::load_file(&map)
                .with_context(|| format!("memory map {}", map.display()))?;
            let text = mtree_text(&loaded.tree, MtreeOptions { flatview, disabled });
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl {
            socket,
            json,
            op,
            args,
        } => {
            let text = ember::api::client::ctl_main(&socket, &op, &args, json)?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    // Start-up is timed from here, before argument parsing.
    let started = Instant::now();
    let cli = Cli::parse();
    match run(cli, started) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ember: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated, leaving out a cause whose text
/// the message before it already ends with (many errors print their source
/// in their own message as well as returning it from `source()`, which
/// `{:#}` would show twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
