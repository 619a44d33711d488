// Split-virtqueue device-side throughput on one core: pop + pushUsed (publishing used.idx
// for every chain) + needsNotification per chain, for 1- and 3-descriptor chains, EVENT_IDX
// off and on, direct and indirect. The driver's refill (writing a full ring of avail
// entries and avail.idx) runs inside the timed loop, amortised over the batch; descriptor
// tables are built once. Run directly: `npx tsx bench/split-queue.ts [ms-per-case]`.

import { pathToFileURL } from 'node:url';
import { GuestMemory } from '../framework/guest-memory.ts';
import type { DescriptorChain } from '../framework/virtio/descriptor-chain.ts';
import { SplitQueue } from '../framework/virtio/split-queue.ts';
import { DriverQueue, type BufferSpec } from '../test/support/driver-queue.ts';

export interface SplitQueueBenchOptions {
  /** Timed milliseconds per case (after a warm-up of a fifth of it). Default 500. */
  durationMs?: number;
  /** Queue size. Default 256. */
  queueSize?: number;
}

export interface SplitQueueBenchResult {
  name: string;
  chainsPerSec: number;
}

interface Case {
  name: string;
  buffers: BufferSpec[];
  eventIdx: boolean;
  indirect: boolean;
  /** Per-chain device work beyond pop/push; returns the used length. */
  work?: (chain: DescriptorChain) => number;
}

const blkLike: BufferSpec[] = [{ data: new Uint8Array(16) }, { data: new Uint8Array(512) }, { writableLen: 1 }];

/** A virtio-blk-like request: parse the 16-byte header, write the status byte. */
const parseAndAck = (chain: DescriptorChain): number => {
  const r = chain.reader();
  r.u32(); // type
  r.skip(4);
  r.u64(); // sector
  const w = chain.writer();
  w.u8(0);
  return w.written;
};

const CASES: Case[] = [
  { name: '1 desc, flags', buffers: [{ writableLen: 64 }], eventIdx: false, indirect: false },
  { name: '1 desc, EVENT_IDX', buffers: [{ writableLen: 64 }], eventIdx: true, indirect: false },
  { name: '3 desc, flags', buffers: blkLike, eventIdx: false, indirect: false },
  { name: '3 desc, EVENT_IDX', buffers: blkLike, eventIdx: true, indirect: false },
  { name: '3 desc indirect, EVENT_IDX', buffers: blkLike, eventIdx: true, indirect: true },
  { name: '3 desc, EVENT_IDX, parse header + status', buffers: blkLike, eventIdx: true, indirect: false, work: parseAndAck },
];

function runCase(c: Case, size: number, durationMs: number): SplitQueueBenchResult {
  const mem = GuestMemory.allocate(4 << 20);
  const drv = new DriverQueue(mem, { size });
  const q = new SplitQueue(mem, drv.config({ eventIdx: c.eventIdx, indirect: c.indirect }));
  // Build as many chains as the table holds, once; each batch re-offers all of them.
  const heads: number[] = [];
  const per = c.indirect ? 1 : c.buffers.length;
  while (drv.freeDescriptors >= per) heads.push(drv.addChain(c.buffers, { indirect: c.indirect, publish: false }));
  const ring = drv.raw(drv.availRing, 4 + 2 * size);
  const avail = new Uint16Array(ring.buffer, ring.byteOffset, 2 + size);
  drv.setUsedEvent(0x8000); // EVENT_IDX: the driver asks for an interrupt now and then
  const work = c.work;
  let idx = 0;

  const batch = (): number => {
    for (let i = 0; i < heads.length; i++) avail[2 + ((idx + i) & (size - 1))] = heads[i]!;
    idx = (idx + heads.length) & 0xffff;
    Atomics.store(avail, 1, idx);
    let n = 0;
    let chain: DescriptorChain | null;
    while ((chain = q.pop()) !== null) {
      q.pushUsed(chain.head, work === undefined ? 0 : work(chain));
      if (q.needsNotification()) n++; // an irqfd write would go here
    }
    return n;
  };

  const run = (ms: number): number => {
    let chains = 0;
    const end = performance.now() + ms;
    do {
      for (let k = 0; k < 16; k++) {
        batch();
        chains += heads.length;
      }
    } while (performance.now() < end);
    return chains;
  };

  run(durationMs / 5);
  const t0 = performance.now();
  const chains = run(durationMs);
  const secs = (performance.now() - t0) / 1000;
  return { name: c.name, chainsPerSec: Math.round(chains / secs) };
}

export async function benchSplitQueue(opts: SplitQueueBenchOptions = {}): Promise<SplitQueueBenchResult[]> {
  const durationMs = opts.durationMs ?? 500;
  const size = opts.queueSize ?? 256;
  const out: SplitQueueBenchResult[] = [];
  for (const c of CASES) {
    out.push(runCase(c, size, durationMs));
    await new Promise((resolve) => setImmediate(resolve)); // stay friendly to a host event loop
  }
  return out;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const ms = Number(process.argv[2] ?? 500);
  const results = await benchSplitQueue({ durationMs: ms });
  const w = Math.max(...results.map((r) => r.name.length));
  console.log(`${'case'.padEnd(w)}  ${'chains/s'.padStart(12)}  ${'ns/chain'.padStart(9)}`);
  for (const r of results) {
    console.log(`${r.name.padEnd(w)}  ${r.chainsPerSec.toLocaleString('en-US').padStart(12)}  ${(1e9 / r.chainsPerSec).toFixed(0).padStart(9)}`);
  }
}
