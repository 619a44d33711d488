# Port I/O nobody claims is harmless: writes to the POST port 0x80 and a read of port 0x92
# (answered 0xff, reported over MMIO), then a machine reset through the i8042.
# Symbols: MMIO_SEG, DELAYS (number of port 0x80 writes).
.code16
.globl _start
_start:
    mov $DELAYS, %cx
delay:
    out %al, $0x80
    loop delay
    in $0x92, %al
    mov $MMIO_SEG, %bx
    mov %bx, %ds
    movb %al, 0x00
    mov $0xfe, %al
    out %al, $0x64           # i8042: pulse the reset line
halt:
    hlt
    jmp halt
