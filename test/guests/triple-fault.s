# A real-mode IDT of limit 0: the breakpoint cannot be delivered (#GP, then #DF), so the
# CPU shuts down (triple fault) with `fault` as the instruction pointer.
.code16
.globl _start
_start:
    lidt empty_idt
fault:
    int $3
halt:
    hlt
    jmp halt
empty_idt:
    .word 0
    .long 0
