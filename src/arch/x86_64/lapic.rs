//! The local APIC's LINT pins, wired as on a PC (and as Firecracker's
//! `set_lint` does): LINT0 receives the 8259 PIC's output as ExtINT
//! (virtual-wire mode, which Linux uses until it switches to the IOAPIC),
//! LINT1 receives NMIs.
//!
//! Written by hand: only the register offsets and delivery modes from the
//! Intel SDM are needed. Requires KVM's in-kernel irqchip.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use super::ArchError;

/// Register offsets in the APIC page.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// Delivery modes (LVT bits 8-10).
const DELIVERY_MODE_NMI: u32 = 0b100;
const DELIVERY_MODE_EXTINT: u32 = 0b111;
const DELIVERY_MODE_MASK: u32 = 0b111 << 8;

fn read_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| state.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn write_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        state.regs[offset + i] = byte as std::os::raw::c_char;
    }
}

fn set_delivery_mode(state: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let reg = read_reg(state, offset);
    write_reg(state, offset, (reg & !DELIVERY_MODE_MASK) | (mode << 8));
}

/// Rewires LINT0 to ExtINT and LINT1 to NMI in a saved APIC state.
pub fn set_lint_pins(state: &mut kvm_lapic_state) {
    set_delivery_mode(state, APIC_LVT0, DELIVERY_MODE_EXTINT);
    set_delivery_mode(state, APIC_LVT1, DELIVERY_MODE_NMI);
}

/// Sets LINT0 = ExtINT and LINT1 = NMI on the vCPU's in-kernel local APIC.
/// Call it for every vCPU, after `KVM_CREATE_IRQCHIP`.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let mut state = vcpu.get_lapic().map_err(|source| ArchError::Kvm {
        what: "KVM_GET_LAPIC (is the in-kernel irqchip created?)",
        source,
    })?;
    set_lint_pins(&mut state);
    vcpu.set_lapic(&state).map_err(|source| ArchError::Kvm {
        what: "KVM_SET_LAPIC",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_pins_keep_other_bits() {
        let mut state = kvm_lapic_state::default();
        // Masked (bit 16), level-triggered (bit 15), fixed delivery.
        write_reg(&mut state, APIC_LVT0, 0x0001_8000);
        write_reg(&mut state, APIC_LVT1, 0x0001_0400);
        set_lint_pins(&mut state);
        assert_eq!(read_reg(&state, APIC_LVT0), 0x0001_8700);
        assert_eq!(read_reg(&state, APIC_LVT1), 0x0001_0400);
    }

    #[test]
    fn lint_pins_under_kvm() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("note: /dev/kvm cannot be opened; skipping the LAPIC test");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        setup_lapic(&vcpu).unwrap();
        let state = vcpu.get_lapic().unwrap();
        assert_eq!((read_reg(&state, APIC_LVT0) >> 8) & 7, DELIVERY_MODE_EXTINT);
        assert_eq!((read_reg(&state, APIC_LVT1) >> 8) & 7, DELIVERY_MODE_NMI);

        // Without an in-kernel irqchip the error says what is missing.
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let err = setup_lapic(&vcpu).unwrap_err().to_string();
        assert!(err.contains("irqchip"), "{err}");
    }
}
