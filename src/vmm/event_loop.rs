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
    let _raw = if let Some(source) = InputSource::open(&parts.input).map_err(VmError::Console)? {
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
