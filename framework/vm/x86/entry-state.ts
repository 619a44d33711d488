// x86 CPU states a VMM enters a guest in: 16-bit real mode at cs:ip (tiny payloads, firmware),
// and 64-bit long mode with paging on (the Linux 64-bit boot protocol): a GDT with __BOOT_CS
// 0x10 and __BOOT_DS 0x18, and page tables identity-mapping the low 4 GiB with 2 MiB pages,
// both written into guest RAM at addresses the caller chooses.

import type { KvmRegs, KvmSegment, KvmSregs } from '../../../native/kvm.ts';
import type { GuestMemory } from '../../guest-memory.ts';

const CR0_PE = 1n << 0n;
const CR0_MP = 1n << 1n;
const CR0_ET = 1n << 4n;
const CR0_NE = 1n << 5n;
const CR0_WP = 1n << 16n;
const CR0_AM = 1n << 18n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;
const RFLAGS_RESERVED = 2n; // bit 1 always reads 1

/** Register file with everything zero except rflags' reserved bit. */
export function zeroRegs(): KvmRegs {
  return {
    rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n,
    r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n,
    rip: 0n, rflags: RFLAGS_RESERVED,
  };
}

/** Real mode at cs:ip with ds = es = ss = 0 and the given stack pointer. */
export function realModeEntry(sregs: KvmSregs, entry: { cs: number; ip: number; sp?: number }): { regs: KvmRegs; sregs: KvmSregs } {
  const segment = (selector: number): KvmSegment => ({
    ...sregs.cs, selector, base: BigInt(selector) * 16n, limit: 0xffff, type: 3, present: 1, dpl: 0, db: 0, s: 1, l: 0, g: 0, avl: 0, unusable: 0,
  });
  const next: KvmSregs = {
    ...sregs,
    cs: { ...segment(entry.cs), type: 0xb },
    ds: segment(0), es: segment(0), fs: segment(0), gs: segment(0), ss: segment(0),
    cr0: sregs.cr0 & ~(CR0_PE | CR0_PG),
    efer: 0n,
  };
  const regs = zeroRegs();
  regs.rip = BigInt(entry.ip);
  regs.rsp = BigInt(entry.sp ?? 0);
  return { regs, sregs: next };
}

export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const BOOT_TSS = 0x20;
/** Bytes of guest RAM the GDT takes. */
export const GDT_BYTES = 5 * 8;
/** Bytes of guest RAM the page tables take: PML4, PDPT and four page directories. */
export const PAGE_TABLE_BYTES = 6 * 4096;

const GDT_ENTRIES = [
  0n, // null
  0n, // unused (Linux's __BOOT_CS is entry 2)
  0x00af_9b00_0000_ffffn, // 0x10: 64-bit code, present, DPL 0, G
  0x00cf_9300_0000_ffffn, // 0x18: data, read/write, present, DPL 0, G, D/B
  0x0080_8b00_0000_0067n, // 0x20: 64-bit TSS (busy), base 0, limit 0x67
];

/**
 * Writes a GDT at `gdt` and identity page tables for the low 4 GiB at `pageTables` (page
 * aligned), and returns `sregs` switched to 64-bit long mode with paging on. The IDT is empty:
 * until the guest loads its own, any exception is a triple fault.
 */
export function longModeEntry(memory: GuestMemory, sregs: KvmSregs, layout: { gdt: number; pageTables: number }): KvmSregs {
  const { gdt, pageTables } = layout;
  if (pageTables % 4096 !== 0) throw new RangeError(`long mode: page tables at 0x${pageTables.toString(16)} are not page aligned`);
  GDT_ENTRIES.forEach((d, i) => memory.writeU64(gdt + 8 * i, d));

  const pml4 = pageTables;
  const pdpt = pageTables + 0x1000;
  const pd = pageTables + 0x2000;
  memory.slice(pageTables, PAGE_TABLE_BYTES, true).fill(0);
  const PRESENT_RW = 0x3n;
  const PAGE_2M = 0x80n;
  memory.writeU64(pml4, BigInt(pdpt) | PRESENT_RW);
  for (let g = 0; g < 4; g++) {
    const dir = pd + g * 0x1000;
    memory.writeU64(pdpt + 8 * g, BigInt(dir) | PRESENT_RW);
    for (let i = 0; i < 512; i++) {
      const address = (BigInt(g) << 30n) | (BigInt(i) << 21n);
      memory.writeU64(dir + 8 * i, address | PRESENT_RW | PAGE_2M);
    }
  }

  const flat = { base: 0n, limit: 0xffff_ffff, present: 1, dpl: 0, s: 1, g: 1, avl: 0, unusable: 0 };
  const code: KvmSegment = { ...flat, selector: BOOT_CS, type: 0xb, db: 0, l: 1 };
  const data: KvmSegment = { ...flat, selector: BOOT_DS, type: 0x3, db: 1, l: 0 };
  return {
    ...sregs,
    cs: code, ds: data, es: data, fs: data, gs: data, ss: data,
    tr: { base: 0n, limit: 0x67, selector: BOOT_TSS, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 },
    gdt: { base: BigInt(gdt), limit: GDT_BYTES - 1 },
    idt: { base: 0n, limit: 0 },
    cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG,
    cr3: BigInt(pml4),
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
  };
}
