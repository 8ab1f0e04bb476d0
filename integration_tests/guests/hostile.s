# A hostile bare-metal riscv64 guest for Ember's `virt` machine
# (integration_tests/hostile_guest.rs builds and runs it).
#
# Entered like a Linux Image: S-mode, a0 = hart id, a1 = FDT, satp = 0.
# Ember answers SBI. Everything it does is deterministic given the seed
# (an xorshift64 PRNG per hart; with two harts the interleaving is not)
# and bounded (fixed iteration counts; every wait for a device or for
# hart 1 ends at a deadline read from the `time` CSR).
#
# The kernel command line may hold `hostile=FAMILIES[,SEED]` (hex); the
# guest finds it by scanning the device tree blob for that text. FAMILIES
# is a bit mask (default 0x1ff, everything):
#   0x01 regs    random-width, random-offset MMIO over PLIC, UART, slots
#   0x02 virtio  malformed virtio-blk chains (+ a scratch write/read check)
#                and malformed virtio-rng chains
#   0x04 sbi     every SBI extension / function id with hostile arguments
#   0x08 pt      random page tables, satp modes, sfence.vma variants
#   0x10 smc     self-modifying code, fence.i, page-crossing instructions
#   0x20 smp     run part of the work on hart 1 at the same time
#   0x40 hsm     hart_start(1, odd / last-byte / out-of-RAM addresses)
#   0x80 flood   one notify publishing the same long chain qsize times
#   0x100 log    300 DEVICE_NEEDS_RESETs in a row (Ember's log lines
#                about them must be rate-limited)
#
# Skipped because they would legitimately end or wedge the VM:
#   SBI SRST system_reset with reset types 0..2 (shutdown, cold and warm
#   reboot) and legacy call 8 (shutdown); HSM hart_stop on hart 0 (nothing
#   would be left running); HSM hart_suspend with the default retentive
#   (0) and non-retentive (0x80000000) types (nothing wakes the hart:
#   interrupts stay disabled); satp values whose root is not this guest's
#   table (the trap handler itself could no longer be fetched).
# No MMIO register ends the VM on this machine, so register fuzzing skips
# none; hart 1 leaves the virtio-blk slot alone so that hart 0's driver
# can still tell a working disk from a broken one.
#
# At the end hart 0 prints one line `HOSTILE-COUNTS key=value ...` with
# the sums over both harts (and `ms`, its run time, and `hsm`, the
# hart_start results in hex) and powers off with SBI SRST. The counters:
#   traps        traps the handler took (exceptions skipped or resumed)
#   accesses     MMIO register accesses tried
#   chains       virtio chains submitted (malformed, random or flooding)
#   sbi          SBI calls made
#   pt, smc      page-table accesses, self-modifying-code runs
#   smc_bad      code rewritten (with fence.i) that ran stale: a bug
#   blk_ok/bad   scratch write + read-back checks that passed / failed
#   canary_bad   bytes a device wrote outside what it was given: a bug
#   malformed_ok malformed requests the device said were OK: a bug
#   timeouts     requests the device never answered within 1 s
#   resets       requests that put the device in DEVICE_NEEDS_RESET
#   rng_ok       well-formed virtio-rng requests answered
# Memory map (RAM 0x8000_0000..0x8400_0000, the image at 0x8020_0000):
# see the .equ list below; SAC is filled with random words and is the
# only RAM the page-table attacks map at random (never executable), so
# random stores and fetches cannot hit the guest's own code or data.

    .option norvc
    .option norelax

    .equ RAM_BASE,   0x80000000
    .equ RAM_END,    0x84000000          # --memory 64M
    .equ AREA0,      0x81000000          # per-hart areas, 0x1000 each
    .equ GLOBALS,    0x81002000
    .equ VQ_DESC,    0x81010000
    .equ VQ_AVAIL,   0x81011000
    .equ VQ_USED,    0x81012000
    .equ IND_TABLE,  0x81013000
    .equ REQ_HDR,    0x81014000
    .equ REQ_STATUS, 0x81014100
    .equ SEG_BUF,    0x81014200
    .equ CANARY_BUF, 0x81015000
    .equ DATA_BUF,   0x81020000
    .equ VERIFY_BUF, 0x81030000
    .equ PRINT_BUF,  0x81040000
    .equ PT_POOL,    0x81100000          # + 0x10000 * hart
    .equ SMC_BUF,    0x81200000          # + 0x4000 * hart
    .equ SMC_SHARED, 0x81210000
    .equ STACK0,     0x81300000          # hart 0; hart 1 at - 0x10000
    .equ SAC,        0x82000000          # 8 MiB sacrificial region
    .equ SAC_END,    0x82800000

    # per-hart area offsets
    .equ SAVE_T1, 0
    .equ SAVE_T2, 8
    .equ RESUME,  16
    .equ HARTID,  24
    .equ C_FIRST, 32
    .equ C_TRAPS, 32
    .equ C_ACCESS, 40
    .equ C_CHAINS, 48
    .equ C_SBI,   56
    .equ C_PT,    64
    .equ C_SMC,   72
    .equ C_SMCBAD, 80
    .equ C_BLKOK, 88
    .equ C_BLKBAD, 96
    .equ C_CANARY, 104
    .equ C_MALOK, 112
    .equ C_TIMEOUT, 120
    .equ C_RESETS, 128
    .equ C_RNG,   136
    .equ C_LAST,  144
    .equ HSM_RES, 256                    # 8 results

    # globals
    .equ G_FAM,   0
    .equ G_SEED,  8
    .equ G_DONE1, 16
    .equ G_BLK,   24                     # blk slot base or 0
    .equ G_RNG,   32
    .equ G_QSIZE, 40
    .equ G_CAP,   48
    .equ G_HART1, 56                     # 1 when hart 1 was started
    .equ G_START, 64                     # `time` at boot

    .equ PROT_SEC, 64                    # sectors 64.. are protected
    # Waits are bounded by the `time` CSR (10 MHz), not by poll counts,
    # so a busy host does not turn a slow device into a failure.
    .equ WAIT_TICKS, 10000000             # 1 s for one request
    .equ HART1_TICKS, 300000000           # 30 s for hart 1's share
    .equ STOP_TICKS, 50000000             # 5 s for hart 1 to stop

    .equ EXT_TIME, 0x54494d45
    .equ EXT_IPI, 0x735049
    .equ EXT_RFENCE, 0x52464e43
    .equ EXT_HSM, 0x48534d
    .equ EXT_SRST, 0x53525354
    .equ EXT_DBCN, 0x4442434e

    # xorshift64 step on s11, result also in \rd (clobbers t6)
    .macro RAND rd
    slli t6, s11, 13
    xor s11, s11, t6
    srli t6, s11, 7
    xor s11, s11, t6
    slli t6, s11, 17
    xor s11, s11, t6
    mv \rd, s11
    .endm

    .macro INC off
    ld t5, \off(s10)
    addi t5, t5, 1
    sd t5, \off(s10)
    .endm

    .macro RESUME_AT label
    la t5, \label
    sd t5, RESUME(s10)
    .endm

    .macro PUSH_RA
    addi sp, sp, -16
    sd ra, 0(sp)
    .endm

    .macro POP_RA
    ld ra, 0(sp)
    addi sp, sp, 16
    .endm

    .macro SBI ext, fid
    li a7, \ext
    li a6, \fid
    ecall
    .endm

    .text
    .globl _start
# ------------------------------------------------------- Image header
_start:
    j boot                                # code0
    .word 0                               # code1
    .dword 0x200000                       # text_offset
    .dword 0x100000                       # image_size
    .dword 0                              # flags
    .word 2                               # version 0.2
    .word 0
    .dword 0
    .ascii "RISCV\0\0\0"
    .ascii "RSC\x05"
    .word 0

# ------------------------------------------------------------- boot
boot:
    mv s0, a1                             # FDT
    li s10, AREA0
    li s9, 0
    call hart_setup
    # defaults, then the command line
    li t0, GLOBALS
    csrr t1, time
    sd t1, G_START(t0)
    li t1, 0x1ff
    sd t1, G_FAM(t0)
    li t1, 0x2545f4914f6cdd1d
    sd t1, G_SEED(t0)
    sd zero, G_DONE1(t0)
    sd zero, G_HART1(t0)
    mv a0, s0
    call parse_cmdline
    li t0, GLOBALS
    ld s7, G_FAM(t0)
    ld s11, G_SEED(t0)
    bnez s11, 1f
    li s11, 1
1:
    # canaries the device must never write
    call set_canaries
    call probe_slots
    call fill_sac

    andi t0, s7, 0x20
    beqz t0, 2f
    # hart 1 does part of the work concurrently
    li a0, 1
    la a1, hart1_entry
    li a2, 0
    SBI EXT_HSM, 0
    bnez a0, 2f
    li t0, GLOBALS
    li t1, 1
    sd t1, G_HART1(t0)
2:
    andi t0, s7, 0x01
    beqz t0, 3f
    li a0, 20000
    call fuzz_regs
3:
    andi t0, s7, 0x02
    beqz t0, 4f
    call blk_attacks
    call rng_attacks
4:
    andi t0, s7, 0x80
    beqz t0, 5f
    call blk_flood
5:
    andi t0, s7, 0x100
    beqz t0, 51f
    call log_flood
51:
    andi t0, s7, 0x04
    beqz t0, 6f
    li a0, 4
    call sbi_sweep
6:
    andi t0, s7, 0x08
    beqz t0, 7f
    li a0, 4000
    call pt_attack
7:
    andi t0, s7, 0x10
    beqz t0, 8f
    call smc_attack
8:
    # wait for hart 1 (bounded)
    li t0, GLOBALS
    ld t1, G_HART1(t0)
    beqz t1, 10f
    csrr t2, time
    li t3, HART1_TICKS
    add t2, t2, t3
9:
    ld t1, G_DONE1(t0)
    bnez t1, 10f
    csrr t3, time
    bltu t3, t2, 9b
    la a0, s_hart1_timeout
    call print_cstr
10:
    andi t0, s7, 0x40
    beqz t0, 11f
    call hsm_attack
11:
    call blk_final_check
    call print_counts
    j shutdown

shutdown:
    li a0, 0
    li a1, 0
    SBI EXT_SRST, 0
    j shutdown

# Per-hart CSR setup: stvec, sscratch = area (s10), sp.
hart_setup:
    la t0, trap_handler
    csrw stvec, t0
    csrw sscratch, s10
    csrw satp, zero
    sfence.vma
    li t0, C_FIRST
1:
    add t1, s10, t0
    sd zero, 0(t1)
    addi t0, t0, 8
    li t1, 0x200
    blt t0, t1, 1b
    sd zero, RESUME(s10)
    sd s9, HARTID(s10)
    li sp, STACK0
    slli t0, s9, 16
    sub sp, sp, t0
    ret

# ------------------------------------------------------ trap handler
# Counts every trap. Exceptions resume at RESUME(area) if set (and clear
# it), else skip the 4-byte instruction; a fetch fault with nothing to
# resume at is fatal. Interrupts: disable them all and return.
    .balign 4
trap_handler:
    csrrw t0, sscratch, t0
    sd t1, SAVE_T1(t0)
    sd t2, SAVE_T2(t0)
    ld t1, C_TRAPS(t0)
    addi t1, t1, 1
    sd t1, C_TRAPS(t0)
    csrr t1, scause
    bltz t1, .Lintr
    ld t2, RESUME(t0)
    beqz t2, .Lskip
    sd zero, RESUME(t0)
    csrw sepc, t2
    j .Lret
.Lskip:
    li t2, 1
    beq t1, t2, .Lfatal
    li t2, 12
    beq t1, t2, .Lfatal
    csrr t1, sepc
    addi t1, t1, 4
    csrw sepc, t1
    j .Lret
.Lfatal:
    la t1, trap_fatal
    csrw sepc, t1
    j .Lret
.Lintr:
    csrw sie, zero
    li t1, 2
    csrc sip, t1
.Lret:
    li t1, 0x100                          # SPP: back to S-mode
    csrs sstatus, t1
    ld t1, SAVE_T1(t0)
    ld t2, SAVE_T2(t0)
    csrrw t0, sscratch, t0
    sret

trap_fatal:
    csrw satp, zero
    sfence.vma
    csrr s10, sscratch
    ld t0, HARTID(s10)
    bnez t0, hart1_stop
    la a0, s_fatal
    call print_cstr
    csrr a0, sepc
    call print_hex
    call print_counts
    j shutdown

# ------------------------------------------------------------ hart 1
hart1_entry:
    li s10, AREA0 + 0x1000
    li s9, 1
    call hart_setup
    li t0, GLOBALS
    ld s7, G_FAM(t0)
    ld s11, G_SEED(t0)
    li t1, 0x9e3779b97f4a7c15
    xor s11, s11, t1
    andi t0, s7, 0x01
    beqz t0, 1f
    li a0, 10000
    call fuzz_regs
1:
    andi t0, s7, 0x04
    beqz t0, 2f
    li a0, 1
    call sbi_sweep
2:
    andi t0, s7, 0x08
    beqz t0, 3f
    li a0, 2000
    call pt_attack
3:
    andi t0, s7, 0x10
    beqz t0, 4f
    call smc_attack
    call smc_patch_shared
4:
    fence rw, rw
    li t0, GLOBALS
    li t1, 1
    sd t1, G_DONE1(t0)
hart1_stop:
    csrw satp, zero
    sfence.vma
    SBI EXT_HSM, 1
    j hart1_stop

# ---------------------------------------------------- command line
# a0 = FDT. Scans its first 64 KiB for "hostile=" and parses hex
# FAMILIES[,SEED] into the globals.
parse_cmdline:
    PUSH_RA
    li t0, RAM_BASE
    bltu a0, t0, 9f
    li t0, RAM_END
    bgeu a0, t0, 9f
    li t1, 0x10000
    add t1, a0, t1                        # scan end
    la t2, s_key
1:
    bgeu a0, t1, 9f
    mv t3, a0
    mv t4, t2
2:
    lbu a2, 0(t4)
    beqz a2, 3f                           # whole key matched
    lbu a3, 0(t3)
    bne a2, a3, 4f
    addi t3, t3, 1
    addi t4, t4, 1
    j 2b
4:
    addi a0, a0, 1
    j 1b
3:
    mv a0, t3
    call parse_hex
    li t0, GLOBALS
    beqz a2, 9f
    sd a1, G_FAM(t0)
    lbu a3, 0(a0)
    li a4, ','
    bne a3, a4, 9f
    addi a0, a0, 1
    call parse_hex
    li t0, GLOBALS
    beqz a2, 9f
    sd a1, G_SEED(t0)
9:
    POP_RA
    ret

# a0 = text; returns a0 = after the digits, a1 = value, a2 = digit count
parse_hex:
    li a1, 0
    li a2, 0
1:
    lbu a3, 0(a0)
    li a4, '0'
    bltu a3, a4, 9f
    li a4, '9'
    bleu a3, a4, 2f
    ori a3, a3, 0x20
    li a4, 'a'
    bltu a3, a4, 9f
    li a4, 'f'
    bgtu a3, a4, 9f
    addi a3, a3, -87
    j 3f
2:
    addi a3, a3, -48
3:
    slli a1, a1, 4
    or a1, a1, a3
    addi a2, a2, 1
    addi a0, a0, 1
    j 1b
9:
    ret

# ------------------------------------------------------------ probing
# Finds the virtio-blk and virtio-rng slots (magic "virt", device id).
probe_slots:
    li t0, GLOBALS
    sd zero, G_BLK(t0)
    sd zero, G_RNG(t0)
    li t1, 0x10001000
    li t2, 0x10009000
1:
    lw t3, 0(t1)
    li t4, 0x74726976
    bne t3, t4, 3f
    lw t3, 8(t1)
    li t4, 2
    bne t3, t4, 2f
    sd t1, G_BLK(t0)
2:
    li t4, 4
    bne t3, t4, 3f
    sd t1, G_RNG(t0)
3:
    li t3, 0x1000
    add t1, t1, t3
    bltu t1, t2, 1b
    ret

# Fills the sacrificial region with random words (page-table attacks read
# it as page tables; random PTEs point outside RAM).
fill_sac:
    li t0, SAC
    li t1, SAC_END
1:
    RAND t2
    sd t2, 0(t0)
    addi t0, t0, 8
    bltu t0, t1, 1b
    ret

# Canaries: the byte at RAM_BASE + 0x7ff (last byte of a status buffer
# that starts below RAM), the last 0x100 bytes of RAM and CANARY_BUF
# (a read-only buffer): 0x5a everywhere.
set_canaries:
    li t0, RAM_BASE
    li t1, RAM_BASE + 0x800
    li t2, 0x5a
1:
    sb t2, 0(t0)
    addi t0, t0, 1
    bltu t0, t1, 1b
    li t0, RAM_END - 0x100
    li t1, RAM_END - 2                    # the hsm stub lives at -2
2:
    sb t2, 0(t0)
    addi t0, t0, 1
    bltu t0, t1, 2b
    li t0, CANARY_BUF
    li t1, CANARY_BUF + 0x1000
3:
    sb t2, 0(t0)
    addi t0, t0, 1
    bltu t0, t1, 3b
    ret

# Counts (C_CANARY) canary regions that changed; re-arms them.
set_canaries_check:
    PUSH_RA
    li a0, RAM_BASE
    li a1, RAM_BASE + 0x800
    call check_5a
    li a0, RAM_END - 0x100
    li a1, RAM_END - 2
    call check_5a
    li a0, CANARY_BUF
    li a1, CANARY_BUF + 0x1000
    call check_5a
    call set_canaries
    POP_RA
    ret

check_5a:
    li t2, 0x5a
1:
    lbu t0, 0(a0)
    beq t0, t2, 2f
    INC C_CANARY
    PUSH_RA
    mv s3, a0
    la a0, s_canary
    call print_cstr
    mv a0, s3
    call print_hex
    li a0, '\n'
    SBI EXT_DBCN, 2
    POP_RA
    ret
2:
    addi a0, a0, 1
    bltu a0, a1, 1b
    ret

# ------------------------------------------------------ register fuzz
# a0 = accesses. Random width (1/2/4/8), random offset (misaligned and
# past the end too), read or write, over PLIC, UART and every slot.
fuzz_regs:
    PUSH_RA
    mv s1, a0
1:
    beqz s1, 9f
    addi s1, s1, -1
    RAND t0
    li t1, 10
    remu t0, t0, t1
    li t1, 2
    bltu t0, t1, .Lplic
    li t1, 3
    bltu t0, t1, .Luart
    # a virtio slot
    RAND t0
    andi t1, t0, 7
    li t2, 0x10001000
    slli t3, t1, 12
    add a0, t2, t3
    bnez s9, 2f
    j 3f
2:  # hart 1 leaves the blk slot alone
    li t2, GLOBALS
    ld t2, G_BLK(t2)
    bne a0, t2, 3f
    li a0, 0x10000000
3:
    srli t1, t0, 8
    andi t2, t1, 3
    andi t1, t1, 0x1ff                    # registers and config
    bnez t2, 4f
    srli t1, t0, 20
    li t3, 0xfff                          # anywhere in the slot
    and t1, t1, t3
4:
    add a0, a0, t1
    j .Laccess
.Lplic:
    RAND t0
    andi t1, t0, 3
    li a0, 0x0c000000                     # priorities, pending
    li t2, 1
    bne t1, t2, 5f
    li a0, 0x0c002000                     # enables
5:
    li t2, 2
    bne t1, t2, 6f
    li a0, 0x0c200000                     # threshold / claim
6:
    li t2, 3
    bne t1, t2, 7f
    srli t3, t0, 32                       # anywhere, past the end too
    li t4, 0x3fffff
    and t3, t3, t4
    add a0, a0, t3
    j .Laccess
7:
    srli t3, t0, 8
    li t4, 0xfff
    and t3, t3, t4
    srli t4, t0, 20
    andi t4, t4, 1
    slli t4, t4, 12                       # context 0 or 1
    add a0, a0, t3
    add a0, a0, t4
    j .Laccess
.Luart:
    RAND t0
    li a0, 0x10000000
    andi t1, t0, 7
    srli t2, t0, 8
    andi t2, t2, 3
    bnez t2, 8f
    srli t1, t0, 16
    andi t1, t1, 0x1ff
8:
    add a0, a0, t1
.Laccess:
    RAND a1
    andi a2, a1, 7                        # op
    srli a1, a1, 3
    andi t0, a1, 1
    beqz t0, 10f
    andi a1, a1, 0xff                     # small values too
10:
    INC C_ACCESS
    call mmio_access
    j 1b
9:
    POP_RA
    ret

# a0 = address, a1 = value, a2 = op: bit 2 write, bits 0-1 log2 width.
# Faults are skipped by the trap handler.
mmio_access:
    andi t0, a2, 4
    andi t1, a2, 3
    bnez t0, .Lw
    li t0, 1
    beqz t1, .Lr1
    beq t1, t0, .Lr2
    li t0, 2
    beq t1, t0, .Lr4
    ld t2, 0(a0)
    ret
.Lr1:
    lbu t2, 0(a0)
    ret
.Lr2:
    lhu t2, 0(a0)
    ret
.Lr4:
    lw t2, 0(a0)
    ret
.Lw:
    li t0, 1
    beqz t1, .Lw1
    beq t1, t0, .Lw2
    li t0, 2
    beq t1, t0, .Lw4
    sd a1, 0(a0)
    ret
.Lw1:
    sb a1, 0(a0)
    ret
.Lw2:
    sh a1, 0(a0)
    ret
.Lw4:
    sw a1, 0(a0)
    ret

# ------------------------------------------------------ virtio driver
# s4 = slot base. vq_init(a0 = driver feature bits 0..31) resets the
# device, negotiates VERSION_1 plus a0, sets up queue 0 (size <= 256) at
# VQ_*, and sets DRIVER_OK. Returns a0 = 0, or 1 if FEATURES_OK was
# refused or the queue is missing.
vq_init:
    sw zero, 0x70(s4)
    li t0, 1
    sw t0, 0x70(s4)
    li t0, 3
    sw t0, 0x70(s4)
    li t0, 1
    sw t0, 0x24(s4)
    sw t0, 0x20(s4)                       # VERSION_1
    sw zero, 0x24(s4)
    sw a0, 0x20(s4)
    li t0, 11
    sw t0, 0x70(s4)
    lw t0, 0x70(s4)
    andi t0, t0, 8
    beqz t0, 8f
    sw zero, 0x30(s4)
    lw t0, 0x34(s4)
    beqz t0, 8f
    li t1, 256
    bleu t0, t1, 1f
    mv t0, t1
1:
    li t1, GLOBALS
    sd t0, G_QSIZE(t1)
    sw t0, 0x38(s4)
    # clear the rings
    li t1, VQ_DESC
    li t2, VQ_DESC + 0x3000
2:
    sd zero, 0(t1)
    addi t1, t1, 8
    bltu t1, t2, 2b
    li t1, VQ_DESC
    sw t1, 0x80(s4)
    sw zero, 0x84(s4)
    li t1, VQ_AVAIL
    sw t1, 0x90(s4)
    sw zero, 0x94(s4)
    li t1, VQ_USED
    sw t1, 0xa0(s4)
    sw zero, 0xa4(s4)
    li t0, 1
    sw t0, 0x44(s4)
    li t0, 15
    sw t0, 0x70(s4)
    li a0, 0
    ret
8:
    li a0, 1
    ret

# set_desc(a0 = index, a1 = addr, a2 = len, a3 = flags | next << 16)
set_desc:
    andi a0, a0, 255
    slli a0, a0, 4
    li t0, VQ_DESC
    add t0, t0, a0
    sd a1, 0(t0)
    sw a2, 8(t0)
    sw a3, 12(t0)
    ret

# publish(a0 = head): next avail slot = head, idx++, notify queue 0.
publish:
    li t0, VQ_AVAIL
    lhu t1, 2(t0)
    li t2, GLOBALS
    ld t2, G_QSIZE(t2)
    addi t2, t2, -1
    and t2, t2, t1
    slli t2, t2, 1
    add t2, t2, t0
    sh a0, 4(t2)
    fence w, w
    addi t1, t1, 1
    sh t1, 2(t0)
    fence rw, rw
    sw zero, 0x50(s4)
    ret

# wait_used: polls until used idx == avail idx, DEVICE_NEEDS_RESET, or
# WAIT_TICKS have passed. Returns a0 = 0 done, 1 needs reset, 2 timeout;
# acks interrupts. Clobbers a4, a5.
wait_used:
    li t0, VQ_AVAIL
    lhu t1, 2(t0)
    li t0, VQ_USED
    csrr a4, time
    li a5, WAIT_TICKS
    add a4, a4, a5
1:
    fence rw, rw
    lhu t3, 2(t0)
    beq t3, t1, 2f
    lw t3, 0x70(s4)
    andi t3, t3, 0x40
    bnez t3, 3f
    csrr t3, time
    bltu t3, a4, 1b
    INC C_TIMEOUT
    li a0, 2
    j 9f
2:
    li a0, 0
    j 9f
3:
    INC C_RESETS
    li a0, 1
9:
    lw t3, 0x60(s4)
    sw t3, 0x64(s4)
    ret

# ------------------------------------------------------ virtio-blk
# Scenario table: each entry is a header (type u32, pad u32, sector u64),
# a head index (u64) and four descriptors (addr u64, len u32, flags u16,
# next u16). The type 0xffffffff ends the table. Every request in it is
# malformed; those that would write do so to the protected sectors, so
# the host's checksum of them catches a device that accepts one.
    .equ F_N, 1
    .equ F_W, 2
    .equ F_I, 4
    .macro SCEN type, sector, head, ok=0
    .word \type, \ok
    .dword \sector, \head
    .endm
    .macro D addr, len, flags, next
    .dword \addr
    .word \len
    .hword \flags, \next
    .endm
    .balign 8
scenarios:
    # a chain that loops
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W|F_N, 1
    D 0, 0, 0, 0
    # a chain that loops onto its head
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    # header outside RAM
    SCEN 1, PROT_SEC, 0
    D 0x100000000, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # data outside RAM
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D 0x90000000, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # data straddling the end of RAM
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D RAM_END - 0x100, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # data straddling the start of RAM
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D RAM_BASE - 0x100, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # data at the top of the address space (wraps)
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D 0xffffffffffffff00, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # zero-length data (a multiple of 512: may succeed, writing nothing)
    SCEN 1, PROT_SEC, 0, 1
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 0, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # huge data length
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 0xffffffff, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # data not a multiple of 512
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 700, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # status buffer starting below RAM, last byte in RAM
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D RAM_BASE - 0x800, 0x1000, F_W, 0
    D 0, 0, 0, 0
    # status buffer straddling the end of RAM
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D RAM_END - 0x80, 0x1000, F_W, 0
    D 0, 0, 0, 0
    # status not device-writable
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, 0, 0
    D 0, 0, 0, 0
    # zero-length status
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 0, F_W, 0
    D 0, 0, 0, 0
    # no status descriptor
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, 0, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    # device-writable header
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_W|F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # header too short
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 8, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # next index out of range
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 0xfff0
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # head index out of range
    SCEN 1, PROT_SEC, 0xfff0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # readable data after the writable status
    SCEN 1, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D REQ_STATUS, 1, F_W|F_N, 2
    D DATA_BUF, 512, 0, 0
    D 0, 0, 0, 0
    # indirect descriptors that were never negotiated (the table holds
    # a well-formed write to the protected sectors)
    SCEN 1, PROT_SEC, 0
    D IND_TABLE, 48, F_I, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    # indirect and next together
    SCEN 1, PROT_SEC, 0
    D IND_TABLE, 48, F_I|F_N, 1
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    # indirect table of a length that is not a multiple of 16
    SCEN 1, PROT_SEC, 0
    D IND_TABLE, 40, F_I, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    # indirect table outside RAM
    SCEN 1, PROT_SEC, 0
    D 0x90000000, 48, F_I, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    # huge indirect table
    SCEN 1, PROT_SEC, 0
    D IND_TABLE, 0xfffffff0, F_I, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    D 0, 0, 0, 0
    # write past the end of the disk (the last sector is protected)
    SCEN 1, 2047, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 1024, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # write at the capacity
    SCEN 1, 2048, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # sector * 512 overflows to a protected offset
    SCEN 1, 0x80000000000000c0, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # write-zeroes running past the end (segment in SEG_BUF)
    SCEN 13, 0, 0
    D REQ_HDR, 16, F_N, 1
    D SEG_BUF, 16, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # discard running past the end
    SCEN 11, 0, 0
    D REQ_HDR, 16, F_N, 1
    D SEG_BUF, 16, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # write-zeroes with a segment straddling the end of RAM
    SCEN 13, 0, 0
    D REQ_HDR, 16, F_N, 1
    D RAM_END - 8, 16, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # read into a buffer the device may not write (CANARY_BUF)
    SCEN 0, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D CANARY_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # read into a writable buffer straddling the end of RAM
    SCEN 0, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D RAM_END - 0x100, 512, F_W|F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # read into a writable buffer starting below RAM
    SCEN 0, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D RAM_BASE - 0x100, 0x200, F_W|F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # get-id into a buffer straddling the end of RAM
    SCEN 8, 0, 0
    D REQ_HDR, 16, F_N, 1
    D RAM_END - 8, 20, F_W|F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    # unknown request type
    SCEN 0x7fff, PROT_SEC, 0
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    D 0, 0, 0, 0
    .word 0xffffffff, 0
    .balign 4

# The indirect table: a well-formed write to the protected sectors.
    .balign 8
ind_template:
    D REQ_HDR, 16, F_N, 1
    D DATA_BUF, 512, F_N, 2
    D REQ_STATUS, 1, F_W, 0
    # nested indirect (in slot 3, used by its own scenario)
    D IND_TABLE, 48, F_I, 0

blk_attacks:
    PUSH_RA
    li t0, GLOBALS
    ld s4, G_BLK(t0)
    beqz s4, 99f
    lw t1, 0x100(s4)                      # capacity (sectors, low word)
    sd t1, G_CAP(t0)
    # buffers: DATA_BUF gets a pattern; the segment asks for the
    # protected sectors through the end and beyond
    li t0, DATA_BUF
    li t1, DATA_BUF + 0x10000
1:
    RAND t2
    sd t2, 0(t0)
    addi t0, t0, 8
    bltu t0, t1, 1b
    li t0, SEG_BUF
    li t1, PROT_SEC
    sd t1, 0(t0)
    li t1, 0xffffffff
    sw t1, 8(t0)
    sw zero, 12(t0)
    # the indirect table
    la t0, ind_template
    li t1, IND_TABLE
    li t2, 64
2:
    ld t3, 0(t0)
    sd t3, 0(t1)
    addi t0, t0, 8
    addi t1, t1, 8
    addi t2, t2, -8
    bnez t2, 2b

    call blk_roundtrip                     # works before the abuse

    la s1, scenarios
3:
    lw t0, 0(s1)
    li t1, -1
    beq t0, t1, 4f
    mv a0, s1
    call blk_run_scenario
    addi s1, s1, 88
    j 3b
4:
    # only malformed requests so far: every canary must be intact (the
    # random chains below may write them legitimately)
    call set_canaries_check
    # indirect negotiated (if the device accepts the feature at all)
    li a0, 1 << 28
    call vq_init
    bnez a0, 5f
    INC C_CHAINS
    li t0, REQ_HDR
    li t1, 1
    sw t1, 0(t0)
    li t1, PROT_SEC
    sd t1, 8(t0)
    li a0, 0                               # nested indirect: table slot 3
    li a1, IND_TABLE + 48
    li a2, 16
    li a3, F_I
    call set_desc
    li a0, 0
    call publish
    call wait_used
5:
    # avail index far ahead of used
    li a0, 0
    call vq_init
    bnez a0, 6f
    INC C_CHAINS
    li t0, VQ_AVAIL
    li t1, 0x8000
    sh t1, 2(t0)
    fence rw, rw
    sw zero, 0x50(s4)
    call wait_used
6:
    # queue in MMIO / outside RAM at DRIVER_OK
    li a0, 0
    call vq_init
    call bad_rings
    li t0, 7
    sw t0, 0x50(s4)                        # a queue that does not exist
    INC C_CHAINS
    # notify before DRIVER_OK, queue size not a power of two
    li a0, 0
    call vq_init
    li t0, 3
    sw t0, 0x70(s4)
    sw zero, 0x50(s4)
    li t0, 100
    sw t0, 0x38(s4)
    INC C_CHAINS
    j .Lrandom_chains

# Resets the device and sets it up with rings outside RAM and in MMIO:
# DRIVER_OK must put it in DEVICE_NEEDS_RESET.
bad_rings:
    sw zero, 0x70(s4)
    li t0, 3
    sw t0, 0x70(s4)
    li t0, 1
    sw t0, 0x24(s4)
    sw t0, 0x20(s4)
    li t0, 11
    sw t0, 0x70(s4)
    sw zero, 0x30(s4)
    li t0, 16
    sw t0, 0x38(s4)
    li t0, 0x90000000
    sw t0, 0x80(s4)
    li t0, 0x10000000
    sw t0, 0x90(s4)
    li t0, RAM_END - 8
    sw t0, 0xa0(s4)
    li t0, 1
    sw t0, 0x44(s4)
    li t0, 15
    sw t0, 0x70(s4)
    sw zero, 0x50(s4)
    ret

.Lrandom_chains:
    # random chains: random descriptors, only request types that never
    # write the disk
    li s2, 1000
7:
    beqz s2, 8f
    addi s2, s2, -1
    andi t0, s2, 15
    bnez t0, 71f
    li a0, 0
    call vq_init
71:
    call blk_random_chain
    j 7b
8:
    call blk_roundtrip                     # still works after it
99:
    POP_RA
    ret

# a0 = scenario. Fresh device, descriptors 0..3, header, publish, wait.
blk_run_scenario:
    PUSH_RA
    addi sp, sp, -16
    sd s1, 0(sp)
    mv s1, a0
    li a0, (1 << 13) | (1 << 14)          # DISCARD, WRITE_ZEROES
    call vq_init
    bnez a0, 9f
    li t0, REQ_HDR
    lw t1, 0(s1)
    sw t1, 0(t0)
    sw zero, 4(t0)
    ld t1, 8(s1)
    sd t1, 8(t0)
    li t0, REQ_STATUS
    li t1, 0xff
    sb t1, 0(t0)
    li s3, 0
1:
    slli t0, s3, 4
    add t0, t0, s1
    mv a0, s3
    ld a1, 24(t0)
    lwu a2, 32(t0)
    lwu a3, 36(t0)
    call set_desc
    addi s3, s3, 1
    li t0, 4
    bltu s3, t0, 1b
    ld a0, 16(s1)
    INC C_CHAINS
    call publish
    call wait_used
    li t0, REQ_STATUS
    lbu t1, 0(t0)
    bnez t1, 9f
    lw t1, 4(s1)
    bnez t1, 9f
    INC C_MALOK                            # the device said OK: say which
    la a0, s_malok
    call print_cstr
    la t0, scenarios
    sub a0, s1, t0
    li t0, 88
    divu a0, a0, t0
    call print_dec
    li a0, '\n'
    SBI EXT_DBCN, 2
9:
    ld s1, 0(sp)
    addi sp, sp, 16
    POP_RA
    ret

# One random chain of 1..4 descriptors from hostile values.
blk_random_chain:
    PUSH_RA
    li t0, REQ_HDR
    RAND t1
    andi t2, t1, 3
    la t3, safe_types
    add t3, t3, t2
    lbu t2, 0(t3)
    sw t2, 0(t0)
    RAND t1
    sd t1, 8(t0)
    li s3, 0
1:
    RAND t1
    andi t2, t1, 15
    slli t2, t2, 3
    la t3, hostile_addrs
    add t3, t3, t2
    ld a1, 0(t3)
    srli t2, t1, 8
    andi t2, t2, 7
    slli t2, t2, 2
    la t3, hostile_lens
    add t3, t3, t2
    lwu a2, 0(t3)
    srli a3, t1, 16
    andi a3, a3, 7                        # flags
    srli t2, t1, 24
    andi t2, t2, 3                        # next: 0..3
    srli t3, t1, 26
    andi t3, t3, 7
    bnez t3, 2f
    li t2, 0x1234                         # sometimes out of range
2:
    slli t2, t2, 16
    or a3, a3, t2
    mv a0, s3
    call set_desc
    addi s3, s3, 1
    li t0, 4
    bltu s3, t0, 1b
    INC C_CHAINS
    RAND a0
    andi a0, a0, 3
    call publish
    call wait_used
    beqz a0, 3f
    li a0, 0
    call vq_init
3:
    POP_RA
    ret

safe_types:
    .byte 0, 4, 8, 0x55                   # IN, FLUSH, GET_ID, unknown
    .balign 8
hostile_addrs:
    .dword REQ_HDR, REQ_STATUS, SAC, SAC + 0x7ff001
    .dword RAM_END - 0x100, RAM_END - 1, RAM_END, RAM_BASE - 0x100
    .dword 0, 0xffffffffffffffff, 0x90000000, 0x10000000
    .dword 0x0c000000, SAC + 0x1000, 0x100000000, 0x7ffffff0
hostile_lens:
    .word 0, 1, 16, 512, 0x1000, 0x100000, 0xffffffff, 0x80000000

# Writes a pattern to the scratch sectors 0..7 and reads it back:
# C_BLKOK or C_BLKBAD.
blk_roundtrip:
    PUSH_RA
    li a0, 0
    call vq_init
    bnez a0, 8f
    li t0, VERIFY_BUF
    li t1, VERIFY_BUF + 0x1000
1:
    RAND t2
    sd t2, 0(t0)
    li t3, 0x1000
    add t3, t3, t0
    sd t2, 0(t3)                          # expected copy
    addi t0, t0, 8
    bltu t0, t1, 1b
    li t0, REQ_HDR
    li t1, 1
    sw t1, 0(t0)
    sw zero, 4(t0)
    sd zero, 8(t0)
    call rt_chain
    li a0, 0
    call publish
    call wait_used
    bnez a0, 8f
    li t0, REQ_STATUS
    lbu t1, 0(t0)
    bnez t1, 8f
    # clobber the buffer, read back
    li t0, VERIFY_BUF
    li t1, VERIFY_BUF + 0x1000
2:
    sd zero, 0(t0)
    addi t0, t0, 8
    bltu t0, t1, 2b
    li t0, REQ_HDR
    sw zero, 0(t0)
    call rt_chain
    li a0, 0
    li a1, VERIFY_BUF
    li a2, 0x1000
    li a3, F_W|F_N | (2 << 16)
    addi sp, sp, -16
    call set_desc_1
    addi sp, sp, 16
    li a0, 0
    call publish
    call wait_used
    bnez a0, 8f
    li t0, REQ_STATUS
    lbu t1, 0(t0)
    bnez t1, 8f
    li t0, VERIFY_BUF
    li t1, VERIFY_BUF + 0x1000
3:
    ld t2, 0(t0)
    li t3, 0x1000
    add t3, t3, t0
    ld t3, 0(t3)
    bne t2, t3, 8f
    addi t0, t0, 8
    bltu t0, t1, 3b
    INC C_BLKOK
    j 9f
8:
    INC C_BLKBAD
9:
    POP_RA
    ret

set_desc_1:
    li a0, 1
    j set_desc

# Descriptors 0..2 for the roundtrip: header, VERIFY_BUF (4 KiB,
# device-readable), status.
rt_chain:
    PUSH_RA
    li t0, REQ_STATUS
    li t1, 0xff
    sb t1, 0(t0)
    li a0, 0
    li a1, REQ_HDR
    li a2, 16
    li a3, F_N | (1 << 16)
    call set_desc
    li a0, 1
    li a1, VERIFY_BUF
    li a2, 0x1000
    li a3, F_N | (2 << 16)
    call set_desc
    li a0, 2
    li a1, REQ_STATUS
    li a2, 1
    li a3, F_W
    call set_desc
    POP_RA
    ret

blk_final_check:
    PUSH_RA
    li t0, GLOBALS
    ld t1, G_FAM(t0)
    andi t1, t1, 0x02
    beqz t1, 9f
    ld s4, G_BLK(t0)
    beqz s4, 9f
    call blk_roundtrip
9:
    POP_RA
    ret

# One notify, the same head published qsize times: first a 64 MiB write
# from 64 segments of 1 MiB (the same sacrificial MiB) at sector 0, past
# the end of the 1 MiB disk, so each must fail without writing; then a
# well-formed read of the first 1016 KiB of the disk in 254 segments of
# 4 KiB (the same sacrificial page): 254 MiB of work for one notify.
blk_flood:
    PUSH_RA
    li t0, GLOBALS
    ld s4, G_BLK(t0)
    beqz s4, 9f
    li a0, 1
    li a1, 0x100000
    li a2, 64
    li a3, F_N
    call flood_one
    li a0, 0
    li a1, 0x1000
    li a2, 254
    li a3, F_N|F_W
    call flood_one
9:
    POP_RA
    ret

# flood_one(a0 = type, a1 = segment length, a2 = segments, a3 = flags)
flood_one:
    PUSH_RA
    addi sp, sp, -32
    sd a1, 0(sp)
    sd a2, 8(sp)
    sd a3, 16(sp)
    mv s5, a0
    li a0, 0
    call vq_init
    bnez a0, 9f
    li t0, REQ_HDR
    sw s5, 0(t0)
    sd zero, 8(t0)
    li a0, 0
    li a1, REQ_HDR
    li a2, 16
    li a3, F_N | (1 << 16)
    call set_desc
    li s3, 1
1:
    mv a0, s3
    li a1, SAC
    ld a2, 0(sp)
    addi a3, s3, 1
    slli a3, a3, 16
    ld t0, 16(sp)
    or a3, a3, t0
    call set_desc
    ld t0, 8(sp)
    addi s3, s3, 1
    bleu s3, t0, 1b
    mv a0, s3
    li a1, REQ_STATUS
    li a2, 1
    li a3, F_W
    call set_desc
    li t0, GLOBALS
    ld s3, G_QSIZE(t0)
    li t0, VQ_AVAIL
    li t1, 0
2:
    slli t2, t1, 1
    add t2, t2, t0
    sh zero, 4(t2)
    addi t1, t1, 1
    bltu t1, s3, 2b
    fence w, w
    sh s3, 2(t0)
    fence rw, rw
    sw zero, 0x50(s4)
    INC C_CHAINS
    call wait_used
9:
    addi sp, sp, 32
    POP_RA
    ret

# 300 devices-needs-reset in a row, as fast as the guest can: the log
# lines Ember prints about them must be rate-limited.
log_flood:
    PUSH_RA
    li t0, GLOBALS
    ld s4, G_BLK(t0)
    beqz s4, 9f
    li s3, 300
1:
    call bad_rings
    INC C_CHAINS
    addi s3, s3, -1
    bnez s3, 1b
9:
    POP_RA
    ret

# ------------------------------------------------------ virtio-rng
rng_attacks:
    PUSH_RA
    li t0, GLOBALS
    ld s4, G_RNG(t0)
    beqz s4, 9f
    # a good request first: 64 bytes into DATA_BUF
    li a0, 0
    call vq_init
    bnez a0, 9f
    li a0, 0
    li a1, DATA_BUF
    li a2, 64
    li a3, F_W
    call set_desc
    li a0, 0
    call publish
    call wait_used
    bnez a0, 1f
    INC C_RNG
1:
    # random chains of hostile buffers (some legitimately writable,
    # so only crashes and hangs count here)
    li s2, 200
2:
    beqz s2, 9f
    addi s2, s2, -1
    li a0, 0
    call vq_init
    li s3, 0
3:
    RAND t1
    andi t2, t1, 7
    slli t2, t2, 3
    la t3, rng_addrs
    add t3, t3, t2
    ld a1, 0(t3)
    srli t2, t1, 8
    andi t2, t2, 7
    slli t2, t2, 2
    la t3, hostile_lens
    add t3, t3, t2
    lwu a2, 0(t3)
    srli a3, t1, 16
    andi a3, a3, 7
    srli t2, t1, 24
    andi t2, t2, 3
    slli t2, t2, 16
    or a3, a3, t2
    mv a0, s3
    call set_desc
    addi s3, s3, 1
    li t0, 4
    bltu s3, t0, 3b
    INC C_CHAINS
    li a0, 0
    call publish
    call wait_used
    j 2b
9:
    POP_RA
    ret

    .balign 8
rng_addrs:
    .dword CANARY_BUF, RAM_END - 0x100, RAM_BASE - 0x100, SAC
    .dword 0x90000000, 0xfffffffffffff000, RAM_END - 1, 0x10000000

# ------------------------------------------------------------- SBI
# a0 = argument sets per (extension, function). Every extension in the
# table, function ids 0..9 and two random ones, hostile arguments.
sbi_sweep:
    PUSH_RA
    mv s1, a0
    la s2, sbi_exts
1:
    ld s3, 0(s2)
    li t0, -1
    beq s3, t0, 9f
    li s5, 0                              # fid index 0..11
2:
    li t0, 12
    bgeu s5, t0, 8f
    mv s6, s5
    li t0, 10
    bltu s5, t0, 3f
    RAND s6
    srli s6, s6, 40
3:
    mv s8, s1
4:
    beqz s8, 7f
    addi s8, s8, -1
    call sbi_args                         # a0..a5
    mv a7, s3
    mv a6, s6
    call sbi_filter                       # may rewrite args, a7 = -1 to skip
    li t0, -1
    beq a7, t0, 4b
    INC C_SBI
    ecall
    j 4b
7:
    addi s5, s5, 1
    j 2b
8:
    addi s2, s2, 8
    j 1b
9:
    POP_RA
    ret

# Hostile argument values into a0..a5.
sbi_args:
    la t3, sbi_vals
    RAND t0
    andi t1, t0, 15
    slli t1, t1, 3
    add t1, t1, t3
    ld a0, 0(t1)
    srli t0, t0, 4
    andi t1, t0, 15
    slli t1, t1, 3
    add t1, t1, t3
    ld a1, 0(t1)
    srli t0, t0, 4
    andi t1, t0, 15
    slli t1, t1, 3
    add t1, t1, t3
    ld a2, 0(t1)
    srli t0, t0, 4
    andi t1, t0, 15
    slli t1, t1, 3
    add t1, t1, t3
    ld a3, 0(t1)
    RAND a4
    RAND a5
    ret

# The calls that would end or wedge the VM (see the top of the file)
# get harmless arguments or are skipped (a7 = -1).
sbi_filter:
    li t0, 8
    bne a7, t0, 1f
    li a7, -1                             # legacy shutdown
    ret
1:
    li t0, EXT_SRST
    bne a7, t0, 2f
    bnez a6, 2f
    andi a0, a0, 0x7ff
    addi a0, a0, 3                        # reserved types only
    ret
2:
    li t0, EXT_HSM
    bne a7, t0, 5f
    bnez a6, 3f
    li t0, 1                              # hart_start: never hart 1
    bne a0, t0, 9f
    li a0, 0
    ret
3:
    li t0, 1
    bne a6, t0, 4f
    li a7, -1                             # hart_stop
    ret
4:
    li t0, 3
    bne a6, t0, 9f
    li t0, 0xffff                         # hart_suspend: reserved types
    and a0, a0, t0
    addi a0, a0, 1
    ret
5:
    li t0, EXT_DBCN
    bne a7, t0, 9f
    bnez a6, 9f
    # console write: long lengths only where the buffer is not all RAM
    li t0, RAM_BASE
    bltu a1, t0, 9f
    li t0, RAM_END - 0x1000
    bgeu a1, t0, 9f
    andi a0, a0, 3
9:
    ret

    .balign 8
sbi_exts:
    .dword 0, 1, 2, 3, 4, 5, 6, 7
    .dword 0x10, EXT_TIME, EXT_IPI, EXT_RFENCE, EXT_HSM, EXT_SRST, EXT_DBCN
    .dword 0x504d55, 0x53555350, 0x43505043, 0x4e41434c, 0x535441
    .dword 0x09000000, 0x0a000000, 0x7fffffff, 0xffffffff80000000, 9
    .dword 0xffffffffffffffff
sbi_vals:
    .dword 0, 1, 2, 3, 0xffffffffffffffff, 0x8000000000000000
    .dword RAM_BASE, RAM_END - 1, RAM_END - 2, RAM_END, 0x7fffffff
    .dword 0xffffffff, 0x10000000, SAC, 0xffffffffffff0000, 64

# --------------------------------------------------- page tables
# a0 = iterations. Tables in PT_POOL + 0x10000 * hart: root (entry 0
# points back at the root, so Sv39/48/57 all find entry 2, a 1 GiB
# identity map of RAM), entry 1 -> a victim level-1 table full of random
# PTEs (-> a victim level-0 table, the sacrificial region, MMIO, nothing).
# Accesses at random VAs in [1 GiB, 2 GiB): loads, stores, fetches.
pt_attack:
    PUSH_RA
    mv s1, a0
    li s2, PT_POOL
    slli t0, s9, 16
    add s2, s2, t0                        # root
    # clear root
    mv t0, s2
    li t1, 0x1000
    add t1, t1, s2
1:
    sd zero, 0(t0)
    addi t0, t0, 8
    bltu t0, t1, 1b
    srli t0, s2, 12
    slli t0, t0, 10
    ori t0, t0, 1
    sd t0, 0(s2)                          # root[0] -> root
    li t0, (0x80000 << 10) | 0xcf
    sd t0, 16(s2)                         # root[2] = RAM, RWX AD
    li t0, 0x1000
    add t0, t0, s2
    srli t0, t0, 12
    slli t0, t0, 10
    ori t0, t0, 1
    sd t0, 8(s2)                          # root[1] -> victim L1
    # fill both victim tables
    li s3, 0
2:
    li t0, 1024
    bgeu s3, t0, 3f
    call gen_pte
    slli t0, s3, 3
    add t0, t0, s2
    li t1, 0x1000
    add t0, t0, t1
    sd a0, 0(t0)
    addi s3, s3, 1
    j 2b
3:
    beqz s1, 90f
    addi s1, s1, -1
    # change two entries
    call gen_pte
    RAND t0
    andi t0, t0, 1023
    slli t0, t0, 3
    add t0, t0, s2
    li t1, 0x1000
    add t0, t0, t1
    sd a0, 0(t0)
    # satp: a mode (mostly Sv39/Sv48, sometimes Sv57 or a reserved one),
    # a random ASID, always this root
    RAND t0
    andi t1, t0, 7
    la t2, satp_modes
    add t2, t2, t1
    lbu t1, 0(t2)
    slli t1, t1, 60
    srli t2, t0, 8
    li t3, 0xffff
    and t2, t2, t3
    slli t2, t2, 44
    or t1, t1, t2
    srli t2, s2, 12
    or t1, t1, t2
    csrw satp, t1
    # SUM / MXR sometimes
    srli t1, t0, 24
    andi t1, t1, 3
    slli t1, t1, 18
    csrc sstatus, t1
    srli t2, t0, 26
    andi t2, t2, 3
    slli t2, t2, 18
    csrs sstatus, t2
    # the VA and the sfence.vma variant
    RAND a0
    li t1, 0x3fffffff
    and a0, a0, t1
    li t1, 0x40000000
    or a0, a0, t1
    srli t1, t0, 28
    andi t1, t1, 7
    li t2, 1
    beq t1, t2, 4f
    li t2, 2
    beq t1, t2, 5f
    li t2, 3
    beq t1, t2, 6f
    li t2, 4
    beq t1, t2, 7f
    sfence.vma
    j 8f
4:
    sfence.vma a0
    j 8f
5:
    sfence.vma zero, t0
    j 8f
6:
    sfence.vma a0, t0
    j 8f
7:
8:
    INC C_PT
    srli t1, t0, 32
    andi t1, t1, 15
    li t2, 12
    bgeu t1, t2, 10f
    # a load or store
    srli a2, t0, 36
    andi a2, a2, 7
    RAND a1
    call mmio_access
    j 3b
10:
    # a fetch: jump there, resume at 11 on the trap
    RESUME_AT 11f
    jalr ra, 0(a0)
11:
    sd zero, RESUME(s10)
    j 3b
90:
    csrw satp, zero
    sfence.vma
    li t0, 3 << 18
    csrc sstatus, t0
    POP_RA
    ret

satp_modes:
    .byte 8, 9, 8, 9, 10, 0, 1, 15

# A random PTE (a0). Nothing it maps that is RAM is executable, and
# only the sacrificial region is RAM at all.
gen_pte:
    RAND t0
    andi t1, t0, 7
    srli t2, t0, 8                        # random bits
    li t3, 1
    beq t1, t3, 1f
    li t3, 2
    beq t1, t3, 2f
    li t3, 3
    beq t1, t3, 3f
    li t3, 4
    beq t1, t3, 4f
    li t3, 5
    beq t1, t3, 5f
    li t3, 6
    beq t1, t3, 6f
    li t3, 7
    beq t1, t3, 7f
    # 0: garbage with a PPN far outside RAM
    li t3, 0xfffff
    and t4, t2, t3
    slli t4, t4, 10
    li t3, 0x3f << 48
    or a0, t4, t3
    andi t3, t2, 0x3ff
    or a0, a0, t3
    ret
1:  # leaf -> a sacrificial page, random flags, never X
    li t3, 0x7ff
    and t4, t2, t3
    li t3, SAC >> 12
    add t4, t4, t3
    slli a0, t4, 10
    srli t3, t2, 12
    andi t3, t3, 0xf7
    or a0, a0, t3
    ori a0, a0, 1
    ret
2:  # leaf -> an MMIO page, random flags
    mv t4, t2
    PUSH_RA
    call mmio_page
    POP_RA
    srli t4, t4, 12
    slli a0, t4, 10
    srli t3, t2, 12
    andi t3, t3, 0xff
    or a0, a0, t3
    ori a0, a0, 1
    ret
3:  # pointer to the victim level-0 table (an invalid pointer at level 0)
    li t3, 0x2000
    add t4, s2, t3
    srli t4, t4, 12
    slli a0, t4, 10
    ori a0, a0, 1
    ret
4:  # pointer to a sacrificial page of random data
    li t3, 0x7ff
    and t4, t2, t3
    li t3, SAC >> 12
    add t4, t4, t3
    slli a0, t4, 10
    ori a0, a0, 1
    ret
5:  # 2 MiB-aligned (or, with the low bits, misaligned) sacrificial leaf
    andi t4, t2, 3
    slli t4, t4, 9
    srli t3, t2, 4
    andi t3, t3, 1
    add t4, t4, t3                        # misaligned half the time
    li t3, SAC >> 12
    add t4, t4, t3
    slli a0, t4, 10
    ori a0, a0, 0xc7                      # RW, A, D, V
    ret
6:  # leaf just past the end of RAM, random flags
    li t3, 0xffff
    and t4, t2, t3
    li t3, RAM_END >> 12
    add t4, t4, t3
    slli a0, t4, 10
    srli t3, t2, 16
    andi t3, t3, 0xff
    or a0, a0, t3
    ori a0, a0, 1
    ret
7:  # pointer to an MMIO page used as a page table
    mv t4, t2
    PUSH_RA
    call mmio_page
    POP_RA
    srli t4, t4, 12
    slli a0, t4, 10
    ori a0, a0, 1
    ret

# t4 = random bits in, an MMIO page address out (clobbers t3). Hart 1
# leaves the virtio-blk slot alone (see the top of the file).
mmio_page:
    andi t4, t4, 7
    la t3, mmio_pages
    slli t4, t4, 3
    add t3, t3, t4
    ld t4, 0(t3)
    beqz s9, 1f
    li t3, GLOBALS
    ld t3, G_BLK(t3)
    bne t3, t4, 1f
    li t4, 0x10000000
1:
    ret

    .balign 8
mmio_pages:
    .dword 0x0c000000, 0x0c200000, 0x10000000, 0x10000000
    .dword 0x10002000, 0x10003000, 0x10008000, 0x0c002000

# ------------------------------------------------ self-modifying code
# The buffer is SMC_BUF + 0x4000 * hart (three pages).
smc_attack:
    PUSH_RA
    li s2, SMC_BUF
    slli t0, s9, 14
    add s2, s2, t0
    # 1. rewrite "addi a0, a0, K; ret" 80 times, fence.i, run, check
    li s3, 80
1:
    beqz s3, 2f
    addi s3, s3, -1
    RAND t0
    andi s5, t0, 0x7ff
    slli t0, s5, 20
    li t1, 0x00050513
    or t0, t0, t1
    sw t0, 0(s2)
    li t1, 0x00008067
    sw t1, 4(s2)
    fence.i
    li a0, 0
    jalr ra, 0(s2)
    INC C_SMC
    beq a0, s5, 11f
    INC C_SMCBAD
11:
    # the same without fence.i (no architectural guarantee: not checked)
    addi t0, s5, 1
    andi t0, t0, 0x7ff
    slli t0, t0, 20
    li t1, 0x00050513
    or t0, t0, t1
    sw t0, 0(s2)
    li a0, 0
    jalr ra, 0(s2)
    j 1b
2:
    # 2. a hot loop that patches itself and runs fence.i every turn
    la a0, smc_loop
    la a1, smc_loop_end
    addi a2, s2, 0x100
    call copy_words
    fence.i
    li s3, 20
3:
    beqz s3, 4f
    addi s3, s3, -1
    la a0, smc_loop
    la a1, smc_loop_end
    addi a2, s2, 0x100
    call copy_words
    fence.i
    li a0, 0
    li a1, 500
    li t2, 0x00250513                     # addi a0, a0, 2
    addi t3, s2, 0x100
    jalr ra, 0(t3)
    INC C_SMC
    li t0, 999                            # 1 + 2 * 499
    beq a0, t0, 3b
    INC C_SMCBAD
    j 3b
4:
    # 3. the same loop with the fence.i turned into a nop: runs, ends
    la a0, smc_loop
    la a1, smc_loop_end
    addi a2, s2, 0x100
    call copy_words
    li t0, 0x00000013
    sw t0, 0x108(s2)
    fence.i
    li a0, 0
    li a1, 200
    li t2, 0x00250513
    addi t3, s2, 0x100
    jalr ra, 0(t3)
    INC C_SMC
    # 4. an instruction straddling a page boundary (pages 1 and 2)
    li t4, 0x1ffe
    add t4, t4, s2                        # straddling address
    li s5, 5
5:
    li t0, 0x00050513
    slli t1, s5, 20
    or t0, t0, t1
    sh t0, 0(t4)
    srli t0, t0, 16
    sh t0, 2(t4)
    li t0, 0x8067
    sh t0, 4(t4)
    sh zero, 6(t4)
    fence.i
    li a0, 0
    jalr ra, 0(t4)
    INC C_SMC
    beq a0, s5, 51f
    INC C_SMCBAD
51:
    addi s5, s5, 7
    li t0, 40
    bltu s5, t0, 5b
    # only the half on the second page changes now
    li t0, 0x00050513 | (123 << 20)
    srli t0, t0, 16
    sh t0, 2(t4)
    fence.i
    li a0, 0
    jalr ra, 0(t4)
    INC C_SMC
    li t0, 123
    beq a0, t0, 6f
    INC C_SMCBAD
6:
    # 5. c.jr ra on the last halfword of a page
    li t4, 0xffe
    add t4, t4, s2
    li t0, 0x8082
    sh t0, 0(t4)
    fence.i
    jalr ra, 0(t4)
    INC C_SMC
    # 6. hart 0 runs the shared loop while hart 1 patches it
    bnez s9, 8f
    la a0, smc_count_loop
    la a1, smc_count_loop_end
    li a2, SMC_SHARED
    call copy_words
    fence.i
    li s3, 40
7:
    beqz s3, 8f
    addi s3, s3, -1
    li a0, 0
    li a1, 2000
    li t0, SMC_SHARED
    jalr ra, 0(t0)
    INC C_SMC
    li t0, 2000
    bltu a0, t0, 71f
    li t0, 4000
    bleu a0, t0, 7b
71:
    INC C_SMCBAD
    j 7b
8:
    POP_RA
    ret

# hart 1: rewrite the shared loop's first instruction between +1 and +2
smc_patch_shared:
    li t0, SMC_SHARED
    li t1, 3000
    li t2, 0x00150513
    li t3, 0x00250513
1:
    sw t2, 0(t0)
    fence.i
    sw t3, 0(t0)
    fence.i
    addi t1, t1, -1
    bnez t1, 1b
    li t2, 0x00150513
    sw t2, 0(t0)
    fence.i
    ret

# copy_words(a0 = from, a1 = end, a2 = to)
copy_words:
    lw t0, 0(a0)
    sw t0, 0(a2)
    addi a0, a0, 4
    addi a2, a2, 4
    bltu a0, a1, copy_words
    ret

# Copied to SMC buffers, never run in place. t2 = the instruction to
# patch in, t3 = the loop's address.
smc_loop:
    addi a0, a0, 1
    sw t2, 0(t3)
    fence.i
    addi a1, a1, -1
    bnez a1, smc_loop
    ret
smc_loop_end:

smc_count_loop:
    addi a0, a0, 1
    addi a1, a1, -1
    bnez a1, smc_count_loop
    ret
smc_count_loop_end:

# --------------------------------------------------------------- HSM
# hart_start(1, ...) at addresses a correct SBI refuses or that run at
# the very end of RAM; each result goes to HSM_RES. The last halfword
# of RAM holds c.jr a1 (opaque = hsm_stub).
hsm_attack:
    PUSH_RA
    li t0, RAM_END - 2
    li t1, 0x8582                         # c.jr a1
    sh t1, 0(t0)
    fence.i
    # hart 1 sets its done flag just before hart_stop: wait until it is
    # stopped (or does not exist)
    csrr s5, time
    li t0, STOP_TICKS
    add s5, s5, t0
0:
    li a0, 1
    SBI EXT_HSM, 2
    bnez a0, 5f
    li t0, 1
    beq a1, t0, 5f
    csrr t0, time
    bltu t0, s5, 0b
5:
    la s1, hsm_addrs
    li s2, 0
1:
    ld s3, 0(s1)
    li t0, -2
    beq s3, t0, 9f
    li t0, -3
    bne s3, t0, 2f
    la s3, hsm_stub
    addi s3, s3, 1                        # odd, in RAM
2:
    la a0, s_hsm_try
    call print_cstr
    mv a0, s3
    call print_hex
    li a0, '\n'
    SBI EXT_DBCN, 2
    li a0, 1
    mv a1, s3
    la a2, hsm_stub
    SBI EXT_HSM, 0
    INC C_SBI
    slli t0, s2, 3
    add t0, t0, s10
    sd a0, HSM_RES(t0)
    bnez a0, 4f
    # started: wait (bounded) until it stops again
    csrr s5, time
    li t0, STOP_TICKS
    add s5, s5, t0
3:
    li a0, 1
    SBI EXT_HSM, 2
    li t0, 1
    beq a1, t0, 4f
    csrr t0, time
    bltu t0, s5, 3b
    li t0, 0x7777                          # did not come back
    slli t1, s2, 3
    add t1, t1, s10
    sd t0, HSM_RES(t1)
    j 9f
4:
    addi s1, s1, 8
    addi s2, s2, 1
    j 1b
9:
    POP_RA
    ret

    .balign 8
hsm_addrs:
    .dword RAM_END - 2                    # valid: c.jr a1 on the last halfword
    .dword RAM_END - 1                    # odd, the last byte of RAM
    .dword 0xfffffffffffffffd             # -3: odd address in RAM
    .dword RAM_END                        # outside RAM
    .dword 0xffffffffffffffff
    .dword 0x10000000                     # MMIO (refusing it is optional)
    .dword 0xfffffffffffffffe             # end

    .balign 4
hsm_stub:
    SBI EXT_HSM, 1
    j hsm_stub

# ------------------------------------------------------------ output
# print_cstr(a0 = NUL-terminated text) via SBI DBCN write.
print_cstr:
    mv t0, a0
1:
    lbu t1, 0(t0)
    beqz t1, 2f
    addi t0, t0, 1
    j 1b
2:
    sub a1, t0, a0                        # len
    mv t2, a0
    mv a0, a1
    mv a1, t2
    li a2, 0
    SBI EXT_DBCN, 0
    ret

# print_dec(a0)
print_dec:
    li t0, PRINT_BUF + 32
    li t1, 10
    mv t2, t0
1:
    remu t3, a0, t1
    divu a0, a0, t1
    addi t3, t3, '0'
    addi t2, t2, -1
    sb t3, 0(t2)
    bnez a0, 1b
    sub a0, t0, t2
    mv a1, t2
    li a2, 0
    SBI EXT_DBCN, 0
    ret

# print_hex(a0), signed values print as their 64-bit pattern
print_hex:
    li t0, PRINT_BUF + 64
    mv t2, t0
1:
    andi t3, a0, 15
    srli a0, a0, 4
    li t1, 10
    bltu t3, t1, 2f
    addi t3, t3, 'a' - 10 - '0'
2:
    addi t3, t3, '0'
    addi t2, t2, -1
    sb t3, 0(t2)
    bnez a0, 1b
    sub a0, t0, t2
    mv a1, t2
    li a2, 0
    SBI EXT_DBCN, 0
    ret

# One line: label=value for every counter (sum of both harts' areas),
# then the HSM results.
print_counts:
    PUSH_RA
    li a0, '\n'
    SBI EXT_DBCN, 2
    la a0, s_counts
    call print_cstr
    li t0, GLOBALS
    ld a0, G_FAM(t0)
    call print_hex
    la s1, count_names
    li s2, C_FIRST
1:
    li t0, C_LAST
    bgeu s2, t0, 2f
    li a0, ' '
    SBI EXT_DBCN, 2
    mv a0, s1
    call print_cstr
    li a0, '='
    SBI EXT_DBCN, 2
    li t0, AREA0
    add t0, t0, s2
    ld a0, 0(t0)
    li t1, 0x1000
    add t1, t1, t0
    ld t1, 0(t1)
    add a0, a0, t1
    call print_dec
    # next name
3:
    lbu t0, 0(s1)
    addi s1, s1, 1
    bnez t0, 3b
    addi s2, s2, 8
    j 1b
2:
    la a0, s_ms
    call print_cstr
    li t0, GLOBALS
    ld t1, G_START(t0)
    csrr a0, time
    sub a0, a0, t1
    li t0, 10000                          # 10 MHz ticks per ms
    divu a0, a0, t0
    call print_dec
    la a0, s_hsm
    call print_cstr
    li s2, 0
4:
    li t0, 6
    bgeu s2, t0, 5f
    li t0, AREA0 + HSM_RES
    slli t1, s2, 3
    add t0, t0, t1
    ld a0, 0(t0)
    call print_hex
    li a0, ','
    SBI EXT_DBCN, 2
    addi s2, s2, 1
    j 4b
5:
    li a0, '\n'
    SBI EXT_DBCN, 2
    POP_RA
    ret

count_names:
    .asciz "traps"
    .asciz "accesses"
    .asciz "chains"
    .asciz "sbi"
    .asciz "pt"
    .asciz "smc"
    .asciz "smc_bad"
    .asciz "blk_ok"
    .asciz "blk_bad"
    .asciz "canary_bad"
    .asciz "malformed_ok"
    .asciz "timeouts"
    .asciz "resets"
    .asciz "rng_ok"
s_counts:
    .asciz "HOSTILE-COUNTS families="
s_ms:
    .asciz " ms="
s_hsm:
    .asciz " hsm="
s_malok:
    .asciz "\nHOSTILE: malformed request accepted: scenario "
s_canary:
    .asciz "\nHOSTILE: the device wrote a buffer it was not given, at 0x"
s_hsm_try:
    .asciz "HOSTILE: hart_start of hart 1 at 0x"
s_key:
    .asciz "hostile="
s_fatal:
    .asciz "\nHOSTILE-FATAL unexpected fetch fault, sepc="
s_hart1_timeout:
    .asciz "\nHOSTILE: hart 1 did not finish\n"
    .balign 4
