//! A hart's supervisor external interrupt under riscv64 KVM without an
//! in-kernel interrupt controller: the userspace PLIC's context output
//! raises and lowers it with `KVM_INTERRUPT` on the vCPU. On riscv that
//! ioctl is asynchronous: any thread may issue it while the vCPU is inside
//! `KVM_RUN`, and KVM kicks the vCPU to take it. kvm-ioctls wraps it for
//! x86 only, so it is declared here.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::devices::plic::PlicOutput;

/// `KVM_INTERRUPT` with `irq = KVM_INTERRUPT_SET` (-1 as u32) raises the
/// line ...
pub const KVM_INTERRUPT_SET: u32 = -1i32 as u32;
/// ... and `KVM_INTERRUPT_UNSET` (-2) lowers it.
pub const KVM_INTERRUPT_UNSET: u32 = -2i32 as u32;

/// The `irq` argument that drives the line to `level`.
pub fn interrupt_argument(level: bool) -> u32 {
    if level {
        KVM_INTERRUPT_SET
    } else {
        KVM_INTERRUPT_UNSET
    }
}

/// A PLIC output that hands each level change to `raise` as the
/// `KVM_INTERRUPT` argument, and reports a failure through `failed` (the
/// PLIC calls outputs only when a level changes, so this adds no state).
pub fn plic_output(
    raise: impl Fn(u32) -> std::io::Result<()> + Send + Sync + 'static,
    failed: impl Fn(std::io::Error) + Send + Sync + 'static,
) -> PlicOutput {
    Box::new(move |level| {
        if let Err(e) = raise(interrupt_argument(level)) {
            failed(e);
        }
    })
}

#[cfg(target_arch = "riscv64")]
vmm_sys_util::ioctl_iow_nr!(
    KVM_INTERRUPT,
    kvm_bindings::KVMIO,
    0x86,
    kvm_bindings::kvm_interrupt
);

/// Issues `KVM_INTERRUPT` on `vcpu` (a duplicate of the vCPU's descriptor,
/// so the vCPU thread keeps its own `VcpuFd`).
#[cfg(target_arch = "riscv64")]
pub fn kvm_interrupt(vcpu: &OwnedFd, irq: u32) -> std::io::Result<()> {
    let arg = kvm_bindings::kvm_interrupt { irq };
    // SAFETY: KVM_INTERRUPT reads one `struct kvm_interrupt` from the
    // pointer, which points at `arg` for the duration of the call; the
    // descriptor is a vCPU descriptor this process owns. Neither depends on
    // anything the guest chooses.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_INTERRUPT(), &arg) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A duplicate of a vCPU's descriptor for [`kvm_interrupt`].
pub fn duplicate(fd: &impl AsRawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: the descriptor is open for the duration of the call (the
    // caller borrows its owner); the borrow ends before `try_clone_to_owned`
    // returns a descriptor of our own.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    borrowed.try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::plic::Plic;
    use crate::memory::RegionOps;
    use std::sync::{Arc, Mutex};

    /// A PLIC whose context outputs record the KVM_INTERRUPT arguments
    /// they would issue, per hart.
    /// (hart, KVM_INTERRUPT argument) in the order issued.
    type Issued = Arc<Mutex<Vec<(usize, u32)>>>;

    fn recording_plic(harts: usize) -> (Plic, Issued) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let outputs = (0..harts)
            .map(|h| {
                let log = log.clone();
                plic_output(
                    move |irq| {
                        log.lock().unwrap().push((h, irq));
                        Ok(())
                    },
                    |e| panic!("{e}"),
                )
            })
            .collect();
        (Plic::new(outputs), log)
    }

    /// Context `ctx`'s register window offsets (the PLIC's layout).
    fn enable(ctx: u64) -> u64 {
        0x2000 + 0x80 * ctx
    }
    fn claim(ctx: u64) -> u64 {
        0x20_0004 + 0x1000 * ctx
    }

    #[test]
    fn level_changes_become_set_and_unset_and_nothing_else() {
        let (plic, log) = recording_plic(2);
        // Source 3 at priority 1, enabled for hart 1 only.
        plic.write(4 * 3, 4, 1);
        plic.write(enable(1), 4, 1 << 3);
        plic.set_irq(3, true);
        plic.set_irq(3, true); // no change: no ioctl
        assert_eq!(*log.lock().unwrap(), [(1, KVM_INTERRUPT_SET)]);
        // The claim takes the source: the line drops.
        assert_eq!(plic.read(claim(1), 4), 3);
        assert_eq!(
            *log.lock().unwrap(),
            [(1, KVM_INTERRUPT_SET), (1, KVM_INTERRUPT_UNSET)]
        );
        // Completing while the source is still high raises it again.
        plic.write(claim(1), 4, 3);
        assert_eq!(log.lock().unwrap().last(), Some(&(1, KVM_INTERRUPT_SET)));
        plic.set_irq(3, false);
        assert_eq!(plic.read(claim(1), 4), 0, "nothing pending once lowered");
    }

    #[test]
    fn the_issued_sequence_alternates_and_follows_the_output_level() {
        // Random source levels and claims against a reference: after any
        // step, the last argument issued for each hart matches the PLIC's
        // output, and arguments alternate (never SET twice in a row).
        let (plic, log) = recording_plic(2);
        for s in 1..=4u64 {
            plic.write(4 * s, 4, s);
        }
        plic.write(enable(0), 4, 0b11110);
        plic.write(enable(1), 4, 0b01100);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let source = (x % 4 + 1) as u32;
            match (x >> 8) % 3 {
                0 => plic.set_irq(source, (x >> 16) & 1 == 1),
                1 => {
                    let ctx = (x >> 20) % 2;
                    let got = plic.read(claim(ctx), 4);
                    if got != 0 {
                        plic.write(claim(ctx), 4, got);
                    }
                }
                _ => {}
            }
            let log = log.lock().unwrap();
            for hart in 0..2 {
                let mine: Vec<u32> = log.iter().filter(|e| e.0 == hart).map(|e| e.1).collect();
                for pair in mine.windows(2) {
                    assert_ne!(pair[0], pair[1], "hart {hart}: {mine:?}");
                }
                let level = mine.last() == Some(&KVM_INTERRUPT_SET);
                assert_eq!(level, plic.output(hart), "hart {hart}");
            }
        }
    }

    #[test]
    fn a_failed_ioctl_is_reported() {
        let failures = Arc::new(Mutex::new(0));
        let f = failures.clone();
        let out = plic_output(
            |_| Err(std::io::Error::from_raw_os_error(libc::EBADF)),
            move |_| *f.lock().unwrap() += 1,
        );
        out(true);
        out(false);
        assert_eq!(*failures.lock().unwrap(), 2);
    }
}
