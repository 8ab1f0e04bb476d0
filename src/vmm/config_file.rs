//! `ember run --config FILE`: a whole VM described in a TOML file
//! (docs/config.md), and how it merges with command-line flags.
//!
//! The file and the flags are both read into a [`VmSettings`], where every
//! setting is optional; [`VmSettings::overridden_by`] lays the flags over
//! the file and [`VmSettings::into_vm_config`] fills in the defaults. So a
//! setting comes from the flag if given, else from the file, else from the
//! default.
//!
//! Reading is two-step: serde checks the shape of the file (unknown keys,
//! tables where tables belong) with `deny_unknown_fields`, keeping every
//! value as a spanned [`toml::Value`]; then each value is checked here by
//! the same parsers the flags use, so that a bad value's error names its
//! key (`disk[1].readonly`), the file and the line. serde's own type errors
//! would name neither the key nor the file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::{Spanned, Value};

use crate::accel::tcg::riscv64::jit::JitPolicy;
use crate::accel::AccelChoice;
use crate::arch::riscv64::irqchip::IrqchipChoice;
use crate::arch::GuestArch;
use crate::devices::virtio::net::parse_mac;
use crate::vmm::config::{
    check_disk_id, check_tap_name, parse_memory_size, parse_on_off, parse_port, Confinement,
    ConsoleKind, DiskSpec, NetSpec, VmConfig, DEFAULT_CMDLINE, DEFAULT_CMDLINE_RISCV64, MAX_CPUS,
};
use crate::vmm::console::{ConsoleInput, ConsoleOutput};
use crate::vmm::seccomp::SeccompMode;

/// Where in a config file something went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line and column, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// Why a config file, or the settings merged from it, were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a table or list where a value
    /// belongs (or the reverse), as the TOML reader reports it.
    #[error("{at}: {message}")]
    Structure { at: Location, message: String },
    /// A value the key does not accept.
    #[error("{at}: {key}: {message}")]
    Value {
        at: Location,
        key: String,
        message: String,
    },
    /// Settings that cannot go together, possibly one from the file and one
    /// from a flag.
    #[error("{0}")]
    Conflict(String),
}

impl ConfigFileError {
    /// The key a value error is about (`disk[1].readonly`), if it is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigFileError::Value { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Everything `ember run` can be told about a VM, each setting optional so
/// that the flags and the file can be laid over each other before the
/// defaults apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmSettings {
    pub arch: Option<GuestArch>,
    pub accel: Option<AccelChoice>,
    pub kvm_device: Option<PathBuf>,
    pub memory: Option<u64>,
    pub cpus: Option<u8>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub firmware: Option<PathBuf>,
    pub debug_exit: Option<u16>,
    pub rng: Option<bool>,
    pub console: Option<ConsoleKind>,
    pub serial_input: Option<ConsoleInput>,
    pub serial_output: Option<ConsoleOutput>,
    /// `Some` replaces the other source's whole list (even when empty).
    pub disks: Option<Vec<DiskSpec>>,
    pub nets: Option<Vec<NetSpec>>,
    pub api_socket: Option<PathBuf>,
    pub tcg_jit: Option<JitPolicy>,
    /// riscv64's interrupt controller.
    pub irqchip: Option<IrqchipChoice>,
    pub seccomp: Option<SeccompMode>,
    pub landlock: Option<bool>,
    /// `Some` replaces the other source's list.
    pub snapshot_dirs: Option<Vec<PathBuf>>,
}

/// The largest config file read: a VM's settings take a few hundred bytes;
/// this leaves room for many disks and comments while refusing a file that
/// was never meant to be one.
pub const CONFIG_FILE_MAX_SIZE: u64 = 1 << 20;

impl VmSettings {
    /// Reads a config file (a regular file of at most
    /// [`CONFIG_FILE_MAX_SIZE`] bytes). Relative paths in it are taken relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<VmSettings, ConfigFileError> {
        let file = path.display().to_string();
        let text = crate::vmm::host_file::read_regular_to_string(
            path,
            CONFIG_FILE_MAX_SIZE,
            crate::vmm::host_file::Symlinks::Follow,
        )
        .map_err(|source| ConfigFileError::Read {
            file: file.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        VmSettings::parse(&text, &file, base)
    }

    /// Reads config file text. `file` names it in errors; relative paths
    /// are joined to `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<VmSettings, ConfigFileError> {
        let ctx = Reader { file, text, base };
        let raw: RawFile = toml::from_str(text).map_err(|e| ctx.structure_error(&e))?;
        ctx.settings(raw)
    }

    /// These settings with every setting `flags` gives taking its place:
    /// flags beat the file. Lists are replaced whole, not appended to.
    pub fn overridden_by(self, flags: VmSettings) -> VmSettings {
        VmSettings {
            arch: flags.arch.or(self.arch),
            accel: flags.accel.or(self.accel),
            kvm_device: flags.kvm_device.or(self.kvm_device),
            memory: flags.memory.or(self.memory),
            cpus: flags.cpus.or(self.cpus),
            kernel: flags.kernel.or(self.kernel),
            initrd: flags.initrd.or(self.initrd),
            cmdline: flags.cmdline.or(self.cmdline),
            firmware: flags.firmware.or(self.firmware),
            debug_exit: flags.debug_exit.or(self.debug_exit),
            rng: flags.rng.or(self.rng),
            console: flags.console.or(self.console),
            serial_input: flags.serial_input.or(self.serial_input),
            serial_output: flags.serial_output.or(self.serial_output),
            disks: flags.disks.or(self.disks),
            nets: flags.nets.or(self.nets),
            api_socket: flags.api_socket.or(self.api_socket),
            tcg_jit: flags.tcg_jit.or(self.tcg_jit),
            irqchip: flags.irqchip.or(self.irqchip),
            seccomp: flags.seccomp.or(self.seccomp),
            landlock: flags.landlock.or(self.landlock),
            snapshot_dirs: flags.snapshot_dirs.or(self.snapshot_dirs),
        }
    }

    /// The VM to build: these settings, with the defaults for the rest.
    /// The accelerator is left as asked (`auto` is resolved by the caller,
    /// which knows whether KVM can be opened).
    pub fn into_vm_config(self) -> Result<VmConfig, ConfigFileError> {
        // Kernel and firmware may come from different sources (one from the
        // file, one from a flag), so clap cannot catch this one.
        if self.kernel.is_some() && self.firmware.is_some() {
            return Err(ConfigFileError::Conflict(
                "a kernel and a firmware image cannot be used together \
                 (--kernel/--firmware or the config file's kernel/firmware)"
                    .into(),
            ));
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return Err(ConfigFileError::Conflict(
                "an initrd needs a kernel (--kernel or the config file's kernel)".into(),
            ));
        }
        let defaults = VmConfig::default();
        let arch = self.arch.unwrap_or_default();
        let cmdline = self.cmdline.unwrap_or_else(|| {
            match arch {
                GuestArch::X86_64 => DEFAULT_CMDLINE,
                GuestArch::Riscv64 => DEFAULT_CMDLINE_RISCV64,
            }
            .to_string()
        });
        Ok(VmConfig {
            arch,
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline,
            memory: self.memory.unwrap_or(defaults.memory),
            cpus: self.cpus.unwrap_or(defaults.cpus),
            firmware: self.firmware,
            debug_exit: self.debug_exit,
            accel: self.accel.unwrap_or(defaults.accel),
            kvm_path: self.kvm_device.unwrap_or(defaults.kvm_path),
            console_input: self.serial_input.unwrap_or(defaults.console_input),
            console_output: self.serial_output.unwrap_or(defaults.console_output),
            irqchip: defaults.irqchip,
            riscv_irqchip: self.irqchip.unwrap_or(defaults.riscv_irqchip),
            disks: self.disks.unwrap_or_default(),
            nets: self.nets.unwrap_or_default(),
            rng: self.rng.unwrap_or(defaults.rng),
            console: self.console.unwrap_or(defaults.console),
            api_socket: self.api_socket,
            tcg_jit: self.tcg_jit.unwrap_or(defaults.tcg_jit),
            confinement: Confinement {
                seccomp: self.seccomp.unwrap_or(defaults.confinement.seccomp),
                landlock: self.landlock.unwrap_or(defaults.confinement.landlock),
                snapshot_dirs: self
                    .snapshot_dirs
                    .unwrap_or(defaults.confinement.snapshot_dirs),
            },
        })
    }
}

/// A value as written, with where it was written.
type Raw = Option<Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a VM description (docs/config.md)")]
struct RawFile {
    arch: Raw,
    accel: Raw,
    kvm_device: Raw,
    memory: Raw,
    cpus: Raw,
    kernel: Raw,
    initrd: Raw,
    cmdline: Raw,
    firmware: Raw,
    debug_exit: Raw,
    rng: Raw,
    console: Raw,
    api_socket: Raw,
    tcg_jit: Raw,
    irqchip: Raw,
    seccomp: Raw,
    landlock: Raw,
    snapshot_dir: Raw,
    serial: Option<RawSerial>,
    disk: Option<Vec<Spanned<RawDisk>>>,
    net: Option<Vec<Spanned<RawNet>>>,
    // Actions of one invocation rather than parts of the VM: read only to
    // refuse them with a better message than "unknown key".
    print_mtree: Raw,
    timings: Raw,
    dump_dtb: Raw,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [serial] table with input and output"
)]
struct RawSerial {
    input: Raw,
    output: Raw,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[disk]] table with path, readonly and id"
)]
struct RawDisk {
    path: Raw,
    readonly: Raw,
    id: Raw,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[net]] table with tap and mac")]
struct RawNet {
    tap: Raw,
    mac: Raw,
}

/// The file being read, for checking values and placing errors.
struct Reader<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
}

/// What a value was written as, for "expected X, not Y" messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

impl Reader<'_> {
    /// The line and column (in characters) of a byte offset from a span.
    fn at(&self, offset: usize) -> Location {
        // Spans fall on character boundaries; should one not, the whole
        // text stands in rather than a panic over a position.
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        Location {
            file: self.file.to_string(),
            line: Some(line),
            column: Some(column),
        }
    }

    fn structure_error(&self, e: &toml::de::Error) -> ConfigFileError {
        let at = match e.span() {
            Some(span) => self.at(span.start),
            None => Location {
                file: self.file.to_string(),
                line: None,
                column: None,
            },
        };
        // TOML calls them keys; serde's "field" would read oddly here.
        let mut message = e
            .message()
            .trim_end()
            .replacen("unknown field", "unknown key", 1);
        // The keys read only to refuse them (actions of one invocation, not
        // parts of a VM) are no keys to suggest.
        for refused in ["print_mtree", "timings", "dump_dtb"] {
            message = message.replace(&format!(", `{refused}`"), "");
        }
        // Other messages ("invalid type: string, expected a sequence",
        // "duplicate key") do not say which key; the line they are about
        // does.
        if !message.starts_with("unknown key") {
            if let Some(line) = e
                .span()
                .and_then(|span| self.text.get(..span.start))
                .map(|before| before.rfind('\n').map_or(0, |i| i + 1))
                .and_then(|start| self.text[start..].lines().next())
                .map(str::trim)
                .filter(|line| !line.is_empty())
            {
                message = format!("{message}, in `{line}`");
            }
        }
        ConfigFileError::Structure { at, message }
    }

    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigFileError {
        let mut at = self.at(span.start);
        // The line is enough to find a value; the column would point at the
        // value rather than the key, which reads as noise.
        at.column = None;
        ConfigFileError::Value {
            at,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn string<'v>(&self, key: &str, v: &'v Spanned<Value>) -> Result<&'v str, ConfigFileError> {
        match v.get_ref() {
            Value::String(s) => Ok(s),
            other => Err(self.error(
                v.span(),
                key,
                format!("expected a string, not {}", kind(other)),
            )),
        }
    }

    /// A string parsed by the same `FromStr` as the flag.
    fn parsed<T: FromStr<Err = String>>(
        &self,
        key: &str,
        v: &Spanned<Value>,
    ) -> Result<T, ConfigFileError> {
        self.string(key, v)?
            .parse()
            .map_err(|e: String| self.error(v.span(), key, e))
    }

    /// Relative paths in the file are relative to the file, so that a VM
    /// directory can be moved or run from anywhere.
    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn path(&self, key: &str, v: &Spanned<Value>) -> Result<PathBuf, ConfigFileError> {
        let s = self.string(key, v)?;
        if s.is_empty() {
            return Err(self.error(v.span(), key, "expected a path, not an empty string"));
        }
        Ok(self.resolve(Path::new(s)))
    }

    /// A switch: a TOML boolean, or the words the flags' `readonly=on`
    /// accepts.
    fn switch(&self, key: &str, v: &Spanned<Value>) -> Result<bool, ConfigFileError> {
        match v.get_ref() {
            Value::Boolean(b) => Ok(*b),
            Value::String(s) => parse_on_off(s).ok_or_else(|| {
                self.error(
                    v.span(),
                    key,
                    format!("expected on/off or a boolean, not \"{s}\""),
                )
            }),
            other => Err(self.error(
                v.span(),
                key,
                format!("expected on/off or a boolean, not {}", kind(other)),
            )),
        }
    }

    fn memory(&self, key: &str, v: &Spanned<Value>) -> Result<u64, ConfigFileError> {
        let text = match v.get_ref() {
            Value::String(s) => s.clone(),
            // A byte count, read as the flag reads one.
            Value::Integer(n) => n.to_string(),
            other => {
                return Err(self.error(
                    v.span(),
                    key,
                    format!(
                        "expected a size such as \"512M\" or a byte count, not {}",
                        kind(other)
                    ),
                ))
            }
        };
        parse_memory_size(&text).map_err(|e| self.error(v.span(), key, e))
    }

    fn cpus(&self, key: &str, v: &Spanned<Value>) -> Result<u8, ConfigFileError> {
        let bad = |what: String| {
            self.error(
                v.span(),
                key,
                format!("expected a number of vCPUs from 1 to {MAX_CPUS}, not {what}"),
            )
        };
        match v.get_ref() {
            Value::Integer(n) => match u8::try_from(*n) {
                Ok(c) if (1..=MAX_CPUS).contains(&c) => Ok(c),
                _ => Err(bad(n.to_string())),
            },
            Value::String(s) => Err(bad(format!("\"{s}\""))),
            other => Err(bad(kind(other).to_string())),
        }
    }

    fn port(&self, key: &str, v: &Spanned<Value>) -> Result<u16, ConfigFileError> {
        match v.get_ref() {
            Value::Integer(n) => u16::try_from(*n).map_err(|_| {
                self.error(
                    v.span(),
                    key,
                    format!("{n} is not a port number (0..=65535)"),
                )
            }),
            Value::String(s) => parse_port(s).map_err(|e| self.error(v.span(), key, e)),
            other => Err(self.error(
                v.span(),
                key,
                format!("expected a port number, not {}", kind(other)),
            )),
        }
    }

    fn action(&self, key: &str, v: &Spanned<Value>) -> ConfigFileError {
        let flag = format!("--{}", key.replace('_', "-"));
        self.error(
            v.span(),
            key,
            format!(
                "is an action of one run, not part of the VM's description; \
                 give {flag} on the command line"
            ),
        )
    }

    fn disk(&self, index: usize, d: &Spanned<RawDisk>) -> Result<DiskSpec, ConfigFileError> {
        let raw = d.get_ref();
        let key = |k: &str| format!("disk[{index}].{k}");
        let path = match &raw.path {
            Some(v) => self.path(&key("path"), v)?,
            None => return Err(self.error(d.span(), &format!("disk[{index}]"), "needs a path")),
        };
        let readonly = match &raw.readonly {
            Some(v) => self.switch(&key("readonly"), v)?,
            None => false,
        };
        let id = match &raw.id {
            Some(v) => {
                let id = self.string(&key("id"), v)?;
                check_disk_id(id).map_err(|e| self.error(v.span(), &key("id"), e))?;
                Some(id.to_string())
            }
            None => None,
        };
        Ok(DiskSpec { path, readonly, id })
    }

    fn net(&self, index: usize, n: &Spanned<RawNet>) -> Result<NetSpec, ConfigFileError> {
        let raw = n.get_ref();
        let key = |k: &str| format!("net[{index}].{k}");
        let tap = match &raw.tap {
            Some(v) => {
                let tap = self.string(&key("tap"), v)?;
                check_tap_name(tap).map_err(|e| self.error(v.span(), &key("tap"), e))?;
                tap.to_string()
            }
            None => {
                return Err(self.error(
                    n.span(),
                    &format!("net[{index}]"),
                    "needs a tap interface name",
                ))
            }
        };
        let mac = match &raw.mac {
            Some(v) => Some(
                parse_mac(self.string(&key("mac"), v)?)
                    .map_err(|e| self.error(v.span(), &key("mac"), e.to_string()))?,
            ),
            None => None,
        };
        Ok(NetSpec { tap, mac })
    }

    /// `serial.input` or `serial.output`: the flag's words (`stdin`,
    /// `none`, `stdout`) or a path, which is resolved like any other.
    fn console_end<T: FromStr<Err = String>>(
        &self,
        key: &str,
        v: &Spanned<Value>,
    ) -> Result<T, ConfigFileError> {
        if self.string(key, v)?.is_empty() {
            return Err(self.error(v.span(), key, "expected a path, not an empty string"));
        }
        self.parsed(key, v)
    }

    fn settings(&self, raw: RawFile) -> Result<VmSettings, ConfigFileError> {
        for (key, v) in [
            ("print_mtree", &raw.print_mtree),
            ("timings", &raw.timings),
            ("dump_dtb", &raw.dump_dtb),
        ] {
            if let Some(v) = v {
                return Err(self.action(key, v));
            }
        }
        let serial = raw.serial.unwrap_or(RawSerial {
            input: None,
            output: None,
        });
        let serial_input = serial
            .input
            .as_ref()
            .map(|v| self.console_end("serial.input", v))
            .transpose()?
            .map(|i| match i {
                ConsoleInput::Path(p) => ConsoleInput::Path(self.resolve(&p)),
                other => other,
            });
        let serial_output = serial
            .output
            .as_ref()
            .map(|v| self.console_end("serial.output", v))
            .transpose()?
            .map(|o| match o {
                ConsoleOutput::File(p) => ConsoleOutput::File(self.resolve(&p)),
                other => other,
            });
        let disks = raw
            .disk
            .as_ref()
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, d)| self.disk(i, d))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let nets = raw
            .net
            .as_ref()
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, n)| self.net(i, n))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let path = |key: &str, v: &Raw| v.as_ref().map(|v| self.path(key, v)).transpose();
        Ok(VmSettings {
            arch: raw
                .arch
                .as_ref()
                .map(|v| self.parsed("arch", v))
                .transpose()?,
            accel: raw
                .accel
                .as_ref()
                .map(|v| self.parsed("accel", v))
                .transpose()?,
            kvm_device: path("kvm_device", &raw.kvm_device)?,
            memory: raw
                .memory
                .as_ref()
                .map(|v| self.memory("memory", v))
                .transpose()?,
            cpus: raw
                .cpus
                .as_ref()
                .map(|v| self.cpus("cpus", v))
                .transpose()?,
            kernel: path("kernel", &raw.kernel)?,
            initrd: path("initrd", &raw.initrd)?,
            cmdline: raw
                .cmdline
                .as_ref()
                .map(|v| self.string("cmdline", v).map(str::to_string))
                .transpose()?,
            firmware: path("firmware", &raw.firmware)?,
            debug_exit: raw
                .debug_exit
                .as_ref()
                .map(|v| self.port("debug_exit", v))
                .transpose()?,
            rng: raw
                .rng
                .as_ref()
                .map(|v| self.switch("rng", v))
                .transpose()?,
            console: raw
                .console
                .as_ref()
                .map(|v| self.parsed("console", v))
                .transpose()?,
            serial_input,
            serial_output,
            disks,
            nets,
            api_socket: path("api_socket", &raw.api_socket)?,
            tcg_jit: raw
                .tcg_jit
                .as_ref()
                .map(|v| self.parsed("tcg_jit", v))
                .transpose()?,
            irqchip: raw
                .irqchip
                .as_ref()
                .map(|v| self.parsed("irqchip", v))
                .transpose()?,
            seccomp: raw
                .seccomp
                .as_ref()
                .map(|v| self.parsed("seccomp", v))
                .transpose()?,
            landlock: raw
                .landlock
                .as_ref()
                .map(|v| self.switch("landlock", v))
                .transpose()?,
            snapshot_dirs: path("snapshot_dir", &raw.snapshot_dir)?.map(|p| vec![p]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VmSettings, ConfigFileError> {
        VmSettings::parse(text, "vm.toml", Path::new("/vms/a"))
    }

    /// The error's text, which must name the file and `needles`.
    fn refused(text: &str, needles: &[&str]) -> ConfigFileError {
        let err = match parse(text) {
            Ok(s) => panic!("{text:?} was accepted: {s:?}"),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert!(shown.starts_with("vm.toml:"), "{text:?}: {shown}");
        for n in needles {
            assert!(shown.contains(n), "{text:?}: {n:?} not in {shown}");
        }
        err
    }

    const EVERY_KEY: &str = r#"
arch = "riscv64"
accel = "tcg"
kvm_device = "/dev/kvm2"
memory = "2G"
cpus = 4
kernel = "Image"
initrd = "/boot/initrd.img"
cmdline = "console=hvc0"
debug_exit = 0x501
rng = true
console = "virtio"
api_socket = "run/api.sock"
tcg_jit = "off"
irqchip = "plic"
seccomp = "log"
landlock = false
snapshot_dir = "snaps"

[serial]
input = "none"
output = "logs/console.log"

[[disk]]
path = "root.img"
readonly = true
id = "root"

[[disk]]
path = "/data/scratch.img"

[[net]]
tap = "tap0"
mac = "52:54:00:12:34:56"
"#;

    #[test]
    fn every_key_is_read() {
        let s = parse(EVERY_KEY).unwrap();
        assert_eq!(
            s,
            VmSettings {
                arch: Some(GuestArch::Riscv64),
                accel: Some(AccelChoice::Tcg),
                kvm_device: Some("/dev/kvm2".into()),
                memory: Some(2 << 30),
                cpus: Some(4),
                kernel: Some("/vms/a/Image".into()),
                initrd: Some("/boot/initrd.img".into()),
                cmdline: Some("console=hvc0".into()),
                firmware: None,
                debug_exit: Some(0x501),
                rng: Some(true),
                console: Some(ConsoleKind::Virtio),
                serial_input: Some(ConsoleInput::None),
                serial_output: Some(ConsoleOutput::File("/vms/a/logs/console.log".into())),
                disks: Some(vec![
                    DiskSpec {
                        path: "/vms/a/root.img".into(),
                        readonly: true,
                        id: Some("root".into()),
                    },
                    DiskSpec {
                        path: "/data/scratch.img".into(),
                        readonly: false,
                        id: None,
                    },
                ]),
                nets: Some(vec![NetSpec {
                    tap: "tap0".into(),
                    mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                }]),
                api_socket: Some("/vms/a/run/api.sock".into()),
                tcg_jit: Some(JitPolicy::Off),
                irqchip: Some(IrqchipChoice::Plic),
                seccomp: Some(SeccompMode::Log),
                landlock: Some(false),
                snapshot_dirs: Some(vec!["/vms/a/snaps".into()]),
            }
        );
    }

    #[test]
    fn unknown_keys_are_never_answered_with_keys_the_file_refuses() {
        let err = refused("timing = true", &["unknown key `timing`", "`tcg_jit`"]);
        let shown = err.to_string();
        for refused_key in ["print_mtree", "timings", "dump_dtb"] {
            assert!(!shown.contains(refused_key), "{shown}");
        }
    }

    /// The complete example in docs/config.md is a valid file.
    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../../docs/config.md");
        let start = doc.find("```toml\n").expect("an example") + "```toml\n".len();
        let len = doc[start..].find("```").expect("the example's end");
        let s = parse(&doc[start..start + len]).unwrap();
        assert_eq!(s.memory, Some(1 << 30));
        assert_eq!(s.disks.as_ref().map(Vec::len), Some(2));
        assert_eq!(s.nets.as_ref().map(Vec::len), Some(1));
        assert_eq!(s.api_socket, Some("/vms/a/run/api.sock".into()));
        // Kernel and initrd without firmware: a VM the VMM can be asked for.
        let c = s.into_vm_config().unwrap();
        assert_eq!((c.cpus, c.console, c.rng), (2, ConsoleKind::Virtio, true));
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        assert_eq!(parse("").unwrap(), VmSettings::default());
        assert_eq!(parse("# just a comment\n").unwrap(), VmSettings::default());
    }

    #[test]
    fn values_take_the_flags_spellings_too() {
        let s = parse(
            "memory = 1048576\nfirmware = \"bios.bin\"\ndebug_exit = \"0xf4\"\nrng = \"off\"\n\
             [serial]\ninput = \"sock\"\noutput = \"stdout\"\n\
             [[disk]]\npath = \"d.img\"\nreadonly = \"on\"\n",
        )
        .unwrap();
        assert_eq!(s.memory, Some(1 << 20));
        assert_eq!(s.firmware, Some("/vms/a/bios.bin".into()));
        assert_eq!(s.debug_exit, Some(0xf4));
        assert_eq!(s.rng, Some(false));
        assert_eq!(
            s.serial_input,
            Some(ConsoleInput::Path("/vms/a/sock".into()))
        );
        assert_eq!(s.serial_output, Some(ConsoleOutput::Stdout));
        assert!(s.disks.unwrap()[0].readonly);
        // Inline tables are the same TOML as [[disk]] sections.
        let s = parse("disk = [{ path = \"a.img\", id = \"a\" }]\nnet = []\n").unwrap();
        assert_eq!(s.disks.unwrap()[0].path, PathBuf::from("/vms/a/a.img"));
        assert_eq!(s.nets, Some(vec![]));
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let s = VmSettings::parse(
            "kernel = \"../k/vmlinux\"\n[[disk]]\npath = \"./d.img\"\n",
            "cfg/vm.toml",
            Path::new("cfg"),
        )
        .unwrap();
        assert_eq!(s.kernel, Some("cfg/../k/vmlinux".into()));
        assert_eq!(s.disks.unwrap()[0].path, PathBuf::from("cfg/./d.img"));
        // A file in the current directory has an empty parent: paths stay
        // relative to the current directory.
        let s = VmSettings::parse("kernel = \"vmlinux\"\n", "vm.toml", Path::new("")).unwrap();
        assert_eq!(s.kernel, Some("vmlinux".into()));
    }

    #[test]
    fn load_resolves_against_the_files_directory() {
        let dir = std::env::temp_dir().join(format!("ember-config-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.toml");
        std::fs::write(
            &path,
            "initrd = \"initrd.cpio\"\nkernel = \"/abs/vmlinux\"\n",
        )
        .unwrap();
        let s = VmSettings::load(&path).unwrap();
        assert_eq!(s.initrd, Some(dir.join("initrd.cpio")));
        assert_eq!(s.kernel, Some("/abs/vmlinux".into()));
        let missing = dir.join("missing.toml");
        let err = VmSettings::load(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        refused(
            "memroy = \"1G\"\n",
            &["vm.toml:1:1:", "unknown key `memroy`"],
        );
        refused(
            "memory = \"1G\"\n[serial]\ninptu = \"none\"\n",
            &["vm.toml:3:1:", "unknown key `inptu`"],
        );
        refused(
            "[[disk]]\npath = \"a\"\n[[disk]]\npath = \"b\"\nreadnly = true\n",
            &["vm.toml:5:1:", "unknown key `readnly`"],
        );
        refused(
            "[[net]]\ntap = \"t\"\nspeed = 10\n",
            &["unknown key `speed`"],
        );
        refused("[vm]\nmemory = \"1G\"\n", &["unknown key `vm`"]);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("memory = \"12Q\"", "memory", &["not a memory size"]),
            ("memory = -1", "memory", &["not a memory size"]),
            ("memory = true", "memory", &["byte count", "a boolean"]),
            ("cpus = 0", "cpus", &["from 1 to 254", "not 0"]),
            ("cpus = 255", "cpus", &["not 255"]),
            ("cpus = \"two\"", "cpus", &["not \"two\""]),
            ("arch = \"arm\"", "arch", &["unknown architecture"]),
            ("accel = \"hvf\"", "accel", &["unknown accelerator"]),
            ("console = \"tty\"", "console", &["serial or virtio"]),
            ("tcg_jit = \"fast\"", "tcg_jit", &["off, hot or eager"]),
            ("debug_exit = 70000", "debug_exit", &["not a port"]),
            ("debug_exit = \"0xzz\"", "debug_exit", &["not a port"]),
            ("rng = \"maybe\"", "rng", &["on/off or a boolean"]),
            ("rng = 1", "rng", &["on/off or a boolean", "an integer"]),
            ("kernel = \"\"", "kernel", &["empty"]),
            ("kernel = 5", "kernel", &["expected a string"]),
            (
                "cmdline = [\"a\"]",
                "cmdline",
                &["expected a string", "an array"],
            ),
            ("api_socket = false", "api_socket", &["expected a string"]),
            ("[serial]\noutput = \"\"", "serial.output", &["empty"]),
            (
                "[serial]\ninput = 0",
                "serial.input",
                &["expected a string"],
            ),
            (
                "[[disk]]\npath = \"a\"\n[[disk]]\npath = \"b\"\nreadonly = \"maybe\"",
                "disk[1].readonly",
                &["vm.toml:5:", "expected on/off or a boolean"],
            ),
            (
                "[[disk]]\npath = \"a\"\nid = \"has space\"",
                "disk[0].id",
                &["20 printable"],
            ),
            (
                "[[disk]]\nreadonly = true",
                "disk[0]",
                &["vm.toml:1:", "needs a path"],
            ),
            ("[[disk]]\npath = 3", "disk[0].path", &["expected a string"]),
            (
                "[[net]]\ntap = \"t\"\nmac = \"zz\"",
                "net[0].mac",
                &["MAC", "zz"],
            ),
            (
                "[[net]]\ntap = \"t\"\nmac = \"01:00:00:00:00:00\"",
                "net[0].mac",
                &["01:00:00:00:00:00"],
            ),
            (
                "[[net]]\ntap = \"0123456789abcdef\"",
                "net[0].tap",
                &["interface name"],
            ),
            (
                "[[net]]\nmac = \"52:54:00:12:34:56\"",
                "net[0]",
                &["needs a tap"],
            ),
        ];
        for (text, key, needles) in cases {
            let err = refused(text, needles);
            assert_eq!(err.key(), Some(*key), "{text:?}: {err}");
            assert!(err.to_string().contains(&format!(": {key}: ")), "{err}");
        }
    }

    #[test]
    fn shape_errors_show_the_line() {
        refused("disk = \"x\"\n", &["vm.toml:1:", "in `disk = \"x\"`"]);
        refused(
            "serial = \"x\"\n",
            &["expected a [serial] table", "in `serial = \"x\"`"],
        );
        refused(
            "memory = \"1G\"\nmemory = \"2G\"\n",
            &["vm.toml:2:", "duplicate key", "in `memory = \"2G\"`"],
        );
        refused("memory = \n", &["vm.toml:1:"]);
        // Columns count characters, not bytes.
        refused("cmdline = \"é\" x\n", &["vm.toml:1:15:"]);
    }

    #[test]
    fn actions_are_not_part_of_the_file() {
        refused("print_mtree = true", &["print_mtree", "--print-mtree"]);
        refused("timings = true", &["timings", "--timings"]);
        refused("dump_dtb = \"x.dtb\"", &["dump_dtb", "--dump-dtb"]);
    }

    #[test]
    fn defaults_fill_what_nobody_set() {
        let c = VmSettings::default().into_vm_config().unwrap();
        let d = VmConfig::default();
        assert_eq!(c.memory, 512 << 20);
        assert_eq!(c.cpus, 1);
        assert_eq!(c.accel, AccelChoice::Auto);
        assert_eq!(c.kvm_path, d.kvm_path);
        assert_eq!(c.console_input, ConsoleInput::Stdin);
        assert_eq!(c.console_output, ConsoleOutput::Stdout);
        assert_eq!(c.console, ConsoleKind::Serial);
        assert!(!c.rng && c.disks.is_empty() && c.nets.is_empty() && c.api_socket.is_none());
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        let riscv = VmSettings {
            arch: Some(GuestArch::Riscv64),
            ..VmSettings::default()
        };
        assert_eq!(
            riscv.into_vm_config().unwrap().cmdline,
            DEFAULT_CMDLINE_RISCV64
        );
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_the_defaults() {
        let file = parse(
            "memory = \"1G\"\ncpus = 2\nrng = true\nconsole = \"virtio\"\n\
             [[disk]]\npath = \"a.img\"\n[[disk]]\npath = \"b.img\"\n",
        )
        .unwrap();
        // Nothing on the command line: the file's values.
        let c = file.clone().overridden_by(VmSettings::default());
        let c = c.into_vm_config().unwrap();
        assert_eq!((c.memory, c.cpus, c.rng), (1 << 30, 2, true));
        assert_eq!(c.console, ConsoleKind::Virtio);
        assert_eq!(c.disks.len(), 2);
        // Left unset by both: the default.
        assert_eq!(c.accel, AccelChoice::Auto);

        let flags = VmSettings {
            memory: Some(64 << 20),
            console: Some(ConsoleKind::Serial),
            disks: Some(vec!["path=/c.img,readonly=on".parse().unwrap()]),
            ..VmSettings::default()
        };
        let c = file.clone().overridden_by(flags).into_vm_config().unwrap();
        assert_eq!(c.memory, 64 << 20, "a scalar flag beats the file");
        assert_eq!(c.cpus, 2, "the file's value stands where no flag was given");
        assert_eq!(
            c.console,
            ConsoleKind::Serial,
            "a flag giving the default still beats the file"
        );
        assert_eq!(
            c.disks,
            vec![DiskSpec {
                path: "/c.img".into(),
                readonly: true,
                id: None
            }],
            "--disk replaces the file's disks"
        );
        assert!(c.rng, "an absent switch flag leaves the file's setting");

        // A switch flag turns on what the file leaves off.
        let file = parse("rng = false").unwrap();
        let flags = VmSettings {
            rng: Some(true),
            ..VmSettings::default()
        };
        assert!(file.overridden_by(flags).into_vm_config().unwrap().rng);
    }

    #[test]
    fn kernel_and_firmware_conflict_across_sources() {
        let file = parse("firmware = \"bios.bin\"").unwrap();
        let flags = VmSettings {
            kernel: Some("vmlinux".into()),
            ..VmSettings::default()
        };
        let err = file.overridden_by(flags).into_vm_config().unwrap_err();
        assert!(err.to_string().contains("cannot be used together"), "{err}");
        let err = parse("initrd = \"i.cpio\"")
            .unwrap()
            .into_vm_config()
            .unwrap_err();
        assert!(err.to_string().contains("initrd needs a kernel"), "{err}");
        // An initrd flag with the file's kernel is fine.
        let file = parse("kernel = \"vmlinux\"").unwrap();
        let flags = VmSettings {
            initrd: Some("/i.cpio".into()),
            ..VmSettings::default()
        };
        let c = file.overridden_by(flags).into_vm_config().unwrap();
        assert_eq!(c.kernel, Some("/vms/a/vmlinux".into()));
        assert_eq!(c.initrd, Some("/i.cpio".into()));
    }
}
