# Long mode: an 8-byte MMIO read, xor-ed with a constant, written back 8 bytes wide.
# Symbols: MMIO_BASE (identity-mapped), KEY (64-bit constant).
.code64
.globl _start
_start:
    movabs $MMIO_BASE, %rbx
    movq (%rbx), %rax        # 8-byte read
    movabs $KEY, %rcx
    xorq %rcx, %rax
    movq %rax, 8(%rbx)       # 8-byte write: value ^ KEY
    movb $1, 0x0f(%rbx)      # done
halt:
    hlt
    jmp halt
