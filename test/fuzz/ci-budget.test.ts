// The fuzzing CI budget inside `npm test`: every target runs its budget of cases (about 20k
// each) from one seed (RXVIRT_SEED replays a run; each failure names its own case seed and
// the `npm run fuzz` command that replays it), must pass every case, and must show in its
// outcome counters that it produced what it exists to produce. Ends with `N passed, N failed`.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { replayCommand, runTarget } from '../support/fuzz-engine.ts';
import { chooseSeed } from '../support/prng.ts';
import { TARGETS } from './targets.ts';

const seed = chooseSeed();
console.log(`fuzz budget: seed ${seed} (RXVIRT_SEED=${seed} replays this run)`);
let passed = 0, failed = 0;

for (const target of TARGETS) {
  test(`fuzz ${target.name}: ${target.budget} cases — ${target.summary}`, async () => {
    const report = await runTarget(target, { seed, cases: target.budget });
    passed += report.passed;
    failed += report.failed + (report.coverage ? 1 : 0);
    console.log(`${target.name}: ${report.cases} cases, ${report.passed} passed, ${report.failed} failed ` +
      `in ${(report.ms / 1000).toFixed(1)} s`);
    const lines = report.failures.map((f) => `#${f.caseIndex} seed=${f.seed}: ${f.message}\n    replay: ${replayCommand(f.target, f.seed)}`);
    assert.is(report.failed, 0, `${report.failed} failing cases:\n${lines.join('\n')}`);
    assert.is(report.cases, target.budget, 'every case of the budget ran');
    assert.is(report.coverage, null, `${report.coverage}`);
  });
}

test.after(() => {
  console.log(`${passed} passed, ${failed} failed`);
});

test.run();
