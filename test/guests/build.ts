// Builds the tiny guest payloads in this directory from source with the system toolchain
// (GNU as + ld + objcopy), into a temporary directory, once per process and symbol set.
// 16-bit sources start with `.code16`, 64-bit ones with `.code64`; `symbols` become
// `--defsym` definitions, so tests and guests share addresses without copying numbers.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

export interface GuestImage {
  /** Flat binary, to be copied to `origin` in guest RAM. */
  readonly bytes: Uint8Array;
  readonly origin: number;
  /** Every symbol of the image (labels and --defsym values), by name. */
  readonly symbols: Readonly<Record<string, number>>;
}

export interface GuestBuild {
  /** Load address (the link address of .text). */
  origin: number;
  bits: 16 | 64;
  symbols?: Record<string, number | bigint>;
}

/** Why guests cannot be built here, or undefined when the toolchain is present. */
export function toolchainMissing(): string | undefined {
  for (const tool of ['as', 'ld', 'objcopy', 'nm']) {
    try {
      execFileSync(tool, ['--version'], { stdio: 'ignore' });
    } catch {
      return `${tool} not found`;
    }
  }
  return undefined;
}

const cache = new Map<string, GuestImage>();

/** Assembles test/guests/<name>.s. */
export function buildGuest(name: string, build: GuestBuild): GuestImage {
  const key = JSON.stringify([name, build], (_, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v));
  const cached = cache.get(key);
  if (cached) return cached;
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-guest-'));
  try {
    const obj = join(dir, `${name}.o`);
    const elf = join(dir, `${name}.elf`);
    const bin = join(dir, `${name}.bin`);
    const defsyms = Object.entries(build.symbols ?? {}).flatMap(([k, v]) => ['--defsym', `${k}=0x${v.toString(16)}`]);
    execFileSync('as', [build.bits === 16 ? '--32' : '--64', ...defsyms, '-o', obj, join(here, `${name}.s`)]);
    execFileSync('ld', ['-m', build.bits === 16 ? 'elf_i386' : 'elf_x86_64', '-Ttext', `0x${build.origin.toString(16)}`,
      '-e', '_start', '-o', elf, obj]);
    execFileSync('objcopy', ['-O', 'binary', '-j', '.text', elf, bin]);
    const symbols: Record<string, number> = {};
    for (const line of execFileSync('nm', [elf], { encoding: 'utf8' }).split('\n')) {
      const m = /^([0-9a-f]+) \w (\S+)$/.exec(line.trim());
      if (m) symbols[m[2]!] = parseInt(m[1]!, 16);
    }
    const image = { bytes: new Uint8Array(readFileSync(bin)), origin: build.origin, symbols };
    cache.set(key, image);
    return image;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
