// Test runner: runs every test/**/*.test.ts file with uvu, one node process per
// file (native fds, workers and signal handlers stay isolated), two at a time,
// and ends with the plain summary line "N passed, N failed, N skipped".
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const filter = process.argv.slice(2);
const files = [];
(function walk(dir) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.test.ts')) files.push(p);
  }
})(join(root, 'test'));
const selected = files.filter((f) => filter.length === 0 || filter.some((s) => f.includes(s)));
if (selected.length === 0) {
  console.error(`test/run.mjs: no test file matches ${filter.join(' ')}`);
  process.exit(2);
}

let passed = 0, failed = 0, skipped = 0;
const jobs = Number(process.env.RXVIRT_TEST_JOBS ?? 2);

function runFile(file) {
  return new Promise((resolve) => {
    const name = relative(root, file);
    const child = spawn(process.execPath, ['--import', 'tsx', file], {
      cwd: root, env: { ...process.env, FORCE_COLOR: '0' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const started = Date.now();
    child.on('close', (code, signal) => {
      const total = Number(/Total:\s+(\d+)/.exec(out)?.[1] ?? NaN);
      const ok = Number(/Passed:\s+(\d+)/.exec(out)?.[1] ?? NaN);
      const skip = Number(/Skipped:\s+(\d+)/.exec(out)?.[1] ?? 0);
      const secs = ((Date.now() - started) / 1000).toFixed(1);
      process.stdout.write(`\n### ${name} (${secs} s)\n${out.trimEnd()}\n`);
      if (Number.isNaN(total) || Number.isNaN(ok)) {
        failed += 1;
        process.stdout.write(`### ${name}: no uvu summary (exit ${code ?? signal}): counted as 1 failure\n`);
      } else {
        passed += ok; skipped += skip;
        const f = total - ok;
        failed += f > 0 ? f : (code === 0 ? 0 : 1);
      }
      resolve();
    });
  });
}

const queue = [...selected];
await Promise.all(Array.from({ length: Math.min(jobs, queue.length) }, async () => {
  while (queue.length) await runFile(queue.shift());
}));
console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed === 0 ? 0 : 1);
