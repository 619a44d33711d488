// Stand-in x86_64 "kernels" for boot tests: 64-bit assembly linked as an ELF at 16 MiB (where
// vmlinux loads), and the same ELF wrapped in a minimal bzImage with a gzip payload. Built at
// test time with the system toolchain (GNU as and ld).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

/** Assembles `source` (AT&T syntax, entry `_start`) into an ELF executable linked at 0x1000000. */
export function assembleKernel(source: string): Uint8Array {
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-kernel-'));
  try {
    writeFileSync(join(dir, 'k.s'), `.code64\n.globl _start\n_start:\n${source}\n`);
    execFileSync('as', ['--64', '-o', join(dir, 'k.o'), join(dir, 'k.s')], { stdio: 'pipe' });
    execFileSync('ld', ['-m', 'elf_x86_64', '-N', '-Ttext', '0x1000000', '-e', '_start', '-o', join(dir, 'k.elf'), join(dir, 'k.o')], { stdio: 'pipe' });
    return new Uint8Array(readFileSync(join(dir, 'k.elf')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `elf` as a bzImage (boot protocol 2.15) whose payload is the gzipped ELF. */
export function gzipBzImage(elf: Uint8Array): Uint8Array {
  const payload = gzipSync(elf);
  const image = new Uint8Array(5 * 512 + payload.length);
  const v = new DataView(image.buffer);
  image[0x1f1] = 4; // setup_sects
  v.setUint16(0x1fe, 0xaa55, true);
  image[0x201] = 0x6a; // setup header ends at 0x26c
  v.setUint32(0x202, 0x53726448, true); // "HdrS"
  v.setUint16(0x206, 0x020f, true);
  v.setUint32(0x22c, 0x7fffffff, true); // initrd_addr_max
  v.setUint32(0x238, 2047, true); // cmdline_size
  v.setUint32(0x248, 0, true); // payload_offset
  v.setUint32(0x24c, payload.length, true);
  image.set(payload, 5 * 512);
  return image;
}

/** Writes `text` to COM1 one byte at a time (the UART's THR is always empty here). */
export function serialWrite(text: string): string {
  return ['mov $0x3f8, %dx', ...[...Buffer.from(text)].flatMap((b) => [`mov $${b}, %al`, 'out %al, (%dx)'])].join('\n');
}
