//! What the device tree says about the harts: their ISA (`riscv,isa`,
//! `riscv,isa-base`, `riscv,isa-extensions`), paging mode (`mmu-type`) and
//! `timebase-frequency`. The software CPU implements a fixed one; under KVM
//! it is what the host's vCPUs report, so a guest is never told about an
//! extension (or a paging mode, or a clock rate) the hardware lacks.

use super::fdt::{ISA_BASE, ISA_EXTENSIONS, ISA_STRING, MMU_TYPE};
use super::layout::TIMEBASE_FREQ;

/// The harts as the device tree describes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuDescription {
    /// `riscv,isa`, e.g. `rv64imafdc_zicsr_zifencei`.
    pub isa: String,
    /// `riscv,isa-extensions`, single letters first.
    pub extensions: Vec<String>,
    /// `mmu-type`, e.g. `riscv,sv48`.
    pub mmu_type: String,
    /// `timebase-frequency` in Hz.
    pub timebase: u32,
}

/// Single-letter extensions in the order an ISA string lists them (the
/// RISC-V naming convention). `h` is never shown to a guest: it runs in
/// VS-mode and cannot itself be a hypervisor here.
const LETTER_ORDER: &str = "imafdqlcbkjtpv";

impl CpuDescription {
    /// Ember's software CPU (`rv64imafdc_zicsr_zifencei`, Sv48, 10 MHz).
    pub fn software() -> Self {
        CpuDescription {
            isa: ISA_STRING.into(),
            extensions: ISA_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
            mmu_type: MMU_TYPE.into(),
            timebase: TIMEBASE_FREQ,
        }
    }

    /// A KVM vCPU: `isa_bits` is its `config.isa` register (bit `n` for
    /// letter `'a' + n`), `extensions` the multi-letter extensions its
    /// ISA_EXT registers report on, `timer_hz` its timer frequency, and
    /// `host_mmu` the `mmu` line of the host's /proc/cpuinfo (`sv39`,
    /// `sv48`, `sv57`; VS-mode paging offers what the host's MMU does).
    pub fn from_kvm(
        isa_bits: u64,
        extensions: &[&str],
        timer_hz: u64,
        host_mmu: Option<&str>,
    ) -> Result<Self, String> {
        let letters: Vec<char> = LETTER_ORDER
            .chars()
            .filter(|c| isa_bits & (1 << (*c as u8 - b'a')) != 0)
            .collect();
        if !letters.contains(&'i') {
            return Err(format!(
                "the vCPU's ISA register ({isa_bits:#x}) does not include the base integer ISA"
            ));
        }
        let timebase = u32::try_from(timer_hz)
            .ok()
            .filter(|&hz| hz > 0)
            .ok_or_else(|| {
                format!("the vCPU's timer frequency {timer_hz} Hz cannot be described")
            })?;
        // Every Linux-capable RISC-V hart has the CSR and fence.i
        // instructions (they were part of the base ISA before 2.1), and
        // KVM 6.1 has no registers for them.
        let mut multi: Vec<String> = vec!["zicsr".into(), "zifencei".into()];
        for e in extensions {
            let e = e.to_ascii_lowercase();
            if !multi.contains(&e) {
                multi.push(e);
            }
        }
        // Multi-letter extensions go Z* first, then S* (the ISA string's
        // order), each group as KVM listed them.
        multi.sort_by_key(|e| match e.as_bytes().first() {
            Some(b'z') => 0,
            Some(b's') => 1,
            _ => 2,
        });
        let mut isa = String::from("rv64");
        isa.extend(letters.iter());
        for e in &multi {
            isa.push('_');
            isa.push_str(e);
        }
        let mut all: Vec<String> = letters.iter().map(|c| c.to_string()).collect();
        all.extend(multi);
        let mmu = match host_mmu.map(str::trim) {
            Some(m @ ("sv39" | "sv48" | "sv57")) => m.to_string(),
            // Unknown or absent: the mode every riscv64 Linux host has.
            _ => "sv39".to_string(),
        };
        Ok(CpuDescription {
            isa,
            extensions: all,
            mmu_type: format!("riscv,{mmu}"),
            timebase,
        })
    }

    /// `riscv,isa-base`.
    pub fn isa_base(&self) -> &'static str {
        ISA_BASE
    }
}

/// The `mmu` value of the first hart in a /proc/cpuinfo text (riscv
/// hosts print `mmu\t\t: sv57`).
pub fn host_mmu_from_cpuinfo(cpuinfo: &str) -> Option<&str> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "mmu").then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(letters: &str) -> u64 {
        letters.bytes().fold(0, |b, c| b | 1 << (c - b'a'))
    }

    #[test]
    fn software_cpu_is_what_the_fdt_always_said() {
        let d = CpuDescription::software();
        assert_eq!(d.isa, "rv64imafdc_zicsr_zifencei");
        assert_eq!(d.mmu_type, "riscv,sv48");
        assert_eq!(d.timebase, 10_000_000);
    }

    #[test]
    fn kvm_isa_is_built_from_the_registers_and_never_shows_h() {
        let d = CpuDescription::from_kvm(
            bits("acdfhim") | bits("su"),
            &["sstc", "svpbmt"],
            10_000_000,
            Some("sv57"),
        )
        .unwrap();
        assert_eq!(d.isa, "rv64imafdc_zicsr_zifencei_sstc_svpbmt");
        assert_eq!(
            d.extensions,
            ["i", "m", "a", "f", "d", "c", "zicsr", "zifencei", "sstc", "svpbmt"]
        );
        assert!(!d.isa.contains('h'));
        assert_eq!(d.mmu_type, "riscv,sv57");
    }

    #[test]
    fn kvm_isa_order_is_canonical_for_every_subset() {
        // Each subset of the letters KVM can report, against a reference
        // that sorts by the canonical order.
        let letters = ['a', 'c', 'd', 'f', 'h', 'm', 'v'];
        for mask in 0u32..(1 << letters.len()) {
            let chosen: String = letters
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| *c)
                .collect();
            let d = CpuDescription::from_kvm(bits(&chosen) | bits("i"), &[], 1, None).unwrap();
            let mut want: Vec<char> = chosen.chars().filter(|&c| c != 'h').collect();
            want.push('i');
            want.sort_by_key(|c| "imafdqlcbkjtpv".find(*c));
            let want: String = want.into_iter().collect();
            assert_eq!(d.isa, format!("rv64{want}_zicsr_zifencei"), "{chosen}");
            assert_eq!(d.mmu_type, "riscv,sv39");
        }
    }

    #[test]
    fn impossible_registers_are_refused() {
        assert!(CpuDescription::from_kvm(bits("mafdc"), &[], 1, None).is_err());
        assert!(CpuDescription::from_kvm(bits("i"), &[], 0, None).is_err());
        assert!(CpuDescription::from_kvm(bits("i"), &[], 1 << 40, None).is_err());
    }

    #[test]
    fn host_mmu_is_read_from_cpuinfo() {
        let text = "processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdch_zicsr\nmmu\t\t: sv57\n\n\
                    processor\t: 1\nmmu\t\t: sv57\n";
        assert_eq!(host_mmu_from_cpuinfo(text), Some("sv57"));
        assert_eq!(host_mmu_from_cpuinfo("processor : 0\n"), None);
        let d = CpuDescription::from_kvm(bits("i"), &[], 1, Some("sv99")).unwrap();
        assert_eq!(d.mmu_type, "riscv,sv39");
    }
}
