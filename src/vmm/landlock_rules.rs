//! Filesystem confinement with Landlock, as Cloud Hypervisor does: once a
//! VM is built (kernel, initrd and firmware loaded, disks, TAP devices,
//! /dev/kvm and the API socket open), the thread that runs it restricts
//! itself, and so every thread it starts, to the files the VM still uses:
//!
//! | what | access |
//! |---|---|
//! | kernel, initrd, firmware, read-only disks | read |
//! | read-write disks, the console output file | read, write |
//! | snapshot directories (`--snapshot-dir`, default: the working directory and the temporary directory) | everything beneath (snapshots create, replace and flush files there) |
//! | the API socket's directory | removing the socket at exit |
//! | `/proc/self` | read (memory figures) |
//!
//! Everything else on the filesystem cannot be opened, created, removed or
//! executed. Descriptors opened before (disks, TAP, KVM) keep working.
//! Landlock is best effort: a kernel without it (before 5.13, or with the
//! LSM off) runs the VM unconfined, and the caller says so in one line.

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};

#[cfg(test)]
use crate::vmm::config::Confinement;
use crate::vmm::config::VmConfig;

/// The newest Landlock ABI whose filesystem rights Ember asks for; older
/// kernels enforce what they know (best effort).
const ABI_WANTED: ABI = ABI::V5;

/// How far the filesystem is confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsConfinement {
    /// Every right Ember asks for is enforced.
    Full,
    /// The kernel's Landlock is older: some rights are enforced.
    Partial,
    /// This kernel has no Landlock: nothing is confined.
    Unavailable,
    /// `--landlock off`.
    Off,
}

impl FsConfinement {
    /// The one-line notice for a VM that runs unconfined by no choice of
    /// the user's, if any.
    pub fn notice(self) -> Option<&'static str> {
        (self == FsConfinement::Unavailable).then_some(
            "ember: this kernel has no Landlock; the VM's filesystem access is not confined",
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("cannot confine the filesystem with Landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
}

/// One rule: `access` beneath `path` (the path itself for a file).
#[derive(Clone, Debug)]
struct Rule {
    path: PathBuf,
    access: BitFlags<AccessFs>,
    /// A directory made (mode 0700) when it does not exist yet: a snapshot
    /// directory the user named must be usable.
    create: bool,
}

/// The filesystem a VM's threads may reach: built from its configuration,
/// applied by each thread that starts VM threads (the thread that runs the
/// VM, and the API acceptor, which starts before it).
#[derive(Clone, Debug, Default)]
pub struct FsPolicy {
    /// `None`: `--landlock off`.
    rules: Option<Vec<Rule>>,
}

impl FsPolicy {
    /// The policy for the VM `config` describes.
    pub fn for_vm(config: &VmConfig) -> FsPolicy {
        FsPolicy {
            rules: config.confinement.landlock.then(|| rules(config)),
        }
    }

    /// Restricts the calling thread, and the threads it starts from now
    /// on, to the policy's files. Paths that do not exist are skipped.
    pub fn restrict_current_thread(&self) -> Result<FsConfinement, LandlockError> {
        let Some(rules) = &self.rules else {
            return Ok(FsConfinement::Off);
        };
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(ABI_WANTED))?
            .create()?;
        for rule in rules {
            if rule.create && !rule.path.exists() {
                use std::os::unix::fs::DirBuilderExt;
                // A failure shows as the directory being unusable later,
                // with the path in that error.
                let _ = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&rule.path);
            }
            let Ok(fd) = PathFd::new(&rule.path) else {
                continue;
            };
            let access = if std::fs::metadata(&rule.path).is_ok_and(|m| !m.is_dir()) {
                rule.access & AccessFs::from_file(ABI_WANTED)
            } else {
                rule.access
            };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
        }
        let status = ruleset.restrict_self()?;
        let confinement = match status.ruleset {
            RulesetStatus::FullyEnforced => FsConfinement::Full,
            RulesetStatus::PartiallyEnforced => FsConfinement::Partial,
            RulesetStatus::NotEnforced => FsConfinement::Unavailable,
        };
        if let Some(notice) = confinement.notice() {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| eprintln!("{notice}"));
        }
        Ok(confinement)
    }
}

/// The directories snapshots may be written to when none are configured:
/// the working directory and the temporary directory.
pub fn default_snapshot_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![std::env::temp_dir()];
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd);
    }
    dirs
}

/// The directories snapshots may be written beneath for `config`.
fn snapshot_dirs(config: &VmConfig) -> Vec<PathBuf> {
    if config.confinement.snapshot_dirs.is_empty() {
        default_snapshot_dirs()
    } else {
        config.confinement.snapshot_dirs.clone()
    }
}

/// When Landlock confines `config`'s VM and `dir` is not beneath one of
/// its snapshot directories, what to tell a user whose snapshot there
/// failed (Landlock's own error is a bare "Permission denied").
pub fn snapshot_dir_hint(config: &VmConfig, dir: &Path) -> Option<String> {
    if !config.confinement.landlock {
        return None;
    }
    // Lexical only: this runs on a confined API thread, whose filter has no
    // readlink (a symlinked path may get no hint; Landlock still decides).
    let cwd = std::env::current_dir().ok()?;
    let roots = snapshot_dirs(config);
    let target = lexical_absolute(&cwd, dir);
    if roots
        .iter()
        .any(|r| target.starts_with(lexical_absolute(&cwd, r)))
    {
        return None;
    }
    let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Some(format!(
        "{} is outside the directories this VM may write snapshots to ({}); \
         start Ember with --snapshot-dir naming it",
        dir.display(),
        shown.join(", ")
    ))
}

/// `path` made absolute against `cwd`, with `.` and `..` folded.
fn lexical_absolute(cwd: &Path, path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in cwd.join(path).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The rules for `config`.
fn rules(config: &VmConfig) -> Vec<Rule> {
    let read = AccessFs::from_read(ABI_WANTED);
    let read_write = AccessFs::from_all(ABI_WANTED) & AccessFs::from_file(ABI_WANTED);
    let mut rules = Vec::new();
    let mut add = |path: &Path, access: BitFlags<AccessFs>, create: bool| {
        rules.push(Rule {
            path: path.to_path_buf(),
            access,
            create,
        })
    };
    for path in [&config.kernel, &config.initrd, &config.firmware]
        .into_iter()
        .flatten()
    {
        add(path, read, false);
    }
    for disk in &config.disks {
        add(
            &disk.path,
            if disk.readonly { read } else { read_write },
            false,
        );
    }
    if let crate::vmm::console::ConsoleOutput::File(path) = &config.console_output {
        add(path, read_write, false);
    }
    for dir in &snapshot_dirs(config) {
        add(dir, AccessFs::from_all(ABI_WANTED), true);
    }
    if let Some(parent) = config.api_socket.as_deref().and_then(Path::parent) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        add(parent, AccessFs::RemoveFile.into(), false);
    }
    add(Path::new("/proc/self"), read, false);
    rules
}

/// Confines the filesystem for the VM `config` describes, from the thread
/// that is about to start the VM's threads; says in one line when the
/// kernel cannot.
pub fn confine_filesystem(config: &VmConfig) -> Result<FsConfinement, crate::vmm::error::VmError> {
    FsPolicy::for_vm(config)
        .restrict_current_thread()
        .map_err(crate::vmm::error::VmError::Landlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A directory removed at the end of the test.
    struct Scratch(PathBuf);
    impl Scratch {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `body` on a new thread confined by `config`, so the test
    /// process itself stays free.
    fn confined<T: Send + 'static>(
        config: VmConfig,
        body: impl FnOnce() -> T + Send + 'static,
    ) -> (FsConfinement, T) {
        std::thread::spawn(move || {
            let status = FsPolicy::for_vm(&config)
                .restrict_current_thread()
                .expect("ruleset");
            (status, body())
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn only_the_vm_files_and_snapshot_dirs_are_reachable() {
        let dir = std::env::temp_dir().join(format!("ember-landlock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let dir = Scratch(dir);
        let kernel = dir.path().join("kernel");
        let secret = dir.path().join("secret");
        let snaps = dir.path().join("snaps");
        std::fs::write(&kernel, b"k").expect("write");
        std::fs::write(&secret, b"s").expect("write");
        std::fs::create_dir(&snaps).expect("mkdir");
        let config = VmConfig {
            kernel: Some(kernel.clone()),
            confinement: Confinement {
                snapshot_dirs: vec![snaps.clone()],
                ..Confinement::default()
            },
            ..VmConfig::default()
        };
        let outside = dir.path().join("outside.json");
        let inside = snaps.join("state.json");
        let (status, (kernel_read, secret_read, kernel_write, outside_write, inside_write)) =
            confined(config, move || {
                (
                    std::fs::read(&kernel).is_ok(),
                    std::fs::read(&secret).is_ok(),
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&kernel)
                        .is_ok(),
                    std::fs::write(&outside, b"{}").is_ok(),
                    std::fs::File::create(&inside)
                        .and_then(|mut f| f.write_all(b"{}"))
                        .is_ok(),
                )
            });
        if status == FsConfinement::Unavailable {
            eprintln!("this kernel has no Landlock: nothing to check");
            return;
        }
        assert!(kernel_read, "the kernel stays readable");
        assert!(!secret_read, "another file in the same directory is not");
        assert!(!kernel_write, "the kernel is read-only");
        assert!(
            !outside_write,
            "no file is created outside the snapshot directories"
        );
        assert!(inside_write, "snapshot directories are writable");
    }

    #[test]
    fn a_missing_snapshot_directory_is_made_private_and_usable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ember-landlock-mk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dir = Scratch(dir);
        let snaps = dir.path().join("a").join("snaps");
        let config = VmConfig {
            confinement: Confinement {
                snapshot_dirs: vec![snaps.clone()],
                ..Confinement::default()
            },
            ..VmConfig::default()
        };
        let file = snaps.join("state.json");
        let (_, written) = confined(config, move || std::fs::write(&file, b"{}").is_ok());
        assert!(written, "the new snapshot directory is writable");
        let mode = std::fs::metadata(&snaps)
            .expect("made")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_hint_names_snapshot_dirs_only_for_paths_outside_them() {
        let config = VmConfig {
            confinement: Confinement {
                snapshot_dirs: vec!["/srv/snaps".into()],
                ..Confinement::default()
            },
            ..VmConfig::default()
        };
        assert_eq!(
            snapshot_dir_hint(&config, Path::new("/srv/snaps/one")),
            None
        );
        let hint = snapshot_dir_hint(&config, Path::new("/srv/snaps/../other")).expect("outside");
        assert!(
            hint.contains("/srv/snaps") && hint.contains("--snapshot-dir"),
            "{hint}"
        );
        assert_eq!(
            lexical_absolute(Path::new("/a/b"), Path::new("../c/./d")),
            PathBuf::from("/a/c/d")
        );
        let off = VmConfig {
            confinement: Confinement {
                landlock: false,
                ..config.confinement.clone()
            },
            ..VmConfig::default()
        };
        assert_eq!(snapshot_dir_hint(&off, Path::new("/elsewhere")), None);
    }

    #[test]
    fn landlock_off_confines_nothing() {
        let config = VmConfig {
            confinement: Confinement {
                landlock: false,
                ..Confinement::default()
            },
            ..VmConfig::default()
        };
        let (status, read) = confined(config, || std::fs::read("/etc/hostname").is_ok());
        assert_eq!(status, FsConfinement::Off);
        assert!(read || !Path::new("/etc/hostname").exists());
    }
}
