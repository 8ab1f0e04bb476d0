//! The control plane: a versioned JSON protocol over a Unix socket
//! (`--api-socket`), its server, and the `ember ctl` client. All three
//! drive a running VM only through [`VmControl`], which both machines
//! implement, so the socket, the command line and the Rust library API
//! share one lifecycle state machine.

pub mod control;

pub use control::{ControlError, VmControl, VmState};
