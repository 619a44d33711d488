// The fuzzing engine: runs a target's cases, each from its own seed (case i of a run
// seeded S uses caseSeed(S, i), and case 0 uses S itself, so `--seed <caseSeed> --cases 1`
// replays any single case), and turns every way a case can go wrong into a failure that
// names that seed: a thrown invariant, an exception or promise rejection escaping to the
// process (uncaughtException / unhandledRejection), an async case that never settles, and a
// case slower than its bound. A synchronous infinite loop cannot be interrupted from inside,
// so a watchdog thread reports the stuck case's seed on fd 2 and kills the process.

import { writeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { Prng } from './prng.ts';

export interface FuzzTarget<C = unknown> {
  readonly name: string;
  /** One line: what an input is and which invariants are checked. */
  readonly summary: string;
  /** Cases in the CI budget. */
  readonly budget: number;
  /** A case slower than this fails (default 5000 ms: generous, a loaded CI machine pauses for GC). */
  readonly caseTimeoutMs?: number;
  /** Once per run, before the first case (sockets, back-ends); `close` undoes it. */
  open?(): C | Promise<C>;
  close?(context: C): void | Promise<void>;
  /** One input: generate it from `rng`, run it, throw on any broken invariant. */
  run(rng: Prng, context: C, stats: FuzzStats): void | Promise<void>;
  /**
   * After the run: throw if the outcomes counted in `stats` show the generator missed what it
   * exists to produce (a fuzzer that never builds a loop proves nothing about loops). Only
   * called for runs of at least `coverageMinCases` cases.
   */
  checkCoverage?(stats: FuzzStats): void;
}

/** Minimum run length for which a target's coverage check is meaningful. */
export const COVERAGE_MIN_CASES = 2000;

/** Named outcome counters a target fills in (the report lists them). */
export class FuzzStats {
  readonly counts = new Map<string, number>();

  count(what: string, n = 1): void {
    this.counts.set(what, (this.counts.get(what) ?? 0) + n);
  }

  get(what: string): number {
    return this.counts.get(what) ?? 0;
  }

  /** Counters whose name starts with `prefix`. */
  withPrefix(prefix: string): [string, number][] {
    return [...this.counts].filter(([k]) => k.startsWith(prefix));
  }

  /** Throw unless every named outcome was seen at least once. */
  require(...names: string[]): void {
    const missing = names.filter((n) => this.get(n) === 0);
    if (missing.length) throw new Error(`coverage: never produced ${missing.join(', ')}`);
  }
}

export interface FuzzFailure {
  target: string;
  caseIndex: number;
  seed: number;
  message: string;
}

export interface FuzzReport {
  target: string;
  cases: number;
  passed: number;
  failed: number;
  failures: FuzzFailure[];
  ms: number;
  slowestMs: number;
  stats: FuzzStats;
  /** The coverage check's complaint, if any (counted as one extra failure). */
  coverage: string | null;
}

export interface RunOptions {
  seed: number;
  cases: number;
  /** Called for each failure as it happens (the CLI prints it). */
  onFailure?: (failure: FuzzFailure) => void;
  /** Stop after this many failures (default 20: the seeds are what matter). */
  maxFailures?: number;
  /** Watchdog: no case may run longer than this, or the process is killed (default 10 s). */
  hangMs?: number;
}

/** Seed of case `index` in a run seeded `seed`; case 0 is the run seed itself. */
export function caseSeed(seed: number, index: number): number {
  return (seed + Math.imul(index, 0x9e3779b9)) >>> 0;
}

export function replayCommand(target: string, seed: number): string {
  return `npm run fuzz -- --target ${target} --seed ${seed} --cases 1`;
}

/** Run `cases` cases of `target`. Never throws for a case's failure: it is in the report. */
export async function runTarget<C>(target: FuzzTarget<C>, options: RunOptions): Promise<FuzzReport> {
  const { seed, cases } = options;
  const maxFailures = options.maxFailures ?? 20;
  const timeoutMs = target.caseTimeoutMs ?? 5000;
  const stats = new FuzzStats();
  const failures: FuzzFailure[] = [];
  let current = -1;
  let currentSeed = seed;
  let passed = 0;
  let ran = 0;
  let slowest = 0;
  const started = Date.now();

  // Anything escaping to the process while case `current` runs is that case's failure.
  const stray: string[] = [];
  const onUncaught = (err: unknown) => stray.push(`uncaught exception: ${describe(err)}`);
  const onRejection = (err: unknown) => stray.push(`unhandled rejection: ${describe(err)}`);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onRejection);
  const watchdog = new Watchdog(target.name, options.hangMs ?? 10_000);
  // Hostile inputs make the code under test build thousands of errors; deep stacks are not needed to name a seed.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 4;

  const fail = (caseIndex: number, s: number, message: string) => {
    const failure = { target: target.name, caseIndex, seed: s, message };
    failures.push(failure);
    options.onFailure?.(failure);
  };

  let context: C | undefined;
  try {
    await watchdog.ready; // its thread's fds exist before a target counts fds
    context = target.open ? await target.open() : (undefined as C);
    for (let i = 0; i < cases && failures.length < maxFailures; i++) {
      current = i;
      currentSeed = caseSeed(seed, i);
      watchdog.enter(i, currentSeed);
      const t0 = performance.now();
      let error: string | null = null;
      try {
        const result = target.run(new Prng(currentSeed), context as C, stats);
        if (result instanceof Promise) await withTimeout(result, timeoutMs);
      } catch (err) {
        error = describe(err);
      }
      // Let stray async errors of this case surface before it is judged.
      await new Promise((r) => setImmediate(r));
      const ms = performance.now() - t0;
      watchdog.leave();
      slowest = Math.max(slowest, ms);
      if (error === null && stray.length) error = stray.join('; ');
      if (error === null && ms > timeoutMs) error = `took ${ms.toFixed(0)} ms (bound ${timeoutMs} ms)`;
      stray.length = 0;
      ran++;
      if (error === null) passed++;
      else fail(i, currentSeed, error);
    }
  } catch (err) {
    fail(current, currentSeed, `target setup failed: ${describe(err)}`);
  } finally {
    watchdog.stop();
    try {
      if (context !== undefined && target.close) await target.close(context);
    } catch (err) {
      fail(current, currentSeed, `target teardown failed: ${describe(err)}`);
    }
    await new Promise((r) => setImmediate(r));
    if (stray.length) fail(current, currentSeed, `after the last case: ${stray.join('; ')}`);
    Error.stackTraceLimit = stackTraceLimit;
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onRejection);
  }

  let coverage: string | null = null;
  if (target.checkCoverage && cases >= COVERAGE_MIN_CASES && failures.length === 0) {
    try {
      target.checkCoverage(stats);
    } catch (err) {
      coverage = describe(err);
    }
  }
  return {
    target: target.name, cases: ran, passed, failed: failures.length, failures, ms: Date.now() - started,
    slowestMs: slowest, stats, coverage,
  };
}

function withTimeout(work: Promise<void>, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`did not finish within ${ms} ms (hung?)`)), ms);
    work.then(
      () => { clearTimeout(timer); resolve(); },
      (err: unknown) => { clearTimeout(timer); reject(err); },
    );
  });
}

export function describe(err: unknown): string {
  if (err instanceof Error) {
    const where = err.stack?.split('\n').slice(1, 3).map((l) => l.trim()).join(' ') ?? '';
    return `${err.name}: ${err.message}${where ? ` [${where}]` : ''}`;
  }
  return String(err);
}

// ---- watchdog ----------------------------------------------------------------------------

const WATCHDOG_SOURCE = `
const { workerData } = require('node:worker_threads');
const { writeSync } = require('node:fs');
const cell = new Int32Array(workerData.shared);
let seen = -1, since = Date.now();
setInterval(() => {
  const gen = Atomics.load(cell, 0);
  if (gen !== seen || Atomics.load(cell, 1) === 0) { seen = gen; since = Date.now(); return; }
  if (Date.now() - since < workerData.hangMs) return;
  const seed = Atomics.load(cell, 3) >>> 0;
  writeSync(2, '\\nFAIL ' + workerData.target + ' #' + Atomics.load(cell, 2) + ' seed=' + seed + ': hung for more than '
    + workerData.hangMs + ' ms (no return from a synchronous call)\\n  replay: npm run fuzz -- --target '
    + workerData.target + ' --seed ' + seed + ' --cases 1\\n');
  process.kill(process.pid, 'SIGKILL');
}, 250);
`;

/** A thread that kills the process when one case runs past `hangMs` (its seed is printed first). */
class Watchdog {
  private readonly cell = new Int32Array(new SharedArrayBuffer(16));
  private readonly worker: Worker;
  private generation = 0;
  /** Resolves once the thread runs. */
  readonly ready: Promise<void>;

  constructor(target: string, hangMs: number) {
    this.worker = new Worker(WATCHDOG_SOURCE, { eval: true, workerData: { shared: this.cell.buffer, hangMs, target } });
    this.worker.on('error', (err) => writeSync(2, `fuzz watchdog failed: ${describe(err)}\n`));
    this.ready = new Promise((resolve) => {
      const done = () => {
        this.worker.unref(); // (kept referenced until then, or the process could exit while waiting)
        resolve();
      };
      this.worker.once('online', done);
      this.worker.once('error', done);
    });
  }

  enter(index: number, seed: number): void {
    Atomics.store(this.cell, 2, index);
    Atomics.store(this.cell, 3, seed | 0);
    Atomics.store(this.cell, 0, ++this.generation);
    Atomics.store(this.cell, 1, 1);
  }

  leave(): void {
    Atomics.store(this.cell, 1, 0);
  }

  stop(): void {
    void this.worker.terminate();
  }
}
