// `npm run bench [-- --quick] [--only NAME ...] [--rounds N] [--no-build] [--out DIR]`: runs every benchmark
// (or the named ones), prints one table of figures beside their peers or floors with ratios
// and targets, and writes bench/results/latest.json plus SVG charts. A benchmark whose
// prerequisites are missing reports SKIP with the reason; one that fails reports the error;
// the run always continues.

import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseFlags, parseIntInRange, UsageError } from '../cli/args.ts';
import { benchBlock } from './block.ts';
import { renderCharts } from './chart.ts';
import { describeMachine, figure, formatTable, loadNow, markdownTable, skipped, writeReport, type Figure, type Report } from './harness.ts';
import { benchMemory } from './memory.ts';
import { benchNotify } from './notify-roundtrip.ts';
import { benchSplitQueue } from './split-queue.ts';
import { RESULTS_DIR } from './tools.ts';
import { benchVhostUserBlk } from './vhost-user-blk.ts';
import { benchVmFigures } from './vm-figures.ts';

interface Settings {
  quick: boolean;
  out: string;
  /** Rounds of alternated peer comparisons (undefined: each benchmark's default for the mode). */
  rounds?: number;
  buildGuest: boolean;
  log: (line: string) => void;
}

interface Benchmark {
  name: string;
  what: string;
  run: (s: Settings) => Promise<Figure[]>;
}

const BENCHMARKS: Benchmark[] = [
  {
    name: 'split-queue',
    what: 'bare split virtqueue, chains/s, target >= 1 M/s',
    run: async (s) => (await benchSplitQueue({ durationMs: s.quick ? 150 : 500 })).map((r) => figure({
      group: 'split-queue', name: r.name, unit: 'chains/s', better: 'higher', ours: [r.chainsPerSec],
      target: { on: 'value', op: '>=', bound: 1e6 }, note: 'pop + pushUsed + needsNotification per chain, queue size 256, one core',
    })),
  },
  {
    name: 'block',
    what: 'virtio-blk device path in process, 4 KiB reads/s',
    run: async (s) => (await benchBlock({ seconds: s.quick ? 0.5 : 2 })).map((r) => figure({
      group: 'block', name: r.name, unit: r.unit, better: 'higher', ours: [r.value], note: 'device harness, no transport, page-cache-hot raw image',
    })),
  },
  {
    name: 'notify',
    what: 'ioeventfd -> JS handler -> irqfd round trip vs a C device, target <= 2x',
    run: (s) => benchNotify({ rounds: s.rounds ?? (s.quick ? 3 : 5), count: s.quick ? 5_000 : 20_000, log: s.log }),
  },
  {
    name: 'vm',
    what: 'own VMM on KVM: start to first vCPU entry (<= 150 ms), MMIO exit round trip vs C (<= 1.5x)',
    run: (s) => benchVmFigures({ rounds: s.rounds ?? (s.quick ? 1 : 3), log: s.log }),
  },
  {
    name: 'vhost-user-blk',
    what: 'block over vhost-user vs qemu-storage-daemon under QEMU TCG, target >= 1.0x',
    run: (s) => benchVhostUserBlk({
      rounds: s.rounds ?? (s.quick ? 1 : 5), seconds: s.quick ? 1 : 3, imageMiB: s.quick ? 128 : 256, buildGuest: s.buildGuest, log: s.log,
    }),
  },
  {
    name: 'memory',
    what: 'VMM resident memory excluding guest RAM vs QEMU',
    run: (s) => benchMemory({ rounds: s.rounds ?? (s.quick ? 1 : 3), log: s.log }),
  },
];

const USAGE = `usage: npm run bench [-- options]
  --quick        short runs, fewer rounds, no guest image build
  --only NAME    run only this benchmark (repeatable): ${BENCHMARKS.map((b) => b.name).join(', ')}
  --rounds N     rounds of each alternated peer comparison
  --no-build     never build the guest image (the vhost-user benchmark skips if it is not cached)
  --out DIR      where to write latest.json, latest.md and the SVGs (default bench/results)
`;

function parse(argv: string[]): Settings & { only: string[] } {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const { flags } = parseFlags('bench', argv, { quick: 'boolean', only: 'list', rounds: 'string', 'no-build': 'boolean', out: 'string' });
  const only = flags.only ?? [];
  for (const name of only) {
    if (!BENCHMARKS.some((b) => b.name === name)) throw new UsageError(`bench: --only '${name}' is not a benchmark (expected one of: ${BENCHMARKS.map((b) => b.name).join(', ')})`);
  }
  const quick = flags.quick ?? false;
  return {
    quick,
    only,
    out: resolve(flags.out ?? RESULTS_DIR),
    rounds: flags.rounds === undefined ? undefined : parseIntInRange('bench', 'rounds', flags.rounds, 1, 50),
    buildGuest: !quick && !(flags['no-build'] ?? false),
    log: (line) => process.stderr.write(`  ${line}\n`),
  };
}

async function main(): Promise<number> {
  let settings: ReturnType<typeof parse>;
  try {
    settings = parse(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`${err.message}\n${USAGE}`);
    return 2;
  }
  // The VMM start-up figure runs the compiled build, as a user's VMM process would.
  process.stderr.write('bench: npm run build (compiled JavaScript in dist/)\n');
  execFileSync('npm', ['run', '-s', 'build'], { stdio: 'inherit' });
  const started = performance.now();
  const loadAtStart = loadNow();
  const figures: Figure[] = [];
  for (const b of BENCHMARKS) {
    if (settings.only.length > 0 && !settings.only.includes(b.name)) continue;
    process.stderr.write(`bench ${b.name}: ${b.what}\n`);
    const t0 = performance.now();
    try {
      figures.push(...(await b.run(settings)));
    } catch (err) {
      const message = err instanceof Error ? err.message.split('\n')[0]! : String(err);
      figures.push(skipped(b.name, '(all figures)', `error: ${message}`));
    }
    process.stderr.write(`bench ${b.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  }
  const report: Report = {
    date: new Date().toISOString(),
    machine: describeMachine(),
    load: { start: loadAtStart, end: loadNow() },
    quick: settings.quick,
    seconds: Math.round((performance.now() - started) / 100) / 10,
    figures,
  };
  const m = report.machine;
  console.log(`\nrxvirt benchmarks, ${report.date.slice(0, 16).replace('T', ' ')} UTC, ${m.cpu}, ${m.cores} cores, Linux ${m.kernel} (${m.kvm}), Node ${m.node}, QEMU ${m.qemu ?? 'absent'}, load ${report.load.start} -> ${report.load.end}${report.quick ? ', quick run' : ''}\n`);
  console.log(formatTable(figures));
  const notes = [...new Set(figures.flatMap((f) => (f.note ? [`${f.group}: ${f.note}`] : [])))];
  if (notes.length > 0) console.log(`\nhow:\n${notes.map((n) => `  ${n}`).join('\n')}`);
  const out = settings.out;
  const json = writeReport(out, report);
  mkdirSync(out, { recursive: true });
  for (const [name, svg] of renderCharts(report)) writeFileSync(join(out, name), svg);
  writeFileSync(join(out, 'latest.md'), `${markdownTable(figures)}\n`);
  const misses = figures.filter((f) => f.verdict === 'miss').length;
  const skips = figures.filter((f) => f.verdict === 'skip').length;
  console.log(`\n${figures.length} figures: ${figures.filter((f) => f.verdict === 'pass').length} on target, ${misses} missed, ${skips} skipped; ${report.seconds} s`);
  console.log(`results: ${json} (+ latest.md, summary.svg and one SVG per benchmark in ${out})`);
  return 0;
}

process.exitCode = await main();
