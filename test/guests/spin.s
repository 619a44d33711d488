# Spins without ever exiting: only a signal gets the vCPU out of KVM_RUN.
.code16
.globl _start
_start:
    jmp _start
