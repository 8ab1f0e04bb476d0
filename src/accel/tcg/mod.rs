//! The software CPU ("TCG" after QEMU's Tiny Code Generator): a softmmu TLB
//! in QEMU's design, translated-block caching with self-modifying-code
//! detection, the riscv64 hart with its two tiers (an interpreter of
//! pre-decoded blocks, and x86-64 host code for hot blocks), and the
//! executable arena that host code lives in.

#[cfg(target_arch = "x86_64")]
pub mod code_buffer;
pub mod code_pages;
pub mod pause;
pub mod riscv64;
pub mod signals;
pub mod tlb;
