# Long mode with an empty IDT: a load from an address the page tables do not map raises #PF,
# which cannot be delivered (#DF cannot either), so the CPU shuts down (triple fault) with
# `fault` as the instruction pointer. Symbols: UNMAPPED (an address above the 4 GiB map).
.code64
.globl _start
_start:
    movabs $UNMAPPED, %rax
fault:
    movq (%rax), %rbx
halt:
    hlt
    jmp halt
