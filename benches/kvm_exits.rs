//! KVM exit benchmarks: `cargo bench --bench kvm_exits` (see
//! `kvm_exits_x86.rs`). The guests are x86 code under KVM, so other hosts
//! (which do not build the x86_64 machine) have nothing to measure.

#[cfg(target_arch = "x86_64")]
mod kvm_exits_x86;

fn main() {
    #[cfg(target_arch = "x86_64")]
    kvm_exits_x86::main();
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("kvm_exits: x86_64 guests under KVM need an x86_64 host; nothing to measure");
}
