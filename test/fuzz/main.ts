// `npm run fuzz`: run the fuzz targets. Defaults to the CI budget of each target from a
// random seed; `--seed N` fixes the run seed (a failure's printed seed with `--cases 1`
// replays exactly that input), `--cases N` overrides the budget, `--target NAME` (repeatable)
// picks targets, `--long` runs 50x the budget. Ends with `N passed, N failed`; exit 1 on any
// failure, 2 on bad arguments.

import { COVERAGE_MIN_CASES, replayCommand, runTarget, type FuzzReport } from '../support/fuzz-engine.ts';
import { TARGETS } from './targets.ts';

const LONG_FACTOR = 50;

interface Options {
  seed: number;
  cases: number | null;
  targets: string[];
  long: boolean;
  quiet: boolean;
}

function usage(message: string): never {
  process.stderr.write(`fuzz: ${message}\nusage: npm run fuzz -- [--seed N] [--cases N] [--target NAME]... [--long] [--quiet]\n` +
    `targets: ${TARGETS.map((t) => t.name).join(', ')}\n`);
  process.exit(2);
}

function parse(argv: string[]): Options {
  const o: Options = { seed: (Math.random() * 2 ** 32) >>> 0, cases: null, targets: [], long: false, quiet: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) usage(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case '--seed': {
        const v = value();
        if (!/^(\d+|0x[0-9a-f]+)$/i.test(v) || Number(v) > 0xffffffff) usage(`--seed '${v}' is not a u32`);
        o.seed = Number(v);
        break;
      }
      case '--cases': {
        const v = value();
        if (!/^\d+$/.test(v) || Number(v) < 1) usage(`--cases '${v}' is not a positive whole number`);
        o.cases = Number(v);
        break;
      }
      case '--target': {
        const v = value();
        if (!TARGETS.some((t) => t.name === v)) usage(`unknown target '${v}'`);
        o.targets.push(v);
        break;
      }
      case '--long': o.long = true; break;
      case '--quiet': o.quiet = true; break;
      default: usage(`unknown argument '${arg}'`);
    }
  }
  return o;
}

export function formatReport(r: FuzzReport): string {
  const lines = [`${r.target}: ${r.cases} cases, ${r.passed} passed, ${r.failed} failed in ${(r.ms / 1000).toFixed(1)} s ` +
    `(slowest case ${r.slowestMs.toFixed(1)} ms)`];
  const counts = [...r.stats.counts].sort(([a], [b]) => a.localeCompare(b));
  for (const [name, n] of counts) lines.push(`    ${name}: ${n}`);
  if (r.coverage) lines.push(`  COVERAGE FAILED: ${r.coverage}`);
  return lines.join('\n');
}

const options = parse(process.argv.slice(2));
const selected = options.targets.length ? TARGETS.filter((t) => options.targets.includes(t.name)) : TARGETS;
process.stdout.write(`fuzz: seed ${options.seed}${options.long ? ' (long run)' : ''}\n`);
let passed = 0, failed = 0;
for (const target of selected) {
  const cases = options.cases ?? target.budget * (options.long ? LONG_FACTOR : 1);
  const report = await runTarget(target, {
    seed: options.seed,
    cases,
    onFailure: (f) => process.stdout.write(`FAIL ${f.target} #${f.caseIndex} seed=${f.seed}: ${f.message}\n` +
      `  replay: ${replayCommand(f.target, f.seed)}\n`),
  });
  if (!options.quiet || report.failed || report.coverage) process.stdout.write(formatReport(report) + '\n');
  else process.stdout.write(formatReport(report).split('\n')[0] + '\n');
  passed += report.passed;
  failed += report.failed + (report.coverage ? 1 : 0);
  if (cases < COVERAGE_MIN_CASES && target.checkCoverage) process.stdout.write(`  (coverage not checked below ${COVERAGE_MIN_CASES} cases)\n`);
}
process.stdout.write(`${passed} passed, ${failed} failed\n`);
process.exit(failed === 0 ? 0 : 1);
