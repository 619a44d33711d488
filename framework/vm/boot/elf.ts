// ELF64 executables as Linux kernels come (vmlinux, and the payload inside a bzImage): the
// loadable segments at their physical addresses and the entry point, checked against the file
// so a truncated or foreign file is refused with one line instead of loading garbage.

import { BootError } from './boot-error.ts';

export interface ElfSegment {
  /** Guest-physical load address (p_paddr). */
  readonly physAddr: number;
  readonly virtAddr: bigint;
  /** Bytes from the file (p_filesz). */
  readonly data: Uint8Array;
  /** Bytes in memory (p_memsz); past `data` they are zero. */
  readonly memSize: number;
}

export interface ElfKernel {
  readonly segments: readonly ElfSegment[];
  /** Physical address of the entry point (e_entry translated through the segment that holds it). */
  readonly entry: number;
  /** Lowest and end (exclusive) physical address of the loaded image. */
  readonly start: number;
  readonly end: number;
}

const ELF_MAGIC = 0x464c457f; // "\x7fELF" little-endian
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const ET_EXEC = 2;
const EM_X86_64 = 62;
const PT_LOAD = 1;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
const MAX_PHYS = 2 ** 52;

export function isElf(image: Uint8Array): boolean {
  return image.length >= 4 && new DataView(image.buffer, image.byteOffset, 4).getUint32(0, true) === ELF_MAGIC;
}

/** Parses an x86_64 ELF executable; `what` names it in errors. Segments are views into `image`. */
export function parseElfKernel(image: Uint8Array, what = 'kernel'): ElfKernel {
  if (image.length < EHDR_SIZE || !isElf(image)) throw new BootError('ENOEXEC', `${what}: not an ELF file`);
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image[4] !== ELFCLASS64 || image[5] !== ELFDATA2LSB) throw new BootError('ENOEXEC', `${what}: not a 64-bit little-endian ELF`);
  const type = v.getUint16(16, true);
  const machine = v.getUint16(18, true);
  if (machine !== EM_X86_64) throw new BootError('ENOEXEC', `${what}: ELF machine ${machine}, expected x86_64 (${EM_X86_64})`);
  if (type !== ET_EXEC) throw new BootError('ENOEXEC', `${what}: ELF type ${type}, expected an executable (${ET_EXEC})`);
  const entry = v.getBigUint64(24, true);
  const phoff = Number(v.getBigUint64(32, true));
  const phentsize = v.getUint16(54, true);
  const phnum = v.getUint16(56, true);
  if (phentsize !== PHDR_SIZE || phoff + phnum * PHDR_SIZE > image.length) {
    throw new BootError('ENOEXEC', `${what}: program headers lie outside the file (truncated?)`);
  }
  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * PHDR_SIZE;
    if (v.getUint32(at, true) !== PT_LOAD) continue;
    const offset = Number(v.getBigUint64(at + 8, true));
    const virtAddr = v.getBigUint64(at + 16, true);
    const physAddr = Number(v.getBigUint64(at + 24, true));
    const fileSize = Number(v.getBigUint64(at + 32, true));
    const memSize = Number(v.getBigUint64(at + 40, true));
    const where = `${what}: segment ${i}`;
    if (fileSize > memSize) throw new BootError('ENOEXEC', `${where}: file size ${fileSize} exceeds memory size ${memSize}`);
    if (offset + fileSize > image.length) throw new BootError('ENOEXEC', `${where}: data at ${offset}+${fileSize} lies outside the ${image.length}-byte file (truncated?)`);
    if (physAddr + memSize > MAX_PHYS) throw new BootError('ENOEXEC', `${where}: physical address 0x${physAddr.toString(16)} is not loadable`);
    if (memSize === 0) continue;
    segments.push({ physAddr, virtAddr, data: image.subarray(offset, offset + fileSize), memSize });
  }
  if (segments.length === 0) throw new BootError('ENOEXEC', `${what}: no loadable segments`);
  const holder = segments.find((s) => entry >= s.virtAddr && entry < s.virtAddr + BigInt(s.memSize));
  let entryPhys: number;
  if (holder) entryPhys = holder.physAddr + Number(entry - holder.virtAddr);
  else if (segments.some((s) => Number(entry) >= s.physAddr && Number(entry) < s.physAddr + s.memSize)) entryPhys = Number(entry);
  else throw new BootError('ENOEXEC', `${what}: entry point 0x${entry.toString(16)} is in no loadable segment`);
  const start = Math.min(...segments.map((s) => s.physAddr));
  const end = Math.max(...segments.map((s) => s.physAddr + s.memSize));
  return { segments, entry: entryPhys, start, end };
}
