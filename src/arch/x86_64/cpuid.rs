//! CPUID for each vCPU: what KVM supports (`KVM_GET_SUPPORTED_CPUID`),
//! adjusted to describe this machine rather than the host.
//!
//! Written by hand: no rust-vmm crate filters CPUID. The topology is one
//! package of `cpu_count` cores with one thread each; vCPU `i` has APIC ID
//! `i`, matching the MP table. Changes, by leaf:
//!
//! - 0x1: APIC ID (EBX[31:24]), CLFLUSH line size 64 bytes (EBX[15:8]),
//!   logical processor count (EBX[23:16], with HTT set when > 1), the
//!   hypervisor bit (ECX[31]). TSC-deadline (ECX[24]) is set when KVM has
//!   `KVM_CAP_TSC_DEADLINE_TIMER` and an in-kernel LAPIC emulates it (KVM
//!   never lists it itself); without an in-kernel LAPIC, x2APIC, the APIC
//!   bit and TSC-deadline are cleared, since nothing would emulate them.
//! - 0x4 (Intel caches): cores per package; L1/L2 private to a core, L3
//!   shared by the package.
//! - 0x6 (thermal and power): cleared except ARAT (the LAPIC timer keeps
//!   running in deep C-states, true of KVM's emulated timer).
//! - 0xa (architectural PMU): cleared. A vPMU is not part of this machine
//!   (and on nested hosts it is often only half there).
//! - 0xb and 0x1f (extended topology): rebuilt: SMT level of 1 thread,
//!   core level of `cpu_count` cores, x2APIC ID in EDX.
//! - 0x8000_0001 ECX[1] (AMD CmpLegacy), 0x8000_0008 ECX (AMD core count
//!   and APIC ID size), 0x8000_001e (AMD topology extensions): set to the
//!   same topology when present.
//! - 0x4000_0000.. (hypervisor leaves): kept as KVM reports them, so the
//!   guest sees the "KVMKVMKVM" signature and KVM's paravirtual features.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};

use super::mptable::MAX_CPUS;
use super::ArchError;

/// Which vCPU the CPUID is for, and of how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub cpu_index: u8,
    pub cpu_count: u8,
}

/// What the host's KVM offers beyond the supported-CPUID list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFeatures {
    /// The vCPU has an in-kernel LAPIC (KVM_CREATE_IRQCHIP was called).
    pub in_kernel_lapic: bool,
    /// KVM can emulate the TSC-deadline timer.
    pub tsc_deadline: bool,
}

mod bits {
    pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;
    pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
    pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
    pub const LEAF1_EDX_APIC: u32 = 1 << 9;
    pub const LEAF1_EDX_HTT: u32 = 1 << 28;
    pub const LEAF6_EAX_ARAT: u32 = 1 << 2;
    pub const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
    /// CLFLUSH line size, in 8-byte units (64 bytes).
    pub const CLFLUSH_LINE: u32 = 8;
    pub const LEVEL_SMT: u32 = 1;
    pub const LEVEL_CORE: u32 = 2;
}

/// Bits needed to number `n` IDs: the APIC-ID shift of a level of `n`.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The extended-topology subleaves (0xb / 0x1f) for this vCPU: SMT, core,
/// then the terminating invalid level.
fn topology_leaves(function: u32, topo: Topology) -> [kvm_cpuid_entry2; 3] {
    let id = u32::from(topo.cpu_index);
    let count = u32::from(topo.cpu_count);
    let entry = |index: u32, eax: u32, ebx: u32, level: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level << 8) | index,
        edx: id,
        ..Default::default()
    };
    [
        // One thread per core: no SMT bits in the APIC ID.
        entry(0, 0, 1, bits::LEVEL_SMT),
        // `count` cores: the package ID starts above their bits.
        entry(1, id_bits(count), count, bits::LEVEL_CORE),
        // Level type 0 ends the enumeration.
        entry(2, 0, 0, 0),
    ]
}

/// Adjusts KVM's supported CPUID list for vCPU `topo.cpu_index`.
pub fn filter_cpuid(
    entries: &mut Vec<kvm_cpuid_entry2>,
    topo: Topology,
    host: HostFeatures,
) -> Result<(), ArchError> {
    if topo.cpu_count == 0 || topo.cpu_count > MAX_CPUS {
        return Err(ArchError::CpuCount {
            count: topo.cpu_count,
            max: MAX_CPUS,
        });
    }
    if topo.cpu_index >= topo.cpu_count {
        return Err(ArchError::CpuIndex {
            index: topo.cpu_index,
            count: topo.cpu_count,
        });
    }
    let id = u32::from(topo.cpu_index);
    let count = u32::from(topo.cpu_count);
    // Room for `count` core IDs (a power of two).
    let core_ids = 1u32 << id_bits(count);

    // Rebuild the topology leaves the host has (their subleaf count and
    // contents are the host's).
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    for function in [0xb, 0x1f] {
        let had = entries.iter().any(|e| e.function == function);
        entries.retain(|e| e.function != function);
        if had && max_basic >= function {
            entries.extend(topology_leaves(function, topo));
        }
    }

    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (id << 24) | (core_ids.min(255) << 16) | (bits::CLFLUSH_LINE << 8);
                e.ecx |= bits::LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= bits::LEAF1_EDX_HTT;
                } else {
                    e.edx &= !bits::LEAF1_EDX_HTT;
                }
                if host.in_kernel_lapic {
                    if host.tsc_deadline {
                        e.ecx |= bits::LEAF1_ECX_TSC_DEADLINE;
                    }
                } else {
                    e.ecx &= !(bits::LEAF1_ECX_X2APIC | bits::LEAF1_ECX_TSC_DEADLINE);
                    e.edx &= !bits::LEAF1_EDX_APIC;
                }
            }
            // Deterministic cache parameters; cache type 0 ends the list.
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { core_ids - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff)
                    | ((sharing.min(0xfff)) << 14)
                    | ((core_ids - 1).min(63) << 26);
            }
            6 => {
                e.eax &= bits::LEAF6_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0001 => {
                if count > 1 {
                    e.ecx |= bits::EXT1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !bits::EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 => {
                // NC (cores - 1) in ECX[7:0], APIC ID core bits in [15:12].
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
            }
            0x8000_001e => {
                // Extended APIC ID; core ID with 1 thread per core; node 0
                // of 1.
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Sets vCPU `cpu_index` of `cpu_count`'s CPUID from KVM's supported list,
/// filtered as the module documentation says. Call it after
/// `KVM_CREATE_IRQCHIP` (if any) so the LAPIC-dependent bits come out
/// right.
pub fn setup_cpuid(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    cpu_index: u8,
    cpu_count: u8,
) -> Result<(), ArchError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| ArchError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let mut entries = supported.as_slice().to_vec();
    let host = HostFeatures {
        // KVM_GET_LAPIC only works with an in-kernel LAPIC.
        in_kernel_lapic: vcpu.get_lapic().is_ok(),
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    filter_cpuid(
        &mut entries,
        Topology {
            cpu_index,
            cpu_count,
        },
        host,
    )?;
    let cpuid = CpuId::from_entries(&entries).map_err(|_| ArchError::TooManyEntries {
        what: "the CPUID table",
        count: entries.len(),
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(|source| ArchError::Kvm {
        what: "KVM_SET_CPUID2",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx: 0xdead_beef,
            ecx: 0x0bad_f00d,
            edx: 0x1234_5678,
            ..Default::default()
        }
    }

    fn host_like() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, 0x1f),
            leaf(1, 0, 0x000a_0655),
            leaf(4, 0, 0x121),    // L1 data
            leaf(4, 1, 0x122),    // L1 instruction
            leaf(4, 2, 0x143),    // L2
            leaf(4, 3, 0x163),    // L3
            leaf(4, 4, 0),        // end
            leaf(6, 0, 0x77),     // ARAT and more
            leaf(0xa, 0, 0x0704), // a PMU
            leaf(0xb, 0, 1),
            leaf(0xb, 1, 5),
            leaf(0x1f, 0, 1),
            leaf(0x4000_0000, 0, 0x4000_0001),
            leaf(0x8000_0001, 0, 0),
            leaf(0x8000_0008, 0, 0x3030),
            leaf(0x8000_001e, 0, 0),
        ]
    }

    const HOST: HostFeatures = HostFeatures {
        in_kernel_lapic: true,
        tsc_deadline: true,
    };

    fn filtered(index: u8, count: u8, host: HostFeatures) -> Vec<kvm_cpuid_entry2> {
        let mut e = host_like();
        filter_cpuid(
            &mut e,
            Topology {
                cpu_index: index,
                cpu_count: count,
            },
            host,
        )
        .unwrap();
        e
    }

    fn find(e: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *e.iter()
            .find(|x| x.function == function && x.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    #[test]
    fn leaf_1_describes_this_vcpu() {
        let e = filtered(3, 6, HOST);
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 8, "addressable IDs");
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH 64 bytes");
        assert_ne!(l1.ecx & bits::LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & bits::LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & bits::LEAF1_EDX_HTT, 0);
        assert_eq!(l1.eax, 0x000a_0655, "signature kept");

        let single = find(&filtered(0, 1, HOST), 1, 0);
        assert_eq!(single.edx & bits::LEAF1_EDX_HTT, 0);

        let no_lapic = HostFeatures {
            in_kernel_lapic: false,
            tsc_deadline: true,
        };
        let l1 = find(&filtered(0, 1, no_lapic), 1, 0);
        assert_eq!(
            l1.ecx & (bits::LEAF1_ECX_X2APIC | bits::LEAF1_ECX_TSC_DEADLINE),
            0
        );
        assert_eq!(l1.edx & bits::LEAF1_EDX_APIC, 0);
    }

    #[test]
    fn extended_topology_is_rebuilt() {
        let e = filtered(2, 3, HOST);
        for function in [0xb, 0x1f] {
            assert_eq!(e.iter().filter(|x| x.function == function).count(), 3);
            let smt = find(&e, function, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
            let core = find(&e, function, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
            let end = find(&e, function, 2);
            assert_eq!((end.eax, end.ebx, end.ecx >> 8), (0, 0, 0));
            assert_ne!(smt.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        }
    }

    #[test]
    fn caches_power_and_pmu() {
        let e = filtered(0, 4, HOST);
        assert_eq!(find(&e, 4, 0).eax >> 26, 3, "cores per package - 1");
        assert_eq!((find(&e, 4, 0).eax >> 14) & 0xfff, 0, "L1 is per core");
        assert_eq!((find(&e, 4, 2).eax >> 14) & 0xfff, 0, "L2 is per core");
        assert_eq!((find(&e, 4, 3).eax >> 14) & 0xfff, 3, "L3 is shared");
        assert_eq!(find(&e, 4, 3).eax & 0x3fff, 0x163, "cache description kept");
        assert_eq!(find(&e, 4, 4).eax, 0);
        let l6 = find(&e, 6, 0);
        assert_eq!(
            (l6.eax, l6.ebx, l6.ecx, l6.edx),
            (bits::LEAF6_EAX_ARAT, 0, 0, 0)
        );
        let pmu = find(&e, 0xa, 0);
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
        assert_eq!(find(&e, 0x4000_0000, 0), leaf(0x4000_0000, 0, 0x4000_0001));
        assert_eq!(find(&e, 0x8000_0008, 0).ecx & 0xf0ff, 0x2003);
        assert_ne!(find(&e, 0x8000_0001, 0).ecx & bits::EXT1_ECX_CMP_LEGACY, 0);
    }

    #[test]
    fn bad_counts_are_refused() {
        let mut e = host_like();
        let topo = |cpu_index, cpu_count| Topology {
            cpu_index,
            cpu_count,
        };
        assert!(matches!(
            filter_cpuid(&mut e, topo(0, 0), HOST),
            Err(ArchError::CpuCount { .. })
        ));
        assert!(matches!(
            filter_cpuid(&mut e, topo(0, 255), HOST),
            Err(ArchError::CpuCount { .. })
        ));
        assert!(matches!(
            filter_cpuid(&mut e, topo(2, 2), HOST),
            Err(ArchError::CpuIndex { .. })
        ));
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(254), 8);
    }

    #[test]
    fn kvm_accepts_the_filtered_cpuid() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("note: /dev/kvm cannot be opened; skipping the CPUID test");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        for index in 0..2u8 {
            let vcpu = vm.create_vcpu(u64::from(index)).unwrap();
            setup_cpuid(&kvm, &vcpu, index, 2).unwrap();
            let set = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
            let l1 = set.as_slice().iter().find(|e| e.function == 1).unwrap();
            assert_eq!(l1.ebx >> 24, u32::from(index));
            assert_ne!(l1.ecx & bits::LEAF1_ECX_HYPERVISOR, 0);
        }
    }
}
