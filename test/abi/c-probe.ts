// Compiles and runs a generated C program that prints ABI facts as "key value" lines:
//   value NAME | size STRUCT | align STRUCT | offset STRUCT.path | fsize STRUCT.path
//   | signed STRUCT.path (1 for a signed integer field, 0 for unsigned, enum, array or aggregate)
// and builds the same table from the TypeScript definitions, so the two can be compared key by key.
// When no compiler or system header is available the probe reports a skip reason instead.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';
import { isKoffiType, koffiField } from './koffi-layout.ts';

export type AbiTable = Map<string, number>;

/** What to compare: constant names and struct names with their C member paths. */
export interface AbiItems {
  constants: string[];
  structs: Map<string, string[]>;
}

export function itemKeys(items: AbiItems): string[] {
  const keys = items.constants.map((c) => `value ${c}`);
  for (const [s, paths] of items.structs) {
    keys.push(`size ${s}`, `align ${s}`);
    for (const p of paths) keys.push(`offset ${s}.${p}`, `fsize ${s}.${p}`, `signed ${s}.${p}`);
  }
  return keys;
}

export function probeSource(includes: string[], items: AbiItems, extra: { key: string; expr: string }[] = []): string {
  const lines = [
    ...includes.map((h) => `#include ${h}`),
    '#include <stdio.h>',
    '#include <stddef.h>',
    '#define P(key, v) printf("%s %llu\\n", key, (unsigned long long)(v))',
    '#define IS_SIGNED(x) _Generic((x), signed char: 1, short: 1, int: 1, long: 1, long long: 1, default: 0)',
    'int main(void) {',
  ];
  for (const c of items.constants) lines.push(`  P("value ${c}", ${c});`);
  for (const [s, paths] of items.structs) {
    lines.push(`  P("size ${s}", sizeof(struct ${s}));`, `  P("align ${s}", _Alignof(struct ${s}));`);
    for (const p of paths) {
      lines.push(`  P("offset ${s}.${p}", offsetof(struct ${s}, ${p}));`);
      lines.push(`  P("fsize ${s}.${p}", sizeof(((struct ${s} *)0)->${p}));`);
      lines.push(`  P("signed ${s}.${p}", IS_SIGNED(((struct ${s} *)0)->${p}));`);
    }
  }
  for (const { key, expr } of extra) lines.push(`  P("${key}", ${expr});`);
  lines.push('  return 0;', '}', '');
  return lines.join('\n');
}

export function parseTable(text: string): AbiTable {
  const table: AbiTable = new Map();
  for (const line of text.split('\n')) {
    const m = /^(\w+ [\w.]+) (\d+|0x[0-9a-f]+)$/.exec(line.trim());
    if (!m) continue;
    const value = Number(m[2]);
    if (!Number.isSafeInteger(value)) throw new Error(`c-probe: ${line} is not a safe integer`);
    table.set(m[1]!, value);
  }
  return table;
}

export type ProbeResult = { table: AbiTable } | { skip: string };

const CC = process.env.CC ?? 'cc';

/** Compiles `source` with $CC (default cc) in a temp dir and runs it. */
export function runProbe(source: string): ProbeResult {
  const version = spawnSync(CC, ['--version'], { encoding: 'utf8' });
  if (version.error) return { skip: `no C compiler: ${CC} ${(version.error as NodeJS.ErrnoException).code ?? version.error.message}` };
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-abi-'));
  try {
    const src = join(dir, 'probe.c');
    const bin = join(dir, 'probe');
    writeFileSync(src, source);
    const cc = spawnSync(CC, ['-std=gnu11', '-Wall', '-o', bin, src], { encoding: 'utf8' });
    if (cc.status !== 0) {
      const missing = /fatal error: ([^:\n]+\.h): No such file/.exec(cc.stderr);
      if (missing) return { skip: `header ${missing[1]} not installed` };
      throw new Error(`c-probe: ${CC} failed:\n${cc.stderr}`);
    }
    const run = spawnSync(bin, [], { encoding: 'utf8' });
    if (run.status !== 0) throw new Error(`c-probe: probe exited ${run.status ?? run.signal}: ${run.stderr}`);
    return { table: parseTable(run.stdout) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The preprocessed text of `includes` (for parsing system headers with all macros expanded). */
export function preprocess(includes: string[]): { text: string } | { skip: string } {
  const source = includes.map((h) => `#include ${h}\n`).join('');
  const cpp = spawnSync(CC, ['-E', '-P', '-x', 'c', '-'], { input: source, encoding: 'utf8' });
  if (cpp.error) return { skip: `no C compiler: ${CC} ${(cpp.error as NodeJS.ErrnoException).code ?? cpp.error.message}` };
  if (cpp.status !== 0) {
    const missing = /fatal error: ([^:\n]+\.h): No such file/.exec(cpp.stderr);
    if (missing) return { skip: `header ${missing[1]} not installed` };
    throw new Error(`c-probe: ${CC} -E failed:\n${cpp.stderr}`);
  }
  return { text: cpp.stdout };
}

/** The same table built from a TypeScript module's exports; `missing` lists items it lacks. */
export function tsTable(mod: Record<string, unknown>, items: AbiItems): { table: AbiTable; missing: string[] } {
  const table: AbiTable = new Map();
  const missing: string[] = [];
  for (const c of items.constants) {
    const v = mod[c];
    if (typeof v === 'number') table.set(`value ${c}`, v);
    else missing.push(`constant ${c} is not exported as a number`);
  }
  for (const [s, paths] of items.structs) {
    const type = mod[s];
    if (!isKoffiType(type)) { missing.push(`struct ${s} is not exported as a koffi type`); continue; }
    table.set(`size ${s}`, koffi.sizeof(type));
    table.set(`align ${s}`, koffi.alignof(type));
    for (const p of paths) {
      const f = koffiField(type, p);
      if (!f) { missing.push(`field ${s}.${p} is missing from the koffi type`); continue; }
      table.set(`offset ${s}.${p}`, f.offset);
      table.set(`fsize ${s}.${p}`, f.size);
      table.set(`signed ${s}.${p}`, f.signed ? 1 : 0);
    }
  }
  return { table, missing };
}

/** Differences between a reference table and another, as readable lines (empty = equal). */
export function diffTables(reference: AbiTable, other: AbiTable, otherName: string): string[] {
  const out: string[] = [];
  for (const [k, v] of reference) {
    if (!other.has(k)) out.push(`${k}: ${otherName} has no value (reference ${v})`);
    else if (other.get(k) !== v) out.push(`${k}: ${otherName} ${other.get(k)} != reference ${v}`);
  }
  for (const k of other.keys()) if (!reference.has(k)) out.push(`${k}: only in ${otherName}`);
  return out;
}

/** One "key value" line per entry; ioctl-sized values in hex so they read like the headers. */
export function formatTable(table: AbiTable): string {
  return [...table].map(([k, v]) => `${k} ${k.startsWith('value ') && v > 0xfff ? `0x${v.toString(16)}` : v}`).join('\n');
}

/** The items a recorded table covers (used when the header itself is not available). */
export function itemsOfTable(table: AbiTable): AbiItems {
  const constants: string[] = [];
  const structs = new Map<string, string[]>();
  for (const key of table.keys()) {
    const [kind, name] = key.split(' ') as [string, string];
    if (kind === 'value') constants.push(name);
    else if (kind === 'size') structs.set(name, structs.get(name) ?? []);
    else if (kind === 'offset') {
      const dot = name.indexOf('.');
      const s = name.slice(0, dot);
      structs.set(s, [...(structs.get(s) ?? []), name.slice(dot + 1)]);
    }
  }
  return { constants, structs };
}
