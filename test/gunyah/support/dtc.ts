// Runs the device-tree compiler (Debian `device-tree-compiler`) on blobs and sources, for tests
// that let dtc judge what our FDT writer produces. `dtcAvailable()` lets tests print SKIP.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function dtcAvailable(): boolean {
  const r = spawnSync('dtc', ['--version'], { encoding: 'utf8' });
  return r.status === 0;
}

export interface DtcResult {
  readonly status: number | null;
  readonly dts: string;
  /** Warning and error lines dtc printed (stderr). */
  readonly messages: string[];
}

function run(input: Uint8Array | string, from: 'dtb' | 'dts'): DtcResult {
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-dtc-'));
  try {
    const path = join(dir, `in.${from}`);
    writeFileSync(path, input);
    const r = spawnSync('dtc', ['-I', from, '-O', 'dts', path], { encoding: 'utf8' });
    return {
      status: r.status,
      dts: r.stdout,
      messages: r.stderr.split('\n').filter((l) => l.trim() !== ''),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `dtc -I dtb -O dts` of a blob. */
export function decompile(blob: Uint8Array): DtcResult {
  return run(blob, 'dtb');
}

/**
 * dtc's text for a source compiled by dtc itself (dts -> dtb -> dts): what decompile() of an
 * equivalent blob must print, down to how dtc guesses value types from the bytes.
 */
export function canonicalize(source: string): DtcResult {
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-dtc-'));
  try {
    const src = join(dir, 'in.dts');
    const out = join(dir, 'out.dtb');
    writeFileSync(src, source);
    const r = spawnSync('dtc', ['-I', 'dts', '-O', 'dtb', '-o', out, src], { encoding: 'utf8' });
    if (r.status !== 0) return { status: r.status, dts: '', messages: r.stderr.split('\n').filter((l) => l.trim() !== '') };
    return decompile(readFileSync(out));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The dtc check names in warning lines, e.g. 'label_is_string'. */
export function warningChecks(messages: readonly string[]): string[] {
  return messages.map((m) => /Warning \(([a-z_]+)\)/.exec(m)?.[1] ?? m);
}
