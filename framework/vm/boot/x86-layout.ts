// Where an x86_64 Linux guest's boot structures sit in guest-physical memory, in one place
// (the addresses Firecracker uses): everything the loader writes below 1 MiB, the MP table in
// the last KiB below 640 KiB, RAM split around the 32-bit MMIO hole, and the virtio-mmio
// windows at 0xd0000000 with legacy PIC-compatible interrupts.

export const PAGE_SIZE = 4096;
export const MIB = 1024 * 1024;
export const GIB = 1024 * MIB;

/** GDT (__BOOT_CS 0x10, __BOOT_DS 0x18). */
export const GDT_ADDRESS = 0x500;
/** boot_params, the "zero page". */
export const ZERO_PAGE_ADDRESS = 0x7000;
/** Initial stack pointer (the kernel sets up its own at once). */
export const BOOT_STACK_POINTER = 0x8ff0;
/** Identity page tables for the low 4 GiB (PAGE_TABLE_BYTES from entry-state.ts). */
export const PAGE_TABLES_ADDRESS = 0x9000;
/** Kernel command line. */
export const CMDLINE_ADDRESS = 0x2_0000;
export const CMDLINE_MAX_BYTES = 0x1_0000;
/** MP floating pointer and configuration table (the top KiB of conventional memory, as an EBDA). */
export const MPTABLE_ADDRESS = 0x9_fc00;
export const MPTABLE_MAX_BYTES = 0xa_0000 - MPTABLE_ADDRESS;
/** End of conventional memory; 640 KiB..1 MiB is the legacy hole (VGA, option ROMs, BIOS). */
export const LOW_MEMORY_END = 0xa_0000;
export const HIGH_MEMORY_START = 0x10_0000;

/** Guest RAM is split here: [4 GiB - 1 GiB, 4 GiB) holds MMIO, the IOAPIC, LAPIC and KVM's TSS. */
export const MMIO_HOLE_START = 3 * GIB;
export const MMIO_HOLE_END = 4 * GIB;

/** virtio-mmio register windows, one 4 KiB page each. */
export const VIRTIO_MMIO_BASE = 0xd000_0000;
export const VIRTIO_MMIO_STRIDE = 0x1000;
/** Interrupt lines for virtio-mmio devices: ISA IRQs nobody else uses (COM1 is 4). */
export const VIRTIO_IRQS: readonly number[] = Object.freeze([5, 6, 7, 9, 10, 11, 12, 14, 15, 3]);

export const IOAPIC_ADDRESS = 0xfec0_0000;
export const LAPIC_ADDRESS = 0xfee0_0000;
/** Pins of KVM's in-kernel IOAPIC. */
export const IOAPIC_PINS = 24;

/** RAM regions for `size` bytes: below the MMIO hole, the rest from 4 GiB. */
export function x86RamRegions(size: number): { base: number; size: number }[] {
  if (size <= MMIO_HOLE_START) return [{ base: 0, size }];
  return [{ base: 0, size: MMIO_HOLE_START }, { base: MMIO_HOLE_END, size: size - MMIO_HOLE_START }];
}
