//! Accelerators: how guest code runs. KVM today; the software CPU (TCG)
//! comes later and plugs into the same memory listeners and dispatch.

pub mod kvm;
pub mod tcg;

/// The `--accel` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// The software CPU.
    Tcg,
    /// KVM when it can run the guest, else the software CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            "auto" => Ok(AccelChoice::Auto),
            other => Err(format!(
                "unknown accelerator '{other}' (expected kvm, tcg or auto)"
            )),
        }
    }
}
