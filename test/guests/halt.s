# Halts with interrupts off: the vCPU sleeps in the kernel until the host stops it.
.code16
.globl _start
_start:
    cli
halt:
    hlt
    jmp halt
