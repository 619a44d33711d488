# Benchmark: MMIO reads in a tight loop, one exit per iteration.
# Symbols: MMIO_SEG.
.code16
.globl _start
_start:
    mov $MMIO_SEG, %ax
    mov %ax, %ds
loop:
    movl 0x00, %eax
    jmp loop
