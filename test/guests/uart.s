# COM1 two ways. Polled: wait for LSR.THRE, write each byte of `hello`. Interrupt driven
# (IRQ 4 through the PIC, vector 0x24): with IER = THRI|RDI, the handler loops on IIR,
# sends `irqtx` one byte per THR-empty interrupt (then drops THRI), and echoes every
# received byte back.
.code16
.globl _start
.set COM1, 0x3f8
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov $hello, %si
polled:
    movb (%si), %bl
    test %bl, %bl
    jz polled_done
    inc %si
    mov $COM1 + 5, %dx
wait_thre:
    in %dx, %al
    test $0x20, %al
    jz wait_thre
    mov $COM1, %dx
    mov %bl, %al
    out %al, %dx
    jmp polled
polled_done:
    movw $isr, 0x24 * 4
    movw $0, 0x24 * 4 + 2
    mov $0x11, %al
    out %al, $0x20
    mov $0x20, %al
    out %al, $0x21
    mov $0x04, %al
    out %al, $0x21
    mov $0x01, %al
    out %al, $0x21
    mov $0xef, %al           # only IRQ 4
    out %al, $0x21
    mov $irqtx, %si
    mov $COM1 + 1, %dx
    mov $0x03, %al           # IER: RDI | THRI
    out %al, %dx
idle:
    sti
    hlt
    jmp idle

isr:
    push %ax
    push %dx
next:
    mov $COM1 + 2, %dx
    in %dx, %al              # IIR
    and $0x0f, %al
    cmp $0x02, %al
    je thr_empty
    cmp $0x04, %al
    je rx_ready
    mov $0x20, %al           # nothing pending: EOI and return
    out %al, $0x20
    pop %dx
    pop %ax
    iret
thr_empty:
    movb (%si), %al
    test %al, %al
    jz tx_done
    inc %si
    mov $COM1, %dx
    out %al, %dx
    jmp next
tx_done:
    mov $COM1 + 1, %dx
    mov $0x01, %al           # IER: RDI only
    out %al, %dx
    jmp next
rx_ready:
    mov $COM1, %dx
    in %dx, %al
    out %al, %dx             # echo
    jmp next

hello:
    .asciz "hello, polled\n"
irqtx:
    .asciz "hello, irq\n"
