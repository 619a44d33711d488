// The device guide quotes devices/rng.ts whole; keep the two identical, and keep the
// guide's promise: a device defined outside the framework works without touching it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { VirtioDevice, queue } from '../../framework/virtio/device.ts';
import { DeviceHarness } from '../support/device-harness.ts';

const root = new URL('../../', import.meta.url);

test('the guide quotes the current rng device verbatim', () => {
  const guide = readFileSync(new URL('docs/writing-a-device.md', root), 'utf8');
  const rng = readFileSync(new URL('devices/rng.ts', root), 'utf8');
  assert.ok(guide.includes('```ts\n' + rng + '```'), 'docs/writing-a-device.md is out of date with devices/rng.ts');
});

test('a device written as the guide says works with no framework changes', async () => {
  /** Answers each request with the byte count it read, as a little-endian u32. */
  class CountingDevice extends VirtioDevice {
    readonly type = 0x3f;
    readonly queues = [queue('requests', 64, (q) => q.serve((chain) => {
      chain.writer().u32(chain.readableBytes);
      return 4;
    }))];
  }
  const h = new DeviceHarness(new CountingDevice());
  h.submit(0, [{ data: new Uint8Array(10) }, { data: new Uint8Array(5) }, { writableLen: 4 }]);
  const [done] = await h.waitUsed(0, 1);
  assert.is(done!.len, 4);
  assert.is(new DataView(done!.written.buffer, done!.written.byteOffset).getUint32(0, true), 15);
});

test.run();
