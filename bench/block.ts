// virtio-blk request throughput on the direct device path (no transport, no vCPU):
// 4 KiB random reads from a page-cache-hot raw image through the device harness, at
// queue depth 1 (latency bound) and 64 (thread-pool bound). The driver-side ring work
// of the harness is inside the timed loop, as a guest's would be on its own CPU.
// Run directly: `npx tsx bench/block.ts`.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BlockDevice } from '../devices/block.ts';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN } from '../devices/block-request.ts';
import { DeviceHarness } from '../test/support/device-harness.ts';

export interface BenchResult {
  name: string;
  value: number;
  unit: string;
}

const IMAGE_BYTES = 64 << 20;
const REQUEST_BYTES = 4096;

export async function benchBlock(options: { seconds?: number } = {}): Promise<BenchResult[]> {
  const seconds = options.seconds ?? 2;
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-bench-blk-'));
  const path = join(dir, 'disk.img');
  writeFileSync(path, new Uint8Array(IMAGE_BYTES).fill(0x5a));
  readFileSync(path); // page-cache hot
  try {
    const results: BenchResult[] = [];
    for (const depth of [1, 64]) {
      const device = BlockDevice.open(path, { readOnly: true });
      try {
        const perSec = await readLoop(device, depth, seconds);
        results.push({ name: `blk 4k read qd${depth}`, value: Math.round(perSec), unit: 'req/s' });
      } finally {
        device.close();
      }
    }
    return results;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function readLoop(device: BlockDevice, depth: number, seconds: number): Promise<number> {
  const h = new DeviceHarness(device, { memorySize: 64 << 20 });
  const dq = h.queues[0]!;
  const sectors = IMAGE_BYTES / 512 - REQUEST_BYTES / 512;
  const headers = Array.from({ length: 1024 }, (_, i) => {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setUint32(0, VIRTIO_BLK_T_IN, true);
    v.setUint32(8, Math.floor(((i * 2654435761) >>> 0) / 2 ** 32 * sectors) & ~7, true); // spread, 4 KiB aligned
    return b;
  });
  let next = 0;
  const submit = (n: number) => {
    for (let i = 0; i < n; i++) dq.addChain([{ data: headers[next++ & 1023]! }, { writableLen: REQUEST_BYTES + 1 }]);
    h.kick(0);
  };
  /** Keep `depth` requests in flight until `until`, then drain; returns completions per second. */
  const run = async (until: number): Promise<number> => {
    const start = performance.now();
    let done = 0;
    submit(depth);
    while (performance.now() < until || dq.chainsInFlight > 0) {
      if (dq.usedIdx() === seen) {
        await new Promise((r) => setImmediate(r));
        continue;
      }
      const used = dq.takeUsed();
      seen = dq.usedIdx();
      for (const u of used) {
        if (u.written[REQUEST_BYTES] !== VIRTIO_BLK_S_OK) throw new Error(`bench read failed: status ${u.written[REQUEST_BYTES]}`);
      }
      done += used.length;
      if (performance.now() < until) submit(used.length);
    }
    return done / ((performance.now() - start) / 1000);
  };
  let seen = dq.usedIdx();
  await run(performance.now() + 200); // warm-up: JIT, thread pool, page cache
  return run(performance.now() + seconds * 1000);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const r of await benchBlock()) console.log(`${r.name.padEnd(24)} ${String(r.value).padStart(10)} ${r.unit}`);
}
