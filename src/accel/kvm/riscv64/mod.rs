//! KVM on riscv64 hosts: register ids ([`regs`]), the vCPU set-up and
//! snapshot state ([`vcpu`], riscv64 hosts only), the forwarded SBI calls
//! ([`sbi`]) and the PLIC-driven external interrupt ([`interrupt`]). The
//! run loop, memory slots, ioeventfds and kicks are the generic KVM ones.
//!
//! Everything that needs no /dev/kvm (register encoding, the interrupt
//! level logic, SBI answers) compiles and is tested on every host.

#[cfg(target_arch = "riscv64")]
pub mod aia;
pub mod interrupt;
pub mod regs;
pub mod sbi;
#[cfg(target_arch = "riscv64")]
pub mod setup;
#[cfg(target_arch = "riscv64")]
pub mod vcpu;

/// What a snapshot keeps of one riscv64 KVM vCPU: its registers by name
/// (Ember's own list, [`regs::snapshot_registers`]) and whether it is
/// stopped (a secondary hart the guest has not started, or has stopped).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedVcpu {
    pub registers: Vec<(String, u64)>,
    pub stopped: bool,
}

impl SavedVcpu {
    /// The registers as ids in restore order; every register of the list
    /// must be present exactly once, and nothing else.
    pub fn ids(&self) -> Result<Vec<(u64, u64)>, String> {
        let wanted = regs::snapshot_registers();
        if self.registers.len() != wanted.len() {
            return Err(format!(
                "{} registers saved, {} expected",
                self.registers.len(),
                wanted.len()
            ));
        }
        wanted
            .into_iter()
            .map(|id| {
                let name = regs::name(id);
                let mut found = self.registers.iter().filter(|(n, _)| *n == name);
                match (found.next(), found.next()) {
                    (Some((_, v)), None) => Ok((id, *v)),
                    (None, _) => Err(format!("register {name} is missing")),
                    (Some(_), Some(_)) => Err(format!("register {name} is saved twice")),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> SavedVcpu {
        SavedVcpu {
            registers: regs::snapshot_registers()
                .into_iter()
                .enumerate()
                .map(|(i, id)| (regs::name(id), i as u64 * 3))
                .collect(),
            stopped: false,
        }
    }

    #[test]
    fn saved_registers_come_back_in_restore_order() {
        let mut saved = full();
        saved.registers.reverse();
        let ids = saved.ids().unwrap();
        let order: Vec<u64> = ids.iter().map(|(id, _)| *id).collect();
        assert_eq!(order, regs::snapshot_registers());
        // Values follow their names, not their positions.
        assert_eq!(ids[0], (regs::PC, 0));
    }

    #[test]
    fn damaged_register_lists_are_refused() {
        let mut missing = full();
        missing.registers.pop();
        assert!(missing.ids().unwrap_err().contains("expected"));
        let mut renamed = full();
        renamed.registers[3].0 = "bogus".into();
        assert!(renamed.ids().unwrap_err().contains("missing"));
        let mut twice = full();
        twice.registers[3].0 = twice.registers[4].0.clone();
        assert!(twice.ids().is_err());
    }
}
