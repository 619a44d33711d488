// Loads an x86_64 Linux kernel into a VM per the 64-bit boot protocol: the kernel ELF (a
// vmlinux, or the payload of a bzImage decompressed on the host) at its physical addresses,
// the initramfs as high as the kernel allows below 4 GiB, the command line, boot_params with
// the e820 map, an MP table for the vCPUs, and the boot vCPU in long mode (GDT with __BOOT_CS /
// __BOOT_DS, the low 4 GiB identity-mapped) at the kernel's 64-bit entry with rsi = boot_params.
// Other vCPUs stay in their reset state until the guest wakes them with INIT/SIPI.

import type { KvmRegs, KvmSregs } from '../../../native/kvm.ts';
import type { GuestMemory } from '../../guest-memory.ts';
import { BOOT_CS } from '../x86/entry-state.ts';
import { longModeEntry, zeroRegs } from '../x86/entry-state.ts';
import { BootError } from './boot-error.ts';
import { buildBootParams, buildE820, type E820Entry } from './boot-params.ts';
import { bzImageKernel, isBzImage, parseSetupHeader, type PayloadCompression, type SetupHeader } from './bzimage.ts';
import { DEFAULT_CMDLINE_LIMIT } from './cmdline.ts';
import { isElf, parseElfKernel, type ElfKernel } from './elf.ts';
import { buildMpTable } from './mptable.ts';
import {
  BOOT_STACK_POINTER, CMDLINE_ADDRESS, CMDLINE_MAX_BYTES, GDT_ADDRESS, HIGH_MEMORY_START, LOW_MEMORY_END, MPTABLE_ADDRESS,
  MPTABLE_MAX_BYTES, PAGE_SIZE, PAGE_TABLES_ADDRESS, ZERO_PAGE_ADDRESS,
} from './x86-layout.ts';

/** A kernel file parsed (and decompressed) before any VM exists, so a bad file costs nothing. */
export interface X86Kernel {
  readonly format: 'elf' | 'bzImage';
  /** How a bzImage's payload was compressed ('none' for ELF files). */
  readonly compression: PayloadCompression;
  readonly elf: ElfKernel;
  readonly setupHeader: SetupHeader | null;
  /** Longest command line the kernel accepts (bytes, without the NUL). */
  readonly cmdlineLimit: number;
}

/** Parses a vmlinux ELF or a bzImage; `what` names the file in errors. */
export function parseX86Kernel(image: Uint8Array, what = 'kernel'): X86Kernel {
  if (isElf(image)) {
    return { format: 'elf', compression: 'none', elf: parseElfKernel(image, what), setupHeader: null, cmdlineLimit: DEFAULT_CMDLINE_LIMIT };
  }
  if (isBzImage(image)) {
    const header = parseSetupHeader(image, what);
    const payload = bzImageKernel(image, header, what);
    const elf = parseElfKernel(payload, `${what} (decompressed payload)`);
    return { format: 'bzImage', compression: header.payload.compression, elf, setupHeader: header, cmdlineLimit: header.cmdlineSize };
  }
  throw new BootError('ENOEXEC', `${what}: neither an ELF kernel (vmlinux) nor a bzImage`);
}

/** The register access the loader needs from the boot vCPU (KvmVcpu has it). */
export interface X86BootVcpu {
  getSregs(): KvmSregs;
  setSregs(sregs: KvmSregs): void;
  setRegs(regs: KvmRegs): void;
}

export interface X86LinuxSpec {
  readonly kernel: X86Kernel;
  readonly initrd?: Uint8Array;
  /** The complete command line (see composeCmdline). */
  readonly cmdline: string;
  readonly cpus: number;
}

export interface X86LinuxLayout {
  readonly entry: number;
  readonly kernel: { readonly start: number; readonly end: number };
  readonly initrd: { readonly address: number; readonly size: number } | null;
  readonly bootParams: number;
  readonly cmdline: number;
  readonly e820: readonly E820Entry[];
}

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;
const alignDown = (n: number, a: number) => Math.floor(n / a) * a;
const hex = (n: number) => `0x${n.toString(16)}`;

/**
 * Writes everything into `memory` (whose regions are the guest's RAM) and points `bsp` at the
 * kernel. Throws BootError ENOMEM when something does not fit.
 */
export function loadX86Linux(memory: GuestMemory, bsp: X86BootVcpu, spec: X86LinuxSpec): X86LinuxLayout {
  const { elf, setupHeader } = spec.kernel;
  const low = memory.regions.find((r) => r.base === 0);
  if (!low) throw new BootError('EINVAL', 'x86 guest RAM must start at address 0');
  const lowEnd = low.base + low.size;
  if (elf.start < HIGH_MEMORY_START) throw new BootError('ENOEXEC', `kernel loads at ${hex(elf.start)}, below 1 MiB where the boot structures live`);
  if (elf.end > lowEnd) {
    throw new BootError('ENOMEM', `kernel needs RAM up to ${hex(elf.end)} (${mib(elf.end)}); the guest has ${mib(lowEnd)} below 4 GiB`);
  }
  for (const s of elf.segments) {
    memory.write(s.physAddr, s.data);
    if (s.memSize > s.data.length) memory.slice(s.physAddr + s.data.length, s.memSize - s.data.length, true).fill(0);
  }

  let initrd: X86LinuxLayout['initrd'] = null;
  if (spec.initrd && spec.initrd.length > 0) {
    const maxEnd = Math.min(lowEnd, (setupHeader?.initrdAddrMax ?? 0xffff_ffff) + 1);
    const address = alignDown(maxEnd - spec.initrd.length, PAGE_SIZE);
    const floor = alignUp(elf.end, PAGE_SIZE);
    if (address < floor) {
      throw new BootError('ENOMEM', `initramfs of ${mib(spec.initrd.length)} does not fit between the kernel (ends at ${hex(elf.end)}) and ${hex(maxEnd)}: give the guest more memory`);
    }
    memory.write(address, spec.initrd);
    initrd = { address, size: spec.initrd.length };
  }

  const cmdline = Buffer.from(`${spec.cmdline}\0`);
  if (cmdline.length - 1 > Math.min(spec.kernel.cmdlineLimit, CMDLINE_MAX_BYTES - 1)) {
    throw new BootError('E2BIG', `kernel command line is ${cmdline.length - 1} bytes, the kernel takes at most ${spec.kernel.cmdlineLimit}`);
  }
  memory.write(CMDLINE_ADDRESS, cmdline);

  const mpTable = buildMpTable(MPTABLE_ADDRESS, spec.cpus);
  if (mpTable.length > MPTABLE_MAX_BYTES) throw new BootError('E2BIG', `MP table for ${spec.cpus} CPUs does not fit below 640 KiB`);
  memory.write(MPTABLE_ADDRESS, mpTable);

  const e820 = buildE820(memory.regions.map((r) => ({ base: r.base, size: r.size })), {
    reservedStart: MPTABLE_ADDRESS, lowEnd: LOW_MEMORY_END, highStart: HIGH_MEMORY_START,
  });
  const bootParams = buildBootParams({
    setupHeader: setupHeader?.bytes,
    cmdline: { address: CMDLINE_ADDRESS, size: cmdline.length },
    ...(initrd ? { initrd } : {}),
    e820,
  });
  memory.write(ZERO_PAGE_ADDRESS, bootParams);

  const sregs = longModeEntry(memory, bsp.getSregs(), { gdt: GDT_ADDRESS, pageTables: PAGE_TABLES_ADDRESS });
  if (sregs.cs.selector !== BOOT_CS) throw new BootError('EINVAL', 'long-mode entry state without __BOOT_CS');
  bsp.setSregs(sregs);
  const regs = zeroRegs();
  regs.rip = BigInt(elf.entry);
  regs.rsi = BigInt(ZERO_PAGE_ADDRESS);
  regs.rsp = BigInt(BOOT_STACK_POINTER);
  bsp.setRegs(regs);
  return { entry: elf.entry, kernel: { start: elf.start, end: elf.end }, initrd, bootParams: ZERO_PAGE_ADDRESS, cmdline: CMDLINE_ADDRESS, e820 };
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(bytes % 2 ** 20 === 0 ? 0 : 1)} MiB`;
}
