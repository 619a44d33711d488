// Resource hygiene: creating, running and closing VMs leaves nothing behind. After a warm-up
// (a parked vCPU thread, JIT code and heap pages), 20 more VMs bring the fd count and the
// number of threads back to where they were, and the mappings to within the few pages V8
// maps and unmaps on its own. Parked vCPU threads never keep the process alive.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync, readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { EventFd } from '../../framework/eventfd.ts';
import { kvmSkipReason, MMIO_BASE, MMIO_SEG, TestWindow, tinyVm } from './tiny-vm.ts';

const skip = kvmSkipReason();
if (skip) console.log(`SKIP: ${skip}`);
const kvmTest = skip ? test.skip : test;

const fds = () => readdirSync('/proc/self/fd').length;
const maps = () => readFileSync('/proc/self/maps', 'utf8').split('\n').filter(Boolean).length;
const threads = () => readdirSync('/proc/self/task').length;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Counts after a full GC, so heap growth and shrinkage do not show up as mappings. */
async function settle(): Promise<{ fds: number; maps: number; threads: number }> {
  await new Promise((r) => setTimeout(r, 50));
  gc();
  return { fds: fds(), maps: maps(), threads: threads() };
}

/** One full life: a VM with an ioeventfd and a level irqfd runs a guest to its end, then closes. */
async function oneVm(): Promise<void> {
  const window = new TestWindow();
  const { vm } = tinyVm('notify', { bits: 16, symbols: { MMIO_SEG, NOTIFY: 0x50, COUNT: 3 } });
  const notify = EventFd.create();
  const irq = EventFd.create();
  try {
    vm.mmio.register(MMIO_BASE, 0x100, window, 'test window');
    vm.addIoEventFd({ address: MMIO_BASE + 0x50, length: 4, datamatch: 0 }, notify);
    vm.addIrqFd(5, irq, { level: true });
    await vm.start();
    await window.nextWrite(0x0f);
  } finally {
    await vm.close();
    notify.close();
    irq.close();
  }
}

kvmTest('20 VMs created, run and closed: fds, mappings and threads return to the baseline', async () => {
  for (let i = 0; i < 10; i++) await oneVm(); // warm-up: JIT code and heap pages settle too
  const before = await settle();
  for (let i = 0; i < 20; i++) await oneVm();
  const after = await settle();
  assert.equal([after.fds, after.threads], [before.fds, before.threads], 'fds and threads');
  // V8 may map or unmap heap or code pages of its own at any time (more of them on a loaded
  // machine, where GC timing shifts); a leak scales with the VMs: one mapping per VM shows as
  // +20 in every further batch, while V8's own pages stop growing.
  if (Math.abs(after.maps - before.maps) <= 8) return;
  for (let i = 0; i < 20; i++) await oneVm();
  const again = await settle();
  assert.ok(Math.abs(again.maps - after.maps) <= 8,
    `mappings: ${before.maps} before, ${after.maps} after 20 VMs, ${again.maps} after 20 more`);
});

function runChild(...args: string[]): Promise<{ code: number | null; report: Record<string, number> }> {
  const script = fileURLToPath(new URL('./exit-child.ts', import.meta.url));
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', 'tsx', script, ...args], { timeout: 20_000 }, (error, stdout) => {
      if (error && error.killed) reject(new Error('the child did not exit by itself'));
      else resolve({ code: error ? (error.code as number) : 0, report: JSON.parse(stdout.trim().split('\n').pop() || '{}') });
    });
  });
}

kvmTest('a parked vCPU thread never keeps the process alive; shutting the pool down leaves no vCPU thread', async () => {
  const parked = await runChild();
  assert.is(parked.code, 0, 'exited on its own with a parked thread');
  assert.is(parked.report.parked, 1);
  assert.ok(parked.report.during! > parked.report.before!, 'the vCPU ran on a thread of its own');
  const shutdown = await runChild('shutdown');
  assert.is(shutdown.code, 0);
  assert.equal([shutdown.report.idle, shutdown.report.after], [0, shutdown.report.before], 'back to the threads before the VM');
});

kvmTest('a VM whose creation fails (bad RAM layout) leaks no fd', () => {
  tinyVm('halt', { bits: 16 }).vm.close(); // warm the hypervisor fd
  const before = fds();
  assert.throws(() => tinyVm('halt', { bits: 16 }, { memory: [{ base: 0, size: 0x10000 }, { base: 0x8000, size: 0x10000 }] }), /overlaps/);
  assert.is(fds(), before);
});

test.run();
