// Queue notification round trip: a driver kicks an ioeventfd-style eventfd, the device's JS
// handler runs (EventFd.events() -> VirtioMmioTransport.notify -> DeviceQueue drain -> handler
// -> used ring -> EventFdDoorbell), and the driver, blocked on the irqfd-style eventfd, wakes.
// The driver is a C process (bench/c/notify-roundtrip.c) sharing the guest memory (a memfd)
// and both eventfds; the floor is the same driver against a device written in C in a second
// process. Both run alternated, several rounds; figures are medians of per-round p50/p99.
// Placement decides the result on a nested VM (a cross-CPU wake-up is an IPI, ~5x dearer than
// a same-CPU one), so both sides are pinned alike: driver and device on one CPU, then on two.
// Run directly: `npx tsx bench/notify-roundtrip.ts [--quick]`.

import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import { pathToFileURL } from 'node:url';
import { EventFdDoorbell } from '../framework/doorbell.ts';
import { EventFd } from '../framework/eventfd.ts';
import { GuestMemory } from '../framework/guest-memory.ts';
import { MmioBus } from '../framework/mmio-bus.ts';
import { featureBits, STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, VIRTIO_ID_ENTROPY } from '../framework/virtio/constants.ts';
import { VirtioDevice, queue } from '../framework/virtio/device.ts';
import * as libc from '../native/libc.ts';
import { VirtioMmioTransport } from '../transports/virtio-mmio/mmio-transport.ts';
import { MmioDriver } from '../test/support/mmio-driver.ts';
import { alternate, figure, formatTable, skipped, type Figure } from './harness.ts';
import { compileC, hasCommand, run, tail } from './tools.ts';

const GROUP = 'notify';
/** Must match MEM_SIZE in notify-roundtrip.c. */
const MEM_SIZE = 1 << 20;
const QUEUE_SIZE = 256;
const BUF_LEN = 64;
const TARGET = { on: 'ratio', op: '<=', bound: 2 } as const;

export interface NotifyOptions {
  rounds?: number;
  /** Round trips measured per run (after max(2000, count / 10) unmeasured ones; each side also gets one whole warm-up run). */
  count?: number;
  log?: (line: string) => void;
}

/** Round trips run before the measured ones in each run. */
const warmupOf = (count: number) => Math.max(2_000, Math.ceil(count / 10));

interface Sample {
  p50: number;
  p99: number;
}

/** A device whose only queue hands every chain straight back: the handler is all notification path. */
class ReturnDevice extends VirtioDevice {
  readonly type = VIRTIO_ID_ENTROPY;
  readonly queues = [queue('requestq', QUEUE_SIZE, (q) => q.serve(() => 0))];
}

function parseSample(stdout: string): Sample {
  const [p50, p99] = stdout.trim().split(/\s+/).map(Number);
  if (!Number.isFinite(p50) || !Number.isFinite(p99)) throw new Error(`notify-roundtrip printed '${stdout.trim()}'`);
  return { p50: p50! / 1000, p99: p99! / 1000 };
}

interface Placement {
  name: string;
  driverCpu: number;
  deviceCpu: number;
}

/**
 * Pins this process's main thread (where the device's JS runs) to `cpu` with taskset; returns
 * the undo. Only the main thread moves: libuv's pool and V8's helpers stay where they were.
 */
function pinMainThread(cpu: number): () => void {
  const before = /affinity mask:\s*([0-9a-f,]+)/.exec(execFileSync('taskset', ['-p', String(process.pid)], { encoding: 'utf8' }))?.[1];
  if (!before) throw new Error('taskset printed no affinity mask');
  execFileSync('taskset', ['-p', '-c', String(cpu), String(process.pid)], { stdio: 'ignore' });
  return () => execFileSync('taskset', ['-p', before, String(process.pid)], { stdio: 'ignore' });
}

/** One run: the C driver against rxvirt's device path in this process. */
async function rxvirtRun(binary: string, count: number, at: Placement): Promise<Sample> {
  const memfd = libc.memfdCreate('rxvirt-bench-notify', libc.MFD_CLOEXEC, 'bench guest memory');
  let address = 0n;
  const kick = EventFd.create();
  const call = EventFd.create();
  const doorbell = new EventFdDoorbell(call, 'edge');
  try {
    libc.ftruncate(memfd, MEM_SIZE, 'bench guest memory');
    address = libc.mmap(MEM_SIZE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, memfd, 0, 'bench guest memory');
    const mem = new GuestMemory([{ base: 0, size: MEM_SIZE, bytes: new Uint8Array(libc.view(address, MEM_SIZE)), hostAddress: address }]);
    const transport = new VirtioMmioTransport(new ReturnDevice(), { base: 0xd000_0000, irq: 5, memory: () => mem, doorbell });
    const bus = new MmioBus();
    bus.register(transport.base, transport.size, transport, 'bench device');
    const driver = new MmioDriver(bus, transport.base, mem);
    // What a Linux guest negotiates for such a device: VERSION_1 and EVENT_IDX.
    await driver.init({ accept: (offered) => offered & featureBits(VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX), queueSizes: [QUEUE_SIZE], queueArea: MEM_SIZE });
    const q = driver.queues[0]!;
    const data = Math.ceil(q.dataStart / 4096) * 4096;
    if (data + BUF_LEN * QUEUE_SIZE > MEM_SIZE) throw new Error('notify bench: rings leave no room for buffers');
    // The ioeventfd wiring a VM runtime makes for a virtio-mmio QueueNotify registration.
    const kicks = transport.notifyRegistrations().map((r) => kick.events().subscribe(() => transport.notify(r.queueIndex)));
    const unpin = pinMainThread(at.deviceCpu);
    try {
      const r = await run(binary, [
        'driver', '3', '4', '5', String(QUEUE_SIZE), String(q.descTable), String(q.availRing), String(q.usedRing), String(data),
        String(warmupOf(count)), String(count), String(at.driverCpu),
      ], { stdio: ['ignore', 'pipe', 'pipe', memfd, kick.fd, call.fd], timeoutMs: 60_000 + count });
      if (r.code !== 0) throw new Error(`notify driver (rxvirt device) failed: ${r.timedOut ? 'timed out' : tail(r.stderr)}`);
      if (transport.state.status & STATUS_DEVICE_NEEDS_RESET) throw new Error('notify bench: the device asked for a reset');
      return parseSample(r.stdout);
    } finally {
      unpin();
      for (const k of kicks) k.unsubscribe();
      await driver.reset();
    }
  } finally {
    doorbell.close();
    kick.close();
    call.close();
    if (address !== 0n) libc.munmap(address, MEM_SIZE, 'bench guest memory');
    libc.close(memfd, 'bench guest memory');
  }
}

async function floorRun(binary: string, count: number, at: Placement): Promise<Sample> {
  const r = await run(binary, ['floor', String(QUEUE_SIZE), String(warmupOf(count)), String(count), String(at.driverCpu), String(at.deviceCpu)], { timeoutMs: 60_000 + count });
  if (r.code !== 0) throw new Error(`notify floor failed: ${r.timedOut ? 'timed out' : tail(r.stderr)}`);
  return parseSample(r.stdout);
}

export async function benchNotify(options: NotifyOptions = {}): Promise<Figure[]> {
  const rounds = options.rounds ?? 5;
  const count = options.count ?? 20_000;
  const placements: Placement[] = [{ name: 'same CPU', driverCpu: 0, deviceCpu: 0 }];
  if (cpus().length >= 2) placements.push({ name: 'cross CPU', driverCpu: 0, deviceCpu: 1 });
  const names = placements.flatMap((p) => [`${p.name}: round trip p50`, `${p.name}: round trip p99`]);
  const shape = { unit: 'us', better: 'lower', target: TARGET } as const;
  const missing = !hasCommand('gcc') ? 'gcc not installed (Debian package gcc)' : !hasCommand('taskset') ? 'taskset not installed (Debian package util-linux)' : null;
  if (missing) return names.map((n) => skipped(GROUP, n, missing, shape));
  let binary: string;
  try {
    binary = compileC('notify-roundtrip');
  } catch (err) {
    return names.map((n) => skipped(GROUP, n, (err as Error).message, shape));
  }
  const figures: Figure[] = [];
  for (const at of placements) {
    const [ours, floor] = await alternate(rounds, [() => rxvirtRun(binary, count, at), () => floorRun(binary, count, at)], (s, r) =>
      options.log?.(`notify ${at.name}: ${r < 0 ? 'warm-up' : `round ${r + 1}/${rounds}`} ${s === 0 ? 'rxvirt' : 'C floor'}`), { warmup: true });
    const note = `driver (C process) on CPU ${at.driverCpu}, device on CPU ${at.deviceCpu}; ${count} round trips per run, ${rounds} runs per side alternated; EVENT_IDX on`;
    for (const p of ['p50', 'p99'] as const) {
      figures.push(figure({
        group: GROUP, name: `${at.name}: round trip ${p}`, unit: 'us', better: 'lower', target: TARGET, note,
        ours: ours!.map((s) => s[p]), peer: { label: 'C floor', samples: floor!.map((s) => s[p]) },
      }));
    }
  }
  return figures;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes('--quick');
  console.log(formatTable(await benchNotify({ rounds: quick ? 3 : 5, count: quick ? 5_000 : 20_000, log: console.error })));
}
