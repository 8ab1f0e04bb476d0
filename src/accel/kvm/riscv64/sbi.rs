//! The SBI calls riscv64 KVM forwards to the VMM (`KVM_EXIT_RISCV_SBI`).
//! The kernel handles BASE, TIME, IPI, RFENCE, HSM and SRST itself; what
//! reaches userspace is the legacy console (with `CONFIG_RISCV_SBI_V01` in
//! the host) and the experimental and vendor ranges. Everything the guest
//! passes is only a number here: nothing is dereferenced.

/// Legacy `sbi_console_putchar`.
pub const LEGACY_CONSOLE_PUTCHAR: u64 = 1;
/// Legacy `sbi_console_getchar`.
pub const LEGACY_CONSOLE_GETCHAR: u64 = 2;
/// `SBI_ERR_NOT_SUPPORTED`.
pub const ERR_NOT_SUPPORTED: i64 = -2;

/// What to answer a forwarded call with: KVM copies `ret` into `a0`/`a1`
/// and steps the guest's `sepc` past the `ecall`.
pub fn answer(extension: u64, args: [u64; 6], console: &dyn Fn(&[u8])) -> [u64; 2] {
    match extension {
        LEGACY_CONSOLE_PUTCHAR => {
            console(&[args[0] as u8]);
            [0, 0]
        }
        // No console input through the SBI (as on the software CPU): the
        // guest's console reads the UART. -1 is "nothing to read".
        LEGACY_CONSOLE_GETCHAR => [(-1i64) as u64, 0],
        _ => [ERR_NOT_SUPPORTED as u64, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn putchar_writes_one_byte_and_succeeds() {
        let out = RefCell::new(Vec::new());
        let sink = |b: &[u8]| out.borrow_mut().extend_from_slice(b);
        for c in [b'h', b'i', 0xff] {
            // The high bits of a0 are not part of the character.
            assert_eq!(
                answer(1, [0xdead_0000 | c as u64, 9, 9, 9, 9, 9], &sink),
                [0, 0]
            );
        }
        assert_eq!(*out.borrow(), [b'h', b'i', 0xff]);
    }

    #[test]
    fn getchar_has_nothing_and_the_rest_is_not_supported() {
        let sink = |_: &[u8]| panic!("no output expected");
        assert_eq!(answer(2, [0; 6], &sink)[0] as i64, -1);
        for ext in [
            0x0800_0000u64,
            0x0900_0000,
            0x0a00_0000,
            0x4442_434e,
            u64::MAX,
        ] {
            assert_eq!(
                answer(ext, [0; 6], &sink)[0] as i64,
                ERR_NOT_SUPPORTED,
                "{ext:#x}"
            );
        }
    }
}
