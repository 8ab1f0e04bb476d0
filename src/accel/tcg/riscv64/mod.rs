//! The riscv64 software CPU: RV64IMAFDC + Zicsr + Zifencei in S and U mode,
//! Sv39/Sv48, with the VMM providing the SBI.

pub mod block;
pub mod decode;
pub mod exec;
pub mod fpu;
pub mod hart;
pub mod hart_threads;
pub mod jit;
#[cfg(target_arch = "x86_64")]
pub mod jit_x86_64;
pub mod mmu;
pub mod sbi;
pub mod system;

pub use hart::{Hart, HartState, HartStats};
pub use system::{RiscvSystem, TcgMemoryListener};
