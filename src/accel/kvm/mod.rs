//! The KVM accelerator: opening /dev/kvm with errors that name the cause,
//! memory slots from FlatView changes, vCPU threads, and the eventfd
//! helpers virtio devices use.

pub mod ioeventfd;
pub mod kick;
pub mod memory;
// riscv64 register ids, SBI answers and the interrupt line are plain logic
// tested everywhere; the parts that issue riscv ioctls are riscv64-only
// inside.
pub mod riscv64;
// The x86 vCPU and VM state: only x86_64 hosts have these KVM ioctls. The
// rest of this module (slots, kicks, eventfds, the vCPU loop) is generic
// KVM.
#[cfg(target_arch = "x86_64")]
pub mod state;
#[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
pub mod vcpu;
#[cfg(any(target_arch = "x86_64", target_arch = "riscv64"))]
pub mod vcpu_threads;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

use std::path::Path;
use std::sync::Arc;

use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("{path} is not present: {}", no_kvm_hint())]
    NotPresent { path: String },
    #[error("no permission to open {path}: {fix}")]
    NoPermission { path: String, fix: String },
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("KVM API version {0} is not the supported version 12")]
    ApiVersion(i32),
    #[error("KVM on this host lacks {0}, which Ember needs on {arch} (use --accel tcg)", arch = std::env::consts::ARCH)]
    MissingCap(&'static str),
    #[error("{asked} vCPUs requested: KVM on this host allows at most {max}")]
    TooManyVcpus { asked: usize, max: usize },
    #[error("KVM cannot be used: {0}")]
    Unusable(String),
    #[error("cannot {what} vCPU register {register}: {source}")]
    Register {
        what: &'static str,
        register: String,
        source: vmm_sys_util::errno::Error,
    },
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: vmm_sys_util::errno::Error,
    },
}

/// Why a host has no /dev/kvm, as far as the architecture tells.
fn no_kvm_hint() -> &'static str {
    if cfg!(target_arch = "riscv64") {
        "this host has no KVM (the CPU has no hypervisor extension, or the kernel was built \
         without CONFIG_KVM); use --accel tcg"
    } else {
        "this host has no KVM (load the kvm module, or use --accel tcg)"
    }
}

/// The capabilities Ember needs on this host architecture. riscv64 has no
/// in-kernel interrupt controller before Linux 6.5 (so no IRQFD): its
/// vCPU registers are reached through ONE_REG and secondaries are held
/// with MP_STATE.
fn required_caps() -> &'static [(Cap, &'static str)] {
    #[cfg(target_arch = "riscv64")]
    {
        &[
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::OneReg, "KVM_CAP_ONE_REG"),
            (Cap::MpState, "KVM_CAP_MP_STATE"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::ReadonlyMem, "KVM_CAP_READONLY_MEM"),
        ]
    }
    #[cfg(not(target_arch = "riscv64"))]
    {
        &[
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::ReadonlyMem, "KVM_CAP_READONLY_MEM"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        ]
    }
}

/// What lets this user open the KVM device at `path`, as this host has it
/// set up: the group that may open it, where there is one (usually `kvm`),
/// otherwise its owner.
fn permission_fix(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return "run as a user who may open it".into();
    };
    let group_may = meta.mode() & 0o060 == 0o060;
    let group = group_name(meta.gid());
    match group {
        Some(name) if group_may && meta.gid() != 0 => format!(
            "add your user to the '{name}' group (sudo usermod -aG {name} $USER, then log in \
             again)"
        ),
        _ => format!(
            "it is open to its owner only here (mode {:o}, no group may use it): run as \
             root, ask an administrator to grant access (a 'kvm' group with mode 0660 is \
             usual)",
            meta.mode() & 0o7777
        ),
    }
}

/// The name of group `gid`, from /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == gid).then(|| name.to_string())
    })
}

/// An open /dev/kvm and one VM.
pub struct KvmAccel {
    pub kvm: Kvm,
    pub vm: Arc<VmFd>,
    /// `KVM_CAP_NR_MEMSLOTS`.
    pub max_slots: u32,
}

/// The default KVM device.
pub const KVM_PATH: &str = "/dev/kvm";

impl KvmAccel {
    /// Opens `path` (normally /dev/kvm), checks what Ember needs and creates
    /// a VM.
    pub fn open(path: &Path) -> Result<Self, KvmError> {
        let shown = path.display().to_string();
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            KvmError::Open {
                path: shown.clone(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            }
        })?;
        let kvm = Kvm::new_with_path(&c_path).map_err(|e| {
            let io = std::io::Error::from_raw_os_error(e.errno());
            match io.kind() {
                std::io::ErrorKind::NotFound => KvmError::NotPresent {
                    path: shown.clone(),
                },
                std::io::ErrorKind::PermissionDenied => KvmError::NoPermission {
                    path: shown.clone(),
                    fix: permission_fix(path),
                },
                _ => KvmError::Open {
                    path: shown.clone(),
                    source: io,
                },
            }
        })?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        for (cap, name) in required_caps() {
            if !kvm.check_extension(*cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let max_slots = kvm.get_nr_memslots() as u32;
        let vm = kvm.create_vm().map_err(|source| KvmError::Ioctl {
            what: "KVM_CREATE_VM",
            source,
        })?;
        Ok(KvmAccel {
            kvm,
            vm: Arc::new(vm),
            max_slots,
        })
    }

    /// Delivers interrupt `gsi` whenever `event` is written (KVM_IRQFD).
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.vm
            .register_irqfd(event, gsi)
            .map_err(|source| KvmError::Ioctl {
                what: "KVM_IRQFD",
                source,
            })
    }

    /// Makes guest writes to `addr` signal `event` inside KVM, without an
    /// exit to the VMM (KVM_IOEVENTFD), optionally only for one value.
    pub fn register_ioeventfd(
        &self,
        event: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<(), KvmError> {
        let result = match datamatch {
            Some(v) => self.vm.register_ioevent(event, &addr, v),
            None => self.vm.register_ioevent(event, &addr, NoDatamatch),
        };
        result.map_err(|source| KvmError::Ioctl {
            what: "KVM_IOEVENTFD",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_named() {
        let err = KvmAccel::open(Path::new("/nonexistent/kvm")).err().unwrap();
        assert!(matches!(err, KvmError::NotPresent { .. }));
        assert!(err.to_string().contains("/nonexistent/kvm is not present"));
    }

    #[test]
    fn a_non_kvm_device_is_an_ioctl_error() {
        // /dev/null opens but answers no KVM ioctl.
        match KvmAccel::open(Path::new("/dev/null")) {
            Err(KvmError::ApiVersion(_))
            | Err(KvmError::Ioctl { .. })
            | Err(KvmError::Open { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("/dev/null accepted as KVM"),
        }
    }

    #[test]
    fn the_permission_hint_fits_how_the_device_is_shared() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ember-kvm-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = dir.join("kvm");
        std::fs::write(&dev, b"").unwrap();
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o600)).unwrap();
        let owner_only = permission_fix(&dev);
        assert!(
            owner_only.contains("owner only") && owner_only.contains("mode 600"),
            "{owner_only}"
        );
        assert!(!owner_only.contains("usermod"), "{owner_only}");
        // A group with a name that may open it (needs root to hand it over).
        let named = std::fs::read_to_string("/etc/group").ok().and_then(|g| {
            g.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let gid: u32 = f.get(2)?.parse().ok()?;
                (gid != 0).then(|| (f[0].to_string(), gid))
            })
        });
        // SAFETY: geteuid has no preconditions.
        if let (Some((name, gid)), 0) = (named, unsafe { libc::geteuid() }) {
            std::os::unix::fs::chown(&dev, None, Some(gid)).unwrap();
            std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o660)).unwrap();
            let hint = permission_fix(&dev);
            assert!(hint.contains(&format!("the '{name}' group")), "{hint}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
