//! Per-thread seccomp filters, in Firecracker's style: every thread that
//! can be reached by a guest (vCPUs, software harts, the event loop that
//! runs the devices) or by a local client (the API threads) installs an
//! allow-list of the system calls its job needs, before any guest code or
//! client request runs. Anything else is a bug or an attack: with
//! `--seccomp on` (the default) the kernel raises SIGSYS, whose handler
//! names the system call and the thread on stderr and ends the process
//! with [`EXIT_BAD_SYSCALL`]; with `--seccomp log` the call goes through and
//! the kernel logs it (audit log / `dmesg`), for developing the lists.
//!
//! The filters are built with the rust-vmm `seccompiler` crate. What is
//! written here by hand is the lists themselves and the SIGSYS report.
//! Arguments are checked where they decide what a call can do:
//! - `ioctl`: KVM's ioctl type (0xAE) only, plus the few terminal requests
//!   the event loop uses to leave raw mode; software harts have none.
//! - `mmap`/`mprotect`: never `PROT_EXEC`. The JIT's code arena is mapped
//!   before a hart installs its filter, so no thread can make a new
//!   executable mapping once guest code runs.
//! - `clone`: only new threads (`CLONE_THREAD`); `clone3`, whose flags sit
//!   behind a pointer BPF cannot read, fails with `ENOSYS` so that glibc
//!   falls back to `clone`.
//! - `socket`: no thread creates sockets once the VM runs (the API socket
//!   is bound before).
//! - `tgkill`/`kill`: only this process.
//! - `prctl`: only naming threads.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The exit status of a process whose filter refused a system call (the
/// value Firecracker uses for the same event).
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// `--seccomp on|log|off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// A call outside the thread's list ends the VM with a message.
    #[default]
    On,
    /// A call outside the list is allowed and logged by the kernel.
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(SeccompMode::On),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            other => Err(format!(
                "unknown seccomp mode {other:?}: use on, log or off"
            )),
        }
    }
}

impl std::fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeccompMode::On => "on",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// What a thread does, which decides its allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread running the event loop: console input, virtio queue
    /// work (disk and TAP I/O), the exit signal; after the loop, tear-down.
    Vmm,
    /// A KVM vCPU thread: `KVM_RUN` and the exits it serves.
    Vcpu,
    /// A software-CPU hart thread.
    Hart,
    /// The API socket's acceptor and its connection threads (pause,
    /// resume, snapshot files).
    Api,
    /// The thread that writes guest console output to the host.
    ConsoleOutput,
}

impl ThreadKind {
    /// Whether threads of this kind start other threads (the API acceptor
    /// one per connection; the event loop's thread only joins, but its
    /// list is the one a tear-down path may need).
    fn starts_threads(self) -> bool {
        matches!(self, ThreadKind::Vmm | ThreadKind::Api)
    }

    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Hart => "hart",
            ThreadKind::Api => "api",
            ThreadKind::ConsoleOutput => "console output",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {0} thread: {1}")]
    Build(&'static str, seccompiler::BackendError),
    #[error("cannot compile the seccomp filter of the {0} thread: {1}")]
    Compile(&'static str, seccompiler::BackendError),
    #[error("cannot install the seccomp filter of the {0} thread: {1}")]
    Install(&'static str, seccompiler::Error),
}

thread_local! {
    /// The kind of the calling thread's filter, for the SIGSYS report.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Installs the allow-list of `kind` on the calling thread (and sets
/// `PR_SET_NO_NEW_PRIVS`, which seccompiler does first). Threads the
/// caller starts afterwards inherit it on top of their own.
pub fn confine_thread(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(()),
        SeccompMode::On => {
            install_sigsys_handler();
            SeccompAction::Trap
        }
        SeccompMode::Log => SeccompAction::Log,
    };
    let program = compile(kind, mismatch)?;
    KIND.with(|k| k.set(Some(kind)));
    let install = |p: &BpfProgram| {
        seccompiler::apply_filter(p).map_err(|e| SeccompError::Install(kind.name(), e))
    };
    install(&errno_filter(kind)?)?;
    install(&program)
}

/// The calls a thread kind's allow-list lets through only to have them
/// fail with an error (the kernel takes the stricter action of the two
/// filters, errno over allow), and that error:
/// - threads that start threads: `clone3` fails with `ENOSYS`. It carries
///   its flags in memory BPF cannot read, so only `clone`, whose flags are
///   checked, may start a thread; glibc falls back to it on `ENOSYS`.
/// - vCPU, hart and console-output threads: `open`/`openat` fail with
///   `EACCES`. They open nothing, but glibc's `free` may, once per
///   process, read `/proc/sys/vm/overcommit_memory` when a thread's malloc
///   arena shrinks (at thread exit, say); it copes with the error as it
///   does with Landlock's.
fn refused_with_errno(kind: ThreadKind) -> (Vec<libc::c_long>, i32) {
    if kind.starts_threads() {
        (vec![libc::SYS_clone3], libc::ENOSYS)
    } else {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // x86_64 adds its legacy calls
        let mut calls = vec![libc::SYS_openat];
        #[cfg(target_arch = "x86_64")]
        calls.push(libc::SYS_open);
        (calls, libc::EACCES)
    }
}

/// A filter that fails the calls of [`refused_with_errno`] with their
/// error and allows everything else. It is a filter of its own because an
/// action other than allow for some calls is not expressible in the
/// allow-list.
fn errno_filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let (calls, errno) = refused_with_errno(kind);
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls.into_iter().map(|c| (c, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        target_arch(),
    )
    .map_err(|e| SeccompError::Build(kind.name(), e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind.name(), e))
}

/// The BPF program of `kind` (separate from installing it, for tests and
/// the start-up benchmark).
pub fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allow_list(kind)
        .map_err(|e| SeccompError::Build(kind.name(), e))?
        .into_iter()
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, target_arch())
        .map_err(|e| SeccompError::Build(kind.name(), e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind.name(), e))
}

fn target_arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
    #[cfg(target_arch = "riscv64")]
    {
        TargetArch::riscv64
    }
}

type Rules = Vec<(i64, Vec<SeccompRule>)>;
type Built<T> = Result<T, seccompiler::BackendError>;

/// A system call allowed with any arguments.
fn any(sys: libc::c_long) -> (i64, Vec<SeccompRule>) {
    (sys, Vec::new())
}

/// A condition on argument `arg` (a 64-bit value).
fn arg(arg: u8, op: SeccompCmpOp, value: u64) -> Built<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
}

/// A condition on argument `arg` read as a 32-bit `int` (the kernel does
/// not clear the upper half of an `int` argument for us).
fn arg32(arg: u8, op: SeccompCmpOp, value: u64) -> Built<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// `sys` allowed when any one of `rules` matches.
fn when(sys: libc::c_long, rules: Vec<Vec<SeccompCondition>>) -> Built<(i64, Vec<SeccompRule>)> {
    let rules = rules
        .into_iter()
        .map(SeccompRule::new)
        .collect::<Built<Vec<_>>>()?;
    Ok((sys, rules))
}

/// An ioctl request number as a filter value (`libc::Ioctl` is `u64` on
/// some targets and `i32` on others).
#[allow(clippy::unnecessary_cast)]
fn request(req: libc::Ioctl) -> u64 {
    req as u64
}

/// The KVM ioctl type (`KVMIO`), bits 8..16 of an ioctl request.
const KVMIO: u64 = 0xAE;

/// `ioctl` on KVM descriptors only.
fn kvm_ioctls() -> Built<Vec<SeccompCondition>> {
    Ok(vec![arg32(1, SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8)?])
}

/// Runtime calls every thread makes: locks, time, memory (never
/// executable), signals for kicks, logging to stderr, exiting.
fn base() -> Built<Rules> {
    let no_exec = || arg(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);
    let pid = std::process::id() as u64;
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // x86_64 adds its legacy calls
    let mut rules = vec![
        any(libc::SYS_futex),
        any(libc::SYS_sched_yield),
        any(libc::SYS_nanosleep),
        any(libc::SYS_clock_nanosleep),
        any(libc::SYS_clock_gettime),
        any(libc::SYS_gettid),
        any(libc::SYS_getpid),
        any(libc::SYS_rt_sigreturn),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_sigaltstack),
        any(libc::SYS_munmap),
        any(libc::SYS_madvise),
        any(libc::SYS_brk),
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
        any(libc::SYS_restart_syscall),
        any(libc::SYS_getrandom),
        any(libc::SYS_sched_getaffinity),
        any(libc::SYS_write),
        any(libc::SYS_writev),
        any(libc::SYS_read),
        any(libc::SYS_close),
        any(libc::SYS_rseq),
        any(libc::SYS_fstat),
        any(libc::SYS_newfstatat),
        any(libc::SYS_statx),
        any(libc::SYS_lseek),
        any(libc::SYS_fcntl),
        when(libc::SYS_mmap, vec![vec![no_exec()?]])?,
        when(libc::SYS_mprotect, vec![vec![no_exec()?]])?,
        when(
            libc::SYS_tgkill,
            vec![vec![arg32(0, SeccompCmpOp::Eq, pid)?]],
        )?,
        when(
            libc::SYS_prctl,
            vec![
                vec![arg32(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?],
                vec![arg32(0, SeccompCmpOp::Eq, libc::PR_GET_NAME as u64)?],
            ],
        )?,
        any(libc::SYS_mremap),
    ];
    #[cfg(target_arch = "x86_64")]
    rules.extend([any(libc::SYS_time), any(libc::SYS_gettimeofday)]);
    Ok(rules)
}

/// Starting threads (the API acceptor starts a thread per connection; the
/// event loop's thread joins and tears down).
fn threads() -> Built<Rules> {
    Ok(vec![
        when(
            libc::SYS_clone,
            vec![vec![arg(
                0,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )?]],
        )?,
        any(libc::SYS_set_robust_list),
        any(libc::SYS_sched_setaffinity),
        // Reaches the ENOSYS filter (see `refused_with_errno`).
        any(libc::SYS_clone3),
    ])
}

/// Waiting on several descriptors.
fn polling() -> Rules {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // x86_64 adds its legacy calls
    let mut rules = vec![
        any(libc::SYS_epoll_ctl),
        any(libc::SYS_epoll_pwait),
        any(libc::SYS_ppoll),
    ];
    #[cfg(target_arch = "x86_64")]
    rules.extend([any(libc::SYS_epoll_wait), any(libc::SYS_poll)]);
    rules
}

/// Block-device and TAP I/O, done by the event loop's thread.
fn device_io() -> Rules {
    vec![
        any(libc::SYS_pread64),
        any(libc::SYS_pwrite64),
        any(libc::SYS_preadv),
        any(libc::SYS_pwritev),
        any(libc::SYS_readv),
        any(libc::SYS_fsync),
        any(libc::SYS_fdatasync),
        any(libc::SYS_fallocate),
        any(libc::SYS_ftruncate),
        any(libc::SYS_flock),
    ]
}

/// Writing a snapshot's files (the API connection thread does it) and
/// flushing disk images first.
fn snapshot_files() -> Rules {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // x86_64 adds its legacy calls
    let mut rules = vec![
        any(libc::SYS_openat),
        any(libc::SYS_mkdirat),
        any(libc::SYS_getdents64),
        any(libc::SYS_unlinkat),
        any(libc::SYS_renameat2),
        any(libc::SYS_getcwd),
        any(libc::SYS_fchmod),
        // Resolving paths (`canonicalize`); Landlock decides what is reached.
        any(libc::SYS_readlinkat),
    ];
    #[cfg(target_arch = "x86_64")]
    rules.extend([
        any(libc::SYS_open),
        any(libc::SYS_mkdir),
        any(libc::SYS_unlink),
        any(libc::SYS_rename),
        any(libc::SYS_stat),
        any(libc::SYS_lstat),
        any(libc::SYS_readlink),
    ]);
    rules
}

/// The allow-list of one kind of thread.
fn allow_list(kind: ThreadKind) -> Built<Rules> {
    let mut rules = base()?;
    match kind {
        ThreadKind::Vcpu => {
            rules.push(when(libc::SYS_ioctl, vec![kvm_ioctls()?])?);
            // Device work that runs on the exit path (ioeventfds and irqfds
            // are eventfd writes; disks are served by the event loop).
            rules.extend(device_io());
        }
        ThreadKind::Hart => {
            // Harts write eventfds (queue notifies) and sleep on futexes
            // in WFI; they run no ioctl at all.
            rules.extend(device_io());
        }
        ThreadKind::Vmm => {
            let terminal: Vec<Vec<SeccompCondition>> = [
                libc::TCGETS,
                libc::TCSETS,
                libc::TCSETSW,
                libc::TCSETSF,
                libc::TIOCGWINSZ,
                libc::FIONBIO,
            ]
            .into_iter()
            .map(|req| Ok(vec![arg32(1, SeccompCmpOp::Eq, request(req))?]))
            .collect::<Built<_>>()?;
            let mut ioctls = vec![kvm_ioctls()?];
            ioctls.extend(terminal);
            rules.push(when(libc::SYS_ioctl, ioctls)?);
            rules.extend(polling());
            rules.extend(device_io());
            rules.extend(threads()?);
            // Tear-down removes the API socket and closes what it made.
            rules.extend(snapshot_files());
            // recvfrom: console input from a Unix socket; mincore: the
            // resident guest pages `--timings` subtracts from the VMM's
            // memory at the end.
            rules.extend([
                any(libc::SYS_shutdown),
                any(libc::SYS_rt_sigaction),
                any(libc::SYS_recvfrom),
                any(libc::SYS_mincore),
            ]);
        }
        ThreadKind::Api => {
            // FIONBIO: accepted connections are switched to blocking.
            rules.push(when(
                libc::SYS_ioctl,
                vec![
                    kvm_ioctls()?,
                    vec![arg32(1, SeccompCmpOp::Eq, request(libc::FIONBIO))?],
                ],
            )?);
            rules.extend(polling());
            rules.extend(threads()?);
            rules.extend(snapshot_files());
            rules.extend(device_io());
            rules.extend([
                any(libc::SYS_accept4),
                any(libc::SYS_recvfrom),
                any(libc::SYS_sendto),
                any(libc::SYS_recvmsg),
                any(libc::SYS_sendmsg),
                any(libc::SYS_shutdown),
                any(libc::SYS_setsockopt),
                any(libc::SYS_getsockopt),
            ]);
            #[cfg(target_arch = "x86_64")]
            rules.push(any(libc::SYS_accept));
        }
        ThreadKind::ConsoleOutput => {
            rules.push(any(libc::SYS_ppoll));
            #[cfg(target_arch = "x86_64")]
            rules.push(any(libc::SYS_poll));
        }
    }
    if !kind.starts_threads() {
        // They reach the errno filter, which fails them (`refused_with_errno`).
        let (calls, _) = refused_with_errno(kind);
        rules.extend(calls.into_iter().map(any));
    }
    Ok(rules)
}

static SIGSYS_HANDLER: Once = Once::new();

fn install_sigsys_handler() {
    SIGSYS_HANDLER.call_once(|| {
        // If this fails a refused call still ends the process (SIGSYS's
        // default action), only without the message.
        let _ = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys);
    });
}

/// Reports a refused system call and ends the process. Runs in signal
/// context: it only formats into a stack buffer and calls `write` and
/// `_exit`, which every filter allows.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler;
    // for SIGSYS its union holds `struct { void *call_addr; int syscall;
    // unsigned arch; }` right after the three leading ints and their
    // padding, so the syscall number is the int at byte offset 24 on the
    // 64-bit targets this builds for. Nothing the guest chooses is read.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let kind = KIND
        .with(|k| k.get())
        .map_or("unfiltered", ThreadKind::name);
    let mut msg = Message::default();
    msg.push(b"ember: seccomp: the ");
    msg.push(kind.as_bytes());
    msg.push(b" thread made system call ");
    msg.push(syscall_name(nr as i64).as_bytes());
    msg.push(b" (");
    msg.push_number(nr as i64);
    msg.push(b"), which its filter does not allow; stopping the VM\n");
    // SAFETY: writes our own stack buffer to stderr, then ends the process
    // without running anything else (no destructors, no atexit handlers).
    unsafe {
        libc::write(2, msg.buf.as_ptr().cast(), msg.len);
        libc::_exit(EXIT_BAD_SYSCALL);
    }
}

/// A message built without allocating (for the signal handler).
struct Message {
    buf: [u8; 256],
    len: usize,
}

impl Default for Message {
    fn default() -> Self {
        Message {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Message {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }
    fn push_number(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = -v;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// Names of the system calls a confined thread is most likely to be
/// caught making (the report falls back to the number).
macro_rules! syscall_names {
    ($($name:ident),* $(,)?) => {
        fn syscall_name(nr: i64) -> &'static str {
            $(if nr == libc::$name as i64 {
                return &stringify!($name)[4..];
            })*
            "unknown"
        }
    };
}

#[cfg(target_arch = "x86_64")]
syscall_names!(
    SYS_read,
    SYS_write,
    SYS_open,
    SYS_close,
    SYS_stat,
    SYS_fstat,
    SYS_lstat,
    SYS_poll,
    SYS_lseek,
    SYS_mmap,
    SYS_mprotect,
    SYS_munmap,
    SYS_brk,
    SYS_rt_sigaction,
    SYS_ioctl,
    SYS_pread64,
    SYS_pwrite64,
    SYS_readv,
    SYS_writev,
    SYS_access,
    SYS_pipe,
    SYS_select,
    SYS_mremap,
    SYS_msync,
    SYS_madvise,
    SYS_dup,
    SYS_dup2,
    SYS_nanosleep,
    SYS_getpid,
    SYS_socket,
    SYS_connect,
    SYS_accept,
    SYS_sendto,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_shutdown,
    SYS_bind,
    SYS_listen,
    SYS_socketpair,
    SYS_setsockopt,
    SYS_getsockopt,
    SYS_clone,
    SYS_fork,
    SYS_vfork,
    SYS_execve,
    SYS_exit,
    SYS_wait4,
    SYS_kill,
    SYS_uname,
    SYS_fcntl,
    SYS_flock,
    SYS_fsync,
    SYS_fdatasync,
    SYS_truncate,
    SYS_ftruncate,
    SYS_getdents64,
    SYS_getcwd,
    SYS_chdir,
    SYS_rename,
    SYS_mkdir,
    SYS_rmdir,
    SYS_link,
    SYS_unlink,
    SYS_symlink,
    SYS_readlink,
    SYS_chmod,
    SYS_fchmod,
    SYS_chown,
    SYS_umask,
    SYS_ptrace,
    SYS_getuid,
    SYS_setuid,
    SYS_setgid,
    SYS_prctl,
    SYS_arch_prctl,
    SYS_mount,
    SYS_umount2,
    SYS_reboot,
    SYS_gettid,
    SYS_tkill,
    SYS_futex,
    SYS_sched_setaffinity,
    SYS_sched_getaffinity,
    SYS_epoll_wait,
    SYS_epoll_ctl,
    SYS_tgkill,
    SYS_openat,
    SYS_mkdirat,
    SYS_newfstatat,
    SYS_unlinkat,
    SYS_renameat,
    SYS_ppoll,
    SYS_epoll_pwait,
    SYS_timerfd_create,
    SYS_eventfd2,
    SYS_epoll_create1,
    SYS_pipe2,
    SYS_preadv,
    SYS_pwritev,
    SYS_prlimit64,
    SYS_renameat2,
    SYS_getrandom,
    SYS_memfd_create,
    SYS_bpf,
    SYS_execveat,
    SYS_statx,
    SYS_io_uring_setup,
    SYS_clone3,
    SYS_seccomp,
    SYS_mlock,
    SYS_pkey_mprotect,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_landlock_create_ruleset,
    SYS_rt_sigprocmask,
    SYS_sigaltstack,
    SYS_rseq,
    SYS_set_robust_list,
    SYS_sched_yield,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_exit_group,
    SYS_fallocate,
    SYS_accept4,
);

#[cfg(not(target_arch = "x86_64"))]
syscall_names!(
    SYS_read,
    SYS_write,
    SYS_close,
    SYS_fstat,
    SYS_lseek,
    SYS_mmap,
    SYS_mprotect,
    SYS_munmap,
    SYS_brk,
    SYS_rt_sigaction,
    SYS_ioctl,
    SYS_pread64,
    SYS_pwrite64,
    SYS_readv,
    SYS_writev,
    SYS_mremap,
    SYS_madvise,
    SYS_dup,
    SYS_nanosleep,
    SYS_getpid,
    SYS_socket,
    SYS_connect,
    SYS_sendto,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_shutdown,
    SYS_bind,
    SYS_listen,
    SYS_clone,
    SYS_execve,
    SYS_exit,
    SYS_wait4,
    SYS_kill,
    SYS_fcntl,
    SYS_flock,
    SYS_fsync,
    SYS_fdatasync,
    SYS_ftruncate,
    SYS_getdents64,
    SYS_getcwd,
    SYS_ptrace,
    SYS_prctl,
    SYS_mount,
    SYS_gettid,
    SYS_futex,
    SYS_tgkill,
    SYS_openat,
    SYS_mkdirat,
    SYS_newfstatat,
    SYS_unlinkat,
    SYS_ppoll,
    SYS_epoll_pwait,
    SYS_eventfd2,
    SYS_pipe2,
    SYS_getrandom,
    SYS_memfd_create,
    SYS_bpf,
    SYS_statx,
    SYS_clone3,
    SYS_seccomp,
    SYS_exit_group,
    SYS_accept4,
);

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ThreadKind; 5] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Hart,
        ThreadKind::Api,
        ThreadKind::ConsoleOutput,
    ];

    #[test]
    fn every_filter_compiles() {
        for kind in KINDS {
            let program = compile(kind, SeccompAction::Trap).expect("compiles");
            assert!(!program.is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [SeccompMode::On, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(mode.to_string().parse::<SeccompMode>(), Ok(mode));
        }
        assert!("maybe".parse::<SeccompMode>().is_err());
    }

    #[test]
    fn the_report_names_the_call_and_formats_numbers() {
        assert_eq!(syscall_name(libc::SYS_openat), "openat");
        assert_eq!(syscall_name(-1), "unknown");
        let mut m = Message::default();
        m.push_number(0);
        m.push(b" ");
        m.push_number(-42);
        m.push(b" ");
        m.push_number(i64::MAX);
        assert_eq!(&m.buf[..m.len], b"0 -42 9223372036854775807");
    }

    /// Runs `body` in a forked child with the filter of `kind` installed
    /// and returns how the child ended and what it wrote to stderr.
    fn in_confined_child(kind: ThreadKind, body: fn()) -> (libc::c_int, String) {
        // Build everything that allocates before forking: the child of a
        // threaded process may only make async-signal-safe calls.
        let errno = errno_filter(kind).expect("compiles");
        let program = compile(kind, SeccompAction::Trap).expect("compiles");
        install_sigsys_handler();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only calls dup2, prctl/seccomp (through
        // apply_filter, which does not allocate), `body` and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: replaces the child's stderr with the pipe.
            unsafe { libc::dup2(fds[1], 2) };
            KIND.with(|k| k.set(Some(kind)));
            if seccompiler::apply_filter(&errno).is_err()
                || seccompiler::apply_filter(&program).is_err()
            {
                // SAFETY: ends the child.
                unsafe { libc::_exit(99) };
            }
            body();
            // SAFETY: ends the child.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closes our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: reads into `buf`, within its length.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        // SAFETY: closes the read end.
        unsafe { libc::close(fds[0]) };
        (status, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn a_refused_call_ends_the_process_naming_the_call_and_thread() {
        let (status, err) = in_confined_child(ThreadKind::Hart, || {
            // SAFETY: a plain system call with no pointers.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        });
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), EXIT_BAD_SYSCALL, "{err}");
        assert!(err.contains("the hart thread"), "{err}");
        assert!(err.contains("system call socket ("), "{err}");
    }

    /// glibc's `free` may read /proc/sys/vm/overcommit_memory on any
    /// thread: opening fails with EACCES there instead of ending the VM.
    #[test]
    fn opening_a_file_fails_quietly_on_threads_that_open_nothing() {
        for kind in [
            ThreadKind::Hart,
            ThreadKind::Vcpu,
            ThreadKind::ConsoleOutput,
        ] {
            let (status, err) = in_confined_child(kind, || {
                // SAFETY: a NUL-terminated path; the result is only compared.
                let fd = unsafe {
                    libc::open(c"/proc/sys/vm/overcommit_memory".as_ptr(), libc::O_RDONLY)
                };
                let errno = std::io::Error::last_os_error().raw_os_error();
                let code = if fd < 0 && errno == Some(libc::EACCES) {
                    0
                } else {
                    7
                };
                // SAFETY: ends the child with the verdict.
                unsafe { libc::_exit(code) };
            });
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "{kind:?}: {status:#x} {err}"
            );
        }
    }

    #[test]
    fn an_executable_mapping_is_refused_once_confined() {
        let (status, err) = in_confined_child(ThreadKind::Vcpu, || {
            // SAFETY: an anonymous mapping that nothing uses.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        });
        assert_eq!(libc::WEXITSTATUS(status), EXIT_BAD_SYSCALL, "{err}");
        assert!(err.contains("system call mmap"), "{err}");
    }

    #[test]
    fn allowed_calls_run_and_a_plain_mapping_is_fine() {
        let (status, err) = in_confined_child(ThreadKind::Hart, || {
            // SAFETY: an anonymous read-write mapping, unmapped again.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    libc::_exit(3);
                }
                libc::munmap(p, 4096);
                libc::write(2, b"ok".as_ptr().cast(), 2);
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x} {err}"
        );
        assert_eq!(err, "ok");
    }

    #[test]
    fn a_kvm_thread_may_not_use_other_ioctls() {
        let (status, err) = in_confined_child(ThreadKind::Vcpu, || {
            // SAFETY: winsize is plain integers; all zeroes is valid.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ fills `ws`.
            unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) };
        });
        assert_eq!(libc::WEXITSTATUS(status), EXIT_BAD_SYSCALL, "{err}");
        assert!(err.contains("system call ioctl"), "{err}");
    }
}
