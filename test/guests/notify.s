# QueueNotify traffic: COUNT writes of queue index 0 (an ioeventfd matches them: no exit),
# then one write of index 1 (no ioeventfd: an MMIO exit) and a done marker.
# Symbols: MMIO_SEG, NOTIFY (offset of QueueNotify in the window), COUNT.
.code16
.globl _start
_start:
    mov $MMIO_SEG, %ax
    mov %ax, %ds
    mov $COUNT, %cx
notify:
    movl $0, NOTIFY
    loop notify
    movl $1, NOTIFY
    movb $1, 0x0f            # done
halt:
    hlt
    jmp halt
