# Ember's built-in guest: a 64 KiB firmware image mapped as ROM just below
# 4 GiB (its last 128 KiB, here all of it, also appear at 0xf0000 through
# the isa-bios alias). The vCPU starts at the reset vector in real mode.
#
# It prints a banner on the 16550 UART at 0x3f8, exercises port I/O (the
# POST port 0x80), MMIO (the ember-info device at 0xd0000: its magic and a
# scratch register) and ROM (a write to the ROM must not change it), reports
# each check on the console, and powers off through the ACPI-style PM1a
# control port 0x604 (SLP_EN with SLP_TYP S5).
#
# Assembled by build.rs with GNU as: `as --32` then `objcopy -O binary`.

        .code16
        .text
        .org 0

start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ss
        movw    $0x7c00, %sp            # stack in RAM below the banner
        movw    $0xf000, %ax            # code and data through isa-bios
        movw    %ax, %ds

        movw    $banner, %si
        call    puts

        # Port I/O: a POST code.
        movb    $0x42, %al
        outb    %al, $0x80
        movw    $msg_pio, %si
        call    puts

        # MMIO: the ember-info device at 0xd0000.
        movw    $0xd000, %ax
        movw    %ax, %es
        movl    %es:0, %eax             # magic "EMBR"
        cmpl    $0x52424d45, %eax
        jne     fail
        movl    $0xcafe1234, %es:8      # scratch register
        movl    %es:8, %eax
        cmpl    $0xcafe1234, %eax
        jne     fail
        movw    $msg_mmio, %si
        call    puts

        # ROM: a write must not change it.
        movb    rom_byte, %al
        notb    %al
        movb    %al, rom_byte
        movb    rom_byte, %al
        cmpb    $0x5a, %al
        jne     fail
        movw    $msg_rom, %si
        call    puts

        movw    $msg_bye, %si
        call    puts

poweroff:
        movw    $0x604, %dx
        movw    $0x2000, %ax            # SLP_EN, SLP_TYP = 0 (S5)
        outw    %ax, %dx
halt:
        hlt
        jmp     halt

fail:
        movw    $msg_fail, %si
        call    puts
        jmp     poweroff

# Prints the NUL-terminated string at %ds:%si on COM1.
puts:
        lodsb
        testb   %al, %al
        jz      1f
        movw    $0x3f8, %dx
        outb    %al, %dx
        jmp     puts
1:      ret

banner:   .asciz "Ember built-in guest: hello from the reset vector\r\n"
msg_pio:  .asciz "  port I/O: ok\r\n"
msg_mmio: .asciz "  MMIO: ok\r\n"
msg_rom:  .asciz "  ROM: ok\r\n"
msg_bye:  .asciz "Powering off.\r\n"
msg_fail: .asciz "  check FAILED\r\n"
rom_byte: .byte 0x5a

        # The reset vector, 16 bytes below the end of the 64 KiB image.
        .org 0xfff0
reset:
        ljmp    $0xf000, $start
        .org 0x10000
