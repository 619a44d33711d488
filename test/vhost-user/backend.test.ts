// vhost-user back-end against the TypeScript front-end: negotiation, rng and block I/O
// through real kick/call eventfds and memfd guest memory, ring enable semantics,
// GET/SET_VRING_BASE stop and resume, memory-table replacement, and reconnection.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { lstatSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EMPTY, firstValueFrom } from 'rxjs';
import { BlockDevice } from '../../devices/block.ts';
import { ConsoleDevice } from '../../devices/console.ts';
import { RngDevice } from '../../devices/rng.ts';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, featureBits } from '../../framework/virtio/constants.ts';
import type { VirtioDevice } from '../../framework/virtio/device.ts';
import * as libc from '../../native/libc.ts';
import { unixListen } from '../../native/unix-socket.ts';
import { VhostUserBackend } from '../../transports/vhost-user/backend.ts';
import {
  PROTOCOL_F_CONFIG, PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK, PROTOCOL_F_RESET_DEVICE, Request,
  VHOST_USER_F_PROTOCOL_FEATURES, bit, encodeConfig, encodeMemoryTable, encodeVringState,
} from '../../transports/vhost-user/protocol.ts';
import { DriverQueue } from '../support/driver-queue.ts';
import { FrontendMemory, VhostUserFrontend, kickAndCollect, nextCall } from '../support/vhost-user-frontend.ts';

const dir = mkdtempSync(join(tmpdir(), 'rxvirt-vu-'));
let counter = 0;

interface Session {
  backend: VhostUserBackend;
  frontend: VhostUserFrontend;
  memory: FrontendMemory;
  closes: string[];
  done(): Promise<void>;
}

async function session(device: VirtioDevice, memorySize = 1 << 20): Promise<Session> {
  const closes: string[] = [];
  const backend = new VhostUserBackend(device, {
    socketPath: join(dir, `s${counter++}.sock`),
    onConnectionClosed: (reason) => closes.push(reason),
  });
  backend.listen();
  const frontend = VhostUserFrontend.connect(backend.socketPath);
  const memory = FrontendMemory.create(memorySize);
  return {
    backend, frontend, memory, closes,
    async done() {
      frontend.close();
      await backend.close();
      memory.close();
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('GET_FEATURES offers the device and ring features plus VHOST_USER_F_PROTOCOL_FEATURES', async () => {
  const s = await session(new RngDevice());
  try {
    const features = await s.frontend.getFeatures();
    assert.ok(features & bit(VHOST_USER_F_PROTOCOL_FEATURES));
    assert.is(features & featureBits(VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC),
      featureBits(VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC));
    // rng has no config space: CONFIG is not offered (QEMU warns about an unused CONFIG).
    assert.is(await s.frontend.getProtocolFeatures(), bit(PROTOCOL_F_MQ) | bit(PROTOCOL_F_REPLY_ACK) | bit(PROTOCOL_F_RESET_DEVICE));
    await s.frontend.negotiate();
    assert.is(await s.frontend.getQueueNum(), 1);
    assert.is(s.backend.state.driverFeatures & featureBits(VIRTIO_F_VERSION_1), featureBits(VIRTIO_F_VERSION_1));
  } finally {
    await s.done();
  }
});

test('GET_QUEUE_NUM reports every queue of the device', async () => {
  const s = await session(new ConsoleDevice({ input$: EMPTY, output: () => {}, close: () => {} }));
  try {
    await s.frontend.negotiate();
    assert.is(await s.frontend.getQueueNum(), 2);
  } finally {
    await s.done();
  }
});

test('rng: buffers posted on the ring come back filled with random bytes and the call fd fires', async () => {
  const s = await session(new RngDevice());
  try {
    await s.frontend.negotiate();
    await s.frontend.setMemTable([s.memory]);
    const q = new DriverQueue(s.memory.guest, { size: 16 });
    const ring = await s.frontend.setupRing(0, q, s.memory);
    const heads = [q.addChain([{ writableLen: 64 }]), q.addChain([{ writableLen: 32 }, { writableLen: 32 }])];
    const used = await kickAndCollect(q, ring, 2);
    assert.equal(used.map((u) => u.id).sort(), [...heads].sort());
    assert.equal(used.map((u) => u.len), [64, 64]);
    assert.ok(used.every((u) => u.written.some((b) => b !== 0)), 'random bytes, not zeros');
    assert.not.equal(used[0]!.written, used[1]!.written);
    assert.equal(s.closes, []);
  } finally {
    await s.done();
  }
});

test('with protocol features a ring stays disabled until SET_VRING_ENABLE', async () => {
  const s = await session(new RngDevice());
  try {
    await s.frontend.negotiate();
    await s.frontend.setMemTable([s.memory]);
    const q = new DriverQueue(s.memory.guest, { size: 8 });
    const ring = await s.frontend.setupRing(0, q, s.memory, { enable: false });
    q.addChain([{ writableLen: 16 }]);
    ring.kick.signal();
    await sleep(50);
    assert.equal(q.takeUsed(), [], 'a disabled ring is not processed');
    const called = nextCall(ring.call);
    await s.frontend.acked(Request.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 1 }));
    await called;
    assert.equal(q.takeUsed().map((u) => u.len), [16]);
    // Disabled again: no more processing.
    await s.frontend.acked(Request.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 0 }));
    q.addChain([{ writableLen: 16 }]);
    ring.kick.signal();
    await sleep(50);
    assert.equal(q.takeUsed(), []);
  } finally {
    await s.done();
  }
});

test('without protocol features a ring starts enabled', async () => {
  const s = await session(new RngDevice());
  try {
    await s.frontend.negotiate({ protocolFeatures: false });
    s.frontend.send(Request.SET_MEM_TABLE, encodeMemoryTable([s.memory.region()]), { fds: [s.memory.fd] });
    const q = new DriverQueue(s.memory.guest, { size: 8 });
    const ring = await s.frontend.setupRing(0, q, s.memory, { enable: false });
    q.addChain([{ writableLen: 8 }]);
    assert.equal((await kickAndCollect(q, ring, 1)).map((u) => u.len), [8]);
  } finally {
    await s.done();
  }
});

test('GET_VRING_BASE stops the ring at its position; SET_VRING_BASE resumes from it', async () => {
  const s = await session(new RngDevice());
  try {
    await s.frontend.negotiate();
    await s.frontend.setMemTable([s.memory]);
    const q = new DriverQueue(s.memory.guest, { size: 8 });
    let ring = await s.frontend.setupRing(0, q, s.memory);
    for (let round = 0; round < 3; round++) {
      // three rounds of three chains: 9 > size, so the indices wrap the ring
      for (let i = 0; i < 3; i++) q.addChain([{ writableLen: 4 }]);
      assert.is((await kickAndCollect(q, ring, 3)).length, 3);
    }
    assert.is(await s.frontend.getVringBase(0), 9);

    // Stopped: buffers posted now stay unused, even when the old kick fd is written.
    const pending = q.addChain([{ writableLen: 4 }]);
    ring.kick.signal();
    await sleep(50);
    assert.equal(q.takeUsed(), []);
    assert.is(await s.frontend.getVringBase(0), 9, 'a stopped ring reports the same position');

    ring = await s.frontend.setupRing(0, q, s.memory, { base: 9 });
    const used = await kickAndCollect(q, ring, 1);
    assert.equal(used.map((u) => u.id), [pending]);
    assert.is(q.usedIdx(), 10);
  } finally {
    await s.done();
  }
});

test('the front-end picks the ring size: 1024 entries on a device whose own maximum is 256', async () => {
  const s = await session(new RngDevice(), 2 << 20);
  try {
    await s.frontend.negotiate();
    await s.frontend.setMemTable([s.memory]);
    const q = new DriverQueue(s.memory.guest, { size: 1024 });
    const ring = await s.frontend.setupRing(0, q, s.memory);
    for (let i = 0; i < 300; i++) q.addChain([{ writableLen: 8 }]);
    assert.is((await kickAndCollect(q, ring, 300)).length, 300);
  } finally {
    await s.done();
  }
});

test('a new SET_MEM_TABLE while rings run remaps them and I/O continues', async () => {
  const s = await session(new RngDevice());
  try {
    await s.frontend.negotiate();
    await s.frontend.setMemTable([s.memory]);
    const q = new DriverQueue(s.memory.guest, { size: 8 });
    const ring = await s.frontend.setupRing(0, q, s.memory);
    q.addChain([{ writableLen: 8 }]);
    assert.is((await kickAndCollect(q, ring, 1)).length, 1);
    await s.frontend.setMemTable([s.memory]);
    q.addChain([{ writableLen: 8 }]);
    assert.equal((await kickAndCollect(q, ring, 1)).map((u) => u.len), [8]);
  } finally {
    await s.done();
  }
});

test('memory in two regions with a hole between them: rings and buffers in the upper region', async () => {
  const s = await session(new RngDevice(), 2 << 20);
  try {
    await s.frontend.negotiate();
    // Region 0: guest 0..1M at file offset 0. Region 1: guest 3M..4M at file offset 1M.
    const low = s.memory.region(0, 1 << 20);
    const high = { ...s.memory.region(1 << 20, 1 << 20), guestAddress: 3n << 20n };
    await s.frontend.acked(Request.SET_MEM_TABLE, encodeMemoryTable([low, high]), [s.memory.fd, s.memory.fd]);
    // The front-end's view of the upper region: its pages sit at file offset 1M.
    const q = new DriverQueue(s.memory.guest, { size: 8, base: 1 << 20 });
    const ring = await s.frontend.setupRing(0, q, s.memory);
    // Ring GPA as the back-end sees it is 3M + offset; descriptors must use the back-end's GPAs too.
    // DriverQueue writes GPAs of the front-end mapping (1M..2M): shift them to 3M..4M.
    const head = q.addChain([{ writableLen: 16 }], { publish: false });
    const d = q.readDescriptor(head);
    q.writeDescriptor(head, { ...d, addr: BigInt(d.addr) + (2n << 20n) });
    q.offer(head);
    const used = await kickAndCollect(q, ring, 1);
    assert.equal(used.map((u) => u.len), [16]);
    assert.ok(used[0]!.written.some((b) => b !== 0));
  } finally {
    await s.done();
  }
});

test('block: GET_CONFIG reports the capacity; writes and reads reach the image file', async () => {
  const image = join(dir, 'disk.img');
  writeFileSync(image, new Uint8Array(64 * 512));
  const device = BlockDevice.open(image, { serial: 'vu-test' });
  const s = await session(device);
  try {
    assert.ok((await s.frontend.getProtocolFeatures()) & bit(PROTOCOL_F_CONFIG), 'CONFIG offered for a device with config');
    await s.frontend.negotiate();
    const config = await s.frontend.getConfig(0, 60);
    assert.is(config.length, 60);
    assert.is(new DataView(config.buffer).getBigUint64(0, true), 64n);
    await s.frontend.setMemTable([s.memory]);
    const q = new DriverQueue(s.memory.guest, { size: 16 });
    const ring = await s.frontend.setupRing(0, q, s.memory);
    const data = new Uint8Array(1024).map((_, i) => (i * 7 + 3) & 0xff);
    const header = (type: number, sector: number) => {
      const h = new Uint8Array(16);
      const v = new DataView(h.buffer);
      v.setUint32(0, type, true);
      v.setBigUint64(8, BigInt(sector), true);
      return h;
    };
    q.addChain([{ data: header(1, 5) }, { data }, { writableLen: 1 }]); // VIRTIO_BLK_T_OUT
    assert.equal((await kickAndCollect(q, ring, 1)).map((u) => [u.len, u.written[0]]), [[1, 0]]);
    assert.equal(readFileSync(image).subarray(5 * 512, 5 * 512 + 1024), Buffer.from(data));
    q.addChain([{ data: header(0, 5) }, { writableLen: 1024 }, { writableLen: 1 }]); // VIRTIO_BLK_T_IN
    const [read] = await kickAndCollect(q, ring, 1);
    assert.is(read!.len, 1025);
    assert.equal(read!.written.subarray(0, 1024), data);
    assert.is(read!.written[1024], 0);
  } finally {
    await s.done();
    device.close();
    rmSync(image);
  }
});

test('RESET_DEVICE stops the rings and resets the device; the front-end can set it up again', async () => {
  const s = await session(new RngDevice());
  try {
    await s.frontend.negotiate();
    await s.frontend.setMemTable([s.memory]);
    const q = new DriverQueue(s.memory.guest, { size: 8 });
    let ring = await s.frontend.setupRing(0, q, s.memory);
    q.addChain([{ writableLen: 8 }]);
    assert.is((await kickAndCollect(q, ring, 1)).length, 1);
    await s.frontend.acked(Request.RESET_DEVICE);
    assert.is(s.backend.state.driverFeatures, 0n);
    assert.not.ok(s.backend.state.isQueueRunning(0));
    q.reset();
    await s.frontend.negotiate();
    ring = await s.frontend.setupRing(0, q, s.memory);
    q.addChain([{ writableLen: 8 }]);
    assert.equal((await kickAndCollect(q, ring, 1)).map((u) => u.len), [8]);
    assert.equal(s.closes, []);
  } finally {
    await s.done();
  }
});

test('SET_CONFIG reaches writable config fields only (console emerg_wr prints a byte)', async () => {
  const printed: number[] = [];
  const device = new ConsoleDevice({ input$: EMPTY, output: (b) => { printed.push(...b); }, close: () => {} });
  const s = await session(device);
  try {
    await s.frontend.negotiate();
    await s.frontend.acked(Request.SET_CONFIG, encodeConfig({ offset: 8, size: 4, flags: 0, data: new Uint8Array([0x41, 0, 0, 0]) }));
    assert.equal(printed, [0x41]);
    // cols is read-only: the write is ignored.
    await s.frontend.acked(Request.SET_CONFIG, encodeConfig({ offset: 0, size: 2, flags: 0, data: new Uint8Array([1, 0]) }));
    assert.equal(await s.frontend.getConfig(0, 4), new Uint8Array([80, 0, 25, 0]));
  } finally {
    await s.done();
  }
});

test('a front-end that disconnects is torn down and the next one is served', async () => {
  const device = new RngDevice();
  const s = await session(device);
  try {
    await s.frontend.negotiate();
    await s.frontend.setMemTable([s.memory]);
    const q1 = new DriverQueue(s.memory.guest, { size: 8 });
    await s.frontend.setupRing(0, q1, s.memory);
    const gone = firstValueFrom(s.backend.disconnected$);
    s.frontend.close();
    const close = await gone;
    assert.is(close.error, false);
    assert.match(close.reason, /disconnected/);
    assert.is(s.backend.state.driverFeatures, 0n, 'device state reset');

    for (let i = 0; i < 3; i++) {
      const f = VhostUserFrontend.connect(s.backend.socketPath);
      const mem = FrontendMemory.create(1 << 20);
      await f.negotiate();
      await f.setMemTable([mem]);
      const q = new DriverQueue(mem.guest, { size: 8 });
      const ring = await f.setupRing(0, q, mem);
      q.addChain([{ writableLen: 8 }]);
      assert.equal((await kickAndCollect(q, ring, 1)).map((u) => u.len), [8], `connection ${i + 2} served`);
      const closed = firstValueFrom(s.backend.disconnected$);
      f.close();
      await closed;
      mem.close();
    }
    assert.is(s.backend.connections, 4);
  } finally {
    await s.done();
  }
});

test('a second front-end waits until the first has gone', async () => {
  const s = await session(new RngDevice());
  try {
    assert.ok((await s.frontend.getFeatures()) > 0n);
    const second = VhostUserFrontend.connect(s.backend.socketPath);
    const reply = second.receive(3000);
    second.send(Request.GET_FEATURES);
    await sleep(50);
    assert.is(s.backend.connections, 1, 'not accepted while the first is connected');
    s.frontend.close();
    const r = await reply;
    assert.is(r.request, Request.GET_FEATURES);
    second.close();
  } finally {
    await s.done();
  }
});

test('close() removes the socket and ends the connection', async () => {
  const s = await session(new RngDevice());
  await s.frontend.getFeatures();
  await s.backend.close();
  await s.frontend.closed();
  assert.throws(() => readFileSync(s.backend.socketPath));
  s.frontend.close();
  s.memory.close();
});

test('listen() replaces a stale socket but refuses a live one', async () => {
  const path = join(dir, 'stale.sock');
  const first = new VhostUserBackend(new RngDevice(), { socketPath: path });
  first.listen();
  const second = new VhostUserBackend(new RngDevice(), { socketPath: path });
  assert.throws(() => second.listen(), /EADDRINUSE/);
  await first.close();
  // A dead back-end leaves its socket file behind with nobody listening.
  libc.close(unixListen(path));
  assert.ok(lstatSync(path).isSocket());
  const stale = new VhostUserBackend(new RngDevice(), { socketPath: path });
  stale.listen();
  const f = VhostUserFrontend.connect(path);
  assert.ok((await f.getFeatures()) > 0n);
  f.close();
  await stale.close();
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
