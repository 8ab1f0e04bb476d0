//! The software CPU ("TCG" after QEMU's Tiny Code Generator, although Ember
//! interprets pre-decoded blocks rather than generating host code): a
//! softmmu TLB in QEMU's design, translated-block caching with
//! self-modifying-code detection, and the riscv64 hart.

#[cfg(target_arch = "x86_64")]
pub mod code_buffer;
pub mod code_pages;
pub mod pause;
pub mod riscv64;
pub mod signals;
pub mod tlb;
