# MMIO reads answered by the host come back as register values: the guest reads 4, 2 and
# 1 bytes from the test window, transforms each in a register, and writes the results back.
# Symbols: MMIO_SEG (window = MMIO_SEG * 16).
.code16
.globl _start
_start:
    mov $MMIO_SEG, %ax
    mov %ax, %ds
    movl 0x00, %eax          # 4-byte read
    addl $0x01010101, %eax
    movl %eax, 0x04          # 4-byte write: value + 0x01010101
    movw 0x08, %bx           # 2-byte read
    notw %bx
    movw %bx, 0x0a           # 2-byte write: ~value
    movb 0x0c, %cl           # 1-byte read
    incb %cl
    movb %cl, 0x0d           # 1-byte write: value + 1
    movb $1, 0x0f            # done
halt:
    hlt
    jmp halt
