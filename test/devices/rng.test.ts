import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RngDevice } from '../../devices/rng.ts';
import { VIRTIO_ID_ENTROPY } from '../../framework/virtio/constants.ts';
import { DeviceHarness } from '../support/device-harness.ts';

const nonZero = (b: Uint8Array) => b.some((x) => x !== 0);

test('a writable buffer comes back full of random bytes, used len exact', async () => {
  const h = new DeviceHarness(new RngDevice());
  assert.is(h.device.type, VIRTIO_ID_ENTROPY);
  const head = h.submit(0, [{ writableLen: 64 }]);
  const [used] = await h.waitUsed(0, 1);
  assert.is(used!.id, head);
  assert.is(used!.len, 64);
  assert.ok(nonZero(used!.written.subarray(0, 32)) && nonZero(used!.written.subarray(32)), 'both halves filled');
});

test('successive requests get different bytes', async () => {
  const h = new DeviceHarness(new RngDevice());
  h.submit(0, [{ writableLen: 32 }]);
  h.submit(0, [{ writableLen: 32 }]);
  const used = await h.waitUsed(0, 2);
  assert.is(used.length, 2);
  assert.not.equal(used[0]!.written, used[1]!.written);
});

test('a chain of several buffers is filled across all of them; readable buffers are left alone', async () => {
  const h = new DeviceHarness(new RngDevice());
  const head = h.submit(0, [{ data: new Uint8Array(8) }, { writableLen: 3 }, { writableLen: 100 }, { writableLen: 1 }]);
  const [used] = await h.waitUsed(0, 1);
  assert.is(used!.id, head);
  assert.is(used!.len, 104);
  assert.ok(nonZero(used!.written.subarray(3, 103)));
});

test('a huge request is capped at 64 KiB (the spec lets the device fill less)', async () => {
  const h = new DeviceHarness(new RngDevice());
  h.submit(0, [{ writableLen: 40000 }, { writableLen: 40000 }]);
  const [used] = await h.waitUsed(0, 1);
  assert.is(used!.len, 65536);
  assert.ok(nonZero(used!.writable.subarray(65536 - 64, 65536)), 'filled up to the cap');
  assert.not.ok(nonZero(used!.writable.subarray(65536)), 'nothing past the cap');
});

test('requests posted before and after a kick are all served, one interrupt-worthy batch at a time', async () => {
  const h = new DeviceHarness(new RngDevice());
  for (let i = 0; i < 10; i++) h.queues[0]!.addChain([{ writableLen: 16 }]);
  h.kick(0);
  const used = await h.waitUsed(0, 10);
  assert.is(used.length, 10);
  assert.ok(used.every((u) => u.len === 16));
  assert.ok(h.usedInterrupts[0]! >= 1);
});

test.run();
