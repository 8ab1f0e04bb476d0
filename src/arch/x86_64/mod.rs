//! The x86_64 PC-style microVM.
