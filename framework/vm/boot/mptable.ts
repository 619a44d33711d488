// The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI learns its CPUs
// (local APIC ids), the IOAPIC and that ISA IRQ n arrives on IOAPIC pin n. Built as bytes: the
// 16-byte floating pointer "_MP_" followed by the "PCMP" configuration table and its entries,
// each structure with its checksum. Same content as Firecracker's mptable.

import { BootError } from './boot-error.ts';
import { IOAPIC_ADDRESS, IOAPIC_PINS, LAPIC_ADDRESS } from './x86-layout.ts';

const FLOATING_SIZE = 16;
const HEADER_SIZE = 44;
const PROCESSOR_SIZE = 20;
const ENTRY_SIZE = 8;
const SPEC_REV = 4;
const APIC_VERSION = 0x14;
const IOAPIC_VERSION = 0x11;
const CPU_ENABLED = 1;
const CPU_BSP = 2;
const CPU_SIGNATURE = 0x600; // family 6
const CPU_FEATURES = 0x201; // FPU, APIC
const ENTRY_PROCESSOR = 0;
const ENTRY_BUS = 1;
const ENTRY_IOAPIC = 2;
const ENTRY_IO_INTERRUPT = 3;
const ENTRY_LOCAL_INTERRUPT = 4;
const INT_TYPE_INT = 0;
const INT_TYPE_NMI = 1;
const INT_TYPE_EXTINT = 3;

/** Bytes an MP table for `cpus` CPUs takes. */
export function mpTableSize(cpus: number): number {
  return FLOATING_SIZE + HEADER_SIZE + cpus * PROCESSOR_SIZE + ENTRY_SIZE * (2 + IOAPIC_PINS + 2);
}

/** The MP table for `cpus` CPUs (APIC ids 0..cpus-1, the IOAPIC next), to be placed at `address`. */
export function buildMpTable(address: number, cpus: number): Uint8Array {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) throw new BootError('EINVAL', `MP table: ${cpus} CPUs (1..254)`);
  const bytes = new Uint8Array(mpTableSize(cpus));
  const v = new DataView(bytes.buffer);
  const ioapicId = cpus;
  // Floating pointer.
  bytes.set([0x5f, 0x4d, 0x50, 0x5f], 0); // "_MP_"
  v.setUint32(4, address + FLOATING_SIZE, true);
  bytes[8] = 1; // length in 16-byte units
  bytes[9] = SPEC_REV;
  bytes[10] = checksum(bytes.subarray(0, FLOATING_SIZE));
  // Configuration table header.
  const table = bytes.subarray(FLOATING_SIZE);
  const t = new DataView(table.buffer, table.byteOffset, table.byteLength);
  table.set([0x50, 0x43, 0x4d, 0x50], 0); // "PCMP"
  t.setUint16(4, table.length, true);
  table[6] = SPEC_REV;
  table.set(ascii('RXVIRT  '), 8);
  table.set(ascii('000000000000'), 16);
  t.setUint16(34, cpus + 2 + IOAPIC_PINS + 2, true);
  t.setUint32(36, LAPIC_ADDRESS, true);
  let at = HEADER_SIZE;
  for (let id = 0; id < cpus; id++) {
    table[at] = ENTRY_PROCESSOR;
    table[at + 1] = id;
    table[at + 2] = APIC_VERSION;
    table[at + 3] = CPU_ENABLED | (id === 0 ? CPU_BSP : 0);
    t.setUint32(at + 4, CPU_SIGNATURE, true);
    t.setUint32(at + 8, CPU_FEATURES, true);
    at += PROCESSOR_SIZE;
  }
  table[at] = ENTRY_BUS;
  table[at + 1] = 0;
  table.set(ascii('ISA   '), at + 2);
  at += ENTRY_SIZE;
  table[at] = ENTRY_IOAPIC;
  table[at + 1] = ioapicId;
  table[at + 2] = IOAPIC_VERSION;
  table[at + 3] = 1; // enabled
  t.setUint32(at + 4, IOAPIC_ADDRESS, true);
  at += ENTRY_SIZE;
  for (let pin = 0; pin < IOAPIC_PINS; pin++) {
    // ISA IRQ `pin` on IOAPIC pin `pin`, bus-default polarity and trigger (edge, active high).
    table.set([ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, pin, ioapicId, pin], at);
    at += ENTRY_SIZE;
  }
  table.set([ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0], at); // LINT0 of the BSP: the PIC
  at += ENTRY_SIZE;
  table.set([ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1], at); // LINT1 of every CPU: NMI
  table[7] = checksum(table);
  return bytes;
}

function ascii(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

/** The byte that makes `bytes` sum to zero (its checksum field must still be zero). */
function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}
