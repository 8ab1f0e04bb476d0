//! The x86_64 parts of the KVM vCPU loop: what a register dump shows.

use kvm_ioctls::VcpuFd;

/// The registers of a vCPU as text, for error reports.
pub fn describe_registers(vcpu: &VcpuFd) -> String {
    let mut text = String::new();
    match vcpu.get_regs() {
        Ok(r) => text.push_str(&format!(
            "rip={:#018x} rsp={:#018x} rflags={:#x}\n\
             rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n\
             rsi={:#018x} rdi={:#018x} rbp={:#018x}\n\
             r8={:#018x} r9={:#018x} r10={:#018x} r11={:#018x}\n\
             r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rbp,
            r.r8,
            r.r9,
            r.r10,
            r.r11,
            r.r12,
            r.r13,
            r.r14,
            r.r15
        )),
        Err(e) => text.push_str(&format!("(registers unavailable: {e})\n")),
    }
    match vcpu.get_sregs() {
        Ok(s) => text.push_str(&format!(
            "cs={:#06x} base={:#x} l={} db={} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            s.cs.selector, s.cs.base, s.cs.l, s.cs.db, s.cr0, s.cr3, s.cr4, s.efer
        )),
        Err(e) => text.push_str(&format!("(segment registers unavailable: {e})")),
    }
    text
}
