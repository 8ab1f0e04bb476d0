//! KVM exit benchmarks: `cargo bench --bench kvm_exits` (see
//! `kvm_exits_x86.rs` and `kvm_exits_riscv.rs`): guests of the host's own
//! architecture under KVM, against a bare kvm-ioctls loop.

#[cfg(target_arch = "riscv64")]
mod kvm_exits_riscv;
#[cfg(target_arch = "x86_64")]
mod kvm_exits_x86;

fn main() {
    #[cfg(target_arch = "x86_64")]
    kvm_exits_x86::main();
    #[cfg(target_arch = "riscv64")]
    kvm_exits_riscv::main();
    #[cfg(not(any(target_arch = "x86_64", target_arch = "riscv64")))]
    eprintln!("kvm_exits: KVM guests need an x86_64 or riscv64 host; nothing to measure");
}
