// The own-VMM figures from bench/vm.ts (benchVm), judged: process start to first vCPU entry
// (<= 150 ms) and the MMIO exit round trip beside a C VMM (<= 1.5x at p50). benchVm measures
// rxvirt and C back to back in one call; calling it once per round alternates the two sides
// across rounds, and the figures are the medians. Results benchVm adds later and this file does
// not know yet still appear, as figures without a target.

import { benchVm, type BenchResult } from './vm.ts';
import { figure, skipped, type Figure, type Target } from './harness.ts';
import { existsSync } from 'node:fs';
import { hasCommand } from './tools.ts';

const GROUP = 'vm';

/** rxvirt result name, C result name (or null), figure name, target. */
const PAIRS: [string, string | null, string, Target | undefined][] = [
  ['vm start: process spawn -> first vCPU entry (median)', null, 'process spawn -> first vCPU entry', { on: 'value', op: '<=', bound: 150 }],
  ['vm start: open /dev/kvm -> first vCPU entry, in process (median)', null, 'open /dev/kvm -> first vCPU entry, in process', undefined],
  ['MMIO exit round trip, main-thread MmioBus: p50', 'MMIO exit round trip, C VMM inline: p50', 'MMIO exit round trip p50', { on: 'ratio', op: '<=', bound: 1.5 }],
  ['MMIO exit round trip, main-thread MmioBus: p99', 'MMIO exit round trip, C VMM inline: p99', 'MMIO exit round trip p99', undefined],
  ['MMIO exit round trip, exit polling off: p50', 'MMIO exit round trip, C VMM inline: p50', 'MMIO exit round trip p50, exit polling off', undefined],
  ['MMIO exit round trip, exit polling off: p99', 'MMIO exit round trip, C VMM inline: p99', 'MMIO exit round trip p99, exit polling off', undefined],
  ['unclaimed-port exit round trip, in the vCPU thread: mean', 'unclaimed-port exit round trip, C VMM inline: mean', 'unclaimed-port exit round trip (in the vCPU thread), mean', undefined],
];

/** Ratios benchVm computes itself: the harness recomputes them from the medians. */
const DERIVED = /rxvirt \/ C$/;

export async function benchVmFigures(options: { rounds?: number; log?: (line: string) => void } = {}): Promise<Figure[]> {
  const rounds = options.rounds ?? 3;
  const missing = !existsSync('/dev/kvm') ? 'no /dev/kvm' : !hasCommand('gcc') ? 'gcc not installed' : !hasCommand('as') ? 'binutils not installed' : null;
  if (missing) return PAIRS.map(([, , name, target]) => skipped(GROUP, name, missing, { unit: 'us', better: 'lower', ...(target ? { target } : {}) }));
  const runs: Map<string, BenchResult>[] = [];
  for (let r = 0; r < rounds; r++) {
    options.log?.(`vm: round ${r + 1}/${rounds} (rxvirt, then the C VMM)`);
    runs.push(new Map((await benchVm()).map((x) => [x.name, x])));
  }
  const samples = (name: string) => runs.flatMap((m) => (m.has(name) ? [m.get(name)!.value] : []));
  const figures: Figure[] = [];
  const used = new Set<string>();
  for (const [ours, peer, name, target] of PAIRS) {
    const unit = runs[0]!.get(ours)?.unit ?? 'us';
    const o = samples(ours);
    const p = peer ? samples(peer) : [];
    used.add(ours);
    if (peer) used.add(peer);
    if (o.length === 0 || (peer && p.length === 0)) {
      figures.push(skipped(GROUP, name, `bench/vm.ts no longer reports '${o.length === 0 ? ours : peer}'`, { unit, better: 'lower', ...(target ? { target } : {}) }));
      continue;
    }
    figures.push(figure({
      group: GROUP, name, unit, better: 'lower', ours: o, ...(peer ? { peer: { label: 'C VMM', samples: p } } : {}), ...(target ? { target } : {}),
      note: `${rounds} round${rounds === 1 ? '' : 's'} of bench/vm.ts`,
    }));
  }
  for (const name of runs[0]!.keys()) {
    if (used.has(name) || DERIVED.test(name)) continue;
    const unit = runs[0]!.get(name)!.unit;
    figures.push(figure({ group: GROUP, name, unit, better: unit === 'us' || unit === 'ms' ? 'lower' : 'higher', ours: samples(name) }));
  }
  return figures;
}
