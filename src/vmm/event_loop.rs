//! The VMM thread's event loop, shared by every machine: it waits for the
//! exit signal, feeds console input to the guest's console (the serial port
//! or virtio-console), and runs the virtio devices' queue work, whatever
//! runs the guest (KVM vCPU threads or software harts).

use std::sync::Arc;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::vmm::console::{
    ConsoleInput, ConsoleReader, DeliverInput, ExitWatcher, InputSource, RawTerminal,
};
use crate::vmm::error::VmError;
use crate::vmm::exit::ExitSignal;
use crate::vmm::seccomp::{confine_thread, SeccompMode, ThreadKind};

/// What the event loop serves besides the exit signal.
pub struct EventLoopParts {
    /// Where console input comes from.
    pub input: ConsoleInput,
    /// Where it goes (the UART's or virtio-console's input buffer).
    pub deliver: DeliverInput,
    /// Device subscribers (virtio transports).
    pub devices: Vec<Box<dyn MutEventSubscriber + Send>>,
    /// The filter this thread installs once the loop is set up, after
    /// every other thread of the VM has started (a thread inherits the
    /// filters of the thread that starts it).
    pub seccomp: SeccompMode,
}

/// Runs until `exit` is requested. Puts the terminal in raw mode while
/// reading stdin.
pub fn run_event_loop(exit: &Arc<ExitSignal>, parts: EventLoopParts) -> Result<(), VmError> {
    let mut events: EventManager<Box<dyn MutEventSubscriber + Send>> =
        EventManager::new().map_err(VmError::EventLoop)?;
    events.add_subscriber(Box::new(ExitWatcher::new(exit.clone())));
    for device in parts.devices {
        events.add_subscriber(device);
    }
    // A VM started in the background of an interactive shell (`ember run
    // ... &`) must leave the terminal alone: reading it or switching it to
    // raw mode would get the whole process stopped (SIGTTIN/SIGTTOU).
    let input = if parts.input == ConsoleInput::Stdin && stdin_is_background_terminal() {
        eprintln!(
            "ember: running in the background: console input is off (the terminal \
             belongs to the shell); use --serial-input to give the guest input"
        );
        ConsoleInput::None
    } else {
        parts.input
    };
    let _raw = if let Some(source) = InputSource::open(&input).map_err(VmError::Console)? {
        let raw = matches!(source, InputSource::Stdin).then(RawTerminal::enter);
        events.add_subscriber(Box::new(ConsoleReader::new(
            source,
            parts.deliver,
            exit.clone(),
        )));
        raw
    } else {
        None
    };
    confine_thread(ThreadKind::Vmm, parts.seccomp).map_err(VmError::Seccomp)?;
    while !exit.is_requested() {
        match events.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(VmError::EventLoop(e)),
        }
    }
    Ok(())
}

/// Whether standard input is a terminal whose foreground process group is
/// not ours (a job started with `&` from an interactive shell).
fn stdin_is_background_terminal() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only inspect descriptor 0 and
    // this process; no memory is passed.
    unsafe {
        if libc::isatty(0) != 1 {
            return false;
        }
        let foreground = libc::tcgetpgrp(0);
        foreground > 0 && foreground != libc::getpgrp()
    }
}

/// Console input for the UART.
pub fn serial_input(serial: &Arc<crate::devices::serial::Serial>) -> DeliverInput {
    let serial = serial.clone();
    Arc::new(move |bytes: &[u8]| serial.enqueue_input(bytes))
}

/// Console input for virtio-console (hvc0).
pub fn virtio_console_input(
    input: &Arc<crate::devices::virtio::console::ConsoleInput>,
) -> DeliverInput {
    let input = input.clone();
    Arc::new(move |bytes: &[u8]| {
        input.enqueue_input(bytes);
    })
}

/// Where console input goes: virtio-console when the VM has it
/// (`--console virtio`), the UART otherwise.
pub fn console_target(
    virtio: &crate::vmm::virtio::VirtioDevices,
    serial: &Arc<crate::devices::serial::Serial>,
) -> DeliverInput {
    match &virtio.console_input {
        Some(hvc) => virtio_console_input(hvc),
        None => serial_input(serial),
    }
}
