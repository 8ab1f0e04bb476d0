//! The VMM thread's event loop, shared by every machine: it waits for the
//! exit signal and feeds console input to the serial port, whatever runs
//! the guest (KVM vCPU threads or software harts).

use std::sync::Arc;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::devices::serial::Serial;
use crate::vmm::console::{ConsoleInput, ConsoleReader, ExitWatcher, InputSource, RawTerminal};
use crate::vmm::exit::ExitSignal;
use crate::vmm::vm::VmError;

/// Runs until `exit` is requested. Puts the terminal in raw mode while
/// reading stdin.
pub fn run_event_loop(
    exit: &Arc<ExitSignal>,
    input: &ConsoleInput,
    serial: &Arc<Serial>,
) -> Result<(), VmError> {
    let mut events: EventManager<Box<dyn MutEventSubscriber + Send>> =
        EventManager::new().map_err(VmError::EventLoop)?;
    events.add_subscriber(Box::new(ExitWatcher::new(exit.clone())));
    let _raw = if let Some(source) = InputSource::open(input).map_err(VmError::Console)? {
        let raw = matches!(source, InputSource::Stdin).then(RawTerminal::enter);
        let serial = serial.clone();
        let deliver = Arc::new(move |bytes: &[u8]| serial.enqueue_input(bytes));
        events.add_subscriber(Box::new(ConsoleReader::new(source, deliver, exit.clone())));
        raw
    } else {
        None
    };
    while !exit.is_requested() {
        match events.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(VmError::EventLoop(e)),
        }
    }
    Ok(())
}
