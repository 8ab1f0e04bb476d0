//! riscv64 vCPUs under KVM: creating them, reading what they are (for the
//! device tree), boot registers, the stopped state of secondaries, register
//! dumps, and saving and loading their registers for snapshots. Every
//! register goes through `KVM_{GET,SET}_ONE_REG` (see [`super::regs`]).

use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED};
use kvm_ioctls::VcpuFd;

use super::regs;
use super::SavedVcpu;
use crate::accel::kvm::{KvmAccel, KvmError};
use crate::arch::riscv64::cpu_description::{host_mmu_from_cpuinfo, CpuDescription};

fn ioctl(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// Reads 64-bit (or 32-bit) register `id`.
pub fn get(vcpu: &VcpuFd, id: u64) -> Result<u64, vmm_sys_util::errno::Error> {
    let mut bytes = [0u8; 8];
    let size = regs::size_of(id).min(8);
    vcpu.get_one_reg(id, &mut bytes[..size])?;
    Ok(u64::from_le_bytes(bytes))
}

/// Writes register `id` (its low bytes when it is 32-bit).
pub fn set(vcpu: &VcpuFd, id: u64, value: u64) -> Result<(), vmm_sys_util::errno::Error> {
    let size = regs::size_of(id).min(8);
    vcpu.set_one_reg(id, &value.to_le_bytes()[..size])?;
    Ok(())
}

/// Creates `count` vCPUs, ids 0..count.
pub fn create_vcpus(accel: &KvmAccel, count: u8) -> Result<Vec<VcpuFd>, KvmError> {
    let max = accel.kvm.get_max_vcpus();
    if count as usize > max {
        return Err(KvmError::TooManyVcpus {
            asked: count as usize,
            max,
        });
    }
    (0..count)
        .map(|id| {
            accel
                .vm
                .create_vcpu(id as u64)
                .map_err(ioctl("KVM_CREATE_VCPU"))
        })
        .collect()
}

/// What the device tree should say about vCPUs like `vcpu`.
pub fn describe(vcpu: &VcpuFd) -> Result<CpuDescription, KvmError> {
    let isa = get(vcpu, regs::CONFIG_ISA).map_err(ioctl("KVM_GET_ONE_REG config.isa"))?;
    // An extension this kernel has no register for is not there.
    let extensions: Vec<&str> = regs::ISA_EXT_NAMES
        .iter()
        .filter(|(id, _)| get(vcpu, regs::isa_ext(*id)) == Ok(1))
        .map(|(_, name)| *name)
        .collect();
    let hz = get(vcpu, regs::TIMER_FREQUENCY).map_err(ioctl("KVM_GET_ONE_REG timer.frequency"))?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    CpuDescription::from_kvm(isa, &extensions, hz, host_mmu_from_cpuinfo(&cpuinfo))
        .map_err(KvmError::Unusable)
}

/// Sets up a booting hart: S-mode (KVM's reset state) at `entry` with `a0`
/// = its hart id and `a1` = the device tree's address, as Linux's boot
/// protocol asks.
pub fn set_boot_registers(vcpu: &VcpuFd, hart: u64, entry: u64, fdt: u64) -> Result<(), KvmError> {
    for (id, value) in [(regs::PC, entry), (regs::A0, hart), (regs::A1, fdt)] {
        set(vcpu, id, value).map_err(ioctl("KVM_SET_ONE_REG (boot registers)"))?;
    }
    Ok(())
}

/// Puts a secondary hart in the stopped state it must be in before its
/// first `KVM_RUN`: it waits there until the guest's SBI HSM `hart_start`
/// (handled inside KVM) starts it.
pub fn stop_secondary(vcpu: &VcpuFd) -> Result<(), KvmError> {
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_STOPPED,
    })
    .map_err(ioctl("KVM_SET_MP_STATE"))
}

/// Every register [`regs::snapshot_registers`] lists, and the run state.
pub fn save(vcpu: &VcpuFd) -> Result<SavedVcpu, KvmError> {
    let mut registers = Vec::new();
    for id in regs::snapshot_registers() {
        let value = get(vcpu, id).map_err(|source| KvmError::Register {
            what: "read",
            register: regs::name(id),
            source,
        })?;
        registers.push((regs::name(id), value));
    }
    let mp = vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?;
    Ok(SavedVcpu {
        registers,
        stopped: mp.mp_state == KVM_MP_STATE_STOPPED,
    })
}

/// Loads what [`save`] saved into a new vCPU.
pub fn restore(vcpu: &VcpuFd, saved: &SavedVcpu) -> Result<(), KvmError> {
    let ids = saved.ids().map_err(KvmError::Unusable)?;
    for (id, value) in ids {
        set(vcpu, id, value).map_err(|source| KvmError::Register {
            what: "load",
            register: regs::name(id),
            source,
        })?;
    }
    let mp_state = if saved.stopped {
        KVM_MP_STATE_STOPPED
    } else {
        KVM_MP_STATE_RUNNABLE
    };
    vcpu.set_mp_state(kvm_mp_state { mp_state })
        .map_err(ioctl("KVM_SET_MP_STATE"))
}

/// The registers of a vCPU as text, for error reports.
pub fn describe_registers(vcpu: &VcpuFd) -> String {
    let mut text = String::new();
    let mut line = Vec::new();
    for id in (0..=32).map(regs::core).chain((0..10).map(regs::csr)) {
        match get(vcpu, id) {
            Ok(v) => line.push(format!("{}={v:#x}", regs::name(id))),
            Err(e) => line.push(format!("{}=({e})", regs::name(id))),
        }
        if line.len() == 4 {
            text.push_str(&line.join(" "));
            text.push('\n');
            line.clear();
        }
    }
    text.push_str(&line.join(" "));
    text
}
