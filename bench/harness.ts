// The benchmark harness: what a figure is (our median beside a peer's or a floor's, their
// ratio, the target and whether it is met), alternated side-by-side runs so that drift on a
// noisy shared machine hits both sides alike, the printed table, the machine description and
// the JSON results. Benchmark modules measure; this module judges and reports.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join } from 'node:path';

/** A bound on a figure: on its own value (ms, chains/s) or on ours / peer. */
export interface Target {
  readonly on: 'value' | 'ratio';
  readonly op: '>=' | '<=';
  readonly bound: number;
}

export interface Side {
  /** 'rxvirt', 'C floor', 'qemu-storage-daemon', 'QEMU'. */
  readonly label: string;
  /** Median of the samples. */
  readonly value: number;
  /** One value per run (per round of an alternated comparison). */
  readonly samples: readonly number[];
}

export type Verdict = 'pass' | 'miss' | 'info' | 'skip';

export interface Figure {
  /** Benchmark the figure belongs to ('split-queue', 'notify', 'vhost-user-blk', 'vm', 'memory'). */
  readonly group: string;
  readonly name: string;
  readonly unit: string;
  /** Which way is better, for the chart and for reading the ratio. */
  readonly better: 'higher' | 'lower';
  readonly ours?: Side;
  readonly peer?: Side;
  /** ours.value / peer.value. */
  readonly ratio?: number;
  readonly target?: Target;
  readonly verdict: Verdict;
  /** Why the figure was not measured. */
  readonly skip?: string;
  readonly note?: string;
}

export interface FigureSpec {
  group: string;
  name: string;
  unit: string;
  better: 'higher' | 'lower';
  /** Our samples (one per run); the figure is their median. */
  ours: readonly number[];
  peer?: { label: string; samples: readonly number[] };
  target?: Target;
  note?: string;
  oursLabel?: string;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Nearest-rank percentile (p in 0..1) of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(sorted.length * p) - 1))]!;
}

function side(label: string, samples: readonly number[]): Side {
  return { label, value: median(samples), samples: [...samples] };
}

/** Does `value` (the figure's value or its ratio) meet `target`? */
export function meets(target: Target, value: number): boolean {
  if (!Number.isFinite(value)) return false;
  return target.op === '>=' ? value >= target.bound : value <= target.bound;
}

/** A measured figure: medians, ratio and verdict from the samples. */
export function figure(spec: FigureSpec): Figure {
  const ours = side(spec.oursLabel ?? 'rxvirt', spec.ours);
  const peer = spec.peer ? side(spec.peer.label, spec.peer.samples) : undefined;
  const ratio = peer ? ours.value / peer.value : undefined;
  let verdict: Verdict = 'info';
  if (spec.target) {
    const judged = spec.target.on === 'ratio' ? ratio : ours.value;
    verdict = judged !== undefined && meets(spec.target, judged) ? 'pass' : 'miss';
  }
  return {
    group: spec.group, name: spec.name, unit: spec.unit, better: spec.better,
    ours, ...(peer ? { peer, ratio } : {}), ...(spec.target ? { target: spec.target } : {}), verdict,
    ...(spec.note ? { note: spec.note } : {}),
  };
}

/** A figure that could not be measured here, and why. */
export function skipped(group: string, name: string, why: string, shape: Partial<Pick<Figure, 'unit' | 'better' | 'target'>> = {}): Figure {
  return { group, name, unit: shape.unit ?? '', better: shape.better ?? 'higher', ...(shape.target ? { target: shape.target } : {}), verdict: 'skip', skip: why };
}

/**
 * Runs `sides` alternately for `rounds` rounds and returns each side's results in round order.
 * The order flips every round (A B, B A, A B, ...) so neither side always runs first (warm
 * caches, CPU frequency, a neighbour's burst). With `warmup`, each side first runs once more,
 * unrecorded (onRun sees round -1).
 */
export async function alternate<T>(
  rounds: number,
  sides: readonly (() => Promise<T>)[],
  onRun?: (side: number, round: number) => void,
  options: { warmup?: boolean } = {},
): Promise<T[][]> {
  if (options.warmup) {
    // One discarded run per side: JIT tiers, page cache and CPU caches reach their steady state.
    for (let i = 0; i < sides.length; i++) {
      onRun?.(i, -1);
      await sides[i]!();
    }
  }
  const out: T[][] = sides.map(() => []);
  for (let r = 0; r < rounds; r++) {
    const order = sides.map((_, i) => i);
    if (r % 2 === 1) order.reverse();
    for (const i of order) {
      onRun?.(i, r);
      out[i]!.push(await sides[i]!());
    }
  }
  return out;
}

// ---- the table ----

const SI: [number, string][] = [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']];

/** Three significant digits, with k/M/G for rates. */
export function formatValue(value: number, unit: string): string {
  if (!Number.isFinite(value)) return String(value);
  if (unit.endsWith('/s') && unit !== 'MiB/s') {
    for (const [scale, prefix] of SI) {
      if (Math.abs(value) >= scale) return `${(value / scale).toPrecision(3)}${prefix} ${unit}`;
    }
  }
  const abs = Math.abs(value);
  const text = abs >= 1000 ? value.toFixed(0) : abs >= 100 ? value.toFixed(1) : abs >= 1 ? value.toPrecision(3) : value.toPrecision(2);
  return `${text} ${unit}`;
}

export function formatTarget(t: Target, unit: string): string {
  return t.on === 'ratio' ? `${t.op} ${t.bound}x` : `${t.op} ${formatValue(t.bound, unit)}`;
}

const VERDICT_TEXT: Record<Verdict, string> = { pass: 'ok', miss: 'MISS', info: '', skip: 'SKIP' };

/** One row per figure: what was measured, beside what, the ratio and the verdict. */
export function formatTable(figures: readonly Figure[]): string {
  const rows = figures.map((f) => [
    `${f.group}: ${f.name}`,
    f.ours ? formatValue(f.ours.value, f.unit) : '-',
    f.peer ? `${formatValue(f.peer.value, f.unit)} (${f.peer.label})` : '',
    f.ratio !== undefined ? `${f.ratio.toFixed(2)}x` : '',
    f.target ? formatTarget(f.target, f.unit) : '',
    f.verdict === 'skip' ? `SKIP: ${f.skip}` : VERDICT_TEXT[f.verdict],
  ]);
  const head = ['figure', 'rxvirt', 'peer / floor', 'ratio', 'target', ''];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.filter((r) => !r[5]!.startsWith('SKIP')).map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === 1 || i === 2 || i === 3 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(head), ...rows.map((r) => (r[5]!.startsWith('SKIP') ? `${r[0]!.padEnd(widths[0]!)}  ${r[5]}` : line(r)))].join('\n');
}

/** The same table as Markdown, for the README. */
export function markdownTable(figures: readonly Figure[]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  const lines = ['| figure | rxvirt | peer / floor | ratio | target | |', '| --- | ---: | ---: | ---: | --- | --- |'];
  for (const f of figures) {
    lines.push(`| ${esc(`${f.group}: ${f.name}`)} | ${f.ours ? formatValue(f.ours.value, f.unit) : '-'} | ${f.peer ? esc(`${formatValue(f.peer.value, f.unit)} (${f.peer.label})`) : ''} | ${
      f.ratio !== undefined ? `${f.ratio.toFixed(2)}x` : ''} | ${f.target ? formatTarget(f.target, f.unit) : ''} | ${f.verdict === 'skip' ? `SKIP: ${esc(f.skip ?? '')}` : VERDICT_TEXT[f.verdict]} |`);
  }
  return lines.join('\n');
}

// ---- machine and results ----

export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  /** 'kvm_pvm' when /dev/kvm is the nested PVM module, 'kvm', or 'none'. */
  kvm: string;
  qemu: string | null;
}

export function describeMachine(): Machine {
  let qemu: string | null = null;
  try {
    qemu = /version (\S+)/.exec(execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }))?.[1] ?? null;
  } catch {
    qemu = null;
  }
  let cpu = cpus()[0]?.model.trim() ?? 'unknown';
  if (cpu === 'unknown' && existsSync('/proc/cpuinfo')) cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpu;
  return {
    cpu,
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    kvm: existsSync('/dev/kvm') ? (existsSync('/sys/module/kvm_pvm') ? 'kvm_pvm' : 'kvm') : 'none',
    qemu,
  };
}

export interface Report {
  date: string;
  machine: Machine;
  /** 1-minute load average when the run started and when it ended: how busy the machine was. */
  load: { start: number; end: number };
  quick: boolean;
  /** Wall-clock seconds of the whole run. */
  seconds: number;
  figures: Figure[];
}

/** The 1-minute load average, two decimals. */
export function loadNow(): number {
  return Math.round(loadavg()[0]! * 100) / 100;
}

/** Writes `latest.json` (and returns its path). */
export function writeReport(dir: string, report: Report): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'latest.json');
  writeFileSync(path, `${JSON.stringify(report, null, 2)}\n`);
  return path;
}
