// Benchmark harness: medians and verdicts, alternation order, the table, the charts, memory
// accounting that leaves guest RAM out, and `npm run bench` end to end on its cheapest figure.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { margin, renderCharts } from '../../bench/chart.ts';
import { alternate, figure, formatTable, median, percentile, skipped, type Report } from '../../bench/harness.ts';
import { memoryUse } from '../../bench/memory.ts';
import * as libc from '../../native/libc.ts';
import { Prng, chooseSeed } from '../support/prng.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

test('median and nearest-rank percentile match a sorted-array model on random data', () => {
  const rng = new Prng(chooseSeed());
  for (let round = 0; round < 50; round++) {
    const xs = Array.from({ length: rng.int(1, 40) }, () => rng.int(0, 1000));
    const sorted = [...xs].sort((a, b) => a - b);
    const n = sorted.length;
    const expected = n % 2 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2;
    assert.is(median(xs), expected);
    assert.is(percentile(sorted, 0.5), sorted[Math.ceil(n / 2) - 1]);
    assert.is(percentile(sorted, 1), sorted[n - 1]);
    assert.ok(sorted.filter((x) => x <= percentile(sorted, 0.99)).length >= 0.99 * n, 'p99 covers 99% of samples');
  }
  assert.ok(Number.isNaN(median([])));
});

test('alternate: sides take turns going first, and each side gets its own results in round order', async () => {
  const order: string[] = [];
  let a = 0;
  let b = 100;
  const [as, bs] = await alternate(4, [async () => { order.push('A'); return a++; }, async () => { order.push('B'); return b++; }]);
  assert.equal(order.join(''), 'ABBAABBA');
  assert.equal(as, [0, 1, 2, 3]);
  assert.equal(bs, [100, 101, 102, 103]);
});

test('figure: medians of the samples, ratio ours/peer, verdict against the target in either direction', () => {
  const latency = (ours: number[], floor: number[]) => figure({
    group: 'g', name: 'rt', unit: 'us', better: 'lower', ours, peer: { label: 'C', samples: floor }, target: { on: 'ratio', op: '<=', bound: 2 },
  });
  const ok = latency([9, 50, 10], [5, 6, 4]);
  assert.is(ok.ours!.value, 10, 'an outlier run does not move the median');
  assert.is(ok.peer!.value, 5);
  assert.is(ok.ratio, 2);
  assert.is(ok.verdict, 'pass', 'exactly on the bound meets it');
  assert.is(latency([11, 11, 11], [5, 5, 5]).verdict, 'miss');
  const rate = (v: number) => figure({ group: 'g', name: 'q', unit: 'chains/s', better: 'higher', ours: [v], target: { on: 'value', op: '>=', bound: 1e6 } });
  assert.is(rate(2e6).verdict, 'pass');
  assert.is(rate(0.5e6).verdict, 'miss');
  assert.is(figure({ group: 'g', name: 'x', unit: 'MiB', better: 'lower', ours: [3] }).verdict, 'info');
  assert.is(rate(NaN).verdict, 'miss', 'a broken measurement never passes');
});

test('table: one row per figure, ratio and target shown, SKIP rows carry their reason', () => {
  const text = formatTable([
    figure({ group: 'notify', name: 'rt p50', unit: 'us', better: 'lower', ours: [9], peer: { label: 'C floor', samples: [6] }, target: { on: 'ratio', op: '<=', bound: 2 } }),
    skipped('vhost-user-blk', 'seq read', 'qemu-storage-daemon not installed'),
  ]);
  const lines = text.split('\n');
  assert.is(lines.length, 3);
  assert.match(lines[1]!, /notify: rt p50 .*9\.00 us .*6\.00 us \(C floor\) .*1\.50x .*<= 2x .*ok/);
  assert.match(lines[2]!, /vhost-user-blk: seq read .*SKIP: qemu-storage-daemon not installed/);
});

test('charts: one SVG per group plus a summary; text is escaped; margins read the target direction', () => {
  const figures = [
    figure({ group: 'notify', name: 'p50 <fast>', unit: 'us', better: 'lower', ours: [3], peer: { label: 'C & co', samples: [3] }, target: { on: 'ratio', op: '<=', bound: 2 } }),
    figure({ group: 'split-queue', name: '1 desc', unit: 'chains/s', better: 'higher', ours: [4e6], target: { on: 'value', op: '>=', bound: 1e6 } }),
    skipped('memory', 'rss', 'no qemu'),
  ];
  assert.is(margin(figures[0]!), 2, 'ratio 1 against "<= 2x" is twice as good as needed');
  assert.is(margin(figures[1]!), 4);
  assert.is(margin(figures[2]!), undefined);
  const report: Report = { date: '2026-11-26T00:00:00.000Z', machine: { cpu: 'cpu', cores: 2, memoryGiB: 1, kernel: 'k', node: 'v20', kvm: 'kvm', qemu: null }, load: { start: 0.5, end: 1 }, quick: true, seconds: 1, figures };
  const charts = renderCharts(report);
  assert.equal([...charts.keys()].sort(), ['memory.svg', 'notify.svg', 'split-queue.svg', 'summary.svg']);
  for (const [name, svg] of charts) {
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/, name);
    assert.ok(svg.trimEnd().endsWith('</svg>'), name);
    assert.not.match(svg, /<fast>|C & co/, `${name}: raw markup in text`);
  }
  assert.match(charts.get('notify.svg')!, /p50 &lt;fast&gt;/);
  assert.match(charts.get('memory.svg')!, /SKIP: no qemu/);
});

test('memoryUse: a mapping classed as guest RAM is left out of RSS and counted apart', () => {
  const size = 16 << 20;
  const fd = libc.memfdCreate('rxvirt-test-guest-ram', libc.MFD_CLOEXEC);
  libc.ftruncate(fd, size);
  const addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0);
  try {
    new Uint8Array(libc.view(addr, size)).fill(1); // make every page resident
    const isGuest = (m: { start: bigint; path: string }) => m.start === addr;
    const all = memoryUse(process.pid, () => false);
    const split = memoryUse(process.pid, isGuest);
    assert.ok(split.processes >= 1); // tsx may have an esbuild service child at any moment
    assert.is(split.guestKiB, size / 1024, 'the whole guest mapping is resident and counted as guest');
    assert.ok(Math.abs(all.rssKiB - split.rssKiB - size / 1024) < 2048, `rss ${all.rssKiB} vs ${split.rssKiB}`);
  } finally {
    libc.munmap(addr, size);
    libc.close(fd);
  }
});

test('npm run bench --quick --only split-queue: prints the table, writes JSON, Markdown and SVGs', () => {
  const out = mkdtempSync(join(tmpdir(), 'rxvirt-bench-test-'));
  try {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/main.ts', '--quick', '--only', 'split-queue', '--out', out], { cwd: root, encoding: 'utf8', timeout: 60_000 });
    assert.is(r.status, 0, r.stderr);
    assert.match(r.stdout, /split-queue: 1 desc, flags/);
    const report = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as Report;
    assert.is(report.quick, true);
    assert.is(report.figures.length, 6, 'six split-queue cases');
    for (const f of report.figures) {
      assert.is(f.group, 'split-queue');
      assert.ok(f.ours!.value > 0);
      assert.is(f.verdict, f.ours!.value >= 1e6 ? 'pass' : 'miss');
    }
    assert.ok(existsSync(join(out, 'summary.svg')) && existsSync(join(out, 'split-queue.svg')) && existsSync(join(out, 'latest.md')));
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('npm run bench: a bad --only is a one-line usage error, exit 2', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/main.ts', '--only', 'warp-drive'], { cwd: root, encoding: 'utf8', timeout: 30_000 });
  assert.is(r.status, 2);
  assert.match(r.stderr.split('\n')[0]!, /^bench: --only 'warp-drive' is not a benchmark \(expected one of: split-queue, .*memory\)$/);
});

test.run();
