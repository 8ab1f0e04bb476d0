//! Saving and loading the state KVM keeps for an x86_64 VM: per vCPU the
//! registers, FPU/SSE/AVX state, MSRs, local APIC, multiprocessing state
//! and pending events; per VM the in-kernel 8259s and IOAPIC, the PIT and
//! kvmclock. Snapshots (`crate::vmm::snapshot_x86`) are built from these.
//!
//! The kvm-bindings structures are stored as their bytes (kvm-bindings
//! derives zerocopy's `IntoBytes`/`FromBytes` for them with its `serde`
//! feature), hex-encoded, and read back only when the length is exactly
//! the structure's size: a snapshot from a build with other bindings is
//! refused instead of being padded or cut.
//!
//! Ordering follows Firecracker and QEMU (comments at each step say why).
//! Capture needs the vCPU out of `KVM_RUN` with any I/O it exited for
//! completed (see `VcpuControl::run_parked`), and every other vCPU stopped
//! too: `KVM_GET_VCPU_EVENTS` and `KVM_GET_MP_STATE` are not stable while
//! another vCPU can send it an IPI.

use std::fmt::Write as _;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Why KVM state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: vmm_sys_util::errno::Error,
    },
    #[error("KVM refused MSR {index:#x} (value {value:#x}) on restore")]
    MsrRefused { index: u32, value: u64 },
    #[error("{0} MSRs do not fit one KVM_GET/SET_MSRS call")]
    TooManyMsrs(usize),
    #[error("{0} CPUID entries do not fit one KVM_SET_CPUID2 call")]
    TooManyCpuidEntries(usize),
}

fn ioctl(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> StateError {
    move |source| StateError::Ioctl { what, source }
}

/// A kvm-bindings structure stored as hex of its bytes, exact size
/// checked when read. Compared and copied as bytes (not every kvm-bindings
/// structure implements `Clone` or `PartialEq`).
pub struct Blob<T>(pub T);

impl<T: IntoBytes + Immutable> PartialEq for Blob<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl<T: IntoBytes + FromBytes + Immutable> Clone for Blob<T> {
    fn clone(&self) -> Self {
        // Same type, same size: the read cannot fail.
        Blob(T::read_from_bytes(self.0.as_bytes()).unwrap_or_else(|_| T::new_zeroed()))
    }
}

impl<T> std::fmt::Debug for Blob<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Blob<{}>({} bytes)",
            std::any::type_name::<T>(),
            std::mem::size_of::<T>()
        )
    }
}

impl<T: IntoBytes + Immutable> Serialize for Blob<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.0.as_bytes();
        let mut text = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            // Writing to a String cannot fail.
            let _ = write!(text, "{b:02x}");
        }
        serializer.serialize_str(&text)
    }
}

impl<'de, T: FromBytes> Deserialize<'de> for Blob<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(deserializer)?;
        let expected = std::mem::size_of::<T>();
        if text.len() != expected * 2 {
            return Err(D::Error::custom(format!(
                "{} holds {} bytes, this build's structure has {expected}",
                std::any::type_name::<T>(),
                text.len() / 2
            )));
        }
        let bytes = text
            .as_bytes()
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .ok_or_else(|| D::Error::custom("not hexadecimal"))
            })
            .collect::<Result<Vec<u8>, _>>()?;
        T::read_from_bytes(&bytes)
            .map(Blob)
            .map_err(|_| D::Error::custom("wrong size"))
    }
}

/// `kvm_fpu` field by field (kvm-bindings derives no byte view for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFpu {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for SavedFpu {
    fn from(f: &kvm_fpu) -> Self {
        SavedFpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&SavedFpu> for kvm_fpu {
    fn from(f: &SavedFpu) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// The x87/SSE/AVX state: the whole XSAVE area where KVM has
/// `KVM_CAP_XSAVE`, else the legacy FXSAVE subset (x87 and SSE only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedFpuState {
    Xsave(Box<Blob<kvm_xsave>>),
    Fpu(Box<SavedFpu>),
}

/// What this KVM offers for saving vCPU state; probed once per VM.
#[derive(Clone, Debug)]
pub struct VcpuStateCaps {
    pub xsave: bool,
    pub xcrs: bool,
    /// The MSRs to save: [`SAVED_MSRS`] that KVM lists as supported.
    pub msrs: Vec<u32>,
}

impl VcpuStateCaps {
    pub fn probe(kvm: &Kvm) -> VcpuStateCaps {
        let supported = kvm.get_msr_index_list().ok().map(|l| l.as_slice().to_vec());
        let msrs = SAVED_MSRS
            .iter()
            .copied()
            // Without the list, try them all; the ones KVM refuses to read
            // are skipped at capture.
            .filter(|m| supported.as_ref().is_none_or(|s| s.contains(m)))
            .collect();
        VcpuStateCaps {
            xsave: kvm.check_extension(Cap::Xsave),
            xcrs: kvm.check_extension(Cap::Xcrs),
            msrs,
        }
    }
}

/// MSRs a guest's execution depends on and that the other ioctls do not
/// cover (EFER, FS/GS base and the APIC base come with the special
/// registers): those the VMM sets at boot, the system-call and
/// time-stamp ones, PAT and MTRRs (memory types), the TSC deadline timer,
/// and KVM's paravirtual MSRs (kvmclock, async page faults, steal time,
/// PV EOI), whose guest-physical addresses KVM writes to.
pub const SAVED_MSRS: &[u32] = &[
    0x10,  // IA32_TSC
    0x3b,  // IA32_TSC_ADJUST
    0x48,  // IA32_SPEC_CTRL
    0x174, // IA32_SYSENTER_CS
    0x175, // IA32_SYSENTER_ESP
    0x176, // IA32_SYSENTER_EIP
    0x1a0, // IA32_MISC_ENABLE
    0x277, // IA32_PAT
    0x2ff, // IA32_MTRR_DEF_TYPE
    0x200, // IA32_MTRR_PHYSBASE0..PHYSMASK7
    0x201,
    0x202,
    0x203,
    0x204,
    0x205,
    0x206,
    0x207,
    0x208,
    0x209,
    0x20a,
    0x20b,
    0x20c,
    0x20d,
    0x20e,
    0x20f,
    0x250, // IA32_MTRR_FIX64K_00000
    0x258, // IA32_MTRR_FIX16K_80000, _A0000
    0x259,
    0x268, // IA32_MTRR_FIX4K_C0000 .. _F8000
    0x269,
    0x26a,
    0x26b,
    0x26c,
    0x26d,
    0x26e,
    0x26f,
    0x6e0,       // IA32_TSC_DEADLINE
    0xda0,       // IA32_XSS
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    0x11,        // MSR_KVM_WALL_CLOCK
    0x12,        // MSR_KVM_SYSTEM_TIME
    0x4b56_4d00, // MSR_KVM_WALL_CLOCK_NEW
    0x4b56_4d01, // MSR_KVM_SYSTEM_TIME_NEW
    0x4b56_4d02, // MSR_KVM_ASYNC_PF_EN
    0x4b56_4d03, // MSR_KVM_STEAL_TIME
    0x4b56_4d04, // MSR_KVM_PV_EOI_EN
    0x4b56_4d05, // MSR_KVM_POLL_CONTROL
    0x4b56_4d06, // MSR_KVM_ASYNC_PF_INT
];

/// One vCPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: Blob<kvm_regs>,
    pub sregs: Blob<kvm_sregs>,
    pub fpu: SavedFpuState,
    pub xcrs: Option<Blob<kvm_xcrs>>,
    pub debugregs: Option<Blob<kvm_debugregs>>,
    /// (index, value); MSRs KVM would not read are left out.
    pub msrs: Vec<(u32, u64)>,
    /// `None` without the in-kernel irqchip.
    pub lapic: Option<Blob<kvm_lapic_state>>,
    pub mp_state: Blob<kvm_mp_state>,
    pub vcpu_events: Blob<kvm_vcpu_events>,
    /// The CPUID the guest saw, restored instead of this host's so that
    /// the guest's view of its CPU does not change under it (as
    /// Firecracker saves it). Absent in snapshots taken before it was
    /// saved; those get the restoring host's CPUID.
    #[serde(default)]
    pub cpuid: Option<Vec<SavedCpuidEntry>>,
}

/// One CPUID leaf as KVM_GET_CPUID2 gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCpuidEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl From<&kvm_cpuid_entry2> for SavedCpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        SavedCpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<&SavedCpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: &SavedCpuidEntry) -> Self {
        kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}

/// Sets a saved CPUID on a new vCPU (before any other state: the CPUID
/// decides which MSRs and XSAVE features KVM accepts).
pub fn restore_cpuid(vcpu: &VcpuFd, entries: &[SavedCpuidEntry]) -> Result<(), StateError> {
    let entries: Vec<kvm_cpuid_entry2> = entries.iter().map(kvm_cpuid_entry2::from).collect();
    let cpuid = CpuId::from_entries(&entries)
        .map_err(|_| StateError::TooManyCpuidEntries(entries.len()))?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))
}

/// Reads `indices` one `KVM_GET_MSRS` call at a time: KVM stops at the
/// first MSR it cannot read and returns how many it did, so the failing
/// one is skipped and the rest are asked for again.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| StateError::TooManyMsrs(entries.len()))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        let read = read.min(rest.len());
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // Skip the MSR that failed (if any) and go on after it.
        rest = rest.get(read + 1..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Captures a stopped vCPU. `KVM_GET_MP_STATE` goes first because it makes
/// KVM process pending INIT/SIPI events, which changes registers and the
/// LAPIC; `KVM_GET_VCPU_EVENTS` goes last because the other reads may
/// still settle injected events (Firecracker's order).
pub fn capture_vcpu(
    vcpu: &VcpuFd,
    caps: &VcpuStateCaps,
    irqchip: bool,
) -> Result<VcpuState, StateError> {
    let mp_state = vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let fpu = if caps.xsave {
        SavedFpuState::Xsave(Box::new(Blob(
            vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?,
        )))
    } else {
        SavedFpuState::Fpu(Box::new(SavedFpu::from(
            &vcpu.get_fpu().map_err(ioctl("KVM_GET_FPU"))?,
        )))
    };
    let xcrs = if caps.xcrs {
        Some(Blob(vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?))
    } else {
        None
    };
    // Old kernels lack KVM_GET_DEBUGREGS; only guests using hardware
    // breakpoints would notice.
    let debugregs = vcpu.get_debug_regs().ok().map(Blob);
    let lapic = if irqchip {
        Some(Blob(vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?))
    } else {
        None
    };
    let msrs = read_msrs(vcpu, &caps.msrs)?;
    // Kernels before 4.x lack KVM_GET_CPUID2 for a vCPU; the restore then
    // uses the host's CPUID, as for older snapshots.
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .ok()
        .map(|c| c.as_slice().iter().map(SavedCpuidEntry::from).collect());
    let vcpu_events = vcpu
        .get_vcpu_events()
        .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        regs: Blob(regs),
        sregs: Blob(sregs),
        fpu,
        xcrs,
        debugregs,
        msrs,
        lapic,
        mp_state: Blob(mp_state),
        vcpu_events: Blob(vcpu_events),
        cpuid,
    })
}

/// Loads a saved vCPU into a freshly created one (CPUID already set).
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), StateError> {
    // Special registers first: they set CR0/CR4/EFER and the APIC base,
    // which decide how the rest is interpreted (the APIC base must be in
    // place before KVM_SET_LAPIC).
    vcpu.set_sregs(&state.sregs.0)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    // KVM_SET_REGS drops a pending exception; KVM_SET_VCPU_EVENTS below
    // brings it back.
    vcpu.set_regs(&state.regs.0)
        .map_err(ioctl("KVM_SET_REGS"))?;
    match &state.fpu {
        SavedFpuState::Xsave(x) => {
            // SAFETY: Ember never enables KVM_CAP_XSAVE2 (dynamically
            // sized XSAVE areas such as AMX), so KVM_SET_XSAVE reads exactly
            // size_of::<kvm_xsave>() bytes, the size of `x.0`.
            unsafe { vcpu.set_xsave(&x.0) }.map_err(ioctl("KVM_SET_XSAVE"))?
        }
        SavedFpuState::Fpu(f) => vcpu
            .set_fpu(&kvm_fpu::from(f.as_ref()))
            .map_err(ioctl("KVM_SET_FPU"))?,
    }
    if let Some(x) = &state.xcrs {
        vcpu.set_xcrs(&x.0).map_err(ioctl("KVM_SET_XCRS"))?;
    }
    if let Some(d) = &state.debugregs {
        vcpu.set_debug_regs(&d.0)
            .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    }
    // The LAPIC before the MSRs: KVM accepts IA32_TSC_DEADLINE only once
    // the LAPIC is in TSC-deadline mode.
    if let Some(l) = &state.lapic {
        vcpu.set_lapic(&l.0).map_err(ioctl("KVM_SET_LAPIC"))?;
    }
    if !state.msrs.is_empty() {
        let entries: Vec<kvm_msr_entry> = state
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs =
            Msrs::from_entries(&entries).map_err(|_| StateError::TooManyMsrs(entries.len()))?;
        let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if let Some(&(index, value)) = state.msrs.get(set) {
            return Err(StateError::MsrRefused { index, value });
        }
    }
    vcpu.set_vcpu_events(&state.vcpu_events.0)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    // Last: a runnable or halted state must not be overridden by the
    // INIT processing the other calls can trigger.
    vcpu.set_mp_state(state.mp_state.0)
        .map_err(ioctl("KVM_SET_MP_STATE"))?;
    Ok(())
}

/// The VM-wide in-kernel devices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmKvmState {
    /// Master and slave 8259, then the IOAPIC (`None` without the
    /// in-kernel irqchip).
    pub irqchip: Option<[Blob<kvm_irqchip>; 3]>,
    pub pit: Option<Blob<kvm_pit_state2>>,
    /// kvmclock: the guest's notion of time continues from here.
    pub clock: Blob<kvm_clock_data>,
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// Captures the irqchip, PIT and clock of a VM whose vCPUs are stopped.
pub fn capture_vm(vm: &VmFd, irqchip: bool) -> Result<VmKvmState, StateError> {
    let (chips, pit) = if irqchip {
        let mut chips = CHIPS.map(|chip_id| {
            Blob(kvm_irqchip {
                chip_id,
                ..Default::default()
            })
        });
        for chip in &mut chips {
            vm.get_irqchip(&mut chip.0)
                .map_err(ioctl("KVM_GET_IRQCHIP"))?;
        }
        let pit = vm.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?;
        (Some(chips), Some(Blob(pit)))
    } else {
        (None, None)
    };
    let clock = vm.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?;
    Ok(VmKvmState {
        irqchip: chips,
        pit,
        clock: Blob(clock),
    })
}

/// Loads the VM-wide state into a VM whose irqchip and PIT exist (when the
/// snapshot has them) and whose vCPUs have not run.
pub fn restore_vm(vm: &VmFd, state: &VmKvmState) -> Result<(), StateError> {
    if let Some(chips) = &state.irqchip {
        for chip in chips {
            vm.set_irqchip(&chip.0).map_err(ioctl("KVM_SET_IRQCHIP"))?;
        }
    }
    if let Some(pit) = &state.pit {
        vm.set_pit2(&pit.0).map_err(ioctl("KVM_SET_PIT2"))?;
    }
    // KVM_GET_CLOCK reports flags (TSC_STABLE, REALTIME, HOST_TSC) that
    // KVM_SET_CLOCK refuses or would interpret; only the value counts.
    let clock = kvm_clock_data {
        clock: state.clock.0.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_check_their_size() {
        let regs = kvm_regs {
            rip: 0x10_0000,
            rax: 0xdead_beef,
            rflags: 2,
            ..Default::default()
        };
        let json = serde_json::to_string(&Blob(regs)).unwrap();
        assert_eq!(json.len(), 2 + 2 * std::mem::size_of::<kvm_regs>());
        let back: Blob<kvm_regs> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, regs);

        let short = format!("\"{}\"", &json[1..json.len() - 3]);
        let err = serde_json::from_str::<Blob<kvm_regs>>(&short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("this build's structure has 144"), "{err}");
        let bad = format!("\"zz{}", &json[3..]);
        assert!(serde_json::from_str::<Blob<kvm_regs>>(&bad).is_err());
    }

    #[test]
    fn fpu_round_trips() {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            xmm: [[7; 16]; 16],
            ..Default::default()
        };
        let saved = SavedFpu::from(&fpu);
        let json = serde_json::to_string(&saved).unwrap();
        let back: SavedFpu = serde_json::from_str(&json).unwrap();
        assert_eq!(kvm_fpu::from(&back), fpu);
    }

    /// A fresh vCPU's state survives capture and restore into another VM.
    #[test]
    fn a_vcpu_round_trips_under_kvm() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("note: /dev/kvm cannot be opened; skipping");
            return;
        };
        let caps = VcpuStateCaps::probe(&kvm);
        assert!(caps.msrs.contains(&0x10), "the TSC is always saved");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(Default::default()).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        // A CPUID the restoring host would not give: the supported table
        // with one leaf's register changed, so the restored vCPU can only
        // show it if the saved table, not the host's, was loaded.
        let mut table = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let marked = table
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == 0)
            .expect("leaf 0");
        marked.ebx ^= 0x5a5a;
        let want = SavedCpuidEntry::from(&*marked);
        vcpu.set_cpuid2(&table).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rbx = 0x1234_5678;
        regs.rip = 0xfff0;
        vcpu.set_regs(&regs).unwrap();
        let state = capture_vcpu(&vcpu, &caps, true).unwrap();
        let vm_state = capture_vm(&vm, true).unwrap();
        let json = serde_json::to_vec(&state).unwrap();
        let back: VcpuState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, state);

        let vm2 = kvm.create_vm().unwrap();
        vm2.create_irq_chip().unwrap();
        vm2.create_pit2(Default::default()).unwrap();
        restore_vm(&vm2, &vm_state).unwrap();
        let vcpu2 = vm2.create_vcpu(0).unwrap();
        let saved = back.cpuid.as_deref().expect("CPUID saved");
        assert!(saved.contains(&want), "{saved:x?}");
        restore_cpuid(&vcpu2, saved).unwrap();
        restore_vcpu(&vcpu2, &back).unwrap();
        let leaf0 = vcpu2.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
        assert!(
            leaf0
                .as_slice()
                .iter()
                .any(|e| SavedCpuidEntry::from(e) == want),
            "the restored vCPU does not have the saved CPUID"
        );
        let regs2 = vcpu2.get_regs().unwrap();
        assert_eq!((regs2.rbx, regs2.rip), (0x1234_5678, 0xfff0));
        assert_eq!(vcpu2.get_sregs().unwrap(), state.sregs.0);
    }
}
