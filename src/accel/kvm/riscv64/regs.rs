//! riscv64 KVM register identifiers for `KVM_{GET,SET}_ONE_REG`, which is
//! the only way to reach a riscv vCPU's registers. kvm-bindings has the
//! type constants but no id helpers, and its structs are newer than Linux
//! 6.1 (they have fields 6.1 refuses), so the ids are built here from
//! explicit indexes that 6.1 accepts.
//!
//! An id is `KVM_REG_RISCV | size | type | index`, the index being the
//! register's position (in `unsigned long`s) in the type's kernel struct.

/// `KVM_REG_RISCV`: the architecture field of a register id.
const ARCH: u64 = 0x8000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`.
const SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_SIZE_U32`.
const SIZE_U32: u64 = 0x0020_0000_0000_0000;

/// Register types (bits 24..31).
const TYPE_CONFIG: u64 = 0x01 << 24;
const TYPE_CORE: u64 = 0x02 << 24;
const TYPE_CSR: u64 = 0x03 << 24;
const TYPE_TIMER: u64 = 0x04 << 24;
const TYPE_FP_D: u64 = 0x06 << 24;
const TYPE_ISA_EXT: u64 = 0x07 << 24;

/// A 64-bit register of `ty` at `index`.
const fn reg64(ty: u64, index: u64) -> u64 {
    ARCH | SIZE_U64 | ty | index
}

/// `config.isa`: the single-letter extensions, bit `n` for letter `'a' + n`
/// (as `misa`). Writable before the first `KVM_RUN`.
pub const CONFIG_ISA: u64 = reg64(TYPE_CONFIG, 0);

/// Core register `n`: 0 is `pc`, 1..=31 are `x1`..`x31`.
pub const fn core(n: u64) -> u64 {
    reg64(TYPE_CORE, n)
}

/// `pc`.
pub const PC: u64 = core(0);
/// `a0` (`x10`): the hart id at boot.
pub const A0: u64 = core(10);
/// `a1` (`x11`): the device tree's address at boot.
pub const A1: u64 = core(11);
/// The privilege mode the vCPU runs in (`KVM_RISCV_MODE_S` = 1).
pub const MODE: u64 = core(32);

/// The supervisor CSRs Linux 6.1 has in `struct kvm_riscv_csr`, in order
/// (later kernels add `senvcfg`, which 6.1 refuses).
pub const CSR_NAMES: [&str; 10] = [
    "sstatus",
    "sie",
    "stvec",
    "sscratch",
    "sepc",
    "scause",
    "stval",
    "sip",
    "satp",
    "scounteren",
];

/// CSR number `n` of [`CSR_NAMES`].
pub const fn csr(n: u64) -> u64 {
    reg64(TYPE_CSR, n)
}

/// The timer's frequency in Hz (read-only): the guest's
/// `timebase-frequency`.
pub const TIMER_FREQUENCY: u64 = reg64(TYPE_TIMER, 0);
/// The guest's `time`.
pub const TIMER_TIME: u64 = reg64(TYPE_TIMER, 1);
/// The pending timer deadline.
pub const TIMER_COMPARE: u64 = reg64(TYPE_TIMER, 2);
/// Whether the deadline is armed.
pub const TIMER_STATE: u64 = reg64(TYPE_TIMER, 3);

/// `f0`..`f31` as doubles.
pub const fn fp_d(n: u64) -> u64 {
    reg64(TYPE_FP_D, n)
}

/// `fcsr`, a 32-bit register after the 32 `f` registers.
pub const FCSR: u64 = ARCH | SIZE_U32 | TYPE_FP_D | 32;

/// Whether ISA extension `id` (`KVM_RISCV_ISA_EXT_*`) is on: 1 or 0.
pub const fn isa_ext(id: u64) -> u64 {
    reg64(TYPE_ISA_EXT, id)
}

/// The multi-letter extensions KVM can report through its ISA_EXT
/// registers, by `KVM_RISCV_ISA_EXT_*` number (kvm-bindings' list), as the
/// device tree names them. A kernel that does not know an id refuses the
/// read, so older hosts report fewer. Left out: the single letters (0..=6
/// and V, 15: they come from [`CONFIG_ISA`]) and the M-mode extensions
/// Smstateen (23) and Smnpm (62), which an S-mode guest does not have.
pub const ISA_EXT_NAMES: [(u64, &str); 61] = [
    (7, "svpbmt"),
    (8, "sstc"),
    (9, "svinval"),
    (10, "zihintpause"),
    (11, "zicbom"),
    (12, "zicboz"),
    (13, "zbb"),
    (14, "ssaia"),
    (16, "svnapot"),
    (17, "zba"),
    (18, "zbs"),
    (19, "zicntr"),
    (20, "zicsr"),
    (21, "zifencei"),
    (22, "zihpm"),
    (24, "zicond"),
    (25, "zbc"),
    (26, "zbkb"),
    (27, "zbkc"),
    (28, "zbkx"),
    (29, "zknd"),
    (30, "zkne"),
    (31, "zknh"),
    (32, "zkr"),
    (33, "zksed"),
    (34, "zksh"),
    (35, "zkt"),
    (36, "zvbb"),
    (37, "zvbc"),
    (38, "zvkb"),
    (39, "zvkg"),
    (40, "zvkned"),
    (41, "zvknha"),
    (42, "zvknhb"),
    (43, "zvksed"),
    (44, "zvksh"),
    (45, "zvkt"),
    (46, "zfh"),
    (47, "zfhmin"),
    (48, "zihintntl"),
    (49, "zvfh"),
    (50, "zvfhmin"),
    (51, "zfa"),
    (52, "ztso"),
    (53, "zacas"),
    (54, "sscofpmf"),
    (55, "zimop"),
    (56, "zca"),
    (57, "zcb"),
    (58, "zcd"),
    (59, "zcf"),
    (60, "zcmop"),
    (61, "zawrs"),
    (63, "ssnpm"),
    (64, "svade"),
    (65, "svadu"),
    (66, "svvptc"),
    (67, "zabha"),
    (68, "ziccrse"),
    (69, "zaamo"),
    (70, "zalrsc"),
];

/// The size in bytes of the register `id` names (from its size field).
pub const fn size_of(id: u64) -> usize {
    1 << ((id >> 52) & 0xf)
}

/// Every register a snapshot saves of a vCPU and restores, in restore
/// order: the core registers and mode, the CSRs, the FPU, then the timer
/// (time before the deadline, the deadline before arming it, as the
/// kernel checks them in that order). Linux 6.1 cannot list a vCPU's
/// registers (`KVM_GET_REG_LIST` is 6.6+), so the list is Ember's own.
pub fn snapshot_registers() -> Vec<u64> {
    let mut ids: Vec<u64> = (0..=32).map(core).collect();
    ids.extend((0..CSR_NAMES.len() as u64).map(csr));
    ids.extend((0..32).map(fp_d));
    ids.push(FCSR);
    ids.extend([TIMER_TIME, TIMER_COMPARE, TIMER_STATE]);
    ids
}

/// The name of register `id`, for error messages and register dumps.
pub fn name(id: u64) -> String {
    let index = id & 0xffff;
    match id & (0xff << 24) {
        TYPE_CONFIG if index == 0 => "isa".into(),
        TYPE_CORE => match index {
            0 => "pc".into(),
            32 => "mode".into(),
            n => format!("x{n}"),
        },
        TYPE_CSR => CSR_NAMES
            .get(index as usize)
            .map_or_else(|| format!("csr{index}"), |s| s.to_string()),
        TYPE_TIMER => [
            "timer.frequency",
            "timer.time",
            "timer.compare",
            "timer.state",
        ]
        .get(index as usize)
        .map_or_else(|| format!("timer{index}"), |s| s.to_string()),
        TYPE_FP_D if index == 32 => "fcsr".into(),
        TYPE_FP_D => format!("f{index}"),
        TYPE_ISA_EXT => format!("isa_ext{index}"),
        _ => format!("{id:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's encoding, spelled out from its uapi header
    /// (arch/riscv/include/uapi/asm/kvm.h and include/uapi/linux/kvm.h)
    /// independently of the constants above.
    fn reference(size_log2: u64, ty: u64, index: u64) -> u64 {
        (8u64 << 60) | (size_log2 << 52) | (ty << 24) | index
    }

    #[test]
    fn ids_match_the_kernel_encoding() {
        assert_eq!(PC, reference(3, 2, 0));
        assert_eq!(A0, reference(3, 2, 10));
        assert_eq!(A1, reference(3, 2, 11));
        assert_eq!(MODE, reference(3, 2, 32));
        assert_eq!(CONFIG_ISA, reference(3, 1, 0));
        assert_eq!(csr(8), reference(3, 3, 8));
        assert_eq!(TIMER_FREQUENCY, reference(3, 4, 0));
        assert_eq!(TIMER_STATE, reference(3, 4, 3));
        assert_eq!(fp_d(31), reference(3, 6, 31));
        assert_eq!(FCSR, reference(2, 6, 32));
        assert_eq!(isa_ext(11), reference(3, 7, 11));
    }

    #[test]
    fn ids_agree_with_kvm_bindings_constants() {
        // The type and size fields as kvm-bindings' riscv64 module has
        // them (the values are the same on every host).
        assert_eq!(ARCH, 0x8000_0000_0000_0000u64);
        assert_eq!(SIZE_U64, 0x0030_0000_0000_0000);
        assert_eq!(TYPE_CORE, 33_554_432);
        assert_eq!(TYPE_CSR, 50_331_648);
        assert_eq!(TYPE_TIMER, 67_108_864);
        assert_eq!(TYPE_FP_D, 100_663_296);
        assert_eq!(TYPE_ISA_EXT, 117_440_512);
    }

    #[test]
    fn isa_extension_ids_match_kvm_bindings() {
        for &(name, id) in kvm_bindings_ids::ALL {
            assert!(ISA_EXT_NAMES.contains(&(id, name)), "{name} = {id}");
        }
        let ids: std::collections::BTreeSet<u64> = ISA_EXT_NAMES.iter().map(|e| e.0).collect();
        assert_eq!(ids.len(), ISA_EXT_NAMES.len(), "an id listed twice");
        assert!(!ids.contains(&15) && !ids.contains(&23) && !ids.contains(&62));
    }

    /// kvm-bindings' riscv64 constants are only compiled for riscv64
    /// hosts; the numbers here are copied from its list
    /// (`KVM_RISCV_ISA_EXT_ID_KVM_RISCV_ISA_EXT_*`) so that the check also
    /// runs on x86_64 CI.
    mod kvm_bindings_ids {
        pub const ALL: &[(&str, u64)] = &[
            ("svpbmt", 7),
            ("sstc", 8),
            ("ssaia", 14),
            ("zba", 17),
            ("zicsr", 20),
            ("zihpm", 22),
            ("zicond", 24),
            ("zkt", 35),
            ("zfa", 51),
            ("sscofpmf", 54),
            ("zawrs", 61),
            ("ssnpm", 63),
            ("zalrsc", 70),
        ];
    }

    #[test]
    fn sizes_come_from_the_id() {
        assert_eq!(size_of(PC), 8);
        assert_eq!(size_of(FCSR), 4);
        for id in snapshot_registers() {
            assert!(matches!(size_of(id), 4 | 8), "{}", name(id));
        }
    }

    #[test]
    fn the_snapshot_list_is_complete_and_ordered() {
        let ids = snapshot_registers();
        // 33 core + 10 CSRs + 32 f + fcsr + 3 timer.
        assert_eq!(ids.len(), 33 + 10 + 32 + 1 + 3);
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        // The deadline is armed last.
        assert_eq!(ids.last(), Some(&TIMER_STATE));
        assert!(!ids.contains(&TIMER_FREQUENCY));
        let names: Vec<String> = ids.iter().map(|&i| name(i)).collect();
        assert!(names.contains(&"satp".to_string()));
        assert!(names.contains(&"fcsr".to_string()));
        assert_eq!(names[0], "pc");
    }
}
