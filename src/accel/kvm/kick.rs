//! Getting vCPU threads out of `KVM_RUN` and holding them there, for memory
//! updates that must not show a transient hole and for stopping the VM.
//!
//! This is QEMU's `accel_ioctl_inhibit` model: a vCPU counts itself as
//! running only between "about to enter KVM_RUN" and "KVM_RUN returned".
//! [`VcpuControl::pause`] raises a flag, kicks every vCPU thread with a
//! signal whose handler sets `kvm_run.immediate_exit`, and waits until no
//! vCPU is inside. A vCPU that is handling an exit (for example the MMIO
//! write that toggles a ROM device and so triggers the memory update) is not
//! inside, so the update never waits for itself.
//!
//! The race between checking the flag and entering KVM_RUN is closed by
//! `immediate_exit`: a signal that lands before the ioctl makes it return
//! `EINTR` at once. No sleep or polling is involved anywhere.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// The signal used to kick vCPU threads (the first real-time signal, which
/// the C runtime never uses).
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// The `kvm_run` page of the vCPU this thread runs, for the signal
    /// handler. Const-initialised, so reading it from a signal handler never
    /// allocates or takes a lock.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: the pointer was set by this same thread from its own
        // VcpuFd's kvm_run mapping and is cleared before that VcpuFd is
        // dropped (see `KvmRunRegistration`); the handler runs on this
        // thread, so the mapping is live and nothing else on this thread
        // touches it concurrently. Writing one byte is async-signal-safe.
        unsafe { (*run).immediate_exit = 1 };
    }
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), vmm_sys_util::errno::Error>> =
        std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick))
        .to_owned()
}

/// While alive, the kick handler of this thread sets `immediate_exit` in
/// the given `kvm_run`. Drop it before the VcpuFd.
pub struct KvmRunRegistration(());

impl KvmRunRegistration {
    /// Registers the calling thread's vCPU run page.
    pub fn new(run: &mut kvm_run) -> Self {
        KVM_RUN.with(|r| r.set(run as *mut kvm_run));
        KvmRunRegistration(())
    }
}

impl Drop for KvmRunRegistration {
    fn drop(&mut self) {
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }
}

/// A registered vCPU thread that can be kicked.
struct Thread(libc::pthread_t);

// SAFETY: the handle comes from `pthread_self()` of a live vCPU thread,
// which removes it (under the control lock) before it exits; kicks are sent
// only under that lock, so the handle is valid whenever it is used.
unsafe impl Killable for Thread {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

/// Work for a paused vCPU, run on its own thread with its own `VcpuFd`
/// (a snapshot reads the vCPU's state this way). The vCPU thread first
/// completes any I/O its last exit left pending and passes the error if
/// that failed.
pub type ParkedJob = Box<dyn FnOnce(Result<&mut VcpuFd, String>) + Send>;

#[derive(Default)]
struct Threads {
    list: Vec<(usize, Thread)>,
    /// Jobs for parked vCPUs, by vCPU index.
    jobs: Vec<(usize, ParkedJob)>,
}

/// Shared by the vCPU threads and whoever pauses or stops them.
///
/// The vCPU side (`enter`/`leave`, once per exit) is lock-free: two atomic
/// read-modify-writes and a load. The pairs "vCPU: count itself inside,
/// then check for a pause" and "pauser: raise the pause, then check who is
/// inside" are sequentially consistent, so at least one side sees the
/// other (Dekker's argument); the mutex and condition variable are only
/// used while a pause or stop is in progress.
#[derive(Default)]
pub struct VcpuControl {
    /// vCPUs between `enter` and `leave`.
    inside: AtomicUsize,
    /// Pause requests in force.
    pauses: AtomicUsize,
    /// The VM is stopping: vCPUs must leave and not come back.
    stopping: AtomicBool,
    threads: Mutex<Threads>,
    changed: Condvar,
}

impl VcpuControl {
    /// A control with no vCPU threads yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Threads> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes whoever waits for a change (a pauser or paused vCPUs).
    fn notify(&self) {
        let _guard = self.lock();
        self.changed.notify_all();
    }

    /// Called by a vCPU thread when it starts.
    pub fn register_thread(&self, index: usize) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().list.push((index, Thread(me)));
    }

    /// Called by a vCPU thread before it exits.
    pub fn unregister_thread(&self, index: usize) {
        let mut threads = self.lock();
        threads.list.retain(|(i, _)| *i != index);
        threads.jobs.retain(|(i, _)| *i != index);
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before `KVM_RUN`: waits while a pause is in
    /// force, then counts the vCPU as inside. Returns false once the VM is
    /// stopping.
    pub fn enter(&self) -> bool {
        self.enter_serving(usize::MAX, |_| {})
    }

    /// [`enter`](VcpuControl::enter) for vCPU `index`, which while parked
    /// hands the jobs posted for it ([`run_parked`]) to `serve`, without
    /// the lock held.
    ///
    /// [`run_parked`]: VcpuControl::run_parked
    pub fn enter_serving(&self, index: usize, mut serve: impl FnMut(ParkedJob)) -> bool {
        loop {
            self.inside.fetch_add(1, Ordering::SeqCst);
            if self.pauses.load(Ordering::SeqCst) == 0 && !self.stopping.load(Ordering::SeqCst) {
                return true;
            }
            // Back off: the pauser may be waiting for us to leave.
            self.inside.fetch_sub(1, Ordering::SeqCst);
            let mut threads = self.lock();
            self.changed.notify_all();
            while self.pauses.load(Ordering::SeqCst) > 0 && !self.stopping.load(Ordering::SeqCst) {
                if let Some(at) = threads.jobs.iter().position(|(i, _)| *i == index) {
                    let (_, job) = threads.jobs.swap_remove(at);
                    drop(threads);
                    serve(job);
                    threads = self.lock();
                    continue;
                }
                threads = self
                    .changed
                    .wait(threads)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if self.stopping.load(Ordering::SeqCst) {
                return false;
            }
        }
    }

    /// Called by a vCPU thread after `KVM_RUN` returns.
    pub fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::SeqCst);
        if self.pauses.load(Ordering::SeqCst) > 0 || self.stopping.load(Ordering::SeqCst) {
            self.notify();
        }
    }

    fn kick_all(threads: &Threads) {
        for (_, thread) in &threads.list {
            // A thread that already exited was unregistered under this lock,
            // so the only failure left is an invalid signal number, which
            // kick_signal() is not.
            let _ = thread.kill(kick_signal());
        }
    }

    /// Gets every vCPU out of `KVM_RUN` and keeps it out until [`resume`].
    /// Safe to call from a vCPU thread that is handling an exit.
    ///
    /// [`resume`]: VcpuControl::resume
    pub fn pause(&self) {
        let mut threads = self.lock();
        self.pauses.fetch_add(1, Ordering::SeqCst);
        while self.inside.load(Ordering::SeqCst) > 0 {
            Self::kick_all(&threads);
            threads = self
                .changed
                .wait(threads)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Ends one [`pause`](VcpuControl::pause).
    pub fn resume(&self) {
        let _threads = self.lock();
        let _ = self
            .pauses
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1));
        self.changed.notify_all();
    }

    /// Runs `job` on paused vCPU `index`'s thread and waits up to
    /// `timeout` for its result. The caller must hold a
    /// [`pause`](VcpuControl::pause) for the whole call (a running vCPU
    /// does not look at jobs). Fails at once when that vCPU's thread is
    /// not there (not started, or ended) or the VM is stopping.
    pub fn run_parked<T: Send + 'static>(
        &self,
        index: usize,
        timeout: std::time::Duration,
        job: impl FnOnce(Result<&mut VcpuFd, String>) -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut threads = self.lock();
            if self.pauses.load(Ordering::SeqCst) == 0 {
                return Err("the vCPUs are not paused".into());
            }
            if self.stopping.load(Ordering::SeqCst) {
                return Err("the VM is stopping".into());
            }
            if !threads.list.iter().any(|(i, _)| *i == index) {
                return Err(format!("vCPU {index} has no running thread"));
            }
            threads.jobs.push((
                index,
                Box::new(move |vcpu| {
                    let _ = tx.send(job(vcpu));
                }),
            ));
            self.changed.notify_all();
        }
        // A vCPU thread that ends drops its jobs (see `stop`), which
        // disconnects the channel, so this never waits for a dead thread
        // beyond `timeout`.
        rx.recv_timeout(timeout).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => {
                format!("vCPU {index} did not answer within {timeout:?}")
            }
            std::sync::mpsc::RecvTimeoutError::Disconnected => {
                format!("vCPU {index} ended before it answered")
            }
        })
    }

    /// Tells every vCPU to stop and kicks it out of `KVM_RUN`.
    pub fn stop(&self) {
        let mut threads = self.lock();
        // Waiting callers see their channel disconnect.
        threads.jobs.clear();
        self.stopping.store(true, Ordering::SeqCst);
        Self::kick_all(&threads);
        self.changed.notify_all();
    }

    /// Whether [`stop`](VcpuControl::stop) was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// How many vCPUs are inside `KVM_RUN` now (for tests).
    pub fn inside(&self) -> usize {
        self.inside.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc::channel;
    use std::sync::Arc;

    /// A pause waits for a vCPU inside to leave and holds it out until
    /// resume; stop makes `enter` fail. The "vCPU" here is a plain thread
    /// (the kick lands on a thread with no kvm_run registered, a no-op).
    #[test]
    fn pause_holds_vcpus_out_and_stop_ends_them() {
        install_kick_handler().unwrap();
        let control = Arc::new(VcpuControl::new());
        let paused = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = channel();
        let (go_tx, go_rx) = channel::<()>();
        let vcpu = {
            let (control, paused) = (control.clone(), paused.clone());
            std::thread::spawn(move || {
                control.register_thread(0);
                assert!(control.enter());
                entered_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                control.leave();
                // Blocks while the pause is in force.
                assert!(control.enter());
                assert!(!paused.load(Ordering::SeqCst), "entered during a pause");
                entered_tx.send(()).unwrap();
                control.leave();
                go_rx.recv().unwrap();
                let ok = control.enter();
                control.unregister_thread(0);
                ok
            })
        };
        entered_rx.recv().unwrap();
        assert_eq!(control.inside(), 1);
        let pauser = {
            let (control, paused) = (control.clone(), paused.clone());
            std::thread::spawn(move || {
                control.pause();
                paused.store(true, Ordering::SeqCst);
            })
        };
        go_tx.send(()).unwrap();
        pauser.join().unwrap();
        assert_eq!(control.inside(), 0);
        paused.store(false, Ordering::SeqCst);
        control.resume();
        entered_rx.recv().unwrap();
        control.stop();
        go_tx.send(()).unwrap();
        assert!(!vcpu.join().unwrap(), "enter succeeded after stop");
        assert!(control.is_stopping());
    }
}
