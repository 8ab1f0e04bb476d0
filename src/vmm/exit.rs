//! How a running VM ends: the first reason reported wins, and the event loop
//! is woken through an eventfd, so nothing polls.

use std::fmt;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset or reboot (i8042 pulse, KVM system event);
    /// like Firecracker, Ember ends the VM rather than restarting it.
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// The guest wrote `value` to the isa-debug-exit port; the VMM exits with
    /// `(value << 1) | 1`.
    DebugExit(u32),
    /// A vCPU halted with no way to be woken (no in-kernel irqchip).
    Halted,
    /// The user asked to quit (Ctrl-a x, a signal, an API call).
    UserQuit,
    /// Something failed; the text says what.
    Error(String),
}

impl ExitReason {
    /// The process exit status `ember run` reports for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff
            | ExitReason::Reset
            | ExitReason::Halted
            | ExitReason::UserQuit => 0,
            ExitReason::DebugExit(v) => ((v << 1) | 1) as i32 & 0xff,
            ExitReason::TripleFault => 2,
            ExitReason::Error(_) => 1,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::TripleFault => write!(f, "guest triple fault (vCPU shutdown)"),
            ExitReason::DebugExit(v) => write!(f, "guest wrote {v:#x} to the debug-exit port"),
            ExitReason::Halted => write!(f, "guest halted with interrupts off"),
            ExitReason::UserQuit => write!(f, "stopped by the user"),
            ExitReason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// Shared by vCPUs, devices and the event loop: records the first exit
/// reason and wakes whoever waits on [`ExitSignal::eventfd`].
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl ExitSignal {
    /// A new, unsignalled exit.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Reports why the VM must stop; later reports are ignored.
    pub fn request(&self, reason: ExitReason) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none() {
            *current = Some(reason);
            // Writing 1 to an eventfd only fails if the counter would
            // overflow, which one write per VM cannot do.
            let _ = self.event.write(1);
        }
    }

    /// The reason, once one was reported.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the VM has been asked to stop.
    pub fn is_requested(&self) -> bool {
        self.reason().is_some()
    }

    /// Becomes readable once an exit is requested.
    pub fn eventfd(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes_follow_qemu() {
        let exit = ExitSignal::new().unwrap();
        assert!(!exit.is_requested());
        exit.request(ExitReason::DebugExit(0x31));
        exit.request(ExitReason::PowerOff);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(0x31)));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
        assert_eq!(ExitReason::DebugExit(0x31).exit_code(), 0x63);
        assert_eq!(ExitReason::DebugExit(0).exit_code(), 1);
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_ne!(ExitReason::TripleFault.exit_code(), 0);
    }
}
