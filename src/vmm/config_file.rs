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

use crate::accel::AccelChoice;
use crate::arch::GuestArch;
use crate::devices::virtio::net::parse_mac;
use crate::vmm::config::{
    check_disk_id, check_tap_name, parse_memory_size, parse_on_off, parse_port, ConsoleKind,
    DiskSpec, NetSpec, VmConfig, DEFAULT_CMDLINE, DEFAULT_CMDLINE_RISCV64, MAX_CPUS,
};
use crate::vmm::console::{ConsoleInput, ConsoleOutput};

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
}

impl VmSettings {
    /// Reads a config file. Relative paths in it are taken relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<VmSettings, ConfigFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
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
            disks: self.disks.unwrap_or_default(),
            nets: self.nets.unwrap_or_default(),
            rng: self.rng.unwrap_or(defaults.rng),
            console: self.console.unwrap_or(defaults.console),
            api_socket: self.api_socket,
        })
    }
}

/// A value as written, with where it was written.
type Raw = Option<Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct RawSerial {
    input: Raw,
    output: Raw,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    path: Raw,
    readonly: Raw,
    id: Raw,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    fn at(&self, offset: usize) -> Location {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
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
        let message = e
            .message()
            .trim_end()
            .replacen("unknown field", "unknown key", 1);
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
        })
    }
}
