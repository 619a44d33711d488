// struct boot_params (the x86 "zero page", Documentation/arch/x86/zero-page.rst and boot.rst)
// as the 64-bit boot protocol needs it: the setup header (the bzImage's own, or a minimal one
// for an ELF kernel) with the loader's fields filled in (type_of_loader, command line pointer,
// initramfs address and size), and the e820 memory map. Offsets are the UAPI's
// (arch/x86/include/uapi/asm/bootparam.h).

import { BootError } from './boot-error.ts';

export const BOOT_PARAMS_SIZE = 4096;
/** Entries the zero page holds (E820_MAX_ENTRIES_ZEROPAGE). */
export const E820_MAX_ENTRIES = 128;

export const E820_RAM = 1;
export const E820_RESERVED = 2;

/** Field offsets in struct boot_params. */
export const BP = Object.freeze({
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  setupHeader: 0x1f1,
  setupSects: 0x1f1,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  cmdlineSize: 0x238,
  e820Table: 0x2d0,
});

export const E820_ENTRY_SIZE = 20;
const HDRS = 0x53726448;
const BOOT_FLAG = 0xaa55;
/** "Undefined" boot loader id: no registered id needed. */
const LOADER_UNDEFINED = 0xff;
const LOADED_HIGH = 0x01;
const KEEP_SEGMENTS = 0x40;
const CAN_USE_HEAP = 0x80;
/** Protocol version claimed in a synthesized header (2.15, Linux 5.5+). */
const SYNTH_VERSION = 0x020f;
const KERNEL_ALIGNMENT = 0x100_0000;

export interface E820Entry {
  readonly addr: number;
  readonly size: number;
  readonly type: number;
}

export interface BootParamsSpec {
  /** The bzImage setup header (copied as is, then the loader fields), or undefined for an ELF kernel. */
  readonly setupHeader?: Uint8Array;
  readonly cmdline: { readonly address: number; readonly size: number };
  readonly initrd?: { readonly address: number; readonly size: number };
  readonly e820: readonly E820Entry[];
}

/** The 4 KiB zero page. */
export function buildBootParams(spec: BootParamsSpec): Uint8Array {
  const bytes = new Uint8Array(BOOT_PARAMS_SIZE);
  const v = new DataView(bytes.buffer);
  if (spec.setupHeader) {
    if (spec.setupHeader.length > 0x290 - BP.setupHeader) throw new BootError('EINVAL', 'setup header is longer than boot_params has room for');
    bytes.set(spec.setupHeader, BP.setupHeader);
  } else {
    v.setUint16(BP.bootFlag, BOOT_FLAG, true);
    v.setUint32(BP.header, HDRS, true);
    v.setUint16(BP.version, SYNTH_VERSION, true);
    v.setUint32(BP.kernelAlignment, KERNEL_ALIGNMENT, true);
  }
  bytes[BP.typeOfLoader] = LOADER_UNDEFINED;
  bytes[BP.loadflags] = (bytes[BP.loadflags]! | LOADED_HIGH | CAN_USE_HEAP) & ~KEEP_SEGMENTS;
  v.setUint16(BP.heapEndPtr, 0xfe00, true);
  setSplit(v, BP.cmdLinePtr, BP.extCmdLinePtr, spec.cmdline.address);
  if (spec.initrd) {
    setSplit(v, BP.ramdiskImage, BP.extRamdiskImage, spec.initrd.address);
    setSplit(v, BP.ramdiskSize, BP.extRamdiskSize, spec.initrd.size);
  }
  if (spec.e820.length > E820_MAX_ENTRIES) throw new BootError('E2BIG', `e820: ${spec.e820.length} entries, the zero page holds ${E820_MAX_ENTRIES}`);
  bytes[BP.e820Entries] = spec.e820.length;
  spec.e820.forEach((e, i) => {
    const at = BP.e820Table + i * E820_ENTRY_SIZE;
    setU64(v, at, e.addr);
    setU64(v, at + 8, e.size);
    v.setUint32(at + 16, e.type, true);
  });
  return bytes;
}

/** A 64-bit value split into the low word at `low` and the high word at `high` (ext_ fields). */
function setSplit(v: DataView, low: number, high: number, value: number): void {
  v.setUint32(low, value % 2 ** 32, true);
  v.setUint32(high, Math.floor(value / 2 ** 32), true);
}

function setU64(v: DataView, at: number, value: number): void {
  v.setUint32(at, value % 2 ** 32, true);
  v.setUint32(at + 4, Math.floor(value / 2 ** 32), true);
}

/**
 * The e820 map for RAM `regions`: RAM below `reservedStart` (the MP table), that reservation
 * up to 640 KiB, then each region's RAM above 1 MiB. The legacy hole (640 KiB..1 MiB) is left
 * out, as on PCs.
 */
export function buildE820(regions: readonly { base: number; size: number }[], layout: { reservedStart: number; lowEnd: number; highStart: number }): E820Entry[] {
  const entries: E820Entry[] = [];
  for (const r of [...regions].sort((a, b) => a.base - b.base)) {
    const end = r.base + r.size;
    if (r.base < layout.highStart) {
      const lowRamEnd = Math.min(end, layout.reservedStart);
      if (lowRamEnd > r.base) entries.push({ addr: r.base, size: lowRamEnd - r.base, type: E820_RAM });
      const reservedEnd = Math.min(end, layout.lowEnd);
      if (reservedEnd > layout.reservedStart) entries.push({ addr: layout.reservedStart, size: reservedEnd - layout.reservedStart, type: E820_RESERVED });
      if (end > layout.highStart) entries.push({ addr: layout.highStart, size: end - layout.highStart, type: E820_RAM });
    } else {
      entries.push({ addr: r.base, size: r.size, type: E820_RAM });
    }
  }
  return entries;
}
