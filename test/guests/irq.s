# An interrupt handler behind the 8259 PIC: vectors 0x20-0x2f, IRQ line IRQ unmasked, the
# IVT entry pointing at `handler`. The guest announces READY over MMIO and halts with
# interrupts on; each interrupt writes the running count to MARK over MMIO, then EOIs.
# Symbols: MMIO_SEG, IRQ (0-7), READY, MARK (offsets in the window).
.code16
.globl _start
.set VECTOR, 0x20 + IRQ
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    movw $handler, VECTOR * 4
    movw $0, VECTOR * 4 + 2
    mov $0x11, %al           # ICW1: edge, cascade, ICW4 follows
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al           # ICW2: master vectors 0x20-0x27
    out %al, $0x21
    mov $0x28, %al           #       slave vectors 0x28-0x2f
    out %al, $0xa1
    mov $0x04, %al           # ICW3: slave on IRQ2
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xa1
    mov $0x01, %al           # ICW4: 8086 mode
    out %al, $0x21
    out %al, $0xa1
    mov $(~(1 << IRQ) & 0xff), %al
    out %al, $0x21           # OCW1: only IRQ unmasked
    mov $0xff, %al
    out %al, $0xa1
    mov $MMIO_SEG, %ax
    mov %ax, %es
    movb $1, %es:READY
idle:
    sti
    hlt
    jmp idle

handler:
    push %ax
    incw count
    movw count, %ax
    movw %ax, %es:MARK
    mov $0x20, %al           # non-specific EOI
    out %al, $0x20
    pop %ax
    iret

count:
    .word 0
