# Benchmark: writes to the unclaimed POST port in a tight loop, served inside the vCPU thread.
.code16
.globl _start
_start:
    out %al, $0x80
    jmp _start
