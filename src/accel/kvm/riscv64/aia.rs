//! KVM's in-kernel AIA (Linux 6.5+): an APLIC and one IMSIC per vCPU that
//! the kernel emulates (or backs with the host's IMSIC guest files), so
//! wired interrupts never pass through a vCPU exit to Ember. Ember
//! creates the device, tells it the layout of [`crate::arch::riscv64::
//! irqchip`], and drives wired sources with `KVM_IRQ_LINE`. kvm-ioctls
//! has the generic device calls but nothing AIA-specific, so the
//! attribute groups are used here by number (kvm-bindings' constants).

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_RISCV_AIA,
    KVM_CREATE_DEVICE_TEST, KVM_DEV_RISCV_AIA_ADDR_APLIC, KVM_DEV_RISCV_AIA_CONFIG_HART_BITS,
    KVM_DEV_RISCV_AIA_CONFIG_IDS, KVM_DEV_RISCV_AIA_CONFIG_SRCS, KVM_DEV_RISCV_AIA_CTRL_INIT,
    KVM_DEV_RISCV_AIA_GRP_ADDR, KVM_DEV_RISCV_AIA_GRP_CONFIG, KVM_DEV_RISCV_AIA_GRP_CTRL,
};
use kvm_ioctls::{DeviceFd, VmFd};

use crate::accel::kvm::KvmError;
use crate::arch::riscv64::irqchip::{
    hart_bits, imsic_address, AIA_NR_IDS, AIA_NR_SOURCES, APLIC_BASE,
};

/// Whether this host's KVM can create the AIA device (without creating
/// one).
///
/// With `KVM_CREATE_DEVICE_TEST` the kernel creates no descriptor and
/// leaves `fd` as it was, but kvm-ioctls still wraps `fd` in a `DeviceFd`
/// that closes it when dropped: with `fd: 0` that closed stdin (and the
/// console input's epoll registration then failed on whatever reused
/// descriptor 0). The wrapper is forgotten rather than dropped (`fd` stays
/// 0: kvm-ioctls' `from_raw_fd` refuses -1).
pub fn available(vm: &VmFd) -> bool {
    let mut device = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_RISCV_AIA,
        fd: 0,
        flags: KVM_CREATE_DEVICE_TEST,
    };
    match vm.create_device(&mut device) {
        Ok(not_a_descriptor) => {
            std::mem::forget(not_a_descriptor);
            true
        }
        Err(_) => false,
    }
}

/// Sets one attribute to `value`: a `u32` for the configuration group, a
/// `u64` for addresses, as the kernel reads them.
fn set<T: Copy>(
    device: &DeviceFd,
    group: u32,
    attr: u64,
    value: T,
    what: &'static str,
) -> Result<(), KvmError> {
    // The kernel copies size_of::<T>() bytes from `addr` during the call;
    // `value` lives on this frame until it returns.
    let attr = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr: &value as *const T as u64,
    };
    device
        .set_device_attr(&attr)
        .map_err(|source| KvmError::Ioctl { what, source })
}

/// Creates and initializes the AIA for `harts` vCPUs, which must all exist
/// already (KVM hands each its IMSIC at initialization).
pub fn create(vm: &VmFd, harts: u32) -> Result<DeviceFd, KvmError> {
    let mut device = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_RISCV_AIA,
        fd: 0,
        flags: 0,
    };
    let aia = vm
        .create_device(&mut device)
        .map_err(|source| KvmError::Ioctl {
            what: "KVM_CREATE_DEVICE (riscv AIA)",
            source,
        })?;
    let config = KVM_DEV_RISCV_AIA_GRP_CONFIG;
    let ids = KVM_DEV_RISCV_AIA_CONFIG_IDS as u64;
    set(&aia, config, ids, AIA_NR_IDS, "AIA: MSI identities")?;
    let srcs = KVM_DEV_RISCV_AIA_CONFIG_SRCS as u64;
    set(&aia, config, srcs, AIA_NR_SOURCES, "AIA: wired sources")?;
    let bits = KVM_DEV_RISCV_AIA_CONFIG_HART_BITS as u64;
    set(&aia, config, bits, hart_bits(harts), "AIA: hart index bits")?;
    let addr = KVM_DEV_RISCV_AIA_GRP_ADDR;
    let aplic = KVM_DEV_RISCV_AIA_ADDR_APLIC as u64;
    set(&aia, addr, aplic, APLIC_BASE, "AIA: APLIC address")?;
    for hart in 0..harts {
        // KVM_DEV_RISCV_AIA_ADDR_IMSIC(hart).
        set(
            &aia,
            addr,
            1 + hart as u64,
            imsic_address(hart),
            "AIA: IMSIC address",
        )?;
    }
    let init = KVM_DEV_RISCV_AIA_CTRL_INIT as u64;
    set(
        &aia,
        KVM_DEV_RISCV_AIA_GRP_CTRL,
        init,
        0u64,
        "AIA: initialization",
    )?;
    Ok(aia)
}
