//! The Rust library API: build a VM, start it on its own thread, wait for
//! console output, type into it, pause, resume, read counters, stop it.
//! Dropping a [`RunningVm`] stops it and joins its threads, also when a
//! test panics, so no thread, descriptor or socket outlives it.
//!
//! ```no_run
//! use std::time::Duration;
//! use ember::{VmBuilder, GuestArch};
//!
//! let vm = VmBuilder::new(GuestArch::Riscv64)
//!     .kernel("Image")
//!     .initrd("initramfs.cpio.gz")
//!     .cmdline("console=ttyS0 panic=-1")
//!     .memory_mib(256)
//!     .start()?;
//! vm.wait_for_output("login:", Duration::from_secs(30))?;
//! vm.send_input(b"root\n");
//! vm.pause()?;
//! println!("{}", vm.counters());
//! vm.resume()?;
//! let outcome = vm.stop()?;
//! # Ok::<(), ember::InstanceError>(())
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::api::{ControlError, VmControl, VmState};
use crate::arch::GuestArch;
use crate::vmm::config::{ConsoleKind, DiskSpec, NetSpec, VmConfig, DEFAULT_CMDLINE_RISCV64};
use crate::vmm::console::{ConsoleInput, ConsoleOutput, OutputCapture};
use crate::vmm::error::VmError;
use crate::vmm::exit::ExitReason;
use crate::vmm::live::LiveVm;
use crate::vmm::vm::{RestoreOptions, Vm};

/// Errors of the library API.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot start the VM thread: {0}")]
    Thread(std::io::Error),
    #[error("timed out after {timeout:?} waiting for {pattern:?} in the console output")]
    Timeout { pattern: String, timeout: Duration },
    #[error("the VM thread panicked")]
    Panicked,
}

/// Describes a VM; [`VmBuilder::start`] runs it.
#[derive(Clone, Debug)]
pub struct VmBuilder {
    config: VmConfig,
}

impl VmBuilder {
    /// A VM of `arch` with the defaults of `ember run` (512 MiB, one vCPU),
    /// console output captured for [`RunningVm::wait_for_output`] and no
    /// console input but [`RunningVm::send_input`].
    pub fn new(arch: GuestArch) -> Self {
        let mut config = VmConfig {
            arch,
            console_input: ConsoleInput::None,
            console_output: ConsoleOutput::Capture(OutputCapture::new()),
            ..VmConfig::default()
        };
        if arch == GuestArch::Riscv64 {
            config.cmdline = DEFAULT_CMDLINE_RISCV64.to_string();
        }
        VmBuilder { config }
    }

    /// Starts from a full configuration (console output is captured).
    pub fn from_config(mut config: VmConfig) -> Self {
        config.console_output = ConsoleOutput::Capture(OutputCapture::new());
        config.console_input = ConsoleInput::None;
        VmBuilder { config }
    }

    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.kernel = Some(path.into());
        self
    }
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.initrd = Some(path.into());
        self
    }
    pub fn firmware(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.firmware = Some(path.into());
        self
    }
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.config.cmdline = cmdline.into();
        self
    }
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.config.memory = mib << 20;
        self
    }
    pub fn cpus(mut self, cpus: u8) -> Self {
        self.config.cpus = cpus;
        self
    }
    pub fn disk(mut self, disk: DiskSpec) -> Self {
        self.config.disks.push(disk);
        self
    }
    pub fn net(mut self, net: NetSpec) -> Self {
        self.config.nets.push(net);
        self
    }
    pub fn rng(mut self, on: bool) -> Self {
        self.config.rng = on;
        self
    }
    pub fn console(mut self, kind: ConsoleKind) -> Self {
        self.config.console = kind;
        self
    }
    /// Port of an isa-debug-exit device (x86_64).
    pub fn debug_exit(mut self, port: u16) -> Self {
        self.config.debug_exit = Some(port);
        self
    }

    /// The configuration as built so far.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Restores the VM saved in snapshot directory `dir` (taken with
    /// [`RunningVm::snapshot`], the API's `snapshot` or `ember ctl
    /// snapshot`; riscv64 or x86_64, as the snapshot's manifest says) and
    /// runs it on a new thread; it continues where it was.
    pub fn restore(dir: impl AsRef<std::path::Path>) -> Result<RunningVm, InstanceError> {
        let dir = dir.as_ref();
        let output = OutputCapture::new();
        let options = RestoreOptions {
            console_input: ConsoleInput::None,
            console_output: ConsoleOutput::Capture(output.clone()),
            ..Default::default()
        };
        let vm = Vm::restore(dir, options)?;
        let control = vm.control();
        RunningVm::spawn(control, output, move || vm.run().map(|o| o.reason))
    }

    /// Builds the VM and runs it on a new thread.
    pub fn start(mut self) -> Result<RunningVm, InstanceError> {
        // The builder always captures the console; keep it that way even
        // if that ever changes.
        let output = match &self.config.console_output {
            ConsoleOutput::Capture(c) => c.clone(),
            _ => {
                let c = OutputCapture::new();
                self.config.console_output = ConsoleOutput::Capture(c.clone());
                c
            }
        };
        let vm = Vm::new(self.config)?;
        let control = vm.control();
        RunningVm::spawn(control, output, move || vm.run().map(|o| o.reason))
    }
}

/// A VM running on its own thread. Dropping it stops the VM and joins it.
pub struct RunningVm {
    control: Arc<LiveVm>,
    output: OutputCapture,
    thread: Option<JoinHandle<Result<ExitReason, VmError>>>,
}

impl RunningVm {
    /// Runs `run` on a new thread. The VM counts as running from here on,
    /// so the caller never sees `Created` after `start`; whatever way `run`
    /// ends, the VM ends `ShutDown`.
    fn spawn(
        control: Arc<LiveVm>,
        output: OutputCapture,
        run: impl FnOnce() -> Result<ExitReason, VmError> + Send + 'static,
    ) -> Result<RunningVm, InstanceError> {
        control.set_running();
        let live = control.clone();
        let thread = std::thread::Builder::new()
            .name("ember-vm".into())
            .spawn(move || {
                let result = run();
                live.set_shut_down();
                result
            })
            .map_err(InstanceError::Thread)?;
        Ok(RunningVm {
            control,
            output,
            thread: Some(thread),
        })
    }

    /// The control interface (the same one the API socket serves).
    pub fn control(&self) -> &Arc<LiveVm> {
        &self.control
    }

    pub fn state(&self) -> VmState {
        self.control.state()
    }

    /// Waits until the console output contains `pattern`; returns all the
    /// output so far.
    pub fn wait_for_output(
        &self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, InstanceError> {
        match self.output.wait_for(pattern, timeout) {
            (true, text) => Ok(text),
            (false, _) => Err(InstanceError::Timeout {
                pattern: pattern.to_string(),
                timeout,
            }),
        }
    }

    /// The console output so far.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Types into the guest's console.
    pub fn send_input(&self, bytes: &[u8]) {
        self.control.send_input(bytes);
    }

    pub fn pause(&self) -> Result<VmState, InstanceError> {
        Ok(self.control.pause()?)
    }

    pub fn resume(&self) -> Result<VmState, InstanceError> {
        Ok(self.control.resume()?)
    }

    /// Writes a snapshot of the (paused) VM to `dir`; restore it with
    /// [`VmBuilder::restore`] or `ember run --restore DIR`. riscv64 on the
    /// software CPU and x86_64 under KVM.
    ///
    /// A directory that is not empty is refused; use
    /// [`RunningVm::snapshot_with`] with `force` to replace an earlier
    /// snapshot.
    pub fn snapshot(&self, dir: impl AsRef<std::path::Path>) -> Result<(), InstanceError> {
        Ok(self.control.snapshot(dir.as_ref())?)
    }

    /// [`RunningVm::snapshot`] with options.
    pub fn snapshot_with(
        &self,
        dir: impl AsRef<std::path::Path>,
        options: &crate::vmm::snapshot::SnapshotOptions,
    ) -> Result<(), InstanceError> {
        Ok(self.control.snapshot_with(dir.as_ref(), options)?)
    }

    /// Counters as JSON (see `docs/api.md`).
    pub fn counters(&self) -> serde_json::Value {
        self.control.counters()
    }

    /// Whether the VM has ended by itself (guest power-off, reset, error).
    pub fn has_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the VM to end by itself, up to `timeout`; stops it then.
    pub fn wait(mut self, timeout: Duration) -> Result<ExitReason, InstanceError> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.has_ended() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.finish()
    }

    /// Stops the VM and returns why it ended (the user-quit reason unless
    /// it had already ended by itself).
    pub fn stop(mut self) -> Result<ExitReason, InstanceError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<ExitReason, InstanceError> {
        let Some(thread) = self.thread.take() else {
            return Ok(ExitReason::UserQuit);
        };
        let _ = self.control.stop();
        match thread.join() {
            Ok(result) => Ok(result?),
            Err(_) => Err(InstanceError::Panicked),
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
