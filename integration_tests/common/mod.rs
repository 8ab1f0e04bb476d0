//! Helpers shared by the KVM integration tests: assembling small real-mode
//! guests from readable source with GNU as, and recording devices.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember::memory::{AccessRules, RegionOps};

/// How long a test waits for a VM before it fails (a deadline, not a
/// synchronisation).
pub const CTL_PATIENCE: Duration = Duration::from_secs(60);

/// `ember ctl --socket SOCKET ARGS...`: whether it succeeded, and its
/// stdout and stderr together.
pub fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ember ctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Polls `f` until it holds, failing the test after [`CTL_PATIENCE`].
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + CTL_PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch directory for this test process.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Assembles `body` (16-bit AT&T syntax, starting in real mode with
/// CS = 0xf000 after a far jump from the reset vector) into a 64 KiB
/// firmware image for `--firmware`. `body` may use the label `start` only
/// through this wrapper; DS is set to 0xf000 so data labels in the body are
/// addressable.
pub fn firmware(name: &str, body: &str) -> Vec<u8> {
    let source = format!(
        "        .code16\n        .text\n        .org 0\nstart:\n        cli\n        movw $0xf000, %ax\n        movw %ax, %ds\n{body}\n        .org 0xfff0\n        ljmp $0xf000, $start\n        .org 0x10000\n"
    );
    let dir = scratch_dir("asm");
    let src = dir.join(format!("{name}.s"));
    let obj = dir.join(format!("{name}.o"));
    let bin = dir.join(format!("{name}.bin"));
    std::fs::write(&src, source).expect("write guest source");
    let status = Command::new("as")
        .args(["--32", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .expect("run as (binutils)");
    assert!(status.success(), "assembling {name} failed");
    let status = Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&obj)
        .arg(&bin)
        .status()
        .expect("run objcopy");
    assert!(status.success(), "objcopy {name} failed");
    let image = std::fs::read(&bin).expect("read assembled guest");
    assert_eq!(image.len(), 0x10000);
    image
}

/// Writes a firmware image to a file and returns its path.
pub fn firmware_file(name: &str, body: &str) -> PathBuf {
    let path = scratch_dir("fw").join(format!("{name}.rom"));
    std::fs::write(&path, firmware(name, body)).expect("write firmware");
    path
}

/// Whether /dev/kvm can be used here; tests that need it say so and pass
/// trivially otherwise.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("/dev/kvm is not usable here: skipping a KVM test");
    }
    ok
}

/// A device that records every write (offset, size, value) and answers
/// reads with `base + offset`.
pub struct Recorder {
    pub base: u64,
    writes: Mutex<Vec<(u64, u32, u64)>>,
    notify: Mutex<Option<Sender<(u64, u64)>>>,
}

impl Recorder {
    pub fn new(base: u64) -> Arc<Self> {
        Arc::new(Recorder {
            base,
            writes: Mutex::new(Vec::new()),
            notify: Mutex::new(None),
        })
    }

    /// Every write is also sent on the returned channel as (offset, value).
    pub fn subscribe(&self) -> Receiver<(u64, u64)> {
        let (tx, rx) = channel();
        *self.notify.lock().unwrap() = Some(tx);
        rx
    }

    pub fn writes(&self) -> Vec<(u64, u32, u64)> {
        self.writes.lock().unwrap().clone()
    }

    pub fn values(&self) -> Vec<u64> {
        self.writes().iter().map(|w| w.2).collect()
    }
}

impl RegionOps for Recorder {
    fn read(&self, offset: u64, _size: u32) -> u64 {
        self.base + offset
    }

    fn write(&self, offset: u64, size: u32, value: u64) {
        self.writes.lock().unwrap().push((offset, size, value));
        if let Some(tx) = self.notify.lock().unwrap().as_ref() {
            let _ = tx.send((offset, value));
        }
    }

    fn rules(&self) -> AccessRules {
        AccessRules {
            valid_unaligned: true,
            ..AccessRules::default()
        }
    }
}

/// A minimal x86-64 ELF "kernel": one PT_LOAD segment holding `code` at
/// 1 MiB, entered there. With `pvh`, a PT_NOTE carries the Xen PVH entry
/// note, so Ember starts it in 32-bit protected mode; without, in long
/// mode through the 64-bit Linux entry.
pub fn tiny_elf(code: &[u8], pvh: bool) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const CODE_AT: usize = 0x200;
    let mut e = vec![0u8; CODE_AT + code.len()];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&LOAD.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
    e[52..54].copy_from_slice(&64u16.to_le_bytes());
    e[54..56].copy_from_slice(&56u16.to_le_bytes());
    e[56..58].copy_from_slice(&(if pvh { 2u16 } else { 1 }).to_le_bytes());
    let ph = 64;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    e[ph + 8..ph + 16].copy_from_slice(&(CODE_AT as u64).to_le_bytes());
    e[ph + 16..ph + 24].copy_from_slice(&LOAD.to_le_bytes());
    e[ph + 24..ph + 32].copy_from_slice(&LOAD.to_le_bytes());
    e[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    e[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    if pvh {
        let ph = 64 + 56;
        let note = 0x180usize;
        e[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        e[ph + 8..ph + 16].copy_from_slice(&(note as u64).to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&20u64.to_le_bytes());
        e[ph + 40..ph + 48].copy_from_slice(&20u64.to_le_bytes());
        e[note..note + 4].copy_from_slice(&4u32.to_le_bytes()); // name size
        e[note + 4..note + 8].copy_from_slice(&4u32.to_le_bytes()); // desc size
        e[note + 8..note + 12].copy_from_slice(&18u32.to_le_bytes()); // PHYS32_ENTRY
        e[note + 12..note + 16].copy_from_slice(b"Xen\0");
        e[note + 16..note + 20].copy_from_slice(&(LOAD as u32).to_le_bytes());
    }
    e[CODE_AT..].copy_from_slice(code);
    e
}

/// Writes a tiny ELF kernel to a file.
pub fn tiny_elf_file(name: &str, code: &[u8], pvh: bool) -> PathBuf {
    let path = scratch_dir("elf").join(format!("{name}.elf"));
    std::fs::write(&path, tiny_elf(code, pvh)).expect("write kernel");
    path
}

/// `mov $0x3f8, %dx; mov $c, %al; out %al, (%dx)`, the same bytes in
/// 32-bit and 64-bit mode.
pub fn print_byte(c: u8) -> Vec<u8> {
    vec![0x66, 0xba, 0xf8, 0x03, 0xb0, c, 0xee]
}

/// `mov $0x501, %dx; mov $v, %al; out %al, (%dx); hlt`: isa-debug-exit.
pub fn debug_exit(v: u8) -> Vec<u8> {
    vec![0x66, 0xba, 0x01, 0x05, 0xb0, v, 0xee, 0xf4]
}

/// `ud2`: with the empty boot IDT, #UD becomes #GP, #DF, then a triple
/// fault.
pub const UD2: [u8; 2] = [0x0f, 0x0b];

/// Assembles 64-bit code (AT&T syntax, linked at 0x10_0000 where
/// [`tiny_elf`] loads it) into a tiny ELF kernel that Ember enters in long
/// mode with the first 4 GiB identity-mapped.
pub fn elf64_from_asm(name: &str, source: &str) -> PathBuf {
    let dir = scratch_dir("asm64");
    let src = dir.join(format!("{name}.s"));
    let obj = dir.join(format!("{name}.o"));
    let bin = dir.join(format!("{name}.bin"));
    std::fs::write(&src, format!("        .code64\n        .text\n{source}\n"))
        .expect("write source");
    let status = Command::new("as")
        .args(["--64", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .expect("run as (binutils)");
    assert!(status.success(), "assembling {name} failed");
    let elf = dir.join(format!("{name}.linked"));
    let status = Command::new("ld")
        .args(["-Ttext=0x100000", "-e", "0x100000", "-o"])
        .arg(&elf)
        .arg(&obj)
        .status()
        .expect("run ld");
    assert!(status.success(), "linking {name} failed");
    let status = Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&elf)
        .arg(&bin)
        .status()
        .expect("run objcopy");
    assert!(status.success(), "objcopy {name} failed");
    let code = std::fs::read(&bin).expect("read assembled code");
    tiny_elf_file(name, &code, false)
}

/// An x86_64 virtio-blk test guest: `source` with its placeholder lines
/// filled in, each on a line of its own:
///
/// * `VIRTIO_BLK_SETUP`: probes the virtio-mmio transport at `BASE` (magic,
///   version 2, device id 2; a failed check exits through isa-debug-exit
///   with its number in `%cl`, via the guest's `fail`), negotiates
///   VERSION_1 and sets queue 0 up (8 entries at `DESC`, `AVAIL`, `USED`),
///   then DRIVER_OK; `%rbx` holds `BASE` afterwards.
/// * `ROUTE_IRQ`: [`route_irq_asm`] for IOAPIC pin `pin`.
/// * `VIRTIO_BLK_SUBMIT`: the `submit` routine, which builds the
///   3-descriptor chain for the request in `HDR` (data at `DATA`, 512
///   bytes, device-writable for reads; status byte at `STATUS`, set to
///   0xff first), publishes it in the next available-ring slot, notifies
///   queue 0 (through the ioeventfd) and sleeps until the used-ring
///   interrupt, then acknowledges it; and the interrupt `handler`, which
///   sets `FLAG` and EOIs the local APIC.
pub fn virtio_blk_guest(source: &str, pin: u32) -> String {
    const SETUP: &str = r#"
        mov $BASE, %rbx
        mov $1, %cl
        cmpl $0x74726976, 0x00(%rbx)
        jne fail
        inc %cl
        cmpl $2, 0x04(%rbx)
        jne fail
        inc %cl
        cmpl $2, 0x08(%rbx)
        jne fail
        movl $0, 0x70(%rbx)
        movl $1, 0x70(%rbx)
        movl $3, 0x70(%rbx)
        movl $1, 0x24(%rbx)
        movl $1, 0x20(%rbx)          # VIRTIO_F_VERSION_1 (bit 32)
        movl $0, 0x24(%rbx)
        movl $0, 0x20(%rbx)
        movl $11, 0x70(%rbx)         # FEATURES_OK
        inc %cl
        testl $8, 0x70(%rbx)
        jz fail
        movl $0, 0x30(%rbx)
        movl $8, 0x38(%rbx)
        movl $DESC, 0x80(%rbx)
        movl $0, 0x84(%rbx)
        movl $AVAIL, 0x90(%rbx)
        movl $0, 0x94(%rbx)
        movl $USED, 0xa0(%rbx)
        movl $0, 0xa4(%rbx)
        movl $1, 0x44(%rbx)
        movl $15, 0x70(%rbx)         # DRIVER_OK
        inc %cl
        testl $0x40, 0x70(%rbx)      # DEVICE_NEEDS_RESET?
        jnz fail
"#;
    const SUBMIT: &str = r#"
submit:
        movb $0xff, STATUS
        movq $HDR, DESC
        movl $16, DESC + 8
        movw $1, DESC + 12           # NEXT
        movw $1, DESC + 14
        movq $DATA, DESC + 16
        movl $512, DESC + 24
        movw $3, %ax                 # NEXT | WRITE
        cmpl $0, HDR
        je 2f
        movw $1, %ax                 # NEXT
2:      movw %ax, DESC + 28
        movw $2, DESC + 30
        movq $STATUS, DESC + 32
        movl $1, DESC + 40
        movw $2, DESC + 44           # WRITE
        movw $0, DESC + 46
        movzwl AVAIL + 2, %eax       # ring[idx % 8] = 0, then idx += 1
        mov %eax, %edx
        and $7, %edx
        movw $0, AVAIL + 4(,%rdx,2)
        inc %eax
        mfence
        movw %ax, AVAIL + 2
        movl $0, FLAG
        mfence
        movl $0, 0x50(%rbx)          # QueueNotify: the ioeventfd
3:      cli
        cmpl $0, FLAG
        jne 4f
        sti
        hlt
        jmp 3b
4:      sti
        movl 0x60(%rbx), %eax        # interrupt status -> ack
        movl %eax, 0x64(%rbx)
        ret

handler:
        movl $1, FLAG
        movl $0, 0xb0(%r12)          # EOI
        iretq
"#;
    let mut out = String::new();
    for line in source.lines() {
        match line.trim() {
            "VIRTIO_BLK_SETUP" => out.push_str(SETUP),
            "VIRTIO_BLK_SUBMIT" => out.push_str(SUBMIT),
            "ROUTE_IRQ" => out.push_str(&route_irq_asm(pin)),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// 64-bit guest code that routes IOAPIC pin `pin` to the CPU's vector
/// `VECTOR` with handler `handler`: masks the 8259s (only the IOAPIC may
/// deliver), fills the IDT gate and loads the IDT, enables the local APIC
/// and programs the pin (edge, active high, unmasked, CPU 0). The guest
/// defines `IDT`, `IDTR`, `VECTOR` and the label `handler`; `%r12` holds the
/// local APIC's base afterwards, for the handler's EOI. (Addresses above
/// 2 GiB need a register: a disp32 is sign-extended.)
pub fn route_irq_asm(pin: u32) -> String {
    format!(
        r#"
        mov $0xff, %al
        out %al, $0x21
        out %al, $0xa1
        lea handler(%rip), %rax
        mov $IDT + VECTOR * 16, %rdi
        mov %ax, (%rdi)
        mov %cs, %dx
        mov %dx, 2(%rdi)
        movw $0x8e00, 4(%rdi)
        shr $16, %rax
        mov %ax, 6(%rdi)
        shr $16, %rax
        mov %eax, 8(%rdi)
        movl $0, 12(%rdi)
        movw $VECTOR * 16 + 15, IDTR
        movq $IDT, IDTR + 2
        lidt IDTR
        mov $0xfee00000, %r12
        movl $0x1ff, 0xf0(%r12)
        movl $0, 0x80(%r12)
        mov $0xfec00000, %r13
        movl ${low}, (%r13)
        movl $VECTOR, 0x10(%r13)
        movl ${high}, (%r13)
        movl $0, 0x10(%r13)
"#,
        low = 0x10 + 2 * pin,
        high = 0x11 + 2 * pin,
    )
}
