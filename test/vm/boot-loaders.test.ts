// The x86 Linux loaders without a hypervisor: boot_params offsets as gcc lays out the UAPI
// struct, the e820 map, the MP table, command-line composition, ELF and bzImage parsing
// (every payload compression named, truncations refused), and the loader's placement of kernel,
// initramfs, command line and registers in guest memory.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { KvmRegs, KvmSregs } from '../../native/kvm.ts';
import { GuestMemory } from '../../framework/guest-memory.ts';
import { BootError } from '../../framework/vm/boot/boot-error.ts';
import { BP, buildBootParams, buildE820, E820_RAM, E820_RESERVED } from '../../framework/vm/boot/boot-params.ts';
import { bzImageKernel, parseSetupHeader } from '../../framework/vm/boot/bzimage.ts';
import { composeCmdline } from '../../framework/vm/boot/cmdline.ts';
import { parseElfKernel } from '../../framework/vm/boot/elf.ts';
import { buildMpTable, mpTableSize } from '../../framework/vm/boot/mptable.ts';
import { loadX86Linux, parseX86Kernel } from '../../framework/vm/boot/x86-linux.ts';
import {
  CMDLINE_ADDRESS, HIGH_MEMORY_START, LOW_MEMORY_END, MPTABLE_ADDRESS, ZERO_PAGE_ADDRESS, x86RamRegions,
} from '../../framework/vm/boot/x86-layout.ts';
import { BOOT_CS, BOOT_DS } from '../../framework/vm/x86/entry-state.ts';

const MIB = 1 << 20;

function bootError(fn: () => unknown, code: string, message: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, BootError, String(e));
    assert.is((e as BootError).code, code, (e as Error).message);
    assert.match((e as Error).message, message);
    assert.not.match((e as Error).message, /\n/, 'one line');
    return;
  }
  assert.unreachable('no BootError');
}

// ---- a synthetic ELF kernel -------------------------------------------------------------------

interface Seg { vaddr: bigint; paddr: number; data: Uint8Array; memsz?: number }

/** An ELF64 x86_64 executable with these PT_LOAD segments (data laid out after the headers). */
function makeElf(segments: Seg[], entry: bigint, patch?: (v: DataView) => void): Uint8Array {
  const phoff = 64;
  let dataAt = phoff + 56 * segments.length;
  const size = dataAt + segments.reduce((n, s) => n + s.data.length, 0);
  const bytes = new Uint8Array(size);
  const v = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true);
  v.setBigUint64(24, entry, true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, segments.length, true);
  segments.forEach((s, i) => {
    const at = phoff + 56 * i;
    v.setUint32(at, 1, true); // PT_LOAD
    v.setUint32(at + 4, 7, true);
    v.setBigUint64(at + 8, BigInt(dataAt), true);
    v.setBigUint64(at + 16, s.vaddr, true);
    v.setBigUint64(at + 24, BigInt(s.paddr), true);
    v.setBigUint64(at + 32, BigInt(s.data.length), true);
    v.setBigUint64(at + 40, BigInt(s.memsz ?? s.data.length), true);
    bytes.set(s.data, dataAt);
    dataAt += s.data.length;
  });
  patch?.(v);
  return bytes;
}

const KERNEL_VIRT = 0xffffffff81000000n;
const text = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7) & 0xff);
const data = Uint8Array.from({ length: 1000 }, (_, i) => 0x80 | (i & 0x7f));
const kernelElf = () => makeElf([
  { vaddr: KERNEL_VIRT, paddr: 0x100_0000, data: text },
  { vaddr: KERNEL_VIRT + 0x20_0000n, paddr: 0x120_0000, data, memsz: 0x3000 },
], 0x100_0000n);

/** A bzImage around `payload`: boot sector, setup header (protocol `version`), 4 setup sectors. */
function makeBzImage(payload: Uint8Array, version = 0x020f): Uint8Array {
  const setupSects = 4;
  const start = (setupSects + 1) * 512;
  const image = new Uint8Array(start + payload.length + 64);
  const v = new DataView(image.buffer);
  image[0x1f1] = setupSects;
  v.setUint16(0x1fe, 0xaa55, true);
  image[0x200] = 0xeb;
  image[0x201] = 0x6a; // header ends at 0x26c
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, version, true);
  v.setUint32(0x22c, 0x7fffffff, true); // initrd_addr_max
  v.setUint32(0x230, 0x200000, true);
  v.setUint32(0x238, 2047, true); // cmdline_size
  v.setUint32(0x248, 32, true); // payload_offset, from the protected-mode code
  v.setUint32(0x24c, payload.length, true);
  image.set(payload, start + 32);
  return image;
}

// ---- boot_params ------------------------------------------------------------------------------

const bootparamHeader = '/usr/include/x86_64-linux-gnu/asm/bootparam.h';
const gccAvailable = (() => {
  try {
    execFileSync('gcc', ['--version'], { stdio: 'ignore' });
    return existsSync(bootparamHeader);
  } catch {
    return false;
  }
})();
if (!gccAvailable) console.log('SKIP (boot_params layout): gcc or asm/bootparam.h missing');

(gccAvailable ? test : test.skip)('boot_params field offsets are those gcc computes from the UAPI header', () => {
  const fields: [keyof typeof BP, string][] = [
    ['extRamdiskImage', 'ext_ramdisk_image'], ['extRamdiskSize', 'ext_ramdisk_size'], ['extCmdLinePtr', 'ext_cmd_line_ptr'],
    ['e820Entries', 'e820_entries'], ['setupHeader', 'hdr'], ['setupSects', 'hdr.setup_sects'], ['bootFlag', 'hdr.boot_flag'],
    ['jump', 'hdr.jump'], ['header', 'hdr.header'], ['version', 'hdr.version'], ['typeOfLoader', 'hdr.type_of_loader'],
    ['loadflags', 'hdr.loadflags'], ['ramdiskImage', 'hdr.ramdisk_image'], ['ramdiskSize', 'hdr.ramdisk_size'],
    ['heapEndPtr', 'hdr.heap_end_ptr'], ['cmdLinePtr', 'hdr.cmd_line_ptr'], ['initrdAddrMax', 'hdr.initrd_addr_max'],
    ['kernelAlignment', 'hdr.kernel_alignment'], ['cmdlineSize', 'hdr.cmdline_size'], ['e820Table', 'e820_table'],
  ];
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-bootparam-'));
  try {
    const src = join(dir, 'probe.c');
    writeFileSync(src, [
      '#include <stdio.h>', '#include <stddef.h>', '#include <asm/bootparam.h>',
      'int main(void) {',
      ...fields.map(([, c]) => `  printf("%zu\\n", offsetof(struct boot_params, ${c}));`),
      '  printf("%zu %zu\\n", sizeof(struct boot_params), sizeof(struct boot_e820_entry));',
      '  return 0;', '}',
    ].join('\n'));
    execFileSync('gcc', ['-o', join(dir, 'probe'), src]);
    const lines = execFileSync(join(dir, 'probe'), { encoding: 'utf8' }).trim().split('\n');
    fields.forEach(([js, c], i) => assert.is(BP[js], Number(lines[i]), `${c}`));
    assert.is(lines[fields.length], '4096 20');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('boot_params for an ELF kernel: a minimal header, loader fields, initramfs and e820', () => {
  const e820 = [{ addr: 0, size: 0x9fc00, type: E820_RAM }, { addr: 0x10_0000, size: 255 * MIB, type: E820_RAM }];
  const zp = buildBootParams({ cmdline: { address: CMDLINE_ADDRESS, size: 30 }, initrd: { address: 0x5_0000_0000, size: 0x1234 }, e820 });
  const v = new DataView(zp.buffer);
  assert.is(zp.length, 4096);
  assert.is(v.getUint16(BP.bootFlag, true), 0xaa55);
  assert.is(v.getUint32(BP.header, true), 0x53726448);
  assert.is(zp[BP.typeOfLoader], 0xff);
  assert.is(zp[BP.loadflags]! & 0x01, 1, 'LOADED_HIGH');
  assert.is(v.getUint32(BP.cmdLinePtr, true), CMDLINE_ADDRESS);
  assert.is(v.getUint32(BP.extCmdLinePtr, true), 0);
  // An initramfs above 4 GiB is split into ramdisk_image and ext_ramdisk_image.
  assert.is(v.getUint32(BP.ramdiskImage, true), 0);
  assert.is(v.getUint32(BP.extRamdiskImage, true), 5);
  assert.is(v.getUint32(BP.ramdiskSize, true), 0x1234);
  assert.is(zp[BP.e820Entries], 2);
  assert.is(v.getBigUint64(BP.e820Table + 20, true), 0x10_0000n);
  assert.is(v.getBigUint64(BP.e820Table + 28, true), BigInt(255 * MIB));
  assert.is(v.getUint32(BP.e820Table + 36, true), E820_RAM);
});

test('boot_params for a bzImage keep its setup header and overwrite only the loader fields', () => {
  const bz = makeBzImage(kernelElf());
  const header = parseSetupHeader(bz);
  assert.is(header.bytes.length, 0x26c - 0x1f1);
  const zp = buildBootParams({ setupHeader: header.bytes, cmdline: { address: CMDLINE_ADDRESS, size: 5 }, e820: [] });
  const v = new DataView(zp.buffer);
  assert.is(v.getUint16(BP.version, true), 0x020f);
  assert.is(v.getUint32(BP.kernelAlignment, true), 0x200000, 'copied from the image');
  assert.is(v.getUint32(BP.cmdlineSize, true), 2047);
  assert.is(zp[BP.typeOfLoader], 0xff);
  assert.is(v.getUint32(BP.cmdLinePtr, true), CMDLINE_ADDRESS);
});

test('e820: conventional RAM up to the MP table, the table reserved, RAM from 1 MiB, and above 4 GiB past the hole', () => {
  const layout = { reservedStart: MPTABLE_ADDRESS, lowEnd: LOW_MEMORY_END, highStart: HIGH_MEMORY_START };
  assert.equal(buildE820(x86RamRegions(256 * MIB), layout), [
    { addr: 0, size: MPTABLE_ADDRESS, type: E820_RAM },
    { addr: MPTABLE_ADDRESS, size: LOW_MEMORY_END - MPTABLE_ADDRESS, type: E820_RESERVED },
    { addr: HIGH_MEMORY_START, size: 256 * MIB - HIGH_MEMORY_START, type: E820_RAM },
  ]);
  const big = buildE820(x86RamRegions(5 * 1024 * MIB), layout);
  assert.equal(big.slice(2), [
    { addr: HIGH_MEMORY_START, size: 3 * 1024 * MIB - HIGH_MEMORY_START, type: E820_RAM },
    { addr: 4 * 1024 * MIB, size: 2 * 1024 * MIB, type: E820_RAM },
  ]);
});

// ---- MP table ---------------------------------------------------------------------------------

test('MP table: checksummed floating pointer and table, one processor entry per vCPU, the BSP first', () => {
  for (const cpus of [1, 4]) {
    const t = buildMpTable(MPTABLE_ADDRESS, cpus);
    assert.is(t.length, mpTableSize(cpus));
    const v = new DataView(t.buffer);
    const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);
    assert.is(Buffer.from(t.subarray(0, 4)).toString(), '_MP_');
    assert.is(v.getUint32(4, true), MPTABLE_ADDRESS + 16, 'points at the table right after it');
    assert.is(sum(t.subarray(0, 16)), 0);
    const table = t.subarray(16);
    assert.is(Buffer.from(table.subarray(0, 4)).toString(), 'PCMP');
    assert.is(v.getUint16(16 + 4, true), table.length);
    assert.is(sum(table), 0);
    const processors = [...Array(cpus).keys()].map((i) => table.subarray(44 + 20 * i, 64 + 20 * i));
    assert.equal(processors.map((p) => [p[0], p[1], p[3]]), processors.map((_, i) => [0, i, i === 0 ? 3 : 1]));
    const ioapic = table.subarray(44 + 20 * cpus + 8, 44 + 20 * cpus + 16);
    assert.equal([ioapic[0], ioapic[1]], [2, cpus], 'the IOAPIC takes the id after the CPUs');
  }
  bootError(() => buildMpTable(MPTABLE_ADDRESS, 0), 'EINVAL', /CPUs/);
});

// ---- command line -----------------------------------------------------------------------------

test('command line: platform words, one entry per device, work-arounds, then the user last; limits enforced', () => {
  const line = composeCmdline({
    platform: ['console=ttyS0'],
    devices: ['virtio_mmio.device=512@0xd0000000:5', 'virtio_mmio.device=512@0xd0001000:6'],
    quirks: ['noxsave'],
    user: '  console=hvc0 rxvirt.script=shell ',
  });
  assert.is(line, 'console=ttyS0 virtio_mmio.device=512@0xd0000000:5 virtio_mmio.device=512@0xd0001000:6 noxsave console=hvc0 rxvirt.script=shell');
  assert.is(composeCmdline({ user: '' }), '');
  bootError(() => composeCmdline({ user: 'x'.repeat(100) }, 99), 'E2BIG', /100 bytes.*at most 99/);
  bootError(() => composeCmdline({ user: 'a\0b' }), 'EINVAL', /NUL/);
});

// ---- ELF and bzImage --------------------------------------------------------------------------

test('ELF: segments at their physical addresses, a virtual entry translated through its segment', () => {
  const elf = parseElfKernel(makeElf([{ vaddr: KERNEL_VIRT, paddr: 0x100_0000, data: text }], KERNEL_VIRT + 0x40n));
  assert.is(elf.entry, 0x100_0040);
  const k = parseElfKernel(kernelElf());
  assert.equal(k.segments.map((s) => [s.physAddr, s.data.length, s.memSize]), [[0x100_0000, 4096, 4096], [0x120_0000, 1000, 0x3000]]);
  assert.is(k.entry, 0x100_0000, 'a physical entry (vmlinux: phys_startup_64)');
  assert.equal([k.start, k.end], [0x100_0000, 0x120_3000]);
});

test('ELF: foreign, truncated or inconsistent files are refused with one line', () => {
  const good = kernelElf();
  bootError(() => parseElfKernel(Buffer.from('#!/bin/sh\necho not a kernel\n'.padEnd(100))), 'ENOEXEC', /not an ELF/);
  bootError(() => parseElfKernel(makeElf([{ vaddr: 0n, paddr: 0x100_0000, data: text }], 0x100_0000n, (v) => v.setUint8(4, 1))), 'ENOEXEC', /64-bit/);
  bootError(() => parseElfKernel(makeElf([{ vaddr: 0n, paddr: 0x100_0000, data: text }], 0x100_0000n, (v) => v.setUint16(18, 183, true))), 'ENOEXEC', /machine 183/);
  bootError(() => parseElfKernel(good.subarray(0, good.length - 10)), 'ENOEXEC', /outside the .*file \(truncated\?\)/);
  bootError(() => parseElfKernel(makeElf([{ vaddr: 0n, paddr: 0x100_0000, data: text }], 0x900_0000n)), 'ENOEXEC', /entry point 0x9000000 is in no loadable segment/);
  bootError(() => parseElfKernel(makeElf([{ vaddr: 0n, paddr: 0x100_0000, data: text, memsz: 10 }], 0x100_0000n)), 'ENOEXEC', /file size 4096 exceeds memory size 10/);
});

test('bzImage: gzip, xz and uncompressed payloads give the kernel ELF; others are named in the error', () => {
  const elf = kernelElf();
  const gz = parseX86Kernel(makeBzImage(gzipSync(elf)));
  assert.is(gz.format, 'bzImage');
  assert.is(gz.compression, 'gzip');
  assert.is(gz.elf.entry, 0x100_0000);
  assert.is(gz.cmdlineLimit, 2047);
  assert.is(parseX86Kernel(makeBzImage(elf)).compression, 'none');
  try {
    const xz = execFileSync('xz', ['-z', '-c', '--check=crc32', '--x86', '--lzma2'], { input: elf });
    const size = Buffer.alloc(4);
    size.writeUInt32LE(elf.length);
    const k = parseX86Kernel(makeBzImage(Buffer.concat([xz, size])));
    assert.is(k.compression, 'xz');
    assert.ok(Buffer.from(k.elf.segments[1]!.data).equals(Buffer.from(data)));
    size.writeUInt32LE(elf.length + 1);
    bootError(() => parseX86Kernel(makeBzImage(Buffer.concat([xz, size]))), 'EINVAL', /decompressed to \d+ bytes, its trailer says/);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // no xz on this host
  }
  for (const [name, magic] of [['zstd', [0x28, 0xb5, 0x2f, 0xfd]], ['lzma', [0x5d, 0, 0]], ['bzip2', [0x42, 0x5a, 0x68]], ['lz4', [0x02, 0x21, 0x4c, 0x18]]] as const) {
    const image = makeBzImage(Uint8Array.from([...magic, 1, 2, 3, 4, 5, 6, 7, 8]));
    bootError(() => bzImageKernel(image, parseSetupHeader(image)), 'ENOTSUP', new RegExp(`compressed with ${name}; rxvirt decompresses gzip and xz`));
  }
  bootError(() => parseX86Kernel(makeBzImage(gzipSync(elf), 0x0206)), 'ENOTSUP', /boot protocol 2\.06 is older than 2\.08/);
  const corrupt = gzipSync(elf);
  corrupt[corrupt.length - 6] ^= 0xff;
  bootError(() => parseX86Kernel(makeBzImage(corrupt)), 'EINVAL', /gzip payload is corrupt/);
  const truncated = makeBzImage(gzipSync(elf));
  bootError(() => parseX86Kernel(truncated.subarray(0, 3000)), 'ENOEXEC', /payload at .* lies outside/);
  bootError(() => parseX86Kernel(new Uint8Array(4096)), 'ENOEXEC', /neither an ELF kernel \(vmlinux\) nor a bzImage/);
});

// ---- the loader -------------------------------------------------------------------------------

class RecordingVcpu {
  sregs: KvmSregs | null = null;
  regs: KvmRegs | null = null;
  getSregs(): KvmSregs {
    const seg = { base: 0n, limit: 0xffff, selector: 0, type: 3, present: 1, dpl: 0, db: 0, s: 1, l: 0, g: 0, avl: 0, unusable: 0 };
    return {
      cs: seg, ds: seg, es: seg, fs: seg, gs: seg, ss: seg, tr: seg, ldt: seg,
      gdt: { base: 0n, limit: 0xffff }, idt: { base: 0n, limit: 0xffff },
      cr0: 0x60000010n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n, apicBase: 0xfee00900n, interruptBitmap: [0n, 0n, 0n, 0n],
    };
  }
  setSregs(s: KvmSregs): void { this.sregs = s; }
  setRegs(r: KvmRegs): void { this.regs = r; }
}

test('loader: kernel at its physical addresses with bss zeroed, initramfs at the top, command line and zero page wired, long-mode entry', () => {
  const memory = GuestMemory.allocate(64 * MIB);
  memory.slice(0x120_0000, 0x3000, true).fill(0xee); // stale bytes where the bss goes
  const initrd = Uint8Array.from({ length: 10_000 }, (_, i) => i & 0xff);
  const vcpu = new RecordingVcpu();
  const kernel = parseX86Kernel(kernelElf());
  const layout = loadX86Linux(memory, vcpu, { kernel, initrd, cmdline: 'console=ttyS0 hello', cpus: 2 });
  assert.ok(Buffer.from(memory.slice(0x100_0000, 4096)).equals(Buffer.from(text)));
  assert.ok(Buffer.from(memory.slice(0x120_0000, 1000)).equals(Buffer.from(data)));
  assert.ok(memory.slice(0x120_0000 + 1000, 0x3000 - 1000).every((b) => b === 0), 'bss zeroed');
  assert.equal(layout.initrd, { address: 64 * MIB - 12 * 1024, size: 10_000 }, 'page-aligned, as high as RAM allows');
  assert.ok(Buffer.from(memory.slice(layout.initrd!.address, initrd.length)).equals(Buffer.from(initrd)));
  assert.is(Buffer.from(memory.slice(CMDLINE_ADDRESS, 20)).toString(), 'console=ttyS0 hello\0');
  assert.is(memory.readU32(ZERO_PAGE_ADDRESS + BP.cmdLinePtr), CMDLINE_ADDRESS);
  assert.is(memory.readU32(ZERO_PAGE_ADDRESS + BP.ramdiskImage), layout.initrd!.address);
  assert.is(memory.readU32(ZERO_PAGE_ADDRESS + BP.ramdiskSize), initrd.length);
  assert.is(memory.readU8(ZERO_PAGE_ADDRESS + BP.e820Entries), 3);
  assert.is(Buffer.from(memory.slice(MPTABLE_ADDRESS, 4)).toString(), '_MP_');
  const regs = vcpu.regs!;
  assert.equal([regs.rip, regs.rsi, regs.rflags], [0x100_0000n, BigInt(ZERO_PAGE_ADDRESS), 2n]);
  const sregs = vcpu.sregs!;
  assert.equal([sregs.cs.selector, sregs.cs.l, sregs.ds.selector, sregs.ss.selector], [BOOT_CS, 1, BOOT_DS, BOOT_DS]);
  assert.is(sregs.efer & 0x500n, 0x500n, 'long mode active');
  assert.is(sregs.cr0 & 0x8000_0001n, 0x8000_0001n, 'paging and protection on');
});

test('loader: a kernel or initramfs that does not fit is ENOMEM, naming sizes', () => {
  const kernel = parseX86Kernel(kernelElf());
  bootError(() => loadX86Linux(GuestMemory.allocate(16 * MIB), new RecordingVcpu(), { kernel, cmdline: '', cpus: 1 }), 'ENOMEM', /RAM up to 0x1203000.*16 MiB/);
  bootError(() => loadX86Linux(GuestMemory.allocate(20 * MIB), new RecordingVcpu(), { kernel, initrd: new Uint8Array(3 * MIB), cmdline: '', cpus: 1 }),
    'ENOMEM', /initramfs of 3 MiB does not fit/);
  const low = parseX86Kernel(makeElf([{ vaddr: 0n, paddr: 0x8000, data: text }], 0x8000n));
  bootError(() => loadX86Linux(GuestMemory.allocate(16 * MIB), new RecordingVcpu(), { kernel: low, cmdline: '', cpus: 1 }), 'ENOEXEC', /below 1 MiB/);
});

test.run();
