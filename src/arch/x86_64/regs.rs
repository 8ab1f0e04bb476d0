//! The register state a vCPU starts the guest kernel with.
//!
//! Written by hand: linux-loader loads the kernel and writes its boot
//! parameters, but the CPU state each boot protocol requires is the VMM's
//! job.
//!
//! - Linux 64-bit boot protocol: long mode with paging on (identity map of
//!   the first 4 GiB), `CS` = `__BOOT_CS` (0x10), `DS`/`ES`/`SS` =
//!   `__BOOT_DS` (0x18), interrupts off, `%rsi` = zero page.
//! - PVH: 32-bit protected mode with paging off, flat 4 GiB code and data
//!   segments, a TSS in `TR`, CR4 clear, interrupts off, `%ebx` =
//!   `hvm_start_info`.
//!
//! Application processors with KVM's in-kernel irqchip start through
//! INIT/SIPI from the BSP, so they need no registers from us: only CPUID,
//! the boot MSRs, the FPU defaults and the LAPIC LINT pins
//! ([`setup_secondary_vcpu`] plus `setup_cpuid` and [`setup_lapic`]).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::boot::{BootInfo, BootProtocol};
use super::gdt::{
    boot_segment, write_gdt_and_idt, CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, GDT_LIMIT,
    IDT_LIMIT, TSS_SELECTOR,
};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START};
use super::msr::set_boot_msrs;
use super::paging::write_identity_page_tables;
use super::ArchError;

pub use super::lapic::setup_lapic;

/// CR0: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type, hard-wired to 1 on every CPU since the 486.
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension, required for long mode.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always 1; IF, TF and VM stay clear.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Default x87 control word (all exceptions masked, 64-bit precision) and
/// SSE control/status (all exceptions masked), as after FNINIT / reset.
pub const FPU_FCW: u16 = 0x37f;
pub const FPU_MXCSR: u32 = 0x1f80;

/// The special registers for `protocol`, starting from the vCPU's current
/// ones (which keep KVM's APIC base and the like).
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: &BootProtocol) -> kvm_sregs {
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = IDT_LIMIT;

    let data = boot_segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = boot_segment(TSS_SELECTOR);

    match protocol {
        BootProtocol::Linux64 { .. } => {
            sregs.cs = boot_segment(CODE64_SELECTOR);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh { .. } => {
            sregs.cs = boot_segment(CODE32_SELECTOR);
            // PE set, every other writable bit clear (so caches on, no
            // paging); CR4 all clear.
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// The general registers at the kernel's entry.
pub fn boot_regs(boot: &BootInfo) -> kvm_regs {
    let mut regs = kvm_regs {
        rip: boot.entry.0,
        rflags: RFLAGS_RESERVED,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    match boot.protocol {
        BootProtocol::Linux64 { zero_page } => regs.rsi = zero_page.0,
        BootProtocol::Pvh { start_info } => regs.rbx = start_info.0,
    }
    regs
}

/// The FPU state after reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    }
}

fn kvm(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> ArchError {
    move |source| ArchError::Kvm { what, source }
}

/// Prepares the boot vCPU to enter the kernel loaded as `boot` says:
/// writes the GDT, an empty IDT and (for the 64-bit entry) the identity
/// page tables into `mem`, then sets the special and general registers,
/// the FPU and the boot MSRs. CPUID (`setup_cpuid`) and the LAPIC
/// ([`setup_lapic`]) are set separately.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap<()>,
    boot: &BootInfo,
) -> Result<(), ArchError> {
    write_gdt_and_idt(mem)?;
    if let BootProtocol::Linux64 { .. } = boot.protocol {
        write_identity_page_tables(mem)?;
    }
    let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&boot_sregs(sregs, &boot.protocol))
        .map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(boot))
        .map_err(kvm("KVM_SET_REGS"))?;
    setup_secondary_vcpu(vcpu)
}

/// What every vCPU needs besides CPUID and the LAPIC, and all an
/// application processor needs: the FPU defaults and the boot MSRs. Its
/// registers come from the INIT/SIPI sequence the guest sends.
pub fn setup_secondary_vcpu(vcpu: &VcpuFd) -> Result<(), ArchError> {
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("KVM_SET_FPU"))?;
    set_boot_msrs(vcpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::cpuid::setup_cpuid;
    use crate::arch::x86_64::gdt::BOOT_GDT;
    use crate::arch::x86_64::layout::{
        HIMEM_START, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, PVH_START_INFO, ZERO_PAGE_START,
    };
    use crate::arch::x86_64::memory_map::build_pc_memory;
    use crate::memory::{GuestRam, MemoryTree, Unassigned};
    use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::{
        Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
    };

    fn linux64() -> BootInfo {
        BootInfo {
            entry: GuestAddress(HIMEM_START),
            protocol: BootProtocol::Linux64 {
                zero_page: GuestAddress(ZERO_PAGE_START),
            },
        }
    }

    fn pvh() -> BootInfo {
        BootInfo {
            entry: GuestAddress(HIMEM_START),
            protocol: BootProtocol::Pvh {
                start_info: GuestAddress(PVH_START_INFO),
            },
        }
    }

    /// Decodes a descriptor read back from guest memory, independently of
    /// `gdt::segment_from_gdt`, and checks it against a segment register.
    fn assert_matches_gdt(mem: &GuestMemoryMmap<()>, seg: &kvm_segment, name: &str) {
        let d: u64 = mem
            .read_obj(GuestAddress(GDT_START + u64::from(seg.selector & !7)))
            .unwrap();
        let bit = |n: u32| ((d >> n) & 1) as u8;
        let base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
        let raw_limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
        let limit = if bit(55) == 1 {
            raw_limit * 4096 + 4095
        } else {
            raw_limit
        };
        assert_eq!(seg.base, base, "{name} base");
        assert_eq!(seg.limit, limit, "{name} limit");
        assert_eq!(seg.type_, ((d >> 40) & 0xf) as u8, "{name} type");
        assert_eq!(seg.s, bit(44), "{name} S");
        assert_eq!(seg.dpl, ((d >> 45) & 3) as u8, "{name} DPL");
        assert_eq!(seg.present, bit(47), "{name} P");
        assert_eq!(seg.l, bit(53), "{name} L");
        assert_eq!(seg.db, bit(54), "{name} D/B");
        assert_eq!(seg.g, bit(55), "{name} G");
        assert_eq!(seg.unusable, 0, "{name} unusable");
    }

    #[test]
    fn gdt_in_memory_decodes_to_the_segment_registers() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_gdt_and_idt(&mem).unwrap();
        let long = boot_sregs(kvm_sregs::default(), &linux64().protocol);
        let flat = boot_sregs(kvm_sregs::default(), &pvh().protocol);
        for (sregs, mode) in [(&long, "long mode"), (&flat, "PVH")] {
            assert_eq!(sregs.gdt.base, GDT_START);
            assert_eq!(usize::from(sregs.gdt.limit) + 1, BOOT_GDT.len() * 8);
            for (seg, name) in [
                (&sregs.cs, "cs"),
                (&sregs.ds, "ds"),
                (&sregs.es, "es"),
                (&sregs.fs, "fs"),
                (&sregs.gs, "gs"),
                (&sregs.ss, "ss"),
                (&sregs.tr, "tr"),
            ] {
                assert!(
                    u32::from(seg.selector) + 7 <= u32::from(sregs.gdt.limit),
                    "{mode} {name}"
                );
                assert_matches_gdt(&mem, seg, &format!("{mode} {name}"));
            }
        }
        // Linux's 64-bit protocol: __BOOT_CS = 0x10, __BOOT_DS = 0x18.
        assert_eq!((long.cs.selector, long.ds.selector), (0x10, 0x18));
        assert_eq!((long.cs.l, long.cs.db), (1, 0));
        assert_eq!(
            long.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(long.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(long.efer, EFER_LME | EFER_LMA);
        assert_eq!(long.cr3, PML4_START);
        // PVH: flat 32-bit code, paging off, TSS limit 0x67.
        assert_eq!((flat.cs.l, flat.cs.db, flat.cs.limit), (0, 1, 0xffff_ffff));
        assert_eq!((flat.cr0 & X86_CR0_PG, flat.cr4, flat.efer), (0, 0, 0));
        assert_eq!((flat.tr.base, flat.tr.limit), (0, 0x67));
        // The IDT is empty.
        assert_eq!(mem.read_obj::<u64>(GuestAddress(IDT_START)).unwrap(), 0);
    }

    #[test]
    fn general_registers() {
        let r = boot_regs(&linux64());
        assert_eq!((r.rip, r.rsi, r.rflags), (HIMEM_START, ZERO_PAGE_START, 2));
        assert_eq!(r.rsp, BOOT_STACK_POINTER);
        let r = boot_regs(&pvh());
        assert_eq!(
            (r.rip, r.rbx, r.rsi, r.rflags),
            (HIMEM_START, PVH_START_INFO, 0, 2)
        );
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    /// `mov dx, 0x3f8; mov al, 'X'; out dx, al; hlt` — the same bytes in
    /// 32-bit and 64-bit mode.
    const SERIAL_X: [u8; 8] = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'X', 0xee, 0xf4];

    /// Boots `SERIAL_X` at 1 MiB through `boot` and checks the vCPU writes
    /// 'X' to port 0x3f8, then halts. Returns the registers at the halt.
    fn run_blob(boot: &BootInfo) -> Option<(kvm_regs, kvm_sregs)> {
        let kvm = match Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                eprintln!("note: /dev/kvm cannot be opened ({e}); skipping the KVM boot test");
                return None;
            }
        };
        let vm = kvm.create_vm().unwrap();
        // Intel without unrestricted guest needs these; harmless elsewhere.
        vm.set_tss_address(KVM_TSS_ADDRESS as usize).unwrap();
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .unwrap();

        let mut tree = MemoryTree::new();
        let pc = build_pc_memory(&mut tree, 4 << 20).unwrap();
        let space = tree
            .add_address_space("memory", pc.system, Unassigned::Zero)
            .unwrap();
        let ram = GuestRam::from_view(&space.view()).unwrap();
        let mem = ram.memory();
        for (slot, region) in mem.iter().enumerate() {
            let host = region.get_host_address(MemoryRegionAddress(0)).unwrap();
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping belongs to `ram`, which outlives the VM
            // (both are dropped at the end of this function, the VM first).
            unsafe { vm.set_user_memory_region(region) }.unwrap();
        }
        mem.write_slice(&SERIAL_X, boot.entry).unwrap();

        let mut vcpu = vm.create_vcpu(0).unwrap();
        setup_cpuid(&kvm, &vcpu, 0, 1).unwrap();
        setup_boot_vcpu(&vcpu, mem, boot).unwrap();
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(port, data) => assert_eq!((port, data), (0x3f8, &b"X"[..])),
            other => panic!("expected an OUT to 0x3f8, got {other:?}"),
        }
        match vcpu.run().unwrap() {
            VcpuExit::Hlt => {}
            other => panic!("expected HLT, got {other:?}"),
        }
        let state = (vcpu.get_regs().unwrap(), vcpu.get_sregs().unwrap());
        drop(vcpu);
        drop(vm);
        Some(state)
    }

    #[test]
    fn boots_into_long_mode_under_kvm() {
        let Some((regs, sregs)) = run_blob(&linux64()) else {
            return;
        };
        assert_eq!(regs.rip, HIMEM_START + SERIAL_X.len() as u64);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_ne!(sregs.efer & EFER_LMA, 0, "long mode active");
        assert_eq!(sregs.cs.l, 1);
    }

    #[test]
    fn boots_into_pvh_protected_mode_under_kvm() {
        let Some((regs, sregs)) = run_blob(&pvh()) else {
            return;
        };
        assert_eq!(regs.rbx, PVH_START_INFO);
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0, "paging off");
        assert_eq!(sregs.efer & EFER_LMA, 0);
        assert_eq!((sregs.cs.db, sregs.cs.l), (1, 0));
    }
}
